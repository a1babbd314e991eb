//! Delivery: ACKs carry results, each message gets its own ACK, late nodes still get their
//! messages, refusals and failures are never silent.

use crate::common;
use common::raw::Raw;
use common::{command, report, text_logs, wait_until, NatsServer, Node};
use std::time::{Duration, Instant};

#[test]
fn command_output_and_exit_status_come_back_to_the_sender() {
    let nats = NatsServer::start();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.append_inmsg(&command(
        "ship1",
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"],
    ));
    let reply = central.wait_for("replies/ship1.CLICommand.log", "to-stderr");
    assert!(reply.contains("status=Ok exit=7"), "{reply}");
    assert!(reply.contains("to-stdout\nto-stderr\n"), "{reply}");
}

#[test]
fn concurrent_messages_on_one_subject_each_get_their_own_ack() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let n = 200;
    let batch: String = (0..n)
        .map(|i| {
            command(
                "ship1",
                &["sh", "-c", &format!("echo reply-{i}; echo {i} >> ran.txt")],
            )
        })
        .collect();
    central.append_inmsg(&batch);
    let replies = central.wait_count("replies/ship1.CLICommand.log", "status=Ok exit=0", n);
    let mut delivered = 0;
    for i in 0..n {
        let needle = format!("\nreply-{i}\n");
        assert_eq!(replies.matches(&needle).count(), 1, "reply {i}:\n{replies}");
        delivered += 1;
    }
    let ran = ship1.read("ran.txt");
    let runs = ran.lines().count();
    report("one_subject_200_commands", n, delivered, runs - n);
    assert_eq!(runs, n, "commands ran {runs} times for {n} messages");
    // In order: one publisher per subject delivers sequentially.
    let order: Vec<usize> = ran.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(order, (0..n).collect::<Vec<_>>());
}

#[test]
fn a_node_that_starts_late_still_gets_its_messages() {
    let nats = NatsServer::start();
    let central = Node::start(
        "central",
        &nats.address(),
        &["--defaultMessageTimeout=1", "--defaultMessageRetries=30"],
    );
    central.append_inmsg(&command("ship1", &["echo", "hello late node"]));
    // Tried and tried again with nobody there.
    let retried = "steward_messages_retried_total{method=\"CLICommand\"}";
    central.wait_metric("retried", |c| c.metric(retried), |v| v >= 2.0);
    assert!(central.read("replies/ship1.CLICommand.log").is_empty());
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let reply = central.wait_for("replies/ship1.CLICommand.log", "hello late node");
    assert_eq!(reply.matches("hello late node").count(), 1);
    assert!(central.metric(retried) >= 2.0);
}

#[test]
fn a_node_down_for_a_moment_gets_its_message_within_the_first_attempt() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    // An attempt of 25 s: sent again up to 18 s after the first send, however slowly ship1
    // starts on a loaded machine.
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","echo once >> ran.txt; echo back"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":25}]"#,
    );
    // Sent, and the broker said at once that nobody listens.
    let sent = "steward_messages_sent_total{method=\"CLICommand\"}";
    central.wait_metric("sent", |c| c.metric(sent), |v| v >= 1.0);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    central.wait_for("replies/ship1.CLICommand.log", "back");
    // Sent again within the attempt once ship1 listened: not a second attempt after the
    // first one's 25 s, and run once.
    let retried = "steward_messages_retried_total{method=\"CLICommand\"}";
    assert_eq!(central.metric(retried), 0.0);
    let resent = "steward_messages_resent_total{method=\"CLICommand\"}";
    assert!(central.metric(resent) >= 1.0);
    let runs = ship1.read("ran.txt").lines().count();
    report("down_for_a_moment", 1, runs.min(1), runs.saturating_sub(1));
    assert_eq!(runs, 1);
}

#[test]
fn events_sent_before_their_node_listens_fall_back_once_and_arrive_once_in_order() {
    let nats = NatsServer::start();
    // Attempts of 25 s, as in the test above.
    let central = Node::start("central", &nats.address(), &["--defaultMessageTimeout=25"]);
    let n = 300;
    central.append_inmsg(&text_logs("ship1", 0..n, "early-"));
    // The first batch: "no responders", so one at a time, sent again within its attempt.
    let failed = "steward_batches_failed_total{method=\"TextLogging\"}";
    central.wait_metric("a batch failed", |c| c.metric(failed), |v| v >= 1.0);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let log = ship1.wait_lines("textlog/central.log", n);
    assert_each_once_in_order("events_before_listening", &log, "early-", n);
    // One batch failed, then batches again once an event was ACKed; no attempt waited out.
    assert_eq!(central.metric(failed), 1.0);
    let retried = "steward_messages_retried_total{method=\"TextLogging\"}";
    assert_eq!(central.metric(retried), 0.0);
}

