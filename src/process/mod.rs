//! Processes: each one an OS thread doing one job, owned by the supervisor.
//!
//! - [`publisher`]: one per destination subject, spawned on demand, delivers in order.
//! - [`subscriber`]: one per method on this node's own subjects.
//! - [`inbox`]: watches inmsg.txt.
//! - [`scheduler`]: runs this node's schedules when they are due.
//! - [`hello`]: tells the central node "I'm here".
//! - [`control`]: the control socket for `steward send` and `steward status`.
//!
//! A process is a [`Process`] value run by [`spawn`] on a thread of its own. When it returns
//! or panics, the thread tells the supervisor, which restarts it (a new value from the same
//! recipe) unless the node is stopping or an operator stopped it (`OpProcessStop`). All of
//! them stop when the supervisor drops the stop channel's sender (and, for those that sleep
//! in `poll` rather than on a channel, the write end of the [`StopFd`]'s pipe with it).
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
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub mod control;
pub mod hello;
pub mod inbox;
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

/// Runs `process` on a thread named `name`; reports its end to the supervisor. A panic is a
/// bug, but a [`Failure::Retry`]: it may have come from one message's data, met once, and a
/// node that stopped taking its inbox for the fatal pause after one would be worse off than
/// one that restarts (restarts back off as they repeat).
pub fn spawn(
    name: String,
    generation: u64,
    mut process: Box<dyn Process>,
    stop: Receiver<()>,
    events: Sender<Event>,
    state: Arc<State>,
) -> std::io::Result<JoinHandle<()>> {
    let thread_name: String = name.chars().take(15).collect();
    std::thread::Builder::new()
        .name(thread_name)
        .stack_size(STACK_SIZE)
        .spawn(move || {
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
            let _ = events.send(Event::Exited {
                name,
                generation,
                failure,
            });
        })
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
        let thread = spawn(
            "test".into(),
            1,
            Box::new(process),
            stop,
            events,
            state.clone(),
        )
        .expect("a thread");
        thread.join().expect("the panic was caught");
        match ended.recv().expect("an event") {
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
}
