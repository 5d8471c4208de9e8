//! `teal demo`: teal's main job on an embedded default.
//!
//! ```text
//! local server binaries ──▶ throwaway blue + green clusters (127.0.0.1, free ports)
//! sql/demo/banking.sql ──▶ both; workload.sql (transfer procedure, publication) ──▶ blue
//! teal stream blue ──▶ green (in this process), then seed.sql and N writers on blue
//! every second: transfers written, transactions applied, lag in bytes
//! writers stop ──▶ green catches up ──▶ verify: each table's row count and
//!                 checksum equal, ledger debits = credits, balances conserved
//! ```
//!
//! The clusters are removed on every way out (end, error, Ctrl-C).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::apply::{ApplyConfig, ApplyStats};
use crate::config::{AssemblerConfig, ConnInfo, ConnInfoError, SourceConfig};
use crate::local::{Cluster, LocalError, Options, PgBin};
use crate::monitor::Monitor;
use crate::ops::format_bytes;
use crate::ops::stream::{self, MonitorConfig, StreamConfig, StreamError};
use crate::ops::verify::{self, TableSum};
use crate::store::Store;

/// Tables on both sides.
const BANKING: &str = include_str!("../../sql/demo/banking.sql");
/// The transfer procedure and the publication (blue).
const WORKLOAD: &str = include_str!("../../sql/demo/workload.sql");
/// Opening balances (blue, once teal streams, so green gets them from teal).
const SEED: &str = include_str!("../../sql/demo/seed.sql");
const TABLES: [&str; 3] = ["accounts", "transfers", "ledger"];
const SLOT: &str = "teal_demo";
const PUBLICATION: &str = "teal_demo";
/// Sum of the opening balances in seed.sql: transfers move money, never make it.
const TOTAL_BALANCE: &str = "1000000.00";
/// Longest wait for teal to start streaming, and for green to catch up.
const WAIT: Duration = Duration::from_secs(60);

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Server binaries (default: [`PgBin::find`]).
    pub pg_bin: Option<std::path::PathBuf>,
    /// How long the writers run.
    pub duration: Duration,
    /// Concurrent writers on blue.
    pub writers: usize,
    /// Interval of the live lines.
    pub report_interval: Duration,
}