#[test]
fn a_message_whose_retries_are_spent_is_kept_and_reported() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let msg = r#"[{"toNode":"ship9","data":["true"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"retries":1}]"#;
    central.append_inmsg(msg);
    // Between its attempts the lane says so, and why.
    central.wait_status("pausing after its first attempt", |t| {
        t.contains("attempt 1/2 of ") && t.contains("again in ") && t.contains("a Hello from ship9")
    });
    let failed = central.wait_for("failed-messages.txt", "ship9");
    let errors = central.wait_for("errors.log", "not delivered");
    assert!(
        errors.contains("no responders on ship9.CommandACK.CLICommand"),
        "{errors}"
    );
    // The failed file is inmsg.txt input: appending it sends the message again.
    let ship9 = Node::start("ship9", &nats.address(), &[]);
    std::fs::remove_file(central.path("failed-messages.txt")).unwrap();
    central.append_inmsg(&failed);
    central.wait_for(
        "replies/ship9.CLICommand.log",
        "from=ship9 status=Ok exit=0",
    );
    drop(ship9);
}

#[test]
fn commands_are_accepted_only_from_the_central_node() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let ship2 = Node::start("ship2", &nats.address(), &[]);
    ship2.append_inmsg(&command("ship1", &["sh", "-c", "touch pwned"]));
    let reply = ship2.wait_for("replies/ship1.CLICommand.log", "status=Refused");
    assert!(
        reply.contains("ship2 may not call CLICommand here"),
        "{reply}"
    );
    ship2.wait_for("failed-messages.txt", "touch pwned");
    let errors = central.wait_for("errors.log", "refused");
    assert!(
        errors.contains("ship1 refused ship1.CommandACK.CLICommand from ship2"),
        "{errors}"
    );
    assert!(!ship1.path("pwned").exists(), "a refused command ran");
    // Events from any node are fine.
    ship2.append_inmsg(r#"[{"toNode":"ship1","data":["hi from ship2"],"commandOrEvent":"EventACK","method":"TextLogging"}]"#);
    ship1.wait_for("textlog/ship2.log", "hi from ship2");
}

#[test]
fn nack_messages_are_published_once_and_not_acked() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","echo x >> nack.txt"],"commandOrEvent":"CommandNACK","method":"CLICommand"},
            {"toNode":"ship1","data":["an event"],"commandOrEvent":"EventNACK","method":"TextLogging"}]"#,
    );
    ship1.wait_for("nack.txt", "x");
    ship1.wait_for("textlog/central.log", "an event");
    central.wait_count("message-log.txt", "\"outcome\":\"published\"", 2);
    // Each published once, and ship1 has handled every copy the broker brought it.
    let attempts = |method: &str| {
        central.metric(&format!(
            "steward_messages_sent_total{{method=\"{method}\"}}"
        )) + central.metric(&format!(
            "steward_messages_retried_total{{method=\"{method}\"}}"
        ))
    };
    assert_eq!(
        (attempts("CLICommand"), attempts("TextLogging")),
        (1.0, 1.0)
    );
    for method in ["CLICommand", "TextLogging"] {
        let handled = format!("handled the {method} message");
        let received = |n: &Node| {
            n.metric_sum(
                "steward_messages_received_total",
                &[&format!("method=\"{method}\"")],
            )
        };
        ship1.wait_metric(&handled, received, |v| v >= 1.0);
    }
    ship1.wait_idle();
    assert_eq!(ship1.read("nack.txt"), "x\n");
    assert!(central.read("replies/ship1.CLICommand.log").is_empty());
}

