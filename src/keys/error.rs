//! What can go wrong with keys, naming the file, line, node or key.

use super::*;

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
            // Not nkeys' words ("Invalid key length: Bad key length: 11"): what is wrong,
            // and what one looks like.
            Error::NotAKey { key, source } => {
                let why = match source.kind() {
                    nkeys::error::ErrorKind::ChecksumFailure => "its checksum does not match: a character is wrong or missing; ",
                    _ => "",
                };
                write!(
                    f,
                    "{key:?} is not a public key ({why}a node's is 56 characters of A-Z and 2-7, starting with U; `steward keys show` on that node prints it)"
                )
            }
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
    pub(super) fn in_file(self, path: &Path) -> Error {
        Error::In {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }
}

/// A read of `path` that failed.
pub(super) fn read_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// A write of `path` that failed.
pub(super) fn write_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_path_buf(),
        source,
    }
}
