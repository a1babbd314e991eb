//! The journal: every accepted message is on disk, fsync'd, before it leaves `inmsg.txt`, and
//! stays there until it is finished (ACKed, published, or given up into
//! `failed-messages.txt`). After a crash or restart, [`Journal::open`] finds every
//! unfinished message again, in the order it was accepted.
//!
//! # File format
//!
//! One append-only file, `journal/journal.log`, of records in the format of
//! [`crate::journal::record`]: `Accepted` (seq, lane, envelope), `DoneThrough` (seq, lane),
//! `InboxOffset`, `Checkpoint`.
//!
//! A *lane* is a destination subject (`ship1.CommandACK.CLICommand`): its publisher sends
//! its messages in order and finishes them in order, so "finished" is one number per lane,
//! written as `DoneThrough`: every message of the lane up to that sequence number is done.
//!
//! Every batch of `Accepted` records ends with a commit record: the `InboxOffset` of the
//! inbox file it came from, or a `Checkpoint`. `Accepted` records after the last commit
//! record belong to a batch whose write was cut; they are dropped on open, and the inbox
//! reads them again from its file. (The startup folder's batch has an `InboxOffset` too,
//! named `startup`: the number of the start that sent it, see [`crate::startup`].) A torn or corrupt tail is cut off on open, and
//! [`Recovery::cut`] says what was cut.
//!
//! # Damage
//!
//! A power cut tears only what was never synced, but not only at the tail: writeback may
//! put a later page on disk and not an earlier one. So damage followed by whole records is
//! no proof of anything by itself, and a journal used to be cut at its first damage, every
//! record after it lost with it (a bad sector in the middle of a week's queue lost the
//! week). Every commit record is therefore a `Checkpoint` saying how far the file was
//! durable when it was written (after the batch's `InboxOffset`, if it came from an inbox
//! file), and the supervisor's tick writes one more after an fsync that nothing written
//! since says is done. At open, damage (a corrupt record, or zeros where records go on
//! after them) that a later checkpoint says was durable is the disk's, not a torn write's:
//! it is passed over, to the next whole record, said ([`Recovery::passed_over`]), and left
//! behind by a compaction once the inbox has put aside the taken files whose offset it may
//! have held ([`Journal::inbox_offset_known`], [`Journal::inbox_checked`]); what it held is
//! lost, and nothing else. Until then, readers pass over that damage and no other: a page
//! that read at the open and fails later is an error, not a loss unsaid. Damage no
//! checkpoint vouches for is cut as a torn tail is. Journals from before session 34 have
//! checkpoints that say nothing, and are cut at their first damage as before; the versions
//! before read today's checkpoints as theirs.
//!
//! # When the disk fails or fills
//!
//! A failed write (a full disk) is cut back off the file, and what memory counts (messages
//! accepted, lanes done through) is unchanged, so the caller can try again later (intake
//! waits; a finish is written with the lane's next one, or by [`Journal::maintain`]). A
//! failed fsync, or a compaction that failed from its rename on, makes the journal
//! unusable ([`Journal::unusable`]): the agent stops at once and recovers from the disk on
//! its restart (see [`record::RecordFile`] for why nothing is retried). Opening makes the
//! file durable, drops it from the page cache and reads it from the disk before anything
//! acts on it. `storage::crash` runs thousands of seeded schedules
//! of all this, power cuts included, against a simulated disk.
//!
//! # Memory: flat, whatever the backlog
//!
//! Messages stay on disk until their turn. In memory, each lane keeps a window of where its
//! next [`WINDOW`] waiting messages are; past that, only the offset where the rest begin
//! (`spill`), from which the window is refilled by reading the file on. So a node away for
//! a week, with a million messages queued for it, costs the same memory as one with ten.
//! Opening reads the file in chunks, twice (first what is finished, then what is not),
//! never all of it at once. Messages journaled by this run also wait in memory as they
//! were written, up to [`HOT_BYTES`] in all ([`LANE_HOT_BYTES`] a lane), so a publisher
//! that keeps up with a steady stream is handed them without reading them back and
//! decoding them again (2.95 → 0.48 µs a message taken, a probe on 100-byte events).
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
use crate::storage::{Disk, Storage, StoredFile};
use crate::subject::Subject;
use record::{
    cut_message, decode_one, encode, encode_accepted, Record, RecordFile, Records, Step,
    SyncTicket, CHUNK, HEADER,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod compact;
pub mod record;
mod recover;

/// Compaction is considered once the file is at least this big...
const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// ... and the live records are less than 1/COMPACT_RATIO of it.
const COMPACT_RATIO: u64 = 4;
/// How many waiting messages of a lane are located in memory (24 bytes each); the rest are
/// found by reading the file on when the window runs low.
pub const WINDOW: usize = 2 * crate::message::MAX_BATCH;
/// How much memory the messages this run journaled may take while they wait, kept as
/// written so that their publisher is handed them without reading them back from the file
/// and decoding them again (see [`Lane::hot`]); past it, waiting messages are read back
/// as after a restart. About a thousand events of a hundred bytes.
const HOT_BYTES: usize = 1 << 20;
/// How much of [`HOT_BYTES`] one lane may take: a lane that does not move (its node is
/// away) holds its kept messages until it does, and one or two of them cannot take it all
/// from the lanes whose nodes answer. About a first batch of events ([`FIRST_BATCH`]);
/// the rest of a bigger one is read back.
///
/// [`FIRST_BATCH`]: crate::message::FIRST_BATCH
const LANE_HOT_BYTES: usize = HOT_BYTES / 4;
/// After a compaction failed (a full disk), how long before the next try.
const COMPACT_RETRY: Duration = Duration::from_secs(60);

/// A journaled message: its place in the journal and the message itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// Shared, not copied: the journal keeps what this run wrote (see [`HOT_BYTES`]) and a
    /// publisher holds what it took, each an `Entry`, and cloning one is then a count.
    pub envelope: Arc<Envelope>,
    /// The envelope as the journal holds it, its wire form ([`Envelope::encode`]): sent
    /// and logged as it is, not encoded again for every use.
    pub encoded: Arc<[u8]>,
}

