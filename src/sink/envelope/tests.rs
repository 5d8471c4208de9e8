//! The records, parsed back: fields, escapes, keys, transaction records.

use super::*;
use crate::event::{Cell, CellKind, Column, QualifiedName, ReplicaIdentity};
use crate::lsn::{Lsn, Xid};
use bytes::Bytes;
use std::sync::Arc;

/// A row image of `cells` (a kind and its bytes; none for NULL).
fn cells(cells: &[(CellKind, &[u8])]) -> RowImage {
    let mut data = Vec::new();
    let mut out = Vec::new();
    for &(kind, bytes) in cells {
        out.push(Cell {
            kind,
            start: data.len() as u32,
            len: bytes.len() as u32,
        });
        data.extend_from_slice(bytes);
    }
    RowImage::from_parts(Bytes::from(data), out).unwrap()
}

/// A row image of text values (`None`: NULL).
fn image(values: &[Option<&str>]) -> RowImage {
    let values: Vec<(CellKind, &[u8])> = values
        .iter()
        .map(|v| match v {
            None => (CellKind::Null, &[][..]),
            Some(s) => (CellKind::Text, s.as_bytes()),
        })
        .collect();
    cells(&values)
}

/// A row change's record as JSON text: (key, value).
fn record_of(
    source: &Source,
    meta: &TxnMeta,
    change: &Change,
    order: Order,
    now: PgTimestamp,
    primary_key: Option<&[usize]>,
) -> Option<(Option<String>, String)> {
    let mut out = Encoded::default();
    let has_key = change_into(source, meta, change, order, now, primary_key, &mut out)?;
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap_or_default();
    Some((has_key.then(|| text(out.key)), text(out.value)))
}

fn parsed(record: Option<(Option<String>, String)>) -> (Option<Json>, Json) {
    let (key, value) = record.expect("a row change");
    (
        key.map(|k| serde_json::from_str(&k).unwrap()),
        serde_json::from_str(&value).unwrap(),
    )
}

/// A table of `columns` (name, type OID, replica identity key).
fn table(namespace: &str, name: &str, columns: &[(&str, u32, bool)]) -> Arc<Relation> {
    Arc::new(Relation {
        rel_id: 1,
        name: QualifiedName {
            namespace: namespace.into(),
            name: name.into(),
        },
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|&(name, type_oid, is_key)| Column {
                name: name.into(),
                type_oid,
                type_modifier: -1,
                is_key,
                type_name: None,
            })
            .collect(),
        version: Relation::next_version(),
    })
}

fn relation() -> Arc<Relation> {
    table(
        "public",
        "acct",
        &[
            ("id", 23, true),
            ("balance", 1700, false),
            ("ok", 16, false),
            ("doc", 3802, false),
            ("f", 701, false),
            ("at", 1184, false),
        ],
    )
}

fn meta() -> TxnMeta {
    TxnMeta {
        xid: Xid(571),
        commit_lsn: Lsn(53195832),
        end_lsn: Lsn(53195900),
        commit_ts: PgTimestamp::from_system_time(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
        ),
        origin: None,
        streamed: false,
        change_count: 1,
    }
}

#[test]
fn insert_update_delete_records() {
    let rel = relation();
    let source = Source {
        name: "teal".into(),
        db: "bank".into(),
    };
    let new = image(&[
        Some("7"),
        Some("10.50"),
        Some("t"),
        Some("{\"a\": [1, 2]}"),
        Some("NaN"),
        Some("2026-01-02 03:04:05.6+00"),
    ]);
    let change = Change {
        lsn: Lsn(53195800),
        kind: ChangeKind::Insert {
            relation: Arc::clone(&rel),
            new: new.clone(),
        },
    };
    let order = Order {
        total: 3,
        in_table: 2,
    };
    let (key, value) = parsed(record_of(
        &source,
        &meta(),
        &change,
        order,
        PgTimestamp(0),
        None,
    ));
    assert_eq!(key, Some(json!({ "id": 7 })));
    assert_eq!(value["op"], "c");
    assert_eq!(value["before"], Json::Null);
    assert_eq!(
        value["after"],
        json!({ "id": 7, "balance": "10.50", "ok": true, "doc": { "a": [1, 2] }, "f": "NaN", "at": "2026-01-02 03:04:05.6+00" })
    );
    assert_eq!(value["source"]["ts_ms"], 1_700_000_000_123i64);
    assert_eq!(value["source"]["txId"], 571);
    assert_eq!(value["source"]["lsn"], 53195800);
    assert_eq!(value["source"]["sequence"], "[\"53195832\",\"53195800\"]");
    assert_eq!(value["source"]["table"], "acct");
    assert_eq!(value["transaction"]["id"], "571:53195832");
    assert_eq!(value["transaction"]["total_order"], 3);
    assert_eq!(value["transaction"]["data_collection_order"], 2);

    // Update leaving a TOASTed column unsent: Debezium's placeholder.
    let mut cells = new.cells().to_vec();
    cells[3] = Cell {
        kind: CellKind::UnchangedToast,
        start: 0,
        len: 0,
    };
    let toasted = RowImage::from_parts(new.buffer().clone(), cells).unwrap();
    let update = Change {
        lsn: Lsn(53195810),
        kind: ChangeKind::Update {
            relation: Arc::clone(&rel),
            old: None,
            new: toasted,
        },
    };
    let (_, value) = parsed(record_of(
        &source,
        &meta(),
        &update,
        order,
        PgTimestamp(0),
        None,
    ));
    assert_eq!(value["op"], "u");
    assert_eq!(value["after"]["doc"], UNAVAILABLE);

    let delete = Change {
        lsn: Lsn(53195820),
        kind: ChangeKind::Delete {
            relation: rel,
            old: OldRow::Key(image(&[Some("7"), None, None, None, None, None])),
        },
    };
    let (key, value) = parsed(record_of(
        &source,
        &meta(),
        &delete,
        order,
        PgTimestamp(0),
        None,
    ));
    assert_eq!(key, Some(json!({ "id": 7 })));
    assert_eq!(value["op"], "d");
    assert_eq!(value["before"], json!({ "id": 7 }));
    assert_eq!(value["after"], Json::Null);

    // Buffers reused from record to record hold only the last one.
    let mut out = super::Encoded::default();
    let at = PgTimestamp(0);
    change_into(&source, &meta(), &change, order, at, None, &mut out).unwrap();
    assert!(change_into(&source, &meta(), &delete, order, at, None, &mut out).unwrap());
    let reused: Json = serde_json::from_slice(&out.value).unwrap();
    assert_eq!(reused, value);
    let key: Json = serde_json::from_slice(&out.key).unwrap();
    assert_eq!(key, json!({ "id": 7 }));
}

