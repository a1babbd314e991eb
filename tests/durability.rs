//! Nothing lost: the sender killed and restarted, the broker stopped and restarted, a
//! graceful stop with work pending. Every test counts what was sent, delivered, duplicated.

use crate::common;
use common::{command, report, NatsServer, Node};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Counts how often each numbered command ran on the receiver (lines of `ran.txt`).
fn runs(node: &Node) -> BTreeMap<usize, usize> {
    let mut m = BTreeMap::new();
    for l in node.read("ran.txt").lines() {
        *m.entry(l.parse().unwrap()).or_insert(0) += 1;
    }
    m
}

/// Waits until central holds the reply of every numbered command in `range`.
fn wait_every_reply(central: &Node, range: std::ops::Range<usize>) -> String {
    central.wait_until("replies/ship1.CLICommand.log", "had every reply", |t| {
        range.clone().all(|i| t.contains(&format!("\ndone-{i}\n")))
    })
}

/// Runs beyond the first, summed over every command.
fn duplicates(ran: &BTreeMap<usize, usize>) -> usize {
    ran.values().map(|c| c - 1).sum()
}

/// EventACK TextLogging messages to `to`, one array each, whose text is `<label><i>`.
/// ship1, and a central that retries quickly and long: for killing ship1 under load.
fn receiver_and_patient_sender(nats: &NatsServer) -> (Node, Node) {
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start(
        "central",
        &nats.address(),
        &["--defaultMessageTimeout=2", "--defaultMessageRetries=30"],
    );
    (ship1, central)
}

fn numbered_commands(to: &str, range: std::ops::Range<usize>) -> String {
    range
        .map(|i| {
            command(
                to,
                &["sh", "-c", &format!("echo {i} >> ran.txt; echo done-{i}")],
            )
        })
        .collect()
}

#[test]
fn a_sender_killed_mid_flight_resumes_and_loses_nothing() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::start("central", &nats.address(), &[]);
    let n = 400;
    central.append_inmsg(&numbered_commands("ship1", 0..n));
    central.wait_count("replies/ship1.CLICommand.log", "status=Ok", 20);
    central.kill9();
    let before = central
        .read("replies/ship1.CLICommand.log")
        .matches("status=Ok")
        .count();
    central.restart();
    let replies = wait_every_reply(&central, 0..n);
    common::settle(&central, &ship1, "CLICommand");
    let ran = runs(&ship1);
    let duplicates = duplicates(&ran);
    report("sender_kill9", n, ran.len(), duplicates);
    assert!(before < n, "the kill came too late to test anything");
    assert_eq!(ran.len(), n, "some commands never ran");
    assert_eq!(
        duplicates,
        0,
        "commands ran twice: {:?}",
        ran.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
    assert!(replies.contains("done-0\n"));
}

#[test]
fn the_broker_stopped_and_restarted_loses_nothing() {
    let mut nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start(
        "central",
        &nats.address(),
        &["--defaultMessageTimeout=2", "--defaultMessageRetries=20"],
    );
    central.append_inmsg(&numbered_commands("ship1", 0..10));
    central.wait_count("replies/ship1.CLICommand.log", "status=Ok", 10);
    nats.stop();
    // Taken and journaled while the broker is away.
    central.append_inmsg(&numbered_commands("ship1", 10..30));
    central.wait_metric(
        "journaled the 20",
        |c| c.metric("steward_journal_pending_messages"),
        |v| v == 20.0,
    );
    // Both nodes know their broker is gone before it comes back.
    for node in [&central, &ship1] {
        node.wait_metric(
            "saw the broker go",
            |n| n.metric("steward_broker_connected"),
            |v| v == 0.0,
        );
    }
    nats.restart();
    wait_every_reply(&central, 0..30);
    let ran = runs(&ship1);
    let duplicates = duplicates(&ran);
    report("broker_restart", 30, ran.len(), duplicates);
    assert_eq!(ran.len(), 30);
    assert_eq!(duplicates, 0);
    assert!(central.metric("steward_broker_reconnects_total") >= 1.0);
}

#[test]
fn a_node_started_before_its_broker_sends_when_the_broker_comes() {
    let mut nats = NatsServer::start();
    nats.stop();
    let central = Node::start_unconnected(
        "central",
        &nats.address(),
        &["--defaultMessageTimeout=2", "--defaultMessageRetries=20"],
    );
    central.append_inmsg(&command("ship1", &["echo", "waited for the broker"]));
    central.wait_metric(
        "journaled the command",
        |c| c.metric("steward_journal_pending_messages"),
        |v| v == 1.0,
    );
    nats.restart();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    central.wait_for("replies/ship1.CLICommand.log", "waited for the broker");
}

#[test]
fn sigterm_stops_cleanly_and_unfinished_work_resumes_on_the_next_start() {
    let nats = NatsServer::start();
    let mut central = Node::start(
        "central",
        &nats.address(),
        &["--defaultMessageTimeout=1", "--defaultMessageRetries=100"],
    );
    central.append_inmsg(&numbered_commands("ship1", 0..5));
    central.wait_until("inmsg.txt", "emptied", |t| t.is_empty());
    let started = std::time::Instant::now();
    assert_eq!(central.terminate(), Some(0), "exit status after SIGTERM");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "stopping took {:?}",
        started.elapsed()
    );
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    central.restart();
    central.wait_count("replies/ship1.CLICommand.log", "status=Ok", 5);
    // In order, as accepted.
    let order: Vec<String> = ship1.read("ran.txt").lines().map(String::from).collect();
    assert_eq!(order, ["0", "1", "2", "3", "4"]);
}

#[test]
fn a_receiver_killed_mid_command_does_not_run_it_twice() {
    let nats = NatsServer::start();
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start(
        "central",
        &nats.address(),
        &["--defaultMessageTimeout=3", "--defaultMessageRetries=20"],
    );
    central.append_inmsg(&command(
        "ship1",
        &[
            "sh",
            "-c",
            "echo started >> ran.txt; sleep 1; echo finished",
        ],
    ));
    ship1.wait_for("ran.txt", "started");
    ship1.kill9();
    ship1.restart();
    let reply = central.wait_for(
        "replies/ship1.CLICommand.log",
        "interrupted by a restart of ship1",
    );
    assert!(reply.contains("status=Error"), "{reply}");
    common::settle(&central, &ship1, "CLICommand");
    let runs = ship1.read("ran.txt").lines().count();
    report("receiver_kill9_mid_command", 1, 1, runs - 1);
    assert_eq!(runs, 1, "the command ran again after the restart");
    // Delivered, perhaps not done: kept where an operator finds what to send again.
    assert!(central
        .read("failed-messages.txt")
        .contains("echo started >> ran.txt; sleep 1; echo finished"));
    let log = central.read("message-log.txt");
    assert_eq!(
        log.matches("\"outcome\":\"interrupted\"").count(),
        1,
        "{log}"
    );
}

