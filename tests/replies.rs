//! Results go where the operator says: `toNodes` fan-out, `methodTimeout`, results as
//! messages of their own (`replyMethod`: `File`, `FileAppend`, `None`), remote process
//! control and public keys, and a result that central never asked for, refused.

use crate::common;
use common::raw::{envelope, Raw};
use common::{key_of, wait_until, NatsServer, Node};
use std::time::{Duration, Instant};

/// Waits until `node`'s journal holds nothing pending: everything it sent (results too) has
/// been ACKed, so the receiver has handled it to the end.
fn wait_sent(node: &Node) {
    node.wait_status("showed the journal empty", |t| {
        t.lines()
            .next()
            .is_some_and(|l| l.contains("journal: 0 pending"))
    });
}

/// Records in a `replies/` file: one `=== … id=…` line each.
fn records(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("=== ")).collect()
}

/// Waits until central's CLICommand reply file holds ship1's late reply to `id`, which ran
/// (`done`), kept once with its note: the file.
fn late_reply_kept_once(central: &Node, id: &str) -> String {
    let kept = central.wait_for("replies/ship1.CLICommand.log", "[steward: this reply came");
    assert_eq!(records(&kept).len(), 1, "{kept}");
    assert!(
        records(&kept)[0].contains(&format!("id={id} from=ship1 status=Ok exit=0")),
        "{kept}"
    );
    assert!(kept.contains("done\n[steward: this reply came"), "{kept}");
    kept
}

#[test]
fn to_nodes_makes_one_message_per_ship_each_acked_and_stored_once() {
    let nats = NatsServer::start();
    let ships: Vec<Node> = ["ship1", "ship2", "ship3"]
        .iter()
        .map(|s| Node::start(s, &nats.address(), &[]))
        .collect();
    let central = Node::start("central", &nats.address(), &[]);
    let ended = central.send_and_wait(
        r#"[{"toNodes":["ship1","ship2","ship3"],"data":["sh","-c","echo on $(cat /proc/sys/kernel/hostname) once"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#,
    );
    let mut ids: Vec<&str> = ended.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ended.len(), 3, "{ended:?}");
    assert!(ended.iter().all(|(_, o)| o == "acked"), "{ended:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three ids");
    for ship in &ships {
        let log = central.read(&format!("replies/{}.CLICommand.log", ship.name));
        assert_eq!(records(&log).len(), 1, "{}: {log}", ship.name);
        assert!(log.contains(&format!("from={} status=Ok exit=0", ship.name)));
    }
    // `toNode` and `toNodes` together: the union, each once.
    let ended = central.send_and_wait(
        r#"[{"toNode":"ship1","toNodes":["ship1","ship2"],"data":["true"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#,
    );
    assert_eq!(ended.len(), 2, "{ended:?}");

    // One ship away, with a TTL: the other two finish at once, the third when it appears.
    let mut ship4 = Node::prepare(&[], "ship4", &nats.address(), &[]);
    central.append_inmsg(
        r#"[{"toNodes":["ship1","ship2","ship4"],"data":["echo","fan-out"],"commandOrEvent":"CommandACK","method":"CLICommand","ttl":600}]"#,
    );
    central.wait_for("replies/ship1.CLICommand.log", "fan-out");
    central.wait_for("replies/ship2.CLICommand.log", "fan-out");
    assert!(
        !central
            .read("replies/ship4.CLICommand.log")
            .contains("fan-out"),
        "ship4 is not up"
    );
    ship4.restart();
    let log = central.wait_for("replies/ship4.CLICommand.log", "fan-out");
    assert_eq!(records(&log).len(), 1, "{log}");
    // A bad name in toNodes refuses the whole message, with what is wrong.
    central.append_inmsg(
        r#"[{"toNodes":["ship1","ship 2"],"data":["echo","never"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#,
    );
    let rejected = central.wait_for("inmsg.rejected.txt", "toNodes[1]");
    assert!(rejected.contains("space"), "{rejected}");
    common::settle(&central, &ships[0], "CLICommand");
    assert!(!central
        .read("replies/ship1.CLICommand.log")
        .contains("never"));
}

