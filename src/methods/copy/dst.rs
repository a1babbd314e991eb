//! `CopyDst`: a copy's chunks, written on the destination (see the module above for the
//! whole copy).
//!
//! # Where: `dstPath`
//!
//! Absolute, or relative to the data folder. No `..` anywhere, no control character, and it
//! names a file (no trailing `/`). Under the data folder (relative, or absolute and
//! landing there) it must be in a folder, not one of steward's own (`journal`, `keys`,
//! `replies`, …): `inmsg.txt` or `keys/trusted.txt` are not a copy's to replace. A
//! relative path's folders are made (private) as need be and none may be a symbolic link,
//! as for `File`; an absolute path's folder must exist, and is written where it really is
//! (links on the way followed once, when it is checked, and compared with the data folder's
//! own real place, and with its folders by what they are: a bind mount of it, or a disk
//! that ignores case, names them otherwise). The file itself is replaced by a rename,
//! which never follows a link at that name.
//!
//! # Writing, resuming, finishing
//!
//! See the module above. A batch of chunks (five or six travel together) is written, then
//! each file written is fsync'd once before any is ACKed; the temporary file's name is made
//! durable (its folder fsync'd) when it is created. A temporary file found at its name is
//! written on only if this node could have made it (its user's, or whose this node's files
//! are on that disk, with no other name): in a folder others may write, what they put
//! there is refused, never written through.
//!
//! While the data folder's disk is below its floor (`--minFreeBytesForLogs`), chunks are
//! not taken (unanswered, so the source tries again later), as for logs. A chunk that
//! cannot be written all the same (another disk full, a folder not writable) is answered
//! with the error and is not sent again; the copy then fails at its last chunk (the size
//! or SHA-256 does not match), and is sent again with a new `CopySrc`. A copy that never
//! gets its last chunk (its source gave up, or was wiped) leaves its temporary file; its
//! name says which path it was for.

use super::{
    digest, Aside, Chunk, CopyDstError, DstPathError, Last, Mismatch, NotPlaced, PlaceError,
};
use crate::grant::{CopyGrant, COPY_DST};
use crate::message::{Envelope, Kind};
use crate::methods::{Context, Method, Outcome, Senders, EVENTS};
use crate::reply::OWN_FOLDERS;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

pub struct CopyDst;

impl Method for CopyDst {
    fn name(&self) -> &'static str {
        COPY_DST
    }
    fn kinds(&self) -> &'static [Kind] {
        EVENTS
    }
    fn senders(&self) -> Senders {
        Senders::CommandersOrGranted
    }
    fn reruns_interrupted(&self) -> bool {
        true
    }
    fn ready(&self, ctx: &Context, writing: u64) -> Result<(), crate::log_budget::BelowFloor> {
        ctx.log_budget.check_free_space_for(&ctx.data.root, writing)
    }
    fn handle(&self, envelope: &Envelope, ctx: &Context) -> Outcome {
        self.handle_batch(&[envelope], ctx)
            .pop()
            .expect("one outcome per message")
    }
    fn batch_max(&self) -> usize {
        crate::message::MAX_BATCH
    }
    fn handle_batch(&self, envelopes: &[&Envelope], ctx: &Context) -> Vec<Outcome> {
        let mut open = Open::default();
        let mut outcomes: Vec<Outcome> = envelopes
            .iter()
            .enumerate()
            .map(|(i, e)| match take(e, ctx, &mut open, i) {
                Ok(said) => Outcome::ok(said),
                Err(why) => Outcome::error(why.to_string()),
            })
            .collect();
        // Nothing is ACKed before it is on disk.
        for pending in open.files {
            if let Err(source) = pending.file.sync_data() {
                let why = CopyDstError::Write {
                    path: pending.temp,
                    source,
                }
                .to_string();
                for i in pending.chunks {
                    outcomes[i] = Outcome::error(why.clone());
                }
            }
        }
        outcomes
    }
}

