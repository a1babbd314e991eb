//! The supervisor: one thread that owns the process table.
//!
//! It spawns a publisher for a destination subject (lane) when a message for it is
//! journaled and none runs (see `lanes`: idle publishers end, at most `--maxPublishers`
//! run at once); the publisher takes its lane's messages from the journal itself, woken by
//! [`Node::accept`](crate::node::Node::accept). A failure on one subject
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
//!
//! # The files
//!
//! - this one: the process table, the loop over [`Event`]s and timers, starting the node's
//!   fixed processes (and the `late replies` process while replies to messages given up
//!   are awaited) and launching any process, a process that exited, and shutdown;
//! - `restart`: what a failure decides (the pause before the restart, whether central
//!   hears of it), a rule without threads or clock, tested alone;
//! - `lanes`: a publisher per lane, started when the lane has work and at most
//!   `--maxPublishers` at a time; the lanes waiting their turn; publishers that gave their
//!   thread up, parked until their pause is over;
//! - `stop`: `OpProcessStop`, and the processes it may not stop ([`MUST_STAY`]);
//! - `status`: the process table as text.

use crate::methods::Method;
use crate::node::Node;
use crate::process::{self, publisher, subscriber, Failure, Process, State, StopFd};
use crate::subject::Subject;
use crossbeam_channel::{Receiver, Sender};
use lanes::Waiting;
use restart::Failures;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod lanes;
mod restart;
mod status;
mod stop;

pub use restart::{FATAL_RESTART, MAX_BACKOFF};
pub use stop::{NotStopped, Stopped, MUST_STAY};

pub enum Event {
    /// Messages wait in the journal for these lanes, which have no publisher yet.
    Publish(Vec<Subject>),
    /// A process ended (with why, if it failed); its thread waits for the next one.
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
    Parked {
        lane: Subject,
        until: Instant,
        /// The publisher's Hello waiter, taken when its pause began: disconnected if its
        /// node said Hello since.
        hello: crate::node::Waiter,
    },
    /// A node some parked lane goes to said Hello: its lanes wait their turn now, ahead of
    /// those whose pause is over (see [`crate::node::Presence`]).
    Hello(String),
    /// A message was given up after a send its node may have taken: its late reply is
    /// awaited, by the `late replies` process, started if it does not run.
    AwaitLate,
    /// SIGINT or SIGTERM.
    Shutdown,
}

/// While the journal has upkeep waiting, how often the supervisor does it: finishes are
/// durable within this.
const UPKEEP_EVERY: Duration = Duration::from_millis(500);

/// How to make (and remake) a process.
type Recipe = Box<dyn Fn() -> Box<dyn Process>>;

