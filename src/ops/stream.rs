//! `teal stream`: keep green an exact, transactionally consistent copy of
//! blue's published tables (and, with `--kafka-brokers`, publish the same
//! changes to Kafka).
//!
//! ```text
//! ┌─▶ attempt: green (claim, migrate, read progress) ─▶ pipeline: capture from the resume
//! │           position ─▶ fan out ─▶ apply (green) and/or the Kafka sink, each confirming
//! │           through progress; source::watch beside it (slot health, heartbeats)
//! │    transient error (policy: retry): back off (reset after a healthy attempt)
//! │    conflict in a batch: the next attempt replays it change by change
//! └──────────────────────────────────────────────────────────────────────────
//! ```
//!
//! Restarting from green's progress is what makes any failure safe: the
//! open batch was never committed, so it is streamed and applied again.
//!
//! A conflict replay is a new attempt rather than a replay inside this one:
//! apply hands each change to green and keeps nothing once it is sent, and
//! blue resends exactly from green's progress; going through the one path
//! every other failure already takes (and that the crash tests prove exactly
//! once) costs a reconnect per conflict, which is rare, instead of a second
//! buffer of the batch and a second way to resume.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::apply::{Applier, ApplyConfig, ApplyError, ApplyStats};
use crate::backoff::Backoff;
use crate::config::{AssemblerConfig, SourceConfig};
use crate::error::Kind;
use crate::http::HttpError;
use crate::lsn::Lsn;
use crate::monitor::{Monitor, RunState};
use crate::ops::audit::StreamAudit;
use crate::ops::pair::Direction;
use crate::ops::stream_kafka::{KafkaRun, kafka_scope};
use crate::pipeline::{
    Acknowledged, ApplyInput, Hold, PipelineError, fan_out, resume, start_capture,
};
use crate::progress::FlushLsn;
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
    /// A setting is out of its domain.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Green was never reached: its first connection failed
    /// [`crate::error::FIRST_CONNECT_TRIES`] times.
    #[error("could not reach green after {tries} tries")]
    Unreachable {
        /// How many tries.
        tries: u32,
        /// The last try's error.
        #[source]
        last: Box<StreamError>,
    },
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
            StreamError::Http(_) | StreamError::Config(_) => Kind::Setup,
            StreamError::Unreachable { .. } => Kind::Unreachable,
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
    /// `--sync-sequences`: copy the published tables' sequences from blue
    /// to green this often (`None`: never), so that a cutover has little
    /// left to do (see [`crate::ops::sequences`]).
    pub sync_sequences: Option<Duration>,
    /// `--fence-target-roles`: while the pair streams blue -> green, these
    /// roles may not log in to green (nobody writes there by mistake); a
    /// cutover lifts the fence.
    pub fence_target_roles: Vec<String>,
    /// `--binary auto`: at each connection, values in binary when every
    /// selected published column's type is built in and the same on both
    /// sides, the servers share a major version and nothing is masked
    /// ([`crate::ops::binary::safe`]); else text.
    pub binary_auto: bool,
}

impl StreamConfig {
    /// Checks every stage's settings and how they combine, before anything
    /// connects; the error names the flag.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        self.source.validate()?;
        self.assembler.validate()?;
        if self.no_apply {
            if self.kafka.is_none() {
                return Err(crate::config::ConfigError {
                    flag: "--no-apply",
                    reason: "it streams to Kafka only: give --kafka-brokers too".into(),
                });
            }
        } else {
            self.apply.validate()?;
        }
        if let Some(kafka) = &self.kafka {
            kafka.validate()?;
        }
        Ok(())
    }

    /// What the slot watcher beside the stream needs.
    fn watch_config(&self) -> crate::source::slot_watch::WatchConfig {
        crate::source::slot_watch::WatchConfig {
            conninfo: self.source.conninfo.clone(),
            slot: self.source.slot.clone(),
            heartbeat_interval: self.monitor.heartbeat_interval,
            slot_poll_interval: self.monitor.slot_poll_interval,
            timeout: self.source.replication_timeout,
        }
    }

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
    pub metrics_token: Option<crate::config::Secret>,
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
    config.validate()?;
    let span = tracing::info_span!("run", correlation_id = %monitor.correlation_id);
    run_session(config, shutdown, monitor)
        .instrument(span)
        .await
}

