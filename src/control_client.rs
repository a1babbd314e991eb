//! `steward send`, `steward status` and `steward keys`: talking to the running agent
//! through its control socket (see [`crate::process::control`]), or to its key files.
//!
//! `send` exits with the remote command's exit status, so scripts can use it like `ssh`:
//!
//! | exit | meaning |
//! |---|---|
//! | the command's | it ran (CLICommand); 0 for an event that was ACKed or a NACK published |
//! | 1 | the receiver could not run it (see the message) |
//! | 2 | bad usage or a message that could not be taken |
//! | 3 | no agent is running on this data folder |
//! | 4 | not delivered: retries or time to live spent (kept in failed-messages.txt) |
//! | 5 | refused by the receiver |
//! | 6 | the agent stopped before the message finished (it resumes when the agent starts); or before it said the message was queued (whether it was is unknown: said so) |
//! | 75 | the agent took nothing now (its disk below its floor, or the message would take it there; its journal failing): nothing queued, send again (`EX_TEMPFAIL`) |

use crate::config::KeysAction;
use crate::keys;
use crate::message::{Kind, Message, Reply, Status};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NO_AGENT: u8 = 3;
pub const EXIT_NOT_DELIVERED: u8 = 4;
pub const EXIT_REFUSED: u8 = 5;
pub const EXIT_INTERRUPTED: u8 = 6;
/// `EX_TEMPFAIL` (sysexits): not queued, try again. Not 1, which is also a command's own
/// "failed": a script retrying on it would run again what ran, or, reading it as "ran",
/// never send what was never queued.
pub const EXIT_NOT_NOW: u8 = 75;

/// What to send, from `steward send`'s flags.
pub struct SendRequest {
    pub to: String,
    pub method: String,
    pub kind: Option<String>,
    pub timeout: Option<u64>,
    pub retries: Option<u32>,
    pub ttl: Option<u64>,
    pub wait: bool,
    pub data: Vec<String>,
    /// The reply's output is a method's word (`keys distribute`, a line for each node), not
    /// a command's bytes: printed as a line wherever it goes.
    pub as_line: bool,
}

fn connect(socket: &Path) -> Result<UnixStream, (u8, String)> {
    UnixStream::connect(socket).map_err(|e| {
        (
            EXIT_NO_AGENT,
            format!(
                "no steward agent is running on this data folder (cannot connect to {}: {e}); start it (systemctl start steward), or point at its data folder with --dataFolder or --config, before the subcommand (steward --dataFolder=DIR status)",
                socket.display()
            ),
        )
    })
}

/// Sends one message through the agent; returns the exit code and prints as it goes.
pub fn send(socket: &Path, req: SendRequest) -> Result<u8, (u8, String)> {
    let kind = match &req.kind {
        Some(k) => Kind::parse(k).ok_or((
            EXIT_USAGE,
            format!("--kind {k:?}: use CommandACK, CommandNACK, EventACK or EventNACK"),
        ))?,
        // The ACK kind the method serves: CommandACK for commands, EventACK for events.
        None => crate::methods::kinds_of(&req.method)
            .and_then(|kinds| kinds.iter().copied().find(|k| k.wants_ack()))
            .unwrap_or(Kind::EventAck),
    };
    // A command to run needs one: without, the receiver would only refuse it, after the
    // trip (and the exit status would be 1, not bad usage).
    if matches!(req.method.as_str(), "CLICommand" | "CLICommandCont") && req.data.is_empty() {
        return Err((
            EXIT_USAGE,
            format!(
                "no command to run: give it after --, e.g. steward send --to {} -- df -h",
                req.to
            ),
        ));
    }
    let message = Message {
        timeout: req.timeout,
        retries: req.retries,
        ttl: req.ttl,
        ..Message::new(&req.to, kind, &req.method, req.data)
    };
    let value = serde_json::to_value(&message).expect("a Message serializes");
    Message::from_value(&value, &crate::methods::kind_refusal)
        .map_err(|e| (EXIT_USAGE, e.to_string()))?;
    let (wait, as_line) = (req.wait && kind.wants_ack(), req.as_line);
    let mut stream = connect(socket)?;
    let request = format!(
        "{}{}\n",
        if wait { "WAIT\n" } else { "" },
        Value::Array(vec![value])
    );
    let io = |e: std::io::Error| {
        (
            EXIT_NO_AGENT,
            format!("talking to the agent at {}: {e}", socket.display()),
        )
    };
    if let Err(e) = stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
    {
        return Err(said_instead(&mut stream).map_or_else(|| io(e), |said| (EXIT_ERROR, said)));
    }
    // Whether the agent said the message was queued: if it goes before that, whether it
    // was is unknown.
    let mut queued = false;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(io)?;
        if let Some(refusal) = refused(&line) {
            return Err((EXIT_ERROR, refusal));
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| (EXIT_ERROR, format!("agent said {line:?}: {e}")))?;
        if let Some(error) = v.get("error").and_then(Value::as_str) {
            // Not the message's fault: the agent cannot take any now.
            let code = match v.get("notNow").and_then(Value::as_bool) {
                Some(true) => EXIT_NOT_NOW,
                _ => EXIT_USAGE,
            };
            return Err((code, error.to_string()));
        }
        if v.get("queued").is_some() {
            queued = true;
            let id = v["id"].as_str().unwrap_or_default();
            if !wait {
                println!("{id}");
                return Ok(0);
            }
            eprintln!("steward: queued {id} for {}; waiting for its reply", req.to);
            continue;
        }
        let Some(progress) = v.get("progress") else {
            continue;
        };
        if let Some(attempt) = progress.get("attempt").and_then(Value::as_str) {
            eprintln!("steward: {attempt}");
            continue;
        }
        if let Some(finished) = progress.get("finished") {
            return Ok(finished_exit(finished, as_line));
        }
    }
    if !queued {
        // Gone mid-request (stopped, or failed at its journal's fsync): it may have
        // journaled the message or not. Not 0, and not "send again": either may be wrong.
        return Err((
            EXIT_INTERRUPTED,
            "the agent closed the connection before saying the message was queued: whether it was is unknown (see `steward status` and message-log.txt once it runs again)".into(),
        ));
    }
    eprintln!("steward: the agent stopped before the message finished; it stays in the journal and goes when the agent starts again");
    Ok(EXIT_INTERRUPTED)
}

