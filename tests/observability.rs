//! Metrics scraped over real HTTP move as messages flow; the profiling port shows the
//! process table.

use crate::common;
use common::{command, free_port, http_get, NatsServer, Node};
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn metrics_count_what_flows() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.trust("ship1");
    let acked = "steward_messages_acked_total{method=\"CLICommand\"}";
    assert_eq!(central.metric(acked), 0.0);
    let batch: String = (0..3)
        .map(|i| command("ship1", &["echo", &i.to_string()]))
        .collect();
    central.append_inmsg(&batch);
    central.wait_count("replies/ship1.CLICommand.log", "status=Ok", 3);
    // A reply is stored before its message is counted (and counted as finished last): the
    // third reply can be read while its message is not counted yet.
    let finished = "steward_messages_finished_total{kind=\"CommandACK\",method=\"CLICommand\",outcome=\"acked\"}";
    central.wait_metric("counted the three", |c| c.metric(finished), |v| v >= 3.0);
    assert_eq!(central.metric(acked), 3.0);
    assert_eq!(
        central.metric("steward_messages_accepted_total{method=\"CLICommand\"}"),
        3.0
    );
    assert_eq!(
        central.metric("steward_messages_sent_total{method=\"CLICommand\"}"),
        3.0
    );
    assert_eq!(
        ship1.metric("steward_messages_received_total{method=\"CLICommand\",outcome=\"ok\"}"),
        3.0
    );
    assert_eq!(central.metric("steward_broker_connected"), 1.0);
    assert!(central.metric("steward_processes_running") >= 6.0);
    assert_eq!(central.metric(finished), 3.0);
    assert_eq!(
        central.metric("steward_delivery_latency_seconds_count{method=\"CLICommand\"}"),
        3.0
    );
    assert!(central.metric("steward_journal_fsync_seconds_count") >= 1.0);
    assert!(central.metric("steward_journal_written_bytes_total") > 0.0);
    // Central hears every node's Hello and shows how long ago.
    central.wait_for("hello-nodes.json", "ship1");
    let page = http_get(central.prom_port, "/metrics");
    assert!(
        page.contains("steward_node_last_hello_age_seconds{node=\"ship1\"}"),
        "{page}"
    );
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("# TYPE steward_messages_acked_total counter"));
    assert!(page.contains("# TYPE steward_delivery_latency_seconds histogram"));
    assert!(http_get(central.prom_port, "/nope").starts_with("HTTP/1.1 404"));
    // A scrape job's `params` come as a query: the same page (it was a 404).
    let queried = http_get(central.prom_port, "/metrics?module=steward");
    assert!(queried.starts_with("HTTP/1.1 200"), "{queried}");
    assert!(queried.contains("# TYPE steward_messages_acked_total counter"));
    // HEAD: the headers alone.
    let head = head_of(central.prom_port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.ends_with("\r\n\r\n"),
        "a body after the headers: {head}"
    );
}

/// What the page at `path` answers a HEAD request, all of it.
fn head_of(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn only_trusted_nodes_get_a_line_of_their_own_in_metrics() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    central.trust("ship1");
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let _stranger = Node::start("stranger", &nats.address(), &[]);
    let line = |n: &str| format!("steward_node_last_hello_age_seconds{{node=\"{n}\"}}");
    central.wait_until("", "showed ship1's Hello in /metrics", |_| {
        http_get(central.prom_port, "/metrics").contains(&line("ship1"))
    });
    // Both say Hello every second: the stranger's have reached central, and been refused.
    central.wait_refused("Hello", 2);
    let page = http_get(central.prom_port, "/metrics");
    assert!(!page.contains(&line("stranger")), "{page}");
}

