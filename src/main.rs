//! The `teal` command: argument parsing, logging, signals and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use teal::apply::{ApplyConfig, ConflictPolicies, ConflictPolicy};
use teal::config::{self, AssemblerConfig, ConnInfo, SourceConfig, Streaming};
use teal::event::QualifiedName;
use teal::lsn::Lsn;
use teal::monitor::Monitor;
use teal::ops::demo::{self, DemoConfig};
use teal::ops::status::{self, StatusConfig};
use teal::ops::stream::{self, MonitorConfig, StreamConfig};
use teal::ops::sync::{self, HolderCommand, OnExistingData, SyncConfig};
use teal::ops::tail::{self, Format};
use teal::sink::kafka::KafkaConfig;
use teal::store::Store;

/// Logical-replication CDC streamer for PostgreSQL.
#[derive(Parser)]
#[command(name = "teal", version, about, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "TEAL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Log filter (tracing EnvFilter syntax, e.g. info or teal=debug).
    #[arg(
        long,
        global = true,
        env = "TEAL_LOG",
        default_value = "info,tokio_postgres=warn"
    )]
    log: String,

    /// Settings from a TOML file: keys are long flag names (`source`,
    /// `batch-max-changes`, ...); flags and environment variables win over it.
    #[arg(long, global = true, env = "TEAL_CONFIG")]
    config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print blue's decoded change stream; confirms LSNs once stdout is flushed.
    Tail(TailArgs),
    /// Apply blue's changes to green, exactly once, in batched transactions.
    Stream(StreamArgs),
    /// Copy the published tables from a snapshot consistent with a new slot,
    /// in parallel chunks, then stream from that point (no gap, no overlap).
    Sync(SyncArgs),
    /// (Internal, started by teal sync) Create the slot, export its
    /// snapshot and hold it while the copy runs.
    #[command(hide = true)]
    SnapshotHolder(HolderArgs),
    /// Throwaway blue and green clusters, a banking workload on blue streamed
    /// to green with live lag, then verification; everything removed at exit.
    Demo(DemoArgs),
    /// One screen about a stream: from the running teal's /status, or from
    /// green's tables (progress, conflicts, audit) when it is not running.
    Status(StatusArgs),
}

#[derive(Args)]
struct StatusArgs {
    /// The running stream's --metrics-addr.
    #[arg(long, env = "TEAL_METRICS_ADDR", default_value = "127.0.0.1:9187")]
    metrics_addr: std::net::SocketAddr,

    /// Its bearer token, if it has one.
    #[arg(long, env = "TEAL_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,

    /// Green, read when teal does not answer (libpq URL or key=value string).
    #[arg(long, env = "TEAL_TARGET_URL", hide_env_values = true)]
    target: Option<String>,

    /// Only this slot's rows on green.
    #[arg(long, env = "TEAL_SLOT")]
    slot: Option<String>,

    /// teal's schema on green.
    #[arg(long, env = "TEAL_SCHEMA", default_value = Store::DEFAULT_SCHEMA)]
    schema: String,

    /// Redraw the screen every --interval until interrupted.
    #[arg(long)]
    watch: bool,

    /// How often --watch redraws, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = config::parse_duration)]
    interval: Duration,
}

#[derive(Args)]
struct DemoArgs {
    /// How long the writers make transfers on blue (e.g. 20s, 2m).
    #[arg(long, env = "TEAL_DEMO_DURATION", default_value = "20s", value_parser = config::parse_duration)]
    duration: Duration,

    /// Concurrent writers on blue.
    #[arg(long, env = "TEAL_DEMO_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    writers: u16,

    /// PostgreSQL server binaries (default: the newest /usr/lib/postgresql/*/bin).
    #[arg(long, env = "TEAL_PG_BIN")]
    pg_bin: Option<PathBuf>,
}

/// Where to read from and how.
#[derive(Args)]
struct SourceArgs {
    /// Blue: libpq URL or key=value string (the password may also come from PGPASSWORD or ~/.pgpass).
    #[arg(long, env = "TEAL_SOURCE_URL", hide_env_values = true)]
    source: String,

    /// Logical replication slot on blue.
    #[arg(long, env = "TEAL_SLOT")]
    slot: String,

