//! Typed change events: what the assembler hands to apply and the sinks.
//!
//! Leaf module. A committed source transaction reaches consumers as
//!
//! ```text
//! Begin(meta) Changes([..]) Changes([..]) ... Commit(meta)
//! ```
//!
//! with nothing of another transaction in between, in commit order. `meta` is
//! complete already at `Begin` (the assembler only releases a transaction once
//! its commit arrived), so a consumer knows the commit LSN before the first
//! change. Column values are slices of the frame they arrived in: nothing is
//! copied or re-encoded between the socket and the consumer.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::lsn::{Lsn, PgTimestamp, Xid};

/// `pg_class.relreplident`: which old values blue sends for updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key. Updates carry the old key only when a key column
    /// changed; deletes always carry it (non-key columns are sent as NULL).
    Default,
    /// `n`: nothing. Updates and deletes cannot be published.
    Nothing,
    /// `f`: the whole old row on every update and delete.
    Full,
    /// `i`: the columns of the chosen unique index, sent like `Default`.
    Index,
}

impl ReplicaIdentity {
    /// From the byte PostgreSQL sends.
    pub fn from_byte(b: u8) -> Option<ReplicaIdentity> {
        Some(match b {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => return None,
        })
    }

    /// The name used in `ALTER TABLE ... REPLICA IDENTITY`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaIdentity::Default => "default",
            ReplicaIdentity::Nothing => "nothing",
            ReplicaIdentity::Full => "full",
            ReplicaIdentity::Index => "index",
        }
    }
}

/// A schema-qualified name as blue spells it (not quoted).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    /// Schema; `pg_catalog` when pgoutput sent an empty namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
}

impl QualifiedName {
    /// `"schema"."name"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.namespace),
            quote_ident(&self.name)
        )
    }
}

/// `"name"` with embedded double quotes doubled: an SQL identifier, whatever its case.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl fmt::Display for QualifiedName {
    /// `schema.name`, unquoted: for messages and JSON, not for SQL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace, self.name)
    }
}

/// A text value is not UTF-8 (teal asks blue for UTF-8, so this means a
/// mis-encoded value was stored on blue).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("value of column {column:?} of {table} is not valid UTF-8")]
pub struct InvalidUtf8 {
    /// The table.
    pub table: QualifiedName,
    /// The column.
    pub column: String,
}

/// One published column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// `pg_type.oid` on blue.
    pub type_oid: u32,
    /// `atttypmod` (e.g. length of a varchar), -1 when none.
    pub type_modifier: i32,
    /// Part of the replica identity (every column under `REPLICA IDENTITY FULL`).
    pub is_key: bool,
    /// For types blue described with a Type message (user-defined types).
    pub type_name: Option<QualifiedName>,
}

/// A published table as described by blue's latest Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Blue's `pg_class.oid`.
    pub rel_id: u32,
    /// Schema and table name.
    pub name: QualifiedName,
    /// Which old values updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// Published columns in attribute order (dropped and generated ones excluded).
    pub columns: Vec<Column>,
    /// This definition's number in the process ([`Relation::next_version`]):
    /// each Relation message from blue is a new version, and caches of
    /// what was derived from a definition (green mappings, statements,
    /// spill files, Kafka keys) are keyed by it.
    pub version: u64,
}

impl Relation {
    /// A version number no definition had before in this process.
    pub fn next_version() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The row as a JSON object keyed by column name (only the replica
    /// identity columns with `key_only`): text values as strings, NULL as
    /// null, `{"unchanged_toast":true}` and `{"binary_base64":"..."}`.
    pub fn row_json(
        &self,
        row: &RowImage,
        key_only: bool,
    ) -> Result<serde_json::Value, InvalidUtf8> {
        use base64::Engine;
        let mut map = serde_json::Map::new();
        for (col, value) in self.columns.iter().zip(row.values()) {
            if key_only && !col.is_key {
                continue;
            }
            let v = match value {
                Value::Null => serde_json::Value::Null,
                Value::UnchangedToast => serde_json::json!({ "unchanged_toast": true }),
                Value::Text(t) => serde_json::Value::String(
                    std::str::from_utf8(t)
                        .map_err(|_| InvalidUtf8 {
                            table: self.name.clone(),
                            column: col.name.clone(),
                        })?
                        .to_owned(),
                ),
                Value::Binary(b) => serde_json::json!({
                    "binary_base64": base64::engine::general_purpose::STANDARD.encode(b)
                }),
            };
            map.insert(col.name.clone(), v);
        }
        Ok(serde_json::Value::Object(map))
    }
}

/// How one column of a row image arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CellKind {
    /// SQL NULL (`n`).
    Null,
    /// An unchanged TOASTed value that blue did not send (`u`): keep the
    /// target's current value, never overwrite it with NULL.
    UnchangedToast,
    /// The type's text output (`t`).
    Text,
    /// The type's binary send format (`b`).
    Binary,
}

