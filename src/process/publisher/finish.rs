//! How messages ended, kept: replies in `replies/`, failed-messages.txt, the message
//! log, then the journal's finish. What must be kept is written first and once; then
//! counted, reported and logged.

use super::*;

/// A reply that says its method ran and, for a command, exited 0.
fn said_ok(reply: &Reply) -> bool {
    reply.status == Status::Ok && reply.exit_code.is_none_or(|c| c == 0)
}

impl Publisher {
    /// Records how messages ended (reply files, failed-messages.txt, the message log),
    /// then marks them finished in the journal: only after everything about them is on
    /// disk. A batch's records go to each file with one write and one fsync.
    ///
    /// First what must be kept (replies, failed messages): if that cannot be written (a
    /// full disk), nothing is counted or reported and the publisher fails; once restarted
    /// it finishes the messages from the replies it had (the slot keeps them), and what
    /// was written before is not written again (the slot remembers it). Then what is
    /// counted, reported and logged, once.
    pub(super) fn finish(&self, done: Vec<(&Entry, Delivery)>) -> Result<(), Error> {
        let ends = self.keep(done)?;
        // Kept: now counted, reported and logged.
        let log_lines = self.count_and_report(&ends);
        // Synced before the messages are finished in the journal, so that a line lost in a
        // power cut is never that of a message the journal says is finished.
        let node = &self.node;
        let (rotate_at, keep) = (
            crate::files::MESSAGE_LOG_ROTATE_AT,
            crate::files::MESSAGE_LOG_KEEP,
        );
        if let Err(e) =
            crate::files::append_rotating(&node.data.message_log(), &log_lines, rotate_at, keep)
        {
            // Only a log: skipped, and counted.
            log::error!("cannot write the message log: {e}");
            node.metrics
                .log_skipped
                .with_label_values(&["message-log.txt"])
                .inc_by(ends.len() as u64);
        }
        let seqs: Vec<u64> = ends.iter().map(|end| end.entry.seq).collect();
        node.finish(&self.subject, &seqs);
        node.progress_all(ends.into_iter().map(|end| {
            let finished = Progress::Finished {
                outcome: end.outcome.to_string(),
                reply: end.reply,
                why: end.why,
            };
            (end.entry.envelope.id.as_str(), finished)
        }));
        Ok(())
    }

