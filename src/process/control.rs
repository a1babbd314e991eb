//! The control socket: `steward.sock` in the data folder, for `steward send`, `steward
//! status`, and scripts (`socat - UNIX-CONNECT:steward.sock < msg.json`).
//!
//! A client writes one request and closes its writing side:
//!
//! - JSON messages exactly as in inmsg.txt: each is taken into the journal like inmsg.txt
//!   input, and answered with a line `{"id":…,"toNode":…,"queued":true}`, or
//!   `{"rejected":…,"error":…}` for one that could not be taken, and
//!   `{"error":…,"notNow":true}` if the agent takes none now (its disk below its floor,
//!   or a batch that would take it there; its journal failing), the rest unqueued;
//! - the line `WAIT` and then JSON messages: as above, then a line per attempt,
//!   `{"id":…,"progress":{"attempt":"attempt 2/4 …"}}`, and a last one with how it ended,
//!   `{"id":…,"progress":{"finished":{"outcome":"acked","reply":{…},"why":null}}}`;
//! - the line `STATUS`: the process table as text.
//!
//! The socket lives in the data folder, readable and writable by the agent's user only, and
//! a client of another user (root excepted) is refused: what comes through is signed with
//! this node's key.
//! At most [`MAX_CLIENTS`] clients are served at once; another is answered [`BUSY`]. A
//! `WAIT` client that goes away gives its place back within [`HANG_UP_CHECK`].

use super::{stopping, Failure, Process, State, StopFd};
use crate::log_budget::BelowFloor;
use crate::message::parse_input;
use crate::node::Node;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request taken (a batch of messages).
const MAX_REQUEST: u64 = 16 << 20;
/// Most clients served at once; past that a client is answered [`BUSY`] and closed.
pub const MAX_CLIENTS: usize = 8;
/// The answer to a client past [`MAX_CLIENTS`].
pub const BUSY: &str = "busy: too many clients of the control socket at once; try again\n";
/// The answer to a client of another user than the agent's (or root).
pub const NOT_YOURS: &str = "refused: only the agent's user and root may use its control socket\n";
/// How long a client may take to send its request, all of it.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// How long a client may take to read an answer (or a `WAIT` progress line).
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// While a `WAIT` client waits for its message's progress, how often it is looked at to
/// see whether it has gone.
const HANG_UP_CHECK: Duration = Duration::from_secs(1);

pub struct Control {
    pub node: Arc<Node>,
    pub state: Arc<State>,
    /// Wakes the wait for a client when the node stops.
    pub stop_fd: StopFd,
}

