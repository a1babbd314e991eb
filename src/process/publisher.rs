//! The publisher: one process per destination subject, or lane
//! (`ship1.CommandACK.CLICommand`), spawned on demand by the supervisor. It takes its lane's
//! messages from the journal when it is ready for them (woken when new ones are journaled)
//! and delivers them one at a time, in order.
//!
//! ACK kinds are sent with a reply subject unique to the message (`<inbox>.<seq>`; one
//! wildcard subscription per publisher), so no other message's reply can satisfy it, and
//! retried until the receiver answers: an attempt lasts `timeout` seconds (also when the
//! broker says at once that nobody listens), then a growing pause, up to `retries` attempts
//! after the first. NACK kinds are published once. A reply counts only if it is signed by a
//! key this node trusts for the destination, over the signature of one of this message's
//! own attempts ([`Publisher::check_reply`]); anything else is passed over, so neither a
//! stranger nor another fleet member can answer for the destination. A reply that cannot
//! be stored (a full disk) leaves the message unfinished: it is sent again, and the
//! receiver answers from its stored reply without running anything twice. How a message
//! ended (its reply, failed-messages.txt, its message-log.txt line) is on disk before the
//! journal records it as finished; a message whose finish record a power cut took is
//! recognised at the next start, and neither sent nor stored again ([`crate::resumed`]).
//!
//! Events (EventACK) queued together travel together: when more than one is waiting, the
//! publisher sends up to [`MAX_BATCH`] of them, in order, as one batch, and the receiver
//! runs them in order and answers with all their replies at once, writing its records once
//! per batch rather than once per message. That is what lets a journaled, fsync'd,
//! exactly-once event stream keep up with bare NATS request/reply. If a batch does not go
//! through (no ACK, nobody listening, an old receiver), the publisher falls back to one
//! message at a time, with each message's own retries, until one is ACKed again. Commands
//! always go one at a time: each has its own deadline and its output.
//!
//! The messages being delivered sit in a slot the supervisor keeps across restarts, so a
//! publisher that fails mid-delivery resumes with the same messages, ahead of the rest.

use super::{sleep_or_stop, Failure, Process, State};
use crate::journal::Entry;
use crate::keys::{Scope, Unverified};
use crate::message::{DecodeError, Reply, Status, MAX_BATCH, MAX_BATCH_BYTES};
use crate::node::{Node, Progress};
use crate::retry::{self, Next, Rules};
use crate::subject::Subject;
use crossbeam_channel::{select, Receiver};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The messages a publisher is working on, kept by the supervisor across restarts.
pub type InFlight = Arc<Mutex<Slot>>;

/// The messages a publisher is working on, in order, and what it has kept of their ends.
#[derive(Default)]
pub struct Slot {
    entries: Vec<Entry>,
    /// Ids whose reply, or failed-messages.txt record, is written and whose finish is not:
    /// a publisher restarted in between (a full disk) does not write them again.
    replies_written: HashSet<String>,
    failed_written: HashSet<String>,
}

impl Slot {
    /// The first `n` messages are finished: out of the slot.
    fn done(&mut self, n: usize) {
        for e in self.entries.drain(..n) {
            self.replies_written.remove(&e.envelope.id);
            self.failed_written.remove(&e.envelope.id);
        }
    }
}

pub struct Publisher {
    pub subject: Subject,
    pub node: Arc<Node>,
    /// Rings when messages for this lane have been journaled.
    pub wake: Receiver<()>,
    pub in_flight: InFlight,
    pub state: Arc<State>,
}

/// How one attempt ended.
enum Attempt<T> {
    Acked(T),
    Failed(String),
    Stopped,
}

/// How delivering one message ended.
enum Delivery {
    Acked(Reply),
    Published,
    Failed(String),
    /// The node is stopping; the message stays in the journal for the next start.
    Stopped,
}

