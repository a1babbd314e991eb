//! Crash consistency: thousands of seeded schedules of appends, takes, finishes, syncs and
//! compactions, with write, fsync, truncate, rename and folder-sync errors, and process
//! crashes and power cuts at any step (out of the blue in one step in twenty for the
//! journal, one in fourteen for the received log, and after every failure that leaves the
//! file unusable), run through the journal and the received log on the simulated disk
//! ([`super::sim`]). After every recovery, a model of what was promised is checked against
//! what came back:
//!
//! - every message whose append returned Ok is still there, or was finished;
//! - nothing whose finish was made durable comes back;
//! - no inbox line is taken in twice (under a second id it would run twice), and none is
//!   taken past the inbox offset the journal recovered;
//! - each lane's messages come back in order;
//! - on a receiver, an id recorded as started is never new again (it would run twice), and
//!   a reply made durable is the reply given for it ever after.
//!
//! A failure names its seed: `STEWARD_SIM_SEED=<seed> cargo test --lib crash` replays it.
//! `STEWARD_SIM_SCHEDULES=<n>` runs more.

use super::sim::{Counts, Faults, Rng, SimDisk};
use super::Storage;
use crate::journal::{Entry, Journal, Recovery};
use crate::message::{Kind, Message, Reply, Status, MAX_BATCH};
use crate::received::{Received, Seen};
use crate::subject::Subject;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

const LANES: [&str; 3] = ["ship1", "ship2", "ship3"];
const INBOX: &str = "inmsg.taking-1";
const DIR: &str = "/data/journal";

fn schedules() -> Vec<u64> {
    if let Ok(seed) = std::env::var("STEWARD_SIM_SEED") {
        return vec![seed.parse().expect("STEWARD_SIM_SEED is a number")];
    }
    let n = std::env::var("STEWARD_SIM_SCHEDULES").map_or(2_000, |n| {
        n.parse().expect("STEWARD_SIM_SCHEDULES is a number")
    });
    (1..=n).collect()
}

/// Faults for a schedule: none in some, a few kinds at random rates in the others.
fn faults(rng: &mut Rng) -> Faults {
    if rng.chance(250) {
        return Faults::default();
    }
    let mut rate = |max: u64| {
        if rng.chance(500) {
            rng.below(max) as u32
        } else {
            0
        }
    };
    Faults {
        write: rate(80),
        fsync: rate(40),
        rename: rate(200),
        set_len: rate(60),
        sync_dir: rate(100),
    }
}

fn lane(i: usize) -> Subject {
    message(i).subject()
}

fn message(line: usize) -> Message {
    Message::new(
        LANES[line % LANES.len()],
        Kind::CommandAck,
        "CLICommand",
        vec![format!("line {line}")],
    )
}

fn line_of(e: &Entry) -> usize {
    e.envelope.message.data[0][5..]
        .parse()
        .expect("a line number")
}

/// What the journal has promised, as far as the callers could know.
#[derive(Default)]
struct Promised {
    /// The id each inbox line was taken in under.
    line_id: HashMap<usize, String>,
    /// How far the inbox has been taken, as acknowledged (every line before is journaled).
    inbox: usize,
    /// Appended (acknowledged) and not finished.
    open: HashSet<String>,
    /// Handed out, per lane, in order, and whether finished (but not yet written as such).
    handed: HashMap<String, VecDeque<(String, bool)>>,
    /// Finished and written, not yet synced: may come back after a power cut.
    written: HashSet<String>,
    /// Finished durably: must never come back.
    durable: HashSet<String>,
}

impl Promised {
    fn took(&mut self, seed: u64, e: &Entry) {
        let line = line_of(e);
        let id = &e.envelope.id;
        match self.line_id.get(&line) {
            Some(other) if other != id => {
                panic!("seed {seed}: line {line} taken in twice, as {other} and as {id}")
            }
            Some(_) => {}
            None => {
                self.line_id.insert(line, id.clone());
            }
        }
    }

    /// A lane's finished prefix is written as such (a `DoneThrough`).
    fn settle(&mut self, lane: &str) {
        let handed = self.handed.entry(lane.to_string()).or_default();
        while let Some((_, true)) = handed.front() {
            let (id, _) = handed.pop_front().expect("checked");
            self.written.insert(id);
        }
    }

