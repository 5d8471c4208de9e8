//! The copy workers: each imports the exported snapshot on its own blue
//! session and pipes chunks into green, one green transaction per chunk
//! (its rows and its `copied_at` together).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use futures_util::{SinkExt, TryStreamExt};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ConnInfo;
use crate::progress::{CopyStatus, lock};
use crate::session::connect_canonical;
use crate::store::{Store, SyncChunk};

use super::plan::TablePlan;
use super::{SyncError, indexes};

/// Bytes gathered into one CopyData message for green.
const COPY_BUFFER: usize = 256 * 1024;

/// What the workers share.
pub struct Work {
    /// Blue.
    pub source: ConnInfo,
    /// Green.
    pub target: ConnInfo,
    /// `--replication-timeout`, for green's copy sessions.
    pub timeout: Option<std::time::Duration>,
    /// teal's schema on green.
    pub store: Store,
    /// The slot (the chunk rows' key).
    pub slot: String,
    /// The exported snapshot.
    pub snapshot: String,
    /// The tables, in the order of `chunks`.
    pub plans: Arc<Vec<TablePlan>>,
    /// Each table's chunks.
    pub chunks: Vec<Vec<SyncChunk>>,
    /// Green tables with indexes to build once their chunks are copied.
    pub indexes: Vec<String>,
    /// Counters.
    pub progress: Arc<CopyStatus>,
}

/// What a worker does next.
enum Job {
    /// Copy a chunk of table `.0`.
    Chunk(usize, SyncChunk),
    /// Build the recorded indexes of a table (quoted name) whose chunks
    /// were all copied before this run.
    Indexes(String),
}

type Queue = std::sync::Mutex<VecDeque<Job>>;

/// Runs `workers` workers over every chunk (and builds each table's
/// recorded indexes after its last chunk). `Ok(true)` when all are on
/// green, `Ok(false)` when `shutdown` stopped them first (open chunks and
/// index builds are rolled back).
pub async fn run_workers(
    work: Work,
    workers: usize,
    shutdown: &CancellationToken,
) -> Result<bool, SyncError> {
    // Tables copied before this run whose indexes are not built yet go first.
    let mut queue: VecDeque<Job> = work
        .indexes
        .iter()
        .filter(|t| {
            !work
                .plans
                .iter()
                .zip(&work.chunks)
                .any(|(p, chunks)| p.quoted() == **t && !chunks.is_empty())
        })
        .map(|t| Job::Indexes(t.clone()))
        .collect();
    queue.extend(
        work.chunks
            .iter()
            .enumerate()
            .flat_map(|(t, chunks)| chunks.iter().cloned().map(move |c| Job::Chunk(t, c))),
    );
    let remaining: Vec<AtomicUsize> = work
        .chunks
        .iter()
        .map(|c| AtomicUsize::new(c.len()))
        .collect();
    let workers = workers.min(queue.len()).max(1);
    let queue = Arc::new(std::sync::Mutex::new(queue));
    let work = Arc::new((work, remaining));
    let stop = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..workers {
        let (work, queue, stop) = (Arc::clone(&work), Arc::clone(&queue), stop.clone());
        tasks.spawn(
            async move { worker(id, &work.0, &work.1, &queue, &stop).await }
                .instrument(tracing::info_span!("copy_worker", id)),
        );
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(SyncError::Setup(format!(
                "a copy worker panicked (a bug: please report it with the log): {e}"
            )))
        });
        if let Err(e) = result {
            // One failure stops the others: their open chunks roll back.
            stop.cancel();
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(!shutdown.is_cancelled() && lock(&queue).is_empty())
}

/// Starts a read-only transaction that sees exactly `snapshot`.
pub(super) async fn import_snapshot(
    blue: &Client,
    snapshot: &str,
) -> Result<(), tokio_postgres::Error> {
    blue.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
        crate::source::quote_sql_literal(snapshot)
    ))
    .await
}

