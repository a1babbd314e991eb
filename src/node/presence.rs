//! Which nodes have just said Hello: wake-ups for publishers pausing between attempts, and
//! for lanes whose publisher gave its thread up while they pause (parked: see the
//! supervisor's lanes).

use crate::supervisor::Event;
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which nodes have just said Hello, as wake-up signals for publishers pausing between
/// attempts to reach them. A waiter holds the receiving end of a node's channel; a Hello
/// drops the sending end, which wakes every waiter of that node at once. A node some
/// parked lane goes to is told to the supervisor instead, which has no thread waiting.
pub struct Presence {
    waiters: Mutex<HashMap<String, Signal>>,
    /// Nodes parked lanes go to, told to the supervisor at their next Hello.
    parked: Mutex<HashSet<String>>,
    /// When each node last said Hello (to this node: central, or whoever it says Hello to).
    last: Mutex<HashMap<String, Instant>>,
    supervisor: Sender<Event>,
}

/// Held sender, shared receiver: dropping the sender wakes every receiver.
type Signal = (Sender<()>, Receiver<()>);

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
    pub fn waiter(&self, node: &str) -> Receiver<()> {
        let mut map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(node.to_string())
            .or_insert_with(|| crossbeam_channel::bounded(0))
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
    pub fn heard_within(&self, node: &str, within: Duration) -> bool {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.get(node).is_some_and(|at| at.elapsed() < within)
    }

    /// `node` said Hello.
    pub fn seen(&self, node: &str) {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            match last.get_mut(node) {
                Some(at) => *at = Instant::now(),
                None => {
                    last.insert(node.to_string(), Instant::now());
                }
            }
        }
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
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
