//! `TailFile` `data: [path]`: follows a file on the receiving node from its end, as
//! `tail -F` does, for `methodTimeout` seconds (or `timeout`, or the node's default), and
//! sends each batch of new lines back as a result message of its own (`replyMethod`, see
//! [`crate::reply`]), journaled: lines written while the broker is away arrive when it is
//! back, in order, once. It keeps following across log rotation: a file renamed away is
//! read to its end, then the new file at the path from its start; a file cut short
//! (`truncate`, `> file`) is read again from its start.
//!
//! It wakes on inotify events in the file's folder (or every 250 ms where inotify cannot be
//! had), and at least once a second to look for a rotation. A line still being written at
//! the end goes with the ACK's summary. Without `replyMethod` the lines come back in the
//! ACK, at the end. `methodTimeout: -1` is refused: a follow must end (the handler thread
//! it holds is one of `--maxConcurrentHandlers`). Reading a node's files is a command's
//! power: only senders `--allowCommandsFrom` allows may call it.

use super::cli_command::Deadline;
use super::cli_command_cont::Stream;
use super::{Context, Method, Outcome, Senders, COMMANDS};
use crate::message::{Envelope, Kind};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct TailFile;

/// Most bytes read from the file at one look.
const READ_PER_LOOK: usize = 1024 * 1024;
/// Most result messages one follow sends (a runaway log cannot fill the journal).
const MAX_RESULTS: usize = 100_000;

impl Method for TailFile {
    fn name(&self) -> &'static str {
        "TailFile"
    }
    fn kinds(&self) -> &'static [Kind] {
        COMMANDS
    }
    fn senders(&self) -> Senders {
        Senders::Commanders
    }
    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        let [path] = envelope.message.data.as_slice() else {
            return Outcome::error("TailFile takes one path in data, e.g. [\"/var/log/syslog\"]");
        };
        let Some(follow_for) = Deadline::of(&envelope.message, ctx.config.default_timeout).after
        else {
            return Outcome::error(
                "TailFile needs an end: give methodTimeout in seconds (-1, no limit, cannot be followed)",
            );
        };
        let path = ctx.data.root.join(path);
        if let Some(why) = super::private_to_the_node(&path, ctx.data, ctx.config) {
            return Outcome::refused(format!(
                "TailFile does not follow {}: {why}",
                path.display()
            ));
        }
        let mut tail = match Tail::open(&path) {
            Ok(tail) => tail,
            Err(e) => return Outcome::error(format!("cannot follow {}: {e}", path.display())),
        };
        // Where it led when opened: a folder on the way may have been swapped since the check.
        let opened = tail.opened.as_deref();
        if let Some(why) = opened.and_then(|o| super::private_to_the_node(o, ctx.data, ctx.config))
        {
            return Outcome::refused(format!(
                "TailFile does not follow {}: {why}",
                path.display()
            ));
        }
        let watch = path.parent().and_then(crate::files::Watch::new);
        let mut stream = Stream::default();
        let until = Instant::now() + follow_for;
        // Checked again each time the path leads to another file (a rotation, or a file
        // appearing): what it leads to then may be private to the node.
        let private = |p: &Path| super::private_to_the_node(p, ctx.data, ctx.config);
        let mut stopped = None;
        loop {
            match tail.read_new(&private, |bytes| stream.take(bytes, envelope, ctx)) {
                Ok(()) => {}
                Err(Followed::Private(why)) => {
                    stopped = Some(why);
                    break;
                }
                Err(Followed::Io(e)) => {
                    log::warn!("{}: following {}: {e}", envelope.id, path.display());
                }
            }
            if stream.sent >= MAX_RESULTS {
                break;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match &watch {
                Some(watch) => watch.wait(left.min(Duration::from_secs(1))),
                None => std::thread::sleep(left.min(Duration::from_millis(250))),
            }
        }
        let mut summary = format!(
            "followed {} for {}s: {} result(s) sent, {} rotation(s)\n",
            path.display(),
            follow_for.as_secs(),
            stream.sent,
            tail.rotations
        );
        if let Some(why) = stopped {
            summary.push_str(&format!(
                "[steward: stopped: {} came to lead where TailFile does not follow: {why}]\n",
                path.display()
            ));
        }
        let mut rest = String::from_utf8_lossy(&stream.unsent).into_owned();
        if stream.dropped > 0 {
            rest.push_str(&format!(
                "\n[steward: {} bytes read before these not kept: they could not be sent]\n",
                stream.dropped
            ));
        }
        if stream.sent == 0 && crate::reply::ResultRoute::of_request(envelope).is_none() {
            // No replyMethod: the lines are the answer.
            return Outcome::ok(rest);
        }
        if !rest.is_empty() {
            summary.push_str(&format!("[steward: not sent as a result:]\n{rest}\n"));
        }
        Outcome {
            streamed: true,
            ..Outcome::ok(summary)
        }
    }
}

