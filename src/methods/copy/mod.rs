//! `CopySrc` and `CopyDst`: a file copied from one node to another, in chunks, each a
//! journaled message, so that a copy cut short by a link that drops or a node that
//! restarts goes on where it stopped.
//!
//! ```text
//! central ──CopySrc [srcPath, dstNode, dstPath, mode?] + grant──▶ source (ship1)
//!                                   reads the file, journals its chunks, ACKs (chunks, bytes, SHA-256)
//! source ──CopyDst chunk 0, 1, … n (EventACK, batched, each with the grant)──▶ destination (ship2)
//!                                   writes each into a temporary file beside dstPath (fsync'd
//!                                   before its ACK); at the last, checks size and SHA-256, sets
//!                                   the mode, renames it into place
//! ```
//!
//! # CopySrc: `data: [srcPath, dstNode, dstPath]`, or `[…, mode]`
//!
//! A command (from `--allowCommandsFrom`). `srcPath` is absolute, or relative to the source
//! node's data folder; a file under its `keys/` is refused (the node's seed would leave with
//! it). `mode` is the destination file's permission bits in octal (`"0644"`, at most
//! `0777`); without it the destination takes the source file's (its permission bits only:
//! never set-user-id). `dstPath` is absolute, or relative to the destination's data folder
//! (see [`dst`] for what it may be). The ACK says what was queued: chunks, bytes and the
//! SHA-256; completion happens on the destination, which logs it, and answers the last
//! chunk with it (stored on the source in `replies/<dstNode>.CopyDst.log`). A mismatch or a
//! file that cannot be put in place is reported to the central error log.
//!
//! The file is copied as it is when the copy starts, up to its size then: a log still
//! being written is copied up to where it was. A file larger than `--maxCopyBytes`
//! (default 256 MiB) is refused before anything is queued, and so is one whose chunks
//! would take the disk under the floor kept for the journal (`--minFreeBytesForLogs`).
//!
//! # Chunks
//!
//! A chunk carries [`CHUNK_BYTES`] (128 KiB) of the file, base64 in `data` (JSON carries
//! text only): `[offset, base64]`, and on the last `[offset, base64, size, sha256, mode]`
//! (the source's size, SHA-256 in hex and permission bits in octal). Encoded, a chunk is
//! about 171 KiB, well under a message's [`MAX_DATA_BYTES`](crate::message::MAX_DATA_BYTES)
//! (256 KiB); EventACK messages of one lane travel in batches of up to 1 MiB, so five or
//! six chunks go per round trip and one fsync on each side. `methodArgs` carries the grant
//! ([`crate::grant`]): who asked, the copy's id (the `CopySrc` request's), `dstPath`, the
//! mode asked, and the grantor's signature. Each chunk keeps trying for the `CopySrc`'s
//! `ttl`, or a week without one: a ship away for days gets its file when it is back.
//!
//! # Why the source journals every chunk at once
//!
//! All chunks are journaled when `CopySrc` runs, in groups of [`GROUP`] (one journal write
//! and fsync each, so memory stays flat: about 10 MiB whatever the file's size). The
//! journal is then all the state a copy has on the source: a source that restarts resends
//! what was not ACKed, from its journal, like any message, and the destination's
//! received log runs none twice. The price is journal space, the file's size and a third,
//! until the destination has it, hence the cap. The alternative, a window of chunks at a
//! time with the progress persisted, needs a second state beside the journal (the read
//! offset, and the SHA-256 so far, which cannot be saved and would be read again), and
//! something that learns when a window was delivered; for the files this is for (logs,
//! configuration, a binary of some MiB) the journal does it with nothing new. A `CopySrc`
//! cut short by a restart while it was queueing runs again when central retries it
//! ([`Method::reruns_interrupted`]): a second set of chunks writes the same bytes at the
//! same places (if the file shrank meanwhile, the destination cuts what the first set
//! wrote past the size the last chunk gives; if it changed, the check at the end says so).
//!
//! # The destination: [`dst`]
//!
//! Writes each chunk at its offset into `.<name>.copy-<id hash>` beside `dstPath` (a name
//! of its own per source and copy, so two copies to one path do not meet), and fsyncs it
//! before the ACK: what is ACKed is on disk, and the temporary file is all the progress a
//! copy has there. A chunk that was being written when the destination died is written
//! again when its sender retries it (`CopyDst` reruns interrupted messages: the same bytes
//! at the same offset). At the last chunk, the whole file's size and SHA-256 are checked
//! (read back from the disk); on a match the file gets its mode and is renamed into place,
//! and the folder is fsync'd. A mismatch keeps the temporary file as `<temp>.bad` and
//! answers with an error naming both hashes, reported to central. A last chunk run again
//! after its file was already renamed into place finds `dstPath` holding the right bytes,
//! and says so.
//!
//! # Who may send a chunk
//!
//! A node `--allowCommandsFrom` allows on the destination, or the source named in a grant
//! signed by such a node, for exactly that path and mode (see [`crate::grant`]).

