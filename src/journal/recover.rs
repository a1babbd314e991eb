//! Opening the journal: two passes over the file, a chunk at a time. The first finds what
//! is finished, how far each inbox file was read and where the last commit record is; the
//! second, where each lane's unfinished messages are. A torn or corrupt tail, and a batch
//! cut before its commit record, are cut off; what is kept is made durable before anything
//! acts on it. Damage before the tail that a later checkpoint proves was synced (the
//! disk's, not a torn write's) is passed over, and left behind by a compaction at once.

use super::*;
use record::Passed;

impl Journal {
    /// Opens (or creates) the journal in `dir`, cutting off a torn or corrupt tail, and
    /// finds every unfinished message again: in two passes over the file, a chunk at a time.
    pub fn open(dir: &Path) -> io::Result<(Journal, Recovery)> {
        Journal::open_on(Arc::new(Disk), dir)
    }

    /// As [`Journal::open`], on `storage` (the simulated disk of the crash tests).
    pub fn open_on(storage: Arc<dyn Storage>, dir: &Path) -> io::Result<(Journal, Recovery)> {
        let path = Journal::path(dir);
        let mut file = RecordFile::open(&*storage, &path)?;
        let mut recovery = Recovery::default();
        let mut found = Found::read(&file, &path, file.end(), Pass::Any)?;
        // Damage no checkpoint after it proves synced may be a torn write's (writeback
        // reorders pages: a later record on disk, an earlier one not): cut there, with
        // everything after it, as a torn tail is. The first pass went on past it only to
        // look for such a proof; the second stops there.
        if let Some(torn) = found.unproven.take() {
            let proven = std::mem::take(&mut found.passed);
            let within: Vec<(u64, u64)> = proven.iter().map(|p| (p.from, p.to)).collect();
            found = Found::read(&file, &path, torn.from, Pass::Within(&within))?;
            // The same damage before it, proven by checkpoints the first pass read (some
            // may lie past the cut).
            (found.passed, found.unproven) = (proven, None);
            let kept = found.kept;
            found.cut = Some(cut_message(
                &path,
                &format!(
                    "at byte {}: {}, and no checkpoint after it says it was synced",
                    torn.from, torn.why
                ),
                kept,
                torn.from,
            ));
        }
        recovery.cut = found.cut;
        recovery.passed_over = found
            .passed
            .iter()
            .map(|p| {
                format!(
                    "{}: at byte {}: {}; passed over bytes {} to {} (synced before, so the disk's damage: what it held is lost), the records after them kept",
                    path.display(),
                    p.from,
                    p.why,
                    p.from,
                    p.to
                )
            })
            .collect();
        let mut size = found.end;
        file.found_end(size)?;
        // A batch whose commit record never made it to disk was never taken: its messages
        // are still in their inbox file, which is read again from the last committed offset.
        // Cut them off the file too, or a later commit record would commit them.
        if let Some((first, count)) = found.uncommitted {
            file.found_end(first)?;
            size = first;
            let dropped = format!(
                "dropped {count} message(s) of a batch cut before its commit; they are taken again from their inbox file"
            );
            recovery.cut = Some(match recovery.cut.take() {
                Some(cut) => format!("{cut}; {dropped}"),
                None => dropped,
            });
        }
        let mut journal = Journal {
            storage,
            dir: dir.to_path_buf(),
            file,
            next_seq: found.next_seq,
            lanes: HashMap::new(),
            pending: 0,
            live_bytes: 0,
            inbox_offsets: found.inbox_offsets,
            unsynced_batches: VecDeque::new(),
            compact_not_before: None,
            unsettled: HashSet::new(),
            bytes_written: 0,
            fsync_seconds: Vec::new(),
            unreadable: Vec::new(),
            hot_bytes: 0,
            // Nothing says the file's last records are durable (the open made them so):
            // a checkpoint is due.
            claimed: 0,
            to_claim: size,
            // Compacted away at once (below), or by the supervisor's tick.
            damaged: found.passed.iter().map(|p| (p.from, p.to)).collect(),
            // An inbox file's offset recorded only before damage may have been recorded
            // again in it, further on.
            inbox_damage: found
                .passed
                .last()
                .map(|last| (last.to, std::mem::take(&mut found.inbox_at))),
        };
        for (lane, through) in found.done {
            let l = journal.lanes.entry(lane).or_default();
            (l.done_through, l.handed_through) = (through, through);
        }
        let legacy = journal.locate_unfinished(size, &found.legacy_done, &mut recovery)?;
        let mut lanes: Vec<Subject> = journal
            .lanes
            .iter()
            .filter(|(_, l)| l.pending > 0)
            .filter_map(|(name, _)| Subject::parse(name).ok())
            .collect();
        lanes.sort();
        recovery.lanes = lanes;
        recovery.pending = journal.pending;
        recovery.inbox_offsets = journal.inbox_offsets.clone();
        if legacy {
            // Written before lanes: rewrite it in today's form at once.
            journal.compact_with(&found.legacy_done)?;
        } else {
            // A full disk is no reason not to start: compaction is tried again later.
            if let Err(e) = journal.maintain() {
                if journal.unusable().is_some() {
                    return Err(e);
                }
                log::warn!("journal: cannot compact now: {e}");
            }
        }
        Ok((journal, recovery))
    }

