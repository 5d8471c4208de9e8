//! Records handed to librdkafka, and the acker that confirms a position
//! once every record up to it is acknowledged.
//!
//! ```text
//! produce ──Sent (delivery future)──▶ Pending { lsn, deliveries } ──queue (in order)──▶ acknowledge
//!                                            every delivery Ok ──▶ consumer.confirm(lsn), lag
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::sync::mpsc;

use crate::lsn::{Lsn, PgTimestamp};
use crate::progress::{Consumer, Lag};

use super::config::KafkaSinkError;
use super::stats::{KafkaStats, TopicCounts};

/// A record handed to librdkafka, awaiting its delivery report.
pub(super) struct Sent {
    delivery: DeliveryFuture,
    pub(super) topic: Arc<str>,
    at: Instant,
}

/// One position to confirm once its records are delivered.
pub(super) struct Pending {
    pub(super) lsn: Lsn,
    pub(super) deliveries: Vec<Sent>,
    /// A transaction's end (else an idle position).
    pub(super) commit: bool,
}

impl Pending {
    /// A position with no records of its own.
    pub(super) fn position(lsn: Lsn, commit: bool) -> Pending {
        Pending {
            lsn,
            deliveries: Vec::new(),
            commit,
        }
    }
}

/// Enqueues one record; waits while librdkafka's queue is full.
pub(super) async fn send(
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
pub(super) async fn acknowledge(
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
