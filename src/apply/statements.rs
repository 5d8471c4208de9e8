//! Prepared statements on green, one per (table version, kind, shape),
//! kept across batches for the life of the session.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::{Client, Statement};

use super::ApplyError;
use super::target::Mapping;

/// What a statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Insert,
    InsertSkipConflict,
    Update,
    Delete,
    InsertMany,
    UpdateMany,
    DeleteMany,
    SelectJson,
    CopyText,
    CopyBinary,
}

/// Identifies a prepared statement: table version, kind, shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StatementKey {
    /// The blue relation version the mapping was made for.
    relation: u64,
    kind: Kind,
    /// Columns set (update) and how each key column is matched.
    shape: Vec<u8>,
}

/// The statements prepared on one green session.
#[derive(Default)]
pub(super) struct Statements(HashMap<StatementKey, Statement>);

impl Statements {
    /// Forgets them all (a new session, or green's schema may have changed).
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// The statement for (`mapping`, `kind`, `shape`), prepared from
    /// `text()` the first time.
    pub(super) async fn get(
        &mut self,
        client: &Client,
        mapping: &Arc<Mapping>,
        kind: Kind,
        shape: Vec<u8>,
        text: impl FnOnce() -> String,
    ) -> Result<Statement, ApplyError> {
        let key = StatementKey {
            relation: mapping.relation.version,
            kind,
            shape,
        };
        if let Some(s) = self.0.get(&key) {
            return Ok(s.clone());
        }
        let statement = client
            .prepare(&text())
            .await
            .map_err(|source| ApplyError::Sql {
                context: format!("preparing a statement for {}", mapping.name()),
                source,
            })?;
        self.0.insert(key, statement.clone());
        Ok(statement)
    }
}
