//! The receiver's gate: what a wire message must be before any method sees it. One pure
//! decision, `(subject, reply subject, headers, payload) → admitted or refused`, so the
//! whole rule lives in one place and can be fuzzed whole (`tests/fuzz`, target `admit`).
//!
//! In order, each check before the next:
//! 1. the subject is this node's and one of the kinds the method serves (a command method
//!    never runs from an event subject);
//! 2. the payload decodes (one envelope, or a batch from one sender) and agrees with the
//!    subject;
//! 3. it is signed, over its subject and reply subject, by a key trusted for the sender it
//!    names (no key, an unknown key, a revoked key: refused; a fleet fails closed), over
//!    its bytes, or, a batch only, over their digest;
//! 4. it is fresh: its signing counter was never taken from that sender, and its sending
//!    time is plausible (see [`crate::keys`]);
//! 5. its answer would go to the sender's own inbox (`_INBOX.<sender>.`), so no node can
//!    make this one publish signed words on a subject of its choosing;
//! 6. the sender may call it, as the method declares ([`Senders`]): commands only from
//!    `--allowCommandsFrom`, `TrustedKeys` only from the central node, logs from any
//!    verified sender; a result message (`inReplyTo`) only with this node's own ticket for
//!    exactly that result (see [`crate::reply`]), and never to a command; a copy's chunk
//!    (`CopyDst`) from another sender only with a grant, signed by a node that may call it
//!    here, for exactly that copy from that sender (see [`crate::grant`]).
//!
//! A message failing 1–5 is answered with nothing at all (logged, and reported to central
//! within a rate limit): whoever sent it proved nothing, and an answer would only help
//! them. One failing 6 came from a verified sender, which is told why, on its own inbox.

use crate::config::Allow;
use crate::keys::{ClockCheck, Covers, Scope, Signed, Trusted, Unverified};
use crate::message::{self, Envelope, Kind};
use crate::reply::ResultRoute;
use crate::subject::Subject;
use std::time::Duration;

/// This node's rules, from its configuration.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub node: &'a str,
    pub central: &'a str,
    pub allow_commands_from: &'a [Allow],
    pub replay_window: Duration,
    pub clock_check: ClockCheck,
}

impl<'a> Policy<'a> {
    pub fn of(config: &'a crate::config::Config) -> Policy<'a> {
        Policy {
            node: &config.node,
            central: &config.central_node,
            allow_commands_from: &config.allow_commands_from,
            replay_window: config.replay_window,
            clock_check: config.clock_check,
        }
    }
}

/// The method a message is for, as this node serves it.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    pub method: &'a str,
    pub kinds: &'a [Kind],
    pub senders: Senders,
}

/// Who may send a method (step 6), as the method declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Senders {
    /// Any sender this node trusts: logs, Hello, a public key.
    Fleet,
    /// Those `--allowCommandsFrom` allows: commands.
    Commanders,
    /// The central node, if `--allowCommandsFrom` allows it too: `TrustedKeys`.
    Central,
    /// Those `--allowCommandsFrom` allows, and a node sending the result this node asked it
    /// for (a valid ticket, see [`crate::reply`]): `File`, `FileAppend`, `Console`.
    CommandersOrAsked,
    /// Those `--allowCommandsFrom` allows, and a node carrying a grant, signed by one of
    /// them, for exactly what it sends (see [`crate::grant`]): `CopyDst`.
    CommandersOrGranted,
}

/// A message that may run.
#[derive(Debug)]
pub struct Admitted {
    /// One envelope, or a batch's, in order.
    pub envelopes: Vec<Envelope>,
    pub batch: bool,
    /// The verified sender.
    pub from: String,
    /// Its signature: what the answer names.
    pub signed: Signed,
    /// Where the answer goes (the sender's own inbox), if it wants one.
    pub reply_to: Option<String>,
}

/// A message that may not run.
#[derive(Debug)]
pub enum Refused {
    /// It proved nothing: answered with nothing.
    Silent(Refusal),
    /// A verified sender that may not do this: told so, on its own inbox.
    Answered {
        refusal: Refusal,
        admitted: Box<Admitted>,
    },
}

/// What a refusal says, for the log and the report to central.
#[derive(Debug)]
pub struct Refusal {
    /// Whether the sender proved who it is (its signature verified).
    pub verified: bool,
    /// The sender the message names, if it could be read.
    pub from: String,
    /// Its ids, if they could be read.
    pub ids: Vec<String>,
    pub why: String,
}