/// Why the control socket failed.
#[derive(Debug)]
pub enum Error {
    /// Another process answers on the socket: another agent on this data folder. Fatal:
    /// two agents must not share one journal, and a restart of this process cannot move
    /// the other.
    InUse { path: PathBuf },
    /// The socket could not be made. Fatal if the path cannot be a socket's (longer than
    /// the 107 bytes a Unix socket's path may have: a data folder too deep), a retry
    /// otherwise.
    Listen { path: PathBuf, source: io::Error },
    /// The socket could not be made private.
    Restrict { path: PathBuf, source: io::Error },
    /// The socket failed while waiting for clients.
    Socket { path: PathBuf, source: io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InUse { path } => write!(
                f,
                "{} is in use: is another agent running on this data folder?",
                path.display()
            ),
            Error::Listen { path, source } => {
                write!(f, "cannot listen on {}: {source}", path.display())
            }
            Error::Restrict { path, source } => {
                write!(f, "cannot restrict {}: {source}", path.display())
            }
            Error::Socket { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::InUse { .. } => None,
            Error::Listen { source, .. }
            | Error::Restrict { source, .. }
            | Error::Socket { source, .. } => Some(source),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        match &e {
            Error::InUse { .. } => Failure::fatal(e),
            Error::Listen { source, .. } if source.kind() == io::ErrorKind::InvalidInput => {
                Failure::fatal(e)
            }
            _ => Failure::retry(e),
        }
    }
}

impl Process for Control {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), Failure> {
        let path = self.node.data.socket();
        if UnixStream::connect(&path).is_ok() {
            return Err(Error::InUse { path }.into());
        }
        let _ = std::fs::remove_file(&path); // a stale socket from a crash
        let listener = UnixListener::bind(&path).map_err(|source| Error::Listen {
            path: path.clone(),
            source,
        })?;
        // What comes through here is signed with this node's key, and may command the node
        // itself (and, on central, the fleet): its user only (and root, checked per client
        // below, which also covers the moment before this chmod).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| Error::Restrict {
                path: path.clone(),
                source,
            },
        )?;
        let socket_error = |source| Error::Socket {
            path: path.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(socket_error)?;
        self.state.set(format!("listening on {}", path.display()));
        let clients = Arc::new(AtomicUsize::new(0));
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let own = crate::sys::euid();
                    match crate::sys::peer_uid(&stream) {
                        Ok(uid) if uid == own || uid == 0 => {}
                        Ok(uid) => {
                            log::warn!("control socket: refused a client of user {uid} (only {own} and root may use it)");
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                            let _ = stream.write_all(NOT_YOURS.as_bytes());
                            continue;
                        }
                        Err(e) => {
                            log::warn!("control socket: cannot tell a client's user: {e}");
                            continue;
                        }
                    }
                    if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                        clients.fetch_sub(1, Ordering::SeqCst);
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = stream.write_all(BUSY.as_bytes());
                        continue;
                    }
                    let slot = Slot(clients.clone());
                    let node = self.node.clone();
                    let spawned = std::thread::Builder::new()
                        .name("control client".into())
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            let _slot = slot;
                            if let Err(e) = serve(&node, stream) {
                                log::debug!("control socket: {e}");
                            }
                        });
                    if let Err(e) = spawned {
                        log::error!("control socket: cannot start a thread: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Sleep until a client connects or the node stops.
                    self.stop_fd.wait(listener.as_fd(), None);
                    if stopping(stop) {
                        let _ = std::fs::remove_file(&path);
                        return Ok(());
                    }
                }
                Err(e) => return Err(socket_error(e).into()),
            }
        }
    }
}