    /// Publication(s) on blue, comma-separated.
    #[arg(long, env = "TEAL_PUBLICATION", value_delimiter = ',', required = true)]
    publication: Vec<String>,

    /// Start at this LSN instead of the slot's confirmed position (ignored when older).
    #[arg(long, env = "TEAL_START_LSN")]
    start_lsn: Option<Lsn>,

    /// Stream large in-progress transactions: auto (on from PostgreSQL 14), on, off.
    #[arg(long, env = "TEAL_STREAMING", default_value = "auto")]
    streaming: Streaming,

    /// Ask for column values in binary format (PostgreSQL 14+).
    #[arg(long, env = "TEAL_BINARY")]
    binary: bool,

    /// Do not receive pg_logical_emit_message messages.
    #[arg(long, env = "TEAL_NO_MESSAGES")]
    no_messages: bool,

    /// Memory for change data (e.g. 256MiB, 16MiB): up to 48 MiB (a quarter of a
    /// small bound) in flight between stages, buffered transactions past the
    /// rest spill to disk.
    #[arg(long, env = "TEAL_MAX_MEMORY", default_value = "256MiB", value_parser = config::parse_byte_size)]
    max_memory: u64,

    /// Directory for spill files (default: the system temporary directory).
    #[arg(long, env = "TEAL_SPILL_DIR")]
    spill_dir: Option<PathBuf>,

    /// Longest time between standby status updates to blue (e.g. 10s).
    #[arg(long, env = "TEAL_STATUS_INTERVAL", default_value = "10s", value_parser = config::parse_duration)]
    status_interval: Duration,

    /// Cap of the reconnect backoff (e.g. 30s).
    #[arg(long, env = "TEAL_RECONNECT_MAX_DELAY", default_value = "30s", value_parser = config::parse_duration)]
    reconnect_max_delay: Duration,

    /// A link that stays silent this long is dropped and reopened (e.g. 60s,
    /// "off"): blue sending nothing (a reply is asked for at half of it), or
    /// green not answering a batch or commit.
    #[arg(long, env = "TEAL_REPLICATION_TIMEOUT", default_value = "60s", value_parser = parse_optional_duration)]
    replication_timeout: OrOff<Duration>,
}

#[derive(Args)]
struct TailArgs {
    #[command(flatten)]
    source: SourceArgs,

    /// Create the slot if it does not exist.
    #[arg(long, env = "TEAL_CREATE_SLOT")]
    create_slot: bool,

    /// Output format: json (one object per line) or text.
    #[arg(long, env = "TEAL_FORMAT", default_value = "json")]
    format: Format,
}

#[derive(Args)]
struct StreamArgs {
    #[command(flatten)]
    source: SourceArgs,

    /// Green: libpq URL or key=value string (the password may also come from ~/.pgpass).
    #[arg(long, env = "TEAL_TARGET_URL", hide_env_values = true)]
    target: Option<String>,

    /// Create the slot if it does not exist (the default).
    #[arg(long, env = "TEAL_CREATE_SLOT", conflicts_with = "no_create_slot")]
    create_slot: bool,

    /// Fail instead of creating a missing slot.
    #[arg(long, env = "TEAL_NO_CREATE_SLOT")]
    no_create_slot: bool,

    /// Close a batch after the source transaction that reaches this many changes.
    #[arg(long, env = "TEAL_BATCH_MAX_CHANGES", default_value_t = ApplyConfig::DEFAULT_BATCH_MAX_CHANGES)]
    batch_max_changes: u64,

    /// Close a batch after the source transaction that ends this many ms after it began.
    #[arg(long, env = "TEAL_BATCH_MAX_DELAY_MS", default_value_t = 50)]
    batch_max_delay_ms: u64,

    /// Conflict policy for every table: error, source-wins or target-wins.
    #[arg(long, env = "TEAL_CONFLICT", default_value = "error")]
    conflict: ConflictPolicy,

    /// Conflict policy of one table: schema.table=POLICY (repeatable).
    #[arg(long = "conflict-table", env = "TEAL_CONFLICT_TABLE", value_delimiter = ',', value_parser = ConflictPolicies::parse_table)]
    conflict_table: Vec<(QualifiedName, ConflictPolicy)>,

