//! What the supervisor does about a process that failed: when to start it again, and
//! whether central hears of it (see "When a process fails" in [the supervisor's
//! docs](super)). A rule over a process's failures so far and how long it ran, with no
//! thread or clock inside, so that it is tested alone.

use std::time::Duration;

/// The longest pause before a process that failed, and can be helped by a restart, is
/// started again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long a process whose failure no restart can fix waits before it is tried again.
pub const FATAL_RESTART: Duration = Duration::from_secs(600);

/// A process that ran this long before it failed was healthy: its failures in a row start
/// over.
const HEALTHY: Duration = Duration::from_secs(60);

/// What the supervisor does about a process that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Restart {
    /// Start it again after this.
    pub(super) after: Duration,
    /// Report it to central ([`Node::report_error`](crate::node::Node::report_error));
    /// otherwise it is only logged here.
    pub(super) report: bool,
}

/// One process's failures, kept across its restarts: what the supervisor's decisions
/// depend on.
#[derive(Debug, Default)]
pub(super) struct Failures {
    /// Failures in a row, without a healthy run in between; sets the backoff.
    in_a_row: u32,
    /// A fatal failure in this row has been reported.
    fatal_reported: bool,
}

impl Failures {
    /// The decision about a process that failed (`fatal`: no restart can fix it) after
    /// running for `ran`. See "When a process fails" in the supervisor's module docs.
    pub(super) fn on_failure(&mut self, fatal: bool, ran: Duration) -> Restart {
        if ran > HEALTHY {
            *self = Failures::default();
        }
        self.in_a_row += 1;
        if fatal {
            let report = !self.fatal_reported;
            self.fatal_reported = true;
            return Restart {
                after: FATAL_RESTART,
                report,
            };
        }
        Restart {
            after: crate::retry::backoff(self.in_a_row, MAX_BACKOFF),
            report: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOMENT: Duration = Duration::from_millis(10);

    #[test]
    fn a_failure_a_restart_can_help_is_restarted_sooner_then_later_and_always_reported() {
        let mut f = Failures::default();
        let mut last = Duration::ZERO;
        for n in 1..=12 {
            let r = f.on_failure(false, MOMENT);
            assert!(r.report, "failure {n} not reported");
            assert!(
                r.after >= last.min(MAX_BACKOFF),
                "failure {n}: {r:?} after {last:?}"
            );
            assert!(
                r.after <= MAX_BACKOFF + MAX_BACKOFF / 4,
                "failure {n}: {r:?}"
            );
            last = r.after;
        }
        assert!(
            last >= MAX_BACKOFF,
            "never reached the longest pause: {last:?}"
        );
        // A minute of healthy running: the next failure starts from the shortest pause.
        let r = f.on_failure(false, HEALTHY + MOMENT);
        assert!(r.after < Duration::from_secs(1), "{r:?}");
    }

    #[test]
    fn a_fatal_failure_waits_long_and_is_reported_once_until_the_process_runs_well_again() {
        let mut f = Failures::default();
        let first = f.on_failure(true, MOMENT);
        assert_eq!(
            first,
            Restart {
                after: FATAL_RESTART,
                report: true
            }
        );
        // Failing at once after each try: no loop, and no report again.
        for _ in 0..5 {
            assert_eq!(
                f.on_failure(true, MOMENT),
                Restart {
                    after: FATAL_RESTART,
                    report: false
                }
            );
        }
        // A failure a restart can help in between is its own, and reported.
        assert!(f.on_failure(false, MOMENT).report);
        assert!(!f.on_failure(true, MOMENT).report);
        // After a healthy run, a fatal failure is news again.
        assert!(f.on_failure(true, HEALTHY + MOMENT).report);
    }
}
