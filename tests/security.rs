//! The broker link: TLS (the broker's certificate and name checked against a CA), and
//! authentication by user and password, token and NKey, against real nats-servers; and the
//! shipped confined configuration, under which a node cannot read another node's commands.

use crate::common;
use common::raw::{signed_by, Raw};
use common::{command, NatsServer, Node};
use std::path::Path;
use std::time::Duration;

/// Over TLS a write that rustls's buffer could not take at once (the socket full for a
/// moment: the link slower than the client writes) failed at once ("failed to write whole
/// buffer"), where over plain TCP it waits for the socket: on a slow link a large reply, or
/// a few, failed every time it was sent, and the connection with it. It waits, within the
/// same bound as over TCP, for the link to take it.
#[test]
fn over_tls_messages_faster_than_a_slow_link_takes_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, ca) = tls_server(dir.path(), &["localhost", "127.0.0.1"]);
    let proxy = common::proxy::FaultProxy::slow_link(nats.port, 4 << 20);
    let conn = nats::Options::new()
        .add_root_certificate(&ca)
        .tls_required(true)
        .connect(proxy.address())
        .unwrap();
    // 8 MiB, written faster than the link's 4 MiB a second (and than the socket's buffers
    // hold on loopback, some 4 MiB).
    let payload = vec![b'x'; 256 * 1024];
    for i in 0..32 {
        conn.publish("big", &payload)
            .and_then(|()| conn.flush_written(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
    conn.flush_timeout(common::WAIT).unwrap();
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A CA, and a server certificate it signed for `names`; returns the CA's PEM path and the
/// server's certificate and key paths.
fn certificates(dir: &Path, names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "steward test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (
        write(dir, "ca.pem", &ca_cert.pem()),
        write(dir, "server.pem", &cert.pem()),
        write(dir, "server-key.pem", &key.serialize_pem()),
    )
}

fn tls_server(dir: &Path, names: &[&str]) -> (NatsServer, String) {
    let (ca, cert, key) = certificates(dir, names);
    let conf = write(
        dir,
        "tls.conf",
        &format!("tls {{ cert_file: \"{cert}\", key_file: \"{key}\" }}\n"),
    );
    (NatsServer::start_with(&["-c", &conf]), ca)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The node does not get connected: the broker has closed two more connections since
/// this was called (its tries, turned away), and it is still not connected.
fn stays_disconnected(nats: &NatsServer, node: &Node) {
    let closed = nats.closed_connections();
    common::wait_until("two connections refused", || {
        nats.closed_connections() >= closed + 2
    });
    assert_eq!(
        node.metric("steward_broker_connected"),
        0.0,
        "{} connected:\n{}",
        node.name,
        node.log()
    );
}

#[test]
fn over_tls_with_the_right_ca_commands_flow_and_without_it_nothing_connects() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, ca) = tls_server(dir.path(), &["localhost", "127.0.0.1"]);
    let tls = format!("--tlsCA={ca}");
    let _ship1 = Node::start("ship1", &nats.address(), &[&tls]);
    let central = Node::start("central", &nats.address(), &[&tls]);
    central.append_inmsg(&command("ship1", &["echo", "over tls"]));
    central.wait_for("replies/ship1.CLICommand.log", "over tls");
    assert!(central.log().contains("TLS"), "{}", central.log());
    // Without the CA the node cannot trust the broker, and does not talk to it.
    let plain = Node::start_unconnected("ship2", &nats.address(), &[]);
    stays_disconnected(&nats, &plain);
}

#[test]
fn a_broker_whose_certificate_names_another_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, ca) = tls_server(dir.path(), &["broker.example.org"]);
    let node = Node::start_unconnected("ship1", &nats.address(), &[&format!("--tlsCA={ca}")]);
    stays_disconnected(&nats, &node);
}

/// A broker that takes the user `steward` with the password `s3cret-Pa55` only.
fn password_broker(dir: &Path) -> NatsServer {
    let conf = write(
        dir,
        "auth.conf",
        "authorization { user: steward, password: \"s3cret-Pa55\" }\n",
    );
    NatsServer::start_with(&["-c", &conf])
}

