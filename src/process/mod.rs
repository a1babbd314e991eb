//! Processes: each one an OS thread doing one job, owned by the supervisor.
//!
//! - [`publisher`]: one per destination subject, spawned on demand, delivers in order.
//! - [`subscriber`]: one per method on this node's own subjects.
//! - [`inbox`]: watches inmsg.txt.
//! - [`scheduler`]: runs this node's schedules when they are due.
//! - [`hello`]: tells the central node "I'm here".
//! - [`control`]: the control socket for `steward send` and `steward status`.
//!
//! A process is a [`Process`] value run by [`Threads::spawn`] on a thread of its own. When it
//! returns or panics, the thread tells the supervisor, which restarts it (a new value from
//! the same recipe) unless the node is stopping or an operator stopped it
//! (`OpProcessStop`). All of them stop when the supervisor drops the stop channel's sender
//! (and, for those that sleep in `poll` rather than on a channel, the write end of the
//! [`StopFd`]'s pipe with it).
//!
//! A thread whose process ended waits a moment ([`THREAD_LINGER`]) for the next process
//! before it exits ([`lingering`]): a command to 10,000 nodes runs 10,000 publishers in
//! turn, at most `--maxPublishers` at once, and each had a thread made and unmade for it.
//! Made on the supervisor's thread, one after another, they were 40% of its time there
//! (`clone3`), and their ends (`exit`, the stack's `munmap`) more on the publishers'.
//!
//! A process that fails says whether starting it again can help ([`Failure`]): a full disk
//! or a broker that went away passes, a bug or a misconfiguration does not. Each process
//! that can fail in more than one way has its own error type, whose variants say what
//! failed (with the `io::Error` as source), and decides there, in its `From<Error> for
//! Failure`, which of the two each is.
//!
//! Idle means idle: a process sleeps on what wakes it (a channel, inotify, a socket) and
//! sets a timer only when something is due, so an idle node costs no CPU.

use crate::supervisor::Event;
use crossbeam_channel::{Receiver, Sender};
use lingering::Lingering;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod control;
pub mod hello;
pub mod inbox;
pub mod lingering;
pub mod publisher;
pub mod scheduler;
pub mod subscriber;

pub trait Process: Send {
    /// Does the process's work until `stop` fires (return `Ok`) or something fails (`Err`,
    /// saying whether a restart can help).
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), Failure>;
}

/// Why a process ended though it was not told to stop, and whether starting it again can
/// help: what the supervisor acts on (see [`crate::supervisor`]).
#[derive(Debug)]
pub enum Failure {
    /// Something outside the process, which passes or which an operator can put right
    /// without a new configuration or a new build: the broker gone, the disk full, a file
    /// in the way, a reply that cannot be stored yet. Restarted after a pause that grows
    /// with each failure in a row. Every I/O error is this, except one only the
    /// configuration causes (a socket path too long to bind, see
    /// [`control::Error::Listen`]): what was in the way may be gone at the next try.
    Retry(Reason),
    /// A bug (a subject this node made and refused itself) or a misconfiguration
    /// that the process will meet again however often it starts (another agent on this
    /// data folder). Logged and reported to central once, and tried again only after
    /// a long pause.
    Fatal(Reason),
}

/// What failed: the process's own error.
pub type Reason = Box<dyn std::error::Error + Send + Sync>;

impl Failure {
    /// A failure a restart can get past.
    pub fn retry(reason: impl Into<Reason>) -> Failure {
        Failure::Retry(reason.into())
    }

    /// A failure no restart will fix.
    pub fn fatal(reason: impl Into<Reason>) -> Failure {
        Failure::Fatal(reason.into())
    }

    pub fn is_fatal(&self) -> bool {
        matches!(self, Failure::Fatal(_))
    }

    /// What failed.
    pub fn reason(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match self {
            Failure::Retry(r) | Failure::Fatal(r) => r.as_ref(),
        }
    }
}

/// The reason's own words, as in "process X failed: (this)".
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason())
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.reason().source()
    }
}

/// A process panicked: a bug. Its message, as the panic gave it.
#[derive(Debug)]
pub struct Panicked(pub String);

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "panicked: {}", self.0)
    }
}

impl std::error::Error for Panicked {}

/// What a process is doing now, for the process table (`steward status`, `--profilingPort`,
/// `OpProcessList`).
#[derive(Default)]
pub struct State(Mutex<String>);

