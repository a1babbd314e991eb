//! File copy between nodes (`CopySrc` on the source, `CopyDst` chunks to the destination):
//! a 5 MiB file, twenty times a message's payload, through a link that drops and a
//! destination killed mid-copy, arrives whole and is not sent again from zero; and no
//! node writes a file on another without a commander's grant.

use crate::common;
use common::proxy::FaultProxy;
use common::raw::{envelope, signed_by, Raw};
use common::{NatsServer, Node};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::time::{Duration, Instant};

/// The file copied: 5 MiB of random bytes (40 chunks of 128 KiB).
const SIZE: usize = 5 * 1024 * 1024;
const CHUNKS: f64 = 40.0;

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(n);
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(n as u64)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `CopySrc` to `source`, of `src` (under its data folder) to `dst_node`'s `dst`.
fn copy_src(source: &str, src: &str, dst_node: &str, dst: &str) -> String {
    format!(
        "[{{\"toNode\":\"{source}\",\"data\":[\"{src}\",\"{dst_node}\",\"{dst}\"],\"commandOrEvent\":\"CommandACK\",\"method\":\"CopySrc\"}}]\n"
    )
}

/// CopyDst chunks `node` has taken with `outcome` ("ok", "duplicate", "refused", …).
fn received(node: &Node, outcome: &str) -> f64 {
    node.metric(&format!(
        "steward_messages_received_total{{method=\"CopyDst\",outcome=\"{outcome}\"}}"
    ))
}

/// Attempts `node` made at CopyDst chunks: first attempts (one per chunk per batch
/// attempt) and retries of a chunk alone.
fn attempts(node: &Node) -> f64 {
    node.metric("steward_messages_sent_total{method=\"CopyDst\"}")
        + node.metric("steward_messages_retried_total{method=\"CopyDst\"}")
}

/// A source with the file, central to ask for the copy, and the broker they share.
struct Fleet {
    nats: NatsServer,
    central: Node,
    ship1: Node,
    bytes: Vec<u8>,
}

fn fleet() -> Fleet {
    let nats = NatsServer::start();
    let central = Node::start("central", &nats.address(), &[]);
    let ship1 = Node::start("ship1", &nats.address(), &[]);
    let bytes = random_bytes(SIZE);
    std::fs::create_dir_all(ship1.path("out")).unwrap();
    std::fs::write(ship1.path("out/big.bin"), &bytes).unwrap();
    Fleet {
        nats,
        central,
        ship1,
        bytes,
    }
}

impl Fleet {
    /// Central asks ship1 to copy the file to ship2; the ACK says what was queued.
    fn ask(&self) {
        let ended = self.central.send_and_wait(&copy_src(
            "ship1",
            "out/big.bin",
            "ship2",
            "incoming/big.bin",
        ));
        assert_eq!(ended[0].1, "acked", "{ended:?}");
        let reply = self
            .central
            .wait_for("replies/ship1.CopySrc.log", "status=Ok");
        assert!(reply.contains("queued 40 chunks, 5242880 bytes"), "{reply}");
        assert!(reply.contains(&sha256(&self.bytes)), "{reply}");
    }

