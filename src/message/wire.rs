//! What travels between nodes: a message as an [`Envelope`] (alone, or several in a
//! batch), and the [`Reply`] that answers it. Decoding an envelope or a batch checks
//! everything a receiver will use (names, ids, sizes), so nothing from the wire (or the
//! journal) is used unchecked; a [`DecodeError`] says what was wrong.

use super::{Message, MAX_BATCH, MAX_BATCH_BYTES, MAX_ID_LEN, MAX_WIRE_BYTES};
use crate::subject::{validate_name, NameError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A message accepted by a node: journaled, sent, logged. The wire form. Read through
/// [`FlatEnvelope`], its fields and its message's side by side: serde's `flatten` read
/// each envelope into a tree of its values first, then the message out of the tree.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
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
    /// On a request that has its receiver write on another node on its sender's word
    /// (`CopySrc`): its sender's signature over what it allows, which the receiver copies
    /// into what it sends there (see [`crate::grant`]). Added as it is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(flatten)]
    pub message: Message,
}

/// An [`Envelope`] as it reads: its own fields and its [`Message`]'s, in one object, as
/// `flatten` writes them (the same names and defaults; unknown keys passed over, a key
/// twice refused).
#[derive(Deserialize)]
struct FlatEnvelope {
    id: String,
    #[serde(rename = "fromNode")]
    from_node: String,
    accepted: u64,
    #[serde(rename = "replyTicket", default)]
    reply_ticket: Option<String>,
    #[serde(default)]
    grant: Option<String>,
    #[serde(rename = "toNode")]
    to_node: String,
    data: Vec<String>,
    #[serde(rename = "commandOrEvent")]
    kind: super::Kind,
    method: String,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(rename = "toNodes", default)]
    to_nodes: Option<Vec<String>>,
    #[serde(rename = "methodTimeout", default)]
    method_timeout: Option<i64>,
    #[serde(rename = "methodArgs", default)]
    method_args: Option<Vec<String>>,
    #[serde(rename = "replyMethod", default)]
    reply_method: Option<String>,
    #[serde(rename = "replyMethodArgs", default)]
    reply_method_args: Option<Vec<String>>,
    #[serde(rename = "replyTimeout", default)]
    reply_timeout: Option<u64>,
    #[serde(rename = "replyRetries", default)]
    reply_retries: Option<u32>,
    #[serde(default)]
    directory: Option<String>,
    #[serde(rename = "fileName", default)]
    file_name: Option<String>,
    #[serde(default)]
    schedule: Option<Vec<u64>>,
    #[serde(rename = "resultsTo", default)]
    results_to: Option<String>,
    #[serde(rename = "inReplyTo", default)]
    in_reply_to: Option<super::InReplyTo>,
}

impl<'de> Deserialize<'de> for Envelope {
    /// An object only, as with `flatten` (a struct alone would take an array of its
    /// fields' values too).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Envelope, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Envelope;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message envelope")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Envelope, A::Error> {
                let map = serde::de::value::MapAccessDeserializer::new(map);
                FlatEnvelope::deserialize(map).map(Envelope::from)
            }
        }
        d.deserialize_map(Object)
    }
}

impl From<FlatEnvelope> for Envelope {
    fn from(f: FlatEnvelope) -> Envelope {
        // Every field named: a field added to `Message` and not here does not compile.
        Envelope {
            id: f.id,
            from_node: f.from_node,
            accepted: f.accepted,
            reply_ticket: f.reply_ticket,
            grant: f.grant,
            message: Message {
                to_node: f.to_node,
                data: f.data,
                kind: f.kind,
                method: f.method,
                timeout: f.timeout,
                retries: f.retries,
                ttl: f.ttl,
                to_nodes: f.to_nodes,
                method_timeout: f.method_timeout,
                method_args: f.method_args,
                reply_method: f.reply_method,
                reply_method_args: f.reply_method_args,
                reply_timeout: f.reply_timeout,
                reply_retries: f.reply_retries,
                directory: f.directory,
                file_name: f.file_name,
                schedule: f.schedule,
                results_to: f.results_to,
                in_reply_to: f.in_reply_to,
            },
        }
    }
}

