//! Signed messages, replay refusal, per-sender authorization and key distribution, against
//! a real nats-server that anyone may publish on: the broker is not trusted, the keys are.
//!
//! The intruder here is a plain NATS client on the same broker. It can read every message
//! (it subscribes to `ship1.>`), so it can replay real ones, alter them, or sign its own.
//! What it proves nothing with is answered with nothing; see `tests/hostile.rs` for every
//! kind × method × sender it can try.

use crate::common;
use common::raw::{envelope, signed_by, Raw};
use common::{command, key_of, NatsServer, Node};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `steward` as node `node` on data folder `data`, e.g. `steward keys show`.
fn steward(data: &Path, node: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_steward"))
        .arg(format!("--dataFolder={}", data.display()))
        .arg(format!("--node={node}"))
        .args(args)
        .output()
        .unwrap()
}

fn touch(dir: &Path, file: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("echo run >> {}", dir.join(file).display()),
    ]
}

/// ship1 and central, both listening, and a raw connection to forge messages on.
fn listening_pair(nats: &NatsServer) -> (Node, Node, Raw) {
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    (ship1, central, Raw::connect(&nats.address()))
}

/// Sends a forged request to `node` as `from` would (its reply on `from`'s own inbox) and
/// asserts it is refused and answered with nothing.
fn unanswered(
    raw: &Raw,
    node: &Node,
    subject: &str,
    from: &str,
    headers: Option<&nats::HeaderMap>,
    payload: &[u8],
) {
    let method = subject.rsplit('.').next().unwrap();
    let refused = node.refused(method) as usize;
    let inbox = format!("_INBOX.{from}.forged.{}", steward::keys::random_hex128());
    raw.send(subject, Some(&inbox), headers, payload);
    node.wait_refused(method, refused + 1);
    let answers = raw.answers_seen(&inbox);
    assert!(
        answers.is_empty(),
        "a forged message was answered: {:?}",
        String::from_utf8_lossy(&answers[0].data)
    );
}

#[test]
fn a_command_forged_as_central_is_refused_unanswered_and_reported_to_central() {
    let nats = NatsServer::start();
    let (ship1, central, raw) = listening_pair(&nats);
    let target = tempfile::tempdir().unwrap();
    let argv = touch(target.path(), "forged");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let subject = "ship1.CommandACK.CLICommand";
    let forged = |id: &str| envelope(id, "central", "ship1", "CommandACK", "CLICommand", &argv);

    // Not signed at all.
    unanswered(&raw, &ship1, subject, "central", None, &forged("forged-1"));
    // Signed, with the intruder's own key.
    let payload = forged("forged-2");
    let h = signed_by("intruder", subject, None, &payload);
    unanswered(&raw, &ship1, subject, "central", Some(&h), &payload);
    // A real message of central's, captured on the wire, altered to run something else.
    let spy = raw.spy("ship1.>");
    central.append_inmsg(&command("ship1", &["echo", "genuine"]));
    let captured = spy.next_timeout(Duration::from_secs(10)).unwrap();
    central.wait_for("replies/ship1.CLICommand.log", "genuine");
    let mut altered: serde_json::Value = serde_json::from_slice(&captured.data).unwrap();
    altered["data"] = serde_json::json!(argv);
    raw.send(
        subject,
        captured.reply.as_deref(),
        captured.headers.as_ref(),
        altered.to_string().as_bytes(),
    );
    ship1.wait_refused("CLICommand", 3);
    assert!(
        !target.path().join("forged").exists(),
        "a forged command ran"
    );
    // Each refusal reached central's error log, with the sender, the subject and why.
    let errors = central.wait_count(
        "errors.log",
        "ship1 refused ship1.CommandACK.CLICommand from central",
        3,
    );
    for why in ["not signed", "not trusted for central", "forged, altered"] {
        assert!(errors.contains(why), "{why:?} not in errors.log:\n{errors}");
    }
    // An event that claims to come from ship1 must be signed by ship1; and an event from a
    // name central trusts no key for is refused too: a provisioned fleet fails closed.
    for (k, (id, from)) in [("forged-4", "ship1"), ("stranger-1", "stranger")]
        .into_iter()
        .enumerate()
    {
        let event = envelope(id, from, "central", "EventACK", "TextLogging", &["lies"]);
        unanswered(
            &raw,
            &central,
            "central.EventACK.TextLogging",
            from,
            None,
            &event,
        );
        let h = signed_by("intruder", "central.EventACK.TextLogging", None, &event);
        raw.send("central.EventACK.TextLogging", None, Some(&h), &event);
        central.wait_refused("TextLogging", 2 * (k + 1));
    }
    central.wait_for("errors.log", "from stranger (id stranger-1)");
    assert!(
        !central.path("textlog").exists(),
        "a forged event was logged"
    );
    drop(ship1);
}

