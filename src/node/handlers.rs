//! The threads that run received messages (and schedules' runs), bounded, kept a while for
//! the next message.

use crate::process::lingering::Lingering;
use crossbeam_channel::{Receiver, Sender};
use std::time::{Duration, Instant};

/// The threads that run received messages and schedules' runs
/// ([`crate::process::scheduler`]): at most `capacity` at once, so a flood cannot fork-bomb
/// the node. A thread that finishes waits a while for the next message rather than exit, so
/// a command does not wait for a thread to be made (a thread start is tens of microseconds
/// here, more on a Pi); one idle for [`HANDLER_IDLE`] exits, so an idle node holds none.
pub struct Handlers {
    /// Permits, as tokens in a channel: taken before a job, given back when it ends.
    give: Sender<()>,
    take: Receiver<()>,
    capacity: usize,
    /// [`RESERVED`] more, only for the methods that put the node right.
    give_reserved: Sender<()>,
    take_reserved: Receiver<()>,
    /// The threads, each waiting a while for the next job before it exits.
    pub(super) threads: Lingering<Job>,
}

/// A job, and the permit it holds until it ends.
pub(super) type Job = (Box<dyn FnOnce() + Send>, Permit);

/// How long a handler thread waits for another message before it exits.
pub const HANDLER_IDLE: Duration = Duration::from_secs(60);

/// Handler places beyond `capacity`, kept for the methods that put the node right
/// ([`crate::methods::Method::puts_right`]: listing and stopping processes, revoking keys):
/// a commander's long commands or schedules can hold every other place for as long as
/// their timeouts, and those must still get through.
pub const RESERVED: usize = 2;

/// A permit; given back on drop, when the job ends (or unwinds).
pub(super) struct Permit(Sender<()>);

impl Drop for Permit {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Handlers {
    pub fn new(capacity: usize) -> Handlers {
        Handlers::lingering(capacity, HANDLER_IDLE)
    }

    pub(super) fn lingering(capacity: usize, linger: Duration) -> Handlers {
        let (give, take) = crossbeam_channel::bounded(capacity);
        for _ in 0..capacity {
            give.send(())
                .expect("the channel was made with room for every permit");
        }
        let (give_reserved, take_reserved) = crossbeam_channel::bounded(RESERVED);
        for _ in 0..RESERVED {
            give_reserved
                .send(())
                .expect("the channel was made with room for every permit");
        }
        Handlers {
            give,
            take,
            capacity,
            give_reserved,
            take_reserved,
            threads: Lingering::new(linger),
        }
    }

    /// Runs `job` (for `method`, which names a thread started for it) on a handler thread
    /// once one of the `capacity` places is free; returns false (without running it) if
    /// `stop` fires first or no thread can be had.
    pub fn run(
        &self,
        stop: &Receiver<()>,
        method: &str,
        job: impl FnOnce() + Send + 'static,
    ) -> bool {
        let permit = crossbeam_channel::select! {
            recv(self.take) -> _ => Permit(self.give.clone()),
            recv(stop) -> _ => return false,
        };
        self.dispatch(method, Box::new(job), permit)
    }

    /// As [`Handlers::run`], for a method that puts the node right: on one of the
    /// [`RESERVED`] places if every other is busy.
    pub fn run_to_put_right(
        &self,
        stop: &Receiver<()>,
        method: &str,
        job: impl FnOnce() + Send + 'static,
    ) -> bool {
        let permit = match self.take.try_recv() {
            Ok(()) => Permit(self.give.clone()),
            Err(_) => crossbeam_channel::select! {
                recv(self.take) -> _ => Permit(self.give.clone()),
                recv(self.take_reserved) -> _ => Permit(self.give_reserved.clone()),
                recv(stop) -> _ => return false,
            },
        };
        self.dispatch(method, Box::new(job), permit)
    }

    /// Runs `job` as [`Handlers::run`] if a place is free now (one of the [`RESERVED`] ones
    /// too, with `to_put_right`); if none is, gives it back at once, not run (`Err`): for
    /// work that must not hold up who asks (the subscriber's deferred writes). `Ok` as
    /// [`Handlers::run`]'s answer: whether a thread took it.
    pub fn try_run<F: FnOnce() + Send + 'static>(
        &self,
        method: &str,
        to_put_right: bool,
        job: F,
    ) -> Result<bool, F> {
        let permit = if self.take.try_recv().is_ok() {
            Permit(self.give.clone())
        } else if to_put_right && self.take_reserved.try_recv().is_ok() {
            Permit(self.give_reserved.clone())
        } else {
            return Err(job);
        };
        Ok(self.dispatch(method, Box::new(job), permit))
    }

    fn dispatch(&self, method: &str, job: Box<dyn FnOnce() + Send>, permit: Permit) -> bool {
        let Err(job) = self.threads.hand((job, permit)) else {
            return true;
        };
        let name = format!("handle {method}").chars().take(15).collect();
        // The permit goes back once the thread waits again, so that the dispatch it lets in
        // finds it waiting.
        let started = self
            .threads
            .start(name, 256 * 1024, job, |(job, permit): Job| {
                job();
                move || drop(permit)
            });
        match started {
            Ok(()) => true,
            Err(e) => {
                log::error!("cannot start a handler thread: {e}");
                false
            }
        }
    }

    pub fn in_use(&self) -> usize {
        self.capacity - self.take.len() + RESERVED - self.take_reserved.len()
    }

    /// Waits until every permit is back (all handlers finished) or `deadline` passes: by
    /// taking each permit as it comes back, so it sleeps until a handler ends. They are
    /// given back after, so handlers can run again.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        let mut held = Vec::with_capacity(self.capacity + RESERVED);
        for (take, give, n) in [
            (&self.take, &self.give, self.capacity),
            (&self.take_reserved, &self.give_reserved, RESERVED),
        ] {
            for _ in 0..n {
                match take.recv_deadline(deadline) {
                    Ok(()) => held.push(Permit(give.clone())),
                    Err(_) => return false,
                }
            }
        }
        true
    }
}
