//! The publisher: one process per destination subject, or lane
//! (`ship1.CommandACK.CLICommand`), spawned on demand by the supervisor. It takes its lane's
//! messages from the journal when it is ready for them (woken when new ones are journaled)
//! and delivers them one at a time, in order.
//!
//! ACK kinds are sent with a reply subject unique to the message (`<inbox>.<token>.<seq>`,
//! the token this publisher's own, on one subscription the node's publishers share: see
//! [`crate::broker::Route`]), so no other message's reply can satisfy it, and
//! retried until the receiver answers: an attempt lasts `timeout` seconds (without one, a
//! message's `methodTimeout` and a little more, or the default; also when the broker says
//! at once that nobody listens), then a growing pause, up to `retries` attempts after the
//! first. While lanes wait for a thread (`--maxPublishers`), a publisher gives its thread
//! up during that pause (its message and attempts kept in its slot), and an idle one ends
//! at once; otherwise an idle one ends after `--keepPublishersAliveFor`. NACK kinds are published once. A reply counts only if it is signed by a
//! key this node trusts for the destination, over the signature of one of this message's
//! own attempts ([`Publisher::check_reply`]); anything else is passed over, so neither a
//! stranger nor another fleet member can answer for the destination. A reply that cannot
//! be stored (a full disk) leaves the message unfinished, its reply kept in the slot: the
//! restarted publisher finishes it from that reply, without sending it again (its node may
//! be gone by then: it ran, and must not be listed as undelivered). How a message
//! ended (its reply, failed-messages.txt, its message-log.txt line) is on disk before the
//! journal records it as finished; a message whose finish record a power cut took is
//! recognised at the next start, and neither sent nor stored again ([`crate::resumed`]).
//!
//! Events (EventACK) queued together travel together: when more than one is waiting, the
//! publisher sends up to [`FIRST_BATCH`] of them, in order, as one batch, and the receiver
//! runs them in order and answers with all their replies at once, writing its records once
//! per batch rather than once per message. Its answer says how many of the method it takes
//! in one batch (`batchMax`: from this version on [`MAX_BATCH`] for a method that does a
//! batch's work in one go, TextLogging, ErrorLog, CopyDst, since 1,000 events cost the
//! same fsyncs and signatures as 256; [`FIRST_BATCH`] for one that runs each alone), and
//! the batch after the next (the next is made ready already) is that big, within a
//! batch's bytes; a node from before it says nothing and gets [`FIRST_BATCH`] (it would
//! refuse more). The same answer says whether the receiver checks a signature over the
//! batch's digest (`digestSig`, see [`crate::keys`]): the lane's batches are then signed
//! that way, SHA-256 once over them instead of SHA-512 twice. After a failed batch the lane
//! starts again from [`FIRST_BATCH`], signed over the bytes: a node replaced by an older
//! version costs one batch's attempt. That is what lets a journaled,
//! fsync'd, exactly-once event stream keep up with bare NATS request/reply. One batch is
//! with the receiver at a time (it runs them in order), but the publisher's own work
//! overlaps it:
//! once a batch is ACKed, the next one goes out (taken from the journal, encoded and
//! signed while the receiver had the last), and the ACKed one is finished (its replies, message-log
//! lines, journal finish) while the receiver has the next. If a batch does not go
//! through (no ACK, nobody listening, an old receiver), the publisher falls back to one
//! message at a time, with each message's own retries, until one is ACKed again. Commands
//! always go one at a time: each has its own deadline and its output.
//!
//! The messages being delivered sit in a slot the supervisor keeps across restarts, so a
//! publisher that fails mid-delivery resumes with the same messages, ahead of the rest.
//!
//! A message given up after a send its node may have taken may run there all the same; its
//! reply is awaited a while longer, and kept when it comes, by the node's `late replies`
//! process ([`LateReplies`], in `late`).

use super::{sleep_or_stop, Failure, Process, State};
use crate::journal::Entry;
use crate::keys::{Covers, Scope, Unverified};
use crate::message::{DecodeError, Reply, Status, FIRST_BATCH, MAX_BATCH, MAX_BATCH_BYTES};
use crate::node::{Node, Progress};
use crate::retry::{self, Next, Rules};
use crate::subject::Subject;
use crossbeam_channel::{select, Receiver};
use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod deliver;
mod finish;
mod late;