#[test]
fn a_replayed_command_is_refused_at_once_and_later_and_never_runs_twice() {
    let nats = NatsServer::start();
    // The clock is checked here (by default only while the kernel says it is synchronized).
    let ship1 = Node::start(
        "ship1",
        &nats.address(),
        &["--replayWindow=3", "--clockCheck=on"],
    );
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let spy = raw.spy("ship1.>");
    let argv = touch(ship1.data(), "runs");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    central.append_inmsg(&command("ship1", &argv));
    let captured = spy.next_timeout(Duration::from_secs(10)).unwrap();
    central.wait_for("replies/ship1.CLICommand.log", "status=Ok");
    assert_eq!(ship1.read("runs").lines().count(), 1);
    let replay = || raw.replay(&captured);

    // Each replay is refused; the log says why.
    let refused = |n: usize, why: &str| {
        ship1.wait_refused("CLICommand", n);
        assert!(ship1.log().contains(why), "{why:?} not in the log");
    };
    // Replayed at once: inside the window, but its counter was taken.
    replay();
    refused(1, "a replay: this counter was taken before");
    // Replayed later: outside the window (3 s after it was sent), refused.
    let sent: u64 = captured
        .headers
        .as_ref()
        .unwrap()
        .get("Steward-Sent")
        .unwrap()
        .parse()
        .unwrap();
    while steward::files::unix_millis() < sent + 3_500 {
        std::thread::sleep(Duration::from_millis(50));
    }
    replay();
    refused(2, "outside this node's replay window of 3s");
    // A fresh time cannot be put on it without central's key.
    let mut headers = captured.headers.clone().unwrap();
    headers.insert("Steward-Sent", steward::files::unix_millis().to_string());
    raw.send(
        &captured.subject,
        captured.reply.as_deref(),
        Some(&headers),
        &captured.data,
    );
    refused(3, "forged, altered");
    // Nor moved to another kind's subject.
    raw.send(
        "ship1.CommandNACK.CLICommand",
        captured.reply.as_deref(),
        captured.headers.as_ref(),
        &captured.data,
    );
    refused(4, "does not match its subject");

    let runs = ship1.read("runs").lines().count();
    let answers = raw.answers_seen(captured.reply.as_deref().unwrap()).len();
    eprintln!("[replay] captured=1 replayed=4 runs={runs} answers={answers}");
    assert_eq!(runs, 1, "a replay ran the command again");
    // The only answer on the wire was ship1's to the genuine message.
    assert_eq!(answers, 1);
    central.wait_for("errors.log", "replay window");
}

