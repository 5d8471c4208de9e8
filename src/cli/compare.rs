//! `teal verify` and `teal repair`: the flags they share (both sides, the
//! slot, the publications, teal's schema) and their own.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use teal::config::TableSelection;
use teal::ops::verify::VerifyConfig;
use teal::store::Store;

/// `--chunk-rows`' default.
const DEFAULT_CHUNK_ROWS: i64 = 100_000;

/// Blue, green and the stream both commands work with.
#[derive(Args)]
pub(crate) struct CompareArgs {
    /// Blue: libpq URL or key=value string.
    #[arg(long, env = "TEAL_SOURCE_URL", hide_env_values = true)]
    pub(crate) source: String,

    /// Green: libpq URL or key=value string.
    #[arg(long, env = "TEAL_TARGET_URL", hide_env_values = true)]
    pub(crate) target: String,

    /// The stream's slot on blue.
    #[arg(long, env = "TEAL_SLOT")]
    pub(crate) slot: String,

    /// Publication(s) whose tables are compared, comma-separated.
    #[arg(long, env = "TEAL_PUBLICATION", value_delimiter = ',', required = true)]
    pub(crate) publication: Vec<String>,

    /// teal's schema on green (where the running stream's state is).
    #[arg(long, env = "TEAL_SCHEMA", default_value = Store::DEFAULT_SCHEMA)]
    pub(crate) schema: String,
}

impl CompareArgs {
    /// A comparison of every published table, no invariant, one worker.
    pub(crate) fn config(self) -> anyhow::Result<VerifyConfig> {
        Ok(VerifyConfig {
            source: self.source.parse().context("invalid --source")?,
            target: self.target.parse().context("invalid --target")?,
            slot: self.slot,
            publications: self.publication,
            tables: TableSelection::default(),
            schema: self.schema,
            invariants: Vec::new(),
            show_values: false,
            workers: 1,
            chunk_rows: DEFAULT_CHUNK_ROWS,
            mask: None,
        })
    }
}

/// `--tables` / `--exclude-tables` of the commands that compare or switch.
#[derive(Args)]
pub(crate) struct TableArgs {
    /// Only these published tables (schema.table, or table in any schema).
    #[arg(long, env = "TEAL_TABLES", value_delimiter = ',')]
    pub(crate) tables: Vec<String>,

    /// Not these tables.
    #[arg(long, env = "TEAL_EXCLUDE_TABLES", value_delimiter = ',')]
    pub(crate) exclude_tables: Vec<String>,
}

impl TableArgs {
    /// The selection, checked.
    pub(crate) fn selection(self) -> anyhow::Result<TableSelection> {
        let selection = TableSelection {
            include: self.tables,
            exclude: self.exclude_tables,
        };
        selection.validate()?;
        Ok(selection)
    }
}

#[derive(Args)]
pub(crate) struct RepairArgs {
    #[command(flatten)]
    pub(crate) sides: CompareArgs,

    /// The JSON report of teal verify (--report FILE).
    #[arg(long)]
    pub(crate) report: PathBuf,

    /// Say what would be done, change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// text (for people) or json (for programs) on stdout.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub(crate) format: String,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) sides: CompareArgs,

    #[command(flatten)]
    pub(crate) tables: TableArgs,

    /// The stream's masks: masked tables are compared as blue's masked rows.
    #[command(flatten)]
    pub(crate) mask: super::MaskArgs,

    /// text (for people) or json (for programs) on stdout.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub(crate) format: String,

    /// Also write the JSON report to this file.
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,

    /// NAME=SQL, repeatable: a query of one value run on both sides at the
    /// verified point; verify fails unless both give the same true result
    /// (e.g. ledger_balanced=SELECT sum(amount) = 0 FROM ledger).
    #[arg(long = "invariant", value_parser = parse_invariant)]
    pub(crate) invariants: Vec<(String, String)>,

    /// Put the differing rows' values in the report (off by default:
    /// production rows are often personal data).
    #[arg(long)]
    pub(crate) show_values: bool,

    /// Tables compared at once (each uses a session on blue and on green).
    #[arg(long, env = "TEAL_VERIFY_WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) workers: u16,

    /// Rows per chunk when a table's sums differ: differing chunks' rows
    /// are compared one by one, a chunk at a time in memory.
    #[arg(long, default_value_t = DEFAULT_CHUNK_ROWS, value_parser = clap::value_parser!(i64).range(100..=100_000_000))]
    pub(crate) chunk_rows: i64,

    /// Serve /metrics (teal_verify_*) here while verifying.
    #[arg(long, env = "TEAL_VERIFY_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,

    /// Bearer token required for /metrics.
    #[arg(long, env = "TEAL_METRICS_TOKEN", hide_env_values = true, value_parser = super::parse_secret)]
    pub(crate) metrics_token: Option<teal::config::Secret>,
}

impl VerifyArgs {
    /// The comparison these flags ask for.
    pub(crate) fn config(self) -> anyhow::Result<VerifyConfig> {
        let mut config = self.sides.config()?;
        config.tables = self.tables.selection()?;
        config.invariants = self.invariants;
        config.show_values = self.show_values;
        config.workers = usize::from(self.workers);
        config.chunk_rows = self.chunk_rows;
        config.mask = self.mask.config()?;
        Ok(config)
    }
}

pub(super) fn parse_invariant(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, sql)) if !name.trim().is_empty() && !sql.trim().is_empty() => {
            Ok((name.trim().to_owned(), sql.trim().to_owned()))
        }
        _ => Err("expected NAME=SQL (a name, '=', then a query of one value)".into()),
    }
}