use deliver::{batch_of, check_reply, reply_of, BatchWire};
pub use late::{LateReplies, NAME as LATE_REPLIES};

/// The messages a publisher is working on, kept by the supervisor across restarts.
pub type InFlight = Arc<Mutex<Slot>>;

/// The messages a publisher is working on, in order, and what it has kept of their ends.
#[derive(Default)]
pub struct Slot {
    entries: Vec<Entry>,
    /// Attempts made at the first entry by a publisher that gave its thread up.
    attempts_made: u32,
    /// The attempt at the first entry, if its publisher gave its thread up in the middle
    /// of it (every send answered "no responders", and other lanes waiting for a thread):
    /// the lane's next publisher goes on with it, not with a new one.
    continued: Option<Continued>,
    /// Ids whose reply is written and whose finish is not: a publisher restarted in between
    /// (a full disk, failing the failed-messages.txt write after the replies') does not
    /// write them again.
    replies_written: HashSet<String>,
    /// Replies verified and in hand for the first messages, whose finish failed (a full
    /// disk): the restarted publisher finishes them from these, and does not send them
    /// again (their node may be gone by then, or have forgotten them: a message that ran
    /// would be listed as undelivered, or run again).
    acked: std::collections::HashMap<String, Reply>,
    /// The first message's sends by publishers that gave their thread up (each its own
    /// reply subject, under its own route), the last [`EARLIER_SENDS`]: if the message is
    /// given up, their late replies are awaited too (see `Publisher::await_late`).
    earlier: Vec<(String, deliver::Sends)>,
}

/// How many earlier publishers' sends of a message [`Slot`] keeps.
const EARLIER_SENDS: usize = 4;

