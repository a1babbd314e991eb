//! The journal's own tests; the crash simulation is `storage::crash`.

use super::*;
use crate::journal::record::{decode, PREALLOCATE};
use crate::message::Kind;
use crate::storage::bad_sector::BadSector;
use std::fs::{self, OpenOptions};

fn msg_to(to: &str, i: usize) -> Message {
    Message::new(
        to,
        Kind::EventAck,
        "TextLogging",
        vec![format!("message {i}")],
    )
}

fn msg(i: usize) -> Message {
    msg_to("ship1", i)
}

/// A message of 4 KB to ship1: about 14 fit in a lane's part of [`HOT_BYTES`].
fn big_msg(i: usize) -> Message {
    let mut m = msg(i);
    m.data[0] = format!("message {i} {}", "x".repeat(4096));
    m
}

fn lane(to: &str) -> Subject {
    msg_to(to, 0).subject()
}

fn data(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.envelope.message.data[0].clone())
        .collect()
}

/// Every waiting message of a lane, as its publisher would take them.
fn take_all(j: &mut Journal, to: &str) -> Vec<Entry> {
    let mut all = Vec::new();
    loop {
        let got = j.take(&lane(to), crate::message::MAX_BATCH).unwrap();
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

/// What the journal in `dir` holds for ship1 once opened again, and what its recovery said.
fn left_for_ship1(dir: &Path) -> (Vec<String>, Recovery) {
    let (mut j, r) = Journal::open(dir).unwrap();
    (data(&take_all(&mut j, "ship1")), r)
}

/// Appends to `buf` the `Accepted` record of `envelope` (as encoded) on ship1's
/// TextLogging lane: for journals the tests write by hand.
fn encode_accepted(seq: u64, envelope: Vec<u8>, buf: &mut Vec<u8>) {
    let lane = "ship1.EventACK.TextLogging".into();
    encode(
        &Record::Accepted {
            seq,
            lane,
            envelope,
        },
        buf,
    );
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

#[test]
fn unfinished_messages_come_back_in_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.pending, 0);
    let entries = j
        .append("central", (0..5).map(msg).collect(), None)
        .unwrap();
    let taken = j.take(&lane("ship1"), 2).unwrap();
    assert_eq!(taken, entries[..2]);
    j.finish(&lane("ship1"), &seqs(&taken)).unwrap();
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!((r.pending, r.lanes.clone()), (3, vec![lane("ship1")]));
    let rest = take_all(&mut j, "ship1");
    assert_eq!(data(&rest), ["message 2", "message 3", "message 4"]);
    assert_eq!(rest[0].envelope, entries[2].envelope);
    assert_eq!(j.pending_count(), 3, "taken is not finished");
    assert!(r.cut.is_none());
}

#[test]
fn a_message_too_large_to_send_is_never_journaled_nor_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let mut huge = msg(1);
    huge.data[0] = "\u{1}".repeat(crate::message::MAX_DATA_BYTES);
    let e = j.append("central", vec![msg(0), huge], None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("ship1.EventACK.TextLogging"), "{e}");
    assert_eq!(j.pending_count(), 0);
    j.append("central", vec![msg(2)], None).unwrap();
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert!(r.cut.is_none());
    assert_eq!(data(&take_all(&mut j, "ship1")), ["message 2"]);
}

#[test]
fn a_finish_never_covers_a_message_still_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append("central", (0..3).map(msg).collect(), None)
        .unwrap();
    let taken = j.take(&lane("ship1"), 3).unwrap();
    // The third finishes while the first two are still in flight.
    j.finish(&lane("ship1"), &[taken[2].seq]).unwrap();
    assert_eq!(j.pending_count(), 3);
    drop(j);
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let again = take_all(&mut j, "ship1");
    assert_eq!(seqs(&again), seqs(&taken), "all three are still unfinished");
    j.finish(&lane("ship1"), &seqs(&again)).unwrap();
    assert_eq!(j.pending_count(), 0);
    drop(j);
    let (_, r) = Journal::open(dir.path()).unwrap();
    assert_eq!((r.pending, r.lanes.len()), (0, 0));
}

#[test]
fn lanes_are_taken_apart_in_their_own_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let mixed: Vec<Message> = (0..6)
        .map(|i| msg_to(if i % 2 == 0 { "ship1" } else { "ship2" }, i))
        .collect();
    j.append("central", mixed, None).unwrap();
    let two = take_all(&mut j, "ship2");
    assert_eq!(data(&two), ["message 1", "message 3", "message 5"]);
    j.finish(&lane("ship2"), &seqs(&two)).unwrap();
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!((r.pending, r.lanes.clone()), (3, vec![lane("ship1")]));
    assert_eq!(
        data(&take_all(&mut j, "ship1")),
        ["message 0", "message 2", "message 4"]
    );
    assert!(take_all(&mut j, "ship2").is_empty());
}

