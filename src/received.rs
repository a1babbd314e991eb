//! What this node has received: the receiver's half of "nothing run twice".
//!
//! Every message carries an id that stays the same across the sender's retries and
//! restarts. Ids are kept per verified sender: a message is known by (sender, id), so one
//! sender can neither look up nor pre-empt another's, and only messages whose signature
//! verified are recorded at all. Before a method runs, the receiver writes `Started{id}` to
//! `journal/received.log` and fsyncs it; when it has run, `Finished{reply}`, written before
//! the ACK goes out and fsync'd just after (off the ACK's path). So a retry whose first ACK
//! was lost is answered from the stored reply, and a retry of a message that was running
//! when the receiver died is answered with an error saying so, instead of running it a
//! second time. Both survive restarts. A batch's ids share one `Started` write and one
//! `Finished` write. A reply that cannot be recorded (a full disk) is sent all the same, so
//! the output reaches its sender, and its id counts as interrupted from then on
//! ([`Received::abandon`]), as it would after a restart.
//!
//! A failed fsync makes the log unusable and the agent stops (see
//! [`crate::journal::record::RecordFile`]); `storage::crash` checks, through thousands of
//! seeded schedules with power cuts and disk errors, that a started id never comes back
//! new.
//!
//! The record format is the journal's (see [`crate::journal::record`]). Ids that have ended
//! (answered, or interrupted by a stop) are kept per *lane*, as their sender sends them: a
//! sender's kind and method (`central`'s `CommandACK.CLICommand`), one message or one batch
//! at a time, in order. At most [`KEEP_PER_LANE`] of a lane are kept (its own oldest make
//! room for its new ones), and [`KEEP`] in all (past that, the lane that holds the most
//! gives up its oldest; of lanes as large, the one quiet longest: a central for a fleet
//! larger than [`KEEP`] has more lanes than ids kept, one each): so memory and disk are bounded whatever the rate, and no lane, not
//! even one of a sender whose key was stolen, can push out another lane's ids while it
//! holds fewer. A lane waiting to send a message again (its ACK was lost: a command waits
//! out its timeout) sends nothing else meanwhile, so its ids are not pushed out by its own
//! sender's other lanes streaming events or a copy's chunks, as they were when the cap was
//! per sender. Past [`KEEP`], the busy lanes share it evenly: with more than nine lanes
//! streaming batches of 1,024 at once, each keeps fewer than the two batches a sender may
//! send again after it restarts. When the file grows past [`COMPACT_BYTES`] (or past twice
//! its size after the last compaction, if that is more) it is rewritten with only those. A
//! `Finished` record names its lane (`"lane"` beside the reply's fields, which other
//! versions ignore, so a downgrade reads the file as before); an id known only by its
//! `Started` record (interrupted, or running) counts after a restart in a lane of such of
//! its sender, as do a file's records from before lanes. Ids running now are kept besides,
//! never forgotten while they run (a retry of one forgotten would run it a second time): as
//! many as the handlers run at once, since a handler that cannot record a reply gives its
//! ids up as interrupted ([`Received::abandon`]) and a batch naming an id that runs (or one
//! id twice) starts nothing. So what is held is bounded by what runs, not by what arrives.
//!
//! Replays are refused by the senders' counters (see [`crate::keys`]); the ids also cover
//! the counters taken in the last second before a crash, which `keys/senders.json` may not
//! hold yet, for as long as they are remembered here. A message taken in that second,
//! captured, and replayed after the node has since taken more than [`KEEP_PER_LANE`] others
//! of its lane (or [`KEEP`] in all, its lane the largest) could run again on a node whose
//! clock is not checked; with the clock checked, the replay window refuses it (README: not
//! covered).

use crate::journal::record::{
    decode, encode_finished, encode_started, is_finished_record, open_records, Record, RecordFile,
    CHUNK,
};
use crate::message::Reply;
use crate::storage::{Disk, Storage};
use std::cmp::Reverse;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// How a message is known here: its verified sender and its id (`central/<id>`: `Started`
/// records hold this text; names cannot contain `/`), held once and shared by the maps and
/// the queues, with its hash made once. An id is some 70 bytes, and each took about ten
/// lookups, each hashing it anew: a tenth of a receiver's CPU in a stream of events. The
/// hash is keyed at random for each process, as a `HashMap`'s own is, so no sender can
/// choose ids that collide.
#[derive(Clone, Debug)]
struct Key {
    hash: u64,
    text: Arc<str>,
}

impl Key {
    /// Message `id` of the verified sender `from`.
    fn new(from: &str, id: &str) -> Key {
        Key::of(key_text(from, id).into())
    }

    /// A key's text, as [`Key::new`] made it (a `Started` record's).
    fn of(text: Arc<str>) -> Key {
        static KEYED: OnceLock<RandomState> = OnceLock::new();
        let hash = KEYED.get_or_init(RandomState::new).hash_one(&*text);
        Key { hash, text }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.hash == other.hash && self.text == other.text
    }
}

impl Eq for Key {}

/// By text: the order [`Inner::by_size`] breaks ties in.
impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Hashes a [`Key`] as the hash it carries.
#[derive(Default)]
struct Made(u64);

impl Hasher for Made {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, _: &[u8]) {
        unreachable!("only a Key's hash, made already, is hashed here")
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

/// A map of ids, each hashed once, as it was made.
type ById<V> = HashMap<Key, V, BuildHasherDefault<Made>>;

/// A sender's kind and method (`<sender>/<kind>.<method>`), whose ids are remembered
/// together: its name, hashed once as a [`Key`] is (each id it takes looks it up twice).
type Lane = Key;

/// How many ids that have ended are remembered (about 190 bytes each in memory).
pub const KEEP: usize = 20_000;
/// How many ended ids of one lane are remembered at most: more than the counter window, and
/// than a lane's two batches a sender may send again (one answered and not yet finished
/// when it died, and the next; a sender moves on from a lane's batch only once its answer
/// came). [`KEEP`] binds first when more than four lanes are full.
pub const KEEP_PER_LANE: usize = 5_000;
const _: () = assert!(4 * crate::message::MAX_BATCH <= KEEP_PER_LANE);
/// Size past which the file is compacted.
const COMPACT_BYTES: u64 = 4 << 20;

/// What the receiver knows of a message id.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Never seen: it has now been recorded as started; run it.
    New,
    /// Running now, in this process: its own reply will answer the sender. A batch with
    /// one such id is all `Running`: nothing of it was started, and the sender's next try
    /// (that run ended) is taken. So is a batch that names one id twice, which no sender
    /// of steward's sends: it is never taken.
    Running,
    /// Handled before: answer with this reply.
    Done(Reply),
    /// Started by an earlier run of this node that died before it finished.
    Interrupted,
}

/// What is known of an id that has ended.
#[derive(Debug, Clone, Copy)]
enum Known {
    Interrupted,
    Done { offset: u64, len: u32 },
}

pub struct Received(Mutex<Inner>);