/// Why following stopped or paused.
enum Followed {
    /// The path now leads to what is private to the node: following ends.
    Private(&'static str),
    Io(std::io::Error),
}

impl From<std::io::Error> for Followed {
    fn from(e: std::io::Error) -> Followed {
        Followed::Io(e)
    }
}

/// A file followed by its path: the open file, how far it has been read, and which file
/// (device, inode) it is.
struct Tail {
    path: PathBuf,
    /// Where the file first opened really is (its path may have led elsewhere by then).
    opened: Option<PathBuf>,
    file: Option<File>,
    offset: u64,
    /// The last bytes read, up to [`SEEN`], which end at `offset`: still there at the next
    /// look, or the file was cut and written again meanwhile.
    seen: Vec<u8>,
    id: Option<(u64, u64)>,
    rotations: usize,
}

/// How many of the last bytes read are kept to tell a file cut and written again (see
/// [`Tail::seen`]).
const SEEN: usize = 64;

impl Tail {
    /// Opens `path` at its end (a file not there yet is followed from its start once it
    /// appears).
    fn open(path: &Path) -> std::io::Result<Tail> {
        let mut tail = Tail {
            path: path.to_path_buf(),
            opened: None,
            file: None,
            offset: 0,
            seen: Vec::new(),
            id: None,
            rotations: 0,
        };
        // Regular files only: a FIFO would block the open, a device never end (and its
        // open does what it does).
        match super::open_plain_file(path, true) {
            Ok(Some((f, real))) => {
                tail.opened = Some(real);
                let meta = f.metadata()?;
                tail.offset = meta.len();
                tail.id = Some((meta.dev(), meta.ino()));
                tail.file = Some(f);
            }
            Ok(None) => return Err(std::io::Error::other("not a regular file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(tail)
    }

    /// Hands what was appended since the last look to `each`: the rest of a file rotated
    /// away first, then the new file from its start (unless `private` says where the path
    /// leads now is not to be read); a file cut short from its start.
    fn read_new(
        &mut self,
        private: &dyn Fn(&Path) -> Option<&'static str>,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), Followed> {
        // Cut short (copytruncate) and written again since the last look, as far as the
        // last look read or further: what it read last is no longer where it was. From its
        // start, not from the middle of what was written since.
        if self.cut_and_written_again()? {
            self.rotations += 1;
            self.offset = 0;
            self.seen.clear();
        }
        self.read_to_end(&mut each)?;
        let now = match std::fs::metadata(&self.path) {
            Ok(meta) => Some((meta.dev(), meta.ino(), meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        match now {
            Some((dev, ino, _)) if self.id != Some((dev, ino)) => {
                // Rotated (or created): the old file is read to its end first, whatever
                // its size.
                while self.read_to_end(&mut each)? >= READ_PER_LOOK {}
                if let Some(why) = private(&self.path) {
                    self.file = None;
                    return Err(Followed::Private(why));
                }
                let Some((f, real)) = super::open_plain_file(&self.path, true)? else {
                    return Err(std::io::Error::other("not a regular file").into());
                };
                // Where it led when opened (a folder on the way may have been swapped).
                if let Some(why) = private(&real) {
                    return Err(Followed::Private(why));
                }
                let meta = f.metadata()?;
                let (dev, ino) = (meta.dev(), meta.ino());
                // Counted once taken: a path that leads to no regular file (a FIFO, a
                // folder) is not followed, and was one more rotation at every look.
                if self.id.is_some() {
                    self.rotations += 1;
                }
                self.file = Some(f);
                self.id = Some((dev, ino));
                self.offset = 0;
                self.seen.clear();
                self.read_to_end(&mut each)?;
            }
            Some((_, _, len)) if len < self.offset => {
                // Cut short: read again from its start.
                self.rotations += 1;
                self.offset = 0;
                self.seen.clear();
                self.read_to_end(&mut each)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the bytes last read are no longer where they were (see [`Tail::seen`]).
    fn cut_and_written_again(&self) -> std::io::Result<bool> {
        let Some(f) = &self.file else {
            return Ok(false);
        };
        if self.seen.is_empty() {
            return Ok(false);
        }
        if f.metadata()?.len() < self.offset {
            return Ok(false); // cut and not written as far: seen after the read
        }
        let mut there = vec![0u8; self.seen.len()];
        let at = self.offset - self.seen.len() as u64;
        match std::os::unix::fs::FileExt::read_exact_at(f, &mut there, at) {
            Ok(()) => Ok(there != self.seen),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Reads what was appended, at most [`READ_PER_LOOK`] a look (a log written faster than
    /// it can be sent is caught up with over several looks, each within the deadline).
    /// Returns how much it read.
    fn read_to_end(&mut self, each: &mut impl FnMut(&[u8])) -> std::io::Result<usize> {
        let Some(f) = self.file.as_mut() else {
            return Ok(0);
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = [0u8; 64 * 1024];
        let mut read = 0;
        while read < READ_PER_LOOK {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            read += n;
            let keep = n.min(SEEN);
            let from_before = (SEEN - keep).min(self.seen.len());
            self.seen.drain(..self.seen.len() - from_before);
            self.seen.extend_from_slice(&buf[n - keep..n]);
            each(&buf[..n]);
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::node::tests::offline_node_named;
    use std::io::Write;

    fn appended(tail: &mut Tail) -> String {
        let mut got = Vec::new();
        if tail
            .read_new(&|_| None, |b| got.extend_from_slice(b))
            .is_err()
        {
            panic!("cannot follow");
        }
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn a_path_that_comes_to_lead_somewhere_private_is_no_longer_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, secret) = (dir.path().join("app.log"), dir.path().join("secret"));
        std::fs::write(&path, "old\n").unwrap();
        std::fs::write(&secret, "key\n").unwrap();
        let mut tail = Tail::open(&path).unwrap();
        let secret_real = secret.canonicalize().unwrap();
        let private =
            |p: &Path| (p.canonicalize().ok().as_ref() == Some(&secret_real)).then_some("private");
        let mut got = Vec::new();
        assert!(tail
            .read_new(&private, |b| got.extend_from_slice(b))
            .is_ok());
        // "Rotated": the path is now a link to the secret.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let followed = tail.read_new(&private, |b| got.extend_from_slice(b));
        assert!(matches!(followed, Err(Followed::Private("private"))));
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn follows_appends_rotation_and_truncation_each_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut tail = Tail::open(&path).unwrap();
        assert_eq!(appended(&mut tail), "", "from the end");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"one\ntwo\n").unwrap();
        assert_eq!(appended(&mut tail), "one\ntwo\n");
        assert_eq!(appended(&mut tail), "");
        // Rotation: a line written to the old file after the rename is still read, then
        // the new file from its start.
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        f.write_all(b"late\n").unwrap();
        std::fs::write(&path, "fresh\n").unwrap();
        assert_eq!(appended(&mut tail), "late\nfresh\n");
        // Truncation: from the start again.
        std::fs::write(&path, "").unwrap();
        assert_eq!(appended(&mut tail), "");
        std::fs::write(&path, "again\n").unwrap();
        assert_eq!(appended(&mut tail), "again\n");
        assert_eq!(tail.rotations, 2);
        // Cut (copytruncate) and written again between two looks, less than was read: all
        // of what was written since, not its last bytes.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"0123456789abcdef\n").unwrap();
        assert_eq!(appended(&mut tail), "0123456789abcdef\n");
        f.set_len(0).unwrap();
        f.write_all(b"new one\n").unwrap();
        assert_eq!(appended(&mut tail), "new one\n");
        assert_eq!(tail.rotations, 3);
        // ... and written again as far as the last look read, or further: all of it too.
        f.set_len(0).unwrap();
        f.write_all(b"a longer line, longer than the last\n")
            .unwrap();
        assert_eq!(appended(&mut tail), "a longer line, longer than the last\n");
        assert_eq!(tail.rotations, 4);
        // Appends alone are not taken for a cut.
        f.write_all(b"and on\n").unwrap();
        assert_eq!(appended(&mut tail), "and on\n");
        assert_eq!(tail.rotations, 4);
    }

    #[test]
    fn a_path_that_leads_to_no_regular_file_is_not_a_rotation_at_each_look() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut tail = Tail::open(&path).unwrap();
        // Replaced by a FIFO (or a folder, or a device): not followed, and one change of
        // file, however many looks it stays there.
        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        for _ in 0..3 {
            assert!(tail.read_new(&|_| None, |_| {}).is_err());
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "fresh\n").unwrap();
        assert_eq!(appended(&mut tail), "fresh\n");
        assert_eq!(tail.rotations, 1, "one rotation, counted at each look");
    }

    /// `from`'s TailFile of `file` on ship1, for two seconds.
    fn tail_for_two_seconds(from: &str, file: &str) -> Envelope {
        let message = Message {
            method_timeout: Some(2),
            ..Message::new("ship1", Kind::CommandAck, "TailFile", vec![file.into()])
        };
        Envelope::sent(from, format!("{from}-1"), message)
    }

    #[test]
    fn lines_past_what_the_ack_keeps_are_said_to_be_missing() {
        let dir = tempfile::tempdir().unwrap();
        let node = offline_node_named(dir.path(), "ship1");
        let path = dir.path().join("app.log");
        std::fs::write(&path, "").unwrap();
        let envelope = tail_for_two_seconds("central", "app.log");
        let out = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                let line = format!("{}\n", "x".repeat(999));
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(line.repeat(400).as_bytes()).unwrap();
            });
            TailFile.handle(&envelope, &node.context())
        });
        assert!(out.output.len() < 400_000);
        assert!(
            out.output.contains("not kept"),
            "400000 bytes appended, {} in the answer, and no word of the rest",
            out.output.len()
        );
    }

    /// `schedules.json` holds every sender's scheduled requests, and TailFile must not read
    /// it out (an operator allowed `ops:TailFile` only). It is replaced through a temporary
    /// file beside it at every run of a schedule: following that temporary file's name
    /// (not there yet: followed from its start once it appears) read the schedules whole,
    /// through the descriptor it keeps across the rename.
    #[test]
    fn the_schedules_are_not_read_out_through_their_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let node = offline_node_named(dir.path(), "ship1");
        let schedules = node.data.schedules();
        let tmp_name = schedules
            .with_extension("tmp")
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let targets = [
            tmp_name,
            format!("{}.tmp", schedules.file_name().unwrap().to_string_lossy()),
        ];
        for target in targets {
            let envelope = tail_for_two_seconds("ops", &target);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let out = std::thread::scope(|s| {
                s.spawn(|| {
                    // As `Schedules::persist` does at each run's start and end.
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let secret = format!(
                            "[{{\"central's command\":\"curl -u admin:SECRET-{}\"}}]",
                            "x".repeat(4096)
                        );
                        crate::files::write_atomically(&schedules, secret.as_bytes()).unwrap();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
                let out = TailFile.handle(&envelope, &node.context());
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                out
            });
            assert!(
                !out.output.contains("SECRET"),
                "TailFile {target} read out the schedules: {}",
                out.output.chars().take(300).collect::<String>()
            );
        }
    }
}
