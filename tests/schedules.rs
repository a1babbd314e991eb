//! Schedules: a message that runs on its receiver every interval until its total has
//! passed, each run's result a message back to central; kept across a kill -9, listed and
//! stopped remotely.

use crate::common;
use common::{NatsServer, Node};
use std::time::Duration;

/// Schedules `argv` on ship1 every `every` seconds for `total`, results appended to
/// central's `s/ship1/<file>`; returns the request's id.
fn schedule(central: &Node, argv: &str, every: u64, total: u64, file: &str) -> String {
    let ended = central.send_and_wait(&format!(
        r#"[{{"toNode":"ship1","data":{argv},"commandOrEvent":"CommandACK","method":"CLICommand","schedule":[{every},{total}],"replyMethod":"FileAppend","directory":"s","fileName":"{file}"}}]"#
    ));
    assert_eq!(ended[0].1, "acked", "{ended:?}");
    ended[0].0.clone()
}

/// Waits until ship1 no longer runs schedule `id` and has sent everything.
fn wait_over(ship1: &Node, id: &str) {
    ship1.wait_status("showed the schedule over and everything sent", |t| {
        !t.contains(&format!("schedule {id}"))
            && t.lines()
                .next()
                .is_some_and(|l| l.contains("journal: 0 pending"))
    });
    ship1.wait_idle();
}

/// The times (seconds) the runs wrote.
fn times(text: &str) -> Vec<f64> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn a_schedule_runs_every_interval_until_its_total_and_then_never() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let id = schedule(&central, r#"["date","+%s.%N"]"#, 2, 7, "date.txt");
    let table = ship1.status();
    assert!(table.contains(&format!("schedule {id}")), "{table}");
    wait_over(&ship1, &id);
    let runs = times(&central.read("s/ship1/date.txt"));
    eprintln!("[schedule] every=2 total=7 runs={}", runs.len());
    assert_eq!(runs.len(), 4, "at 0, 2, 4 and 6 s: {runs:?}");
    // On the grid: each run an interval after the last, give or take a run started late
    // on a loaded machine (the next is then sooner, the grid unmoved).
    for pair in runs.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((1.0..3.0).contains(&gap), "{runs:?}");
    }
    let span = runs[3] - runs[0];
    assert!((5.5..7.5).contains(&span), "{runs:?}");
    // Over: gone from ship1's table, so nothing more can come.
}

