//! Reading a response, as pure functions over [`BufRead`], tested without sockets: its head
//! ([`read_head`]: the status line and headers, at most [`MAX_HEAD`] bytes, interim (1xx)
//! responses skipped), how its body ends ([`framing`]), and the body itself, chunked or not,
//! cut at the caller's cap ([`read_body`]).

use super::Error;
use std::io::{BufRead, Read};

/// Most bytes of a response's status line and headers (and of a chunked body's trailers).
pub const MAX_HEAD: usize = 64 * 1024;

/// Longest line announcing a chunk of a chunked body (its size and any extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// A response's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// The reason phrase as the server sent it (may be empty), control characters left out.
    pub reason: String,
    /// Each header's name and value, in order, as sent (values trimmed).
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// Every value of header `name` (any case), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of header `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `404 Not Found`, or `404` without a reason phrase.
    pub fn status_text(&self) -> String {
        if self.reason.is_empty() {
            self.status.to_string()
        } else {
            format!("{} {}", self.status, self.reason)
        }
    }
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a 1xx, 204 or 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// A body, or its first `cap` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    pub bytes: Vec<u8>,
    /// The server had more than the cap; what is past it was not read.
    pub cut: bool,
    /// The length the server announced (`Content-Length`), if it did.
    pub announced: Option<u64>,
}

/// Reads one line (up to and without its `\n`, and a `\r` before that), of at most `limit`
/// bytes with its line end; `None` at end of input before any byte. A longer line is
/// `too_long`; end of input in the middle of a line is [`Error::Malformed`].
fn read_line(
    r: &mut impl BufRead,
    limit: usize,
    too_long: impl Fn() -> Error,
) -> Result<Option<Vec<u8>>, Error> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(Error::Malformed(
                "the connection closed in the middle of a line".into(),
            ));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > limit {
            return Err(too_long());
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
    }
}

/// Text from the wire for a message: lossily UTF-8, control characters left out.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

/// Reads a response's status line and headers, [`MAX_HEAD`] bytes at most; skips interim
/// (1xx) responses.
pub fn read_head(r: &mut impl BufRead) -> Result<Head, Error> {
    let mut used = 0;
    loop {
        let Some(status_line) = head_line(r, &mut used)? else {
            return Err(Error::Malformed(
                "the server closed the connection without answering".into(),
            ));
        };
        let mut parts = status_line.splitn(3, |&b| b == b' ');
        let version = parts.next().unwrap_or_default();
        let code = parts.next().unwrap_or_default();
        let reason = parts.next().unwrap_or_default();
        let status = match (version.starts_with(b"HTTP/1."), std::str::from_utf8(code)) {
            (true, Ok(c)) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()) => {
                c.parse::<u16>().map_err(|_| Error::Malformed(c.into()))?
            }
            _ => {
                let start = &status_line[..status_line.len().min(60)];
                return Err(Error::Malformed(format!(
                    "it begins {:?}",
                    String::from_utf8_lossy(start)
                )));
            }
        };
        let mut headers = Vec::new();
        loop {
            let Some(h) = head_line(r, &mut used)? else {
                return Err(Error::Malformed(
                    "the connection closed before the headers' end".into(),
                ));
            };
            if h.is_empty() {
                break;
            }
            headers.push(header(&h)?);
        }
        // 101 would switch protocols, which a GET without Upgrade never asks for.
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        return Ok(Head {
            status,
            reason: printable(reason),
            headers,
        });
    }
}

/// One line of a response head (or of trailers), `used` bytes of [`MAX_HEAD`] gone before.
fn head_line(r: &mut impl BufRead, used: &mut usize) -> Result<Option<Vec<u8>>, Error> {
    let line = read_line(r, MAX_HEAD.saturating_sub(*used), || Error::HeadTooLarge)?;
    *used += line.as_ref().map_or(0, |l| l.len() + 2);
    Ok(line)
}

