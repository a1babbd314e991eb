//! The process table as text: for `--profilingPort`, `steward status` and
//! `OpProcessList`. A publisher is in it from its lane's first message, one still in line
//! for a thread (`--maxPublishers`) too, with how many lanes get theirs before it: a lane
//! the operator cannot see is one they cannot stop.

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
        let ahead = self.waiting.ahead();
        for (name, e) in &self.table {
            let pending = e.lane.as_ref().map_or(0, |(l, _)| journal.lane_pending(l));
            let mut state = e.state.get();
            // A publisher in line for a thread (its first, or again): where in line.
            let in_line = e.lane.as_ref().filter(|_| e.thread.is_none());
            match in_line.and_then(|(l, _)| ahead.get(l)) {
                Some(0) => state.push_str(", next in line"),
                Some(1) => state.push_str(", 1 lane ahead"),
                Some(n) => {
                    let _ = write!(state, ", {n} lanes ahead");
                }
                None => {}
            }
            let _ = writeln!(s, "{name:<50} {pending:>7} {:>8}  {state}", e.restarts);
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
