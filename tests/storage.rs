//! When the disk fills or fails: nothing lost. A node's data folder on a small tmpfs (root
//! only: CI runs as root; elsewhere these tests say they were skipped) is filled to the
//! last byte while commands and events are in flight, then freed; a data folder on a disk
//! whose writes stop reaching the medium (fsync fails with EIO) stops the agent, and a
//! restart loses nothing. Everything is counted.

use crate::common;
use common::{command, install_keys, Ext4, NatsServer, Node, Tmpfs};
use std::time::{Duration, Instant};

/// Waits up to `limit` for `ok`.
fn wait(what: &str, limit: Duration, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node `name` with its data folder on a tmpfs of `size` (a disk that fills), started;
/// `None` (said, under `tag`) where a tmpfs cannot be mounted (not root).
fn on_a_small_disk(name: &str, nats: &NatsServer, size: &str, tag: &str) -> Option<(Node, Tmpfs)> {
    on_a_small_disk_with(name, nats, size, tag, &[])
}

/// As [`on_a_small_disk`], with `extra` flags.
fn on_a_small_disk_with(
    name: &str,
    nats: &NatsServer,
    size: &str,
    tag: &str,
    extra: &[&str],
) -> Option<(Node, Tmpfs)> {
    let mut node = Node::prepare(&[], name, &nats.address(), extra);
    let Some(disk) = Tmpfs::mount(node.data(), size) else {
        eprintln!("[{tag}] skipped: mounting a tmpfs needs root");
        return None;
    };
    install_keys(node.data(), name);
    node.restart();
    Some((node, disk))
}

#[test]
fn a_full_disk_on_central_loses_no_command_output_and_no_event() {
    let _one_at_a_time = common::serial();
    let nats = NatsServer::start();
    let Some((mut central, disk)) = on_a_small_disk("central", &nats, "16m", "disk_full") else {
        return;
    };
    let commands = 5;
    let events = 20;
    // ship1 is away: central queues commands for it, each leaving a mark where it runs.
    let ship1_dir = tempfile::tempdir().unwrap();
    let runs = ship1_dir.path().join("runs");
    let mut text = String::new();
    for i in 0..commands {
        let shell = format!("echo run-{i} >> {}; echo output-{i}", runs.display());
        text.push_str(&format!(
            "[{{\"toNode\":\"ship1\",\"data\":[\"sh\",\"-c\",{shell:?}],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\",\"ttl\":600}}]\n"
        ));
    }
    central.append_inmsg(&text);
    wait("central took the commands", Duration::from_secs(30), || {
        central.metric("steward_messages_accepted_total{method=\"CLICommand\"}") >= commands as f64
    });
    // And finished with the taken file (its removal would free room on the full disk).
    central.wait_taken();

    // The disk fills up to the last byte.
    let filler = disk.fill();
    // ship1 comes: the commands run, their output comes back to a central that cannot
    // store it; and ship1's events arrive that central cannot log.
    let ship1 = Node::start("ship1", &nats.address(), &["--defaultMessageTTL=600"]);
    let events_text = common::text_logs("central", 0..events, "event-");
    ship1.append_inmsg(&events_text);
    // The first command runs; its lane then waits (commands go in order) until its
    // output can be stored: the receiver answers every retry from its stored reply.
    wait(
        "the first command ran on ship1",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&runs)
                .unwrap_or_default()
                .contains("run-0")
        },
    );
    // Central has had the first output back and could not store it (its publisher failed
    // and was restarted, to send again), and has had an event it could not log.
    central.wait_metric(
        "failed to store a reply",
        |c| c.metric("steward_process_restarts_total"),
        |v| v >= 1.0,
    );
    central.wait_metric(
        "put off an event",
        |c| {
            c.metric("steward_messages_received_total{method=\"TextLogging\",outcome=\"deferred\"}")
        },
        |v| v >= 1.0,
    );
    let kept_while_full = central
        .read("replies/ship1.CLICommand.log")
        .matches("output-")
        .count();
    assert!(central.is_running(), "central died on a full disk");
    assert_eq!(kept_while_full, 0, "stored on a full disk?");

    // An operator appends more while the disk is nearly full (a little was freed): intake
    // waits, the text stays in inmsg.txt's taken file, nothing is lost or rejected.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 64 * 1024).unwrap();
    drop(f);
    let late = 10;
    let text = common::text_logs("ship1", 0..late, "late-");
    central.append_inmsg(&text);
    wait(
        "intake says the disk is full",
        Duration::from_secs(30),
        || central.metric("steward_disk_full") == 1.0,
    );
    // (Found before it read anything of the append: none of it was taken.)
    assert!(!ship1.read("textlog/central.log").contains("late-"));
    assert!(!central.path("inmsg.rejected.txt").exists());

    // Space comes back: everything is stored, once.
    std::fs::remove_file(&filler).unwrap();
    wait(
        "the late messages delivered",
        Duration::from_secs(60),
        || ship1.read("textlog/central.log").matches("late-").count() >= late,
    );
    assert_eq!(central.metric("steward_disk_full"), 0.0);
    central.wait_for("errors.log", "disk was full, or at its floor, from");
    wait("every output stored", Duration::from_secs(120), || {
        central
            .read("replies/ship1.CLICommand.log")
            .matches("output-")
            .count()
            >= commands
    });
    wait("every event logged", Duration::from_secs(120), || {
        central.read("textlog/ship1.log").matches("event-").count() >= events
    });
    // Anything sent twice has arrived by now, and been handled.
    common::settle(&central, &ship1, "CLICommand");
    common::settle(&ship1, &central, "TextLogging");
    let replies = central.read("replies/ship1.CLICommand.log");
    let logged = central.read("textlog/ship1.log");
    let ran = std::fs::read_to_string(&runs).unwrap();
    for i in 0..commands {
        assert_eq!(
            replies.matches(&format!("output-{i}\n")).count(),
            1,
            "{replies}"
        );
        assert_eq!(ran.matches(&format!("run-{i}\n")).count(), 1, "{ran}");
    }
    for i in 0..events {
        assert_eq!(
            logged.matches(&format!("event-{i}\n")).count(),
            1,
            "{logged}"
        );
    }
    eprintln!(
        "[disk_full] commands={commands} outputs_stored_while_full={kept_while_full} outputs_stored={commands} runs={commands} events={events} events_logged={events} taken_after_the_disk_had_room={late} lost=0 duplicates=0"
    );
    drop(ship1);
}

