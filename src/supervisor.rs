//! The supervisor: one thread that owns the process table.
//!
//! It spawns a publisher for each destination subject (lane) the first time a message for
//! it is journaled; from then on the publisher takes its lane's messages from the journal
//! itself, woken by [`Node::accept`](crate::node::Node::accept). It restarts any process
//! that fails or panics, after a growing pause, and reports the failure to the central
//! error logger. A failure on one subject never touches another subject's lane. On
//! shutdown it stops every process, gives in-flight work a grace period, and makes the
//! journal durable.
//!
//! It talks to the rest of the node only through [`Event`]s on one channel.

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
    /// The process table as text, for `--profilingPort`.
    Status(Sender<String>),
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
    /// Failures in a row without a minute of healthy running in between; sets the backoff.
    failures: u32,
    started: Instant,
    thread: Option<JoinHandle<()>>,
    restart_at: Option<Instant>,
    /// A publisher's lane, and its wake-up.
    lane: Option<(Subject, Sender<()>)>,
}

pub struct Supervisor {
    node: Arc<Node>,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    table: BTreeMap<String, ProcessEntry>,
    /// Dropped to stop every process: the stop channel's sender, and the write end of the
    /// [`StopFd`]'s pipe.
    stop_tx: Option<(Sender<()>, Option<OwnedFd>)>,
    stop: Receiver<()>,
    stop_fd: StopFd,
    methods: Vec<Arc<dyn Method>>,
}

impl Supervisor {
    pub fn new(node: Arc<Node>, events: Receiver<Event>, events_tx: Sender<Event>) -> Supervisor {
        let (stop_tx, stop) = crossbeam_channel::bounded(0);
        let (stop_fd, stop_fd_tx) = StopFd::new();
        Supervisor {
            node,
            events,
            events_tx,
            table: BTreeMap::new(),
            stop_tx: Some((stop_tx, stop_fd_tx)),
            stop,
            stop_fd,
            methods: Vec::new(),
        }
    }

    /// Starts the node's fixed processes: the inbox, the control socket, a subscriber per
    /// method, hello.
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
        if let Some(interval) = self.node.config.hello_interval {
            let node = self.node.clone();
            self.add("hello".into(), None, move |state| {
                Box::new(process::hello::Hello {
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
            failures: 0,
            started: Instant::now(),
            thread: None,
            restart_at: None,
            lane,
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
        match process::spawn(
            name.to_string(),
            e.generation,
            (e.recipe)(),
            self.stop.clone(),
            self.events_tx.clone(),
            e.state.clone(),
        ) {
            Ok(handle) => {
                e.thread = Some(handle);
                self.node.metrics.processes.inc();
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
        if let Some((_, wake)) = self.table.get(&name).and_then(|e| e.lane.as_ref()) {
            let _ = wake.try_send(());
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
        }
        if e.started.elapsed() > Duration::from_secs(60) {
            e.failures = 0;
        }
        e.failures += 1;
        e.restarts += 1;
        let delay = crate::retry::backoff(e.failures, Duration::from_secs(30));
        e.restart_at = Some(Instant::now() + delay);
        self.node.metrics.restarts.inc();
        let why = failure.map_or_else(|| "ended unexpectedly".into(), |f| f.to_string());
        self.node.report_error(format!(
            "{}: process {name} failed: {why}; restarting in {:.1}s",
            self.node.config.node,
            delay.as_secs_f64()
        ));
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
            let due = [upkeep_at, self.next_restart()].into_iter().flatten().min();
            let timer = due.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
            crossbeam_channel::select! {
                recv(self.events) -> event => match event {
                    Ok(Event::Publish(lanes)) => lanes.into_iter().for_each(|l| self.publish(l)),
                    Ok(Event::Exited { name, generation, failure }) => self.exited(name, generation, failure),
                    Ok(Event::Status(reply)) => { let _ = reply.send(self.status()); }
                    Ok(Event::Shutdown) | Err(_) => break,
                },
                recv(upkeep) -> _ => {
                    upkeep_at.get_or_insert_with(|| Instant::now() + UPKEEP_EVERY);
                },
                recv(timer) -> _ => {
                    self.restart_due();
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
        drop(self.stop_tx.take());
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
            m.flush(&self.node);
        }
        let mut journal = self.node.journal();
        if let Err(e) = journal.sync() {
            self.node.stop_if_unusable(&journal);
            log::error!("journal: cannot sync at shutdown: {e}");
        }
        log::info!("stopped");
    }
}
