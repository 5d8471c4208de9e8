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
            match tokio::time::timeout(answer, slot_health(c, &config.slot)).await {
                Ok(Ok(h)) => found.set_health(h),
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

async fn slot_health(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<SlotHealth>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::float8, \
                    wal_status, confirmed_flush_lsn::text \
               FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotHealth {
        retained_bytes: r.get::<_, Option<f64>>(0).unwrap_or(0.0).max(0.0) as u64,
        wal_status: r.get(1),
        confirmed_flush_lsn: r.get(2),
    }))
}
