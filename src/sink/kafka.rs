//! The Kafka audit stream: every committed change, in commit order, as
//! Debezium-format records, with a BEGIN and an END record per transaction.
//!
//! ```text
//! events ──produce (enqueue, never awaited one by one)──▶ librdkafka ──▶ brokers
//!    │                                                        │ delivery reports
//!    └──(end LSN, its deliveries), in commit order ──▶ acker ─┘──▶ confirm(end LSN)
//! ```
//!
//! The acker confirms a transaction's end LSN only once every record of it
//! (and of every earlier one) is acknowledged (`acks=all`, idempotent
//! producer), so the slot's flush LSN, the minimum over green and Kafka,
//! never passes a record Kafka does not hold. While Kafka is down nothing is
//! confirmed (blue keeps the WAL) and records wait in librdkafka, which
//! retries them in order (`message.timeout.ms=0`: no record is ever given
//! up); the events channel and librdkafka's queue bound how far ahead the
//! sink may get.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::mpsc;

use crate::event::{ChangeKind, Event, QualifiedName, Relation, TxnMeta};
use crate::lsn::{Lsn, PgTimestamp};
use crate::progress::{Bounds, Buckets, Consumer, Lag, Seconds, lock};

use super::envelope::{self, Order, Source};

/// `--kafka-*` settings.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `--kafka-brokers`.
    pub brokers: String,
    /// `--kafka-topic-prefix`: topics are `<prefix>.<schema>.<table>`.
    pub topic_prefix: String,
    /// `--kafka-transactions-topic` (default `<prefix>.transactions`).
    pub transactions_topic: Option<String>,
    /// `--kafka-property key=value`: passed to librdkafka last.
    pub properties: Vec<(String, String)>,
    /// A tombstone (null value) after each delete, for log compaction.
    pub tombstones: bool,
    /// Blue's database (`source.db`).
    pub db: String,
}

impl std::fmt::Debug for KafkaConfig {
    /// Property values may be secrets (sasl.password, ssl.key.password): names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("transactions_topic", &self.transactions_topic)
            .field(
                "properties",
                &self.properties.iter().map(|p| &p.0).collect::<Vec<_>>(),
            )
            .field("tombstones", &self.tombstones)
            .finish_non_exhaustive()
    }
}

impl KafkaConfig {
    /// Defaults for `brokers`: prefix `teal`, tombstones on.
    pub fn new(brokers: impl Into<String>, db: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: "teal".into(),
            transactions_topic: None,
            properties: Vec::new(),
            tombstones: true,
            db: db.into(),
        }
    }

    /// The transaction metadata topic.
    pub fn transactions_topic(&self) -> String {
        self.transactions_topic
            .clone()
            .unwrap_or_else(|| format!("{}.transactions", self.topic_prefix))
    }

    /// Parses `key=value` (for `--kafka-property`).
    pub fn parse_property(s: &str) -> Result<(String, String), String> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(format!("{s:?} is not key=value")),
        }
    }
}

/// Why the Kafka sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    /// `--no-apply` without `--kafka-brokers`.
    #[error("--no-apply streams to Kafka only: give --kafka-brokers")]
    NoBrokers,
    /// The producer could not be created (a bad property, most likely).
    #[error("cannot create the Kafka producer: {0}")]
    Config(KafkaError),
    /// librdkafka refused a record.
    #[error("producing to Kafka topic {topic}: {source}")]
    Produce {
        /// The topic.
        topic: String,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// A record was not delivered.
    #[error("Kafka did not take a record of the transaction ending at {lsn}: {source}")]
    Delivery {
        /// End LSN of its transaction.
        lsn: Lsn,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
}

/// Counters of the sink.
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// The sink runs (or ran) in this process.
    pub enabled: std::sync::atomic::AtomicBool,
    /// Highest end LSN whose records are all acknowledged.
    pub acknowledged_lsn: AtomicU64,
    /// Per topic.
    pub topics: Mutex<BTreeMap<String, TopicCounts>>,
    /// Delivery latency (enqueued to acknowledged).
    pub latency: Buckets<DeliverySeconds>,
    /// Sum of the delivery latencies.
    pub latency_sum: Seconds,
}

