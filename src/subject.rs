//! Subject naming: `<node>.<kind>.<method>`.
//!
//! The seed fixes the shape and says names are case sensitive and may not hold a space or a
//! tab. We refuse more than that: `.` would add a subject level, `*` and `>` are NATS
//! wildcards (a node named `*` would receive everybody's commands), and `/` or `..` would let
//! a name escape the data folder, where node and method names become file names. Names are
//! plain ASCII letters, digits, `-` and `_`, so no look-alike name can pose as another.

use crate::message::Kind;
use std::fmt;

/// Why a node or method name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A name from a stranger can be a megabyte: what is wrong shows in its start.
        if self.name.len() <= MAX_NAME_LEN {
            return write!(f, "invalid name {:?}: {}", self.name, self.reason);
        }
        let mut end = 32;
        while !self.name.is_char_boundary(end) {
            end -= 1;
        }
        write!(
            f,
            "invalid name {:?}… ({} bytes): {}",
            &self.name[..end],
            self.name.len(),
            self.reason
        )
    }
}

impl std::error::Error for NameError {}

/// The longest node or method name we accept; keeps subjects and file names sane.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a node or method name. The one place names are validated.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let refuse = |reason| {
        Err(NameError {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return refuse("it is longer than 128 bytes");
    }
    for c in name.chars() {
        let reason = match c {
            ' ' => "it contains a space",
            '\t' => "it contains a tab",
            '.' => "it contains '.', which separates subject levels",
            '*' | '>' => "it contains a NATS wildcard ('*' or '>')",
            '/' | '\\' => "it contains a path separator",
            c if c.is_control() => "it contains a control character",
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => continue,
            // Look-alikes (zero-width, right-to-left, Cyrillic letters) would make a second
            // "ship1" that reads the same in a log.
            _ => "it contains a character other than ASCII letters, digits, '-' and '_'",
        };
        return refuse(reason);
    }
    Ok(())
}

/// A complete subject such as `ship1.CommandACK.CLICommand`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject {
    pub node: String,
    pub kind: Kind,
    pub method: String,
}

impl Subject {
    /// Whether `message` goes on this lane.
    pub fn is_of(&self, message: &crate::message::Message) -> bool {
        self.node == message.to_node && self.kind == message.kind && self.method == message.method
    }

    pub fn new(node: &str, kind: Kind, method: &str) -> Result<Subject, NameError> {
        validate_name(node)?;
        validate_name(method)?;
        Ok(Subject {
            node: node.to_string(),
            kind,
            method: method.to_string(),
        })
    }

    /// Parses a subject received from the broker.
    pub fn parse(subject: &str) -> Result<Subject, Error> {
        let mut parts = subject.split('.');
        let bad = |why| Error {
            subject: subject.to_string(),
            why,
        };
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(node), Some(kind), Some(method), None) => {
                let kind = Kind::parse(kind).ok_or_else(|| bad(Why::Kind(kind.to_string())))?;
                Subject::new(node, kind, method).map_err(|e| bad(Why::Name(e)))
            }
            _ => Err(bad(Why::Shape)),
        }
    }
}

/// Why a subject received from the broker was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The subject as received.
    pub subject: String,
    pub why: Why,
}

/// What is wrong with a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Not three levels.
    Shape,
    /// The middle level is not one of the four kinds (exact, case-sensitive).
    Kind(String),
    /// The node or the method is not a valid name.
    Name(NameError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = &self.subject;
        match &self.why {
            Why::Shape => write!(
                f,
                "subject {subject:?} is not of the form <node>.<kind>.<method>"
            ),
            Why::Kind(kind) => write!(
                f,
                "subject {subject:?}: unknown message type {kind:?} (expected CommandACK, CommandNACK, EventACK or EventNACK)"
            ),
            Why::Name(e) => write!(f, "subject {subject:?}: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.why {
            Why::Name(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.node, self.kind.as_str(), self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_examples_round_trip() {
        for s in [
            "ship1.EventACK.Syslogforwarding",
            "ship2.CommandACK.CLICommand",
        ] {
            assert_eq!(Subject::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn names_that_would_break_subjects_or_paths_are_refused() {
        for bad in [
            "",
            "ship 1",
            "ship\t1",
            "ship.1",
            "*",
            "ship>",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            "a\nb",
            "ship1\u{200b}",
            "\u{202e}1pihs",
            "ship\u{0455}1",
            "shіp1",
            "ship1:x",
            "ship@1",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(validate_name(&"x".repeat(129)).is_err());
        for good in [
            "ship1",
            "central",
            "Ship-2_b",
            "raspberry-pi-07",
            "CLICommand",
        ] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn names_are_case_sensitive_and_kinds_exact() {
        assert!(Subject::parse("ship1.commandack.CLICommand").is_err());
        assert_ne!(
            Subject::parse("Ship1.CommandACK.CLICommand").unwrap(),
            Subject::parse("ship1.CommandACK.CLICommand").unwrap()
        );
        assert_eq!(
            Subject::parse("ship1.CommandACK").unwrap_err().why,
            Why::Shape
        );
        assert!(Subject::parse("ship1.CommandACK.CLICommand.x").is_err());
        let e = Subject::parse("ship1.commandack.CLICommand").unwrap_err();
        assert_eq!(e.why, Why::Kind("commandack".into()));
        assert!(e.to_string().contains("unknown message type"), "{e}");
        let e = Subject::parse("ship 1.CommandACK.CLICommand").unwrap_err();
        assert!(
            matches!(&e.why, Why::Name(n) if n.name == "ship 1"),
            "{e:?}"
        );
    }
}
