//! teal's schema on green: migrations, the progress row, the conflict log,
//! the audit trail.
//!
//! ```text
//! sql/0001_*.sql ... ──migrate (advisory lock, one transaction)──▶ <schema>.schema_migrations
//! batch transaction: changes ... + upsert <schema>.progress(slot) ──COMMIT──▶ exactly once
//! ```
//!
//! Nothing is kept only in local files: a new teal process on another host
//! resumes from green alone.

use tokio_postgres::{Client, GenericClient};

use crate::event::quote_ident;
use crate::lsn::{Lsn, PgTimestamp, Xid};

/// Versioned migrations, applied in order; never edited once released.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "teal schema: progress, conflicts",
        include_str!("../sql/0001_teal_schema.sql"),
    ),
    (2, "audit trail", include_str!("../sql/0002_audit.sql")),
    (
        3,
        "initial sync state",
        include_str!("../sql/0003_sync.sql"),
    ),
    (
        4,
        "indexes built after the copy",
        include_str!("../sql/0004_sync_indexes.sql"),
    ),
    (
        5,
        "verify points",
        include_str!("../sql/0005_verify_points.sql"),
    ),
    (6, "repairs", include_str!("../sql/0006_repairs.sql")),
    (
        7,
        "blue-green switches",
        include_str!("../sql/0007_switches.sql"),
    ),
    (8, "ledger", include_str!("../sql/0008_ledger.sql")),
    (9, "kafka drop", include_str!("../sql/0009_kafka_drop.sql")),
    (10, "ddl", include_str!("../sql/0010_ddl.sql")),
];

/// Lock key for migrations (any constant; shared by all teal processes).
const MIGRATION_LOCK: i64 = 0x7465_616c_6d69_6772; // "tealmigr"

/// What went wrong with teal's own tables.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A statement on green failed.
    #[error("{context}")]
    Sql {
        /// What teal was doing.
        context: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The schema on green is newer than this teal knows.
    #[error(
        "green's {schema} schema is at version {found}, newer than this teal ({known}); upgrade teal"
    )]
    TooNew {
        /// teal's schema.
        schema: String,
        /// Version on green.
        found: i32,
        /// Newest version this build knows.
        known: i32,
    },
    /// A stored value does not parse.
    #[error("{schema}.progress holds an invalid {what} for slot {slot:?}")]
    Corrupt {
        /// teal's schema.
        schema: String,
        /// The slot.
        slot: String,
        /// Which field.
        what: &'static str,
    },
}

impl StoreError {
    /// What kind of failure it is (see [`crate::error::policy`]).
    pub fn kind(&self) -> crate::error::Kind {
        match self {
            StoreError::Sql { source, .. } => crate::error::postgres_kind(source),
            StoreError::TooNew { .. } | StoreError::Corrupt { .. } => crate::error::Kind::Setup,
        }
    }
}

fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Sql { context, source }
}

/// How far green is complete for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedPosition {
    /// Everything before this is on green (the end of the last transaction
    /// applied, or a later keepalive position): where streaming resumes and
    /// what blue may be told.
    pub end_lsn: Lsn,
    /// Commit LSN of the last transaction applied, if any.
    pub commit_lsn: Option<Lsn>,
}

/// Green-side state of one teal deployment.
#[derive(Debug, Clone)]
pub struct Store {
    schema: String,
}

impl Store {
    /// The default schema name.
    pub const DEFAULT_SCHEMA: &'static str = "teal";

    /// Teal's tables live in `schema`.
    pub fn new(schema: impl Into<String>) -> Store {
        Store {
            schema: schema.into(),
        }
    }

    /// The schema's name, quoted for SQL.
    pub fn quoted(&self) -> String {
        quote_ident(&self.schema)
    }