impl Slot {
    /// The first `n` messages are finished: out of the slot.
    fn done(&mut self, n: usize) {
        self.attempts_made = 0;
        self.continued = None;
        self.earlier.clear();
        let gone = self.entries.drain(..n);
        // Nearly always empty (a publisher that failed in between fills them): no hashing.
        if self.replies_written.is_empty() && self.acked.is_empty() {
            return;
        }
        for e in gone {
            self.replies_written.remove(&e.envelope.id);
            self.acked.remove(&e.envelope.id);
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

/// An attempt given up in the middle, to go on with: when it ends, and the pause before
/// its send after next (its resends' pauses grow on, whoever sends them).
#[derive(Clone, Copy)]
struct Continued {
    deadline: Instant,
    pause: Duration,
}

/// How one attempt ended.
enum Attempt<T> {
    Acked(T),
    Failed(String),
    Stopped,
    /// Given up for now, its thread wanted by other lanes (`--maxPublishers`): every send
    /// was answered "no responders", so nothing of it runs anywhere. It goes on at
    /// `resend` (or the destination's Hello) as `then` says. Single messages only.
    Yielded {
        resend: Instant,
        then: Continued,
    },
}

/// How delivering one message ended.
enum Delivery {
    Acked(Reply),
    Published,
    Failed(String),
    /// The node is stopping; the message stays in the journal for the next start.
    Stopped,
    /// Other lanes wait for a thread (`--maxPublishers`) while this one pauses between
    /// attempts: it gives its thread up; the message stays in the slot, its attempts
    /// counted, and the lane waits its turn again once the pause is over.
    Parked {
        until: Instant,
        /// Fires (disconnected) once the destination says Hello, taken when the pause
        /// began: the supervisor looks at it, so a Hello while the lane parks is not lost.
        hello: crate::node::Waiter,
    },
}

/// Why a publisher failed. Each is a retry: the messages stay in the slot, and the
/// restarted publisher sends them again (a receiver answers a message it ran from its
/// stored reply, running nothing twice). A full disk is the usual one.
#[derive(Debug)]
pub enum Error {
    /// The node's subscription for replies could not be made (the client is closed).
    Subscribe { source: io::Error },
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
            Error::Subscribe { source } => write!(f, "cannot subscribe to replies: {source}"),
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
    /// Escaped: what it says quotes a remote party's text (a "key" header anyone on the
    /// broker can write, a reply's id, serde's words on its JSON), logged as it is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::files::escape_line(&self.said()))
    }
}

impl NotAnAnswer {
    fn said(&self) -> String {
        use std::fmt::Write as _;
        let mut said = String::new();
        let f = &mut said;
        let _ = match self {
            NotAnAnswer::UnknownSender { node, to, key } => write!(
                f,
                "{node} trusts no key for {to}, so its reply cannot be verified; if {key} is {to}'s key (`steward keys show` on {to}), run on {node}: steward keys trust {to} {key}"
            ),
            NotAnAnswer::Unsigned { to } => write!(f, "{}: not from {to}", Unverified::Unsigned),
            NotAnAnswer::NotOurs(e) => {
                write!(f, "{e} (so not taken as this message's answer)")
            }
            NotAnAnswer::Undecodable(e) => write!(f, "{e}"),
            NotAnAnswer::OtherId { got, want } => {
                write!(f, "a reply for {got} while waiting for {want}")
            }
            NotAnAnswer::NotTheBatch { got, want } => {
                write!(f, "{got} replies that do not match the batch of {want}")
            }
        };
        said
    }
}

impl Process for Publisher {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), Failure> {
        // Messages ACKed before the last run failed to finish them: finished from the
        // replies it had, not sent again.
        self.finish_acked_before()?;
        self.state.set("waiting for the broker");
        let Some(conn) = self.node.broker.wait(stop) else {
            return Ok(());
        };
        let kind = self.subject.kind;
        // Replies come back under this node's own inbox prefix, on one subscription all
        // its publishers share ([`crate::broker::Route`]); a NACK kind has none to wait for.
        let route = match kind.wants_ack() {
            true => self
                .node
                .broker
                .route(&conn)
                .map_err(|source| Error::Subscribe { source })?,
            false => crate::broker::Route::none(),
        };
        let (inbox, replies) = (&route.prefix, &route.messages);
        // Off after a batch fails, until a message gets through alone again.
        let mut batching = true;
        // How many messages the destination takes in one batch: what every node takes,
        // until a verified answer to a batch says more (see `Reply::batch_max`).
        let mut takes = FIRST_BATCH;
        // What a batch's signature covers: its digest once a verified answer to one says
        // the destination checks those (see `Reply::digest_sig`), else its bytes.
        let mut covers = Covers::Payload;
        let batchable = kind.wants_ack() && !kind.is_command();
        // A batch ACKed and not yet finished (the first entries of the slot), finished
        // while the next one is with the receiver; and the one after that, taken and
        // encoded meanwhile (the slot's entries right after the one with the receiver).
        let mut unfinished: Option<(Vec<Entry>, Vec<Reply>)> = None;
        let mut ready: Option<(Vec<Entry>, BatchWire)> = None;
        loop {
            let (batch, wire) = match ready.take() {
                Some(batch) => batch,
                None => {
                    let held = unfinished.as_ref().map_or(0, |(entries, _)| entries.len());
                    let want = if batching && batchable { takes } else { 1 };
                    let slot = match self.take(held, want) {
                        Ok(slot) => slot,
                        Err(e) => {
                            // What was ACKed is kept before the publisher fails.
                            if let Some(acked) = unfinished.take() {
                                self.finish_batch(acked)?;
                            }
                            return Err(e.into());
                        }
                    };
                    if let Some((batch, payload)) =
                        self.batch_in(&slot, batching && batchable, &conn)
                    {
                        let wire = self.batch_wire(inbox, &batch, payload, covers, false);
                        (batch, wire)
                    } else if let Some(acked) = unfinished.take() {
                        // Nothing to send meanwhile, or one at a time from here: the held
                        // batch is finished first.
                        self.finish_batch(acked)?;
                        continue;
                    } else if let Some(entry) = slot.first() {
                        match self.deliver_one(inbox, replies, entry, stop)? {
                            Some(acked) => batching |= acked,
                            None => return Ok(()),
                        }
                        continue;
                    } else {
                        // Other lanes wait for a thread: make room now rather than idle.
                        let wanted = self
                            .node
                            .publishers_wanted
                            .load(std::sync::atomic::Ordering::Relaxed);
                        if wanted && self.node.retire_lane(&self.subject) {
                            return Ok(());
                        }
                        self.state.set("idle");
                        let retire =
                            crossbeam_channel::after(self.node.config.keep_publishers_alive_for);
                        select! {
                            recv(self.wake) -> woken => if woken.is_err() { return Ok(()) },
                            recv(stop) -> _ => return Ok(()),
                            // Nothing to send for a while: end, unless a message came meanwhile.
                            recv(retire) -> _ => if self.node.retire_lane(&self.subject) { return Ok(()) },
                        }
                        continue;
                    }
                }
            };
            let before = unfinished.take();
            let meanwhile = || {
                if let Some(acked) = before {
                    self.finish_batch(acked)?;
                }
                // The next batch, ready to go as soon as this one is ACKed. A journal that
                // cannot be read fails the publisher at the next take, this batch done.
                // Sealed now too: signing a batch is the largest part of sending it.
                if let Ok(after) = self.take(batch.len(), takes) {
                    ready = self.batch_in(&after, true, &conn).map(|(next, payload)| {
                        let wire = self.batch_wire(inbox, &next, payload, covers, true);
                        (next, wire)
                    });
                }
                Ok(())
            };
            match self.deliver_batch(replies, &batch, wire, stop, meanwhile)? {
                Attempt::Acked(acked) => {
                    takes = batch_size(&acked);
                    covers = batch_covers(&acked);
                    // Made ready before the receiver said it takes fewer, or no signature
                    // over a digest (a node from before `batchMax` or `digestSig` again):
                    // its messages stay in the slot, taken anew. (One signed over its
                    // bytes goes to any node.)
                    if ready
                        .as_ref()
                        .is_some_and(|(next, wire)| next.len() > takes || wire.covers > covers)
                    {
                        ready = None;
                    }
                    unfinished = Some((batch, acked));
                }
                Attempt::Stopped => return Ok(()),
                Attempt::Yielded { .. } => unreachable!("only a single message's attempt yields"),
                Attempt::Failed(why) => {
                    let method = batch[0].envelope.message.method.as_str();
                    self.node
                        .metrics
                        .batches_failed
                        .with_label_values(&[method])
                        .inc();
                    log::warn!(
                        "{}: a batch of {} did not go through ({why}); sending one at a time",
                        self.subject,
                        batch.len()
                    );
                    batching = false;
                    // Perhaps a node from before `batchMax` now: it says so again if not.
                    takes = FIRST_BATCH;
                    covers = Covers::Payload;
                    // Its messages stay in the slot, first the failed batch's.
                    ready = None;
                }
            }
        }
    }
}

/// How many messages to send in one batch after `acked`, a verified answer to one: what its
/// sender says it takes (within what this node would take), or, if it says nothing (a node
/// from before `batchMax`), [`FIRST_BATCH`].
fn batch_size(acked: &[Reply]) -> usize {
    acked
        .first()
        .and_then(|r| r.batch_max)
        .map_or(FIRST_BATCH, |n| (n as usize).clamp(1, MAX_BATCH))
}

/// What the signature of the batches after `acked` (a verified answer to one) covers: the
/// payload's digest if its sender says it checks those, else the payload.
fn batch_covers(acked: &[Reply]) -> Covers {
    match acked.first().is_some_and(|r| r.digest_sig) {
        true => Covers::Digest,
        false => Covers::Payload,
    }
}

impl Publisher {
    /// How `batch` goes: on its own reply subject (a late batch reply never meets a single
    /// attempt), `payload`, its signature covering what `covers` says, sealed now if
    /// `seal_ahead`.
    fn batch_wire(
        &self,
        inbox: &str,
        batch: &[Entry],
        payload: Vec<u8>,
        covers: Covers,
        seal_ahead: bool,
    ) -> BatchWire {
        let reply_subject = format!("{inbox}.b{}", batch[0].seq);
        let sealed = seal_ahead.then(|| {
            let scope = Scope {
                subject: &self.subject.to_string(),
                reply: Some(&reply_subject),
                answers: None,
            };
            self.node.identity.seal_covering(scope, &payload, covers)
        });
        BatchWire {
            reply_subject,
            payload,
            covers,
            sealed,
        }
    }

