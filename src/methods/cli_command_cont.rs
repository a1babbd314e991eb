//! `CLICommandCont`: runs a command as `CLICommand` does (argv in `data`, its own process
//! group, killed at `methodTimeout` or `timeout`), but sends its output back as it is
//! written: each read of complete lines becomes a result message of its own
//! (`replyMethod`, see [`crate::reply`]), journaled, so lines written while the broker is
//! away arrive when it is back, in order, once. The last result carries what is left of
//! the output (a line without its newline, steward's notes: a status other than 0, or a
//! signal, as a line of its own) and the exit status.
//!
//! Without `replyMethod` nothing can go back before the end: it is `CLICommand`, the whole
//! output in the ACK. A result that cannot be journaled (a full disk, or one below the
//! free-space floor, `--minFreeBytesForLogs`) is kept and goes with the last one, up to
//! [`MAX_OUTPUT`].

use super::cli_command::{self, Deadline, MAX_OUTPUT};
use super::{Context, Method, Outcome, Senders, COMMANDS};
use crate::message::{Envelope, Kind};

pub struct CliCommandCont;

impl Method for CliCommandCont {
    fn name(&self) -> &'static str {
        "CLICommandCont"
    }
    fn kinds(&self) -> &'static [Kind] {
        COMMANDS
    }
    fn senders(&self) -> Senders {
        Senders::Commanders
    }
    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        let deadline = Deadline::of(&envelope.message, ctx.config.default_timeout);
        let (argv, cwd) = (&envelope.message.data, &ctx.data.root);
        if crate::reply::ResultRoute::of_request(envelope).is_none() {
            return cli_command::run(argv, cwd, deadline);
        }
        let mut stream = Stream::default();
        let mut each = |bytes: &[u8]| stream.take(bytes, envelope, ctx);
        let mut last = cli_command::run_with(argv, cwd, deadline, Some(&mut each));
        let mut rest = String::from_utf8_lossy(&stream.unsent).into_owned();
        if stream.dropped > 0 {
            rest.push_str(&format!(
                "\n[steward: {} bytes of output not kept: they could not be sent]\n",
                stream.dropped
            ));
        }
        // Steward's notes begin a line of their own: after a line cut short, that ends it;
        // after whole lines (all of them sent), no empty line between.
        let notes = match rest.is_empty() || rest.ends_with('\n') {
            true => last.output.strip_prefix('\n').unwrap_or(&last.output),
            false => &last.output,
        };
        last.output = rest + notes;
        last
    }
}

/// Output read so far and not sent: a line still being written, and what could not be
/// journaled (or, for a request without `replyMethod`, everything). Also `TailFile`'s.
#[derive(Default)]
pub(super) struct Stream {
    pub(super) unsent: Vec<u8>,
    /// Bytes past [`MAX_OUTPUT`] that could be neither sent nor kept.
    pub(super) dropped: u64,
    /// Result messages sent.
    pub(super) sent: usize,
}

impl Stream {
    /// Takes a piece of output: its complete lines go back as a result now.
    pub(super) fn take(&mut self, bytes: &[u8], request: &Envelope, ctx: &Context) {
        self.unsent.extend_from_slice(bytes);
        let Some(end) = self.unsent.iter().rposition(|b| *b == b'\n') else {
            return self.cap();
        };
        // Below the free-space floor, output is not journaled (a command streaming for ever
        // to a sender that is away would fill the disk the journal needs): it is kept, up to
        // [`MAX_OUTPUT`], for the last result, the rest counted.
        if ctx.log_budget.check_free_space(&ctx.data.root).is_err() {
            return self.cap();
        }
        // In as many results as they take: output kept while none could be sent may be
        // more than one result carries, and a result cuts what it cannot carry.
        let room = ctx.outbox.result_room(&request.message);
        let mut end = end + 1;
        while end > 0 {
            let piece = piece(&self.unsent[..end], room);
            let lines = String::from_utf8_lossy(&self.unsent[..piece]).into_owned();
            match ctx.outbox.send_result(request, &Outcome::ok(lines)) {
                Ok(Some(_)) => {
                    self.unsent.drain(..piece);
                    self.sent += 1;
                    end -= piece;
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!(
                        "{}: cannot send output as it comes ({e}); it goes with the last result",
                        request.id
                    );
                    break;
                }
            }
        }
        self.cap();
    }

    /// Keeps at most [`MAX_OUTPUT`] bytes unsent, counting what it drops.
    fn cap(&mut self) {
        if self.unsent.len() > MAX_OUTPUT {
            let over = self.unsent.len() - MAX_OUTPUT;
            self.unsent.drain(..over);
            self.dropped += over as u64;
        }
    }
}