/// Each `--tables` entry must name a published table: a typo would
/// otherwise leave every change out without a word. (When blue cannot be
/// reached yet, the stream's own connection reports that.)
async fn check_selection(config: &StreamConfig) -> Result<(), StreamError> {
    let selection = &config.assembler.tables;
    if selection.include.is_empty() && config.assembler.mask.is_none() {
        return Ok(());
    }
    // Blue out of reach: the stream's retries say so; masks are checked
    // again for each relation blue sends.
    let Ok(blue) = crate::session::connect_plain(&config.source.conninfo, "teal").await else {
        return Ok(());
    };
    if let Some(mask) = &config.assembler.mask {
        crate::mask::check_catalog(&blue, mask)
            .await
            .map_err(|e| StreamError::Capture(PipelineError::Mask(e)))?;
    }
    if selection.include.is_empty() {
        return Ok(());
    }
    let Ok(published) = crate::session::published_tables(&blue, &config.source.publications).await
    else {
        return Ok(());
    };
    if let Some(wanted) = selection.unmatched(&published) {
        return Err(crate::config::ConfigError {
            flag: "--tables",
            reason: format!(
                "{wanted:?} is not a table the publication(s) {} publish",
                config.source.publications.join(",")
            ),
        }
        .into());
    }
    Ok(())
}

