//! The Kafka audit stream: every committed change, in commit order, as
//! Debezium-format records, with a BEGIN and an END record per transaction.
//!
//! ```text
//! events ──produce (enqueue, never awaited one by one)──▶ librdkafka ──▶ brokers
//!    │                                                        │ delivery reports
//!    └──(end LSN, its records' count), in commit order ──▶ acker ─┘──▶ confirm(end LSN)
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
//! go into one Kafka transaction (it commits at a source commit once it
//! holds `--kafka-transaction-max-records` records or is
//! `--kafka-transaction-max-delay` old, or, when no events wait, 20 ms
//! old), which
//! also writes a progress record (key: the slot; value: the last source
//! transaction's commit and end LSN) to the progress topic. Only once the
//! Kafka transaction commits are its positions confirmed. A restarted teal
//! first fences its predecessor (`init_transactions` aborts whatever it had
//! open), reads the last committed progress record (`read_committed`) and
//! skips every source transaction at or below it, so a consumer reading
//! with `isolation.level=read_committed` sees each change exactly once,
//! even when blue resends what the slot had not confirmed yet.

//!
//! Files: `config` (settings, the producer, errors), `record` (a source
//! transaction as records), `acker` (confirming what Kafka acknowledged),
//! `deliveries` (delivery reports served on the sink's task),
//! `exactly_once` (the transactional producer), `stats` (counters),
//! `topics` (topic names: the escaping rule, collisions);
//! the Debezium envelope itself is `sink::envelope`.

mod acker;
mod config;
mod deliveries;
mod exactly_once;
mod record;
mod stats;
pub mod topics;

pub use config::{KafkaConfig, KafkaSinkError};
pub use stats::{DeliverySeconds, KafkaStats, TopicCounts};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::producer::Producer;
use tokio::sync::mpsc;

use crate::config::ConnInfo;
use crate::event::Event;
use crate::lsn::PgTimestamp;
use crate::progress::{Consumer, Lag};

use super::envelope::{self, Source};
use acker::{Group, Pending, acknowledge, send_json};
use config::producer;
use deliveries::{Deliveries, KafkaProducer};
use exactly_once::Transactional;
use record::{PrimaryKeys, Producing};
use topics::Names;

/// Transactions (or idle positions) queued for the acker; bounds how far
/// production runs ahead of acknowledgements, with librdkafka's own queue.
const ACK_QUEUE: usize = 1024;

/// How the sink names its transactional producer and sizes its Kafka
/// transactions (`--kafka-exactly-once`; apply's batch limits).
#[derive(Debug)]
pub struct Scope {
    /// The slot: `transactional.id` is `teal-<slot>`; the progress record's key.
    pub slot: String,
    /// Records after which a Kafka transaction commits (at a source commit).
    pub max_records: u64,
    /// Age after which a Kafka transaction commits (at a source commit).
    pub max_delay: Duration,
    /// Blue, for the primary keys of tables whose replica identity is not
    /// their primary key, and the published tables' topics at start.
    pub blue: ConnInfo,
    /// The publications: every table in them gets its topic checked at start.
    pub publications: Vec<String>,
    /// `--tables` / `--exclude-tables`: only those get topics.
    pub tables: crate::config::TableSelection,
    /// The ledger rows apply commits, published to the transactions topic
    /// (`None`: no ledger, or no green).
    pub ledger: Option<crate::progress::LedgerFeed>,
    /// Cancelled when Kafka is dropped (`--kafka-drop-on-wal-risk`): the
    /// sink purges what it holds and returns at once, confirming nothing more.
    pub dropped: tokio_util::sync::CancellationToken,
}

