//! Debezium's PostgreSQL connector envelope (JSON, schemaless), so the
//! tools that read Debezium topics read teal's.
//!
//! ```text
//! key:   {"id": 7}                      (replica identity key columns; null without one)
//! value: {"before": {..}|null, "after": {..}|null,
//!         "source": {"version","connector":"postgresql","name","ts_ms","db",
//!                    "schema","table","txId","lsn","sequence"},
//!         "op": "c|u|d|t", "ts_ms",
//!         "transaction": {"id","total_order","data_collection_order"}}
//! ```
//!
//! Values are typed where the type is unambiguous: integers as numbers,
//! booleans, json/jsonb as nested JSON, finite floats as numbers; every
//! other value (numeric, timestamps in ISO-8601 as blue printed them with
//! `DateStyle = ISO`, arrays, NaN/Infinity, ...) is the text blue sent.
//! An unchanged TOASTed column that blue did not send is
//! [`UNAVAILABLE`] (Debezium's placeholder). Binary-format values (teal
//! stream --binary) are `{"binary_base64": ..}`.

use serde_json::{Value as Json, json};

use crate::event::{Change, ChangeKind, Column, OldRow, Relation, RowImage, TxnMeta, Value};
use crate::lsn::PgTimestamp;

/// Debezium's placeholder for a TOASTed value the change did not carry.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// Connector fields the records carry.
#[derive(Debug, Clone)]
pub struct Source {
    /// Logical server name (`source.name`): the topic prefix.
    pub name: String,
    /// Blue's database.
    pub db: String,
}

/// Position of a change inside its transaction.
#[derive(Debug, Clone, Copy)]
pub struct Order {
    /// 1-based, over the whole transaction.
    pub total: u64,
    /// 1-based, within its table in the transaction.
    pub in_table: u64,
}

/// Debezium's transaction id: `txId:commitLsn` (the LSN as a number).
pub fn transaction_id(meta: &TxnMeta) -> String {
    TransactionId::of(meta).to_string()
}

/// The transaction topic's record key (as Debezium keys it).
pub fn transaction_key(meta: &TxnMeta) -> Json {
    json!({ "id": transaction_id(meta) })
}

fn ms(ts: PgTimestamp) -> i64 {
    ts.unix_micros().div_euclid(1000)
}

/// JSON text written straight into a buffer: the records' fixed parts are
/// byte literals, and only names and values are escaped (where they need
/// it). Each record goes through here, so it is not built through serde's
/// per-field machinery (escaping every constant key, formatting numbers
/// through `fmt`).
mod write {
    use super::{Column, Relation, RowImage, UNAVAILABLE, Value};

