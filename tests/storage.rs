//! When the disk fills: nothing lost. A node's data folder on a small tmpfs (root only: CI
//! runs as root; elsewhere these tests say they were skipped) is filled to the last byte
//! while commands and events are in flight, then freed; everything is counted.

mod common;
use common::{install_keys, text_log, NatsServer, Node, Tmpfs};
use std::time::{Duration, Instant};

/// Waits up to `limit` for `ok`.
fn wait(what: &str, limit: Duration, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_disk_on_central_loses_no_command_output_and_no_event() {
    let nats = NatsServer::start();
    let mut central = Node::prepare(&[], "central", &nats.address(), &[]);
    let Some(disk) = Tmpfs::mount(central.data(), "16m") else {
        eprintln!("[disk_full] skipped: mounting a tmpfs needs root");
        return;
    };
    install_keys(central.data(), "central");
    central.restart();
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

    // The disk fills up to the last byte.
    let filler = disk.fill();
    // ship1 comes: the commands run, their output comes back to a central that cannot
    // store it; and ship1's events arrive that central cannot log.
    let ship1 = Node::start("ship1", &nats.address(), &["--defaultMessageTTL=600"]);
    let events_text: String = (0..events)
        .map(|i| text_log("central", &format!("event-{i}\n")))
        .collect();
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
    std::thread::sleep(Duration::from_secs(5));
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
    let text: String = (0..late)
        .map(|i| text_log("ship1", &format!("late-{i}\n")))
        .collect();
    central.append_inmsg(&text);
    wait(
        "intake says the disk is full",
        Duration::from_secs(30),
        || central.metric("steward_disk_full") == 1.0,
    );
    std::thread::sleep(Duration::from_secs(1));
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
    central.wait_for("errors.log", "disk was full from");
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
    std::thread::sleep(Duration::from_secs(2));
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
