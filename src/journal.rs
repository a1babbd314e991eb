//! The journal: every accepted message is on disk, fsync'd, before it leaves `inmsg.txt`, and
//! stays there until it is finished (ACKed, published, or given up into
//! `failed-messages.txt`). After a crash or restart, [`Journal::open`] hands back every
//! unfinished message in the order it was accepted.
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
//!   2 Accepted     seq: u64 LE, envelope: JSON (the wire form)
//!   3 Done         seq: u64 LE
//!   4 InboxOffset  offset: u64 LE, file name: UTF-8
//!   5 Started      message id: UTF-8           (received.log, see crate::received)
//!   6 Finished     reply: JSON (the wire form)  (received.log)
//! ```
//!
//! Every batch of `Accepted` records ends with a commit record: the `InboxOffset` of the
//! inbox file it came from, or a `Checkpoint`. `Accepted` records after the last commit
//! record belong to a batch whose write was cut; they are dropped on open, and the inbox
//! reads them again from its file.
//!
//! `crc` is CRC-32 (IEEE) of the body. A reader that meets a record that is short, too long,
//! or fails its checksum stops there: everything before it is kept, the rest is cut off, and
//! [`Recovery::cut`] says what was cut. Only the tail can be torn by a power loss, because
//! records are only ever appended.
//!
//! # Costs
//!
//! [`Journal::append`] writes a whole batch (one read of `inmsg.txt`) with one `write` and one
//! `fdatasync`. `Done` records are not synced on their own: losing one in a crash only means
//! that message is sent again (the receiver recognises its id). [`Journal::sync`] is called
//! periodically and at shutdown. Once finished records make up most of the file, it is
//! compacted: the live records are copied to a new file that atomically replaces the old one,
//! so the journal stays small whatever the uptime.

use crate::message::{Envelope, Message};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: usize = 8;
/// A record larger than this is treated as corruption (messages are far smaller).
const MAX_RECORD: usize = 64 << 20;
/// Compaction is considered once the file is at least this big...
const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// ... and the live records are less than 1/COMPACT_RATIO of it.
const COMPACT_RATIO: u64 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Checkpoint {
        next_seq: u64,
    },
    Accepted {
        seq: u64,
        envelope: Vec<u8>,
    },
    Done {
        seq: u64,
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
        Record::Accepted { seq, envelope } => {
            out.push(2);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(envelope);
        }
        Record::Done { seq } => {
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
    }
    let body_len = out.len() - start - HEADER;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Records decoded from a journal file, with where the readable part ends.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Each record with the offset and length (header included) it occupies.
    pub records: Vec<(u64, u32, Record)>,
    /// Bytes that hold complete, valid records.
    pub valid_len: u64,
    /// Why reading stopped before the end, if it did.
    pub corruption: Option<String>,
}

/// Decodes records until the end or the first torn or corrupt one.
pub fn decode(bytes: &[u8]) -> Decoded {
    let mut d = Decoded::default();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let fail = |why: String| Some(format!("at byte {pos} of {}: {why}", bytes.len()));
        if bytes.len() - pos < HEADER {
            d.corruption = fail(format!("torn record header ({} bytes)", bytes.len() - pos));
            break;
        }
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if len > MAX_RECORD || len == 0 {
            d.corruption = fail(format!("impossible record length {len}"));
            break;
        }
        if bytes.len() - pos - HEADER < len {
            d.corruption = fail(format!(
                "torn record: {len} bytes announced, {} present",
                bytes.len() - pos - HEADER
            ));
            break;
        }
        let body = &bytes[pos + HEADER..pos + HEADER + len];
        if crc32fast::hash(body) != crc {
            d.corruption = fail("checksum mismatch".to_string());
            break;
        }
        let Some(record) = decode_body(body) else {
            d.corruption = fail(format!("unknown record type {}", body[0]));
            break;
        };
        d.records.push((pos as u64, (HEADER + len) as u32, record));
        pos += HEADER + len;
        d.valid_len = pos as u64;
    }
    d
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(body.get(i..i + 8)?.try_into().ok()?))
    };
    Some(match body[0] {
        1 => Record::Checkpoint {
            next_seq: u64_at(1)?,
        },
        2 => Record::Accepted {
            seq: u64_at(1)?,
            envelope: body.get(9..)?.to_vec(),
        },
        3 => Record::Done { seq: u64_at(1)? },
        4 => Record::InboxOffset {
            offset: u64_at(1)?,
            file: String::from_utf8(body.get(9..)?.to_vec()).ok()?,
        },
        5 => Record::Started {
            id: String::from_utf8(body.get(1..)?.to_vec()).ok()?,
        },
        6 => Record::Finished {
            reply: body.get(1..)?.to_vec(),
        },
        _ => return None,
    })
}