#[test]
fn a_stream_cut_by_a_receiver_killed_mid_command_ends_its_file_with_why() {
    let nats = NatsServer::start();
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start(
        "central",
        &nats.address(),
        &["--defaultMessageTimeout=3", "--defaultMessageRetries=20"],
    );
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","echo started >> ran.txt; echo first; sleep 30"],"commandOrEvent":"CommandACK","method":"CLICommandCont","methodTimeout":60,"timeout":3,"replyMethod":"FileAppend","directory":"out","fileName":"cut.txt"}]"#,
    );
    central.wait_for("out/ship1/cut.txt", "first\n");
    ship1.kill9();
    ship1.restart();
    // What came before the cut, then the word of it, once; the ACK an error saying so
    // too, and where the word went.
    let file = central.wait_for("out/ship1/cut.txt", "interrupted");
    assert!(
        file.starts_with("first\n[steward: ")
            && file.contains("was interrupted by a restart of ship1")
            && file.ends_with("]\n"),
        "{file}"
    );
    let reply = central.wait_for("replies/ship1.CLICommandCont.log", "status=Error");
    assert!(
        reply.contains("interrupted by a restart of ship1")
            && reply.contains("result sent to central.FileAppend"),
        "{reply}"
    );
    common::settle(&central, &ship1, "CLICommand");
    assert_eq!(
        central
            .read("out/ship1/cut.txt")
            .matches("interrupted")
            .count(),
        1
    );
    assert_eq!(ship1.read("ran.txt").lines().count(), 1, "ran again");
}

#[test]
fn a_receiver_killed_and_restarted_under_load_runs_nothing_twice() {
    let nats = NatsServer::start();
    let (mut ship1, central) = receiver_and_patient_sender(&nats);
    let n = 300;
    central.append_inmsg(&numbered_commands("ship1", 0..n));
    central.wait_count("replies/ship1.CLICommand.log", "status=", 50);
    ship1.kill9();
    ship1.restart();
    let replies = central.wait_count("replies/ship1.CLICommand.log", "=== ", n);
    let interrupted = replies.matches("interrupted by a restart").count();
    let ran = runs(&ship1);
    let duplicates = duplicates(&ran);
    report(
        "receiver_kill9_under_load",
        n,
        replies.matches("=== ").count(),
        duplicates,
    );
    assert_eq!(duplicates, 0, "commands ran twice");
    assert!(
        interrupted <= 1,
        "{interrupted} interrupted: only the one running at the kill can be"
    );
    // Every message ran once, or was reported interrupted (it may have run before the kill).
    assert!(
        ran.len() <= n && ran.len() + interrupted >= n,
        "ran {} of {n}, {interrupted} interrupted",
        ran.len()
    );
    assert_eq!(replies.matches("=== ").count(), n, "one reply per message");
}

#[test]
fn a_cluster_losing_the_server_a_node_uses_loses_nothing() {
    let mut cluster = common::NatsCluster::start(3);
    let ship1 = Node::start("ship1", &cluster.addresses(), &[]);
    let central = Node::start(
        "central",
        &cluster.addresses(),
        &["--defaultMessageTimeout=2", "--defaultMessageRetries=20"],
    );
    let n = 200;
    central.append_inmsg(&numbered_commands("ship1", 0..n));
    central.wait_count("replies/ship1.CLICommand.log", "status=Ok", 30);
    // Kill the very server central is connected to, mid-flow.
    let used = cluster
        .server_of("central")
        .expect("central is connected somewhere");
    cluster.servers[used].stop();
    wait_every_reply(&central, 0..n);
    let ran = runs(&ship1);
    let duplicates = duplicates(&ran);
    report("cluster_lose_one_server", n, ran.len(), duplicates);
    assert_eq!(ran.len(), n);
    assert_eq!(duplicates, 0);
    assert!(central.metric("steward_broker_reconnects_total") >= 1.0);
    assert_ne!(cluster.server_of("central"), Some(used));
}

#[test]
fn a_faulty_link_that_drops_stalls_and_cuts_mid_frame_loses_nothing() {
    let nats = NatsServer::start();
    let proxy = common::proxy::FaultProxy::start(nats.port);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start(
        "central",
        &proxy.address(),
        &["--defaultMessageTimeout=2", "--defaultMessageRetries=30"],
    );
    let n = 300;
    central.append_inmsg(&numbered_commands("ship1", 0..n));
    let replies = |k| central.wait_count("replies/ship1.CLICommand.log", "status=Ok", k);
    replies(30);
    proxy.cut();
    replies(80);
    // A stall long enough that an attempt times out in it (no ACK in 2 s), its lane then
    // waiting for the broker to answer a PING before it counts the attempt.
    proxy.stall(true);
    central.wait_status("an attempt timed out in the stall", |t| {
        t.contains("counted once the broker answers a PING")
    });
    proxy.stall(false);
    replies(140);
    proxy.cut_mid_frame();
    replies(200);
    proxy.cut();
    wait_every_reply(&central, 0..n);
    let ran = runs(&ship1);
    let duplicates = duplicates(&ran);
    report("faulty_link", n, ran.len(), duplicates);
    assert_eq!(ran.len(), n);
    assert_eq!(duplicates, 0);
    assert!(central.metric("steward_broker_reconnects_total") >= 2.0);
}

