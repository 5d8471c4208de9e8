//! The HTTP endpoint of `teal stream`: the dashboard at `/`, `/metrics`
//! (Prometheus text format), `/status` (JSON), `/history` (the last hour,
//! JSON), `/healthz`, `/readyz`.
//!
//! ```text
//! Monitor (lag, apply counters, state, slot health) ──render on request──▶ GET /metrics, /status
//!        └──sample every second──▶ History ──▶ GET /history?since=ms ──▶ dashboard (/)
//! ```
//!
//! With a bearer token, `/metrics`, `/status` and `/history` need
//! `Authorization: Bearer <token>` (the dashboard takes it from the page's
//! `#token=` fragment, which browsers never send); the page itself and the
//! probes stay open (they reveal nothing). Rendering reads atomics and takes
//! short locks: a scrape never waits on green or blue. [`get`] is the
//! matching client (`teal status`, the tests).

mod history;

pub use history::{HISTORY_LEN, History, Point};

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use tokio_util::sync::CancellationToken;

use crate::apply::ApplyStats;
use crate::lsn::PgTimestamp;
use crate::progress::{Bounds, Buckets, CopyProgress, Lag, TableCopySnapshot, lock};
use crate::sink::kafka::{KafkaStats, TopicCounts};

/// What `teal stream` is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Connecting to green and blue.
    Starting,
    /// Copying the published tables (`teal sync`).
    Copying,
    /// Applying blue's changes.
    Streaming,
    /// Waiting to retry after a transient error.
    Retrying,
    /// Shutting down.
    Stopping,
    /// Stopped on a definite error.
    Failed,
}

/// The slot as blue sees it (polled on an ordinary session).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlotHealth {
    /// WAL the slot keeps on blue, in bytes (current WAL LSN minus restart_lsn).
    pub retained_bytes: u64,
    /// `pg_replication_slots.wal_status` (reserved, extended, unreserved, lost).
    pub wal_status: Option<String>,
    /// The slot's confirmed flush LSN.
    pub confirmed_flush_lsn: Option<String>,
}

/// Everything the endpoint shows about one stream.
pub struct Monitor {
    /// The slot.
    pub slot: String,
    /// Lag in bytes and seconds, apply latency.
    pub lag: Arc<Lag>,
    /// Apply counters.
    pub apply: Arc<ApplyStats>,
    /// Streaming attempts that ended in a transient error and were retried.
    pub retries: AtomicU64,
    /// Errors of any kind (transient and definite).
    pub errors: AtomicU64,
    /// Heartbeats written on blue.
    pub heartbeats: AtomicU64,
    state: Mutex<(RunState, Option<(String, Instant)>)>,
    /// Work pending and no stage moving for this long: stalled.
    stall_after_ms: AtomicU64,
    slot_health: Mutex<Option<SlotHealth>>,
    addr: OnceLock<SocketAddr>,
    /// The last hour, sampled while the endpoint runs.
    pub history: History,
    /// This run's id, in its log lines and audit rows.
    pub correlation_id: String,
    /// The initial copy, while `teal sync` runs one.
    copy: OnceLock<Arc<CopyProgress>>,
    /// The Kafka sink's counters.
    pub kafka: Arc<KafkaStats>,
}

impl Monitor {
    /// A monitor for `slot`, starting.
    pub fn new(slot: impl Into<String>) -> Monitor {
        Monitor {
            slot: slot.into(),
            lag: Arc::new(Lag::new()),
            apply: Arc::new(ApplyStats::default()),
            retries: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            state: Mutex::new((RunState::Starting, None)),
            stall_after_ms: AtomicU64::new(DEFAULT_STALL_AFTER.as_millis() as u64),
            slot_health: Mutex::new(None),
            addr: OnceLock::new(),
            history: History::default(),
            correlation_id: crate::ops::audit::new_id(),
            copy: OnceLock::new(),
            kafka: Arc::new(KafkaStats::default()),
        }
    }

    /// Shows `progress` in `/status` and `/metrics` from now on.
    pub fn set_copy(&self, progress: Arc<CopyProgress>) {
        let _ = self.copy.set(progress);
    }

    /// Sets the state.
    pub fn set_state(&self, state: RunState) {
        lock(&self.state).0 = state;
    }

    /// The state the stream loop set (see [`Monitor::effective_state`]).
    pub fn state(&self) -> RunState {
        lock(&self.state).0
    }

    /// The state as it shows: `retrying` while the source reconnects to
    /// blue inside a streaming session.
    pub fn effective_state(&self) -> RunState {
        match self.state() {
            RunState::Streaming if self.lag.liveness().source_reconnecting() => RunState::Retrying,
            state => state,
        }
    }

