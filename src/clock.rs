//! Time as a message's time to live counts it: on the monotonic clock, not the wall clock.
//!
//! A message's `ttl` runs from its acceptance, stamped from the wall clock (`accepted`, in
//! the journal, the message log and the id). A Pi without a real-time clock boots with the
//! time it saved (or 1970), a ship away from NTP for days runs on it, and the first sync
//! sets the clock by as much: set forward by days, every message waiting with a ttl was
//! given up at the next attempt (into failed-messages.txt, undelivered); set back, kept as
//! much longer. So the publisher reads time in a steady frame ([`steady_millis`]: the wall
//! clock at the node's start, then on as the monotonic clock goes), and each batch the
//! journal stamps notes whether the wall clock was set since the last ([`stamp`]): a
//! message's `accepted` is read in the steady frame by the sequence number its batch began
//! at ([`steady_accepted`]). Only steps are noted ([`STEP_MS`], as schedules tell them: NTP
//! slews small differences). Messages an earlier run accepted are read against the wall
//! clock as it reads now, as before: what the clock did between their stamp and this
//! start is not known (so a restart between a stamp and the step that corrects it counts
//! the step, and a node that restarts days behind keeps them until its clock is set
//! right, then gives them up, as a ttl read on the wall clock always did).

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// How far the wall clock may move from the monotonic one between two stamps before it
/// counts as set (ms).
const STEP_MS: i64 = 2_000;
/// Steps kept: a clock set this often in one run is broken, and the oldest are forgotten
/// (their messages read as stamped).
const MAX_STEPS: usize = 1_024;

/// The wall clock (ms since the epoch) and the monotonic one at the start of the frame.
static START: OnceLock<(u64, Instant)> = OnceLock::new();
static FRAMES: Mutex<Frames> = Mutex::new(Frames {
    first: None,
    steps: VecDeque::new(),
});

fn start() -> (u64, Instant) {
    *START.get_or_init(|| (crate::files::unix_millis(), Instant::now()))
}

/// Now, in ms since the epoch as the wall clock read at the node's start and the monotonic
/// clock since: never set.
pub fn steady_millis() -> u64 {
    let (wall, at) = start();
    wall.saturating_add(at.elapsed().as_millis() as u64)
}

/// The wall clock now, as the `accepted` of a batch whose first message is `first_seq`,
/// noting whether the clock was set since the last stamp.
pub fn stamp(first_seq: u64) -> u64 {
    let steady = steady_millis();
    let wall = crate::files::unix_millis();
    let mut frames = FRAMES.lock().unwrap_or_else(|p| p.into_inner());
    frames.stamp(first_seq, wall, steady);
    wall
}

/// `accepted`, the stamp of message `seq`, in the frame [`now_for`] reads it in.
pub fn steady_accepted(seq: u64, accepted: u64) -> u64 {
    let frames = FRAMES.lock().unwrap_or_else(|p| p.into_inner());
    frames.accepted(seq, accepted)
}

/// Now, for message `seq`: in the steady frame ([`steady_millis`]) for this run's
/// messages, on the wall clock for an earlier run's (see the module's docs).
pub fn now_for(seq: u64) -> u64 {
    let earlier = FRAMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .earlier(seq);
    match earlier {
        true => crate::files::unix_millis(),
        false => steady_millis(),
    }
}

/// The steps the wall clock took in this run, each as the first sequence number stamped
/// after it and how far the wall clock then stood from the steady frame (ms).
struct Frames {
    /// The first sequence number this run stamped: those below are an earlier run's.
    first: Option<u64>,
    steps: VecDeque<(u64, i64)>,
}

impl Frames {
    /// A stamp at `wall` (the steady frame then at `steady`) of messages from `first_seq`
    /// on: whether the clock was set since the last.
    fn stamp(&mut self, first_seq: u64, wall: u64, steady: u64) -> bool {
        self.first.get_or_insert(first_seq);
        let shift = wall as i64 - steady as i64;
        let last = self.steps.back().map_or(0, |&(_, s)| s);
        if (shift - last).abs() < STEP_MS {
            return false;
        }
        if self.steps.len() >= MAX_STEPS {
            self.steps.pop_front();
        }
        log::warn!(
            "the clock was set {} by {} s: messages waiting with a time to live count it from their acceptance as the clock ran, not as it reads now",
            if shift > last { "forward" } else { "back" },
            (shift - last).abs() / 1000
        );
        self.steps.push_back((first_seq, shift));
        true
    }

