//! How far green is behind blue, in bytes and in seconds, and how long
//! transactions take from blue's commit to green's.
//!
//! ```text
//! source batch ──received_wal_end (XLogData / keepalive)──┐
//! assembler ─────commit received (end_lsn, commit_ts)─────┼──▶ Lag ──▶ /metrics, /status
//! apply ─────────applied_lsn after green's COMMIT─────────┘
//! ```
//!
//! Definitions (README, "Lag"):
//! - `lag_bytes` = blue's WAL end from the latest XLogData or keepalive minus
//!   the end LSN green has committed (including idle positions); 0 when
//!   green is at or past it;
//! - `lag_seconds` = age of the oldest source commit teal received that green
//!   has not committed yet; 0 when none is pending;
//! - apply latency, per transaction: green's commit time minus blue's commit
//!   timestamp (both clocks: keep them in sync), over a sliding window.
//!
//! Updated once per batch or transaction, never per change.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::liveness::Liveness;
use super::meters::Seconds;
use crate::lsn::{Lsn, PgTimestamp};

use super::lock;

/// Width of one slot of the latency window.
const WINDOW_SLOT: Duration = Duration::from_secs(10);
/// Slots in the window: quantiles cover the last minute.
const WINDOW_SLOTS: usize = 6;
/// Largest latency recorded exactly (one day, in microseconds); larger ones count as this.
const LATENCY_MAX_US: u64 = 86_400_000_000;

/// Apply latency percentiles over the window, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest in the window.
    pub max: f64,
    /// Transactions in the window.
    pub window_count: u64,
    /// Transactions measured since start.
    pub count: u64,
    /// Sum of all latencies since start.
    pub sum: f64,
}

struct Window {
    slots: Vec<Histogram<u64>>,
    /// Index of the current slot and when it began.
    current: usize,
    current_since: Instant,
    count: u64,
    sum_us: u128,
}

impl Window {
    fn new() -> Window {
        let slot = || Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid bounds");
        Window {
            slots: (0..WINDOW_SLOTS).map(|_| slot()).collect(),
            current: 0,
            current_since: Instant::now(),
            count: 0,
            sum_us: 0,
        }
    }

    /// Moves the window to `now`, clearing the slots that fell out of it.
    fn rotate(&mut self, now: Instant) {
        let mut elapsed = now.saturating_duration_since(self.current_since);
        let mut cleared = 0;
        while elapsed >= WINDOW_SLOT && cleared < WINDOW_SLOTS {
            self.current = (self.current + 1) % WINDOW_SLOTS;
            self.slots[self.current].reset();
            self.current_since += WINDOW_SLOT;
            elapsed -= WINDOW_SLOT;
            cleared += 1;
        }
        if elapsed >= WINDOW_SLOT {
            // Idle for longer than the window: every slot is clear.
            self.current_since = now;
        }
    }
}

/// Lag of one stream; shared by the stages and the HTTP endpoint.
pub struct Lag {
    received_wal_end: AtomicU64,
    received_bytes: AtomicU64,
    decode_busy: Seconds,
    applied_lsn: AtomicU64,
    /// Commits received, not yet committed on green, oldest first.
    pending: Mutex<VecDeque<(Lsn, PgTimestamp)>>,
    window: Mutex<Window>,
    liveness: Arc<Liveness>,
    skipped_changes: AtomicU64,
}

impl Default for Lag {
    fn default() -> Self {
        Lag::new()
    }
}

impl Lag {
    /// Nothing received or applied yet.
    pub fn new() -> Lag {
        Lag {
            received_wal_end: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            decode_busy: Seconds::default(),
            applied_lsn: AtomicU64::new(0),
            pending: Mutex::new(VecDeque::new()),
            window: Mutex::new(Window::new()),
            liveness: Arc::new(Liveness::new()),
            skipped_changes: AtomicU64::new(0),
        }
    }

    /// `n` more changes of tables `--tables` / `--exclude-tables` leave out.
    pub fn skipped_changes(&self, n: u64) {
        self.skipped_changes.fetch_add(n, Ordering::Relaxed);
    }

    /// Changes left out by the table selection since start.
    pub fn skipped_changes_total(&self) -> u64 {
        self.skipped_changes.load(Ordering::Relaxed)
    }

