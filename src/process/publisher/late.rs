//! Replies that come after their message was given up: the `late replies` process.
//!
//! A message is given up when its attempts are spent or its time to live is over, and kept
//! in failed-messages.txt. That says no ACK came in time, not that it never ran: a command
//! allowed a `methodTimeout` longer than its attempts last runs on, and copies held in its
//! node's link while it was cut silently reach the node when the link flows again. Its
//! reply used to be dropped (its publisher had moved on, or ended), so a command that ran
//! was listed as undelivered, its output lost, and sent again from failed-messages.txt it
//! ran twice.
//!
//! Now a message given up after a send its node may have taken (one not answered "no
//! responders", or a node that said Hello within the minute: see `Publisher::await_late`)
//! is awaited a while longer ([`crate::broker::Late`]: an hour past its `methodTimeout`,
//! at most a day, at most [`LATE_AWAITED`] at once and
//! [`LATE_AWAITED_EACH_NODE`] of a node, not across a restart). A reply that
//! comes for it is checked as any reply (signed by the destination's key, over one of the
//! message's own sends, its id and sender the message's), then kept in the lane's reply
//! file with a line that says it came after the message was given up and what to do with
//! the message (still in failed-messages.txt: not to be sent again if it ran), logged and
//! reported to the central error logger. This process runs only while something is
//! awaited; the supervisor starts it when a message is given up so
//! ([`crate::supervisor::Event::AwaitLate`]).
//!
//! [`LATE_AWAITED`]: crate::broker::LATE_AWAITED
//! [`LATE_AWAITED_EACH_NODE`]: crate::broker::LATE_AWAITED_EACH_NODE

use super::finish::reply_record;
use super::*;
use crate::broker::GivenUp;

pub struct LateReplies {
    pub node: Arc<Node>,
    pub state: Arc<State>,
}

/// The process's name in the table.
pub const NAME: &str = "late replies";

impl Process for LateReplies {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), Failure> {
        let late = &self.node.broker.late;
        loop {
            let (expired, next) = late.expire(Instant::now());
            for given_up in expired {
                log::info!(
                    "{}: no reply came for {} within {}s of its being given up; it stays in {}",
                    given_up.lane,
                    given_up.id,
                    given_up.until.duration_since(given_up.at).as_secs(),
                    self.node.data.failed().display()
                );
            }
            let Some(next) = next else {
                return Ok(()); // nothing awaited: started again when something is
            };
            self.state.set(format!(
                "awaiting the late replies of {} message(s) given up",
                late.len()
            ));
            select! {
                recv(late.messages) -> msg => {
                    let Ok(msg) = msg else { return Ok(()) };
                    self.take(msg)?;
                },
                // One more awaited: said, and its deadline may be the next.
                recv(late.added) -> _ => {},
                recv(stop) -> _ => return Ok(()),
                recv(crossbeam_channel::at(next)) -> _ => {},
            }
        }
    }
}

