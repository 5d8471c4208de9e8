//! teal's command line: the clap definitions, the conversion of flags into
//! the library's configuration types (which validate themselves), and
//! `--config FILE`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use teal::apply::{ApplyConfig, ConflictPolicies, ConflictPolicy};
use teal::config::{self, AssemblerConfig, ConnInfo, Secret, SourceConfig, Streaming};
use teal::event::QualifiedName;
use teal::lsn::Lsn;
use teal::ops::stream::{MonitorConfig, StreamConfig};
use teal::ops::sync::{OnExistingData, SyncConfig};
use teal::ops::tail::Format;
use teal::sink::kafka::KafkaConfig;
use teal::store::Store;

mod compare;
mod mirror;
mod secrets;
mod switch;

pub(crate) use compare::{RepairArgs, VerifyArgs};
pub(crate) use mirror::{AuditArgs, AuditCommand, DdlArgs, DdlCommand, MaskArgs};
pub(crate) use secrets::{command_line_secrets_warning, secrets_on_command_line};
pub(crate) use switch::SwitchArgs;

/// Logical-replication CDC streamer for PostgreSQL.
#[derive(Parser)]
#[command(name = "teal", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "TEAL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub(crate) log_format: String,

    /// Log filter (tracing EnvFilter syntax, e.g. info or teal=debug).
    #[arg(
        long,
        global = true,
        env = "TEAL_LOG",
        default_value = "info,tokio_postgres=warn"
    )]
    pub(crate) log: String,

    /// Settings from a TOML file: keys are long flag names (`source`,
    /// `batch-max-changes`, ...); flags and environment variables win over it.
    #[arg(long, global = true, env = "TEAL_CONFIG")]
    pub(crate) config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    /// Compare green with blue at one exact point of the running stream:
    /// the published tables' schema (each difference with its fix), then
    /// every row, naming each differing key. Needs teal stream running on
    /// the slot. Exit status 0 equal, 1 differences, 2 could not verify.
    Verify(VerifyArgs),
    /// Make green's rows of the keys a `teal verify --report` names equal to
    /// blue's, at one exact point of the running stream (which then goes on).
    Repair(RepairArgs),
    /// Switch the writers from blue to green: checks, fence blue, every
    /// acknowledged write on green, sequences, the way back armed, then the
    /// running teal stream turns round (green -> blue). Exit status 0
    /// switched (or rehearsed), 1 no-go or aborted (blue writable), 2 error.
    Cutover(SwitchArgs),
    /// The same the other way: fence green, everything on blue, and the
    /// stream goes back to blue -> green.
    Rollback(SwitchArgs),
    /// The ledger of applied changes on green.
    Audit(AuditArgs),
    /// DDL in the stream: an event trigger on blue sends each DDL statement
    /// in commit order with the data; teal stream runs the ones it supports
    /// on green and stops with the statement to run for the rest.
    Ddl(DdlArgs),
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    /// The running stream's --metrics-addr.
    #[arg(long, env = "TEAL_METRICS_ADDR", default_value = "127.0.0.1:9187")]
    pub(crate) metrics_addr: std::net::SocketAddr,

    /// Its bearer token, if it has one.
    #[arg(long, env = "TEAL_METRICS_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) metrics_token: Option<Secret>,

    /// Green, read when teal does not answer (libpq URL or key=value string).
    #[arg(long, env = "TEAL_TARGET_URL", hide_env_values = true)]
    pub(crate) target: Option<String>,

    /// Only this slot's rows on green.
    #[arg(long, env = "TEAL_SLOT")]
    pub(crate) slot: Option<String>,

    /// teal's schema on green.
    #[arg(long, env = "TEAL_SCHEMA", default_value = Store::DEFAULT_SCHEMA)]
    pub(crate) schema: String,

    /// Redraw the screen every --interval until interrupted.
    #[arg(long)]
    pub(crate) watch: bool,

    /// How often --watch redraws, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = config::parse_duration)]
    pub(crate) interval: Duration,
}

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// How long the writers make transfers on blue (e.g. 20s, 2m).
    #[arg(long, env = "TEAL_DEMO_DURATION", default_value = "20s", value_parser = config::parse_duration)]
    pub(crate) duration: Duration,

    /// Concurrent writers on blue.
    #[arg(long, env = "TEAL_DEMO_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) writers: u16,

    /// PostgreSQL server binaries (default: the newest /usr/lib/postgresql/*/bin).
    #[arg(long, env = "TEAL_PG_BIN")]
    pub(crate) pg_bin: Option<PathBuf>,
}