#[test]
fn a_full_disk_on_the_receiver_loses_no_command_output_and_runs_nothing_twice() {
    let _one_at_a_time = common::serial();
    let nats = NatsServer::start();
    let Some((mut ship1, _disk)) = on_a_small_disk("ship1", &nats, "16m", "receiver_disk_full")
    else {
        return;
    };
    let central = Node::start("central", &nats.address(), &[]);
    let marks = tempfile::tempdir().unwrap();
    let runs = marks.path().join("runs");
    // The first command fills ship1's disk to the last byte; each prints 200 kB, more in
    // all than the megabyte the received log keeps reserved ahead: some reply cannot be
    // recorded there.
    let filler = ship1.data().join("filler");
    let commands = 8;
    let text: String = (0..commands)
        .map(|i| {
            let fill = match i {
                0 => format!("dd if=/dev/zero of={} bs=64k 2>/dev/null; ", filler.display()),
                _ => String::new(),
            };
            let shell = format!(
                "echo run-{i} >> {}; {fill}head -c 200000 /dev/zero | tr '\\0' x; echo; echo output-{i}",
                runs.display()
            );
            command("ship1", &["sh", "-c", &shell])
        })
        .collect();
    central.append_inmsg(&text);
    // Every output reaches central while ship1's disk is still full.
    wait("every output stored", Duration::from_secs(120), || {
        central
            .read("replies/ship1.CLICommand.log")
            .matches("output-")
            .count()
            >= commands
    });
    assert!(filler.exists());
    assert!(ship1.is_running(), "ship1 died on a full disk");
    let unrecorded = ship1.log().matches("(sent unrecorded)").count();
    assert!(
        unrecorded >= 1,
        "every reply was recorded: the full disk was not met\n{}",
        ship1.log()
    );
    // Anything sent twice has arrived by now, and been handled: once each.
    std::fs::remove_file(&filler).unwrap();
    common::settle(&central, &ship1, "CLICommand");
    let replies = central.read("replies/ship1.CLICommand.log");
    let ran = std::fs::read_to_string(&runs).unwrap();
    for i in 0..commands {
        assert_eq!(ran.matches(&format!("run-{i}\n")).count(), 1, "{ran}");
        let stored = replies.matches(&format!("output-{i}\n")).count();
        assert_eq!(stored, 1, "output {i} stored {stored} times");
    }
    assert!(central.read("failed-messages.txt").is_empty());
    eprintln!(
        "[receiver_disk_full] commands={commands} ran_once={commands} outputs_stored_once={commands} replies_sent_unrecorded={unrecorded} lost=0 duplicates=0"
    );
}

