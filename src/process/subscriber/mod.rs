//! The subscriber: one process per method, subscribed to `<thisnode>.<kind>.<method>` for
//! each kind the method serves, and to nothing else. Each received message is handled on a
//! handler thread of its own (see [`Handlers`](crate::node::Handlers)), at most
//! `--maxConcurrentHandlers` at once across all methods. Past that, the subscriber waits
//! and messages queue in the client, at most [`QUEUED_PER_SUBSCRIPTION`] per subject and
//! [`QUEUED_BYTES_PER_SUBSCRIPTION`] of them (a message is at most the broker's
//! `max_payload`, 1 MiB by default, and always fits alone); the client drops what
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
//! a reply signed over the request's own signature.
//!
//! Once admitted, a message (or batch) is run once and recorded ([`run`](run::run)), and
//! answered ([`answer`](answer::answer): its replies on the wire, within the broker's
//! payload limit); a refusal told to its sender goes the same way, as its replies.

mod answer;
mod run;

use super::{Failure, Process, State};
use crate::admission::{self, Policy, Refusal, Refused, Served};
use crate::message::Reply;
use crate::methods::Method;
use crate::node::Node;
use crate::subject::{NameError, Subject};
use answer::answer;
use crossbeam_channel::{Receiver, Select, Sender};
use run::run;
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the work messages left for later is looked at again while some waits (see
/// [`Subscriber::tick`]).
const TICK: Duration = Duration::from_secs(1);

/// How long after a handler says it left work the first tick comes, when none is due: its
/// message's own fsyncs done, and most commands' answers sent.
const SETTLE: Duration = Duration::from_millis(100);

/// How many received messages may wait, per subscription, for a handler; see the module
/// docs.
pub const QUEUED_PER_SUBSCRIPTION: usize = 128;
/// How many bytes of them (or one message as large as the broker takes, if that is more):
/// a client holding no key can send messages of the broker's largest size to every subject
/// of a node whose handlers are busy, and 128 of a megabyte on each of some thirty
/// subjects was 4 GB waiting, on a Pi.
pub const QUEUED_BYTES_PER_SUBSCRIPTION: usize = 2 << 20;

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
        // (`tick`): that is done `SETTLE` later, and every second after while some waits.
        // An idle subscriber sleeps until a message comes.
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
            // Due, it comes first: a wait with a deadline ends there only if nothing is
            // ready, and a flood of messages would put it off for as long as it lasts.
            if tick_at.is_some_and(|at| Instant::now() >= at) {
                let more = self.tick(&subs, &subjects, &mut dropped, &later);
                tick_at = more.then(|| Instant::now() + TICK);
            }
            let op = match tick_at {
                Some(at) => match select.select_deadline(at) {
                    Ok(op) => op,
                    // Due now: ticked at the top.
                    Err(_) => continue,
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
                    // Not at once: the message that said so is making its own record
                    // durable now (`Started`), and the writes' fsyncs (keys/senders.json:
                    // the file, then the folder) ran beside that one on the disk, for
                    // every command to a node that had been quiet for a second (strace).
                    if tick_at.is_none() {
                        tick_at = Some(Instant::now() + SETTLE);
                    }
                }
                i => {
                    let msg = op.recv(subs[i].receiver()).map_err(|_| Error::Closed {
                        subject: subjects[i].clone(),
                    })?;
                    subs[i].took(&msg);
                    let (method, node, conn) =
                        (self.method.clone(), self.node.clone(), conn.clone());
                    let deferred = deferred_tx.clone();
                    let job = move || handle(&*method, &node, &conn, msg, &deferred);
                    let handlers = &self.node.handlers;
                    let started = if self.method.puts_right() {
                        handlers.run_to_put_right(stop, name, job)
                    } else {
                        handlers.run(stop, name, job)
                    };
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
    /// queue bounded ([`QUEUED_PER_SUBSCRIPTION`], [`QUEUED_BYTES_PER_SUBSCRIPTION`]).
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
        let bytes = QUEUED_BYTES_PER_SUBSCRIPTION.max(conn.max_payload());
        for sub in &subs {
            sub.set_message_limits(QUEUED_PER_SUBSCRIPTION);
            sub.set_bytes_limit(bytes);
        }
        Ok((subjects, subs))
    }

    /// The work handling leaves for later: the client's drops, the refusal minute, and the
    /// files (the method's own, hello-nodes.json; keys/senders.json) written on a handler
    /// thread (see [`Later`]). Returns whether some still waits (to look again in a
    /// second).
    fn tick(
        &self,
        subs: &[nats::Subscription],
        subjects: &[String],
        dropped: &mut [usize],
        later: &Arc<Later>,
    ) -> bool {
        self.count_dropped(subs, subjects, dropped);
        let refusals = self.node.refusal_reports_due();
        let files = later.write(&self.method, &self.node);
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
                "{subject}: dropped {new} incoming message(s): {QUEUED_PER_SUBSCRIPTION} (or {QUEUED_BYTES_PER_SUBSCRIPTION} bytes) were already waiting for a handler (all {} busy); senders of ACK kinds will try again",
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
    /// look again (in a second). Never waits for a handler place: with every place held
    /// (long commands), the subscriber would stop taking messages, those that put the node
    /// right included; the writes wait for the next turn instead.
    fn write(self: &Arc<Self>, method: &Arc<dyn Method>, node: &Arc<Node>) -> bool {
        if self.busy.load(Ordering::Acquire) {
            return true;
        }
        let changed = self.changed.swap(false, Ordering::AcqRel);
        if !(self.more.swap(false, Ordering::AcqRel) || changed) {
            return false;
        }
        self.busy.store(true, Ordering::Release);
        let (later, method, job_node) = (self.clone(), method.clone(), node.clone());
        let (name, to_put_right) = (method.name(), method.puts_right());
        let job = move || {
            // A panic must not leave `busy` set: no write would start again.
            let more = catch_unwind(AssertUnwindSafe(|| {
                let written = method.tick(&job_node.context());
                let senders = job_node.trusted.persist_senders(false);
                written || senders
            }))
            .unwrap_or(true);
            later.more.store(more, Ordering::Release);
            later.busy.store(false, Ordering::Release);
        };
        // On a handler thread if a place is free; else on a thread of its own (one write
        // at a time per subscriber: `busy`), so that a node whose places are all held
        // (long commands) still writes hello-nodes.json and keys/senders.json.
        let started = match node.handlers.try_run(name, to_put_right, job) {
            Ok(started) => started,
            Err(job) => std::thread::Builder::new()
                .name(format!("later {name}").chars().take(15).collect())
                .stack_size(256 * 1024)
                .spawn(job)
                .map_err(|e| log::error!("cannot start a thread for {name}'s writes: {e}"))
                .is_ok(),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

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