/// Bucket bounds (seconds) of the delivery latency histogram.
#[derive(Debug)]
pub struct DeliverySeconds;

impl Bounds for DeliverySeconds {
    const BOUNDS: &'static [f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0];
}

/// Records of one topic.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TopicCounts {
    /// Handed to librdkafka.
    pub produced: u64,
    /// Acknowledged by Kafka.
    pub acknowledged: u64,
    /// Given up by librdkafka (the sink stops on the first).
    pub failed: u64,
}

impl KafkaStats {
    fn delivered(&self, latency: Duration) {
        self.latency.record(latency.as_secs_f64());
        self.latency_sum.add(latency);
    }

    /// Records Kafka acknowledged, over all topics.
    pub fn acknowledged(&self) -> u64 {
        lock(&self.topics).values().map(|t| t.acknowledged).sum()
    }

    fn add(&self, counts: &BTreeMap<Arc<str>, TopicCounts>) {
        let mut topics = lock(&self.topics);
        for (topic, c) in counts {
            let t = topics.entry(topic.to_string()).or_default();
            t.produced += c.produced;
            t.acknowledged += c.acknowledged;
            t.failed += c.failed;
        }
    }
}

/// A record handed to librdkafka, awaiting its delivery report.
struct Sent {
    delivery: DeliveryFuture,
    topic: Arc<str>,
    at: Instant,
}

/// One position to confirm once its records are delivered.
struct Pending {
    lsn: Lsn,
    deliveries: Vec<Sent>,
    /// A transaction's end (else an idle position).
    commit: bool,
}

/// Transactions (or idle positions) queued for the acker; bounds how far
/// production runs ahead of acknowledgements, with librdkafka's own queue.
const ACK_QUEUE: usize = 1024;

/// Produces `events` to Kafka until the channel closes; confirms through
/// `consumer` what Kafka acknowledged, and reports it to `lag` when given
/// (Kafka is the only consumer: `--no-apply`). Returns once every produced
/// record is acknowledged (or on the first error).
pub async fn run(
    config: KafkaConfig,
    consumer: Consumer,
    mut events: mpsc::Receiver<Vec<Event>>,
    stats: Arc<KafkaStats>,
    lag: Option<Arc<Lag>>,
) -> Result<(), KafkaSinkError> {
    let producer = producer(&config)?;
    stats.enabled.store(true, Ordering::Relaxed);
    let (ack_tx, ack_rx) = mpsc::channel::<Pending>(ACK_QUEUE);
    let acker = tokio::spawn(acknowledge(ack_rx, consumer, Arc::clone(&stats), lag));
    let source = Source {
        name: config.topic_prefix.clone(),
        db: config.db.clone(),
    };
    let transactions_topic: Arc<str> = config.transactions_topic().into();
    let mut txn: Option<OpenTxn> = None;
    let mut names = Names::default();
    let produced = async {
        while let Some(batch) = events.recv().await {
            for event in batch {
                match event {
                    Event::Begin(meta) => {
                        let mut open = OpenTxn::new(Arc::clone(&meta));
                        let begin = envelope::begin(&meta, PgTimestamp::now()).to_string();
                        let key = envelope::transaction_key(&meta).to_string();
                        open.deliveries.push(
                            send(&producer, &transactions_topic, Some(&key), Some(&begin)).await?,
                        );
                        txn = Some(open);
                    }
                    Event::Changes(changes) => {
                        let Some(open) = txn.as_mut() else { continue };
                        for change in &changes {
                            open.change(&producer, &config, &source, &mut names, change)
                                .await?;
                        }
                    }
                    Event::Commit(meta) => {
                        let Some(mut open) = txn.take() else { continue };
                        let counts: Vec<(String, u64)> = open
                            .per_table
                            .into_iter()
                            .map(|(table, n)| (table.to_string(), n))
                            .collect();
                        let end = envelope::end(&meta, &counts, PgTimestamp::now()).to_string();
                        let key = envelope::transaction_key(&meta).to_string();
                        open.deliveries.push(
                            send(&producer, &transactions_topic, Some(&key), Some(&end)).await?,
                        );
                        let mut produced: BTreeMap<Arc<str>, TopicCounts> = BTreeMap::new();
                        for sent in &open.deliveries {
                            produced
                                .entry(Arc::clone(&sent.topic))
                                .or_default()
                                .produced += 1;
                        }
                        stats.add(&produced);
                        if ack_tx
                            .send(Pending {
                                lsn: meta.end_lsn,
                                deliveries: open.deliveries,
                                commit: true,
                            })
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                    Event::Idle { wal_end } => {
                        if txn.is_none()
                            && ack_tx
                                .send(Pending {
                                    lsn: wal_end,
                                    deliveries: Vec::new(),
                                    commit: false,
                                })
                                .await
                                .is_err()
                        {
                            return Ok(());
                        }
                    }
                    // Heartbeats and other non-transactional messages are not audited.
                    Event::Message(_) => {}
                }
            }
        }
        Ok::<(), KafkaSinkError>(())
    }
    .await;
    // A transaction cut off by shutdown is not confirmed: blue sends it again.
    drop(ack_tx);
    let acked = acker.await.unwrap_or(Ok(()));
    // librdkafka's flush blocks: not on the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    produced?;
    acked
}

fn producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaSinkError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Never give a record up: an outage pauses confirmation instead.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("client.id", "teal");
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c.create().map_err(KafkaSinkError::Config)
}

