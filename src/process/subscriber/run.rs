//! Running an admitted message (or batch): exactly once, in order, recorded before and
//! after in the receiver's log ([`crate::received`]; not for a method that is not
//! [`Method::remembered`], Hello), then answered ([`mod@super::answer`]: [`fit`], [`send`]).
//!
//! One message and a batch (several events of one subject from one sender, run in order
//! with the receiver's record written once before and once after for all) are handled by
//! the same code. A retry of a message already handled (its ACK was lost) is answered with
//! the stored reply rather than run again; one still running is left to its first run's
//! reply; one that was running when this node died is answered with an error saying so
//! (see [`crate::received`]), or, for a method that does the same thing twice as once
//! ([`Method::reruns_interrupted`]: a copy's chunk), run again. A method that cannot take
//! work now ([`Method::ready`]: a log while the disk is below its floor) leaves the message
//! unrecorded and unanswered, so its sender tries again later.
//!
//! A request that asks for its result elsewhere (`replyMethod`) has the result journaled
//! as a message of its own, to its sender, before the request is recorded as finished; the
//! ACK then says where the result went (see [`crate::reply`]).

use super::answer::{fit, send};
use crate::admission::Admitted;
use crate::message::{Envelope, Reply, Status};
use crate::methods::{Method, Outcome};
use crate::node::Node;
use crate::received::Seen;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs an admitted message (or batch) exactly once, in order, and answers with the
/// replies: the receiver's record is written before (`Started`, fsync'd) and after
/// (`Finished`, written before the answer, fsync'd after it, off its path; if it cannot be
/// written, the answer goes all the same and its ids count as interrupted from then on);
/// none for a method that is not [`Method::remembered`] (Hello). Results asked
/// for as messages of their own are journaled before the record ([`send_results`]).
pub(super) fn run(
    method: &dyn Method,
    node: &Node,
    conn: &nats::Connection,
    subject: &str,
    a: Admitted,
) {
    if method.recalls() {
        return recall(method, node, conn, subject, &a);
    }
    let Some(seen) = begin(method, node, subject, &a) else {
        return;
    };
    // The ids started here (or answered as interrupted) end with their recorded replies;
    // if those are never recorded (the write fails, or a panic on the way), they are
    // given up as interrupted.
    let mut started = Started {
        node,
        from: &a.from,
        ids: if method.remembered() {
            a.envelopes
                .iter()
                .zip(&seen)
                .filter(|(_, s)| matches!(s, Seen::New | Seen::Interrupted))
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
    // Cut to what an answer carries before it is recorded: a retry gets what the first
    // answer had, and the record stays within what the received log reads back (an 11 MiB
    // HttpGet body of control characters was a record it took for damage, and cut there:
    // the `Started` records after it were lost, and their commands ran again).
    let fitted = fit(method, conn, &a, &mut replies);
    let answer = |replies: &[Reply]| {
        if let Some(bytes) = &fitted {
            send(node, &a, bytes, &replies[0].id);
        }
    };
    if !method.remembered() {
        answer(&replies);
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
    answer(&replies);
    drop(started);
    if recorded.is_ok() {
        if let Err(e) = node.received.sync() {
            node.stop_if_received_unusable();
            log::error!("{subject}: cannot sync the reply to {first}: {e}");
        }
    }
}

/// Answers a sender asking again for the reply of its message that shares the request's id
/// (`ReplyAgain`, see [`crate::methods::reply_again`]) from the receiver's record: the
/// stored reply, or the error a retry of an interrupted message gets. Runs nothing and
/// records nothing; a message not known here, or still running, gets no answer.
fn recall(method: &dyn Method, node: &Node, conn: &nats::Connection, subject: &str, a: &Admitted) {
    let [envelope] = &a.envelopes[..] else {
        // Not steward's (it asks one at a time): said where a flood is not a flood of lines.
        log::debug!(
            "{subject}: a batch from {} answered with nothing: asked one message at a time",
            a.from
        );
        return;
    };
    let id = &envelope.id;
    let reply = match node.received.recall(&a.from, id) {
        Ok(Seen::Done(reply)) => reply,
        Ok(Seen::Interrupted) => Reply {
            id: id.clone(),
            from_node: node.config.node.clone(),
            to_node: a.from.clone(),
            status: Status::Error,
            exit_code: None,
            output: interrupted(id, node),
            batch_max: None,
            digest_sig: false,
            interrupted: true,
        },
        Ok(Seen::New) => {
            log::debug!("{subject}: {id} from {} is not known here (never received, or forgotten): no reply to give again", a.from);
            return;
        }
        Ok(Seen::Running) => {
            log::debug!(
                "{subject}: {id} from {} still runs: its own reply answers it",
                a.from
            );
            return;
        }
        Err(e) => {
            log::error!(
                "{subject}: cannot read the reply to {id} from {}: {e}",
                a.from
            );
            return;
        }
    };
    log::info!("{subject}: {id} from {}: its reply given again", a.from);
    node.metrics
        .received
        .with_label_values(&[method.name(), "recalled"])
        .inc();
    super::answer::answer(method, node, conn, a, &[reply]);
}

/// What a retry of message `id` (or a sender asking again for its reply) is told when it
/// was interrupted here.
fn interrupted(id: &str, node: &Node) -> String {
    format!(
        "{id} was interrupted by a restart of {} before it finished, or its reply could not be recorded there; not run again",
        node.config.node
    )
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
    let ctx = node.context();
    let writing = a.envelopes.iter().map(|e| method.writes(e, &ctx)).sum();
    if let Err(why) = method.ready(&ctx, writing) {
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
    // The sender's lane: what follows this node's name in the subject (`CommandACK.CLICommand`).
    let lane = subject.split_once('.').map_or(subject, |(_, lane)| lane);
    let seen = match node
        .received
        .begin_batch(&a.from, lane, &ids, method.reruns_interrupted())
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
                let why = interrupted(&envelope.id, node);
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
        // (`None`); the ACK says how the request ended. An interrupted run's error goes
        // there too, as a note of steward's on a line of its own (what was streamed before
        // went as whole lines): a file its output was streamed to (`CLICommandCont`,
        // `TailFile`) ended where the run did, with no word of why.
        let max_payload = node.broker.max_payload();
        let result = match seen {
            Seen::New if !outcome.streamed => {
                crate::reply::result_message(envelope, &outcome, max_payload)
            }
            Seen::Interrupted => {
                let noted = Outcome {
                    output: format!("[steward: {}]\n", outcome.output),
                    ..outcome.clone()
                };
                crate::reply::result_message(envelope, &noted, max_payload)
            }
            _ => None,
        };
        let nowhere = envelope.message.reply_method.as_deref() == Some(crate::reply::NONE);
        // An interrupted run's error stays in its ACK too (central's replies/ and log).
        let elsewhere = seen == Seen::New && (result.is_some() || nowhere);
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
            interrupted: seen == Seen::Interrupted,
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
                // After what the ACK says of its own (an interrupted run's error), if any.
                let mut said = std::mem::take(&mut replies[i].output);
                if !said.is_empty() && !said.ends_with('\n') {
                    said.push('\n');
                }
                replies[i].output = format!("{said}result sent to {route} as {id}\n");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_budget::{LogBudget, LogLimits};
    use crate::message::{Kind, Message};

    /// A batch `ready` takes must not be refused for good by the log write's own floor check
    /// for bytes `ready` did not count: what is written (control characters escaped, four
    /// bytes each; a newline added) is more than what was sent. Deferred, the sender tries
    /// again; refused, its messages end in its failed-messages.txt while there was room for
    /// what `ready` was told.
    #[test]
    fn a_log_write_ready_took_is_not_refused_for_what_ready_did_not_count() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut node = crate::node::tests::offline_node_named(dir.path(), "central");
        let method = crate::methods::text_logging::TextLogging;
        let subject = "central.EventACK.TextLogging";
        let admitted = |id: &str, text: String| Admitted {
            envelopes: vec![Envelope {
                id: id.into(),
                from_node: "ship1".into(),
                accepted: 0,
                reply_ticket: None,
                grant: None,
                message: Message::new("central", Kind::EventAck, "TextLogging", vec![text]),
            }],
            batch: false,
            from: "ship1".into(),
            signed: crate::keys::Signed {
                sent: 0,
                seq: 1,
                sig: "00".into(),
                key: String::new(),
                covers: crate::keys::Covers::Payload,
            },
            reply_to: None,
        };
        // A first message, so that the receiver's record has its space ahead already.
        let first = admitted("ship1-1", "first\n".into());
        let seen = begin(&method, &node, subject, &first).unwrap();
        run_new(&method, &node, &first, &seen);
        let (free, _) = crate::sys::free_bytes(dir.path()).unwrap();
        // 256 KiB above the floor; 128 KiB sent, 512 KiB to write.
        node.log_budget = LogBudget::new(LogLimits::new(u64::MAX, Some(free - (256 << 10))));
        let a = admitted("ship1-2", "\x01".repeat(128 << 10));
        let Some(seen) = begin(&method, &node, subject, &a) else {
            return; // deferred: its sender tries again
        };
        let out = run_new(&method, &node, &a, &seen);
        assert_ne!(out[0].status, Status::Refused, "{}", out[0].output);
    }
}
