//! The data folder and the few ways steward writes files.
//!
//! Everything a node keeps lives under one folder (by default the binary's own, as the seed
//! says). [`DataFolder`] is the one place that names the files in it, so the README, the
//! tests and the code agree. Node and method names become file names only after
//! [`crate::subject::validate_name`] has refused `/`, `..` and friends.
//!
//! What steward creates there is private: folders [`PRIVATE_DIR`], files [`PRIVATE_FILE`]
//! (commands, their output and the logs are nobody else's business on a shared machine).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Size at which `message-log.txt` is rotated (`message-log.txt.1`, …): a line per message
/// this node sent, for as long as it runs, would otherwise fill its disk in the end.
pub const MESSAGE_LOG_ROTATE_AT: u64 = 64 << 20;
/// Old message logs kept.
pub const MESSAGE_LOG_KEEP: usize = 4;

#[derive(Debug, Clone)]
pub struct DataFolder {
    pub root: PathBuf,
}

impl DataFolder {
    pub fn new(root: PathBuf) -> DataFolder {
        DataFolder { root }
    }

    /// Where operators append messages to send.
    pub fn inmsg(&self) -> PathBuf {
        self.root.join("inmsg.txt")
    }
    /// Input that could not be taken, verbatim, each piece after a `#` line saying why.
    pub fn rejected(&self) -> PathBuf {
        self.root.join("inmsg.rejected.txt")
    }
    pub fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }
    /// Every processed message, one JSON line each, with all it takes to send it again;
    /// rotated at [`MESSAGE_LOG_ROTATE_AT`], [`MESSAGE_LOG_KEEP`] old ones kept.
    pub fn message_log(&self) -> PathBuf {
        self.root.join("message-log.txt")
    }
    /// Messages whose retries were spent or that were refused, as inmsg.txt arrays.
    pub fn failed(&self) -> PathBuf {
        self.root.join("failed-messages.txt")
    }
    /// The messages given up whose late replies are awaited (see
    /// [`crate::process::publisher::LateReplies`]): kept so that a restart does not drop them.
    pub fn late_replies(&self) -> PathBuf {
        self.root.join("late-replies.json")
    }
    /// Messages the journal held but could not hand out, whole (see
    /// [`crate::node::Node::report_unreadable`]); rotated as logs are.
    pub fn unreadable(&self) -> PathBuf {
        self.root.join("unreadable-messages.txt")
    }
    /// Replies received for messages this node sent, per destination node and method;
    /// rotated as logs are ([`crate::log_budget::ROTATE_AT`]).
    pub fn replies(&self, node: &str, method: &str) -> PathBuf {
        self.root
            .join("replies")
            .join(format!("{node}.{method}.log"))
    }
    /// TextLogging received, per sending node.
    pub fn text_log(&self, from_node: &str) -> PathBuf {
        self.root.join("textlog").join(format!("{from_node}.log"))
    }
    /// The central error logger's log of errors from every node.
    pub fn error_log(&self) -> PathBuf {
        self.root.join("errors.log")
    }
    /// The control socket of the running agent (`steward send`, `steward status`).
    pub fn socket(&self) -> PathBuf {
        self.root.join("steward.sock")
    }
    /// This node's signing key and the keys it trusts (see [`crate::keys`]).
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// Messages this node sends itself at every start (see [`crate::startup`]).
    pub fn startup(&self) -> PathBuf {
        self.root.join("startup")
    }
    /// Which startup messages the last starts journaled, while they wait to be delivered
    /// (see [`crate::startup`]).
    pub fn startup_sent(&self) -> PathBuf {
        self.root.join("startup-sent.json")
    }
    /// The schedules this node runs, and where each stands.
    pub fn schedules(&self) -> PathBuf {
        self.root.join("schedules.json")
    }
    /// The central node's record of when each node last said Hello.
    pub fn hello_nodes(&self) -> PathBuf {
        self.root.join("hello-nodes.json")
    }
}