    /// Records an error (its message, which never holds row values or passwords).
    pub fn record_error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.state).1 = Some((message, Instant::now()));
    }

    /// The latest error: the stream's, or the source's last reconnect.
    pub fn last_error(&self) -> Option<String> {
        let own = lock(&self.state).1.clone();
        let source = self.lag.liveness().last_source_error();
        match (own, source) {
            (Some((a, at)), Some((b, bt))) => Some(if bt > at { b } else { a }),
            (Some((a, _)), None) => Some(a),
            (None, Some((b, _))) => Some(b),
            (None, None) => None,
        }
    }

    /// Retried transient errors: streaming attempts and replication reconnects.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed) + self.lag.liveness().source_reconnects()
    }

    /// Errors of any kind, replication reconnects included.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed) + self.lag.liveness().source_reconnects()
    }

    /// A stage counts as stuck when it has not moved for this long while
    /// work is pending (half of `--replication-timeout`; 30 s by default).
    pub fn set_stall_after(&self, after: Duration) {
        self.stall_after_ms
            .store(after.as_millis() as u64, Ordering::Relaxed);
    }

    /// Why the stream is stuck, if it is: streaming, with transactions
    /// received and apply neither sending nor committing for the stall
    /// time. (Blue's silence alone is not a stall: a quiet blue says
    /// nothing until teal asks, at half of `--replication-timeout`, and
    /// past all of it the source reconnects by itself;
    /// `teal_source_idle_seconds` shows it.)
    pub fn stalled(&self) -> Option<String> {
        if self.effective_state() != RunState::Streaming {
            return None;
        }
        let after = Duration::from_millis(self.stall_after_ms.load(Ordering::Relaxed));
        let pending = self.lag.pending_transactions();
        let apply_idle = self.lag.liveness().apply_idle();
        (pending > 0 && apply_idle >= after).then(|| {
            format!(
                "apply stalled: {pending} transactions received, nothing sent to or committed on green for {}s",
                apply_idle.as_secs()
            )
        })
    }

    /// Stores what blue said about the slot.
    pub fn set_slot_health(&self, health: Option<SlotHealth>) {
        *lock(&self.slot_health) = health;
    }

    /// Where the endpoint listens, once it does.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.get().copied()
    }

    /// Adds the current lags and counters to [`Monitor::history`].
    pub fn sample(&self) {
        let now = PgTimestamp::now();
        let a = &self.apply;
        self.history.push(Point {
            t_ms: u64::try_from(now.unix_micros() / 1000).unwrap_or(0),
            lag_bytes: self.lag.lag_bytes(),
            lag_seconds: self.lag.lag_seconds(now),
            changes: a.changes.load(Ordering::Relaxed),
            transactions: a.transactions.load(Ordering::Relaxed),
            conflicts: a.conflicts.load(Ordering::Relaxed),
            retained_bytes: lock(&self.slot_health).as_ref().map(|h| h.retained_bytes),
        });
    }

    /// `/status` as JSON.
    pub fn status_json(&self) -> serde_json::Value {
        let now = PgTimestamp::now();
        let state = self.effective_state();
        let liveness = self.lag.liveness();
        let a = &self.apply;
        serde_json::json!({
            "state": state,
            "stalled": self.stalled(),
            "source_idle_seconds": liveness.source_idle().as_secs_f64(),
            "apply_idle_seconds": liveness.apply_idle().as_secs_f64(),
            "source_reconnects": liveness.source_reconnects(),
            "slot": self.slot,
            "correlation_id": self.correlation_id,
            "received_wal_end": self.lag.received_wal_end().to_string(),
            "applied_lsn": self.lag.applied_lsn().to_string(),
            "lag_bytes": self.lag.lag_bytes(),
            "lag_seconds": self.lag.lag_seconds(now),
            "pending_transactions": self.lag.pending_transactions(),
            "apply_latency_seconds": self.lag.latency(),
            "received_bytes": self.lag.received_bytes(),
            "transactions": a.transactions.load(Ordering::Relaxed),
            "changes": a.changes.load(Ordering::Relaxed),
            "batches": a.batches.load(Ordering::Relaxed),
            "conflicts": a.conflicts.load(Ordering::Relaxed),
            "retries": self.retries(),
            "errors": self.errors(),
            "heartbeats": self.heartbeats.load(Ordering::Relaxed),
            "slot_health": *lock(&self.slot_health),
            "tables": a.tables(),
            "last_error": self.last_error(),
            "copy": self.copy.get().map(|c| {
                let tables = c.snapshot();
                serde_json::json!({
                    "finished": c.is_finished(),
                    "fraction": c.overall_fraction(&tables),
                    "elapsed_seconds": c.elapsed_seconds(),
                    "tables": tables,
                })
            }),
            "time": now.to_string(),
        })
    }

    /// `/metrics` in the Prometheus text exposition format (version 0.0.4).
    pub fn metrics_text(&self) -> String {
        let now = PgTimestamp::now();
        let mut out = Metrics::default();
        let slot = [("slot", self.slot.as_str())];
        let a = &self.apply;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        for (name, help, value) in [
            (
                "teal_lag_bytes",
                "Blue's latest WAL end minus the end LSN green committed (0 when caught up).",
                self.lag.lag_bytes() as f64,
            ),
            (
                "teal_lag_seconds",
                "Age of the oldest source commit received but not yet committed on green (0 when none is pending).",
                self.lag.lag_seconds(now),
            ),
            (
                "teal_received_wal_end_lsn",
                "Blue's latest WAL end (from XLogData or keepalive), as a 64-bit LSN.",
                self.lag.received_wal_end().0 as f64,
            ),
            (
                "teal_applied_lsn",
                "End LSN committed on green, as a 64-bit LSN.",
                self.lag.applied_lsn().0 as f64,
            ),
            (
                "teal_pending_transactions",
                "Source transactions received and not yet committed on green.",
                self.lag.pending_transactions() as f64,
            ),
            (
                "teal_source_idle_seconds",
                "Time since teal last heard from blue (time spent waiting for room downstream does not count).",
                self.lag.liveness().source_idle().as_secs_f64(),
            ),
            (
                "teal_apply_idle_seconds",
                "Time since apply last sent changes to green or committed there.",
                self.lag.liveness().apply_idle().as_secs_f64(),
            ),
            (
                "teal_stalled",
                "1 while streaming with work pending and nothing moving (see /readyz), 0 otherwise.",
                f64::from(u8::from(self.stalled().is_some())),
            ),
        ] {
            out.single(name, "gauge", help, &slot, value);
        }

        let l = self.lag.latency();
        out.family("teal_apply_latency_seconds", "summary", "Green commit time minus blue commit timestamp per transaction; quantiles over the last minute.");
        for (q, v) in [
            ("0.5", l.p50),
            ("0.9", l.p90),
            ("0.99", l.p99),
            ("0.999", l.p999),
            ("1", l.max),
        ] {
            out.sample(
                "teal_apply_latency_seconds",
                &[("slot", &self.slot), ("quantile", q)],
                v,
            );
        }
        out.sample("teal_apply_latency_seconds_sum", &slot, l.sum);
        out.sample("teal_apply_latency_seconds_count", &slot, l.count as f64);

        for (name, help, value) in [
            (
                "teal_transactions_total",
                "Source transactions applied to green.",
                load(&a.transactions),
            ),
            (
                "teal_changes_total",
                "Changes applied to green.",
                load(&a.changes),
            ),
            (
                "teal_batches_total",
                "Green transactions committed.",
                load(&a.batches),
            ),
            (
                "teal_skipped_transactions_total",
                "Source transactions skipped because green already had them.",
                load(&a.skipped_transactions),
            ),
            (
                "teal_conflicts_total",
                "Conflicts resolved by policy.",
                load(&a.conflicts),
            ),
            (
                "teal_set_based_rows_total",
                "Inserts, updates and deletes applied by set-based statements.",
                load(&a.set_based_rows),
            ),
            (
                "teal_superseded_updates_total",
                "Updates not sent: a later update of the same row in the same green transaction overwrote every column.",
                load(&a.superseded_updates),
            ),
            (
                "teal_retries_total",
                "Retries after a transient error: streaming attempts and replication reconnects.",
                self.retries() as f64,
            ),
            (
                "teal_errors_total",
                "Errors (transient and definite).",
                self.errors() as f64,
            ),
            (
                "teal_source_reconnects_total",
                "Replication sessions to blue that ended in a transient error and were reopened.",
                self.lag.liveness().source_reconnects() as f64,
            ),
            (
                "teal_heartbeats_total",
                "Heartbeat messages written on blue.",
                load(&self.heartbeats),
            ),
            (
                "teal_received_bytes_total",
                "Bytes of replication data received from blue.",
                self.lag.received_bytes() as f64,
            ),
        ] {
            out.single(name, "counter", help, &slot, value);
        }
        for (name, help, value) in [
            (
                "teal_decode_busy_seconds_total",
                "Time the decoder spent decoding and assembling (not waiting for blue or for apply).",
                self.lag.decode_busy_seconds(),
            ),
            (
                "teal_apply_busy_seconds_total",
                "Time the apply stage spent applying and committing, including waiting for green (not waiting for input).",
                a.busy.seconds(),
            ),
        ] {
            out.single(name, "counter", help, &slot, value);
        }

        out.histogram(
            "teal_batch_size_changes",
            "Changes per green transaction.",
            &self.slot,
            &a.batch_sizes,
            load(&a.changes),
        );

        out.family(
            "teal_table_changes_total",
            "counter",
            "Changes applied to green per table and operation.",
        );
        for (table, c) in a.tables() {
            for (op, n) in [
                ("insert", c.insert),
                ("update", c.update),
                ("delete", c.delete),
                ("truncate", c.truncate),
            ] {
                out.sample(
                    "teal_table_changes_total",
                    &[("slot", &self.slot), ("table", &table), ("operation", op)],
                    n as f64,
                );
            }
        }

        let health = lock(&self.slot_health).clone();
        out.family(
            "teal_slot_retained_wal_bytes",
            "gauge",
            "WAL blue keeps for the slot (current WAL LSN minus restart_lsn).",
        );
        out.family(
            "teal_slot_wal_status",
            "gauge",
            "1 for the slot's wal_status on blue (reserved, extended, unreserved, lost).",
        );
        if let Some(h) = health {
            out.sample(
                "teal_slot_retained_wal_bytes",
                &slot,
                h.retained_bytes as f64,
            );
            if let Some(status) = &h.wal_status {
                out.sample(
                    "teal_slot_wal_status",
                    &[("slot", &self.slot), ("status", status)],
                    1.0,
                );
            }
        }

        if let Some(copy) = self.copy.get() {
            let tables = copy.snapshot();
            out.single(
                "teal_copy_progress_ratio",
                "gauge",
                "Share of the initial copy done (0 to 1, weighted by table size).",
                &slot,
                copy.overall_fraction(&tables),
            );
            let per_table = |f: fn(&TableCopySnapshot) -> u64| {
                tables
                    .iter()
                    .map(|t| (t.table.as_str(), f(t) as f64))
                    .collect::<Vec<_>>()
            };
            for (name, kind, help, values) in [
                (
                    "teal_copy_rows_total",
                    "counter",
                    "Rows of the initial copy committed on green, per table.",
                    per_table(|t| t.rows),
                ),
                (
                    "teal_copy_bytes_total",
                    "counter",
                    "COPY bytes of the initial copy read from blue, per table.",
                    per_table(|t| t.bytes),
                ),
                (
                    "teal_copy_chunks_done_total",
                    "counter",
                    "Chunks of the initial copy committed on green, per table.",
                    per_table(|t| t.chunks_done),
                ),
                (
                    "teal_copy_chunks",
                    "gauge",
                    "Chunks of the initial copy planned, per table.",
                    per_table(|t| t.chunks),
                ),
            ] {
                out.labelled(name, kind, help, &self.slot, "table", &values);
            }
        }

        let k = &self.kafka;
        if k.enabled.load(Ordering::Relaxed) {
            let acked_lsn = k.acknowledged_lsn.load(Ordering::Relaxed);
            for (name, help, value) in [
                (
                    "teal_kafka_acknowledged_lsn",
                    "End LSN up to which Kafka holds every record, as a 64-bit LSN.",
                    acked_lsn as f64,
                ),
                (
                    "teal_kafka_lag_bytes",
                    "LSN distance from what green committed to what Kafka acknowledged (0 when Kafka is ahead).",
                    self.lag.applied_lsn().0.saturating_sub(acked_lsn) as f64,
                ),
            ] {
                out.single(name, "gauge", help, &slot, value);
            }
            let topics = lock(&k.topics).clone();
            let per_topic = |f: fn(&TopicCounts) -> u64| {
                topics
                    .iter()
                    .map(|(topic, c)| (topic.as_str(), f(c) as f64))
                    .collect::<Vec<_>>()
            };
            for (name, help, values) in [
                (
                    "teal_kafka_records_produced_total",
                    "Records handed to the Kafka producer per topic (changes, tombstones, BEGIN/END).",
                    per_topic(|c| c.produced),
                ),
                (
                    "teal_kafka_records_acknowledged_total",
                    "Records Kafka acknowledged (acks=all) per topic.",
                    per_topic(|c| c.acknowledged),
                ),
                (
                    "teal_kafka_records_failed_total",
                    "Records librdkafka gave up per topic.",
                    per_topic(|c| c.failed),
                ),
            ] {
                out.labelled(name, "counter", help, &self.slot, "topic", &values);
            }
            out.histogram(
                "teal_kafka_delivery_seconds",
                "Time from handing a record to the producer to Kafka's acknowledgement.",
                &self.slot,
                &k.latency,
                k.latency_sum.seconds(),
            );
        }

        out.single(
            "teal_up",
            "gauge",
            "1 while teal is streaming and not stalled (or copying, in teal sync), 0 otherwise.",
            &slot,
            f64::from(u8::from(
                matches!(
                    self.effective_state(),
                    RunState::Streaming | RunState::Copying
                ) && self.stalled().is_none(),
            )),
        );
        out.text
    }
}