    /// teal's schema on green (progress, conflicts).
    #[arg(long, env = "TEAL_SCHEMA", default_value = Store::DEFAULT_SCHEMA)]
    schema: String,

    /// Serve /metrics, /status, /healthz and /readyz here ("off": not at all).
    #[arg(long, env = "TEAL_METRICS_ADDR", default_value = "127.0.0.1:9187", value_parser = parse_listen_addr)]
    metrics_addr: OrOff<std::net::SocketAddr>,

    /// Bearer token required for /metrics and /status.
    #[arg(long, env = "TEAL_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,

    /// Write a heartbeat message on blue this often ("off": never), e.g. 10s.
    #[arg(long, env = "TEAL_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_optional_duration)]
    heartbeat_interval: OrOff<Duration>,

    /// Also send every change to Kafka (host:port[,..]): Debezium-format records.
    #[arg(long, env = "TEAL_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,

    /// Kafka topics are <prefix>.<schema>.<table>.
    #[arg(long, env = "TEAL_KAFKA_TOPIC_PREFIX", default_value = "teal")]
    kafka_topic_prefix: String,

    /// Topic of the BEGIN/END records (default <prefix>.transactions).
    #[arg(long, env = "TEAL_KAFKA_TRANSACTIONS_TOPIC")]
    kafka_transactions_topic: Option<String>,

    /// A librdkafka property key=value (repeatable): security.protocol, sasl.*, ssl.*, compression.type, ...
    #[arg(long = "kafka-property", env = "TEAL_KAFKA_PROPERTY", value_delimiter = ',', value_parser = KafkaConfig::parse_property, hide_env_values = true)]
    kafka_property: Vec<(String, String)>,

    /// No tombstone record after each delete.
    #[arg(long, env = "TEAL_KAFKA_NO_TOMBSTONES")]
    kafka_no_tombstones: bool,

    /// Exactly once into Kafka: a transactional producer (transactional.id
    /// teal-<slot>), one Kafka transaction per batch with teal's position;
    /// consumers read with isolation.level=read_committed.
    #[arg(long, env = "TEAL_KAFKA_EXACTLY_ONCE")]
    kafka_exactly_once: bool,

    /// Topic of --kafka-exactly-once's position (default <prefix>.teal_progress;
    /// best created with cleanup.policy=compact).
    #[arg(long, env = "TEAL_KAFKA_PROGRESS_TOPIC")]
    kafka_progress_topic: Option<String>,

    /// How far green may get ahead of what Kafka acknowledged, in bytes of WAL
    /// (e.g. 1GiB; "off": only bounded by the queues), before apply waits.
    #[arg(long, env = "TEAL_KAFKA_MAX_BEHIND", default_value = "1GiB", value_parser = parse_optional_byte_size)]
    kafka_max_behind: OrOff<u64>,

    /// Kafka only, no green (then --target is optional).
    #[arg(long, env = "TEAL_NO_APPLY")]
    no_apply: bool,

    /// After SIGTERM or SIGINT, how long teal may finish what it received
    /// before it exits anyway with status 1 (e.g. 20s); what green did not
    /// commit is never confirmed, so blue sends it again.
    #[arg(long, env = "TEAL_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = config::parse_duration)]
    shutdown_timeout: Duration,
}

#[derive(Args)]
struct SyncArgs {
    #[command(flatten)]
    stream: StreamArgs,

    /// Parallel copy workers (each a session on blue and one on green).
    #[arg(long, env = "TEAL_COPY_WORKERS", default_value_t = SyncConfig::DEFAULT_COPY_WORKERS as u16, value_parser = clap::value_parser!(u16).range(1..=256))]
    copy_workers: u16,

    /// Rows per chunk (about: chunks are ranges of pages); big tables copy
    /// in parallel chunks.
    #[arg(long, env = "TEAL_CHUNK_ROWS", default_value_t = SyncConfig::DEFAULT_CHUNK_ROWS, value_parser = clap::value_parser!(u64).range(1..))]
    chunk_rows: u64,

    /// Only these published tables (schema.table or table), comma-separated.
    #[arg(long, env = "TEAL_TABLES", value_delimiter = ',')]
    tables: Vec<String>,

    /// Not these tables, comma-separated.
    #[arg(long, env = "TEAL_EXCLUDE_TABLES", value_delimiter = ',')]
    exclude_tables: Vec<String>,