/// Where to read from and how.
#[derive(Args)]
pub(crate) struct SourceArgs {
    /// Blue: libpq URL or key=value string (the password may also come from PGPASSWORD or ~/.pgpass).
    #[arg(long, env = "TEAL_SOURCE_URL", hide_env_values = true)]
    pub(crate) source: String,

    /// Only these published tables (schema.table, or table in any schema),
    /// comma-separated: teal sync copies only them, and the stream, green
    /// and Kafka get only their changes (the others are counted in
    /// teal_source_skipped_changes_total).
    #[arg(long, env = "TEAL_TABLES", value_delimiter = ',')]
    pub(crate) tables: Vec<String>,

    /// Not these tables (same form), comma-separated.
    #[arg(long, env = "TEAL_EXCLUDE_TABLES", value_delimiter = ',')]
    pub(crate) exclude_tables: Vec<String>,

    /// Leave out the transactions blue received through these replication
    /// origins, comma-separated (e.g. teal_<slot> of a teal streaming the
    /// other way): their changes do not echo back.
    #[arg(long, env = "TEAL_SKIP_ORIGINS", value_delimiter = ',')]
    pub(crate) skip_origins: Vec<String>,

    #[command(flatten)]
    pub(crate) mask: MaskArgs,

    /// Logical replication slot on blue.
    #[arg(long, env = "TEAL_SLOT")]
    pub(crate) slot: String,

    /// Publication(s) on blue, comma-separated.
    #[arg(long, env = "TEAL_PUBLICATION", value_delimiter = ',', required = true)]
    pub(crate) publication: Vec<String>,

    /// Start at this LSN instead of the slot's confirmed position (ignored when older).
    #[arg(long, env = "TEAL_START_LSN")]
    pub(crate) start_lsn: Option<Lsn>,

    /// Stream large in-progress transactions: auto (on from PostgreSQL 14), on, off.
    #[arg(long, env = "TEAL_STREAMING", default_value = "auto")]
    pub(crate) streaming: Streaming,

    /// Column values in pgoutput's binary format (PostgreSQL 14+): auto
    /// (teal stream and sync: when every published column's type is built
    /// in and the same on both sides, blue and green share a major version,
    /// and nothing is masked; decided at each connection), on (`--binary`
    /// alone), off.
    #[arg(long, env = "TEAL_BINARY", default_value = "auto", num_args = 0..=1, default_missing_value = "on", value_parser = ["auto", "on", "off", "true", "false"])]
    pub(crate) binary: String,

    /// Do not receive pg_logical_emit_message messages.
    #[arg(long, env = "TEAL_NO_MESSAGES")]
    pub(crate) no_messages: bool,

    /// Memory for change data (e.g. 256MiB, 16MiB): up to 48 MiB (a quarter of a
    /// small bound) in flight between stages, buffered transactions past the
    /// rest spill to disk.
    #[arg(long, env = "TEAL_MAX_MEMORY", default_value = "256MiB", value_parser = config::parse_byte_size)]
    pub(crate) max_memory: u64,

    /// Directory for spill files (default: the system temporary directory).
    #[arg(long, env = "TEAL_SPILL_DIR")]
    pub(crate) spill_dir: Option<PathBuf>,

    /// Longest time between standby status updates to blue (e.g. 10s).
    #[arg(long, env = "TEAL_STATUS_INTERVAL", default_value = "10s", value_parser = config::parse_duration)]
    pub(crate) status_interval: Duration,

