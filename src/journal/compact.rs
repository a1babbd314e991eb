//! Compaction: once finished records make up most of the journal, its live records are
//! streamed to a new file that atomically replaces the old one, so the journal stays small
//! whatever the uptime. Run from [`Journal::maintain`] (the supervisor's tick), never on a
//! message's path.

use super::*;

/// Each lane's waiting messages and live bytes, by their places in a compacted file.
type Relocated = HashMap<String, (Waiting, u64)>;

impl Journal {
    /// Rewrites the journal with only its live records, atomically replacing the old file.
    pub fn compact(&mut self) -> io::Result<()> {
        self.compact_with(&HashSet::new())
    }

    /// Compaction, also taking journals written before lanes (`legacy_done`: their
    /// finished messages) into today's form. Streams from the old file to the new one, and
    /// finds each lane's waiting messages anew on the way.
    ///
    /// Until the rename, a failure (a full disk) leaves everything as it was. From the
    /// rename on, it leaves the journal unusable: the name may or may not point at the new
    /// file, and writing on into the old one would write into a file no one reads again.
    pub(super) fn compact_with(&mut self, legacy_done: &HashSet<u64>) -> io::Result<()> {
        if let Some(why) = self.file.unusable() {
            return Err(io::Error::other(format!("unusable since: {why}")));
        }
        let path = Journal::path(&self.dir);
        let tmp = path.with_extension("compacting");
        let (written, mut rebuilt) = match self.copy_live(&tmp, legacy_done) {
            Ok(copied) => copied,
            Err(e) => {
                let _ = self.storage.remove(&tmp);
                return Err(e);
            }
        };
        let replaced = self
            .storage
            .rename(&tmp, &path)
            .and_then(|()| self.storage.sync_dir(&self.dir))
            .and_then(|()| RecordFile::rewritten(&*self.storage, &path, written));
        self.file = match replaced {
            Ok(file) => file,
            Err(e) => {
                self.file.fail(format!(
                    "journal: compaction could not replace the file: {e}"
                ));
                return Err(e);
            }
        };
        // Only now, with the new file in place, do the new places count.
        (self.claimed, self.to_claim) = (written, written);
        self.damaged.clear();
        self.live_bytes = 0;
        for (name, l) in self.lanes.iter_mut() {
            (l.waiting, l.live_bytes) = rebuilt.remove(name).unwrap_or_default();
            self.live_bytes += l.live_bytes;
        }
        self.bytes_written += written;
        log::debug!(
            "journal compacted to {written} bytes ({} pending messages)",
            self.pending
        );
        Ok(())
    }

    /// Writes the live records to `tmp` (synced); returns its size, and each lane's waiting
    /// messages and live bytes by their places in it.
    fn copy_live(&self, tmp: &Path, legacy_done: &HashSet<u64>) -> io::Result<(u64, Relocated)> {
        let mut out = Copy::new(self.storage.create(tmp)?);
        let mut buf = Vec::new();
        for (file, offset) in &self.inbox_offsets {
            encode(
                &Record::InboxOffset {
                    file: file.clone(),
                    offset: *offset,
                },
                &mut buf,
            );
        }
        out.write_all(&buf)?;
        let mut written = buf.len() as u64;
        let mut rebuilt = Relocated::new();
        let reader = self.file.handle().clone();
        // Damage opening the journal passed over is left behind here.
        let mut records = Records::new(&*reader, 0, self.file.end()).passing_within(&self.damaged);
        for r in records.by_ref() {
            let (seq, lane, envelope) = match r?.2 {
                Record::Accepted {
                    seq,
                    lane,
                    envelope,
                } => (seq, lane, envelope),
                Record::LegacyAccepted { seq, envelope } if !legacy_done.contains(&seq) => {
                    match Envelope::decode(&envelope) {
                        Ok(e) => (seq, e.message.subject().to_string(), envelope),
                        Err(_) => continue, // reported at open
                    }
                }
                _ => continue,
            };
            let Some(l) = self.lanes.get(&lane) else {
                continue;
            };
            if seq <= l.done_through {
                continue;
            }
            let handed_through = l.handed_through;
            let (waiting, live) = rebuilt.entry(lane.clone()).or_default();
            buf.clear();
            encode(
                &Record::Accepted {
                    seq,
                    lane,
                    envelope,
                },
                &mut buf,
            );
            let span = Span {
                offset: written,
                len: buf.len() as u32,
            };
            out.write_all(&buf)?;
            written += buf.len() as u64;
            *live += span.len as u64;
            if seq > handed_through {
                waiting.wait(seq, span);
            }
        }
        if let Some(why) = records.corruption {
            return Err(io::Error::other(format!("journal unreadable: {why}")));
        }
        // Last, as the commit record of everything before it, all of it durable once the
        // file is in place.
        buf.clear();
        encode(
            &Record::Checkpoint {
                next_seq: self.next_seq,
                synced: Some(written),
            },
            &mut buf,
        );
        out.write_all(&buf)?;
        written += buf.len() as u64;
        out.finish()?;
        Ok((written, rebuilt))
    }
}

/// A compaction's new file, written a chunk at a time and synced at the end.
struct Copy {
    file: crate::storage::Handle,
    buf: Vec<u8>,
    at: u64,
}

impl Copy {
    fn new(file: crate::storage::Handle) -> Copy {
        Copy {
            file,
            buf: Vec::with_capacity(CHUNK),
            at: 0,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buf, self.at)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_data()
    }
}
