//! The telemetry hub of one stream: what `/metrics`, `/status`,
//! `/history`, the probes, the audit trail and `teal status` show.
//!
//! ```text
//! source, apply, Kafka sink, copy ──counters, LSNs, liveness──▶ Monitor ──▶ metrics_text (metrics.rs)
//!                                                                  │     ──▶ status_json
//!                                       sample every second ──▶ History ──▶ /history
//! ```
//!
//! Reading it never waits on green or blue: atomics and short locks. Metric
//! names are constants in [`names`]; the HTTP endpoint serving this is
//! [`crate::http`].

mod history;
mod metrics;
pub mod names;

pub use history::{HISTORY_LEN, History, Point};
pub use metrics::verify_metrics_text;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::apply::ApplyStats;
use crate::lsn::PgTimestamp;
use crate::progress::{CopyStatus, Lag, SlotWatch, lock};
use crate::sink::kafka::KafkaStats;

/// A fresh id (UUID v4): a run's correlation id, an audit operation's id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What `teal stream` is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Connecting to green and blue.
    Starting,
    /// Copying the published tables (`teal sync`).
    Copying,
    /// Applying blue's changes.
    Streaming,
    /// Waiting to retry after a transient error.
    Retrying,
    /// Shutting down.
    Stopping,
    /// Stopped on a definite error.
    Failed,
}

/// Everything the endpoint shows about one stream.
pub struct Monitor {
    /// The slot.
    pub slot: String,
    /// Lag in bytes and seconds, apply latency.
    pub lag: Arc<Lag>,
    /// Apply counters.
    pub apply: Arc<ApplyStats>,
    /// Streaming attempts that ended in a transient error and were retried.
    pub retries: AtomicU64,
    /// Errors of any kind (transient and definite).
    pub errors: AtomicU64,
    /// What the slot watcher learns from blue: the slot's health, heartbeats.
    pub slot_watch: Arc<SlotWatch>,
    state: Mutex<(RunState, Option<(String, Instant)>)>,
    /// Work pending and no stage moving for this long: stalled.
    stall_after_ms: AtomicU64,
    addr: OnceLock<SocketAddr>,
    /// The last hour, sampled while the endpoint runs.
    pub history: History,
    /// This run's id, in its log lines and audit rows.
    pub correlation_id: String,
    /// The initial copy, while `teal sync` runs one.
    copy: OnceLock<Arc<CopyStatus>>,
    /// The Kafka sink's counters.
    pub kafka: Arc<KafkaStats>,
}

impl Monitor {
    /// A monitor for `slot`, starting.
    pub fn new(slot: impl Into<String>) -> Monitor {
        Monitor {
            slot: slot.into(),
            lag: Arc::new(Lag::new()),
            apply: Arc::new(ApplyStats::default()),
            retries: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            slot_watch: Arc::new(SlotWatch::default()),
            state: Mutex::new((RunState::Starting, None)),
            stall_after_ms: AtomicU64::new(DEFAULT_STALL_AFTER.as_millis() as u64),
            addr: OnceLock::new(),
            history: History::default(),
            correlation_id: new_id(),
            copy: OnceLock::new(),
            kafka: Arc::new(KafkaStats::default()),
        }
    }

    /// Shows `progress` in `/status` and `/metrics` from now on.
    pub fn set_copy(&self, progress: Arc<CopyStatus>) {
        let _ = self.copy.set(progress);
    }

    /// Sets the state.
    pub fn set_state(&self, state: RunState) {
        lock(&self.state).0 = state;
    }

    /// The state the stream loop set (see [`Monitor::effective_state`]).
    pub fn state(&self) -> RunState {
        lock(&self.state).0
    }

    /// The state as it shows: `retrying` while the source reconnects to
    /// blue inside a streaming session.
    pub fn effective_state(&self) -> RunState {
        match self.state() {
            RunState::Streaming if self.lag.liveness().source_reconnecting() => RunState::Retrying,
            state => state,
        }
    }