    /// Green tables that already hold rows: error (stop, naming them),
    /// truncate (empty them) or skip-table (copy nothing into them).
    #[arg(long, env = "TEAL_ON_EXISTING_DATA", default_value = "error")]
    on_existing_data: OnExistingData,

    /// Exit after the copy instead of streaming (teal stream continues later).
    #[arg(long, env = "TEAL_COPY_ONLY")]
    copy_only: bool,

    /// Keep green's indexes in place during the copy (each copied row is
    /// inserted into them). By default, indexes that nothing depends on are
    /// dropped before a table is copied and built once it is full (their
    /// definitions are kept in teal's schema until then).
    #[arg(long, env = "TEAL_KEEP_INDEXES")]
    keep_indexes: bool,

    /// If teal sync dies mid-copy, its snapshot stays held this long (e.g.
    /// 10m) so that the next teal sync resumes it; a held snapshot keeps
    /// blue's VACUUM from removing old rows.
    #[arg(long, env = "TEAL_SNAPSHOT_HOLD", default_value = "10m", value_parser = config::parse_duration)]
    snapshot_hold: Duration,
}

#[derive(Args)]
struct HolderArgs {
    /// Blue (from the environment only, so it never shows in ps).
    #[arg(
        long = "source-from-env",
        env = "TEAL_SOURCE_URL",
        hide_env_values = true,
        hide = true
    )]
    source: String,

    /// The slot to create.
    #[arg(long)]
    slot: String,

    /// How long to hold the snapshot once teal sync is gone.
    #[arg(long, value_parser = config::parse_duration)]
    orphan_timeout: Duration,
}

/// A flag value that may be `off` (clap treats a field of type `Option`
/// as "flag absent", so "off" needs its own type).
#[derive(Debug, Clone, Copy)]
struct OrOff<T>(Option<T>);

fn parse_listen_addr(s: &str) -> Result<OrOff<std::net::SocketAddr>, String> {
    if s == "off" {
        return Ok(OrOff(None));
    }
    s.parse()
        .map(|a| OrOff(Some(a)))
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:9187 (or off)"))
}

fn parse_optional_duration(s: &str) -> Result<OrOff<Duration>, String> {
    match s {
        "off" => Ok(OrOff(None)),
        _ => match config::parse_duration(s)? {
            d if d.is_zero() => Err("must be more than 0 (or off)".into()),
            d => Ok(OrOff(Some(d))),
        },
    }
}

fn parse_optional_byte_size(s: &str) -> Result<OrOff<u64>, String> {
    match s {
        "off" => Ok(OrOff(None)),
        _ => config::parse_byte_size(s).map(|b| OrOff(Some(b))),
    }
}

