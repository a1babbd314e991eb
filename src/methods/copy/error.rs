//! What can go wrong with a copy, one type per concern: the `CopySrc` request
//! ([`RequestError`]), a mode ([`ModeError`]), a chunk's data ([`ChunkError`]), a
//! `dstPath`'s form ([`DstPathError`]) and where it lands ([`PlaceError`]), then the two
//! methods' own ([`CopySrcError`], [`CopyDstError`]), each wrapping the ones beneath it.
//!
//! The texts are what the requester reads in its reply (and central in its error log, for
//! a copy that fails on the destination): each says what was wrong and where. A system
//! call's `io::Error` is both in the text and the error's [`source`](Error::source).

use crate::subject::NameError;
use std::error::Error;
use std::fmt;
use std::io;
use std::path::PathBuf;

/// How `CopySrc`'s `data` is written.
const USAGE: &str = "CopySrc takes data [srcPath, dstNode, dstPath] or [srcPath, dstNode, dstPath, mode], e.g. [\"/var/log/syslog\", \"central\", \"logs/ship1-syslog\", \"0640\"]";

/// A mode that is not octal permission bits, at most `0777`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeError {
    pub text: String,
}

impl fmt::Display for ModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad mode {:?}: give permission bits in octal, at most 0777 (e.g. \"0644\")",
            self.text
        )
    }
}

impl Error for ModeError {}

/// A `dstPath` of a form no node takes (see [`dst`](super::dst)): `why` says which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DstPathError {
    pub path: String,
    pub why: &'static str,
}

impl fmt::Display for DstPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad dstPath {:?}: {}", self.path, self.why)
    }
}

impl Error for DstPathError {}

/// Why a `CopySrc`'s `data` is not a request.
#[derive(Debug)]
pub enum RequestError {
    /// Neither 3 nor 4 elements.
    Usage,
    EmptySrc,
    DstNode {
        name: String,
        source: NameError,
    },
    DstPath(DstPathError),
    Mode(ModeError),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Usage => f.write_str(USAGE),
            RequestError::EmptySrc => write!(f, "empty srcPath; {USAGE}"),
            RequestError::DstNode { name, source } => write!(f, "bad dstNode {name:?}: {source}"),
            RequestError::DstPath(e) => e.fmt(f),
            RequestError::Mode(e) => e.fmt(f),
        }
    }
}

impl Error for RequestError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RequestError::DstNode { source, .. } => Some(source),
            RequestError::DstPath(e) => Some(e),
            RequestError::Mode(e) => Some(e),
            RequestError::Usage | RequestError::EmptySrc => None,
        }
    }
}

impl From<DstPathError> for RequestError {
    fn from(e: DstPathError) -> Self {
        RequestError::DstPath(e)
    }
}

impl From<ModeError> for RequestError {
    fn from(e: ModeError) -> Self {
        RequestError::Mode(e)
    }
}

/// Why a chunk's `data` is not a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// Neither 2 nor 5 elements: how many.
    Elements(usize),
    NotANumber {
        what: &'static str,
        text: String,
    },
    Sha256(String),
    Mode(ModeError),
    NotBase64,
    /// The offset, whose chunk would end past any file.
    PastAnyFile(u64),
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::Elements(n) => write!(
                f,
                "a chunk's data is [offset, base64] or [offset, base64, size, sha256, mode], not {n} elements"
            ),
            ChunkError::NotANumber { what, text } => {
                write!(f, "bad {what} {text:?}: not a number")
            }
            ChunkError::Sha256(text) => {
                write!(f, "bad sha256 {text:?}: not 64 lowercase hex digits")
            }
            ChunkError::Mode(e) => e.fmt(f),
            ChunkError::NotBase64 => f.write_str("the chunk's bytes are not base64"),
            ChunkError::PastAnyFile(offset) => write!(f, "offset {offset} is past any file"),
        }
    }
}

impl Error for ChunkError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            ChunkError::Mode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ModeError> for ChunkError {
    fn from(e: ModeError) -> Self {
        ChunkError::Mode(e)
    }
}

