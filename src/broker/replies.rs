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
//!
//! Except a reply to a message given up after a send its node may have taken ([`Late`]):
//! that message may run there all the same (a command that outlasts its `timeout`, copies
//! held in its node's link while it was cut silently), and its reply, when it comes, says
//! what it did. Such a reply goes to [`Late::messages`] whatever became of the route, for
//! the node's `late replies` process to check and keep
//! ([`crate::process::publisher::LateReplies`]).

use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// Subscribes to `inbox.*.*` (`inbox` is this node's own: `_INBOX.<node>.<nuid>`); a
    /// reply that [`Late`] awaits goes there.
    pub(super) fn subscribe(
        conn: &nats::Connection,
        inbox: String,
        late: Arc<Late>,
    ) -> io::Result<Replies> {
        let routes: Routes = Arc::default();
        let (table, prefix) = (routes.clone(), format!("{inbox}."));
        let subscription = conn.subscribe_routed(&format!("{inbox}.*.*"), move |m| {
            if late.takes(m) {
                return true;
            }
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

/// How many messages given up a node awaits late replies for at once: past it, the longest
/// awaited is let go (and said). A message is awaited only if one of its sends may have
/// been taken (see [`Late::awaits`]): a fan-out to nodes that are away awaits nothing.
pub const LATE_AWAITED: usize = 1024;

/// How long a reply is awaited after its message was given up: a command may run on for
/// its `methodTimeout` (then this long more: a reply held in a link as the message was);
/// at most [`LATE_AT_MOST`].
pub const LATE_FOR: Duration = Duration::from_secs(3600);
pub const LATE_AT_MOST: Duration = Duration::from_secs(24 * 3600);

/// A message given up after a send its node may have taken: what its late reply must
/// match, and until when it is awaited.
#[derive(Clone, Debug)]
pub struct GivenUp {
    /// Its lane: where its reply is kept.
    pub lane: crate::subject::Subject,
    pub id: String,
    /// The reply subject of its sends (every attempt's).
    pub reply_subject: String,
    /// The signatures of its sends a reply may be bound to.
    pub sigs: Vec<String>,
    /// Why it was given up, and when.
    pub why: String,
    pub at: Instant,
    pub until: Instant,
}

/// Messages given up whose late reply is awaited, by reply subject (oldest first in
/// `order`), and the replies that came for them, in a channel as a route's: bounded, a
/// flood dropped.
pub struct Late {
    awaited: Mutex<(HashMap<String, GivenUp>, VecDeque<String>)>,
    tx: Sender<nats::Message>,
    /// The replies to awaited messages, as they come: for the `late replies` process.
    pub messages: Receiver<nats::Message>,
}

impl Default for Late {
    fn default() -> Late {
        let (tx, messages) = crossbeam_channel::bounded(ROUTE_DEPTH);
        Late {
            awaited: Mutex::default(),
            tx,
            messages,
        }
    }
}

impl Late {
    fn table(&self) -> std::sync::MutexGuard<'_, (HashMap<String, GivenUp>, VecDeque<String>)> {
        self.awaited.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Awaits a late reply to `given_up`; if [`LATE_AWAITED`] are awaited already, the
    /// longest awaited is let go, and returned.
    pub fn awaits(&self, given_up: GivenUp) -> Option<GivenUp> {
        let mut table = self.table();
        let (awaited, order) = &mut *table;
        let subject = given_up.reply_subject.clone();
        if awaited.insert(subject.clone(), given_up).is_none() {
            order.push_back(subject);
        }
        if awaited.len() <= LATE_AWAITED {
            return None;
        }
        // `order` may name ones answered since: passed over.
        while let Some(oldest) = order.pop_front() {
            if let Some(gone) = awaited.remove(&oldest) {
                return Some(gone);
            }
        }
        None
    }

    /// Whether `m` answers an awaited message: then it is handed on (a flood dropped).
    fn takes(&self, m: &nats::Message) -> bool {
        let table = self.table();
        if table.0.is_empty() || !table.0.contains_key(&m.subject) {
            return false;
        }
        let _ = self.tx.try_send(m.clone());
        true
    }

    /// Puts `m` back, for the process to take again after its restart (it could not keep
    /// it): whether there was room.
    pub fn requeue(&self, m: nats::Message) -> bool {
        self.tx.try_send(m).is_ok()
    }

    /// What is awaited on `reply_subject`, if anything.
    pub fn get(&self, reply_subject: &str) -> Option<GivenUp> {
        self.table().0.get(reply_subject).cloned()
    }

    /// The reply on `reply_subject` came and was kept: no longer awaited.
    pub fn answered(&self, reply_subject: &str) {
        self.table().0.remove(reply_subject);
    }

    /// Lets go of those awaited past their time (returned), and says until when the next
    /// one is awaited: none, nothing is awaited.
    pub fn expire(&self, now: Instant) -> (Vec<GivenUp>, Option<Instant>) {
        let mut table = self.table();
        let (awaited, order) = &mut *table;
        let over: Vec<String> = awaited
            .iter()
            .filter(|(_, g)| g.until <= now)
            .map(|(s, _)| s.clone())
            .collect();
        let gone = over.iter().filter_map(|s| awaited.remove(s)).collect();
        order.retain(|s| awaited.contains_key(s));
        if awaited.is_empty() {
            // Its memory too: a fan-out's worth may have been awaited.
            (*awaited, *order) = (HashMap::new(), VecDeque::new());
        }
        (gone, awaited.values().map(|g| g.until).min())
    }

    /// How many are awaited.
    pub fn len(&self) -> usize {
        self.table().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table().0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given_up(n: usize, until: Instant) -> GivenUp {
        GivenUp {
            lane: crate::subject::Subject::parse("ship1.CommandACK.CLICommand").unwrap(),
            id: format!("central-{n}"),
            reply_subject: format!("_INBOX.central.x.t.{n}"),
            sigs: vec!["sig".into()],
            why: "no ACK".into(),
            at: Instant::now(),
            until,
        }
    }

    #[test]
    fn the_longest_awaited_is_let_go_past_the_bound_and_the_rest_expire_in_their_time() {
        let late = Late::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        for n in 0..LATE_AWAITED {
            assert!(late.awaits(given_up(n, later)).is_none());
        }
        // Answered: out of the count, and not the one let go next.
        late.answered("_INBOX.central.x.t.0");
        assert!(late.awaits(given_up(LATE_AWAITED, later)).is_none());
        let gone = late
            .awaits(given_up(LATE_AWAITED + 1, now))
            .expect("over the bound");
        assert_eq!(gone.id, "central-1");
        assert_eq!(late.len(), LATE_AWAITED);
        assert!(late.get("_INBOX.central.x.t.1").is_none());
        assert!(late.get("_INBOX.central.x.t.2").is_some());
        // Expired: the one whose time is over, and the next time is the rest's.
        let (expired, next) = late.expire(now + Duration::from_secs(1));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].id, format!("central-{}", LATE_AWAITED + 1));
        assert_eq!(next, Some(later));
        let (expired, next) = late.expire(later);
        assert_eq!((expired.len(), next), (LATE_AWAITED - 1, None));
        assert_eq!(late.len(), 0);
    }
}
