//! The subscriber: one process per method, subscribed to `<thisnode>.*.<method>`. Each
//! received message is handled on a handler thread of its own (see
//! [`Handlers`](crate::node::Handlers)), at most `--maxConcurrentHandlers` at once across
//! all methods (past that, the subscriber waits, and NATS holds the messages).
//!
//! Before a method runs, the message must pass the receiver's checks ([`check`]): it
//! decodes, its subject agrees with its content, its sender may call it (commands only from
//! `--allowCommandsFrom`, by default the central node; events from anyone), and it is
//! signed by a key trusted for its sender, recently (see [`crate::keys`]). A message that
//! fails a check is answered with the refusal (never an ACK), logged, and reported to the
//! central error logger. ACK kinds are answered only after the method has run.
//!
//! A retry of a message already handled (its ACK was lost) is answered with the stored
//! reply rather than run again; one still running is left to its first run's reply; one
//! that was running when this node died is answered with an error saying so (see
//! [`crate::received`]).

use super::{Process, State};
use crate::broker;
use crate::keys::Verdict;
use crate::message::{self, Envelope, Reply, Status};
use crate::methods::{Method, Outcome};
use crate::node::Node;
use crate::received::Seen;
use crate::subject::Subject;
use crossbeam_channel::{select, Receiver};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

pub struct Subscriber {
    pub method: Arc<dyn Method>,
    pub node: Arc<Node>,
    pub state: Arc<State>,
}

impl Process for Subscriber {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), String> {
        self.state.set("waiting for the broker");
        let Some(conn) = self.node.broker.wait(stop) else {
            return Ok(());
        };
        let filter = Subject::method_filter(&self.node.config.node, self.method.name());
        let sub = conn
            .subscribe(&filter)
            .map_err(|e| format!("cannot subscribe to {filter}: {e}"))?;
        // Make sure the subscription is registered before we say we listen.
        conn.flush_timeout(Duration::from_secs(5)).ok();
        self.state.set(format!("listening on {filter}"));
        log::debug!("listening on {filter}");
        let tick = crossbeam_channel::tick(Duration::from_secs(1));
        loop {
            select! {
                recv(sub.receiver()) -> msg => {
                    let msg = msg.map_err(|_| format!("subscription to {filter} closed"))?;
                    let (method, node, conn) = (self.method.clone(), self.node.clone(), conn.clone());
                    let started = self.node.handlers.run(stop, self.method.name(), move || {
                        if message::is_batch(&msg.data) {
                            handle_batch(&*method, &node, &conn, msg);
                        } else {
                            handle(&*method, &node, &conn, msg);
                        }
                    });
                    if !started && crate::process::stopping(stop) {
                        return Ok(());
                    }
                    // Otherwise not lost either: without an ACK the sender tries again.
                },
                recv(tick) -> _ => {
                    self.method.tick(&self.node);
                    self.node.refusal_reports_due();
                },
                recv(stop) -> _ => {
                    self.method.flush(&self.node);
                    return Ok(());
                },
            }
        }
    }
}

