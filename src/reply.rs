//! Results that go where the operator says (`replyMethod`), as messages of their own.
//!
//! Without `replyMethod` a method's result comes back inside the ACK and is stored in
//! `replies/` on the sender, as the seed has it. With it, the receiver sends the result to
//! the request's sender as a **new message** (an EventACK whose method is `replyMethod`,
//! e.g. `File` or `Console`), journaled on the receiver before the ACK, and so retried,
//! signed and run exactly once like any message, also across a restart of either side.
//! `None` sends it nowhere; the ACK still says how the request ended.
//!
//! # Who may send a result
//!
//! A result message writes on the request's sender (a file under its data folder, its
//! console), so it must be what that node asked for and nothing else. The request's
//! sender signs a *ticket* over what it asks for (the request's id, itself, the
//! destination, `replyMethod`, `replyMethodArgs`, `directory`, `fileName`: a
//! [`ResultRoute`]), and sends it in the request (`replyTicket`). The receiver copies it
//! into the result (`inReplyTo.ticket`). The sender admits a result only if the ticket
//! verifies against its own key for the route the result takes, and the result itself is
//! signed by the destination it asked (admission's usual check). So no node can make up a
//! result for an id it was never sent, send one to another method or file than asked, or
//! answer for another node; and a reply method must take events, so a result can never run
//! a command. The ticket is stateless: a node keeps no table of what it asked, which would
//! grow with the fleet and could be lost; one request may have several results (a
//! stream), each its own message with its own id.

use crate::message::{Envelope, InReplyTo, Kind, KindCheck, Message};
use crate::methods::Outcome;
use crate::subject::validate_name;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The `replyMethod` that sends a result nowhere.
pub const NONE: &str = "None";

/// The methods that write where `directory` and `fileName` say.
pub const FILE_METHODS: [&str; 2] = ["File", "FileAppend"];

/// Folders of the data folder that are steward's own: no `directory` may start with one,
/// nor a copy's relative `dstPath`.
pub const OWN_FOLDERS: [&str; 6] = [
    "journal", "replies", "textlog", "keys", "startup", "received",
];

/// Longest `fileName`: what a file's name may be (Linux's `NAME_MAX`, 255) less the room
/// the names steward makes beside it take: `File`'s temporary `.<fileName>.<thread>.tmp`
/// (16 more) and `FileAppend`'s rotated `<fileName>.1` … (2 more). With 255, `File`
/// refused every result for a name past 239 bytes (its temporary name too long), and
/// `FileAppend` failed every append once its file was first due to rotate.
const MAX_FILE_NAME: usize = 255 - ".".len() - ".2147483647.tmp".len();

/// Most bytes of a result's output: what one message may carry.
const MAX_RESULT_OUTPUT: usize = crate::message::MAX_DATA_BYTES - 4096;

/// Most bytes a result message takes on the wire besides its output and arguments: ids,
/// names, its place, the ticket (each within its own limit).
const RESULT_FIELDS: usize = 4096;

/// Why a message's result route, or a place to write, cannot be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// `replyMethod` names a method that cannot take a result (unknown, or not an event).
    ReplyMethod { method: String, why: String },
    /// `key` means something only with `replyMethod`.
    WithoutReplyMethod(&'static str),
    /// `method` writes a file and needs `directory` and `fileName`.
    NoPlace { method: String },
    /// `directory` is not a relative path of plain names, or is one of steward's own.
    Directory {
        directory: String,
        why: &'static str,
    },
    /// `fileName` is not a plain name.
    FileName { file_name: String, why: String },
    /// A folder on the way, or the file, is a symbolic link or not what it should be.
    Escape { path: PathBuf, why: &'static str },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::ReplyMethod { method, why } => write!(
                f,
                "bad replyMethod {method:?}: {why} (a result travels as an EventACK, to a method that takes events: File, FileAppend, Console, TextLogging, or None)"
            ),
            RouteError::WithoutReplyMethod(key) => {
                write!(f, "{key} has no effect without replyMethod")
            }
            RouteError::NoPlace { method } => write!(
                f,
                "{method} needs directory and fileName: it writes <dataFolder>/<directory>/<fromNode>/<fileName>"
            ),
            RouteError::Directory { directory, why } => {
                write!(f, "bad directory {directory:?}: {why}")
            }
            RouteError::FileName { file_name, why } => {
                write!(f, "bad fileName {file_name:?}: {why}")
            }
            RouteError::Escape { path, why } => write!(f, "{}: {why}", path.display()),
        }
    }
}

