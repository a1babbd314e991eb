//! The scheduler: runs the schedules this node keeps ([`crate::schedule`]) when they are
//! due, each run on a handler thread like a received message (so `--maxConcurrentHandlers`
//! bounds them too), its result sent back as a result message. Before each run the
//! message passes the gate's last step again ([`admission::still_allowed`]), and again once
//! the run has a handler place (a stop or a revocation while it waited for one holds): a
//! sender whose key was revoked, or who may no longer call the method, ends its schedule;
//! a method not ready for work, or a disk below its floor (a run's result is journaled
//! here), skips the run. It sleeps until the next run is due, a schedule is added or
//! stopped, or the node stops: an idle node with no schedule never wakes for it.

use super::{Failure, Process, State};
use crate::admission::{self, Policy, Served};
use crate::files::unix_millis;
use crate::methods::{Method, Outcome};
use crate::node::Node;
use crate::schedule::Schedule;
use crossbeam_channel::{select, Receiver};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

pub struct Scheduler {
    pub node: Arc<Node>,
    pub state: Arc<State>,
}

impl Scheduler {
    /// The method a due run is for, if it may run now: its sender still allowed to call it
    /// with the key that signed it (else the schedule ends, reported), and the method ready
    /// for work (else this run is skipped: a disk below its floor).
    fn allowed(&self, methods: &[Arc<dyn Method>], s: &Schedule) -> Option<Arc<dyn Method>> {
        let node = &self.node;
        let request = &s.request;
        let run = s.running.unwrap_or(s.next);
        let skip = |why: String| {
            log::warn!("{}: run skipped: {why}", s.name());
            node.schedules
                .done(&request.from_node, &request.id, run, unix_millis());
            None
        };
        let Some(method) = methods.iter().find(|m| m.name() == request.message.method) else {
            return skip(format!("{} is not served here", request.message.method));
        };
        if !still_allowed(node, method.as_ref(), s) {
            return None;
        }
        if let Err(why) = method.ready(&node.context(), 0) {
            return skip(why.to_string());
        }
        // Each run's result is journaled here until its sender has it (a week, if it is
        // away): below the floor the space left is for what is in flight, so the run is
        // skipped, as runs are while the node is down.
        // Said once until runs go again (a schedule every second would say it every second).
        static BELOW_FLOOR: AtomicBool = AtomicBool::new(false);
        if let Err(why) = node.log_budget.check_free_space(&node.data.root) {
            if !BELOW_FLOOR.swap(true, Ordering::Relaxed) {
                log::warn!("schedules: runs skipped while {why}");
            }
            node.schedules
                .done(&request.from_node, &request.id, run, unix_millis());
            return None;
        }
        if BELOW_FLOOR.swap(false, Ordering::Relaxed) {
            log::info!("schedules: room on the disk again; runs go on");
        }
        Some(method.clone())
    }
}

/// Whether `s`'s sender may still call its method with the key that signed it; if not, the
/// schedule ends, reported.
fn still_allowed(node: &Node, method: &dyn Method, s: &Schedule) -> bool {
    let served = Served {
        method: method.name(),
        kinds: method.kinds(),
        senders: method.senders(),
    };
    let policy = Policy::of(&node.config);
    let request = &s.request;
    let why = match s.key.is_empty() {
        true => Some(format!(
            "kept by an earlier version, which did not record the key that signed it; {} may send it again",
            request.from_node
        )),
        false => admission::still_allowed(&policy, &node.trusted, &served, request, &s.key),
    };
    let Some(why) = why else {
        return true;
    };
    let _ = node.schedules.stop(&request.id);
    node.report_error(format!("{}: {} ended: {why}", node.config.node, s.name()));
    false
}

/// The longest the scheduler waits before it reads the wall clock again.
const LOOK_AGAIN: Duration = Duration::from_secs(60);

impl Process for Scheduler {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), Failure> {
        let methods: Vec<Arc<dyn Method>> = crate::methods::registry();
        let changed = self.node.schedules.changed();
        loop {
            let (due, next) = self.node.schedules.due(unix_millis());
            let mut due = due.into_iter();
            while let Some(schedule) = due.next() {
                let Some(method) = self.allowed(&methods, &schedule) else {
                    continue;
                };
                let name = schedule.name();
                let run = schedule.running.unwrap_or(schedule.next);
                let (from, id) = (
                    schedule.request.from_node.clone(),
                    schedule.request.id.clone(),
                );
                let node = self.node.clone();
                let started = self.node.handlers.run(stop, "schedule", move || {
                    // Looked at again once a place is had: the wait for one (every place
                    // held by other runs) may be long, and a stop or a revocation meanwhile
                    // holds (the run started once a place was free, minutes after "stopped
                    // for good").
                    if !node
                        .schedules
                        .kept(&schedule.request.from_node, &schedule.request.id)
                    {
                        log::info!("{name}: stopped while its run waited for a place; not run");
                        return;
                    }
                    if !still_allowed(&node, method.as_ref(), &schedule) {
                        return;
                    }
                    let request = schedule.request;
                    let outcome = catch_unwind(AssertUnwindSafe(|| {
                        method.handle(&request, &node.context())
                    }))
                    .unwrap_or_else(|_| {
                        Outcome::error(format!("method {} panicked", method.name()))
                    });
                    if !outcome.streamed {
                        if let Err(e) = node.send_result_of(&request, &outcome) {
                            log::error!("{name}: cannot send the result of its run: {e}");
                        }
                    }
                    node.schedules
                        .done(&request.from_node, &request.id, run, unix_millis());
                });
                if !started {
                    // Stopping: the runs not started are skipped, not left marked running.
                    let now = unix_millis();
                    self.node.schedules.done(&from, &id, run, now);
                    for s in due {
                        let run = s.running.unwrap_or(s.next);
                        self.node
                            .schedules
                            .done(&s.request.from_node, &s.request.id, run, now);
                    }
                    return Ok(());
                }
            }
            let waiting = self.node.schedules.count();
            self.state.set(match next {
                Some(at) => format!(
                    "{waiting} schedule(s); next run {}",
                    crate::files::rfc3339(at)
                ),
                None => format!("{waiting} schedule(s)"),
            });
            // Runs are due by the wall clock, the timer counts the monotonic one: a wait of
            // at most a minute, then the wall clock is read again, so a clock set forward
            // (a Pi without a real-time clock boots in 1970, then NTP sets it) delays a run
            // by a minute at most, not by the jump.
            let timer = next.map_or_else(crossbeam_channel::never, |at| {
                let at = UNIX_EPOCH + Duration::from_millis(at);
                let wait = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                crossbeam_channel::after(wait.min(LOOK_AGAIN))
            });
            select! {
                recv(stop) -> _ => return Ok(()),
                recv(changed) -> _ => {},
                recv(timer) -> _ => {},
            }
        }
    }
}
