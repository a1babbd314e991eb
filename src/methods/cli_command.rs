//! `CLICommand`: run `data` as an argv on the receiving node (no shell unless the operator
//! asks for one, as in the seed's `["bash","-c","ls -l ../"]`), in the data folder.
//!
//! The command gets its own process group, and the message timeout is a kill deadline for
//! the whole group, so `bash -c 'sleep 1000 &'` cannot outlive it. The command ends when its
//! leader has exited and its output is at end-of-file, or at the deadline; then the whole
//! group is killed, so no child of a CLICommand outlives it, even one whose output goes
//! elsewhere (`sleep 1000 >/dev/null 2>&1 &`). An operator who wants something to keep
//! running starts it as a service (`systemd-run …`). A process that leaves the group
//! (`setsid`) and keeps the pipe cannot hold a handler either: [`PIPE_GRACE`] after the
//! deadline the pipe is abandoned. stdout and stderr share
//! one pipe, so the output in the ACK is interleaved as a terminal would show it. Output
//! beyond [`MAX_OUTPUT`] is counted but not kept, so a runaway command cannot exhaust memory
//! or the broker's payload limit.
//!
//! A command still running when the node stops (after its grace) is killed with it,
//! group and all ([`kill_running`]): its own process group keeps it out of the agent's
//! signals, and outside systemd (whose `KillMode=mixed` kills what the unit leaves) it ran
//! on, orphaned, for as long as it liked, while the next start answered it "interrupted".

use super::Context;
use super::{Method, Outcome};
use crate::message::{Envelope, Status};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the pipe is read after the group is killed at the deadline; past that it is
/// abandoned, even if a process outside the group (a `setsid` child) still holds it.
pub const PIPE_GRACE: Duration = Duration::from_secs(1);

/// Output kept in a reply; the rest is counted and dropped.
pub const MAX_OUTPUT: usize = 256 * 1024;

/// The process groups of the commands running now (their leaders not reaped yet, so no id
/// here can have been reused), for [`kill_running`].
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Set once [`kill_running`] has run: a command killed by it says so.
static STOPPED: AtomicBool = AtomicBool::new(false);

/// Kills every command running now, group and all: the node is stopping, its grace over.
/// One started from here on (a handler still taking its message) is killed as it starts:
/// a process runs one agent, which stops once.
pub fn kill_running() {
    let running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    STOPPED.store(true, Ordering::SeqCst);
    for &pgid in running.iter() {
        kill_group(pgid);
    }
}

pub struct CliCommand;

impl Method for CliCommand {
    fn name(&self) -> &'static str {
        "CLICommand"
    }

    fn kinds(&self) -> &'static [crate::message::Kind] {
        super::COMMANDS
    }

    fn senders(&self) -> super::Senders {
        super::Senders::Commanders
    }

    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        run(
            &envelope.message.data,
            &ctx.data.root,
            Deadline::of(&envelope.message, ctx.config.default_timeout),
        )
    }
}

/// How long a command may run: `methodTimeout` if the message has one (`-1`: no limit),
/// else its `timeout` (how long its sender waits for the ACK), else the node's default,
/// less the time its reply needs ([`reply_room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub after: Option<Duration>,
    /// The key that set it, for the reply of a command killed at it.
    pub set_by: &'static str,
}

impl Deadline {
    pub fn of(m: &crate::message::Message, default: Duration) -> Deadline {
        let within_the_wait = |wait: Duration| Some(wait - reply_room(wait));
        match (m.method_timeout, m.timeout) {
            (Some(-1), _) => Deadline {
                after: None,
                set_by: "methodTimeout",
            },
            (Some(t), _) => Deadline {
                after: Some(Duration::from_secs(t.unsigned_abs())),
                set_by: "methodTimeout",
            },
            (None, Some(t)) => Deadline {
                after: within_the_wait(Duration::from_secs(t)),
                set_by: "timeout, less the time its reply needs",
            },
            (None, None) => Deadline {
                after: within_the_wait(default),
                set_by: "the default timeout, less the time its reply needs",
            },
        }
    }
}

/// What a deadline set by the sender's ACK wait (`timeout`, or the default) leaves for the
/// reply to come back in: a fifth of the wait, at most 2 s. Killed at the wait itself, a
/// command was answered just after its sender's attempt had ended: asked again, or, with
/// no retry left, listed as not delivered though it ran (and run again if sent again).
fn reply_room(wait: Duration) -> Duration {
    (wait / 5).min(Duration::from_secs(2))
}

/// Runs `argv` in `cwd`, killing its process group at `deadline`.
pub fn run(argv: &[String], cwd: &Path, deadline: Deadline) -> Outcome {
    run_with(argv, cwd, deadline, None)
}

