//! Runs: consecutive changes of one operation on one table, and the order
//! a batch's runs are sent in. Pure: nothing here talks to green.
//!
//! ```text
//! changes ──▶ Run { mapping, op, changes } ── closed at another table or operation,
//!                                             or at RUN_MAX_CHANGES / RUN_MAX_BYTES
//! closed runs ──regroup──▶ each table's runs side by side (tables in order of first
//!                          appearance), neighbours of one operation joined, updates a
//!                          later whole-row update of the same row overwrites dropped
//! ```
//!
//! Invariant: each table's changes keep blue's order; only changes of
//! different tables trade places, and only where green runs no trigger or
//! rule on apply.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashSet;

use crate::event::{Change, ChangeKind, TxnMeta, Value};

use super::target::{Key, Mapping};

/// A run is sent once it holds this many changes...
pub(super) const RUN_MAX_CHANGES: usize = 10_000;
/// ...or this many bytes of values.
pub(super) const RUN_MAX_BYTES: usize = 8 * 1024 * 1024;

/// What the changes of a run do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum RunOp {
    Insert,
    Update,
    Delete,
}

/// Consecutive changes of one operation on one table version, each with
/// its source transaction.
pub(super) struct Run {
    pub(super) mapping: Arc<Mapping>,
    pub(super) op: RunOp,
    pub(super) changes: Vec<(Change, Arc<TxnMeta>)>,
    /// Memory the changes hold ([`Change::memory_size`]).
    pub(super) bytes: usize,
}

