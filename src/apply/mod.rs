//! The apply stage: whole source transactions into batched green transactions.
//!
//! ```text
//! events ──▶ batch: source txn, txn, ... (never split one; up to --batch-max-changes
//!            or --batch-max-delay-ms, or until no further event is ready)
//!              │ writer: runs → COPY / pipelined prepared statements
//!              ▼
//!            progress row (slot, commit_lsn, end_lsn) in the same green transaction
//!              ▼ COMMIT
//!            confirm end_lsn ──▶ progress ──▶ blue
//! ```
//!
//! Invariants:
//! - a source transaction is applied entirely in one green transaction, or
//!   not at all; green shows a prefix of blue's history;
//! - the progress row commits with the changes, so after any crash green
//!   alone says where to resume; transactions at or before it are skipped;
//! - only what green committed is confirmed to blue;
//! - nothing of a batch that met an error is committed.

mod careful;
mod claim;
mod conflict;
mod copy;
#[cfg(test)]
mod fixture;
mod green;
mod origin;
mod param;
mod row_key;
mod run;
mod set_based;
mod sql;
mod statements;
mod target;
mod writer;

pub use conflict::{ConflictKind, ConflictPolicies, ConflictPolicy};
pub use green::connect as green_session;
pub use origin::origin_name;
pub use target::{DriftError, MapError};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;
use tokio_postgres::{Client, Statement};

use crate::config::ConnInfo;
use crate::error::{ErrorClass, classify_sqlstate};
use crate::event::{Event, QualifiedName, TxnMeta};
use crate::lsn::{Lsn, PgTimestamp, Xid};
use crate::progress::{Bounds, Buckets, Consumer, Lag, Seconds, lock};
use crate::store::{AppliedPosition, Store, StoreError};

use origin::Origin;
use writer::Writer;

/// A conflict, as written to the conflict log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictReport {
    /// The slot teal streams from.
    pub slot: String,
    /// The table.
    pub table: QualifiedName,
    /// What kind of conflict.
    pub kind: ConflictKind,
    /// The policy in force.
    pub policy: ConflictPolicy,
    /// The row's key (JSON).
    pub key: Option<String>,
    /// The source row (JSON).
    pub source_row: Option<String>,
    /// Green's row (JSON), when there is one.
    pub target_row: Option<String>,
    /// Commit LSN of the source transaction.
    pub commit_lsn: Lsn,
    /// LSN of the change.
    pub change_lsn: Lsn,
    /// Source transaction id.
    pub xid: Xid,
    /// What was done.
    pub resolution: String,
}

/// Why applying stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Green could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::session::SessionError),
    /// teal's own tables on green.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blue table does not fit green (or green's catalog could not be read).
    #[error(transparent)]
    Map(#[from] MapError),
    /// A statement failed on green. The message names table and LSNs; row
    /// values are left out on purpose (they may be sensitive).
    #[error("{context}: {}", describe(.source))]
    Sql {
        /// What teal was applying.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A conflict under the `error` policy.
    #[error(
        "conflict {} on {} at LSN {} (transaction {}, xid {}): policy error, so teal stopped; the source and green rows are in the conflicts table",
        .0.kind, .0.table, .0.change_lsn, .0.commit_lsn, .0.xid
    )]
    Conflict(Box<ConflictReport>),
    /// An update or delete for a table blue cannot identify rows of.
    #[error(
        "blue sent an update or delete for {table} at LSN {lsn}, but the table has no replica identity; set REPLICA IDENTITY FULL on it or add a primary key (on blue and green)"
    )]
    NoIdentity {
        /// The table.
        table: QualifiedName,
        /// Change LSN.
        lsn: Lsn,
    },
    /// A change cannot be applied as sent.
    #[error("cannot apply the change to {table} at LSN {lsn} (transaction {commit_lsn}): {reason}")]
    Unresolvable {
        /// The table.
        table: QualifiedName,
        /// Change LSN.
        lsn: Lsn,
        /// Commit LSN.
        commit_lsn: Lsn,
        /// Why.
        reason: String,
    },
    /// The fast path met a conflict: replay up to this commit LSN one change
    /// at a time so the conflict policy can decide (handled by `teal stream`).
    #[error(
        "conflict detected in a batch; replaying transactions up to {through} change by change"
    )]
    Replay {
        /// Replay carefully through this commit LSN.
        through: Lsn,
    },
    /// Green did not answer within `--replication-timeout`: the session is
    /// dropped unanswered and streaming resumes from green's progress.
    #[error(
        "green did not answer within {}s while {doing}; dropping the session and resuming from green's progress (--replication-timeout)",
        after.as_secs()
    )]
    Timeout {
        /// What teal waited for.
        doing: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// Green holds progress behind what blue's slot already confirmed: the
    /// changes in between are gone from the slot.
    #[error(
        "green's progress for slot {slot:?} is at {green}, but the slot on blue already confirmed {slot_lsn}: green was restored from an older backup or its progress row was changed. The changes in between cannot be streamed again; resynchronize green (teal sync)"
    )]
    Behind {
        /// The slot.
        slot: String,
        /// Green's applied end LSN.
        green: Lsn,
        /// The slot's confirmed flush LSN.
        slot_lsn: Lsn,
    },
}

