//! Processes: each one an OS thread doing one job, owned by the supervisor.
//!
//! - [`publisher`]: one per destination subject, spawned on demand, delivers in order.
//! - [`subscriber`]: one per method on this node's own subjects.
//! - [`inbox`]: watches inmsg.txt.
//! - [`hello`]: tells the central node "I'm here".
//! - [`control`]: the control socket for `steward send` and `steward status`.
//!
//! A process is a [`Process`] value run by [`spawn`] on a thread of its own. When it returns
//! or panics, the thread tells the supervisor, which restarts it (a new value from the same
//! recipe) with backoff unless the node is stopping. All of them stop when the supervisor
//! drops the stop channel's sender (and, for those that sleep in `poll` rather than on a
//! channel, the write end of the [`StopFd`]'s pipe with it).
//!
//! Idle means idle: a process sleeps on what wakes it (a channel, inotify, a socket) and
//! sets a timer only when something is due, so an idle node costs no CPU.

use crate::supervisor::Event;
use crossbeam_channel::{Receiver, Sender};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub mod control;
pub mod hello;
pub mod inbox;
pub mod publisher;
pub mod subscriber;

pub trait Process: Send {
    /// Does the process's work until `stop` fires (return `Ok`) or something fails (`Err`).
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), String>;
}

/// What a process is doing now, for `--profilingPort` and logs.
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

/// Runs `process` on a thread named `name`; reports its end to the supervisor.
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
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(panic) => Some(format!("panicked: {}", panic_message(&panic))),
            };
            state.set(match &error {
                Some(e) => format!("failed: {e}"),
                None => "stopped".to_string(),
            });
            let _ = events.send(Event::Exited {
                name,
                generation,
                error,
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
