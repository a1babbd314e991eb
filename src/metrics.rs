//! Prometheus metrics and the two small HTTP endpoints: `/metrics` at `--promHostAndPort`,
//! and the process table as plain text at `--profilingPort`.
//!
//! Names follow Prometheus conventions: `steward_` prefix, `_total` on counters, base units.
//! The HTTP responder is a few lines over `std::net`: one request per connection, which is
//! all a scraper needs, without pulling an HTTP stack onto a Pi. These ports may be reachable
//! by anyone on the network, so the responder bounds what a client can take: a few KiB of
//! request, a few seconds, one of a few connection slots (see [`serve`]).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
                "Messages given up (retries spent or refused) and kept in failed-messages.txt.",
                &["method"],
            ),
            received: counter_vec(
                &r,
                "steward_messages_received_total",
                "Messages received by this node, by outcome (ok, error, refused, duplicate, or deferred: the method could not take it now, the disk below its floor; left unanswered, the sender tries again).",
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
                "Messages finished by this node as sender, by method, kind and outcome (acked, published, refused, failed).",
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
            registry: r,
        }
    }

    /// A node said Hello.
    pub fn hello(&self, node: &str) {
        self.hello_at(node, crate::files::unix_millis());
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

/// Most connections served at once per listener; past that a new connection is closed at
/// once, so slow or idle clients cannot pile up threads.
pub const MAX_CONNECTIONS: usize = 8;
/// Most bytes of request line and headers read; a longer request is answered 431.
pub const MAX_REQUEST_HEAD: usize = 4 * 1024;
/// The whole request must arrive within this, however slowly its bytes trickle in.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Serves `page(path)` over HTTP on `addr`: an accepting thread, and a small-stacked thread
/// per connection, at most [`MAX_CONNECTIONS`] at once. Each request gets
/// [`MAX_REQUEST_HEAD`] bytes and [`REQUEST_DEADLINE`] in all, so neither a client that sends
/// without end nor one that sends nothing can hold memory or stop the next scrape.
pub fn serve<F>(what: &str, addr: &str, page: F) -> std::io::Result<()>
where
    F: Fn(&str) -> Option<String> + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what} at {addr}: {e}")))?;
    log::info!("{what} listening on http://{}", listener.local_addr()?);
    let page = Arc::new(page);
    let busy = Arc::new(AtomicUsize::new(0));
    let name = what.to_string();
    std::thread::Builder::new()
        .name(what.to_string())
        .stack_size(64 * 1024)
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    log::debug!(
                        "{name}: {MAX_CONNECTIONS} connections already open; closing a new one"
                    );
                    continue; // dropping the stream closes it
                }
                let slot = Slot(busy.clone());
                let page = page.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("{name} client"))
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let _slot = slot;
                        if let Err(e) = answer(stream, &*page) {
                            log::debug!("http: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    log::error!("{name}: cannot start a thread: {e}");
                }
            }
        })?;
    Ok(())
}

/// A connection's place among [`MAX_CONNECTIONS`], given back when its thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How reading a request's head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The request line (headers read and dropped).
    Complete(String),
    /// More than [`MAX_REQUEST_HEAD`] bytes without the blank line that ends the head.
    TooLarge,
}

/// Reads the request line and headers, within `limit` bytes and by `deadline`.
fn read_head(
    stream: &mut impl Read,
    set_timeout: &mut dyn FnMut(Duration) -> std::io::Result<()>,
    limit: usize,
    deadline: Instant,
) -> std::io::Result<Head> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request did not arrive in time",
            ));
        }
        set_timeout(left)?;
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the end of the request",
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // Look for the end from a little before the new bytes: it may straddle two reads.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        let end = head[from..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .or_else(|| head[from..].windows(4).position(|w| w == b"\r\n\r\n"));
        if end.is_some() {
            let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
            if line_end > limit {
                return Ok(Head::TooLarge);
            }
            return Ok(Head::Complete(
                String::from_utf8_lossy(&head[..line_end])
                    .trim_end()
                    .to_string(),
            ));
        }
        if head.len() > limit {
            return Ok(Head::TooLarge);
        }
    }
}

fn answer(mut stream: TcpStream, page: &dyn Fn(&str) -> Option<String>) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let timeouts = stream.try_clone()?;
    let mut set_timeout = |d: Duration| timeouts.set_read_timeout(Some(d));
    let (status, body) = match read_head(&mut stream, &mut set_timeout, MAX_REQUEST_HEAD, deadline)?
    {
        Head::TooLarge => (
            "431 Request Header Fields Too Large",
            format!("a request's line and headers may take {MAX_REQUEST_HEAD} bytes\n"),
        ),
        Head::Complete(request_line) => {
            let path = request_line.split_whitespace().nth(1).unwrap_or("/");
            match page(path) {
                Some(body) => ("200 OK", body),
                None => ("404 Not Found", "not found\n".to_string()),
            }
        }
    };
    stream.set_write_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1)),
    ))?;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(input: &[u8], limit: usize) -> std::io::Result<Head> {
        let mut r = input;
        read_head(
            &mut r,
            &mut |_| Ok(()),
            limit,
            Instant::now() + Duration::from_secs(5),
        )
    }

    #[test]
    fn the_request_line_is_read_and_headers_dropped() {
        assert_eq!(
            head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 4096).unwrap(),
            Head::Complete("GET /metrics HTTP/1.1".into())
        );
        assert_eq!(
            head(b"GET / HTTP/1.0\n\n", 4096).unwrap(),
            Head::Complete("GET / HTTP/1.0".into())
        );
    }

    #[test]
    fn a_head_past_the_limit_is_too_large() {
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', 10_000));
        assert_eq!(head(&long, 4096).unwrap(), Head::TooLarge);
        let mut headers = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..1000 {
            headers.extend_from_slice(b"X-A: b\r\n");
        }
        headers.extend_from_slice(b"\r\n");
        assert_eq!(head(&headers, 4096).unwrap(), Head::TooLarge);
    }

    #[test]
    fn a_request_cut_short_is_an_error() {
        assert!(head(b"GET / HTTP/1.1\r\n", 4096).is_err());
    }
}
