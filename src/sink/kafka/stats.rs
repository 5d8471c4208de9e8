//! The sink's counters, read by `/metrics` and `--kafka-max-behind`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::progress::{Bounds, Buckets, Seconds, lock};

/// Counters of the sink.
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// The sink runs (or ran) in this process.
    pub enabled: std::sync::atomic::AtomicBool,
    /// Highest end LSN whose records are all acknowledged.
    pub acknowledged_lsn: AtomicU64,
    /// Per topic.
    pub topics: Mutex<BTreeMap<String, TopicCounts>>,
    /// Delivery latency: from a source transaction's first record handed
    /// to librdkafka until its last is acknowledged, counted per record.
    pub latency: Buckets<DeliverySeconds>,
    /// Sum of the delivery latencies.
    pub latency_sum: Seconds,
    /// `--kafka-drop-on-wal-risk` dropped Kafka in this process: the sink
    /// no longer runs and no longer holds the slot.
    pub dropped: std::sync::atomic::AtomicBool,
    /// What Kafka had acknowledged when it was dropped (it misses what follows).
    pub dropped_at_lsn: AtomicU64,
    /// Apply waits for Kafka now (`--kafka-max-behind`).
    pub holding_apply: Arc<std::sync::atomic::AtomicBool>,
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
    /// `records` were acknowledged, `latency` after the first of them was
    /// handed to librdkafka (each counted with it).
    pub(super) fn delivered(&self, latency: Duration, records: u64) {
        self.latency.record_n(latency.as_secs_f64(), records);
        self.latency_sum
            .add(latency.saturating_mul(u32::try_from(records).unwrap_or(u32::MAX)));
    }

    /// Records Kafka acknowledged, over all topics.
    pub fn acknowledged(&self) -> u64 {
        lock(&self.topics).values().map(|t| t.acknowledged).sum()
    }

    pub(super) fn add(&self, counts: &BTreeMap<Arc<str>, TopicCounts>) {
        let mut topics = lock(&self.topics);
        for (topic, c) in counts {
            let t = topics.entry(topic.to_string()).or_default();
            t.produced += c.produced;
            t.acknowledged += c.acknowledged;
            t.failed += c.failed;
        }
    }
}