#[test]
fn user_and_password_from_a_file_and_never_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let nats = password_broker(dir.path());
    let good = write(dir.path(), "good", "s3cret-Pa55\n");
    let bad = write(dir.path(), "bad", "guess\n");
    let auth = |f: &str| vec!["--user=steward".to_string(), format!("--passwordFile={f}")];
    let good_args = auth(&good);
    let _ship1 = Node::start("ship1", &nats.address(), &strs(&good_args));
    let central = Node::start("central", &nats.address(), &strs(&good_args));
    central.append_inmsg(&command("ship1", &["echo", "authenticated"]));
    central.wait_for("replies/ship1.CLICommand.log", "authenticated");
    assert!(
        !central.log().contains("s3cret-Pa55"),
        "the password was logged"
    );
    let bad_args = auth(&bad);
    let intruder = Node::start_unconnected("ship2", &nats.address(), &strs(&bad_args));
    stays_disconnected(&nats, &intruder);
    let none = Node::start_unconnected("ship3", &nats.address(), &[]);
    stays_disconnected(&nats, &none);
}

/// A password in the broker's address (`nats://user:password@host:port`, which the NATS
/// client takes) connects, is not written into the log, where the address is shown, and,
/// given in `STEWARD_BROKER_ADDRESS` (a unit's `Environment=`), is not handed on to the
/// commands the node runs, as `STEWARD_PASSWORD` is not.
#[test]
fn a_password_in_the_broker_address_is_never_in_the_log_nor_handed_to_commands() {
    let dir = tempfile::tempdir().unwrap();
    let nats = password_broker(dir.path());
    let url = format!("nats://steward:s3cret-Pa55@{}", nats.address());
    let variable = format!("STEWARD_BROKER_ADDRESS={url}");
    let ship1 = Node::start_under(
        &["env", &variable, "OTHER_VAR=still-there"],
        "ship1",
        &nats.address(),
        &[&format!("--brokerAddress={url}")],
    );
    let log = ship1.log();
    assert!(log.contains("connected to the broker"), "{log}");
    assert!(
        !log.contains("s3cret-Pa55"),
        "the password was logged:\n{log}"
    );
    let reply = run_for_central(
        &nats,
        dir.path(),
        "cat /proc/self/environ; echo; echo $OTHER_VAR",
    );
    assert!(
        !reply.contains("s3cret-Pa55"),
        "the password was handed on:\n{reply}"
    );
}

/// ship1's reply to central's `sh -c script`, central logged in to the password broker:
/// once it holds `still-there` (ship1 runs with `OTHER_VAR=still-there`).
fn run_for_central(nats: &NatsServer, dir: &std::path::Path, script: &str) -> String {
    let good = write(dir, "good", "s3cret-Pa55\n");
    let central = Node::start(
        "central",
        &nats.address(),
        &["--user=steward", &format!("--passwordFile={good}")],
    );
    central.append_inmsg(&command("ship1", &["sh", "-c", script]));
    central.wait_for("replies/ship1.CLICommand.log", "still-there")
}

/// A password given in the environment (`STEWARD_PASSWORD`, as a systemd `Environment=`
/// or a container's variable would) is the node's: a command it runs for a sender does not
/// inherit it, whatever the command prints.
#[test]
fn a_password_given_in_the_environment_is_not_handed_to_commands() {
    let dir = tempfile::tempdir().unwrap();
    let nats = password_broker(dir.path());
    let _ship1 = Node::start_under(
        &[
            "env",
            "STEWARD_PASSWORD=s3cret-Pa55",
            "OTHER_VAR=still-there",
        ],
        "ship1",
        &nats.address(),
        &["--user=steward"],
    );
    let reply = run_for_central(
        &nats,
        dir.path(),
        "echo \"[$STEWARD_PASSWORD] [$OTHER_VAR]\"; cat /proc/self/environ",
    );
    assert!(reply.contains("[] [still-there]"), "{reply}");
    assert!(
        !reply.contains("s3cret-Pa55"),
        "the password was handed on:\n{reply}"
    );
}

