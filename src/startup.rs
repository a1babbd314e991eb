//! The startup folder: `<dataFolder>/startup/*.json` holds messages (the same JSON as
//! `inmsg.txt`) that a node sends itself at every start, in file-name order. This is how a
//! node starts its own schedules at boot: scrape its node_exporter every minute and send
//! it to central, follow a log.
//!
//! Two keys only a startup file has: `toNode: "local"` (or `"local"` in `toNodes`) means
//! this node; `fromNode` says where the results go (e.g. `central`): they are sent there as
//! plain events of this node, so the receiver takes them as it takes any event from it (a
//! method any fleet member may send, such as `TextLogging`, or one its
//! `--allowCommandsFrom` lets this node call). The same schedule sent again at the next
//! start replaces the one the last start made ([`crate::schedule`]).
//!
//! A file (or the folder) that users other than its owner may write is refused, and so is
//! a symbolic link: whoever writes here runs commands as this node. So is anything but a
//! regular file of at most [`MAX_FILE_BYTES`] (a FIFO is not waited on). A bad file or
//! message is reported to central and skipped; the rest still go.
//!
//! A start's messages go through the broker, even to this node itself: while it is away,
//! they wait in the journal. A start that finds the same message of an earlier start
//! still waiting does not send it again (`startup-sent.json` says which of the journal's
//! messages came from here): a ship restarted five times while its link was down ran its
//! one-shot boot command five times once it was back. The list is written before the
//! batch, and the batch carries the start's number (a mark in the journal), so neither a
//! crash between the two nor a batch that never made it to the disk can leave the list
//! wrong.

use crate::message::Message;
use crate::node::Node;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// What `toNode` says for this node, in a startup file.
pub const LOCAL: &str = "local";

/// Largest startup file read: a few messages, each with at most 256 KiB of data.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Sends the startup folder's messages (if it has any); returns how many were taken. (The
/// agent asks [`mark_known`] first, before its inbox runs: [`send_after`].)
#[cfg(test)]
fn send(node: &Node) -> usize {
    send_after(node, mark_known(node))
}

/// Whether the journal's mark (the number of the last start whose messages it holds) can
/// be believed: damage passed over at its open may have held a later one. Asked before the
/// inbox runs, which forgets the damage once it has dealt with its own files.
pub fn mark_known(node: &Node) -> bool {
    node.journal().inbox_offset_known(MARK)
}

/// Sends the startup folder's messages (if it has any), `known` what [`mark_known`] said
/// at the journal's open; returns how many were taken.
pub fn send_after(node: &Node, known: bool) -> usize {
    let dir = node.data.startup();
    let Ok(meta) = std::fs::symlink_metadata(&dir) else {
        return 0;
    };
    let me = &node.config.node;
    if let Some(why) = unsafe_to_read(&dir, &meta) {
        node.report_error(format!("{me}: startup folder refused: {why}"));
        return 0;
    }
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            // `.JSON` too: the seed's examples name their files `myfile.JSON`.
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("json"))
            })
            .collect(),
        Err(e) => {
            node.report_error(format!("{me}: cannot read {}: {e}", dir.display()));
            return 0;
        }
    };
    files.sort();
    let mut messages = Vec::new();
    for path in files {
        match read(&path, me) {
            Ok((taken, refused)) => {
                messages.extend(taken);
                for why in refused {
                    node.report_error(format!("{me}: {}: {why}", path.display()));
                }
            }
            Err(why) => node.report_error(format!("{me}: {}: refused: {why}", path.display())),
        }
    }
    let (messages, waiting, latest) = not_waiting_yet(node, messages, known);
    let count = messages.len();
    let path = node.data.startup_sent();
    if count == 0 {
        // Only those still waiting stay listed.
        if let Err(e) = list(&path, &waiting) {
            log::warn!("{me}: cannot write {}: {e}", path.display());
        }
        return 0;
    }
    let digests: Vec<String> = messages.iter().map(digest).collect();
    // This start's number, journaled with its batch: what is listed under it counts only
    // if the batch was (see `not_waiting_yet`).
    let start = latest + 1;
    let mut unlisted = None;
    let listed = |entries: &[crate::journal::Entry]| {
        let mut all = waiting;
        all.extend(entries.iter().zip(digests).map(|(e, digest)| Sent {
            lane: e.envelope.message.subject().to_string(),
            seq: e.seq,
            id: e.envelope.id.clone(),
            digest,
            start,
        }));
        // Listed before the batch is written, so that no crash leaves it journaled and
        // unlisted (sent again by the next start while it still waits).
        if let Err(e) = list(&path, &all) {
            // Sent all the same, as a start that cannot list its messages always was: a
            // restart while they still wait sends them again. The old list goes, so that
            // none of its entries passes for one of this batch.
            let _ = std::fs::remove_file(&path);
            unlisted = Some(e); // reported once the journal's lock is let go
        }
        Ok(())
    };
    let journaled = node.accept_listed(messages, (MARK, start), listed);
    if let Some(e) = unlisted {
        node.report_error(format!(
            "{me}: cannot write {}: {e}; if {me} restarts before this start's messages are delivered, the next start sends them again",
            path.display()
        ));
    }
    if let Err(e) = journaled {
        node.report_error(format!("{me}: cannot journal the startup messages: {e}"));
        return 0;
    }
    log::info!("{me}: sent {count} message(s) from {}", dir.display());
    count
}

