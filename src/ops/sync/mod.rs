//! `teal sync`: copy the published tables from a snapshot consistent with
//! the slot's start, then stream from that point: no gap, no overlap.
//!
//! ```text
//! green: migrate, read sync state ──▶ blue: plan tables, check green
//!   ──▶ CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')   [connection kept open]
//!   ──▶ green: sync row + chunk rows + the indexes dropped until their table is copied
//!   ──▶ N workers: blue  BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT
//!                  green BEGIN; COPY FROM STDIN ◀── COPY (SELECT .. ctid range) TO STDOUT
//!                        UPDATE sync_chunks (copied); COMMIT      one chunk at a time
//!                  after a table's last chunk: build its indexes   (indexes.rs)
//!   ──▶ sequences ──▶ green: sync finished + progress = consistent point
//!   ──▶ teal stream from the consistent point
//! ```
//!
//! Every copied row is in the snapshot, and the slot streams exactly the
//! transactions that commit after it, so each change lands once.
//!
//! The snapshot is exported by the connection that created the slot, which
//! `teal sync` keeps in a separate process (`holder`): when `teal sync` is
//! killed, the snapshot lives on (for `--snapshot-hold`), and the next
//! `teal sync` imports the same snapshot and copies only the chunks green
//! lacks. When the snapshot is gone too, the copy starts over: the tables it
//! had copied are emptied, the slot is dropped and created again.

mod config;
mod copy;
mod copy_audit;
mod display;
mod holder;
mod indexes;
mod plan;

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::apply::ApplyStats;
use crate::lsn::Lsn;
use crate::monitor::{Monitor, RunState};
use crate::ops::audit::host_name;
use crate::ops::stream;
use crate::session::connect_plain;
use std::sync::atomic::AtomicU64;

use crate::progress::{CopyStatus, TableCopy};
use holder::{Held, Holder};

use crate::source::ReplicationClient;
use crate::store::Store;

pub use config::{CopySummary, OnExistingData, SyncConfig, SyncError};
use copy_audit::SyncAudit;
pub use holder::{HolderCommand, hold};
pub use plan::{Identity, TablePlan};

/// Copies (unless green already has the copy) and then streams until
/// `shutdown`. `out` receives the progress display and the table notes.
pub async fn run(
    config: SyncConfig,
    shutdown: CancellationToken,
    monitor: Arc<Monitor>,
) -> Result<(CopySummary, Arc<ApplyStats>), SyncError> {
    let stopped = shutdown.child_token();
    let _stop_server = stopped.clone().drop_guard();
    if let Some(addr) = config.stream.monitor.metrics_addr {
        crate::http::serve(
            addr,
            Arc::clone(&monitor),
            config.stream.monitor.metrics_token.clone(),
            stopped.clone(),
        )
        .await?;
    }
    let span = tracing::info_span!("run", correlation_id = %monitor.correlation_id);
    let summary = copy(&config, &shutdown, &monitor)
        .instrument(span)
        .await
        .inspect_err(|e| {
            monitor.record_error(crate::error::Report(e).to_string());
            monitor.set_state(RunState::Failed);
        })?;
    if config.copy_only || shutdown.is_cancelled() {
        monitor.set_state(RunState::Stopping);
        return Ok((summary, Arc::clone(&monitor.apply)));
    }
    let mut stream_config = config.stream.clone();
    // The endpoint is up already; the slot exists.
    stream_config.monitor.metrics_addr = None;
    stream_config.source.create_slot = false;
    let stats = stream::run_monitored(stream_config, shutdown, monitor).await?;
    Ok((summary, stats))
}