#[test]
fn a_token_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write(
        dir.path(),
        "token.conf",
        "authorization { token: \"t0ken-for-the-fleet\" }\n",
    );
    let nats = NatsServer::start_with(&["-c", &conf]);
    let token = format!(
        "--tokenFile={}",
        write(dir.path(), "token", "t0ken-for-the-fleet")
    );
    let _ship1 = Node::start("ship1", &nats.address(), &[&token]);
    let central = Node::start("central", &nats.address(), &[&token]);
    central.append_inmsg(&command("ship1", &["echo", "token ok"]));
    central.wait_for("replies/ship1.CLICommand.log", "token ok");
    let wrong = format!("--tokenFile={}", write(dir.path(), "wrong", "not-it"));
    stays_disconnected(
        &nats,
        &Node::start_unconnected("ship2", &nats.address(), &[&wrong]),
    );
}

#[test]
fn an_nkey_seed_file() {
    let dir = tempfile::tempdir().unwrap();
    let central_key = nkeys::KeyPair::new_user();
    let ship_key = nkeys::KeyPair::new_user();
    let conf = write(
        dir.path(),
        "nkey.conf",
        &format!(
            "authorization {{ users = [ {{ nkey: {} }}, {{ nkey: {} }} ] }}\n",
            central_key.public_key(),
            ship_key.public_key()
        ),
    );
    let nats = NatsServer::start_with(&["-c", &conf]);
    let seed = |name: &str, k: &nkeys::KeyPair| {
        format!(
            "--nkeySeedFile={}",
            write(dir.path(), name, &k.seed().unwrap())
        )
    };
    let _ship1 = Node::start("ship1", &nats.address(), &[&seed("ship.nk", &ship_key)]);
    let central = Node::start(
        "central",
        &nats.address(),
        &[&seed("central.nk", &central_key)],
    );
    central.append_inmsg(&command("ship1", &["echo", "nkey ok"]));
    central.wait_for("replies/ship1.CLICommand.log", "nkey ok");
    assert!(
        !central.log().contains(&central_key.seed().unwrap()),
        "the seed was logged"
    );
    let stranger = nkeys::KeyPair::new_user();
    stays_disconnected(
        &nats,
        &Node::start_unconnected("ship2", &nats.address(), &[&seed("stranger.nk", &stranger)]),
    );
}

/// URL-safe base64 without padding, as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A NATS JWT: `claims` about `subject`, issued and signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{name}-{subject}"), "iat": 1_700_000_000, "iss": issuer.public_key(),
        "name": name, "sub": subject, "nats": nats,
    });
    let body = format!("{header}.{}", base64url(claims.to_string().as_bytes()));
    let sig = issuer.sign(body.as_bytes()).unwrap();
    format!("{body}.{}", base64url(&sig))
}

/// A credentials file for a new user of `account`.
fn creds(account: &nkeys::KeyPair, name: &str) -> String {
    let user = nkeys::KeyPair::new_user();
    let token = jwt(
        account,
        &user.public_key(),
        name,
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    format!(
        "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    )
}

#[test]
fn a_credentials_file_under_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "fleet",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "steward",
        serde_json::json!({
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1},
            "type": "account", "version": 2,
        }),
    );
    let conf = write(
        dir.path(),
        "operator.conf",
        &format!(
            "operator: \"{operator_jwt}\"\nresolver: MEMORY\nresolver_preload: {{ {}: \"{account_jwt}\" }}\n",
            account.public_key()
        ),
    );
    let nats = NatsServer::start_with(&["-c", &conf]);
    let file = |name: &str, account: &nkeys::KeyPair| {
        format!(
            "--credsFile={}",
            write(dir.path(), name, &creds(account, name))
        )
    };
    let _ship1 = Node::start("ship1", &nats.address(), &[&file("ship1.creds", &account)]);
    let central = Node::start(
        "central",
        &nats.address(),
        &[&file("central.creds", &account)],
    );
    central.append_inmsg(&command("ship1", &["echo", "creds ok"]));
    central.wait_for("replies/ship1.CLICommand.log", "creds ok");
    // A user of an account this operator never signed does not get in.
    let stranger = nkeys::KeyPair::new_account();
    stays_disconnected(
        &nats,
        &Node::start_unconnected(
            "ship2",
            &nats.address(),
            &[&file("stranger.creds", &stranger)],
        ),
    );
}

