//! Which changes of a run go to green as one set-based statement, and the
//! arrays that statement carries. Pure: nothing here talks to green.
//!
//! ```text
//! update / delete run ──▶ stretches of >= 16 changes to distinct rows found by key, key
//!                         unchanged, same columns, values text or NULL, every column's
//!                         type converted from text by its input function
//!                         ──▶ UPDATE ... FROM unnest(text[], ..) / DELETE ... USING unnest(..)
//! insert run (regrouped, not streamed by COPY) of >= 16 text rows
//!                         ──▶ INSERT ... SELECT FROM unnest(text[], ..)
//! ```
//!
//! A set-based statement must touch exactly as many rows as its stretch
//! has changes; the writer checks that and replays carefully otherwise.

use std::hash::Hasher;
use std::sync::Arc;

use rustc_hash::{FxHashSet, FxHasher};

use crate::event::{Change, ChangeKind, RowImage, TxnMeta, Value};

use super::param::{text_array, typed_array};
use super::run::{Run, RunOp};
use super::target::{Key, Mapping};

/// Updates or deletes of at least this many distinct rows (and regrouped
/// insert runs of at least this many rows) go in one set-based statement.
pub(super) const SET_MIN_ROWS: usize = 16;

/// Changes `start..end` of a run, applied by one set-based statement that
/// carries columns `cols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StretchPlan {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) cols: Vec<usize>,
    /// The values are binary (pgoutput's binary mode): the statement takes
    /// each column as an array of its own type, not `text[]`.
    pub(super) binary: bool,
}

impl StretchPlan {
    /// The changes it applies.
    pub(super) fn len(&self) -> usize {
        self.end - self.start
    }

    /// One array per column it carries, over `run`'s changes: `text[]`,
    /// or (binary) an array of the column's type.
    pub(super) fn arrays(&self, run: &Run) -> Vec<Vec<u8>> {
        let changes = &run.changes[self.start..self.end];
        if !self.binary {
            return text_arrays(changes, &self.cols);
        }
        self.cols
            .iter()
            .map(|&c| {
                typed_array(
                    run.mapping.binary_elems[c].unwrap_or(0),
                    changes
                        .iter()
                        .map(|(change, _)| match set_image(change)?.get(c) {
                            Some(Value::Binary(b)) => Some(b),
                            _ => None,
                        }),
                )
            })
            .collect()
    }
}

/// The stretches of an update or delete run that go set-based, in order.
pub(super) fn stretches(run: &Run) -> Vec<StretchPlan> {
    if !matches!(run.op, RunOp::Update | RunOp::Delete) {
        return Vec::new();
    }
    let (mapping, changes) = (&run.mapping, &run.changes);
    let mut out = Vec::new();
    let mut i = 0;
    while i < changes.len() {
        let (len, cols) = set_stretch(mapping, &changes[i..]);
        if let Some((cols, binary)) = cols {
            out.push(StretchPlan {
                start: i,
                end: i + len,
                cols,
                binary,
            });
        }
        i += len;
    }
    out
}

