//! Signed messages, replay refusal, per-sender authorization and key distribution, against
//! a real nats-server that anyone may publish on: the broker is not trusted, the keys are.
//!
//! The intruder here is a plain NATS client on the same broker. It can read every message
//! (it subscribes to `ship1.>`), so it can replay real ones, alter them, or sign its own.

mod common;
use common::{command, key_of, seed_of, NatsServer, Node};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Publishes `payload` on `subject` with `headers`, and returns the reply as JSON.
fn request(
    raw: &nats::Connection,
    subject: &str,
    headers: Option<&nats::HeaderMap>,
    payload: &[u8],
) -> serde_json::Value {
    let inbox = raw.new_inbox();
    let sub = raw.subscribe(&inbox).unwrap();
    raw.publish_with_reply_or_headers(subject, Some(&inbox), headers, payload)
        .unwrap();
    raw.flush().unwrap();
    let reply = sub
        .next_timeout(Duration::from_secs(10))
        .expect("a reply within 10 s");
    serde_json::from_slice(&reply.data).unwrap()
}

/// A wire message as a node would publish it.
fn envelope(id: &str, from: &str, to: &str, kind: &str, method: &str, data: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "id": id, "fromNode": from, "accepted": 1, "toNode": to, "data": data,
        "commandOrEvent": kind, "method": method,
    })
    .to_string()
    .into_bytes()
}

fn signed_by(name: &str, payload: &[u8]) -> nats::HeaderMap {
    steward::keys::Identity::from_seed(&seed_of(name))
        .unwrap()
        .seal(payload)
}

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

fn refused(reply: &serde_json::Value, why: &str) {
    assert_eq!(reply["status"], "refused", "{reply}");
    let output = reply["output"].as_str().unwrap();
    assert!(output.contains(why), "expected {why:?} in: {output}");
}

/// ship1 and central, both listening, and a raw connection to forge messages on. (Raw
/// requests need ship1 subscribed: nobody listening is answered with nothing.)
fn listening_pair(nats: &NatsServer) -> (Node, Node, nats::Connection) {
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    ship1.wait_listening();
    central.wait_listening();
    (ship1, central, nats::connect(nats.address()).unwrap())
}

#[test]
fn a_command_forged_as_central_is_refused_and_reported_to_central() {
    let nats = NatsServer::start();
    let (_ship1, central, raw) = listening_pair(&nats);
    let target = tempfile::tempdir().unwrap();
    let argv = touch(target.path(), "forged");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let subject = "ship1.CommandACK.CLICommand";
    let forged = |id: &str| envelope(id, "central", "ship1", "CommandACK", "CLICommand", &argv);

    // Not signed at all.
    let reply = request(&raw, subject, None, &forged("forged-1"));
    refused(&reply, "must be signed");
    // Signed, with the intruder's own key.
    let payload = forged("forged-2");
    let reply = request(
        &raw,
        subject,
        Some(&signed_by("intruder", &payload)),
        &payload,
    );
    refused(&reply, "not trusted for central");
    // A real message of central's, captured on the wire, altered to run something else.
    let spy = raw.subscribe("ship1.>").unwrap();
    raw.flush().unwrap();
    central.append_inmsg(&command("ship1", &["echo", "genuine"]));
    let captured = spy.next_timeout(Duration::from_secs(10)).unwrap();
    central.wait_for("replies/ship1.CLICommand.log", "genuine");
    let mut altered: serde_json::Value = serde_json::from_slice(&captured.data).unwrap();
    altered["data"] = serde_json::json!(argv);
    altered["id"] = "forged-3".into();
    let reply = request(
        &raw,
        subject,
        captured.headers.as_ref(),
        altered.to_string().as_bytes(),
    );
    refused(&reply, "forged or altered");

    assert!(
        !target.path().join("forged").exists(),
        "a forged command ran"
    );
    // Each refusal reached central's error log, with the sender, the method and the reason.
    let errors = central.wait_count(
        "errors.log",
        "ship1 refused ship1.CommandACK.CLICommand from central",
        3,
    );
    for why in [
        "must be signed",
        "not trusted for central",
        "forged or altered",
    ] {
        assert!(errors.contains(why), "{why:?} not in errors.log:\n{errors}");
    }
    // An event that claims to come from a node whose key is known must be signed by it.
    central.trust("ship1");
    let event = envelope(
        "forged-4",
        "ship1",
        "central",
        "EventACK",
        "TextLogging",
        &["lies"],
    );
    let reply = request(&raw, "central.EventACK.TextLogging", None, &event);
    refused(&reply, "not signed, yet ship1's key is trusted here");
    // Events from nodes it knows nothing of are still taken (anyone may send events).
    let event = envelope(
        "stranger-1",
        "ship9",
        "central",
        "EventACK",
        "TextLogging",
        &["hi"],
    );
    let reply = request(&raw, "central.EventACK.TextLogging", None, &event);
    assert_eq!(reply["status"], "ok", "{reply}");
}