/// The temporary files a batch wrote and has not synced yet, with the chunks written to
/// each (by their place in the batch).
#[derive(Default)]
struct Open {
    files: Vec<Pending>,
}

struct Pending {
    temp: PathBuf,
    file: File,
    chunks: Vec<usize>,
}

impl Open {
    /// The temporary file `temp`, opened (created, and its name made durable, if new) for
    /// chunk `i`.
    fn file(&mut self, temp: &Path, i: usize) -> Result<&File, CopyDstError> {
        let at = match self.files.iter().position(|p| p.temp == temp) {
            Some(at) => at,
            None => {
                self.files.push(Pending {
                    temp: temp.to_path_buf(),
                    file: open_temp(temp)?,
                    chunks: Vec::new(),
                });
                self.files.len() - 1
            }
        };
        self.files[at].chunks.push(i);
        Ok(&self.files[at].file)
    }

    /// The file `temp` is done with (synced and renamed, or set aside): out of the batch's
    /// list, with the chunks it held.
    fn done(&mut self, temp: &Path) {
        self.files.retain(|p| p.temp != temp);
    }
}

/// Opens (or creates, private) a copy's temporary file, never through a symbolic link.
fn open_temp(temp: &Path) -> Result<File, CopyDstError> {
    let cannot = |source| CopyDstError::Write {
        path: temp.to_path_buf(),
        source,
    };
    let options = |create_new: bool| {
        let mut o = OpenOptions::new();
        o.read(true)
            .write(true)
            .mode(crate::files::PRIVATE_FILE)
            .custom_flags(libc::O_NOFOLLOW);
        if create_new {
            o.create_new(true);
        }
        o
    };
    let (file, made) = match options(true).open(temp) {
        Ok(file) => {
            // A restart must find it: its name is part of the copy's progress.
            let dir = temp.parent().unwrap_or(Path::new("/"));
            crate::files::sync_dir(dir).map_err(cannot)?;
            (file, true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            (options(false).open(temp).map_err(cannot)?, false)
        }
        Err(e) => return Err(cannot(e)),
    };
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(CopyDstError::NotAFile(temp.to_path_buf()));
    }
    // Only a file this node made is resumed: in a folder a local user may write (an
    // absolute dstPath), they could have put at this name a hard link to a file they may
    // not write (where protected_hardlinks is off), which the chunks then overwrote and
    // `finish` cut to the copy's size; or a file of their own, which they read as it is
    // written and change before it is checked. Whose a file this node makes is depends on
    // the disk (one owner for all on FAT mounted with `uid=`, nobody's under NFS's
    // root_squash): one just made is this node's, and one found is compared with it.
    let why = if meta.nlink() != 1 {
        Some("it has other names (a hard link): not a file this copy made")
    } else if !made
        && meta.uid() != crate::sys::euid()
        && new_file_owner(temp).ok() != Some(meta.uid())
    {
        Some("another user's file: not a file this copy made")
    } else {
        None
    };
    if let Some(why) = why {
        return Err(CopyDstError::NotOurs {
            path: temp.to_path_buf(),
            why,
        });
    }
    Ok(file)
}

/// Whose a file this node makes beside `temp` is: a file made, looked at, and removed.
fn new_file_owner(temp: &Path) -> io::Result<u32> {
    let mut probe = temp.as_os_str().to_owned();
    probe.push(".owner");
    let probe = PathBuf::from(probe);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::files::PRIVATE_FILE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)?;
    let _ = fs::remove_file(&probe);
    Ok(file.metadata()?.uid())
}