    /// A sync returned Ok: every finish written so far is durable.
    fn synced(&mut self) {
        let written: Vec<String> = self.written.drain().collect();
        self.durable.extend(written);
    }

    fn settle_all(&mut self) {
        for l in LANES {
            self.settle(&message_lane(l));
        }
    }
}

fn message_lane(to: &str) -> String {
    let i = LANES.iter().position(|l| *l == to).expect("a lane");
    lane(i).to_string()
}

struct JournalRun {
    seed: u64,
    rng: Rng,
    disk: SimDisk,
    storage: Arc<dyn Storage>,
    promised: Promised,
    recoveries: u64,
}

impl JournalRun {
    fn open(&mut self) -> Journal {
        let mut tries = 0;
        loop {
            match Journal::open_on(self.storage.clone(), Path::new(DIR)) {
                Ok((mut journal, recovery)) => {
                    self.recover(&mut journal, recovery);
                    return journal;
                }
                Err(_) => {
                    // Opening failed (an injected error): the agent exits, systemd tries
                    // again.
                    tries += 1;
                    if tries == 20 {
                        self.disk.set_faults(Faults::default());
                    }
                    self.disk.crash();
                }
            }
        }
    }

    /// Checks what came back against what was promised, and takes it all in hand.
    fn recover(&mut self, journal: &mut Journal, recovery: Recovery) {
        let seed = self.seed;
        self.recoveries += 1;
        // No disk damage is simulated: whatever was passed over was a torn write's.
        assert!(
            recovery.passed_over.is_empty(),
            "seed {seed}: a torn write taken for the disk's damage: {:?}",
            recovery.passed_over
        );
        let p = &mut self.promised;
        let offset = recovery.inbox_offsets.get(INBOX).copied().unwrap_or(0) as usize;
        assert!(
            offset >= p.inbox,
            "seed {seed}: the inbox offset went back from {} to {offset}: acknowledged lines would be taken again",
            p.inbox
        );
        p.inbox = offset;
        let mut back = HashSet::new();
        p.handed.clear();
        for i in 0..LANES.len() {
            let lane = lane(i);
            let mut last = 0;
            loop {
                let taken = journal.take(&lane, MAX_BATCH).expect("reads do not fail");
                if taken.is_empty() {
                    break;
                }
                for e in taken {
                    let id = e.envelope.id.clone();
                    assert!(e.seq > last, "seed {seed}: {lane} out of order");
                    last = e.seq;
                    assert!(
                        !p.durable.contains(&id),
                        "seed {seed}: {id}, finished durably, came back"
                    );
                    assert!(
                        line_of(&e) < offset,
                        "seed {seed}: line {} is journaled past the inbox offset {offset}",
                        line_of(&e)
                    );
                    assert!(back.insert(id.clone()), "seed {seed}: {id} came back twice");
                    p.took(seed, &e);
                    p.handed
                        .entry(lane.to_string())
                        .or_default()
                        .push_back((id, false));
                }
            }
        }
        for id in &p.open {
            assert!(
                back.contains(id),
                "seed {seed}: {id} was acknowledged as journaled and is lost"
            );
        }
        // What did not come back is finished for good (recovery synced what it read).
        let finished: Vec<String> = p.written.drain().collect();
        for id in finished {
            if !back.contains(&id) {
                p.durable.insert(id);
            }
        }
        p.open = back;
    }

    /// One schedule: steps until `steps` are done, restarting whenever the journal failed.
    fn run(&mut self, steps: usize) {
        let mut journal = self.open();
        for _ in 0..steps {
            if self.step(&mut journal).is_err() {
                // Fail-stop: the agent exits; systemd starts it again. Or the power went.
                if self.rng.chance(500) {
                    self.disk.power_cut();
                } else {
                    self.disk.crash();
                }
                drop(journal);
                journal = self.open();
            }
        }
        // The end: no more faults, a power cut, and everything is finished.
        self.disk.set_faults(Faults::default());
        self.disk.power_cut();
        drop(journal);
        let mut journal = self.open();
        for (lane, handed) in &self.promised.handed {
            let lane = Subject::parse(lane).expect("a lane");
            let seqs: Vec<u64> = handed.iter().map(|(id, _)| seq_of(id)).collect();
            journal.finish(&lane, &seqs).expect("no faults now");
        }
        journal.sync().expect("no faults now");
        self.disk.power_cut();
        drop(journal);
        let (journal, recovery) =
            Journal::open_on(self.storage.clone(), Path::new(DIR)).expect("no faults now");
        assert_eq!(recovery.pending, 0, "seed {}: all finished", self.seed);
        let p = &self.promised;
        let offset = recovery.inbox_offsets.get(INBOX).copied().unwrap_or(0) as usize;
        assert_eq!(offset, p.inbox, "seed {}", self.seed);
        for line in 0..offset {
            assert!(
                p.line_id.contains_key(&line),
                "seed {}: line {line} was never taken in, yet the inbox is past it",
                self.seed
            );
        }
        assert_eq!(journal.pending_count(), 0);
    }