#[test]
fn a_sender_killed_with_thousands_of_events_in_flight_delivers_each_once() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::start("central", &nats.address(), &[]);
    let n = 3000;
    central.append_inmsg(&common::text_logs("ship1", 0..n, "event-"));
    ship1.wait_until("textlog/central.log", "had 300 lines", |t| {
        t.lines().count() >= 300
    });
    central.kill9();
    let at_kill = ship1.read("textlog/central.log").lines().count();
    central.restart();
    ship1.wait_lines("textlog/central.log", n);
    common::settle(&central, &ship1, "TextLogging");
    let log = ship1.read("textlog/central.log");
    let mut lines: Vec<&str> = log.lines().filter(|l| *l != common::SETTLED).collect();
    let delivered = lines.len();
    lines.sort();
    lines.dedup();
    report(
        "sender_kill9_3000_events",
        n,
        lines.len(),
        delivered - lines.len(),
    );
    assert!(at_kill < n, "the kill came too late to test anything");
    assert_eq!(lines.len(), n, "events lost");
    assert_eq!(delivered, n, "events delivered twice");
}

/// Events travel in batches; a receiver killed amid them may leave one batch's worth
/// ambiguous (recorded as started, not as finished): those are answered "interrupted", not
/// logged twice, and their sender keeps them in failed-messages.txt, where an operator
/// finds what may need sending again. Every other event is logged once, in order: none
/// is lost unseen.
#[test]
fn a_receiver_killed_amid_batches_of_events_logs_each_at_most_once_in_order() {
    let nats = NatsServer::start();
    let (mut ship1, central) = receiver_and_patient_sender(&nats);
    let n = 5000;
    central.append_inmsg(&common::text_logs("ship1", 0..n, ""));
    ship1.wait_until("textlog/central.log", "had 500 lines", |t| {
        t.lines().count() >= 500
    });
    ship1.kill9();
    let at_kill = ship1.read("textlog/central.log").lines().count();
    ship1.restart();
    let replies = central.wait_count("replies/ship1.TextLogging.log", "=== ", n);
    let interrupted = replies.matches("interrupted by a restart").count();
    let logged: Vec<usize> = ship1
        .read("textlog/central.log")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let mut unique = logged.clone();
    unique.sort();
    unique.dedup();
    report(
        "receiver_kill9_event_batches",
        n,
        unique.len(),
        logged.len() - unique.len(),
    );
    eprintln!("[receiver_kill9_event_batches] at_kill={at_kill} interrupted={interrupted}");
    assert!(at_kill < n, "the kill came too late to test anything");
    assert_eq!(logged.len(), unique.len(), "events logged twice");
    assert!(
        logged.windows(2).all(|w| w[0] < w[1]),
        "events logged out of order"
    );
    assert!(
        interrupted <= steward::message::MAX_BATCH,
        "{interrupted} interrupted: at most the batch running at the kill can be"
    );
    assert!(
        unique.len() + interrupted >= n,
        "lost: logged {}, interrupted {interrupted}, of {n}",
        unique.len()
    );
    assert_eq!(replies.matches("=== ").count(), n, "one reply per message");
    // The interrupted ones, and only they, are kept in failed-messages.txt (before, they
    // counted as acked, kept nowhere): every event is logged, or kept.
    let failed = central.read("failed-messages.txt");
    let kept: Vec<usize> = serde_json::Deserializer::from_str(&failed)
        .into_iter::<Vec<serde_json::Value>>()
        .flat_map(|array| array.unwrap())
        .map(|m| m["data"][0].as_str().unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(kept.len(), interrupted, "kept: {kept:?}");
    let mut seen = unique.clone();
    seen.extend(&kept);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "events neither logged nor kept");
    let log = central.read("message-log.txt");
    assert_eq!(
        log.matches("\"outcome\":\"interrupted\"").count(),
        interrupted
    );
}

/// The state a power cut leaves mid-write: batch A (messages 0 and 1) committed; batch B
/// (2 and 3), read from the same taken inmsg file, with its journal write torn.
#[test]
fn a_journal_torn_mid_batch_loses_nothing_and_runs_nothing_twice() {
    use steward::journal::Journal;
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::start(
        "central",
        &nats.address(),
        &["--defaultMessageTimeout=1", "--defaultMessageRetries=100"],
    );
    central.kill9();
    let (a, b) = (
        numbered_commands("ship1", 0..2),
        numbered_commands("ship1", 2..4),
    );
    let taken = "inmsg.taking-00000000000000000001";
    std::fs::write(central.path(taken), format!("{a}{b}")).unwrap();
    let parse = |t: &str| {
        steward::message::parse_input(t.as_bytes(), 1, true, &steward::methods::kind_refusal)
            .messages
    };
    let journal = central.path("journal");
    let (mut j, _) = Journal::open(&journal).unwrap();
    j.append("central", parse(&a), Some((taken, a.len() as u64)))
        .unwrap();
    let before = j.size();
    let torn = j
        .append(
            "central",
            parse(&b),
            Some((taken, (a.len() + b.len()) as u64)),
        )
        .unwrap();
    drop(j);
    // Message 2's record complete, message 3's cut, the commit record never written.
    let path = Journal::path(&journal);
    let records = steward::journal::record::decode(&std::fs::read(&path).unwrap()).records;
    let (at, len, _) = records
        .iter()
        .find(|(at, _, _)| *at >= before)
        .expect("batch B's first record");
    assert_eq!(torn.len(), 2);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(at + u64::from(*len) + 10)
        .unwrap();
    central.restart();
    let replies = central.wait_count("replies/ship1.CLICommand.log", "status=Ok", 4);
    let errors = central.wait_for("errors.log", "journal was damaged and repaired");
    assert!(
        errors.contains("dropped 1 message(s) of a batch cut before its commit"),
        "{errors}"
    );
    common::settle(&central, &ship1, "CLICommand");
    let ran = runs(&ship1);
    let duplicates = duplicates(&ran);
    report("journal_torn_mid_batch", 4, ran.len(), duplicates);
    assert_eq!(
        ran.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2, 3],
        "{replies}"
    );
    assert_eq!(duplicates, 0);
    // The taken file is finished with (in the next round of finishing, within a second).
    central.wait_taken();
}

