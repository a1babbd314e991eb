//! A flood of input is taken at disk speed, with memory that does not follow the backlog.

use crate::common;
use common::{NatsServer, Node};
use std::time::Instant;

fn events(to: &str, range: std::ops::Range<usize>) -> String {
    let mut s = String::new();
    for chunk in range.collect::<Vec<_>>().chunks(1000) {
        s.push('[');
        for (k, i) in chunk.iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                "{{\"toNode\":\"{to}\",\"data\":[\"event {i} of the flood\\n\"],\"commandOrEvent\":\"EventACK\",\"method\":\"TextLogging\",\"ttl\":3600}}"
            ));
        }
        s.push_str("]\n");
    }
    s
}

/// Waits until the intake has handed back the memory its batches used, with `journaled`
/// messages in the journal. The inbox hands memory back when it has finished with a big
/// append, in the same turn that removes the taken file and before it waits for more input;
/// so once the file is gone, one more message taken in a later turn proves that turn over.
fn intake_settled(node: &Node, journaled: usize) {
    node.wait_taken();
    node.append_inmsg(&events("ship1", journaled..journaled + 1));
    node.wait_metric(
        &format!("journaled {} messages", journaled + 1),
        |n| n.metric("steward_journal_pending_messages"),
        |v| v >= (journaled + 1) as f64,
    );
}

#[test]
fn a_flood_of_100k_messages_is_journaled_with_bounded_memory() {
    let nats = NatsServer::start();
    // ship1 is away: everything stays queued, which is the worst case for memory.
    let central = Node::start("central", &nats.address(), &[]);
    let pending = "steward_journal_pending_messages";
    central.append_inmsg(&events("ship1", 0..10_000));
    let t = Instant::now();
    while central.metric(pending) < 10_000.0 {
        assert!(t.elapsed().as_secs() < 60, "10k not journaled in a minute");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    intake_settled(&central, 10_000);
    let rss_10k = central.rss_kib();
    let t = Instant::now();
    central.append_inmsg(&events("ship1", 10_000..100_000));
    while central.metric(pending) < 100_000.0 {
        assert!(
            t.elapsed().as_secs() < 120,
            "100k not journaled in two minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let took = t.elapsed();
    intake_settled(&central, 100_001);
    let rss_100k = central.rss_kib();
    let written = central.metric("steward_journal_written_bytes_total");
    eprintln!(
        "[flood] 90000 messages journaled in {:.2}s ({:.0}/s, debug build); RSS {} KiB at 10k queued, {} KiB at 100k; journal {:.0} bytes written per message",
        took.as_secs_f64(),
        90_000.0 / took.as_secs_f64(),
        rss_10k,
        rss_100k,
        written / 100_000.0
    );
    // Held in memory, 90,000 more messages would take well over 30 MB (their JSON alone is
    // 17 MB); the journal locates a window of each lane's messages and leaves the rest on
    // disk, so memory stays where it was (allocator slack aside).
    assert!(
        rss_100k < rss_10k + 4 * 1024,
        "memory grew {} KiB for 90k more queued messages",
        rss_100k.saturating_sub(rss_10k)
    );
    assert!(
        written / 100_000.0 < 400.0,
        "{written} journal bytes for 100k messages"
    );
    assert_eq!(central.read("inmsg.rejected.txt"), "");
}

/// Appends bigger than the inbox's batch: one array of 1.2 MB, and 3.5 MB written at once
/// and closed before the inbox is done with it. All taken, nothing rejected.
#[test]
fn appends_larger_than_a_batch_are_taken_whole() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let one_array = events("ship1", 0..10_000).replace("]\n[", ",");
    assert!(
        one_array.len() > 1 << 20 && one_array.lines().count() == 1,
        "{} bytes, {} lines",
        one_array.len(),
        one_array.lines().count()
    );
    central.append_inmsg(&one_array);
    central.append_inmsg(&events("ship1", 10_000..40_000));
    let pending = "steward_journal_pending_messages";
    let t = Instant::now();
    while central.metric(pending) < 40_000.0 {
        assert!(
            t.elapsed().as_secs() < 60,
            "{} of 40000 journaled; rejected: {}",
            central.metric(pending),
            central.read("inmsg.rejected.txt").len()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The inbox is done with both appends: nothing more will be journaled.
    central.wait_taken();
    assert_eq!(central.metric(pending), 40_000.0);
    assert_eq!(central.read("inmsg.rejected.txt"), "");
}

/// While every handler is busy, what arrives for a node queues in its NATS client; that
/// queue is bounded per subscription, so a flood (here 600 × 256 KiB, 150 MiB, of unsigned
/// messages from a raw client) costs the node at most the bound, and the node goes on
/// answering afterwards. Unbounded, the whole flood sat in memory.
#[test]
fn a_flood_while_the_handlers_are_busy_queues_a_bounded_amount() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &["--maxConcurrentHandlers=1"]);
    let central = Node::start("central", &nats.address(), &[]);
    // The one handler is kept busy until the test is done measuring.
    central.append_inmsg(
        "[{\"toNode\":\"ship1\",\"data\":[\"sh\",\"-c\",\"touch busy; until [ -e done ]; do sleep 0.05; done; echo slept\"],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\",\"timeout\":60}]\n",
    );
    ship1.wait_until("busy", "existed", |_| ship1.path("busy").exists());
    let before = ship1.rss_kib();
    let flood = nats::connect(nats.address()).unwrap();
    let payload = vec![b'x'; 256 * 1024];
    // With a header block, as every signed message has (the client's drop count once
    // missed those).
    let mut headers = nats::header::HeaderMap::new();
    headers.insert("Steward-Sig", "forged");
    for _ in 0..600 {
        flood
            .publish_with_reply_or_headers(
                "ship1.EventNACK.TextLogging",
                None,
                Some(&headers),
                &payload,
            )
            .unwrap();
    }
    flood.flush().unwrap();
    // The broker has handed ship1 the whole flood: its client has read it all (kept or
    // dropped), bar what the socket's buffers hold.
    let flood_bytes = 600 * payload.len() as u64;
    common::wait_until("the broker delivered the flood to ship1", || {
        nats.connection_of("ship1").is_some_and(|c| {
            c["out_bytes"].as_u64().unwrap_or(0) >= flood_bytes
                && c["pending_bytes"].as_u64() == Some(0)
        })
    });
    let grown = ship1.rss_kib().saturating_sub(before);
    eprintln!("[subscription_bound] rss grew by {grown} KiB during the flood");
    assert!(
        grown < 80 * 1024,
        "a 150 MiB flood grew ship1 by {grown} KiB: it queued without a bound"
    );
    // The flood is behind it: the busy command ends and is answered, the drops counted.
    std::fs::write(ship1.path("done"), "").unwrap();
    central.wait_for("replies/ship1.CLICommand.log", "slept");
    central.append_inmsg(&common::command("ship1", &["echo", "after the flood"]));
    central.wait_for("replies/ship1.CLICommand.log", "after the flood");
    // Counted at the TextLogging subscriber's next look, once the queue it kept is handled
    // (after the command above, or before: the two wait for the one place).
    ship1.wait_metric(
        "counted the drops",
        |n| n.metric("steward_subscription_dropped_total{method=\"TextLogging\"}"),
        |v| v > 0.0,
    );
}