    /// One random step; Err when the journal has become unusable.
    fn step(&mut self, journal: &mut Journal) -> Result<(), ()> {
        match self.rng.below(100) {
            0..=24 => self.append(journal),
            25..=32 => self.append_two_committed_out_of_order(journal),
            33..=52 => self.take(journal),
            53..=77 => self.finish(journal),
            78..=87 => self.sync(journal),
            88..=91 => {
                if journal.maintain().is_err() {
                    unusable(journal)?;
                }
                if journal.settled() {
                    self.promised.settle_all();
                }
                Ok(())
            }
            92..=94 => match journal.compact() {
                Err(_) => unusable(journal),
                Ok(()) => Ok(()),
            },
            _ => Err(()), // a crash or a power cut, out of the blue
        }
    }

    /// The inbox journals its next few lines.
    fn append(&mut self, journal: &mut Journal) -> Result<(), ()> {
        let n = 1 + self.rng.below(4) as usize;
        let first = self.promised.inbox;
        let lines: Vec<Message> = (first..first + n).map(message).collect();
        match journal.append("central", lines, Some((INBOX, (first + n) as u64))) {
            Ok(entries) => self.appended(&entries),
            Err(_) => unusable(journal)?,
        }
        Ok(())
    }

    /// Two batches in flight, the later synced and committed first: as two appenders that
    /// fsync without the journal's lock.
    fn append_two_committed_out_of_order(&mut self, journal: &mut Journal) -> Result<(), ()> {
        let first = self.promised.inbox;
        let a = journal.write(
            "central",
            vec![message(first)],
            Some((INBOX, first as u64 + 1)),
        );
        let Ok(a) = a else { return unusable(journal) };
        let b = journal.write(
            "central",
            vec![message(first + 1)],
            Some((INBOX, first as u64 + 2)),
        );
        let Ok(b) = b else {
            // As the agent does: the first batch is still synced and committed.
            let synced = a.sync();
            journal.commit(&a, synced).map_err(|_| ())?;
            self.appended(&a.entries);
            return unusable(journal);
        };
        let synced = b.sync();
        if journal.commit(&b, synced).is_err() {
            return unusable(journal);
        }
        if self.rng.chance(300) {
            // Meanwhile the supervisor's tick: a sync and a compaction, which replaces the
            // file the first batch's fsync is for.
            if let Ok(Some(ticket)) = journal.sync_ticket() {
                let synced = ticket.sync();
                journal.synced_ticket(&ticket, synced).map_err(|_| ())?;
                self.promised.synced();
            }
            if journal.compact().is_err() {
                unusable(journal)?;
            }
        }
        // An error on a journal still usable is the agent's "try again": the inbox takes
        // the same lines again (which must then not be there already).
        let synced = a.sync();
        if journal.commit(&a, synced).is_err() {
            return unusable(journal);
        }
        self.appended(&a.entries);
        self.appended(&b.entries);
        Ok(())
    }

    /// A lane's publisher takes its next few messages.
    fn take(&mut self, journal: &mut Journal) -> Result<(), ()> {
        let lane = lane(self.rng.below(LANES.len() as u64) as usize);
        let max = 1 + self.rng.below(8) as usize;
        match journal.take(&lane, max) {
            Ok(taken) => {
                let handed = self.promised.handed.entry(lane.to_string()).or_default();
                for e in taken {
                    handed.push_back((e.envelope.id.clone(), false));
                }
            }
            Err(_) => unusable(journal)?,
        }
        Ok(())
    }