/// How many of `lines`' first bytes one result carries (`room`, as [`crate::reply::wire`]
/// counts): all of them, or whole lines that fit, or (one line longer than a result) as
/// much of it as fits, never in the middle of a character.
fn piece(lines: &[u8], room: usize) -> usize {
    let wire = |b: &[u8]| crate::reply::wire(&String::from_utf8_lossy(b));
    let mut n = lines.len();
    // Arguments that leave (almost) no room: one result, cut as it would be.
    if room < MAX_OUTPUT / 4 {
        return n;
    }
    while n > 1 && wire(&lines[..n]) > room {
        // In u64: on a 32-bit node (armv7) n × room overflows a usize.
        let within = (n as u64 * room as u64 / wire(&lines[..n]) as u64) as usize;
        let within = within.min(n - 1);
        n = match lines[..within].iter().rposition(|b| *b == b'\n') {
            Some(at) => at + 1,
            None => {
                let mut cut = within.max(1);
                // A character is at most four bytes: past three continuation bytes these
                // are not characters (binary output), cut where they fit, not a byte a
                // result.
                let floor = cut.saturating_sub(3).max(1);
                while cut > floor && lines[cut] & 0xC0 == 0x80 {
                    cut -= 1;
                }
                cut
            }
        };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, Status};
    use crate::node::tests::offline_node_named;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// An outbox whose journal is full until `full` is cleared: each result it takes is
    /// kept as the result message would carry it.
    struct Outbox {
        full: AtomicBool,
        sent: Mutex<Vec<String>>,
    }

    impl super::super::Outbox for Outbox {
        fn report_error(&self, _text: String) {}
        fn send_result(
            &self,
            request: &Envelope,
            outcome: &Outcome,
        ) -> std::io::Result<Option<String>> {
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("no space left on device"));
            }
            let m = crate::reply::result_message(request, outcome, 0).expect("a result");
            self.sent.lock().unwrap().push(m.data.concat());
            Ok(Some(format!("r{}", self.sent.lock().unwrap().len())))
        }
        fn send(&self, _messages: Vec<Message>) -> std::io::Result<Vec<String>> {
            unreachable!()
        }
        fn result_room(&self, request: &Message) -> usize {
            crate::reply::result_room(request, 0)
        }
    }

    #[test]
    fn output_kept_while_results_cannot_be_journaled_arrives_whole_once_they_can() {
        let dir = tempfile::tempdir().unwrap();
        let node = offline_node_named(dir.path(), "ship1");
        let outbox = Outbox {
            full: AtomicBool::new(true),
            sent: Mutex::new(Vec::new()),
        };
        let ctx = Context {
            outbox: &outbox,
            ..node.context()
        };
        // 250 lines of 1000 bytes (under MAX_OUTPUT: all kept while the disk is full),
        // then, once there is room again, 20 more.
        let script = "for i in $(seq 1 250); do printf '%0999d\\n' $i; done; sleep 1; \
                      for i in $(seq 251 270); do printf '%0999d\\n' $i; done";
        let envelope = Envelope {
            id: "central-1".into(),
            from_node: "central".into(),
            accepted: 0,
            reply_ticket: Some("00".repeat(64)),
            grant: None,
            message: Message {
                method_timeout: Some(20),
                reply_method: Some("FileAppend".into()),
                directory: Some("out".into()),
                file_name: Some("cmd.log".into()),
                ..Message::new(
                    "ship1",
                    Kind::CommandAck,
                    "CLICommandCont",
                    vec!["sh".into(), "-c".into(), script.into()],
                )
            },
        };
        let last = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(500));
                outbox.full.store(false, Ordering::SeqCst);
            });
            CliCommandCont.handle(&envelope, &ctx)
        });
        assert_eq!(last.status, Status::Ok, "{}", last.output);
        // The last result, as the subscriber sends it.
        let last = crate::reply::result_message(&envelope, &last, 0).unwrap();
        let mut got = outbox.sent.lock().unwrap().concat();
        got.push_str(&last.data.concat());
        let lines: Vec<&str> = got.lines().filter(|l| l.len() == 999).collect();
        let want: Vec<String> = (1..=270).map(|i| format!("{i:0999}")).collect();
        let missing: Vec<usize> = (1..=270)
            .filter(|i| !lines.contains(&want[i - 1].as_str()))
            .collect();
        assert!(
            missing.is_empty() && lines.len() == 270,
            "lines missing: {missing:?}; {} lines; notes: {:?}",
            lines.len(),
            got.lines()
                .filter(|l| l.starts_with("[steward"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_long_line_of_continuation_bytes_is_not_sent_a_byte_a_result() {
        let mut lines = vec![0x80u8; 200_000];
        lines.push(b'\n');
        let room = crate::reply::result_room(
            &Message::new(
                "ship1",
                crate::message::Kind::CommandAck,
                "CLICommandCont",
                vec![],
            ),
            0,
        );
        let n = piece(&lines, room);
        assert!(
            n > room / 8,
            "{n} bytes of {} in one result of {room}",
            lines.len()
        );
        let wire = crate::reply::wire(&String::from_utf8_lossy(&lines[..n]));
        assert!(wire <= room, "{wire} > {room}");
    }
}