/// What takes a command's output as it is read.
pub type OnOutput<'a> = &'a mut dyn FnMut(&[u8]);

/// As [`run`]; with `each`, every piece of output goes to it as it is read (`CLICommandCont`)
/// instead of into the outcome, which then holds only steward's notes.
pub fn run_with(
    argv: &[String],
    cwd: &Path,
    deadline: Deadline,
    each: Option<OnOutput<'_>>,
) -> Outcome {
    let Some(program) = argv.first() else {
        return Outcome::error("CLICommand needs a command in data, e.g. [\"df\",\"-h\"]");
    };
    // Not started at all once the node stopped its commands (a handler still taking its
    // message): one started would run until the kill below reached it.
    if STOPPED.load(Ordering::SeqCst) {
        return Outcome::error("not run: the node is stopping");
    }
    let (mut child, reader) = match spawn(argv, cwd) {
        Ok(spawned) => spawned,
        Err(why) => return Outcome::error(why),
    };
    let pgid = child.id();
    {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        if STOPPED.load(Ordering::SeqCst) {
            kill_group(pgid);
        }
        running.push(pgid);
    }
    let streamed = each.is_some();
    let collected = collect(pgid, reader, deadline.after, each);
    // Before the leader is reaped: until then its group id cannot be another's.
    let stopped = {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|&p| p != pgid);
        STOPPED.load(Ordering::SeqCst)
    };
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return Outcome::error(format!("cannot wait for {program:?}: {e}")),
    };
    let mut text = String::from_utf8_lossy(&collected.output).into_owned();
    if collected.dropped > 0 {
        text.push_str(&format!(
            "\n[steward: {} more bytes of output not kept]\n",
            collected.dropped
        ));
    }
    if let (true, Some(after)) = (collected.killed, deadline.after) {
        text.push_str(&format!(
            "\n[steward: killed after the {}s deadline ({})]\n",
            after.as_secs_f64(),
            deadline.set_by
        ));
    }
    if collected.abandoned {
        text.push_str(&format!(
            "\n[steward: output abandoned {}s after the deadline: a process outside the command's group still holds it]\n",
            PIPE_GRACE.as_secs_f64()
        ));
    }
    let stopped_it = stopped && !collected.killed && status.signal() == Some(libc::SIGKILL);
    if stopped_it {
        text.push_str("\n[steward: killed: the node stopped before the command ended]\n");
    }
    let exit_code = status.code().or_else(|| status.signal().map(|s| 128 + s));
    // Streamed to a file of the sender's (`CLICommandCont` with `replyMethod`): a run that
    // failed says so there too, not only in the last result's `exitCode`, which a reader
    // of the file does not see. (A kill of steward's own says so already.)
    if streamed && !collected.killed && !stopped_it {
        match (status.code(), status.signal()) {
            (Some(code), _) if code != 0 => text.push_str(&format!(
                "\n[steward: the command exited with status {code}]\n"
            )),
            (None, Some(signal)) => text.push_str(&format!(
                "\n[steward: the command was killed by signal {signal} (status {})]\n",
                128 + signal
            )),
            _ => {}
        }
    }
    Outcome {
        status: Status::Ok,
        exit_code,
        output: text,
        streamed: false,
    }
}