impl Refused {
    pub fn refusal(&self) -> &Refusal {
        match self {
            Refused::Silent(r) | Refused::Answered { refusal: r, .. } => r,
        }
    }
}

/// The decision. `trusted` is the only state it touches: a fresh message's counter is
/// taken.
pub fn admit(
    policy: &Policy<'_>,
    trusted: &Trusted,
    served: Served<'_>,
    subject: &str,
    reply: Option<&str>,
    headers: Option<&nats::HeaderMap>,
    payload: &[u8],
) -> Result<Admitted, Refused> {
    let silent = |from: &str, ids: &[String], why: String| {
        Refused::Silent(Refusal {
            verified: false,
            from: from.to_string(),
            ids: ids.to_vec(),
            why,
        })
    };
    // 1. This node's subject, a kind the method serves.
    let parsed = served_subject(policy, &served, subject).map_err(|e| silent("", &[], e))?;
    // 2. It decodes, from one sender, and agrees with its subject.
    let batch = message::is_batch(payload);
    let envelopes = if batch {
        message::decode_batch(payload)
    } else {
        Envelope::decode(payload).map(|e| vec![e])
    }
    .map_err(|e| silent("", &[], e.to_string()))?;
    let from = envelopes[0].from_node.clone();
    let ids: Vec<String> = envelopes.iter().map(|e| e.id.clone()).collect();
    one_sender_agreeing(&envelopes, &parsed).map_err(|why| silent(&from, &ids, why))?;
    // 3. Signed by a key trusted for that sender, over these subjects.
    let signed = trusted
        .verify(&from, headers, Scope::request(subject, reply), payload)
        .map_err(|e| {
            let why = match e {
                // Most often a new node saying Hello: say how to let it in.
                Unverified::UnknownSender { key } => format!(
                    "signed with key {key}, but {} trusts no key for {from}; if that is {from}'s key (`steward keys show` on {from}), run on {}: steward keys trust {from} {key}",
                    policy.node, policy.node
                ),
                e => e.to_string(),
            };
            silent(&from, &ids, why)
        })?;
    // Over a digest only a batch, as senders sign them: a command or a key set is signed
    // over its bytes.
    if signed.covers == Covers::Digest && !batch {
        let why = "a single message signed over its digest (only batches are)".to_string();
        return Err(silent(&from, &ids, why));
    }
    // 4. Fresh. (A replay verifies too: anyone who captured it can send it, so its
    // refusal proves nothing of the sender.)
    trusted
        .fresh(&from, &signed, policy.replay_window, policy.clock_check)
        .map_err(|why| silent(&from, &ids, why.to_string()))?;
    // From here on the message is the sender's own, and new: its refusals are a known
    // sender's.
    let verified = |why: String| match silent(&from, &ids, why) {
        Refused::Silent(r) => Refused::Silent(Refusal {
            verified: true,
            ..r
        }),
        other => other,
    };
    // 5. Answered only on the sender's own inbox.
    if let Some(to) = reply {
        own_inbox(to, &from).map_err(verified)?;
    }
    let admitted = Admitted {
        envelopes,
        batch,
        from,
        signed,
        reply_to: reply.map(str::to_string),
    };
    // 6. The sender may call this here; a result, only as the one this node asked for.
    let why = admitted
        .envelopes
        .iter()
        .find_map(|e| forbidden(policy, trusted, &served, e));
    if let Some(why) = why {
        return Err(Refused::Answered {
            refusal: Refusal {
                verified: true,
                from: admitted.from.clone(),
                ids,
                why,
            },
            admitted: Box::new(admitted),
        });
    }
    Ok(admitted)
}

/// Step 1: `subject` is one of this node's for the method, of a kind it serves.
fn served_subject(
    policy: &Policy<'_>,
    served: &Served<'_>,
    subject: &str,
) -> Result<Subject, String> {
    let parsed = Subject::parse(subject).map_err(|e| e.to_string())?;
    if parsed.node != policy.node || parsed.method != served.method {
        return Err(format!(
            "{subject} is not a subject of {}.{}",
            policy.node, served.method
        ));
    }
    if !served.kinds.contains(&parsed.kind) {
        let kinds: Vec<&str> = served.kinds.iter().map(|k| k.as_str()).collect();
        return Err(format!(
            "{} is served only as {}, not as {}",
            served.method,
            kinds.join(" or "),
            parsed.kind.as_str()
        ));
    }
    Ok(parsed)
}

