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
//! Three files, one a concern: `url` takes a URL apart ([`Url`]); `response` reads a
//! response as pure functions over [`BufRead`](std::io::BufRead) ([`read_head`],
//! [`framing`], [`read_body`]), tested without sockets; this one does the I/O around them
//! ([`get`]: name lookup, connect, TLS, the request) and says what went wrong ([`Error`]).
//!
//! HTTPS checks the server's certificate and name against the platform's root certificates
//! (`rustls-native-certs`: the system store; or, if `SSL_CERT_FILE` or `SSL_CERT_DIR` is
//! set, only the PEM file and the OpenSSL-style folder they name, as for curl). They are
//! read at the first HTTPS fetch and kept for the life of the process.

use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

mod response;
mod url;

pub use response::{framing, read_body, read_head, Body, Framing, Head, MAX_HEAD};
pub use url::{Scheme, Url, UrlError};

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
