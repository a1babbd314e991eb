//! The journal: every accepted message is on disk, fsync'd, before it leaves `inmsg.txt`, and
//! stays there until it is finished (ACKed, published, or given up into
//! `failed-messages.txt`). After a crash or restart, [`Journal::open`] finds every
//! unfinished message again, in the order it was accepted.
//!
//! # File format
//!
//! One append-only file, `journal/journal.log`, of records in the format of
//! [`crate::records`]: `Accepted` (seq, lane, envelope), `DoneThrough` (seq, lane),
//! `InboxOffset`, `Checkpoint`.
//!
//! A *lane* is a destination subject (`ship1.CommandACK.CLICommand`): its publisher sends
//! its messages in order and finishes them in order, so "finished" is one number per lane,
//! written as `DoneThrough`: every message of the lane up to that sequence number is done.
//!
//! Every batch of `Accepted` records ends with a commit record: the `InboxOffset` of the
//! inbox file it came from, or a `Checkpoint`. `Accepted` records after the last commit
//! record belong to a batch whose write was cut; they are dropped on open, and the inbox
//! reads them again from its file. A torn or corrupt tail is cut off on open, and
//! [`Recovery::cut`] says what was cut.
//!
//! # When the disk fails or fills
//!
//! A failed write (a full disk) changes nothing: it is cut back off the file and memory is
//! untouched, so the caller can try again later (intake waits; a finish is written with
//! the lane's next one, or by [`Journal::maintain`]). A failed fsync, or a compaction that
//! failed from its rename on, makes the journal unusable ([`Journal::unusable`]): the
//! agent stops at once and recovers from the disk on its restart (see
//! [`crate::records::RecordFile`] for why nothing is retried). Opening makes what it read
//! durable before anything acts on it. `storage::crash` runs thousands of seeded schedules
//! of all this, power cuts included, against a simulated disk.
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
//! A batch (one read of `inmsg.txt`) is one `write` and one `fdatasync`, and the fsync runs
//! without the journal's lock: [`Journal::write`] under the lock, [`Written::sync`]
//! without it, [`Journal::commit`] under it again. Meanwhile publishers take and finish,
//! and other appenders write; one fsync covers every batch written before it, and batches
//! count in the order they were written, whichever fsync covered them. `DoneThrough`
//! records are not synced on their own: losing one in a crash only means those messages
//! are sent again (the receiver recognises their ids); the supervisor syncs them within half
//! a second (again without the lock) and at shutdown. Once finished records make up most of
//! the file, it is compacted, on that same tick and never on a message's path: the live
//! records are copied to a new file that atomically replaces the old one, so the journal
//! stays small whatever the uptime.

use crate::message::{Envelope, Message};
use crate::records::{
    cut_message, decode_one, encode, Record, RecordFile, Records, Step, SyncTicket, CHUNK, HEADER,
};
use crate::storage::{Disk, Storage, StoredFile};
use crate::subject::Subject;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Compaction is considered once the file is at least this big...
const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// ... and the live records are less than 1/COMPACT_RATIO of it.
const COMPACT_RATIO: u64 = 4;
/// How many waiting messages of a lane are located in memory (24 bytes each); the rest are
/// found by reading the file on when the window runs low.
pub const WINDOW: usize = 2 * crate::message::MAX_BATCH;
/// After a compaction failed (a full disk), how long before the next try.
const COMPACT_RETRY: Duration = Duration::from_secs(60);

/// A journaled message: its place in the journal and the message itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub envelope: Envelope,
}

/// A batch written by [`Journal::write`], waiting for an fsync to cover it.
struct Batch {
    /// Where its records begin and end.
    start: u64,
    end: u64,
    /// Each message's lane, sequence number and place.
    messages: Vec<(String, u64, Span)>,
    inbox: Option<(String, u64)>,
}