/// Step 2: one sender, and every message's content agrees with the subject it came on.
fn one_sender_agreeing(envelopes: &[Envelope], subject: &Subject) -> Result<(), String> {
    let from = &envelopes[0].from_node;
    if let Some(e) = envelopes.iter().find(|e| e.from_node != *from) {
        return Err(format!("it mixes senders ({from}, {})", e.from_node));
    }
    for e in envelopes {
        let m = &e.message;
        if m.to_node != subject.node || m.kind != subject.kind || m.method != subject.method {
            return Err(format!(
                "{}: its content ({}.{}.{}) does not match its subject",
                e.id,
                m.to_node,
                m.kind.as_str(),
                m.method
            ));
        }
    }
    Ok(())
}

/// Step 5: the answer goes to the sender's own inbox, `_INBOX.<from>.…`.
fn own_inbox(to: &str, from: &str) -> Result<(), String> {
    let own = format!("_INBOX.{from}.");
    if !to.starts_with(&own) || to.len() == own.len() {
        return Err(format!(
            "its answer would go to {to}, not to {from}'s own inbox ({own}…)"
        ));
    }
    Ok(())
}

/// Whether `--allowCommandsFrom` lets `from` call `method` here.
fn commands(policy: &Policy<'_>, from: &str, method: &str) -> bool {
    policy
        .allow_commands_from
        .iter()
        .any(|rule| rule.permits(from, method))
}

/// Whether a schedule's message may still run here, before each run (see
/// [`crate::schedule`]): its sender still allowed to call its method under this node's
/// rules now, with the key it signed with still trusted. `None`: yes; else why not.
pub fn still_allowed(
    policy: &Policy<'_>,
    trusted: &Trusted,
    served: &Served<'_>,
    e: &Envelope,
    key: &str,
) -> Option<String> {
    if !trusted.trusts(&e.from_node, key) {
        return Some(format!(
            "{} is no longer trusted with the key that signed it",
            e.from_node
        ));
    }
    forbidden(policy, trusted, served, e)
}

