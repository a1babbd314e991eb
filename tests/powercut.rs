//! Power cuts, not only kill -9 (which keeps the page cache): a node's data folder on ext4
//! in a loop device (root only: CI runs as root; elsewhere these tests say they were
//! skipped) is shut down mid-stream without flushing its journal, so everything not yet
//! synced is gone, then mounted again and the node restarted. Everything is counted.

use crate::common;
use common::{install_keys, text_log, Ext4, NatsServer, Node};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Waits up to `limit` for `ok`.
fn wait(what: &str, limit: Duration, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Appends to inmsg.txt and fsyncs, as a careful operator's tool would: what the test
/// handed over is on disk, so whatever a cut loses is steward's.
fn append_durably(node: &Node, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.path("inmsg.txt"))
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
}

/// Cuts the power under `node` and starts it again; the canaries prove the cut was real.
fn cut_and_restart(disk: &Ext4, node: &mut Node) {
    let cut = disk.power_cut(node);
    assert!(
        cut.synced_kept && cut.unsynced_dropped,
        "not a real power cut: {cut:?}"
    );
    node.restart();
}

/// Commands `range` to `to`, each leaving `run-<i>` in `marks` (outside the cut disk) and
/// answering `output-<i>`; and events `range` to `to`, each `event-<i>`.
fn stream(to: &str, range: std::ops::Range<usize>, marks: &Path, events_each: usize) -> String {
    let mut text = String::new();
    for i in range {
        let shell = format!("echo run-{i} >> {}; echo output-{i}", marks.display());
        text.push_str(&format!(
            "[{{\"toNode\":\"{to}\",\"data\":[\"sh\",\"-c\",{shell:?}],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\"}}]\n"
        ));
        for j in 0..events_each {
            text.push_str(&text_log(to, &format!("event-{}\n", i * events_each + j)));
        }
    }
    text
}

/// Each cut came while its part's commands (`per_cut` of them) were still being answered.
fn mid_stream(answered_at_cuts: &[usize], per_cut: usize) {
    for (cut, answered) in answered_at_cuts.iter().enumerate() {
        assert!(
            *answered < (cut + 1) * per_cut,
            "cut {cut} came too late to test anything: {answered} answered"
        );
    }
}

/// How often each numbered `<label>-<i>` line occurs in `text`.
fn numbered(text: &str, label: &str) -> BTreeMap<usize, usize> {
    let mut m = BTreeMap::new();
    for l in text.lines() {
        if let Some(i) = l.strip_prefix(label).and_then(|n| n.parse().ok()) {
            *m.entry(i).or_insert(0) += 1;
        }
    }
    m
}

/// Numbers missing from `0..n`, and the ones that occur more than once.
fn missing_and_twice(m: &BTreeMap<usize, usize>, n: usize) -> (Vec<usize>, Vec<usize>) {
    let missing = (0..n).filter(|i| !m.contains_key(i)).collect();
    let twice = m.iter().filter(|(_, c)| **c > 1).map(|(i, _)| *i).collect();
    (missing, twice)
}

/// A reply file's text without the records a cut left in part (each marked so at the next
/// start, its message sent again): what is stored whole.
fn whole_records(text: &str) -> String {
    let mark = steward::resumed::CUT_SHORT;
    let mut pieces: Vec<&str> = text.split(mark).collect();
    let last = pieces.pop().unwrap_or("");
    let mut whole = String::new();
    for piece in pieces {
        let start = piece.rfind("\n=== ").map_or(0, |i| i + 1);
        whole.push_str(&piece[..start]);
    }
    whole.push_str(last);
    whole
}

/// How often each message id occurs in a reply file's `=== … id=<id> ` headers.
fn reply_ids(text: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with("=== ")) {
        if let Some(id) = l.split(" id=").nth(1).and_then(|r| r.split(' ').next()) {
            *m.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// message-log.txt's lines: how often each id is listed, and each id's data.
fn message_log(text: &str) -> (BTreeMap<String, usize>, BTreeMap<String, String>) {
    let (mut count, mut data) = (BTreeMap::new(), BTreeMap::new());
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| {
            panic!("message-log.txt holds a line that is not JSON ({e}): {l:?}")
        });
        let id = v["id"].as_str().unwrap().to_string();
        *count.entry(id.clone()).or_insert(0) += 1;
        data.insert(id, v["data"].to_string());
    }
    (count, data)
}

