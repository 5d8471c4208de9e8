//! Whether the stages are moving: when blue was last heard and when apply
//! last made progress, and how often the source had to reconnect.
//!
//! ```text
//! source ──bytes read / reconnect──▶ Liveness ◀──batch sent, commit── apply (or the Kafka-only sink)
//!                                       │
//!                                       ▼ teal_source_idle_seconds, teal_apply_idle_seconds,
//!                                         teal_source_reconnects_total, /readyz "stalled"
//! ```
//!
//! Times are kept as milliseconds since the tracker was made, in atomics:
//! stages update them on their hot path without a lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::lock;

/// When each stage last moved.
#[derive(Debug)]
pub struct Liveness {
    epoch: Instant,
    /// When the source last read bytes from blue (or stopped waiting for a
    /// consumer: time spent not reading does not count as blue's silence).
    heard_ms: AtomicU64,
    /// When apply last committed to green or sent it a batch of changes.
    moved_ms: AtomicU64,
    source_reconnects: AtomicU64,
    reconnecting: AtomicBool,
    source_error: Mutex<Option<(String, Instant)>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new()
    }
}

impl Liveness {
    /// Both stages count as having moved just now.
    pub fn new() -> Liveness {
        Liveness {
            epoch: Instant::now(),
            heard_ms: AtomicU64::new(0),
            moved_ms: AtomicU64::new(0),
            source_reconnects: AtomicU64::new(0),
            reconnecting: AtomicBool::new(false),
            source_error: Mutex::new(None),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn age(&self, since_ms: &AtomicU64) -> Duration {
        let now = self.ms(Instant::now());
        Duration::from_millis(now.saturating_sub(since_ms.load(Ordering::Relaxed)))
    }

    /// The source heard from blue at `at` (a read, or the end of a wait for
    /// room downstream, during which it did not read).
    pub fn heard(&self, at: Instant) {
        self.heard_ms.fetch_max(self.ms(at), Ordering::Relaxed);
    }

    /// Time since blue was last heard.
    pub fn source_idle(&self) -> Duration {
        self.age(&self.heard_ms)
    }

    /// Apply committed to green or sent it a batch of changes.
    pub fn moved(&self) {
        self.moved_ms
            .fetch_max(self.ms(Instant::now()), Ordering::Relaxed);
    }

    /// Time since apply last moved.
    pub fn apply_idle(&self) -> Duration {
        self.age(&self.moved_ms)
    }

    /// The replication session ended with `error`; the source reconnects.
    pub fn source_lost(&self, error: String) {
        self.source_reconnects.fetch_add(1, Ordering::Relaxed);
        self.reconnecting.store(true, Ordering::Relaxed);
        *lock(&self.source_error) = Some((error, Instant::now()));
    }

    /// A replication session streams again.
    pub fn source_streaming(&self) {
        self.reconnecting.store(false, Ordering::Relaxed);
        self.heard(Instant::now());
    }

    /// Replication sessions that ended in a transient error and were reopened.
    pub fn source_reconnects(&self) -> u64 {
        self.source_reconnects.load(Ordering::Relaxed)
    }

    /// Whether the source is between sessions now.
    pub fn source_reconnecting(&self) -> bool {
        self.reconnecting.load(Ordering::Relaxed)
    }

    /// The error that ended the last replication session, if one did, and when.
    pub fn last_source_error(&self) -> Option<(String, Instant)> {
        lock(&self.source_error).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_count_from_the_last_move_and_never_go_back() {
        let l = Liveness::new();
        let later = Instant::now() + Duration::from_secs(5);
        l.heard(later);
        l.heard(Instant::now());
        assert_eq!(
            l.source_idle(),
            Duration::ZERO,
            "a time in the future counts as now"
        );
        l.moved();
        assert!(l.apply_idle() < Duration::from_secs(1));
        assert!(!l.source_reconnecting());
        l.source_lost("connection lost".into());
        assert!(l.source_reconnecting());
        assert_eq!(l.source_reconnects(), 1);
        assert_eq!(
            l.last_source_error().map(|(e, _)| e).as_deref(),
            Some("connection lost")
        );
        l.source_streaming();
        assert!(!l.source_reconnecting());
        assert_eq!(l.source_reconnects(), 1, "counts stay");
    }
}
