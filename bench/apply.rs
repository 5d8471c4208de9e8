//! teal vs PostgreSQL's built-in subscriber, same machine, same run.
//!
//! Workloads (sizes scale with `--scale`, default 1.0):
//! - W1: 1,000,000 rows inserted in 1,000-row transactions;
//! - W2: pgbench tpcb-like, 4 clients, 60 s (lag sampled every 250 ms);
//! - W3: one 2,000,000-row transaction;
//! - W4: 200,000 updates (1,000 per transaction) of rows with an 8 kB TOASTed
//!   column the update does not touch.
//!
//! Each is measured "backlog" (both slots created before the workload, the
//! workload run once, then native and teal drain it one after the other into
//! their own green: pure apply rate on identical input) and "live" (the
//! subscriber runs during the workload). Reported per system: rows/s, the
//! ratio teal/native, subscriber-side CPU microseconds per row (native: the
//! apply worker; teal: the teal process plus its green sessions; from
//! /proc/<pid>/stat), teal's peak resident memory, and for W2 the replay lag
//! p50/p99 (blue's pg_stat_replication) and the drain time after pgbench stops.
//!
//! W2 live also prints each lag sample above 200 ms with its time since the
//! workload started (stderr), to tell a cold start from steady-state stalls.
//!
//! Run: `cargo bench --bench apply -- [--runs 3] [--scale 1.0] [--workloads w1,w2,w3,w4] [--modes backlog,live] [--teal-arg --binary]...`
//! (masking cost: `TEAL_MASK_KEY=... cargo bench --bench apply -- --workloads w1 --teal-arg --mask=public.t.memo=hash`)
//! A JSON report is written to target/bench-apply.json.

mod cluster;
mod stats;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, Options, PgBin};
use tokio_postgres::Client;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Workload {
    W1,
    W2,
    W3,
    W4,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Backlog,
    Live,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum System {
    Native,
    Teal,
}

#[derive(Clone, Debug, Default)]
struct Sample {
    rows: u64,
    seconds: f64,
    cpu_us: f64,
    teal_rss_mb: f64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    drain_ms: f64,
    /// Blue's walsender for this subscriber (not subscriber-side; shown for context).
    walsender_us: f64,
    /// The teal process alone (the rest of `cpu_us` is its green sessions).
    teal_process_us: f64,
    /// The walsender's voluntary and involuntary context switches.
    walsender_switches: (u64, u64),
}

impl Sample {
    fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.seconds
    }
    fn cpu_us_per_row(&self) -> f64 {
        self.cpu_us / self.rows as f64
    }
    fn walsender_us_per_row(&self) -> f64 {
        self.walsender_us / self.rows as f64
    }
}

/// Extra `teal stream` arguments from `--teal-arg` (set once in main).
static TEAL_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

struct Args {
    runs: usize,
    scale: f64,
    workloads: Vec<Workload>,
    modes: Vec<Mode>,
    /// Extra arguments for `teal stream` (`--teal-arg --binary`).
    teal_args: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        runs: 3,
        scale: 1.0,
        workloads: vec![Workload::W1, Workload::W2, Workload::W3, Workload::W4],
        modes: vec![Mode::Backlog, Mode::Live],
        teal_args: Vec::new(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--runs" => args.runs = value.parse().expect("--runs N"),
            "--teal-arg" => args.teal_args.push(value.clone()),
            "--scale" => args.scale = value.parse().expect("--scale F"),
            "--workloads" => {
                args.workloads = value
                    .split(',')
                    .map(|w| match w {
                        "w1" => Workload::W1,
                        "w2" => Workload::W2,
                        "w3" => Workload::W3,
                        "w4" => Workload::W4,
                        other => panic!("unknown workload {other}"),
                    })
                    .collect()
            }
            "--modes" => {
                args.modes = value
                    .split(',')
                    .map(|m| match m {
                        "backlog" => Mode::Backlog,
                        "live" => Mode::Live,
                        other => panic!("unknown mode {other}"),
                    })
                    .collect()
            }
            // cargo bench passes --bench; ignore it and anything unknown.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    args
}

/// A process's (voluntary, involuntary) context switches so far.
fn context_switches(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    )
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn schema(w: Workload) -> &'static str {
    match w {
        Workload::W1 | Workload::W3 => {
            "CREATE TABLE t (id bigint PRIMARY KEY, account int NOT NULL, amount numeric(14,2) NOT NULL, \
             memo text, at timestamptz NOT NULL DEFAULT '2026-01-01')"
        }
        Workload::W4 => {
            "CREATE TABLE t (id bigint PRIMARY KEY, counter int NOT NULL, doc text NOT NULL); \
             ALTER TABLE t ALTER COLUMN doc SET STORAGE EXTERNAL"
        }
        Workload::W2 => "",
    }
}