#[test]
fn a_result_to_file_keeps_the_second_output_file_append_both_and_none_nothing() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let send = |method: &str, file: &str, text: &str| {
        let ended = central.send_and_wait(&format!(
            r#"[{{"toNode":"ship1","data":["echo","{text}"],"commandOrEvent":"CommandACK","method":"CLICommand","replyMethod":"{method}","directory":"m","fileName":"{file}"}}]"#
        ));
        assert_eq!(ended[0].1, "acked", "{ended:?}");
    };
    send("File", "df.txt", "first");
    send("File", "df.txt", "second");
    send("FileAppend", "all.txt", "first");
    send("FileAppend", "all.txt", "second");
    wait_sent(&ship1);
    assert_eq!(central.read("m/ship1/df.txt"), "second\n");
    assert_eq!(central.read("m/ship1/all.txt"), "first\nsecond\n");
    // The ACKs say where each result went, not the output.
    let acks = central.read("replies/ship1.CLICommand.log");
    assert_eq!(
        acks.matches("result sent to central.File as ship1-")
            .count(),
        2
    );
    assert!(!acks.contains("second"), "{acks}");

    // None: no result anywhere; the ACK still says how it ended.
    let ended = central.send_and_wait(
        r#"[{"toNode":"ship1","data":["echo","nowhere"],"commandOrEvent":"CommandACK","method":"CLICommand","replyMethod":"None","directory":"n","fileName":"x.txt"}]"#,
    );
    assert_eq!(ended[0].1, "acked");
    wait_sent(&ship1);
    assert!(!central.path("n").exists());
    let acks = central.read("replies/ship1.CLICommand.log");
    assert!(!acks.contains("nowhere"), "{acks}");
    assert_eq!(records(&acks).len(), 5);

    // A reply method that would run a command, or a file outside the folder: refused at
    // intake, with what is wrong.
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["id"],"commandOrEvent":"CommandACK","method":"CLICommand","replyMethod":"CLICommand"},
{"toNode":"ship1","data":["id"],"commandOrEvent":"CommandACK","method":"CLICommand","replyMethod":"File","directory":"../etc","fileName":"x"}]"#,
    );
    let rejected = central.wait_count("inmsg.rejected.txt", "# ", 2);
    assert!(
        rejected.contains("bad replyMethod \"CLICommand\""),
        "{rejected}"
    );
    assert!(
        rejected.contains("would leave the data folder"),
        "{rejected}"
    );
}

#[test]
fn a_result_journaled_before_a_kill_arrives_once_and_the_command_ran_once() {
    let nats = NatsServer::start();
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::start("central", &nats.address(), &[]);
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","echo ran >> runs.txt; sleep 2; echo the-output"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":10,"replyMethod":"FileAppend","directory":"m","fileName":"out.txt"}]"#,
    );
    ship1.wait_for("runs.txt", "ran");
    // Central gone while the command runs: neither the ACK nor the result can leave.
    central.kill9();
    ship1.wait_status("kept the result to send", |t| {
        t.lines()
            .any(|l| l.starts_with("publisher central.EventACK.FileAppend") && l.contains(" 1 "))
    });
    ship1.kill9();
    ship1.restart();
    central.restart();
    central.wait_for("m/ship1/out.txt", "the-output");
    wait_sent(&ship1);
    wait_sent(&central);
    assert_eq!(central.read("m/ship1/out.txt"), "the-output\n");
    assert_eq!(ship1.read("runs.txt"), "ran\n", "the command ran once");
    let acks = central.read("replies/ship1.CLICommand.log");
    assert_eq!(records(&acks).len(), 1, "{acks}");
    assert!(acks.contains("result sent to central.FileAppend"), "{acks}");
    common::report("result across a kill", 1, 1, 0);
}

#[test]
fn a_command_killed_at_method_timeout_says_so_and_is_not_retried() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let started = Instant::now();
    let ended = central.send_and_wait(
        r#"[{"toNode":"ship1","data":["sleep","10"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":30,"methodTimeout":2}]"#,
    );
    let took = started.elapsed();
    assert_eq!(ended[0].1, "acked");
    assert!(
        took < Duration::from_secs(9),
        "took {took:?}: not killed at 2 s"
    );
    let acks = central.read("replies/ship1.CLICommand.log");
    assert!(
        acks.contains("killed after the 2s deadline (methodTimeout)"),
        "{acks}"
    );
    assert_eq!(records(&acks).len(), 1);
    // Central's log line of the reply shows the kill note, the first line with anything
    // on it (the command wrote nothing).
    let log = central.log();
    assert!(
        log.contains("exit 137: [steward: killed after the 2s deadline"),
        "{log}"
    );
    // One attempt: ship1 received it once.
    assert_eq!(
        ship1.metric("steward_messages_received_total{method=\"CLICommand\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        ship1
            .metric("steward_messages_received_total{method=\"CLICommand\",outcome=\"duplicate\"}"),
        0.0
    );
    // methodTimeout -1: no limit (a quick command just runs).
    let ended = central.send_and_wait(
        r#"[{"toNode":"ship1","data":["echo","unlimited"],"commandOrEvent":"CommandACK","method":"CLICommand","methodTimeout":-1}]"#,
    );
    assert_eq!(ended[0].1, "acked");
    central.wait_for("replies/ship1.CLICommand.log", "unlimited");
}