async fn run_session(
    config: StreamConfig,
    shutdown: CancellationToken,
    monitor: Arc<Monitor>,
) -> Result<Arc<ApplyStats>, StreamError> {
    check_selection(&config).await?;
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
    // Which way the pair streams (see crate::ops::pair), and the watcher
    // of switch requests (none without green).
    let legs = crate::ops::pair::Legs::default();
    if !config.no_apply {
        tokio::spawn(
            crate::ops::pair::watch(
                config.clone(),
                Arc::clone(&legs.switches),
                Arc::clone(&legs.direction),
                stopped.clone(),
            )
            .in_current_span(),
        );
    }
    if let (Some(every), false) = (config.sync_sequences, config.no_apply) {
        tokio::spawn(
            crate::ops::sequences::keep_synced(
                config.clone(),
                every,
                Arc::clone(&legs.direction),
                stopped.clone(),
            )
            .in_current_span(),
        );
    }
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
        result = stream(&config, &shutdown, &monitor, &legs) => result,
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
    legs: &crate::ops::pair::Legs,
) -> Result<Arc<ApplyStats>, StreamError> {
    let stats = Arc::clone(&monitor.apply);
    let mut backoff = Backoff::new(
        config.source.reconnect_min_delay,
        config.source.reconnect_max_delay,
    );
    let mut careful_through: Option<Lsn> = None;
    let mut may_create_slot = config.source.create_slot;
    let (mut ever_streamed, mut first_tries) = (false, 0);
    let mut direction: Option<Direction> = None;
    // Cancels the slot watcher of the current leg when dropped.
    let mut watcher: Option<tokio_util::sync::DropGuard> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(stats);
        }
        monitor.set_state(RunState::Starting);
        let started = tokio::time::Instant::now();
        let before = direction;
        let result = match crate::ops::pair::next_leg(config, legs, &mut direction)
            .await
            .map_err(StreamError::from)
        {
            Ok(leg) => {
                if before.is_some() && before != direction {
                    // A new leg: its own slot and progress.
                    careful_through = None;
                    may_create_slot = false;
                }
                // The slot watcher (WAL kept, invalidation, heartbeats)
                // follows the leg's source and slot.
                if watcher.is_none() || before != direction {
                    let stop = shutdown.child_token();
                    tokio::spawn(
                        crate::source::slot_watch::watch(
                            leg.watch_config(),
                            Arc::clone(&monitor.slot_watch),
                            stop.clone(),
                        )
                        .in_current_span(),
                    );
                    watcher = Some(stop.drop_guard());
                }
                // A switch request ends this leg as a shutdown would (what
                // it received is committed first), not the process.
                let run = shutdown.child_token();
                legs.switches.leg_started(run.clone());
                attempt(&leg, &run, monitor, careful_through, &mut may_create_slot).await
            }
            Err(e) => Err(e),
        };
        ever_streamed |= monitor.state() != RunState::Starting;
        match result {
            Ok(()) if !shutdown.is_cancelled() && legs.switches.pending().is_some() => {}
            Ok(()) => return Ok(stats),
            Err(StreamError::Apply(ApplyError::Replay { through })) => {
                tracing::warn!(through = %through, "conflict in a batch; replaying it change by change");
                careful_through = careful_through.max(Some(through));
            }
            Err(e)
                if !ever_streamed
                    && matches!(e, StreamError::Apply(_))
                    && e.kind() == Kind::Connection
                    && first_tries + 1 >= crate::error::FIRST_CONNECT_TRIES =>
            {
                return Err(StreamError::Unreachable {
                    tries: first_tries + 1,
                    last: Box::new(e),
                });
            }
            Err(e) if crate::error::retries(&e.kind()) && !shutdown.is_cancelled() => {
                if !ever_streamed {
                    first_tries += 1;
                }
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

/// One run of capture and its consumers (apply, unless `--no-apply`; the
/// Kafka sink with `--kafka-brokers`), from where they stand.
async fn attempt(
    config: &StreamConfig,
    shutdown: &CancellationToken,
    monitor: &Arc<Monitor>,
    careful_through: Option<Lsn>,
    may_create_slot: &mut bool,
) -> Result<(), StreamError> {
    let progress = FlushLsn::new();
    // Kafka dropped earlier in this process (--kafka-drop-on-wal-risk)
    // stays dropped until teal restarts.
    let kafka_config = config.kafka.as_ref().filter(|_| {
        !monitor
            .kafka
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    // Each consumer confirms through its own handle: the flush LSN is the minimum.
    let apply_consumer = (!config.no_apply).then(|| progress.register());
    let kafka_consumer = kafka_config.map(|_| progress.register());
    let kafka_dropped = CancellationToken::new();
    // Stopped with the attempt.
    let guard_stop = shutdown.child_token();
    let _guard_stop = guard_stop.clone().drop_guard();
    if let (Some(kafka), Some(k), Some(a)) = (
        kafka_config,
        kafka_consumer.as_ref(),
        apply_consumer.as_ref(),
    ) {
        if let Some(horizon) = kafka.drop_on_wal_risk {
            let guard = crate::ops::kafka_drop::Guard {
                horizon,
                kafka: k.view(),
                green: a.view(),
                dropped: kafka_dropped.clone(),
                slot: config.apply.slot.clone(),
                source: config.source.conninfo.clone(),
                target: config.apply.target.clone(),
                store: config.apply.store.clone(),
            };
            tokio::spawn(guard.run(Arc::clone(monitor), guard_stop).in_current_span());
        }
    }
    let mut applier = match apply_consumer {
        Some(consumer) => Some(
            Applier::connect(
                config.apply.clone(),
                consumer,
                Arc::clone(&monitor.apply),
                Arc::clone(&monitor.lag),
            )
            .await?,
        ),
        None => None,
    };
    if let Some(applier) = applier.as_mut() {
        applier.set_careful_through(careful_through);
    }
    let green = applier.as_ref().and_then(Applier::applied);
    let mut source = config.source.clone();
    if config.binary_auto && !config.source.binary && applier.is_some() {
        source.binary = crate::ops::binary::safe(config).await;
    }
    source.start_lsn = resume::start_position(
        source.start_lsn,
        green.map(|g| g.end_lsn),
        kafka_config.is_some(),
    );
    // A slot created while green already holds progress would start after
    // changes green never saw: only create it for a green that starts empty.
    source.create_slot = *may_create_slot && green.is_none();
    let run = shutdown.child_token();
    let (events, capture) = start_capture(
        source,
        config.assembler.clone(),
        progress,
        Arc::clone(&monitor.lag),
        run.clone(),
    )?;
    let hold = kafka_config
        .and_then(|k| k.max_behind)
        .filter(|_| applier.is_some())
        .map(|max| {
            let stats = Arc::clone(&monitor.kafka);
            let acknowledged: Acknowledged = Arc::new(move || {
                stats
                    .acknowledged_lsn
                    .load(std::sync::atomic::Ordering::Relaxed)
            });
            Hold {
                max,
                acknowledged,
                waiting: Arc::clone(&monitor.kafka.holding_apply),
            }
        });
    let (apply_events, kafka_events) = fan_out(
        events,
        applier.is_some(),
        kafka_consumer.is_some(),
        hold,
        kafka_dropped.clone(),
    );
    let kafka = match (kafka_config, kafka_consumer, kafka_events) {
        (Some(kafka), Some(consumer), Some(events)) => {
            let sink = KafkaRun {
                config: kafka.clone(),
                scope: crate::sink::kafka::Scope {
                    ledger: (applier.is_some() && config.apply.ledger)
                        .then(|| monitor.apply.ledger_heads.subscribe()),
                    dropped: kafka_dropped.clone(),
                    ..kafka_scope(config)
                },
                consumer,
                stats: Arc::clone(&monitor.kafka),
                // Without green, Kafka's acknowledgements are what the lag measures.
                lag: applier.is_none().then(|| Arc::clone(&monitor.lag)),
            };
            // A failed sink ends the attempt at once (blue may be out of
            // reach, and nothing else would notice).
            let failed = run.clone();
            Some(tokio::spawn(
                async move {
                    let delivered = sink.run(events).await;
                    if delivered.is_err() {
                        failed.cancel();
                    }
                    delivered
                }
                .in_current_span(),
            ))
        }
        _ => None,
    };
    let mut session = capture.session();
    let connected = tokio::select! {
        r = session.wait_for(Option::is_some) => r.ok().and_then(|s| s.clone()),
        () = run.cancelled() => None,
    };
    // Before applying anything: is green behind what the slot already confirmed?
    let ready = connected.as_ref().map_or(Ok(()), |info| {
        resume::check_green_not_behind(
            &config.apply.slot,
            green.map(|g| g.end_lsn),
            info.slot_confirmed_flush_lsn,
        )
    });
    let applied = match ready {
        Err(e) => {
            run.cancel();
            Err(StreamError::from(e))
        }
        Ok(()) => {
            if connected.is_some() {
                monitor.set_state(RunState::Streaming);
            }
            let result = match (applier.as_mut(), apply_events) {
                (Some(applier), Some(ApplyInput::Owned(events))) => applier.run(events).await,
                (Some(applier), Some(ApplyInput::Shared(events))) => applier.run(events).await,
                _ => Ok(()),
            };
            match (result, applier.as_mut()) {
                (Err(e), Some(applier)) => {
                    let e = applier.abandon(e).await;
                    run.cancel();
                    Err(StreamError::from(e))
                }
                (result, _) => result.map_err(StreamError::from),
            }
        }
    };
    drop(applier);
    let delivered = match kafka {
        Some(sink) => crate::sink::kafka::joined(sink.await, "sink"),
        None => Ok(()),
    };
    if delivered.is_err() {
        run.cancel();
    }
    let captured = capture.wait().await;
    if session.borrow().is_some() {
        *may_create_slot = false;
    }
    applied?;
    delivered?;
    captured?;
    Ok(())
}