    /// `s` as a JSON string. Most names and values need no escaping: they
    /// are copied as they are after one pass that the compiler vectorizes;
    /// the others go through serde_json's escaping.
    pub(super) fn string(out: &mut Vec<u8>, s: &str) {
        let plain = !s.bytes().fold(false, |any, b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if plain {
            out.reserve(s.len() + 2);
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        } else {
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        }
    }

    /// A number (or any value serde_json writes without a map).
    pub(super) fn number(out: &mut Vec<u8>, n: impl serde::Serialize) {
        // Writing into a Vec cannot fail; numbers always serialize.
        let _ = serde_json::to_writer(&mut *out, &n);
    }

    /// One column's value, typed where the type is unambiguous (see the
    /// module documentation).
    pub(super) fn value(out: &mut Vec<u8>, column: &Column, value: Value<'_>) {
        use base64::Engine;
        let text = match value {
            Value::Null => return out.extend_from_slice(b"null"),
            Value::UnchangedToast => return string(out, UNAVAILABLE),
            Value::Binary(b) => {
                out.extend_from_slice(b"{\"binary_base64\":\"");
                let encoded = base64::engine::general_purpose::STANDARD.encode(b);
                out.extend_from_slice(encoded.as_bytes());
                return out.extend_from_slice(b"\"}");
            }
            Value::Text(t) => match std::str::from_utf8(t) {
                Ok(s) => std::borrow::Cow::Borrowed(s),
                Err(_) => String::from_utf8_lossy(t),
            },
        };
        match column.type_oid {
            // int2, int4, int8, oid
            21 | 23 | 20 | 26 => {
                if let Ok(n) = text.parse::<i64>() {
                    return number(out, n);
                }
            }
            // bool
            16 => match text.as_ref() {
                "t" => return out.extend_from_slice(b"true"),
                "f" => return out.extend_from_slice(b"false"),
                _ => {}
            },
            // float4, float8: finite ones (NaN and Infinity are not JSON numbers)
            700 | 701 => {
                if let Some(f) = text.parse::<f64>().ok().filter(|f| f.is_finite()) {
                    return number(out, f);
                }
            }
            // json, jsonb: nested as they are (checked, not rebuilt)
            114 | 3802 => {
                if let Ok(raw) = serde_json::from_str::<&serde_json::value::RawValue>(&text) {
                    return out.extend_from_slice(raw.get().as_bytes());
                }
            }
            _ => {}
        }
        string(out, &text);
    }

    /// The columns at positions `columns` as an object keyed by name.
    pub(super) fn row(
        out: &mut Vec<u8>,
        relation: &Relation,
        image: &RowImage,
        columns: impl Iterator<Item = usize>,
    ) {
        out.push(b'{');
        let mut first = true;
        for i in columns {
            let (Some(column), Some(v)) = (relation.columns.get(i), image.get(i)) else {
                continue;
            };
            if !first {
                out.push(b',');
            }
            first = false;
            string(out, &column.name);
            out.push(b':');
            value(out, column, v);
        }
        out.push(b'}');
    }

    /// A row image as an object keyed by column name (`key_only`: the
    /// replica identity columns only), or `null`.
    pub(super) fn image(out: &mut Vec<u8>, relation: &Relation, image: Option<(&RowImage, bool)>) {
        match image {
            None => out.extend_from_slice(b"null"),
            Some((image, key_only)) => row(
                out,
                relation,
                image,
                (0..relation.columns.len()).filter(|&i| !key_only || relation.columns[i].is_key),
            ),
        }
    }
}

/// Debezium's transaction id (see [`transaction_id`]).
struct TransactionId(u32, u64);

impl TransactionId {
    fn of(meta: &TxnMeta) -> TransactionId {
        TransactionId(meta.xid.0, meta.commit_lsn.0)
    }
}

impl std::fmt::Display for TransactionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.0, self.1)
    }
}

/// The record key: the row's primary key. `primary_key` gives its
/// columns' positions when blue's replica identity is not the primary key
/// (FULL, NOTHING or another unique index: looked up in blue's catalog);
/// otherwise the replica identity columns are the key, and a table
/// without any has none. Written into `buf`; false (and `buf` left
/// empty) when there is no key.
fn key_into(
    relation: &Relation,
    image: &RowImage,
    primary_key: Option<&[usize]>,
    buf: &mut Vec<u8>,
) -> bool {
    use crate::event::ReplicaIdentity;
    buf.clear();
    if let Some(columns) = primary_key.filter(|c| !c.is_empty()) {
        write::row(buf, relation, image, columns.iter().copied());
        return true;
    }
    match relation.replica_identity {
        ReplicaIdentity::Default | ReplicaIdentity::Index
            if relation.columns.iter().any(|c| c.is_key) =>
        {
            write::image(buf, relation, Some((image, true)));
            true
        }
        _ => false,
    }
}

/// A record's key and value as JSON text, in buffers reused from record
/// to record.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The key (empty without one).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

