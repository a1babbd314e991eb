//! `TrustedKeys`: the central node hands a node the set of keys it should trust, so adding
//! a node to the fleet means trusting it on central and distributing once
//! (`steward keys distribute ship1 ship2 ...`), not editing every node by hand.
//!
//! It is a command like any other: it must be signed by a sender allowed to call it (by
//! default only central), within the replay window. The set (a [`KeySet`] as JSON in
//! `data`) replaces the one held in `keys/distributed.json` only if it was issued later, so
//! an old set cannot be replayed over a newer one. The operator's own `keys/trusted.txt`
//! is never touched.

use super::{Method, Outcome};
use crate::keys::KeySet;
use crate::message::Envelope;
use crate::node::Node;

pub struct TrustedKeys;

impl Method for TrustedKeys {
    fn name(&self) -> &'static str {
        "TrustedKeys"
    }

    fn handle(&self, envelope: &Envelope, node: &Node) -> Outcome {
        let set = match KeySet::parse(&envelope.message.data.concat()) {
            Ok(set) => set,
            Err(e) => return Outcome::error(e),
        };
        match node.trusted.replace_distributed(&set) {
            Ok(n) => {
                let nodes: Vec<&str> = set.keys.keys().map(String::as_str).collect();
                log::info!(
                    "now trusting {n} key(s) from {} for: {}",
                    envelope.from_node,
                    nodes.join(", ")
                );
                Outcome::ok(format!(
                    "{} now trusts {n} key(s) distributed by {} for: {}",
                    node.config.node,
                    envelope.from_node,
                    nodes.join(", ")
                ))
            }
            Err(e) => Outcome::error(e),
        }
    }
}
