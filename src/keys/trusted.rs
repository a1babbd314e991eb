//! The keys this node trusts: checking a message's signature and freshness, the trust
//! list and central's distributed set, trusting and revoking.

use super::*;

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

/// Whether `sig` is a signature over `bytes` by the public key whose text is `key` (a key
/// that is no key verifies nothing). Which keys count is decided before, by name
/// ([`Trusted::verify`]); this is only the arithmetic. The key's decoding (its base32 and
/// checksum, and the curve point's decompression: about a tenth of a signature's check)
/// is kept for the last key each thread checked against, by its exact text: a handler or
/// a publisher checks the same sender's key message after message.
pub(super) fn verifies(key: &str, bytes: &[u8], sig: &[u8]) -> bool {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(String, KeyPair)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.as_ref().is_none_or(|(text, _)| text != key) {
            *last = None;
            let Ok(decoded) = KeyPair::from_public_key(key) else {
                return false;
            };
            *last = Some((key.to_string(), decoded));
        }
        last.as_ref()
            .is_some_and(|(_, decoded)| decoded.verify(bytes, sig).is_ok())
    })
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

    pub(super) fn add(&mut self, node: &str, key: &str) {
        let keys = self.keys.entry(node.to_string()).or_default();
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_string());
        }
    }

    pub(super) fn has(&self, node: &str, key: &str) -> bool {
        self.keys
            .get(node)
            .is_some_and(|k| k.iter().any(|k| k == key))
    }
}

/// The keys this node trusts: its own, the operator's `trusted.txt`, and the set last
/// distributed by central, less every revoked key. The files are re-read when they
/// change.
pub struct Trusted {
    pub(super) dir: PathBuf,
    pub(super) own: (String, String),
    /// Names whose keys only this node's operator pins (the central node, the senders
    /// allowed to send commands, this node): a distributed set never speaks for them.
    pub(super) protected: Vec<String>,
    inner: Mutex<Loaded>,
    pub(super) senders: Mutex<Senders>,
    /// Held while `keys/senders.json` is written: one writer at a time.
    senders_file: Mutex<()>,
    /// Held while a distributed set is checked against the one held and written in its
    /// place: two `TrustedKeys` handled at once (on handler threads of their own) would
    /// otherwise both pass the check against the same held set, and write the same
    /// temporary file, the older set left held, or the newer taken but not kept.
    distributing: Mutex<()>,
}

#[derive(Default)]
struct Loaded {
    /// How trusted.txt, revoked.txt and distributed.json were when last read.
    stamps: [Option<Stamp>; 3],
    pub(super) pinned: KeySet,
    pub(super) revoked: KeySet,
    pub(super) distributed: KeySet,
    /// Hears the key files change (written, replaced, removed, their mode changed), so that
    /// they are looked at only then, or [`RELOOK`] after the last look, rather than with
    /// three stats at every message verified. `None` where it would not hear every change
    /// (see [`key_watch`]), and for good once it may have missed one (the folder itself
    /// changed or went, the queue overflowed, a key file is a link): looked at every time.
    watch: Option<files::Watch>,
    /// When the last complete look at the files began; `None` while one is under way, or
    /// failed: every thread looks then.
    looked: Option<Instant>,
    /// How many times the watch heard a change: a look that began before the last one
    /// does not count as complete (a file it read may have changed since).
    heard: u64,
    /// The files the watch heard change since they were last read: read again whatever
    /// their stamps say (a clock's tick can hide a same-length rewrite from them).
    dirty: [bool; 3],
}

/// What tells a key file changed: its modification and change times (a change time cannot
/// be set back, as `cp -p` and `touch -r` set the other), its length and its inode.
type Stamp = (SystemTime, (i64, i64), u64, u64);

fn stamp(meta: &fs::Metadata) -> Stamp {
    (
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        (meta.ctime(), meta.ctime_nsec()),
        meta.len(),
        meta.ino(),
    )
}

/// How long the key files go unlooked at while their folder's watch hears nothing: the
/// bound on a change it cannot hear (a bind mount over the folder, the folder's parent
/// renamed), a look being a few microseconds.
const RELOOK: Duration = Duration::from_millis(200);