/// A reply's output as printed: as it came, but as a line (ended with a newline where it
/// has none) on a terminal, so that the prompt is not glued to its end, and wherever a
/// method's word on what it did goes (`keys distribute`'s, a line for each node). Into a
/// pipe or a file a command's output is its own bytes.
fn shown(output: &str, line: bool) -> std::borrow::Cow<'_, str> {
    match line && !output.is_empty() && !output.ends_with('\n') {
        true => format!("{output}\n").into(),
        false => output.into(),
    }
}

fn finished_exit(finished: &Value, as_line: bool) -> u8 {
    let outcome = finished["outcome"].as_str().unwrap_or_default();
    let reply: Option<Reply> = serde_json::from_value(finished["reply"].clone()).ok();
    if let Some(reply) = &reply {
        use std::io::IsTerminal;
        print!(
            "{}",
            shown(&reply.output, as_line || std::io::stdout().is_terminal())
        );
        let _ = std::io::stdout().flush();
    }
    match (outcome, &reply) {
        ("acked", Some(r)) if r.status == Status::Ok => {
            r.exit_code.map(|c| c.clamp(0, 255) as u8).unwrap_or(0)
        }
        ("acked", Some(_)) => EXIT_ERROR,
        ("refused", _) => EXIT_REFUSED,
        // Its reply, printed above, says so; where it is kept, said here.
        ("interrupted", _) => {
            eprintln!("steward: interrupted on the receiver, perhaps not done; kept in failed-messages.txt");
            EXIT_ERROR
        }
        ("failed", _) => {
            eprintln!(
                "steward: {}",
                finished["why"].as_str().unwrap_or("not delivered")
            );
            EXIT_NOT_DELIVERED
        }
        _ => 0,
    }
}

/// Prints the running agent's process table.
pub fn status(socket: &Path) -> Result<u8, (u8, String)> {
    print!("{}", process_table(socket)?);
    Ok(0)
}

/// What the agent said before it closed the connection while the request was still being
/// written (it refused the client: "refused: …", "busy: …"), if anything.
fn said_instead(stream: &mut UnixStream) -> Option<String> {
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(1)));
    let mut said = String::new();
    let _ = std::io::Read::read_to_string(stream, &mut said);
    let said = said.trim();
    (!said.is_empty()).then(|| said.to_string())
}

/// The running agent's process table, as `steward status` prints it (the tests and the
/// benchmark wait on it for a node to listen).
pub fn process_table(socket: &Path) -> Result<String, (u8, String)> {
    let mut stream = connect(socket)?;
    let io = |e: std::io::Error| {
        (
            EXIT_NO_AGENT,
            format!("talking to the agent at {}: {e}", socket.display()),
        )
    };
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .map_err(io)?;
    if let Err(e) = stream
        .write_all(b"STATUS\n")
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
    {
        return Err(said_instead(&mut stream).map_or_else(|| io(e), |said| (EXIT_ERROR, said)));
    }
    let text = read_all(&mut stream).map_err(io)?;
    match refused(&text) {
        Some(refusal) => Err((EXIT_ERROR, refusal)),
        None => Ok(text),
    }
}