/// Why a `dstPath` has no place on this node: its form, or what is on the disk at `at`.
#[derive(Debug)]
pub enum PlaceError {
    Form(DstPathError),
    /// A folder on the way that may not be used (`why`: a symbolic link, not a folder,
    /// steward's own).
    Refused {
        path: String,
        at: PathBuf,
        why: &'static str,
    },
    /// An absolute path's folder, which must exist.
    Unusable {
        path: String,
        at: PathBuf,
        source: io::Error,
    },
    /// A relative path's folder, missing, could not be made.
    NotMade {
        path: String,
        at: PathBuf,
        source: io::Error,
    },
    NotLookedAt {
        path: String,
        at: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for PlaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlaceError::Form(e) => e.fmt(f),
            PlaceError::Refused { path, at, why } => {
                write!(f, "bad dstPath {path:?}: {}: {why}", at.display())
            }
            PlaceError::Unusable { path, at, source } => write!(
                f,
                "bad dstPath {path:?}: {}: cannot be used ({source}); the folder must exist",
                at.display()
            ),
            PlaceError::NotMade { path, at, source } => write!(
                f,
                "bad dstPath {path:?}: {}: cannot be made: {source}",
                at.display()
            ),
            PlaceError::NotLookedAt { path, at, source } => write!(
                f,
                "bad dstPath {path:?}: {}: cannot be looked at: {source}",
                at.display()
            ),
        }
    }
}

impl Error for PlaceError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            PlaceError::Form(e) => Some(e),
            PlaceError::Refused { .. } => None,
            PlaceError::Unusable { source, .. }
            | PlaceError::NotMade { source, .. }
            | PlaceError::NotLookedAt { source, .. } => Some(source),
        }
    }
}

impl From<DstPathError> for PlaceError {
    fn from(e: DstPathError) -> Self {
        PlaceError::Form(e)
    }
}

/// Why `CopySrc` queued nothing, or not all: the requester reads it in its reply.
#[derive(Debug)]
pub enum CopySrcError {
    Request(RequestError),
    /// The request came without its grant (`dst_node` would refuse the chunks; `from`, the
    /// requester, may run an older steward).
    NoGrant {
        dst_node: String,
        from: String,
    },
    Read {
        path: PathBuf,
        source: io::Error,
    },
    /// Private to this node ([`crate::methods::private_to_the_node`]), and why.
    Private {
        path: PathBuf,
        why: &'static str,
    },
    NotAFile(PathBuf),
    /// Larger than `--maxCopyBytes` (`cap`).
    TooBig {
        path: PathBuf,
        size: u64,
        cap: u64,
    },
    /// Its chunks, `journaled` bytes in the journal, would take the disk under the floor
    /// kept for the journal.
    NoRoom {
        path: PathBuf,
        journaled: u64,
        source: crate::log_budget::BelowFloor,
    },
    /// The journal took the first `queued` chunks, and no more.
    NotQueued {
        path: PathBuf,
        queued: usize,
        source: io::Error,
    },
}

impl fmt::Display for CopySrcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopySrcError::Request(e) => e.fmt(f),
            CopySrcError::NoGrant { dst_node, from } => write!(
                f,
                "no grant came with this CopySrc: {dst_node} would refuse its chunks. Is {from} running an older steward?"
            ),
            CopySrcError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            CopySrcError::Private { path, why } => {
                write!(f, "{} is never copied from this node: {why}", path.display())
            }
            CopySrcError::NotAFile(path) => write!(f, "{} is not a file", path.display()),
            CopySrcError::TooBig { path, size, cap } => write!(
                f,
                "{} is {size} bytes, more than this node copies ({cap}, --maxCopyBytes): its chunks wait in the journal until delivered",
                path.display()
            ),
            CopySrcError::NoRoom {
                path,
                journaled,
                source,
            } => write!(
                f,
                "cannot copy {}: its chunks would take {journaled} bytes of the journal until delivered, and {source}; nothing queued",
                path.display()
            ),
            CopySrcError::NotQueued {
                path,
                queued,
                source,
            } => write!(
                f,
                "cannot queue the chunks of {} after the first {queued}: {source}; nothing more is sent, send the CopySrc again",
                path.display()
            ),
        }
    }
}

impl Error for CopySrcError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CopySrcError::Request(e) => Some(e),
            CopySrcError::Read { source, .. } | CopySrcError::NotQueued { source, .. } => {
                Some(source)
            }
            CopySrcError::NoRoom { source, .. } => Some(source),
            CopySrcError::NoGrant { .. }
            | CopySrcError::Private { .. }
            | CopySrcError::NotAFile(_)
            | CopySrcError::TooBig { .. } => None,
        }
    }
}

impl From<RequestError> for CopySrcError {
    fn from(e: RequestError) -> Self {
        CopySrcError::Request(e)
    }
}

