//! What a node can be asked to do. One file per method, behind one trait; adding a method is
//! a new file and one line in [`registry`].
//!
//! Each method declares the kinds it serves: a node subscribes to those subjects only, and
//! a message of any other kind is refused before anything else is looked at, at intake
//! (`inmsg.txt`, `steward send`) and on receipt. So a command can never travel as an
//! event to slip past the rules for commands.

pub use crate::admission::Senders;
use crate::config::Config;
use crate::files::DataFolder;
use crate::keys::Trusted;
use crate::log_budget::LogBudget;
use crate::message::{Envelope, Kind, Status};
use crate::metrics::Metrics;
use crate::node::{Node, Presence};
use crate::supervisor::{NotStopped, Stopped};

use std::sync::{Arc, OnceLock};

pub mod cli_command;
pub mod cli_command_cont;
pub mod console;
pub mod copy;
pub mod error_log;
pub mod file;
pub mod hello;
pub mod http_get;
pub mod op_process;
pub mod public_key;
pub mod reply_again;
pub mod tail_file;
pub mod text_logging;
pub mod trusted_keys;

/// The result of running a method; becomes the [`crate::message::Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub output: String,
    /// The method sent its results as they came ([`Outbox::send_result`]): this outcome
    /// is for the ACK only, not one more result.
    pub streamed: bool,
}

impl Outcome {
    pub fn ok(output: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Ok,
            exit_code: None,
            output: output.into(),
            streamed: false,
        }
    }
    pub fn error(output: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Error,
            exit_code: None,
            output: output.into(),
            streamed: false,
        }
    }
    pub fn refused(output: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Refused,
            exit_code: None,
            output: output.into(),
            streamed: false,
        }
    }
}

/// The kinds of a method that does something on request (run, install): commands only.
pub const COMMANDS: &[Kind] = &[Kind::CommandAck, Kind::CommandNack];
/// The kinds of a method that takes what happened (a log line, a Hello): events only.
pub const EVENTS: &[Kind] = &[Kind::EventAck, Kind::EventNack];

/// Opens `path` to read it for a sender (`TailFile`, `CopySrc`) if it is a plain file, and
/// says where the file opened really is: first a handle that opens nothing (`O_PATH`:
/// no device's open runs, with what it does — a watchdog's reboots its board, a serial
/// port's resets what is on it — and no FIFO blocks), looked at, then the same file opened
/// through it, so the file read is the one looked at. `follow`: whether a link as the
/// last part of `path` is followed. `None` if it is not a plain file. Without `/proc`
/// (where the handle is reopened) nothing is opened.
pub fn open_plain_file(
    path: &std::path::Path,
    follow: bool,
) -> std::io::Result<Option<(std::fs::File, std::path::PathBuf)>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | nofollow)
        .open(path)?;
    if !handle.metadata()?.is_file() {
        return Ok(None);
    }
    let fd = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let real = std::fs::read_link(&fd)?;
    let file = std::fs::File::open(&fd)?;
    Ok(Some((file, real)))
}

/// The node's own records in its data folder, by how their names begin (rotated ones too):
/// every message it sent with the results it carried, what it could not send, its input
/// (inmsg.txt, taken and rejected), the schedules it keeps for its senders, which of its
/// startup messages wait, and the reply subjects it awaits late replies on (each random, so
/// that no one can name one to flood: see [`crate::broker::Late`]).
const OWN_RECORDS: [&str; 7] = [
    "message-log.txt",
    "failed-messages.txt",
    "unreadable-messages.txt",
    "schedules.json",
    "startup-sent.json",
    "late-replies.json",
    "inmsg",
];

