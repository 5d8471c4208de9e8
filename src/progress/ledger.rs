//! The ledger's head as apply last committed it, for the other consumers
//! that publish it (the Kafka sink writes it to its transactions topic).

use std::sync::Arc;

use tokio::sync::watch;

use crate::lsn::Lsn;

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

/// The last row apply appended (and committed) in this process.
#[derive(Debug, Default)]
pub struct LedgerHeads {
    tx: watch::Sender<Option<Arc<LedgerHead>>>,
}

impl LedgerHeads {
    /// A row was appended and its transaction committed.
    pub fn appended(&self, head: LedgerHead) {
        self.tx.send_replace(Some(Arc::new(head)));
    }

    /// A receiver that sees each new head (at least the latest).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<LedgerHead>>> {
        self.tx.subscribe()
    }
}