#[test]
fn only_the_senders_and_methods_in_the_allow_list_may_command_a_node() {
    let nats = NatsServer::start();
    let ship1 = Node::start(
        "ship1",
        &nats.address(),
        &["--allowCommandsFrom=central,ops:CLICommand"],
    );
    let central = Node::start("central", &nats.address(), &[]);
    let ops = Node::start("ops", &nats.address(), &[]);
    let ship2 = Node::start("ship2", &nats.address(), &[]);

    // ops may run commands on ship1; ship2, a trusted fleet member, may not: it is told
    // why (it proved who it is), and may still send events.
    ops.append_inmsg(&command("ship1", &["echo", "ops ran this"]));
    ship2.append_inmsg(&command("ship1", &["echo", "ship2 ran this"]));
    ship2.append_inmsg(
        r#"[{"toNode":"ship1","data":["from ship2\n"],"commandOrEvent":"EventACK","method":"TextLogging"}]"#,
    );
    central.append_inmsg(&command("ship1", &["echo", "central ran this"]));
    central.wait_for("replies/ship1.CLICommand.log", "central ran this");
    ops.wait_for("replies/ship1.CLICommand.log", "ops ran this");
    ship1.wait_for("textlog/ship2.log", "from ship2");
    ship2.wait_for("failed-messages.txt", "ship2 ran this");
    let reply = ship2.wait_for("replies/ship1.CLICommand.log", "status=Refused");
    assert!(
        reply.contains("ship2 may not call CLICommand here"),
        "{reply}"
    );
    assert!(!reply.contains("ran this\n"), "{reply}");
    let errors = central.wait_for("errors.log", "may not call CLICommand here");
    assert!(errors.contains("from ship2"), "{errors}");
    assert!(
        errors.contains("allowCommandsFrom: central, ops:CLICommand"),
        "{errors}"
    );
    // Keys come only from central, whatever the allow-list says.
    let out = steward(ops.data(), "ops", &["keys", "distribute", "ship1"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}"); // refused
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("only the central node (central) distributes keys"),
        "{out:?}"
    );
}