impl Envelope {
    /// For tests: `message` as `from` sent it, under `id` (accepted at 0, nothing added as
    /// it is sent).
    #[cfg(test)]
    pub fn sent(from: &str, id: impl Into<String>, message: Message) -> Envelope {
        Envelope {
            id: id.into(),
            from_node: from.into(),
            accepted: 0,
            reply_ticket: None,
            grant: None,
            message,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the wire form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        json_into(self, out);
    }

    /// Decodes a message from the wire (or the journal) and checks everything a receiver
    /// will use: names that become subjects and file names, the id, the size.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        fits(bytes.len())?;
        let e: Envelope = serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
            form: Form::Message,
            source,
        })?;
        e.validate()?;
        Ok(e)
    }

    /// What [`Envelope::decode`] checks, of an envelope whose wire form of `bytes` was not
    /// decoded again (the journal keeps what it wrote this run: see
    /// [`crate::journal::Journal::take`]).
    pub(crate) fn check(&self, bytes: usize) -> Result<(), DecodeError> {
        fits(bytes)?;
        self.validate()
    }

    /// Checks what a receiver will use: names that become subjects and file names, the
    /// ids (the message's, and on a result the request's), the size of the data.
    fn validate(&self) -> Result<(), DecodeError> {
        let e = self;
        let name = |field, name: &str| {
            validate_name(name).map_err(|source| DecodeError::Name { field, source })
        };
        name("fromNode", &e.from_node)?;
        name("toNode", &e.message.to_node)?;
        name("method", &e.message.method)?;
        if let Some(to) = &e.message.results_to {
            name("resultsTo", to)?;
        }
        // Printable ASCII, as every id steward makes is (`<node>-<time>-<seq>-<random>`,
        // node names being ASCII): an id goes into logs and errors.log as it is, where a
        // right-to-left mark or a zero-width character would disguise the line.
        let answers = e.message.in_reply_to.as_ref().map(|a| a.id.as_str());
        for id in [Some(e.id.as_str()), answers].into_iter().flatten() {
            if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(DecodeError::Id(id.chars().take(64).collect()));
            }
        }
        e.message.check_limits().map_err(DecodeError::Limits)?;
        // What the receiver will do with the result: a method of its own that takes events,
        // a place under the data folder.
        crate::reply::check_request(&e.message, &crate::methods::kind_refusal)
            .map_err(DecodeError::Place)?;
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
    /// A number out of bounds, or more data than [`super::MAX_DATA_BYTES`] (in intake's
    /// words).
    Limits(super::InputError),
    /// Where the result goes (`replyMethod`), or where a file goes (`directory`,
    /// `fileName`), cannot be.
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
            DecodeError::Place(e) => write!(f, "{e}"),
            DecodeError::Limits(e) => write!(f, "{e}"),
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
/// of envelopes). Events (EventACK) travel this way when several are queued for the same
/// subject; the publisher writes the same form itself, an envelope at a time, to stop at
/// the broker's payload limit.
pub fn encode_batch(envelopes: &[Envelope]) -> Vec<u8> {
    serde_json::to_vec(envelopes).expect("Envelopes always serialize")
}