/// The state a power cut that undoes the taking of inmsg.txt starts from: ship1, and a
/// central killed once commands 0 and 1, appended by a writer that still holds inmsg.txt,
/// were taken (journaled) and answered. Returns them with the writer and the taken file;
/// `None` where taken files carry no identity (the rename is then synced before reading,
/// and a power cut cannot undo it).
fn killed_holding_a_taken_file(
    test: &str,
) -> Option<(NatsServer, Node, Node, std::fs::File, std::path::PathBuf)> {
    use std::io::Write;
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::start("central", &nats.address(), &[]);
    if !identities_in(central.data()) {
        eprintln!("[{test}] skipped: this filesystem gives taken files no identity");
        return None;
    }
    // A writer holding inmsg.txt open: its taken file is read on (not removed) meanwhile.
    let mut writer = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(central.path("inmsg.txt"))
        .unwrap();
    writer
        .write_all(numbered_commands("ship1", 0..2).as_bytes())
        .unwrap();
    wait_every_reply(&central, 0..2);
    central.kill9();
    let mut taken: Vec<_> = std::fs::read_dir(central.data())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("inmsg.taking-"))
        .collect();
    assert_eq!(taken.len(), 1, "{taken:?}");
    Some((nats, ship1, central, writer, taken.remove(0)))
}

/// A power cut that undid the taking of inmsg.txt (its rename) after the journal recorded
/// how far the taken file was read: the file is inmsg.txt again, and more was appended to
/// it. Known by its identity (inode and birth time, in the taken name), it gets its taken
/// name back and is read on from the recorded offset: nothing taken twice, nothing lost.
#[test]
fn an_inmsg_txt_whose_taking_a_power_cut_undid_is_read_on_not_taken_again() {
    use std::io::Write;
    let Some((_nats, ship1, mut central, mut writer, taken)) =
        killed_holding_a_taken_file("inmsg_rename_undone")
    else {
        return;
    };
    // What the power cut left: the rename undone (same file, so same inode and birth).
    std::fs::rename(&taken, central.path("inmsg.txt")).unwrap();
    writer
        .write_all(numbered_commands("ship1", 2..4).as_bytes())
        .unwrap();
    drop(writer);
    central.restart();
    wait_every_reply(&central, 0..4);
    common::settle(&central, &ship1, "CLICommand");
    let ran = runs(&ship1);
    let duplicates = duplicates(&ran);
    report("inmsg_rename_undone", 4, ran.len(), duplicates);
    assert_eq!(ran.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(duplicates, 0, "taken again from byte 0: {ran:?}");
    assert!(
        central
            .log()
            .contains("taken before a power cut undid its rename: read on from byte"),
        "{}",
        central.log()
    );
    central.wait_taken();
    // Removed only once marked done in the journal: from then on its inode may be a new
    // inmsg.txt's, and its identity is not looked for.
    central.kill9();
    let (_, recovery) = steward::journal::Journal::open(&central.path("journal")).unwrap();
    let names: Vec<&String> = recovery.inbox_offsets.keys().collect();
    let taken = names.iter().filter(|n| !n.ends_with(".done")).count();
    assert!(taken > 0, "{names:?}");
    assert!(
        names
            .iter()
            .filter(|n| !n.ends_with(".done"))
            .all(|n| names.contains(&&format!("{n}.done"))),
        "a taken file removed without its done mark: {names:?}"
    );
    // A file marked done that is back, grown past its mark (its removal lost, a writer
    // unseen): read on from the mark, not removed unread.
    let (name, done) = recovery
        .inbox_offsets
        .iter()
        .find(|(n, _)| n.ends_with(".done"))
        .map(|(n, o)| (n.trim_end_matches(".done").to_string(), *o as usize))
        .unwrap();
    let more = numbered_commands("ship1", 4..6);
    std::fs::write(central.path(&name), format!("{}{more}", " ".repeat(done))).unwrap();
    central.restart();
    wait_every_reply(&central, 4..6);
    common::settle(&central, &ship1, "CLICommand");
    let ran = runs(&ship1);
    assert_eq!(ran.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
    assert!(ran.values().all(|&n| n == 1), "{ran:?}");
}

/// Whether taken inmsg.txt files carry an identity in `dir` (see the inbox): where not, the
/// rename is synced before reading, and a power cut cannot undo it.
fn identities_in(dir: &std::path::Path) -> bool {
    let probe = dir.join("identity-probe");
    std::fs::write(&probe, "").unwrap();
    let born = std::fs::metadata(&probe).unwrap().created().is_ok();
    std::fs::remove_file(&probe).unwrap();
    born && steward::sys::keeps_inode_numbers(dir)
}

/// As above, but the power cut also cost the file its tail (shorter than what the journal
/// says was taken from it): where what was appended since begins cannot be told, so it is
/// kept aside and reported, not read; nothing taken before runs again.
#[test]
fn an_inmsg_txt_put_back_shorter_than_what_was_taken_is_kept_aside_not_read() {
    let Some((_nats, ship1, mut central, writer, taken)) =
        killed_holding_a_taken_file("inmsg_put_back_shorter")
    else {
        return;
    };
    drop(writer);
    // What the power cut left: the rename undone, and the file's tail lost.
    std::fs::rename(&taken, central.path("inmsg.txt")).unwrap();
    let inmsg = std::fs::OpenOptions::new()
        .write(true)
        .open(central.path("inmsg.txt"))
        .unwrap();
    inmsg.set_len(10).unwrap();
    drop(inmsg);
    central.restart();
    central.wait_for(
        "errors.log",
        "shorter (10 bytes) than what was taken from it",
    );
    common::settle(&central, &ship1, "CLICommand");
    let ran = runs(&ship1);
    assert_eq!(ran.keys().copied().collect::<Vec<_>>(), [0, 1]);
    assert_eq!(duplicates(&ran), 0, "{ran:?}");
    let aside: Vec<_> = std::fs::read_dir(central.data())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("inmsg.uncertain-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(central.read(&aside[0]).len(), 10);
}

/// A ship with a local broker (a NATS leaf node) whose uplink to the hub drops: the ship's
/// events to central and central's commands to the ship wait, and all arrive once the
/// uplink is back.
#[test]
fn a_ship_behind_a_leaf_node_whose_uplink_drops_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let leaf_port = common::free_port();
    let uplink = common::proxy::FaultProxy::start(leaf_port);
    let hub_conf = dir.path().join("hub.conf");
    // The hub advertises the uplink as its leafnode address: the ship must reach it only
    // through the (faulty) uplink, not learn the real address and go around it.
    std::fs::write(
        &hub_conf,
        format!(
            "leafnodes {{ listen: \"127.0.0.1:{leaf_port}\", advertise: \"{}\" }}\n",
            uplink.address()
        ),
    )
    .unwrap();
    let hub = NatsServer::start_with(&["-c", hub_conf.to_str().unwrap()]);
    let ship_conf = dir.path().join("ship.conf");
    std::fs::write(
        &ship_conf,
        format!(
            "leafnodes {{ reconnect: 1, remotes = [ {{ url: \"nats://{}\" }} ] }}\n",
            uplink.address()
        ),
    )
    .unwrap();
    let ship_broker = NatsServer::start_with(&["-c", ship_conf.to_str().unwrap()]);
    let slow = ["--defaultMessageTimeout=2", "--defaultMessageRetries=60"];
    let central = Node::start("central", &hub.address(), &slow);
    let ship1 = Node::start("ship1", &ship_broker.address(), &slow);
    // The uplink works: a round trip.
    central.append_inmsg(&command("ship1", &["echo", "over the uplink"]));
    central.wait_for("replies/ship1.CLICommand.log", "over the uplink");
    // The satellite link drops.
    uplink.down(true);
    let retried = |method: &str| format!("steward_messages_retried_total{{method=\"{method}\"}}");
    let commands_retried = central.metric(&retried("CLICommand"));
    central.append_inmsg(&numbered_commands("ship1", 0..10));
    ship1.append_inmsg(r#"[{"toNode":"central","data":["logged while at sea\n"],"commandOrEvent":"EventACK","method":"TextLogging"}]"#);
    // Each side has tried, and heard nothing back in its 2 s.
    central.wait_metric(
        "retried a command",
        |c| c.metric(&retried("CLICommand")),
        |v| v > commands_retried,
    );
    ship1.wait_metric(
        "retried the event",
        |s| s.metric(&retried("TextLogging")),
        |v| v >= 1.0,
    );
    assert!(!central
        .read("textlog/ship1.log")
        .contains("logged while at sea"));
    // Back in range.
    uplink.down(false);
    central.wait_for("textlog/ship1.log", "logged while at sea");
    wait_every_reply(&central, 0..10);
    let ran = runs(&ship1);
    let duplicates = duplicates(&ran);
    report("leaf_uplink_drop", 11, ran.len() + 1, duplicates);
    assert_eq!((ran.len(), duplicates), (10, 0));
}

/// A broker outage must not hold up a stop: every send on the message path ends with a
/// flush, and a flush waited for the broker's PONG without a bound, so a thread that sent
/// during the outage (Hello, every second) kept the stop waiting for the whole grace period.
/// The message stays in the journal and goes once the broker is back.
#[test]
fn sigterm_during_a_broker_outage_stops_at_once_and_keeps_the_message() {
    let mut nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::start("central", &nats.address(), &[]);
    central.append_inmsg(&command("ship1", &["echo", "before the outage"]));
    central.wait_for("replies/ship1.CLICommand.log", "before the outage");
    nats.stop();
    central.append_inmsg(&command("ship1", &["echo", "during the outage"]));
    central.wait_metric(
        "journaled the command",
        |c| c.metric("steward_journal_pending_messages"),
        |v| v == 1.0,
    );
    // Hello (every second) has tried to send during the outage, and failed.
    central.wait_status("showed a Hello not sent", |table| {
        table
            .lines()
            .any(|l| l.starts_with("hello ") && l.contains("not sent"))
    });
    let started = std::time::Instant::now();
    assert_eq!(central.terminate(), Some(0), "exit status after SIGTERM");
    // Nothing is in flight: well within the 5 s grace.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopping took {:?}",
        started.elapsed()
    );
    assert!(
        !central.log().contains("grace period over"),
        "a process was still busy at the end of the grace:\n{}",
        central.log()
    );
    nats.restart();
    central.restart();
    central.wait_for("replies/ship1.CLICommand.log", "during the outage");
    drop(ship1);
}

/// A link that holds bytes without closing: the client does not know it is down. A
/// request (an ACK kind) is written out without waiting for the server, so its attempt
/// ends by its own timeout (2 s here); it is not counted while the broker answers no PING
/// (the retry would be spent on our own link); a message published once (a NACK kind)
/// waits for the server's PONG, which does not come: that wait gives up within its bound
/// (5 s) rather than for the minutes the client's own ping timer would take. Both go once
/// the link flows again.
#[test]
fn a_send_on_a_stalled_link_gives_up_within_its_bound() {
    let nats = NatsServer::start();
    let proxy = common::proxy::FaultProxy::start(nats.port);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start(
        "central",
        &proxy.address(),
        &["--defaultMessageTimeout=2", "--defaultMessageRetries=30"],
    );
    central.append_inmsg(&command("ship1", &["echo", "before the stall"]));
    central.wait_for("replies/ship1.CLICommand.log", "before the stall");
    let retried = "steward_messages_retried_total{method=\"CLICommand\"}";
    let before = central.metric(retried);
    proxy.stall(true);
    let stalled = Instant::now();
    central.append_inmsg(&command("ship1", &["echo", "during the stall"]));
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["published during the stall"],"commandOrEvent":"EventNACK","method":"TextLogging"}]"#,
    );
    // The command's attempt ended by its timeout, not counted while the broker answers
    // nothing...
    central.wait_status("the attempt ended, not counted", |t| {
        t.contains("counted once the broker answers a PING")
    });
    assert!(
        stalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        stalled.elapsed()
    );
    assert_eq!(central.metric(retried), before);
    // ...while the event published once gave up waiting for the server within 5 s.
    central.wait_status("showed the NACK's flush giving up", |t| {
        t.contains("flush: no PONG from the server within 5s")
    });
    proxy.stall(false);
    central.wait_for("replies/ship1.CLICommand.log", "during the stall");
    ship1.wait_for("textlog/central.log", "published during the stall");
}

