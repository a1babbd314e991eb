//! The journal: every accepted message is on disk, fsync'd, before it leaves `inmsg.txt`, and
//! stays there until it is finished (ACKed, published, or given up into
//! `failed-messages.txt`). After a crash or restart, [`Journal::open`] finds every
//! unfinished message again, in the order it was accepted.
//!
//! # File format
//!
//! One append-only file, `journal/journal.log`, made of records in the style of LevelDB's
//! log format:
//!
//! ```text
//! +-------------+-------------+---------------------------------+
//! | len: u32 LE | crc: u32 LE | body: len bytes                 |
//! +-------------+-------------+---------------------------------+
//! body = type: u8, then
//!   1 Checkpoint   next_seq: u64 LE
//!   4 InboxOffset  offset: u64 LE, file name: UTF-8
//!   5 Started      message id: UTF-8           (received.log, see crate::received)
//!   6 Finished     reply: JSON (the wire form)  (received.log)
//!   7 Accepted     seq: u64 LE, lane length: u16 LE, lane: UTF-8, envelope: JSON
//!   8 DoneThrough  seq: u64 LE, lane: UTF-8
//!   (2 and 3, Accepted and Done without a lane, are read from journals written before
//!    lanes, and rewritten at once)
//! ```
//!
//! A *lane* is a destination subject (`ship1.CommandACK.CLICommand`): its publisher sends
//! its messages in order and finishes them in order, so "finished" is one number per lane,
//! written as `DoneThrough`: every message of the lane up to that sequence number is done.
//!
//! Every batch of `Accepted` records ends with a commit record: the `InboxOffset` of the
//! inbox file it came from, or a `Checkpoint`. `Accepted` records after the last commit
//! record belong to a batch whose write was cut; they are dropped on open, and the inbox
//! reads them again from its file.
//!
//! `crc` is CRC-32 (IEEE) of the body. A reader that meets a record that is short, too long,
//! or fails its checksum stops there: everything before it is kept, the rest is cut off, and
//! [`Recovery::cut`] says what was cut. Only the tail can be torn by a power loss, because
//! records are only ever appended. Past the last record the file may hold zeros, space
//! reserved ahead ([`RecordFile`]): a header of zeros reads as the end, not as damage.
//!
//! # Memory: flat, whatever the backlog
//!
//! Messages stay on disk until their turn. In memory, each lane keeps a window of where its
//! next [`WINDOW`] waiting messages are; past that, only the offset where the rest begin
//! (`spill`), from which the window is refilled by reading the file on. So a node away for
//! a week, with a million messages queued for it, costs the same memory as one with ten.
//! Opening reads the file in chunks, twice (first what is finished, then what is not),
//! never all of it at once.
//!
//! # Costs
//!
//! [`Journal::append`] writes a whole batch (one read of `inmsg.txt`) with one `write` and one
//! `fdatasync`. `DoneThrough` records are not synced on their own: losing one in a crash only
//! means those messages are sent again (the receiver recognises their ids). [`Journal::sync`]
//! is called periodically and at shutdown. Once finished records make up most of the file,
//! it is compacted: the live records are copied to a new file that atomically replaces the
//! old one, so the journal stays small whatever the uptime.

use crate::message::{Envelope, Message};
use crate::subject::Subject;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const HEADER: usize = 8;
/// A record larger than this is treated as corruption (messages are far smaller).
const MAX_RECORD: usize = 64 << 20;
/// Compaction is considered once the file is at least this big...
const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// ... and the live records are less than 1/COMPACT_RATIO of it.
const COMPACT_RATIO: u64 = 4;
/// How many waiting messages of a lane are located in memory (24 bytes each); the rest are
/// found by reading the file on when the window runs low.
pub const WINDOW: usize = 2 * crate::message::MAX_BATCH;
/// How much of the file is read at a time when scanning it.
const CHUNK: usize = 256 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Checkpoint {
        next_seq: u64,
    },
    /// A message taken in, for `lane` (its subject).
    Accepted {
        seq: u64,
        lane: String,
        envelope: Vec<u8>,
    },
    /// Every message of `lane` up to `seq` is finished.
    DoneThrough {
        seq: u64,
        lane: String,
    },
    InboxOffset {
        file: String,
        offset: u64,
    },
    /// A receiver began running a message (see [`crate::received`]).
    Started {
        id: String,
    },
    /// A receiver finished a message; its reply, which names the id.
    Finished {
        reply: Vec<u8>,
    },
    /// An accepted message as journals before lanes wrote it (read only).
    LegacyAccepted {
        seq: u64,
        envelope: Vec<u8>,
    },
    /// A finished message as journals before lanes wrote it (read only).
    LegacyDone {
        seq: u64,
    },
}

/// Appends the encoded record to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    match record {
        Record::Checkpoint { next_seq } => {
            out.push(1);
            out.extend_from_slice(&next_seq.to_le_bytes());
        }
        Record::LegacyAccepted { seq, envelope } => {
            out.push(2);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(envelope);
        }
        Record::LegacyDone { seq } => {
            out.push(3);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        Record::InboxOffset { file, offset } => {
            out.push(4);
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(file.as_bytes());
        }
        Record::Started { id } => {
            out.push(5);
            out.extend_from_slice(id.as_bytes());
        }
        Record::Finished { reply } => {
            out.push(6);
            out.extend_from_slice(reply);
        }
        Record::Accepted {
            seq,
            lane,
            envelope,
        } => {
            out.push(7);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&(lane.len() as u16).to_le_bytes());
            out.extend_from_slice(lane.as_bytes());
            out.extend_from_slice(envelope);
        }
        Record::DoneThrough { seq, lane } => {
            out.push(8);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(lane.as_bytes());
        }
    }
    let body_len = out.len() - start - HEADER;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Records decoded from bytes, with where the readable part ends.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Each record with the offset and length (header included) it occupies.
    pub records: Vec<(u64, u32, Record)>,
    /// Bytes that hold complete, valid records.
    pub valid_len: u64,
    /// Why reading stopped before the end, if it did.
    pub corruption: Option<String>,
}

