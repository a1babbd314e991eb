//! This node's shared state, handed to every process: its configuration, data folder, broker
//! connection, metrics, journal, and the way into the system ([`Node::accept`]).
//!
//! Everything that enters the system goes through [`Node::accept`]: journal first (fsync'd),
//! then to the supervisor, which hands each message to the publisher for its subject. That
//! holds for operators' messages from inmsg.txt and for the node's own error reports alike,
//! so errors are stored and forwarded like everything else.

use crate::broker::Broker;
use crate::config::Config;
use crate::files::DataFolder;
use crate::journal::Journal;
use crate::keys::{Identity, Trusted};
use crate::message::{Kind, Message};
use crate::metrics::Metrics;
use crate::received::Received;
use crate::resumed::Resumed;
use crate::subject::Subject;
use crate::supervisor::Event;
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long an error report waits for the central error logger: a week.
pub const ERROR_REPORT_TTL_SECS: u64 = 7 * 24 * 3600;

/// The exit status when the journal or the received log became unusable (EX_IOERR).
pub const EXIT_STORAGE_FAILED: i32 = 74;

pub struct Node {
    pub config: Config,
    pub data: DataFolder,
    pub broker: Arc<Broker>,
    pub metrics: Arc<Metrics>,
    /// What this node has received and handled (exactly-once effect).
    pub received: Received,
    /// Which messages an earlier run accepted, and which of them it finished though its
    /// journal lost the record of it (a power cut).
    pub resumed: Resumed,
    /// This node's signing key: everything it publishes is signed with it.
    pub identity: Identity,
    /// The keys it checks senders against.
    pub trusted: Trusted,
    journal: Mutex<Journal>,
    /// Word to the supervisor that the journal has upkeep waiting (see [`JournalGuard`]).
    upkeep: (Sender<()>, Receiver<()>),
    supervisor: Sender<Event>,
    /// Each running publisher's wake-up, by lane (destination subject): new messages reach
    /// it without a detour through the supervisor.
    publishers: Mutex<HashMap<Subject, Sender<()>>>,
    pub handlers: Handlers,
    /// Wakes publishers waiting on a node when it says Hello.
    pub presence: Presence,
    /// Who is waiting to hear how a message ends (`steward send`), by message id.
    watchers: Mutex<HashMap<String, Sender<Progress>>>,
    /// Refusals reported to central this minute, and those only logged.
    refusals: Mutex<Refusals>,
    /// What each sender may still write into errors.log and textlog/ this hour.
    pub log_budget: crate::log_budget::LogBudget,
    /// Since when (ms since the epoch) intake has found the data folder's disk full.
    disk_full_since: Mutex<Option<u64>>,
}

/// The locked journal, from [`Node::journal`]. When it is let go with upkeep waiting
/// ([`Journal::needs_upkeep`]: a finish not yet durable, …), it tells the supervisor, which
/// otherwise sleeps: whoever changed the journal, through whichever method.
pub struct JournalGuard<'a> {
    journal: MutexGuard<'a, Journal>,
    upkeep: &'a Sender<()>,
}

impl std::ops::Deref for JournalGuard<'_> {
    type Target = Journal;
    fn deref(&self) -> &Journal {
        &self.journal
    }
}

impl std::ops::DerefMut for JournalGuard<'_> {
    fn deref_mut(&mut self) -> &mut Journal {
        &mut self.journal
    }
}

impl Drop for JournalGuard<'_> {
    fn drop(&mut self) {
        if self.journal.needs_upkeep() {
            // Full: a word is already waiting.
            let _ = self.upkeep.try_send(());
        }
    }
}

/// At most [`REFUSAL_REPORTS_PER_MINUTE`] refusals are reported to central each minute, of
/// messages that proved nothing and as many again of verified senders' (so strangers cannot
/// hide what a known sender tried); past that they are logged here and counted, and the
/// count is reported when the minute ends. So a flood of forged messages cannot flood the
/// journal and the link.
pub const REFUSAL_REPORTS_PER_MINUTE: u32 = 20;

struct Refusals {
    since: Instant,
    /// Reported this minute: of unverified messages, of verified senders'.
    reported: [u32; 2],
    only_logged: u64,
}