impl LateReplies {
    /// Checks `msg` against the message it answers and keeps it. A reply that cannot be
    /// kept (a full disk) goes back into the queue and the process fails: restarted, it
    /// tries again.
    fn take(&self, msg: nats::Message) -> Result<(), Failure> {
        let late = &self.node.broker.late;
        let Some(given_up) = late.taken(&msg) else {
            return Ok(()); // kept already (a retry's copy answered too), or let go
        };
        if msg.is_no_responders() {
            return Ok(());
        }
        let to = &given_up.lane.node;
        let reply = check_reply(&self.node, to, &msg, given_up.sigs.iter())
            .and_then(|()| reply_of(&msg.data, &given_up.id, to));
        let reply = match reply {
            Ok(reply) => reply,
            Err(why) => {
                // Still awaited: a forged reply must not stand in for the real one. Said
                // once a message: a flood of forgeries is not a flood of lines.
                if late.first_not_an_answer(&msg.subject) {
                    log::warn!("{}: ignoring a late reply: {why}", given_up.lane);
                }
                return Ok(());
            }
        };
        let path = self.node.data.replies(to, &given_up.lane.method);
        let (happened, then) = after_all(&reply);
        if let Err(source) = self.keep(&given_up, &reply, then, &path) {
            if !late.requeue(&msg) {
                log::error!(
                    "{}: the late reply of {} cannot be kept, nor queued again: lost",
                    given_up.lane,
                    given_up.id
                );
            }
            return Err(Failure::retry(Error::StoreReplies { path, source }));
        }
        late.answered(&msg.subject);
        self.node
            .metrics
            .late_replies
            .with_label_values(&[given_up.lane.method.as_str()])
            .inc();
        self.node.report_error(format!(
            "{}: {} was given up {}s ago ({}), and {happened} {to} after all: {:?}{}: {}; its reply kept in {}; it is still in {}: {then}",
            given_up.lane,
            given_up.id,
            given_up.at.elapsed().as_secs(),
            given_up.why,
            reply.status,
            reply
                .exit_code
                .map(|c| format!(" exit {c}"))
                .unwrap_or_default(),
            // The receiver's text, escaped as the publisher's own line of a reply is.
            crate::files::escape_controls(reply.output.lines().next().unwrap_or("")),
            path.display(),
            self.node.data.failed().display()
        ));
        Ok(())
    }

    /// Appends `reply` to the lane's reply file, with a last line that says it came late.
    fn keep(
        &self,
        given_up: &GivenUp,
        reply: &Reply,
        then: &str,
        path: &std::path::Path,
    ) -> io::Result<()> {
        let mut reply = reply.clone();
        if !reply.output.is_empty() && !reply.output.ends_with('\n') {
            reply.output.push('\n');
        }
        reply.output.push_str(&format!(
            "[steward: this reply came {}s after the message was given up ({}); the message is in failed-messages.txt: {then}]\n",
            given_up.at.elapsed().as_secs(),
            given_up.why
        ));
        let mut record = String::new();
        reply_record(
            &mut record,
            &crate::files::now_rfc3339(),
            &given_up.id,
            &reply,
        );
        let limits = &self.node.log_budget.limits;
        crate::files::append_rotating(path, record.as_bytes(), limits.rotate_at, limits.keep)
    }
}

/// What a late reply says happened to its message on its node (said as "… `to` after
/// all"), and what to do with the message, still in failed-messages.txt.
fn after_all(reply: &Reply) -> (&'static str, &'static str) {
    if reply.interrupted {
        (
            "was interrupted on",
            "it was interrupted there, perhaps done in part or whole: check before sending it again",
        )
    } else if reply.status == Status::Refused {
        (
            "was refused by",
            "it was refused there: fix the cause, then send it again",
        )
    } else if reply.status == Status::Error {
        (
            "could not be run on",
            "it could not run there (see the reply): fix the cause, then send it again",
        )
    } else {
        ("ran on", "it ran: do not send it again")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(json: &str) -> Reply {
        Reply::decode(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_late_reply_says_what_happened_and_what_to_do_with_the_message() {
        let ran = reply(r#"{"id":"a","fromNode":"ship1","status":"ok","exitCode":3}"#);
        assert_eq!(after_all(&ran), ("ran on", "it ran: do not send it again"));
        let refused = reply(r#"{"id":"a","fromNode":"ship1","status":"refused"}"#);
        assert!(after_all(&refused)
            .1
            .contains("fix the cause, then send it again"));
        let error = reply(r#"{"id":"a","fromNode":"ship1","status":"error"}"#);
        assert_eq!(after_all(&error).0, "could not be run on");
        let interrupted =
            reply(r#"{"id":"a","fromNode":"ship1","status":"error","interrupted":true}"#);
        assert!(after_all(&interrupted)
            .1
            .contains("check before sending it again"));
    }
}