/// Whether a wire message is a batch (a JSON array) rather than one envelope.
pub fn is_batch(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// A message's wire form is at most [`MAX_WIRE_BYTES`].
fn fits(bytes: usize) -> Result<(), DecodeError> {
    match bytes > MAX_WIRE_BYTES {
        true => Err(DecodeError::TooLarge {
            form: Form::Message,
            bytes,
        }),
        false => Ok(()),
    }
}

/// Decodes a batch, checking each message as [`Envelope::decode`] does (but for size: the
/// limit is the whole batch's, [`MAX_BATCH_BYTES`]); one bad message refuses the batch (a
/// sender never makes one).
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Envelope>, DecodeError> {
    if bytes.len() > MAX_BATCH_BYTES {
        return Err(DecodeError::TooLarge {
            form: Form::Batch,
            bytes: bytes.len(),
        });
    }
    let batch: Vec<Envelope> = array_of(bytes).map_err(|source| DecodeError::Json {
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
    /// On the first reply of a batch's answer: the most messages of the method its sender
    /// (the batch's receiver) takes in one batch (at most [`MAX_BATCH`]; see
    /// [`Method::batch_max`]). A sender sends bigger batches than [`FIRST_BATCH`] to a node
    /// only once a verified answer from it says so, so that nodes from before it (which
    /// take [`FIRST_BATCH`] and say nothing) never see one.
    ///
    /// [`FIRST_BATCH`]: super::FIRST_BATCH
    /// [`Method::batch_max`]: crate::methods::Method::batch_max
    #[serde(rename = "batchMax", default, skip_serializing_if = "Option::is_none")]
    pub batch_max: Option<u32>,
    /// On the first reply of a batch's answer, from session 29 on: this node checks
    /// signatures over a payload's digest ([`Covers::Digest`]), so its sender may sign its
    /// next batches that way. Nodes from before it say nothing (and would refuse such a
    /// batch); they get batches signed over their bytes.
    ///
    /// [`Covers::Digest`]: crate::keys::Covers::Digest
    #[serde(
        rename = "digestSig",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub digest_sig: bool,
    /// From session 43 on: the receiver cannot say whether it ran the message, or how far
    /// (it was running when the receiver was killed or lost power; it is never run again).
    /// Delivered, and perhaps not done: its sender keeps it in failed-messages.txt
    /// (outcome `interrupted`), where an operator finds what may need sending again.
    /// Nodes from before it said so only in `output`; their answers count as `acked`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the wire form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        json_into(self, out);
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
            batch_max: None,
            digest_sig: false,
            interrupted: false,
        }
    }

    /// The replies to a batch, in its order.
    pub fn encode_batch(replies: &[Reply]) -> Vec<u8> {
        serde_json::to_vec(replies).expect("Replies always serialize")
    }

    /// A receiver's answer to a batch: [`Reply::encode_batch`], the first reply saying how
    /// many messages of the method this node takes in one batch (`batchMax`: at most
    /// [`MAX_BATCH`]) and that it checks signatures over a digest (`digestSig`).
    pub fn encode_batch_answer(replies: &[Reply], batch_max: usize) -> Vec<u8> {
        let mut out = vec![b'['];
        for (i, reply) in replies.iter().enumerate() {
            if i == 0 {
                let first = Reply {
                    batch_max: Some(batch_max.min(MAX_BATCH) as u32),
                    digest_sig: true,
                    ..reply.clone()
                };
                first.encode_into(&mut out);
            } else {
                out.push(b',');
                reply.encode_into(&mut out);
            }
        }
        out.push(b']');
        out
    }

    pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Reply>, DecodeError> {
        array_of(bytes).map_err(|source| DecodeError::Json {
            form: Form::BatchReply,
            source,
        })
    }
}

/// A JSON array of `T`s, as `serde_json::from_slice` reads it, into a vector sized once
/// for as many as its bytes could hold (at most [`MAX_BATCH`]; more still go in). Grown
/// from empty, a batch's 1,024 envelopes (544 bytes each) were copied at every doubling,
/// and their last two sizes mapped fresh and faulted in page by page: a sixth of a
/// receiver's time in a stream of events went to copies and page faults. (Space reserved
/// and never written takes no memory where it is mapped on its own, as a batch's is.)
fn array_of<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<Vec<T>, serde_json::Error> {
    struct Sized<T>(usize, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Sized<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // As `Vec`'s own visitor says it (`from_slice`'s words, kept).
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut all = Vec::with_capacity(self.0);
            while let Some(one) = seq.next_element()? {
                all.push(one);
            }
            // Room made for more than came (a few large messages) is handed back: a batch
            // is held while its messages run. (glibc shrinks a block in place: no copy.)
            all.shrink_to_fit();
            Ok(all)
        }
    }
    // No message or reply is written in fewer than 64 bytes.
    let room = (bytes.len() / 64).min(MAX_BATCH);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let all = serde::Deserializer::deserialize_seq(&mut de, Sized(room, std::marker::PhantomData))?;
    de.end()?;
    Ok(all)
}

