//! The supervisor: one thread that owns the process table.
//!
//! It spawns a publisher for each destination subject (lane) the first time a message for
//! it is journaled; from then on the publisher takes its lane's messages from the journal
//! itself, woken by [`Node::accept`](crate::node::Node::accept). A failure on one subject
//! never touches another subject's lane. On shutdown it stops every process, gives
//! in-flight work a grace period, and makes the journal durable.
//!
//! # When a process fails
//!
//! A process says whether a restart can help ([`Failure`]); the supervisor acts on it
//! (`Failures::on_failure`):
//!
//! - [`Failure::Retry`] (the broker gone, a full disk, a file in the way, a panic): restarted
//!   after a pause growing from 0.2 s to [`MAX_BACKOFF`], each failure reported to the
//!   central error logger. What the process was doing is taken up again (a publisher's
//!   messages wait in its slot).
//! - [`Failure::Fatal`] (another agent on the data folder, a subject this node cannot
//!   make): reported to central once, then only logged here while the process keeps
//!   failing; started again every [`FATAL_RESTART`], not in a loop. Not stopped for good:
//!   the rest of the node serves on, a node whose command subscriber stopped could no
//!   longer be reached to be put right, and what was taken for fatal may still pass (the
//!   other agent stops). A process that then runs a minute counts as healthy again: its
//!   next failure is new, and reported.
//!
//! `steward_process_restarts_total` counts both; `steward_process_failures_total` says
//! which (`failure="retry"` or `"fatal"`). The storage fail-stop
//! ([`Node::fail_stop`](crate::node::Node::fail_stop)) is not a process failure: it exits
//! the agent at once, for systemd to start it again.
//!
//! The rest of the node talks to it only through [`Event`]s on one channel.

use crate::methods::Method;
use crate::node::Node;
use crate::process::{self, publisher, subscriber, Failure, Process, State, StopFd};
use crate::subject::Subject;
use crossbeam_channel::{Receiver, Sender};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub enum Event {
    /// Messages wait in the journal for these lanes, which have no publisher yet.
    Publish(Vec<Subject>),
    /// A process's thread ended (with why, if it failed).
    Exited {
        name: String,
        generation: u64,
        failure: Option<Failure>,
    },
    /// The process table as text, for `--profilingPort`, `steward status` and
    /// `OpProcessList`.
    Status(Sender<String>),
    /// `OpProcessStop`: stop the publisher, subscriber or schedule `name` (`by`: who asked),
    /// and say how that went.
    Stop {
        name: String,
        by: String,
        reply: Sender<Result<Stopped, NotStopped>>,
    },
    /// A publisher gives its thread up while its lane's first message pauses between
    /// attempts (lanes wait for a thread): the lane waits its turn again after `until`.
    Yielded { lane: Subject, until: Instant },
    /// SIGINT or SIGTERM.
    Shutdown,
}

/// The subscribers `OpProcessStop` may not stop: without them nothing could put the node
/// right (run a command, take a revocation, stop or list processes) until someone restarts
/// it by hand.
pub const MUST_STAY: [&str; 4] = [
    "subscriber CLICommand",
    "subscriber TrustedKeys",
    "subscriber OpProcessStop",
    "subscriber OpProcessList",
];

/// What `OpProcessStop` did, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped(pub String);

/// Why `OpProcessStop` stopped nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStopped {
    /// No process of that name (`OpProcessList` lists them).
    NoSuchProcess { node: String, name: String },
    /// One of the node's own processes, or a subscriber in [`MUST_STAY`]: the node must
    /// stay reachable.
    MustStay { node: String, name: String },
    /// The supervisor did not answer: the node is stopping.
    NoAnswer,
    /// A schedule's stop could not be written (`why`): it would come back at the next start.
    NotKept { name: String, why: String },
}

