//! `teal stream`: keep green an exact, transactionally consistent copy of
//! blue's published tables.
//!
//! ```text
//! ┌─▶ green: migrate teal's schema, read progress(slot) ─▶ capture from there ─▶ apply
//! │        │ transient error (green or blue gone): back off           │
//! │        │ conflict in a batch: replay it change by change           │
//! └────────┴───────────────────────────────────────────────────────────┘
//! ```
//!
//! Restarting from green's progress is what makes any failure safe: the
//! open batch was never committed, so it is streamed and applied again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::apply::{Applier, ApplyConfig, ApplyError, ApplyStats};
use crate::backoff::Backoff;
use crate::config::{AssemblerConfig, SourceConfig};
use crate::error::Kind;
use crate::event::SharedBatch;
use crate::http::HttpError;
use crate::lsn::Lsn;
use crate::monitor::{Monitor, RunState, SlotHealth};
use crate::ops::audit::StreamAudit;
use crate::pipeline::{PipelineError, start_capture};
use crate::progress::Progress;
use crate::sink::kafka::{KafkaConfig, KafkaSinkError};

/// Why `teal stream` stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Applying to green failed for good.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Capturing from blue failed for good.
    #[error(transparent)]
    Capture(#[from] PipelineError),
    /// The Kafka sink failed.
    #[error(transparent)]
    Kafka(#[from] KafkaSinkError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// A stage did not finish within `--shutdown-timeout` of the signal.
    #[error(
        "teal did not stop within {}s of the signal{}; exiting without finishing: nothing green did not commit was confirmed, blue sends it again",
        after.as_secs(),
        stuck.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
    )]
    ShutdownTimeout {
        /// `--shutdown-timeout`.
        after: Duration,
        /// What was stuck, when known.
        stuck: Option<String>,
    },
}

impl StreamError {
    /// What kind of failure it is (see [`crate::error::policy`]).
    pub fn kind(&self) -> Kind {
        match self {
            StreamError::Apply(e) => e.kind(),
            StreamError::Capture(e) => e.kind(),
            StreamError::Kafka(e) => e.kind(),
            StreamError::Http(_) => Kind::Setup,
            StreamError::ShutdownTimeout { .. } => Kind::ShutdownTimeout,
        }
    }
}

/// Everything `teal stream` needs.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Blue and the slot.
    pub source: SourceConfig,
    /// Buffering of large transactions.
    pub assembler: AssemblerConfig,
    /// Green, batching, conflicts.
    pub apply: ApplyConfig,
    /// Metrics endpoint and heartbeats.
    pub monitor: MonitorConfig,
    /// The Kafka audit stream, when enabled (`--kafka-brokers`).
    pub kafka: Option<KafkaConfig>,
    /// `--no-apply`: Kafka only; green (`apply.target`) is not used.
    pub no_apply: bool,
    /// `--shutdown-timeout`: after SIGTERM/SIGINT, how long teal may take
    /// to finish what it received before it exits anyway (status 1).
    pub shutdown_timeout: Duration,
}

impl StreamConfig {
    /// `--shutdown-timeout` default (below the 30 s most supervisors wait
    /// before they kill).
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
}

/// How `teal stream` shows itself: the HTTP endpoint and blue-side checks.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// `--metrics-addr`; `None` serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    /// `--metrics-token`: bearer token for `/metrics` and `/status`.
    pub metrics_token: Option<String>,
    /// `--heartbeat-interval`: a `pg_logical_emit_message` on blue this
    /// often (`None`: never), so lag is measured end to end and the slot
    /// advances while published tables are idle.
    pub heartbeat_interval: Option<Duration>,
    /// How often the slot's WAL retention is read from blue.
    pub slot_poll_interval: Duration,
    /// Work pending and nothing moving for this long shows as stalled
    /// (`/readyz`, `teal_stalled`); `None`: half of `--replication-timeout`
    /// (30 s when it is off), so a stall shows before teal drops the
    /// silent session itself.
    pub stall_after: Option<Duration>,
}

impl MonitorConfig {
    /// `--heartbeat-interval` default.
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
    /// The prefix of heartbeat messages.
    pub const HEARTBEAT_PREFIX: &'static str = "teal.heartbeat";
}

impl Default for MonitorConfig {
    /// No endpoint, heartbeats every 10 s, slot polled every 5 s.
    fn default() -> Self {
        MonitorConfig {
            metrics_addr: None,
            metrics_token: None,
            heartbeat_interval: Some(Self::DEFAULT_HEARTBEAT_INTERVAL),
            slot_poll_interval: Duration::from_secs(5),
            stall_after: None,
        }
    }
}

