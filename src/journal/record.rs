//! Records: the framing shared by the journal and the received log, and the file they are
//! appended to.
//!
//! ```text
//! +-------------+-------------+---------------------------------+
//! | len: u32 LE | crc: u32 LE | body: len bytes                 |
//! +-------------+-------------+---------------------------------+
//! body = type: u8, then
//!   1 Checkpoint   next_seq: u64 LE, then (journals from session 34 on) synced: u64 LE
//!   4 InboxOffset  offset: u64 LE, file name: UTF-8
//!   5 Started      message id: UTF-8           (received.log, see crate::received)
//!   6 Finished     reply: JSON (the wire form)  (received.log)
//!   7 Accepted     seq: u64 LE, lane length: u16 LE, lane: UTF-8, envelope: JSON
//!   8 DoneThrough  seq: u64 LE, lane: UTF-8
//!   (2 and 3, Accepted and Done without a lane, are read from journals written before
//!    lanes, and rewritten at once)
//! ```
//!
//! In the style of LevelDB's log format. `crc` is CRC-32 (IEEE) of the body. A reader that
//! meets a record that is short, too long, or fails its checksum stops there: everything
//! before it is kept, the rest is cut off. Only the tail can be torn by a power loss,
//! because records are only ever appended; damage before it is the disk's (a bad sector,
//! a lost page), and a reader may be told to pass over it ([`Records::passing_below`]),
//! once it knows that what was there had been synced. Past the last record the file may
//! hold zeros, space reserved ahead ([`RecordFile`]): a header of zeros reads as the end,
//! not as damage. What the records mean is the journal's and the received log's business.

use crate::storage::{Handle, Storage, StoredFile};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub const HEADER: usize = 8;
/// A record larger than this is treated as corruption (messages are far smaller).
const MAX_RECORD: usize = 64 << 20;
/// How much of the file is read at a time when scanning it.
pub const CHUNK: usize = 256 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A batch's commit record (see [`crate::journal`]), and where the file was known to be
    /// durable when it was written: `synced` (absent from journals before session 34, and
    /// ignored by the versions that wrote them, which read only `next_seq`).
    Checkpoint {
        next_seq: u64,
        synced: Option<u64>,
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
    framed(out, |out| match record {
        Record::Checkpoint { next_seq, synced } => {
            out.push(1);
            out.extend_from_slice(&next_seq.to_le_bytes());
            if let Some(synced) = synced {
                out.extend_from_slice(&synced.to_le_bytes());
            }
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
        Record::Started { id } => started_body(id, out),
        Record::Finished { reply } => {
            out.push(6);
            out.extend_from_slice(reply);
        }
        Record::Accepted {
            seq,
            lane,
            envelope,
        } => {
            accepted_head(*seq, lane, out);
            out.extend_from_slice(envelope);
        }
        Record::DoneThrough { seq, lane } => {
            out.push(8);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(lane.as_bytes());
        }
    });
}

/// Appends a [`Record::Accepted`] whose envelope `write_envelope` writes in place (the
/// journal's hot path, with no copy of the envelope on the way); where in `out` the
/// envelope is.
pub fn encode_accepted(
    seq: u64,
    lane: &str,
    out: &mut Vec<u8>,
    write_envelope: impl FnOnce(&mut Vec<u8>),
) -> std::ops::Range<usize> {
    let mut at = 0..0;
    framed(out, |out| {
        accepted_head(seq, lane, out);
        at.start = out.len();
        write_envelope(out);
        at.end = out.len();
    });
    at
}

/// Appends a [`Record::Started`] of `id`, as [`encode`] would (without owning the id).
pub fn encode_started(id: &str, out: &mut Vec<u8>) {
    framed(out, |out| started_body(id, out));
}

fn started_body(id: &str, out: &mut Vec<u8>) {
    out.push(5);
    out.extend_from_slice(id.as_bytes());
}

/// Appends a [`Record::Finished`] whose reply `write_reply` writes in place (as
/// [`encode_accepted`] does an envelope).
pub fn encode_finished(out: &mut Vec<u8>, write_reply: impl FnOnce(&mut Vec<u8>)) {
    framed(out, |out| {
        out.push(6);
        write_reply(out);
    });
}

fn accepted_head(seq: u64, lane: &str, out: &mut Vec<u8>) {
    out.push(7);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(lane.len() as u16).to_le_bytes());
    out.extend_from_slice(lane.as_bytes());
}

