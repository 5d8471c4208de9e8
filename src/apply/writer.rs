//! Statement shaping: changes become as few round trips to green as possible.
//!
//! ```text
//! changes ──▶ runs: consecutive changes of one operation on one table (across source
//!             transactions of the same batch, in order)
//!   insert run  ──▶ one COPY (text, or binary in binary mode), streamed: rows are sent in
//!                   chunks as they arrive, so green ingests while teal decodes; runs of
//!                   fewer than 16 rows: pipelined INSERTs
//!   update run  ──▶ stretches of >= 16 updates to distinct rows found by key, setting the
//!                   same columns, values in text: one UPDATE ... FROM unnest(text[], ..)
//!                   that must touch exactly that many rows; other updates: pipelined
//!                   prepared UPDATEs, one per row, each must touch a row
//!   delete run  ──▶ likewise: DELETE ... USING unnest(..), or one DELETE per row
//!   truncate    ──▶ TRUNCATE (run boundary)
//! closed runs (short runs of interleaved tables, e.g. pgbench's four per
//! transaction) ──▶ regrouped before they are sent: each table's runs side by side,
//!   neighbours of one operation joined, updates a later whole-row update of the same
//!   row overwrites dropped; joined insert runs of >= 16 rows: one INSERT ... SELECT
//!   FROM unnest(text[], ..)
//! ```
//!
//! Statements are prepared once per (table version, operation, column set)
//! and cached. Each row's order is kept: a table's runs are executed in
//! order, and pipelined statements run in order on one session. Runs of
//! different tables may be reordered within a green transaction (see
//! [`regroup`]), unless green fires triggers or rules on apply.
//!
//! The fast path detects conflicts (a unique violation, an update or delete
//! that found no row) and asks for the batch to be replayed carefully: then
//! every change runs on its own with conflict-aware SQL, and the table's
//! conflict policy decides.

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::stream::{FuturesOrdered, StreamExt};
use rustc_hash::{FxHashSet, FxHasher};
use tokio_postgres::{Client, Statement};

use std::pin::Pin;

use tokio_postgres::CopyInSink;

use crate::event::{CellKind, Change, ChangeKind, OldRow, Relation, RowImage, TxnMeta, Value};
use crate::lsn::Lsn;
use crate::store::Store;

use super::conflict::{ConflictKind, ConflictPolicies, ConflictPolicy};
use super::param::{Param, text_array};
use super::sql::{self, Match};
use super::target::{Key, Mapping, Targets};
use super::{ApplyError, ConflictReport};

/// A run is executed once it holds this many changes...
const RUN_MAX_CHANGES: usize = 10_000;
/// ...or this many bytes of values.
const RUN_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Shorter insert runs use pipelined INSERTs (COPY costs an extra round trip).
const COPY_MIN_ROWS: usize = 16;
/// Updates or deletes of at least this many distinct rows go in one
/// set-based statement.
const SET_MIN_ROWS: usize = 16;
/// Statements in flight at once on the session.
const PIPELINE_DEPTH: usize = 1024;
/// COPY data is sent in chunks of about this size.
const COPY_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Insert,
    InsertSkipConflict,
    Update,
    Delete,
    InsertMany,
    UpdateMany,
    DeleteMany,
    SelectJson,
    CopyText,
    CopyBinary,
}

/// Identifies a prepared statement: table version, operation, shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StatementKey {
    mapping: usize,
    op: Op,
    /// Columns set (update) and how each key column is matched.
    shape: Vec<u8>,
}

/// Stretch `start..end` of a run, applied by one set-based statement.
struct Stretch {
    start: usize,
    end: usize,
    statement: Statement,
    /// One `text[]` per column the statement carries.
    arrays: Vec<Vec<u8>>,
}

impl Stretch {
    /// Queues the statement, which must change exactly the stretch's rows
    /// of `changes` (its run, number `run`).
    fn queue<'r>(
        &'r self,
        changes: &[(Change, Arc<TxnMeta>)],
        run: usize,
        items: &mut Vec<(Statement, Vec<Param<'r>>)>,
        expect: &mut Vec<Expect>,
    ) {
        items.push((
            self.statement.clone(),
            self.arrays.iter().map(|a| Param::Binary(a)).collect(),
        ));
        expect.push(Expect {
            rows: Some((self.end - self.start) as u64),
            through: changes[self.end - 1].1.commit_lsn,
            run,
        });
    }
}

/// What a pipelined statement must do: change exactly `rows` rows (set-based)
/// or at least one; `through` is the commit LSN of its last transaction.
struct Expect {
    rows: Option<u64>,
    through: Lsn,
    /// Index of its run.
    run: usize,
}

struct Run {
    mapping: Arc<Mapping>,
    op: Op,
    changes: Vec<(Change, Arc<TxnMeta>)>,
    bytes: usize,
}

/// COPY data formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyFormat {
    Text,
    Binary,
}

/// The format a row can travel in by COPY, if any (not a mix of text and binary).
fn copy_format(row: &RowImage) -> Option<CopyFormat> {
    let (mut text, mut binary) = (false, false);
    for c in row.cells() {
        match c.kind {
            CellKind::Text => text = true,
            CellKind::Binary => binary = true,
            CellKind::Null => {}
            CellKind::UnchangedToast => return None,
        }
    }
    match (text, binary) {
        (_, false) => Some(CopyFormat::Text),
        (false, true) => Some(CopyFormat::Binary),
        (true, true) => None,
    }
}