#[test]
fn a_record_is_the_whole_debezium_envelope() {
    // Names and values that need escaping, invalid UTF-8, binary.
    let rel = table(
        "s\"q",
        "t\tab",
        &[
            ("k\"ey", 20, true),
            ("n\nl", 25, false),
            ("bad", 25, false),
            ("raw", 17, false),
            ("f", 700, false),
            ("j", 114, false),
            ("b", 16, false),
            ("i", 23, false),
        ],
    );
    let text = CellKind::Text;
    let new = cells(&[
        (text, b"-9000000000"),
        (text, "caf\u{e9} \"\\ \u{1}\u{7f}".as_bytes()),
        (text, b"a\xffb"),
        (CellKind::Binary, b"\x00\x01"),
        (text, b"1.5"),
        (text, b" {\"x\" : [1, \"\\u00e9\"]} "),
        (text, b"f"),
        (text, b"12x"),
    ]);
    let change = Change {
        lsn: Lsn(53195800),
        kind: ChangeKind::Insert { relation: rel, new },
    };
    let source = Source {
        name: "te\"al".into(),
        db: "b\u{e9}nk".into(),
    };
    let order = Order {
        total: 3,
        in_table: 2,
    };
    let now = PgTimestamp::from_system_time(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_800_000_000_456),
    );
    let (key, value) = parsed(record_of(&source, &meta(), &change, order, now, None));
    assert_eq!(key, Some(json!({ "k\"ey": -9_000_000_000i64 })));
    let expected = json!({
        "before": null,
        "after": {
            "k\"ey": -9_000_000_000i64,
            "n\nl": "caf\u{e9} \"\\ \u{1}\u{7f}",
            "bad": "a\u{fffd}b",
            "raw": { "binary_base64": "AAE=" },
            "f": 1.5,
            "j": { "x": [1, "\u{e9}"] },
            "b": false,
            "i": "12x",
        },
        "source": {
            "version": env!("CARGO_PKG_VERSION"),
            "connector": "postgresql",
            "name": "te\"al",
            "ts_ms": 1_700_000_000_123i64,
            "db": "b\u{e9}nk",
            "schema": "s\"q",
            "table": "t\tab",
            "txId": 571,
            "lsn": 53195800,
            "sequence": "[\"53195832\",\"53195800\"]",
        },
        "op": "c",
        "ts_ms": 1_800_000_000_456i64,
        "transaction": {
            "id": "571:53195832",
            "total_order": 3,
            "data_collection_order": 2,
        },
    });
    assert_eq!(value, expected);
    let ChangeKind::Insert { relation, .. } = &change.kind else {
        unreachable!()
    };
    let truncated: Json =
        serde_json::from_str(&truncate(&source, &meta(), &change, relation, order, now)).unwrap();
    let mut expected_truncate = expected;
    expected_truncate["after"] = Json::Null;
    expected_truncate["op"] = json!("t");
    assert_eq!(truncated, expected_truncate);
}

#[test]
fn transaction_records_count_events_per_table() {
    let end = end(
        &meta(),
        &[("public.a".into(), 2), ("public.b".into(), 1)],
        PgTimestamp(0),
    );
    assert_eq!(end["status"], "END");
    assert_eq!(end["event_count"], 3);
    assert_eq!(end["data_collections"][1]["data_collection"], "public.b");
    assert_eq!(begin(&meta(), PgTimestamp(0))["status"], "BEGIN");
}