/// Why a publisher failed. Each is a retry: the messages stay in the slot, and the
/// restarted publisher sends them again (a receiver answers a message it ran from its
/// stored reply, running nothing twice). A full disk is the usual one.
#[derive(Debug)]
pub enum Error {
    /// The subscription for replies could not be made (the connection dropped).
    Subscribe { subject: String, source: io::Error },
    /// The lane's messages could not be read from the journal.
    Journal { lane: Subject, source: io::Error },
    /// Replies could not be stored in `path`.
    StoreReplies { path: PathBuf, source: io::Error },
    /// Messages not delivered could not be kept in failed-messages.txt (`path`).
    KeepFailed { path: PathBuf, source: io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The subject (this publisher's own inbox) says nothing to an operator.
            Error::Subscribe { source, .. } => write!(f, "cannot subscribe to replies: {source}"),
            Error::Journal { lane, source } => {
                write!(
                    f,
                    "cannot read {lane}'s messages from the journal: {source}"
                )
            }
            Error::StoreReplies { path, source } => {
                write!(f, "cannot store replies in {}: {source}", path.display())
            }
            Error::KeepFailed { path, source } => write!(
                f,
                "cannot keep failed messages in {}: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Subscribe { source, .. }
            | Error::Journal { source, .. }
            | Error::StoreReplies { source, .. }
            | Error::KeepFailed { source, .. } => Some(source),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::retry(e)
    }
}

/// Why a message on a publisher's reply subject does not answer the message (or batch)
/// being sent: it is passed over, and said in the log and in how the attempt ended.
#[derive(Debug)]
enum NotAnAnswer {
    /// Signed with `key`, and this node trusts no key for the destination `to`.
    UnknownSender {
        node: String,
        to: String,
        key: String,
    },
    /// Not signed.
    Unsigned { to: String },
    /// Signed, and not by the destination over one of this message's attempts.
    NotOurs(Unverified),
    /// Not a reply (or not a batch's replies).
    Undecodable(DecodeError),
    /// A reply to another message.
    OtherId { got: String, want: String },
    /// A batch's replies that are not this batch's (`got` of them for `want`).
    NotTheBatch { got: usize, want: usize },
}

impl fmt::Display for NotAnAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotAnAnswer::UnknownSender { node, to, key } => write!(
                f,
                "{node} trusts no key for {to}, so its reply cannot be verified; if {key} is {to}'s key (`steward keys show` on {to}), run on {node}: steward keys trust {to} {key}"
            ),
            NotAnAnswer::Unsigned { to } => write!(f, "{}: not from {to}", Unverified::Unsigned),
            NotAnAnswer::NotOurs(e) => {
                write!(f, "{e} (not a reply to this message's attempts)")
            }
            NotAnAnswer::Undecodable(e) => write!(f, "{e}"),
            NotAnAnswer::OtherId { got, want } => {
                write!(f, "a reply for {got} while waiting for {want}")
            }
            NotAnAnswer::NotTheBatch { got, want } => {
                write!(f, "{got} replies that do not match the batch of {want}")
            }
        }
    }
}