#[test]
fn under_the_confined_config_a_node_cannot_read_another_nodes_commands() {
    let dir = tempfile::tempdir().unwrap();
    let conf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/nats-server-confined.conf"
    );
    let passwords = [
        ("CENTRAL_PASSWORD", "pw-central"),
        ("SHIP1_PASSWORD", "pw-ship1"),
        ("SHIP2_PASSWORD", "pw-ship2"),
    ];
    let nats = NatsServer::start_with_env(&["-c", conf], &passwords);
    let login = |user: &str, pw: &str| -> Vec<String> {
        vec![
            format!("--user={user}"),
            format!("--passwordFile={}", write(dir.path(), user, pw)),
        ]
    };
    let ship1 = Node::start("ship1", &nats.address(), &strs(&login("ship1", "pw-ship1")));
    let _ship2 = Node::start("ship2", &nats.address(), &strs(&login("ship2", "pw-ship2")));
    let central = Node::start(
        "central",
        &nats.address(),
        &strs(&login("central", "pw-central")),
    );
    // ship2's credentials, used by an eavesdropper on ship1's commands and central's replies.
    // (What the broker refuses it comes back as an error.)
    let (refusals_tx, refusals) = std::sync::mpsc::channel();
    let refusals_tx = std::sync::Mutex::new(refusals_tx);
    let spy = nats::Options::with_user_pass("ship2", "pw-ship2")
        .error_callback(move |e| {
            let _ = refusals_tx.lock().unwrap().send(e.to_string());
        })
        .connect(nats.address())
        .unwrap();
    let commands = spy.subscribe("ship1.>").unwrap();
    let replies = spy.subscribe("_INBOX.central.>").unwrap();
    spy.flush().unwrap();
    // The same subscription with ship1's own credentials does see them (the check can fail).
    let own = nats::Options::with_user_pass("ship1", "pw-ship1")
        .connect(nats.address())
        .unwrap();
    let own_commands = own.subscribe("ship1.>").unwrap();
    own.flush().unwrap();
    // Everything still works for the nodes themselves: a command, its reply, Hello.
    central.append_inmsg(&command("ship1", &["echo", "for ship1 only"]));
    central.wait_for("replies/ship1.CLICommand.log", "for ship1 only");
    central.wait_for("hello-nodes.json", "ship2");
    assert!(
        own_commands.next_timeout(common::WAIT).is_ok(),
        "ship1's own user should see its commands"
    );
    // The command and its reply passed the broker before central stored the reply: had
    // the eavesdropper been let see them, they would have come before this PONG.
    spy.flush().unwrap();
    assert!(
        commands.try_next().is_none(),
        "ship2's user read a command for ship1"
    );
    assert!(
        replies.try_next().is_none(),
        "ship2's user read a reply meant for central"
    );
    // And ship2's user may not send ship1 commands either: the broker refuses it.
    spy.publish("ship1.CommandACK.CLICommand", b"{}").unwrap();
    spy.flush().unwrap();
    // (Its subscriptions were refused before it, and the broker said so too.)
    while !refusals
        .recv_timeout(common::WAIT)
        .expect("the broker did not refuse ship2's user the publish")
        .contains("Permissions Violation for Publish")
    {}
    assert_eq!(
        ship1.metric("steward_messages_received_total{method=\"CLICommand\",outcome=\"refused\"}"),
        0.0
    );
}