/// Appends a record whose body `body` writes: the header (its length and CRC) around it.
fn framed(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    body(out);
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
pub enum Step {
    /// Zeros: the file's preallocated space, past its last record.
    End,
    /// A record, and how many bytes it takes.
    Record(usize, Record),
    /// Not enough bytes for a whole record: this many are needed.
    Short(usize),
    /// Not a record: why.
    Bad(String),
}

pub fn decode_one(bytes: &[u8]) -> Step {
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

/// Whether `bytes` is exactly one whole `Finished` record, its checksum right: what
/// [`decode_one`] would read as one, without copying its reply out.
pub fn is_finished_record(bytes: &[u8]) -> bool {
    let Some(header) = bytes.get(..HEADER) else {
        return false;
    };
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let body = &bytes[HEADER..];
    len > 0 && len == body.len() && body[0] == 6 && crc32fast::hash(body) == crc
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
            synced: u64_at(9),
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
/// why in `corruption`, unless told to pass over damage before some offset
/// ([`Records::passing_below`]).
pub struct Records<'a> {
    file: &'a dyn StoredFile,
    end: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
    pos: usize,
    /// Damage that begins before this is passed over, to the next whole record...
    pass_below: u64,
    /// ... and damage that begins in one of these stretches (`from`, `to`).
    pass_within: Vec<(u64, u64)>,
    /// The damaged stretches passed over, in order.
    pub passed: Vec<Passed>,
    /// Pages the disk could not read (EIO), met where damage may be passed over.
    unreadable: Vec<(u64, u64)>,
    pub corruption: Option<String>,
}

/// A damaged stretch of a file that whole records follow, passed over by a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    /// Where the damage begins, and where the next whole record does.
    pub from: u64,
    pub to: u64,
    /// What was found there.
    pub why: String,
}

impl<'a> Records<'a> {
    pub fn new(file: &'a dyn StoredFile, from: u64, end: u64) -> Records<'a> {
        Records {
            file,
            end,
            buf: Vec::new(),
            buf_at: from,
            pos: 0,
            pass_below: 0,
            pass_within: Vec::new(),
            passed: Vec::new(),
            unreadable: Vec::new(),
            corruption: None,
        }
    }

    /// Damage (a corrupt record, or zeros where records go on after them) that begins
    /// before `below` is passed over to the next whole record within [`RESYNC_SCAN`] of it,
    /// and noted in [`Records::passed`]; only where the caller knows the damage is not a
    /// torn write's (what was there had been synced: see [`crate::journal`]).
    pub fn passing_below(mut self, below: u64) -> Records<'a> {
        self.pass_below = below;
        self
    }

    /// As [`Records::passing_below`], for damage that begins in one of `stretches` (`from`,
    /// `to`): where damage was found before, and is known to be the disk's. Damage found
    /// anywhere else (a page that reads now and not later) stops the reader.
    pub fn passing_within(mut self, stretches: &[(u64, u64)]) -> Records<'a> {
        self.pass_within = stretches.to_vec();
        self
    }

    /// Whether damage at `at` may be passed over.
    fn may_pass(&self, at: u64) -> bool {
        at < self.pass_below
            || self
                .pass_within
                .iter()
                .any(|&(from, to)| (from..to).contains(&at))
    }

    /// Passes over the damage at `at` (`why`) if it may be, to the next whole record:
    /// whether it did.
    fn pass_over(&mut self, at: u64, why: &str) -> io::Result<bool> {
        if !self.may_pass(at) {
            return Ok(false);
        }
        let Some(next) = next_record(self.file, at + 1, self.end)? else {
            return Ok(false);
        };
        let unreadable = self
            .unreadable
            .iter()
            .any(|&(from, to)| from < next && to > at);
        let why = match unreadable {
            true => "a page the disk cannot read (I/O error)".to_string(),
            false => why.to_string(),
        };
        self.passed.push(Passed {
            from: at,
            to: next,
            why,
        });
        (self.buf, self.buf_at, self.pos) = (Vec::new(), next, 0);
        Ok(true)
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
                    if self.pass_over(at, "zeros")? {
                        continue;
                    }
                    self.end = at;
                    return Ok(None);
                }
                Step::Short(needed) => {
                    let left = (self.end - at).min(usize::MAX as u64) as usize;
                    let held = self.buf.len() - self.pos;
                    if left > held {
                        // More of the file than the buffer holds: read on from this record.
                        let mut buf = vec![0; CHUNK.max(needed).min(left)];
                        // Read around pages the disk cannot read only where damage may
                        // be passed over; elsewhere an I/O error is one.
                        let end = at + buf.len() as u64;
                        let passable = at < self.pass_below
                            || self.pass_within.iter().any(|&(f, t)| f < end && t > at);
                        match passable {
                            true => {
                                let bad = read_around_bad_pages(self.file, &mut buf, at)?;
                                self.unreadable.extend(bad);
                            }
                            false => self.file.read_exact_at(&mut buf, at)?,
                        }
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
            if self.pass_over(at, &why)? {
                continue;
            }
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
///
/// # Fail-stop
///
/// A write that fails (a full disk) is cut back off, durably, so the next append starts
/// where the records end and nothing half-written (whole records of it, even) can be read
/// after a power cut. If the file cannot be brought back in step with what its owner holds
/// in memory — an fsync failed (Linux may have dropped the unsynced pages, and a later
/// fsync would report success), or the cut-back failed — the file is *unusable*: every
/// later operation fails with [`RecordFile::unusable`]'s reason, and the owner must stop
/// (the agent exits non-zero; systemd restarts it). Nothing is retried. The restart makes
/// whatever the file holds durable, drops it from the page cache and reads it back from the
/// disk before acting on it ([`RecordFile::open`]): what it acts on is what the disk has.
/// The crash simulation (`storage::crash`) checks this against every order of failures it
/// can draw.
pub struct RecordFile {
    file: Handle,
    fsyncs: Arc<Fsyncs>,
    end: u64,
    allocated: u64,
    /// Whether the filesystem took the last reservation ([`RecordFile::reserve`]).
    reserving: bool,
    /// Everything before this is durable.
    synced: u64,
    unusable: Option<String>,
}

/// Space reserved ahead of a record file's end at a time.
pub const PREALLOCATE: u64 = 1 << 20;

/// An fsync of a [`RecordFile`], to run without its owner's lock ([`SyncTicket::sync`]),
/// then to report back ([`RecordFile::synced`]).
pub struct SyncTicket {
    file: Handle,
    /// The records written before the fsync started: what it makes durable.
    through: u64,
    fsyncs: Arc<Fsyncs>,
}

/// One file's fsyncs, one at a time. Linux reports a failed writeback once per open file:
/// of two fsyncs running at once, one may get the error and the other 0 for the same lost
/// pages. So fsyncs take turns, and once one has failed every later one fails too.
#[derive(Default)]
struct Fsyncs {
    turn: Mutex<bool>,
}

impl SyncTicket {
    /// Makes the records written before the ticket was taken durable; how long it took.
    pub fn sync(&self) -> io::Result<std::time::Duration> {
        let started = std::time::Instant::now();
        let mut failed = self.fsyncs.turn.lock().unwrap_or_else(|p| p.into_inner());
        if *failed {
            return Err(io::Error::other("an earlier fsync of this file failed"));
        }
        if let Err(e) = self.file.sync_data() {
            *failed = true;
            return Err(e);
        }
        Ok(started.elapsed())
    }

    /// Where the records it covers end.
    pub fn through(&self) -> u64 {
        self.through
    }
}

impl RecordFile {
    /// Opens (or creates) `path`. Its end is not known until it has been read: see
    /// [`RecordFile::found_end`].
    ///
    /// What it holds is made durable, and read from the disk, before anyone reads it:
    /// written before a crash of the process and never synced, it would be acted on and
    /// then lost to a power cut; and after a failed fsync, the page cache may still show
    /// pages that never reached the disk (marked clean, so no later fsync writes them).
    pub fn open(storage: &dyn Storage, path: &Path) -> io::Result<RecordFile> {
        let file = storage.open(path)?;
        // Its name too is durable before anything in it counts (it may have just been
        // created), and its folder's name in the data folder (made with it, at a first start).
        let dir = path.parent().unwrap_or(Path::new("."));
        storage.sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            storage.sync_dir(parent)?;
        }
        file.sync_data()?;
        file.drop_cache();
        let len = file.size()?;
        Ok(RecordFile {
            file,
            fsyncs: Arc::default(),
            end: len,
            allocated: len,
            reserving: true,
            synced: 0,
            unusable: None,
        })
    }

    /// The file as rewritten by a compaction, which synced it and its folder: `end` bytes
    /// of records. Nothing to sync or read back, and its pages stay cached for the takes
    /// that follow.
    pub fn rewritten(storage: &dyn Storage, path: &Path, end: u64) -> io::Result<RecordFile> {
        Ok(RecordFile {
            file: storage.open(path)?,
            fsyncs: Arc::default(),
            end,
            allocated: end,
            reserving: true,
            synced: end,
            unusable: None,
        })
    }

    /// The records end at `end`: whatever follows (reserved space, or a torn or corrupt
    /// record) is cut off the file, durably.
    pub fn found_end(&mut self, end: u64) -> io::Result<()> {
        self.usable()?;
        if self.allocated > end {
            self.file.set_len(end)?;
            self.file.sync_data()?;
            self.allocated = end;
        }
        (self.end, self.synced) = (end, end);
        Ok(())
    }

    /// Writes `buf` at the end; returns where it starts. Not durable until synced. A
    /// failed write is cut back off (or the file is unusable).
    pub fn append(&mut self, buf: &[u8]) -> io::Result<u64> {
        self.usable()?;
        let at = self.end;
        let needed = at + buf.len() as u64;
        if needed > self.allocated {
            self.reserve(needed);
        }
        if let Err(e) = self.file.write_all_at(buf, at) {
            // Part of it may be there, even whole records of it: cut it off, durably, so
            // that nothing half-written can be read as records after a power cut, or be
            // overwritten only in part by the next append.
            let cut = self.file.set_len(at).and_then(|()| self.file.sync_data());
            match cut {
                Ok(()) => self.synced = at,
                Err(cut) => self.fail(format!(
                    "a write failed ({e}), and cutting it back off failed too ({cut})"
                )),
            }
            self.allocated = at;
            return Err(e);
        }
        self.end = needed;
        Ok(at)
    }

    fn reserve(&mut self, needed: u64) {
        let to = needed + PREALLOCATE;
        // Not possible here (the filesystem, or no space to reserve): the write grows
        // the file, as a plain append would.
        self.reserving = self.file.allocate(self.allocated, to);
        self.allocated = if self.reserving { to } else { needed };
    }

    /// How much of its disk's free space an append of `len` bytes would take: nothing
    /// within the space reserved ahead of the end, else what goes past it and the next
    /// reservation (where the filesystem takes them).
    pub fn disk_taken_by(&self, len: usize) -> u64 {
        match (self.end + len as u64).saturating_sub(self.allocated) {
            0 => 0,
            past if self.reserving => past + PREALLOCATE,
            past => past,
        }
    }

    /// Makes every record written so far durable, holding `&mut self` throughout (see
    /// [`RecordFile::ticket`] to sync without it).
    pub fn sync(&mut self) -> io::Result<()> {
        let ticket = self.ticket()?;
        let result = ticket.sync();
        self.synced(&ticket, result).map(drop)
    }

    /// An fsync of what has been written so far, to run without holding this file.
    pub fn ticket(&self) -> io::Result<SyncTicket> {
        self.usable()?;
        Ok(SyncTicket {
            file: self.file.clone(),
            through: self.end,
            fsyncs: self.fsyncs.clone(),
        })
    }

    /// How a ticket's fsync went: how long it took, or `None` if the file it synced has
    /// since been replaced by a rewrite (a compaction, which writes and syncs everything
    /// known: nothing is left for the ticket to cover, whatever its fsync said). A failure
    /// makes the file unusable (see the type's docs).
    pub fn synced(
        &mut self,
        ticket: &SyncTicket,
        result: io::Result<std::time::Duration>,
    ) -> io::Result<Option<std::time::Duration>> {
        self.usable()?;
        if !Arc::ptr_eq(&ticket.file, &self.file) {
            return Ok(None);
        }
        match result {
            Ok(took) => {
                self.synced = self.synced.max(ticket.through);
                Ok(Some(took))
            }
            Err(e) => {
                self.fail(format!("fsync failed ({e})"));
                Err(e)
            }
        }
    }

    /// Where what is known to be durable ends.
    pub fn synced_through(&self) -> u64 {
        self.synced
    }

    /// Whether everything written is durable.
    pub fn is_synced(&self) -> bool {
        self.synced >= self.end
    }

    /// Where the next record goes.
    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn handle(&self) -> &Handle {
        &self.file
    }

    /// Marks the file unusable (see the type's docs): it and its owner's memory are out of
    /// step.
    pub fn fail(&mut self, why: String) {
        log::error!("{why}");
        self.unusable.get_or_insert(why);
    }

    /// Why the file is unusable, if it is.
    pub fn unusable(&self) -> Option<&str> {
        self.unusable.as_deref()
    }

    fn usable(&self) -> io::Result<()> {
        match &self.unusable {
            None => Ok(()),
            Some(why) => Err(io::Error::other(format!("unusable since: {why}"))),
        }
    }
}

/// How far past damage [`open_records`] looks for records that go on after it.
const RESYNC_SCAN: usize = 1 << 20;
/// The largest record looked for past damage: a reply cut to the broker's largest message
/// (8 MiB is past any usual `max_payload`).
const RESYNC_RECORD: usize = 8 << 20;
/// What looking for a record past damage may read and checksum in all.
const RESYNC_BUDGET: usize = 64 << 20;

/// What [`open_records`] found besides the records.
#[derive(Debug, Default)]
pub struct Damage {
    /// A torn or corrupt tail, cut off: what was cut.
    pub cut: Option<String>,
    /// Damaged stretches with records after them (a bad sector, a zeroed page): passed
    /// over, each said.
    pub passed_over: Vec<String>,
}

/// Opens (or creates) a file of records (received.log), hands each record it holds to
/// `each` (offset, length, record) as it is read, a chunk at a time, passes over damage
/// that whole records follow, and cuts off a torn or corrupt tail. Nothing of it is held
/// here: a file of stored replies can be far larger than the memory of the node reading
/// it.
///
/// Only for a file in which a record kept that was never synced costs nothing (the
/// received log: an id remembered that did not need to be): after a power cut, the pages
/// of a tail can reach the disk out of order, and a whole record may follow a torn one.
/// The journal cuts at the first damage instead. A page the disk cannot read (EIO) is
/// passed over too, said as damage is: what it held is lost (ids forgotten, whose retries
/// would run again), where failing the open failed every start of the agent.
pub fn open_records(
    storage: &dyn Storage,
    path: &Path,
    mut each: impl FnMut(u64, u32, Record),
) -> io::Result<(RecordFile, Damage)> {
    let mut file = RecordFile::open(storage, path)?;
    let handle = file.handle().clone();
    let end = file.end();
    let mut damage = Damage::default();
    let (mut from, mut kept) = (0, 0);
    let valid_len = loop {
        // A page the disk cannot read (EIO: a bad sector) is damage too, passed over to
        // the records after it: failing the open failed every start of the agent.
        let mut records = Records::new(&*handle, from, end).passing_below(end);
        for record in &mut records {
            let (at, len, record) = record?;
            each(at, len, record);
            kept += 1;
        }
        for passed in records.passed.drain(..) {
            damage.passed_over.push(format!(
                "{}: at byte {}: {}; passed over bytes {} to {}, the records after them kept",
                path.display(),
                passed.from,
                passed.why,
                passed.from,
                passed.to
            ));
        }
        let reached = records.reached();
        let why = records.corruption.take();
        // Damage, or zeros where the records stopped (space reserved ahead, or a page
        // that never reached the disk): whole records after it go on.
        let next = match reached < end {
            true => next_record(&*handle, reached + u64::from(why.is_some()), end)?,
            false => None,
        };
        match (next, why) {
            (Some(next), why) => {
                let why = why.unwrap_or_else(|| format!("at byte {reached}: zeros"));
                damage.passed_over.push(format!(
                    "{}: {why}; passed over bytes {reached} to {next}, the records after them kept",
                    path.display()
                ));
                from = next;
            }
            (None, Some(why)) => {
                damage.cut = Some(cut_message(path, &why, kept, reached));
                break reached;
            }
            (None, None) => break reached,
        }
    };
    file.found_end(valid_len)?;
    Ok((file, damage))
}

/// The bytes of `file` from `from`, up to [`RESYNC_SCAN`] of them and never past `end`,
/// pages the disk cannot read filled in (see [`read_around_bad_pages`]).
fn scan_window(file: &dyn StoredFile, from: u64, end: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; (end - from).min(RESYNC_SCAN as u64) as usize];
    read_around_bad_pages(file, &mut buf, from)?;
    Ok(buf)
}

/// Where the first whole record past `from` begins: within [`RESYNC_SCAN`] bytes of the
/// first byte that is not zero (zeros before it, a lost page or erase block, are passed
/// over, up to [`RESYNC_BUDGET`] of them).
fn next_record(file: &dyn StoredFile, mut from: u64, end: u64) -> io::Result<Option<u64>> {
    // Compared a page at a time (a few microseconds a megabyte), not byte by byte.
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut zeros = 0;
    let start = from;
    loop {
        if from >= end || zeros >= RESYNC_BUDGET {
            return Ok(None);
        }
        let buf = scan_window(file, from, end)?;
        let span = buf.len();
        let first = buf
            .chunks(ZEROS.len())
            .position(|c| c != &ZEROS[..c.len()])
            .and_then(|i| {
                let at = i * ZEROS.len();
                let c = &buf[at..(at + ZEROS.len()).min(span)];
                c.iter().position(|&b| b != 0).map(|j| at + j)
            });
        match first {
            None => (from, zeros) = (from + span as u64, zeros + span),
            // A record may begin up to three bytes before (its length's low bytes zero).
            // Three bytes back from the window's start too, when zeros were passed over
            // (the record's first bytes end the window before), but not before `start`.
            Some(first) => {
                from = (from + first as u64).saturating_sub(3).max(start);
                break;
            }
        }
    }
    let buf = scan_window(file, from, end)?;
    let span = buf.len();
    // A record begins with a length that is not zero: none begins past the last byte that
    // is not (a file's reserved space is zeros, and looked at at every open).
    let Some(last) = buf
        .chunks(ZEROS.len())
        .rposition(|c| c != &ZEROS[..c.len()])
        .and_then(|i| {
            let at = i * ZEROS.len();
            let c = &buf[at..(at + ZEROS.len()).min(span)];
            c.iter().rposition(|&b| b != 0).map(|j| at + j)
        })
    else {
        return Ok(None);
    };
    // What checking candidates may read and checksum in all: past it, the rest is cut as a
    // torn tail is (a length read where no record begins is as likely large as small, and
    // 1 MiB of garbage could otherwise mean reading gigabytes at a start).
    let mut budget = RESYNC_BUDGET;
    for p in 0..span.saturating_sub(HEADER + 1).min(last + 1) {
        let len = u32::from_le_bytes(buf[p..p + 4].try_into().expect("4 bytes")) as usize;
        let at = from + p as u64;
        // A record's body begins with its type (1 to 8).
        let typed = (1..=8).contains(&buf[p + HEADER]);
        if !typed || len == 0 || len > RESYNC_RECORD || at + (HEADER + len) as u64 > end {
            continue;
        }
        let Some(left) = budget.checked_sub(HEADER + len) else {
            return Ok(None);
        };
        budget = left;
        let record = match buf.get(p..p + HEADER + len) {
            Some(whole) => std::borrow::Cow::Borrowed(whole),
            None => {
                let mut whole = vec![0; HEADER + len];
                read_around_bad_pages(file, &mut whole, at)?;
                std::borrow::Cow::Owned(whole)
            }
        };
        if matches!(decode_one(&record), Step::Record(..)) {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// Reads `buf.len()` bytes at `at`; where the disk cannot read them (EIO: a bad sector),
/// reads what it can a page at a time and fills the pages it cannot with 0xFF, where no
/// record begins and which no checksum takes: returns those pages.
fn read_around_bad_pages(
    file: &dyn StoredFile,
    buf: &mut [u8],
    at: u64,
) -> io::Result<Vec<(u64, u64)>> {
    const PAGE: u64 = 4096;
    // A read may fail once and not again (a marginal sector, a flaky reader): tried again
    // before a page counts as lost.
    const TRIES: usize = 3;
    match file.read_exact_at(buf, at) {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
        read => return read.map(|()| Vec::new()),
    }
    let mut bad = Vec::new();
    let mut p = 0;
    while p < buf.len() {
        let page_end = ((at + p as u64) / PAGE + 1) * PAGE;
        let q = ((page_end - at) as usize).min(buf.len());
        let mut read = file.read_exact_at(&mut buf[p..q], at + p as u64);
        for _ in 1..TRIES {
            match &read {
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    read = file.read_exact_at(&mut buf[p..q], at + p as u64);
                }
                _ => break,
            }
        }
        match read {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                buf[p..q].fill(0xFF);
                bad.push((at + p as u64, at + q as u64));
            }
            Err(e) => return Err(e),
        }
        p = q;
    }
    Ok(bad)
}

/// What cutting a file back to its last complete record cut.
pub fn cut_message(path: &Path, why: &str, kept: usize, valid_len: u64) -> String {
    format!(
        "{}: {why}; kept {kept} complete records ({valid_len} bytes), cut the rest",
        path.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_takes_of_the_disk_only_what_passes_the_room_reserved_and_the_next_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = RecordFile::open(&crate::storage::Disk, &dir.path().join("r.log")).unwrap();
        // Nothing reserved yet: the first append reserves ahead of itself.
        assert_eq!(file.disk_taken_by(10), 10 + PREALLOCATE);
        file.append(&[1; 10]).unwrap();
        if !file.reserving {
            return; // a filesystem without fallocate: each append grows the file
        }
        assert_eq!(file.disk_taken_by(100), 0);
        assert_eq!(file.disk_taken_by(PREALLOCATE as usize), 0);
        assert_eq!(
            file.disk_taken_by(PREALLOCATE as usize + 1),
            1 + PREALLOCATE
        );
    }

    #[test]
    fn an_envelope_or_reply_written_in_place_makes_the_same_record() {
        let envelope = br#"{"id":"central-1-1-ab","toNode":"ship1"}"#;
        let mut whole = b"before".to_vec();
        encode(
            &Record::Accepted {
                seq: 9,
                lane: "ship1.EventACK.TextLogging".into(),
                envelope: envelope.to_vec(),
            },
            &mut whole,
        );
        let mut in_place = b"before".to_vec();
        let at = encode_accepted(9, "ship1.EventACK.TextLogging", &mut in_place, |out| {
            out.extend_from_slice(envelope)
        });
        assert_eq!(in_place, whole);
        assert_eq!(&in_place[at], envelope);
        let reply = br#"{"id":"central-1-1-ab","status":"ok"}"#;
        let (mut whole, mut in_place) = (Vec::new(), Vec::new());
        encode(
            &Record::Finished {
                reply: reply.to_vec(),
            },
            &mut whole,
        );
        encode_finished(&mut in_place, |out| out.extend_from_slice(reply));
        assert_eq!(in_place, whole);
    }

    #[test]
    fn a_finished_record_is_told_as_decode_one_reads_it() {
        let mut finished = Vec::new();
        encode(
            &Record::Finished {
                reply: br#"{"id":"central-1-1-ab","status":"ok"}"#.to_vec(),
            },
            &mut finished,
        );
        let mut started = Vec::new();
        encode(&Record::Started { id: "a".into() }, &mut started);
        let mut flipped = finished.clone();
        flipped[HEADER + 5] ^= 1;
        let with_more = [finished.clone(), started.clone()].concat();
        let cases = [
            (&finished[..], true),
            (&started[..], false),
            (&flipped[..], false),
            (&finished[..finished.len() - 1], false),
            (&finished[..HEADER - 1], false),
            (&with_more[..], false),
            (&[0u8; HEADER][..], false),
        ];
        for (bytes, whole) in cases {
            assert_eq!(is_finished_record(bytes), whole, "{bytes:?}");
            let read = matches!(decode_one(bytes), Step::Record(n, Record::Finished { .. }) if n == bytes.len());
            assert_eq!(read, whole, "{bytes:?}");
        }
    }

    #[test]
    fn records_round_trip() {
        let records = vec![
            Record::Checkpoint {
                next_seq: 7,
                synced: None,
            },
            Record::Checkpoint {
                next_seq: 7,
                synced: Some(1 << 40),
            },
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
}
