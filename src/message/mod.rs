//! Messages in their three forms, as pure encode/decode functions:
//!
//! - [`Message`]: what an operator writes into `inmsg.txt`: the seed's JSON keys (`toNode`,
//!   `data`, `commandOrEvent`, `method`, optional `timeout` and `retries`), and steward's
//!   optional ones (`ttl`, `toNodes`, `methodTimeout`, `methodArgs`, the `reply…` keys,
//!   `directory`, `fileName` and `schedule`).
//! - [`Envelope`]: a message once accepted by a node: it gains a unique `id`, the sending
//!   node and the time it was accepted. This is what the journal keeps and what travels on
//!   the wire.
//! - [`Reply`]: what a receiver sends back on the message's own reply subject.
//!
//! [`parse_input`] splits the text of `inmsg.txt` into top-level JSON values itself, so that
//! one malformed array or one bad message is rejected alone and the rest of the batch still
//! goes, and so that an array still being written is recognised as incomplete, not as bad.
//!
//! The files, one concept each:
//!
//! ```text
//! mod.rs        Kind, Message, InReplyTo, and the limits (MAX_…)
//! validate.rs   one JSON value → its messages (Message::from_value), or an InputError
//! input.rs      the text of inmsg.txt → messages and rejected pieces (parse_input)
//! wire.rs       what travels: Envelope, batches, Reply and Status; DecodeError
//! ```

mod input;
mod validate;
mod wire;

pub use input::{parse_input, stretch_end, Parsed, Rejected};
pub use validate::InputError;
pub use wire::{decode_batch, encode_batch, is_batch, DecodeError, Envelope, Form, Reply, Status};

use crate::subject::Subject;
use serde::{Deserialize, Serialize};

/// The message type of the seed: present both in the subject and in the message.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    #[serde(rename = "CommandACK")]
    CommandAck,
    #[serde(rename = "CommandNACK")]
    CommandNack,
    #[serde(rename = "EventACK")]
    EventAck,
    #[serde(rename = "EventNACK")]
    EventNack,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::CommandAck,
        Kind::CommandNack,
        Kind::EventAck,
        Kind::EventNack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::CommandAck => "CommandACK",
            Kind::CommandNack => "CommandNACK",
            Kind::EventAck => "EventACK",
            Kind::EventNack => "EventNACK",
        }
    }

    /// Exact, case-sensitive, as the seed demands.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// ACK kinds wait for the receiver's reply and are retried; NACK kinds are published once.
    pub fn wants_ack(self) -> bool {
        matches!(self, Kind::CommandAck | Kind::EventAck)
    }

    pub fn is_command(self) -> bool {
        matches!(self, Kind::CommandAck | Kind::CommandNack)
    }
}

/// One message as written in `inmsg.txt` (and in `failed-messages.txt`, so it can be re-sent).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Message {
    #[serde(rename = "toNode")]
    pub to_node: String,
    pub data: Vec<String>,
    #[serde(rename = "commandOrEvent")]
    pub kind: Kind,
    pub method: String,
    /// Seconds to wait for the ACK (and the kill deadline of a CLICommand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Attempts after the first before the message is given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Seconds from acceptance during which the message is retried, whatever `retries`
    /// says: for destinations that are away for hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// More destinations: at intake the message becomes one message per node (with
    /// `toNode`'s, the union). Never on the wire.
    #[serde(rename = "toNodes", default, skip_serializing_if = "Option::is_none")]
    pub to_nodes: Option<Vec<String>>,
    /// Seconds the method may run on the receiver (`-1`: no limit); apart from `timeout`,
    /// how long the sender waits for the ACK. Without it, `timeout` is both.
    #[serde(
        rename = "methodTimeout",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub method_timeout: Option<i64>,
    /// Arguments for the method beside its data (`Console`: `["stderr"]`); on a result
    /// message, the request's `replyMethodArgs`.
    #[serde(
        rename = "methodArgs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub method_args: Option<Vec<String>>,
    /// Where the result goes: a method of the sender that takes events (`File`,
    /// `FileAppend`, `Console`, `TextLogging`, …), to which the receiver sends it as a new
    /// message; `None`: nowhere (the ACK still says how it ended). Without it the result
    /// comes back in the ACK, into `replies/` (see [`crate::reply`]).
    #[serde(
        rename = "replyMethod",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reply_method: Option<String>,
    #[serde(
        rename = "replyMethodArgs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reply_method_args: Option<Vec<String>>,
    /// `timeout` and `retries` of the result message.
    #[serde(
        rename = "replyTimeout",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reply_timeout: Option<u64>,
    #[serde(
        rename = "replyRetries",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reply_retries: Option<u32>,
    /// Where `File` and `FileAppend` write: `<dataFolder>/<directory>/<fromNode>/<fileName>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    #[serde(rename = "fileName", default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// `[intervalSeconds, totalSeconds]`: the receiver runs the method now and then every
    /// interval until the total has passed, each run's result a message of its own
    /// (`replyMethod`, required). See [`crate::schedule`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Vec<u64>>,
    /// On a message a node sends itself from its startup folder only: the node its results
    /// go to (the file's `fromNode`), as plain events of this node (see [`crate::startup`]).
    #[serde(rename = "resultsTo", default, skip_serializing_if = "Option::is_none")]
    pub results_to: Option<String>,
    /// On a result message only: the request it answers. Set by the receiver that ran it,
    /// never by an operator (refused in `inmsg.txt`).
    #[serde(rename = "inReplyTo", default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<InReplyTo>,
}

