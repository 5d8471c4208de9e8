//! `--kafka-drop-on-wal-risk`: when blue is about to invalidate the slot
//! and Kafka, not green, is what holds it back, Kafka leaves the slot's
//! watermark for the rest of the run rather than cost green its slot.
//!
//! ```text
//! slot watcher (safe_wal_size, WAL rate, wal_status) ─┐
//! Kafka's confirmed LSN < green's confirmed LSN ──────┴─▶ withdraw Kafka's consumer (flush LSN = green's)
//!                                                        stop the sink (purge), release --kafka-max-behind
//!                                                        error log, 'kafka_drop' audit row, teal_kafka_dropped 1
//! ```
//!
//! Kafka then misses every change after the LSN it had acknowledged (the
//! audit row and the log name it); a restart of teal resumes Kafka from
//! the slot's position.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::ConnInfo;
use crate::lsn::Lsn;
use crate::monitor::Monitor;
use crate::progress::{ConsumerView, SlotHealth};
use crate::store::Store;

/// How often the guard looks.
const TICK: Duration = Duration::from_millis(250);

/// What the guard watches and whom it tells.
pub(crate) struct Guard {
    /// `--kafka-drop-on-wal-risk`'s horizon.
    pub(crate) horizon: Duration,
    /// Kafka's consumer of the slot's flush LSN.
    pub(crate) kafka: ConsumerView,
    /// Green's.
    pub(crate) green: ConsumerView,
    /// Cancelled to drop Kafka (the sink and the fan-out listen).
    pub(crate) dropped: CancellationToken,
    /// The slot.
    pub(crate) slot: String,
    /// Blue and green, for the audit row (never with their passwords).
    pub(crate) source: ConnInfo,
    pub(crate) target: ConnInfo,
    /// teal's schema on green.
    pub(crate) store: Store,
}

/// Why the slot is at risk, if it is, within `horizon`.
pub(crate) fn at_risk(health: &SlotHealth, horizon: Duration) -> Option<String> {
    if health.wal_status.as_deref() == Some("unreserved") {
        return Some("wal_status is unreserved: the next checkpoint invalidates the slot".into());
    }
    let eta = health.invalidation_eta_seconds?;
    (eta <= horizon.as_secs_f64()).then(|| {
        format!(
            "blue would invalidate the slot in about {eta:.0} s at its WAL rate ({} bytes of room left)",
            health.safe_wal_bytes.unwrap_or(0)
        )
    })
}

impl Guard {
    /// Watches until `stop`; drops Kafka at most once.
    pub(crate) async fn run(self, monitor: Arc<Monitor>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = stop.cancelled() => return,
            }
            let Some(health) = monitor.slot_watch.health() else {
                continue;
            };
            let Some(reason) = at_risk(&health, self.horizon) else {
                continue;
            };
            let (Some(kafka), Some(green)) = (self.kafka.confirmed(), self.green.confirmed())
            else {
                return;
            };
            // Green holds the slot as far back as Kafka does, and not
            // because it waits for Kafka: dropping Kafka would not help.
            let held = monitor.kafka.holding_apply.load(Ordering::Relaxed);
            if kafka >= green && !held {
                continue;
            }
            self.drop_kafka(&monitor, kafka, green, &reason, &health)
                .await;
            return;
        }
    }

    async fn drop_kafka(
        &self,
        monitor: &Monitor,
        kafka: Lsn,
        green: Lsn,
        reason: &str,
        health: &SlotHealth,
    ) {
        let stats = &monitor.kafka;
        stats.dropped_at_lsn.store(kafka.0, Ordering::Relaxed);
        stats.dropped.store(true, Ordering::Relaxed);
        self.kafka.withdraw();
        self.dropped.cancel();
        tracing::error!(
            slot = %self.slot,
            kafka_acknowledged = %kafka,
            green_applied = %green,
            reason,
            "Kafka dropped from slot {:?}'s watermark (--kafka-drop-on-wal-risk): {reason}, and Kafka, \
             not green, held it back. Kafka misses the changes after {kafka} (green has them); \
             restart teal to resume Kafka from the slot's position",
            self.slot
        );
        let started = Instant::now();
        let mut record = crate::ops::audit::running(
            "kafka_drop",
            &monitor.correlation_id,
            &self.slot,
            &self.source,
            &self.target,
            serde_json::Value::Null,
        );
        crate::ops::audit::finish(
            &mut record,
            "succeeded",
            started,
            serde_json::json!({
                "kafka_acknowledged_lsn": kafka.to_string(),
                "green_applied_lsn": green.to_string(),
                "reason": reason,
                "wal_status": health.wal_status,
                "safe_wal_bytes": health.safe_wal_bytes,
                "invalidation_eta_seconds": health.invalidation_eta_seconds,
            }),
        );
        // A few tries: the audit row must not be lost to one failed session,
        // and must not stop the stream either.
        for attempt in 0..5 {
            let written = async {
                let client = crate::session::connect_plain(&self.target, "teal audit")
                    .await
                    .map_err(|e| crate::error::Report(&e).to_string())?;
                self.store
                    .audit(&client, &record)
                    .await
                    .map_err(|e| crate::error::Report(&e).to_string())
            };
            match tokio::time::timeout(Duration::from_secs(10), written).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) if attempt == 4 => {
                    tracing::error!(error = %e, "could not write the kafka_drop audit row on green");
                }
                Err(_) if attempt == 4 => {
                    tracing::error!("could not write the kafka_drop audit row on green: no answer");
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(status: &str, eta: Option<f64>) -> SlotHealth {
        SlotHealth {
            retained_bytes: 0,
            wal_status: Some(status.into()),
            confirmed_flush_lsn: None,
            safe_wal_bytes: Some(1000),
            wal_bytes_per_second: Some(10.0),
            invalidation_eta_seconds: eta,
        }
    }

    #[test]
    fn risk_is_an_eta_within_the_horizon_or_an_unreserved_slot() {
        let ten_min = Duration::from_secs(600);
        assert!(at_risk(&health("reserved", Some(100.0)), ten_min).is_some());
        assert!(at_risk(&health("reserved", Some(601.0)), ten_min).is_none());
        assert!(
            at_risk(&health("reserved", None), ten_min).is_none(),
            "unbounded"
        );
        assert!(at_risk(&health("unreserved", None), ten_min).is_some());
        assert!(at_risk(&health("extended", Some(5000.0)), ten_min).is_none());
    }
}
