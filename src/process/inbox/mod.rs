//! The inbox: watches `inmsg.txt` and takes what operators append to it, without losing an
//! append that races with the emptying and without taking anything twice.
//!
//! How: when `inmsg.txt` has content, it is renamed to `inmsg.taking-<time>-<inode>-<birth>`
//! (an atomic step; the next `>>` creates a fresh `inmsg.txt`). A writer that opened the old
//! file before the rename still writes into the taken file, so the taken file is read on,
//! from where we left it, until no other process has it open (a write lease, `F_SETLEASE`,
//! can only be had on a file nobody else holds; where leases are not allowed, or are the
//! server's on NFS and SMB, after the file has been quiet for [`QUIET`]). Only then is it
//! removed.
//!
//! The rename is not made durable before the file is read: how a power cut that undoes it
//! is found out, and how fully read files are finished, is in [`taken`].
//!
//! The data folder is watched with inotify, so an append is taken the moment it is written
//! (where inotify is not available, the file is polled every [`POLL`]). With nothing taken
//! and still open, the inbox sleeps until the folder changes or the node stops.
//!
//! Every complete JSON array read is journaled, in one fsync'd batch together with the
//! offset read up to, before anything else happens; so after a crash the taken file is read
//! on from that offset, never from the start. A trailing array still being written is left
//! until it is complete. Bad pieces go to `inmsg.rejected.txt` with the reason, and are
//! reported; the rest of the batch still goes.

mod taken;

use super::{sleep_or_stop, stopping, Failure, Process, State, StopFd};
use crate::files::Watch;
use crate::log_budget::BelowFloor;
use crate::message::{parse_input, stretch_end, Parsed, Rejected};
use crate::node::Node;
use crossbeam_channel::Receiver;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taken::{done_name, taken_name, Finished, Identity};

/// How often inmsg.txt is looked at without inotify.
const POLL: Duration = Duration::from_millis(20);
/// With inotify, how often a taken file is looked at while a writer may still hold it (or
/// a full disk holds it up); with none taken, the wait has no limit, unless inotify does
/// not hear of every write to the folder ([`UNHEARD_WAIT`]).
const WATCHED_WAIT: Duration = Duration::from_millis(250);
/// Where inotify hears of this host's writes alone (a data folder on NFS, SMB, 9p or FUSE:
/// [`crate::sys::watch_hears_every_write`]), how often inmsg.txt is looked at with nothing
/// taken: an append made on another host made no event, and waited for a local one.
const UNHEARD_WAIT: Duration = Duration::from_secs(1);
/// Where file leases are not available: how long a taken file must be unchanged before we
/// take it that no writer holds it any more.
const QUIET: Duration = Duration::from_secs(2);
/// Bytes read from a taken file per batch (more if one array is larger); bounds memory for
/// a huge append. Each batch is journaled on its own.
const BATCH_BYTES: usize = 1 << 20;
/// The largest array read whole; past it, what was read is rejected as unfinished (the
/// seed's arrays are a few messages; a message's data is at most 256 KiB).
const MAX_ARRAY: usize = 64 << 20;
/// Rejected pieces of one read reported one by one; past these, one report says how many
/// more.
const REPORTS_PER_BATCH: usize = 10;
/// Batches taken from one file before the inbox looks at the others (and at `stop`).
const BATCHES_PER_TURN: usize = 16;

pub struct Inbox {
    pub node: Arc<Node>,
    pub state: Arc<State>,
    /// Wakes the watch's wait when the node stops.
    pub stop_fd: StopFd,
}

/// A taken file being read.
struct Taken {
    name: String,
    path: PathBuf,
    offset: u64,
    /// Line number at `offset`, for error messages.
    line: usize,
    size_seen: u64,
    changed: Instant,
    /// More complete input may be waiting than the last turn took.
    more: bool,
    /// The disk is full, or at its floor: what is left waits in the file until there is
    /// room.
    paused: bool,
    /// A rejected stretch ran past [`MAX_ARRAY`] (what may be read at once; a shorter one
    /// is read whole before it is rejected, see `read_new`): what follows is more of it,
    /// up to the next line that opens an array. In memory only: after a restart the rest
    /// of a stretch that long is read as new input.
    skipping: bool,
    /// A rejected stretch runs to the end of what the file held, up to this size: left
    /// unconsumed (its end not known yet), and read again only once it may have ended.
    open_stretch: Option<u64>,
    /// How many rejected pieces of the batch read at which offset are kept in
    /// inmsg.rejected.txt already: a batch not journaled (a full disk) is read again from
    /// there, and its pieces were kept again at every try. In memory only: a restart
    /// between the two keeps them twice.
    kept_rejected: Option<(u64, usize)>,
    /// What the batch at `offset` would take of the disk, which its floor did not leave
    /// (see [`Node::accept_new`]): it is read again only once that much is free above the
    /// floor, not at every tick (each try encodes every `toNodes` copy under the journal's
    /// lock). 0: no batch waits so. The bytes are those of the refusal: a batch that later
    /// reservations would let fit waits for them all the same.
    waiting_for: u64,
}

impl Taken {
    /// Taken file `name` at `path`, to be read from `offset` (on line `line`).
    fn new(name: String, path: PathBuf, offset: u64, line: usize) -> Taken {
        Taken {
            name,
            path,
            offset,
            line,
            size_seen: 0,
            changed: Instant::now(),
            more: false,
            paused: false,
            skipping: false,
            open_stretch: None,
            kept_rejected: None,
            waiting_for: 0,
        }
    }
}

/// Why the inbox failed. Each is a retry: what was taken is journaled with the offset it
/// reached, and a restarted inbox reads on from there. (A full disk is not a failure at all:
/// intake waits, see `Inbox::read_new`.)
#[derive(Debug)]
pub enum Error {
    /// The data folder could not be listed (for taken files an earlier run left).
    List { path: PathBuf, source: io::Error },
    /// inmsg.txt could not be renamed to be taken.
    Take { path: PathBuf, source: io::Error },
    /// A taken file could not be opened.
    Open { path: PathBuf, source: io::Error },
    /// A taken file could not be read.
    Read { path: PathBuf, source: io::Error },
    /// A taken file, all of it journaled, could not be removed.
    Remove { path: PathBuf, source: io::Error },
    /// Rejected input could not be kept in inmsg.rejected.txt (`path`).
    KeepRejected { path: PathBuf, source: io::Error },
    /// The messages read from a taken file (`path`) could not be journaled.
    Journal { path: PathBuf, source: io::Error },
    /// Taken files (the first: `path`) could not be marked done in the journal.
    Mark { path: PathBuf, source: io::Error },
    /// A taken file whose offset the journal lost could not be put aside.
    SetAside { path: PathBuf, source: io::Error },
    /// The data folder (`path`) could not be synced (renames and removals of taken files).
    SyncFolder { path: PathBuf, source: io::Error },
}

