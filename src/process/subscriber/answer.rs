//! The answer to an ACK kind, whether it ran or was refused (a verified sender that may not
//! call the method): its replies in the request's form (one reply, or a batch's), signed
//! over the request's own signature as the request was signed, sent on the sender's inbox;
//! outputs trimmed, the long ones first, where the whole would exceed the broker's payload
//! limit.

use crate::admission::Admitted;
use crate::message::Reply;
use crate::methods::Method;
use crate::node::Node;

/// Sends the replies if the sender asked for an answer (ACK kinds), on its own inbox,
/// signed over the request's signature; in the request's form (one reply, or a batch's,
/// which says how many messages of `method` this node takes in one batch), trimming output
/// that would exceed the broker's payload limit.
pub(super) fn answer(
    method: &dyn Method,
    node: &Node,
    conn: &nats::Connection,
    a: &Admitted,
    replies: &[Reply],
) {
    let mut replies = replies.to_vec();
    if let Some(bytes) = fit(method, conn, a, &mut replies) {
        send(node, a, &bytes, &replies[0].id);
    }
}

/// Trims the replies' outputs, if need be, to what one answer may carry (the broker's
/// payload limit), whether or not the sender asked for one: what is recorded for a retry
/// is what was (or would have been) sent, never more. Returns the answer to send, if the
/// sender asked for one (ACK kinds).
pub(super) fn fit(
    method: &dyn Method,
    conn: &nats::Connection,
    a: &Admitted,
    replies: &mut Vec<Reply>,
) -> Option<Vec<u8>> {
    // No answer, and surely within the limit however the outputs are escaped: nothing to
    // encode (a NACK kind's batch of events).
    let most = replies
        .iter()
        .map(|r| r.output.len().saturating_mul(6).saturating_add(1024))
        .fold(4096usize, usize::saturating_add);
    // The broker's limit counts the headers too (the signature).
    let max = match conn.max_payload() {
        0 => 0,
        max => max.saturating_sub(crate::broker::HEADER_ROOM).max(1),
    };
    if a.reply_to.is_none() && (max == 0 || most <= max) {
        return None;
    }
    let encode = |replies: &[Reply]| {
        if a.batch {
            Reply::encode_batch_answer(replies, method.batch_max())
        } else {
            replies[0].encode()
        }
    };
    let bytes = fitted(replies, max, encode);
    a.reply_to.as_ref().map(|_| bytes)
}

/// Sends an answer (see [`fit`]) on the sender's inbox, signed over its request's signature.
pub(super) fn send(node: &Node, a: &Admitted, bytes: &[u8], first: &str) {
    let Some(to) = &a.reply_to else { return };
    if let Err(e) = node.broker.publish(
        &node.identity,
        crate::keys::Scope::reply(to, &a.signed.sig),
        bytes,
        // Signed as the request was: a sender that signs over a digest checks those.
        a.signed.covers,
        crate::broker::Confirm::ByAnswer,
    ) {
        // The sender will try again and get the stored reply.
        log::warn!("cannot send the reply for {first}: {e}");
    }
}

/// `replies` as `encode` writes them, their outputs trimmed (in `replies` too) if that is
/// more than `max` bytes (0: no limit) so that they fit.
fn fitted(replies: &mut Vec<Reply>, max: usize, encode: impl Fn(&[Reply]) -> Vec<u8>) -> Vec<u8> {
    let bytes = encode(replies);
    if max == 0 || bytes.len() <= max {
        return bytes;
    }
    // The room the replies' other fields leave (and a margin), shared out. Output escaped
    // in JSON takes more than in memory (up to six bytes a character): the share is halved
    // until it fits.
    let bare: Vec<Reply> = replies
        .iter()
        .map(|r| Reply {
            output: String::new(),
            ..r.clone()
        })
        .collect();
    let room = max.saturating_sub(encode(&bare).len() + 4096);
    let longest = replies.iter().map(|r| r.output.len()).max().unwrap_or(0);
    let mut keep = trim_share(room, replies).min(longest);
    loop {
        let cut = trimmed(replies, keep);
        let bytes = encode(&cut);
        if bytes.len() <= max || keep == 0 {
            *replies = cut;
            return bytes;
        }
        keep /= 2;
    }
}

/// How many bytes of output each reply may keep so that all of them fit in `room`: outputs
/// no longer than an even share are kept whole and leave the rest of theirs to the longer
/// ones, which get what is left, evenly ([`trimmed`] cuts them to it, notice included).
fn trim_share(room: usize, replies: &[Reply]) -> usize {
    let mut lens: Vec<usize> = replies.iter().map(|r| r.output.len()).collect();
    lens.sort_unstable();
    let mut left = room;
    for (i, &len) in lens.iter().enumerate() {
        let each = left / (lens.len() - i);
        if len > each {
            return each;
        }
        left -= len;
    }
    usize::MAX
}

