//! Central's Hello bookkeeping for a fleet: `n` trusted nodes say Hello (as each node does
//! every `--helloInterval`), then `n` more from names central does not trust. What it costs
//! central to keep up: how long until every node shows in `/metrics` and in
//! `hello-nodes.json`, how often that file was rewritten meanwhile (at most once a second,
//! however many Hellos arrive; in the second round, when only the nodes' times change, as
//! often as steward's byte budget for the file allows), how large `/metrics` grows and how long one scrape takes,
//! and central's memory.

use super::{flag, trust_simulated, Agent, Row};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn rows(broker: &str, n: usize) -> Vec<Row> {
    let root = tempfile::tempdir().unwrap();
    // Trusted before central starts, as a fleet's keys are: a trusted.txt of 10,000 keys
    // changed under a running node is read again (about 70 ms, all verification waiting),
    // which alone drops the first ~50 Hellos of a burst.
    std::fs::create_dir_all(root.path().join("central/keys")).unwrap();
    let identities = trust_simulated(root.path(), n);
    let central = Agent::start("central", broker, root.path());
    // The senders' own link counted too: what was in it when it broke is gone.
    let sender_cuts = Arc::new(AtomicUsize::new(0));
    let cuts = sender_cuts.clone();
    let conn = nats::Options::new()
        .disconnect_callback(move || {
            cuts.fetch_add(1, Ordering::Relaxed);
        })
        .connect(broker)
        .unwrap();
    let file = central.dir.join("hello-nodes.json");
    let lines = |page: &str| {
        page.matches("\nsteward_node_last_hello_age_seconds{")
            .count()
    };
    let mut out = Vec::new();
    std::thread::scope(|s| {
        for round in ["first", "second"] {
            let t = Instant::now();
            let since = steward::files::unix_millis();
            let mut writes = Writes::since(&file);
            let dropped_before = dropped_so_far(&central);
            let handled_before = central.metric(HANDLED);
            let sender =
                s.spawn(|| say_hello(&conn, &identities, (0..n).map(|i| format!("node{i}"))));
            // The file read again only when rewritten (parsing it at every look would take
            // a core), central's count of drops every 100 looks. Done when every Hello is
            // in the file or was dropped; past 30 s (and, in the second round, when every
            // node is in the file already and only their times change, the wait that
            // steward's byte budget for the file allows: a 10,000-node file about once a
            // minute), what is still missing is said in the
            // row, and the rest of the benchmark goes on.
            let (mut fresh_in_file, mut dropped, mut looks) = (0, 0, 0u64);
            let budget = match round {
                "second" => Duration::from_secs_f64(
                    std::fs::metadata(&file).map_or(0, |m| m.len()) as f64
                        / steward::methods::hello::REFRESH_BYTES_PER_SEC as f64,
                ),
                _ => Duration::ZERO,
            };
            let allowed = Duration::from_secs(30) + budget;
            let deadline = t + allowed;
            while fresh_in_file + dropped < n && Instant::now() < deadline {
                if writes.look(&file) {
                    fresh_in_file = fresh(&file, since);
                }
                looks += 1;
                if looks % 100 == 0 {
                    dropped = dropped_so_far(&central) - dropped_before;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let secs = t.elapsed().as_secs_f64();
            sender.join().unwrap();
            let dropped = dropped_so_far(&central) - dropped_before;
            let missing = n.saturating_sub(fresh_in_file + dropped);
            // What could explain missing ones: refusals, or central's link dropped (a
            // client the server finds too slow is disconnected, and what it was sent
            // meanwhile is gone: a Hello is published once).
            let refused = central
                .metric("steward_messages_received_total{method=\"Hello\",outcome=\"refused\"}");
            let reconnects = central.metric("steward_broker_reconnects_total");
            // Handled this round, and not taken (the disk below its floor): whether the
            // missing ones reached the method, or the file is behind what it took.
            let handled = central.metric(HANDLED) - handled_before;
            let deferred = central
                .metric("steward_messages_received_total{method=\"Hello\",outcome=\"deferred\"}");
            let missing = match missing {
                0 => String::new(),
                m => format!(
                    " / **{m} missing after {:.0} s** (handled this round: {handled:.0}, refused so far: {refused:.0}, not taken: {deferred:.0}, central's reconnects: {reconnects:.0}, the senders' link cut: {} times; {fresh_in_file} in the file)",
                    allowed.as_secs_f64(),
                    sender_cuts.load(Ordering::Relaxed)
                ),
            };
            // The last changes reach the file within a second of the one before.
            let settle = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < settle {
                let _ = writes.look(&file);
                std::thread::sleep(Duration::from_millis(1));
            }
            // Looked at every millisecond or so: a gap may read up to that much short.
            let closest = writes.closest.map(|c| c.as_secs_f64());
            out.push(Row {
                what: format!(
                    "Hello from {n} nodes at {:.0}/s ({round} round): all in hello-nodes.json (s) / writes of it / Hellos dropped",
                    rate()
                ),
                steward: format!(
                    "{secs:.2} / {} in {:.1} s, {} / {dropped}{missing}",
                    writes.count,
                    t.elapsed().as_secs_f64(),
                    closest.map_or("one".into(), |c| format!("≥ {c:.2} s apart"))
                ),
                bare: String::new(),
                ratio: String::new(),
                target: flag(
                    closest.is_none_or(|c| c >= 0.99) && dropped == 0 && missing.is_empty(),
                    "≤ 1 write/s, none dropped",
                ),
            });
        }
    });
    // Made-up names: refused at the door (no key), no line in /metrics.
    say_hello(&conn, &identities, (0..n).map(|i| format!("stranger{i}")));
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let page = central.metrics_page();
    let scrape_ms = t.elapsed().as_secs_f64() * 1000.0;
    let labelled = lines(&page);
    out.push(Row {
        what: format!(
            "/metrics with {n} nodes (+{n} Hellos from unknown names): lines per node, size (MB), scrape (ms)"
        ),
        steward: format!(
            "{labelled} hello lines, {:.2} MB, {scrape_ms:.0} ms",
            page.len() as f64 / 1e6
        ),
        bare: String::new(),
        ratio: String::new(),
        target: flag(labelled == n, "one line per trusted node"),
    });
    out.push(Row {
        what: format!("central after {n} nodes' Hellos: RSS (MB) / threads"),
        steward: central.footprint(),
        bare: String::new(),
        ratio: String::new(),
        target: String::new(),
    });
    out
}

/// Each name publishes one Hello to central, signed with the simulated nodes' key, as the
/// hello process does: [`PER_TICK`] every 2 ms, 5,000 a second (a fleet of 10,000 all
/// saying Hello within two seconds, as after the broker comes back; at the 30 s interval
/// they are 333 a second). Central verifies each signature: on these 2 cores, shared
/// with the broker and this benchmark's signing, 10,000 a second (`STEWARD_BENCH_HELLO_RATE`)
/// dropped 4 of the first 10,000 in a run, and none of the next; a burst past what it
/// keeps up with overflows the subscription's queue and the Hellos dropped are counted (a
/// node dropped is seen at its next Hello).
const PER_TICK: usize = 10;

/// Hellos a second: `STEWARD_BENCH_HELLO_RATE`, else 5,000.
fn rate() -> f64 {
    std::env::var("STEWARD_BENCH_HELLO_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5000.0)
}

fn say_hello(
    conn: &nats::Connection,
    identities: &[steward::keys::Identity],
    names: impl Iterator<Item = String>,
) {
    let subject = "central.EventNACK.Hello";
    let mut tick = Instant::now();
    // The `i`th name with the `i`th node's key: its own for `node<i>`; for a stranger, a
    // key central trusts for another name.
    for (i, (name, identity)) in names.zip(identities.iter().cycle()).enumerate() {
        if i > 0 && i % PER_TICK == 0 {
            conn.flush().unwrap();
            tick += Duration::from_secs_f64(PER_TICK as f64 / rate());
            std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        }
        let now = steward::files::unix_millis();
        let envelope = steward::message::Envelope {
            id: format!("{name}-hello-{now}-{}", steward::keys::random_hex128()),
            from_node: name.clone(),
            accepted: now,
            reply_ticket: None,
            grant: None,
            message: steward::message::Message::new(
                "central",
                steward::message::Kind::EventNack,
                "Hello",
                vec![format!("hello 1 from {name}")],
            ),
        }
        .encode();
        let sealed = identity.seal(steward::keys::Scope::request(subject, None), &envelope);
        conn.publish_with_reply_or_headers(subject, None, Some(&sealed.headers), &envelope)
            .unwrap();
    }
    conn.flush().unwrap();
}

/// Central's count of Hellos handled.
const HANDLED: &str = "steward_messages_received_total{method=\"Hello\",outcome=\"ok\"}";

/// Hellos central's client dropped, its queue for the method full (as counted so far).
fn dropped_so_far(central: &Agent) -> usize {
    central.metric("steward_subscription_dropped_total{method=\"Hello\"}") as usize
}

/// Nodes whose last Hello in the file is `since` (ms since the epoch) or later.
fn fresh(file: &Path, since: u64) -> usize {
    let Some(nodes) = std::fs::read(file).ok().and_then(|b| {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&b).ok()
    }) else {
        return 0;
    };
    nodes
        .values()
        .filter(|v| v["lastSeenUnixMs"].as_u64().is_some_and(|ms| ms >= since))
        .count()
}

/// Rewrites of a file replaced atomically, seen by looking often.
struct Writes {
    inode: Option<(u64, i64, i64)>,
    count: usize,
    last: Option<Instant>,
    /// The shortest time between two writes seen.
    closest: Option<Duration>,
}

impl Writes {
    /// Counting from the file as it is now.
    fn since(file: &Path) -> Writes {
        Writes {
            inode: inode(file),
            count: 0,
            last: None,
            closest: None,
        }
    }

    /// Whether the file was rewritten since the last look.
    fn look(&mut self, file: &Path) -> bool {
        let Some(inode) = inode(file) else {
            return false;
        };
        let rewritten = self.inode != Some(inode);
        if rewritten {
            let now = Instant::now();
            if let Some(last) = self.last {
                let gap = now - last;
                self.closest = Some(self.closest.map_or(gap, |c| c.min(gap)));
            }
            self.inode = Some(inode);
            self.count += 1;
            self.last = Some(now);
        }
        rewritten
    }
}

/// The file's inode and modification time: a rewrite may get the inode number the one
/// before it freed, never the same time too.
fn inode(file: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file)
        .ok()
        .map(|m| (m.ino(), m.mtime(), m.mtime_nsec()))
}
