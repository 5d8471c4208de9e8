//! What a cutover, rollback or rehearsal reports: each step with its
//! times and LSN, the checks, the write pause; text for people, JSON for
//! programs, and the exit status.

use serde::Serialize;

use crate::ops::sequences::SequenceState;

use super::Check;

/// One step, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Its name.
    pub name: String,
    /// Start, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// End, milliseconds since the Unix epoch.
    pub ended_ms: u64,
    /// The LSN it is about, if any.
    pub lsn: Option<String>,
    /// What it did.
    pub detail: String,
}

/// The result of a cutover, rollback or rehearsal.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchReport {
    /// The switch's id (`teal.switches`, the audit row's details).
    pub id: String,
    /// `cutover`, `rollback` or `rehearsal`.
    pub kind: &'static str,
    /// `switched`, `rehearsed`, `no_go`, `aborted`, `failed`, or (`--abort`)
    /// `undone`.
    pub outcome: &'static str,
    /// The go/no-go checks.
    pub checks: Vec<Check>,
    /// The steps done, in order.
    pub steps: Vec<StepReport>,
    /// From the fence to the side taking over being writable (or, in a
    /// rehearsal, to the fence lifted).
    pub write_pause_ms: Option<f64>,
    /// The marker's LSN on the side left.
    pub marker_lsn: Option<String>,
    /// The sequences copied.
    pub sequences: Vec<SequenceState>,
    /// Why it did not switch, when it did not.
    pub error: Option<String>,
}

impl SwitchReport {
    /// A run of `kind` that has done nothing yet (failed until it succeeds).
    pub(super) fn new(id: uuid::Uuid, kind: &'static str) -> SwitchReport {
        SwitchReport {
            id: id.to_string(),
            kind,
            outcome: "failed",
            checks: Vec::new(),
            steps: Vec::new(),
            write_pause_ms: None,
            marker_lsn: None,
            sequences: Vec::new(),
            error: None,
        }
    }

    /// 0 switched (or rehearsed), 1 no-go or aborted (the side left is
    /// writable again), 2 error.
    pub fn exit_status(&self) -> u8 {
        match self.outcome {
            "switched" | "rehearsed" | "undone" => 0,
            "no_go" | "aborted" => 1,
            _ => 2,
        }
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "check {:<20} {:<4} {}{}\n",
                c.name,
                if c.go { "go" } else { "NO" },
                c.value,
                c.limit
                    .as_ref()
                    .map(|l| format!(" (limit {l})"))
                    .unwrap_or_default()
            ));
        }
        for s in &self.steps {
            out.push_str(&format!(
                "step  {:<20} {:>6} ms {}{}\n",
                s.name,
                s.ended_ms.saturating_sub(s.started_ms),
                s.detail,
                s.lsn
                    .as_ref()
                    .map(|l| format!(" at {l}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(p) = self.write_pause_ms {
            out.push_str(&format!("write pause: {p:.0} ms\n"));
        }
        out.push_str(&format!("{} {}: {}", self.kind, self.id, self.outcome));
        if let Some(e) = &self.error {
            out.push_str(&format!(" ({e})"));
        }
        out.push('\n');
        out
    }
}
