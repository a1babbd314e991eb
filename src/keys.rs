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

pub const SENT: &str = "Steward-Sent";
pub const SEQ: &str = "Steward-Seq";
pub const KEY: &str = "Steward-Key";
pub const SIG: &str = "Steward-Sig";
const DOMAIN: &[u8] = b"steward-v2\n";
/// Counters reserved at a time: one write of `keys/counter` per this many messages.
const COUNTER_BLOCK: u64 = 1 << 16;
/// How many counters below a sender's highest a receiver tracks one by one.
const SEQ_WINDOW: u64 = 1024;

fn seed_path(dir: &Path) -> PathBuf {
    dir.join("node.seed")
}
fn public_path(dir: &Path) -> PathBuf {
    dir.join("node.pub")
}
fn trusted_path(dir: &Path) -> PathBuf {
    dir.join("trusted.txt")
}
fn revoked_path(dir: &Path) -> PathBuf {
    dir.join("revoked.txt")
}
fn distributed_path(dir: &Path) -> PathBuf {
    dir.join("distributed.json")
}
fn counter_path(dir: &Path) -> PathBuf {
    dir.join("counter")
}
fn senders_path(dir: &Path) -> PathBuf {
    dir.join("senders.json")
}

/// Why this node's key, or the keys it trusts, could not be loaded, changed or taken. Each
/// says which file, line, node or key; the texts are what `steward keys` and the start-up
/// error show the operator, with what to do where there is something to do.
#[derive(Debug)]
pub enum Error {
    /// A file in `keys/` could not be read.
    Read { path: PathBuf, source: io::Error },
    /// A file in `keys/` could not be written (a full disk, a read-only folder).
    Write { path: PathBuf, source: io::Error },
    /// The keys folder could not be created.
    CreateDir { path: PathBuf, source: io::Error },
    /// The keys folder could not be made private (0700).
    Restrict { path: PathBuf, source: io::Error },
    /// What is wrong is in this file.
    In { path: PathBuf, source: Box<Error> },
    /// `keys/counter` does not hold a number.
    Counter {
        path: PathBuf,
        source: std::num::ParseIntError,
    },
    /// `keys/node.seed` can be read by others than its owner (`mode`, its permission bits).
    SeedExposed { path: PathBuf, mode: u32 },
    /// `steward keys generate` without `--force`, and a seed already there.
    SeedExists { path: PathBuf },
    /// `keys/node.pub` does not exist: this node has no key yet.
    NoKey { path: PathBuf },
    /// Not an NKey seed.
    Seed(nkeys::error::Error),
    /// An NKey seed, but not of a user (`SU…`).
    NotUserSeed,
    /// A new seed could not be encoded.
    NewSeed(nkeys::error::Error),
    /// Not an NKey public key.
    NotAKey {
        key: String,
        source: nkeys::error::Error,
    },
    /// A public key, but not of a node (`U…`).
    NotANodeKey { key: String },
    /// A node name that could not be a node's.
    Name(NameError),
    /// `trusted.txt` or `revoked.txt`: what is wrong on this line (counting from 1).
    Line { line: usize, source: Box<Error> },
    /// A line of `trusted.txt` or `revoked.txt` that is not `node KEY`.
    NotNodeKey { found: String },
    /// A `TrustedKeys` set (or `distributed.json`) that is not one.
    NotKeySet(serde_json::Error),
    /// A key a set lists for `node` is not a node's key.
    KeyOf { node: String, source: Box<Error> },
    /// `keys/senders.json` is not what steward writes.
    Senders {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A distributed set not newer than the one held (both issued at, ms since the epoch).
    NotNewer { issued: u64, held: u64 },
    /// A distributed set binding a key to a name only this node's operator pins.
    Rebinds { node: String },
    /// A distributed set revoking a key this node's operator pinned for such a name.
    RevokesPinned { key: String },
    /// `steward keys trust` of a key revoked here (listed in `path`).
    Revoked { key: String, path: PathBuf },
    /// `steward keys revoke` of a node this node trusts no key for.
    NoKeyFor { node: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Read { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Write { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
            Error::CreateDir { path, source } => {
                write!(f, "cannot create {}: {source}", path.display())
            }
            Error::Restrict { path, source } => {
                write!(f, "cannot restrict {}: {source}", path.display())
            }
            Error::In { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Counter { path, source } => write!(
                f,
                "{}: not a counter ({source}); delete it to start anew",
                path.display()
            ),
            Error::SeedExposed { path, mode } => write!(
                f,
                "{} can be read by others (mode {mode:o}); run: chmod 600 {}",
                path.display(),
                path.display()
            ),
            Error::SeedExists { path } => write!(
                f,
                "{} already exists; give --force to replace it (nodes trusting the old key will refuse this one's messages until they trust the new key)",
                path.display()
            ),
            Error::NoKey { path } => write!(
                f,
                "{} does not exist: this node has no key yet (start the agent, or run `steward keys generate`)",
                path.display()
            ),
            Error::Seed(e) => write!(f, "not a valid seed: {e}"),
            Error::NotUserSeed => f.write_str("not a user seed (it must start with SU)"),
            Error::NewSeed(e) => write!(f, "cannot encode the new seed: {e}"),
            Error::NotAKey { key, source } => write!(f, "{key:?} is not a public key: {source}"),
            Error::NotANodeKey { key } => write!(
                f,
                "{key:?} is not a node's public key (those start with U)"
            ),
            Error::Name(e) => write!(f, "bad node name: {e}"),
            Error::Line { line, source } => write!(f, "line {line}: {source}"),
            Error::NotNodeKey { found } => write!(f, "expected \"node KEY\", found {found:?}"),
            Error::NotKeySet(e) => write!(f, "not a trusted-keys set: {e}"),
            Error::KeyOf { node, source } => write!(f, "key of {node}: {source}"),
            Error::Senders { path, source } => write!(f, "{}: {source}", path.display()),
            Error::NotNewer { issued, held } => write!(
                f,
                "this set was issued at {}, not after the one held (issued at {}); not replaced",
                files::rfc3339(*issued),
                files::rfc3339(*held)
            ),
            Error::Rebinds { node } => write!(
                f,
                "the set binds a key to {node}, whose keys only this node's operator may pin (steward keys trust); not taken"
            ),
            Error::RevokesPinned { key } => write!(
                f,
                "the set revokes {key}, which this node's operator pinned for a node only the operator speaks for; not taken"
            ),
            Error::Revoked { key, path } => write!(
                f,
                "{key} was revoked on this node; remove its line from {} first",
                path.display()
            ),
            Error::NoKeyFor { node } => write!(f, "this node trusts no key for {node}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Read { source, .. }
            | Error::Write { source, .. }
            | Error::CreateDir { source, .. }
            | Error::Restrict { source, .. } => Some(source),
            Error::In { source, .. } | Error::Line { source, .. } | Error::KeyOf { source, .. } => {
                Some(source)
            }
            Error::Counter { source, .. } => Some(source),
            Error::Seed(e) | Error::NewSeed(e) | Error::NotAKey { source: e, .. } => Some(e),
            Error::Name(e) => Some(e),
            Error::NotKeySet(e) | Error::Senders { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl Error {
    /// This error, as found in the file at `path`.
    fn in_file(self, path: &Path) -> Error {
        Error::In {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }
}

/// A read of `path` that failed.
fn read_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// A write of `path` that failed.
fn write_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_path_buf(),
        source,
    }
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
}

/// Headers that sign a message, and the signature they carry.
pub struct Sealed {
    pub headers: nats::HeaderMap,
    pub sig: String,
}

/// This node's key pair, and its counter.
pub struct Identity {
    pair: KeyPair,
    public: String,
    counter: Counter,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public)
    }
}

/// The signing counter: only moves forward, across restarts. It starts at the larger of
/// the reserved ceiling in `keys/counter` and the clock in microseconds (so a node whose
/// `counter` file was lost still moves forward if its clock is right), and reserves
/// [`COUNTER_BLOCK`] values at a time, written (and synced) before any is used.
struct Counter {
    path: Option<PathBuf>,
    /// (next value, reserved ceiling)
    state: Mutex<(u64, u64)>,
}

impl Counter {
    fn open(path: Option<PathBuf>) -> Result<Counter, Error> {
        let stored = match &path {
            Some(p) => match fs::read_to_string(p) {
                Ok(text) => text
                    .trim()
                    .parse::<u64>()
                    .map_err(|source| Error::Counter {
                        path: p.clone(),
                        source,
                    })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                Err(e) => return Err(read_error(p)(e)),
            },
            None => 0,
        };
        let next = stored.max(files::unix_millis().saturating_mul(1000));
        let counter = Counter {
            path,
            state: Mutex::new((next, next)),
        };
        if let Err(e) = counter.reserve(next) {
            // A full disk must not stop the agent (the command that frees it must get
            // through): the block is reserved in memory, and written when it can be.
            log::error!("signing counter: {e}");
            counter.state.lock().unwrap_or_else(|p| p.into_inner()).1 =
                next.saturating_add(COUNTER_BLOCK);
        }
        Ok(counter)
    }

    fn reserve(&self, from: u64) -> Result<(), Error> {
        let ceiling = from.saturating_add(COUNTER_BLOCK);
        if let Some(p) = &self.path {
            files::write_atomically(p, format!("{ceiling}\n").as_bytes())
                .map_err(write_error(p))?;
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = ceiling;
        Ok(())
    }

    fn next(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 >= state.1 {
            let from = state.0;
            drop(state);
            if let Err(e) = self.reserve(from) {
                // Signing goes on; after a restart, receivers may refuse this node's first
                // messages as replays until its counter passes what they saw.
                log::error!("signing counter: {e}");
                self.state.lock().unwrap_or_else(|p| p.into_inner()).1 =
                    from.saturating_add(COUNTER_BLOCK);
            }
            state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        }
        let seq = state.0;
        state.0 += 1;
        seq
    }
}

impl Identity {
    /// Loads `keys/node.seed`, creating it (0600, in a 0700 folder) if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Identity, Error> {
        match Identity::load(dir) {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => Identity::generate(dir, false),
            Err(e) => Err(e),
        }
    }

    /// Loads `keys/node.seed` if it exists. A seed that others can read is refused: it
    /// would let them sign as this node.
    pub fn load(dir: &Path) -> Result<Option<Identity>, Error> {
        let path = seed_path(dir);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(&path)(e)),
        };
        if meta.mode() & 0o077 != 0 {
            return Err(Error::SeedExposed {
                path,
                mode: meta.mode() & 0o777,
            });
        }
        let text = fs::read_to_string(&path).map_err(read_error(&path))?;
        Identity::with_counter(text.trim(), Some(counter_path(dir)))
            .map(Some)
            .map_err(|e| e.in_file(&path))
    }

    /// Makes a new key pair and writes its seed; an existing seed is replaced only with
    /// `force` (every node that trusts the old key must then be given the new one).
    pub fn generate(dir: &Path, force: bool) -> Result<Identity, Error> {
        let path = seed_path(dir);
        fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
            Error::Restrict {
                path: dir.to_path_buf(),
                source,
            }
        })?;
        if path.exists() && !force {
            return Err(Error::SeedExists { path });
        }
        let pair = KeyPair::new(KeyPairType::User);
        let seed = pair.seed().map_err(Error::NewSeed)?;
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| Error::CreateDir {
                path: tmp.clone(),
                source,
            })?;
        f.write_all(format!("{seed}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .and_then(|()| fs::rename(&tmp, &path))
            .and_then(|()| {
                files::write_atomically(
                    &public_path(dir),
                    format!("{}\n", pair.public_key()).as_bytes(),
                )
            })
            .map_err(write_error(&path))?;
        log::info!(
            "created this node's signing key {}: public key {}",
            path.display(),
            pair.public_key()
        );
        Identity::with_counter(&seed, Some(counter_path(dir)))
    }

    /// An identity from a seed alone, its counter kept in memory (tests, tools).
    pub fn from_seed(seed: &str) -> Result<Identity, Error> {
        Identity::with_counter(seed, None)
    }

    fn with_counter(seed: &str, counter: Option<PathBuf>) -> Result<Identity, Error> {
        let pair = KeyPair::from_seed(seed).map_err(Error::Seed)?;
        if pair.key_pair_type() != KeyPairType::User {
            return Err(Error::NotUserSeed);
        }
        Ok(Identity {
            public: pair.public_key(),
            pair,
            counter: Counter::open(counter)?,
        })
    }

    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The headers that sign `payload` as sent now, in `scope`.
    pub fn seal(&self, scope: Scope<'_>, payload: &[u8]) -> Sealed {
        self.seal_at(scope, payload, files::unix_millis())
    }

    /// As [`Identity::seal`], with the sending time given (tests forge old messages).
    pub fn seal_at(&self, scope: Scope<'_>, payload: &[u8], sent: u64) -> Sealed {
        let sent = sent.to_string();
        let seq = self.counter.next().to_string();
        let sig = self
            .pair
            .sign(&signed_bytes(&sent, &seq, scope, payload))
            .expect("a key pair made from a seed can always sign");
        let sig = hex(&sig);
        let mut headers = nats::HeaderMap::new();
        headers.insert(SENT, sent);
        headers.insert(SEQ, seq);
        headers.insert(KEY, self.public.clone());
        headers.insert(SIG, sig.clone());
        Sealed { headers, sig }
    }
}

fn signed_bytes(sent: &str, seq: &str, scope: Scope<'_>, payload: &[u8]) -> Vec<u8> {
    let parts = [
        sent,
        seq,
        scope.subject,
        scope.reply.unwrap_or(""),
        scope.answers.unwrap_or(""),
    ];
    let mut v = Vec::with_capacity(DOMAIN.len() + 256 + payload.len());
    v.extend_from_slice(DOMAIN);
    for part in parts {
        v.extend_from_slice(part.as_bytes());
        v.push(b'\n');
    }
    v.extend_from_slice(payload);
    v
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
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
    let mut buf = [0u8; 16];
    // getrandom(2) blocks until the pool is ready and cannot otherwise fail on a kernel
    // that has it (3.17+); without randomness no id would be safe.
    if let Err(e) = crate::sys::getrandom(&mut buf) {
        panic!("getrandom failed: {e}");
    }
    hex(&buf)
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

/// Why a message's signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverified {
    /// No signature at all.
    Unsigned,
    /// Signed, but this node trusts no key for the claimed sender.
    UnknownSender { key: String },
    /// Signed and wrong: a forgery, a key of someone else, a revoked key, a damaged
    /// message.
    Bad(String),
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unverified::Unsigned => write!(f, "not signed"),
            Unverified::UnknownSender { key } => {
                write!(
                    f,
                    "signed with key {key}, but no key is trusted for its sender"
                )
            }
            Unverified::Bad(why) => write!(f, "{why}"),
        }
    }
}

