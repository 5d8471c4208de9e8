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

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
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

/// One column's value, written as typed JSON (see the module docs).
struct Typed<'a> {
    column: &'a Column,
    value: Value<'a>,
}

impl Serialize for Typed<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        let text = match self.value {
            Value::Null => return s.serialize_none(),
            Value::UnchangedToast => return s.serialize_str(UNAVAILABLE),
            Value::Binary(b) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(
                    "binary_base64",
                    &base64::engine::general_purpose::STANDARD.encode(b),
                )?;
                return map.end();
            }
            Value::Text(t) => String::from_utf8_lossy(t),
        };
        match self.column.type_oid {
            // int2, int4, int8, oid
            21 | 23 | 20 | 26 => {
                if let Ok(n) = text.parse::<i64>() {
                    return s.serialize_i64(n);
                }
            }
            // bool
            16 => match text.as_ref() {
                "t" => return s.serialize_bool(true),
                "f" => return s.serialize_bool(false),
                _ => {}
            },
            // float4, float8: finite ones (NaN and Infinity are not JSON numbers)
            700 | 701 => {
                if let Some(f) = text.parse::<f64>().ok().filter(|f| f.is_finite()) {
                    return s.serialize_f64(f);
                }
            }
            // json, jsonb: nested as they are (checked, not rebuilt)
            114 | 3802 => {
                if let Ok(raw) = serde_json::value::RawValue::from_string(text.clone().into_owned())
                {
                    return raw.serialize(s);
                }
            }
            _ => {}
        }
        s.serialize_str(&text)
    }
}

/// A row as an object keyed by column name (`key_only`: the replica
/// identity columns only).
struct Row<'a> {
    relation: &'a Relation,
    image: &'a RowImage,
    key_only: bool,
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (column, value) in self.relation.columns.iter().zip(self.image.values()) {
            if self.key_only && !column.is_key {
                continue;
            }
            map.serialize_entry(&column.name, &Typed { column, value })?;
        }
        map.end()
    }
}

fn to_text(v: &impl Serialize) -> String {
    // Writing into a String cannot fail, and every value here serializes.
    serde_json::to_string(v).unwrap_or_default()
}

/// `v` as JSON text into `buf` (cleared first; its allocation reused).
fn write_json(v: &impl Serialize, buf: &mut Vec<u8>) {
    buf.clear();
    // Writing into a Vec cannot fail, and every value here serializes.
    let _ = serde_json::to_writer(&mut *buf, v);
}

/// Debezium's `source.sequence`: `["<commit LSN>","<change LSN>"]` as a
/// string, written without building it first.
struct Sequence(u64, u64);

impl Serialize for Sequence {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("[\"{}\",\"{}\"]", self.0, self.1))
    }
}

/// Debezium's transaction id (see [`transaction_id`]), written without
/// building it first.
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

impl Serialize for TransactionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A row's primary-key columns as an object, in the key's order.
struct PrimaryKey<'a> {
    relation: &'a Relation,
    image: &'a RowImage,
    /// Positions of the key's columns in `relation.columns`.
    columns: &'a [usize],
}

impl Serialize for PrimaryKey<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.columns.len()))?;
        for &i in self.columns {
            if let (Some(column), Some(value)) = (self.relation.columns.get(i), self.image.get(i)) {
                map.serialize_entry(&column.name, &Typed { column, value })?;
            }
        }
        map.end()
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
        write_json(
            &PrimaryKey {
                relation,
                image,
                columns,
            },
            buf,
        );
        return true;
    }
    match relation.replica_identity {
        ReplicaIdentity::Default | ReplicaIdentity::Index
            if relation.columns.iter().any(|c| c.is_key) =>
        {
            write_json(
                &Row {
                    relation,
                    image,
                    key_only: true,
                },
                buf,
            );
            true
        }
        _ => false,
    }
}

#[derive(Serialize)]
struct SourceBlock<'a> {
    version: &'static str,
    connector: &'static str,
    name: &'a str,
    ts_ms: i64,
    db: &'a str,
    schema: &'a str,
    table: &'a str,
    #[serde(rename = "txId")]
    tx_id: u32,
    lsn: u64,
    sequence: Sequence,
}

#[derive(Serialize)]
struct TransactionBlock {
    id: TransactionId,
    total_order: u64,
    data_collection_order: u64,
}

#[derive(Serialize)]
struct Envelope<'a> {
    before: Option<Row<'a>>,
    after: Option<Row<'a>>,
    source: SourceBlock<'a>,
    op: &'static str,
    ts_ms: i64,
    transaction: TransactionBlock,
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
        OldRow::Full(image) => Row {
            relation,
            image,
            key_only: false,
        },
        OldRow::Key(image) => Row {
            relation,
            image,
            key_only: true,
        },
    });
    let after = after.map(|image| Row {
        relation,
        image,
        key_only: false,
    });
    write_json(
        &envelope(
            source, meta, relation, change, op, before, after, order, now,
        ),
        &mut out.value,
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
    to_text(&envelope(
        source, meta, relation, change, "t", None, None, order, now,
    ))
}

#[allow(clippy::too_many_arguments)]
fn envelope<'a>(
    source: &'a Source,
    meta: &TxnMeta,
    relation: &'a Relation,
    change: &Change,
    op: &'static str,
    before: Option<Row<'a>>,
    after: Option<Row<'a>>,
    order: Order,
    now: PgTimestamp,
) -> Envelope<'a> {
    Envelope {
        before,
        after,
        source: SourceBlock {
            version: env!("CARGO_PKG_VERSION"),
            connector: "postgresql",
            name: &source.name,
            ts_ms: ms(meta.commit_ts),
            db: &source.db,
            schema: &relation.name.namespace,
            table: &relation.name.name,
            tx_id: meta.xid.0,
            lsn: change.lsn.0,
            // Debezium: [last commit LSN, this change's LSN], as strings.
            sequence: Sequence(meta.commit_lsn.0, change.lsn.0),
        },
        op,
        ts_ms: ms(now),
        transaction: TransactionBlock {
            id: TransactionId::of(meta),
            total_order: order.total,
            data_collection_order: order.in_table,
        },
    }
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

    fn relation() -> Arc<Relation> {
        let col = |name: &str, type_oid, is_key| Column {
            name: name.into(),
            type_oid,
            type_modifier: -1,
            is_key,
            type_name: None,
        };
        Arc::new(Relation {
            rel_id: 1,
            name: QualifiedName {
                namespace: "public".into(),
                name: "acct".into(),
            },
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                col("id", 23, true),
                col("balance", 1700, false),
                col("ok", 16, false),
                col("doc", 3802, false),
                col("f", 701, false),
                col("at", 1184, false),
            ],
            version: Relation::next_version(),
        })
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