#[test]
fn a_node_silent_since_before_central_restarted_keeps_its_line_and_its_age() {
    let nats = NatsServer::start();
    let mut central = Node::start("central", &nats.address(), &[]);
    central.trust("ship1");
    central.terminate();
    // Central's roster from before the restart: ship1 last said Hello an hour ago.
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 3_600_000;
    let roster =
        |name: &str| format!(r#""{name}": {{"lastSeen": "then", "lastSeenUnixMs": {hour_ago}}}"#);
    let file = format!("{{{}, {}}}", roster("ship1"), roster("stranger"));
    std::fs::write(central.path("hello-nodes.json"), file).unwrap();
    central.restart();
    let age = central.metric("steward_node_last_hello_age_seconds{node=\"ship1\"}");
    assert!((3600.0..3700.0).contains(&age), "ship1's age: {age}");
    let page = http_get(central.prom_port, "/metrics");
    assert!(!page.contains("node=\"stranger\""), "{page}");

    // A roster that cannot be read is set aside and said, not written over.
    central.terminate();
    std::fs::write(central.path("hello-nodes.json"), "{\"ship1\": ").unwrap();
    central.restart();
    let log = central.log();
    assert!(log.contains("hello-nodes.json: unreadable"), "{log}");
    assert_eq!(central.read("hello-nodes.json.bad"), "{\"ship1\": ");
}

#[test]
fn the_profiling_port_shows_the_process_table() {
    let nats = NatsServer::start();
    let port = free_port();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start(
        "central",
        &nats.address(),
        &[&format!("--profilingPort={port}")],
    );
    central.append_inmsg(&command("ship1", &["true"]));
    central.wait_for("replies/ship1.CLICommand.log", "status=Ok");
    let page = http_get(port, "/");
    for row in [
        "publisher ship1.CommandACK.CLICommand",
        "subscriber CLICommand",
        "inbox",
        "hello",
        "restarts",
    ] {
        assert!(page.contains(row), "{row} missing:\n{page}");
    }
}

#[test]
fn a_request_without_end_is_cut_off_without_growing_memory() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let before = central.rss_kib();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", central.prom_port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..64 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let grown = central.rss_kib().saturating_sub(before);
    assert!(sent < 32 << 20, "{sent} bytes without a newline were taken");
    assert!(grown < 4 * 1024, "RSS grew by {grown} KiB");
    // And the endpoint still answers.
    assert!(http_get(central.prom_port, "/metrics").starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn silent_clients_do_not_stop_a_scrape() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    // More than the connections it keeps open: the oldest silent ones make room.
    let mut silent: Vec<_> = (0..steward::metrics::MAX_CONNECTIONS + 3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", central.prom_port)).unwrap())
        .collect();
    let started = Instant::now();
    let page = http_get(central.prom_port, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the scrape took {:?}",
        started.elapsed()
    );
    // The first of them were closed to make room; the last are still open.
    use std::io::Read;
    let mut byte = [0u8; 1];
    let first = &mut silent[0];
    first
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(matches!(first.read(&mut byte), Ok(0) | Err(_)), "closed");
    let last = silent.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let still = last.read(&mut byte).unwrap_err().kind();
    assert!(
        matches!(
            still,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{still:?}"
    );
}

/// Every file and folder under `dir` whose mode gives group or others more than allowed.
fn too_open(dir: &std::path::Path, found: &mut Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // removed meanwhile (a temporary file)
        };
        let mode = meta.mode() & 0o777;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let allowed = if meta.is_dir() {
            0o700
        } else if name == "steward.sock" {
            0o660 // owner and group may use the control socket, by design
        } else {
            0o600
        };
        if mode & !allowed != 0 {
            found.push(format!("{} {mode:o}", path.display()));
        }
        // keys/ is 0700 and the keys module's own business (node.pub is public by nature).
        if meta.is_dir() && name != "keys" {
            too_open(&path, found);
        }
    }
}

/// A batch of events is logged in one line, not a line an event (at 100,000 events a
/// second that flooded journald, whose rate limit then drops warnings with them); a
/// command, alone, still with its reply.
#[test]
fn a_batch_of_events_is_logged_in_one_line_and_a_command_with_its_reply() {
    let nats = NatsServer::start();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.trust("ship1");
    // Appended at once: journaled together, they travel in batches.
    let events: String = (0..600)
        .map(|i| format!("[{{\"toNode\":\"ship1\",\"data\":[\"event {i}\\n\"],\"commandOrEvent\":\"EventACK\",\"method\":\"TextLogging\"}}]\n"))
        .collect();
    central.append_inmsg(&events);
    central.wait_count("message-log.txt", "\"TextLogging\"", 600);
    central.append_inmsg(&command("ship1", &["echo", "hi"]));
    central.wait_for("message-log.txt", "CLICommand");
    let log = central.log();
    let alone = log
        .lines()
        .filter(|l| l.contains("ship1.EventACK.TextLogging: central-") && l.contains(" Ok: "))
        .count();
    let in_batches: usize = log
        .lines()
        .filter_map(|l| l.split("ship1.EventACK.TextLogging: ").nth(1))
        .filter_map(|rest| rest.split(" of ").next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(alone + in_batches, 600, "{log}");
    assert!(alone <= 2, "{alone} events logged a line each:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("ship1.CommandACK.CLICommand: central-")
                && l.ends_with("Ok exit 0: hi")),
        "{log}"
    );
}

#[test]
fn data_files_are_readable_by_their_owner_only() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.trust("ship1");
    central.append_inmsg(&command("ship1", &["echo", "hi"]));
    central.append_inmsg("not json\n");
    ship1.append_inmsg(
        "[{\"toNode\":\"central\",\"data\":[\"a line\\n\"],\"commandOrEvent\":\"EventACK\",\"method\":\"TextLogging\"}]\n",
    );
    central.wait_for("replies/ship1.CLICommand.log", "hi");
    central.wait_for("errors.log", "input rejected");
    central.wait_for("textlog/ship1.log", "a line");
    central.wait_for("hello-nodes.json", "ship1");
    // The operator's own files (inmsg.txt, taken) are theirs: gone once taken.
    central.wait_taken();
    ship1.wait_taken();
    let mut found = Vec::new();
    too_open(central.data(), &mut found);
    too_open(ship1.data(), &mut found);
    assert!(
        found.is_empty(),
        "readable by others:\n{}",
        found.join("\n")
    );
}

