//! Messages in their three forms, as pure encode/decode functions:
//!
//! - [`Message`]: what an operator writes into `inmsg.txt`, exactly the seed's JSON keys
//!   (`toNode`, `data`, `commandOrEvent`, `method`, optional `timeout` and `retries`).
//! - [`Envelope`]: a message once accepted by a node: it gains a unique `id`, the sending
//!   node and the time it was accepted. This is what the journal keeps and what travels on
//!   the wire.
//! - [`Reply`]: what a receiver sends back on the message's own reply subject.
//!
//! [`parse_input`] splits the text of `inmsg.txt` into top-level JSON values itself, so that
//! one malformed array or one bad message is rejected alone and the rest of the batch still
//! goes, and so that an array still being written is recognised as incomplete, not as bad.

use crate::subject::{validate_name, NameError, Subject};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

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

/// The keys a message in `inmsg.txt` may have; anything else (including `ToNode`) is an error.
const KEYS: [&str; 16] = [
    "toNode",
    "data",
    "commandOrEvent",
    "method",
    "timeout",
    "retries",
    "ttl",
    "toNodes",
    "methodTimeout",
    "methodArgs",
    "replyMethod",
    "replyMethodArgs",
    "replyTimeout",
    "replyRetries",
    "directory",
    "fileName",
];

/// Largest per-message timeout: a week. Larger values are almost surely a unit mistake.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Most bytes of `data` in one message: commands and log lines, not file transfers.
pub const MAX_DATA_BYTES: usize = 256 * 1024;
/// Most bytes of one message on the wire (its data plus the envelope's fields).
pub const MAX_WIRE_BYTES: usize = MAX_DATA_BYTES + 64 * 1024;
/// Longest message id.
const MAX_ID_LEN: usize = 256;
/// Most messages in one batch on the wire.
pub const MAX_BATCH: usize = 256;
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

    /// Validates one JSON value from `inmsg.txt` as a message, and makes it one message per
    /// destination (`toNode` and `toNodes`: each gets its own id, retries and ACK). One bad
    /// destination refuses them all. `refusal` says why this build cannot send a method
    /// as a kind, if it cannot (an unknown method, or a command method as an event, is
    /// refused here, at the sender, rather than retried against a node that would refuse
    /// it): [`crate::methods::kind_refusal`].
    pub fn from_value(value: &Value, refusal: &KindCheck) -> Result<Vec<Message>, InputError> {
        let obj = value.as_object().ok_or(InputError::NotAnObject {
            found: type_name(value),
        })?;
        if let Some(key) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(InputError::UnknownKey(key.clone()));
        }
        if let Some(key) = ["data", "commandOrEvent", "method"]
            .into_iter()
            .find(|k| !obj.contains_key(*k))
        {
            return Err(InputError::MissingKey(key));
        }
        if !obj.contains_key("toNode") && !obj.contains_key("toNodes") {
            return Err(InputError::MissingKey("toNode"));
        }
        let mut value = value.clone();
        if let Some(o) = value.as_object_mut() {
            // `toNodes` alone: the first one stands in for `toNode` while it is read.
            o.entry("toNode").or_insert_with(|| "".into());
        }
        let message: Message = serde_json::from_value(value).map_err(|e| {
            if e.to_string().contains("unknown variant") {
                InputError::Kind(e)
            } else {
                InputError::Json(e)
            }
        })?;
        let name = |field, name: &str| {
            validate_name(name).map_err(|source| InputError::Name { field, source })
        };
        let mut nodes: Vec<String> = Vec::new();
        if obj.contains_key("toNode") {
            name("toNode", &message.to_node)?;
            nodes.push(message.to_node.clone());
        }
        for (i, node) in message.to_nodes.iter().flatten().enumerate() {
            validate_name(node).map_err(|source| InputError::ToNodes { index: i, source })?;
            if !nodes.contains(node) {
                nodes.push(node.clone());
            }
        }
        if nodes.is_empty() {
            return Err(InputError::NoDestination);
        }
        name("method", &message.method)?;
        if let Some(why) = refusal(&message.method, message.kind) {
            return Err(InputError::Refused(why));
        }
        if message.timeout == Some(0) || message.timeout > Some(MAX_TIMEOUT_SECS) {
            return Err(InputError::Timeout("timeout", message.timeout.unwrap_or(0)));
        }
        if message.reply_timeout == Some(0) || message.reply_timeout > Some(MAX_TIMEOUT_SECS) {
            return Err(InputError::Timeout(
                "replyTimeout",
                message.reply_timeout.unwrap_or(0),
            ));
        }
        if let Some(t) = message.method_timeout {
            if t != -1 && !(1..=MAX_TIMEOUT_SECS as i64).contains(&t) {
                return Err(InputError::MethodTimeout(t));
            }
        }
        let bytes = message.data_bytes();
        if bytes > MAX_DATA_BYTES {
            return Err(InputError::Data { bytes });
        }
        if message.ttl == Some(0) {
            return Err(InputError::ZeroTtl);
        }
        crate::reply::check_request(&message, refusal).map_err(InputError::Reply)?;
        Ok(nodes
            .into_iter()
            .map(|to_node| Message {
                to_node,
                to_nodes: None,
                ..message.clone()
            })
            .collect())
    }

    /// Bytes of data a message carries: its `data` and its arguments.
    pub fn data_bytes(&self) -> usize {
        let args = |a: &Option<Vec<String>>| a.iter().flatten().map(String::len).sum::<usize>();
        self.data.iter().map(String::len).sum::<usize>()
            + args(&self.method_args)
            + args(&self.reply_method_args)
    }
}