impl Run {
    /// An empty run.
    pub(super) fn new(mapping: Arc<Mapping>, op: RunOp) -> Run {
        Run {
            mapping,
            op,
            changes: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds a change of the run's table and operation.
    pub(super) fn push(&mut self, change: Change, txn: &Arc<TxnMeta>) {
        self.bytes += change.memory_size();
        self.changes.push((change, Arc::clone(txn)));
    }

    /// Whether the run reached a limit and goes to green now.
    pub(super) fn is_full(&self) -> bool {
        self.changes.len() >= RUN_MAX_CHANGES || self.bytes >= RUN_MAX_BYTES
    }

    /// Whether `mapping` and `op` continue this run.
    pub(super) fn continues(&self, mapping: &Arc<Mapping>, op: RunOp) -> bool {
        self.op == op && Arc::ptr_eq(&self.mapping, mapping)
    }

    /// Commit LSN of the last transaction with changes in the run.
    pub(super) fn through(&self) -> Option<crate::lsn::Lsn> {
        self.changes.last().map(|(_, t)| t.commit_lsn)
    }
}

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
pub(super) fn regroup(runs: Vec<Run>) -> (Vec<Run>, u64) {
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
            Some(last) if last.continues(&run.mapping, run.op) => {
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
    if run.op != RunOp::Update || run.changes.len() < 2 {
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

#[cfg(test)]
mod tests {
    use super::super::fixture::{V, delete, insert, keyed, mapping, txn, update};
    use super::*;

    fn run(mapping: &Arc<Mapping>, op: RunOp, changes: Vec<Change>) -> Run {
        let mut run = Run::new(Arc::clone(mapping), op);
        let t = txn(1);
        for c in changes {
            run.push(c, &t);
        }
        run
    }

    /// The first key value of each change, as text.
    fn ids(run: &Run) -> Vec<String> {
        run.changes
            .iter()
            .map(|(c, _)| {
                let image = match &c.kind {
                    ChangeKind::Insert { new, .. } | ChangeKind::Update { new, .. } => new,
                    ChangeKind::Delete { old, .. } => old.image(),
                    _ => unreachable!(),
                };
                match image.get(0) {
                    Some(Value::Text(t)) => String::from_utf8_lossy(t).into_owned(),
                    other => format!("{other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn each_tables_runs_go_side_by_side_in_their_order() {
        let (a, b) = (keyed("a", 2), keyed("b", 2));
        let runs = vec![
            run(
                &a,
                RunOp::Update,
                vec![update(&a, &[V::T("1"), V::T("x")], None)],
            ),
            run(&b, RunOp::Insert, vec![insert(&b, &[V::T("7"), V::T("y")])]),
            run(
                &a,
                RunOp::Update,
                vec![update(&a, &[V::T("2"), V::T("x")], None)],
            ),
            run(&b, RunOp::Delete, vec![delete(&b, &[V::T("7"), V::N])]),
            run(&a, RunOp::Insert, vec![insert(&a, &[V::T("3"), V::T("x")])]),
        ];
        let (out, dropped) = regroup(runs);
        assert_eq!(dropped, 0);
        let shape: Vec<(&str, RunOp, Vec<String>)> = out
            .iter()
            .map(|r| (r.mapping.table.as_str(), r.op, ids(r)))
            .collect();
        assert_eq!(
            shape,
            [
                (
                    "\"public\".\"a\"",
                    RunOp::Update,
                    vec!["1".into(), "2".into()]
                ),
                ("\"public\".\"a\"", RunOp::Insert, vec!["3".into()]),
                ("\"public\".\"b\"", RunOp::Insert, vec!["7".into()]),
                ("\"public\".\"b\"", RunOp::Delete, vec!["7".into()]),
            ]
        );
    }

    #[test]
    fn runs_stay_as_they_are_where_green_fires_on_apply() {
        let a = keyed("a", 2);
        let b = mapping("b", 2, Key::Columns(vec![0]), true);
        let runs = vec![
            run(
                &a,
                RunOp::Update,
                vec![update(&a, &[V::T("1"), V::T("x")], None)],
            ),
            run(&b, RunOp::Insert, vec![insert(&b, &[V::T("7"), V::T("y")])]),
            run(
                &a,
                RunOp::Update,
                vec![update(&a, &[V::T("1"), V::T("z")], None)],
            ),
        ];
        let (out, dropped) = regroup(runs);
        assert_eq!((out.len(), dropped), (3, 0));
        assert_eq!(out[1].mapping.table, "\"public\".\"b\"");
    }

    #[test]
    fn an_update_overwritten_whole_by_a_later_one_is_dropped() {
        let a = keyed("a", 3);
        let other = keyed("other", 1);
        let runs = vec![
            run(
                &a,
                RunOp::Update,
                vec![
                    // Overwritten whole by the third: dropped.
                    update(&a, &[V::T("1"), V::T("x"), V::T("p")], None),
                    // The later update of row 2 leaves a TOASTed column as
                    // it is: it overwrites nothing, so this one stays.
                    update(&a, &[V::T("2"), V::T("x"), V::T("q")], None),
                    update(&a, &[V::T("1"), V::T("y"), V::T("r")], None),
                    update(&a, &[V::T("2"), V::T("y"), V::U], None),
                ],
            ),
            run(&other, RunOp::Insert, vec![insert(&other, &[V::T("9")])]),
            // Joined with the first run.
            run(
                &a,
                RunOp::Update,
                vec![update(&a, &[V::T("3"), V::T("z"), V::T("s")], None)],
            ),
        ];
        let (out, dropped) = regroup(runs);
        assert_eq!(dropped, 1);
        assert_eq!(ids(&out[0]), ["2", "1", "2", "3"]);
        let ChangeKind::Update { new, .. } = &out[0].changes[2].0.kind else {
            unreachable!()
        };
        assert_eq!(
            new.get(2),
            Some(Value::UnchangedToast),
            "the TOAST update kept"
        );
        assert_eq!(ids(&out[1]), ["9"]);
    }

    #[test]
    fn updates_that_change_their_key_are_never_dropped() {
        let a = keyed("a", 2);
        let moved = update(&a, &[V::T("5"), V::T("x")], Some(&[V::T("1"), V::N]));
        let mut r = run(
            &a,
            RunOp::Update,
            vec![moved, update(&a, &[V::T("5"), V::T("y")], None)],
        );
        assert_eq!(drop_superseded(&mut r), 0);
        assert_eq!(r.changes.len(), 2);
    }

    #[test]
    fn a_run_is_full_at_its_change_or_byte_limit() {
        let a = keyed("a", 2);
        let mut r = Run::new(Arc::clone(&a), RunOp::Insert);
        let t = txn(1);
        for i in 0..RUN_MAX_CHANGES - 1 {
            r.push(insert(&a, &[V::T(&i.to_string()), V::N]), &t);
        }
        assert!(!r.is_full());
        r.push(insert(&a, &[V::T("x"), V::N]), &t);
        assert!(r.is_full());
        let wide = "w".repeat(RUN_MAX_BYTES);
        let mut r = Run::new(Arc::clone(&a), RunOp::Insert);
        r.push(insert(&a, &[V::T("1"), V::T(&wide)]), &t);
        assert!(r.is_full());
        assert!(r.continues(&a, RunOp::Insert) && !r.continues(&a, RunOp::Update));
    }
}