/// Builds the exposition text: a family header, then its samples.
#[derive(Default)]
struct Metrics {
    text: String,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// A histogram of one series (per slot); `_count` is the `+Inf` bucket.
    fn histogram<B: Bounds>(
        &mut self,
        name: &str,
        help: &str,
        slot: &str,
        buckets: &Buckets<B>,
        sum: f64,
    ) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let cumulative = buckets.cumulative();
        let bounds = buckets.bounds().iter().map(ToString::to_string);
        for (le, count) in bounds.chain(["+Inf".to_owned()]).zip(&cumulative) {
            self.sample(&bucket, &[("slot", slot), ("le", &le)], *count as f64);
        }
        self.sample(&format!("{name}_sum"), &[("slot", slot)], sum);
        self.sample(
            &format!("{name}_count"),
            &[("slot", slot)],
            cumulative.last().copied().unwrap_or(0) as f64,
        );
    }

    /// A family with one sample per value of `label` (per slot).
    fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        slot: &str,
        label: &str,
        values: &[(&str, f64)],
    ) {
        self.family(name, kind, help);
        for (value_of_label, v) in values {
            self.sample(name, &[("slot", slot), (label, value_of_label)], *v);
        }
    }

    /// A family of one sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, kind, help);
        self.sample(name, labels, value);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// The endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--metrics-addr): {source}")]