/// An insert run being streamed into green through COPY.
struct Copying {
    mapping: Arc<Mapping>,
    format: CopyFormat,
    sink: Pin<Box<CopyInSink<Bytes>>>,
    buf: Vec<u8>,
    rows: u64,
    /// Commit LSN of the last transaction with rows in this COPY.
    through: Lsn,
}

impl Copying {
    fn encode(&mut self, row: &RowImage) {
        match self.format {
            CopyFormat::Text => {
                for (i, v) in row.values().enumerate() {
                    if i > 0 {
                        self.buf.push(b'\t');
                    }
                    sql::copy_text_value(
                        &mut self.buf,
                        match v {
                            Value::Text(t) => Some(t),
                            _ => None,
                        },
                    );
                }
                self.buf.push(b'\n');
            }
            CopyFormat::Binary => {
                self.buf
                    .extend_from_slice(&(row.len() as i16).to_be_bytes());
                for v in row.values() {
                    match v {
                        Value::Binary(b) => {
                            self.buf.extend_from_slice(&(b.len() as i32).to_be_bytes());
                            self.buf.extend_from_slice(b);
                        }
                        _ => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
                    }
                }
            }
        }
        self.rows += 1;
    }

    async fn send_chunk(&mut self) -> Result<(), tokio_postgres::Error> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(COPY_CHUNK + 64 * 1024));
        self.sink.send(Bytes::from(chunk)).await
    }

    async fn finish(mut self) -> Result<u64, tokio_postgres::Error> {
        if self.format == CopyFormat::Binary {
            self.buf.extend_from_slice(sql::COPY_BINARY_TRAILER);
        }
        if !self.buf.is_empty() {
            self.send_chunk().await?;
        }
        self.sink.as_mut().finish().await
    }
}

/// Applies changes to green, keeping prepared statements across batches.
pub(crate) struct Writer {
    store: Store,
    slot: String,
    policies: ConflictPolicies,
    targets: Targets,
    statements: HashMap<StatementKey, Statement>,
    /// The run changes are being added to.
    pending: Option<Run>,
    /// Runs complete but not yet sent: executed together, in one pipeline.
    closed: Vec<Run>,
    /// Changes in `closed`.
    closed_changes: usize,
    copying: Option<Copying>,
    /// The mapping of the previous change (most changes hit the same table).
    last_mapping: Option<Arc<Mapping>>,
    /// Conflicts resolved in the current batch (logged with it).
    pub(crate) conflicts: u64,
    /// Rows changed by set-based statements in the current batch.
    pub(crate) set_based_rows: u64,
    /// Updates left out in the current batch because a later update of
    /// the same row overwrote them whole.
    pub(crate) superseded: u64,
    /// Changes per table in the current batch: insert, update, delete, truncate.
    counts: Vec<(Arc<Relation>, [u64; 4])>,
}

/// A key to find one row: columns with how they match, and the values.
struct RowKey<'a> {
    matches: Vec<(usize, Match)>,
    params: Vec<Param<'a>>,
    one_row: bool,
}

impl<'a> RowKey<'a> {
    fn with_capacity(n: usize, one_row: bool) -> Self {
        RowKey {
            matches: Vec::with_capacity(n),
            params: Vec::with_capacity(n),
            one_row,
        }
    }

    /// Adds column `i` matching `value` (text values compared with `text`);
    /// false, adding nothing, for an unchanged-TOAST value blue did not send.
    fn push(&mut self, i: usize, value: Value<'a>, text: Match) -> bool {
        match value {
            Value::Null => self.matches.push((i, Match::Null)),
            Value::Text(t) => {
                self.matches.push((i, text));
                self.params.push(Param::Text(t));
            }
            Value::Binary(b) => {
                self.matches.push((i, Match::Equal));
                self.params.push(Param::Binary(b));
            }
            Value::UnchangedToast => return false,
        }
        true
    }
}

fn sql_error(context: String) -> impl FnOnce(tokio_postgres::Error) -> ApplyError {
    move |source| ApplyError::Sql { context, source }
}

impl Writer {
    pub(crate) fn new(store: Store, slot: String, policies: ConflictPolicies) -> Writer {
        Writer {
            store,
            slot,
            policies,
            targets: Targets::default(),
            statements: HashMap::new(),
            pending: None,
            closed: Vec::new(),
            closed_changes: 0,
            copying: None,
            last_mapping: None,
            conflicts: 0,
            set_based_rows: 0,
            superseded: 0,
            counts: Vec::new(),
        }
    }

    /// The blue relations this writer mapped onto green tables.
    pub(crate) fn relations(&self) -> Vec<Arc<Relation>> {
        self.targets.relations()
    }

    /// Forgets green's metadata and prepared statements (a new session).
    pub(crate) fn reset(&mut self) {
        self.targets.clear();
        self.statements.clear();
        self.pending = None;
        self.closed.clear();
        self.closed_changes = 0;
        self.copying = None;
        self.last_mapping = None;
        self.conflicts = 0;
        self.set_based_rows = 0;
        self.superseded = 0;
        self.counts.clear();
    }

    /// Counts one change of `relation` (`op`: 0 insert, 1 update, 2 delete,
    /// 3 truncate); consecutive changes of one table cost one pointer compare.
    fn count(&mut self, relation: &Arc<Relation>, op: usize) {
        if let Some((r, c)) = self.counts.last_mut() {
            if Arc::ptr_eq(r, relation) {
                c[op] += 1;
                return;
            }
        }
        match self
            .counts
            .iter_mut()
            .find(|(r, _)| Arc::ptr_eq(r, relation))
        {
            Some((_, c)) => c[op] += 1,
            None => {
                let mut c = [0; 4];
                c[op] = 1;
                self.counts.push((Arc::clone(relation), c));
            }
        }
    }