#[test]
fn central_distributes_keys_and_revocations_but_never_binds_a_protected_name() {
    let nats = NatsServer::start();
    let ship1 = Node::start(
        "ship1",
        &nats.address(),
        &["--allowCommandsFrom=central,ops:CLICommand"],
    );
    // ship1 knows only central's key (and its own).
    ship1.trust_only(&["central"]);
    let central = Node::start("central", &nats.address(), &[]);
    let ship2 = Node::start("ship2", &nats.address(), &["--defaultMessageRetries=20"]);
    // ship2's events are refused until ship1 knows ship2's key.
    ship2.append_inmsg(
        r#"[{"toNode":"ship1","data":["hello from ship2\n"],"commandOrEvent":"EventACK","method":"TextLogging"}]"#,
    );
    ship1.wait_refused("TextLogging", 1);
    assert!(ship1
        .log()
        .contains("refused ship1.EventACK.TextLogging from ship2"));
    assert!(!ship1.path("textlog/ship2.log").exists());

    // Central's set names ops, whom ship1 lets run commands: only ship1's operator may
    // pin that key, so the whole set is refused, saying why.
    let out = steward(central.data(), "central", &["keys", "distribute", "ship1"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{out:?}");
    assert!(said.contains("binds a key to ops"), "{said}");
    // Pinned on ship1 by its operator, the same set is taken.
    ship1.trust("ops");
    let out = steward(central.data(), "central", &["keys", "distribute", "ship1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A line for each node, into a pipe too (several nodes' words were glued together).
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("ship1 now trusts") && said.ends_with('\n'),
        "{said:?}"
    );
    let held = ship1.read("keys/distributed.json");
    assert!(held.contains(&key_of("ship2")) && held.contains(&key_of("central")));
    ship1.wait_for("textlog/ship2.log", "hello from ship2");
    let ship1_refused = ship1.refused("TextLogging") as usize;

    // Central revokes ship2 (its key was stolen), and hands the revocation on.
    let out = steward(central.data(), "central", &["keys", "revoke", "ship2"]);
    assert!(out.status.success(), "{out:?}");
    let out = steward(central.data(), "central", &["keys", "distribute", "ship1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ship2.append_inmsg(
        r#"[{"toNode":"ship1","data":["after revocation\n"],"commandOrEvent":"EventACK","method":"TextLogging"},
            {"toNode":"central","data":["after revocation\n"],"commandOrEvent":"EventACK","method":"TextLogging"}]"#,
    );
    ship1.wait_refused("TextLogging", ship1_refused + 1);
    central.wait_refused("TextLogging", 1);
    assert!(ship1.log().contains("which was revoked"));
    assert!(central.log().contains("which was revoked"));
    assert!(!ship1.read("textlog/ship2.log").contains("after revocation"));
    assert!(!central
        .read("textlog/ship2.log")
        .contains("after revocation"));
}

#[test]
fn keys_are_made_on_first_start_private_and_shown_for_others_to_trust() {
    use std::os::unix::fs::PermissionsExt;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| steward(dir.path(), "ship7", args);
    let out = run(&["keys", "show"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("steward keys generate"));
    let out = run(&["keys", "generate"]);
    assert!(out.status.success(), "{out:?}");
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    let key = shown.trim().strip_prefix("ship7 ").unwrap().to_string();
    assert!(key.starts_with('U') && key.len() == 56, "{shown}");
    let seed = dir.path().join("keys/node.seed");
    assert_eq!(
        std::fs::metadata(&seed).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Not replaced by accident.
    let out = run(&["keys", "generate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = run(&["keys", "show"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ship7 {key}")
    );
    // A seed others can read stops the agent at start, naming the fix.
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&[&format!("--brokerAddress={}", nats.address())]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{out:?}"
    );
    // So does a data folder anyone may write (anyone could append to its inmsg.txt).
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let agent = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_steward"))
            .arg(format!("--dataFolder={}", dir.display()))
            .args([
                "--node=ship7",
                &format!("--brokerAddress={}", nats.address()),
            ])
            .args(["--promHostAndPort=off"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = agent(dir.path()).wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod o-w"),
        "{out:?}"
    );
    // Set up right, it runs, and its control socket is for its owner only (and root).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
    let mut running = agent(dir.path());
    let socket = dir.path().join("steward.sock");
    // (Bound, then restricted: wait for the restriction rather than race it.)
    let mode = || {
        std::fs::metadata(&socket)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mode() != 0o600 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = mode();
    running.kill().unwrap();
    running.wait().unwrap();
    assert_eq!(mode, 0o600);
}

#[test]
fn a_reply_not_bound_to_central_s_own_request_is_ignored() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    // ship1 is not up yet; an intruder answers in its name: unsigned, self-signed, and
    // signed with ship2's stolen key; and a genuine "no responders" status, forged.
    let raw = Raw::connect(&nats.address());
    let listen = raw.spy("ship1.CommandACK.CLICommand");
    central.append_inmsg(&command("ship1", &["echo", "real output"]));
    let msg = listen.next_timeout(Duration::from_secs(10)).unwrap();
    let id = serde_json::from_slice::<serde_json::Value>(&msg.data).unwrap()["id"].clone();
    let fake = serde_json::json!({"id": id, "fromNode": "ship1", "status": "ok", "exitCode": 0, "output": "fake output\n"})
        .to_string();
    let to = msg.reply.clone().unwrap();
    raw.send(&to, None, None, fake.as_bytes());
    for signer in ["intruder", "ship2"] {
        let h = signed_by(signer, &to, None, fake.as_bytes());
        raw.send(&to, None, Some(&h), fake.as_bytes());
    }
    drop(listen);
    // The real ship1 comes up; its signed reply is the one stored.
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let replies = central.wait_for("replies/ship1.CLICommand.log", "real output");
    assert!(!replies.contains("fake output"), "{replies}");
    assert!(
        central.log().contains("ignoring a reply"),
        "no warning logged"
    );
}

/// Central's publishers share one reply inbox; a node that sees a request learns its
/// publisher's reply subject. Flooding it, while the publisher waits and while it idles
/// with nothing to read its replies, answers nothing, costs central no more than a route's
/// 64 messages of memory, and one log line an attempt; the next command goes as usual.
#[test]
fn a_flood_on_a_publisher_s_reply_subject_answers_nothing_and_holds_no_memory() {
    let nats = NatsServer::start();
    let (ship1, central, raw) = listening_pair(&nats);
    let spy = raw.spy("ship1.CommandACK.CLICommand");
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","sleep 3; echo first"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":20,"retries":0}]"#,
    );
    let msg = spy.next_timeout(Duration::from_secs(10)).unwrap();
    let to = msg.reply.clone().unwrap();
    let id = serde_json::from_slice::<serde_json::Value>(&msg.data).unwrap()["id"].clone();
    let fake = serde_json::json!({"id": id, "fromNode": "ship1", "status": "ok", "exitCode": 0, "output": "fake\n"})
        .to_string();
    // While it waits: forgeries on its exact subject, unsigned and self-signed.
    let flooder = nats::connect(nats.address()).unwrap();
    let signed = signed_by("intruder", &to, None, fake.as_bytes());
    for i in 0..1000 {
        let headers = (i % 2 == 0).then_some(&signed);
        flooder
            .publish_with_reply_or_headers(&to, None, headers, fake.as_bytes())
            .unwrap();
    }
    flooder.flush().unwrap();
    central.wait_for("replies/ship1.CLICommand.log", "first");
    // While it idles: 64 MB on its route (the same subject, and others under its token).
    let before = central.rss_kib();
    let prefix = to.rsplit_once('.').unwrap().0;
    let big = vec![b'x'; 32 * 1024];
    for i in 0..2000 {
        let subject = match i % 2 {
            0 => to.clone(),
            _ => format!("{prefix}.x{i}"),
        };
        flooder.publish(&subject, &big).unwrap();
    }
    flooder.flush().unwrap();
    // Whatever central's client has read of it by now, routed or dropped.
    std::thread::sleep(Duration::from_secs(2));
    let grown = central.rss_kib().saturating_sub(before);
    eprintln!("[reply-flood] forged=1000 flooded_kib=64000 central_grew_kib={grown}");
    assert!(
        grown < 16 * 1024,
        "central grew {grown} KiB on a 64 MB flood"
    );
    // The next command goes through the same publisher, past what its route kept.
    central.append_inmsg(&command("ship1", &["echo", "second"]));
    let replies = central.wait_for("replies/ship1.CLICommand.log", "second");
    assert!(!replies.contains("fake"), "{replies}");
    let ignored = central.log().matches("ignoring a reply").count();
    assert!(
        (1..=2).contains(&ignored),
        "{ignored} lines for 1,000 forgeries:\n{}",
        central.log()
    );
    drop(ship1);
}

#[test]
fn a_reply_from_a_node_whose_key_is_not_trusted_is_not_stored_and_the_key_is_named() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start(
        "central",
        &nats.address(),
        &["--defaultMessageRetries=1", "--defaultMessageTimeout=2"],
    );
    central.trust_only(&[]);
    central.append_inmsg(&command("ship1", &["echo", "unverifiable"]));
    let failed = central.wait_for("failed-messages.txt", "unverifiable");
    assert!(!central
        .read("replies/ship1.CLICommand.log")
        .contains("status=Ok"));
    let errors = central.read("errors.log") + &central.log();
    let fix = format!("steward keys trust ship1 {}", key_of("ship1"));
    assert!(
        errors.contains(&fix),
        "the fix is not named:\n{failed}\n{errors}"
    );
    // It ran once on ship1 all the same; trusted, the next one is stored.
    central.trust("ship1");
    central.append_inmsg(&command("ship1", &["echo", "verified"]));
    central.wait_for("replies/ship1.CLICommand.log", "verified");
    drop(ship1);
}

#[test]
fn a_forged_no_responders_status_does_not_fail_a_command() {
    let nats = NatsServer::start();
    let (ship1, central, raw) = listening_pair(&nats);
    let spy = raw.spy("ship1.CommandACK.CLICommand");
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","sleep 1; echo slow but sure"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":10,"retries":0}]"#,
    );
    let msg = spy.next_timeout(Duration::from_secs(10)).unwrap();
    // What the broker says when nobody listens: anyone may publish it on an inbox.
    let mut status = nats::HeaderMap::new();
    status.insert("Status", "503".to_string());
    raw.send(msg.reply.as_deref().unwrap(), None, Some(&status), b"");
    central.wait_for("replies/ship1.CLICommand.log", "slow but sure");
    assert!(!central.path("failed-messages.txt").exists());
    drop(ship1);
}