/// Takes chunk `i` of the batch: written into its copy's temporary file, and, the last,
/// checked and put in place. What happened, or why not.
fn take(e: &Envelope, ctx: &Context, open: &mut Open, i: usize) -> Result<String, CopyDstError> {
    let Some((grant, _)) = CopyGrant::of_chunk(e) else {
        return Err(CopyDstError::NotAChunk);
    };
    let chunk = Chunk::parse(&e.message.data)?;
    let dst = place(&ctx.data.root, grant.path)?;
    let temp = temp_path(&dst, grant.source, grant.id);
    let id = grant.id;
    if let Some(last) = &chunk.last {
        // Run again after it was put in place (this node died before it answered): the
        // temporary file is gone, and dstPath holds the file.
        if !temp.exists() && holds(&dst, &temp, last, mode_for(&grant, last)) {
            return Ok(already_in_place(id, &dst, last));
        }
    }
    // A file past this node's own copy limit is no copy it takes: a chunk far out would
    // make a sparse file whose check reads terabytes.
    let end = chunk.offset.saturating_add(chunk.bytes.len() as u64);
    let cap = ctx.config.max_copy_bytes;
    if end > cap
        || chunk
            .last
            .as_ref()
            .is_some_and(|l| l.size > cap || end > l.size)
    {
        return Err(CopyDstError::PastCap {
            id: id.to_string(),
            end,
            cap,
        });
    }
    let file = open.file(&temp, i)?;
    file.write_all_at(&chunk.bytes, chunk.offset)
        .map_err(|source| CopyDstError::Write {
            path: temp.clone(),
            source,
        })?;
    match &chunk.last {
        None => Ok(format!(
            "copy {id}: {} bytes at {}\n",
            chunk.bytes.len(),
            chunk.offset
        )),
        Some(last) => {
            let said = finish(e, ctx, &grant, last, file, &temp, &dst);
            // Synced by `finish` (or set aside): nothing left to sync for this batch, unless
            // the sync itself failed, and then the batch's sync says so for every chunk.
            if said.is_ok() || !temp.exists() {
                open.done(&temp);
            }
            said
        }
    }
}

/// The last chunk is written: checks the whole file and puts it in place.
fn finish(
    e: &Envelope,
    ctx: &Context,
    grant: &CopyGrant,
    last: &Last,
    file: &File,
    temp: &Path,
    dst: &Path,
) -> Result<String, CopyDstError> {
    let id = grant.id;
    // Every chunk ends within the size the last one gives (checked before it is written),
    // except those of an earlier run of the same CopySrc, cut short by a restart of its node
    // while the file there was longer: past that size they are not this copy's.
    let longer = file.metadata().is_ok_and(|m| m.len() > last.size);
    if longer {
        file.set_len(last.size)
            .map_err(|source| CopyDstError::Write {
                path: temp.to_path_buf(),
                source,
            })?;
    }
    file.sync_data().map_err(|source| CopyDstError::Write {
        path: temp.to_path_buf(),
        source,
    })?;
    let (size, sha256) = digest(file).map_err(|source| CopyDstError::Read {
        path: temp.to_path_buf(),
        source,
    })?;
    if size != last.size || sha256 != last.sha256 {
        if holds(dst, temp, last, mode_for(grant, last)) {
            // A chunk of a copy already done, written again after a restart.
            let _ = fs::remove_file(temp);
            return Ok(already_in_place(id, dst, last));
        }
        let mut bad = temp.as_os_str().to_owned();
        bad.push(".bad");
        let bad = PathBuf::from(bad);
        let aside = match fs::rename(temp, &bad) {
            Ok(()) => Aside::Kept(bad),
            Err(_) => Aside::Left(temp.to_path_buf()),
        };
        let why = CopyDstError::Mismatch(Box::new(Mismatch {
            id: id.to_string(),
            from: grant.source.to_string(),
            dst: dst.to_path_buf(),
            sent_sha256: last.sha256.clone(),
            sent_size: last.size,
            node: ctx.config.node.clone(),
            got_sha256: sha256,
            got_size: size,
            aside,
        }));
        ctx.outbox
            .report_error(format!("{}: {why}", ctx.config.node));
        return Err(why);
    }
    let mode = mode_for(grant, last)?;
    let dir = dst.parent().unwrap_or(Path::new("/"));
    let placed = file
        .set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(temp, dst))
        .and_then(|()| crate::files::sync_dir(dir));
    if let Err(source) = placed {
        let why = CopyDstError::NotPlaced(Box::new(NotPlaced {
            id: id.to_string(),
            from: grant.source.to_string(),
            sha256,
            dst: dst.to_path_buf(),
            temp: temp.to_path_buf(),
            source,
        }));
        ctx.outbox
            .report_error(format!("{}: {why}", ctx.config.node));
        return Err(why);
    }
    log::info!(
        "copy {id} from {} ({}): {size} bytes, sha256 {sha256}, in place as {} (mode {mode:04o})",
        grant.source,
        e.from_node,
        dst.display()
    );
    Ok(format!(
        "copy {id} complete: {size} bytes, sha256 {sha256}, in place as {} (mode {mode:04o})\n",
        dst.display()
    ))
}

