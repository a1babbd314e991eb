//! `CLICommand`: run `data` as an argv on the receiving node (no shell unless the operator
//! asks for one, as in the seed's `["bash","-c","ls -l ../"]`), in the data folder.
//!
//! The command gets its own process group, and the message timeout is a kill deadline for
//! the whole group, so `bash -c 'sleep 1000 &'` cannot outlive it. stdout and stderr share
//! one pipe, so the output in the ACK is interleaved as a terminal would show it. Output
//! beyond [`MAX_OUTPUT`] is counted but not kept, so a runaway command cannot exhaust memory
//! or the broker's payload limit.

use super::{Method, Outcome};
use crate::message::{Envelope, Status};
use crate::node::Node;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Output kept in a reply; the rest is counted and dropped.
pub const MAX_OUTPUT: usize = 256 * 1024;

pub struct CliCommand;

impl Method for CliCommand {
    fn name(&self) -> &'static str {
        "CLICommand"
    }

    fn kinds(&self) -> &'static [crate::message::Kind] {
        super::COMMANDS
    }

    fn handle(&self, envelope: &Envelope, node: &Node) -> Outcome {
        let deadline = envelope
            .message
            .timeout
            .map(Duration::from_secs)
            .unwrap_or(node.config.default_timeout);
        run(&envelope.message.data, &node.data.root, deadline)
    }
}

/// Runs `argv` in `cwd`, killing its process group at `deadline`.
pub fn run(argv: &[String], cwd: &Path, deadline: Duration) -> Outcome {
    let Some(program) = argv.first() else {
        return Outcome::error("CLICommand needs a command in data, e.g. [\"df\",\"-h\"]");
    };
    let (reader, writer) = match pipe() {
        Ok(p) => p,
        Err(e) => return Outcome::error(format!("cannot create a pipe: {e}")),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return Outcome::error(format!("cannot duplicate a pipe: {e}")),
    };
    let mut command = Command::new(program);
    command
        .args(&argv[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .process_group(0);
    let spawned = command.spawn();
    // Our copies of the pipe's write end must close, or we would never see end-of-file.
    drop(command);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Outcome::error(format!("cannot start {program:?}: {e}")),
    };
    let started = Instant::now();
    let mut reader = File::from(reader);
    let mut output = Vec::new();
    let mut dropped = 0usize;
    let mut killed = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() && !killed {
            kill_group(child.id());
            killed = true;
        }
        // Wake at least every 200 ms: the command may have exited while a background child
        // of its still holds the pipe open.
        let wait = if killed {
            Duration::from_millis(200)
        } else {
            left.min(Duration::from_millis(200))
        };
        match crate::files::wait_readable(reader.as_raw_fd(), wait) {
            Ok(true) => match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let keep = n.min(MAX_OUTPUT - output.len().min(MAX_OUTPUT));
                    output.extend_from_slice(&buf[..keep]);
                    dropped += n - keep;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            },
            Ok(false) => {
                if killed || matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return Outcome::error(format!("cannot wait for {program:?}: {e}")),
    };
    let mut text = String::from_utf8_lossy(&output).into_owned();
    if dropped > 0 {
        text.push_str(&format!(
            "\n[steward: {dropped} more bytes of output not kept]\n"
        ));
    }
    if killed {
        text.push_str(&format!(
            "\n[steward: killed after the {}s deadline]\n",
            deadline.as_secs_f64()
        ));
    }
    let exit_code = status.code().or_else(|| status.signal().map(|s| 128 + s));
    Outcome {
        status: Status::Ok,
        exit_code,
        output: text,
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn kill_group(pgid: u32) {
    // SAFETY: plain syscall; a stale group id at worst fails with ESRCH.
    unsafe {
        libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn output_and_exit_status_come_back() {
        let o = run(
            &argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            Path::new("/"),
            Duration::from_secs(5),
        );
        assert_eq!(o.status, Status::Ok);
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.output, "out\nerr\n");
    }

    #[test]
    fn the_deadline_kills_the_whole_group() {
        let t = Instant::now();
        let o = run(
            &argv(&["sh", "-c", "sleep 30 & sleep 30; echo never"]),
            Path::new("/"),
            Duration::from_millis(300),
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(o.exit_code, Some(128 + libc::SIGKILL));
        assert!(o.output.contains("killed after"), "{}", o.output);
        assert!(!o.output.contains("never"));
    }

    #[test]
    fn a_missing_program_is_an_error_not_a_crash() {
        let o = run(
            &argv(&["/no/such/program"]),
            Path::new("/"),
            Duration::from_secs(1),
        );
        assert_eq!(o.status, Status::Error);
        assert!(o.output.contains("/no/such/program"));
        assert_eq!(
            run(&[], Path::new("/"), Duration::from_secs(1)).status,
            Status::Error
        );
    }

    #[test]
    fn runaway_output_is_capped() {
        let o = run(
            &argv(&["sh", "-c", "head -c 1000000 /dev/zero"]),
            Path::new("/"),
            Duration::from_secs(10),
        );
        assert!(o.output.len() < MAX_OUTPUT + 200);
        assert!(
            o.output.contains("737856 more bytes"),
            "{}",
            &o.output[o.output.len() - 80..]
        );
    }
}
