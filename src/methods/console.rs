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
        let sizes = [(envelope.from_node.as_str(), text.len())];
        if let Some(refused) = crate::log_budget::admit(ctx, self.name(), &sizes).remove(0) {
            return refused;
        }
        let mut out = String::with_capacity(text.len() + 64);
        for line in crate::files::escape_controls(&text).lines() {
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
