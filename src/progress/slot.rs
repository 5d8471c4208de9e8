//! What teal learns about its slot from blue's catalog, beside the stream:
//! how much WAL it keeps, its `wal_status`, and the heartbeats written.
//!
//! ```text
//! source::watch (an ordinary session on blue) ──▶ SlotWatch ──▶ /metrics, /status, dashboard
//! ```

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::lock;

/// The slot as blue sees it (polled on an ordinary session).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlotHealth {
    /// WAL the slot keeps on blue, in bytes (current WAL LSN minus restart_lsn).
    pub retained_bytes: u64,
    /// `pg_replication_slots.wal_status` (reserved, extended, unreserved, lost).
    pub wal_status: Option<String>,
    /// The slot's confirmed flush LSN.
    pub confirmed_flush_lsn: Option<String>,
    /// `safe_wal_size`: bytes blue may still write before the slot is
    /// invalidated (`None`: no `max_slot_wal_keep_size`, or before 13).
    pub safe_wal_bytes: Option<i64>,
    /// Blue's WAL rate between the last two readings, bytes per second.
    pub wal_bytes_per_second: Option<f64>,
    /// `safe_wal_bytes / wal_bytes_per_second`: when the slot would be
    /// invalidated at this rate (`None`: not bounded, or blue idle).
    pub invalidation_eta_seconds: Option<f64>,
}

/// The slot watcher's findings, shared with the monitor.
#[derive(Debug, Default)]
pub struct SlotWatch {
    health: Mutex<Option<SlotHealth>>,
    heartbeats: AtomicU64,
}

impl SlotWatch {
    /// Stores what blue said about the slot (`None`: there is no such slot).
    pub fn set_health(&self, health: Option<SlotHealth>) {
        *lock(&self.health) = health;
    }

    /// What blue last said about the slot.
    pub fn health(&self) -> Option<SlotHealth> {
        lock(&self.health).clone()
    }

    /// A heartbeat was written on blue.
    pub fn heartbeat(&self) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
    }

    /// Heartbeats written so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }
}