/// A command allowed to run longer (`methodTimeout`) than its sender waits for its ACK
/// (`timeout`) is given up, its retries spent, while it runs on: listed in
/// failed-messages.txt as before, and its reply, when it comes, kept all the same in its
/// reply file with a line that says so, logged and reported: it ran, once.
#[test]
fn a_command_given_up_while_it_runs_has_its_late_reply_kept_and_said() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let ran = ship1.path("ran");
    let message = format!(
        r#"[{{"toNode":"ship1","data":["sh","-c","sleep 3; echo once >> {}; echo done"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"methodTimeout":10,"retries":0}}]"#,
        ran.display()
    );
    let ended = central.send_and_wait(&message);
    assert_eq!(ended[0].1, "failed", "{ended:?}");
    let id = &ended[0].0;
    let failed = central.read("failed-messages.txt");
    assert!(failed.contains("sleep 3"), "{failed}");
    // Said where the operator looks first: it may have run, and what comes is kept.
    let log = central.log();
    assert!(
        log.contains("it may have reached ship1 and run there: a reply that comes later is kept"),
        "{log}"
    );
    let kept = late_reply_kept_once(&central, id);
    assert!(kept.contains("do not send it again"), "{kept}");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "once\n");
    let errors = central.wait_for("errors.log", "ran on ship1 after all");
    assert!(errors.contains(id.as_str()), "{errors}");
    assert_eq!(
        central.metric("steward_late_replies_total{method=\"CLICommand\"}"),
        1.0
    );
    // The message log keeps how it ended at the time: failed.
    let logged = central.read("message-log.txt");
    assert!(logged.contains("\"outcome\":\"failed\""), "{logged}");
}

/// Restarts of the sender (an upgrade, then a kill -9) while a command given up still
/// runs: the message is awaited again from `late-replies.json`, on the inbox of the first
/// run, which sent it, and its reply kept when it comes. An entry in the file that is not
/// steward's is said and set aside; the rest is awaited all the same.
#[test]
fn a_late_reply_awaited_before_its_sender_restarted_is_kept_after() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::start("central", &nats.address(), &[]);
    let (go, ran) = (ship1.path("go"), ship1.path("ran"));
    // It ends when the test says so: after the restarts, however long they take.
    let message = format!(
        r#"[{{"toNode":"ship1","data":["sh","-c","while [ ! -e {} ]; do sleep 0.1; done; echo once >> {}; echo done"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"methodTimeout":60,"retries":0}}]"#,
        go.display(),
        ran.display()
    );
    let ended = central.send_and_wait(&message);
    assert_eq!(ended[0].1, "failed", "{ended:?}");
    let id = ended[0].0.clone();
    // Kept within a second of the give-up. Stopped as systemd stops it, then started; then
    // killed without a word, and started again.
    let kept = central.wait_for("late-replies.json", &id);
    let first_inbox = kept.split("_INBOX.central.").nth(1).unwrap()[..10].to_string();
    assert_eq!(central.terminate(), Some(0));
    central.restart();
    wait_until("the second run listening on the first run's inbox", || {
        central
            .log()
            .contains("an earlier run's inbox, for late replies")
    });
    central.kill9();
    // Meanwhile an entry no run of central wrote: another node's inbox.
    let file = central.read("late-replies.json");
    let stranger = file
        .replace("_INBOX.central.", "_INBOX.ship2.")
        .replace("[\n", "");
    std::fs::write(
        central.path("late-replies.json"),
        format!("[\n{},\n{stranger}", &file[2..file.len() - 3]),
    )
    .unwrap();
    central.restart();
    wait_until("central listening on the first run's inbox", || {
        central
            .log()
            .matches("an earlier run's inbox, for late replies")
            .count()
            >= 2
    });
    std::fs::write(&go, "").unwrap();
    late_reply_kept_once(&central, &id);
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "once\n");
    let log = central.log();
    assert_eq!(
        log.matches("awaiting the late replies of 1 message(s) given up before this start")
            .count(),
        2,
        "{log}"
    );
    assert!(
        log.contains(&format!("listening on _INBOX.central.{first_inbox}")),
        "{log}"
    );
    // The stranger: said, let go, and the file as it stood set aside.
    assert!(
        log.contains("is not a reply subject of this node's"),
        "{log}"
    );
    assert!(central
        .read("late-replies.json.bad")
        .contains("_INBOX.ship2."));
    central.wait_for("errors.log", "1 of its entries not steward's");
    // Nothing awaited any more: the file is gone, and the process with it.
    wait_until("late-replies.json removed", || {
        !central.path("late-replies.json").exists()
    });
    central.wait_status("showed the late replies process gone", |t| {
        !t.contains("late replies")
    });
    assert_eq!(
        central.metric("steward_late_replies_total{method=\"CLICommand\"}"),
        1.0
    );
}

/// A command given up, whose reply came while central was stopped (an upgrade that took
/// longer than the command): published once into nothing, it was lost. Started again,
/// central asks ship1 for it (`ReplyAgain`), which answers from its record: kept once,
/// and the command ran once.
#[test]
fn a_reply_that_came_while_its_sender_was_down_is_asked_for_again_and_kept() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::start("central", &nats.address(), &[]);
    let (go, ran) = (ship1.path("go"), ship1.path("ran"));
    let message = format!(
        r#"[{{"toNode":"ship1","data":["sh","-c","while [ ! -e {} ]; do sleep 0.1; done; echo once >> {}; echo done"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"methodTimeout":60,"retries":0}}]"#,
        go.display(),
        ran.display()
    );
    let ended = central.send_and_wait(&message);
    assert_eq!(ended[0].1, "failed", "{ended:?}");
    let id = ended[0].0.clone();
    central.wait_for("late-replies.json", &id);
    assert_eq!(central.terminate(), Some(0));
    // The command ends and ship1 answers while central is down.
    std::fs::write(&go, "").unwrap();
    wait_until("ship1 answered into nothing", || {
        ship1
            .log()
            .contains(&format!("{id} from central: answered"))
    });
    central.restart();
    late_reply_kept_once(&central, &id);
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "once\n");
    let log = ship1.log();
    assert!(
        log.contains(&format!("{id} from central: its reply given again")),
        "{log}"
    );
    assert_eq!(
        ship1.metric("steward_messages_received_total{method=\"ReplyAgain\",outcome=\"recalled\"}"),
        1.0
    );
    wait_until("late-replies.json removed", || {
        !central.path("late-replies.json").exists()
    });
}

