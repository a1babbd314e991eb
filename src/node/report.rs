//! What the node tells central: error reports (through the journal, like any message, so
//! they reach central after an outage), and refusals, within a per-minute limit.

use super::*;

/// At most [`REFUSAL_REPORTS_PER_MINUTE`] refusals are reported to central each minute, of
/// messages that proved nothing and as many again of verified senders' (so strangers cannot
/// hide what a known sender tried); past that they are logged here and counted, and the
/// count is reported when the minute ends. So a flood of forged messages cannot flood the
/// journal and the link.
pub const REFUSAL_REPORTS_PER_MINUTE: u32 = 20;

/// Most bytes of a report's text (as central's ErrorLog keeps of a line): a report often
/// quotes what it is about, a message a stranger sent included, and must stay a message
/// that can be sent (a report of a report too large to send was a larger one, for ever).
pub const MAX_REPORT_BYTES: usize = crate::log_budget::MAX_ERROR_LINE;

/// `text` as reports and this node's log take it: one line, controls escaped (a stranger's
/// newline would forge log lines), within [`MAX_REPORT_BYTES`].
pub fn bounded(text: &str) -> String {
    // Cut before and after the escapes: a stranger's megabyte is not escaped whole, and an
    // escape takes up to six bytes for one.
    let text = crate::log_budget::cap_line(text, MAX_REPORT_BYTES);
    let text = crate::files::escape_controls(&text).replace('\n', "\\n");
    crate::log_budget::cap_line(&text, MAX_REPORT_BYTES).into_owned()
}

pub(super) struct Refusals {
    pub(super) since: Instant,
    /// Reported this minute: of unverified messages, of verified senders'.
    pub(super) reported: [u32; 2],
    pub(super) only_logged: u64,
}

impl Node {
    /// Logs an error and sends it to the central error logger, through the journal, so it
    /// reaches central even if the broker is down now.
    pub fn report_error(&self, text: String) {
        let text = bounded(&text);
        log::error!("{text}");
        let message = Message {
            // Errors must reach central even after a long outage of the link.
            ttl: Some(ERROR_REPORT_TTL_SECS),
            ..Message::new(
                &self.config.central_node,
                Kind::EventAck,
                "ErrorLog",
                vec![text],
            )
        };
        if let Err(e) = self.accept(vec![message], None) {
            log::error!("cannot journal the error report for the central error logger: {e}");
        }
    }

    /// Reports a message the journal holds but cannot hand out (it cannot be decoded, or
    /// breaks a message's limits): the whole of it is kept in `unreadable-messages.txt`, for
    /// an operator to find; the report names the file and quotes what fits.
    pub fn report_unreadable(&self, text: String) {
        let path = self.data.unreadable();
        let record = format!(
            "=== {}\n{text}\n",
            crate::files::rfc3339(crate::files::unix_millis())
        );
        let kept = crate::files::append_rotating(
            &path,
            record.as_bytes(),
            crate::log_budget::ROTATE_AT,
            crate::log_budget::KEEP_ROTATED,
        );
        let said = match kept {
            Ok(()) => format!("kept whole in {}", path.display()),
            Err(e) => format!("cannot be kept in {}: {e}", path.display()),
        };
        self.report_error(format!("{}: {said}: {text}", self.config.node));
    }

    /// Logs a refused message and reports it to central, within the per-minute limit.
    pub fn report_refusal(&self, text: String, verified: bool) {
        let _ = self.refusal_reports_due();
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let reported = &mut r.reported[usize::from(verified)];
        if *reported < REFUSAL_REPORTS_PER_MINUTE {
            *reported += 1;
            drop(r);
            self.report_error(text);
        } else {
            r.only_logged += 1;
            log::error!("{}", bounded(&text));
        }
    }

    /// Ends the refusal-report minute if it is over, reporting how many were only logged.
    /// Returns whether refusals only logged wait to be reported at the minute's end: call
    /// again in a second.
    pub fn refusal_reports_due(&self) -> bool {
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if r.since.elapsed() < Duration::from_secs(60) {
            return r.only_logged > 0;
        }
        let only_logged = std::mem::take(&mut r.only_logged);
        r.since = Instant::now();
        r.reported = [0, 0];
        drop(r);
        if only_logged > 0 {
            self.report_error(format!(
                "{}: {only_logged} more refused messages in the last minute (over {REFUSAL_REPORTS_PER_MINUTE} a minute are logged on {} only)",
                self.config.node, self.config.node
            ));
        }
        false
    }
}
