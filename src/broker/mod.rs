//! The connection to NATS.
//!
//! One `nats::Connection` per node, shared by all its processes (it is a handle around one
//! socket). The connection is made in the background: a node whose broker is down keeps
//! taking messages into its journal, and its publishers and subscribers start as soon as the
//! connection is up. After that the `nats` client reconnects by itself, forever, with
//! backoff, across every server given; subscriptions are renewed on reconnect.
//!
//! While the link is down, [`Broker::wait`] blocks (no polling) until it is back, so
//! publishers neither spin nor spend their retry budget on an outage of our own link;
//! [`Broker::epoch`] counts disconnections, so an attempt that a disconnection interrupted
//! is not counted either.
//!
//! A link can also be cut silently: no FIN, no reset, the socket open and writable (a
//! satellite's dropout, a modem that acknowledges bytes on the broker's behalf). The client
//! checks the link every `brokerPingInterval` (a vendored patch, `Options::ping_interval`):
//! an interval in which nothing came from the broker and TCP moved none of the bytes
//! waiting sends a PING, and a second such interval ends the connection, which is then made
//! again as after any outage. That takes two to three intervals; an attempt that fails
//! meanwhile must not be counted against its destination either, so a failed attempt
//! counts only once the broker has answered a PING sent at its end ([`Broker::answered`]),
//! and answered it promptly: then the link was passing bytes, what the attempt sent had
//! reached the broker in time, and the missing ACK is the destination's. A PONG that comes
//! late (the link held the bytes, and the attempt's with them) means the broker has only
//! now read the attempt: the destination gets one more ACK wait for that same send, and
//! then it counts. None at all (the link dropped) leaves the attempt uncounted. Without
//! this a message with the seed's three retries was given up 42 s into a silent cut, while
//! during a clean one it waited and went.
//!
//! The sync client flushes its write buffer at most every 5 ms per connection. Every send on
//! the message path therefore goes through [`Broker::publish`], which writes it out at once,
//! so a round trip costs a round trip, not the flush timer. What it waits for then depends
//! on what confirms the message ([`Confirm`]): a request (ACK kinds) is confirmed by its
//! reply and a reply by the sender's retrying until it has one, so those wait only for the
//! socket write, made in the same hold of the client's lock as the publish, without waking
//! its flusher thread (a vendored patch, `publish_written`); a message published once (NACK
//! kinds, Hello) waits for the server's PONG, the only sign it arrived. Waiting for a PONG
//! per request had cost a 10,000-node fan-out most of its time: a thousand publishers
//! queued on the client's locks and on each other's PONGs. The wait for a PONG is bounded
//! ([`FLUSH_TIMEOUT`]: a vendored patch) and so is each socket write, a large message's
//! and the client's own flusher's included, over TCP and TLS alike (the client's
//! `WRITE_TIMEOUT`, another); a write that fails ends the connection, and the client
//! reconnects. A link known to be down is not written to at all, so no thread that sends
//! (publisher, Hello, handler) waits on an outage, and a stop is never held up by one. (A
//! send can still wait for the client's lock while another thread's write is slow.)

use crate::config::{Auth, BrokerSecurity};
use crate::keys::{Covers, Identity, Scope, Sealed};
use crate::metrics::Metrics;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

mod replies;

pub use replies::{
    inbox_of, Ask, Asked, GivenUp, Late, NotAwaited, Route, LATE_AT_MOST, LATE_AWAITED,
    LATE_AWAITED_EACH_NODE, LATE_FOR,
};

/// Where a user and password, or a token, is written into a broker address
/// (`nats://user:password@host:4222`, which the NATS client takes as the connection's
/// credentials, before any `--user` or `--tokenFile`): the bytes before the host's `@`.
pub fn credentials(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let host_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    url[start..host_end].rfind('@').map(|at| start..start + at)
}

/// What of a broker address may be a secret: all before its last `@`, its [`credentials`]
/// and, where its host ends before that `@` (a password holding `/`, `?` or `#` unencoded,
/// which the client cannot use, but which is the operator's password all the same), more.
pub fn secret(url: &str) -> Option<std::ops::Range<usize>> {
    // Even where the host's `@` is an earlier one: a password `p@s3/cret` makes `s3` the
    // host, `cret@…` a path, and only `p` the credentials. (A real path holding an `@` is
    // hidden with it: no secret, but it cannot be told from one.)
    let start = url.find("://").map_or(0, |i| i + 3);
    url[start..].rfind('@').map(|at| start..start + at)
}

