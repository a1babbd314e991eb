//! Who is who: this node's signing key, the keys it trusts, and the signatures on the wire.
//!
//! Anyone who can publish on the broker could otherwise make a node run commands, so every
//! message a node publishes (and every reply) is signed with the node's ed25519 key, and a
//! receiver runs a command only when the signature verifies against a key it trusts *for the
//! node the message claims to come from*. Keys use the NKey text form (`U...` public keys,
//! `SU...` seeds) through the `nkeys` crate, which nats already needs.
//!
//! The signature travels in NATS headers, so it covers the payload's exact bytes (id,
//! sender, content) with nothing to canonicalise, plus the time of sending:
//!
//! ```text
//! Steward-Sent: <milliseconds since the epoch>
//! Steward-Key:  <the signer's public key>
//! Steward-Sig:  hex(ed25519("steward-v1\n" + Steward-Sent + "\n" + payload))
//! ```
//!
//! A retry is signed afresh with a new time, so a receiver can refuse anything sent outside
//! its replay window, and inside the window it refuses the very same signed message a
//! second time (it remembers the signatures it took for as long as they are inside the
//! window). Behind that, its record of message ids never runs one twice.
//!
//! The data folder's `keys/` holds:
//! - `node.seed`: this node's seed, created on first start (or `steward keys generate`),
//!   mode 0600; a seed readable by others is refused. `node.pub` beside it is its public
//!   key, for `steward keys show` without access to the seed.
//! - `trusted.txt`: keys the operator pinned, one `node KEY` per line (`steward keys trust`).
//!   Re-read when it changes, no restart needed.
//! - `distributed.json`: the set the central node last sent with the `TrustedKeys` method,
//!   replaced only by a newer one.

use crate::files;
use crate::subject::validate_name;
use nkeys::{KeyPair, KeyPairType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub const SENT: &str = "Steward-Sent";
pub const KEY: &str = "Steward-Key";
pub const SIG: &str = "Steward-Sig";
const DOMAIN: &[u8] = b"steward-v1\n";

fn seed_path(dir: &Path) -> PathBuf {
    dir.join("node.seed")
}
fn public_path(dir: &Path) -> PathBuf {
    dir.join("node.pub")
}
fn trusted_path(dir: &Path) -> PathBuf {
    dir.join("trusted.txt")
}
fn distributed_path(dir: &Path) -> PathBuf {
    dir.join("distributed.json")
}

/// This node's key pair.
pub struct Identity {
    pair: KeyPair,
    public: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public)
    }
}

impl Identity {
    /// Loads `keys/node.seed`, creating it (0600, in a 0700 folder) if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Identity, String> {
        match Identity::load(dir) {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => Identity::generate(dir, false),
            Err(e) => Err(e),
        }
    }

    /// Loads `keys/node.seed` if it exists. A seed that others can read is refused: it
    /// would let them sign as this node.
    pub fn load(dir: &Path) -> Result<Option<Identity>, String> {
        let path = seed_path(dir);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "{} can be read by others (mode {:o}); run: chmod 600 {}",
                path.display(),
                meta.mode() & 0o777,
                path.display()
            ));
        }
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Identity::from_seed(text.trim())
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Makes a new key pair and writes its seed; an existing seed is replaced only with
    /// `force` (every node that trusts the old key must then be given the new one).
    pub fn generate(dir: &Path, force: bool) -> Result<Identity, String> {
        let path = seed_path(dir);
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))?;
        if path.exists() && !force {
            return Err(format!(
                "{} already exists; give --force to replace it (nodes trusting the old key will refuse this one's commands until they trust the new key)",
                path.display()
            ));
        }
        let pair = KeyPair::new(KeyPairType::User);
        let seed = pair
            .seed()
            .map_err(|e| format!("cannot encode the new seed: {e}"))?;
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        f.write_all(format!("{seed}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .and_then(|()| fs::rename(&tmp, &path))
            .and_then(|()| {
                files::write_atomically(
                    &public_path(dir),
                    format!("{}\n", pair.public_key()).as_bytes(),
                )
            })
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        log::info!(
            "created this node's signing key {}: public key {}",
            path.display(),
            pair.public_key()
        );
        Identity::from_seed(&seed)
    }

    pub fn from_seed(seed: &str) -> Result<Identity, String> {
        let pair = KeyPair::from_seed(seed).map_err(|e| format!("not a valid seed: {e}"))?;
        if pair.key_pair_type() != KeyPairType::User {
            return Err("not a user seed (it must start with SU)".into());
        }
        Ok(Identity {
            public: pair.public_key(),
            pair,
        })
    }

    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The headers that sign `payload` as sent now.
    pub fn seal(&self, payload: &[u8]) -> nats::HeaderMap {
        self.seal_at(payload, files::unix_millis())
    }

    /// As [`Identity::seal`], with the sending time given (tests forge old messages).
    pub fn seal_at(&self, payload: &[u8], sent: u64) -> nats::HeaderMap {
        let sent = sent.to_string();
        let sig = self
            .pair
            .sign(&signed_bytes(&sent, payload))
            .expect("a key pair made from a seed can always sign");
        let mut headers = nats::HeaderMap::new();
        headers.insert(SENT, sent);
        headers.insert(KEY, self.public.clone());
        headers.insert(SIG, hex(&sig));
        headers
    }
}