/// A watch on the keys folder `dir`, where one hears every change to its files: not on a
/// filesystem another host may change too (NFS, SMB, FUSE), nor through a link in the
/// folder's path (an operator's `ln -sfn` would point it elsewhere, unheard).
fn key_watch(dir: &Path) -> Option<files::Watch> {
    let direct = match (fs::canonicalize(dir), std::path::absolute(dir)) {
        (Ok(real), Ok(absolute)) => real == absolute,
        _ => false,
    };
    let watch = match direct && crate::sys::watch_hears_every_write(dir) {
        true => files::Watch::on(dir, files::Watch::ANY_CHANGE),
        false => None,
    };
    if watch.is_none() {
        log::info!(
            "{}: no watch on the keys folder here (a link in its path, a network or user-space filesystem, or no inotify): its files are looked at every message",
            dir.display()
        );
    }
    watch
}

/// The key files' names, as the watch hears them.
const KEY_FILES: [&[u8]; 3] = [b"trusted.txt", b"revoked.txt", b"distributed.json"];

impl Loaded {
    /// Whether the key files are known to be as they were at the last look: their watch
    /// heard nothing of them since, and that look was less than [`RELOOK`] ago.
    fn unchanged(&mut self) -> bool {
        let Some(watch) = &self.watch else {
            return false;
        };
        let (mut deaf, mut dirty) = (false, self.dirty);
        let heard = watch.drain_naming(|name| {
            // Nameless: the folder itself (its mode changed, removed, moved), or the queue
            // overflowed: any file may have changed unheard.
            if name.is_empty() {
                deaf = true;
                dirty = [true; 3];
                return true;
            }
            match KEY_FILES.iter().position(|&file| file == name) {
                Some(i) => {
                    dirty[i] = true;
                    true
                }
                None => false,
            }
        });
        self.dirty = dirty;
        if heard {
            self.heard += 1;
        }
        if deaf {
            log::info!(
                "the keys folder's watch may have missed a change: its files are looked at every message from now on"
            );
            self.watch = None;
        }
        !heard && self.looked.is_some_and(|at| at.elapsed() < RELOOK)
    }

