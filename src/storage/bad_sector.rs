//! A fault disk for tests: the real disk, with a bad sector (reads that cover it fail with
//! EIO), on every file or on the file opened `n`th, and a full disk (writes fail).

use super::{Disk, Handle, Storage, StoredFile};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Where a bad sector is, if there is one.
type Sector = Arc<Mutex<Option<u64>>>;

/// The real disk, but a read that covers `bad` fails (a bad sector: EIO) on any file while
/// it is set, or one that covers a bad sector of one file (`next`, or [`BadSector::set_in`]);
/// and writes fail (and cutting them back) while `full` is.
#[derive(Clone, Default)]
pub struct BadSector {
    pub bad: Sector,
    pub full: Arc<AtomicBool>,
    /// Each file opened or created, in turn: its own bad sector.
    pub opened: Arc<Mutex<Vec<Sector>>>,
    /// The bad sector of the next file opened or created alone.
    pub next: Sector,
}

impl BadSector {
    /// A bad sector at `at` in the `n`th file opened or created (from 0) alone.
    pub fn set_in(&self, n: usize, at: u64) {
        *self.opened.lock().unwrap()[n].lock().unwrap() = Some(at);
    }

    fn wrap(&self, file: Handle) -> Handle {
        let own = Arc::new(Mutex::new(self.next.lock().unwrap().take()));
        self.opened.lock().unwrap().push(Arc::clone(&own));
        Arc::new(BadSectorFile {
            file,
            disk: self.clone(),
            own,
        })
    }
}

struct BadSectorFile {
    file: Handle,
    disk: BadSector,
    own: Sector,
}

impl Storage for BadSector {
    fn open(&self, path: &Path) -> io::Result<Handle> {
        Ok(self.wrap(Disk.open(path)?))
    }
    fn create(&self, path: &Path) -> io::Result<Handle> {
        Ok(self.wrap(Disk.create(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        Disk.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        Disk.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        Disk.sync_dir(dir)
    }
}

impl StoredFile for BadSectorFile {
    fn size(&self) -> io::Result<u64> {
        self.file.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let covers =
            |bad: Option<u64>| bad.is_some_and(|bad| (at..at + buf.len() as u64).contains(&bad));
        if covers(*self.disk.bad.lock().unwrap()) || covers(*self.own.lock().unwrap()) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.read_exact_at(buf, at)
    }
    fn write_all_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        if self.disk.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.write_all_at(buf, at)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.disk.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.set_len(len)
    }
    fn allocate(&self, from: u64, to: u64) -> bool {
        self.file.allocate(from, to)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn drop_cache(&self) {
        self.file.drop_cache()
    }
}