/// A link cut silently (no FIN, no reset: the proxy holds every byte, as a satellite's
/// dropout, or a modem acknowledging on the broker's behalf, leaves it) that outlasts a
/// message's one attempt. The attempt's failure is counted against ship1 only once the
/// broker answers a PING sent at its end, promptly; here the answer comes only once the
/// link flows, late, so ship1 is given one more ACK wait for that same send, and answers
/// it. Before,
/// it was given up in the cut (failed-messages.txt), and ran all the same once the link
/// flowed: reported lost, yet run.
#[test]
fn a_message_is_not_given_up_in_a_silent_cut_that_outlasts_its_attempts() {
    let nats = NatsServer::start();
    let proxy = common::proxy::FaultProxy::start(nats.port);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    // Its check of the link kept out of it (an hour): the cut is never taken as one.
    let central = Node::start("central", &proxy.address(), &["--brokerPingInterval=3600"]);
    central.append_inmsg(&command("ship1", &["echo", "before the cut"]));
    central.wait_for("replies/ship1.CLICommand.log", "before the cut");
    proxy.stall(true);
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","echo x >> cut.txt; echo in the cut"],"commandOrEvent":"CommandACK","method":"CLICommand","retries":0,"timeout":2}]
"#,
    );
    central.wait_status("its one attempt failed, not counted yet", |t| {
        t.contains("counted once the broker answers a PING")
    });
    // The cut outlasts the bound of a prompt answer (1 s, for a 2 s wait).
    std::thread::sleep(Duration::from_secs(2));
    proxy.stall(false);
    central.wait_for("replies/ship1.CLICommand.log", "in the cut");
    common::settle(&central, &ship1, "CLICommand");
    assert_eq!(ship1.read("cut.txt"), "x\n", "ran once");
    assert!(
        !central.read("failed-messages.txt").contains("in the cut"),
        "given up though it went"
    );
}

