//! Retrying: the pause between attempts ([`backoff`], for the broker link, the supervisor's
//! restarts and the publisher), and the delivery rules of one message ([`Rules`]) as a
//! state machine without I/O and without a clock of its own.
//!
//! The rules are what an operator reads in the seed's README and in `--help`: a message is
//! tried once, then `retries` more times, or, with a time to live, until `accepted + ttl`
//! whatever the count; between attempts a pause that doubles up to 30 s (60 s for a message
//! with a time to live: one that may wait a day need not knock every 30 s); an attempt cut
//! short by our own broker link dropping is the link's failure, not the destination's, and
//! is not counted. Kept apart from the publisher (which publishes, waits and reads the
//! clock) so they are tested in milliseconds with a clock the test sets.

use crate::message::Message;
use std::time::Duration;

/// The pause before attempt `attempt + 1`: 100 ms doubling per attempt, at most `cap`, plus
/// up to a quarter more so that many nodes retrying after one outage do not knock together.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let jitter = (crate::files::unix_millis() ^ u64::from(std::process::id())) % 1000;
    backoff_with(attempt, cap, jitter)
}

/// [`backoff`] with its jitter given, in thousandths of a quarter of the pause.
pub fn backoff_with(attempt: u32, cap: Duration, jitter: u64) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(16));
    let d = base.min(cap);
    d + d.mul_f64((jitter % 1000) as f64 / 4000.0)
}

/// What the publisher does next with a message whose attempt failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Try again as soon as the link is back: the attempt was not counted.
    Again,
    /// Pause this long (or until the destination says Hello), then try again.
    Pause(Duration),
    /// Give up: why, for failed-messages.txt and the error report.
    GiveUp(String),
}

/// The delivery rules of one message.
#[derive(Debug)]
pub struct Rules {
    /// Attempts allowed, without a time to live.
    attempts: u32,
    /// With a time to live: tried until then (ms since the epoch), whatever the count.
    expires: Option<u64>,
    /// Attempts made (counted) so far.
    attempt: u32,
    /// The jitter of this message's pauses (see [`backoff_with`]).
    jitter: u64,
}

impl Rules {
    /// The rules for `message`, accepted at `accepted` (ms since the epoch, in the frame
    /// the `now` of [`Rules::failed`] is read in: see [`crate::clock`]), with the node's
    /// defaults for what the message does not say.
    pub fn new(
        message: &Message,
        accepted: u64,
        default_retries: u32,
        default_ttl: Option<u64>,
        jitter: u64,
    ) -> Rules {
        let ttl = message.ttl.or(default_ttl);
        Rules {
            attempts: message.retries.unwrap_or(default_retries).saturating_add(1),
            expires: ttl.map(|t| accepted.saturating_add(t.saturating_mul(1000))),
            attempt: 0,
            jitter,
        }
    }

    /// Attempts made so far (kept while the message waits without a thread).
    pub fn made(&self) -> u32 {
        self.attempt
    }

    /// Takes up a message whose `made` attempts an earlier publisher counted.
    pub fn resumed(mut self, made: u32) -> Rules {
        self.attempt = made;
        self
    }

