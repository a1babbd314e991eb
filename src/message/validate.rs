//! One JSON value from `inmsg.txt` (or `steward send`) → the messages it stands for, one
//! per destination, or the [`InputError`] that says why not. It runs at the sender, before
//! anything is journaled, so an operator's mistake is reported at once rather than sent.

use super::{
    KindCheck, Message, COPY_FIELDS_BYTES, MAX_DATA_BYTES, MAX_FAN_OUT_BYTES, MAX_RETRIES,
    MAX_SCHEDULE_SECS, MAX_TIMEOUT_SECS, MAX_TO_NODES,
};
use crate::subject::{validate_name, NameError};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;

/// The keys a message in `inmsg.txt` may have; anything else (including `ToNode`) is an error.
pub(super) const KEYS: [&str; 17] = [
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
    "schedule",
];

impl Message {
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
        // Read from the value in place; `toNodes` alone: an empty `toNode` stands in while
        // it is read (a copy, as the value is the operator's, kept for a rejection).
        let read = if obj.contains_key("toNode") {
            Message::deserialize(value)
        } else {
            let mut value = value.clone();
            if let Some(o) = value.as_object_mut() {
                o.insert("toNode".into(), "".into());
            }
            Message::deserialize(value)
        };
        let message: Message = read.map_err(|e| {
            if e.to_string().contains("unknown variant") {
                InputError::Kind(e)
            } else if let Some((key, e)) = bad_value(obj) {
                InputError::Value { key, source: e }
            } else {
                InputError::Json(e)
            }
        })?;
        let mut messages = Vec::new();
        message.for_each_node(obj.contains_key("toNode"), refusal, &mut messages)?;
        Ok(messages)
    }

    /// A message read from `inmsg.txt`, checked (names, method, limits, result route) and
    /// made one message per destination into `out`: `toNode`, if it was given, then each
    /// of `toNodes` not named before.
    pub(super) fn for_each_node(
        mut self,
        to_node_given: bool,
        refusal: &KindCheck,
        out: &mut Vec<Message>,
    ) -> Result<(), InputError> {
        let name = |field, name: &str| {
            validate_name(name).map_err(|source| InputError::Name { field, source })
        };
        if to_node_given {
            name("toNode", &self.to_node)?;
        }
        // The list is not copied into each of its messages (a fan-out to 50,000 nodes
        // would copy 50,000 names 50,000 times).
        let mut to_nodes = self.to_nodes.take().unwrap_or_default();
        if to_nodes.len() > MAX_TO_NODES {
            return Err(InputError::TooManyNodes(to_nodes.len()));
        }
        if !to_nodes.is_empty() {
            let mut named: HashSet<&str> = HashSet::new();
            if to_node_given {
                named.insert(&self.to_node);
            }
            let mut first = Vec::with_capacity(to_nodes.len());
            for (i, node) in to_nodes.iter().enumerate() {
                validate_name(node).map_err(|source| InputError::ToNodes { index: i, source })?;
                first.push(named.insert(node));
            }
            let mut first = first.into_iter();
            to_nodes.retain(|_| first.next().unwrap_or(false));
        }
        if !to_node_given && to_nodes.is_empty() {
            return Err(InputError::NoDestination);
        }
        name("method", &self.method)?;
        if let Some(why) = refusal(&self.method, self.kind) {
            return Err(InputError::Refused(why));
        }
        self.check_limits()?;
        // Stricter than a receiver's check, which an earlier version's messages must pass.
        let bytes = self.data_json_bytes();
        if bytes > MAX_DATA_BYTES {
            return Err(InputError::DataAsJson { bytes });
        }
        crate::reply::check_request(&self, refusal).map_err(InputError::Reply)?;
        let copies = to_nodes.len() + usize::from(to_node_given);
        let each = bytes + COPY_FIELDS_BYTES;
        if copies > 1 && copies.saturating_mul(each) > MAX_FAN_OUT_BYTES {
            return Err(InputError::FanOut { copies, each });
        }
        // The last destination takes the message itself (most messages have one).
        let last = match to_nodes.pop() {
            Some(last) if to_node_given => {
                out.push(self.clone());
                last
            }
            Some(last) => last,
            None => {
                out.push(self);
                return Ok(());
            }
        };
        out.extend(to_nodes.into_iter().map(|to_node| Message {
            to_node,
            ..self.clone()
        }));
        self.to_node = last;
        out.push(self);
        Ok(())
    }

    /// Checks the numbers a message carries and its size: at intake, and on receipt (a
    /// receiver acts on them: a kill deadline, a result's timeout and retries).
    pub fn check_limits(&self) -> Result<(), InputError> {
        for (key, t) in [
            ("timeout", self.timeout),
            ("replyTimeout", self.reply_timeout),
        ] {
            if t == Some(0) || t > Some(MAX_TIMEOUT_SECS) {
                return Err(InputError::Timeout(key, t.unwrap_or(0)));
            }
        }
        if let Some(t) = self.method_timeout {
            if t != -1 && !(1..=MAX_TIMEOUT_SECS as i64).contains(&t) {
                return Err(InputError::MethodTimeout(t));
            }
        }
        for (key, r) in [
            ("retries", self.retries),
            ("replyRetries", self.reply_retries),
        ] {
            if r > Some(MAX_RETRIES) {
                return Err(InputError::Retries(key, r.unwrap_or(0)));
            }
        }
        let bytes = self.data_bytes();
        if bytes > MAX_DATA_BYTES {
            return Err(InputError::Data { bytes });
        }
        if let Some(schedule) = &self.schedule {
            let ok = match schedule.as_slice() {
                &[every, total] => every >= 1 && total >= every && total <= MAX_SCHEDULE_SECS,
                _ => false,
            };
            if !ok {
                return Err(InputError::Schedule(schedule.clone()));
            }
            if self.reply_method.is_none() {
                return Err(InputError::ScheduleWithoutReplyMethod);
            }
        }
        if self.ttl == Some(0) {
            return Err(InputError::ZeroTtl);
        }
        Ok(())
    }
}