/// The demo could not run, or green did not match blue.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// No server binaries, or a cluster did not start.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// A statement of the demo failed.
    #[error("{what}")]
    Sql {
        /// What the demo was doing.
        what: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A cluster's URL did not parse (a bug).
    #[error(transparent)]
    ConnInfo(#[from] ConnInfoError),
    /// `teal stream` stopped with an error.
    #[error("teal stream stopped: {0}")]
    Stream(#[from] StreamError),
    /// teal did not start, or green did not catch up, in time.
    #[error("{0}")]
    Timeout(String),
    /// Writing the report failed.
    #[error("writing the report: {0}")]
    Output(#[from] std::io::Error),
    /// Green differs from blue, or the books do not balance.
    #[error("verification failed: {0}")]
    Mismatch(String),
}

fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Sql { what, source }
}

/// What the demo did, for the caller (and tests).
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// Transfers committed on blue.
    pub transfers: u64,
    /// Per table: blue's and green's sums (equal, or the demo failed).
    pub tables: Vec<(String, TableSum)>,
    /// Source transactions teal applied.
    pub transactions: u64,
    /// Time from the writers' stop until green had everything.
    pub drain: Duration,
}

/// A session on `cluster` (its URL holds the password: never in a message).
async fn connect(cluster: &Cluster, side: &str) -> Result<Client, DemoError> {
    cluster.connect().await.map_err(sql(format!(
        "connecting to {side} on 127.0.0.1:{}",
        cluster.port
    )))
}

/// Runs the demo, writing its report to `out`. `shutdown` (Ctrl-C) stops
/// the writers early; green is still caught up and verified.
pub async fn run(
    config: DemoConfig,
    out: &mut (dyn Write + Send),
    shutdown: CancellationToken,
) -> Result<DemoSummary, DemoError> {
    let pg_bin = config.pg_bin.clone();
    let (blue, green) = tokio::task::spawn_blocking(move || start_clusters(pg_bin))
        .await
        .map_err(|e| DemoError::Timeout(format!("starting the clusters: {e}")))??;
    writeln!(
        out,
        "== blue: PostgreSQL {} on 127.0.0.1:{}; green: 127.0.0.1:{} (throwaway, removed at exit)",
        blue.bin.version, blue.port, green.port
    )?;
    let b = connect(&blue, "blue").await?;
    let g = connect(&green, "green").await?;
    b.batch_execute(BANKING)
        .await
        .map_err(sql("creating the banking schema on blue"))?;
    b.batch_execute(WORKLOAD).await.map_err(sql(
        "creating the transfer procedure and publication on blue",
    ))?;
    g.batch_execute(BANKING)
        .await
        .map_err(sql("creating the banking schema on green"))?;

    let stream_stop = CancellationToken::new();
    let monitor = Arc::new(Monitor::new(SLOT));
    let mut teal = tokio::spawn(stream::run_monitored(
        stream_config(&blue, &green)?,
        stream_stop.clone(),
        Arc::clone(&monitor),
    ));
    for _ in 0..100 {
        if monitor.addr().is_some() || teal.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(addr) = monitor.addr() {
        writeln!(
            out,
            "== dashboard: http://{addr}/  (metrics: http://{addr}/metrics, status: http://{addr}/status)"
        )?;
    }
    let result = drive(
        &config,
        out,
        &shutdown,
        &blue,
        (&b, &g),
        &mut teal,
        &monitor,
    )
    .await;
    stream_stop.cancel();
    let stats = match tokio::time::timeout(WAIT, &mut teal).await {
        Ok(Ok(Ok(stats))) => Some(stats),
        Ok(Ok(Err(e))) if result.is_ok() => return Err(e.into()),
        _ => None,
    };
    let mut summary = result?;
    if let Some(stats) = stats {
        summary.transactions = stats.transactions.load(Ordering::Relaxed);
        writeln!(
            out,
            "== teal applied {} transactions ({} changes) in {} green transactions; {} rows by set-based statements; {} conflicts",
            summary.transactions,
            stats.changes.load(Ordering::Relaxed),
            stats.batches.load(Ordering::Relaxed),
            stats.set_based_rows.load(Ordering::Relaxed),
            stats.conflicts.load(Ordering::Relaxed),
        )?;
    }
    writeln!(out, "== green equals blue; removing the clusters")?;
    Ok(summary)
}

fn start_clusters(dir: Option<std::path::PathBuf>) -> Result<(Cluster, Cluster), LocalError> {
    let bin = match dir {
        Some(dir) => PgBin::at(&dir)?,
        None => PgBin::find()?,
    }
    .runnable()?;
    let options = |side: &str| Options {
        prefix: Some(format!("teal-demo-{side}-")),
        ..Options::default()
    };
    let blue = Cluster::start(&bin, &options("blue"))?;
    let green = Cluster::start(&bin, &options("green"))?;
    Ok((blue, green))
}

fn stream_config(blue: &Cluster, green: &Cluster) -> Result<StreamConfig, DemoError> {
    let none = |_: &str| None;
    let mut source = SourceConfig::new(
        ConnInfo::parse_with_env(&blue.url(), &none)?,
        SLOT,
        vec![PUBLICATION.to_owned()],
    );
    source.create_slot = true;
    source.status_interval = Duration::from_secs(1);
    Ok(StreamConfig {
        apply: ApplyConfig::new(ConnInfo::parse_with_env(&green.url(), &none)?, SLOT),
        source,
        assembler: AssemblerConfig::default(),
        monitor: MonitorConfig {
            metrics_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            heartbeat_interval: Some(Duration::from_secs(1)),
            ..MonitorConfig::default()
        },
        kafka: None,
        no_apply: false,
        shutdown_timeout: StreamConfig::DEFAULT_SHUTDOWN_TIMEOUT,
        sync_sequences: None,
        fence_target_roles: Vec::new(),
        binary_auto: false,
    })
}

type StreamTask = JoinHandle<Result<Arc<ApplyStats>, StreamError>>;

/// An error if teal stopped by itself.
async fn check_teal(teal: &mut StreamTask) -> Result<(), DemoError> {
    if !teal.is_finished() {
        return Ok(());
    }
    match teal.await {
        Ok(Err(e)) => Err(e.into()),
        _ => Err(DemoError::Timeout("teal stream ended by itself".into())),
    }
}

/// Everything between schema set-up and teal's stop.
async fn drive(
    config: &DemoConfig,
    out: &mut (dyn Write + Send),
    shutdown: &CancellationToken,
    blue: &Cluster,
    (b, g): (&Client, &Client),
    teal: &mut StreamTask,
    monitor: &Monitor,
) -> Result<DemoSummary, DemoError> {
    // Writes count from the moment the slot streams.
    let deadline = Instant::now() + WAIT;
    loop {
        check_teal(teal).await?;
        let active = b
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&SLOT],
            )
            .await
            .map_err(sql("reading blue's replication slots"))?
            .is_some();
        if active {
            break;
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(format!(
                "teal did not start streaming within {WAIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.batch_execute(SEED)
        .await
        .map_err(sql("opening the accounts on blue"))?;
    writeln!(
        out,
        "== teal streams blue -> green; {} writers make transfers on blue for {:?} (Ctrl-C stops them early)",
        config.writers, config.duration
    )?;

    let written = Arc::new(AtomicU64::new(0));
    let stop_writers = CancellationToken::new();
    let mut writers = Vec::with_capacity(config.writers);
    for _ in 0..config.writers {
        let client = connect(blue, "blue").await?;
        writers.push(tokio::spawn(write_transfers(
            client,
            Arc::clone(&written),
            stop_writers.clone(),
        )));
    }
    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let mut ticker = tokio::time::interval(config.report_interval);
    ticker.tick().await;
    while started.elapsed() < config.duration && !shutdown.is_cancelled() {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        check_teal(teal).await?;
        if let Some(w) = writers.iter().position(JoinHandle::is_finished) {
            stop_writers.cancel();
            return Err(join_writer(writers.swap_remove(w))
                .await
                .err()
                .unwrap_or_else(|| DemoError::Timeout("a writer stopped by itself".into())));
        }
        let n = written.load(Ordering::Relaxed);
        let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), n);
        let lag = lag_bytes(b, g).await?;
        let age = g
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp() - max(created_at)) * 1000)::bigint FROM transfers",
                &[],
            )
            .await
            .map_err(sql("reading green's newest transfer"))?
            .get::<_, Option<i64>>(0);
        // Two lags, named: green behind blue's WAL insert position (what
        // has been written at all), and teal_lag_bytes as /metrics and the
        // dashboard show it (behind the last WAL end blue reported to teal).
        writeln!(
            out,
            "{:>5.1}s  blue: {n:>7} transfers ({rate:>6.0}/s)   green behind blue's WAL: {:>10} (teal_lag_bytes {:>10})   newest transfer on green: {}",
            started.elapsed().as_secs_f64(),
            lag.map_or_else(|| "-".to_owned(), format_bytes),
            format_bytes(monitor.lag.lag_bytes()),
            age.map_or_else(|| "none yet".to_owned(), |ms| format!("{ms} ms old")),
        )?;
    }
    if shutdown.is_cancelled() {
        writeln!(
            out,
            "== interrupted: stopping the writers, then verifying what they wrote"
        )?;
    }
    stop_writers.cancel();
    for w in writers {
        join_writer(w).await?;
    }
    let transfers = written.load(Ordering::Relaxed);

    // Catch up: green's progress reaches blue's current WAL position.
    let stopped = Instant::now();
    loop {
        check_teal(teal).await?;
        if lag_bytes(b, g).await? == Some(0) {
            break;
        }
        if stopped.elapsed() > WAIT {
            return Err(DemoError::Timeout(format!(
                "green did not catch up with blue within {WAIT:?} after the writers stopped"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = stopped.elapsed();
    writeln!(
        out,
        "== writers stopped after {transfers} transfers; green caught up {} ms later",
        drain.as_millis()
    )?;
    let tables = verify_sides(out, b, g).await?;
    Ok(DemoSummary {
        transfers,
        tables,
        transactions: 0,
        drain,
    })
}

async fn join_writer(writer: JoinHandle<Result<(), DemoError>>) -> Result<(), DemoError> {
    writer
        .await
        .map_err(|e| DemoError::Timeout(format!("a writer task failed: {e}")))?
}

/// Calls `demo_transfer()` until stopped; deadlocks and serialization
/// failures are retried, anything else ends the writer with an error.
async fn write_transfers(
    client: Client,
    written: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<(), DemoError> {
    while !stop.is_cancelled() {
        match client.batch_execute("CALL demo_transfer()").await {
            Ok(()) => {
                written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e)
                if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                    || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) => {}
            Err(e) => return Err(sql("a transfer on blue")(e)),
        }
    }
    Ok(())
}

/// Blue's current WAL position minus what green has committed (None before
/// green has recorded any progress).
async fn lag_bytes(b: &Client, g: &Client) -> Result<Option<u64>, DemoError> {
    let blue_lsn: String = b
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(sql("reading blue's WAL position"))?
        .get(0);
    let row = g
        .query_opt(
            &format!(
                "SELECT greatest(pg_wal_lsn_diff($1::text::pg_lsn, end_lsn), 0)::bigint FROM {}.progress WHERE slot = $2",
                Store::DEFAULT_SCHEMA
            ),
            &[&blue_lsn, &SLOT],
        )
        .await
        .map_err(sql("reading green's progress"))?;
    Ok(row.map(|r| r.get::<_, i64>(0).unsigned_abs()))
}

/// Compares each table on both sides, and checks the books on both.
async fn verify_sides(
    out: &mut (dyn Write + Send),
    b: &Client,
    g: &Client,
) -> Result<Vec<(String, TableSum)>, DemoError> {
    writeln!(
        out,
        "== verify (row count and order-independent checksum of every row)"
    )?;
    let mut sums = Vec::with_capacity(TABLES.len());
    let mut problems = Vec::new();
    for table in TABLES {
        let blue = verify::table_sum(b, table)
            .await
            .map_err(sql(format!("checksumming {table} on blue")))?;
        let green = verify::table_sum(g, table)
            .await
            .map_err(sql(format!("checksumming {table} on green")))?;
        let verdict = if blue == green { "equal" } else { "DIFFERENT" };
        writeln!(
            out,
            "   {table:<10} blue {:>7} rows {}   green {:>7} rows {}   {verdict}",
            blue.rows,
            &blue.checksum[..8.min(blue.checksum.len())],
            green.rows,
            &green.checksum[..8.min(green.checksum.len())],
        )?;
        if blue != green {
            problems.push(format!(
                "{table}: blue {} rows, green {} rows, checksums {} / {}",
                blue.rows, green.rows, blue.checksum, green.checksum
            ));
        }
        sums.push((table.to_owned(), blue));
    }
    for (side, client) in [("blue", b), ("green", g)] {
        let row = client
            .query_one(
                "SELECT coalesce(sum(debit), 0)::text, coalesce(sum(credit), 0)::text, \
                        (SELECT sum(balance)::text FROM accounts), \
                        (SELECT count(*) FROM transfers WHERE pg_column_size(memo) > 2000) \
                 FROM ledger",
                &[],
            )
            .await
            .map_err(sql(format!("reading the books on {side}")))?;
        let (debits, credits, balance, toasted): (String, String, Option<String>, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let balanced = debits == credits;
        let conserved = balance.as_deref() == Some(TOTAL_BALANCE);
        writeln!(
            out,
            "   {side:<5} ledger debits {debits} {} credits {credits}; balances sum to {} (opened with {TOTAL_BALANCE}); {toasted} TOASTed memos",
            if balanced { "=" } else { "!=" },
            balance.as_deref().unwrap_or("nothing"),
        )?;
        if !balanced {
            problems.push(format!(
                "{side}: ledger debits {debits} != credits {credits}"
            ));
        }
        if !conserved {
            problems.push(format!(
                "{side}: balances sum to {}, not {TOTAL_BALANCE}",
                balance.as_deref().unwrap_or("nothing")
            ));
        }
    }
    if problems.is_empty() {
        Ok(sums)
    } else {
        Err(DemoError::Mismatch(problems.join("; ")))
    }
}