struct Inner {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    file: RecordFile,
    /// Size right after the last compaction: compact again once the file doubles past it.
    compacted_size: u64,
    keep: usize,
    per_lane_keep: usize,
    /// Each ended id's state.
    states: ById<Known>,
    /// The ids running now in this process (recorded as started, not yet answered), with
    /// their lane. Not counted in `keep` or `per_lane_keep`, and never forgotten while they
    /// run. An interrupted id run again, or being answered as interrupted, is here and in
    /// `states` (its lane's list may forget it meanwhile: recording its answer, or giving
    /// it up, puts it back).
    running: ById<Lane>,
    /// Each lane's ended ids, oldest first: every id of `states` in exactly one.
    lanes: ById<VecDeque<Key>>,
    /// The lanes by how many ids they hold, then by how long ago they last took one (the
    /// longest ago last), to forget from the largest past `keep`; of lanes as large, from
    /// the one quiet longest. (By name, with more lanes than `keep` each holding one id, a
    /// lane's only id was forgotten as it ended, and a retry ran it again.)
    by_size: BTreeSet<(usize, Reverse<u64>, Lane)>,
    /// When each lane last took an id (a count of ids taken).
    touched: ById<u64>,
    taken: u64,
}

impl Received {
    /// Opens `received.log` in `dir`.
    pub fn open(dir: &Path) -> io::Result<Received> {
        Received::open_keeping(dir, KEEP, KEEP_PER_LANE)
    }

    /// As [`Received::open`], remembering the last `keep` ids, at most `per_lane` of one
    /// lane.
    pub fn open_keeping(dir: &Path, keep: usize, per_lane: usize) -> io::Result<Received> {
        Received::open_on(Arc::new(Disk), dir, keep, per_lane)
    }

    /// As [`Received::open_keeping`], on `storage` (the simulated disk of the crash tests).
    pub fn open_on(
        storage: Arc<dyn Storage>,
        dir: &Path,
        keep: usize,
        per_lane: usize,
    ) -> io::Result<Received> {
        let path = dir.join("received.log");
        // First each answered id's lane, from its reply (its `Started` record, before it,
        // does not say), each lane's name held once; the records' ids in order, to take
        // after. Only names and places are held, never the replies themselves.
        let mut names: HashMap<String, Lane> = HashMap::new();
        // Each answered id's lane, and where its last reply is.
        let mut lane_of: HashMap<String, (Lane, u64)> = HashMap::new();
        let mut found: Vec<(String, Known, u64)> = Vec::new();
        let (file, damage) = open_records(&*storage, &path, |offset, len, record| match record {
            Record::Started { id } => found.push((id, Known::Interrupted, offset)),
            Record::Finished { reply } => {
                if let Ok((r, lane)) = decode_finished(&reply) {
                    let id = key_text(&r.to_node, &r.id);
                    let lane = names
                        .entry(lane_name(&r.to_node, lane.as_deref().unwrap_or("")))
                        .or_insert_with_key(|name| Key::of(name.as_str().into()))
                        .clone();
                    lane_of.insert(id.clone(), (lane, offset));
                    found.push((id, Known::Done { offset, len }, offset));
                }
            }
            _ => {}
        })?;
        if let Some(cut) = &damage.cut {
            log::warn!("{cut}");
        }
        for passed in &damage.passed_over {
            log::error!("{passed}");
        }
        let mut inner = Inner {
            storage,
            path,
            file,
            compacted_size: 0,
            keep,
            per_lane_keep: per_lane,
            states: ById::default(),
            running: ById::default(),
            lanes: ById::default(),
            by_size: BTreeSet::new(),
            touched: ById::default(),
            taken: 0,
        };
        for (id, state, at) in found {
            // Answered later: it took its place in its lane (and made its lane the latest
            // to take one) when its last reply was recorded, not when it started, as it
            // did while the node ran (else the lanes that took ids while it ran counted as
            // more recent, and it was forgotten first: its retry ran it again).
            if lane_of.get(&id).is_some_and(|&(_, replied)| replied > at) {
                continue;
            }
            let lane = match lane_of.get(&id) {
                Some((lane, _)) => lane.clone(),
                None => names
                    .entry(lane_name(sender_of(&id), ""))
                    .or_insert_with_key(|name| Key::of(name.as_str().into()))
                    .clone(),
            };
            inner.remember(Key::of(id.into()), state, &lane);
        }
        // Rewritten without the damage (else passed over, and said, at every start).
        if !damage.passed_over.is_empty() {
            if let Err(e) = inner.compact() {
                log::error!(
                    "{}: cannot compact it past its damage: {e}",
                    inner.path.display()
                );
            }
        }
        Ok(Received(Mutex::new(inner)))
    }

    /// Looks up message `id` of the verified sender `from`, sent on its `lane` (the kind
    /// and method it came as: `CommandACK.CLICommand`); a new one is recorded (durably) as
    /// started before this returns.
    pub fn begin(&self, from: &str, lane: &str, id: &str) -> io::Result<Seen> {
        Ok(self.begin_many(from, lane, &[id])?.remove(0))
    }

    /// Looks up the ids of a batch from the verified sender `from` on its `lane`; the new
    /// ones are recorded as started, all with one fsync, before this returns. The fsync
    /// runs without the lock: meanwhile the ids count as running, so a retry of one is not
    /// run.
    pub fn begin_many(&self, from: &str, lane: &str, ids: &[&str]) -> io::Result<Vec<Seen>> {
        self.begin_batch(from, lane, ids, false)
    }