/// A command given up, whose late reply central kept just before it was killed (kill -9)
/// with the table on disk still awaiting it (the kill between the two writes): awaited
/// again at the restart, ship1 is asked again and gives the same reply, which is found in
/// the reply file and not kept twice.
#[test]
fn a_late_reply_kept_just_before_a_kill_is_not_kept_again_when_asked_for_after_the_restart() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::start("central", &nats.address(), &[]);
    let go = ship1.path("go");
    let message = format!(
        r#"[{{"toNode":"ship1","data":["sh","-c","while [ ! -e {} ]; do sleep 0.1; done; echo done"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"methodTimeout":60,"retries":0}}]"#,
        go.display()
    );
    let ended = central.send_and_wait(&message);
    assert_eq!(ended[0].1, "failed", "{ended:?}");
    let id = ended[0].0.clone();
    let table = central.wait_for("late-replies.json", &id);
    std::fs::write(&go, "").unwrap();
    late_reply_kept_once(&central, &id);
    wait_until("late-replies.json removed", || {
        !central.path("late-replies.json").exists()
    });
    central.kill9();
    std::fs::write(central.path("late-replies.json"), &table).unwrap();
    central.restart();
    let found = format!("the late reply of {id} is in");
    wait_until("the answer found kept already", || {
        central.log().contains(&found)
    });
    late_reply_kept_once(&central, &id);
    wait_until("late-replies.json removed again", || {
        !central.path("late-replies.json").exists()
    });
    assert!(ship1
        .log()
        .contains(&format!("{id} from central: its reply given again")));
    let late = "steward_late_replies_total{method=\"CLICommand\"}";
    assert_eq!(central.metric(late), 0.0, "counted in the run that kept it");
}

/// A command given up, whose reply came while central's link was cut (a satellite link
/// down for the minute the command ended in): the broker had no one to give it to. When
/// the link is back, central asks ship1 for it again: kept once, the command ran once.
#[test]
fn a_reply_that_came_while_its_sender_s_link_was_cut_is_asked_for_again_and_kept() {
    let nats = NatsServer::start();
    let proxy = common::proxy::FaultProxy::start(nats.port);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &proxy.address(), &[]);
    let (go, ran) = (ship1.path("go"), ship1.path("ran"));
    let message = format!(
        r#"[{{"toNode":"ship1","data":["sh","-c","while [ ! -e {} ]; do sleep 0.1; done; echo once >> {}; echo done"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"methodTimeout":60,"retries":0}}]"#,
        go.display(),
        ran.display()
    );
    let ended = central.send_and_wait(&message);
    assert_eq!(ended[0].1, "failed", "{ended:?}");
    let id = ended[0].0.clone();
    proxy.down(true);
    proxy.cut();
    wait_until("the broker without central", || {
        nats.connection_of("central").is_none()
    });
    std::fs::write(&go, "").unwrap();
    wait_until("ship1 answered into nothing", || {
        ship1
            .log()
            .contains(&format!("{id} from central: answered"))
    });
    proxy.down(false);
    late_reply_kept_once(&central, &id);
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "once\n");
    assert!(central.log().contains("reconnected to the broker"));
    let log = ship1.log();
    assert!(
        log.contains(&format!("{id} from central: its reply given again")),
        "{log}"
    );
}

/// A command given up, and ship1 killed while it ran: its reply will never come. When
/// ship1 is back (its first Hello), central asks it again, and ship1 answers from its
/// record that the command was interrupted: kept, and said, rather than awaited for an
/// hour and said "no reply was heard". Not run again.
#[test]
fn a_node_killed_while_it_ran_a_command_given_up_says_so_when_it_is_back() {
    let nats = NatsServer::start();
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let (started, go) = (ship1.path("started"), ship1.path("go"));
    let message = format!(
        r#"[{{"toNode":"ship1","data":["sh","-c","echo >> {}; while [ ! -e {} ]; do sleep 0.1; done; echo done"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"methodTimeout":60,"retries":0}}]"#,
        started.display(),
        go.display()
    );
    let ended = central.send_and_wait(&message);
    assert_eq!(ended[0].1, "failed", "{ended:?}");
    let id = ended[0].0.clone();
    // Asked while it runs (ship1 says Hello): no answer, still awaited.
    ship1.kill9();
    std::fs::write(&go, "").unwrap(); // the orphaned command ends
    ship1.restart();
    let kept = central.wait_for("replies/ship1.CLICommand.log", "[steward: this reply came");
    assert_eq!(records(&kept).len(), 1, "{kept}");
    assert!(
        records(&kept)[0].contains(&format!("id={id} from=ship1 status=Error")),
        "{kept}"
    );
    assert!(
        kept.contains("was interrupted by a restart of ship1"),
        "{kept}"
    );
    central.wait_for("errors.log", "interrupted");
    assert_eq!(std::fs::read_to_string(&started).unwrap(), "\n", "run once");
    wait_until("late-replies.json removed", || {
        !central.path("late-replies.json").exists()
    });
}

