//! Intake: the one way into the system. Everything that enters goes through
//! [`Node::accept`]: journal first (written, fsync'd without the journal's lock,
//! committed), then each lane's publisher is woken (the supervisor starts one where there
//! is none). That holds for operators' messages from inmsg.txt, `steward send` and the
//! startup folder, results sent as messages of their own, and the node's own error reports
//! alike. Also here: how a message ends ([`Node::finish`]), who waits to hear it
//! ([`Progress`]), and intake's view of a full disk.

use super::*;

/// A message's id, and where its progress arrives.
type Watched = (String, Receiver<Progress>);

/// Where messages taken in come from, for the data folder's free-space floor
/// (`--minFreeBytesForLogs`).
#[derive(Clone, Copy)]
enum Flow {
    /// New work from an operator (inmsg.txt, `steward send`): refused if journaling it
    /// would take the disk under the floor, whose room is for finishing what is in flight.
    /// The refusal is an [`io::ErrorKind::StorageFull`] error holding the
    /// [`crate::log_budget::BelowFloor`]; nothing of the batch is journaled.
    New,
    /// What the node itself sends of work in flight (results, error reports), for which
    /// the floor's room is kept, and the startup folder's (read once at each start, with
    /// no intake to wait in).
    Own,
}

/// How a watched message is going.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Progress {
    /// An attempt is under way (e.g. "attempt 2/4").
    Attempt(String),
    /// It ended: "acked", "published", "refused", "interrupted" or "failed", with the reply
    /// if one came.
    Finished {
        outcome: String,
        reply: Option<crate::message::Reply>,
        why: Option<String>,
    },
}

impl Node {
    /// Takes messages into the system: one journal write and fsync for the batch (with how
    /// far the inbox file has been read), then wakes their publishers.
    pub fn accept(&self, messages: Vec<Message>, inbox: Option<(&str, u64)>) -> io::Result<()> {
        self.accept_inner(messages, inbox, Flow::Own, false, |_| Ok(()))
            .map(|_| ())
    }

    /// As [`Node::accept`], for new work from inmsg.txt: refused if journaling it would
    /// take the data folder's disk under the free-space floor (see [`Flow::New`]).
    pub fn accept_new(&self, messages: Vec<Message>, inbox: (&str, u64)) -> io::Result<()> {
        self.accept_inner(messages, Some(inbox), Flow::New, false, |_| Ok(()))
            .map(|_| ())
    }

    /// As [`Node::accept`] (not from an inbox file), and returns each message's id.
    pub fn accept_ids(&self, messages: Vec<Message>) -> io::Result<Vec<String>> {
        self.accept_inner(messages, None, Flow::Own, false, |_| Ok(()))
            .map(|(entries, _)| entries.iter().map(|e| e.envelope.id.clone()).collect())
    }