/// Opens (or creates) a file of records for appending, reads what it holds, and cuts off a
/// torn or corrupt tail, returning what was cut. The one way record files are opened.
pub fn open_records(path: &Path) -> io::Result<(File, Decoded, Option<String>)> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let decoded = decode(&bytes);
    let cut = match &decoded.corruption {
        None => None,
        Some(why) => {
            file.set_len(decoded.valid_len)?;
            file.sync_all()?;
            Some(format!(
                "{}: {why}; kept {} complete records ({} bytes), cut {} bytes",
                path.display(),
                decoded.records.len(),
                decoded.valid_len,
                bytes.len() as u64 - decoded.valid_len
            ))
        }
    };
    Ok((file, decoded, cut))
}

/// A journaled message: its place in the journal and the message itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub envelope: Envelope,
}

/// Journaled messages waiting for their publisher: their places in the journal, oldest
/// first, and where they go. The messages themselves stay on disk until their turn
/// ([`Journal::read`]), so a backlog costs memory only for the sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub subject: crate::subject::Subject,
    pub seqs: Vec<u64>,
}

/// Groups entries into runs for the same subject, keeping their order.
pub fn queue(entries: &[Entry]) -> Vec<Queued> {
    let mut out: Vec<Queued> = Vec::new();
    for e in entries {
        let m = &e.envelope.message;
        match out.last_mut() {
            Some(q)
                if q.subject.node == m.to_node
                    && q.subject.kind == m.kind
                    && q.subject.method == m.method =>
            {
                q.seqs.push(e.seq)
            }
            _ => out.push(Queued {
                subject: m.subject(),
                seqs: vec![e.seq],
            }),
        }
    }
    out
}

/// What [`Journal::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Unfinished messages, oldest first.
    pub pending: Vec<Entry>,
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

/// The open journal. Share it behind a `Mutex`: appends are batched by the caller.
pub struct Journal {
    dir: PathBuf,
    file: File,
    size: u64,
    next_seq: u64,
    pending: BTreeMap<u64, Span>,
    live_bytes: u64,
    inbox_offsets: BTreeMap<String, u64>,
    unsynced: bool,
    bytes_written: u64,
    /// How long each fsync took since the last [`Journal::take_fsync_seconds`].
    fsync_seconds: Vec<f64>,
}

