//! The last hour of the stream, one sample a second, for the dashboard.
//!
//! ```text
//! Monitor ──sample every second──▶ History (ring of 3,600) ──GET /history?since=ms──▶ page
//! ```
//!
//! Counters are kept cumulative; the page derives rates from neighbouring
//! samples, so a missed tick costs resolution, never accuracy.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::progress::lock;

/// Samples kept: one hour at one a second.
pub const HISTORY_LEN: usize = 3600;

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Unix time in milliseconds.
    pub t_ms: u64,
    /// `teal_lag_bytes`.
    pub lag_bytes: u64,
    /// `teal_lag_seconds`.
    pub lag_seconds: f64,
    /// Changes applied so far (cumulative).
    pub changes: u64,
    /// Source transactions applied so far (cumulative).
    pub transactions: u64,
    /// Conflicts so far (cumulative).
    pub conflicts: u64,
    /// WAL the slot keeps on blue, when known.
    pub retained_bytes: Option<u64>,
}

/// A ring of the latest [`HISTORY_LEN`] samples.
#[derive(Default)]
pub struct History {
    points: Mutex<VecDeque<Point>>,
}

impl History {
    /// Adds a sample, dropping the oldest past [`HISTORY_LEN`].
    pub fn push(&self, p: Point) {
        let mut points = lock(&self.points);
        if points.len() == HISTORY_LEN {
            points.pop_front();
        }
        points.push_back(p);
    }

    /// Samples taken after `since_ms`, as columns (`{"t": [...], "lag_bytes": [...], ...}`).
    pub fn since_json(&self, since_ms: u64) -> serde_json::Value {
        let points = lock(&self.points);
        let start = points.partition_point(|p| p.t_ms <= since_ms);
        let column = |f: &dyn Fn(&Point) -> serde_json::Value| -> Vec<serde_json::Value> {
            points.range(start..).map(f).collect()
        };
        serde_json::json!({
            "t": column(&|p| p.t_ms.into()),
            "lag_bytes": column(&|p| p.lag_bytes.into()),
            "lag_seconds": column(&|p| p.lag_seconds.into()),
            "changes": column(&|p| p.changes.into()),
            "transactions": column(&|p| p.transactions.into()),
            "conflicts": column(&|p| p.conflicts.into()),
            "retained_bytes": column(&|p| p.retained_bytes.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_ms: u64) -> Point {
        Point {
            t_ms,
            lag_bytes: t_ms * 2,
            lag_seconds: 0.5,
            changes: t_ms,
            transactions: 1,
            conflicts: 0,
            retained_bytes: None,
        }
    }

    #[test]
    fn keeps_the_last_hour_and_answers_after_a_time() {
        let h = History::default();
        for t in 0..(HISTORY_LEN as u64 + 10) {
            h.push(point(t));
        }
        let all = h.since_json(0);
        let t = all["t"].as_array().unwrap();
        // 0..=9 fell out.
        assert_eq!(t.len(), HISTORY_LEN);
        assert_eq!(t[0], 10);
        assert_eq!(t.last().unwrap(), HISTORY_LEN as u64 + 9);
        let tail = h.since_json(HISTORY_LEN as u64 + 7);
        assert_eq!(tail["t"], serde_json::json!([3608, 3609]));
        assert_eq!(tail["lag_bytes"], serde_json::json!([7216, 7218]));
        assert_eq!(tail["retained_bytes"], serde_json::json!([null, null]));
    }
}
