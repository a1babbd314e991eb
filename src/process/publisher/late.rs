//! Replies that come after their message was given up: the `late replies` process.
//!
//! A message is given up when its attempts are spent or its time to live is over, and kept
//! in failed-messages.txt. That says no ACK came in time, not that it never ran: a command
//! allowed a `methodTimeout` longer than its attempts last runs on, and copies held in its
//! node's link while it was cut silently reach the node when the link flows again. Its
//! reply used to be dropped (its publisher had moved on, or ended), so a command that ran
//! was listed as undelivered, its output lost, and sent again from failed-messages.txt it
//! ran twice.
//!
//! Now a message given up after a send its node may have taken (one not answered "no
//! responders", or a node that said Hello within the minute: see `Publisher::await_late`)
//! is awaited a while longer ([`crate::broker::Late`]: an hour past its `methodTimeout`,
//! at most a day, at most [`LATE_AWAITED`] at once and
//! [`LATE_AWAITED_EACH_NODE`] of a node). A reply that
//! comes for it is checked as any reply (signed by the destination's key, over one of the
//! message's own sends, its id and sender the message's), then kept in the lane's reply
//! file with a line that says it came after the message was given up and what to do with
//! the message (still in failed-messages.txt: not to be sent again if it ran), logged and
//! reported to the central error logger. This process runs only while something is
//! awaited; the supervisor starts it when a message is given up so
//! ([`crate::supervisor::Event::AwaitLate`]), and at the node's start if an earlier run
//! left something awaited.
//!
//! A restart of this node (an upgrade, a new config) used to drop the table, and with it
//! the late reply of a command still running. So the process keeps the table in the data
//! folder (`late-replies.json`, [`LateReplies::load`]): written within [`SAVE_EVERY`] of a
//! message given up (a fan-out given up is a write a second, not one per message), at once
//! when a reply is kept (awaited again after a kill -9, a copy of it would be kept twice),
//! and at its stop, or the node's ([`LateReplies::at_stop`]); while the process waits
//! for its restart after a failure (a full disk, where a new file cannot be made either:
//! one that shrank is written over in place, see `store`), only at the node's stop.
//! Read back at the start, what it awaits is awaited again: on the inbox of the run that
//! sent it, which the node listens on again ([`crate::broker::Broker::listen_earlier`]).
//!
//! A reply is published once: one that comes while this node is down, or its link is cut,
//! reaches no one, and a node killed while it ran a command never replies. A message
//! given up is not sent again (it could run twice), so the process asks its node again
//! for the reply instead ([`crate::methods::reply_again`], which runs nothing there):
//! at this start, after a reconnect, at the node's first Hello after its start, and
//! every [`ASK_EVERY`] while it says Hello or if this node hears none from it ([`ask_due`]).
//! The node answers from its record: the reply it sent, or that the message was
//! interrupted there. An answer to an ask made at this start may be a reply the last run
//! kept just before it was killed, the table not yet written: it is looked for in the
//! reply file first ([`LateReplies::kept_already`]). Lost all the same: a message given up
//! within a second of a kill -9 or a power cut (not in the file yet).
//!
//! [`LATE_AWAITED`]: crate::broker::LATE_AWAITED
//! [`LATE_AWAITED_EACH_NODE`]: crate::broker::LATE_AWAITED_EACH_NODE

use super::finish::reply_record;
use super::*;
use crate::broker::{Ask, GivenUp};
use crate::message::{Envelope, Kind, Message};
use crate::methods::reply_again;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

pub struct LateReplies {
    node: Arc<Node>,
    state: Arc<State>,
    /// The table's change count when the node last listened on earlier runs' inboxes.
    listened: Option<u64>,
    /// ... when it was last kept on disk, and when that was tried.
    saved: Option<u64>,
    save_tried: Option<Instant>,
    /// Whether keeping it failed last time (said once until it works again).
    save_failing: bool,
    /// The node stops: a reply that cannot be kept is lost ([`LateReplies::at_stop`]).
    stopping: bool,
    /// When the link last came back up in this run: every node is asked again.
    reconnected: Option<Instant>,
    /// When what is due to be asked again was last looked at.
    looked: Option<Instant>,
}

/// The process's name in the table.
pub const NAME: &str = "late replies";

/// How often, at most, the table is written to the data folder while it changes.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// How often, at most, a node that says Hello is asked again for the reply of a message
/// it runs (unless it restarted, or this node's link came back: then at once).
pub const ASK_EVERY: Duration = Duration::from_secs(60);
/// ... and at least this long after the last ask, whatever happened since: a link that
/// comes and goes, or a stolen key saying a node's first Hello every second, asks each
/// message at most this often.
pub const ASK_AGAIN_AFTER: Duration = Duration::from_secs(5);
/// How often the asks due are looked for.
const ASK_LOOK: Duration = Duration::from_secs(1);
/// How far back from its end a reply file is read for a late reply kept before this start
/// ([`LateReplies::kept_already`]).
const KEPT_LOOK_BACK: u64 = 1 << 20;