/// Why a method that reads a file for its sender (`TailFile`, `CopySrc`) may not read
/// `path` on this node, if it may not: this node's signing key (`keys/`), the records of
/// what other senders sent it and were answered (`journal/`: the journal and the received
/// log; its own records, [`OWN_RECORDS`], and `replies/`, `startup/`), the files its broker
/// credentials came from, and `/proc` (its own descriptors and environment). Wherever `path` really is (`..`
/// and links followed; for a file not there yet, where its nearest existing folder really
/// is, and a `..` past that refused, since what it would lead to cannot be told).
/// Anything else the agent's user may read, a sender allowed these methods may read.
pub fn private_to_the_node(
    path: &std::path::Path,
    data: &crate::files::DataFolder,
    config: &Config,
) -> Option<&'static str> {
    let real = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let given = path;
    let Some(path) = where_it_is(given) else {
        return Some("it names `..` past a folder that is not there");
    };
    // The kernel's view of processes: this one's own descriptors (`/proc/self/fd/N`, which
    // its journal may come to be) and environment (credentials given as variables). Also
    // when the descriptor leads elsewhere now: by its folder (`/dev/fd/N` too).
    let in_proc = |p: &std::path::Path| p.starts_with("/proc");
    if in_proc(&path)
        || given
            .parent()
            .and_then(where_it_is)
            .is_some_and(|f| in_proc(&f))
    {
        return Some("it is under /proc: this node's own descriptors and environment are there");
    }
    let root = real(&data.root);
    let own_record = path.parent() == Some(root.as_path())
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|name| OWN_RECORDS.iter().any(|own| name.starts_with(own)));
    let own_folder = ["replies", "startup", "received"]
        .iter()
        .any(|folder| path.starts_with(root.join(folder)));
    if path.starts_with(real(&data.keys())) {
        Some("it is under keys/: the node's signing key is there")
    } else if path.starts_with(real(&data.journal_dir())) {
        Some("it is under journal/: what other senders sent this node, and its answers, are there")
    } else if own_record || own_folder {
        Some("it is one of the node's own records (every message it sent, with the results it carried, its input, its schedules, the replies it stored and those it awaits): other senders' are there")
    } else if config
        .security
        .secret_files
        .iter()
        .any(|secret| real(secret) == path)
    {
        Some("it holds this node's broker credentials")
    } else {
        None
    }
}

/// Where `path` really is: canonical if it is there; else its nearest existing folder's
/// canonical place with the rest as written, or `None` if the rest climbs with `..`.
fn where_it_is(path: &std::path::Path) -> Option<std::path::PathBuf> {
    if let Ok(real) = path.canonicalize() {
        return Some(real);
    }
    for folder in path.ancestors().skip(1) {
        let Ok(real) = folder.canonicalize() else {
            continue;
        };
        let rest = path.strip_prefix(folder).ok()?;
        let climbs = rest
            .components()
            .any(|c| c == std::path::Component::ParentDir);
        return (!climbs).then(|| real.join(rest));
    }
    Some(path.to_path_buf())
}

/// What a method may use of its node: its configuration and data folder, its public key,
/// whom it trusts, who said Hello, the metrics, the log budget, a way to report to central,
/// and the supervisor's process table. Not the journal or the broker: a method does its
/// work and returns an outcome; getting it back to the sender (in the ACK, or as a result
/// message) is the subscriber's business.
pub struct Context<'a> {
    pub config: &'a Config,
    pub data: &'a DataFolder,
    pub public_key: &'a str,
    pub trusted: &'a Trusted,
    pub presence: &'a Presence,
    pub metrics: &'a Metrics,
    pub log_budget: &'a LogBudget,
    pub outbox: &'a dyn Outbox,
    pub processes: &'a dyn Processes,
}

/// What a method may ask of the supervisor (`OpProcessList`, `OpProcessStop`).
pub trait Processes: Sync {
    /// The process table as `steward status` prints it; `None` while the node stops.
    fn table(&self) -> Option<String>;
    /// Stops the publisher, subscriber or schedule `name`, at `by`'s word: what was done,
    /// or why not.
    fn stop(&self, name: &str, by: &str) -> Result<Stopped, NotStopped>;
}

impl Processes for Node {
    fn table(&self) -> Option<String> {
        self.status()
    }
    fn stop(&self, name: &str, by: &str) -> Result<Stopped, NotStopped> {
        self.stop_process(name, by)
    }
}

/// What a method may send on: into this node's journal, like any message.
pub trait Outbox: Sync {
    /// Logs an error and sends it to central's error log.
    fn report_error(&self, text: String);
    /// Sends a result of `request` now, as a message of its own to where the request asked
    /// (`replyMethod`), journaled like any: for a method whose results come as it runs
    /// (`TailFile`, `CLICommandCont`). Returns the result message's id, or `None` if the
    /// request asked for no result message (the output then belongs in the ACK).
    fn send_result(&self, request: &Envelope, outcome: &Outcome)
        -> std::io::Result<Option<String>>;
    /// How much output one result of `request` carries ([`crate::reply::result_room`]):
    /// within what the broker takes in one message too.
    fn result_room(&self, request: &crate::message::Message) -> usize;
    /// Sends messages of the method's own from this node (`CopySrc`'s chunks), journaled
    /// like any, with one write and fsync for all: all of them, or (an error) none.
    /// Returns their ids.
    fn send(&self, messages: Vec<crate::message::Message>) -> std::io::Result<Vec<String>>;
}

