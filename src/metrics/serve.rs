//! The HTTP responder behind `/metrics` and the profiling port: a few lines over `std::net`,
//! one request per connection, which is all a scraper needs, without pulling an HTTP stack
//! onto a Pi.
//!
//! These ports may be reachable by anyone on the network (the seed's `:2112` listens on
//! every address), so what a client can take is bounded:
//!
//! - a request gets [`MAX_REQUEST_HEAD`] bytes and [`REQUEST_DEADLINE`];
//! - at most [`MAX_CONNECTIONS`] connections are open at once, each on a small-stacked
//!   thread, and at most [`MAX_PER_PEER`] from one address. Past either, the connection
//!   (of that address) that has waited longest for its request is closed to make room: a
//!   scraper sends its request as it connects, and one address cannot hold every place, so
//!   clients that connect and send nothing cannot keep it out. Only when every connection
//!   that could make room is being answered is a new one closed;
//! - an answer is written within [`ANSWER_DEADLINE`], however slowly the client reads.
//!
//! Left: a client that asks and then reads nothing holds its connection until
//! [`ANSWER_DEADLINE`] once its answer is larger than the socket's buffer (central's page for
//! a large fleet); such clients from two addresses or more keep a scrape out until then, as
//! do clients from many addresses that connect faster than a scraper's request arrives.
//! Listen on a trusted address (`--promHostAndPort=10.0.0.5:2112`) where the network is not.

use std::io::Read;
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most connections open at once per listener (see the module's notes).
pub const MAX_CONNECTIONS: usize = 8;
/// Most of them from one address.
pub const MAX_PER_PEER: usize = MAX_CONNECTIONS / 2;
/// Most bytes of request line and headers read; a longer request is answered 431.
pub const MAX_REQUEST_HEAD: usize = 4 * 1024;
/// The whole request must arrive within this, however slowly its bytes trickle in.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The whole answer must be taken within this, however slowly the client reads.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `page(path)` over HTTP on `addr`: an accepting thread, and a thread per
/// connection (see the module's notes for the bounds).
pub fn serve<F>(what: &str, addr: &str, page: F) -> std::io::Result<()>
where
    F: Fn(&str) -> Option<String> + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what} at {addr}: {e}")))?;
    log::info!("{what} listening on http://{}", listener.local_addr()?);
    let page = Arc::new(page);
    let open = Arc::new(Open::default());
    let name = what.to_string();
    std::thread::Builder::new()
        .name(what.to_string())
        .stack_size(64 * 1024)
        .spawn(move || loop {
            let (stream, peer) = match listener.accept() {
                Ok((stream, peer)) => (stream, peer.ip()),
                Err(e) => {
                    // Out of descriptors, most likely: looked at again shortly, not in a
                    // loop that would take a core.
                    log::warn!("{name}: cannot accept a connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let Some(place) = Open::admit(&open, &stream, peer) else {
                log::debug!(
                    "{name}: {MAX_CONNECTIONS} connections being answered; closing a new one"
                );
                continue; // dropping the stream closes it
            };
            let page = page.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name} client"))
                .stack_size(64 * 1024)
                .spawn(move || {
                    if let Err(e) = answer(stream, &place, &*page) {
                        log::debug!("http: {e}");
                    }
                });
            if let Err(e) = spawned {
                log::error!("{name}: cannot start a thread: {e}");
            }
        })?;
    Ok(())
}

/// The connections open on a listener.
#[derive(Default)]
struct Open {
    conns: Mutex<Vec<Conn>>,
    /// Threads answering, closed ones included until they end.
    threads: AtomicUsize,
    next: AtomicUsize,
}

struct Conn {
    id: usize,
    peer: IpAddr,
    since: Instant,
    /// Still waiting for its request: the one to close first when room is needed.
    asking: bool,
    /// The same socket, to close it from the accepting thread.
    socket: TcpStream,
}

