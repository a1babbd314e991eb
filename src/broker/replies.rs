//! Replies to this node's requests: one subscription for all its publishers.
//!
//! Each publisher used to subscribe to an inbox of its own when it started and unsubscribe
//! when it ended. At a 10,000-node fan-out that is 20,000 SUBs and UNSUBs, each taking both
//! of the client's locks, and a thousand publishers spent most of the run queued behind them
//! (measured off-CPU). Now the node subscribes once, to `_INBOX.<node>.<nuid>.*.*`, and each
//! publisher takes a [`Route`]: a subject prefix of its own (`<inbox>.<token>`, under which it
//! makes each attempt's reply subject) and a channel. The client's reader thread hands a reply
//! to its route's channel as it decodes it (a vendored patch, `subscribe_routed`), so no
//! thread stands in between. A reply whose route is gone (its publisher ended) is dropped, as
//! it was when the publisher's own subscription went; what a reply must prove (who signed
//! it, over which attempt) is checked by the publisher, as before.

use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

type Routes = Arc<Mutex<HashMap<u64, Sender<nats::Message>>>>;

/// The node's reply subscription and the routes taken from it.
pub(super) struct Replies {
    inbox: String,
    routes: Routes,
    next: u64,
    /// Kept: dropping it would unsubscribe.
    _subscription: nats::Subscription,
}

/// Where one publisher's replies arrive: subjects under `prefix`, into `messages`. Dropped,
/// it stops taking them.
pub struct Route {
    pub prefix: String,
    pub messages: Receiver<nats::Message>,
    token: u64,
    routes: Routes,
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
                .and_then(|rest| rest.split('.').next())
                .and_then(|t| t.parse::<u64>().ok());
            let table = table.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(to) = token.and_then(|t| table.get(&t)) {
                let _ = to.send(m.clone());
            }
            true // never queued on the shared subscription itself
        })?;
        Ok(Replies {
            inbox,
            routes,
            next: 0,
            _subscription: subscription,
        })
    }

    /// A new route: a prefix no other publisher of this run has had.
    pub(super) fn route(&mut self) -> Route {
        self.next += 1;
        let (tx, messages) = crossbeam_channel::unbounded();
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.next, tx);
        Route {
            prefix: format!("{}.{}", self.inbox, self.next),
            messages,
            token: self.next,
            routes: self.routes.clone(),
        }
    }
}