/// How a watched message is going.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Progress {
    /// An attempt is under way (e.g. "attempt 2/4").
    Attempt(String),
    /// It ended: "acked", "published", "refused" or "failed", with the reply if one came.
    Finished {
        outcome: String,
        reply: Option<crate::message::Reply>,
        why: Option<String>,
    },
}

impl Node {
    pub fn new(
        config: Config,
        broker: Arc<Broker>,
        metrics: Arc<Metrics>,
        journal: Journal,
        received: Received,
        (identity, trusted): (Identity, Trusted),
        supervisor: Sender<Event>,
    ) -> Node {
        let data = DataFolder::new(config.data_folder.clone());
        // Before anything is written in this run.
        let resumed = Resumed::open(
            &data.message_log(),
            journal.next_seq(),
            journal.pending_count() > 0,
        );
        Node {
            data,
            resumed,
            handlers: Handlers::new(config.max_handlers),
            presence: Presence::default(),
            watchers: Mutex::new(HashMap::new()),
            refusals: Mutex::new(Refusals {
                since: Instant::now(),
                reported: [0, 0],
                only_logged: 0,
            }),
            log_budget: crate::log_budget::LogBudget::new(crate::log_budget::LogLimits::new(
                config.max_log_bytes_per_hour,
                config.min_free_bytes_for_logs,
            )),
            disk_full_since: Mutex::new(None),
            config,
            broker,
            metrics,
            received,
            identity,
            trusted,
            journal: Mutex::new(journal),
            // One word waiting is enough: the supervisor looks at the journal itself.
            upkeep: crossbeam_channel::bounded(1),
            supervisor,
            publishers: Mutex::new(HashMap::new()),
        }
    }