/// Why a message written in `inmsg.txt` (or given to `steward send`) was not taken. The
/// text goes to `inmsg.rejected.txt`, after where the message was.
#[derive(Debug)]
pub enum InputError {
    /// Not a JSON object.
    NotAnObject {
        found: &'static str,
    },
    /// A key the seed does not have (keys are case-sensitive: `ToNode` is one).
    UnknownKey(String),
    MissingKey(&'static str),
    /// `commandOrEvent` is not one of the four kinds, exactly.
    Kind(serde_json::Error),
    /// A value of the wrong type.
    Json(serde_json::Error),
    /// `toNode` or `method` is not a valid name.
    Name {
        field: &'static str,
        source: NameError,
    },
    /// One of `toNodes` (counting from 0) is not a valid name.
    ToNodes {
        index: usize,
        source: NameError,
    },
    /// Neither `toNode` nor `toNodes` names a node.
    NoDestination,
    /// This build cannot send the method as that kind ([`KindCheck`]'s words).
    Refused(String),
    /// A `timeout` or `replyTimeout` of 0, or past [`MAX_TIMEOUT_SECS`].
    Timeout(&'static str, u64),
    /// A `methodTimeout` other than -1 or 1 to [`MAX_TIMEOUT_SECS`].
    MethodTimeout(i64),
    /// Where the result should go, or where a file should be written, is not possible.
    Reply(crate::reply::RouteError),
    /// More data than [`MAX_DATA_BYTES`].
    Data {
        bytes: usize,
    },
    ZeroTtl,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::NotAnObject { found } => {
                write!(f, "a message must be a JSON object, found {found}")
            }
            InputError::UnknownKey(key) => write!(
                f,
                "unknown key {key:?} (keys are case-sensitive: {})",
                KEYS.join(", ")
            ),
            InputError::MissingKey(key) => write!(f, "missing key {key:?}"),
            InputError::Kind(e) => {
                write!(f, "bad commandOrEvent: {e} (values are case-sensitive)")
            }
            InputError::Json(e) => write!(f, "{e}"),
            InputError::Name { field, source } => write!(f, "bad {field}: {source}"),
            InputError::ToNodes { index, source } => write!(f, "bad toNodes[{index}]: {source}"),
            InputError::NoDestination => f.write_str("toNodes is empty and there is no toNode"),
            InputError::Refused(why) => f.write_str(why),
            InputError::Timeout(key, t) => write!(
                f,
                "bad {key} {t}: must be between 1 and {MAX_TIMEOUT_SECS} seconds"
            ),
            InputError::MethodTimeout(t) => write!(
                f,
                "bad methodTimeout {t}: must be -1 (no limit) or between 1 and {MAX_TIMEOUT_SECS} seconds"
            ),
            InputError::Reply(e) => write!(f, "{e}"),
            InputError::Data { bytes } => too_much_data(f, *bytes),
            InputError::ZeroTtl => {
                f.write_str("bad ttl 0: give the seconds the message may wait, or leave ttl out")
            }
        }
    }
}

