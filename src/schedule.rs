//! Schedules: a message with `schedule: [intervalSeconds, totalSeconds]` runs on its
//! receiver when it arrives, then every interval until the total has passed (counted from
//! the first run); each run's result goes back to the sender as a result message
//! (`replyMethod`, see [`crate::reply`]). The scheduler process runs them
//! ([`crate::process::scheduler`]).
//!
//! The schedules are kept in `schedules.json` (written atomically, fsync'd) whenever one
//! is added, starts a run, ends a run or is stopped, so a restart continues them:
//!
//! - **No second copy.** A schedule is added once, when its message is run for the first
//!   time; a retry of the message is answered from the received log, not run again.
//! - **No burst.** Runs fall on the schedule's own grid (first run + k × interval). Runs
//!   missed while the node was down are skipped, not caught up: the next run is the next
//!   grid point from now.
//! - **No duplicate run.** A run is recorded as started before it runs; one that was under
//!   way when the node died is not run again (its result, if it was journaled, is sent).
//!
//! - **Clock steps move them.** A wall clock set forward or back while the node runs (NTP's
//!   first sync on a Pi without a real-time clock, which booted on the time it shut down)
//!   moves every schedule's grid and end with it: a schedule started before the sync
//!   neither ends early (set forward by the days the Pi was off) nor pauses (set back).
//!   Told by the monotonic clock, which no one sets; a step while the node was down is
//!   not seen. A schedule kept from a start whose clock read later than the one it steps
//!   from (a Pi that booted in 1970 reads the schedules.json it wrote in 2026) was never on
//!   that clock: it is on the one the step sets, and stays where it is (moved, it was 56
//!   years away, and never ran again).
//!
//! `OpProcessList` lists them (`schedule <id>`); `OpProcessStop` `["schedule <id>"]` stops
//! one for good.

use crate::message::Envelope;
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

/// Most schedules one sender may have running on a node.
pub const MAX_PER_SENDER: usize = 64;
/// Most schedules a node runs.
pub const MAX_SCHEDULES: usize = 256;
/// How far the wall clock may move from the monotonic one between two looks before it
/// counts as set (ms): NTP slews small differences, and steps only large ones.
const CLOCK_STEP_MS: i64 = 2_000;

/// One schedule, as `schedules.json` keeps it. Times in milliseconds since the epoch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The message whose method runs, as it arrived (its result route and ticket).
    pub request: Envelope,
    /// The key that signed it: before each run, its sender must still be trusted with it
    /// and allowed to call the method (see [`crate::admission::still_allowed`]). Empty in
    /// a file from before schedules kept it: such a schedule ends at its next run, reported.
    #[serde(default)]
    pub key: String,
    /// When the first run started: the grid's origin.
    pub first: u64,
    pub every: u64,
    /// No run starts after this.
    pub until: u64,
    /// Runs started so far (the first included).
    pub runs: u64,
    /// When the next run is due.
    pub next: u64,
    /// The run under way, if one is (its grid time).
    pub running: Option<u64>,
}

impl Schedule {
    /// The schedule of `request` (signed with `key`), whose first run started at `now`;
    /// `None` if it has none.
    pub fn of(request: &Envelope, key: &str, now: u64) -> Option<Schedule> {
        let &[every, total] = request.message.schedule.as_deref()? else {
            return None;
        };
        let every = every.max(1) * 1000;
        Some(Schedule {
            request: request.clone(),
            key: key.to_string(),
            first: now,
            every,
            until: now + total * 1000,
            runs: 1,
            next: now + every,
            running: None,
        })
    }

    /// Its name in the process table and for `OpProcessStop`.
    pub fn name(&self) -> String {
        format!("schedule {}", self.request.id)
    }

    /// The first grid point after `after` that is not before `now`.
    fn next_from(&self, after: u64, now: u64) -> u64 {
        let from = after.max(now.saturating_sub(1));
        let k = (from.saturating_sub(self.first)) / self.every + 1;
        self.first + k * self.every
    }

    fn over(&self) -> bool {
        self.running.is_none() && self.next > self.until
    }

    /// The latest the wall clock read, by its record, while it was kept: its first run, the
    /// run under way, the last grid point reached. A clock that reads earlier is not the
    /// one it was made on.
    fn seen_at(&self) -> u64 {
        let last = self.next.saturating_sub(self.every);
        self.first.max(last).max(self.running.unwrap_or(0))
    }
}

