//! The signature check and the key-set parser, on any bytes: what a hostile publisher
//! controls (the three signature headers and the payload) never panics the check, and
//! never passes it. The receiver trusts one key for "central", as a real node does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;
use steward::keys::{Identity, KeySet, Trusted, Verdict, KEY, SENT, SIG};

fn trusted() -> &'static Trusted {
    static TRUSTED: OnceLock<Trusted> = OnceLock::new();
    TRUSTED.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("steward-fuzz-{}", std::process::id()));
        let central = Identity::generate(&dir.join("central"), true).unwrap();
        steward::keys::trust(&dir, "central", central.public_key()).unwrap();
        Trusted::open(&dir, "ship1", "UAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    // sent \n key \n sig \n payload
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let mut headers = nats::HeaderMap::new();
    for name in [SENT, KEY, SIG] {
        if let Some(p) = parts.next() {
            headers.insert(name, String::from_utf8_lossy(p).into_owned());
        }
    }
    let payload = parts.next().unwrap_or_default();
    let verdict = trusted().verify("central", Some(&headers), payload, Some(Duration::from_secs(300)));
    assert_ne!(verdict, Verdict::Verified, "a forged signature passed");
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(set) = KeySet::parse(text) {
            assert_eq!(KeySet::parse(&set.to_json()).unwrap(), set);
        }
    }
});