#[test]
fn every_node_says_hello_to_central() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let seen = central.wait_for("hello-nodes.json", "\"ship1\"");
    let v: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert!(v["ship1"]["lastSeenUnixMs"].as_u64().unwrap() > 0);
    assert!(v["ship1"]["lastSeen"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn errors_reach_only_the_central_error_logger() {
    let nats = NatsServer::start();
    // A node that is not the error logger refuses ErrorLog messages.
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let ship2 = Node::start("ship2", &nats.address(), &[]);
    ship2.append_inmsg(
        r#"[{"toNode":"ship1","data":["boom"],"commandOrEvent":"EventACK","method":"ErrorLog"}]"#,
    );
    let reply = ship2.wait_for("replies/ship1.ErrorLog.log", "status=Refused");
    assert!(reply.contains("not the central error logger"), "{reply}");
    assert!(!ship1.path("errors.log").exists());
}

#[test]
fn a_failing_publisher_is_restarted_reported_and_loses_nothing() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    // failed-messages.txt cannot be written while a folder stands in its place: the
    // publisher that must keep a failed message fails, and is restarted with backoff.
    std::fs::create_dir(central.path("failed-messages.txt")).unwrap();
    central.append_inmsg(r#"[{"toNode":"ship9","data":["true"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"retries":0}]"#);
    let errors = central.wait_for(
        "errors.log",
        "process publisher ship9.CommandACK.CLICommand failed",
    );
    assert!(errors.contains("cannot keep failed message"), "{errors}");
    assert!(central.metric("steward_process_restarts_total") >= 1.0);
    // Once the fault is gone, the restarted publisher finishes the same message.
    std::fs::remove_dir(central.path("failed-messages.txt")).unwrap();
    let failed = central.wait_for("failed-messages.txt", "ship9");
    assert_eq!(
        failed.matches("\"toNode\": \"ship9\"").count(),
        1,
        "{failed}"
    );
    // Other subjects were never held up.
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    central.append_inmsg(&command("ship1", &["echo", "unaffected"]));
    central.wait_for("replies/ship1.CLICommand.log", "unaffected");
}

/// What a node runs under whose wall clock is read from `file` (libfaketime's offset,
/// `-2d`, `+0`: written to set the clock while it runs, as NTP would), its monotonic clock
/// left alone (as NTP leaves it).
fn under_a_clock_set_by(file: &std::path::Path) -> Vec<String> {
    vec![
        "env".to_string(),
        format!("LD_PRELOAD={}", common::libfaketime().display()),
        format!("FAKETIME_TIMESTAMP_FILE={}", file.display()),
        "FAKETIME_NO_CACHE=1".into(),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
    ]
}

#[test]
fn a_clock_set_forward_by_days_while_a_message_waits_does_not_use_up_its_ttl() {
    let nats = NatsServer::start();
    // central is a Pi that booted with the time it saved two days ago, at sea: no NTP.
    let clock = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(clock.path(), "-2d").unwrap();
    let under = under_a_clock_set_by(clock.path());
    let under: Vec<&str> = under.iter().map(String::as_str).collect();
    let central = Node::start_under(&under, "central", &nats.address(), &["--clockCheck=off"]);
    // For ship1, away: an hour to live, attempts of 1 s.
    central.append_inmsg(r#"[{"toNode":"ship1","data":["echo","an hour to live"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"ttl":3600}]"#);
    let retried = "steward_messages_retried_total{method=\"CLICommand\"}";
    central.wait_metric("a second attempt", |c| c.metric(retried), |v| v >= 1.0);
    // The link comes back, and with it NTP: the clock jumps two days forward.
    std::fs::write(clock.path(), "+0").unwrap();
    let before = central.metric(retried);
    central.wait_metric(
        "an attempt after the jump",
        |c| c.metric(retried),
        |v| v > before + 1.0,
    );
    // Before, the next failed attempt found it accepted two days ago: given up with an
    // hour to live, into failed-messages.txt.
    assert!(
        central.read("failed-messages.txt").is_empty(),
        "given up at the clock's jump: {}",
        central.read("failed-messages.txt")
    );
    // A message accepted after the jump (for ship2, also away: a lane of its own),
    // stamped by the clock set right, lives its own ttl of 4 s: not two days more.
    central.append_inmsg(r#"[{"toNode":"ship2","data":["echo","four seconds"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"ttl":4}]"#);
    let given_up = Instant::now();
    central.wait_for("failed-messages.txt", "four seconds");
    let lived = given_up.elapsed();
    assert!(
        lived >= Duration::from_secs(3) && lived < Duration::from_secs(20),
        "a ttl of 4 s lasted {lived:?}"
    );
    assert!(central
        .log()
        .contains("the clock was set forward by 172800 s"));
    assert!(!central
        .read("failed-messages.txt")
        .contains("an hour to live"));
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    central.wait_for("replies/ship1.CLICommand.log", "an hour to live");
}

#[test]
fn a_message_from_before_a_restart_days_behind_expires_once_the_clock_is_set_right() {
    let nats = NatsServer::start();
    let clock = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(clock.path(), "+0").unwrap();
    let under = under_a_clock_set_by(clock.path());
    let under: Vec<&str> = under.iter().map(String::as_str).collect();
    let mut central = Node::start_under(&under, "central", &nats.address(), &["--clockCheck=off"]);
    central.append_inmsg(r#"[{"toNode":"ship1","data":["echo","eight seconds"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"ttl":8}]"#);
    let retried = "steward_messages_retried_total{method=\"CLICommand\"}";
    central.wait_metric("a second attempt", |c| c.metric(retried), |v| v >= 1.0);
    // It restarts two days behind (a Pi without a real-time clock), then NTP sets it
    // right: the message, accepted before the restart, is eight seconds old, not two days
    // younger than the clock says.
    central.terminate();
    std::fs::write(clock.path(), "-2d").unwrap();
    central.restart();
    central.wait_metric("an attempt", |c| c.metric(retried), |v| v >= 1.0);
    std::fs::write(clock.path(), "+0").unwrap();
    central.wait_for("failed-messages.txt", "eight seconds");
}

#[test]
fn a_message_with_a_ttl_waits_for_a_node_that_comes_later() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    // One attempt of 1 s by its retries, but a time to live of ten minutes. (How the
    // attempts and pauses go over ten minutes is `retry`'s unit tests, with a test clock.)
    central.append_inmsg(r#"[{"toNode":"ship1","data":["echo","worth the wait"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"retries":0,"ttl":600}]"#);
    // Each attempt waits its 1 s for an answer, and the pauses between them double from
    // 0.2 s: the seventh attempt starts after 18.6 s (21.8 s with the most jitter), and a
    // pause of 12.8 to 16 s follows it.
    let accepted = std::time::Instant::now();
    let retried = "steward_messages_retried_total{method=\"CLICommand\"}";
    let deadline = accepted + Duration::from_secs(60);
    while central.metric(retried) < 6.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no seventh attempt in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let seventh = accepted.elapsed();
    assert!(
        central.read("failed-messages.txt").is_empty(),
        "given up despite its ttl"
    );
    let attempts = 1.0 + central.metric(retried);
    assert!(
        seventh > Duration::from_secs(10) && seventh < Duration::from_secs(30),
        "{attempts} attempts in {seventh:?}: the pauses do not double"
    );
    // Into the pause after the seventh: a node that comes during an attempt gets the
    // message within it (sent again after "no responders").
    wait_until("the seventh attempt over", || {
        central.log().contains("attempt 7 (")
    });
    let started = std::time::Instant::now();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let reply = central.wait_for("replies/ship1.CLICommand.log", "worth the wait");
    // The publisher was in a long pause (12.7 s or more left of it), and was woken by
    // ship1's first Hello.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "took {:?} after ship1 started",
        started.elapsed()
    );
    assert!(
        central.log().contains("ship1 said Hello; trying again now"),
        "not woken by Hello"
    );
    report(
        "ttl_node_late",
        1,
        reply.matches("worth the wait").count(),
        0,
    );
    eprintln!("[ttl_node_late] {attempts} attempts in {seventh:?} while ship1 was away");
}

#[test]
fn a_message_whose_ttl_runs_out_is_kept_and_reported() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &["--defaultMessageTTL=2"]);
    central.append_inmsg(&command("ship7", &["true"]));
    let errors = central.wait_for("errors.log", "not delivered");
    assert!(errors.contains("its time to live ran out"), "{errors}");
    central.wait_for("failed-messages.txt", "ship7");
}

/// A running node's publisher threads (named `publisher <lane>`), from /proc: other
/// threads come and go on their own (a handler lingers a minute after a Hello's upkeep).
fn publisher_threads(node: &Node) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", node.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("publisher "))
        .count()
}

#[test]
fn an_idle_publisher_ends_and_starts_again_with_its_lane_s_next_message() {
    let nats = NatsServer::start();
    let ships: Vec<Node> = ["ship1", "ship2", "ship3", "ship4"]
        .iter()
        .map(|s| Node::start(s, &nats.address(), &[]))
        .collect();
    // Long enough that the publishers are surely still there when their threads are
    // counted below, even under a full test run's load.
    let central = Node::start("central", &nats.address(), &["--keepPublishersAliveFor=3"]);
    let lanes = |table: &str| {
        table
            .lines()
            .filter(|l| l.starts_with("publisher ") && l.contains(".CommandACK.CLICommand"))
            .count()
    };
    let ended = central.send_and_wait(
        r#"[{"toNodes":["ship1","ship2","ship3","ship4"],"data":["echo","first"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#,
    );
    assert!(ended.iter().all(|(_, o)| o == "acked"), "{ended:?}");
    let busy = publisher_threads(&central);
    assert!(busy >= 4, "{busy} publisher threads for 4 lanes just used");
    // Idle for three seconds: each lane's publisher ends, and its thread is no publisher's
    // any more (it waits 2 s for another process, named so, then exits).
    central.wait_status("showed every command lane's publisher ended", |t| {
        lanes(t) == 0
    });
    let idle = central.wait_metric(
        "gave the publishers' threads back",
        |n| publisher_threads(n) as f64,
        |v| v as usize + 4 <= busy,
    );
    eprintln!("[retire] publisher threads with 4 lanes busy {busy}, after {idle}");
    // The next message starts one again, and it is delivered.
    let ended = central.send_and_wait(&command("ship2", &["echo", "again"]));
    assert_eq!(ended[0].1, "acked");
    central.wait_for("replies/ship2.CLICommand.log", "again");
    assert_eq!(
        central
            .read("replies/ship2.CLICommand.log")
            .matches("=== ")
            .count(),
        2
    );
    drop(ships);
}

#[test]
fn past_max_publishers_lanes_wait_their_turn_and_every_message_is_delivered_once() {
    let nats = NatsServer::start();
    let names = ["ship1", "ship2", "ship3", "ship4", "ship5", "ship6"];
    let ships: Vec<Node> = names
        .iter()
        .map(|s| Node::start(s, &nats.address(), &[]))
        .collect();
    // Two publisher threads for six lanes (and the error and Hello lanes).
    let central = Node::start("central", &nats.address(), &["--maxPublishers=2"]);
    for round in ["one", "two"] {
        let ended = central.send_and_wait(&format!(
            r#"[{{"toNodes":["ship1","ship2","ship3","ship4","ship5","ship6"],"data":["echo","{round}"],"commandOrEvent":"CommandACK","method":"CLICommand"}}]"#
        ));
        assert_eq!(ended.len(), 6);
        assert!(ended.iter().all(|(_, o)| o == "acked"), "{ended:?}");
    }
    for name in names {
        let log = central.read(&format!("replies/{name}.CLICommand.log"));
        assert_eq!(log.matches("=== ").count(), 2, "{name}: {log}");
    }
    let table = central.status();
    let running = table
        .lines()
        .filter(|l| {
            l.starts_with("publisher ")
                && !l.contains("stopped")
                && !l.contains("waiting for a publisher thread")
        })
        .count();
    assert!(running <= 2, "{table}");
    report("max publishers 2, 6 lanes x 2", 12, 12, 0);
    drop(ships);
}

#[test]
fn lanes_pausing_for_absent_nodes_give_their_threads_to_nodes_that_answer() {
    let nats = NatsServer::start();
    let online: Vec<Node> = ["ship1", "ship2", "ship3", "ship4"]
        .iter()
        .map(|s| Node::start(s, &nats.address(), &[]))
        .collect();
    let central = Node::start("central", &nats.address(), &["--maxPublishers=2"]);
    // Three nodes away, with messages that wait for them: more than there are threads.
    central.append_inmsg(
        r#"[{"toNodes":["ship7","ship8","ship9"],"data":["echo","waited"],"commandOrEvent":"CommandACK","method":"CLICommand","ttl":600}]"#,
    );
    central.wait_status("showed the absent nodes' lanes retrying", |t| {
        t.lines()
            .filter(|l| l.starts_with("publisher ship") && l.contains("attempt"))
            .count()
            >= 1
    });
    // The nodes that answer are served all the same.
    let ended = central.send_and_wait(
        r#"[{"toNodes":["ship1","ship2","ship3","ship4"],"data":["echo","served"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#,
    );
    assert!(ended.iter().all(|(_, o)| o == "acked"), "{ended:?}");
    // An absent node that comes back gets its message, once.
    let mut ship7 = Node::prepare(&[], "ship7", &nats.address(), &[]);
    ship7.restart();
    let log = central.wait_for("replies/ship7.CLICommand.log", "waited");
    assert_eq!(log.matches("=== ").count(), 1, "{log}");
    assert!(!central.read("failed-messages.txt").contains("ship8"));
    drop(online);
}

/// Asserts that `text`'s lines are `<prefix>0` to `<prefix>{n-1}`, each once, in order,
/// and reports the counts as `test`.
fn assert_each_once_in_order(test: &str, text: &str, prefix: &str, n: usize) {
    let lines: Vec<&str> = text.lines().collect();
    let want: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let delivered = want.iter().filter(|w| lines.contains(&w.as_str())).count();
    report(test, n, delivered, lines.len() - delivered);
    assert_eq!(lines, want, "each once, in order");
}

/// A batch (or message) as it went: its size (a message alone counts as one), whether it
/// was signed over its digest, its reply subject.
type Went = (usize, bool, String);

/// The batches published on `subject` until none comes for `quiet`.
fn batches(spy: &nats::Subscription, quiet: Duration) -> Vec<Went> {
    let mut seen = Vec::new();
    while let Ok(m) = spy.next_timeout(quiet) {
        let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
        let reply = m.reply.clone().unwrap_or_default();
        seen.push((v.as_array().map_or(1, Vec::len), over_digest(&m), reply));
    }
    seen
}

/// Whether `m` is signed over its payload's digest (`Steward-Digest`).
fn over_digest(m: &nats::Message) -> bool {
    m.headers
        .as_ref()
        .is_some_and(|h| h.get(steward::keys::DIGEST).is_some())
}

/// Each batch's size, as [`batches`].
fn batch_sizes(spy: &nats::Subscription, quiet: Duration) -> Vec<usize> {
    batches(spy, quiet).into_iter().map(|(n, _, _)| n).collect()
}

#[test]
fn events_go_in_bigger_batches_once_the_receiver_says_it_takes_them() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let spy = raw.spy("ship1.EventACK.TextLogging");
    let n = 3000;
    central.append_inmsg(&text_logs("ship1", 0..n, "big-"));
    let log = ship1.wait_lines("textlog/central.log", n);
    assert_each_once_in_order("bigger_batches", &log, "big-", n);
    let seen = batches(&spy, Duration::from_millis(500));
    let sizes: Vec<usize> = seen.iter().map(|w| w.0).collect();
    // Signed over their bytes until ship1's answer says it checks signatures over a
    // digest (the first, and the one made ready meanwhile), then over their digest (as
    // long as none fails: none does, below), and taken so; each answered the same way.
    let digests: Vec<bool> = seen.iter().map(|w| w.1).collect();
    let first = digests.iter().position(|&d| d);
    assert!(first.is_some_and(|i| (1..=2).contains(&i)), "{digests:?}");
    assert!(digests[first.unwrap()..].iter().all(|&d| d), "{digests:?}");
    let answers = raw.answers_where(|s| s.starts_with("_INBOX.central."));
    for (_, digest, reply) in &seen {
        let answer = answers.iter().find(|a| &a.subject == reply);
        let answer = answer.unwrap_or_else(|| panic!("no answer on {reply}"));
        assert_eq!(over_digest(answer), *digest, "the answer on {reply}");
    }
    // 256 at first (every node takes that many: the first, and the next, made ready while
    // the receiver had the first), then as many as ship1's answers say it takes.
    assert!(
        sizes.len() >= 3 && sizes[..2].iter().all(|&s| s <= 256),
        "{sizes:?}"
    );
    assert!(sizes.iter().any(|&s| s > 256), "{sizes:?}");
    assert!(
        sizes.iter().all(|&s| s <= steward::message::MAX_BATCH),
        "{sizes:?}"
    );
    // Nothing sent twice.
    assert_eq!(sizes.iter().sum::<usize>(), n, "{sizes:?}");
    let failed = "steward_batches_failed_total{method=\"TextLogging\"}";
    assert_eq!(central.metric(failed), 0.0);
}