    /// Whether its time to live has run out at `now` (never, without one).
    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }

    /// An attempt begins: its number, from 1.
    pub fn attempt(&mut self) -> u32 {
        self.attempt += 1;
        self.attempt
    }

    /// The attempt failed (`why`), at `now` (ms since the epoch); `link_dropped` if our
    /// own broker link went down meanwhile.
    pub fn failed(&mut self, why: &str, link_dropped: bool, now: u64) -> Next {
        if link_dropped {
            self.attempt -= 1;
            return Next::Again;
        }
        let spent = match self.expires {
            Some(at) => now >= at,
            None => self.attempt >= self.attempts,
        };
        if spent {
            let because = match self.expires {
                Some(_) => format!(
                    "its time to live ran out after {} attempt{}",
                    self.attempt,
                    if self.attempt == 1 { "" } else { "s" }
                ),
                None if self.attempt == 1 => "its one attempt failed".to_string(),
                None => format!("{} attempts failed", self.attempt),
            };
            return Next::GiveUp(format!("{because}; last: {why}"));
        }
        let cap = Duration::from_secs(if self.expires.is_some() { 60 } else { 30 });
        Next::Pause(backoff_with(self.attempt, cap, self.jitter))
    }

    /// How far along it is, for the status page: "/4" of four attempts, or the time to
    /// live left.
    pub fn describe(&self, now: u64) -> String {
        match self.expires {
            Some(at) => format!(" (time to live left {}s)", at.saturating_sub(now) / 1000),
            None => format!("/{}", self.attempts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Kind;

    fn message(retries: Option<u32>, ttl: Option<u64>) -> Message {
        Message {
            timeout: Some(1),
            retries,
            ttl,
            ..Message::new("ship1", Kind::CommandAck, "CLICommand", vec!["true".into()])
        }
    }

    /// Runs the rules against a destination that never answers, each attempt taking
    /// `timeout` ms, from `start`: the attempts made and when it gave up (or None by
    /// `until`).
    fn never_answered(
        rules: &mut Rules,
        start: u64,
        timeout: u64,
        until: u64,
    ) -> (u32, Option<u64>) {
        let mut now = start;
        loop {
            let n = rules.attempt();
            now += timeout;
            match rules.failed("no ACK", false, now) {
                Next::GiveUp(_) => return (n, Some(now)),
                Next::Pause(p) => now += p.as_millis() as u64,
                Next::Again => unreachable!(),
            }
            if now >= until {
                return (n, None);
            }
        }
    }

    #[test]
    fn retries_are_counted_after_the_first_attempt() {
        let mut rules = Rules::new(&message(Some(2), None), 0, 3, None, 0);
        let (attempts, gave_up) = never_answered(&mut rules, 0, 1000, u64::MAX);
        assert_eq!(attempts, 3);
        assert!(gave_up.is_some());
        // The node's default when the message says nothing.
        let mut rules = Rules::new(&message(None, None), 0, 3, None, 0);
        assert_eq!(never_answered(&mut rules, 0, 1000, u64::MAX).0, 4);
    }

    #[test]
    fn a_time_to_live_outlasts_the_retries_and_ends_on_time() {
        // retries 0, ttl 600 s: tried for ten minutes, not once.
        let start = 1_000_000;
        let mut rules = Rules::new(&message(Some(0), Some(600)), start, 3, None, 0);
        let (_, gave_up) = never_answered(&mut rules, start, 1000, u64::MAX);
        let gave_up = gave_up.expect("gives up");
        assert!(gave_up >= start + 600_000, "gave up early, at {gave_up}");
        // The last pause is at most a minute (plus jitter) and one attempt.
        assert!(
            gave_up < start + 600_000 + 76_000,
            "gave up late, at {gave_up}"
        );
        // Pauses grow to a minute: a couple of dozen attempts in two minutes, not hundreds.
        let mut rules = Rules::new(&message(Some(0), Some(600)), start, 3, None, 999);
        let (in_two_minutes, _) = never_answered(&mut rules, start, 1000, start + 120_000);
        assert!((4..40).contains(&in_two_minutes), "{in_two_minutes}");
        // The node's default time to live applies too.
        let mut rules = Rules::new(&message(None, None), start, 3, Some(2), 0);
        let (_, gave_up) = never_answered(&mut rules, start, 500, u64::MAX);
        assert!(gave_up.unwrap() >= start + 2000);
    }

    #[test]
    fn pauses_double_up_to_their_cap() {
        let mut rules = Rules::new(&message(Some(100), None), 0, 3, None, 0);
        let mut pauses = Vec::new();
        for _ in 0..12 {
            rules.attempt();
            match rules.failed("no ACK", false, 0) {
                Next::Pause(p) => pauses.push(p.as_millis()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(&pauses[..4], [200, 400, 800, 1600]);
        assert_eq!(*pauses.last().unwrap(), 30_000, "capped at 30 s");
        let ttl = |jitter| {
            let mut rules = Rules::new(&message(None, Some(86_400)), 0, 3, None, jitter);
            (0..12)
                .map(|_| {
                    rules.attempt();
                    rules.failed("no ACK", false, 0)
                })
                .last()
                .unwrap()
        };
        assert_eq!(
            ttl(0),
            Next::Pause(Duration::from_secs(60)),
            "60 s with a ttl"
        );
        assert_eq!(
            ttl(999),
            Next::Pause(Duration::from_millis(74_985)),
            "plus a quarter at most"
        );
    }

    #[test]
    fn an_attempt_cut_short_by_our_own_link_is_not_counted() {
        let mut rules = Rules::new(&message(Some(0), None), 0, 3, None, 0);
        assert_eq!(rules.attempt(), 1);
        assert_eq!(rules.failed("link down", true, 0), Next::Again);
        assert_eq!(rules.attempt(), 1, "the same attempt again");
        match rules.failed("no ACK", false, 0) {
            Next::GiveUp(why) => assert_eq!(why, "its one attempt failed; last: no ACK"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_status_page_says_how_far_along() {
        let rules = Rules::new(&message(Some(3), None), 0, 3, None, 0);
        assert_eq!(rules.describe(0), "/4");
        let rules = Rules::new(&message(None, Some(60)), 10_000, 3, None, 0);
        assert_eq!(rules.describe(40_000), " (time to live left 30s)");
    }
}
