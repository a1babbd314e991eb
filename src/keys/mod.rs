//! Who is who: this node's signing key, the keys it trusts, and the signatures on the wire.
//!
//! Anyone who can publish on the broker could otherwise make a node do things, so every
//! message a node publishes (and every reply) is signed with the node's ed25519 key, and a
//! receiver takes a message only when the signature verifies against a key it trusts *for
//! the node the message claims to come from*. Messages from a name it trusts no key for are
//! refused, commands and events alike: a fleet fails closed. Keys use the NKey text form
//! (`U...` public keys, `SU...` seeds) through the `nkeys` crate, which nats already needs.
//!
//! The signature travels in NATS headers and covers the payload's exact bytes (id, sender,
//! content) with nothing to canonicalise, plus where the message goes and what it answers:
//!
//! ```text
//! Steward-Sent: <milliseconds since the epoch, the sender's clock>
//! Steward-Seq:  <the sender's counter: it only moves forward, across restarts>
//! Steward-Key:  <the signer's public key>
//! Steward-Sig:  hex(ed25519("steward-v2\n" + Sent + "\n" + Seq + "\n" + subject + "\n"
//!                           + reply subject + "\n" + answers + "\n" + payload))
//! ```
//!
//! A batch of events (hundreds of kilobytes) is signed over a digest of its payload
//! instead, once its receiver has said it checks such signatures (`digestSig` in its answer
//! to a batch: nodes from session 29 on): ed25519 hashes what it signs twice, and SHA-512
//! of the payload was the largest part of a batch's cost on both sides; SHA-256 once is a
//! fraction of it (with the SHA instructions of most x86 CPUs and ARMv8). Its own header
//! says so, and its domain differs, so neither form can stand for the other, nor a
//! header added or taken off make one verify as the other:
//!
//! ```text
//! Steward-Digest: sha256
//! Steward-Sig:    hex(ed25519("steward-v3\n" + Sent + "\n" + Seq + "\n" + subject + "\n"
//!                             + reply subject + "\n" + answers + "\n" + SHA-256(payload)))
//! ```
//!
//! A reply is signed the way its request was.
//!
//! `subject` and `reply subject` are those the message is published with, so a signed
//! message cannot be moved to another subject, nor its answer sent somewhere else.
//! `answers` is empty on a request; on a reply it is the signature (hex) of the request it
//! answers, so a sender takes only a reply made for its own attempt, never one a hostile
//! node coaxed out of the destination with a tampered copy.
//!
//! # Replays
//!
//! A retry is signed afresh, with a new time and a new counter. A receiver takes a
//! request only if its counter is new for that sender (the highest seen, persisted in
//! `keys/senders.json`, and which of the 1,024 below it were taken), and, as a second
//! check, if its sending time is within the replay window of the receiver's clock. A
//! Raspberry Pi without a real-time clock can be a month behind until NTP answers, so the
//! time check follows `--clockCheck`: `auto` (the default) checks it only while the kernel
//! says the clock is synchronized; `off` never; `on` always. The counter alone refuses a
//! replay either way. Counters are tracked per sender *and key*, so a stolen key that
//! pushed its counter to the end locks out only itself, not the key its node gets next.
//! Behind all that, the record of (sender, id) never runs a message twice.
//!
//! The data folder's `keys/` holds:
//! - `node.seed`: this node's seed, created on first start (or `steward keys generate`),
//!   mode 0600; a seed readable by others is refused. `node.pub` beside it is its public
//!   key, for `steward keys show` without access to the seed. `counter` is the highest
//!   counter this node may have used (reserved ahead, a block at a time).
//! - `trusted.txt`: keys the operator pinned, one `node KEY` per line (`steward keys trust`).
//!   Re-read when it changes, no restart needed.
//! - `revoked.txt`: keys the operator revoked (`steward keys revoke NODE`), one `node KEY`
//!   per line; a revoked key is never trusted again, whoever distributes it.
//! - `distributed.json`: the set the central node last sent with the `TrustedKeys` method,
//!   replaced only by a newer one; it may carry revocations too.
//!
//! In their own files: `identity` (this node's key, its counter, sealing what it sends),
//! `trusted` (the keys it trusts, checking signatures and freshness, trust and revocation),
//! `error`.

use crate::files;
use crate::subject::{validate_name, NameError};
use nkeys::{KeyPair, KeyPairType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

mod error;
mod identity;
#[cfg(test)]
mod tests;
mod trusted;

pub use error::Error;
use error::{read_error, write_error};
pub use identity::{Identity, Sealed};
pub use trusted::*;

pub const SENT: &str = "Steward-Sent";
pub const SEQ: &str = "Steward-Seq";
pub const KEY: &str = "Steward-Key";
pub const SIG: &str = "Steward-Sig";
/// Present (`sha256`) when the signature covers a digest of the payload ([`Covers::Digest`]).
pub const DIGEST: &str = "Steward-Digest";
const DIGEST_SHA256: &str = "sha256";
const DOMAIN: &[u8] = b"steward-v2\n";
const DOMAIN_DIGEST: &[u8] = b"steward-v3\n";

/// What of the payload a signature covers (see the module docs). Ordered by what a
/// receiver must know to check it: every node checks [`Covers::Payload`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Covers {
    /// Its bytes (every message; what every node checks).
    #[default]
    Payload,
    /// Their SHA-256 digest (a batch, to a node that said it checks these).
    Digest,
}
/// Counters reserved at a time: one write of `keys/counter` per this many messages.
pub(super) const COUNTER_BLOCK: u64 = 1 << 16;
/// How many counters below a sender's highest a receiver tracks one by one.
pub(super) const SEQ_WINDOW: u64 = 1024;