#[cfg(test)]
impl Entry {
    pub fn new(seq: u64, envelope: Envelope) -> Entry {
        let encoded = envelope.encode().into();
        Entry {
            seq,
            envelope: Arc::new(envelope),
            encoded,
        }
    }
}

/// A batch written by [`Journal::write`], waiting for an fsync to cover it.
struct Batch {
    /// Where its records begin and end.
    start: u64,
    end: u64,
    /// Each message's lane, sequence number and place.
    messages: Vec<(String, u64, Span)>,
    /// Those of its messages kept as written (within [`HOT_BYTES`]), in order.
    hot: Vec<Entry>,
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
    /// Damage before the tail (a bad sector, a lost page) known to have been synced when it
    /// was written, passed over, the records after it kept: each stretch said. What the
    /// damage held is lost.
    pub passed_over: Vec<String>,
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
    /// Waiting messages journaled by this run, as they were written, oldest first: a
    /// message in the window that is here is handed out from here. The hot path of a
    /// steady stream: its publisher keeps up, and what it takes was written a moment ago.
    hot: VecDeque<Entry>,
    /// What `hot` takes, by [`hot_cost`]: at most [`LANE_HOT_BYTES`].
    hot_bytes: usize,
}

impl Lane {
    /// Whether `seq`, handed out, is finished, and its `DoneThrough` not yet written.
    fn finished_in_memory(&self, seq: u64) -> bool {
        self.handed.iter().any(|&(s, _, done)| s == seq && done)
    }

    /// Keeps `entry` as written, if the lane has room for it; if not, gives it back.
    fn keep(&mut self, entry: Entry) -> Option<Entry> {
        let cost = hot_cost(&entry);
        if self.hot_bytes + cost > LANE_HOT_BYTES {
            return Some(entry);
        }
        self.hot_bytes += cost;
        self.hot.push_back(entry);
        None
    }

    /// The message `seq` as written, if it is the next one kept.
    fn take_kept(&mut self, seq: u64) -> Option<Entry> {
        if self.hot.front()?.seq != seq {
            return None;
        }
        let entry = self.hot.pop_front()?;
        self.hot_bytes -= hot_cost(&entry);
        Some(entry)
    }

