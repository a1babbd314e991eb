//! This node's shared state, handed to every process: its configuration, data folder, broker
//! connection, metrics, journal (behind a guard that tells the supervisor when upkeep
//! waits), and fail-stop. In their own files: `intake` (the one way in, [`Node::accept`],
//! and how messages end), `report` (error reports and refusals to central), `handlers` (the
//! threads that run received messages), `presence` (Hello wake-ups).

use crate::broker::Broker;
use crate::config::Config;
use crate::files::DataFolder;
use crate::journal::Journal;
use crate::keys::{Identity, Trusted};
use crate::message::{Kind, Message};
use crate::metrics::Metrics;
use crate::received::Received;
use crate::resumed::Resumed;
use crate::subject::Subject;
use crate::supervisor::Event;
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod handlers;
mod intake;
mod presence;
mod report;
#[cfg(test)]
pub(crate) mod tests;

pub use handlers::{Handlers, HANDLER_IDLE, RESERVED};
pub use intake::Progress;
pub use presence::{Presence, Waiter};
use report::Refusals;
pub use report::REFUSAL_REPORTS_PER_MINUTE;

/// How long an error report waits for the central error logger: a week.
pub const ERROR_REPORT_TTL_SECS: u64 = 7 * 24 * 3600;

/// The exit status when the journal or the received log became unusable (EX_IOERR).
pub const EXIT_STORAGE_FAILED: i32 = 74;

pub struct Node {
    pub config: Config,
    pub data: DataFolder,
    pub broker: Arc<Broker>,
    pub metrics: Arc<Metrics>,
    /// What this node has received and handled (exactly-once effect).
    pub received: Received,
    /// Which messages an earlier run accepted, and which of them it finished though its
    /// journal lost the record of it (a power cut).
    pub resumed: Resumed,
    /// This node's signing key: everything it publishes is signed with it.
    pub identity: Identity,
    /// The keys it checks senders against.
    pub trusted: Trusted,
    journal: Mutex<Journal>,
    /// Word to the supervisor that the journal has upkeep waiting (see [`JournalGuard`]).
    upkeep: Upkeep,
    supervisor: Sender<Event>,
    /// Each running publisher's wake-up, by lane (destination subject): new messages reach
    /// it without a detour through the supervisor.
    publishers: Mutex<HashMap<Subject, Sender<()>>>,
    pub handlers: Handlers,
    /// Wakes publishers waiting on a node when it says Hello.
    pub presence: Presence,
    /// Who is waiting to hear how a message ends (`steward send`), by message id.
    watchers: Mutex<HashMap<String, Sender<Progress>>>,
    /// Refusals reported to central this minute, and those only logged.
    refusals: Mutex<Refusals>,
    /// What each sender may still write into errors.log and textlog/ this hour.
    pub log_budget: crate::log_budget::LogBudget,
    /// The schedules this node runs (see [`crate::schedule`]).
    pub schedules: crate::schedule::Schedules,
    /// Lanes wait for a publisher (`--maxPublishers` reached): idle publishers end at once.
    pub publishers_wanted: std::sync::atomic::AtomicBool,
    /// Since when (ms since the epoch) intake has found the data folder's disk full.
    disk_full_since: Mutex<Option<u64>>,
}

/// The locked journal, from [`Node::journal`]. When it is let go with upkeep waiting
/// ([`Journal::needs_upkeep`]: a finish not yet durable, …), it tells the supervisor, which
/// otherwise sleeps: whoever changed the journal, through whichever method.
pub struct JournalGuard<'a> {
    journal: MutexGuard<'a, Journal>,
    upkeep: &'a Upkeep,
}

/// The word to the supervisor that the journal has upkeep waiting, given once until the
/// supervisor has done it: a finish not yet durable stays so for up to half a second,
/// and every hold of the journal meanwhile (each take, each finish, of every publisher)
/// would otherwise wake the supervisor again for nothing, taking the CPU from the thread
/// that woke it on the message's path.
struct Upkeep {
    /// One word waiting is enough: the supervisor looks at the journal itself.
    word: (Sender<()>, Receiver<()>),
    /// A word was given and the supervisor has not done the upkeep since.
    asked: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for JournalGuard<'_> {
    type Target = Journal;
    fn deref(&self) -> &Journal {
        &self.journal
    }
}

impl std::ops::DerefMut for JournalGuard<'_> {
    fn deref_mut(&mut self) -> &mut Journal {
        &mut self.journal
    }
}

impl Drop for JournalGuard<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.journal.needs_upkeep() && !self.upkeep.asked.swap(true, Ordering::AcqRel) {
            // Full: a word is already waiting.
            let _ = self.upkeep.word.0.try_send(());
        }
    }
}

