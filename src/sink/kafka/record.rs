//! One source transaction as Kafka records: each change in the Debezium
//! envelope on its table's topic, keyed by the primary key.
//!
//! ```text
//! change ──Names (topic, collection per table)──▶ envelope::change ──▶ send
//!        └─PrimaryKeys (blue's catalog, FULL/NOTHING/INDEX tables)──▶ record key
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rdkafka::producer::FutureProducer;

use crate::config::ConnInfo;
use crate::event::{ChangeKind, QualifiedName, Relation, TxnMeta};
use crate::lsn::PgTimestamp;

use super::acker::{Sent, send};
use super::config::{KafkaConfig, KafkaSinkError};
use crate::sink::envelope::{self, Order, Source};

/// The source transaction being produced.
pub(super) struct Producing {
    meta: Arc<TxnMeta>,
    pub(super) deliveries: Vec<Sent>,
    total: u64,
    pub(super) per_table: BTreeMap<Arc<str>, u64>,
}

/// Each table's topic and data-collection name, formatted once per table
/// rather than once per change.
#[derive(Default)]
pub(super) struct Names(HashMap<QualifiedName, (Arc<str>, Arc<str>)>);

impl Names {
    fn of(&mut self, prefix: &str, relation: &Relation) -> (Arc<str>, Arc<str>) {
        if let Some(names) = self.0.get(&relation.name) {
            return names.clone();
        }
        let name = &relation.name;
        let names: (Arc<str>, Arc<str>) = (
            format!("{prefix}.{}.{}", name.namespace, name.name).into(),
            name.to_string().into(),
        );
        self.0.insert(name.clone(), names.clone());
        names
    }
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
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| KafkaSinkError::Catalog {
            table: relation.name.to_string(),
            source,
        };
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => crate::session::connect_plain(&self.blue, "teal kafka")
                .await
                .map_err(|e| fail(e.into()))?,
        };
        let names = crate::session::primary_key_columns(&client, relation.rel_id).await;
        self.client = Some(client);
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
    pub(super) fn new(meta: Arc<TxnMeta>) -> Producing {
        Producing {
            meta,
            deliveries: Vec::new(),
            total: 0,
            per_table: BTreeMap::new(),
        }
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
        producer: &FutureProducer,
        config: &KafkaConfig,
        source: &Source,
        names: &mut Names,
        keys: &mut PrimaryKeys,
        change: &crate::event::Change,
    ) -> Result<(), KafkaSinkError> {
        let now = PgTimestamp::now();
        match &change.kind {
            ChangeKind::Truncate { relations, .. } => {
                for relation in relations {
                    let (topic, table) = names.of(&config.topic_prefix, relation);
                    let order = self.order(&table);
                    let value =
                        envelope::truncate(source, &self.meta, change, relation, order, now);
                    let d = send(producer, &topic, None, Some(&value)).await?;
                    self.deliveries.push(d);
                }
            }
            ChangeKind::Message(_) => {}
            ChangeKind::Insert { relation, .. }
            | ChangeKind::Update { relation, .. }
            | ChangeKind::Delete { relation, .. } => {
                let (topic, table) = names.of(&config.topic_prefix, relation);
                let order = self.order(&table);
                let primary_key = keys.primary_key(relation).await?;
                let Some((key, value)) = envelope::change(
                    source,
                    &self.meta,
                    change,
                    order,
                    now,
                    primary_key.as_deref(),
                ) else {
                    return Ok(());
                };
                let d = send(producer, &topic, key.as_deref(), Some(&value)).await?;
                self.deliveries.push(d);
                if config.tombstones && matches!(change.kind, ChangeKind::Delete { .. }) {
                    if let Some(k) = key.as_deref() {
                        let d = send(producer, &topic, Some(k), None).await?;
                        self.deliveries.push(d);
                    }
                }
            }
        }
        Ok(())
    }
}