#[test]
fn a_schedule_survives_a_kill_without_a_burst_or_a_second_copy() {
    let nats = NatsServer::start();
    let mut ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let id = schedule(&central, r#"["date","+%s.%N"]"#, 2, 12, "date.txt");
    central.wait_until("s/ship1/date.txt", "held two runs", |t| times(t).len() >= 2);
    ship1.kill9();
    // Down for more than an interval: the runs it missed are not caught up.
    std::thread::sleep(Duration::from_secs(3));
    ship1.restart();
    assert!(ship1.status().contains(&format!("schedule {id}")));
    wait_over(&ship1, &id);
    let runs = times(&central.read("s/ship1/date.txt"));
    eprintln!(
        "[schedule] every=2 total=12 killed for 3s runs={}",
        runs.len()
    );
    assert!(
        (4..=6).contains(&runs.len()),
        "7 at most, less what the kill skipped: {runs:?}"
    );
    for pair in runs.windows(2) {
        assert!(pair[1] - pair[0] > 1.5, "a burst or a duplicate: {runs:?}");
    }
    let span = runs[runs.len() - 1] - runs[0];
    assert!(span <= 12.5, "ran past its total: {runs:?}");
}

#[test]
fn op_process_list_shows_a_schedule_and_op_process_stop_ends_it() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    let id = schedule(&central, r#"["echo","tick"]"#, 1, 600, "tick.txt");
    let ended = central.send_and_wait(
        r#"[{"toNode":"ship1","data":[],"commandOrEvent":"CommandACK","method":"OpProcessList"}]"#,
    );
    assert_eq!(ended[0].1, "acked");
    let table = central.read("replies/ship1.OpProcessList.log");
    assert!(table.contains(&format!("schedule {id}")), "{table}");
    assert!(
        table.contains("CLICommand from central every 1s"),
        "{table}"
    );
    let ended = central.send_and_wait(&format!(
        r#"[{{"toNode":"ship1","data":["schedule {id}"],"commandOrEvent":"CommandACK","method":"OpProcessStop"}}]"#
    ));
    assert_eq!(ended[0].1, "acked");
    let stopped = central.read("replies/ship1.OpProcessStop.log");
    assert!(stopped.contains("stopped for good"), "{stopped}");
    // Gone from the table (so no run can start) and from what a restart reads.
    wait_over(&ship1, &id);
    assert!(!ship1.read("schedules.json").contains(&id));
}

/// Schedules whose runs hold every handler place (a commander's long command every second)
/// cannot lock out the commands that put the node right: OpProcessList and OpProcessStop
/// have places of their own, and stop them.
#[test]
fn schedules_holding_every_handler_cannot_lock_out_the_commands_that_stop_them() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &["--maxConcurrentHandlers=2"]);
    let central = Node::start("central", &nats.address(), &[]);
    // Each run after the first (answered at once) holds its place for five minutes (its
    // methodTimeout), past the test.
    let marks = tempfile::tempdir().unwrap();
    let long = |file: &str| {
        let mark = marks.path().join(file);
        let shell = format!("[ -e {0} ] && sleep 300; touch {0}", mark.display());
        let ended = central.send_and_wait(&format!(
            r#"[{{"toNode":"ship1","data":["sh","-c",{shell:?}],"commandOrEvent":"CommandACK","method":"CLICommand","methodTimeout":300,"timeout":400,"schedule":[1,600],"replyMethod":"FileAppend","directory":"s","fileName":"{file}"}}]"#
        ));
        assert_eq!(ended[0].1, "acked", "{ended:?}");
        ended[0].0.clone()
    };
    let ids = [long("a.txt"), long("b.txt")];
    ship1.wait_status("showed every handler busy", |t| {
        t.lines()
            .next()
            .is_some_and(|l| l.ends_with("handlers busy: 2"))
    });
    let started = std::time::Instant::now();
    // Several, one after another: each leaves work for its subscriber's next turn.
    for _ in 0..3 {
        let ended = central.send_and_wait(
            r#"[{"toNode":"ship1","data":[],"commandOrEvent":"CommandACK","method":"OpProcessList"}]"#,
        );
        assert_eq!(ended[0].1, "acked", "{ended:?}");
    }
    for id in &ids {
        let ended = central.send_and_wait(&format!(
            r#"[{{"toNode":"ship1","data":["schedule {id}"],"commandOrEvent":"CommandACK","method":"OpProcessStop"}}]"#
        ));
        assert_eq!(ended[0].1, "acked", "{ended:?}");
    }
    let took = started.elapsed();
    eprintln!(
        "[schedules_lockout] list and two stops answered in {took:?} while both places were held"
    );
    assert!(
        took < Duration::from_secs(30),
        "waited for the long runs to end: {took:?}"
    );
    let table = central.read("replies/ship1.OpProcessList.log");
    assert!(table.contains(&format!("schedule {}", ids[0])), "{table}");
    let stopped = central.read("replies/ship1.OpProcessStop.log");
    assert_eq!(stopped.matches("stopped for good").count(), 2, "{stopped}");
    assert!(!ship1.status().contains("schedule "), "{}", ship1.status());
}