async fn worker(
    id: usize,
    work: &Work,
    remaining: &[AtomicUsize],
    queue: &Queue,
    stop: &CancellationToken,
) -> Result<(), SyncError> {
    // Text copies read back unchanged: blue prints the canonical formats
    // green's sessions parse.
    let blue = connect_canonical(&work.source, "teal-sync-copy").await?;
    import_snapshot(&blue, &work.snapshot)
        .await
        .map_err(SyncError::blue("importing the exported snapshot"))?;
    let mut green =
        crate::apply::green_session(&work.target, "teal-sync-copy", work.timeout).await?;
    let done = green
        .prepare(&work.store.sync_chunk_done())
        .await
        .map_err(SyncError::green("preparing the chunk record"))?;
    tracing::debug!(id, "copy worker ready");
    loop {
        let next = lock(queue).pop_front();
        let (t, chunk) = match next {
            None => break,
            Some(Job::Chunk(t, chunk)) => (t, chunk),
            Some(Job::Indexes(table)) => {
                if !build_indexes(&mut green, work, table, queue, stop).await? {
                    return Ok(());
                }
                continue;
            }
        };
        let plan = &work.plans[t];
        let copied = tokio::select! {
            r = copy_chunk(&blue, &mut green, &done, work, t, plan, &chunk) => r?,
            () = stop.cancelled() => {
                // Dropping the chunk's transaction rolls it back.
                lock(queue).push_front(Job::Chunk(t, chunk));
                return Ok(());
            }
        };
        tracing::debug!(table = %plan.display(), chunk = chunk.chunk, rows = copied, "chunk copied");
        if remaining[t].fetch_sub(1, Ordering::AcqRel) == 1
            && work.indexes.contains(&plan.quoted())
            && !build_indexes(&mut green, work, plan.quoted(), queue, stop).await?
        {
            return Ok(());
        }
    }
    blue.batch_execute("COMMIT")
        .await
        .map_err(SyncError::blue("ending the snapshot transaction"))?;
    Ok(())
}

/// Builds `table`'s recorded indexes: `Ok(false)` when `stop` interrupted
/// (the open build rolls back and goes back on the queue, so the copy is
/// not finished).
async fn build_indexes(
    green: &mut Client,
    work: &Work,
    table: String,
    queue: &Queue,
    stop: &CancellationToken,
) -> Result<bool, SyncError> {
    tokio::select! {
        r = indexes::build(green, &work.store, &table) => r.map(|_| true),
        () = stop.cancelled() => {
            lock(queue).push_front(Job::Indexes(table));
            Ok(false)
        }
    }
}

/// Pipes one chunk blue -> green and records it, in one green transaction.
async fn copy_chunk(
    blue: &Client,
    green: &mut Client,
    done: &tokio_postgres::Statement,
    work: &Work,
    t: usize,
    plan: &TablePlan,
    chunk: &SyncChunk,
) -> Result<u64, SyncError> {
    let failed = |source| SyncError::Copy {
        table: plan.display(),
        chunk: chunk.chunk,
        source_relation: chunk.source.clone(),
        source,
    };
    let counters = &work.progress.tables[t];
    let tx = green.transaction().await.map_err(failed)?;
    let sink = tx.copy_in(&plan.copy_in()).await.map_err(failed)?;
    let mut sink = std::pin::pin!(sink);
    let rows_out = blue.copy_out(&plan.copy_out(chunk)).await.map_err(failed)?;
    // Blue sends one CopyData message per row; green gets them gathered
    // into buffers of COPY_BUFFER bytes (COPY FROM takes any split), which
    // saves a message, a wakeup and a send per row on both sides.
    let mut rows_out = std::pin::pin!(rows_out);
    let mut buffer = BytesMut::with_capacity(COPY_BUFFER + 8192);
    let mut bytes = 0u64;
    loop {
        let next = rows_out.as_mut().try_next().await.map_err(failed)?;
        let last = next.is_none();
        if let Some(row) = next {
            match &plan.mask {
                // Masked before it leaves this process.
                Some(mask) => {
                    let mut masked = Vec::with_capacity(row.len() + 64);
                    mask.mask_row(&row, &mut masked)
                        .map_err(|e| SyncError::Setup(e.to_string()))?;
                    buffer.extend_from_slice(&masked);
                }
                None => buffer.extend_from_slice(&row),
            }
        }
        if buffer.len() >= COPY_BUFFER || (last && !buffer.is_empty()) {
            let n = buffer.len() as u64;
            sink.send(buffer.split().freeze()).await.map_err(failed)?;
            bytes += n;
            counters.bytes.fetch_add(n, Ordering::Relaxed);
        }
        if last {
            break;
        }
    }
    let rows = sink.as_mut().finish().await.map_err(failed)?;
    let recorded = tx
        .execute(
            done,
            &[
                &work.slot,
                &chunk.table,
                &chunk.chunk,
                &(rows as i64),
                &(bytes as i64),
            ],
        )
        .await
        .map_err(failed)?;
    if recorded != 1 {
        return Err(SyncError::Setup(format!(
            "chunk {} of {} was recorded as copied by someone else meanwhile: is another teal sync running for slot {:?}?",
            chunk.chunk,
            plan.display(),
            work.slot
        )));
    }
    tx.commit().await.map_err(failed)?;
    counters.rows.fetch_add(rows, Ordering::Relaxed);
    counters.chunks_done.fetch_add(1, Ordering::Relaxed);
    Ok(rows)
}
