//! Node's own tests: handler threads, and watched messages.

use super::*;
use std::sync::atomic::Ordering;
use std::thread::ThreadId;

/// Runs a job that reports its thread and waits for `go`.
fn job(h: &Handlers, stop: &Receiver<()>, go: &Receiver<()>) -> Receiver<ThreadId> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let go = go.clone();
    assert!(h.run(stop, "test", move || {
        tx.send(std::thread::current().id()).unwrap();
        let _ = go.recv();
    }));
    rx
}

/// A node in `dir` whose broker is never reached: enough to accept and watch messages.
fn offline_node(dir: &std::path::Path) -> Node {
    offline_node_named(dir, "ship1")
}

/// As [`offline_node`], named `name` (methods' tests: a source and a destination).
pub(crate) fn offline_node_named(dir: &std::path::Path, name: &str) -> Node {
    use argh::FromArgs;
    let folder = format!("--dataFolder={}", dir.display());
    let node = format!("--node={name}");
    let args = [
        node.as_str(),
        "--brokerAddress=127.0.0.1:1",
        folder.as_str(),
    ];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let args = crate::config::normalize_args(&args).expect("flags in the seed's form");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let flags = crate::config::Flags::from_args(&["steward"], &args).expect("valid flags");
    let config = Config::load(&flags, &|_| None).expect("a valid configuration");
    let data = DataFolder::new(dir.to_path_buf());
    crate::files::create_dirs(dir).unwrap();
    let (journal, _) = Journal::open(&data.journal_dir()).unwrap();
    let received = Received::open(&data.journal_dir()).unwrap();
    let identity = Identity::load_or_create(&data.keys()).unwrap();
    let trusted = Trusted::open(&data.keys(), name, identity.public_key()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let broker = Broker::connect(
        name,
        &config.brokers,
        config.security.clone(),
        config.broker_ping_interval,
        metrics.clone(),
    );
    let (supervisor, _) = crossbeam_channel::unbounded();
    Node::new(
        config,
        broker,
        metrics,
        journal,
        received,
        (identity, trusted),
        supervisor,
    )
}

/// The race behind a `steward send` that waited forever: a busy publisher took the
/// message and finished it between the journal write and the watcher going in. Here
/// the watchers are held back while the message is accepted; as long as they are, no
/// publisher may be able to take the message from the journal.
#[test]
fn a_watched_message_cannot_be_taken_before_its_watcher_is_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(offline_node(dir.path()));
    let message = Message::new("ship2", Kind::EventNack, "TextLogging", vec!["hi".into()]);
    let lane = message.subject();
    let held = node.watchers.lock().unwrap();
    let n = node.clone();
    let accepting = std::thread::spawn(move || n.accept_watched(vec![message]).unwrap());
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        // What a publisher sees when it looks for work: the journal, if it is free.
        if let Ok(journal) = node.journal.try_lock() {
            assert_eq!(
                journal.lane_pending(&lane),
                0,
                "a publisher could take the message before its watcher was in place"
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(held);
    let mut watched = accepting.join().unwrap();
    let (id, progress) = watched.pop().unwrap();
    // As the publisher does: take it, deliver it, say how it ended.
    let taken = node.journal().take(&lane, 10).unwrap();
    assert_eq!(taken.len(), 1);
    let finished = Progress::Finished {
        outcome: "published".into(),
        reply: None,
        why: None,
    };
    node.progress(&id, finished);
    let heard = progress.recv_timeout(Duration::from_secs(5));
    assert!(
        matches!(heard, Ok(Progress::Finished { .. })),
        "the watcher heard {heard:?}"
    );
}

#[test]
fn handler_threads_are_bounded_reused_and_let_go() {
    let h = Handlers::lingering(2, Duration::from_millis(200));
    let (_stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
    let (go_tx, go) = crossbeam_channel::unbounded();
    // Two at once; a third waits for a place.
    let (a, b) = (job(&h, &stop, &go), job(&h, &stop, &go));
    let (a, b) = (a.recv().unwrap(), b.recv().unwrap());
    assert_ne!(a, b);
    assert_eq!(h.in_use(), 2);
    let h = Arc::new(h);
    let (h2, stop2, go2) = (h.clone(), stop.clone(), go.clone());
    let third = std::thread::spawn(move || job(&h2, &stop2, &go2).recv().unwrap());
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !third.is_finished(),
        "a third job ran past the limit of two"
    );
    go_tx.send(()).unwrap();
    let c = third.join().unwrap();
    assert!(c == a || c == b, "the freed thread took the third job");
    for _ in 0..2 {
        go_tx.send(()).unwrap();
    }
    assert!(h.wait_idle(Instant::now() + Duration::from_secs(5)));
    // One after another, the same threads serve.
    for _ in 0..5 {
        let t = job(&h, &stop, &go).recv().unwrap();
        assert!(t == a || t == b);
        go_tx.send(()).unwrap();
        assert!(h.wait_idle(Instant::now() + Duration::from_secs(5)));
    }
    // Idle past their time, they are gone.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(h.threads.idle.load(Ordering::Acquire), 0);
    let t = job(&h, &stop, &go).recv().unwrap();
    assert!(t != a && t != b, "a new thread after the idle ones left");
    go_tx.send(()).unwrap();
}

/// Long commands or schedules holding every place cannot lock out the methods that put a
/// node right: they have [`crate::node::RESERVED`] places of their own, and take an
/// ordinary one first when one is free.
#[test]
fn the_methods_that_put_a_node_right_have_places_of_their_own() {
    let h = Arc::new(Handlers::lingering(2, Duration::from_millis(200)));
    let (_stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
    let (go_tx, go) = crossbeam_channel::unbounded();
    let right = |h: &Handlers| {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let go = go.clone();
        assert!(h.run_to_put_right(&stop, "test", move || {
            tx.send(()).unwrap();
            let _ = go.recv();
        }));
        rx
    };
    // Both ordinary places held.
    let held = [job(&h, &stop, &go), job(&h, &stop, &go)];
    for r in &held {
        r.recv().unwrap();
    }
    // Another ordinary job waits.
    let (h2, stop2, go2) = (h.clone(), stop.clone(), go.clone());
    let ordinary = std::thread::spawn(move || job(&h2, &stop2, &go2).recv().unwrap());
    std::thread::sleep(Duration::from_millis(50));
    assert!(!ordinary.is_finished(), "ran past the limit");
    // Those that put it right run, RESERVED of them.
    let reserved: Vec<_> = (0..crate::node::RESERVED).map(|_| right(&h)).collect();
    for r in &reserved {
        r.recv_timeout(Duration::from_secs(5))
            .expect("a method that puts the node right waited for a place");
    }
    assert_eq!(h.in_use(), 2 + crate::node::RESERVED);
    // Past those, one waits too.
    let h3 = h.clone();
    let (tx, waiting) = crossbeam_channel::bounded(1);
    let (stop3, go3) = (stop.clone(), go.clone());
    std::thread::spawn(move || {
        h3.run_to_put_right(&stop3, "test", move || {
            tx.send(()).unwrap();
            let _ = go3.recv();
        })
    });
    assert!(waiting.recv_timeout(Duration::from_millis(100)).is_err());
    for _ in 0..2 + crate::node::RESERVED + 2 {
        go_tx.send(()).unwrap();
    }
    ordinary.join().unwrap();
    waiting.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(h.wait_idle(Instant::now() + Duration::from_secs(5)));
    // With places free, an ordinary one is taken: the reserve stays whole.
    let r = right(&h);
    r.recv().unwrap();
    assert_eq!(h.in_use(), 1);
    go_tx.send(()).unwrap();
}

/// A finish waits up to half a second to be made durable; every hold of the journal
/// meanwhile (each take, each finish) once woke the supervisor again for nothing.
#[test]
fn the_supervisor_hears_of_upkeep_once_until_it_has_done_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = offline_node(dir.path());
    let upkeep = node.journal_upkeep();
    let message =
        |i: usize| Message::new("ship2", Kind::EventNack, "TextLogging", vec![i.to_string()]);
    node.accept((0..3).map(message).collect(), None).unwrap();
    let lane = message(0).subject();
    let taken = node.journal().take(&lane, 10).unwrap();
    // As the supervisor does: all durable, the words drained, upkeep done.
    node.journal().sync().unwrap();
    while upkeep.try_recv().is_ok() {}
    node.journal_upkept();
    drop(node.journal());
    assert!(upkeep.try_recv().is_err(), "nothing waits: no word");
    node.finish(&lane, &[taken[0].seq]);
    assert!(upkeep.try_recv().is_ok(), "a finish not durable: one word");
    node.finish(&lane, &[taken[1].seq]);
    for _ in 0..5 {
        drop(node.journal());
    }
    assert!(upkeep.try_recv().is_err(), "asked already: no second word");
    // The supervisor's upkeep, done only in part: the next hold says so again.
    node.journal_upkept();
    drop(node.journal());
    assert!(
        upkeep.try_recv().is_ok(),
        "upkeep left after the supervisor's: a word"
    );
    // Done in full: nothing more is said.
    node.journal().sync().unwrap();
    while upkeep.try_recv().is_ok() {}
    node.journal_upkept();
    node.finish(&lane, &[]);
    drop(node.journal());
    assert!(upkeep.try_recv().is_err(), "nothing waits: no word");
    // And the next finish is heard again.
    node.finish(&lane, &[taken[2].seq]);
    assert!(upkeep.try_recv().is_ok(), "a new finish: a word");
}

/// A report quoting a stranger's megabyte, or a record that could not be handed out, is a
/// message that can be sent: a report of one that could not be was a larger one, for ever.
#[test]
fn reports_are_messages_that_can_be_sent_and_what_they_cut_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let node = offline_node(dir.path());
    let huge = format!(
        "{}\n[forged] {}",
        "x".repeat(300 << 10),
        "\u{1b}".repeat(100_000)
    );
    node.report_refusal(huge.clone(), false);
    node.report_unreadable(huge.clone());
    let lane = crate::subject::Subject::new("central", Kind::EventAck, "ErrorLog").unwrap();
    let mut journal = node.journal();
    let taken = journal.take(&lane, 10).unwrap();
    assert!(journal.take_unreadable().is_empty());
    assert_eq!(taken.len(), 2);
    for e in &taken {
        let text = &e.envelope.message.data[0];
        assert!(
            text.len() <= report::MAX_REPORT_BYTES + 64,
            "{}",
            text.len()
        );
        assert!(!text.contains('\n') && !text.contains('\u{1b}'));
        assert!(e.envelope.message.check_limits().is_ok());
    }
    let kept = std::fs::read_to_string(node.data.unreadable()).unwrap();
    assert!(kept.contains(&huge), "the whole record is kept");
    assert!(taken[1].envelope.message.data[0].contains("unreadable-messages.txt"));
}