/// The copy phase: everything before streaming.
pub async fn copy(
    config: &SyncConfig,
    shutdown: &CancellationToken,
    monitor: &Arc<Monitor>,
) -> Result<CopySummary, SyncError> {
    monitor.set_state(RunState::Starting);
    let source = &config.stream.source;
    let apply = &config.stream.apply;
    let store = &apply.store;
    let slot = &source.slot;
    let mut green = connect_plain(&apply.target, "teal-sync").await?;
    store.migrate(&mut green).await?;
    // One teal sync per slot at a time (held by this session until it ends).
    // Waits a little: the session of a teal sync that just failed or was
    // killed holds the lock until its backend notices the disconnect.
    green
        .batch_execute("SET lock_timeout = '3s'")
        .await
        .map_err(SyncError::green("setting lock_timeout"))?;
    let locked = green
        .execute(
            "SELECT pg_advisory_lock(hashtextextended('teal sync ' || $1, 0))",
            &[&slot],
        )
        .await;
    match locked {
        Ok(_) => {}
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            return Err(SyncError::Setup(format!(
                "another teal sync for slot {slot:?} is running against this green; wait for it or stop it"
            )));
        }
        Err(e) => return Err(SyncError::green("taking the sync lock")(e)),
    }
    green
        .batch_execute("RESET lock_timeout")
        .await
        .map_err(SyncError::green("resetting lock_timeout"))?;
    let mut repl = ReplicationClient::connect(&source.conninfo).await?;
    let existing_slot = repl.check_slot(slot, &source.conninfo.dbname).await?;
    let state = store.sync_state(&green, slot).await?;
    let blue = connect_plain(&source.conninfo, "teal-sync").await?;
    // An interrupted copy whose snapshot is still held resumes with it.
    let mut resume = None;
    match (&existing_slot, state) {
        (Some(_), Some(s)) if s.finished => {
            tracing::info!(slot = %slot, consistent_point = %s.consistent_point, "green holds a finished copy for this slot; streaming");
            repl.close().await;
            return Ok(CopySummary {
                consistent_point: s.consistent_point,
                already_done: true,
                ..CopySummary::default()
            });
        }
        (Some(_), Some(s))
            if match &s.snapshot_name {
                Some(name) => snapshot_importable(&blue, name).await,
                None => false,
            } =>
        {
            tracing::info!(
                slot = %slot,
                copied_chunks = s.copied_chunks,
                chunks = s.chunks,
                "resuming an interrupted copy with its snapshot (still held): copying the chunks not on green yet"
            );
            resume = Some(s);
        }
        (Some(info), Some(s)) => {
            if let Some(pid) = info.active_pid {
                return Err(SyncError::Setup(format!(
                    "slot {slot:?} is in use by process {pid} on blue; stop that teal before running teal sync again"
                )));
            }
            let tables = store.sync_copied_tables(&green, slot).await?;
            tracing::warn!(
                slot = %slot,
                copied_chunks = s.copied_chunks,
                chunks = s.chunks,
                tables = ?tables,
                "an earlier copy was interrupted and its snapshot is gone: copying again from a new one (emptying the tables it had copied)"
            );
            let tx = green
                .transaction()
                .await
                .map_err(SyncError::green("starting a transaction"))?;
            if !tables.is_empty() {
                tx.batch_execute(&format!("TRUNCATE {}", tables.join(", ")))
                    .await
                    .map_err(SyncError::green(
                        "emptying the tables of the interrupted copy",
                    ))?;
            }
            store.sync_forget(&tx, slot).await?;
            tx.commit()
                .await
                .map_err(SyncError::green("clearing the interrupted copy"))?;
            repl.drop_slot(slot).await?;
        }
        (Some(_), None) => {
            return Err(SyncError::Setup(format!(
                "slot {slot:?} already exists on blue, but green ({}) holds no finished copy for it: teal sync cannot know what green is missing. If green already has blue's data, use teal stream; otherwise drop the slot on blue (SELECT pg_drop_replication_slot('{slot}')) and run teal sync again",
                apply.target
            )));
        }
        (None, Some(_)) => {
            tracing::warn!(slot = %slot, "green records a copy for a slot blue no longer has; copying anew");
            store.sync_forget(&green, slot).await?;
        }
        (None, None) => {}
    }
    if resume.is_none() && !source.create_slot {
        return Err(SyncError::Setup(format!(
            "slot {slot:?} does not exist on blue and --no-create-slot was given: teal sync creates the slot together with the snapshot it copies"
        )));
    }

    // Masks fit blue's tables (before anything is copied).
    if let Some(mask) = &config.stream.assembler.mask {
        crate::mask::check_catalog(&blue, mask)
            .await
            .map_err(|e| SyncError::Setup(e.to_string()))?;
    }
    // Plan on blue, check on green.
    let version: i32 = blue
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(SyncError::blue("reading blue's version"))?
        .get(0);
    let mut plans = plan::published_tables(
        &blue,
        &source.publications,
        &config.stream.assembler.tables,
        version,
        config.stream.assembler.mask.as_deref(),
    )
    .await?;
    if plans.is_empty() {
        return Err(SyncError::Setup(format!(
            "the publication(s) {} publish no tables (after --tables/--exclude-tables)",
            source.publications.join(",")
        )));
    }
    let mut with_rows = Vec::new();
    for p in &mut plans {
        if plan::check_green(&green, p).await?.has_rows {
            with_rows.push(p.quoted());
        }
    }
    if resume.is_none() {
        note_identities(&plans);
        apply_on_existing(config.on_existing_data, &green, &mut plans, &with_rows).await?;
    }
    // Largest tables first, so the long chunks start early.
    plans.sort_by_key(|p| std::cmp::Reverse(p.heap_bytes));

    let (holder, held, per_table, copied_before) = match resume {
        Some(s) => {
            repl.close().await;
            let (missing, copied) = store.sync_chunks(&green, slot).await?;
            let mut per_table = vec![Vec::new(); plans.len()];
            for chunk in missing {
                let Some(i) = plans.iter().position(|p| p.quoted() == chunk.table) else {
                    return Err(SyncError::Setup(format!(
                        "the interrupted copy has chunks of {}, which is no longer published (or was excluded): run teal sync with the same tables, or drop the slot and start over",
                        chunk.table
                    )));
                };
                per_table[i].push(chunk);
            }
            let holder = match (s.holder_pid, &s.holder_host) {
                (Some(pid), Some(host)) if *host == host_name() => Holder::Adopted(pid),
                _ => Holder::Gone,
            };
            let held = Held {
                snapshot: s.snapshot_name.clone().unwrap_or_default(),
                consistent_point: s.consistent_point,
                pid: s.holder_pid.unwrap_or(0),
            };
            // A table published since the interrupted run started is not
            // in its snapshot's plan.
            if let Some(new) = plans.iter().enumerate().find(|(i, p)| {
                per_table[*i].is_empty() && !copied.iter().any(|c| c.0 == p.quoted())
            }) {
                return Err(SyncError::Setup(format!(
                    "{} is published now but was not part of the interrupted copy: finish that copy without it (--exclude-tables {}), then add it, or drop the slot and start over",
                    new.1.display(),
                    new.1.display()
                )));
            }
            (holder, held, per_table, copied)
        }
        None => {
            let (holder, held) =
                Holder::create(config.holder.as_ref(), repl, slot, shutdown).await?;
            tracing::info!(slot = %slot, consistent_point = %held.consistent_point, snapshot = %held.snapshot, "created the slot with an exported snapshot");
            let per_table: Vec<_> = plans
                .iter()
                .map(|p| p.chunks(config.chunk_rows, version >= 140000))
                .collect();
            let tx = green
                .transaction()
                .await
                .map_err(SyncError::green("starting a transaction"))?;
            let host = host_name();
            store
                .sync_plan(
                    &tx,
                    slot,
                    held.consistent_point,
                    Some(&held.snapshot),
                    config.holder.as_ref().map(|_| (held.pid, host.as_str())),
                    &per_table.iter().flatten().cloned().collect::<Vec<_>>(),
                )
                .await?;
            if !config.keep_indexes {
                let tables: Vec<String> = plans.iter().map(TablePlan::quoted).collect();
                let dropped = indexes::defer(&tx, store, slot, &tables).await?;
                if dropped > 0 {
                    tracing::info!(
                        indexes = dropped,
                        records = %store.sync_indexes_table(),
                        "green's indexes on the copied tables are built after each table is copied (--keep-indexes keeps them in place); their definitions are kept on green until then"
                    );
                }
            }
            tx.commit()
                .await
                .map_err(SyncError::green("recording the sync plan"))?;
            (holder, held, per_table, Vec::new())
        }
    };

    let progress = Arc::new(CopyStatus::new(
        plans
            .iter()
            .zip(&per_table)
            .map(|(p, chunks)| {
                let before = copied_before.iter().find(|c| c.0 == p.quoted());
                TableCopy {
                    name: p.display(),
                    estimated_bytes: p.heap_bytes,
                    estimated_rows: p.estimated_rows,
                    chunks: chunks.len() as u64 + before.map_or(0, |b| b.2),
                    chunks_done: AtomicU64::new(before.map_or(0, |b| b.2)),
                    rows: AtomicU64::new(before.map_or(0, |b| b.1)),
                    bytes: AtomicU64::new(0),
                }
            })
            .collect(),
    ));
    monitor.set_copy(Arc::clone(&progress));
    monitor.set_state(RunState::Copying);
    let mut audit = SyncAudit::start(store, &green, monitor, config).await;
    let plans = Arc::new(plans);
    let started = Instant::now();
    let display = tokio::spawn(
        display::show(Arc::clone(&progress), shutdown.child_token()).in_current_span(),
    );
    let copied = copy::run_workers(
        copy::Work {
            source: source.conninfo.clone(),
            target: apply.target.clone(),
            timeout: apply.timeout,
            store: store.clone(),
            slot: slot.clone(),
            snapshot: held.snapshot.clone(),
            plans: Arc::clone(&plans),
            chunks: per_table,
            indexes: store.sync_index_tables(&green).await?,
            progress: Arc::clone(&progress),
        },
        config.copy_workers.max(1),
        shutdown,
    )
    .await;
    let result = match copied {
        Ok(true) => {
            // Every worker is done with the snapshot: let it go.
            holder.release().await;
            finish(store, &blue, &green, slot, held.consistent_point, &plans).await?;
            progress.finish();
            Ok(true)
        }
        other => {
            if let Holder::Process(_) | Holder::Adopted(_) = holder {
                tracing::warn!(
                    holder_pid = held.pid,
                    "the snapshot stays held (for the holder's --orphan-timeout): run teal sync again to continue the copy"
                );
            }
            other
        }
    };
    display.abort();
    let _ = display.await;
    let now = progress.snapshot();
    let summary = CopySummary {
        consistent_point: held.consistent_point,
        tables: now.len(),
        chunks: now.iter().map(|t| t.chunks_done).sum(),
        rows: now.iter().map(|t| t.rows).sum(),
        bytes: now.iter().map(|t| t.bytes).sum(),
        already_done: false,
    };
    audit.end(&green, &summary, started, &result).await;
    display::finished(&progress, &summary, started.elapsed(), &result);
    result.map(|_| summary)
}