impl Process for Publisher {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), Failure> {
        self.state.set("waiting for the broker");
        let Some(conn) = self.node.broker.wait(stop) else {
            return Ok(());
        };
        // Replies come back under this node's own inbox prefix, so a broker can let each
        // node read only its own replies (`_INBOX.<node>.>`; see the confined config).
        let inbox = format!(
            "_INBOX.{}.{}",
            self.node.config.node,
            conn.new_inbox().trim_start_matches("_INBOX.")
        );
        let subject = format!("{inbox}.*");
        let replies = conn
            .subscribe(&subject)
            .map_err(|source| Error::Subscribe { subject, source })?;
        // Off after a batch fails, until a message gets through alone again.
        let mut batching = true;
        let kind = self.subject.kind;
        let batchable = kind.wants_ack() && !kind.is_command();
        loop {
            let want = if batching && batchable { MAX_BATCH } else { 1 };
            let slot = self.take(want)?;
            if slot.is_empty() {
                self.state.set("idle");
                select! {
                    recv(self.wake) -> woken => if woken.is_err() { return Ok(()) },
                    recv(stop) -> _ => return Ok(()),
                }
                continue;
            }
            let (fits, payload) = if batching && batchable && slot.len() > 1 {
                batch_of(&slot, conn.max_payload())
            } else {
                (1, Vec::new())
            };
            if fits > 1 {
                let batch = &slot[..fits];
                // Its own reply subject: a late batch reply never meets a single attempt.
                let reply_subject = format!("{inbox}.b{}", batch[0].seq);
                match self.deliver_batch(&replies, &reply_subject, batch, &payload, stop) {
                    Attempt::Acked(acked) => {
                        let done: Vec<_> = batch
                            .iter()
                            .zip(acked)
                            .map(|(e, r)| (e, Delivery::Acked(r)))
                            .collect();
                        self.finish(done)?;
                        self.slot().done(fits);
                        continue;
                    }
                    Attempt::Stopped => return Ok(()),
                    Attempt::Failed(why) => {
                        log::warn!(
                            "{}: a batch of {fits} did not go through ({why}); sending one at a time",
                            self.subject
                        );
                        batching = false;
                    }
                }
            }
            let entry = &slot[0];
            let delivery = if kind.wants_ack() {
                self.deliver_acked(&replies, &format!("{inbox}.{}", entry.seq), entry, stop)
            } else {
                self.publish_once(entry, stop)
            };
            match delivery {
                Delivery::Stopped => return Ok(()),
                Delivery::Acked(_) => batching = true,
                _ => {}
            }
            // If what must be kept cannot be written, fail: the supervisor restarts this
            // publisher and the message, still in its slot, is tried again.
            self.finish(vec![(entry, delivery)])?;
            self.slot().done(1);
        }
    }
}

/// A reply as replies/<node>.<method>.log keeps it.
fn reply_record(envelope: &crate::message::Envelope, reply: &Reply) -> String {
    format!(
        "=== {} id={} from={} status={:?}{}\n{}{}",
        crate::files::now_rfc3339(),
        envelope.id,
        reply.from_node,
        reply.status,
        reply
            .exit_code
            .map(|c| format!(" exit={c}"))
            .unwrap_or_default(),
        reply.output,
        if reply.output.ends_with('\n') || reply.output.is_empty() {
            ""
        } else {
            "\n"
        }
    )
}

/// The first messages in `slot` that fit in one batch under the broker's payload limit
/// (at least one): how many, and the batch's wire form, each envelope encoded once.
fn batch_of(slot: &[Entry], max_payload: usize) -> (usize, Vec<u8>) {
    let limit = MAX_BATCH_BYTES.min(if max_payload > 0 {
        max_payload
    } else {
        MAX_BATCH_BYTES
    }) - 4096;
    let mut payload = vec![b'['];
    let mut count = 0;
    for entry in slot {
        let encoded = entry.envelope.encode();
        if count > 0 && payload.len() + encoded.len() + 2 > limit {
            break;
        }
        if count > 0 {
            payload.push(b',');
        }
        payload.extend_from_slice(&encoded);
        count += 1;
    }
    payload.push(b']');
    (count, payload)
}

