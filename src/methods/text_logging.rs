//! `TextLogging`: the receiving node appends the text to a log file per sending node
//! (`textlog/<fromNode>.log`), e.g. logs forwarded from a ship to central. Control
//! characters other than newline and tab are escaped ([`crate::files::escape_controls`]):
//! an operator may `tail` these files in a terminal.

use super::{Method, Outcome};
use crate::message::Envelope;
use crate::node::Node;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub struct TextLogging;

impl Method for TextLogging {
    fn name(&self) -> &'static str {
        "TextLogging"
    }

    fn handle(&self, envelope: &Envelope, node: &Node) -> Outcome {
        self.handle_batch(&[envelope], node).remove(0)
    }

    /// A batch's lines go to each sender's log with one write and one fsync.
    fn handle_batch(&self, envelopes: &[&Envelope], node: &Node) -> Vec<Outcome> {
        let lines: Vec<(PathBuf, String)> = envelopes
            .iter()
            .map(|e| {
                let mut text = crate::files::escape_controls(&e.message.data.concat()).into_owned();
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                (node.data.text_log(&e.from_node), text)
            })
            .collect();
        let mut by_file: BTreeMap<&PathBuf, String> = BTreeMap::new();
        for (path, text) in &lines {
            by_file.entry(path).or_default().push_str(text);
        }
        let failed: BTreeMap<&PathBuf, String> = by_file
            .into_iter()
            .filter_map(|(path, text)| {
                crate::files::append(path, text.as_bytes(), true)
                    .err()
                    .map(|e| (path, format!("cannot append to {}: {e}", path.display())))
            })
            .collect();
        lines
            .iter()
            .map(|(path, text)| match failed.get(path) {
                Some(why) => Outcome::error(why.clone()),
                None => Outcome::ok(format!("logged {} bytes", text.len())),
            })
            .collect()
    }
}