/// Why a message written in `inmsg.txt` (or given to `steward send`) was not taken. From
/// `inmsg.txt`, the text goes to `inmsg.rejected.txt`, after where the message was
/// (`array starting on line 3, message 2: …`); `steward send` prints it.
#[derive(Debug)]
pub enum InputError {
    /// Not a JSON object.
    NotAnObject { found: &'static str },
    /// A key the seed does not have (keys are case-sensitive: `ToNode` is one).
    UnknownKey(String),
    /// A key every message needs (`toNode` stands for `toNode` or `toNodes`).
    MissingKey(&'static str),
    /// `commandOrEvent` is not one of the four kinds, exactly.
    Kind(serde_json::Error),
    /// A value of the wrong type.
    Json(serde_json::Error),
    /// A value of the wrong type, for this key.
    Value {
        key: String,
        source: serde_json::Error,
    },
    /// `toNode` or `method` is not a valid name.
    Name {
        field: &'static str,
        source: NameError,
    },
    /// One of `toNodes` (counting from 0) is not a valid name.
    ToNodes { index: usize, source: NameError },
    /// Neither `toNode` nor `toNodes` names a node.
    NoDestination,
    /// This build cannot send the method as that kind ([`KindCheck`]'s words).
    Refused(String),
    /// A `timeout` or `replyTimeout` of 0, or past [`MAX_TIMEOUT_SECS`].
    Timeout(&'static str, u64),
    /// A `methodTimeout` other than -1 or 1 to [`MAX_TIMEOUT_SECS`].
    MethodTimeout(i64),
    /// `retries` or `replyRetries` past [`MAX_RETRIES`].
    Retries(&'static str, u32),
    /// More than [`MAX_TO_NODES`] in `toNodes`.
    TooManyNodes(usize),
    /// A `schedule` other than `[intervalSeconds, totalSeconds]` with 1 ≤ interval ≤ total ≤
    /// [`MAX_SCHEDULE_SECS`].
    Schedule(Vec<u64>),
    /// A `schedule` without `replyMethod`: its runs' results would have nowhere to go.
    ScheduleWithoutReplyMethod,
    /// Where the result should go, or where a file should be written, is not possible.
    Reply(crate::reply::RouteError),
    /// Copies for `toNodes` past [`MAX_FAN_OUT_BYTES`] in all: how many, and about how
    /// large each is ([`Message::copy_bytes`]).
    FanOut { copies: usize, each: usize },
    /// Copies for `toNodes` of the messages of one array before this one, `before` bytes,
    /// and this one's would take it past [`MAX_FAN_OUT_BYTES`].
    ArrayFanOut { before: usize },
    /// More data than [`MAX_DATA_BYTES`].
    Data { bytes: usize },
    /// Data that takes more than [`MAX_DATA_BYTES`] written as JSON (its escapes).
    DataAsJson { bytes: usize },
    /// A `ttl` of 0.
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
            InputError::Value { key, source } => write!(f, "bad {key}: {source}"),
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
            InputError::Retries(key, r) => write!(
                f,
                "bad {key} {r}: at most {MAX_RETRIES} (for a node away for long, give a ttl)"
            ),
            InputError::Schedule(s) => write!(
                f,
                "bad schedule {s:?}: give [intervalSeconds, totalSeconds], 1 <= interval <= total <= {MAX_SCHEDULE_SECS}"
            ),
            InputError::ScheduleWithoutReplyMethod => f.write_str(
                "a schedule needs replyMethod: each run's result is sent as a message of its own (e.g. \"replyMethod\":\"FileAppend\")",
            ),
            InputError::TooManyNodes(n) => write!(
                f,
                "toNodes names {n} nodes; at most {MAX_TO_NODES} in one message"
            ),
            InputError::FanOut { copies, each } => write!(
                f,
                "toNodes makes {copies} copies of about {each} bytes, {} in all; at most {MAX_FAN_OUT_BYTES} for one message (each copy is journaled): split toNodes over several messages, or copy the data once (CopySrc) and send each node a short command",
                copies.saturating_mul(*each)
            ),
            InputError::ArrayFanOut { before } => write!(
                f,
                "the copies for toNodes of this array's messages before it take {before} bytes, and its own would take them past {MAX_FAN_OUT_BYTES} for one array: send it in an array of its own"
            ),
            InputError::Data { bytes } => too_much_data(f, *bytes),
            InputError::DataAsJson { bytes } => write!(
                f,
                "data (with methodArgs and replyMethodArgs) takes {bytes} bytes written as JSON (a control character takes six: \\u001b); at most {MAX_DATA_BYTES} are allowed"
            ),
            InputError::ZeroTtl => {
                f.write_str("bad ttl 0: give the seconds the message may wait, or leave ttl out")
            }
        }
    }
}

impl std::error::Error for InputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InputError::Kind(e) | InputError::Json(e) | InputError::Value { source: e, .. } => {
                Some(e)
            }
            InputError::Name { source, .. } | InputError::ToNodes { source, .. } => Some(source),
            InputError::Reply(e) => Some(e),
            _ => None,
        }
    }
}

/// The key whose value a [`Message`] cannot hold, and why: serde's words name the type it
/// expected, not the key (`invalid type: string "ls", expected a sequence`). Each key is
/// read alone, beside good values of the keys every message has.
fn bad_value(obj: &serde_json::Map<String, Value>) -> Option<(String, serde_json::Error)> {
    obj.iter().find_map(|(key, value)| {
        let mut probe = serde_json::Map::new();
        probe.insert("toNode".into(), "".into());
        probe.insert("data".into(), Value::Array(Vec::new()));
        probe.insert("commandOrEvent".into(), "CommandACK".into());
        probe.insert("method".into(), "".into());
        probe.insert(key.clone(), value.clone());
        Message::deserialize(&Value::Object(probe))
            .err()
            .map(|e| (key.clone(), e))
    })
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

/// The words of [`InputError::Data`].
fn too_much_data(f: &mut fmt::Formatter<'_>, bytes: usize) -> fmt::Result {
    write!(
        f,
        "data is {bytes} bytes; at most {MAX_DATA_BYTES} are allowed"
    )
}