/// A batch of messages written to the journal (with their ids), which counts once
/// [`Written::sync`] and [`Journal::commit`] have made it durable.
pub struct Written {
    pub entries: Vec<Entry>,
    ticket: Option<SyncTicket>,
}

impl Written {
    /// The fsync that makes the batch durable: run it without holding the journal's lock,
    /// so that publishers and other appenders go on meanwhile.
    pub fn sync(&self) -> io::Result<Duration> {
        match &self.ticket {
            Some(ticket) => ticket.sync(),
            None => Ok(Duration::ZERO),
        }
    }
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
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    file: RecordFile,
    next_seq: u64,
    lanes: HashMap<String, Lane>,
    pending: usize,
    live_bytes: u64,
    inbox_offsets: BTreeMap<String, u64>,
    /// Batches written and not yet known to be durable, oldest first: indexed (handed to
    /// publishers) only once an fsync covers them, and in the order they were written.
    unsynced_batches: VecDeque<Batch>,
    /// No compaction before then (one failed).
    compact_not_before: Option<Instant>,
    /// Lanes with finished messages whose `DoneThrough` could not be written (a full disk):
    /// [`Journal::maintain`] tries again.
    unsettled: HashSet<String>,
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
        Journal::open_on(Arc::new(Disk), dir)
    }

    /// As [`Journal::open`], on `storage` (the simulated disk of the crash tests).
    pub fn open_on(storage: Arc<dyn Storage>, dir: &Path) -> io::Result<(Journal, Recovery)> {
        let path = Journal::path(dir);
        let mut file = RecordFile::open(&*storage, &path)?;
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
        let reader = file.handle().clone();
        let mut records = Records::new(&*reader, 0, len);
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
            storage,
            dir: dir.to_path_buf(),
            file,
            next_seq,
            lanes: HashMap::new(),
            pending: 0,
            live_bytes: 0,
            inbox_offsets,
            unsynced_batches: VecDeque::new(),
            compact_not_before: None,
            unsettled: HashSet::new(),
            bytes_written: 0,
            fsync_seconds: Vec::new(),
            unreadable: Vec::new(),
        };
        for (lane, through) in done {
            let l = journal.lanes.entry(lane).or_default();
            (l.done_through, l.handed_through) = (through, through);
        }
        let mut legacy = !legacy_done.is_empty();
        for r in Records::new(&*reader, 0, size) {
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
            // A full disk is no reason not to start: compaction is tried again later.
            if let Err(e) = journal.maintain() {
                if journal.unusable().is_some() {
                    return Err(e);
                }
                log::warn!("journal: cannot compact now: {e}");
            }
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
    /// ids and sequence numbers, in order. (One step, for a single thread; the agent writes,
    /// syncs without the lock, then commits.)
    pub fn append(
        &mut self,
        from_node: &str,
        messages: Vec<Message>,
        inbox: Option<(&str, u64)>,
    ) -> io::Result<Vec<Entry>> {
        let written = self.write(from_node, messages, inbox)?;
        let synced = written.sync();
        self.commit(&written, synced)?;
        Ok(written.entries)
    }

    /// Writes a batch of messages from `from_node` (with one `write`), together with how
    /// far the inbox file they came from has now been read, and gives them their ids and
    /// sequence numbers. Nothing of it counts until [`Written::sync`], then
    /// [`Journal::commit`].
    pub fn write(
        &mut self,
        from_node: &str,
        messages: Vec<Message>,
        inbox: Option<(&str, u64)>,
    ) -> io::Result<Written> {
        let accepted = crate::files::unix_millis();
        let start = self.file.end();
        let mut buf = Vec::with_capacity(messages.len() * 256);
        let mut entries = Vec::with_capacity(messages.len());
        let mut placed = Vec::with_capacity(messages.len());
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
            let offset = start + buf.len() as u64;
            encode(
                &Record::Accepted {
                    seq,
                    lane: lane.clone(),
                    envelope: envelope.encode(),
                },
                &mut buf,
            );
            let len = (start + buf.len() as u64 - offset) as u32;
            placed.push((lane, seq, Span { offset, len }));
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
            return Ok(Written {
                entries,
                ticket: None,
            });
        }
        self.append_bytes(&buf)?;
        self.next_seq += entries.len() as u64;
        self.unsynced_batches.push_back(Batch {
            start,
            end: self.file.end(),
            messages: placed,
            inbox: inbox.map(|(file, offset)| (file.to_string(), offset)),
        });
        Ok(Written {
            entries,
            ticket: Some(self.file.ticket()?),
        })
    }

    /// How the fsync of a written batch went. On success, every batch it covers (its own,
    /// and any written before it) counts: its messages wait for their publishers, in the
    /// order they were written. A failed fsync makes the journal unusable (see
    /// [`Journal::unusable`]).
    pub fn commit(&mut self, written: &Written, synced: io::Result<Duration>) -> io::Result<()> {
        let Some(ticket) = &written.ticket else {
            return Ok(());
        };
        self.synced(ticket, synced)
    }

    /// A ticket's fsync is done: note how long it took, and index the batches it covers.
    fn synced(&mut self, ticket: &SyncTicket, synced: io::Result<Duration>) -> io::Result<()> {
        let took = self.file.synced(ticket, synced)?;
        if self.fsync_seconds.len() < 10_000 {
            self.fsync_seconds.push(took.as_secs_f64());
        }
        while self
            .unsynced_batches
            .front()
            .is_some_and(|b| b.end <= ticket.through())
        {
            let batch = self.unsynced_batches.pop_front().expect("checked");
            for (lane, seq, span) in batch.messages {
                self.index(lane, seq, span);
            }
            if let Some((file, offset)) = batch.inbox {
                self.inbox_offsets.insert(file, offset);
            }
        }
        Ok(())
    }

    /// Hands up to `max` of `lane`'s waiting messages to its publisher, oldest first, read
    /// back from the file. They count as unfinished until [`Journal::finish`].
    pub fn take(&mut self, lane: &Subject, max: usize) -> io::Result<Vec<Entry>> {
        let key = lane.to_string();
        let Some(l) = self.lanes.get_mut(&key) else {
            return Ok(Vec::new());
        };
        if l.waiting.window.len() < max && l.waiting.spill.is_some() {
            let end = self
                .unsynced_batches
                .front()
                .map_or(self.file.end(), |b| b.start);
            refill(&**self.file.handle(), end, &key, l)?;
        }
        let mut entries = Vec::new();
        let mut skipped = false;
        while entries.len() < max {
            let Some(&(seq, span)) = l.waiting.window.front() else {
                break;
            };
            let mut bytes = vec![0; span.len as usize];
            self.file.handle().read_exact_at(&mut bytes, span.offset)?;
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
    /// precedes: the record never covers a message still in flight. Memory follows the
    /// write: if it fails (a full disk), the messages stay finished-but-unrecorded, and the
    /// lane's next finish writes a record covering them too.
    fn settle(&mut self, key: &str) -> io::Result<()> {
        let Some(l) = self.lanes.get(key) else {
            return Ok(());
        };
        let (mut count, mut bytes, mut through) = (0, 0, None);
        for &(seq, len, finished) in &l.handed {
            if !finished {
                break;
            }
            count += 1;
            bytes += len as u64;
            through = Some(seq);
        }
        let Some(seq) = through else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(HEADER + 9 + key.len());
        encode(
            &Record::DoneThrough {
                seq,
                lane: key.to_string(),
            },
            &mut buf,
        );
        if let Err(e) = self.append_bytes(&buf) {
            self.unsettled.insert(key.to_string());
            return Err(e);
        }
        self.unsettled.remove(key);
        let l = self.lanes.get_mut(key).expect("looked up above");
        l.handed.drain(..count);
        l.pending -= count;
        l.live_bytes -= bytes;
        l.done_through = seq;
        if l.handed.is_empty() && l.handed.capacity() > 64 {
            l.handed.shrink_to_fit();
        }
        self.pending -= count;
        self.live_bytes -= bytes;
        Ok(())
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

    /// Makes every record written so far durable (holding the lock throughout: at
    /// shutdown, and in tests).
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(ticket) = self.sync_ticket()? {
            let synced = ticket.sync();
            self.synced(&ticket, synced)?;
        }
        Ok(())
    }

    /// An fsync of every record written so far, if any is not durable yet, to run without
    /// the journal's lock; then [`Journal::synced_ticket`].
    pub fn sync_ticket(&self) -> io::Result<Option<SyncTicket>> {
        if self.file.is_synced() {
            return Ok(None);
        }
        self.file.ticket().map(Some)
    }

    /// How the fsync of a [`Journal::sync_ticket`] went.
    pub fn synced_ticket(
        &mut self,
        ticket: &SyncTicket,
        synced: io::Result<Duration>,
    ) -> io::Result<()> {
        self.synced(ticket, synced)
    }

    /// Whether every finish has been written (none held back by a full disk).
    #[cfg(test)]
    pub fn settled(&self) -> bool {
        self.unsettled.is_empty()
    }

    /// Why the journal can no longer be used, if it cannot: a failed fsync, compaction
    /// rename or cut-back left the file and memory out of step. The agent stops (non-zero:
    /// systemd starts it again, and recovery reads what the disk holds).
    pub fn unusable(&self) -> Option<&str> {
        self.file.unusable()
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
        self.file.end()
    }

    /// Bytes written to the journal since it was opened (compaction included): SD card wear.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    fn append_bytes(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.append(buf)?;
        self.bytes_written += buf.len() as u64;
        Ok(())
    }

    /// Writes the finishes a full disk held back, and compacts the journal if finished
    /// records make up most of it: called now and then (the supervisor's tick), never on a
    /// message's path. Not while a batch waits for its
    /// fsync (its records are not indexed yet), and not for a while after a compaction
    /// failed (a full disk): a failure would otherwise copy the whole live set again at
    /// every tick.
    pub fn maintain(&mut self) -> io::Result<()> {
        for key in self.unsettled.clone() {
            if let Err(e) = self.settle(&key) {
                if self.file.unusable().is_some() {
                    return Err(e);
                }
                break; // still full: intake says so (`steward_disk_full`)
            }
        }
        let waiting = self.compact_not_before.is_some_and(|t| Instant::now() < t);
        if !self.compaction_due() || waiting || !self.unsynced_batches.is_empty() {
            return Ok(());
        }
        match self.compact() {
            Ok(()) => {
                self.compact_not_before = None;
                Ok(())
            }
            Err(e) => {
                self.compact_not_before = Some(Instant::now() + COMPACT_RETRY);
                Err(e)
            }
        }
    }

    /// Whether finished records make up most of the file.
    fn compaction_due(&self) -> bool {
        let size = self.file.end();
        size >= COMPACT_MIN_BYTES && self.live_bytes * COMPACT_RATIO < size
    }

    /// Whether [`Journal::sync_ticket`] or [`Journal::maintain`] has work: records not
    /// durable yet, finishes a full disk held back, or a compaction due (or waiting to be
    /// tried again). Cheap: the supervisor ticks only while this holds.
    pub fn needs_upkeep(&self) -> bool {
        !self.file.is_synced() || !self.unsettled.is_empty() || self.compaction_due()
    }

    /// Rewrites the journal with only its live records, atomically replacing the old file.
    pub fn compact(&mut self) -> io::Result<()> {
        self.compact_with(&HashSet::new())
    }

    /// Compaction, also taking journals written before lanes (`legacy_done`: their
    /// finished messages) into today's form. Streams from the old file to the new one, and
    /// finds each lane's waiting messages anew on the way.
    ///
    /// Until the rename, a failure (a full disk) leaves everything as it was. From the
    /// rename on, it leaves the journal unusable: the name may or may not point at the new
    /// file, and writing on into the old one would write into a file no one reads again.
    fn compact_with(&mut self, legacy_done: &HashSet<u64>) -> io::Result<()> {
        if let Some(why) = self.file.unusable() {
            return Err(io::Error::other(format!("unusable since: {why}")));
        }
        let path = Journal::path(&self.dir);
        let tmp = path.with_extension("compacting");
        let (written, mut rebuilt) = match self.copy_live(&tmp, legacy_done) {
            Ok(copied) => copied,
            Err(e) => {
                let _ = self.storage.remove(&tmp);
                return Err(e);
            }
        };
        let replaced = self
            .storage
            .rename(&tmp, &path)
            .and_then(|()| self.storage.sync_dir(&self.dir))
            .and_then(|()| RecordFile::rewritten(&*self.storage, &path, written));
        self.file = match replaced {
            Ok(file) => file,
            Err(e) => {
                self.file.fail(format!(
                    "journal: compaction could not replace the file: {e}"
                ));
                return Err(e);
            }
        };
        // Only now, with the new file in place, do the new places count.
        self.live_bytes = 0;
        for (name, l) in self.lanes.iter_mut() {
            (l.waiting, l.live_bytes) = rebuilt.remove(name).unwrap_or_default();
            self.live_bytes += l.live_bytes;
        }
        self.bytes_written += written;
        log::debug!(
            "journal compacted to {written} bytes ({} pending messages)",
            self.pending
        );
        Ok(())
    }

    /// Writes the live records to `tmp` (synced); returns its size, and each lane's waiting
    /// messages and live bytes by their places in it.
    fn copy_live(&self, tmp: &Path, legacy_done: &HashSet<u64>) -> io::Result<(u64, Relocated)> {
        let mut out = Copy::new(self.storage.create(tmp)?);
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
        let reader = self.file.handle().clone();
        let mut records = Records::new(&*reader, 0, self.file.end());
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
        out.finish()?;
        Ok((written, rebuilt))
    }
}