/// The broker addresses as they may be shown in the log, credentials replaced by `***`
/// (see [`secret`]). They were logged as given at every start and connection, so such
/// a password ended up in the journal of everyone who may read the system log.
pub fn shown(urls: &[String]) -> String {
    let shown: Vec<String> = urls
        .iter()
        .map(|url| match secret(url) {
            Some(r) => format!("{}***{}", &url[..r.start], &url[r.end..]),
            None => url.clone(),
        })
        .collect();
    shown.join(",")
}

/// How long a flush (our PING and the server's PONG, or one socket write) may take before
/// a send counts as failed.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`Broker::publish`] waits for once the message is handed to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// The socket write: the message's answer confirms it (a request awaiting its reply,
    /// a reply whose sender sends again until it has one).
    ByAnswer,
    /// The server's PONG: nothing else would tell that a message published once arrived.
    ByServer,
}

/// What [`Broker::answered`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// The broker answered, after this long: it has read all this node wrote before the
    /// PING.
    Answered(Duration),
    /// The link went down before it did.
    Dropped,
    /// The node is stopping.
    Stopped,
}

/// See [`Broker::too_large`].
fn too_large(conn: &nats::Connection, len: usize) -> Option<String> {
    let max = conn.max_payload();
    (max > 0 && len + HEADER_ROOM > max).then(|| {
        format!(
            "{len} bytes, more than the broker takes in one message (its max_payload, {max} bytes, with room for the signature)"
        )
    })
}

/// Room kept in a message for its headers (the signature's: well under this) when a payload
/// is checked against the broker's `max_payload`, which counts both.
pub const HEADER_ROOM: usize = 1024;

/// The node's broker connection, once it exists.
pub struct Broker {
    conn: OnceLock<nats::Connection>,
    link: Mutex<Link>,
    epoch: AtomicU64,
    node: String,
    /// The subscription every publisher's replies arrive on, made at the first's start.
    replies: Mutex<Option<replies::Replies>>,
    /// Replies awaited after their message was given up (see [`Late`]).
    pub late: Arc<Late>,
    /// Subscriptions to the inboxes of this node's earlier runs, by inbox, while [`Late`]
    /// awaits a reply under one ([`Broker::listen_earlier`]).
    earlier: Mutex<HashMap<String, nats::Subscription>>,
    /// Told each time the link comes back up ([`Broker::reconnects`]).
    reconnected: Mutex<Vec<Sender<()>>>,
}

/// A select-able "link is up" signal: `up` is a receiver whose sender is held while the
/// link is down and dropped when it comes up, which wakes every waiter at once.
struct Link {
    up: Receiver<()>,
    down: Option<Sender<()>>,
    /// When it went down (or the node started, not yet connected).
    since: std::time::Instant,
}

impl Link {
    fn new_down() -> Link {
        let (down, up) = crossbeam_channel::bounded(0);
        Link {
            up,
            down: Some(down),
            since: std::time::Instant::now(),
        }
    }
}