/// What the bytes at some position hold.
enum Step {
    /// Zeros: the file's preallocated space, past its last record.
    End,
    /// A record, and how many bytes it takes.
    Record(usize, Record),
    /// Not enough bytes for a whole record: this many are needed.
    Short(usize),
    /// Not a record: why.
    Bad(String),
}

fn decode_one(bytes: &[u8]) -> Step {
    if bytes.len() < HEADER {
        return Step::Short(HEADER);
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if len == 0 && crc == 0 {
        return Step::End;
    }
    if len > MAX_RECORD || len == 0 {
        return Step::Bad(format!("impossible record length {len}"));
    }
    if bytes.len() - HEADER < len {
        return Step::Short(HEADER + len);
    }
    let body = &bytes[HEADER..HEADER + len];
    if crc32fast::hash(body) != crc {
        return Step::Bad("checksum mismatch".to_string());
    }
    match decode_body(body) {
        Some(record) => Step::Record(HEADER + len, record),
        None => Step::Bad(format!("unknown record type {}", body[0])),
    }
}

fn torn(needed: usize, present: usize) -> String {
    if needed == HEADER {
        format!("torn record header ({present} bytes)")
    } else {
        format!(
            "torn record: {} bytes announced, {} present",
            needed - HEADER,
            present.saturating_sub(HEADER)
        )
    }
}

/// Decodes records until the end or the first torn or corrupt one.
pub fn decode(bytes: &[u8]) -> Decoded {
    let mut d = Decoded::default();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let why = match decode_one(&bytes[pos..]) {
            Step::Record(len, record) => {
                d.records.push((pos as u64, len as u32, record));
                pos += len;
                d.valid_len = pos as u64;
                continue;
            }
            Step::End => break,
            // Reserved space that ends before a whole header would fit.
            Step::Short(_) if bytes[pos..].iter().all(|&b| b == 0) => break,
            Step::Short(needed) => torn(needed, bytes.len() - pos),
            Step::Bad(why) => why,
        };
        d.corruption = Some(format!("at byte {pos} of {}: {why}", bytes.len()));
        break;
    }
    d
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(body.get(i..i + 8)?.try_into().ok()?))
    };
    let text = |bytes: Option<&[u8]>| String::from_utf8(bytes?.to_vec()).ok();
    Some(match body[0] {
        1 => Record::Checkpoint {
            next_seq: u64_at(1)?,
        },
        2 => Record::LegacyAccepted {
            seq: u64_at(1)?,
            envelope: body.get(9..)?.to_vec(),
        },
        3 => Record::LegacyDone { seq: u64_at(1)? },
        4 => Record::InboxOffset {
            offset: u64_at(1)?,
            file: text(body.get(9..))?,
        },
        5 => Record::Started {
            id: text(body.get(1..))?,
        },
        6 => Record::Finished {
            reply: body.get(1..)?.to_vec(),
        },
        7 => {
            let lane_len = u16::from_le_bytes(body.get(9..11)?.try_into().ok()?) as usize;
            Record::Accepted {
                seq: u64_at(1)?,
                lane: text(body.get(11..11 + lane_len))?,
                envelope: body.get(11 + lane_len..)?.to_vec(),
            }
        }
        8 => Record::DoneThrough {
            seq: u64_at(1)?,
            lane: text(body.get(9..))?,
        },
        _ => return None,
    })
}

/// Reads the records of a file from an offset up to `end`, a chunk at a time, so a file of
/// any size is read in bounded memory. Stops at the first torn or corrupt record and says
/// why in `corruption`.
pub struct Records<'a> {
    file: &'a File,
    end: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
    pos: usize,
    pub corruption: Option<String>,
}

