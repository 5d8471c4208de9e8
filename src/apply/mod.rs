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
//! - nothing of a batch that met an error is committed;
//! - every wait for green is bounded (`--replication-timeout`), and one
//!   session per slot applies (`claim`: a new one ends an older one
//!   before it reads green's progress).
//!
//! Files: this one (the [`Applier`]: batches, commit, progress row),
//! `writer` (dispatch of changes, the pipelined executor) with its pure
//! planning in `run`, `set_based`, `row_key` and `copy`, `statements`
//! (prepared statement cache), `careful` (conflicts), `target` (blue
//! relation -> green table, drift), `green` (session settings), `origin`,
//! `claim`, `point` (pausing at `teal verify`'s exact points), `ledger`
//! (the chain of applied batches), `config` (settings and counters), `error`.

mod careful;
mod claim;
mod config;
mod conflict;
mod copy;
pub mod ddl;
mod error;
#[cfg(test)]
mod fixture;
mod green;
pub mod ledger;
mod origin;
mod param;
mod point;
mod row_key;
mod run;
mod set_based;
mod sql;
mod statements;
mod target;
mod writer;

pub use config::{ApplyConfig, ApplyStats, BatchSizes, TableCounts};
pub use conflict::{ConflictKind, ConflictPolicies, ConflictPolicy};
pub(crate) use error::describe;
pub use error::{ApplyError, ConflictReport};
pub use green::connect as green_session;
pub use origin::origin_name;
pub(crate) use target::FIRST_NORMAL_OID;
pub use target::{DriftError, MapError};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;
use tokio_postgres::{Client, Statement};

use crate::event::{Event, TxnMeta};
use crate::lsn::{Lsn, PgTimestamp};
use crate::progress::{Consumer, Lag, lock};
use crate::store::{AppliedPosition, Store};

use origin::Origin;
use writer::Writer;

