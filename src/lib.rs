//! steward: command and control for fleets of edge nodes over NATS, with guaranteed delivery.
//!
//! One binary runs on every node. An operator appends a message to `inmsg.txt` (run this
//! command on ship1, log this text on central); the node delivers it when the destination
//! can be reached, retrying until then, and stores the destination's ACK, which for a
//! command carries its output. Nothing is lost on the way: the journal holds every message
//! until it is finished.
//!
//! # The flow, one way
//!
//! ```text
//! inmsg.txt ─▶ inbox ─▶ journal ─▶ publisher (one per subject, or lane) ─▶ NATS
//!                          ▲                                                  │
//!                          └─ finished ◀─ reply stored ◀─ ACK ◀── subscriber ◀┘
//!                                                          (one per method; the
//!                                                           method runs, then ACKs)
//! ```
//!
//! The supervisor starts a lane's publisher when the lane has messages and none runs (an
//! idle one ends; at most `--maxPublishers` at once), and restarts any process that
//! fails; messages themselves never pass through it.
//!
//! # The tree, in the order a message meets it
//!
//! ```text
//! config/               flags, config file, environment → one validated Config
//! process/inbox         inmsg.txt → messages (message: the seed's JSON; subject: names)
//! node/intake           the one way in: journal first, then the lane's publisher
//! journal/              accepted messages on disk until finished: record (the format,
//!                       shared with received, and its fail-stop file), recover, compact
//! storage               the file operations beneath them (simulated: storage/crash)
//! process/publisher/    one lane: deliver (attempts by retry's rules, event batches),
//!                       finish (replies, failed-messages.txt, message log, then the journal)
//! keys/                 signing what leaves, checking what arrives (identity, trusted)
//! broker                the NATS connection
//! process/subscriber    one method's subjects: admission (the gate), received (nothing
//!                       runs twice), then the method, then the ACK
//! methods/              CLICommand, TextLogging, Hello, ErrorLog, TrustedKeys, HttpGet, …:
//!                       each a file, given a narrow Context; copy/ (CopySrc, CopyDst: a
//!                       file sent on in journaled chunks)
//! reply, grant           results as messages of their own (tickets); a copy's grant
//! schedule              schedules kept on disk, run by process/scheduler
//! startup               the startup folder: messages a node sends itself at every start
//! node/report           errors and refusals to central, through intake like any message
//! supervisor/           starts, restarts (Retry or Fatal: restart) and stops the processes;
//!                       lanes (publishers on demand, --maxPublishers), stop (OpProcessStop)
//! ```
//!
//! Beside the path: [`reply`] and [`grant`] (a node's signed word for what it asked: a
//! result, a copy onto another node), [`node`] (the shared parts: handlers, presence, fail-stop),
//! [`resumed`] (what a power cut took the record of), [`metrics`] (Prometheus and the
//! status page), [`files`] (the data folder's layout, appends, atomic writes),
//! [`log_budget`] (what each sender may write into errors.log and textlog/),
//! [`http_client`] (the small HTTP/1.1 client beneath `HttpGet`),
//! [`control_client`] (`steward send`, `steward status` and `steward keys`), [`demo`] (a
//! local fleet in one command), and [`sys`]: every system call beyond the standard library,
//! and all of the crate's `unsafe` code, in one place to audit.

#![deny(unsafe_code)]
// These docs are for the people who work on steward, read with `--document-private-items`
// (as `.ci/run` checks them): a public item's doc may name the private ones behind it.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admission;
pub mod broker;
pub mod clock;
pub mod config;
pub mod control_client;
pub mod demo;
pub mod files;
pub mod grant;
pub mod http_client;
pub mod journal;
pub mod keys;
pub mod log_budget;
pub mod message;
pub mod methods;
pub mod metrics;
pub mod node;
pub mod process;
pub mod received;
pub mod reply;
pub mod resumed;
pub mod retry;
pub mod schedule;
pub mod startup;
pub mod storage;
pub mod subject;
pub mod supervisor;
pub mod sys;

use config::Config;
use std::fmt;
use std::sync::Arc;

/// Why the agent could not run.
#[derive(Debug)]
pub enum Error {
    /// Something in the data folder could not be set up or read.
    DataFolder {
        context: String,
        source: std::io::Error,
    },
    /// This node's signing key or its trusted keys could not be loaded.
    Keys(keys::Error),
    /// The data folder can be written by anyone (`mode`, its permission bits): anyone could
    /// send messages signed as this node.
    WorldWritable {
        folder: std::path::PathBuf,
        mode: u32,
    },
    /// The signal handler could not be installed.
    Signals(ctrlc::Error),
    /// Another agent runs on this data folder (it holds `journal/lock`).
    AlreadyRunning { folder: std::path::PathBuf },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::DataFolder { context, source } => write!(f, "{context}: {source}"),
            Error::Keys(e) => write!(f, "keys: {e}"),
            Error::WorldWritable { folder, mode } => write!(
                f,
                "refusing to run: the data folder {} can be written by anyone (mode {mode:o}): anyone could send messages signed as this node; run: chmod o-w {}",
                folder.display(),
                folder.display()
            ),
            Error::Signals(e) => write!(f, "cannot handle SIGINT/SIGTERM: {e}"),
            Error::AlreadyRunning { folder } => write!(
                f,
                "refusing to run: another steward agent runs on the data folder {} (it holds journal/lock); `steward status` shows it",
                folder.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::DataFolder { source, .. } => Some(source),
            Error::Keys(e) => Some(e),
            Error::Signals(e) => Some(e),
            Error::WorldWritable { .. } | Error::AlreadyRunning { .. } => None,
        }
    }
}

