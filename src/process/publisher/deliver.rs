//! Delivering: one attempt (publish, wait for a reply signed by the destination and bound
//! to one of the message's own attempts), a message's attempts under its rules
//! ([`crate::retry`]), a batch of events, a NACK published once.

use super::*;
use crate::broker::{Confirm, Heard};
use crate::grant::CopyGrant;
use crate::keys::{Covers, Identity, Scope, Sealed};
use crate::message::Envelope;
use crate::reply::ResultRoute;
use std::borrow::Cow;

/// The first pause before a message answered with "no responders" is sent again within
/// its attempt; each one after is three times the last, up to [`LATE_RESEND`]: sent again
/// 0.05, 0.2, 0.65, 2, 6 and 18 s after the first send, then every 30 s (as far as the
/// attempt lasts: 10 s by default, a week at most), and at once when the destination
/// says Hello.
const FIRST_RESEND: Duration = Duration::from_millis(50);
/// A node that said no Hello for this long may be away: a lane to it whose sends no one
/// heard gives its thread up to waiting lanes (see `answer`). Two of the default 30 s
/// Hellos.
const SILENT_AFTER: Duration = Duration::from_secs(60);
const LATE_RESEND: Duration = Duration::from_secs(30);
/// A Hello sends a message that found no one again at most this often, and the pause
/// after such a send is at most this.
const HELLO_RESEND: Duration = Duration::from_secs(1);

/// How many of a message's latest sends a reply may answer: the first send of the attempt
/// under way and its six quick resends, and one more; besides, the first a listener took is kept
/// ([`Sends`]). A reply is checked against each, so this also bounds what a forged one
/// costs.
const SIGNATURES_KEPT: usize = 8;

/// The signatures of a message's sends that a reply may be bound to: the last
/// [`SIGNATURES_KEPT`], and the first a listener took (no "no responders" came for it
/// before the next send), kept whatever follows: it may be running there, a long command,
/// while Hellos send it again.
#[derive(Default, Debug)]
pub(super) struct Sends {
    last: Vec<String>,
    pinned: Option<String>,
    /// An attempt ended with its last send not answered "no responders": a listener may
    /// have taken it (or a link cut silently holds it). See `Publisher::await_late`.
    unanswered_at_end: bool,
}

impl Sends {
    fn push(&mut self, sig: String) {
        if self.last.len() >= SIGNATURES_KEPT {
            self.last.remove(0);
        }
        self.last.push(sig);
    }

    /// The last send was heard: pinned, if none is yet.
    fn heard(&mut self) {
        if self.pinned.is_none() {
            self.pinned = self.last.last().cloned();
        }
    }

    /// Newest first, the pinned one last.
    fn iter(&self) -> impl Iterator<Item = &String> {
        self.last.iter().rev().chain(self.pinned.iter())
    }

    /// Whether a listener may have taken one of the sends, by what the broker said of
    /// them (a "no responders" is anyone's to forge: see `Publisher::await_late`).
    fn maybe_taken(&self) -> bool {
        self.pinned.is_some() || self.unanswered_at_end
    }
}

/// A batch as it goes: its own reply subject, its wire form, and its seal if it was made
/// ahead (while the receiver had the batch before it).
pub(super) struct BatchWire {
    pub reply_subject: String,
    pub payload: Vec<u8>,
    /// What its signature covers: its digest once the receiver said it checks those.
    pub covers: Covers,
    pub sealed: Option<Sealed>,
}

/// One attempt's request, as published (and published again after "no responders").
struct Request<'r> {
    subject: String,
    reply_subject: &'r str,
    to: &'r str,
    payload: &'r [u8],
    covers: Covers,
    timeout: Duration,
    deadline: Instant,
    /// The pause before the first resend after "no responders".
    pause: Duration,
}

