//! `ErrorLog`: errors from every node, collected by the central error logger
//! (`--centralErrorLogger`) into `errors.log`, one line per error. Any other node refuses
//! them, so a misconfigured fleet shows up as refusals rather than as lost errors. A line is
//! one error: newlines become spaces and other control characters are escaped
//! ([`crate::files::escape_controls`]), so no sender can forge another's line.

use super::{Method, Outcome};
use crate::message::Envelope;
use crate::node::Node;

pub struct ErrorLog;

impl Method for ErrorLog {
    fn name(&self) -> &'static str {
        "ErrorLog"
    }

    fn handle(&self, envelope: &Envelope, node: &Node) -> Outcome {
        self.handle_batch(&[envelope], node).remove(0)
    }

    /// A batch's errors go to errors.log with one write and one fsync.
    fn handle_batch(&self, envelopes: &[&Envelope], node: &Node) -> Vec<Outcome> {
        let all = |outcome: Outcome| vec![outcome; envelopes.len()];
        if !node.config.central_error_logger {
            return all(Outcome::refused(format!(
                "{} is not the central error logger (start it with --centralErrorLogger)",
                node.config.node
            )));
        }
        let lines: String = envelopes
            .iter()
            .map(|e| {
                let text = e.message.data.join(" ").replace('\n', " ");
                let text = crate::files::escape_controls(&text);
                format!(
                    "{} {} [{}]: {}\n",
                    crate::files::rfc3339(e.accepted),
                    e.from_node,
                    e.id,
                    text.trim_end()
                )
            })
            .collect();
        let path = node.data.error_log();
        match crate::files::append(&path, lines.as_bytes(), true) {
            Ok(()) => all(Outcome::ok("logged")),
            Err(e) => all(Outcome::error(format!(
                "cannot append to {}: {e}",
                path.display()
            ))),
        }
    }
}