#[test]
fn events_of_a_method_that_runs_each_alone_stay_in_batches_of_256() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let spy = raw.spy("ship1.EventACK.FileAppend");
    let n = 1500;
    let events: String = (0..n)
        .map(|i| {
            format!(
                "[{{\"toNode\":\"ship1\",\"data\":[\"a-{i}\"],\"commandOrEvent\":\"EventACK\",\"method\":\"FileAppend\",\"directory\":\"m\",\"fileName\":\"all.txt\"}}]\n"
            )
        })
        .collect();
    central.append_inmsg(&events);
    let file = ship1.wait_lines("m/central/all.txt", n);
    assert_each_once_in_order("file_append_batches", &file, "a-", n);
    // FileAppend runs each message alone (a write and an fsync each): ship1 says 256, so
    // that a batch's one timeout still covers its runs.
    let sizes = batch_sizes(&spy, Duration::from_millis(500));
    assert!(sizes.iter().any(|&s| s > 1), "{sizes:?}");
    assert!(sizes.iter().all(|&s| s <= 256), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), n, "{sizes:?}");
}

/// ship1 as a node from before `batchMax` would be (session 27): its answers say nothing
/// of it, and a batch of more than 256 it refuses (silently, as such a node does: "a batch
/// of 257 messages; 1 to 256 are allowed"); or from before `digestSig` (session 28): says
/// it takes 1,024, and refuses a batch signed over its digest (silently: to such a node its
/// signature does not verify). Played by a plain client holding ship1's key.
struct OldShip1 {
    key: steward::keys::Identity,
    /// Which session's node it is for now: 27, 28, or 29 (says both, as this version).
    session: u32,
    /// The events it ran, in order, by their text.
    ran: Vec<String>,
    /// Each batch (or message) that came: its size, whether it was answered, whether it
    /// was signed over its digest.
    came: Vec<(usize, bool, bool)>,
}