impl StreamArgs {
    fn config(self) -> anyhow::Result<StreamConfig> {
        let (mut source, assembler) = self.source.configs()?;
        source.create_slot = !self.no_create_slot;
        let target: ConnInfo = match (&self.target, self.no_apply) {
            (Some(t), _) => t.parse().context("invalid --target connection string")?,
            // Not used without apply.
            (None, true) => {
                ConnInfo::parse_with_env("", &|_| None).context("building an empty --target")?
            }
            (None, false) => anyhow::bail!(
                "--target (green) is required, unless --no-apply streams to Kafka only"
            ),
        };
        if self.batch_max_changes == 0 {
            anyhow::bail!("invalid --batch-max-changes: must be at least 1");
        }
        if self.no_apply && self.kafka_brokers.is_none() {
            anyhow::bail!("--no-apply streams to Kafka only: give --kafka-brokers too");
        }
        let kafka = self.kafka_brokers.map(|brokers| KafkaConfig {
            brokers,
            topic_prefix: self.kafka_topic_prefix,
            transactions_topic: self.kafka_transactions_topic,
            properties: self.kafka_property,
            tombstones: !self.kafka_no_tombstones,
            db: source.conninfo.dbname.clone(),
            exactly_once: self.kafka_exactly_once,
            progress_topic: self.kafka_progress_topic,
            max_behind: self.kafka_max_behind.0,
        });
        let apply = ApplyConfig {
            target,
            slot: source.slot.clone(),
            batch_max_changes: self.batch_max_changes,
            batch_max_delay: Duration::from_millis(self.batch_max_delay_ms),
            conflicts: ConflictPolicies {
                default: self.conflict,
                tables: self.conflict_table.into_iter().collect(),
            },
            store: Store::new(self.schema),
            timeout: source.replication_timeout,
        };
        Ok(StreamConfig {
            source,
            assembler,
            apply,
            monitor: MonitorConfig {
                metrics_addr: self.metrics_addr.0,
                metrics_token: self.metrics_token,
                heartbeat_interval: self.heartbeat_interval.0,
                ..MonitorConfig::default()
            },
            kafka,
            no_apply: self.no_apply,
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}

impl SourceArgs {
    fn configs(self) -> anyhow::Result<(SourceConfig, AssemblerConfig)> {
        let conninfo: ConnInfo = self
            .source
            .parse()
            .context("invalid --source connection string")?;
        let mut source = SourceConfig::new(conninfo, self.slot, self.publication);
        source.start_lsn = self.start_lsn;
        source.streaming = self.streaming;
        source.binary = self.binary;
        source.messages = !self.no_messages;
        source.status_interval = self.status_interval;
        source.reconnect_max_delay = self.reconnect_max_delay;
        source.replication_timeout = self.replication_timeout.0;
        source.validate()?;
        let assembler = AssemblerConfig {
            max_memory: self.max_memory,
            spill_dir: self.spill_dir.unwrap_or_else(std::env::temp_dir),
        };
        assembler.validate()?;
        Ok((source, assembler))
    }
}

fn init_logging(format: &str, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("invalid --log filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM. Another signal at least a second
/// later cancels `abort` when given, else exits at once (a signal sent to the
/// process and its group at the same time, as `timeout` and some supervisors
/// do, counts once).
fn spawn_signal_handler(
    token: CancellationToken,
    abort: Option<CancellationToken>,
    stopping: Option<&'static str>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let mut first: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            match first {
                None => {
                    first = Some(tokio::time::Instant::now());
                    if let Some(stopping) = stopping {
                        tracing::info!("{stopping}");
                    }
                    token.cancel();
                }
                Some(at) if at.elapsed() >= Duration::from_secs(1) => match &abort {
                    Some(abort) => abort.cancel(),
                    None => {
                        eprintln!("teal: second signal, exiting without a clean stop");
                        std::process::exit(130);
                    }
                },
                Some(_) => {}
            }
        }
    });
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let abort = CancellationToken::new();
    let is_demo = matches!(cli.command, Command::Demo(_));
    // The snapshot holder is stopped by teal sync once the copy is done:
    // nothing worth a line.
    let stopping = match cli.command {
        Command::SnapshotHolder(_) => None,
        Command::Tail(_) | Command::Stream(_) | Command::Sync(_) => {
            Some("stopping: finishing what was received, then confirming to blue")
        }
        Command::Status(_) | Command::Demo(_) => Some("stopping"),
    };
    spawn_signal_handler(shutdown.clone(), is_demo.then(|| abort.clone()), stopping)?;
    match cli.command {
        Command::Tail(args) => {
            let (mut source, assembler) = args.source.configs()?;
            source.create_slot = args.create_slot;
            let (summary, stats) = tail::run(
                source,
                assembler,
                args.format,
                Box::new(std::io::stdout()),
                shutdown,
            )
            .await?;
            tracing::info!(
                transactions = summary.transactions,
                changes = summary.changes,
                confirmed_lsn = %summary.confirmed_lsn,
                spilled_changes = stats.spilled_changes.load(Ordering::Relaxed),
                "tail stopped"
            );
        }
        Command::Stream(args) => {
            let config = args.config()?;
            let stats = stream::run(config, shutdown).await?;
            tracing::info!(
                transactions = stats.transactions.load(Ordering::Relaxed),
                changes = stats.changes.load(Ordering::Relaxed),
                batches = stats.batches.load(Ordering::Relaxed),
                conflicts = stats.conflicts.load(Ordering::Relaxed),
                "stream stopped"
            );
        }
        Command::Sync(args) => {
            if args.stream.no_apply {
                anyhow::bail!("teal sync copies into green: --no-apply is for teal stream");
            }
            let source_url = args.stream.source.source.clone();
            let mut config = SyncConfig::new(args.stream.config()?);
            config.holder = Some(HolderCommand {
                program: std::env::current_exe()
                    .context("cannot find teal's own binary to start the snapshot holder")?,
                source_url,
                orphan_timeout: args.snapshot_hold,
            });
            config.copy_workers = usize::from(args.copy_workers);
            config.chunk_rows = args.chunk_rows;
            config.tables = args.tables;
            config.exclude_tables = args.exclude_tables;
            config.on_existing_data = args.on_existing_data;
            config.copy_only = args.copy_only;
            config.keep_indexes = args.keep_indexes;
            let monitor = Arc::new(Monitor::new(config.stream.apply.slot.clone()));
            let (copied, stats) = sync::run(config, shutdown, monitor).await?;
            tracing::info!(
                copied_rows = copied.rows,
                consistent_point = %copied.consistent_point,
                transactions = stats.transactions.load(Ordering::Relaxed),
                changes = stats.changes.load(Ordering::Relaxed),
                "sync stopped"
            );
        }
        Command::SnapshotHolder(args) => {
            let source: ConnInfo = args
                .source
                .parse()
                .context("invalid TEAL_SOURCE_URL connection string")?;
            sync::hold(&source, &args.slot, args.orphan_timeout, shutdown).await?;
        }
        Command::Status(args) => {
            if args.interval.is_zero() {
                anyhow::bail!("invalid --interval: must be more than 0");
            }
            let target = match &args.target {
                Some(t) => Some(
                    t.parse::<ConnInfo>()
                        .context("invalid --target connection string")?,
                ),
                None => None,
            };
            let config = StatusConfig {
                addr: args.metrics_addr,
                token: args.metrics_token,
                target,
                slot: args.slot,
                schema: args.schema,
                watch: args.watch.then_some(args.interval),
            };
            status::run(&config, &mut std::io::stdout(), shutdown).await?;
        }
        Command::Demo(args) => {
            let config = DemoConfig {
                pg_bin: args.pg_bin,
                duration: args.duration,
                writers: usize::from(args.writers),
                report_interval: Duration::from_secs(1),
            };
            let mut out = std::io::stdout();
            // A second Ctrl-C drops the demo, whose clusters stop and are removed.
            tokio::select! {
                result = demo::run(config, &mut out, shutdown) => { result?; }
                () = abort.cancelled() => anyhow::bail!("interrupted twice: stopped without verifying"),
            }
        }
    }
    Ok(())
}

/// Loads `--config FILE` (or `TEAL_CONFIG`) into the environment variables
/// of the flags it names, unless set already: flag > environment > file.
fn load_config_file() -> Result<(), String> {
    use clap::CommandFactory;
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let from_args = args.iter().enumerate().find_map(|(i, a)| {
        if a == "--config" {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix("--config=").map(str::to_owned)
        }
    });
    let Some(path) = from_args.or_else(|| std::env::var("TEAL_CONFIG").ok()) else {
        return Ok(());
    };
    let cli = Cli::command();
    let mut flags: Vec<(String, String)> = Vec::new();
    let mut add = |cmd: &clap::Command| {
        for arg in cmd.get_arguments() {
            if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env())
                && long != "config"
            {
                flags.push((long.to_owned(), env.to_string_lossy().into_owned()));
            }
        }
    };
    add(&cli);
    if let Some(sub) = args.iter().skip(1).find_map(|a| cli.find_subcommand(a)) {
        add(sub);
    }
    let pairs = teal::config::env_from_file(std::path::Path::new(&path), &flags)
        .map_err(|e| e.to_string())?;
    for (key, value) in pairs {
        if std::env::var_os(&key).is_none() {
            // SAFETY: single-threaded here: no runtime or other thread exists yet.
            unsafe { std::env::set_var(key, value) };
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Err(e) = load_config_file() {
        eprintln!("teal: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log_format, &cli.log) {
        eprintln!("teal: {}", teal::error::report(e.chain()));
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("teal: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = teal::error::report(e.chain());
            let hint = e
                .chain()
                .find_map(|c| c.downcast_ref::<stream::StreamError>())
                .and_then(|s| teal::error::policy(&s.kind()).hint);
            tracing::error!(error = %message, "teal stopped");
            eprintln!("teal: {message}");
            if let Some(hint) = hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