    /// Reads the key files whose stamps changed since they were last read, and those the
    /// watch heard change.
    fn read_changed(
        &mut self,
        paths: &[PathBuf; 3],
        stamps: [Option<Stamp>; 3],
    ) -> Result<(), Error> {
        for (i, path) in paths.iter().enumerate() {
            if stamps[i] == self.stamps[i] && !self.dirty[i] {
                continue;
            }
            self.stamps[i] = stamps[i];
            self.dirty[i] = false;
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
                0 => self.pinned = parsed,
                1 => self.revoked = parsed,
                _ => self.distributed = parsed,
            }
        }
        Ok(())
    }

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
/// sender, refuse that message instead (see [`crate::received`]). Not a Hello, which has
/// no record ([`crate::methods::Method::remembered`]): one replayed within the replay
/// window after a crash sets that node's last-seen time again, nothing more.
#[derive(Default)]
pub(super) struct Senders {
    /// By "sender key".
    by_key: HashMap<String, SenderWindow>,
    /// Counters taken, and how many of them the file holds: it is behind while they differ.
    changes: u64,
    saved: u64,
    pub(super) written: Option<Instant>,
    /// The last write failed (said once).
    failing: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub(super) struct SenderWindow {
    /// The highest counter taken.
    high: u64,
    /// Which of the [`SEQ_WINDOW`] counters below `high` were taken (bit i: high - 1 - i).
    /// Not persisted: after a restart, everything at or below `high` counts as taken.
    #[serde(skip, default = "all_taken")]
    pub(super) below: [u64; (SEQ_WINDOW / 64) as usize],
    /// The sending time of the message with the highest counter (ms since the epoch). Not
    /// persisted either: after a restart no counter below `high` is taken at all.
    #[serde(skip)]
    latest_sent: u64,
}

fn all_taken() -> [u64; (SEQ_WINDOW / 64) as usize] {
    [u64::MAX; (SEQ_WINDOW / 64) as usize]
}

impl SenderWindow {
    /// Takes counter `seq` if it is new; an error if it was taken, or is too far below.
    pub(super) fn take(&mut self, seq: u64) -> Result<(), NotFresh> {
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

    /// Refuses a counter below the highest taken (a message that comes late: signed before
    /// others already taken) that was sent more than `window_ms` before the newest: a
    /// message captured and held back, replayed where the clock cannot be checked (a ship
    /// without NTP). A sender's new messages always have new highest counters, so a sender
    /// whose clock jumped ahead and back is not locked out by this.
    pub(super) fn not_late(&self, seq: u64, sent: u64, window_ms: u64) -> Result<(), NotFresh> {
        if seq < self.high && sent.saturating_add(window_ms) < self.latest_sent {
            return Err(NotFresh::Late {
                sent,
                latest: self.latest_sent,
                window_ms,
            });
        }
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
    /// Its counter is below the highest taken, and it was sent more than the replay window
    /// before the latest message taken from this sender's key.
    Late {
        sent: u64,
        latest: u64,
        window_ms: u64,
    },
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
            NotFresh::Late {
                sent,
                latest,
                window_ms,
            } => write!(
                f,
                "sent at {}, more than the replay window ({}s) before the latest message taken from this sender (sent at {}), and signed before it: a replay",
                files::rfc3339(*sent),
                window_ms / 1000,
                files::rfc3339(*latest)
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
            inner: Mutex::new(Loaded {
                watch: key_watch(dir),
                ..Loaded::default()
            }),
            senders: Mutex::new(senders),
            senders_file: Mutex::new(()),
            distributing: Mutex::new(()),
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

    /// Re-reads whichever file changed since it was last read. The files are looked at
    /// only when their watch heard them change, or [`RELOOK`] after the last look
    /// ([`Loaded::unchanged`]): three stats at every message verified were 3% of a small
    /// command's CPU on either side (a profile of `true` run back to back); what the
    /// watch heard is read under the lock (one `read` of its descriptor). The files are
    /// looked at outside it, so a thousand publishers verifying replies at once do not
    /// queue behind each other's stats (a file changed meanwhile is at worst read twice).
    fn refresh(&self) -> Result<(), Error> {
        let began = Instant::now();
        let heard = {
            let mut loaded = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if loaded.unchanged() {
                return Ok(());
            }
            // Until this look is done, a thread that heard nothing looks all the same: the
            // change this one heard may not be read yet.
            loaded.looked = None;
            loaded.heard
        };
        let paths = [
            trusted_path(&self.dir),
            revoked_path(&self.dir),
            distributed_path(&self.dir),
        ];
        // Each file's own metadata (not its link's target's): one that is a symbolic link,
        // or has another name (a hard link), changes where the folder's watch cannot hear.
        let mut unheard = false;
        let stamps = paths.each_ref().map(|path| {
            let meta = match fs::symlink_metadata(path) {
                Ok(m) if m.is_symlink() => {
                    unheard = true;
                    fs::metadata(path)
                }
                Ok(m) => {
                    unheard |= m.nlink() > 1;
                    Ok(m)
                }
                Err(e) => Err(e),
            };
            meta.ok().map(|m| stamp(&m))
        });
        let mut loaded = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if unheard && loaded.watch.take().is_some() {
            log::info!(
                "{}: a key file is a link: its changes are looked for at every message",
                self.dir.display()
            );
        }
        loaded.read_changed(&paths, stamps)?;
        // Complete only if nothing was heard since it began (another thread's look reads
        // that change, and says so).
        if loaded.heard == heard {
            loaded.looked = Some(began);
        }
        Ok(())
    }

    /// Whether the key files are watched (else looked at every message).
    #[cfg(test)]
    pub(super) fn watching(&self) -> bool {
        self.inner.lock().unwrap().watch.is_some()
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
        let keys = self.keys_of(node);
        let known = !keys.is_empty() || node == self.own.0;
        (keys.iter().any(|k| k == key), known)
    }

    /// The keys trusted for `node` (beside this node's own, for its own name): the
    /// operator's pins, and central's distributed set unless `node` is protected, less the
    /// revoked ones.
    fn keys_of(&self, node: &str) -> Vec<String> {
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
        sources
            .iter()
            .filter_map(|s| s.keys.get(node))
            .flatten()
            .filter(|k| !revoked(k))
            .cloned()
            .collect()
    }

    /// Whether this node vouched for `what` (`sig`: from [`Identity::vouch`](super::Identity::vouch)
    /// with this node's own key).
    pub fn vouched(&self, what: &[u8], sig: &str) -> bool {
        let Some(sig) = unhex(sig) else {
            return false;
        };
        verifies(&self.own.1, &super::vouched_bytes(what), &sig)
    }

    /// Whether `node` vouched for `what` (`sig`: from [`Identity::vouch`](super::Identity::vouch)
    /// with a key this node trusts for `node`, as it would for a message `node` signed): a
    /// grant ([`crate::grant`]), whose signer is not this node.
    pub fn vouched_by(&self, node: &str, what: &[u8], sig: &str) -> bool {
        let Some(sig) = unhex(sig) else {
            return false;
        };
        let mut keys = self.keys_of(node);
        if node == self.own.0 {
            keys.push(self.own.1.clone());
        }
        let what = super::vouched_bytes(what);
        keys.iter().any(|k| verifies(k, &what, &sig))
    }

    /// Whether `key` is trusted for `node` now (a schedule's signer, before each run).
    pub fn trusts(&self, node: &str, key: &str) -> bool {
        self.lookup(node, key).0
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
        // A header given twice is refused, rather than one of its values taken at random.
        if let Some(twice) = headers.and_then(|h| {
            [SENT, SEQ, KEY, SIG, DIGEST]
                .into_iter()
                .find(|name| h.get_all(name).iter().nth(1).is_some())
        }) {
            return Err(Unverified::Bad(format!("{twice} given more than once")));
        }
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
            } else if validate_public_key(key).is_err() {
                // Not a key at all: never quoted where an operator is told what to run.
                Unverified::Bad(format!(
                    "signed with {:?}, which is not a node's public key",
                    key.chars().take(64).collect::<String>()
                ))
            } else {
                Unverified::UnknownSender {
                    key: key.to_string(),
                }
            });
        }
        let (Ok(sent_ms), Ok(seq_n), Some(sig_bytes)) =
            (sent.parse::<u64>(), seq.parse::<u64>(), unhex(sig))
        else {
            return Err(Unverified::Bad("malformed signature headers".into()));
        };
        let covers = match get(DIGEST) {
            None => Covers::Payload,
            Some(DIGEST_SHA256) => Covers::Digest,
            Some(other) => {
                let other: String = other.chars().take(32).collect();
                return Err(Unverified::Bad(format!(
                    "signed over a digest this node does not know ({DIGEST}: {other:?})"
                )));
            }
        };
        let signed = signed_bytes(sent, seq, scope, payload, covers);
        if !verifies(key, &signed, &sig_bytes) {
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
            covers,
        })
    }