    /// Lets go of the messages kept as written that come before `seq` (handed out after
    /// being read back from the file); returns what they took.
    fn let_go_of_hot_before(&mut self, seq: u64) -> usize {
        let mut freed = 0;
        while self.hot.front().is_some_and(|e| e.seq < seq) {
            freed += hot_cost(&self.hot.pop_front().expect("looked at"));
        }
        self.hot_bytes -= freed;
        freed
    }
}

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
    /// What the lanes' [`Lane::hot`] entries take, by [`hot_cost`].
    hot_bytes: usize,
    /// How far the newest `Checkpoint` says the file was durable (see "Damage" in the
    /// module docs); a checkpoint written only to say so counts itself in.
    claimed: u64,
    /// Where the records end that a later checkpoint is to say are durable: the end of the
    /// newest batch (finishes need none: one lost costs a message sent again, which its
    /// receiver recognises).
    to_claim: u64,
    /// Damage passed over at open (where it begins and the next record does): readers pass
    /// over it too, and only it, until a compaction has left it behind.
    damaged: Vec<(u64, u64)>,
    /// If damage was passed over at open: where the last of it ended, and where each inbox
    /// file's last offset record was (see [`Journal::inbox_offset_known`]).
    inbox_damage: Option<(u64, HashMap<String, u64>)>,
}

/// What a message kept as written takes in memory, about: its wire form, its decoded form
/// beside it (the envelope in its shared block, a `String` for each piece of data, however
/// short), the entry itself.
fn hot_cost(entry: &Entry) -> usize {
    2 * entry.encoded.len()
        + std::mem::size_of::<Envelope>()
        + 2 * std::mem::size_of::<usize>()
        + entry.envelope.message.data.len() * std::mem::size_of::<String>()
        + std::mem::size_of::<Entry>()
}