#[test]
fn a_backlog_is_located_a_window_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let n = 5 * WINDOW + 7;
    // Two lanes interleaved, in batches, as an inbox would take them.
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        let messages = batch
            .iter()
            .flat_map(|&i| [msg_to("ship1", i), msg_to("ship2", i)])
            .collect();
        j.append("central", messages, None).unwrap();
    }
    let l = &j.lanes["ship1.EventACK.TextLogging"];
    assert_eq!(
        l.waiting.window.len(),
        WINDOW,
        "no more than a window in memory"
    );
    assert!(l.waiting.spill.is_some());
    assert_eq!(j.pending_count(), 2 * n);
    let one = take_all(&mut j, "ship1");
    assert_eq!(one.len(), n);
    assert!(one.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
    assert_eq!(
        one[n - 1].envelope.message.data[0],
        format!("message {}", n - 1)
    );
    j.finish(&lane("ship1"), &seqs(&one)).unwrap();
    drop(j);
    // Reopened, the other lane's backlog is located a window at a time too.
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.pending, n);
    assert_eq!(
        j.lanes["ship2.EventACK.TextLogging"].waiting.window.len(),
        WINDOW
    );
    let two = take_all(&mut j, "ship2");
    assert_eq!(two.len(), n);
    assert!(two.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[test]
fn ids_stay_unique_across_compaction_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let first = j.append("central", vec![msg(0)], None).unwrap();
    j.take(&lane("ship1"), 1).unwrap();
    j.finish(&lane("ship1"), &[first[0].seq]).unwrap();
    j.compact().unwrap();
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.pending, 0);
    let second = j.append("central", vec![msg(1)], None).unwrap();
    assert!(second[0].seq > first[0].seq);
}

#[test]
fn torn_tail_is_cut_and_every_complete_record_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    for i in 0..3 {
        j.append("central", vec![msg(i)], None).unwrap();
    }
    let end = j.size();
    drop(j);
    let path = Journal::path(dir.path());
    assert!(
        fs::metadata(&path).unwrap().len() > end,
        "space reserved ahead"
    );
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(end - 5).unwrap(); // power lost mid-write of the last batch
    drop(f);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(data(&take_all(&mut j, "ship1")), ["message 0", "message 1"]);
    let cut = r.cut.expect("the cut is reported");
    assert!(
        cut.contains("torn record") && cut.contains("dropped 1 message(s)"),
        "{cut}"
    );
    // The journal is usable again after the cut.
    j.append("central", vec![msg(9)], None).unwrap();
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(
        data(&take_all(&mut j, "ship1")),
        ["message 0", "message 1", "message 9"]
    );
    assert!(r.cut.is_none());
}

#[test]
fn an_unreadable_message_is_reported_and_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let mut buf = Vec::new();
    encode_accepted(1, b"{not json".to_vec(), &mut buf);
    encode(
        &Record::Checkpoint {
            next_seq: 2,
            synced: None,
        },
        &mut buf,
    );
    j.file.append(&buf).unwrap();
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.pending, 1);
    j.append("central", vec![msg(2)], None).unwrap();
    assert_eq!(data(&take_all(&mut j, "ship1")), ["message 2"]);
    let unreadable = j.take_unreadable();
    assert_eq!(unreadable.len(), 1);
    assert!(unreadable[0].contains("{not json"), "{unreadable:?}");
    assert_eq!(j.pending_count(), 1, "passed over, the next one in flight");
}

#[test]
fn messages_this_run_journaled_are_handed_out_as_written_within_a_budget_no_lane_takes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    // 4 KB each: about 14 fit in a lane's part of the budget, the rest are read back
    // from the file; another lane's messages are kept all the same.
    let written = j
        .append("central", (0..300).map(big_msg).collect(), None)
        .unwrap();
    let hot = j.lanes[&lane("ship1").to_string()].hot.len();
    assert!(hot > 10 && hot < 300, "{hot} of 300 kept as written");
    assert!(
        j.hot_bytes <= LANE_HOT_BYTES && j.hot_bytes > 0,
        "{}",
        j.hot_bytes
    );
    let others = j
        .append(
            "central",
            (0..10).map(|i| msg_to("ship2", i)).collect(),
            None,
        )
        .unwrap();
    assert_eq!(j.lanes[&lane("ship2").to_string()].hot, others);
    assert_eq!(take_all(&mut j, "ship2"), others);
    // Damage the file under the first message and under the last: the first is still
    // handed out whole (kept as written), the last, read back, is passed over.
    let path = Journal::path(dir.path());
    let bytes = fs::read(&path).unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    for needle in ["message 0 x", "message 299 x"] {
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"X", (at + 9) as u64).unwrap();
    }
    let taken = take_all(&mut j, "ship1");
    assert_eq!(
        taken[..],
        written[..299],
        "in order, as written, the damaged last one out"
    );
    let unreadable = j.take_unreadable();
    assert_eq!(unreadable.len(), 1);
    assert!(unreadable[0].contains("record 300"), "{unreadable:?}");
    assert_eq!(j.hot_bytes, 0, "what was kept is let go once handed out");
}

#[test]
fn a_message_kept_as_written_goes_only_once_durable_and_is_the_one_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let written = j
        .write("central", (0..10).map(msg).collect(), None)
        .unwrap();
    assert!(
        j.take(&lane("ship1"), 10).unwrap().is_empty(),
        "not before its fsync"
    );
    let synced = written.sync();
    j.commit(&written, synced).unwrap();
    let from_memory = j.take(&lane("ship1"), 10).unwrap();
    assert_eq!(from_memory, written.entries);
    assert_eq!(j.hot_bytes, 0);
    // Unfinished, so read back after a restart: the same entries.
    drop(j);
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    assert_eq!(take_all(&mut j, "ship1"), from_memory);

    // Past the budget, then room again: one take goes from memory to the file and back.
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let mut written = j
        .append("central", (0..300).map(big_msg).collect(), None)
        .unwrap();
    let mut taken = j.take(&lane("ship1"), 50).unwrap();
    written.extend(
        j.append("central", (300..310).map(msg).collect(), None)
            .unwrap(),
    );
    let kept = &j.lanes[&lane("ship1").to_string()].hot;
    assert_eq!(
        kept.back().map(|e| e.seq),
        Some(310),
        "the last ones kept again"
    );
    taken.extend(take_all(&mut j, "ship1"));
    assert_eq!(taken, written);
    assert_eq!(j.hot_bytes, 0);
    assert_eq!(j.lanes[&lane("ship1").to_string()].hot.capacity(), 0);
}