/// The whole of an insert run as one set-based INSERT, when it has at
/// least [`SET_MIN_ROWS`] rows whose values are all text or NULL, every
/// column's type converted from text by its input function.
pub(super) fn insert_many(run: &Run) -> Option<StretchPlan> {
    let mapping = &run.mapping;
    let n = mapping.columns.len();
    let fits = run.op == RunOp::Insert
        && run.changes.len() >= SET_MIN_ROWS
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
    fits.then(|| StretchPlan {
        start: 0,
        end: run.changes.len(),
        cols: (0..n).collect(),
        binary: false,
    })
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
pub(super) fn typed_columns(
    mapping: &Mapping,
    cols: impl Iterator<Item = usize>,
    binary: bool,
) -> Vec<(&str, &str)> {
    cols.map(|c| {
        (
            mapping.columns[c].as_str(),
            if binary {
                // The array is of this type: the cast is the identity.
                mapping.types[c].as_str()
            } else {
                mapping.text_casts[c]
                    .as_deref()
                    .unwrap_or("pg_catalog.text")
            },
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
) -> (usize, Option<(Vec<usize>, bool)>) {
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
    // Binary values (pgoutput's binary mode) go as arrays of the columns'
    // own types, when every column carried takes blue's binary value as
    // it is; text values through each type's input function.
    let binary = set_image(first).is_some_and(|image| {
        cols.iter()
            .any(|&c| matches!(image.get(c), Some(Value::Binary(_))))
    });
    let castable = if binary {
        cols.iter()
            .all(|&c| matches!(mapping.binary_elems.get(c), Some(Some(_))))
    } else {
        cols.iter()
            .all(|&c| matches!(mapping.text_casts.get(c), Some(Some(_))))
    };
    if !castable || !key.iter().all(|k| cols.contains(k)) {
        return (1, None);
    }
    // An identity column GENERATED ALWAYS cannot be set: a stretch takes it
    // only in the key (matched, never changed), and needs another column
    // to set.
    let always = |c: &usize| mapping.identity_always.get(*c) == Some(&true);
    if matches!(first.kind, ChangeKind::Update { .. })
        && (cols.iter().any(|c| always(c) && !key.contains(c)) || cols.iter().all(always))
    {
        return (1, None);
    }
    // Most changes that do not fit stop here, before anything is allocated.
    let Some(first_key) = set_row_key(key, &cols, first, binary) else {
        return (1, None);
    };
    // Keys by hash: a collision only ends the stretch early.
    let mut seen = FxHashSet::default();
    seen.insert(first_key);
    let mut n = 1;
    for (change, _) in &changes[1..] {
        let Some(k) = set_row_key(key, &cols, change, binary) else {
            break;
        };
        if !seen.insert(k) {
            break;
        }
        n += 1;
    }
    (n.max(1), (n >= SET_MIN_ROWS).then_some((cols, binary)))
}

/// The hash of the key of a change that fits a set-based statement
/// carrying `cols` (`binary`: of binary values, else of text values).
fn set_row_key(key: &[usize], cols: &[usize], change: &Change, binary: bool) -> Option<u64> {
    fn value(v: Option<Value<'_>>, binary: bool) -> Option<&[u8]> {
        match v {
            Some(Value::Text(t)) if !binary => Some(t),
            Some(Value::Binary(b)) if binary => Some(b),
            _ => None,
        }
    }
    let text = |v| value(v, binary);
    let mut hash = FxHasher::default();
    match &change.kind {
        ChangeKind::Update { old, new, .. } => {
            let mut sent = 0;
            for (i, v) in new.values().enumerate() {
                match v {
                    Value::UnchangedToast => {}
                    Value::Binary(_) if !binary => return None,
                    Value::Text(_) if binary => return None,
                    Value::Text(_) | Value::Binary(_) | Value::Null => {
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

#[cfg(test)]
mod tests {
    use super::super::fixture::{V, delete, insert, keyed, mapping, txn, update, update_full};
    use super::*;

    fn run(m: &Arc<Mapping>, op: RunOp, changes: impl IntoIterator<Item = Change>) -> Run {
        let mut run = Run::new(Arc::clone(m), op);
        let t = txn(1);
        for c in changes {
            run.push(c, &t);
        }
        run
    }

    fn updates(m: &Mapping, keys: impl IntoIterator<Item = usize>) -> Vec<Change> {
        keys.into_iter()
            .map(|k| update(m, &[V::T(&k.to_string()), V::T("v"), V::U], None))
            .collect()
    }

    fn spans(plans: &[StretchPlan]) -> Vec<(usize, usize)> {
        plans.iter().map(|p| (p.start, p.end)).collect()
    }

    #[test]
    fn sixteen_updates_of_distinct_rows_go_set_based_fifteen_do_not() {
        let m = keyed("t", 3);
        let plans = stretches(&run(&m, RunOp::Update, updates(&m, 0..16)));
        assert_eq!(spans(&plans), [(0, 16)]);
        assert_eq!(
            plans[0].cols,
            [0, 1],
            "the unchanged TOAST column is left out"
        );
        assert!(stretches(&run(&m, RunOp::Update, updates(&m, 0..15))).is_empty());
    }

    #[test]
    fn binary_values_go_as_arrays_of_the_columns_types() {
        let m = keyed("t", 3);
        let keys: Vec<String> = (0..16u32).map(|k| k.to_string()).collect();
        let changes: Vec<Change> = keys
            .iter()
            .map(|k| update(&m, &[V::B(k.as_bytes()), V::B(b"\x01"), V::U], None))
            .collect();
        let r = run(&m, RunOp::Update, changes);
        let plans = stretches(&r);
        assert_eq!(spans(&plans), [(0, 16)]);
        assert!(plans[0].binary);
        let arrays = plans[0].arrays(&r);
        // Element type: the column's (text, OID 25, in the fixture), at
        // bytes 8..12 of array_send's format; 16 elements.
        assert_eq!(arrays[0][8..12], 25u32.to_be_bytes());
        assert_eq!(arrays[0][12..16], 16i32.to_be_bytes());
        // A text value among binary ones ends the stretch.
        let mut changes: Vec<Change> = keys
            .iter()
            .map(|k| update(&m, &[V::B(k.as_bytes()), V::B(b"\x01"), V::U], None))
            .collect();
        changes[4] = update(&m, &[V::B(b"4"), V::T("v"), V::U], None);
        assert_eq!(spans(&stretches(&run(&m, RunOp::Update, changes))), []);
    }

    #[test]
    fn a_row_seen_again_ends_the_stretch() {
        let m = keyed("t", 3);
        let keys = (0..20).chain([3]).chain(100..120);
        let plans = stretches(&run(&m, RunOp::Update, updates(&m, keys)));
        assert_eq!(spans(&plans), [(0, 20), (20, 41)]);
    }

    #[test]
    fn key_changes_other_columns_and_binary_values_break_a_stretch() {
        let m = keyed("t", 3);
        let mut changes = updates(&m, 0..16);
        // Row 8 moves to key 1008: blue sends the old key.
        changes[8] = update(
            &m,
            &[V::T("1008"), V::T("v"), V::U],
            Some(&[V::T("8"), V::N, V::N]),
        );
        assert_eq!(spans(&stretches(&run(&m, RunOp::Update, changes))), []);
        let mut changes = updates(&m, 0..40);
        // Another column set (the TOASTed column sent), then a binary value.
        changes[20] = update(&m, &[V::T("20"), V::T("v"), V::T("doc")], None);
        changes[21] = update(&m, &[V::T("21"), V::B(b"\x01"), V::U], None);
        let plans = stretches(&run(&m, RunOp::Update, changes));
        assert_eq!(spans(&plans), [(0, 20), (22, 40)]);
    }

    #[test]
    fn deletes_carry_only_the_key() {
        let m = keyed("t", 3);
        let changes = (0..16).map(|k| delete(&m, &[V::T(&k.to_string()), V::N, V::N]));
        let plans = stretches(&run(&m, RunOp::Delete, changes));
        assert_eq!(
            (spans(&plans), plans[0].cols.clone()),
            (vec![(0, 16)], vec![0])
        );
        let r = run(
            &m,
            RunOp::Delete,
            (0..16).map(|k| delete(&m, &[V::T(&k.to_string()), V::N, V::N])),
        );
        let arrays = plans[0].arrays(&r);
        assert_eq!(arrays.len(), 1, "one text[] per carried column");
    }

    #[test]
    fn tables_without_key_columns_or_text_casts_stay_row_by_row() {
        let full = mapping("f", 2, Key::FullRow, false);
        let changes = (0..20).map(|k| {
            let k = k.to_string();
            update_full(&full, &[V::T(&k), V::T("new")], &[V::T(&k), V::T("old")])
        });
        assert!(stretches(&run(&full, RunOp::Update, changes)).is_empty());
        let m = keyed("t", 3);
        let mut no_cast = (*m).clone();
        no_cast.text_casts[1] = None;
        let no_cast = Arc::new(no_cast);
        assert!(stretches(&run(&no_cast, RunOp::Update, updates(&no_cast, 0..20))).is_empty());
    }

    #[test]
    fn inserts_go_set_based_when_every_value_is_text() {
        let m = keyed("t", 2);
        let rows = |n: usize| {
            (0..n)
                .map(|k| insert(&m, &[V::T(&k.to_string()), V::N]))
                .collect::<Vec<_>>()
        };
        let plan = insert_many(&run(&m, RunOp::Insert, rows(16))).expect("16 text rows");
        assert_eq!((plan.start, plan.end, plan.cols), (0, 16, vec![0, 1]));
        assert_eq!(insert_many(&run(&m, RunOp::Insert, rows(15))), None);
        let mut binary = rows(20);
        binary[3] = insert(&m, &[V::B(b"\x00"), V::N]);
        assert_eq!(insert_many(&run(&m, RunOp::Insert, binary)), None);
    }
}