/// The driver's error without detail (which may quote row values).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    crate::error::describe_postgres(e)
}

impl ApplyError {
    /// Retry from green's progress (connection trouble), or stop.
    pub fn class(&self) -> ErrorClass {
        match self {
            ApplyError::Connect(e) if e.is_transient() => ErrorClass::Transient,
            ApplyError::Sql { source, .. } => sql_class(source),
            ApplyError::Store(e) => e
                .sqlstate()
                .map_or(ErrorClass::Transient, classify_sqlstate),
            ApplyError::Map(MapError::Catalog { source, .. }) => sql_class(source),
            ApplyError::Replay { .. } | ApplyError::Timeout { .. } => ErrorClass::Transient,
            _ => ErrorClass::Definite,
        }
    }
}

fn sql_class(e: &tokio_postgres::Error) -> ErrorClass {
    match e.code() {
        Some(code) => classify_sqlstate(code.code()),
        // No SQLSTATE: the session broke (closed, I/O, timeout).
        None => ErrorClass::Transient,
    }
}

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
}

impl ApplyConfig {
    /// `--batch-max-changes` default.
    pub const DEFAULT_BATCH_MAX_CHANGES: u64 = 10_000;
    /// `--batch-max-delay-ms` default.
    pub const DEFAULT_BATCH_MAX_DELAY: Duration = Duration::from_millis(50);

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

/// The batch being built in the open green transaction.
struct Batch {
    started: Instant,
    changes: u64,
    transactions: u64,
    last: Option<Arc<TxnMeta>>,
    idle: Option<Lsn>,
}

/// Where [`Applier::run`] stands in the event stream.
#[derive(Default)]
struct Cursor {
    /// The open green transaction.
    batch: Option<Batch>,
    /// The source transaction being applied.
    current: Option<Arc<TxnMeta>>,
    /// Its changes are skipped: green has it already.
    skipping: bool,
}

/// Runs `step`, a wait for green, within `timeout`.
async fn within<T>(
    timeout: Option<Duration>,
    doing: &'static str,
    step: impl Future<Output = T>,
) -> Result<T, ApplyError> {
    match timeout {
        Some(after) => tokio::time::timeout(after, step)
            .await
            .map_err(|_| ApplyError::Timeout { doing, after }),
        None => Ok(step.await),
    }
}

/// Applies transactions to green through one session.
pub struct Applier {
    client: Client,
    config: ApplyConfig,
    writer: Writer,
    progress_statement: Statement,
    origin: Option<Origin>,
    applied: Option<AppliedPosition>,
    consumer: Consumer,
    stats: Arc<ApplyStats>,
    lag: Arc<Lag>,
    careful_through: Option<Lsn>,
}

impl Applier {
    /// Opens a session on green, creates or upgrades teal's schema, and reads
    /// where this slot stands.
    /// Counters go to `stats`; what green committed is reported to `lag`.
    pub async fn connect(
        config: ApplyConfig,
        consumer: Consumer,
        stats: Arc<ApplyStats>,
        lag: Arc<Lag>,
    ) -> Result<Applier, ApplyError> {
        let timeout = config.timeout;
        within(
            timeout,
            "opening the apply session",
            Applier::open(config, consumer, stats, lag),
        )
        .await?
    }