impl Outbox for Node {
    fn report_error(&self, text: String) {
        Node::report_error(self, text)
    }
    fn send_result(
        &self,
        request: &Envelope,
        outcome: &Outcome,
    ) -> std::io::Result<Option<String>> {
        self.send_result_of(request, outcome)
    }
    fn result_room(&self, request: &crate::message::Message) -> usize {
        crate::reply::result_room(request, self.broker.max_payload())
    }
    fn send(&self, messages: Vec<crate::message::Message>) -> std::io::Result<Vec<String>> {
        self.accept_ids(messages)
    }
}

impl Node {
    /// What the methods get of this node.
    pub fn context(&self) -> Context<'_> {
        Context {
            config: &self.config,
            data: &self.data,
            public_key: self.identity.public_key(),
            trusted: &self.trusted,
            presence: &self.presence,
            metrics: &self.metrics,
            log_budget: &self.log_budget,
            outbox: self,
            processes: self,
        }
    }
}

pub trait Method: Send + Sync {
    /// The name used in subjects and in the `method` key.
    fn name(&self) -> &'static str;
    /// The kinds this method serves ([`COMMANDS`] or [`EVENTS`]).
    fn kinds(&self) -> &'static [Kind];
    /// Who may send it (checked by [`crate::admission`] before it runs).
    fn senders(&self) -> Senders;
    /// Whether this node can take the method's work now: a method whose work needs disk
    /// space (a log) says no while the disk is below its floor. Asked before anything is
    /// recorded; a "no" is not answered, so the sender tries again later, within the
    /// message's retries or time to live (error reports: a week), and keeps it in its
    /// `failed-messages.txt` past that. Commands are always taken: the one that frees the
    /// disk must get through. `writing`: the bytes of the data it brings, which a log must
    /// have room for above the floor.
    fn ready(&self, _ctx: &Context, _writing: u64) -> Result<(), crate::log_budget::BelowFloor> {
        Ok(())
    }
    /// The bytes `envelope` would have this method write, as its write's own floor check
    /// ([`crate::log_budget::admit`]) counts them: what [`Method::ready`] is asked about. A
    /// write counted as more than `ready` was told is refused for good, not deferred.
    fn writes(&self, envelope: &Envelope, _ctx: &Context) -> u64 {
        envelope.message.data_bytes() as u64
    }
    /// Whether a message that was running when this node died is run again when its sender
    /// retries it, rather than answered with an error saying it was interrupted: only for
    /// a method whose run does the same thing twice as once (`CopyDst` writes the same
    /// bytes at the same place). Never more than one run at a time, as for any message.
    fn reruns_interrupted(&self) -> bool {
        false
    }
    /// Whether the receiver records each message of this method (started, fsync'd, before
    /// it runs; its reply, after) so that it runs once however often it arrives. Only a
    /// method whose run twice is its run once, that answers nothing a retry would need,
    /// goes without: `Hello`, which sets a time. It spares central two fsyncs per node per
    /// Hello interval (10,000 nodes every 30 s: 670 a second).
    fn remembered(&self) -> bool {
        true
    }
    /// Whether this method runs nothing and answers from the receiver's record instead: the
    /// reply stored for the message of the sender's that shares the request's id, or that
    /// it was interrupted; nothing if that message is not known here or still runs
    /// (`ReplyAgain`, see [`reply_again`]).
    fn recalls(&self) -> bool {
        false
    }
    /// Whether this method puts the node right (`OpProcessList`, `OpProcessStop`,
    /// `TrustedKeys`): its messages may take one of the handler places kept for them when
    /// every other is busy ([`crate::node::RESERVED`]), so that long commands or
    /// schedules holding every place cannot lock out the commands that stop or revoke
    /// them.
    fn puts_right(&self) -> bool {
        false
    }
    /// Runs a received message that has passed the sender checks. Runs on a handler thread
    /// of its own; may block (a CLICommand runs up to its timeout).
    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome;
    /// Runs a batch of received messages, in order (events of one subject that travelled
    /// together). A method that can do the batch's work in one go (one write, one fsync)
    /// overrides this; by default each runs alone.
    fn handle_batch(&self, envelopes: &[&Envelope], ctx: &Context) -> Vec<Outcome> {
        envelopes.iter().map(|e| self.handle(e, ctx)).collect()
    }
    /// The most messages of this method this node says it takes in one batch (`batchMax`
    /// in its answer to one): [`MAX_BATCH`] for a method whose [`Method::handle_batch`]
    /// does the batch's work in one go; [`FIRST_BATCH`], as before `batchMax`, for one
    /// that runs each message alone (an fsync or two each), so that a batch's one timeout
    /// still covers its runs.
    ///
    /// [`MAX_BATCH`]: crate::message::MAX_BATCH
    /// [`FIRST_BATCH`]: crate::message::FIRST_BATCH
    fn batch_max(&self) -> usize {
        crate::message::FIRST_BATCH
    }
    /// Deferred work: started by the method's subscriber when a message was admitted and
    /// when it was handled, and again every second while this returns true (work still
    /// waits). Runs on a handler thread, one at a time, beside handlers and possibly
    /// beside `flush` at a stop.
    fn tick(&self, _ctx: &Context) -> bool {
        false
    }
    /// Called when the node stops, to persist what `tick` would have.
    fn flush(&self, _ctx: &Context) {}
}

