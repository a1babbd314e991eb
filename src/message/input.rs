//! The text of `inmsg.txt` → messages, and the pieces that could not be taken.
//!
//! The text is split into top-level values here, not by a JSON parser, so that one broken
//! array is rejected alone and the arrays after it still go, and so that an array still
//! being written is left for later rather than rejected. Each complete value is then
//! parsed, and each message in it validated alone: read straight into a [`Message`] when it
//! is plain, else through a JSON tree ([`Message::from_value`]), which names what is wrong.

use super::validate::KEYS;
use super::{KindCheck, Message, MAX_FAN_OUT_BYTES};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;

/// One piece of `inmsg.txt` that could not be taken, kept for the operator: verbatim, or,
/// for one bad message of an array, as an array of that message alone, which is itself
/// valid input once fixed.
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
    /// Where the last rejected piece begins, if it runs to the end of the text and more
    /// text may follow (not `at_end`): where it ends (the next line that opens an array)
    /// is not known yet, and what follows the text may be more of it.
    pub open_from: Option<usize>,
    /// Bytes of the copies made for `toNodes` (beyond each message's first,
    /// [`Message::copy_bytes`] each).
    pub fanned_out: usize,
    /// Parsing stopped before the end of the text, its values not yet looked at: the
    /// copies made for `toNodes` reached [`MAX_FAN_OUT_BYTES`]. The rest is the next batch.
    pub full: bool,
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
    parse_with(text, first_line, at_end, known_method, take_value)
}

/// What takes one complete value: [`take_value`], or in tests [`take_tree`] alone.
type Take = fn(&[u8], usize, &KindCheck, &mut Parsed);

fn parse_with(
    text: &[u8],
    first_line: usize,
    at_end: bool,
    known_method: &KindCheck,
    take: Take,
) -> Parsed {
    let mut parsed = Parsed::default();
    let mut pos = 0;
    // Line numbers for errors, counted as we go (counting from the start for every value
    // would make a long file quadratic).
    let (mut line, mut counted) = (first_line, 0);
    while pos < text.len() {
        let start = pos + blank(&text[pos..]);
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
                        if end == text.len() && !at_end {
                            parsed.open_from = Some(start);
                        }
                        pos = end;
                        parsed.consumed = end;
                        continue;
                    }
                }
            }
            _ => {
                // Garbage: everything up to the next line that opens an array.
                let skip = next_value_start(&text[start..]).unwrap_or(text.len() - start);
                let end = start + skip;
                let what = match text[start..] {
                    // Not garbage, but text in another encoding than JSON's.
                    [0xFF, 0xFE, ..] | [0xFE, 0xFF, ..] => UTF16,
                    _ => "expected a JSON array of messages",
                };
                parsed.rejected.push(Rejected {
                    text: String::from_utf8_lossy(&text[start..end]).into_owned(),
                    error: format!("line {line}: {what}"),
                });
                if end == text.len() && !at_end {
                    parsed.open_from = Some(start);
                }
                pos = end;
                parsed.consumed = end;
                continue;
            }
        };
        let chunk = &text[start..end];
        take(chunk, line, known_method, &mut parsed);
        pos = end;
        parsed.consumed = end;
        if parsed.fanned_out >= MAX_FAN_OUT_BYTES && pos < text.len() {
            parsed.full = true;
            break;
        }
    }
    parsed
}

/// Takes one complete array (or object) that starts on `line`: its good messages into
/// `parsed.messages`, and the value, or each bad message in it, into `parsed.rejected`.
///
/// Most input is an array of plain messages (known keys, each once, `toNode` given, good):
/// each is read straight into a [`Message`], without a JSON tree between (a tree per
/// message was half the allocations of a node's intake). A value with anything else in
/// it goes the full way ([`take_tree`]), which takes exactly what the quick one would and
/// says what is wrong with the rest.
fn take_value(chunk: &[u8], line: usize, known_method: &KindCheck, parsed: &mut Parsed) {
    let Ok(items) = serde_json::from_slice::<Vec<&RawValue>>(chunk) else {
        return take_tree(chunk, line, known_method, parsed);
    };
    let mut messages = Vec::with_capacity(items.len());
    let mut fanned_out = 0;
    for item in items {
        let before = messages.len();
        let plain =
            plain_message(item.get()).map(|m| m.for_each_node(true, known_method, &mut messages));
        fanned_out += copies_bytes(&messages[before..]);
        // Past what one array's copies may take: the full way says which are refused.
        if !matches!(plain, Some(Ok(()))) || fanned_out > MAX_FAN_OUT_BYTES {
            // All of the value the full way, as it always went: splitting the array
            // checks less than a tree does (a lone surrogate, a number past a double's
            // range, nesting past the tree's depth), and an item alone is one level less
            // deep than in its array.
            return take_tree(chunk, line, known_method, parsed);
        }
    }
    parsed.messages.append(&mut messages);
    parsed.fanned_out += fanned_out;
}