fn handle(method: &dyn Method, node: &Node, conn: &nats::Connection, msg: nats::Message) {
    let name = method.name();
    let (id, from, outcome, label) = match check(node, &msg) {
        Err((id, from, why)) => {
            let why = format!(
                "{} refused {} from {} (id {}): {why}",
                node.config.node,
                msg.subject,
                if from.is_empty() {
                    "an unknown sender"
                } else {
                    &from
                },
                if id.is_empty() { "unknown" } else { &id },
            );
            node.report_refusal(why.clone());
            (id, from, Outcome::refused(why), "refused")
        }
        Ok(envelope) => match node.received.begin(&envelope.id) {
            Ok(Seen::Running) => {
                node.metrics
                    .received
                    .with_label_values(&[name, "duplicate"])
                    .inc();
                log::info!(
                    "{}: {} is still running; its reply will answer this retry",
                    msg.subject,
                    envelope.id
                );
                return;
            }
            Ok(Seen::Done(reply)) => {
                node.metrics
                    .received
                    .with_label_values(&[name, "duplicate"])
                    .inc();
                log::info!(
                    "{}: {} already handled; sending the stored reply",
                    msg.subject,
                    envelope.id
                );
                send_reply(node, conn, &msg, &reply);
                return;
            }
            Ok(Seen::Interrupted) => {
                let why = format!(
                    "{} was interrupted by a restart of {} before it finished; not run again",
                    envelope.id, node.config.node
                );
                log::warn!("{}: {why}", msg.subject);
                (
                    envelope.id,
                    envelope.from_node,
                    Outcome::error(why),
                    "error",
                )
            }
            Err(e) => {
                // Not run: without a durable record it might run twice. The sender retries.
                log::error!(
                    "{}: cannot record {} as started: {e}",
                    msg.subject,
                    envelope.id
                );
                return;
            }
            Ok(Seen::New) => {
                let outcome = catch_unwind(AssertUnwindSafe(|| method.handle(&envelope, node)))
                    .unwrap_or_else(|_| Outcome::error(format!("method {name} panicked")));
                let label = label_of(outcome.status);
                (envelope.id, envelope.from_node, outcome, label)
            }
        },
    };
    node.metrics
        .received
        .with_label_values(&[name, label])
        .inc();
    let reply = Reply {
        id,
        from_node: node.config.node.clone(),
        status: outcome.status,
        exit_code: outcome.exit_code,
        output: outcome.output,
    };
    log::debug!("{}: {} from {from}: {label}", msg.subject, reply.id);
    if label == "refused" {
        send_reply(node, conn, &msg, &reply);
        return;
    }
    // Recorded, then sent, then made durable: the fsync is off the ACK's path.
    if let Err(e) = node.received.record(std::slice::from_ref(&reply)) {
        // Not sent: a retry will be answered "interrupted" rather than run again.
        log::error!(
            "{}: cannot record the reply to {}: {e}",
            msg.subject,
            reply.id
        );
        return;
    }
    send_reply(node, conn, &msg, &reply);
    if let Err(e) = node.received.sync() {
        log::error!(
            "{}: cannot sync the reply to {}: {e}",
            msg.subject,
            reply.id
        );
    }
}

/// The receiver's checks, in order: the message decodes and agrees with its subject; its
/// sender may call this method; and its signature verifies against a key trusted for that
/// sender, sent within the replay window. Commands must be signed; events from a sender
/// whose key is known must be too (else anyone could speak for it); other events are taken
/// from anyone. On refusal: the id and sender if known, and why.
fn check(node: &Node, msg: &nats::Message) -> Result<Envelope, (String, String, String)> {
    let subject = Subject::parse(&msg.subject).map_err(|e| (String::new(), String::new(), e))?;
    let envelope = Envelope::decode(&msg.data).map_err(|e| (String::new(), String::new(), e))?;
    let refuse = |why: String| Err((envelope.id.clone(), envelope.from_node.clone(), why));
    if let Err(why) = check_envelope(node, &subject, &envelope) {
        return refuse(why);
    }
    let m = &envelope.message;
    if let Err(why) = check_signature(node, msg, &envelope.from_node, m.kind.is_command()) {
        return refuse(why);
    }
    Ok(envelope)
}

/// The checks on one message's content: it agrees with its subject, and its sender may
/// call its method here.
fn check_envelope(node: &Node, subject: &Subject, envelope: &Envelope) -> Result<(), String> {
    let m = &envelope.message;
    let from = envelope.from_node.as_str();
    if m.to_node != subject.node || m.kind != subject.kind || m.method != subject.method {
        return Err(format!(
            "its content ({}.{}.{}) does not match its subject",
            m.to_node,
            m.kind.as_str(),
            m.method
        ));
    }
    let config = &node.config;
    if m.kind.is_command()
        && !config
            .allow_commands_from
            .iter()
            .any(|rule| rule.permits(from, &m.method))
    {
        let rules: Vec<String> = config
            .allow_commands_from
            .iter()
            .map(|r| r.to_string())
            .collect();
        return Err(format!(
            "{from} may not call {} here (allowCommandsFrom: {})",
            m.method,
            rules.join(", ")
        ));
    }
    Ok(())
}