impl<'a> Records<'a> {
    pub fn new(file: &'a File, from: u64, end: u64) -> Records<'a> {
        Records {
            file,
            end,
            buf: Vec::new(),
            buf_at: from,
            pos: 0,
            corruption: None,
        }
    }

    /// Where the next record begins: the end of what was read whole.
    pub fn reached(&self) -> u64 {
        self.buf_at + self.pos as u64
    }

    fn next_record(&mut self) -> io::Result<Option<(u64, u32, Record)>> {
        loop {
            let at = self.reached();
            if at >= self.end || self.corruption.is_some() {
                return Ok(None);
            }
            let why = match decode_one(&self.buf[self.pos..]) {
                Step::Record(len, record) => {
                    self.pos += len;
                    return Ok(Some((at, len as u32, record)));
                }
                Step::End => {
                    self.end = at;
                    return Ok(None);
                }
                Step::Short(needed) => {
                    let left = (self.end - at).min(usize::MAX as u64) as usize;
                    let held = self.buf.len() - self.pos;
                    if left > held {
                        // More of the file than the buffer holds: read on from this record.
                        let mut buf = vec![0; CHUNK.max(needed).min(left)];
                        self.file.read_exact_at(&mut buf, at)?;
                        (self.buf, self.buf_at, self.pos) = (buf, at, 0);
                        continue;
                    }
                    if self.buf[self.pos..].iter().all(|&b| b == 0) {
                        self.end = at; // reserved space, shorter than a header
                        return Ok(None);
                    }
                    torn(needed, left)
                }
                Step::Bad(why) => why,
            };
            self.corruption = Some(format!("at byte {at} of {}: {why}", self.end));
            return Ok(None);
        }
    }
}

impl Iterator for Records<'_> {
    type Item = io::Result<(u64, u32, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// A file of records, appended at its end and preallocated ahead of it (zeros, which
/// readers take as the end), so that making an append durable does not also have to commit
/// a new file size: here an fdatasync after a small append takes 82 µs instead of 113, and
/// two are on the path of every command. Where the filesystem cannot preallocate, the file
/// simply grows with each append.
///
/// The reserved space lasts while the file is open: on opening, the file is cut back to
/// its last record, so whatever a torn write left past it (a body whose header never made
/// it to disk) cannot sit behind the next records.
pub struct RecordFile {
    file: File,
    end: u64,
    allocated: u64,
}

/// Space reserved ahead of a record file's end at a time.
const PREALLOCATE: u64 = 1 << 20;

impl RecordFile {
    /// Opens (or creates) `path`. Its end is not known until it has been read: see
    /// [`RecordFile::found_end`].
    pub fn open(path: &Path) -> io::Result<RecordFile> {
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
        let len = file.metadata()?.len();
        Ok(RecordFile {
            file,
            end: len,
            allocated: len,
        })
    }

    /// The file as rewritten by a compaction: `end` bytes of records, nothing reserved.
    pub fn rewritten(path: &Path, end: u64) -> io::Result<RecordFile> {
        let mut f = RecordFile::open(path)?;
        f.end = end;
        Ok(f)
    }

    /// The records end at `end`: whatever follows (reserved space, or a torn or corrupt
    /// record) is cut off the file, durably.
    pub fn found_end(&mut self, end: u64) -> io::Result<()> {
        if self.allocated > end {
            self.file.set_len(end)?;
            self.file.sync_all()?;
            self.allocated = end;
        }
        self.end = end;
        Ok(())
    }

    /// Writes `buf` at the end; returns where it starts. Not durable until
    /// [`RecordFile::sync`].
    pub fn append(&mut self, buf: &[u8]) -> io::Result<u64> {
        let at = self.end;
        let needed = at + buf.len() as u64;
        if needed > self.allocated {
            self.reserve(needed);
        }
        self.file.write_all_at(buf, at)?;
        self.end = needed;
        Ok(at)
    }

    fn reserve(&mut self, needed: u64) {
        let to = needed + PREALLOCATE;
        // SAFETY: fallocate on a file descriptor we own, over a range we name. (The 64-bit
        // call: on armv7, off_t is 32 bits.)
        let rc = unsafe {
            libc::fallocate64(
                self.file.as_raw_fd(),
                0,
                self.allocated as libc::off64_t,
                (to - self.allocated) as libc::off64_t,
            )
        };
        // Not possible here (the filesystem, or no space to reserve): the write grows
        // the file, as a plain append would.
        self.allocated = if rc == 0 { to } else { needed };
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Where the next record goes.
    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Opens (or creates) a small file of records (received.log), reads all it holds, and cuts
/// off a torn or corrupt tail, returning what was cut. The journal itself is read with
/// [`Records`], a chunk at a time.
pub fn open_records(path: &Path) -> io::Result<(RecordFile, Decoded, Option<String>)> {
    let mut file = RecordFile::open(path)?;
    let mut bytes = Vec::new();
    (&file.file).read_to_end(&mut bytes)?;
    let decoded = decode(&bytes);
    let cut = decoded
        .corruption
        .as_ref()
        .map(|why| cut_message(path, why, decoded.records.len(), decoded.valid_len));
    file.found_end(decoded.valid_len)?;
    Ok((file, decoded, cut))
}

/// What cutting a file back to its last complete record cut.
fn cut_message(path: &Path, why: &str, kept: usize, valid_len: u64) -> String {
    format!(
        "{}: {why}; kept {kept} complete records ({valid_len} bytes), cut the rest",
        path.display(),
    )
}

/// A journaled message: its place in the journal and the message itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub envelope: Envelope,
}

/// What [`Journal::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The lanes with unfinished messages, whose publishers must start.
    pub lanes: Vec<Subject>,
    /// How many messages are unfinished.
    pub pending: usize,
    /// How far each partly taken inbox file had been read.
    pub inbox_offsets: BTreeMap<String, u64>,
    /// What was cut off the tail, if the journal was torn or corrupt.
    pub cut: Option<String>,
    /// Accepted records whose message could not be decoded (kept out of the system, logged).
    pub undecodable: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    len: u32,
}

/// One lane's messages: how many are unfinished, which have been handed to its publisher,
/// and where the waiting ones are.
#[derive(Debug, Default)]
struct Lane {
    /// Unfinished messages (waiting or handed out) and the bytes of their records.
    pending: usize,
    live_bytes: u64,
    /// Every message of the lane up to here is finished, as the file says.
    done_through: u64,
    /// Handed to the publisher and not yet covered by a `DoneThrough`, oldest first:
    /// sequence number, record length, finished.
    handed: VecDeque<(u64, u32, bool)>,
    /// The last message handed out.
    handed_through: u64,
    /// Where the messages not yet handed out are.
    waiting: Waiting,
}

/// Each lane's waiting messages and live bytes, by their places in a compacted file.
type Relocated = HashMap<String, (Waiting, u64)>;

/// Where a lane's waiting messages are: the next ones in memory, the rest on disk.
#[derive(Debug, Default)]
struct Waiting {
    /// The next waiting messages, oldest first, at most [`WINDOW`] of them...
    window: VecDeque<(u64, Span)>,
    /// ... and where in the file the waiting messages past the window begin, if there are
    /// any.
    spill: Option<u64>,
}

impl Waiting {
    /// Notes a waiting message at `span`: in the window if it has room and nothing is
    /// spilled before it, otherwise it is found on disk later.
    fn wait(&mut self, seq: u64, span: Span) {
        if self.spill.is_none() && self.window.len() < WINDOW {
            self.window.push_back((seq, span));
        } else if self.spill.is_none() {
            self.spill = Some(span.offset);
        }
    }
}

/// The open journal. Share it behind a `Mutex`: appends are batched by the caller.
pub struct Journal {
    dir: PathBuf,
    file: RecordFile,
    size: u64,
    next_seq: u64,
    lanes: HashMap<String, Lane>,
    pending: usize,
    live_bytes: u64,
    inbox_offsets: BTreeMap<String, u64>,
    unsynced: bool,
    bytes_written: u64,
    /// How long each fsync took since the last [`Journal::take_fsync_seconds`].
    fsync_seconds: Vec<f64>,
    /// Records that could not be read back when their turn came (for the publisher to
    /// report).
    unreadable: Vec<String>,
}

impl Journal {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("journal.log")
    }

    /// Opens (or creates) the journal in `dir`, cutting off a torn or corrupt tail, and
    /// finds every unfinished message again: in two passes over the file, a chunk at a time.
    pub fn open(dir: &Path) -> io::Result<(Journal, Recovery)> {
        let path = Journal::path(dir);
        let mut file = RecordFile::open(&path)?;
        let len = file.end();
        let mut recovery = Recovery::default();

        // First pass: what is finished, how far inbox files were read, where the last
        // commit record is.
        let mut next_seq = 1;
        let mut done: HashMap<String, u64> = HashMap::new();
        let mut legacy_done: HashSet<u64> = HashSet::new();
        let mut inbox_offsets = BTreeMap::new();
        // The first Accepted record after the last commit record, and how many there are.
        let mut uncommitted: Option<(u64, usize)> = None;
        let mut kept = 0;
        let reader = file.file().try_clone()?;
        let mut records = Records::new(&reader, 0, len);
        for r in records.by_ref() {
            let (offset, _, record) = r?;
            kept += 1;
            match record {
                Record::Checkpoint { next_seq: n } => {
                    next_seq = next_seq.max(n);
                    uncommitted = None;
                }
                Record::InboxOffset { file, offset } => {
                    inbox_offsets.insert(file, offset);
                    uncommitted = None;
                }
                Record::Accepted { seq, .. } | Record::LegacyAccepted { seq, .. } => {
                    next_seq = next_seq.max(seq + 1);
                    match &mut uncommitted {
                        Some((_, n)) => *n += 1,
                        None => uncommitted = Some((offset, 1)),
                    }
                }
                Record::DoneThrough { seq, lane } => {
                    let through = done.entry(lane).or_default();
                    *through = (*through).max(seq);
                }
                Record::LegacyDone { seq } => {
                    legacy_done.insert(seq);
                }
                Record::Started { .. } | Record::Finished { .. } => {}
            }
        }
        let mut size = records.reached();
        let corruption = records.corruption.take();
        if let Some(why) = &corruption {
            recovery.cut = Some(cut_message(&path, why, kept, size));
        }
        file.found_end(size)?;
        // A batch whose commit record never made it to disk was never taken: its messages
        // are still in their inbox file, which is read again from the last committed offset.
        // Cut them off the file too, or a later commit record would commit them.
        if let Some((first, count)) = uncommitted {
            file.found_end(first)?;
            size = first;
            let dropped = format!(
                "dropped {count} message(s) of a batch cut before its commit; they are taken again from their inbox file"
            );
            recovery.cut = Some(match recovery.cut.take() {
                Some(cut) => format!("{cut}; {dropped}"),
                None => dropped,
            });
        }

        // Second pass: where the unfinished messages are.
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            file,
            size,
            next_seq,
            lanes: HashMap::new(),
            pending: 0,
            live_bytes: 0,
            inbox_offsets,
            unsynced: false,
            bytes_written: 0,
            fsync_seconds: Vec::new(),
            unreadable: Vec::new(),
        };
        for (lane, through) in done {
            let l = journal.lanes.entry(lane).or_default();
            (l.done_through, l.handed_through) = (through, through);
        }
        let mut legacy = !legacy_done.is_empty();
        for r in Records::new(&reader, 0, size) {
            let (offset, len, record) = r?;
            let span = Span { offset, len };
            match record {
                Record::Accepted { seq, lane, .. } => journal.index(lane, seq, span),
                Record::LegacyAccepted { seq, envelope } => {
                    legacy = true;
                    if legacy_done.contains(&seq) {
                        continue;
                    }
                    match Envelope::decode(&envelope) {
                        Ok(e) => journal.index(e.message.subject().to_string(), seq, span),
                        Err(e) => recovery.undecodable.push(format!("record {seq}: {e}")),
                    }
                }
                _ => {}
            }
        }
        let mut lanes: Vec<Subject> = journal
            .lanes
            .iter()
            .filter(|(_, l)| l.pending > 0)
            .filter_map(|(name, _)| Subject::parse(name).ok())
            .collect();
        lanes.sort();
        recovery.lanes = lanes;
        recovery.pending = journal.pending;
        recovery.inbox_offsets = journal.inbox_offsets.clone();
        if legacy {
            // Written before lanes: rewrite it in today's form at once.
            journal.compact_with(&legacy_done)?;
        } else {
            journal.maybe_compact()?;
        }
        Ok((journal, recovery))
    }