    /// Writes what must be kept of how the messages ended, once each: replies to their
    /// files, undelivered messages to failed-messages.txt (one write and fsync per file).
    fn keep<'e>(&self, done: Vec<(&'e Entry, Delivery)>) -> Result<Vec<End<'e>>, Error> {
        let node = &self.node;
        let now = crate::files::now_rfc3339();
        let mut written = self.stored_before_the_last_stop(&done);
        written.extend(self.slot().replies_written.iter().cloned());
        // Every message of the lane goes to one node and method: one replies file.
        // Sized once: a batch's records are some hundreds of kilobytes.
        let size: usize = done.iter().map(|(_, d)| record_size(d)).sum();
        let (mut records, mut ids) = (String::with_capacity(size), Vec::new());
        let mut failed = String::new();
        let mut ends = Vec::with_capacity(done.len());
        for (entry, delivery) in done {
            let end = End::of(&self.subject, entry, delivery);
            let (message, id) = (&entry.envelope.message, &entry.envelope.id);
            if let Some(reply) = &end.reply {
                if !written.contains(id) {
                    reply_record(&mut records, &now, &entry.envelope.id, reply);
                    ids.push(id.as_str());
                }
            }
            if end.why.is_some() {
                failed.push_str(&failed_record(message));
            }
            ends.push(end);
        }
        // What fails from here leaves the replies in hand kept in the slot: the restarted
        // publisher finishes their messages from them (see `Slot::acked`).
        let keep_acked = |ends: &[End]| {
            let mut slot = self.slot();
            for end in ends {
                if let Some(reply) = &end.reply {
                    slot.acked
                        .insert(end.entry.envelope.id.clone(), reply.clone());
                }
            }
        };
        if !records.is_empty() {
            let path = self.replies_file();
            let limits = &node.log_budget.limits;
            let stored = crate::files::append_rotating(
                &path,
                records.as_bytes(),
                limits.rotate_at,
                limits.keep,
            );
            if let Err(source) = stored {
                keep_acked(&ends);
                return Err(Error::StoreReplies { path, source });
            }
        }
        // The replies written are remembered in the slot only if the publisher fails now,
        // before the messages leave it: past this write nothing fails, and they leave it
        // as soon as they are finished (`Slot::done`). (Remembered at every batch, each id
        // cost a copy and two hashes.) failed-messages.txt is written last, so nothing
        // written to it is ever written again.
        if !failed.is_empty() {
            let path = node.data.failed();
            if let Err(source) = crate::files::append_shared(&path, failed.as_bytes()) {
                let ids = ids.into_iter().map(str::to_string);
                self.slot().replies_written.extend(ids);
                keep_acked(&ends);
                return Err(Error::KeepFailed { path, source });
            }
        }
        Ok(ends)
    }

    /// Counts, logs and reports (a failure, to central) how each message ended; returns
    /// their message-log.txt lines.
    fn count_and_report(&self, ends: &[End]) -> Vec<u8> {
        let node = &self.node;
        let size = ends
            .iter()
            .map(|e| e.entry.encoded.len() + LOG_LINE_END)
            .sum();
        let mut log_lines = Vec::with_capacity(size);
        // The messages finish together: one time for all of them.
        let finished = crate::files::unix_millis();
        let finished_at = crate::files::rfc3339(finished);
        // Every message of the lane has its method and kind: each metric looked up once.
        let (method, kind) = (self.subject.method.as_str(), self.subject.kind.as_str());
        let metrics = &node.metrics;
        // Made at the first acked message (a series exists once a message was acked).
        let mut latency = None;
        let mut outcomes: Vec<(&str, u64)> = Vec::new();
        // Commands one by one, even several finished at once (after a restart).
        let alone = ends.len() == 1 || self.subject.kind.is_command();
        let mut interrupted: Vec<&str> = Vec::new();
        for end in ends {
            let envelope = &end.entry.envelope;
            match outcomes.iter_mut().find(|(o, _)| *o == end.outcome) {
                Some((_, n)) => *n += 1,
                None => outcomes.push((end.outcome, 1)),
            }
            // A command (or a message alone) is logged with its reply; of a batch of events,
            // only a reply that did not say ok, the rest in one line below. A line for each
            // event was 170 bytes of log a message: 100,000 lines a second into journald
            // at the benchmark's rate, whose rate limit then drops warnings with them.
            // (An interrupted one is said once, below, with where it is kept.)
            let logged = |r: &&Reply| (alone || !said_ok(r)) && !r.interrupted;
            if let Some(reply) = end.reply.as_ref().filter(logged) {
                // One the receiver could not run (interrupted by its restart, its disk
                // full) is delivered, and still not done: said as a warning.
                let level = match reply.status {
                    Status::Error => log::Level::Warn,
                    _ => log::Level::Info,
                };
                log::log!(
                    level,
                    "{}: {} {:?}{}: {}",
                    self.subject,
                    envelope.id,
                    reply.status,
                    reply
                        .exit_code
                        .map(|c| format!(" exit {c}"))
                        .unwrap_or_default(),
                    // The receiver's text, escaped as in the logs it writes to: this log
                    // is read in a terminal too (journalctl, docker logs).
                    crate::files::escape_controls(first_line(&reply.output))
                );
            }
            if !alone && end.outcome == "interrupted" {
                // Of a batch (a receiver killed amid it: up to a batch's worth), said once
                // for all, below.
                interrupted.push(envelope.id.as_str());
            } else if let Some(why) = &end.why {
                log::warn!(
                    "{}; kept in {}",
                    // One line: a refusal's words may hold more.
                    crate::files::escape_line(why),
                    node.data.failed().display()
                );
                if matches!(end.outcome, "failed" | "interrupted") && method != "ErrorLog" {
                    // Never report a failed error report: that would loop. (A refusal the
                    // receiver reported itself.)
                    node.report_error(why.clone());
                }
            }
            log_line(
                &mut log_lines,
                end.entry,
                end.outcome,
                finished,
                &finished_at,
            );
            if end.outcome == "acked" {
                let ms = finished.saturating_sub(envelope.accepted);
                latency
                    .get_or_insert_with(|| metrics.delivery_latency.with_label_values(&[method]))
                    .observe(ms as f64 / 1000.0);
            }
        }
        if let (Some(first), Some(last)) = (interrupted.first(), interrupted.last()) {
            let why = format!(
                "{}: {} of {} messages interrupted on {}, perhaps not done ({first} … {last})",
                self.subject,
                interrupted.len(),
                ends.len(),
                self.subject.node
            );
            log::warn!("{why}; kept in {}", node.data.failed().display());
            if method != "ErrorLog" {
                node.report_error(format!("{why}; kept in failed-messages.txt"));
            }
        }
        let acked = ends.iter().filter(|end| end.reply.is_some()).count();
        // Looked for only where info is logged: a batch's replies walked for nothing else.
        if !alone && log::log_enabled!(log::Level::Info) {
            let mut ok = ends
                .iter()
                .filter(|end| end.reply.as_ref().is_some_and(said_ok));
            if let Some(first) = ok.next() {
                let (more, last) = ok.fold((0, first), |(n, _), end| (n + 1, end));
                log::info!(
                    "{}: {} of {} acked ok, {} … {}",
                    self.subject,
                    more + 1,
                    ends.len(),
                    first.entry.envelope.id,
                    last.entry.envelope.id
                );
            }
        }
        let failed = ends.iter().filter(|end| end.why.is_some()).count();
        if acked > 0 {
            metrics
                .acked
                .with_label_values(&[method])
                .inc_by(acked as u64);
        }
        if failed > 0 {
            metrics
                .failed
                .with_label_values(&[method])
                .inc_by(failed as u64);
        }
        for (outcome, n) in outcomes {
            metrics
                .finished
                .with_label_values(&[method, kind, outcome])
                .inc_by(n);
        }
        log_lines
    }

    /// Where the lane's replies are stored: its node's and method's file.
    fn replies_file(&self) -> PathBuf {
        self.node
            .data
            .replies(&self.subject.node, &self.subject.method)
    }

    /// Of the acked messages in `done` that an earlier run accepted, those whose reply it
    /// stored before a power cut took the rest (see [`crate::resumed`]).
    fn stored_before_the_last_stop(&self, done: &[(&Entry, Delivery)]) -> HashSet<String> {
        let resumed: Vec<&Entry> = done
            .iter()
            .filter(|(e, d)| matches!(d, Delivery::Acked(_)) && self.node.resumed.is_resumed(e))
            .map(|(e, _)| *e)
            .collect();
        if resumed.is_empty() {
            return HashSet::new();
        }
        let ids: Vec<&str> = resumed.iter().map(|e| e.envelope.id.as_str()).collect();
        let found = self
            .node
            .resumed
            .stored_replies(&self.subject, &self.replies_file(), &ids);
        if let Some(first) = ids.iter().find(|id| found.contains(**id)) {
            log::info!(
                "{}: {} reply(ies) from {first} on were stored before the last stop; not stored again",
                self.subject,
                found.len()
            );
        }
        found
    }
}