    /// Cap of the reconnect backoff (e.g. 30s).
    #[arg(long, env = "TEAL_RECONNECT_MAX_DELAY", default_value = "30s", value_parser = config::parse_duration)]
    pub(crate) reconnect_max_delay: Duration,

    /// A link that stays silent this long is dropped and reopened (e.g. 60s,
    /// "off"): blue sending nothing (a reply is asked for at half of it), or
    /// green not answering a batch or commit.
    #[arg(long, env = "TEAL_REPLICATION_TIMEOUT", default_value = "60s", value_parser = parse_optional_duration)]
    pub(crate) replication_timeout: OrOff<Duration>,
}

#[derive(Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,

    /// Create the slot if it does not exist.
    #[arg(long, env = "TEAL_CREATE_SLOT")]
    pub(crate) create_slot: bool,

    /// Output format: json (one object per line) or text.
    #[arg(long, env = "TEAL_FORMAT", default_value = "json")]
    pub(crate) format: Format,
}

#[derive(Args)]
pub(crate) struct StreamArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,

    /// Green: libpq URL or key=value string (the password may also come from ~/.pgpass).
    #[arg(long, env = "TEAL_TARGET_URL", hide_env_values = true)]
    pub(crate) target: Option<String>,

    /// Create the slot if it does not exist (the default).
    #[arg(long, env = "TEAL_CREATE_SLOT", conflicts_with = "no_create_slot")]
    pub(crate) create_slot: bool,

    /// Fail instead of creating a missing slot.
    #[arg(long, env = "TEAL_NO_CREATE_SLOT")]
    pub(crate) no_create_slot: bool,

    /// Close a batch after the source transaction that reaches this many changes.
    #[arg(long, env = "TEAL_BATCH_MAX_CHANGES", default_value_t = ApplyConfig::DEFAULT_BATCH_MAX_CHANGES)]
    pub(crate) batch_max_changes: u64,

    /// Close a batch after the source transaction that ends this many ms after it began.
    #[arg(long, env = "TEAL_BATCH_MAX_DELAY_MS", default_value_t = 50)]
    pub(crate) batch_max_delay_ms: u64,

    /// Conflict policy for every table: error, source-wins or target-wins.
    #[arg(long, env = "TEAL_CONFLICT", default_value = "error")]
    pub(crate) conflict: ConflictPolicy,

    /// Conflict policy of one table: schema.table=POLICY (repeatable).
    #[arg(long = "conflict-table", env = "TEAL_CONFLICT_TABLE", value_delimiter = ',', value_parser = ConflictPolicies::parse_table)]
    pub(crate) conflict_table: Vec<(QualifiedName, ConflictPolicy)>,

    /// teal's schema on green (progress, conflicts).
    #[arg(long, env = "TEAL_SCHEMA", default_value = Store::DEFAULT_SCHEMA)]
    pub(crate) schema: String,

    /// Serve the dashboard (/), /metrics, /status, /history, /healthz and /readyz here ("off": not at all).
    #[arg(long, env = "TEAL_METRICS_ADDR", default_value = "127.0.0.1:9187", value_parser = parse_listen_addr)]
    pub(crate) metrics_addr: OrOff<std::net::SocketAddr>,

    /// Bearer token required for /metrics and /status.
    #[arg(long, env = "TEAL_METRICS_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) metrics_token: Option<Secret>,

    /// Write a heartbeat message on blue this often ("off": never), e.g. 10s.
    #[arg(long, env = "TEAL_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_optional_duration)]
    pub(crate) heartbeat_interval: OrOff<Duration>,

    /// Also send every change to Kafka (host:port[,..]): Debezium-format records.
    #[arg(long, env = "TEAL_KAFKA_BROKERS")]
    pub(crate) kafka_brokers: Option<String>,

    /// Kafka topics are <prefix>.<schema>.<table>.
    #[arg(long, env = "TEAL_KAFKA_TOPIC_PREFIX", default_value = "teal")]
    pub(crate) kafka_topic_prefix: String,

    /// Topic of the BEGIN/END records (default <prefix>.transactions).
    #[arg(long, env = "TEAL_KAFKA_TRANSACTIONS_TOPIC")]
    pub(crate) kafka_transactions_topic: Option<String>,

    /// A librdkafka property key=value (repeatable): security.protocol, sasl.*, ssl.*, compression.type, ...
    /// (Repeat the flag for several; values may hold commas. In
    /// TEAL_KAFKA_PROPERTY: one per line.)
    #[arg(
        long = "kafka-property",
        env = "TEAL_KAFKA_PROPERTY",
        hide_env_values = true
    )]
    pub(crate) kafka_property: Vec<String>,

    /// No tombstone record after each delete.
    #[arg(long, env = "TEAL_KAFKA_NO_TOMBSTONES")]
    pub(crate) kafka_no_tombstones: bool,

    /// Exactly once into Kafka: a transactional producer (transactional.id
    /// teal-<slot>), Kafka transactions with teal's position
    /// (--kafka-transaction-max-records / --kafka-transaction-max-delay);
    /// consumers read with isolation.level=read_committed.
    #[arg(long, env = "TEAL_KAFKA_EXACTLY_ONCE")]
    pub(crate) kafka_exactly_once: bool,

    /// Topic of --kafka-exactly-once's position (default <prefix>.teal_progress;
    /// best created with cleanup.policy=compact).
    #[arg(long, env = "TEAL_KAFKA_PROGRESS_TOPIC")]
    pub(crate) kafka_progress_topic: Option<String>,

    /// How far green may get ahead of what Kafka acknowledged, in bytes of WAL
    /// (e.g. 1GiB; "off": only bounded by the queues), before apply waits.
    #[arg(long, env = "TEAL_KAFKA_MAX_BEHIND", default_value = "1GiB", value_parser = parse_optional_byte_size)]
    pub(crate) kafka_max_behind: OrOff<u64>,

    /// When blue would invalidate the slot within this long (e.g. 10m; the
    /// default without a value) while Kafka, not green, holds it back: drop
    /// Kafka from the slot's watermark for the rest of the run (an error
    /// log, a 'kafka_drop' audit row, teal_kafka_dropped 1) rather than
    /// lose the slot. Kafka misses what follows; restart teal to resume it.
    #[arg(long, env = "TEAL_KAFKA_DROP_ON_WAL_RISK", default_value = "off", num_args = 0..=1, default_missing_value = "10m", value_parser = parse_optional_duration)]
    pub(crate) kafka_drop_on_wal_risk: OrOff<Duration>,

    /// With --kafka-exactly-once: a Kafka transaction commits once it holds
    /// this many records (between source transactions).
    #[arg(long, env = "TEAL_KAFKA_TRANSACTION_MAX_RECORDS", default_value_t = KafkaConfig::DEFAULT_TRANSACTION_MAX_RECORDS, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) kafka_transaction_max_records: u64,

    /// With --kafka-exactly-once: ... or once it is this old (e.g. 500ms;
    /// read_committed consumers see records up to that much later; a
    /// stream with nothing more waiting commits once it is 20ms old).
    #[arg(long, env = "TEAL_KAFKA_TRANSACTION_MAX_DELAY", default_value = "500ms", value_parser = config::parse_duration)]
    pub(crate) kafka_transaction_max_delay: Duration,

    /// Kafka only, no green (then --target is optional).
    #[arg(long, env = "TEAL_NO_APPLY")]
    pub(crate) no_apply: bool,

    /// After SIGTERM or SIGINT, how long teal may finish what it received
    /// before it exits anyway with status 1 (e.g. 20s); what green did not
    /// commit is never confirmed, so blue sends it again.
    #[arg(long, env = "TEAL_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = config::parse_duration)]
    pub(crate) shutdown_timeout: Duration,

    /// Copy the published tables' sequences (owned, identity, or named in
    /// a default) from blue to green this often, never backwards, e.g. 10s
    /// ("off": never); a cutover then has little left to do.
    #[arg(long, env = "TEAL_SYNC_SEQUENCES", default_value = "off", value_parser = parse_optional_duration)]
    pub(crate) sync_sequences: OrOff<Duration>,

    /// Append each green batch to the tamper-evident ledger of applied
    /// changes (teal.ledger; `teal audit verify` checks it): on or off.
    #[arg(long, env = "TEAL_LEDGER", default_value = "on", value_parser = ["on", "off"])]
    pub(crate) ledger: String,

    /// While streaming blue -> green, these roles may not log in to green
    /// (NOLOGIN, their sessions ended), so nobody writes there by mistake;
    /// teal cutover lifts the fence (comma-separated).
    #[arg(long, env = "TEAL_FENCE_TARGET_ROLES", value_delimiter = ',')]
    pub(crate) fence_target_roles: Vec<String>,
}