    /// The batch's changes per table, by name (after its commit).
    pub(crate) fn take_counts(&mut self) -> Vec<(String, [u64; 4])> {
        self.counts
            .drain(..)
            .map(|(r, c)| (r.name.to_string(), c))
            .collect()
    }

    /// Queues (fast path) or applies (careful mode) one change.
    pub(crate) async fn push(
        &mut self,
        client: &Client,
        change: Change,
        txn: &Arc<TxnMeta>,
        careful: bool,
    ) -> Result<(), ApplyError> {
        let (relation, op) = match &change.kind {
            ChangeKind::Insert { relation, .. } => (relation, Op::Insert),
            ChangeKind::Update { relation, .. } => (relation, Op::Update),
            ChangeKind::Delete { relation, .. } => (relation, Op::Delete),
            ChangeKind::Truncate {
                relations,
                cascade,
                restart_identity,
            } => {
                for rel in relations {
                    self.count(rel, 3);
                }
                self.flush(client).await?;
                let mut tables = Vec::with_capacity(relations.len());
                for rel in relations {
                    tables.push(self.targets.mapping(client, rel).await?.table.clone());
                }
                let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
                let statement = sql::truncate(&refs, *restart_identity, *cascade);
                return client
                    .batch_execute(&statement)
                    .await
                    .map_err(sql_error(format!(
                        "truncating {} (change at LSN {}, transaction {})",
                        refs.join(", "),
                        change.lsn,
                        txn.commit_lsn
                    )));
            }
            // Logical messages are not applied to green.
            ChangeKind::Message(_) => return Ok(()),
        };
        self.count(
            relation,
            match op {
                Op::Insert => 0,
                Op::Update => 1,
                _ => 2,
            },
        );
        let mapping = match &self.last_mapping {
            Some(m) if Arc::ptr_eq(&m.relation, relation) => Arc::clone(m),
            _ => {
                // Another table, or a new definition of this one: the pending
                // run ends here, and an open COPY must finish before the
                // session can read green's catalog.
                self.finish_copy().await?;
                self.close_run(client).await?;
                let m = self.targets.mapping(client, relation).await?;
                self.last_mapping = Some(Arc::clone(&m));
                m
            }
        };
        if careful {
            self.flush(client).await?;
            return self.apply_carefully(client, &mapping, &change, txn).await;
        }
        if self.copying.is_some() {
            // An open COPY holds a run of inserts the session is still
            // receiving: the next insert of its table joins it; anything
            // else ends it first, so nothing is queued behind it (green
            // would wait for COPY data while teal waits for green).
            if op == Op::Insert && self.stream_insert(&mapping, &change, txn).await? {
                return Ok(());
            }
            self.finish_copy().await?;
        }
        let same_run = self
            .pending
            .as_ref()
            .is_some_and(|r| r.op == op && Arc::ptr_eq(&r.mapping, &mapping));
        if !same_run {
            self.close_run(client).await?;
            self.pending = Some(Run {
                mapping: Arc::clone(&mapping),
                op,
                changes: Vec::new(),
                bytes: 0,
            });
        }
        let (full, start_copy) = match self.pending.as_mut() {
            Some(run) => {
                run.bytes += change.memory_size();
                run.changes.push((change, Arc::clone(txn)));
                (
                    run.changes.len() >= RUN_MAX_CHANGES || run.bytes >= RUN_MAX_BYTES,
                    op == Op::Insert && run.changes.len() >= COPY_MIN_ROWS,
                )
            }
            None => (false, false),
        };
        if start_copy {
            self.start_copy(client, &mapping).await?;
        } else if full {
            self.close_run(client).await?;
        }
        Ok(())
    }

    /// Moves the pending run to the closed ones.
    fn queue_pending(&mut self) {
        if let Some(run) = self.pending.take() {
            self.closed_changes += run.changes.len();
            self.closed.push(run);
        }
    }

    /// Ends the pending run; sends the closed runs once they are many.
    async fn close_run(&mut self, client: &Client) -> Result<(), ApplyError> {
        self.queue_pending();
        if self.closed_changes >= RUN_MAX_CHANGES {
            self.execute_closed(client).await?;
        }
        Ok(())
    }

    /// Statements go to the session only while no COPY is open on it: the
    /// driver queues them behind the COPY, whose end green keeps waiting for
    /// while teal waits for their answers.
    fn debug_assert_no_copy(&self) {
        debug_assert!(
            self.copying.is_none(),
            "a statement was sent behind an open COPY"
        );
    }

    /// Finishes the COPY being streamed, if any.
    async fn finish_copy(&mut self) -> Result<(), ApplyError> {
        if let Some(copying) = self.copying.take() {
            let (mapping, through) = (Arc::clone(&copying.mapping), copying.through);
            let rows = copying.rows;
            copying
                .finish()
                .await
                .map_err(|e| copy_error(&mapping, rows, through, e))?;
        }
        Ok(())
    }

