//! The process table as text: for `--profilingPort`, `steward status` and
//! `OpProcessList`. A publisher in line for a thread (`--maxPublishers`) is in it, with how
//! many lanes get theirs before it, one that never had a thread too (a lane the operator
//! cannot see is one they cannot stop): the first [`LISTED_IN_LINE`] of those, then how
//! many more (a command to 50,000 nodes puts 49,000 in line, and `OpProcessList`'s answer
//! must fit in one message).

use super::Supervisor;
use std::fmt::Write;

/// How many lanes in line for their first thread are listed one by one.
const LISTED_IN_LINE: usize = 100;

/// Where in line: said after a publisher's state.
fn place(ahead: usize) -> String {
    match ahead {
        0 => ", next in line".to_string(),
        1 => ", 1 lane ahead".to_string(),
        n => format!(", {n} lanes ahead"),
    }
}

impl Supervisor {
    pub(super) fn status(&self) -> String {
        let (pending, size) = {
            let journal = self.node.journal();
            (journal.pending_count(), journal.size())
        };
        let mut s = format!(
            "node {}  broker: {}  journal: {pending} pending, {size} bytes  handlers busy: {}\n{:<50} {:>7} {:>8}  state\n",
            self.node.config.node,
            self.node.broker.describe(),
            self.node.handlers.in_use(),
            "process",
            "pending",
            "restarts"
        );
        let ahead = self.waiting.ahead();
        // In line for their first thread: no row of their own.
        let mut first_turn: Vec<_> = ahead
            .iter()
            .filter(|(l, _)| !self.table.contains_key(&format!("publisher {l}")))
            .map(|(l, &n)| (n, *l))
            .collect();
        first_turn.sort_unstable();
        let journal = self.node.journal();
        for (name, e) in &self.table {
            let pending = e.lane.as_ref().map_or(0, |(l, _)| journal.lane_pending(l));
            let mut state = e.state.get();
            // A publisher in line for a thread again: where in line.
            let in_line = e.lane.as_ref().filter(|_| e.thread.is_none());
            if let Some(&n) = in_line.and_then(|(l, _)| ahead.get(l)) {
                state.push_str(&place(n));
            }
            let _ = writeln!(s, "{name:<50} {pending:>7} {:>8}  {state}", e.restarts);
        }
        for &(n, lane) in first_turn.iter().take(LISTED_IN_LINE) {
            let name = format!("publisher {lane}");
            let pending = journal.lane_pending(lane);
            let state = format!("{}{}", super::lanes::IN_LINE, place(n));
            let _ = writeln!(s, "{name:<50} {pending:>7} {:>8}  {state}", 0);
        }
        drop(journal);
        if first_turn.len() > LISTED_IN_LINE {
            let _ = writeln!(
                s,
                "... and {} more lanes in line for their first publisher thread",
                first_turn.len() - LISTED_IN_LINE
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