/// A connection's place among the open ones, given back when its thread ends.
struct Place {
    open: Arc<Open>,
    id: usize,
}

impl Open {
    /// Makes room for `stream` (from `peer`), closing a connection still waiting for its
    /// request if need be (see [`room`]); `None` if there is none to close.
    fn admit(open: &Arc<Open>, stream: &TcpStream, peer: IpAddr) -> Option<Place> {
        // Closed connections' threads end at once; more than twice the places means they
        // do not (a starved machine): no more until they have.
        if open.threads.load(Ordering::SeqCst) >= 2 * MAX_CONNECTIONS {
            return None;
        }
        let mut conns = open.conns.lock().unwrap_or_else(|p| p.into_inner());
        let held: Vec<(IpAddr, Instant, bool)> =
            conns.iter().map(|c| (c.peer, c.since, c.asking)).collect();
        match room(&held, peer)? {
            Room::Free => {}
            // Its thread, reading, sees the end at once and ends.
            Room::Close(i) => drop(conns.swap_remove(i).socket.shutdown(Shutdown::Both)),
        }
        let socket = stream.try_clone().ok()?;
        let id = open.next.fetch_add(1, Ordering::Relaxed);
        conns.push(Conn {
            id,
            peer,
            since: Instant::now(),
            asking: true,
            socket,
        });
        open.threads.fetch_add(1, Ordering::SeqCst);
        Some(Place {
            open: open.clone(),
            id,
        })
    }
}

/// What a new connection needs done to be taken.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    Free,
    /// Close the connection at this index first.
    Close(usize),
}

/// Whether a connection from `peer` can be taken, given those open (their peer, since when,
/// and whether still waiting for their request): a peer may hold at most
/// [`MAX_PER_PEER`], so one address alone, however fast it connects, never has every place
/// (past that, its own connection waiting longest is closed); past [`MAX_CONNECTIONS`] in
/// all, the connection waiting longest is. `None`: every connection that could make room is
/// being answered.
fn room(open: &[(IpAddr, Instant, bool)], peer: IpAddr) -> Option<Room> {
    let oldest_asking = |of_peer: bool| {
        open.iter()
            .enumerate()
            .filter(|(_, (p, _, asking))| *asking && (!of_peer || *p == peer))
            .min_by_key(|(_, (_, since, _))| *since)
            .map(|(i, _)| Room::Close(i))
    };
    if open.iter().filter(|(p, _, _)| *p == peer).count() >= MAX_PER_PEER {
        return oldest_asking(true);
    }
    if open.len() >= MAX_CONNECTIONS {
        return oldest_asking(false);
    }
    Some(Room::Free)
}

impl Place {
    /// The request is in: this connection is being answered, and is not closed for room.
    fn answering(&self) {
        let mut conns = self.open.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conns.iter_mut().find(|c| c.id == self.id) {
            c.asking = false;
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut conns = self.open.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| c.id != self.id);
        self.open.threads.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How reading a request's head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The request line (headers read and dropped).
    Complete(String),
    /// More than [`MAX_REQUEST_HEAD`] bytes without the blank line that ends the head.
    TooLarge,
}

/// Reads the request line and headers, within `limit` bytes and by `deadline`.
fn read_head(
    stream: &mut impl Read,
    set_timeout: &mut dyn FnMut(Duration) -> std::io::Result<()>,
    limit: usize,
    deadline: Instant,
) -> std::io::Result<Head> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request did not arrive in time",
            ));
        }
        set_timeout(left)?;
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the end of the request",
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // Look for the end from a little before the new bytes: it may straddle two reads.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        let end = head[from..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .or_else(|| head[from..].windows(4).position(|w| w == b"\r\n\r\n"));
        if end.is_some() {
            let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
            if line_end > limit {
                return Ok(Head::TooLarge);
            }
            return Ok(Head::Complete(
                String::from_utf8_lossy(&head[..line_end])
                    .trim_end()
                    .to_string(),
            ));
        }
        if head.len() > limit {
            return Ok(Head::TooLarge);
        }
    }
}