impl std::error::Error for InputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InputError::Kind(e) | InputError::Json(e) => Some(e),
            InputError::Name { source, .. } | InputError::ToNodes { source, .. } => Some(source),
            InputError::Reply(e) => Some(e),
            _ => None,
        }
    }
}

fn too_much_data(f: &mut fmt::Formatter<'_>, bytes: usize) -> fmt::Result {
    write!(
        f,
        "data is {bytes} bytes; at most {MAX_DATA_BYTES} are allowed"
    )
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A message accepted by a node: journaled, sent, logged. The wire form.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Unique for the message's whole life, across retries and restarts.
    pub id: String,
    #[serde(rename = "fromNode")]
    pub from_node: String,
    /// Milliseconds since the Unix epoch when the sending node accepted the message.
    pub accepted: u64,
    /// On a request with a `replyMethod`: its sender's signature over the result it asks
    /// for, which the result carries back (see [`crate::reply`]). Added as it is sent.
    #[serde(
        rename = "replyTicket",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reply_ticket: Option<String>,
    #[serde(flatten)]
    pub message: Message,
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Envelope always serializes: plain strings and numbers")
    }

    /// Decodes a message from the wire (or the journal) and checks everything a receiver
    /// will use: names that become subjects and file names, the id, the size.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        if bytes.len() > MAX_WIRE_BYTES {
            return Err(DecodeError::TooLarge {
                form: Form::Message,
                bytes: bytes.len(),
            });
        }
        let e: Envelope = serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
            form: Form::Message,
            source,
        })?;
        e.validate()?;
        Ok(e)
    }

    /// Checks what a receiver will use: names that become subjects and file names, the
    /// id, the size of the data.
    fn validate(&self) -> Result<(), DecodeError> {
        let e = self;
        let name = |field, name: &str| {
            validate_name(name).map_err(|source| DecodeError::Name { field, source })
        };
        name("fromNode", &e.from_node)?;
        name("toNode", &e.message.to_node)?;
        name("method", &e.message.method)?;
        let answers = e.message.in_reply_to.as_ref().map(|a| a.id.as_str());
        for id in [Some(e.id.as_str()), answers].into_iter().flatten() {
            if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
                return Err(DecodeError::Id(id.chars().take(64).collect()));
            }
        }
        let bytes = e.message.data_bytes();
        if bytes > MAX_DATA_BYTES {
            return Err(DecodeError::Data { bytes });
        }
        crate::reply::check_place(&e.message).map_err(DecodeError::Place)?;
        Ok(())
    }
}

/// What a wire message was to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Message,
    Batch,
    Reply,
    BatchReply,
}

impl Form {
    fn name(self) -> &'static str {
        match self {
            Form::Message => "message",
            Form::Batch => "batch",
            Form::Reply => "reply",
            Form::BatchReply => "batch reply",
        }
    }
}