/// The signature on a wire message (one message or a batch) that says it is from `from`.
fn check_signature(
    node: &Node,
    msg: &nats::Message,
    from: &str,
    command: bool,
) -> Result<(), String> {
    let config = &node.config;
    let verdict = node.trusted.verify(
        from,
        msg.headers.as_ref(),
        &msg.data,
        Some(config.replay_window),
    );
    match verdict {
        Verdict::Verified => Ok(()),
        Verdict::Bad(why) => Err(why),
        Verdict::Unsigned if command => {
            Err("a command must be signed by its sender; this one is not".into())
        }
        Verdict::UnknownSender if command => Err(format!(
            "{} trusts no key for {from}; on {}, run `steward keys trust {from} KEY` with the key `steward keys show` prints on {from}",
            config.node, config.node
        )),
        Verdict::Unsigned if node.trusted.knows(from) => Err(format!(
            "not signed, yet {from}'s key is trusted here: a forgery"
        )),
        Verdict::Unsigned | Verdict::UnknownSender => Ok(()),
    }
}

/// A batch: several messages of one subject from one sender, run in order on this one
/// thread, with the receiver's record written once before and once after for all of them
/// (and, for methods that can, their work done with one write). Answered with the replies
/// in the batch's order, once all have run. A batch that cannot be decoded is answered with
/// one refusal, and the sender falls back to sending its messages one by one.
fn handle_batch(method: &dyn Method, node: &Node, conn: &nats::Connection, msg: nats::Message) {
    let name = method.name();
    let refused = |from: &str, ids: &[String], why: String| {
        let why = format!(
            "{} refused a batch of {} on {} from {}: {why}",
            node.config.node,
            ids.len().max(1),
            msg.subject,
            if from.is_empty() {
                "an unknown sender"
            } else {
                from
            },
        );
        node.report_refusal(why.clone());
        node.metrics
            .received
            .with_label_values(&[name, "refused"])
            .inc_by(ids.len().max(1) as u64);
        why
    };
    let batch = match Subject::parse(&msg.subject)
        .and_then(|s| message::decode_batch(&msg.data).map(|batch| (s, batch)))
    {
        Ok(b) => b,
        Err(e) => {
            let why = refused("", &[], e);
            send_reply(
                node,
                conn,
                &msg,
                &Reply::refusal(String::new(), &node.config.node, why),
            );
            return;
        }
    };
    let (subject, batch) = batch;
    let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
    let from = batch[0].from_node.clone();
    let check = || {
        if let Some(e) = batch.iter().find(|e| e.from_node != from) {
            return Err(format!("it mixes senders ({from}, {})", e.from_node));
        }
        for e in &batch {
            check_envelope(node, &subject, e).map_err(|why| format!("{}: {why}", e.id))?;
        }
        check_signature(node, &msg, &from, subject.kind.is_command())
    };
    if let Err(why) = check() {
        let why = refused(&from, &ids, why);
        let replies: Vec<Reply> = ids
            .iter()
            .map(|id| Reply::refusal(id.clone(), &node.config.node, why.clone()))
            .collect();
        send_batch_reply(node, conn, &msg, &replies);
        return;
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let seen = match node.received.begin_many(&id_refs) {
        Ok(seen) => seen,
        Err(e) => {
            // Not run: without a durable record it might run twice. The sender retries.
            log::error!("{}: cannot record a batch as started: {e}", msg.subject);
            return;
        }
    };
    if seen.contains(&Seen::Running) {
        // A retry of a batch still running: its first run's replies will answer it.
        log::info!(
            "{}: a batch is still running; its replies will answer this retry",
            msg.subject
        );
        return;
    }
    let new: Vec<&Envelope> = batch
        .iter()
        .zip(&seen)
        .filter(|(_, s)| **s == Seen::New)
        .map(|(e, _)| e)
        .collect();
    let mut outcomes = catch_unwind(AssertUnwindSafe(|| method.handle_batch(&new, node)))
        .unwrap_or_else(|_| vec![Outcome::error(format!("method {name} panicked")); new.len()])
        .into_iter();
    let mut replies = Vec::with_capacity(batch.len());
    let mut to_record = Vec::new();
    for (envelope, seen) in batch.iter().zip(seen) {
        let (outcome, label) = match seen {
            Seen::Done(reply) => {
                node.metrics
                    .received
                    .with_label_values(&[name, "duplicate"])
                    .inc();
                replies.push(reply);
                continue;
            }
            Seen::Interrupted => (
                Outcome::error(format!(
                    "{} was interrupted by a restart of {} before it finished; not run again",
                    envelope.id, node.config.node
                )),
                "error",
            ),
            Seen::New | Seen::Running => {
                let outcome = outcomes
                    .next()
                    .unwrap_or_else(|| Outcome::error(format!("method {name} gave no outcome")));
                let label = label_of(outcome.status);
                (outcome, label)
            }
        };
        node.metrics
            .received
            .with_label_values(&[name, label])
            .inc();
        let reply = Reply {
            id: envelope.id.clone(),
            from_node: node.config.node.clone(),
            status: outcome.status,
            exit_code: outcome.exit_code,
            output: outcome.output,
        };
        if label != "refused" {
            to_record.push(reply.clone());
        }
        replies.push(reply);
    }
    if let Err(e) = node.received.record(&to_record) {
        log::error!("{}: cannot record a batch's replies: {e}", msg.subject);
        return;
    }
    log::debug!("{}: a batch of {} from {from}", msg.subject, replies.len());
    send_batch_reply(node, conn, &msg, &replies);
    if let Err(e) = node.received.sync() {
        log::error!("{}: cannot sync a batch's replies: {e}", msg.subject);
    }
}

fn label_of(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Error => "error",
        Status::Refused => "refused",
    }
}