struct ProcessEntry {
    recipe: Recipe,
    state: Arc<State>,
    generation: u64,
    restarts: u32,
    failures: Failures,
    started: Instant,
    /// None while it does not run: a publisher parked, stopped, ended with its lane in line
    /// again (`--maxPublishers`), or waiting to be restarted.
    thread: Option<process::Running>,
    restart_at: Option<Instant>,
    /// A publisher's lane, and its wake-up.
    lane: Option<(Subject, Sender<()>)>,
    /// Dropped to stop this process alone (all are dropped at shutdown).
    stop: Option<Sender<()>>,
    /// Who stopped it (`OpProcessStop`): then it is not restarted; a publisher starts again
    /// with its lane's next message, a subscriber with the agent's next start.
    stopped_by: Option<String>,
    /// A stopped publisher's lane had work again before it ended: start it again once it
    /// has (never two on one lane).
    resume: bool,
    /// A publisher that gave its thread up (`Event::Parked`): its lane waits its turn
    /// again from then; its slot (the message and its attempts) stays here.
    parked_until: Option<Instant>,
    /// Its node said Hello while the parked publisher was still ending: in line at once.
    woken: bool,
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
    waiting: Waiting,
    /// Parked publishers by the node their lane goes to, for its next Hello (stale names
    /// are passed over then).
    parked_for: HashMap<String, HashSet<String>>,
    /// Publisher threads running, and the most since memory was last handed back.
    publishers: usize,
    publishers_peak: usize,
    /// When a process's restart or a parked lane's pause is due, soonest first, so the loop
    /// finds its next timer without walking a table of 10,000 lanes for every event. An
    /// entry whose time has changed since (launched early, stopped) is passed over when it
    /// comes round.
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    /// The threads the processes run on.
    threads: process::Threads,
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
            waiting: Waiting::default(),
            parked_for: HashMap::new(),
            publishers: 0,
            publishers_peak: 0,
            timers: BinaryHeap::new(),
            threads: process::Threads::default(),
        }
    }

    /// Starts the node's fixed processes: the inbox, the control socket, a subscriber per
    /// method, the scheduler, hello; and `late replies` if an earlier run left any awaited.
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
        // Late replies an earlier run awaited (a command given up before a restart may
        // still answer).
        if publisher::LateReplies::load(&self.node) {
            self.start_late_replies();
        }
    }

    /// Starts the `late replies` process, unless it runs (or waits for its restart).
    fn start_late_replies(&mut self) {
        let name = publisher::LATE_REPLIES;
        match self.table.get(name) {
            Some(e) if e.thread.is_some() || e.restart_at.is_some() => {}
            Some(_) => self.launch(name),
            None => {
                let node = self.node.clone();
                self.add(name.into(), None, move |state| {
                    Box::new(publisher::LateReplies::new(node.clone(), state))
                });
            }
        }
    }

    /// Puts process `name` in the table and starts it.
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
            woken: false,
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
        e.woken = false;
        let lane = e.lane.as_ref().map(|(lane, _)| lane.clone());
        if let Some(lane) = lane {
            // Running now, so out of line if it was in it (a restart, or a thread free
            // before its turn): never both.
            self.waiting.remove(&lane);
            self.unparked(&lane.node, name);
        }
        let Some(e) = self.table.get_mut(name) else {
            return;
        };
        let (stop_tx, stop) = crossbeam_channel::bounded(0);
        e.stop = Some(stop_tx);
        match self.threads.spawn(
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
                let at = Instant::now() + Duration::from_secs(1);
                e.restart_at = Some(at);
                self.timers.push(Reverse((at, name.to_string())));
            }
        }
    }

    fn exited(&mut self, name: String, generation: u64, failure: Option<Failure>) {
        let Some(e) = self.table.get_mut(&name) else {
            return;
        };
        if e.generation != generation {
            return;
        }
        if e.thread.take().is_some() {
            self.node.metrics.processes.dec();
            if e.lane.is_some() {
                self.publishers -= 1;
            }
        }
        if let Some(by) = &e.stopped_by {
            e.state.set(format!("stopped by OpProcessStop from {by}"));
            if e.resume {
                self.resume_in_turn(&name);
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
            // unless its lane had work again meanwhile. A parked one's message waits in its
            // slot, here: its pause first (new work waits behind that message anyway).
            if let Some(until) = e.parked_until {
                let woken = std::mem::take(&mut e.woken);
                e.state.set(
                    "waiting for its turn (--maxPublishers): its message pauses between attempts",
                );
                if woken {
                    // Its node said Hello as the publisher ended.
                    e.parked_until = None;
                    if let Some((lane, _)) = e.lane.clone() {
                        self.unparked(&lane.node, &name);
                        self.waiting.push(lane);
                    }
                } else {
                    // Its timer again: it may have come while the thread was ending.
                    self.timers.push(Reverse((until, name)));
                }
                self.next_waiting();
            } else if e.resume {
                self.resume_in_turn(&name);
            } else {
                if let Some((lane, _)) = e.lane.clone() {
                    self.unparked(&lane.node, &name);
                }
                self.table.remove(&name);
                self.next_waiting();
            }
            return;
        }
        if failure.is_none() && name == publisher::LATE_REPLIES {
            // Nothing was awaited: gone from the table, unless something is again.
            if !self.node.broker.late.is_empty() {
                self.launch(&name);
            } else {
                self.table.remove(&name);
            }
            return;
        }
        // Ended without an error, though not told to stop: restarted as it always was.
        let failure = failure.unwrap_or_else(|| Failure::retry("ended unexpectedly"));
        let fatal = failure.is_fatal();
        let restart = e.failures.on_failure(fatal, e.started.elapsed());
        e.restarts += 1;
        let at = Instant::now() + restart.after;
        e.restart_at = Some(at);
        self.timers.push(Reverse((at, name.clone())));
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

    /// Restarts the processes whose restart is due, and puts the parked lanes whose pause
    /// is over in line for a thread.
    fn timers_due(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, name))) = self.timers.pop() else {
                break;
            };
            due.push(name);
        }
        due.sort();
        due.dedup();
        for name in due {
            let Some(e) = self.table.get_mut(&name) else {
                continue;
            };
            if e.restart_at.is_some_and(|t| t <= now) {
                if let Some((lane, _)) = e
                    .lane
                    .clone()
                    .filter(|_| self.publishers >= self.node.config.max_publishers)
                {
                    // Its thread was taken meanwhile by a lane that waited: in line again.
                    log::info!("restarting process {name} in its turn (--maxPublishers)");
                    e.restart_at = None;
                    self.waiting.push(lane);
                    continue;
                }
                log::info!("restarting process {name}");
                self.launch(&name);
            } else if e.thread.is_none()
                && e.stopped_by.is_none()
                && e.parked_until.is_some_and(|t| t <= now)
            {
                e.parked_until = None;
                if let Some((lane, _)) = &e.lane {
                    self.waiting.push_again(lane.clone());
                }
            }
        }
        self.next_waiting();
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

    /// When the next restart or parked lane is due, if one is (or was: see `timers`).
    fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Runs until shutdown; returns once in-flight work has finished or the grace is over.
    /// Sleeps until an event comes, or a timer is due: a restart, or the journal's upkeep
    /// (within [`UPKEEP_EVERY`] of the word that it has some, and again while it has).
    pub fn run(mut self) {
        let upkeep = self.node.journal_upkeep();
        let mut upkeep_at: Option<Instant> = None;
        loop {
            let due = [upkeep_at, self.next_timer()].into_iter().flatten().min();
            let timer = due.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
            crossbeam_channel::select! {
                recv(self.events) -> event => match event {
                    Ok(Event::Publish(lanes)) => lanes.into_iter().for_each(|l| self.publish(l)),
                    Ok(Event::Exited { name, generation, failure }) => self.exited(name, generation, failure),
                    Ok(Event::Status(reply)) => { let _ = reply.send(self.status()); }
                    Ok(Event::Stop { name, by, reply }) => { let _ = reply.send(self.stop_one(&name, &by)); }
                    Ok(Event::Parked { lane, until, hello }) => self.parked(lane, until, &hello),
                    Ok(Event::Hello(node)) => self.hello(&node),
                    Ok(Event::AwaitLate) => self.start_late_replies(),
                    Ok(Event::Shutdown) | Err(_) => break,
                },
                recv(upkeep) -> _ => {
                    upkeep_at.get_or_insert_with(|| Instant::now() + UPKEEP_EVERY);
                },
                recv(timer) -> _ => {
                    self.timers_due();
                    if upkeep_at.is_some_and(|at| at <= Instant::now()) {
                        self.keep_journal();
                        // Its own words (the journal unsynced halfway) are stale now. Then
                        // the word may be given again: one given from here on stays in the
                        // channel (drained before, it could be lost for good), and the look
                        // gives it itself if some upkeep is left.
                        let _ = upkeep.try_recv();
                        self.node.journal_upkept();
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
            log::warn!(
                "grace period over with work still running: any command still running is killed, and not run again (its sender is answered so when it tries again, or asks again for the reply of a message it gave up); messages not yet delivered, and copies, go on at the next start"
            );
        }
        // Commands run in process groups of their own, out of reach of what stops the
        // agent: without this, one still running would outlive it, orphaned.
        crate::methods::cli_command::kill_running();
        let late_running = self
            .table
            .get(publisher::LATE_REPLIES)
            .is_some_and(|e| e.thread.is_some());
        if !late_running {
            publisher::LateReplies::at_stop(self.node.clone());
        }
        for m in &self.methods {
            m.flush(&self.node.context());
        }
        // The counters of what the handlers admitted after their subscribers stopped: a
        // Hello has no id record behind its counter.
        self.node.trusted.persist_senders(true);
        let mut journal = self.node.journal();
        if let Err(e) = journal.sync() {
            self.node.stop_if_unusable(&journal);
            log::error!("journal: cannot sync at shutdown: {e}");
        }
        log::info!("stopped");
    }
}
