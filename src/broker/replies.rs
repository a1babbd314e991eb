//! Replies to this node's requests: one subscription for all its publishers.
//!
//! Each publisher used to subscribe to an inbox of its own when it started and unsubscribe
//! when it ended. At a 10,000-node fan-out that is 20,000 SUBs and UNSUBs, each taking both
//! of the client's locks, and a thousand publishers spent most of the run queued behind them
//! (measured off-CPU). Now the node subscribes once, to `_INBOX.<node>.<nuid>.*.*`, and each
//! publisher of an ACK kind takes a [`Route`]: a subject prefix of its own (`<inbox>.<token>`,
//! under which it makes each attempt's reply subject) and a channel. The client's reader
//! thread hands a reply to its route's channel as it decodes it (a vendored patch,
//! `subscribe_routed`), so no thread stands in between.
//!
//! A token is random, as each publisher's inbox was, so a node that has seen one reply
//! subject (the destination of a request sees its own) cannot name another publisher's. A
//! route's channel holds [`ROUTE_DEPTH`] messages: a publisher waits for one answer at a
//! time, so more is a flood, dropped (its attempt is at worst tried again), and memory stays
//! bounded whatever is published to the inbox, even while a publisher idles with nothing
//! reading its route. A reply whose route is gone (its publisher ended) is dropped, as it
//! was when the publisher's own subscription went; what a reply must prove (who signed it,
//! over which attempt) is checked by the publisher, as before.

use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

/// How many messages a route holds before it drops what comes: a publisher waits for one
/// answer at a time (late answers to its earlier attempts beside it).
pub const ROUTE_DEPTH: usize = 64;

type Routes = Arc<Mutex<HashMap<String, Sender<nats::Message>>>>;

/// The node's reply subscription and the routes taken from it.
pub(super) struct Replies {
    conn: nats::Connection,
    inbox: String,
    routes: Routes,
    /// Kept: dropping it would unsubscribe.
    _subscription: nats::Subscription,
}

/// Where one publisher's replies arrive: subjects under `prefix`, into `messages`. Dropped,
/// it stops taking them.
pub struct Route {
    pub prefix: String,
    pub messages: Receiver<nats::Message>,
    token: String,
    routes: Routes,
}

impl Route {
    /// No route: for a publisher whose messages have no answer (NACK kinds), so that no
    /// subject of the shared inbox leads to it.
    pub fn none() -> Route {
        Route {
            prefix: String::new(),
            messages: crossbeam_channel::never(),
            token: String::new(),
            routes: Routes::default(),
        }
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.token);
    }
}

impl Replies {
    /// Subscribes to `inbox.*.*` (`inbox` is this node's own: `_INBOX.<node>.<nuid>`).
    pub(super) fn subscribe(conn: &nats::Connection, inbox: String) -> io::Result<Replies> {
        let routes: Routes = Arc::default();
        let (table, prefix) = (routes.clone(), format!("{inbox}."));
        let subscription = conn.subscribe_routed(&format!("{inbox}.*.*"), move |m| {
            let token = m
                .subject
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('.').next());
            let table = table.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(to) = token.and_then(|t| table.get(t)) {
                // Full: a flood on this route; the publisher's attempt is tried again.
                let _ = to.try_send(m.clone());
            }
            true // never queued on the shared subscription itself
        })?;
        Ok(Replies {
            conn: conn.clone(),
            inbox,
            routes,
            _subscription: subscription,
        })
    }

    /// A new route, under a random token (a nuid, as the client's inboxes have).
    pub(super) fn route(&mut self) -> Route {
        let (tx, messages) = crossbeam_channel::bounded(ROUTE_DEPTH);
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let token = loop {
            let nuid = self.conn.new_inbox();
            let token = nuid.trim_start_matches("_INBOX.").to_string();
            if !routes.contains_key(&token) {
                break token;
            }
        };
        routes.insert(token.clone(), tx);
        Route {
            prefix: format!("{}.{token}", self.inbox),
            messages,
            token,
            routes: self.routes.clone(),
        }
    }
}