/// When the sending time of a request is checked against this node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockCheck {
    /// While the kernel says the clock is synchronized.
    #[default]
    Auto,
    On,
    Off,
}

impl ClockCheck {
    pub fn parse(s: &str) -> Option<ClockCheck> {
        match s {
            "auto" => Some(ClockCheck::Auto),
            "on" => Some(ClockCheck::On),
            "off" => Some(ClockCheck::Off),
            _ => None,
        }
    }

    fn applies(self) -> bool {
        match self {
            ClockCheck::Auto => crate::sys::clock_synchronized(),
            ClockCheck::On => true,
            ClockCheck::Off => false,
        }
    }
}

/// A set of trusted keys by node, in the form `TrustedKeys` carries and
/// `keys/distributed.json` keeps.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    /// When the set was made (milliseconds since the epoch); an older set never replaces
    /// a newer one.
    pub issued: u64,
    /// Node name → its public keys.
    pub keys: BTreeMap<String, Vec<String>>,
    /// Node name → keys revoked: never trusted again, whoever else lists them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revoked: BTreeMap<String, Vec<String>>,
}

impl KeySet {
    pub fn parse(text: &str) -> Result<KeySet, Error> {
        let set: KeySet = serde_json::from_str(text).map_err(Error::NotKeySet)?;
        for (node, keys) in set.keys.iter().chain(&set.revoked) {
            validate_name(node).map_err(Error::Name)?;
            for key in keys {
                validate_public_key(key).map_err(|e| Error::KeyOf {
                    node: node.clone(),
                    source: Box::new(e),
                })?;
            }
        }
        Ok(set)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a KeySet always serializes")
    }