/// The agent's refusal of this client ("busy: …", "refused: …"), if that is what it said.
fn refused(said: &str) -> Option<String> {
    use crate::process::control::{BUSY, NOT_YOURS};
    let said = said.trim();
    [BUSY, NOT_YOURS]
        .iter()
        .any(|r| r.trim() == said)
        .then(|| said.to_string())
}

/// Reads all the agent says, to its end. An agent that refuses a client closes the
/// connection with the request unread, which the socket reports to the client as a reset
/// once the refusal is read: what came before it is kept (it was dropped, and `steward
/// status` said "no agent is running" of a busy one).
fn read_all(stream: &mut UnixStream) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match std::io::Read::read(stream, &mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !bytes.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `steward keys ...` for the node whose data folder is `data`.
pub fn keys(configured: &str, data: &Path, action: KeysAction) -> Result<u8, (u8, String)> {
    let data = crate::files::DataFolder::new(data.to_path_buf());
    let dir = data.keys();
    // The name its agent runs under, whatever these flags say (or the host name, when
    // they say none): the keys are that agent's.
    let recorded = keys::recorded_name(&dir);
    let node = recorded.as_deref().unwrap_or(configured);
    if node != configured {
        eprintln!(
            "steward: as {node}, the node this data folder's agent runs as ({}), not {configured} (--node, or the host name)",
            dir.join("node.name").display()
        );
    }
    let failed = |e: keys::Error| (EXIT_ERROR, e.to_string());
    match action {
        KeysAction::Generate(g) => {
            let identity = keys::Identity::generate(&dir, g.force).map_err(failed)?;
            println!("{node} {}", identity.public_key());
        }
        KeysAction::Show(_) => {
            let key = keys::public_key(&dir).map_err(failed)?;
            println!("{node} {key}");
            eprintln!(
                "# to make another node trust this one, run there: steward keys trust {node} {key}"
            );
        }
        KeysAction::Trust(t) => {
            keys::trust(&dir, &t.node, &t.key).map_err(|e| (EXIT_USAGE, e.to_string()))?;
            eprintln!(
                "steward: {node} now trusts {} with key {} (the running agent picks it up at once)",
                t.node, t.key
            );
        }
        KeysAction::Revoke(r) => {
            let keys = keys::revoke(&dir, &r.node).map_err(|e| (EXIT_USAGE, e.to_string()))?;
            eprintln!(
                "steward: {node} no longer trusts {} (revoked: {}); on central, `steward keys distribute` hands the revocation to the fleet",
                r.node,
                keys.join(", ")
            );
        }
        KeysAction::Distribute(d) => {
            if d.nodes.is_empty() {
                return Err((EXIT_USAGE, "name the nodes to send the keys to".into()));
            }
            let own = keys::public_key(&dir).map_err(failed)?;
            let set = keys::Trusted::open(&dir, node, &own)
                .map_err(failed)?
                .distributable();
            let mut worst = 0;
            for to in d.nodes {
                eprintln!(
                    "steward: sending {} key(s) of {} node(s) to {to}",
                    set.keys.values().map(Vec::len).sum::<usize>(),
                    set.keys.len()
                );
                let code = send(
                    &data.socket(),
                    SendRequest {
                        to,
                        method: "TrustedKeys".into(),
                        kind: Some("CommandACK".into()),
                        timeout: None,
                        retries: None,
                        ttl: None,
                        wait: !d.no_wait,
                        data: vec![set.to_json()],
                        as_line: true,
                    },
                )?;
                worst = worst.max(code);
            }
            return Ok(worst);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a terminal an output gets the newline it lacks, and so does a method's word
    /// anywhere; into a pipe a command's output is its own bytes.
    #[test]
    fn an_output_without_a_newline_ends_one_on_a_terminal_or_as_a_word_only() {
        let word = "ship1 now trusts 2 key(s) distributed by central for: ship1, ship2";
        assert_eq!(shown(word, true), format!("{word}\n"));
        assert_eq!(shown(word, false), word);
        assert_eq!(shown("hi\n", true), "hi\n");
        assert_eq!(shown("", true), "");
        assert_eq!(shown("no newline", false), "no newline");
    }
}