impl Broker {
    /// Starts connecting to `urls` in the background and returns at once.
    pub fn connect(
        node: &str,
        urls: &[String],
        security: BrokerSecurity,
        ping_interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Broker> {
        let broker = Arc::new(Broker {
            conn: OnceLock::new(),
            link: Mutex::new(Link::new_down()),
            epoch: AtomicU64::new(0),
            node: node.to_string(),
            replies: Mutex::new(None),
            late: Arc::default(),
            earlier: Mutex::default(),
            reconnected: Mutex::new(Vec::new()),
        });
        let url_list = urls.join(",");
        let name = format!("steward {node}");
        let b = broker.clone();
        let targets = (url_list, shown(urls));
        std::thread::Builder::new()
            .name("broker-connect".into())
            .spawn(move || {
                Broker::connect_loop(&b, &name, &targets, &security, ping_interval, metrics)
            })
            .expect("spawning a thread at start-up");
        broker
    }

    fn connect_loop(
        self: &Arc<Broker>,
        name: &str,
        (urls, shown): &(String, String),
        security: &BrokerSecurity,
        ping_interval: Duration,
        metrics: Arc<Metrics>,
    ) {
        let mut attempt = 0u32;
        loop {
            let (m_down, b_down) = (metrics.clone(), self.clone());
            let (m_up, b_up) = (metrics.clone(), self.clone());
            let options = secured(security)
                .with_name(name)
                .retry_on_failed_connect()
                .max_reconnects(None)
                .ping_interval(ping_interval)
                .reconnect_delay_callback(|n| {
                    crate::retry::backoff(n as u32, Duration::from_secs(5))
                })
                // The client reports a full subscription queue once per message dropped;
                // the subscriber counts and logs those instead, after the messages it handles.
                .error_callback(|e| {
                    if e.to_string().starts_with("slow consumer") {
                        log::debug!("broker client: {e}");
                    } else {
                        log::warn!("broker client: {e}");
                    }
                })
                .disconnect_callback(move || {
                    b_down.set_up(false);
                    m_down.broker_connected.set(0);
                    log::warn!("disconnected from the broker; messages wait in the journal");
                })
                .reconnect_callback(move || {
                    b_up.set_up(true);
                    m_up.broker_connected.set(1);
                    m_up.broker_reconnects.inc();
                    log::info!("reconnected to the broker");
                });
            // The client keeps trying an unreachable broker inside `connect`, saying nothing
            // until it answers: said here, once, so that a node started while its broker
            // is away (or at a wrong address) is not silent about it.
            if attempt == 0 {
                log::info!(
                    "connecting to the broker at {shown}; until it answers, messages wait in the journal"
                );
            }
            match options.connect(urls.as_str()) {
                Ok(conn) => {
                    // Of a list, the client does not say which one took it.
                    match urls.contains(',') {
                        true => log::info!("connected to the broker, one of {shown}"),
                        false => log::info!("connected to the broker at {shown}"),
                    }
                    metrics.broker_connected.set(1);
                    let _ = self.conn.set(conn);
                    self.set_up(true);
                    return;
                }
                Err(e) => {
                    // Only configuration errors get here (retry_on_failed_connect retries
                    // unreachable servers itself); say so, and keep trying slowly.
                    attempt += 1;
                    log::error!("cannot connect to the broker at {shown}: {e}");
                    std::thread::sleep(crate::retry::backoff(attempt, Duration::from_secs(30)));
                }
            }
        }
    }

    fn set_up(&self, up: bool) {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        match (up, link.down.is_some()) {
            (true, true) => {
                link.down = None; // wakes every waiter
                if self.epoch.load(Ordering::SeqCst) == 0 {
                    return; // the first connection: no reconnect
                }
                let mut told = self.reconnected.lock().unwrap_or_else(|p| p.into_inner());
                told.retain(|tell| {
                    !matches!(
                        tell.try_send(()),
                        Err(crossbeam_channel::TrySendError::Disconnected(_))
                    )
                });
            }
            (false, false) => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                *link = Link::new_down();
            }
            _ => {}
        }
    }

    /// Waits until the link is up, or until `stop` fires (then `None`).
    pub fn wait(&self, stop: &Receiver<()>) -> Option<nats::Connection> {
        let up = self
            .link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .up
            .clone();
        crossbeam_channel::select! {
            recv(up) -> _ => self.conn.get().cloned(),
            recv(stop) -> _ => None,
        }
    }