    /// As [`Received::begin_many`]; with `rerun_interrupted`, an id that was running when
    /// this node died is taken to run again ([`Seen::New`], running from now, its
    /// `Started` record already on disk) rather than answered as interrupted: for a method
    /// whose run does the same thing twice as once
    /// ([`Method::reruns_interrupted`](crate::methods::Method::reruns_interrupted)). A
    /// second retry meanwhile finds it running, as any.
    pub fn begin_batch(
        &self,
        from: &str,
        lane: &str,
        ids: &[&str],
        rerun_interrupted: bool,
    ) -> io::Result<Vec<Seen>> {
        let keys: Vec<Key> = ids.iter().map(|id| Key::new(from, id)).collect();
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A batch naming an id that runs now (its retry came first) waits for that run's
        // reply, whole: starting its other ids now would leave them started and never run.
        let mut in_batch: HashSet<&Key, BuildHasherDefault<Made>> =
            HashSet::with_capacity_and_hasher(keys.len(), Default::default());
        if keys
            .iter()
            .any(|k| inner.running.contains_key(k) || !in_batch.insert(k))
        {
            return Ok(keys.iter().map(|_| Seen::Running).collect());
        }
        let mut seen = Vec::with_capacity(keys.len());
        // New ids (to record as started), and interrupted ones to run again (recorded
        // already): running once the records are written, not before (a failure on the
        // way would leave them running for ever).
        let mut started = Vec::new();
        let mut again = Vec::new();
        // Interrupted ones, answered so: running too until that answer is recorded, so that
        // a retry meanwhile is left to it rather than answered (and its result sent) twice.
        let mut answering = Vec::new();
        for id in &keys {
            seen.push(match inner.states.get(id).copied() {
                Some(Known::Interrupted) if rerun_interrupted => {
                    again.push(id);
                    Seen::New
                }
                Some(Known::Interrupted) => {
                    answering.push(id);
                    Seen::Interrupted
                }
                Some(Known::Done { offset, len }) => {
                    match inner.stored_reply(&id.text, offset, len) {
                        Ok(reply) => Seen::Done(reply),
                        // Damaged on the disk: it ran, its reply is gone. Answered as
                        // interrupted from now on (an error failing every retry of the batch
                        // held up its sender's lane for good).
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            log::error!("{e}: answered as interrupted");
                            if let Some(state) = inner.states.get_mut(id) {
                                *state = Known::Interrupted;
                            }
                            answering.push(id);
                            Seen::Interrupted
                        }
                        // Not read (a failing disk): the sender tries again.
                        Err(e) => return Err(e),
                    }
                }
                None => {
                    started.push(id);
                    Seen::New
                }
            });
        }
        if !started.is_empty() {
            let mut buf = Vec::new();
            for id in &started {
                encode_started(&id.text, &mut buf);
            }
            inner.file.append(&buf)?;
        }
        for id in &again {
            log::info!("{id}: interrupted by the last stop of this node; run again");
        }
        let lane = inner.lane(lane_name(from, lane));
        inner.running.extend(
            started
                .iter()
                .chain(&again)
                .chain(&answering)
                .map(|&id| (id.clone(), lane.clone())),
        );
        if started.is_empty() {
            return Ok(seen);
        }
        // Running during the fsync, so that a retry meanwhile is not run; a failed fsync
        // makes the log unusable, and the agent stops.
        let ticket = inner.file.ticket()?;
        drop(inner);
        let synced = ticket.sync();
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.file.synced(&ticket, synced)?;
        Ok(seen)
    }

    /// What is known here of message `id` from the verified sender `from`, recording
    /// nothing and starting nothing: for a sender asking again for the reply of a message
    /// it gave up (`ReplyAgain`). [`Seen::New`] means not known here (never received, or
    /// forgotten past the bounds); a reply damaged on the disk reads as interrupted, as
    /// [`Received::begin_batch`] answers it.
    pub fn recall(&self, from: &str, id: &str) -> io::Result<Seen> {
        let key = Key::new(from, id);
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if inner.running.contains_key(&key) {
            return Ok(Seen::Running);
        }
        Ok(match inner.states.get(&key).copied() {
            None => Seen::New,
            Some(Known::Interrupted) => Seen::Interrupted,
            Some(Known::Done { offset, len }) => match inner.stored_reply(&key.text, offset, len) {
                Ok(reply) => Seen::Done(reply),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => Seen::Interrupted,
                Err(e) => return Err(e),
            },
        })
    }

    /// Records the replies of messages that ran, before they are sent; [`Received::sync`]
    /// makes them durable, after they are sent. A reply recorded before it is sent cannot
    /// be lost by a crash of this process; a power cut in the fsync's window can, and then
    /// a retry is answered "interrupted" (never run twice). One that cannot be recorded is
    /// sent all the same, its ids given up ([`Received::abandon`]).
    pub fn record(&self, replies: &[&Reply]) -> io::Result<()> {
        if replies.is_empty() {
            return Ok(());
        }
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = Vec::new();
        let mut spans = Vec::with_capacity(replies.len());
        let mut ids = Vec::with_capacity(replies.len());
        for reply in replies {
            let id = Key::new(&reply.to_node, &reply.id);
            // Started (or answered as interrupted) here; else known, and kept in its lane.
            let lane = match inner.running.get(&id) {
                Some(lane) => lane.clone(),
                None => inner.lane(lane_name(&reply.to_node, "")),
            };
            let start = buf.len();
            encode_finished(&mut buf, |out| {
                reply.encode_into(out);
                with_lane(out, &lane);
            });
            spans.push((start as u64, (buf.len() - start) as u32));
            ids.push((id, lane));
        }
        let base = inner.file.append(&buf)?;
        for ((id, lane), (start, len)) in ids.into_iter().zip(spans) {
            let state = Known::Done {
                offset: base + start,
                len,
            };
            let id = match inner.running.remove_entry(&id) {
                Some((id, _)) => id,
                None => id,
            };
            inner.remember(id, state, &lane);
        }
        if inner.file.end() > COMPACT_BYTES.max(2 * inner.compacted_size) {
            // The replies are written: a compaction that fails (a full disk) is tried
            // again once the file has doubled, unless it left the file unusable.
            if let Err(e) = inner.compact() {
                if inner.file.unusable().is_some() {
                    return Err(e);
                }
                log::warn!("{}: cannot compact now: {e}", inner.path.display());
                inner.compacted_size = inner.file.end();
            }
        }
        Ok(())
    }

    /// Gives up ids of the verified sender `from` that [`Received::begin_batch`] started and
    /// that will not be answered (their replies could not be recorded, or their handler
    /// panicked): from now on they are interrupted, as they will be after a restart (their
    /// `Started` records are on disk), rather than running for ever.
    pub fn abandon(&self, from: &str, ids: &[&str]) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            if let Some((id, lane)) = inner.running.remove_entry(&Key::new(from, id)) {
                inner.remember(id, Known::Interrupted, &lane);
            }
        }
    }

    /// Makes every record written so far durable.
    pub fn sync(&self) -> io::Result<()> {
        // Not under the lock: one handler's fsync need not hold up another's lookup.
        let ticket = {
            let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if inner.file.is_synced() {
                return Ok(());
            }
            inner.file.ticket()?
        };
        let synced = ticket.sync();
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.file.synced(&ticket, synced).map(drop)
    }

    /// Compacts the file now (the crash tests; otherwise it compacts itself as it grows).
    #[cfg(test)]
    pub fn compact_now(&self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).compact()
    }

    /// Why the received log can no longer be used, if it cannot (see
    /// [`crate::journal::record::RecordFile`]): the agent stops, and recovery reads the disk again.
    pub fn unusable(&self) -> Option<String> {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.file.unusable().map(str::to_string)
    }
}

/// A key's text: the verified sender and the id (`Started` records hold this; names
/// cannot contain `/`).
fn key_text(from: &str, id: &str) -> String {
    format!("{from}/{id}")
}

fn sender_of(key: &str) -> &str {
    key.split('/').next().unwrap_or("")
}

/// A lane's name: its sender, and the kind and method it sends on (names cannot contain
/// `/`); `""` for a lane of ids whose kind and method are not known (see the module docs).
fn lane_name(from: &str, lane: &str) -> String {
    format!("{from}/{lane}")
}

/// Adds `lane`'s kind and method to a reply's JSON object in `out`, as `"lane"`.
fn with_lane(out: &mut Vec<u8>, lane: &Lane) {
    let Some((_, sent_on)) = lane.text.split_once('/') else {
        return;
    };
    if sent_on.is_empty() || out.last() != Some(&b'}') {
        return;
    }
    out.pop();
    out.extend_from_slice(b",\"lane\":");
    serde_json::to_writer(&mut *out, sent_on).expect("a string serializes");
    out.push(b'}');
}

/// A `Finished` record's reply, and the lane it names (none before lanes).
fn decode_finished(json: &[u8]) -> Result<(Reply, Option<String>), serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Laned {
        lane: Option<String>,
    }
    let reply = Reply::decode(json).map_err(serde::de::Error::custom)?;
    let laned: Laned = serde_json::from_slice(json)?;
    Ok((reply, laned.lane))
}