pub(super) fn seed_path(dir: &Path) -> PathBuf {
    dir.join("node.seed")
}
pub(super) fn public_path(dir: &Path) -> PathBuf {
    dir.join("node.pub")
}
pub(super) fn trusted_path(dir: &Path) -> PathBuf {
    dir.join("trusted.txt")
}
pub(super) fn revoked_path(dir: &Path) -> PathBuf {
    dir.join("revoked.txt")
}
pub(super) fn distributed_path(dir: &Path) -> PathBuf {
    dir.join("distributed.json")
}
pub(super) fn counter_path(dir: &Path) -> PathBuf {
    dir.join("counter")
}
pub(super) fn senders_path(dir: &Path) -> PathBuf {
    dir.join("senders.json")
}

/// What a signature binds besides the payload: where the message goes, where its answer
/// goes, and (on a reply) the signature of the request it answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub subject: &'a str,
    pub reply: Option<&'a str>,
    pub answers: Option<&'a str>,
}

impl<'a> Scope<'a> {
    /// A request published on `subject`, answered on `reply`.
    pub fn request(subject: &'a str, reply: Option<&'a str>) -> Scope<'a> {
        Scope {
            subject,
            reply,
            answers: None,
        }
    }

    /// A reply published on `subject`, answering the request signed `answers`.
    pub fn reply(subject: &'a str, answers: &'a str) -> Scope<'a> {
        Scope {
            subject,
            reply: None,
            answers: Some(answers),
        }
    }
}

/// A message's signature, once it verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The sender's clock when it signed, in milliseconds since the epoch.
    pub sent: u64,
    /// The sender's counter.
    pub seq: u64,
    /// The signature, hex: what a reply to this message names in its `answers`.
    pub sig: String,
    /// The key that signed it.
    pub key: String,
    /// What of the payload it covers: a reply to it is signed the same way.
    pub covers: Covers,
}

pub(super) fn signed_bytes(
    sent: &str,
    seq: &str,
    scope: Scope<'_>,
    payload: &[u8],
    covers: Covers,
) -> Vec<u8> {
    let parts = [
        sent,
        seq,
        scope.subject,
        scope.reply.unwrap_or(""),
        scope.answers.unwrap_or(""),
    ];
    let (domain, covered) = match covers {
        Covers::Payload => (DOMAIN, None),
        Covers::Digest => {
            use sha2::Digest;
            (DOMAIN_DIGEST, Some(sha2::Sha256::digest(payload)))
        }
    };
    let body = covered.as_ref().map_or(payload, |d| d.as_slice());
    let mut v = Vec::with_capacity(domain.len() + 256 + body.len());
    v.extend_from_slice(domain);
    for part in parts {
        v.extend_from_slice(part.as_bytes());
        v.push(b'\n');
    }
    v.extend_from_slice(body);
    v
}

/// What [`Identity::vouch`] signs: `what`, in a domain of its own.
pub(super) fn vouched_bytes(what: &[u8]) -> Vec<u8> {
    let mut v = b"steward-vouch-v1\n".to_vec();
    v.extend_from_slice(what);
    v
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// 128 random bits from the kernel, hex: the unguessable part of every message id.
pub fn random_hex128() -> String {
    random_hex128s(1).pop().expect("one asked for")
}

/// `n` of [`random_hex128`], from one `getrandom` call (a batch's message ids).
pub fn random_hex128s(n: usize) -> Vec<String> {
    let mut buf = vec![0u8; 16 * n];
    // getrandom(2) blocks until the pool is ready and cannot otherwise fail on a kernel
    // that has it (3.17+); without randomness no id would be safe.
    if let Err(e) = crate::sys::getrandom(&mut buf) {
        panic!("getrandom failed: {e}");
    }
    buf.chunks(16).map(hex).collect()
}

/// Records, beside the key (`node.name`), the name the agent runs under: `steward keys`
/// run in the data folder names the node by it (its own flags, variables and config file
/// may not say it: an agent started with `--node=central` on its command line, and `keys
/// show` named it by the host name, `keys distribute` handed central's key to the fleet as
/// the host's).
pub fn record_name(dir: &Path, name: &str) -> io::Result<()> {
    if recorded_name(dir).as_deref() == Some(name) {
        return Ok(());
    }
    crate::files::write_atomically(&dir.join("node.name"), format!("{name}\n").as_bytes())
}

/// The name the agent of this key last ran under ([`record_name`]), if it is known.
pub fn recorded_name(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join("node.name")).ok()?;
    let name = text.trim();
    crate::subject::validate_name(name).ok()?;
    Some(name.to_string())
}

/// This node's public key, from `node.pub` (readable without the seed).
pub fn public_key(dir: &Path) -> Result<String, Error> {
    let path = public_path(dir);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NoKey { path }),
        Err(e) => Err(read_error(&path)(e)),
    }
}

/// Checks that `key` is a public key of a node (`U...`).
pub fn validate_public_key(key: &str) -> Result<(), Error> {
    match KeyPair::from_public_key(key) {
        Ok(p) if p.key_pair_type() == KeyPairType::User => Ok(()),
        Ok(_) => Err(Error::NotANodeKey {
            key: key.to_string(),
        }),
        Err(source) => Err(Error::NotAKey {
            key: key.to_string(),
            source,
        }),
    }
}
