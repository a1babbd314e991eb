//! `File` and `FileAppend`: write the message's data to
//! `<dataFolder>/<directory>/<fromNode>/<fileName>` on the receiving node. `File` replaces
//! the file atomically (a reader, or a power cut, sees the old content or the new, never a
//! mix); `FileAppend` appends, in order, fsync'd. Most often they are reply methods: a
//! command's result lands in a file per node on central (`"replyMethod":"File",
//! "directory":"m","fileName":"df.txt"` → `m/ship1/df.txt`).
//!
//! Each element of `data` is written followed by a newline unless it ends with one (a
//! command's output as it was). The path is checked again here ([`crate::reply::place`]):
//! no `..`, no absolute path, no symbolic link on the way, none of steward's own folders.
//!
//! Writing a file on a node is a command's power: directly, only senders
//! `--allowCommandsFrom` allows may; as a result, only the node this one asked, for exactly
//! the file it asked for (see [`crate::reply`]). What each sender writes counts against its
//! hourly log budget, as its logs do ([`crate::log_budget`]).

use super::{Context, Method, Outcome, Senders, EVENTS};
use crate::message::{Envelope, Kind};

/// `File` (`append: false`: the file replaced) and `FileAppend` (`append: true`).
pub struct File {
    pub append: bool,
}

impl Method for File {
    fn name(&self) -> &'static str {
        if self.append {
            "FileAppend"
        } else {
            "File"
        }
    }
    fn kinds(&self) -> &'static [Kind] {
        EVENTS
    }
    fn senders(&self) -> Senders {
        Senders::CommandersOrAsked
    }
    fn ready(&self, ctx: &Context, writing: u64) -> Result<(), crate::log_budget::BelowFloor> {
        ctx.log_budget.check_free_space_for(&ctx.data.root, writing)
    }
    fn writes(&self, envelope: &Envelope, _ctx: &Context) -> u64 {
        text_of(&envelope.message.data).len() as u64
    }
    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        write(self.name(), envelope, ctx, |path, bytes| {
            if self.append {
                // Rotated as logs are: a schedule appending results for months would
                // otherwise fill the disk; whole or not at all.
                let limits = &ctx.log_budget.limits;
                return crate::files::append_rotating(path, bytes, limits.rotate_at, limits.keep);
            }
            // `.<fileName>.<thread>.tmp`: a fileName never starts with '.', so no file a
            // sender names can be in its way, two names never share one, and nor do two
            // writes of one name at once (its sender's EventACK and EventNACK lanes: with
            // one temporary file, one write failed, or put a mix of both in place).
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let tmp = path.with_file_name(format!(".{name}.{}.tmp", crate::sys::thread_id()));
            crate::files::write_atomically_through(path, &tmp, bytes)
        })
    }
}

/// The text a message's data makes: each element, then a newline unless it has one.
pub fn text_of(data: &[String]) -> String {
    let mut text = String::with_capacity(data.iter().map(|d| d.len() + 1).sum());
    for d in data {
        text.push_str(d);
        if !d.is_empty() && !d.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// Writes a message's text where it says, within its sender's hourly log budget (a node
/// asked for results cannot fill this disk with them).
fn write(
    method: &'static str,
    envelope: &Envelope,
    ctx: &Context,
    how: impl Fn(&std::path::Path, &[u8]) -> std::io::Result<()>,
) -> Outcome {
    let path = match crate::reply::place(&ctx.data.root, &envelope.message, &envelope.from_node) {
        Ok(path) => path,
        Err(e) => return Outcome::refused(e.to_string()),
    };
    let text = text_of(&envelope.message.data);
    let sizes = [(envelope.from_node.as_str(), text.len())];
    if let Some(refused) = crate::log_budget::admit(ctx, method, &sizes).remove(0) {
        return refused;
    }
    match how(&path, text.as_bytes()) {
        Ok(()) => Outcome::ok(format!("{} bytes to {}", text.len(), path.display())),
        Err(e) => Outcome::error(format!("cannot write {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::node::tests::offline_node_named;

    #[test]
    fn two_writes_of_one_file_at_once_leave_one_of_them_whole() {
        let dir = tempfile::tempdir().unwrap();
        let node = offline_node_named(dir.path(), "central");
        // ship1's EventACK and EventNACK lanes, each with a handler of its own, writing
        // the same file: with one temporary file between them, a write failed (the other
        // had renamed it away), or the file put in place was a mix of both.
        let write = |kind: Kind, fill: char| {
            let mut message = Message::new(
                "central",
                kind,
                "File",
                vec![fill.to_string().repeat(1 << 20)],
            );
            message.directory = Some("m".into());
            message.file_name = Some("x.txt".into());
            let envelope = Envelope {
                id: format!("ship1-{fill}"),
                from_node: "ship1".into(),
                accepted: 0,
                reply_ticket: None,
                grant: None,
                message,
            };
            for _ in 0..20 {
                let out = File { append: false }.handle(&envelope, &node.context());
                assert_eq!(out.status, crate::message::Status::Ok, "{}", out.output);
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| write(Kind::EventAck, 'a'));
            s.spawn(|| write(Kind::EventNack, 'b'));
        });
        let text = std::fs::read_to_string(dir.path().join("m/ship1/x.txt")).unwrap();
        let whole =
            |c: char| text.len() == (1 << 20) + 1 && text.trim_end().chars().all(|x| x == c);
        assert!(whole('a') || whole('b'), "a mix of both");
    }

    #[test]
    fn a_file_name_taken_is_one_file_can_write_and_file_append_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let node = offline_node_named(dir.path(), "central");
        // A fileName of up to 255 bytes was taken, at intake and here, and then: File's
        // temporary name (`.<fileName>.<thread>.tmp`) was too long for the disk, so every
        // result was refused; FileAppend's worked until its file reached 16 MiB, and its
        // rotation (`<fileName>.1`) was too long, so from then on every append failed.
        for len in [255, 254, 250, 240, 239, 200] {
            // Of plain parts, each at most a node name's 128 bytes.
            let name = format!("{}.{}", "f".repeat(len / 2), "g".repeat(len - len / 2 - 1));
            let mut message = Message::new("central", Kind::EventAck, "File", vec!["x".into()]);
            message.directory = Some("m".into());
            message.file_name = Some(name.clone());
            let envelope = Envelope {
                id: format!("ship1-{len}"),
                from_node: "ship1".into(),
                accepted: 0,
                reply_ticket: None,
                grant: None,
                message,
            };
            let out = File { append: false }.handle(&envelope, &node.context());
            // Refused past 239 bytes alone: a name every name beside it has room for.
            let refused = out.status == crate::message::Status::Refused;
            assert_eq!(refused, len > 239, "{len}: {}", out.output);
            if refused {
                assert!(out.output.contains("may take"), "{len}: {}", out.output);
                continue;
            }
            assert_eq!(
                out.status,
                crate::message::Status::Ok,
                "{len}: {}",
                out.output
            );
            let path = dir.path().join("m/ship1").join(&name);
            let keep = crate::log_budget::KEEP_ROTATED;
            for _ in 0..=keep {
                crate::files::append_rotating(&path, b"x\n", 1, keep)
                    .unwrap_or_else(|e| panic!("{len}: rotated: {e}"));
            }
        }
    }
}