#[test]
fn a_replayed_command_is_refused_at_once_and_later_and_never_runs_twice() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &["--replayWindow=3"]);
    let central = Node::start("central", &nats.address(), &[]);
    let raw = nats::connect(nats.address()).unwrap();
    let spy = raw.subscribe("ship1.>").unwrap();
    raw.flush().unwrap();
    let argv = touch(ship1.data(), "runs");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    central.append_inmsg(&command("ship1", &argv));
    let captured = spy.next_timeout(Duration::from_secs(10)).unwrap();
    central.wait_for("replies/ship1.CLICommand.log", "status=Ok");
    assert_eq!(ship1.read("runs").lines().count(), 1);

    // Replayed at once: inside the window, but the very same signed message again.
    let reply = request(
        &raw,
        &captured.subject,
        captured.headers.as_ref(),
        &captured.data,
    );
    refused(&reply, "a replay: this very message");
    // Replayed later: outside the window, refused.
    std::thread::sleep(Duration::from_secs(4));
    let reply = request(
        &raw,
        &captured.subject,
        captured.headers.as_ref(),
        &captured.data,
    );
    refused(&reply, "outside this node's replay window of 3s");
    // A fresh time cannot be put on it without central's key.
    let mut headers = captured.headers.clone().unwrap();
    headers.insert("Steward-Sent", steward::files::unix_millis().to_string());
    let reply = request(&raw, &captured.subject, Some(&headers), &captured.data);
    refused(&reply, "forged or altered");

    let runs = ship1.read("runs").lines().count();
    eprintln!("[replay] captured=1 replayed=3 runs={runs}");
    assert_eq!(runs, 1, "a replay ran the command again");
    central.wait_for("errors.log", "replay window");
}

#[test]
fn only_the_senders_and_methods_in_the_allow_list_may_command_a_node() {
    let nats = NatsServer::start();
    let ship1 = Node::start(
        "ship1",
        &nats.address(),
        &["--allowCommandsFrom=central,ops:TextLogging"],
    );
    for name in ["ops", "ship2"] {
        ship1.trust(name);
    }
    let central = Node::start("central", &nats.address(), &[]);
    let ops = Node::start("ops", &nats.address(), &[]);
    let ship2 = Node::start("ship2", &nats.address(), &[]);

    // ops may log on ship1 (as a command), but not run commands; ship2 may do neither.
    ops.append_inmsg(
        r#"[{"toNode":"ship1","data":["from ops\n"],"commandOrEvent":"CommandACK","method":"TextLogging"}]"#,
    );
    ship1.wait_for("textlog/ops.log", "from ops");
    ops.append_inmsg(&command("ship1", &["echo", "ops ran this"]));
    ship2.append_inmsg(&command("ship1", &["echo", "ship2 ran this"]));
    central.append_inmsg(&command("ship1", &["echo", "central ran this"]));
    central.wait_for("replies/ship1.CLICommand.log", "central ran this");
    for sender in [&ops, &ship2] {
        sender.wait_for("failed-messages.txt", "ran this");
        let reply = sender.wait_for("replies/ship1.CLICommand.log", "status=Refused");
        assert!(reply.contains("may not call CLICommand here"), "{reply}");
        assert!(!reply.contains("ran this\n"), "{reply}");
    }
    let errors = central.wait_count("errors.log", "may not call CLICommand here", 2);
    assert!(
        errors.contains("from ops") && errors.contains("from ship2"),
        "{errors}"
    );
    assert!(
        errors.contains("allowCommandsFrom: central, ops:TextLogging"),
        "{errors}"
    );
}

