//! How one row is found on green: the key of an update, a delete or a
//! conflicting insert, as columns with their match and the values to bind.
//! Pure: nothing here talks to green.
//!
//! ```text
//! Key::Columns (replica identity, or green's primary key under FULL) ──▶ col = $n
//! Key::FullRow (FULL, no key on green) ──▶ col::text = $n::text (col = $n::type where green's text
//!                                           cast is not the output text) / col IS NULL, one row
//! ```

use crate::event::{OldRow, RowImage, TxnMeta, Value};
use crate::lsn::Lsn;

use super::ApplyError;
use super::param::Param;
use super::sql::{KeyColumn, Match};
use super::target::{Key, Mapping};

/// A key to find one row: columns with how they match, and the values.
#[derive(Debug)]
pub(super) struct RowKey<'a> {
    pub(super) matches: Vec<(usize, Match)>,
    pub(super) params: Vec<Param<'a>>,
    /// The match may fit several rows: change one of them (whole-row identity).
    pub(super) one_row: bool,
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

    /// Statement shape: the columns `set`, then each key column and its match.
    pub(super) fn shape(&self, set: &[usize]) -> Vec<u8> {
        let mut shape = Vec::with_capacity(2 * set.len() + 3 * self.matches.len() + 2);
        for &i in set {
            shape.extend_from_slice(&(i as u16).to_le_bytes());
        }
        shape.extend_from_slice(&[0xff, 0xff]);
        for (i, m) in &self.matches {
            shape.extend_from_slice(&(*i as u16).to_le_bytes());
            shape.push(*m as u8);
        }
        shape.push(u8::from(self.one_row));
        shape
    }

    /// Green's (column, type, match) triples, for statement text.
    pub(super) fn columns<'m>(&self, mapping: &'m Mapping) -> Vec<KeyColumn<'m>> {
        self.matches
            .iter()
            .map(|(i, m)| (mapping.columns[*i].as_str(), mapping.types[*i].as_str(), *m))
            .collect()
    }
}

/// The key of the row an update or delete acts on.
pub(super) fn row_key<'a>(
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
            Ok(full_row_key(mapping, old))
        }
        Key::None => Err(ApplyError::NoIdentity {
            table: mapping.name().clone(),
            lsn,
        }),
    }
}

/// Every column of `row` compared as text (which works for types without
/// an equality operator, like json or point), or with the type's `=` where
/// green's text cast is not the output text blue sent
/// ([`Mapping::text_match`]); unchanged-TOAST values are left out of the
/// match.
fn full_row_key<'a>(mapping: &Mapping, row: &'a RowImage) -> RowKey<'a> {
    let mut key = RowKey::with_capacity(row.len(), true);
    for (i, v) in row.values().enumerate() {
        let text = if mapping.text_match.get(i).copied().unwrap_or(true) {
            Match::Text
        } else {
            Match::Equal
        };
        key.push(i, v, text);
    }
    key
}

/// The key of green's row an insert collides with: green's primary key when
/// blue sends its columns, else blue's identity, else the whole row.
pub(super) fn insert_key<'a>(mapping: &Mapping, new: Option<&'a RowImage>) -> Option<RowKey<'a>> {
    let new = new?;
    let cols = match (&mapping.green_pk, &mapping.key) {
        (Some(pk), _) => pk.clone(),
        (None, Key::Columns(cols)) => cols.clone(),
        _ => return Some(full_row_key(mapping, new)),
    };
    let mut key = RowKey::with_capacity(cols.len(), false);
    for i in cols {
        if !key.push(i, new.get(i)?, Match::Equal) {
            return None;
        }
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{V, keyed, mapping, row, txn};
    use super::*;

    #[test]
    fn a_changed_key_is_found_by_its_old_value() {
        let m = keyed("t", 2);
        let old = OldRow::Key(row(&[V::T("1"), V::N]));
        let new = row(&[V::T("2"), V::T("x")]);
        let key = row_key(&m, Some(&old), Some(&new), Lsn(1), &txn(1)).unwrap();
        assert_eq!(key.matches, [(0, Match::Equal)]);
        assert!(matches!(key.params[..], [Param::Text(b"1")]));
        let same = row_key(&m, None, Some(&new), Lsn(1), &txn(1)).unwrap();
        assert!(
            matches!(same.params[..], [Param::Text(b"2")]),
            "unchanged: the new value"
        );
        assert_eq!(
            key.columns(&m),
            [("\"c0\"", "pg_catalog.text", Match::Equal)]
        );
    }

    #[test]
    fn a_key_blue_did_not_send_is_an_error_naming_the_column() {
        let m = keyed("t", 2);
        let new = row(&[V::U, V::T("x")]);
        let err = row_key(&m, None, Some(&new), Lsn(1), &txn(1)).unwrap_err();
        assert!(
            err.to_string()
                .contains("blue did not send key column \"c0\""),
            "{err}"
        );
        let none = mapping("n", 2, Key::None, false);
        assert!(matches!(
            row_key(&none, None, Some(&new), Lsn(1), &txn(1)),
            Err(ApplyError::NoIdentity { .. })
        ));
    }

    #[test]
    fn a_whole_row_key_compares_text_and_nulls_and_skips_unsent_toast() {
        let m = mapping("f", 4, Key::FullRow, false);
        let old = OldRow::Full(row(&[V::T("1"), V::N, V::U, V::B(b"\x01")]));
        let key = row_key(&m, Some(&old), None, Lsn(1), &txn(1)).unwrap();
        assert!(key.one_row);
        assert_eq!(
            key.matches,
            [(0, Match::Text), (1, Match::Null), (3, Match::Equal)]
        );
        assert_eq!(key.params.len(), 2);
        // A type whose text cast is not its output text (boolean, char(n),
        // inet): compared with its own =.
        let mut bool_first = (*m).clone();
        bool_first.text_match[0] = false;
        let key = row_key(&bool_first, Some(&old), None, Lsn(1), &txn(1)).unwrap();
        assert_eq!(key.matches[0], (0, Match::Equal));
        let only_key = OldRow::Key(row(&[V::T("1"), V::N, V::N, V::N]));
        assert!(row_key(&m, Some(&only_key), None, Lsn(1), &txn(1)).is_err());
    }

    #[test]
    fn shapes_tell_apart_set_columns_matches_and_one_row() {
        let m = mapping("f", 2, Key::FullRow, false);
        let a = OldRow::Full(row(&[V::T("1"), V::T("x")]));
        let b = OldRow::Full(row(&[V::T("1"), V::N]));
        let ka = row_key(&m, Some(&a), None, Lsn(1), &txn(1)).unwrap();
        let kb = row_key(&m, Some(&b), None, Lsn(1), &txn(1)).unwrap();
        assert_ne!(ka.shape(&[]), kb.shape(&[]));
        assert_ne!(ka.shape(&[0]), ka.shape(&[1]));
    }

    #[test]
    fn an_insert_conflict_is_found_by_greens_primary_key() {
        let m = keyed("t", 2);
        let new = row(&[V::T("7"), V::T("x")]);
        let key = insert_key(&m, Some(&new)).unwrap();
        assert_eq!(
            (key.matches.clone(), key.one_row),
            (vec![(0, Match::Equal)], false)
        );
        let full = mapping("f", 2, Key::FullRow, false);
        assert!(insert_key(&full, Some(&new)).unwrap().one_row);
    }
}
