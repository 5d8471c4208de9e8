//! Relation and type cache, built from Relation and Type messages.
//!
//! A Relation message replaces the cached entry for its OID (schema changes in
//! the middle of the stream arrive this way); changes already buffered keep
//! the `Arc` of the definition they were decoded with. Inside a streamed
//! transaction, Relation and Type messages describe the schema *that*
//! transaction sees (for example after its own `ALTER TABLE`), so they go to a
//! catalog local to the transaction and reach the shared one only when it
//! commits — the same rule PostgreSQL's apply worker follows.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::event::{Column, QualifiedName, Relation, ReplicaIdentity};
use crate::pgoutput;

/// Relations and types by blue's OIDs.
#[derive(Default)]
pub(crate) struct Catalog {
    relations: FxHashMap<u32, Arc<Relation>>,
    types: FxHashMap<u32, QualifiedName>,
}

impl Catalog {
    pub(crate) fn define_type(&mut self, msg: pgoutput::Type) {
        self.types.insert(
            msg.type_oid,
            QualifiedName {
                namespace: msg.namespace,
                name: msg.name,
            },
        );
    }

    pub(crate) fn insert_relation(&mut self, rel: Arc<Relation>) {
        self.relations.insert(rel.rel_id, rel);
    }

    /// Moves everything `local` defined into `self` (a streamed transaction committed).
    pub(crate) fn absorb(&mut self, local: Catalog) {
        self.relations.extend(local.relations);
        self.types.extend(local.types);
    }
}

/// The shared catalog, seen through a transaction's local one when streaming.
pub(crate) struct View<'a> {
    pub(crate) shared: &'a Catalog,
    pub(crate) local: Option<&'a Catalog>,
}

impl View<'_> {
    pub(crate) fn relation(&self, rel_id: u32) -> Option<&Arc<Relation>> {
        self.local
            .and_then(|l| l.relations.get(&rel_id))
            .or_else(|| self.shared.relations.get(&rel_id))
    }

    fn type_name(&self, oid: u32) -> Option<&QualifiedName> {
        self.local
            .and_then(|l| l.types.get(&oid))
            .or_else(|| self.shared.types.get(&oid))
    }

    /// Builds the typed relation, naming user-defined column types from Type messages.
    pub(crate) fn build_relation(&self, msg: pgoutput::Relation) -> Option<Relation> {
        let replica_identity = ReplicaIdentity::from_byte(msg.replica_identity)?;
        let columns = msg
            .columns
            .into_iter()
            .map(|c| Column {
                is_key: c.is_key(),
                type_name: self.type_name(c.type_oid).cloned(),
                name: c.name,
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
            })
            .collect();
        Some(Relation {
            rel_id: msg.rel_id,
            name: QualifiedName {
                namespace: msg.namespace,
                name: msg.name,
            },
            replica_identity,
            columns,
            version: Relation::next_version(),
        })
    }
}
