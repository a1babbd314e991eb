//! `CLICommandCont`: runs a command as `CLICommand` does (argv in `data`, its own process
//! group, killed at `methodTimeout` or `timeout`), but sends its output back as it is
//! written: each read of complete lines becomes a result message of its own
//! (`replyMethod`, see [`crate::reply`]), journaled, so lines written while the broker is
//! away arrive when it is back, in order, once. The last result carries what is left of
//! the output (a line without its newline, steward's notes) and the exit status.
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
        last.output = rest + &last.output;
        last
    }
}

/// Output read so far and not sent: a line still being written, and what could not be
/// journaled (or, for a request without `replyMethod`, everything). Also `TailFile`'s.
#[derive(Default)]
pub(super) struct Stream {
    pub(super) unsent: Vec<u8>,
    /// Bytes past [`MAX_OUTPUT`] that could be neither sent nor kept.
    pub(super) dropped: usize,
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
        let lines = String::from_utf8_lossy(&self.unsent[..=end]).into_owned();
        match ctx.outbox.send_result(request, &Outcome::ok(lines)) {
            Ok(Some(_)) => {
                self.unsent.drain(..=end);
                self.sent += 1;
            }
            Ok(None) => {}
            Err(e) => log::warn!(
                "{}: cannot send output as it comes ({e}); it goes with the last result",
                request.id
            ),
        }
        self.cap();
    }

    fn cap(&mut self) {
        if self.unsent.len() > MAX_OUTPUT {
            let over = self.unsent.len() - MAX_OUTPUT;
            self.unsent.drain(..over);
            self.dropped += over;
        }
    }
}