#[test]
fn records_written_together_are_taken_in_any_counts_in_order_and_a_bad_one_among_them_alone_is_passed_over(
) {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    // One write: five records side by side, the third unreadable.
    let mut buf = Vec::new();
    for seq in 1..=5u64 {
        let envelope = if seq == 3 {
            b"{not json".to_vec()
        } else {
            let mut j = Journal::open(tempfile::tempdir().unwrap().path())
                .unwrap()
                .0;
            let mut e = j
                .write("central", vec![msg(seq as usize)], None)
                .unwrap()
                .entries;
            e.remove(0).envelope.encode()
        };
        encode_accepted(seq, envelope, &mut buf);
    }
    encode(
        &Record::Checkpoint {
            next_seq: 6,
            synced: None,
        },
        &mut buf,
    );
    j.file.append(&buf).unwrap();
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.pending, 5);
    let lane = lane("ship1");
    let first = j.take(&lane, 2).unwrap();
    assert_eq!(seqs(&first), [1, 2]);
    let rest = j.take(&lane, 10).unwrap();
    assert_eq!(seqs(&rest), [4, 5], "the third passed over");
    assert_eq!(data(&rest), ["message 4", "message 5"]);
    assert!(j.take(&lane, 10).unwrap().is_empty());
    let unreadable = j.take_unreadable();
    assert_eq!(unreadable.len(), 1);
    assert!(unreadable[0].contains("record 3"), "{unreadable:?}");
}

#[test]
fn reserved_space_is_the_end_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = Journal::path(dir.path());
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    for i in 0..3 {
        j.append("central", vec![msg(i)], None).unwrap();
    }
    let end = j.size();
    drop(j);
    assert!(fs::metadata(&path).unwrap().len() > end + PREALLOCATE / 2);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert!(r.cut.is_none(), "{:?}", r.cut);
    assert_eq!((r.pending, j.size()), (3, end));
    // New records go at the end of the records, not after the reserved space.
    j.append("central", vec![msg(3)], None).unwrap();
    let end = j.size();
    drop(j);
    // Reserved space too short for a header is the end too.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(end + 3).unwrap();
    drop(f);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert!(r.cut.is_none(), "{:?}", r.cut);
    assert_eq!(
        data(&take_all(&mut j, "ship1")),
        ["message 0", "message 1", "message 2", "message 3"]
    );
}

#[test]
fn a_batch_cut_before_its_commit_record_is_dropped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append("central", vec![msg(0)], Some(("inmsg.taking-1", 10)))
        .unwrap();
    j.append(
        "central",
        vec![msg(1), msg(2)],
        Some(("inmsg.taking-1", 30)),
    )
    .unwrap();
    drop(j);
    // Cut the second batch just before its commit records (its inbox offset, a
    // checkpoint).
    let path = Journal::path(dir.path());
    let bytes = fs::read(&path).unwrap();
    let records = decode(&bytes).records;
    let last = records[records.len() - 2].0;
    assert!(matches!(
        records[records.len() - 2].2,
        Record::InboxOffset { .. }
    ));
    fs::write(&path, &bytes[..last as usize]).unwrap();
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(data(&take_all(&mut j, "ship1")), ["message 0"]);
    assert_eq!(r.inbox_offsets.get("inmsg.taking-1"), Some(&10));
    assert!(r.cut.unwrap().contains("dropped 2 message(s)"));
    // Batches without an inbox file commit with a checkpoint.
    let e = j.append("central", vec![msg(3)], None).unwrap();
    assert!(e[0].seq > 3, "sequence numbers are never reused");
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(data(&take_all(&mut j, "ship1")), ["message 0", "message 3"]);
    assert!(r.cut.is_none());
}

/// Flips a bit of byte `at` of the journal in `dir` (a bad sector).
fn flip_bit_at(dir: &Path, at: u64) {
    let path = Journal::path(dir);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut byte, at).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[byte[0] ^ 0x40], at).unwrap();
}

#[test]
fn a_flipped_bit_in_synced_records_loses_that_record_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    for i in 0..3 {
        j.append("central", vec![msg(i)], None).unwrap();
    }
    drop(j);
    let path = Journal::path(dir.path());
    let accepted = offsets_of(&path, |r| matches!(r, Record::Accepted { .. }));
    flip_bit_at(dir.path(), accepted[1].0 + 40); // inside the second message's body
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    // The third batch's checkpoint says the second was synced when it was written: the
    // disk's damage, passed over; before session 34, the third was cut with it.
    assert_eq!(data(&take_all(&mut j, "ship1")), ["message 0", "message 2"]);
    assert!(r.cut.is_none(), "{:?}", r.cut);
    assert_eq!(r.passed_over.len(), 1);
    assert!(
        r.passed_over[0].contains("checksum mismatch") && r.passed_over[0].contains("lost"),
        "{:?}",
        r.passed_over
    );
    // Left behind once the inbox has put aside any file whose offset the damage held:
    // the file holds no damage now.
    j.inbox_checked();
    j.maintain().unwrap();
    j.append("central", vec![msg(3)], None).unwrap();
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert!(r.passed_over.is_empty() && r.cut.is_none(), "{r:?}");
    assert_eq!(
        data(&take_all(&mut j, "ship1")),
        ["message 0", "message 2", "message 3"]
    );
}