use super::{Context, Method, Outcome, Senders, COMMANDS};
use crate::grant::{CopyGrant, COPY_DST, COPY_SRC};
use crate::keys::hex;
use crate::message::{Envelope, Kind, Message};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod base64;
pub mod dst;
mod error;

pub use dst::CopyDst;
pub use error::{
    Aside, ChunkError, CopyDstError, CopySrcError, DstPathError, Mismatch, ModeError, NotPlaced,
    PlaceError, RequestError,
};

/// Bytes of the file in one chunk.
pub const CHUNK_BYTES: usize = 128 * 1024;
/// Chunks journaled with one write and fsync.
pub const GROUP: usize = 32;
/// Default of `--maxCopyBytes`: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Bytes a journaled chunk takes besides its data and its grant (`methodArgs`, counted
/// twice: JSON may escape it), at most: its envelope. What a copy's room in the journal
/// is counted with.
const CHUNK_OVERHEAD: u64 = 1024;
/// How long a chunk keeps trying without the `CopySrc`'s `ttl`: a week.
pub const CHUNK_TTL_SECS: u64 = 7 * 24 * 3600;
/// Least time the last chunk's ACK is waited for: the destination reads the whole file
/// back to check it (256 MiB from an SD card takes seconds).
const LAST_CHUNK_WAIT: Duration = Duration::from_secs(60);

pub struct CopySrc;

impl Method for CopySrc {
    fn name(&self) -> &'static str {
        COPY_SRC
    }
    fn kinds(&self) -> &'static [Kind] {
        COMMANDS
    }
    fn senders(&self) -> Senders {
        Senders::Commanders
    }
    fn reruns_interrupted(&self) -> bool {
        true
    }
    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        match copy_out(envelope, ctx) {
            Ok(said) => Outcome::ok(said),
            Err(why) => Outcome::error(why.to_string()),
        }
    }
}

/// What `CopySrc` asks, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub src: &'a str,
    pub dst_node: &'a str,
    pub dst: &'a str,
    /// The mode asked, if any.
    pub mode: Option<u32>,
}

impl<'a> Request<'a> {
    pub fn of(m: &'a Message) -> Result<Request<'a>, RequestError> {
        let (src, dst_node, dst, mode) = match m.data.as_slice() {
            [s, n, d] => (s, n, d, None),
            [s, n, d, mode] => (s, n, d, Some(mode)),
            _ => return Err(RequestError::Usage),
        };
        if src.is_empty() {
            return Err(RequestError::EmptySrc);
        }
        crate::subject::validate_name(dst_node).map_err(|source| RequestError::DstNode {
            name: dst_node.clone(),
            source,
        })?;
        dst::check_dst_path(dst)?;
        let mode = mode.map(|m| parse_mode(m)).transpose()?;
        Ok(Request {
            src,
            dst_node,
            dst,
            mode,
        })
    }
}

/// A mode as `CopySrc` takes it: octal permission bits, at most `0777`.
pub fn parse_mode(text: &str) -> Result<u32, ModeError> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o777 && !text.is_empty() => Ok(mode),
        _ => Err(ModeError {
            text: text.to_string(),
        }),
    }
}

