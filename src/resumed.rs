//! Messages an earlier run accepted and did not finish, and what that run had done with them
//! all the same: the sender's half of "stored once" across a power cut.
//!
//! The publisher records how a message ended in this order, each fsync'd: its reply in
//! `replies/`, `failed-messages.txt` if it failed, its line in `message-log.txt`; only then
//! is it finished in the journal (`DoneThrough`), which is synced with the journal's next
//! sync, within half a second (see [`crate::journal`]). So a power cut can take the
//! `DoneThrough` and leave the rest: the message comes back at the next start as
//! unfinished. Sent again, the receiver would answer from its stored reply (nothing runs
//! twice), and the sender would store that reply, and list the message, a second time.
//!
//! So a node that starts with unfinished messages first reads the end of
//! `message-log.txt` its last run left: the ids listed in that run's last [`WINDOW`], at
//! most [`TAIL_BYTES`] of it. Then:
//!
//! - a resumed message listed there was finished before the cut, its reply stored with
//!   it: it is marked finished at once, not sent again ([`Resumed::finished`]);
//! - a resumed message not listed may still have had its reply stored, if the cut came
//!   between the reply's fsync and the line's. That reply can only be among the last
//!   records of its reply file, those of the lane's last finish before the cut: its
//!   reply is looked for there, backwards from the end, before it is stored
//!   ([`Resumed::stored_replies`]). The look stops at a record of a listed message, one
//!   older than the window, or [`TAIL_BYTES`] back; and once one resumed reply of a lane
//!   is not found, the lane's later ones are not looked for (a lane stores its replies in
//!   order).
//!
//! A power cut can also come in the middle of a write: a reply file, failed-messages.txt or
//! message-log.txt can end with part of what was being written (on ext4, its first pages:
//! the file's size follows what was written back). Only the messages being finished then
//! are in such a tail, all unfinished in the journal, sent again and written again whole.
//! So a reply record counts as stored only when it is whole: its header ends with its
//! body's length and CRC-32 (`bytes=… crc=…`, [`ReplyHeader`]), checked here. And at a start
//! with unfinished messages, before anything is written ([`Resumed::open`]):
//!
//! - a reply file of a lane with unfinished messages that does not end with a whole record
//!   gets a line saying so ([`CUT_SHORT`]), so that the next record starts on a line of its
//!   own and an operator reading the file knows the record above is not whole; nothing is
//!   cut from a reply file, as a record's output may itself hold lines that look like
//!   records (a reply file read by `cat`), so where a record begins cannot be told backwards
//!   for sure;
//! - message-log.txt and failed-messages.txt, whose records are lines and top-level arrays
//!   and never hold one in another, are ended after their last whole record: part of one
//!   is cut off and kept beside the file, a record that lacks only its newline gets it
//!   ([`end_whole`]).
//!
//! (While a node runs, a write that fails is cut back off at once: [`crate::files::append_shared`].)
//!
//! The bounds cost nothing in the common case (a window covers ten journal syncs, and
//! [`TAIL_BYTES`] about a second of the benchmark's peak event rate); past them, a message
//! whose finish record stayed unsynced that long could be stored and listed twice, never
//! lost. A start with nothing unfinished reads nothing. The ids are kept as 64-bit hashes:
//! at most [`TAIL_BYTES`] of lines, under a megabyte.

use crate::files::DataFolder;
use crate::journal::Entry;
use crate::subject::Subject;
use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How far back from its last line message-log.txt is read at start, in milliseconds: ten
/// times the journal's sync period.
pub const WINDOW: u64 = 5_000;
/// How much of the end of a file is read at most, for message-log.txt at start and for a
/// lane's reply file: more than one batch's replies (the broker's payload limit, 1 MiB by
/// default).
pub const TAIL_BYTES: u64 = 16 << 20;
/// How much is read at a time, backwards: first a little (what is looked for is usually
/// near the end: a central with 10,000 lanes unfinished reads 10,000 reply files' ends at
/// start), then twice as much each time, up to [`CHUNK`].
const FIRST_CHUNK: u64 = 4 << 10;
const CHUNK: u64 = 64 << 10;
/// The line a reply file gets after a record a stop left in part (see the module docs).
pub const CUT_SHORT: &str =
    "=== (the record above was cut short when the node stopped: not a whole reply; its message is sent again)\n";

/// What this run resumed, and what the last run listed before it stopped.
pub struct Resumed {
    /// Messages numbered below this were accepted by an earlier run.
    first_new_seq: u64,
    /// Hashes of the ids message-log.txt listed in the last run's last [`WINDOW`].
    listed: HashSet<u64>,
    /// The start of that window, written as reply file headers write times: older replies
    /// are not looked at.
    since: Option<String>,
    /// Lanes whose resumed replies need not be looked for any more.
    looked_up: Mutex<HashSet<String>>,
}

/// The fields of a message-log.txt line read here.
#[derive(serde::Deserialize)]
struct Listed {
    id: String,
    #[serde(rename = "finishedUnixMs")]
    finished: u64,
}

