//! `steward send` and `steward status`: exit codes and output through the agent's socket.

use crate::common;
use common::{steward, NatsServer, Node};
use std::process::Command;

fn wait_for_socket(node: &Node) {
    node.wait_until("", "had a socket", |_| node.path("steward.sock").exists());
}

/// A broker, ship1, and central with its control socket up.
fn central_and_ship1() -> (NatsServer, Node, Node) {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    wait_for_socket(&central);
    (nats, ship1, central)
}

#[test]
fn send_prints_the_output_and_exits_with_the_remote_status() {
    let (_nats, _ship1, central) = central_and_ship1();
    let out = steward(
        &central,
        &[
            "send",
            "--to",
            "ship1",
            "--",
            "sh",
            "-c",
            "echo from ship1; exit 0",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from ship1\n");
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("waiting for its reply") && progress.contains("attempt 1/"),
        "{progress}"
    );
    // A failing command: its exit status comes back.
    let out = steward(
        &central,
        &[
            "send",
            "--to",
            "ship1",
            "--",
            "sh",
            "-c",
            "echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "oops\n");
    // inmsg.txt keeps working beside the socket.
    central.append_inmsg(&common::command("ship1", &["echo", "via inmsg"]));
    central.wait_for("replies/ship1.CLICommand.log", "via inmsg");
}

#[test]
fn send_to_an_unreachable_node_says_so_and_exits_4() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    wait_for_socket(&central);
    let out = steward(
        &central,
        &[
            "send",
            "--to",
            "ship9",
            "--timeout",
            "1",
            "--retries",
            "1",
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("attempt 2/2") && err.contains("no responders on ship9"),
        "{err}"
    );
    central.wait_for("failed-messages.txt", "ship9");
}

#[test]
fn send_without_a_running_agent_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_steward"))
        .arg(format!("--dataFolder={}", dir.path().display()))
        .args(["send", "--to", "ship1", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no steward agent is running") && err.contains("steward.sock"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_steward"))
        .arg(format!("--dataFolder={}", dir.path().display()))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    // The data folder given after the subcommand: where it goes is said.
    let out = Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["status", &format!("--dataFolder={}", dir.path().display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unrecognized argument: --dataFolder")
            && err.contains("give it before the subcommand"),
        "{err}"
    );
}

#[test]
fn version_says_which_steward_this_is() {
    for flag in ["--version", "-version"] {
        let out = Command::new(env!("CARGO_BIN_EXE_steward"))
            .arg(flag)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(said, format!("steward {}\n", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn no_wait_queues_and_prints_the_id_and_bad_input_exits_2() {
    let (_nats, ship1, central) = central_and_ship1();
    let out = steward(
        &central,
        &[
            "send",
            "--to",
            "ship1",
            "--method",
            "TextLogging",
            "--no-wait",
            "--",
            "queued text",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("central-"), "{id}");
    ship1.wait_for("textlog/central.log", "queued text");
    let out = steward(&central, &["send", "--to", "ship 1", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad toNode"));
    // A command to run without one: bad usage here, not sent to be refused there.
    let accepted = "steward_messages_accepted_total{method=\"CLICommand\"}";
    let out = steward(&central, &["send", "--to", "ship1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no command to run"), "{err}");
    assert_eq!(central.metric(accepted), 0.0);
    // A method that needs no data still goes without.
    let out = steward(
        &central,
        &["send", "--to", "ship1", "--method", "PublicKey"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_socket_takes_inmsg_json_as_socat_would_send_it() {
    use std::io::{Read, Write};
    let (_nats, _ship1, central) = central_and_ship1();
    let mut s = std::os::unix::net::UnixStream::connect(central.path("steward.sock")).unwrap();
    s.write_all(common::command("ship1", &["echo", "via the socket"]).as_bytes())
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("\"queued\":true"), "{answer}");
    central.wait_for("replies/ship1.CLICommand.log", "via the socket");
}

#[test]
fn status_prints_the_process_table() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    wait_for_socket(&central);
    let out = steward(&central, &["status"]);
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8_lossy(&out.stdout);
    for row in [
        "node central",
        "inbox",
        "subscriber CLICommand",
        "control socket",
        "pending",
    ] {
        assert!(table.contains(row), "{row} missing:\n{table}");
    }
}

#[test]
fn clients_past_the_limit_are_told_busy_and_the_socket_recovers() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    wait_for_socket(&central);
    // Eight clients that connect and say nothing hold every place. (The socket takes
    // connections in the order they came: the ninth is taken after them.)
    let silent: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(central.path("steward.sock")).unwrap())
        .collect();
    let mut ninth = UnixStream::connect(central.path("steward.sock")).unwrap();
    ninth
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = ninth.read_to_string(&mut answer);
    assert!(answer.starts_with("busy"), "{answer:?}");
    // Once they leave, their places come back: the process table is served again.
    drop(silent);
    central.wait_until("", "served the process table again", |_| {
        let status = steward(&central, &["status"]);
        status.status.success() && String::from_utf8_lossy(&status.stdout).contains("node central")
    });
}

/// An agent too busy to serve `steward status` makes it fail, saying so: it printed the
/// agent's "busy" as the process table and exited 0, so a script (or a check that the
/// agent is up) took it for an answer.
#[test]
fn status_and_send_fail_when_the_agent_is_busy() {
    use std::os::unix::net::UnixStream;
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    wait_for_socket(&central);
    // Every place taken by a client that says nothing: connected until one is told the
    // agent is busy. A place the last client before them held may come free after that
    // (its answer still being written): then they are topped up, and `status` tried again.
    let socket = central.path("steward.sock");
    let mut silent: Vec<UnixStream> = Vec::new();
    let mut fill = || loop {
        let mut client = UnixStream::connect(&socket).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        match std::io::Read::read(&mut client, &mut [0; 64]) {
            Ok(n) if n > 0 => return,
            _ => silent.push(client),
        }
    };
    fill();
    let mut while_busy = |args: &[&str]| {
        let mut ran = steward(&central, args);
        for _ in 0..5 {
            if ran.status.code() != Some(0) {
                break;
            }
            fill();
            ran = steward(&central, args);
        }
        ran
    };
    let status = while_busy(&["status"]);
    let (out, err) = (
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr),
    );
    assert_eq!(
        status.status.code(),
        Some(1),
        "stdout {out:?}, stderr {err:?}"
    );
    assert!(
        out.is_empty() && err.starts_with("steward: busy"),
        "{out:?} {err:?}"
    );
    let send = while_busy(&["send", "--no-wait", "--to", "ship1", "--", "true"]);
    let err = String::from_utf8_lossy(&send.stderr);
    assert_eq!(send.status.code(), Some(1), "{err:?}");
    assert!(
        err.starts_with("steward: busy") && !err.contains("expected value"),
        "{err:?}"
    );
}

#[test]
fn an_interrupted_send_gives_its_place_back() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    wait_for_socket(&central);
    // Eight `steward send`s to a node that is not there, each waiting for a reply that
    // could take ten minutes, then interrupted (Ctrl-C, a closed terminal, kill -9 here).
    let mut sends: Vec<_> = (0..8)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_steward"))
                .arg(format!("--dataFolder={}", central.data().display()))
                .args(["send", "--to", "ship9", "--timeout", "600", "--", "true"])
                .env_remove("STEWARD_CONFIG")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for send in &mut sends {
        // Waiting: its message is queued (the first on its attempt, the rest behind it).
        let mut err = BufReader::new(send.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("waiting for its reply") {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "send ended early");
        }
    }
    for send in &mut sends {
        send.kill().unwrap();
        send.wait().unwrap();
    }
    // Their places are given back now, not when their messages end.
    let gone = std::time::Instant::now();
    central.wait_until("", "served the process table again", |_| {
        let status = steward(&central, &["status"]);
        status.status.success() && String::from_utf8_lossy(&status.stdout).contains("node central")
    });
    assert!(
        gone.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        gone.elapsed()
    );
    // And the messages themselves still go on: queued, not dropped with their clients.
    assert_eq!(
        central.metric("steward_messages_accepted_total{method=\"CLICommand\"}"),
        8.0
    );
}

#[test]
fn keys_name_the_node_as_its_agent_runs_whatever_the_host() {
    let nats = NatsServer::start();
    // Started as the README's quick start does: `--node=central` on its command line.
    let central = Node::start("central", &nats.address(), &[]);
    wait_for_socket(&central);
    let out = steward(&central, &["keys", "show"]);
    assert_eq!(out.status.code(), Some(0));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        shown.trim(),
        format!("central {}", common::key_of("central")),
        "named by its host: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("steward keys trust central "));
}

#[test]
fn clients_that_never_read_their_answer_give_their_places_back() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    wait_for_socket(&central);
    // Eight scripts that send a request whose answer is larger than the socket's buffer
    // (a rejected value is echoed back whole), then stop reading (stopped with Ctrl-Z,
    // stuck on a full pipe): the agent's writes of their answers wait for them.
    let garbage = "x".repeat(1 << 20);
    let stuck: Vec<UnixStream> = (0..8)
        .map(|_| {
            let mut s = UnixStream::connect(central.path("steward.sock")).unwrap();
            s.write_all(garbage.as_bytes()).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s
        })
        .collect();
    // Their places come back within the answer's deadline: the process table is served
    // again while they are still connected.
    let started = std::time::Instant::now();
    central.wait_until("", "served the process table again", |_| {
        let status = steward(&central, &["status"]);
        status.status.success() && String::from_utf8_lossy(&status.stdout).contains("node central")
    });
    eprintln!("[stuck clients] status again after {:?}", started.elapsed());
    drop(stuck);
}

#[test]
fn a_request_past_the_limit_is_refused_whole_not_cut_silently() {
    use std::io::{Read, Write};
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    wait_for_socket(&central);
    // A script's batch past 16 MiB (here mostly blank, then a message): the agent stopped
    // reading at 16 MiB and answered for what it had read, saying nothing of the rest.
    let mut request = " ".repeat(16 << 20);
    request.push_str(&common::command("central", &["true"]));
    let mut s = std::os::unix::net::UnixStream::connect(central.path("steward.sock")).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(request.as_bytes());
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    sending.join().unwrap();
    assert!(
        answer.contains("\"queued\":true") || answer.contains("16 MiB"),
        "neither queued nor refused, nothing said: {answer:?}"
    );
}

#[test]
fn an_agent_gone_before_it_said_queued_is_never_taken_for_queued() {
    // A socket whose "agent" reads the request and closes without a word, as one that
    // stopped (or failed at its journal's fsync) mid-request: whether the message was
    // journaled is unknown, and neither 0 (queued) nor 75 (send again) may be said.
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(dir.path().join("steward.sock")).unwrap();
    let agent = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut client, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let _ = client.read_to_end(&mut request);
        }
    });
    for wait in [false, true] {
        let mut args = vec!["send", "--to", "ship1"];
        if !wait {
            args.push("--no-wait");
        }
        args.extend(["--", "true"]);
        let out = Command::new(env!("CARGO_BIN_EXE_steward"))
            .arg(format!("--dataFolder={}", dir.path().display()))
            .args(&args)
            .env_remove("STEWARD_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "wait={wait}: {err}");
        assert!(err.contains("whether it was is unknown"), "{err}");
        assert!(out.stdout.is_empty(), "printed {:?}", out.stdout);
    }
    agent.join().unwrap();
}