/// The journal's name for the number of the last start whose messages were journaled.
const MARK: &str = "startup";

/// The number of the last start whose messages the journal holds (0 before the first).
fn committed_start(node: &Node) -> u64 {
    node.journal()
        .inbox_offsets()
        .get(MARK)
        .copied()
        .unwrap_or(0)
}

/// Writes the list of startup messages journaled and not yet delivered.
fn list(path: &Path, sent: &[Sent]) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(sent).map_err(std::io::Error::from)?;
    crate::files::write_atomically(path, &bytes)
}

/// A startup message journaled, not yet delivered: where it is in the journal, and what
/// it is ([`digest`]).
#[derive(Serialize, Deserialize)]
struct Sent {
    lane: String,
    seq: u64,
    id: String,
    digest: String,
    /// The start that sent it: listed before its batch was written, it was journaled only
    /// if the journal's mark has reached this start. (0 in lists from before session 36,
    /// written only after their batch was journaled.)
    #[serde(default)]
    start: u64,
}

/// A message's identity as a startup file gives it: the SHA-256 of its JSON.
fn digest(m: &Message) -> String {
    let json = serde_json::to_vec(m).expect("a message serializes");
    crate::keys::hex(&Sha256::digest(&json))
}

/// Of this start's `messages`, those no earlier start's copy of waits for in the journal;
/// and the earlier starts' that still wait.
fn not_waiting_yet(
    node: &Node,
    messages: Vec<Message>,
    known: bool,
) -> (Vec<Message>, Vec<Sent>, u64) {
    let path = node.data.startup_sent();
    let earlier: Vec<Sent> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            crate::files::set_aside(
                &path,
                &e.to_string(),
                "and the startup messages still waiting may be sent twice",
            );
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    let committed = committed_start(node);
    // A mark lost to damage (the messages of its batch kept, still waiting): each listed
    // one is believed by its place in the journal alone, as before the mark, and the
    // next start is numbered past every start listed.
    let latest = match known {
        true => committed,
        false => earlier.iter().map(|s| s.start).fold(committed, u64::max),
    };
    let waiting: Vec<Sent> = {
        let journal = node.journal();
        // Journaled (its start's batch was: a crash may have come between listing it and
        // writing its batch, whose sequence numbers are then others'); unfinished, and not
        // finished all the same (its reply and message-log line written, the journal's
        // finish lost to a power cut: it is closed unsent).
        earlier
            .into_iter()
            .filter(|s| {
                (s.start <= committed || !known)
                    && journal.unfinished(&s.lane, s.seq)
                    && !node.resumed.listed(&s.id)
            })
            .collect()
    };
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for s in &waiting {
        *copies.entry(s.digest.as_str()).or_default() += 1;
    }
    let before = messages.len();
    let fresh: Vec<Message> = messages
        .into_iter()
        .filter(|m| match copies.get_mut(digest(m).as_str()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect();
    if fresh.len() < before {
        log::info!(
            "{}: {} startup message(s) of an earlier start still wait to be delivered: not sent again",
            node.config.node,
            before - fresh.len()
        );
    }
    (fresh, waiting, latest)
}

/// Why a startup file or folder may not be trusted, if it may not.
fn unsafe_to_read(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    if meta.file_type().is_symlink() {
        return Some(format!("{} is a symbolic link", path.display()));
    }
    let mode = meta.permissions().mode();
    (mode & 0o022 != 0).then(|| {
        format!(
            "{} can be written by users other than its owner (mode {:o}): they could run commands as this node; run: chmod go-w {}",
            path.display(),
            mode & 0o7777,
            path.display()
        )
    })
}

/// The messages of one startup file, and why any of them were refused.
fn read(path: &Path, me: &str) -> Result<(Vec<Message>, Vec<String>), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if let Some(why) = unsafe_to_read(path, &meta) {
        return Err(why);
    }
    if meta.uid() != std::fs::metadata(path.parent().unwrap_or(path)).map_or(0, |m| m.uid()) {
        return Err("owned by another user than its folder".into());
    }
    // Not through a link, not waited on if a FIFO, not read whole if huge: the start reads
    // it on the supervisor's thread, which a FIFO nobody writes to held for good (no failed
    // process restarted, no `OpProcessStop` answered).
    let text = crate::files::read_small(path, MAX_FILE_BYTES, false).map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_slice(&text).map_err(|e| format!("invalid JSON: {e}"))?;
    let items = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => return Err("expected a JSON array of messages".into()),
    };
    let (mut taken, mut refused) = (Vec::new(), Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        match message_of(item, me) {
            Ok(messages) => taken.extend(messages),
            Err(why) => refused.push(format!("message {}: {why}", i + 1)),
        }
    }
    Ok((taken, refused))
}