#[test]
fn forged_no_responders_at_every_send_get_a_few_sends_and_the_reply_still_counts() {
    let nats = NatsServer::start();
    let (ship1, central, raw) = listening_pair(&nats);
    let spy = raw.spy("ship1.CommandACK.CLICommand");
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","echo once >> ran.txt; sleep 3; echo slow but sure"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":10,"retries":0}]"#,
    );
    // Each send of the command answered at once with a forged "nobody listens": it is sent
    // again (within its attempt) while ship1 runs the first copy, and the later copies
    // find it running. Its reply, signed over the first send, must still be taken.
    let mut status = nats::HeaderMap::new();
    status.insert("Status", "503".to_string());
    let (mut sends, deadline) = (0, Instant::now() + Duration::from_secs(30));
    let mut first: Option<Instant> = None;
    while !central
        .read("replies/ship1.CLICommand.log")
        .contains("slow but sure")
    {
        assert!(Instant::now() < deadline, "no reply stored");
        if let Ok(msg) = spy.next_timeout(Duration::from_millis(100)) {
            sends += 1;
            first.get_or_insert_with(Instant::now);
            raw.send(msg.reply.as_deref().unwrap(), None, Some(&status), b"");
        }
    }
    let took = first.unwrap().elapsed();
    // A send made just before the reply was stored may not have reached the spy yet: the
    // broker's answer to a PING sent now comes after it.
    raw.conn.flush().unwrap();
    while spy.try_next().is_some() {
        sends += 1;
    }
    eprintln!("[forged_no_responders] sends={sends} in {took:?}");
    // The schedule, not the forgeries, sets the pace: the first send and three quick ones
    // (0.05, 0.2, 0.65 s), then at most one a second by the pause and one a second by
    // ship1's Hellos (every second in these tests). One send per forgery would be hundreds.
    let most = 4 + 2 * took.as_secs_f64().ceil() as usize;
    assert!(
        (2..=most).contains(&sends),
        "{sends} sends in {took:?}: one and at most {} again",
        most - 1
    );
    assert!(!central.path("failed-messages.txt").exists());
    assert_eq!(ship1.read("ran.txt"), "once\n");
    let resent = "steward_messages_resent_total{method=\"CLICommand\"}";
    assert_eq!(central.metric(resent), (sends - 1) as f64);
}