impl Publisher {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot topped up from the journal to `want` messages (if that many wait), and
    /// reports any the journal could not read back. Resumed messages the last run finished
    /// though a power cut took the record of it are finished at once, not sent again (see
    /// [`crate::resumed`]).
    fn take(&self, want: usize) -> Result<Vec<Entry>, Error> {
        let mut slot = self.slot();
        let mut unreadable = Vec::new();
        let mut finished_at_once: Option<(String, usize)> = None;
        while slot.entries.len() < want {
            let mut journal = self.node.journal();
            let more = journal
                .take(&self.subject, want - slot.entries.len())
                .inspect_err(|_| self.node.stop_if_unusable(&journal))
                .map_err(|source| Error::Journal {
                    lane: self.subject.clone(),
                    source,
                })?;
            unreadable.extend(journal.take_unreadable());
            let (finished, more): (Vec<Entry>, Vec<Entry>) = more
                .into_iter()
                .partition(|e| self.node.resumed.finished(e));
            // Into the slot at once: taken messages are in flight until finished.
            slot.entries.extend(more);
            let Some(first) = finished.first() else {
                break;
            };
            let (_, count) = finished_at_once.get_or_insert((first.envelope.id.clone(), 0));
            *count += finished.len();
            let seqs: Vec<u64> = finished.iter().map(|e| e.seq).collect();
            if let Err(e) = journal.finish(&self.subject, &seqs) {
                log::error!(
                    "journal: cannot record messages {seqs:?} of {} as finished: {e}",
                    self.subject
                );
            }
            self.node.metrics.journal(&mut journal);
        }
        let taken = slot.entries.clone();
        drop(slot);
        if let Some((first, count)) = finished_at_once {
            log::info!(
                "{}: {count} message(s) from {first} on were finished before the last stop (listed in {}); not sent again",
                self.subject,
                self.node.data.message_log().display()
            );
        }
        for why in unreadable {
            self.node
                .report_error(format!("{}: {why}", self.node.config.node));
        }
        Ok(taken)
    }

    /// One attempt at a batch (`payload` is its wire form): its replies, in its order, or
    /// why not.
    fn deliver_batch(
        &self,
        replies: &nats::Subscription,
        reply_subject: &str,
        batch: &[Entry],
        payload: &[u8],
        stop: &Receiver<()>,
    ) -> Attempt<Vec<Reply>> {
        let node = &self.node;
        let timeout = batch
            .iter()
            .filter_map(|e| e.envelope.message.timeout.map(Duration::from_secs))
            .max()
            .unwrap_or(node.config.default_timeout);
        let doing = format!(
            "sending {} in a batch of {}",
            batch[0].envelope.id,
            batch.len()
        );
        self.state.set(doing.clone());
        for e in batch {
            let method = e.envelope.message.method.as_str();
            node.metrics.sent.with_label_values(&[method]).inc();
            node.progress(&e.envelope.id, Progress::Attempt(doing.clone()));
        }
        let to = &batch[0].envelope.message.to_node;
        self.attempt(
            replies,
            reply_subject,
            to,
            payload,
            timeout,
            stop,
            false,
            &mut Vec::new(),
            |bytes| {
                let got = Reply::decode_batch(bytes).map_err(NotAnAnswer::Undecodable)?;
                let expected = batch.iter().map(|e| e.envelope.id.as_str());
                if got.len() != batch.len()
                    || !got.iter().map(|r| r.id.as_str()).eq(expected)
                    || got.iter().any(|r| r.from_node != *to)
                {
                    return Err(NotAnAnswer::NotTheBatch {
                        got: got.len(),
                        want: batch.len(),
                    });
                }
                Ok(got)
            },
        )
    }

