//! This node's key pair, its counter (reserved ahead on disk), and sealing what it sends.

use super::*;

/// Headers that sign a message, and the signature they carry.
pub struct Sealed {
    pub headers: nats::HeaderMap,
    pub sig: String,
    /// Its signing counter and sending time.
    seq: u64,
    sent: u64,
}

/// How long a message sealed ahead of its sending (the next batch of events, sealed while
/// the receiver has the last) may wait and still go with that seal.
pub(super) const SEALED_AHEAD_FOR: u64 = 1_000;

/// This node's key pair, and its counter.
pub struct Identity {
    pair: KeyPair,
    public: String,
    pub(super) counter: Counter,
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
pub(super) struct Counter {
    pub(super) path: Option<PathBuf>,
    /// (next value, reserved ceiling)
    pub(super) state: Mutex<(u64, u64)>,
}

impl Counter {
    pub(super) fn open(path: Option<PathBuf>) -> Result<Counter, Error> {
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

    pub(super) fn next(&self) -> u64 {
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
        let identity = Identity::with_counter(text.trim(), Some(counter_path(dir)))
            .map_err(|e| e.in_file(&path))?;
        identity.publish(dir);
        Ok(Some(identity))
    }

    /// Writes `node.pub` again if it does not hold this seed's key: [`Identity::generate`]
    /// renames the seed into place before it writes `node.pub`, so a power cut between the
    /// two leaves none (`steward keys show` would say to start the agent, for ever) or the
    /// replaced key's (which it would print as this node's, to be trusted elsewhere).
    fn publish(&self, dir: &Path) {
        if public_key(dir).is_ok_and(|k| k == self.public) {
            return;
        }
        let path = public_path(dir);
        match files::write_atomically(&path, format!("{}\n", self.public).as_bytes()) {
            Ok(()) => log::warn!(
                "{} did not hold this node's public key {}: written again",
                path.display(),
                self.public
            ),
            Err(e) => log::error!(
                "cannot write {} (`steward keys show` reads it): {e}",
                path.display()
            ),
        }
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

    /// This node's word for `what` (a [`crate::reply::ResultRoute`]'s bytes), hex: a
    /// signature that only this node checks, with [`Trusted::vouched`](super::Trusted::vouched).
    /// Its domain differs from a message signature's, so neither can stand for the other.
    pub fn vouch(&self, what: &[u8]) -> String {
        let sig = self
            .pair
            .sign(&super::vouched_bytes(what))
            .expect("a key pair made from a seed can always sign");
        hex(&sig)
    }

    /// The headers that sign `payload` as sent now, in `scope`.
    pub fn seal(&self, scope: Scope<'_>, payload: &[u8]) -> Sealed {
        self.seal_covering(scope, payload, Covers::Payload)
    }

    /// As [`Identity::seal`], the signature covering what `covers` says.
    pub fn seal_covering(&self, scope: Scope<'_>, payload: &[u8], covers: Covers) -> Sealed {
        self.seal_as_sent(scope, payload, files::unix_millis(), covers)
    }

    /// As [`Identity::seal`], with the sending time given (tests forge old messages).
    pub fn seal_at(&self, scope: Scope<'_>, payload: &[u8], sent: u64) -> Sealed {
        self.seal_as_sent(scope, payload, sent, Covers::Payload)
    }

    fn seal_as_sent(&self, scope: Scope<'_>, payload: &[u8], sent: u64, covers: Covers) -> Sealed {
        let seq = self.counter.next();
        let (sent_text, seq_text) = (sent.to_string(), seq.to_string());
        let sig = self
            .pair
            .sign(&signed_bytes(&sent_text, &seq_text, scope, payload, covers))
            .expect("a key pair made from a seed can always sign");
        let sig = hex(&sig);
        let mut headers = nats::HeaderMap::new();
        headers.insert(SENT, sent_text);
        headers.insert(SEQ, seq_text);
        headers.insert(KEY, self.public.clone());
        headers.insert(SIG, sig.clone());
        if covers == Covers::Digest {
            headers.insert(DIGEST, DIGEST_SHA256.to_string());
        }
        Sealed {
            headers,
            sig,
            seq,
            sent,
        }
    }

    /// Whether a message sealed ahead may still go with `sealed`: sealed within the last
    /// [`SEALED_AHEAD_FOR`] ms, and with at most a quarter of [`SEQ_WINDOW`] seals made
    /// since, so that a receiver still takes its counter (it tracks [`SEQ_WINDOW`] below
    /// the highest it saw: the rest is left for messages overtaking on the way). Past
    /// either, the message is sealed anew.
    pub fn still_fresh(&self, sealed: &Sealed) -> bool {
        let next = self
            .counter
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0;
        let seals_since = next.saturating_sub(sealed.seq + 1);
        files::unix_millis().saturating_sub(sealed.sent) < SEALED_AHEAD_FOR
            && seals_since <= SEQ_WINDOW / 4
    }
}