/// Why bytes from the wire (or the journal) are not a message, a batch or a reply. A
/// receiver refuses such a message; nothing in it is trusted.
#[derive(Debug)]
pub enum DecodeError {
    /// More bytes than a message ([`MAX_WIRE_BYTES`]) or a batch ([`MAX_BATCH_BYTES`]) may
    /// have.
    TooLarge { form: Form, bytes: usize },
    /// Not JSON of the form's shape.
    Json {
        form: Form,
        source: serde_json::Error,
    },
    /// A name that becomes a subject or a file name is not valid.
    Name {
        field: &'static str,
        source: NameError,
    },
    /// An id that is empty, too long or holds control characters (its first 64
    /// characters).
    Id(String),
    /// More data than [`MAX_DATA_BYTES`].
    Data { bytes: usize },
    /// `directory` or `fileName` would not be a place under the data folder.
    Place(crate::reply::RouteError),
    /// A batch of no messages, or of more than [`MAX_BATCH`].
    BatchSize { count: usize },
    /// One message of a batch (counting from 0) is bad.
    InBatch {
        index: usize,
        source: Box<DecodeError>,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { form, bytes } => {
                let max = match form {
                    Form::Batch | Form::BatchReply => MAX_BATCH_BYTES,
                    Form::Message | Form::Reply => MAX_WIRE_BYTES,
                };
                write!(
                    f,
                    "{} of {bytes} bytes; at most {max} are allowed",
                    form.name()
                )
            }
            DecodeError::Json { form, source } => {
                write!(f, "undecodable {}: {source}", form.name())
            }
            DecodeError::Name { field, source } => write!(f, "bad {field}: {source}"),
            DecodeError::Id(id) => write!(f, "bad id {id:?}"),
            DecodeError::Data { bytes } => too_much_data(f, *bytes),
            DecodeError::Place(e) => write!(f, "{e}"),
            DecodeError::BatchSize { count } => write!(
                f,
                "a batch of {count} messages; 1 to {MAX_BATCH} are allowed"
            ),
            DecodeError::InBatch { index, source } => write!(f, "batch message {index}: {source}"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Json { source, .. } => Some(source),
            DecodeError::Name { source, .. } => Some(source),
            DecodeError::InBatch { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A batch: several messages for one subject, in order, as one wire message (a JSON array
/// of envelopes). Events travel this way when several are queued for the same subject.
pub fn encode_batch(envelopes: &[Envelope]) -> Vec<u8> {
    serde_json::to_vec(envelopes).expect("Envelopes always serialize")
}

/// Whether a wire message is a batch (a JSON array) rather than one envelope.
pub fn is_batch(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// Decodes a batch, checking each message as [`Envelope::decode`] does; one bad message
/// refuses the batch (a sender never makes one).
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Envelope>, DecodeError> {
    if bytes.len() > MAX_BATCH_BYTES {
        return Err(DecodeError::TooLarge {
            form: Form::Batch,
            bytes: bytes.len(),
        });
    }
    let batch: Vec<Envelope> =
        serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
            form: Form::Batch,
            source,
        })?;
    if batch.is_empty() || batch.len() > MAX_BATCH {
        return Err(DecodeError::BatchSize { count: batch.len() });
    }
    for (index, e) in batch.iter().enumerate() {
        e.validate().map_err(|e| DecodeError::InBatch {
            index,
            source: Box::new(e),
        })?;
    }
    Ok(batch)
}

/// How a receiver dealt with a message.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The method ran (a command may still have exited non-zero: see `exitCode`).
    Ok,
    /// The method could not run (bad data, the command could not start, I/O error).
    Error,
    /// The receiver would not run it (not allowed from this sender, not served here).
    Refused,
}

/// The ACK a receiver sends on the message's reply subject.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub id: String,
    #[serde(rename = "fromNode")]
    pub from_node: String,
    /// The sender of the message this answers: a receiver keeps replies by (sender, id).
    #[serde(rename = "toNode", default, skip_serializing_if = "String::is_empty")]
    pub to_node: String,
    pub status: Status,
    #[serde(rename = "exitCode", default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub output: String,
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Reply always serializes: plain strings and numbers")
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, DecodeError> {
        serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
            form: Form::Reply,
            source,
        })
    }

    /// A refusal of message `id` from `to` by node `by`.
    pub fn refusal(id: String, to: &str, by: &str, why: String) -> Reply {
        Reply {
            id,
            from_node: by.to_string(),
            to_node: to.to_string(),
            status: Status::Refused,
            exit_code: None,
            output: why,
        }
    }

    /// The replies to a batch, in its order.
    pub fn encode_batch(replies: &[Reply]) -> Vec<u8> {
        serde_json::to_vec(replies).expect("Replies always serialize")
    }

    pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Reply>, DecodeError> {
        serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
            form: Form::BatchReply,
            source,
        })
    }
}

/// One piece of `inmsg.txt` that could not be taken, kept verbatim for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub text: String,
    pub error: String,
}

/// The result of parsing a stretch of `inmsg.txt`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub messages: Vec<Message>,
    pub rejected: Vec<Rejected>,
    /// Bytes fully dealt with; anything after is an incomplete value still being written.
    pub consumed: usize,
}