#[test]
fn a_flood_of_forgeries_is_reported_to_central_at_most_twenty_a_minute() {
    let nats = NatsServer::start();
    let (ship1, central, raw) = listening_pair(&nats);
    let sent = 30;
    for i in 0..sent {
        let forged = envelope(
            &format!("flood-{i}"),
            "central",
            "ship1",
            "CommandACK",
            "CLICommand",
            &["true"],
        );
        raw.send(
            "ship1.CommandACK.CLICommand",
            Some("_INBOX.central.flood"),
            None,
            &forged,
        );
    }
    // Every forgery refused, and every report ship1 made of one delivered to central.
    ship1.wait_refused("CLICommand", sent);
    ship1.wait_metric(
        "delivered its reports",
        |s| s.metric("steward_journal_pending_messages"),
        |v| v == 0.0,
    );
    let reported = central.read("errors.log").matches("(id flood-").count();
    let logged = ship1.log().matches("(id flood-").count();
    let answered = raw.answers_seen("_INBOX.central.flood").len();
    eprintln!("[refusal_flood] sent={sent} reported={reported} logged_on_ship1={logged} answered={answered}");
    assert_eq!(reported, 20, "refusal reports are limited to 20 a minute");
    assert_eq!(logged, sent, "every refusal is logged where it happened");
    assert_eq!(answered, 0, "a forgery was answered");
}

/// A Hello has no id record behind its counter (central spares two fsyncs per Hello), so
/// its counter alone must refuse a replay, also after central restarts: stopped by
/// systemd (the counters saved at the stop) or killed (saved every second while they
/// change). The replay sets no last-seen time.
#[test]
fn a_hello_replayed_after_central_restarts_is_refused_and_sets_no_time() {
    let nats = NatsServer::start();
    let mut central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let spy = raw.spy("central.EventNACK.Hello");
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    // ship1's, not central's own Hello to itself, which may come first.
    let captured = std::iter::from_fn(|| spy.next_timeout(Duration::from_secs(10)).ok())
        .find(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.data).unwrap()["fromNode"] == "ship1"
        })
        .expect("ship1's Hello");
    central.wait_for("hello-nodes.json", "\"ship1\"");
    ship1.kill9();
    let last_seen = |central: &Node| -> u64 {
        let file: serde_json::Value =
            serde_json::from_str(&central.read("hello-nodes.json")).unwrap();
        file["ship1"]["lastSeenUnixMs"].as_u64().unwrap()
    };

    central.terminate();
    let before = last_seen(&central);
    // Restarted after a stop, then (counters saved a second ago at most) after a kill.
    for refusals in [1, 2] {
        if refusals == 2 {
            std::thread::sleep(Duration::from_millis(1500));
            central.kill9();
        }
        central.restart();
        raw.replay(&captured);
        central.wait_refused("Hello", 1);
        // Counted before it is logged: the line may come a moment after the count.
        let said = || central.log().matches("a replay: this counter").count();
        common::wait_until("the refusal logged", || said() >= refusals);
        assert_eq!(said(), refusals);
    }
    central.terminate();
    let after = last_seen(&central);
    eprintln!(
        "[hello-replay] replayed=2 refused=2 last_seen_changed={}",
        after != before
    );
    assert_eq!(after, before, "a replayed Hello set ship1's last-seen time");
}