    fn add(&mut self, node: &str, key: &str) {
        let keys = self.keys.entry(node.to_string()).or_default();
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_string());
        }
    }

    fn has(&self, node: &str, key: &str) -> bool {
        self.keys
            .get(node)
            .is_some_and(|k| k.iter().any(|k| k == key))
    }
}

/// The keys this node trusts: its own, the operator's `trusted.txt`, and the set last
/// distributed by central, less every revoked key. The files are re-read when they
/// change.
pub struct Trusted {
    dir: PathBuf,
    own: (String, String),
    /// Names whose keys only this node's operator pins (the central node, the senders
    /// allowed to send commands, this node): a distributed set never speaks for them.
    protected: Vec<String>,
    inner: Mutex<Loaded>,
    senders: Mutex<Senders>,
}

#[derive(Default)]
struct Loaded {
    /// (modified time, length) of trusted.txt, revoked.txt and distributed.json when
    /// last read.
    stamps: [Option<(SystemTime, u64)>; 3],
    pinned: KeySet,
    revoked: KeySet,
    distributed: KeySet,
}

impl Loaded {
    /// A revoked key is revoked whichever node it is listed for.
    fn is_revoked(&self, key: &str) -> bool {
        [&self.revoked.keys, &self.distributed.revoked]
            .iter()
            .any(|m| m.values().flatten().any(|k| k == key))
    }

    /// Whether `key` is pinned by the operator for any of `names`.
    fn pinned_for_any(&self, names: &[String], key: &str) -> bool {
        names.iter().any(|n| self.pinned.has(n, key))
    }
}

