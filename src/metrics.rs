//! Prometheus metrics and the two small HTTP endpoints: `/metrics` at `--promHostAndPort`,
//! and the process table as plain text at `--profilingPort`.
//!
//! Names follow Prometheus conventions: `steward_` prefix, `_total` on counters, base units.
//! The HTTP responder is a few lines over `std::net`: one thread, one request per
//! connection, which is all a scraper needs, without pulling an HTTP stack onto a Pi.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

pub struct Metrics {
    pub registry: Registry,
    pub accepted: IntCounterVec,
    pub sent: IntCounterVec,
    pub acked: IntCounterVec,
    pub retried: IntCounterVec,
    pub failed: IntCounterVec,
    pub received: IntCounterVec,
    pub rejected_input: IntCounter,
    pub processes: IntGauge,
    pub restarts: IntCounter,
    pub broker_connected: IntGauge,
    pub broker_reconnects: IntCounter,
    broker_malformed_dropped: IntCounter,
    pub journal_pending: IntGauge,
    pub journal_size: IntGauge,
    pub journal_written: IntCounter,
    pub journal_fsync: Histogram,
    pub finished: IntCounterVec,
    pub delivery_latency: HistogramVec,
    hello_age: IntGaugeVec,
    /// Node → when it last said Hello (ms since the epoch); ages are computed at scrape time.
    last_hello: Mutex<HashMap<String, u64>>,
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

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            accepted: counter_vec(
                &r,
                "steward_messages_accepted_total",
                "Messages taken from inmsg.txt (or raised by this node) into the journal.",
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
            failed: counter_vec(
                &r,
                "steward_messages_failed_total",
                "Messages given up (retries spent or refused) and kept in failed-messages.txt.",
                &["method"],
            ),
            received: counter_vec(
                &r,
                "steward_messages_received_total",
                "Messages received by this node, by outcome (ok, error, refused, duplicate).",
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
                "Processes (threads) in the supervisor's table that are running.",
            ),
            restarts: counter(
                &r,
                "steward_process_restarts_total",
                "Processes restarted after failing.",
            ),
            broker_connected: gauge(
                &r,
                "steward_broker_connected",
                "1 while connected to the broker.",
            ),
            broker_reconnects: counter(
                &r,
                "steward_broker_reconnects_total",
                "Reconnections to the broker.",
            ),
            broker_malformed_dropped: counter(
                &r,
                "steward_broker_malformed_dropped_total",
                "Incoming messages dropped because their NATS header block could not be parsed.",
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
            journal_fsync: {
                let h = Histogram::with_opts(
                    HistogramOpts::new("steward_journal_fsync_seconds", "Time each journal fsync took.")
                        .buckets(vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
                )
                .expect("metric names are valid");
                r.register(Box::new(h.clone())).expect("metric registered once");
                h
            },
            finished: counter_vec(
                &r,
                "steward_messages_finished_total",
                "Messages finished by this node as sender, by method, kind and outcome (acked, published, refused, failed).",
                &["method", "kind", "outcome"],
            ),
            delivery_latency: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "steward_delivery_latency_seconds",
                        "From a message's acceptance to its ACK (retries and the command's run time included).",
                    )
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0]),
                    &["method"],
                )
                .expect("metric names are valid");
                r.register(Box::new(h.clone())).expect("metric registered once");
                h
            },
            hello_age: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "steward_node_last_hello_age_seconds",
                        "Seconds since each node last said Hello (on the node that receives Hello: central).",
                    ),
                    &["node"],
                )
                .expect("metric names are valid");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            last_hello: Mutex::new(HashMap::new()),
            registry: r,
        }
    }

    /// A node said Hello.
    pub fn hello(&self, node: &str) {
        let mut last = self.last_hello.lock().unwrap_or_else(|p| p.into_inner());
        last.insert(node.to_string(), crate::files::unix_millis());
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
        self.broker_malformed_dropped.inc_by(
            nats::dropped_malformed_messages().saturating_sub(self.broker_malformed_dropped.get()),
        );
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

/// Serves `page(path)` over HTTP on `addr` from a thread of its own.
pub fn serve<F>(what: &str, addr: &str, page: F) -> std::io::Result<()>
where
    F: Fn(&str) -> Option<String> + Send + 'static,
{
    let listener = TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what} at {addr}: {e}")))?;
    log::info!("{what} listening on http://{}", listener.local_addr()?);
    std::thread::Builder::new()
        .name(what.to_string())
        .stack_size(64 * 1024)
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &page) {
                    log::debug!("http: {e}");
                }
            }
        })?;
    Ok(())
}

fn answer(stream: TcpStream, page: &dyn Fn(&str) -> Option<String>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers so the client sees a clean close.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match page(path) {
        Some(body) => ("200 OK", body),
        None => ("404 Not Found", "not found\n".to_string()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
