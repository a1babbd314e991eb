//! Publishers for lanes. A lane with messages and no publisher gets one, which keeps
//! going while it has work; an idle publisher ends after `--keepPublishersAliveFor`.
//! At most `--maxPublishers` run at once: a lane beyond that waits its turn in [`Waiting`],
//! and while any waits, idle publishers are asked to end now. A lane in line for its first
//! thread is only a name in [`Waiting`] (a table row, its channel and slot are a couple of
//! kilobytes, and a command to 50,000 nodes puts 49,000 in line: 85 MB): the process table
//! lists it all the same, with how many lanes are ahead of it, and `OpProcessStop` takes
//! it out of line, so an operator sees and can stop it before it ever had a thread. A
//! publisher with a row and no thread (stopped, ended, parked) in line says so in its
//! row. A publisher whose lane's
//! first message pauses between attempts gives its thread up while lanes wait
//! ([`Event::Parked`](super::Event::Parked)): it is parked, its slot (the message and its
//! attempts) kept in the table, and its lane waits its turn again once the pause is over,
//! or at once when its node says Hello ([`Event::Hello`](super::Event::Hello)), with the
//! lanes of new work, which go first.

use super::Supervisor;
use crate::process::publisher;
use crate::subject::Subject;
use crossbeam_channel::{Receiver, TryRecvError};
use std::cmp::Reverse;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

/// A publisher's state while its lane is in line for a thread: its row in the process
/// table (which adds how many lanes are ahead of it).
pub(super) const IN_LINE: &str = "waiting for a publisher thread (--maxPublishers)";

/// Lanes with messages and no publisher, waiting their turn (`--maxPublishers`), each
/// once: lanes with new work (or whose node just said Hello) first, in the order they
/// came, then lanes whose first message paused between attempts and may try again. So a
/// node that answers is never queued behind a thousand that do not, each holding a thread
/// for an attempt's timeout.
#[derive(Default)]
pub(super) struct Waiting {
    lanes: VecDeque<Subject>,
    again: VecDeque<Subject>,
    queued: HashSet<Subject>,
    /// Turns given since the last to a lane trying again: one in [`AGAIN_EVERY`] is, so
    /// that a steady stream of new work does not keep them waiting for ever.
    turns: u32,
}

/// One turn in this many goes to a lane trying again, when lanes of new work wait too.
const AGAIN_EVERY: u32 = 4;

/// Which of [`Waiting`]'s two lines the next turn goes to.
enum Line {
    NewWork,
    Again,
}

/// The rule for the next turn, `turns` counting those given since one went to a lane trying
/// again: shared by [`Waiting::pop`] and [`Waiting::ahead`], so that the count of lanes
/// ahead an operator reads is the order the turns come in. None when no lane waits.
fn next_turn(turns: &mut u32, new_work: bool, again: bool) -> Option<Line> {
    *turns = turns.saturating_add(1);
    if again && (*turns >= AGAIN_EVERY || !new_work) {
        *turns = 0;
        Some(Line::Again)
    } else {
        new_work.then_some(Line::NewWork)
    }
}

impl Waiting {
    /// Puts `lane` at the back of the lanes with new work, unless it waits already.
    pub(super) fn push(&mut self, lane: Subject) {
        if self.queued.insert(lane.clone()) {
            self.lanes.push_back(lane);
        }
    }

    /// As [`Waiting::push`]; one waiting to try again moves there (its node said Hello).
    pub(super) fn push_up(&mut self, lane: Subject) {
        if let Some(at) = self.again.iter().position(|l| *l == lane) {
            self.again.remove(at);
            self.queued.remove(&lane);
        }
        self.push(lane);
    }

    /// Puts `lane`, whose pause between attempts is over, at the back of those, unless it
    /// waits already.
    pub(super) fn push_again(&mut self, lane: Subject) {
        if self.queued.insert(lane.clone()) {
            self.again.push_back(lane);
        }
    }

    /// Takes `lane` out of line (stopped by an operator, or started before its turn):
    /// whether it was in it.
    pub(super) fn remove(&mut self, lane: &Subject) -> bool {
        if !self.queued.remove(lane) {
            return false;
        }
        self.lanes.retain(|l| l != lane);
        self.again.retain(|l| l != lane);
        true
    }

    fn pop(&mut self) -> Option<Subject> {
        let new_work = !self.lanes.is_empty();
        let lane = match next_turn(&mut self.turns, new_work, !self.again.is_empty())? {
            Line::NewWork => self.lanes.pop_front(),
            Line::Again => self.again.pop_front(),
        }?;
        self.queued.remove(&lane);
        Some(lane)
    }