impl State {
    pub fn set(&self, s: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = s.into();
    }
    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Threads are small: a Pi may run hundreds of publishers.
const STACK_SIZE: usize = 256 * 1024;

/// How long a thread whose process ended waits for another before it exits: long enough
/// for the supervisor to hand it the next lane in line (`--maxPublishers`), short enough
/// that a node whose work is done soon holds only the threads it uses.
pub const THREAD_LINGER: Duration = Duration::from_secs(2);

/// What an idle thread is called while it waits for a process (`top -H`, `/proc`).
const IDLE_NAME: &str = "idle thread";

/// The threads processes run on: one each, taken from those whose process ended within
/// [`THREAD_LINGER`], else made.
pub struct Threads(Lingering<Job>);

/// A process to run, and what its end is told to.
struct Job {
    name: String,
    generation: u64,
    process: Box<dyn Process>,
    stop: Receiver<()>,
    events: Sender<Event>,
    state: Arc<State>,
}

/// A process running on one of [`Threads`]: the supervisor holds it while the process runs,
/// and hears of its end by [`Event::Exited`].
#[derive(Debug)]
pub struct Running;

impl Default for Threads {
    fn default() -> Threads {
        Threads::lingering(THREAD_LINGER)
    }
}

impl Threads {
    pub fn lingering(linger: Duration) -> Threads {
        Threads(Lingering::new(linger))
    }

    /// Runs `process` (called `name`) on a thread, one waiting if there is one; reports its
    /// end to the supervisor. A panic is a bug, but a [`Failure::Retry`]: it may have come
    /// from one message's data, met once, and a node that stopped taking its inbox for the
    /// fatal pause after one would be worse off than one that restarts (restarts back off
    /// as they repeat).
    pub fn spawn(
        &self,
        name: String,
        generation: u64,
        process: Box<dyn Process>,
        stop: Receiver<()>,
        events: Sender<Event>,
        state: Arc<State>,
    ) -> std::io::Result<Running> {
        let job = Job {
            name,
            generation,
            process,
            stop,
            events,
            state,
        };
        if let Err(job) = self.0.hand(job) {
            // Named "process" in a panic's message; `top` shows the name of the process
            // it runs, set for each.
            self.0
                .start("process".into(), STACK_SIZE, job, |job: Job| {
                    crate::sys::name_this_thread(&job.name);
                    let (events, exited) = job.run();
                    crate::sys::name_this_thread(IDLE_NAME);
                    move || {
                        let _ = events.send(exited);
                    }
                })?;
        }
        Ok(Running)
    }
}

impl Job {
    /// Runs the process to its end; returns the [`Event::Exited`] that says so, and where
    /// to send it. The process is dropped first: gone when the supervisor hears of it (a
    /// restart never meets the old one), as when its thread ended with it.
    fn run(self) -> (Sender<Event>, Event) {
        let Job {
            name,
            generation,
            mut process,
            stop,
            events,
            state,
        } = self;
        state.set("running");
        let result = catch_unwind(AssertUnwindSafe(|| process.run(&stop)));
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(f)) => Some(f),
            Err(panic) => Some(Failure::retry(Panicked(panic_message(&panic)))),
        };
        state.set(match &failure {
            Some(f) if f.is_fatal() => format!("failed, a restart cannot fix it: {f}"),
            Some(f) => format!("failed: {f}"),
            None => "stopped".to_string(),
        });
        // A process that panics in its drop fails no worse than in its run.
        let _ = catch_unwind(AssertUnwindSafe(move || drop((process, stop))));
        let exited = Event::Exited {
            name,
            generation,
            failure,
        };
        (events, exited)
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// The stop signal as a file descriptor, for a process that sleeps in `poll` (on inotify,
/// on a socket) rather than on a channel: the read end of a pipe whose write end the
/// supervisor drops together with the stop channel's sender, so that from then on it
/// reads as ended, and a `poll` on it returns.
#[derive(Clone)]
pub struct StopFd(Option<Arc<OwnedFd>>);

/// Without a pipe (no descriptor was left at start), how often a wait looks up for the
/// stop channel instead.
const STOP_POLL: Duration = Duration::from_millis(250);

impl StopFd {
    /// A stop fd, and the write end whose drop fires it (`None` if no pipe could be had:
    /// then waits end every [`STOP_POLL`], for the caller to look at the stop channel).
    pub fn new() -> (StopFd, Option<OwnedFd>) {
        match crate::sys::pipe() {
            Ok((read, write)) => (StopFd(Some(Arc::new(read))), Some(write)),
            Err(e) => {
                log::warn!(
                    "cannot make the stop pipe ({e}); idle processes wake every {STOP_POLL:?}"
                );
                (StopFd(None), None)
            }
        }
    }

    /// Waits until `fd` can be read, the node stops, or `timeout` passes (`None`: no
    /// limit); returns whether `fd` can be read. The caller looks at its stop channel
    /// after.
    pub fn wait(&self, fd: BorrowedFd<'_>, timeout: Option<Duration>) -> bool {
        let ready = match &self.0 {
            Some(stop) => crate::sys::wait_readable([fd, stop.as_fd()], timeout).map(|[r, _]| r),
            None => {
                let timeout = timeout.map_or(STOP_POLL, |t| t.min(STOP_POLL));
                crate::sys::wait_readable([fd], Some(timeout)).map(|[r]| r)
            }
        };
        ready.unwrap_or_else(|e| {
            // Not expected of a poll on open descriptors; the caller looks, and waits again.
            log::debug!("poll: {e}");
            std::thread::sleep(STOP_POLL);
            true
        })
    }
}

/// Sleeps for `d` unless `stop` fires first; returns whether it is time to stop.
pub fn sleep_or_stop(stop: &Receiver<()>, d: std::time::Duration) -> bool {
    matches!(
        stop.recv_timeout(d),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) | Ok(())
    )
}

