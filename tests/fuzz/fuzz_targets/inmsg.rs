//! The inmsg.txt parser, on any bytes: never panics, accounts for every byte, and every
//! message it accepts is one it would accept again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use steward::message::{parse_input, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let at_end = flags & 1 == 1;
    let parsed = parse_input(text, 1, at_end, &steward::methods::kind_refusal);
    assert!(parsed.consumed <= text.len());
    if at_end {
        assert_eq!(
            parsed.consumed,
            text.len(),
            "at the end every byte is taken or rejected"
        );
    }
    for m in &parsed.messages {
        let v = serde_json::to_value(m).unwrap();
        // One destination each by now (`toNodes` was expanded).
        let again = Message::from_value(&v, &steward::methods::kind_refusal).unwrap();
        assert_eq!(again, [m.clone()]);
    }
});
