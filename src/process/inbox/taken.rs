//! Taken files: their names, and what becomes of them once read, or after a power cut.
//!
//! The rename is not made durable before the file is read (a folder fsync: about 0.13 ms,
//! a tenth of a command's own time, on this project's machine). A power cut may undo it
//! after the journal recorded how far the taken file was read; `inmsg.txt` is then that
//! very file again, and the next start knows it by its identity, which the taken name
//! carries (its inode number and birth time, both kept by a rename): it is renamed back to
//! its taken name and read on from the journaled offset, never from 0. If it lost its tail
//! in the power cut (shorter than that offset), what follows its end was appended since,
//! from where cannot be told: it is kept aside (`inmsg.uncertain-*.txt`) and reported, not
//! read. (If so much was appended since that it is no longer shorter, that cannot be seen:
//! it is read from the offset, and an array cut there is rejected, kept and reported as any
//! bad input.) Where the filesystem may number files anew at each mount
//! ([`crate::sys::keeps_inode_numbers`]) or keeps no birth time, the rename is made durable
//! before reading, as before.
//!
//! A fully read file is finished later, together with others ([`FINISH_EVERY`]): the folder
//! is synced (its rename durable), it is marked done in the journal, removed, and the folder
//! synced again before its offset is forgotten. The done mark is what makes an identity
//! safe to look for: a file's inode number may be a new inmsg.txt's once it is removed, and
//! birth times are only as fine as the kernel's tick, but a removed file is always marked
//! done first, and a done file's identity is never looked for. (A done file found again
//! is removed only if it did not grow past its mark; else it is read on from there.)

use super::{uncertain_path, unix_nanos, Error, Inbox, Taken};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::time::{Duration, Instant};

/// How often fully taken files are finished (marked done, removed), all at once.
const FINISH_EVERY: Duration = Duration::from_millis(200);

/// Taken files read to their end, waiting to be finished together ([`Inbox::finish`]).
pub(super) struct Finished {
    pub(super) files: Vec<Taken>,
    /// When they were last finished (or tried).
    tried: Instant,
}

impl Default for Finished {
    fn default() -> Finished {
        Finished {
            files: Vec::new(),
            tried: Instant::now(),
        }
    }
}

impl Finished {
    pub(super) fn push(&mut self, t: Taken) {
        if self.files.is_empty() && self.tried.elapsed() >= FINISH_EVERY {
            // The first after a quiet while: its turn comes a full period from now.
            self.tried = Instant::now();
        }
        self.files.push(t);
    }

    pub(super) fn due(&self) -> bool {
        !self.files.is_empty() && self.tried.elapsed() >= FINISH_EVERY
    }

    /// How long until they are due, if there are any: at least a millisecond, as the watch
    /// counts its wait in whole ones (less would be no wait, and a spin).
    pub(super) fn wait(&self) -> Option<Duration> {
        (!self.files.is_empty()).then(|| {
            FINISH_EVERY
                .saturating_sub(self.tried.elapsed())
                .max(Duration::from_millis(1))
        })
    }
}

