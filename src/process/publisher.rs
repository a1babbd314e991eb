//! The publisher: one process per destination subject (`ship1.CommandACK.CLICommand`),
//! spawned on demand by the supervisor, delivering its messages one at a time, in order.
//!
//! ACK kinds are sent with a reply subject unique to the message (`<inbox>.<seq>`; one
//! wildcard subscription per publisher), so no other message's reply can satisfy it, and
//! retried until the receiver answers: an attempt lasts `timeout` seconds (also when the
//! broker says at once that nobody listens), then a growing pause, up to `retries` attempts
//! after the first. NACK kinds are published once.
//!
//! The message being delivered sits in a slot the supervisor keeps across restarts, so a
//! publisher that fails mid-delivery resumes with the same message, ahead of its queue.

use super::{sleep_or_stop, Process, State};
use crate::broker;
use crate::journal::Entry;
use crate::keys::Verdict;
use crate::message::{Reply, Status};
use crate::node::{Node, Progress};
use crate::subject::Subject;
use crossbeam_channel::{select, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The message a publisher is working on, kept by the supervisor across restarts.
pub type InFlight = Arc<Mutex<Option<Entry>>>;

pub struct Publisher {
    pub subject: Subject,
    pub node: Arc<Node>,
    pub queue: Receiver<u64>,
    pub in_flight: InFlight,
    pub state: Arc<State>,
}

/// How one attempt ended.
enum Attempt {
    Acked(Reply),
    Failed(String),
    Stopped,
}

/// How long a message may be tried: `retries` attempts after the first, or, with a
/// time-to-live, until `accepted + ttl` (whatever the count).
struct Budget {
    attempts: u32,
    expires: Option<u64>,
}

impl Budget {
    fn of(entry: &Entry, config: &crate::config::Config) -> Budget {
        let m = &entry.envelope.message;
        let ttl = m.ttl.or(config.default_ttl);
        Budget {
            attempts: 1 + m.retries.unwrap_or(config.default_retries),
            expires: ttl.map(|t| {
                entry
                    .envelope
                    .accepted
                    .saturating_add(t.saturating_mul(1000))
            }),
        }
    }

    fn spent(&self, attempt: u32) -> bool {
        match self.expires {
            Some(at) => crate::files::unix_millis() >= at,
            None => attempt >= self.attempts,
        }
    }

    fn spent_because(&self, attempt: u32) -> String {
        match self.expires {
            Some(_) => format!("its time to live ran out after {attempt} attempts"),
            None => format!("{attempt} attempts failed"),
        }
    }

    fn describe(&self) -> String {
        match self.expires {
            Some(at) => format!(
                " (time to live left {}s)",
                at.saturating_sub(crate::files::unix_millis()) / 1000
            ),
            None => format!("/{}", self.attempts),
        }
    }

    /// A message that may wait a day need not knock every 30 s.
    fn max_pause(&self) -> Duration {
        Duration::from_secs(if self.expires.is_some() { 60 } else { 30 })
    }
}

/// How delivering one message ended.
enum Delivery {
    Acked(Reply),
    Published,
    Failed(String),
    /// The node is stopping; the message stays in the journal for the next start.
    Stopped,
}

impl Process for Publisher {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), String> {
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
        let replies = conn
            .subscribe(&format!("{inbox}.*"))
            .map_err(|e| format!("cannot subscribe to replies: {e}"))?;
        loop {
            let current = self
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let entry = match current {
                Some(entry) => entry,
                None => {
                    self.state.set("idle");
                    let seq = select! {
                        recv(self.queue) -> seq => match seq {
                            Ok(seq) => seq,
                            Err(_) => return Ok(()),
                        },
                        recv(stop) -> _ => return Ok(()),
                    };
                    let read = self.node.journal().read(seq);
                    match read
                        .map_err(|e| format!("cannot read message {seq} from the journal: {e}"))?
                    {
                        Some(entry) => entry,
                        None => continue, // already finished
                    }
                }
            };
            *self.in_flight.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry.clone());
            let delivery = if entry.envelope.message.kind.wants_ack() {
                self.deliver_acked(
                    &conn,
                    &replies,
                    &format!("{inbox}.{}", entry.seq),
                    &entry,
                    stop,
                )
            } else {
                self.publish_once(&conn, &entry, stop)
            };
            if let Delivery::Stopped = delivery {
                return Ok(());
            }
            // If what must be kept cannot be written, fail: the supervisor restarts this
            // publisher and the message, still in its slot, is tried again.
            self.finish(&entry, delivery)?;
            *self.in_flight.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

impl Publisher {
    fn deliver_acked(
        &self,
        conn: &nats::Connection,
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
        let budget = Budget::of(entry, &node.config);
        let payload = entry.envelope.encode();
        let subject = self.subject.to_string();
        let mut attempt = 0u32;
        loop {
            // While our own link is down, wait for it: an outage here is not the
            // destination's failure and must not spend its retries.
            if node.broker.wait(stop).is_none() {
                return Delivery::Stopped;
            }
            let epoch = node.broker.epoch();
            attempt += 1;
            if attempt == 1 {
                node.metrics.sent.with_label_values(&[method]).inc();
            } else {
                node.metrics.retried.with_label_values(&[method]).inc();
            }
            let doing = format!(
                "attempt {attempt}{} of {} (waiting {}s for ACK)",
                budget.describe(),
                entry.envelope.id,
                timeout.as_secs()
            );
            node.progress(&entry.envelope.id, Progress::Attempt(doing.clone()));
            self.state.set(doing);
            let last_error =
                match self.attempt(conn, replies, reply_subject, entry, &payload, timeout, stop) {
                    Attempt::Acked(reply) => return Delivery::Acked(reply),
                    Attempt::Stopped => return Delivery::Stopped,
                    Attempt::Failed(why) => why,
                };
            if node.broker.epoch() != epoch {
                log::info!(
                    "{subject}: attempt {attempt} of {} cut short by the broker link; not counted",
                    entry.envelope.id
                );
                attempt -= 1;
                continue;
            }
            log::warn!(
                "{subject}: attempt {attempt}{} of {} failed: {last_error}",
                budget.describe(),
                entry.envelope.id
            );
            if budget.spent(attempt) {
                return Delivery::Failed(format!(
                    "{}; last: {last_error}",
                    budget.spent_because(attempt)
                ));
            }
            // Pause before the next attempt; a Hello from the destination ends the pause.
            let pause = broker::backoff(attempt, budget.max_pause());
            let hello = node.presence.waiter(&message.to_node);
            select! {
                recv(hello) -> _ => log::info!("{subject}: {} said Hello; trying again now", message.to_node),
                recv(stop) -> _ => return Delivery::Stopped,
                recv(crossbeam_channel::after(pause)) -> _ => {},
            }
        }
    }

    /// One attempt: publish, then wait up to `timeout` for this message's reply.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        conn: &nats::Connection,
        replies: &nats::Subscription,
        reply_subject: &str,
        entry: &Entry,
        payload: &[u8],
        timeout: Duration,
        stop: &Receiver<()>,
    ) -> Attempt {
        let subject = self.subject.to_string();
        let deadline = Instant::now() + timeout;
        if let Err(e) = broker::publish(
            conn,
            &self.node.identity,
            &subject,
            Some(reply_subject),
            payload,
        ) {
            return Attempt::Failed(format!("cannot publish: {e}"));
        }
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
                        // Nobody listens now; wait out the attempt rather than hammer.
                        if sleep_or_stop(stop, deadline.saturating_duration_since(Instant::now())) {
                            return Attempt::Stopped;
                        }
                        return Attempt::Failed(format!(
                            "no responders on {subject}: {} is not running, or not connected",
                            entry.envelope.message.to_node
                        ));
                    }
                    let to = &entry.envelope.message.to_node;
                    if let Err(why) = self.check_signature(to, &msg) {
                        log::warn!("{subject}: ignoring a reply for {}: {why}", entry.envelope.id);
                        continue;
                    }
                    match Reply::decode(&msg.data) {
                        Ok(reply) if reply.id == entry.envelope.id => return Attempt::Acked(reply),
                        Ok(reply) => log::warn!("{subject}: reply for {} while waiting for {}", reply.id, entry.envelope.id),
                        Err(e) => log::warn!("{subject}: {e}"),
                    }
                },
                recv(stop) -> _ => return Attempt::Stopped,
                recv(crossbeam_channel::at(deadline)) -> _ => {
                    return Attempt::Failed(format!("no ACK within {}s", timeout.as_secs()));
                },
            }
        }
    }

    /// A reply must be signed by the destination when this node knows its key: otherwise
    /// anyone on the broker could answer for it ("it ran, exit 0").
    fn check_signature(&self, to: &str, msg: &nats::Message) -> Result<(), String> {
        let trusted = &self.node.trusted;
        match trusted.verify(to, msg.headers.as_ref(), &msg.data, None) {
            Verdict::Verified => Ok(()),
            Verdict::Bad(why) => Err(why),
            Verdict::Unsigned | Verdict::UnknownSender if trusted.knows(to) => {
                Err(format!("not signed by {to}, whose key this node trusts"))
            }
            Verdict::Unsigned | Verdict::UnknownSender => Ok(()),
        }
    }

    fn publish_once(
        &self,
        conn: &nats::Connection,
        entry: &Entry,
        stop: &Receiver<()>,
    ) -> Delivery {
        let subject = self.subject.to_string();
        let payload = entry.envelope.encode();
        let mut attempt = 0;
        loop {
            match broker::publish(conn, &self.node.identity, &subject, None, &payload) {
                Ok(()) => {
                    let method = entry.envelope.message.method.as_str();
                    self.node.metrics.sent.with_label_values(&[method]).inc();
                    return Delivery::Published;
                }
                Err(e) => {
                    attempt += 1;
                    self.state
                        .set(format!("cannot publish {}: {e}", entry.envelope.id));
                    if sleep_or_stop(stop, broker::backoff(attempt, Duration::from_secs(30))) {
                        return Delivery::Stopped;
                    }
                }
            }
        }
    }

    /// Records how a message ended (reply file, failed file, message log), then marks it
    /// finished in the journal: only after everything about it is on disk.
    fn finish(&self, entry: &Entry, delivery: Delivery) -> Result<(), String> {
        let node = &self.node;
        let envelope = &entry.envelope;
        let message = &envelope.message;
        let method = message.method.as_str();
        let mut told: (Option<Reply>, Option<String>) = (None, None);
        let outcome = match delivery {
            Delivery::Acked(reply) => {
                told.0 = Some(reply.clone());
                node.metrics.acked.with_label_values(&[method]).inc();
                let first_line = reply.output.lines().next().unwrap_or("");
                log::info!(
                    "{}: {} {:?}{}: {first_line}",
                    self.subject,
                    envelope.id,
                    reply.status,
                    reply
                        .exit_code
                        .map(|c| format!(" exit {c}"))
                        .unwrap_or_default()
                );
                let record = format!(
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
                );
                let path = node.data.replies(&message.to_node, method);
                if let Err(e) = crate::files::append(&path, record.as_bytes(), true) {
                    log::error!("cannot store the reply in {}: {e}", path.display());
                }
                if reply.status == Status::Refused {
                    // The receiver reported the refusal to central itself; keep the message.
                    self.keep_failed(
                        entry,
                        &format!("refused by {}: {}", reply.from_node, reply.output),
                    )?;
                    "refused"
                } else {
                    "acked"
                }
            }
            Delivery::Published => "published",
            Delivery::Failed(why) => {
                let why = format!("{}: {} not delivered: {why}", self.subject, envelope.id);
                told.1 = Some(why.clone());
                self.keep_failed(entry, &why)?;
                if method != "ErrorLog" {
                    // Never report a failed error report: that would loop.
                    node.report_error(why);
                } else {
                    log::error!("{why}");
                }
                "failed"
            }
            Delivery::Stopped => unreachable!("a stopped delivery is not finished"),
        };
        let mut line = serde_json::to_value(envelope).expect("an Envelope serializes");
        line["outcome"] = outcome.into();
        let finished = crate::files::unix_millis();
        line["finished"] = crate::files::rfc3339(finished).into();
        line["finishedUnixMs"] = finished.into();
        let mut bytes = serde_json::to_vec(&line).expect("a JSON value serializes");
        bytes.push(b'\n');
        if let Err(e) = crate::files::append(&node.data.message_log(), &bytes, false) {
            log::error!("cannot write the message log: {e}");
        }
        node.metrics
            .finished
            .with_label_values(&[method, message.kind.as_str(), outcome])
            .inc();
        if outcome == "acked" {
            let ms = crate::files::unix_millis().saturating_sub(envelope.accepted);
            node.metrics
                .delivery_latency
                .with_label_values(&[method])
                .observe(ms as f64 / 1000.0);
        }
        node.finish(entry.seq);
        node.progress(
            &envelope.id,
            Progress::Finished {
                outcome: outcome.to_string(),
                reply: told.0,
                why: told.1,
            },
        );
        Ok(())
    }

    /// Keeps a message that was not delivered in failed-messages.txt, in inmsg.txt form.
    fn keep_failed(&self, entry: &Entry, why: &str) -> Result<(), String> {
        let node = &self.node;
        let text = format!(
            "{}\n",
            serde_json::to_string_pretty(&[&entry.envelope.message]).expect("a Message serializes")
        );
        crate::files::append(&node.data.failed(), text.as_bytes(), true).map_err(|e| {
            format!(
                "cannot keep failed message {} in {}: {e}",
                entry.envelope.id,
                node.data.failed().display()
            )
        })?;
        node.metrics
            .failed
            .with_label_values(&[entry.envelope.message.method.as_str()])
            .inc();
        log::warn!("{why}; kept in {}", node.data.failed().display());
        Ok(())
    }
}
