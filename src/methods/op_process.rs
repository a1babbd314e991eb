//! Remote process control: `OpProcessList` answers with the node's process table (what
//! `steward status` prints: each publisher and subscriber, its pending messages, restarts
//! and state); `OpProcessStop` `["<process name>"]` stops a publisher or a subscriber by the
//! name that table gives (e.g. `"publisher ship2.CommandACK.CLICommand"`).
//!
//! A stopped publisher's messages stay in the journal: it starts again with its lane's next
//! message, or at the node's next start. A lane waiting for a thread (`--maxPublishers`),
//! even its first, has its publisher in the table, and stopping it takes it out of line.
//! A stopped subscriber stays stopped until the node's next start: steward serves every
//! method it has at start, so stopping one is a pause an operator chose, not
//! configuration. The node's own processes (inbox, control
//! socket, hello) and the subscribers of `CLICommand`, `TrustedKeys`, `OpProcessStop` and
//! `OpProcessList` cannot be stopped ([`crate::supervisor::MUST_STAY`]): the node must
//! stay reachable to be put right. Both are commands: only senders `--allowCommandsFrom`
//! allows may call them.

use super::{Context, Method, Outcome, Senders, COMMANDS};
use crate::message::{Envelope, Kind};

pub struct OpProcessList;
pub struct OpProcessStop;

impl Method for OpProcessList {
    fn name(&self) -> &'static str {
        "OpProcessList"
    }
    fn kinds(&self) -> &'static [Kind] {
        COMMANDS
    }
    fn senders(&self) -> Senders {
        Senders::Commanders
    }
    fn puts_right(&self) -> bool {
        true
    }
    fn handle(&self, _envelope: &Envelope, ctx: &Context) -> Outcome {
        match ctx.processes.table() {
            Some(table) => Outcome::ok(table),
            None => Outcome::error("the supervisor did not answer (the node is stopping)"),
        }
    }
}

impl Method for OpProcessStop {
    fn name(&self) -> &'static str {
        "OpProcessStop"
    }
    fn kinds(&self) -> &'static [Kind] {
        COMMANDS
    }
    fn senders(&self) -> Senders {
        Senders::Commanders
    }
    fn puts_right(&self) -> bool {
        true
    }
    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        let [name] = envelope.message.data.as_slice() else {
            return Outcome::error(
                "OpProcessStop takes one process name in data, as OpProcessList gives it, e.g. [\"subscriber TextLogging\"]",
            );
        };
        match ctx.processes.stop(name, &envelope.from_node) {
            Ok(done) => Outcome::ok(done.0),
            Err(why) => Outcome::error(why.to_string()),
        }
    }
}