impl Error {
    fn io(&self) -> &io::Error {
        match self {
            Error::List { source, .. }
            | Error::Take { source, .. }
            | Error::Open { source, .. }
            | Error::Read { source, .. }
            | Error::Remove { source, .. }
            | Error::KeepRejected { source, .. }
            | Error::Journal { source, .. }
            | Error::Mark { source, .. }
            | Error::SetAside { source, .. }
            | Error::SyncFolder { source, .. } => source,
        }
    }

    /// Whether the disk is full, or a batch would take it under the floor (see
    /// [`Node::accept_new`]): then intake waits, it does not fail.
    fn disk_full(&self) -> bool {
        self.io().kind() == io::ErrorKind::StorageFull
    }

    /// The floor a batch would have taken the disk under, if that is why it was refused.
    fn below_floor(&self) -> Option<&BelowFloor> {
        BelowFloor::of(self.io())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, path) = match self {
            Error::List { path, .. } | Error::Read { path, .. } => ("cannot read", path),
            Error::Take { path, .. } => ("cannot take", path),
            Error::Open { path, .. } => ("cannot open", path),
            Error::Remove { path, .. } => ("cannot remove", path),
            Error::KeepRejected { path, .. } => ("cannot keep rejected input in", path),
            Error::Journal { path, .. } => ("cannot journal messages from", path),
            Error::Mark { path, .. } => ("cannot mark as taken in the journal", path),
            Error::SetAside { path, .. } => ("cannot put aside", path),
            Error::SyncFolder { path, .. } => ("cannot sync the folder", path),
        };
        write!(f, "{what} {}: {}", path.display(), self.io())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.io())
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::retry(e)
    }
}

impl Process for Inbox {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), Failure> {
        let root = self.node.data.root.clone();
        let mut taken = self.leftovers()?;
        let watch = Watch::new(&root);
        if watch.is_none() {
            log::warn!(
                "inotify unavailable; polling {} every {POLL:?}",
                self.node.data.inmsg().display()
            );
        }
        self.state
            .set(format!("watching {}", self.node.data.inmsg().display()));
        // Bytes taken since memory was last handed back.
        let mut since_trim = 0u64;
        let mut finished = Finished::default();
        // The inmsg.txt last refused (not a plain file of its own), said once.
        let mut refused = None;
        // Where the filesystem may number files anew at each mount, a taken name carries no
        // identity (and the rename is made durable before reading, as it must then be).
        let identities = crate::sys::keeps_inode_numbers(&root);
        // On NFS and SMB a lease says nothing of who holds a file: refused for want of the
        // server's delegation, it would keep every taken file "held" for good.
        let leases = crate::sys::leases_tell_holders(&root);
        let idle_limit = match crate::sys::watch_hears_every_write(&root) {
            true => None,
            false => Some(UNHEARD_WAIT),
        };
        loop {
            let inmsg = self.node.data.inmsg();
            let found = fs::symlink_metadata(&inmsg).ok();
            let found = found.filter(|m| self.takeable(&inmsg, m, &mut refused));
            if let Some(found) = found.filter(|m| m.len() > 0) {
                let identity = Identity::of(&found).filter(|_| identities);
                let name = taken_name(&root, identity);
                let path = root.join(&name);
                let take = |source| Error::Take {
                    path: inmsg.clone(),
                    source,
                };
                match fs::rename(&inmsg, &path) {
                    Ok(()) => {}
                    // Moved away or removed since the look (a logrotate that rotates it,
                    // an operator's `mv` or `rm`): nothing to take; look again.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(take(source).into()),
                }
                // A batch journaled with an offset in the taken file must never meet an
                // inmsg.txt that a power cut un-renamed and that is not known for that file
                // (it would be read from 0): without an identity in the name (or with the
                // wrong one: inmsg.txt replaced between the look and the rename), the
                // rename is made durable first.
                let named = fs::metadata(&path).ok().as_ref().and_then(Identity::of);
                if identity.is_none() || named != identity {
                    crate::files::sync_dir(&root).map_err(take)?;
                }
                taken.push(Taken::new(name, path, 0, 1));
            }
            let mut i = 0;
            while i < taken.len() {
                let before = taken[i].offset;
                let done = self.read_on(&mut taken[i], leases)?;
                since_trim += taken[i].offset - before;
                if done {
                    finished.push(taken.remove(i));
                } else {
                    i += 1;
                }
            }
            if finished.due() {
                self.finish(&mut finished, &mut taken)?;
            }
            let busy = taken.iter().any(|t| t.more);
            if !busy && since_trim > BATCH_BYTES as u64 {
                give_back_memory();
                since_trim = 0;
            }
            let stopping = match &watch {
                // A big file is read on at once, not at the pace of the watch.
                _ if busy => stopping(stop),
                Some(w) => {
                    // A taken file is looked at again until it is done: a writer closing
                    // it, or room on the disk, makes no event in the folder.
                    // So does a refused inmsg.txt's other name going away (a hard link).
                    let idle = taken.is_empty() && refused.is_none();
                    let limit = wait_limit(idle, finished.wait(), idle_limit);
                    self.wait_for_inmsg(w, stop, limit)
                }
                None => sleep_or_stop(stop, POLL),
            };
            if stopping {
                // Not left for the next start to do.
                if !finished.files.is_empty() {
                    self.finish(&mut finished, &mut taken)?;
                }
                // Files still being read, or not finished (the disk full), keep their taken
                // names for good (a version that knows no identities may read the folder
                // next).
                if !taken.is_empty() || !finished.files.is_empty() {
                    crate::files::sync_dir(&root).map_err(|source| Error::SyncFolder {
                        path: root.clone(),
                        source,
                    })?;
                }
                return Ok(());
            }
        }
    }
}

/// Whether an event of the data folder's watch may be the inbox's business: one naming
/// inmsg.txt or a taken file (`inmsg.*`), or one naming none (the queue overflowed).
fn about_inmsg(name: &[u8]) -> bool {
    name.is_empty() || name.starts_with(b"inmsg")
}