    /// The second pass: where the unfinished messages are, up to `end`. Whether the file
    /// was written before lanes.
    fn locate_unfinished(
        &mut self,
        end: u64,
        legacy_done: &HashSet<u64>,
        recovery: &mut Recovery,
    ) -> io::Result<bool> {
        let mut legacy = !legacy_done.is_empty();
        let reader = self.file.handle().clone();
        // Damage the first pass passed over is passed over again; any other (a page that
        // read then, and not now) fails the open, as a read error does.
        let mut records = Records::new(&*reader, 0, end).passing_within(&self.damaged);
        for r in records.by_ref() {
            let (offset, len, record) = r?;
            let span = Span { offset, len };
            match record {
                Record::Accepted { seq, lane, .. } => self.index(lane, seq, span, None),
                Record::LegacyAccepted { seq, envelope } => {
                    legacy = true;
                    if legacy_done.contains(&seq) {
                        continue;
                    }
                    match Envelope::decode(&envelope) {
                        Ok(e) => self.index(e.message.subject().to_string(), seq, span, None),
                        Err(e) => recovery.undecodable.push(format!("record {seq}: {e}")),
                    }
                }
                _ => {}
            }
        }
        if let Some(why) = records.corruption {
            return Err(io::Error::other(format!(
                "journal unreadable where it read before: {why}"
            )));
        }
        Ok(legacy)
    }

    /// Notes an accepted message of `lane` at `span`, unless the lane is done past it;
    /// `hot`: the message as it was written (this run's own), kept if the message waits in
    /// the lane's window and the lane has room (see [`Lane::hot`](super::Lane)).
    pub(super) fn index(&mut self, lane: String, seq: u64, span: Span, mut hot: Option<Entry>) {
        let l = self.lanes.entry(lane).or_default();
        if seq > l.done_through {
            l.pending += 1;
            l.live_bytes += span.len as u64;
            self.pending += 1;
            self.live_bytes += span.len as u64;
            if seq > l.handed_through {
                l.waiting.wait(seq, span);
                if l.waiting
                    .window
                    .back()
                    .is_some_and(|&(last, _)| last == seq)
                {
                    if let Some(entry) = hot.take() {
                        hot = l.keep(entry);
                    }
                }
            }
        }
        if let Some(entry) = hot {
            self.hot_bytes -= super::hot_cost(&entry);
        }
    }
}

/// What damage the first pass passes over.
enum Pass<'a> {
    /// Any, to look for a checkpoint after it that proves it the disk's.
    Any,
    /// Only that in these stretches, proven so by a pass before.
    Within(&'a [(u64, u64)]),
}

