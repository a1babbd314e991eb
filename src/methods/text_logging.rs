//! `TextLogging`: the receiving node appends the text to a log file per sending node
//! (`textlog/<fromNode>.log`), e.g. logs forwarded from a ship to central.

use super::{Method, Outcome};
use crate::message::Envelope;
use crate::node::Node;

pub struct TextLogging;

impl Method for TextLogging {
    fn name(&self) -> &'static str {
        "TextLogging"
    }

    fn handle(&self, envelope: &Envelope, node: &Node) -> Outcome {
        let mut text = envelope.message.data.concat();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let path = node.data.text_log(&envelope.from_node);
        match crate::files::append(&path, text.as_bytes(), true) {
            Ok(()) => Outcome::ok(format!("logged {} bytes", text.len())),
            Err(e) => Outcome::error(format!("cannot append to {}: {e}", path.display())),
        }
    }
}