    /// Adds an insert to the COPY streaming into its table, if one is open
    /// and the row fits its format; returns whether it did.
    async fn stream_insert(
        &mut self,
        mapping: &Arc<Mapping>,
        change: &Change,
        txn: &TxnMeta,
    ) -> Result<bool, ApplyError> {
        let ChangeKind::Insert { new, .. } = &change.kind else {
            return Ok(false);
        };
        let Some(copying) = self
            .copying
            .as_mut()
            .filter(|c| Arc::ptr_eq(&c.mapping, mapping) && copy_format(new) == Some(c.format))
        else {
            return Ok(false);
        };
        copying.encode(new);
        copying.through = txn.commit_lsn;
        if copying.buf.len() >= COPY_CHUNK {
            let through = copying.through;
            let rows = copying.rows;
            if let Err(e) = copying.send_chunk().await {
                self.copying = None;
                return Err(copy_error(mapping, rows, through, e));
            }
        }
        Ok(true)
    }

    /// Turns the pending insert run into a streaming COPY, when its rows can
    /// travel by COPY.
    async fn start_copy(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
    ) -> Result<(), ApplyError> {
        let Some(run) = self.pending.as_ref() else {
            return Ok(());
        };
        let formats: Vec<Option<CopyFormat>> = run
            .changes
            .iter()
            .map(|(c, _)| match &c.kind {
                ChangeKind::Insert { new, .. } => copy_format(new),
                _ => None,
            })
            .collect();
        let format = match formats.first().copied().flatten() {
            Some(f) if formats.iter().all(|x| *x == Some(f)) => f,
            // Mixed text and binary values: statements, not COPY.
            _ => return Ok(()),
        };
        let op = match format {
            CopyFormat::Text => Op::CopyText,
            CopyFormat::Binary => Op::CopyBinary,
        };
        let statement = self
            .statement(client, mapping, op, Vec::new(), || {
                sql::copy_in(
                    &mapping.table,
                    &mapping.column_list(),
                    format == CopyFormat::Binary,
                )
            })
            .await?;
        let Some(run) = self.pending.take() else {
            return Ok(());
        };
        // Everything before this run goes first.
        self.execute_closed(client).await?;
        let through = run.changes.last().map_or(Lsn::ZERO, |(_, t)| t.commit_lsn);
        let sink = client
            .copy_in::<_, Bytes>(&statement)
            .await
            .map_err(|e| copy_error(mapping, 0, through, e))?;
        let mut copying = Copying {
            mapping: Arc::clone(mapping),
            format,
            sink: Box::pin(sink),
            buf: Vec::with_capacity(COPY_CHUNK + 64 * 1024),
            rows: 0,
            through,
        };
        if format == CopyFormat::Binary {
            copying.buf.extend_from_slice(sql::COPY_BINARY_HEADER);
        }
        for (change, _) in &run.changes {
            if let ChangeKind::Insert { new, .. } = &change.kind {
                copying.encode(new);
            }
        }
        self.copying = Some(copying);
        Ok(())
    }

    /// Sends everything queued: finishes the COPY being streamed, or executes
    /// the pending and closed runs.
    pub(crate) async fn flush(&mut self, client: &Client) -> Result<(), ApplyError> {
        self.finish_copy().await?;
        self.queue_pending();
        self.execute_closed(client).await
    }

    /// Executes the closed runs as one pipeline, in order, and checks that
    /// each statement changed the rows it had to.
    async fn execute_closed(&mut self, client: &Client) -> Result<(), ApplyError> {
        self.debug_assert_no_copy();
        let (runs, superseded) = regroup(std::mem::take(&mut self.closed));
        self.closed_changes = 0;
        if runs.is_empty() {
            return Ok(());
        }
        let mut stretches = Vec::with_capacity(runs.len());
        for run in &runs {
            stretches.push(match run.op {
                Op::Update | Op::Delete => self.plan_stretches(client, run).await?,
                Op::Insert => self.plan_insert_many(client, run).await?,
                _ => Vec::new(),
            });
        }
        let mut items = Vec::new();
        let mut expect = Vec::new();
        for (i, (run, stretches)) in runs.iter().zip(&stretches).enumerate() {
            match run.op {
                Op::Insert => {
                    self.insert_items(client, run, i, stretches, &mut items, &mut expect)
                        .await?
                }
                _ => {
                    self.modify_items(client, run, i, stretches, &mut items, &mut expect)
                        .await?;
                }
            }
        }
        // Runs may be regrouped: a failure replays carefully through the
        // furthest transaction sent.
        let through = expect.iter().map(|e| e.through).max().unwrap_or(Lsn::ZERO);
        let counts = pipelined(client, &items).await.map_err(|(at, source)| {
            if is_unique_violation(&source) {
                return ApplyError::Replay { through };
            }
            let run = &runs[expect[at].run];
            ApplyError::Sql {
                context: format!(
                    "{} {} rows of {} (transactions up to {through})",
                    match run.op {
                        Op::Insert => "inserting",
                        Op::Update => "updating",
                        _ => "deleting",
                    },
                    run.changes.len(),
                    run.mapping.name()
                ),
                source,
            }
        })?;
        // A row missing on green (or a key green holds twice): replay carefully.
        for (n, e) in counts.iter().zip(&expect) {
            let ok = match e.rows {
                Some(rows) => *n == rows,
                None => *n > 0,
            };
            if !ok {
                return Err(ApplyError::Replay { through });
            }
        }
        self.superseded += superseded;
        self.set_based_rows += stretches
            .iter()
            .flatten()
            .map(|s| (s.end - s.start) as u64)
            .sum::<u64>();
        Ok(())
    }

