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

use serde_json::{Map, Value as Json, json};

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
    format!("{}:{}", meta.xid.0, meta.commit_lsn.0)
}

/// The transaction topic's record key (as Debezium keys it).
pub fn transaction_key(meta: &TxnMeta) -> Json {
    json!({ "id": transaction_id(meta) })
}

fn ms(ts: PgTimestamp) -> i64 {
    ts.unix_micros().div_euclid(1000)
}

/// One column's value as JSON.
fn typed(column: &Column, value: Value<'_>) -> Json {
    use base64::Engine;
    match value {
        Value::Null => Json::Null,
        Value::UnchangedToast => Json::String(UNAVAILABLE.into()),
        Value::Binary(b) => {
            json!({ "binary_base64": base64::engine::general_purpose::STANDARD.encode(b) })
        }
        Value::Text(t) => {
            let text = String::from_utf8_lossy(t);
            let parsed = match column.type_oid {
                // int2, int4, int8, oid
                21 | 23 | 20 | 26 => text.parse::<i64>().ok().map(Json::from),
                // bool
                16 => match text.as_ref() {
                    "t" => Some(Json::Bool(true)),
                    "f" => Some(Json::Bool(false)),
                    _ => None,
                },
                // float4, float8: finite ones (NaN and Infinity are not JSON numbers)
                700 | 701 => text
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .and_then(serde_json::Number::from_f64)
                    .map(Json::Number),
                // json, jsonb
                114 | 3802 => serde_json::from_str(&text).ok(),
                _ => None,
            };
            parsed.unwrap_or_else(|| Json::String(text.into_owned()))
        }
    }
}

/// The row as an object keyed by column name (`key_only`: the replica
/// identity columns only).
pub fn row(relation: &Relation, image: &RowImage, key_only: bool) -> Json {
    let mut map = Map::new();
    for (column, value) in relation.columns.iter().zip(image.values()) {
        if key_only && !column.is_key {
            continue;
        }
        map.insert(column.name.clone(), typed(column, value));
    }
    Json::Object(map)
}

/// The record key: the key columns of the row, or null for a table
/// without a replica identity key (or with REPLICA IDENTITY FULL, where
/// every column is "key" and none is a primary key).
pub fn key(relation: &Relation, image: &RowImage) -> Option<Json> {
    use crate::event::ReplicaIdentity;
    match relation.replica_identity {
        ReplicaIdentity::Default | ReplicaIdentity::Index
            if relation.columns.iter().any(|c| c.is_key) =>
        {
            Some(row(relation, image, true))
        }
        _ => None,
    }
}

/// A row change's record: (key, value). `None` for changes that are not
/// row changes (truncate, messages: see [`truncate`]).
pub fn change(
    source: &Source,
    meta: &TxnMeta,
    change: &Change,
    order: Order,
    now: PgTimestamp,
) -> Option<(Option<Json>, Json)> {
    let (relation, op, before, after, key_image) = match &change.kind {
        ChangeKind::Insert { relation, new } => (relation, "c", None, Some(new), new),
        ChangeKind::Update { relation, old, new } => {
            // The key comes from the old image when the key changed (the
            // record goes where the old key's records went).
            let key_image = match old {
                Some(OldRow::Key(o)) => o,
                _ => new,
            };
            (relation, "u", old.as_ref(), Some(new), key_image)
        }
        ChangeKind::Delete { relation, old } => (relation, "d", Some(old), None, old.image()),
        ChangeKind::Truncate { .. } | ChangeKind::Message(_) => return None,
    };
    let before = before.map(|o| match o {
        OldRow::Full(image) => row(relation, image, false),
        OldRow::Key(image) => row(relation, image, true),
    });
    let value = envelope(
        source,
        meta,
        relation,
        change,
        op,
        before.unwrap_or(Json::Null),
        after.map_or(Json::Null, |a| row(relation, a, false)),
        order,
        now,
    );
    Some((key(relation, key_image), value))
}

/// A TRUNCATE's record for one of its tables (op `t`, no key).
pub fn truncate(
    source: &Source,
    meta: &TxnMeta,
    change: &Change,
    relation: &Relation,
    order: Order,
    now: PgTimestamp,
) -> Json {
    envelope(
        source,
        meta,
        relation,
        change,
        "t",
        Json::Null,
        Json::Null,
        order,
        now,
    )
}

#[allow(clippy::too_many_arguments)]
fn envelope(
    source: &Source,
    meta: &TxnMeta,
    relation: &Relation,
    change: &Change,
    op: &str,
    before: Json,
    after: Json,
    order: Order,
    now: PgTimestamp,
) -> Json {
    json!({
        "before": before,
        "after": after,
        "source": {
            "version": env!("CARGO_PKG_VERSION"),
            "connector": "postgresql",
            "name": source.name,
            "ts_ms": ms(meta.commit_ts),
            "db": source.db,
            "schema": relation.name.namespace,
            "table": relation.name.name,
            "txId": meta.xid.0,
            "lsn": change.lsn.0,
            // Debezium: [last commit LSN, this change's LSN], as strings.
            "sequence": format!("[\"{}\",\"{}\"]", meta.commit_lsn.0, change.lsn.0),
        },
        "op": op,
        "ts_ms": ms(now),
        "transaction": {
            "id": transaction_id(meta),
            "total_order": order.total,
            "data_collection_order": order.in_table,
        },
    })
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
        let (key, value) = super::change(&source, &meta(), &change, order, PgTimestamp(0)).unwrap();
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
        let (_, value) = super::change(&source, &meta(), &update, order, PgTimestamp(0)).unwrap();
        assert_eq!(value["op"], "u");
        assert_eq!(value["after"]["doc"], UNAVAILABLE);

        let delete = Change {
            lsn: Lsn(53195820),
            kind: ChangeKind::Delete {
                relation: rel,
                old: OldRow::Key(image(&[Some("7"), None, None, None, None, None])),
            },
        };
        let (key, value) = super::change(&source, &meta(), &delete, order, PgTimestamp(0)).unwrap();
        assert_eq!(key, Some(json!({ "id": 7 })));
        assert_eq!(value["op"], "d");
        assert_eq!(value["before"], json!({ "id": 7 }));
        assert_eq!(value["after"], Json::Null);
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
