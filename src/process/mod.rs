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
//! drops the stop channel's sender.

use crate::supervisor::Event;
use crossbeam_channel::{Receiver, Sender};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
