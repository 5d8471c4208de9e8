//! Beside the stream: the slot as blue's catalog sees it (WAL kept,
//! `wal_status`), read every few seconds, and heartbeats written on blue so
//! the stream moves while published tables are idle.
//!
//! ```text
//! ordinary session on blue ──pg_replication_slots──▶ SlotWatch (progress) ──▶ monitor
//!                          ──pg_logical_emit_message('teal.heartbeat')──▶ the stream, lag
//! ```
//!
//! Watching never stops streaming: failures are logged and retried at the
//! next tick, and a session that stops answering is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::ConnInfo;
use crate::progress::{SlotHealth, SlotWatch};

/// The prefix of heartbeat messages.
pub const HEARTBEAT_PREFIX: &str = "teal.heartbeat";

/// What the watcher needs.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Blue (an ordinary session).
    pub conninfo: ConnInfo,
    /// The slot.
    pub slot: String,
    /// A heartbeat this often (`None`: never).
    pub heartbeat_interval: Option<Duration>,
    /// The slot's state is read this often.
    pub slot_poll_interval: Duration,
    /// A query unanswered this long drops the session (`--replication-timeout`).
    pub timeout: Option<Duration>,
}

/// Reads the slot's WAL retention from blue and writes heartbeats, on an
/// ordinary session, until `stop`. Failures are logged and retried at the
/// next tick: watching must never stop streaming.
pub async fn watch(config: WatchConfig, found: Arc<SlotWatch>, stop: CancellationToken) {
    let heartbeat = config.heartbeat_interval;
    let poll = config.slot_poll_interval;
    let tick = heartbeat
        .map_or(poll, |h| h.min(poll))
        .max(Duration::from_millis(50));
    let mut client: Option<tokio_postgres::Client> = None;
    let (mut next_poll, mut next_heartbeat) =
        (tokio::time::Instant::now(), tokio::time::Instant::now());
    let mut warned = false;
    let (mut last, mut at_risk): (Reading, u8) = (None, 0);
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = stop.cancelled() => return,
        }
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            client = match crate::session::connect_plain(&config.conninfo, "teal monitor").await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::debug!(error = %crate::error::Report(&e), "cannot reach blue to watch the slot; trying again");
                    continue;
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        let now = tokio::time::Instant::now();
        // A session that stops answering is dropped (and reopened next tick).
        let answer = config
            .timeout
            .unwrap_or(crate::config::SourceConfig::DEFAULT_REPLICATION_TIMEOUT);
        if now >= next_poll {
            next_poll = now + poll;
            match tokio::time::timeout(answer, slot_health(c, &config.slot, &mut last)).await {
                Ok(Ok(h)) => {
                    if let Some(h) = &h {
                        warn_invalidation(&config.slot, h, &mut at_risk);
                    }
                    found.set_health(h);
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %crate::error::Report(&e), "cannot read the slot's state on blue")
                }
                Err(_) => {
                    client = None;
                    continue;
                }
            }
        }
        if let Some(interval) = heartbeat.filter(|_| now >= next_heartbeat) {
            next_heartbeat = now + interval;
            let sent = tokio::time::timeout(
                answer,
                c.execute(
                    "SELECT pg_catalog.pg_logical_emit_message(false, $1, now()::text)",
                    &[&HEARTBEAT_PREFIX],
                ),
            )
            .await;
            match sent {
                Ok(Ok(_)) => found.heartbeat(),
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %crate::error::Report(&e), "cannot write heartbeats on blue (pg_logical_emit_message); lag is measured from changes only");
                }
                Ok(Err(_)) => {}
                Err(_) => client = None,
            }
        }
    }
}

/// Blue's WAL position at the last reading (for the WAL rate).
type Reading = Option<(std::time::Instant, f64)>;

async fn slot_health(
    client: &tokio_postgres::Client,
    slot: &str,
    last: &mut Reading,
) -> Result<Option<SlotHealth>, tokio_postgres::Error> {
    // safe_wal_size exists from PostgreSQL 13 on (teal needs 14).
    let row = client
        .query_opt(
            "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::float8, \
                    wal_status, confirmed_flush_lsn::text, safe_wal_size::int8, \
                    pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), '0/0')::float8 \
               FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| {
        let now = (std::time::Instant::now(), r.get::<_, f64>(4));
        let rate = last.and_then(|(at, lsn)| {
            let seconds = now.0.duration_since(at).as_secs_f64();
            (seconds > 0.0).then(|| ((now.1 - lsn) / seconds).max(0.0))
        });
        *last = Some(now);
        let safe: Option<i64> = r.get(3);
        SlotHealth {
            retained_bytes: r.get::<_, Option<f64>>(0).unwrap_or(0.0).max(0.0) as u64,
            wal_status: r.get(1),
            confirmed_flush_lsn: r.get(2),
            safe_wal_bytes: safe,
            wal_bytes_per_second: rate,
            invalidation_eta_seconds: invalidation_eta(safe, rate),
        }
    }))
}

/// When a slot with `safe` bytes of room is invalidated at `rate` bytes
/// per second: `None` when the room is unbounded or nothing is written.
pub fn invalidation_eta(safe: Option<i64>, rate: Option<f64>) -> Option<f64> {
    match (safe, rate) {
        (Some(s), _) if s <= 0 => Some(0.0),
        (Some(s), Some(r)) if r > 0.0 => Some(s as f64 / r),
        _ => None,
    }
}

/// Warns (once per crossing) when the slot would be invalidated within an
/// hour at blue's current WAL rate, and again, as an error, within ten
/// minutes; `level` remembers the last warning (0 none, 1 hour, 2 minutes).
fn warn_invalidation(slot: &str, health: &SlotHealth, level: &mut u8) {
    let eta = health.invalidation_eta_seconds.unwrap_or(f64::INFINITY);
    let now = if eta < 600.0 {
        2
    } else if eta < 3600.0 {
        1
    } else {
        0
    };
    if now > *level {
        let (minutes, safe) = (eta / 60.0, health.safe_wal_bytes.unwrap_or(0));
        if now == 2 {
            tracing::error!(
                slot,
                eta_seconds = eta,
                safe_wal_bytes = safe,
                "slot {slot:?} will be invalidated in about {minutes:.0} min at blue's WAL rate \
                 (max_slot_wal_keep_size): green is too far behind; once it is lost, green needs a new teal sync"
            );
        } else {
            tracing::warn!(
                slot,
                eta_seconds = eta,
                safe_wal_bytes = safe,
                "slot {slot:?} will be invalidated in about {minutes:.0} min at blue's WAL rate (max_slot_wal_keep_size)"
            );
        }
    }
    *level = now;
}

#[cfg(test)]
mod tests {
    use super::invalidation_eta;

    #[test]
    fn the_eta_is_the_room_over_the_rate() {
        assert_eq!(invalidation_eta(Some(1000), Some(100.0)), Some(10.0));
        assert_eq!(invalidation_eta(Some(0), None), Some(0.0), "no room left");
        assert_eq!(invalidation_eta(Some(-5), Some(1.0)), Some(0.0));
        assert_eq!(invalidation_eta(Some(1000), Some(0.0)), None, "blue idle");
        assert_eq!(invalidation_eta(None, Some(100.0)), None, "unbounded");
    }
}