fn already_in_place(id: &str, dst: &Path, last: &Last) -> String {
    format!(
        "copy {id} complete: {} bytes, sha256 {}, already in place as {}\n",
        last.size,
        last.sha256,
        dst.display()
    )
}

/// The permission bits a copy's file is put in place with: those asked for, or the
/// source file's.
fn mode_for(grant: &CopyGrant, last: &Last) -> Result<u32, CopyDstError> {
    let mode = match grant.mode {
        "" => last.mode,
        asked => super::parse_mode(asked)?,
    };
    Ok(mode & 0o777)
}

/// Whether `path` is the file `last` describes as this copy put it in place (a chunk run
/// again after that): a file of this node's user alone (or of whoever this node's files
/// are on that disk, as a new file beside its temporary file `temp` tells: see
/// `open_temp`), of the `mode` asked for (`Err`: a mode that cannot be, so none is), and
/// exactly these bytes. Anything else there is replaced by the copy's own: a link, or a
/// file of the same bytes someone else left (the copy would have said "in place" of what
/// they still own, its mode not the one asked for), or a FIFO (opening it waited for a
/// writer for ever, and the copy's lane with it).
fn holds(path: &Path, temp: &Path, last: &Last, mode: Result<u32, CopyDstError>) -> bool {
    let Ok(mode) = mode else {
        return false;
    };
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    file.metadata().is_ok_and(|m| {
        m.is_file()
            && m.nlink() == 1
            && (m.uid() == crate::sys::euid() || new_file_owner(temp).ok() == Some(m.uid()))
            && m.mode() & 0o777 == mode
            && m.len() == last.size
    }) && digest(&file).is_ok_and(|(size, sha)| size == last.size && sha == last.sha256)
}

/// The temporary file of copy `id` from `source` to `dst`: beside it, hidden, named after
/// both (hashed: an id may hold any character), so two copies never share one.
pub fn temp_path(dst: &Path, source: &str, id: &str) -> PathBuf {
    let hash = Sha256::digest(format!("{source}\n{id}").as_bytes());
    let hash: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Room for the suffix within a name's 255 bytes.
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    dst.with_file_name(format!(".{}.copy-{hash}", &name[..cut]))
}

/// Checks the form of a `dstPath` (see the module docs): at the source before anything is
/// queued, and again here.
pub fn check_dst_path(path: &str) -> Result<(), DstPathError> {
    let refuse = |why: &'static str| {
        Err(DstPathError {
            path: path.to_string(),
            why,
        })
    };
    if path.is_empty() {
        return refuse("empty");
    }
    if path.chars().any(char::is_control) {
        return refuse("it holds a control character");
    }
    if path.ends_with('/') {
        return refuse("it names a folder; give the file's path");
    }
    let parts = parts(path);
    if parts.contains(&"..") {
        return refuse("\"..\" is not allowed");
    }
    if parts.is_empty() {
        return refuse("it names no file");
    }
    if !path.starts_with('/') {
        check_in_data_folder(&parts).or_else(refuse)?;
    }
    Ok(())
}

/// A path's names, without empty ones and `.`.
fn parts(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect()
}

/// What a path under the data folder must be: in a folder, not one of steward's own.
fn check_in_data_folder(parts: &[&str]) -> Result<(), &'static str> {
    if parts.len() < 2 {
        return Err(BESIDE_INMSG);
    }
    if OWN_FOLDERS.contains(&parts[0]) {
        return Err(OWN_FOLDER);
    }
    Ok(())
}