    /// Notes an accepted message of `lane` at `span`, unless the lane is done past it.
    fn index(&mut self, lane: String, seq: u64, span: Span) {
        let l = self.lanes.entry(lane).or_default();
        if seq <= l.done_through {
            return;
        }
        l.pending += 1;
        l.live_bytes += span.len as u64;
        self.pending += 1;
        self.live_bytes += span.len as u64;
        if seq > l.handed_through {
            l.waiting.wait(seq, span);
        }
    }

    /// Journals a batch of messages from `from_node` with one write and one fsync, together
    /// with how far the inbox file they came from has now been read. Returns them with their
    /// ids and sequence numbers, in order.
    pub fn append(
        &mut self,
        from_node: &str,
        messages: Vec<Message>,
        inbox: Option<(&str, u64)>,
    ) -> io::Result<Vec<Entry>> {
        let accepted = crate::files::unix_millis();
        let mut buf = Vec::with_capacity(messages.len() * 256);
        let mut entries = Vec::with_capacity(messages.len());
        let mut spans = Vec::with_capacity(messages.len());
        for message in messages {
            let seq = self.next_seq + entries.len() as u64;
            let lane = message.subject().to_string();
            let envelope = Envelope {
                // Readable, and unguessable: no one can name a message before it exists.
                id: format!(
                    "{from_node}-{accepted}-{seq}-{}",
                    crate::keys::random_hex128()
                ),
                from_node: from_node.to_string(),
                accepted,
                message,
            };
            let offset = self.size + buf.len() as u64;
            encode(
                &Record::Accepted {
                    seq,
                    lane: lane.clone(),
                    envelope: envelope.encode(),
                },
                &mut buf,
            );
            let len = (self.size + buf.len() as u64 - offset) as u32;
            spans.push((lane, Span { offset, len }));
            entries.push(Entry { seq, envelope });
        }
        // The commit record: a batch counts only once this is on disk after it.
        match inbox {
            Some((file, offset)) => encode(
                &Record::InboxOffset {
                    file: file.to_string(),
                    offset,
                },
                &mut buf,
            ),
            None if !entries.is_empty() => encode(
                &Record::Checkpoint {
                    next_seq: self.next_seq + entries.len() as u64,
                },
                &mut buf,
            ),
            None => {}
        }
        if buf.is_empty() {
            return Ok(entries);
        }
        self.write(&buf)?;
        self.sync_now()?;
        self.next_seq += entries.len() as u64;
        for (entry, (lane, span)) in entries.iter().zip(spans) {
            self.index(lane, entry.seq, span);
        }
        if let Some((file, offset)) = inbox {
            self.inbox_offsets.insert(file.to_string(), offset);
        }
        Ok(entries)
    }

