//! One capture, several consumers: each batch of events goes to apply and
//! to the Kafka sink, shared rather than copied.
//!
//! ```text
//! capture ──Vec<Event>──▶ fan_out ──SharedBatch──▶ Kafka sink (64 batches)
//!                                 └─SharedBatch──▶ apply (16 batches; held while green
//!                                                   would get --kafka-max-behind past Kafka)
//! ```
//!
//! Both channels are bounded: the slower consumer holds the other back, so
//! Kafka falls behind apply by at most its channel and librdkafka's queue,
//! and with a hold by at most that many bytes of WAL. With one consumer the
//! capture's channel goes to it as it is.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::event::{Event, SharedBatch};
use crate::lsn::Lsn;

/// Batches the Kafka sink may hold back.
const KAFKA_BATCHES: usize = 64;
/// Batches apply may hold back.
const APPLY_BATCHES: usize = 16;

/// The position a held-back consumer has made durable (Kafka's
/// acknowledged end LSN), read while apply waits.
pub type Acknowledged = Arc<dyn Fn() -> u64 + Send + Sync>;

/// `--kafka-max-behind`: apply waits while a batch would take green more
/// than `max` bytes of WAL past what Kafka `acknowledged`; `waiting` is
/// true while it does (Kafka, not green, is then the slow consumer).
pub struct Hold {
    /// Bytes of WAL.
    pub max: u64,
    /// Kafka's acknowledged end LSN.
    pub acknowledged: Acknowledged,
    /// Set while apply waits.
    pub waiting: Arc<std::sync::atomic::AtomicBool>,
}

/// What apply reads: the capture's batches, or (with Kafka too) the
/// batches it shares with the Kafka sink.
pub enum ApplyInput {
    /// Apply is the only consumer.
    Owned(mpsc::Receiver<Vec<Event>>),
    /// Shared with the Kafka sink.
    Shared(mpsc::Receiver<SharedBatch>),
}

/// What the Kafka sink reads.
pub enum KafkaInput {
    /// The sink is the only consumer (`--no-apply`).
    Owned(mpsc::Receiver<Vec<Event>>),
    /// Shared with apply.
    Shared(mpsc::Receiver<SharedBatch>),
}

/// Splits `events` for the consumers asked for. With a [`Hold`], apply
/// waits while a batch would take green more than its bytes of WAL past
/// Kafka (counted from the first position streamed while Kafka has
/// acknowledged nothing).
///
/// Once `dropped` is cancelled (`--kafka-drop-on-wal-risk`), apply goes on
/// alone: the Kafka sink gets nothing more and holds nothing back.
pub fn fan_out(
    events: mpsc::Receiver<Vec<Event>>,
    apply: bool,
    kafka: bool,
    hold: Option<Hold>,
    dropped: CancellationToken,
) -> (Option<ApplyInput>, Option<KafkaInput>) {
    match (apply, kafka) {
        (true, false) => (Some(ApplyInput::Owned(events)), None),
        (false, true) => (None, Some(KafkaInput::Owned(events))),
        (false, false) => (None, None),
        (true, true) => {
            let (apply_rx, kafka_rx) = tee(events, hold, dropped);
            (
                Some(ApplyInput::Shared(apply_rx)),
                Some(KafkaInput::Shared(kafka_rx)),
            )
        }
    }
}

fn tee(
    mut events: mpsc::Receiver<Vec<Event>>,
    hold: Option<Hold>,
    dropped: CancellationToken,
) -> (mpsc::Receiver<SharedBatch>, mpsc::Receiver<SharedBatch>) {
    let (apply_tx, apply_rx) = mpsc::channel(APPLY_BATCHES);
    let (kafka_tx, kafka_rx) = mpsc::channel(KAFKA_BATCHES);
    tokio::spawn(
        async move {
            let mut kafka_tx = Some(kafka_tx);
            let mut first: Option<u64> = None;
            while let Some(batch) = events.recv().await {
                let batch = SharedBatch(Arc::new(batch));
                if let Some(tx) = kafka_tx.as_ref() {
                    let sent = tokio::select! {
                        sent = tx.send(batch.clone()) => sent.is_ok(),
                        () = dropped.cancelled() => false,
                    };
                    if !sent {
                        if !dropped.is_cancelled() {
                            // The sink stopped (an error): so does the run.
                            break;
                        }
                        kafka_tx = None;
                    }
                }
                if let (Some(hold), Some(lsn), Some(_)) =
                    (&hold, last_position(&batch.0), kafka_tx.as_ref())
                {
                    let floor = *first.get_or_insert(lsn.0);
                    let mut waited = false;
                    loop {
                        let acked = (hold.acknowledged)().max(floor);
                        if lsn.0.saturating_sub(acked) <= hold.max
                            || apply_tx.is_closed()
                            || dropped.is_cancelled()
                        {
                            break;
                        }
                        if !waited {
                            tracing::info!(kafka_acknowledged = %Lsn(acked), next = %lsn, max_behind = hold.max, "apply waits for Kafka (--kafka-max-behind)");
                            hold.waiting.store(true, std::sync::atomic::Ordering::Relaxed);
                            waited = true;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if waited {
                        hold.waiting.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                if apply_tx.send(batch).await.is_err() {
                    break;
                }
            }
        }
        .in_current_span(),
    );
    (apply_rx, kafka_rx)
}

/// The furthest position a batch of events reaches (commits and idle ends).
fn last_position(batch: &[Event]) -> Option<Lsn> {
    batch
        .iter()
        .filter_map(|e| match e {
            Event::Commit(meta) => Some(meta.end_lsn),
            Event::Idle { wal_end } => Some(*wal_end),
            _ => None,
        })
        .max()
}