/// The first messages in `slot` that fit in one batch under the broker's payload limit
/// (at least one): how many, and the batch's wire form, each envelope encoded once.
pub(super) fn batch_of(
    identity: &Identity,
    slot: &[Entry],
    max_payload: usize,
) -> (usize, Vec<u8>) {
    let limit = MAX_BATCH_BYTES.min(if max_payload > 0 {
        max_payload
    } else {
        MAX_BATCH_BYTES
    }) - 4096;
    let mut payload = vec![b'['];
    let mut count = 0;
    for entry in slot {
        let encoded = wire_form(identity, entry);
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

/// A message as it leaves: with its sender's ticket for the result it asks for, if it asks
/// for one (see [`crate::reply`]), and its grant for the copy it asks for, if it asks for
/// one (see [`crate::grant`]). The same bytes at every attempt (the signature is
/// deterministic), so the journal need not keep them. Any other message leaves as the
/// journal holds it.
pub(super) fn wire_form<'e>(identity: &Identity, entry: &'e Entry) -> Cow<'e, [u8]> {
    let envelope = &entry.envelope;
    let ticket = ResultRoute::of_request(envelope).map(|route| identity.vouch(&route.bytes()));
    let grant = CopyGrant::of_request(envelope).map(|grant| identity.vouch(&grant.bytes()));
    if ticket.is_none() && grant.is_none() {
        return Cow::Borrowed(&entry.encoded);
    }
    Cow::Owned(
        Envelope {
            reply_ticket: ticket.or_else(|| envelope.reply_ticket.clone()),
            grant: grant.or_else(|| envelope.grant.clone()),
            ..Envelope::clone(envelope)
        }
        .encode(),
    )
}

/// How soon the broker must answer a PING sent at the end of a failed attempt for the
/// attempt to count against its destination at once (see [`crate::broker`]): a quarter of
/// its ACK wait, between 1 and 5 s. Slower, the link was holding bytes, the attempt's among
/// them, so the destination did not have the attempt's time: it gets one more ACK wait for
/// the same send.
fn prompt(ack_wait: Duration) -> Duration {
    (ack_wait / 4).clamp(Duration::from_secs(1), crate::broker::FLUSH_TIMEOUT)
}

/// How long one attempt waits for the ACK: `timeout`; without it, a method allowed to run
/// longer than the default (`methodTimeout`) is waited for that long and a little more, so
/// that a long run is not mistaken for a lost message; else the node's default.
pub(super) fn ack_wait(message: &crate::message::Message, default: Duration) -> Duration {
    match (message.timeout, message.method_timeout) {
        (Some(t), _) => Duration::from_secs(t),
        (None, Some(t)) if t > 0 => default.max(Duration::from_secs(t.unsigned_abs() + 10)),
        // No limit on the run, none on the wait: as long as a message may wait at all.
        (None, Some(_)) => Duration::from_secs(crate::message::MAX_TIMEOUT_SECS),
        _ => default,
    }
}

impl Publisher {
    /// One attempt at a batch (`wire`: how it goes): its replies, in its order, or why
    /// not. `meanwhile` runs once the batch is published (or failed to be), while the
    /// receiver has it (the batch before it is finished then, the next one made ready and
    /// sealed); if it fails, so does this. The batch's timeout counts from when it is done.
    pub(super) fn deliver_batch(
        &self,
        replies: &Receiver<nats::Message>,
        batch: &[Entry],
        wire: BatchWire,
        stop: &Receiver<()>,
        meanwhile: impl FnOnce() -> Result<(), Error>,
    ) -> Result<Attempt<Vec<Reply>>, Error> {
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
        node.metrics
            .sent
            .with_label_values(&[self.subject.method.as_str()])
            .inc_by(batch.len() as u64);
        node.progress_all(
            batch
                .iter()
                .map(|e| (e.envelope.id.as_str(), Progress::Attempt(doing.clone()))),
        );
        let to = &batch[0].envelope.message.to_node;
        let mut request = self.request(&wire.reply_subject, to, &wire.payload, timeout);
        request.covers = wire.covers;
        let mut sigs = Sends::default();
        let sent = self.publish(&request, wire.sealed, &mut sigs);
        meanwhile()?;
        request.deadline = Instant::now() + timeout;
        if let Err(e) = sent {
            return Ok(Attempt::Failed(format!("cannot publish: {e}")));
        }
        Ok(
            self.answer(replies, &request, stop, false, &mut sigs, |bytes| {
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
            }),
        )
    }