    async fn open(
        config: ApplyConfig,
        consumer: Consumer,
        stats: Arc<ApplyStats>,
        lag: Arc<Lag>,
    ) -> Result<Applier, ApplyError> {
        let mut client = green::connect(&config.target, "teal apply", config.timeout).await?;
        // Before anything else: an earlier session of this slot could still
        // commit, hold locks, or block the migrations and the origin.
        claim::claim(&client, &config.slot, config.timeout).await?;
        config.store.migrate(&mut client).await?;
        let applied = config.store.applied(&client, &config.slot).await?;
        if let Some(a) = applied {
            consumer.confirm(a.end_lsn);
            lag.applied(a.end_lsn, PgTimestamp::now(), false);
        }
        let progress_statement = client
            .prepare(&config.store.progress_upsert())
            .await
            .map_err(|source| ApplyError::Sql {
                context: "preparing the progress statement".into(),
                source,
            })?;
        let origin = Origin::setup(&client, &config.slot).await?;
        let writer = Writer::new(
            config.store.clone(),
            config.slot.clone(),
            config.conflicts.clone(),
        );
        Ok(Applier {
            client,
            config,
            writer,
            progress_statement,
            origin,
            applied,
            consumer,
            stats,
            lag,
            careful_through: None,
        })
    }

    /// What green holds for this slot.
    pub fn applied(&self) -> Option<AppliedPosition> {
        self.applied
    }

    /// Applies transactions with commit LSN up to `through` one change at a
    /// time, so the conflict policy decides for each (after [`ApplyError::Replay`]).
    pub fn set_careful_through(&mut self, through: Option<Lsn>) {
        self.careful_through = through;
    }