impl Journal {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("journal.log")
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
        self.write_listed(from_node, messages, inbox, |_, _| Ok(()))
    }

    /// As [`Journal::write`], and hands the batch's entries (ids and sequence numbers) to
    /// `list` before any of it is written, with how much of the disk's free space writing
    /// it takes ([`RecordFile::disk_taken_by`]): a caller that must know durably which
    /// messages it journaled (the startup folder's `startup-sent.json`) writes that down
    /// first, so that no crash can leave them journaled and unlisted; intake checks the
    /// disk's floor. If `list` fails, nothing of the batch is written.
    pub fn write_listed(
        &mut self,
        from_node: &str,
        messages: Vec<Message>,
        inbox: Option<(&str, u64)>,
        list: impl FnOnce(&[Entry], u64) -> io::Result<()>,
    ) -> io::Result<Written> {
        // Noting whether the clock was set since the last batch (see `crate::clock`).
        let accepted = crate::clock::stamp(self.next_seq);
        let start = self.file.end();
        let mut buf = Vec::with_capacity(messages.len() * 256);
        let mut entries = Vec::with_capacity(messages.len());
        let mut placed = Vec::with_capacity(messages.len());
        let mut random = crate::keys::random_hex128s(messages.len()).into_iter();
        // The lane's name, made once for each run of messages on one lane.
        let mut lane = String::new();
        let mut lane_of: Option<Subject> = None;
        for message in messages {
            let seq = self.next_seq + entries.len() as u64;
            if lane_of.as_ref().is_none_or(|l| !l.is_of(&message)) {
                let subject = message.subject();
                lane = subject.to_string();
                lane_of = Some(subject);
            }
            let envelope = Envelope {
                // Readable, and unguessable: no one can name a message before it exists.
                id: format!(
                    "{from_node}-{accepted}-{seq}-{}",
                    random.next().expect("one for each message")
                ),
                from_node: from_node.to_string(),
                accepted,
                reply_ticket: None,
                grant: None,
                message,
            };
            let offset = start + buf.len() as u64;
            let at = encode_accepted(seq, &lane, &mut buf, |out| envelope.encode_into(out));
            // Never sent, so never finished, and past a record's limit read back as damage
            // (the journal cut there at the next start, with all after it): intake and the
            // node's own messages keep within it, and this is where that is sure.
            if at.len() > crate::message::MAX_WIRE_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a message for {lane} of {} bytes, more than one message may be ({}): nothing of this batch was journaled",
                        at.len(),
                        crate::message::MAX_WIRE_BYTES
                    ),
                ));
            }
            let encoded = buf[at].into();
            let len = (start + buf.len() as u64 - offset) as u32;
            placed.push((lane.clone(), seq, Span { offset, len }));
            entries.push(Entry {
                seq,
                envelope: Arc::new(envelope),
                encoded,
            });
        }
        // The commit record: a batch counts only once this is on disk after it. How far
        // an inbox file was read, and a checkpoint saying how far the file is durable.
        if let Some((file, offset)) = inbox {
            let file = file.to_string();
            encode(&Record::InboxOffset { file, offset }, &mut buf);
        }
        if buf.is_empty() {
            return Ok(Written {
                entries,
                ticket: None,
            });
        }
        let claim = self.file.synced_through();
        let next_seq = self.next_seq + entries.len() as u64;
        let synced = Some(claim);
        encode(&Record::Checkpoint { next_seq, synced }, &mut buf);
        list(&entries, self.file.disk_taken_by(buf.len()))?;
        self.append_bytes(&buf)?;
        (self.claimed, self.to_claim) = (claim, self.file.end());
        self.next_seq += entries.len() as u64;
        let mut hot = Vec::new();
        for entry in &entries {
            let cost = hot_cost(entry);
            if self.hot_bytes + cost > HOT_BYTES {
                break;
            }
            self.hot_bytes += cost;
            hot.push(entry.clone());
        }
        self.unsynced_batches.push_back(Batch {
            start,
            end: self.file.end(),
            messages: placed,
            hot,
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
        let Some(took) = self.file.synced(ticket, synced)? else {
            return Ok(()); // its file was compacted away: nothing of it is left to count
        };
        if self.fsync_seconds.len() < 10_000 {
            self.fsync_seconds.push(took.as_secs_f64());
        }
        while self
            .unsynced_batches
            .front()
            .is_some_and(|b| b.end <= ticket.through())
        {
            let batch = self.unsynced_batches.pop_front().expect("checked");
            let mut hot = batch.hot.into_iter().peekable();
            for (lane, seq, span) in batch.messages {
                let entry = hot.next_if(|e| e.seq == seq);
                self.index(lane, seq, span, entry);
            }
            if let Some((file, offset)) = batch.inbox {
                self.inbox_offsets.insert(file, offset);
            }
        }
        Ok(())
    }

    /// Hands up to `max` of `lane`'s waiting messages to its publisher, oldest first: kept
    /// as written ([`Lane::hot`]), or read back from the file. They count as unfinished
    /// until [`Journal::finish`].
    pub fn take(&mut self, lane: &Subject, max: usize) -> io::Result<Vec<Entry>> {
        self.take_within(lane, max, usize::MAX)
    }

    /// As [`Journal::take`], stopping once the records handed out come to `max_bytes` (at
    /// least one is): what a publisher holds in memory follows what a batch carries, not a
    /// count of messages that may each be a file's chunk.
    pub fn take_within(
        &mut self,
        lane: &Subject,
        max: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<Entry>> {
        let key = lane.to_string();
        let Some(l) = self.lanes.get_mut(&key) else {
            return Ok(Vec::new());
        };
        if l.waiting.window.len() < max && l.waiting.spill.is_some() {
            let end = self
                .unsynced_batches
                .front()
                .map_or(self.file.end(), |b| b.start);
            // Damage further on: what was read before it goes out first; the error comes
            // back at the refill that starts there.
            if let Err(e) = refill(&**self.file.handle(), end, &self.damaged, &key, l) {
                if l.waiting.window.is_empty() {
                    return Err(e);
                }
            }
        }
        let mut entries = Vec::new();
        let mut skipped = false;
        let mut bytes = Vec::new();
        // After a read error, one record at a time: those before the one that cannot be
        // read are still handed out.
        let mut one_by_one = false;
        let mut taken_bytes = 0usize;
        while entries.len() < max && taken_bytes < max_bytes {
            let Some(&(seq, first)) = l.waiting.window.front() else {
                break;
            };
            // Kept as written: handed out as it is. (Nothing kept comes before the window's
            // first: let go of, were it so.)
            self.hot_bytes -= l.let_go_of_hot_before(seq);
            if let Some(entry) = l.take_kept(seq) {
                self.hot_bytes -= hot_cost(&entry);
                taken_bytes += first.len as usize;
                l.waiting.window.pop_front();
                // Checked as one read back is (see `Envelope::decode`).
                let read = match entry.envelope.check(entry.encoded.len()) {
                    Ok(()) => Ok(entry),
                    Err(e) => Err(format!("{e}: {}", String::from_utf8_lossy(&entry.encoded))),
                };
                l.handed_through = seq;
                skipped |= hand_out(
                    &mut l.handed,
                    &key,
                    seq,
                    first.len,
                    read,
                    &mut entries,
                    &mut self.unreadable,
                );
                continue;
            }
            // The records next to each other in the file (as a batch writes them) are read
            // at once, up to a chunk, up to the next one kept as written.
            let next_hot = l.hot.front().map(|e| e.seq);
            let mut end = first.offset + u64::from(first.len);
            let more = if one_by_one {
                0
            } else {
                max - entries.len() - 1
            };
            let run = 1 + l
                .waiting
                .window
                .iter()
                .skip(1)
                .take(more)
                .take_while(|(seq, span)| {
                    let next = Some(*seq) != next_hot
                        && span.offset == end
                        && end + u64::from(span.len) - first.offset <= CHUNK as u64
                        && taken_bytes + ((end - first.offset) as usize) < max_bytes;
                    if next {
                        end += u64::from(span.len);
                    }
                    next
                })
                .count();
            bytes.resize((end - first.offset) as usize, 0);
            if let Err(e) = self.file.handle().read_exact_at(&mut bytes, first.offset) {
                if run > 1 {
                    one_by_one = true;
                    continue;
                }
                // What was taken already is handed out: return it, and the error with the
                // next take (the message stays first in the window).
                if entries.is_empty() {
                    return Err(e);
                }
                break;
            }
            taken_bytes += (end - first.offset) as usize;
            for (seq, span) in l.waiting.window.drain(..run) {
                let at = (span.offset - first.offset) as usize;
                let read = match decode_one(&bytes[at..at + span.len as usize]) {
                    Step::Record(_, Record::Accepted { envelope: raw, .. }) => {
                        match Envelope::decode(&raw) {
                            Ok(envelope) => Ok(Entry {
                                seq,
                                envelope: Arc::new(envelope),
                                encoded: raw.into(),
                            }),
                            Err(e) => Err(format!("{e}: {}", String::from_utf8_lossy(&raw))),
                        }
                    }
                    _ => Err("not the record it should be".to_string()),
                };
                l.handed_through = seq;
                skipped |= hand_out(
                    &mut l.handed,
                    &key,
                    seq,
                    span.len,
                    read,
                    &mut entries,
                    &mut self.unreadable,
                );
            }
        }
        self.hot_bytes -= l.let_go_of_hot_before(l.handed_through + 1);
        if l.waiting.window.is_empty() && l.waiting.window.capacity() > 64 {
            l.waiting.window.shrink_to_fit();
        }
        // Its room too (uncounted in HOT_BYTES): 10,000 lanes of a fan-out each held one.
        if l.hot.is_empty() {
            l.hot.shrink_to_fit();
        }
        // Held back by a full disk, the finish is written later (`unsettled`); the entries
        // are handed out either way.
        if skipped && self.settle(&key).is_err() && self.file.unusable().is_some() {
            return Err(io::Error::other("the journal became unusable"));
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
        // Looked for from where the last one was found: a batch finishes messages that
        // are next to each other, in order.
        let mut at = 0;
        for seq in seqs {
            let n = l.handed.len();
            if let Some(i) = (0..n)
                .map(|k| (at + k) % n)
                .find(|&i| l.handed[i].0 == *seq)
            {
                l.handed[i].2 = true;
                at = i + 1;
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

    /// Whether how far inbox file `key` was read is known: unless damage was passed over at
    /// open, and no offset of it was recorded after the damage (one recorded in it, further
    /// than the last kept, is lost: read on from the last kept, the file's lines in between
    /// would be journaled twice, under new ids, and commands among them run twice).
    pub fn inbox_offset_known(&self, key: &str) -> bool {
        self.inbox_damage
            .as_ref()
            .is_none_or(|(after, at)| at.get(key).is_some_and(|&at| at >= *after))
    }

    /// The inbox has put aside (durably) every taken file whose offset
    /// [`Journal::inbox_offset_known`] does not know: the damage that said so may now be
    /// compacted away.
    pub fn inbox_checked(&mut self) {
        self.inbox_damage = None;
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
    pub fn sync_ticket(&mut self) -> io::Result<Option<SyncTicket>> {
        self.claim()?;
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

    /// The sequence number the next accepted message gets. Read right after [`Journal::open`],
    /// it tells the messages an earlier run accepted (below it) from this run's.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Unfinished messages, all lanes.
    pub fn pending_count(&self) -> usize {
        self.pending
    }

    /// The lanes holding unfinished messages, as their subjects are written.
    pub fn unfinished_lanes(&self) -> impl Iterator<Item = &str> {
        self.lanes
            .iter()
            .filter(|(_, lane)| lane.pending > 0)
            .map(|(name, _)| name.as_str())
    }

    /// Whether message `seq` of `lane` is unfinished (`seq` one of the lane's).
    pub fn unfinished(&self, lane: &str, seq: u64) -> bool {
        self.lanes
            .get(lane)
            .is_some_and(|l| l.pending > 0 && seq > l.done_through && !l.finished_in_memory(seq))
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

    /// Whether records are durable that no checkpoint says are yet (see "Damage" in the
    /// module docs).
    fn claim_due(&self) -> bool {
        self.file.synced_through().min(self.to_claim) > self.claimed
    }

    /// A checkpoint saying how far the file is durable, written when one is due (so that
    /// damage found there later is known to be the disk's, and passed over): by the
    /// supervisor's tick after a batch's fsync, synced with the finishes it syncs. Not
    /// written if it cannot be (a full disk): the next tick tries again.
    fn claim(&mut self) -> io::Result<()> {
        if !self.claim_due() {
            return Ok(());
        }
        let claim = self.file.synced_through();
        let mut buf = Vec::with_capacity(32);
        let (next_seq, synced) = (self.next_seq, Some(claim));
        encode(&Record::Checkpoint { next_seq, synced }, &mut buf);
        match self.file.append(&buf) {
            Ok(_) => {
                self.bytes_written += buf.len() as u64;
                // Itself included only if it covers the newest batch: one written before it
                // and not yet synced needs a checkpoint of its own once it is.
                self.claimed = if claim >= self.to_claim {
                    self.file.end()
                } else {
                    claim
                };
            }
            Err(e) if self.file.unusable().is_some() => return Err(e),
            Err(_) => {}
        }
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

    /// Whether finished records make up most of the file, or damage passed over is to be
    /// left behind; not while what the damage says of inbox files is still to be acted on
    /// (see [`Journal::inbox_checked`]): compacted away, it would be forgotten at a restart.
    fn compaction_due(&self) -> bool {
        let size = self.file.end();
        self.inbox_damage.is_none()
            && (!self.damaged.is_empty()
                || (size >= COMPACT_MIN_BYTES && self.live_bytes * COMPACT_RATIO < size))
    }

    /// Whether [`Journal::sync_ticket`] or [`Journal::maintain`] has work: records not
    /// durable yet, finishes a full disk held back (tried every tick while the disk is
    /// full), or a compaction due and not waiting out a failed one. Cheap: the supervisor
    /// ticks only while this holds.
    pub fn needs_upkeep(&self) -> bool {
        let compaction_waits = self.compact_not_before.is_some_and(|t| Instant::now() < t);
        !self.file.is_synced()
            || self.claim_due()
            || !self.unsettled.is_empty()
            || (self.compaction_due() && !compaction_waits)
    }
}

/// Hands lane `key`'s next waiting message (`seq`, its record `len` bytes) to its
/// publisher (noted in the lane's `handed`), or, if it could not be read (`why`), keeps it
/// out of the system: reported to central with its bytes (see the publisher), it counts
/// as finished. Returns whether it was passed over.
fn hand_out(
    handed: &mut VecDeque<(u64, u32, bool)>,
    key: &str,
    seq: u64,
    len: u32,
    read: Result<Entry, String>,
    entries: &mut Vec<Entry>,
    unreadable: &mut Vec<String>,
) -> bool {
    match read {
        Ok(entry) => {
            handed.push_back((seq, len, false));
            entries.push(entry);
            false
        }
        Err(why) => {
            handed.push_back((seq, len, true));
            unreadable.push(format!("{key}: journal record {seq} is unreadable: {why}"));
            true
        }
    }
}

/// Reads `lane`'s waiting messages on from where the window left off, until the window is
/// full (the rest stays spilled, from the next one) or the file ends. At damage (a record
/// that cannot be read), what was read before it stays in the window, to be handed out,
/// and the lane's next refill begins at the damage (begun before it, what was read was read
/// in again, after the publisher had it: sent twice, and the lane's counts wrapped).
/// Damage that opening the journal passed over (`damaged`) is passed over again.
fn refill(
    file: &dyn StoredFile,
    end: u64,
    damaged: &[(u64, u64)],
    key: &str,
    lane: &mut Lane,
) -> io::Result<()> {
    let Some(from) = lane.waiting.spill.take() else {
        return Ok(());
    };
    let mut records = Records::new(file, from, end).passing_within(damaged);
    let failed = loop {
        let (offset, len, record) = match records.next() {
            None => break None,
            Some(Ok(r)) => r,
            Some(Err(e)) => break Some(e),
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
    };
    let corrupt = records.corruption.take();
    match failed
        .or_else(|| corrupt.map(|why| io::Error::other(format!("journal unreadable: {why}"))))
    {
        Some(e) => {
            lane.waiting.spill = Some(records.reached());
            Err(e)
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