impl Resumed {
    /// What a start finds, before anything is written: the journal's first sequence number
    /// for this run, and the lanes holding unfinished messages (none: nothing is read).
    /// Tails a stop left in part are dealt with first (see the module docs). The message
    /// log is read on a best-effort basis: if it cannot be read, nothing is skipped (at
    /// worst, stored twice).
    pub fn open(data: &DataFolder, first_new_seq: u64, unfinished: &[Subject]) -> Resumed {
        let mut resumed = Resumed {
            first_new_seq,
            listed: HashSet::new(),
            since: None,
            looked_up: Mutex::new(HashSet::new()),
        };
        if unfinished.is_empty() {
            return resumed;
        }
        let message_log = data.message_log();
        end_whole(&message_log, Form::Lines);
        end_whole(&data.failed(), Form::Arrays);
        let files: BTreeSet<PathBuf> = unfinished
            .iter()
            .map(|lane| data.replies(&lane.node, &lane.method))
            .collect();
        for path in files {
            mark_if_cut_short(&path);
        }
        let message_log = message_log.as_path();
        let mut last = None;
        // The window may begin in the file the log was last rotated to.
        let rotated = crate::files::rotated(message_log, 1);
        let mut window_closed = false;
        for path in [message_log, rotated.as_path()] {
            let read = lines_backward(path, TAIL_BYTES, |_, line| {
                // A line torn by the cut, or not steward's: passed over.
                let Ok(l) = serde_json::from_slice::<Listed>(line) else {
                    return true;
                };
                let last = *last.get_or_insert(l.finished);
                if l.finished.saturating_add(WINDOW) < last {
                    window_closed = true;
                    return false;
                }
                resumed.listed.insert(key(&l.id));
                true
            });
            match read {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!(
                    "cannot read {} to see what the last run finished: {e}; resumed messages are sent again",
                    path.display()
                ),
            }
            let within_bound = std::fs::metadata(path).map_or(true, |m| m.len() <= TAIL_BYTES);
            if window_closed || !within_bound {
                break;
            }
        }
        resumed.since = last.map(|t| crate::files::rfc3339(t.saturating_sub(WINDOW)));
        if !resumed.listed.is_empty() {
            log::info!(
                "{} message(s) listed in the last {}s of {}: any of them still unfinished in the journal is finished now",
                resumed.listed.len(),
                WINDOW / 1000,
                message_log.display()
            );
        }
        resumed
    }

    /// Whether a message was accepted by an earlier run.
    pub fn is_resumed(&self, entry: &Entry) -> bool {
        entry.seq < self.first_new_seq
    }

    /// Whether a resumed message was finished by the earlier run, though the journal lost
    /// its finish record: its reply and its message-log.txt line are on disk.
    pub fn finished(&self, entry: &Entry) -> bool {
        self.is_resumed(entry) && self.listed.contains(&key(&entry.envelope.id))
    }

    /// Whether message `id` is listed in the message log's last lines: the earlier run
    /// finished it (its reply stored), whatever the journal says.
    pub fn listed(&self, id: &str) -> bool {
        self.listed.contains(&key(id))
    }

    /// Of `ids`, resumed messages of `lane` whose replies are about to be stored in `path`,
    /// those whose reply the earlier run stored already (see the module docs).
    pub fn stored_replies(&self, lane: &Subject, path: &Path, ids: &[&str]) -> HashSet<String> {
        let lane = lane.to_string();
        let looked_up = |lanes: &Mutex<HashSet<String>>| {
            lanes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&lane)
        };
        if ids.is_empty() || looked_up(&self.looked_up) {
            return HashSet::new();
        }
        let mut wanted: HashSet<&str> = ids.iter().copied().collect();
        let mut found = HashSet::new();
        // The file may have been rotated since (by the other lane to the same node and
        // method): the look goes on into the one before, as far as the bounds let it.
        let rotated = crate::files::rotated(path, 1);
        let mut stopped = false;
        for path in [path, rotated.as_path()] {
            let read = File::open(path).and_then(|file| {
                // Where a record may end: the file's end, or where a line of the file's
                // own begins (a header, part of one, the mark). A header inside a record's
                // output ends, if anywhere, inside that output, unless it is its very end.
                let len = file.metadata()?.len();
                let mut ends = HashSet::from([len]);
                lines_backward_in(&file, TAIL_BYTES, |at_byte, line| {
                    let Some(header) = ReplyHeader::parse(line) else {
                        if line.starts_with(b"=== ") {
                            ends.insert(at_byte);
                        }
                        return true;
                    };
                    if self.since.as_deref().is_some_and(|since| header.at < since) {
                        stopped = true;
                        return false;
                    }
                    ends.insert(at_byte);
                    if wanted.remove(header.id) {
                        // Its last record decides: part of a record is not a stored reply
                        // (stored again, whole), and an earlier one is not looked for.
                        // Checked for a wanted reply alone: every header inside an output
                        // (what the replying node wrote) may say its body runs to the end
                        // of the file, and reading each such body would read the file
                        // once per line.
                        let end = header.ends_at(&file, at_byte + line.len() as u64 + 1);
                        if end.is_some_and(|end| ends.contains(&end)) {
                            found.insert(header.id.to_string());
                        } else {
                            log::warn!(
                                "{}: the reply to {} stored before the last stop is not whole; storing it again",
                                path.display(),
                                header.id
                            );
                        }
                        stopped = wanted.is_empty();
                        return !stopped;
                    }
                    // Before a listed message's reply, everything was listed too.
                    stopped = self.listed.contains(&key(header.id));
                    !stopped
                })?;
                Ok(len)
            });
            match read {
                Ok(len) if !stopped && len <= TAIL_BYTES => continue,
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    log::warn!(
                        "cannot look for replies already stored in {}: {e}; storing them",
                        path.display()
                    );
                    break;
                }
            }
        }
        if found.len() < ids.len() {
            self.looked_up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(lane);
        }
        found
    }
}

fn key(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// A reply file's record header, `=== <time> id=<id> from=<node> status=<status>[ exit=<code>]
/// bytes=<n> crc=<crc>`: when the reply was stored, the message's id, and the length and
/// CRC-32 (IEEE, 8 hex digits) of the record's body, what follows the header line (the
/// output, ended by a newline). Files of earlier versions have no `bytes` and `crc`.
#[derive(Debug, PartialEq, Eq)]
pub struct ReplyHeader<'a> {
    pub at: &'a str,
    pub id: &'a str,
    pub body: Option<(u64, u32)>,
}