/// Produces `events` to Kafka until the channel closes; confirms through
/// `consumer` what Kafka acknowledged, and reports it to `lag` when given
/// (Kafka is the only consumer: `--no-apply`). Returns once every produced
/// record is acknowledged (or on the first error).
pub async fn run<B: AsRef<[Event]>>(
    config: KafkaConfig,
    mut scope: Scope,
    consumer: Consumer,
    mut events: mpsc::Receiver<B>,
    stats: Arc<KafkaStats>,
    lag: Option<Arc<Lag>>,
) -> Result<(), KafkaSinkError> {
    let producer = producer(&config, &scope.slot)?;
    let deliveries = Deliveries::new(&producer)?;
    stats.enabled.store(true, Ordering::Relaxed);
    let mut eos = if config.exactly_once {
        Some(Transactional::start(&producer, &config, &scope).await?)
    } else {
        None
    };
    let (ack_tx, ack_rx) = mpsc::channel::<Pending>(ACK_QUEUE);
    let acker = tokio::spawn(acknowledge(
        ack_rx,
        acker::settled(&producer),
        consumer,
        Arc::clone(&stats),
        lag,
    ));
    let source = Source {
        name: config.topic_prefix.clone(),
        db: config.db.clone(),
    };
    let transactions_topic: Arc<str> = config.transactions_topic().into();
    let mut txn: Option<Producing> = None;
    // Record buffers between source transactions.
    let mut spare = envelope::Encoded::default();
    let mut ledger = scope.ledger.take();
    let mut names = Names::new(&config);
    let mut keys = PrimaryKeys::new(scope.blue.clone());
    keys.check_topics(&scope.publications, &scope.tables, &mut names)
        .await?;
    let produced = async {
        loop {
            // An open Kafka transaction commits at its deadline (no events
            // came) when no source transaction is half produced.
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
            // Reports of earlier batches: freed on this thread, and the
            // acker confirms without waiting for the pipe's wake-up.
            deliveries.serve();
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
                        let mut open = Producing::new(Arc::clone(meta), std::mem::take(&mut spare));
                        for row in new_ledger_rows(&mut ledger) {
                            send_ledger(&producer, &mut open.records, &transactions_topic, &row)
                                .await?;
                        }
                        send_json(
                            &producer,
                            &mut open.records,
                            &transactions_topic,
                            &envelope::transaction_key(meta),
                            &envelope::begin(meta, PgTimestamp::now()),
                        )
                        .await?;
                        txn = Some(open);
                        continue;
                    }
                    Event::Changes(changes) => {
                        let Some(open) = txn.as_mut() else { continue };
                        open.stamp();
                        for change in changes {
                            open.change(&producer, &config, &source, &mut names, &mut keys, change)
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
                        spare = open.take_encoded();
                        let counts: Vec<(String, u64)> = open
                            .per_table
                            .into_iter()
                            .map(|(table, n)| (table.to_string(), n))
                            .collect();
                        send_json(
                            &producer,
                            &mut open.records,
                            &transactions_topic,
                            &envelope::transaction_key(meta),
                            &envelope::end(meta, &counts, PgTimestamp::now()),
                        )
                        .await?;
                        stats.add(&open.records.tally(|produced| TopicCounts {
                            produced,
                            ..TopicCounts::default()
                        }));
                        if let Some(t) = eos.as_mut() {
                            t.finished(meta, open.records.len());
                        }
                        Pending {
                            lsn: meta.end_lsn,
                            records: open.records,
                            commit: true,
                        }
                    }
                    Event::Idle { wal_end } if txn.is_none() => {
                        let mut pending = Pending::position(*wal_end, false);
                        // Exactly-once: only inside an open Kafka transaction
                        // (else with the next source transaction).
                        if eos.as_ref().is_none_or(Transactional::is_open) {
                            for row in new_ledger_rows(&mut ledger) {
                                send_ledger(
                                    &producer,
                                    &mut pending.records,
                                    &transactions_topic,
                                    &row,
                                )
                                .await?;
                            }
                        }
                        pending
                    }
                    // Heartbeats and other non-transactional messages are not audited.
                    Event::Idle { .. } | Event::Message(_) => continue,
                };
                if !confirm(&mut eos, &ack_tx, pending).await? {
                    return Ok(());
                }
            }
            // Between source transactions: commit the Kafka transaction when
            // it is full or old, or nothing more waits.
            if txn.is_none() {
                if let Some(t) = eos.as_mut().filter(|t| t.due(events.is_empty())) {
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
    };
    let dropped = scope.dropped.clone();
    // Reports are served whenever the sink waits (for events, for room in
    // librdkafka's queue, for the acker, for a commit).
    let produced = tokio::select! {
        r = deliveries.serving(produced) => r,
        () = dropped.cancelled() => {
            // Dropped: nothing more is confirmed (the consumer was withdrawn);
            // what librdkafka holds is purged rather than waited for (Kafka is
            // the slow consumer), and an open Kafka transaction is left to
            // the next producer's init to abort.
            producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            acker.abort();
            return Ok(());
        }
    };
    // A transaction cut off by shutdown or an error is not confirmed: blue
    // sends it again (and exactly-once aborts what Kafka holds of it).
    // (The abort flushes, and the acker waits for, reports to serve.)
    if let Some(t) = eos.as_mut() {
        deliveries.serving(t.abort(&producer)).await;
    }
    drop(ack_tx);
    let acked = joined(deliveries.serving(acker).await, "acker");
    drop(deliveries);
    // librdkafka's flush blocks: not on the runtime's threads.
    let _ = blocking(move || producer.flush(Duration::from_secs(10))).await;
    produced?;
    acked
}

/// The ledger rows apply committed since the last ones published, in
/// chain order.
fn new_ledger_rows(
    ledger: &mut Option<crate::progress::LedgerFeed>,
) -> Vec<Arc<crate::progress::LedgerHead>> {
    let Some(feed) = ledger.as_mut() else {
        return Vec::new();
    };
    let (rows, skipped) = feed.take();
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "Kafka fell more than {} ledger rows behind green: the oldest were not published to the transactions topic (green's teal.ledger has them all)",
            crate::progress::LEDGER_FEED_ROWS
        );
    }
    rows
}

/// Produces `head` to the transactions topic.
async fn send_ledger(
    producer: &KafkaProducer,
    group: &mut Group,
    topic: &Arc<str>,
    head: &crate::progress::LedgerHead,
) -> Result<(), KafkaSinkError> {
    let key = envelope::ledger_key(&head.slot);
    let value = envelope::ledger(head, PgTimestamp::now());
    send_json(producer, group, topic, &key, &value).await
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

/// What a sink task ended with: its own result, or (it panicked, or was
/// cancelled) a failure: never a success nobody saw.
pub fn joined(
    result: Result<Result<(), KafkaSinkError>, tokio::task::JoinError>,
    task: &'static str,
) -> Result<(), KafkaSinkError> {
    result.unwrap_or(Err(KafkaSinkError::Panicked(task)))
}

/// A blocking librdkafka call, off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_task_is_a_failure_not_a_success() {
        let panicked = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("a bug");
            }
            Ok(())
        })
        .await;
        assert!(matches!(
            joined(panicked, "acker"),
            Err(KafkaSinkError::Panicked("acker"))
        ));
        let ended = tokio::spawn(async { Ok(()) }).await;
        assert!(joined(ended, "sink").is_ok());
    }
}