/// A row change's record as JSON text into `out`: `Some(true)` with a
/// key, `Some(false)` without; `None` for changes that are not row changes
/// (truncate: see [`truncate`]; messages).
pub fn change_into(
    source: &Source,
    meta: &TxnMeta,
    change: &Change,
    order: Order,
    now: PgTimestamp,
    primary_key: Option<&[usize]>,
    out: &mut Encoded,
) -> Option<bool> {
    let (relation, op, before, after, key_image) = match &change.kind {
        ChangeKind::Insert { relation, new } => (relation, "c", None, Some(new), new),
        ChangeKind::Update { relation, old, new } => {
            // The key comes from the old image when blue sent one (the key
            // changed, or REPLICA IDENTITY FULL): the record goes where the
            // old key's records went.
            let key_image = match old {
                Some(OldRow::Key(o) | OldRow::Full(o)) => o,
                None => new,
            };
            (relation, "u", old.as_ref(), Some(new), key_image)
        }
        ChangeKind::Delete { relation, old } => (relation, "d", Some(old), None, old.image()),
        ChangeKind::Truncate { .. } | ChangeKind::Message(_) => return None,
    };
    let before = before.map(|o| match o {
        OldRow::Full(image) => (image, false),
        OldRow::Key(image) => (image, true),
    });
    let after = after.map(|image| (image, false));
    envelope_into(
        &mut out.value,
        source,
        meta,
        relation,
        change,
        op,
        [before, after],
        order,
        now,
    );
    Some(key_into(relation, key_image, primary_key, &mut out.key))
}

/// A TRUNCATE's record for one of its tables (op `t`, no key), as JSON text.
pub fn truncate(
    source: &Source,
    meta: &TxnMeta,
    change: &Change,
    relation: &Relation,
    order: Order,
    now: PgTimestamp,
) -> String {
    let mut out = Vec::new();
    envelope_into(
        &mut out,
        source,
        meta,
        relation,
        change,
        "t",
        [None, None],
        order,
        now,
    );
    // Every part written is UTF-8 (values went through `str`).
    String::from_utf8(out).unwrap_or_default()
}

/// The whole value record into `out` (cleared first), fields in
/// Debezium's order (the module documentation); `images`: before and
/// after, each with whether it holds only the key columns.
#[allow(clippy::too_many_arguments)]
fn envelope_into(
    out: &mut Vec<u8>,
    source: &Source,
    meta: &TxnMeta,
    relation: &Relation,
    change: &Change,
    op: &'static str,
    images: [Option<(&RowImage, bool)>; 2],
    order: Order,
    now: PgTimestamp,
) {
    use write::{number, string};
    let [before, after] = images;
    out.clear();
    out.extend_from_slice(b"{\"before\":");
    write::image(out, relation, before);
    out.extend_from_slice(b",\"after\":");
    write::image(out, relation, after);
    out.extend_from_slice(
        concat!(
            ",\"source\":{\"version\":\"",
            env!("CARGO_PKG_VERSION"),
            "\",\"connector\":\"postgresql\",\"name\":"
        )
        .as_bytes(),
    );
    string(out, &source.name);
    out.extend_from_slice(b",\"ts_ms\":");
    number(out, ms(meta.commit_ts));
    out.extend_from_slice(b",\"db\":");
    string(out, &source.db);
    out.extend_from_slice(b",\"schema\":");
    string(out, &relation.name.namespace);
    out.extend_from_slice(b",\"table\":");
    string(out, &relation.name.name);
    out.extend_from_slice(b",\"txId\":");
    number(out, meta.xid.0);
    out.extend_from_slice(b",\"lsn\":");
    number(out, change.lsn.0);
    // Debezium: [last commit LSN, this change's LSN], as strings, in a string.
    out.extend_from_slice(b",\"sequence\":\"[\\\"");
    number(out, meta.commit_lsn.0);
    out.extend_from_slice(b"\\\",\\\"");
    number(out, change.lsn.0);
    out.extend_from_slice(b"\\\"]\"},\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(b"\",\"ts_ms\":");
    number(out, ms(now));
    out.extend_from_slice(b",\"transaction\":{\"id\":\"");
    number(out, meta.xid.0);
    out.push(b':');
    number(out, meta.commit_lsn.0);
    out.extend_from_slice(b"\",\"total_order\":");
    number(out, order.total);
    out.extend_from_slice(b",\"data_collection_order\":");
    number(out, order.in_table);
    out.extend_from_slice(b"}}");
}