#[test]
fn hostile_wire_messages_are_refused_without_crashing_anything() {
    let nats = NatsServer::start();
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let envelope = |from: &str, data: &str| {
        format!(
            "{{\"id\":\"x-1-{from}\",\"fromNode\":\"{from}\",\"accepted\":1,\"toNode\":\"ship1\",\"data\":[\"{data}\"],\"commandOrEvent\":\"EventACK\",\"method\":\"TextLogging\"}}"
        )
    };
    let subject = "ship1.EventACK.TextLogging";
    let hostile: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        b"{}".to_vec(),
        vec![0xff; 5000],
        envelope("../../../tmp/steward-escape", "escaped").into_bytes(),
        envelope("ship 2", "spaced").into_bytes(),
        envelope("ship2", &"y".repeat(300 * 1024)).into_bytes(),
        // A subject that does not match the content.
        envelope("ship2", "ok")
            .replace("EventACK", "EventNACK")
            .into_bytes(),
    ];
    for payload in &hostile {
        // Signed by ship2 even, where it could be: a verified sender's bad message is
        // still refused, and the unverifiable ones are answered with nothing.
        let h = signed_by("ship2", subject, Some("_INBOX.ship2.w"), payload);
        raw.send(subject, Some("_INBOX.ship2.w"), Some(&h), payload);
    }
    ship1.wait_refused("TextLogging", hostile.len());
    assert!(ship1.log().contains("does not match its subject"));
    assert!(raw.answers_seen("_INBOX.ship2.w").is_empty());
    assert!(ship1.is_running(), "ship1 died");
    assert!(
        !Path::new("/tmp/steward-escape.log").exists(),
        "a name escaped the data folder"
    );
    assert_eq!(
        ship1.metric("steward_messages_received_total{method=\"TextLogging\",outcome=\"refused\"}"),
        hostile.len() as f64
    );
    assert_eq!(ship1.metric("steward_process_restarts_total"), 0.0);
    // And it still works.
    let payload = envelope("ship2", "fine");
    let h = signed_by(
        "ship2",
        subject,
        Some("_INBOX.ship2.ok"),
        payload.as_bytes(),
    );
    let reply = raw
        .ask(
            subject,
            "_INBOX.ship2.ok",
            Some(&h),
            payload.as_bytes(),
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(String::from_utf8_lossy(&reply.data).contains("\"status\":\"ok\""));
    ship1.wait_for("textlog/ship2.log", "fine");
}