/// How one message ended: "acked", "published", "refused", "interrupted" or "failed", with
/// its reply, and why it was not delivered, or not done (refused, interrupted, failed).
struct End<'e> {
    entry: &'e Entry,
    outcome: &'static str,
    reply: Option<Reply>,
    why: Option<String>,
}

impl<'e> End<'e> {
    fn of(subject: &Subject, entry: &'e Entry, delivery: Delivery) -> End<'e> {
        let id = &entry.envelope.id;
        let (outcome, why, reply) = match delivery {
            Delivery::Acked(reply) if reply.status == Status::Refused => {
                // The receiver reported the refusal to central itself; keep it.
                let why = format!("refused by {}: {}", reply.from_node, reply.output);
                ("refused", Some(why), Some(reply))
            }
            // Delivered, and perhaps not done (the receiver was killed while it ran, and
            // never runs it again): kept where an operator finds what to send again.
            Delivery::Acked(reply) if reply.interrupted => {
                let why = format!(
                    "{subject}: {id} interrupted on {}, perhaps not done: {}",
                    reply.from_node, reply.output
                );
                ("interrupted", Some(why), Some(reply))
            }
            Delivery::Acked(reply) => ("acked", None, Some(reply)),
            Delivery::Published => ("published", None, None),
            Delivery::Failed(why) => {
                let why = format!("{subject}: {id} not delivered: {why}");
                ("failed", Some(why), None)
            }
            Delivery::Stopped | Delivery::Parked { .. } => {
                unreachable!("a stopped or yielded delivery is not finished")
            }
        };
        End {
            entry,
            outcome,
            reply,
            why,
        }
    }
}

/// What [`log_line`] adds to a message's envelope, at most.
const LOG_LINE_END: usize = 120;

/// About what [`reply_record`] writes of a delivery (enough for its reply's).
fn record_size(delivery: &Delivery) -> usize {
    match delivery {
        Delivery::Acked(reply) => 160 + reply.id.len() + reply.output.len(),
        _ => 0,
    }
}

/// Appends a message's message-log.txt line to `out`: its envelope's JSON object, with how
/// and when it ended as its last fields (`outcome`, `finished`, `finishedUnixMs`).
fn log_line(out: &mut Vec<u8>, entry: &Entry, outcome: &str, finished: u64, finished_at: &str) {
    // The envelope as journaled, a JSON object: its closing brace, taken off for the
    // fields after.
    let object = entry.encoded.trim_ascii_end();
    debug_assert_eq!(object.last(), Some(&b'}'));
    out.extend_from_slice(&object[..object.len().saturating_sub(1)]);
    out.extend_from_slice(
        format!(
            ",\"outcome\":\"{outcome}\",\"finished\":\"{finished_at}\",\"finishedUnixMs\":{finished}}}\n"
        )
        .as_bytes(),
    );
}

/// A reply as `replies/<node>.<method>.log` keeps it, stored at `now`: a header line, then
/// the output (ended by a newline). The header ends with the output's length and CRC-32
/// (`bytes=… crc=…`, see [`crate::resumed::ReplyHeader`]), so that a record a power cut
/// left in part is told from a whole one.
pub(super) fn reply_record(out: &mut String, now: &str, id: &str, reply: &Reply) {
    use std::fmt::Write;
    let end = if reply.output.ends_with('\n') || reply.output.is_empty() {
        ""
    } else {
        "\n"
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(reply.output.as_bytes());
    crc.update(end.as_bytes());
    let _ = write!(
        out,
        "=== {} id={} from={} status={:?}{} bytes={} crc={:08x}\n{}{}",
        now,
        id,
        reply.from_node,
        reply.status,
        reply
            .exit_code
            .map(|c| format!(" exit={c}"))
            .unwrap_or_default(),
        reply.output.len() + end.len(),
        crc.finalize(),
        reply.output,
        end
    );
}

/// A message that was not delivered, in inmsg.txt form for failed-messages.txt.
fn failed_record(message: &crate::message::Message) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(&[message]).expect("a Message serializes")
    )
}

