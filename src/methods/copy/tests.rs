//! The copy's own tests: the chunk format, paths, and a whole copy between two offline
//! nodes (the source's journal in, the destination's file out), cut short and resumed.

use super::*;
use crate::message::{Envelope, Status};
use crate::node::tests::offline_node_named;
use crate::node::Node;
use crate::subject::Subject;

fn request(src: &str, dst: &str, mode: Option<&str>) -> Envelope {
    let mut data = vec![src.to_string(), "ship2".into(), dst.to_string()];
    data.extend(mode.map(str::to_string));
    Envelope {
        id: "central-0123abcd".into(),
        from_node: "central".into(),
        accepted: 0,
        reply_ticket: None,
        grant: Some("00".repeat(64)),
        message: Message::new("ship1", Kind::CommandAck, COPY_SRC, data),
    }
}

/// The chunks `source` journaled for ship2, in order.
fn queued(source: &Node) -> Vec<Envelope> {
    let lane = Subject::new("ship2", Kind::EventAck, COPY_DST).unwrap();
    let entries = source.journal().take(&lane, 100_000).unwrap();
    entries.iter().map(|e| (*e.envelope).clone()).collect()
}

/// Hands `chunks` to `node`'s CopyDst in batches of `batch`, as its subscriber would.
fn deliver(node: &Node, chunks: &[Envelope], batch: usize) -> Vec<Outcome> {
    chunks
        .chunks(batch)
        .flat_map(|b| {
            let refs: Vec<&Envelope> = b.iter().collect();
            CopyDst.handle_batch(&refs, &node.context())
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Bytes that do not repeat within a chunk.
fn content(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Pair {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    source: Node,
    dest: Node,
    bytes: Vec<u8>,
}

/// A source with a file of `len` bytes (mode 0640) at `out/file.bin`, and a destination.
fn pair(len: usize) -> Pair {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = offline_node_named(a.path(), "ship1");
    let dest = offline_node_named(b.path(), "ship2");
    let bytes = content(len);
    std::fs::create_dir_all(a.path().join("out")).unwrap();
    let src = a.path().join("out/file.bin");
    std::fs::write(&src, &bytes).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    Pair {
        _dirs: (a, b),
        source,
        dest,
        bytes,
    }
}

#[test]
fn a_chunk_s_data_round_trips_and_bad_data_is_refused() {
    let chunk = Chunk {
        offset: 131072,
        bytes: b"hello".to_vec(),
        last: Some(Last {
            size: 131077,
            sha256: "ab".repeat(32),
            mode: 0o640,
        }),
    };
    let data = chunk.data();
    assert_eq!(data[4], "640");
    assert_eq!(Chunk::parse(&data).unwrap(), chunk);
    let plain = Chunk {
        last: None,
        ..chunk.clone()
    };
    assert_eq!(Chunk::parse(&plain.data()).unwrap(), plain);
    let bad = |data: &[&str], says: &str| {
        let data: Vec<String> = data.iter().map(|s| s.to_string()).collect();
        let why = Chunk::parse(&data).unwrap_err().to_string();
        assert!(why.contains(says), "{data:?}: {why}");
    };
    bad(&["0"], "not 1 elements");
    bad(&["-1", "aGk="], "bad offset");
    bad(&["0", "aGk"], "not base64");
    bad(&["0", "aGk=", "2", "AB", "644"], "bad sha256");
    bad(&["0", "aGk=", "2", &"AB".repeat(32), "644"], "bad sha256");
    bad(&["0", "aGk=", "2", &"ab".repeat(32), "4755"], "bad mode");
    bad(&[&u64::MAX.to_string(), "aGk="], "past any file");
    // A chunk with its data fits a message, whatever the bytes.
    let full = Chunk {
        offset: 0,
        bytes: vec![0xff; CHUNK_BYTES],
        last: chunk.last,
    };
    let m = Message {
        method_args: Some(vec!["x".repeat(300); 5]),
        ..Message::new("ship2", Kind::EventAck, COPY_DST, full.data())
    };
    assert!(m.check_limits().is_ok(), "{} bytes", m.data_bytes());
}

#[test]
fn a_dst_path_is_a_file_outside_steward_s_own_folders() {
    for ok in [
        "incoming/a.tar.gz",
        "a/b/c d.txt",
        "/tmp/x",
        "./incoming/./x",
    ] {
        assert!(dst::check_dst_path(ok).is_ok(), "{ok}");
    }
    for (bad, says) in [
        ("", "empty"),
        ("incoming/../../etc/passwd", "\"..\""),
        ("/etc/../root/x", "\"..\""),
        ("incoming/", "names a folder"),
        ("inmsg.txt", "goes into a folder"),
        ("keys/trusted.txt", "steward's own"),
        ("journal/journal.log", "steward's own"),
        ("incoming/a\nb", "control character"),
        ("/", "names a folder"),
    ] {
        let why = dst::check_dst_path(bad).unwrap_err().to_string();
        assert!(why.contains(says), "{bad:?}: {why}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let placed = dst::place(&root, "in/coming/x.bin").unwrap();
    assert_eq!(placed, root.join("in/coming/x.bin"));
    assert!(root.join("in/coming").is_dir(), "folders made");
    // No symbolic link on the way of a relative path.
    std::os::unix::fs::symlink("/tmp", root.join("in/tmp")).unwrap();
    let why = dst::place(&root, "in/tmp/x").unwrap_err().to_string();
    assert!(why.contains("symbolic link"), "{why}");
    // An absolute path's folder must exist, and lands nowhere steward's own.
    let why = dst::place(&root, "/nonexistent-steward/x")
        .unwrap_err()
        .to_string();
    assert!(why.contains("the folder must exist"), "{why}");
    std::fs::create_dir_all(root.join("keys")).unwrap();
    let into_keys = format!("{}/keys/trusted.txt", root.display());
    let why = dst::place(&root, &into_keys).unwrap_err().to_string();
    assert!(why.contains("steward's own"), "{why}");
    let beside_inmsg = format!("{}/inmsg.txt", root.display());
    let why = dst::place(&root, &beside_inmsg).unwrap_err().to_string();
    assert!(why.contains("goes into a folder"), "{why}");
    let elsewhere = format!("{}/in/y", root.display());
    assert_eq!(dst::place(&root, &elsewhere).unwrap(), root.join("in/y"));
}

#[test]
fn two_copies_to_one_path_have_temporary_files_of_their_own() {
    let dst = Path::new("/data/in/x.bin");
    let a = dst::temp_path(dst, "ship1", "central-1");
    assert_eq!(a.parent(), dst.parent());
    let name = a.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with(".x.bin.copy-"), "{name}");
    assert_ne!(a, dst::temp_path(dst, "ship1", "central-2"));
    assert_ne!(a, dst::temp_path(dst, "ship3", "central-1"));
    // A long name still leaves room for the suffix.
    let long = PathBuf::from(format!("/d/{}", "é".repeat(127)));
    let t = dst::temp_path(&long, "ship1", "c");
    assert!(t.file_name().unwrap().len() <= 255);
}

#[test]
fn a_copy_goes_from_source_to_destination_and_is_checked_whole() {
    let p = pair(5 * CHUNK_BYTES / 2 + 17);
    let asked = request("out/file.bin", "incoming/file.bin", None);
    let said = CopySrc.handle(&asked, &p.source.context());
    assert_eq!(said.status, Status::Ok, "{}", said.output);
    let sha = sha256_hex(&p.bytes);
    assert!(said.output.contains("queued 3 chunks"), "{}", said.output);
    assert!(said.output.contains(&sha), "{}", said.output);
    let chunks = queued(&p.source);
    assert_eq!(chunks.len(), 3);
    for c in &chunks {
        let m = &c.message;
        assert_eq!((m.kind, m.to_node.as_str()), (Kind::EventAck, "ship2"));
        assert_eq!(m.ttl, Some(CHUNK_TTL_SECS));
        assert!(m.check_limits().is_ok());
        let (grant, sig) = CopyGrant::of_chunk(c).unwrap();
        assert_eq!(
            (grant.grantor, grant.id, grant.path, grant.mode, sig),
            (
                "central",
                "central-0123abcd",
                "incoming/file.bin",
                "",
                "00".repeat(64).as_str()
            )
        );
    }
    assert!(
        chunks[2].message.timeout >= Some(60),
        "the last is checked whole"
    );
    let outcomes = deliver(&p.dest, &chunks, 5);
    assert!(
        outcomes.iter().all(|o| o.status == Status::Ok),
        "{outcomes:?}"
    );
    assert!(
        outcomes[2].output.contains("complete"),
        "{}",
        outcomes[2].output
    );
    let placed = p.dest.data.root.join("incoming/file.bin");
    assert_eq!(std::fs::read(&placed).unwrap(), p.bytes);
    let mode = std::fs::metadata(&placed).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the source's mode");
    let left: Vec<_> = std::fs::read_dir(p.dest.data.root.join("incoming"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "no temporary file left: {left:?}");

    // With a mode asked, and an empty file: one chunk.
    let p = pair(0);
    let asked = request("out/file.bin", "incoming/empty", Some("0604"));
    assert_eq!(
        CopySrc.handle(&asked, &p.source.context()).status,
        Status::Ok
    );
    let chunks = queued(&p.source);
    assert_eq!(chunks.len(), 1);
    assert!(deliver(&p.dest, &chunks, 5)[0].output.contains("complete"));
    let placed = p.dest.data.root.join("incoming/empty");
    assert_eq!(std::fs::read(&placed).unwrap(), b"");
    let mode = std::fs::metadata(&placed).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o604, "the mode asked");
}

#[test]
fn a_destination_restarted_mid_copy_goes_on_and_a_chunk_run_again_is_harmless() {
    let mut p = pair(7 * CHUNK_BYTES + 1000);
    let asked = request("out/file.bin", "incoming/file.bin", None);
    assert_eq!(
        CopySrc.handle(&asked, &p.source.context()).status,
        Status::Ok
    );
    let chunks = queued(&p.source);
    assert_eq!(chunks.len(), 8);
    let (first, rest) = chunks.split_at(3);
    assert!(deliver(&p.dest, first, 2)
        .iter()
        .all(|o| o.status == Status::Ok));
    // The destination restarts: the temporary file is all its progress, and is enough.
    let root = p.dest.data.root.clone();
    drop(std::mem::replace(
        &mut p.dest,
        offline_node_named(&root, "ship2"),
    ));
    // The chunk that was being written when it died is written again, then the rest.
    let outcomes = deliver(&p.dest, &chunks[2..], 5);
    assert!(
        outcomes.iter().all(|o| o.status == Status::Ok),
        "{outcomes:?}"
    );
    let placed = root.join("incoming/file.bin");
    assert_eq!(std::fs::read(&placed).unwrap(), p.bytes);
    assert!(rest.len() == 5);
    // A batch run again after the file was put in place (the node died before it
    // answered): the same file, said so, and no temporary file left behind.
    let again = deliver(&p.dest, &chunks[5..], 5);
    assert!(again.iter().all(|o| o.status == Status::Ok), "{again:?}");
    assert!(
        again[2].output.contains("already in place"),
        "{}",
        again[2].output
    );
    assert_eq!(std::fs::read(&placed).unwrap(), p.bytes);
    let last_alone = deliver(&p.dest, &chunks[7..], 1);
    assert!(last_alone[0].output.contains("already in place"));
    let left = std::fs::read_dir(root.join("incoming")).unwrap().count();
    assert_eq!(left, 1, "no temporary file left");
}

#[test]
fn a_copy_run_again_after_its_source_shrank_ends_at_the_new_size() {
    let p = pair(3 * CHUNK_BYTES + 500);
    let asked = request("out/file.bin", "incoming/file.bin", None);
    assert_eq!(
        CopySrc.handle(&asked, &p.source.context()).status,
        Status::Ok
    );
    let first = queued(&p.source);
    assert_eq!(first.len(), 4);
    // The third chunk of the first run arrives; the source's node restarts before the
    // copy is answered, and its file is shorter by then: CopySrc runs again, same id.
    assert_eq!(deliver(&p.dest, &first[2..3], 1)[0].status, Status::Ok);
    let shorter = &p.bytes[..CHUNK_BYTES + 100];
    std::fs::write(p.source.data.root.join("out/file.bin"), shorter).unwrap();
    assert_eq!(
        CopySrc.handle(&asked, &p.source.context()).status,
        Status::Ok
    );
    // (The first run's chunks were taken already: the journal hands out the new ones.)
    let second = queued(&p.source);
    assert_eq!(second.len(), 2);
    let outcomes = deliver(&p.dest, &second, 5);
    assert!(
        outcomes.iter().all(|o| o.status == Status::Ok),
        "{outcomes:?}"
    );
    assert!(outcomes[1].output.contains("complete"), "{outcomes:?}");
    let placed = p.dest.data.root.join("incoming/file.bin");
    assert_eq!(std::fs::read(&placed).unwrap(), shorter);
}

#[test]
fn a_mismatch_keeps_the_file_aside_names_both_hashes_and_puts_nothing_in_place() {
    let p = pair(3 * CHUNK_BYTES);
    let asked = request("out/file.bin", "incoming/file.bin", None);
    assert_eq!(
        CopySrc.handle(&asked, &p.source.context()).status,
        Status::Ok
    );
    let mut chunks = queued(&p.source);
    // One chunk arrives other than it was sent (a source whose file changed under it).
    let mut other = Chunk::parse(&chunks[1].message.data).unwrap();
    other.bytes[0] ^= 1;
    chunks[1].message.data = other.data();
    let outcomes = deliver(&p.dest, &chunks, 5);
    let last = &outcomes[2];
    assert_eq!(last.status, Status::Error);
    let sent = sha256_hex(&p.bytes);
    let mut received = p.bytes.clone();
    received[CHUNK_BYTES] ^= 1;
    let received = sha256_hex(&received);
    assert!(last.output.contains(&sent), "{}", last.output);
    assert!(last.output.contains(&received), "{}", last.output);
    let root = &p.dest.data.root;
    assert!(!root.join("incoming/file.bin").exists());
    let bad: Vec<String> = std::fs::read_dir(root.join("incoming"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        bad.len() == 1 && bad[0].ends_with(".bad"),
        "kept aside: {bad:?}"
    );
}

#[test]
fn copy_src_refuses_what_it_must_not_copy_before_queueing_anything() {
    let mut p = pair(1000);
    let refused = |p: &Pair, asked: &Envelope, says: &str| {
        let said = CopySrc.handle(asked, &p.source.context());
        assert_eq!(said.status, Status::Error, "{says}");
        assert!(said.output.contains(says), "{}", said.output);
        assert!(queued(&p.source).is_empty(), "nothing queued: {says}");
    };
    let mut unsigned = request("out/file.bin", "in/x", None);
    unsigned.grant = None;
    refused(&p, &unsigned, "no grant");
    refused(&p, &request("keys/node.seed", "in/x", None), "under keys/");
    std::fs::create_dir_all(p.source.data.journal_dir()).unwrap();
    std::fs::write(p.source.data.journal_dir().join("received.log"), "x").unwrap();
    refused(
        &p,
        &request("out/../journal/received.log", "in/x", None),
        "under journal/",
    );
    refused(&p, &request("out/none", "in/x", None), "cannot read");
    refused(&p, &request("out", "in/x", None), "not a file");
    // A FIFO nobody writes to: refused at once, not waited on for ever.
    let fifo = p.source.data.root.join("out/pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    refused(&p, &request("out/pipe", "in/x", None), "not a file");
    refused(&p, &request("out/file.bin", "in/../x", None), "bad dstPath");
    refused(
        &p,
        &request("out/file.bin", "in/x", Some("4755")),
        "bad mode",
    );
    let mut short = request("out/file.bin", "in/x", None);
    short.message.data.pop();
    refused(&p, &short, "CopySrc takes data");
    p.source.config.max_copy_bytes = 999;
    refused(&p, &request("out/file.bin", "in/x", None), "--maxCopyBytes");
}

#[test]
fn a_copy_s_errors_say_what_they_said_as_text_and_keep_the_system_s_error_as_source() {
    use std::error::Error as _;
    let mismatch = CopyDstError::Mismatch(Box::new(Mismatch {
        id: "c1".into(),
        from: "ship1".into(),
        dst: "/in/x".into(),
        sent_sha256: "aa".into(),
        sent_size: 2,
        node: "ship2".into(),
        got_sha256: "bb".into(),
        got_size: 3,
        aside: Aside::Kept("/in/.x.bad".into()),
    }));
    assert_eq!(
        mismatch.to_string(),
        "copy c1 from ship1 to /in/x: SHA-256 mismatch: ship1 sent sha256 aa (2 bytes), ship2 received sha256 bb (3 bytes); kept as /in/.x.bad; nothing put in place"
    );
    let denied = || io::Error::from(io::ErrorKind::PermissionDenied);
    let queued = CopySrcError::NotQueued {
        path: "/var/log/x".into(),
        queued: 32,
        source: denied(),
    };
    assert_eq!(
        queued.to_string(),
        format!("cannot queue the chunks of /var/log/x after the first 32: {}; nothing more is sent, send the CopySrc again", denied())
    );
    assert!(queued.source().is_some());
    let place = CopyDstError::from(PlaceError::NotMade {
        path: "in/x".into(),
        at: "/d/in".into(),
        source: denied(),
    });
    assert_eq!(
        place.to_string(),
        format!("bad dstPath \"in/x\": /d/in: cannot be made: {}", denied())
    );
    let io = place.source().and_then(|e| e.source());
    assert!(io.is_some_and(|e| e.is::<io::Error>()), "{io:?}");
    let mode = CopyDstError::from(parse_mode("4755").unwrap_err());
    assert_eq!(
        mode.to_string(),
        "bad mode \"4755\": give permission bits in octal, at most 0777 (e.g. \"0644\")"
    );
}

#[test]
fn a_file_of_the_same_bytes_someone_left_at_the_destination_is_replaced_not_taken_as_placed() {
    let p = pair(1000);
    let asked = request("out/file.bin", "incoming/file.bin", Some("0600"));
    assert_eq!(
        CopySrc.handle(&asked, &p.source.context()).status,
        Status::Ok
    );
    let chunks = queued(&p.source);
    assert_eq!(
        chunks.len(),
        1,
        "one chunk, the last: no temporary file before it"
    );
    let root = p.dest.data.root.clone();
    std::fs::create_dir_all(root.join("incoming")).unwrap();
    // Another user's file of the same bytes, writable by all, reached through a link: the
    // copy said "already in place", and the file at dstPath stayed theirs.
    let elsewhere = tempfile::tempdir().unwrap();
    let theirs = elsewhere.path().join("theirs");
    std::fs::write(&theirs, &p.bytes).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::symlink(&theirs, root.join("incoming/file.bin")).unwrap();
    let out = deliver(&p.dest, &chunks, 5);
    assert_eq!(out[0].status, Status::Ok, "{}", out[0].output);
    assert!(out[0].output.contains("in place"), "{}", out[0].output);
    assert!(!out[0].output.contains("already"), "{}", out[0].output);
    let meta = std::fs::symlink_metadata(root.join("incoming/file.bin")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read(root.join("incoming/file.bin")).unwrap(),
        p.bytes
    );
    // The same bytes, but not the mode asked for: put in place again, with it.
    std::fs::set_permissions(
        root.join("incoming/file.bin"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let again = request("out/file.bin", "incoming/file.bin", Some("0600"));
    assert_eq!(
        CopySrc.handle(&again, &p.source.context()).status,
        Status::Ok
    );
    let out = deliver(&p.dest, &queued(&p.source), 5);
    assert!(!out[0].output.contains("already"), "{}", out[0].output);
    let mode = std::fs::metadata(root.join("incoming/file.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_fifo_at_the_destination_does_not_hold_up_the_copy() {
    let p = pair(1000);
    let asked = request("out/file.bin", "incoming/file.bin", None);
    assert_eq!(
        CopySrc.handle(&asked, &p.source.context()).status,
        Status::Ok
    );
    let chunks = queued(&p.source);
    let root = p.dest.data.root.clone();
    std::fs::create_dir_all(root.join("incoming")).unwrap();
    let fifo = root.join("incoming/file.bin");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    // Opening it to compare waited for a writer for ever, and the copy's lane with it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(deliver(&p.dest, &chunks, 5));
    });
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("answered, not blocked opening the FIFO");
    assert_eq!(out[0].status, Status::Ok, "{}", out[0].output);
    assert!(std::fs::symlink_metadata(&fifo).unwrap().is_file());
}

#[test]
fn copies_of_a_chunk_s_size_and_a_group_s_arrive_whole() {
    for (len, chunks) in [
        (CHUNK_BYTES, 1),
        (CHUNK_BYTES + 1, 2),
        (GROUP * CHUNK_BYTES, GROUP),
        (GROUP * CHUNK_BYTES + 1, GROUP + 1),
    ] {
        let p = pair(len);
        let asked = request("out/file.bin", "incoming/file.bin", None);
        assert_eq!(
            CopySrc.handle(&asked, &p.source.context()).status,
            Status::Ok
        );
        let queued = queued(&p.source);
        assert_eq!(queued.len(), chunks, "{len} bytes");
        let outcomes = deliver(&p.dest, &queued, 7);
        assert!(
            outcomes.iter().all(|o| o.status == Status::Ok),
            "{outcomes:?}"
        );
        let placed = p.dest.data.root.join("incoming/file.bin");
        assert_eq!(std::fs::read(&placed).unwrap(), p.bytes, "{len} bytes");
    }
}

#[test]
fn a_link_planted_at_a_copy_s_temporary_name_is_not_written_through() {
    let p = pair(3 * CHUNK_BYTES);
    // An absolute dstPath in a folder a local user may write to (their own, or a shared
    // one): they link the copy's temporary name to a file they may not write (a hard link
    // needs no write access to its target where protected_hardlinks is off), and the
    // agent, root, wrote the chunks into it, and cut it to the copy's size.
    let shared = tempfile::tempdir().unwrap();
    let folder = shared.path().canonicalize().unwrap();
    let dst = folder.join("file.bin");
    let asked = request("out/file.bin", dst.to_str().unwrap(), None);
    let said = CopySrc.handle(&asked, &p.source.context());
    assert_eq!(said.status, Status::Ok, "{}", said.output);
    let chunks = queued(&p.source);
    let victim = folder.join("victim");
    std::fs::write(&victim, b"not the copy's to write").unwrap();
    let temp = dst::temp_path(&dst, "ship1", "central-0123abcd");
    std::fs::hard_link(&victim, &temp).unwrap();
    let outcomes = deliver(&p.dest, &chunks, 5);
    assert!(
        std::fs::read(&victim).unwrap() == b"not the copy's to write",
        "written through the link: {outcomes:?}"
    );
    for o in &outcomes {
        assert_eq!(o.status, Status::Error, "{}", o.output);
        assert!(
            o.output.contains(&temp.display().to_string()),
            "{}",
            o.output
        );
        assert!(o.output.contains("link"), "{}", o.output);
    }
    assert!(!dst.exists(), "nothing put in place");
}

#[test]
fn an_absolute_dst_path_into_steward_s_own_folders_is_refused_however_the_data_folder_is_named() {
    // The data folder named through a link (`--dataFolder=/var/lib/steward`, a link to a
    // USB disk on a Pi): its own folders were compared with the link's name, never the
    // folder's, and `<real>/keys/trusted.txt` was a copy's to replace.
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().canonicalize().unwrap().join("data");
    std::fs::create_dir_all(real.join("keys")).unwrap();
    let link = real.with_file_name("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for root in [&link, &real] {
        for named in [&real, &link] {
            let into_keys = format!("{}/keys/trusted.txt", named.display());
            let why = dst::place(root, &into_keys).unwrap_err().to_string();
            assert!(
                why.contains("steward's own"),
                "{into_keys} in {root:?}: {why}"
            );
            let beside_inmsg = format!("{}/inmsg.txt", named.display());
            let why = dst::place(root, &beside_inmsg).unwrap_err().to_string();
            assert!(why.contains("goes into a folder"), "{beside_inmsg}: {why}");
        }
    }
    // What is checked is where it is written: the folder's real place, not a name that
    // may be pointed elsewhere once it was checked.
    std::fs::create_dir_all(real.join("in")).unwrap();
    let through_link = format!("{}/in/y", link.display());
    assert_eq!(dst::place(&real, &through_link).unwrap(), real.join("in/y"));
}

#[test]
fn a_copy_the_journal_has_no_room_for_is_refused_before_anything_is_queued() {
    use crate::log_budget::{LogBudget, LogLimits, DEFAULT_BYTES_PER_HOUR};
    let p = pair(0);
    // Sparse: it takes no room itself, and its chunks, journaled, take a third more.
    let src = p.source.data.root.join("out/big.bin");
    File::create(&src).unwrap().set_len(32 << 20).unwrap();
    // Room for the file, not for its chunks as journaled, above the floor kept for the
    // journal: they were journaled all the same, as far as the disk went, and the node
    // then had nothing left to take any other message with.
    let (free, _) = crate::sys::free_bytes(&p.source.data.root).unwrap();
    let floor = free.saturating_sub(36 << 20);
    let budget = LogBudget::new(LogLimits::new(DEFAULT_BYTES_PER_HOUR, Some(floor)));
    let ctx = Context {
        log_budget: &budget,
        ..p.source.context()
    };
    let said = CopySrc.handle(&request("out/big.bin", "incoming/big.bin", None), &ctx);
    assert_eq!(said.status, Status::Error, "{}", said.output);
    assert!(said.output.contains("big.bin"), "{}", said.output);
    assert!(
        said.output.contains("--minFreeBytesForLogs"),
        "{}",
        said.output
    );
    assert!(queued(&p.source).is_empty(), "nothing queued");
}

#[test]
fn a_copy_goes_onto_a_disk_whose_files_all_have_one_owner() {
    // A FAT or exFAT disk mounted with `uid=1000` (a USB stick on a Pi), or NFS with
    // root_squash: every file the agent, root, makes there is 1000's (or nobody's). Made as
    // such a file is here: the destination's thread makes its files as 65534 (its fsuid),
    // its euid still root's.
    if crate::sys::euid() != 0 {
        eprintln!("skipped: needs root, to make files as another user");
        return;
    }
    let p = pair(3 * CHUNK_BYTES);
    let disk = tempfile::tempdir().unwrap();
    let folder = disk.path().canonicalize().unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dst = folder.join("file.bin");
    let asked = request("out/file.bin", dst.to_str().unwrap(), None);
    let said = CopySrc.handle(&asked, &p.source.context());
    assert_eq!(said.status, Status::Ok, "{}", said.output);
    let chunks = queued(&p.source);
    // Another user's file at the temporary name is refused (by root, who may write it).
    let temp = dst::temp_path(&dst, "ship1", "central-0123abcd");
    std::fs::write(&temp, b"theirs").unwrap();
    std::os::unix::fs::chown(&temp, Some(1234), None).unwrap();
    let as_disk_owner = |chunks: &[Envelope]| {
        std::thread::scope(|s| {
            s.spawn(|| {
                crate::sys::set_fsuid(65534);
                // A batch a chunk: each after the first finds the file the first made.
                deliver(&p.dest, chunks, 1)
            })
            .join()
            .unwrap()
        })
    };
    for o in deliver(&p.dest, &chunks[..1], 1) {
        assert_eq!(o.status, Status::Error, "{}", o.output);
        assert!(o.output.contains("another user's"), "{}", o.output);
    }
    assert_eq!(std::fs::read(&temp).unwrap(), b"theirs");
    std::fs::remove_file(&temp).unwrap();
    for o in as_disk_owner(&chunks) {
        assert_eq!(o.status, Status::Ok, "{}", o.output);
    }
    assert_eq!(std::fs::read(&dst).unwrap(), p.bytes);
    // Its last chunk again (its ACK lost): the copy is in place, as on any other disk, not
    // a SHA-256 mismatch (a new temporary file holding that chunk alone, kept as `.bad`).
    for o in as_disk_owner(&chunks[chunks.len() - 1..]) {
        assert_eq!(o.status, Status::Ok, "{}", o.output);
        assert!(o.output.contains("already in place"), "{}", o.output);
    }
    let left: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "file.bin")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_absolute_dst_path_through_another_mount_of_the_data_folder_is_refused() {
    // The data folder bind-mounted at its place (`/var/lib/steward`, from `/mnt/usb/steward`
    // on a Pi), or on a disk that ignores case (FAT: `KEYS` is `keys`): a name
    // canonicalize leaves as it is, and compared by name, `/mnt/usb/steward/keys/
    // trusted.txt` was a copy's to replace.
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().canonicalize().unwrap().join("data");
    std::fs::create_dir_all(real.join("keys")).unwrap();
    std::fs::create_dir_all(real.join("in")).unwrap();
    let alias = real.with_file_name("usb");
    std::fs::create_dir(&alias).unwrap();
    struct Mounted(PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let bound = crate::sys::euid() == 0
        && std::process::Command::new("mount")
            .arg("--bind")
            .args([&real, &alias])
            .status()
            .is_ok_and(|s| s.success());
    if !bound {
        eprintln!("skipped: a bind mount needs root");
        return;
    }
    let _mounted = Mounted(alias.clone());
    let into_keys = format!("{}/keys/trusted.txt", alias.display());
    let why = dst::place(&real, &into_keys).unwrap_err().to_string();
    assert!(why.contains("steward's own"), "{into_keys}: {why}");
    let beside_inmsg = format!("{}/inmsg.txt", alias.display());
    let why = dst::place(&real, &beside_inmsg).unwrap_err().to_string();
    assert!(why.contains("goes into a folder"), "{beside_inmsg}: {why}");
    let into_in = format!("{}/in/y", alias.display());
    assert_eq!(dst::place(&real, &into_in).unwrap(), alias.join("in/y"));
}
