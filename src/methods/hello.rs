//! `Hello`: every node tells the central node "I'm here" periodically, as an EventNACK (see
//! [`crate::process::hello`]). The receiving node keeps each node's last-seen time in
//! `hello-nodes.json`, rewritten atomically at most once a second however large the fleet
//! (changes are batched and written on the subscriber's tick, which runs while a change
//! waits, and when the node stops); once every node in it is known, as their times move on
//! alone, no more than [`REFRESH_BYTES_PER_SEC`] on average (the whole file is written
//! each time, and fsync'd: a second at a time, a 10,000-node central wrote 1 MB a second,
//! some 86 GB a day, to what is often a Pi's SD card), and
//! wakes any publisher pausing before its next attempt to reach that node. Only nodes this
//! node trusts get a `steward_node_last_hello_age_seconds` line in `/metrics`, so a sender
//! cannot grow the page with made-up names; at start that line comes from the file, so a
//! node that went silent before this one restarted keeps its line, and its age grows. A
//! file that cannot be read is set aside (`hello-nodes.json.bad`), not written over.

use super::Context;
use super::{Method, Outcome};
use crate::message::Envelope;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Hello {
    seen: Mutex<Roster>,
    /// Held while hello-nodes.json is written (a tick on a handler thread, the flush at
    /// stop): one writer at a time.
    file: Mutex<()>,
}

#[derive(Default)]
struct Roster {
    loaded: bool,
    /// Hellos taken, and how many of them the file holds: it is behind while they differ.
    changes: u64,
    saved: u64,
    /// When hello-nodes.json was last written, and how many bytes.
    written: Option<Instant>,
    written_bytes: usize,
    /// A node the file does not hold yet said Hello: written within [`WRITE_EVERY`].
    new_names: bool,
    /// The last write failed (a full disk): said once, not at every try (each second).
    failing: bool,
    /// Node → milliseconds since the epoch of its last Hello.
    last: BTreeMap<String, u64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LastSeen {
    #[serde(rename = "lastSeen")]
    last_seen: String,
    #[serde(rename = "lastSeenUnixMs")]
    last_seen_unix_ms: u64,
}

/// How a node's first Hello since its start begins ([`crate::process::hello`]).
pub const FIRST: &str = "hello 1";

/// hello-nodes.json is rewritten at most this often, however many nodes say Hello.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);
/// When the nodes that said Hello are all in the file, which only their times would
/// change, it is rewritten no more than this many bytes a second on average: a fleet of a
/// hundred (10 kB) every second still, of 10,000 (1.1 MB) about once a minute. Their ages
/// in `/metrics` are live whatever the file says; it is what a start (and an operator)
/// reads.
pub const REFRESH_BYTES_PER_SEC: usize = 16 << 10;

impl Roster {
    /// Whether the file should be written now: something changed, and not within
    /// [`WRITE_EVERY`] of the last write, nor, if no node is new, within what
    /// [`REFRESH_BYTES_PER_SEC`] allows for the bytes last written (unless `now_anyway`,
    /// when the node stops).
    fn due(&self, now: Instant, now_anyway: bool) -> bool {
        let wait = match self.new_names {
            true => WRITE_EVERY,
            false => WRITE_EVERY.max(Duration::from_secs_f64(
                self.written_bytes as f64 / REFRESH_BYTES_PER_SEC as f64,
            )),
        };
        self.changes != self.saved
            && (now_anyway || self.written.is_none_or(|at| now.duration_since(at) >= wait))
    }
}

/// The last-seen times `hello-nodes.json` holds (node → milliseconds since the epoch). A
/// file that cannot be read or is not such a map is said and set aside
/// (`hello-nodes.json.bad`), not written over with the Hellos of this run alone.
pub fn read_roster(path: &Path) -> BTreeMap<String, u64> {
    let set_aside = |why: String| {
        crate::files::set_aside(path, &why, "nodes' last Hellos start afresh");
        BTreeMap::new()
    };
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<BTreeMap<String, LastSeen>>(&bytes) {
            Ok(file) => file
                .into_iter()
                .map(|(n, e)| (n, e.last_seen_unix_ms))
                .collect(),
            Err(e) => set_aside(e.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => set_aside(e.to_string()),
    }
}

impl Hello {
    /// Writes hello-nodes.json if due; returns whether changes are still unwritten. Only
    /// the copy of the roster is made under its lock: the file (1 MB for 10,000 nodes) is
    /// formatted and written, fsync'd, while Hellos go on being taken.
    fn write(&self, ctx: &Context, now_anyway: bool) -> bool {
        let _writing = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let (last, changes, new_names) = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if !seen.due(now, now_anyway) {
                return seen.changes != seen.saved;
            }
            seen.written = Some(now);
            let new_names = std::mem::take(&mut seen.new_names);
            (seen.last.clone(), seen.changes, new_names)
        };
        let file: BTreeMap<&String, LastSeen> = last
            .iter()
            .map(|(n, &ms)| {
                (
                    n,
                    LastSeen {
                        last_seen: crate::files::rfc3339(ms),
                        last_seen_unix_ms: ms,
                    },
                )
            })
            .collect();
        let json = serde_json::to_vec_pretty(&file).expect("a map of strings serializes");
        let result = crate::files::write_atomically(&ctx.data.hello_nodes(), &json);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                if std::mem::take(&mut seen.failing) {
                    log::info!("{}: written again", ctx.data.hello_nodes().display());
                }
                seen.saved = changes;
                seen.written_bytes = json.len();
                // The next is a second after this one was in place, not after it began:
                // a slower write then a faster one would otherwise replace the file twice
                // within a second (0.98 s apart, measured).
                seen.written = Some(Instant::now());
            }
            Err(e) => {
                // Tried again as soon as a new name would be.
                seen.new_names |= new_names;
                if !std::mem::replace(&mut seen.failing, true) {
                    log::error!(
                        "cannot write {}: {e}; tried again each second (said again once written)",
                        ctx.data.hello_nodes().display()
                    )
                }
            }
        }
        seen.changes != seen.saved
    }
}