const BESIDE_INMSG: &str =
    "in the data folder, a copy goes into a folder (e.g. \"incoming/file\"), not beside inmsg.txt";
const OWN_FOLDER: &str = "a folder of steward's own";

/// Where `path` (a `dstPath`) is on this node, whose data folder is `root`; a relative
/// path's folders are made as need be.
pub fn place(root: &Path, path: &str) -> Result<PathBuf, PlaceError> {
    check_dst_path(path)?;
    let parts = parts(path);
    let (name, folders) = parts.split_last().expect("check_dst_path: a file is named");
    let refuse = |at: &Path, why: &'static str| {
        Err(PlaceError::Refused {
            path: path.to_string(),
            at: at.to_path_buf(),
            why,
        })
    };
    let dir = if path.starts_with('/') {
        let dir: PathBuf = std::iter::once("/")
            .chain(folders.iter().copied())
            .collect();
        let real = match dir.canonicalize() {
            Ok(real) if real.is_dir() => real,
            Ok(_) => return refuse(&dir, "not a folder"),
            Err(source) => {
                return Err(PlaceError::Unusable {
                    path: path.to_string(),
                    at: dir,
                    source,
                })
            }
        };
        // The data folder's own real place: named through a link (or relatively), its
        // folders were compared with that name, never with where they are, and
        // `<real>/keys/trusted.txt` was a copy's to replace.
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        if let Ok(inside) = real.join(name).strip_prefix(&root) {
            let inside: Vec<&str> = inside
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => n.to_str(),
                    _ => None,
                })
                .collect();
            if let Err(why) = check_in_data_folder(&inside) {
                return refuse(&real, why);
            }
        }
        if let Err(why) = check_by_identity(&root, &real) {
            return refuse(&real, why);
        }
        // Written where it was checked: a link on the way pointed elsewhere once checked
        // (into steward's own folders) led every write after the check there.
        real
    } else {
        let mut dir = root.to_path_buf();
        for folder in folders {
            dir.push(folder);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return refuse(
                        &dir,
                        "a symbolic link: refused, it could lead out of the data folder",
                    )
                }
                Ok(meta) if !meta.is_dir() => return refuse(&dir, "not a folder"),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Err(e) = fs::DirBuilder::new()
                        .mode(crate::files::PRIVATE_DIR)
                        .create(&dir)
                    {
                        if e.kind() != io::ErrorKind::AlreadyExists {
                            return Err(PlaceError::NotMade {
                                path: path.to_string(),
                                at: dir,
                                source: e,
                            });
                        }
                    }
                }
                Err(source) => {
                    return Err(PlaceError::NotLookedAt {
                        path: path.to_string(),
                        at: dir,
                        source,
                    })
                }
            }
        }
        if let Err(why) = check_by_identity(root, &dir) {
            return refuse(&dir, why);
        }
        dir
    };
    Ok(dir.join(name))
}

/// As [`check_in_data_folder`], for the folder `dir`, by what its folders are, not by
/// their names: other names lead to the data folder `root` and its own folders (a bind
/// mount of it, as `/var/lib/steward` from `/mnt/usb/steward` on a Pi; a disk that ignores
/// case, where `KEYS` is `keys`), and canonicalize leaves them as they are.
fn check_by_identity(root: &Path, dir: &Path) -> Result<(), &'static str> {
    let id = |p: &Path| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(data) = id(root) else {
        return Ok(());
    };
    let mut below = None;
    for at in dir.ancestors() {
        let here = id(at);
        if here == Some(data) {
            return match below {
                None => Err(BESIDE_INMSG),
                Some(Some(first))
                    if OWN_FOLDERS.iter().any(|f| id(&root.join(f)) == Some(first)) =>
                {
                    Err(OWN_FOLDER)
                }
                Some(_) => Ok(()),
            };
        }
        below = Some(here);
    }
    Ok(())
}