/// Starts `argv` in `cwd`, in a process group of its own, its stdout and stderr into one
/// pipe: the child, and the pipe's read end.
fn spawn(argv: &[String], cwd: &Path) -> Result<(std::process::Child, File), String> {
    let program = &argv[0];
    let (reader, writer) = crate::sys::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| format!("cannot duplicate a pipe: {e}"))?;
    let mut command = Command::new(program);
    command
        .args(&argv[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .process_group(0);
    // The broker credentials given in the environment stay the node's: a command (run for
    // a sender) could otherwise print them.
    for var in crate::config::SECRET_VARS {
        if std::env::var_os(var).is_some() {
            command.env_remove(var);
        }
    }
    // So does an address with them written in (`nats://user:password@host`).
    let address = std::env::var("STEWARD_BROKER_ADDRESS").unwrap_or_default();
    if address
        .split(',')
        .any(|url| crate::broker::secret(url.trim()).is_some())
    {
        command.env_remove("STEWARD_BROKER_ADDRESS");
    }
    let spawned = command.spawn();
    // Our copies of the pipe's write end must close, or we would never see end-of-file.
    drop(command);
    let child = spawned.map_err(|e| format!("cannot start {program:?}: {e}"))?;
    Ok((child, File::from(reader)))
}

/// What a command wrote, and how it ended.
struct Collected {
    output: Vec<u8>,
    /// Bytes past [`MAX_OUTPUT`], not kept.
    dropped: u64,
    /// Killed at the deadline.
    killed: bool,
    /// Something outside the group still held the pipe [`PIPE_GRACE`] after the kill.
    abandoned: bool,
}

/// Reads the command's output until its leader (`pgid`) has exited and the pipe is at
/// end-of-file (everything that could write to it is gone), or kills the group at the
/// deadline. No child of the command outlives this.
fn collect(
    pgid: u32,
    mut reader: File,
    deadline: Option<Duration>,
    mut each: Option<OnOutput<'_>>,
) -> Collected {
    let started = Instant::now();
    let mut c = Collected {
        output: Vec::new(),
        dropped: 0,
        killed: false,
        abandoned: false,
    };
    let mut killed_at: Option<Instant> = None;
    let mut eof = false;
    // Readable once the leader has exited (`pidfd_open`, Linux 5.3): the wait between the
    // pipe's end and the leader's exit is one poll. Without it (an older kernel), the leader
    // is looked for at once, then less and less often.
    let mut exited = crate::sys::pidfd(pgid);
    let mut recheck = Duration::from_micros(50);
    let mut buf = [0u8; 16 * 1024];
    while !(eof && crate::sys::child_exited(pgid)) {
        let now = Instant::now();
        if killed_at.is_none() && deadline.is_some_and(|d| now.duration_since(started) >= d) {
            kill_group(pgid);
            killed_at = Some(now);
        }
        let wait = match killed_at {
            Some(at) => {
                let left = PIPE_GRACE.saturating_sub(at.elapsed());
                if left.is_zero() {
                    // Something outside the group (a `setsid` child) still holds the pipe.
                    c.abandoned = !eof;
                    break;
                }
                Some(left)
            }
            None => deadline.map(|d| d.saturating_sub(now.duration_since(started))),
        };
        if eof {
            // The leader closed its output but has not exited yet: most often it is in the
            // middle of exiting (its files close before it becomes a zombie). A sleep here,
            // however short, was 0.13 ms of a `true`'s 0.84 (the benchmark's row
            // "CLICommand's run of `true`" times it now).
            match exited.take() {
                Some(fd) => {
                    // Readable: the leader has exited, which the loop's check sees next.
                    // If it does not (a tracer holds the leader's exit), the sleeps from
                    // then on: polled again, the pidfd would spin a core.
                    if !matches!(crate::sys::wait_readable([fd.as_fd()], wait), Ok([true])) {
                        exited = Some(fd);
                    }
                }
                None => {
                    std::thread::sleep(wait.map_or(recheck, |w| w.min(recheck)));
                    recheck = (recheck * 2).min(Duration::from_millis(20));
                }
            }
            continue;
        }
        match crate::sys::wait_readable([reader.as_fd()], wait) {
            Ok([true]) => match reader.read(&mut buf) {
                Ok(0) => eof = true,
                Ok(n) if each.is_some() => {
                    if let Some(each) = each.as_mut() {
                        each(&buf[..n]);
                    }
                }
                Ok(n) => {
                    let keep = n.min(MAX_OUTPUT - c.output.len().min(MAX_OUTPUT));
                    c.output.extend_from_slice(&buf[..keep]);
                    c.dropped += (n - keep) as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => eof = true,
            },
            Ok([false]) => {}
            Err(_) => eof = true,
        }
    }
    // No child of a command outlives it, whether or not it kept the pipe: background
    // children with their output redirected elsewhere are still in the group. The leader
    // is not reaped yet, so the group id cannot have been reused.
    kill_group(pgid);
    c.killed = killed_at.is_some();
    c
}

fn kill_group(pgid: u32) {
    // A stale group id at worst fails with ESRCH.
    let _ = crate::sys::kill_group(pgid, libc::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Deadline {
        Deadline {
            after: Some(Duration::from_secs(n)),
            set_by: "timeout",
        }
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn output_and_exit_status_come_back() {
        let o = run(
            &argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            Path::new("/"),
            secs(5),
        );
        assert_eq!(o.status, Status::Ok);
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.output, "out\nerr\n");
    }

    #[test]
    fn a_deadline_set_by_the_ack_wait_leaves_room_for_the_reply_within_it() {
        let default = Duration::from_secs(10);
        let of = |method_timeout: Option<i64>, timeout: Option<u64>| {
            let mut m = crate::message::Message::new(
                "ship1",
                crate::message::Kind::CommandAck,
                "CLICommand",
                vec!["true".into()],
            );
            (m.method_timeout, m.timeout) = (method_timeout, timeout);
            Deadline::of(&m, default).after
        };
        let ms = |n| Some(Duration::from_millis(n));
        // A fifth of the wait, at most 2 s.
        assert_eq!(of(None, Some(3)), ms(2400));
        assert_eq!(of(None, Some(1)), ms(800));
        assert_eq!(of(None, Some(60)), ms(58_000));
        assert_eq!(of(None, None), ms(8000));
        // A deadline of its own is the message's word.
        assert_eq!(of(Some(30), Some(3)), ms(30_000));
        assert_eq!(of(Some(-1), None), None);
    }

    #[test]
    fn the_deadline_kills_the_whole_group() {
        let t = Instant::now();
        let o = run(
            &argv(&["sh", "-c", "sleep 30 & sleep 30; echo never"]),
            Path::new("/"),
            Deadline {
                after: Some(Duration::from_millis(300)),
                set_by: "methodTimeout",
            },
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
    fn a_leader_that_closes_its_output_is_waited_for_until_it_exits_or_its_deadline() {
        // Output at its end, the leader still running: the command is over when it exits.
        let t = Instant::now();
        let o = run(
            &argv(&["sh", "-c", "echo before; exec >&- 2>&-; sleep 0.4; exit 3"]),
            Path::new("/"),
            secs(10),
        );
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.output, "before\n");
        // ...or at its deadline, killed.
        let t = Instant::now();
        let o = run(
            &argv(&["sh", "-c", "exec >&- 2>&-; sleep 30"]),
            Path::new("/"),
            Deadline {
                after: Some(Duration::from_millis(300)),
                set_by: "methodTimeout",
            },
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(o.exit_code, Some(128 + libc::SIGKILL));
    }

    #[test]
    fn a_missing_program_is_an_error_not_a_crash() {
        let o = run(&argv(&["/no/such/program"]), Path::new("/"), secs(1));
        assert_eq!(o.status, Status::Error);
        assert!(o.output.contains("/no/such/program"));
        assert_eq!(run(&[], Path::new("/"), secs(1)).status, Status::Error);
    }

    #[test]
    fn runaway_output_is_capped() {
        let o = run(
            &argv(&["sh", "-c", "head -c 1000000 /dev/zero"]),
            Path::new("/"),
            secs(10),
        );
        assert!(o.output.len() < MAX_OUTPUT + 200);
        assert!(
            o.output.contains("737856 more bytes"),
            "{}",
            &o.output[o.output.len() - 80..]
        );
    }

    /// Whether a process is gone: no such pid, or a zombie (dead, waiting for whoever
    /// inherited it to reap it). Waits up to a second for it to go.
    fn gone(pid: &str) -> bool {
        let Ok(pid) = pid.trim().parse::<u32>() else {
            panic!("not a pid: {pid:?}");
        };
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                // The state follows the command name in parentheses: "123 (sleep) Z …".
                Ok(stat) if stat.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')) => {
                    return true
                }
                Ok(_) => {}
            }
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_background_child_holding_the_pipe_dies_at_the_deadline() {
        let t = Instant::now();
        let o = run(
            &argv(&["sh", "-c", "sleep 1000 & echo $!; exit 0"]),
            Path::new("/"),
            secs(1),
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
        let pid = o.output.lines().next().unwrap_or_default();
        assert!(gone(pid), "sleep {pid} outlived the command:\n{}", o.output);
        assert!(o.output.contains("killed after"), "{}", o.output);
    }

    #[test]
    fn a_setsid_child_holding_the_pipe_is_abandoned_after_the_grace() {
        // Out of the group, it is out of the deadline's reach, and it keeps the pipe open.
        let t = Instant::now();
        let o = run(
            &argv(&["sh", "-c", "setsid sleep 1000 & echo $!; exit 0"]),
            Path::new("/"),
            secs(1),
        );
        let took = t.elapsed();
        let pid = o.output.lines().find_map(|l| l.parse::<u32>().ok());
        if let Some(pid) = pid {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
        }
        assert!(
            took < Duration::from_secs(1) + PIPE_GRACE + Duration::from_secs(1),
            "took {took:?}"
        );
        assert!(o.output.contains("output abandoned"), "{}", o.output);
    }

    #[test]
    fn a_background_child_with_its_output_elsewhere_dies_when_the_command_ends() {
        let t = Instant::now();
        let o = run(
            &argv(&["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"]),
            Path::new("/"),
            secs(60),
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(o.exit_code, Some(0));
        let pid = o.output.lines().next().unwrap_or_default();
        assert!(gone(pid), "sleep {pid} outlived the command");
        assert!(!o.output.contains("killed after"), "{}", o.output);
    }
}