    /// The journal. A panic while holding it cannot leave it half-written in memory (each
    /// operation updates memory only after its write), so a poisoned lock is taken over.
    pub fn journal(&self) -> JournalGuard<'_> {
        JournalGuard {
            journal: self.journal.lock().unwrap_or_else(|p| p.into_inner()),
            upkeep: &self.upkeep.0,
        }
    }

    /// Fires when the journal has upkeep waiting (records to make durable, finishes to
    /// write again, a compaction): the supervisor's tick runs only then.
    pub fn journal_upkeep(&self) -> Receiver<()> {
        self.upkeep.1.clone()
    }

    /// Stops the agent at once if the journal has become unusable (a failed fsync, or a
    /// compaction or cut-back that left file and memory out of step): see
    /// [`Node::fail_stop`].
    pub fn stop_if_unusable(&self, journal: &Journal) {
        if let Some(why) = journal.unusable() {
            self.fail_stop(&format!("the journal is unusable: {why}"));
        }
    }

    /// As [`Node::stop_if_unusable`], for the received log.
    pub fn stop_if_received_unusable(&self) {
        if let Some(why) = self.received.unusable() {
            self.fail_stop(&format!("the received log is unusable: {why}"));
        }
    }

    /// Fail-stop: exits now, non-zero, writing nothing more. Going on would act on memory
    /// the disk no longer matches (after a failed fsync, Linux may have dropped the pages
    /// and report the next fsync as fine); systemd starts the agent again, and recovery
    /// reads what the disk holds. What was accepted is on disk or still in its inbox file;
    /// what was in flight is sent again and recognised by its id.
    pub fn fail_stop(&self, why: &str) -> ! {
        log::error!(
            "{}: stopping at once ({why}); started again (systemd), steward recovers from what the disk holds",
            self.config.node
        );
        std::process::exit(EXIT_STORAGE_FAILED)
    }

    /// Takes messages into the system: one journal write and fsync for the batch (with how
    /// far the inbox file has been read), then wakes their publishers.
    pub fn accept(&self, messages: Vec<Message>, inbox: Option<(&str, u64)>) -> io::Result<()> {
        self.accept_inner(messages, inbox, false).map(|_| ())
    }

    /// As [`Node::accept`], and returns each message's id with a channel on which its
    /// progress (attempts, then how it ended) will arrive: for `steward send`.
    pub fn accept_watched(
        &self,
        messages: Vec<Message>,
    ) -> io::Result<Vec<(String, Receiver<Progress>)>> {
        self.accept_inner(messages, None, true)
    }

    fn accept_inner(
        &self,
        messages: Vec<Message>,
        inbox: Option<(&str, u64)>,
        watch: bool,
    ) -> io::Result<Vec<(String, Receiver<Progress>)>> {
        let (written, watched) = {
            let mut journal = self.journal();
            let written = match journal.write(&self.config.node, messages, inbox) {
                Ok(written) => written,
                Err(e) => {
                    self.stop_if_unusable(&journal);
                    return Err(e);
                }
            };
            // Watchers are in place before the messages reach a publisher (they do once
            // committed, below), so none can miss how its message ended (and `steward
            // send` would wait forever). Lock order: journal, then watchers; nothing takes
            // them the other way round.
            let mut watched = Vec::new();
            if watch {
                let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
                for e in &written.entries {
                    let (tx, rx) = crossbeam_channel::unbounded();
                    watchers.insert(e.envelope.id.clone(), tx);
                    watched.push((e.envelope.id.clone(), rx));
                }
            }
            (written, watched)
        };
        // The fsync without the journal's lock: publishers take and finish meanwhile, and
        // other appenders write (one fsync may cover several batches).
        let synced = written.sync();
        {
            let mut journal = self.journal();
            if let Err(e) = journal.commit(&written, synced) {
                self.stop_if_unusable(&journal);
                return Err(e);
            }
            self.metrics.journal(&mut journal);
        }
        let entries = written.entries;
        for e in &entries {
            let method = e.envelope.message.method.as_str();
            self.metrics.accepted.with_label_values(&[method]).inc();
        }
        let mut lanes: Vec<Subject> = Vec::new();
        let mut seen = HashSet::new();
        for e in &entries {
            let lane = e.envelope.message.subject();
            if seen.insert(lane.clone()) {
                lanes.push(lane);
            }
        }
        self.wake(lanes);
        Ok(watched)
    }

    /// Tells whoever watches message `id` how it is going; the last word ends the watch.
    pub fn progress(&self, id: &str, progress: Progress) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let last = matches!(progress, Progress::Finished { .. });
        if let Some(tx) = watchers.get(id) {
            if tx.send(progress).is_err() || last {
                watchers.remove(id);
            }
        }
    }

    /// Tells each lane's publisher that messages wait for it in the journal; a lane
    /// without a publisher gets one from the supervisor.
    pub fn wake(&self, lanes: Vec<Subject>) {
        let mut unserved = Vec::new();
        {
            let publishers = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
            for lane in lanes {
                match publishers.get(&lane) {
                    // Full means a wake-up is already waiting: one is enough.
                    Some(wake) => drop(wake.try_send(())),
                    None => unserved.push(lane),
                }
            }
        }
        if !unserved.is_empty() {
            // Fails only when the supervisor is gone, i.e. at shutdown: the messages stay in
            // the journal and go on the next start.
            let _ = self.supervisor.send(Event::Publish(unserved));
        }
    }

    /// The supervisor started `lane`'s publisher, which waits on `wake`'s other end.
    pub fn serve_lane(&self, lane: Subject, wake: Sender<()>) {
        self.publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lane, wake);
    }

    /// Messages of `lane` are finished (ACKed, published, or given up and kept in
    /// failed-messages.txt).
    pub fn finish(&self, lane: &Subject, seqs: &[u64]) {
        let mut journal = self.journal();
        if let Err(e) = journal.finish(lane, seqs) {
            self.stop_if_unusable(&journal);
            // A full disk: the finish is written with the lane's next one.
            log::error!("journal: cannot record messages {seqs:?} of {lane} as finished: {e}");
        }
        self.metrics.journal(&mut journal);
    }

    /// Intake found the disk full (`why`): it waits, the text stays where it is. Said once
    /// (log, `steward_disk_full`), until [`Node::disk_has_room`].
    pub fn disk_full(&self, why: &str) {
        let mut since = self
            .disk_full_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if since.is_none() {
            *since = Some(crate::files::unix_millis());
            self.metrics.disk_full.set(1);
            log::error!(
                "{}: the data folder's disk is full ({why}); taking nothing in until there is room, nothing is lost",
                self.config.node
            );
        }
    }

    /// Intake journaled again: if the disk was full, say for how long, to central too
    /// (it could not be told while the disk was full).
    pub fn disk_has_room(&self) {
        let since = self
            .disk_full_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(since) = since {
            self.metrics.disk_full.set(0);
            self.report_error(format!(
                "{}: the data folder's disk was full from {} to {}; intake waited, nothing was lost",
                self.config.node,
                crate::files::rfc3339(since),
                crate::files::now_rfc3339()
            ));
        }
    }

    /// Logs an error and sends it to the central error logger, through the journal, so it
    /// reaches central even if the broker is down now.
    pub fn report_error(&self, text: String) {
        log::error!("{text}");
        let message = Message {
            to_node: self.config.central_node.clone(),
            data: vec![text],
            kind: Kind::EventAck,
            method: "ErrorLog".to_string(),
            timeout: None,
            retries: None,
            // Errors must reach central even after a long outage of the link.
            ttl: Some(ERROR_REPORT_TTL_SECS),
        };
        if let Err(e) = self.accept(vec![message], None) {
            log::error!("cannot journal the error report for the central error logger: {e}");
        }
    }

    /// Logs a refused message and reports it to central, within the per-minute limit.
    pub fn report_refusal(&self, text: String, verified: bool) {
        let _ = self.refusal_reports_due();
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let reported = &mut r.reported[usize::from(verified)];
        if *reported < REFUSAL_REPORTS_PER_MINUTE {
            *reported += 1;
            drop(r);
            self.report_error(text);
        } else {
            r.only_logged += 1;
            log::error!("{text}");
        }
    }

    /// Ends the refusal-report minute if it is over, reporting how many were only logged.
    /// Returns whether refusals only logged wait to be reported at the minute's end: call
    /// again in a second.
    pub fn refusal_reports_due(&self) -> bool {
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if r.since.elapsed() < Duration::from_secs(60) {
            return r.only_logged > 0;
        }
        let only_logged = std::mem::take(&mut r.only_logged);
        r.since = Instant::now();
        r.reported = [0, 0];
        drop(r);
        if only_logged > 0 {
            self.report_error(format!(
                "{}: {only_logged} more refused messages in the last minute (over {REFUSAL_REPORTS_PER_MINUTE} a minute are logged on {} only)",
                self.config.node, self.config.node
            ));
        }
        false
    }

    /// Asks the supervisor for the process table as text.
    pub fn status(&self) -> Option<String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.supervisor.send(Event::Status(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(2)).ok()
    }
}

