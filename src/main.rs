//! The `teal` command: argument parsing, logging, signals and exit codes.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use teal::config::ConnInfo;
use teal::monitor::Monitor;
use teal::ops::demo::{self, DemoConfig};
use teal::ops::status::{self, StatusConfig};
use teal::ops::stream;
use teal::ops::sync::{self, HolderCommand, SyncConfig};
use teal::ops::tail;

use cli::{Cli, Command, load_config_file};

/// A command that said what it had to and ends with this exit status
/// (`teal verify`: 1 differences, 2 could not verify).
#[derive(Debug)]
struct ExitStatus(u8);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}

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
        Command::Status(_)
        | Command::Demo(_)
        | Command::Verify(_)
        | Command::Repair(_)
        | Command::Cutover(_)
        | Command::Rollback(_)
        | Command::Audit(_)
        | Command::Ddl(_) => Some("stopping"),
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
        Command::Verify(args) => {
            let (format, report_file) = (args.format.clone(), args.report.clone());
            let (metrics_addr, metrics_token) = (args.metrics_addr, args.metrics_token.clone());
            let config = args.config()?;
            let progress = std::sync::Arc::new(teal::progress::VerifyProgress::new());
            let stop = tokio_util::sync::CancellationToken::new();
            if let Some(addr) = metrics_addr {
                teal::http::serve_verify(
                    addr,
                    config.slot.clone(),
                    std::sync::Arc::clone(&progress),
                    metrics_token,
                    stop.clone(),
                )
                .await?;
            }
            let display = tokio::spawn({
                let (progress, stop) = (std::sync::Arc::clone(&progress), stop.clone());
                async move { teal::ops::verify::display::show(&progress, stop).await }
            });
            let result = teal::ops::verify::run(&config, &progress).await;
            stop.cancel();
            let _ = display.await;
            let report = match result {
                Ok(report) => report,
                Err(e) => {
                    eprintln!(
                        "teal: could not verify: {}",
                        teal::error::report(anyhow::Error::new(e).chain())
                    );
                    return Err(ExitStatus(2).into());
                }
            };
            let json = serde_json::to_string_pretty(&report).context("writing the report")?;
            if let Some(path) = &report_file {
                std::fs::write(path, format!("{json}\n"))
                    .with_context(|| format!("writing --report {}", path.display()))?;
            }
            if format == "json" {
                println!("{json}");
            } else {
                print!("{}", report.text());
            }
            match report.exit_status() {
                0 => {}
                code => return Err(ExitStatus(code).into()),
            }
        }
        Command::Cutover(args) | Command::Rollback(args) if args.abort => {
            let format = args.format.clone();
            let config = args.config()?;
            let report = teal::ops::cutover::abort(&config).await;
            switch_output(&report, &format)?;
        }
        Command::Cutover(args) => {
            let format = args.format.clone();
            let config = args.config()?;
            let report =
                teal::ops::cutover::run(&config, teal::ops::cutover::SwitchKind::Cutover).await;
            switch_output(&report, &format)?;
        }
        Command::Rollback(args) => {
            let format = args.format.clone();
            let config = args.config()?;
            let report =
                teal::ops::cutover::run(&config, teal::ops::cutover::SwitchKind::Rollback).await;
            switch_output(&report, &format)?;
        }
        Command::Ddl(cli::DdlArgs { command }) => match command {
            cli::DdlCommand::Install(args) => {
                let source: ConnInfo = args.source.parse().context("invalid --source")?;
                let publication = args
                    .publication
                    .context("teal ddl install needs --publication (the stream's)")?;
                let mut blue = teal::session::connect_plain(&source, "teal ddl").await?;
                teal::ops::ddl::install(&mut blue, &args.schema, &publication)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "installing the DDL trigger on blue: {}",
                            teal::error::describe_postgres(&e)
                        )
                    })?;
                println!(
                    "installed: event triggers {} on blue send DDL into the stream (publication {publication})",
                    teal::ops::ddl::TRIGGERS.join(", ")
                );
            }
            cli::DdlCommand::Uninstall(args) => {
                let source: ConnInfo = args.source.parse().context("invalid --source")?;
                let mut blue = teal::session::connect_plain(&source, "teal ddl").await?;
                teal::ops::ddl::uninstall(&mut blue, &args.schema)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "removing the DDL trigger from blue: {}",
                            teal::error::describe_postgres(&e)
                        )
                    })?;
                println!("uninstalled: blue's DDL no longer reaches the stream");
            }
            cli::DdlCommand::Resolve(args) => {
                let target: ConnInfo = args.target.parse().context("invalid --target")?;
                let mut green = teal::session::connect_plain(&target, "teal ddl").await?;
                let store = teal::store::Store::new(args.schema);
                teal::ops::ddl::resolve(&mut green, &store, &args.slot, args.lsn).await?;
                println!(
                    "recorded: the stream of slot {} skips the DDL at {}",
                    args.slot, args.lsn
                );
            }
        },
        Command::Audit(cli::AuditArgs {
            command: cli::AuditCommand::Verify(args),
        }) => {
            let target: ConnInfo = args.target.parse().context("invalid --target")?;
            let store = teal::store::Store::new(args.schema);
            let checked = async {
                let green = teal::session::connect_plain(&target, "teal audit").await?;
                Ok::<_, anyhow::Error>(
                    teal::apply::ledger::verify_chain(&green, &store, args.slot.as_deref()).await?,
                )
            }
            .await;
            let chains = match checked {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "teal: could not check the ledger: {}",
                        teal::error::report(e.chain())
                    );
                    return Err(ExitStatus(2).into());
                }
            };
            if args.format == "json" {
                println!("{}", serde_json::to_string_pretty(&chains)?);
            } else if chains.is_empty() {
                println!("no ledger rows");
            } else {
                for c in &chains {
                    match &c.broken {
                        None => println!(
                            "slot {}: {} rows, intact, head {}",
                            c.slot,
                            c.rows,
                            c.head.as_deref().unwrap_or("-")
                        ),
                        Some(why) => println!("slot {}: {} rows, BROKEN: {why}", c.slot, c.rows),
                    }
                }
            }
            if chains.iter().any(|c| c.broken.is_some()) {
                return Err(ExitStatus(1).into());
            }
        }
        Command::Repair(args) => {
            let config = args.sides.config()?;
            let text = std::fs::read_to_string(&args.report)
                .with_context(|| format!("reading --report {}", args.report.display()))?;
            let report: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("--report {} is not JSON", args.report.display()))?;
            let (keys, keyless) = teal::ops::verify::repair::keys_of(&report)
                .map_err(|e| anyhow::anyhow!("--report {}: {e}", args.report.display()))?;
            let done =
                match teal::ops::verify::repair::run(&config, &keys, keyless, args.dry_run).await {
                    Ok(done) => done,
                    Err(e) => {
                        eprintln!(
                            "teal: could not repair: {}",
                            teal::error::report(anyhow::Error::new(e).chain())
                        );
                        return Err(ExitStatus(2).into());
                    }
                };
            if args.format == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&done).context("writing the result")?
                );
            } else {
                let verb = if done.dry_run { "would be" } else { "" };
                println!(
                    "{} key(s) {verb} made equal to blue at LSN {}:",
                    done.keys.len(),
                    done.lsn
                );
                for k in &done.keys {
                    println!("  {} {} {}", k.action, k.table, k.key);
                }
                for t in &done.skipped_tables {
                    println!(
                        "  not repaired: {t} has no primary key (its differing rows have no key)"
                    );
                }
            }
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