#[derive(Args)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    pub(crate) stream: StreamArgs,

    /// Parallel copy workers (each a session on blue and one on green).
    #[arg(long, env = "TEAL_COPY_WORKERS", default_value_t = SyncConfig::DEFAULT_COPY_WORKERS as u16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) copy_workers: u16,

    /// Rows per chunk (about: chunks are ranges of pages); big tables copy
    /// in parallel chunks.
    #[arg(long, env = "TEAL_CHUNK_ROWS", default_value_t = SyncConfig::DEFAULT_CHUNK_ROWS, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) chunk_rows: u64,

    /// Green tables that already hold rows: error (stop, naming them),
    /// truncate (empty them) or skip-table (copy nothing into them).
    // The values are named in the help above: listing them again with
    // their own help would switch `--help` to clap's long form.
    #[arg(
        long,
        env = "TEAL_ON_EXISTING_DATA",
        default_value = "error",
        hide_possible_values = true
    )]
    pub(crate) on_existing_data: OnExistingData,

    /// Exit after the copy instead of streaming (teal stream continues later).
    #[arg(long, env = "TEAL_COPY_ONLY")]
    pub(crate) copy_only: bool,

    /// Keep green's indexes in place during the copy (each copied row is
    /// inserted into them). By default, indexes that nothing depends on are
    /// dropped before a table is copied and built once it is full (their
    /// definitions are kept in teal's schema until then).
    #[arg(long, env = "TEAL_KEEP_INDEXES")]
    pub(crate) keep_indexes: bool,

    /// If teal sync dies mid-copy, its snapshot stays held this long (e.g.
    /// 10m) so that the next teal sync resumes it; a held snapshot keeps
    /// blue's VACUUM from removing old rows.
    #[arg(long, env = "TEAL_SNAPSHOT_HOLD", default_value = "10m", value_parser = config::parse_duration)]
    pub(crate) snapshot_hold: Duration,
}