    fn deliver_acked(
        &self,
        replies: &nats::Subscription,
        reply_subject: &str,
        entry: &Entry,
        stop: &Receiver<()>,
    ) -> Delivery {
        let node = &self.node;
        let message = &entry.envelope.message;
        let method = message.method.as_str();
        let timeout = message
            .timeout
            .map(Duration::from_secs)
            .unwrap_or(node.config.default_timeout);
        // This message's own jitter: after an outage, lanes do not all knock together.
        let jitter =
            (entry.seq ^ u64::from(std::process::id())).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54;
        let mut rules = Rules::new(
            message,
            entry.envelope.accepted,
            node.config.default_retries,
            node.config.default_ttl,
            jitter,
        );
        let payload = entry.envelope.encode();
        let subject = self.subject.to_string();
        let mut sigs = Vec::new();
        loop {
            // While our own link is down, wait for it: an outage here is not the
            // destination's failure and must not spend its retries.
            if node.broker.wait(stop).is_none() {
                return Delivery::Stopped;
            }
            let epoch = node.broker.epoch();
            let attempt = rules.attempt();
            if attempt == 1 {
                node.metrics.sent.with_label_values(&[method]).inc();
            } else {
                node.metrics.retried.with_label_values(&[method]).inc();
            }
            let doing = format!(
                "attempt {attempt}{} of {} (waiting {}s for ACK)",
                rules.describe(crate::files::unix_millis()),
                entry.envelope.id,
                timeout.as_secs()
            );
            node.progress(&entry.envelope.id, Progress::Attempt(doing.clone()));
            self.state.set(doing);
            let id = &entry.envelope.id;
            let accept = |bytes: &[u8]| match Reply::decode(bytes) {
                Ok(reply) if reply.id == *id && reply.from_node == message.to_node => Ok(reply),
                Ok(reply) => Err(NotAnAnswer::OtherId {
                    got: reply.id,
                    want: id.clone(),
                }),
                Err(e) => Err(NotAnAnswer::Undecodable(e)),
            };
            let tried = self.attempt(
                replies,
                reply_subject,
                &message.to_node,
                &payload,
                timeout,
                stop,
                true,
                &mut sigs,
                accept,
            );
            let last_error = match tried {
                Attempt::Acked(reply) => return Delivery::Acked(reply),
                Attempt::Stopped => return Delivery::Stopped,
                Attempt::Failed(why) => why,
            };
            let now = crate::files::unix_millis();
            let described = rules.describe(now);
            let pause = match rules.failed(&last_error, node.broker.epoch() != epoch, now) {
                Next::Again => {
                    log::info!(
                        "{subject}: attempt {attempt} of {} cut short by the broker link; not counted",
                        entry.envelope.id
                    );
                    continue;
                }
                Next::GiveUp(why) => return Delivery::Failed(why),
                Next::Pause(pause) => pause,
            };
            log::warn!(
                "{subject}: attempt {attempt}{described} of {} failed: {last_error}",
                entry.envelope.id
            );
            // Pause before the next attempt; a Hello from the destination ends the pause.
            let hello = node.presence.waiter(&message.to_node);
            select! {
                recv(hello) -> _ => log::info!("{subject}: {} said Hello; trying again now", message.to_node),
                recv(stop) -> _ => return Delivery::Stopped,
                recv(crossbeam_channel::after(pause)) -> _ => {},
            }
        }
    }

    /// One attempt: publish `payload`, then wait up to `timeout` for a reply on
    /// `reply_subject` that is signed by `to`, bound to one of this message's attempts
    /// (`sigs`, to which this attempt's signature is added), and that `accept` takes.
    /// "No responders" is only a hint for the error text, never the verdict (anyone can
    /// publish one on our inbox): a `single` message waits on for a signed reply until the
    /// deadline; a batch gives up at once, as it does on a reply it cannot take, and sending
    /// one at a time sorts it out.
    #[allow(clippy::too_many_arguments)]
    fn attempt<T>(
        &self,
        replies: &nats::Subscription,
        reply_subject: &str,
        to: &str,
        payload: &[u8],
        timeout: Duration,
        stop: &Receiver<()>,
        single: bool,
        sigs: &mut Vec<String>,
        accept: impl Fn(&[u8]) -> Result<T, NotAnAnswer>,
    ) -> Attempt<T> {
        let subject = self.subject.to_string();
        let deadline = Instant::now() + timeout;
        match self.node.broker.publish(
            &self.node.identity,
            &subject,
            Some(reply_subject),
            None,
            payload,
        ) {
            Ok(sig) => {
                // A late reply to an earlier attempt still answers this message.
                if sigs.len() >= 8 {
                    sigs.remove(0);
                }
                sigs.push(sig);
            }
            Err(e) => return Attempt::Failed(format!("cannot publish: {e}")),
        }
        let mut hint: Option<String> = None;
        loop {
            select! {
                recv(replies.receiver()) -> msg => {
                    let Ok(msg) = msg else {
                        return Attempt::Failed("reply subscription closed".into());
                    };
                    if msg.subject != reply_subject {
                        continue; // a late reply to a message already finished
                    }
                    if msg.is_no_responders() {
                        let why = format!(
                            "no responders on {subject}: {to} is not running, or not connected"
                        );
                        if !single {
                            return Attempt::Failed(why);
                        }
                        hint = Some(why);
                        continue;
                    }
                    if let Err(why) = self.check_reply(to, &msg, sigs) {
                        log::warn!("{subject}: ignoring a reply: {why}");
                        hint = Some(why.to_string());
                        continue;
                    }
                    match accept(&msg.data) {
                        Ok(reply) => return Attempt::Acked(reply),
                        Err(e) if single => log::warn!("{subject}: {e}"),
                        // A batch answered with something else: an old receiver, or a
                        // batch it could not take.
                        Err(e) => return Attempt::Failed(e.to_string()),
                    }
                },
                recv(stop) -> _ => return Attempt::Stopped,
                recv(crossbeam_channel::at(deadline)) -> _ => {
                    return Attempt::Failed(match hint {
                        Some(why) => format!("no ACK within {}s ({why})", timeout.as_secs()),
                        None => format!("no ACK within {}s", timeout.as_secs()),
                    });
                },
            }
        }
    }