#[test]
fn a_failed_fsync_stops_the_agent_and_its_restart_loses_nothing_and_runs_nothing_twice() {
    let _one_at_a_time = common::serial();
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::prepare(&[], "central", &nats.address(), &[]);
    // central's data folder: ext4 in an image on a 40 MiB tmpfs. The filesystem believes
    // it has 128 MiB; once the tmpfs is full, what it writes back to the image is lost
    // and fsync fails (EIO), as on an SD card that is dying.
    let medium_dir = tempfile::tempdir().unwrap();
    let Some(medium) = Tmpfs::mount(medium_dir.path(), "40m") else {
        eprintln!("[fsync_fails] skipped: mounting needs root");
        return;
    };
    let Some(disk) = Ext4::mount_in(central.data(), "128M", Some(medium_dir.path())) else {
        eprintln!("[fsync_fails] skipped: no ext4 on a loop device here");
        return;
    };
    install_keys(central.data(), "central");
    disk.sync();
    central.restart();
    let marks = tempfile::tempdir().unwrap();
    let runs = marks.path().join("runs");
    // Each command leaves a mark where it runs; a padding argument (sh's $0) makes each
    // journal record reach blocks of the image that were never written.
    let padding = "p".repeat(100_000);
    let commands = |from: usize, to: usize| -> String {
        (from..to)
            .map(|i| {
                let shell = format!("echo run-{i} >> {}; echo output-{i}", runs.display());
                command("ship1", &["sh", "-c", &shell, &padding])
            })
            .collect()
    };
    let before = 5;
    central.append_inmsg(&commands(0, before));
    central.wait_count("replies/ship1.CLICommand.log", "output-", before);
    central.wait_taken();

    // The medium fills: the next journal fsync fails.
    let filler = medium.fill();
    let after = 3;
    central.append_inmsg(&commands(before, before + after));
    let status = central.wait_exit(Duration::from_secs(60));
    assert_eq!(status, Some(74), "exit status: {}", central.log());
    let log = central.log();
    assert!(log.contains("stopping at once"), "{log}");

    // The medium is replaced (space again); the machine boots (fsck, mount); systemd
    // starts steward again. The operator appends more.
    std::fs::remove_file(&filler).unwrap();
    disk.remount();
    central.restart();
    let total = before + after + 3;
    central.append_inmsg(&commands(before + after, total));
    wait("the new commands' output", Duration::from_secs(60), || {
        let replies = central.read("replies/ship1.CLICommand.log");
        (before + after..total).all(|i| replies.contains(&format!("output-{i}\n")))
    });
    // Anything sent twice has arrived by now, and been handled.
    common::settle(&central, &ship1, "CLICommand");
    let replies = central.read("replies/ship1.CLICommand.log");
    let ran = std::fs::read_to_string(&runs).unwrap();
    let (mut in_doubt_ran, mut in_doubt_lost) = (0, 0);
    for i in 0..total {
        let runs = ran.matches(&format!("run-{i}\n")).count();
        let stored = replies.matches(&format!("output-{i}\n")).count();
        let in_doubt = (before..before + after).contains(&i);
        if in_doubt && runs == 0 {
            // Appended as the medium failed: the text of inmsg.txt itself never reached
            // it, and steward never took it (its journal write could not be made durable).
            in_doubt_lost += 1;
            assert_eq!(stored, 0);
            continue;
        }
        in_doubt_ran += usize::from(in_doubt);
        assert_eq!(runs, 1, "command {i} ran {runs} times: {ran}");
        assert_eq!(stored, 1, "output {i} stored {stored} times: {replies}");
    }
    assert!(central.read("failed-messages.txt").is_empty());
    eprintln!(
        "[fsync_fails] exit_status=74 acknowledged_before={before} ran_once={before} appended_as_the_medium_failed={after} (ran_once={in_doubt_ran}, never_reached_the_disk={in_doubt_lost}) appended_after_restart=3 ran_once=3 duplicates=0"
    );
    drop(ship1);
}

