//! The few file operations the journal and the received log make, behind one small
//! interface: on a node the file system's ([`Disk`]); in the crash-consistency simulation
//! (`storage::sim`, tests only) a disk that keeps, per file, what was synced and what was
//! not, loses the rest on a simulated power cut, and fails writes, fsyncs and renames when
//! told to.
//!
//! "Nothing lost" is a claim about every interleaving of writes, syncs, crashes and errors,
//! which no test against a real disk can enumerate; with the I/O behind this interface, the
//! simulation runs thousands of seeded schedules through the same journal code that runs on
//! a Pi (see `storage::crash`).
//!
//! What a caller may rely on is what Linux promises and no more: a write is durable once a
//! later `sync_data` of its file returned Ok; a rename or a new file's name, once the
//! folder's `sync_dir` returned Ok. A failed `sync_data` may have dropped the unsynced
//! writes while a later one reports success, so after one the caller must stop using the
//! file (fail-stop; see [`crate::journal`]).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// An open file. Shared: reads, writes at an offset and fsyncs need no `&mut`, so an fsync
/// can run on a handle while its owner's lock is let go.
pub type Handle = Arc<dyn StoredFile>;

/// A file system.
pub trait Storage: Send + Sync {
    /// Opens `path` to read and write, creating it (private, and its folder) if need be.
    fn open(&self, path: &Path) -> io::Result<Handle>;
    /// Creates `path` empty (private), replacing any file there.
    fn create(&self, path: &Path) -> io::Result<Handle>;
    /// Renames `from` over `to`, atomically; durable once [`Storage::sync_dir`] returns.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes `path`; a missing file is not an error.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in `dir` (created, renamed, removed) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file of a [`Storage`].
pub trait StoredFile: Send + Sync {
    fn size(&self) -> io::Result<u64>;
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], at: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves the bytes from `from` to `to` (zeros) ahead of writes to them; false where
    /// the file system cannot (the writes then grow the file).
    fn allocate(&self, from: u64, to: u64) -> bool;
    /// Makes the file's data (and its size) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Drops the file's clean pages from the cache, so the next read is of what the disk
    /// holds (best effort).
    fn drop_cache(&self);
}

/// The real file system.
pub struct Disk;

impl Storage for Disk {
    fn open(&self, path: &Path) -> io::Result<Handle> {
        if let Some(dir) = path.parent() {
            crate::files::create_dirs(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::files::PRIVATE_FILE)
            .open(path)?;
        Ok(Arc::new(file))
    }

    fn create(&self, path: &Path) -> io::Result<Handle> {
        let file = crate::files::create_private(path)?;
        // Read back by whoever reopens it; writable handles are what the trait hands out.
        Ok(Arc::new(file))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl StoredFile for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, at)
    }

    fn write_all_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, at)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn allocate(&self, from: u64, to: u64) -> bool {
        crate::sys::fallocate(self, from, to)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn drop_cache(&self) {
        crate::sys::drop_cache(self);
    }
}

#[cfg(test)]
pub mod bad_sector;
#[cfg(test)]
mod crash;
#[cfg(test)]
pub mod sim;