impl Inbox {
    /// Waits until inmsg.txt or a taken file changes, the node stops, or `limit` passes
    /// (`None`: no limit); returns whether the node stops. Other files in the folder are
    /// passed over: message-log.txt, appended at the end of every message, woke the inbox
    /// to look at inmsg.txt for nothing, as it finished the message before.
    ///
    /// The stop channel is looked at once on the way out, and its answer returned: a look
    /// takes a stop sent as a message (rather than by hanging up), and a second look after
    /// it, by the caller, found nothing and ran on for good (a unit test's inbox, woken at
    /// once by its stop descriptor, spun a core that way).
    fn wait_for_inmsg(&self, w: &Watch, stop: &Receiver<()>, limit: Option<Duration>) -> bool {
        let until = limit.map(|limit| Instant::now() + limit);
        loop {
            let left = until.map(|until| until.saturating_duration_since(Instant::now()));
            if !self.stop_fd.wait(w.as_fd(), left) {
                return stopping(stop);
            }
            let mut events = 0;
            let inmsg = w.drain_naming(|name| {
                events += 1;
                about_inmsg(name)
            });
            // None at all: the wait failed (it then says "readable" after a pause), and
            // inmsg.txt is looked at as it would be polled.
            if inmsg || events == 0 {
                return stopping(stop);
            }
            if stopping(stop) {
                return true;
            }
            if until.is_some_and(|until| Instant::now() >= until) {
                return false;
            }
        }
    }