#[test]
fn power_cuts_on_the_sender_lose_nothing_and_store_nothing_twice() {
    let _one_at_a_time = common::serial();
    let nats = NatsServer::start();
    let mut central = Node::prepare(
        &[],
        "central",
        &nats.address(),
        &["--defaultMessageTimeout=2", "--defaultMessageRetries=30"],
    );
    let Some(disk) = Ext4::mount(central.data(), "256M") else {
        eprintln!("[powercut_sender] skipped: an ext4 loop mount needs root and mkfs.ext4");
        return;
    };
    install_keys(central.data(), "central");
    disk.sync();
    central.restart();
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let outside = tempfile::tempdir().unwrap();
    let marks = outside.path().join("runs");
    let (cuts, per_cut, events_each) = (4, 40, 25);
    let commands = cuts * per_cut;
    let events = commands * events_each;
    let outputs = |c: &Node| {
        whole_records(&c.read("replies/ship1.CLICommand.log"))
            .matches("\noutput-")
            .count()
    };
    let mut answered_at_cuts = Vec::new();
    for cut in 0..cuts {
        let range = cut * per_cut..(cut + 1) * per_cut;
        append_durably(
            &central,
            &stream("ship1", range.clone(), &marks, events_each),
        );
        // Mid-stream: some of this part's commands answered, not all.
        let at = range.start + 5 + 3 * cut;
        wait(
            "commands answered before the cut",
            Duration::from_secs(30),
            || outputs(&central) >= at,
        );
        answered_at_cuts.push(outputs(&central));
        cut_and_restart(&disk, &mut central);
    }
    wait("every output stored", Duration::from_secs(60), || {
        numbered(
            &whole_records(&central.read("replies/ship1.CLICommand.log")),
            "output-",
        )
        .len()
            >= commands
    });
    wait("every event logged", Duration::from_secs(60), || {
        numbered(&ship1.read("textlog/central.log"), "event-").len() >= events
    });
    // Anything sent twice has arrived by now, and been handled.
    common::settle(&central, &ship1, "CLICommand");
    let last_event = common::settle(&central, &ship1, "TextLogging");
    let runs = numbered(&std::fs::read_to_string(&marks).unwrap(), "run-");
    let stored = numbered(
        &whole_records(&central.read("replies/ship1.CLICommand.log")),
        "output-",
    );
    let logged = numbered(&ship1.read("textlog/central.log"), "event-");
    let mut event_replies = reply_ids(&whole_records(
        &central.read("replies/ship1.TextLogging.log"),
    ));
    event_replies.remove(&last_event);
    let command_replies = reply_ids(&whole_records(
        &central.read("replies/ship1.CLICommand.log"),
    ));
    let (listed, data) = message_log(&central.read("message-log.txt"));
    let failed = central.read("failed-messages.txt");
    // What the fixes did: resumed messages finished at once (listed before the cut), and
    // replies found already stored (the cut came between the reply and the listing).
    let log = central.log();
    let finished_at_once: usize = log
        .lines()
        .filter(|l| l.contains("were finished before the last stop"))
        .filter_map(|l| {
            let (_, n) = l.split_once(": ")?;
            n.split(' ').next()?.parse::<usize>().ok()
        })
        .sum();
    let found_stored: usize = log
        .lines()
        .filter(|l| l.contains("were stored before the last stop"))
        .filter_map(|l| {
            let (_, n) = l.split_once(": ")?;
            n.split(' ').next()?.parse::<usize>().ok()
        })
        .sum();
    let listed_twice = listed.values().filter(|c| **c > 1).count();
    let listed_ours = |label: &str| data.values().filter(|d| d.contains(label)).count();
    let (runs_missing, runs_twice) = missing_and_twice(&runs, commands);
    let (stored_missing, stored_twice) = missing_and_twice(&stored, commands);
    let (logged_missing, logged_twice) = missing_and_twice(&logged, events);
    let event_replies_twice = event_replies.values().filter(|c| **c > 1).count();
    let command_replies_twice = command_replies.values().filter(|c| **c > 1).count();
    eprintln!(
        "[powercut_sender] cuts={cuts} answered_at_cuts={answered_at_cuts:?} commands={commands} ran={} ran_twice={} outputs_stored={} outputs_twice={} command_replies_twice={command_replies_twice} events={events} events_logged={} events_logged_twice={} event_replies={} event_replies_twice={event_replies_twice} message_log_lines={} listed_commands={} listed_events={} listed_twice={listed_twice} failed_bytes={} resumed_finished_at_once={finished_at_once} replies_found_stored={found_stored}",
        runs.len(),
        runs_twice.len(),
        stored.len(),
        stored_twice.len(),
        logged.len(),
        logged_twice.len(),
        event_replies.len(),
        listed.values().sum::<usize>(),
        listed_ours("output-"),
        listed_ours("event-"),
        failed.len(),
    );
    mid_stream(&answered_at_cuts, per_cut);
    assert!(runs_missing.is_empty(), "never ran: {runs_missing:?}");
    assert!(runs_twice.is_empty(), "ran twice: {runs_twice:?}");
    assert!(
        stored_missing.is_empty(),
        "output never stored: {stored_missing:?}"
    );
    assert!(
        stored_twice.is_empty(),
        "output stored twice: {stored_twice:?}"
    );
    assert_eq!(command_replies_twice, 0, "command replies stored twice");
    assert!(
        logged_missing.is_empty(),
        "event never logged: {logged_missing:?}"
    );
    assert!(
        logged_twice.is_empty(),
        "event logged twice: {logged_twice:?}"
    );
    assert_eq!(event_replies.len(), events, "event replies stored");
    assert_eq!(event_replies_twice, 0, "event replies stored twice");
    assert_eq!(listed_twice, 0, "message-log.txt lists messages twice");
    assert_eq!(
        listed_ours("output-"),
        commands,
        "commands in message-log.txt"
    );
    assert_eq!(listed_ours("event-"), events, "events in message-log.txt");
    assert!(failed.is_empty(), "failed-messages.txt:\n{failed}");
    central.kill9();
    drop(disk);
}