/// Whether a message awaited, where it stands with its asks (`asked`), is to be asked for
/// again `now`, this node's link having last come back up at `reconnected`, its node having
/// last said Hello at `hello` and its first since its start at `started`:
///
/// - read back at this start, at once: its reply may have come while this node was down;
/// - none sooner than [`ASK_AGAIN_AFTER`] after its last ask (or its give-up), whatever
///   happened since: a link that comes and goes, a stolen key saying a node's first Hello
///   every second;
/// - an answer to it dropped since (the queue full), at once: it may have been the reply;
/// - after this node's link came back up: the reply may have come while it was down;
/// - after its node's first Hello since its start: killed while running it, that node
///   now knows the message was interrupted;
/// - every [`ASK_EVERY`] while its node says Hello; and every [`ASK_EVERY`] if this node
///   hears none from it at all (Hellos go to central: a node other than central, an
///   operator's station, knows no better). A node that is down, as its silence says, is
///   not asked: it is once it says Hello.
pub fn ask_due(
    now: Instant,
    asked: crate::broker::Asked,
    reconnected: Option<Instant>,
    hello: Option<Instant>,
    started: Option<Instant>,
) -> bool {
    let Some(last) = asked.at else { return true };
    let since = now.saturating_duration_since(last);
    if since < ASK_AGAIN_AFTER {
        return false;
    }
    asked.dropped
        || reconnected.is_some_and(|at| at > last)
        || started.is_some_and(|at| at > last)
        || (hello.is_none_or(|at| at > last) && since >= ASK_EVERY)
}

/// At most this many bytes of `late-replies.json` are read: [`crate::broker::LATE_AWAITED`]
/// messages of a few signatures each are well under it.
const MAX_FILE: u64 = 16 << 20;

impl Process for LateReplies {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), Failure> {
        let outcome = self.await_replies(stop);
        self.node.broker.release_earlier();
        // Kept as it stands at the end (stopped, nothing awaited, or failed), whatever
        // the time since the last write.
        if let Err(source) = self.save() {
            let path = self.node.data.late_replies();
            log::error!(
                "{}: cannot keep the late replies awaited as this process ends ({source}): a restart of this node would await those of the last write",
                path.display()
            );
            if outcome.is_ok() {
                // Tried again at the restart.
                return Err(Failure::retry(Error::StoreReplies { path, source }));
            }
        }
        outcome
    }
}

impl LateReplies {
    pub fn new(node: Arc<Node>, state: Arc<State>) -> LateReplies {
        LateReplies {
            node,
            state,
            listened: None,
            saved: None,
            save_tried: None,
            save_failing: false,
            stopping: false,
            reconnected: None,
            looked: None,
        }
    }

    /// At the node's stop, once its processes have ended (or the grace period has: a
    /// publisher still running may give a message up after this, and that one is not kept
    /// on disk), and unless the `late replies` process still runs: the replies that came but are
    /// not kept yet (a full disk; the process may be waiting for its restart) are tried
    /// once more, and each that still cannot be kept is said to be lost, reported, and no
    /// longer awaited, rather than dropped unseen and awaited again at the next start,
    /// where "no reply came" would be said of a command that ran. Then the table is kept.
    pub fn at_stop(node: Arc<Node>) {
        let late = node.broker.late.clone();
        let mut process = LateReplies::new(node, Arc::default());
        process.stopping = true;
        for _ in 0..late.messages.len() {
            let Ok((came, msg)) = late.messages.try_recv() else {
                break;
            };
            let _ = process.take(came, msg);
        }
        if let Err(e) = process.save() {
            log::error!(
                "{}: cannot keep the late replies awaited at this stop ({e}): the next start awaits those of the last write",
                process.node.data.late_replies().display()
            );
        }
    }

