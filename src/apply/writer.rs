//! Statement shaping: changes become as few round trips to green as possible.
//!
//! ```text
//! change ──▶ open COPY of its table takes it?  (copy.rs: inserts, streamed)
//!        ──▶ else the pending run of its table and operation  (run.rs)
//!              insert run reaching 16 rows that share a format ──▶ COPY
//!              other runs close at another table/operation or a limit
//! closed runs ──regroup (run.rs)──▶ plans (set_based.rs: stretches, INSERT ... unnest)
//!             ──▶ prepared statements (statements.rs) ──▶ one pipeline, in order
//! careful mode (after a conflict) ──▶ careful.rs, one change at a time
//! ```
//!
//! Statements are prepared once per (table version, kind, shape) and
//! cached. Each row's order is kept: a table's runs are executed in order,
//! and pipelined statements run in order on one session. Runs of different
//! tables may be reordered within a green transaction (see
//! [`super::run::regroup`]), unless green fires triggers or rules on apply.
//!
//! Invariant: while a COPY is open, every change since it opened went into
//! it: anything else ends it first, and nothing else is sent meanwhile (the
//! driver would queue it behind the COPY, whose end green waits for while
//! teal waits for the answer: both would wait forever).
//!
//! The fast path detects conflicts (a unique violation, an update or delete
//! that found no row) and asks for the batch to be replayed carefully.

use std::sync::Arc;

use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio_postgres::{Client, Statement};

use crate::event::{Change, ChangeKind, Relation, TxnMeta, Value};
use crate::lsn::Lsn;
use crate::store::Store;

use super::ApplyError;
use super::conflict::ConflictPolicies;
use super::copy::{COPY_MIN_ROWS, CopyFormat, Copying, run_format};
use super::param::Param;
use super::row_key::row_key;
use super::run::{Run, RunOp, regroup};
use super::set_based::{self, StretchPlan, typed_columns};
use super::sql;
use super::statements::{Kind, Statements};
use super::target::{Key, Mapping, Targets};

/// Statements in flight at once on the session.
const PIPELINE_DEPTH: usize = 1024;