/// A schedule's results are journaled on the node that runs it, and kept there until its
/// sender has them (a week, if it is away): below the free-space floor its runs are
/// skipped, so a schedule cannot fill a full disk to the last byte; once there is room
/// again they run as before.
#[test]
fn a_schedule_skips_its_runs_while_the_disk_is_below_its_floor() {
    let _one_at_a_time = common::serial();
    let nats = NatsServer::start();
    let Some((mut ship1, disk)) = on_a_small_disk("ship1", &nats, "16m", "schedule_floor") else {
        return;
    };
    let central = Node::start("central", &nats.address(), &[]);
    let ended = central.send_and_wait(
        r#"[{"toNode":"ship1","data":["echo","tick"],"commandOrEvent":"CommandACK","method":"CLICommand","schedule":[1,600],"replyMethod":"FileAppend","directory":"s","fileName":"ticks.txt"}]"#,
    );
    assert_eq!(ended[0].1, "acked", "{ended:?}");
    let ticks = || central.read("s/ship1/ticks.txt").matches("tick").count();
    wait("two runs", Duration::from_secs(20), || ticks() >= 2);
    // Below the floor (2% of 16 MiB: 335 kB), not full: 200 kB left, room for
    // schedules.json and a run's records, which a schedule would fill to the last byte.
    let filler = disk.leave_free(200_000);
    // A run skipped, and whatever ran before it delivered (ACKed by central once written).
    ship1.wait_until("", "a run skipped", |_| {
        ship1.log().contains("runs skipped while")
    });
    ship1.wait_metric(
        "delivered what ran before",
        |s| s.metric("steward_journal_pending_messages"),
        |v| v == 0.0,
    );
    let at_full = ticks();
    std::thread::sleep(Duration::from_secs(4));
    let while_full = ticks() - at_full;
    let skipped = ship1.log().matches("runs skipped while").count();
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ticks() < at_full + 2 {
        assert!(
            Instant::now() < deadline,
            "never ran again once there was room:\n{}",
            ship1.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "[schedule_floor] runs_before_full={at_full} runs_while_full={while_full} skipped={skipped} runs_after={}",
        ticks() - at_full
    );
    assert_eq!(while_full, 0, "runs went on below the floor");
    assert_eq!(skipped, 1, "said once:\n{}", ship1.log());
    assert!(ship1.log().contains("room on the disk again"));
    assert!(ship1.is_running());
}

/// A command streaming its output (CLICommandCont) to a sender that is away: each read is a
/// result journaled until the sender has it. Below the free-space floor they are no longer
/// journaled (the journal needs the room): kept for the last result, up to its limit.
#[test]
fn streamed_output_stops_being_journaled_below_the_floor() {
    let _one_at_a_time = common::serial();
    let nats = NatsServer::start();
    let Some((mut ship1, disk)) = on_a_small_disk("ship1", &nats, "16m", "stream_floor") else {
        return;
    };
    // Below the floor (2% of 16 MiB: 335 kB), with 200 kB left.
    disk.leave_free(200_000);
    let central = Node::start("central", &nats.address(), &[]);
    // A line every 10 ms for 3 s: 300 results, were they journaled.
    let ended = central.send_and_wait(
        r#"[{"toNode":"ship1","data":["sh","-c","for i in $(seq 300); do echo line $i; sleep 0.01; done"],"commandOrEvent":"CommandACK","method":"CLICommandCont","replyMethod":"FileAppend","directory":"s","fileName":"lines.txt","timeout":30}]"#,
    );
    assert_eq!(ended[0].1, "acked", "{ended:?}");
    let lines = central.wait_for("s/ship1/lines.txt", "line 300");
    // All of it came, in the last result, each line once.
    assert_eq!(lines.matches("line ").count(), 300, "{lines}");
    let sent = ship1.metric_sum(
        "steward_messages_accepted_total",
        &["method=\"FileAppend\""],
    );
    assert!(sent <= 2.0, "{sent} results journaled below the floor");
    assert!(ship1.is_running());
}

#[test]
fn rejected_input_is_kept_once_however_often_its_batch_waits_for_room() {
    let _one_at_a_time = common::serial();
    let nats = NatsServer::start();
    // No floor: intake reads on a nearly full disk, and its journal write is what fails.
    let Some((central, disk)) = on_a_small_disk_with(
        "central",
        &nats,
        "16m",
        "rejected_once",
        &["--minFreeBytesForLogs=0", "--maxPublishers=4"],
    ) else {
        return;
    };
    let filler = disk.leave_free(160 * 1024);
    // A line of garbage, kept in inmsg.rejected.txt, and 50 kB of input that the journal
    // takes as 3 MB of copies, for which it has no room: the batch waits, and is read
    // again at every try.
    let nodes: Vec<String> = (0..4000).map(|i| format!("away{i}")).collect();
    let copies = serde_json::json!([{
        "toNodes": nodes,
        "data": ["x".repeat(300)],
        "commandOrEvent": "EventNACK",
        "method": "TextLogging",
    }]);
    central.append_inmsg(&format!("not a message\n{copies}\n"));
    central.wait_for("inmsg.rejected.txt", "not a message");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        central.metric("steward_messages_accepted_total{method=\"TextLogging\"}"),
        0.0,
        "no room, and yet journaled"
    );
    std::fs::remove_file(&filler).unwrap();
    wait("the copies journaled", Duration::from_secs(30), || {
        central.metric("steward_messages_accepted_total{method=\"TextLogging\"}") >= 4000.0
    });
    let kept = central.read("inmsg.rejected.txt");
    assert_eq!(kept.matches("not a message").count(), 1, "{kept}");
}