/// Mode of the folders steward creates: they hold commands, outputs and logs, which are the
/// owner's business only. (Set here rather than through the umask, which commands inherit.)
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of the files steward creates.
pub const PRIVATE_FILE: u32 = 0o600;

/// Creates `dir` and any missing parents, each [`PRIVATE_DIR`].
pub fn create_dirs(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
}

/// Creates `path` empty and [`PRIVATE_FILE`], replacing any file there (a temporary file left
/// by a crash keeps its old mode, so the mode is set again).
pub fn create_private(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))?;
    Ok(f)
}

/// Opens `path` for appending, creating it [`PRIVATE_FILE`] (and its folders) if need be.
/// A symbolic link at `path` is not followed (an error): steward never makes one.
pub fn open_append(path: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(PRIVATE_FILE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    match open() {
        // The folders made only when missing: looked at first, they cost a stat and a mkdir
        // at every reply and message-log line.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                create_dirs(parent)?;
            }
            open()
        }
        opened => opened,
    }
}

/// Appends `bytes` as one record, durably, or not at all: a record half written (a full
/// disk) or not synced is cut back off, so that a retry appends it whole, once, and the file
/// never keeps a fragment for the next record to be glued to. A file it creates has its
/// name made durable too. The cut is only safe while no other append to the file runs:
/// callers go through the file's group ([`append_shared`], [`append_rotating`]), which
/// runs one append per file at a time.
fn append_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let f = open_append(path)?;
    let start = f.metadata()?.len();
    append_whole_to(f, start, path, bytes)
}

/// [`append_whole`] to `f`, `path` opened by [`open_append`], `start` bytes long. An empty
/// file may be one this append made: its name is made durable too (a folder fsync more for
/// one that was there empty, which is rare).
fn append_whole_to(mut f: File, start: u64, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let created = start == 0;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_data())
        .and_then(|()| match (created, path.parent()) {
            (true, Some(dir)) => sync_dir(dir),
            _ => Ok(()),
        });
    if let Err(e) = written {
        if let Err(cut) = f.set_len(start) {
            log::error!(
                "{}: cannot cut a half-written record off: {cut}",
                path.display()
            );
        }
        return Err(e);
    }
    Ok(())
}

/// Appends `bytes` with a single `write` on an `O_APPEND` file, so concurrent appenders never
/// interleave inside one record. With `durable`, the data is fsync'd before returning (and
/// the name of a file it creates).
pub fn append(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let created = durable && !path.exists();
    let mut f = open_append(path)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_data()?;
    }
    match (created, path.parent()) {
        (true, Some(dir)) => sync_dir(dir),
        _ => Ok(()),
    }
}

/// Appends as [`append_shared`] (durably, whole or not at all, one append to the file at a
/// time, those that come meanwhile together), first rotating `path` if the append would
/// take it past `rotate_at` bytes: `path.{keep-1}` becomes `path.{keep}` (the oldest is
/// replaced), …, `path` becomes `path.1`. So the family never holds much more than
/// `rotate_at × (keep + 1)` bytes. The rotation is made durable with the append (the new
/// file's name is synced).
pub fn append_rotating(path: &Path, bytes: &[u8], rotate_at: u64, keep: usize) -> io::Result<()> {
    Group::of(Work::Append, path).join(bytes, |all| {
        // Its size from the file opened to append to: no stat of the path at every append.
        let f = open_append(path)?;
        let size = f.metadata()?.len();
        if size == 0 || size.saturating_add(all.len() as u64) <= rotate_at {
            return append_whole_to(f, size, path, all);
        }
        drop(f);
        rotate(path, keep)?;
        append_whole(path, all)
    })
}

/// The bytes of a small file steward reads whole (its config, a startup file), which must
/// be a regular file of at most `max` bytes: opened without waiting (a FIFO nobody writes
/// to held the agent before it said anything) nor following a link at its name unless
/// `follow` (a config file may be one), and read no further than `max` (`/dev/zero`, or a
/// stray file of gigabytes, was read until memory ran out).
pub fn read_small(path: &Path, max: u64, follow: bool) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let flags = match follow {
        true => libc::O_NONBLOCK,
        false => libc::O_NONBLOCK | libc::O_NOFOLLOW,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a folder, a FIFO or a device)",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            match max % (1 << 20) {
                0 => format!("larger than {} MiB", max >> 20),
                _ => format!("larger than {} KiB", max >> 10),
            },
        ));
    }
    Ok(bytes)
}