const TRIMMED: &str = "\n[steward: output trimmed to the broker's payload limit]\n";

/// `replies`, each output longer than `keep` bytes cut to `keep` with the notice that says
/// so (at a character's boundary; without the notice if even that does not fit), and
/// steward's notes that ended it (how a command ended: [`crate::reply::notes_start`]) kept
/// after it where they fit too: no output comes out longer than it was, or than `keep`.
fn trimmed(replies: &[Reply], keep: usize) -> Vec<Reply> {
    replies
        .iter()
        .cloned()
        .map(|mut r| {
            if r.output.len() > keep {
                let notice = if keep >= TRIMMED.len() { TRIMMED } else { "" };
                let notes = r.output.split_off(crate::reply::notes_start(&r.output));
                let mut notes = notes.trim_start_matches('\n');
                if notice.is_empty() || notice.len() + notes.len() > keep {
                    notes = "";
                }
                let mut cut = (keep - notice.len() - notes.len()).min(r.output.len());
                while !r.output.is_char_boundary(cut) {
                    cut -= 1;
                }
                r.output.truncate(cut);
                r.output.push_str(notice);
                r.output.push_str(notes);
            }
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_too_big_for_the_broker_cuts_the_long_outputs_and_keeps_the_short() {
        let max = 1 << 20;
        let mut replies: Vec<Reply> = (0..crate::message::MAX_BATCH)
            .map(|i| Reply::refusal(format!("central-{i}"), "central", "ship1", "short".into()))
            .collect();
        replies[5].output = "é".repeat(400_000);
        // Six bytes each in JSON.
        replies[9].output = "\u{1}".repeat(200_000);
        let encode = |r: &[Reply]| Reply::encode_batch_answer(r, crate::message::MAX_BATCH);
        assert!(encode(&replies).len() > max);
        let mut cut = replies.clone();
        let bytes = fitted(&mut cut, max, encode);
        assert!(bytes.len() <= max, "{}", bytes.len());
        let got = Reply::decode_batch(&bytes).unwrap();
        let outputs = |r: &[Reply]| r.iter().map(|r| r.output.clone()).collect::<Vec<_>>();
        assert_eq!(
            outputs(&got),
            outputs(&cut),
            "what is kept is what was sent"
        );
        assert_eq!(got.len(), replies.len());
        for (i, r) in got.iter().enumerate() {
            match i {
                5 | 9 => {
                    assert!(r.output.ends_with(TRIMMED), "{i}");
                    // Trimmed to a share of the room, not to nothing.
                    assert!(
                        r.output.len() > 1000 + TRIMMED.len(),
                        "{i}: {}",
                        r.output.len()
                    );
                }
                _ => assert_eq!(r.output, "short", "{i}"),
            }
        }
        assert_eq!(got[0].batch_max, Some(crate::message::MAX_BATCH as u32));
        // Outputs no longer than their share stay whole; the longer ones share what is left,
        // notice included: 100 bytes kept, 1,000 cut to 120, in 220.
        let two: Vec<Reply> = [100, 1000]
            .iter()
            .map(|&n| Reply {
                output: "x".repeat(n),
                ..replies[0].clone()
            })
            .collect();
        let keep = trim_share(220, &two);
        let cut = trimmed(&two, keep);
        assert_eq!(cut[0].output, two[0].output);
        assert_eq!(cut[1].output.len(), 120);
        assert!(cut[1].output.ends_with(TRIMMED));
        assert_eq!(
            trimmed(&two, 10)[1].output,
            "x".repeat(10),
            "no room for the notice"
        );
        // Steward's notes that ended an output (how its command ended) are kept after the
        // notice, within the same bytes; where they do not fit beside it, dropped whole.
        let note = "[steward: killed after the 8s deadline (timeout)]\n";
        let noted = Reply {
            output: format!("{}\n{note}", "x".repeat(1000)),
            ..replies[0].clone()
        };
        let cut = trimmed(std::slice::from_ref(&noted), 300);
        assert_eq!(cut[0].output.len(), 300);
        assert!(
            cut[0].output.ends_with(&format!("{TRIMMED}{note}")),
            "{}",
            cut[0].output
        );
        let cut = trimmed(std::slice::from_ref(&noted), TRIMMED.len() + 10);
        assert!(cut[0].output.ends_with(TRIMMED), "{}", cut[0].output);
        // What fits goes as it is; no limit, nothing cut.
        assert_eq!(
            fitted(&mut replies[..3].to_vec(), max, encode),
            encode(&replies[..3])
        );
        assert_eq!(fitted(&mut replies.clone(), 0, encode), encode(&replies));
    }
}
