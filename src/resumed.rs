//! Messages an earlier run accepted and did not finish, and what that run had done with them
//! all the same: the sender's half of "stored once" across a power cut.
//!
//! The publisher records how a message ended in this order, each fsync'd: its reply in
//! `replies/`, `failed-messages.txt` if it failed, its line in `message-log.txt`; only then
//! is it finished in the journal (`DoneThrough`), which is synced with the journal's next
//! sync, within half a second (see [`crate::journal`]). So a power cut can take the
//! `DoneThrough` and leave the rest: the message comes back at the next start as
//! unfinished. Sent again, the receiver would answer from its stored reply (nothing runs
//! twice), and the sender would store that reply, and list the message, a second time.
//!
//! So a node that starts with unfinished messages first reads the end of
//! `message-log.txt` its last run left: the ids listed in that run's last [`WINDOW`], at
//! most [`TAIL_BYTES`] of it. Then:
//!
//! - a resumed message listed there was finished before the cut, its reply stored with
//!   it: it is marked finished at once, not sent again ([`Resumed::finished`]);
//! - a resumed message not listed may still have had its reply stored, if the cut came
//!   between the reply's fsync and the line's. That reply can only be among the last
//!   records of its reply file, those of the lane's last finish before the cut: its
//!   reply is looked for there, backwards from the end, before it is stored
//!   ([`Resumed::stored_replies`]). The look stops at a record of a listed message, one
//!   older than the window, or [`TAIL_BYTES`] back; and once one resumed reply of a lane
//!   is not found, the lane's later ones are not looked for (a lane stores its replies in
//!   order).
//!
//! The bounds cost nothing in the common case (a window covers ten journal syncs, and
//! [`TAIL_BYTES`] about a second of the benchmark's peak event rate); past them, a message
//! whose finish record stayed unsynced that long could be stored and listed twice, never
//! lost. A start with nothing unfinished reads nothing. The ids are kept as 64-bit hashes:
//! at most [`TAIL_BYTES`] of lines, under a megabyte.

use crate::journal::Entry;
use crate::subject::Subject;
use std::collections::HashSet;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// How far back from its last line message-log.txt is read at start, in milliseconds: ten
/// times the journal's sync period.
pub const WINDOW: u64 = 5_000;
/// How much of the end of a file is read at most, for message-log.txt at start and for a
/// lane's reply file: more than one batch's replies (the broker's payload limit, 1 MiB by
/// default).
pub const TAIL_BYTES: u64 = 16 << 20;
/// How much is read at a time, backwards.
const CHUNK: u64 = 64 << 10;

/// What this run resumed, and what the last run listed before it stopped.
pub struct Resumed {
    /// Messages numbered below this were accepted by an earlier run.
    first_new_seq: u64,
    /// Hashes of the ids message-log.txt listed in the last run's last [`WINDOW`].
    listed: HashSet<u64>,
    /// The start of that window, written as reply file headers write times: older replies
    /// are not looked at.
    since: Option<String>,
    /// Lanes whose resumed replies need not be looked for any more.
    looked_up: Mutex<HashSet<String>>,
}

/// The fields of a message-log.txt line read here.
#[derive(serde::Deserialize)]
struct Listed {
    id: String,
    #[serde(rename = "finishedUnixMs")]
    finished: u64,
}

