//! `Hello`: every node tells the central node "I'm here" periodically, as an EventNACK (see
//! [`crate::process::hello`]). The receiving node keeps each node's last-seen time in
//! `hello-nodes.json`, rewritten atomically at most once a second however large the fleet,
//! and wakes any publisher pausing before its next attempt to reach that node.

use super::{Method, Outcome};
use crate::message::Envelope;
use crate::node::Node;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Hello {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    loaded: bool,
    dirty: bool,
    /// Node → milliseconds since the epoch of its last Hello.
    last: BTreeMap<String, u64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    #[serde(rename = "lastSeen")]
    last_seen: String,
    #[serde(rename = "lastSeenUnixMs")]
    last_seen_unix_ms: u64,
}

impl Hello {
    fn write(&self, node: &Node, seen: &mut Seen) {
        if !seen.dirty {
            return;
        }
        let file: BTreeMap<&String, Entry> = seen
            .last
            .iter()
            .map(|(n, &ms)| {
                (
                    n,
                    Entry {
                        last_seen: crate::files::rfc3339(ms),
                        last_seen_unix_ms: ms,
                    },
                )
            })
            .collect();
        let json = serde_json::to_vec_pretty(&file).expect("a map of strings serializes");
        match crate::files::write_atomically(&node.data.hello_nodes(), &json) {
            Ok(()) => seen.dirty = false,
            Err(e) => log::error!("cannot write {}: {e}", node.data.hello_nodes().display()),
        }
    }
}

impl Method for Hello {
    fn name(&self) -> &'static str {
        "Hello"
    }

    fn kinds(&self) -> &'static [crate::message::Kind] {
        super::EVENTS
    }

    fn handle(&self, envelope: &Envelope, node: &Node) -> Outcome {
        node.presence.seen(&envelope.from_node);
        node.metrics.hello(&envelope.from_node);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.loaded {
            seen.loaded = true;
            if let Ok(bytes) = std::fs::read(node.data.hello_nodes()) {
                if let Ok(file) = serde_json::from_slice::<BTreeMap<String, Entry>>(&bytes) {
                    seen.last = file
                        .into_iter()
                        .map(|(n, e)| (n, e.last_seen_unix_ms))
                        .collect();
                }
            }
        }
        let is_new = !seen.last.contains_key(&envelope.from_node);
        seen.last
            .insert(envelope.from_node.clone(), crate::files::unix_millis());
        seen.dirty = true;
        if is_new {
            log::info!("first Hello from {}", envelope.from_node);
            self.write(node, &mut seen);
        }
        Outcome::ok("hello")
    }

    fn tick(&self, node: &Node) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        self.write(node, &mut seen);
    }

    fn flush(&self, node: &Node) {
        self.tick(node)
    }
}
