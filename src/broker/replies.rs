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
//! ([`crate::process::publisher::LateReplies`]). That process keeps the table in the data
//! folder too, so that a restart of this node does not drop it; the inboxes of its earlier
//! runs that the table still names are listened on again ([`super::Broker::listen_earlier`]).

use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How many messages a route holds before it drops what comes: a publisher waits for one
/// answer at a time (late answers to its earlier attempts beside it).
pub const ROUTE_DEPTH: usize = 64;

type Routes = Arc<Mutex<HashMap<String, Sender<nats::Message>>>>;

/// The node's reply subscription and the routes taken from it.
pub(super) struct Replies {
    conn: nats::Connection,
    pub(super) inbox: String,
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
                return true; // a late reply (see `Late`)
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

/// How many messages given up a node awaits late replies for at once, and how many of
/// them may go to one destination (a node that takes its messages and never answers cannot
/// take every place): past either, a message given up is not awaited (and its give-up
/// says so). Not the longest awaited let go instead: those have run longest, and are the
/// likeliest to answer next (a burst of long commands to one node).
pub const LATE_AWAITED: usize = 1024;
pub const LATE_AWAITED_EACH_NODE: usize = 256;

/// How many replies to one awaited message wait for the `late replies` process at once: a
/// flood on one reply subject holds no more of the queue than this (each a signature check
/// or more), and the queue ([`LATE_QUEUED`]) is shared.
const LATE_QUEUED_EACH: usize = 4;
const LATE_QUEUED: usize = 256;
/// ... and at most this many bytes of them (replies of a megabyte each, forged or not).
const LATE_QUEUED_BYTES: usize = 4 << 20;

/// How long a reply is awaited after its message was given up: a command may run on for
/// its `methodTimeout`, then this long more (a reply held in a link as the message was).
pub const LATE_FOR: Duration = Duration::from_secs(3600);
/// ... and at most this long (a command with no limit on its run).
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

/// One awaited message: how many of its replies wait in the queue, and whether a reply
/// that did not answer it was said in the log (once: a flood is not a flood of lines).
struct Awaited {
    given_up: GivenUp,
    queued: usize,
    said: bool,
    /// When its node was last asked again for its reply in this run (`ReplyAgain`), or
    /// given up: none, read back at this start and not asked yet.
    asked: Option<Instant>,
    /// The signatures of the last asks ([`ASKS_KEPT`]): their answer is bound to one.
    asks: Vec<String>,
    /// A reply on its subject was dropped (the queue full: a burst of answers to asks, or
    /// a flood) since its last ask: the answer may have been it, so it is asked again.
    dropped: bool,
    /// Read back at this start, from what an earlier run kept on disk: its reply may be
    /// kept already (that run stopped between keeping it and writing the table).
    read_back: bool,
}

/// How many asks' signatures an awaited message keeps, besides its sends': answers to
/// older asks are not taken (a later ask gets the same answer).
pub const ASKS_KEPT: usize = 4;

/// Where an awaited message stands with its asks, for [`Late::asks_due`] to decide on.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    /// When its node was last asked for it in this run, or it was given up: none, read
    /// back at this start and not asked yet.
    pub at: Option<Instant>,
    /// A reply that came for it was dropped since ([`Awaited::dropped`]).
    pub dropped: bool,
}

/// A message given up whose node is to be asked again for its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    pub lane: crate::subject::Subject,
    pub id: String,
    /// Where the answer goes: a reply subject the message is awaited on.
    pub reply_subject: String,
}

/// Messages given up whose late reply is awaited, and the replies that came for them, in
/// a queue as a route's: bounded, a flood dropped.
pub struct Late {
    /// The awaited, by reply subject, and the bytes of the replies queued.
    table: Mutex<(HashMap<String, Awaited>, usize)>,
    tx: Sender<(Instant, nats::Message)>,
    /// The replies to awaited messages, with when each came: for the `late replies`
    /// process.
    pub messages: Receiver<(Instant, nats::Message)>,
    /// Rung when a message is awaited: the process says how many, and its next deadline
    /// may be sooner.
    added_tx: Sender<()>,
    pub added: Receiver<()>,
    /// Counts the table's changes: the process keeps it on disk when it moved.
    changes: AtomicU64,
}