/// The first line of a reply's output with anything on it, for a log line: a command that
/// wrote nothing and was killed has the kill note second.
pub(super) fn first_line(output: &str) -> &str {
    output.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Envelope, Kind, Message};

    #[test]
    fn a_message_log_line_is_the_envelope_with_how_and_when_it_ended() {
        let mut message = Message::new("ship1", Kind::CommandAck, "CLICommand", vec!["df".into()]);
        message.method_timeout = Some(30);
        let envelope = Envelope {
            id: "central-1-1-ab".into(),
            from_node: "central".into(),
            accepted: 1_795_000_000_000,
            reply_ticket: Some("ticket \"quoted\"".into()),
            grant: None,
            message,
        };
        let entry = Entry::new(1, envelope.clone());
        let mut out = Vec::new();
        log_line(
            &mut out,
            &entry,
            "acked",
            1_795_000_000_123,
            "2026-11-18T08:26:40.123Z",
        );
        log_line(&mut out, &entry, "failed", 7, "1970-01-01T00:00:00.007Z");
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let mut want = serde_json::to_value(&envelope).unwrap();
        want["outcome"] = "acked".into();
        want["finished"] = "2026-11-18T08:26:40.123Z".into();
        want["finishedUnixMs"] = 1_795_000_000_123u64.into();
        assert_eq!(line, want);
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["outcome"], "failed");
        assert_eq!(second["finishedUnixMs"], 7);
    }
}