impl OldShip1 {
    /// Takes what comes on `sub` and answers it, until `n` events in all have run.
    fn serve(&mut self, raw: &Raw, sub: &nats::Subscription, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.ran.len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "stuck: {:?}",
                self.came
            );
            let Ok(m) = sub.next_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
            let batch = v.as_array().cloned();
            let envelopes = batch.clone().unwrap_or_else(|| vec![v]);
            let digest = over_digest(&m);
            let takes =
                (envelopes.len() <= 256 || self.session >= 28) && (!digest || self.session >= 29);
            self.came.push((envelopes.len(), takes, digest));
            if !takes {
                continue;
            }
            let mut replies = Vec::new();
            for (i, e) in envelopes.iter().enumerate() {
                let text = e["data"][0].as_str().unwrap().trim_end().to_string();
                // Run once: a resent event is answered again, not run again.
                if !self.ran.contains(&text) {
                    self.ran.push(text);
                }
                let mut reply = serde_json::json!({
                    "id": e["id"], "fromNode": "ship1", "toNode": "central", "status": "ok",
                    "output": ""
                });
                if i == 0 && batch.is_some() && self.session >= 28 {
                    reply["batchMax"] = 1024.into();
                }
                if i == 0 && batch.is_some() && self.session >= 29 {
                    reply["digestSig"] = true.into();
                }
                replies.push(reply);
            }
            let payload = match batch {
                Some(_) => serde_json::to_vec(&replies).unwrap(),
                None => serde_json::to_vec(&replies[0]).unwrap(),
            };
            let to = m.reply.as_deref().unwrap();
            let request_sig = m.headers.as_ref().unwrap().get(steward::keys::SIG).unwrap();
            // Signed as the request was, as a node does (either verifies).
            let covers = match digest {
                true => steward::keys::Covers::Digest,
                false => steward::keys::Covers::Payload,
            };
            let sealed = self.key.seal_covering(
                steward::keys::Scope::reply(to, request_sig),
                &payload,
                covers,
            );
            raw.send(to, None, Some(&sealed.headers), &payload);
        }
    }
}