impl std::fmt::Display for NotStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStopped::NoSuchProcess { node, name } => {
                write!(f, "{node} has no process {name:?} (OpProcessList lists them)")
            }
            NotStopped::MustStay { node, name } => write!(
                f,
                "{name} cannot be stopped: {node} must stay reachable (only publishers, and subscribers other than those of CLICommand, TrustedKeys, OpProcessStop and OpProcessList, can)"
            ),
            NotStopped::NoAnswer => f.write_str("the supervisor did not answer (the node is stopping)"),
            NotStopped::NotKept { name, why } => write!(f, "cannot record that {name} stops ({why}); it goes on"),
        }
    }
}

impl std::error::Error for NotStopped {}

/// While the journal has upkeep waiting, how often the supervisor does it: finishes are
/// durable within this.
const UPKEEP_EVERY: Duration = Duration::from_millis(500);

/// The longest pause before a process that failed, and can be helped by a restart, is
/// started again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long a process whose failure no restart can fix waits before it is tried again.
pub const FATAL_RESTART: Duration = Duration::from_secs(600);

/// A process that ran this long before it failed was healthy: its failures in a row start
/// over.
const HEALTHY: Duration = Duration::from_secs(60);

/// What the supervisor does about a process that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Restart {
    /// Start it again after this.
    after: Duration,
    /// Report it to central ([`Node::report_error`]); otherwise it is only logged here.
    report: bool,
}

/// One process's failures, kept across its restarts: what the supervisor's decisions
/// depend on.
#[derive(Debug, Default)]
struct Failures {
    /// Failures in a row, without a healthy run in between; sets the backoff.
    in_a_row: u32,
    /// A fatal failure in this row has been reported.
    fatal_reported: bool,
}

impl Failures {
    /// The decision about a process that failed (`fatal`: no restart can fix it) after
    /// running for `ran`. See the module docs.
    fn on_failure(&mut self, fatal: bool, ran: Duration) -> Restart {
        if ran > HEALTHY {
            *self = Failures::default();
        }
        self.in_a_row += 1;
        if fatal {
            let report = !self.fatal_reported;
            self.fatal_reported = true;
            return Restart {
                after: FATAL_RESTART,
                report,
            };
        }
        Restart {
            after: crate::retry::backoff(self.in_a_row, MAX_BACKOFF),
            report: true,
        }
    }
}

/// How to make (and remake) a process.
type Recipe = Box<dyn Fn() -> Box<dyn Process>>;

struct ProcessEntry {
    recipe: Recipe,
    state: Arc<State>,
    generation: u64,
    restarts: u32,
    failures: Failures,
    started: Instant,
    thread: Option<JoinHandle<()>>,
    restart_at: Option<Instant>,
    /// A publisher's lane, and its wake-up.
    lane: Option<(Subject, Sender<()>)>,
    /// Dropped to stop this process alone (all are dropped at shutdown).
    stop: Option<Sender<()>>,
    /// Who stopped it (`OpProcessStop`): then it is not restarted; a publisher starts again
    /// with its lane's next message, a subscriber with the agent's next start.
    stopped_by: Option<String>,
    /// A stopped publisher's lane had work again before its thread ended: start it again
    /// once it has (never two on one lane).
    resume: bool,
    /// A publisher that gave its thread up (`Event::Yielded`): its lane waits its turn
    /// again from then; its slot (the message and its attempts) stays here.
    parked_until: Option<Instant>,
}

pub struct Supervisor {
    node: Arc<Node>,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    table: BTreeMap<String, ProcessEntry>,
    /// Dropped to stop the processes that sleep in `poll`: the write end of the
    /// [`StopFd`]'s pipe (each process's stop channel is in its entry).
    stop_fd_tx: Option<OwnedFd>,
    stop_fd: StopFd,
    methods: Vec<Arc<dyn Method>>,
    /// Lanes with messages and no publisher, waiting their turn (`--maxPublishers`).
    waiting: std::collections::VecDeque<Subject>,
    queued: std::collections::HashSet<Subject>,
    /// Publisher threads running, and the most since memory was last handed back.
    publishers: usize,
    publishers_peak: usize,
}

