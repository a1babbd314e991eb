//! Which nodes have just said Hello: wake-ups for publishers pausing between attempts.

use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::sync::Mutex;

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
