//! `ReplyAgain`: a sender asks a node again for the reply of a message it gave up, which
//! runs nothing. Steward's own: the sender's `late replies` process sends it (see
//! [`crate::process::publisher::LateReplies`]); intake refuses it from an operator.
//!
//! A reply a node sends is published once. If its sender cannot hear it then (stopped for
//! an upgrade, its link cut), it is gone, and nothing asked for it again: a message given
//! up is not sent again, as it could run twice. Nor did anything tell a sender that a
//! node killed while running its command never will reply. The node keeps what it needs
//! to answer both in its record of what it received ([`crate::received`]): the reply it
//! sent, or that the message was running when it died. So a `ReplyAgain` carrying the
//! given-up message's own id is answered from that record, on the sender's reply subject
//! for that message, signed over the request's own signature: the stored reply as it was,
//! or the error a retry of an interrupted message gets. A message not known there (never
//! received, forgotten past the record's bounds) or still running gets no answer: its own
//! reply, if it ever comes, answers it.
//!
//! Any node this one trusts may ask, and only about its own messages: the record is keyed
//! by the verified sender, so no sender can read another's replies. It changes nothing, so
//! a replay (which the counters refuse besides) gets an answer that was its sender's
//! already.

use super::{Context, Method, Outcome, Senders};
use crate::message::{Envelope, Kind};

/// The method's name, in subjects.
pub const NAME: &str = "ReplyAgain";

/// Why intake refuses it.
pub const NOT_SENT: &str = "ReplyAgain is steward's own: a node's late replies process sends it to ask for the reply of a message it gave up; it is not sent from inmsg.txt";

pub struct ReplyAgain;

impl Method for ReplyAgain {
    fn name(&self) -> &'static str {
        NAME
    }
    /// A command with an answer: an ask without one would be for nothing.
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::CommandAck]
    }
    fn senders(&self) -> Senders {
        Senders::Fleet
    }
    /// Nothing is recorded: it runs nothing, and asked twice it answers the same.
    fn remembered(&self) -> bool {
        false
    }
    fn recalls(&self) -> bool {
        true
    }
    /// Never run: the subscriber answers it from the record (`recalls`).
    fn handle(&self, envelope: &Envelope, _ctx: &Context) -> Outcome {
        Outcome::error(format!("{NAME} {} runs nothing", envelope.id))
    }
}