/// Runs a node until SIGINT or SIGTERM; returns when it has stopped cleanly.
pub fn run(config: Config) -> Result<(), Error> {
    // The inbox's file leases would otherwise let any reader of inmsg.txt end the agent.
    sys::ignore_sigio();
    let (config, readable_by_others) = data_folder(config)?;
    let data = files::DataFolder::new(config.data_folder.clone());
    // Held while this agent runs: a second one on the same data folder (started by hand
    // beside the service) would write the same journal at its own idea of its end, and run
    // every command and schedule a second time.
    let _one_agent = one_agent(&data)?;
    let (journal, recovery) =
        journal::Journal::open(&data.journal_dir()).map_err(|source| Error::DataFolder {
            context: format!(
                "cannot open the journal in {}",
                data.journal_dir().display()
            ),
            source,
        })?;
    let received =
        received::Received::open(&data.journal_dir()).map_err(|source| Error::DataFolder {
            context: format!("cannot open {}/received.log", data.journal_dir().display()),
            source,
        })?;
    let keys_dir = data.keys();
    let identity = keys::Identity::load_or_create(&keys_dir).map_err(Error::Keys)?;
    if let Err(e) = keys::record_name(&keys_dir, &config.node) {
        log::warn!("cannot record this node's name beside its key (`steward keys` may name it by its host): {e}");
    }
    let trusted =
        keys::Trusted::open(&keys_dir, &config.node, identity.public_key()).map_err(Error::Keys)?;
    // Only this node's operator speaks for central and for whoever may send commands here.
    let trusted = trusted.protecting(
        std::iter::once(config.central_node.clone())
            .chain(config.allow_commands_from.iter().map(|a| a.from.clone())),
    );
    let metrics = Arc::new(metrics::Metrics::new());
    let broker = broker::Broker::connect(
        &config.node,
        &config.brokers,
        config.security.clone(),
        config.broker_ping_interval,
        metrics.clone(),
    );
    let (events_tx, events) = crossbeam_channel::unbounded();
    // From here on a SIGTERM (systemd's stop) is a clean stop, the start included: it
    // waits in the channel until the supervisor runs.
    let tx = events_tx.clone();
    ctrlc::set_handler(move || {
        let _ = tx.send(supervisor::Event::Shutdown);
    })
    .map_err(Error::Signals)?;
    let node = Arc::new(node::Node::new(
        config,
        broker,
        metrics.clone(),
        journal,
        received,
        (identity, trusted),
        events_tx.clone(),
    ));
    log::info!(
        "node {} (key {}) starting; data in {}; broker {} ({}{})",
        node.config.node,
        node.identity.public_key(),
        data.root.display(),
        broker::shown(&node.config.brokers),
        match node
            .config
            .brokers
            .iter()
            .any(|u| broker::credentials(u).is_some())
        {
            true => "credentials in the broker address",
            false => node.config.security.auth.describe(),
        },
        if node.config.security.tls_ca.is_some() {
            ", TLS"
        } else {
            ""
        }
    );
    serve_pages(&node);
    if let Some(warning) = readable_by_others {
        log::warn!("{warning}");
        node.report_error(warning);
    }
    resume(&node, recovery);
    // Before the inbox, which forgets the journal's damage once it has dealt with it.
    let startup_mark = startup::mark_known(&node);

    let mut supervisor = supervisor::Supervisor::new(node.clone(), events, events_tx.clone());
    supervisor.start();
    startup::send_after(&node, startup_mark);

    supervisor.run();
    Ok(())
}

/// The lock that makes this the one agent on its data folder (`journal/lock`).
fn one_agent(data: &files::DataFolder) -> Result<std::fs::File, Error> {
    let dir = data.journal_dir();
    let path = dir.join("lock");
    let cannot = |source| Error::DataFolder {
        context: format!("cannot lock {}", path.display()),
        source,
    };
    files::create_dirs(&dir).map_err(cannot)?;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(files::PRIVATE_FILE)
        .open(&path)
        .map_err(cannot)?;
    // Held a moment more by what is ending: an agent killed, and restarted at once, while a
    // command it was starting sat between fork and exec with a copy of the lock (exec
    // closes it). So a start waits that long before it takes the lock for another
    // agent's; a second agent is refused all the same.
    let waited = std::time::Instant::now();
    loop {
        match sys::lock_exclusive(&file) {
            Ok(true) => return Ok(file),
            Ok(false) if waited.elapsed() < LOCK_HELD_BY_THE_DYING => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(false) => {
                return Err(Error::AlreadyRunning {
                    folder: data.root.clone(),
                })
            }
            Err(e) => return Err(cannot(e)),
        }
    }
}

