//! A small blocking HTTP/1.1 client, for the `HttpGet` method: one GET over HTTP or HTTPS,
//! bounded in time (a deadline over the whole exchange: name lookup, connect, TLS, request,
//! response) and in memory (a response head of at most [`MAX_HEAD`], a body of at most what
//! the caller allows). Its own, rather than a client crate: a GET needs little, and this way
//! the only new code on the node is code we read (HTTPS is rustls, already in the tree
//! through nats).
//!
//! What it does not do, on purpose: follow redirects (the caller sees the 3xx and its
//! `Location`), keep connections open (`Connection: close`), decompress
//! (`Accept-Encoding: identity`), send credentials, or use a proxy.
//!
//! The wire format is pure functions over [`BufRead`] ([`read_head`], [`framing`],
//! [`read_body`]), tested without sockets; [`get`] does the I/O around them.
//!
//! HTTPS checks the server's certificate and name against the platform's root certificates
//! (`rustls-native-certs`: the system store; or, if `SSL_CERT_FILE` or `SSL_CERT_DIR` is
//! set, only the PEM file and the OpenSSL-style folder they name, as for curl). They are
//! read at the first HTTPS fetch and kept for the life of the process.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Most bytes of a response's status line and headers (and of a chunked body's trailers).
pub const MAX_HEAD: usize = 64 * 1024;

/// Longest line announcing a chunk of a chunked body (its size and any extensions).
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// An `http://` or `https://` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// A host name, or an IP address (an IPv6 one without its brackets).
    pub host: String,
    pub port: u16,
    /// The path and query, as sent in the request line: `/` at least, the fragment left
    /// out, and every byte that is not visible ASCII (a space, a control character, UTF-8)
    /// percent-encoded, so that nothing in a URL can add a line to the request.
    pub target: String,
}

/// Why a text is not a URL this client fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// Not `http://` or `https://` (the scheme given, or the start of the text).
    Scheme(String),
    /// Nothing between `//` and the path.
    NoHost,
    /// `user:password@host`: credentials do not belong in a message that is logged and
    /// journaled on two nodes.
    Credentials,
    /// A host that is neither a plain ASCII name nor an IP address.
    Host(String),
    /// A port that is not a number from 1 to 65535.
    Port(String),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Scheme(s) => write!(
                f,
                "not an http:// or https:// URL (scheme {s:?}); only those are fetched"
            ),
            UrlError::NoHost => f.write_str("no host in the URL"),
            UrlError::Credentials => {
                f.write_str("credentials in the URL (user@host) are not supported")
            }
            UrlError::Host(h) => write!(
                f,
                "bad host {h:?}: a name of letters, digits, '-', '_' and '.' (an internationalized name in its xn-- form), or an IP address ([::1] for IPv6)"
            ),
            UrlError::Port(p) => write!(f, "bad port {p:?}: a number from 1 to 65535"),
        }
    }
}

impl std::error::Error for UrlError {}

impl Url {
    /// Takes `text` apart: `http[s]://host[:port][/path][?query][#fragment]`. The scheme is
    /// case-insensitive; the fragment is not sent.
    pub fn parse(text: &str) -> Result<Url, UrlError> {
        let text = text.trim();
        let (scheme, rest) = match text.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
            Some((s, _)) => return Err(UrlError::Scheme(s.chars().take(32).collect())),
            None => return Err(UrlError::Scheme(text.chars().take(32).collect())),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(end);
        if authority.contains('@') {
            return Err(UrlError::Credentials);
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None | Some("") => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(UrlError::Port(p.chars().take(32).collect())),
            },
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let mut target = String::with_capacity(rest.len() + 1);
        if !rest.starts_with('/') {
            target.push('/');
        }
        for b in rest.bytes() {
            if b.is_ascii_graphic() {
                target.push(char::from(b));
            } else {
                target.push_str(&format!("%{b:02X}"));
            }
        }
        Ok(Url {
            scheme,
            host,
            port,
            target,
        })
    }