/// What each trusted sender's key last sent, for replay refusal: persisted in
/// `keys/senders.json` at most once a second (and at shutdown). Holds only senders whose
/// signature verified, so it is bounded by the trusted keys. A counter taken in the last
/// second before a crash is not in the file; the receiver's (sender, id) records, fsync'd
/// before any message runs and kept for at least the last [`SEQ_WINDOW`] ids of each
/// sender, refuse that message instead (see [`crate::received`]).
#[derive(Default)]
struct Senders {
    /// By "sender key".
    by_key: HashMap<String, SenderWindow>,
    dirty: bool,
    written: Option<Instant>,
    /// The last write failed (said once).
    failing: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct SenderWindow {
    /// The highest counter taken.
    high: u64,
    /// Which of the [`SEQ_WINDOW`] counters below `high` were taken (bit i: high - 1 - i).
    /// Not persisted: after a restart, everything at or below `high` counts as taken.
    #[serde(skip, default = "all_taken")]
    below: [u64; (SEQ_WINDOW / 64) as usize],
}

fn all_taken() -> [u64; (SEQ_WINDOW / 64) as usize] {
    [u64::MAX; (SEQ_WINDOW / 64) as usize]
}

impl SenderWindow {
    /// Takes counter `seq` if it is new; false if it was taken, or is too far below.
    fn take(&mut self, seq: u64) -> Result<(), NotFresh> {
        if seq > self.high {
            let shift = seq - self.high;
            let mut below = [0u64; (SEQ_WINDOW / 64) as usize];
            // Bit i moves to i + shift; the old `high` itself becomes bit shift - 1.
            for i in 0..SEQ_WINDOW.saturating_sub(shift) {
                if self.bit(i) {
                    set_bit(&mut below, i + shift);
                }
            }
            if self.high > 0 && shift <= SEQ_WINDOW {
                set_bit(&mut below, shift - 1);
            }
            self.below = below;
            self.high = seq;
            return Ok(());
        }
        if seq == self.high {
            return Err(NotFresh::Taken);
        }
        let i = self.high - 1 - seq;
        if i >= SEQ_WINDOW {
            return Err(NotFresh::BelowWindow {
                seq,
                high: self.high,
            });
        }
        if self.bit(i) {
            return Err(NotFresh::Taken);
        }
        set_bit(&mut self.below, i);
        Ok(())
    }

    fn bit(&self, i: u64) -> bool {
        self.below[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
}

fn set_bit(bits: &mut [u64], i: u64) {
    bits[(i / 64) as usize] |= 1 << (i % 64);
}

/// Why a verified request is not fresh: a replay, or a clock to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotFresh {
    /// Its sending time (ms since the epoch) is outside the replay window of this node's
    /// clock (`now`), while the clock is checked.
    OutsideWindow {
        sent: u64,
        now: u64,
        window: Duration,
    },
    /// Its counter was taken before from this sender's key.
    Taken,
    /// Its counter is further below the highest taken than the counters tracked one by one.
    BelowWindow { seq: u64, high: u64 },
}

impl fmt::Display for NotFresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotFresh::OutsideWindow { sent, now, window } => write!(
                f,
                "sent at {}, outside this node's replay window of {}s (its clock says {}): a replay, or a clock to fix (or --clockCheck=off on a node without a reliable clock)",
                files::rfc3339(*sent),
                window.as_secs(),
                files::rfc3339(*now)
            ),
            NotFresh::Taken => f.write_str("a replay: this counter was taken before"),
            NotFresh::BelowWindow { seq, high } => write!(
                f,
                "its counter {seq} is more than {SEQ_WINDOW} below the highest taken from this sender ({high}): a replay"
            ),
        }
    }
}

impl std::error::Error for NotFresh {}

impl Trusted {
    /// Opens the trust store of node `own_name` (whose own key is always trusted). A bad
    /// `trusted.txt` is an error here, at start; later, a bad edit keeps the last good set.
    pub fn open(dir: &Path, own_name: &str, own_key: &str) -> Result<Trusted, Error> {
        let path = senders_path(dir);
        let senders = match fs::read(&path) {
            Ok(bytes) => Senders {
                by_key: serde_json::from_slice(&bytes).map_err(|source| Error::Senders {
                    path: path.clone(),
                    source,
                })?,
                ..Senders::default()
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Senders::default(),
            Err(e) => return Err(read_error(&path)(e)),
        };
        let trusted = Trusted {
            dir: dir.to_path_buf(),
            own: (own_name.to_string(), own_key.to_string()),
            protected: vec![own_name.to_string()],
            inner: Mutex::new(Loaded::default()),
            senders: Mutex::new(senders),
        };
        trusted.refresh()?;
        Ok(trusted)
    }

    /// Names whose keys only this node's operator pins: for them, keys in a distributed set
    /// are never trusted (whenever the set came, and whatever the operator pinned since),
    /// and a distributed revocation never touches their pinned keys. This node's own name
    /// always is.
    pub fn protecting(mut self, names: impl IntoIterator<Item = String>) -> Trusted {
        for name in names {
            if !self.protected.contains(&name) {
                self.protected.push(name);
            }
        }
        self
    }

    fn is_protected(&self, node: &str) -> bool {
        self.protected.iter().any(|p| p == node)
    }

    /// Re-reads whichever file changed since it was last read.
    fn refresh(&self) -> Result<(), Error> {
        let mut loaded = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let paths = [
            trusted_path(&self.dir),
            revoked_path(&self.dir),
            distributed_path(&self.dir),
        ];
        for (i, path) in paths.iter().enumerate() {
            let stamp = fs::metadata(path)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            if stamp == loaded.stamps[i] {
                continue;
            }
            loaded.stamps[i] = stamp;
            let text = match fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(read_error(path)(e)),
            };
            let parsed = match i {
                0 | 1 => parse_key_lines(&text),
                // Deleted by the operator: the distributed keys are no longer trusted.
                _ if text.is_empty() => Ok(KeySet::default()),
                _ => KeySet::parse(&text),
            }
            .map_err(|e| e.in_file(path))?;
            match i {
                0 => loaded.pinned = parsed,
                1 => loaded.revoked = parsed,
                _ => loaded.distributed = parsed,
            }
        }
        Ok(())
    }