    /// The first messages of `slot` as one batch and its wire form, if `batching` and more
    /// than one of them fit.
    fn batch_in(
        &self,
        slot: &[Entry],
        batching: bool,
        conn: &nats::Connection,
    ) -> Option<(Vec<Entry>, Vec<u8>)> {
        if !batching || slot.len() < 2 {
            return None;
        }
        let (fits, payload) = batch_of(&self.node.identity, slot, conn.max_payload());
        (fits > 1).then(|| (slot[..fits].to_vec(), payload))
    }

    /// Delivers one message and finishes it: whether it was ACKed, or `None` if the
    /// publisher is to end (the node stopping, or the lane parked while others wait for a
    /// thread).
    fn deliver_one(
        &self,
        inbox: &str,
        replies: &Receiver<nats::Message>,
        entry: &Entry,
        stop: &Receiver<()>,
    ) -> Result<Option<bool>, Error> {
        let delivery = if self.subject.kind.wants_ack() {
            self.deliver_acked(replies, &format!("{inbox}.{}", entry.seq), entry, stop)
        } else {
            self.publish_once(entry, stop)
        };
        let acked = match delivery {
            Delivery::Stopped => return Ok(None),
            Delivery::Parked { until, hello } => {
                self.node.park_lane(&self.subject, until, hello);
                return Ok(None);
            }
            Delivery::Acked(_) => true,
            _ => false,
        };
        // If what must be kept cannot be written, fail: the supervisor restarts this
        // publisher and the message, still in its slot, is tried again.
        self.finish(vec![(entry, delivery)])?;
        self.slot().done(1);
        Ok(Some(acked))
    }