/// Rows preloaded identically on blue and every green before replication starts.
fn preload(w: Workload, scale: f64) -> Option<String> {
    match w {
        Workload::W4 => Some(format!(
            "INSERT INTO t SELECT i, 0, repeat(md5(i::text), 256) FROM generate_series(1, {}) i",
            (200_000.0 * scale) as u64
        )),
        _ => None,
    }
}

struct Env {
    blue: Cluster,
    greens: BTreeMap<System, Cluster>,
    b: Client,
    bin: PgBin,
    scale: f64,
}

async fn pgbench_init(bin: &PgBin, cluster: &Cluster, scale: u32) {
    let out = Command::new(bin.dir.join("pgbench"))
        .args([
            "-i",
            "-q",
            "-n",
            "-s",
            &scale.to_string(),
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(cluster.port.to_string())
        .args(["-U", "postgres", "postgres"])
        // The throwaway clusters take SCRAM passwords over TCP.
        .env("PGPASSWORD", cluster.password())
        .output()
        .expect("pgbench runs");
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CPU so far (microseconds) of the server processes `pids_sql` lists.
async fn backend_cpu_us(client: &Client, pids_sql: &str) -> f64 {
    let rows = client.query(pids_sql, &[]).await.unwrap();
    rows.iter()
        .map(|r| stats::cpu_us(r.get::<_, i32>(0) as u32))
        .sum()
}

impl Env {
    async fn start(bin: &PgBin, w: Workload, systems: &[System], scale: f64) -> Env {
        let blue = Cluster::start_with(
            bin,
            Options {
                settings: vec![
                    ("max_wal_size".into(), "'4GB'".into()),
                    ("checkpoint_timeout".into(), "'30min'".into()),
                ],
                ..Options::default()
            },
        );
        let mut greens = BTreeMap::new();
        for s in systems {
            greens.insert(
                *s,
                Cluster::start_with(
                    bin,
                    Options {
                        settings: vec![
                            ("max_wal_size".into(), "'4GB'".into()),
                            ("checkpoint_timeout".into(), "'30min'".into()),
                            ("max_logical_replication_workers".into(), "4".into()),
                        ],
                        ..Options::default()
                    },
                ),
            );
        }
        let b = blue.client().await;
        if w == Workload::W2 {
            pgbench_init(bin, &blue, 10).await;
            for g in greens.values() {
                pgbench_init(bin, g, 10).await;
            }
            b.batch_execute(
                "CREATE PUBLICATION p FOR TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history",
            )
            .await
            .unwrap();
        } else {
            b.batch_execute(schema(w)).await.unwrap();
            b.batch_execute("CREATE PUBLICATION p FOR TABLE t")
                .await
                .unwrap();
            for g in greens.values() {
                g.client().await.batch_execute(schema(w)).await.unwrap();
            }
            if let Some(sql) = preload(w, scale) {
                b.batch_execute(&sql).await.unwrap();
                for g in greens.values() {
                    g.client().await.batch_execute(&sql).await.unwrap();
                }
            }
        }
        b.batch_execute("CHECKPOINT").await.unwrap();
        Env {
            blue,
            greens,
            b,
            bin: bin.clone(),
            scale,
        }
    }

    fn blue_url(&self) -> String {
        // libpq's form, for CREATE SUBSCRIPTION ... CONNECTION.
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres password={}",
            self.blue.port,
            self.blue.password()
        )
    }

    async fn create_slot(&self, name: &str) {
        self.b
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&name],
            )
            .await
            .unwrap();
    }

    /// Runs the workload on blue; returns the rows changed.
    async fn workload(&self, w: Workload) -> u64 {
        let scale = self.scale;
        match w {
            Workload::W1 => {
                let txns = (1000.0 * scale) as u64;
                for t in 0..txns {
                    let first = t * 1000 + 1;
                    self.b
                        .batch_execute(&format!(
                            "INSERT INTO t (id, account, amount, memo) SELECT i, i % 9973, (i % 100000) / 100.0, \
                             'transfer ' || i || ' settlement batch ' || (i / 1000) FROM generate_series({first}, {}) i",
                            first + 999
                        ))
                        .await
                        .unwrap();
                }
                txns * 1000
            }
            Workload::W3 => {
                let rows = (2_000_000.0 * scale) as u64;
                self.b
                    .batch_execute(&format!(
                        "INSERT INTO t (id, account, amount, memo) SELECT i, i % 9973, (i % 100000) / 100.0, \
                         'transfer ' || i || ' settlement batch ' || (i / 1000) FROM generate_series(1, {rows}) i"
                    ))
                    .await
                    .unwrap();
                rows
            }
            Workload::W4 => {
                let rows = (200_000.0 * scale) as u64;
                for first in (1..=rows).step_by(1000) {
                    self.b
                        .batch_execute(&format!(
                            "UPDATE t SET counter = counter + 1 WHERE id BETWEEN {first} AND {}",
                            first + 999
                        ))
                        .await
                        .unwrap();
                }
                rows
            }
            Workload::W2 => {
                let seconds = (60.0 * scale).max(5.0) as u64;
                let out = tokio::task::spawn_blocking({
                    let pgbench = self.bin.dir.join("pgbench");
                    let port = self.blue.port;
                    let password = self.blue.password().to_owned();
                    move || {
                        Command::new(pgbench)
                            .args([
                                "-n",
                                "-c",
                                "4",
                                "-j",
                                "2",
                                "-T",
                                &seconds.to_string(),
                                "-h",
                                "127.0.0.1",
                                "-p",
                            ])
                            .arg(port.to_string())
                            .args(["-U", "postgres", "postgres"])
                            .env("PGPASSWORD", &password)
                            .output()
                            .expect("pgbench runs")
                    }
                })
                .await
                .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                let txns: u64 = text
                    .lines()
                    .find(|l| l.starts_with("number of transactions actually processed"))
                    .and_then(|l| l.split(':').nth(1))
                    .and_then(|v| v.split('/').next())
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("pgbench output: {text}"));
                // tpcb-like: three updates and one insert per transaction.
                txns * 4
            }
        }
    }

    async fn blue_lsn(&self) -> String {
        self.b
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until `slot` confirmed `target`.
    async fn wait_confirmed(&self, slot: &str, target: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self
                .b
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn >= $2::text::pg_lsn",
                    &[&slot, &target],
                )
                .await
                .unwrap()
                .is_some();
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{slot} did not catch up within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A running subscriber.
enum Subscriber {
    Native { green: Client },
    Teal { child: Child, green: Client },
}

impl Subscriber {
    async fn start(env: &Env, system: System, create_slot: bool) -> Subscriber {
        let green_cluster = &env.greens[&system];
        let green = green_cluster.client().await;
        match system {
            System::Native => {
                let slot = if create_slot { "true" } else { "false" };
                green
                    .batch_execute(&format!(
                        "CREATE SUBSCRIPTION native CONNECTION '{}' PUBLICATION p \
                         WITH (copy_data = false, create_slot = {slot}, slot_name = 'native', streaming = on)",
                        env.blue_url()
                    ))
                    .await
                    .unwrap();
                Subscriber::Native { green }
            }
            System::Teal => {
                // With `TEAL_BENCH_HEAPTRACK=FILE`, teal runs under heaptrack
                // (its peak heap and the allocations behind it in FILE; the
                // RSS printed is then heaptrack's wrapper's, not teal's).
                let heaptrack = std::env::var_os("TEAL_BENCH_HEAPTRACK");
                let mut cmd = match &heaptrack {
                    Some(file) => {
                        let mut c = Command::new("heaptrack");
                        c.arg("-o").arg(file).arg(env!("CARGO_BIN_EXE_teal"));
                        c
                    }
                    None => Command::new(env!("CARGO_BIN_EXE_teal")),
                };
                cmd.env_clear()
                    // glibc's malloc tunables (MALLOC_ARENA_MAX, ...) pass
                    // through, for memory experiments; PATH for heaptrack.
                    .envs(std::env::vars().filter(|(k, _)| {
                        k.starts_with("MALLOC_") || (heaptrack.is_some() && k == "PATH")
                    }))
                    .args([
                        "stream",
                        "--slot",
                        "teal",
                        "--publication",
                        "p",
                        "--log",
                        "warn",
                        // Metrics served as in production, on any free port.
                        "--metrics-addr",
                        "127.0.0.1:0",
                    ])
                    .args([
                        "--source",
                        &env.blue.cli_url(),
                        "--target",
                        &green_cluster.cli_url(),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit());
                if !create_slot {
                    cmd.arg("--no-create-slot");
                }
                cmd.args(TEAL_ARGS.get().into_iter().flatten());
                // The mask key of `--teal-arg --mask=...` (never a flag).
                if let Ok(key) = std::env::var("TEAL_MASK_KEY") {
                    cmd.env("TEAL_MASK_KEY", key);
                }
                let child = cmd.spawn().expect("teal runs");
                Subscriber::Teal { child, green }
            }
        }
    }

    /// Subscriber-side CPU so far (microseconds).
    async fn cpu_us(&self) -> f64 {
        match self {
            Subscriber::Native { green } => {
                backend_cpu_us(
                    green,
                    "SELECT pid FROM pg_stat_subscription WHERE pid IS NOT NULL",
                )
                .await
            }
            Subscriber::Teal { child, green } => {
                stats::cpu_us(child.id())
                    + backend_cpu_us(
                        green,
                        "SELECT pid FROM pg_stat_activity WHERE application_name = 'teal apply'",
                    )
                    .await
            }
        }
    }

    fn process_cpu_us(&self) -> f64 {
        match self {
            Subscriber::Teal { child, .. } => stats::cpu_us(child.id()),
            Subscriber::Native { .. } => 0.0,
        }
    }

    fn rss_mb(&self) -> f64 {
        match self {
            Subscriber::Teal { child, .. } => rss_mb(child.id()),
            Subscriber::Native { .. } => 0.0,
        }
    }

    fn slot(&self) -> &'static str {
        match self {
            Subscriber::Native { .. } => "native",
            Subscriber::Teal { .. } => "teal",
        }
    }

    async fn stop(self) {
        match self {
            Subscriber::Native { green } => {
                let _ = green
                    .batch_execute("ALTER SUBSCRIPTION native DISABLE")
                    .await;
            }
            Subscriber::Teal { mut child, .. } => {
                // Under heaptrack, teal is the wrapper's child: stop it
                // first, the wrapper then writes its report and ends.
                if std::env::var_os("TEAL_BENCH_HEAPTRACK").is_some() {
                    let _ = Command::new("pkill")
                        .args(["-TERM", "-x", "teal", "-P", &child.id().to_string()])
                        .status();
                } else {
                    // SAFETY: kill with a valid pid and signal number.
                    unsafe {
                        libc::kill(child.id() as i32, libc::SIGTERM);
                    }
                }
                let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            }
        }
    }
}

/// Waits until the subscriber applies and confirms `target`, sampling CPU and memory.
async fn drain(
    env: &Env,
    sub: &Subscriber,
    target: &str,
    cpu_start: f64,
    started: Instant,
    rows: u64,
) -> Sample {
    let mut peak_rss: f64 = 0.0;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        peak_rss = peak_rss.max(sub.rss_mb());
        let done = env
            .b
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn >= $2::text::pg_lsn",
                &[&sub.slot(), &target],
            )
            .await
            .unwrap()
            .is_some();
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "{} did not catch up", sub.slot());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = sub.cpu_us().await - cpu_start;
    let walsender: Option<i32> = env
        .b
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&sub.slot()],
        )
        .await
        .unwrap()
        .get(0);
    Sample {
        rows,
        seconds,
        cpu_us: cpu,
        teal_rss_mb: peak_rss,
        walsender_us: walsender.map_or(0.0, |p| stats::cpu_us(p as u32)),
        walsender_switches: walsender.map_or((0, 0), |p| context_switches(p as u32)),
        teal_process_us: sub.process_cpu_us(),
        ..Sample::default()
    }
}