impl Inbox {
    /// What the last run left undone in the folder, by the journal's `offsets`: a taken
    /// file whose rename a power cut undid is `inmsg.txt` again (found by the identity its
    /// taken name carries) and gets that name back, to be read on from its offset; a file
    /// marked done whose removal was lost is removed (one that grew past its mark is read
    /// on). The offsets of files gone are forgotten, once the folder is synced; a name
    /// whose file was found as inmsg.txt but not put back is marked done first, so its
    /// identity is not looked for again.
    pub(super) fn put_back(&self, offsets: &BTreeMap<String, u64>) -> Result<(), Error> {
        let root = &self.node.data.root;
        let inmsg = self.node.data.inmsg();
        let mut found = fs::metadata(&inmsg)
            .ok()
            .and_then(|m| Some((Identity::of(&m)?, m.len())));
        let (mut gone, mut marks, mut changed) = (Vec::new(), Vec::new(), false);
        for (name, &offset) in offsets {
            if name.ends_with(DONE) {
                continue; // looked at with its file's name
            }
            if !name.starts_with(TAKING) {
                continue; // not an inbox file's (the startup folder's mark)
            }
            let path = root.join(name);
            let take = |source| Error::Take {
                path: path.clone(),
                source,
            };
            if let Some(&done) = offsets.get(&done_name(name)) {
                // Done: its rename was durable before its mark (see `finish`), so this
                // is never inmsg.txt. Removed unless it grew past the mark (then read on).
                match fs::metadata(&path) {
                    Ok(m) if m.len() > done => continue,
                    Ok(_) => {
                        fs::remove_file(&path).map_err(|source| Error::Remove { path, source })?;
                        changed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(Error::Read { path, source }),
                }
                gone.push(name);
                continue;
            }
            if path.exists() {
                continue;
            }
            let Some((identity, size)) = found.filter(|(i, _)| Some(*i) == Identity::named(name))
            else {
                gone.push(name);
                continue;
            };
            found = None; // one file is one taken name
            if size < offset {
                // It lost its tail in the power cut (what it had up to the offset is
                // journaled): whatever follows its end now was appended since, and where
                // that begins cannot be told. Kept aside for the operator, not read.
                let aside = uncertain_path(root);
                fs::rename(&inmsg, &aside).map_err(take)?;
                let why = format!(
                    "{}: after a power cut, inmsg.txt was {name} again but shorter ({size} bytes) than what was taken from it ({offset}); anything appended to inmsg.txt after the restart and before steward started is in {}: check it, then append what is missing to inmsg.txt",
                    self.node.config.node,
                    aside.display()
                );
                log::error!("{why}");
                self.node.report_error(why);
                marks.push((done_name(name), offset));
                gone.push(name);
                continue;
            }
            log::warn!(
                "{} is {name}, taken before a power cut undid its rename: read on from byte {offset}",
                inmsg.display()
            );
            fs::rename(&inmsg, &path).map_err(take)?;
            changed = true;
            // Replaced between the look and the rename (an editor's save): that file is
            // another, to be read from 0 under a name of its own.
            let renamed = fs::metadata(&path).ok().as_ref().and_then(Identity::of);
            if renamed != Some(identity) {
                let fresh = root.join(taken_name(root, renamed));
                fs::rename(&path, &fresh).map_err(take)?;
                marks.push((done_name(name), offset));
                gone.push(name);
            }
        }
        // Durably, before anything is marked done (a mark must never meet an un-renamed
        // inmsg.txt) or forgotten (as when a file is done: an earlier run's removal may not
        // be), and so that what was put back is under its taken name for good.
        if changed || !gone.is_empty() {
            crate::files::sync_dir(root).map_err(|source| Error::SyncFolder {
                path: root.clone(),
                source,
            })?;
        }
        if let Some((first, _)) = marks.first() {
            self.node.mark_inbox(&marks).map_err(|source| Error::Mark {
                path: root.join(first.trim_end_matches(DONE)),
                source,
            })?;
        }
        self.forget(gone);
        Ok(())
    }

    /// Finishes the fully taken files: syncs the folder (their renames durable: a done
    /// mark must never meet an inmsg.txt that a power cut un-renamed), marks those that
    /// carry an identity done in the journal (durably: once removed, a file's inode number
    /// may be a new inmsg.txt's), removes them, and syncs the folder again before their
    /// offsets are forgotten (a taken file a power cut brought back without its offset
    /// would be read again from 0). Two folder fsyncs and one journal fsync for all of them,
    /// at most every [`FINISH_EVERY`]: not one each right after a take, beside the fsyncs
    /// on the next messages' way. A file grown since it was read (a writer that held it
    /// unseen, where leases are not allowed) goes back to `taken`. With the disk full, they
    /// wait (in the folder, offsets journaled) for the next try.
    pub(super) fn finish(
        &self,
        finished: &mut Finished,
        taken: &mut Vec<Taken>,
    ) -> Result<(), Error> {
        finished.tried = Instant::now();
        let files = std::mem::take(&mut finished.files);
        for t in files {
            match grown(&t)? {
                true => taken.push(t),
                false => finished.files.push(t),
            }
        }
        if finished.files.is_empty() {
            return Ok(());
        }
        let root = &self.node.data.root;
        let folder = |source| Error::SyncFolder {
            path: root.clone(),
            source,
        };
        let marked: Vec<&Taken> = finished
            .files
            .iter()
            .filter(|t| Identity::named(&t.name).is_some())
            .collect();
        if let Some(first) = marked.first() {
            // Below the floor, no write is tried (each failed one costs an fsync).
            if let Err(why) = self.node.log_budget.check_free_space(root) {
                self.node.disk_full(&why.to_string());
                return Ok(());
            }
            crate::files::sync_dir(root).map_err(folder)?;
            let marks: Vec<(String, u64)> = marked
                .iter()
                .map(|t| (done_name(&t.name), t.offset))
                .collect();
            match self.node.mark_inbox(&marks) {
                Ok(()) => self.node.disk_has_room(),
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    self.node
                        .disk_full(&format!("cannot mark taken inmsg.txt files done: {e}"));
                    return Ok(());
                }
                Err(source) => {
                    return Err(Error::Mark {
                        path: first.path.clone(),
                        source,
                    })
                }
            }
        }
        // Each looked at once more just before it goes: one grown since (a writer unseen)
        // is read on, and its next mark carries the larger offset.
        let files = std::mem::take(&mut finished.files);
        for t in files {
            if grown(&t)? {
                taken.push(t);
                continue;
            }
            match fs::remove_file(&t.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // A folder in its place (see `Inbox::not_a_file`): left as it is, not
                // failed over (the inbox restarted into it for ever).
                Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
                Err(source) => {
                    return Err(Error::Remove {
                        path: t.path.clone(),
                        source,
                    })
                }
            }
            finished.files.push(t);
        }
        crate::files::sync_dir(root).map_err(folder)?;
        self.forget(finished.files.drain(..).map(|t| t.name));
        Ok(())
    }