/// Every schedule this node runs, kept on disk; wakes the scheduler when one is added.
pub struct Schedules {
    path: PathBuf,
    list: Mutex<Vec<Schedule>>,
    /// The monotonic and the wall clock when the schedules were last looked at (under
    /// `list`'s lock), to tell when the wall clock was set.
    clock: Mutex<Option<(Instant, u64)>>,
    wake: (Sender<()>, Receiver<()>),
}

impl Schedules {
    /// The schedules kept in `path`, as a restart finds them (`now`): a run that was under
    /// way is not run again, runs missed meanwhile are skipped, finished ones dropped. A
    /// file that cannot be read or parsed is set aside (`.bad`), with an error, rather than
    /// written over by the next change: the schedules in it stop, the node starts. A
    /// schedule of an interval no message gives (none, or past
    /// [`MAX_SCHEDULE_SECS`](crate::message::MAX_SCHEDULE_SECS): a hand edit, whose grid
    /// overflowed) is dropped, with an error.
    pub fn open(path: PathBuf, now: u64) -> Schedules {
        let set_aside = |why: String| {
            crate::files::set_aside(&path, &why, "its schedules stop");
            Vec::new()
        };
        let mut list: Vec<Schedule> = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).unwrap_or_else(|e| set_aside(e.to_string()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => set_aside(e.to_string()),
        };
        let longest = crate::message::MAX_SCHEDULE_SECS * 1000;
        list.retain(|s| {
            let runs = (1..=longest).contains(&s.every);
            if !runs {
                log::error!(
                    "{}: {} has an interval of {} ms, none a message may give; dropped",
                    path.display(),
                    s.name(),
                    s.every
                );
            }
            runs
        });
        for s in &mut list {
            if let Some(run) = s.running.take() {
                log::warn!(
                    "{}: the run due at {} was under way when the node stopped; not run again",
                    s.name(),
                    crate::files::rfc3339(run)
                );
                s.next = s.next_from(run, now);
            } else if s.next < now {
                s.next = s.next_from(s.next, now);
            }
        }
        list.retain(|s| !s.over());
        Schedules {
            path,
            list: Mutex::new(list),
            clock: Mutex::new(None),
            wake: crossbeam_channel::bounded(1),
        }
    }