/// The threads that run received messages: at most `capacity` at once, so a flood cannot
/// fork-bomb the node. A thread that finishes waits a while for the next message rather
/// than exit, so a command does not wait for a thread to be made (a thread start is tens of
/// microseconds here, more on a Pi); one idle for [`HANDLER_IDLE`] exits, so an idle node
/// holds none.
pub struct Handlers {
    /// Permits, as tokens in a channel: taken before a job, given back when it ends.
    give: Sender<()>,
    take: Receiver<()>,
    capacity: usize,
    jobs: Sender<Job>,
    waiting: Receiver<Job>,
    /// Threads waiting for a job that no dispatch has claimed yet.
    idle: Arc<AtomicUsize>,
    /// How long a thread waits for another job before it exits.
    linger: Duration,
}

/// A job, and the permit it holds until it ends.
type Job = (Box<dyn FnOnce() + Send>, Permit);

/// How long a handler thread waits for another message before it exits.
pub const HANDLER_IDLE: Duration = Duration::from_secs(60);

/// A permit; given back on drop, when the job ends (or unwinds).
struct Permit(Sender<()>);

impl Drop for Permit {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Handlers {
    pub fn new(capacity: usize) -> Handlers {
        Handlers::lingering(capacity, HANDLER_IDLE)
    }

    fn lingering(capacity: usize, linger: Duration) -> Handlers {
        let (give, take) = crossbeam_channel::bounded(capacity);
        for _ in 0..capacity {
            give.send(())
                .expect("the channel was made with room for every permit");
        }
        let (jobs, waiting) = crossbeam_channel::unbounded();
        Handlers {
            give,
            take,
            capacity,
            jobs,
            waiting,
            idle: Arc::new(AtomicUsize::new(0)),
            linger,
        }
    }