fn signed_bytes(sent: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DOMAIN.len() + sent.len() + 1 + payload.len());
    v.extend_from_slice(DOMAIN);
    v.extend_from_slice(sent.as_bytes());
    v.push(b'\n');
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

/// This node's public key, from `node.pub` (readable without the seed).
pub fn public_key(dir: &Path) -> Result<String, String> {
    let path = public_path(dir);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} does not exist: this node has no key yet (start the agent, or run `steward keys generate`)",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Checks that `key` is a public key of a node (`U...`).
pub fn validate_public_key(key: &str) -> Result<(), String> {
    match KeyPair::from_public_key(key) {
        Ok(p) if p.key_pair_type() == KeyPairType::User => Ok(()),
        Ok(_) => Err(format!(
            "{key:?} is not a node's public key (those start with U)"
        )),
        Err(e) => Err(format!("{key:?} is not a public key: {e}")),
    }
}

/// What a signature check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by a key trusted for the claimed sender, within the window.
    Verified,
    /// No signature at all.
    Unsigned,
    /// Signed, but this node trusts no key for the claimed sender.
    UnknownSender,
    /// Signed and wrong: a forgery, a key of someone else, a replay, a damaged message.
    Bad(String),
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
}

impl KeySet {
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let set: KeySet =
            serde_json::from_str(text).map_err(|e| format!("not a trusted-keys set: {e}"))?;
        for (node, keys) in &set.keys {
            validate_name(node).map_err(|e| format!("bad node name {node:?}: {e}"))?;
            for key in keys {
                validate_public_key(key).map_err(|e| format!("key of {node}: {e}"))?;
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
}

/// The keys this node trusts: its own, the operator's `trusted.txt`, and the set last
/// distributed by central. The files are re-read when they change.
pub struct Trusted {
    dir: PathBuf,
    own: (String, String),
    inner: Mutex<Loaded>,
    /// Signatures taken within the replay window, with when they may be forgotten.
    seen: Mutex<HashMap<[u8; 16], u64>>,
}

#[derive(Default)]
struct Loaded {
    /// (modified time, length) of trusted.txt and distributed.json when last read.
    stamps: [Option<(SystemTime, u64)>; 2],
    pinned: KeySet,
    distributed: KeySet,
}

impl Trusted {
    /// Opens the trust store of node `own_name` (whose own key is always trusted). A bad
    /// `trusted.txt` is an error here, at start; later, a bad edit keeps the last good set.
    pub fn open(dir: &Path, own_name: &str, own_key: &str) -> Result<Trusted, String> {
        let trusted = Trusted {
            dir: dir.to_path_buf(),
            own: (own_name.to_string(), own_key.to_string()),
            inner: Mutex::new(Loaded::default()),
            seen: Mutex::new(HashMap::new()),
        };
        trusted.refresh()?;
        Ok(trusted)
    }

    /// Re-reads whichever file changed since it was last read.
    fn refresh(&self) -> Result<(), String> {
        let mut loaded = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let paths = [trusted_path(&self.dir), distributed_path(&self.dir)];
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
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            if i == 0 {
                loaded.pinned =
                    parse_trusted_txt(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            } else if text.is_empty() {
                // Deleted by the operator: the distributed keys are no longer trusted.
                loaded.distributed = KeySet::default();
            } else {
                loaded.distributed =
                    KeySet::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
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
        let keys: Vec<&String> = [&loaded.pinned, &loaded.distributed]
            .iter()
            .filter_map(|s| s.keys.get(node))
            .flatten()
            .collect();
        let known = !keys.is_empty() || node == self.own.0;
        (keys.iter().any(|k| *k == key), known)
    }

    /// Whether this node trusts any key for `node`.
    pub fn knows(&self, node: &str) -> bool {
        node == self.own.0 || self.lookup(node, "").1
    }

    /// Checks the signature on a message claiming to come from `from`. With `window`, the
    /// sending time must lie within it of this node's clock.
    pub fn verify(
        &self,
        from: &str,
        headers: Option<&nats::HeaderMap>,
        payload: &[u8],
        window: Option<Duration>,
    ) -> Verdict {
        let get = |name: &str| headers.and_then(|h| h.get(name)).map(String::as_str);
        let (Some(sent), Some(key), Some(sig)) = (get(SENT), get(KEY), get(SIG)) else {
            return Verdict::Unsigned;
        };
        let (trusted, known) = self.lookup(from, key);
        if !trusted {
            return if known {
                Verdict::Bad(format!(
                    "signed with key {key}, which is not trusted for {from}"
                ))
            } else {
                Verdict::UnknownSender
            };
        }
        let (Ok(sent_ms), Some(sig)) = (sent.parse::<u64>(), unhex(sig)) else {
            return Verdict::Bad("malformed signature headers".into());
        };
        let ok = KeyPair::from_public_key(key)
            .and_then(|k| k.verify(&signed_bytes(sent, payload), &sig))
            .is_ok();
        if !ok {
            return Verdict::Bad(format!(
                "the signature does not verify against {from}'s key {key}: forged or altered"
            ));
        }
        if let Some(window) = window {
            let now = files::unix_millis();
            let window_ms = window.as_millis() as u64;
            if now.abs_diff(sent_ms) > window_ms {
                return Verdict::Bad(format!(
                    "sent at {}, outside this node's replay window of {}s (its clock says {}): a replay, or a clock to fix",
                    files::rfc3339(sent_ms),
                    window.as_secs(),
                    files::rfc3339(now)
                ));
            }
            // Inside the window, the very same signed message twice is a replay: a sender's
            // own retry is signed afresh, at a later time.
            if !self.first_time(&sig, sent_ms + window_ms, now) {
                return Verdict::Bad(format!(
                    "a replay: this very message (sent at {}) was taken before",
                    files::rfc3339(sent_ms)
                ));
            }
        }
        Verdict::Verified
    }

    /// Remembers a signature until `forget_at`; false if it was already remembered.
    fn first_time(&self, sig: &[u8], forget_at: u64, now: u64) -> bool {
        let mut key = [0u8; 16];
        key.copy_from_slice(&sig[..16]);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= 1024 && seen.len().is_power_of_two() {
            seen.retain(|_, at| *at > now);
        }
        seen.insert(key, forget_at).is_none_or(|at| at <= now)
    }

    /// The set this node would hand on (`steward keys distribute`): the operator's pinned
    /// keys and its own.
    pub fn distributable(&self) -> KeySet {
        let mut set = self.refreshed().pinned.clone();
        set.add(&self.own.0, &self.own.1);
        set.issued = files::unix_millis();
        set
    }

    /// Takes a set distributed by central, if it is newer than the one held; returns how
    /// many keys it holds.
    pub fn replace_distributed(&self, set: &KeySet) -> Result<usize, String> {
        let path = distributed_path(&self.dir);
        let held = self.refreshed().distributed.issued;
        if set.issued <= held {
            return Err(format!(
                "this set was issued at {}, not after the one held (issued at {}); not replaced",
                files::rfc3339(set.issued),
                files::rfc3339(held)
            ));
        }
        files::write_atomically(&path, set.to_json().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        self.refresh()?;
        Ok(set.keys.values().map(Vec::len).sum())
    }
}

/// `trusted.txt`: `node KEY` per line; `#` starts a comment.
fn parse_trusted_txt(text: &str) -> Result<KeySet, String> {
    let mut set = KeySet::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(node), Some(key), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "line {}: expected \"node KEY\", found {line:?}",
                n + 1
            ));
        };
        validate_name(node).map_err(|e| format!("line {}: {e}", n + 1))?;
        validate_public_key(key).map_err(|e| format!("line {}: {e}", n + 1))?;
        set.add(node, key);
    }
    Ok(set)
}

/// `steward keys trust NODE KEY`: appends a line to `trusted.txt` (the agent picks it up).
pub fn trust(dir: &Path, node: &str, key: &str) -> Result<(), String> {
    validate_name(node).map_err(|e| format!("bad node name: {e}"))?;
    validate_public_key(key)?;
    let path = trusted_path(dir);
    let existing = fs::read_to_string(&path).unwrap_or_default();
    let set = parse_trusted_txt(&existing).map_err(|e| format!("{}: {e}", path.display()))?;
    if set
        .keys
        .get(node)
        .is_some_and(|k| k.iter().any(|k| k == key))
    {
        return Ok(());
    }
    let mut text = String::new();
    if existing.is_empty() {
        text.push_str(
            "# Keys this node trusts, one \"node KEY\" per line (steward keys trust NODE KEY).\n",
        );
    } else if !existing.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{node} {key}\n"));
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    files::append(&path, text.as_bytes(), true)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
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
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn a_signature_verifies_only_for_the_trusted_sender_and_content() {
        let (dir, _me, trusted) = store("ship1");
        let central = Identity::generate(&dir.path().join("c"), false).unwrap();
        let intruder = Identity::generate(&dir.path().join("i"), false).unwrap();
        let payload = br#"{"id":"1"}"#;
        let headers = central.seal(payload);
        assert_eq!(
            trusted.verify("central", Some(&headers), payload, None),
            Verdict::UnknownSender
        );
        trust(dir.path(), "central", central.public_key()).unwrap();
        assert_eq!(
            trusted.verify("central", Some(&headers), payload, None),
            Verdict::Verified
        );
        assert!(matches!(
            trusted.verify("central", Some(&headers), br#"{"id":"2"}"#, None),
            Verdict::Bad(e) if e.contains("forged or altered")
        ));
        let forged = intruder.seal(payload);
        assert!(matches!(
            trusted.verify("central", Some(&forged), payload, None),
            Verdict::Bad(e) if e.contains("not trusted for central")
        ));
        assert_eq!(
            trusted.verify("central", None, payload, None),
            Verdict::Unsigned
        );
        let window = Some(Duration::from_secs(300));
        let fresh = central.seal(payload);
        assert_eq!(
            trusted.verify("central", Some(&fresh), payload, window),
            Verdict::Verified
        );
        assert!(matches!(
            trusted.verify("central", Some(&fresh), payload, window),
            Verdict::Bad(e) if e.contains("a replay")
        ));
        let old = central.seal_at(payload, files::unix_millis() - 600_000);
        assert!(matches!(
            trusted.verify("central", Some(&old), payload, Some(Duration::from_secs(300))),
            Verdict::Bad(e) if e.contains("replay window")
        ));
    }

    #[test]
    fn trusted_txt_errors_name_the_line() {
        assert!(parse_trusted_txt("central UABC\n")
            .unwrap_err()
            .starts_with("line 1"));
        assert!(parse_trusted_txt("# only a comment\n\n")
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
}