/// Position of one column's value inside a row image's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// How the value arrived.
    pub kind: CellKind,
    /// Byte offset of the value in the row's buffer.
    pub start: u32,
    /// Length of the value in bytes (0 for null and unchanged TOAST).
    pub len: u32,
}

/// A column value borrowed from a row image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// SQL NULL.
    Null,
    /// Unchanged TOAST: the value was not sent.
    UnchangedToast,
    /// Text output of the type (UTF-8: teal connects with `client_encoding=UTF8`).
    Text(&'a [u8]),
    /// Binary send format of the type.
    Binary(&'a [u8]),
}

/// A row image referred to a byte range outside its buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column} of a row image lies outside its {buffer_len}-byte buffer")]
pub struct RowImageError {
    /// Index of the offending column.
    pub column: usize,
    /// Size of the buffer.
    pub buffer_len: usize,
}

/// The values of one row, as slices of the frame they arrived in.
#[derive(Clone, PartialEq, Eq)]
pub struct RowImage {
    data: Bytes,
    cells: Vec<Cell>,
}

impl RowImage {
    /// Builds a row image, checking that every cell lies inside `data`.
    pub fn from_parts(data: Bytes, cells: Vec<Cell>) -> Result<RowImage, RowImageError> {
        for (column, c) in cells.iter().enumerate() {
            let end = u64::from(c.start) + u64::from(c.len);
            if end > data.len() as u64 {
                return Err(RowImageError {
                    column,
                    buffer_len: data.len(),
                });
            }
        }
        Ok(RowImage { data, cells })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether the image has no columns.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The value of column `i`, or `None` past the last column.
    pub fn get(&self, i: usize) -> Option<Value<'_>> {
        self.cells.get(i).map(|c| self.value_of(c))
    }

    /// All values in column order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = Value<'_>> + '_ {
        self.cells.iter().map(|c| self.value_of(c))
    }

    /// The cells (kinds and positions), e.g. to serialize the image.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    /// The buffer the cells point into.
    pub fn buffer(&self) -> &Bytes {
        &self.data
    }

    /// Bytes of column data held (what a memory bound should count).
    pub fn data_len(&self) -> usize {
        self.cells.iter().map(|c| c.len as usize).sum()
    }

    fn value_of(&self, c: &Cell) -> Value<'_> {
        // In bounds by construction (`from_parts`); `get` keeps it panic-free anyway.
        let bytes = || {
            let start = c.start as usize;
            self.data
                .get(start..start + c.len as usize)
                .unwrap_or_default()
        };
        match c.kind {
            CellKind::Null => Value::Null,
            CellKind::UnchangedToast => Value::UnchangedToast,
            CellKind::Text => Value::Text(bytes()),
            CellKind::Binary => Value::Binary(bytes()),
        }
    }
}

impl fmt::Debug for RowImage {
    /// Shows the shape only: row values never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RowImage({} columns)", self.cells.len())
    }
}

/// The old values an update or delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldRow {
    /// `K`: the replica identity key (non-key columns are NULL in the image).
    Key(RowImage),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(RowImage),
}

impl OldRow {
    /// The image, whichever kind it is.
    pub fn image(&self) -> &RowImage {
        match self {
            OldRow::Key(r) | OldRow::Full(r) => r,
        }
    }
}

/// A `pg_logical_emit_message` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Emitted inside a transaction (delivered with it) or not (delivered at once).
    pub transactional: bool,
    /// LSN of the message record.
    pub lsn: Lsn,
    /// The prefix given by the emitter (e.g. `teal.heartbeat`).
    pub prefix: String,
    /// The message body.
    pub content: Bytes,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new row.
    Insert {
        /// The table.
        relation: Arc<Relation>,
        /// The row.
        new: RowImage,
    },
    /// A changed row.
    Update {
        /// The table.
        relation: Arc<Relation>,
        /// Old key (when a key column changed) or old row (FULL); `None` otherwise.
        old: Option<OldRow>,
        /// The new row; unchanged TOAST columns are `Value::UnchangedToast`.
        new: RowImage,
    },
    /// A removed row.
    Delete {
        /// The table.
        relation: Arc<Relation>,
        /// Old key, or the old row under FULL.
        old: OldRow,
    },
    /// `TRUNCATE` of one or more tables in one statement.
    Truncate {
        /// The tables, in the order blue listed them.
        relations: Vec<Arc<Relation>>,
        /// `TRUNCATE ... CASCADE`.
        cascade: bool,
        /// `TRUNCATE ... RESTART IDENTITY`.
        restart_identity: bool,
    },
    /// A transactional logical decoding message.
    Message(LogicalMessage),
}