impl Resumed {
    /// What a start finds: the journal's first sequence number for this run, and whether
    /// it holds unfinished messages (if not, nothing is read). The message log is read on
    /// a best-effort basis: if it cannot be read, nothing is skipped (at worst, stored
    /// twice).
    pub fn open(message_log: &Path, first_new_seq: u64, anything_unfinished: bool) -> Resumed {
        let mut resumed = Resumed {
            first_new_seq,
            listed: HashSet::new(),
            since: None,
            looked_up: Mutex::new(HashSet::new()),
        };
        if !anything_unfinished {
            return resumed;
        }
        let mut last = None;
        let read = lines_backward(message_log, TAIL_BYTES, |line| {
            // A line torn by the cut, or not steward's: passed over.
            let Ok(l) = serde_json::from_slice::<Listed>(line) else {
                return true;
            };
            let last = *last.get_or_insert(l.finished);
            if l.finished.saturating_add(WINDOW) < last {
                return false;
            }
            resumed.listed.insert(key(&l.id));
            true
        });
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "cannot read {} to see what the last run finished: {e}; resumed messages are sent again",
                message_log.display()
            ),
        }
        resumed.since = last.map(|t| crate::files::rfc3339(t.saturating_sub(WINDOW)));
        if !resumed.listed.is_empty() {
            log::info!(
                "{} message(s) listed in the last {}s of {}: any of them still unfinished in the journal is finished now",
                resumed.listed.len(),
                WINDOW / 1000,
                message_log.display()
            );
        }
        resumed
    }

    /// Whether a message was accepted by an earlier run.
    pub fn is_resumed(&self, entry: &Entry) -> bool {
        entry.seq < self.first_new_seq
    }

    /// Whether a resumed message was finished by the earlier run, though the journal lost
    /// its finish record: its reply and its message-log.txt line are on disk.
    pub fn finished(&self, entry: &Entry) -> bool {
        self.is_resumed(entry) && self.listed.contains(&key(&entry.envelope.id))
    }

    /// Of `ids`, resumed messages of `lane` whose replies are about to be stored in `path`,
    /// those whose reply the earlier run stored already (see the module docs).
    pub fn stored_replies(&self, lane: &Subject, path: &Path, ids: &[&str]) -> HashSet<String> {
        let lane = lane.to_string();
        let looked_up = |lanes: &Mutex<HashSet<String>>| {
            lanes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&lane)
        };
        if ids.is_empty() || looked_up(&self.looked_up) {
            return HashSet::new();
        }
        let mut wanted: HashSet<&str> = ids.iter().copied().collect();
        let mut found = HashSet::new();
        let read = lines_backward(path, TAIL_BYTES, |line| {
            let Some((at, id)) = reply_header(line) else {
                return true;
            };
            if self.since.as_deref().is_some_and(|since| at < since) {
                return false;
            }
            if wanted.remove(id) {
                found.insert(id.to_string());
                return !wanted.is_empty();
            }
            // Before a listed message's reply, everything was listed too.
            !self.listed.contains(&key(id))
        });
        if let Err(e) = read {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!(
                    "cannot look for replies already stored in {}: {e}; storing them",
                    path.display()
                );
            }
        }
        if found.len() < ids.len() {
            self.looked_up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(lane);
        }
        found
    }
}

