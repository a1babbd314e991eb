//! The subscriber: one process per method, subscribed to `<thisnode>.<kind>.<method>` for
//! each kind the method serves, and to nothing else. Each received message is handled on a
//! handler thread of its own (see [`Handlers`](crate::node::Handlers)), at most
//! `--maxConcurrentHandlers` at once across all methods. Past that, the subscriber waits
//! and messages queue in the client, at most [`QUEUED_PER_SUBSCRIPTION`] per subject
//! (each at most the broker's `max_payload`, 1 MiB by default); the client drops what
//! comes past that, and the drops are logged and counted
//! (`steward_subscription_dropped_total`). Nothing is lost by it: a dropped ACK kind is
//! sent again by its sender, which hears no ACK, and a NACK kind was never promised
//! delivery. Without the bound, a flood while the handlers are busy would queue in memory
//! without limit.
//!
//! Before a method runs, the message must pass [`crate::admission::admit`]: this node's
//! subject and a kind the method serves, a signature by a key trusted for its sender,
//! fresh, answered only on the sender's own inbox, and a sender allowed to call it. A
//! message that proves nothing is answered with nothing; a verified sender that may not
//! call the method is told so. Either way the refusal is logged and reported to the central
//! error logger (rate-limited). ACK kinds are answered only after the method has run, with
//! a reply signed over the request's own signature. A method that cannot take work now
//! ([`Method::ready`]: a log while the disk is below its floor) leaves the message
//! unrecorded and unanswered, so its sender tries again later.
//!
//! One message and a batch (several events of one subject from one sender, run in order
//! with the receiver's record written once before and once after for all) are handled by
//! the same code. A retry of a message already handled (its ACK was lost) is answered with
//! the stored reply rather than run again; one still running is left to its first run's
//! reply; one that was running when this node died is answered with an error saying so
//! (see [`crate::received`]), or, for a method that does the same thing twice as once
//! ([`Method::reruns_interrupted`]: a copy's chunk), run again.
//!
//! A request that asks for its result elsewhere (`replyMethod`) has the result journaled
//! as a message of its own, to its sender, before the request is recorded as finished; the
//! ACK then says where the result went (see [`crate::reply`]).