/// A compaction's new file, written a chunk at a time and synced at the end.
struct Copy {
    file: crate::storage::Handle,
    buf: Vec<u8>,
    at: u64,
}

impl Copy {
    fn new(file: crate::storage::Handle) -> Copy {
        Copy {
            file,
            buf: Vec::with_capacity(CHUNK),
            at: 0,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buf, self.at)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_data()
    }
}

/// Reads `lane`'s waiting messages on from where the window left off, until the window is
/// full (the rest stays spilled, from the next one) or the file ends.
fn refill(file: &dyn StoredFile, end: u64, key: &str, lane: &mut Lane) -> io::Result<()> {
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
    use crate::records::{decode, PREALLOCATE};
    use std::fs::{self, OpenOptions};

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
            j.maintain().unwrap(); // the supervisor's tick
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
    fn upkeep_is_asked_for_only_while_some_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        assert!(!j.needs_upkeep(), "a journal just opened is durable");
        let big = |i| Message {
            data: vec!["x".repeat(4000), format!("{i}")],
            ..msg(i)
        };
        j.append("central", (0..400).map(big).collect(), None)
            .unwrap();
        assert!(!j.needs_upkeep(), "appended batches are synced");
        let taken = take_all(&mut j, "ship1");
        j.finish(&lane("ship1"), &seqs(&taken[..1])).unwrap();
        assert!(j.needs_upkeep(), "a finish is not durable yet");
        j.sync().unwrap();
        assert!(!j.needs_upkeep());
        // Finished records are now most of the file: a compaction is due.
        j.finish(&lane("ship1"), &seqs(&taken[1..])).unwrap();
        j.sync().unwrap();
        assert!(j.needs_upkeep(), "a compaction is due");
        j.maintain().unwrap();
        assert!(!j.needs_upkeep(), "compacted");
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