fn answer(
    mut stream: TcpStream,
    place: &Place,
    page: &dyn Fn(&str) -> Option<String>,
) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let timeouts = stream.try_clone()?;
    let mut set_timeout = |d: Duration| timeouts.set_read_timeout(Some(d));
    let head = read_head(&mut stream, &mut set_timeout, MAX_REQUEST_HEAD, deadline)?;
    place.answering();
    let mut head_only = false;
    let (status, body) = match head {
        Head::TooLarge => (
            "431 Request Header Fields Too Large",
            format!("a request's line and headers may take {MAX_REQUEST_HEAD} bytes\n"),
        ),
        Head::Complete(request_line) => {
            let mut words = request_line.split_whitespace();
            head_only = words.next() == Some("HEAD");
            // The page, whatever the query: Prometheus adds one when a job sets `params`.
            let target = words.next().unwrap_or("/");
            let path = target.split_once('?').map_or(target, |(path, _)| path);
            match page(path) {
                Some(body) => ("200 OK", body),
                None => ("404 Not Found", "not found\n".to_string()),
            }
        }
    };
    let deadline = Instant::now() + ANSWER_DEADLINE;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    crate::files::write_by(&mut stream, head.as_bytes(), deadline)?;
    if head_only {
        return Ok(()); // its length said, as for a GET, and no body
    }
    crate::files::write_by(&mut stream, body.as_bytes(), deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(input: &[u8], limit: usize) -> std::io::Result<Head> {
        let mut r = input;
        read_head(
            &mut r,
            &mut |_| Ok(()),
            limit,
            Instant::now() + Duration::from_secs(5),
        )
    }

    #[test]
    fn the_request_line_is_read_and_headers_dropped() {
        assert_eq!(
            head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 4096).unwrap(),
            Head::Complete("GET /metrics HTTP/1.1".into())
        );
        assert_eq!(
            head(b"GET / HTTP/1.0\n\n", 4096).unwrap(),
            Head::Complete("GET / HTTP/1.0".into())
        );
    }

    #[test]
    fn a_head_past_the_limit_is_too_large() {
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', 10_000));
        assert_eq!(head(&long, 4096).unwrap(), Head::TooLarge);
        let mut headers = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..1000 {
            headers.extend_from_slice(b"X-A: b\r\n");
        }
        headers.extend_from_slice(b"\r\n");
        assert_eq!(head(&headers, 4096).unwrap(), Head::TooLarge);
    }

    #[test]
    fn one_address_never_holds_every_place_and_the_longest_silent_makes_room() {
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        // An address at its share: its own longest silent goes, not another's.
        let open: Vec<_> = (0..MAX_PER_PEER as u64)
            .map(|i| (a, at(10 + i), true))
            .chain([(b, at(0), true)])
            .collect();
        assert_eq!(room(&open, a), Some(Room::Close(0)));
        assert_eq!(room(&open, b), Some(Room::Free));
        // Its share all being answered: it waits, others do not.
        let answered: Vec<_> = open.iter().map(|&(p, s, _)| (p, s, p != a)).collect();
        assert_eq!(room(&answered, a), None);
        assert_eq!(room(&answered, c), Some(Room::Free));
        // Every place taken: the longest silent of all goes, whoever's.
        let full: Vec<_> = (0..MAX_CONNECTIONS as u64)
            .map(|i| (if i % 2 == 0 { b } else { c }, at(100 - i), i != 3))
            .collect();
        assert_eq!(room(&full, a), Some(Room::Close(MAX_CONNECTIONS - 1)));
        let all_answered: Vec<_> = full.iter().map(|&(p, s, _)| (p, s, false)).collect();
        assert_eq!(room(&all_answered, a), None);
    }

    #[test]
    fn a_request_cut_short_is_an_error() {
        assert!(head(b"GET / HTTP/1.1\r\n", 4096).is_err());
    }
}