    /// Moves every schedule in `list` by as much as the wall clock was set since the last
    /// look (see the module's docs), `mono` and `wall` being both clocks now.
    fn follow_clock(&self, list: &mut [Schedule], mono: Instant, wall: u64) {
        let mut seen = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        // Two looks read before the lock may come in either order: only a later one counts
        // (an earlier one would read as the clock set back by the wait between them).
        if seen.is_some_and(|(m, _)| mono < m) {
            return;
        }
        let step = seen.map_or(0, |(m, w)| {
            let walked = wall as i64 - w as i64;
            walked - mono.duration_since(m).as_millis() as i64
        });
        *seen = Some((mono, wall));
        if step.abs() < CLOCK_STEP_MS || list.is_empty() {
            return;
        }
        // What the clock would read without the step: a schedule recorded later than that
        // was kept from a start on a later clock, and is already on the one set now.
        let unset = wall.saturating_add_signed(-step);
        let on_it = |s: &Schedule| s.seen_at() <= unset;
        let moved = list.iter().filter(|s| on_it(s)).count();
        log::warn!(
            "the clock was set {} by {} s: {moved} schedule(s) moved with it, {} kept from a later clock left where they were",
            if step > 0 { "forward" } else { "back" },
            step.abs() / 1000,
            list.len() - moved
        );
        if moved == 0 {
            return;
        }
        let by = |t: u64| t.saturating_add_signed(step);
        for s in list.iter_mut().filter(|s| on_it(s)) {
            (s.first, s.next, s.until) = (by(s.first), by(s.next), by(s.until));
            s.running = s.running.map(by);
        }
        if let Err(e) = self.persist(list) {
            log::error!("cannot record the schedules moved with the clock: {e}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Schedule>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, list: &[Schedule]) -> io::Result<()> {
        let bytes = serde_json::to_vec(list).expect("schedules serialize");
        crate::files::write_atomically(&self.path, &bytes)
    }

    /// Keeps a new schedule (its first run done) and wakes the scheduler. The same message
    /// again (same sender, same content, another id: a startup file at each start) replaces
    /// the schedule it had made, so schedules never pile up; past [`MAX_PER_SENDER`] from
    /// one sender or [`MAX_SCHEDULES`] in all, it is refused, and so is one whose id
    /// another sender's schedule has (a schedule is named, and stopped, by its id).
    pub fn add(&self, schedule: Schedule) -> io::Result<()> {
        self.add_at(schedule, crate::files::unix_millis(), Instant::now())
    }

    /// As [`Schedules::add`], the clocks at `now` and `mono`.
    fn add_at(&self, schedule: Schedule, now: u64, mono: Instant) -> io::Result<()> {
        let mut list = self.lock();
        self.follow_clock(&mut list, mono, now);
        let from = &schedule.request.from_node;
        if list
            .iter()
            .any(|s| s.request.id == schedule.request.id && s.request.from_node == *from)
        {
            return Ok(());
        }
        // Named by its id alone (`schedule <id>`): another sender's schedule of that id (a
        // copied one) would be stopped with it, by OpProcessStop or by that sender's
        // revocation.
        let id = &schedule.request.id;
        if let Some(other) = list.iter().find(|s| s.request.id == *id) {
            return Err(io::Error::other(format!(
                "schedule {id} of {from}: {} has a schedule of that id here",
                other.request.from_node
            )));
        }
        let same = |s: &Schedule| {
            s.request.from_node == *from && s.request.message == schedule.request.message
        };
        let others = list.iter().filter(|s| !same(s));
        let (all, theirs) = others.fold((0, 0), |(all, theirs), s| {
            (all + 1, theirs + usize::from(s.request.from_node == *from))
        });
        if theirs >= MAX_PER_SENDER || all >= MAX_SCHEDULES {
            return Err(io::Error::other(format!(
                "too many schedules ({theirs} from {from}, {all} in all; at most {MAX_PER_SENDER} from one sender and {MAX_SCHEDULES} in all): OpProcessList lists them, OpProcessStop ends one"
            )));
        }
        let before = list.clone();
        list.retain(|s| !same(s));
        list.push(schedule);
        if let Err(e) = self.persist(&list) {
            *list = before;
            return Err(e);
        }
        let _ = self.wake.0.try_send(());
        Ok(())
    }

    /// The schedules due at `now`, each marked as running (kept), and when the next is
    /// due after them.
    pub fn due(&self, now: u64) -> (Vec<Schedule>, Option<u64>) {
        self.due_at(now, Instant::now())
    }

    /// As [`Schedules::due`], the monotonic clock at `mono`.
    fn due_at(&self, now: u64, mono: Instant) -> (Vec<Schedule>, Option<u64>) {
        let mut list = self.lock();
        self.follow_clock(&mut list, mono, now);
        let mut due = Vec::new();
        for s in list.iter_mut() {
            if s.running.is_none() && s.next <= now && s.next <= s.until {
                s.running = Some(s.next);
                s.runs += 1;
                due.push(s.clone());
            }
        }
        if !due.is_empty() {
            if let Err(e) = self.persist(&list) {
                // Not run: without the record a restart could run them again.
                log::error!("cannot record schedule runs as started: {e}; they are skipped");
                let marked: Vec<(&str, &str)> = due
                    .iter()
                    .map(|d| (d.request.from_node.as_str(), d.request.id.as_str()))
                    .collect();
                for s in list.iter_mut().filter(|s| {
                    marked.contains(&(s.request.from_node.as_str(), s.request.id.as_str()))
                }) {
                    s.running = None;
                    s.runs -= 1;
                    s.next = s.next_from(s.next, now);
                }
                // A skipped last run ends its schedule: kept, it would be due at a time
                // already past for ever, and the scheduler would wake for it at once, again
                // and again.
                list.retain(|s| !s.over());
                due.clear();
            }
        }
        let next = list
            .iter()
            .filter(|s| s.running.is_none())
            .map(|s| s.next)
            .min();
        (due, next)
    }

    /// The run of schedule `id` started at `run` has ended (its result sent): the next is
    /// the next grid point from `now`; a schedule past its total is dropped.
    pub fn done(&self, from: &str, id: &str, run: u64, now: u64) {
        self.done_at(from, id, run, now, Instant::now());
    }

    /// As [`Schedules::done`], the monotonic clock at `mono`.
    fn done_at(&self, from: &str, id: &str, run: u64, now: u64, mono: Instant) {
        let mut list = self.lock();
        self.follow_clock(&mut list, mono, now);
        if let Some(s) = list
            .iter_mut()
            .find(|s| s.request.id == id && s.request.from_node == from)
        {
            // As it is kept: moved with the clock, if it was set during the run.
            let run = s.running.take().unwrap_or(run);
            s.next = s.next_from(run, now);
        }
        list.retain(|s| !s.over());
        if let Err(e) = self.persist(&list) {
            log::error!("cannot record the end of a run of schedule {id}: {e}");
        }
        let _ = self.wake.0.try_send(());
    }

    /// Stops schedule `id` for good; whether there was one.
    pub fn stop(&self, id: &str) -> io::Result<bool> {
        let mut list = self.lock();
        let kept: Vec<Schedule> = list
            .iter()
            .filter(|s| s.request.id != id)
            .cloned()
            .collect();
        if kept.len() == list.len() {
            return Ok(false);
        }
        // Written first: a stop that could not be kept does not happen at all.
        self.persist(&kept)?;
        *list = kept;
        let _ = self.wake.0.try_send(());
        Ok(true)
    }

    /// Whether schedule `id` of `from` is still kept (not stopped, ended or replaced).
    pub fn kept(&self, from: &str, id: &str) -> bool {
        self.lock()
            .iter()
            .any(|s| s.request.id == id && s.request.from_node == from)
    }

    /// The schedules, for the process table.
    pub fn list(&self) -> Vec<Schedule> {
        self.lock().clone()
    }

    /// How many schedules there are (without copying them, as [`Schedules::list`] does:
    /// each may carry a message's 256 KiB of data).
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Rings when a schedule was added, ended a run or was stopped.
    pub fn changed(&self) -> Receiver<()> {
        self.wake.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Kind, Message};
    use std::time::Duration;

    /// Adds `schedule`, the wall clock at its first run.
    fn added(s: &Schedules, schedule: Schedule) -> io::Result<()> {
        let now = schedule.first;
        s.add_at(schedule, now, Instant::now())
    }

    fn request(schedule: [u64; 2]) -> Envelope {
        Envelope {
            id: "central-1".into(),
            from_node: "central".into(),
            accepted: 0,
            reply_ticket: None,
            grant: None,
            message: Message {
                schedule: Some(schedule.to_vec()),
                reply_method: Some("FileAppend".into()),
                ..Message::new("ship1", Kind::CommandAck, "CLICommand", vec!["date".into()])
            },
        }
    }

    #[test]
    fn runs_fall_on_the_grid_until_the_total_and_a_restart_skips_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schedules.json");
        let s = Schedules::open(path.clone(), 0);
        added(&s, Schedule::of(&request([2, 7]), "K", 1_000).unwrap()).unwrap();
        // Nothing due before 3 s; then the run at 3 s, marked running.
        assert_eq!(s.due(2_999), (vec![], Some(3_000)));
        let (due, next) = s.due(3_100);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].running, Some(3_000));
        assert_eq!(next, None, "nothing else due while it runs");
        s.done("central", "central-1", 3_000, 3_400);
        assert_eq!(s.due(3_500).1, Some(5_000));
        // The node dies during the run at 5 s and comes back at 7.5 s: that run is not
        // run again, and the one at 7 s missed: next at 9 s would be past the total (8 s).
        let (due, _) = s.due(5_000);
        assert_eq!(due.len(), 1);
        drop(s);
        let again = Schedules::open(path.clone(), 7_500);
        assert!(again.list().is_empty(), "{:?}", again.list());
        // A longer one restarted within its total continues on its grid, without a burst.
        let path = dir.path().join("other.json");
        let s = Schedules::open(path.clone(), 0);
        added(&s, Schedule::of(&request([2, 20]), "K", 1_000).unwrap()).unwrap();
        // Added once: the same message again is the same schedule.
        added(&s, Schedule::of(&request([2, 20]), "K", 1_500).unwrap()).unwrap();
        assert_eq!(s.list().len(), 1);
        drop(s);
        let again = Schedules::open(path, 8_200);
        let list = again.list();
        assert_eq!(list[0].next, 9_000);
        let (due, _) = again.due(9_000);
        assert_eq!(due.len(), 1, "one run, not the three missed");
    }

    #[test]
    fn a_clock_set_forward_or_back_moves_the_schedules_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Schedules::open(dir.path().join("schedules.json"), 0);
        let t = 1_000_000;
        added(&s, Schedule::of(&request([60, 3600]), "K", t).unwrap()).unwrap();
        let follow = |mono: Instant, wall: u64| {
            let mut list = s.lock();
            s.follow_clock(&mut list, mono, wall);
            list[0].clone()
        };
        let m = Instant::now();
        let day = 24 * 3600 * 1000;
        // Ten seconds on both clocks: nothing moves.
        let kept = follow(m, t);
        assert_eq!(follow(m + Duration::from_secs(10), t + 10_000), kept);
        // NTP's first sync on a Pi that booted on the time it shut down, a week ago: the
        // schedule neither ends at its next run nor skips its hour.
        let week = 7 * day;
        let moved = follow(m + Duration::from_secs(20), t + 20_000 + week);
        assert_eq!(
            (moved.first, moved.next, moved.until),
            (kept.first + week, kept.next + week, kept.until + week)
        );
        // A look read before that one and kept after it (its thread waited for the lock)
        // is not a clock set back a week.
        assert_eq!(follow(m + Duration::from_secs(15), t + 15_000), moved);
        let (due, _) = s.due_at(t + week + 60_000, m + Duration::from_secs(60));
        assert_eq!(due.len(), 1, "due on its grid, moved");
        // Set back three hours during that run: it ends on its grid, moved back, and the
        // next run is one interval on, not three hours away.
        let back = 3 * 3600 * 1000;
        let run = due[0].running.unwrap();
        s.done_at(
            "central",
            "central-1",
            run,
            t + week + 61_000 - back,
            m + Duration::from_secs(61),
        );
        assert_eq!(s.list()[0].next, t + week + 120_000 - back);
        assert_eq!(s.list()[0].until, kept.until + week - back);
    }

    /// A Pi without a real-time clock boots in 1970 and reads the schedules.json it wrote in
    /// 2026; NTP's first sync then sets the clock 56 years forward. The schedules kept from
    /// the last start were never on the 1970 clock: they stay where they were, and run on
    /// their grid (they were moved 56 years ahead with the clock, and never ran again).
    #[test]
    fn schedules_kept_from_a_later_clock_are_not_moved_when_ntp_catches_up_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schedules.json");
        let t = 1_795_000_000_000; // 2026
        let s = Schedules::open(path.clone(), t - 1_000);
        added(&s, Schedule::of(&request([60, 3600]), "K", t).unwrap()).unwrap();
        let kept = s.list()[0].clone();
        drop(s);
        // Booted in 1970: nothing due, and the scheduler's first look.
        let boot = 30_000;
        let s = Schedules::open(path, boot);
        assert_eq!(s.list(), vec![kept.clone()]);
        let m = Instant::now();
        assert_eq!(s.due_at(boot, m), (vec![], Some(kept.next)));
        // Twenty seconds later NTP sets the clock to 2026, a little past the next run.
        let now = kept.next + 5_000;
        let (due, _) = s.due_at(now, m + Duration::from_secs(20));
        assert_eq!(
            s.list()[0].until,
            kept.until,
            "moved with a clock it was never on"
        );
        assert_eq!(due.len(), 1, "the run due at {} did not run", kept.next);
        // A schedule made on the 1970 clock moves with it, as before.
        let boot = dir.path().join("boot.json");
        let s = Schedules::open(boot, 0);
        let m = Instant::now();
        let made = Schedule::of(&request([60, 3600]), "K", 10_000).unwrap();
        s.add_at(made, 10_000, m).unwrap();
        s.due_at(t + 20_000, m + Duration::from_secs(10));
        assert_eq!(s.list()[0].first, t + 10_000);
    }

    /// A schedule is named by its id alone (`OpProcessStop ["schedule <id>"]`, and the
    /// scheduler's end of a revoked sender's schedules): a sender that reused the id of
    /// another's schedule (OpProcessList shows it) made a second one of the same name, and
    /// when that sender's key was revoked, the other's schedule ended with its own.
    #[test]
    fn an_id_another_sender_s_schedule_has_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Schedules::open(dir.path().join("schedules.json"), 0);
        added(&s, Schedule::of(&request([60, 3600]), "K", 1_000).unwrap()).unwrap();
        let mut copy = request([60, 3600]);
        copy.from_node = "ship2".into();
        let why = added(&s, Schedule::of(&copy, "K2", 2_000).unwrap()).unwrap_err();
        assert!(why.to_string().contains("central-1"), "{why}");
        // Its own again, or one of another id, as before.
        added(&s, Schedule::of(&request([60, 3600]), "K", 2_000).unwrap()).unwrap();
        copy.id = "ship2-1".into();
        added(&s, Schedule::of(&copy, "K2", 2_000).unwrap()).unwrap();
        assert!(s.stop("ship2-1").unwrap());
        assert_eq!(s.list().len(), 1, "{:?}", s.list());
        assert_eq!(s.list()[0].request.from_node, "central");
    }

    /// A run that cannot be recorded as started (a full disk) is skipped; when that was the
    /// schedule's last, the schedule is over: the scheduler is not told to wake for a run
    /// that never comes (it woke at once, again and again, a core at 100% until a restart).
    #[test]
    fn a_last_run_that_cannot_be_recorded_leaves_nothing_due_in_the_past() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schedules.json");
        let s = Schedules::open(path.clone(), 0);
        // Runs at 1 s, 3 s; ends at 4 s.
        // Both clocks run together (no step).
        let m = Instant::now();
        let at = |ms: u64| m + Duration::from_millis(ms - 1_000);
        s.add_at(
            Schedule::of(&request([2, 3]), "K", 1_000).unwrap(),
            1_000,
            at(1_000),
        )
        .unwrap();
        // The disk refuses the record of the run at 3 s.
        std::fs::create_dir(dir.path().join("schedules.json.tmp")).unwrap();
        let (due, _) = s.due_at(3_000, at(3_000));
        assert!(due.is_empty(), "not run without its record");
        // Later: nothing is due, and nothing is said to be due at a time already past.
        let (due, next) = s.due_at(10_000, at(10_000));
        assert!(due.is_empty());
        assert!(
            next.is_none_or(|at| at > 10_000),
            "the scheduler is told a run is due at {next:?}, before now (10000): it wakes at once, for ever"
        );
    }

    /// A file that cannot be read is set aside, not written over by the next change; a
    /// schedule of no interval (a hand edit) is dropped, not divided by.
    #[test]
    fn an_unreadable_file_is_set_aside_and_a_hand_edited_interval_of_nothing_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schedules.json");
        let s = Schedules::open(path.clone(), 0);
        added(&s, Schedule::of(&request([2, 20]), "K", 1_000).unwrap()).unwrap();
        drop(s);
        let kept = std::fs::read(&path).unwrap();
        // A folder where the file was cannot be read (as EIO or EACCES): set aside.
        std::fs::rename(&path, dir.path().join("saved")).unwrap();
        std::fs::create_dir(&path).unwrap();
        let s = Schedules::open(path.clone(), 2_000);
        assert!(s.list().is_empty());
        assert!(dir.path().join("schedules.json.bad").is_dir(), "set aside");
        added(&s, Schedule::of(&request([2, 30]), "K", 2_000).unwrap()).unwrap();
        assert!(path.is_file());
        // An interval of nothing.
        let text = String::from_utf8(kept)
            .unwrap()
            .replace("\"every\":2000", "\"every\":0");
        assert!(text.contains("\"every\":0"), "{text}");
        std::fs::write(&path, &text).unwrap();
        let s = Schedules::open(path.clone(), 3_000);
        assert!(s.list().is_empty());
        // One past any a message may give: its next grid point overflowed (a panic; in a
        // release build, a run due at once, again and again).
        let huge = text.replace("\"every\":0", &format!("\"every\":{}", u64::MAX));
        std::fs::write(&path, huge).unwrap();
        let s = Schedules::open(path, 3_000);
        assert!(s.list().is_empty());
        assert_eq!(s.due(25_000), (vec![], None));
    }

    /// A file from before schedules kept the key that signed them (as the versions of
    /// 28 November wrote it, and write it again when rolled back to after this one) is
    /// read, not set aside: its schedules are kept without a key, and each ends at its next
    /// run, reported (see `process::scheduler`), instead of every one of them stopping with
    /// only the node's own log saying so.
    #[test]
    fn a_file_from_before_schedules_kept_their_key_is_read_not_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schedules.json");
        let old = r#"[{"request":{"id":"central-1","fromNode":"central","accepted":1000,
            "toNode":"ship1","data":["date"],"commandOrEvent":"CommandACK",
            "method":"CLICommand","replyMethod":"TextLogging","schedule":[2,20]},
            "first":1000,"every":2000,"until":21000,"runs":1,"next":3000,"running":null}]"#;
        std::fs::write(&path, old).unwrap();
        let s = Schedules::open(path.clone(), 2_000);
        assert!(!dir.path().join("schedules.json.bad").exists(), "set aside");
        let list = s.list();
        assert_eq!(list.len(), 1, "its schedule kept");
        assert_eq!(
            (list[0].name(), list[0].key.as_str()),
            ("schedule central-1".into(), "")
        );
    }
}