    /// Finishes the first messages of the slot whose replies a publisher that failed to
    /// finish them kept ([`Slot::acked`]).
    fn finish_acked_before(&self) -> Result<(), Error> {
        let kept: Vec<(Entry, Reply)> = {
            let slot = self.slot();
            if slot.acked.is_empty() {
                return Ok(());
            }
            slot.entries
                .iter()
                .map_while(|e| {
                    slot.acked
                        .get(&e.envelope.id)
                        .map(|r| (e.clone(), r.clone()))
                })
                .collect()
        };
        if kept.is_empty() {
            return Ok(());
        }
        let done = kept
            .iter()
            .map(|(e, r)| (e, Delivery::Acked(r.clone())))
            .collect();
        self.finish(done)?;
        self.slot().done(kept.len());
        Ok(())
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch ACKed: finished, and out of the slot.
    fn finish_batch(&self, (entries, acked): (Vec<Entry>, Vec<Reply>)) -> Result<(), Error> {
        let done = entries
            .iter()
            .zip(acked)
            .map(|(e, r)| (e, Delivery::Acked(r)))
            .collect();
        self.finish(done)?;
        self.slot().done(entries.len());
        Ok(())
    }

    /// The slot topped up from the journal to `want` messages past its first `held` (if
    /// that many wait, and as far as a batch's bytes, [`MAX_BATCH_BYTES`]: a thousand of a
    /// copy's chunks would be hundreds of megabytes), returning those (at most `want`: the
    /// slot may hold more, a batch made ready before one failed), and reports any the
    /// journal could not read back.
    /// Resumed messages the last run finished though a power cut took the record of it are
    /// finished at once, not sent again (see [`crate::resumed`]).
    fn take(&self, held: usize, want: usize) -> Result<Vec<Entry>, Error> {
        let total = held + want;
        let mut slot = self.slot();
        let mut unreadable = Vec::new();
        let mut finished_at_once: Option<(String, usize)> = None;
        loop {
            let past_held: usize = slot
                .entries
                .iter()
                .skip(held)
                .map(|e| e.encoded.len())
                .sum();
            if slot.entries.len() >= total || past_held >= MAX_BATCH_BYTES {
                break;
            }
            let mut journal = self.node.journal();
            let more = journal
                .take_within(
                    &self.subject,
                    total - slot.entries.len(),
                    MAX_BATCH_BYTES - past_held,
                )
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
        let taken: Vec<Entry> = slot.entries.iter().skip(held).take(want).cloned().collect();
        drop(slot);
        if let Some((first, count)) = finished_at_once {
            log::info!(
                "{}: {count} message(s) from {first} on were finished before the last stop (listed in {}); not sent again",
                self.subject,
                self.node.data.message_log().display()
            );
        }
        for why in unreadable {
            self.node.report_unreadable(why);
        }
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{decode_batch, encode_batch, Envelope, Kind, Message};

    fn entry(seq: u64, text: &str) -> Entry {
        Entry::new(
            seq,
            Envelope {
                id: format!("central-1-{seq}"),
                from_node: "central".into(),
                accepted: 1,
                reply_ticket: None,
                grant: None,
                message: Message::new("ship1", Kind::EventAck, "TextLogging", vec![text.into()]),
            },
        )
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
    fn batches_are_as_big_as_the_receivers_answer_says_and_256_if_it_says_nothing() {
        let answer = |batch_max: Option<u32>| {
            let mut first = Reply::refusal("a".into(), "central", "ship1", String::new());
            first.batch_max = batch_max;
            vec![
                first,
                Reply::refusal("b".into(), "central", "ship1", String::new()),
            ]
        };
        // A node from before `batchMax` (or a receiver that says nothing) takes 256.
        assert_eq!(batch_size(&answer(None)), FIRST_BATCH);
        assert_eq!(FIRST_BATCH, 256);
        assert_eq!(batch_size(&answer(Some(1024))), 1024);
        assert_eq!(batch_size(&answer(Some(100))), 100);
        // Never more than this node would take itself, never none.
        assert_eq!(batch_size(&answer(Some(u32::MAX))), MAX_BATCH);
        assert_eq!(batch_size(&answer(Some(0))), 1);
        assert_eq!(batch_size(&[]), FIRST_BATCH);
    }

    #[test]
    fn batches_are_signed_over_a_digest_only_once_the_receivers_answer_says_it_checks_those() {
        let answer = |digest_sig: bool, on: usize| {
            let mut replies: Vec<Reply> = ["a", "b"]
                .iter()
                .map(|id| Reply::refusal(id.to_string(), "central", "ship1", String::new()))
                .collect();
            replies[on].digest_sig = digest_sig;
            replies
        };
        assert_eq!(batch_covers(&answer(false, 0)), Covers::Payload);
        assert_eq!(batch_covers(&answer(true, 0)), Covers::Digest);
        // Only the first reply says it, as the receiver writes it.
        assert_eq!(batch_covers(&answer(true, 1)), Covers::Payload);
        assert_eq!(batch_covers(&[]), Covers::Payload);
    }

    #[test]
    fn a_batch_is_the_wire_form_of_the_messages_that_fit() {
        let dir = tempfile::tempdir().unwrap();
        let me = crate::keys::Identity::generate(dir.path(), false).unwrap();
        let slot: Vec<Entry> = (0..10).map(|i| entry(i, &"x".repeat(1000))).collect();
        let (n, payload) = batch_of(&me, &slot, 0);
        assert_eq!(n, 10);
        let envelopes: Vec<Envelope> = slot.iter().map(|e| (*e.envelope).clone()).collect();
        assert_eq!(payload, encode_batch(&envelopes));
        assert_eq!(decode_batch(&payload).unwrap(), envelopes);
        // Under a small broker limit, fewer fit, and never fewer than one.
        let (n, payload) = batch_of(&me, &slot, 4096 + 3500);
        assert_eq!(n, 3);
        assert!(payload.len() <= 3500);
        assert_eq!(batch_of(&me, &slot, 4096 + 10).0, 1);
    }
}