/// Appends `value`'s JSON to `out`: what travels is plain strings and numbers, which
/// always serialize.
fn json_into(value: &impl Serialize, out: &mut Vec<u8>) {
    serde_json::to_writer(out, value).expect("plain strings and numbers always serialize");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Kind;

    /// An array is read whole however many items its bytes seemed to leave room for, and
    /// anything else is refused as JSON refuses it.
    #[test]
    fn an_array_is_read_whole_whatever_room_was_made_for_it() {
        let short: Vec<u8> = array_of(b"[1,2,3,4,5,6,7,8,9]").unwrap();
        assert_eq!(short, (1..=9).collect::<Vec<u8>>());
        let many = format!("[{}]", vec!["7"; 3000].join(","));
        assert_eq!(array_of::<u8>(many.as_bytes()).unwrap().len(), 3000);
        assert!(array_of::<u8>(b"{\"a\":1}").is_err());
        assert!(array_of::<u8>(b"[1,2] [3]").is_err(), "trailing input");
        assert!(array_of::<u8>(b"[1,2").is_err(), "cut short");
    }

    /// `array_of` says what `serde_json::from_slice::<Vec<T>>` says, to the word, of input
    /// that is no array (a receiver that answers with one reply rather than a batch).
    #[test]
    fn an_array_refused_is_refused_in_serde_jsons_words() {
        for input in [
            &b"{\"a\":1}"[..],
            b"null",
            b"1",
            b"\"x\"",
            b"[1,2] [3]",
            b"[1,",
            b"[1,]",
        ] {
            assert_eq!(
                array_of::<u8>(input).unwrap_err().to_string(),
                serde_json::from_slice::<Vec<u8>>(input)
                    .unwrap_err()
                    .to_string(),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// `message` as central's message `central-1`.
    fn central_1(message: Message) -> Envelope {
        Envelope {
            id: "central-1".into(),
            from_node: "central".into(),
            accepted: 1,
            reply_ticket: None,
            grant: None,
            message,
        }
    }

    /// A batch of a few large messages does not keep room for a thousand (held, with the
    /// batch, for as long as its messages run).
    #[test]
    fn a_batch_of_few_large_messages_keeps_no_room_for_many() {
        let e = central_1(Message::new(
            "ship1",
            Kind::CommandAck,
            "CLICommand",
            vec!["x".repeat(30_000)],
        ));
        let batch = decode_batch(&encode_batch(&[e.clone(), e])).unwrap();
        assert_eq!(batch.len(), 2);
        assert!(
            batch.capacity() <= 4,
            "room for {} envelopes",
            batch.capacity()
        );
    }

    #[test]
    fn an_envelope_reads_back_as_flatten_wrote_it_every_field_of_its_message_too() {
        let mut message = Message::new("ship1", Kind::CommandAck, "CLICommand", vec!["df".into()]);
        message.timeout = Some(1);
        message.retries = Some(2);
        message.ttl = Some(3);
        message.to_nodes = Some(vec!["ship2".into()]);
        message.method_timeout = Some(-1);
        message.method_args = Some(vec!["a".into()]);
        message.reply_method = Some("File".into());
        message.reply_method_args = Some(vec!["b".into()]);
        message.reply_timeout = Some(4);
        message.reply_retries = Some(5);
        message.directory = Some("d".into());
        message.file_name = Some("f".into());
        message.schedule = Some(vec![6, 7]);
        message.results_to = Some("central".into());
        message.in_reply_to = Some(crate::message::InReplyTo {
            id: "central-1-1-ab".into(),
            method: "CLICommand".into(),
            status: Status::Ok,
            exit_code: Some(0),
            ticket: "t".into(),
        });
        let envelope = Envelope {
            id: "central-1-2-cd".into(),
            from_node: "central".into(),
            accepted: 8,
            reply_ticket: Some("r".into()),
            grant: Some("g".into()),
            message,
        };
        let bytes = envelope.encode();
        assert_eq!(
            serde_json::from_slice::<Envelope>(&bytes).unwrap(),
            envelope
        );
        // Unknown keys passed over; a key twice, an array of values, or no toNode refused.
        let text = String::from_utf8(bytes).unwrap();
        let with = |extra: &str| format!("{},{extra}}}", &text[..text.len() - 1]);
        assert_eq!(
            serde_json::from_str::<Envelope>(&with("\"later\":[1]")).unwrap(),
            envelope
        );
        assert!(serde_json::from_str::<Envelope>(&with("\"toNode\":\"x\"")).is_err());
        assert!(serde_json::from_str::<Envelope>(&with("\"id\":\"x\"")).is_err());
        assert!(serde_json::from_str::<Envelope>(
            "[\"i\",\"central\",1,null,null,\"ship1\",[],\"EventACK\",\"TextLogging\"]"
        )
        .is_err());
        assert!(serde_json::from_str::<Envelope>(&text.replace("\"toNode\"", "\"to\"")).is_err());
    }

    #[test]
    fn an_interrupted_answer_says_so_in_a_key_a_node_from_before_it_ignores() {
        let mut reply = Reply::refusal("a".into(), "central", "ship1", "why".into());
        assert!(!String::from_utf8(reply.encode())
            .unwrap()
            .contains("interrupted"));
        reply.interrupted = true;
        let wire = String::from_utf8(reply.encode()).unwrap();
        assert!(wire.contains("\"interrupted\":true"), "{wire}");
        assert!(Reply::decode(wire.as_bytes()).unwrap().interrupted);
        // From a node before it: said in the output alone, so not interrupted here.
        let old = br#"{"id":"a","fromNode":"ship1","status":"error","output":"a was interrupted"}"#;
        assert!(!Reply::decode(old).unwrap().interrupted);
    }

    #[test]
    fn a_batch_answer_says_on_its_first_reply_how_many_this_node_takes() {
        let replies: Vec<Reply> = ["a", "b", "c"]
            .iter()
            .map(|id| Reply::refusal(id.to_string(), "central", "ship1", "why".into()))
            .collect();
        let wire = Reply::encode_batch_answer(&replies, MAX_BATCH);
        let text = String::from_utf8(wire.clone()).unwrap();
        assert_eq!(text.matches("\"batchMax\":1024").count(), 1, "{text}");
        let got = Reply::decode_batch(&wire).unwrap();
        assert_eq!(got[0].batch_max, Some(MAX_BATCH as u32));
        assert!(got[1..].iter().all(|r| r.batch_max.is_none()));
        // And that it checks signatures over a digest, on the first reply only.
        assert_eq!(text.matches("\"digestSig\":true").count(), 1, "{text}");
        assert!(got[0].digest_sig && got[1..].iter().all(|r| !r.digest_sig));
        let plain: Vec<Reply> = got
            .into_iter()
            .map(|r| Reply {
                batch_max: None,
                digest_sig: false,
                ..r
            })
            .collect();
        assert_eq!(plain, replies);
        // An answer without it (a node from before it) decodes as saying nothing; and a
        // reply with a key this version does not know decodes as before (what nodes before
        // `batchMax` do with it: their replies did not refuse unknown keys either).
        let old = Reply::decode_batch(&Reply::encode_batch(&replies)).unwrap();
        assert!(old.iter().all(|r| r.batch_max.is_none() && !r.digest_sig));
        assert!(!String::from_utf8(Reply::encode_batch(&replies))
            .unwrap()
            .contains("digestSig"));
        let newer = br#"[{"id":"a","fromNode":"ship1","status":"ok","batchMax":4096,"later":1}]"#;
        assert_eq!(Reply::decode_batch(newer).unwrap()[0].batch_max, Some(4096));
        // A method that runs each message alone says 256; nothing says more than this
        // node takes.
        let wire = Reply::encode_batch_answer(&replies, 256);
        assert_eq!(Reply::decode_batch(&wire).unwrap()[0].batch_max, Some(256));
        let wire = Reply::encode_batch_answer(&replies, usize::MAX);
        assert_eq!(
            Reply::decode_batch(&wire).unwrap()[0].batch_max,
            Some(MAX_BATCH as u32)
        );
    }

    #[test]
    fn a_batch_of_more_than_max_batch_is_refused_whole() {
        let e = central_1(Message::new(
            "ship1",
            Kind::EventAck,
            "TextLogging",
            vec!["x".into()],
        ));
        let batch = |n: usize| {
            let envelopes: Vec<Envelope> = (0..n)
                .map(|i| Envelope {
                    id: format!("central-{i}"),
                    ..e.clone()
                })
                .collect();
            encode_batch(&envelopes)
        };
        assert_eq!(decode_batch(&batch(MAX_BATCH)).unwrap().len(), MAX_BATCH);
        let err = decode_batch(&batch(MAX_BATCH + 1)).unwrap_err();
        assert!(
            matches!(err, DecodeError::BatchSize { count } if count == MAX_BATCH + 1),
            "{err}"
        );
        assert!(decode_batch(b"[]").is_err());
    }

    #[test]
    fn envelope_wire_form_round_trips_and_keeps_seed_keys() {
        let m = Message::new(
            "ship1",
            Kind::CommandAck,
            "CLICommand",
            vec!["bash".into(), "-c".into(), "ls -l ../".into()],
        );
        let e = central_1(m);
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
        // Ids are printable ASCII: no control, no right-to-left mark or zero-width space
        // to disguise a log line, no space.
        for bad in [
            "a\u{1}b",
            "central-1\u{202e}gol",
            "central-\u{200b}1",
            "a b",
            "",
        ] {
            let mut odd = e.clone();
            odd.id = bad.into();
            let err = Envelope::decode(&odd.encode()).unwrap_err();
            assert!(matches!(err, DecodeError::Id(_)), "{bad:?}: {err}");
        }
        let mut big = e.clone();
        big.message.data = vec!["x".repeat(super::super::MAX_DATA_BYTES + 1)];
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