/// Whether `snapshot` can still be imported on blue (its holder lives).
async fn snapshot_importable(blue: &tokio_postgres::Client, snapshot: &str) -> bool {
    let tried = copy::import_snapshot(blue, snapshot).await;
    let _ = blue.batch_execute("ROLLBACK").await;
    tried.is_ok()
}

/// Logs tables whose updates and deletes green cannot match by key.
fn note_identities(plans: &[TablePlan]) {
    for p in plans {
        match p.identity {
            Identity::Key => {}
            Identity::FullWithoutKey => tracing::warn!(
                table = %p.display(),
                "no primary key (replica identity FULL): each update or delete changes one green row equal to the old row in every column"
            ),
            Identity::None => tracing::warn!(
                table = %p.display(),
                "no primary key or replica identity: blue rejects UPDATE and DELETE on it while it is published; add a primary key or ALTER TABLE ... REPLICA IDENTITY FULL"
            ),
        }
    }
}

/// `--on-existing-data` for the green tables in `with_rows`.
async fn apply_on_existing(
    policy: OnExistingData,
    green: &tokio_postgres::Client,
    plans: &mut Vec<TablePlan>,
    with_rows: &[String],
) -> Result<(), SyncError> {
    if with_rows.is_empty() {
        return Ok(());
    }
    match policy {
        OnExistingData::Error => Err(SyncError::Setup(format!(
            "green already holds rows in {}: empty them, or run with --on-existing-data truncate (empties them) or skip-table (copies nothing into them)",
            with_rows.join(", ")
        ))),
        OnExistingData::Truncate => {
            tracing::info!(tables = ?with_rows, "emptying green tables before the copy");
            green
                .batch_execute(&format!("TRUNCATE {}", with_rows.join(", ")))
                .await
                .map_err(SyncError::green("emptying tables before the copy"))
        }
        OnExistingData::SkipTable => {
            tracing::warn!(tables = ?with_rows, "green already holds rows: not copying these tables (their changes are still streamed)");
            plans.retain(|p| !with_rows.iter().any(|t| *t == p.quoted()));
            Ok(())
        }
    }
}