#[test]
fn damage_no_checkpoint_says_was_synced_is_cut_as_a_torn_tail_is() {
    // Two batches written before either was synced (the inbox and the control socket at
    // once): the second's checkpoint cannot vouch for the first, whose damage may be a
    // power cut's (the second's page reached the disk, the first's not).
    let written = |claim_after: bool| {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append("central", vec![msg(0)], None).unwrap();
        let one = j.write("central", vec![msg(1)], None).unwrap();
        let two = j.write("central", vec![msg(2)], None).unwrap();
        let synced = two.sync();
        j.commit(&one, Ok(Duration::ZERO)).unwrap();
        j.commit(&two, synced).unwrap();
        if claim_after {
            // The supervisor's tick: a checkpoint saying both are durable.
            assert!(j.needs_upkeep(), "a checkpoint is due");
            j.sync().unwrap();
            assert!(!j.needs_upkeep());
        }
        drop(j);
        let accepted = offsets_of(&Journal::path(dir.path()), |r| {
            matches!(r, Record::Accepted { .. })
        });
        flip_bit_at(dir.path(), accepted[1].0 + 40);
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        (data(&take_all(&mut j, "ship1")), r)
    };
    let (kept, r) = written(false);
    assert_eq!(kept, ["message 0"]);
    let cut = r.cut.expect("cut");
    assert!(
        cut.contains("no checkpoint after it says it was synced"),
        "{cut}"
    );
    assert!(r.passed_over.is_empty());
    // With the tick's checkpoint after them, the same damage is the disk's.
    let (kept, r) = written(true);
    assert_eq!(kept, ["message 0", "message 2"]);
    assert!(r.cut.is_none(), "{:?}", r.cut);
    assert_eq!(r.passed_over.len(), 1, "{:?}", r.passed_over);
}

#[test]
fn a_zeroed_page_in_synced_records_is_passed_over_not_taken_for_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    for i in 0..60 {
        j.append("central", vec![msg(i)], None).unwrap();
    }
    drop(j);
    let path = Journal::path(dir.path());
    let accepted = offsets_of(&path, |r| matches!(r, Record::Accepted { .. }));
    // Zeros from a record's start on: read as the end of the records before.
    let page = accepted[15].0;
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0; 4096], page).unwrap();
    drop(f);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    let kept = data(&take_all(&mut j, "ship1"));
    // Only the messages whose records the page held are gone; before, the journal ended
    // there, silently, and the 40-odd after it with it.
    let intact = (0..60)
        .filter(|&i| {
            let (at, len) = accepted[i];
            at + u64::from(len) <= page || at >= page + 4096
        })
        .map(|i| format!("message {i}"));
    assert_eq!(kept, intact.collect::<Vec<_>>());
    assert!(r.cut.is_none(), "{:?}", r.cut);
    assert_eq!(r.passed_over.len(), 1, "{:?}", r.passed_over);
    assert!(r.passed_over[0].contains("zeros"), "{:?}", r.passed_over);
}

#[test]
fn a_journal_whose_checkpoints_say_nothing_is_cut_at_its_first_damage() {
    // As journals before session 34 were written.
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path()).unwrap();
    drop(j);
    let mut buf = Vec::new();
    let mut accepted = Vec::new();
    for seq in 1..=3 {
        let envelope = Envelope {
            id: format!("central-1-{seq}"),
            from_node: "central".into(),
            accepted: 1,
            reply_ticket: None,
            grant: None,
            message: msg(seq as usize),
        }
        .encode();
        accepted.push(buf.len() as u64);
        encode_accepted(seq, envelope, &mut buf);
        let (next_seq, synced) = (seq + 1, None);
        encode(&Record::Checkpoint { next_seq, synced }, &mut buf);
    }
    fs::write(Journal::path(dir.path()), &buf).unwrap();
    flip_bit_at(dir.path(), accepted[1] + 40);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(data(&take_all(&mut j, "ship1")), ["message 1"]);
    assert!(r.cut.is_some() && r.passed_over.is_empty(), "{r:?}");
}

#[test]
fn compaction_keeps_the_journal_small() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    for round in 0..200 {
        j.append("central", (0..50).map(msg).collect(), None)
            .unwrap();
        // All but the newest message finish; one stays waiting each round.
        let taken = j.take(&lane("ship1"), 49).unwrap();
        for e in &taken {
            j.finish(&lane("ship1"), &[e.seq]).unwrap();
        }
        j.maintain().unwrap(); // the supervisor's tick
        assert!(
            j.size() < 2 * COMPACT_MIN_BYTES,
            "round {round}: {} bytes",
            j.size()
        );
    }
    assert_eq!(j.pending_count(), 200);
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.pending, 200);
    let rest = take_all(&mut j, "ship1");
    assert_eq!(rest.len(), 200);
    assert!(rest.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[test]
fn upkeep_is_asked_for_only_while_some_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    assert!(!j.needs_upkeep(), "a journal just opened is durable");
    let big = |i| Message {
        data: vec!["x".repeat(4000), format!("{i}")],
        ..msg(i)
    };
    j.append("central", (0..400).map(big).collect(), None)
        .unwrap();
    assert!(
        j.needs_upkeep(),
        "a checkpoint saying they are synced is due"
    );
    j.sync().unwrap();
    assert!(!j.needs_upkeep());
    let taken = take_all(&mut j, "ship1");
    j.finish(&lane("ship1"), &seqs(&taken[..1])).unwrap();
    assert!(j.needs_upkeep(), "a finish is not durable yet");
    j.sync().unwrap();
    assert!(!j.needs_upkeep());
    // Finished records are now most of the file: a compaction is due.
    j.finish(&lane("ship1"), &seqs(&taken[1..])).unwrap();
    j.sync().unwrap();
    assert!(j.needs_upkeep(), "a compaction is due");
    j.maintain().unwrap();
    assert!(!j.needs_upkeep(), "compacted");
}