impl Inner {
    /// The lane of that name, held once.
    fn lane(&self, name: String) -> Lane {
        let lane = Key::of(name.into());
        self.lanes
            .get_key_value(&lane)
            .map_or(lane, |(held, _)| held.clone())
    }

    /// Records how an id ended, in `lane` if it is new here; forgets the lane's oldest past
    /// `per_lane_keep`, then the oldest of the lane holding the most past `keep` (the
    /// running are not among them).
    fn remember(&mut self, id: Key, state: Known, lane: &Lane) {
        // One lookup (an id is some 70 bytes to hash), whether it is known or new.
        match self.states.entry(id.clone()) {
            Entry::Occupied(mut known) => {
                *known.get_mut() = state;
                return;
            }
            Entry::Vacant(new) => drop(new.insert(state)),
        }
        let queue = self.lanes.entry(lane.clone()).or_default();
        let before = queue.len();
        queue.push_back(id);
        let forgotten = (queue.len() > self.per_lane_keep)
            .then(|| queue.pop_front())
            .flatten();
        let after = queue.len();
        if let Some(old) = forgotten {
            self.states.remove(&old);
        }
        let was = self.touched.insert(lane.clone(), self.taken);
        if let Some(was) = was {
            self.by_size.remove(&(before, Reverse(was), lane.clone()));
        }
        self.by_size
            .insert((after, Reverse(self.taken), lane.clone()));
        self.taken += 1;
        while self.states.len() > self.keep {
            let Some((len, at, largest)) = self.by_size.pop_last() else {
                break;
            };
            let queue = self
                .lanes
                .get_mut(&largest)
                .expect("a lane by its size is held");
            if let Some(old) = queue.pop_front() {
                self.states.remove(&old);
            }
            match len - 1 {
                0 => {
                    self.lanes.remove(&largest);
                    self.touched.remove(&largest);
                }
                left => drop(self.by_size.insert((left, at, largest))),
            }
        }
    }

    fn stored_reply(&self, id: &str, offset: u64, len: u32) -> io::Result<Reply> {
        let mut buf = vec![0; len as usize];
        self.file.handle().read_exact_at(&mut buf, offset)?;
        match decode(&buf).records.pop() {
            Some((_, _, Record::Finished { reply })) => {
                Reply::decode(&reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: stored reply for {id} unreadable", self.path.display()),
            )),
        }
    }

    /// Rewrites the file with only the remembered ids, lane by lane, oldest first (a reply
    /// names its lane; an interrupted id is its `Started` record), and the running ones'
    /// `Started` records.
    fn compact(&mut self) -> io::Result<()> {
        // Until the rename, a failure leaves the old file in use; from the rename on, the
        // received log is unusable (see `RecordFile`), or the name may point at a file
        // this one no longer writes to.
        let tmp = self.path.with_extension("compacting");
        let written = self.write_kept(&tmp);
        let (size, states) = match written {
            Ok(written) => written,
            Err(e) => {
                let _ = self.storage.remove(&tmp);
                return Err(e);
            }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let replaced = self
            .storage
            .rename(&tmp, &self.path)
            .and_then(|()| self.storage.sync_dir(dir))
            .and_then(|()| RecordFile::rewritten(&*self.storage, &self.path, size));
        self.file = match replaced {
            Ok(file) => file,
            Err(e) => {
                let why = format!(
                    "{}: compaction could not replace the file: {e}",
                    self.path.display()
                );
                self.file.fail(why);
                return Err(e);
            }
        };
        self.compacted_size = size;
        self.states = states;
        Ok(())
    }

    /// Writes the ids kept (and running) to `tmp`, a chunk at a time, and makes it durable:
    /// its size, and where each id's record now is.
    fn write_kept(&self, tmp: &Path) -> io::Result<(u64, ById<Known>)> {
        let out = self.storage.create(tmp)?;
        let mut buf = Vec::new();
        let mut at = 0u64;
        // What is gathered goes out a chunk at a time, the file's records never all at once.
        let flush = |buf: &mut Vec<u8>, at: &mut u64, force: bool| -> io::Result<()> {
            if buf.len() >= CHUNK || (force && !buf.is_empty()) {
                out.write_all_at(buf, *at)?;
                *at += buf.len() as u64;
                buf.clear();
            }
            Ok(())
        };
        let mut states = ById::with_capacity_and_hasher(self.states.len(), Default::default());
        // The old file is read a chunk at a time: a lane's replies lie mostly one after
        // another. (A read each, and each checked through a copy: 7.5 ms to compact 20,000
        // replies against 4.1, session 35; in a stream of events a receiver compacts every
        // 20,000 or so.)
        let mut old = ReadAhead::default();
        // The lanes quiet longest first: a restart reads how recently each lane took an
        // id from the order of its records (see `by_size`).
        let mut lanes: Vec<(&Lane, &VecDeque<Key>)> = self.lanes.iter().collect();
        lanes.sort_by_key(|(lane, _)| self.touched.get(*lane).copied().unwrap_or(0));
        for (_, ids) in lanes {
            for id in ids {
                let state = match self.states[id] {
                    Known::Done { offset, len } => {
                        let start = buf.len();
                        let record = old.read(&self.file, offset, len as usize)?;
                        buf.extend_from_slice(record);
                        // Checked, not copied blind: a damaged record in the new file
                        // was taken for its end at the next start, and every record
                        // after it was lost (`Started` ones too: their commands ran
                        // again). It ran; its reply is gone: interrupted from now on.
                        if is_finished_record(&buf[start..]) {
                            Known::Done {
                                offset: at + start as u64,
                                len,
                            }
                        } else {
                            log::error!(
                                "{}: stored reply for {id} unreadable: kept as interrupted",
                                self.path.display()
                            );
                            buf.truncate(start);
                            encode_started(&id.text, &mut buf);
                            Known::Interrupted
                        }
                    }
                    Known::Interrupted => {
                        encode_started(&id.text, &mut buf);
                        Known::Interrupted
                    }
                };
                states.insert(id.clone(), state);
                flush(&mut buf, &mut at, false)?;
            }
        }
        // Running ids are in no lane yet (an interrupted one run again is, with its record).
        for id in self.running.keys() {
            if !states.contains_key(id) {
                encode_started(&id.text, &mut buf);
                flush(&mut buf, &mut at, false)?;
            }
        }
        flush(&mut buf, &mut at, true)?;
        out.sync_data()?;
        Ok((at, states))
    }
}

/// What a compaction read of the old file last: [`CHUNK`] bytes from `at` (fewer at its
/// end), from which the records there are copied.
#[derive(Default)]
struct ReadAhead {
    at: u64,
    bytes: Vec<u8>,
}

impl ReadAhead {
    /// The `len` bytes at `offset` of `file`, read with those after them if they are not
    /// among the last read.
    fn read(&mut self, file: &RecordFile, offset: u64, len: usize) -> io::Result<&[u8]> {
        let within = offset >= self.at && offset + len as u64 <= self.at + self.bytes.len() as u64;
        if !within {
            let to = file
                .end()
                .min(offset + CHUNK.max(len) as u64)
                .max(offset + len as u64);
            self.bytes.resize((to - offset) as usize, 0);
            self.at = offset;
            if let Err(e) = file.handle().read_exact_at(&mut self.bytes, offset) {
                // What follows the record may be what the disk cannot read (a bad sector
                // in a record not kept): the record alone, as each was read before.
                self.bytes.clear();
                if to == offset + len as u64 {
                    return Err(e);
                }
                self.bytes.resize(len, 0);
                if let Err(e) = file.handle().read_exact_at(&mut self.bytes, offset) {
                    self.bytes.clear();
                    return Err(e);
                }
            }
        }
        let from = (offset - self.at) as usize;
        Ok(&self.bytes[from..from + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::encode;
    use crate::message::Status;
    use crate::storage::bad_sector::BadSector;

    fn reply(id: &str, output: &str) -> Reply {
        Reply {
            id: id.into(),
            from_node: "ship1".into(),
            to_node: "central".into(),
            status: Status::Ok,
            exit_code: Some(0),
            output: output.into(),
            batch_max: None,
            digest_sig: false,
            interrupted: false,
        }
    }

    /// Records a reply durably, as a handler does around sending it.
    fn finish(r: &Received, reply: &Reply) {
        r.record(&[reply]).unwrap();
        r.sync().unwrap();
    }

    #[test]
    fn a_handled_id_is_answered_from_the_stored_reply_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(r.begin("central", "CLICommand", "a").unwrap(), Seen::New);
        assert_eq!(
            r.begin("central", "CLICommand", "a").unwrap(),
            Seen::Running
        );
        finish(&r, &reply("a", "out"));
        assert_eq!(r.begin("central", "CLICommand", "b").unwrap(), Seen::New);
        drop(r);
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(
            r.begin("central", "CLICommand", "a").unwrap(),
            Seen::Done(reply("a", "out"))
        );
        assert_eq!(
            r.begin("central", "CLICommand", "b").unwrap(),
            Seen::Interrupted,
            "b was running when we died"
        );
        assert_eq!(r.begin("central", "CLICommand", "c").unwrap(), Seen::New);
        // Another sender's message of the same id is another message: never its reply.
        assert_eq!(r.begin("ship2", "CLICommand", "a").unwrap(), Seen::New);
    }

    #[test]
    fn an_interrupted_id_runs_again_only_where_its_method_asks_and_once_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(
            r.begin_many("central", "TextLogging", &["a", "b"])
                .unwrap()
                .len(),
            2
        );
        drop(r); // died while both ran
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(
            r.begin("central", "CLICommand", "a").unwrap(),
            Seen::Interrupted
        );
        // A retry while that answer is under way is left to it: not answered, and its
        // result sent, twice.
        assert_eq!(
            r.begin("central", "CLICommand", "a").unwrap(),
            Seen::Running
        );
        // That answer not recorded (its handler failed): interrupted still.
        r.abandon("central", &["a"]);
        let seen = r
            .begin_batch("central", "CopyDst", &["a", "b", "c"], true)
            .unwrap();
        assert_eq!(seen, vec![Seen::New, Seen::New, Seen::New]);
        // A retry while the rerun runs finds it running: never two runs at once.
        assert_eq!(
            r.begin_batch("central", "CopyDst", &["a"], true).unwrap(),
            vec![Seen::Running]
        );
        finish(&r, &reply("a", "again"));
        assert_eq!(
            r.begin("central", "CLICommand", "a").unwrap(),
            Seen::Done(reply("a", "again"))
        );
        // Died again while b ran a second time: still interrupted, still its Started record.
        drop(r);
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(
            r.begin("central", "CLICommand", "b").unwrap(),
            Seen::Interrupted
        );
        r.abandon("central", &["b"]);
        assert_eq!(
            r.begin_batch("central", "CopyDst", &["b"], true).unwrap(),
            vec![Seen::New]
        );
    }

    #[test]
    fn only_the_last_ids_are_kept_and_the_file_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let keep = 50;
        let r = Received::open_keeping(dir.path(), keep, keep).unwrap();
        let big = "x".repeat(20_000);
        for i in 0..(keep + 250) {
            let id = format!("m{i}");
            assert_eq!(r.begin("central", "CLICommand", &id).unwrap(), Seen::New);
            finish(&r, &reply(&id, &big));
        }
        let size = std::fs::metadata(dir.path().join("received.log"))
            .unwrap()
            .len();
        assert!(size <= COMPACT_BYTES + 21_000, "{size} bytes");
        drop(r);
        let r = Received::open_keeping(dir.path(), keep, keep).unwrap();
        assert_eq!(
            r.begin("central", "CLICommand", "m0").unwrap(),
            Seen::New,
            "forgotten after `keep` newer ids"
        );
        let last = format!("m{}", keep + 249);
        assert_eq!(
            r.begin("central", "CLICommand", &last).unwrap(),
            Seen::Done(reply(&last, &big))
        );
    }