/// Streams until `shutdown`, restarting from green's progress after
/// transient failures. Returns the apply counters.
pub async fn run(
    config: StreamConfig,
    shutdown: CancellationToken,
) -> Result<Arc<ApplyStats>, StreamError> {
    let monitor = Arc::new(Monitor::new(config.apply.slot.clone()));
    run_monitored(config, shutdown, monitor).await
}

/// [`run`], reporting into `monitor` (which the caller may read meanwhile).
/// Every log line of the run carries its correlation id (`run`), which
/// `/status` and the audit trail on green show too.
pub async fn run_monitored(
    config: StreamConfig,
    shutdown: CancellationToken,
    monitor: Arc<Monitor>,
) -> Result<Arc<ApplyStats>, StreamError> {
    let span = tracing::info_span!("run", correlation_id = %monitor.correlation_id);
    run_session(config, shutdown, monitor)
        .instrument(span)
        .await
}

async fn run_session(
    config: StreamConfig,
    shutdown: CancellationToken,
    monitor: Arc<Monitor>,
) -> Result<Arc<ApplyStats>, StreamError> {
    let stopped = shutdown.child_token();
    let _stop_helpers = stopped.clone().drop_guard();
    if let Some(addr) = config.monitor.metrics_addr {
        crate::http::serve(
            addr,
            Arc::clone(&monitor),
            config.monitor.metrics_token.clone(),
            stopped.clone(),
        )
        .await?;
    }
    tokio::spawn(
        watch_blue(config.clone(), Arc::clone(&monitor), stopped.clone()).in_current_span(),
    );
    // The audit trail lives on green: none without it (--no-apply).
    let audit = (!config.no_apply).then(|| {
        Arc::new(StreamAudit::new(
            config.apply.store.clone(),
            &monitor.correlation_id,
            &config.apply.slot,
            &config.source.conninfo,
            &config.apply.target,
        ))
    });
    let audit_start = audit.clone().map(|audit| {
        tokio::spawn(
            audit
                .start(Arc::clone(&monitor), stopped.clone())
                .in_current_span(),
        )
    });
    tracing::info!(slot = %config.apply.slot, "stream session started");
    monitor.set_stall_after(config.monitor.stall_after.unwrap_or_else(|| {
        config
            .apply
            .timeout
            .or(config.source.replication_timeout)
            .unwrap_or(Duration::from_secs(60))
            / 2
    }));
    let result = tokio::select! {
        result = stream(&config, &shutdown, &monitor) => result,
        () = after_shutdown(&shutdown, config.shutdown_timeout) => Err(StreamError::ShutdownTimeout {
            after: config.shutdown_timeout,
            stuck: monitor.stalled(),
        }),
    };
    monitor.set_state(match &result {
        Ok(_) => RunState::Stopping,
        Err(e) => {
            monitor.record_error(crate::error::Report(e).to_string());
            RunState::Failed
        }
    });
    stopped.cancel();
    if let (Some(audit), Some(start)) = (audit, audit_start) {
        let _ = start.await;
        audit.end(&monitor, result.as_ref().err()).await;
    }
    result
}