    /// A reply must be signed by a key this node trusts for the destination, over the
    /// reply subject and the signature of one of our attempts: otherwise anyone on the
    /// broker could answer for it ("it ran, exit 0"), or a hostile node could coax a reply
    /// to a tampered copy out of it. A reply that cannot be verified is never stored.
    fn check_reply(
        &self,
        to: &str,
        msg: &nats::Message,
        sigs: &[String],
    ) -> Result<(), NotAnAnswer> {
        let trusted = &self.node.trusted;
        // `sigs` holds at least the attempt being answered.
        let mut why = Unverified::Bad(String::new());
        for sig in sigs.iter().rev() {
            let scope = Scope::reply(&msg.subject, sig);
            match trusted.verify(to, msg.headers.as_ref(), scope, &msg.data) {
                Ok(_) => return Ok(()),
                Err(Unverified::UnknownSender { key }) => {
                    return Err(NotAnAnswer::UnknownSender {
                        node: self.node.config.node.clone(),
                        to: to.to_string(),
                        key,
                    })
                }
                Err(Unverified::Unsigned) => {
                    return Err(NotAnAnswer::Unsigned { to: to.to_string() })
                }
                Err(e) => why = e,
            }
        }
        Err(NotAnAnswer::NotOurs(why))
    }

    fn publish_once(&self, entry: &Entry, stop: &Receiver<()>) -> Delivery {
        let subject = self.subject.to_string();
        let payload = entry.envelope.encode();
        let mut attempt = 0;
        loop {
            match self
                .node
                .broker
                .publish(&self.node.identity, &subject, None, None, &payload)
            {
                Ok(_) => {
                    let method = entry.envelope.message.method.as_str();
                    self.node.metrics.sent.with_label_values(&[method]).inc();
                    return Delivery::Published;
                }
                Err(e) => {
                    attempt += 1;
                    self.state
                        .set(format!("cannot publish {}: {e}", entry.envelope.id));
                    if sleep_or_stop(stop, retry::backoff(attempt, Duration::from_secs(30))) {
                        return Delivery::Stopped;
                    }
                }
            }
        }
    }