    /// Forgets the offsets of taken files gone for good, and their done marks.
    fn forget<N: AsRef<str>>(&self, names: impl IntoIterator<Item = N>) {
        let mut journal = self.node.journal();
        for name in names {
            journal.forget_inbox(name.as_ref());
            journal.forget_inbox(&done_name(name.as_ref()));
        }
    }
}

/// Whether a fully read taken file has grown since (a writer that held it unseen, where
/// leases are not allowed); one removed meanwhile has not.
fn grown(t: &Taken) -> Result<bool, Error> {
    // Not through a link: a taken file is never one (see `Inbox::not_a_file`).
    match fs::symlink_metadata(&t.path) {
        Ok(m) => Ok(m.is_file() && m.len() > t.offset),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Read {
            path: t.path.clone(),
            source,
        }),
    }
}

/// What makes a file itself whatever its name: its inode number and its birth time (ns).
/// A rename keeps both. The number alone would do for files steward removes (each is marked
/// done first, and a done file's identity is never looked for); the birth time guards
/// against one removed by hand while steward was down, whose number a new inmsg.txt may
/// have (the same birth time too only if made within the same tick of the kernel's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    inode: u64,
    born: u128,
}

impl Identity {
    /// A file's identity; `None` where the filesystem keeps no birth time.
    pub(super) fn of(meta: &fs::Metadata) -> Option<Identity> {
        use std::os::unix::fs::MetadataExt;
        let born = meta
            .created()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        Some(Identity {
            inode: meta.ino(),
            born: born.as_nanos(),
        })
    }

    /// The identity a taken file's name carries (see [`taken_name`]), if any.
    fn named(name: &str) -> Option<Identity> {
        let rest = name.strip_prefix(TAKING)?;
        let mut parts = rest.split('-');
        let (_when, inode, born) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(Identity {
            inode: inode.parse().ok()?,
            born: born.parse().ok()?,
        })
    }
}

/// The name inmsg.txt is taken under in `root`: `inmsg.taking-<ns since 1970, 20 digits>`
/// (so the names sort in the order taken), then `-<inode>-<birth ns>` where the file has an
/// identity; never one a file there has (two takes within a tick of a coarse clock, on a
/// filesystem without identities, would share a name, and the second rename replace a file
/// not yet read).
pub(super) fn taken_name(root: &std::path::Path, identity: Option<Identity>) -> String {
    taken_name_from(root, unix_nanos(), identity)
}

fn taken_name_from(root: &std::path::Path, mut at: u128, identity: Option<Identity>) -> String {
    loop {
        let when = format!("{TAKING}{at:020}");
        let name = match identity {
            Some(Identity { inode, born }) => format!("{when}-{inode}-{born}"),
            None => when,
        };
        if fs::symlink_metadata(root.join(&name)).is_err() {
            return name;
        }
        at += 1;
    }
}

/// What a taken file's done mark is journaled under: its name and this suffix, as an
/// inbox offset (a record any version reads; one without this meaning passes it over, as
/// it names no file).
const DONE: &str = ".done";

/// How a taken file's name begins.
pub(super) const TAKING: &str = "inmsg.taking-";

pub(super) fn done_name(taken: &str) -> String {
    format!("{taken}{DONE}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_name_is_never_one_a_file_has() {
        let dir = tempfile::tempdir().unwrap();
        let first = taken_name_from(dir.path(), 7, None);
        fs::write(dir.path().join(&first), "[]").unwrap();
        let second = taken_name_from(dir.path(), 7, None);
        assert_eq!(
            (first.as_str(), second.as_str()),
            (
                "inmsg.taking-00000000000000000007",
                "inmsg.taking-00000000000000000008"
            )
        );
    }

    #[test]
    fn a_taken_name_carries_the_files_identity_and_sorts_in_the_order_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inmsg.txt");
        fs::write(&path, "[]").unwrap();
        let identity = Identity::of(&fs::metadata(&path).unwrap());
        let Some(identity) = identity else {
            return; // this filesystem keeps no birth time: taken names carry none
        };
        let first = taken_name(dir.path(), Some(identity));
        let second = taken_name(dir.path(), Some(identity));
        assert!(first <= second, "{first} then {second}");
        assert_eq!(Identity::named(&first), Some(identity));
        // Renamed, still itself; another file made in its place is not.
        let taken = dir.path().join(&first);
        fs::rename(&path, &taken).unwrap();
        assert_eq!(Identity::of(&fs::metadata(&taken).unwrap()), Some(identity));
        fs::write(&path, "[]").unwrap();
        assert_ne!(Identity::of(&fs::metadata(&path).unwrap()), Some(identity));
        // Names from before identities, and done marks, carry none.
        assert_eq!(Identity::named("inmsg.taking-00000000000000000001"), None);
        assert_eq!(Identity::named(&done_name(&first)), None);
        assert_eq!(Identity::named("inmsg.taking-1-x-2"), None);
    }
}
