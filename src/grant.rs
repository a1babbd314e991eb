//! Grants: a commander's word that one node may write one file on another.
//!
//! `CopySrc` asks a node (the *source*) to copy one of its files to another node (the
//! *destination*), in chunks that the source sends as `CopyDst` messages of its own (see
//! [`crate::methods::copy`]). Writing a file on a node is a command's power, and the source
//! usually has no such power on the destination: ships do not command each other. The
//! power is central's, which asked. So the destination must take the chunks because, and
//! only because, a node that may command it asked for exactly this copy.
//!
//! That word is a *grant*. As a `CopySrc` request leaves its sender (the *grantor*, e.g.
//! central), the sender signs, with [`Identity::vouch`](crate::keys::Identity::vouch), what
//! it allows (a [`CopyGrant`]): the request's id, itself, the source, the destination,
//! the method (`CopyDst`), the destination path and the mode, each length-prefixed. The
//! signature travels in the request's `grant`, beside `replyTicket`, added as the message
//! leaves (`wire_form` in the publisher), so the journal never holds it and an operator
//! cannot write one. The source copies the grant into every chunk (`methodArgs`:
//! grantor, copy id, path, mode, signature). The destination's gate
//! ([`crate::admission`], step 6, [`Senders::CommandersOrGranted`](crate::admission::Senders))
//! takes a chunk from a sender it would not take commands from only if:
//!
//! 1. the grantor may call `CopyDst` here itself (`--allowCommandsFrom`);
//! 2. the grant verifies against a key this node trusts *for the grantor*
//!    ([`Trusted::vouched_by`](crate::keys::Trusted::vouched_by));
//! 3. what the grant covers is rebuilt from the chunk as it arrived: its verified sender
//!    as the source, this node as the destination, its method, path and mode. A chunk for
//!    another path or mode, from another node, or sent on to another destination rebuilds
//!    other bytes, and the grant does not verify.
//!
//! The grant's bytes begin with a domain of their own (`steward copy grant v1`), unlike a
//! result ticket's (`steward result route v1`), so neither can stand for the other; and
//! both are signed in the vouch domain, so neither can stand for a message signature.
//! Like a ticket, a grant is stateless: the destination keeps no table of what was asked.
//! It is not limited in time: a source may send the chunks of its copy for as long as they
//! take (a ship away for a week), and could send them again later; it can write nothing
//! else, nowhere else, with no other mode.

use crate::admission::Policy;
use crate::keys::Trusted;
use crate::message::Envelope;

/// The method that asks for a copy.
pub const COPY_SRC: &str = "CopySrc";
/// The method that carries its chunks.
pub const COPY_DST: &str = "CopyDst";

/// What a grant allows: one copy, of one source node, to one path of one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyGrant<'a> {
    /// The `CopySrc` request's id: the copy's id.
    pub id: &'a str,
    /// Who asked (the request's sender), and signs.
    pub grantor: &'a str,
    /// The request's destination, which reads the file and sends the chunks.
    pub source: &'a str,
    /// Where the file goes.
    pub destination: &'a str,
    /// The method the chunks travel as (`CopyDst`).
    pub method: &'a str,
    /// The path on the destination, as the request gives it.
    pub path: &'a str,
    /// The mode, as the request gives it (`"0644"`), or `""`: the source file's.
    pub mode: &'a str,
}

impl<'a> CopyGrant<'a> {
    /// What a `CopySrc` request (`data: [srcPath, dstNode, dstPath, mode?]`) asks to be
    /// allowed, if it is one.
    pub fn of_request(e: &'a Envelope) -> Option<CopyGrant<'a>> {
        let m = &e.message;
        if m.method != COPY_SRC || !(3..=4).contains(&m.data.len()) {
            return None;
        }
        Some(CopyGrant {
            id: &e.id,
            grantor: &e.from_node,
            source: &m.to_node,
            destination: &m.data[1],
            method: COPY_DST,
            path: &m.data[2],
            mode: m.data.get(3).map_or("", String::as_str),
        })
    }

    /// What a chunk claims to be allowed, from its `methodArgs` ([`CopyGrant::chunk_args`])
    /// and from who sent it where, with the grant's signature; `None` if it carries none.
    pub fn of_chunk(e: &'a Envelope) -> Option<(CopyGrant<'a>, &'a str)> {
        let m = &e.message;
        let [grantor, id, path, mode, sig] = m.method_args.as_deref()? else {
            return None;
        };
        let grant = CopyGrant {
            id,
            grantor,
            source: &e.from_node,
            destination: &m.to_node,
            method: &m.method,
            path,
            mode,
        };
        Some((grant, sig))
    }

    /// The `methodArgs` of each chunk: grantor, copy id, path, mode, and the grant `sig`.
    pub fn chunk_args(&self, sig: &str) -> Vec<String> {
        [self.grantor, self.id, self.path, self.mode, sig]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// The bytes the grantor signs: each field, length-prefixed so none can run into the
    /// next.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = b"steward copy grant v1\n".to_vec();
        for s in [
            self.id,
            self.grantor,
            self.source,
            self.destination,
            self.method,
            self.path,
            self.mode,
        ] {
            v.extend_from_slice(format!("{}:", s.len()).as_bytes());
            v.extend_from_slice(s.as_bytes());
        }
        v
    }
}

/// Why a chunk `e`, from a sender that may not call its method here itself, may not be
/// taken on a grant either; `None` if its grant holds (see the module docs).
pub fn refusal(policy: &Policy<'_>, trusted: &Trusted, e: &Envelope) -> Option<String> {
    let Some((grant, sig)) = CopyGrant::of_chunk(e) else {
        return Some("it carries no grant".into());
    };
    if grant.destination != policy.node {
        return Some(format!(
            "its grant is for {}, not {}",
            grant.destination, policy.node
        ));
    }
    let grantor_may = policy
        .allow_commands_from
        .iter()
        .any(|rule| rule.permits(grant.grantor, grant.method));
    if !grantor_may {
        return Some(format!(
            "its grant is {}'s, which may not call {} here either",
            grant.grantor, grant.method
        ));
    }
    if !trusted.vouched_by(grant.grantor, &grant.bytes(), sig) {
        return Some(format!(
            "its grant does not verify against {}'s key for copy {} from {} to {:?} (mode {:?}): forged, or made for another copy, path, mode, source or destination",
            grant.grantor,
            grant.id,
            grant.source,
            grant.path,
            if grant.mode.is_empty() { "the source's" } else { grant.mode }
        ));
    }
    None
}
