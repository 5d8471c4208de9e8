//! The careful path: one change at a time with conflict-aware SQL, each
//! conflict resolved by its table's policy and written to the conflict log.
//!
//! ```text
//! fast path met a conflict (unique violation, a row not found) ──▶ batch replayed here:
//!   insert ── ON CONFLICT DO NOTHING ── 0 rows ──▶ insert_exists
//!   update / delete ── by key ── 0 rows ──▶ update_missing / delete_missing
//!   ──▶ policy: error (stop, row logged), source-wins (make green's row blue's),
//!       target-wins (keep green's row)
//! ```

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_postgres::Client;

use crate::event::{Change, ChangeKind, OldRow, RowImage, TxnMeta, Value};
use crate::store::Store;

use super::conflict::{ConflictKind, ConflictPolicy};
use super::param::Param;
use super::row_key::{RowKey, insert_key, row_key};
use super::sql;
use super::statements::Kind;
use super::target::Mapping;
use super::writer::{Writer, sql_error};
use super::{ApplyError, ConflictReport};

impl Writer {
    /// Applies one change on its own, resolving conflicts by policy.
    pub(super) async fn apply_carefully(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
        change: &Change,
        txn: &TxnMeta,
    ) -> Result<(), ApplyError> {
        let context = |what: &str| {
            format!(
                "{what} {} (change at LSN {}, transaction {})",
                mapping.name(),
                change.lsn,
                txn.commit_lsn
            )
        };
        let (kind, rows) = match &change.kind {
            ChangeKind::Insert { new, .. } => {
                let statement = self.insert_statement(client, mapping, true).await?;
                let params: Vec<Param<'_>> = new.values().filter_map(Param::from_value).collect();
                let n = client
                    .execute_raw(&statement, params.iter().copied())
                    .await
                    .map_err(sql_error(context("inserting into")))?;
                (ConflictKind::InsertExists, n)
            }
            ChangeKind::Update { .. } | ChangeKind::Delete { .. } => {
                let (statement, params) =
                    self.modify_statement(client, mapping, change, txn).await?;
                let n = client
                    .execute_raw(&statement, params.iter().copied())
                    .await
                    .map_err(sql_error(context("changing a row of")))?;
                let kind = if matches!(change.kind, ChangeKind::Update { .. }) {
                    ConflictKind::UpdateMissing
                } else {
                    ConflictKind::DeleteMissing
                };
                (kind, n)
            }
            _ => return Ok(()),
        };
        if rows > 0 {
            return Ok(());
        }
        self.resolve(client, mapping, change, txn, kind).await
    }

    async fn resolve(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
        change: &Change,
        txn: &TxnMeta,
        kind: ConflictKind,
    ) -> Result<(), ApplyError> {
        let policy = self.policies.for_table(mapping.name());
        let rel = &mapping.relation;
        let (old, new) = match &change.kind {
            ChangeKind::Insert { new, .. } => (None, Some(new)),
            ChangeKind::Update { old, new, .. } => (old.as_ref(), Some(new)),
            ChangeKind::Delete { old, .. } => (Some(old), None),
            _ => (None, None),
        };
        let key = match kind {
            ConflictKind::InsertExists => insert_key(mapping, new),
            _ => row_key(mapping, old, new, change.lsn, txn).ok(),
        };
        let target_row = match &key {
            Some(key) => self.fetch_json(client, mapping, key).await?,
            None => None,
        };
        let json = |row: Option<&RowImage>, key_only| {
            row.and_then(|r| rel.row_json(r, key_only).ok())
                .map(|v| v.to_string())
        };
        let source_row = json(new.or(old.map(OldRow::image)), false);
        let key_json = json(new.or(old.map(OldRow::image)), true);
        let resolution = match (policy, kind) {
            (ConflictPolicy::Error, _) => "error: teal stopped",
            (ConflictPolicy::TargetWins, _) => "skipped: kept green's row",
            (ConflictPolicy::SourceWins, ConflictKind::DeleteMissing) => {
                "skipped: row already absent"
            }
            (ConflictPolicy::SourceWins, ConflictKind::InsertExists) => {
                self.overwrite(client, mapping, change, txn, key.as_ref())
                    .await?;
                "applied: updated green's row to the source row"
            }
            (ConflictPolicy::SourceWins, ConflictKind::UpdateMissing) => {
                let Some(new) = new else {
                    return Ok(());
                };
                if new.values().any(|v| matches!(v, Value::UnchangedToast)) {
                    "skipped: row missing and blue did not send its unchanged TOAST values"
                } else {
                    let statement = self.insert_statement(client, mapping, false).await?;
                    let params: Vec<Param<'_>> =
                        new.values().filter_map(Param::from_value).collect();
                    client
                        .execute_raw(&statement, params.iter().copied())
                        .await
                        .map_err(sql_error(format!(
                            "inserting the missing row into {}",
                            mapping.name()
                        )))?;
                    "applied: inserted the source row"
                }
            }
        };
        let report = ConflictReport {
            slot: self.slot.clone(),
            table: mapping.name().clone(),
            kind,
            policy,
            key: key_json,
            source_row,
            target_row,
            commit_lsn: txn.commit_lsn,
            change_lsn: change.lsn,
            xid: txn.xid,
            resolution: resolution.to_owned(),
        };
        if policy == ConflictPolicy::Error {
            return Err(ApplyError::Conflict(Box::new(report)));
        }
        self.conflicts += 1;
        tracing::warn!(table = %report.table, kind = %kind, policy = %policy, lsn = %change.lsn, "conflict resolved");
        log_conflict(client, &self.store, &report).await
    }