#[test]
fn control_characters_from_a_sender_are_escaped_in_logs() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.trust("ship1");
    ship1.append_inmsg(concat!(
        r#"[{"toNode":"central","data":["tail\r\u001b[2Jforged\tline\n"],"commandOrEvent":"EventACK","method":"TextLogging"},"#,
        r#"{"toNode":"central","data":["err\r\u001b]0;x\u0007"],"commandOrEvent":"EventACK","method":"ErrorLog"}]"#,
        "\n"
    ));
    let text = central.wait_for("textlog/ship1.log", "forged");
    assert_eq!(text, "tail\\r\\x1b[2Jforged\tline\n");
    // And a command's output, in the line central logs with its reply.
    central.append_inmsg(&command("ship1", &["printf", "a\\033[2Jb\\rc"]));
    central.wait_for("message-log.txt", "CLICommand");
    let log = central.log();
    let line = log
        .lines()
        .find(|l| l.contains("ship1.CommandACK.CLICommand: "))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.ends_with("Ok exit 0: a\\x1b[2Jb\\rc"), "{line:?}");
    let errors = central.wait_for("errors.log", "err");
    assert!(errors.contains("err\\r\\x1b]0;x\\x07\n"), "{errors}");
    assert!(!errors.contains('\r') && !errors.contains('\x1b'));
}

/// A command central sends to ship1 (`true`), as a raw client on the broker sees it, and
/// its envelope.
fn a_command_to_ship1_as_sent(
    central: &Node,
    raw: &common::raw::Raw,
) -> (nats::Message, serde_json::Value) {
    let sub = raw.spy("ship1.CommandACK.CLICommand");
    central.append_inmsg(&command("ship1", &["true"]));
    let m = sub
        .next_timeout(Duration::from_secs(10))
        .expect("the command");
    let sent = serde_json::from_slice(&m.data).unwrap();
    (m, sent)
}

/// A refusal's text, the receiver's own words, is escaped in the line its sender logs
/// (a trusted node, or one whose key was stolen, could write to the operator's terminal).
#[test]
fn a_refusal_s_text_is_escaped_in_its_sender_s_log() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let raw = common::raw::Raw::connect(&nats.address());
    let (m, sent) = a_command_to_ship1_as_sent(&central, &raw);
    // Answered as ship1 would refuse it, with its key, in words of its own.
    let reply = serde_json::json!({
        "id": sent["id"], "fromNode": "ship1", "toNode": "central", "status": "refused",
        "output": "no\u{1b}[2Jway\rout"
    });
    raw.answer_as("ship1", &m, &reply);
    central.wait_for("failed-messages.txt", "CLICommand");
    // Logged just after failed-messages.txt is written.
    common::wait_until("the refusal logged", || {
        central.log().contains("; kept in ")
    });
    let log = central.log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("way")).collect();
    assert!(!refused.is_empty(), "{log}");
    for line in refused {
        assert!(line.contains("no\\x1b[2Jway\\rout"), "{line:?}");
    }
}