fn main() -> ExitCode {
    if let Err(e) = load_config_file() {
        eprintln!("teal: {e}");
        return ExitCode::from(2);
    }
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The demo's own report is its output: below warnings, log lines
    // (migrations, origin, start position) would interleave with it.
    let log = match (&cli.command, matches.value_source("log")) {
        (Command::Demo(_), Some(clap::parser::ValueSource::DefaultValue)) => "warn",
        _ => cli.log.as_str(),
    };
    if let Err(e) = init_logging(&cli.log_format, log) {
        eprintln!("teal: {}", teal::error::report(e.chain()));
        return ExitCode::from(2);
    }
    let exposed = cli::secrets_on_command_line(&matches);
    if !exposed.is_empty() {
        tracing::warn!("{}", cli::command_line_secrets_warning(&exposed));
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
    let cli_json = cli.log_format == "json";
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ExitStatus>().is_some() => {
            ExitCode::from(e.downcast_ref::<ExitStatus>().map_or(1, |s| s.0))
        }
        Err(e) => {
            let message = teal::error::report(e.chain());
            let kind = e.chain().find_map(|c| {
                c.downcast_ref::<stream::StreamError>()
                    .map(stream::StreamError::kind)
                    .or_else(|| {
                        c.downcast_ref::<teal::pipeline::PipelineError>()
                            .map(teal::pipeline::PipelineError::kind)
                    })
            });
            let hint = kind.as_ref().and_then(|k| teal::error::policy(k).hint);
            // Once: as a JSON log event for machines, else as two plain
            // lines for people (the stages that stopped do not log it too).
            if cli_json {
                match hint {
                    Some(hint) => tracing::error!(error = %message, hint, "teal stopped"),
                    None => tracing::error!(error = %message, "teal stopped"),
                }
            } else {
                eprintln!("teal: {message}");
                if let Some(hint) = hint {
                    eprintln!("hint: {hint}");
                }
            }
            // A server never reached: status 2, as for a bad setting; a
            // lost slot: 3 (green needs a new copy).
            match kind {
                Some(teal::error::Kind::Unreachable) => ExitCode::from(2),
                Some(teal::error::Kind::SlotLost) => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// A switch's report on stdout (text or JSON) and its exit status.
fn switch_output(report: &teal::ops::cutover::SwitchReport, format: &str) -> anyhow::Result<()> {
    if format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(report).context("writing the report")?
        );
    } else {
        print!("{}", report.text());
    }
    match report.exit_status() {
        0 => Ok(()),
        code => Err(ExitStatus(code).into()),
    }
}
