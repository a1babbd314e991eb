//! `TextLogging`: the receiving node appends the text to a log file per sending node
//! (`textlog/<fromNode>.log`), e.g. logs forwarded from a ship to central. Control
//! characters other than newline and tab are escaped ([`crate::files::escape_controls`]):
//! an operator may `tail` these files in a terminal. Each sender writes within its hourly
//! budget and each file is rotated at a size ([`crate::log_budget`]), so no sender can fill
//! the disk.

use super::Context;
use super::{Method, Outcome};
use crate::message::Envelope;
use std::path::PathBuf;

pub struct TextLogging;

impl Method for TextLogging {
    fn name(&self) -> &'static str {
        "TextLogging"
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

    fn writes(&self, envelope: &Envelope, _ctx: &Context) -> u64 {
        // As long as its `line`, counted without making it (every event comes here): one
        // piece of data, plain text, is looked at where it is.
        let data = &envelope.message.data;
        let text = match data.as_slice() {
            [one] => std::borrow::Cow::Borrowed(one.as_str()),
            more => std::borrow::Cow::Owned(more.concat()),
        };
        let escaped = crate::files::escape_controls(&text);
        (escaped.len() + usize::from(!escaped.ends_with('\n'))) as u64
    }

    fn batch_max(&self) -> usize {
        crate::message::MAX_BATCH
    }

    /// A batch's lines go to each sender's log with one write and one fsync.
    fn handle_batch(&self, envelopes: &[&Envelope], ctx: &Context) -> Vec<Outcome> {
        // Each sender's log file, named once (a batch comes from one sender).
        let mut files: Vec<(&str, PathBuf)> = Vec::new();
        // Each line as it is written, without its newline if it needs one: borrowed from
        // its message where that is already what is written (one piece of plain text).
        let lines: Vec<(usize, Line)> = envelopes
            .iter()
            .map(|e| {
                let text = Line::of(e);
                let file = match files.iter().position(|(from, _)| *from == e.from_node) {
                    Some(i) => i,
                    None => {
                        files.push((&e.from_node, ctx.data.text_log(&e.from_node)));
                        files.len() - 1
                    }
                };
                (file, text)
            })
            .collect();
        let sizes: Vec<(&str, usize)> = envelopes
            .iter()
            .zip(&lines)
            .map(|(e, (_, text))| (e.from_node.as_str(), text.len()))
            .collect();
        let refused = crate::log_budget::admit(ctx, self.name(), &sizes);
        let taken = || lines.iter().zip(&refused).filter(|(_, r)| r.is_none());
        // Sized once: a batch's lines are some hundreds of kilobytes.
        let mut by_file: Vec<String> = (0..files.len())
            .map(|i| {
                let size = taken()
                    .filter(|((f, _), _)| *f == i)
                    .map(|((_, t), _)| t.len());
                String::with_capacity(size.sum())
            })
            .collect();
        for ((file, text), _) in taken() {
            text.write_to(&mut by_file[*file]);
        }
        let limits = &ctx.log_budget.limits;
        let failed: Vec<Option<String>> = files
            .iter()
            .zip(&by_file)
            .map(|((_, path), text)| {
                if text.is_empty() {
                    return None;
                }
                crate::files::append_rotating(path, text.as_bytes(), limits.rotate_at, limits.keep)
                    .err()
                    .map(|e| format!("cannot append to {}: {e}", path.display()))
            })
            .collect();
        lines
            .iter()
            .zip(refused)
            .map(|((file, text), refused)| match (refused, &failed[*file]) {
                (Some(refusal), _) => refusal,
                (None, Some(why)) => Outcome::error(why.clone()),
                (None, None) => Outcome::ok(format!("logged {} bytes", text.len())),
            })
            .collect()
    }
}

/// What a message's text is written as: control characters escaped, ending in a newline.
struct Line<'e> {
    escaped: std::borrow::Cow<'e, str>,
    newline: bool,
}

impl<'e> Line<'e> {
    fn of(e: &'e Envelope) -> Line<'e> {
        let escaped = match e.message.data.as_slice() {
            [one] => crate::files::escape_controls(one),
            more => crate::files::escape_controls(&more.concat())
                .into_owned()
                .into(),
        };
        let newline = !escaped.ends_with('\n');
        Line { escaped, newline }
    }

    /// Its length in bytes, newline included.
    fn len(&self) -> usize {
        self.escaped.len() + usize::from(self.newline)
    }

    fn write_to(&self, out: &mut String) {
        out.push_str(&self.escaped);
        if self.newline {
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_budget::{LogBudget, LogLimits};
    use crate::message::{Kind, Message, Status};

    /// What `ready` is told a message writes is what its line takes, to the byte.
    #[test]
    fn what_a_message_writes_is_counted_as_its_line_takes() {
        let dir = tempfile::tempdir().unwrap();
        let node = crate::node::tests::offline_node_named(dir.path(), "central");
        let ctx = node.context();
        for data in [
            vec![],
            vec!["plain\n".to_string()],
            vec!["no newline".into()],
            vec!["\x01\x1b[2J\r".into()],
            vec!["two ".into(), "pieces\n".into()],
            vec!["é\u{202e}".into(), "\n".into()],
        ] {
            let e = Envelope {
                id: "ship1-1".into(),
                from_node: "ship1".into(),
                accepted: 0,
                reply_ticket: None,
                grant: None,
                message: Message::new("central", Kind::EventAck, "TextLogging", data.clone()),
            };
            assert_eq!(
                TextLogging.writes(&e, &ctx),
                Line::of(&e).len() as u64,
                "{data:?}"
            );
        }
    }
    use crate::node::tests::offline_node_named;

    /// The floor is what is left for the journal after the write, not before it: at the
    /// floor, or just above it, a write that would take the disk under it is refused.
    #[test]
    fn a_write_that_would_take_the_disk_under_the_floor_is_refused() {
        // tmpfs: its free space moves only with what is written there.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let node = offline_node_named(dir.path(), "central");
        let (free, _) = crate::sys::free_bytes(dir.path()).unwrap();
        let budget = LogBudget::new(LogLimits::new(u64::MAX, Some(free - (64 << 10))));
        let ctx = Context {
            log_budget: &budget,
            ..node.context()
        };
        let envelope = Envelope {
            id: "ship1-1".into(),
            from_node: "ship1".into(),
            accepted: 0,
            reply_ticket: None,
            grant: None,
            message: Message::new(
                "central",
                Kind::EventAck,
                "TextLogging",
                vec!["x".repeat(200 << 10)],
            ),
        };
        // 64 KiB above the floor; 200 KiB to write.
        let out = TextLogging.handle(&envelope, &ctx);
        let (after, _) = crate::sys::free_bytes(dir.path()).unwrap();
        assert_eq!(
            out.status,
            Status::Refused,
            "{}: {after} bytes free after it, under the floor of {}",
            out.output,
            free - (64 << 10)
        );
    }
}