/// The transaction topic's BEGIN record.
pub fn begin(meta: &TxnMeta, now: PgTimestamp) -> Json {
    json!({
        "status": "BEGIN",
        "id": transaction_id(meta),
        "event_count": Json::Null,
        "data_collections": Json::Null,
        "ts_ms": ms(now),
    })
}

/// The transaction topic's key for ledger records: one key per slot, so
/// a compacted topic keeps each slot's latest head.
pub fn ledger_key(slot: &str) -> Json {
    json!({ "ledger": slot })
}

/// The transaction topic's LEDGER record: a row green's `teal.ledger`
/// committed (every field its hash covers), so the chain's head is kept
/// outside green too (`teal audit verify` recomputes the chain on green).
pub fn ledger(head: &crate::progress::LedgerHead, now: PgTimestamp) -> Json {
    json!({
        "status": "LEDGER",
        "slot": head.slot,
        "first_lsn": head.first_lsn.to_string(),
        "last_lsn": head.last_lsn.to_string(),
        "transactions": head.transactions,
        "changes": head.changes,
        "batch_sha256": head.batch_sha256,
        "prev_sha256": head.prev_sha256,
        "sha256": head.sha256,
        "ts_ms": ms(now),
    })
}

/// The transaction topic's END record: events per table.
pub fn end(meta: &TxnMeta, counts: &[(String, u64)], now: PgTimestamp) -> Json {
    json!({
        "status": "END",
        "id": transaction_id(meta),
        "event_count": counts.iter().map(|c| c.1).sum::<u64>(),
        "data_collections": counts
            .iter()
            .map(|(name, n)| json!({ "data_collection": name, "event_count": n }))
            .collect::<Vec<_>>(),
        "ts_ms": ms(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Cell, CellKind, QualifiedName, ReplicaIdentity};
    use crate::lsn::{Lsn, Xid};
    use bytes::Bytes;
    use std::sync::Arc;

    fn image(values: &[Option<&str>]) -> RowImage {
        let mut data = Vec::new();
        let mut cells = Vec::new();
        for v in values {
            match v {
                None => cells.push(Cell {
                    kind: CellKind::Null,
                    start: 0,
                    len: 0,
                }),
                Some(s) => {
                    cells.push(Cell {
                        kind: CellKind::Text,
                        start: data.len() as u32,
                        len: s.len() as u32,
                    });
                    data.extend_from_slice(s.as_bytes());
                }
            }
        }
        RowImage::from_parts(Bytes::from(data), cells).unwrap()
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
        let mut data = Vec::new();
        let mut cells = Vec::new();
        let texts: [&[u8]; 8] = [
            b"-9000000000",
            "caf\u{e9} \"\\ \u{1}\u{7f}".as_bytes(),
            b"a\xffb",
            b"\x00\x01",
            b"1.5",
            b" {\"x\" : [1, \"\\u00e9\"]} ",
            b"f",
            b"12x",
        ];
        for (i, t) in texts.iter().enumerate() {
            cells.push(Cell {
                kind: if i == 3 {
                    CellKind::Binary
                } else {
                    CellKind::Text
                },
                start: data.len() as u32,
                len: t.len() as u32,
            });
            data.extend_from_slice(t);
        }
        let new = RowImage::from_parts(Bytes::from(data), cells).unwrap();
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
            serde_json::from_str(&truncate(&source, &meta(), &change, relation, order, now))
                .unwrap();
        let mut expected_truncate = expected;
        expected_truncate["after"] = Json::Null;
        expected_truncate["op"] = json!("t");
        assert_eq!(truncated, expected_truncate);
    }

    proptest::proptest! {
        /// Strings are written exactly as serde_json writes them, whether
        /// they need escaping or not.
        #[test]
        fn strings_are_written_as_serde_json_writes_them(s in "(\\PC|[\\x00-\\x1f\"\\\\\\x7f])*") {
            let mut out = b"x".to_vec();
            write::string(&mut out, &s);
            let serde = serde_json::to_string(&s).unwrap();
            proptest::prop_assert_eq!(&out[1..], serde.as_bytes());
        }
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
}