async fn backlog(bin: &PgBin, w: Workload, scale: f64) -> BTreeMap<System, Sample> {
    let env = Env::start(bin, w, &[System::Native, System::Teal], scale).await;
    env.create_slot("native").await;
    env.create_slot("teal").await;
    let rows = env.workload(w).await;
    let target = env.blue_lsn().await;
    let mut out = BTreeMap::new();
    for system in [System::Native, System::Teal] {
        let started = Instant::now();
        let sub = Subscriber::start(&env, system, false).await;
        let cpu_start = sub.cpu_us().await;
        let strace = match (
            std::env::var_os("TEAL_BENCH_STRACE"),
            std::env::var_os("TEAL_BENCH_PERF"),
        ) {
            (Some(_), _) => strace_walsender(&env, sub.slot(), system, false).await,
            (None, Some(_)) => strace_walsender(&env, sub.slot(), system, true).await,
            (None, None) => None,
        };
        let sample = drain(&env, &sub, &target, cpu_start, started, rows).await;
        if let Some((mut child, file)) = strace {
            // SAFETY: kill with a valid pid and signal number.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            eprintln!("walsender syscalls serving {system:?} ({rows} rows): {file}");
        }
        sub.stop().await;
        out.insert(system, sample);
    }
    out
}

/// With `TEAL_BENCH_STRACE=1`: `strace -c` of the walsender serving
/// `slot` (syscall counts per row; its timings are distorted by ptrace);
/// with `TEAL_BENCH_PERF=1` (`perf`): `perf record -g` of it. Written to a
/// file named after `system`.
async fn strace_walsender(
    env: &Env,
    slot: &str,
    system: System,
    perf: bool,
) -> Option<(std::process::Child, String)> {
    for _ in 0..500 {
        let pid: Option<i32> = env
            .b
            .query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .ok()?
            .get(0);
        if let Some(pid) = pid {
            let (file, child) = if perf {
                let file = format!("target/perf-walsender-{system:?}.data");
                let child = Command::new("perf")
                    .args(["record", "-g", "-q", "-o", &file, "-p", &pid.to_string()])
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()?;
                (file, child)
            } else {
                let file = format!("target/strace-walsender-{system:?}.txt");
                let child = Command::new("strace")
                    .args(["-c", "-q", "-o", &file, "-p", &pid.to_string()])
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()?;
                (file, child)
            };
            return Some((child, file));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

async fn live(bin: &PgBin, w: Workload, scale: f64, system: System) -> Sample {
    let env = Env::start(bin, w, &[system], scale).await;
    let sub = Subscriber::start(&env, system, true).await;
    env.wait_confirmed(sub.slot(), &env.blue_lsn().await, Duration::from_secs(60))
        .await;
    let cpu_start = sub.cpu_us().await;
    let started = Instant::now();
    let sampling = w == Workload::W2;
    let lags = std::sync::Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let peak = std::sync::Arc::new(std::sync::Mutex::new(0.0f64));
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (lags, peak, stop) = (lags.clone(), peak.clone(), stop.clone());
        let blue = env.blue.client().await;
        let slot = sub.slot();
        let pid = match &sub {
            Subscriber::Teal { child, .. } => Some(child.id()),
            Subscriber::Native { .. } => None,
        };
        let t0 = Instant::now();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Some(pid) = pid {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(rss_mb(pid));
                }
                if sampling {
                    let row = blue
                        .query_opt(
                            "SELECT COALESCE(extract(epoch FROM replay_lag) * 1000, 0)::float8 \
                             FROM pg_stat_replication WHERE application_name IN ($1, 'teal')",
                            &[&slot],
                        )
                        .await
                        .ok()
                        .flatten();
                    if let Some(r) = row {
                        let lag: f64 = r.get(0);
                        if lag > 200.0 {
                            eprintln!(
                                "  {} replay lag {lag:.0} ms at {:.2} s",
                                if pid.is_some() { "teal" } else { "native" },
                                t0.elapsed().as_secs_f64()
                            );
                        }
                        lags.lock().unwrap().push(lag);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let rows = env.workload(w).await;
    let workload_end = Instant::now();
    let target = env.blue_lsn().await;
    let mut sample = drain(&env, &sub, &target, cpu_start, started, rows).await;
    sample.drain_ms = workload_end.elapsed().as_secs_f64() * 1000.0;
    stop.cancel();
    let _ = sampler.await;
    sample.teal_rss_mb = sample.teal_rss_mb.max(*peak.lock().unwrap());
    let mut l = lags.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    if !l.is_empty() {
        sample.lag_p50_ms = l[l.len() / 2];
        sample.lag_p99_ms = l[((l.len() as f64 * 0.99) as usize).min(l.len() - 1)];
    }
    sub.stop().await;
    sample
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    TEAL_ARGS.set(args.teal_args.clone()).expect("set once");
    let bin = cluster::default_bin();
    println!(
        "teal vs built-in subscriber: PostgreSQL {}, scale {}, {} runs",
        bin.version, args.scale, args.runs
    );
    let mut results: BTreeMap<(Workload, Mode, System), Vec<Sample>> = BTreeMap::new();
    for run in 1..=args.runs {
        for &w in &args.workloads {
            for &mode in &args.modes {
                match mode {
                    Mode::Backlog => {
                        for (system, s) in backlog(&bin, w, args.scale).await {
                            eprintln!(
                                "run {run} {w:?} backlog {system:?}: {:.0} rows/s, {:.2} us/row (teal process {:.2}), walsender {:.2} us/row, {} + {} context switches",
                                s.rows_per_s(),
                                s.cpu_us_per_row(),
                                s.teal_process_us / s.rows as f64,
                                s.walsender_us_per_row(),
                                s.walsender_switches.0,
                                s.walsender_switches.1
                            );
                            results.entry((w, mode, system)).or_default().push(s);
                        }
                    }
                    Mode::Live => {
                        for system in [System::Native, System::Teal] {
                            let s = live(&bin, w, args.scale, system).await;
                            eprintln!(
                                "run {run} {w:?} live {system:?}: {:.0} rows/s, {:.2} us/row, walsender {:.2} us/row",
                                s.rows_per_s(),
                                s.cpu_us_per_row(),
                                s.walsender_us_per_row()
                            );
                            results.entry((w, mode, system)).or_default().push(s);
                        }
                    }
                }
            }
        }
    }
    println!();
    println!(
        "{:<4} {:<8} {:>12} {:>12} {:>7} {:>10} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "",
        "mode",
        "native r/s",
        "teal r/s",
        "ratio",
        "native us",
        "teal us",
        "cpu x",
        "teal MiB",
        "p50 ms",
        "p99 ms",
        "drain ms"
    );
    let mut report = Vec::new();
    for &w in &args.workloads {
        for &mode in &args.modes {
            let med = |system, f: fn(&Sample) -> f64| {
                let mut xs: Vec<f64> = results
                    .get(&(w, mode, system))
                    .map_or(Vec::new(), |v| v.iter().map(f).collect());
                stats::median(&mut xs)
            };
            let (n_rate, t_rate) = (
                med(System::Native, Sample::rows_per_s),
                med(System::Teal, Sample::rows_per_s),
            );
            let (n_cpu, t_cpu) = (
                med(System::Native, Sample::cpu_us_per_row),
                med(System::Teal, Sample::cpu_us_per_row),
            );
            let rss = med(System::Teal, |s| s.teal_rss_mb);
            let (n_ws, t_ws) = (
                med(System::Native, Sample::walsender_us_per_row),
                med(System::Teal, Sample::walsender_us_per_row),
            );
            let (p50, p99, drain) = (
                med(System::Teal, |s| s.lag_p50_ms),
                med(System::Teal, |s| s.lag_p99_ms),
                med(System::Teal, |s| s.drain_ms),
            );
            let (np50, np99) = (
                med(System::Native, |s| s.lag_p50_ms),
                med(System::Native, |s| s.lag_p99_ms),
            );
            println!(
                "{:<4} {:<8} {:>12.0} {:>12.0} {:>7.2} {:>10.2} {:>10.2} {:>7.2} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
                format!("{w:?}"),
                format!("{mode:?}").to_lowercase(),
                n_rate,
                t_rate,
                t_rate / n_rate,
                n_cpu,
                t_cpu,
                t_cpu / n_cpu,
                rss,
                p50,
                p99,
                drain
            );
            report.push(serde_json::json!({
                "workload": format!("{w:?}"), "mode": format!("{mode:?}").to_lowercase(),
                "native_rows_per_s": n_rate, "teal_rows_per_s": t_rate, "ratio": t_rate / n_rate,
                "native_cpu_us_per_row": n_cpu, "teal_cpu_us_per_row": t_cpu,
                "teal_peak_rss_mib": rss,
                "native_walsender_us_per_row": n_ws, "teal_walsender_us_per_row": t_ws,
                "teal_lag_p50_ms": p50, "teal_lag_p99_ms": p99, "native_lag_p50_ms": np50, "native_lag_p99_ms": np99,
                "teal_drain_ms": drain,
                "samples": results.get(&(w, mode, System::Teal)).map_or(0, Vec::len),
            }));
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-apply.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nreport: {}", path.display());
}