    async fn statement(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
        op: Op,
        shape: Vec<u8>,
        text: impl FnOnce() -> String,
    ) -> Result<Statement, ApplyError> {
        let key = StatementKey {
            mapping: Arc::as_ptr(mapping) as usize,
            op,
            shape,
        };
        if let Some(s) = self.statements.get(&key) {
            return Ok(s.clone());
        }
        self.debug_assert_no_copy();
        let text = text();
        let statement = client.prepare(&text).await.map_err(sql_error(format!(
            "preparing a statement for {}",
            mapping.name()
        )))?;
        self.statements.insert(key, statement.clone());
        Ok(statement)
    }

    /// The INSERT of every column (`ON CONFLICT DO NOTHING` when asked).
    async fn insert_statement(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
        skip_conflicts: bool,
    ) -> Result<Statement, ApplyError> {
        let op = if skip_conflicts {
            Op::InsertSkipConflict
        } else {
            Op::Insert
        };
        self.statement(client, mapping, op, Vec::new(), || {
            sql::insert(&mapping.table, &mapping.column_list(), skip_conflicts)
        })
        .await
    }

    /// The set-based INSERT of an insert run (regrouped from short runs)
    /// of at least `SET_MIN_ROWS` rows whose values are all text or NULL,
    /// every column's type converted from text by its input function.
    async fn plan_insert_many(
        &mut self,
        client: &Client,
        run: &Run,
    ) -> Result<Vec<Stretch>, ApplyError> {
        let mapping = &run.mapping;
        let n = mapping.columns.len();
        let fits = run.changes.len() >= SET_MIN_ROWS
            && n > 0
            && mapping.text_casts.iter().all(Option::is_some)
            && run.changes.iter().all(|(c, _)| match &c.kind {
                ChangeKind::Insert { new, .. } => {
                    new.len() == n
                        && new
                            .values()
                            .all(|v| matches!(v, Value::Text(_) | Value::Null))
                }
                _ => false,
            });
        if !fits {
            return Ok(Vec::new());
        }
        let statement = self
            .statement(client, mapping, Op::InsertMany, Vec::new(), || {
                sql::insert_many(&mapping.table, &typed_columns(mapping, 0..n))
            })
            .await?;
        let all: Vec<usize> = (0..n).collect();
        Ok(vec![Stretch {
            start: 0,
            end: run.changes.len(),
            statement,
            arrays: text_arrays(&run.changes, &all),
        }])
    }

    /// An insert run that is not streamed by COPY: one set-based INSERT
    /// (`stretches`), or one INSERT per row.
    async fn insert_items<'r>(
        &mut self,
        client: &Client,
        run: &'r Run,
        run_index: usize,
        stretches: &'r [Stretch],
        items: &mut Vec<(Statement, Vec<Param<'r>>)>,
        expect: &mut Vec<Expect>,
    ) -> Result<(), ApplyError> {
        if let Some(s) = stretches.first() {
            s.queue(&run.changes, run_index, items, expect);
            return Ok(());
        }
        let statement = self.insert_statement(client, &run.mapping, false).await?;
        for (change, txn) in &run.changes {
            if let ChangeKind::Insert { new, .. } = &change.kind {
                items.push((
                    statement.clone(),
                    new.values().filter_map(Param::from_value).collect(),
                ));
                expect.push(Expect {
                    rows: None,
                    through: txn.commit_lsn,
                    run: run_index,
                });
            }
        }
        Ok(())
    }

    /// The stretches of an update or delete run that go set-based, with
    /// their statements and parameter arrays.
    async fn plan_stretches(
        &mut self,
        client: &Client,
        run: &Run,
    ) -> Result<Vec<Stretch>, ApplyError> {
        let (mapping, changes) = (&run.mapping, &run.changes);
        let mut stretches = Vec::new();
        let mut i = 0;
        while i < changes.len() {
            let (len, cols) = set_stretch(mapping, &changes[i..]);
            if let Some(cols) = cols {
                let rows = &changes[i..i + len];
                let statement = self.many_statement(client, mapping, run.op, &cols).await?;
                stretches.push(Stretch {
                    start: i,
                    end: i + len,
                    statement,
                    arrays: text_arrays(rows, &cols),
                });
            }
            i += len;
        }
        Ok(stretches)
    }

    /// An update or delete run: a set-based statement per stretch, one
    /// statement per row otherwise.
    async fn modify_items<'r>(
        &mut self,
        client: &Client,
        run: &'r Run,
        run_index: usize,
        stretches: &'r [Stretch],
        items: &mut Vec<(Statement, Vec<Param<'r>>)>,
        expect: &mut Vec<Expect>,
    ) -> Result<(), ApplyError> {
        let changes = &run.changes;
        let mut next = stretches.iter().peekable();
        let mut i = 0;
        while i < changes.len() {
            if let Some(s) = next.next_if(|s| s.start == i) {
                s.queue(changes, run_index, items, expect);
                i = s.end;
                continue;
            }
            let (change, txn) = &changes[i];
            items.push(
                self.modify_statement(client, &run.mapping, change, txn)
                    .await?,
            );
            expect.push(Expect {
                rows: None,
                through: txn.commit_lsn,
                run: run_index,
            });
            i += 1;
        }
        Ok(())
    }

