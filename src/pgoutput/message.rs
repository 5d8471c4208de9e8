//! pgoutput protocol messages, versions 1-4, with PostgreSQL's field names.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>
//! and `src/backend/replication/logical/proto.c`. Fields marked "streamed
//! only" are present only between Stream Start and Stream Stop; there the
//! `xid` is that of the (sub)transaction that made the change.

use bytes::Bytes;

use super::tuple::TupleData;
use crate::lsn::{Lsn, PgTimestamp, Xid};

/// `B`: a transaction starts (sent when its commit is decoded, so all is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record.
    pub final_lsn: Lsn,
    /// Commit timestamp.
    pub commit_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
}

/// `C`: the transaction begun by the last Begin is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused flags (always 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the commit record: what a subscriber confirms.
    pub end_lsn: Lsn,
    /// Commit timestamp.
    pub commit_ts: PgTimestamp,
}

/// `O`: the transaction was replayed on blue from a replication origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// Origin name.
    pub name: String,
}

/// One column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 1: part of the replica identity (all columns under FULL).
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// Type OID on blue.
    pub type_oid: u32,
    /// `atttypmod`.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Whether the column belongs to the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `R`: describes a relation before its first change, and again after DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Streamed only.
    pub xid: Option<Xid>,
    /// Relation OID on blue.
    pub rel_id: u32,
    /// Schema (empty on the wire for `pg_catalog`; decoded as `pg_catalog`).
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// `relreplident`: `d`, `n`, `f` or `i`.
    pub replica_identity: u8,
    /// Published columns.
    pub columns: Vec<RelationColumn>,
}

/// `Y`: names a non-builtin type before a Relation that uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// Streamed only.
    pub xid: Option<Xid>,
    /// Type OID on blue.
    pub type_oid: u32,
    /// Schema of the type (of the base type for a domain).
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// The old values in an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity columns (others NULL).
    Key(TupleData),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

/// `I`: a row was inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Streamed only.
    pub xid: Option<Xid>,
    /// Relation OID.
    pub rel_id: u32,
    /// The new row.
    pub new: TupleData,
}

/// `U`: a row was updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Streamed only.
    pub xid: Option<Xid>,
    /// Relation OID.
    pub rel_id: u32,
    /// Old key (DEFAULT/INDEX, only when a key column changed) or old row (FULL).
    pub old: Option<OldTuple>,
    /// The new row.
    pub new: TupleData,
}

/// `D`: a row was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Streamed only.
    pub xid: Option<Xid>,
    /// Relation OID.
    pub rel_id: u32,
    /// Old key or old row.
    pub old: OldTuple,
}

/// `T`: tables were truncated by one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Streamed only.
    pub xid: Option<Xid>,
    /// Bit 1 CASCADE, bit 2 RESTART IDENTITY.
    pub options: u8,
    /// The relations.
    pub rel_ids: Vec<u32>,
}

impl Truncate {
    /// `TRUNCATE ... CASCADE`.
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }

    /// `TRUNCATE ... RESTART IDENTITY`.
    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// `M`: `pg_logical_emit_message` (protocol 2+ with `messages` on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalDecodingMessage {
    /// Streamed only.
    pub xid: Option<Xid>,
    /// Bit 1: transactional.
    pub flags: u8,
    /// LSN of the message record.
    pub lsn: Lsn,
    /// Prefix.
    pub prefix: String,
    /// Content.
    pub content: Bytes,
}

impl LogicalDecodingMessage {
    /// Emitted with `transactional => true`.
    pub fn transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `S`: a block of an in-progress transaction follows (protocol 2+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// Top-level transaction id.
    pub xid: Xid,
    /// Whether this is the transaction's first block.
    pub first_segment: bool,
}

/// `c`: a streamed transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// Top-level transaction id.
    pub xid: Xid,
    /// Unused flags (always 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the commit record.
    pub end_lsn: Lsn,
    /// Commit timestamp.
    pub commit_ts: PgTimestamp,
}

/// `A`: a streamed (sub)transaction aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// Top-level transaction id.
    pub xid: Xid,
    /// The aborted subtransaction; equal to `xid` when the whole transaction aborted.
    pub subxid: Xid,
    /// LSN of the abort record (protocol 4 with `streaming = parallel` only).
    pub abort_lsn: Option<Lsn>,
    /// Abort time (protocol 4 with `streaming = parallel` only).
    pub abort_ts: Option<PgTimestamp>,
}

/// `b`: a two-phase transaction's prepare starts (protocol 3+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    /// LSN of the PREPARE record.
    pub prepare_lsn: Lsn,
    /// End LSN of the PREPARE record.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction identifier.
    pub gid: String,
}

/// `P` (and `p` for a streamed one): a transaction was prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    /// Unused flags (always 0).
    pub flags: u8,
    /// LSN of the PREPARE record.
    pub prepare_lsn: Lsn,
    /// End LSN of the PREPARE record.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction identifier.
    pub gid: String,
}

/// `K`: a prepared transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    /// Unused flags (always 0).
    pub flags: u8,
    /// LSN of the COMMIT PREPARED record.
    pub commit_lsn: Lsn,
    /// End LSN of the COMMIT PREPARED record.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction identifier.
    pub gid: String,
}

/// `r`: a prepared transaction was rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Unused flags (always 0).
    pub flags: u8,
    /// End LSN of the PREPARE record.
    pub prepare_end_lsn: Lsn,
    /// End LSN of the ROLLBACK PREPARED record.
    pub rollback_end_lsn: Lsn,
    /// Prepare time.
    pub prepare_ts: PgTimestamp,
    /// Rollback time.
    pub rollback_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction identifier.
    pub gid: String,
}

/// Any pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `B`
    Begin(Begin),
    /// `C`
    Commit(Commit),
    /// `O`
    Origin(Origin),
    /// `R`
    Relation(Relation),
    /// `Y`
    Type(Type),
    /// `I`
    Insert(Insert),
    /// `U`
    Update(Update),
    /// `D`
    Delete(Delete),
    /// `T`
    Truncate(Truncate),
    /// `M`
    Message(LogicalDecodingMessage),
    /// `S`
    StreamStart(StreamStart),
    /// `E`
    StreamStop,
    /// `c`
    StreamCommit(StreamCommit),
    /// `A`
    StreamAbort(StreamAbort),
    /// `b`
    BeginPrepare(BeginPrepare),
    /// `P`
    Prepare(Prepare),
    /// `K`
    CommitPrepared(CommitPrepared),
    /// `r`
    RollbackPrepared(RollbackPrepared),
    /// `p`
    StreamPrepare(Prepare),
}
