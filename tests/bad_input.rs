//! Bad input gets a clear error naming what is wrong, and nothing is lost: the rest of the
//! batch still goes, the bad part is kept where an operator can find it, no process dies.

use crate::common;
use common::{command, report, NatsServer, Node};
use std::time::Duration;

#[test]
fn malformed_input_beside_good_input() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.append_inmsg(&format!(
        "this is not json\n{}[{{\"toNode\": \"ship1\", \"data\": [}}]\n{}\n{}\n{}",
        command("ship1", &["echo", "good one"]),
        r#"[{"ToNode":"ship1","data":["x"],"commandOrEvent":"CommandACK","method":"CLICommand"},
  {"toNode":"ship1","data":["echo","good two"],"commandOrEvent":"CommandACK","method":"CLICommand"},
  {"toNode":"ship1","data":["x"],"commandOrEvent":"commandACK","method":"CLICommand"},
  {"toNode":"ship1","data":["x"],"commandOrEvent":"CommandACK","method":"cli"},
  {"toNode":"ship1","data":[],"commandOrEvent":"CommandACK","method":"ReplyAgain"},
  {"toNode":"../etc","data":["x"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#,
        command("ship1", &["echo", "good three"]),
        r#"[{"toNode":"ship1","data":["echo","good four"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#,
    ));
    let replies = central.wait_for("replies/ship1.CLICommand.log", "good four");
    for good in ["good one", "good two", "good three"] {
        assert!(replies.contains(good), "{good} missing:\n{replies}");
    }
    let rejected = central.read("inmsg.rejected.txt");
    for (what, why) in [
        ("this is not json", "line 1: expected a JSON array"),
        ("\"data\": [}", "line 3: invalid JSON"),
        ("ToNode", "unknown key \"ToNode\""),
        ("commandACK", "bad commandOrEvent"),
        ("\"cli\"", "unknown method \"cli\""),
        ("ReplyAgain", "ReplyAgain is steward's own"),
        ("../etc", "bad toNode"),
    ] {
        assert!(
            rejected.contains(what) && rejected.contains(why),
            "{what} / {why} missing:\n{rejected}"
        );
    }
    let errors = central.wait_count("errors.log", "input rejected", 7);
    assert!(errors.contains("unknown method \"cli\""), "{errors}");
    assert_eq!(central.metric("steward_inbox_rejected_total"), 7.0);
    assert_eq!(central.metric("steward_process_restarts_total"), 0.0);
    drop(ship1);
}

#[test]
fn data_too_large_once_written_as_json_is_rejected_at_intake() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    // A coloured log: 50 kB of escape characters, 300 kB as JSON. Taken, it was a message
    // too large to send: passed over, and its report larger still, for ever.
    let colours = "\\u001b".repeat(50_000);
    central.append_inmsg(&format!(
        "[{{\"toNode\":\"ship1\",\"data\":[\"{colours}\"],\"commandOrEvent\":\"EventACK\",\"method\":\"TextLogging\"}},\n{}",
        &command("ship1", &["echo", "after it"])[1..]
    ));
    central.wait_for("replies/ship1.CLICommand.log", "after it");
    let rejected = central.read("inmsg.rejected.txt");
    assert!(
        rejected.contains("takes 300003 bytes written as JSON"),
        "{}",
        &rejected[rejected.len().saturating_sub(600)..]
    );
    assert!(rejected.contains(&colours), "kept as it was written");
    central.wait_count("errors.log", "input rejected", 1);
    let log = central.log();
    assert!(
        !log.contains("unreadable"),
        "{}",
        &log[..log.len().min(3000)]
    );
    assert!(!ship1.path("textlog").exists());
}

#[test]
fn an_array_still_being_written_waits_until_it_is_complete() {
    let nats = NatsServer::start();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let msg = command("ship1", &["echo", "written in two steps"]);
    let (first, second) = msg.split_at(msg.len() / 2);
    // One writer holding the file open, writing half now and half later.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(central.path("inmsg.txt"))
        .unwrap();
    f.write_all(first.as_bytes()).unwrap();
    f.flush().unwrap();
    // The inbox has taken the file (renamed it) while the writer still holds it open...
    central.wait_until("", "took inmsg.txt", |_| {
        !central.path("inmsg.txt").exists()
    });
    // ...and the writer is slow: it pauses longer than the inbox waits for a file that stops
    // changing when it cannot ask the kernel whether a writer holds it (2 s). The pause is
    // the behaviour under test (a slow writer), not a wait for the agent.
    std::thread::sleep(Duration::from_millis(3000));
    assert!(
        central.read("inmsg.rejected.txt").is_empty(),
        "a half-written array was rejected"
    );
    f.write_all(second.as_bytes()).unwrap();
    drop(f);
    let reply = central.wait_for("replies/ship1.CLICommand.log", "written in two steps");
    assert_eq!(reply.matches("written in two steps").count(), 1);
    assert!(central.read("inmsg.rejected.txt").is_empty());
}