impl Default for Late {
    fn default() -> Late {
        let (tx, messages) = crossbeam_channel::bounded(LATE_QUEUED);
        let (added_tx, added) = crossbeam_channel::bounded(1);
        Late {
            table: Mutex::default(),
            tx,
            messages,
            added_tx,
            added,
            changes: AtomicU64::new(0),
        }
    }
}

/// Why a message given up is not awaited: no place left.
#[derive(Debug, PartialEq, Eq)]
pub enum NotAwaited {
    /// [`LATE_AWAITED_EACH_NODE`] of its node are awaited already.
    NodeFull,
    /// [`LATE_AWAITED`] are.
    Full,
}

impl std::fmt::Display for NotAwaited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotAwaited::NodeFull => write!(
                f,
                "the late replies of {LATE_AWAITED_EACH_NODE} messages to that node are awaited already"
            ),
            NotAwaited::Full => write!(
                f,
                "the late replies of {LATE_AWAITED} messages are awaited already"
            ),
        }
    }
}

impl Late {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Awaited>, usize)> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Awaits a late reply to `given_up`, if there is a place for it.
    pub fn awaits(&self, given_up: GivenUp) -> Result<(), NotAwaited> {
        self.await_asked(given_up, Some(Instant::now()))
    }

    /// Awaits again what an earlier run awaited: its node is asked again for the reply at
    /// once ([`Late::asks_due`]), which may have come while this node was down.
    pub fn awaits_again(&self, given_up: GivenUp) -> Result<(), NotAwaited> {
        self.await_asked(given_up, None)
    }

    fn await_asked(&self, given_up: GivenUp, asked: Option<Instant>) -> Result<(), NotAwaited> {
        let mut lock = self.lock();
        let table = &mut lock.0;
        let node = &given_up.lane.node;
        if table.len() >= LATE_AWAITED {
            return Err(NotAwaited::Full);
        }
        let of_node = table.values().filter(|a| a.given_up.lane.node == *node);
        if of_node.count() >= LATE_AWAITED_EACH_NODE {
            return Err(NotAwaited::NodeFull);
        }
        let awaited = Awaited {
            given_up,
            queued: 0,
            said: false,
            asked,
            asks: Vec::new(),
            dropped: false,
            read_back: asked.is_none(),
        };
        table.insert(awaited.given_up.reply_subject.clone(), awaited);
        self.changed();
        let _ = self.added_tx.try_send(());
        Ok(())
    }

    /// Whether `m` answers an awaited message: then it is queued for the process (past
    /// [`LATE_QUEUED_EACH`] of its own, or a full queue, dropped).
    pub fn takes(&self, m: &nats::Message) -> bool {
        self.queue(None, m, true).is_some()
    }

    /// Puts `m`, which came at `came`, back, for the process to take again after its
    /// restart (it could not keep it): whether it is.
    pub fn requeue(&self, came: Instant, m: &nats::Message) -> bool {
        self.queue(Some(came), m, false) == Some(true)
    }

    /// Queues `m` if it answers an awaited message (None if not): whether it is queued,
    /// within the bounds of a message's share and the queue's bytes if `bounded`. It came
    /// at `came`, or now (read only for a reply awaited: every reply on the node's inbox
    /// passes here, on the client's reader thread).
    fn queue(&self, came: Option<Instant>, m: &nats::Message, bounded: bool) -> Option<bool> {
        let mut lock = self.lock();
        let (table, bytes) = &mut *lock;
        let awaited = table.get_mut(&m.subject)?;
        let came = came.unwrap_or_else(Instant::now);
        let within =
            awaited.queued < LATE_QUEUED_EACH && *bytes + m.data.len() <= LATE_QUEUED_BYTES;
        let queued = (within || !bounded) && self.tx.try_send((came, m.clone())).is_ok();
        if queued {
            awaited.queued += 1;
            *bytes += m.data.len();
        } else {
            awaited.dropped = true;
        }
        Some(queued)
    }

    /// Reply `m` is taken from the queue: what it must answer, if that is still awaited.
    pub fn taken(&self, m: &nats::Message) -> Option<GivenUp> {
        let mut lock = self.lock();
        let (table, bytes) = &mut *lock;
        *bytes = bytes.saturating_sub(m.data.len());
        let awaited = table.get_mut(&m.subject)?;
        awaited.queued = awaited.queued.saturating_sub(1);
        let mut given_up = awaited.given_up.clone();
        given_up.sigs.extend(awaited.asks.iter().cloned());
        Some(given_up)
    }

    /// The messages whose node is to be asked again for their reply now, one ask each
    /// (a message may be awaited on several subjects), as many as the queue has places
    /// free for their answers (the rest are due at the next look): `due` says, of a node
    /// and where one of its messages stands ([`Asked`]), whether it is.
    pub fn asks_due(&self, mut due: impl FnMut(&str, Asked) -> bool) -> Vec<Ask> {
        let room = LATE_QUEUED.saturating_sub(self.messages.len());
        let lock = self.lock();
        let mut ids = std::collections::HashSet::new();
        let mut asks = Vec::new();
        for (subject, a) in &lock.0 {
            if asks.len() >= room {
                break;
            }
            let given_up = &a.given_up;
            let asked = Asked {
                at: a.asked,
                dropped: a.dropped,
            };
            if due(&given_up.lane.node, asked) && ids.insert(given_up.id.as_str()) {
                asks.push(Ask {
                    lane: given_up.lane.clone(),
                    id: given_up.id.clone(),
                    reply_subject: subject.clone(),
                });
            }
        }
        asks
    }

    /// `ask` was sent at `at`, signed `sig`: an answer bound to it (on its reply subject)
    /// answers the message, and none of the message's subjects is asked again until
    /// [`Late::asks_due`] says so.
    pub fn asked(&self, ask: &Ask, sig: String, at: Instant) {
        let mut lock = self.lock();
        for (subject, a) in lock.0.iter_mut() {
            if a.given_up.id != ask.id {
                continue;
            }
            a.asked = Some(at);
            a.dropped = false;
            if *subject == ask.reply_subject {
                if a.asks.len() >= ASKS_KEPT {
                    a.asks.remove(0);
                }
                a.asks.push(sig.clone());
            }
        }
    }

    /// Whether the message awaited on `reply_subject` was read back at this start (see
    /// [`Awaited::read_back`]).
    pub fn read_back(&self, reply_subject: &str) -> bool {
        self.lock()
            .0
            .get(reply_subject)
            .is_some_and(|a| a.read_back)
    }

    /// A reply on `reply_subject` did not answer its message: whether that is the first
    /// such (to be said in the log).
    pub fn first_not_an_answer(&self, reply_subject: &str) -> bool {
        let mut lock = self.lock();
        lock.0
            .get_mut(reply_subject)
            .is_some_and(|a| !std::mem::replace(&mut a.said, true))
    }

    /// The reply on `reply_subject` came and was kept: its message is no longer awaited,
    /// on that subject nor on any other (its earlier publishers' sends).
    pub fn answered(&self, reply_subject: &str) {
        let mut lock = self.lock();
        let table = &mut lock.0;
        if let Some(answered) = table.remove(reply_subject) {
            let id = answered.given_up.id;
            table.retain(|_, a| a.given_up.id != id);
            self.changed();
        }
    }

    /// Lets go of those awaited past their time (returned), and says until when the next
    /// one is awaited: none, nothing is awaited.
    pub fn expire(&self, now: Instant) -> (Vec<GivenUp>, Option<Instant>) {
        let mut lock = self.lock();
        let table = &mut lock.0;
        let over: Vec<String> = table
            .iter()
            .filter(|(_, a)| a.given_up.until <= now)
            .map(|(s, _)| s.clone())
            .collect();
        let gone: Vec<GivenUp> = over
            .iter()
            .filter_map(|s| table.remove(s))
            .map(|a| a.given_up)
            .collect();
        if !gone.is_empty() {
            self.changed();
        }
        if table.is_empty() {
            // Its memory too: a fan-out's worth may have been awaited.
            *table = HashMap::new();
        }
        let next = table.values().map(|a| a.given_up.until).min();
        (gone, next)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// How many times the table changed: what is on disk is as of one of these.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// What is awaited, to keep on disk (see [`crate::process::publisher::LateReplies`]).
    pub fn awaited(&self) -> Vec<GivenUp> {
        let lock = self.lock();
        let mut all: Vec<GivenUp> = lock.0.values().map(|a| a.given_up.clone()).collect();
        all.sort_by_key(|g| g.at);
        all
    }

    /// The inboxes the awaited reply subjects are under (`_INBOX.<node>.<nuid>`): this
    /// run's, and those of earlier runs of this node, from the table kept on disk.
    pub fn inboxes(&self) -> std::collections::HashSet<String> {
        let lock = self.lock();
        lock.0
            .keys()
            .filter_map(|s| inbox_of(s))
            .map(str::to_string)
            .collect()
    }

    /// How many are awaited.
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().0.is_empty()
    }
}