    /// When the stages last moved (shared with the source thread).
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }

    /// Blue reported its WAL end (an XLogData header or a keepalive), after
    /// sending `bytes` more bytes of replication data.
    pub fn received(&self, wal_end: Lsn, bytes: u64) {
        self.received_wal_end
            .fetch_max(wal_end.0, Ordering::Relaxed);
        self.received_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The decoder worked for `busy` (decoding and assembling one read, not
    /// counting the time it waited for input or for the consumer).
    pub fn decode_busy(&self, busy: std::time::Duration) {
        self.decode_busy.add(busy);
    }

    /// Seconds the decoder has worked since start.
    pub fn decode_busy_seconds(&self) -> f64 {
        self.decode_busy.seconds()
    }

    /// A source transaction's commit arrived (it is complete and pending for green).
    pub fn commit_received(&self, end_lsn: Lsn, commit_ts: PgTimestamp) {
        let mut pending = lock(&self.pending);
        debug_assert!(
            pending.back().is_none_or(|&(last, _)| last <= end_lsn),
            "commits arrive in commit order"
        );
        pending.push_back((end_lsn, commit_ts));
    }

    /// Green committed everything up to `applied_lsn` (a batch or an idle
    /// position); transactions that ended there are no longer pending, and
    /// with `measure` their latency is recorded as of `now`.
    pub fn applied(&self, applied_lsn: Lsn, now: PgTimestamp, measure: bool) {
        self.liveness.moved();
        self.applied_lsn.fetch_max(applied_lsn.0, Ordering::Relaxed);
        let mut done = Vec::new();
        {
            let mut pending = lock(&self.pending);
            while let Some(&(end_lsn, commit_ts)) = pending.front() {
                if end_lsn > applied_lsn {
                    break;
                }
                pending.pop_front();
                if measure {
                    done.push(commit_ts);
                }
            }
        }
        if done.is_empty() {
            return;
        }
        let mut window = lock(&self.window);
        window.rotate(Instant::now());
        let current = window.current;
        for commit_ts in done {
            let us = u64::try_from(now.0.saturating_sub(commit_ts.0))
                .unwrap_or(0)
                .clamp(1, LATENCY_MAX_US);
            window.slots[current].saturating_record(us);
            window.count += 1;
            window.sum_us += u128::from(us);
        }
    }

    /// A new replication session starts: whatever was pending and not
    /// committed on green is sent again and counted again.
    pub fn restart(&self) {
        lock(&self.pending).clear();
    }

    /// Blue's latest WAL end.
    pub fn received_wal_end(&self) -> Lsn {
        Lsn(self.received_wal_end.load(Ordering::Relaxed))
    }

    /// Bytes of replication data received since start.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes.load(Ordering::Relaxed)
    }

    /// Green's committed end LSN.
    pub fn applied_lsn(&self) -> Lsn {
        Lsn(self.applied_lsn.load(Ordering::Relaxed))
    }

    /// `teal_lag_bytes`.
    pub fn lag_bytes(&self) -> u64 {
        self.received_wal_end
            .load(Ordering::Relaxed)
            .saturating_sub(self.applied_lsn.load(Ordering::Relaxed))
    }

    /// `teal_lag_seconds` as of `now`.
    pub fn lag_seconds(&self, now: PgTimestamp) -> f64 {
        match lock(&self.pending).front() {
            Some(&(_, commit_ts)) => (now.0.saturating_sub(commit_ts.0)).max(0) as f64 / 1e6,
            None => 0.0,
        }
    }

    /// Transactions received and not yet committed on green.
    pub fn pending_transactions(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Apply latency over the last minute (and totals since start).
    pub fn latency(&self) -> LatencySummary {
        let mut window = lock(&self.window);
        window.rotate(Instant::now());
        let mut merged =
            Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid bounds");
        for slot in &window.slots {
            // Same bounds: adding cannot fail.
            let _ = merged.add(slot);
        }
        let secs = |us: u64| us as f64 / 1e6;
        LatencySummary {
            p50: secs(merged.value_at_quantile(0.5)),
            p90: secs(merged.value_at_quantile(0.9)),
            p99: secs(merged.value_at_quantile(0.99)),
            p999: secs(merged.value_at_quantile(0.999)),
            max: secs(merged.max()),
            window_count: merged.len(),
            count: window.count,
            sum: window.sum_us as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_seconds_follow_what_green_committed() {
        let lag = Lag::new();
        lag.received(Lsn(1000), 500);
        assert_eq!(lag.lag_bytes(), 1000, "nothing applied yet");
        lag.commit_received(Lsn(400), PgTimestamp(1_000_000));
        lag.commit_received(Lsn(900), PgTimestamp(2_000_000));
        let now = PgTimestamp(5_000_000);
        assert_eq!(
            lag.lag_seconds(now),
            4.0,
            "the oldest pending commit is 4 s old"
        );
        lag.applied(Lsn(400), now, true);
        assert_eq!(lag.lag_bytes(), 600);
        assert_eq!(lag.lag_seconds(now), 3.0);
        lag.applied(Lsn(1000), now, true);
        assert_eq!(lag.lag_bytes(), 0);
        assert_eq!(lag.lag_seconds(now), 0.0);
        lag.applied(Lsn(10), now, true);
        assert_eq!(lag.applied_lsn(), Lsn(1000), "never moves back");
        let l = lag.latency();
        assert_eq!((l.count, l.window_count), (2, 2));
        assert!(
            (l.max - 4.0).abs() < 0.01 && (l.p50 - 3.0).abs() < 0.01,
            "{l:?}"
        );
        assert!((l.sum - 7.0).abs() < 1e-9);
        assert_eq!(lag.received_bytes(), 500);
    }

    #[test]
    fn window_forgets_after_a_minute() {
        let mut w = Window::new();
        w.slots[0].record(5).unwrap();
        let later = w.current_since + WINDOW_SLOT * 3;
        w.rotate(later);
        assert_eq!(w.slots.iter().map(Histogram::len).sum::<u64>(), 1);
        w.rotate(later + WINDOW_SLOT * 10);
        assert_eq!(w.slots.iter().map(Histogram::len).sum::<u64>(), 0);
    }
}