/// What a result message answers, and how the request ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InReplyTo {
    /// The request's id.
    pub id: String,
    /// The request's method.
    pub method: String,
    pub status: Status,
    #[serde(rename = "exitCode", default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The request's `replyTicket`: its sender's word that it asked for this result.
    pub ticket: String,
}

/// Why a method cannot be sent as a kind, if it cannot.
pub type KindCheck = dyn Fn(&str, Kind) -> Option<String>;

/// Most retries a message may ask for; a node away for long gets a `ttl` instead.
pub const MAX_RETRIES: u32 = 1_000_000;
/// Most nodes one message may name in `toNodes`.
pub const MAX_TO_NODES: usize = 100_000;
/// Longest a schedule may run: a year and a day.
pub const MAX_SCHEDULE_SECS: u64 = 366 * 24 * 3600;
/// Largest per-message timeout: a week. Larger values are almost surely a unit mistake.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Most bytes of data in one message (its `data` and arguments: [`Message::data_bytes`]):
/// commands and log lines, not file transfers.
pub const MAX_DATA_BYTES: usize = 256 * 1024;
/// Most bytes the copies of one message for its `toNodes` may take ([`Message::copy_bytes`]
/// each), and most a batch of input may expand to through them: every copy is journaled,
/// and a batch's copies are in memory at once while they are (a script of 250 KiB to
/// 100,000 nodes was 25 GB, and the node killed for its memory at every start, reading the
/// same input again). A batch stops at the first message past it; the rest is the next.
pub const MAX_FAN_OUT_BYTES: usize = 64 << 20;
/// What a copy of a message takes beyond its data, for [`MAX_FAN_OUT_BYTES`].
pub const COPY_FIELDS_BYTES: usize = 1024;
/// Most bytes of one message on the wire (its data plus the envelope's fields).
pub const MAX_WIRE_BYTES: usize = MAX_DATA_BYTES + 64 * 1024;
/// Longest message id.
pub const MAX_ID_LEN: usize = 256;
/// Most messages in one batch on the wire: what this node takes, and says it takes of a
/// method that does a batch's work in one go in its answer to a batch (`batchMax` on the
/// first reply), so that a sender may send it as many.
pub const MAX_BATCH: usize = 1024;
/// Most messages a sender puts in one batch to a node that has not said it takes more:
/// what every node takes, those before `batchMax` among them. One batch of this size
/// answered with a `batchMax` is enough to send bigger ones.
pub const FIRST_BATCH: usize = 256;
/// Most bytes of one batch on the wire (NATS's default payload limit is 1 MiB).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

impl Message {
    /// A message with the seed's four required keys and nothing else.
    pub fn new(to_node: &str, kind: Kind, method: &str, data: Vec<String>) -> Message {
        Message {
            to_node: to_node.to_string(),
            data,
            kind,
            method: method.to_string(),
            timeout: None,
            retries: None,
            ttl: None,
            to_nodes: None,
            method_timeout: None,
            method_args: None,
            reply_method: None,
            reply_method_args: None,
            reply_timeout: None,
            reply_retries: None,
            directory: None,
            file_name: None,
            schedule: None,
            results_to: None,
            in_reply_to: None,
        }
    }

    pub fn subject(&self) -> Subject {
        Subject {
            node: self.to_node.clone(),
            kind: self.kind,
            method: self.method.clone(),
        }
    }

    /// Bytes of data a message carries: its `data` and its arguments. What a receiver
    /// checks ([`Message::check_limits`]); intake checks [`Message::data_json_bytes`].
    pub fn data_bytes(&self) -> usize {
        let args = |a: &Option<Vec<String>>| a.iter().flatten().map(String::len).sum::<usize>();
        self.data.iter().map(String::len).sum::<usize>()
            + args(&self.method_args)
            + args(&self.reply_method_args)
    }

    /// The same data as its JSON takes it (quotes, escapes): what must fit in one message
    /// on the wire. Counted as the strings' lengths, a coloured log (an escape character
    /// takes six bytes there: `\u001b`) passed intake, and was a message too large to send
    /// once journaled.
    pub fn data_json_bytes(&self) -> usize {
        fn as_json(s: &str) -> usize {
            let escapes: usize = s
                .bytes()
                .map(|b| match b {
                    b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
                    0..=0x1f => 5,
                    _ => 0,
                })
                .sum();
            // Its quotes, and the comma after it.
            s.len() + escapes + 3
        }
        let args = |a: &Option<Vec<String>>| a.iter().flatten().map(|s| as_json(s)).sum::<usize>();
        self.data.iter().map(|s| as_json(s)).sum::<usize>()
            + args(&self.method_args)
            + args(&self.reply_method_args)
    }

    /// About what one copy of this message for a destination of `toNodes` takes, journaled
    /// and in memory: its data as JSON, and a kilobyte for its other fields and envelope.
    pub fn copy_bytes(&self) -> usize {
        self.data_json_bytes() + COPY_FIELDS_BYTES
    }
}