#[test]
fn compaction_with_messages_in_flight_keeps_them_and_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let all = j
        .append("central", (0..2000).map(msg).collect(), None)
        .unwrap();
    let in_flight = j.take(&lane("ship1"), 10).unwrap();
    j.compact().unwrap();
    j.finish(&lane("ship1"), &seqs(&in_flight)).unwrap();
    let rest = take_all(&mut j, "ship1");
    assert_eq!(seqs(&rest), seqs(&all[10..]));
    j.finish(&lane("ship1"), &seqs(&rest[..5])).unwrap();
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.pending, 2000 - 15);
    assert_eq!(seqs(&take_all(&mut j, "ship1")), seqs(&all[15..]));
}

#[test]
fn a_journal_from_before_lanes_is_read_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let envelope = |i: usize| Envelope {
        id: format!("central-1-{i}"),
        from_node: "central".into(),
        accepted: 1,
        reply_ticket: None,
        grant: None,
        message: msg_to(if i == 2 { "ship2" } else { "ship1" }, i),
    };
    let mut buf = Vec::new();
    for i in 1..=3 {
        encode(
            &Record::LegacyAccepted {
                seq: i as u64,
                envelope: envelope(i).encode(),
            },
            &mut buf,
        );
    }
    encode(
        &Record::Checkpoint {
            next_seq: 4,
            synced: None,
        },
        &mut buf,
    );
    encode(&Record::LegacyDone { seq: 1 }, &mut buf);
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(Journal::path(dir.path()), &buf).unwrap();
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(
        (r.pending, r.lanes.clone()),
        (2, vec![lane("ship1"), lane("ship2")])
    );
    let one = take_all(&mut j, "ship1");
    assert_eq!(
        one.iter()
            .map(|e| (*e.envelope).clone())
            .collect::<Vec<_>>(),
        [envelope(3)]
    );
    assert_eq!(*take_all(&mut j, "ship2")[0].envelope, envelope(2));
    let rewritten = decode(&fs::read(Journal::path(dir.path())).unwrap());
    assert!(rewritten
        .records
        .iter()
        .all(|(_, _, r)| !matches!(r, Record::LegacyAccepted { .. } | Record::LegacyDone { .. })));
    let next = j.append("central", vec![msg(9)], None).unwrap();
    assert_eq!(next[0].seq, 4);
}

#[test]
fn inbox_offsets_survive_restart_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append("central", vec![msg(0)], Some(("inmsg.taking-5", 120)))
        .unwrap();
    j.compact().unwrap();
    drop(j);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.inbox_offsets.get("inmsg.taking-5"), Some(&120));
    j.forget_inbox("inmsg.taking-5");
    j.compact().unwrap();
    drop(j);
    let (_, r) = Journal::open(dir.path()).unwrap();
    assert!(r.inbox_offsets.is_empty());
}

#[test]
fn a_record_that_cannot_be_read_holds_back_only_itself_and_those_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = Arc::new(std::sync::Mutex::new(None));
    let storage = Arc::new(BadSector {
        bad: bad.clone(),
        ..Default::default()
    });
    let (mut j, _) = Journal::open_on(storage.clone(), dir.path()).unwrap();
    // Written together: five records side by side, read at once when all is well (after a
    // restart: this run's own would be handed out as written, not read).
    j.append("central", (1..=5).map(msg).collect(), None)
        .unwrap();
    drop(j);
    let (mut j, _) = Journal::open_on(storage, dir.path()).unwrap();
    let lane = lane("ship1");
    let third = j.lanes[&lane.to_string()].waiting.window[2].1;
    *bad.lock().unwrap() = Some(third.offset + 20);
    let before = j.take(&lane, 10).unwrap();
    assert_eq!(
        data(&before),
        ["message 1", "message 2"],
        "those before it still go"
    );
    let err = j.take(&lane, 10).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    *bad.lock().unwrap() = None;
    let after = j.take(&lane, 10).unwrap();
    assert_eq!(data(&after), ["message 3", "message 4", "message 5"]);
}

#[test]
fn a_take_within_bytes_stops_there_from_memory_and_from_the_file_and_hands_out_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    // The first ones kept in memory, the rest past the lane's budget: read back.
    let written = j
        .append("central", (0..200).map(big_msg).collect(), None)
        .unwrap();
    let record = 4096 + 100;
    let mut taken = Vec::new();
    loop {
        let got = j.take_within(&lane("ship1"), 1000, 10 * record).unwrap();
        if got.is_empty() {
            break;
        }
        // At most a record past the bytes asked for: 10 of them, or 11 (4 KB and a bit each).
        assert!(got.len() <= 11, "{}", got.len());
        assert!(
            got.len() >= 10 || taken.len() + got.len() == 200,
            "{}",
            got.len()
        );
        taken.extend(got);
    }
    assert_eq!(taken, written);
    // Fewer bytes than one record: still one.
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append("central", (0..3).map(big_msg).collect(), None)
        .unwrap();
    assert_eq!(j.take_within(&lane("ship1"), 10, 1).unwrap().len(), 1);
    assert_eq!(j.take(&lane("ship1"), 10).unwrap().len(), 2);
    // The same from the file (after a restart nothing is kept in memory).
    drop(j);
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let one = j.take_within(&lane("ship1"), 10, 1).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(j.take(&lane("ship1"), 10).unwrap().len(), 2);
}

/// Where the records `pred` picks are in the file at `path`: offset and length.
fn offsets_of(path: &Path, pred: impl Fn(&Record) -> bool) -> Vec<(u64, u32)> {
    let bytes = fs::read(path).unwrap();
    decode(&bytes)
        .records
        .iter()
        .filter(|(_, _, r)| pred(r))
        .map(|(o, l, _)| (*o, *l))
        .collect()
}

