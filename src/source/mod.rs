//! The source stage: blue's replication slot as a stream of raw frames.
//!
//! ```text
//!            ┌──────── reconnect with capped backoff, from the flush LSN ────────┐
//!            ▼                                                                   │
//! connect ─▶ IDENTIFY_SYSTEM ─▶ check publications, slot (create) ─▶ START_REPLICATION ─▶ stream
//!                                                                   ▲              │ Vec<SourceEvent>
//!                                                flush LSN (watch) ─┘              ▼
//! ```
//!
//! Invariants:
//! - the source owns the socket and never decodes change payloads;
//! - the only thing it learns from later stages is the flush LSN (a watch),
//!   which it reports to blue as flush and apply position;
//! - every (re)connection is announced downstream with
//!   [`SourceEvent::Connected`] before its first frame, so later stages drop
//!   whatever was in flight (blue sends it again);
//! - a slot is created only on the first connection: a slot that vanished
//!   later means lost changes, and is an error rather than silently recreated;
//! - a different system identifier after a reconnect (blue was replaced or
//!   restored) stops teal.

mod auth;
mod commands;
mod conn;
mod error;
mod frame;
pub mod slot_watch;
mod stream;

pub use commands::{
    CreatedSlot, MIN_SERVER_VERSION, ReplicationClient, SlotInfo, SnapshotAction, StreamOptions,
    SystemInfo, quote_sql_literal,
};
pub use error::{ServerError, SourceError};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::SourceConfig;
use crate::lsn::{Lsn, PgTimestamp};
use crate::progress::Liveness;

use crate::backoff::Backoff;
use stream::{StreamEnd, StreamLoop};

/// What one (re)connection streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// IDENTIFY_SYSTEM's answer.
    pub system: SystemInfo,
    /// Blue's major version.
    pub server_version: u32,
    /// The LSN passed to START_REPLICATION.
    pub start_lsn: Lsn,
    /// The slot's confirmed position when the session started.
    pub slot_confirmed_flush_lsn: Option<Lsn>,
    /// Negotiated pgoutput options.
    pub options: StreamOptions,
    /// Whether the session is encrypted.
    pub tls: bool,
}

/// What the source hands downstream, in batches (one per socket read).
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// A session started: anything received before it is void.
    Connected(Arc<SessionInfo>),
    /// One pgoutput message.
    XLogData {
        /// WAL position of the record the message was decoded from.
        wal_start: Lsn,
        /// Blue's current WAL end.
        wal_end: Lsn,
        /// When blue sent it.
        send_time: PgTimestamp,
        /// The pgoutput message.
        data: Bytes,
    },
    /// A primary keepalive: blue has sent everything up to `wal_end`.
    Keepalive {
        /// Blue's current decoding position.
        wal_end: Lsn,
        /// When blue sent it.
        send_time: PgTimestamp,
    },
}