/// Whether `stop` has fired, without waiting.
pub fn stopping(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails with its failure, or panics if it has none.
    struct Fails(Option<Failure>);

    impl Process for Fails {
        fn run(&mut self, _stop: &Receiver<()>) -> Result<(), Failure> {
            match self.0.take() {
                Some(f) => Err(f),
                None => panic!("boom"),
            }
        }
    }

    /// How `process` ended, as the supervisor hears it, and the state it left.
    fn end_of(process: Fails) -> (Option<Failure>, String) {
        let (_stop_tx, stop) = crossbeam_channel::bounded(0);
        let (events, ended) = crossbeam_channel::unbounded();
        let state = Arc::new(State::default());
        Threads::default()
            .spawn(
                "test".into(),
                1,
                Box::new(process),
                stop,
                events,
                state.clone(),
            )
            .expect("a thread");
        match ended
            .recv_timeout(Duration::from_secs(10))
            .expect("an event")
        {
            Event::Exited { failure, .. } => (failure, state.get()),
            _ => panic!("not an Exited event"),
        }
    }

    #[test]
    fn a_panic_is_retried_and_a_failure_keeps_its_kind_and_source() {
        let (failure, state) = end_of(Fails(None));
        let failure = failure.expect("a failure");
        assert!(!failure.is_fatal(), "a panic is restarted, with backoff");
        assert_eq!(failure.to_string(), "panicked: boom");
        assert!(state.starts_with("failed: "), "{state}");

        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        let (failure, state) = end_of(Fails(Some(Failure::retry(full))));
        let failure = failure.expect("a failure");
        assert!(!failure.is_fatal());
        assert!(state.starts_with("failed: "), "{state}");
        let io = failure.reason().downcast_ref::<io::Error>().expect("io");
        assert_eq!(io.raw_os_error(), Some(libc::ENOSPC));
    }

    /// Ends at once, saying on which thread it ran, and drops after.
    struct Says {
        ran_on: Sender<i32>,
        dropped: Arc<AtomicUsize>,
    }

    impl Process for Says {
        fn run(&mut self, _stop: &Receiver<()>) -> Result<(), Failure> {
            let _ = self.ran_on.send(crate::sys::thread_id());
            Ok(())
        }
    }

    impl Drop for Says {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn comm(tid: i32) -> String {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
            .unwrap_or_default()
            .trim_end()
            .to_string()
    }

    /// Lanes in line for a publisher (`--maxPublishers`) take the thread the last one ended
    /// on, named for each in turn, not one made and unmade each; a thread left waiting
    /// longer than the linger exits.
    #[test]
    fn a_process_that_starts_as_another_ends_takes_its_thread_and_an_idle_one_exits() {
        // Long enough that this test's own pauses on a busy machine do not let the thread
        // go between the two processes.
        let threads = Threads::lingering(Duration::from_secs(2));
        let (_stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let (events, ended) = crossbeam_channel::unbounded();
        let (ran_on, on) = crossbeam_channel::unbounded();
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut tids = Vec::new();
        for lane in [
            "publisher node1.CommandACK.CLICommand",
            "publisher node2.CommandACK.CLICommand",
        ] {
            let says = Says {
                ran_on: ran_on.clone(),
                dropped: dropped.clone(),
            };
            let before = dropped.load(Ordering::Acquire);
            threads
                .spawn(
                    lane.into(),
                    1,
                    Box::new(says),
                    stop.clone(),
                    events.clone(),
                    Arc::default(),
                )
                .expect("a thread");
            tids.push(on.recv_timeout(Duration::from_secs(10)).expect("it ran"));
            match ended
                .recv_timeout(Duration::from_secs(10))
                .expect("its end")
            {
                Event::Exited { name, failure, .. } => {
                    assert_eq!(name, lane);
                    assert!(failure.is_none());
                }
                _ => panic!("not an Exited event"),
            }
            assert_eq!(
                dropped.load(Ordering::Acquire),
                before + 1,
                "dropped before its end is told"
            );
        }
        assert_eq!(
            tids[0], tids[1],
            "the second ran on the thread the first ended on"
        );
        let tid = tids[1];
        let idle = comm(tid);
        assert_eq!(idle, IDLE_NAME, "named for what it does while it waits");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "an idle thread stayed past its linger"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // And a process after that gets a thread made for it.
        let says = Says { ran_on, dropped };
        threads
            .spawn(
                "inbox".into(),
                1,
                Box::new(says),
                stop,
                events,
                Arc::default(),
            )
            .expect("a thread");
        assert_ne!(
            on.recv_timeout(Duration::from_secs(10)).expect("it ran"),
            tid
        );
    }
}