/// Parses the text of `inmsg.txt`: any number of JSON arrays of messages (or single message
/// objects), one after another. Each bad array, bad message or stretch of garbage is rejected
/// on its own with an error naming what and where (`line` counts from `first_line`); good
/// messages still go. A trailing value that is not complete is left unconsumed, unless
/// `at_end` says no more bytes will come, in which case it is rejected too.
pub fn parse_input(
    text: &[u8],
    first_line: usize,
    at_end: bool,
    known_method: &KindCheck,
) -> Parsed {
    let mut parsed = Parsed::default();
    let mut pos = 0;
    // Line numbers for errors, counted as we go (counting from the start for every value
    // would make a long file quadratic).
    let (mut line, mut counted) = (first_line, 0);
    while pos < text.len() {
        let start = pos
            + text[pos..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
        if start == text.len() {
            parsed.consumed = text.len();
            break;
        }
        line += text[counted..start].iter().filter(|&&b| b == b'\n').count();
        counted = start;
        let end = match text[start] {
            b'[' | b'{' => {
                let rest = &text[start..];
                // A line opening a new array before this value closes means this one is
                // broken (the seed's format has arrays only at the top level).
                // Looked for within the value only when it is complete: looking to the end
                // of the text for every value made one-object-per-line input quadratic.
                let scan = scan_value(rest);
                let next = match scan {
                    Scan::Complete(len) => next_value_start(&rest[..len]),
                    _ => next_value_start(rest),
                };
                match scan {
                    Scan::Complete(len) if next.is_none_or(|n| len <= n) => start + len,
                    Scan::Incomplete if next.is_none() && !at_end => break, // still being written
                    Scan::Incomplete if next.is_none() => text.len(),
                    _ => {
                        let end = start + next.unwrap_or(rest.len());
                        parsed.rejected.push(Rejected {
                            text: String::from_utf8_lossy(&text[start..end]).into_owned(),
                            error: format!("line {line}: invalid JSON: brackets do not match"),
                        });
                        pos = end;
                        parsed.consumed = end;
                        continue;
                    }
                }
            }
            _ => {
                // Garbage: everything up to the next line that opens a value.
                let skip = next_value_start(&text[start..]).unwrap_or(text.len() - start);
                let end = start + skip;
                parsed.rejected.push(Rejected {
                    text: String::from_utf8_lossy(&text[start..end]).into_owned(),
                    error: format!("line {line}: expected a JSON array of messages"),
                });
                pos = end;
                parsed.consumed = end;
                continue;
            }
        };
        let chunk = &text[start..end];
        take_value(chunk, line, known_method, &mut parsed);
        pos = end;
        parsed.consumed = end;
    }
    parsed
}

fn take_value(chunk: &[u8], line: usize, known_method: &KindCheck, parsed: &mut Parsed) {
    let reject = |error: String| Rejected {
        text: String::from_utf8_lossy(chunk).into_owned(),
        error,
    };
    let value: Value = match serde_json::from_slice(chunk) {
        Ok(v) => v,
        Err(e) => {
            let at = if e.line() > 0 {
                line + e.line() - 1
            } else {
                line
            };
            parsed.rejected.push(reject(format!(
                "line {at}: invalid JSON: {}",
                strip_position(&e.to_string())
            )));
            return;
        }
    };
    let items = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => unreachable!("scan_value only yields arrays and objects"),
    };
    if items.is_empty() {
        return;
    }
    for (i, item) in items.iter().enumerate() {
        match Message::from_value(item, known_method) {
            Ok(m) => parsed.messages.extend(m),
            Err(e) => parsed.rejected.push(Rejected {
                text: serde_json::to_string_pretty(&Value::Array(vec![item.clone()]))
                    .expect("a parsed JSON value serializes"),
                error: format!("array starting on line {line}, message {}: {e}", i + 1),
            }),
        }
    }
}

fn strip_position(e: &str) -> &str {
    e.split(" at line ").next().unwrap_or(e)
}

enum Scan {
    /// The value is complete and this long.
    Complete(usize),
    /// The text ends before the value does.
    Incomplete,
    /// A closing bracket does not match its opener.
    Mismatch,
}

/// Finds the end of the JSON array or object at the start of `text`. Tracks strings and
/// escapes so brackets inside strings do not count, and which bracket closes which.
fn scan_value(text: &[u8]) -> Scan {
    let mut open = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' => open.push(b']'),
            b'{' => open.push(b'}'),
            b']' | b'}' => {
                if open.pop() != Some(b) {
                    return Scan::Mismatch;
                }
                if open.is_empty() {
                    return Scan::Complete(i + 1);
                }
            }
            _ => {}
        }
    }
    Scan::Incomplete
}