    /// Each lane in line, with how many lanes get their turn before it: the order
    /// [`Waiting::pop`] gives them in, worked out without taking them.
    pub(super) fn ahead(&self) -> HashMap<&Subject, usize> {
        let (mut lanes, mut again) = (self.lanes.iter().peekable(), self.again.iter().peekable());
        let mut turns = self.turns;
        let mut ahead = HashMap::with_capacity(self.len());
        while let Some(line) = next_turn(&mut turns, lanes.peek().is_some(), again.peek().is_some())
        {
            let lane = match line {
                Line::NewWork => lanes.next(),
                Line::Again => again.next(),
            };
            if let Some(lane) = lane {
                ahead.insert(lane, ahead.len());
            }
        }
        ahead
    }

    pub(super) fn len(&self) -> usize {
        self.lanes.len() + self.again.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lanes.is_empty() && self.again.is_empty()
    }
}

impl Supervisor {
    /// Starts a publisher for a lane with messages waiting, unless it has one.
    pub(super) fn publish(&mut self, lane: Subject) {
        let name = format!("publisher {lane}");
        let ending = !self.node.serves_lane(&lane);
        let full = self.publishers >= self.node.config.max_publishers;
        if let Some(e) = self.table.get_mut(&name) {
            match (&e.stopped_by, &e.thread) {
                // Stopped by an operator, or ending idle, and its lane has work again:
                // started again once its thread has ended.
                (Some(_), Some(_)) => e.resume = true,
                (None, Some(_)) if ending => e.resume = true,
                // Parked (gave its thread up) while its first message pauses: the pause
                // first (its timer, or its node's Hello, puts it in line).
                (_, None) if e.parked_until.is_some_and(|t| t > Instant::now()) => {}
                // In line, stopped or ended, and its lane has work: a thread, in its turn
                // past the cap.
                (_, None) if full => self.in_line(&name),
                (_, None) => self.resume(&name),
                (None, _) => {
                    if let Some((_, wake)) = &e.lane {
                        let _ = wake.try_send(());
                    }
                }
            }
            return;
        }
        if full {
            // Its turn comes when a publisher ends (idle ones are asked to end now).
            self.waiting.push(lane);
            self.want_publishers(true);
            return;
        }
        // A wake-up waits at most one deep: a publisher looks at the journal after each.
        let (wake_tx, wake) = crossbeam_channel::bounded(1);
        let in_flight = publisher::InFlight::default();
        let node = self.node.clone();
        let subject = lane.clone();
        let make = move |state| -> Box<dyn crate::process::Process> {
            Box::new(publisher::Publisher {
                subject: subject.clone(),
                node: node.clone(),
                wake: wake.clone(),
                in_flight: in_flight.clone(),
                state,
            })
        };
        self.node.serve_lane(lane.clone(), wake_tx.clone());
        log::debug!("spawning {name}");
        self.add(name, Some((lane, wake_tx)), make);
    }

    /// Puts publisher `name`, which has no thread, in line for one (`--maxPublishers`),
    /// saying so in its row. One an operator stopped is no longer: its lane had work again,
    /// and `OpProcessStop` takes it out of line again.
    fn in_line(&mut self, name: &str) {
        let Some(e) = self.table.get_mut(name) else {
            return;
        };
        let Some((lane, _)) = &e.lane else {
            return;
        };
        e.stopped_by = None;
        e.state.set(IN_LINE);
        self.waiting.push(lane.clone());
        self.want_publishers(true);
    }

    /// A publisher gave its thread up until `until` (see [`Event::Parked`](super::Event::Parked)),
    /// or until its node says Hello. Not one an operator stopped meanwhile: it stays stopped.
    pub(super) fn parked(&mut self, lane: Subject, until: Instant, hello: &Receiver<()>) {
        let name = format!("publisher {lane}");
        if let Some(e) = self.table.get_mut(&name) {
            if e.stopped_by.is_some() {
                return;
            }
            e.parked_until = Some(until);
            // Told from now on; one that came since the pause began is in the waiter.
            self.node.presence.parked(&lane.node);
            if matches!(hello.try_recv(), Err(TryRecvError::Disconnected)) {
                e.woken = true;
            }
            self.parked_for
                .entry(lane.node.clone())
                .or_default()
                .insert(name.clone());
            self.timers.push(Reverse((until, name)));
        }
    }

    /// `name`, a publisher of a lane to `node`, is no longer parked (it runs again, or is
    /// gone).
    pub(super) fn unparked(&mut self, node: &str, name: &str) {
        if let Some(names) = self.parked_for.get_mut(node) {
            names.remove(name);
            if names.is_empty() {
                self.parked_for.remove(node);
                self.node.presence.unparked(node);
            }
        }
    }

