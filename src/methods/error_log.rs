//! `ErrorLog`: errors from every node, collected by the central error logger
//! (`--centralErrorLogger`) into `errors.log`, one line per error. Any other node refuses
//! them, so a misconfigured fleet shows up as refusals rather than as lost errors.

use super::{Method, Outcome};
use crate::message::Envelope;
use crate::node::Node;

pub struct ErrorLog;

impl Method for ErrorLog {
    fn name(&self) -> &'static str {
        "ErrorLog"
    }

    fn handle(&self, envelope: &Envelope, node: &Node) -> Outcome {
        if !node.config.central_error_logger {
            return Outcome::refused(format!(
                "{} is not the central error logger (start it with --centralErrorLogger)",
                node.config.node
            ));
        }
        let text = envelope.message.data.join(" ").replace('\n', " ");
        let line = format!(
            "{} {} [{}]: {}\n",
            crate::files::rfc3339(envelope.accepted),
            envelope.from_node,
            envelope.id,
            text.trim_end()
        );
        let path = node.data.error_log();
        match crate::files::append(&path, line.as_bytes(), true) {
            Ok(()) => Outcome::ok("logged"),
            Err(e) => Outcome::error(format!("cannot append to {}: {e}", path.display())),
        }
    }
}