/// One change of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Start LSN of the frame that carried it (the change's WAL record).
    pub lsn: Lsn,
    /// What happened.
    pub kind: ChangeKind,
}

impl Change {
    /// Bytes of the socket read around each frame besides the frame itself
    /// (CopyData and XLogData headers): held as long as the frame is.
    const FRAME_HEADER_BYTES: usize = 5 + 25;
    /// What the allocator adds to each heap block (glibc: header and 16-byte rounding).
    const ALLOC_OVERHEAD_BYTES: usize = 16;

    /// Memory held by this change: its own struct plus [`Change::heap_size`].
    pub fn memory_size(&self) -> usize {
        std::mem::size_of::<Change>() + self.heap_size()
    }

    /// Memory this change keeps alive outside its own struct: the frame its
    /// values are sliced from (with the frame headers read along with it)
    /// and the cell tables. This is what the assembler's `--max-memory`
    /// bound counts, so it follows what the process really holds: the values
    /// alone undercount by a quarter on narrow rows.
    pub fn heap_size(&self) -> usize {
        let frame = |r: &RowImage| r.data.len() + Self::FRAME_HEADER_BYTES;
        let cells = |r: &RowImage| {
            r.cells.capacity() * std::mem::size_of::<Cell>() + Self::ALLOC_OVERHEAD_BYTES
        };
        match &self.kind {
            ChangeKind::Insert { new, .. } => frame(new) + cells(new),
            ChangeKind::Update { old, new, .. } => match old {
                // Both images are slices of the same frame.
                Some(o) => frame(new).max(frame(o.image())) + cells(new) + cells(o.image()),
                None => frame(new) + cells(new),
            },
            ChangeKind::Delete { old, .. } => frame(old.image()) + cells(old.image()),
            ChangeKind::Truncate { relations, .. } => {
                relations.capacity() * std::mem::size_of::<Arc<Relation>>()
                    + Self::ALLOC_OVERHEAD_BYTES
            }
            ChangeKind::Message(m) => {
                m.prefix.len() + m.content.len() + 2 * Self::ALLOC_OVERHEAD_BYTES
            }
        }
    }

    /// The relations this change touches (one, several for TRUNCATE, none for messages).
    pub fn relations(&self) -> &[Arc<Relation>] {
        match &self.kind {
            ChangeKind::Insert { relation, .. }
            | ChangeKind::Update { relation, .. }
            | ChangeKind::Delete { relation, .. } => std::slice::from_ref(relation),
            ChangeKind::Truncate { relations, .. } => relations,
            ChangeKind::Message(_) => &[],
        }
    }
}

/// Replication origin of a transaction (set when blue replays changes itself
/// received from elsewhere, e.g. through another subscription).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `pg_replication_origin.roname`.
    pub name: String,
    /// Commit LSN on the origin server.
    pub lsn: Lsn,
}

/// Everything known about a committed source transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    /// Top-level transaction id.
    pub xid: Xid,
    /// LSN of the commit record (`final_lsn` of Begin, `commit_lsn` of Commit).
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once it is durable.
    pub end_lsn: Lsn,
    /// Commit time on blue.
    pub commit_ts: PgTimestamp,
    /// Replication origin, when blue sent one.
    pub origin: Option<Origin>,
    /// Whether it arrived streamed (in blocks, before its commit).
    pub streamed: bool,
    /// Number of changes the transaction carries.
    pub change_count: u64,
}

/// One batch of events read by two consumers (apply and the Kafka sink)
/// without copying it for each: the last one to take it owns it, the
/// other only borrows it (`Vec::from` copies only while both still hold it).
#[derive(Debug, Clone)]
pub struct SharedBatch(pub Arc<Vec<Event>>);

impl AsRef<[Event]> for SharedBatch {
    fn as_ref(&self) -> &[Event] {
        &self.0
    }
}

impl From<SharedBatch> for Vec<Event> {
    fn from(batch: SharedBatch) -> Vec<Event> {
        Arc::unwrap_or_clone(batch.0)
    }
}

/// What flows from the assembler to apply and the sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A transaction starts; its changes and `Commit` follow with nothing between.
    Begin(Arc<TxnMeta>),
    /// A run of the open transaction's changes, in order.
    Changes(Vec<Change>),
    /// The open transaction is complete.
    Commit(Arc<TxnMeta>),
    /// A non-transactional logical message (outside any transaction).
    Message(LogicalMessage),
    /// Blue reported WAL up to `wal_end` and nothing before it is pending:
    /// a consumer that has handled every earlier event may confirm `wal_end`.
    Idle {
        /// Server's WAL position from a keepalive.
        wal_end: Lsn,
    },
}