    /// The lanes and their sizes agree with the ids held: each id in one lane, each lane
    /// by its size once, within both limits.
    fn agree(r: &Received, keep: usize, per_lane: usize) {
        let inner = r.0.lock().unwrap();
        let held: usize = inner.lanes.values().map(VecDeque::len).sum();
        assert_eq!(held, inner.states.len());
        let distinct: HashSet<&Key> = inner.lanes.values().flatten().collect();
        assert_eq!(distinct.len(), held, "an id in two lanes, or twice in one");
        assert!(
            inner.states.len() <= keep,
            "{} ids held",
            inner.states.len()
        );
        assert!(inner
            .lanes
            .values()
            .all(|q| !q.is_empty() && q.len() <= per_lane));
        assert!(inner
            .lanes
            .values()
            .flatten()
            .all(|k| inner.states.contains_key(k)));
        let sizes: BTreeSet<(usize, Reverse<u64>, Lane)> = inner
            .lanes
            .iter()
            .map(|(lane, q)| (q.len(), Reverse(inner.touched[lane]), lane.clone()))
            .collect();
        assert_eq!(sizes, inner.by_size);
        assert_eq!(inner.touched.len(), inner.lanes.len());
    }

    /// `n` ids of `from`'s `method`, each run and answered.
    fn stream(r: &Received, from: &str, method: &str, n: usize) {
        for i in 0..n {
            let id = format!("{method}-{i}");
            assert_eq!(r.begin(from, method, &id).unwrap(), Seen::New);
            let mut done = reply(&id, "streamed");
            done.to_node = from.into();
            r.record(&[&done]).unwrap();
        }
    }