/// How long a start waits for the data folder's lock before it is another agent's.
const LOCK_HELD_BY_THE_DYING: std::time::Duration = std::time::Duration::from_secs(2);

/// The data folder, created and made absolute (so logs name files unambiguously and
/// commands run in a fixed folder); refused if anyone may write it, with a warning to
/// report if others may read it.
fn data_folder(mut config: Config) -> Result<(Config, Option<String>), Error> {
    // The folders made now, deepest first: each one's name is made durable before anything
    // in it counts (the journal, the key made at a first start), or a power cut could take
    // all of it.
    let mut made = Vec::new();
    let mut at = config.data_folder.as_path();
    while !at.as_os_str().is_empty() && !at.exists() {
        made.push(at.to_path_buf());
        at = at.parent().unwrap_or(std::path::Path::new(""));
    }
    files::create_dirs(&config.data_folder).map_err(|source| Error::DataFolder {
        context: format!(
            "cannot create the data folder {}",
            config.data_folder.display()
        ),
        source,
    })?;
    for dir in &made {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        files::sync_dir(parent).map_err(|source| Error::DataFolder {
            context: format!(
                "cannot make {} durable in {}",
                dir.display(),
                parent.display()
            ),
            source,
        })?;
    }
    config.data_folder = config
        .data_folder
        .canonicalize()
        .map_err(|source| Error::DataFolder {
            context: format!(
                "cannot resolve the data folder {}",
                config.data_folder.display()
            ),
            source,
        })?;
    // Whoever can write inmsg.txt makes this node send messages signed with its key.
    let mode = std::fs::metadata(&config.data_folder)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap_or(0);
    if mode & 0o002 != 0 {
        return Err(Error::WorldWritable {
            folder: config.data_folder,
            mode: mode & 0o7777,
        });
    }
    // Commands, their output and the logs live here: others should not read them, and only
    // the node's user write them. A folder steward creates is private; one that already
    // existed is left as it is, with a warning.
    let exposed = match (mode & 0o007 != 0, mode & 0o020 != 0) {
        (true, _) => Some("can be read by other users: they can read commands, their output and the logs"),
        (false, true) => Some("can be written by its group: its members can make this node send anything, signed with its key, and replace its keys"),
        (false, false) => None,
    };
    let readable_by_others = exposed.map(|what| {
        format!(
            "{}: the data folder {} {what} (mode {:o}); run: chmod 700 {}",
            config.node,
            config.data_folder.display(),
            mode & 0o7777,
            config.data_folder.display()
        )
    });
    Ok((config, readable_by_others))
}

/// The metrics and profiling pages. A listener that cannot start (a port in use: two nodes
/// on one host with the default `:2112`) costs only what it serves. Command and control go
/// on; the error is logged and reported to central with the flag to change.
fn serve_pages(node: &Arc<node::Node>) {
    if let Some(addr) = &node.config.prom_addr {
        let m = node.metrics.clone();
        let served = metrics::serve("metrics", addr, move |path| {
            (path == "/metrics").then(|| m.render())
        });
        if let Err(e) = served {
            node.report_error(format!(
                "{}: cannot serve metrics: {e}; running without them. Pick a free port with --promHostAndPort (e.g. --promHostAndPort=127.0.0.1:2113), or turn them off with --promHostAndPort=off",
                node.config.node
            ));
        }
    }
    if let Some(addr) = &node.config.profiling_addr {
        let n = node.clone();
        if let Err(e) = metrics::serve("profiling", addr, move |_| n.status()) {
            node.report_error(format!(
                "{}: cannot serve the process table: {e}; running without it. Pick a free port with --profilingPort (e.g. --profilingPort=6061), or leave --profilingPort out",
                node.config.node
            ));
        }
    }
}

/// What the journal found at start: damage reported to central, unfinished messages on
/// their way again, before the inbox takes anything new.
fn resume(node: &node::Node, recovery: journal::Recovery) {
    if let Some(cut) = recovery.cut {
        node.report_error(format!(
            "{}: journal was damaged and repaired: {cut}",
            node.config.node
        ));
    }
    for passed in recovery.passed_over {
        node.report_error(format!(
            "{}: journal was damaged: {passed}",
            node.config.node
        ));
    }
    for bad in recovery.undecodable {
        node.report_unreadable(format!("journal: dropped an unreadable message: {bad}"));
    }
    if recovery.pending > 0 {
        log::info!(
            "resuming {} unfinished message(s) from the journal, for {} destination(s)",
            recovery.pending,
            recovery.lanes.len()
        );
    }
    node.metrics.journal(&mut node.journal());
    node.wake(recovery.lanes);
}