/// One chunk as its `data` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// On the last chunk only.
    pub last: Option<Last>,
}

/// What the last chunk says of the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Last {
    pub size: u64,
    /// Hex, lowercase.
    pub sha256: String,
    /// The source file's permission bits.
    pub mode: u32,
}

impl Chunk {
    pub fn data(&self) -> Vec<String> {
        let mut data = vec![self.offset.to_string(), base64::encode(&self.bytes)];
        if let Some(last) = &self.last {
            data.extend([
                last.size.to_string(),
                last.sha256.clone(),
                format!("{:o}", last.mode),
            ]);
        }
        data
    }

    pub fn parse(data: &[String]) -> Result<Chunk, ChunkError> {
        let number = |what: &'static str, text: &str| {
            text.parse::<u64>().map_err(|_| ChunkError::NotANumber {
                what,
                text: text.to_string(),
            })
        };
        let (offset, text, last) = match data {
            [offset, text] => (offset, text, None),
            [offset, text, size, sha256, mode] => {
                let sha_ok = sha256.len() == 64
                    && sha256
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !sha_ok {
                    return Err(ChunkError::Sha256(sha256.clone()));
                }
                let last = Last {
                    size: number("size", size)?,
                    sha256: sha256.clone(),
                    mode: parse_mode(mode)?,
                };
                (offset, text, Some(last))
            }
            _ => return Err(ChunkError::Elements(data.len())),
        };
        let offset = number("offset", offset)?;
        let bytes = base64::decode(text).ok_or(ChunkError::NotBase64)?;
        if offset.checked_add(bytes.len() as u64).is_none() {
            return Err(ChunkError::PastAnyFile(offset));
        }
        Ok(Chunk {
            offset,
            bytes,
            last,
        })
    }
}

