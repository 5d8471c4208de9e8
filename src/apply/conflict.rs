//! Conflict policies: what to do when a source change does not fit green's rows.
//!
//! | conflict | `error` (default) | `source-wins` | `target-wins` |
//! |---|---|---|---|
//! | insert, key exists | stop, report | update green's row to the source row | keep green's row |
//! | update, row missing | stop, report | insert the source row | skip |
//! | delete, row missing | stop, report | skip | skip |
//!
//! Every conflict is counted and written to `<schema>.conflicts` with the
//! table, key, operation, source row, green's row, LSNs, policy and what was
//! done.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::event::QualifiedName;

/// What to do about a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// Stop teal and report the row; nothing of the batch is committed.
    #[default]
    Error,
    /// Make green's row what the source says.
    SourceWins,
    /// Keep green's row and skip the change.
    TargetWins,
}

impl ConflictPolicy {
    /// The name used on the command line and in the conflict log.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::Error => "error",
            ConflictPolicy::SourceWins => "source-wins",
            ConflictPolicy::TargetWins => "target-wins",
        }
    }
}

impl fmt::Display for ConflictPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConflictPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "error" => Ok(ConflictPolicy::Error),
            "source-wins" => Ok(ConflictPolicy::SourceWins),
            "target-wins" => Ok(ConflictPolicy::TargetWins),
            _ => Err(format!(
                "{s:?} is not one of error, source-wins, target-wins"
            )),
        }
    }
}

/// The policy per table, with a default for the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConflictPolicies {
    /// For tables without their own policy.
    pub default: ConflictPolicy,
    /// By `schema.table`.
    pub tables: HashMap<QualifiedName, ConflictPolicy>,
}

impl ConflictPolicies {
    /// The policy for `table`.
    pub fn for_table(&self, table: &QualifiedName) -> ConflictPolicy {
        self.tables.get(table).copied().unwrap_or(self.default)
    }

    /// Parses `--conflict-table` values: `schema.table=policy` or `table=policy`
    /// (schema `public`).
    pub fn parse_table(spec: &str) -> Result<(QualifiedName, ConflictPolicy), String> {
        let (table, policy) = spec
            .rsplit_once('=')
            .ok_or_else(|| format!("{spec:?} is not TABLE=POLICY"))?;
        let (namespace, name) = table.split_once('.').unwrap_or(("public", table));
        if name.is_empty() || namespace.is_empty() {
            return Err(format!("{spec:?} names no table"));
        }
        Ok((
            QualifiedName {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            policy.parse()?,
        ))
    }
}

/// The kinds of conflict teal detects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// An insert found a row with its key.
    InsertExists,
    /// An update found no row to change.
    UpdateMissing,
    /// A delete found no row to remove.
    DeleteMissing,
}

impl ConflictKind {
    /// Name in the conflict log.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::InsertExists => "insert_exists",
            ConflictKind::UpdateMissing => "update_missing",
            ConflictKind::DeleteMissing => "delete_missing",
        }
    }

    /// The operation that met the conflict.
    pub fn operation(self) -> &'static str {
        match self {
            ConflictKind::InsertExists => "insert",
            ConflictKind::UpdateMissing => "update",
            ConflictKind::DeleteMissing => "delete",
        }
    }
}

impl fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_policies_parse() {
        let (t, p) = ConflictPolicies::parse_table("billing.invoices=source-wins").unwrap();
        assert_eq!(
            (t.namespace.as_str(), t.name.as_str(), p),
            ("billing", "invoices", ConflictPolicy::SourceWins)
        );
        let (t, p) = ConflictPolicies::parse_table("ledger=target-wins").unwrap();
        assert_eq!(
            (t.namespace.as_str(), p),
            ("public", ConflictPolicy::TargetWins)
        );
        assert!(ConflictPolicies::parse_table("ledger").is_err());
        assert!(
            ConflictPolicies::parse_table("ledger=maybe")
                .unwrap_err()
                .contains("source-wins")
        );
    }
}