    /// Whether message `seq` is an earlier run's.
    fn earlier(&self, seq: u64) -> bool {
        self.first.is_none_or(|first| seq < first)
    }

    /// The stamp `accepted` of message `seq` in the steady frame (an earlier run's as it
    /// is: read on the wall clock).
    fn accepted(&self, seq: u64, accepted: u64) -> u64 {
        if self.earlier(seq) {
            return accepted;
        }
        let shift = self
            .steps
            .iter()
            .rev()
            .find(|&&(first, _)| first <= seq)
            .map_or(0, |&(_, s)| s);
        accepted.saturating_add_signed(-shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn a_clock_set_forward_by_days_does_not_age_what_was_stamped_before_it() {
        let mut f = Frames {
            first: None,
            steps: VecDeque::new(),
        };
        // A Pi booted two days behind: its stamps and the steady frame agree.
        let boot = 1_000 * DAY;
        assert!(!f.stamp(1, boot, boot));
        // Ten seconds on, NTP sets the clock two days forward; messages 5 on are stamped
        // by the clock set right.
        assert!(f.stamp(5, boot + 2 * DAY + 10_000, boot + 10_000));
        // Message 1 was accepted ten seconds before message 5 in the steady frame, as the
        // clocks ran; message 5's stamp reads as the steady time it was taken at.
        assert_eq!(f.accepted(1, boot), boot);
        assert_eq!(f.accepted(5, boot + 2 * DAY + 10_000), boot + 10_000);
        assert_eq!(f.accepted(9, boot + 2 * DAY + 20_000), boot + 20_000);
        // Set back by a day later on: messages from 12 on read in the same frame again.
        assert!(f.stamp(12, boot + DAY + 30_000, boot + 30_000));
        assert_eq!(f.accepted(12, boot + DAY + 30_000), boot + 30_000);
        assert_eq!(f.accepted(9, boot + 2 * DAY + 20_000), boot + 20_000);
    }

    #[test]
    fn an_earlier_runs_messages_are_read_against_the_wall_clock_as_it_reads_now() {
        let mut f = Frames {
            first: None,
            steps: VecDeque::new(),
        };
        let boot = 1_000 * DAY;
        // Nothing stamped yet: every message is an earlier run's, read on the wall clock
        // (set forward since the start, it reads older: it is, as far as anyone knows).
        assert!(f.earlier(7));
        assert_eq!(f.accepted(7, boot), boot);
        assert!(!f.stamp(10, boot, boot));
        assert!(f.earlier(9) && !f.earlier(10));
        assert!(f.stamp(11, boot + 2 * DAY, boot + 10));
        assert_eq!(f.accepted(9, boot), boot);
        assert_eq!(f.accepted(10, boot), boot);
        assert_eq!(f.accepted(11, boot + 2 * DAY), boot + 10);
    }

    #[test]
    fn a_clock_slewed_by_ntp_is_not_a_step() {
        let mut f = Frames {
            first: None,
            steps: VecDeque::new(),
        };
        let t = 1_000 * DAY;
        assert!(!f.stamp(1, t, t));
        assert!(!f.stamp(2, t + 3_600_000 + 1_500, t + 3_600_000));
        assert!(!f.stamp(3, t + 7_200_000 - 1_500, t + 7_200_000));
        assert_eq!(f.accepted(3, 42), 42);
        // A drift that adds up to a step counts as one.
        assert!(f.stamp(4, t + 9_000_000 + 2_500, t + 9_000_000));
    }

    #[test]
    fn steps_past_the_limit_forget_the_oldest() {
        let mut f = Frames {
            first: None,
            steps: VecDeque::new(),
        };
        for i in 0..(MAX_STEPS as u64 + 10) {
            let wall = 1_000 * DAY + (i % 2) * DAY;
            f.stamp(i, wall, 1_000 * DAY);
        }
        assert_eq!(f.steps.len(), MAX_STEPS);
        assert_eq!(f.steps.front().map(|s| s.0), Some(10));
    }
}