/// A set-based statement with its parameter arrays.
struct Stretch {
    plan: StretchPlan,
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
            rows: Some(self.plan.len() as u64),
            through: changes[self.plan.end - 1].1.commit_lsn,
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

/// Applies changes to green, keeping prepared statements across batches.
pub(crate) struct Writer {
    pub(super) store: Store,
    pub(super) slot: String,
    pub(super) policies: ConflictPolicies,
    targets: Targets,
    statements: Statements,
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
    /// DDL messages of the current source transaction.
    ddl: super::ddl::Ddl,
}

pub(super) fn sql_error(context: String) -> impl FnOnce(tokio_postgres::Error) -> ApplyError {
    move |source| ApplyError::Sql { context, source }
}

impl Writer {
    pub(crate) fn new(store: Store, slot: String, policies: ConflictPolicies) -> Writer {
        Writer {
            store,
            slot,
            policies,
            targets: Targets::default(),
            statements: Statements::default(),
            pending: None,
            closed: Vec::new(),
            closed_changes: 0,
            copying: None,
            last_mapping: None,
            conflicts: 0,
            set_based_rows: 0,
            superseded: 0,
            counts: Vec::new(),
            ddl: super::ddl::Ddl::default(),
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
            ChangeKind::Insert { relation, .. } => (relation, RunOp::Insert),
            ChangeKind::Update { relation, .. } => (relation, RunOp::Update),
            ChangeKind::Delete { relation, .. } => (relation, RunOp::Delete),
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
            // DDL from blue's event trigger: at this point of the batch.
            ChangeKind::Message(m) if m.prefix == super::ddl::PREFIX => {
                return self.ddl(client, m, txn).await;
            }
            // Other logical messages are not applied to green.
            ChangeKind::Message(_) => return Ok(()),
        };
        self.count(
            relation,
            match op {
                RunOp::Insert => 0,
                RunOp::Update => 1,
                RunOp::Delete => 2,
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
        if let Some(copying) = self.copying.as_mut() {
            // An open COPY takes the next insert of its table; anything else
            // ends it first.
            if let ChangeKind::Insert { new, .. } = &change.kind
                && copying.takes(&mapping, new)
            {
                return copying.add(new, txn.commit_lsn).await;
            }
            self.finish_copy().await?;
        }
        if !self
            .pending
            .as_ref()
            .is_some_and(|r| r.continues(&mapping, op))
        {
            self.close_run(client).await?;
            self.pending = Some(Run::new(Arc::clone(&mapping), op));
        }
        let Some(run) = self.pending.as_mut() else {
            return Ok(());
        };
        run.push(change, txn);
        let (copy, full) = (
            op == RunOp::Insert && run.changes.len() >= COPY_MIN_ROWS,
            run.is_full(),
        );
        if copy && self.start_copy(client).await? {
            return Ok(());
        }
        if full {
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
    /// Runs a DDL message's statement on green where it stands in the
    /// batch (everything before it sent first), unless it is not
    /// published or was resolved by hand; the mappings of green's tables
    /// are read again afterwards.
    async fn ddl(
        &mut self,
        client: &Client,
        message: &crate::event::LogicalMessage,
        txn: &TxnMeta,
    ) -> Result<(), ApplyError> {
        let decided = self.ddl.decide(message, txn);
        if matches!(decided, Ok(super::ddl::Action::Skip)) {
            return Ok(());
        }
        self.flush(client).await?;
        let resolved = super::ddl::resolved(client, &self.store, &self.slot, message.lsn)
            .await
            .map_err(sql_error(format!(
                "reading teal.ddl (DDL at LSN {})",
                message.lsn
            )))?;
        if resolved {
            tracing::info!(lsn = %message.lsn, "DDL resolved by hand (teal ddl resolve): skipped");
            return Ok(());
        }
        let action = decided.map_err(|stop| ApplyError::Ddl(Box::new(stop)))?;
        super::ddl::run(client, &self.store, &self.slot, message.lsn, &action)
            .await
            .map_err(|stop| ApplyError::Ddl(Box::new(stop)))?;
        if let super::ddl::Action::Run { tag, .. } = &action {
            tracing::info!(lsn = %message.lsn, tag, "DDL from blue applied on green");
        }
        // Green's tables changed: map them again.
        self.last_mapping = None;
        self.targets.clear();
        Ok(())
    }

    async fn close_run(&mut self, client: &Client) -> Result<(), ApplyError> {
        self.queue_pending();
        if self.closed_changes >= super::run::RUN_MAX_CHANGES {
            self.execute_closed(client).await?;
        }
        Ok(())
    }

    /// Statements go to the session only while no COPY is open on it (see
    /// the module's invariant).
    fn debug_assert_no_copy(&self) {
        debug_assert!(
            self.copying.is_none(),
            "a statement was sent behind an open COPY"
        );
    }

    /// Finishes the COPY being streamed, if any.
    async fn finish_copy(&mut self) -> Result<(), ApplyError> {
        if let Some(copying) = self.copying.take() {
            copying.finish().await?;
        }
        Ok(())
    }

    /// Turns the pending insert run into a streaming COPY, when its rows can
    /// travel by COPY; returns whether it did.
    async fn start_copy(&mut self, client: &Client) -> Result<bool, ApplyError> {
        let Some(format) = self.pending.as_ref().and_then(run_format) else {
            // Mixed text and binary values: statements, not COPY.
            return Ok(false);
        };
        let Some(mapping) = self.pending.as_ref().map(|r| Arc::clone(&r.mapping)) else {
            return Ok(false);
        };
        let kind = match format {
            CopyFormat::Text => Kind::CopyText,
            CopyFormat::Binary => Kind::CopyBinary,
        };
        let statement = self
            .statement(client, &mapping, kind, Vec::new(), || {
                sql::copy_in(
                    &mapping.table,
                    &mapping.column_list(),
                    format == CopyFormat::Binary,
                )
            })
            .await?;
        let Some(run) = self.pending.take() else {
            return Ok(false);
        };
        // Everything before this run goes first.
        self.execute_closed(client).await?;
        self.copying = Some(Copying::open(client, &statement, format, run).await?);
        Ok(true)
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
            let plans = match run.op {
                RunOp::Insert => set_based::insert_many(run).into_iter().collect(),
                RunOp::Update | RunOp::Delete => set_based::stretches(run),
            };
            let mut prepared = Vec::with_capacity(plans.len());
            for plan in plans {
                let statement = self.many_statement(client, run, &plan).await?;
                prepared.push(Stretch {
                    arrays: plan.arrays(run),
                    plan,
                    statement,
                });
            }
            stretches.push(prepared);
        }
        let mut items = Vec::new();
        let mut expect = Vec::new();
        for (i, (run, stretches)) in runs.iter().zip(&stretches).enumerate() {
            self.run_items(client, run, i, stretches, &mut items, &mut expect)
                .await?;
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
                        RunOp::Insert => "inserting",
                        RunOp::Update => "updating",
                        RunOp::Delete => "deleting",
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
            .map(|s| s.plan.len() as u64)
            .sum::<u64>();
        Ok(())
    }

    /// The statement for (`mapping`, `kind`, `shape`), from the cache.
    pub(super) async fn statement(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
        kind: Kind,
        shape: Vec<u8>,
        text: impl FnOnce() -> String,
    ) -> Result<Statement, ApplyError> {
        self.debug_assert_no_copy();
        self.statements
            .get(client, mapping, kind, shape, text)
            .await
    }

    /// The INSERT of every column (`ON CONFLICT DO NOTHING` when asked).
    pub(super) async fn insert_statement(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
        skip_conflicts: bool,
    ) -> Result<Statement, ApplyError> {
        let kind = if skip_conflicts {
            Kind::InsertSkipConflict
        } else {
            Kind::Insert
        };
        self.statement(client, mapping, kind, Vec::new(), || {
            sql::insert(
                &mapping.table,
                &mapping.column_list(),
                skip_conflicts,
                mapping.overrides_identity(),
            )
        })
        .await
    }

    /// The set-based statement of `plan`, a stretch of `run`.
    async fn many_statement(
        &mut self,
        client: &Client,
        run: &Run,
        plan: &StretchPlan,
    ) -> Result<Statement, ApplyError> {
        let mapping = &run.mapping;
        let cols = &plan.cols;
        let shape: Vec<u8> = cols
            .iter()
            .flat_map(|&c| (c as u16).to_le_bytes())
            .chain([u8::from(plan.binary)])
            .collect();
        let kind = match run.op {
            RunOp::Insert => Kind::InsertMany,
            RunOp::Update => Kind::UpdateMany,
            RunOp::Delete => Kind::DeleteMany,
        };
        self.statement(client, mapping, kind, shape, || {
            let typed = typed_columns(mapping, cols.iter().copied(), plan.binary);
            match (kind, &mapping.key) {
                (Kind::UpdateMany, Key::Columns(key)) => {
                    let key_at: Vec<usize> = key
                        .iter()
                        .filter_map(|k| cols.iter().position(|c| c == k))
                        .collect();
                    let fixed: Vec<usize> = cols
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| mapping.identity_always[**c])
                        .map(|(i, _)| i)
                        .collect();
                    sql::update_many(&mapping.table, &typed, &key_at, &fixed, plan.binary)
                }
                (Kind::DeleteMany, _) => sql::delete_many(&mapping.table, &typed, plan.binary),
                _ => sql::insert_many(&mapping.table, &typed, mapping.overrides_identity()),
            }
        })
        .await
    }

    /// A run's statements: a set-based statement per stretch, one statement
    /// per change otherwise.
    async fn run_items<'r>(
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
            if let Some(s) = next.next_if(|s| s.plan.start == i) {
                s.queue(changes, run_index, items, expect);
                i = s.plan.end;
                continue;
            }
            let (change, txn) = &changes[i];
            items.push(match &change.kind {
                ChangeKind::Insert { new, .. } => (
                    self.insert_statement(client, &run.mapping, false).await?,
                    new.values().filter_map(Param::from_value).collect(),
                ),
                _ => {
                    self.modify_statement(client, &run.mapping, change, txn)
                        .await?
                }
            });
            expect.push(Expect {
                rows: None,
                through: txn.commit_lsn,
                run: run_index,
            });
            i += 1;
        }
        Ok(())
    }

    /// The UPDATE or DELETE for one change, with its parameters.
    pub(super) async fn modify_statement<'c>(
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
                let statement = self
                    .statement(client, mapping, Kind::Update, key.shape(&set), || {
                        sql::update(
                            &mapping.table,
                            &mapping.set_columns(&set),
                            &key.columns(mapping),
                            key.one_row,
                            mapping.noop_column(),
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
                let statement = self
                    .statement(client, mapping, Kind::Delete, key.shape(&[]), || {
                        sql::delete(&mapping.table, &key.columns(mapping), key.one_row)
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

pub(super) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code().map(|c| c.code()) == Some("23505")
}