/// A command whose lane gave its thread up between attempts (`--maxPublishers` 1, another
/// lane waiting) was sent again by another publisher, under another reply subject; given
/// up, its reply to the first send, which started the run, is still kept.
#[test]
fn a_late_reply_to_a_send_of_a_publisher_that_gave_its_thread_up_is_kept() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let _ship2 = Node::start("ship2", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &["--maxPublishers=1"]);
    let raw = Raw::connect(&nats.address());
    let spy = raw.spy("ship1.CommandACK.CLICommand");
    let (started, ran) = (ship1.path("started"), ship1.path("ran"));
    central.append_inmsg(&format!(
        r#"[{{"toNode":"ship1","data":["sh","-c","echo >> {}; sleep 6; echo once >> {}; echo parked and done"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"methodTimeout":20,"retries":1}}]"#,
        started.display(),
        ran.display()
    ));
    wait_until("ship1 started the command", || started.exists());
    // Now ship2's lane waits for the thread: ship1's gives it up in its pause.
    central.append_inmsg(&common::command("ship2", &["echo", "meanwhile"]));
    central.wait_for("replies/ship2.CLICommand.log", "meanwhile");
    central.wait_for("failed-messages.txt", "parked and done");
    let mut subjects = Vec::new();
    while let Ok(m) = spy.next_timeout(Duration::from_millis(200)) {
        subjects.push(m.reply.unwrap());
    }
    subjects.dedup();
    assert!(subjects.len() >= 2, "one publisher sent it: {subjects:?}");
    let kept = central.wait_for("replies/ship1.CLICommand.log", "[steward: this reply came");
    assert!(kept.contains("parked and done\n[steward"), "{kept}");
    assert_eq!(records(&kept).len(), 1, "{kept}");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "once\n");
}

#[test]
fn a_reply_cut_to_the_broker_s_limit_is_recorded_as_it_was_sent() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    // 250 kB of NUL bytes: 1.5 MB written as JSON, over the broker's 1 MiB.
    let ended = central.send_and_wait(
        r#"[{"toNode":"ship1","data":["head","-c","250000","/dev/zero"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#,
    );
    assert_eq!(ended[0].1, "acked");
    let stored = central.read("replies/ship1.CLICommand.log");
    assert!(stored.contains("trimmed to the broker's payload limit"));
    let sent = stored.matches('\0').count();
    assert!((100_000..250_000).contains(&sent), "{sent} bytes came");
    // ship1 keeps, for a retry, what it sent: not more.
    let kept = String::from_utf8_lossy(&std::fs::read(ship1.path("journal/received.log")).unwrap())
        .matches("\\u0000")
        .count();
    assert_eq!(kept, sent, "recorded {kept}, sent {sent}");
}

/// A result sent as a message of its own is cut to what the broker takes in one message,
/// as an ACK is: behind a broker whose `max_payload` is 64 KiB, a 100 kB output asked into a
/// file was journaled whole on ship1, then failed there at every attempt ("more than the
/// broker takes"): central's file never came, and its ACK said the result had been sent.
#[test]
fn a_result_larger_than_the_broker_takes_arrives_cut_to_its_limit() {
    let nats = NatsServer::with_max_payload(64 * 1024);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let ended = central.send_and_wait(
        r#"[{"toNode":"ship1","data":["sh","-c","head -c 100000 /dev/zero | tr '\\0' x; echo; echo the-end"],"commandOrEvent":"CommandACK","method":"CLICommand","replyMethod":"File","directory":"m","fileName":"big.txt"}]"#,
    );
    assert_eq!(ended[0].1, "acked", "{ended:?}");
    let file = central.wait_for("m/ship1/big.txt", "cut to what one message may carry");
    let kept = file.matches('x').count();
    assert!((30_000..65_536).contains(&kept), "{kept} bytes came");
    wait_sent(&ship1);
    assert!(!ship1.read("failed-messages.txt").contains("xxxx"));
}

/// central asks ship1 `method` with `data` (a JSON array's items), and waits for the ACK:
/// what central's reply file for the method holds then.
fn ask_ship1(central: &Node, method: &str, data: &str) -> String {
    let ended = central.send_and_wait(&format!(
        r#"[{{"toNode":"ship1","data":[{data}],"commandOrEvent":"CommandACK","method":"{method}"}}]"#
    ));
    assert_eq!(ended[0].1, "acked", "{method}: {ended:?}");
    central.read(&format!("replies/ship1.{method}.log"))
}