/// A command that ran and was ACKed, whose reply central cannot store (a file in the way:
/// the same as a full disk), is never listed as undelivered in failed-messages.txt, even
/// when its node is gone by the time the publisher is restarted: the ACK in hand is kept,
/// not thrown away for a send again that no one may answer.
#[test]
fn an_acked_command_whose_reply_cannot_be_stored_is_never_listed_as_failed() {
    let nats = NatsServer::start();
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    // The lane's replies file cannot be written: a folder where it goes.
    std::fs::create_dir_all(central.path("replies/ship1.CLICommand.log/in-the-way")).unwrap();
    let runs = ship1.path("runs");
    let shell = format!("echo ran >> {}; echo acked-output", runs.display());
    central.append_inmsg(&format!(
        "[{{\"toNode\":\"ship1\",\"data\":[\"sh\",\"-c\",{shell:?}],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\",\"timeout\":2,\"retries\":1}}]\n"
    ));
    wait("the command ran on ship1", Duration::from_secs(30), || {
        runs.exists()
    });
    central.wait_metric(
        "central failed to store the reply",
        |c| c.metric("steward_process_restarts_total"),
        |v| v >= 1.0,
    );
    // ship1 goes away: the command's ACK came, and no one answers it again.
    ship1.kill9();
    let deadline = Instant::now() + Duration::from_secs(25);
    while Instant::now() < deadline {
        let failed = central.read("failed-messages.txt");
        assert!(
            !failed.contains("acked-output"),
            "a command that ran and was ACKed is listed as not delivered:\n{failed}\n{}",
            central.read("message-log.txt")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Room again: its reply is stored, from the ACK it had.
    std::fs::remove_dir_all(central.path("replies/ship1.CLICommand.log")).unwrap();
    central.wait_for("replies/ship1.CLICommand.log", "acked-output");
    assert!(!central.read("failed-messages.txt").contains("acked-output"));
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "ran\n");
}

/// A late reply (its command given up while it ran on) that central cannot keep (a file
/// in the way: the same as a full disk) is not lost: the `late replies` process fails, is
/// restarted, and keeps it once there is room.
#[test]
fn a_late_reply_that_cannot_be_kept_yet_is_kept_once_there_is_room() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let runs = ship1.path("runs");
    let shell = format!("sleep 6; echo ran >> {}; echo late-output", runs.display());
    central.append_inmsg(&format!(
        "[{{\"toNode\":\"ship1\",\"data\":[\"sh\",\"-c\",{shell:?}],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\",\"timeout\":1,\"methodTimeout\":20,\"retries\":0}}]\n"
    ));
    central.wait_for("failed-messages.txt", "late-output");
    std::fs::create_dir_all(central.path("replies/ship1.CLICommand.log/in-the-way")).unwrap();
    central.wait_metric(
        "central failed to keep the late reply",
        |c| c.metric("steward_process_restarts_total"),
        |v| v >= 2.0,
    );
    let log = central.log();
    assert!(log.contains("process late replies failed"), "{log}");
    std::fs::remove_dir_all(central.path("replies/ship1.CLICommand.log")).unwrap();
    let kept = central.wait_for("replies/ship1.CLICommand.log", "late-output");
    assert_eq!(kept.matches("=== ").count(), 1, "{kept}");
    assert!(
        kept.contains("late-output\n[steward: this reply came"),
        "{kept}"
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "ran\n");
}

