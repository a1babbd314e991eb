//! `TrustedKeys`: the central node hands a node the set of keys it should trust, so adding
//! a node to the fleet means trusting it on central and distributing once
//! (`steward keys distribute ship1 ship2 ...`), not editing every node by hand.
//!
//! It is a command, signed and fresh, taken only from the central node, and from it only
//! if `--allowCommandsFrom` allows it too: a rule that allows another sender commands does
//! not let it send this one (see [`crate::admission`]; this node's own messages, from its
//! startup folder, pass too). The set (a [`KeySet`] as JSON in `data`) replaces the one
//! held in `keys/distributed.json` only if it was issued later, so an old set cannot be
//! replayed over a newer one; and no later than the message itself was accepted plus the
//! replay window, so no set can claim a far future that no real set could ever replace. It can never bind a key to the central node, to any sender named in
//! `--allowCommandsFrom` or to this node itself: those keys only this node's operator
//! pins (`keys/trusted.txt`, never touched here). A sender allowed to send commands can
//! therefore never make itself central. Revoked keys it carries are revoked here too.

use super::Context;
use super::{Method, Outcome};
use crate::keys::KeySet;
use crate::message::Envelope;

pub struct TrustedKeys;

impl Method for TrustedKeys {
    fn name(&self) -> &'static str {
        "TrustedKeys"
    }

    fn kinds(&self) -> &'static [crate::message::Kind] {
        super::COMMANDS
    }

    fn senders(&self) -> super::Senders {
        super::Senders::Central
    }

    fn puts_right(&self) -> bool {
        true
    }

    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        let set = match KeySet::parse(&envelope.message.data.concat()) {
            Ok(set) => set,
            Err(e) => return Outcome::error(e.to_string()),
        };
        let latest = envelope
            .accepted
            .saturating_add(ctx.config.replay_window.as_millis() as u64);
        if set.issued > latest {
            return Outcome::refused(format!(
                "the set claims to be issued at {}, after the message carrying it was sent ({}); not taken",
                crate::files::rfc3339(set.issued),
                crate::files::rfc3339(envelope.accepted)
            ));
        }
        match ctx.trusted.replace_distributed(&set) {
            Ok(n) => {
                let nodes: Vec<&str> = set.keys.keys().map(String::as_str).collect();
                log::info!(
                    "now trusting {n} key(s) from {} for: {}",
                    envelope.from_node,
                    nodes.join(", ")
                );
                Outcome::ok(format!(
                    "{} now trusts {n} key(s) distributed by {} for: {}",
                    ctx.config.node,
                    envelope.from_node,
                    nodes.join(", ")
                ))
            }
            Err(e) => Outcome::error(e.to_string()),
        }
    }
}