    /// Some of a lane's messages in flight finish, in any order.
    fn finish(&mut self, journal: &mut Journal) -> Result<(), ()> {
        let lane = lane(self.rng.below(LANES.len() as u64) as usize);
        let key = lane.to_string();
        let handed = self.promised.handed.entry(key.clone()).or_default();
        let mut ids = Vec::new();
        for (id, finished) in handed.iter_mut() {
            if !*finished && self.rng.chance(600) {
                *finished = true;
                ids.push(id.clone());
            }
        }
        let seqs: Vec<u64> = ids.iter().map(|id| seq_of(id)).collect();
        for id in &ids {
            self.promised.open.remove(id);
        }
        match journal.finish(&lane, &seqs) {
            Ok(()) => self.promised.settle(&key),
            Err(_) => unusable(journal)?,
        }
        Ok(())
    }

    /// The supervisor's sync, without the journal's lock.
    fn sync(&mut self, journal: &mut Journal) -> Result<(), ()> {
        match journal.sync_ticket() {
            Ok(Some(ticket)) => {
                let synced = ticket.sync();
                journal.synced_ticket(&ticket, synced).map_err(|_| ())?;
                self.promised.synced();
            }
            Ok(None) => self.promised.synced(),
            Err(_) => unusable(journal)?,
        }
        Ok(())
    }

    fn appended(&mut self, entries: &[Entry]) {
        for e in entries {
            self.promised.took(self.seed, e);
            self.promised.open.insert(e.envelope.id.clone());
            self.promised.inbox = self.promised.inbox.max(line_of(e) + 1);
        }
    }
}

/// Err if `journal` has become unusable (the agent would stop), Ok if it can go on.
fn unusable(journal: &Journal) -> Result<(), ()> {
    match journal.unusable() {
        Some(_) => Err(()),
        None => Ok(()),
    }
}

/// A message's sequence number: ids carry it (`…-<seq>-<random>`).
fn seq_of(id: &str) -> u64 {
    let mut parts = id.rsplit('-');
    parts.next();
    parts
        .next()
        .expect("a sequence number")
        .parse()
        .expect("a number")
}

fn report(what: &str, schedules: usize, steps: u64, counts: Counts, recoveries: u64) {
    eprintln!(
        "[crash simulation] {what}: {schedules} schedules, {steps} steps, {} power cuts and {} process crashes checked ({recoveries} recoveries), {} injected errors, {} writes, {} fsyncs",
        counts.power_cuts, counts.crashes, counts.failed, counts.writes, counts.fsyncs
    );
}

#[test]
fn the_journal_keeps_every_promise_through_crashes_power_cuts_and_disk_errors() {
    let seeds = schedules();
    let mut total = Counts::default();
    let (mut steps, mut recoveries) = (0, 0);
    for &seed in &seeds {
        let disk = SimDisk::new(seed);
        let mut rng = Rng::new(seed ^ 0x5eed);
        disk.set_faults(faults(&mut rng));
        let n = 40 + rng.below(160) as usize;
        let mut run = JournalRun {
            seed,
            rng,
            storage: Arc::new(disk.clone()),
            disk: disk.clone(),
            promised: Promised::default(),
            recoveries: 0,
        };
        run.run(n);
        steps += n as u64;
        recoveries += run.recoveries;
        total.add(disk.counts());
    }
    report("journal", seeds.len(), steps, total, recoveries);
    assert!(seeds.len() == 1 || total.power_cuts > seeds.len() as u64);
}

/// What the received log has promised.
#[derive(Default)]
struct Handled {
    /// Recorded as started, durably: never new again.
    started: HashSet<String>,
    /// Whose `begin` failed after its record may have been written: new or interrupted.
    maybe_started: HashSet<String>,
    /// Running in this process (no reply recorded yet).
    running: HashSet<String>,
    /// Replies written (not synced), durable, and written before a crash (there or not),
    /// by id: the output.
    written: HashMap<String, String>,
    durable: HashMap<String, String>,
    maybe_done: HashMap<String, String>,
}

impl Handled {
    fn knows(&self, id: &str) -> bool {
        self.started.contains(id)
            || self.maybe_started.contains(id)
            || self.running.contains(id)
            || self.written.contains_key(id)
            || self.durable.contains_key(id)
            || self.maybe_done.contains_key(id)
    }

    /// The process is gone: what ran is interrupted, what was written may have survived.
    fn restarted(&mut self) {
        self.started.extend(self.running.drain());
        self.maybe_done.extend(self.written.drain());
    }
}

