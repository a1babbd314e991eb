//! Results as they come: `TailFile` follows a log on a ship and `CLICommandCont` sends a
//! command's lines while it runs, each batch a journaled result message to central.

use crate::common;
use common::{append_to, NatsServer, Node};
use std::time::{Duration, Instant};

/// Waits until `node` is running a handler (a method that follows or streams is under way).
fn wait_busy(node: &Node) {
    node.wait_status("showed a handler busy", |t| {
        t.lines()
            .next()
            .is_some_and(|l| !l.ends_with("handlers busy: 0") && l.contains("handlers busy"))
    });
}

#[test]
fn tail_file_sends_new_lines_in_order_through_an_outage_and_a_rotation_and_stops_at_its_timeout() {
    let mut nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let log = ship1.path("app.log");
    append_to(&log, "before the follow: not sent\n");
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["app.log"],"commandOrEvent":"CommandACK","method":"TailFile","methodTimeout":12,"replyMethod":"FileAppend","directory":"logs","fileName":"app.log"}]"#,
    );
    wait_busy(&ship1);
    let t = Instant::now();
    append_to(&log, "one\ntwo\n");
    append_to(&log, "three\n");
    central.wait_for("logs/ship1/app.log", "three\n");
    let took = t.elapsed();
    eprintln!("[tail] three lines at central after {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The broker away: lines written meanwhile arrive after it, once.
    nats.stop();
    append_to(&log, "during the outage\n");
    nats.restart();
    central.wait_for("logs/ship1/app.log", "during the outage\n");
    // Rotated: the rest of the old file, then the new one.
    std::fs::rename(&log, ship1.path("app.log.1")).unwrap();
    append_to(&ship1.path("app.log.1"), "last of the old file\n");
    append_to(&log, "first of the new file\n");
    central.wait_for("logs/ship1/app.log", "first of the new file\n");
    // The follow ends at methodTimeout: its ACK says so, and nothing written after it is sent.
    let acks = central.wait_for("replies/ship1.TailFile.log", "followed");
    assert!(acks.contains("1 rotation(s)"), "{acks}");
    append_to(&log, "after the end\n");
    ship1.wait_idle();
    // Whatever the ship sent has been handled at central (nothing pending on the ship).
    ship1.wait_status("showed the journal empty", |t| {
        t.lines()
            .next()
            .is_some_and(|l| l.contains("journal: 0 pending"))
    });
    assert_eq!(
        central.read("logs/ship1/app.log"),
        "one\ntwo\nthree\nduring the outage\nlast of the old file\nfirst of the new file\n"
    );
}

#[test]
fn cli_command_cont_stores_the_first_line_before_the_command_ends() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["bash","-c","for i in 1 2 3; do echo $i; sleep 1; done"],"commandOrEvent":"CommandACK","method":"CLICommandCont","timeout":30,"replyMethod":"FileAppend","directory":"out","fileName":"count.txt"}]"#,
    );
    central.wait_for("out/ship1/count.txt", "1\n");
    // Still running: no ACK yet, and not all of it.
    assert!(
        !central
            .read("replies/ship1.CLICommandCont.log")
            .contains("exit=0"),
        "the command had ended already"
    );
    assert!(!central.read("out/ship1/count.txt").contains('3'));
    let acks = central.wait_for("replies/ship1.CLICommandCont.log", "exit=0");
    assert!(acks.contains("result sent to central.FileAppend"), "{acks}");
    ship1.wait_status("showed the journal empty", |t| {
        t.lines()
            .next()
            .is_some_and(|l| l.contains("journal: 0 pending"))
    });
    assert_eq!(central.read("out/ship1/count.txt"), "1\n2\n3\n");
    // The last result carries the exit status (ship1's log of what it sent).
    let sent: Vec<serde_json::Value> = ship1
        .read("message-log.txt")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["method"] == "FileAppend")
        .collect();
    assert!(sent.len() >= 3, "{sent:?}");
    let last = &sent[sent.len() - 1]["inReplyTo"];
    assert_eq!(last["exitCode"], 0, "{last}");
    assert!(sent[..sent.len() - 1]
        .iter()
        .all(|v| v["inReplyTo"]["exitCode"].is_null()));

    // One that fails says so in the file too, on a line of its own after its last words.
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["bash","-c","echo partly; printf 'no newline'; exit 3"],"commandOrEvent":"CommandACK","method":"CLICommandCont","timeout":30,"replyMethod":"FileAppend","directory":"out","fileName":"failed.txt"}]"#,
    );
    central.wait_for("replies/ship1.CLICommandCont.log", "exit=3");
    let file = central.wait_for("out/ship1/failed.txt", "status 3");
    assert_eq!(
        file,
        "partly\nno newline\n[steward: the command exited with status 3]\n"
    );
    // Killed by a signal of someone else's: said as such. Killed at its deadline: steward's
    // note of that alone.
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["bash","-c","echo before; kill -KILL $$"],"commandOrEvent":"CommandACK","method":"CLICommandCont","timeout":30,"replyMethod":"FileAppend","directory":"out","fileName":"signal.txt"}]"#,
    );
    let file = central.wait_for("out/ship1/signal.txt", "signal");
    assert_eq!(
        file,
        "before\n[steward: the command was killed by signal 9 (status 137)]\n"
    );
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["bash","-c","echo before; sleep 30"],"commandOrEvent":"CommandACK","method":"CLICommandCont","timeout":30,"methodTimeout":1,"replyMethod":"FileAppend","directory":"out","fileName":"deadline.txt"}]"#,
    );
    let file = central.wait_for("out/ship1/deadline.txt", "deadline");
    assert_eq!(
        file,
        "before\n[steward: killed after the 1s deadline (methodTimeout)]\n"
    );
}

#[test]
fn tail_file_and_copy_src_never_read_out_what_is_private_to_the_node() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    // Something for ship1's received log to hold first.
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["echo","a-reply"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#,
    );
    central.wait_for("replies/ship1.CLICommand.log", "a-reply");
    // Its received log (others' replies), its seed through `..`, its journal copied away.
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["journal/received.log"],"commandOrEvent":"CommandACK","method":"TailFile","methodTimeout":5},
{"toNode":"ship1","data":["journal/../keys/node.seed"],"commandOrEvent":"CommandACK","method":"TailFile","methodTimeout":5},
{"toNode":"ship1","data":["late-replies.json"],"commandOrEvent":"CommandACK","method":"TailFile","methodTimeout":5},
{"toNode":"ship1","data":["journal/journal.log","central","incoming/journal.log","0600"],"commandOrEvent":"CommandACK","method":"CopySrc"}]"#,
    );
    let tails = central.wait_for(
        "replies/ship1.TailFile.log",
        "keys/: the node's signing key",
    );
    assert!(
        tails.contains("journal/: what other senders sent this node"),
        "{tails}"
    );
    // The reply subjects it awaits late replies on: random, so that no one can flood one.
    central.wait_for(
        "replies/ship1.TailFile.log",
        "one of the node's own records",
    );
    let copies = central.wait_for("replies/ship1.CopySrc.log", "never copied from this node");
    assert!(copies.contains("it is under journal/"), "{copies}");
    assert!(!tails.contains("a-reply") && !copies.contains("a-reply"));
    assert!(!central.path("incoming").exists());
    drop(ship1);
}
