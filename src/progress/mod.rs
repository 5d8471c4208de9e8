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
pub use ledger::{LEDGER_FEED_ROWS, LedgerFeed, LedgerHead, LedgerHeads};
pub use liveness::Liveness;
pub use meters::{Bounds, Buckets, Seconds};
pub use slot::{SlotHealth, SlotWatch};
pub use verify::{VerifyProgress, VerifySnapshot};

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::lsn::Lsn;

struct Inner {
    /// Confirmed position per registered consumer (`None`: withdrawn,
    /// see [`ConsumerView::withdraw`]).
    consumers: Mutex<Vec<Option<Lsn>>>,
    flush: watch::Sender<Lsn>,
}

impl Inner {
    /// Moves the flush LSN to the minimum over the consumers still counted
    /// (never back).
    fn advance(&self, consumers: &[Option<Lsn>]) {
        let Some(min) = consumers.iter().flatten().copied().min() else {
            return;
        };
        self.flush.send_if_modified(|flush_lsn| {
            if min > *flush_lsn {
                *flush_lsn = min;
                true
            } else {
                false
            }
        });
    }
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
        consumers.push(Some(Lsn::ZERO));
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
    /// Records that everything up to `confirmed_lsn` is durable for this
    /// consumer (ignored once it was withdrawn).
    pub fn confirm(&self, confirmed_lsn: Lsn) {
        let mut consumers = lock(&self.inner.consumers);
        let Some(slot) = consumers[self.index].as_mut() else {
            return;
        };
        *slot = (*slot).max(confirmed_lsn);
        self.inner.advance(&consumers);
    }

    /// A handle that reads this consumer's position and can withdraw it,
    /// held by whoever watches the consumer (the handle itself moves into it).
    pub fn view(&self) -> ConsumerView {
        ConsumerView {
            inner: Arc::clone(&self.inner),
            index: self.index,
        }
    }
}

/// Reads one consumer's confirmed position; withdraws it from the flush LSN.
#[derive(Clone)]
pub struct ConsumerView {
    inner: Arc<Inner>,
    index: usize,
}

impl ConsumerView {
    /// What the consumer confirmed (`None` once withdrawn).
    pub fn confirmed(&self) -> Option<Lsn> {
        lock(&self.inner.consumers)[self.index]
    }

    /// The flush LSN stops waiting for this consumer: it moves to the
    /// minimum over the others at once, and the consumer's later confirms
    /// are ignored (`--kafka-drop-on-wal-risk`). What it had not confirmed
    /// is never sent to it again by this slot.
    pub fn withdraw(&self) {
        let mut consumers = lock(&self.inner.consumers);
        consumers[self.index] = None;
        self.inner.advance(&consumers);
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

    #[test]
    fn a_withdrawn_consumer_no_longer_holds_the_flush_lsn() {
        let progress = FlushLsn::new();
        let green = progress.register();
        let kafka = progress.register();
        let view = kafka.view();
        green.confirm(Lsn(300));
        kafka.confirm(Lsn(100));
        assert_eq!(progress.flush_lsn(), Lsn(100));
        assert_eq!(view.confirmed(), Some(Lsn(100)));
        view.withdraw();
        assert_eq!(progress.flush_lsn(), Lsn(300), "green alone now");
        assert_eq!(view.confirmed(), None);
        kafka.confirm(Lsn(50));
        green.confirm(Lsn(400));
        assert_eq!(
            progress.flush_lsn(),
            Lsn(400),
            "kafka's confirms are ignored"
        );
    }
}
