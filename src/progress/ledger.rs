//! The ledger rows apply commits, for the other consumer that publishes
//! them (the Kafka sink writes each to its transactions topic).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::lock;

use crate::lsn::Lsn;

/// Rows kept for a consumer that falls behind; beyond, the oldest go (the
/// consumer is told how many) and the head always stays.
pub const LEDGER_FEED_ROWS: usize = 4096;

/// One appended ledger row: every field its hash covers, and the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerHead {
    /// The slot (the chain is per slot).
    pub slot: String,
    /// Commit LSN of the batch's first source transaction.
    pub first_lsn: Lsn,
    /// End LSN of its last.
    pub last_lsn: Lsn,
    /// Source transactions in the batch.
    pub transactions: i64,
    /// Changes in the batch.
    pub changes: i64,
    /// The batch's digest (hex).
    pub batch_sha256: String,
    /// The previous row's hash (hex; `None` for the slot's first row).
    pub prev_sha256: Option<String>,
    /// This row's hash (hex): the chain's head.
    pub sha256: String,
}

#[derive(Debug, Default)]
struct Queue {
    /// The current feed's generation (a new subscriber starts a new one).
    generation: u64,
    /// A feed of this generation takes the rows.
    subscribed: bool,
    /// Rows not yet taken by the current subscriber (none without one).
    rows: VecDeque<Arc<LedgerHead>>,
    /// Rows dropped from the front since the subscriber last took.
    skipped: u64,
    /// The last row appended.
    head: Option<Arc<LedgerHead>>,
}

/// The rows apply appended (and committed) in this process, in chain
/// order, for one subscriber at a time.
#[derive(Debug, Default)]
pub struct LedgerHeads {
    queue: Arc<Mutex<Queue>>,
}

impl LedgerHeads {
    /// A row was appended and its transaction committed.
    pub fn appended(&self, head: LedgerHead) {
        let head = Arc::new(head);
        let mut q = lock(&self.queue);
        q.head = Some(Arc::clone(&head));
        if q.subscribed {
            if q.rows.len() >= LEDGER_FEED_ROWS {
                q.rows.pop_front();
                q.skipped += 1;
            }
            q.rows.push_back(head);
        }
    }

    /// A feed of every row appended from now on, starting with the current
    /// head (a restarted consumer publishes it again). It replaces the
    /// previous subscriber's feed.
    pub fn subscribe(&self) -> LedgerFeed {
        let mut q = lock(&self.queue);
        q.generation += 1;
        q.subscribed = true;
        q.skipped = 0;
        q.rows = q.head.iter().cloned().collect();
        LedgerFeed {
            queue: Arc::clone(&self.queue),
            generation: q.generation,
        }
    }
}

/// One subscriber's view of the ledger rows.
#[derive(Debug)]
pub struct LedgerFeed {
    queue: Arc<Mutex<Queue>>,
    generation: u64,
}

impl LedgerFeed {
    /// The rows appended since the last call, in chain order, and how many
    /// older ones were dropped before being taken (more than
    /// [`LEDGER_FEED_ROWS`] behind). Nothing once a newer subscriber took over.
    pub fn take(&mut self) -> (Vec<Arc<LedgerHead>>, u64) {
        let mut q = lock(&self.queue);
        if q.generation != self.generation {
            return (Vec::new(), 0);
        }
        let skipped = std::mem::take(&mut q.skipped);
        (q.rows.drain(..).collect(), skipped)
    }
}

impl Drop for LedgerFeed {
    fn drop(&mut self) {
        let mut q = lock(&self.queue);
        if q.generation == self.generation {
            // Nobody takes them any more: keep nothing but the head.
            q.subscribed = false;
            q.rows.clear();
            q.skipped = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u64) -> LedgerHead {
        LedgerHead {
            slot: "s".into(),
            first_lsn: Lsn(n),
            last_lsn: Lsn(n),
            transactions: 1,
            changes: 1,
            batch_sha256: String::new(),
            prev_sha256: None,
            sha256: n.to_string(),
        }
    }

    fn hashes(rows: &[Arc<LedgerHead>]) -> Vec<String> {
        rows.iter().map(|r| r.sha256.clone()).collect()
    }

    #[test]
    fn a_feed_takes_every_row_in_order_from_the_head_at_subscription() {
        let heads = LedgerHeads::default();
        heads.appended(row(1));
        heads.appended(row(2));
        let mut feed = heads.subscribe();
        heads.appended(row(3));
        heads.appended(row(4));
        let (rows, skipped) = feed.take();
        assert_eq!(
            (hashes(&rows), skipped),
            (vec!["2".into(), "3".into(), "4".into()], 0)
        );
        assert!(feed.take().0.is_empty(), "taken once");
        heads.appended(row(5));
        assert_eq!(hashes(&feed.take().0), ["5"]);
    }

    #[test]
    fn a_consumer_far_behind_loses_the_oldest_and_is_told() {
        let heads = LedgerHeads::default();
        let mut feed = heads.subscribe();
        for n in 0..(LEDGER_FEED_ROWS as u64 + 10) {
            heads.appended(row(n));
        }
        let (rows, skipped) = feed.take();
        assert_eq!(skipped, 10);
        assert_eq!(rows.len(), LEDGER_FEED_ROWS);
        assert_eq!(rows[0].sha256, "10");
        assert_eq!(
            rows.last().unwrap().sha256,
            (LEDGER_FEED_ROWS + 9).to_string()
        );
    }

    #[test]
    fn a_new_subscriber_replaces_the_old_and_nothing_queues_without_one() {
        let heads = LedgerHeads::default();
        let mut old = heads.subscribe();
        heads.appended(row(1));
        let mut new = heads.subscribe();
        heads.appended(row(2));
        assert!(old.take().0.is_empty(), "the old feed is over");
        assert_eq!(hashes(&new.take().0), ["1", "2"]);
        drop(old);
        heads.appended(row(3));
        assert_eq!(
            hashes(&new.take().0),
            ["3"],
            "dropping the old one ends nothing"
        );
        drop(new);
        for n in 4..10_000 {
            heads.appended(row(n));
        }
        assert!(
            lock(&heads.queue).rows.is_empty(),
            "no subscriber: nothing kept"
        );
        assert_eq!(hashes(&heads.subscribe().take().0), ["9999"]);
    }
}