/// Sequences, then the copy marked finished with green's progress at the
/// consistent point.
async fn finish(
    store: &Store,
    blue: &tokio_postgres::Client,
    green: &tokio_postgres::Client,
    slot: &str,
    consistent_point: Lsn,
    plans: &[TablePlan],
) -> Result<(), SyncError> {
    copy_sequences(blue, green, plans).await?;
    let unbuilt: Vec<String> = store
        .sync_index_tables(green)
        .await?
        .into_iter()
        .filter(|t| plans.iter().any(|p| p.quoted() == *t))
        .collect();
    if !unbuilt.is_empty() {
        return Err(SyncError::Setup(format!(
            "the copy is done but indexes of {} recorded in {} are not built yet (a bug: please report it with the log); run teal sync again to build them",
            unbuilt.join(", "),
            store.sync_indexes_table()
        )));
    }
    green
        .batch_execute("BEGIN")
        .await
        .map_err(SyncError::green("starting a transaction"))?;
    store.sync_finish(green, slot, consistent_point).await?;
    green
        .batch_execute("COMMIT")
        .await
        .map_err(SyncError::green("marking the copy finished"))
}

/// Sets green's sequences owned by the copied tables to blue's values
/// (read after the copy, so they are at least as far as every copied row).
async fn copy_sequences(
    blue: &tokio_postgres::Client,
    green: &tokio_postgres::Client,
    plans: &[TablePlan],
) -> Result<(), SyncError> {
    for t in plans {
        let quoted = t.quoted();
        let owned = plan::owned_sequences(blue, &quoted)
            .await
            .map_err(SyncError::blue(format!(
                "finding the sequences of {}",
                t.display()
            )))?;
        for (column, seq) in owned {
            let row = blue
                .query_one(&format!("SELECT last_value, is_called FROM {seq}"), &[])
                .await
                .map_err(SyncError::blue(format!("reading sequence {seq}")))?;
            let (value, called): (i64, bool) = (row.get(0), row.get(1));
            let green_seq: Option<String> = green
                .query_one("SELECT pg_get_serial_sequence($1, $2)", &[&quoted, &column])
                .await
                .map_err(SyncError::green(format!(
                    "finding the sequence of {}.{column}",
                    t.display()
                )))?
                .get(0);
            let Some(green_seq) = green_seq else {
                tracing::warn!(table = %t.display(), column = %column, "blue's column has a sequence, green's has none: not set");
                continue;
            };
            green
                .execute(
                    "SELECT setval($1::text::regclass, $2, $3)",
                    &[&green_seq, &value, &called],
                )
                .await
                .map_err(SyncError::green(format!("setting sequence {green_seq}")))?;
            tracing::info!(sequence = %green_seq, value, "set green's sequence to blue's value");
        }
    }
    Ok(())
}
