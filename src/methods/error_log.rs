//! `ErrorLog`: errors from every node, collected by the central error logger
//! (`--centralErrorLogger`) into `errors.log`, one line per error. Any other node refuses
//! them, so a misconfigured fleet shows up as refusals rather than as lost errors. A line is
//! one error: newlines become spaces and other control characters are escaped
//! ([`crate::files::escape_controls`]), so no sender can forge another's line. A line holds
//! at most 8 KiB of the error, each sender writes within its hourly budget, and the file is
//! rotated at a size ([`crate::log_budget`]), so no sender can fill the disk.

use super::Context;
use super::{Method, Outcome};
use crate::message::Envelope;

pub struct ErrorLog;

impl Method for ErrorLog {
    fn name(&self) -> &'static str {
        "ErrorLog"
    }

    fn kinds(&self) -> &'static [crate::message::Kind] {
        super::EVENTS
    }

    fn senders(&self) -> super::Senders {
        super::Senders::Fleet
    }

    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        self.handle_batch(&[envelope], ctx).remove(0)
    }

    fn ready(&self, ctx: &Context, writing: u64) -> Result<(), crate::log_budget::BelowFloor> {
        ctx.log_budget.check_free_space_for(&ctx.data.root, writing)
    }

    fn writes(&self, envelope: &Envelope, ctx: &Context) -> u64 {
        line(envelope, &ctx.log_budget.limits).len() as u64
    }

    fn batch_max(&self) -> usize {
        crate::message::MAX_BATCH
    }

    /// A batch's errors go to errors.log with one write and one fsync.
    fn handle_batch(&self, envelopes: &[&Envelope], ctx: &Context) -> Vec<Outcome> {
        let all = |outcome: Outcome| vec![outcome; envelopes.len()];
        if !ctx.config.central_error_logger {
            return all(Outcome::refused(format!(
                "{} is not the central error logger (start it with --centralErrorLogger)",
                ctx.config.node
            )));
        }
        let limits = &ctx.log_budget.limits;
        let lines: Vec<String> = envelopes.iter().map(|e| line(e, limits)).collect();
        let sizes: Vec<(&str, usize)> = envelopes
            .iter()
            .zip(&lines)
            .map(|(e, line)| (e.from_node.as_str(), line.len()))
            .collect();
        let refused = crate::log_budget::admit(ctx, self.name(), &sizes);
        let written: String = lines
            .iter()
            .zip(&refused)
            .filter(|(_, r)| r.is_none())
            .map(|(line, _)| line.as_str())
            .collect();
        let path = ctx.data.error_log();
        let result = if written.is_empty() {
            Ok(())
        } else {
            crate::files::append_rotating(&path, written.as_bytes(), limits.rotate_at, limits.keep)
        };
        refused
            .into_iter()
            .map(|refused| match (refused, &result) {
                (Some(refusal), _) => refusal,
                (None, Ok(())) => Outcome::ok("logged"),
                (None, Err(e)) => {
                    Outcome::error(format!("cannot append to {}: {e}", path.display()))
                }
            })
            .collect()
    }
}

/// The line a message is written as in errors.log.
fn line(e: &Envelope, limits: &crate::log_budget::LogLimits) -> String {
    let text = e.message.data.join(" ").replace('\n', " ");
    let text = crate::files::escape_controls(&text);
    let text = crate::log_budget::cap_line(text.trim_end(), limits.max_error_line);
    format!(
        "{} {} [{}]: {text}\n",
        crate::files::rfc3339(e.accepted),
        e.from_node,
        e.id,
    )
}