#[test]
fn op_process_list_and_stop_and_public_key_answer_central() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &["--helloInterval=1"]);
    let central = Node::start("central", &nats.address(), &[]);
    let ask = |method: &str, data: &str| ask_ship1(&central, method, data);
    let table = ask("OpProcessList", "");
    for sub in ["CLICommand", "TextLogging", "File", "OpProcessStop"] {
        assert!(
            table.contains(&format!("subscriber {sub} ")),
            "{sub}: {table}"
        );
    }
    assert!(ask("PublicKey", "").contains(&key_of("ship1")));

    let stopped = ask("OpProcessStop", r#""subscriber TextLogging""#);
    assert!(
        stopped.contains("stopped until the next start"),
        "{stopped}"
    );
    ship1.wait_status("showed TextLogging stopped", |t| {
        t.lines().any(|l| {
            l.starts_with("subscriber TextLogging")
                && l.contains("stopped by OpProcessStop from central")
        })
    });
    // What central sends there is answered "no responders"; ship1 says Hello, so the
    // give-up says why rather than that ship1 is away.
    let ended = central.send_and_wait(
        r#"[{"toNode":"ship1","data":["to a stopped subscriber"],"commandOrEvent":"EventACK","method":"TextLogging","timeout":1,"retries":0}]"#,
    );
    assert_eq!(ended[0].1, "failed", "{ended:?}");
    let log = central.log();
    assert!(
        log.contains("ship1 said Hello within the minute: unless it has just gone, nothing there serves this subject (its subscriber stopped by OpProcessStop"),
        "{log}"
    );
    for must_stay in ["OpProcessStop", "CLICommand", "TrustedKeys"] {
        let refused = ask("OpProcessStop", &format!("\"subscriber {must_stay}\""));
        assert!(
            refused.contains(&format!("subscriber {must_stay} cannot be stopped")),
            "{refused}"
        );
    }
    // A publisher stopped: its lane's next message starts it again.
    let file = |text: &str| {
        let ended = central.send_and_wait(&format!(
            r#"[{{"toNode":"ship1","data":["echo","{text}"],"commandOrEvent":"CommandACK","method":"CLICommand","replyMethod":"File","directory":"m","fileName":"x.txt"}}]"#
        ));
        assert_eq!(ended[0].1, "acked");
        wait_sent(&ship1);
        central.read("m/ship1/x.txt")
    };
    assert_eq!(file("before"), "before\n");
    let stopped = ask("OpProcessStop", r#""publisher central.EventACK.File""#);
    assert!(
        stopped.contains("starts again with its lane's next message"),
        "{stopped}"
    );
    ship1.wait_status("showed the publisher stopped", |t| {
        t.lines().any(|l| {
            l.starts_with("publisher central.EventACK.File")
                && l.contains("stopped by OpProcessStop")
        })
    });
    assert_eq!(file("after"), "after\n");
    let unknown = ask("OpProcessStop", r#""subscriber Nothing""#);
    assert!(unknown.contains("has no process"), "{unknown}");
}

#[test]
fn a_result_central_never_asked_for_is_refused_and_reported() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    // A genuine result, captured on its way to central.
    let spy = raw.spy("central.EventACK.File");
    let ended = central.send_and_wait(
        r#"[{"toNode":"ship1","data":["echo","genuine"],"commandOrEvent":"CommandACK","method":"CLICommand","replyMethod":"File","directory":"m","fileName":"df.txt"}]"#,
    );
    assert_eq!(ended[0].1, "acked");
    let genuine = spy.next_timeout(Duration::from_secs(10)).unwrap();
    central.wait_for("m/ship1/df.txt", "genuine");
    let mut result: serde_json::Value = serde_json::from_slice(&genuine.data).unwrap();
    let refused = central.refused("File") as usize;

    // ship1's key (stolen, or ship1 itself turned): signed by ship1, but each changes what
    // central asked for. One signer, so each forgery has a counter of its own (fresh).
    let ship1_key = steward::keys::Identity::from_seed(&common::seed_of("ship1")).unwrap();
    let signed_by = |_: &str, subject: &str, reply: Option<&str>, payload: &[u8]| {
        ship1_key
            .seal(steward::keys::Scope::request(subject, reply), payload)
            .headers
    };
    let forge = |change: &dyn Fn(&mut serde_json::Value), n: usize| {
        let mut v = result.clone();
        v["id"] = format!("ship1-forged-{n}-{}", steward::keys::random_hex128()).into();
        change(&mut v);
        let payload = serde_json::to_vec(&v).unwrap();
        let subject = "central.EventACK.File";
        let reply = format!("_INBOX.ship1.forged.{n}");
        let h = signed_by("ship1", subject, Some(&reply), &payload);
        raw.send(subject, Some(&reply), Some(&h), &payload);
    };
    let forgeries: [&dyn Fn(&mut serde_json::Value); 4] = [
        // An id central never sent.
        &|v| v["inReplyTo"]["id"] = "central-0-0-never".into(),
        // Another file.
        &|v| v["fileName"] = "passwd".into(),
        // Another folder.
        &|v| v["directory"] = "n".into(),
        // A made-up ticket.
        &|v| v["inReplyTo"]["ticket"] = "00".repeat(64).into(),
    ];
    for (n, change) in forgeries.iter().enumerate() {
        forge(*change, n);
    }
    // No ticket at all: a File event from a node central does not take commands from.
    let plain = envelope(
        "ship1-plain",
        "ship1",
        "central",
        "EventACK",
        "File",
        &["plain\n"],
    );
    let mut plain: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    plain["directory"] = "m".into();
    plain["fileName"] = "df.txt".into();
    let payload = serde_json::to_vec(&plain).unwrap();
    let h = signed_by(
        "ship1",
        "central.EventACK.File",
        Some("_INBOX.ship1.plain"),
        &payload,
    );
    raw.send(
        "central.EventACK.File",
        Some("_INBOX.ship1.plain"),
        Some(&h),
        &payload,
    );
    // Another fleet member replaying ship1's genuine result as its own.
    result["fromNode"] = "ship2".into();
    result["id"] = "ship2-replayed".into();
    let payload = serde_json::to_vec(&result).unwrap();
    let h = common::raw::signed_by(
        "ship2",
        "central.EventACK.File",
        Some("_INBOX.ship2.replayed"),
        &payload,
    );
    raw.send(
        "central.EventACK.File",
        Some("_INBOX.ship2.replayed"),
        Some(&h),
        &payload,
    );
    central.wait_refused("File", refused + 6);
    central.wait_idle();
    assert_eq!(central.read("m/ship1/df.txt"), "genuine\n");
    assert!(!central.path("m/ship1/passwd").exists());
    assert!(!central.path("m/ship2").exists());
    assert!(!central.path("n").exists());
    let errors = central.wait_for("errors.log", "a result for central-0-0-never");
    assert!(
        errors.contains("which central did not ask ship1 for"),
        "{errors}"
    );
    // Verified senders are told why, on their own inboxes.
    let told = raw.answers_where(|s| s.contains(".forged.") || s.ends_with(".plain"));
    assert_eq!(
        told.len(),
        5,
        "each verified forgery is answered with its refusal"
    );
    assert!(told
        .iter()
        .all(|m| String::from_utf8_lossy(&m.data).contains("refused")));
    common::report("results never asked for", 6, 0, 0);
    drop(ship1);
}

/// ship2, which takes commands from ship1; ship1, with one publisher thread
/// (`--maxPublishers=1`); central.
fn ship2_ship1_of_one_thread_and_central(nats: &NatsServer) -> (Node, Node, Node) {
    let ship2 = Node::start(
        "ship2",
        &nats.address(),
        &["--allowCommandsFrom=central,ship1:CLICommand"],
    );
    let ship1 = Node::start("ship1", &nats.address(), &["--maxPublishers=1"]);
    let central = Node::start("central", &nats.address(), &[]);
    (ship2, ship1, central)
}

/// A publisher with no thread, in line for one (`--maxPublishers`), is stopped when an
/// operator stops it: it said "not running", and ran in its turn.
#[test]
fn op_process_stop_stops_a_publisher_waiting_its_turn() {
    let nats = NatsServer::start();
    let (_ship2, ship1, central) = ship2_ship1_of_one_thread_and_central(&nats);
    let ghost = "ghost.EventACK.TextLogging";
    let attempts = || ship1.log().matches(&format!("{ghost}: attempt")).count();
    // A lane to a node that is not there, pausing between attempts...
    ship1.append_inmsg(
        r#"[{"toNode":"ghost","data":["x"],"commandOrEvent":"EventACK","method":"TextLogging","timeout":1,"ttl":600}]"#,
    );
    wait_until("ghost's first attempt failed", || attempts() > 0);
    // ... gives its thread up to a lane to ship2, whose command runs 15 s, and waits its
    // turn once its pause is over.
    ship1.append_inmsg(
        r#"[{"toNode":"ship2","data":["sleep","15"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":60}]"#,
    );
    ship1.wait_status("ghost's lane in line", |t| {
        t.lines().any(|l| {
            l.starts_with(&format!("publisher {ghost}")) && l.contains("waiting for its turn")
        })
    });
    // Its pause (1 to 2 s) over: in line now, not parked.
    std::thread::sleep(Duration::from_secs(4));
    let ended = central.send_and_wait(&format!(
        r#"[{{"toNode":"ship1","data":["publisher {ghost}"],"commandOrEvent":"CommandACK","method":"OpProcessStop"}}]"#
    ));
    assert_eq!(ended[0].1, "acked", "{ended:?}");
    let answer = central.read("replies/ship1.OpProcessStop.log");
    assert!(answer.contains("stopped; its messages stay"), "{answer}");
    let before = attempts();
    // Once ship2's command is done, the thread is free: the stopped lane does not take it.
    ship1.wait_until("", "ship2's command done", |_| {
        ship1.path("replies/ship2.CLICommand.log").exists()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(attempts(), before, "{}", ship1.log());
    ship1.wait_status("ghost's lane stopped", |t| {
        t.lines().any(|l| {
            l.starts_with(&format!("publisher {ghost}")) && l.contains("stopped by OpProcessStop")
        })
    });
}

/// A lane whose message waits for its first publisher thread (`--maxPublishers`, every
/// thread busy) is a publisher in the process table: `OpProcessList` shows it in line, and
/// `OpProcessStop` takes it out of line. Its message stays in the journal, it does not
/// take the thread once one is free, and its lane's next message starts it again.
#[test]
fn op_process_list_and_stop_see_a_lane_in_line_for_its_first_thread() {
    let nats = NatsServer::start();
    let (ship2, ship1, central) = ship2_ship1_of_one_thread_and_central(&nats);
    let lane = "ship2.EventACK.TextLogging";
    let row = |table: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("publisher {lane} ")))
            .map(str::to_string)
    };
    // ship1's one thread: a command on ship2 that runs 15 s. Then a line to log on ship2,
    // whose lane never had a publisher: in line for the thread.
    ship1.append_inmsg(
        r#"[{"toNode":"ship2","data":["sleep","15"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":60},
 {"toNode":"ship2","data":["first\n"],"commandOrEvent":"EventACK","method":"TextLogging"}]"#,
    );
    ship1.wait_status("showed a lane in line", |t| {
        t.contains("1 lane(s) waiting for a publisher")
    });
    let ask = |method: &str, data: &str| ask_ship1(&central, method, data);
    // Listed: its message pending, no restarts, waiting for a thread, next in line.
    let table = ask("OpProcessList", "");
    let listed = row(&table).unwrap_or_else(|| panic!("{lane} not listed:\n{table}"));
    let columns: Vec<&str> = listed.split_whitespace().collect();
    assert_eq!(columns[2..4], ["1", "0"], "{listed}");
    assert!(
        listed.ends_with("waiting for a publisher thread (--maxPublishers), next in line"),
        "{listed}"
    );
    // Stopped: out of line (it never ran: no row is left of it).
    let stopped = ask("OpProcessStop", &format!("\"publisher {lane}\""));
    assert!(
        stopped.contains(&format!(
            "publisher {lane} on ship1 stopped before it ran; its messages stay in the journal"
        )),
        "{stopped}"
    );
    let table = ship1.wait_status("showed the lane out of line", |t| {
        !t.contains("waiting for a publisher") && row(t).is_none()
    });
    // Once ship2's command is done, the thread is free: the stopped lane does not take it.
    ship1.wait_until("", "ship2's command done", |_| {
        ship1.path("replies/ship2.CLICommand.log").exists()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ship2.read("textlog/ship1.log"), "", "{table}");
    // Its message stays (ship2's command is finished in the journal a little after its
    // reply is stored: waited for).
    let status = ship1.wait_status("showed its message alone pending", |t| {
        t.contains("journal: 1 pending")
    });
    assert!(row(&status).is_none(), "{status}");
    // Its lane's next message starts it again: both lines logged, in order.
    ship1.append_inmsg(
        r#"[{"toNode":"ship2","data":["second\n"],"commandOrEvent":"EventACK","method":"TextLogging"}]"#,
    );
    let logged = ship2.wait_for("textlog/ship1.log", "second");
    assert_eq!(logged, "first\nsecond\n");
}