    /// Waits until `dest` holds the file, whole: its SHA-256 equal to the source's.
    fn wait_arrived(&self, dest: &Node) {
        let want = sha256(&self.bytes);
        let deadline = Instant::now() + 2 * common::WAIT;
        loop {
            if let Ok(got) = std::fs::read(dest.path("incoming/big.bin")) {
                assert_eq!(
                    sha256(&got),
                    want,
                    "a file in place that is not the source's"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never had the file; it took {} chunks\n--- {} ---\n{}\n--- ship1 ---\n{}",
                dest.name,
                received(dest, "ok"),
                dest.name,
                tail(&dest.log()),
                tail(&self.ship1.log())
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        // The last chunk's answer, kept on the source, says so too.
        self.ship1.wait_for(
            &format!("replies/{}.CopyDst.log", dest.name),
            &format!("complete: {SIZE} bytes, sha256 {want}"),
        );
        let left: Vec<String> = std::fs::read_dir(dest.path("incoming"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["big.bin"], "the temporary file is gone");
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits (looking often: the copy is quick) until ship2 has taken at least `n` chunks.
fn wait_chunks(ship2: &Node, n: f64) -> f64 {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let got = received(ship2, "ok");
        if got >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "ship2 took only {got} chunks");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_copy_whose_link_drops_at_half_completes_when_it_returns_without_starting_over() {
    let f = fleet();
    let proxy = FaultProxy::start(f.nats.port);
    let ship2 = Node::start("ship2", &proxy.address(), &[]);
    let started = Instant::now();
    f.ask();
    let at_cut = wait_chunks(&ship2, CHUNKS / 2.0);
    proxy.down(true);
    let cut = Instant::now();
    // ship1 tries on while the link is down, and hears nothing.
    let before = f
        .ship1
        .metric("steward_messages_retried_total{method=\"CopyDst\"}");
    f.ship1.wait_metric(
        "tried a chunk again while ship2's link was down",
        |n| n.metric("steward_messages_retried_total{method=\"CopyDst\"}"),
        |v| v > before,
    );
    let down_for = cut.elapsed();
    proxy.down(false);
    f.wait_arrived(&ship2);
    let took = started.elapsed();
    // What crossed twice: chunks ship2 was sent again after it had them (its ACK lost in
    // the cut), and attempts ship1 made beyond one per chunk.
    let (ok, duplicates) = (received(&ship2, "ok"), received(&ship2, "duplicate"));
    let extra_attempts = attempts(&f.ship1) - CHUNKS;
    eprintln!(
        "[copy link_drop] chunks={CHUNKS} in_before_cut={at_cut} written={ok} received_twice={duplicates} attempts={} extra_attempts={extra_attempts} link_down={:.1}s took={:.1}s",
        attempts(&f.ship1),
        down_for.as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(at_cut < CHUNKS, "the link dropped mid-copy");
    assert_eq!(ok, CHUNKS, "each chunk written once");
    assert!(
        extra_attempts < 0.6 * CHUNKS,
        "{extra_attempts} attempts beyond one per chunk: started over?"
    );
    assert!(
        duplicates < 0.6 * CHUNKS,
        "{duplicates} of {CHUNKS} chunks arrived twice: started over?"
    );
}

#[test]
fn a_copy_whose_destination_is_killed_mid_copy_completes_after_its_restart() {
    let f = fleet();
    let mut ship2 = Node::start("ship2", &f.nats.address(), &[]);
    let started = Instant::now();
    f.ask();
    // Killed at about half, while it writes a batch of chunks if it can be caught at it:
    // the temporary file has grown past a batch's end and the batch is not answered yet.
    let seen = wait_chunks(&ship2, CHUNKS / 2.0);
    let temp_len = |ship2: &Node| -> u64 {
        std::fs::read_dir(ship2.path("incoming"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while temp_len(&ship2) <= seen as u64 * 128 * 1024 && Instant::now() < deadline {
        std::hint::spin_loop();
    }
    ship2.kill9();
    // What the kill left: the temporary file holds the chunks written before it.
    let partial = temp_len(&ship2);
    let kept = (partial / (128 * 1024)) as f64;
    ship2.restart();
    f.wait_arrived(&ship2);
    // After the restart (its counters start from zero): what it took again that it had.
    let (ok, duplicates) = (received(&ship2, "ok"), received(&ship2, "duplicate"));
    let again = ok + duplicates - (CHUNKS - kept);
    // Chunks that were being written when it died, written again (not answered as
    // interrupted).
    let rerun = ship2
        .log()
        .matches("interrupted by the last stop of this node; run again")
        .count();
    eprintln!(
        "[copy kill9] chunks={CHUNKS} seen_before_kill={seen} kept_at_kill={kept} written_after_restart={ok} received_twice_after_restart={duplicates} run_again={rerun} sent_twice={again} attempts={} took={:.1}s",
        attempts(&f.ship1),
        started.elapsed().as_secs_f64()
    );
    assert!(
        (CHUNKS / 2.0 - 6.0..CHUNKS).contains(&kept),
        "the copy was cut short mid-way"
    );
    assert!(
        again < 0.6 * CHUNKS,
        "after the restart ship2 took {ok} chunks and {duplicates} again: started over?"
    );
    assert!(
        !ship2.log().contains("interrupted by a restart"),
        "a chunk cut short by the kill was answered as interrupted, not written again"
    );
}

#[test]
fn a_copy_to_central_whose_source_is_killed_mid_copy_goes_on_from_its_journal() {
    let mut f = fleet();
    let started = Instant::now();
    let ended = f.central.send_and_wait(&copy_src(
        "ship1",
        "out/big.bin",
        "central",
        "incoming/big.bin",
    ));
    assert_eq!(ended[0].1, "acked", "{ended:?}");
    let seen = wait_chunks(&f.central, CHUNKS / 2.0);
    f.ship1.kill9();
    f.ship1.restart();
    f.wait_arrived(&f.central);
    let (ok, duplicates) = (
        received(&f.central, "ok"),
        received(&f.central, "duplicate"),
    );
    eprintln!(
        "[copy source_kill9] chunks={CHUNKS} in_before_kill={seen} written={ok} received_twice={duplicates} took={:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(seen < CHUNKS, "the source was killed mid-copy");
    assert_eq!(ok, CHUNKS, "each chunk written once");
    assert!(duplicates < 0.6 * CHUNKS, "{duplicates} chunks sent again");
}

#[test]
fn a_chunk_without_a_commander_s_grant_is_refused_and_writes_nothing() {
    let nats = NatsServer::start();
    let ship2 = Node::start("ship2", &nats.address(), &[]);
    let raw = Raw::connect(&nats.address());
    let subject = "ship2.EventACK.CopyDst";
    let reply = "_INBOX.ship1.forged.1";
    // ship1's key, stolen: a chunk with no grant at all, and one with a grant ship1 made up
    // (signed with its own key, claiming central's word).
    let bare = envelope(
        "ship1-forged-1",
        "ship1",
        "ship2",
        "EventACK",
        "CopyDst",
        &["0", "aGk=", "2", &"00".repeat(32), "644"],
    );
    let mut granted: serde_json::Value = serde_json::from_slice(&envelope(
        "ship1-forged-2",
        "ship1",
        "ship2",
        "EventACK",
        "CopyDst",
        &["0", "aGk=", "2", &"00".repeat(32), "644"],
    ))
    .unwrap();
    let made_up = steward::grant::CopyGrant {
        id: "central-made-up",
        grantor: "central",
        source: "ship1",
        destination: "ship2",
        method: "CopyDst",
        path: "incoming/forged",
        mode: "",
    };
    let sig = steward::keys::Identity::from_seed(&common::seed_of("ship1"))
        .unwrap()
        .vouch(&made_up.bytes());
    granted["methodArgs"] = serde_json::json!(made_up.chunk_args(&sig));
    let granted = serde_json::to_vec(&granted).unwrap();
    let mut answers = Vec::new();
    for payload in [bare, granted] {
        let headers = signed_by("ship1", subject, Some(reply), &payload);
        let answer = raw.ask(subject, reply, Some(&headers), &payload, common::WAIT);
        answers.push(String::from_utf8_lossy(&answer.expect("an answer").data).into_owned());
    }
    ship2.wait_refused("CopyDst", 2);
    assert!(
        answers[0].contains("ship1 may not call CopyDst here"),
        "{}",
        answers[0]
    );
    assert!(answers[0].contains("carries no grant"), "{}", answers[0]);
    assert!(
        answers[1].contains("does not verify against central's key"),
        "{}",
        answers[1]
    );
    assert_eq!(received(&ship2, "ok"), 0.0);
    assert!(
        !ship2.path("incoming").exists(),
        "a forged chunk wrote something"
    );
    assert!(!ship2.read("journal/received.log").contains("forged"));
}
