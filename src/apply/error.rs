//! Why applying stopped, and the conflict report a conflict carries.

use std::time::Duration;

use crate::error::{Kind, postgres_kind};
use crate::event::QualifiedName;
use crate::lsn::{Lsn, Xid};
use crate::store::StoreError;

use super::conflict::{ConflictKind, ConflictPolicy};
use super::target::MapError;

/// A conflict, as written to the conflict log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictReport {
    /// The slot teal streams from.
    pub slot: String,
    /// The table.
    pub table: QualifiedName,
    /// What kind of conflict.
    pub kind: ConflictKind,
    /// The policy in force.
    pub policy: ConflictPolicy,
    /// The row's key (JSON).
    pub key: Option<String>,
    /// The source row (JSON).
    pub source_row: Option<String>,
    /// Green's row (JSON), when there is one.
    pub target_row: Option<String>,
    /// Commit LSN of the source transaction.
    pub commit_lsn: Lsn,
    /// LSN of the change.
    pub change_lsn: Lsn,
    /// Source transaction id.
    pub xid: Xid,
    /// What was done.
    pub resolution: String,
}

/// Why applying stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Green could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::session::SessionError),
    /// teal's own tables on green.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blue table does not fit green (or green's catalog could not be read).
    #[error(transparent)]
    Map(#[from] MapError),
    /// A statement failed on green. The message names table and LSNs; row
    /// values are left out on purpose (they may be sensitive).
    #[error("{context}: {}", describe(.source))]
    Sql {
        /// What teal was applying.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A conflict under the `error` policy.
    #[error(
        "conflict {} on {} at LSN {} (transaction {}, xid {}): policy error, so teal stopped; the source and green rows are in the conflicts table",
        .0.kind, .0.table, .0.change_lsn, .0.commit_lsn, .0.xid
    )]
    Conflict(Box<ConflictReport>),
    /// An update or delete for a table blue cannot identify rows of.
    #[error(
        "blue sent an update or delete for {table} at LSN {lsn}, but the table has no replica identity; set REPLICA IDENTITY FULL on it or add a primary key (on blue and green)"
    )]
    NoIdentity {
        /// The table.
        table: QualifiedName,
        /// Change LSN.
        lsn: Lsn,
    },
    /// A change cannot be applied as sent.
    #[error("cannot apply the change to {table} at LSN {lsn} (transaction {commit_lsn}): {reason}")]
    Unresolvable {
        /// The table.
        table: QualifiedName,
        /// Change LSN.
        lsn: Lsn,
        /// Commit LSN.
        commit_lsn: Lsn,
        /// Why.
        reason: String,
    },
    /// The fast path met a conflict: replay up to this commit LSN one change
    /// at a time so the conflict policy can decide (handled by `teal stream`).
    #[error(
        "conflict detected in a batch; replaying transactions up to {through} change by change"
    )]
    Replay {
        /// Replay carefully through this commit LSN.
        through: Lsn,
    },
    /// Blue ran DDL teal does not apply (or green refused it): the
    /// message says what to run on green and how to go on.
    #[error("{0}")]
    Ddl(Box<super::ddl::DdlStop>),
    /// Green did not answer within `--replication-timeout`: the session is
    /// dropped unanswered and streaming resumes from green's progress.
    #[error(
        "green did not answer within {}s while {doing}; dropping the session and resuming from green's progress (--replication-timeout)",
        after.as_secs()
    )]
    Timeout {
        /// What teal waited for.
        doing: &'static str,
        /// The timeout.
        after: Duration,
    },
}

/// The driver's error without detail (which may quote row values).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    crate::error::describe_postgres(e)
}

impl ApplyError {
    /// What kind of failure it is (see [`crate::error::policy`]).
    pub fn kind(&self) -> Kind {
        match self {
            ApplyError::Connect(e) => e.kind(),
            ApplyError::Store(e) => e.kind(),
            ApplyError::Map(e) => e.kind(),
            ApplyError::Sql { source, .. } => postgres_kind(source),
            ApplyError::Conflict(_) => Kind::Conflict,
            ApplyError::NoIdentity { .. } | ApplyError::Unresolvable { .. } => Kind::Setup,
            ApplyError::Replay { .. } => Kind::Replay,
            ApplyError::Timeout { .. } => Kind::Timeout,
            ApplyError::Ddl(_) => Kind::SchemaDrift,
        }
    }
}