/// A key revoked while the node runs (`steward keys revoke` on it, as its operator would)
/// is refused from its very next message on, of every kind, alone and in a batch: the node
/// reads its key files when the keys folder's watch hears them change, not at every
/// message, and a revocation is the change that must not lag.
#[test]
fn a_key_revoked_while_the_node_runs_is_refused_at_its_next_message_of_every_kind() {
    let nats = NatsServer::start();
    let ship1 = Node::start(
        "ship1",
        &nats.address(),
        &["--allowCommandsFrom=central,ship2"],
    );
    let raw = Raw::connect(&nats.address());
    let target = tempfile::tempdir().unwrap();
    let message = |id: &str, kind: &str| {
        let (method, data) = match kind.starts_with("Command") {
            true => ("CLICommand", touch(target.path(), id)),
            false => ("TextLogging", vec![format!("{id}\n")]),
        };
        let data: Vec<&str> = data.iter().map(String::as_str).collect();
        (method, envelope(id, "ship2", "ship1", kind, method, &data))
    };
    // Trusted before: ship2's command runs, and is answered.
    let (_, before) = message("k-0", "CommandACK");
    let subject = "ship1.CommandACK.CLICommand";
    let headers = signed_by("ship2", subject, Some("_INBOX.ship2.k0"), &before);
    let said = raw.ask(
        subject,
        "_INBOX.ship2.k0",
        Some(&headers),
        &before,
        Duration::from_secs(10),
    );
    assert!(said.is_some(), "ship2's command was not answered before");
    assert!(target.path().join("k-0").exists());
    let out = steward(ship1.data(), "ship1", &["keys", "revoke", "ship2"]);
    assert!(out.status.success(), "{out:?}");
    // At once, with no pause after the revocation.
    let kinds = ["CommandACK", "CommandNACK", "EventACK", "EventNACK"];
    for (k, kind) in kinds.iter().enumerate() {
        let (method, alone) = message(&format!("k-{k}-1"), kind);
        let (_, first) = message(&format!("k-{k}-2"), kind);
        let (_, second) = message(&format!("k-{k}-3"), kind);
        let batch = [b"[".as_slice(), &first, b",", &second, b"]"].concat();
        let subject = format!("ship1.{kind}.{method}");
        for (n, payload) in [alone, batch].iter().enumerate() {
            let refused = ship1.refused(method);
            let inbox = format!("_INBOX.ship2.revoked.{k}.{n}");
            let headers = signed_by("ship2", &subject, Some(&inbox), payload);
            raw.send(&subject, Some(&inbox), Some(&headers), payload);
            ship1.wait_metric(
                &format!("{subject} ({}) refused", ["alone", "a batch"][n]),
                |node| node.refused(method),
                |now| now > refused,
            );
        }
    }
    ship1.wait_idle();
    let answers = raw.answers_seen("_INBOX.ship2.revoked.");
    assert!(answers.is_empty(), "answered after the revocation");
    let ran: Vec<_> = std::fs::read_dir(target.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        ran,
        ["k-0"],
        "only the command from before the revocation ran"
    );
    assert!(
        !ship1.path("textlog/ship2.log").exists(),
        "an event was taken"
    );
    assert!(ship1.log().contains("which was revoked"));
}
