//! Indexes built after the copy. Inserting every copied row into every
//! index of its table costs about as much as the copy itself (a btree
//! descent per row, and pages split half-full where parallel chunks insert
//! key ranges side by side); one sorted build per index once the table is
//! full costs a fraction of that. So, before copying into an empty green
//! table, `teal sync` drops the indexes it can build again exactly and
//! records how, in the same transaction:
//!
//! ```text
//! plan tx:  INSERT <schema>.sync_indexes (statements) ; DROP INDEX / DROP CONSTRAINT
//! copy:     chunks ... (no index maintenance)
//! last chunk of the table committed ──▶ per index, one tx:
//!           CREATE INDEX / ADD CONSTRAINT, REPLICA IDENTITY, CLUSTER ON, comments ;
//!           DELETE <schema>.sync_indexes row
//! ```
//!
//! An index stays in place (maintained during the copy) when something
//! depends on it (a foreign key referencing it, a view grouping by its
//! primary key; not what the constraint makes itself, such as a deferrable
//! unique constraint's recheck trigger), when teal's role does not own the table, when the table is
//! partitioned or a partition (its indexes are tied to the parent's), or
//! when the index has per-column statistics targets. A killed sync leaves
//! the definitions on green; the next `teal sync` builds them once their
//! tables are copied. `--keep-indexes` keeps every index in place.

use tokio_postgres::{Client, GenericClient};

use crate::store::Store;

use super::SyncError;

/// The deferrable indexes of table `$1` (quoted name) on green: name, the
/// statement that drops it, the statements that build it again.
const DEFERRABLE: &str = "
SELECT quote_ident(n.nspname) || '.' || quote_ident(ic.relname),
       CASE WHEN con.oid IS NULL THEN format('DROP INDEX %I.%I', n.nspname, ic.relname)
            ELSE format('ALTER TABLE %s DROP CONSTRAINT %I', $1::text, con.conname) END,
       concat_ws(E';\\n',
         CASE WHEN ic.reltablespace <> 0 THEN format('SET LOCAL default_tablespace = %I', ts.spcname) END,
         CASE WHEN con.oid IS NULL THEN pg_get_indexdef(i.indexrelid)
              ELSE format('ALTER TABLE %s ADD CONSTRAINT %I %s', $1::text, con.conname, pg_get_constraintdef(con.oid)) END,
         CASE WHEN i.indisreplident
              THEN format('ALTER TABLE %s REPLICA IDENTITY USING INDEX %I', $1::text, ic.relname) END,
         CASE WHEN i.indisclustered THEN format('ALTER TABLE %s CLUSTER ON %I', $1::text, ic.relname) END,
         CASE WHEN obj_description(i.indexrelid, 'pg_class') IS NOT NULL
              THEN format('COMMENT ON INDEX %I.%I IS %L', n.nspname, ic.relname,
                          obj_description(i.indexrelid, 'pg_class')) END,
         CASE WHEN obj_description(con.oid, 'pg_constraint') IS NOT NULL
              THEN format('COMMENT ON CONSTRAINT %I ON %s IS %L', con.conname, $1::text,
                          obj_description(con.oid, 'pg_constraint')) END)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_class t ON t.oid = i.indrelid
LEFT JOIN pg_tablespace ts ON ts.oid = ic.reltablespace
LEFT JOIN pg_constraint con
       ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x')
WHERE i.indrelid = $1::text::regclass
  AND t.relkind = 'r' AND NOT t.relispartition
  AND pg_has_role(t.relowner, 'USAGE')
  AND i.indisvalid AND i.indisready AND i.indislive
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE ((d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indexrelid)
                         OR (d.refclassid = 'pg_constraint'::regclass AND d.refobjid = con.oid))
                    AND d.deptype <> 'i'
                    AND NOT (d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid))
  AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = i.indexrelid AND COALESCE(a.attstattarget, -1) >= 0)
ORDER BY i.indisprimary DESC, ic.relname";

/// Drops the deferrable indexes of `tables` (quoted names of empty green
/// tables) and records them, in `tx` (the transaction recording the sync
/// plan). Returns how many were dropped.
pub async fn defer(
    tx: &impl GenericClient,
    store: &Store,
    slot: &str,
    tables: &[String],
) -> Result<usize, SyncError> {
    let record = tx
        .prepare(&format!(
            "INSERT INTO {} (index_name, table_name, slot, position, statements) VALUES ($1, $2, $3, $4, $5)",
            store.sync_indexes_table()
        ))
        .await
        .map_err(SyncError::green("preparing the index records"))?;
    let mut dropped = 0;
    for table in tables {
        let found = tx
            .query(DEFERRABLE, &[table])
            .await
            .map_err(SyncError::green(format!("reading the indexes of {table}")))?;
        for (position, row) in found.iter().enumerate() {
            let (name, drop, statements): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            tx.execute(
                &record,
                &[&name, table, &slot, &(position as i32), &statements],
            )
            .await
            .map_err(SyncError::green(format!("recording index {name}")))?;
            tx.batch_execute(&drop)
                .await
                .map_err(SyncError::green(format!(
                    "dropping index {name} of {table} until its rows are copied"
                )))?;
            tracing::debug!(table = %table, index = %name, "index dropped until the table is copied");
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// Builds every recorded index of `table` on green, each in one transaction
/// with the removal of its record (one another process built meanwhile is
/// skipped). Returns how many this call built.
pub async fn build(green: &mut Client, store: &Store, table: &str) -> Result<usize, SyncError> {
    let records = store.sync_indexes_table();
    let pending = green
        .query(
            &format!(
                "SELECT index_name FROM {records} WHERE table_name = $1 ORDER BY position, index_name"
            ),
            &[&table],
        )
        .await
        .map_err(SyncError::green(format!(
            "reading the indexes of {table} to build"
        )))?;
    let mut built = 0;
    for row in pending {
        let name: String = row.get(0);
        let started = std::time::Instant::now();
        let tx = green
            .transaction()
            .await
            .map_err(SyncError::green("starting a transaction"))?;
        let Some(record) = tx
            .query_opt(
                &format!("SELECT statements FROM {records} WHERE index_name = $1 FOR UPDATE"),
                &[&name],
            )
            .await
            .map_err(SyncError::green(format!(
                "locking the record of index {name}"
            )))?
        else {
            continue;
        };
        let statements: String = record.get(0);
        tracing::info!(table = %table, index = %name, "building index after the copy");
        // A sorted build: give it room unless green's setting is larger.
        tx.batch_execute(
            "SELECT set_config('maintenance_work_mem', '256MB', true) \
             WHERE pg_size_bytes(current_setting('maintenance_work_mem')) < 256 * 1024 * 1024",
        )
        .await
        .map_err(SyncError::green("setting maintenance_work_mem"))?;
        tx.batch_execute(&statements)
            .await
            .map_err(|source| SyncError::IndexBuild {
                table: table.to_owned(),
                index: name.clone(),
                records: records.clone(),
                reason: crate::apply::describe(&source),
                source,
            })?;
        tx.execute(
            &format!("DELETE FROM {records} WHERE index_name = $1"),
            &[&name],
        )
        .await
        .map_err(SyncError::green(format!(
            "clearing the record of index {name}"
        )))?;
        tx.commit()
            .await
            .map_err(SyncError::green(format!("committing index {name}")))?;
        tracing::info!(
            table = %table,
            index = %name,
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "index built"
        );
        built += 1;
    }
    Ok(built)
}