fn key(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// A reply file's record header, `=== <time> id=<id> from=…`: its time and id.
fn reply_header(line: &[u8]) -> Option<(&str, &str)> {
    let line = std::str::from_utf8(line.strip_prefix(b"=== ")?).ok()?;
    let (at, rest) = line.split_once(" id=")?;
    let (id, _) = rest.split_once(" from=")?;
    Some((at, id))
}

/// Calls `each` with the complete lines of the last `max_bytes` of `path`, last first,
/// until it returns false. A line cut by the bound is not passed.
fn lines_backward(
    path: &Path,
    max_bytes: u64,
    mut each: impl FnMut(&[u8]) -> bool,
) -> io::Result<()> {
    let file = File::open(path)?;
    let end = file.metadata()?.len();
    let bound = end.saturating_sub(max_bytes);
    let mut pos = end;
    // The head of the earliest line read so far, whose start is further back.
    let mut head = Vec::new();
    while pos > bound {
        let n = (pos - bound).min(CHUNK);
        let mut buf = vec![0; n as usize];
        file.read_exact_at(&mut buf, pos - n)?;
        pos -= n;
        buf.extend_from_slice(&head);
        let complete_from = if pos == 0 {
            0
        } else {
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => {
                    head = buf;
                    continue;
                }
            }
        };
        for line in buf[complete_from..].split(|&b| b == b'\n').rev() {
            if !line.is_empty() && !each(line) {
                return Ok(());
            }
        }
        buf.truncate(complete_from.saturating_sub(1));
        head = buf;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Envelope, Kind, Message};

    fn entry(seq: u64, id: &str) -> Entry {
        Entry::new(
            seq,
            Envelope {
                id: id.into(),
                from_node: "central".into(),
                accepted: 1,
                reply_ticket: None,
                grant: None,
                message: Message::new("ship1", Kind::CommandAck, "CLICommand", vec!["x".into()]),
            },
        )
    }

    fn line(id: &str, finished: u64) -> String {
        format!("{{\"data\":[\"x\"],\"finishedUnixMs\":{finished},\"id\":\"{id}\",\"outcome\":\"acked\"}}\n")
    }

    fn header(id: &str, at_ms: u64) -> String {
        format!(
            "=== {} id={id} from=ship1 status=Ok exit=0\noutput of {id}\n",
            crate::files::rfc3339(at_ms)
        )
    }

    #[test]
    fn lines_are_read_last_first_across_chunks_and_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let long = "y".repeat(3 * CHUNK as usize);
        let text = format!("first\n{long}\nsecond\nthird");
        std::fs::write(&path, &text).unwrap();
        let mut seen = Vec::new();
        lines_backward(&path, u64::MAX, |l| {
            seen.push(String::from_utf8(l.to_vec()).unwrap());
            true
        })
        .unwrap();
        assert_eq!(seen, ["third", "second", long.as_str(), "first"]);
        // Bounded: the line cut by the bound is not passed.
        let mut seen = Vec::new();
        lines_backward(&path, 10, |l| {
            seen.push(String::from_utf8(l.to_vec()).unwrap());
            true
        })
        .unwrap();
        assert_eq!(seen, ["third"]);
        // Stopped when asked.
        let mut n = 0;
        lines_backward(&path, u64::MAX, |_| {
            n += 1;
            false
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_resumed_message_listed_in_the_last_window_was_finished() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("message-log.txt");
        let t = 1_800_000_000_000;
        let text = [
            line("old", t - WINDOW - 1),
            line("a", t - 10),
            line("b", t),
            "{\"torn".to_string(),
        ]
        .concat();
        std::fs::write(&log, text).unwrap();
        let r = Resumed::open(&log, 100, true);
        assert!(r.finished(&entry(7, "a")));
        assert!(r.finished(&entry(8, "b")));
        assert!(!r.finished(&entry(9, "old")), "older than the window");
        assert!(!r.finished(&entry(9, "c")));
        // Accepted by this run: never taken for finished.
        assert!(!r.finished(&entry(100, "a")));
        // A start with nothing unfinished reads nothing.
        assert!(!Resumed::open(&log, 100, false).finished(&entry(7, "a")));
        // No message log yet: nothing was finished.
        assert!(!Resumed::open(&dir.path().join("none"), 100, true).finished(&entry(7, "a")));
    }

    #[test]
    fn a_reply_stored_just_before_the_cut_is_found_and_the_look_stops_at_listed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("message-log.txt");
        let replies = dir.path().join("ship1.CLICommand.log");
        let t = 1_800_000_000_000;
        std::fs::write(&log, [line("a", t - 20), line("b", t - 10)].concat()).unwrap();
        // b was listed; c and d were stored after it, then the cut.
        std::fs::write(
            &replies,
            [
                header("z", t - 30),
                header("a", t - 20),
                header("b", t - 10),
                header("c", t - 5),
                header("d", t - 1),
            ]
            .concat(),
        )
        .unwrap();
        let lane = Subject::parse("ship1.CommandACK.CLICommand").unwrap();
        let r = Resumed::open(&log, 100, true);
        let found = r.stored_replies(&lane, &replies, &["c"]);
        assert_eq!(found, HashSet::from(["c".to_string()]));
        // d was stored, e was not: the lane is looked up then.
        let found = r.stored_replies(&lane, &replies, &["d", "e"]);
        assert_eq!(found, HashSet::from(["d".to_string()]));
        assert!(r.stored_replies(&lane, &replies, &["d"]).is_empty());
        // The look stops at b's reply: z, before it, is not found.
        let other = Subject::parse("ship2.CommandACK.CLICommand").unwrap();
        assert!(r.stored_replies(&other, &replies, &["z"]).is_empty());
        // An output line is not a header.
        assert_eq!(reply_header(b"output of c"), None);
        let (record, at) = (header("c", t), crate::files::rfc3339(t));
        let first = record.lines().next().unwrap();
        assert_eq!(reply_header(first.as_bytes()), Some((at.as_str(), "c")));
    }
}