    /// Applies events until the channel closes (shutdown) or an error.
    /// Waiting for events has no bound (blue may be quiet); every wait for
    /// green has one (`--replication-timeout`).
    pub async fn run<B: Into<Vec<Event>>>(
        &mut self,
        mut events: mpsc::Receiver<B>,
    ) -> Result<(), ApplyError> {
        let mut at = Cursor::default();
        loop {
            let at_boundary = at.current.is_none();
            let next = if at.batch.is_some() && at_boundary {
                match events.try_recv() {
                    Ok(b) => Some(b),
                    // Nothing more is ready: commit what the batch holds now.
                    Err(TryRecvError::Empty) => {
                        let busy = Instant::now();
                        self.commit_within(&mut at.batch).await?;
                        self.stats.busy.add(busy.elapsed());
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => None,
                }
            } else {
                events.recv().await
            };
            let busy = Instant::now();
            let Some(next) = next else {
                if at.current.is_none() {
                    self.commit_within(&mut at.batch).await?;
                } else if at.batch.is_some() {
                    // Shutdown in the middle of a transaction: blue sends it again.
                    within(self.config.timeout, "rolling back", self.rollback()).await?;
                }
                return Ok(());
            };
            within(
                self.config.timeout,
                "applying changes",
                self.apply_events(next.into(), &mut at),
            )
            .await??;
            self.lag.liveness().moved();
            let full = at.batch.as_ref().is_some_and(|b| {
                b.changes >= self.config.batch_max_changes
                    || b.started.elapsed() >= self.config.batch_max_delay
            });
            if at.current.is_none() && full {
                self.commit_within(&mut at.batch).await?;
            }
            self.stats.busy.add(busy.elapsed());
        }
    }

    /// Applies one batch of events from the assembler.
    async fn apply_events(
        &mut self,
        events: Vec<Event>,
        at: &mut Cursor,
    ) -> Result<(), ApplyError> {
        for event in events {
            match event {
                Event::Begin(meta) => {
                    at.skipping = self.applied.is_some_and(|a| meta.commit_lsn < a.end_lsn);
                    if at.skipping {
                        self.stats
                            .skipped_transactions
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if at.batch.is_none() {
                        self.begin().await?;
                        at.batch = Some(Batch {
                            started: Instant::now(),
                            changes: 0,
                            transactions: 0,
                            last: None,
                            idle: None,
                        });
                    }
                    at.current = Some(meta);
                }
                Event::Changes(changes) => {
                    if at.skipping {
                        continue;
                    }
                    let Some(txn) = at.current.clone() else {
                        continue;
                    };
                    let careful = self.careful_through.is_some_and(|t| txn.commit_lsn <= t);
                    for change in changes {
                        self.writer
                            .push(&self.client, change, &txn, careful)
                            .await?;
                    }
                }
                Event::Commit(meta) => {
                    if std::mem::take(&mut at.skipping) {
                        // Green has it: no longer pending.
                        if let Some(a) = self.applied {
                            self.lag.applied(a.end_lsn, PgTimestamp::now(), false);
                        }
                        continue;
                    }
                    at.current = None;
                    if let Some(b) = at.batch.as_mut() {
                        b.changes += meta.change_count;
                        b.transactions += 1;
                        b.last = Some(meta);
                    }
                }
                Event::Message(_) => {}
                Event::Idle { wal_end } => match at.batch.as_mut() {
                    Some(b) => b.idle = Some(wal_end),
                    None => self.record_idle(wal_end).await?,
                },
            }
        }
        Ok(())
    }

    /// [`Applier::commit`] within `--replication-timeout`.
    async fn commit_within(&mut self, batch: &mut Option<Batch>) -> Result<(), ApplyError> {
        within(
            self.config.timeout,
            "committing a batch",
            self.commit(batch),
        )
        .await?
    }

    async fn begin(&mut self) -> Result<(), ApplyError> {
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(|source| ApplyError::Sql {
                context: "starting a green transaction".into(),
                source,
            })
    }

    async fn rollback(&mut self) {
        self.writer.reset();
        if let Err(e) = self.client.batch_execute("ROLLBACK").await {
            tracing::debug!(error = %e, "rollback on green failed (the session is gone)");
        }
    }

    /// Writes the progress row and commits the batch, then confirms it.
    async fn commit(&mut self, batch: &mut Option<Batch>) -> Result<(), ApplyError> {
        let Some(b) = batch.take() else {
            return Ok(());
        };
        self.writer.flush(&self.client).await?;
        if let Some(last) = &b.last {
            let (slot, commit_lsn, end_lsn, xid, ts) = Store::progress_params(
                &self.config.slot,
                last.commit_lsn,
                last.end_lsn,
                last.xid,
                last.commit_ts,
            );
            let progress = async {
                self.client
                    .execute(
                        &self.progress_statement,
                        &[&slot, &commit_lsn, &end_lsn, &xid, &ts],
                    )
                    .await
                    .map_err(|source| ApplyError::Sql {
                        context: "recording progress".into(),
                        source,
                    })
            };
            // Both in one round trip (tokio-postgres pipelines concurrent queries).
            match &self.origin {
                Some(origin) => {
                    futures_util::future::try_join(
                        origin.xact_setup(&self.client, last.end_lsn, last.commit_ts),
                        progress,
                    )
                    .await?;
                }
                None => {
                    progress.await?;
                }
            }
        }
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|source| ApplyError::Sql {
                context: format!(
                    "committing a batch of {} transactions ending at {}",
                    b.transactions,
                    b.last.as_ref().map_or(Lsn::ZERO, |l| l.end_lsn)
                ),
                source,
            })?;
        if let Some(last) = &b.last {
            self.applied = Some(AppliedPosition {
                commit_lsn: Some(last.commit_lsn),
                end_lsn: self
                    .applied
                    .map_or(last.end_lsn, |a| a.end_lsn.max(last.end_lsn)),
            });
            if self.careful_through.is_some_and(|t| last.commit_lsn >= t) {
                self.careful_through = None;
            }
        }
        if let Some(last) = &b.last {
            self.consumer.confirm(last.end_lsn);
            self.lag.applied(last.end_lsn, PgTimestamp::now(), true);
        }
        if let Some(idle) = b.idle {
            self.record_idle(idle).await?;
        }
        self.stats
            .transactions
            .fetch_add(b.transactions, Ordering::Relaxed);
        self.stats.changes.fetch_add(b.changes, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.batch_sizes.record(b.changes as f64);
        self.stats.conflicts.fetch_add(
            std::mem::take(&mut self.writer.conflicts),
            Ordering::Relaxed,
        );
        self.stats.set_based_rows.fetch_add(
            std::mem::take(&mut self.writer.set_based_rows),
            Ordering::Relaxed,
        );
        self.stats.superseded_updates.fetch_add(
            std::mem::take(&mut self.writer.superseded),
            Ordering::Relaxed,
        );
        let counts = self.writer.take_counts();
        if !counts.is_empty() {
            let mut tables = lock(&self.stats.tables);
            for (name, [insert, update, delete, truncate]) in counts {
                let t = tables.entry(name).or_default();
                t.insert += insert;
                t.update += update;
                t.delete += delete;
                t.truncate += truncate;
            }
        }
        Ok(())
    }

    /// Blue reported `wal_end` with nothing pending: make it durable on green,
    /// then confirm it (so the slot never gets ahead of green's progress).
    async fn record_idle(&mut self, wal_end: Lsn) -> Result<(), ApplyError> {
        if self.applied.is_some_and(|a| a.end_lsn >= wal_end) {
            return Ok(());
        }
        self.config
            .store
            .record_idle(&self.client, &self.config.slot, wal_end)
            .await?;
        self.applied = Some(AppliedPosition {
            end_lsn: wal_end,
            commit_lsn: self.applied.and_then(|a| a.commit_lsn),
        });
        self.consumer.confirm(wal_end);
        self.lag.applied(wal_end, PgTimestamp::now(), false);
        Ok(())
    }

    /// After an error: roll back whatever is open and, for a conflict under
    /// the `error` policy, record it in its own transaction. A statement
    /// that green refused is looked at again: when green's tables changed
    /// while teal streamed (a column dropped, a type changed), the error to
    /// report is the one that says what to run on green. Not after a
    /// timeout: the session does not answer, and dropping it is all there
    /// is to do (green rolls back what it had).
    pub async fn abandon(&mut self, error: ApplyError) -> ApplyError {
        if matches!(error, ApplyError::Timeout { .. }) {
            self.writer.reset();
            return error;
        }
        let relations = self.writer.relations();
        let timeout = self.config.timeout;
        let tidy = async {
            self.rollback().await;
            if let ApplyError::Conflict(report) = &error {
                if let Err(e) =
                    careful::log_conflict(&self.client, &self.config.store, report).await
                {
                    tracing::error!(error = %e, "could not record the conflict on green");
                }
            }
            let refused =
                matches!(&error, ApplyError::Sql { .. }) && error.class() == ErrorClass::Definite;
            if !refused {
                return None;
            }
            for rel in &relations {
                if let Err(MapError::Drift(drift)) = target::check(&self.client, rel).await {
                    return Some(ApplyError::Map(MapError::Drift(drift)));
                }
            }
            None
        };
        match within(timeout, "rolling back", tidy).await {
            Ok(explained) => explained.unwrap_or(error),
            Err(_) => {
                tracing::warn!("green did not answer the rollback; dropping the session");
                self.writer.reset();
                error
            }
        }
    }
}
