//! A simulated disk, for the crash-consistency tests (`storage::crash`).
//!
//! Per file it keeps what a process reads (the page cache) and what is durable, and the
//! writes, truncations and name changes since the last sync, in order. It fails operations
//! when its seeded dice say so, as a dying SD card or a full disk does:
//!
//! - a write fails with ENOSPC after writing a random part of its bytes;
//! - an fsync fails with EIO and, as Linux does, drops the unsynced writes it could not
//!   make durable while the page cache keeps showing them, so a process that went on would
//!   read data that a power cut then takes away;
//! - a rename, a truncation, a folder sync fail with EIO.
//!
//! And it crashes: [`SimDisk::crash`] ends the process (every handle opened before fails
//! from then on) and keeps the page cache; [`SimDisk::power_cut`] also loses what was not
//! synced: each file keeps its durable bytes plus its unsynced operations up to a random
//! point, the last of them possibly torn at any byte; names likewise.

use super::{Handle, Storage, StoredFile};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// How often each kind of operation fails, out of 1,000.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub write: u32,
    pub fsync: u32,
    pub rename: u32,
    pub set_len: u32,
    pub sync_dir: u32,
}

/// What the simulation did, for the test's report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub writes: u64,
    pub fsyncs: u64,
    pub failed: u64,
    pub power_cuts: u64,
    pub crashes: u64,
}

impl Counts {
    /// Adds another schedule's counts.
    pub fn add(&mut self, other: Counts) {
        self.writes += other.writes;
        self.fsyncs += other.fsyncs;
        self.failed += other.failed;
        self.power_cuts += other.power_cuts;
        self.crashes += other.crashes;
    }
}

/// A seeded, deterministic random number generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn draw(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.draw() % n
    }

    /// True `per_mille` times in 1,000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < per_mille as u64
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write { at: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone)]
enum NameOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
}

#[derive(Debug, Default, Clone)]
struct Inode {
    /// What a read sees.
    cached: Content,
    durable: Content,
    /// Since the last sync, in order.
    unsynced: Vec<Op>,
}

/// A file's bytes: `data`, then zeros up to `len` (space reserved ahead costs nothing).
#[derive(Debug, Default, Clone)]
struct Content {
    data: Vec<u8>,
    len: u64,
}

fn apply(content: &mut Content, op: &Op) {
    match op {
        Op::Write { at, bytes } => {
            let end = *at as usize + bytes.len();
            if content.data.len() < end {
                content.data.resize(end, 0);
            }
            content.data[*at as usize..end].copy_from_slice(bytes);
            content.len = content.len.max(end as u64);
        }
        Op::SetLen(len) => {
            content.data.truncate(*len as usize);
            content.len = *len;
        }
    }
}

struct State {
    rng: Rng,
    faults: Faults,
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    unsynced_names: Vec<NameOp>,
    next_inode: u64,
    /// Bumped by every crash: handles of an earlier process fail.
    process: u64,
    counts: Counts,
}

impl State {
    /// A new, empty file named `path` (replacing any there); its name not yet durable.
    fn new_file(&mut self, path: &Path) -> u64 {
        let ino = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(ino, Inode::default());
        self.names.insert(path.to_path_buf(), ino);
        self.unsynced_names
            .push(NameOp::Link(path.to_path_buf(), ino));
        ino
    }