    /// Whether a verified request from `from` is fresh: its counter never taken before
    /// from that sender's key, and, while the clock is checked, its sending time within the
    /// window of this node's clock; a counter below the highest taken, sent no more than the
    /// window before the latest taken ([`NotFresh::Late`]). Takes it if so.
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
        window.not_late(signed.seq, signed.sent, window_ms)?;
        let newest = signed.seq > window.high;
        window.take(signed.seq)?;
        // The sending time of the newest counter: it follows the sender's clock, set back
        // too (a clock once ahead would otherwise make every late message a replay).
        if newest {
            window.latest_sent = signed.sent;
        }
        senders.changes += 1;
        Ok(())
    }

    /// Writes `keys/senders.json` if it changed and was not written within the last
    /// second (`force`: whatever the time, at shutdown). Returns whether changes are still
    /// unwritten (too soon, the write failed, or another subscriber is writing it): call
    /// again in a second. The file is written and fsync'd outside the lock every verified
    /// message takes ([`Trusted::fresh`]): with 10,000 senders it is about 1 MB, and a
    /// burst of messages would otherwise wait for the disk.
    pub fn persist_senders(&self, force: bool) -> bool {
        let _writing = if force {
            self.senders_file.lock().unwrap_or_else(|p| p.into_inner())
        } else {
            match self.senders_file.try_lock() {
                Ok(w) => w,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return true,
            }
        };
        let (json, changes) = {
            let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
            let recent = senders
                .written
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1));
            if senders.changes == senders.saved || (recent && !force) {
                return senders.changes != senders.saved;
            }
            senders.written = Some(Instant::now());
            let json = serde_json::to_vec(&senders.by_key).expect("a map of numbers serializes");
            (json, senders.changes)
        };
        let path = senders_path(&self.dir);
        let result = files::write_atomically(&path, &json);
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                senders.saved = changes;
                senders.failing = false;
            }
            // Said once: it is tried again every second (a full disk), and until it works
            // a restart forgets the last second's counters, which the id records cover.
            Err(e) if !senders.failing => {
                senders.failing = true;
                log::error!("cannot write {}: {e}", path.display());
            }
            Err(_) => {}
        }
        senders.changes != senders.saved
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
        let _one_at_a_time = self.distributing.lock().unwrap_or_else(|p| p.into_inner());
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
pub(super) fn parse_key_lines(text: &str) -> Result<KeySet, Error> {
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