/// What the first pass over the file finds.
struct Found {
    next_seq: u64,
    /// Each lane's `DoneThrough`.
    done: HashMap<String, u64>,
    /// Finished messages of a journal written before lanes.
    legacy_done: HashSet<u64>,
    inbox_offsets: BTreeMap<String, u64>,
    /// The first `Accepted` record after the last commit record, and how many there are.
    uncommitted: Option<(u64, usize)>,
    /// Where the complete records end, and what was cut past it.
    end: u64,
    cut: Option<String>,
    /// Damage passed over, each proven synced by a checkpoint after it.
    passed: Vec<Passed>,
    /// The first damage passed over that no checkpoint after it proves synced.
    unproven: Option<Passed>,
    /// How many records were read.
    kept: usize,
    /// Where each inbox file's last `InboxOffset` record is.
    inbox_at: HashMap<String, u64>,
}

impl Found {
    /// The first pass: what is finished, how far inbox files were read, where the last
    /// commit record is; up to `end`, passing over damage as `pass` says (noting whether a
    /// checkpoint after it proves it synced).
    fn read(file: &RecordFile, path: &Path, end: u64, pass: Pass) -> io::Result<Found> {
        let mut found = Found {
            next_seq: 1,
            done: HashMap::new(),
            legacy_done: HashSet::new(),
            inbox_offsets: BTreeMap::new(),
            uncommitted: None,
            end: 0,
            cut: None,
            passed: Vec::new(),
            unproven: None,
            kept: 0,
            inbox_at: HashMap::new(),
        };
        // Damage passed over, waiting for a checkpoint that says it was synced.
        let mut unproven: Vec<Passed> = Vec::new();
        let records = Records::new(&**file.handle(), 0, end);
        // Damage passed over here is proven synced already: a batch before it whose commit
        // record it held was synced whole (a checkpoint says so), committed, not cut.
        let proven_already = matches!(pass, Pass::Within(_));
        let mut records = match pass {
            Pass::Any => records.passing_below(u64::MAX),
            Pass::Within(stretches) => records.passing_within(stretches),
        };
        while let Some(r) = records.next() {
            let (offset, _, record) = r?;
            found.kept += 1;
            if proven_already && !records.passed.is_empty() {
                found.uncommitted = None;
            }
            unproven.append(&mut records.passed);
            match record {
                Record::Checkpoint { next_seq, synced } => {
                    found.next_seq = found.next_seq.max(next_seq);
                    found.uncommitted = None;
                    // Written once everything before `synced` was durable: damage there
                    // is the disk's. (A checkpoint from before session 34 says nothing.)
                    let synced = synced.unwrap_or(0);
                    let (proven, waiting) = unproven.drain(..).partition(|p| p.to <= synced);
                    found.passed.extend::<Vec<Passed>>(proven);
                    unproven = waiting;
                }
                Record::InboxOffset { file, offset: read } => {
                    found.inbox_at.insert(file.clone(), offset);
                    found.inbox_offsets.insert(file, read);
                    found.uncommitted = None;
                }
                Record::Accepted { seq, .. } | Record::LegacyAccepted { seq, .. } => {
                    found.next_seq = found.next_seq.max(seq + 1);
                    match &mut found.uncommitted {
                        Some((_, n)) => *n += 1,
                        None => found.uncommitted = Some((offset, 1)),
                    }
                }
                Record::DoneThrough { seq, lane } => {
                    found.next_seq = found.next_seq.max(seq + 1);
                    let through = found.done.entry(lane).or_default();
                    *through = (*through).max(seq);
                }
                Record::LegacyDone { seq } => {
                    found.legacy_done.insert(seq);
                }
                Record::Started { .. } | Record::Finished { .. } => {}
            }
        }
        found.end = records.reached();
        if proven_already && !records.passed.is_empty() {
            found.uncommitted = None;
        }
        unproven.append(&mut records.passed);
        if let Some(why) = &records.corruption {
            found.cut = Some(cut_message(path, why, found.kept, found.end));
        }
        found.passed.sort_by_key(|p| p.from);
        if let Some(first) = unproven.into_iter().min_by_key(|p| p.from) {
            found.passed.retain(|p| p.from < first.from);
            found.unproven = Some(first);
        }
        Ok(found)
    }
}