#[test]
fn a_refill_that_meets_damage_hands_out_what_is_before_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = Journal::path(dir.path());
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    let n = 3 * WINDOW;
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        j.append("central", batch.iter().map(|&i| msg(i)).collect(), None)
            .unwrap();
    }
    drop(j);
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    // A bit flipped far past the lane's window, after it was opened (a bad sector).
    let accepted = offsets_of(&path, |r| matches!(r, Record::Accepted { .. }));
    let (at, _) = accepted[n - 10];
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xee], at + 30).unwrap();
    drop(f);
    // The publisher's takes: those that fail at the damage hand out nothing, and none
    // hands out again what an earlier one did (the window kept what a failed refill had
    // read into it, and read it in again at the next).
    let mut handed: Vec<u64> = Vec::new();
    let mut failed = 0;
    for _ in 0..40 {
        match j.take(&lane("ship1"), crate::message::MAX_BATCH) {
            Ok(e) => handed.extend(seqs(&e)),
            Err(_) => failed += 1,
        }
    }
    let mut distinct = handed.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(handed.len(), distinct.len(), "a message handed out twice");
    assert!(failed > 0, "the damage was met");
    // Every message before the damaged one goes out (the lane stopped at the first
    // failed refill, a window's worth never handed out).
    assert_eq!(handed.len(), n - 10);
    // Finishing what was handed out keeps the lane's counts right (they wrapped).
    j.finish(&lane("ship1"), &handed).unwrap();
    assert_eq!(j.lane_pending(&lane("ship1")), n - handed.len());
}

/// Writes zeros over bytes `from` to `to` of the journal in `dir` (a lost page).
fn zero_between(dir: &Path, from: u64, to: u64) {
    let path = Journal::path(dir);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0; (to - from) as usize], from).unwrap();
}

/// A batch written while another's fsync runs, before the tick's checkpoint: that one
/// cannot say it is durable, so a later one must (else a bad sector in it, years later,
/// is taken for a torn write, and the batch's other messages go too).
#[test]
fn a_batch_in_flight_at_the_ticks_checkpoint_is_vouched_for_later() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append("central", vec![msg(0)], None).unwrap();
    let one = j.write("central", vec![msg(1)], None).unwrap();
    let two = j.write("central", vec![msg(2), msg(3)], None).unwrap();
    let synced = one.sync();
    j.commit(&one, synced).unwrap();
    // The supervisor's tick, while two's fsync still runs (its fsync covers two too).
    j.sync().unwrap();
    let synced = two.sync();
    j.commit(&two, synced).unwrap();
    // Everything is durable; the agent idles, then shuts down cleanly.
    j.sync().unwrap();
    assert!(!j.needs_upkeep());
    drop(j);
    let accepted = offsets_of(&Journal::path(dir.path()), |r| {
        matches!(r, Record::Accepted { .. })
    });
    flip_bit_at(dir.path(), accepted[2].0 + 40); // message 2: a bad sector
    let (left, r) = left_for_ship1(dir.path());
    assert_eq!(left, ["message 0", "message 1", "message 3"], "{r:?}");
}

/// The last batch before a crash (synced by its own fsync, or by the open) is vouched for
/// by a checkpoint after the start, not only once another batch comes.
#[test]
fn the_last_batch_before_a_restart_is_vouched_for() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append("central", vec![msg(0)], None).unwrap();
    j.append("central", vec![msg(1), msg(2)], None).unwrap();
    drop(j); // killed before the supervisor's tick
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.sync().unwrap(); // ticks, and a clean shutdown: nothing is written
    drop(j);
    let accepted = offsets_of(&Journal::path(dir.path()), |r| {
        matches!(r, Record::Accepted { .. })
    });
    flip_bit_at(dir.path(), accepted[1].0 + 40); // message 1: a bad sector
    let (left, r) = left_for_ship1(dir.path());
    assert_eq!(left, ["message 0", "message 2"], "{r:?}");
}

/// A batch's inbox offset in damage passed over: the batch's messages are kept (the
/// checkpoint after it commits them), and the offset kept is an older one; read on from
/// there, the inbox would journal the batch's lines again, under new ids. So the file's
/// offset is not known, and the inbox puts the file aside (`tests/durability.rs`).
#[test]
fn an_inbox_offset_lost_in_damage_passed_over_is_not_known() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = ("inmsg.taking-1", "inmsg.taking-2");
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append("central", vec![msg(0)], Some((one, 10))).unwrap();
    j.append("central", vec![msg(1), msg(2)], Some((one, 30)))
        .unwrap();
    j.append("central", vec![msg(3)], Some((two, 10))).unwrap();
    j.sync().unwrap(); // the tick's checkpoint
    assert!(j.inbox_offset_known(one) && j.inbox_offset_known("inmsg.taking-3"));
    drop(j);
    let at = offsets_of(&Journal::path(dir.path()), |r| {
        matches!(r, Record::InboxOffset { offset: 30, .. })
    });
    flip_bit_at(dir.path(), at[0].0 + 12); // its offset's bytes: a bad sector
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.passed_over.len(), 1, "{r:?}");
    assert_eq!(r.inbox_offsets.get(one), Some(&10));
    assert_eq!(data(&take_all(&mut j, "ship1")).len(), 4);
    // Its offset may have been further on; a file whose offset came after the damage, and
    // one with none before it, are known as ever.
    assert!(!j.inbox_offset_known(one));
    assert!(!j.inbox_offset_known("inmsg.taking-3"));
    assert!(j.inbox_offset_known(two));
}