/// Follows the slot until `shutdown` fires or a definite error happens,
/// reconnecting after transient ones.
///
/// `flush` must be a receiver of the consumers' [`crate::progress::FlushLsn`]:
/// on shutdown the source closes `out`, waits for that watch to close (every
/// consumer finished and dropped its handle), then confirms the final flush
/// LSN to blue and ends the stream with CopyDone.
pub async fn run(
    config: SourceConfig,
    out: mpsc::Sender<Vec<SourceEvent>>,
    mut flush: watch::Receiver<Lsn>,
    shutdown: CancellationToken,
    liveness: Arc<Liveness>,
) -> Result<(), SourceError> {
    let mut out = Some(out);
    let mut backoff = Backoff::new(config.reconnect_min_delay, config.reconnect_max_delay);
    let mut first_system: Option<SystemInfo> = None;
    let mut first_tries = 0;
    loop {
        let mut streaming_since = None;
        let result = session(
            &config,
            &mut out,
            &mut flush,
            &shutdown,
            &mut first_system,
            &mut streaming_since,
            &liveness,
        )
        .await;
        match result {
            Ok(StreamEnd::Shutdown | StreamEnd::ConsumerGone) => return Ok(()),
            Err(e)
                if first_system.is_none()
                    && e.kind() == crate::error::Kind::Connection
                    && first_tries + 1 >= crate::error::FIRST_CONNECT_TRIES =>
            {
                let e = SourceError::Unreachable {
                    tries: first_tries + 1,
                    last: Box::new(e),
                };
                // Reported once, by whoever ends the run (the binary prints it).
                tracing::debug!(error = %crate::error::Report(&e), "replication stopped");
                return Err(e);
            }
            Err(e) if crate::error::retries(&e.kind()) && !shutdown.is_cancelled() => {
                if first_system.is_none() {
                    first_tries += 1;
                }
                let streamed = streaming_since.map_or(Duration::ZERO, |s: Instant| s.elapsed());
                let delay = backoff.next_delay_after(streamed);
                liveness.source_lost(crate::error::Report(&e).to_string());
                tracing::warn!(error = %crate::error::Report(&e), retry_in_ms = delay.as_millis() as u64, "replication connection lost; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(_) if shutdown.is_cancelled() => return Ok(()),
            Err(e) => {
                // Reported once, by whoever ends the run (the binary prints it).
                tracing::debug!(error = %crate::error::Report(&e), "replication stopped");
                return Err(e);
            }
        }
    }
}

/// Runs `step` of the session setup within `--replication-timeout`.
async fn bounded<T>(
    config: &SourceConfig,
    doing: &'static str,
    step: impl Future<Output = Result<T, SourceError>>,
) -> Result<T, SourceError> {
    match config.replication_timeout {
        Some(after) => {
            tokio::time::timeout(after, step)
                .await
                .map_err(|_| SourceError::Timeout {
                    host: config.conninfo.to_string(),
                    doing,
                    after,
                })?
        }
        None => step.await,
    }
}

async fn session(
    config: &SourceConfig,
    out: &mut Option<mpsc::Sender<Vec<SourceEvent>>>,
    flush: &mut watch::Receiver<Lsn>,
    shutdown: &CancellationToken,
    first_system: &mut Option<SystemInfo>,
    streaming_since: &mut Option<Instant>,
    liveness: &Arc<Liveness>,
) -> Result<StreamEnd, SourceError> {
    let mut client = bounded(
        config,
        "connecting",
        ReplicationClient::connect(&config.conninfo),
    )
    .await?;
    client.set_timeout(config.replication_timeout);
    let first = first_system.is_none();
    if let Some(previous) = first_system.as_ref() {
        if previous.system_id != client.system().system_id {
            return Err(SourceError::Setup(format!(
                "blue's system identifier changed from {} to {} after a reconnect: it was replaced or restored from a backup, so the slot's history no longer matches. Stop and resynchronize green",
                previous.system_id,
                client.system().system_id
            )));
        }
    }
    let options = StreamOptions::negotiate(client.server_version(), config)?;
    bounded(
        config,
        "checking publications",
        client.check_publications(&config.publications),
    )
    .await?;
    let dbname = client
        .system()
        .dbname
        .clone()
        .unwrap_or_else(|| config.conninfo.dbname.clone());
    let checked = bounded(
        config,
        "checking the slot",
        client.check_slot(&config.slot, &dbname),
    )
    .await?;
    let slot = match checked {
        Some(info) => info.confirmed_flush_lsn,
        // Not bounded: blue builds the slot's snapshot once the transactions
        // running now have ended, which may take long.
        None if first && config.create_slot => {
            match client
                .create_slot(&config.slot, SnapshotAction::Nothing)
                .await
            {
                Ok(created) => {
                    tracing::info!(slot = %config.slot, consistent_point = %created.consistent_point, "created replication slot");
                    Some(created.consistent_point)
                }
                // Someone else created it between our check and now: use it.
                Err(SourceError::Server { error, .. }) if error.code == "42710" => client
                    .check_slot(&config.slot, &dbname)
                    .await?
                    .and_then(|i| i.confirmed_flush_lsn),
                Err(e) => return Err(e),
            }
        }
        None if first => {
            return Err(SourceError::Setup(format!(
                "replication slot {:?} does not exist on blue; pass --create-slot to create it",
                config.slot
            )));
        }
        None => {
            return Err(SourceError::Setup(format!(
                "replication slot {:?} disappeared from blue while teal was streaming from it; changes may be lost. Recreate it and resynchronize green",
                config.slot
            )));
        }
    };
    let confirmed = *flush.borrow();
    let start_lsn = config.start_lsn.unwrap_or(Lsn::ZERO).max(confirmed);
    let info = Arc::new(SessionInfo {
        system: client.system().clone(),
        server_version: client.server_version(),
        start_lsn,
        slot_confirmed_flush_lsn: slot,
        options: options.clone(),
        tls: client.is_tls(),
    });
    let host = client.host().to_owned();
    let conn = bounded(
        config,
        "starting replication",
        client.start_replication(&config.slot, start_lsn, &options),
    )
    .await?;
    tracing::info!(
        host = %host,
        slot = %config.slot,
        start_lsn = %start_lsn,
        server_version = info.server_version,
        proto_version = options.proto_version,
        streaming = options.streaming,
        tls = info.tls,
        "streaming from blue"
    );
    *first_system = Some(info.system.clone());
    let Some(sender) = out.as_ref() else {
        conn.close().await;
        return Ok(StreamEnd::ConsumerGone);
    };
    if sender
        .send(vec![SourceEvent::Connected(Arc::clone(&info))])
        .await
        .is_err()
    {
        conn.close().await;
        return Ok(StreamEnd::ConsumerGone);
    }
    *streaming_since = Some(Instant::now());
    liveness.source_streaming();
    StreamLoop::new(
        conn,
        out,
        flush,
        shutdown,
        config,
        start_lsn,
        Arc::clone(liveness),
    )
    .run()
    .await
}