    /// `node` said Hello: its parked lanes wait their turn now, with the lanes of new work
    /// (one whose publisher is still ending, once it has).
    pub(super) fn hello(&mut self, node: &str) {
        for name in self.parked_for.remove(node).unwrap_or_default() {
            let Some(e) = self.table.get_mut(&name) else {
                continue;
            };
            let Some((lane, _)) = &e.lane else {
                continue;
            };
            if e.stopped_by.is_some() {
                continue;
            }
            if e.thread.is_some() {
                e.woken = true;
                continue;
            }
            log::info!("{lane}: {node} said Hello; in line to try again now");
            e.parked_until = None;
            self.waiting.push_up(lane.clone());
        }
        self.next_waiting();
    }

    /// Starts a publisher whose lane had work again while it ended, in its turn if
    /// the cap is reached.
    pub(super) fn resume_in_turn(&mut self, name: &str) {
        if self.publishers < self.node.config.max_publishers {
            self.resume(name);
            return;
        }
        self.in_line(name);
    }

    /// Lanes waiting for a publisher get one while there is room; once none waits, idle
    /// publishers idle again, and the memory a burst of them took is handed back.
    pub(super) fn next_waiting(&mut self) {
        while self.publishers < self.node.config.max_publishers {
            let Some(lane) = self.waiting.pop() else {
                break;
            };
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

    /// Starts a publisher that has no thread (in line, stopped, ended), its lane served and
    /// woken, and out of line if it was in it (a thread came free before its turn).
    pub(super) fn resume(&mut self, name: &str) {
        let Some((lane, wake)) = self.table.get(name).and_then(|e| e.lane.clone()) else {
            return;
        };
        self.node.serve_lane(lane, wake.clone());
        self.launch(name);
        let _ = wake.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Kind;

    #[test]
    fn lanes_with_new_work_go_before_lanes_trying_again_each_once() {
        let lane = |n: &str| Subject::new(n, Kind::CommandAck, "CLICommand").unwrap();
        let mut w = Waiting::default();
        for n in ["away1", "away2"] {
            w.push_again(lane(n));
        }
        w.push(lane("ship1"));
        w.push_again(lane("away1"));
        w.push(lane("ship2"));
        assert_eq!(w.len(), 4);
        let order: Vec<String> = std::iter::from_fn(|| w.pop()).map(|l| l.node).collect();
        assert_eq!(order, ["ship1", "ship2", "away1", "away2"]);
        assert!(w.is_empty());
        // One trying again whose node said Hello moves up; new work alone does not.
        w.push_again(lane("away1"));
        w.push_again(lane("away2"));
        w.push(lane("away2"));
        assert_eq!(w.pop().unwrap().node, "away1", "new work waits its pause");
        w.push_again(lane("away1"));
        w.push_up(lane("away2"));
        assert_eq!(w.len(), 2);
        assert_eq!(w.pop().unwrap().node, "away2");
        assert_eq!(w.pop().unwrap().node, "away1");
        // Under a steady stream of new work, those trying again still get one turn in four.
        w.push_again(lane("away1"));
        for i in 0..8 {
            w.push(lane(&format!("new{i}")));
        }
        let order: Vec<String> = std::iter::from_fn(|| w.pop()).map(|l| l.node).collect();
        let at = order.iter().position(|n| n == "away1").unwrap();
        assert!(at < AGAIN_EVERY as usize, "{order:?}");
        // One stopped by an operator leaves the line, wherever it waits.
        w.push(lane("ship1"));
        w.push_again(lane("away1"));
        assert!(w.remove(&lane("away1")) && !w.remove(&lane("away1")));
        assert_eq!(w.len(), 1);
        assert_eq!(w.pop().unwrap().node, "ship1");
        assert!(w.pop().is_none());
    }

    /// What the process table says of a lane in line (how many lanes are ahead of it) is
    /// the order the turns come in, lanes trying again among new work.
    #[test]
    fn the_lanes_ahead_of_one_are_those_whose_turn_comes_first() {
        let lane = |n: &str| Subject::new(n, Kind::CommandAck, "CLICommand").unwrap();
        let mut w = Waiting::default();
        assert!(w.ahead().is_empty());
        w.push_again(lane("away1"));
        for i in 0..6 {
            w.push(lane(&format!("new{i}")));
        }
        w.push_again(lane("away2"));
        w.pop();
        let ahead: HashMap<String, usize> = w
            .ahead()
            .into_iter()
            .map(|(l, n)| (l.node.clone(), n))
            .collect();
        let order: Vec<String> = std::iter::from_fn(|| w.pop()).map(|l| l.node).collect();
        assert_eq!(order.len(), 7);
        for (n, node) in order.iter().enumerate() {
            assert_eq!(ahead[node], n, "{node} in {order:?}");
        }
        assert!(order.iter().position(|n| n == "away1") < order.iter().position(|n| n == "new5"));
    }
}