    fn await_replies(&mut self, stop: &Receiver<()>) -> Result<(), Failure> {
        let late = self.node.broker.late.clone();
        let reconnects = self.node.broker.reconnects();
        loop {
            let (expired, next) = late.expire(Instant::now());
            for given_up in expired {
                let_go(&self.node, &given_up);
            }
            let Some(next) = next else {
                return Ok(()); // nothing awaited: started again when something is
            };
            // Kept first: listening may wait for the node's first connection.
            if self.save_due().is_some_and(|at| at <= Instant::now()) {
                self.save_or_say();
            }
            if !self.listen(stop)? {
                return Ok(()); // stopped before the node ever connected
            }
            let look_at = self.looked.map_or_else(Instant::now, |at| at + ASK_LOOK);
            if look_at <= Instant::now() {
                self.ask_again();
            }
            let save_at = self.save_due().unwrap_or(next);
            let look_at = self.looked.map_or(next, |at| at + ASK_LOOK);
            self.state.set(format!(
                "awaiting the late replies of {} message(s) given up",
                late.len()
            ));
            select! {
                recv(late.messages) -> msg => {
                    let Ok((came, msg)) = msg else { return Ok(()) };
                    self.take(came, msg)?;
                },
                // One more awaited: said, and its deadline may be the next.
                recv(late.added) -> _ => {},
                recv(reconnects) -> _ => self.reconnected = Some(Instant::now()),
                recv(stop) -> _ => return Ok(()),
                recv(crossbeam_channel::at(next.min(save_at).min(look_at))) -> _ => {},
            }
        }
    }

    /// Listens on the inboxes of earlier runs the table names (see the module docs), once
    /// the node has a connection: false if stopped while waiting for one.
    fn listen(&mut self, stop: &Receiver<()>) -> Result<bool, Failure> {
        let broker = &self.node.broker;
        let changes = broker.late.changes();
        if self.listened == Some(changes) {
            return Ok(true);
        }
        let conn = match broker.get() {
            Some(conn) => conn,
            None => match broker.wait(stop) {
                Some(conn) => conn,
                None => return Ok(false),
            },
        };
        broker
            .listen_earlier(&conn)
            .map_err(|source| Failure::retry(Error::Subscribe { source }))?;
        self.listened = Some(changes);
        Ok(true)
    }

    /// Asks the nodes of the messages awaited again for their replies, where it is due
    /// ([`ask_due`], and see [`crate::methods::reply_again`]). The answer comes on the
    /// message's reply subject, and is taken as any late reply, bound to the ask's
    /// signature; a node that does not know the message, or still runs it, gives no answer,
    /// and one whose version has no `ReplyAgain` answers "no responders".
    fn ask_again(&mut self) {
        let now = Instant::now();
        self.looked = Some(now);
        let node = &self.node;
        if !node.broker.is_up() {
            return; // asked once it is up again (a reconnect)
        }
        let reconnected = self.reconnected;
        let asks = node.broker.late.asks_due(|to, asked| {
            let (hello, started) = node.presence.heard(to);
            ask_due(now, asked, reconnected, hello, started)
        });
        for ask in asks {
            match self.ask(&ask) {
                Ok(sig) => {
                    log::debug!(
                        "{}: asked {} again for the reply of {}",
                        ask.lane,
                        ask.lane.node,
                        ask.id
                    );
                    node.broker.late.asked(&ask, sig, now);
                }
                // Asked at the next look.
                Err(e) => log::debug!(
                    "{}: cannot ask again for the reply of {}: {e}",
                    ask.lane,
                    ask.id
                ),
            }
        }
    }

    /// Sends `ask`: a `ReplyAgain` with the message's id, from this node, to its node,
    /// answered on its reply subject. Its signature, which the answer is bound to.
    fn ask(&self, ask: &Ask) -> io::Result<String> {
        let (config, broker) = (&self.node.config, &self.node.broker);
        let to = &ask.lane.node;
        let subject = Subject::new(to, Kind::CommandAck, reply_again::NAME)
            .map_err(io::Error::other)?
            .to_string();
        let envelope = Envelope {
            id: ask.id.clone(),
            from_node: config.node.clone(),
            accepted: crate::files::unix_millis(),
            reply_ticket: None,
            grant: None,
            message: Message::new(to, Kind::CommandAck, reply_again::NAME, Vec::new()),
        };
        broker.publish(
            &self.node.identity,
            Scope::request(&subject, Some(&ask.reply_subject)),
            &envelope.encode(),
            Covers::Payload,
            crate::broker::Confirm::ByAnswer,
        )
    }

    /// When the table is next to be kept on disk: none, it is as kept.
    fn save_due(&self) -> Option<Instant> {
        if self.saved == Some(self.node.broker.late.changes()) {
            return None;
        }
        Some(
            self.save_tried
                .map_or_else(Instant::now, |at| at + SAVE_EVERY),
        )
    }

    /// Keeps the table in `late-replies.json` if it changed since it was last kept.
    fn save(&mut self) -> io::Result<()> {
        let late = &self.node.broker.late;
        let changes = late.changes();
        if self.saved == Some(changes) {
            return Ok(());
        }
        self.save_tried = Some(Instant::now());
        store(&self.node.data.late_replies(), &late.awaited())?;
        self.saved = Some(changes);
        Ok(())
    }

