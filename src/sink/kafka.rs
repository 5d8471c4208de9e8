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
//!
//! With `--kafka-exactly-once` the producer is transactional
//! (`transactional.id` = `teal-<slot>`): consecutive source transactions
//! go into one Kafka transaction (up to the batch limits of apply: it
//! commits at a source commit once it holds `--batch-max-changes` records
//! or is `--batch-max-delay-ms` old), which
//! also writes a progress record (key: the slot; value: the last source
//! transaction's commit and end LSN) to the progress topic. Only once the
//! Kafka transaction commits are its positions confirmed. A restarted teal
//! first fences its predecessor (`init_transactions` aborts whatever it had
//! open), reads the last committed progress record (`read_committed`) and
//! skips every source transaction at or below it, so a consumer reading
//! with `isolation.level=read_committed` sees each change exactly once,
//! even when blue resends what the slot had not confirmed yet.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;
use tokio::sync::mpsc;

use crate::config::ConnInfo;
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
    /// `--kafka-exactly-once`: a transactional producer (see the module docs).
    pub exactly_once: bool,
    /// `--kafka-progress-topic` (default `<prefix>.teal_progress`): where
    /// exactly-once keeps its position; best created with
    /// `cleanup.policy=compact`.
    pub progress_topic: Option<String>,
    /// `--kafka-max-behind`: how far (bytes of WAL) green may get ahead of
    /// what Kafka acknowledged before apply waits (`None`: no limit beyond
    /// the channels between them).
    pub max_behind: Option<u64>,
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
            .field("exactly_once", &self.exactly_once)
            .field("max_behind", &self.max_behind)
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
            exactly_once: false,
            progress_topic: None,
            max_behind: None,
        }
    }

    /// The exactly-once progress topic.
    pub fn progress_topic(&self) -> String {
        self.progress_topic
            .clone()
            .unwrap_or_else(|| format!("{}.teal_progress", self.topic_prefix))
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
    /// A step of the transactional producer failed (`--kafka-exactly-once`).
    #[error("Kafka transaction ({step}, through the source transaction ending at {lsn}): {source}")]
    Transaction {
        /// init, begin, commit or abort.
        step: &'static str,
        /// End LSN of the last source transaction in it (0/0 before any).
        lsn: Lsn,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// A table's primary key could not be read from blue's catalog.
    #[error("reading the primary key of {table} on blue: {reason}")]
    Catalog {
        /// The table.
        table: String,
        /// What went wrong.
        reason: String,
    },
    /// The progress topic could not be read back (`--kafka-exactly-once`).
    #[error("reading teal's position from Kafka topic {topic}: {reason}")]
    Progress {
        /// The progress topic.
        topic: String,
        /// What went wrong.
        reason: String,
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

impl Pending {
    /// A position with no records of its own.
    fn position(lsn: Lsn, commit: bool) -> Pending {
        Pending {
            lsn,
            deliveries: Vec::new(),
            commit,
        }
    }
}

/// Transactions (or idle positions) queued for the acker; bounds how far
/// production runs ahead of acknowledgements, with librdkafka's own queue.
const ACK_QUEUE: usize = 1024;

/// How the sink names its transactional producer and sizes its Kafka
/// transactions (`--kafka-exactly-once`; apply's batch limits).
#[derive(Debug, Clone)]
pub struct Scope {
    /// The slot: `transactional.id` is `teal-<slot>`; the progress record's key.
    pub slot: String,
    /// Records after which a Kafka transaction commits (at a source commit).
    pub max_records: u64,
    /// Age after which a Kafka transaction commits (at a source commit).
    pub max_delay: Duration,
    /// Blue, for the primary keys of tables whose replica identity is not
    /// their primary key.
    pub blue: ConnInfo,
}

/// Produces `events` to Kafka until the channel closes; confirms through
/// `consumer` what Kafka acknowledged, and reports it to `lag` when given
/// (Kafka is the only consumer: `--no-apply`). Returns once every produced
/// record is acknowledged (or on the first error).
pub async fn run<B: AsRef<[Event]>>(
    config: KafkaConfig,
    scope: Scope,
    consumer: Consumer,
    mut events: mpsc::Receiver<B>,
    stats: Arc<KafkaStats>,
    lag: Option<Arc<Lag>>,
) -> Result<(), KafkaSinkError> {
    let producer = producer(&config, &scope.slot)?;
    stats.enabled.store(true, Ordering::Relaxed);
    let mut eos = if config.exactly_once {
        Some(Transactional::start(&producer, &config, &scope).await?)
    } else {
        None
    };
    let (ack_tx, ack_rx) = mpsc::channel::<Pending>(ACK_QUEUE);
    let acker = tokio::spawn(acknowledge(ack_rx, consumer, Arc::clone(&stats), lag));
    let source = Source {
        name: config.topic_prefix.clone(),
        db: config.db.clone(),
    };
    let transactions_topic: Arc<str> = config.transactions_topic().into();
    let mut txn: Option<OpenTxn> = None;
    let mut names = Names::default();
    let mut catalog = Catalog {
        blue: scope.blue.clone(),
        client: None,
        keys: HashMap::new(),
    };
    let produced = async {
        loop {
            // An open Kafka transaction commits at its deadline when no
            // source transaction is half produced.
            let deadline = eos
                .as_ref()
                .and_then(Transactional::deadline)
                .filter(|_| txn.is_none());
            let next = match deadline {
                Some(at) => match tokio::time::timeout_at(at.into(), events.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        if let Some(t) = eos.as_mut() {
                            if !t.commit_to(&producer, &ack_tx).await? {
                                return Ok(());
                            }
                        }
                        continue;
                    }
                },
                None => events.recv().await,
            };
            let Some(batch) = next else { break };
            for event in batch.as_ref() {
                let pending = match event {
                    Event::Begin(meta) => {
                        // Kafka holds it already (exactly-once, after a restart).
                        if eos.as_ref().is_some_and(|t| t.holds(meta)) {
                            continue;
                        }
                        if let Some(t) = eos.as_mut() {
                            t.begin(&producer)?;
                        }
                        let mut open = OpenTxn::new(Arc::clone(meta));
                        let begin = envelope::begin(meta, PgTimestamp::now()).to_string();
                        let key = envelope::transaction_key(meta).to_string();
                        open.deliveries.push(
                            send(&producer, &transactions_topic, Some(&key), Some(&begin)).await?,
                        );
                        txn = Some(open);
                        continue;
                    }
                    Event::Changes(changes) => {
                        let Some(open) = txn.as_mut() else { continue };
                        for change in changes {
                            open.change(
                                &producer,
                                &config,
                                &source,
                                &mut names,
                                &mut catalog,
                                change,
                            )
                            .await?;
                        }
                        continue;
                    }
                    Event::Commit(meta) => {
                        let Some(mut open) = txn.take() else {
                            // Skipped: confirm it, Kafka has it.
                            if eos.as_ref().is_some_and(|t| t.holds(meta)) {
                                confirm(&mut eos, &ack_tx, Pending::position(meta.end_lsn, true))
                                    .await?;
                            }
                            continue;
                        };
                        let counts: Vec<(String, u64)> = open
                            .per_table
                            .into_iter()
                            .map(|(table, n)| (table.to_string(), n))
                            .collect();
                        let end = envelope::end(meta, &counts, PgTimestamp::now()).to_string();
                        let key = envelope::transaction_key(meta).to_string();
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
                        if let Some(t) = eos.as_mut() {
                            t.finished(meta, open.deliveries.len());
                        }
                        Pending {
                            lsn: meta.end_lsn,
                            deliveries: open.deliveries,
                            commit: true,
                        }
                    }
                    Event::Idle { wal_end } if txn.is_none() => Pending::position(*wal_end, false),
                    // Heartbeats and other non-transactional messages are not audited.
                    Event::Idle { .. } | Event::Message(_) => continue,
                };
                if !confirm(&mut eos, &ack_tx, pending).await? {
                    return Ok(());
                }
            }
            // Between source transactions: commit the Kafka transaction when
            // it is full or old.
            if txn.is_none() {
                if let Some(t) = eos.as_mut().filter(|t| t.due()) {
                    if !t.commit_to(&producer, &ack_tx).await? {
                        return Ok(());
                    }
                }
            }
        }
        // Closed (shutdown): whole source transactions are committed.
        if let Some(t) = eos.as_mut().filter(|_| txn.is_none()) {
            t.commit_to(&producer, &ack_tx).await?;
        }
        Ok::<(), KafkaSinkError>(())
    }
    .await;
    // A transaction cut off by shutdown or an error is not confirmed: blue
    // sends it again (and exactly-once aborts what Kafka holds of it).
    if let Some(t) = eos.as_mut() {
        t.abort(&producer).await;
    }
    drop(ack_tx);
    let acked = acker.await.unwrap_or(Ok(()));
    // librdkafka's flush blocks: not on the runtime's threads.
    let _ = blocking(move || producer.flush(Duration::from_secs(10))).await;
    produced?;
    acked
}

/// Hands `pending` to the acker, or (exactly-once) to the open Kafka
/// transaction, whose commit releases it. False once the acker is gone.
async fn confirm(
    eos: &mut Option<Transactional>,
    acker: &mpsc::Sender<Pending>,
    pending: Pending,
) -> Result<bool, KafkaSinkError> {
    let pending = match eos.as_mut() {
        Some(t) => match t.hold(pending) {
            Some(p) => p,
            None => return Ok(true),
        },
        None => pending,
    };
    Ok(acker.send(pending).await.is_ok())
}

/// A blocking librdkafka call, off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// How long a commit may take (librdkafka gives up the transaction by
/// itself after `transaction.timeout.ms`, 60 s by default).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(300);

/// The transactional producer's state (`--kafka-exactly-once`).
struct Transactional {
    slot: String,
    progress_topic: Arc<str>,
    /// Commit LSN of the last source transaction Kafka holds (committed).
    holds_through: Option<Lsn>,
    max_records: u64,
    max_delay: Duration,
    open: Option<KafkaTxn>,
}

/// The open Kafka transaction.
struct KafkaTxn {
    started: Instant,
    records: u64,
    /// Positions to confirm once it commits, in order.
    done: Vec<Pending>,
    /// The last whole source transaction in it.
    last: Option<Arc<TxnMeta>>,
}

impl Transactional {
    /// Fences any earlier producer of this slot (aborting what it left
    /// open) and reads back how far Kafka holds the stream.
    async fn start(
        producer: &FutureProducer,
        config: &KafkaConfig,
        scope: &Scope,
    ) -> Result<Transactional, KafkaSinkError> {
        let p = producer.clone();
        blocking(move || p.init_transactions(Duration::from_secs(60)))
            .await
            .map_err(|source| KafkaSinkError::Transaction {
                step: "init",
                lsn: Lsn::ZERO,
                source,
            })?;
        let progress_topic = config.progress_topic();
        let (c, topic, slot) = (config.clone(), progress_topic.clone(), scope.slot.clone());
        let holds_through = blocking(move || read_progress(&c, &topic, &slot)).await?;
        tracing::info!(
            progress_topic,
            holds_through = %holds_through.map_or_else(|| "nothing".to_owned(), |l| l.to_string()),
            "exactly-once Kafka producer ready"
        );
        Ok(Transactional {
            slot: scope.slot.clone(),
            progress_topic: progress_topic.into(),
            holds_through,
            max_records: scope.max_records.max(1),
            max_delay: scope.max_delay,
            open: None,
        })
    }

    /// Whether Kafka already holds the source transaction.
    fn holds(&self, meta: &TxnMeta) -> bool {
        self.holds_through.is_some_and(|l| meta.commit_lsn <= l)
    }

    /// Opens a Kafka transaction unless one is open.
    fn begin(&mut self, producer: &FutureProducer) -> Result<(), KafkaSinkError> {
        if self.open.is_none() {
            producer
                .begin_transaction()
                .map_err(|source| KafkaSinkError::Transaction {
                    step: "begin",
                    lsn: self.holds_through.unwrap_or(Lsn::ZERO),
                    source,
                })?;
            self.open = Some(KafkaTxn {
                started: Instant::now(),
                records: 0,
                done: Vec::new(),
                last: None,
            });
        }
        Ok(())
    }

    /// A source transaction's records are all produced.
    fn finished(&mut self, meta: &Arc<TxnMeta>, records: usize) {
        if let Some(open) = self.open.as_mut() {
            open.records += records as u64;
            open.last = Some(Arc::clone(meta));
        }
    }

    /// Keeps `pending` until the open Kafka transaction commits; gives it
    /// back when none is open (nothing of it waits in Kafka).
    fn hold(&mut self, pending: Pending) -> Option<Pending> {
        match self.open.as_mut() {
            Some(open) => {
                open.done.push(pending);
                None
            }
            None => Some(pending),
        }
    }

    fn due(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|t| t.records >= self.max_records || t.started.elapsed() >= self.max_delay)
    }

    /// When the open Kafka transaction is due, however little it holds.
    fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|t| t.started + self.max_delay)
    }

    /// Commits and hands the positions the commit made safe to the acker.
    /// False once the acker is gone.
    async fn commit_to(
        &mut self,
        producer: &FutureProducer,
        acker: &mpsc::Sender<Pending>,
    ) -> Result<bool, KafkaSinkError> {
        for pending in self.commit(producer).await? {
            if acker.send(pending).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes the progress record and commits; returns the positions the
    /// commit made safe to confirm.
    async fn commit(&mut self, producer: &FutureProducer) -> Result<Vec<Pending>, KafkaSinkError> {
        let Some(mut open) = self.open.take() else {
            return Ok(Vec::new());
        };
        let Some(last) = open.last.clone() else {
            // Only positions (no source transaction): nothing to commit.
            self.open = Some(open);
            self.abort(producer).await;
            return Ok(Vec::new());
        };
        let key = json!({ "slot": self.slot }).to_string();
        let value = json!({
            "slot": self.slot,
            "commit_lsn": last.commit_lsn.to_string(),
            "end_lsn": last.end_lsn.to_string(),
            "xid": last.xid.0,
            "ts_ms": PgTimestamp::now().unix_micros().div_euclid(1000),
        })
        .to_string();
        let sent = send(producer, &self.progress_topic, Some(&key), Some(&value)).await?;
        if let Some(p) = open.done.last_mut() {
            p.deliveries.push(sent);
        }
        let p = producer.clone();
        match blocking(move || p.commit_transaction(COMMIT_TIMEOUT)).await {
            Ok(()) => {
                self.holds_through = Some(last.commit_lsn);
                Ok(open.done)
            }
            Err(source) => {
                self.open = Some(open);
                self.abort(producer).await;
                Err(KafkaSinkError::Transaction {
                    step: "commit",
                    lsn: last.end_lsn,
                    source,
                })
            }
        }
    }

    /// Aborts the open Kafka transaction, if any (best effort: a fenced or
    /// failed producer's transaction is aborted by the next one's init).
    async fn abort(&mut self, producer: &FutureProducer) {
        if self.open.take().is_none() {
            return;
        }
        let p = producer.clone();
        if let Err(e) = blocking(move || p.abort_transaction(Duration::from_secs(30))).await {
            tracing::warn!(error = %e, "could not abort the open Kafka transaction; the next start aborts it");
        }
    }
}

/// The commit LSN of the last source transaction the progress topic says
/// Kafka holds for `slot` (committed records only), reading each
/// partition's tail, further back until a record of the slot turns up.
fn read_progress(
    config: &KafkaConfig,
    topic: &str,
    slot: &str,
) -> Result<Option<Lsn>, KafkaSinkError> {
    let fail = |reason: String| KafkaSinkError::Progress {
        topic: topic.to_owned(),
        reason,
    };
    const TIMEOUT: Duration = Duration::from_secs(30);
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("teal-progress-{slot}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("client.id", "teal");
    for (k, v) in config
        .properties
        .iter()
        .filter(|(k, _)| consumer_property(k))
    {
        c.set(k, v);
    }
    let consumer: BaseConsumer = c.create().map_err(|e| fail(e.to_string()))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| fail(e.to_string()))?;
    let Some(t) = metadata.topics().first() else {
        return Ok(None);
    };
    if t.error().is_some() {
        // Not there yet: nothing was ever committed.
        return Ok(None);
    }
    let mut marks = Vec::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), TIMEOUT)
            .map_err(|e| fail(format!("partition {}: {e}", p.id())))?;
        if high > low {
            marks.push((p.id(), low, high));
        }
    }
    if marks.is_empty() {
        return Ok(None);
    }
    let mut window: i64 = 256;
    loop {
        let mut assignment = TopicPartitionList::new();
        let mut whole = true;
        for &(p, low, high) in &marks {
            let from = (high - window).max(low);
            whole &= from == low;
            assignment
                .add_partition_offset(topic, p, Offset::Offset(from))
                .map_err(|e| fail(e.to_string()))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| fail(e.to_string()))?;
        let mut at_end = std::collections::HashSet::new();
        let mut found: Option<Lsn> = None;
        let deadline = Instant::now() + TIMEOUT;
        while at_end.len() < marks.len() {
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "the end of {} of {} partitions not reached in {TIMEOUT:?}",
                    marks.len() - at_end.len(),
                    marks.len()
                )));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => return Err(fail(e.to_string())),
                Some(Ok(m)) => {
                    let key: Option<serde_json::Value> =
                        m.key().and_then(|k| serde_json::from_slice(k).ok());
                    if key.as_ref().and_then(|k| k["slot"].as_str()) != Some(slot) {
                        continue;
                    }
                    let lsn = m
                        .payload()
                        .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                        .and_then(|v| v["commit_lsn"].as_str().and_then(|l| l.parse::<Lsn>().ok()))
                        .ok_or_else(|| {
                            fail(format!(
                                "the record at partition {} offset {} is not teal's progress",
                                m.partition(),
                                m.offset()
                            ))
                        })?;
                    found = found.max(Some(lsn));
                }
            }
        }
        if found.is_some() || whole {
            return Ok(found);
        }
        window = window.saturating_mul(16);
    }
}

