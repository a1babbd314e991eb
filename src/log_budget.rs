//! Limits on what senders may write into this node's logs: `errors.log` (ErrorLog) and
//! `textlog/<sender>.log` (TextLogging).
//!
//! Those logs grow with what other nodes send, trusted ones included: a ship that logs in a
//! loop could fill central's disk in minutes, and the journal, which needs that disk to take
//! anything at all, with it. So:
//!
//! - each sender has a byte budget an hour per method ([`LogLimits::bytes_per_hour`],
//!   `--maxLogBytesPerHour`); past it its messages are refused, which the sender keeps in its
//!   `failed-messages.txt`;
//! - an ErrorLog message is one line of at most [`MAX_ERROR_LINE`] bytes;
//! - each log file is rotated at [`ROTATE_AT`] bytes, keeping [`KEEP_ROTATED`] old ones, so a
//!   file family never holds more than `ROTATE_AT × (KEEP_ROTATED + 1)` bytes;
//! - below a floor of free space on the data folder's disk (`--minFreeBytesForLogs`) these
//!   logs are not written at all: the space is the journal's.

use crate::methods::Context;
use crate::methods::Outcome;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default of `--maxLogBytesPerHour`: 64 MiB per sender and method.
pub const DEFAULT_BYTES_PER_HOUR: u64 = 64 << 20;
/// Most bytes of one ErrorLog message written; the rest is cut, with a marker.
pub const MAX_ERROR_LINE: usize = 8 << 10;
/// Size at which `errors.log` or a textlog file is rotated.
pub const ROTATE_AT: u64 = 16 << 20;
/// Old files kept per log (`errors.log.1` … `errors.log.4`).
pub const KEEP_ROTATED: usize = 4;
/// Default free-space floor: this much, or [`FLOOR_PERCENT`] of the disk if that is less.
pub const DEFAULT_FLOOR: u64 = 64 << 20;
pub const FLOOR_PERCENT: u64 = 2;
/// The budget's period.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// The limits, as fields so tests can make them small.
#[derive(Debug, Clone)]
pub struct LogLimits {
    pub bytes_per_hour: u64,
    pub max_error_line: usize,
    pub rotate_at: u64,
    pub keep: usize,
    /// Free bytes to keep; `None`: [`DEFAULT_FLOOR`] or [`FLOOR_PERCENT`] of the disk.
    pub free_floor: Option<u64>,
}

impl LogLimits {
    pub fn new(bytes_per_hour: u64, free_floor: Option<u64>) -> LogLimits {
        LogLimits {
            bytes_per_hour,
            max_error_line: MAX_ERROR_LINE,
            rotate_at: ROTATE_AT,
            keep: KEEP_ROTATED,
            free_floor,
        }
    }
}

/// A sender went over its budget.
#[derive(Debug, PartialEq, Eq)]
pub struct OverBudget {
    /// What to answer the sender.
    pub why: String,
    /// True the first time this hour for this sender and method: report it then only.
    pub first: bool,
}

/// The data folder's disk has less free space than the floor kept for the journal
/// (`--minFreeBytesForLogs`): log writes, and new intake, wait until there is room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BelowFloor {
    /// The folder whose disk was looked at.
    pub dir: PathBuf,
    pub free: u64,
    pub floor: u64,
    /// The bytes of the write that would have taken the disk under the floor (0: none).
    pub writing: u64,
}

impl fmt::Display for BelowFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.writing > 0 && self.free >= self.floor {
            return write!(
                f,
                "only {} bytes free on the disk of {}: {} more would take it under the {} kept for the journal (--minFreeBytesForLogs)",
                self.free,
                self.dir.display(),
                self.writing,
                self.floor
            );
        }
        write!(
            f,
            "only {} bytes free on the disk of {}, under the {} kept for the journal (--minFreeBytesForLogs)",
            self.free,
            self.dir.display(),
            self.floor
        )
    }
}

impl std::error::Error for BelowFloor {}

/// A write refused for the floor, as the I/O error it stands for: `StorageFull`, as a full
/// disk's (the inbox waits on either), holding the refusal.
impl From<BelowFloor> for std::io::Error {
    fn from(below: BelowFloor) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::StorageFull, below)
    }
}