    /// Runs `job` (for `method`, which names a thread started for it) on a handler thread
    /// once one of the `capacity` places is free; returns false (without running it) if
    /// `stop` fires first or no thread can be had.
    pub fn run(
        &self,
        stop: &Receiver<()>,
        method: &str,
        job: impl FnOnce() + Send + 'static,
    ) -> bool {
        let permit = crossbeam_channel::select! {
            recv(self.take) -> _ => Permit(self.give.clone()),
            recv(stop) -> _ => return false,
        };
        let job: Job = (Box::new(job), permit);
        // Claim a waiting thread, or start one.
        if self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return self.jobs.send(job).is_ok();
        }
        let (idle, waiting, linger) = (self.idle.clone(), self.waiting.clone(), self.linger);
        let spawned = std::thread::Builder::new()
            .name(format!("handle {method}").chars().take(15).collect())
            .stack_size(256 * 1024)
            .spawn(move || handler_thread(job, &idle, &waiting, linger));
        match spawned {
            Ok(_) => true,
            Err(e) => {
                log::error!("cannot start a handler thread: {e}");
                false
            }
        }
    }

    pub fn in_use(&self) -> usize {
        self.capacity - self.take.len()
    }

    /// Waits until every permit is back (all handlers finished) or `deadline` passes: by
    /// taking each permit as it comes back, so it sleeps until a handler ends. They are
    /// given back after, so handlers can run again.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        let mut held = Vec::with_capacity(self.capacity);
        while held.len() < self.capacity {
            match self.take.recv_deadline(deadline) {
                Ok(()) => held.push(Permit(self.give.clone())),
                Err(_) => break,
            }
        }
        held.len() == self.capacity
    }
}

/// A handler thread: its first job, then whatever it is given, until it has waited
/// `linger` for nothing.
fn handler_thread(first: Job, idle: &AtomicUsize, waiting: &Receiver<Job>, linger: Duration) {
    let mut next = Some(first);
    while let Some((job, permit)) = next.take() {
        job();
        // Counted idle before the permit goes back, so the dispatch the permit lets in
        // finds this thread waiting.
        idle.fetch_add(1, Ordering::AcqRel);
        drop(permit);
        while next.is_none() {
            match waiting.recv_timeout(linger) {
                Ok(job) => next = Some(job),
                // Leave only if no dispatch has counted on this thread meanwhile; if one
                // has, its job is on the way.
                Err(_) => {
                    let unclaimed = idle
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                        .is_ok();
                    if unclaimed {
                        return;
                    }
                }
            }
        }
    }
}

/// Which nodes have just said Hello, as wake-up signals for publishers pausing between
/// attempts to reach them. A waiter holds the receiving end of a node's channel; a Hello
/// drops the sending end, which wakes every waiter of that node at once.
#[derive(Default)]
pub struct Presence(Mutex<HashMap<String, Signal>>);

/// Held sender, shared receiver: dropping the sender wakes every receiver.
type Signal = (Sender<()>, Receiver<()>);