    fn refreshed(&self) -> std::sync::MutexGuard<'_, Loaded> {
        if let Err(e) = self.refresh() {
            log::error!("keeping the keys trusted before: {e}");
        }
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key` is trusted for `node`, and whether any key is.
    fn lookup(&self, node: &str, key: &str) -> (bool, bool) {
        if node == self.own.0 && key == self.own.1 {
            return (true, true);
        }
        let loaded = self.refreshed();
        let sources: &[&KeySet] = if self.is_protected(node) {
            &[&loaded.pinned]
        } else {
            &[&loaded.pinned, &loaded.distributed]
        };
        // A protected name's keys are revoked only by this node's operator.
        let revoked = |k: &str| match self.is_protected(node) {
            true => loaded.revoked.keys.values().flatten().any(|r| r == k),
            false => loaded.is_revoked(k),
        };
        let keys: Vec<&String> = sources
            .iter()
            .filter_map(|s| s.keys.get(node))
            .flatten()
            .filter(|k| !revoked(k))
            .collect();
        let known = !keys.is_empty() || node == self.own.0;
        (keys.iter().any(|k| *k == key), known)
    }

    /// Whether this node trusts any key for `node`.
    pub fn knows(&self, node: &str) -> bool {
        node == self.own.0 || self.lookup(node, "").1
    }

    /// Checks the signature on a message claiming to come from `from`, published in
    /// `scope`. Says nothing of freshness: see [`Trusted::fresh`].
    pub fn verify(
        &self,
        from: &str,
        headers: Option<&nats::HeaderMap>,
        scope: Scope<'_>,
        payload: &[u8],
    ) -> Result<Signed, Unverified> {
        let get = |name: &str| headers.and_then(|h| h.get(name)).map(String::as_str);
        let (Some(sent), Some(seq), Some(key), Some(sig)) =
            (get(SENT), get(SEQ), get(KEY), get(SIG))
        else {
            return Err(Unverified::Unsigned);
        };
        let (trusted, known) = self.lookup(from, key);
        if !trusted {
            if self.refreshed().is_revoked(key) {
                return Err(Unverified::Bad(format!(
                    "signed with key {key}, which was revoked"
                )));
            }
            return Err(if known {
                Unverified::Bad(format!(
                    "signed with key {key}, which is not trusted for {from}"
                ))
            } else {
                Unverified::UnknownSender {
                    key: key.chars().take(64).collect(),
                }
            });
        }
        let (Ok(sent_ms), Ok(seq_n), Some(sig_bytes)) =
            (sent.parse::<u64>(), seq.parse::<u64>(), unhex(sig))
        else {
            return Err(Unverified::Bad("malformed signature headers".into()));
        };
        let ok = KeyPair::from_public_key(key)
            .and_then(|k| k.verify(&signed_bytes(sent, seq, scope, payload), &sig_bytes))
            .is_ok();
        if !ok {
            return Err(Unverified::Bad(format!(
                "the signature does not verify against {from}'s key {key}: forged, altered, or moved to another subject"
            )));
        }
        Ok(Signed {
            sent: sent_ms,
            seq: seq_n,
            // Canonical (lowercase), so a re-encoded copy names the same request.
            sig: hex(&sig_bytes),
            key: key.to_string(),
        })
    }

    /// Whether a verified request from `from` is fresh: its counter never taken before
    /// from that sender's key, and, while the clock is checked, its sending time within the
    /// window of this node's clock. Takes it if so.
    pub fn fresh(
        &self,
        from: &str,
        signed: &Signed,
        window: Duration,
        clock: ClockCheck,
    ) -> Result<(), NotFresh> {
        let window_ms = window.as_millis() as u64;
        let now = files::unix_millis();
        if clock.applies() && now.abs_diff(signed.sent) > window_ms {
            return Err(NotFresh::OutsideWindow {
                sent: signed.sent,
                now,
                window,
            });
        }
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        // By key, not by name alone: a stolen key that pushed its counter to the end
        // cannot lock out the key its node is given next.
        let window = senders
            .by_key
            .entry(format!("{from} {}", signed.key))
            .or_default();
        window.take(signed.seq)?;
        senders.dirty = true;
        Ok(())
    }

    /// Writes `keys/senders.json` if it changed and was not written within the last
    /// second (`force`: whatever the time, at shutdown). Returns whether changes are still
    /// unwritten (too soon, or the write failed): call again in a second.
    pub fn persist_senders(&self, force: bool) -> bool {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let recent = senders
            .written
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        if !senders.dirty || (recent && !force) {
            return senders.dirty;
        }
        let json = serde_json::to_vec(&senders.by_key).expect("a map of numbers serializes");
        let path = senders_path(&self.dir);
        let failing = senders.failing;
        senders.written = Some(Instant::now());
        match files::write_atomically(&path, &json) {
            Ok(()) => {
                senders.dirty = false;
                senders.failing = false;
            }
            // Said once: it is tried again every second (a full disk), and until it works
            // a restart forgets the last second's counters, which the id records cover.
            Err(e) if !failing => {
                senders.failing = true;
                log::error!("cannot write {}: {e}", path.display());
            }
            Err(_) => {}
        }
        senders.dirty
    }

    /// The set this node would hand on (`steward keys distribute`): the operator's pinned
    /// keys and its own, and the keys it revoked.
    pub fn distributable(&self) -> KeySet {
        let loaded = self.refreshed();
        let mut set = loaded.pinned.clone();
        set.add(&self.own.0, &self.own.1);
        set.revoked = loaded.revoked.keys.clone();
        for (node, keys) in &loaded.distributed.revoked {
            for key in keys {
                let list = set.revoked.entry(node.clone()).or_default();
                if !list.contains(key) {
                    list.push(key.clone());
                }
            }
        }
        set.issued = files::unix_millis();
        set
    }

    /// Takes a set distributed by central, if it is newer than the one held, binds no
    /// key to a `protected` name (the central node and every sender allowed to send
    /// commands here) that the operator has not pinned, and revives no revoked key;
    /// returns how many keys it holds.
    pub fn replace_distributed(&self, set: &KeySet) -> Result<usize, Error> {
        let path = distributed_path(&self.dir);
        {
            let loaded = self.refreshed();
            let held = loaded.distributed.issued;
            if set.issued <= held {
                return Err(Error::NotNewer {
                    issued: set.issued,
                    held,
                });
            }
            for (node, keys) in &set.keys {
                let own = |k: &String| node == &self.own.0 && k == &self.own.1;
                let rebinds = keys.iter().any(|k| !(loaded.pinned.has(node, k) || own(k)));
                if rebinds && self.is_protected(node) {
                    return Err(Error::Rebinds { node: node.clone() });
                }
            }
            for key in set.revoked.values().flatten() {
                if loaded.pinned_for_any(&self.protected, key) || key == &self.own.1 {
                    return Err(Error::RevokesPinned { key: key.clone() });
                }
            }
        }
        files::write_atomically(&path, set.to_json().as_bytes()).map_err(write_error(&path))?;
        self.refresh()?;
        Ok(set.keys.values().map(Vec::len).sum())
    }
}

/// `trusted.txt` and `revoked.txt`: `node KEY` per line; `#` starts a comment.
fn parse_key_lines(text: &str) -> Result<KeySet, Error> {
    let mut set = KeySet::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let on_line = |e| Error::Line {
            line: n + 1,
            source: Box::new(e),
        };
        let mut words = line.split_whitespace();
        let (Some(node), Some(key), None) = (words.next(), words.next(), words.next()) else {
            return Err(on_line(Error::NotNodeKey {
                found: line.to_string(),
            }));
        };
        validate_name(node).map_err(|e| on_line(Error::Name(e)))?;
        validate_public_key(key).map_err(on_line)?;
        set.add(node, key);
    }
    Ok(set)
}