#[derive(Args)]
pub(crate) struct HolderArgs {
    /// Blue (from the environment only, so it never shows in ps).
    #[arg(
        long = "source-from-env",
        env = "TEAL_SOURCE_URL",
        hide_env_values = true,
        hide = true
    )]
    pub(crate) source: String,

    /// The slot to create.
    #[arg(long)]
    pub(crate) slot: String,

    /// How long to hold the snapshot once teal sync is gone.
    #[arg(long, value_parser = config::parse_duration)]
    pub(crate) orphan_timeout: Duration,
}

/// A flag value that may be `off` (clap treats a field of type `Option`
/// as "flag absent", so "off" needs its own type).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OrOff<T>(pub(crate) Option<T>);

/// A secret flag's value (its Debug shows `***`).
fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

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
    pub(crate) fn config(self) -> anyhow::Result<StreamConfig> {
        let binary_auto = self.source.binary == "auto";
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
        let properties = self
            .kafka_property
            .iter()
            .flat_map(|v| v.lines())
            .filter(|l| !l.trim().is_empty())
            .map(KafkaConfig::parse_property)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| anyhow::anyhow!("invalid --kafka-property: {reason}"))?;
        let kafka = self.kafka_brokers.map(|brokers| KafkaConfig {
            brokers,
            topic_prefix: self.kafka_topic_prefix,
            transactions_topic: self.kafka_transactions_topic,
            properties,
            tombstones: !self.kafka_no_tombstones,
            db: source.conninfo.dbname.clone(),
            exactly_once: self.kafka_exactly_once,
            position_topic: self.kafka_progress_topic,
            max_behind: self.kafka_max_behind.0,
            drop_on_wal_risk: self.kafka_drop_on_wal_risk.0,
            transaction_max_records: self.kafka_transaction_max_records,
            transaction_max_delay: self.kafka_transaction_max_delay,
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
            ledger: self.ledger != "off",
        };
        let config = StreamConfig {
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
            sync_sequences: self.sync_sequences.0,
            fence_target_roles: self.fence_target_roles,
            binary_auto,
        };
        config.validate()?;
        Ok(config)
    }
}

