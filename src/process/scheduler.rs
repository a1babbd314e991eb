//! The scheduler: runs the schedules this node keeps ([`crate::schedule`]) when they are
//! due, each run on a handler thread like a received message (so `--maxConcurrentHandlers`
//! bounds them too), its result sent back as a result message. It sleeps until the next
//! run is due, a schedule is added or stopped, or the node stops: an idle node with no
//! schedule never wakes for it.

use super::{Failure, Process, State};
use crate::files::unix_millis;
use crate::methods::{Method, Outcome};
use crate::node::Node;
use crossbeam_channel::{select, Receiver};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

pub struct Scheduler {
    pub node: Arc<Node>,
    pub state: Arc<State>,
}

impl Process for Scheduler {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), Failure> {
        let methods: Vec<Arc<dyn Method>> = crate::methods::registry();
        let changed = self.node.schedules.changed();
        loop {
            let (due, next) = self.node.schedules.due(unix_millis());
            let mut due = due.into_iter();
            while let Some(schedule) = due.next() {
                let name = schedule.name();
                let run = schedule.running.unwrap_or(schedule.next);
                let request = schedule.request;
                let id = request.id.clone();
                let method = methods
                    .iter()
                    .find(|m| m.name() == request.message.method)
                    .cloned();
                let node = self.node.clone();
                let started = self.node.handlers.run(stop, "schedule", move || {
                    let outcome = match method {
                        Some(m) => {
                            catch_unwind(AssertUnwindSafe(|| m.handle(&request, &node.context())))
                                .unwrap_or_else(|_| {
                                    Outcome::error(format!("method {} panicked", m.name()))
                                })
                        }
                        None => {
                            Outcome::error(format!("{} is not served here", request.message.method))
                        }
                    };
                    if !outcome.streamed {
                        if let Err(e) = node.send_result_of(&request, &outcome) {
                            log::error!("{name}: cannot send the result of its run: {e}");
                        }
                    }
                    node.schedules.done(&request.id, run, unix_millis());
                });
                if !started {
                    // Stopping: the runs not started are skipped, not left marked running.
                    let now = unix_millis();
                    self.node.schedules.done(&id, run, now);
                    for s in due {
                        self.node
                            .schedules
                            .done(&s.request.id, s.running.unwrap_or(s.next), now);
                    }
                    return Ok(());
                }
            }
            let waiting = self.node.schedules.list().len();
            self.state.set(match next {
                Some(at) => format!(
                    "{waiting} schedule(s); next run {}",
                    crate::files::rfc3339(at)
                ),
                None => format!("{waiting} schedule(s)"),
            });
            let timer = next.map_or_else(crossbeam_channel::never, |at| {
                let at = UNIX_EPOCH + Duration::from_millis(at);
                let wait = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                crossbeam_channel::after(wait)
            });
            select! {
                recv(stop) -> _ => return Ok(()),
                recv(changed) -> _ => {},
                recv(timer) -> _ => {},
            }
        }
    }
}
