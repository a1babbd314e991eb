//! `HttpGet`: `data: [url]`: the receiving node fetches an `http://` or `https://` URL and
//! the body is the result, e.g. a ship's node_exporter metrics sent back to central. It makes
//! the node act on the network, like a `curl` through `CLICommand`, so it is a command, from
//! the senders `--allowCommandsFrom` allows.
//!
//! - A status other than 2xx is an error naming it (`GET <url>: 404 Not Found`), with the
//!   start of the server's answer. Redirects are not followed: a 3xx is an error naming its
//!   `Location`. The node fetches what the message names and nothing else; an operator who
//!   wants the other URL asks for it.
//! - The whole exchange (name lookup, connect, TLS, the body's last byte) ends by the
//!   message's deadline, as a command's does ([`Deadline`]: `methodTimeout`, else
//!   `timeout` or the node's default, less the time the answer needs); past it, an error
//!   naming the deadline.
//! - A body longer than `--maxHttpBodyBytes` (default 1 MiB) is cut there, with a note
//!   (`[steward: body cut at N bytes …]`), as a command's output is: a scrape that grew
//!   is still worth having, and the note says it is not whole. The reply then travels
//!   within its own limits (an ACK within the broker's payload limit, a result message
//!   within what one message may carry, 252 KiB), each noting a cut of its own.
//! - A body that is not UTF-8 is converted lossily (invalid bytes become U+FFFD), with a
//!   note saying so.

use super::cli_command::Deadline;
use super::{Context, Method, Outcome, Senders, COMMANDS};
use crate::http_client::{self, Url};
use crate::message::{Envelope, Kind};
use std::time::Instant;

/// The default of `--maxHttpBodyBytes`: most bytes of a body kept.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;

/// Most bytes of an error status's body quoted in the error.
const ERROR_EXCERPT: usize = 1024;

pub struct HttpGet;

impl Method for HttpGet {
    fn name(&self) -> &'static str {
        "HttpGet"
    }
    fn kinds(&self) -> &'static [Kind] {
        COMMANDS
    }
    fn senders(&self) -> Senders {
        Senders::Commanders
    }
    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        let cap = usize::try_from(ctx.config.max_http_body_bytes).unwrap_or(usize::MAX);
        let deadline = Deadline::of(&envelope.message, ctx.config.default_timeout);
        if deadline.after.is_none() {
            // A server that never answers would hold a handler for ever.
            return Outcome::error(
                "HttpGet needs a deadline: methodTimeout -1 (no limit) is refused",
            );
        }
        fetch(&envelope.message.data, deadline, cap)
    }
}

/// GETs the one URL in `data` by `deadline`, keeping at most `cap` bytes of its body.
pub fn fetch(data: &[String], deadline: Deadline, cap: usize) -> Outcome {
    let [url] = data else {
        return Outcome::error(format!(
            "HttpGet takes one URL in data, e.g. [\"http://127.0.0.1:9100/metrics\"], not {} items",
            data.len()
        ));
    };
    let parsed = match Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Outcome::error(format!("HttpGet {url:?}: {e}")),
    };
    let until = deadline.after.map(|after| Instant::now() + after);
    let failed = |e: http_client::Error| {
        let why = match (&e, deadline.after) {
            (http_client::Error::Timeout, Some(after)) => format!(
                "not done within the {}s deadline ({})",
                after.as_secs_f64(),
                deadline.set_by
            ),
            _ => e.to_string(),
        };
        Outcome::error(format!("GET {parsed}: {why}"))
    };
    let exchange = match http_client::get(&parsed, until) {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    if !(200..300).contains(&exchange.head.status) {
        return Outcome::error(status_error(&parsed, exchange));
    }
    match exchange.body(cap) {
        Ok(body) => Outcome::ok(text_of(body, cap)),
        Err(e) => failed(e),
    }
}

/// The error for a response that is not 2xx: its status, where a redirect points, and the
/// start of its body if it comes at once.
fn status_error(url: &Url, exchange: http_client::Exchange) -> String {
    let head = exchange.head.clone();
    let mut text = format!("GET {url}: {}", head.status_text());
    if (300..400).contains(&head.status) {
        match head.get("Location") {
            Some(to) => text.push_str(&format!(
                " to {:?} (redirects are not followed: ask for that URL)",
                to
            )),
            None => text.push_str(" (redirects are not followed)"),
        }
        return text;
    }
    if let Ok(body) = exchange.body(ERROR_EXCERPT) {
        let excerpt = String::from_utf8_lossy(&body.bytes);
        let excerpt = excerpt.trim();
        if !excerpt.is_empty() {
            text.push('\n');
            text.push_str(excerpt);
            if body.cut {
                text.push_str(" …");
            }
            text.push('\n');
        }
    }
    text
}