/// One startup message: `local` made this node's name, `fromNode` taken as where the
/// results go.
fn message_of(mut item: Value, me: &str) -> Result<Vec<Message>, String> {
    let obj = item
        .as_object_mut()
        .ok_or("a message must be a JSON object")?;
    let results_to = match obj.remove("fromNode") {
        None => None,
        Some(Value::String(s)) if s == me || s == LOCAL => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("fromNode must be a node name".into()),
    };
    if obj.get("toNode").and_then(Value::as_str) == Some(LOCAL) {
        obj.insert("toNode".into(), me.into());
    }
    if let Some(Value::Array(nodes)) = obj.get_mut("toNodes") {
        for n in nodes.iter_mut().filter(|n| n.as_str() == Some(LOCAL)) {
            *n = me.into();
        }
    }
    let messages =
        Message::from_value(&item, &crate::methods::kind_refusal).map_err(|e| e.to_string())?;
    if let Some(to) = &results_to {
        crate::subject::validate_name(to).map_err(|e| format!("bad fromNode: {e}"))?;
    }
    Ok(messages
        .into_iter()
        .map(|m| Message {
            // Only for what it sends itself: results of a message to another node come
            // back to this one, as always.
            results_to: results_to.clone().filter(|_| m.to_node == me),
            ..m
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_is_this_node_and_from_node_where_results_go() {
        let item = serde_json::json!({
            "toNode": "local", "fromNode": "central", "data": ["date"],
            "commandOrEvent": "CommandACK", "method": "CLICommand",
            "schedule": [60, 86400], "replyMethod": "TextLogging",
        });
        let m = message_of(item, "ship1").unwrap();
        assert_eq!(m[0].to_node, "ship1");
        assert_eq!(m[0].results_to.as_deref(), Some("central"));
        // To another node, results come back here as always.
        let item = serde_json::json!({
            "toNodes": ["local", "ship2"], "fromNode": "central", "data": ["x\n"],
            "commandOrEvent": "EventACK", "method": "TextLogging",
        });
        let m = message_of(item, "ship1").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].to_node, "ship2");
        assert_eq!(m[1].results_to, None);
        let bad = serde_json::json!({"toNode": "local", "fromNode": 3, "data": [],
            "commandOrEvent": "EventACK", "method": "TextLogging"});
        assert!(message_of(bad, "ship1").is_err());
    }

    /// The list is written before the batch: an entry of a start whose batch never made
    /// it to the journal (a crash, a full disk) names a sequence number another message
    /// then took. It does not pass for a copy still waiting.
    #[test]
    fn a_listed_message_whose_batch_was_never_journaled_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let node = crate::node::tests::offline_node_named(dir.path(), "ship1");
        std::fs::create_dir(node.data.startup()).unwrap();
        let boot = node.data.startup().join("boot.json");
        std::fs::write(
            &boot,
            r#"{"toNode":"central","data":["boot\n"],"commandOrEvent":"EventACK","method":"TextLogging"}"#,
        )
        .unwrap();
        let (messages, _) = read(&boot, "ship1").unwrap();
        let seq = node.journal().next_seq();
        let other = Message::new(
            "central",
            crate::message::Kind::EventAck,
            "TextLogging",
            vec!["other\n".into()],
        );
        let lane = other.subject().to_string();
        node.accept(vec![other], None).unwrap();
        let listed = |start: Option<u64>| {
            let mut sent = serde_json::json!({
                "lane": lane, "seq": seq, "id": "ship1-1-1-x", "digest": digest(&messages[0]),
            });
            if let Some(start) = start {
                sent["start"] = start.into();
            }
            std::fs::write(
                node.data.startup_sent(),
                serde_json::json!([sent]).to_string(),
            )
            .unwrap();
        };
        // Listed by a start whose batch the journal never got.
        listed(Some(committed_start(&node) + 1));
        assert_eq!(send(&node), 1);
        // Once it is journaled, the next start finds it waiting.
        assert_eq!(send(&node), 0);
        // A list from before session 36 (written after its batch) is taken at its word.
        listed(None);
        assert_eq!(send(&node), 0);
    }

    /// A bad sector that takes the journal's record of the start's number (compaction
    /// writes it alone, at the head of the file), and not the messages: they still wait,
    /// and a restart must not send them again.
    #[test]
    fn a_start_s_mark_lost_to_damage_sends_nothing_again() {
        use crate::journal::record::{decode, Record};
        let dir = tempfile::tempdir().unwrap();
        let node = crate::node::tests::offline_node_named(dir.path(), "ship1");
        std::fs::create_dir(node.data.startup()).unwrap();
        std::fs::write(
            node.data.startup().join("boot.json"),
            r#"{"toNode":"central","data":["boot\n"],"commandOrEvent":"CommandACK","method":"CLICommand"}"#,
        )
        .unwrap();
        assert_eq!(send(&node), 1);
        // Later batches, whose checkpoints say the mark was synced: its loss is the disk's.
        for i in 0..2 {
            let other = Message::new(
                "central",
                crate::message::Kind::EventAck,
                "TextLogging",
                vec![format!("other {i}\n")],
            );
            node.accept(vec![other], None).unwrap();
        }
        drop(node);
        let path = crate::journal::Journal::path(&dir.path().join("journal"));
        let bytes = std::fs::read(&path).unwrap();
        let (at, _, _) = decode(&bytes)
            .records
            .into_iter()
            .find(|(_, _, r)| matches!(r, Record::InboxOffset { file, .. } if file == MARK))
            .expect("the start's mark");
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[bytes[at as usize + 12] ^ 0x40], at + 12)
            .unwrap();
        drop(f);
        let node = crate::node::tests::offline_node_named(dir.path(), "ship1");
        let lane =
            crate::subject::Subject::new("central", crate::message::Kind::CommandAck, "CLICommand")
                .unwrap();
        assert_eq!(node.journal().lane_pending(&lane), 1);
        assert_eq!(send(&node), 0, "sent again while the first still waits");
    }

    /// A FIFO named `*.json` (or one put in a file's place) is not waited on: the start
    /// read it on the supervisor's thread, which then never ran (no restart of a failed
    /// process, no OpProcessList or OpProcessStop answered) until someone wrote to it. A
    /// file larger than any startup file is not read whole into memory.
    #[test]
    fn a_fifo_or_a_huge_file_is_refused_not_waited_on_or_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("boot.json");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        let (tx, rx) = crossbeam_channel::bounded(1);
        let at = fifo.clone();
        std::thread::spawn(move || tx.send(read(&at, "ship1")).unwrap());
        let read = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("waited on a FIFO for a writer");
        let why = read.unwrap_err();
        assert!(why.contains("not a regular file"), "{why}");
        let huge = dir.path().join("huge.json");
        let f = std::fs::File::create(&huge).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let why = super::read(&huge, "ship1").unwrap_err();
        assert!(why.contains("larger than"), "{why}");
    }

    #[test]
    fn a_file_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.json");
        std::fs::write(&path, "[]").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let why = read(&path, "ship1").unwrap_err();
        assert!(why.contains("chmod go-w"), "{why}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(&path, "ship1").is_ok());
    }
}