#[test]
fn concurrent_appenders_while_the_agent_empties_the_file_lose_nothing() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let (writers, each) = (8, 500);
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let path = central.path("inmsg.txt");
            std::thread::spawn(move || {
                use std::io::Write;
                for i in 0..each {
                    // Like `echo '[...]' >> inmsg.txt`: open, append, close, every time.
                    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
                    let msg = format!(
                        "[{{\"toNode\":\"ship1\",\"data\":[\"w{w}-m{i}\\n\"],\"commandOrEvent\":\"EventACK\",\"method\":\"TextLogging\"}}]\n"
                    );
                    f.write_all(msg.as_bytes()).unwrap();
                    if i % 10 == 0 {
                        std::thread::sleep(Duration::from_millis(3));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = writers * each;
    let log = ship1.wait_until("textlog/central.log", "held every line", |t| {
        t.lines().count() >= total
    });
    let mut lines: Vec<&str> = log.lines().collect();
    let delivered = lines.len();
    lines.sort();
    lines.dedup();
    report(
        "eight_appenders",
        total,
        lines.len(),
        delivered - lines.len(),
    );
    assert_eq!(lines.len(), total);
    assert_eq!(delivered, total, "duplicates");
    assert!(central.read("inmsg.rejected.txt").is_empty());
}

#[test]
fn a_sender_flooding_textlogging_is_held_to_its_hourly_budget() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &["--maxLogBytesPerHour=2000"]);
    central.trust("ship1");
    let (count, line_len) = (50, 100);
    let flood: String = (0..count)
        .map(|i| {
            let line = format!("m{i:02} {}", "x".repeat(line_len - 5));
            format!(
                "[{{\"toNode\":\"central\",\"data\":[\"{line}\\n\"],\"commandOrEvent\":\"EventACK\",\"method\":\"TextLogging\"}}]\n"
            )
        })
        .collect();
    ship1.append_inmsg(&flood);
    let kept = 2000 / line_len; // each line is line_len bytes with its newline
    let refused = count - kept;
    // The sender keeps what was refused, as messages it can send again.
    let needle = "\"method\": \"TextLogging\"";
    let failed = ship1.wait_count("failed-messages.txt", needle, refused);
    assert_eq!(failed.matches(needle).count(), refused, "{failed}");
    let logged = central.read("textlog/ship1.log");
    assert!(logged.len() <= 2000, "{} bytes logged", logged.len());
    assert_eq!(logged.lines().count(), kept);
    central.wait_for("errors.log", "over its budget");
    // Every refusal was made (ship1 holds every refused message back) and every report of
    // one went out with it; once central's journal is empty, every report it raised has
    // reached its errors.log.
    central.wait_metric(
        "delivered every error report",
        |c| c.metric("steward_journal_pending_messages"),
        |v| v == 0.0,
    );
    assert_eq!(
        central
            .read("errors.log")
            .matches("over its budget of 2000 bytes an hour for TextLogging")
            .count(),
        1
    );
    assert_eq!(
        central
            .metric("steward_log_writes_refused_total{method=\"TextLogging\",reason=\"budget\"}"),
        refused as f64
    );
}

/// How many messages `node` took from inmsg.txt so far, by its log's `took N message(s)`
/// lines (the journal's pending count also holds the reports of rejected input it sends).
fn taken(node: &Node) -> usize {
    node.log()
        .lines()
        .filter_map(|l| {
            let n = l
                .split("took ")
                .nth(1)?
                .strip_suffix(" message(s) from inmsg.txt")?;
            n.parse::<usize>().ok()
        })
        .sum()
}

/// Waits until `node` has taken `n` messages from inmsg.txt, then a moment more (for any
/// it should not have taken), and returns how many it took.
fn wait_taken(node: &Node, n: usize) -> usize {
    common::wait_until("took the good messages", || taken(node) >= n);
    std::thread::sleep(Duration::from_millis(500));
    taken(node)
}

/// A broken array longer than what the inbox reads at once (1 MiB): where it ends is not
/// known until a line opens the next array, so it is read again with more; none of the
/// objects on its lines is ever taken for a message of its own (they were once, past the
/// first read, each read as a single message), the array after it goes, and the rejection
/// is reported a bounded number of times.
#[test]
fn a_broken_array_longer_than_a_read_runs_none_of_its_lines() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    // Lines of 128 bytes each, so that a read's end (at 1 MiB) falls where a line begins.
    let line = |i: usize| {
        let text = |pad: &str| {
            format!("  {{\"toNode\":\"ship1\",\"data\":[\"echo\",\"NO-{i}\",\"{pad}\"],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\"}},\n")
        };
        text(&"x".repeat(128 - text("").len()))
    };
    assert_eq!(line(7).len(), 128);
    // A bracket that does not match, then 3 MiB of objects: broken from its second line.
    let mut broken = format!("[\n  }}{}\n", " ".repeat(128 - 6));
    assert_eq!(broken.len(), 128);
    let mut n = 0;
    while broken.len() < 3 << 20 {
        broken.push_str(&line(n));
        n += 1;
    }
    broken.push_str("]\n");
    central.append_inmsg(&format!("{broken}{}", command("ship1", &["echo", "YES"])));
    let taken = wait_taken(&central, 1);
    central.wait_idle();
    let rejected = central.read("inmsg.rejected.txt");
    let reports = central.wait_count("errors.log", "input rejected", 1);
    eprintln!(
        "[broken_array] lines={n} bytes={} rejected_bytes={} taken={taken} reports={}",
        broken.len(),
        rejected.len(),
        reports.matches("input rejected").count()
    );
    assert_eq!(taken, 1, "objects of the broken array were taken");
    for i in [0, n / 2, n - 1] {
        assert!(rejected.contains(&format!("\"NO-{i}\"")), "NO-{i} not kept");
    }
    assert!(!rejected.contains("YES"));
    assert!(reports.matches("input rejected").count() <= 11);
}

