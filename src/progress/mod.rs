//! The flush LSN: how far every consumer has made the stream durable.
//!
//! ```text
//! consumer A ──confirm(a)──┐
//! consumer B ──confirm(b)──┼──▶ flush_lsn = min(a, b, ...) ──watch──▶ source ──▶ standby status update
//! ```
//!
//! Invariants: each consumer's position and the flush LSN only move forward;
//! the flush LSN never passes a position some consumer has not confirmed.
//! This is the only path from the later stages back to the source, and it
//! carries nothing but an LSN.

mod copy;
mod lag;
mod ledger;
mod liveness;
mod meters;
mod slot;
mod verify;

pub use copy::{CopyStatus, TableCopy, TableCopySnapshot};
pub use lag::{Lag, LatencySummary};
pub use ledger::{LedgerHead, LedgerHeads};
pub use liveness::Liveness;
pub use meters::{Bounds, Buckets, Seconds};
pub use slot::{SlotHealth, SlotWatch};
pub use verify::{VerifyProgress, VerifySnapshot};

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::lsn::Lsn;

struct Inner {
    /// Confirmed position per registered consumer.
    consumers: Mutex<Vec<Lsn>>,
    flush: watch::Sender<Lsn>,
}

/// Tracks the flush LSN over a fixed set of consumers.
#[derive(Clone)]
pub struct FlushLsn {
    inner: Arc<Inner>,
}

impl Default for FlushLsn {
    fn default() -> Self {
        FlushLsn::new()
    }
}

impl FlushLsn {
    /// A tracker with no consumers; the flush LSN starts at 0/0 ("nothing confirmed").
    pub fn new() -> FlushLsn {
        FlushLsn {
            inner: Arc::new(Inner {
                consumers: Mutex::new(Vec::new()),
                flush: watch::Sender::new(Lsn::ZERO),
            }),
        }
    }

    /// Adds a consumer; register all of them before any confirms.
    pub fn register(&self) -> Consumer {
        let mut consumers = lock(&self.inner.consumers);
        consumers.push(Lsn::ZERO);
        Consumer {
            inner: Arc::clone(&self.inner),
            index: consumers.len() - 1,
        }
    }

    /// The flush LSN now.
    pub fn flush_lsn(&self) -> Lsn {
        *self.inner.flush.borrow()
    }

    /// A receiver that wakes when the flush LSN moves.
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.inner.flush.subscribe()
    }
}

/// One consumer's handle for confirming what it made durable.
pub struct Consumer {
    inner: Arc<Inner>,
    index: usize,
}

impl Consumer {
    /// Records that everything up to `confirmed_lsn` is durable for this consumer.
    pub fn confirm(&self, confirmed_lsn: Lsn) {
        let min = {
            let mut consumers = lock(&self.inner.consumers);
            let slot = &mut consumers[self.index];
            *slot = (*slot).max(confirmed_lsn);
            consumers.iter().copied().min().unwrap_or(Lsn::ZERO)
        };
        self.inner.flush.send_if_modified(|flush_lsn| {
            if min > *flush_lsn {
                *flush_lsn = min;
                true
            } else {
                false
            }
        });
    }
}

/// Locks a mutex whose holders only ever store whole values (positions,
/// counters, a state): a panic under it cannot leave it inconsistent, so a
/// poisoned lock is still usable. Shared by the metrics and the apply counters.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_is_min_over_consumers_and_monotonic() {
        let progress = FlushLsn::new();
        let green = progress.register();
        let kafka = progress.register();
        green.confirm(Lsn(100));
        assert_eq!(
            progress.flush_lsn(),
            Lsn::ZERO,
            "kafka confirmed nothing yet"
        );
        kafka.confirm(Lsn(50));
        assert_eq!(progress.flush_lsn(), Lsn(50));
        kafka.confirm(Lsn(150));
        assert_eq!(progress.flush_lsn(), Lsn(100));
        green.confirm(Lsn(90));
        assert_eq!(progress.flush_lsn(), Lsn(100), "never moves back");
    }
}