/// `Name: value` → its name and trimmed value.
fn header(line: &[u8]) -> Result<(String, String), Error> {
    let malformed = || {
        Error::Malformed(format!(
            "a header line {:?}",
            String::from_utf8_lossy(&line[..line.len().min(60)])
        ))
    };
    let colon = line.iter().position(|&b| b == b':').ok_or_else(malformed)?;
    let name = &line[..colon];
    // A token: no space before the colon, none at the start (an obsolete folded line).
    if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
        return Err(malformed());
    }
    let value = String::from_utf8_lossy(&line[colon + 1..])
        .trim()
        .to_string();
    Ok((String::from_utf8_lossy(name).into_owned(), value))
}

/// How the body of the response `head` ends (RFC 9112 §6.3, for a GET).
pub fn framing(head: &Head) -> Result<Framing, Error> {
    if (100..200).contains(&head.status) || head.status == 204 || head.status == 304 {
        return Ok(Framing::Empty);
    }
    let codings: Vec<String> = head
        .all("Transfer-Encoding")
        .flat_map(|v| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    if !codings.is_empty() {
        // Transfer-Encoding wins over Content-Length. Only chunked is read: the request
        // asked for nothing else (`Accept-Encoding: identity`).
        return match codings.iter().find(|c| *c != "chunked") {
            None => Ok(Framing::Chunked),
            Some(other) => Err(Error::Malformed(format!(
                "transfer coding {other:?}, which this client does not decode"
            ))),
        };
    }
    let mut length = None;
    for value in head.all("Content-Length").flat_map(|v| v.split(',')) {
        let value = value.trim();
        let n = value
            .parse::<u64>()
            .ok()
            .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| Error::Malformed(format!("Content-Length {value:?}")))?;
        if length.is_some_and(|l| l != n) {
            return Err(Error::Malformed(
                "conflicting Content-Length headers".into(),
            ));
        }
        length = Some(n);
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// Reads a body framed as `framing`, keeping at most `cap` bytes; past the cap nothing more
/// is read, and the body says it was cut.
pub fn read_body(r: &mut impl BufRead, framing: Framing, cap: usize) -> Result<Body, Error> {
    let mut body = Body {
        bytes: Vec::new(),
        cut: false,
        announced: None,
    };
    match framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            body.announced = Some(n);
            let want = n.min(cap as u64);
            body.bytes.reserve(want.min(1 << 20) as usize);
            r.take(want).read_to_end(&mut body.bytes)?;
            if (body.bytes.len() as u64) < want {
                return Err(Error::Truncated {
                    got: body.bytes.len() as u64,
                    expected: Some(n),
                });
            }
            body.cut = n > want;
        }
        Framing::UntilClose => {
            r.take((cap as u64).saturating_add(1))
                .read_to_end(&mut body.bytes)?;
            if body.bytes.len() > cap {
                body.bytes.truncate(cap);
                body.cut = true;
            }
        }
        Framing::Chunked => read_chunked(r, cap, &mut body)?,
    }
    Ok(body)
}