/// Sends `ops` (raw protocol lines) to the broker over a bare socket, as any client of the
/// broker can, and returns once the broker answered the PING after them: all were taken.
fn raw_to_broker(broker: &str, ops: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(broker).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "not a NATS server: {line}");
    let connect = "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1}\r\n";
    stream.write_all(connect.as_bytes()).unwrap();
    stream.write_all(ops).unwrap();
    stream.write_all(b"PING\r\n").unwrap();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the broker hung up"
        );
        assert!(!line.starts_with("-ERR"), "the broker refused: {line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

/// One HPUB operation: `headers` go to subscribers verbatim, whatever they hold.
fn hpub(subject: &str, headers: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut op = format!(
        "HPUB {subject} {} {}\r\n",
        headers.len(),
        headers.len() + payload.len()
    )
    .into_bytes();
    op.extend_from_slice(headers);
    op.extend_from_slice(payload);
    op.extend_from_slice(b"\r\n");
    op
}

#[test]
fn undecodable_messages_are_dropped_one_by_one_and_the_node_stays_connected() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    // What any client of the broker can make ship1 receive; the broker forwards subjects and
    // header blocks as published. The stock nats client failed the connection on each of
    // these; now each is dropped alone.
    let malformed_headers: [&[u8]; 6] = [
        b"NATS/1.0\r\nno colon here\r\n\r\n",
        b"NATS/1.0\r\nX-Bad: \xff\xfe\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Key: value\r\n\r\n",
        b"\r\n\r\n",
        b"NATS/1.0\r\n continued before any header\r\n\r\n",
        b"\xffNATS/1.0\r\n\r\n",
    ];
    let mut undecodable = Vec::new();
    for headers in malformed_headers.iter().cycle().take(50) {
        undecodable.extend(hpub("ship1.EventACK.TextLogging", headers, b"{\"x\":1}"));
    }
    for _ in 0..5 {
        undecodable.extend(b"PUB ship1.\xff\xfe.TextLogging 2\r\n{}\r\n");
        undecodable.extend(b"PUB ship1.EventACK.TextLogging _INBOX.\xff 2\r\n{}\r\n");
        undecodable.extend(b"HPUB ship1.\xff.TextLogging 12 14\r\nNATS/1.0\r\n\r\n{}\r\n");
    }
    // ship1 listens on its exact subjects (one per kind a method serves), so only the
    // messages on those reach it: the bad headers and the bad reply subject. (The bad
    // subjects matched its wildcard subscriptions of old, and were dropped alone too.)
    let dropped = 50 + 5;
    raw_to_broker(&nats.address(), &undecodable);
    // These decode (the stock client failed the connection on the last three too). The
    // first reaches steward, which refuses it like any other bad message; the others'
    // subjects are not ones ship1 listens on.
    let mut odd = hpub(
        "ship1.EventACK.TextLogging",
        b"NATS/1.0 9x9 garbage status\r\n\r\n",
        b"{}",
    );
    odd.extend("PUB ship1.a\u{a0}b.TextLogging 2\r\n{}\r\n".as_bytes());
    odd.extend(b"PUB ship1.a\x0cb.TextLogging 2\r\n{}\r\n");
    // A subject near the longest the broker takes (its PUB line limit is 4 KiB): the MSG
    // line made of it was longer than the stock client's 4096-byte line buffer.
    let long = format!("ship1.{}.TextLogging", "x".repeat(4072));
    odd.extend(format!("PUB {long} 2\r\n{{}}\r\n").as_bytes());
    raw_to_broker(&nats.address(), &odd);

    // A command sent after them all still runs, and its reply comes back.
    let central = Node::start("central", &nats.address(), &[]);
    central.append_inmsg(&command("ship1", &["echo", "still here"]));
    central.wait_for("replies/ship1.CLICommand.log", "still here");

    let log = ship1.log();
    assert!(!log.contains("disconnected from the broker"), "{log}");
    assert!(!log.contains("reconnected to the broker"), "{log}");
    assert_eq!(
        log.matches("connected to the broker at").count(),
        1,
        "{log}"
    );
    assert_eq!(ship1.metric("steward_broker_reconnects_total"), 0.0);
    assert_eq!(ship1.metric("steward_broker_connected"), 1.0);
    assert_eq!(
        ship1.metric("steward_broker_malformed_dropped_total"),
        dropped as f64,
        "{log}"
    );
    assert!(log.contains("malformed header block"), "{log}");
    assert!(log.contains("not UTF-8"), "{log}");
}

/// The control socket takes what this node signs: only the agent's user (and root) may use
/// it, even where the data folder and the socket itself were opened to others.
#[test]
fn another_user_cannot_use_the_control_socket() {
    use std::os::unix::fs::PermissionsExt;
    let id = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&id.stdout).trim() != "0" {
        eprintln!("[control_socket] not root: another user cannot be tried here");
        return;
    }
    let nats = NatsServer::start();
    let _ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let socket = central.path("steward.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket's mode");
    // Opened up by hand: the agent itself still refuses another user.
    for (path, mode) in [
        (central.data().to_path_buf(), 0o711),
        (socket.clone(), 0o666),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let ran = format!("{}/ran-by-nobody", central.data().display());
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_steward"))
        .arg(format!("--dataFolder={}", central.data().display()))
        .args(["send", "--to", "central", "--", "touch", &ran])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("refused"), "{said}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!Path::new(&ran).exists(), "another user's command ran");
    assert!(central
        .log()
        .contains("control socket: refused a client of user 65534"));
    // `steward status` is told so too (it said "no agent is running": the connection reset).
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_steward"))
        .arg(format!("--dataFolder={}", central.data().display()))
        .arg("status")
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.starts_with("steward: refused"), "{said}");
}