    /// As [`Node::accept`] (not from an inbox file), with `mark` journaled as the batch's
    /// inbox offset (`(name, value)`), and `list` given the batch's entries before any of
    /// it is written (see [`crate::journal::Journal::write_listed`]): for the startup
    /// folder. `list` runs under the journal's lock: it must not journal anything (nor
    /// report an error, which is journaled).
    pub fn accept_listed(
        &self,
        messages: Vec<Message>,
        mark: (&str, u64),
        list: impl FnOnce(&[crate::journal::Entry]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.accept_inner(messages, Some(mark), Flow::Own, false, list)
            .map(|_| ())
    }

    /// Journals a result of `request` as a message of its own, to where the request asked
    /// (see [`crate::reply`]): its id, or `None` if the request asked for no result message.
    pub fn send_result_of(
        &self,
        request: &crate::message::Envelope,
        outcome: &crate::methods::Outcome,
    ) -> io::Result<Option<String>> {
        let max_payload = self.broker.max_payload();
        let Some(result) = crate::reply::result_message(request, outcome, max_payload) else {
            return Ok(None);
        };
        Ok(self.accept_ids(vec![result])?.pop())
    }

    /// As [`Node::accept_new`] (not from an inbox file), and returns each message's id with
    /// a channel on which its progress (attempts, then how it ended) will arrive: for
    /// `steward send`.
    pub fn accept_watched(
        &self,
        messages: Vec<Message>,
    ) -> io::Result<Vec<(String, Receiver<Progress>)>> {
        self.accept_inner(messages, None, Flow::New, true, |_| Ok(()))
            .map(|(_, watched)| watched)
    }

    fn accept_inner(
        &self,
        messages: Vec<Message>,
        inbox: Option<(&str, u64)>,
        flow: Flow,
        watch: bool,
        list: impl FnOnce(&[crate::journal::Entry]) -> io::Result<()>,
    ) -> io::Result<(Vec<crate::journal::Entry>, Vec<Watched>)> {
        // Under the journal's lock, with what the batch takes of the disk: two intakes
        // checking at once cannot both take the last room above the floor, nor a batch (up
        // to 64 MiB of `toNodes` copies) go by a check made as if it wrote nothing. (A
        // `statvfs` the other writers wait for: on a filesystem whose server stalls it, the
        // journal's own writes, there too, would stall them as long.)
        let floor = |entries: &[crate::journal::Entry], taking: u64| match flow {
            Flow::New if !entries.is_empty() => Ok(self
                .log_budget
                .check_free_space_for(&self.data.root, taking)?),
            _ => Ok(()),
        };
        let list = |entries: &[crate::journal::Entry], taking: u64| {
            floor(entries, taking).and_then(|()| list(entries))
        };
        let (written, watched) = {
            let mut journal = self.journal();
            let written = match journal.write_listed(&self.config.node, messages, inbox, list) {
                Ok(written) => written,
                Err(e) => {
                    self.stop_if_unusable(&journal);
                    return Err(e);
                }
            };
            // Watchers are in place before the messages reach a publisher (they do once
            // committed, below), so none can miss how its message ended (and `steward
            // send` would wait forever). Lock order: journal, then watchers; nothing takes
            // them the other way round.
            let mut watched = Vec::new();
            if watch {
                let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
                for e in &written.entries {
                    let (tx, rx) = crossbeam_channel::unbounded();
                    watchers.insert(e.envelope.id.clone(), tx);
                    watched.push((e.envelope.id.clone(), rx));
                }
            }
            (written, watched)
        };
        // The fsync without the journal's lock: publishers take and finish meanwhile, and
        // other appenders write (one fsync may cover several batches).
        let synced = written.sync();
        {
            let mut journal = self.journal();
            if let Err(e) = journal.commit(&written, synced) {
                self.stop_if_unusable(&journal);
                return Err(e);
            }
            self.metrics.journal(&mut journal);
        }
        let entries = written.entries;
        // Counted and woken once per run of messages alike (a batch is mostly one lane).
        let mut lanes: Vec<Subject> = Vec::new();
        let mut seen = HashSet::new();
        let mut rest = &entries[..];
        while let Some(first) = rest.first() {
            let lane = first.envelope.message.subject();
            let run = rest
                .iter()
                .take_while(|e| lane.is_of(&e.envelope.message))
                .count();
            self.metrics
                .accepted
                .with_label_values(&[lane.method.as_str()])
                .inc_by(run as u64);
            if seen.insert(lane.clone()) {
                lanes.push(lane);
            }
            rest = &rest[run..];
        }
        self.wake(lanes);
        Ok((entries, watched))
    }

    /// Records in the journal, durably (one write per mark, one fsync for all), how far
    /// each of `marks`' inbox files was read: `(name, offset)`, for the inbox's done marks
    /// (see [`crate::process::inbox`]). No message is taken.
    pub fn mark_inbox(&self, marks: &[(String, u64)]) -> io::Result<()> {
        let last = {
            let mut journal = self.journal();
            let mut last = None;
            for (name, offset) in marks {
                match journal.write(&self.config.node, Vec::new(), Some((name, *offset))) {
                    Ok(written) => last = Some(written),
                    Err(e) => {
                        self.stop_if_unusable(&journal);
                        return Err(e);
                    }
                }
            }
            last
        };
        let Some(last) = last else {
            return Ok(());
        };
        // Without the journal's lock, as a batch's; the last mark's fsync covers the rest.
        let synced = last.sync();
        let mut journal = self.journal();
        journal
            .commit(&last, synced)
            .inspect_err(|_| self.stop_if_unusable(&journal))
    }

    /// Tells whoever watches message `id` how it is going; the last word ends the watch.
    pub fn progress(&self, id: &str, progress: Progress) {
        self.progress_all([(id, progress)]);
    }

    /// [`Node::progress`] for many messages, under one lock; when nobody watches any
    /// message (the usual case), `updates` is not even made.
    pub fn progress_all<'i>(&self, updates: impl IntoIterator<Item = (&'i str, Progress)>) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if watchers.is_empty() {
            return;
        }
        for (id, progress) in updates {
            let last = matches!(progress, Progress::Finished { .. });
            if let Some(tx) = watchers.get(id) {
                if tx.send(progress).is_err() || last {
                    watchers.remove(id);
                }
            }
        }
    }

    /// Tells each lane's publisher that messages wait for it in the journal; a lane
    /// without a publisher gets one from the supervisor.
    pub fn wake(&self, lanes: Vec<Subject>) {
        let mut unserved = Vec::new();
        {
            let publishers = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
            for lane in lanes {
                match publishers.get(&lane) {
                    // Full means a wake-up is already waiting: one is enough.
                    Some(wake) => drop(wake.try_send(())),
                    None => unserved.push(lane),
                }
            }
        }
        if !unserved.is_empty() {
            // Fails only when the supervisor is gone, i.e. at shutdown: the messages stay in
            // the journal and go on the next start.
            let _ = self.supervisor.send(Event::Publish(unserved));
        }
    }

    /// The supervisor started `lane`'s publisher, which waits on `wake`'s other end.
    pub fn serve_lane(&self, lane: Subject, wake: Sender<()>) {
        self.publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lane, wake);
    }

    /// `lane`'s idle publisher asks to end: yes (its lane is no longer served, so its next
    /// message goes through the supervisor, which starts a publisher again) unless a
    /// message for it was journaled meanwhile. Intake journals before it wakes, and this
    /// looks at the journal with the lanes locked, so no message can fall between the two.
    pub fn retire_lane(&self, lane: &Subject) -> bool {
        let mut publishers = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(wake) = publishers.remove(lane) else {
            return true;
        };
        if self.journal().lane_pending(lane) > 0 {
            publishers.insert(lane.clone(), wake);
            return false;
        }
        true
    }

    /// `lane`'s publisher gives its thread up while its first message pauses between
    /// attempts (lanes wait for a thread): its messages go through the supervisor, which
    /// puts the lane back in line once the pause is over (`until`), or when its node says
    /// Hello (`hello`, the publisher's waiter: one that came meanwhile is seen there).
    pub fn park_lane(&self, lane: &Subject, until: Instant, hello: crate::node::Waiter) {
        self.unserve_lane(lane);
        let _ = self.supervisor.send(Event::Parked {
            hello,
            lane: lane.clone(),
            until,
        });
    }

    /// A message given up after a send its node may have taken: its reply is awaited a
    /// while longer, if there is a place for it, by the `late replies` process, which the
    /// supervisor starts if it does not run (see
    /// [`crate::process::publisher::LateReplies`]).
    pub fn await_late(
        &self,
        given_up: crate::broker::GivenUp,
    ) -> Result<(), crate::broker::NotAwaited> {
        self.broker.late.awaits(given_up)?;
        let _ = self.supervisor.send(Event::AwaitLate);
        Ok(())
    }

    /// Whether `lane` has a publisher to wake (one that is not ending).
    pub fn serves_lane(&self, lane: &Subject) -> bool {
        self.publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(lane)
    }

    /// `lane`'s publisher was stopped (`OpProcessStop`): its next message goes through the
    /// supervisor, which starts it again.
    pub fn unserve_lane(&self, lane: &Subject) {
        self.publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(lane);
    }

    /// Messages of `lane` are finished (ACKed, published, or given up and kept in
    /// failed-messages.txt).
    pub fn finish(&self, lane: &Subject, seqs: &[u64]) {
        let mut journal = self.journal();
        if let Err(e) = journal.finish(lane, seqs) {
            self.stop_if_unusable(&journal);
            // A full disk: the finish is written with the lane's next one.
            log::error!("journal: cannot record messages {seqs:?} of {lane} as finished: {e}");
        }
        self.metrics.journal(&mut journal);
    }

    /// Intake found the disk full, or at its floor (`why`): it waits, the text stays where
    /// it is. Said once (log, `steward_disk_full`, and to central, as this may last until
    /// someone makes room), until [`Node::disk_has_room`]. (On a disk that is full the
    /// report cannot be journaled either: central hears of the wait when it ends.) Called
    /// by the inbox alone, as [`Node::disk_has_room`] is: the two never cross.
    pub fn disk_full(&self, why: &str) {
        let mut since = self
            .disk_full_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if since.is_none() {
            *since = Some(crate::files::unix_millis());
            drop(since);
            self.report_error(format!(
                "{}: no room for new work on the data folder's disk ({why}); taking nothing in until there is room, nothing is lost",
                self.config.node
            ));
            // After the line: whoever sees the metric finds it.
            self.metrics.disk_full.set(1);
        }
    }

    /// Intake journaled again: if the disk was full, say for how long, to central too
    /// (it could not be told while the disk was full).
    pub fn disk_has_room(&self) {
        let since = self
            .disk_full_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(since) = since {
            self.metrics.disk_full.set(0);
            self.report_error(format!(
                "{}: the data folder's disk was full, or at its floor, from {} to {}; intake waited, nothing was lost",
                self.config.node,
                crate::files::rfc3339(since),
                crate::files::now_rfc3339()
            ));
        }
    }
}