/// A chunked body: `<hex size>[;ext]\r\n<data>\r\n` … `0\r\n<trailers>\r\n`.
fn read_chunked(r: &mut impl BufRead, cap: usize, body: &mut Body) -> Result<(), Error> {
    let truncated = |body: &Body| Error::Truncated {
        got: body.bytes.len() as u64,
        expected: None,
    };
    loop {
        let line = read_line(r, MAX_CHUNK_LINE, || {
            Error::Malformed(format!(
                "a chunk size line longer than {MAX_CHUNK_LINE} bytes"
            ))
        })?
        .ok_or_else(|| truncated(body))?;
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        let size_text = String::from_utf8_lossy(size_text).trim().to_string();
        let size = u64::from_str_radix(&size_text, 16)
            .ok()
            .filter(|_| !size_text.starts_with(['+', '-']))
            .ok_or_else(|| Error::Malformed(format!("chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers, which are not kept, then the empty line that ends the body.
            let mut used = 0;
            loop {
                let line = head_line(r, &mut used)?.ok_or_else(|| truncated(body))?;
                if line.is_empty() {
                    return Ok(());
                }
            }
        }
        let room = (cap - body.bytes.len()) as u64;
        if size > room {
            // More than the cap: keep what fits, read no further.
            r.take(room).read_to_end(&mut body.bytes)?;
            body.cut = true;
            return Ok(());
        }
        let before = body.bytes.len();
        r.take(size).read_to_end(&mut body.bytes)?;
        if ((body.bytes.len() - before) as u64) < size {
            return Err(truncated(body));
        }
        match read_line(r, 2, || {
            Error::Malformed("a chunk longer than its size says".into())
        })? {
            Some(end) if end.is_empty() => {}
            Some(_) => return Err(Error::Malformed("a chunk longer than its size says".into())),
            None => return Err(truncated(body)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Head, Error> {
        read_head(&mut text.as_bytes())
    }

    #[test]
    fn a_head_is_read_and_interim_responses_skipped() {
        let h = head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\ncontent-length:  3 \r\n\r\nabc").unwrap();
        assert_eq!(h.status, 404);
        assert_eq!(h.status_text(), "404 Not Found");
        assert_eq!(h.get("Content-Length"), Some("3"));
        assert_eq!(h.get("content-type"), Some("text/plain"));
        let h = head("HTTP/1.0 200\nServer: x\n\n").unwrap();
        assert_eq!((h.status, h.status_text().as_str()), (200, "200"));
        for (text, says) in [
            ("", "without answering"),
            ("SSH-2.0-OpenSSH\r\n\r\n", "it begins \"SSH-2.0-OpenSSH\""),
            ("HTTP/1.1 2000 OK\r\n\r\n", "it begins"),
            ("HTTP/1.1 200 OK\r\nNo colon\r\n\r\n", "a header line"),
            ("HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "a header line"),
            ("HTTP/1.1 200 OK\r\nA: b\r\n", "before the headers' end"),
            ("HTTP/1.1 200 OK\r\nA: b", "in the middle of a line"),
        ] {
            let e = head(text).expect_err(text).to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_head_is_limited_in_size() {
        // Just under the limit: fine.
        let filler = "x".repeat(MAX_HEAD - 200);
        let ok = format!("HTTP/1.1 200 OK\r\nA: {filler}\r\n\r\n");
        assert!(head(&ok).is_ok());
        // Many headers over the limit, or one endless line: refused, not read to the end.
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "A: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n".repeat(2000)
        );
        assert!(matches!(head(&many), Err(Error::HeadTooLarge)));
        let endless = format!("HTTP/1.1 200 OK\r\nA: {}", "b".repeat(10 * MAX_HEAD));
        assert!(matches!(head(&endless), Err(Error::HeadTooLarge)));
        let status = format!("HTTP/1.1 200 {}\r\n\r\n", "O".repeat(MAX_HEAD));
        assert!(matches!(head(&status), Err(Error::HeadTooLarge)));
    }

    fn framed(headers: &str) -> Result<Framing, Error> {
        framing(&head(&format!("HTTP/1.1 200 OK\r\n{headers}\r\n")).unwrap())
    }

    #[test]
    fn framing_follows_the_headers() {
        assert_eq!(framed("").unwrap(), Framing::UntilClose);
        assert_eq!(
            framed("Content-Length: 12\r\n").unwrap(),
            Framing::Length(12)
        );
        assert_eq!(
            framed("Content-Length: 12\r\nContent-Length: 12\r\n").unwrap(),
            Framing::Length(12)
        );
        assert_eq!(
            framed("Transfer-Encoding: Chunked\r\nContent-Length: 12\r\n").unwrap(),
            Framing::Chunked
        );
        assert!(framed("Content-Length: 12, 13\r\n")
            .unwrap_err()
            .to_string()
            .contains("conflicting"));
        assert!(framed("Content-Length: -1\r\n").is_err());
        assert!(framed("Content-Length: +1\r\n").is_err());
        assert!(framed("Transfer-Encoding: gzip, chunked\r\n")
            .unwrap_err()
            .to_string()
            .contains("\"gzip\""));
        let no_content = head("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(framing(&no_content).unwrap(), Framing::Empty);
    }

    fn body(framing: Framing, wire: &str, cap: usize) -> Result<Body, Error> {
        read_body(&mut wire.as_bytes(), framing, cap)
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let wire = "4\r\nWiki\r\n6;name=value\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n";
        let b = body(Framing::Chunked, wire, 1000).unwrap();
        assert_eq!(b.bytes, b"Wikipedia in \r\n\r\nchunks.");
        assert!(!b.cut);
        // Bare line feeds, upper- and lowercase hex, leading zeros.
        let b = body(
            Framing::Chunked,
            "0A\nabcdefghij\na\n0123456789\n000\n\n",
            1000,
        )
        .unwrap();
        assert_eq!(b.bytes, b"abcdefghij0123456789");
        // The rest after the body is not read.
        let mut wire: &[u8] = b"3\r\nabc\r\n0\r\n\r\nNEXT";
        read_body(&mut wire, Framing::Chunked, 1000).unwrap();
        assert_eq!(wire, b"NEXT");
    }

    #[test]
    fn chunked_bodies_are_cut_at_the_cap_and_errors_named() {
        let wire = "4\r\nWiki\r\n6\r\npedia \r\n0\r\n\r\n";
        let b = body(Framing::Chunked, wire, 6).unwrap();
        assert_eq!((b.bytes.as_slice(), b.cut), (&b"Wikipe"[..], true));
        // Exactly the cap: not cut.
        let b = body(Framing::Chunked, wire, 10).unwrap();
        assert_eq!((b.bytes.as_slice(), b.cut), (&b"Wikipedia "[..], false));
        // At the cap with a chunk still to come: cut.
        let b = body(Framing::Chunked, wire, 4).unwrap();
        assert_eq!((b.bytes.as_slice(), b.cut), (&b"Wiki"[..], true));
        // A chunk announced larger than memory could hold is not allocated for.
        let b = body(Framing::Chunked, "FFFFFFFFFFFF\r\nabc", 2).unwrap();
        assert_eq!((b.bytes.as_slice(), b.cut), (&b"ab"[..], true));
        for (wire, says) in [
            ("4\r\nWi", "after 2 bytes, before the chunked body's end"),
            ("4\r\nWiki\r\n", "after 4 bytes"),
            ("4\r\nWiki\r\n0\r\n", "after 4 bytes"),
            ("zz\r\nWiki\r\n0\r\n\r\n", "chunk size \"zz\""),
            ("-4\r\nWiki\r\n0\r\n\r\n", "chunk size \"-4\""),
            ("1FFFFFFFFFFFFFFFF\r\n", "chunk size"),
            ("4\r\nWikipedia\r\n0\r\n\r\n", "longer than its size"),
        ] {
            let e = body(Framing::Chunked, wire, 100)
                .expect_err(wire)
                .to_string();
            assert!(e.contains(says), "{wire:?}: {e}");
        }
        let long_line = format!("4;{}\r\nWiki\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert!(body(Framing::Chunked, &long_line, 100)
            .unwrap_err()
            .to_string()
            .contains("chunk size line longer"));
        let long_trailers = format!("0\r\n{}\r\n", "T: x\r\n".repeat(MAX_HEAD));
        assert!(matches!(
            body(Framing::Chunked, &long_trailers, 100),
            Err(Error::HeadTooLarge)
        ));
    }

    #[test]
    fn length_and_close_framed_bodies_are_cut_at_the_cap() {
        let b = body(Framing::Length(5), "hello, and more", 100).unwrap();
        assert_eq!(
            (b.bytes.as_slice(), b.cut, b.announced),
            (&b"hello"[..], false, Some(5))
        );
        let b = body(Framing::Length(5), "hello", 3).unwrap();
        assert_eq!((b.bytes.as_slice(), b.cut), (&b"hel"[..], true));
        let e = body(Framing::Length(10), "hello", 100).unwrap_err();
        assert!(
            e.to_string().contains("after 5 of the body's 10 bytes"),
            "{e}"
        );
        let b = body(Framing::UntilClose, "hello", 5).unwrap();
        assert_eq!((b.bytes.as_slice(), b.cut), (&b"hello"[..], false));
        let b = body(Framing::UntilClose, "hello!", 5).unwrap();
        assert_eq!((b.bytes.as_slice(), b.cut), (&b"hello"[..], true));
        // No cap to speak of.
        let b = body(Framing::UntilClose, "hello", usize::MAX).unwrap();
        assert_eq!((b.bytes.as_slice(), b.cut), (&b"hello"[..], false));
        let b = body(Framing::Empty, "hello", 5).unwrap();
        assert!(b.bytes.is_empty() && !b.cut);
    }
}
