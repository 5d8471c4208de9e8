//! How the apply stage batches, resolves conflicts and bounds its waits,
//! and the counters it keeps.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::config::ConnInfo;
use crate::progress::{Bounds, Buckets, Seconds, lock};
use crate::store::Store;

use super::conflict::ConflictPolicies;

/// How the apply stage batches and resolves conflicts.
#[derive(Debug, Clone)]
pub struct ApplyConfig {
    /// Green.
    pub target: ConnInfo,
    /// Slot name: the key of the progress row.
    pub slot: String,
    /// A batch closes after the source transaction that reaches this many changes.
    pub batch_max_changes: u64,
    /// A batch closes after the source transaction that ends this long after it began.
    pub batch_max_delay: Duration,
    /// Conflict policies.
    pub conflicts: ConflictPolicies,
    /// teal's schema on green.
    pub store: Store,
    /// `--replication-timeout`: the longest green may take to answer (a
    /// batch of changes sent, a commit) before teal drops the session and
    /// resumes from green's progress; also how long green keeps a session
    /// of teal's idle inside a transaction. `None`: wait forever.
    pub timeout: Option<Duration>,
    /// Append each batch to the ledger of applied changes (`teal.ledger`,
    /// see [`crate::apply::ledger`]); `--ledger off` turns it off.
    pub ledger: bool,
}

impl ApplyConfig {
    /// `--batch-max-changes` default.
    pub const DEFAULT_BATCH_MAX_CHANGES: u64 = 10_000;
    /// `--batch-max-delay-ms` default.
    pub const DEFAULT_BATCH_MAX_DELAY: Duration = Duration::from_millis(50);

    /// Checks the batch limits before anything connects.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if self.batch_max_changes == 0 {
            return Err(crate::config::ConfigError {
                flag: "--batch-max-changes",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// Defaults for everything but green and the slot: batches of 10,000
    /// changes or 50 ms, conflicts stop teal, teal's schema is `teal`,
    /// green gets 60 s to answer.
    pub fn new(target: ConnInfo, slot: impl Into<String>) -> ApplyConfig {
        ApplyConfig {
            target,
            slot: slot.into(),
            batch_max_changes: Self::DEFAULT_BATCH_MAX_CHANGES,
            batch_max_delay: Self::DEFAULT_BATCH_MAX_DELAY,
            conflicts: ConflictPolicies::default(),
            store: Store::new(Store::DEFAULT_SCHEMA),
            timeout: Some(crate::config::SourceConfig::DEFAULT_REPLICATION_TIMEOUT),
            ledger: true,
        }
    }
}

/// Counters of the apply stage.
#[derive(Debug, Default)]
pub struct ApplyStats {
    /// Source transactions applied.
    pub transactions: AtomicU64,
    /// Changes applied.
    pub changes: AtomicU64,
    /// Green transactions committed.
    pub batches: AtomicU64,
    /// Source transactions skipped because green already had them.
    pub skipped_transactions: AtomicU64,
    /// Conflicts resolved by policy.
    pub conflicts: AtomicU64,
    /// Inserts, updates and deletes applied by set-based statements (many
    /// rows each).
    pub set_based_rows: AtomicU64,
    /// Updates not sent because a later update of the same row in the same
    /// green transaction overwrote every column.
    pub superseded_updates: AtomicU64,
    /// Changes committed per table (`schema.table`).
    pub tables: Mutex<BTreeMap<String, TableCounts>>,
    /// Time the apply stage worked (applying and committing, including
    /// waiting for green; not waiting for input).
    pub busy: Seconds,
    /// Green transactions by changes committed.
    pub batch_sizes: Buckets<BatchSizes>,
    /// Rows this session appended to the ledger.
    pub ledger_rows: AtomicU64,
    /// The ledger's head (hex SHA-256 of its last row).
    pub ledger_head: Mutex<Option<String>>,
    /// Each row appended to the ledger, once committed (the Kafka sink
    /// publishes them).
    pub ledger_heads: crate::progress::LedgerHeads,
}

/// Bucket bounds of the batch-size histogram (changes per green transaction).
#[derive(Debug)]
pub struct BatchSizes;

impl Bounds for BatchSizes {
    const BOUNDS: &'static [f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];
}

/// Changes committed to one green table, by operation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TableCounts {
    /// Rows inserted.
    pub insert: u64,
    /// Rows updated.
    pub update: u64,
    /// Rows deleted.
    pub delete: u64,
    /// TRUNCATEs.
    pub truncate: u64,
}

impl ApplyStats {
    /// A snapshot of the per-table counters.
    pub fn tables(&self) -> BTreeMap<String, TableCounts> {
        lock(&self.tables).clone()
    }
}