    #[test]
    fn a_command_waiting_for_its_retry_is_not_pushed_out_by_its_senders_other_lanes() {
        let dir = tempfile::tempdir().unwrap();
        let (keep, per_lane) = (100, 30);
        let r = Received::open_keeping(dir.path(), keep, per_lane).unwrap();
        // central's command ran and was answered; the ACK was lost on the way, and central
        // waits out the command's timeout to send it again.
        assert_eq!(r.begin("central", "CLICommand", "cmd").unwrap(), Seen::New);
        finish(&r, &reply("cmd", "ran once"));
        // Meanwhile central streams events and a copy's chunks to this node, and a ship
        // whose key was stolen floods it, each far past both limits.
        for (from, method) in [
            ("central", "TextLogging"),
            ("central", "CopyDst"),
            // The same method under its other kind, sent once each without waiting.
            ("central", "CommandNACK.CLICommand"),
            ("ship2", "TextLogging"),
            ("ship2", "ErrorLog"),
        ] {
            stream(&r, from, method, 5_000);
        }
        agree(&r, keep, per_lane);
        let ran_once = Seen::Done(reply("cmd", "ran once"));
        assert_eq!(
            r.begin("central", "CLICommand", "cmd").unwrap(),
            ran_once,
            "the retry would run the command a second time"
        );
        // The same after a compaction and a restart: the lanes are in the records.
        let sizes = |r: &Received| -> Vec<(String, usize)> {
            let inner = r.0.lock().unwrap();
            let mut v: Vec<_> = inner
                .lanes
                .iter()
                .map(|(l, q)| (l.to_string(), q.len()))
                .collect();
            v.sort();
            v
        };
        let before = sizes(&r);
        assert_eq!(before.len(), 6, "{before:?}");
        r.compact_now().unwrap();
        drop(r);
        let r = Received::open_keeping(dir.path(), keep, per_lane).unwrap();
        agree(&r, keep, per_lane);
        assert_eq!(sizes(&r), before);
        stream(&r, "central", "TextLogging", 5_000);
        assert_eq!(r.begin("central", "CLICommand", "cmd").unwrap(), ran_once);
        // Each streaming lane kept its newest.
        assert!(matches!(
            r.begin("central", "TextLogging", "TextLogging-4999")
                .unwrap(),
            Seen::Done(_)
        ));
        assert!(matches!(
            r.begin("ship2", "ErrorLog", "ErrorLog-4999").unwrap(),
            Seen::Done(_)
        ));
        assert_eq!(
            r.begin("ship2", "ErrorLog", "ErrorLog-0").unwrap(),
            Seen::New,
            "an old one"
        );
    }

    #[test]
    fn past_the_limit_of_all_the_lane_holding_the_most_gives_way() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open_keeping(dir.path(), 10, 8).unwrap();
        stream(&r, "central", "CLICommand", 2);
        stream(&r, "ship2", "TextLogging", 8);
        // Ten held: the next of any lane takes from the largest (ship2's, 8).
        stream(&r, "ship3", "TextLogging", 3);
        agree(&r, 10, 8);
        for i in 0..2 {
            let id = format!("CLICommand-{i}");
            assert!(matches!(
                r.begin("central", "CLICommand", &id).unwrap(),
                Seen::Done(_)
            ));
        }
        let inner = r.0.lock().unwrap();
        let len = |lane: &str| {
            let lane = Key::of(lane.into());
            inner.lanes.get(&lane).map_or(0, VecDeque::len)
        };
        assert_eq!(
            (
                len("central/CLICommand"),
                len("ship2/TextLogging"),
                len("ship3/TextLogging")
            ),
            (2, 5, 3)
        );
    }

