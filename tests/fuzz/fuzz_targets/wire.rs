//! Everything decoded from the broker or from disk, on any bytes: messages, batches of
//! messages, replies, subjects and journal records. Never panics; what decodes re-encodes
//! to the same thing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use steward::journal::record::{decode, encode};
use steward::message::{decode_batch, encode_batch, Envelope, Reply};
use steward::subject::Subject;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Envelope::decode(data) {
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }
    if let Ok(r) = Reply::decode(data) {
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
    }
    if let Ok(batch) = decode_batch(data) {
        assert!(!batch.is_empty() && batch.len() <= steward::message::MAX_BATCH);
        assert_eq!(decode_batch(&encode_batch(&batch)).unwrap(), batch);
    }
    if let Ok(replies) = Reply::decode_batch(data) {
        assert_eq!(Reply::decode_batch(&Reply::encode_batch(&replies)).unwrap(), replies);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(subject) = Subject::parse(s) {
            assert_eq!(subject.to_string(), s);
        }
    }
    let d = decode(data);
    assert!(d.valid_len as usize <= data.len());
    let mut again = Vec::new();
    for (_, _, record) in &d.records {
        encode(record, &mut again);
    }
    assert_eq!(
        &again[..],
        &data[..d.valid_len as usize],
        "records re-encode byte for byte"
    );
});