/// A DoneThrough kept past damage that held the newest messages, whose proving checkpoint
/// was then cut (a torn write after it): sequence numbers go on past it (taken from
/// Accepted records and checkpoints alone, the lane's next messages were numbered as
/// done already, and never handed out).
#[test]
fn sequence_numbers_never_fall_below_a_kept_done_through() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append("central", vec![msg_to("ship2", 0)], None).unwrap(); // seq 1
    j.append("central", vec![msg(1), msg(2)], None).unwrap(); // seqs 2, 3
    let t = take_all(&mut j, "ship1");
    j.finish(&lane("ship1"), &seqs(&t)).unwrap(); // DoneThrough ship1 3 (not synced)
    let t = take_all(&mut j, "ship2");
    j.finish(&lane("ship2"), &seqs(&t)).unwrap(); // DoneThrough ship2 1 (not synced)
                                                  // The tick writes its checkpoint (synced: through seq 3's batch); the power goes
                                                  // before its fsync.
    let ticket = j.sync_ticket().unwrap().unwrap();
    drop(ticket);
    drop(j);
    let path = Journal::path(dir.path());
    let accepted = offsets_of(&path, |r| matches!(r, Record::Accepted { .. }));
    let done = offsets_of(&path, |r| matches!(r, Record::DoneThrough { .. }));
    // The synced batch of seqs 2 and 3 is lost on the disk (bad flash: zeros)...
    zero_between(dir.path(), accepted[1].0, done[0].0);
    // ... and the unsynced ship2 finish never reached it, while the checkpoint after it
    // did (writeback order).
    zero_between(dir.path(), done[1].0, done[1].0 + u64::from(done[1].1));
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append("central", vec![msg(5)], None).unwrap();
    assert_eq!(
        data(&take_all(&mut j, "ship1")),
        ["message 5"],
        "next_seq {}",
        j.next_seq()
    );
}

/// A failed checkpoint append whose cut-back fails too leaves the journal unusable: the
/// supervisor's tick is told, and stops the agent (fail-stop).
#[test]
fn a_checkpoint_that_leaves_the_journal_unusable_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let disk = BadSector::default();
    let (mut j, _) = Journal::open_on(Arc::new(disk.clone()), dir.path()).unwrap();
    j.append("central", vec![msg(0)], None).unwrap();
    disk.full.store(true, std::sync::atomic::Ordering::SeqCst);
    let ticket = j.sync_ticket(); // the supervisor's tick
    assert!(j.unusable().is_some(), "the cut-back failed");
    assert!(
        ticket.is_err(),
        "the tick goes on with an unusable journal: {:?}",
        ticket.map(|t| t.is_some())
    );
}

/// A real bad sector reads as EIO, not as a flipped bit: passed over as other damage is
/// (the journal did not open at all: a restart loop).
#[test]
fn a_sector_that_cannot_be_read_loses_only_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    for i in 0..40 {
        j.append("central", vec![msg(i)], None).unwrap();
    }
    j.sync().unwrap();
    drop(j);
    let accepted = offsets_of(&Journal::path(dir.path()), |r| {
        matches!(r, Record::Accepted { .. })
    });
    let disk = BadSector::default();
    *disk.bad.lock().unwrap() = Some(accepted[20].0 + 40);
    let opened = Journal::open_on(Arc::new(disk), dir.path());
    let (mut j, r) = opened.expect("a bad sector does not stop the journal from opening");
    assert!(r.passed_over.len() == 1, "{r:?}");
    assert!(r.passed_over[0].contains("cannot read"), "{r:?}");
    // Lost: the messages whose records lie in the page around the sector (read a page at
    // a time), and no other.
    let page = (accepted[20].0 + 40) / 4096 * 4096;
    let intact = (0..40).filter(|&i| {
        let (at, len) = accepted[i];
        at + u64::from(len) <= page || at >= page + 4096
    });
    let intact: Vec<String> = intact.map(|i| format!("message {i}")).collect();
    assert!(intact.len() >= 20);
    assert_eq!(data(&take_all(&mut j, "ship1")), intact);
}

/// A lost stretch of zeros longer than the 1 MiB looked through for the next record (an
/// SD card's erase block is often 4 MiB) is passed over too.
#[test]
fn a_zeroed_stretch_longer_than_a_mib_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    for i in (0..1000).step_by(10) {
        j.append("central", (i..i + 10).map(big_msg).collect(), None)
            .unwrap();
    }
    j.sync().unwrap();
    drop(j);
    let accepted = offsets_of(&Journal::path(dir.path()), |r| {
        matches!(r, Record::Accepted { .. })
    });
    let (from, to) = (accepted[100].0, accepted[100].0 + (3 << 19)); // 1.5 MiB
    zero_between(dir.path(), from, to);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    let intact = (0..1000).filter(|&i| {
        let (at, len) = accepted[i];
        at + u64::from(len) <= from || at >= to
    });
    let intact: Vec<usize> = intact.collect();
    assert!(intact.len() > 500);
    assert_eq!(take_all(&mut j, "ship1").len(), intact.len(), "{r:?}");
    assert!(r.cut.is_none() && r.passed_over.len() == 1, "{r:?}");
}

/// What the damage said of an inbox file's offset outlives a restart until the inbox has
/// acted on it (compacted away at once, a restart before the inbox looked read the file on
/// from the older offset: its lines journaled, and run, twice).
#[test]
fn an_inbox_offset_the_damage_may_have_held_stays_unknown_until_the_inbox_has_looked() {
    let dir = tempfile::tempdir().unwrap();
    let one = "inmsg.taking-1";
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append("central", vec![msg(0)], Some((one, 10))).unwrap();
    j.append("central", vec![msg(1), msg(2)], Some((one, 30)))
        .unwrap();
    j.append("central", vec![msg(3)], None).unwrap();
    j.sync().unwrap();
    drop(j);
    let at = offsets_of(&Journal::path(dir.path()), |r| {
        matches!(r, Record::InboxOffset { offset: 30, .. })
    });
    flip_bit_at(dir.path(), at[0].0 + 12);
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.passed_over.len(), 1);
    assert!(!j.inbox_offset_known(one));
    j.maintain().unwrap(); // the supervisor's tick: no compaction yet
    drop(j); // stopped before the inbox looked at its files
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.inbox_offsets.get(one), Some(&10));
    assert!(!j.inbox_offset_known(one), "forgotten at the restart");
    // The inbox has put its files aside: the damage is compacted away.
    j.inbox_checked();
    assert!(j.needs_upkeep());
    j.maintain().unwrap();
    drop(j);
    let (j, r) = Journal::open(dir.path()).unwrap();
    assert!(
        r.passed_over.is_empty() && j.inbox_offset_known(one),
        "{r:?}"
    );
}