/// An attempt whose bytes the link held past its ACK wait (the broker answers the PING
/// behind them late) reached the broker only then: its destination is given one more ACK
/// wait for that same send, and the attempt then counts. No second copy goes: over a slow
/// link each one crosses it again. (A listener that never answers stands in for the
/// destination, and counts the copies.)
#[test]
fn an_attempt_the_link_held_waits_once_more_for_its_ack_and_sends_no_second_copy() {
    let nats = NatsServer::start();
    let proxy = common::proxy::FaultProxy::start(nats.port);
    let spy = common::raw::Raw::connect(&nats.address());
    let copies = spy.spy("ship9.CommandACK.CLICommand");
    let central = Node::start("central", &proxy.address(), &["--brokerPingInterval=3600"]);
    central.wait_status("connected", |t| t.contains("broker: up"));
    proxy.stall(true);
    central.append_inmsg(
        r#"[{"toNode":"ship9","data":["true"],"commandOrEvent":"CommandACK","method":"CLICommand","retries":0,"timeout":2}]
"#,
    );
    central.wait_status("its attempt failed in the stall", |t| {
        t.contains("counted once the broker answers a PING")
    });
    // Longer than a prompt answer (1 s, for a 2 s wait).
    std::thread::sleep(Duration::from_millis(1500));
    proxy.stall(false);
    central.wait_status("waiting once more", |t| t.contains("s more for its ACK"));
    central.wait_for("failed-messages.txt", "ship9");
    let mut seen = 0;
    while copies.next_timeout(Duration::from_millis(500)).is_ok() {
        seen += 1;
    }
    assert_eq!(seen, 1, "copies of the message sent");
}

/// A command given up while its node's link was cut silently (the broker took it, and held
/// it in that link) runs when the link flows again: its late reply is kept on central, in
/// its reply file, with a line that says it came after the message was given up; it ran
/// once.
#[test]
fn a_command_given_up_in_its_node_s_silent_cut_has_its_late_reply_kept() {
    let nats = NatsServer::start();
    let proxy = common::proxy::FaultProxy::start(nats.port);
    // The cut outlasts the command's attempt, not ship1's check of its link.
    let ship1 = Node::start("ship1", &proxy.address(), &["--brokerPingInterval=3600"]);
    let central = Node::start("central", &nats.address(), &[]);
    proxy.stall(true);
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","echo x >> held.txt; echo held in the link"],"commandOrEvent":"CommandACK","method":"CLICommand","retries":0,"timeout":2}]
"#,
    );
    central.wait_for("failed-messages.txt", "held.txt");
    let log = central.log();
    assert!(
        log.contains("yet it may have reached ship1 and run there"),
        "{log}"
    );
    assert!(ship1.read("held.txt").is_empty(), "ran during the cut");
    proxy.stall(false);
    let kept = central.wait_for("replies/ship1.CLICommand.log", "[steward: this reply came");
    assert!(
        kept.contains("held in the link\n[steward: this reply came"),
        "{kept}"
    );
    assert_eq!(kept.matches("=== ").count(), 1, "{kept}");
    assert_eq!(ship1.read("held.txt"), "x\n", "ran once");
    assert!(central.log().contains("ran on ship1 after all"));
}

/// A node behind a link cut silently takes it as cut within a few of its ping intervals
/// (here 1 s), says so, and connects again once the link flows, saying Hello at once (not
/// at its next interval: an hour here), so that central's lanes to it stop their pauses; a
/// command sent to it meanwhile, with a time to live, arrives and runs once.
#[test]
fn a_node_behind_a_silent_cut_notices_it_and_connects_again() {
    let nats = NatsServer::start();
    let proxy = common::proxy::FaultProxy::start(nats.port);
    let ship1 = Node::start(
        "ship1",
        &proxy.address(),
        &["--brokerPingInterval=1", "--helloInterval=3600"],
    );
    let central = Node::start("central", &nats.address(), &["--defaultMessageTimeout=2"]);
    central.append_inmsg(&command("ship1", &["echo", "before the cut"]));
    central.wait_for("replies/ship1.CLICommand.log", "before the cut");
    let hellos = "steward_messages_received_total{method=\"Hello\",outcome=\"ok\"}";
    let hellos_before = central.metric(hellos);
    proxy.stall(true);
    ship1.wait_metric(
        "took the link as cut",
        |n| n.metric("steward_broker_connected"),
        |v| v == 0.0,
    );
    // Why, before the disconnection it brought.
    let log = ship1.log();
    let (cut, down) = (
        log.find("taken as cut"),
        log.find("disconnected from the broker"),
    );
    assert!(cut.is_some() && cut < down, "{log}");
    ship1.wait_status("shows the link down", |t| t.contains("broker: down for"));
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","echo x >> cut.txt; echo during the cut"],"commandOrEvent":"CommandACK","method":"CLICommand","ttl":300}]
"#,
    );
    proxy.stall(false);
    central.wait_for("replies/ship1.CLICommand.log", "during the cut");
    assert!(ship1.metric("steward_broker_reconnects_total") >= 1.0);
    ship1.wait_status("shows the link up", |t| t.contains("broker: up"));
    central.wait_metric(
        "ship1 said Hello",
        |c| c.metric(hellos),
        |v| v > hellos_before,
    );
    common::settle(&central, &ship1, "CLICommand");
    assert_eq!(ship1.read("cut.txt"), "x\n", "ran once");
}

