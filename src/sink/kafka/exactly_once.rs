//! `--kafka-exactly-once`: the transactional producer, and where a
//! restarted teal finds how far Kafka holds the stream.
//!
//! ```text
//! start: init_transactions (fences the previous producer) ──▶ read_progress (read_committed)
//! source transactions ──▶ one Kafka transaction (+ progress record) ──commit──▶ positions to the acker
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;
use tokio::sync::mpsc;

use crate::event::TxnMeta;
use crate::lsn::{Lsn, PgTimestamp};

use super::acker::{Group, Pending, reported, send_json};
use super::config::{KafkaConfig, KafkaSinkError, consumer_property};
use super::deliveries::KafkaProducer;
use super::{Scope, blocking};

/// An open Kafka transaction commits as soon as no events wait for the
/// sink and it is this old, rather than at `--kafka-transaction-max-delay`:
/// a stream that goes quiet is not held back for the whole delay, and a
/// trickle of changes commits at most this often.
const IDLE_COMMIT_AGE: Duration = Duration::from_millis(20);

/// How long a commit may take (librdkafka gives up the transaction by
/// itself after `transaction.timeout.ms`, 60 s by default).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(300);

/// The transactional producer's state (`--kafka-exactly-once`).
pub(super) struct Transactional {
    slot: String,
    position_topic: Arc<str>,
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
    pub(super) async fn start(
        producer: &KafkaProducer,
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
        let position_topic = config.position_topic();
        let (c, topic, slot) = (config.clone(), position_topic.clone(), scope.slot.clone());
        let holds_through = blocking(move || read_progress(&c, &topic, &slot)).await?;
        tracing::info!(
            position_topic,
            holds_through = %holds_through.map_or_else(|| "nothing".to_owned(), |l| l.to_string()),
            "exactly-once Kafka producer ready"
        );
        Ok(Transactional {
            slot: scope.slot.clone(),
            position_topic: position_topic.into(),
            holds_through,
            max_records: scope.max_records.max(1),
            max_delay: scope.max_delay,
            open: None,
        })
    }

    /// Whether Kafka already holds the source transaction.
    pub(super) fn holds(&self, meta: &TxnMeta) -> bool {
        self.holds_through.is_some_and(|l| meta.commit_lsn <= l)
    }

    /// A Kafka transaction is open.
    pub(super) fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Opens a Kafka transaction unless one is open.
    pub(super) fn begin(&mut self, producer: &KafkaProducer) -> Result<(), KafkaSinkError> {
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
    pub(super) fn finished(&mut self, meta: &Arc<TxnMeta>, records: u64) {
        if let Some(open) = self.open.as_mut() {
            open.records += records;
            open.last = Some(Arc::clone(meta));
        }
    }

    /// Keeps `pending` until the open Kafka transaction commits; gives it
    /// back when none is open (nothing of it waits in Kafka).
    pub(super) fn hold(&mut self, pending: Pending) -> Option<Pending> {
        match self.open.as_mut() {
            Some(open) => {
                open.done.push(pending);
                None
            }
            None => Some(pending),
        }
    }

    /// Whether the open Kafka transaction commits now (between source
    /// transactions): it is full or `--kafka-transaction-max-delay` old,
    /// or (`idle`: no events wait) at least [`IDLE_COMMIT_AGE`] old.
    pub(super) fn due(&self, idle: bool) -> bool {
        self.open.as_ref().is_some_and(|t| {
            let age = t.started.elapsed();
            t.records >= self.max_records
                || age >= self.max_delay
                || (idle && age >= IDLE_COMMIT_AGE)
        })
    }

    /// When the open Kafka transaction commits if no event comes first.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.open
            .as_ref()
            .map(|t| t.started + self.max_delay.min(IDLE_COMMIT_AGE))
    }

    /// Commits and hands the positions the commit made safe to the acker.
    /// False once the acker is gone.
    pub(super) async fn commit_to(
        &mut self,
        producer: &KafkaProducer,
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
    async fn commit(&mut self, producer: &KafkaProducer) -> Result<Vec<Pending>, KafkaSinkError> {
        let Some(mut open) = self.open.take() else {
            return Ok(Vec::new());
        };
        let Some(last) = open.last.clone() else {
            // Only positions (no source transaction): nothing to commit.
            self.open = Some(open);
            self.abort(producer).await;
            return Ok(Vec::new());
        };
        let key = json!({ "slot": self.slot });
        let value = json!({
            "slot": self.slot,
            "commit_lsn": last.commit_lsn.to_string(),
            "end_lsn": last.end_lsn.to_string(),
            "xid": last.xid.0,
            "ts_ms": PgTimestamp::now().unix_micros().div_euclid(1000),
        });
        // Confirmed with the last position the commit makes safe.
        let mut alone = Group::new();
        let group = match open.done.last_mut() {
            Some(p) => &mut p.records,
            None => &mut alone,
        };
        send_json(producer, group, &self.position_topic, &key, &value).await?;
        // Every record delivered first: librdkafka's commit flushes what is
        // in flight itself, and that flush took 100 ms every time in the
        // Kafka bench (against 5-20 ms for the reports to arrive), a pause
        // for the whole stream at each commit. A failed record, or a wait
        // past the timeout, is left to the commit to report.
        let settled = super::acker::settled(producer);
        let _ = tokio::time::timeout(COMMIT_TIMEOUT, reported(&settled, &open.done)).await;
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
    pub(super) async fn abort(&mut self, producer: &KafkaProducer) {
        if self.open.take().is_none() {
            return;
        }
        let p = producer.clone();
        if let Err(e) = blocking(move || p.abort_transaction(Duration::from_secs(30))).await {
            tracing::warn!(error = %crate::error::Report(&e), "could not abort the open Kafka transaction; the next start aborts it");
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
    let fail = |reason: String| KafkaSinkError::Position {
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