impl Method for Hello {
    fn name(&self) -> &'static str {
        "Hello"
    }

    fn kinds(&self) -> &'static [crate::message::Kind] {
        super::EVENTS
    }

    fn senders(&self) -> super::Senders {
        super::Senders::Fleet
    }

    /// A Hello twice sets the same time: nothing to record, no fsync per Hello.
    fn remembered(&self) -> bool {
        false
    }

    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        // A node's Hello process numbers its Hellos from 1 at the node's start (`hello 1
        // from ship1`): a first one says the node restarted (see `LateReplies`).
        let first = (envelope.message.data.first())
            .is_some_and(|d| d.starts_with(FIRST) && d[FIRST.len()..].starts_with(" from "));
        ctx.presence.seen(&envelope.from_node, first);
        // A metric label per name any sender can make up would grow /metrics without end.
        if ctx.trusted.knows(&envelope.from_node) {
            ctx.metrics.hello(&envelope.from_node);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.loaded {
            seen.loaded = true;
            seen.last = read_roster(&ctx.data.hello_nodes());
        }
        let is_new = !seen.last.contains_key(&envelope.from_node);
        seen.last
            .insert(envelope.from_node.clone(), crate::files::unix_millis());
        seen.changes += 1;
        if is_new {
            seen.new_names = true;
            log::info!("first Hello from {}", envelope.from_node);
        }
        // Written from `tick`, at most once a second, not here: a flood of new names
        // would otherwise rewrite (and fsync) the whole file for each.
        Outcome::ok("hello")
    }

    fn tick(&self, ctx: &Context) -> bool {
        self.write(ctx, false)
    }

    fn flush(&self, ctx: &Context) {
        self.write(ctx, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_written_at_most_once_a_second() {
        let t = Instant::now();
        let mut seen = Roster::default();
        assert!(!seen.due(t, false), "nothing changed");
        seen.changes = 1;
        assert!(seen.due(t, false), "never written yet");
        seen.written = Some(t);
        assert!(!seen.due(t + Duration::from_millis(500), false));
        assert!(
            seen.due(t + Duration::from_millis(500), true),
            "the node stops"
        );
        assert!(seen.due(t + WRITE_EVERY, false));
    }

    /// Once every node is in the file, only their times change: the file (1.1 MB for
    /// 10,000 nodes) is rewritten no more than 16 KiB a second on average, not every
    /// second; a new node is written within a second whatever the file's size; a small
    /// file is written every second still.
    #[test]
    fn known_nodes_times_are_written_by_the_file_s_size_and_a_new_node_within_a_second() {
        let t = Instant::now();
        let mut seen = Roster {
            changes: 2,
            saved: 1,
            written: Some(t),
            written_bytes: 1_100_000,
            ..Roster::default()
        };
        let minute = Duration::from_secs(1_100_000 / REFRESH_BYTES_PER_SEC as u64);
        assert!(!seen.due(t + WRITE_EVERY, false));
        assert!(!seen.due(t + minute - WRITE_EVERY, false));
        assert!(seen.due(t + minute + WRITE_EVERY, false));
        assert!(seen.due(t, true), "the node stops");
        seen.new_names = true;
        assert!(seen.due(t + WRITE_EVERY, false), "a new node");
        seen.new_names = false;
        seen.written_bytes = 10_000;
        assert!(seen.due(t + WRITE_EVERY, false), "a hundred nodes");
    }
}