/// Queues `messages` through the control socket, as `steward send` without `--wait` does,
/// and returns the ids they were given.
fn queue(node: &Node, messages: &str) -> Vec<String> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    node.wait_status("answered", |table| table.starts_with("node "));
    let mut s = UnixStream::connect(node.path("steward.sock")).unwrap();
    s.write_all(messages.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some(v["id"].as_str()?.to_string()))
        .collect()
}

/// A power cut in the middle of storing a reply leaves its record in part (on ext4, the
/// pages written back before the cut), and in the middle of listing it, part of its
/// message-log.txt line; failed-messages.txt can keep part of an array the same way. The
/// message is unfinished in the journal and sent again: its reply is stored again whole
/// (the part is not taken for stored), the part marked, and the parts of the line and the
/// array cut off, so that nothing after them is glued to them. Made here as a cut leaves
/// them: the sender killed with the message unfinished, the parts written, then the
/// restart.
#[test]
fn a_reply_a_power_cut_left_in_part_is_stored_again_whole() {
    let nats = NatsServer::start();
    let mut central = Node::start("central", &nats.address(), &[]);
    // ship1 is not there yet: the command waits in central's journal.
    let ids = queue(
        &central,
        &command(
            "ship1",
            &[
                "sh",
                "-c",
                "echo 1 >> ran.txt; echo line one; echo line two",
            ],
        ),
    );
    let [id] = ids.as_slice() else {
        panic!("queued: {ids:?}")
    };
    central.kill9();
    let body = "line one\nline two\n";
    // As this version writes it: its header ends with the output's length and CRC.
    let whole = format!(
        "=== 2026-11-29T20:00:00.000Z id={id} from=ship1 status=Ok exit=0 bytes={} crc={:08x}\n{body}",
        body.len(),
        crc32fast::hash(body.as_bytes())
    );
    let part = &whole[..whole.len() - 6];
    let failed_part = "[\n  {\n    \"toNode\": \"sh";
    let append = |rel: &str, text: &str| common::append_to(&central.path(rel), text);
    append("replies/ship1.CLICommand.log", part);
    append(
        "message-log.txt",
        &format!("{{\"id\":\"{id}\",\"data\":[\"sh"),
    );
    append("failed-messages.txt", failed_part);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    central.restart();
    let replies = central.wait_count("replies/ship1.CLICommand.log", "line two\n", 1);
    central.wait_for("message-log.txt", &format!("\"id\":\"{id}\""));
    common::settle(&central, &ship1, "CLICommand");
    let replies_after = central.read("replies/ship1.CLICommand.log");
    let ran = runs(&ship1);
    let log = central.read("message-log.txt");
    let listed = log.matches(&format!("\"id\":\"{id}\"")).count();
    eprintln!(
        "[torn_reply] runs={} reply_records={} whole_outputs={} listed={listed} failed_bytes={}",
        ran.values().sum::<usize>(),
        replies_after.matches(&format!(" id={id} ")).count(),
        replies_after.matches(body).count(),
        central.read("failed-messages.txt").len()
    );
    assert_eq!(ran.get(&1), Some(&1), "ran once");
    // The part, marked, then the whole reply, once.
    let marked = format!("{part}\n{}", steward::resumed::CUT_SHORT);
    let stored = replies
        .strip_prefix(&marked)
        .unwrap_or_else(|| panic!("the part is not marked:\n{replies}"));
    let (head, output) = stored.split_once('\n').unwrap();
    let header = steward::resumed::ReplyHeader::parse(head.as_bytes()).unwrap();
    assert_eq!(header.id, id);
    assert_eq!(output, body, "stored again whole:\n{replies}");
    assert_eq!(
        header.body,
        Some((body.len() as u64, crc32fast::hash(body.as_bytes())))
    );
    // After everything sent again has arrived: the part and one whole record.
    assert_eq!(replies_after.matches(&format!(" id={id} ")).count(), 2);
    assert_eq!(replies_after.matches(body).count(), 1, "stored once");
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("message-log.txt: not JSON ({e}): {line:?}"));
    }
    assert_eq!(listed, 1, "listed once:\n{log}");
    assert_eq!(central.read("failed-messages.txt"), "", "the part cut off");
    // Each part kept beside its file.
    let aside = |name: &str| -> Vec<String> {
        std::fs::read_dir(central.data())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(&format!("{name}.cut-")))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    };
    assert_eq!(aside("failed-messages.txt"), [failed_part]);
    assert_eq!(
        aside("message-log.txt"),
        [format!("{{\"id\":\"{id}\",\"data\":[\"sh")]
    );
}

/// A second agent started by hand on the service's data folder would write the same journal
/// and run every command twice: it refuses to run, and the first goes on.
/// A lock let go a moment after its agent died (a command it was starting, between fork
/// and exec, holds a copy until exec closes it) does not stop the next start: it waits a
/// moment for it. (CI once saw a receiver restarted under load refuse to run so.)
#[test]
fn a_lock_let_go_a_moment_after_its_agent_died_does_not_stop_the_next_start() {
    let nats = NatsServer::start();
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    ship1.kill9();
    // The lock, held by another process for a moment: this one.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(ship1.data().join("journal/lock"))
        .unwrap();
    assert!(steward::sys::lock_exclusive(&lock).unwrap());
    let let_go = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(lock);
    });
    ship1.restart();
    let_go.join().unwrap();
    assert!(!ship1.log().contains("refusing to run"), "{}", ship1.log());
}

