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
//!
//! Files: this one (the records and their fields' order), `write` (the
//! JSON writer: escaping, typed values, rows), `tests`.

use serde_json::{Value as Json, json};

use crate::event::{Change, ChangeKind, OldRow, Relation, RowImage, TxnMeta};
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

mod write;

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
mod tests;
