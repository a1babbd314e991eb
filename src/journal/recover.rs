//! Opening the journal: two passes over the file, a chunk at a time. The first finds what
//! is finished, how far each inbox file was read and where the last commit record is; the
//! second, where each lane's unfinished messages are. A torn or corrupt tail, and a batch
//! cut before its commit record, are cut off; what is kept is made durable before anything
//! acts on it.

use super::*;

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
        let len = file.end();
        let mut recovery = Recovery::default();

        // First pass: what is finished, how far inbox files were read, where the last
        // commit record is.
        let mut next_seq = 1;
        let mut done: HashMap<String, u64> = HashMap::new();
        let mut legacy_done: HashSet<u64> = HashSet::new();
        let mut inbox_offsets = BTreeMap::new();
        // The first Accepted record after the last commit record, and how many there are.
        let mut uncommitted: Option<(u64, usize)> = None;
        let mut kept = 0;
        let reader = file.handle().clone();
        let mut records = Records::new(&*reader, 0, len);
        for r in records.by_ref() {
            let (offset, _, record) = r?;
            kept += 1;
            match record {
                Record::Checkpoint { next_seq: n } => {
                    next_seq = next_seq.max(n);
                    uncommitted = None;
                }
                Record::InboxOffset { file, offset } => {
                    inbox_offsets.insert(file, offset);
                    uncommitted = None;
                }
                Record::Accepted { seq, .. } | Record::LegacyAccepted { seq, .. } => {
                    next_seq = next_seq.max(seq + 1);
                    match &mut uncommitted {
                        Some((_, n)) => *n += 1,
                        None => uncommitted = Some((offset, 1)),
                    }
                }
                Record::DoneThrough { seq, lane } => {
                    let through = done.entry(lane).or_default();
                    *through = (*through).max(seq);
                }
                Record::LegacyDone { seq } => {
                    legacy_done.insert(seq);
                }
                Record::Started { .. } | Record::Finished { .. } => {}
            }
        }
        let mut size = records.reached();
        let corruption = records.corruption.take();
        if let Some(why) = &corruption {
            recovery.cut = Some(cut_message(&path, why, kept, size));
        }
        file.found_end(size)?;
        // A batch whose commit record never made it to disk was never taken: its messages
        // are still in their inbox file, which is read again from the last committed offset.
        // Cut them off the file too, or a later commit record would commit them.
        if let Some((first, count)) = uncommitted {
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

        // Second pass: where the unfinished messages are.
        let mut journal = Journal {
            storage,
            dir: dir.to_path_buf(),
            file,
            next_seq,
            lanes: HashMap::new(),
            pending: 0,
            live_bytes: 0,
            inbox_offsets,
            unsynced_batches: VecDeque::new(),
            compact_not_before: None,
            unsettled: HashSet::new(),
            bytes_written: 0,
            fsync_seconds: Vec::new(),
            unreadable: Vec::new(),
        };
        for (lane, through) in done {
            let l = journal.lanes.entry(lane).or_default();
            (l.done_through, l.handed_through) = (through, through);
        }
        let mut legacy = !legacy_done.is_empty();
        for r in Records::new(&*reader, 0, size) {
            let (offset, len, record) = r?;
            let span = Span { offset, len };
            match record {
                Record::Accepted { seq, lane, .. } => journal.index(lane, seq, span),
                Record::LegacyAccepted { seq, envelope } => {
                    legacy = true;
                    if legacy_done.contains(&seq) {
                        continue;
                    }
                    match Envelope::decode(&envelope) {
                        Ok(e) => journal.index(e.message.subject().to_string(), seq, span),
                        Err(e) => recovery.undecodable.push(format!("record {seq}: {e}")),
                    }
                }
                _ => {}
            }
        }
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
            journal.compact_with(&legacy_done)?;
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

    /// Notes an accepted message of `lane` at `span`, unless the lane is done past it.
    pub(super) fn index(&mut self, lane: String, seq: u64, span: Span) {
        let l = self.lanes.entry(lane).or_default();
        if seq <= l.done_through {
            return;
        }
        l.pending += 1;
        l.live_bytes += span.len as u64;
        self.pending += 1;
        self.live_bytes += span.len as u64;
        if seq > l.handed_through {
            l.waiting.wait(seq, span);
        }
    }
}