/// A command to many nodes puts most of their lanes in line: the process table lists the
/// first hundred, then counts the rest (an answer to `OpProcessList` must fit in one
/// message, and 50,000 rows would not).
#[test]
fn the_process_table_lists_a_hundred_lanes_in_line_then_counts_the_rest() {
    let nats = NatsServer::start();
    let (_ship2, ship1, _central) = ship2_ship1_of_one_thread_and_central(&nats);
    // ship1's one thread: a command on ship2 that runs 15 s. Then a line to log on each of
    // 150 nodes: 150 lanes in line for the thread.
    let nodes: Vec<String> = (0..150).map(|i| format!("\"ghost{i}\"")).collect();
    ship1.append_inmsg(&format!(
        r#"[{{"toNode":"ship2","data":["sleep","15"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":60}},
 {{"toNodes":[{}],"data":["x\n"],"commandOrEvent":"EventACK","method":"TextLogging"}}]"#,
        nodes.join(",")
    ));
    let table = ship1.wait_status("150 lanes in line", |t| {
        t.contains("150 lane(s) waiting for a publisher")
    });
    let listed = table
        .lines()
        .filter(|l| l.contains("waiting for a publisher thread (--maxPublishers)"))
        .count();
    assert_eq!(listed, 100, "{table}");
    assert!(table.contains("ghost0.EventACK.TextLogging"), "{table}");
    assert!(
        table.contains("next in line") && table.contains("99 lanes ahead"),
        "{table}"
    );
    assert!(
        table.contains("... and 50 more lanes in line for their first publisher thread"),
        "{table}"
    );
}
