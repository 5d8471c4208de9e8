//! Hand-built relations, mappings and changes for the unit tests of the
//! apply stage's pure planning (no green needed).

use std::sync::Arc;

use bytes::Bytes;

use crate::event::{
    Cell, CellKind, Change, ChangeKind, Column, OldRow, QualifiedName, Relation, ReplicaIdentity,
    RowImage, TxnMeta,
};
use crate::lsn::{Lsn, PgTimestamp, Xid};

use super::target::{Key, Mapping};

/// A column value: text, NULL, unchanged TOAST, binary.
#[derive(Debug, Clone, Copy)]
pub(super) enum V<'a> {
    T(&'a str),
    N,
    U,
    B(&'a [u8]),
}

/// A row image of `values`.
pub(super) fn row(values: &[V<'_>]) -> RowImage {
    let mut data = Vec::new();
    let mut cells = Vec::new();
    for v in values {
        let (kind, bytes): (CellKind, &[u8]) = match v {
            V::T(t) => (CellKind::Text, t.as_bytes()),
            V::N => (CellKind::Null, b""),
            V::U => (CellKind::UnchangedToast, b""),
            V::B(b) => (CellKind::Binary, b),
        };
        cells.push(Cell {
            kind,
            start: data.len() as u32,
            len: bytes.len() as u32,
        });
        data.extend_from_slice(bytes);
    }
    RowImage::from_parts(Bytes::from(data), cells).expect("cells inside the buffer")
}

/// `public.<name>` with columns c0.. (c0 the replica identity key), mapped
/// onto a green table of the same shape found by c0, every column text.
pub(super) fn keyed(name: &str, columns: usize) -> Arc<Mapping> {
    mapping(name, columns, Key::Columns(vec![0]), false)
}

/// Like [`keyed`], with the key and whether green fires triggers on apply.
pub(super) fn mapping(name: &str, columns: usize, key: Key, fires_on_apply: bool) -> Arc<Mapping> {
    let identity = match key {
        Key::FullRow => ReplicaIdentity::Full,
        Key::None => ReplicaIdentity::Nothing,
        Key::Columns(_) => ReplicaIdentity::Default,
    };
    let relation = Arc::new(Relation {
        rel_id: 16384,
        name: QualifiedName {
            namespace: "public".into(),
            name: name.into(),
        },
        replica_identity: identity,
        columns: (0..columns)
            .map(|i| Column {
                name: format!("c{i}"),
                type_oid: 25,
                type_modifier: -1,
                is_key: i == 0 || identity == ReplicaIdentity::Full,
                type_name: None,
            })
            .collect(),
        version: Relation::next_version(),
    });
    let green_pk = match &key {
        Key::Columns(k) => Some(k.clone()),
        _ => None,
    };
    Arc::new(Mapping {
        table: relation.name.quoted(),
        columns: (0..columns).map(|i| format!("\"c{i}\"")).collect(),
        key,
        green_pk,
        text_casts: vec![Some("pg_catalog.text".into()); columns],
        types: vec!["pg_catalog.text".into(); columns],
        text_match: vec![true; columns],
        fires_on_apply,
        identity_always: vec![false; columns],
        binary_elems: vec![Some(25); columns],
        relation,
    })
}

/// A source transaction committed at LSN `n`.
pub(super) fn txn(n: u64) -> Arc<TxnMeta> {
    Arc::new(TxnMeta {
        xid: Xid(n as u32),
        commit_lsn: Lsn(n * 100),
        end_lsn: Lsn(n * 100 + 8),
        commit_ts: PgTimestamp(0),
        origin: None,
        streamed: false,
        change_count: 0,
    })
}

fn change(kind: ChangeKind) -> Change {
    Change { lsn: Lsn(1), kind }
}

/// An insert of `new` into `m`'s table.
pub(super) fn insert(m: &Mapping, new: &[V<'_>]) -> Change {
    change(ChangeKind::Insert {
        relation: Arc::clone(&m.relation),
        new: row(new),
    })
}

/// An update to `new`; `old_key` when the key changed (blue sends it then).
pub(super) fn update(m: &Mapping, new: &[V<'_>], old_key: Option<&[V<'_>]>) -> Change {
    change(ChangeKind::Update {
        relation: Arc::clone(&m.relation),
        old: old_key.map(|o| OldRow::Key(row(o))),
        new: row(new),
    })
}

/// An update of a REPLICA IDENTITY FULL table: the whole old row.
pub(super) fn update_full(m: &Mapping, new: &[V<'_>], old: &[V<'_>]) -> Change {
    change(ChangeKind::Update {
        relation: Arc::clone(&m.relation),
        old: Some(OldRow::Full(row(old))),
        new: row(new),
    })
}

/// A delete of the row with key `old_key` (other columns NULL, as blue sends them).
pub(super) fn delete(m: &Mapping, old_key: &[V<'_>]) -> Change {
    change(ChangeKind::Delete {
        relation: Arc::clone(&m.relation),
        old: OldRow::Key(row(old_key)),
    })
}