    /// A signal each time the link comes back up after being down (not at the first
    /// connection): the Hello goes at once, so that central's lanes to this node, paused
    /// between attempts while it was away, try again now rather than at their pause's end.
    pub fn reconnects(&self) -> Receiver<()> {
        let (tell, told) = crossbeam_channel::bounded(1);
        self.reconnected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tell);
        told
    }

    /// Counts disconnections: if it changed during an attempt, the link failed, not the peer.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether the broker answers a PING sent now, which it does once it has read all that
    /// this node wrote before it: `Answered` with how long that took, or `Dropped` if the
    /// link went down first (since `epoch`, or now), or `Stopped`. Waits as long as that
    /// takes: the client's check of the link ends a connection that stays silent (see the
    /// module docs).
    pub fn answered(&self, epoch: u64, stop: &Receiver<()>) -> Heard {
        let conn = match self.conn.get() {
            Some(conn) if self.is_up() && self.epoch() == epoch => conn,
            _ => return Heard::Dropped,
        };
        // A PING that cannot be written ends the connection (the client's rule).
        let asked = std::time::Instant::now();
        let Ok(pong) = conn.ping(FLUSH_TIMEOUT) else {
            return Heard::Dropped;
        };
        loop {
            crossbeam_channel::select! {
                recv(pong) -> answer => return match answer {
                    Ok(()) => Heard::Answered(asked.elapsed()),
                    Err(_) => Heard::Dropped, // the connection ended first
                },
                recv(stop) -> _ => return Heard::Stopped,
                default(Duration::from_millis(250)) => {
                    // The client drops a PONG's waiter only at the reconnect.
                    if self.epoch() != epoch {
                        return Heard::Dropped;
                    }
                }
            }
        }
    }

    pub fn get(&self) -> Option<nats::Connection> {
        self.conn.get().cloned()
    }

    /// Where a publisher's replies arrive (see [`replies`]): a subject prefix of its own on
    /// `conn`, this node's connection, under the node's own inbox (`_INBOX.<node>.…`, so
    /// a broker can let each node read only its own replies; see the confined config).
    pub fn route(&self, conn: &nats::Connection) -> io::Result<Route> {
        let mut replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        if replies.is_none() {
            let nuid = conn.new_inbox();
            let inbox = format!(
                "_INBOX.{}.{}",
                self.node,
                nuid.trim_start_matches("_INBOX.")
            );
            *replies = Some(replies::Replies::subscribe(conn, inbox, self.late.clone())?);
        }
        Ok(replies.as_mut().expect("made above").route())
    }

    /// Listens on the inboxes of this node's earlier runs under which [`Late`] awaits a
    /// reply (read back from the data folder at the start: a command given up before a
    /// restart may still answer there), a subscription each, handing what comes to
    /// [`Late::takes`] only, once the broker has each subscription; and stops listening on
    /// those it no longer awaits anything under.
    pub fn listen_earlier(&self, conn: &nats::Connection) -> io::Result<()> {
        let wanted = self.release_earlier();
        let mut earlier = self.earlier.lock().unwrap_or_else(|p| p.into_inner());
        let new: Vec<String> = wanted
            .into_iter()
            .filter(|inbox| !earlier.contains_key(inbox))
            .collect();
        for inbox in &new {
            let late = self.late.clone();
            let subscription = conn.subscribe_routed(&format!("{inbox}.*.*"), move |m| {
                late.takes(m);
                true // awaited or not, nothing else reads this inbox now
            })?;
            earlier.insert(inbox.clone(), subscription);
        }
        if new.is_empty() {
            return Ok(());
        }
        // So that "listening" is said once it is so: a reply sent after the word is heard.
        // Not so (the link went down meanwhile): let go, to be made again at the next try.
        if let Err(e) = conn.flush_timeout(Duration::from_secs(5)) {
            earlier.retain(|inbox, _| !new.contains(inbox));
            return Err(e);
        }
        for inbox in &new {
            log::info!("listening on {inbox}, an earlier run's inbox, for late replies");
        }
        Ok(())
    }

    /// Stops listening on the earlier runs' inboxes [`Late`] no longer awaits anything
    /// under: those it still does.
    pub fn release_earlier(&self) -> std::collections::HashSet<String> {
        let mut wanted = self.late.inboxes();
        if let Some(replies) = &*self.replies.lock().unwrap_or_else(|p| p.into_inner()) {
            wanted.remove(&replies.inbox); // this run's: its own subscription takes them
        }
        let mut earlier = self.earlier.lock().unwrap_or_else(|p| p.into_inner());
        earlier.retain(|inbox, _| wanted.contains(inbox)); // dropped: unsubscribed
        wanted
    }

    /// The link as the process table shows it: `up`, or `down for 12s`.
    pub fn describe(&self) -> String {
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        match link.down {
            None => "up".to_string(),
            Some(_) => format!("down for {}s", link.since.elapsed().as_secs()),
        }
    }

    /// Whether the link is up, as far as the client has told us.
    pub fn is_up(&self) -> bool {
        self.link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .down
            .is_none()
    }

    /// Publishes on `scope`'s subject, signed by `identity` over its subjects (and, for a
    /// reply, the signature of the request it answers) and what `covers` says of the
    /// payload, and writes it out at once, waiting for what `confirm` says (see the module
    /// docs for why). Returns the signature: what a reply to this message must name.
    ///
    /// On a link known to be down it fails at once (`NotConnected`) rather than queue the
    /// message in the client and wait for the broker: the caller's own retry, or the
    /// sender's, takes it from there, and a stop is never held up by an outage. A link
    /// that fails mid-flush is bounded by [`FLUSH_TIMEOUT`] (see the module docs).
    pub fn publish(
        &self,
        identity: &Identity,
        scope: Scope<'_>,
        payload: &[u8],
        covers: Covers,
        confirm: Confirm,
    ) -> io::Result<String> {
        // Not sealed (signed, a counter spent) for a link known to be down.
        if !self.is_up() {
            return Err(link_down());
        }
        self.publish_sealed(
            scope.subject,
            scope.reply,
            identity.seal_covering(scope, payload, covers),
            payload,
            confirm,
        )
    }

    /// Why a payload of `len` bytes can never be sent on the current connection, if it
    /// cannot (larger than the broker's `max_payload`, with room for the signature): a
    /// message that is so fails at once, not by attempts (a week of them, with a `ttl`).
    pub fn too_large(&self, len: usize) -> Option<String> {
        self.conn.get().and_then(|conn| too_large(conn, len))
    }

    /// The most bytes the broker takes in one message, headers included, as the current
    /// connection was told; 0 if not known (not connected yet).
    pub fn max_payload(&self) -> usize {
        self.conn.get().map_or(0, |conn| conn.max_payload())
    }

    /// [`Broker::publish`] with its seal made ahead ([`crate::keys::Identity::seal`], in the
    /// same scope, over the same payload).
    pub fn publish_sealed(
        &self,
        subject: &str,
        reply: Option<&str>,
        sealed: Sealed,
        payload: &[u8],
        confirm: Confirm,
    ) -> io::Result<String> {
        let conn = match self.conn.get() {
            Some(conn) if self.is_up() => conn,
            _ => return Err(link_down()),
        };
        // Sent, it would be refused with the connection itself (the broker closes it), and
        // sent again after the reconnect, for ever.
        if let Some(why) = too_large(conn, payload.len()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
        let headers = Some(&sealed.headers);
        match confirm {
            Confirm::ByAnswer => {
                conn.publish_written(subject, reply, headers, payload, FLUSH_TIMEOUT)?
            }
            Confirm::ByServer => {
                conn.publish_with_reply_or_headers(subject, reply, headers, payload)?;
                conn.flush_timeout(FLUSH_TIMEOUT)?
            }
        }
        Ok(sealed.sig)
    }
}