impl<'a> ReplyHeader<'a> {
    /// The header on `line`, or None if `line` is not one exactly as written: no part of a
    /// header with another glued to it (a stop that left a header in part, and the next
    /// record written after it on the same line) passes for a header.
    pub fn parse(line: &'a [u8]) -> Option<ReplyHeader<'a>> {
        let line = std::str::from_utf8(line.strip_prefix(b"=== ")?).ok()?;
        let mut fields = line.split(' ');
        let at = fields.next()?;
        let id = fields.next()?.strip_prefix("id=")?;
        let from = fields.next()?.strip_prefix("from=")?;
        let status = fields.next()?.strip_prefix("status=")?;
        let plain = |t: &str| !t.is_empty() && !t.contains('=');
        if !(plain(at) && plain(id) && plain(from) && plain(status)) {
            return None;
        }
        let mut next = fields.next();
        if let Some(code) = next.and_then(|f| f.strip_prefix("exit=")) {
            code.parse::<i32>().ok()?;
            next = fields.next();
        }
        let body = match next {
            None => None,
            Some(bytes) => {
                let bytes = bytes.strip_prefix("bytes=")?.parse().ok()?;
                let crc = fields.next()?.strip_prefix("crc=")?;
                if crc.len() != 8 {
                    return None;
                }
                Some((bytes, u32::from_str_radix(crc, 16).ok()?))
            }
        };
        if fields.next().is_some() {
            return None;
        }
        Some(ReplyHeader { at, id, body })
    }

    /// Where the record ends in `file` when its body, from byte `from` on, is whole.
    fn ends_at(&self, file: &File, from: u64) -> Option<u64> {
        let (bytes, crc) = self.body?;
        let end = from.checked_add(bytes)?;
        if end > file.metadata().ok()?.len() {
            return None;
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0; bytes.min(CHUNK) as usize];
        let mut at = from;
        while at < end {
            let n = (end - at).min(CHUNK) as usize;
            file.read_exact_at(&mut buf[..n], at).ok()?;
            #[cfg(test)]
            tests::HASHED.with(|h| h.set(h.get() + n as u64));
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        (hasher.finalize() == crc).then_some(end)
    }
}

/// Whether the last `max_bytes` of the reply file at `path` hold a whole record of the
/// reply to `id` (its body's length and CRC as its header says); none if there is no file.
pub fn holds_reply(path: &Path, id: &str, max_bytes: u64) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut found = false;
    lines_backward_in(&file, max_bytes, |at_byte, line| {
        let whole = |h: &ReplyHeader| h.ends_at(&file, at_byte + line.len() as u64 + 1);
        found = ReplyHeader::parse(line).is_some_and(|h| h.id == id && whole(&h).is_some());
        !found
    })?;
    Ok(found)
}

/// How a reply file ends, as a start finds it.
#[derive(Debug, PartialEq, Eq)]
enum Tail {
    /// With a whole record (or nothing, or [`CUT_SHORT`] already).
    Whole,
    /// With part of a record: its header or body in part, or no header at all after the
    /// last whole record.
    CutShort,
    /// Written by an earlier version (no `bytes` and `crc`), or no record header within
    /// [`TAIL_BYTES`]: cannot be told.
    Unknown,
}

/// How the reply file at `path` ends. Cut short if it does not end a line (every record
/// ends with a newline); whole if, of the records within its last [`TAIL_BYTES`], one ends
/// exactly at its end, whole (a record's output may hold lines that look like records: each
/// header is tried, its CRC checked only when its length leads to the end); cut short if
/// none does; not known once a record of an earlier version is met before a whole one.
fn reply_file_tail(path: &Path) -> io::Result<Tail> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(Tail::Whole);
    }
    let mut last = [0u8; CUT_SHORT.len()];
    let mark = CUT_SHORT.len() as u64;
    if len >= mark {
        file.read_exact_at(&mut last, len - mark)?;
        if last == CUT_SHORT.as_bytes() {
            return Ok(Tail::Whole);
        }
    }
    if !ends_a_line(&file, len)? {
        return Ok(Tail::CutShort);
    }
    let mut tail = Tail::Unknown;
    lines_backward_in(&file, TAIL_BYTES, |at_byte, line| {
        let Some(header) = ReplyHeader::parse(line) else {
            return true;
        };
        let Some((bytes, _)) = header.body else {
            // An earlier version's record: where a cut (if any) is cannot be told.
            tail = Tail::Unknown;
            return false;
        };
        let from = at_byte + line.len() as u64 + 1;
        if from.checked_add(bytes) == Some(len) && header.ends_at(&file, from) == Some(len) {
            tail = Tail::Whole;
            return false;
        }
        tail = Tail::CutShort;
        true
    })?;
    Ok(tail)
}

/// Whether the `len` bytes of `file` end with a newline.
fn ends_a_line(file: &File, len: u64) -> io::Result<bool> {
    let mut last = [0];
    file.read_exact_at(&mut last, len.saturating_sub(1))?;
    Ok(last[0] == b'\n')
}

/// Ends the reply file at `path` with [`CUT_SHORT`] if its last record is not whole.
fn mark_if_cut_short(path: &Path) {
    match reply_file_tail(path) {
        Ok(Tail::CutShort) => {}
        Ok(Tail::Whole | Tail::Unknown) => return,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            log::warn!("cannot read {} to see how it ends: {e}", path.display());
            return;
        }
    }
    let ends_a_line = File::open(path)
        .and_then(|f| ends_a_line(&f, f.metadata()?.len()))
        .unwrap_or(false);
    let mark = || -> io::Result<bool> {
        if !ends_a_line {
            // The next record starts on a line of its own. The newline may have been all
            // the record lacked: it is whole then.
            crate::files::append_shared(path, b"\n")?;
            if reply_file_tail(path)? == Tail::Whole {
                return Ok(false);
            }
        }
        crate::files::append_shared(path, CUT_SHORT.as_bytes())?;
        Ok(true)
    };
    match mark() {
        Ok(true) => log::warn!(
            "{}: its last record was cut short when the node stopped; marked so (its message is sent again)",
            path.display()
        ),
        Ok(false) => log::info!(
            "{}: its last record lacked only its newline when the node stopped; ended",
            path.display()
        ),
        Err(e) => log::error!(
            "{}: its last record was cut short when the node stopped, and cannot be marked so: {e}",
            path.display()
        ),
    }
}