#[test]
fn central_distributes_its_trusted_keys_and_nodes_then_take_commands_from_them() {
    let nats = NatsServer::start();
    let ship1 = Node::start(
        "ship1",
        &nats.address(),
        &["--allowCommandsFrom=central,ops:CLICommand"],
    );
    let central = Node::start("central", &nats.address(), &[]);
    let ops = Node::start("ops", &nats.address(), &["--defaultMessageRetries=0"]);
    // ship1 knows only central's key: ops is allowed by name but cannot prove it is ops.
    ops.append_inmsg(&command("ship1", &["echo", "first try"]));
    ops.wait_for("failed-messages.txt", "first try");
    let reply = ops.wait_for("replies/ship1.CLICommand.log", "status=Refused");
    assert!(reply.contains("ship1 trusts no key for ops"), "{reply}");

    // On central: trust ops, then hand central's set to ship1.
    let out = steward(
        central.data(),
        "central",
        &["keys", "trust", "ops", &key_of("ops")],
    );
    assert!(out.status.success(), "{out:?}");
    let out = steward(central.data(), "central", &["keys", "distribute", "ship1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ship1 now trusts 2 key(s)"));
    let held = ship1.read("keys/distributed.json");
    assert!(held.contains(&key_of("ops")) && held.contains(&key_of("central")));

    ops.append_inmsg(&command("ship1", &["echo", "second try"]));
    ops.wait_for("replies/ship1.CLICommand.log", "second try");
    // Distribution is a command like any other: ops may run commands, not send key sets.
    let out = steward(ops.data(), "ops", &["keys", "distribute", "ship1"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}"); // refused
    assert!(String::from_utf8_lossy(&out.stdout).contains("ops may not call TrustedKeys here"));
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
    // Set up right, it runs, and its control socket is for its owner and group only.
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
    while mode() != 0o660 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = mode();
    running.kill().unwrap();
    running.wait().unwrap();
    assert_eq!(mode, 0o660);
}

#[test]
fn a_reply_forged_for_a_node_whose_key_is_known_is_ignored() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    central.trust("ship1");
    // ship1 is not up yet; an intruder answers in its name, unsigned and self-signed.
    let raw = nats::connect(nats.address()).unwrap();
    let listen = raw.subscribe("ship1.CommandACK.CLICommand").unwrap();
    raw.flush().unwrap();
    central.append_inmsg(&command("ship1", &["echo", "real output"]));
    let msg = listen.next_timeout(Duration::from_secs(10)).unwrap();
    let id = serde_json::from_slice::<serde_json::Value>(&msg.data).unwrap()["id"].clone();
    let fake = serde_json::json!({"id": id, "fromNode": "ship1", "status": "ok", "exitCode": 0, "output": "fake output\n"})
        .to_string();
    let to = msg.reply.clone().unwrap();
    raw.publish(&to, &fake).unwrap();
    raw.publish_with_reply_or_headers(
        &to,
        None,
        Some(&signed_by("intruder", fake.as_bytes())),
        &fake,
    )
    .unwrap();
    raw.flush().unwrap();
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
        let reply = request(&raw, "ship1.CommandACK.CLICommand", None, &forged);
        refused(&reply, "must be signed");
    }
    central.wait_count("errors.log", "from central (id flood-", 20);
    std::thread::sleep(Duration::from_secs(2));
    let reported = central.read("errors.log").matches("(id flood-").count();
    let logged = ship1.log().matches("(id flood-").count();
    eprintln!("[refusal_flood] sent={sent} reported={reported} logged_on_ship1={logged}");
    assert_eq!(reported, 20, "refusal reports are limited to 20 a minute");
    assert_eq!(logged, sent, "every refusal is logged where it happened");
}