fn reply(id: &str) -> Reply {
    Reply {
        id: id.to_string(),
        from_node: "ship1".into(),
        to_node: "central".into(),
        status: Status::Ok,
        exit_code: Some(0),
        output: format!("output of {id}"),
        batch_max: None,
        digest_sig: false,
        interrupted: false,
    }
}

fn open_received(disk: &SimDisk, storage: &Arc<dyn Storage>) -> Received {
    let mut tries = 0;
    loop {
        match Received::open_on(storage.clone(), Path::new(DIR), 10_000, 10_000) {
            Ok(r) => return r,
            Err(_) => {
                tries += 1;
                if tries == 20 {
                    disk.set_faults(Faults::default());
                }
                disk.crash();
            }
        }
    }
}

/// Checks one `begin` answer against what was promised.
fn check_seen(seed: u64, h: &mut Handled, id: &str, seen: &Seen) {
    let written = h
        .durable
        .get(id)
        .or(h.written.get(id))
        .or(h.maybe_done.get(id));
    if let Some(output) = written {
        match seen {
            Seen::Done(r) => assert_eq!(&r.output, output, "seed {seed}: {id}'s reply changed"),
            other if h.durable.contains_key(id) => {
                panic!("seed {seed}: {id} has a durable reply, yet is {other:?}")
            }
            // Written, not synced, and the power went: interrupted (never new).
            Seen::Interrupted if h.maybe_done.contains_key(id) => {}
            other => panic!("seed {seed}: {id}: {other:?}"),
        }
        return;
    }
    if h.running.contains(id) {
        assert_eq!(seen, &Seen::Running, "seed {seed}: {id} is running here");
        return;
    }
    if h.started.contains(id) {
        assert!(
            matches!(seen, Seen::Interrupted),
            "seed {seed}: {id} was started durably and never answered, yet is {seen:?}"
        );
        return;
    }
    if h.maybe_started.contains(id) {
        assert!(
            matches!(seen, Seen::New | Seen::Interrupted),
            "seed {seed}: {id}: {seen:?}"
        );
        return;
    }
    assert_eq!(seen, &Seen::New, "seed {seed}: {id} was never seen");
}

/// One schedule of the received log, and what it has promised so far.
struct ReceivedRun {
    seed: u64,
    rng: Rng,
    handled: Handled,
    /// The next new message id is `m<next_id>`.
    next_id: u64,
}

impl ReceivedRun {
    /// One random step; true when the log has become unusable (or a crash comes out of the
    /// blue).
    fn step(&mut self, received: &Received) -> bool {
        match self.rng.below(100) {
            0..=39 => self.begin_batch(received),
            40..=64 => self.record_replies(received),
            65..=84 => match received.sync() {
                Ok(()) => {
                    self.handled.durable.extend(self.handled.written.drain());
                    false
                }
                Err(_) => received.unusable().is_some(),
            },
            85..=92 => match received.compact_now() {
                Ok(()) => {
                    self.handled.durable.extend(self.handled.written.drain());
                    false
                }
                Err(_) => received.unusable().is_some(),
            },
            _ => true,
        }
    }