impl BelowFloor {
    /// The refusal `e` holds, if it is one (see the `From` above).
    pub fn of(e: &std::io::Error) -> Option<&BelowFloor> {
        e.get_ref()?.downcast_ref()
    }
}

/// What each sender has written this hour, per method.
pub struct LogBudget {
    pub limits: LogLimits,
    spent: Mutex<Spending>,
}

/// The senders' spending, and when finished hours were last forgotten.
#[derive(Default)]
struct Spending {
    by: HashMap<(&'static str, String), Spent>,
    pruned: Option<Instant>,
}

/// How often finished hours are forgotten: not on every message, whose cost would then grow
/// with the number of senders (a central for 10,000 logging nodes).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
struct Spent {
    since: Instant,
    bytes: u64,
    refused: bool,
}

impl LogBudget {
    pub fn new(limits: LogLimits) -> LogBudget {
        LogBudget {
            limits,
            spent: Mutex::default(),
        }
    }

    /// Takes `bytes` from `sender`'s budget for `method`, or refuses them all.
    pub fn take(
        &self,
        method: &'static str,
        sender: &str,
        bytes: u64,
        now: Instant,
    ) -> Result<(), OverBudget> {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        // Forget finished hours, so the table holds only this hour's senders.
        if spent
            .pruned
            .is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_EVERY)
        {
            spent
                .by
                .retain(|_, s| now.saturating_duration_since(s.since) < WINDOW);
            spent.pruned = Some(now);
        }
        let fresh = Spent {
            since: now,
            bytes: 0,
            refused: false,
        };
        let s = spent
            .by
            .entry((method, sender.to_string()))
            .or_insert(fresh);
        if now.saturating_duration_since(s.since) >= WINDOW {
            *s = fresh;
        }
        if s.bytes.saturating_add(bytes) > self.limits.bytes_per_hour {
            let first = !s.refused;
            s.refused = true;
            return Err(OverBudget {
                why: format!(
                    "{sender} is over its budget of {} bytes an hour for {method} (--maxLogBytesPerHour); refused until {}s from now",
                    self.limits.bytes_per_hour,
                    WINDOW.saturating_sub(now.duration_since(s.since)).as_secs()
                ),
                first,
            });
        }
        s.bytes += bytes;
        Ok(())
    }

    /// Whether the data folder's disk is above the free-space floor: below it, the methods
    /// that write logs or files take no work ([`crate::methods::Method::ready`]: their
    /// senders try again), a log write that finds the disk there all the same (it filled
    /// after `ready`) is refused ([`admit`]), and new intake waits.
    pub fn check_free_space(&self, dir: &Path) -> Result<(), BelowFloor> {
        self.check_free_space_for(dir, 0)
    }

    /// As [`LogBudget::check_free_space`], for a write of `writing` bytes: the floor is
    /// what is left after it.
    pub fn check_free_space_for(&self, dir: &Path, writing: u64) -> Result<(), BelowFloor> {
        let Ok((free, total)) = crate::sys::free_bytes(dir) else {
            return Ok(()); // cannot tell: do not refuse on a guess
        };
        let floor = self
            .limits
            .free_floor
            .unwrap_or_else(|| DEFAULT_FLOOR.min(total / 100 * FLOOR_PERCENT));
        if free.saturating_sub(writing) < floor {
            return Err(BelowFloor {
                dir: dir.to_path_buf(),
                free,
                floor,
                writing,
            });
        }
        Ok(())
    }
}