/// Appends `node key` to one of the key-line files, with a header comment if it is new.
fn append_key_line(path: &Path, header: &str, node: &str, key: &str) -> Result<(), Error> {
    let existing = fs::read_to_string(path).unwrap_or_default();
    let set = parse_key_lines(&existing).map_err(|e| e.in_file(path))?;
    if set.has(node, key) {
        return Ok(());
    }
    let mut text = String::new();
    if existing.is_empty() {
        text.push_str(header);
    } else if !existing.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{node} {key}\n"));
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    files::append(path, text.as_bytes(), true).map_err(write_error(path))
}

/// `steward keys trust NODE KEY`: appends a line to `trusted.txt` (the agent picks it up).
pub fn trust(dir: &Path, node: &str, key: &str) -> Result<(), Error> {
    validate_name(node).map_err(Error::Name)?;
    validate_public_key(key)?;
    let revoked = revoked_path(dir);
    if let Ok(text) = fs::read_to_string(&revoked) {
        if parse_key_lines(&text)
            .map_err(|e| e.in_file(&revoked))?
            .keys
            .values()
            .flatten()
            .any(|k| k == key)
        {
            return Err(Error::Revoked {
                key: key.to_string(),
                path: revoked,
            });
        }
    }
    append_key_line(
        &trusted_path(dir),
        "# Keys this node trusts, one \"node KEY\" per line (steward keys trust NODE KEY).\n",
        node,
        key,
    )
}