/// Enqueues one record; waits while librdkafka's queue is full.
async fn send(
    producer: &FutureProducer,
    topic: &Arc<str>,
    key: Option<&str>,
    payload: Option<&str>,
) -> Result<Sent, KafkaSinkError> {
    let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = payload {
        record = record.payload(p);
    }
    loop {
        match producer.send_result(record) {
            Ok(delivery) => {
                return Ok(Sent {
                    delivery,
                    topic: Arc::clone(topic),
                    at: Instant::now(),
                });
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((source, _)) => {
                return Err(KafkaSinkError::Produce {
                    topic: topic.to_string(),
                    source,
                });
            }
        }
    }
}

/// Confirms each position once its records (and all earlier ones) are acknowledged.
async fn acknowledge(
    mut queue: mpsc::Receiver<Pending>,
    consumer: Consumer,
    stats: Arc<KafkaStats>,
    lag: Option<Arc<Lag>>,
) -> Result<(), KafkaSinkError> {
    while let Some(pending) = queue.recv().await {
        let mut counts: BTreeMap<Arc<str>, TopicCounts> = BTreeMap::new();
        for sent in pending.deliveries {
            let c = counts.entry(Arc::clone(&sent.topic)).or_default();
            match sent.delivery.await {
                Ok(Ok(_)) => {
                    c.acknowledged += 1;
                    stats.delivered(sent.at.elapsed());
                }
                Ok(Err((source, _))) => {
                    c.failed += 1;
                    stats.add(&counts);
                    return Err(KafkaSinkError::Delivery {
                        lsn: pending.lsn,
                        source,
                    });
                }
                // The producer went away (shutdown): nothing more is confirmed.
                Err(_) => {
                    stats.add(&counts);
                    return Ok(());
                }
            }
        }
        stats.add(&counts);
        stats
            .acknowledged_lsn
            .fetch_max(pending.lsn.0, Ordering::Relaxed);
        consumer.confirm(pending.lsn);
        if let Some(lag) = &lag {
            lag.applied(pending.lsn, PgTimestamp::now(), pending.commit);
        }
    }
    Ok(())
}

/// The transaction being produced.
struct OpenTxn {
    meta: Arc<TxnMeta>,
    deliveries: Vec<Sent>,
    total: u64,
    per_table: BTreeMap<Arc<str>, u64>,
}

/// Each table's topic and data-collection name, formatted once per table
/// rather than once per change.
#[derive(Default)]
struct Names(HashMap<QualifiedName, (Arc<str>, Arc<str>)>);

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

impl OpenTxn {
    fn new(meta: Arc<TxnMeta>) -> OpenTxn {
        OpenTxn {
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

    async fn change(
        &mut self,
        producer: &FutureProducer,
        config: &KafkaConfig,
        source: &Source,
        names: &mut Names,
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
                let Some((key, value)) = envelope::change(source, &self.meta, change, order, now)
                else {
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