impl std::error::Error for RouteError {}

/// Checks, at intake, what a message says of its result and of where a file goes.
pub fn check_request(m: &Message, refusal: &KindCheck) -> Result<(), RouteError> {
    match &m.reply_method {
        Some(method) if method == NONE => {}
        Some(method) => {
            let why = validate_name(method)
                .err()
                .map(|e| e.reason.to_string())
                .or_else(|| refusal(method, Kind::EventAck))
                .or_else(|| {
                    (!crate::methods::takes_results(method))
                        .then(|| format!("{method} does not take results"))
                });
            if let Some(why) = why {
                return Err(RouteError::ReplyMethod {
                    method: method.clone(),
                    why,
                });
            }
        }
        None => {
            let stray = [
                ("replyMethodArgs", m.reply_method_args.is_some()),
                ("replyTimeout", m.reply_timeout.is_some()),
                ("replyRetries", m.reply_retries.is_some()),
            ];
            if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(RouteError::WithoutReplyMethod(key));
            }
        }
    }
    check_place(m)
}

/// Checks `directory` and `fileName`, and that a method writing files has both: at intake,
/// and on receipt (where they become a path).
pub fn check_place(m: &Message) -> Result<(), RouteError> {
    if let Some(d) = &m.directory {
        check_directory(d)?;
    }
    if let Some(f) = &m.file_name {
        check_file_name(f)?;
    }
    let writes = [Some(&m.method), m.reply_method.as_ref()]
        .into_iter()
        .flatten()
        .find(|method| FILE_METHODS.contains(&method.as_str()));
    if let Some(method) = writes {
        if m.directory.is_none() || m.file_name.is_none() {
            return Err(RouteError::NoPlace {
                method: method.clone(),
            });
        }
    }
    Ok(())
}

fn check_directory(directory: &str) -> Result<(), RouteError> {
    let refuse = |why| {
        Err(RouteError::Directory {
            directory: directory.to_string(),
            why,
        })
    };
    if directory.starts_with('/') {
        return refuse("an absolute path; give a folder under the data folder");
    }
    let parts: Vec<&str> = directory.split('/').collect();
    if parts.len() > 8 {
        return refuse("more than 8 levels");
    }
    for part in &parts {
        if *part == ".." {
            return refuse("\"..\" would leave the data folder");
        }
        if validate_name(part).is_err() {
            return refuse("each level must be a plain name (ASCII letters, digits, '-', '_')");
        }
    }
    if OWN_FOLDERS.contains(&parts[0]) {
        return refuse("a folder of steward's own");
    }
    Ok(())
}

