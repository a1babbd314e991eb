//! Prometheus metrics and the two small HTTP endpoints: `/metrics` at `--promHostAndPort`,
//! and the process table as plain text at `--profilingPort`.
//!
//! Names follow Prometheus conventions: `steward_` prefix, `_total` on counters, base units.
//! The HTTP responder, which bounds what a client on the network can take, is [`mod@serve`].

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::Mutex;

mod serve;
pub use serve::{serve, ANSWER_DEADLINE, MAX_CONNECTIONS, MAX_REQUEST_HEAD, REQUEST_DEADLINE};

pub struct Metrics {
    pub registry: Registry,
    pub accepted: IntCounterVec,
    pub sent: IntCounterVec,
    pub acked: IntCounterVec,
    pub retried: IntCounterVec,
    /// Sends again within an attempt after "no responders".
    pub resent: IntCounterVec,
    /// Batches of events that did not go through, their lane falling back to one at a time.
    pub batches_failed: IntCounterVec,
    pub failed: IntCounterVec,
    pub late_replies: IntCounterVec,
    pub received: IntCounterVec,
    pub rejected_input: IntCounter,
    pub processes: IntGauge,
    pub restarts: IntCounter,
    /// Processes that failed, by whether a restart can help: "retry" or "fatal".
    pub failures: IntCounterVec,
    pub broker_connected: IntGauge,
    /// 1 while intake finds the data folder's disk full or below its free-space floor.
    pub disk_full: IntGauge,
    pub broker_reconnects: IntCounter,
    broker_malformed_dropped: IntCounter,
    /// Messages the client dropped because a subscription's queue was full, by method.
    pub subscription_dropped: IntCounterVec,
    pub journal_pending: IntGauge,
    pub journal_size: IntGauge,
    pub journal_written: IntCounter,
    pub journal_fsync: Histogram,
    pub finished: IntCounterVec,
    pub delivery_latency: HistogramVec,
    /// Log writes (errors.log, textlog/) refused, by method and reason (budget, disk).
    pub log_refused: IntCounterVec,
    /// Lines of logs that are only logs (message-log.txt) not written: a full disk.
    pub log_skipped: IntCounterVec,
    hello_age: IntGaugeVec,
    /// Node → when it last said Hello (ms since the epoch); ages are computed at scrape time.
    last_hello: Mutex<HashMap<String, u64>>,
    /// Held while a render mirrors a count kept elsewhere into a counter: two renders at
    /// once (scrapes on two connections) would each add the same difference.
    mirroring: Mutex<()>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric names are valid");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric names are valid");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric names are valid");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric names are valid");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let h = Histogram::with_opts(opts).expect("metric names are valid");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let h = HistogramVec::new(opts, labels).expect("metric names are valid");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            accepted: counter_vec(
                &r,
                "steward_messages_accepted_total",
                "Messages taken into the journal: from inmsg.txt, the control socket (steward send) and the startup folder, or raised by this node (results, error reports).",
                &["method"],
            ),
            sent: counter_vec(
                &r,
                "steward_messages_sent_total",
                "Messages sent to the broker (first attempt).",
                &["method"],
            ),
            acked: counter_vec(
                &r,
                "steward_messages_acked_total",
                "Messages whose ACK came back.",
                &["method"],
            ),
            retried: counter_vec(
                &r,
                "steward_messages_retried_total",
                "Attempts after the first.",
                &["method"],
            ),
            resent: counter_vec(
                &r,
                "steward_messages_resent_total",
                "Sends again within an attempt after the broker said nobody listens (at most 6 an attempt).",
                &["method"],
            ),
            batches_failed: counter_vec(
                &r,
                "steward_batches_failed_total",
                "Batches of events that did not go through (no ACK, nobody listening, an answer that was not the batch's); their lane sends one at a time until a message is ACKed.",
                &["method"],
            ),
            failed: counter_vec(
                &r,
                "steward_messages_failed_total",
                "Messages given up (retries spent, refused, or interrupted on the receiver) and kept in failed-messages.txt.",
                &["method"],
            ),
            late_replies: counter_vec(
                &r,
                "steward_late_replies_total",
                "Replies that came after their command was given up (it reached its node after all: ran, or was refused or interrupted there), kept in its reply file; the message stays in failed-messages.txt.",
                &["method"],
            ),
            received: counter_vec(
                &r,
                "steward_messages_received_total",
                "Messages received by this node, by outcome (ok, error, refused, duplicate, deferred: the method could not take it now, the disk below its floor; left unanswered, the sender tries again; or recalled: a ReplyAgain answered with a stored reply).",
                &["method", "outcome"],
            ),
            rejected_input: counter(
                &r,
                "steward_inbox_rejected_total",
                "Pieces of inmsg.txt that could not be taken (kept in inmsg.rejected.txt).",
            ),
            processes: gauge(
                &r,
                "steward_processes_running",
                "Processes in the supervisor's table that are running, each on a thread.",
            ),
            restarts: counter(
                &r,
                "steward_process_restarts_total",
                "Processes restarted after failing.",
            ),
            failures: {
                let c = counter_vec(
                    &r,
                    "steward_process_failures_total",
                    "Processes that failed, by failure: retry (a restart can help: restarted with backoff) or fatal (a bug or a misconfiguration: reported once, tried again every 10 minutes).",
                    &["failure"],
                );
                // Both shown from the start, so an alert on fatal has a series to watch.
                for label in ["retry", "fatal"] {
                    c.with_label_values(&[label]);
                }
                c
            },
            broker_connected: gauge(
                &r,
                "steward_broker_connected",
                "1 while connected to the broker.",
            ),
            disk_full: gauge(
                &r,
                "steward_disk_full",
                "1 while intake finds the data folder's disk full or below its free-space floor (messages wait in inmsg.txt).",
            ),
            broker_reconnects: counter(
                &r,
                "steward_broker_reconnects_total",
                "Reconnections to the broker.",
            ),
            broker_malformed_dropped: counter(
                &r,
                "steward_broker_malformed_dropped_total",
                "Incoming messages the NATS client could not decode (a header block that does not parse, or a subject that is not UTF-8), each dropped alone; the connection stays up.",
            ),
            subscription_dropped: counter_vec(
                &r,
                "steward_subscription_dropped_total",
                "Incoming messages dropped because their subscription's queue was full (handlers busy).",
                &["method"],
            ),
            journal_pending: gauge(
                &r,
                "steward_journal_pending_messages",
                "Messages in the journal not yet finished.",
            ),
            journal_size: gauge(
                &r,
                "steward_journal_size_bytes",
                "Size of the journal file now.",
            ),
            journal_written: counter(
                &r,
                "steward_journal_written_bytes_total",
                "Bytes written to the journal, compaction included (SD card wear).",
            ),
            journal_fsync: histogram(
                &r,
                "steward_journal_fsync_seconds",
                "Time each journal fsync took.",
                &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
            ),
            finished: counter_vec(
                &r,
                "steward_messages_finished_total",
                "Messages finished by this node as sender, by method, kind and outcome (acked, published, refused, interrupted, failed).",
                &["method", "kind", "outcome"],
            ),
            delivery_latency: histogram_vec(
                &r,
                "steward_delivery_latency_seconds",
                "From a message's acceptance to its ACK (retries and the command's run time included).",
                &[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, 3600.0,
                ],
                &["method"],
            ),
            log_refused: counter_vec(
                &r,
                "steward_log_writes_refused_total",
                "ErrorLog and TextLogging messages refused: the sender over its hourly budget (reason budget) or the disk below the free-space floor (reason disk).",
                &["method", "reason"],
            ),
            log_skipped: counter_vec(
                &r,
                "steward_log_lines_skipped_total",
                "Lines of a log that is only a log (message-log.txt) that could not be written (a full disk); nothing else is skipped.",
                &["file"],
            ),
            hello_age: gauge_vec(
                &r,
                "steward_node_last_hello_age_seconds",
                "Seconds since each node last said Hello (on the node that receives Hello: central).",
                &["node"],
            ),
            last_hello: Mutex::new(HashMap::new()),
            mirroring: Mutex::new(()),
            registry: r,
        }
    }

    /// A node said Hello: now, whatever time was kept before (one kept while this node's
    /// clock was ahead, here or in `hello-nodes.json`, would otherwise keep the node's age
    /// at 0 until the clock caught up, however long the node stays silent).
    pub fn hello(&self, node: &str) {
        self.last_hello
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), crate::files::unix_millis());
    }

    /// A node said Hello at `unix_ms` (as `hello-nodes.json` says, at start: a node that
    /// went silent before a restart of this one still has its line, and its age grows).
    pub fn hello_at(&self, node: &str, unix_ms: u64) {
        let mut last = self.last_hello.lock().unwrap_or_else(|p| p.into_inner());
        let at = last.entry(node.to_string()).or_insert(unix_ms);
        *at = (*at).max(unix_ms);
    }

    /// Mirrors the journal's figures.
    pub fn journal(&self, journal: &mut crate::journal::Journal) {
        for s in journal.take_fsync_seconds() {
            self.journal_fsync.observe(s);
        }
        self.journal_pending.set(journal.pending_count() as i64);
        self.journal_size.set(journal.size() as i64);
        let written = journal.bytes_written();
        self.journal_written
            .inc_by(written.saturating_sub(self.journal_written.get()));
    }

    pub fn render(&self) -> String {
        // Counted inside the (patched) nats client, which drops such a message instead of
        // the connection; see vendor/nats.
        {
            let _one = self.mirroring.lock().unwrap_or_else(|p| p.into_inner());
            self.broker_malformed_dropped.inc_by(
                nats::dropped_malformed_messages()
                    .saturating_sub(self.broker_malformed_dropped.get()),
            );
        }
        let now = crate::files::unix_millis();
        for (node, &at) in self
            .last_hello
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            self.hello_age
                .with_label_values(&[node])
                .set((now.saturating_sub(at) / 1000) as i64);
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(metrics: &Metrics, node: &str) -> i64 {
        metrics.render();
        metrics.hello_age.with_label_values(&[node]).get()
    }

    /// A time kept while the clock was ahead (an hour: NTP set it back since) does not
    /// outlive the next Hello: the node's age then grows from that Hello, not from the
    /// future.
    #[test]
    fn a_hello_after_the_clock_was_set_back_counts_from_now() {
        let metrics = Metrics::new();
        let now = crate::files::unix_millis();
        metrics.hello_at("ship1", now + 3_600_000);
        metrics.hello("ship1");
        let kept = metrics.last_hello.lock().unwrap()["ship1"];
        assert!(
            kept <= crate::files::unix_millis(),
            "kept {kept}, now {now}"
        );
        // A time read from hello-nodes.json at start does not replace a later Hello.
        metrics.hello_at("ship1", now - 60_000);
        assert_eq!(metrics.last_hello.lock().unwrap()["ship1"], kept);
        assert_eq!(age(&metrics, "ship1"), 0);
    }
}