/// Passes after the first pass over only the damage it proved, and stop at any other (a
/// page that read then, and not now: passed over as well, it was left behind by the
/// compaction, unsaid).
#[test]
fn later_passes_pass_over_only_the_damage_the_first_proved() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    for i in 0..20 {
        j.append("central", vec![msg(i)], None).unwrap();
    }
    drop(j);
    let path = Journal::path(dir.path());
    let accepted = offsets_of(&path, |r| matches!(r, Record::Accepted { .. }));
    flip_bit_at(dir.path(), accepted[3].0 + 40);
    flip_bit_at(dir.path(), accepted[12].0 + 40);
    let file = Disk.open(&path).unwrap();
    let end = file.size().unwrap();
    let mut all = Records::new(&*file, 0, end).passing_below(u64::MAX);
    assert_eq!(all.by_ref().count(), 38, "every record but the two damaged");
    let stretches: Vec<(u64, u64)> = all.passed.iter().map(|p| (p.from, p.to)).collect();
    assert_eq!(stretches.len(), 2);
    // Only the first is known: the reader stops at the second.
    let mut known = Records::new(&*file, 0, end).passing_within(&stretches[..1]);
    let read = known.by_ref().count();
    assert_eq!(known.passed.len(), 1);
    assert!(known.corruption.is_some(), "passed over the second too");
    // The twelve batches before it (a message and a checkpoint each), but the first damage.
    assert_eq!(read, 2 * 12 - 1);
}

/// A synced batch whose commit record lies in damage a checkpoint proves the disk's,
/// followed (after a finish) by a torn write that is cut: the second pass, which reads up
/// to the torn write, took the synced batch for one cut before its commit, and dropped it
/// (session 35's review).
#[test]
fn a_synced_batch_whose_commit_lies_in_proven_damage_survives_a_torn_write_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append("central", vec![msg_to("ship2", 0)], None).unwrap(); // seq 1
    j.append("central", vec![msg(1), msg(2)], None).unwrap(); // seqs 2, 3: synced
    let t = take_all(&mut j, "ship2");
    // A DoneThrough, not synced.
    j.finish(&lane("ship2"), &seqs(&t)).unwrap();
    // The next batch: the power goes during its fsync.
    let _torn = j.write("central", vec![msg(3), msg(4)], None).unwrap();
    drop(j);
    let path = Journal::path(dir.path());
    let checkpoints = offsets_of(&path, |r| matches!(r, Record::Checkpoint { .. }));
    let accepted = offsets_of(&path, |r| matches!(r, Record::Accepted { .. }));
    assert_eq!((checkpoints.len(), accepted.len()), (3, 5));
    // The synced batch's commit record: a bad sector.
    flip_bit_at(dir.path(), checkpoints[1].0 + 10);
    // The torn batch's first record never reached the disk; its checkpoint did.
    zero_between(
        dir.path(),
        accepted[3].0,
        accepted[3].0 + u64::from(accepted[3].1),
    );
    let (left, r) = left_for_ship1(dir.path());
    assert_eq!(left, ["message 1", "message 2"], "{r:?}");
}

/// Zeros passed over a MiB at a time, and the next record begins on the last byte of a
/// zero window (its length's low byte zero: a length that is a multiple of 256).
/// Looked for from the next window's first byte that is not zero, three bytes back, but
/// only within that window: the record was missed, and lost with the zeros (session 35's
/// review).
#[test]
fn a_record_right_after_a_mib_of_zeros_is_not_missed() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path()).unwrap();
    drop(j);
    let accepted = |seq: u64, pad: usize| {
        let mut m = msg(seq as usize);
        m.data[0] = format!("message {seq}{}", "x".repeat(pad));
        let envelope = Envelope::sent("central", format!("central-1-{seq}"), m).encode();
        let mut buf = Vec::new();
        encode_accepted(seq, envelope, &mut buf);
        buf
    };
    let mut buf = accepted(1, 0);
    encode(
        &Record::Checkpoint {
            next_seq: 2,
            synced: Some(0),
        },
        &mut buf,
    );
    // Where the records were lost: a MiB of zeros, from a record's start...
    let at = buf.len();
    buf.resize(at + (1 << 20), 0);
    // ... to a record whose length is a multiple of 256.
    let second = (0..512)
        .map(|pad| accepted(2, pad))
        .find(|r| u32::from_le_bytes(r[0..4].try_into().unwrap()) % 256 == 0)
        .unwrap();
    assert_eq!(second[0], 0);
    buf.extend_from_slice(&second);
    let synced = Some(buf.len() as u64);
    encode(
        &Record::Checkpoint {
            next_seq: 3,
            synced,
        },
        &mut buf,
    );
    fs::write(Journal::path(dir.path()), &buf).unwrap();
    let (mut j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.passed_over.len(), 1, "{r:?}");
    assert_eq!(data(&take_all(&mut j, "ship1")).len(), 2, "{r:?}");
}