    /// Records how messages ended (reply files, failed-messages.txt, the message log),
    /// then marks them finished in the journal: only after everything about them is on
    /// disk. A batch's records go to each file with one write and one fsync.
    ///
    /// First what must be kept (replies, failed messages): if that cannot be written (a
    /// full disk), nothing is counted or reported and the publisher fails; once restarted
    /// it sends the messages again (the receiver answers from its stored reply, running
    /// nothing twice), and what was written before is not written again (the slot
    /// remembers it). Then what is counted, reported and logged, once.
    fn finish(&self, done: Vec<(&Entry, Delivery)>) -> Result<(), Error> {
        let node = &self.node;
        let mut written = self.stored_before_the_last_stop(&done);
        let failed_written = {
            let slot = self.slot();
            written.extend(slot.replies_written.iter().cloned());
            slot.failed_written.clone()
        };
        let mut reply_files: BTreeMap<PathBuf, (String, Vec<String>)> = BTreeMap::new();
        let (mut failed, mut failed_ids) = (String::new(), Vec::new());
        let mut ends = Vec::with_capacity(done.len());
        for (entry, delivery) in done {
            let envelope = &entry.envelope;
            let message = &envelope.message;
            let id = &envelope.id;
            let (outcome, why, reply) = match delivery {
                Delivery::Acked(reply) if reply.status == Status::Refused => {
                    // The receiver reported the refusal to central itself; keep it.
                    let why = format!("refused by {}: {}", reply.from_node, reply.output);
                    ("refused", Some(why), Some(reply))
                }
                Delivery::Acked(reply) => ("acked", None, Some(reply)),
                Delivery::Published => ("published", None, None),
                Delivery::Failed(why) => {
                    let why = format!("{}: {id} not delivered: {why}", self.subject);
                    ("failed", Some(why), None)
                }
                Delivery::Stopped => unreachable!("a stopped delivery is not finished"),
            };
            if let Some(reply) = &reply {
                if !written.contains(id) {
                    let path = node.data.replies(&message.to_node, &message.method);
                    let (records, ids) = reply_files.entry(path).or_default();
                    records.push_str(&reply_record(envelope, reply));
                    ids.push(id.clone());
                }
            }
            if why.is_some() && !failed_written.contains(id) {
                failed.push_str(&failed_record(message));
                failed_ids.push(id.clone());
            }
            ends.push((entry, outcome, (reply, why)));
        }
        for (path, (records, ids)) in &reply_files {
            crate::files::append_record(path, records.as_bytes()).map_err(|source| {
                Error::StoreReplies {
                    path: path.clone(),
                    source,
                }
            })?;
            self.slot().replies_written.extend(ids.iter().cloned());
        }
        if !failed.is_empty() {
            let path = node.data.failed();
            crate::files::append_record(&path, failed.as_bytes())
                .map_err(|source| Error::KeepFailed { path, source })?;
            self.slot().failed_written.extend(failed_ids);
        }

        // Kept: now counted, reported and logged.
        let mut log_lines = Vec::new();
        for (entry, outcome, (reply, why)) in &ends {
            let envelope = &entry.envelope;
            let method = envelope.message.method.as_str();
            if let Some(reply) = reply {
                node.metrics.acked.with_label_values(&[method]).inc();
                log::info!(
                    "{}: {} {:?}{}: {}",
                    self.subject,
                    envelope.id,
                    reply.status,
                    reply
                        .exit_code
                        .map(|c| format!(" exit {c}"))
                        .unwrap_or_default(),
                    reply.output.lines().next().unwrap_or("")
                );
            }
            if let Some(why) = why {
                node.metrics.failed.with_label_values(&[method]).inc();
                log::warn!("{why}; kept in {}", node.data.failed().display());
                if *outcome == "failed" && method != "ErrorLog" {
                    // Never report a failed error report: that would loop.
                    node.report_error(why.clone());
                }
            }
            let mut line = serde_json::to_value(envelope).expect("an Envelope serializes");
            line["outcome"] = (*outcome).into();
            let finished = crate::files::unix_millis();
            line["finished"] = crate::files::rfc3339(finished).into();
            line["finishedUnixMs"] = finished.into();
            log_lines.extend(serde_json::to_vec(&line).expect("a JSON value serializes"));
            log_lines.push(b'\n');
            node.metrics
                .finished
                .with_label_values(&[method, envelope.message.kind.as_str(), outcome])
                .inc();
            if *outcome == "acked" {
                let ms = finished.saturating_sub(envelope.accepted);
                node.metrics
                    .delivery_latency
                    .with_label_values(&[method])
                    .observe(ms as f64 / 1000.0);
            }
        }
        // Synced before the messages are finished in the journal, so that a line lost in a
        // power cut is never that of a message the journal says is finished.
        if let Err(e) = crate::files::append(&node.data.message_log(), &log_lines, true) {
            // Only a log: skipped, and counted.
            log::error!("cannot write the message log: {e}");
            node.metrics
                .log_skipped
                .with_label_values(&["message-log.txt"])
                .inc_by(ends.len() as u64);
        }
        let seqs: Vec<u64> = ends.iter().map(|(entry, _, _)| entry.seq).collect();
        node.finish(&self.subject, &seqs);
        for (entry, outcome, (reply, why)) in ends {
            node.progress(
                &entry.envelope.id,
                Progress::Finished {
                    outcome: outcome.to_string(),
                    reply,
                    why,
                },
            );
        }
        Ok(())
    }