#[test]
fn a_node_from_before_batch_max_or_digest_sig_only_ever_gets_batches_it_takes() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let sub = raw.spy("ship1.EventACK.TextLogging");
    let mut ship1 = OldShip1 {
        key: steward::keys::Identity::from_seed(&common::seed_of("ship1")).unwrap(),
        session: 27,
        ran: Vec::new(),
        came: Vec::new(),
    };
    let send = |from: usize, to: usize| {
        central.append_inmsg(&text_logs("ship1", from..to, "old-"));
    };
    let big = |came: &[(usize, bool, bool)]| came.iter().filter(|c| c.0 > 256).count();
    let digests = |came: &[(usize, bool, bool)]| came.iter().filter(|c| c.2).count();
    // 1. An old node all along: batches, none over 256, none signed over a digest.
    send(0, 1500);
    ship1.serve(&raw, &sub, 1500);
    assert_eq!(
        big(&ship1.came) + digests(&ship1.came),
        0,
        "{:?}",
        ship1.came
    );
    assert!(ship1.came.iter().any(|c| c.0 > 1), "{:?}", ship1.came);
    // 2. Upgraded to session 28's: its answers say it takes 1,024; bigger batches come,
    // signed over their bytes (it would refuse the other).
    ship1.session = 28;
    send(1500, 4500);
    let at = ship1.came.len();
    while big(&ship1.came[at..]) < 2 {
        ship1.serve(&raw, &sub, ship1.ran.len() + 1);
    }
    assert_eq!(digests(&ship1.came), 0, "{:?}", ship1.came);
    // 3. Upgraded to this version: batches signed over their digest come.
    ship1.session = 29;
    send(4500, 7500);
    while digests(&ship1.came) == 0 {
        ship1.serve(&raw, &sub, ship1.ran.len() + 1);
    }
    // 4. Replaced by session 27's again: the next big (or digest-signed) batch is refused
    // (not answered); after its attempt, one at a time, then batches of 256 signed over
    // their bytes again, nothing lost.
    ship1.session = 27;
    let at = ship1.came.len();
    ship1.serve(&raw, &sub, 7500);
    let after = &ship1.came[at..];
    let refused = after.iter().filter(|c| !c.1).count();
    let past_refusal: Vec<(usize, bool, bool)> =
        after.iter().skip_while(|c| c.1).skip(1).copied().collect();
    let want: Vec<String> = (0..7500).map(|i| format!("old-{i}")).collect();
    let delivered = want.iter().filter(|w| ship1.ran.contains(w)).count();
    report(
        "batch_max_downgrade",
        7500,
        delivered,
        ship1.ran.len() - delivered,
    );
    assert_eq!(ship1.ran, want, "each event once, in order");
    assert!(refused <= 1, "{after:?}");
    assert_eq!(big(&past_refusal) + digests(&past_refusal), 0, "{after:?}");
    // The refused batch failed (a slow answer on a loaded machine may fail one more).
    let failed = "steward_batches_failed_total{method=\"TextLogging\"}";
    central.wait_metric(
        "batches failed",
        |c| c.metric(failed),
        |v| v >= refused as f64,
    );
}