use super::{Failure, Process, State};
use crate::admission::{self, Admitted, Policy, Refusal, Refused, Served};
use crate::message::{Envelope, Reply, Status};
use crate::methods::{Method, Outcome};
use crate::node::Node;
use crate::received::Seen;
use crate::subject::{NameError, Subject};
use crossbeam_channel::{Receiver, Select, Sender};
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the work messages left for later is looked at again while some waits (see
/// [`Subscriber::tick`]).
const TICK: Duration = Duration::from_secs(1);

/// How many received messages may wait, per subscription, for a handler; see the module
/// docs.
pub const QUEUED_PER_SUBSCRIPTION: usize = 128;

pub struct Subscriber {
    pub method: Arc<dyn Method>,
    pub node: Arc<Node>,
    pub state: Arc<State>,
}

/// Why a subscriber failed.
#[derive(Debug)]
pub enum Error {
    /// This node's own subject for the method is not a valid one: the node's name passed
    /// the configuration's check and the method's is this build's, so a bug. Fatal.
    Subject {
        method: &'static str,
        source: NameError,
    },
    /// The subscription could not be made (the connection dropped). A retry.
    Subscribe { subject: String, source: io::Error },
    /// The subscription ended (the connection closed). A retry.
    Closed { subject: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Subject { method, source } => write!(f, "cannot listen for {method}: {source}"),
            Error::Subscribe { subject, source } => {
                write!(f, "cannot subscribe to {subject}: {source}")
            }
            Error::Closed { subject } => write!(f, "subscription to {subject} closed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Subject { source, .. } => Some(source),
            Error::Subscribe { source, .. } => Some(source),
            Error::Closed { .. } => None,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        match e {
            Error::Subject { .. } => Failure::fatal(e),
            Error::Subscribe { .. } | Error::Closed { .. } => Failure::retry(e),
        }
    }
}

impl Process for Subscriber {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), Failure> {
        self.state.set("waiting for the broker");
        let Some(conn) = self.node.broker.wait(stop) else {
            return Ok(());
        };
        let name = self.method.name();
        let (subjects, subs) = self.subscribe(&conn)?;
        let mut dropped = vec![0; subs.len()];
        // Make sure the subscriptions are registered before we say we listen.
        conn.flush_timeout(Duration::from_secs(5)).ok();
        let listening = subjects.join(", ");
        self.state.set(format!("listening on {listening}"));
        log::debug!("listening on {listening}");
        // A message being handled says here when it may have left work for later
        // (`tick`): that is done then, and every second after while some waits. An idle
        // subscriber sleeps until a message comes.
        let (deferred_tx, deferred) = crossbeam_channel::bounded(1);
        let mut select = Select::new();
        for sub in &subs {
            select.recv(sub.receiver());
        }
        let on_deferred = select.recv(&deferred);
        let on_stop = select.recv(stop);
        let mut tick_at: Option<Instant> = None;
        let later = Arc::new(Later::default());
        loop {
            let op = match tick_at {
                Some(at) => match select.select_deadline(at) {
                    Ok(op) => op,
                    Err(_) => {
                        let more = self.tick(stop, &subs, &subjects, &mut dropped, &later);
                        tick_at = more.then(|| Instant::now() + TICK);
                        continue;
                    }
                },
                None => select.select(),
            };
            match op.index() {
                i if i == on_stop => {
                    let _ = op.recv(stop);
                    self.method.flush(&self.node.context());
                    self.node.trusted.persist_senders(true);
                    return Ok(());
                }
                i if i == on_deferred => {
                    let _ = op.recv(&deferred);
                    later.changed.store(true, Ordering::Release);
                    if tick_at.is_none() {
                        let more = self.tick(stop, &subs, &subjects, &mut dropped, &later);
                        tick_at = more.then(|| Instant::now() + TICK);
                    }
                }
                i => {
                    let msg = op.recv(subs[i].receiver()).map_err(|_| Error::Closed {
                        subject: subjects[i].clone(),
                    })?;
                    let (method, node, conn) =
                        (self.method.clone(), self.node.clone(), conn.clone());
                    let deferred = deferred_tx.clone();
                    let started = self.node.handlers.run(stop, name, move || {
                        handle(&*method, &node, &conn, msg, &deferred);
                    });
                    if !started && crate::process::stopping(stop) {
                        return Ok(());
                    }
                    // Otherwise not lost either: without an ACK the sender tries again.
                }
            }
        }
    }
}

impl Subscriber {
    /// Subscribes to this node's subject of each kind the method serves, each with its
    /// queue bounded ([`QUEUED_PER_SUBSCRIPTION`]).
    fn subscribe(
        &self,
        conn: &nats::Connection,
    ) -> Result<(Vec<String>, Vec<nats::Subscription>), Error> {
        let name = self.method.name();
        let subjects: Vec<String> = self
            .method
            .kinds()
            .iter()
            .map(|&kind| {
                Subject::new(&self.node.config.node, kind, name)
                    .map(|s| s.to_string())
                    .map_err(|source| Error::Subject {
                        method: name,
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        let subs: Vec<nats::Subscription> = subjects
            .iter()
            .map(|s| {
                conn.subscribe(s).map_err(|source| Error::Subscribe {
                    subject: s.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        for sub in &subs {
            sub.set_message_limits(QUEUED_PER_SUBSCRIPTION);
        }
        Ok((subjects, subs))
    }

    /// The work handling leaves for later: the client's drops, the refusal minute, and the
    /// files (the method's own, hello-nodes.json; keys/senders.json) written on a handler
    /// thread (see [`Later`]). Returns whether some still waits (to look again in a
    /// second).
    fn tick(
        &self,
        stop: &Receiver<()>,
        subs: &[nats::Subscription],
        subjects: &[String],
        dropped: &mut [usize],
        later: &Arc<Later>,
    ) -> bool {
        self.count_dropped(subs, subjects, dropped);
        let refusals = self.node.refusal_reports_due();
        let files = later.write(stop, &self.method, &self.node);
        files || refusals
    }

    /// Logs and counts what the client dropped since the last look because a
    /// subscription's queue was full (`seen` holds each subscription's count so far).
    fn count_dropped(&self, subs: &[nats::Subscription], subjects: &[String], seen: &mut [usize]) {
        for ((sub, subject), seen) in subs.iter().zip(subjects).zip(seen.iter_mut()) {
            let Ok(total) = sub.dropped_messages() else {
                continue;
            };
            let new = total.saturating_sub(*seen);
            if new == 0 {
                continue;
            }
            *seen = total;
            self.node
                .metrics
                .subscription_dropped
                .with_label_values(&[self.method.name()])
                .inc_by(new as u64);
            log::warn!(
                "{subject}: dropped {new} incoming message(s): {QUEUED_PER_SUBSCRIPTION} were already waiting for a handler (all {} busy); senders of ACK kinds will try again",
                self.node.config.max_handlers
            );
        }
    }
}

/// A tick's files, written on a handler thread while the subscriber goes on taking
/// messages: hello-nodes.json and keys/senders.json are about 1 MB each for 10,000 nodes,
/// and while the subscriber waited for their fsync the client's queue
/// ([`QUEUED_PER_SUBSCRIPTION`]) filled and dropped Hellos (128 arrive in 25 ms at 5,000
/// a second). One write at a time.
#[derive(Default)]
struct Later {
    /// A write is under way.
    busy: AtomicBool,
    /// A handler said it may have left work since the last write began.
    changed: AtomicBool,
    /// The last write left changes unwritten (too soon, or it failed).
    more: AtomicBool,
}

impl Later {
    /// Starts the writes if there may be some and none are under way; returns whether to
    /// look again (in a second).
    fn write(
        self: &Arc<Self>,
        stop: &Receiver<()>,
        method: &Arc<dyn Method>,
        node: &Arc<Node>,
    ) -> bool {
        if self.busy.load(Ordering::Acquire) {
            return true;
        }
        let changed = self.changed.swap(false, Ordering::AcqRel);
        if !(self.more.swap(false, Ordering::AcqRel) || changed) {
            return false;
        }
        self.busy.store(true, Ordering::Release);
        let (later, method, job_node) = (self.clone(), method.clone(), node.clone());
        let started = node.handlers.run(stop, method.name(), move || {
            // A panic must not leave `busy` set: no write would start again.
            let more = catch_unwind(AssertUnwindSafe(|| {
                let written = method.tick(&job_node.context());
                let senders = job_node.trusted.persist_senders(false);
                written || senders
            }))
            .unwrap_or(true);
            later.more.store(more, Ordering::Release);
            later.busy.store(false, Ordering::Release);
        });
        if !started {
            self.more.store(true, Ordering::Release);
            self.busy.store(false, Ordering::Release);
        }
        true
    }
}

/// One wire message: admitted and run, or refused. Says on `deferred` when it may have left
/// work for the subscriber's tick: once admitted (the sender's counter, for
/// keys/senders.json, before a method that may run long), and at the end.
fn handle(
    method: &dyn Method,
    node: &Node,
    conn: &nats::Connection,
    msg: nats::Message,
    deferred: &Sender<()>,
) {
    // Full: a word is already waiting, and one is enough.
    let say = || {
        let _ = deferred.try_send(());
    };
    let served = Served {
        method: method.name(),
        kinds: method.kinds(),
        senders: method.senders(),
    };
    let decision = admission::admit(
        &Policy::of(&node.config),
        &node.trusted,
        served,
        &msg.subject,
        msg.reply.as_deref(),
        msg.headers.as_ref(),
        &msg.data,
    );
    match decision {
        Ok(admitted) => {
            say();
            run(method, node, conn, &msg.subject, admitted);
        }
        Err(refused) => {
            report(node, method.name(), &msg.subject, refused.refusal());
            if let Refused::Answered { refusal, admitted } = refused {
                let replies: Vec<Reply> = admitted
                    .envelopes
                    .iter()
                    .map(|e| {
                        Reply::refusal(
                            e.id.clone(),
                            &admitted.from,
                            &node.config.node,
                            refusal.why.clone(),
                        )
                    })
                    .collect();
                answer(method, node, conn, &admitted, &replies);
            }
        }
    }
    say();
}

/// Logs a refusal, counts it, and reports it to central (within the rate limit).
fn report(node: &Node, method: &str, subject: &str, r: &Refusal) {
    node.metrics
        .received
        .with_label_values(&[method, "refused"])
        .inc_by(r.ids.len().max(1) as u64);
    let who = if r.from.is_empty() {
        "an unknown sender"
    } else {
        &r.from
    };
    let ids = match r.ids.len() {
        0 => "unknown".to_string(),
        1 => r.ids[0].clone(),
        n => format!("{} and {} more", r.ids[0], n - 1),
    };
    node.report_refusal(
        format!(
            "{} refused {subject} from {who} (id {ids}): {}",
            node.config.node, r.why
        ),
        r.verified,
    );
}

/// Runs an admitted message (or batch) exactly once, in order, and answers with the
/// replies: the receiver's record is written before (`Started`, fsync'd) and after
/// (`Finished`, written before the answer, fsync'd after it, off its path; if it cannot be
/// written, the answer goes all the same and its ids count as interrupted from then on);
/// none for a method that is not [`Method::remembered`] (Hello). Results asked
/// for as messages of their own are journaled before the record ([`send_results`]).
fn run(method: &dyn Method, node: &Node, conn: &nats::Connection, subject: &str, a: Admitted) {
    let Some(seen) = begin(method, node, subject, &a) else {
        return;
    };
    // The ids started here end with their recorded replies; if those are never recorded
    // (the write fails, or a panic on the way), they are given up as interrupted.
    let mut started = Started {
        node,
        from: &a.from,
        ids: if method.remembered() {
            a.envelopes
                .iter()
                .zip(&seen)
                .filter(|(_, s)| **s == Seen::New)
                .map(|(e, _)| e.id.as_str())
                .collect()
        } else {
            Vec::new()
        },
    };
    let outcomes = run_new(method, node, &a, &seen);
    let Answers {
        mut replies,
        new_at,
        results,
        schedules,
    } = answers(method, node, subject, &a, seen, outcomes);
    let first = &a.envelopes[0].id;
    send_results(node, subject, results, &mut replies);
    keep_schedules(node, subject, schedules);
    if !method.remembered() {
        answer(method, node, conn, &a, &replies);
        return;
    }
    let to_record: Vec<&Reply> = new_at.iter().map(|&i| &replies[i]).collect();
    // Recorded, then sent, then made durable: the fsync is off the ACK's path.
    let recorded = node.received.record(&to_record);
    match &recorded {
        Ok(()) => started.ids.clear(),
        Err(e) => {
            node.stop_if_received_unusable();
            // Sent all the same, so the outputs reach their sender; a retry (this answer
            // lost) is answered "interrupted" rather than run again: given up once sent,
            // so that a retry meanwhile, left to this answer, cannot overtake it.
            log::error!("{subject}: cannot record the reply to {first} (sent unrecorded): {e}");
        }
    }
    log::debug!("{subject}: {first} from {}: answered", a.from);
    answer(method, node, conn, &a, &replies);
    drop(started);
    if recorded.is_ok() {
        if let Err(e) = node.received.sync() {
            node.stop_if_received_unusable();
            log::error!("{subject}: cannot sync the reply to {first}: {e}");
        }
    }
}

/// Ids a handler started ([`crate::received::Received::begin_batch`]): when it ends, those
/// whose replies it did not record (the write failed, or a panic on the way) are given up
/// as interrupted ([`crate::received::Received::abandon`]), so that none stays running for
/// ever. Recorded ones are no longer running, and are left as they are.
struct Started<'a> {
    node: &'a Node,
    from: &'a str,
    ids: Vec<&'a str>,
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            self.node.received.abandon(self.from, &self.ids);
        }
    }
}

/// What a receiver answers a message (or batch) with.
struct Answers {
    /// One per message, in order: stored ones for those handled before, new ones for the
    /// rest.
    replies: Vec<Reply>,
    /// Where the new replies (to record) are in `replies`.
    new_at: Vec<usize>,
    /// Results to send as messages of their own, with where their reply is.
    results: Vec<(usize, crate::message::Message)>,
    /// Schedules to keep: messages with one, run for the first time.
    schedules: Vec<crate::schedule::Schedule>,
}

/// Whether this node takes the message now, and what it knows of each id (recorded as
/// started where new). `None`: not now (the disk is below the method's floor, the record
/// could not be written: the sender tries again), or still running (its first run's reply
/// answers).
fn begin(method: &dyn Method, node: &Node, subject: &str, a: &Admitted) -> Option<Vec<Seen>> {
    let name = method.name();
    let ids: Vec<&str> = a.envelopes.iter().map(|e| e.id.as_str()).collect();
    if let Err(why) = method.ready(&node.context()) {
        // Not now (a full disk): unrecorded and unanswered, so the sender tries again.
        log::warn!("{subject}: {} from {} not taken now: {why}", ids[0], a.from);
        node.metrics
            .received
            .with_label_values(&[name, "deferred"])
            .inc_by(ids.len() as u64);
        return None;
    }
    if !method.remembered() {
        return Some(ids.iter().map(|_| Seen::New).collect());
    }
    let seen = match node
        .received
        .begin_batch(&a.from, &ids, method.reruns_interrupted())
    {
        Ok(seen) => seen,
        Err(e) => {
            node.stop_if_received_unusable();
            // Not run: without a durable record it might run twice. The sender retries.
            log::error!("{subject}: cannot record {} as started: {e}", ids[0]);
            return None;
        }
    };
    if seen.contains(&Seen::Running) {
        node.metrics
            .received
            .with_label_values(&[name, "duplicate"])
            .inc();
        log::info!(
            "{subject}: {} from {} names a message still running (or one twice): nothing of it runs now; the running one's reply answers that one, a later try the rest",
            ids[0], a.from
        );
        return None;
    }
    Some(seen)
}

/// Runs the messages seen for the first time, in one go; a panic is each one's error.
fn run_new(method: &dyn Method, node: &Node, a: &Admitted, seen: &[Seen]) -> Vec<Outcome> {
    let name = method.name();
    let new: Vec<&Envelope> = a
        .envelopes
        .iter()
        .zip(seen)
        .filter(|(_, s)| **s == Seen::New)
        .map(|(e, _)| e)
        .collect();
    if new.is_empty() {
        Vec::new()
    } else {
        catch_unwind(AssertUnwindSafe(|| {
            method.handle_batch(&new, &node.context())
        }))
        .unwrap_or_else(|_| vec![Outcome::error(format!("method {name} panicked")); new.len()])
    }
}

/// The replies, in order (stored, or made of each new outcome), counted; and the results to
/// send as messages of their own.
fn answers(
    method: &dyn Method,
    node: &Node,
    subject: &str,
    a: &Admitted,
    seen: Vec<Seen>,
    outcomes: Vec<Outcome>,
) -> Answers {
    let name = method.name();
    let mut outcomes = outcomes.into_iter();
    let mut schedules = Vec::new();
    let started = crate::files::unix_millis();
    let mut replies = Vec::with_capacity(a.envelopes.len());
    // Where the replies to record (the new ones) are in `replies`.
    let mut new_at = Vec::new();
    // Results to send as messages of their own, with where their reply is.
    let mut results = Vec::new();
    // Counted by outcome once for the batch: a metric's lookup hashes its labels.
    let mut counted: Vec<(&str, u64)> = Vec::new();
    let mut count = |label| match counted.iter_mut().find(|(l, _)| *l == label) {
        Some((_, n)) => *n += 1,
        None => counted.push((label, 1)),
    };
    for (envelope, seen) in a.envelopes.iter().zip(seen) {
        let (outcome, label) = match seen {
            Seen::Done(reply) => {
                count("duplicate");
                log::info!(
                    "{subject}: {} already handled; answering with the stored reply",
                    envelope.id
                );
                replies.push(reply);
                continue;
            }
            Seen::Interrupted => {
                let why = format!(
                    "{} was interrupted by a restart of {} before it finished, or its reply could not be recorded there; not run again",
                    envelope.id, node.config.node
                );
                log::warn!("{subject}: {why}");
                (Outcome::error(why), "error")
            }
            Seen::New | Seen::Running => {
                let outcome = outcomes
                    .next()
                    .unwrap_or_else(|| Outcome::error(format!("method {name} gave no outcome")));
                let label = label_of(outcome.status);
                (outcome, label)
            }
        };
        count(label);
        // With a replyMethod the output goes where it says (`send_results`), or nowhere
        // (`None`); the ACK says how the request ended. (An interrupted run has no result
        // but its error.)
        let result = (seen == Seen::New && !outcome.streamed)
            .then(|| crate::reply::result_message(envelope, &outcome))
            .flatten();
        let nowhere = envelope.message.reply_method.as_deref() == Some(crate::reply::NONE);
        let elsewhere = result.is_some() || nowhere && seen == Seen::New;
        if let Some(result) = result {
            results.push((replies.len(), result));
        }
        if seen == Seen::New {
            schedules.extend(crate::schedule::Schedule::of(
                envelope,
                &a.signed.key,
                started,
            ));
        }
        new_at.push(replies.len());
        // Refusals too: a retry whose answer was lost gets the same refusal, rather than
        // finding the id still "running" for ever.
        replies.push(Reply {
            id: envelope.id.clone(),
            from_node: node.config.node.clone(),
            to_node: a.from.clone(),
            status: outcome.status,
            exit_code: outcome.exit_code,
            output: if elsewhere {
                String::new()
            } else {
                outcome.output
            },
            batch_max: None,
            digest_sig: false,
        });
    }
    for (label, n) in counted {
        node.metrics
            .received
            .with_label_values(&[name, label])
            .inc_by(n);
    }
    Answers {
        replies,
        new_at,
        results,
        schedules,
    }
}

/// Journals the results the requests asked to have sent as messages of their own (one
/// write and fsync for all), before their replies are recorded: once a request counts as
/// done here, its result is on its way, and a restart sends it, once. Each reply says where
/// its result went; one whose result cannot be journaled (a full disk) carries the output
/// itself, so nothing is lost.
fn send_results(
    node: &Node,
    subject: &str,
    results: Vec<(usize, crate::message::Message)>,
    replies: &mut [Reply],
) {
    if results.is_empty() {
        return;
    }
    let (at, messages): (Vec<usize>, Vec<_>) = results.into_iter().unzip();
    let routes: Vec<String> = messages
        .iter()
        .map(|m| format!("{}.{}", m.to_node, m.method))
        .collect();
    let outputs: Vec<String> = messages.iter().map(|m| m.data.concat()).collect();
    match node.accept_ids(messages) {
        Ok(ids) => {
            for ((i, id), route) in at.into_iter().zip(ids).zip(routes) {
                replies[i].output = format!("result sent to {route} as {id}\n");
            }
        }
        Err(e) => {
            log::error!("{subject}: cannot journal results to send: {e}; they go in the ACKs");
            for (i, output) in at.into_iter().zip(outputs) {
                replies[i].output = format!(
                    "{output}[steward: this result could not be sent as a message of its own ({e}); it is here instead]\n"
                );
            }
        }
    }
}

/// Keeps the schedules of messages run for the first time (after their first run's result
/// is journaled): the scheduler runs the rest. One that cannot be kept (a full disk) is
/// reported: its first run was the only one.
fn keep_schedules(node: &Node, subject: &str, schedules: Vec<crate::schedule::Schedule>) {
    for schedule in schedules {
        let name = schedule.name();
        if let Err(e) = node.schedules.add(schedule) {
            node.report_error(format!(
                "{subject}: cannot keep {name} ({e}): it ran once and will not run again"
            ));
        }
    }
}

fn label_of(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Error => "error",
        Status::Refused => "refused",
    }
}

/// Sends the replies if the sender asked for an answer (ACK kinds), on its own inbox,
/// signed over the request's signature; in the request's form (one reply, or a batch's,
/// which says how many messages of `method` this node takes in one batch), trimming output
/// that would exceed the broker's payload limit.
fn answer(
    method: &dyn Method,
    node: &Node,
    conn: &nats::Connection,
    a: &Admitted,
    replies: &[Reply],
) {
    let Some(to) = &a.reply_to else { return };
    let encode = |replies: &[Reply]| {
        if a.batch {
            Reply::encode_batch_answer(replies, method.batch_max())
        } else {
            replies[0].encode()
        }
    };
    let bytes = fitted(replies, conn.max_payload(), encode);
    if let Err(e) = node.broker.publish(
        &node.identity,
        crate::keys::Scope::reply(to, &a.signed.sig),
        &bytes,
        // Signed as the request was: a sender that signs over a digest checks those.
        a.signed.covers,
        crate::broker::Confirm::ByAnswer,
    ) {
        // The sender will try again and get the stored reply.
        log::warn!("cannot send the reply for {}: {e}", replies[0].id);
    }
}

/// `replies` as `encode` writes them, their outputs trimmed if that is more than `max`
/// bytes (0: no limit) so that they fit.
fn fitted(replies: &[Reply], max: usize, encode: impl Fn(&[Reply]) -> Vec<u8>) -> Vec<u8> {
    let bytes = encode(replies);
    if max == 0 || bytes.len() <= max {
        return bytes;
    }
    // The room the replies' other fields leave (and a margin), shared out. Output escaped
    // in JSON takes more than in memory (up to six bytes a character): the share is halved
    // until it fits.
    let bare: Vec<Reply> = replies
        .iter()
        .map(|r| Reply {
            output: String::new(),
            ..r.clone()
        })
        .collect();
    let room = max.saturating_sub(encode(&bare).len() + 4096);
    let longest = replies.iter().map(|r| r.output.len()).max().unwrap_or(0);
    let mut keep = trim_share(room, replies).min(longest);
    loop {
        let bytes = encode(&trimmed(replies, keep));
        if bytes.len() <= max || keep == 0 {
            return bytes;
        }
        keep /= 2;
    }
}

/// How many bytes of output each reply may keep so that all of them fit in `room`: outputs
/// no longer than an even share are kept whole and leave the rest of theirs to the longer
/// ones, which get what is left, evenly ([`trimmed`] cuts them to it, notice included).
fn trim_share(room: usize, replies: &[Reply]) -> usize {
    let mut lens: Vec<usize> = replies.iter().map(|r| r.output.len()).collect();
    lens.sort_unstable();
    let mut left = room;
    for (i, &len) in lens.iter().enumerate() {
        let each = left / (lens.len() - i);
        if len > each {
            return each;
        }
        left -= len;
    }
    usize::MAX
}

const TRIMMED: &str = "\n[steward: output trimmed to the broker's payload limit]\n";

/// `replies`, each output longer than `keep` bytes cut to `keep` with the notice that says
/// so (at a character's boundary; without the notice if even that does not fit): no output
/// comes out longer than it was, or than `keep`.
fn trimmed(replies: &[Reply], keep: usize) -> Vec<Reply> {
    replies
        .iter()
        .cloned()
        .map(|mut r| {
            if r.output.len() > keep {
                let notice = if keep >= TRIMMED.len() { TRIMMED } else { "" };
                let mut cut = keep - notice.len();
                while !r.output.is_char_boundary(cut) {
                    cut -= 1;
                }
                r.output.truncate(cut);
                r.output.push_str(notice);
            }
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_too_big_for_the_broker_cuts_the_long_outputs_and_keeps_the_short() {
        let max = 1 << 20;
        let mut replies: Vec<Reply> = (0..crate::message::MAX_BATCH)
            .map(|i| Reply::refusal(format!("central-{i}"), "central", "ship1", "short".into()))
            .collect();
        replies[5].output = "é".repeat(400_000);
        // Six bytes each in JSON.
        replies[9].output = "\u{1}".repeat(200_000);
        let encode = |r: &[Reply]| Reply::encode_batch_answer(r, crate::message::MAX_BATCH);
        assert!(encode(&replies).len() > max);
        let bytes = fitted(&replies, max, encode);
        assert!(bytes.len() <= max, "{}", bytes.len());
        let got = Reply::decode_batch(&bytes).unwrap();
        assert_eq!(got.len(), replies.len());
        for (i, r) in got.iter().enumerate() {
            match i {
                5 | 9 => {
                    assert!(r.output.ends_with(TRIMMED), "{i}");
                    // Trimmed to a share of the room, not to nothing.
                    assert!(
                        r.output.len() > 1000 + TRIMMED.len(),
                        "{i}: {}",
                        r.output.len()
                    );
                }
                _ => assert_eq!(r.output, "short", "{i}"),
            }
        }
        assert_eq!(got[0].batch_max, Some(crate::message::MAX_BATCH as u32));
        // Outputs no longer than their share stay whole; the longer ones share what is left,
        // notice included: 100 bytes kept, 1,000 cut to 120, in 220.
        let two: Vec<Reply> = [100, 1000]
            .iter()
            .map(|&n| Reply {
                output: "x".repeat(n),
                ..replies[0].clone()
            })
            .collect();
        let keep = trim_share(220, &two);
        let cut = trimmed(&two, keep);
        assert_eq!(cut[0].output, two[0].output);
        assert_eq!(cut[1].output.len(), 120);
        assert!(cut[1].output.ends_with(TRIMMED));
        assert_eq!(
            trimmed(&two, 10)[1].output,
            "x".repeat(10),
            "no room for the notice"
        );
        // What fits goes as it is; no limit, nothing cut.
        assert_eq!(fitted(&replies[..3], max, encode), encode(&replies[..3]));
        assert_eq!(fitted(&replies, 0, encode), encode(&replies));
    }

    #[test]
    fn a_subject_this_node_cannot_make_is_fatal_a_lost_subscription_a_retry() {
        let source = crate::subject::validate_name("ship 1").unwrap_err();
        let e = Error::Subject {
            method: "CLICommand",
            source,
        };
        assert!(
            e.to_string().starts_with("cannot listen for CLICommand: "),
            "{e}"
        );
        assert!(Failure::from(e).is_fatal());
        let closed = Error::Closed {
            subject: "ship1.CommandACK.CLICommand".into(),
        };
        assert!(!Failure::from(closed).is_fatal());
    }
}
