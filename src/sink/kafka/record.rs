//! One source transaction as Kafka records: each change in the Debezium
//! envelope on its table's topic, keyed by the primary key.
//!
//! ```text
//! change ──Names (topic, collection per table)──▶ envelope::change ──▶ send
//!        └─PrimaryKeys (blue's catalog, FULL/NOTHING/INDEX tables)──▶ record key
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::ConnInfo;
use crate::event::{ChangeKind, Relation, TxnMeta};
use crate::lsn::PgTimestamp;

use super::acker::{Group, send};
use super::config::{KafkaConfig, KafkaSinkError};
use super::deliveries::KafkaProducer;
use super::topics::Names;
use crate::sink::envelope::{self, Order, Source};

/// The source transaction being produced.
pub(super) struct Producing {
    meta: Arc<TxnMeta>,
    pub(super) records: Group,
    /// The changes' processing time (`ts_ms`), taken once per batch of them.
    now: PgTimestamp,
    /// Buffers the records are written into, handed from transaction to
    /// transaction.
    encoded: envelope::Encoded,
    total: u64,
    pub(super) per_table: BTreeMap<Arc<str>, u64>,
}

/// Primary keys of blue's tables whose replica identity is not their
/// primary key (FULL, NOTHING, another unique index), read from blue's
/// catalog once per relation and again when blue describes it anew, as
/// positions in the relation's published columns.
pub(super) struct PrimaryKeys {
    blue: ConnInfo,
    client: Option<tokio_postgres::Client>,
    keys: HashMap<u32, (Arc<Relation>, PrimaryKey)>,
}

/// Positions of a table's primary-key columns among its published columns
/// (`None`: it has no primary key).
type PrimaryKey = Option<Arc<[usize]>>;

impl PrimaryKeys {
    /// Nothing looked up yet; `blue` is where to look.
    pub(super) fn new(blue: ConnInfo) -> PrimaryKeys {
        PrimaryKeys {
            blue,
            client: None,
            keys: HashMap::new(),
        }
    }

    /// The session on blue, connecting anew when there is none or it closed.
    async fn client(&mut self) -> Result<&tokio_postgres::Client, crate::session::SessionError> {
        if self
            .client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            self.client = None;
            let client = crate::session::connect_plain(&self.blue, "teal kafka").await?;
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    /// Gives every table in `publications` its topic in `names`, in name
    /// order, so a collision stops teal at start, naming both tables,
    /// rather than when the second table first changes.
    pub(super) async fn check_topics(
        &mut self,
        publications: &[String],
        selection: &crate::config::TableSelection,
        names: &mut Names,
    ) -> Result<(), KafkaSinkError> {
        if publications.is_empty() {
            return Ok(());
        }
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| KafkaSinkError::Catalog {
            what: "the published tables".to_owned(),
            source,
        };
        let client = self.client().await.map_err(|e| fail(e.into()))?;
        // In byte order: the same table is named first on every run.
        let mut tables = crate::session::published_tables(client, publications)
            .await
            .map_err(|e| fail(e.into()))?;
        tables.retain(|t| selection.selects(t));
        for table in &tables {
            names.of(table)?;
        }
        Ok(())
    }

    /// The primary-key columns to key `relation`'s records by, when its
    /// replica identity columns are not them (`None`: use those).
    async fn primary_key(
        &mut self,
        relation: &Arc<Relation>,
    ) -> Result<PrimaryKey, KafkaSinkError> {
        use crate::event::ReplicaIdentity;
        if relation.replica_identity == ReplicaIdentity::Default {
            return Ok(None);
        }
        if let Some((seen, key)) = self.keys.get(&relation.rel_id) {
            if seen.version == relation.version {
                return Ok(key.clone());
            }
        }
        let what = format!("the primary key of {}", relation.name.quoted());
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| KafkaSinkError::Catalog {
            what: what.clone(),
            source,
        };
        let client = self.client().await.map_err(|e| fail(e.into()))?;
        let names = crate::session::primary_key_columns(client, relation.rel_id).await;
        let names = names.map_err(|e| fail(e.into()))?;
        let key: PrimaryKey = (!names.is_empty()).then(|| {
            names
                .iter()
                .filter_map(|n| relation.columns.iter().position(|c| &c.name == n))
                .collect()
        });
        self.keys
            .insert(relation.rel_id, (Arc::clone(relation), key.clone()));
        Ok(key)
    }
}

impl Producing {
    /// The transaction `meta` begins; `encoded`: the previous one's buffers.
    pub(super) fn new(meta: Arc<TxnMeta>, encoded: envelope::Encoded) -> Producing {
        Producing {
            meta,
            records: Group::new(),
            now: PgTimestamp::now(),
            encoded,
            total: 0,
            per_table: BTreeMap::new(),
        }
    }

    /// Its buffers, for the next transaction.
    pub(super) fn take_encoded(&mut self) -> envelope::Encoded {
        std::mem::take(&mut self.encoded)
    }

    /// Changes processed from now on carry this time.
    pub(super) fn stamp(&mut self) {
        self.now = PgTimestamp::now();
    }

    fn order(&mut self, table: &Arc<str>) -> Order {
        self.total += 1;
        let in_table = self.per_table.entry(Arc::clone(table)).or_default();
        *in_table += 1;
        Order {
            total: self.total,
            in_table: *in_table,
        }
    }

    pub(super) async fn change(
        &mut self,
        producer: &KafkaProducer,
        config: &KafkaConfig,
        source: &Source,
        names: &mut Names,
        keys: &mut PrimaryKeys,
        change: &crate::event::Change,
    ) -> Result<(), KafkaSinkError> {
        let now = self.now;
        match &change.kind {
            ChangeKind::Truncate { relations, .. } => {
                for relation in relations {
                    let (topic, table) = names.of(&relation.name)?;
                    let order = self.order(&table);
                    let value =
                        envelope::truncate(source, &self.meta, change, relation, order, now);
                    send(
                        producer,
                        &mut self.records,
                        &topic,
                        None,
                        Some(value.as_bytes()),
                    )
                    .await?;
                }
            }
            ChangeKind::Message(_) => {}
            ChangeKind::Insert { relation, .. }
            | ChangeKind::Update { relation, .. }
            | ChangeKind::Delete { relation, .. } => {
                let (topic, table) = names.of(&relation.name)?;
                let order = self.order(&table);
                let primary_key = keys.primary_key(relation).await?;
                let out = &mut self.encoded;
                let Some(has_key) = envelope::change_into(
                    source,
                    &self.meta,
                    change,
                    order,
                    now,
                    primary_key.as_deref(),
                    out,
                ) else {
                    return Ok(());
                };
                let key = has_key.then_some(out.key.as_slice());
                send(producer, &mut self.records, &topic, key, Some(&out.value)).await?;
                if config.tombstones && matches!(change.kind, ChangeKind::Delete { .. }) {
                    if let Some(k) = key {
                        send(producer, &mut self.records, &topic, Some(k), None).await?;
                    }
                }
            }
        }
        Ok(())
    }
}