/// Reads the file and journals its chunks; says what was queued.
fn copy_out(e: &Envelope, ctx: &Context) -> Result<String, CopySrcError> {
    let request = Request::of(&e.message)?;
    let grant = CopyGrant::of_request(e).expect("a CopySrc request of 3 or 4 elements");
    let Some(sig) = e.grant.as_deref() else {
        return Err(CopySrcError::NoGrant {
            dst_node: request.dst_node.to_string(),
            from: e.from_node.clone(),
        });
    };
    let args = grant.chunk_args(sig);
    let path = source_path(ctx, request.src)?;
    let cannot_read = |source| CopySrcError::Read {
        path: path.clone(),
        source,
    };
    let Some((mut file, opened)) = super::open_plain_file(&path, false).map_err(cannot_read)?
    else {
        return Err(CopySrcError::NotAFile(path));
    };
    let meta = file.metadata().map_err(cannot_read)?;
    // What was opened is what was checked: a folder on the way swapped for a link between
    // the check and the open leads elsewhere.
    if opened != path {
        let why = crate::methods::private_to_the_node(&opened, ctx.data, ctx.config)
            .unwrap_or("its path led elsewhere when it was opened (moved or swapped meanwhile)");
        return Err(CopySrcError::Private { path: opened, why });
    }
    let size = meta.len();
    let cap = ctx.config.max_copy_bytes;
    if size > cap {
        return Err(CopySrcError::TooBig { path, size, cap });
    }
    // Its chunks wait in the journal, as base64, until the destination has them: on a disk
    // without that room above the floor kept for the journal (`--minFreeBytesForLogs`),
    // they were journaled as far as the disk went, and the node was left with no room to
    // take any other message, and the destination with a copy that never ends.
    let overhead = CHUNK_OVERHEAD + 2 * args.iter().map(|a| a.len() as u64).sum::<u64>();
    let journaled = size.div_ceil(3) * 4 + (size / CHUNK_BYTES as u64 + 1) * overhead;
    if let Err(source) = ctx
        .log_budget
        .check_free_space_for(&ctx.data.root, journaled)
    {
        return Err(CopySrcError::NoRoom {
            path,
            journaled,
            source,
        });
    }
    let m = &e.message;
    let ttl = m.ttl.unwrap_or(CHUNK_TTL_SECS);
    let chunk_message = |chunk: &Chunk| Message {
        method_args: Some(args.clone()),
        ttl: Some(ttl),
        timeout: chunk.last.as_ref().map(|_| {
            ctx.config
                .default_timeout
                .max(LAST_CHUNK_WAIT)
                .as_secs()
                .min(crate::message::MAX_TIMEOUT_SECS)
        }),
        ..Message::new(request.dst_node, Kind::EventAck, COPY_DST, chunk.data())
    };
    let mut hasher = Sha256::new();
    let mut group: Vec<Message> = Vec::with_capacity(GROUP);
    let mut queued = 0usize;
    let send = |group: &mut Vec<Message>, queued: &mut usize| -> Result<(), CopySrcError> {
        let n = group.len();
        ctx.outbox
            .send(std::mem::take(group))
            .map_err(|source| CopySrcError::NotQueued {
                path: path.clone(),
                queued: *queued,
                source,
            })?;
        *queued += n;
        Ok(())
    };
    // Each chunk is held until the next is read: the last one carries the whole file's
    // size and SHA-256.
    let mut held: Option<Chunk> = None;
    let mut offset = 0u64;
    loop {
        // In u64 first: on a 32-bit node, what is left of a file past 4 GiB wrapped to a
        // chunk of nothing, and empty chunks were queued until the disk was full.
        let want = (size - offset).min(CHUNK_BYTES as u64) as usize;
        let bytes = read_up_to(&mut file, want).map_err(cannot_read)?;
        hasher.update(&bytes);
        let n = bytes.len();
        if let Some(chunk) = held.replace(Chunk {
            offset,
            bytes,
            last: None,
        }) {
            group.push(chunk_message(&chunk));
            if group.len() == GROUP {
                send(&mut group, &mut queued)?;
            }
        }
        offset += n as u64;
        // Done at the size the file had, or at its end if it shrank meanwhile.
        if n < want || offset >= size {
            break;
        }
    }
    let sha256 = hex(&hasher.finalize());
    let mut last = held.expect("at least one chunk is read");
    last.last = Some(Last {
        size: offset,
        sha256: sha256.clone(),
        mode: meta.permissions().mode() & 0o777,
    });
    group.push(chunk_message(&last));
    send(&mut group, &mut queued)?;
    let mode = match request.mode {
        Some(mode) => format!("mode {mode:04o}"),
        None => format!(
            "mode {:04o} (the source's)",
            meta.permissions().mode() & 0o777
        ),
    };
    log::info!(
        "copy {}: {} → {}:{}: {queued} chunks, {offset} bytes, sha256 {sha256} queued",
        e.id,
        path.display(),
        request.dst_node,
        request.dst
    );
    Ok(format!(
        "copy {}: queued {queued} chunks, {offset} bytes, sha256 {sha256}, from {} to {}:{} ({mode}); {} checks and puts it in place when all are in\n",
        e.id,
        path.display(),
        request.dst_node,
        request.dst,
        request.dst_node
    ))
}

/// Where `src` is on this node: absolute, or under the data folder; never what is private
/// to the node ([`crate::methods::private_to_the_node`]: its seed, its records of others'
/// messages, its broker credentials).
fn source_path(ctx: &Context, src: &str) -> Result<PathBuf, CopySrcError> {
    let path = match Path::new(src).is_absolute() {
        true => PathBuf::from(src),
        false => ctx.data.root.join(src),
    };
    let real = match path.canonicalize() {
        Ok(real) => real,
        Err(source) => return Err(CopySrcError::Read { path, source }),
    };
    if let Some(why) = crate::methods::private_to_the_node(&real, ctx.data, ctx.config) {
        return Err(CopySrcError::Private { path: real, why });
    }
    Ok(real)
}

/// Up to `want` bytes, fewer only at the file's end.
fn read_up_to(file: &mut File, want: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(want);
    file.take(want as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The size and SHA-256 (hex) of what `file` holds, read from its start.
pub fn digest(file: &File) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    loop {
        let n = match file.read_at(&mut buf, offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok((offset, hex(&hasher.finalize())))
}

#[cfg(test)]
mod tests;
