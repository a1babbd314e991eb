//! The connection to NATS.
//!
//! One `nats::Connection` per node, shared by all its processes (it is a handle around one
//! socket). The connection is made in the background: a node whose broker is down keeps
//! taking messages into its journal, and its publishers and subscribers start as soon as the
//! connection is up. After that the `nats` client reconnects by itself, forever, with
//! backoff, across every server given; subscriptions are renewed on reconnect.
//!
//! The sync client flushes its write buffer at most every 5 ms per connection. Every send on
//! the message path therefore ends with [`flush`], so a round trip costs a round trip, not
//! the flush timer.

use crate::metrics::Metrics;
use crossbeam_channel::{Receiver, Sender};
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The node's broker connection, once it exists.
pub struct Broker {
    conn: OnceLock<nats::Connection>,
    /// Closed (its sender dropped) when `conn` is set: a select-able "connected" signal.
    ready: Receiver<()>,
}

impl Broker {
    /// Starts connecting to `urls` in the background and returns at once.
    pub fn connect(node: &str, urls: &[String], metrics: Arc<Metrics>) -> Arc<Broker> {
        let (ready_tx, ready) = crossbeam_channel::bounded::<()>(0);
        let broker = Arc::new(Broker {
            conn: OnceLock::new(),
            ready,
        });
        let url_list = urls.join(",");
        let name = format!("steward {node}");
        let b = broker.clone();
        std::thread::Builder::new()
            .name("broker-connect".into())
            .spawn(move || b.connect_loop(&name, &url_list, metrics, ready_tx))
            .expect("spawning a thread at start-up");
        broker
    }

    fn connect_loop(&self, name: &str, urls: &str, metrics: Arc<Metrics>, ready: Sender<()>) {
        let mut attempt = 0u32;
        loop {
            let m_down = metrics.clone();
            let m_up = metrics.clone();
            let options = nats::Options::new()
                .with_name(name)
                .retry_on_failed_connect()
                .max_reconnects(None)
                .reconnect_delay_callback(|n| backoff(n as u32, Duration::from_secs(5)))
                .disconnect_callback(move || {
                    m_down.broker_connected.set(0);
                    log::warn!("disconnected from the broker; messages wait in the journal");
                })
                .reconnect_callback(move || {
                    m_up.broker_connected.set(1);
                    m_up.broker_reconnects.inc();
                    log::info!("reconnected to the broker");
                });
            match options.connect(urls) {
                Ok(conn) => {
                    log::info!("connected to the broker at {urls}");
                    metrics.broker_connected.set(1);
                    let _ = self.conn.set(conn);
                    drop(ready);
                    return;
                }
                Err(e) => {
                    // Only configuration errors get here (retry_on_failed_connect retries
                    // unreachable servers itself); say so, and keep trying slowly.
                    attempt += 1;
                    log::error!("cannot connect to the broker at {urls}: {e}");
                    std::thread::sleep(backoff(attempt, Duration::from_secs(30)));
                }
            }
        }
    }

    /// Waits until connected, or until `stop` fires (then `None`).
    pub fn wait(&self, stop: &Receiver<()>) -> Option<nats::Connection> {
        crossbeam_channel::select! {
            recv(self.ready) -> _ => self.conn.get().cloned(),
            recv(stop) -> _ => None,
        }
    }

    pub fn get(&self) -> Option<nats::Connection> {
        self.conn.get().cloned()
    }
}

/// Publishes and flushes at once (see the module docs for why).
pub fn publish(
    conn: &nats::Connection,
    subject: &str,
    reply: Option<&str>,
    payload: &[u8],
) -> io::Result<()> {
    match reply {
        Some(reply) => conn.publish_request(subject, reply, payload)?,
        None => conn.publish(subject, payload)?,
    }
    conn.flush_timeout(Duration::from_secs(5))
}

/// Exponential backoff from 100 ms, capped, with up to 25% jitter so a fleet that lost its
/// broker together does not come back in lockstep.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(16));
    let d = base.min(cap);
    let jitter = (crate::files::unix_millis() ^ u64::from(std::process::id())) % 1000;
    d + d.mul_f64(jitter as f64 / 4000.0)
}