/// Why `CopyDst` did not take a chunk, or the copy failed at its last: the source stores
/// it as the chunk's answer; a mismatch, or a file that cannot be put in place, is also
/// reported to central.
#[derive(Debug)]
pub enum CopyDstError {
    /// Its `methodArgs` are no grant.
    NotAChunk,
    Chunk(ChunkError),
    Place(PlaceError),
    /// A chunk ending at byte `end`, past `--maxCopyBytes` (`cap`) or its file's size.
    PastCap {
        id: String,
        end: u64,
        cap: u64,
    },
    Write {
        path: PathBuf,
        source: io::Error,
    },
    Read {
        path: PathBuf,
        source: io::Error,
    },
    /// The temporary file's name is taken by something else.
    NotAFile(PathBuf),
    /// The temporary file's name holds a file this node did not make for the copy (`why`).
    NotOurs {
        path: PathBuf,
        why: &'static str,
    },
    /// The whole file is not what the source sent.
    Mismatch(Box<Mismatch>),
    /// The grant's mode.
    Mode(ModeError),
    /// Checked, and not renamed into place.
    NotPlaced(Box<NotPlaced>),
}

/// A copy whose file, all chunks written, is not the source's.
#[derive(Debug)]
pub struct Mismatch {
    pub id: String,
    /// The source node.
    pub from: String,
    pub dst: PathBuf,
    pub sent_sha256: String,
    pub sent_size: u64,
    /// This node.
    pub node: String,
    pub got_sha256: String,
    pub got_size: u64,
    pub aside: Aside,
}

/// Where the temporary file of a copy that did not match stays.
#[derive(Debug)]
pub enum Aside {
    /// Renamed to `<temp>.bad`.
    Kept(PathBuf),
    /// Not renamed: still the temporary file.
    Left(PathBuf),
}

/// A copy checked, whose file could not be given its mode, synced or renamed to `dst`.
#[derive(Debug)]
pub struct NotPlaced {
    pub id: String,
    /// The source node.
    pub from: String,
    pub sha256: String,
    pub dst: PathBuf,
    pub temp: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for CopyDstError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyDstError::NotAChunk => f.write_str(
                "a chunk's methodArgs are [grantor, copy id, dstPath, mode, grant]: not a chunk of a CopySrc",
            ),
            CopyDstError::Chunk(e) => e.fmt(f),
            CopyDstError::Place(e) => e.fmt(f),
            CopyDstError::PastCap { id, end, cap } => write!(
                f,
                "copy {id}: a chunk ending at byte {end} is past this node's --maxCopyBytes ({cap}) or the file's size"
            ),
            CopyDstError::Write { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
            CopyDstError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            CopyDstError::NotAFile(path) => write!(f, "{} is not a file", path.display()),
            CopyDstError::NotOurs { path, why } => write!(
                f,
                "{}: {why}; refused, nothing written (remove it, then send the CopySrc again)",
                path.display()
            ),
            CopyDstError::Mismatch(m) => write!(
                f,
                "copy {} from {} to {}: SHA-256 mismatch: {} sent sha256 {} ({} bytes), {} received sha256 {} ({} bytes); {}; nothing put in place",
                m.id,
                m.from,
                m.dst.display(),
                m.from,
                m.sent_sha256,
                m.sent_size,
                m.node,
                m.got_sha256,
                m.got_size,
                m.aside
            ),
            CopyDstError::Mode(e) => e.fmt(f),
            CopyDstError::NotPlaced(p) => write!(
                f,
                "copy {} from {}: checked (sha256 {}), but cannot put it in place as {}: {}; left as {}",
                p.id,
                p.from,
                p.sha256,
                p.dst.display(),
                p.source,
                p.temp.display()
            ),
        }
    }
}

impl fmt::Display for Aside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aside::Kept(path) => write!(f, "kept as {}", path.display()),
            Aside::Left(path) => write!(f, "left as {}", path.display()),
        }
    }
}

impl Error for CopyDstError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CopyDstError::Chunk(e) => Some(e),
            CopyDstError::Place(e) => Some(e),
            CopyDstError::Mode(e) => Some(e),
            CopyDstError::Write { source, .. } | CopyDstError::Read { source, .. } => Some(source),
            CopyDstError::NotPlaced(p) => Some(&p.source),
            CopyDstError::NotAChunk
            | CopyDstError::PastCap { .. }
            | CopyDstError::NotAFile(_)
            | CopyDstError::NotOurs { .. }
            | CopyDstError::Mismatch(_) => None,
        }
    }
}

impl From<ChunkError> for CopyDstError {
    fn from(e: ChunkError) -> Self {
        CopyDstError::Chunk(e)
    }
}

impl From<PlaceError> for CopyDstError {
    fn from(e: PlaceError) -> Self {
        CopyDstError::Place(e)
    }
}

impl From<ModeError> for CopyDstError {
    fn from(e: ModeError) -> Self {
        CopyDstError::Mode(e)
    }
}