impl Supervisor {
    pub fn new(node: Arc<Node>, events: Receiver<Event>, events_tx: Sender<Event>) -> Supervisor {
        let (stop_fd, stop_fd_tx) = StopFd::new();
        Supervisor {
            node,
            events,
            events_tx,
            table: BTreeMap::new(),
            stop_fd_tx,
            stop_fd,
            methods: Vec::new(),
            waiting: std::collections::VecDeque::new(),
            queued: std::collections::HashSet::new(),
            publishers: 0,
            publishers_peak: 0,
        }
    }

    /// Starts the node's fixed processes: the inbox, the control socket, a subscriber per
    /// method, the scheduler, hello.
    pub fn start(&mut self) {
        let (node, stop_fd) = (self.node.clone(), self.stop_fd.clone());
        self.add("inbox".into(), None, move |state| {
            Box::new(process::inbox::Inbox {
                node: node.clone(),
                state,
                stop_fd: stop_fd.clone(),
            })
        });
        let (node, stop_fd) = (self.node.clone(), self.stop_fd.clone());
        self.add("control socket".into(), None, move |state| {
            Box::new(process::control::Control {
                node: node.clone(),
                state,
                stop_fd: stop_fd.clone(),
            })
        });
        for method in crate::methods::registry() {
            let (node, m) = (self.node.clone(), method.clone());
            self.add(
                format!("subscriber {}", method.name()),
                None,
                move |state| {
                    Box::new(subscriber::Subscriber {
                        method: m.clone(),
                        node: node.clone(),
                        state,
                    })
                },
            );
            self.methods.push(method);
        }
        let node = self.node.clone();
        self.add("scheduler".into(), None, move |state| {
            Box::new(process::scheduler::Scheduler {
                node: node.clone(),
                state,
            })
        });
        if let Some(interval) = self.node.config.hello_interval {
            let node = self.node.clone();
            self.add("hello".into(), None, move |state| {
                Box::new(process::hello::HelloSender {
                    node: node.clone(),
                    interval,
                    state,
                })
            });
        }
    }

    fn add<F>(&mut self, name: String, lane: Option<(Subject, Sender<()>)>, make: F)
    where
        F: Fn(Arc<State>) -> Box<dyn Process> + 'static,
    {
        let state = Arc::new(State::default());
        let s = state.clone();
        let entry = ProcessEntry {
            recipe: Box::new(move || make(s.clone())),
            state,
            generation: 0,
            restarts: 0,
            failures: Failures::default(),
            started: Instant::now(),
            thread: None,
            restart_at: None,
            lane,
            stop: None,
            stopped_by: None,
            resume: false,
            parked_until: None,
        };
        self.table.insert(name.clone(), entry);
        self.launch(&name);
    }