#[test]
fn a_second_agent_on_the_same_data_folder_refuses_to_run() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .args([
            "--node=central".to_string(),
            format!("--brokerAddress={}", nats.address()),
            format!("--dataFolder={}", central.data().display()),
            "--promHostAndPort=off".to_string(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second agent ran on central's data folder");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut said).unwrap();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("another steward agent runs on the data folder"),
        "{said}"
    );
    // The first runs on, alone.
    central.append_inmsg(&command("ship1", &["echo", "still one"]));
    central.wait_for("replies/ship1.CLICommand.log", "still one");
    assert_eq!(
        ship1.metric("steward_messages_received_total{method=\"CLICommand\",outcome=\"ok\"}"),
        1.0
    );
}

#[test]
fn a_bad_sector_in_the_journal_loses_the_messages_it_held_and_no_others() {
    let nats = NatsServer::start();
    // ship1 away: the commands wait in central's journal, three batches of ten.
    let mut central = Node::start(
        "central",
        &nats.address(),
        &["--defaultMessageTimeout=1", "--defaultMessageRetries=100"],
    );
    for batch in 0..3 {
        let range = batch * 10..batch * 10 + 10;
        central.append_inmsg(&numbered_commands("ship1", range));
        central.wait_metric(
            "journaled the batch",
            |c| c.metric("steward_journal_pending_messages"),
            |v| v == (batch * 10 + 10) as f64,
        );
    }
    assert_eq!(central.terminate(), Some(0));
    // A bit of command 12's record flips on the disk (a bad sector), long after it was
    // synced; the records after it are whole.
    let path = central.path("journal/journal.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(7)
        .position(|w| w == b"done-12")
        .expect("command 12 in the journal");
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    central.restart();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let all_but_12: Vec<usize> = (0..30).filter(|&i| i != 12).collect();
    central.wait_until(
        "replies/ship1.CLICommand.log",
        "had every reply but 12's",
        |t| {
            all_but_12
                .iter()
                .all(|i| t.contains(&format!("\ndone-{i}\n")))
        },
    );
    let ran = runs(&ship1);
    report("journal_bad_sector", 30, ran.len(), duplicates(&ran));
    // Before, the journal was cut at the damage: commands 13 to 29 were lost with 12.
    assert_eq!(ran.keys().copied().collect::<Vec<_>>(), all_but_12);
    assert_eq!(duplicates(&ran), 0);
    let log = central.log();
    assert!(
        log.contains("journal was damaged") && log.contains("passed over bytes"),
        "the damage is said"
    );
}

#[test]
fn an_inbox_file_whose_offset_a_bad_sector_held_is_kept_aside_not_read_twice() {
    use steward::journal::{record::Record, Journal};
    use steward::message::{Kind, Message};
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::prepare(&[], "central", &nats.address(), &[]);
    // What a run before left: an inbox file of three commands, taken, the first two
    // journaled in two batches (each with how far the file was read), the third not yet.
    let lines: Vec<String> = (0..3)
        .map(|i| numbered_commands("ship1", i..i + 1))
        .collect();
    let taken = "inmsg.taking-00000000000000000001";
    std::fs::write(central.path(taken), lines.concat()).unwrap();
    let message = |i: usize| {
        let run = format!("echo {i} >> ran.txt; echo done-{i}");
        let data = ["sh", "-c", &run].map(String::from).to_vec();
        Message::new("ship1", Kind::CommandAck, "CLICommand", data)
    };
    let (mut journal, _) = Journal::open(&central.path("journal")).unwrap();
    let mut read = 0;
    for (i, line) in lines.iter().take(2).enumerate() {
        read += line.len() as u64;
        journal
            .append("central", vec![message(i)], Some((taken, read)))
            .unwrap();
    }
    journal.sync().unwrap(); // the supervisor's tick: a checkpoint after both
    drop(journal);
    // A bit of the second batch's offset flips on the disk (a bad sector): the journal
    // knows the file was read past its first line, not that it was past its second.
    let path = central.path("journal/journal.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let records = steward::journal::record::decode(&bytes).records;
    let (at, _, _) = records
        .iter()
        .filter(|(_, _, r)| matches!(r, Record::InboxOffset { .. }))
        .nth(1)
        .unwrap();
    bytes[*at as usize + 12] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    central.restart();
    // Both journaled commands run once; the file is not read again from its first line's
    // end (command 1 a second time, under a new id), but kept aside and said.
    wait_every_reply(&central, 0..2);
    let kept_aside = || {
        std::fs::read_dir(central.data())
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("inmsg.uncertain-")
            })
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
    };
    std::thread::sleep(Duration::from_secs(2));
    let ran = runs(&ship1);
    report("inbox_offset_bad_sector", 2, ran.len(), duplicates(&ran));
    assert_eq!(ran.keys().copied().collect::<Vec<_>>(), [0, 1]);
    assert_eq!(duplicates(&ran), 0, "read again from its first line's end");
    // Whole, for the operator to append what is missing (the third command).
    assert_eq!(kept_aside(), Some(lines.concat()));
    assert!(!central.path(taken).exists());
    let log = central.log();
    assert!(
        log.contains("was in the journal's damage"),
        "the file kept aside is said"
    );
}

/// Whether process `pid` is gone (no such process, or a zombie waiting to be reaped by
/// whoever inherited it), waiting up to two seconds for it to go. (CLICommand's unit tests
/// have the same look, `gone`: a crate of their own, this one's cannot reach it.)
fn process_gone(pid: u32) -> bool {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            // The state follows the command name in parentheses: "123 (sleep) Z …".
            Ok(stat) if stat.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')) => {
                return true
            }
            Ok(_) => {}
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command still running when its node is stopped (SIGTERM, outside systemd: no cgroup
/// kills it after steward) dies with the node: it was answered "interrupted" at the next
/// start, and must not run on unseen, unanswered, for as long as it likes. Its children
/// too.
#[test]
fn a_command_running_at_a_stop_dies_with_the_node() {
    let nats = NatsServer::start();
    let (mut ship1, central) = receiver_and_patient_sender(&nats);
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","sleep 1000 & echo $! $$ > pids.txt; exec sleep 1000"],"commandOrEvent":"CommandACK","method":"CLICommand","methodTimeout":600}]
"#,
    );
    let pids: Vec<u32> = ship1
        .wait_until("pids.txt", "written", |t| t.ends_with('\n'))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ship1.terminate(), Some(0), "exit status after SIGTERM");
    let outlived: Vec<u32> = pids.iter().copied().filter(|&p| !process_gone(p)).collect();
    for p in &outlived {
        let _ = std::process::Command::new("kill")
            .args(["-9", &p.to_string()])
            .status();
    }
    assert!(
        outlived.is_empty(),
        "{outlived:?} of the command {pids:?} outlived its node's stop"
    );
    // Answered as interrupted, or (its handler quicker than the exit) as killed by the stop.
    ship1.restart();
    central.wait_until("replies/ship1.CLICommand.log", "answered", |t| {
        t.contains("interrupted by a restart of ship1") || t.contains("the node stopped")
    });
}