    /// [`LateReplies::save`], a failure (a full disk) said once and tried again a second
    /// later: the table itself stays in memory, and replies are kept meanwhile.
    fn save_or_say(&mut self) {
        let path = self.node.data.late_replies();
        match self.save() {
            Ok(()) if std::mem::take(&mut self.save_failing) => {
                log::info!("{}: the late replies awaited are kept again", path.display());
            }
            Ok(()) => {}
            Err(e) if !std::mem::replace(&mut self.save_failing, true) => log::error!(
                "{}: cannot keep the late replies awaited ({e}): tried again each second; until then a restart of this node would await those of the last write",
                path.display()
            ),
            Err(_) => {}
        }
    }

    /// Reads back the messages an earlier run awaited late replies for
    /// (`late-replies.json`) and awaits them again: whether anything is awaited. Those whose
    /// time is over are let go, as they would have been; an entry that is not one steward
    /// wrote (another node's inbox, not a command) is said and let go, and the file set
    /// aside as it stood.
    pub fn load(node: &Node) -> bool {
        let path = node.data.late_replies();
        // Said to the central error logger too: what it awaited is not, and a command that
        // runs there may be sent again from failed-messages.txt.
        let unreadable = |why: String| {
            let so = "so the late replies it awaited are not awaited: check the reply files before sending a failed message again";
            crate::files::set_aside(&path, &why, so);
            node.report_error(format!(
                "{}: unreadable ({why}); set aside, {so}",
                path.display()
            ));
            false
        };
        let bytes = match crate::files::read_small(&path, MAX_FILE, false) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(e) => return unreadable(e.to_string()),
        };
        let (now, wall) = (Instant::now(), SystemTime::now());
        let (awaited, refused) = match decode(&bytes, &node.config.node, now, wall) {
            Ok(decoded) => decoded,
            Err(e) => return unreadable(e.to_string()),
        };
        if !refused.is_empty() {
            for why in &refused {
                log::error!("{}: {why}", path.display());
            }
            // As it stood, for an operator; the rest is written back below.
            let so = "the rest awaited again";
            let why = format!("{} of its entries not steward's", refused.len());
            crate::files::set_aside_saying(&path, &why, so);
            node.report_error(format!(
                "{}: {why} (the first: {}); set aside, {so}",
                path.display(),
                refused[0]
            ));
        }
        let mut any = false;
        for given_up in awaited {
            if given_up.until <= now {
                let_go(node, &given_up);
                continue;
            }
            let (lane, id) = (given_up.lane.clone(), given_up.id.clone());
            match node.broker.late.awaits_again(given_up) {
                Ok(()) => any = true,
                Err(full) => {
                    log::warn!("{lane}: the late reply of {id} is no longer awaited: {full}")
                }
            }
        }
        if any {
            log::info!(
                "awaiting the late replies of {} message(s) given up before this start",
                node.broker.late.len()
            );
        }
        if !any || !refused.is_empty() {
            // Nothing awaited (all over): no file, which would be read again at every
            // start. Or some refused: the rest kept now, not at the process's first write,
            // which may come after a power cut.
            if let Err(e) = store(&path, &node.broker.late.awaited()) {
                log::error!("{}: cannot write it again: {e}", path.display());
            }
        }
        any
    }

    /// Checks `msg`, which came at `came`, against the message it answers and keeps it. A
    /// reply that cannot be kept (a full disk) goes back into the queue and the process
    /// fails: restarted, it tries again. Unless the node stops ([`LateReplies::at_stop`]):
    /// then it is said to be lost, and no longer awaited.
    fn take(&mut self, came: Instant, msg: nats::Message) -> Result<(), Failure> {
        let late = &self.node.broker.late;
        let Some(given_up) = late.taken(&msg) else {
            return Ok(()); // kept already (a retry's copy answered too), or let go
        };
        if msg.is_no_responders() {
            return Ok(());
        }
        let to = &given_up.lane.node;
        let reply = check_reply(&self.node, to, &msg, given_up.sigs.iter())
            .and_then(|()| reply_of(&msg.data, &given_up.id, to));
        let reply = match reply {
            Ok(reply) => reply,
            Err(why) => {
                // Still awaited: a forged reply must not stand in for the real one. Said
                // once a message: a flood of forgeries is not a flood of lines.
                if late.first_not_an_answer(&msg.subject) {
                    log::warn!("{}: ignoring a late reply: {why}", given_up.lane);
                }
                return Ok(());
            }
        };
        let path = self.node.data.replies(to, &given_up.lane.method);
        if late.read_back(&msg.subject) && self.kept_already(&given_up, &path) {
            late.answered(&msg.subject);
            self.save_or_say();
            return Ok(());
        }
        let (happened, then) = after_all(&reply);
        if let Err(source) = self.keep(&given_up, &reply, came, then, &path) {
            if self.stopping {
                late.answered(&msg.subject); // not to be awaited at the next start
                self.node.report_error(format!(
                    "{}: the late reply of {} came ({happened} {to} after all: {:?}) but cannot be kept in {} ({source}) before this node stops: lost; it is still in {}: {then}",
                    given_up.lane,
                    given_up.id,
                    reply.status,
                    path.display(),
                    self.node.data.failed().display()
                ));
                return Ok(());
            }
            log::warn!(
                "{}: the late reply of {} came ({happened} {to} after all) but cannot be kept in {} yet ({source}): kept once there is room, unless this node stops first",
                given_up.lane,
                given_up.id,
                path.display()
            );
            if !late.requeue(came, &msg) {
                log::error!(
                    "{}: the late reply of {} cannot be kept, nor queued again: lost",
                    given_up.lane,
                    given_up.id
                );
            }
            return Err(Failure::retry(Error::StoreReplies { path, source }));
        }
        late.answered(&msg.subject);
        // Kept at once, not within the second: awaited again after a kill -9, the same
        // reply sent again (by its node, or by a listener on an open broker) would be kept
        // twice. Answers are few; a fan-out's give-ups are what the second is for.
        self.save_or_say();
        self.node
            .metrics
            .late_replies
            .with_label_values(&[given_up.lane.method.as_str()])
            .inc();
        self.node.report_error(format!(
            "{}: {} was given up {}s ago ({}), and {happened} {to} after all: {:?}{}: {}; its reply kept in {}; it is still in {}: {then}",
            given_up.lane,
            given_up.id,
            given_up.at.elapsed().as_secs(),
            given_up.why,
            reply.status,
            reply
                .exit_code
                .map(|c| format!(" exit {c}"))
                .unwrap_or_default(),
            // The receiver's text, escaped as the publisher's own line of a reply is.
            crate::files::escape_controls(super::finish::first_line(&reply.output)),
            path.display(),
            self.node.data.failed().display()
        ));
        Ok(())
    }

    /// Whether the reply to `given_up`, awaited again at this start, was kept in `path`
    /// before it (the earlier run stopped, a kill -9 or a power cut, between keeping it
    /// and writing the table without it): then its node's answer to this run's ask is the
    /// same reply, not to be kept twice. Looked for among the file's last records (written
    /// just before that stop, only what this run kept since after them); a file that
    /// cannot be read keeps it (twice rather than lost).
    fn kept_already(&self, given_up: &GivenUp, path: &std::path::Path) -> bool {
        match crate::resumed::holds_reply(path, &given_up.id, KEPT_LOOK_BACK) {
            Ok(true) => {
                log::info!(
                    "{}: the late reply of {} is in {} already (kept before this node's last stop): not kept again",
                    given_up.lane,
                    given_up.id,
                    path.display()
                );
                true
            }
            Ok(false) => false,
            Err(e) => {
                log::warn!(
                    "{}: cannot look for the late reply of {} in {} ({e}): kept, maybe twice",
                    given_up.lane,
                    given_up.id,
                    path.display()
                );
                false
            }
        }
    }

    /// Appends `reply`, which came at `came`, to the lane's reply file, with a last line
    /// that says it came late.
    fn keep(
        &self,
        given_up: &GivenUp,
        reply: &Reply,
        came: Instant,
        then: &str,
        path: &std::path::Path,
    ) -> io::Result<()> {
        let mut reply = reply.clone();
        if !reply.output.is_empty() && !reply.output.ends_with('\n') {
            reply.output.push('\n');
        }
        reply.output.push_str(&format!(
            "[steward: this reply came {}s after the message was given up ({}); the message is in failed-messages.txt: {then}]\n",
            came.saturating_duration_since(given_up.at).as_secs(),
            given_up.why
        ));
        let mut record = String::new();
        reply_record(
            &mut record,
            &crate::files::now_rfc3339(),
            &given_up.id,
            &reply,
        );
        let limits = &self.node.log_budget.limits;
        crate::files::append_rotating(path, record.as_bytes(), limits.rotate_at, limits.keep)
    }
}