pub struct HttpError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

#[derive(Clone)]
struct AppState {
    monitor: Arc<Monitor>,
    token: Option<Arc<str>>,
}

/// Listens on `addr` (port 0: any free port; see [`Monitor::addr`]) until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    monitor: Arc<Monitor>,
    token: Option<String>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError { addr, source })?;
    let _ = monitor.addr.set(bound);
    tracing::info!(addr = %bound, "metrics and status on http://{bound}/metrics");
    let state = AppState {
        monitor,
        token: token.map(Arc::from),
    };
    let sampler = {
        let (monitor, shutdown) = (Arc::clone(&state.monitor), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => monitor.sample(),
                }
            }
        }
    };
    let app = Router::new()
        .route("/", routing::get(dashboard))
        .route("/history", routing::get(history))
        .route("/metrics", routing::get(metrics))
        .route("/status", routing::get(status))
        .route("/healthz", routing::get(healthz))
        .route("/readyz", routing::get(readyz))
        .with_state(state);
    Ok(tokio::spawn(async move {
        tokio::spawn(sampler);
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    }))
}

/// `GET path` from a teal endpoint at `addr` (with a bearer token when
/// given): the status code and body. Used by `teal status` and the tests.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut request = hyper::Request::get(path).header(header::HOST, addr.to_string());
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec())
        .map(|text| (status, text))
        .map_err(|e| format!("the body is not UTF-8: {e}"))
}

/// [`Monitor::set_stall_after`] default.
const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(30);

/// How often [`Monitor::history`] gets a sample.
const SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The dashboard: one page, scripts and styles inline (works offline).
const DASHBOARD: &str = include_str!("dashboard.html");

/// Whether the request carries the token (when one is set).
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant time in the token's length: no early exit on the first difference.
    given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a bearer token is required (--metrics-token)\n",
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.monitor.metrics_text(),
    )
        .into_response()
}

async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.monitor.status_json().to_string(),
    )
        .into_response()
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    /// Only samples taken after this Unix time in milliseconds.
    #[serde(default)]
    since: u64,
}

async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.monitor.history.since_json(q.since).to_string(),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.monitor.state() {
        RunState::Failed => (StatusCode::SERVICE_UNAVAILABLE, "failed\n").into_response(),
        _ => (StatusCode::OK, "ok\n").into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if let Some(why) = state.monitor.stalled() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    }
    match state.monitor.effective_state() {
        RunState::Streaming => (StatusCode::OK, "streaming\n").into_response(),
        other => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", serde_json::to_string(&other).unwrap_or_default()),
        )
            .into_response(),
    }
}