impl Journal {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("journal.log")
    }

    /// Opens (or creates) the journal in `dir`, cutting off a torn or corrupt tail.
    pub fn open(dir: &Path) -> io::Result<(Journal, Recovery)> {
        let (file, decoded, cut) = open_records(&Journal::path(dir))?;
        let mut recovery = Recovery {
            cut,
            ..Recovery::default()
        };
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            file,
            size: decoded.valid_len,
            next_seq: 1,
            pending: BTreeMap::new(),
            live_bytes: 0,
            inbox_offsets: BTreeMap::new(),
            unsynced: false,
            bytes_written: 0,
            fsync_seconds: Vec::new(),
        };
        let mut envelopes = BTreeMap::new();
        // Accepted records since the last commit record (Checkpoint or InboxOffset).
        let mut uncommitted: Vec<(u64, u64)> = Vec::new();
        for (offset, len, record) in decoded.records {
            match record {
                Record::Checkpoint { next_seq } => {
                    journal.next_seq = journal.next_seq.max(next_seq);
                    uncommitted.clear();
                }
                Record::Accepted { seq, envelope } => {
                    journal.next_seq = journal.next_seq.max(seq + 1);
                    journal.pending.insert(seq, Span { offset, len });
                    envelopes.insert(seq, envelope);
                    uncommitted.push((seq, offset));
                }
                Record::Done { seq } => {
                    journal.pending.remove(&seq);
                    envelopes.remove(&seq);
                }
                Record::InboxOffset { file, offset } => {
                    journal.inbox_offsets.insert(file, offset);
                    uncommitted.clear();
                }
                Record::Started { .. } | Record::Finished { .. } => {}
            }
        }
        // A batch whose commit record never made it to disk was never taken: its messages
        // are still in their inbox file, which is read again from the last committed offset.
        if let Some(&(_, first)) = uncommitted.first() {
            for (seq, _) in &uncommitted {
                journal.pending.remove(seq);
                envelopes.remove(seq);
            }
            // Cut them off the file too, or a later commit record would commit them.
            journal.file.set_len(first)?;
            journal.file.sync_all()?;
            journal.size = first;
            let dropped = format!(
                "dropped {} message(s) of a batch cut before its commit; they are taken again from their inbox file",
                uncommitted.len()
            );
            recovery.cut = Some(match recovery.cut.take() {
                Some(cut) => format!("{cut}; {dropped}"),
                None => dropped,
            });
        }
        for (seq, bytes) in envelopes {
            match Envelope::decode(&bytes) {
                Ok(envelope) => recovery.pending.push(Entry { seq, envelope }),
                Err(e) => {
                    journal.pending.remove(&seq);
                    recovery.undecodable.push(format!("record {seq}: {e}"));
                }
            }
        }
        journal.live_bytes = journal.pending.values().map(|s| s.len as u64).sum();
        recovery.inbox_offsets = journal.inbox_offsets.clone();
        journal.maybe_compact()?;
        Ok((journal, recovery))
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
            let envelope = Envelope {
                id: format!("{from_node}-{accepted}-{seq}"),
                from_node: from_node.to_string(),
                accepted,
                message,
            };
            let offset = self.size + buf.len() as u64;
            encode(
                &Record::Accepted {
                    seq,
                    envelope: envelope.encode(),
                },
                &mut buf,
            );
            spans.push(Span {
                offset,
                len: (self.size + buf.len() as u64 - offset) as u32,
            });
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
        for (entry, span) in entries.iter().zip(spans) {
            self.pending.insert(entry.seq, span);
            self.live_bytes += span.len as u64;
        }
        if let Some((file, offset)) = inbox {
            self.inbox_offsets.insert(file.to_string(), offset);
        }
        Ok(entries)
    }

    /// Records that messages are finished, with one write. Not synced on its own (see the
    /// module docs).
    pub fn mark_all_done(&mut self, seqs: &[u64]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(seqs.len() * (HEADER + 9));
        for &seq in seqs {
            if let Some(span) = self.pending.remove(&seq) {
                self.live_bytes -= span.len as u64;
                encode(&Record::Done { seq }, &mut buf);
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.write(&buf)?;
        self.unsynced = true;
        self.maybe_compact()
    }

    /// How far each partly taken inbox file has been read.
    pub fn inbox_offsets(&self) -> &BTreeMap<String, u64> {
        &self.inbox_offsets
    }

    /// Reads a pending message back; `None` if it is finished (or never was).
    pub fn read(&self, seq: u64) -> io::Result<Option<Entry>> {
        let Some(span) = self.pending.get(&seq) else {
            return Ok(None);
        };
        let mut buf = vec![0; span.len as usize];
        self.file.read_exact_at(&mut buf, span.offset)?;
        match decode(&buf).records.pop() {
            Some((_, _, Record::Accepted { seq, envelope })) => Envelope::decode(&envelope)
                .map(|envelope| Some(Entry { seq, envelope }))
                .map_err(io::Error::other),
            _ => Err(io::Error::other(format!(
                "journal record {seq} is unreadable"
            ))),
        }
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
        self.file.sync_data()?;
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

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes written to the journal since it was opened (compaction included): SD card wear.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
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
        let mut buf = Vec::with_capacity(self.live_bytes as usize + 64);
        for (file, offset) in &self.inbox_offsets {
            encode(
                &Record::InboxOffset {
                    file: file.clone(),
                    offset: *offset,
                },
                &mut buf,
            );
        }
        let mut pending = BTreeMap::new();
        for (&seq, span) in &self.pending {
            let start = buf.len();
            buf.resize(start + span.len as usize, 0);
            self.file.read_exact_at(&mut buf[start..], span.offset)?;
            pending.insert(
                seq,
                Span {
                    offset: start as u64,
                    len: span.len,
                },
            );
        }
        // Last, as the commit record of everything before it.
        encode(
            &Record::Checkpoint {
                next_seq: self.next_seq,
            },
            &mut buf,
        );
        let path = Journal::path(&self.dir);
        crate::files::write_atomically(&path, &buf)?;
        self.file = OpenOptions::new().read(true).append(true).open(&path)?;
        self.size = buf.len() as u64;
        self.bytes_written += buf.len() as u64;
        self.pending = pending;
        self.unsynced = false;
        log::debug!(
            "journal compacted to {} bytes ({} pending messages)",
            self.size,
            self.pending.len()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Kind;

    fn msg(i: usize) -> Message {
        Message {
            to_node: "ship1".into(),
            data: vec![format!("message {i}")],
            kind: Kind::EventAck,
            method: "TextLogging".into(),
            timeout: None,
            retries: None,
            ttl: None,
        }
    }

    fn data(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.envelope.message.data[0].clone())
            .collect()
    }

    #[test]
    fn records_round_trip() {
        let records = vec![
            Record::Checkpoint { next_seq: 7 },
            Record::Accepted {
                seq: 7,
                envelope: b"{}".to_vec(),
            },
            Record::Done { seq: 7 },
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
        assert!(r.pending.is_empty());
        let entries = j
            .append("central", (0..5).map(msg).collect(), None)
            .unwrap();
        j.mark_all_done(&[entries[1].seq]).unwrap();
        j.mark_all_done(&[entries[3].seq]).unwrap();
        drop(j);
        let (j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(data(&r.pending), ["message 0", "message 2", "message 4"]);
        assert_eq!(r.pending[0].envelope, entries[0].envelope);
        assert_eq!(j.pending_count(), 3);
        assert_eq!(j.read(entries[2].seq).unwrap().unwrap(), entries[2]);
        assert_eq!(j.read(entries[1].seq).unwrap(), None, "finished");
        assert!(r.cut.is_none());
    }

    #[test]
    fn ids_stay_unique_across_compaction_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let first = j.append("central", vec![msg(0)], None).unwrap();
        j.mark_all_done(&[first[0].seq]).unwrap();
        j.compact().unwrap();
        drop(j);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert!(r.pending.is_empty());
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
        drop(j);
        let path = Journal::path(dir.path());
        let len = fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap(); // power lost mid-write of the last batch
        drop(f);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(data(&r.pending), ["message 0", "message 1"]);
        let cut = r.cut.expect("the cut is reported");
        assert!(
            cut.contains("torn record") && cut.contains("dropped 1 message(s)"),
            "{cut}"
        );
        // The journal is usable again after the cut.
        j.append("central", vec![msg(9)], None).unwrap();
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(data(&r.pending), ["message 0", "message 1", "message 9"]);
        assert!(r.cut.is_none());
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
        assert_eq!(data(&r.pending), ["message 0"]);
        assert_eq!(r.inbox_offsets.get("inmsg.taking-1"), Some(&10));
        assert!(r.cut.unwrap().contains("dropped 2 message(s)"));
        // Batches without an inbox file commit with a checkpoint.
        let e = j.append("central", vec![msg(3)], None).unwrap();
        assert!(e[0].seq > 3, "sequence numbers are never reused");
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(data(&r.pending), ["message 0", "message 3"]);
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
        bytes[accepted[1] + 20] ^= 0x40; // inside the second message's body
        fs::write(&path, &bytes).unwrap();
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(data(&r.pending), ["message 0"]);
        assert!(r.cut.unwrap().contains("checksum mismatch"));
    }

    #[test]
    fn compaction_keeps_the_journal_small() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        for round in 0..200 {
            let entries = j
                .append("central", (0..50).map(msg).collect(), None)
                .unwrap();
            for e in &entries[..49] {
                j.mark_all_done(&[e.seq]).unwrap();
            }
            assert!(
                j.size() < 2 * COMPACT_MIN_BYTES,
                "round {round}: {} bytes",
                j.size()
            );
        }
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.pending.len(), 200);
        assert!(r.pending.windows(2).all(|w| w[0].seq < w[1].seq));
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