/// inmsg.txt is taken by renaming it: a symbolic link would be broken (what is written to
/// its target never seen again, or taken twice when the link is made again), a second name
/// of a hard link written through unseen. Neither is taken: each is said, once, and left
/// as it is; a plain file after it is taken.
#[test]
fn an_inmsg_txt_that_is_a_link_is_left_and_said() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("messages.json");
    let text = command("ship1", &["echo", "linked"]);
    std::fs::write(&target, &text).unwrap();
    std::os::unix::fs::symlink(&target, central.path("inmsg.txt")).unwrap();
    let errors = central.wait_for("errors.log", "is a symbolic link");
    // Said once, however often the folder changes meanwhile.
    for i in 0..5 {
        std::fs::write(central.path(&format!("touch-{i}")), "").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(central.path("inmsg.txt")).unwrap();
    // A hard link: two names.
    std::fs::hard_link(&target, central.path("inmsg.txt")).unwrap();
    let errors_after = central.wait_for("errors.log", "names (hard links)");
    assert_eq!(
        errors_after.matches("is a symbolic link").count(),
        1,
        "{errors_after}"
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        text,
        "the target was changed"
    );
    assert_eq!(taken(&central), 0);
    assert!(errors.contains(&target.display().to_string()), "{errors}");
    // A plain file again: taken.
    std::fs::remove_file(central.path("inmsg.txt")).unwrap();
    central.append_inmsg(&text);
    assert_eq!(wait_taken(&central, 1), 1);
    assert_eq!(central.metric("steward_process_restarts_total"), 0.0);
}

