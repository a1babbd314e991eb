//! Threads that, their job done, wait a while for the next before they exit: the handlers
//! that run received messages ([`crate::node::Handlers`]) and the threads processes run on
//! ([`super::Threads`]). A job then costs a channel send rather than a thread made and
//! unmade (tens of microseconds here, more on a Pi, on the thread that hands it out: a
//! command to 10,000 nodes runs 10,000 publishers in turn), and a node with nothing to do
//! holds none once `linger` has passed.

use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Threads waiting for jobs of type `J`, handed out through one channel.
pub struct Lingering<J> {
    jobs: Sender<J>,
    waiting: Receiver<J>,
    /// Threads waiting for a job that no [`Lingering::hand`] has claimed yet.
    pub(crate) idle: Arc<AtomicUsize>,
    linger: Duration,
}

impl<J: Send + 'static> Lingering<J> {
    /// Threads that wait `linger` for the next job.
    pub fn new(linger: Duration) -> Lingering<J> {
        let (jobs, waiting) = crossbeam_channel::unbounded();
        Lingering {
            jobs,
            waiting,
            idle: Arc::new(AtomicUsize::new(0)),
            linger,
        }
    }

    /// Gives `job` to a thread waiting for one; if none waits, gives it back (`Err`), for
    /// [`Lingering::start`].
    pub fn hand(&self, job: J) -> Result<(), J> {
        let claimed = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        match claimed {
            // The channel cannot be closed: its receiver is held here too.
            true => self.jobs.send(job).map_err(|e| e.0),
            false => Err(job),
        }
    }

    /// Makes a thread (`name`d, with a stack of `stack` bytes) that runs `first` with `run`,
    /// then each job it is handed, until it has waited `linger` for one. `run` returns what
    /// to do once the thread counts as waiting again (give a permit back, tell the
    /// supervisor the process ended): whoever that lets in finds it waiting.
    pub fn start<F, R>(&self, name: String, stack: usize, first: J, run: R) -> std::io::Result<()>
    where
        R: Fn(J) -> F + Send + 'static,
        F: FnOnce(),
    {
        let (idle, waiting, linger) = (self.idle.clone(), self.waiting.clone(), self.linger);
        std::thread::Builder::new()
            .name(name)
            .stack_size(stack)
            .spawn(move || serve(first, &idle, &waiting, linger, run))
            .map(drop)
    }
}

/// A thread of a [`Lingering`]: `first`, then whatever it is handed, until it has waited
/// `linger` for nothing.
fn serve<J, F: FnOnce()>(
    first: J,
    idle: &AtomicUsize,
    waiting: &Receiver<J>,
    linger: Duration,
    run: impl Fn(J) -> F,
) {
    let mut next = Some(first);
    while let Some(job) = next.take() {
        let then = run(job);
        idle.fetch_add(1, Ordering::AcqRel);
        then();
        while next.is_none() {
            match waiting.recv_timeout(linger) {
                Ok(job) => next = Some(job),
                // Leave only if no hand has counted on this thread meanwhile; if one has,
                // its job is on the way.
                Err(_) => {
                    let unclaimed = idle
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                    if let Ok(before) = unclaimed {
                        if before == 1 {
                            trim_after_the_others();
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// How long the last thread of a burst to leave lets the others finish leaving before it
/// trims: they leave together, a `linger` after the burst's last job.
const OTHERS_LEAVING: Duration = Duration::from_millis(100);

/// The last of a burst's threads to leave hands back what malloc kept of them. Each kept
/// some freed memory of its own (glibc's per-thread cache) while it waited, past the trim
/// the supervisor makes when a burst of publishers ends, and gives it to malloc only as it
/// exits: without this, central held 16 to 23 MB more one minute after a command to 10,000
/// nodes (the benchmark's fleet row).
fn trim_after_the_others() {
    std::thread::sleep(OTHERS_LEAVING);
    crate::sys::malloc_trim();
}