    /// Records an error (its message, which never holds row values or passwords).
    pub fn record_error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.state).1 = Some((message, Instant::now()));
    }

    /// The latest error: the stream's, or the source's last reconnect.
    pub fn last_error(&self) -> Option<String> {
        let own = lock(&self.state).1.clone();
        let source = self.lag.liveness().last_source_error();
        match (own, source) {
            (Some((a, at)), Some((b, bt))) => Some(if bt > at { b } else { a }),
            (Some((a, _)), None) => Some(a),
            (None, Some((b, _))) => Some(b),
            (None, None) => None,
        }
    }

    /// Retried transient errors: streaming attempts and replication reconnects.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed) + self.lag.liveness().source_reconnects()
    }

    /// Errors of any kind, replication reconnects included.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed) + self.lag.liveness().source_reconnects()
    }

    /// A stage counts as stuck when it has not moved for this long while
    /// work is pending (half of `--replication-timeout`; 30 s by default).
    pub fn set_stall_after(&self, after: Duration) {
        self.stall_after_ms
            .store(after.as_millis() as u64, Ordering::Relaxed);
    }

    /// Why the stream is stuck, if it is: streaming, with transactions
    /// received and apply neither sending nor committing for the stall
    /// time. (Blue's silence alone is not a stall: a quiet blue says
    /// nothing until teal asks, at half of `--replication-timeout`, and
    /// past all of it the source reconnects by itself;
    /// `teal_source_idle_seconds` shows it.)
    pub fn stalled(&self) -> Option<String> {
        if self.effective_state() != RunState::Streaming {
            return None;
        }
        let after = Duration::from_millis(self.stall_after_ms.load(Ordering::Relaxed));
        let pending = self.lag.pending_transactions();
        let apply_idle = self.lag.liveness().apply_idle();
        (pending > 0 && apply_idle >= after).then(|| {
            format!(
                "apply stalled: {pending} transactions received, nothing sent to or committed on green for {}s",
                apply_idle.as_secs()
            )
        })
    }

    /// The endpoint's address, once it listens (set by [`crate::http::serve`]).
    pub fn set_addr(&self, addr: SocketAddr) {
        let _ = self.addr.set(addr);
    }

    /// Where the endpoint listens, once it does.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.get().copied()
    }

    /// Adds the current lags and counters to [`Monitor::history`].
    pub fn sample(&self) {
        let now = PgTimestamp::now();
        let a = &self.apply;
        self.history.push(Point {
            t_ms: u64::try_from(now.unix_micros() / 1000).unwrap_or(0),
            lag_bytes: self.lag.lag_bytes(),
            lag_seconds: self.lag.lag_seconds(now),
            changes: a.changes.load(Ordering::Relaxed),
            transactions: a.transactions.load(Ordering::Relaxed),
            conflicts: a.conflicts.load(Ordering::Relaxed),
            retained_bytes: self.slot_watch.health().map(|h| h.retained_bytes),
        });
    }

    /// `/status` as JSON.
    pub fn status_json(&self) -> serde_json::Value {
        let now = PgTimestamp::now();
        let state = self.effective_state();
        let liveness = self.lag.liveness();
        let a = &self.apply;
        serde_json::json!({
            "state": state,
            "stalled": self.stalled(),
            "source_idle_seconds": liveness.source_idle().as_secs_f64(),
            "apply_idle_seconds": liveness.apply_idle().as_secs_f64(),
            "source_reconnects": liveness.source_reconnects(),
            "slot": self.slot,
            "correlation_id": self.correlation_id,
            "received_wal_end": self.lag.received_wal_end().to_string(),
            "applied_lsn": self.lag.applied_lsn().to_string(),
            "lag_bytes": self.lag.lag_bytes(),
            "lag_seconds": self.lag.lag_seconds(now),
            "pending_transactions": self.lag.pending_transactions(),
            "apply_latency_seconds": self.lag.latency(),
            "received_bytes": self.lag.received_bytes(),
            "transactions": a.transactions.load(Ordering::Relaxed),
            "changes": a.changes.load(Ordering::Relaxed),
            "batches": a.batches.load(Ordering::Relaxed),
            "ledger": {
                "rows": a.ledger_rows.load(Ordering::Relaxed),
                "head": crate::progress::lock(&a.ledger_head).clone(),
            },
            "conflicts": a.conflicts.load(Ordering::Relaxed),
            "retries": self.retries(),
            "errors": self.errors(),
            "heartbeats": self.slot_watch.heartbeats(),
            "slot_health": self.slot_watch.health(),
            "tables": a.tables(),
            "last_error": self.last_error(),
            "copy": self.copy.get().map(|c| {
                let tables = c.snapshot();
                serde_json::json!({
                    "finished": c.is_finished(),
                    "fraction": c.overall_fraction(&tables),
                    "elapsed_seconds": c.elapsed_seconds(),
                    "tables": tables,
                })
            }),
            "time": now.to_string(),
        })
    }
}

/// [`Monitor::set_stall_after`] default.
const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(30);