/// `steward keys revoke NODE`: every key this node trusts for `node` (pinned or
/// distributed) goes to `revoked.txt`, and the pinned ones leave `trusted.txt`. Returns
/// the keys revoked. `steward keys distribute` then hands the revocation on.
pub fn revoke(dir: &Path, node: &str) -> Result<Vec<String>, Error> {
    validate_name(node).map_err(Error::Name)?;
    let read = |path: &Path| -> Result<KeySet, Error> {
        match fs::read_to_string(path) {
            Ok(text) if path.extension().is_some_and(|e| e == "json") => {
                KeySet::parse(&text).map_err(|e| e.in_file(path))
            }
            Ok(text) => parse_key_lines(&text).map_err(|e| e.in_file(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(KeySet::default()),
            Err(e) => Err(read_error(path)(e)),
        }
    };
    let pinned = read(&trusted_path(dir))?;
    let distributed = read(&distributed_path(dir))?;
    let keys: BTreeSet<String> = [&pinned, &distributed]
        .iter()
        .filter_map(|s| s.keys.get(node))
        .flatten()
        .cloned()
        .collect();
    if keys.is_empty() {
        return Err(Error::NoKeyFor {
            node: node.to_string(),
        });
    }
    for key in &keys {
        append_key_line(
            &revoked_path(dir),
            "# Keys this node never trusts again, one \"node KEY\" per line (steward keys revoke NODE).\n",
            node,
            key,
        )?;
    }
    // Out of trusted.txt too, keeping every other line as the operator wrote it.
    let path = trusted_path(dir);
    if let Ok(text) = fs::read_to_string(&path) {
        let kept: String = text
            .lines()
            .filter(|line| {
                let mut words = line.split('#').next().unwrap_or("").split_whitespace();
                words.next() != Some(node)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        files::write_atomically(&path, kept.as_bytes()).map_err(write_error(&path))?;
    }
    Ok(keys.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> (tempfile::TempDir, Identity, Trusted) {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::load_or_create(dir.path()).unwrap();
        let trusted = Trusted::open(dir.path(), name, me.public_key()).unwrap();
        (dir, me, trusted)
    }

    const SUBJECT: &str = "ship1.CommandACK.CLICommand";
    const INBOX: &str = "_INBOX.central.x.1";

    fn scope() -> Scope<'static> {
        Scope::request(SUBJECT, Some(INBOX))
    }

    #[test]
    fn the_seed_is_created_private_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(seed_path(dir.path())).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        assert!(Identity::generate(dir.path(), false).is_err());
        fs::set_permissions(seed_path(dir.path()), fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load(dir.path()).unwrap_err();
        assert!(matches!(e, Error::SeedExposed { mode: 0o644, .. }), "{e:?}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn the_counter_only_moves_forward_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let seq = |id: &Identity| -> u64 {
            id.seal(scope(), b"x")
                .headers
                .get(SEQ)
                .unwrap()
                .parse()
                .unwrap()
        };
        let first = Identity::load_or_create(dir.path()).unwrap();
        let a = seq(&first);
        let b = seq(&first);
        assert!(b > a);
        // A restart whose clock went back a year still counts up from the reserved ceiling.
        fs::write(counter_path(dir.path()), format!("{}\n", u64::MAX / 4)).unwrap();
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert!(seq(&again) >= u64::MAX / 4);
        // A block is reserved before it is used.
        let stored: u64 = fs::read_to_string(counter_path(dir.path()))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(stored > u64::MAX / 4);
    }

    #[test]
    fn a_signature_verifies_only_for_the_trusted_sender_content_and_subjects() {
        let (dir, _me, trusted) = store("ship1");
        let central = Identity::generate(&dir.path().join("c"), false).unwrap();
        let intruder = Identity::generate(&dir.path().join("i"), false).unwrap();
        let payload = br#"{"id":"1"}"#;
        let sealed = central.seal(scope(), payload);
        let h = Some(&sealed.headers);
        assert!(matches!(
            trusted.verify("central", h, scope(), payload),
            Err(Unverified::UnknownSender { .. })
        ));
        trust(dir.path(), "central", central.public_key()).unwrap();
        let signed = trusted.verify("central", h, scope(), payload).unwrap();
        assert_eq!(signed.sig, sealed.sig);
        let bad = |r: Result<Signed, Unverified>, why: &str| match r {
            Err(Unverified::Bad(e)) => assert!(e.contains(why), "{e}"),
            other => panic!("expected {why:?}, got {other:?}"),
        };
        bad(
            trusted.verify("central", h, scope(), br#"{"id":"2"}"#),
            "forged, altered",
        );
        // Moved to another subject, or its answer redirected: refused.
        let moved = Scope::request("ship2.CommandACK.CLICommand", Some(INBOX));
        bad(
            trusted.verify("central", h, moved, payload),
            "another subject",
        );
        let redirected = Scope::request(SUBJECT, Some("_INBOX.intruder.1"));
        bad(
            trusted.verify("central", h, redirected, payload),
            "another subject",
        );
        // A reply binds the request it answers.
        let reply = central.seal(Scope::reply(INBOX, &sealed.sig), b"r");
        assert!(trusted
            .verify(
                "central",
                Some(&reply.headers),
                Scope::reply(INBOX, &sealed.sig),
                b"r"
            )
            .is_ok());
        let other = central.seal(scope(), payload);
        bad(
            trusted.verify(
                "central",
                Some(&reply.headers),
                Scope::reply(INBOX, &other.sig),
                b"r",
            ),
            "forged",
        );
        let forged = intruder.seal(scope(), payload);
        bad(
            trusted.verify("central", Some(&forged.headers), scope(), payload),
            "not trusted for central",
        );
        assert_eq!(
            trusted.verify("central", None, scope(), payload),
            Err(Unverified::Unsigned)
        );
    }

    #[test]
    fn a_request_is_fresh_once_and_a_replay_is_refused_even_after_a_restart() {
        let (dir, _me, trusted) = store("ship1");
        let central = Identity::generate(&dir.path().join("c"), false).unwrap();
        trust(dir.path(), "central", central.public_key()).unwrap();
        let window = Duration::from_secs(300);
        let take = |t: &Trusted, sealed: &Sealed, clock| {
            let signed = t
                .verify("central", Some(&sealed.headers), scope(), b"m")
                .unwrap();
            t.fresh("central", &signed, window, clock)
        };
        let first = central.seal(scope(), b"m");
        let second = central.seal(scope(), b"m");
        // Out of order within the window is fine; the same one twice is not.
        assert_eq!(take(&trusted, &second, ClockCheck::On), Ok(()));
        assert_eq!(take(&trusted, &first, ClockCheck::On), Ok(()));
        assert_eq!(take(&trusted, &first, ClockCheck::On), Err(NotFresh::Taken));
        // Old by the clock: refused when the clock is checked.
        let old = central.seal_at(scope(), b"m", files::unix_millis() - 600_000);
        let e = take(&trusted, &old, ClockCheck::On).unwrap_err();
        assert!(matches!(e, NotFresh::OutsideWindow { .. }), "{e:?}");
        assert!(e.to_string().contains("replay window"), "{e}");
        // Unchecked clock: its counter is new, so it is taken (the time is not judged).
        let old = central.seal_at(scope(), b"m", files::unix_millis() - 600_000);
        assert_eq!(take(&trusted, &old, ClockCheck::Off), Ok(()));
        // A month in the future (this node's clock is behind): taken with the clock off.
        let ahead = central.seal_at(scope(), b"m", files::unix_millis() + 30 * 86_400_000);
        assert_eq!(take(&trusted, &ahead, ClockCheck::Off), Ok(()));
        // After a restart, what was taken stays taken.
        trusted.persist_senders(true);
        let reopened = Trusted::open(dir.path(), "ship1", _me.public_key()).unwrap();
        assert!(take(&reopened, &second, ClockCheck::Off).is_err());
        let third = central.seal_at(scope(), b"m", files::unix_millis() + 30 * 86_400_000);
        assert_eq!(take(&reopened, &third, ClockCheck::Off), Ok(()));
    }

    #[test]
    fn the_counter_window_tracks_each_counter_below_the_highest() {
        let mut w = SenderWindow::default();
        for seq in [5000, 4998, 4999, 5003, 5001] {
            assert_eq!(w.take(seq), Ok(()), "{seq}");
        }
        for seq in [4998, 4999, 5000, 5001, 5003] {
            assert!(w.take(seq).is_err(), "{seq} taken twice");
        }
        assert_eq!(w.take(5002), Ok(()));
        assert_eq!(w.take(5003 - SEQ_WINDOW), Ok(()), "the last in the window");
        assert!(w.take(5003 - SEQ_WINDOW - 1).is_err(), "below the window");
        assert_eq!(w.take(5003 + 5000), Ok(()));
        assert!(w.take(5003).is_err());
        // A jump of exactly the window's width keeps the old highest taken.
        let mut w = SenderWindow::default();
        assert_eq!(w.take(10_000), Ok(()));
        assert_eq!(w.take(10_000 + SEQ_WINDOW), Ok(()));
        assert!(w.take(10_000).is_err(), "the old highest was taken again");
    }

    #[test]
    fn key_line_errors_name_the_line() {
        let e = parse_key_lines("# trusted\ncentral UABC\n").unwrap_err();
        assert!(matches!(e, Error::Line { line: 2, .. }), "{e:?}");
        assert!(e.to_string().starts_with("line 2: \"UABC\""), "{e}");
        let e = parse_key_lines("central\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: expected \"node KEY\", found \"central\""
        );
        assert!(parse_key_lines("# only a comment\n\n")
            .unwrap()
            .keys
            .is_empty());
    }

    #[test]
    fn an_older_distributed_set_does_not_replace_a_newer_one_and_a_deleted_one_is_gone() {
        let (dir, _me, trusted) = store("ship1");
        let other = Identity::generate(&dir.path().join("o"), false).unwrap();
        let mut set = KeySet {
            issued: 2000,
            ..KeySet::default()
        };
        set.add("ship2", other.public_key());
        assert_eq!(trusted.replace_distributed(&set).unwrap(), 1);
        assert!(trusted.knows("ship2"));
        set.issued = 1000;
        assert!(trusted.replace_distributed(&set).is_err());
        assert_eq!(KeySet::parse(&set.to_json()).unwrap(), set);
        // The operator deletes the file: those keys are trusted no more.
        fs::remove_file(distributed_path(dir.path())).unwrap();
        assert!(!trusted.knows("ship2"));
    }

    #[test]
    fn a_distributed_set_never_rebinds_central_an_allowed_sender_or_this_node() {
        let (dir, _me, trusted) = store("ship1");
        let trusted = trusted.protecting(["central".to_string(), "ops".to_string()]);
        let central = Identity::generate(&dir.path().join("c"), false).unwrap();
        let attacker = Identity::generate(&dir.path().join("a"), false).unwrap();
        trust(dir.path(), "central", central.public_key()).unwrap();
        for name in ["central", "ops", "ship1"] {
            let mut set = KeySet {
                issued: 5000,
                ..KeySet::default()
            };
            set.add(name, attacker.public_key());
            let e = trusted.replace_distributed(&set).unwrap_err();
            assert!(
                matches!(&e, Error::Rebinds { node } if node == name),
                "{e:?}"
            );
            assert!(
                e.to_string().contains(&format!("binds a key to {name}")),
                "{e}"
            );
        }
        // Central's own pinned key in the set is no rebinding.
        let mut set = KeySet {
            issued: 5000,
            ..KeySet::default()
        };
        set.add("central", central.public_key());
        set.add("ship2", attacker.public_key());
        assert_eq!(trusted.replace_distributed(&set).unwrap(), 2);
    }

    #[test]
    fn a_distributed_key_for_central_never_outlives_the_operators_pin() {
        // Every ship holds central's key in distributed.json (central hands its own on).
        let (dir, _me, trusted) = store("ship1");
        let trusted = trusted.protecting(["central".to_string()]);
        let old = Identity::generate(&dir.path().join("old"), false).unwrap();
        let new = Identity::generate(&dir.path().join("new"), false).unwrap();
        trust(dir.path(), "central", old.public_key()).unwrap();
        let mut set = KeySet {
            issued: 5000,
            ..KeySet::default()
        };
        set.add("central", old.public_key());
        trusted.replace_distributed(&set).unwrap();
        // Central's seed is stolen; the operator pins central's new key instead.
        fs::write(
            dir.path().join("trusted.txt"),
            format!("central {}\n", new.public_key()),
        )
        .unwrap();
        let sealed = old.seal(scope(), b"m");
        assert!(
            trusted
                .verify("central", Some(&sealed.headers), scope(), b"m")
                .is_err(),
            "the stolen key still speaks for central"
        );
        // Nor can a set revoke the pinned key of a protected name (to lock central out).
        let mut set = KeySet {
            issued: 6000,
            ..KeySet::default()
        };
        set.revoked
            .insert("central".into(), vec![new.public_key().to_string()]);
        assert!(matches!(
            trusted.replace_distributed(&set),
            Err(Error::RevokesPinned { .. })
        ));
    }

    #[test]
    fn a_stolen_key_that_ran_its_counter_to_the_end_locks_out_only_itself() {
        let (dir, _me, trusted) = store("ship1");
        let stolen = Identity::generate(&dir.path().join("s"), false).unwrap();
        let renewed = Identity::generate(&dir.path().join("r"), false).unwrap();
        trust(dir.path(), "ship2", stolen.public_key()).unwrap();
        let window = Duration::from_secs(300);
        // The thief signs with the counter (and the time) at their very end.
        *stolen.counter.state.lock().unwrap() = (u64::MAX - 1, u64::MAX);
        let sealed = stolen.seal_at(scope(), b"m", u64::MAX - 1);
        let signed = trusted
            .verify("ship2", Some(&sealed.headers), scope(), b"m")
            .unwrap();
        trusted
            .fresh("ship2", &signed, window, ClockCheck::Off)
            .unwrap();
        trusted.persist_senders(true);
        revoke(dir.path(), "ship2").unwrap();
        trust(dir.path(), "ship2", renewed.public_key()).unwrap();
        let trusted = Trusted::open(dir.path(), "ship1", _me.public_key()).unwrap();
        for clock in [ClockCheck::Off, ClockCheck::On] {
            let sealed = renewed.seal(scope(), b"m");
            let signed = trusted
                .verify("ship2", Some(&sealed.headers), scope(), b"m")
                .unwrap();
            assert_eq!(trusted.fresh("ship2", &signed, window, clock), Ok(()));
        }
    }

    #[test]
    fn a_revoked_key_is_never_trusted_again_whoever_lists_it() {
        let (dir, _me, trusted) = store("central");
        let ship2 = Identity::generate(&dir.path().join("s"), false).unwrap();
        trust(dir.path(), "ship2", ship2.public_key()).unwrap();
        assert!(trusted.knows("ship2"));
        assert_eq!(revoke(dir.path(), "ship2").unwrap(), [ship2.public_key()]);
        assert!(!trusted.knows("ship2"));
        let sealed = ship2.seal(scope(), b"m");
        assert!(matches!(
            trusted.verify("ship2", Some(&sealed.headers), scope(), b"m"),
            Err(Unverified::Bad(e)) if e.contains("revoked")
        ));
        let e = trust(dir.path(), "ship2", ship2.public_key()).unwrap_err();
        assert!(matches!(e, Error::Revoked { .. }), "{e:?}");
        assert!(e.to_string().contains("revoked"), "{e}");
        let mut set = KeySet {
            issued: 9000,
            ..KeySet::default()
        };
        set.add("ship2", ship2.public_key());
        trusted.replace_distributed(&set).unwrap();
        assert!(
            !trusted.knows("ship2"),
            "a distributed set revived a revoked key"
        );
        // The revocation travels with what this node distributes.
        assert_eq!(
            trusted.distributable().revoked["ship2"],
            [ship2.public_key()]
        );
    }

    #[test]
    fn errors_name_the_file_and_carry_the_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        fs::write(&file, "").unwrap();
        let e = Identity::generate(&file, false).unwrap_err();
        assert!(
            matches!(&e, Error::CreateDir { path, .. } if path == &file),
            "{e:?}"
        );
        assert!(e
            .to_string()
            .starts_with(&format!("cannot create {}: ", file.display())));
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.downcast_ref::<io::Error>().is_some(), "{source:?}");
        // A bad line in trusted.txt: the file, then the line.
        let (dir, me, _) = store("ship1");
        fs::write(trusted_path(dir.path()), "central\n").unwrap();
        let e = Trusted::open(dir.path(), "ship1", me.public_key())
            .err()
            .expect("a bad trusted.txt is refused at start");
        assert!(
            matches!(&e, Error::In { source, .. } if matches!(**source, Error::Line { line: 1, .. })),
            "{e:?}"
        );
        assert!(e.to_string().contains("trusted.txt: line 1: "), "{e}");
    }

    #[test]
    fn ids_carry_128_random_bits() {
        let a = random_hex128();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_hex128());
    }
}