/// Says that `given_up` is no longer awaited: its time is over.
fn let_go(node: &Node, given_up: &GivenUp) {
    log::info!(
        "{}: no reply was heard for {} within {}s of its being given up; it stays in {}",
        given_up.lane,
        given_up.id,
        given_up
            .until
            .saturating_duration_since(given_up.at)
            .as_secs(),
        node.data.failed().display()
    );
}

/// Writes `awaited` to `path` (`late-replies.json`), or removes it if nothing is awaited.
/// On a full disk, where the new file cannot be made, a table that shrank (a reply kept,
/// or said lost at a stop) is written over the old one in place, in blocks it already has:
/// otherwise the next start would await again what came (a power cut in that write leaves
/// a file the start sets aside, and reports).
fn store(path: &std::path::Path, awaited: &[GivenUp]) -> io::Result<()> {
    if !awaited.is_empty() {
        let bytes = encode(awaited, Instant::now(), SystemTime::now());
        return match crate::files::write_atomically(path, &bytes) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                overwrite_shrinking(path, &bytes).map_err(|_| e)
            }
            written => written,
        };
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        removed => removed.and_then(|()| {
            crate::files::sync_dir(path.parent().unwrap_or(std::path::Path::new(".")))
        }),
    }
}

/// Writes `bytes` over `path` from its start and cuts it to their length, if it is no
/// shorter than they are.
fn overwrite_shrinking(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if file.metadata()?.len() < bytes.len() as u64 {
        return Err(io::Error::other("it would grow"));
    }
    file.write_all_at(bytes, 0)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_data()
}

