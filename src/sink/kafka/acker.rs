//! Records handed to librdkafka, counted per group (a source transaction's,
//! an idle position's), and the acker that confirms a position once every
//! record of its group, and of every group before it, is acknowledged.
//!
//! ```text
//! produce ──Group (remaining += 1; the record carries the group)──▶ librdkafka
//!   the sink's task (`deliveries`) ──delivery report──▶ remaining -= 1 (wakes the acker at 0)
//! Pending { lsn, records: Group } ──queue (in order)──▶ acknowledge
//!                                 every record Ok ──▶ consumer.confirm(lsn), lag
//! ```
//!
//! One count per group rather than a future per record: no allocation, no
//! channel and no wake-up per record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Message};
use tokio::sync::{Notify, mpsc};

use crate::lsn::{Lsn, PgTimestamp};
use crate::progress::{Consumer, Lag, lock};

use super::config::KafkaSinkError;
use super::deliveries::KafkaProducer;
use super::stats::{KafkaStats, TopicCounts};

/// Counts delivery reports into the records' groups.
#[derive(Default)]
pub(super) struct Counting {
    /// Woken when a group's last record is reported, or one fails (waiters
    /// register with `notified()` before they check: `notify_waiters`
    /// keeps no permit).
    settled: Arc<Notify>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = Arc<Reports>;

    fn delivery(&self, result: &DeliveryResult<'_>, group: Arc<Reports>) {
        let failed = match result {
            Ok(_) => false,
            Err((e, message)) => {
                let mut failures = lock(&group.failures);
                failures.first.get_or_insert_with(|| e.clone());
                let topic = message.topic();
                match failures.per_topic.iter_mut().find(|(t, _)| t == topic) {
                    Some((_, n)) => *n += 1,
                    None => failures.per_topic.push((topic.to_owned(), 1)),
                }
                group.failed.fetch_add(1, Ordering::AcqRel);
                true
            }
        };
        if group.remaining.fetch_sub(1, Ordering::AcqRel) == 1 || failed {
            // Every waiter: the acker, and an exactly-once commit waiting
            // for its records.
            self.settled.notify_waiters();
        }
    }
}

/// Delivery reports of one group, written where reports are served.
#[derive(Debug, Default)]
pub(super) struct Reports {
    /// Records handed to librdkafka and not reported yet.
    remaining: AtomicU64,
    /// Records librdkafka gave up.
    failed: AtomicU64,
    /// What failed (rare: a lock is fine).
    failures: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    first: Option<KafkaError>,
    per_topic: Vec<(String, u64)>,
}

/// Records produced for one position, per topic.
#[derive(Debug)]
pub(super) struct Group {
    reports: Arc<Reports>,
    /// Records per topic (a transaction's mostly go to one or two).
    topics: Vec<(Arc<str>, u64)>,
    /// When the first record was handed over.
    started: Option<Instant>,
}

impl Group {
    pub(super) fn new() -> Group {
        Group {
            reports: Arc::new(Reports::default()),
            topics: Vec::new(),
            started: None,
        }
    }

    /// Records in the group.
    pub(super) fn len(&self) -> u64 {
        self.topics.iter().map(|(_, n)| n).sum()
    }

    /// Its records per topic, as counts of the kind `as_counts` makes.
    pub(super) fn tally(
        &self,
        as_counts: impl Fn(u64) -> TopicCounts,
    ) -> BTreeMap<Arc<str>, TopicCounts> {
        self.topics
            .iter()
            .map(|(topic, n)| (Arc::clone(topic), as_counts(*n)))
            .collect()
    }

    fn count(&mut self, topic: &Arc<str>) {
        match self
            .topics
            .iter_mut()
            .rev()
            .find(|(t, _)| Arc::ptr_eq(t, topic) || **t == **topic)
        {
            Some((_, n)) => *n += 1,
            None => self.topics.push((Arc::clone(topic), 1)),
        }
    }
}

/// One position to confirm once its records are delivered.
pub(super) struct Pending {
    pub(super) lsn: Lsn,
    pub(super) records: Group,
    /// A transaction's end (else an idle position).
    pub(super) commit: bool,
}