/// Why `e`'s sender may not send it to `served` here, if it may not. A result message
/// (`inReplyTo`) must carry this node's ticket for exactly the route it takes: the id, the
/// sender answering, the method, its arguments and its file.
fn forbidden(
    policy: &Policy<'_>,
    trusted: &Trusted,
    served: &Served<'_>,
    e: &Envelope,
) -> Option<String> {
    let (from, method) = (e.from_node.as_str(), served.method);
    // What makes the receiver act again or send on (a schedule, a result message of its
    // own) never rides a result or a copy's chunk, whose tickets and grants do not cover
    // it; a schedule, elsewhere, only from a commander (a result message goes only to its
    // own sender, which may ask for it).
    let m = &e.message;
    let acts_again = m.schedule.is_some() || m.reply_method.is_some();
    if acts_again && (m.in_reply_to.is_some() || served.senders == Senders::CommandersOrGranted) {
        return Some(format!(
            "{from}: a result or a copy's chunk cannot carry schedule or replyMethod"
        ));
    }
    // Asked only of a method any fleet member may call: where only commanders may, a sender
    // that is not one is told that, below (told its schedule or result route was the
    // trouble, it dropped them, and was refused again, for what it had been all along).
    let fleet_method = served.senders == Senders::Fleet;
    if m.schedule.is_some()
        && fleet_method
        && from != policy.node
        && !commands(policy, from, method)
    {
        return Some(format!(
            "{from} may not schedule {method} here: a schedule is a command's power (allowCommandsFrom)"
        ));
    }
    // A result sent as a message of its own is journaled and sent again until its sender
    // answers, with its arguments (up to 256 KiB), outside the log budget and the
    // free-space floor: a command's power too, or any fleet member could fill this node's
    // disk with Hellos asking for one.
    if m.reply_method.is_some()
        && fleet_method
        && from != policy.node
        && !commands(policy, from, method)
    {
        return Some(format!(
            "{from} may not ask {method} here for a result of its own (replyMethod): that is a command's power (allowCommandsFrom)"
        ));
    }
    if let Some(route) = ResultRoute::of_result(e) {
        let answers = &route.id;
        let ticket = e
            .message
            .in_reply_to
            .as_ref()
            .map_or("", |a| a.ticket.as_str());
        if !trusted.vouched(&route.bytes(), ticket) {
            return Some(format!(
                "{from} sent a result for {answers} to {method}, which {} did not ask {from} for: no such request, or another method, file or node",
                policy.node
            ));
        }
        return match served.senders {
            Senders::Fleet | Senders::CommandersOrAsked => None,
            Senders::Commanders | Senders::Central | Senders::CommandersOrGranted => Some(format!(
                "{method} does not take results: a result can never run a command"
            )),
        };
    }
    // This node's own key: a message it sent itself (its startup folder). Whoever can make
    // it sign can run anything as it already. Not a copy's chunk, though: those go to the
    // copy's grant like any (a commander allowed CopySrc alone must not write any path by
    // copying to this node itself).
    if from == policy.node && served.senders != Senders::CommandersOrGranted {
        return None;
    }
    match served.senders {
        Senders::Fleet => return None,
        Senders::Central if from != policy.central => {
            return Some(format!(
                "{from} may not call {method} here: only the central node ({}) distributes keys",
                policy.central
            ))
        }
        Senders::Central
        | Senders::Commanders
        | Senders::CommandersOrAsked
        | Senders::CommandersOrGranted => {}
    }
    if commands(policy, from, method) {
        return None;
    }
    let rules: Vec<String> = policy
        .allow_commands_from
        .iter()
        .map(|r| r.to_string())
        .collect();
    let asked = match served.senders {
        Senders::CommandersOrAsked => ", or as the result of a request this node sent".into(),
        Senders::CommandersOrGranted => match crate::grant::refusal(policy, trusted, e) {
            None => return None,
            Some(why) => format!(", or on a grant from one of them; {why}"),
        },
        _ => String::new(),
    };
    Some(format!(
        "{from} may not call {method} here (allowCommandsFrom: {}{asked})",
        rules.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn policy() -> Policy<'static> {
        Policy {
            node: "ship1",
            central: "central",
            allow_commands_from: &[],
            replay_window: Duration::from_secs(600),
            clock_check: ClockCheck::Off,
        }
    }

    fn envelope(from: &str, to: &str, kind: Kind, method: &str) -> Envelope {
        Envelope::sent(
            from,
            format!("{from}-1"),
            Message::new(to, kind, method, vec![]),
        )
    }

    #[test]
    fn only_this_nodes_subjects_of_a_served_kind() {
        let served = Served {
            method: "CLICommand",
            kinds: crate::methods::COMMANDS,
            senders: Senders::Commanders,
        };
        let ok = served_subject(&policy(), &served, "ship1.CommandACK.CLICommand").unwrap();
        assert_eq!(ok.kind, Kind::CommandAck);
        let other = served_subject(&policy(), &served, "ship2.CommandACK.CLICommand");
        assert!(other
            .unwrap_err()
            .contains("not a subject of ship1.CLICommand"));
        let event = served_subject(&policy(), &served, "ship1.EventACK.CLICommand");
        assert!(event
            .unwrap_err()
            .contains("served only as CommandACK or CommandNACK"));
        assert!(served_subject(&policy(), &served, "ship1.CLICommand").is_err());
    }

    #[test]
    fn one_sender_and_content_that_agrees_with_its_subject() {
        let subject = Subject::parse("ship1.EventACK.TextLogging").unwrap();
        let good = envelope("central", "ship1", Kind::EventAck, "TextLogging");
        assert!(one_sender_agreeing(std::slice::from_ref(&good), &subject).is_ok());
        let other = envelope("ship2", "ship1", Kind::EventAck, "TextLogging");
        let mixed = one_sender_agreeing(&[good.clone(), other], &subject);
        assert!(mixed
            .unwrap_err()
            .contains("mixes senders (central, ship2)"));
        let moved = envelope("central", "ship1", Kind::CommandAck, "CLICommand");
        let why = one_sender_agreeing(&[moved], &subject).unwrap_err();
        assert!(why.contains("does not match its subject"), "{why}");
    }

    #[test]
    fn answers_go_only_to_the_senders_own_inbox() {
        assert!(own_inbox("_INBOX.central.abc.1", "central").is_ok());
        assert!(own_inbox("_INBOX.central.", "central").is_err());
        assert!(own_inbox("_INBOX.centralx.abc", "central").is_err());
        assert!(own_inbox("ship2.CommandACK.CLICommand", "central").is_err());
    }

    #[test]
    fn only_a_batch_may_be_signed_over_its_digest() {
        let c = Copy::new();
        let served = Served {
            method: "TextLogging",
            kinds: crate::methods::EVENTS,
            senders: Senders::Fleet,
        };
        let subject = "ship2.EventACK.TextLogging";
        let reply = "_INBOX.central.x.1";
        let event = |i: u32| Envelope {
            id: format!("central-{i}"),
            ..envelope("central", "ship2", Kind::EventAck, "TextLogging")
        };
        let gate = |payload: &[u8], covers: Covers| {
            let sealed = c.ids["central"].seal_covering(
                Scope::request(subject, Some(reply)),
                payload,
                covers,
            );
            admit(
                &c.policy(),
                &c.trusted,
                served,
                subject,
                Some(reply),
                Some(&sealed.headers),
                payload,
            )
        };
        let single = event(1).encode();
        let batch = crate::message::encode_batch(&[event(2), event(3)]);
        assert!(gate(&single, Covers::Payload).is_ok());
        assert!(gate(&batch, Covers::Payload).is_ok());
        assert!(gate(&batch, Covers::Digest).is_ok());
        match gate(&single, Covers::Digest) {
            Err(Refused::Silent(r)) => assert!(r.why.contains("only batches"), "{}", r.why),
            other => panic!("a single message over its digest: {other:?}"),
        }
    }

    /// ship2's gate for CopyDst, trusting central (its commander), ship1 and ship3 (fleet
    /// members that command nothing there), and a CopySrc central sent ship1, with its
    /// grant.
    struct Copy {
        _dir: tempfile::TempDir,
        trusted: Trusted,
        ids: std::collections::HashMap<&'static str, crate::keys::Identity>,
        allow: Vec<Allow>,
    }

    impl Copy {
        fn new() -> Copy {
            let dir = tempfile::tempdir().unwrap();
            let mut ids = std::collections::HashMap::new();
            for name in ["central", "ship1", "ship2", "ship3"] {
                let id = crate::keys::Identity::generate(&dir.path().join(name), false).unwrap();
                if name != "ship2" {
                    crate::keys::trust(&dir.path().join("ship2"), name, id.public_key()).unwrap();
                }
                ids.insert(name, id);
            }
            let own = ids["ship2"].public_key().to_string();
            let trusted = Trusted::open(&dir.path().join("ship2"), "ship2", &own).unwrap();
            Copy {
                _dir: dir,
                trusted,
                ids,
                allow: vec![Allow {
                    from: "central".into(),
                    methods: None,
                }],
            }
        }

        fn policy(&self) -> Policy<'_> {
            Policy {
                node: "ship2",
                allow_commands_from: &self.allow,
                ..policy()
            }
        }

        /// The CopySrc `grantor` sends `source`, for ship2's `path` (mode `mode`).
        fn request(grantor: &str, source: &str, path: &str, mode: Option<&str>) -> Envelope {
            let mut data = vec!["/var/log/syslog".to_string(), "ship2".into(), path.into()];
            data.extend(mode.map(str::to_string));
            Envelope {
                id: format!("{grantor}-copy-1"),
                from_node: grantor.into(),
                accepted: 0,
                reply_ticket: None,
                grant: None,
                message: Message::new(source, Kind::CommandAck, "CopySrc", data),
            }
        }

        /// The grant `signer` makes for `request` (as `wire_form` does, with its key).
        fn grant(&self, signer: &str, request: &Envelope) -> String {
            let grant = crate::grant::CopyGrant::of_request(request).unwrap();
            self.ids[signer].vouch(&grant.bytes())
        }

        /// A chunk `from` sends ship2 carrying `request`'s grant `sig`.
        fn chunk(from: &str, request: &Envelope, sig: &str) -> Envelope {
            let grant = crate::grant::CopyGrant::of_request(request).unwrap();
            Envelope {
                id: format!("{from}-chunk-1"),
                from_node: from.into(),
                accepted: 0,
                reply_ticket: None,
                grant: None,
                message: Message {
                    method_args: Some(grant.chunk_args(sig)),
                    ..Message::new(
                        "ship2",
                        Kind::EventAck,
                        "CopyDst",
                        vec!["0".into(), "aGk=".into()],
                    )
                },
            }
        }

        fn verdict(&self, chunk: &Envelope) -> Option<String> {
            let served = Served {
                method: "CopyDst",
                kinds: crate::methods::EVENTS,
                senders: Senders::CommandersOrGranted,
            };
            forbidden(&self.policy(), &self.trusted, &served, chunk)
        }

        fn refused(&self, chunk: &Envelope, says: &str) {
            let why = self.verdict(chunk).expect("refused");
            assert!(why.contains(says), "{why}");
            assert!(
                why.starts_with(&format!("{} may not call CopyDst here", chunk.from_node)),
                "{why}"
            );
        }
    }

    #[test]
    fn a_copy_s_chunk_is_taken_on_its_commander_s_grant_for_exactly_that_copy() {
        let w = Copy::new();
        let asked = Copy::request("central", "ship1", "in/syslog", None);
        let sig = w.grant("central", &asked);
        assert_eq!(w.verdict(&Copy::chunk("ship1", &asked, &sig)), None);
        // With a mode asked, the grant covers it.
        let with_mode = Copy::request("central", "ship1", "in/syslog", Some("0600"));
        let sig_mode = w.grant("central", &with_mode);
        assert_eq!(
            w.verdict(&Copy::chunk("ship1", &with_mode, &sig_mode)),
            None
        );
        // A commander needs no grant.
        let mut direct = Copy::chunk("central", &asked, "");
        direct.message.method_args = None;
        assert_eq!(w.verdict(&direct), None);
    }

    #[test]
    fn a_chunk_without_its_commander_s_grant_for_exactly_that_copy_is_refused() {
        let w = Copy::new();
        let asked = Copy::request("central", "ship1", "in/syslog", None);
        let sig = w.grant("central", &asked);
        let good = Copy::chunk("ship1", &asked, &sig);

        // No grant at all, an empty one, or one that is not a signature.
        let mut none = good.clone();
        none.message.method_args = None;
        w.refused(&none, "carries no grant");
        w.refused(&Copy::chunk("ship1", &asked, ""), "does not verify");
        w.refused(&Copy::chunk("ship1", &asked, "zz"), "does not verify");
        // Signed by the source itself, claiming to be central's.
        let forged = w.grant("ship1", &asked);
        w.refused(
            &Copy::chunk("ship1", &asked, &forged),
            "does not verify against central's key",
        );
        // A grant by a fleet member that may not command ship2, for its own request.
        let by_ship3 = Copy::request("ship3", "ship1", "in/syslog", None);
        let sig3 = w.grant("ship3", &by_ship3);
        w.refused(
            &Copy::chunk("ship1", &by_ship3, &sig3),
            "ship3's, which may not call CopyDst here either",
        );
        // Central's grant, used for another path or another mode.
        let mut other_path = good.clone();
        other_path.message.method_args.as_mut().unwrap()[2] = "in/passwd".into();
        w.refused(&other_path, "does not verify");
        let mut other_mode = good.clone();
        other_mode.message.method_args.as_mut().unwrap()[3] = "0777".into();
        w.refused(&other_mode, "does not verify");
        let mut other_copy = good.clone();
        other_copy.message.method_args.as_mut().unwrap()[1] = "central-copy-2".into();
        w.refused(&other_copy, "does not verify");
        // Sent by another node than the one central asked.
        let mut from_ship3 = good.clone();
        from_ship3.from_node = "ship3".into();
        w.refused(&from_ship3, "does not verify");
        // Sent on to another destination: re-addressed, or replayed as it was.
        let mut readdressed = good.clone();
        readdressed.message.to_node = "ship4".into();
        let ship4 = Policy {
            node: "ship4",
            ..w.policy()
        };
        let served = Served {
            method: "CopyDst",
            kinds: crate::methods::EVENTS,
            senders: Senders::CommandersOrGranted,
        };
        let why = forbidden(&ship4, &w.trusted, &served, &readdressed).unwrap();
        assert!(why.contains("does not verify"), "{why}");
        let why = forbidden(&ship4, &w.trusted, &served, &good).unwrap();
        assert!(why.contains("its grant is for ship2, not ship4"), "{why}");
        // A commander's grant only while it is one: allowed other methods only, refused.
        let mut w = w;
        w.allow = vec![Allow {
            from: "central".into(),
            methods: Some(vec!["CLICommand".into()]),
        }];
        w.refused(&good, "central's, which may not call CopyDst here either");
        // Central's word for something else (a result ticket) is no grant.
        w.allow = vec![Allow {
            from: "central".into(),
            methods: None,
        }];
        let ticket = w.ids["central"].vouch(
            &crate::reply::ResultRoute {
                id: "central-copy-1",
                from: "central",
                to: "ship1",
                reply_method: "File",
                args: &[],
                directory: Some("in"),
                file_name: Some("syslog"),
            }
            .bytes(),
        );
        w.refused(&Copy::chunk("ship1", &asked, &ticket), "does not verify");
        // And a chunk is never a result: a ticket-bearing CopyDst is refused as one.
        let mut as_result = good.clone();
        as_result.message.in_reply_to = Some(crate::message::InReplyTo {
            id: "ship2-1".into(),
            method: "CLICommand".into(),
            status: crate::message::Status::Ok,
            exit_code: None,
            ticket: String::new(),
        });
        assert!(w.verdict(&as_result).is_some());
    }
}