/// The inbox a reply subject is under: `_INBOX.<node>.<nuid>` of
/// `_INBOX.<node>.<nuid>.<token>.<n>`, the shape [`Replies`] gives them (none for another).
pub fn inbox_of(reply_subject: &str) -> Option<&str> {
    let tokens: Vec<&str> = reply_subject.split('.').collect();
    let well_formed = tokens.len() == 5
        && tokens[0] == "_INBOX"
        && tokens.iter().all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !well_formed {
        return None;
    }
    let end = tokens[..3].iter().map(|t| t.len()).sum::<usize>() + 2;
    Some(&reply_subject[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(subject: &str) -> nats::Message {
        nats::Message::new(subject, None, "x", None)
    }

    fn given_up(node: &str, n: usize, until: Instant) -> GivenUp {
        GivenUp {
            lane: crate::subject::Subject::parse(&format!("{node}.CommandACK.CLICommand")).unwrap(),
            id: format!("{node}-{n}"),
            reply_subject: format!("_INBOX.central.x.{node}.{n}"),
            sigs: vec!["sig".into()],
            why: "no ACK".into(),
            at: Instant::now(),
            until,
        }
    }

    #[test]
    fn past_a_node_s_share_or_the_table_s_bound_nothing_more_is_awaited_until_places_free() {
        let late = Late::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        // One node's share: past it, that node's next is not awaited; another node's is.
        for n in 0..LATE_AWAITED_EACH_NODE {
            assert_eq!(late.awaits(given_up("ship1", n, later)), Ok(()));
        }
        assert_eq!(
            late.awaits(given_up("ship1", 9999, later)),
            Err(NotAwaited::NodeFull)
        );
        assert!(
            late.taken(&on("_INBOX.central.x.ship1.0")).is_some(),
            "kept"
        );
        // One message awaited on two subjects (two publishers sent it): answered on one,
        // it is awaited on neither.
        let mut again = given_up("ship2", 0, later);
        again.reply_subject = "_INBOX.central.y.ship2.0".into();
        assert_eq!(late.awaits(given_up("ship2", 0, later)), Ok(()));
        assert_eq!(late.awaits(again), Ok(()));
        late.answered("_INBOX.central.y.ship2.0");
        assert!(late.taken(&on("_INBOX.central.x.ship2.0")).is_none());
        // The rest of the table, each node within its share.
        let mut n = 0;
        while late.len() < LATE_AWAITED {
            let node = format!("node{}", n % 20);
            assert_eq!(late.awaits(given_up(&node, n, later)), Ok(()));
            n += 1;
        }
        // Full; answered, one frees a place.
        assert_eq!(
            late.awaits(given_up("node99", 0, later)),
            Err(NotAwaited::Full)
        );
        late.answered("_INBOX.central.x.ship1.1");
        assert_eq!(late.awaits(given_up("node99", 0, later)), Ok(()));
        assert_eq!(
            late.awaits(given_up("node99", 1, later)),
            Err(NotAwaited::Full)
        );
        // Expired: the rest in their time, and then nothing is awaited.
        let (expired, next) = late.expire(now + Duration::from_secs(1));
        assert_eq!((expired.len(), next), (0, Some(later)));
        let (expired, next) = late.expire(later);
        assert_eq!((expired.len(), next), (LATE_AWAITED, None));
        assert!(late.is_empty());
    }

    #[test]
    fn a_reply_subject_s_inbox_is_only_that_of_the_shape_this_node_gives_them() {
        assert_eq!(
            inbox_of("_INBOX.central.AbC9.tok_1.17"),
            Some("_INBOX.central.AbC9")
        );
        for not in [
            "_INBOX.central.AbC9.tok.17.1",
            "_INBOX.central.AbC9.tok",
            "_INBOX.central.*.tok.1",
            "_INBOX.central.>",
            "_INBOX.central..tok.1",
            "_INBOXX.central.AbC9.tok.1",
            "_INBOX.cent ral.AbC9.tok.1",
        ] {
            assert_eq!(inbox_of(not), None, "{not}");
        }
    }

    #[test]
    fn a_flood_on_one_reply_subject_holds_a_few_places_of_the_queue_and_is_said_once() {
        let late = Late::default();
        let later = Instant::now() + Duration::from_secs(60);
        late.awaits(given_up("ship1", 1, later)).unwrap();
        late.awaits(given_up("ship2", 2, later)).unwrap();
        for _ in 0..1000 {
            assert!(late.takes(&on("_INBOX.central.x.ship1.1")));
        }
        assert!(late.takes(&on("_INBOX.central.x.ship2.2")));
        assert!(!late.takes(&on("_INBOX.central.x.ship2.3")), "not awaited");
        assert_eq!(late.messages.len(), LATE_QUEUED_EACH + 1);
        // Taken from the queue: room for one more of its own.
        late.messages.recv().unwrap();
        assert!(late.taken(&on("_INBOX.central.x.ship1.1")).is_some());
        late.takes(&on("_INBOX.central.x.ship1.1"));
        assert_eq!(late.messages.len(), LATE_QUEUED_EACH + 1);
        assert!(late.first_not_an_answer("_INBOX.central.x.ship1.1"));
        assert!(!late.first_not_an_answer("_INBOX.central.x.ship1.1"));
    }

    #[test]
    fn an_answer_dropped_from_a_full_queue_is_asked_for_again_and_asks_wait_for_room_in_it() {
        let late = Late::default();
        let later = Instant::now() + Duration::from_secs(60);
        let subject = |node: &str, n: usize| format!("_INBOX.central.x.{node}.{n}");
        for n in 0..LATE_QUEUED {
            let node = format!("node{}", n % 4);
            late.awaits_again(given_up(&node, n, later)).unwrap();
        }
        late.awaits(given_up("ship9", 9, later)).unwrap();
        assert!(late.read_back(&subject("node0", 0)));
        assert!(
            !late.read_back(&subject("ship9", 9)),
            "given up in this run"
        );
        // As many asks as the queue has places for their answers.
        assert_eq!(late.asks_due(|_, _| true).len(), LATE_QUEUED);
        for n in 0..LATE_QUEUED {
            assert!(late.takes(&on(&subject(&format!("node{}", n % 4), n))));
        }
        assert!(late.asks_due(|_, _| true).is_empty(), "no room");
        // An answer that finds the queue full is dropped: once there is room, its
        // message is asked for again, and only until it is.
        assert!(late.takes(&on(&subject("ship9", 9))));
        assert!(late.messages.try_recv().is_ok());
        assert!(late.taken(&on(&subject("node0", 0))).is_some());
        let due = late.asks_due(|_, a| a.dropped);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].id, "ship9-9");
        late.asked(&due[0], "ask".into(), Instant::now());
        assert!(late.asks_due(|_, a| a.dropped).is_empty());
    }

    #[test]
    fn a_message_is_asked_for_again_once_however_many_subjects_await_it_and_its_answer_may_be_bound_to_the_last_asks(
    ) {
        let late = Late::default();
        let later = Instant::now() + Duration::from_secs(60);
        // Given up here: not due until `due` says so. Read back at a start: due at once.
        late.awaits(given_up("ship1", 1, later)).unwrap();
        let mut again = given_up("ship1", 1, later);
        again.reply_subject = "_INBOX.central.y.ship1.1".into();
        late.awaits_again(again).unwrap();
        late.awaits_again(given_up("ship2", 2, later)).unwrap();
        let mut asks = late.asks_due(|_, a| a.at.is_none());
        asks.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<&str> = asks.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["ship1-1", "ship2-2"]);
        assert_eq!(asks[0].reply_subject, "_INBOX.central.y.ship1.1");
        assert_eq!(late.asks_due(|_, _| true).len(), 2, "one ask a message");
        // Asked: none of its subjects is due any more; the ask's signature, on its
        // subject only, answers it beside the sends'; the last ASKS_KEPT of them.
        let at = Instant::now();
        for n in 0..ASKS_KEPT + 2 {
            late.asked(&asks[0], format!("ask{n}"), at);
        }
        let due = late.asks_due(|_, a| a.at.is_none());
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].id, "ship2-2");
        let sigs = late.taken(&on("_INBOX.central.y.ship1.1")).unwrap().sigs;
        assert_eq!(sigs, ["sig", "ask2", "ask3", "ask4", "ask5"]);
        let sigs = late.taken(&on("_INBOX.central.x.ship1.1")).unwrap().sigs;
        assert_eq!(sigs, ["sig"]);
        // What is kept on disk is the sends' signatures only: asked again after a restart.
        assert!(late.awaited().iter().all(|g| g.sigs == ["sig"]));
    }
}