/// Decides which of a batch's log writes for `method` may go ahead: `items` are each
/// message's sender and bytes. A refusal comes back as the outcome to answer; each is
/// counted in `steward_log_writes_refused_total`, and a sender's first refusal of the hour
/// is reported to central (from ErrorLog itself only logged, as a report would loop).
pub fn admit(ctx: &Context, method: &'static str, items: &[(&str, usize)]) -> Vec<Option<Outcome>> {
    let budget = &ctx.log_budget;
    let writing = items.iter().map(|&(_, bytes)| bytes as u64).sum();
    if let Err(why) = budget.check_free_space_for(&ctx.data.root, writing) {
        log::warn!("{method}: {why}");
        ctx.metrics
            .log_refused
            .with_label_values(&[method, "disk"])
            .inc_by(items.len() as u64);
        return vec![Some(Outcome::refused(why.to_string())); items.len()];
    }
    let now = Instant::now();
    items
        .iter()
        .map(|&(sender, bytes)| {
            let over = budget.take(method, sender, bytes as u64, now).err()?;
            ctx.metrics
                .log_refused
                .with_label_values(&[method, "budget"])
                .inc();
            if over.first {
                let text = format!("{}: {}", ctx.config.node, over.why);
                if method == "ErrorLog" {
                    log::warn!("{text}");
                } else {
                    ctx.outbox.report_error(text);
                }
            }
            Some(Outcome::refused(over.why))
        })
        .collect()
}

/// `text` cut to at most `max` bytes (on a character boundary), with a marker saying how
/// much was cut.
pub fn cap_line(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{} [steward: {} more bytes cut]",
        &text[..end],
        text.len() - end
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(bytes_per_hour: u64) -> LogBudget {
        LogBudget::new(LogLimits::new(bytes_per_hour, None))
    }

    #[test]
    fn a_sender_over_its_budget_is_refused_until_the_hour_ends() {
        let b = budget(100);
        let t = Instant::now();
        assert!(b.take("TextLogging", "ship1", 60, t).is_ok());
        assert!(b.take("TextLogging", "ship1", 40, t).is_ok());
        let over = b.take("TextLogging", "ship1", 1, t).unwrap_err();
        assert!(over.first);
        assert!(over
            .why
            .contains("budget of 100 bytes an hour for TextLogging"));
        assert!(!b.take("TextLogging", "ship1", 1, t).unwrap_err().first);
        // Others, and other methods, have budgets of their own.
        assert!(b.take("TextLogging", "ship2", 100, t).is_ok());
        assert!(b.take("ErrorLog", "ship1", 100, t).is_ok());
        // A new hour, a new budget, and a new first refusal to report.
        let later = t + WINDOW;
        assert!(b.take("TextLogging", "ship1", 100, later).is_ok());
        assert!(b.take("TextLogging", "ship1", 1, later).unwrap_err().first);
    }

    #[test]
    fn finished_hours_are_forgotten_once_a_minute_and_never_counted() {
        let b = budget(100);
        let t = Instant::now();
        for i in 0..1000 {
            b.take("TextLogging", &format!("ship{i}"), 100, t).unwrap();
        }
        let held = || b.spent.lock().unwrap().by.len();
        // Between two looks, an hour that ended still starts afresh.
        let almost = t + WINDOW - Duration::from_secs(30);
        b.take("TextLogging", "other", 1, almost).unwrap();
        assert_eq!(held(), 1001, "not looked at again within the minute");
        assert!(b.take("TextLogging", "ship1", 100, t + WINDOW).is_ok());
        assert_eq!(held(), 1001);
        b.take("TextLogging", "other", 1, almost + PRUNE_EVERY)
            .unwrap();
        assert_eq!(held(), 2, "ship1's new hour and other's");
    }

    #[test]
    fn a_message_larger_than_the_whole_budget_is_refused() {
        assert!(budget(10)
            .take("ErrorLog", "x", 11, Instant::now())
            .is_err());
    }

    #[test]
    fn long_lines_are_cut_with_a_marker() {
        assert_eq!(cap_line("short", 8), "short");
        assert_eq!(
            cap_line("0123456789", 4),
            "0123 [steward: 6 more bytes cut]"
        );
        // Never inside a character.
        assert_eq!(cap_line("ééé", 3), "é [steward: 4 more bytes cut]");
    }

    #[test]
    fn the_free_space_floor_refuses_when_the_disk_is_too_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut limits = LogLimits::new(1, Some(0));
        assert!(LogBudget::new(limits.clone())
            .check_free_space(dir.path())
            .is_ok());
        limits.free_floor = Some(u64::MAX);
        let why = LogBudget::new(limits)
            .check_free_space(dir.path())
            .unwrap_err();
        assert_eq!(why.floor, u64::MAX);
        assert!(why.to_string().contains("--minFreeBytesForLogs"), "{why}");
    }
}