    #[test]
    fn with_more_lanes_than_ids_kept_the_lane_quiet_longest_gives_way() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open_keeping(dir.path(), 3, 5_000).unwrap();
        // A central for a large fleet: each node's lane holds one id. The newest one's
        // ACK is lost; its retry must find it, whatever its name.
        for from in ["ship1", "ship2", "ship3", "ship9"] {
            stream(&r, from, "TextLogging", 1);
        }
        agree(&r, 3, 5_000);
        assert!(matches!(
            r.begin("ship9", "TextLogging", "TextLogging-0").unwrap(),
            Seen::Done(_)
        ));
        // The oldest went: ship1's.
        assert_eq!(
            r.begin("ship1", "TextLogging", "TextLogging-0").unwrap(),
            Seen::New
        );
        let mut again = reply("TextLogging-0", "again");
        again.to_node = "ship1".into();
        finish(&r, &again);
        // After a compaction and a restart too, the lanes quiet longest give way first.
        r.compact_now().unwrap();
        drop(r);
        let r = Received::open_keeping(dir.path(), 3, 5_000).unwrap();
        for from in ["ship4", "ship5"] {
            stream(&r, from, "TextLogging", 1);
        }
        agree(&r, 3, 5_000);
        for (from, kept) in [("ship9", false), ("ship1", true), ("ship5", true)] {
            let seen = r.begin(from, "TextLogging", "TextLogging-0").unwrap();
            assert_eq!(matches!(seen, Seen::Done(_)), kept, "{from}: {seen:?}");
        }
    }

    #[test]
    fn an_id_seen_again_after_it_was_forgotten_is_recorded_anew() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open_keeping(dir.path(), 5, 2).unwrap();
        for id in ["a", "b", "c"] {
            assert_eq!(r.begin("central", "CLICommand", id).unwrap(), Seen::New);
            finish(&r, &reply(id, "first"));
        }
        // a was pushed out by its lane's cap; it comes again (a replay the counters let
        // through, say), and is recorded anew: the newest of its lane, b the oldest.
        assert_eq!(r.begin("central", "CLICommand", "a").unwrap(), Seen::New);
        finish(&r, &reply("a", "second"));
        assert_eq!(
            r.begin("central", "CLICommand", "a").unwrap(),
            Seen::Done(reply("a", "second"))
        );
        assert_eq!(r.begin("central", "CLICommand", "b").unwrap(), Seen::New);
        agree(&r, 5, 2);
    }

    #[test]
    fn many_senders_past_every_limit_keep_the_newest_and_the_lanes_agree() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open_keeping(dir.path(), 50, 20).unwrap();
        let senders = ["ship1", "ship2", "ship3", "ship4", "ship5", "ship6"];
        for i in 0..40 {
            for from in senders {
                let id = format!("m{i}");
                assert_eq!(r.begin(from, "TextLogging", &id).unwrap(), Seen::New);
                let mut done = reply(&id, "done");
                done.to_node = from.into();
                r.record(&[&done]).unwrap();
            }
        }
        // The newest of each sender, as many as the limits leave (8 or 9 a lane).
        let newest = |from: &str, i: usize| r.begin(from, "TextLogging", &format!("m{i}")).unwrap();
        for from in senders {
            assert!(matches!(newest(from, 39), Seen::Done(_)), "{from}");
            assert_eq!(newest(from, 20), Seen::New, "{from}: an old one");
        }
        agree(&r, 50, 20);
    }

    #[test]
    fn a_file_from_before_lanes_is_read_and_one_of_this_version_reads_as_before() {
        let dir = tempfile::tempdir().unwrap();
        // As the version before lanes wrote it: Started records, replies without a lane.
        let mut buf = Vec::new();
        for id in ["a", "b"] {
            encode(
                &Record::Started {
                    id: format!("central/{id}"),
                },
                &mut buf,
            );
        }
        encode_finished(&mut buf, |out| reply("a", "old").encode_into(out));
        std::fs::write(dir.path().join("received.log"), &buf).unwrap();
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(
            r.begin("central", "CommandACK.CLICommand", "a").unwrap(),
            Seen::Done(reply("a", "old"))
        );
        assert_eq!(
            r.begin("central", "CommandACK.CLICommand", "b").unwrap(),
            Seen::Interrupted
        );
        agree(&r, KEEP, KEEP_PER_LANE);
        // This version's reply names its lane, a field the version before ignores: its
        // decoding of the record is the reply, whole.
        assert_eq!(
            r.begin("central", "CommandACK.CLICommand", "c").unwrap(),
            Seen::New
        );
        finish(&r, &reply("c", "new"));
        drop(r);
        let bytes = std::fs::read(dir.path().join("received.log")).unwrap();
        let decoded = decode(&bytes);
        let Some((_, _, Record::Finished { reply: json })) = decoded.records.last() else {
            panic!("no reply record last: {:?}", decoded.records.last());
        };
        assert!(String::from_utf8_lossy(json).contains("\"lane\":\"CommandACK.CLICommand\""));
        assert_eq!(Reply::decode(json).unwrap(), reply("c", "new"));
        // And its lane comes back with it.
        let r = Received::open(dir.path()).unwrap();
        let inner = r.0.lock().unwrap();
        let lane_of_c = inner
            .lanes
            .iter()
            .find(|(_, q)| q.iter().any(|k| &*k.text == "central/c"))
            .map(|(lane, _)| lane.to_string());
        assert_eq!(lane_of_c.as_deref(), Some("central/CommandACK.CLICommand"));
    }

    #[test]
    fn a_running_id_is_never_forgotten_however_many_end_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open_keeping(dir.path(), 100, 30).unwrap();
        assert_eq!(r.begin("central", "CLICommand", "slow").unwrap(), Seen::New);
        // Thousands of others from the same sender and from another begin and end
        // meanwhile, far past both limits, and the log is compacted under them.
        for i in 0..3_000 {
            for from in ["central", "ship2"] {
                let id = format!("m{i}");
                assert_eq!(r.begin(from, "CLICommand", &id).unwrap(), Seen::New);
                let mut quick = reply(&id, "quick");
                quick.to_node = from.into();
                r.record(&[&quick]).unwrap();
            }
        }
        r.compact_now().unwrap();
        assert_eq!(
            r.begin("central", "CLICommand", "slow").unwrap(),
            Seen::Running,
            "a retry of the running id would run it again"
        );
        {
            let inner = r.0.lock().unwrap();
            assert!(inner.states.len() <= 100, "{} ids held", inner.states.len());
            assert_eq!(inner.running.len(), 1);
        }
        // The process dies while it runs: after the compaction, it is still known.
        drop(r);
        let r = Received::open_keeping(dir.path(), 100, 30).unwrap();
        assert_eq!(
            r.begin("central", "CLICommand", "slow").unwrap(),
            Seen::Interrupted
        );
    }

    #[test]
    fn a_batch_naming_a_running_id_starts_nothing_and_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open(dir.path()).unwrap();
        let ids: Vec<String> = (0..256).map(|i| format!("e{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        // A batch of 100 runs, slowly; its sender restarts and sends 256 (the 100 first).
        assert!(r
            .begin_many("central", "TextLogging", &ids[..100])
            .unwrap()
            .iter()
            .all(|s| *s == Seen::New));
        let seen = r.begin_many("central", "TextLogging", &ids).unwrap();
        assert!(seen.iter().all(|s| *s == Seen::Running), "{seen:?}");
        // The first run ends: the 256 are taken, the 100 answered from their replies and
        // the rest new (not left started and never run).
        let replies: Vec<Reply> = ids[..100].iter().map(|id| reply(id, "done")).collect();
        r.record(&replies.iter().collect::<Vec<_>>()).unwrap();
        let seen = r.begin_many("central", "TextLogging", &ids).unwrap();
        assert_eq!(
            seen[..100],
            replies.into_iter().map(Seen::Done).collect::<Vec<_>>()
        );
        assert!(seen[100..].iter().all(|s| *s == Seen::New), "{seen:?}");
        // One id twice in a batch: nothing started either.
        assert_eq!(
            r.begin_many("central", "TextLogging", &["x", "y", "x"])
                .unwrap(),
            vec![Seen::Running, Seen::Running, Seen::Running]
        );
        assert_eq!(r.begin("central", "CLICommand", "x").unwrap(), Seen::New);
        assert_eq!(r.begin("central", "CLICommand", "y").unwrap(), Seen::New);
    }

    #[test]
    fn an_abandoned_id_is_interrupted_at_once_as_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(
            r.begin_many("central", "TextLogging", &["a", "b"])
                .unwrap()
                .len(),
            2
        );
        // Its reply could not be recorded: given up, no longer running.
        r.abandon("central", &["a"]);
        assert_eq!(
            r.begin("central", "CLICommand", "a").unwrap(),
            Seen::Interrupted
        );
        // Its answer as interrupted could not be recorded either.
        r.abandon("central", &["a"]);
        assert_eq!(
            r.begin("central", "CLICommand", "b").unwrap(),
            Seen::Running
        );
        // Another sender's id of the same name is not given up by it.
        assert_eq!(r.begin("ship2", "CLICommand", "c").unwrap(), Seen::New);
        r.abandon("central", &["c"]);
        assert_eq!(r.begin("ship2", "CLICommand", "c").unwrap(), Seen::Running);
        // A method that reruns an interrupted message runs it again, once at a time.
        assert_eq!(
            r.begin_batch("central", "CopyDst", &["a"], true).unwrap(),
            vec![Seen::New]
        );
        assert_eq!(
            r.begin_batch("central", "CopyDst", &["a"], true).unwrap(),
            vec![Seen::Running]
        );
        drop(r);
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(
            r.begin("central", "CLICommand", "a").unwrap(),
            Seen::Interrupted
        );
    }

    /// Flips a bit in the first stored reply of the received log at `path` (a bad sector).
    fn damage_first_reply(path: &Path) {
        let records = decode(&std::fs::read(path).unwrap()).records;
        let (at, _, _) = records
            .iter()
            .find(|(_, _, r)| matches!(r, Record::Finished { .. }))
            .unwrap();
        flip(path, at + 20);
    }

    /// Flips a bit of the byte at `at` of the file at `path` (a bad sector).
    fn flip(path: &Path, at: u64) {
        let byte = std::fs::read(path).unwrap()[at as usize];
        overwrite(path, at, &[byte ^ 0x20]);
    }

    /// Writes `bytes` over the file at `path` from `at` (damage on the disk).
    fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, at).unwrap();
    }

    #[test]
    fn a_damaged_stored_reply_is_answered_as_interrupted_and_compaction_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.log");
        let r = Received::open(dir.path()).unwrap();
        for id in ["a", "b"] {
            assert_eq!(r.begin("central", "CLICommand", id).unwrap(), Seen::New);
            finish(&r, &reply(id, "out"));
        }
        // a's, while the node runs.
        damage_first_reply(&path);
        // Every retry of a failed (its sender's lane held up for good): now it ran, and
        // its reply is gone.
        for _ in 0..3 {
            assert_eq!(
                r.begin("central", "CLICommand", "a").unwrap(),
                Seen::Interrupted
            );
            // That answer not recorded here: interrupted still.
            r.abandon("central", &["a"]);
        }
        assert_eq!(r.begin("central", "CLICommand", "z").unwrap(), Seen::New); // running
                                                                               // Compacted, the damaged record is not copied into the new file (where the next
                                                                               // start took it for the end, and forgot b and z: run again).
        r.compact_now().unwrap();
        drop(r);
        let r = Received::open(dir.path()).unwrap();
        assert!(matches!(
            r.begin("central", "CLICommand", "b").unwrap(),
            Seen::Done(_)
        ));
        assert_eq!(
            r.begin("central", "CLICommand", "z").unwrap(),
            Seen::Interrupted
        );
        assert_eq!(
            r.begin("central", "CLICommand", "a").unwrap(),
            Seen::Interrupted
        );
    }

    #[test]
    fn damage_in_the_middle_is_passed_over_and_the_ids_after_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.log");
        let r = Received::open(dir.path()).unwrap();
        for id in ["a", "b", "c"] {
            assert_eq!(r.begin("central", "CLICommand", id).unwrap(), Seen::New);
            finish(&r, &reply(id, "out"));
        }
        assert_eq!(r.begin("central", "CLICommand", "d").unwrap(), Seen::New); // running
        drop(r);
        // A bad sector in a's stored reply: the file was cut there at the next start, and
        // b, c and d, forgotten, ran again.
        damage_first_reply(&path);
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(
            r.begin("central", "CLICommand", "a").unwrap(),
            Seen::Interrupted
        );
        for id in ["b", "c"] {
            assert!(matches!(
                r.begin("central", "CLICommand", id).unwrap(),
                Seen::Done(_)
            ));
        }
        assert_eq!(
            r.begin("central", "CLICommand", "d").unwrap(),
            Seen::Interrupted
        );
        drop(r);
        // Rewritten without it: the next start finds no damage, and the same ids.
        let records = decode(&std::fs::read(&path).unwrap());
        assert!(records.corruption.is_none(), "{:?}", records.corruption);
        let r = Received::open(dir.path()).unwrap();
        assert!(matches!(
            r.begin("central", "CLICommand", "c").unwrap(),
            Seen::Done(_)
        ));
        // And a zeroed page (a write that never reached the disk) is passed over too.
        drop(r);
        let records = decode(&std::fs::read(&path).unwrap()).records;
        let (at, len, _) = records[0];
        overwrite(&path, at, &vec![0; len as usize]);
        let r = Received::open(dir.path()).unwrap();
        assert!(matches!(
            r.begin("central", "CLICommand", "c").unwrap(),
            Seen::Done(_)
        ));
        // And a record whose header is garbage too (a sector of noise), lengths and all:
        // the ids after it are kept.
        drop(r);
        let records = decode(&std::fs::read(&path).unwrap()).records;
        let (at, len, _) = records[0];
        // The last record's id, and whether it is a stored reply or a run interrupted.
        let (last_at, after, done) = match records.last().unwrap() {
            (at, _, Record::Finished { reply }) => (*at, Reply::decode(reply).unwrap().id, true),
            (at, _, Record::Started { id }) => (*at, id.clone(), false),
            other => panic!("{other:?}"),
        };
        assert!(at < last_at, "a record after the noise");
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        overwrite(&path, at, &noise);
        let r = Received::open(dir.path()).unwrap();
        let id = after.rsplit('/').next().unwrap_or(&after).to_string();
        let seen = r.begin("central", "CLICommand", &id).unwrap();
        assert!(
            if done {
                matches!(seen, Seen::Done(_))
            } else {
                seen == Seen::Interrupted
            },
            "{id}: {seen:?}"
        );
    }

    /// Records `id`'s reply from `from` durably.
    fn finish_from(r: &Received, from: &str, id: &str) {
        let mut done = reply(id, "out");
        done.to_node = from.into();
        finish(r, &done);
    }

    #[test]
    fn a_restart_forgets_the_same_ids_as_the_running_node_whatever_ran_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open_keeping(dir.path(), 2, 5_000).unwrap();
        // A central for a fleet larger than it keeps: one id a lane. ship1's runs while
        // ship2's comes and ends; ship1's ends after it (handlers run side by side).
        assert_eq!(r.begin("ship1", "TextLogging", "x").unwrap(), Seen::New);
        assert_eq!(r.begin("ship2", "TextLogging", "y").unwrap(), Seen::New);
        finish_from(&r, "ship2", "y");
        finish_from(&r, "ship1", "x");
        // ship3's pushes one out: ship2's, quiet longest.
        assert_eq!(r.begin("ship3", "TextLogging", "z").unwrap(), Seen::New);
        finish_from(&r, "ship3", "z");
        assert!(matches!(
            r.begin("ship1", "TextLogging", "x").unwrap(),
            Seen::Done(_)
        ));
        // The node restarts (kill -9, nothing compacted); ship1 retries x, whose ACK was
        // lost: it must not run again.
        drop(r);
        let r = Received::open_keeping(dir.path(), 2, 5_000).unwrap();
        let seen = r.begin("ship1", "TextLogging", "x").unwrap();
        assert!(
            matches!(seen, Seen::Done(_)),
            "x runs a second time: {seen:?}"
        );
    }

    #[test]
    fn a_bad_sector_in_a_record_not_kept_does_not_hold_up_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.log");
        let disk = BadSector::default();
        let r = Received::open_on(Arc::new(disk.clone()), dir.path(), KEEP, KEEP_PER_LANE).unwrap();
        for id in ["a", "b"] {
            assert_eq!(r.begin("central", "CLICommand", id).unwrap(), Seen::New);
            finish(&r, &reply(id, "out"));
        }
        // b's `Started` record, which a compaction does not copy (b has its reply), goes
        // bad on the disk.
        let records = decode(&std::fs::read(&path).unwrap()).records;
        let (at, _, _) = records
            .iter()
            .find(|(_, _, r)| matches!(r, Record::Started { id } if id.ends_with("/b")))
            .unwrap();
        disk.set_in(0, at + 10);
        // Compacted without it (each kept record read alone, it was; a chunk at a time,
        // the bad sector after a's reply failed every compaction, and the file grew
        // without bound, the bad sector in it).
        r.compact_now().unwrap();
        for id in ["a", "b"] {
            assert!(matches!(
                r.begin("central", "CLICommand", id).unwrap(),
                Seen::Done(_)
            ));
        }
    }

    #[test]
    fn a_bad_sector_in_the_log_does_not_keep_the_node_from_starting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.log");
        let r = Received::open(dir.path()).unwrap();
        // Replies of some kilobytes: each on pages of its own.
        for id in ["a", "b", "c"] {
            assert_eq!(r.begin("central", "CLICommand", id).unwrap(), Seen::New);
            finish(&r, &reply(id, &"out".repeat(3000)));
        }
        drop(r);
        // a's reply cannot be read any more (EIO), at every start.
        let records = decode(&std::fs::read(&path).unwrap()).records;
        let (at, _, _) = records
            .iter()
            .find(|(_, _, r)| matches!(r, Record::Finished { .. }))
            .unwrap();
        let disk = BadSector::default();
        *disk.next.lock().unwrap() = Some(at + 20);
        let storage = Arc::new(disk);
        let r = Received::open_on(storage, dir.path(), KEEP, KEEP_PER_LANE);
        let r =
            r.expect("the agent starts (else systemd restarts it, and it fails again, for ever)");
        // (a's records lie on the page the disk cannot read: passed over, a is forgotten.)
        for id in ["b", "c"] {
            assert!(matches!(
                r.begin("central", "CLICommand", id).unwrap(),
                Seen::Done(_)
            ));
        }
    }
}