/// Sets aside a file of steward's own that cannot be read (`why`) as `<name>.bad`, saying
/// so and what that costs (`so`), rather than letting the next write replace it: what it
/// held stays where an operator can find it.
pub fn set_aside(path: &Path, why: &str, so: &str) {
    set_aside_saying(path, &format!("unreadable ({why})"), so)
}

/// As [`set_aside`], for a file readable but not to be used as it stands: `what` is what
/// is wrong with it.
pub fn set_aside_saying(path: &Path, what: &str, so: &str) {
    // `<name>.bad`, or the first `<name>.bad.<n>` free: a second bad file does not replace
    // the first, which may be the one an operator needs.
    let named = |n: u32| {
        let mut aside = path.as_os_str().to_owned();
        aside.push(".bad");
        if n > 0 {
            aside.push(format!(".{n}"));
        }
        PathBuf::from(aside)
    };
    let aside = (0..1000)
        .map(named)
        .find(|p| fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| named(1000));
    log::error!(
        "{}: {what}; set aside as {}, {so}",
        path.display(),
        aside.display()
    );
    if let Err(e) = fs::rename(path, &aside) {
        log::error!("{}: cannot set it aside: {e}", path.display());
    }
}

/// The `i`th file `path` was rotated to ([`append_rotating`]): `path.{i}`.
pub fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{i}"));
    PathBuf::from(p)
}

/// Rotates `path` (see [`append_rotating`]): `path.{keep-1}` becomes `path.{keep}`, …,
/// `path` becomes `path.1` (removed, with `keep` 0).
fn rotate(path: &Path, keep: usize) -> io::Result<()> {
    let numbered = |i: usize| rotated(path, i);
    let gone_is_fine = |r: io::Result<()>| match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    if keep == 0 {
        return gone_is_fine(fs::remove_file(path));
    }
    for i in (1..keep).rev() {
        gone_is_fine(fs::rename(numbered(i), numbered(i + 1)))?;
    }
    gone_is_fine(fs::rename(path, numbered(1)))
}

/// Replaces `path` with `bytes` so that a reader (or a crash) sees the old or the new content,
/// never a mix: write a temporary file, fsync it, rename it over, fsync the folder.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dirs(dir)?;
    // `<name>.tmp`, not `<stem>.tmp`: named as the file it becomes, so that what keeps
    // senders from reading a file by its name (`schedules.json`, every sender's scheduled
    // requests: see `methods::private_to_the_node`) keeps them from reading it while it is
    // written, too (`schedules.tmp` was anyone's, and TailFile read it whole).
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = create_private(&tmp)?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        // Not left behind: on a full disk, hello-nodes.json's (1 MB for 10,000 nodes, tried
        // again each second) would hold the last free blocks the journal needs.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// As [`write_atomically`], through the temporary file `tmp` (in the same folder), which
/// must be a name no one else writes: for files whose names come from elsewhere.
pub fn write_atomically_through(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(tmp, path));
    if let Err(e) = written {
        // Not left behind (a full disk's half-written file, under a name of its own).
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Makes the names in `dir` (files created, renamed or removed there) durable. Callers that
/// come while a sync of the same folder runs share the next one ([`Group`]): on a fan-out's
/// first command, 1,000 publishers each create a reply file in `replies/`, and of 10,000
/// folder fsyncs, each writing the same folder blocks, about 6,000 are left (measured:
/// the rest came while one ran).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    Group::of(Work::SyncDir, dir).join(&[], |_| File::open(dir)?.sync_all())
}