/// Sends the reply if the sender asked for one (ACK kinds), trimming output that would
/// exceed the broker's payload limit.
fn send_reply(node: &Node, conn: &nats::Connection, msg: &nats::Message, reply: &Reply) {
    let Some(to) = &msg.reply else { return };
    let mut bytes = reply.encode();
    let max = conn.max_payload();
    if max > 0 && bytes.len() > max {
        let mut trimmed = reply.clone();
        let keep = trimmed.output.len().saturating_sub(bytes.len() - max + 128);
        let mut cut = keep;
        while !trimmed.output.is_char_boundary(cut) {
            cut -= 1;
        }
        trimmed.output.truncate(cut);
        trimmed
            .output
            .push_str("\n[steward: output trimmed to the broker's payload limit]\n");
        bytes = trimmed.encode();
    }
    if let Err(e) = broker::publish(conn, &node.identity, to, None, &bytes) {
        // The sender will try again and get the stored reply.
        log::warn!("cannot send the reply for {}: {e}", reply.id);
    }
}

/// Sends a batch's replies, trimming command output if the whole would exceed the broker's
/// payload limit.
fn send_batch_reply(node: &Node, conn: &nats::Connection, msg: &nats::Message, replies: &[Reply]) {
    let Some(to) = &msg.reply else { return };
    let mut bytes = Reply::encode_batch(replies);
    let max = conn.max_payload();
    if max > 0 && bytes.len() > max {
        let share = max / replies.len().max(1) / 2;
        let trimmed: Vec<Reply> = replies
            .iter()
            .cloned()
            .map(|mut r| {
                if r.output.len() > share {
                    let mut cut = share;
                    while !r.output.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    r.output.truncate(cut);
                    r.output
                        .push_str("\n[steward: output trimmed to the broker's payload limit]\n");
                }
                r
            })
            .collect();
        bytes = Reply::encode_batch(&trimmed);
    }
    if let Err(e) = broker::publish(conn, &node.identity, to, None, &bytes) {
        log::warn!("cannot send the replies to a batch on {}: {e}", msg.subject);
    }
}