#[test]
fn a_data_folder_others_can_read_or_its_group_write_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let nats = NatsServer::start();
    let mut central = Node::start("central", &nats.address(), &[]);
    assert!(!central.log().contains("chmod 700"), "{}", central.log());
    central.kill9();
    std::fs::set_permissions(central.data(), std::fs::Permissions::from_mode(0o755)).unwrap();
    central.restart();
    let hint = format!("chmod 700 {}", central.data().display());
    central.wait_for("errors.log", &hint);
    // Written by its group: its members are this node.
    central.kill9();
    std::fs::set_permissions(central.data(), std::fs::Permissions::from_mode(0o770)).unwrap();
    central.restart();
    let said = central.wait_count("errors.log", &hint, 2);
    assert!(said.contains("can be written by its group"), "{said}");
}

/// Two nodes on one host with the default `--promHostAndPort=:2112`: the second's port is
/// taken. It runs on without metrics, says which flag to change and how, tells central, and
/// command and control work as ever. The same for the profiling port.
#[test]
fn a_listener_port_in_use_is_reported_and_the_node_runs_on() {
    let nats = NatsServer::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let central = Node::start("central", &nats.address(), &[]);
    let prom = format!("--promHostAndPort=127.0.0.1:{port}");
    let profiling = format!("--profilingPort={port}");
    // Ready once its process table is served (by the control socket, not the port), by
    // when both listeners were tried and the errors logged.
    let mut ship1 = Node::start("ship1", &nats.address(), &[&prom, &profiling]);
    assert!(ship1.is_running(), "ship1 stopped:\n{}", ship1.log());
    let log = ship1.log();
    let said = log
        .lines()
        .find(|l| l.contains("cannot serve metrics"))
        .unwrap_or_default();
    for needle in [
        &format!("127.0.0.1:{port}"),
        "in use",
        "--promHostAndPort=127.0.0.1:2113",
        "--promHostAndPort=off",
    ] {
        assert!(
            said.contains(needle),
            "the log does not say {needle:?}:\n{said}"
        );
    }
    let profiling_said = log
        .lines()
        .find(|l| l.contains("cannot serve the process table"))
        .unwrap_or_default();
    assert!(
        profiling_said.contains("in use") && profiling_said.contains("--profilingPort"),
        "{profiling_said}"
    );
    central.wait_for("errors.log", "cannot serve metrics");
    central.append_inmsg(&command("ship1", &["echo", "metrics or not"]));
    central.wait_for("replies/ship1.CLICommand.log", "metrics or not");
    drop(taken);
}

/// What other parties write reaches the sender's log escaped, one line each: a reply
/// signed with a bogus "key" header by a client holding no trusted key, a trusted
/// receiver's reply naming another id or a status that is none (serde quotes it), and a
/// refusal whose words hold a log line of their own.
#[test]
fn remote_text_reaches_the_sender_s_log_escaped_from_any_party() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let raw = common::raw::Raw::connect(&nats.address());
    let (m, sent) = a_command_to_ship1_as_sent(&central, &raw);
    let to = m.reply.as_deref().unwrap().to_string();
    // 1. No key at all: a stranger's header.
    let payload = br#"{"id":"x","fromNode":"ship1","status":"ok","output":""}"#;
    let mut h = common::raw::signed_by("intruder", &to, None, payload);
    h.insert(steward::keys::KEY, "U\u{1b}]0;owned\u{7}\u{9b}2J");
    raw.send(&to, None, Some(&h), payload);
    // 2. ship1's key, another id with ESC.
    let reply = serde_json::json!({
        "id": "other\r\u{202e}\u{1b}[2J", "fromNode": "ship1", "toNode": "central", "status": "ok",
    });
    raw.answer_as("ship1", &m, &reply);
    // 3. ship1's key, a status that is no status: serde quotes it.
    let reply = serde_json::json!({
        "id": sent["id"], "fromNode": "ship1", "toNode": "central", "status": "x\u{9b}5m\r",
    });
    raw.answer_as("ship1", &m, &reply);
    // 4. A refusal whose words forge a line.
    let reply = serde_json::json!({
        "id": sent["id"], "fromNode": "ship1", "toNode": "central", "status": "refused",
        "output": "no\n[2030-01-01T00:00:00Z ERROR steward] forged"
    });
    raw.answer_as("ship1", &m, &reply);
    central.wait_for("failed-messages.txt", "CLICommand");
    common::wait_until("the refusal logged", || {
        central.log().contains("; kept in ")
    });
    let log = central.log();
    let mut bad = Vec::new();
    for line in log.lines() {
        if line
            .chars()
            .any(|c| c.is_control() && c != '\t' || c == '\u{202e}')
        {
            bad.push(format!("control: {line:?}"));
        }
        if line.trim_start().starts_with("[2030") {
            bad.push(format!("forged: {line:?}"));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}