/// The batch being built in the open green transaction.
struct Batch {
    started: Instant,
    changes: u64,
    transactions: u64,
    last: Option<Arc<TxnMeta>>,
    idle: Option<Lsn>,
    /// Commit LSN of its first source transaction.
    first: Option<Lsn>,
    /// Its changes' digest, for the ledger (`None` without one).
    digest: Option<ledger::BatchDigest>,
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
    /// The verify point apply goes on to (request id, blue's LSN).
    point: Option<(i64, Lsn)>,
    /// The newest verify request served (or given up).
    points_done: i64,
    /// The ledger of applied changes (`None`: `--ledger off`).
    ledger: Option<ledger::Ledger>,
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
        let ledger = if config.ledger {
            let ledger = ledger::Ledger::load(&client, &config.store, &config.slot)
                .await
                .map_err(|source| ApplyError::Sql {
                    context: "reading the ledger's head".into(),
                    source,
                })?;
            *lock(&stats.ledger_head) = ledger.head_hex();
            Some(ledger)
        } else {
            None
        };
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
            point: None,
            points_done: 0,
            ledger,
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
        let mut requests = point::watch(
            self.config.target.clone(),
            self.config.store.clone(),
            self.config.slot.clone(),
        );
        let mut requests_alive = true;
        // Events received past a verify point, applied once verify let go.
        let mut stash: Option<Vec<Event>> = None;
        loop {
            let at_boundary = at.current.is_none();
            if at_boundary {
                self.serve_hold(&mut at, &mut requests).await?;
            }
            let next: Option<Vec<Event>> = if let Some(s) = stash.take() {
                Some(s)
            } else if at.batch.is_some() && at_boundary {
                match events.try_recv() {
                    Ok(b) => Some(b.into()),
                    // Nothing more is ready: commit what the batch holds now.
                    Err(TryRecvError::Empty) => {
                        let busy = Instant::now();
                        self.commit_within(&mut at.batch).await?;
                        self.stats.busy.add(busy.elapsed());
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => None,
                }
            } else if requests_alive {
                tokio::select! {
                    next = events.recv() => next.map(Into::into),
                    changed = requests.rx.changed() => {
                        // A verify request: looked at on the next turn.
                        requests_alive = changed.is_ok();
                        continue;
                    }
                }
            } else {
                events.recv().await.map(Into::into)
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
            let leftover = within(
                self.config.timeout,
                "applying changes",
                self.apply_events(next, &mut at),
            )
            .await??;
            self.lag.liveness().moved();
            if let Some(leftover) = leftover {
                // At the verify point: everything blue committed before it
                // is in this batch or before; nothing after it is.
                self.commit_within(&mut at.batch).await?;
                self.serve_reached(&mut requests).await?;
                stash = Some(leftover);
                self.stats.busy.add(busy.elapsed());
                continue;
            }
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

    /// Applies one batch of events from the assembler; at the verify point
    /// it stops and returns the events from there on.
    async fn apply_events(
        &mut self,
        events: Vec<Event>,
        at: &mut Cursor,
    ) -> Result<Option<Vec<Event>>, ApplyError> {
        let mut events = events.into_iter();
        while let Some(event) = events.next() {
            if let Some((_, point)) = self.point {
                let past = match &event {
                    Event::Begin(meta) => meta.commit_lsn >= point,
                    Event::Message(m) => at.current.is_none() && m.lsn >= point,
                    _ => false,
                };
                if past {
                    return Ok(Some(std::iter::once(event).chain(events).collect()));
                }
            }
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
                            first: None,
                            digest: self.ledger.as_ref().map(|_| ledger::BatchDigest::new()),
                        });
                    }
                    if let Some(b) = at.batch.as_mut() {
                        b.first.get_or_insert(meta.commit_lsn);
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
                    let mut digest = at.batch.as_mut().and_then(|b| b.digest.as_mut());
                    for change in changes {
                        if let Some(d) = digest.as_mut() {
                            d.change(&change);
                        }
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
                        if let Some(d) = b.digest.as_mut() {
                            d.commit(&meta);
                        }
                        b.last = Some(meta);
                    }
                }
                Event::Message(_) => {}
                Event::Idle { wal_end } => {
                    match at.batch.as_mut() {
                        Some(b) => b.idle = Some(wal_end),
                        None => self.record_idle(wal_end).await?,
                    }
                    // Blue is past the point with nothing pending.
                    if self.point.is_some_and(|(_, p)| wal_end >= p) {
                        return Ok(Some(events.collect()));
                    }
                }
            }
        }
        Ok(None)
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
            tracing::debug!(error = %crate::error::Report(&e), "rollback on green failed (the session is gone)");
        }
    }

    /// Writes the progress row and commits the batch, then confirms it.
    async fn commit(&mut self, batch: &mut Option<Batch>) -> Result<(), ApplyError> {
        let Some(mut b) = batch.take() else {
            return Ok(());
        };
        self.writer.flush(&self.client).await?;
        // The ledger's row, in the same transaction as the changes.
        let row = match (self.ledger.as_ref(), &b.last, b.digest.take()) {
            (Some(_), Some(last), Some(digest)) => Some(ledger::LedgerRow {
                slot: self.config.slot.clone(),
                first_lsn: b.first.unwrap_or(last.commit_lsn),
                last_lsn: last.end_lsn,
                transactions: i64::try_from(b.transactions).unwrap_or(i64::MAX),
                changes: i64::try_from(b.changes).unwrap_or(i64::MAX),
                batch: digest.finish(),
            }),
            _ => None,
        };
        let mut appended = None;
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
            let ledger_row = async {
                match (self.ledger.as_ref(), row.as_ref()) {
                    (Some(ledger), Some(row)) => ledger
                        .append(&self.client, row)
                        .await
                        .map(Some)
                        .map_err(|source| ApplyError::Sql {
                            context: "appending to the ledger".into(),
                            source,
                        }),
                    _ => Ok(None),
                }
            };
            let origin = async {
                match &self.origin {
                    Some(origin) => {
                        origin
                            .xact_setup(&self.client, last.end_lsn, last.commit_ts)
                            .await
                    }
                    None => Ok(()),
                }
            };
            // All in one round trip (tokio-postgres pipelines concurrent queries).
            let (_, _, hash) =
                futures_util::future::try_join3(origin, progress, ledger_row).await?;
            appended = hash;
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
            debug_assert!(
                self.applied.is_none_or(|a| last.commit_lsn >= a.end_lsn),
                "a batch only applies transactions past green's progress"
            );
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
        if let (Some(ledger), Some(hash), Some(row)) = (self.ledger.as_mut(), appended, row) {
            let prev_sha256 = ledger.head_hex();
            ledger.advance(hash);
            self.stats.ledger_rows.fetch_add(1, Ordering::Relaxed);
            *lock(&self.stats.ledger_head) = ledger.head_hex();
            self.stats
                .ledger_heads
                .appended(crate::progress::LedgerHead {
                    slot: row.slot,
                    first_lsn: row.first_lsn,
                    last_lsn: row.last_lsn,
                    transactions: row.transactions,
                    changes: row.changes,
                    batch_sha256: ledger::hex(&row.batch),
                    prev_sha256,
                    sha256: ledger::hex(&hash),
                });
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
                    tracing::error!(error = %crate::error::Report(&e), "could not record the conflict on green");
                }
            }
            let refused =
                matches!(&error, ApplyError::Sql { .. }) && !crate::error::retries(&error.kind());
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