#[test]
fn power_cuts_on_the_receiver_run_nothing_twice_and_log_each_event_at_most_once() {
    let _one_at_a_time = common::serial();
    let nats = NatsServer::start();
    let mut ship1 = Node::prepare(&[], "ship1", &nats.address(), &[]);
    let Some(disk) = Ext4::mount(ship1.data(), "256M") else {
        eprintln!("[powercut_receiver] skipped: an ext4 loop mount needs root and mkfs.ext4");
        return;
    };
    install_keys(ship1.data(), "ship1");
    disk.sync();
    ship1.restart();
    let central = Node::start(
        "central",
        &nats.address(),
        &["--defaultMessageTimeout=2", "--defaultMessageRetries=30"],
    );
    let outside = tempfile::tempdir().unwrap();
    let marks = outside.path().join("runs");
    let (cuts, per_cut, events_each) = (3, 40, 25);
    let commands = cuts * per_cut;
    let events = commands * events_each;
    let answered = |c: &Node| {
        whole_records(&c.read("replies/ship1.CLICommand.log"))
            .matches("=== ")
            .count()
    };
    let mut answered_at_cuts = Vec::new();
    for cut in 0..cuts {
        let range = cut * per_cut..(cut + 1) * per_cut;
        central.append_inmsg(&stream("ship1", range.clone(), &marks, events_each));
        let at = range.start + 5 + 3 * cut;
        wait(
            "commands answered before the cut",
            Duration::from_secs(30),
            || answered(&central) >= at,
        );
        answered_at_cuts.push(answered(&central));
        cut_and_restart(&disk, &mut ship1);
    }
    wait("every command answered", Duration::from_secs(60), || {
        answered(&central) >= commands
    });
    wait("every event answered", Duration::from_secs(60), || {
        central
            .read("replies/ship1.TextLogging.log")
            .matches("=== ")
            .count()
            >= events
    });
    // Anything sent twice has arrived by now, and been handled.
    common::settle(&central, &ship1, "CLICommand");
    common::settle(&central, &ship1, "TextLogging");
    let runs = numbered(&std::fs::read_to_string(&marks).unwrap(), "run-");
    let command_replies = whole_records(&central.read("replies/ship1.CLICommand.log"));
    let event_replies = whole_records(&central.read("replies/ship1.TextLogging.log"));
    let logged = numbered(&ship1.read("textlog/central.log"), "event-");
    let (_, runs_twice) = missing_and_twice(&runs, commands);
    let (_, logged_twice) = missing_and_twice(&logged, events);
    let commands_interrupted = command_replies.matches("interrupted by a restart").count();
    let events_interrupted = event_replies.matches("interrupted by a restart").count();
    let command_replies_twice = reply_ids(&command_replies)
        .values()
        .filter(|c| **c > 1)
        .count();
    let event_replies_twice = reply_ids(&event_replies)
        .values()
        .filter(|c| **c > 1)
        .count();
    eprintln!(
        "[powercut_receiver] cuts={cuts} answered_at_cuts={answered_at_cuts:?} commands={commands} ran={} ran_twice={} commands_interrupted={commands_interrupted} command_replies_twice={command_replies_twice} events={events} events_logged={} events_logged_twice={} events_interrupted={events_interrupted} event_replies_twice={event_replies_twice}",
        runs.len(),
        runs_twice.len(),
        logged.len(),
        logged_twice.len(),
    );
    assert!(runs_twice.is_empty(), "ran twice: {runs_twice:?}");
    assert!(
        logged_twice.is_empty(),
        "event logged twice: {logged_twice:?}"
    );
    // Each message ran, or was answered "interrupted" (it may have run before the cut):
    // never silently lost.
    assert!(
        runs.len() + commands_interrupted >= commands,
        "commands lost: ran {}, interrupted {commands_interrupted}, of {commands}",
        runs.len()
    );
    assert!(
        logged.len() + events_interrupted >= events,
        "events lost: logged {}, interrupted {events_interrupted}, of {events}",
        logged.len()
    );
    // Only what was running at a cut: a command, a batch of events.
    assert!(
        commands_interrupted <= cuts,
        "{commands_interrupted} interrupted"
    );
    assert!(
        events_interrupted <= cuts * steward::message::MAX_BATCH,
        "{events_interrupted} interrupted"
    );
    assert_eq!(command_replies_twice, 0);
    assert_eq!(event_replies_twice, 0);
    // What was answered "interrupted", and only that, is kept in failed-messages.txt.
    let kept = serde_json::Deserializer::from_str(&central.read("failed-messages.txt"))
        .into_iter::<Vec<serde_json::Value>>()
        .map(|array| array.unwrap().len())
        .sum::<usize>();
    assert_eq!(kept, commands_interrupted + events_interrupted);
    ship1.kill9();
    drop(disk);
}
