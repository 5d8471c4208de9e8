//! `teal repair`: makes green's rows of the keys a verify report names
//! equal to blue's, consistently with the running stream.
//!
//! ```text
//! report (teal verify --report) ──keys per table──▶ pause the stream exactly at a new
//!   point L of blue's (as verify does) ──▶ for each key: blue's row in the snapshot at L
//!   ──▶ one green transaction (replica role): delete green's row, insert blue's
//!   (when blue has one) ──▶ repairs rows, COMMIT ──▶ the stream goes on past L
//! ```
//!
//! Green holds blue's state at L for those keys when the stream goes on,
//! and the stream then applies exactly what blue committed after L: a
//! repaired row never overwrites a newer change, and a newer change is
//! never lost. Rows travel as JSON (`row_to_json` on blue,
//! `json_populate_record` on green, both in canonical formats). A table
//! without a primary key cannot be repaired row by row (its differences
//! have no key): it is named and left alone. The stream waits for the whole
//! repair (at most its hold limit, 30 s): repair at most a few thousand
//! keys per run.

use serde::Serialize;
use tokio_postgres::Client;

use crate::event::QualifiedName;
use crate::lsn::Lsn;
use crate::session::connect_plain;
use crate::store::Store;

use super::data::{self, Held};
use super::{VerifyConfig, VerifyError};

/// What repair did (or, with `--dry-run`, would do) to one key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyRepair {
    /// `schema.table`.
    pub table: String,
    /// The primary key.
    pub key: serde_json::Value,
    /// inserted, updated, deleted or unchanged.
    pub action: &'static str,
}

/// The result of a repair run.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// Blue's point the rows were read at.
    pub lsn: String,
    /// Nothing was written.
    pub dry_run: bool,
    /// One entry per key.
    pub keys: Vec<KeyRepair>,
    /// Tables whose differences have no key (not repaired).
    pub skipped_tables: Vec<String>,
}

/// Keys to repair, per table (`schema.table`).
pub type TableKeys = Vec<(String, Vec<serde_json::Value>)>;

/// The keys of a verify report (`--report FILE` of `teal verify`), per
/// table; tables with keyless differences apart.
pub fn keys_of(report: &serde_json::Value) -> Result<(TableKeys, Vec<String>), String> {
    let tables = report["tables"]
        .as_array()
        .ok_or("the report has no \"tables\" (is it teal verify's --report?)")?;
    let mut keyed = Vec::new();
    let mut keyless = Vec::new();
    for t in tables {
        let name = t["table"]
            .as_str()
            .ok_or("a table without \"table\"")?
            .to_owned();
        let differences = t["differences"].as_array().cloned().unwrap_or_default();
        if differences.is_empty() {
            continue;
        }
        if t["masked"] == true {
            return Err(format!(
                "{name} is masked (--mask): repair would copy blue's unmasked rows to green; copy it again with teal sync --tables {name} --on-existing-data truncate (which masks)"
            ));
        }
        let keys: Vec<serde_json::Value> = differences
            .iter()
            .map(|d| d["key"].clone())
            .filter(|k| k.is_object())
            .collect();
        if keys.len() < differences.len() {
            keyless.push(name.clone());
        }
        if !keys.is_empty() {
            keyed.push((name, keys));
        }
    }
    Ok((keyed, keyless))
}

fn parse_table(name: &str) -> QualifiedName {
    match name.split_once('.') {
        Some((s, n)) => QualifiedName {
            namespace: s.into(),
            name: n.into(),
        },
        None => QualifiedName {
            namespace: "public".into(),
            name: name.into(),
        },
    }
}

/// Repairs `keys` (see the module documentation).
pub async fn run(
    config: &VerifyConfig,
    keys: &[(String, Vec<serde_json::Value>)],
    skipped_tables: Vec<String>,
    dry_run: bool,
) -> Result<RepairReport, VerifyError> {
    let connect = |conninfo, side| async move {
        connect_plain(conninfo, "teal repair")
            .await
            .map_err(|source| VerifyError::Connect { side, source })
    };
    let blue = connect(&config.source, "blue").await?;
    let green = connect(&config.target, "green").await?;
    let writer = connect(&config.target, "green").await?;
    let started = std::time::Instant::now();
    let mut record = crate::ops::audit::running(
        "repair",
        &crate::monitor::new_id(),
        &config.slot,
        &config.source,
        &config.target,
        serde_json::json!({}),
    );
    let held = data::hold_at_point(config, &blue, &green).await?;
    let result = repair_at(config, &held, &writer, keys, dry_run, &record.operation_id).await;
    // The stream goes on whatever happened (the writes are committed or not).
    let holder = held.release(&green).await?;
    drop(holder);
    let done = result?;
    let report = RepairReport {
        lsn: done.0.to_string(),
        dry_run,
        keys: done.1,
        skipped_tables,
    };
    if !dry_run {
        crate::ops::audit::finish(
            &mut record,
            "succeeded",
            started,
            serde_json::json!({
                "lsn": report.lsn,
                "keys": report.keys.len(),
                "skipped_tables": report.skipped_tables,
            }),
        );
        let store = Store::new(config.schema.clone());
        store.audit(&green, &record).await.map_err(|e| {
            VerifyError::Blue(format!("green: writing the repair's audit row: {e}"))
        })?;
    }
    Ok(report)
}

