//! The process table as text: for `--profilingPort`, `steward status` and
//! `OpProcessList`.

use super::Supervisor;
use std::fmt::Write;

impl Supervisor {
    pub(super) fn status(&self) -> String {
        let (pending, size) = {
            let journal = self.node.journal();
            (journal.pending_count(), journal.size())
        };
        let mut s = format!(
            "node {}  journal: {pending} pending, {size} bytes  handlers busy: {}\n{:<50} {:>7} {:>8}  state\n",
            self.node.config.node,
            self.node.handlers.in_use(),
            "process",
            "pending",
            "restarts"
        );
        let journal = self.node.journal();
        for (name, e) in &self.table {
            let pending = e.lane.as_ref().map_or(0, |(l, _)| journal.lane_pending(l));
            let _ = writeln!(
                s,
                "{name:<50} {pending:>7} {:>8}  {}",
                e.restarts,
                e.state.get()
            );
        }
        if !self.waiting.is_empty() {
            let _ = writeln!(
                s,
                "{} lane(s) waiting for a publisher (--maxPublishers {})",
                self.waiting.len(),
                self.node.config.max_publishers
            );
        }
        for schedule in self.node.schedules.list() {
            let m = &schedule.request.message;
            let _ = writeln!(
                s,
                "{:<50} {:>7} {:>8}  {} from {} every {}s until {}, run {}{}",
                schedule.name(),
                0,
                0,
                m.method,
                schedule.request.from_node,
                schedule.every / 1000,
                crate::files::rfc3339(schedule.until),
                schedule.runs,
                match schedule.running {
                    Some(_) => ", running".to_string(),
                    None => format!(", next {}", crate::files::rfc3339(schedule.next)),
                }
            );
        }
        s
    }
}
