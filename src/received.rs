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
//! [`crate::journal::record::RecordFile`]); `storage::crash` checks, through thousands of seeded
//! schedules with power cuts and disk errors, that a started id never comes back new.
//!
//! The record format is the journal's (see [`crate::journal::record`]). The file keeps the last
//! [`KEEP`] ids that have ended (answered, or interrupted by a stop), and at most
//! [`KEEP_PER_SENDER`] of any one sender (a sender's own oldest make room for its new ones),
//! so memory and disk are bounded whatever the rate, and no sender, not even one whose key
//! was stolen, can push another's records out: when the file grows past [`COMPACT_BYTES`]
//! (or past twice its size after the last compaction, if that is more) it is rewritten
//! with only those. Ids running now are kept besides, never forgotten while they run (a
//! retry of one forgotten would run it a second time): as many as the handlers run at
//! once, since a handler that cannot record a reply gives its ids up as interrupted
//! ([`Received::abandon`]) and a batch naming an id that runs (or one id twice) starts
//! nothing. So what is held is bounded by what runs, not by what arrives.
//!
//! Replays are refused by the senders' counters (see [`crate::keys`]); the ids also cover
//! the counters taken in the last second before a crash, which `keys/senders.json` may not
//! hold yet, for as long as they are remembered here. A message taken in that second,
//! captured, and replayed after the node has since taken more than [`KEEP`] others (or
//! [`KEEP_PER_SENDER`] from that sender) could run again on a node whose clock is not
//! checked; with the clock checked, the replay window refuses it (README: not covered).

use crate::journal::record::{decode, encode, encode_finished, open_records, Record, RecordFile};
use crate::message::Reply;
use crate::storage::{Disk, Storage};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How a message is known here ([`key`]), held once and shared by the map and the queues.
type Key = Arc<str>;

/// How many ids that have ended are remembered (about 170 bytes each in memory).
pub const KEEP: usize = 20_000;
/// How many ended ids of one sender are remembered at most: more than the counter window,
/// and than the last batch answered on four of its lanes at once (a sender moves on from a
/// lane's batch only once its answer came; until then it may send it again, and the
/// receiver must know it).
pub const KEEP_PER_SENDER: usize = 5_000;
const _: () = assert!(4 * crate::message::MAX_BATCH <= KEEP_PER_SENDER);
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
    per_sender_keep: usize,
    /// Each ended id's state.
    states: HashMap<Key, Known>,
    /// The ids running now in this process (recorded as started, not yet answered). Not
    /// counted in `keep` or `per_sender_keep`, and never forgotten while they run. An
    /// interrupted id run again is here and in `states`.
    running: HashSet<Key>,
    /// Every id, oldest first (with some already forgotten by their sender's cap, dropped
    /// from here now and then).
    order: VecDeque<Key>,
    /// Each sender's ids, oldest first.
    per_sender: HashMap<String, VecDeque<Key>>,
}

impl Received {
    /// Opens `received.log` in `dir`.
    pub fn open(dir: &Path) -> io::Result<Received> {
        Received::open_keeping(dir, KEEP, KEEP_PER_SENDER)
    }

    /// As [`Received::open`], remembering the last `keep` ids, at most `per_sender` of
    /// one sender.
    pub fn open_keeping(dir: &Path, keep: usize, per_sender: usize) -> io::Result<Received> {
        Received::open_on(Arc::new(Disk), dir, keep, per_sender)
    }

    /// As [`Received::open_keeping`], on `storage` (the simulated disk of the crash tests).
    pub fn open_on(
        storage: Arc<dyn Storage>,
        dir: &Path,
        keep: usize,
        per_sender: usize,
    ) -> io::Result<Received> {
        let path = dir.join("received.log");
        let (file, decoded, cut) = open_records(&*storage, &path)?;
        if let Some(cut) = cut {
            log::warn!("{cut}");
        }
        let mut inner = Inner {
            storage,
            path,
            file,
            compacted_size: 0,
            keep,
            per_sender_keep: per_sender,
            states: HashMap::new(),
            running: HashSet::new(),
            order: VecDeque::new(),
            per_sender: HashMap::new(),
        };
        for (offset, len, record) in decoded.records {
            match record {
                Record::Started { id } => inner.remember(id.into(), Known::Interrupted),
                Record::Finished { reply } => {
                    if let Ok(r) = Reply::decode(&reply) {
                        let id = key(&r.to_node, &r.id).into();
                        inner.remember(id, Known::Done { offset, len });
                    }
                }
                _ => {}
            }
        }
        Ok(Received(Mutex::new(inner)))
    }