fn check_file_name(file_name: &str) -> Result<(), RouteError> {
    let why = if file_name.starts_with('.') {
        Some("it starts with '.'".to_string())
    } else if file_name.len() > MAX_FILE_NAME {
        Some(format!(
            "it is {} bytes; a fileName may take {MAX_FILE_NAME} (room is kept for the temporary and rotated names beside it)",
            file_name.len()
        ))
    } else {
        file_name
            .split('.')
            .find_map(|part| validate_name(part).err())
            .map(|e| e.reason.to_string())
    };
    match why {
        Some(why) => Err(RouteError::FileName {
            file_name: file_name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// Where `File`/`FileAppend` write a message from `from`: `<root>/<directory>/<from>/
/// <fileName>`, its folders made (private) as need be. Refuses a path that leaves `root`:
/// every level is checked again here, and none may be a symbolic link (the data folder is
/// private to steward's user, so no one else can swap one in after the check).
pub fn place(root: &Path, m: &Message, from: &str) -> Result<PathBuf, RouteError> {
    check_place(m)?;
    validate_name(from).map_err(|e| RouteError::Directory {
        directory: from.to_string(),
        why: e.reason,
    })?;
    let (Some(directory), Some(file_name)) = (&m.directory, &m.file_name) else {
        return Err(RouteError::NoPlace {
            method: m.method.clone(),
        });
    };
    let mut path = root.to_path_buf();
    for part in directory.split('/').chain([from]) {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(RouteError::Escape {
                    path,
                    why: "a symbolic link: refused, it could lead out of the data folder",
                })
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(RouteError::Escape {
                    path,
                    why: "not a folder",
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Err(e) = fs::DirBuilder::new()
                    .mode(crate::files::PRIVATE_DIR)
                    .create(&path)
                {
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(RouteError::Escape {
                            path,
                            why: "cannot be made",
                        });
                    }
                }
            }
            Err(_) => {
                return Err(RouteError::Escape {
                    path,
                    why: "cannot be looked at",
                })
            }
        }
    }
    path.push(file_name);
    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(RouteError::Escape {
            path,
            why: "a symbolic link: refused, it could lead out of the data folder",
        });
    }
    Ok(path)
}

/// What a request's sender asks for its result: what its ticket signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRoute<'a> {
    /// The request's id.
    pub id: &'a str,
    /// The request's sender, where the result goes.
    pub from: &'a str,
    /// The request's destination, which sends the result.
    pub to: &'a str,
    pub reply_method: &'a str,
    pub args: &'a [String],
    pub directory: Option<&'a str>,
    pub file_name: Option<&'a str>,
}

impl<'a> ResultRoute<'a> {
    /// The route a request asks for, if it asks for a result message.
    pub fn of_request(e: &'a Envelope) -> Option<ResultRoute<'a>> {
        let m = &e.message;
        let method = m.reply_method.as_deref().filter(|r| *r != NONE)?;
        Some(ResultRoute {
            id: &e.id,
            from: &e.from_node,
            to: &m.to_node,
            reply_method: method,
            args: m.reply_method_args.as_deref().unwrap_or(&[]),
            directory: m.directory.as_deref(),
            file_name: m.file_name.as_deref(),
        })
    }

    /// The route a result message takes, if it is one.
    pub fn of_result(e: &'a Envelope) -> Option<ResultRoute<'a>> {
        let m = &e.message;
        let answers = m.in_reply_to.as_ref()?;
        Some(ResultRoute {
            id: &answers.id,
            from: &m.to_node,
            to: &e.from_node,
            reply_method: &m.method,
            args: m.method_args.as_deref().unwrap_or(&[]),
            directory: m.directory.as_deref(),
            file_name: m.file_name.as_deref(),
        })
    }

    /// The bytes the ticket signs: each field, length-prefixed so none can run into the
    /// next.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = b"steward result route v1\n".to_vec();
        let mut field = |s: &str| {
            v.extend_from_slice(format!("{}:", s.len()).as_bytes());
            v.extend_from_slice(s.as_bytes());
        };
        for s in [self.id, self.from, self.to, self.reply_method] {
            field(s);
        }
        field(&self.args.len().to_string());
        for a in self.args {
            field(a);
        }
        for s in [self.directory, self.file_name] {
            field(s.unwrap_or("\0none"));
        }
        v
    }
}

/// What `output` takes on the wire: JSON writes a control character as six bytes.
pub fn wire(output: &str) -> usize {
    serde_json::to_string(output).map_or(output.len(), |j| j.len())
}

/// Most bytes of steward's notes kept whole at the end of an output that is cut (see
/// [`notes_start`]): a few lines; a command printing lines that look like them gets no
/// more.
const MAX_NOTES: usize = 1024;

/// Where the lines of steward's own notes (`[steward: …]`, each after a newline) that end
/// `output` begin, within [`MAX_NOTES`] of its end; its length if none end it. A result
/// cut to one message, and an ACK cut to the broker's limit, keep them.
pub(crate) fn notes_start(output: &str) -> usize {
    let mut start = output.len();
    while let Some(line) = output[..start].strip_suffix("]\n") {
        match line.rfind("\n[steward: ") {
            Some(at) if output.len() - at <= MAX_NOTES => start = at,
            _ => break,
        }
    }
    start
}

/// How much output (as [`wire`] counts it) one result message of request `m` carries: what
/// one message may carry, and what the broker takes in one (`max_payload`, its headers
/// included; 0: no limit known), less the arguments it carries too (as they are written).
/// An ACK is cut to the broker's limit as it is sent; a result is journaled first, and one
/// larger than the broker takes could never be sent.
pub fn result_room(m: &Message, max_payload: usize) -> usize {
    let args: usize = m
        .reply_method_args
        .iter()
        .flatten()
        .map(|a| wire(a) + 1)
        .sum();
    let most = match max_payload {
        0 => MAX_RESULT_OUTPUT,
        max => {
            MAX_RESULT_OUTPUT.min(max.saturating_sub(crate::broker::HEADER_ROOM + RESULT_FIELDS))
        }
    };
    most.saturating_sub(args)
}

/// The result message of `request`, which ended as `outcome`, if the request asked for one
/// (`ticket`: the request's `replyTicket`; without one the result could not be admitted,
/// so none is made). Its output is cut to what one message may carry, and the broker takes
/// (`max_payload`, see [`result_room`]).
pub fn result_message(
    request: &Envelope,
    outcome: &Outcome,
    max_payload: usize,
) -> Option<Message> {
    let route = ResultRoute::of_request(request)?;
    let m = &request.message;
    // A node's message to itself from its startup folder sends its results elsewhere, as
    // plain events of its own: that node never asked, so there is no ticket to carry.
    let elsewhere = m
        .results_to
        .as_deref()
        .filter(|_| request.from_node == m.to_node);
    let (to, in_reply_to) = match elsewhere {
        Some(to) => (to, None),
        None => (route.from, Some(request.reply_ticket.clone()?)),
    };
    let mut output = outcome.output.clone();
    let room = result_room(m, max_payload);
    if wire(&output) > room {
        // Steward's notes at the end (how the command ended) are kept, the output before
        // them cut: a reader of the file the result goes to needs them most.
        let mut notes = output.split_off(notes_start(&output));
        let note = "\n[steward: output cut to what one message may carry]\n";
        // As JSON (a control character takes six bytes): where they would not fit beside
        // the cut's own note, they are not kept.
        if wire(&notes) + note.len() + 2 > room {
            notes.clear();
        }
        let room = room.saturating_sub(note.len() + 2 + wire(&notes));
        // Arguments may leave no room at all (`""` takes two bytes): nothing is kept then.
        while !output.is_empty() && wire(&output) > room {
            let mut cut = (output.len() * room / wire(&output)).min(output.len() - 1);
            while !output.is_char_boundary(cut) {
                cut -= 1;
            }
            output.truncate(cut);
        }
        output.push_str(note);
        output.push_str(notes.trim_start_matches('\n'));
    }
    Some(Message {
        timeout: m.reply_timeout,
        retries: m.reply_retries,
        // A result waits for its sender as long as the request did for its receiver, and
        // at least a week (as an error report): the sender may be away, and a result
        // given up on cannot be sent again from failed-messages.txt.
        ttl: Some(m.ttl.unwrap_or(0).max(crate::node::ERROR_REPORT_TTL_SECS)),
        method_args: m.reply_method_args.clone(),
        directory: m.directory.clone(),
        file_name: m.file_name.clone(),
        in_reply_to: in_reply_to.map(|ticket| InReplyTo {
            id: request.id.clone(),
            method: m.method.clone(),
            status: outcome.status,
            exit_code: outcome.exit_code,
            ticket,
        }),
        ..Message::new(to, Kind::EventAck, route.reply_method, vec![output])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_message(directory: &str, file_name: &str) -> Message {
        Message {
            directory: Some(directory.into()),
            file_name: Some(file_name.into()),
            ..Message::new("central", Kind::EventAck, "File", vec!["x".into()])
        }
    }

    #[test]
    fn a_place_never_leaves_the_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        let ok = place(dir.path(), &file_message("m/daily", "df.txt"), "ship1").unwrap();
        assert_eq!(ok, dir.path().join("m/daily/ship1/df.txt"));
        for (d, f, says) in [
            ("../etc", "x", "would leave the data folder"),
            ("/etc", "x", "an absolute path"),
            ("m/../..", "x", "would leave"),
            ("m", "../x", "bad fileName"),
            ("m", "a/b", "bad fileName"),
            ("m", ".bashrc", "starts with '.'"),
            ("keys", "x", "steward's own"),
            ("journal/x", "y", "steward's own"),
            ("m x", "y", "plain name"),
        ] {
            let err = place(dir.path(), &file_message(d, f), "ship1").unwrap_err();
            assert!(err.to_string().contains(says), "{d}/{f}: {err}");
        }
        // A name of plain parts, longer than a file's name may be (and than a message, once
        // 400 kB: it was journaled, and its batch refused there, for ever).
        let long = "a.".repeat(128) + "txt";
        let err = place(dir.path(), &file_message("m", &long), "ship1").unwrap_err();
        assert!(err.to_string().contains("may take 239"), "{err}");
        // A symbolic link on the way, or as the file, is refused.
        std::os::unix::fs::symlink("/tmp", dir.path().join("m/daily/ship2")).unwrap();
        let err = place(dir.path(), &file_message("m/daily", "df.txt"), "ship2").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("m/daily/ship1/pw")).unwrap();
        let err = place(dir.path(), &file_message("m/daily", "pw"), "ship1").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_route_is_the_same_seen_from_the_request_and_from_its_result() {
        let request = Envelope {
            id: "central-1".into(),
            from_node: "central".into(),
            accepted: 0,
            reply_ticket: Some("t".into()),
            grant: None,
            message: Message {
                reply_method: Some("File".into()),
                reply_method_args: Some(vec!["a".into()]),
                directory: Some("m".into()),
                file_name: Some("df.txt".into()),
                ..Message::new("ship1", Kind::CommandAck, "CLICommand", vec!["df".into()])
            },
        };
        let result = Envelope {
            id: "ship1-1".into(),
            from_node: "ship1".into(),
            accepted: 0,
            reply_ticket: None,
            grant: None,
            message: result_message(&request, &Outcome::ok("out"), 0).unwrap(),
        };
        let (asked, taken) = (
            ResultRoute::of_request(&request).unwrap(),
            ResultRoute::of_result(&result).unwrap(),
        );
        assert_eq!(asked, taken);
        assert_eq!(asked.bytes(), taken.bytes());
        // Another file, another method, another sender: another route.
        let mut other = result.clone();
        other.message.file_name = Some("passwd".into());
        assert_ne!(
            ResultRoute::of_result(&other).unwrap().bytes(),
            asked.bytes()
        );
        let mut other = result.clone();
        other.from_node = "ship2".into();
        assert_ne!(
            ResultRoute::of_result(&other).unwrap().bytes(),
            asked.bytes()
        );
        // No result for None, nor without a ticket.
        let mut none = request.clone();
        none.message.reply_method = Some(NONE.into());
        assert!(result_message(&none, &Outcome::ok(""), 0).is_none());
        let mut unticketed = request;
        unticketed.reply_ticket = None;
        assert!(result_message(&unticketed, &Outcome::ok(""), 0).is_none());
    }

    #[test]
    fn a_request_from_the_wire_is_held_to_intake_s_rules() {
        // A sender's word is not enough: what a receiver would journal or act on is checked
        // again on receipt (a lane per made-up method, a timeout that overflows, a retry
        // count without end, a kill deadline of -5).
        let good = Envelope {
            id: "ship2-1".into(),
            from_node: "ship2".into(),
            accepted: 0,
            reply_ticket: Some("x".into()),
            grant: None,
            message: Message {
                reply_method: Some("Console".into()),
                ..Message::new("ship1", Kind::CommandAck, "PublicKey", vec![])
            },
        };
        assert!(Envelope::decode(&good.encode()).is_ok());
        let bad: [(&str, serde_json::Value, &str); 5] = [
            ("replyMethod", "A1".into(), "bad replyMethod \"A1\""),
            ("replyTimeout", u64::MAX.into(), "bad replyTimeout"),
            ("replyRetries", u32::MAX.into(), "bad replyRetries"),
            ("methodTimeout", (-5).into(), "bad methodTimeout -5"),
            ("retries", u32::MAX.into(), "bad retries"),
        ];
        for (key, value, says) in bad {
            let mut v = serde_json::to_value(&good).unwrap();
            v[key] = value;
            let err = Envelope::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert!(err.to_string().contains(says), "{key}: {err}");
        }
    }

    #[test]
    fn a_result_of_binary_output_still_fits_one_message() {
        let request = Envelope {
            id: "central-1".into(),
            from_node: "central".into(),
            accepted: 0,
            reply_ticket: Some("t".into()),
            grant: None,
            message: Message {
                reply_method: Some("FileAppend".into()),
                directory: Some("m".into()),
                file_name: Some("bin".into()),
                ..Message::new("ship1", Kind::CommandAck, "CLICommand", vec![])
            },
        };
        // Control characters take six bytes each in JSON.
        let output = "\u{1}".repeat(crate::message::MAX_DATA_BYTES);
        let result = result_message(&request, &Outcome::ok(output), 0).unwrap();
        let wire = serde_json::to_string(&result.data[0]).unwrap().len();
        assert!(wire <= MAX_RESULT_OUTPUT, "{wire}");
        assert!(result.data[0].ends_with("carry]\n"));
        // Steward's notes at its end are kept, after the cut's; lines that only look like
        // them are cut with the rest past a kilobyte.
        let noted = format!(
            "{}\n[steward: killed after the 2s deadline (methodTimeout)]\n",
            "x".repeat(crate::message::MAX_DATA_BYTES)
        );
        let result = result_message(&request, &Outcome::ok(noted), 0).unwrap();
        assert!(
            result.data[0]
                .ends_with("carry]\n[steward: killed after the 2s deadline (methodTimeout)]\n"),
            "{:?}",
            &result.data[0][result.data[0].len() - 200..]
        );
        let fake = "\n[steward: x]\n".repeat(20_000);
        let result = result_message(&request, &Outcome::ok(fake), 0).unwrap();
        let wire = serde_json::to_string(&result.data[0]).unwrap().len();
        assert!(wire <= MAX_RESULT_OUTPUT, "{wire}");
        let kept = result.data[0].split("carry]\n").nth(1).unwrap();
        assert!(kept.len() <= MAX_NOTES, "{}", kept.len());
        // Notes that take more as JSON than the room left are not kept.
        let control = format!("\n[steward: {}]\n", "\u{1}".repeat(900));
        let mut tight = request.clone();
        tight.message.reply_method_args = Some(vec!["a".repeat(MAX_RESULT_OUTPUT - 200)]);
        let output = "x".repeat(1000) + &control;
        let result = result_message(&tight, &Outcome::ok(output), 0).unwrap();
        assert!(!result.data[0].contains('\u{1}'), "{:?}", result.data[0]);
        // Waits for its sender at least a week.
        assert!(result.ttl >= Some(crate::node::ERROR_REPORT_TTL_SECS));
        // Arguments that leave no room for any output (as much as intake takes): the
        // result says it was cut, and is made (it once looped for ever).
        let mut request = request;
        let args = MAX_RESULT_OUTPUT - 10;
        request.message.reply_method_args = Some(vec!["a".repeat(args)]);
        for output in ["", &"x".repeat(20), &"\u{1}".repeat(1000)] {
            let result = result_message(&request, &Outcome::ok(output.to_string()), 0).unwrap();
            let expected = if output.is_empty() {
                ""
            } else {
                "\n[steward: output cut to what one message may carry]\n"
            };
            assert_eq!(result.data[0], expected, "{output:?}");
        }
        // Arguments that take six times their length as JSON leave that much less room.
        request.message.reply_method_args = Some(vec!["\u{1}".repeat(40_000)]);
        let result = result_message(&request, &Outcome::ok("x".repeat(200_000)), 0).unwrap();
        let whole = serde_json::to_vec(&result).unwrap().len();
        assert!(whole <= crate::message::MAX_WIRE_BYTES, "{whole}");
        assert!(result.data_json_bytes() <= crate::message::MAX_DATA_BYTES);
        // Behind a broker that takes 64 KiB, with the longest place and ids there may be:
        // the whole result, as it leaves, still fits with its headers.
        request.message.reply_method_args = Some(vec!["\u{1}".repeat(4_000)]);
        request.message.directory = Some(vec!["d".repeat(128); 8].join("/"));
        request.message.file_name = Some("f".repeat(MAX_FILE_NAME));
        request.id = "i".repeat(256);
        let max = 64 * 1024;
        let result = result_message(&request, &Outcome::ok("\u{1}".repeat(200_000)), max);
        let result = Envelope {
            id: "j".repeat(256),
            from_node: "n".repeat(128),
            accepted: u64::MAX,
            reply_ticket: None,
            grant: None,
            message: result.unwrap(),
        };
        assert!(result.message.data[0].ends_with("carry]\n"));
        let whole = result.encode().len();
        assert!(whole + crate::broker::HEADER_ROOM <= max, "{whole}");
        assert!(whole > max / 2, "{whole}: cut far below the limit");
    }

    #[test]
    fn a_reply_method_must_take_events() {
        let known = |m: &str, k: Kind| crate::methods::kind_refusal(m, k);
        let mut m = Message::new("ship1", Kind::CommandAck, "CLICommand", vec!["id".into()]);
        m.reply_method = Some("CLICommand".into());
        let err = check_request(&m, &known).unwrap_err().to_string();
        assert!(err.contains("bad replyMethod \"CLICommand\""), "{err}");
        m.reply_method = Some("CopyDst".into());
        let err = check_request(&m, &known).unwrap_err().to_string();
        assert!(err.contains("CopyDst does not take results"), "{err}");
        m.reply_method = Some("Console".into());
        assert!(check_request(&m, &known).is_ok());
        m.reply_method = Some("File".into());
        assert!(check_request(&m, &known)
            .unwrap_err()
            .to_string()
            .contains("needs directory and fileName"));
        m.reply_method = None;
        m.reply_timeout = Some(3);
        assert!(check_request(&m, &known)
            .unwrap_err()
            .to_string()
            .contains("replyTimeout has no effect"));
    }
}