impl Node {
    pub fn new(
        config: Config,
        broker: Arc<Broker>,
        metrics: Arc<Metrics>,
        journal: Journal,
        received: Received,
        (identity, trusted): (Identity, Trusted),
        supervisor: Sender<Event>,
    ) -> Node {
        let data = DataFolder::new(config.data_folder.clone());
        // Before anything is written in this run.
        let unfinished: Vec<crate::subject::Subject> = journal
            .unfinished_lanes()
            .filter_map(|lane| crate::subject::Subject::parse(lane).ok())
            .collect();
        let resumed = Resumed::open(&data, journal.next_seq(), &unfinished);
        let schedules =
            crate::schedule::Schedules::open(data.schedules(), crate::files::unix_millis());
        for (node, at) in crate::methods::hello::read_roster(&data.hello_nodes()) {
            if trusted.knows(&node) {
                metrics.hello_at(&node, at);
            }
        }
        Node {
            data,
            resumed,
            schedules,
            handlers: Handlers::new(config.max_handlers),
            presence: Presence::new(supervisor.clone()),
            watchers: Mutex::new(HashMap::new()),
            refusals: Mutex::new(Refusals {
                since: Instant::now(),
                reported: [0, 0],
                only_logged: 0,
            }),
            log_budget: crate::log_budget::LogBudget::new(crate::log_budget::LogLimits::new(
                config.max_log_bytes_per_hour,
                config.min_free_bytes_for_logs,
            )),
            disk_full_since: Mutex::new(None),
            publishers_wanted: std::sync::atomic::AtomicBool::new(false),
            config,
            broker,
            metrics,
            received,
            identity,
            trusted,
            journal: Mutex::new(journal),
            upkeep: Upkeep {
                word: crossbeam_channel::bounded(1),
                asked: Default::default(),
            },
            supervisor,
            publishers: Mutex::new(HashMap::new()),
        }
    }

    /// The journal. A panic while holding it cannot leave it half-written in memory (each
    /// operation updates what memory counts only after its write), so a poisoned lock is taken over.
    pub fn journal(&self) -> JournalGuard<'_> {
        JournalGuard {
            journal: self.journal.lock().unwrap_or_else(|p| p.into_inner()),
            upkeep: &self.upkeep,
        }
    }

    /// Fires when the journal has upkeep waiting (records to make durable, finishes to
    /// write again, a compaction): the supervisor's tick runs only then.
    pub fn journal_upkeep(&self) -> Receiver<()> {
        self.upkeep.word.1.clone()
    }

    /// The supervisor has done the journal's upkeep: the next hold of the journal that
    /// leaves some waiting gives the word again. Said after the supervisor has drained the
    /// words given meanwhile, and before it looks whether some is left, so that none is
    /// missed in between.
    pub fn journal_upkept(&self) {
        self.upkeep
            .asked
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Stops the agent at once if the journal has become unusable (a failed fsync, or a
    /// compaction or cut-back that left file and memory out of step): see
    /// [`Node::fail_stop`].
    pub fn stop_if_unusable(&self, journal: &Journal) {
        if let Some(why) = journal.unusable() {
            self.fail_stop(&format!("the journal is unusable: {why}"));
        }
    }

    /// As [`Node::stop_if_unusable`], for the received log.
    pub fn stop_if_received_unusable(&self) {
        if let Some(why) = self.received.unusable() {
            self.fail_stop(&format!("the received log is unusable: {why}"));
        }
    }

    /// Fail-stop: exits now, non-zero, writing nothing more. Going on would act on memory
    /// the disk no longer matches (after a failed fsync, Linux may have dropped the pages
    /// and report the next fsync as fine); systemd starts the agent again, and recovery
    /// reads what the disk holds. What was accepted is on disk or still in its inbox file;
    /// what was in flight is sent again and recognised by its id.
    pub fn fail_stop(&self, why: &str) -> ! {
        log::error!(
            "{}: stopping at once ({why}); started again (systemd), steward recovers from what the disk holds",
            self.config.node
        );
        std::process::exit(EXIT_STORAGE_FAILED)
    }

    /// Asks the supervisor to stop the publisher, subscriber or schedule `name`
    /// (`OpProcessStop` from `by`).
    pub fn stop_process(
        &self,
        name: &str,
        by: &str,
    ) -> Result<crate::supervisor::Stopped, crate::supervisor::NotStopped> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let asked = self.supervisor.send(Event::Stop {
            name: name.to_string(),
            by: by.to_string(),
            reply: tx,
        });
        asked
            .ok()
            .and_then(|()| rx.recv_timeout(Duration::from_secs(2)).ok())
            .unwrap_or(Err(crate::supervisor::NotStopped::NoAnswer))
    }

    /// Asks the supervisor for the process table as text.
    pub fn status(&self) -> Option<String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.supervisor.send(Event::Status(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(2)).ok()
    }
}