    /// source-wins on an existing row: set every column blue sent.
    async fn overwrite(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
        change: &Change,
        txn: &TxnMeta,
        key: Option<&RowKey<'_>>,
    ) -> Result<(), ApplyError> {
        let (ChangeKind::Insert { new, .. }, Some(key)) = (&change.kind, key) else {
            return Err(ApplyError::Unresolvable {
                table: mapping.name().clone(),
                lsn: change.lsn,
                commit_lsn: txn.commit_lsn,
                reason: "green's conflicting row cannot be identified (no key)".into(),
            });
        };
        let set: Vec<usize> = (0..mapping.columns.len()).collect();
        let shape = key.shape(&set);
        let statement = self
            .statement(client, mapping, Kind::Update, shape, || {
                sql::update(
                    &mapping.table,
                    &mapping.set_columns(&set),
                    &key.columns(mapping),
                    key.one_row,
                    mapping.noop_column(),
                )
            })
            .await?;
        let mut params: Vec<Param<'_>> = new.values().filter_map(Param::from_value).collect();
        params.extend(key.params.iter().copied());
        let n = client
            .execute_raw(&statement, params.iter().copied())
            .await
            .map_err(sql_error(format!(
                "overwriting a row of {}",
                mapping.name()
            )))?;
        if n == 0 {
            return Err(ApplyError::Unresolvable {
                table: mapping.name().clone(),
                lsn: change.lsn,
                commit_lsn: txn.commit_lsn,
                reason: "the insert conflicts with green on a unique index other than the key"
                    .into(),
            });
        }
        Ok(())
    }

    async fn fetch_json(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
        key: &RowKey<'_>,
    ) -> Result<Option<String>, ApplyError> {
        let shape = key.shape(&[]);
        let statement = self
            .statement(client, mapping, Kind::SelectJson, shape, || {
                sql::select_json(&mapping.table, &key.columns(mapping))
            })
            .await?;
        let rows = client
            .query_raw(&statement, key.params.iter().copied())
            .await
            .map_err(sql_error(format!(
                "reading green's row of {}",
                mapping.name()
            )))?;
        futures_util::pin_mut!(rows);
        match rows.next().await {
            Some(row) => Ok(row
                .map_err(sql_error(format!(
                    "reading green's row of {}",
                    mapping.name()
                )))?
                .get::<_, Option<String>>(0)),
            None => Ok(None),
        }
    }
}

/// Writes a conflict row (in whatever transaction is open on `client`).
pub(crate) async fn log_conflict(
    client: &Client,
    store: &Store,
    r: &ConflictReport,
) -> Result<(), ApplyError> {
    client
        .execute(
            &store.conflict_insert(),
            &[
                &r.slot,
                &r.table.to_string(),
                &r.kind.operation(),
                &r.kind.as_str(),
                &r.key,
                &r.source_row,
                &r.target_row,
                &r.commit_lsn.to_string(),
                &r.change_lsn.to_string(),
                &i64::from(r.xid.0),
                &r.policy.as_str(),
                &r.resolution,
            ],
        )
        .await
        .map(drop)
        .map_err(sql_error(format!("logging a conflict on {}", r.table)))
}