    /// The set-based UPDATE or DELETE carrying columns `cols`.
    async fn many_statement(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
        op: Op,
        cols: &[usize],
    ) -> Result<Statement, ApplyError> {
        let Key::Columns(key) = &mapping.key else {
            unreachable!("set_stretch only plans tables with key columns");
        };
        let shape: Vec<u8> = cols
            .iter()
            .flat_map(|&c| (c as u16).to_le_bytes())
            .collect();
        let many_op = if op == Op::Update {
            Op::UpdateMany
        } else {
            Op::DeleteMany
        };
        self.statement(client, mapping, many_op, shape, || {
            let typed = typed_columns(mapping, cols.iter().copied());
            if many_op == Op::UpdateMany {
                let key_at: Vec<usize> = key
                    .iter()
                    .filter_map(|k| cols.iter().position(|c| c == k))
                    .collect();
                sql::update_many(&mapping.table, &typed, &key_at)
            } else {
                sql::delete_many(&mapping.table, &typed)
            }
        })
        .await
    }

    /// The UPDATE or DELETE for one change, with its parameters.
    async fn modify_statement<'c>(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
        change: &'c Change,
        txn: &TxnMeta,
    ) -> Result<(Statement, Vec<Param<'c>>), ApplyError> {
        match &change.kind {
            ChangeKind::Update { old, new, .. } => {
                let key = row_key(mapping, old.as_ref(), Some(new), change.lsn, txn)?;
                let set: Vec<usize> = new
                    .values()
                    .enumerate()
                    .filter(|(_, v)| !matches!(v, Value::UnchangedToast))
                    .map(|(i, _)| i)
                    .collect();
                let shape = shape_of(&set, &key);
                let statement = self
                    .statement(client, mapping, Op::Update, shape, || {
                        let set_cols: Vec<&str> =
                            set.iter().map(|&i| mapping.columns[i].as_str()).collect();
                        sql::update(
                            &mapping.table,
                            &set_cols,
                            &key_columns(mapping, &key),
                            key.one_row,
                        )
                    })
                    .await?;
                let mut params: Vec<Param<'c>> =
                    new.values().filter_map(Param::from_value).collect();
                params.extend(key.params);
                Ok((statement, params))
            }
            ChangeKind::Delete { old, .. } => {
                let key = row_key(mapping, Some(old), None, change.lsn, txn)?;
                let shape = shape_of(&[], &key);
                let statement = self
                    .statement(client, mapping, Op::Delete, shape, || {
                        sql::delete(&mapping.table, &key_columns(mapping, &key), key.one_row)
                    })
                    .await?;
                Ok((statement, key.params))
            }
            _ => Err(ApplyError::Unresolvable {
                table: mapping.name().clone(),
                lsn: change.lsn,
                commit_lsn: txn.commit_lsn,
                reason: "only updates and deletes modify existing rows".into(),
            }),
        }
    }

    /// Applies one change on its own, resolving conflicts by policy.
    async fn apply_carefully(
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
        let shape = shape_of(&set, key);
        let statement = self
            .statement(client, mapping, Op::Update, shape, || {
                sql::update(
                    &mapping.table,
                    &mapping.column_list(),
                    &key_columns(mapping, key),
                    key.one_row,
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
        let shape = shape_of(&[], key);
        let statement = self
            .statement(client, mapping, Op::SelectJson, shape, || {
                sql::select_json(&mapping.table, &key_columns(mapping, key))
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

/// The image whose values a set-based statement carries: an update's new
/// row, a delete's old row.
/// Puts each table's runs next to each other (tables in the order they
/// first appear, each table's runs in their order), joins neighbouring runs
/// of one table version and operation, and drops updates that a later
/// update of the same row in the same run overwrites whole. Inside one
/// green transaction, changes to different tables commute: teal's session
/// runs with `session_replication_role = replica`, so foreign-key triggers
/// do not fire, and unique and exclusion constraints are per table. Not
/// when green fires triggers or rules on apply (they may read other
/// tables): then the runs stay as they are.
///
/// Returns the runs and how many updates were dropped.
fn regroup(runs: Vec<Run>) -> (Vec<Run>, u64) {
    if runs.len() < 2 || runs.iter().any(|r| r.mapping.fires_on_apply) {
        return (runs, 0);
    }
    let mut tables: HashMap<&str, usize> = HashMap::new();
    let mut group_of = Vec::with_capacity(runs.len());
    for run in &runs {
        let next = tables.len();
        group_of.push(*tables.entry(run.mapping.table.as_str()).or_insert(next));
    }
    if tables.len() == runs.len() {
        // Every run a different table: nothing to join.
        return (runs, 0);
    }
    let mut groups: Vec<Vec<Run>> = (0..tables.len()).map(|_| Vec::new()).collect();
    for (run, g) in runs.into_iter().zip(group_of) {
        let group = &mut groups[g];
        match group.last_mut() {
            Some(last) if last.op == run.op && Arc::ptr_eq(&last.mapping, &run.mapping) => {
                last.bytes += run.bytes;
                last.changes.extend(run.changes);
            }
            _ => group.push(run),
        }
    }
    let mut out: Vec<Run> = groups.into_iter().flatten().collect();
    let dropped = out.iter_mut().map(drop_superseded).sum();
    (out, dropped)
}

/// The key values of an update that keeps its key, found by key columns
/// `key`, as bytes to compare (each value tagged and length-prefixed).
fn unchanged_key(key: &[usize], change: &Change) -> Option<Vec<u8>> {
    let ChangeKind::Update { old, new, .. } = &change.kind else {
        return None;
    };
    let mut out = Vec::new();
    for &k in key {
        let (tag, bytes) = match new.get(k)? {
            Value::Text(t) => (0u8, t),
            Value::Binary(b) => (1u8, b),
            Value::Null | Value::UnchangedToast => return None,
        };
        if let Some(o) = old {
            match o.image().get(k)? {
                Value::Text(t) | Value::Binary(t) if t == bytes => {}
                _ => return None,
            }
        }
        out.push(tag);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    Some(out)
}

/// In an update run of a table found by key columns, drops each update that
/// a later update of the same row overwrites: one that sends every column
/// (no unchanged TOAST value) and, like all the run's updates, keeps the
/// key. The later update finds the row exactly when the earlier would
/// have, so conflicts are still seen (and replayed in blue's order).
fn drop_superseded(run: &mut Run) -> u64 {
    let Key::Columns(key) = &run.mapping.key else {
        return 0;
    };
    if run.op != Op::Update || run.changes.len() < 2 {
        return 0;
    }
    let Some(keys) = run
        .changes
        .iter()
        .map(|(c, _)| unchanged_key(key, c))
        .collect::<Option<Vec<Vec<u8>>>>()
    else {
        return 0;
    };
    let mut overwritten: FxHashSet<&[u8]> = FxHashSet::default();
    let mut keep = vec![true; keys.len()];
    for i in (0..keys.len()).rev() {
        if overwritten.contains(keys[i].as_slice()) {
            keep[i] = false;
        } else if let ChangeKind::Update { new, .. } = &run.changes[i].0.kind
            && !new.values().any(|v| matches!(v, Value::UnchangedToast))
        {
            overwritten.insert(keys[i].as_slice());
        }
    }
    let dropped = keep.iter().filter(|k| !**k).count();
    if dropped > 0 {
        let mut flags = keep.into_iter();
        run.changes.retain(|_| flags.next().unwrap_or(true));
    }
    dropped as u64
}

/// The row a set-based statement carries: an insert's or update's new row,
/// a delete's old one.
fn set_image(change: &Change) -> Option<&RowImage> {
    match &change.kind {
        ChangeKind::Insert { new, .. } | ChangeKind::Update { new, .. } => Some(new),
        ChangeKind::Delete { old, .. } => Some(old.image()),
        _ => None,
    }
}

/// One binary `text[]` per column of `cols`: each change's value (NULL for
/// NULL or a value that is not text), for a set-based statement.
fn text_arrays(changes: &[(Change, Arc<TxnMeta>)], cols: &[usize]) -> Vec<Vec<u8>> {
    cols.iter()
        .map(|&c| {
            text_array(
                changes
                    .iter()
                    .map(|(change, _)| match set_image(change)?.get(c) {
                        Some(Value::Text(t)) => Some(t),
                        _ => None,
                    }),
            )
        })
        .collect()
}

/// (column, type its text values are cast to) of `cols`, for set-based
/// statements.
fn typed_columns(mapping: &Mapping, cols: impl Iterator<Item = usize>) -> Vec<(&str, &str)> {
    cols.map(|c| {
        (
            mapping.columns[c].as_str(),
            mapping.text_casts[c]
                .as_deref()
                .unwrap_or("pg_catalog.text"),
        )
    })
    .collect()
}

/// How many changes from the start of `changes` to take together, and the
/// columns their set-based statement carries when there are enough of them:
/// updates or deletes of distinct rows found by key columns, whose key blue
/// sent and did not change, all carrying the same columns (an update: those
/// blue sent), every value text or NULL, every column's type one a text cast
/// converts with its input function.
fn set_stretch(
    mapping: &Mapping,
    changes: &[(Change, Arc<TxnMeta>)],
) -> (usize, Option<Vec<usize>>) {
    let (Key::Columns(key), Some((first, _))) = (&mapping.key, changes.first()) else {
        return (1, None);
    };
    let cols: Vec<usize> = match &first.kind {
        ChangeKind::Update { new, .. } => new
            .values()
            .enumerate()
            .filter(|(_, v)| !matches!(v, Value::UnchangedToast))
            .map(|(i, _)| i)
            .collect(),
        ChangeKind::Delete { .. } => key.clone(),
        _ => return (1, None),
    };
    let castable = cols
        .iter()
        .all(|&c| matches!(mapping.text_casts.get(c), Some(Some(_))));
    if !castable || !key.iter().all(|k| cols.contains(k)) {
        return (1, None);
    }
    // Most changes that do not fit stop here, before anything is allocated.
    let Some(first_key) = set_row_key(key, &cols, first) else {
        return (1, None);
    };
    // Keys by hash: a collision only ends the stretch early.
    let mut seen = FxHashSet::default();
    seen.insert(first_key);
    let mut n = 1;
    for (change, _) in &changes[1..] {
        let Some(k) = set_row_key(key, &cols, change) else {
            break;
        };
        if !seen.insert(k) {
            break;
        }
        n += 1;
    }
    (n.max(1), (n >= SET_MIN_ROWS).then_some(cols))
}

/// The hash of the key of a change that fits a set-based statement carrying `cols`.
fn set_row_key(key: &[usize], cols: &[usize], change: &Change) -> Option<u64> {
    fn text(v: Option<Value<'_>>) -> Option<&[u8]> {
        match v {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }
    let mut hash = FxHasher::default();
    match &change.kind {
        ChangeKind::Update { old, new, .. } => {
            let mut sent = 0;
            for (i, v) in new.values().enumerate() {
                match v {
                    Value::UnchangedToast => {}
                    Value::Binary(_) => return None,
                    Value::Text(_) | Value::Null => {
                        if cols.get(sent) != Some(&i) {
                            return None;
                        }
                        sent += 1;
                    }
                }
            }
            if sent != cols.len() {
                return None;
            }
            for &k in key {
                let t = text(new.get(k))?;
                // The key did not change (blue sends an old key only when it
                // did, or whole old rows).
                if old
                    .as_ref()
                    .is_some_and(|o| text(o.image().get(k)) != Some(t))
                {
                    return None;
                }
                hash.write_usize(t.len());
                hash.write(t);
            }
        }
        ChangeKind::Delete { old, .. } => {
            for &k in key {
                let t = text(old.image().get(k))?;
                hash.write_usize(t.len());
                hash.write(t);
            }
        }
        _ => return None,
    }
    Some(hash.finish())
}

/// Statement shape: the columns set, then each key column and its match.
fn shape_of(set: &[usize], key: &RowKey<'_>) -> Vec<u8> {
    let mut shape = Vec::with_capacity(2 * set.len() + 3 * key.matches.len() + 2);
    for &i in set {
        shape.extend_from_slice(&(i as u16).to_le_bytes());
    }
    shape.extend_from_slice(&[0xff, 0xff]);
    for (i, m) in &key.matches {
        shape.extend_from_slice(&(*i as u16).to_le_bytes());
        shape.push(*m as u8);
    }
    shape.push(u8::from(key.one_row));
    shape
}

fn key_columns<'m>(mapping: &'m Mapping, key: &RowKey<'_>) -> Vec<(&'m str, Match)> {
    key.matches
        .iter()
        .map(|(i, m)| (mapping.columns[*i].as_str(), *m))
        .collect()
}

/// The key of the row an update or delete acts on.
fn row_key<'a>(
    mapping: &Mapping,
    old: Option<&'a OldRow>,
    new: Option<&'a RowImage>,
    lsn: Lsn,
    txn: &TxnMeta,
) -> Result<RowKey<'a>, ApplyError> {
    match &mapping.key {
        Key::Columns(cols) => {
            let mut key = RowKey::with_capacity(cols.len(), false);
            for &i in cols {
                let value = old
                    .and_then(|o| o.image().get(i))
                    .filter(|v| !matches!(v, Value::UnchangedToast))
                    .or_else(|| new.and_then(|n| n.get(i)))
                    .unwrap_or(Value::UnchangedToast);
                if !key.push(i, value, Match::Equal) {
                    return Err(ApplyError::Unresolvable {
                        table: mapping.name().clone(),
                        lsn,
                        commit_lsn: txn.commit_lsn,
                        reason: format!(
                            "blue did not send key column {:?}",
                            mapping.relation.columns[i].name
                        ),
                    });
                }
            }
            Ok(key)
        }
        Key::FullRow => {
            let Some(OldRow::Full(old)) = old else {
                return Err(ApplyError::Unresolvable {
                    table: mapping.name().clone(),
                    lsn,
                    commit_lsn: txn.commit_lsn,
                    reason: "REPLICA IDENTITY FULL, but blue sent no old row".into(),
                });
            };
            Ok(full_row_key(old))
        }
        Key::None => Err(ApplyError::NoIdentity {
            table: mapping.name().clone(),
            lsn,
        }),
    }
}

fn full_row_key(row: &RowImage) -> RowKey<'_> {
    let mut key = RowKey::with_capacity(row.len(), true);
    for (i, v) in row.values().enumerate() {
        // Unchanged-TOAST values are left out of the match.
        key.push(i, v, Match::Text);
    }
    key
}

/// The key of green's row an insert collides with: green's primary key when
/// blue sends its columns, else blue's identity, else the whole row.
fn insert_key<'a>(mapping: &Mapping, new: Option<&'a RowImage>) -> Option<RowKey<'a>> {
    let new = new?;
    let cols = match (&mapping.green_pk, &mapping.key) {
        (Some(pk), _) => pk.clone(),
        (None, Key::Columns(cols)) => cols.clone(),
        _ => return Some(full_row_key(new)),
    };
    let mut key = RowKey::with_capacity(cols.len(), false);
    for i in cols {
        if !key.push(i, new.get(i)?, Match::Equal) {
            return None;
        }
    }
    Some(key)
}

/// Runs statements pipelined on the session, in order; their row counts, or
/// the first failure and its index.
async fn pipelined(
    client: &Client,
    items: &[(Statement, Vec<Param<'_>>)],
) -> Result<Vec<u64>, (usize, tokio_postgres::Error)> {
    let mut counts = Vec::with_capacity(items.len());
    for (c, chunk) in items.chunks(PIPELINE_DEPTH).enumerate() {
        let mut in_flight: FuturesOrdered<_> = chunk
            .iter()
            .map(|(statement, params)| client.execute_raw(statement, params.iter().copied()))
            .collect();
        let mut first_error = None;
        let mut at = c * PIPELINE_DEPTH;
        while let Some(result) = in_flight.next().await {
            match result {
                Ok(n) => counts.push(n),
                // After the first failure the rest fail with 25P02; keep the first.
                Err(e) if first_error.is_none() => first_error = Some((at, e)),
                Err(_) => {}
            }
            at += 1;
        }
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    Ok(counts)
}

/// A failed insert: a unique violation asks for a careful replay.
fn copy_error(
    mapping: &Mapping,
    rows: u64,
    through: Lsn,
    source: tokio_postgres::Error,
) -> ApplyError {
    if is_unique_violation(&source) {
        ApplyError::Replay { through }
    } else {
        ApplyError::Sql {
            context: format!(
                "inserting {rows} rows into {} (transactions up to {through})",
                mapping.name()
            ),
            source,
        }
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code().map(|c| c.code()) == Some("23505")
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