/// A body as the result's text: lossily UTF-8, with notes for what is not whole or not
/// UTF-8.
fn text_of(body: http_client::Body, cap: usize) -> String {
    let mut bytes = body.bytes;
    if body.cut {
        // A character the cut went through is not a sign the body is not UTF-8.
        if let Err(e) = std::str::from_utf8(&bytes) {
            if e.error_len().is_none() {
                bytes.truncate(e.valid_up_to());
            }
        }
    }
    let lossy = String::from_utf8_lossy(&bytes);
    let not_utf8 = matches!(lossy, std::borrow::Cow::Owned(_));
    let mut text = lossy.into_owned();
    if not_utf8 {
        text.push_str("\n[steward: the body is not UTF-8: invalid bytes are shown as U+FFFD]\n");
    }
    if body.cut {
        let sent = match body.announced {
            Some(n) => format!("; the server sent {n}"),
            None => String::new(),
        };
        text.push_str(&format!(
            "\n[steward: body cut at {cap} bytes (maxHttpBodyBytes){sent}]\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Status;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn secs(n: u64) -> Deadline {
        Deadline {
            after: Some(Duration::from_secs(n)),
            set_by: "timeout",
        }
    }

    /// A server on loopback answering each of `responses` to one connection, in turn.
    fn serve(responses: Vec<Vec<u8>>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for response in responses {
                let (mut s, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(&response);
            }
        });
        format!("http://127.0.0.1:{port}/x")
    }

    fn get(url: &str, cap: usize) -> Outcome {
        fetch(&[url.to_string()], secs(10), cap)
    }

    #[test]
    fn the_body_is_the_result() {
        let url = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nup 1\n\n".to_vec(),
        ]);
        let o = get(&url, 100);
        assert_eq!((o.status, o.output.as_str()), (Status::Ok, "up 1\n\n"));
    }

    #[test]
    fn a_status_other_than_2xx_is_an_error_naming_it() {
        let url = serve(vec![
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno such x".to_vec(),
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://elsewhere/x\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ]);
        let o = get(&url, 100);
        assert_eq!(o.status, Status::Error);
        assert_eq!(o.output, format!("GET {url}: 404 Not Found\nno such x\n"));
        let o = get(&url, 100);
        assert_eq!(o.status, Status::Error);
        assert!(
            o.output.starts_with(&format!(
                "GET {url}: 301 Moved Permanently to \"https://elsewhere/x\" (redirects are not followed"
            )),
            "{}",
            o.output
        );
    }

    #[test]
    fn a_long_body_is_cut_with_a_note_and_not_utf8_said() {
        let url = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789".to_vec(),
            // "é" is two bytes: a cut between them is not an invalid byte.
            "HTTP/1.1 200 OK\r\n\r\nabcé".as_bytes().to_vec(),
            b"HTTP/1.1 200 OK\r\n\r\nab\xffcd".to_vec(),
        ]);
        let o = get(&url, 4);
        assert_eq!(o.status, Status::Ok);
        assert_eq!(
            o.output,
            "0123\n[steward: body cut at 4 bytes (maxHttpBodyBytes); the server sent 10]\n"
        );
        let o = get(&url, 4);
        assert_eq!(
            o.output,
            "abc\n[steward: body cut at 4 bytes (maxHttpBodyBytes)]\n"
        );
        let o = get(&url, 100);
        assert_eq!(o.status, Status::Ok);
        assert!(
            o.output
                .starts_with("ab\u{fffd}cd\n[steward: the body is not UTF-8"),
            "{}",
            o.output
        );
    }

    #[test]
    fn bad_data_and_timeouts_are_errors_saying_so() {
        let o = fetch(&[], secs(1), 100);
        assert!(o.output.contains("takes one URL"), "{}", o.output);
        let o = fetch(&["a".into(), "b".into()], secs(1), 100);
        assert!(o.output.contains("not 2 items"), "{}", o.output);
        let o = get("ftp://h/x", 100);
        assert_eq!(o.status, Status::Error);
        assert!(o
            .output
            .starts_with("HttpGet \"ftp://h/x\": not an http://"));
        // A server that takes the connection and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/",
            listener.local_addr().unwrap().port()
        );
        let o = fetch(
            std::slice::from_ref(&url),
            Deadline {
                after: Some(Duration::from_millis(200)),
                set_by: "methodTimeout",
            },
            100,
        );
        assert_eq!(o.status, Status::Error);
        assert_eq!(
            o.output,
            format!("GET {url}: not done within the 0.2s deadline (methodTimeout)")
        );
    }
}