impl SourceArgs {
    pub(crate) fn configs(self) -> anyhow::Result<(SourceConfig, AssemblerConfig)> {
        let conninfo: ConnInfo = self
            .source
            .parse()
            .context("invalid --source connection string")?;
        let mut source = SourceConfig::new(conninfo, self.slot, self.publication);
        source.start_lsn = self.start_lsn;
        source.streaming = self.streaming;
        // auto is decided by teal stream at each connection (text for tail).
        let binary = matches!(self.binary.as_str(), "on" | "true");
        source.binary = binary;
        source.messages = !self.no_messages;
        source.status_interval = self.status_interval;
        source.reconnect_max_delay = self.reconnect_max_delay;
        source.replication_timeout = self.replication_timeout.0;
        if binary && !self.mask.mask.is_empty() {
            return Err(config::ConfigError {
                flag: "--binary",
                reason: "masking needs pgoutput's text format: leave --binary off with --mask"
                    .into(),
            }
            .into());
        }
        let assembler = AssemblerConfig {
            max_memory: self.max_memory,
            spill_dir: self.spill_dir.unwrap_or_else(std::env::temp_dir),
            tables: config::TableSelection {
                include: self.tables,
                exclude: self.exclude_tables,
            },
            skip_origins: self.skip_origins,
            own_schema: None,
            mask: self.mask.config()?,
        };
        source.validate()?;
        assembler.validate()?;
        Ok((source, assembler))
    }
}

/// Loads `--config FILE` (or `TEAL_CONFIG`) into the environment variables
/// of the flags it names, unless set already: flag > environment > file.
pub(crate) fn load_config_file() -> Result<(), String> {
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
    let mut flags: Vec<teal::config::FileFlag> = Vec::new();
    let mut add = |cmd: &clap::Command| {
        for arg in cmd.get_arguments() {
            if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env())
                && long != "config"
            {
                flags.push(teal::config::FileFlag {
                    long: long.to_owned(),
                    env: env.to_string_lossy().into_owned(),
                    delimiter: arg.get_value_delimiter().unwrap_or('\n'),
                });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka_drop(extra: &[&str]) -> Option<Duration> {
        let mut args = vec![
            "teal",
            "stream",
            "--source",
            "postgresql://teal@blue.example/app",
            "--target",
            "postgresql://teal@green.example/app",
            "--slot",
            "teal_slot",
            "--publication",
            "teal_pub",
            "--kafka-brokers",
            "kafka.example:9092",
        ];
        args.extend_from_slice(extra);
        let Command::Stream(stream) = Cli::try_parse_from(args).expect("parses").command else {
            panic!("teal stream");
        };
        stream
            .config()
            .expect("a config")
            .kafka
            .expect("Kafka on")
            .drop_on_wal_risk
    }

    #[test]
    fn kafka_drop_on_wal_risk_is_off_ten_minutes_or_the_eta_given() {
        assert_eq!(kafka_drop(&[]), None);
        assert_eq!(
            kafka_drop(&["--kafka-drop-on-wal-risk"]),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            kafka_drop(&["--kafka-drop-on-wal-risk", "90s"]),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            kafka_drop(&["--kafka-drop-on-wal-risk=off", "--kafka-exactly-once"]),
            None
        );
    }
}