/// A run due while every handler place is held waits for one; a stop meanwhile holds: the
/// run does not start once a place is free ("stopped for good" was answered, and it ran
/// once more, minutes later; so did a revoked sender's).
#[test]
fn a_run_waiting_for_a_handler_place_does_not_start_after_its_schedule_is_stopped() {
    let nats = NatsServer::start();
    let ship1 = Node::start("ship1", &nats.address(), &["--maxConcurrentHandlers=1"]);
    let central = Node::start("central", &nats.address(), &[]);
    let tick = schedule(&central, r#"["echo","tick"]"#, 1, 600, "tick.txt");
    // Its runs after the first (answered at once) hold the one place for 20 s.
    let marks = tempfile::tempdir().unwrap();
    let mark = marks.path().join("long");
    let shell = format!("[ -e {0} ] && sleep 20; touch {0}", mark.display());
    let ended = central.send_and_wait(&format!(
        r#"[{{"toNode":"ship1","data":["sh","-c",{shell:?}],"commandOrEvent":"CommandACK","method":"CLICommand","methodTimeout":60,"timeout":90,"schedule":[1,600],"replyMethod":"None"}}]"#
    ));
    assert_eq!(ended[0].1, "acked", "{ended:?}");
    let long = ended[0].0.clone();
    ship1.wait_status("showed the place held", |t| {
        t.lines()
            .next()
            .is_some_and(|l| l.ends_with("handlers busy: 1"))
    });
    // The tick's next run is due, and waits for the place.
    std::thread::sleep(Duration::from_secs(3));
    for id in [&tick, &long] {
        let ended = central.send_and_wait(&format!(
            r#"[{{"toNode":"ship1","data":["schedule {id}"],"commandOrEvent":"CommandACK","method":"OpProcessStop"}}]"#
        ));
        assert_eq!(ended[0].1, "acked", "{ended:?}");
    }
    // Every result of a run made before the place was held delivered.
    ship1.wait_metric(
        "delivered the runs' results so far",
        |s| s.metric("steward_journal_pending_messages"),
        |v| v == 0.0,
    );
    let before = central.read("s/ship1/tick.txt").matches("tick").count();
    // The long run ends; then the place is free.
    ship1.wait_status("showed the place free", |t| {
        t.lines()
            .next()
            .is_some_and(|l| l.ends_with("handlers busy: 0"))
    });
    std::thread::sleep(Duration::from_secs(3));
    ship1.wait_idle();
    let after = central.read("s/ship1/tick.txt").matches("tick").count();
    assert_eq!(after, before, "a run of a stopped schedule started");
}

#[test]
fn a_startup_file_sends_boot_at_each_start_and_starts_one_schedule_not_one_per_start() {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let mut ship1 = Node::prepare(&[], "ship1", &nats.address(), &[]);
    std::fs::create_dir(ship1.path("startup")).unwrap();
    std::fs::write(
        ship1.path("startup/10-boot.JSON"),
        r#"[{"toNode":"central","data":["boot\n"],"commandOrEvent":"EventACK","method":"TextLogging"}]"#,
    )
    .unwrap();
    std::fs::write(
        ship1.path("startup/20-tick.json"),
        r#"[{"toNode":"local","fromNode":"central","data":["echo","tick"],"commandOrEvent":"CommandACK","method":"CLICommand","schedule":[1,600],"replyMethod":"TextLogging"}]"#,
    )
    .unwrap();
    // Anyone may write this one: refused, and said so.
    let open = ship1.path("startup/30-open.json");
    std::fs::write(
        &open,
        r#"[{"toNode":"central","data":["from an open file\n"],"commandOrEvent":"EventACK","method":"TextLogging"}]"#,
    )
    .unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    ship1.restart();
    central.wait_count("textlog/ship1.log", "boot", 1);
    central.wait_count("textlog/ship1.log", "tick", 2);
    let errors = central.wait_for("errors.log", "30-open.json");
    assert!(errors.contains("chmod go-w"), "{errors}");
    // Again at the next start; the schedule replaced, not doubled.
    ship1.terminate();
    ship1.restart();
    central.wait_count("textlog/ship1.log", "boot", 2);
    let table = ship1.status();
    assert_eq!(table.matches("schedule ").count(), 1, "{table}");
    assert!(!central
        .read("textlog/ship1.log")
        .contains("from an open file"));
}

/// A ship restarted while its link is down: each start's startup messages wait in its
/// journal. Once it is back, a one-shot boot command runs once, not once per start.
#[test]
fn startup_messages_of_starts_while_the_broker_is_away_go_once_when_it_is_back() {
    let mut nats = NatsServer::start();
    let (central, mut ship1, ran) = ship_with_a_boot_file(&mut nats);
    let starts = 4;
    for start in 1..=starts {
        let earlier = ship1.log().len();
        ship1.restart();
        // Its startup messages journaled (or found waiting) before it stops: said by this
        // start (the log holds the earlier starts' lines, and each start after the first
        // also says "resuming N unfinished message(s) from the journal" before it looks).
        ship1.wait_until("", "looked at its startup folder", |_| {
            let log = ship1.log();
            let this_start = log.get(earlier..).unwrap_or_default();
            this_start.contains("still wait to be delivered: not sent again")
                || this_start
                    .lines()
                    .any(|l| l.contains(": sent ") && l.contains(" message(s) from "))
        });
        if start < starts {
            ship1.terminate();
        }
    }
    nats.restart();
    booted_once(&central, &ship1, &ran);
    // A start after they were delivered sends them again, as every start does.
    ship1.terminate();
    ship1.restart();
    central.wait_count("textlog/ship1.log", "boot", 2);
}

/// A start killed while it writes down which startup messages it journaled (here held
/// there: `startup-sent.json`'s temporary file is a FIFO no one reads) has journaled none
/// of them. The next start sends them once; a start used to journal them first, and the
/// next one, not finding them listed, sent them again.
#[test]
fn a_start_killed_while_listing_its_startup_messages_sends_them_once() {
    let mut nats = NatsServer::start();
    let (central, mut ship1, ran) = ship_with_a_boot_file(&mut nats);
    let fifo = ship1.path("startup-sent.json.tmp");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    ship1.restart();
    common::wait_until("ship1 held opening the list's temporary file", || {
        held_opening_a_fifo(ship1.pid())
    });
    ship1.kill9();
    std::fs::remove_file(&fifo).unwrap();
    ship1.restart();
    ship1.wait_until("", "sent its startup messages", |_| {
        ship1.log().contains("message(s) from")
    });
    nats.restart();
    booted_once(&central, &ship1, &ran);
}

/// central, and ship1 stopped, its broker away, with a startup file: a line for central's
/// log, and a boot command that writes a line to the file returned.
fn ship_with_a_boot_file(nats: &mut NatsServer) -> (Node, Node, std::path::PathBuf) {
    let central = Node::start("central", &nats.address(), &[]);
    nats.stop();
    let mut ship1 = Node::start_unconnected(
        "ship1",
        &nats.address(),
        &["--allowCommandsFrom=central,ship1"],
    );
    ship1.terminate();
    let ran = ship1.path("ran.txt");
    std::fs::create_dir(ship1.path("startup")).unwrap();
    std::fs::write(
        ship1.path("startup/boot.json"),
        format!(
            r#"[{{"toNode":"central","data":["boot\n"],"commandOrEvent":"EventACK","method":"TextLogging"}},
                {{"toNode":"local","data":["sh","-c","echo ran >> {}"],"commandOrEvent":"CommandACK","method":"CLICommand"}}]"#,
            ran.display()
        ),
    )
    .unwrap();
    (central, ship1, ran)
}

/// Once the broker is back and ship1 has sent everything: central logged the boot line
/// once, and ship1 ran its boot command once.
fn booted_once(central: &Node, ship1: &Node, ran: &std::path::Path) {
    central.wait_count("textlog/ship1.log", "boot", 1);
    ship1.wait_until("", "ran its boot command", |_| {
        std::fs::read_to_string(ran).is_ok_and(|t| t.contains("ran"))
    });
    ship1.wait_status("sent everything", |t| {
        t.lines()
            .next()
            .is_some_and(|l| l.contains("journal: 0 pending"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(central.read("textlog/ship1.log").matches("boot").count(), 1);
    let runs = std::fs::read_to_string(ran).unwrap().matches("ran").count();
    assert_eq!(runs, 1);
}

/// Whether a thread of process `pid` waits in open(2) for a FIFO's other end.
fn held_opening_a_fifo(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|t| {
        std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w == "wait_for_partner")
    })
}
