//! The receiver's whole decision ([`steward::admission::admit`]) on any bytes: subject,
//! reply subject, the four signature headers, the digest header (when given) and the
//! payload, for any method this build serves. The receiver (ship1) trusts one key,
//! central's, which the fuzzer does not have: nothing it makes up is ever admitted, or even
//! answered. With the first byte odd, the input is signed with central's real key instead
//! (over the payload, or with the first byte's second bit over its SHA-256 digest), to
//! reach past the signature: then whatever is admitted is what central may send ship1,
//! answered only on central's inbox; only a batch is taken signed over its digest, and only
//! with its digest header as signed (the input may take it away, change it or give it
//! twice); and the very same signed message a second time is refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;
use steward::admission::{admit, Policy, Refused, Served};
use steward::config::Allow;
use steward::keys::{ClockCheck, Covers, Identity, Scope, Trusted, DIGEST, KEY, SENT, SEQ, SIG};

struct World {
    trusted: Trusted,
    central: Identity,
    allow: Vec<Allow>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("steward-fuzz-{}", std::process::id()));
        let central = Identity::generate(&dir.join("central"), true).unwrap();
        steward::keys::trust(&dir, "central", central.public_key()).unwrap();
        let me = Identity::generate(&dir.join("me"), true).unwrap();
        World {
            trusted: Trusted::open(&dir, "ship1", me.public_key()).unwrap(),
            central,
            allow: vec![Allow {
                from: "central".into(),
                methods: None,
            }],
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let w = world();
    let policy = Policy {
        node: "ship1",
        central: "central",
        allow_commands_from: &w.allow,
        replay_window: Duration::from_secs(300),
        clock_check: ClockCheck::Off,
    };
    let methods = steward::methods::registry();
    let method = &methods[(mode as usize >> 2) % methods.len()];
    let served = Served {
        method: method.name(),
        kinds: method.kinds(),
        senders: method.senders(),
    };
    // subject \n reply \n sent \n seq \n key \n sig \n digest \n payload
    let mut parts = rest.splitn(8, |b| *b == b'\n');
    let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (subject, reply) = (text(), text());
    let reply = (!reply.is_empty()).then_some(reply);
    let mut headers = nats::HeaderMap::new();
    for name in [SENT, SEQ, KEY, SIG] {
        headers.insert(name, text());
    }
    let digest = text();
    if !digest.is_empty() {
        headers.insert(DIGEST, digest.clone());
    }
    let payload = parts.next().unwrap_or_default();
    if mode & 1 == 0 {
        let verdict = admit(
            &policy,
            &w.trusted,
            served,
            &subject,
            reply.as_deref(),
            Some(&headers),
            payload,
        );
        assert!(
            matches!(verdict, Err(Refused::Silent(_))),
            "a forgery got past the gate: {verdict:?}"
        );
        return;
    }
    let covers = match mode & 2 {
        0 => Covers::Payload,
        _ => Covers::Digest,
    };
    let sealed =
        w.central
            .seal_covering(Scope::request(&subject, reply.as_deref()), payload, covers);
    // The digest header of a real signature tampered with, as the input says: "" leaves
    // it, "-" takes it away, "+x" gives it a second time, anything else replaces it.
    let mut headers = sealed.headers.clone();
    match digest.as_str() {
        "" => {}
        "-" => {
            headers = nats::HeaderMap::new();
            for name in [SENT, SEQ, KEY, SIG] {
                if let Some(v) = sealed.headers.get(name) {
                    headers.insert(name, v.clone());
                }
            }
        }
        twice if twice.starts_with('+') => {
            headers.append(DIGEST, &twice[1..]);
        }
        other => {
            headers.insert(DIGEST, other);
        }
    }
    let delivered = headers.get(DIGEST).cloned();
    let decide = || {
        admit(
            &policy,
            &w.trusted,
            served,
            &subject,
            reply.as_deref(),
            Some(&headers),
            payload,
        )
    };
    let admitted = match decide() {
        Ok(a) => a,
        Err(Refused::Answered { admitted, .. }) => *admitted,
        Err(Refused::Silent(_)) => return,
    };
    assert_eq!(admitted.from, "central");
    assert!(
        admitted.batch || covers == Covers::Payload,
        "a single message was taken signed over its digest"
    );
    assert_eq!(
        admitted.signed.covers, covers,
        "answered as signed otherwise"
    );
    assert_eq!(
        delivered.as_deref() == Some("sha256"),
        covers == Covers::Digest,
        "taken with its digest header tampered with: {delivered:?}"
    );
    assert!(admitted.envelopes.iter().all(|e| e.from_node == "central"
        && e.message.to_node == "ship1"
        && e.message.method == served.method
        && served.kinds.contains(&e.message.kind)));
    if let Some(to) = &admitted.reply_to {
        assert!(to.starts_with("_INBOX.central."), "answered on {to}");
    }
    assert!(
        matches!(decide(), Err(Refused::Silent(r)) if r.why.contains("replay")),
        "the same signed message was taken twice"
    );
});