#[test]
fn a_node_back_from_an_outage_gets_a_long_attempt_s_command_at_its_hello() {
    let nats = NatsServer::start();
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    ship1.kill9();
    let central = Node::start("central", &nats.address(), &[]);
    // One attempt of two minutes: "no responders" while ship1 is away.
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["echo","back"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":120}]"#,
    );
    // Past the quick sends (the last 18.2 s after the first; the next is 30 s after that).
    std::thread::sleep(Duration::from_secs(20));
    let back = Instant::now();
    ship1.restart();
    central.wait_for("replies/ship1.CLICommand.log", "back");
    assert!(
        back.elapsed() < Duration::from_secs(15),
        "ACKed {:?} after ship1 was back",
        back.elapsed()
    );
    assert!(central
        .log()
        .contains("ship1 said Hello; sending again now"));
}

#[test]
fn a_message_larger_than_the_broker_takes_fails_and_the_link_and_lane_go_on() {
    let nats = NatsServer::with_max_payload(64 * 1024);
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    // 100 kB: within a message's limits, over this broker's. Sent, the broker closed the
    // connection, and it was sent again after each reconnect, for ever.
    // Whatever its kind and however long it may be tried: it can never be sent.
    let big = "x".repeat(100_000);
    for (kind, rules) in [
        ("CommandACK", r#""retries":1"#),
        ("CommandACK", r#""ttl":600"#),
        ("CommandNACK", r#""ttl":600"#),
    ] {
        central.append_inmsg(&format!(
            r#"[{{"toNode":"ship1","data":["echo","{big}"],"commandOrEvent":"{kind}","method":"CLICommand",{rules}}}]"#
        ));
    }
    central.append_inmsg(&command("ship1", &["echo", "after it"]));
    let failed = central.wait_count("failed-messages.txt", &big, 3);
    assert_eq!(failed.matches(&big).count(), 3);
    central.wait_for("replies/ship1.CLICommand.log", "after it");
    let errors = central.wait_for("errors.log", "max_payload");
    assert!(errors.contains("more than the broker takes"), "{errors}");
    assert_eq!(central.metric("steward_broker_reconnects_total"), 0.0);
}

/// Lanes to absent nodes share the publishers' threads (`--maxPublishers`): each gives its
/// thread up while it pauses (parked). One whose node comes back is in line at the node's
/// Hello, not at its pause's end.
#[test]
fn a_parked_lane_whose_node_comes_back_goes_at_its_hello() {
    let nats = NatsServer::start();
    let mut ship2 = Node::start("ship2", &nats.address(), &[]);
    ship2.kill9();
    let central = Node::start("central", &nats.address(), &["--maxPublishers=1"]);
    for to in ["ship2", "ship3"] {
        central.append_inmsg(&format!(
            r#"[{{"toNode":"{to}","data":["echo","back"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"ttl":600}}]"#
        ));
    }
    // Attempts of 1 s in turn, the pauses doubling: after the seventh, 12.8 s (about 25 s
    // in; a minute on a slow machine). Back once it failed, in that pause: back during
    // the attempt, the attempt's own sending again (to a node not there, every few tenths
    // of a second) could reach ship2 before its Hello did, and so nothing here would say
    // whether the Hello woke the lane.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !central
        .log()
        .contains("ship2.CommandACK.CLICommand: attempt 7 (")
    {
        assert!(
            Instant::now() < deadline,
            "ship2's seventh attempt never failed"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let back = Instant::now();
    ship2.restart();
    central.wait_for("replies/ship2.CLICommand.log", "back");
    assert!(
        back.elapsed() < Duration::from_secs(9),
        "ACKed {:?} after ship2 was back",
        back.elapsed()
    );
    // In line at the Hello (parked), woken in its pause (its thread kept: the other lane
    // was parked too), or sent again in the attempt it had given its thread up in and
    // gone on with.
    let log = central.log();
    assert!(
        log.contains("ship2 said Hello; in line to try again now")
            || log.contains("ship2 said Hello; trying again now")
            || log.contains("ship2 said Hello; sending again now"),
        "{log}"
    );
}

/// A command that runs long on a node that came back: its Hellos, each second here, do not
/// send it again and again until the reply of the run it started is no longer taken.
#[test]
fn a_long_command_on_a_node_that_came_back_is_acked_when_it_ends_whatever_its_hellos() {
    let nats = NatsServer::start();
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    ship1.kill9();
    let central = Node::start("central", &nats.address(), &[]);
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sleep","12"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":120}]"#,
    );
    std::thread::sleep(Duration::from_secs(3));
    let back = Instant::now();
    ship1.restart();
    central.wait_for("replies/ship1.CLICommand.log", "status=Ok");
    assert!(
        back.elapsed() < Duration::from_secs(40),
        "ACKed {:?} after ship1 was back (a 12 s command)",
        back.elapsed()
    );
    assert_eq!(
        ship1.metric("steward_messages_received_total{method=\"CLICommand\",outcome=\"ok\"}"),
        1.0,
        "run once"
    );
}

/// Nodes away, each with a command of an hour's attempt, and `--maxPublishers` threads
/// in all: their lanes give their thread up between sends, so a node that answers is not
/// held up (it waited out the hour), and one that comes back gets its command within the
/// same attempt.
#[test]
fn nodes_away_in_long_attempts_do_not_hold_up_the_nodes_that_answer() {
    let nats = NatsServer::start();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut ship2 = Node::start("ship2", &nats.address(), &[]);
    ship2.kill9();
    let central = Node::start("central", &nats.address(), &["--maxPublishers=1"]);
    for to in ["ghost0", "ship2", "ghost1"] {
        central.append_inmsg(&format!(
            r#"[{{"toNode":"{to}","data":["echo","back at {to}"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":3600}}]"#
        ));
    }
    central.wait_status("a lane away in its attempt", |t| {
        t.lines().any(|l| l.starts_with("publisher ghost0"))
    });
    let asked = Instant::now();
    central.append_inmsg(&command("ship1", &["echo", "served"]));
    central.wait_for("replies/ship1.CLICommand.log", "served");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "ship1 waited {:?}",
        asked.elapsed()
    );
    let back = Instant::now();
    ship2.restart();
    central.wait_for("replies/ship2.CLICommand.log", "back at ship2");
    assert!(
        back.elapsed() < Duration::from_secs(30),
        "ACKed {:?} after ship2 was back",
        back.elapsed()
    );
    let log = central.log();
    assert!(
        log.contains("ship2.CommandACK.CLICommand: attempt 1 ")
            && !log.contains("ship2.CommandACK.CLICommand: attempt 2"),
        "one attempt, gone on with: {log}"
    );
    // A lane away gives its thread up once per send, its resends' pauses growing (0.05,
    // 0.2, 0.65, 2, 6 s…) whoever sends them: not a turn every 50 ms.
    std::thread::sleep(Duration::from_secs(5));
    let gave_way = central
        .log()
        .matches("ghost0.CommandACK.CLICommand: attempt 1 of")
        .count();
    assert!(
        (1..=8).contains(&gave_way),
        "gave its thread up {gave_way} times"
    );
}