/// Appends `bytes` durably, whole or not at all, to a file that several threads append to
/// (message-log.txt, a line per finished message from every publisher; failed-messages.txt;
/// a reply file, shared by a method's ACK and NACK lanes to one node): what comes while a
/// write and fsync run goes out together with the next, one write and one fsync for all
/// ([`Group`]). Each caller's bytes stay together; it returns once they are synced. A
/// write that fails is cut back off ([`append_whole`]): safe, as the group runs one
/// append to the file at a time, so the cut never takes another caller's record.
pub fn append_shared(path: &Path, bytes: &[u8]) -> io::Result<()> {
    Group::of(Work::Append, path).join(bytes, |all| append_whole(path, all))
}

/// What a [`Group`] does: groups are kept per path and per work, so that a folder sync
/// never stands in for an append.
#[derive(Clone, Copy)]
enum Work {
    SyncDir,
    Append,
}

/// Group commit on one file or folder: callers gather (with their bytes) while the work
/// before theirs runs; then one of them does the work (a write and an fsync) for all of
/// them, begun after each had come, so their bytes or name changes are covered. Each
/// caller returns the outcome of the work that covered it: a failure fails exactly those
/// callers, whatever works before or after did.
#[derive(Default)]
struct Group {
    state: std::sync::Mutex<GroupState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct GroupState {
    running: bool,
    /// The bytes of the callers gathered for the next work, and where its outcome goes.
    pending: Vec<u8>,
    next: std::sync::Arc<Outcome>,
}

/// How one work ended, for the callers it covered: set once, before the work is no longer
/// running. An error keeps its OS error code (a full disk is found by it).
#[derive(Default)]
struct Outcome(std::sync::OnceLock<Result<(), Failed>>);

/// A work's error, as each caller it covered gets it again: the OS error code if it had
/// one, else its kind and text.
#[derive(Clone)]
struct Failed(Option<i32>, io::ErrorKind, String);

impl Outcome {
    fn get(&self) -> Option<io::Result<()>> {
        let result = self.0.get()?;
        Some(
            result
                .clone()
                .map_err(|Failed(code, kind, why)| match code {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(kind, why),
                }),
        )
    }
}

impl Group {
    /// The group doing `work` on `path`. Groups nobody is in are let go once there are
    /// more than a few (a copy's destination folder is synced once, and there may be many).
    fn of(work: Work, path: &Path) -> std::sync::Arc<Group> {
        // A map per work, looked up by the path as given: no allocation on the message
        // path once the group exists.
        type Groups = [std::collections::HashMap<PathBuf, std::sync::Arc<Group>>; 2];
        static GROUPS: std::sync::OnceLock<std::sync::Mutex<Groups>> = std::sync::OnceLock::new();
        let groups = GROUPS.get_or_init(Default::default);
        let mut groups = groups.lock().unwrap_or_else(|p| p.into_inner());
        let groups = &mut groups[work as usize];
        if let Some(group) = groups.get(path) {
            return group.clone();
        }
        if groups.len() >= 64 {
            groups.retain(|_, g| std::sync::Arc::strong_count(g) > 1);
        }
        groups.entry(path.to_path_buf()).or_default().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `bytes` to what is gathered, and returns how the work that covered them ended
    /// (done here or by another caller).
    fn join(&self, bytes: &[u8], work: impl Fn(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut s = self.lock();
        s.pending.extend_from_slice(bytes);
        let mine = s.next.clone();
        loop {
            if let Some(result) = mine.get() {
                return result;
            }
            if s.running {
                s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Nothing runs, so every work begun has set its outcome: `mine` is still
            // `next`, this caller's own gathering. It does the work for all of it.
            s.running = true;
            let gathered = std::mem::take(&mut s.pending);
            let outcome = std::mem::take(&mut s.next);
            debug_assert!(std::sync::Arc::ptr_eq(&mine, &outcome));
            drop(s);
            // A panic would leave every later caller waiting for work that never ends.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&gathered)))
                .unwrap_or_else(|_| Err(io::Error::other("panicked while writing")));
            let kept = result
                .as_ref()
                .map(|_| ())
                .map_err(|e| Failed(e.raw_os_error(), e.kind(), e.to_string()));
            let _ = outcome.0.set(kept);
            s = self.lock();
            s.running = false;
            if s.pending.is_empty() {
                // Keeps the buffer's memory for the next gathering, within reason.
                let mut gathered = gathered;
                gathered.clear();
                gathered.shrink_to(64 * 1024);
                s.pending = gathered;
            }
            self.done.notify_all();
            // Its own error as it came, with its source.
            return result;
        }
    }
}

/// Makes text from a remote sender safe to write into a log an operator reads in a terminal:
/// control characters other than `\n` and `\t` are written as escapes (`\r` as `\\r`, ESC
/// as `\\x1b`, C1 controls as `\\u{9b}`), so a sender can neither forge lines (a `\r`
/// rewinding the terminal over a real line) nor send commands to the operator's terminal.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    // Controls, and the invisible characters that reorder or hide text on a terminal
    // (bidirectional overrides and isolates, zero-width characters).
    let unsafe_char = |c: char| {
        c.is_control() && c != '\n' && c != '\t'
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    // Bytes first (a log line is mostly plain ASCII): only from the first control or
    // non-ASCII byte on are characters decoded. The byte found starts a character (all
    // before it are ASCII).
    let plain = |b: &u8| (b' '..0x7f).contains(b) || *b == b'\n' || *b == b'\t';
    let first = text.bytes().position(|b| !plain(&b));
    if first.is_none_or(|i| !text[i..].chars().any(unsafe_char)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// [`escape_controls`] for one line of a log: `\n` written as `\\n` too, so that a remote
/// party's text (a refusal's words, a reply's id, an error quoting its JSON) cannot start a
/// line of its own.
pub fn escape_line(text: &str) -> std::borrow::Cow<'_, str> {
    match escape_controls(text) {
        t if t.contains('\n') => std::borrow::Cow::Owned(t.replace('\n', "\\n")),
        t => t,
    }
}

/// An inotify watch on a folder: wakes its waiter when a file in it is written, created,
/// renamed in or closed (the inbox, on the data folder; the benchmark, on replies/), or
/// tells what changed there since it was last asked ([`Watch::ANY_CHANGE`]: the keys
/// folder's, see [`crate::keys::Trusted`]).
pub struct Watch {
    inotify: File,
}

impl Watch {
    /// Files written, created, renamed in or closed after writing.
    const WRITTEN: u32 =
        libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;

    /// Files written, created, renamed in or closed after writing, removed, renamed away or
    /// their mode changed; the folder itself removed or renamed.
    pub const ANY_CHANGE: u32 = Watch::WRITTEN
        | libc::IN_DELETE
        | libc::IN_MOVED_FROM
        | libc::IN_ATTRIB
        | libc::IN_DELETE_SELF
        | libc::IN_MOVE_SELF;

    /// A watch for files written in `dir`.
    pub fn new(dir: &std::path::Path) -> Option<Watch> {
        Watch::on(dir, Watch::WRITTEN)
    }

    /// A watch for the events of `mask` in `dir`.
    pub fn on(dir: &std::path::Path, mask: u32) -> Option<Watch> {
        let inotify = crate::sys::inotify_init().ok()?;
        crate::sys::inotify_add_watch(&inotify, dir, mask).ok()?;
        Some(Watch { inotify })
    }

    /// Waits until something changed in the folder, or `timeout`; drains the events.
    pub fn wait(&self, timeout: std::time::Duration) {
        if let Ok([true]) = crate::sys::wait_readable([self.as_fd()], Some(timeout)) {
            self.drain();
        }
    }

    /// Reads the events that woke a wait on [`Watch::as_fd`] (so the next one waits).
    pub fn drain(&self) {
        self.drain_naming(|_| true);
    }

    /// [`Watch::drain`]; returns whether `wanted` said yes to one of the events, asked of
    /// each with the name of its file: empty for one without (the folder's own, removed or
    /// renamed; the queue overflowed, so anything may have changed).
    pub fn drain_naming(&self, mut wanted: impl FnMut(&[u8]) -> bool) -> bool {
        use std::io::Read;
        // `struct inotify_event`: wd, mask, cookie, len, then `len` bytes of name, padded
        // with NULs; the kernel writes whole events only.
        const HEADER: usize = 16;
        let mut buf = [0u8; 4096];
        let mut found = false;
        // Non-blocking: reads until there is nothing left.
        while let Ok(n @ 1..) = (&self.inotify).read(&mut buf) {
            let events = &buf[..n];
            let mut at = 0;
            while at + HEADER <= n {
                let len = u32::from_ne_bytes(events[at + 12..at + 16].try_into().unwrap());
                let len = len as usize;
                let name = events
                    .get(at + HEADER..at + HEADER + len)
                    .unwrap_or_default();
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                found |= wanted(name);
                at += HEADER + len;
            }
        }
        found
    }
}

/// Readable when something changed in the folder: to wait on it together with something
/// else.
impl AsFd for Watch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Formats milliseconds since the epoch as RFC 3339 UTC, e.g. `2026-11-24T17:48:54.123Z`.
pub fn rfc3339(millis: u64) -> String {
    let secs = millis / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Civil-from-days, after Howard Hinnant's algorithm.
    let z = (secs / 86400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        millis % 1000
    )
}

pub fn now_rfc3339() -> String {
    rfc3339(unix_millis())
}

/// Writes all of `bytes` to a socket by `deadline`, however slowly its reader takes them,
/// or fails: a client that stops reading gives its place back (`/metrics`, the control
/// socket).
pub fn write_by(
    stream: &mut impl TimedWrite,
    mut bytes: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the answer was not taken in time",
            ));
        }
        stream.set_timeout(left)?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A socket whose writes wait at most so long (a trait, for the tests).
pub trait TimedWrite: Write {
    fn set_timeout(&mut self, d: Duration) -> io::Result<()>;
}

impl TimedWrite for std::net::TcpStream {
    fn set_timeout(&mut self, d: Duration) -> io::Result<()> {
        self.set_write_timeout(Some(d))
    }
}

impl TimedWrite for std::os::unix::net::UnixStream {
    fn set_timeout(&mut self, d: Duration) -> io::Result<()> {
        self.set_write_timeout(Some(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file set aside twice keeps both bad copies: the second does not replace the first.
    #[test]
    fn a_file_set_aside_twice_keeps_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schedules.json");
        for text in ["first", "second"] {
            std::fs::write(&path, text).unwrap();
            set_aside(&path, "unreadable", "its schedules stop");
        }
        assert!(!path.exists());
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("schedules.json.bad"), "first");
        assert_eq!(read("schedules.json.bad.1"), "second");
    }

    /// A write that fails leaves no temporary file behind (a full disk's, half written).
    #[test]
    fn a_failed_atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello-nodes.json");
        // Renaming over a folder fails.
        std::fs::create_dir(&path).unwrap();
        assert!(write_atomically(&path, b"{}").is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["hello-nodes.json"]);
    }

    /// Takes a byte a call, slowly: a client that reads slowly.
    struct Trickle(usize);

    impl Write for Trickle {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(5));
            self.0 += 1;
            Ok(1)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl TimedWrite for Trickle {
        fn set_timeout(&mut self, _: Duration) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_answer_read_slowly_is_given_up_at_its_deadline() {
        let mut slow = Trickle(0);
        let started = Instant::now();
        let deadline = started + Duration::from_millis(100);
        let e = write_by(&mut slow, &[b'x'; 10_000], deadline).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_millis(200));
        assert!((5..=21).contains(&slow.0), "{} bytes taken", slow.0);
        let mut quick = Trickle(0);
        write_by(&mut quick, b"abc", Instant::now() + Duration::from_secs(1)).unwrap();
        assert_eq!(quick.0, 3);
    }

    /// Every character, alone and after plain text and after another non-ASCII one: the
    /// byte scan lets none through that the character test would escape.
    #[test]
    fn escape_controls_escapes_every_unsafe_character_wherever_it_is() {
        let unsafe_char = |c: char| {
            c.is_control() && c != '\n' && c != '\t'
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
        };
        for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
            for text in [
                c.to_string(),
                format!("ab c{c}"),
                format!("é{c}x"),
                format!("{c}\n"),
            ] {
                let out = escape_controls(&text);
                let borrowed = matches!(out, std::borrow::Cow::Borrowed(_));
                assert_eq!(borrowed, !unsafe_char(c), "{:?}", c as u32);
                assert!(!out.chars().any(unsafe_char), "{:?}", c as u32);
            }
        }
    }

    #[test]
    fn appenders_at_once_share_writes_and_each_one_s_bytes_arrive_whole_and_once() {
        let group = Group::default();
        let (works, written) = (
            std::sync::atomic::AtomicUsize::new(0),
            std::sync::Mutex::new(Vec::new()),
        );
        let work = |all: &[u8]| {
            works.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(1));
            written.lock().unwrap().extend_from_slice(all);
            Ok(())
        };
        std::thread::scope(|s| {
            for t in 0..16 {
                let (group, work) = (&group, &work);
                s.spawn(move || {
                    for i in 0..100 {
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(i));
                        group.join(line.as_bytes(), work).unwrap();
                    }
                });
            }
        });
        let text = String::from_utf8(written.into_inner().unwrap()).unwrap();
        let lines: std::collections::HashSet<&str> = text.lines().collect();
        assert_eq!(text.lines().count(), 1600, "each line once");
        assert_eq!(lines.len(), 1600);
        for line in lines {
            let i: usize = line.split(' ').nth(3).unwrap().parse().unwrap();
            assert!(
                line.ends_with(&format!(" {}", "x".repeat(i))),
                "torn: {line:?}"
            );
        }
        let works = works.into_inner();
        assert!(works < 1600, "{works} writes for 1600 appends: none shared");
        eprintln!("[group] 1600 appends from 16 threads: {works} writes");
    }