    fn launch(&mut self, name: &str) {
        let Some(e) = self.table.get_mut(name) else {
            return;
        };
        e.generation += 1;
        e.started = Instant::now();
        e.restart_at = None;
        e.stopped_by = None;
        e.resume = false;
        e.parked_until = None;
        let (stop_tx, stop) = crossbeam_channel::bounded(0);
        e.stop = Some(stop_tx);
        match process::spawn(
            name.to_string(),
            e.generation,
            (e.recipe)(),
            stop,
            self.events_tx.clone(),
            e.state.clone(),
        ) {
            Ok(handle) => {
                e.thread = Some(handle);
                self.node.metrics.processes.inc();
                if e.lane.is_some() {
                    self.publishers += 1;
                    self.publishers_peak = self.publishers_peak.max(self.publishers);
                }
            }
            Err(err) => {
                log::error!("cannot start process {name}: {err}; trying again shortly");
                e.restart_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// Starts a publisher for a lane with messages waiting, unless it has one.
    fn publish(&mut self, lane: Subject) {
        let name = format!("publisher {lane}");
        let ending = !self.node.serves_lane(&lane);
        if let Some(e) = self.table.get_mut(&name) {
            match (&e.stopped_by, &e.thread) {
                // Stopped by an operator, or ending idle, and its lane has work again:
                // started again once its thread has ended.
                (Some(_), Some(_)) => e.resume = true,
                (Some(_), None) => self.resume(&name),
                (None, Some(_)) if ending => e.resume = true,
                // Parked (gave its thread up) or ended: its lane has work, so a thread.
                (None, None) => self.resume(&name),
                (None, _) => {
                    if let Some((_, wake)) = &e.lane {
                        let _ = wake.try_send(());
                    }
                }
            }
            return;
        }
        if self.publishers >= self.node.config.max_publishers {
            // Its turn comes when a publisher ends; idle ones are asked to end now.
            if self.queued.insert(lane.clone()) {
                self.waiting.push_back(lane);
            }
            self.want_publishers(true);
            return;
        }
        // A wake-up waits at most one deep: a publisher looks at the journal after each.
        let (wake_tx, wake) = crossbeam_channel::bounded(1);
        self.node.serve_lane(lane.clone(), wake_tx.clone());
        let in_flight = publisher::InFlight::default();
        let node = self.node.clone();
        log::debug!("spawning {name}");
        let subject = lane.clone();
        self.add(name, Some((lane, wake_tx)), move |state| {
            Box::new(publisher::Publisher {
                subject: subject.clone(),
                node: node.clone(),
                wake: wake.clone(),
                in_flight: in_flight.clone(),
                state,
            })
        });
    }

    fn exited(&mut self, name: String, generation: u64, failure: Option<Failure>) {
        let Some(e) = self.table.get_mut(&name) else {
            return;
        };
        if e.generation != generation {
            return;
        }
        if let Some(t) = e.thread.take() {
            let _ = t.join();
            self.node.metrics.processes.dec();
            if e.lane.is_some() {
                self.publishers -= 1;
            }
        }
        if let Some(by) = &e.stopped_by {
            e.state.set(format!("stopped by OpProcessStop from {by}"));
            if e.resume {
                self.resume(&name);
            } else {
                self.next_waiting();
            }
            return;
        }
        let retired = failure.is_none()
            && e.lane
                .as_ref()
                .is_some_and(|(lane, _)| !self.node.serves_lane(lane));
        if retired {
            // An idle publisher ended (`--keepPublishersAliveFor`): gone from the table,
            // unless its lane had work again meanwhile.
            if e.resume {
                self.resume(&name);
            } else if e.parked_until.is_some() {
                // Its message waits in its slot, here, for its turn.
                e.state.set(
                    "waiting for its turn (--maxPublishers): its message pauses between attempts",
                );
                self.next_waiting();
            } else {
                self.table.remove(&name);
                self.next_waiting();
            }
            return;
        }
        // Ended without an error, though not told to stop: restarted as it always was.
        let failure = failure.unwrap_or_else(|| Failure::retry("ended unexpectedly"));
        let fatal = failure.is_fatal();
        let restart = e.failures.on_failure(fatal, e.started.elapsed());
        e.restarts += 1;
        e.restart_at = Some(Instant::now() + restart.after);
        let metrics = &self.node.metrics;
        metrics.restarts.inc();
        let label = if fatal { "fatal" } else { "retry" };
        metrics.failures.with_label_values(&[label]).inc();
        let node = &self.node.config.node;
        let after = restart.after.as_secs_f64();
        if !fatal {
            self.node.report_error(format!(
                "{node}: process {name} failed: {failure}; restarting in {after:.1}s"
            ));
        } else if restart.report {
            self.node.report_error(format!(
                "{node}: process {name} failed: {failure}; a restart cannot fix this (a bug or a misconfiguration): it is tried again every {}s, not reported again while it fails; the rest of {node} goes on",
                FATAL_RESTART.as_secs()
            ));
        } else {
            log::error!(
                "process {name} failed again: {failure}; tried again in {}s (reported already)",
                FATAL_RESTART.as_secs()
            );
        }
    }

    /// `OpProcessStop`: stops a publisher or a subscriber, not to be restarted (see
    /// [`ProcessEntry::stopped_by`]), or a schedule, for good (its stop is written to
    /// schedules.json). The node's own processes (inbox, control socket, scheduler, hello)
    /// and the subscribers in [`MUST_STAY`] cannot be stopped: a node must stay reachable to
    /// be put right.
    fn stop_one(&mut self, name: &str, by: &str) -> Result<Stopped, NotStopped> {
        let node = self.node.config.node.clone();
        if let Some(id) = name.strip_prefix("schedule ") {
            return match self.node.schedules.stop(id) {
                Ok(true) => {
                    log::warn!("{name} stopped by OpProcessStop from {by}");
                    Ok(Stopped(format!("{name} on {node} stopped for good")))
                }
                Ok(false) => Err(NotStopped::NoSuchProcess {
                    node,
                    name: name.to_string(),
                }),
                Err(e) => Err(NotStopped::NotKept {
                    name: name.to_string(),
                    why: e.to_string(),
                }),
            };
        }
        let Some(e) = self.table.get_mut(name) else {
            return Err(NotStopped::NoSuchProcess {
                node,
                name: name.to_string(),
            });
        };
        if !(name.starts_with("publisher ") || name.starts_with("subscriber "))
            || MUST_STAY.contains(&name)
        {
            return Err(NotStopped::MustStay {
                node,
                name: name.to_string(),
            });
        }
        let done = |text: String| Ok(Stopped(text));
        if e.stopped_by.is_some() || e.thread.is_none() {
            return done(format!("{name} on {node} is not running"));
        }
        e.stopped_by = Some(by.to_string());
        e.restart_at = None;
        drop(e.stop.take());
        if let Some((lane, _)) = &e.lane {
            self.node.unserve_lane(lane);
        }
        log::warn!("{name} stopped by OpProcessStop from {by}");
        done(if name.starts_with("publisher ") {
            format!("{name} on {node} stopped; its messages stay in the journal, and it starts again with its lane's next message or the next start of {node}")
        } else {
            format!("{name} on {node} stopped until the next start of {node}")
        })
    }

    /// A publisher gave its thread up until `until` (see [`Event::Yielded`]).
    fn parked(&mut self, lane: Subject, until: Instant) {
        if let Some(e) = self.table.get_mut(&format!("publisher {lane}")) {
            e.parked_until = Some(until);
        }
    }

    /// Parked lanes whose pause is over wait their turn for a thread.
    fn unpark_due(&mut self) {
        let now = Instant::now();
        let due: Vec<Subject> = self
            .table
            .values_mut()
            .filter(|e| e.thread.is_none() && e.parked_until.is_some_and(|t| t <= now))
            .filter_map(|e| {
                e.parked_until = None;
                e.lane.as_ref().map(|(l, _)| l.clone())
            })
            .collect();
        for lane in due {
            if self.queued.insert(lane.clone()) {
                self.waiting.push_back(lane);
            }
        }
        self.next_waiting();
    }

    fn next_parked(&self) -> Option<Instant> {
        self.table
            .values()
            .filter(|e| e.thread.is_none())
            .filter_map(|e| e.parked_until)
            .min()
    }

    /// Lanes waiting for a publisher get one while there is room; once none waits, idle
    /// publishers idle again, and the memory a burst of them took is handed back.
    fn next_waiting(&mut self) {
        while self.publishers < self.node.config.max_publishers {
            let Some(lane) = self.waiting.pop_front() else {
                break;
            };
            self.queued.remove(&lane);
            self.publish(lane);
        }
        if !self.waiting.is_empty() {
            self.want_publishers(true);
        } else {
            self.want_publishers(false);
            if self.publishers_peak >= 64 && self.publishers <= self.publishers_peak / 2 {
                crate::sys::malloc_trim();
                self.publishers_peak = self.publishers;
            }
        }
    }

    /// Says whether lanes wait for a publisher; when they start to, wakes every publisher,
    /// so the idle ones see it and end.
    fn want_publishers(&mut self, wanted: bool) {
        use std::sync::atomic::Ordering;
        let was = self.node.publishers_wanted.swap(wanted, Ordering::Relaxed);
        if wanted && !was {
            for (_, wake) in self.table.values().filter_map(|e| e.lane.as_ref()) {
                let _ = wake.try_send(());
            }
        }
    }

    /// Starts a publisher an operator stopped again, its lane served and woken.
    fn resume(&mut self, name: &str) {
        let Some((lane, wake)) = self.table.get(name).and_then(|e| e.lane.clone()) else {
            return;
        };
        self.node.serve_lane(lane, wake.clone());
        self.launch(name);
        let _ = wake.try_send(());
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .table
            .iter()
            .filter(|(_, e)| e.restart_at.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            log::info!("restarting process {name}");
            self.launch(&name);
        }
    }

    fn status(&self) -> String {
        let (pending, size) = {
            let journal = self.node.journal();
            (journal.pending_count(), journal.size())
        };
        let mut s = format!(
            "node {}  journal: {pending} pending, {size} bytes  handlers busy: {}\n{:<50} {:>7} {:>8}  state\n",
            self.node.config.node,
            self.node.handlers.in_use(),
            "process",
            "pending",
            "restarts"
        );
        let journal = self.node.journal();
        for (name, e) in &self.table {
            let pending = e.lane.as_ref().map_or(0, |(l, _)| journal.lane_pending(l));
            let _ = writeln!(
                s,
                "{name:<50} {pending:>7} {:>8}  {}",
                e.restarts,
                e.state.get()
            );
        }
        if !self.waiting.is_empty() {
            let _ = writeln!(
                s,
                "{} lane(s) waiting for a publisher (--maxPublishers {})",
                self.waiting.len(),
                self.node.config.max_publishers
            );
        }
        for schedule in self.node.schedules.list() {
            let m = &schedule.request.message;
            let _ = writeln!(
                s,
                "{:<50} {:>7} {:>8}  {} from {} every {}s until {}, run {}{}",
                schedule.name(),
                0,
                0,
                m.method,
                schedule.request.from_node,
                schedule.every / 1000,
                crate::files::rfc3339(schedule.until),
                schedule.runs,
                match schedule.running {
                    Some(_) => ", running".to_string(),
                    None => format!(", next {}", crate::files::rfc3339(schedule.next)),
                }
            );
        }
        s
    }

    /// Makes the journal's finish records durable (the fsync without its lock), writes
    /// what a full disk held back and compacts it when due; fail-stop if it has become
    /// unusable.
    fn keep_journal(&self) {
        let ticket = self.node.journal().sync_ticket();
        let mut journal = match ticket {
            Ok(Some(ticket)) => {
                let synced = ticket.sync();
                let mut journal = self.node.journal();
                if let Err(e) = journal.synced_ticket(&ticket, synced) {
                    self.node.stop_if_unusable(&journal);
                    log::error!("journal: cannot sync: {e}");
                }
                journal
            }
            Ok(None) => self.node.journal(),
            Err(e) => {
                let journal = self.node.journal();
                self.node.stop_if_unusable(&journal);
                log::error!("journal: cannot sync: {e}");
                journal
            }
        };
        if let Err(e) = journal.maintain() {
            self.node.stop_if_unusable(&journal);
            log::warn!("journal: {e}; tried again later");
        }
        self.node.metrics.journal(&mut journal);
    }

    /// When the next restart is due, if one is.
    fn next_restart(&self) -> Option<Instant> {
        self.table.values().filter_map(|e| e.restart_at).min()
    }

    /// Runs until shutdown; returns once in-flight work has finished or the grace is over.
    /// Sleeps until an event comes, or a timer is due: a restart, or the journal's upkeep
    /// (within [`UPKEEP_EVERY`] of the word that it has some, and again while it has).
    pub fn run(mut self) {
        let upkeep = self.node.journal_upkeep();
        let mut upkeep_at: Option<Instant> = None;
        loop {
            let due = [upkeep_at, self.next_restart(), self.next_parked()]
                .into_iter()
                .flatten()
                .min();
            let timer = due.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
            crossbeam_channel::select! {
                recv(self.events) -> event => match event {
                    Ok(Event::Publish(lanes)) => lanes.into_iter().for_each(|l| self.publish(l)),
                    Ok(Event::Exited { name, generation, failure }) => self.exited(name, generation, failure),
                    Ok(Event::Status(reply)) => { let _ = reply.send(self.status()); }
                    Ok(Event::Stop { name, by, reply }) => { let _ = reply.send(self.stop_one(&name, &by)); }
                    Ok(Event::Yielded { lane, until }) => self.parked(lane, until),
                    Ok(Event::Shutdown) | Err(_) => break,
                },
                recv(upkeep) -> _ => {
                    upkeep_at.get_or_insert_with(|| Instant::now() + UPKEEP_EVERY);
                },
                recv(timer) -> _ => {
                    self.restart_due();
                    self.unpark_due();
                    if upkeep_at.is_some_and(|at| at <= Instant::now()) {
                        self.keep_journal();
                        // Its own words (the journal unsynced halfway) are stale now; one
                        // that comes after the look below is not.
                        let _ = upkeep.try_recv();
                        let again = self.node.journal().needs_upkeep();
                        upkeep_at = again.then(|| Instant::now() + UPKEEP_EVERY);
                    }
                },
            }
        }
        self.shutdown();
    }

    fn shutdown(mut self) {
        log::info!("stopping: no new work is taken; finishing in-flight work");
        let deadline = Instant::now() + self.node.config.shutdown_grace;
        drop(self.stop_fd_tx.take());
        for e in self.table.values_mut() {
            drop(e.stop.take());
        }
        let mut running = self.table.values().filter(|e| e.thread.is_some()).count();
        while running > 0 {
            match self.events.recv_deadline(deadline) {
                Ok(Event::Exited {
                    name, generation, ..
                }) => {
                    if let Some(e) = self.table.get_mut(&name) {
                        if e.generation == generation && e.thread.take().is_some() {
                            running -= 1;
                            self.node.metrics.processes.dec();
                        }
                    }
                }
                Ok(Event::Status(reply)) => {
                    let _ = reply.send("stopping\n".into());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if !self.node.handlers.wait_idle(deadline) || running > 0 {
            log::warn!("grace period over with work still running; it resumes on the next start");
        }
        for m in &self.methods {
            m.flush(&self.node.context());
        }
        let mut journal = self.node.journal();
        if let Err(e) = journal.sync() {
            self.node.stop_if_unusable(&journal);
            log::error!("journal: cannot sync at shutdown: {e}");
        }
        log::info!("stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOMENT: Duration = Duration::from_millis(10);

    #[test]
    fn a_failure_a_restart_can_help_is_restarted_sooner_then_later_and_always_reported() {
        let mut f = Failures::default();
        let mut last = Duration::ZERO;
        for n in 1..=12 {
            let r = f.on_failure(false, MOMENT);
            assert!(r.report, "failure {n} not reported");
            assert!(
                r.after >= last.min(MAX_BACKOFF),
                "failure {n}: {r:?} after {last:?}"
            );
            assert!(
                r.after <= MAX_BACKOFF + MAX_BACKOFF / 4,
                "failure {n}: {r:?}"
            );
            last = r.after;
        }
        assert!(
            last >= MAX_BACKOFF,
            "never reached the longest pause: {last:?}"
        );
        // A minute of healthy running: the next failure starts from the shortest pause.
        let r = f.on_failure(false, HEALTHY + MOMENT);
        assert!(r.after < Duration::from_secs(1), "{r:?}");
    }

    #[test]
    fn a_fatal_failure_waits_long_and_is_reported_once_until_the_process_runs_well_again() {
        let mut f = Failures::default();
        let first = f.on_failure(true, MOMENT);
        assert_eq!(
            first,
            Restart {
                after: FATAL_RESTART,
                report: true
            }
        );
        // Failing at once after each try: no loop, and no report again.
        for _ in 0..5 {
            assert_eq!(
                f.on_failure(true, MOMENT),
                Restart {
                    after: FATAL_RESTART,
                    report: false
                }
            );
        }
        // A failure a restart can help in between is its own, and reported.
        assert!(f.on_failure(false, MOMENT).report);
        assert!(!f.on_failure(true, MOMENT).report);
        // After a healthy run, a fatal failure is news again.
        assert!(f.on_failure(true, HEALTHY + MOMENT).report);
    }
}