/// Every method this build serves.
pub fn registry() -> Vec<Arc<dyn Method>> {
    vec![
        Arc::new(cli_command::CliCommand),
        Arc::new(cli_command_cont::CliCommandCont),
        Arc::new(text_logging::TextLogging),
        Arc::new(hello::Hello::default()),
        Arc::new(error_log::ErrorLog),
        Arc::new(trusted_keys::TrustedKeys),
        Arc::new(file::File { append: false }),
        Arc::new(file::File { append: true }),
        Arc::new(console::Console),
        Arc::new(op_process::OpProcessList),
        Arc::new(op_process::OpProcessStop),
        Arc::new(public_key::PublicKey),
        Arc::new(reply_again::ReplyAgain),
        Arc::new(tail_file::TailFile),
        Arc::new(http_get::HttpGet),
        Arc::new(copy::CopySrc),
        Arc::new(copy::CopyDst),
    ]
}

/// The kinds a method of this build serves, by name; `None` for an unknown method.
pub fn kinds_of(name: &str) -> Option<&'static [Kind]> {
    static KINDS: OnceLock<Vec<(&'static str, &'static [Kind])>> = OnceLock::new();
    KINDS
        .get_or_init(|| registry().iter().map(|m| (m.name(), m.kinds())).collect())
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, kinds)| *kinds)
}

/// Whether a method of this build takes results as a reply method: one that takes
/// events from any node it trusts, or from the node it asked (`File`, `FileAppend`,
/// `Console`, `TextLogging`, …); not a copy's chunk, nor a command.
pub fn takes_results(name: &str) -> bool {
    static TAKERS: OnceLock<Vec<&'static str>> = OnceLock::new();
    TAKERS
        .get_or_init(|| {
            registry()
                .iter()
                .filter(|m| matches!(m.senders(), Senders::Fleet | Senders::CommandersOrAsked))
                .filter(|m| m.kinds().contains(&Kind::EventAck))
                .map(|m| m.name())
                .collect()
        })
        .contains(&name)
}

/// Whether this build knows a method by name.
pub fn is_known(name: &str) -> bool {
    kinds_of(name).is_some()
}