/// Most signatures an entry may hold (a send's last few and the one a listener took), and
/// most bytes of why it was given up: what steward writes is well within both.
const MAX_SIGS: usize = 16;
const MAX_WHY: usize = 16 << 10;

/// A message given up as `late-replies.json` keeps it: its times on the wall clock (ms
/// since the epoch), the rest as [`GivenUp`] holds it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Saved {
    lane: String,
    id: String,
    reply_subject: String,
    sigs: Vec<String>,
    why: String,
    given_up_at: u64,
    until: u64,
}

/// The table as `late-replies.json` holds it: an array, a message a line, `now` and
/// `wall` the same moment on either clock.
fn encode(awaited: &[GivenUp], now: Instant, wall: SystemTime) -> Vec<u8> {
    let wall_ms = |at: Instant| {
        let wall_at = match at.checked_duration_since(now) {
            Some(ahead) => wall + ahead,
            None => wall
                .checked_sub(now.duration_since(at))
                .unwrap_or(SystemTime::UNIX_EPOCH),
        };
        wall_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let lines: Vec<String> = awaited
        .iter()
        .map(|g| {
            let saved = Saved {
                lane: g.lane.to_string(),
                id: g.id.clone(),
                reply_subject: g.reply_subject.clone(),
                sigs: g.sigs.clone(),
                why: g.why.clone(),
                given_up_at: wall_ms(g.at),
                until: wall_ms(g.until),
            };
            serde_json::to_string(&saved).expect("plain data")
        })
        .collect();
    format!("[\n{}\n]\n", lines.join(",\n")).into_bytes()
}

/// The table back from `bytes`, for node `node` (`now` and `wall` the same moment on
/// either clock): what is awaited, and why each entry that is not steward's was refused.
fn decode(
    bytes: &[u8],
    node: &str,
    now: Instant,
    wall: SystemTime,
) -> Result<(Vec<GivenUp>, Vec<String>), serde_json::Error> {
    let saved: Vec<Saved> = serde_json::from_slice(bytes)?;
    let wall_ms = wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // On the monotonic clock: given up as long ago as the wall clocks say (now, if the
    // clock was set back past it since), and awaited as long as the wall clocks leave,
    // never longer than its whole wait (at most a day): a wall clock set back since does
    // not keep it longer, one set forward lets go of those it passed.
    let at_of = |ms: u64| {
        now.checked_sub(Duration::from_millis(wall_ms.saturating_sub(ms)))
            .unwrap_or(now)
    };
    let awaited_for = |at_ms: u64, until_ms: u64| {
        Duration::from_millis(until_ms.saturating_sub(at_ms)).min(crate::broker::LATE_AT_MOST)
    };
    let own_inbox = format!("_INBOX.{node}.");
    let (mut awaited, mut refused) = (Vec::new(), Vec::new());
    for (i, s) in saved.into_iter().enumerate() {
        let lane = match Subject::parse(&s.lane) {
            Ok(lane) if lane.kind.is_command() => lane,
            Ok(lane) => {
                refused.push(format!("entry {i}: {lane} is not a command's lane"));
                continue;
            }
            Err(e) => {
                refused.push(format!("entry {i}: {e}"));
                continue;
            }
        };
        if crate::broker::inbox_of(&s.reply_subject).is_none()
            || !s.reply_subject.starts_with(&own_inbox)
        {
            refused.push(format!(
                "entry {i}: {:?} is not a reply subject of this node's ({own_inbox}<run>.<token>.<n>)",
                s.reply_subject
            ));
            continue;
        }
        let id_ok = !s.id.is_empty()
            && s.id.len() <= crate::message::MAX_ID_LEN
            && s.id.bytes().all(|b| b.is_ascii_graphic());
        if !id_ok {
            refused.push(format!("entry {i}: {:?} is not a message id", s.id));
            continue;
        }
        if s.sigs.is_empty() || s.sigs.len() > MAX_SIGS {
            refused.push(format!(
                "entry {i}: {} signatures to check a reply by (1 to {MAX_SIGS})",
                s.sigs.len()
            ));
            continue;
        }
        if s.why.len() > MAX_WHY || s.why.chars().any(char::is_control) {
            refused.push(format!(
                "entry {i}: why it was given up is over {MAX_WHY} bytes or holds a control character"
            ));
            continue;
        }
        let at = at_of(s.given_up_at);
        awaited.push(GivenUp {
            lane,
            id: s.id,
            reply_subject: s.reply_subject,
            sigs: s.sigs,
            why: s.why,
            at,
            until: now + awaited_for(wall_ms, s.until).min(awaited_for(s.given_up_at, s.until)),
        });
    }
    Ok((awaited, refused))
}

/// What a late reply says happened to its message on its node (said as "… `to` after
/// all"), and what to do with the message, still in failed-messages.txt.
fn after_all(reply: &Reply) -> (&'static str, &'static str) {
    if reply.interrupted {
        (
            "was interrupted on",
            "it was interrupted there, perhaps done in part or whole: check before sending it again",
        )
    } else if reply.status == Status::Refused {
        (
            "was refused by",
            "it was refused there: fix the cause, then send it again",
        )
    } else if reply.status == Status::Error {
        (
            "could not be run on",
            "it could not run there (see the reply): fix the cause, then send it again",
        )
    } else {
        ("ran on", "it ran: do not send it again")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(json: &str) -> Reply {
        Reply::decode(json.as_bytes()).unwrap()
    }

    fn close(a: Instant, b: Instant) -> bool {
        a.max(b).duration_since(a.min(b)) < Duration::from_millis(2)
    }

    #[test]
    fn a_node_is_asked_again_at_a_start_a_reconnect_its_restart_a_dropped_answer_and_each_minute() {
        use crate::broker::Asked;
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let asked = |s: u64| Asked {
            at: Some(at(s)),
            dropped: false,
        };
        let never = Asked {
            at: None,
            dropped: false,
        };
        // Read back at this start: at once, whatever else.
        assert!(ask_due(at(0), never, None, None, None));
        // Asked at 10 s, its node heard at 20 s: not again within the minute, unless this
        // node reconnected, its node restarted, or an answer was dropped, each after the
        // ask; and never within ASK_AGAIN_AFTER of it.
        let hello = Some(at(20));
        assert!(!ask_due(at(30), asked(10), None, hello, None));
        assert!(!ask_due(at(30), asked(10), Some(at(5)), hello, Some(at(5))));
        assert!(ask_due(at(30), asked(10), Some(at(11)), hello, None));
        assert!(ask_due(at(30), asked(10), None, hello, Some(at(11))));
        let dropped = Asked {
            dropped: true,
            ..asked(10)
        };
        assert!(ask_due(at(30), dropped, None, hello, None));
        let soon = at(10) + ASK_AGAIN_AFTER - Duration::from_millis(1);
        assert!(!ask_due(soon, dropped, Some(at(11)), hello, Some(at(11))));
        // Each minute while its node says Hello; never while it is silent since the ask (down).
        let minute = at(10) + ASK_EVERY;
        assert!(ask_due(minute, asked(10), None, hello, None));
        assert!(!ask_due(minute, asked(10), None, Some(at(9)), None));
        // A node this one hears no Hello from at all (not central): each minute.
        assert!(!ask_due(at(30), asked(10), None, None, None));
        assert!(ask_due(minute, asked(10), None, None, None));
    }

    #[test]
    fn the_table_kept_on_disk_is_awaited_again_as_it_was_on_both_clocks() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let given_up = GivenUp {
            lane: Subject::parse("ship1.CommandACK.CLICommand").unwrap(),
            id: "central-1".into(),
            reply_subject: "_INBOX.central.AbC1.tok9.1".into(),
            sigs: vec!["sig1".into(), "sig2".into()],
            why: "not delivered: 1 attempt failed".into(),
            at: now.checked_sub(Duration::from_secs(30)).unwrap_or(now),
            until: now + Duration::from_secs(3600),
        };
        let bytes = encode(std::slice::from_ref(&given_up), now, wall);
        // Read back by a run started 10 s later.
        let later = Duration::from_secs(10);
        let (back, refused) = decode(&bytes, "central", now + later, wall + later).unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        let [back] = &back[..] else {
            panic!("{back:?}")
        };
        assert_eq!(
            (
                &back.lane,
                &back.id,
                &back.reply_subject,
                &back.sigs,
                &back.why
            ),
            (
                &given_up.lane,
                &given_up.id,
                &given_up.reply_subject,
                &given_up.sigs,
                &given_up.why
            )
        );
        assert!(close(back.at, given_up.at), "{back:?}");
        assert!(close(back.until, given_up.until), "{back:?}");
        // A wall clock set back by a week since: given up now, awaited as long as it was
        // to be from then.
        let week = Duration::from_secs(7 * 24 * 3600);
        let (back, _) = decode(&bytes, "central", now, wall - week).unwrap();
        assert!(close(back[0].at, now), "{back:?}");
        assert!(
            close(back[0].until, now + Duration::from_secs(3630)),
            "{back:?}"
        );
        // ... set forward by a week: long over.
        let (back, _) = decode(&bytes, "central", now, wall + week).unwrap();
        assert!(back[0].until <= now, "{back:?}");
    }

    #[test]
    fn entries_of_the_table_that_are_not_steward_s_are_refused_saying_why() {
        let entry = |lane: &str, subject: &str, sigs: &str| {
            format!(
                r#"{{"lane":"{lane}","id":"central-1","replySubject":"{subject}","sigs":[{sigs}],"why":"w","givenUpAt":1,"until":2}}"#
            )
        };
        let cmd = "ship1.CommandACK.CLICommand";
        let file = format!(
            "[{},{},{},{},{},{}]",
            entry(cmd, "_INBOX.central.AbC1.tok9.1", r#""s""#),
            entry(cmd, "_INBOX.ship2.AbC1.tok9.1", r#""s""#),
            entry(cmd, "_INBOX.central.>", r#""s""#),
            entry(cmd, "ship1.CommandACK.CLICommand.x.y", r#""s""#),
            entry(
                "ship1.EventACK.TextLogging",
                "_INBOX.central.AbC1.tok9.2",
                r#""s""#
            ),
            entry(cmd, "_INBOX.central.AbC1.tok9.3", ""),
        );
        let (now, wall) = (Instant::now(), SystemTime::now());
        let (awaited, refused) = decode(file.as_bytes(), "central", now, wall).unwrap();
        assert_eq!(awaited.len(), 1);
        assert_eq!(refused.len(), 5, "{refused:?}");
        assert!(refused[0]
            .contains("\"_INBOX.ship2.AbC1.tok9.1\" is not a reply subject of this node's"));
        assert!(
            refused[1].contains("\"_INBOX.central.>\" is not a reply subject"),
            "{refused:?}"
        );
        assert!(
            refused[3].contains("is not a command's lane"),
            "{refused:?}"
        );
        assert!(refused[2].contains("is not a reply subject"), "{refused:?}");
        assert!(refused[4].contains("0 signatures"), "{refused:?}");
        // Long over (given up in 1970): read back, let go by the loader.
        assert!(awaited[0].until <= now);
        // An id, signatures or a why steward does not write.
        let subject = "_INBOX.central.AbC1.tok9.1";
        let sigs = vec![r#""s""#; MAX_SIGS + 1].join(",");
        let odd = [
            entry(cmd, subject, r#""s""#).replace("central-1", "central\u{202e}1"),
            entry(cmd, subject, &sigs),
            entry(cmd, subject, r#""s""#).replace(r#""why":"w""#, r#""why":"a\nb""#),
        ];
        let (awaited, refused) = decode(
            format!("[{}]", odd.join(",")).as_bytes(),
            "central",
            now,
            wall,
        )
        .unwrap();
        assert!(awaited.is_empty(), "{awaited:?}");
        assert!(refused[0].contains("is not a message id"), "{refused:?}");
        assert!(refused[1].contains("17 signatures"), "{refused:?}");
        assert!(refused[2].contains("control character"), "{refused:?}");
        // Not the table at all, or an entry with a field steward does not write.
        assert!(decode(b"{\"lane\":1}", "central", now, wall).is_err());
        let extra =
            entry(cmd, "_INBOX.central.A.t.1", r#""s""#).replace("\"why\"", "\"run\":1,\"why\"");
        assert!(decode(format!("[{extra}]").as_bytes(), "central", now, wall).is_err());
    }

    #[test]
    fn a_late_reply_says_what_happened_and_what_to_do_with_the_message() {
        let ran = reply(r#"{"id":"a","fromNode":"ship1","status":"ok","exitCode":3}"#);
        assert_eq!(after_all(&ran), ("ran on", "it ran: do not send it again"));
        let refused = reply(r#"{"id":"a","fromNode":"ship1","status":"refused"}"#);
        assert!(after_all(&refused)
            .1
            .contains("fix the cause, then send it again"));
        let error = reply(r#"{"id":"a","fromNode":"ship1","status":"error"}"#);
        assert_eq!(after_all(&error).0, "could not be run on");
        let interrupted =
            reply(r#"{"id":"a","fromNode":"ship1","status":"error","interrupted":true}"#);
        assert!(after_all(&interrupted)
            .1
            .contains("check before sending it again"));
    }
}