    /// Creates or upgrades teal's schema; safe to run concurrently and repeatedly.
    pub async fn migrate(&self, client: &mut Client) -> Result<(), StoreError> {
        let schema = self.quoted();
        let tx = client
            .transaction()
            .await
            .map_err(sql("starting the migration transaction"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(sql("locking teal's migrations"))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ( \
               version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .map_err(sql(format!("creating {schema}.schema_migrations")))?;
        let current: i32 = tx
            .query_one(
                &format!("SELECT COALESCE(max(version), 0) FROM {schema}.schema_migrations"),
                &[],
            )
            .await
            .map_err(sql("reading teal's schema version"))?
            .get(0);
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > known {
            return Err(StoreError::TooNew {
                schema: self.schema.clone(),
                found: current,
                known,
            });
        }
        for (version, name, body) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tx.batch_execute(&body.replace("@schema@", &schema))
                .await
                .map_err(sql(format!("applying teal migration {version} ({name})")))?;
            tx.execute(
                &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
                &[version, name],
            )
            .await
            .map_err(sql("recording a migration"))?;
            tracing::info!(version, name, schema = %self.schema, "applied teal migration on green");
        }
        tx.commit()
            .await
            .map_err(sql("committing teal's migrations"))
    }

    /// Where `slot` stands on green, if anything was applied yet.
    pub async fn applied(
        &self,
        client: &Client,
        slot: &str,
    ) -> Result<Option<AppliedPosition>, StoreError> {
        let row = client
            .query_opt(
                &format!(
                    "SELECT end_lsn::text, commit_lsn::text FROM {}.progress WHERE slot = $1",
                    self.quoted()
                ),
                &[&slot],
            )
            .await
            .map_err(sql("reading teal's progress"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let corrupt = |what| StoreError::Corrupt {
            schema: self.schema.clone(),
            slot: slot.to_owned(),
            what,
        };
        let end_lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|_| corrupt("end_lsn"))?;
        let commit_lsn = match row.get::<_, Option<String>>(1) {
            Some(s) => Some(s.parse().map_err(|_| corrupt("commit_lsn"))?),
            None => None,
        };
        Ok(Some(AppliedPosition {
            end_lsn,
            commit_lsn,
        }))
    }

    /// Records an idle position (nothing pending before it) in its own
    /// transaction; returns once it is durable.
    pub async fn record_idle(
        &self,
        client: &impl GenericClient,
        slot: &str,
        end_lsn: Lsn,
    ) -> Result<(), StoreError> {
        client
            .execute(
                &format!(
                    "INSERT INTO {}.progress AS p (slot, end_lsn) VALUES ($1, $2::text::pg_lsn) \
                     ON CONFLICT (slot) DO UPDATE SET end_lsn = greatest(p.end_lsn, EXCLUDED.end_lsn), applied_at = now()",
                    self.quoted()
                ),
                &[&slot, &end_lsn.to_string()],
            )
            .await
            .map(drop)
            .map_err(sql("recording an idle position"))
    }

    /// The statement that records a batch's last transaction (run inside the batch).
    pub fn progress_upsert(&self) -> String {
        format!(
            "INSERT INTO {}.progress AS p (slot, commit_lsn, end_lsn, xid, commit_ts) \
             VALUES ($1, $2::text::pg_lsn, $3::text::pg_lsn, $4, $5::text::timestamptz) \
             ON CONFLICT (slot) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, \
             end_lsn = greatest(p.end_lsn, EXCLUDED.end_lsn), \
             xid = EXCLUDED.xid, commit_ts = EXCLUDED.commit_ts, applied_at = now()",
            self.quoted()
        )
    }

    /// Parameters for [`Store::progress_upsert`].
    pub fn progress_params(
        slot: &str,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        xid: Xid,
        commit_ts: PgTimestamp,
    ) -> (String, String, String, i64, String) {
        (
            slot.to_owned(),
            commit_lsn.to_string(),
            end_lsn.to_string(),
            i64::from(xid.0),
            commit_ts.to_string(),
        )
    }

    /// The statement that logs a conflict (see `sql/0001_teal_schema.sql`).
    pub fn conflict_insert(&self) -> String {
        format!(
            "INSERT INTO {}.conflicts (slot, table_name, operation, kind, key, source_row, target_row, \
             commit_lsn, change_lsn, xid, policy, resolution) \
             VALUES ($1, $2, $3, $4, $5::text::jsonb, $6::text::jsonb, $7::text::jsonb, \
             $8::text::pg_lsn, $9::text::pg_lsn, $10, $11, $12)",
            self.quoted()
        )
    }

    /// Writes an audit row, or updates it (same operation id) while it is
    /// still `running`: status, end, duration and details. Both the start
    /// and the end of an operation use it, so an end recorded without its
    /// start still leaves a row, and a late start never undoes an end.
    pub async fn audit(&self, client: &Client, record: &AuditRecord) -> Result<(), StoreError> {
        client
            .execute(
                &format!(
                    "INSERT INTO {}.audit AS a (operation_id, correlation_id, operation, status, slot,                      started_at, ended_at, duration_ms, source, target, performed_by, details)                      VALUES ($1::text::uuid, $2::text::uuid, $3, $4, $5, $6::text::timestamptz,                      $7::text::timestamptz, $8, $9, $10, $11, $12::text::jsonb)                      ON CONFLICT (operation_id) DO UPDATE SET status = EXCLUDED.status,                      ended_at = EXCLUDED.ended_at, duration_ms = EXCLUDED.duration_ms,                      details = EXCLUDED.details",
                    self.quoted()
                ),
                &[
                    &record.operation_id,
                    &record.correlation_id,
                    &record.operation,
                    &record.status,
                    &record.slot,
                    &record.started_at.to_string(),
                    &record.ended_at.map(|t| t.to_string()),
                    &record.duration_ms,
                    &record.source,
                    &record.target,
                    &record.performed_by,
                    &record.details.to_string(),
                ],
            )
            .await
            .map(drop)
            .map_err(sql("writing teal's audit trail"))
    }

    /// Marks `operation` rows of `slot` still `running` from other runs as
    /// `interrupted` (their process died without recording an end); call
    /// once this run holds the slot, so no other run can still be live.
    pub async fn audit_interrupted(
        &self,
        client: &Client,
        operation: &str,
        slot: &str,
        correlation_id: &str,
    ) -> Result<u64, StoreError> {
        client
            .execute(
                &format!(
                    "UPDATE {}.audit SET status = 'interrupted'                      WHERE operation = $1 AND slot = $2 AND status = 'running'                      AND correlation_id <> $3::text::uuid",
                    self.quoted()
                ),
                &[&operation, &slot, &correlation_id],
            )
            .await
            .map_err(sql("updating teal's audit trail"))
    }

    /// The initial copy recorded for `slot`, if one started.
    pub async fn sync_state(
        &self,
        client: &Client,
        slot: &str,
    ) -> Result<Option<SyncState>, StoreError> {
        let schema = self.quoted();
        let row = client
            .query_opt(
                &format!(
                    "SELECT consistent_point::text, finished_at IS NOT NULL, \
                     (SELECT count(*) FROM {schema}.sync_chunks c WHERE c.slot = s.slot), \
                     (SELECT count(*) FROM {schema}.sync_chunks c WHERE c.slot = s.slot AND copied_at IS NOT NULL), \
                     snapshot_name, holder_pid, holder_host \
                     FROM {schema}.sync s WHERE slot = $1"
                ),
                &[&slot],
            )
            .await
            .map_err(sql("reading teal's sync state"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let consistent_point =
            row.get::<_, String>(0)
                .parse()
                .map_err(|_| StoreError::Corrupt {
                    schema: self.schema.clone(),
                    slot: slot.to_owned(),
                    what: "sync consistent_point",
                })?;
        Ok(Some(SyncState {
            consistent_point,
            finished: row.get(1),
            chunks: row.get::<_, i64>(2) as u64,
            copied_chunks: row.get::<_, i64>(3) as u64,
            snapshot_name: row.get(4),
            holder_pid: row
                .get::<_, Option<i32>>(5)
                .and_then(|p| u32::try_from(p).ok()),
            holder_host: row.get(6),
        }))
    }

    /// Tables with at least one copied chunk of `slot`'s sync (quoted names).
    pub async fn sync_copied_tables(
        &self,
        client: &Client,
        slot: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = client
            .query(
                &format!(
                    "SELECT DISTINCT table_name FROM {}.sync_chunks \
                     WHERE slot = $1 AND copied_at IS NOT NULL ORDER BY 1",
                    self.quoted()
                ),
                &[&slot],
            )
            .await
            .map_err(sql("reading teal's sync chunks"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Forgets `slot`'s sync (its chunks too), in `client`'s transaction.
    pub async fn sync_forget(
        &self,
        client: &impl GenericClient,
        slot: &str,
    ) -> Result<(), StoreError> {
        client
            .execute(
                &format!("DELETE FROM {}.sync WHERE slot = $1", self.quoted()),
                &[&slot],
            )
            .await
            .map(drop)
            .map_err(sql("clearing teal's sync state"))
    }

    /// Records a new sync of `slot` and its chunks (none copied yet), in
    /// `client`'s transaction.
    pub async fn sync_plan(
        &self,
        client: &impl GenericClient,
        slot: &str,
        consistent_point: Lsn,
        snapshot_name: Option<&str>,
        holder: Option<(u32, &str)>,
        chunks: &[SyncChunk],
    ) -> Result<(), StoreError> {
        let schema = self.quoted();
        let holder_pid = holder.and_then(|h| i32::try_from(h.0).ok());
        let holder_host = holder.map(|h| h.1);
        client
            .execute(
                &format!(
                    "INSERT INTO {schema}.sync (slot, consistent_point, snapshot_name, holder_pid, holder_host) \
                     VALUES ($1, $2::text::pg_lsn, $3, $4, $5)"
                ),
                &[
                    &slot,
                    &consistent_point.to_string(),
                    &snapshot_name,
                    &holder_pid,
                    &holder_host,
                ],
            )
            .await
            .map_err(sql("recording the sync"))?;
        let insert = client
            .prepare(&format!(
                "INSERT INTO {schema}.sync_chunks (slot, table_name, chunk, source, first_page, last_page) \
                 VALUES ($1, $2, $3, $4, $5, $6)"
            ))
            .await
            .map_err(sql("recording the sync's chunks"))?;
        for c in chunks {
            client
                .execute(
                    &insert,
                    &[
                        &slot,
                        &c.table,
                        &c.chunk,
                        &c.source,
                        &c.first_page,
                        &c.last_page,
                    ],
                )
                .await
                .map_err(sql("recording the sync's chunks"))?;
        }
        Ok(())
    }

    /// `slot`'s chunks: those not copied yet, and the rows already copied
    /// per table.
    pub async fn sync_chunks(
        &self,
        client: &Client,
        slot: &str,
    ) -> Result<(Vec<SyncChunk>, Vec<(String, u64, u64)>), StoreError> {
        let rows = client
            .query(
                &format!(
                    "SELECT table_name, chunk, source, first_page, last_page, rows, copied_at IS NOT NULL \
                     FROM {}.sync_chunks WHERE slot = $1 ORDER BY table_name, chunk",
                    self.quoted()
                ),
                &[&slot],
            )
            .await
            .map_err(sql("reading teal's sync chunks"))?;
        let mut missing = Vec::new();
        // (table, rows copied, chunks copied)
        let mut copied: Vec<(String, u64, u64)> = Vec::new();
        for r in &rows {
            let table: String = r.get(0);
            if r.get::<_, bool>(6) {
                let n = r.get::<_, Option<i64>>(5).unwrap_or(0).max(0) as u64;
                match copied.iter_mut().find(|c| c.0 == table) {
                    Some(c) => {
                        c.1 += n;
                        c.2 += 1;
                    }
                    None => copied.push((table, n, 1)),
                }
            } else {
                missing.push(SyncChunk {
                    table,
                    chunk: r.get(1),
                    source: r.get(2),
                    first_page: r.get(3),
                    last_page: r.get(4),
                });
            }
        }
        Ok((missing, copied))
    }

    /// The statement that marks a chunk copied (run in the chunk's transaction):
    /// `$1` slot, `$2` table, `$3` chunk, `$4` rows, `$5` bytes.
    pub fn sync_chunk_done(&self) -> String {
        format!(
            "UPDATE {}.sync_chunks SET rows = $4, bytes = $5, copied_at = now() \
             WHERE slot = $1 AND table_name = $2 AND chunk = $3 AND copied_at IS NULL",
            self.quoted()
        )
    }

    /// Marks `slot`'s sync finished and records green as complete up to the
    /// consistent point, in `client`'s transaction.
    pub async fn sync_finish(
        &self,
        client: &impl GenericClient,
        slot: &str,
        consistent_point: Lsn,
    ) -> Result<(), StoreError> {
        client
            .execute(
                &format!(
                    "UPDATE {}.sync SET finished_at = now() WHERE slot = $1",
                    self.quoted()
                ),
                &[&slot],
            )
            .await
            .map_err(sql("marking the sync finished"))?;
        self.record_idle(client, slot, consistent_point).await
    }

    /// The table of indexes dropped for the copy (quoted), for statements
    /// written elsewhere and for messages.
    pub fn sync_indexes_table(&self) -> String {
        format!("{}.sync_indexes", self.quoted())
    }

    /// Green tables with indexes dropped for a copy and not built yet.
    pub async fn sync_index_tables(&self, client: &Client) -> Result<Vec<String>, StoreError> {
        let rows = client
            .query(
                &format!(
                    "SELECT DISTINCT table_name FROM {} ORDER BY 1",
                    self.sync_indexes_table()
                ),
                &[],
            )
            .await
            .map_err(sql("reading the indexes teal sync has still to build"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Schema name, for messages.
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

/// What green records about a slot's initial copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    /// Where the slot's stream starts; the copy is consistent with it.
    pub consistent_point: Lsn,
    /// Every chunk and the sequences are copied.
    pub finished: bool,
    /// Chunks planned.
    pub chunks: u64,
    /// Chunks whose rows are committed on green.
    pub copied_chunks: u64,
    /// The exported snapshot.
    pub snapshot_name: Option<String>,
    /// The process holding it.
    pub holder_pid: Option<u32>,
    /// The host that process runs on.
    pub holder_host: Option<String>,
}

/// One planned chunk of a sync (a row of `<schema>.sync_chunks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncChunk {
    /// Green's table, quoted.
    pub table: String,
    /// Number within the table, from 0.
    pub chunk: i32,
    /// Blue relation read, quoted.
    pub source: String,
    /// First ctid page, `None` from the start.
    pub first_page: Option<i64>,
    /// Page after the last, `None` to the end.
    pub last_page: Option<i64>,
}

/// One row of `<schema>.audit`.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// This operation.
    pub operation_id: String,
    /// The run it belongs to (in every log line of the run).
    pub correlation_id: String,
    /// stream, schema_error, snapshot, verify, cutover, rollback.
    pub operation: &'static str,
    /// running, succeeded, failed, stopped, interrupted.
    pub status: &'static str,
    /// The slot, when the operation has one.
    pub slot: Option<String>,
    /// When it started.
    pub started_at: PgTimestamp,
    /// When it ended, once it has.
    pub ended_at: Option<PgTimestamp>,
    /// `ended_at - started_at` in milliseconds, once ended.
    pub duration_ms: Option<i64>,
    /// Blue, without password.
    pub source: Option<String>,
    /// Green, without password.
    pub target: Option<String>,
    /// OS user and host that ran teal (`user@host`).
    pub performed_by: String,
    /// What happened, as JSON.
    pub details: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_exact() {
        let s = Store::new("Teal Ops");
        assert_eq!(
            s.progress_upsert(),
            "INSERT INTO \"Teal Ops\".progress AS p (slot, commit_lsn, end_lsn, xid, commit_ts) \
             VALUES ($1, $2::text::pg_lsn, $3::text::pg_lsn, $4, $5::text::timestamptz) \
             ON CONFLICT (slot) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, \
             end_lsn = greatest(p.end_lsn, EXCLUDED.end_lsn), \
             xid = EXCLUDED.xid, commit_ts = EXCLUDED.commit_ts, applied_at = now()"
        );
        assert!(
            MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0),
            "versions increase"
        );
        assert!(MIGRATIONS[0].2.contains("@schema@.progress"));
    }
}