/// How steward writes a file whose part a stop may leave at its end.
#[derive(Clone, Copy)]
enum Form {
    /// message-log.txt: JSON objects, one a line.
    Lines,
    /// failed-messages.txt: pretty-printed top-level JSON arrays, each ending `\n]\n`.
    Arrays,
}

impl Form {
    /// What ends each record.
    fn end(self) -> &'static [u8] {
        match self {
            Form::Lines => b"\n",
            Form::Arrays => b"\n]\n",
        }
    }

    /// Whether `part` can be the start of a record as steward writes it, or bytes a stop
    /// left unwritten (read as zeros), or both: anything else an operator wrote is left.
    fn may_begin(self, part: &[u8]) -> bool {
        let steward = match self {
            Form::Lines => &b"{"[..],
            Form::Arrays => b"[\n  {",
        };
        let written = &part[..part.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)];
        part.first() == Some(&0) || steward.starts_with(written) || written.starts_with(steward)
    }

    /// Where in `part` (what follows the last whole record) the part of a record a stop
    /// left begins: the first line that may begin one. What is before it (an operator's
    /// note, a blank line) stays.
    fn cut_from(self, part: &[u8]) -> Option<usize> {
        let starts = std::iter::once(0).chain(
            part.iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        starts
            .filter(|&i| i < part.len())
            .find(|&i| self.may_begin(&part[i..]))
    }
}

/// Ends the file at `path` (message-log.txt or failed-messages.txt, written in `form`) with
/// a whole record, if a stop left part of one after its last (found within its last
/// [`TAIL_BYTES`]; a file with no whole record that fits within the bound is all part):
///
/// - a record that lacks only its newline gets it;
/// - part of a record as steward writes it is cut off, and kept beside the file in
///   `<name>.cut-<unix ms>`: nothing after it is glued to it, and nothing is lost if an
///   operator wrote it after all;
/// - anything else (whitespace, or what steward never writes: an operator's note, another
///   tool's JSON) is left as it is.
///
/// Logged. Only messages being finished can be in such a part: each is unfinished in the
/// journal, and written again whole.
fn end_whole(path: &Path, form: Form) {
    let end = form.end();
    let mend = || -> io::Result<Option<String>> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let bound = len.saturating_sub(TAIL_BYTES);
        // Read backwards, a little first (the part is usually short): `tail` is the file
        // from `pos` to its end.
        let (mut tail, mut pos, mut chunk) = (Vec::new(), len, FIRST_CHUNK);
        let keep = loop {
            if pos == bound {
                if pos > 0 {
                    return Ok(None);
                }
                break 0;
            }
            let n = (pos - bound).min(chunk);
            chunk = (chunk * 2).min(CHUNK);
            let mut more = vec![0; n as usize];
            file.read_exact_at(&mut more, pos - n)?;
            pos -= n;
            more.extend_from_slice(&tail);
            tail = more;
            // Only the bytes just read can hold a later `end` than those before.
            let new = &tail[..(n as usize + end.len() - 1).min(tail.len())];
            if let Some(i) = new.windows(end.len()).rposition(|w| w == end) {
                break pos + (i + end.len()) as u64;
            }
        };
        let part = &tail[(keep - pos) as usize..];
        if part.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(part).is_ok() {
            crate::files::append_shared(path, b"\n")?;
            return Ok(Some(format!(
                "its last record lacked only its newline (from byte {keep}); ended"
            )));
        }
        let Some(from) = form.cut_from(part) else {
            return Ok(Some(format!(
                "it ends with {} byte(s) that are no record of steward's, from byte {keep}; left as they are",
                part.len()
            )));
        };
        let (keep, part) = (keep + from as u64, &part[from..]);
        let mut kept = path.as_os_str().to_owned();
        kept.push(format!(".cut-{}", crate::files::unix_millis()));
        let kept = PathBuf::from(kept);
        crate::files::write_atomically(&kept, part)?;
        file.set_len(keep)?;
        file.sync_all()?;
        Ok(Some(format!(
            "{} byte(s) at its end, from byte {keep}, were part of a record the last stop left unwritten (its message is sent again); cut off, kept in {}",
            part.len(),
            kept.display()
        )))
    };
    match mend() {
        Ok(None) => {}
        Ok(Some(what)) => log::warn!("{}: {what}", path.display()),
        Err(e) => log::warn!("cannot see whether {} ends whole: {e}", path.display()),
    }
}

/// Calls `each` with the complete lines of the last `max_bytes` of `path`, last first,
/// until it returns false; see [`lines_backward_in`].
fn lines_backward(
    path: &Path,
    max_bytes: u64,
    each: impl FnMut(u64, &[u8]) -> bool,
) -> io::Result<()> {
    lines_backward_in(&File::open(path)?, max_bytes, each)
}