    /// Looks up message `id` of the verified sender `from`; a new one is recorded
    /// (durably) as started before this returns.
    pub fn begin(&self, from: &str, id: &str) -> io::Result<Seen> {
        Ok(self.begin_many(from, &[id])?.remove(0))
    }

    /// Looks up the ids of a batch from the verified sender `from`; the new ones are
    /// recorded as started, all with one fsync, before this returns. The fsync runs without
    /// the lock: meanwhile the ids count as running, so a retry of one is not run.
    pub fn begin_many(&self, from: &str, ids: &[&str]) -> io::Result<Vec<Seen>> {
        self.begin_batch(from, ids, false)
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
        ids: &[&str],
        rerun_interrupted: bool,
    ) -> io::Result<Vec<Seen>> {
        let keys: Vec<String> = ids.iter().map(|id| key(from, id)).collect();
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A batch naming an id that runs now (its retry came first) waits for that run's
        // reply, whole: starting its other ids now would leave them started and never run.
        let mut in_batch = HashSet::with_capacity(keys.len());
        if keys
            .iter()
            .any(|k| inner.running.contains(k.as_str()) || !in_batch.insert(k))
        {
            return Ok(keys.iter().map(|_| Seen::Running).collect());
        }
        let mut seen = Vec::with_capacity(keys.len());
        // New ids (to record as started), and interrupted ones to run again (recorded
        // already): running once the records are written, not before (a failure on the
        // way would leave them running for ever).
        let mut started = Vec::new();
        let mut again = Vec::new();
        for id in &keys {
            seen.push(match inner.states.get(id.as_str()).copied() {
                Some(Known::Interrupted) if rerun_interrupted => {
                    again.push(id);
                    Seen::New
                }
                Some(Known::Interrupted) => Seen::Interrupted,
                Some(Known::Done { offset, len }) => {
                    Seen::Done(inner.stored_reply(id, offset, len)?)
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
                encode(&Record::Started { id: id.to_string() }, &mut buf);
            }
            inner.file.append(&buf)?;
        }
        for id in &again {
            log::info!("{id}: interrupted by the last stop of this node; run again");
        }
        inner.running.extend(
            started
                .iter()
                .chain(&again)
                .map(|id| Key::from(id.as_str())),
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
        for reply in replies {
            let start = buf.len();
            encode_finished(&mut buf, |out| reply.encode_into(out));
            spans.push((start as u64, (buf.len() - start) as u32));
        }
        let base = inner.file.append(&buf)?;
        for (reply, (start, len)) in replies.iter().zip(spans) {
            let state = Known::Done {
                offset: base + start,
                len,
            };
            let id = key(&reply.to_node, &reply.id);
            let id = inner.running.take(id.as_str()).unwrap_or_else(|| id.into());
            inner.remember(id, state);
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
            if let Some(id) = inner.running.take(key(from, id).as_str()) {
                inner.remember(id, Known::Interrupted);
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

/// How a message is known here: its verified sender and its id (`Started` records hold
/// this; names cannot contain `/`).
fn key(from: &str, id: &str) -> String {
    format!("{from}/{id}")
}

fn sender_of(key: &str) -> &str {
    key.split('/').next().unwrap_or("")
}

impl Inner {
    /// Records how an id ended; forgets its sender's oldest past `per_sender_keep`, then
    /// the oldest of all past `keep` (the running are not among them).
    fn remember(&mut self, id: Key, state: Known) {
        if let Some(known) = self.states.get_mut(&id) {
            *known = state;
            return;
        }
        self.states.insert(id.clone(), state);
        self.order.push_back(id.clone());
        // The sender's name is copied only for a sender not seen before.
        let sender = sender_of(&id);
        if !self.per_sender.contains_key(sender) {
            self.per_sender.insert(sender.to_string(), VecDeque::new());
        }
        let mine = self
            .per_sender
            .get_mut(sender)
            .expect("inserted above if it was not there");
        mine.push_back(id);
        while mine.len() > self.per_sender_keep {
            if let Some(old) = mine.pop_front() {
                self.states.remove(&old);
            }
        }
        while self.states.len() > self.keep {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            // Forgotten by its sender's cap already (and perhaps seen again since: then
            // the map holds another key of the same text, in its place in the queue).
            if !self.holds(&old) {
                continue;
            }
            self.states.remove(&old);
            let sender = sender_of(&old);
            if let Some(theirs) = self.per_sender.get_mut(sender) {
                // The oldest of all is its sender's oldest: both queues are in the order
                // ids came, and the older ones of that sender are gone already.
                match theirs.front() {
                    Some(first) if Arc::ptr_eq(first, &old) => drop(theirs.pop_front()),
                    _ => theirs.retain(|k| !Arc::ptr_eq(k, &old)),
                }
                if theirs.is_empty() {
                    self.per_sender.remove(sender);
                }
            }
        }
        if self.order.len() > 2 * self.keep + 64 {
            let mut order = std::mem::take(&mut self.order);
            order.retain(|k| self.holds(k));
            self.order = order;
        }
    }

    /// Whether `k`, taken from a queue, is the key the map holds (else its id was forgotten
    /// by its sender's cap, and perhaps seen again since: a later place in the queue).
    fn holds(&self, k: &Key) -> bool {
        self.states
            .get_key_value(k)
            .is_some_and(|(held, _)| Arc::ptr_eq(held, k))
    }

    fn stored_reply(&self, id: &str, offset: u64, len: u32) -> io::Result<Reply> {
        let mut buf = vec![0; len as usize];
        self.file.handle().read_exact_at(&mut buf, offset)?;
        match decode(&buf).records.pop() {
            Some((_, _, Record::Finished { reply })) => {
                Reply::decode(&reply).map_err(io::Error::other)
            }
            _ => Err(io::Error::other(format!(
                "{}: stored reply for {id} unreadable",
                self.path.display()
            ))),
        }
    }

    /// Rewrites the file with only the remembered ids, oldest first, and the running ones'
    /// `Started` records.
    fn compact(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut states = HashMap::with_capacity(self.states.len());
        let mut order = std::mem::take(&mut self.order);
        order.retain(|k| self.holds(k));
        self.order = order;
        for id in &self.order {
            let state = match self.states[id] {
                Known::Done { offset, len } => {
                    let start = buf.len();
                    buf.resize(start + len as usize, 0);
                    self.file
                        .handle()
                        .read_exact_at(&mut buf[start..], offset)?;
                    Known::Done {
                        offset: start as u64,
                        len,
                    }
                }
                Known::Interrupted => {
                    encode(&Record::Started { id: id.to_string() }, &mut buf);
                    Known::Interrupted
                }
            };
            states.insert(id.clone(), state);
        }
        // Running ids are not in `order` (an interrupted one run again is, with its record).
        for id in &self.running {
            if !states.contains_key(id) {
                encode(&Record::Started { id: id.to_string() }, &mut buf);
            }
        }
        // Until the rename, a failure leaves the old file in use; from the rename on, the
        // received log is unusable (see `RecordFile`), or the name may point at a file
        // this one no longer writes to.
        let tmp = self.path.with_extension("compacting");
        let written = self.storage.create(&tmp).and_then(|f| {
            f.write_all_at(&buf, 0)?;
            f.sync_data()
        });
        if let Err(e) = written {
            let _ = self.storage.remove(&tmp);
            return Err(e);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let replaced = self
            .storage
            .rename(&tmp, &self.path)
            .and_then(|()| self.storage.sync_dir(dir))
            .and_then(|()| RecordFile::rewritten(&*self.storage, &self.path, buf.len() as u64));
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
        self.compacted_size = buf.len() as u64;
        self.states = states;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Status;

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
        assert_eq!(r.begin("central", "a").unwrap(), Seen::New);
        assert_eq!(r.begin("central", "a").unwrap(), Seen::Running);
        finish(&r, &reply("a", "out"));
        assert_eq!(r.begin("central", "b").unwrap(), Seen::New);
        drop(r);
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(
            r.begin("central", "a").unwrap(),
            Seen::Done(reply("a", "out"))
        );
        assert_eq!(
            r.begin("central", "b").unwrap(),
            Seen::Interrupted,
            "b was running when we died"
        );
        assert_eq!(r.begin("central", "c").unwrap(), Seen::New);
        // Another sender's message of the same id is another message: never its reply.
        assert_eq!(r.begin("ship2", "a").unwrap(), Seen::New);
    }

    #[test]
    fn an_interrupted_id_runs_again_only_where_its_method_asks_and_once_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(r.begin_many("central", &["a", "b"]).unwrap().len(), 2);
        drop(r); // died while both ran
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(r.begin("central", "a").unwrap(), Seen::Interrupted);
        let seen = r.begin_batch("central", &["a", "b", "c"], true).unwrap();
        assert_eq!(seen, vec![Seen::New, Seen::New, Seen::New]);
        // A retry while the rerun runs finds it running: never two runs at once.
        assert_eq!(
            r.begin_batch("central", &["a"], true).unwrap(),
            vec![Seen::Running]
        );
        finish(&r, &reply("a", "again"));
        assert_eq!(
            r.begin("central", "a").unwrap(),
            Seen::Done(reply("a", "again"))
        );
        // Died again while b ran a second time: still interrupted, still its Started record.
        drop(r);
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(r.begin("central", "b").unwrap(), Seen::Interrupted);
        assert_eq!(
            r.begin_batch("central", &["b"], true).unwrap(),
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
            assert_eq!(r.begin("central", &id).unwrap(), Seen::New);
            finish(&r, &reply(&id, &big));
        }
        let size = std::fs::metadata(dir.path().join("received.log"))
            .unwrap()
            .len();
        assert!(size <= COMPACT_BYTES + 21_000, "{size} bytes");
        drop(r);
        let r = Received::open_keeping(dir.path(), keep, keep).unwrap();
        assert_eq!(
            r.begin("central", "m0").unwrap(),
            Seen::New,
            "forgotten after `keep` newer ids"
        );
        let last = format!("m{}", keep + 249);
        assert_eq!(
            r.begin("central", &last).unwrap(),
            Seen::Done(reply(&last, &big))
        );
    }

    #[test]
    fn one_sender_flooding_ids_pushes_out_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open_keeping(dir.path(), 100, 30).unwrap();
        for i in 0..20 {
            let id = format!("c{i}");
            assert_eq!(r.begin("central", &id).unwrap(), Seen::New);
            finish(&r, &reply(&id, "central's"));
        }
        // A fleet member whose key was stolen sends ten thousand ids, each handled as a
        // handler does.
        for i in 0..10_000 {
            let id = format!("s{i}");
            assert_eq!(r.begin("ship2", &id).unwrap(), Seen::New);
            let mut theirs = reply(&id, "ship2's");
            theirs.to_node = "ship2".into();
            r.record(&[&theirs]).unwrap();
        }
        for i in 0..20 {
            let id = format!("c{i}");
            assert_eq!(
                r.begin("central", &id).unwrap(),
                Seen::Done(reply(&id, "central's")),
                "central's {id} was pushed out"
            );
        }
        let inner = r.0.lock().unwrap();
        assert!(inner.states.len() <= 50, "{} ids held", inner.states.len());
        assert!(inner.order.len() <= 2 * 100 + 64);
        assert!(inner.running.is_empty());
    }

    #[test]
    fn an_id_seen_again_after_it_was_forgotten_keeps_its_new_place() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open_keeping(dir.path(), 5, 2).unwrap();
        for id in ["a", "b", "c"] {
            assert_eq!(r.begin("central", id).unwrap(), Seen::New);
            finish(&r, &reply(id, "first"));
        }
        // a was pushed out by central's cap; it comes again (a replay the counters let
        // through, say), and is recorded anew: the newest of central's.
        assert_eq!(r.begin("central", "a").unwrap(), Seen::New);
        finish(&r, &reply("a", "second"));
        // Others come: the oldest of all go, and a's old place in the queue is not a.
        for from in ["ship2", "ship3", "ship4", "ship5"] {
            assert_eq!(r.begin(from, "x").unwrap(), Seen::New);
            let mut theirs = reply("x", "theirs");
            theirs.to_node = from.into();
            finish(&r, &theirs);
        }
        assert_eq!(
            r.begin("central", "a").unwrap(),
            Seen::Done(reply("a", "second"))
        );
        assert_eq!(r.begin("central", "c").unwrap(), Seen::New, "the oldest");
    }

    #[test]
    fn many_senders_past_every_limit_keep_the_newest_and_the_queues_agree() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open_keeping(dir.path(), 50, 20).unwrap();
        let senders = ["ship1", "ship2", "ship3", "ship4", "ship5", "ship6"];
        for i in 0..40 {
            for from in senders {
                let id = format!("m{i}");
                assert_eq!(r.begin(from, &id).unwrap(), Seen::New);
                let mut done = reply(&id, "done");
                done.to_node = from.into();
                r.record(&[&done]).unwrap();
            }
        }
        // The newest of each sender, as many as the limits leave: the last 50 of all
        // (8 or 9 a sender), each held by its sender's queue exactly once.
        let newest = |from: &str, i: usize| r.begin(from, &format!("m{i}")).unwrap();
        for from in senders {
            assert!(matches!(newest(from, 39), Seen::Done(_)), "{from}");
            assert_eq!(newest(from, 20), Seen::New, "{from}: an old one");
        }
        let inner = r.0.lock().unwrap();
        let held: usize = inner.per_sender.values().map(VecDeque::len).sum();
        assert_eq!(held, inner.states.len());
        assert!(inner.states.len() <= 50);
        assert!(inner.per_sender.values().flatten().all(|k| inner.holds(k)));
    }

    #[test]
    fn a_running_id_is_never_forgotten_however_many_end_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open_keeping(dir.path(), 100, 30).unwrap();
        assert_eq!(r.begin("central", "slow").unwrap(), Seen::New);
        // Thousands of others from the same sender and from another begin and end
        // meanwhile, far past both limits, and the log is compacted under them.
        for i in 0..3_000 {
            for from in ["central", "ship2"] {
                let id = format!("m{i}");
                assert_eq!(r.begin(from, &id).unwrap(), Seen::New);
                let mut quick = reply(&id, "quick");
                quick.to_node = from.into();
                r.record(&[&quick]).unwrap();
            }
        }
        r.compact_now().unwrap();
        assert_eq!(
            r.begin("central", "slow").unwrap(),
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
        assert_eq!(r.begin("central", "slow").unwrap(), Seen::Interrupted);
    }

    #[test]
    fn a_batch_naming_a_running_id_starts_nothing_and_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open(dir.path()).unwrap();
        let ids: Vec<String> = (0..256).map(|i| format!("e{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        // A batch of 100 runs, slowly; its sender restarts and sends 256 (the 100 first).
        assert!(r
            .begin_many("central", &ids[..100])
            .unwrap()
            .iter()
            .all(|s| *s == Seen::New));
        let seen = r.begin_many("central", &ids).unwrap();
        assert!(seen.iter().all(|s| *s == Seen::Running), "{seen:?}");
        // The first run ends: the 256 are taken, the 100 answered from their replies and
        // the rest new (not left started and never run).
        let replies: Vec<Reply> = ids[..100].iter().map(|id| reply(id, "done")).collect();
        r.record(&replies.iter().collect::<Vec<_>>()).unwrap();
        let seen = r.begin_many("central", &ids).unwrap();
        assert_eq!(
            seen[..100],
            replies.into_iter().map(Seen::Done).collect::<Vec<_>>()
        );
        assert!(seen[100..].iter().all(|s| *s == Seen::New), "{seen:?}");
        // One id twice in a batch: nothing started either.
        assert_eq!(
            r.begin_many("central", &["x", "y", "x"]).unwrap(),
            vec![Seen::Running, Seen::Running, Seen::Running]
        );
        assert_eq!(r.begin("central", "x").unwrap(), Seen::New);
        assert_eq!(r.begin("central", "y").unwrap(), Seen::New);
    }

    #[test]
    fn an_abandoned_id_is_interrupted_at_once_as_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(r.begin_many("central", &["a", "b"]).unwrap().len(), 2);
        // Its reply could not be recorded: given up, no longer running.
        r.abandon("central", &["a"]);
        assert_eq!(r.begin("central", "a").unwrap(), Seen::Interrupted);
        assert_eq!(r.begin("central", "b").unwrap(), Seen::Running);
        // Another sender's id of the same name is not given up by it.
        assert_eq!(r.begin("ship2", "c").unwrap(), Seen::New);
        r.abandon("central", &["c"]);
        assert_eq!(r.begin("ship2", "c").unwrap(), Seen::Running);
        // A method that reruns an interrupted message runs it again, once at a time.
        assert_eq!(
            r.begin_batch("central", &["a"], true).unwrap(),
            vec![Seen::New]
        );
        assert_eq!(
            r.begin_batch("central", &["a"], true).unwrap(),
            vec![Seen::Running]
        );
        drop(r);
        let r = Received::open(dir.path()).unwrap();
        assert_eq!(r.begin("central", "a").unwrap(), Seen::Interrupted);
    }
}