/// A client's place among [`MAX_CLIENTS`], given back when its thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads the whole request (to the client's end of writing) by `deadline`, however slowly
/// its bytes trickle in; `None` if it is longer than [`MAX_REQUEST`].
fn read_request(stream: &mut UnixStream, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
    let mut request = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request did not arrive in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(Some(request)),
            Ok(n) if request.len() + n > MAX_REQUEST as usize => return Ok(None),
            Ok(n) => request.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `bytes` within [`ANSWER_DEADLINE`], however slowly the client reads: one
/// that stops reading gives its place back.
fn write_within(stream: &mut UnixStream, bytes: &[u8]) -> io::Result<()> {
    crate::files::write_by(stream, bytes, Instant::now() + ANSWER_DEADLINE)
}

/// The answer when the agent cannot take messages now, through no fault of theirs (its
/// disk below its floor, or a batch would take it there; its journal failing):
/// `"notNow":true` says so, so that `steward send` exits 75 (send again), not 2 (bad
/// input) nor 1 (which a command's own failure is).
fn not_now(why: &str) -> serde_json::Value {
    serde_json::json!({ "error": why, "notNow": true })
}

fn serve(node: &Node, mut stream: UnixStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    // A client that never finishes its request must not keep its place forever.
    let Some(request) = read_request(&mut stream, Instant::now() + REQUEST_DEADLINE)? else {
        let why = format!(
            "the request is larger than {} MiB: nothing of it was taken; send it in parts",
            MAX_REQUEST >> 20
        );
        let line = serde_json::json!({ "error": why });
        return write_within(&mut stream, format!("{line}\n").as_bytes());
    };
    let text = String::from_utf8_lossy(&request);
    let trimmed = text.trim_start();
    if trimmed.trim_end() == "STATUS" {
        let status = node
            .status()
            .unwrap_or_else(|| "the agent is stopping\n".into());
        return write_within(&mut stream, status.as_bytes());
    }
    let (wait, body) = match trimmed.strip_prefix("WAIT") {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let mut out = String::new();
    let mut watched = Vec::new();
    // A batch at a time, as inmsg.txt is read: one stops at the copies a batch may make
    // for `toNodes` (see `parse_input`).
    let (mut rest, mut first_line) = (body.as_bytes(), 1);
    loop {
        let parsed = parse_input(rest, first_line, true, &crate::methods::kind_refusal);
        for r in &parsed.rejected {
            let line = serde_json::json!({"rejected": r.text, "error": r.error});
            out.push_str(&format!("{line}\n"));
        }
        let targets: Vec<String> = parsed.messages.iter().map(|m| m.to_node.clone()).collect();
        if !parsed.messages.is_empty() {
            match node.accept_watched(parsed.messages) {
                Ok(w) => {
                    for ((id, _), to) in w.iter().zip(&targets) {
                        let line = serde_json::json!({"id": id, "toNode": to, "queued": true});
                        out.push_str(&format!("{line}\n"));
                    }
                    watched.extend(w);
                }
                Err(e) => {
                    // Under the floor, as inmsg.txt's intake waits: the room left (and the
                    // journal's reserve) is for finishing what is in flight and storing
                    // its replies, which a script sending on would otherwise take. Refused
                    // there and then, nothing waiting here: so not `steward_disk_full`,
                    // which says intake waits (and would stay set with no intake to clear
                    // it).
                    let answer = match BelowFloor::of(&e) {
                        Some(below) => {
                            let why = format!(
                                "{below}: nothing more was queued; send again once there is room"
                            );
                            log::warn!("control socket: {why}");
                            not_now(&why)
                        }
                        // A message past a record's size is the input's fault; the rest (a
                        // full disk, a failing journal) is not.
                        None => {
                            let why = format!("cannot journal the messages: {e}");
                            match e.kind() {
                                io::ErrorKind::InvalidInput => serde_json::json!({ "error": why }),
                                _ => not_now(&why),
                            }
                        }
                    };
                    out.push_str(&format!("{answer}\n"));
                    break;
                }
            }
        }
        if !parsed.full {
            break;
        }
        first_line += rest[..parsed.consumed]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        rest = &rest[parsed.consumed..];
    }
    write_within(&mut stream, out.as_bytes())?;
    if !wait {
        return Ok(());
    }
    for (id, progress) in watched {
        loop {
            let p = match progress.recv_timeout(HANG_UP_CHECK) {
                Ok(p) => p,
                Err(RecvTimeoutError::Disconnected) => break,
                // A client gone (a `steward send` interrupted) gives its place back now,
                // not when its message ends, which may be its ttl later: eight of them
                // kept every other client out ("busy").
                Err(RecvTimeoutError::Timeout) if crate::sys::hung_up(stream.as_fd()) => {
                    return Ok(());
                }
                Err(RecvTimeoutError::Timeout) => continue,
            };
            let done = matches!(p, crate::node::Progress::Finished { .. });
            let line = serde_json::json!({"id": id, "progress": p});
            write_within(&mut stream, format!("{line}\n").as_bytes())?;
            if done {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::message::parse_input;
    use std::time::{Duration, Instant};

    #[test]
    fn another_agent_or_a_path_no_socket_can_have_is_fatal_other_errors_are_retries() {
        use super::{Error, Failure};
        use std::io;
        let path = std::path::PathBuf::from("/var/lib/steward/steward.sock");
        assert!(Failure::from(Error::InUse { path: path.clone() }).is_fatal());
        // A data folder too deep for a socket's path: what binding one says.
        let deep = std::env::temp_dir().join("x".repeat(200));
        let too_long = std::os::unix::net::UnixListener::bind(&deep).unwrap_err();
        assert_eq!(too_long.kind(), io::ErrorKind::InvalidInput, "{too_long}");
        let listen = |source| Error::Listen {
            path: path.clone(),
            source,
        };
        assert!(Failure::from(listen(too_long)).is_fatal());
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        assert!(!Failure::from(listen(denied)).is_fatal());
    }

    #[test]
    fn one_object_per_line_parses_in_linear_time() {
        let line = "{\"toNode\":\"ship1\",\"data\":[\"echo\",\"hi\"],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\"}\n";
        let body = line.repeat(20_000);
        let started = Instant::now();
        let parsed = parse_input(body.as_bytes(), 1, true, &crate::methods::kind_refusal);
        assert_eq!(parsed.rejected.len() + parsed.messages.len(), 20_000);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "2 MB took {:?}",
            started.elapsed()
        );
    }
}