/// Why a method cannot be sent as `kind`, if it cannot: the one check, at intake and on
/// receipt.
pub fn kind_refusal(method: &str, kind: Kind) -> Option<String> {
    match kinds_of(method) {
        None => Some(format!("unknown method {method:?}")),
        Some(_) if method == reply_again::NAME => Some(reply_again::NOT_SENT.to_string()),
        Some(kinds) if !kinds.contains(&kind) => {
            let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            Some(format!(
                "{method} is served only as {}, not as {}",
                names.join(" or "),
                kind.as_str()
            ))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// Only a plain file is opened for a sender, and where it really is is said: a FIFO
    /// without a writer does not block, a device is not opened, a link as the last part is
    /// followed only when asked.
    #[test]
    fn only_a_plain_file_is_opened_for_a_sender() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("log");
        std::fs::write(&file, "x").unwrap();
        let real = file.canonicalize().unwrap();
        let (_, at) = super::open_plain_file(&file, false).unwrap().unwrap();
        assert_eq!(at, real);
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(super::open_plain_file(&fifo, true).unwrap().is_none());
        assert!(
            super::open_plain_file(std::path::Path::new("/dev/null"), true)
                .unwrap()
                .is_none()
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let not_followed = super::open_plain_file(&link, false).unwrap();
        assert!(
            not_followed.is_none(),
            "not followed: a link is no plain file"
        );
        let (_, at) = super::open_plain_file(&link, true).unwrap().unwrap();
        assert_eq!(at, real, "followed: where it leads");
    }

    #[test]
    fn what_is_private_to_the_node_is_never_read_out_for_a_sender() {
        let dir = tempfile::tempdir().unwrap();
        let data = crate::files::DataFolder::new(dir.path().join("data"));
        for sub in ["keys", "journal", "logs"] {
            std::fs::create_dir_all(data.root.join(sub)).unwrap();
        }
        for file in ["keys/node.seed", "journal/received.log", "logs/app.log"] {
            std::fs::write(data.root.join(file), "x").unwrap();
        }
        let password = dir.path().join("broker.password");
        std::fs::write(&password, "secret").unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(data.root.join("journal"), dir.path().join("elsewhere"))
            .unwrap();
        let root = data.root.to_str().unwrap();
        let args = [
            "--node",
            "ship1",
            "--dataFolder",
            root,
            "--user",
            "u",
            "--passwordFile",
            password.to_str().unwrap(),
        ];
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let args = crate::config::normalize_args(&args).unwrap();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let flags =
            <crate::config::Flags as argh::FromArgs>::from_args(&["steward"], &args).unwrap();
        let config = crate::config::Config::load(&flags, &|_| None).unwrap();
        let private = |p: &std::path::Path| super::private_to_the_node(p, &data, &config);
        let why = |p: &std::path::Path| private(p).unwrap_or_default();
        assert!(why(&data.root.join("keys/node.seed")).contains("keys/"));
        // Wherever it really is: through `..`, and through a link from outside.
        assert!(why(&data.root.join("logs/../journal/received.log")).contains("journal/"));
        assert!(why(&dir.path().join("elsewhere/received.log")).contains("journal/"));
        assert!(why(&password).contains("broker credentials"));
        assert_eq!(private(&data.root.join("logs/app.log")), None);
        // Not there yet: where its folder really is; a `..` past what is not there, refused.
        assert!(why(&dir.path().join("elsewhere/not-yet.log")).contains("journal/"));
        assert!(why(&data.root.join("logs/../keys/not-yet")).contains("keys/"));
        assert!(why(&data.root.join("nowhere/../keys/node.seed")).contains("`..`"));
        assert_eq!(private(&data.root.join("logs/new/app.log")), None);
        // The node's own records: what it sent (results of other senders' requests among
        // it), its input, the schedules and replies it keeps; a log there is not one.
        for own in [
            "message-log.txt",
            "message-log.txt.2",
            "failed-messages.txt",
            "schedules.json",
            "inmsg.txt",
            "inmsg.rejected.txt",
            "unreadable-messages.txt",
            "replies/ship2.CLICommand.log",
            "startup/x.json",
            "late-replies.json",
            "late-replies.json.tmp",
            "late-replies.json.bad.1",
        ] {
            assert!(why(&data.root.join(own)).contains("own records"), "{own}");
        }
        assert_eq!(private(&data.root.join("errors.log")), None);
        assert_eq!(private(&data.root.join("logs/message-log.txt")), None);
        // This process's descriptors and environment, through any way there, whether a
        // descriptor is open now (to an ordinary file: this one) or not.
        let open = std::fs::File::open(data.root.join("logs/app.log")).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&open);
        for p in [
            "/proc/self/environ".to_string(),
            format!("/proc/self/fd/{fd}"),
            format!("/dev/fd/{fd}"),
            "/dev/fd/9999".to_string(),
        ] {
            assert!(why(std::path::Path::new(&p)).contains("/proc"), "{p}");
        }
        drop(open);
    }
}