/// What the copies of one message for its `toNodes` take, beyond the first: `copies` are
/// the messages one value of input was made into.
fn copies_bytes(copies: &[Message]) -> usize {
    match copies {
        [first, rest @ ..] if !rest.is_empty() => rest.len() * first.copy_bytes(),
        _ => 0,
    }
}

/// `text` (one JSON value) as a message if it is a plain one: an object of known keys,
/// none twice, with `data`, `commandOrEvent`, `method` and `toNode`, that reads as a
/// [`Message`]. Otherwise `None`: not necessarily wrong, just for the full way.
fn plain_message(text: &str) -> Option<Message> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a message")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let bit = |key: &str| KEYS.iter().position(|k| *k == key).map(|i| 1u32 << i);
            let mut seen = 0;
            // A key with escapes in it is not borrowed: an error, so the full way.
            while let Some(key) = map.next_key::<&'de str>()? {
                match bit(key) {
                    Some(b) if seen & b == 0 => seen |= b,
                    _ => return Ok(false),
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(["data", "commandOrEvent", "method", "toNode"]
                .iter()
                .all(|k| bit(k).is_some_and(|b| seen & b != 0)))
        }
    }
    let plain = serde_json::Deserializer::from_str(text).deserialize_map(Keys);
    if !plain.ok()? {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// [`take_value`] the full way: the value as a JSON tree, each message checked in it.
fn take_tree(chunk: &[u8], line: usize, known_method: &KindCheck, parsed: &mut Parsed) {
    let reject = |error: String| Rejected {
        text: String::from_utf8_lossy(chunk).into_owned(),
        error,
    };
    let value: Value = match serde_json::from_slice(chunk) {
        Ok(v) => v,
        Err(e) => {
            let at = if e.is_eof() {
                // Where the value ends too soon: its last line, not the end of the input
                // past its trailing whitespace (a line after the file's last).
                let content = chunk.trim_ascii_end();
                line + content.iter().filter(|&&b| b == b'\n').count()
            } else if e.line() > 0 {
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
    // What this array's copies for `toNodes` take: a batch ends only between values, so
    // one array of messages each within the bound could take them all (an array of 260
    // to 255 nodes each, 16 GB).
    let mut fanned_out = 0;
    for (i, item) in items.iter().enumerate() {
        let taken = Message::from_value(item, known_method).and_then(|m| {
            let more = copies_bytes(&m);
            if fanned_out + more > MAX_FAN_OUT_BYTES {
                return Err(super::validate::InputError::ArrayFanOut { before: fanned_out });
            }
            fanned_out += more;
            Ok(m)
        });
        match taken {
            Ok(m) => parsed.messages.extend(m),
            Err(e) => parsed.rejected.push(Rejected {
                text: serde_json::to_string_pretty(&Value::Array(vec![item.clone()]))
                    .expect("a parsed JSON value serializes"),
                error: format!("array starting on line {line}, message {}: {e}", i + 1),
            }),
        }
    }
    parsed.fanned_out += fanned_out;
}

fn strip_position(e: &str) -> &str {
    e.split(" at line ").next().unwrap_or(e)
}

/// Where the value at the start of some text ends, if it does.
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

/// Where a rejected stretch that began before `text` ends in it: at the first line that
/// opens an array (`text` itself, if it begins a line, `at_line_start`, and opens one).
pub fn stretch_end(text: &[u8], at_line_start: bool) -> Option<usize> {
    let mut indent = text
        .iter()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    if text[indent..].starts_with(BOM) {
        indent += BOM.len();
    }
    if at_line_start && text.get(indent) == Some(&b'[') {
        return Some(indent);
    }
    next_value_start(text)
}

/// A UTF-8 byte order mark: what Windows tools begin UTF-8 text with (Notepad before 2019,
/// PowerShell 5). RFC 8259 lets a parser ignore it; here it is whitespace, so an appended
/// file that begins with one is taken, not rejected for an invisible character.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Why text that begins with a UTF-16 byte order mark is rejected: what Windows PowerShell 5
/// writes with `>` and `>>` (its `Out-File` default), which a Windows operator may append
/// as it is. Its JSON is read as garbage; the error says what to do instead.
const UTF16: &str = "UTF-16 text (as Windows PowerShell 5 writes with > and >>), not UTF-8: save it as UTF-8 (Out-File -Encoding utf8), then append it";

/// How many bytes at the start of `text` are whitespace (byte order marks counted in).
fn blank(text: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match &text[i..] {
            [b, ..] if b.is_ascii_whitespace() => i += 1,
            rest if rest.starts_with(BOM) => i += BOM.len(),
            _ => return i,
        }
    }
}

/// Offset of the first line (after the first) that starts, ignoring indentation (and a
/// byte order mark), with `[`.
fn next_value_start(text: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = text[i..].iter().position(|&b| b == b'\n') {
        i += nl + 1;
        let mut indent = text[i..]
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        if text[i + indent..].starts_with(BOM) {
            indent += BOM.len();
        }
        if text.get(i + indent) == Some(&b'[') {
            return Some(i + indent);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Kind;

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

    /// Every input of these tests, and each of them with one byte taken out, or a key
    /// doubled, or escaped, or a value changed in kind: the quick reading of plain
    /// messages takes exactly what the full way does, rejects the same with the same words.
    #[test]
    fn reading_plain_messages_straight_takes_what_the_json_tree_takes() {
        let plain = r#"[{"toNode":"ship1","data":["x"],"commandOrEvent":"EventACK","method":"TextLogging","timeout":3,"retries":3}]"#;
        let mut inputs: Vec<String> = vec![
            SEED_TWO.into(),
            plain.into(),
            plain.replace(r#""timeout":3"#, r#""timeout":3.0"#),
            plain.replace(r#""timeout":3"#, r#""timeout":null"#),
            plain.replace(r#""timeout":3"#, r#""timeout":"3""#),
            plain.replace(r#""timeout":3"#, r#""timeout":-3"#),
            plain.replace(r#""timeout":3"#, r#""timeout":1e2"#),
            plain.replace(r#""retries":3"#, r#""retries":4294967296"#),
            plain.replace(
                r#""toNode":"ship1""#,
                r#""toNode":"ship1","toNode":"ship2""#,
            ),
            plain.replace(r#""toNode""#, r#""to\u004eode""#),
            plain.replace(
                r#""toNode":"ship1""#,
                r#""toNodes":["ship2","ship1","ship2"]"#,
            ),
            plain.replace(
                r#""toNode":"ship1""#,
                r#""toNode":"ship1","toNodes":["ship1","ship3"]"#,
            ),
            plain.replace(r#""toNode":"ship1""#, r#""toNodes":[]"#),
            plain.replace(r#""data":["x"]"#, r#""data":["x",1]"#),
            plain.replace(r#""data":["x"]"#, r#""data":"x""#),
            plain.replace(r#""method""#, r#""methodArgs":["a"],"method""#),
            plain.replace(r#""method""#, r#""replyMethod":"Console","method""#),
            plain.replace(r#""method""#, r#""schedule":[1,2],"method""#),
            plain.replace(r#""method""#, r#""inReplyTo":{},"method""#),
            plain.replace("[{", "{").replace("}]", "}"),
            format!("[{plain},{plain}]")
                .replace("[[", "[")
                .replace("]]", "]")
                .replace("],[", ","),
            "[]".into(),
            "[1,{}]".into(),
            format!("[{plain},{}]", plain.replace(r#"["x"]"#, r#"["\ud800"]"#)),
            format!(
                "[{plain},{}]",
                plain.replace(r#"["x"]"#, r#"["\udc00\u0041"]"#)
            ),
            format!(
                "[{plain},{}]",
                plain.replace(r#""timeout":3"#, r#""timeout":1e999"#)
            ),
            format!(
                "[{},{plain}]",
                plain.replace(r#""toNode""#, r#""x":1e999,"toNode""#)
            ),
        ];
        // Nested as deep as a tree may go in the array, and a level deeper.
        for depth in [126, 127] {
            let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            inputs.push(format!(
                "[{},{}]",
                &plain[1..plain.len() - 1],
                plain[1..plain.len() - 1].replace(r#"["x"]"#, &deep)
            ));
        }
        for text in [
            format!("{SEED_TWO}\n[{{\"toNode\": }}]\n"),
            r#"[{"toNode":"ship1","data":["echo ]] \"[\" }"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#.into(),
        ] {
            inputs.push(text);
        }
        let mut each = Vec::new();
        for text in &inputs {
            each.push(text.clone());
            for i in 0..text.len() {
                if text.is_char_boundary(i) && text.is_char_boundary(i + 1) {
                    each.push(format!("{}{}", &text[..i], &text[i + 1..]));
                }
            }
        }
        let mut taken = 0;
        for text in &each {
            for at_end in [false, true] {
                let quick = parse_input(text.as_bytes(), 1, at_end, &known);
                let full = parse_with(text.as_bytes(), 1, at_end, &known, take_tree);
                assert_eq!(quick, full, "{text}");
                taken += quick.messages.len();
            }
        }
        assert!(taken > 1000, "the inputs hold messages to take: {taken}");
    }

    /// What Windows tools write as UTF-8 (Notepad before 2019, PowerShell 5's
    /// `Out-File -Encoding utf8`) begins with a byte order mark, which RFC 8259 lets a
    /// parser ignore: `cat msg.json >> inmsg.txt` of such a file was rejected whole as
    /// "expected a JSON array of messages", the mark invisible in the error and in the file.
    /// CRLF line ends are whitespace already.
    #[test]
    fn a_byte_order_mark_and_crlf_line_ends_are_taken_as_whitespace() {
        let one = SEED_TWO.replace('\n', "\r\n");
        let text = format!("\u{feff}{one}\r\n\u{feff}{one}\r\n");
        let p = parse_input(text.as_bytes(), 1, true, &known);
        assert_eq!(p.rejected, vec![]);
        assert_eq!(p.messages.len(), 4);
        assert_eq!(p.consumed, text.len());
        // One appended after a rejected stretch still open ends it.
        assert_eq!(
            stretch_end(format!("\u{feff}{one}").as_bytes(), true),
            Some(3)
        );
    }

    /// A file saved by Windows PowerShell 5 (`echo … > msg.json`) is UTF-16 with a byte
    /// order mark: it was rejected as "expected a JSON array of messages", which it looks
    /// like, NULs aside; the error says what it is, and it is kept in one piece.
    #[test]
    fn utf16_text_is_rejected_as_what_it_is() {
        let mut text = vec![0xFF, 0xFE];
        for unit in SEED_TWO.encode_utf16() {
            text.extend(unit.to_le_bytes());
        }
        text.extend(b"\n");
        text.extend(SEED_TWO.as_bytes());
        let p = parse_input(&text, 1, true, &known);
        assert_eq!(p.messages.len(), 2, "the UTF-8 array after it");
        assert_eq!(p.rejected.len(), 1);
        assert!(
            p.rejected[0].error.starts_with("line 1: UTF-16 text"),
            "{}",
            p.rejected[0].error
        );
    }

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

    /// A value the input ends in (a writer killed mid-array, or the `[` of an array
    /// appended in several `echo >>`s) is rejected at its last line: the end of the input
    /// is past its trailing newline, and the error named the line after the file's last
    /// (`echo '[' >> inmsg.txt` was "line 2").
    #[test]
    fn an_unfinished_value_is_rejected_at_its_own_last_line() {
        for torn in ["[\n", "[{\"toNode\":\"ship1\",\n \"data\":[\"x\"]\n\n"] {
            let text = format!("{SEED_TWO}\n{torn}");
            let p = parse_input(text.as_bytes(), 1, true, &known);
            assert_eq!(p.messages.len(), 2);
            let last = text.trim_end().lines().count();
            assert!(
                p.rejected[0]
                    .error
                    .starts_with(&format!("line {last}: invalid JSON: EOF")),
                "{torn:?}: {}",
                p.rejected[0].error
            );
        }
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

    /// A rejected stretch that runs to the end of the text, when more may follow, says
    /// where it began: the inbox does not take what follows for new input.
    #[test]
    fn a_rejected_stretch_that_runs_to_the_end_says_so() {
        let good = r#"[{"toNode":"ship1","data":["x"],"commandOrEvent":"CommandACK","method":"CLICommand"}]"#;
        for bad in ["not json\n  {\"a\":1}\n", "[\n  }\n  {\"a\":1}\n"] {
            let text = format!("{good}\n{bad}");
            let p = parse_input(text.as_bytes(), 1, false, &known);
            assert_eq!(p.messages.len(), 1);
            assert_eq!(p.open_from, Some(good.len() + 1), "{bad:?}");
            assert_eq!(p.consumed, text.len());
            // At the end (nothing more will come): closed.
            let p = parse_input(text.as_bytes(), 1, true, &known);
            assert_eq!(p.open_from, None);
            // Ended by a line that opens an array: closed.
            let text = format!("{bad}{good}\n");
            let p = parse_input(text.as_bytes(), 1, false, &known);
            assert_eq!((p.open_from, p.messages.len()), (None, 1));
        }
        // Where a stretch that began before ends.
        assert_eq!(stretch_end(b"  [1]", true), Some(2));
        assert_eq!(stretch_end(b"  [1]", false), None);
        assert_eq!(stretch_end(b"x\n [1]", false), Some(3));
        assert_eq!(stretch_end(b"  {\"a\":1}\n", true), None);
    }

    /// `toNodes` of `n` nodes (`ship0`…), each copy with `data_bytes` of data.
    fn fan_out(n: usize, data_bytes: usize) -> String {
        let nodes: Vec<String> = (0..n).map(|i| format!("ship{i}")).collect();
        serde_json::json!([{
            "toNodes": nodes,
            "data": ["x".repeat(data_bytes)],
            "commandOrEvent": "EventACK",
            "method": "TextLogging",
        }])
        .to_string()
    }

    #[test]
    fn a_fan_out_past_what_its_copies_may_take_is_rejected_and_the_rest_goes() {
        // 100,000 copies of 10 KiB: 1 GB journaled and in memory at once, from 1 MB of input.
        let text = format!(
            "{}\n{}\n",
            fan_out(100_000, 10 * 1024),
            r#"[{"toNode":"ship1","data":["after"],"commandOrEvent":"EventACK","method":"TextLogging"}]"#
        );
        let parsed = parse_input(text.as_bytes(), 1, true, &known);
        assert_eq!(parsed.messages.len(), 1);
        assert_eq!(parsed.messages[0].data, ["after"]);
        assert_eq!(parsed.rejected.len(), 1, "{:?}", parsed.rejected);
        let error = &parsed.rejected[0].error;
        assert!(
            error.contains("toNodes makes 100000 copies") && error.contains("split toNodes"),
            "{error}"
        );
        assert!(!parsed.full);
    }

    #[test]
    fn a_batch_stops_at_the_copies_it_may_make_and_the_rest_is_the_next() {
        // Each value's copies within the bound, three of them past it: a batch takes what
        // reaches it, the next the rest, nothing taken twice or lost.
        let one = fan_out(20_000, 1024);
        let text = format!("{one}\n{one}\n{one}\n");
        let mut rest = text.as_bytes();
        let mut batches = Vec::new();
        loop {
            let parsed = parse_input(rest, 1, true, &known);
            assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
            assert!(parsed.fanned_out <= 2 * MAX_FAN_OUT_BYTES);
            batches.push(parsed.messages.len());
            if !parsed.full {
                assert_eq!(parsed.consumed, rest.len());
                break;
            }
            rest = &rest[parsed.consumed..];
        }
        assert_eq!(batches, [40_000, 20_000]);
    }

    #[test]
    fn one_array_s_copies_are_bounded_too() {
        // Three messages each within the bound, in one array: a batch ends only between
        // values, so the third, past what one array's copies may take, is refused alone.
        let one = |i: usize| {
            let nodes: Vec<String> = (0..12_000).map(|n| format!("ship{n}")).collect();
            serde_json::json!({
                "toNodes": nodes,
                "data": [format!("{i}{}", "x".repeat(1024))],
                "commandOrEvent": "EventACK",
                "method": "TextLogging",
            })
        };
        let text = serde_json::Value::Array((0..3).map(one).collect()).to_string();
        let parsed = parse_input(text.as_bytes(), 1, true, &known);
        assert_eq!(parsed.messages.len(), 24_000);
        assert_eq!(parsed.rejected.len(), 1, "{:?}", parsed.rejected);
        let error = &parsed.rejected[0].error;
        assert!(
            error.contains("message 3:") && error.contains("in an array of its own"),
            "{error}"
        );
        assert!(parsed.fanned_out <= MAX_FAN_OUT_BYTES);
    }
}