/// hello-nodes.json that cannot be written (here a folder in the way of its temporary
/// file; a full disk alike) is tried again each second and said once, not at every try,
/// and said again once it is written.
#[test]
fn hello_nodes_json_that_cannot_be_written_is_said_once_not_every_second() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    std::fs::create_dir_all(central.path("hello-nodes.json.tmp/in-the-way")).unwrap();
    let ship1 = Node::start("ship1", &nats.address(), &["--helloInterval=1"]);
    central.wait_until("", "said it cannot write hello-nodes.json", |_| {
        central.log().contains("cannot write")
    });
    std::thread::sleep(Duration::from_secs(4)); // four more tries
    let log = central.log();
    assert_eq!(log.matches("cannot write").count(), 1, "{log}");
    std::fs::remove_dir_all(central.path("hello-nodes.json.tmp")).unwrap();
    central.wait_for("hello-nodes.json", "ship1");
    central.wait_until("", "said it is written again", |_| {
        central.log().contains("hello-nodes.json: written again")
    });
    drop(ship1);
}

/// A late reply that came but cannot be kept when the node stops (its disk full) is lost:
/// said so, and reported, and not awaited at the next start (where an hour later "no
/// reply" would be said of a command that ran). The table on disk, which cannot be made
/// anew, is written over in place, holding what is still awaited.
#[test]
fn a_late_reply_that_cannot_be_kept_before_a_stop_is_said_lost_and_not_awaited_again() {
    let _one_at_a_time = common::serial();
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let Some((mut central, disk)) = on_a_small_disk("central", &nats, "16m", "late_at_stop") else {
        return;
    };
    // Two commands given up: the first answers while the disk is full, the second later.
    let go = ship1.path("go");
    for (shell, method_timeout) in [
        (
            format!(
                "while [ ! -e {} ]; do sleep 0.1; done; echo late-output",
                go.display()
            ),
            60,
        ),
        ("sleep 100; echo later-output".to_string(), 200),
    ] {
        central.append_inmsg(&format!(
            "[{{\"toNode\":\"ship1\",\"data\":[\"sh\",\"-c\",{shell:?}],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\",\"timeout\":1,\"methodTimeout\":{method_timeout},\"retries\":0}}]\n"
        ));
    }
    let ids = |table: &str| -> Vec<String> {
        let entries: Vec<serde_json::Value> = serde_json::from_str(table).unwrap();
        entries
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let awaited = ids(&central.wait_count("late-replies.json", "\"lane\"", 2));
    let filler = disk.fill();
    std::fs::write(&go, "").unwrap();
    central.wait_until("", "said it cannot keep the late reply yet", |_| {
        central.log().contains("but cannot be kept in")
    });
    assert_eq!(central.terminate(), Some(0));
    let log = central.log();
    assert!(log.contains("before this node stops: lost"), "{log}");
    assert!(log.contains("ran on ship1 after all: Ok"), "{log}");
    // The first no longer awaited, the second still: over the old file, in place.
    assert_eq!(ids(&central.read("late-replies.json")), awaited[1..]);
    std::fs::remove_file(filler).unwrap();
    central.restart();
    central.wait_for("errors.log", "before this node stops: lost");
    let log = central.log();
    assert!(
        log.contains("awaiting the late replies of 1 message(s) given up before this start"),
        "{log}"
    );
    drop(ship1);
}

#[test]
fn steward_send_below_the_floor_queues_nothing_and_says_why() {
    let _one_at_a_time = common::serial();
    let nats = NatsServer::start();
    let Some((mut central, disk)) = on_a_small_disk("central", &nats, "16m", "send_floor") else {
        return;
    };
    central.wait_until("", "had a socket", |_| {
        central.path("steward.sock").exists()
    });
    let send = ["send", "--to", "ship1", "--no-wait", "--", "true"];
    // The journal is preallocated (its size says nothing): its lane's name, in every
    // message it journals for ship1's CLICommand, is looked for instead.
    fn journaled_for_ship1(node: &Node) -> bool {
        let journal = std::fs::read(node.path("journal/journal.log")).unwrap();
        let lane = b"ship1.CommandACK.CLICommand";
        journal.windows(lane.len()).any(|w| w == lane)
    }
    let accepted = "steward_messages_accepted_total{method=\"CLICommand\"}";
    // Below the floor (2% of 16 MiB: 335 kB), with room left for a message: the journal
    // could take it, and must not (that room is for replies of what is in flight).
    let filler = disk.leave_free(128 * 1024);
    assert!(!journaled_for_ship1(&central));
    let out = common::steward(&central, &send);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        err.contains("bytes free") && err.contains("--minFreeBytesForLogs"),
        "{err}"
    );
    assert!(err.contains("nothing more was queued"), "{err}");
    assert!(out.stdout.is_empty(), "an id printed: {:?}", out.stdout);
    assert!(!journaled_for_ship1(&central), "journaled");
    assert_eq!(central.metric(accepted), 0.0);
    assert!(
        central.log().contains("nothing more was queued"),
        "not logged"
    );
    assert!(central.is_running());

    // Room again: the same send is queued.
    std::fs::remove_file(&filler).unwrap();
    let out = common::steward(&central, &send);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("central-"), "{id}");
    assert_eq!(central.metric(accepted), 1.0);
    assert!(journaled_for_ship1(&central));
    eprintln!("[send_floor] refused_below_the_floor=1 journaled_meanwhile=0 queued_with_room=1");
}

