//! `Console`: the receiving node prints the message's data on its standard output (or its
//! standard error with `methodArgs: ["stderr"]`), each line prefixed with the sender, as
//! `journalctl -u steward` shows it. Control characters are escaped, as in the logs. Most
//! often a reply method: an operator running steward in a terminal sees results come in.
//!
//! Who may send it: those `--allowCommandsFrom` allows, and a node this one asked for a
//! result (see [`crate::reply`]).

use super::{Context, Method, Outcome, Senders, EVENTS};
use crate::message::{Envelope, Kind};
use std::io::Write;

pub struct Console;

impl Method for Console {
    fn name(&self) -> &'static str {
        "Console"
    }
    fn kinds(&self) -> &'static [Kind] {
        EVENTS
    }
    fn senders(&self) -> Senders {
        Senders::CommandersOrAsked
    }
    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        let m = &envelope.message;
        let to_stderr = match m.method_args.as_deref() {
            None | Some([]) => false,
            Some([a]) if a == "stdout" => false,
            Some([a]) if a == "stderr" => true,
            Some(other) => {
                return Outcome::error(format!(
                    "Console takes methodArgs [\"stdout\"] or [\"stderr\"], not {other:?}"
                ))
            }
        };
        let text = super::file::text_of(&m.data);
        let escaped = crate::files::escape_controls(&text);
        // What is printed, each line with its sender's name, counts: not what was sent,
        // which an empty line (one byte, printed as 3 + the name's up to 128) understates.
        // Counted before it is made: refused, a message of newlines is not first made a
        // hundred times its size in memory.
        let prefix = envelope.from_node.len() + ": ".len();
        let printed: usize = escaped.lines().map(|line| prefix + line.len() + 1).sum();
        let sizes = [(envelope.from_node.as_str(), printed)];
        if let Some(refused) = crate::log_budget::admit(ctx, self.name(), &sizes).remove(0) {
            return refused;
        }
        let mut out = String::with_capacity(printed);
        for line in escaped.lines() {
            out.push_str(&envelope.from_node);
            out.push_str(": ");
            out.push_str(line);
            out.push('\n');
        }
        // One write, so lines from two messages never interleave.
        let written = if to_stderr {
            std::io::stderr().lock().write_all(out.as_bytes())
        } else {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
        };
        match written {
            Ok(()) => Outcome::ok(""),
            Err(e) => Outcome::error(format!("cannot print: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_budget::{LogBudget, LogLimits};
    use crate::message::{Message, Status};
    use crate::node::tests::offline_node_named;

    /// Each printed line carries its sender's name (up to 128 bytes): a message of empty
    /// lines prints a hundred times its size. The budget is for what lands in the logs.
    #[test]
    fn the_budget_counts_what_is_printed_not_what_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let node = offline_node_named(dir.path(), "central");
        let budget = LogBudget::new(LogLimits::new(4 << 10, Some(0)));
        let ctx = Context {
            log_budget: &budget,
            ..node.context()
        };
        let envelope = Envelope {
            id: "ship1-1".into(),
            from_node: "s".repeat(crate::subject::MAX_NAME_LEN),
            accepted: 0,
            reply_ticket: None,
            grant: None,
            message: Message::new("central", Kind::EventAck, "Console", vec!["\n".repeat(64)]),
        };
        // 64 bytes sent, 64 × 131 = 8384 to print: over a budget of 4096.
        let out = Console.handle(&envelope, &ctx);
        assert_eq!(out.status, Status::Refused, "{}", out.output);
    }
}