/// A writer that keeps inmsg.txt open writes a broken array, pauses, and writes more of it:
/// the stretch is rejected once it ends (its writer gone, or a line opening an array), in
/// one piece, and none of the objects on its lines is taken, neither those written before
/// the pause nor after (the first read once rejected what there was, and the rest was read
/// as new input: each object line a message).
#[test]
fn a_broken_array_written_in_parts_by_a_writer_that_holds_the_file_runs_none_of_its_lines() {
    use std::io::Write;
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let object = |i: usize| {
        format!("  {{\"toNode\":\"ship1\",\"data\":[\"echo\",\"NO-{i}\"],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\"}},\n")
    };
    let mut writer = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(central.path("inmsg.txt"))
        .unwrap();
    writer.write_all(b"[\n  }\n").unwrap();
    for i in 0..3 {
        writer.write_all(object(i).as_bytes()).unwrap();
    }
    writer.flush().unwrap();
    // The inbox has read it by now (it is woken by the write), and waits.
    std::thread::sleep(Duration::from_millis(800));
    for i in 3..6 {
        writer.write_all(object(i).as_bytes()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(800));
    writer.write_all(b"]\n").unwrap();
    writer
        .write_all(command("ship1", &["echo", "YES"]).as_bytes())
        .unwrap();
    drop(writer);
    let taken = wait_taken(&central, 1);
    let rejected = central.read("inmsg.rejected.txt");
    eprintln!(
        "[broken_in_parts] taken={taken} rejected_pieces={}",
        rejected.matches("# ").count()
    );
    assert_eq!(taken, 1, "objects of the broken array were taken");
    for i in 0..6 {
        assert!(rejected.contains(&format!("\"NO-{i}\"")), "NO-{i} not kept");
    }
    assert_eq!(rejected.matches("# ").count(), 1, "one piece:\n{rejected}");
}

#[test]
fn a_fan_out_too_large_to_copy_is_rejected_and_large_fan_outs_all_go_in_batches() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let fan_out = |n: usize, data: &str| {
        let nodes: Vec<String> = (0..n).map(|i| format!("away{i}")).collect();
        serde_json::json!([{
            "toNodes": nodes,
            "data": [data],
            "commandOrEvent": "EventNACK",
            "method": "TextLogging",
        }])
        .to_string()
    };
    // 100,000 copies of 2 KiB: 200 MB to journal from 1 MB of input (a script of 250 KiB
    // took 25 GB, and the node was killed for its memory at every start). Rejected, kept,
    // and the message after it goes.
    central.append_inmsg(&format!(
        "{}\n{}",
        fan_out(100_000, &"x".repeat(2048)),
        command("ship1", &["echo", "after it"])
    ));
    central.wait_for("replies/ship1.CLICommand.log", "after it");
    let rejected = central.read("inmsg.rejected.txt");
    assert!(
        rejected.contains("toNodes makes 100000 copies of about"),
        "{}",
        &rejected[..rejected.len().min(600)]
    );
    assert!(rejected.contains("away99999"), "kept as it was written");
    // Three within the bound, 40 MB of copies each: taken a batch at a time, every copy
    // journaled once, at once (not left until something more is written).
    let big = fan_out(200, &"y".repeat(200 * 1024));
    central.append_inmsg(&format!("{big}\n{big}\n{big}\n"));
    central.wait_until("", "journaled every copy", |_| {
        central.metric("steward_messages_accepted_total{method=\"TextLogging\"}") >= 600.0
    });
    assert_eq!(
        central.metric("steward_messages_accepted_total{method=\"TextLogging\"}"),
        600.0
    );
    assert_eq!(central.read("inmsg.rejected.txt"), rejected);
    // The same through the control socket: every copy queued, and said to be.
    use std::io::{Read, Write};
    let mut socket = std::os::unix::net::UnixStream::connect(central.path("steward.sock")).unwrap();
    socket
        .write_all(format!("{big}\n{big}\n{big}\n").as_bytes())
        .unwrap();
    socket.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    assert_eq!(
        answer
            .lines()
            .filter(|l| l.contains(r#""queued":true"#))
            .count(),
        600
    );
    assert_eq!(
        answer.lines().count(),
        600,
        "{}",
        &answer[..answer.len().min(600)]
    );
    assert_eq!(
        central.metric("steward_messages_accepted_total{method=\"TextLogging\"}"),
        1200.0
    );
    assert!(!ship1.path("textlog").exists());
}

#[test]
fn a_link_or_a_fifo_in_the_place_of_a_taken_inbox_file_is_reported_not_read() {
    let nats = NatsServer::start();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let mut central = Node::start("central", &nats.address(), &[]);
    central.kill9();
    // What a FIFO or a link put in inmsg.txt's place as it was taken leaves: a FIFO waited
    // for a writer for ever (the inbox with it, at every start), a link was read through.
    let fifo = central.path("inmsg.taking-00000000000000000001");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("messages.json");
    std::fs::write(&target, command("ship1", &["echo", "through a link"])).unwrap();
    let link = central.path("inmsg.taking-00000000000000000002");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    // And a folder, which cannot be removed as a file (the inbox restarted into it).
    let folder = central.path("inmsg.taking-00000000000000000003");
    std::fs::create_dir(&folder).unwrap();
    central.restart();
    central.append_inmsg(&command("ship1", &["echo", "after them"]));
    central.wait_for("replies/ship1.CLICommand.log", "after them");
    central.wait_count("errors.log", "is not a regular file", 3);
    assert!(!central
        .read("replies/ship1.CLICommand.log")
        .contains("through a link"));
    central.wait_until("", "removed the FIFO and the link", |_| {
        std::fs::symlink_metadata(&fifo).is_err() && std::fs::symlink_metadata(&link).is_err()
    });
    let reports = central.read("errors.log");
    assert_eq!(
        reports.matches("is not a regular file").count(),
        3,
        "{reports}"
    );
    assert!(folder.is_dir(), "left as it is");
    assert_eq!(central.metric("steward_process_restarts_total"), 0.0);
    assert!(std::fs::read_to_string(&target)
        .unwrap()
        .contains("through a link"));
}
