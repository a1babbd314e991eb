//! The attacker's tools: a plain NATS client on the same broker, holding at most the keys
//! it was given (none, by default). It can publish anything anywhere, read every subject
//! (the broker here is open), capture real messages and replay or alter them.

use std::time::Duration;

/// A wire message as a node would publish it.
pub fn envelope(
    id: &str,
    from: &str,
    to: &str,
    kind: &str,
    method: &str,
    data: &[&str],
) -> Vec<u8> {
    serde_json::json!({
        "id": id, "fromNode": from, "accepted": steward::files::unix_millis(), "toNode": to,
        "data": data, "commandOrEvent": kind, "method": method,
    })
    .to_string()
    .into_bytes()
}

/// Headers signing `payload` for `subject` (answered on `reply`) with the test key of
/// `signer`: the intruder's own, or a fleet member's whose key was stolen.
pub fn signed_by(
    signer: &str,
    subject: &str,
    reply: Option<&str>,
    payload: &[u8],
) -> nats::HeaderMap {
    signed_covering(
        signer,
        subject,
        reply,
        payload,
        steward::keys::Covers::Payload,
    )
}

/// As [`signed_by`], the signature covering what `covers` says of the payload (its
/// bytes, or their digest).
pub fn signed_covering(
    signer: &str,
    subject: &str,
    reply: Option<&str>,
    payload: &[u8],
    covers: steward::keys::Covers,
) -> nats::HeaderMap {
    steward::keys::Identity::from_seed(&super::seed_of(signer))
        .unwrap()
        .seal_covering(
            steward::keys::Scope::request(subject, reply),
            payload,
            covers,
        )
        .headers
}

pub struct Raw {
    pub conn: nats::Connection,
    /// Everything published on any inbox: whatever a node answers, to anyone.
    answers: nats::Subscription,
}

impl Raw {
    pub fn connect(address: &str) -> Raw {
        let conn = nats::connect(address).unwrap();
        let answers = conn.subscribe("_INBOX.>").unwrap();
        conn.flush().unwrap();
        Raw { conn, answers }
    }

    /// Publishes a message, with a reply subject if given.
    pub fn send(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&nats::HeaderMap>,
        payload: &[u8],
    ) {
        self.conn
            .publish_with_reply_or_headers(subject, reply, headers, payload)
            .unwrap();
        self.conn.flush().unwrap();
    }

    /// Answers the captured `request` with `reply`, signed with the test key of `signer`
    /// over the request's signature, as that node would answer it.
    pub fn answer_as(&self, signer: &str, request: &nats::Message, reply: &serde_json::Value) {
        let to = request
            .reply
            .as_deref()
            .expect("a request with a reply subject");
        let request_sig = request
            .headers
            .as_ref()
            .and_then(|h| h.get(steward::keys::SIG))
            .expect("a signed request");
        let payload = serde_json::to_vec(reply).unwrap();
        let sealed = steward::keys::Identity::from_seed(&super::seed_of(signer))
            .unwrap()
            .seal_covering(
                steward::keys::Scope::reply(to, request_sig),
                &payload,
                steward::keys::Covers::Payload,
            );
        self.send(to, None, Some(&sealed.headers), &payload);
    }

    /// Publishes a captured message again, exactly as it was.
    pub fn replay(&self, m: &nats::Message) {
        self.send(&m.subject, m.reply.as_deref(), m.headers.as_ref(), &m.data);
    }

    /// Sends a request and returns the answer on `reply` within `wait`, if any.
    pub fn ask(
        &self,
        subject: &str,
        reply: &str,
        headers: Option<&nats::HeaderMap>,
        payload: &[u8],
        wait: Duration,
    ) -> Option<nats::Message> {
        let sub = self.conn.subscribe(reply).unwrap();
        self.send(subject, Some(reply), headers, payload);
        sub.next_timeout(wait).ok()
    }

    /// The answers published since the last call on inboxes starting with `prefix`; see
    /// [`Raw::answers_where`].
    pub fn answers_seen(&self, prefix: &str) -> Vec<nats::Message> {
        self.answers_where(|s| s.starts_with(prefix))
    }

    /// The answers published since the last call on inboxes `pick` chooses. Complete once
    /// every node that could have answered is done handling (`Node::wait_idle`): a node
    /// flushes each answer to the broker, and whatever the broker had for this client before
    /// this call's PING is in by its PONG.
    pub fn answers_where(&self, pick: impl Fn(&str) -> bool) -> Vec<nats::Message> {
        self.conn.flush().unwrap();
        let mut seen = Vec::new();
        while let Some(m) = self.answers.try_next() {
            if pick(&m.subject) {
                seen.push(m);
            }
        }
        seen
    }

    /// Captures the next message on `subject` (a real node's, to replay or alter).
    pub fn spy(&self, subject: &str) -> nats::Subscription {
        let sub = self.conn.subscribe(subject).unwrap();
        self.conn.flush().unwrap();
        sub
    }
}
