//! Which nodes have just said Hello: wake-ups for publishers pausing between attempts, and
//! for lanes whose publisher gave its thread up while they pause (parked: see the
//! supervisor's lanes).

use crate::supervisor::Event;
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A signal that fires (disconnects) when a node next says Hello. Shared, so that a node's
/// entry is known to have no waiter left (only the table holds it) and can go.
pub type Waiter = Arc<Receiver<()>>;

/// Entries are looked over for names no one waits for once the table has doubled since
/// (and has at least this many).
const PRUNE_FROM: usize = 64;

/// Which nodes have just said Hello, as wake-up signals for publishers pausing between
/// attempts to reach them. A waiter holds the receiving end of a node's channel; a Hello
/// drops the sending end, which wakes every waiter of that node at once. A node some
/// parked lane goes to is told to the supervisor instead, which has no thread waiting.
pub struct Presence {
    waiters: Mutex<Waiters>,
    /// Nodes parked lanes go to, told to the supervisor at their next Hello.
    parked: Mutex<HashSet<String>>,
    /// When each node last said Hello (to this node: central, or whoever it says Hello to).
    last: Mutex<HashMap<String, Heard>>,
    supervisor: Sender<Event>,
}

/// When a node last said Hello, and when it last said its first since it started.
#[derive(Clone, Copy)]
struct Heard {
    last: Instant,
    started: Option<Instant>,
}

/// Held sender, shared receiver: dropping the sender wakes every receiver.
type Signal = (Sender<()>, Waiter);

/// The signals by node, and the table's size after it was last looked over: a publisher
/// takes a waiter for each attempt, and a node that never says Hello here (every one, on
/// a node that is not central) would otherwise keep its entry for ever.
#[derive(Default)]
struct Waiters {
    by_node: HashMap<String, Signal>,
    pruned_at: usize,
}

impl Presence {
    pub fn new(supervisor: Sender<Event>) -> Presence {
        Presence {
            waiters: Mutex::default(),
            parked: Mutex::default(),
            last: Mutex::default(),
            supervisor,
        }
    }

    /// A signal that fires when `node` next says Hello.
    pub fn waiter(&self, node: &str) -> Waiter {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if waiters.by_node.len() >= PRUNE_FROM.max(2 * waiters.pruned_at) {
            // Only the table holds these: no one waits for that node's Hello.
            waiters
                .by_node
                .retain(|_, (_, rx)| Arc::strong_count(rx) > 1);
            waiters.pruned_at = waiters.by_node.len();
        }
        waiters
            .by_node
            .entry(node.to_string())
            .or_insert_with(|| {
                let (tx, rx) = crossbeam_channel::bounded(0);
                (tx, Arc::new(rx))
            })
            .1
            .clone()
    }

    /// A lane to `node` is parked: its next Hello is told to the supervisor
    /// ([`Event::Hello`]).
    pub fn parked(&self, node: &str) {
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        if !parked.contains(node) {
            parked.insert(node.to_string());
        }
    }

    /// No lane to `node` is parked any more.
    pub fn unparked(&self, node: &str) {
        self.parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
    }

    /// Whether `node` said Hello within `within`: it runs, whatever a "no responders" on a
    /// reply inbox says (anyone on the broker can publish one; a Hello is signed).
    /// Whether `node` said Hello to this node at all in this run (only a node that
    /// Hellos go to hears them: central, by default).
    pub fn ever_heard(&self, node: &str) -> bool {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.contains_key(node)
    }

    pub fn heard_within(&self, node: &str, within: Duration) -> bool {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.get(node).is_some_and(|h| h.last.elapsed() < within)
    }

    /// When `node` last said Hello in this run, and when it last said its first Hello
    /// since it started (it restarted: what it ran when it stopped was interrupted).
    pub fn heard(&self, node: &str) -> (Option<Instant>, Option<Instant>) {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.get(node)
            .map_or((None, None), |h| (Some(h.last), h.started))
    }

    /// `node` said Hello; its first since it started if `first`.
    pub fn seen(&self, node: &str, first: bool) {
        {
            let now = Instant::now();
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let started = first.then_some(now);
            match last.get_mut(node) {
                Some(h) => {
                    h.last = now;
                    h.started = started.or(h.started);
                }
                None => {
                    last.insert(node.to_string(), Heard { last: now, started });
                }
            }
        }
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_node
            .remove(node);
        let parked = self
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
        if parked {
            let _ = self.supervisor.send(Event::Hello(node.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publisher takes a waiter for every attempt to every node it sends to; a node that
    /// never says Hello here (every node, on a node that is not central) must not keep an
    /// entry for ever once no one waits for it.
    #[test]
    fn names_no_one_waits_for_are_not_kept_for_ever() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let presence = Presence::new(tx);
        let kept = presence.waiter("kept");
        for i in 0..10_000 {
            drop(presence.waiter(&format!("ghost{i}")));
        }
        let left = presence.waiters.lock().unwrap().by_node.len();
        assert!(left < 100, "{left} entries for names no one waits for");
        // The one still waited for still fires at its Hello.
        presence.seen("kept", false);
        assert!(kept.recv().is_err());
    }
}
