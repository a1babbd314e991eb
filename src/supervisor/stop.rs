//! `OpProcessStop`: an operator stops one publisher, subscriber or schedule; and the
//! processes it may not stop, so that a node stays reachable to be put right.

use super::Supervisor;

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

impl Supervisor {
    /// `OpProcessStop`: stops a publisher or a subscriber, not to be restarted (see
    /// [`ProcessEntry::stopped_by`](super::ProcessEntry::stopped_by)), or a schedule, for
    /// good (its stop is written to schedules.json). The node's own processes (inbox,
    /// control socket, scheduler, hello) and the subscribers in [`MUST_STAY`] cannot be
    /// stopped: a node must stay reachable to be put right.
    pub(super) fn stop_one(&mut self, name: &str, by: &str) -> Result<Stopped, NotStopped> {
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
            // A lane in line for its first thread: taken out of line (it has no row).
            let lane = name
                .strip_prefix("publisher ")
                .map(crate::subject::Subject::parse);
            if let Some(Ok(lane)) = lane {
                if self.waiting.remove(&lane) {
                    log::warn!("{name} stopped by OpProcessStop from {by}");
                    self.next_waiting();
                    return Ok(Stopped(format!("{name} on {node} stopped before it ran; its messages stay in the journal, and it starts with its lane's next message or the next start of {node}")));
                }
            }
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
        // No thread, and one to come: parked (its thread given up while it pauses), in
        // line for one (`--maxPublishers`), or waiting to be restarted after a failure. It
        // stays stopped (it said "not running", and ran again in its turn).
        let to_come = e.thread.is_none()
            && e.stopped_by.is_none()
            && (e.parked_until.take().is_some()
                | e.restart_at.take().is_some()
                | e.lane.as_ref().is_some_and(|(l, _)| self.waiting.remove(l)));
        if to_come {
            e.stopped_by = Some(by.to_string());
            e.state.set(format!("stopped by OpProcessStop from {by}"));
            log::warn!("{name} stopped by OpProcessStop from {by}");
            let lane = e.lane.clone();
            if let Some((lane, _)) = lane {
                self.unparked(&lane.node, name);
                // Its next message starts it again (a failed one's lane stayed served,
                // and its messages woke no one).
                self.node.unserve_lane(&lane);
            } else {
                return done(format!(
                    "{name} on {node} stopped until the next start of {node}"
                ));
            }
            return done(format!("{name} on {node} stopped; its messages stay in the journal, and it starts again with its lane's next message or the next start of {node}"));
        }
        if e.stopped_by.is_some() || e.thread.is_none() {
            return done(format!("{name} on {node} is not running"));
        }
        e.stopped_by = Some(by.to_string());
        e.restart_at = None;
        // Parked, its thread not ended yet: it stays stopped too, not back in line.
        e.parked_until = None;
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
}