    /// A batch arrives: new ids, and retries of old ones.
    fn begin_batch(&mut self, received: &Received) -> bool {
        let (seed, h) = (self.seed, &mut self.handled);
        let n = 1 + self.rng.below(3);
        let mut ids = Vec::new();
        for _ in 0..n {
            if self.next_id > 0 && self.rng.chance(400) {
                ids.push(format!("m{}", self.rng.below(self.next_id)));
            } else {
                ids.push(format!("m{}", self.next_id));
                self.next_id += 1;
            }
        }
        ids.dedup();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        // A batch naming a running id (or one id twice) waits, whole: nothing started.
        let mut in_batch = HashSet::new();
        let busy = ids
            .iter()
            .any(|id| h.running.contains(id) || !in_batch.insert(id));
        // Now and then as a method that runs an interrupted message again (a copy's chunk).
        let again = self.rng.chance(300);
        // On one of two lanes, kept apart through compactions and restarts (a retry finds
        // its id whichever lane holds it). Nothing is forgotten at these sizes: what the
        // lanes do past their limits is `received`'s own tests'.
        let lane = ["EventACK.TextLogging", "CommandACK.CLICommand"][self.rng.below(2) as usize];
        match received.begin_batch("central", lane, &refs, again) {
            Ok(seen) if busy => {
                assert!(
                    seen.iter().all(|s| *s == Seen::Running),
                    "seed {seed}: a batch naming a running id was taken: {ids:?} {seen:?}"
                );
                false
            }
            Ok(seen) => {
                for (id, seen) in ids.iter().zip(&seen) {
                    if again && *seen == Seen::New && h.started.contains(id) {
                        // Interrupted, and run again: running from now.
                        assert!(!h.written.contains_key(id) && !h.durable.contains_key(id));
                        h.running.insert(id.clone());
                        continue;
                    }
                    check_seen(seed, h, id, seen);
                    if *seen == Seen::New {
                        h.maybe_started.remove(id);
                        h.started.insert(id.clone());
                        h.running.insert(id.clone());
                    }
                    // Answered as interrupted: running until that answer is recorded.
                    if *seen == Seen::Interrupted {
                        h.running.insert(id.clone());
                    }
                }
                false
            }
            Err(_) => {
                // Whichever were new may or may not be recorded: not run.
                for id in &ids {
                    if !h.knows(id) {
                        h.maybe_started.insert(id.clone());
                    }
                }
                received.unusable().is_some()
            }
        }
    }

    /// Some of the running messages finish, their replies recorded together.
    fn record_replies(&mut self, received: &Received) -> bool {
        let h = &mut self.handled;
        let running: Vec<String> = h.running.iter().cloned().collect();
        let mut done: Vec<String> = running
            .into_iter()
            .filter(|_| self.rng.chance(500))
            .collect();
        done.sort();
        let replies: Vec<Reply> = done.iter().map(|id| reply(id)).collect();
        match received.record(&replies.iter().collect::<Vec<_>>()) {
            Ok(()) => {
                for r in replies {
                    h.running.remove(&r.id);
                    h.written.insert(r.id.clone(), r.output);
                }
                false
            }
            Err(_) if received.unusable().is_some() => {
                // Part of the write may be there, whole replies of it.
                for r in replies {
                    h.maybe_done.insert(r.id.clone(), r.output);
                }
                true
            }
            Err(_) => {
                // Cut back: the handler sends them unrecorded and gives them up, as
                // interrupted (their `Started` records are durable).
                let ids: Vec<&str> = done.iter().map(String::as_str).collect();
                received.abandon("central", &ids);
                for id in &done {
                    h.running.remove(id);
                }
                false
            }
        }
    }
}

fn received_schedule(seed: u64, steps: usize) -> (Counts, u64) {
    let disk = SimDisk::new(seed);
    let mut rng = Rng::new(seed ^ 0xface);
    disk.set_faults(faults(&mut rng));
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    let mut run = ReceivedRun {
        seed,
        rng,
        handled: Handled::default(),
        next_id: 0,
    };
    let mut received = open_received(&disk, &storage);
    let mut recoveries = 1;
    for _ in 0..steps {
        if run.step(&received) {
            if run.rng.chance(500) {
                disk.power_cut();
            } else {
                disk.crash();
            }
            drop(received);
            received = open_received(&disk, &storage);
            recoveries += 1;
            run.handled.restarted();
        }
    }
    // The end: a power cut, then every id ever seen is looked up once more.
    disk.set_faults(Faults::default());
    disk.power_cut();
    drop(received);
    let received = open_received(&disk, &storage);
    run.handled.restarted();
    for i in 0..run.next_id {
        let id = format!("m{i}");
        let seen = received
            .begin("central", "EventACK.TextLogging", &id)
            .expect("no faults now");
        check_seen(seed, &mut run.handled, &id, &seen);
    }
    (disk.counts(), recoveries)
}

#[test]
fn the_received_log_never_runs_a_message_twice_through_crashes_power_cuts_and_disk_errors() {
    let seeds = schedules();
    let mut total = Counts::default();
    let (mut steps, mut recoveries) = (0, 0);
    for &seed in &seeds {
        let n = 40 + Rng::new(seed).below(160) as usize;
        let (c, r) = received_schedule(seed, n);
        steps += n as u64;
        recoveries += r;
        total.add(c);
    }
    report("received log", seeds.len(), steps, total, recoveries);
    assert!(seeds.len() == 1 || total.power_cuts > seeds.len() as u64);
}