impl Pending {
    /// A position with no records of its own.
    pub(super) fn position(lsn: Lsn, commit: bool) -> Pending {
        Pending {
            lsn,
            records: Group::new(),
            commit,
        }
    }
}

/// Hands one record to librdkafka, counted in `group`; waits while
/// librdkafka's queue is full.
pub(super) async fn send(
    producer: &KafkaProducer,
    group: &mut Group,
    topic: &Arc<str>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<(), KafkaSinkError> {
    // Counted before librdkafka can report it.
    group.reports.remaining.fetch_add(1, Ordering::AcqRel);
    let mut record: BaseRecord<'_, [u8], [u8], Arc<Reports>> =
        BaseRecord::with_opaque_to(topic, Arc::clone(&group.reports));
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = payload {
        record = record.payload(p);
    }
    loop {
        match producer.send(record) {
            Ok(()) => {
                group.count(topic);
                group.started.get_or_insert_with(Instant::now);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((source, _)) => {
                group.reports.remaining.fetch_sub(1, Ordering::AcqRel);
                return Err(KafkaSinkError::Produce {
                    topic: topic.to_string(),
                    source,
                });
            }
        }
    }
}

/// [`send`] of a record whose key and value are JSON documents (the
/// transaction topic's BEGIN, END and LEDGER records, the progress record).
pub(super) async fn send_json(
    producer: &KafkaProducer,
    group: &mut Group,
    topic: &Arc<str>,
    key: &serde_json::Value,
    value: &serde_json::Value,
) -> Result<(), KafkaSinkError> {
    let (key, value) = (key.to_string(), value.to_string());
    send(
        producer,
        group,
        topic,
        Some(key.as_bytes()),
        Some(value.as_bytes()),
    )
    .await
}

/// Waits until every record of `pending` is reported, or one of them failed.
pub(super) async fn reported(settled: &Notify, pending: &[Pending]) {
    for p in pending {
        let reports = &p.records.reports;
        loop {
            // Registered before the check: a report in between still wakes it.
            let woken = settled.notified();
            if reports.remaining.load(Ordering::Acquire) == 0
                || reports.failed.load(Ordering::Acquire) > 0
            {
                break;
            }
            woken.await;
        }
    }
}

/// Confirms each position once its records (and all earlier ones) are acknowledged.
pub(super) async fn acknowledge(
    mut queue: mpsc::Receiver<Pending>,
    settled: Arc<Notify>,
    consumer: Consumer,
    stats: Arc<KafkaStats>,
    lag: Option<Arc<Lag>>,
) -> Result<(), KafkaSinkError> {
    while let Some(pending) = queue.recv().await {
        let group = &pending.records;
        let reports = &group.reports;
        reported(&settled, std::slice::from_ref(&pending)).await;
        if reports.failed.load(Ordering::Acquire) > 0 {
            // The sink stops: the failures are counted, the group's
            // acknowledged records are not (its position is not confirmed).
            let failures = lock(&reports.failures);
            let counts = failures
                .per_topic
                .iter()
                .map(|(topic, n)| {
                    let c = TopicCounts {
                        failed: *n,
                        ..TopicCounts::default()
                    };
                    (Arc::<str>::from(topic.as_str()), c)
                })
                .collect();
            stats.add(&counts);
            let source = failures
                .first
                .clone()
                .unwrap_or(KafkaError::MessageProduction(RDKafkaErrorCode::Fail));
            return Err(KafkaSinkError::Delivery {
                lsn: pending.lsn,
                source,
            });
        }
        let counts = group.tally(|acknowledged| TopicCounts {
            acknowledged,
            ..TopicCounts::default()
        });
        if let Some(started) = group.started {
            stats.delivered(started.elapsed(), group.len());
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

/// The waker of the acker of `producer`'s deliveries.
pub(super) fn settled(producer: &KafkaProducer) -> Arc<Notify> {
    use rdkafka::producer::Producer;
    Arc::clone(&producer.context().settled)
}