    /// Of the acked messages in `done` that an earlier run accepted, those whose reply it
    /// stored before a power cut took the rest (see [`crate::resumed`]).
    fn stored_before_the_last_stop(&self, done: &[(&Entry, Delivery)]) -> HashSet<String> {
        let resumed: Vec<&Entry> = done
            .iter()
            .filter(|(e, d)| matches!(d, Delivery::Acked(_)) && self.node.resumed.is_resumed(e))
            .map(|(e, _)| *e)
            .collect();
        let Some(first) = resumed.first() else {
            return HashSet::new();
        };
        let message = &first.envelope.message;
        let ids: Vec<&str> = resumed.iter().map(|e| e.envelope.id.as_str()).collect();
        self.node.resumed.stored_replies(
            &self.subject,
            &self.node.data.replies(&message.to_node, &message.method),
            &ids,
        )
    }
}

/// A message that was not delivered, in inmsg.txt form for failed-messages.txt.
fn failed_record(message: &crate::message::Message) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(&[message]).expect("a Message serializes")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{decode_batch, encode_batch, Envelope, Kind, Message};

    fn entry(seq: u64, text: &str) -> Entry {
        Entry {
            seq,
            envelope: Envelope {
                id: format!("central-1-{seq}"),
                from_node: "central".into(),
                accepted: 1,
                message: Message {
                    to_node: "ship1".into(),
                    data: vec![text.into()],
                    kind: Kind::EventAck,
                    method: "TextLogging".into(),
                    timeout: None,
                    retries: None,
                    ttl: None,
                },
            },
        }
    }

    #[test]
    fn a_reply_that_cannot_be_stored_on_a_full_disk_is_a_retry_with_its_io_error() {
        let e = Error::StoreReplies {
            path: "replies/ship1.CLICommand.log".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(e
            .to_string()
            .starts_with("cannot store replies in replies/ship1.CLICommand.log: "));
        let failure = Failure::from(e);
        assert!(!failure.is_fatal());
        let io = std::error::Error::source(&failure)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .expect("the io::Error");
        assert_eq!(io.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn a_batch_is_the_wire_form_of_the_messages_that_fit() {
        let slot: Vec<Entry> = (0..10).map(|i| entry(i, &"x".repeat(1000))).collect();
        let (n, payload) = batch_of(&slot, 0);
        assert_eq!(n, 10);
        let envelopes: Vec<Envelope> = slot.iter().map(|e| e.envelope.clone()).collect();
        assert_eq!(payload, encode_batch(&envelopes));
        assert_eq!(decode_batch(&payload).unwrap(), envelopes);
        // Under a small broker limit, fewer fit, and never fewer than one.
        let (n, payload) = batch_of(&slot, 4096 + 3500);
        assert_eq!(n, 3);
        assert!(payload.len() <= 3500);
        assert_eq!(batch_of(&slot, 4096 + 10).0, 1);
    }
}