    /// Taken files left by an earlier run, oldest first, with how far they had been read:
    /// first an inmsg.txt that a power cut un-renamed is given its taken name back, and a
    /// file marked done whose removal was lost is removed.
    fn leftovers(&self) -> Result<Vec<Taken>, Error> {
        let root = &self.node.data.root;
        let offsets = self.node.journal().inbox_offsets().clone();
        self.put_back(&offsets)?;
        let mut names: Vec<String> = fs::read_dir(root)
            .map_err(|source| Error::List {
                path: root.clone(),
                source,
            })?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(taken::TAKING))
            .collect();
        names.sort();
        // Damage in the journal (passed over at its open) may have held how far one was
        // read: kept aside, not read again from an older offset.
        let mut known = Vec::with_capacity(names.len());
        let mut aside = 0;
        for name in names {
            let journal = self.node.journal();
            if journal.inbox_offset_known(&name) || journal.inbox_offset_known(&done_name(&name)) {
                known.push(name);
                continue;
            }
            drop(journal);
            self.set_aside(&name, offsets.get(&name).copied().unwrap_or(0))?;
            aside += 1;
        }
        // Put aside for good (a power cut undoes no rename) before the journal may forget
        // why (its damage compacted away).
        if aside > 0 {
            crate::files::sync_dir(root).map_err(|source| Error::SyncFolder {
                path: root.clone(),
                source,
            })?;
        }
        self.node.journal().inbox_checked();
        Ok(known
            .into_iter()
            .map(|name| {
                // A file marked done is left only if it grew past its mark: read on from there.
                let offset = [offsets.get(&name), offsets.get(&done_name(&name))]
                    .into_iter()
                    .flatten()
                    .copied()
                    .max()
                    .unwrap_or(0);
                if offset > 0 {
                    log::info!("resuming {name} from byte {offset}");
                }
                let path = root.join(&name);
                let line = line_at(&path, offset);
                Taken::new(name, path, offset, line)
            })
            .collect())
    }

    /// Taken file `name`, whose offset the journal's damage may have held (`known`: the last
    /// it kept), put aside as `inmsg.uncertain-*.txt` and reported, not read: from the last
    /// offset kept, the lines up to the lost one would be journaled and run a second time.
    fn set_aside(&self, name: &str, known: u64) -> Result<(), Error> {
        self.keep_aside(&self.node.data.root.join(name), |aside| {
            format!(
                "{}: how far {name} had been taken was in the journal's damage (it says byte {known}, perhaps from before): kept in {}, not read. Its messages up to where it was read were journaled and go on (message-log.txt lists those finished); append what is missing of it to inmsg.txt",
                self.node.config.node,
                aside.display()
            )
        })?;
        self.node.journal().forget_inbox(name);
        Ok(())
    }

    /// A taken file that is not one (a link or a FIFO put in inmsg.txt's place as it was
    /// taken): reported, not read, and done with (its name removed; a link's target stays).
    fn not_a_file(&self, t: &Taken) -> bool {
        self.node.report_error(format!(
            "{}: {} is not a regular file (a link or a FIFO put in the place of inmsg.txt as it was taken): not read",
            self.node.config.node,
            t.path.display()
        ));
        true
    }

    /// Reads on in a taken file. Returns true once it is fully taken: read to its end with
    /// no writer left (or gone), to be finished ([`Inbox::finish`]). Whether a writer is
    /// left is asked of a lease only if `leases` tell it on this filesystem
    /// ([`crate::sys::leases_tell_holders`]).
    fn read_on(&self, t: &mut Taken, leases: bool) -> Result<bool, Error> {
        // Not through a link, and not waiting on a FIFO for a writer: inmsg.txt was looked
        // at before it was renamed, and either can be put in its place between the two.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&t.path);
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(self.not_a_file(t)),
            // A socket or a device: not a file either.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO | libc::ENODEV)) => {
                return Ok(self.not_a_file(t))
            }
            // Appended by a user whose file steward may not read: no restart reads it, and
            // failing here held up every file taken after it, for good. Kept aside.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
                return self.unreadable(t, &e)
            }
            Err(source) => {
                return Err(Error::Open {
                    path: t.path.clone(),
                    source,
                })
            }
        };
        let meta = file.metadata().map_err(|source| Error::Read {
            path: t.path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Ok(self.not_a_file(t));
        }
        let size = meta.len();
        if size < t.offset {
            return self.shorter_than_taken(t, size);
        }
        if size != t.size_seen {
            t.size_seen = size;
            t.changed = Instant::now();
        }
        if size > t.offset {
            self.read_new(&mut file, t, false)?;
            if t.more || t.paused {
                return Ok(false); // more to read on the next turn
            }
        }
        // Nothing complete left to read. Is anyone still writing to it?
        let held = match leases {
            true => sole_holder(&file),
            false => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "on NFS and SMB a lease is the server's delegation, refused as if the file were held while it grants none",
            )),
        };
        let writers_gone = match held {
            Ok(sole) => sole,
            Err(e) => {
                self.no_leases(&t.path, &e);
                t.changed.elapsed() >= QUIET
            }
        };
        if !writers_gone {
            return Ok(false);
        }
        // Nobody can write to it now: read what came in meanwhile, reject an unfinished tail.
        self.read_new(&mut file, t, true)?;
        Ok(!(t.more || t.paused))
    }

    /// A taken file steward may not read (`why`): kept aside for the operator, reported,
    /// and done with; the files taken after it go on.
    fn unreadable(&self, t: &Taken, why: &io::Error) -> Result<bool, Error> {
        self.keep_aside(&t.path, |aside| {
            format!(
                "{}: cannot read {} ({why}): kept in {}, its bytes from {} not taken. Make it readable by steward's user, then append that part of it to inmsg.txt",
                self.node.config.node,
                t.name,
                aside.display(),
                t.offset
            )
        })?;
        Ok(true)
    }

    /// A taken file shorter than what was journaled from it (`t.offset`): its data lost in
    /// a power cut that kept its rename (what it held up to the offset is journaled), or
    /// truncated by a writer that holds it. Where what it holds now belongs cannot be told:
    /// kept aside for the operator and reported (if it holds anything), not read; done with.
    fn shorter_than_taken(&self, t: &Taken, size: u64) -> Result<bool, Error> {
        if size == 0 {
            log::warn!(
                "{} is empty, shorter than what was taken from it ({} bytes): done with it",
                t.path.display(),
                t.offset
            );
            return Ok(true);
        }
        self.keep_aside(&t.path, |aside| {
            format!(
                "{}: {} is {size} bytes, shorter than what was taken from it ({}): its data lost in a power cut, or cut short by a writer: kept in {}, not read. Check it, then append what is missing to inmsg.txt",
                self.node.config.node,
                t.name,
                t.offset,
                aside.display()
            )
        })?;
        Ok(true)
    }

    /// Renames `path` to an `inmsg.uncertain-*.txt` of its own, and logs and reports why
    /// (`why`, told where it went).
    fn keep_aside(&self, path: &Path, why: impl FnOnce(&Path) -> String) -> Result<(), Error> {
        let aside = uncertain_path(&self.node.data.root);
        fs::rename(path, &aside).map_err(|source| Error::SetAside {
            path: path.to_path_buf(),
            source,
        })?;
        let why = why(&aside);
        log::error!("{why}");
        self.node.report_error(why);
        Ok(())
    }

    /// Reads the complete arrays after `t.offset`, a batch of about [`BATCH_BYTES`] bytes at a
    /// time (each journaled with the offset it reached), for up to [`BATCHES_PER_TURN`]
    /// batches; sets `t.more` if it stopped short of the end. With `at_end`, rejects an
    /// incomplete tail at the end of the file.
    fn read_new(&self, file: &mut File, t: &mut Taken, at_end: bool) -> Result<(), Error> {
        let mut limit = BATCH_BYTES;
        let mut batches = 0;
        t.more = false;
        t.paused = false;
        // Below the floor, new work waits (before anything is read): the space left, and
        // the journal's reserve, are for finishing what is in flight, storing replies and
        // reporting.
        // So does a batch refused for what it would take, until there is room for it.
        let room = self
            .node
            .log_budget
            .check_free_space_for(&self.node.data.root, t.waiting_for);
        if let Err(why) = room {
            self.node.disk_full(&why.to_string());
            t.paused = true;
            return Ok(());
        }
        if !at_end && !self.open_stretch_may_end(file, t)? {
            return Ok(());
        }
        loop {
            let bytes = read_from(file, t.offset, limit).map_err(|source| Error::Read {
                path: t.path.clone(),
                source,
            })?;
            // Stopped by the limit, not by the end of the file: what is cut is not a tail,
            // unless it is past any array's size.
            let cut_short = bytes.len() == limit;
            let too_big = cut_short && limit >= MAX_ARRAY;
            let at_line_start = t.offset == 0 || line_starts_at(file, t.offset, &t.path)?;
            let (mut parsed, mut skipping) =
                self.parse(t, &bytes, at_end && !cut_short, at_line_start);
            let mut open_stretch = None;
            if too_big && parsed.consumed == 0 {
                // One value past any array's size: rejected, and what follows it, up to
                // the next line that opens an array, with it. Rejected for its size, not
                // parsed: as JSON it only ends too soon (the error said "EOF while
                // parsing", of what may be valid JSON), and its tree is many times its
                // size in memory.
                parsed = too_big_to_read(&bytes, t.line);
                skipping = true;
            }
            if let Some(from) = parsed.open_from.take() {
                if too_big {
                    // Past what may be read at once: what comes after is more of the
                    // stretch, until a line opens an array.
                    skipping = true;
                } else {
                    // A rejected stretch runs to the end of what was read: where it ends
                    // is not known, so it is left, and read again with more (as an array
                    // larger than a batch is), or once more is written or its writer is
                    // gone. Taken now, what follows it could be read as messages of
                    // their own (the lines of a broken array's objects), and would be
                    // after a restart.
                    parsed.rejected.pop();
                    parsed.consumed = from;
                    if !cut_short {
                        open_stretch = Some(t.offset + bytes.len() as u64);
                    }
                }
            }
            if parsed.consumed == 0 {
                if cut_short {
                    limit *= 2; // one array larger than a batch: read it whole
                    continue;
                }
                t.open_stretch = open_stretch;
                return Ok(());
            }
            let consumed = parsed.consumed;
            // Stopped at the copies a batch may make for `toNodes`: the rest is read on.
            let full = parsed.full;
            if !self.journal_batch(t, parsed)? {
                return Ok(());
            }
            // Only once what was read is journaled: else it is read again as it was.
            t.skipping = skipping;
            t.open_stretch = open_stretch;
            t.line += bytes[..consumed].iter().filter(|&&b| b == b'\n').count();
            t.offset += consumed as u64;
            if !cut_short && !full {
                return Ok(());
            }
            batches += 1;
            if batches == BATCHES_PER_TURN {
                t.more = true;
                return Ok(());
            }
            limit = BATCH_BYTES;
        }
    }

    /// With a rejected stretch left open at the end of what was there (`t.open_stretch`),
    /// whether it may have ended since: only if more was written, and a line that opens an
    /// array is in what was (a stretch is not read again from its start at every wake, as
    /// long as its writer holds the file: at a megabyte or more, that was a core's work).
    fn open_stretch_may_end(&self, file: &File, t: &mut Taken) -> Result<bool, Error> {
        use std::os::unix::fs::FileExt;
        let Some(seen) = t.open_stretch else {
            return Ok(true);
        };
        let read = |e| Error::Read {
            path: t.path.clone(),
            source: e,
        };
        let size = file.metadata().map_err(read)?.len();
        if size <= seen {
            return Ok(false);
        }
        if size - seen > BATCH_BYTES as u64 {
            t.open_stretch = None;
            return Ok(true);
        }
        let begins_line = line_starts_at(file, seen, &t.path)?;
        let mut new = vec![0; (size - seen) as usize];
        file.read_exact_at(&mut new, seen).map_err(read)?;
        let ends = stretch_end(&new, begins_line).is_some();
        t.open_stretch = if ends { None } else { Some(size) };
        Ok(ends)
    }

    /// Whether inmsg.txt (`found`, not followed if a link) can be taken: a plain file of
    /// its own. Taking renames it, which would break a symbolic link (what is written to
    /// its target then never seen, or all of it taken again when the link is made again)
    /// and leave a second name of a hard link to be written through unseen. Anything else
    /// is left where it is, and said once (logged and reported) until it changes.
    fn takeable(
        &self,
        inmsg: &std::path::Path,
        found: &fs::Metadata,
        refused: &mut Option<(u64, u64, String)>,
    ) -> bool {
        use std::os::unix::fs::MetadataExt;
        let kind = found.file_type();
        let why = if kind.is_symlink() {
            let to = fs::read_link(inmsg).map(|t| t.display().to_string());
            format!(
                "is a symbolic link (to {}): taking it would break the link; write to the file itself",
                to.unwrap_or_else(|e| e.to_string())
            )
        } else if !kind.is_file() {
            "is not a plain file".to_string()
        } else if found.nlink() > 1 {
            format!(
                "has {} names (hard links): what is written through the others would not be seen once it is taken; remove them",
                found.nlink()
            )
        } else {
            *refused = None;
            return true;
        };
        let this = (found.dev(), found.ino(), why);
        if refused.as_ref() != Some(&this) {
            let text = format!(
                "{}: {} {}; not taken",
                self.node.config.node,
                inmsg.display(),
                this.2
            );
            log::error!("{text}");
            self.node.report_error(text);
            *refused = Some(this);
        }
        false
    }

    /// Says once (logged and reported) that leases are not to be had here, and what that
    /// costs: a writer that keeps inmsg.txt open and is quiet for [`QUIET`] is taken for
    /// gone, and what it writes after the file is removed is lost.
    fn no_leases(&self, path: &std::path::Path, why: &io::Error) {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let text = no_leases_text(&self.node.config.node, path, why);
        log::warn!("{text}");
        self.node.report_error(text);
    }

    /// Parses what was read at `t.offset` (see [`parse_input`]); if a rejected stretch runs
    /// into it (`t.skipping`), first rejects what is more of that stretch. Also says
    /// whether the stretch still runs on after what was read.
    fn parse(&self, t: &Taken, bytes: &[u8], at_end: bool, at_line_start: bool) -> (Parsed, bool) {
        let known = &crate::methods::kind_refusal;
        if !t.skipping {
            return (parse_input(bytes, t.line, at_end, known), false);
        }
        let end = stretch_end(bytes, at_line_start);
        let skipping = end.is_none() && !at_end;
        let skip = end.unwrap_or(bytes.len());
        let lines = bytes[..skip].iter().filter(|&&b| b == b'\n').count();
        let mut parsed = parse_input(&bytes[skip..], t.line + lines, at_end, known);
        if !bytes[..skip].iter().all(u8::is_ascii_whitespace) {
            parsed.rejected.insert(
                0,
                Rejected {
                    text: String::from_utf8_lossy(&bytes[..skip]).into_owned(),
                    error: format!(
                        "line {}: more of the input rejected before it (up to the next line that opens an array)",
                        t.line
                    ),
                },
            );
        }
        parsed.consumed += skip;
        parsed.open_from = parsed.open_from.map(|from| from + skip);
        (parsed, skipping)
    }

    /// Keeps a batch's rejected pieces, then journals its messages with the offset in `t`
    /// they reach. Whether it was journaled: not while the disk is full (`t.paused`).
    fn journal_batch(&self, t: &mut Taken, parsed: Parsed) -> Result<bool, Error> {
        let offset = t.offset + parsed.consumed as u64;
        let count = parsed.messages.len();
        let skip = match t.kept_rejected {
            Some((at, n)) if at == t.offset => n.min(parsed.rejected.len()),
            _ => 0,
        };
        let kept = self.reject(&parsed.rejected[skip..]);
        if kept.is_ok() {
            t.kept_rejected = Some((t.offset, parsed.rejected.len()));
        }
        let written = kept
            .map_err(|source| Error::KeepRejected {
                path: self.node.data.rejected(),
                source,
            })
            .and_then(|()| {
                self.node
                    .accept_new(parsed.messages, (&t.name, offset))
                    .map_err(|source| Error::Journal {
                        path: t.path.clone(),
                        source,
                    })
            });
        // A full disk is a state, not a failure: what was not taken stays in the file,
        // and is taken once there is room (the inbox looks at the disk at every watch
        // tick, and reads the batch again once there is room for it: `read_new`).
        match written {
            Ok(()) => {
                t.waiting_for = 0;
                self.node.disk_has_room();
            }
            Err(e) if e.disk_full() => {
                if let Some(below) = e.below_floor() {
                    t.waiting_for = below.writing;
                }
                self.node.disk_full(&e.to_string());
                t.paused = true;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        if count > 0 {
            log::info!("took {count} message(s) from inmsg.txt");
        }
        Ok(true)
    }

    /// Keeps rejected input in inmsg.rejected.txt, each piece after a line saying when and
    /// why, and reports it. Text that is not valid JSON is kept as it was read (trailing
    /// whitespace trimmed); a bad message in valid JSON is kept alone, re-serialized as an
    /// array of just that message (valid input once fixed), not as the array it came in
    /// (see [`Rejected`]).
    fn reject(&self, rejected: &[Rejected]) -> std::io::Result<()> {
        if rejected.is_empty() {
            return Ok(());
        }
        let path = self.node.data.rejected();
        let mut text = String::new();
        for r in rejected {
            text.push_str(&format!(
                "# {} rejected: {}\n{}\n",
                crate::files::now_rfc3339(),
                r.error,
                r.text.trim_end()
            ));
        }
        // Whole or not at all: a piece cut by a full disk was glued to the next.
        crate::files::append_shared(&path, text.as_bytes())?;
        self.node
            .metrics
            .rejected_input
            .inc_by(rejected.len() as u64);
        // At most REPORTS_PER_BATCH reports a batch, however many pieces: a log pasted
        // into inmsg.txt by mistake is thousands of pieces, and each report is a message
        // journaled and sent.
        for r in rejected.iter().take(REPORTS_PER_BATCH) {
            self.node.report_error(format!(
                "{}: inmsg.txt input rejected ({}); kept in {}",
                self.node.config.node,
                r.error,
                path.display()
            ));
        }
        if let Some(more) = rejected
            .len()
            .checked_sub(REPORTS_PER_BATCH)
            .filter(|&n| n > 0)
        {
            self.node.report_error(format!(
                "{}: inmsg.txt input rejected: {more} more piece(s) of the same read; kept in {}",
                self.node.config.node,
                path.display()
            ));
        }
        Ok(())
    }
}

/// Whether a line begins at `offset` in `file`: only blanks (spaces, tabs) between it and
/// the newline before (or the file's start), within the 256 bytes before it.
fn line_starts_at(file: &File, offset: u64, path: &std::path::Path) -> Result<bool, Error> {
    use std::os::unix::fs::FileExt;
    let from = offset.saturating_sub(256);
    let mut before = vec![0; (offset - from) as usize];
    match file.read_exact_at(&mut before, from) {
        Ok(()) => {}
        // Cut shorter than `offset` meanwhile: no line begins past its end.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(source) => {
            return Err(Error::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let blanks = before
        .iter()
        .rev()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    Ok(match before.len() - blanks {
        0 => from == 0,
        n => before[n - 1] == b'\n',
    })
}

/// What was read at a line (`line`), all of it one value still open past [`MAX_ARRAY`]
/// (`bytes`), rejected for its size.
fn too_big_to_read(bytes: &[u8], line: usize) -> Parsed {
    let text = bytes.trim_ascii_start();
    let blank = &bytes[..bytes.len() - text.len()];
    let line = line + blank.iter().filter(|&&b| b == b'\n').count();
    Parsed {
        rejected: vec![Rejected {
            text: String::from_utf8_lossy(text).into_owned(),
            error: format!(
                "line {line}: larger than {} MiB, the most read at once (or broken: its brackets do not close within that): split it into several arrays, each beginning a line",
                MAX_ARRAY >> 20
            ),
        }],
        consumed: bytes.len(),
        ..Parsed::default()
    }
}

/// The line `offset` is on in taken file `path` (1 for its first): for the errors of a file
/// read on from a journaled offset after a restart, which keeps offsets, not lines. Not
/// through a link nor waiting on a FIFO (see `Inbox::read_on`); 1 if it cannot be read
/// (its reading says why).
fn line_at(path: &Path, offset: u64) -> usize {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let Ok(file) = opened else {
        return 1;
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return 1;
    }
    let mut file = file.take(offset);
    let mut buf = vec![0; 64 << 10];
    let mut line = 1;
    while let Ok(n @ 1..) = file.read(&mut buf) {
        line += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    line
}

/// What [`Inbox::no_leases`] says of `path`, on `node`, whose lease was refused (`why`):
/// running steward as the file's owner, or with CAP_LEASE, is advised only where that is
/// why (on NFS or SMB, or a filesystem without leases, neither helps).
fn no_leases_text(node: &str, path: &Path, why: &io::Error) -> String {
    let owner = match why.kind() {
        io::ErrorKind::PermissionDenied => {
            ", or run steward as the owner of what is appended (or with CAP_LEASE)"
        }
        _ => "",
    };
    format!(
        "{}: no file lease on {} ({why}): whether a writer still holds a taken inmsg.txt cannot be known, so it is taken as done after {}s without a change; a program that keeps inmsg.txt open and pauses longer loses what it writes after. Append with `>>` (open, write, close){owner}",
        node,
        path.display(),
        QUIET.as_secs()
    )
}

/// How long the watch may wait for an event: while a file is taken (or an inmsg.txt
/// refused), at most [`WATCHED_WAIT`]; `idle`, no longer than `idle_limit` if there is one
/// (inotify deaf to other hosts' writes); and never past when a finished file is due
/// (`finishing`).
fn wait_limit(
    idle: bool,
    finishing: Option<Duration>,
    idle_limit: Option<Duration>,
) -> Option<Duration> {
    let most = if idle { idle_limit } else { Some(WATCHED_WAIT) };
    match (most, finishing) {
        (Some(most), Some(due)) => Some(most.min(due)),
        (most, due) => most.or(due),
    }
}

/// Up to `limit` bytes of `file` from `offset`.
fn read_from(file: &mut File, offset: u64, limit: usize) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let size = file.metadata()?.len();
    let mut bytes = Vec::with_capacity(size.saturating_sub(offset).min(limit as u64) as usize + 1);
    file.by_ref().take(limit as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// After a big append has been taken (more than a batch, in any number of turns), hands the
/// memory its batches used back to the system: glibc keeps freed memory for reuse, so a
/// node would otherwise stay as big as its biggest burst. (A backlog itself costs no
/// memory: it is on disk, see [`crate::journal`].)
fn give_back_memory() {
    crate::sys::malloc_trim();
}

/// Whether we are the only process holding `file` open: a write lease is granted only then.
/// An error where leases are not allowed (not the file's owner without `CAP_LEASE`, leases
/// turned off, a filesystem without them).
fn sole_holder(file: &File) -> io::Result<bool> {
    use crate::sys::{set_lease, Lease};
    match set_lease(file, Lease::Write) {
        Ok(()) => {
            // Released again right away; the file is about to be read to the end and
            // removed.
            let _ = set_lease(file, Lease::None);
            Ok(true)
        }
        Err(e) => match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EBUSY) => Ok(false),
            _ => Err(e),
        },
    }
}

/// Where a file kept aside for the operator goes: `inmsg.uncertain-<ns since 1970>.txt`, at
/// a time no such file has (two set aside at one start, on a clock whose nanoseconds are
/// coarse, would otherwise share a name, and the second rename replace the first).
fn uncertain_path(root: &std::path::Path) -> std::path::PathBuf {
    uncertain_path_from(root, unix_nanos())
}

fn uncertain_path_from(root: &std::path::Path, mut at: u128) -> std::path::PathBuf {
    loop {
        let path = root.join(format!("inmsg.uncertain-{at:020}.txt"));
        if fs::symlink_metadata(&path).is_err() {
            return path;
        }
        at += 1;
    }
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inbox's watch on the data folder tells inmsg.txt's changes from the other
    /// files' (message-log.txt is appended at the end of every message).
    #[test]
    fn the_inbox_s_watch_hears_inmsg_txt_and_passes_over_the_other_files() {
        use crate::files::{append, write_atomically};
        let dir = tempfile::tempdir().unwrap();
        let watch = Watch::new(dir.path()).expect("inotify");
        let path = |name: &str| dir.path().join(name);
        assert!(!watch.drain_naming(about_inmsg), "nothing happened");
        append(&path("message-log.txt"), b"line\n", true).unwrap();
        write_atomically(&path("hello-nodes.json"), b"{}").unwrap();
        assert!(!watch.drain_naming(about_inmsg), "only other files changed");
        append(&path("message-log.txt"), b"line\n", false).unwrap();
        append(&path("inmsg.txt"), b"[]\n", false).unwrap();
        assert!(
            watch.drain_naming(about_inmsg),
            "inmsg.txt, after another file"
        );
        assert!(!watch.drain_naming(about_inmsg), "drained");
        fs::rename(path("inmsg.txt"), path("x")).unwrap();
        fs::rename(path("x"), path("inmsg.txt")).unwrap();
        assert!(watch.drain_naming(about_inmsg), "renamed in");
        // A writer that opened inmsg.txt before it was taken writes on into the taken file.
        let taken = path(&taken_name(dir.path(), None));
        fs::rename(path("inmsg.txt"), &taken).unwrap();
        assert!(watch.drain_naming(about_inmsg), "taken");
        append(&taken, b"[]\n", false).unwrap();
        assert!(watch.drain_naming(about_inmsg), "a taken file written");
    }

    fn inbox_in(dir: &std::path::Path) -> Inbox {
        let node = crate::node::tests::offline_node_named(dir, "central");
        Inbox {
            node: Arc::new(node),
            state: Arc::new(State::default()),
            stop_fd: StopFd::new().0,
        }
    }

    fn command(n: usize) -> String {
        format!(
            "[{{\"toNode\":\"ship1\",\"data\":[\"echo {n}\"],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\"}}]\n"
        )
    }

    /// A power cut after the journal recorded how far a taken file was read, its rename
    /// durable but its data not (the operator's append was never synced; ext4 allocates
    /// it late): the file is back shorter than its offset. Reading it must not fail (the
    /// inbox restarted into it for ever, and every file taken after it never read), and
    /// what it holds now is not read from the middle as if it were new.
    #[test]
    fn a_taken_file_shorter_than_its_journaled_offset_does_not_wedge_intake() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = inbox_in(dir.path());
        let name = "inmsg.taking-00000000000000000001";
        let first = format!("{}{}", command(0), command(1));
        inbox
            .node
            .accept(Vec::new(), Some((name, first.len() as u64)))
            .unwrap();
        // What was left of it: the start of its first array, torn.
        fs::write(dir.path().join(name), &first.as_bytes()[..10]).unwrap();
        let mut taken = inbox.leftovers().unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].offset, first.len() as u64);
        let done = inbox.read_on(&mut taken[0], true);
        assert!(
            matches!(done, Ok(true)),
            "{:?}",
            done.err().map(|e| e.to_string())
        );
        assert_eq!(inbox.node.journal().pending_count(), 1, "only the report");
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("inmsg.uncertain-"))
            .collect();
        assert_eq!(aside.len(), 1, "kept aside for the operator");
        assert_eq!(
            fs::read(dir.path().join(&aside[0])).unwrap(),
            &first.as_bytes()[..10]
        );
    }

    /// A taken file that cannot be opened (here a socket, put in inmsg.txt's place as it
    /// was taken; in the field as likely a file appended by another user, with a umask
    /// that leaves steward no read) failed the inbox at every start, before any file
    /// taken after it (they sort after it) was read: intake stopped for good.
    #[test]
    fn a_taken_file_that_cannot_be_opened_does_not_hold_up_the_ones_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = inbox_in(dir.path());
        let _socket = std::os::unix::net::UnixListener::bind(
            dir.path().join("inmsg.taking-00000000000000000001"),
        )
        .unwrap();
        fs::write(
            dir.path().join("inmsg.taking-00000000000000000002"),
            command(0),
        )
        .unwrap();
        let node = inbox.node.clone();
        let lane = crate::message::Message::new(
            "ship1",
            crate::message::Kind::CommandAck,
            "CLICommand",
            vec![],
        )
        .subject();
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let running = std::thread::spawn(move || inbox.run(&stop_rx).map_err(|f| f.to_string()));
        let until = Instant::now() + Duration::from_secs(5);
        while node.journal().lane_pending(&lane) == 0
            && Instant::now() < until
            && !running.is_finished()
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = stop.send(());
        let ended = running.join().unwrap();
        assert!(ended.is_ok(), "the inbox failed: {ended:?}");
        assert_eq!(
            node.journal().lane_pending(&lane),
            1,
            "the file after it taken"
        );
    }

    /// With nothing taken the watch waits for an event without limit, unless inotify does
    /// not hear of every write (a data folder on NFS: an append made on another host made
    /// no event, and waited, for ever, for one made here).
    #[test]
    fn an_idle_watch_deaf_to_other_hosts_looks_again_within_a_second() {
        let (w, s) = (Some(WATCHED_WAIT), Some(UNHEARD_WAIT));
        let soon = Some(Duration::from_millis(100));
        assert_eq!(wait_limit(true, None, None), None);
        assert_eq!(wait_limit(true, None, s), s);
        assert_eq!(wait_limit(true, soon, s), soon);
        assert_eq!(wait_limit(true, soon, None), soon);
        assert_eq!(wait_limit(false, None, None), w);
        assert_eq!(wait_limit(false, None, s), w);
        assert_eq!(wait_limit(false, soon, None), soon);
        assert!(crate::sys::watch_hears_every_write(std::path::Path::new(
            "/tmp"
        )));
    }

    fn ship1_lane() -> crate::subject::Subject {
        crate::message::Message::new(
            "ship1",
            crate::message::Kind::CommandAck,
            "CLICommand",
            vec![],
        )
        .subject()
    }

    /// Reads taken file `name` in `dir` until it is done; what went to inmsg.rejected.txt.
    fn read_all(inbox: &Inbox, mut t: Taken) -> String {
        for _ in 0..1000 {
            if inbox.read_on(&mut t, true).unwrap() {
                return fs::read_to_string(inbox.node.data.rejected()).unwrap_or_default();
            }
        }
        panic!("{} never done", t.name);
    }

    /// After a restart a taken file is read on from its journaled offset; the errors of
    /// what is rejected after it named lines counted from there (every restart made the
    /// rest of a file begin at "line 1"), not the file's own.
    #[test]
    fn a_file_read_on_after_a_restart_names_its_own_lines() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = inbox_in(dir.path());
        let name = "inmsg.taking-00000000000000000001";
        let first = format!("{}{}", command(0), command(1));
        fs::write(
            dir.path().join(name),
            format!("{first}[{{\"toNode\": }}]\n{}", command(2)),
        )
        .unwrap();
        inbox
            .node
            .accept(Vec::new(), Some((name, first.len() as u64)))
            .unwrap();
        let mut taken = inbox.leftovers().unwrap();
        assert_eq!(taken[0].offset, first.len() as u64);
        let rejected = read_all(&inbox, taken.remove(0));
        assert!(
            rejected.contains("rejected: line 3: invalid JSON"),
            "{rejected}"
        );
        assert_eq!(inbox.node.journal().lane_pending(&ship1_lane()), 1);
    }

    /// One valid array on one line past what may be read at once (Python's `json.dump` of
    /// a big list): rejected, but for its size, not as "invalid JSON: EOF while parsing a
    /// list" (it is valid JSON; the operator could not tell what to fix). The array on the
    /// line after it still goes.
    #[test]
    fn an_array_past_what_may_be_read_at_once_is_rejected_for_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = inbox_in(dir.path());
        let one = r#"{"toNode":"ship1","data":["PAD"],"commandOrEvent":"CommandACK","method":"CLICommand"}"#
            .replace("PAD", &"x".repeat(1000));
        let count = MAX_ARRAY / one.len() + 10;
        let big = format!("\n[{}]\n", vec![one.as_str(); count].join(","));
        let name = "inmsg.taking-00000000000000000001";
        fs::write(dir.path().join(name), format!("{big}{}", command(1))).unwrap();
        let t = Taken::new(name.into(), dir.path().join(name), 0, 1);
        let rejected = read_all(&inbox, t);
        let errors: Vec<&str> = rejected.lines().filter(|l| l.starts_with("# ")).collect();
        assert!(
            errors[0].contains("rejected: line 2: larger than 64 MiB"),
            "{errors:?}"
        );
        assert!(!errors[0].contains("invalid JSON"), "{errors:?}");
        assert_eq!(inbox.node.journal().lane_pending(&ship1_lane()), 1);
    }

    /// On NFS (v4) and SMB a write lease is refused with `EAGAIN`, as if a writer held the
    /// file, whenever the server has granted no delegation (for a file opened to be read,
    /// always): a taken file there was never done (a torn array in it never rejected, the
    /// file never removed, and looked at four times a second for good, one more with each
    /// append). There the inbox goes by [`QUIET`], as where leases are not allowed. (A
    /// writer holding the file stands in for the server here: the lease is refused alike.)
    #[test]
    fn where_leases_are_the_servers_a_quiet_taken_file_is_done() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            crate::sys::leases_tell_holders(dir.path()),
            "a local folder"
        );
        let inbox = inbox_in(dir.path());
        let name = "inmsg.taking-00000000000000000001";
        let path = dir.path().join(name);
        fs::write(&path, format!("{}[{{\"toNode\":", command(0))).unwrap();
        let _writer = fs::OpenOptions::new().append(true).open(&path).unwrap();
        let mut t = Taken::new(name.into(), path, 0, 1);
        assert!(!inbox.read_on(&mut t, true).unwrap(), "held, by the lease");
        t.changed -= QUIET;
        assert!(!inbox.read_on(&mut t, true).unwrap(), "held, by the lease");
        assert!(inbox.read_on(&mut t, false).unwrap(), "quiet: done");
        let rejected = fs::read_to_string(inbox.node.data.rejected()).unwrap();
        assert!(rejected.contains("[{\"toNode\":"), "{rejected}");
        assert_eq!(inbox.node.journal().lane_pending(&ship1_lane()), 1);
    }

    /// Where no lease can be had whoever steward runs as (NFS and SMB, whose leases are the
    /// server's; a filesystem without them), the report does not tell the operator to run
    /// steward as the owner of what is appended, or with CAP_LEASE: neither helps there.
    #[test]
    fn no_leases_advises_an_owner_or_cap_lease_only_where_that_is_why() {
        let path = Path::new("/data/inmsg.taking-1");
        let advice = "CAP_LEASE";
        for kind in [io::ErrorKind::Unsupported, io::ErrorKind::InvalidInput] {
            let text = no_leases_text("ship1", path, &io::Error::new(kind, "refused"));
            assert!(!text.contains(advice), "{kind:?}: {text}");
            assert!(text.contains("Append with `>>`"), "{text}");
        }
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(no_leases_text("ship1", path, &denied).contains(advice));
    }

    /// An inmsg.txt moved away or removed between the inbox's look at it and its rename
    /// (a logrotate that rotates it, an operator's `mv`, a script's `rm -f` before it
    /// writes) is nothing to take: it failed the inbox (restarted after a pause, and
    /// reported to central as a failure).
    #[test]
    fn an_inmsg_txt_gone_before_it_is_renamed_does_not_fail_the_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = inbox_in(dir.path());
        let inmsg = inbox.node.data.inmsg();
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let running = std::thread::spawn(move || inbox.run(&stop_rx).map_err(|f| f.to_string()));
        let away = dir.path().join("rotated");
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until && !running.is_finished() {
            fs::write(&inmsg, "[]").unwrap();
            let _ = fs::rename(&inmsg, &away);
        }
        let _ = stop.send(());
        let ended = running.join().unwrap();
        assert!(ended.is_ok(), "the inbox failed: {ended:?}");
    }

    #[test]
    fn a_stop_sent_while_other_files_in_the_folder_change_ends_the_inbox() {
        // A stop sent as a message (the supervisor hangs up instead), taken while the
        // watch passes over message-log.txt's changes: once the inbox looked twice, the
        // second look found nothing, and it ran on at a core's full speed.
        let dir = tempfile::tempdir().unwrap();
        // Its stop descriptor held open (not readable), so that the inbox waits on its
        // watch and takes the stop where the watch woke it for another file.
        let (stop_fd, _held) = StopFd::new();
        let mut inbox = Inbox {
            stop_fd,
            ..inbox_in(dir.path())
        };
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let running = std::thread::spawn(move || inbox.run(&stop_rx).map_err(|f| f.to_string()));
        let other = dir.path().join("message-log.txt");
        let settled = Instant::now() + Duration::from_millis(300);
        while Instant::now() < settled {
            fs::write(&other, "a line").unwrap();
        }
        stop.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !running.is_finished() {
            assert!(Instant::now() < deadline, "the inbox ran on after its stop");
            fs::write(&other, "a line").unwrap();
        }
        let ended = running.join().unwrap();
        assert!(ended.is_ok(), "the inbox failed: {ended:?}");
    }

    #[test]
    fn a_file_set_aside_never_takes_the_name_of_one_set_aside_before() {
        let dir = tempfile::tempdir().unwrap();
        let first = uncertain_path_from(dir.path(), 7);
        fs::write(&first, "set aside first").unwrap();
        let second = uncertain_path_from(dir.path(), 7);
        assert_ne!(first, second);
        assert_eq!(
            second.file_name().unwrap(),
            "inmsg.uncertain-00000000000000000008.txt"
        );
    }

    #[test]
    fn a_full_disk_makes_intake_wait_and_any_other_error_is_a_retry() {
        let journal = |errno| Error::Journal {
            path: "inmsg.taking-1".into(),
            source: io::Error::from_raw_os_error(errno),
        };
        assert!(journal(libc::ENOSPC).disk_full());
        assert!(!journal(libc::EIO).disk_full());
        assert!(journal(libc::EIO)
            .to_string()
            .starts_with("cannot journal messages from inmsg.taking-1: "));
        assert!(!Failure::from(journal(libc::EIO)).is_fatal());
    }
}
