//! `PublicKey`: answers with the node's public signing key (what `steward keys show`
//! prints), e.g. for an operator onboarding it to check the key it is about to trust
//! against the one the node itself reports. Public, so any sender this node trusts may ask.

use super::{Context, Method, Outcome, Senders, COMMANDS};
use crate::message::{Envelope, Kind};

pub struct PublicKey;

impl Method for PublicKey {
    fn name(&self) -> &'static str {
        "PublicKey"
    }
    fn kinds(&self) -> &'static [Kind] {
        COMMANDS
    }
    fn senders(&self) -> Senders {
        Senders::Fleet
    }
    fn handle(&self, _envelope: &Envelope, ctx: &Context) -> Outcome {
        Outcome::ok(format!("{}\n", ctx.public_key))
    }
}