#[test]
fn a_batch_that_would_take_the_disk_under_its_floor_is_not_taken_until_there_is_room() {
    use std::io::{Read, Write};
    let _one_at_a_time = common::serial();
    let nats = NatsServer::start();
    let Some((mut central, disk)) = on_a_small_disk("central", &nats, "16m", "batch_floor") else {
        return;
    };
    central.wait_until("", "had a socket", |_| {
        central.path("steward.sock").exists()
    });
    fn accepted(node: &Node, method: &str) -> f64 {
        node.metric(&format!(
            "steward_messages_accepted_total{{method=\"{method}\"}}"
        ))
    }
    // A first message: the journal reserves 1 MiB ahead of its end.
    let small = ["send", "--to", "ship1", "--no-wait", "--", "true"];
    let send_small = || {
        let out = common::steward(&central, &small);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
    };
    send_small();
    // And one central takes itself: its received log reserves its megabyte too (as it
    // would for the report below, under the floor).
    let note = [
        "send",
        "--to",
        "central",
        "--method",
        "TextLogging",
        "--",
        "noted",
    ];
    let out = common::steward(&central, &note);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logged = accepted(&central, "TextLogging");
    // The floor: 2% of 16 MiB. Above it by 1 MiB: a message fits (in the room the journal
    // reserved), a batch of 300 copies of 4 kB does not (it passes that room, and takes
    // the next reservation). Both went in while the disk was above the floor.
    let floor = 16 * 1024 * 1024 / 100 * 2;
    let filler = disk.leave_free(floor + 1024 * 1024);
    let nodes: Vec<String> = (0..300).map(|i| format!("ship{i}")).collect();
    let fan_out = |method: &str, kind: &str| {
        serde_json::json!([{
            "toNodes": nodes,
            "data": ["echo", "x".repeat(4000)],
            "commandOrEvent": kind,
            "method": method,
        }])
    };

    // Through the control socket (as `steward send` and scripts): refused, said, none of
    // it queued.
    let mut socket = std::os::unix::net::UnixStream::connect(central.path("steward.sock")).unwrap();
    let request = fan_out("CLICommand", "CommandACK");
    socket.write_all(format!("{request}\n").as_bytes()).unwrap();
    socket.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    assert!(!answer.contains(r#""queued":true"#), "{answer}");
    let refusal: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(refusal["notNow"], true, "{answer}");
    let why = refusal["error"].as_str().unwrap();
    assert!(
        why.contains("more would take it under") && why.contains("--minFreeBytesForLogs"),
        "{why}"
    );
    assert_eq!(accepted(&central, "CLICommand"), 1.0);
    // One message still fits.
    send_small();
    assert_eq!(accepted(&central, "CLICommand"), 2.0);

    // inmsg.txt: the same batch of events, then one event alone. The first would take the
    // disk under the floor: it waits, and the one after it; central is told.
    let events = fan_out("TextLogging", "EventACK");
    central.append_inmsg(&format!("{events}\n{}", common::text_log("ship1", "after")));
    wait("intake waits", Duration::from_secs(20), || {
        central.metric("steward_disk_full") == 1.0
    });
    // Said by the intake (the control socket's refusal above says as much of its own).
    let said = central.log();
    let said = said
        .lines()
        .find(|l| l.contains("no room for new work") && l.contains("inmsg."));
    assert!(
        said.is_some_and(|l| l.contains("more would take it under")),
        "the wait does not say why: {said:?}"
    );
    central.wait_for("errors.log", "no room for new work");
    // Eight of the inbox's looks at the disk (every 250 ms) while it waits.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        accepted(&central, "TextLogging"),
        logged,
        "taken under the floor"
    );
    assert!(central.is_running());

    // Room again: all of it is taken, nothing lost, nothing twice. An event after it all
    // closes the window (intake is in order: a second copy of any of it would come first).
    std::fs::remove_file(&filler).unwrap();
    central.append_inmsg(&common::text_log("central", "last"));
    wait("taken once there is room", Duration::from_secs(20), || {
        accepted(&central, "TextLogging") >= logged + 302.0
    });
    assert_eq!(central.metric("steward_disk_full"), 0.0);
    assert_eq!(accepted(&central, "TextLogging"), logged + 302.0);
    assert_eq!(
        central
            .read("errors.log")
            .matches("no room for new work")
            .count(),
        1,
        "told more than once"
    );
    assert!(!central.path("inmsg.rejected.txt").exists());
    eprintln!("[batch_floor] socket_batch_refused=1 small_send_queued=1 batch_waited=301 taken_with_room=301");
}