/// Calls `each` with the lines of the last `max_bytes` of `file` and where each begins,
/// last first, until it returns false. A line cut by the bound is not passed; the last
/// line is passed whether a newline ends it or not.
fn lines_backward_in(
    file: &File,
    max_bytes: u64,
    mut each: impl FnMut(u64, &[u8]) -> bool,
) -> io::Result<()> {
    let end = file.metadata()?.len();
    let bound = end.saturating_sub(max_bytes);
    let mut pos = end;
    // The head of the earliest line read so far, whose start is further back.
    let mut head = Vec::new();
    let mut chunk = FIRST_CHUNK;
    while pos > bound {
        let n = (pos - bound).min(chunk);
        chunk = (chunk * 2).min(CHUNK);
        let mut buf = vec![0; n as usize];
        file.read_exact_at(&mut buf, pos - n)?;
        pos -= n;
        buf.extend_from_slice(&head);
        let complete_from = if pos == 0 {
            0
        } else {
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => {
                    head = buf;
                    continue;
                }
            }
        };
        let mut line_end = buf.len();
        loop {
            let start = buf[complete_from..line_end]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(complete_from, |i| complete_from + i + 1);
            let line = &buf[start..line_end];
            if !line.is_empty() && !each(pos + start as u64, line) {
                return Ok(());
            }
            if start == complete_from {
                break;
            }
            line_end = start - 1;
        }
        buf.truncate(complete_from.saturating_sub(1));
        head = buf;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Envelope, Kind, Message};

    thread_local! {
        /// Bytes of reply bodies read to check their CRC on this thread.
        pub(super) static HASHED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn entry(seq: u64, id: &str) -> Entry {
        Entry::new(
            seq,
            Envelope {
                id: id.into(),
                from_node: "central".into(),
                accepted: 1,
                reply_ticket: None,
                grant: None,
                message: Message::new("ship1", Kind::CommandAck, "CLICommand", vec!["x".into()]),
            },
        )
    }

    fn line(id: &str, finished: u64) -> String {
        format!("{{\"data\":[\"x\"],\"finishedUnixMs\":{finished},\"id\":\"{id}\",\"outcome\":\"acked\"}}\n")
    }

    /// A whole reply record, as the publisher writes it.
    fn header(id: &str, at_ms: u64) -> String {
        let body = format!("output of {id}\n");
        format!(
            "=== {} id={id} from=ship1 status=Ok exit=0 bytes={} crc={:08x}\n{body}",
            crate::files::rfc3339(at_ms),
            body.len(),
            crc32fast::hash(body.as_bytes())
        )
    }

    fn data_folder(dir: &tempfile::TempDir) -> DataFolder {
        DataFolder::new(dir.path().to_path_buf())
    }

    fn ship1() -> Subject {
        Subject::parse("ship1.CommandACK.CLICommand").unwrap()
    }

    #[test]
    fn a_reply_is_held_by_a_file_only_as_a_whole_record_within_the_look_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ship1.CLICommand.log");
        assert!(!holds_reply(&path, "a", 1 << 20).unwrap(), "no file");
        let (a, b) = (header("a", 1_000), header("b", 2_000));
        std::fs::write(&path, format!("{a}{b}")).unwrap();
        assert!(holds_reply(&path, "a", 1 << 20).unwrap());
        assert!(holds_reply(&path, "b", 1 << 20).unwrap());
        assert!(!holds_reply(&path, "c", 1 << 20).unwrap());
        assert!(
            !holds_reply(&path, "a", b.len() as u64).unwrap(),
            "past the bound"
        );
        // Cut short (a power cut in its write), or its body not what its header says.
        std::fs::write(&path, format!("{a}{}", &b[..b.len() - 3])).unwrap();
        assert!(!holds_reply(&path, "b", 1 << 20).unwrap());
        std::fs::write(&path, format!("{a}{}", b.replace("output", "OUTPUT"))).unwrap();
        assert!(!holds_reply(&path, "b", 1 << 20).unwrap());
        assert!(holds_reply(&path, "a", 1 << 20).unwrap());
    }

    #[test]
    fn lines_are_read_last_first_across_chunks_and_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let long = "y".repeat(3 * CHUNK as usize);
        let text = format!("first\n{long}\nsecond\nthird");
        std::fs::write(&path, &text).unwrap();
        let mut seen = Vec::new();
        lines_backward(&path, u64::MAX, |_, l| {
            seen.push(String::from_utf8(l.to_vec()).unwrap());
            true
        })
        .unwrap();
        assert_eq!(seen, ["third", "second", long.as_str(), "first"]);
        // Bounded: the line cut by the bound is not passed.
        let mut seen = Vec::new();
        lines_backward(&path, 10, |_, l| {
            seen.push(String::from_utf8(l.to_vec()).unwrap());
            true
        })
        .unwrap();
        assert_eq!(seen, ["third"]);
        // Stopped when asked.
        let mut n = 0;
        lines_backward(&path, u64::MAX, |_, _| {
            n += 1;
            false
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_resumed_message_listed_in_the_last_window_was_finished() {
        let dir = tempfile::tempdir().unwrap();
        let data = data_folder(&dir);
        let log = data.message_log();
        let t = 1_800_000_000_000;
        let whole = [line("old", t - WINDOW - 1), line("a", t - 10), line("b", t)].concat();
        // The stop came in the middle of a line.
        std::fs::write(&log, format!("{whole}{{\"torn")).unwrap();
        // A start with nothing unfinished reads nothing, and leaves the files as they are.
        assert!(!Resumed::open(&data, 100, &[]).finished(&entry(7, "a")));
        assert!(std::fs::read_to_string(&log).unwrap().ends_with("torn"));
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert!(r.finished(&entry(7, "a")));
        assert!(r.finished(&entry(8, "b")));
        assert!(!r.finished(&entry(9, "old")), "older than the window");
        assert!(!r.finished(&entry(9, "c")));
        // Accepted by this run: never taken for finished.
        assert!(!r.finished(&entry(100, "a")));
        // The part of a line is cut off (and kept aside): the next line is not glued to it.
        assert_eq!(std::fs::read_to_string(&log).unwrap(), whole);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("message-log.txt.cut-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), "{\"torn");
        // A line that lacks only its newline gets it.
        let last = line("c", t + 1);
        std::fs::write(&log, format!("{whole}{}", last.trim_end())).unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            format!("{whole}{last}")
        );
        assert!(r.finished(&entry(9, "c")));
        // No message log yet: nothing was finished.
        let empty = tempfile::tempdir().unwrap();
        let r = Resumed::open(&data_folder(&empty), 100, &[ship1()]);
        assert!(!r.finished(&entry(7, "a")));
    }

    /// The log rotated within the last window: its start is read in message-log.txt.1.
    #[test]
    fn the_window_is_read_across_the_last_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let data = data_folder(&dir);
        let log = data.message_log();
        let t = 1_800_000_000_000;
        let rotated = [line("old", t - WINDOW - 1), line("a", t - 20)].concat();
        std::fs::write(dir.path().join("message-log.txt.1"), rotated).unwrap();
        std::fs::write(&log, line("b", t)).unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert!(r.finished(&entry(7, "a")), "listed before the rotation");
        assert!(r.finished(&entry(8, "b")));
        assert!(!r.finished(&entry(9, "old")), "older than the window");
        // Rotated, and the cut came before the new file's name was made durable.
        std::fs::remove_file(&log).unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert!(r.finished(&entry(7, "a")));
        // A window that closes in the current file: the rotated one is not read.
        std::fs::write(
            &log,
            [line("c", t + WINDOW), line("d", t + 2 * WINDOW + 1)].concat(),
        )
        .unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert!(r.finished(&entry(7, "d")));
        assert!(!r.finished(&entry(7, "a")));
    }

    #[test]
    fn a_reply_stored_just_before_the_cut_is_found_and_the_look_stops_at_listed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let data = data_folder(&dir);
        let replies = data.replies("ship1", "CLICommand");
        std::fs::create_dir_all(replies.parent().unwrap()).unwrap();
        let t = 1_800_000_000_000;
        std::fs::write(
            data.message_log(),
            [line("a", t - 20), line("b", t - 10)].concat(),
        )
        .unwrap();
        // b was listed; c and d were stored after it, then the cut.
        let text = [
            header("z", t - 30),
            header("a", t - 20),
            header("b", t - 10),
            header("c", t - 5),
            header("d", t - 1),
        ]
        .concat();
        std::fs::write(&replies, &text).unwrap();
        let lane = ship1();
        let r = Resumed::open(&data, 100, std::slice::from_ref(&lane));
        assert_eq!(
            std::fs::read_to_string(&replies).unwrap(),
            text,
            "a whole file is not marked"
        );
        let found = r.stored_replies(&lane, &replies, &["c"]);
        assert_eq!(found, HashSet::from(["c".to_string()]));
        // d was stored, e was not: the lane is looked up then.
        let found = r.stored_replies(&lane, &replies, &["d", "e"]);
        assert_eq!(found, HashSet::from(["d".to_string()]));
        assert!(r.stored_replies(&lane, &replies, &["d"]).is_empty());
        // The look stops at b's reply: z, before it, is not found.
        let other = Subject::parse("ship2.CommandACK.CLICommand").unwrap();
        assert!(r.stored_replies(&other, &replies, &["z"]).is_empty());
    }

    #[test]
    fn a_reply_header_says_when_what_and_how_long() {
        assert_eq!(ReplyHeader::parse(b"output of c"), None);
        let t = 1_800_000_000_000;
        let (record, at) = (header("c", t), crate::files::rfc3339(t));
        let first = record.lines().next().unwrap();
        let body = "output of c\n";
        assert_eq!(
            ReplyHeader::parse(first.as_bytes()),
            Some(ReplyHeader {
                at: &at,
                id: "c",
                body: Some((body.len() as u64, crc32fast::hash(body.as_bytes())))
            })
        );
        // A header in part, with the next glued to it, is none.
        let glued = format!("=== {at} id=c from=ship1 status=Ok exit=0 byt{first}");
        assert_eq!(ReplyHeader::parse(glued.as_bytes()), None);
        for bad in [" extra", " crc=1", "x"] {
            let line = format!("{first}{bad}");
            assert_eq!(ReplyHeader::parse(line.as_bytes()), None, "{line}");
        }
        // An earlier version's header: no length, no CRC.
        let old = format!("=== {at} id=c from=ship1 status=Ok exit=0");
        let parsed = ReplyHeader::parse(old.as_bytes()).unwrap();
        assert_eq!(
            (parsed.at, parsed.id, parsed.body),
            (at.as_str(), "c", None)
        );
    }

    /// A stop in the middle of a reply's write, whichever part of it reached the disk: the
    /// reply is not taken for stored, and the file is marked; a whole record after the
    /// mark is found again.
    #[test]
    fn a_reply_a_stop_left_in_part_is_not_taken_for_stored_and_its_file_is_marked() {
        let t = 1_800_000_000_000;
        let c = header("c", t - 5);
        let (head, body) = c.split_at(c.find('\n').unwrap() + 1);
        let zeros = format!("{head}{}", "\0".repeat(body.len()));
        let parts: [(&str, &str); 7] = [
            ("the header and part of the output", &c[..c.len() - 3]),
            ("the header alone", head),
            ("part of the header", &head[..20]),
            (
                "the header up to its length, as an earlier version's reads",
                &head[..head.find(" bytes=").unwrap()],
            ),
            (
                "the header up to part of its length",
                &head[..head.find(" bytes=").unwrap() + 4],
            ),
            ("the header, and zeros for its output", &zeros),
            (
                "the header and its output but its last two bytes",
                &c[..c.len() - 2],
            ),
        ];
        for (what, part) in parts {
            let dir = tempfile::tempdir().unwrap();
            let data = data_folder(&dir);
            let replies = data.replies("ship1", "CLICommand");
            std::fs::create_dir_all(replies.parent().unwrap()).unwrap();
            let before = [header("a", t - 20), header("b", t - 10)].concat();
            std::fs::write(&replies, format!("{before}{part}")).unwrap();
            let r = Resumed::open(&data, 100, &[ship1()]);
            let text = std::fs::read_to_string(&replies).unwrap();
            assert!(
                text.ends_with(&format!("\n{CUT_SHORT}")) && text.starts_with(&before),
                "{what}: not marked: {text:?}"
            );
            assert!(
                r.stored_replies(&ship1(), &replies, &["c"]).is_empty(),
                "{what}: taken for stored"
            );
            // Opened again: marked once.
            Resumed::open(&data, 100, &[ship1()]);
            assert_eq!(
                std::fs::read_to_string(&replies).unwrap(),
                text,
                "{what}: marked twice"
            );
            // The reply stored whole after the mark is found.
            std::fs::write(&replies, format!("{text}{c}")).unwrap();
            let r = Resumed::open(&data, 100, &[ship1()]);
            assert_eq!(
                r.stored_replies(&ship1(), &replies, &["c"]),
                HashSet::from(["c".to_string()]),
                "{what}"
            );
        }
    }

    /// The reply file rotated after a resumed reply was stored (the other lane to the same
    /// node and method wrote past the size): it is found in the file before.
    #[test]
    fn a_reply_stored_before_the_file_rotated_is_found_in_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let data = data_folder(&dir);
        let replies = data.replies("ship1", "CLICommand");
        std::fs::create_dir_all(replies.parent().unwrap()).unwrap();
        let t = 1_800_000_000_000;
        std::fs::write(data.message_log(), line("b", t - 10)).unwrap();
        let rotated = dir.path().join("replies/ship1.CLICommand.log.1");
        std::fs::write(&rotated, [header("b", t - 10), header("c", t - 5)].concat()).unwrap();
        std::fs::write(&replies, header("n", t - 1)).unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert_eq!(
            r.stored_replies(&ship1(), &replies, &["c"]),
            HashSet::from(["c".to_string()])
        );
        // Not past a listed one: b's reply is where the look stops.
        std::fs::write(
            &rotated,
            [header("z", t - 20), header("b", t - 10)].concat(),
        )
        .unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert!(r.stored_replies(&ship1(), &replies, &["z"]).is_empty());
        // Rotated, and the cut came before the new file was made: all in the one before.
        std::fs::remove_file(&replies).unwrap();
        std::fs::write(&rotated, [header("b", t - 10), header("c", t - 5)].concat()).unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert_eq!(
            r.stored_replies(&ship1(), &replies, &["c"]),
            HashSet::from(["c".to_string()])
        );
    }

    /// Only a reply's last record decides (an earlier whole one for the same message does
    /// not stand in for its last, cut short), and a record counts only if it ends where a
    /// line of the file's own begins: one inside another's output that ends inside it
    /// (what the replying node wrote) is not taken for stored.
    #[test]
    fn a_reply_counts_by_its_last_record_and_only_where_a_record_may_end() {
        let t = 1_800_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let data = data_folder(&dir);
        let replies = data.replies("ship1", "CLICommand");
        std::fs::create_dir_all(replies.parent().unwrap()).unwrap();
        let y = header("y", t - 5);
        std::fs::write(&replies, format!("{y}{}", &y[..y.len() - 3])).unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert!(r.stored_replies(&ship1(), &replies, &["y"]).is_empty());
        // x's output holds a whole-looking record of y's, then more.
        let inner = format!("{}more output of x\n", header("y", t - 4));
        let outer = format!(
            "=== {} id=x from=ship1 status=Ok exit=0 bytes={} crc={:08x}\n{inner}",
            crate::files::rfc3339(t - 3),
            inner.len(),
            crc32fast::hash(inner.as_bytes())
        );
        std::fs::write(&replies, &outer).unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert!(r.stored_replies(&ship1(), &replies, &["y"]).is_empty());
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert_eq!(
            r.stored_replies(&ship1(), &replies, &["x"]),
            HashSet::from(["x".to_string()])
        );
    }

    /// A replying node's output may hold many lines that look like headers, each saying
    /// its body runs to the end of the file: looking for a resumed reply does not read the
    /// file once for each (a stolen node's key, or a command printing such lines, would
    /// keep the lane's publisher reading for hours at the next start).
    #[test]
    fn headers_inside_an_output_are_not_each_read_to_the_end_of_the_file() {
        let t = 1_800_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let data = data_folder(&dir);
        let replies = data.replies("ship1", "CLICommand");
        std::fs::create_dir_all(replies.parent().unwrap()).unwrap();
        // A later reply of 64 KiB, whole: each fake header's body would run through it.
        let last = format!("{}\n", "z".repeat(64 << 10));
        let last = format!(
            "=== {} id=b from=ship1 status=Ok exit=0 bytes={} crc={:08x}\n{last}",
            crate::files::rfc3339(t - 1),
            last.len(),
            crc32fast::hash(last.as_bytes())
        );
        let fake = |i: usize| {
            format!("=== 2100-01-01T00:00:00.000Z id=f{i:05} from=ship1 status=Ok exit=0 bytes=")
        };
        // Each fake line: its prefix, a 9-digit length, " crc=00000000\n".
        let n = 1000;
        let line_len = fake(0).len() + 9 + " crc=00000000\n".len();
        let inner_len = n * line_len;
        let mut inner = String::new();
        for i in 0..n {
            // From the end of this line to the end of the file.
            let to_end = (n - i - 1) * line_len + last.len();
            inner.push_str(&format!("{}{to_end:09} crc=00000000\n", fake(i)));
        }
        assert_eq!(inner.len(), inner_len);
        let outer = format!(
            "=== {} id=a from=ship1 status=Ok exit=0 bytes={} crc={:08x}\n{inner}",
            crate::files::rfc3339(t - 2),
            inner.len(),
            crc32fast::hash(inner.as_bytes())
        );
        std::fs::write(&replies, format!("{outer}{last}")).unwrap();
        // a is listed, where the look stops; b, after it, is not.
        std::fs::write(data.message_log(), line("a", t - 2)).unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        HASHED.with(|h| h.set(0));
        assert!(r.stored_replies(&ship1(), &replies, &["c"]).is_empty());
        let hashed = HASHED.with(|h| h.get());
        assert!(
            hashed < 1 << 20,
            "{hashed} bytes read for their CRC, for a file of {}",
            outer.len() + last.len()
        );
    }

    /// A record that lacks only the newline that ends it is whole once the newline is
    /// added (the line after it then starts on a line of its own).
    #[test]
    fn a_reply_that_lacks_only_its_newline_is_ended_and_taken_for_stored() {
        let t = 1_800_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let data = data_folder(&dir);
        let replies = data.replies("ship1", "CLICommand");
        std::fs::create_dir_all(replies.parent().unwrap()).unwrap();
        let whole = [header("a", t - 20), header("c", t - 5)].concat();
        std::fs::write(&replies, &whole[..whole.len() - 1]).unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert_eq!(std::fs::read_to_string(&replies).unwrap(), whole);
        assert_eq!(
            r.stored_replies(&ship1(), &replies, &["c"]),
            HashSet::from(["c".to_string()])
        );
    }

    /// A record whose output holds what looks like records (a reply file read by `cat`),
    /// whole or in part, is whole: the file is not marked. An earlier version's file cannot
    /// be told, and is left as it is; its replies are not taken for stored.
    #[test]
    fn records_inside_an_output_and_earlier_files_are_left_as_they_are() {
        let t = 1_800_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let data = data_folder(&dir);
        let replies = data.replies("ship1", "CLICommand");
        std::fs::create_dir_all(replies.parent().unwrap()).unwrap();
        let inner = format!("{}{}", header("x", t), &header("y", t)[..60]);
        let mut crc = crc32fast::Hasher::new();
        crc.update(inner.as_bytes());
        crc.update(b"\n");
        let outer = format!(
            "=== {} id=c from=ship1 status=Ok exit=0 bytes={} crc={:08x}\n{inner}\n",
            crate::files::rfc3339(t),
            inner.len() + 1,
            crc.finalize()
        );
        let text = format!("{}{outer}", header("a", t - 20));
        std::fs::write(&replies, &text).unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert_eq!(std::fs::read_to_string(&replies).unwrap(), text);
        assert_eq!(
            r.stored_replies(&ship1(), &replies, &["c"]),
            HashSet::from(["c".to_string()])
        );
        // An earlier version's records: no length to check.
        let old = format!(
            "=== {} id=c from=ship1 status=Ok exit=0\noutput of c\n",
            crate::files::rfc3339(t)
        );
        std::fs::write(&replies, &old).unwrap();
        let r = Resumed::open(&data, 100, &[ship1()]);
        assert_eq!(std::fs::read_to_string(&replies).unwrap(), old);
        assert!(r.stored_replies(&ship1(), &replies, &["c"]).is_empty());
    }

    /// failed-messages.txt holds inmsg.txt arrays: what follows the last whole one is cut.
    #[test]
    fn failed_messages_keep_their_whole_arrays_and_lose_a_part_left_by_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let data = data_folder(&dir);
        let array = |to: &str| {
            format!("[\n  {{\n    \"toNode\": \"{to}\",\n    \"data\": [\n      \"ls\"\n    ]\n  }}\n]\n")
        };
        let whole = format!("{}{}", array("ship1"), array("ship2"));
        let third = array("ship3");
        // Parts kept beside the file, each as it was.
        let kept = || {
            let mut kept: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().contains("failed-messages.txt.cut-"))
                .map(|p| {
                    let text = std::fs::read_to_string(&p).unwrap();
                    std::fs::remove_file(p).unwrap();
                    text
                })
                .collect();
            kept.sort();
            kept
        };
        // A long array cut in its middle: read back across chunks to its start.
        let long_array = array(&"x".repeat(70_000));
        let long = &long_array[..40_000];
        let zeros = |text: &str| format!("{text}{}", "\0".repeat(5000));
        let (open, open_line) = (zeros("["), zeros("[\n"));
        for part in [
            &third[..third.len() - 4],
            &third[..9],
            "[",
            "\0\0\0\0",
            long,
            &open,
            &open_line,
        ] {
            std::fs::write(data.failed(), format!("{whole}{part}")).unwrap();
            Resumed::open(&data, 100, &[ship1()]);
            let (text, kept) = (std::fs::read_to_string(data.failed()).unwrap(), kept());
            let what = &part[..part.len().min(20)];
            assert_eq!(text, whole, "{what:?}");
            assert_eq!(kept, [part], "{what:?}");
        }
        // What an operator wrote before the part stays; the part goes.
        for before in [
            "# fixed ship2's path\n",
            "\n\n",
            "[{\"toNode\":\"ship9\"}]\n",
        ] {
            std::fs::write(data.failed(), format!("{whole}{before}{}", &third[..20])).unwrap();
            Resumed::open(&data, 100, &[ship1()]);
            let text = std::fs::read_to_string(data.failed()).unwrap();
            assert_eq!(text, format!("{whole}{before}"), "{before:?}");
            assert_eq!(kept(), [&third[..20]], "{before:?}");
        }
        // A whole array that lacks only its newline gets it (another tool's JSON too).
        for last in [&third[..third.len() - 1], "[{\"toNode\":\"ship9\"}]"] {
            std::fs::write(data.failed(), format!("{whole}{last}")).unwrap();
            Resumed::open(&data, 100, &[ship1()]);
            assert_eq!(
                std::fs::read_to_string(data.failed()).unwrap(),
                format!("{whole}{last}\n")
            );
            assert!(kept().is_empty());
        }
        // Whole, followed by whitespace, or by what steward never writes (an operator's
        // note, another tool's JSON in part, another line ending): left as it is.
        for end in [
            "",
            "\n\n",
            "# fixed ship2's path",
            "[{\"toNo",
            "[\r\n  {\r\n",
        ] {
            std::fs::write(data.failed(), format!("{whole}{end}")).unwrap();
            Resumed::open(&data, 100, &[ship1()]);
            assert_eq!(
                std::fs::read_to_string(data.failed()).unwrap(),
                format!("{whole}{end}")
            );
            assert!(kept().is_empty());
        }
        // Nothing whole at all: all of it is the part.
        std::fs::write(data.failed(), &third[..9]).unwrap();
        Resumed::open(&data, 100, &[ship1()]);
        assert_eq!(std::fs::read_to_string(data.failed()).unwrap(), "");
        assert_eq!(kept(), [&third[..9]]);
    }
}