#[cfg(test)]
mod acting_again {
    use super::*;
    use crate::message::{InReplyTo, Message, Status};

    fn served(method: &'static str, senders: Senders) -> Served<'static> {
        Served {
            method,
            kinds: crate::methods::EVENTS,
            senders,
        }
    }

    fn with(from: &str, method: &str, change: impl Fn(&mut Message)) -> Envelope {
        let mut message = Message::new("ship1", Kind::EventAck, method, vec!["x".into()]);
        change(&mut message);
        Envelope {
            id: format!("{from}-1"),
            from_node: from.into(),
            accepted: 0,
            reply_ticket: None,
            grant: None,
            message,
        }
    }

    /// Every kind of method, every sender, every way of asking to act again: whatever the
    /// refusal's wording, what is let through with a schedule or a result route is only a
    /// commander's, or this node's own (not a chunk), and never a result or a chunk.
    #[test]
    fn acting_again_is_let_through_only_for_a_commander_or_this_node() {
        let dir = tempfile::tempdir().unwrap();
        let me = crate::keys::Identity::generate(dir.path(), false).unwrap();
        let trusted = Trusted::open(dir.path(), "ship1", me.public_key()).unwrap();
        let allows: [&[Allow]; 3] = [
            &[],
            &[Allow {
                from: "ship3".into(),
                methods: Some(vec!["CLICommand".into(), "File".into()]),
            }],
            &[
                Allow {
                    from: "central".into(),
                    methods: None,
                },
                Allow {
                    from: "ship3".into(),
                    methods: Some(vec!["TrustedKeys".into(), "TextLogging".into()]),
                },
            ],
        ];
        let kinds = [
            Senders::Fleet,
            Senders::Commanders,
            Senders::Central,
            Senders::CommandersOrAsked,
            Senders::CommandersOrGranted,
        ];
        /// What a result message carries (its ticket is no concern here).
        fn a_result() -> Option<InReplyTo> {
            Some(InReplyTo {
                id: "x-1".into(),
                method: "CLICommand".into(),
                status: Status::Ok,
                exit_code: None,
                ticket: String::new(),
            })
        }
        let changes: [fn(&mut Message); 6] = [
            |m| m.schedule = Some(vec![1, 3600]),
            |m| m.reply_method = Some("Console".into()),
            |m| {
                m.schedule = Some(vec![1, 3600]);
                m.reply_method = Some("none".into());
            },
            |m| {
                m.schedule = Some(vec![1, 3600]);
                m.in_reply_to = a_result();
            },
            |m| {
                m.reply_method = Some("TextLogging".into());
                m.in_reply_to = a_result();
            },
            |m| m.reply_method = Some("TextLogging".into()),
        ];
        for allow in allows {
            let policy = Policy {
                node: "ship1",
                central: "central",
                allow_commands_from: allow,
                replay_window: Duration::from_secs(600),
                clock_check: ClockCheck::Off,
            };
            for method in [
                "CLICommand",
                "File",
                "TrustedKeys",
                "TextLogging",
                "CopyDst",
            ] {
                for senders in kinds {
                    for from in ["ship1", "ship2", "ship3", "central"] {
                        for change in changes {
                            let e = with(from, method, change);
                            let why = forbidden(&policy, &trusted, &served(method, senders), &e);
                            if why.is_some() {
                                continue;
                            }
                            let case =
                                format!("{allow:?} {method} {senders:?} {from} {:?}", e.message);
                            assert!(e.message.in_reply_to.is_none(), "{case}");
                            assert!(senders != Senders::CommandersOrGranted, "{case}");
                            assert!(from == "ship1" || commands(&policy, from, method), "{case}");
                            if senders == Senders::Central {
                                assert!(from == "central" || from == "ship1", "{case}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_schedule_or_a_result_route_is_a_command_s_power_and_never_rides_a_result() {
        let dir = tempfile::tempdir().unwrap();
        let me = crate::keys::Identity::generate(dir.path(), false).unwrap();
        let trusted = Trusted::open(dir.path(), "ship1", me.public_key()).unwrap();
        let allow = [Allow {
            from: "central".into(),
            methods: None,
        }];
        let policy = Policy {
            node: "ship1",
            central: "central",
            allow_commands_from: &allow,
            replay_window: Duration::from_secs(600),
            clock_check: ClockCheck::Off,
        };
        let fleet = served("TextLogging", Senders::Fleet);
        let schedule = |m: &mut Message| {
            m.schedule = Some(vec![1, 3600]);
            m.reply_method = Some("TextLogging".into());
        };
        // Nor make it journal and send results of its own, again and again.
        for method in ["Console", "TextLogging", "none"] {
            let why = forbidden(
                &policy,
                &trusted,
                &fleet,
                &with("ship2", "TextLogging", |m| {
                    m.reply_method = Some(method.into());
                    m.reply_method_args = Some(vec!["x".repeat(250_000)]);
                }),
            )
            .unwrap();
            assert!(
                why.contains("ship2 may not ask TextLogging here for a result of its own"),
                "{why}"
            );
            for commander in ["central", "ship1"] {
                let m = with(commander, "TextLogging", |m| {
                    m.reply_method = Some(method.into());
                });
                assert_eq!(
                    forbidden(&policy, &trusted, &fleet, &m),
                    None,
                    "{commander}"
                );
            }
        }
        // A fleet member may log here, but not make this node log every second.
        assert_eq!(
            forbidden(
                &policy,
                &trusted,
                &fleet,
                &with("ship2", "TextLogging", |_| {})
            ),
            None
        );
        let why = forbidden(
            &policy,
            &trusted,
            &fleet,
            &with("ship2", "TextLogging", schedule),
        )
        .unwrap();
        assert!(why.contains("may not schedule TextLogging"), "{why}");
        // A commander may; so may this node itself (its startup folder).
        assert_eq!(
            forbidden(
                &policy,
                &trusted,
                &fleet,
                &with("central", "TextLogging", schedule)
            ),
            None
        );
        assert_eq!(
            forbidden(
                &policy,
                &trusted,
                &fleet,
                &with("ship1", "TextLogging", schedule)
            ),
            None
        );
        // A result carries neither a schedule nor a route of its own, whoever sends it.
        let result = |m: &mut Message| {
            schedule(m);
            m.in_reply_to = Some(InReplyTo {
                id: "ship1-0".into(),
                method: "CLICommand".into(),
                status: Status::Ok,
                exit_code: None,
                ticket: "00".into(),
            });
        };
        let asked = served("FileAppend", Senders::CommandersOrAsked);
        let why = forbidden(
            &policy,
            &trusted,
            &asked,
            &with("central", "FileAppend", result),
        )
        .unwrap();
        assert!(
            why.contains("cannot carry schedule or replyMethod"),
            "{why}"
        );
        // A sender that may not call a method at all is told that, whatever it asks of the
        // result: not that its replyMethod or schedule is the trouble.
        for (method, senders) in [
            ("CLICommand", Senders::Commanders),
            ("File", Senders::CommandersOrAsked),
            ("TrustedKeys", Senders::Central),
        ] {
            let changes: [fn(&mut Message); 2] =
                [schedule, |m| m.reply_method = Some("Console".into())];
            for change in changes {
                let why = forbidden(
                    &policy,
                    &trusted,
                    &served(method, senders),
                    &with("ship2", method, change),
                )
                .unwrap();
                assert!(
                    why.contains(&format!("ship2 may not call {method} here")),
                    "{why}"
                );
            }
        }
        // Nor does a copy's chunk, even from this node's own key.
        let chunk = served("CopyDst", Senders::CommandersOrGranted);
        let why = forbidden(&policy, &trusted, &chunk, &with("ship1", "CopyDst", |_| {})).unwrap();
        assert!(why.contains("may not call CopyDst here"), "{why}");
    }
}