/// Offset of the first line (after the first) that starts, ignoring indentation, with `[`.
fn next_value_start(text: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = text[i..].iter().position(|&b| b == b'\n') {
        i += nl + 1;
        let indent = text[i..]
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        if text.get(i + indent) == Some(&b'[') {
            return Some(i + indent);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(m: &str, kind: Kind) -> Option<String> {
        crate::methods::kind_refusal(m, kind)
    }

    const SEED_TWO: &str = r#"[
    {
        
        "toNode": "ship1",
        "data": ["bash","-c","ls -l ../"],
        "commandOrEvent":"CommandACK",
        "method":"CLICommand"
            
    },
    {
        
        "toNode": "ship2",
        "data": ["bash","-c","ls -l ../"],
        "commandOrEvent":"CommandACK",
        "method":"CLICommand"
            
    }
]"#;

    #[test]
    fn seed_example_with_two_messages() {
        let p = parse_input(SEED_TWO.as_bytes(), 1, false, &known);
        assert_eq!(p.rejected, vec![]);
        assert_eq!(p.messages.len(), 2);
        assert_eq!(p.messages[1].to_node, "ship2");
        assert_eq!(p.messages[0].data, ["bash", "-c", "ls -l ../"]);
        assert_eq!(p.consumed, SEED_TWO.len());
    }

    #[test]
    fn several_appended_arrays_in_one_read_all_count() {
        let text = format!("{SEED_TWO}\n{SEED_TWO}\n[{{\"toNode\":\"ship1\",\"data\":[\"x\"],\"commandOrEvent\":\"EventACK\",\"method\":\"TextLogging\",\"timeout\":3,\"retries\":3}}]");
        let p = parse_input(text.as_bytes(), 1, false, &known);
        assert_eq!(p.messages.len(), 5);
        assert_eq!(p.messages[4].timeout, Some(3));
        assert_eq!(p.messages[4].retries, Some(3));
    }

    #[test]
    fn an_array_still_being_written_is_left_for_later() {
        let text = format!("{SEED_TWO}\n[ {{ \"toNode\": \"sh");
        let p = parse_input(text.as_bytes(), 1, false, &known);
        assert_eq!(p.messages.len(), 2);
        assert!(p.rejected.is_empty());
        assert_eq!(p.consumed, SEED_TWO.len());
        // ... unless nothing more will come.
        let p = parse_input(text.as_bytes(), 1, true, &known);
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.consumed, text.len());
    }

    #[test]
    fn brackets_inside_strings_do_not_confuse_the_scanner() {
        let text = r#"[{"toNode":"ship1","data":["echo ]] \"[\" }"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#;
        let p = parse_input(text.as_bytes(), 1, false, &known);
        assert_eq!(p.messages.len(), 1, "{:?}", p.rejected);
        assert_eq!(p.messages[0].data[0], "echo ]] \"[\" }");
    }

    #[test]
    fn one_bad_message_is_rejected_alone_with_its_reason() {
        let text = r#"[
 {"toNode":"ship1","data":["a"],"commandOrEvent":"CommandACK","method":"CLICommand"},
 {"ToNode":"ship1","data":["b"],"commandOrEvent":"CommandACK","method":"CLICommand"},
 {"toNode":"ship1","data":["c"],"commandOrEvent":"commandack","method":"CLICommand"},
 {"toNode":"ship 1","data":["d"],"commandOrEvent":"CommandACK","method":"CLICommand"},
 {"toNode":"ship1","data":["e"],"commandOrEvent":"CommandACK","method":"NoSuchMethod"},
 {"toNode":"ship1","data":["f"],"commandOrEvent":"CommandACK","method":"CLICommand","timeout":0},
 {"toNode":"ship1","data":["g"],"commandOrEvent":"CommandACK","method":"CLICommand"}
]"#;
        let p = parse_input(text.as_bytes(), 1, false, &known);
        let data: Vec<_> = p.messages.iter().map(|m| m.data[0].as_str()).collect();
        assert_eq!(data, ["a", "g"]);
        let errors: Vec<_> = p.rejected.iter().map(|r| r.error.as_str()).collect();
        assert_eq!(errors.len(), 5);
        assert!(
            errors[0].contains("message 2: unknown key \"ToNode\""),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains("commandOrEvent"), "{}", errors[1]);
        assert!(
            errors[2].contains("toNode") && errors[2].contains("space"),
            "{}",
            errors[2]
        );
        assert!(
            errors[3].contains("unknown method \"NoSuchMethod\""),
            "{}",
            errors[3]
        );
        assert!(errors[4].contains("timeout"), "{}", errors[4]);
        // The rejected text is itself valid inmsg.txt input, so it can be fixed and re-sent.
        let again = parse_input(p.rejected[0].text.as_bytes(), 1, true, &known);
        assert_eq!(again.rejected.len(), 1);
    }

    #[test]
    fn a_method_sent_as_a_kind_it_does_not_serve_is_refused_at_intake() {
        let text = r#"[
 {"toNode":"ship1","data":["id"],"commandOrEvent":"EventACK","method":"CLICommand"},
 {"toNode":"ship1","data":["x"],"commandOrEvent":"CommandACK","method":"TextLogging"},
 {"toNode":"ship1","data":["{}"],"commandOrEvent":"EventNACK","method":"TrustedKeys"},
 {"toNode":"ship1","data":["fine"],"commandOrEvent":"EventNACK","method":"TextLogging"}
]"#;
        let p = parse_input(text.as_bytes(), 1, true, &known);
        assert_eq!(p.messages.len(), 1);
        let errors: Vec<_> = p.rejected.iter().map(|r| r.error.as_str()).collect();
        assert!(
            errors[0].contains(
                "CLICommand is served only as CommandACK or CommandNACK, not as EventACK"
            ),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains("TextLogging is served only as EventACK or EventNACK"));
        assert!(errors[2].contains("TrustedKeys is served only as CommandACK"));
    }

    #[test]
    fn garbage_and_broken_json_do_not_stop_the_batch() {
        let text = format!("hello there\n[{{\"toNode\": }}]\n{SEED_TWO}\n");
        let p = parse_input(text.as_bytes(), 1, false, &known);
        assert_eq!(p.messages.len(), 2);
        assert_eq!(p.rejected.len(), 2);
        assert!(
            p.rejected[0].error.starts_with("line 1:"),
            "{}",
            p.rejected[0].error
        );
        assert!(
            p.rejected[1].error.starts_with("line 2: invalid JSON"),
            "{}",
            p.rejected[1].error
        );
        assert_eq!(p.consumed, text.len());
    }

    #[test]
    fn a_broken_array_does_not_swallow_the_arrays_after_it() {
        let text = format!("[{{\"toNode\": \"ship1\", \"data\": [}}]\n{SEED_TWO}\n[{{\"toNode\": \"x\",\n{SEED_TWO}");
        let p = parse_input(text.as_bytes(), 1, false, &known);
        assert_eq!(p.messages.len(), 4, "{:?}", p.rejected);
        assert_eq!(p.rejected.len(), 2);
        assert!(p
            .rejected
            .iter()
            .all(|r| r.error.contains("brackets do not match")));
        assert_eq!(p.consumed, text.len());
    }

    #[test]
    fn envelope_wire_form_round_trips_and_keeps_seed_keys() {
        let m = parse_input(SEED_TWO.as_bytes(), 1, false, &known)
            .messages
            .remove(0);
        let e = Envelope {
            id: "central-1".into(),
            from_node: "central".into(),
            accepted: 1,
            reply_ticket: None,
            message: m,
        };
        let wire = e.encode();
        let text = String::from_utf8(wire.clone()).unwrap();
        assert!(
            text.contains("\"toNode\":\"ship1\"")
                && text.contains("\"commandOrEvent\":\"CommandACK\"")
        );
        assert_eq!(Envelope::decode(&wire).unwrap(), e);
        assert!(Envelope::decode(b"{\"id\":1}").is_err());
        // Names that would escape a data folder, and oversized data, are refused.
        for (key, bad) in [
            ("fromNode", "../../etc"),
            ("toNode", "a/b"),
            ("method", ".."),
        ] {
            let mut v: serde_json::Value = serde_json::from_slice(&wire).unwrap();
            v[key] = bad.into();
            let err = Envelope::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert!(
                matches!(err, DecodeError::Name { field, .. } if field == key),
                "{err}"
            );
        }
        let mut big = e.clone();
        big.message.data = vec!["x".repeat(MAX_DATA_BYTES + 1)];
        let err = Envelope::decode(&big.encode()).unwrap_err();
        assert!(err.to_string().starts_with("data is"), "{err}");
        // A batch names its bad message.
        let err = decode_batch(&encode_batch(&[e.clone(), big])).unwrap_err();
        assert!(
            matches!(&err, DecodeError::InBatch { index: 1, .. }),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("batch message 1: data is"),
            "{err}"
        );
    }
}