/// Why nothing can be published now.
fn link_down() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the link to the broker is down",
    )
}

/// Options with the node's TLS and authentication. Secrets go to the client, never to logs.
fn secured(security: &BrokerSecurity) -> nats::Options {
    let mut options = match &security.auth {
        Auth::None => nats::Options::new(),
        Auth::UserPassword { user, password } => {
            nats::Options::with_user_pass(user, password.expose())
        }
        Auth::Token(token) => nats::Options::with_token(token.expose()),
        Auth::NKeySeed(seed) => match nkeys::KeyPair::from_seed(seed.expose()) {
            Ok(pair) => {
                let public = pair.public_key();
                nats::Options::with_nkey(&public, move |nonce| pair.sign(nonce).unwrap_or_default())
            }
            // Checked when the configuration was read; cannot happen.
            Err(_) => nats::Options::new(),
        },
        Auth::CredsFile(path) => nats::Options::with_credentials(path),
    };
    if let Some(ca) = &security.tls_ca {
        options = options.add_root_certificate(ca).tls_required(true);
    }
    if let Some((cert, key)) = &security.tls_client {
        options = options.client_cert(cert, key);
    }
    options
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_an_address_are_not_shown() {
        let urls = [
            "nats://steward:s3cret@10.0.0.1:4222".to_string(),
            "tls://t0ken@b.example:4222/x@y".to_string(),
            "nats://127.0.0.1:4222".to_string(),
        ];
        assert_eq!(
            super::shown(&urls),
            "nats://***@10.0.0.1:4222,tls://***@y,nats://127.0.0.1:4222"
        );
    }

    #[test]
    fn a_password_holding_a_slash_is_not_shown_either() {
        // base64 passwords hold '/' (and '+'): unencoded, the URL's host ends at the '/'
        // (the client cannot use it, and says so at every try), but the password is the
        // operator's all the same.
        for url in [
            "nats://steward:s3/cret@10.0.0.1:4222",
            "nats://steward:s3?cret@10.0.0.1:4222",
            "nats://steward:s3#cret@10.0.0.1:4222",
            // An '@' before the '/' too: the part of it before the '/' is no host.
            "nats://steward:p@s3/cret@10.0.0.1:4222",
        ] {
            let shown = super::shown(&[url.to_string()]);
            assert!(!shown.contains("cret"), "{shown}");
        }
    }
}