    fn fails(&mut self, per_mille: u32) -> bool {
        let fails = per_mille > 0 && self.rng.chance(per_mille);
        if fails {
            self.counts.failed += 1;
        }
        fails
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated I/O error: {what}"))
}

/// The simulated disk; clones share it.
#[derive(Clone)]
pub struct SimDisk(Arc<Mutex<State>>);

impl SimDisk {
    pub fn new(seed: u64) -> SimDisk {
        SimDisk(Arc::new(Mutex::new(State {
            rng: Rng::new(seed),
            faults: Faults::default(),
            inodes: HashMap::new(),
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            unsynced_names: Vec::new(),
            next_inode: 1,
            process: 0,
            counts: Counts::default(),
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, operations fail this often.
    pub fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }

    pub fn counts(&self) -> Counts {
        self.state().counts
    }

    /// The process dies (kill -9): its handles fail; the page cache stays.
    pub fn crash(&self) {
        let mut s = self.state();
        s.process += 1;
        s.counts.crashes += 1;
    }

    /// The power goes: the process dies, and of what was not synced each file keeps a
    /// random prefix of its operations, the last possibly torn; or, in a quarter of the
    /// cuts, any of the pages its unsynced writes touched, in no order.
    pub fn power_cut(&self) {
        let mut s = self.state();
        s.process += 1;
        s.counts.power_cuts += 1;
        let s = &mut *s;
        let mut inodes: Vec<u64> = s.inodes.keys().copied().collect();
        inodes.sort(); // determinism: HashMap order is not
        for ino in inodes {
            let inode = s.inodes.get_mut(&ino).expect("listed");
            let n = inode.unsynced.len() as u64;
            let keep = s.rng.below(n + 1) as usize;
            let mut data = std::mem::take(&mut inode.durable);
            if s.rng.chance(250) {
                // Writeback in any order: each 4 KiB page of each unsynced write may or
                // may not have reached the disk (a later record on disk, an earlier one
                // not: what the journal's checkpoints must tell from the disk's damage).
                for op in &inode.unsynced {
                    match op {
                        Op::Write { at, bytes } => {
                            let end = *at + bytes.len() as u64;
                            let mut p = *at;
                            while p < end {
                                let next = ((p / 4096) + 1) * 4096;
                                let next = next.min(end);
                                if s.rng.chance(500) {
                                    let b = bytes[(p - at) as usize..(next - at) as usize].to_vec();
                                    apply(&mut data, &Op::Write { at: p, bytes: b });
                                } else if data.len < next {
                                    // the file's size may cover it, its page never written
                                    let len = data.len.max(next);
                                    apply(&mut data, &Op::SetLen(len));
                                }
                                p = next;
                            }
                        }
                        op => apply(&mut data, op),
                    }
                }
                inode.unsynced.clear();
                inode.cached = data.clone();
                inode.durable = data;
                continue;
            }
            for (i, op) in inode.unsynced.iter().take(keep).enumerate() {
                match op {
                    Op::Write { at, bytes } if i + 1 == keep && s.rng.chance(500) => {
                        let torn = s.rng.below(bytes.len() as u64 + 1) as usize;
                        apply(
                            &mut data,
                            &Op::Write {
                                at: *at,
                                bytes: bytes[..torn].to_vec(),
                            },
                        );
                    }
                    op => apply(&mut data, op),
                }
            }
            inode.unsynced.clear();
            inode.cached = data.clone();
            inode.durable = data;
        }
        let keep = s.rng.below(s.unsynced_names.len() as u64 + 1) as usize;
        for op in s.unsynced_names.drain(..).take(keep) {
            match op {
                NameOp::Link(path, ino) => s.durable_names.insert(path, ino),
                NameOp::Unlink(path) => s.durable_names.remove(&path),
            };
        }
        s.names = s.durable_names.clone();
        let named: std::collections::HashSet<u64> = s.names.values().copied().collect();
        s.inodes.retain(|ino, _| named.contains(ino));
    }

    /// The bytes a process would read from `path` now.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.state();
        let ino = s.names.get(path)?;
        let cached = &s.inodes[ino].cached;
        let mut bytes = cached.data.clone();
        bytes.resize(cached.len as usize, 0);
        Some(bytes)
    }

    fn handle(&self, ino: u64) -> Handle {
        let process = self.state().process;
        Arc::new(SimFile {
            disk: self.clone(),
            ino,
            process,
        })
    }
}

impl Storage for SimDisk {
    fn open(&self, path: &Path) -> io::Result<Handle> {
        let ino = {
            let mut s = self.state();
            match s.names.get(path) {
                Some(&ino) => ino,
                None => s.new_file(path),
            }
        };
        Ok(self.handle(ino))
    }

    fn create(&self, path: &Path) -> io::Result<Handle> {
        let ino = self.state().new_file(path);
        Ok(self.handle(ino))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state();
        let per_mille = s.faults.rename;
        if s.fails(per_mille) {
            return Err(eio("rename"));
        }
        let ino = s
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        s.names.insert(to.to_path_buf(), ino);
        s.unsynced_names.push(NameOp::Unlink(from.to_path_buf()));
        s.unsynced_names.push(NameOp::Link(to.to_path_buf(), ino));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state();
        if s.names.remove(path).is_some() {
            s.unsynced_names.push(NameOp::Unlink(path.to_path_buf()));
        }
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut s = self.state();
        let per_mille = s.faults.sync_dir;
        if s.fails(per_mille) {
            return Err(eio("sync of a folder"));
        }
        // One folder in these tests: every name change is made durable.
        let s = &mut *s;
        for op in s.unsynced_names.drain(..) {
            match op {
                NameOp::Link(path, ino) => s.durable_names.insert(path, ino),
                NameOp::Unlink(path) => s.durable_names.remove(&path),
            };
        }
        Ok(())
    }
}

/// A handle on a [`SimDisk`] file.
struct SimFile {
    disk: SimDisk,
    ino: u64,
    process: u64,
}

impl SimFile {
    /// The disk's state, if this handle's process is still alive.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.disk.state();
        if s.process != self.process {
            return Err(io::Error::other(
                "the process that opened this file is gone",
            ));
        }
        Ok(s)
    }

    /// Applies `op` to the page cache, unsynced.
    fn record(s: &mut State, ino: u64, op: Op) {
        let inode = s.inodes.entry(ino).or_default();
        apply(&mut inode.cached, &op);
        inode.unsynced.push(op);
    }
}

impl StoredFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        let s = self.live()?;
        Ok(s.inodes.get(&self.ino).map_or(0, |i| i.cached.len))
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let s = self.live()?;
        let empty = Content::default();
        let content = s.inodes.get(&self.ino).map_or(&empty, |i| &i.cached);
        let (at, end) = (at as usize, at as usize + buf.len());
        if end as u64 > content.len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.fill(0);
        let data = &content.data;
        if at < data.len() {
            let upto = end.min(data.len());
            buf[..upto - at].copy_from_slice(&data[at..upto]);
        }
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        let mut s = self.live()?;
        s.counts.writes += 1;
        let per_mille = s.faults.write;
        if s.fails(per_mille) {
            let part = s.rng.below(buf.len() as u64 + 1) as usize;
            if part > 0 {
                let op = Op::Write {
                    at,
                    bytes: buf[..part].to_vec(),
                };
                SimFile::record(&mut s, self.ino, op);
            }
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let op = Op::Write {
            at,
            bytes: buf.to_vec(),
        };
        SimFile::record(&mut s, self.ino, op);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.live()?;
        let per_mille = s.faults.set_len;
        if s.fails(per_mille) {
            return Err(eio("truncate"));
        }
        SimFile::record(&mut s, self.ino, Op::SetLen(len));
        Ok(())
    }

    fn allocate(&self, from: u64, to: u64) -> bool {
        let Ok(mut s) = self.live() else {
            return false;
        };
        let len = s.inodes.get(&self.ino).map_or(0, |i| i.cached.len);
        if len < to && from <= len {
            SimFile::record(&mut s, self.ino, Op::SetLen(to));
        }
        true
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.live()?;
        s.counts.fsyncs += 1;
        let per_mille = s.faults.fsync;
        let fails = s.fails(per_mille);
        let inode = s.inodes.entry(self.ino).or_default();
        if fails {
            // Linux: the pages that could not be written are marked clean; they stay in
            // the cache, and the next fsync has nothing left to write.
            inode.unsynced.clear();
            return Err(eio("fsync"));
        }
        // What was written since the last fsync reaches the disk; nothing else (the pages
        // a failed fsync left in the cache never do).
        for op in std::mem::take(&mut inode.unsynced) {
            apply(&mut inode.durable, &op);
        }
        Ok(())
    }

    fn drop_cache(&self) {
        let Ok(mut s) = self.live() else {
            return;
        };
        // Clean pages go; dirty ones (writes not yet synced) stay.
        let inode = s.inodes.entry(self.ino).or_default();
        let mut cached = inode.durable.clone();
        for op in &inode.unsynced {
            apply(&mut cached, op);
        }
        inode.cached = cached;
    }
}