    #[test]
    fn a_failed_shared_write_fails_its_callers_and_the_next_one_goes_through() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not yet");
        let err = sync_dir(&missing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        fs::create_dir(&missing).unwrap();
        sync_dir(&missing).unwrap();
        // A folder where the file should be: the append cannot open it.
        let log = missing.join("message-log.txt");
        fs::create_dir(&log).unwrap();
        append_shared(&log, b"lost\n").unwrap_err();
        fs::remove_dir(&log).unwrap();
        append_shared(&log, b"kept\n").unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "kept\n");
        // Work that panics fails its callers, and leaves no one waiting behind it.
        let group = Group::default();
        let err = group
            .join(b"x", |_| -> io::Result<()> { panic!("a bug") })
            .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        let next = std::sync::Mutex::new(Vec::new());
        group
            .join(b"y", |all| {
                next.lock().unwrap().extend_from_slice(all);
                Ok(())
            })
            .unwrap();
        assert_eq!(
            next.into_inner().unwrap(),
            b"y",
            "the panicked work's bytes are gone"
        );
    }

    /// A work fails exactly the callers it covered, even those that hear of it only after
    /// the next work, covering later callers, has succeeded.
    #[test]
    fn a_failed_work_fails_its_own_callers_and_no_others() {
        let group = Group::default();
        let (go, wait) = crossbeam_channel::bounded::<()>(0);
        let work = |all: &[u8]| match all {
            b"slow" => {
                let _ = wait.recv();
                Ok(())
            }
            _ if all.starts_with(b"bad") => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            _ => Ok(()),
        };
        let gathered = |n: usize| {
            while group.lock().pending.len() < n {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };
        std::thread::scope(|s| {
            let (group, work) = (&group, &work);
            let first = s.spawn(move || group.join(b"slow", work));
            while !group.lock().running {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let bad: Vec<_> = [b"bad1", b"bad2"]
                .map(|b| s.spawn(move || group.join(b, work)))
                .into();
            gathered(8);
            go.send(()).unwrap();
            // While the two bad ones' work runs, a good one gathers for the next.
            while group.lock().pending.len() == 8 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let good = s.spawn(move || group.join(b"good", work));
            assert!(first.join().unwrap().is_ok());
            assert!(good.join().unwrap().is_ok());
            for b in bad {
                let err = b.join().unwrap().unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
            }
        });
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_542_534_123), "2026-11-24T17:48:54.123Z");
    }

    #[test]
    fn files_and_folders_steward_creates_are_private() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        append(&dir.path().join("a/b/log.txt"), b"x", false).unwrap();
        write_atomically(&dir.path().join("c/x.json"), b"x").unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
        assert_eq!(mode(&dir.path().join("c")), 0o700);
        assert_eq!(mode(&dir.path().join("a/b/log.txt")), 0o600);
        assert_eq!(mode(&dir.path().join("c/x.json")), 0o600);
    }

    #[test]
    fn control_characters_are_escaped_but_newlines_and_tabs_kept() {
        assert_eq!(escape_controls("plain\ttext\n"), "plain\ttext\n");
        assert!(matches!(
            escape_controls("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("ok\r2026-01-01 central [x]: forged"),
            "ok\\r2026-01-01 central [x]: forged"
        );
        assert_eq!(
            escape_controls("\x1b[2J\x1b]0;t\x07"),
            "\\x1b[2J\\x1b]0;t\\x07"
        );
        assert_eq!(
            escape_controls("a\u{0}b\u{7f}c\u{9b}d"),
            "a\\x00b\\x7fc\\u{9b}d"
        );
        assert_eq!(escape_controls("héllo ✓"), "héllo ✓");
    }

    /// For one line of a log, a newline is escaped too; the rest as [`escape_controls`].
    #[test]
    fn a_log_line_s_text_keeps_to_its_line() {
        assert_eq!(
            escape_line("no\n[2030-01-01T00:00:00Z ERROR steward] forged\r"),
            "no\\n[2030-01-01T00:00:00Z ERROR steward] forged\\r"
        );
        assert_eq!(escape_line("tab\tkept"), "tab\tkept");
        assert!(matches!(
            escape_line("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn rotation_keeps_a_few_old_files_and_bounds_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("errors.log");
        for i in 0..20 {
            append_rotating(&log, format!("line {i:02}\n").as_bytes(), 16, 2).unwrap();
        }
        // Two lines (16 bytes) a file; the newest file, and two old ones.
        assert_eq!(fs::read_to_string(&log).unwrap(), "line 18\nline 19\n");
        let old = |n| fs::read_to_string(dir.path().join(format!("errors.log.{n}"))).unwrap();
        assert_eq!(old(1), "line 16\nline 17\n");
        assert_eq!(old(2), "line 14\nline 15\n");
        assert!(!dir.path().join("errors.log.3").exists());
    }

    /// Appends from many threads to a rotating file: each line once in the family, whole,
    /// none lost to a rotation, the family bounded.
    #[test]
    fn rotating_appends_from_many_threads_keep_each_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("replies.log");
        std::thread::scope(|s| {
            for t in 0..8 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..50 {
                        let line = format!("thread {t} line {i:02}\n");
                        append_rotating(log, line.as_bytes(), 400, 100).unwrap();
                    }
                });
            }
        });
        let mut lines = Vec::new();
        for entry in fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let text = fs::read_to_string(&path).unwrap();
            assert!(
                text.len() <= 400,
                "{}: {} bytes",
                path.display(),
                text.len()
            );
            lines.extend(text.lines().map(str::to_string));
        }
        lines.sort();
        let mut want: Vec<String> = (0..8)
            .flat_map(|t| (0..50).map(move |i| format!("thread {t} line {i:02}")))
            .collect();
        want.sort();
        assert_eq!(lines, want);
    }

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!p.with_extension("tmp").exists());
        assert!(!dir.path().join("x.json.tmp").exists());
    }
}