    pub(super) fn deliver_acked(
        &self,
        replies: &Receiver<nats::Message>,
        reply_subject: &str,
        entry: &Entry,
        stop: &Receiver<()>,
    ) -> Delivery {
        let node = &self.node;
        let message = &entry.envelope.message;
        let timeout = ack_wait(message, node.config.default_timeout);
        let (made, mut continued) = {
            let mut slot = self.slot();
            (slot.attempts_made, slot.continued.take())
        };
        let mut rules = self.rules_for(entry).resumed(made);
        let payload = wire_form(&node.identity, entry);
        let subject = self.subject.to_string();
        let mut sigs = Sends::default();
        loop {
            // While our own link is down, wait for it: an outage here is not the
            // destination's failure and must not spend its retries.
            if node.broker.wait(stop).is_none() {
                return Delivery::Stopped;
            }
            if let Some(why) = node.broker.too_large(payload.len()) {
                return Delivery::Failed(why);
            }
            let epoch = node.broker.epoch();
            // An attempt this lane gave its thread up in the middle of goes on (counted
            // once), until its own deadline.
            let (attempt, then) = match continued.take() {
                Some(then) => (rules.made(), then),
                None => (
                    self.announce(&mut rules, entry, timeout),
                    Continued {
                        deadline: Instant::now() + timeout,
                        pause: FIRST_RESEND,
                    },
                ),
            };
            let accept = |bytes: &[u8]| reply_of(bytes, &entry.envelope.id, &message.to_node);
            // One given up in the middle whose time ran out while it waited its turn is
            // over: sent now, it would fail at once, whether the node ran it or not.
            let tried = if then.deadline <= Instant::now() {
                Attempt::Failed(format!(
                    "no ACK within {}s ({})",
                    timeout.as_secs(),
                    self.no_responders(&message.to_node)
                ))
            } else {
                self.attempt(
                    replies,
                    reply_subject,
                    &message.to_node,
                    &payload,
                    (timeout, then),
                    stop,
                    true,
                    &mut sigs,
                    accept,
                )
            };
            let mut last_error = match tried {
                Attempt::Acked(reply) => return Delivery::Acked(reply),
                Attempt::Stopped => return Delivery::Stopped,
                Attempt::Failed(why) => why,
                Attempt::Yielded { resend, then } => {
                    self.keep_sends(reply_subject, sigs);
                    return self.park(&rules, entry, attempt, resend, then);
                }
            };
            // Counted against the destination only once the broker has answered promptly
            // after it: a link cut silently looks up until the client's check notices (see
            // `crate::broker`), and an attempt lost or held in it was not the destination's
            // failure.
            if node.broker.epoch() == epoch {
                self.state.set(format!(
                    "attempt {attempt} of {} failed ({last_error}); counted once the broker answers a PING",
                    entry.envelope.id
                ));
            }
            // Dropped at once if the link went down since the attempt began.
            let heard = node.broker.answered(epoch, stop);
            // A time to live counts on the monotonic clock (see `crate::clock`).
            let now = crate::clock::now_for(entry.seq);
            let link_failed = match heard {
                // Late: the broker read the attempt only now (the link held its bytes, and
                // the PING behind them), so its destination has had none of the ACK wait.
                // It gets one more for that same send, without another copy (which would
                // cross a slow link again), and then the attempt counts, unless the link
                // dropped by the end of it (asked again: a second cut may have begun
                // meanwhile). Not past a time to live.
                Heard::Answered(after) if after > prompt(timeout) && !rules.expired(now) => {
                    log::info!(
                        "{subject}: attempt {attempt} of {}: the broker read it only after {:.1}s (the link held it); waiting {}s more for its ACK",
                        entry.envelope.id,
                        after.as_secs_f64(),
                        timeout.as_secs()
                    );
                    self.state.set(format!(
                        "attempt {attempt} of {}: the link held it {:.0}s; waiting {}s more for its ACK",
                        entry.envelope.id,
                        after.as_secs_f64(),
                        timeout.as_secs()
                    ));
                    let request = self.request(reply_subject, &message.to_node, &payload, timeout);
                    match self.answer(replies, &request, stop, true, &mut sigs, accept) {
                        Attempt::Acked(reply) => return Delivery::Acked(reply),
                        Attempt::Stopped => return Delivery::Stopped,
                        Attempt::Failed(why) => {
                            last_error = why;
                            match node.broker.answered(epoch, stop) {
                                Heard::Answered(_) => false,
                                Heard::Dropped => true,
                                Heard::Stopped => return Delivery::Stopped,
                            }
                        }
                        Attempt::Yielded { resend, then } => {
                            self.keep_sends(reply_subject, sigs);
                            return self.park(&rules, entry, attempt, resend, then);
                        }
                    }
                }
                Heard::Answered(_) => false,
                Heard::Dropped => true,
                Heard::Stopped => return Delivery::Stopped,
            };
            // Read again: the waits above may have lasted as long as an ACK wait.
            let now = crate::clock::now_for(entry.seq);
            let described = rules.describe(now);
            let pause = match rules.failed(&last_error, link_failed, now) {
                Next::Again => {
                    log::info!(
                        "{subject}: attempt {attempt} of {} cut short by the broker link; not counted",
                        entry.envelope.id
                    );
                    continue;
                }
                Next::GiveUp(why) => {
                    return Delivery::Failed(
                        match self.await_late(entry, (reply_subject, replies), &mut sigs, &why) {
                            Some(late) => format!("{why}; {late}"),
                            None => why,
                        },
                    )
                }
                Next::Pause(pause) => pause,
            };
            log::warn!(
                "{subject}: attempt {attempt}{described} of {} failed: {last_error}",
                entry.envelope.id
            );
            // Said while it pauses: the row said the attempt was under way, or waiting for
            // the broker's answer, until the next one began.
            self.state.set(format!(
                "attempt {attempt}{described} of {} failed ({last_error}); again in {:.0}s, or at a Hello from {}",
                entry.envelope.id,
                pause.as_secs_f64().ceil(),
                message.to_node
            ));
            // Pause before the next attempt; a Hello from the destination ends the pause.
            // Other lanes waiting for a thread meanwhile: give this one up until then.
            let until = Instant::now() + pause;
            let hello = node.presence.waiter(&message.to_node);
            loop {
                if node
                    .publishers_wanted
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    self.slot().attempts_made = rules.made();
                    self.keep_sends(reply_subject, sigs);
                    return Delivery::Parked { until, hello };
                }
                select! {
                    recv(hello) -> _ => {
                        log::info!("{subject}: {} said Hello; trying again now", message.to_node);
                        break;
                    },
                    recv(stop) -> _ => return Delivery::Stopped,
                    // A word that lanes wait for a thread, or a new message (kept waiting).
                    recv(self.wake) -> _ => continue,
                    recv(crossbeam_channel::at(until)) -> _ => break,
                }
            }
        }
    }

    /// A message given up after a send its node may have taken may run there all the
    /// same (a command allowed a `methodTimeout` past its attempts, copies held in its
    /// node's link while it was cut silently): its reply is awaited a while longer,
    /// whatever becomes of this publisher, for the node's `late replies` process to keep
    /// ([`LateReplies`]). Returns what to add to why it was given up: that it may have run,
    /// and whether a reply that comes later is kept.
    ///
    /// Commands only. "May have taken": a send not answered "no responders", or, as such
    /// an answer is anyone's to forge, a destination that said Hello (signed) within the
    /// last minute, or one this node hears no Hellos from (a ship commanding another,
    /// Hellos off). A reply that came while the attempt was being counted (the broker's
    /// PING) waits in this publisher's route (`replies`), and is handed on too.
    fn await_late(
        &self,
        entry: &Entry,
        (reply_subject, replies): (&str, &Receiver<nats::Message>),
        sigs: &mut Sends,
        why: &str,
    ) -> Option<String> {
        let to = &entry.envelope.message.to_node;
        let presence = &self.node.presence;
        // This publisher's sends, and those of the publishers before it that gave their
        // thread up: the run may answer any.
        let mut all = std::mem::take(&mut self.slot().earlier);
        if !sigs.last.is_empty() {
            all.push((reply_subject.to_string(), std::mem::take(sigs)));
        }
        let may_have = if all.is_empty() || !self.subject.kind.is_command() {
            return None; // never sent; or an event, whose late reply says only that it was
        } else if all.iter().any(|(_, sigs)| sigs.maybe_taken()) {
            format!("yet it may have reached {to} and run there")
        } else if presence.heard_within(to, SILENT_AFTER) {
            format!(
                "yet {to} said Hello within the minute, so it may have reached it and run there"
            )
        } else if !presence.ever_heard(to) {
            format!("yet this node hears no Hello from {to} to tell whether it is there, so it may have reached it and run there")
        } else {
            return None;
        };
        let method_timeout = entry.envelope.message.method_timeout.unwrap_or(0);
        let runs_for = match method_timeout {
            t if t > 0 => Duration::from_secs(t.unsigned_abs()),
            0 => Duration::ZERO,
            _ => crate::broker::LATE_AT_MOST, // no limit on its run
        };
        let now = Instant::now();
        let until = now + (runs_for + crate::broker::LATE_FOR).min(crate::broker::LATE_AT_MOST);
        let awaited = all.into_iter().try_for_each(|(reply_subject, sigs)| {
            self.node.await_late(crate::broker::GivenUp {
                lane: self.subject.clone(),
                id: entry.envelope.id.clone(),
                reply_subject,
                sigs: sigs.iter().cloned().collect(),
                why: why.to_string(),
                at: now,
                until,
            })
        });
        if let Err(full) = awaited {
            return Some(format!(
                "{may_have}, and a reply that comes later is not kept: {full}"
            ));
        }
        // Anything else in the route answers a message finished before: dropped anyway.
        for m in replies.try_iter() {
            self.node.broker.late.takes(&m);
        }
        Some(format!(
            "{may_have}: a reply that comes later is kept in its reply file"
        ))
    }

    /// What "no responders" on this lane's subject says of node `to`: that it is away, or,
    /// if it said Hello within the minute, that nothing there serves the subject (its
    /// subscriber stopped by `OpProcessStop` until its next start, or a version without
    /// the method).
    fn no_responders(&self, to: &str) -> String {
        let subject = &self.subject;
        if self.node.presence.heard_within(to, SILENT_AFTER) {
            format!("no responders on {subject}: {to} said Hello within the minute: unless it has just gone, nothing there serves this subject (its subscriber stopped by OpProcessStop until its next start, or a version without the method)")
        } else {
            format!("no responders on {subject}: {to} is not running, or not connected")
        }
    }

    /// This publisher gives its thread up before its first message is done: its sends of
    /// it, under this publisher's route, are kept in the slot for the next one (see
    /// [`Slot::earlier`]).
    fn keep_sends(&self, reply_subject: &str, sigs: Sends) {
        if sigs.last.is_empty() {
            return;
        }
        let mut slot = self.slot();
        if slot.earlier.len() >= EARLIER_SENDS {
            slot.earlier.remove(0);
        }
        slot.earlier.push((reply_subject.to_string(), sigs));
    }

    /// Gives the lane's thread up in the middle of attempt `attempt` (its destination not
    /// there, other lanes waiting): it goes on from `then` when the lane has a thread again,
    /// sending again at `resend` or at the destination's Hello.
    fn park(
        &self,
        rules: &Rules,
        entry: &Entry,
        attempt: u32,
        resend: Instant,
        then: Continued,
    ) -> Delivery {
        let to = &entry.envelope.message.to_node;
        log::info!(
            "{}: attempt {attempt} of {}: {to} is not there; other lanes have the thread until it sends again",
            self.subject,
            entry.envelope.id,
        );
        let mut slot = self.slot();
        slot.attempts_made = rules.made();
        slot.continued = Some(then);
        Delivery::Parked {
            until: resend,
            hello: self.node.presence.waiter(to),
        }
    }

    /// One attempt (of `timeout`, as `then` says where it stands): publish `payload`, then
    /// wait for a reply on `reply_subject` that is signed by `to`, bound to one of this message's
    /// sends (`sigs`, to which this attempt's are added), and that `accept` takes.
    #[allow(clippy::too_many_arguments)]
    fn attempt<T>(
        &self,
        replies: &Receiver<nats::Message>,
        reply_subject: &str,
        to: &str,
        payload: &[u8],
        (timeout, then): (Duration, Continued),
        stop: &Receiver<()>,
        single: bool,
        sigs: &mut Sends,
        accept: impl Fn(&[u8]) -> Result<T, NotAnAnswer>,
    ) -> Attempt<T> {
        let mut request = self.request(reply_subject, to, payload, timeout);
        (request.deadline, request.pause) = (then.deadline, then.pause);
        if let Err(e) = self.publish(&request, None, sigs) {
            return Attempt::Failed(format!("cannot publish: {e}"));
        }
        self.answer(replies, &request, stop, single, sigs, accept)
    }

    fn request<'r>(
        &self,
        reply_subject: &'r str,
        to: &'r str,
        payload: &'r [u8],
        timeout: Duration,
    ) -> Request<'r> {
        Request {
            subject: self.subject.to_string(),
            reply_subject,
            to,
            payload,
            covers: Covers::Payload,
            timeout,
            deadline: Instant::now() + timeout,
            pause: FIRST_RESEND,
        }
    }

    /// Publishes `request` (again), its signature kept in `sigs` with the last ones; with
    /// the seal made `ahead` for it if there is one and it is still fresh.
    fn publish(
        &self,
        request: &Request,
        ahead: Option<Sealed>,
        sigs: &mut Sends,
    ) -> io::Result<()> {
        let (broker, identity) = (&self.node.broker, &self.node.identity);
        let (subject, reply) = (&request.subject, Some(request.reply_subject));
        let sig = match ahead.filter(|sealed| identity.still_fresh(sealed)) {
            Some(sealed) => {
                broker.publish_sealed(subject, reply, sealed, request.payload, Confirm::ByAnswer)
            }
            None => broker.publish(
                identity,
                Scope::request(subject, reply),
                request.payload,
                request.covers,
                Confirm::ByAnswer,
            ),
        }?;
        // A late reply to an earlier send still answers this message.
        sigs.push(sig);
        Ok(())
    }

    /// Waits until `request`'s deadline for a reply on its reply subject that is signed by
    /// its destination, bound to one of its sends (`sigs`), and that `accept` takes.
    /// "No responders" is never the verdict (anyone can publish one on our inbox): a
    /// `single` message waits on for a signed reply until the deadline, and sends itself
    /// again, within the same attempt, after a pause that starts at [`FIRST_RESEND`] and
    /// grows with each one, so a destination that was restarting or reconnecting gets it
    /// as soon as it listens, not an attempt's timeout later (10 s by default, and up to
    /// a week: a command with a long `timeout`, to a ship that rebooted): after the
    /// six quick ones, every [`LATE_RESEND`], and at once on a Hello from the
    /// destination. A flood of forged ones gets one send per pause, and the reply to the
    /// last sends counts ([`SIGNATURES_KEPT`]). A batch gives up at once, as it does on a
    /// reply it cannot take, and sending one at a time sorts it out.
    fn answer<T>(
        &self,
        replies: &Receiver<nats::Message>,
        request: &Request,
        stop: &Receiver<()>,
        single: bool,
        sigs: &mut Sends,
        accept: impl Fn(&[u8]) -> Result<T, NotAnAnswer>,
    ) -> Attempt<T> {
        let &Request {
            ref subject,
            reply_subject,
            to,
            timeout,
            deadline,
            ..
        } = request;
        let mut hint: Option<String> = None;
        // The keys replies came signed with from a destination this node trusts no key for:
        // more than one, and someone else answers for it.
        let mut unknown_keys: Vec<String> = Vec::new();
        // After "no responders": when to send again, and the pause after the next one.
        let mut resend: Option<Instant> = None;
        let mut pause = request.pause;
        // Whether the last send was answered "no responders": then it goes again (every
        // pause, each Hello); one that found a listener goes again only at a Hello now and
        // then (see below).
        let mut unheard = false;
        // Whether any send of this attempt may have been taken (not answered "no
        // responders"): then it may run there, and the lane keeps its thread for the reply.
        let mut heard = false;
        // Every send unheard so far, the node silent (no Hello for a while: a "no
        // responders" is anyone's to forge, a Hello is signed, and a lane given up while
        // its command runs there loses the route of its reply), and other lanes waiting
        // for a thread: this one gives its thread up until it sends again (a thousand
        // ships away, each with an hour's attempt, held every thread `--maxPublishers`
        // allows, and the nodes that answer waited out their hour).
        let give_way = |unheard: bool, heard: bool, resend: Option<Instant>, pause: Duration| {
            let wanted = self
                .node
                .publishers_wanted
                .load(std::sync::atomic::Ordering::Relaxed);
            let silent = || !self.node.presence.heard_within(to, SILENT_AFTER);
            (single && unheard && !heard && wanted && silent()).then(|| Attempt::Yielded {
                resend: resend.map_or(deadline, |at| at.min(deadline)),
                then: Continued { deadline, pause },
            })
        };
        // Taken now: a Hello during the attempt is not missed (it drops the signal).
        let mut hello = self.node.presence.waiter(to);
        let mut hello_sent: Option<Instant> = None;
        let mut last_sent = Instant::now();
        loop {
            let wake = resend.map_or(deadline, |at| at.min(deadline));
            select! {
                recv(replies) -> msg => {
                    let Ok(msg) = msg else {
                        return Attempt::Failed("reply subscription closed".into());
                    };
                    if msg.subject != reply_subject {
                        // A late reply to a message already finished (one given up and
                        // awaited never comes here: see `crate::broker::Late`).
                        continue;
                    }
                    if msg.is_no_responders() {
                        let why = self.no_responders(to);
                        if !single {
                            return Attempt::Failed(why);
                        }
                        hint = Some(why);
                        unheard = true;
                        if resend.is_none() {
                            resend = Some(Instant::now() + pause);
                            pause = (pause * 3).min(LATE_RESEND);
                        }
                        if let Some(yielded) = give_way(unheard, heard, resend, pause) {
                            return yielded;
                        }
                        continue;
                    }
                    if let Err(why) = self.check_reply(to, &msg, sigs) {
                        // Said once an attempt: a flood of forgeries is not a flood of lines.
                        if hint.is_none() {
                            log::warn!("{subject}: ignoring a reply: {why}");
                        }
                        hint = Some(match why {
                            NotAnAnswer::UnknownSender { ref key, .. } => {
                                if !unknown_keys.contains(key) && unknown_keys.len() < 4 {
                                    unknown_keys.push(key.clone());
                                }
                                if unknown_keys.len() > 1 {
                                    format!(
                                        "{} trusts no key for {to}, and its replies came signed with {} different keys ({}): someone else answers for {to}; trust only the key `steward keys show` shows on {to}",
                                        self.node.config.node,
                                        unknown_keys.len(),
                                        unknown_keys.join(", ")
                                    )
                                } else {
                                    why.to_string()
                                }
                            }
                            _ => why.to_string(),
                        });
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
                recv(hello) -> _ => {
                    hello = self.node.presence.waiter(to);
                    // It listens now: a send that found no one goes again, at most once a
                    // second (a node saying Hello in a loop), and the pause after it is
                    // short again (the Hello may come just before it subscribes). One that
                    // found a listener may have been lost all the same (a link that died
                    // without the broker knowing yet, a node that restarted in the middle
                    // of running it): it goes again too, at most every 30 s, its first
                    // send's signature kept for the reply of the run it may have started.
                    let again = if unheard {
                        hello_sent.is_none_or(|at| at.elapsed() >= HELLO_RESEND)
                    } else {
                        last_sent.elapsed() >= LATE_RESEND
                    };
                    if single && again {
                        log::info!("{subject}: {to} said Hello; sending again now");
                        hello_sent = Some(Instant::now());
                        resend = Some(Instant::now());
                        pause = pause.min(HELLO_RESEND);
                    }
                },
                recv(stop) -> _ => return Attempt::Stopped,
                // A word that lanes wait for a thread, or a new message (kept waiting).
                recv(self.wake) -> _ => {
                    if let Some(yielded) = give_way(unheard, heard, resend, pause) {
                        return yielded;
                    }
                },
                recv(crossbeam_channel::at(wake)) -> _ => {
                    if Instant::now() < deadline {
                        resend = None;
                        if !unheard {
                            sigs.heard();
                            heard = true;
                        }
                        unheard = false;
                        last_sent = Instant::now();
                        self.node
                            .metrics
                            .resent
                            .with_label_values(&[self.subject.method.as_str()])
                            .inc();
                        if let Err(e) = self.publish(request, None, sigs) {
                            hint = Some(format!("cannot publish: {e}"));
                        }
                        continue;
                    }
                    // The last send found a listener, or a link that held it: the
                    // message may run there (see `Publisher::await_late`).
                    sigs.unanswered_at_end |= !unheard;
                    return Attempt::Failed(match hint {
                        Some(why) => format!("no ACK within {}s ({why})", timeout.as_secs()),
                        None => format!("no ACK within {}s", timeout.as_secs()),
                    });
                },
            }
        }
    }

    /// See [`check_reply`].
    fn check_reply(&self, to: &str, msg: &nats::Message, sigs: &Sends) -> Result<(), NotAnAnswer> {
        // `sigs` holds at least the attempt being answered.
        check_reply(&self.node, to, msg, sigs.iter())
    }

    /// The retry rules of one message, with its own jitter: after an outage, lanes do not
    /// all knock together.
    fn rules_for(&self, entry: &Entry) -> Rules {
        let jitter =
            (entry.seq ^ u64::from(std::process::id())).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54;
        let config = &self.node.config;
        Rules::new(
            &entry.envelope.message,
            crate::clock::steady_accepted(entry.seq, entry.envelope.accepted),
            config.default_retries,
            config.default_ttl,
            jitter,
        )
    }

    /// Counts an attempt and says it (to `steward send`, in the process table); returns
    /// its number.
    fn announce(&self, rules: &mut Rules, entry: &Entry, timeout: Duration) -> u32 {
        let node = &self.node;
        let method = entry.envelope.message.method.as_str();
        let attempt = rules.attempt();
        if attempt == 1 {
            node.metrics.sent.with_label_values(&[method]).inc();
        } else {
            node.metrics.retried.with_label_values(&[method]).inc();
        }
        let doing = format!(
            "attempt {attempt}{} of {} (waiting {}s for ACK)",
            rules.describe(crate::clock::now_for(entry.seq)),
            entry.envelope.id,
            timeout.as_secs()
        );
        node.progress(&entry.envelope.id, Progress::Attempt(doing.clone()));
        self.state.set(doing);
        attempt
    }

    pub(super) fn publish_once(&self, entry: &Entry, stop: &Receiver<()>) -> Delivery {
        let subject = self.subject.to_string();
        let payload = wire_form(&self.node.identity, entry);
        let mut attempt = 0;
        loop {
            if let Some(why) = self.node.broker.too_large(payload.len()) {
                return Delivery::Failed(why);
            }
            match self.node.broker.publish(
                &self.node.identity,
                Scope::request(&subject, None),
                &payload,
                Covers::Payload,
                Confirm::ByServer,
            ) {
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
}

/// A reply must be signed by a key `node` trusts for the destination `to`, over the reply
/// subject and the signature of one of the message's sends (`sigs`): otherwise anyone on
/// the broker could answer for it ("it ran, exit 0"), or a hostile node could coax a reply
/// to a tampered copy out of it. A reply that cannot be verified is never stored.
pub(super) fn check_reply<'s>(
    node: &Node,
    to: &str,
    msg: &nats::Message,
    sigs: impl Iterator<Item = &'s String>,
) -> Result<(), NotAnAnswer> {
    let mut why = Unverified::Bad(String::new());
    for sig in sigs {
        let scope = Scope::reply(&msg.subject, sig);
        match node
            .trusted
            .verify(to, msg.headers.as_ref(), scope, &msg.data)
        {
            Ok(_) => return Ok(()),
            Err(Unverified::UnknownSender { key }) => {
                return Err(NotAnAnswer::UnknownSender {
                    node: node.config.node.clone(),
                    to: to.to_string(),
                    key,
                })
            }
            Err(Unverified::Unsigned) => return Err(NotAnAnswer::Unsigned { to: to.to_string() }),
            Err(e) => why = e,
        }
    }
    Err(NotAnAnswer::NotOurs(why))
}

/// The reply in `bytes`, if it is `to`'s reply to message `id`.
pub(super) fn reply_of(bytes: &[u8], id: &str, to: &str) -> Result<Reply, NotAnAnswer> {
    match Reply::decode(bytes) {
        Ok(reply) if reply.id == id && reply.from_node == to => Ok(reply),
        Ok(reply) => Err(NotAnAnswer::OtherId {
            got: reply.id,
            want: id.to_string(),
        }),
        Err(e) => Err(NotAnAnswer::Undecodable(e)),
    }
}