    /// The `Host` header's value: the host, and the port unless it is the scheme's own.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.name(),
            self.host_header(),
            self.target
        )
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → the host (lowercase, brackets off) and the
/// port's text, if any.
fn split_host_port(authority: &str) -> Result<(String, Option<&str>), UrlError> {
    if authority.is_empty() {
        return Err(UrlError::NoHost);
    }
    let bad = || UrlError::Host(authority.chars().take(64).collect());
    if let Some(inner) = authority.strip_prefix('[') {
        let (v6, after) = inner.split_once(']').ok_or_else(bad)?;
        let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
        };
        return Ok((ip.to_string(), port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    if !host.bytes().all(plain) || host.starts_with('.') || host.contains("..") {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Why a GET did not come back with a response.
#[derive(Debug)]
pub enum Error {
    /// The host name could not be looked up.
    Resolve { host: String, source: io::Error },
    /// The host name has no address.
    NoAddress { host: String },
    /// No address of the host took the connection (the last one tried, and why).
    Connect { addr: SocketAddr, source: io::Error },
    /// No trusted root certificates to check an HTTPS server against.
    NoRoots(String),
    /// The TLS handshake failed: most often the server's certificate is not trusted or
    /// names another host.
    Tls { host: String, source: io::Error },
    /// The deadline passed (looking up, connecting, or waiting for the server).
    Timeout,
    /// Sending or receiving failed (connection reset, ...).
    Io(io::Error),
    /// The answer is not HTTP/1.x as this client reads it.
    Malformed(String),
    /// The status line and headers (or a chunked body's trailers) are longer than
    /// [`MAX_HEAD`].
    HeadTooLarge,
    /// The connection closed before the body's end (`got` bytes of an announced length,
    /// or of a chunked body).
    Truncated { got: u64, expected: Option<u64> },
}

impl Error {
    /// Whether trying again later might help (a server down or slow, a network problem),
    /// rather than the request or the server being wrong.
    pub fn transient(&self) -> bool {
        matches!(
            self,
            Error::Resolve { .. }
                | Error::Connect { .. }
                | Error::Timeout
                | Error::Io(_)
                | Error::Truncated { .. }
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Resolve { host, source } => write!(f, "cannot look up {host}: {source}"),
            Error::NoAddress { host } => write!(f, "{host} has no address"),
            Error::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            Error::NoRoots(why) => write!(f, "no root certificates to check the server against: {why} (install the system's CA certificates, or set SSL_CERT_FILE)"),
            Error::Tls { host, source } => write!(f, "TLS with {host} failed: {source}"),
            Error::Timeout => f.write_str("timed out"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Malformed(why) => write!(f, "not an HTTP/1.x response: {why}"),
            Error::HeadTooLarge => write!(
                f,
                "the response's status line and headers are longer than {MAX_HEAD} bytes"
            ),
            Error::Truncated {
                got,
                expected: Some(n),
            } => write!(
                f,
                "the connection closed after {got} of the body's {n} bytes"
            ),
            Error::Truncated {
                got,
                expected: None,
            } => write!(
                f,
                "the connection closed after {got} bytes, before the chunked body's end"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Resolve { source, .. }
            | Error::Connect { source, .. }
            | Error::Tls { source, .. }
            | Error::Io(source) => Some(source),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        if timed_out(&e) {
            Error::Timeout
        } else {
            Error::Io(e)
        }
    }
}

/// A socket timeout: the deadline passed (a read timeout is `WouldBlock` on Unix).
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

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

/// A response whose head has been read; its body is read with [`Exchange::body`].
pub struct Exchange {
    pub head: Head,
    reader: BufReader<Conn>,
}

impl Exchange {
    /// Reads the body, keeping at most `cap` bytes (see [`read_body`]).
    pub fn body(mut self, cap: usize) -> Result<Body, Error> {
        let framing = framing(&self.head)?;
        read_body(&mut self.reader, framing, cap)
    }
}

/// Sends `GET url` and reads the response's head, all before `deadline` (`None`: no
/// limit). Follows no redirect.
pub fn get(url: &Url, deadline: Option<Instant>) -> Result<Exchange, Error> {
    let addrs = resolve(&url.host, url.port, deadline)?;
    let tcp = connect(&addrs, deadline)?;
    let timed = Timed { tcp, deadline };
    let mut conn = match url.scheme {
        Scheme::Http => Conn::Plain(timed),
        Scheme::Https => Conn::Tls(Box::new(handshake(&url.host, timed)?)),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: steward/{}\r\nAccept: */*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
        url.target,
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
    );
    conn.write_all(request.as_bytes())?;
    conn.flush()?;
    let mut reader = BufReader::with_capacity(16 * 1024, conn);
    let head = read_head(&mut reader)?;
    Ok(Exchange { head, reader })
}

/// The addresses of `host`. A name is looked up on a thread of its own, so that the
/// deadline holds even when the resolver does not answer; such a thread ends when the
/// system's resolver gives up (its own timeouts, seconds), and meanwhile holds nothing but
/// the name.
fn resolve(host: &str, port: u16, deadline: Option<Instant>) -> Result<Vec<SocketAddr>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    let name = host.to_string();
    std::thread::Builder::new()
        .name("http-resolve".into())
        .spawn(move || {
            let found = (name.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>());
            // The caller may have given up waiting.
            let _ = tx.send(found);
        })
        .map_err(Error::Io)?;
    let found = match deadline {
        None => rx.recv().map_err(|_| Error::Resolve {
            host: host.to_string(),
            source: io::Error::other("the lookup thread ended without an answer"),
        })?,
        Some(d) => rx
            .recv_timeout(d.saturating_duration_since(Instant::now()))
            .map_err(|_| Error::Timeout)?,
    };
    let addrs = found.map_err(|source| Error::Resolve {
        host: host.to_string(),
        source,
    })?;
    if addrs.is_empty() {
        return Err(Error::NoAddress {
            host: host.to_string(),
        });
    }
    Ok(addrs)
}

/// Connects to the first of `addrs` that takes it, before `deadline`.
fn connect(addrs: &[SocketAddr], deadline: Option<Instant>) -> Result<TcpStream, Error> {
    let mut last = None;
    for &addr in addrs {
        let tried = match deadline {
            None => TcpStream::connect(addr),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout);
                }
                TcpStream::connect_timeout(&addr, left)
            }
        };
        match tried {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    match last {
        Some((_, e)) if timed_out(&e) => Err(Error::Timeout),
        Some((addr, source)) => Err(Error::Connect { addr, source }),
        None => Err(Error::Timeout),
    }
}

/// The TLS client configuration: the platform's roots, read once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let certs =
        rustls_native_certs::load_native_certs().map_err(|e| Error::NoRoots(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::NoRoots("none found".into()));
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

/// Makes the TLS connection to `host` over `tcp`: the server's certificate checked against
/// the roots, for `host` (SNI too).
fn handshake(
    host: &str,
    mut tcp: Timed,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, Timed>, Error> {
    let tls_error = |source: io::Error| {
        if timed_out(&source) {
            Error::Timeout
        } else {
            Error::Tls {
                host: host.to_string(),
                source,
            }
        }
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
        tls_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a server name: {e}"),
        ))
    })?;
    let mut conn = rustls::ClientConnection::new(tls_config()?, name)
        .map_err(|e| tls_error(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(tls_error)?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// A TCP stream whose every read and write ends by `deadline`: each waits at most for what
/// is left of it, so a server that trickles a byte at a time cannot stretch the exchange.
struct Timed {
    tcp: TcpStream,
    deadline: Option<Instant>,
}

impl Timed {
    /// What is left of the deadline, as a socket timeout; an error once it has passed.
    fn left(&self) -> io::Result<Option<std::time::Duration>> {
        let Some(d) = self.deadline else {
            return Ok(None);
        };
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(Some(left))
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(self.left()?)?;
        self.tcp.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.set_write_timeout(self.left()?)?;
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// The connection, plain or TLS.
enum Conn {
    Plain(Timed),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Timed>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => match s.read(buf) {
                // A server that closes without TLS's close_notify: the end of the body
                // when it runs until the close (a body of a known length or chunked finds
                // its own truncation).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn urls_are_taken_apart() {
        let u = url("http://127.0.0.1:9100/metrics");
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.target.as_str()),
            (Scheme::Http, "127.0.0.1", 9100, "/metrics")
        );
        assert_eq!(u.host_header(), "127.0.0.1:9100");
        let u = url("HTTPS://Example.ORG");
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.target.as_str()),
            (Scheme::Https, "example.org", 443, "/")
        );
        assert_eq!(u.host_header(), "example.org");
        let u = url("https://example.org:443?q=1#frag");
        assert_eq!((u.port, u.target.as_str()), (443, "/?q=1"));
        assert_eq!(u.to_string(), "https://example.org/?q=1");
        let u = url("http://[::1]:8080/a/b?x=y&z");
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("::1", 8080, "/a/b?x=y&z")
        );
        assert_eq!(u.host_header(), "[::1]:8080");
        let u = url("http://[2001:db8::1]/");
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 80));
        assert_eq!(u.host_header(), "[2001:db8::1]");
        // An empty port is the scheme's (RFC 3986).
        assert_eq!(url("http://h:/x").port, 80);
    }

    #[test]
    fn nothing_in_a_url_can_add_a_line_to_the_request() {
        let u = url("http://h/a b\r\nX-Evil: 1\r\n\r\nGET /c?é");
        assert_eq!(
            u.target,
            "/a%20b%0D%0AX-Evil:%201%0D%0A%0D%0AGET%20/c?%C3%A9"
        );
        assert!(u.target.bytes().all(|b| b.is_ascii_graphic()));
    }

    #[test]
    fn other_urls_are_refused_saying_why() {
        for (text, says) in [
            ("ftp://h/x", "not an http:// or https:// URL"),
            ("file:///etc/passwd", "not an http:// or https:// URL"),
            ("127.0.0.1:9100/metrics", "not an http:// or https:// URL"),
            ("http://", "no host"),
            ("http:///x", "no host"),
            ("http://:80/x", "no host"),
            ("http://user:pw@h/x", "credentials"),
            ("http://h:0/", "bad port"),
            ("http://h:65536/", "bad port"),
            ("http://h:+80/", "bad port"),
            ("http://h:x/", "bad port"),
            ("http://ex ample.org/", "bad host"),
            ("http://bücher.de/", "bad host"),
            ("http://[::1/", "bad host"),
            ("http://[nope]/", "bad host"),
            ("http://[::1]x/", "bad host"),
            ("http://a..b/", "bad host"),
        ] {
            let e = Url::parse(text).expect_err(text).to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

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

    /// A one-shot server on loopback answering `response` to the first connection, after
    /// reading the request (which it returns).
    fn serve(response: &'static [u8]) -> (u16, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            s.write_all(response).unwrap();
            String::from_utf8(request).unwrap()
        });
        (port, server)
    }

    #[test]
    fn a_get_sends_one_plain_request_and_reads_the_answer() {
        let (port, server) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        let u = url(&format!("http://127.0.0.1:{port}/m?x=1"));
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let exchange = get(&u, Some(deadline)).unwrap();
        assert_eq!(exchange.head.status, 200);
        assert_eq!(exchange.body(100).unwrap().bytes, b"hi");
        let request = server.join().unwrap();
        assert!(
            request.starts_with(&format!(
                "GET /m?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: steward/"
            )),
            "{request}"
        );
        for line in ["Accept-Encoding: identity\r\n", "Connection: close\r\n"] {
            assert!(request.contains(line), "{request}");
        }
    }

    #[test]
    fn the_deadline_bounds_a_server_that_never_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let u = url(&format!("http://127.0.0.1:{port}/"));
        let t = Instant::now();
        let e = get(&u, Some(t + std::time::Duration::from_millis(300)))
            .err()
            .expect("no answer");
        assert!(matches!(e, Error::Timeout), "{e}");
        assert!(e.transient());
        assert!(t.elapsed() < std::time::Duration::from_secs(3));
        drop(listener);
        // Nothing listening: refused at once, naming the address.
        let e = get(&u, None).err().expect("refused");
        assert!(
            e.to_string()
                .starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")),
            "{e}"
        );
    }
}