async fn stream(
    config: &StreamConfig,
    shutdown: &CancellationToken,
    monitor: &Arc<Monitor>,
) -> Result<Arc<ApplyStats>, StreamError> {
    let stats = Arc::clone(&monitor.apply);
    let mut backoff = Backoff::new(
        config.source.reconnect_min_delay,
        config.source.reconnect_max_delay,
    );
    let mut careful_through: Option<Lsn> = None;
    let mut may_create_slot = config.source.create_slot;
    loop {
        if shutdown.is_cancelled() {
            return Ok(stats);
        }
        monitor.set_state(RunState::Starting);
        let started = tokio::time::Instant::now();
        let result = if config.no_apply {
            attempt_kafka_only(config, shutdown, monitor, &mut may_create_slot).await
        } else {
            attempt(
                config,
                shutdown,
                monitor,
                careful_through,
                &mut may_create_slot,
            )
            .await
        };
        match result {
            Ok(()) => return Ok(stats),
            Err(StreamError::Apply(ApplyError::Replay { through })) => {
                tracing::warn!(through = %through, "conflict in a batch; replaying it change by change");
                careful_through = careful_through.max(Some(through));
            }
            Err(e) if crate::error::retries(&e.kind()) && !shutdown.is_cancelled() => {
                monitor.record_error(crate::error::Report(&e).to_string());
                monitor
                    .retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                monitor.set_state(RunState::Retrying);
                let delay = backoff.next_delay_after(started.elapsed());
                tracing::warn!(error = %crate::error::Report(&e), retry_in_ms = delay.as_millis() as u64, "streaming interrupted; resuming from green's progress");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(stats),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Resolves `timeout` after `shutdown` fires.
async fn after_shutdown(shutdown: &CancellationToken, timeout: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(timeout).await;
}

/// One run of capture + apply, from green's progress.
async fn attempt(
    config: &StreamConfig,
    shutdown: &CancellationToken,
    monitor: &Monitor,
    careful_through: Option<Lsn>,
    may_create_slot: &mut bool,
) -> Result<(), StreamError> {
    let progress = Progress::new();
    let consumer = progress.register();
    // Kafka confirms through its own handle: the flush LSN is the minimum.
    let kafka_consumer = config.kafka.as_ref().map(|_| progress.register());
    let mut applier = Applier::connect(
        config.apply.clone(),
        consumer,
        Arc::clone(&monitor.apply),
        Arc::clone(&monitor.lag),
    )
    .await?;
    applier.set_careful_through(careful_through);
    let applied = applier.applied();
    let mut source = config.source.clone();
    // With Kafka on, the slot's confirmed position (what both hold) is where
    // streaming starts; apply skips what green has.
    if let (Some(a), None) = (applied, &config.kafka) {
        source.start_lsn = source.start_lsn.max(Some(a.end_lsn));
    }
    // A slot created while green already holds progress would start after
    // changes green never saw: only create it for a green that starts empty.
    source.create_slot = *may_create_slot && applied.is_none();
    let run = shutdown.child_token();
    let (events, capture) = start_capture(
        source,
        config.assembler.clone(),
        progress,
        Arc::clone(&monitor.lag),
        run.clone(),
    )?;
    let (events, kafka) = match (&config.kafka, kafka_consumer) {
        (Some(kafka), Some(kafka_consumer)) => {
            let behind = kafka
                .max_behind
                .map(|max| (max, Arc::clone(&monitor.kafka)));
            let (apply_events, kafka_events) = tee(events, behind);
            let sink = tokio::spawn(
                crate::sink::kafka::run(
                    kafka.clone(),
                    kafka_scope(config),
                    kafka_consumer,
                    kafka_events,
                    Arc::clone(&monitor.kafka),
                    None,
                )
                .in_current_span(),
            );
            (ApplyInput::Shared(apply_events), Some(sink))
        }
        _ => (ApplyInput::Owned(events), None),
    };
    let mut session = capture.session();
    let applying = async {
        // Before applying anything: is green behind what the slot already confirmed?
        if let Some(a) = applied {
            let connected = tokio::select! {
                r = session.wait_for(Option::is_some) => r.ok().and_then(|s| s.clone()),
                () = run.cancelled() => None,
            };
            if let Some(info) = &connected {
                if let Some(slot_lsn) = info.slot_confirmed_flush_lsn.filter(|l| *l > a.end_lsn) {
                    return Err(ApplyError::Behind {
                        slot: config.apply.slot.clone(),
                        green: a.end_lsn,
                        slot_lsn,
                    });
                }
            }
        }
        monitor.set_state(RunState::Streaming);
        match events {
            ApplyInput::Owned(events) => applier.run(events).await,
            ApplyInput::Shared(events) => applier.run(events).await,
        }
    };
    let applied_result = match applying.await {
        Err(e) => {
            let e = applier.abandon(e).await;
            run.cancel();
            Err(e)
        }
        Ok(()) => Ok(()),
    };
    drop(applier);
    let kafka_result = match kafka {
        Some(sink) => {
            if applied_result.is_err() {
                run.cancel();
            }
            sink.await.unwrap_or(Ok(()))
        }
        None => Ok(()),
    };
    if kafka_result.is_err() {
        run.cancel();
    }
    let captured = capture.wait().await;
    if session.borrow().is_some() {
        *may_create_slot = false;
    }
    applied_result?;
    kafka_result?;
    captured?;
    Ok(())
}

/// One run of capture + the Kafka sink alone (`--no-apply`), from the
/// slot's confirmed position: Kafka's acknowledgements are all that is
/// confirmed to blue.
async fn attempt_kafka_only(
    config: &StreamConfig,
    shutdown: &CancellationToken,
    monitor: &Monitor,
    may_create_slot: &mut bool,
) -> Result<(), StreamError> {
    let Some(kafka) = &config.kafka else {
        return Err(StreamError::Kafka(KafkaSinkError::NoBrokers));
    };
    let progress = Progress::new();
    let consumer = progress.register();
    let mut source = config.source.clone();
    source.create_slot = *may_create_slot;
    let run = shutdown.child_token();
    let (events, capture) = start_capture(
        source,
        config.assembler.clone(),
        progress,
        Arc::clone(&monitor.lag),
        run.clone(),
    )?;
    let mut session = capture.session();
    let sink = crate::sink::kafka::run(
        kafka.clone(),
        kafka_scope(config),
        consumer,
        events,
        Arc::clone(&monitor.kafka),
        Some(Arc::clone(&monitor.lag)),
    );
    let streaming = async {
        if session.wait_for(Option::is_some).await.is_ok() {
            monitor.set_state(RunState::Streaming);
        }
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        r = sink => r,
        () = streaming => Ok(()),
    };
    if result.is_err() {
        run.cancel();
    }
    let captured = capture.wait().await;
    if session.borrow().is_some() {
        *may_create_slot = false;
    }
    result?;
    captured?;
    Ok(())
}

/// What apply reads: the capture's batches, or (with Kafka on) the batches
/// it shares with the Kafka sink.
enum ApplyInput {
    Owned(tokio::sync::mpsc::Receiver<Vec<crate::event::Event>>),
    Shared(tokio::sync::mpsc::Receiver<SharedBatch>),
}

/// The Kafka sink's producer name and transaction size: apply's batch limits.
fn kafka_scope(config: &StreamConfig) -> crate::sink::kafka::Scope {
    crate::sink::kafka::Scope {
        slot: config.source.slot.clone(),
        max_records: config.apply.batch_max_changes,
        max_delay: config.apply.batch_max_delay,
        blue: config.source.conninfo.clone(),
    }
}

/// Batches of the consumer channel, shared by apply and Kafka (whichever
/// takes a batch last owns it; apply copies it only while the sink still
/// holds it), bounded both ( the slower one holds the other back, so Kafka can fall
/// behind apply by at most its channel and librdkafka's queue). With
/// `behind` (`--kafka-max-behind`), apply also waits while a batch would
/// take green more than that many bytes of WAL past what Kafka acknowledged
/// (counted from the first position streamed when Kafka has acknowledged
/// nothing yet).
fn tee(
    mut events: tokio::sync::mpsc::Receiver<Vec<crate::event::Event>>,
    behind: Option<(u64, Arc<crate::sink::kafka::KafkaStats>)>,
) -> (
    tokio::sync::mpsc::Receiver<SharedBatch>,
    tokio::sync::mpsc::Receiver<SharedBatch>,
) {
    const KAFKA_BATCHES: usize = 64;
    let (apply_tx, apply_rx) = tokio::sync::mpsc::channel(16);
    let (kafka_tx, kafka_rx) = tokio::sync::mpsc::channel(KAFKA_BATCHES);
    tokio::spawn(
        async move {
            let mut first: Option<u64> = None;
            while let Some(batch) = events.recv().await {
                let batch = SharedBatch(Arc::new(batch));
                if kafka_tx.send(batch.clone()).await.is_err() {
                    break;
                }
                if let (Some((max, stats)), Some(lsn)) = (&behind, last_position(&batch.0)) {
                    let floor = *first.get_or_insert(lsn.0);
                    let mut waited = false;
                    loop {
                        let acked = stats
                            .acknowledged_lsn
                            .load(std::sync::atomic::Ordering::Relaxed)
                            .max(floor);
                        if lsn.0.saturating_sub(acked) <= *max || apply_tx.is_closed() {
                            break;
                        }
                        if !waited {
                            tracing::info!(kafka_acknowledged = %Lsn(acked), next = %lsn, max_behind = max, "apply waits for Kafka (--kafka-max-behind)");
                            waited = true;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
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
fn last_position(batch: &[crate::event::Event]) -> Option<Lsn> {
    batch
        .iter()
        .filter_map(|e| match e {
            crate::event::Event::Commit(meta) => Some(meta.end_lsn),
            crate::event::Event::Idle { wal_end } => Some(*wal_end),
            _ => None,
        })
        .max()
}

/// Reads the slot's WAL retention from blue and writes heartbeats, on an
/// ordinary session, until `stop`. Failures are logged and retried at the
/// next tick: watching must never stop streaming.
async fn watch_blue(config: StreamConfig, monitor: Arc<Monitor>, stop: CancellationToken) {
    let heartbeat = config.monitor.heartbeat_interval;
    let poll = config.monitor.slot_poll_interval;
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
            client = match crate::session::connect_plain(&config.source.conninfo, "teal monitor")
                .await
            {
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
            .source
            .replication_timeout
            .unwrap_or(SourceConfig::DEFAULT_REPLICATION_TIMEOUT);
        if now >= next_poll {
            next_poll = now + poll;
            match tokio::time::timeout(answer, slot_health(c, &config.source.slot)).await {
                Ok(Ok(h)) => monitor.set_slot_health(h),
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
                    &[&MonitorConfig::HEARTBEAT_PREFIX],
                ),
            )
            .await;
            match sent {
                Ok(Ok(_)) => {
                    monitor
                        .heartbeats
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
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