impl Presence {
    /// A signal that fires when `node` next says Hello.
    pub fn waiter(&self, node: &str) -> Receiver<()> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(node.to_string())
            .or_insert_with(|| crossbeam_channel::bounded(0))
            .1
            .clone()
    }

    /// `node` said Hello.
    pub fn seen(&self, node: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::ThreadId;

    /// Runs a job that reports its thread and waits for `go`.
    fn job(h: &Handlers, stop: &Receiver<()>, go: &Receiver<()>) -> Receiver<ThreadId> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let go = go.clone();
        assert!(h.run(stop, "test", move || {
            tx.send(std::thread::current().id()).unwrap();
            let _ = go.recv();
        }));
        rx
    }

    /// A node in `dir` whose broker is never reached: enough to accept and watch messages.
    fn offline_node(dir: &std::path::Path) -> Node {
        use argh::FromArgs;
        let folder = format!("--dataFolder={}", dir.display());
        let args = [
            "--node=ship1",
            "--brokerAddress=127.0.0.1:1",
            folder.as_str(),
        ];
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let args = crate::config::normalize_args(&args).expect("flags in the seed's form");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let flags = crate::config::Flags::from_args(&["steward"], &args).expect("valid flags");
        let config = Config::load(&flags, &|_| None).expect("a valid configuration");
        let data = DataFolder::new(dir.to_path_buf());
        crate::files::create_dirs(dir).unwrap();
        let (journal, _) = Journal::open(&data.journal_dir()).unwrap();
        let received = Received::open(&data.journal_dir()).unwrap();
        let identity = Identity::load_or_create(&data.keys()).unwrap();
        let trusted = Trusted::open(&data.keys(), "ship1", identity.public_key()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let broker = Broker::connect(
            "ship1",
            &config.brokers,
            config.security.clone(),
            metrics.clone(),
        );
        let (supervisor, _) = crossbeam_channel::unbounded();
        Node::new(
            config,
            broker,
            metrics,
            journal,
            received,
            (identity, trusted),
            supervisor,
        )
    }

    /// The race behind a `steward send` that waited forever: a busy publisher took the
    /// message and finished it between the journal write and the watcher going in. Here
    /// the watchers are held back while the message is accepted; as long as they are, no
    /// publisher may be able to take the message from the journal.
    #[test]
    fn a_watched_message_cannot_be_taken_before_its_watcher_is_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let node = Arc::new(offline_node(dir.path()));
        let message = Message {
            to_node: "ship2".into(),
            data: vec!["hi".into()],
            kind: Kind::EventNack,
            method: "TextLogging".into(),
            timeout: None,
            retries: None,
            ttl: None,
        };
        let lane = message.subject();
        let held = node.watchers.lock().unwrap();
        let n = node.clone();
        let accepting = std::thread::spawn(move || n.accept_watched(vec![message]).unwrap());
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            // What a publisher sees when it looks for work: the journal, if it is free.
            if let Ok(journal) = node.journal.try_lock() {
                assert_eq!(
                    journal.lane_pending(&lane),
                    0,
                    "a publisher could take the message before its watcher was in place"
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(held);
        let mut watched = accepting.join().unwrap();
        let (id, progress) = watched.pop().unwrap();
        // As the publisher does: take it, deliver it, say how it ended.
        let taken = node.journal().take(&lane, 10).unwrap();
        assert_eq!(taken.len(), 1);
        let finished = Progress::Finished {
            outcome: "published".into(),
            reply: None,
            why: None,
        };
        node.progress(&id, finished);
        let heard = progress.recv_timeout(Duration::from_secs(5));
        assert!(
            matches!(heard, Ok(Progress::Finished { .. })),
            "the watcher heard {heard:?}"
        );
    }

    #[test]
    fn handler_threads_are_bounded_reused_and_let_go() {
        let h = Handlers::lingering(2, Duration::from_millis(200));
        let (_stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let (go_tx, go) = crossbeam_channel::unbounded();
        // Two at once; a third waits for a place.
        let (a, b) = (job(&h, &stop, &go), job(&h, &stop, &go));
        let (a, b) = (a.recv().unwrap(), b.recv().unwrap());
        assert_ne!(a, b);
        assert_eq!(h.in_use(), 2);
        let h = Arc::new(h);
        let (h2, stop2, go2) = (h.clone(), stop.clone(), go.clone());
        let third = std::thread::spawn(move || job(&h2, &stop2, &go2).recv().unwrap());
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !third.is_finished(),
            "a third job ran past the limit of two"
        );
        go_tx.send(()).unwrap();
        let c = third.join().unwrap();
        assert!(c == a || c == b, "the freed thread took the third job");
        for _ in 0..2 {
            go_tx.send(()).unwrap();
        }
        assert!(h.wait_idle(Instant::now() + Duration::from_secs(5)));
        // One after another, the same threads serve.
        for _ in 0..5 {
            let t = job(&h, &stop, &go).recv().unwrap();
            assert!(t == a || t == b);
            go_tx.send(()).unwrap();
            assert!(h.wait_idle(Instant::now() + Duration::from_secs(5)));
        }
        // Idle past their time, they are gone.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(h.idle.load(Ordering::Acquire), 0);
        let t = job(&h, &stop, &go).recv().unwrap();
        assert!(t != a && t != b, "a new thread after the idle ones left");
        go_tx.send(()).unwrap();
    }
}