/// Properties the progress reader takes from `--kafka-property` (security
/// and connection settings; producer settings would only draw warnings).
fn consumer_property(key: &str) -> bool {
    [
        "security.",
        "sasl.",
        "ssl.",
        "ssl_",
        "client.dns",
        "socket.",
        "broker.",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

fn producer(config: &KafkaConfig, slot: &str) -> Result<FutureProducer, KafkaSinkError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("client.id", "teal");
    if config.exactly_once {
        // Records time out with their transaction (transaction.timeout.ms),
        // which then aborts; the stream restarts from Kafka's progress.
        c.set("transactional.id", format!("teal-{slot}"));
    } else {
        // Never give a record up: an outage pauses confirmation instead.
        c.set("message.timeout.ms", "0");
    }
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

/// Primary keys of blue's tables whose replica identity is not their
/// primary key (FULL, NOTHING, another unique index), read from blue's
/// catalog once per relation and again when blue describes it anew, as
/// positions in the relation's published columns.
struct Catalog {
    blue: ConnInfo,
    client: Option<tokio_postgres::Client>,
    keys: HashMap<u32, (Arc<Relation>, PrimaryKey)>,
}

/// Positions of a table's primary-key columns among its published columns
/// (`None`: it has no primary key).
type PrimaryKey = Option<Arc<[usize]>>;

impl Catalog {
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
            if Arc::ptr_eq(seen, relation) {
                return Ok(key.clone());
            }
        }
        let fail = |reason: String| KafkaSinkError::Catalog {
            table: relation.name.to_string(),
            reason,
        };
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => crate::apply::connect_plain(&self.blue, "teal kafka")
                .await
                .map_err(|e| fail(e.to_string()))?,
        };
        let names = crate::apply::primary_key_columns(&client, relation.rel_id).await;
        self.client = Some(client);
        let names = names.map_err(|e| fail(e.to_string()))?;
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
        catalog: &mut Catalog,
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
                let primary_key = catalog.primary_key(relation).await?;
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