/// Reads blue's rows at the held point and writes them on green in one
/// transaction (rolled back for a dry run).
async fn repair_at(
    config: &VerifyConfig,
    held: &Held,
    writer: &Client,
    keys: &[(String, Vec<serde_json::Value>)],
    dry_run: bool,
    operation_id: &str,
) -> Result<(Lsn, Vec<KeyRepair>), VerifyError> {
    let blue = connect_plain(&config.source, "teal repair")
        .await
        .map_err(|source| VerifyError::Connect {
            side: "blue",
            source,
        })?;
    data::in_snapshot(&blue, &held.blue_snapshot)
        .await
        .map_err(|e| VerifyError::Blue(format!("importing blue's snapshot: {e}")))?;
    let g = |context: &'static str| move |source| VerifyError::Green { context, source };
    writer
        .batch_execute(&crate::config::canonical_format_statements())
        .await
        .map_err(g("setting green's formats"))?;
    writer
        .batch_execute("BEGIN; SET LOCAL session_replication_role = replica")
        .await
        .map_err(g("opening the repair transaction"))?;
    let store = Store::new(config.schema.clone());
    let mut done = Vec::new();
    for (name, table_keys) in keys {
        let table = parse_table(name);
        let q = table.quoted();
        let (cols, pk) = data::columns_and_key(&blue, &table)
            .await
            .map_err(|e| VerifyError::Blue(format!("reading {name}'s columns and key: {e}")))?;
        if pk.is_empty() {
            continue;
        }
        let by_key = data::by_key(&table, &pk);
        let read = format!("SELECT row_to_json(t.*)::text FROM {q} t WHERE {by_key}");
        let green_has = format!("SELECT count(*) FROM {q} t WHERE {by_key}");
        let delete = format!("DELETE FROM {q} t WHERE {by_key}");
        let column_list = cols
            .iter()
            .map(|c| crate::event::quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let insert = format!(
            "INSERT INTO {q} ({column_list}) OVERRIDING SYSTEM VALUE SELECT {column_list} FROM pg_catalog.json_populate_record(NULL::{q}, $1::text::json)"
        );
        let record_repair = format!(
            "INSERT INTO {}.repairs (operation_id, slot, table_name, key, action, lsn) \
             VALUES ($1::text::uuid, $2, $3, $4::text::jsonb, $5, $6::text::pg_lsn)",
            store.quoted()
        );
        for key in table_keys {
            let key_text = key.to_string();
            let blue_row: Option<String> = blue
                .query_opt(&read, &[&key_text])
                .await
                .map_err(|e| VerifyError::Blue(format!("reading a row of {name}: {e}")))?
                .map(|r| r.get(0));
            let on_green: i64 = writer
                .query_one(&green_has, &[&key_text])
                .await
                .map_err(g("reading green's row"))?
                .get(0);
            let action = match (on_green > 0, &blue_row) {
                (true, Some(_)) => "updated",
                (false, Some(_)) => "inserted",
                (true, None) => "deleted",
                (false, None) => "unchanged",
            };
            if !dry_run {
                writer
                    .execute(&delete, &[&key_text])
                    .await
                    .map_err(g("deleting green's row"))?;
                if let Some(row) = &blue_row {
                    writer
                        .execute(&insert, &[row])
                        .await
                        .map_err(g("writing blue's row on green"))?;
                }
                writer
                    .execute(
                        &record_repair,
                        &[
                            &operation_id.to_owned(),
                            &config.slot,
                            name,
                            &key_text,
                            &action,
                            &held.lsn.to_string(),
                        ],
                    )
                    .await
                    .map_err(g("recording the repair"))?;
            }
            done.push(KeyRepair {
                table: name.clone(),
                key: key.clone(),
                action,
            });
        }
    }
    writer
        .batch_execute(if dry_run { "ROLLBACK" } else { "COMMIT" })
        .await
        .map_err(g("committing the repair"))?;
    Ok((held.lsn, done))
}