    /// Hands up to `max` of `lane`'s waiting messages to its publisher, oldest first, read
    /// back from the file. They count as unfinished until [`Journal::finish`].
    pub fn take(&mut self, lane: &Subject, max: usize) -> io::Result<Vec<Entry>> {
        let key = lane.to_string();
        let Some(l) = self.lanes.get_mut(&key) else {
            return Ok(Vec::new());
        };
        if l.waiting.window.len() < max && l.waiting.spill.is_some() {
            refill(self.file.file(), self.size, &key, l)?;
        }
        let mut entries = Vec::new();
        let mut skipped = false;
        while entries.len() < max {
            let Some(&(seq, span)) = l.waiting.window.front() else {
                break;
            };
            let mut bytes = vec![0; span.len as usize];
            self.file.file().read_exact_at(&mut bytes, span.offset)?;
            l.waiting.window.pop_front();
            l.handed_through = seq;
            let read = match decode_one(&bytes) {
                Step::Record(_, Record::Accepted { envelope, .. }) => Envelope::decode(&envelope)
                    .map(|envelope| Entry { seq, envelope })
                    .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&envelope))),
                _ => Err("not the record it should be".to_string()),
            };
            match read {
                Ok(entry) => {
                    l.handed.push_back((seq, span.len, false));
                    entries.push(entry);
                }
                Err(why) => {
                    // Kept out of the system, reported to central with its bytes (see
                    // the publisher); it counts as finished.
                    l.handed.push_back((seq, span.len, true));
                    self.unreadable
                        .push(format!("{key}: journal record {seq} is unreadable: {why}"));
                    skipped = true;
                }
            }
        }
        if l.waiting.window.is_empty() && l.waiting.window.capacity() > 64 {
            l.waiting.window.shrink_to_fit();
        }
        if skipped {
            self.settle(&key)?;
        }
        Ok(entries)
    }

    /// Records that messages of `lane` handed out by [`Journal::take`] are finished. Not
    /// synced on its own (see the module docs).
    pub fn finish(&mut self, lane: &Subject, seqs: &[u64]) -> io::Result<()> {
        let key = lane.to_string();
        let Some(l) = self.lanes.get_mut(&key) else {
            return Ok(());
        };
        for seq in seqs {
            if let Some(h) = l.handed.iter_mut().find(|h| h.0 == *seq) {
                h.2 = true;
            }
        }
        self.settle(&key)
    }

    /// Writes a `DoneThrough` for the lane's finished messages that no unfinished one
    /// precedes: the record never covers a message still in flight.
    fn settle(&mut self, key: &str) -> io::Result<()> {
        let Some(l) = self.lanes.get_mut(key) else {
            return Ok(());
        };
        let (mut count, mut bytes, mut through) = (0, 0, None);
        while let Some(&(seq, len, true)) = l.handed.front() {
            l.handed.pop_front();
            count += 1;
            bytes += len as u64;
            through = Some(seq);
        }
        let Some(seq) = through else {
            return Ok(());
        };
        l.pending -= count;
        l.live_bytes -= bytes;
        l.done_through = seq;
        if l.handed.is_empty() && l.handed.capacity() > 64 {
            l.handed.shrink_to_fit();
        }
        self.pending -= count;
        self.live_bytes -= bytes;
        let mut buf = Vec::with_capacity(HEADER + 9 + key.len());
        encode(
            &Record::DoneThrough {
                seq,
                lane: key.to_string(),
            },
            &mut buf,
        );
        self.write(&buf)?;
        self.unsynced = true;
        self.maybe_compact()
    }

    /// Messages found unreadable when their turn came, since the last call.
    pub fn take_unreadable(&mut self) -> Vec<String> {
        std::mem::take(&mut self.unreadable)
    }

    /// How far each partly taken inbox file has been read.
    pub fn inbox_offsets(&self) -> &BTreeMap<String, u64> {
        &self.inbox_offsets
    }

    /// An inbox file has been fully taken and removed; its offset need not be kept.
    pub fn forget_inbox(&mut self, file: &str) {
        self.inbox_offsets.remove(file);
    }

    /// Makes every record written so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.sync_now()?;
        }
        Ok(())
    }

    fn sync_now(&mut self) -> io::Result<()> {
        let started = std::time::Instant::now();
        self.file.sync()?;
        self.unsynced = false;
        if self.fsync_seconds.len() < 10_000 {
            self.fsync_seconds.push(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// The fsync durations measured since the last call (for the metrics).
    pub fn take_fsync_seconds(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.fsync_seconds)
    }

    /// Unfinished messages, all lanes.
    pub fn pending_count(&self) -> usize {
        self.pending
    }

    /// Unfinished messages of one lane.
    pub fn lane_pending(&self, lane: &Subject) -> usize {
        self.lanes.get(&lane.to_string()).map_or(0, |l| l.pending)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes written to the journal since it was opened (compaction included): SD card wear.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.append(buf)?;
        self.size = self.file.end();
        self.bytes_written += buf.len() as u64;
        Ok(())
    }

    fn maybe_compact(&mut self) -> io::Result<()> {
        if self.size >= COMPACT_MIN_BYTES && self.live_bytes * COMPACT_RATIO < self.size {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the journal with only its live records, atomically replacing the old file.
    pub fn compact(&mut self) -> io::Result<()> {
        self.compact_with(&HashSet::new())
    }

    /// Compaction, also taking journals written before lanes (`legacy_done`: their
    /// finished messages) into today's form. Streams from the old file to the new one, and
    /// finds each lane's waiting messages anew on the way.
    fn compact_with(&mut self, legacy_done: &HashSet<u64>) -> io::Result<()> {
        let path = Journal::path(&self.dir);
        let tmp = path.with_extension("compacting");
        let (written, mut rebuilt) = match self.copy_live(&tmp, legacy_done) {
            Ok(copied) => copied,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = RecordFile::rewritten(&path, written)?;
        // Only now, with the new file in place, do the new places count.
        self.live_bytes = 0;
        for (name, l) in self.lanes.iter_mut() {
            (l.waiting, l.live_bytes) = rebuilt.remove(name).unwrap_or_default();
            self.live_bytes += l.live_bytes;
        }
        self.size = written;
        self.bytes_written += written;
        self.unsynced = false;
        log::debug!(
            "journal compacted to {} bytes ({} pending messages)",
            self.size,
            self.pending
        );
        Ok(())
    }

    /// Writes the live records to `tmp` (synced); returns its size, and each lane's waiting
    /// messages and live bytes by their places in it.
    fn copy_live(&self, tmp: &Path, legacy_done: &HashSet<u64>) -> io::Result<(u64, Relocated)> {
        let mut out = io::BufWriter::with_capacity(CHUNK, crate::files::create_private(tmp)?);
        let mut buf = Vec::new();
        for (file, offset) in &self.inbox_offsets {
            encode(
                &Record::InboxOffset {
                    file: file.clone(),
                    offset: *offset,
                },
                &mut buf,
            );
        }
        out.write_all(&buf)?;
        let mut written = buf.len() as u64;
        let mut rebuilt = Relocated::new();
        let reader = self.file.file().try_clone()?;
        let mut records = Records::new(&reader, 0, self.size);
        for r in records.by_ref() {
            let (seq, lane, envelope) = match r?.2 {
                Record::Accepted {
                    seq,
                    lane,
                    envelope,
                } => (seq, lane, envelope),
                Record::LegacyAccepted { seq, envelope } if !legacy_done.contains(&seq) => {
                    match Envelope::decode(&envelope) {
                        Ok(e) => (seq, e.message.subject().to_string(), envelope),
                        Err(_) => continue, // reported at open
                    }
                }
                _ => continue,
            };
            let Some(l) = self.lanes.get(&lane) else {
                continue;
            };
            if seq <= l.done_through {
                continue;
            }
            let handed_through = l.handed_through;
            let (waiting, live) = rebuilt.entry(lane.clone()).or_default();
            buf.clear();
            encode(
                &Record::Accepted {
                    seq,
                    lane,
                    envelope,
                },
                &mut buf,
            );
            let span = Span {
                offset: written,
                len: buf.len() as u32,
            };
            out.write_all(&buf)?;
            written += buf.len() as u64;
            *live += span.len as u64;
            if seq > handed_through {
                waiting.wait(seq, span);
            }
        }
        if let Some(why) = records.corruption {
            return Err(io::Error::other(format!("journal unreadable: {why}")));
        }
        // Last, as the commit record of everything before it.
        buf.clear();
        encode(
            &Record::Checkpoint {
                next_seq: self.next_seq,
            },
            &mut buf,
        );
        out.write_all(&buf)?;
        written += buf.len() as u64;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((written, rebuilt))
    }

    /// The sequence number the next accepted message gets. Read right after [`Journal::open`],
    /// it tells the messages an earlier run accepted (below it) from this run's.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Reads `lane`'s waiting messages on from where the window left off, until the window is
/// full (the rest stays spilled, from the next one) or the file ends.
fn refill(file: &File, end: u64, key: &str, lane: &mut Lane) -> io::Result<()> {
    let Some(from) = lane.waiting.spill.take() else {
        return Ok(());
    };
    let mut records = Records::new(file, from, end);
    for r in records.by_ref() {
        let (offset, len, record) = match r {
            Ok(r) => r,
            Err(e) => {
                lane.waiting.spill = Some(from);
                return Err(e);
            }
        };
        let Record::Accepted { seq, lane: l, .. } = record else {
            continue;
        };
        if l != key || seq <= lane.handed_through {
            continue;
        }
        if lane.waiting.window.len() >= WINDOW {
            lane.waiting.spill = Some(offset);
            return Ok(());
        }
        lane.waiting.window.push_back((seq, Span { offset, len }));
    }
    if let Some(why) = records.corruption {
        lane.waiting.spill = Some(from);
        return Err(io::Error::other(format!("journal unreadable: {why}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Kind;

    fn msg_to(to: &str, i: usize) -> Message {
        Message {
            to_node: to.into(),
            data: vec![format!("message {i}")],
            kind: Kind::EventAck,
            method: "TextLogging".into(),
            timeout: None,
            retries: None,
            ttl: None,
        }
    }

    fn msg(i: usize) -> Message {
        msg_to("ship1", i)
    }

    fn lane(to: &str) -> Subject {
        msg_to(to, 0).subject()
    }

    fn data(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.envelope.message.data[0].clone())
            .collect()
    }

    /// Every waiting message of a lane, as its publisher would take them.
    fn take_all(j: &mut Journal, to: &str) -> Vec<Entry> {
        let mut all = Vec::new();
        loop {
            let got = j.take(&lane(to), crate::message::MAX_BATCH).unwrap();
            if got.is_empty() {
                return all;
            }
            all.extend(got);
        }
    }

    fn seqs(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn records_round_trip() {
        let records = vec![
            Record::Checkpoint { next_seq: 7 },
            Record::Accepted {
                seq: 7,
                lane: "ship1.EventACK.TextLogging".into(),
                envelope: b"{}".to_vec(),
            },
            Record::DoneThrough {
                seq: 7,
                lane: "ship1.EventACK.TextLogging".into(),
            },
            Record::InboxOffset {
                file: "inmsg.taking-1".into(),
                offset: 99,
            },
            Record::Started {
                id: "central-1-7".into(),
            },
            Record::Finished {
                reply: b"{}".to_vec(),
            },
            Record::LegacyAccepted {
                seq: 8,
                envelope: b"{}".to_vec(),
            },
            Record::LegacyDone { seq: 8 },
        ];
        let mut buf = Vec::new();
        for r in &records {
            encode(r, &mut buf);
        }
        let d = decode(&buf);
        assert!(d.corruption.is_none());
        assert_eq!(d.valid_len, buf.len() as u64);
        assert_eq!(
            d.records.into_iter().map(|r| r.2).collect::<Vec<_>>(),
            records
        );
    }

    #[test]
    fn unfinished_messages_come_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.pending, 0);
        let entries = j
            .append("central", (0..5).map(msg).collect(), None)
            .unwrap();
        let taken = j.take(&lane("ship1"), 2).unwrap();
        assert_eq!(taken, entries[..2]);
        j.finish(&lane("ship1"), &seqs(&taken)).unwrap();
        drop(j);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!((r.pending, r.lanes.clone()), (3, vec![lane("ship1")]));
        let rest = take_all(&mut j, "ship1");
        assert_eq!(data(&rest), ["message 2", "message 3", "message 4"]);
        assert_eq!(rest[0].envelope, entries[2].envelope);
        assert_eq!(j.pending_count(), 3, "taken is not finished");
        assert!(r.cut.is_none());
    }

    #[test]
    fn a_finish_never_covers_a_message_still_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append("central", (0..3).map(msg).collect(), None)
            .unwrap();
        let taken = j.take(&lane("ship1"), 3).unwrap();
        // The third finishes while the first two are still in flight.
        j.finish(&lane("ship1"), &[taken[2].seq]).unwrap();
        assert_eq!(j.pending_count(), 3);
        drop(j);
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let again = take_all(&mut j, "ship1");
        assert_eq!(seqs(&again), seqs(&taken), "all three are still unfinished");
        j.finish(&lane("ship1"), &seqs(&again)).unwrap();
        assert_eq!(j.pending_count(), 0);
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!((r.pending, r.lanes.len()), (0, 0));
    }

    #[test]
    fn lanes_are_taken_apart_in_their_own_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let mixed: Vec<Message> = (0..6)
            .map(|i| msg_to(if i % 2 == 0 { "ship1" } else { "ship2" }, i))
            .collect();
        j.append("central", mixed, None).unwrap();
        let two = take_all(&mut j, "ship2");
        assert_eq!(data(&two), ["message 1", "message 3", "message 5"]);
        j.finish(&lane("ship2"), &seqs(&two)).unwrap();
        drop(j);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!((r.pending, r.lanes.clone()), (3, vec![lane("ship1")]));
        assert_eq!(
            data(&take_all(&mut j, "ship1")),
            ["message 0", "message 2", "message 4"]
        );
        assert!(take_all(&mut j, "ship2").is_empty());
    }

    #[test]
    fn a_backlog_is_located_a_window_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let n = 5 * WINDOW + 7;
        // Two lanes interleaved, in batches, as an inbox would take them.
        for batch in (0..n).collect::<Vec<_>>().chunks(100) {
            let messages = batch
                .iter()
                .flat_map(|&i| [msg_to("ship1", i), msg_to("ship2", i)])
                .collect();
            j.append("central", messages, None).unwrap();
        }
        let l = &j.lanes["ship1.EventACK.TextLogging"];
        assert_eq!(
            l.waiting.window.len(),
            WINDOW,
            "no more than a window in memory"
        );
        assert!(l.waiting.spill.is_some());
        assert_eq!(j.pending_count(), 2 * n);
        let one = take_all(&mut j, "ship1");
        assert_eq!(one.len(), n);
        assert!(one.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
        assert_eq!(
            one[n - 1].envelope.message.data[0],
            format!("message {}", n - 1)
        );
        j.finish(&lane("ship1"), &seqs(&one)).unwrap();
        drop(j);
        // Reopened, the other lane's backlog is located a window at a time too.
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.pending, n);
        assert_eq!(
            j.lanes["ship2.EventACK.TextLogging"].waiting.window.len(),
            WINDOW
        );
        let two = take_all(&mut j, "ship2");
        assert_eq!(two.len(), n);
        assert!(two.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    #[test]
    fn ids_stay_unique_across_compaction_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let first = j.append("central", vec![msg(0)], None).unwrap();
        j.take(&lane("ship1"), 1).unwrap();
        j.finish(&lane("ship1"), &[first[0].seq]).unwrap();
        j.compact().unwrap();
        drop(j);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.pending, 0);
        let second = j.append("central", vec![msg(1)], None).unwrap();
        assert!(second[0].seq > first[0].seq);
    }

    #[test]
    fn torn_tail_is_cut_and_every_complete_record_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        for i in 0..3 {
            j.append("central", vec![msg(i)], None).unwrap();
        }
        let end = j.size();
        drop(j);
        let path = Journal::path(dir.path());
        assert!(
            fs::metadata(&path).unwrap().len() > end,
            "space reserved ahead"
        );
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(end - 5).unwrap(); // power lost mid-write of the last batch
        drop(f);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(data(&take_all(&mut j, "ship1")), ["message 0", "message 1"]);
        let cut = r.cut.expect("the cut is reported");
        assert!(
            cut.contains("torn record") && cut.contains("dropped 1 message(s)"),
            "{cut}"
        );
        // The journal is usable again after the cut.
        j.append("central", vec![msg(9)], None).unwrap();
        drop(j);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            data(&take_all(&mut j, "ship1")),
            ["message 0", "message 1", "message 9"]
        );
        assert!(r.cut.is_none());
    }

    #[test]
    fn an_unreadable_message_is_reported_and_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let mut buf = Vec::new();
        encode(
            &Record::Accepted {
                seq: 1,
                lane: "ship1.EventACK.TextLogging".into(),
                envelope: b"{not json".to_vec(),
            },
            &mut buf,
        );
        encode(&Record::Checkpoint { next_seq: 2 }, &mut buf);
        j.file.append(&buf).unwrap();
        drop(j);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.pending, 1);
        j.append("central", vec![msg(2)], None).unwrap();
        assert_eq!(data(&take_all(&mut j, "ship1")), ["message 2"]);
        let unreadable = j.take_unreadable();
        assert_eq!(unreadable.len(), 1);
        assert!(unreadable[0].contains("{not json"), "{unreadable:?}");
        assert_eq!(j.pending_count(), 1, "passed over, the next one in flight");
    }

    #[test]
    fn reserved_space_is_the_end_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path(dir.path());
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        for i in 0..3 {
            j.append("central", vec![msg(i)], None).unwrap();
        }
        let end = j.size();
        drop(j);
        assert!(fs::metadata(&path).unwrap().len() > end + PREALLOCATE / 2);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert!(r.cut.is_none(), "{:?}", r.cut);
        assert_eq!((r.pending, j.size()), (3, end));
        // New records go at the end of the records, not after the reserved space.
        j.append("central", vec![msg(3)], None).unwrap();
        let end = j.size();
        drop(j);
        // Reserved space too short for a header is the end too.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(end + 3).unwrap();
        drop(f);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert!(r.cut.is_none(), "{:?}", r.cut);
        assert_eq!(
            data(&take_all(&mut j, "ship1")),
            ["message 0", "message 1", "message 2", "message 3"]
        );
    }

    #[test]
    fn a_batch_cut_before_its_commit_record_is_dropped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append("central", vec![msg(0)], Some(("inmsg.taking-1", 10)))
            .unwrap();
        j.append(
            "central",
            vec![msg(1), msg(2)],
            Some(("inmsg.taking-1", 30)),
        )
        .unwrap();
        drop(j);
        // Cut the second batch just before its commit record.
        let path = Journal::path(dir.path());
        let bytes = fs::read(&path).unwrap();
        let last = decode(&bytes).records.last().unwrap().0;
        fs::write(&path, &bytes[..last as usize]).unwrap();
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(data(&take_all(&mut j, "ship1")), ["message 0"]);
        assert_eq!(r.inbox_offsets.get("inmsg.taking-1"), Some(&10));
        assert!(r.cut.unwrap().contains("dropped 2 message(s)"));
        // Batches without an inbox file commit with a checkpoint.
        let e = j.append("central", vec![msg(3)], None).unwrap();
        assert!(e[0].seq > 3, "sequence numbers are never reused");
        drop(j);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(data(&take_all(&mut j, "ship1")), ["message 0", "message 3"]);
        assert!(r.cut.is_none());
    }

    #[test]
    fn flipped_byte_stops_the_reader_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        for i in 0..3 {
            j.append("central", vec![msg(i)], None).unwrap();
        }
        drop(j);
        let path = Journal::path(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let accepted: Vec<usize> = decode(&bytes)
            .records
            .iter()
            .filter(|(_, _, r)| matches!(r, Record::Accepted { .. }))
            .map(|(offset, _, _)| *offset as usize)
            .collect();
        bytes[accepted[1] + 40] ^= 0x40; // inside the second message's body
        fs::write(&path, &bytes).unwrap();
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(data(&take_all(&mut j, "ship1")), ["message 0"]);
        assert!(r.cut.unwrap().contains("checksum mismatch"));
    }

    #[test]
    fn compaction_keeps_the_journal_small() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        for round in 0..200 {
            j.append("central", (0..50).map(msg).collect(), None)
                .unwrap();
            // All but the newest message finish; one stays waiting each round.
            let taken = j.take(&lane("ship1"), 49).unwrap();
            for e in &taken {
                j.finish(&lane("ship1"), &[e.seq]).unwrap();
            }
            assert!(
                j.size() < 2 * COMPACT_MIN_BYTES,
                "round {round}: {} bytes",
                j.size()
            );
        }
        assert_eq!(j.pending_count(), 200);
        drop(j);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.pending, 200);
        let rest = take_all(&mut j, "ship1");
        assert_eq!(rest.len(), 200);
        assert!(rest.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    #[test]
    fn compaction_with_messages_in_flight_keeps_them_and_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let all = j
            .append("central", (0..2000).map(msg).collect(), None)
            .unwrap();
        let in_flight = j.take(&lane("ship1"), 10).unwrap();
        j.compact().unwrap();
        j.finish(&lane("ship1"), &seqs(&in_flight)).unwrap();
        let rest = take_all(&mut j, "ship1");
        assert_eq!(seqs(&rest), seqs(&all[10..]));
        j.finish(&lane("ship1"), &seqs(&rest[..5])).unwrap();
        drop(j);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.pending, 2000 - 15);
        assert_eq!(seqs(&take_all(&mut j, "ship1")), seqs(&all[15..]));
    }

    #[test]
    fn a_journal_from_before_lanes_is_read_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let envelope = |i: usize| Envelope {
            id: format!("central-1-{i}"),
            from_node: "central".into(),
            accepted: 1,
            message: msg_to(if i == 2 { "ship2" } else { "ship1" }, i),
        };
        let mut buf = Vec::new();
        for i in 1..=3 {
            encode(
                &Record::LegacyAccepted {
                    seq: i as u64,
                    envelope: envelope(i).encode(),
                },
                &mut buf,
            );
        }
        encode(&Record::Checkpoint { next_seq: 4 }, &mut buf);
        encode(&Record::LegacyDone { seq: 1 }, &mut buf);
        fs::create_dir_all(dir.path()).unwrap();
        fs::write(Journal::path(dir.path()), &buf).unwrap();
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            (r.pending, r.lanes.clone()),
            (2, vec![lane("ship1"), lane("ship2")])
        );
        let one = take_all(&mut j, "ship1");
        assert_eq!(
            one.iter().map(|e| e.envelope.clone()).collect::<Vec<_>>(),
            [envelope(3)]
        );
        assert_eq!(take_all(&mut j, "ship2")[0].envelope, envelope(2));
        let rewritten = decode(&fs::read(Journal::path(dir.path())).unwrap());
        assert!(rewritten.records.iter().all(|(_, _, r)| !matches!(
            r,
            Record::LegacyAccepted { .. } | Record::LegacyDone { .. }
        )));
        let next = j.append("central", vec![msg(9)], None).unwrap();
        assert_eq!(next[0].seq, 4);
    }

    #[test]
    fn inbox_offsets_survive_restart_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append("central", vec![msg(0)], Some(("inmsg.taking-5", 120)))
            .unwrap();
        j.compact().unwrap();
        drop(j);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.inbox_offsets.get("inmsg.taking-5"), Some(&120));
        j.forget_inbox("inmsg.taking-5");
        j.compact().unwrap();
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert!(r.inbox_offsets.is_empty());
    }
}
