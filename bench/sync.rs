//! Initial copy: `teal sync --copy-only` vs `pg_dump | pg_restore` vs the
//! built-in subscriber's `copy_data = true`, same tables, same machine,
//! same run; each into its own fresh green holding the schema only.
//!
//! Table set (sizes scale with `--gib`, default 1.0 = about 1 GiB of heap
//! and TOAST on blue; the 5 GiB class is `--gib 5`):
//! - `ledger`: narrow rows (bigint key, int, numeric, short text), 60%;
//! - `wide`: 16 mixed columns (timestamps, uuid, jsonb, floats), 20%;
//! - `docs`: 2 kB incompressible text per row, TOASTed, 10%;
//! - `items`: user enum and arrays, 5%;
//! - `events`: partitioned by month (4 partitions), 5%.
//!
//! Reported per method: seconds, MB/s (blue's heap + TOAST size of the
//! tables over the wall time) and rows/s, and teal's ratio to the faster of
//! the other two. Native gets as many table-sync workers as teal has copy
//! workers (`--workers`, default 4), pg_dump | pg_restore is one stream
//! (a pipe cannot run in parallel; `-j` needs a directory dump on disk).
//!
//! Run: `cargo bench --bench sync -- [--runs 3] [--gib 1.0] [--workers 4] [--methods teal,dump,native] [--teal-arg ARG]...`

mod cluster;
mod stats;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, Options, PgBin};
use tokio_postgres::Client;

const SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE ledger (id bigint PRIMARY KEY, account int NOT NULL, amount numeric(14,2) NOT NULL, memo text);
CREATE TABLE wide (id bigint PRIMARY KEY, a timestamptz, b timestamptz, c uuid, d jsonb, e float8, f float8,
                   g int, h int, i bigint, j text, k text, l boolean, m date, n numeric, o smallint);
CREATE TABLE docs (id int PRIMARY KEY, body text);
CREATE TABLE items (id int PRIMARY KEY, m mood, tags text[], scores int[]);
CREATE TABLE events (id bigint NOT NULL, at date NOT NULL, what text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE events_2 PARTITION OF events FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
CREATE TABLE events_3 PARTITION OF events FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
CREATE TABLE events_4 PARTITION OF events FOR VALUES FROM ('2026-04-01') TO ('2026-05-01');
";
const TABLES: [&str; 5] = ["ledger", "wide", "docs", "items", "events"];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Method {
    Teal,
    Dump,
    Native,
}

struct Args {
    runs: usize,
    gib: f64,
    workers: usize,
    methods: Vec<Method>,
    /// Extra arguments for `teal sync`.
    teal_args: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        runs: 1,
        gib: 1.0,
        workers: 4,
        methods: vec![Method::Teal, Method::Dump, Method::Native],
        teal_args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--runs" => args.runs = value().parse().expect("--runs N"),
            "--gib" => args.gib = value().parse().expect("--gib X"),
            "--workers" => args.workers = value().parse().expect("--workers N"),
            "--methods" => {
                args.methods = value()
                    .split(',')
                    .map(|m| match m {
                        "teal" => Method::Teal,
                        "dump" => Method::Dump,
                        "native" => Method::Native,
                        other => panic!("unknown method {other}"),
                    })
                    .collect()
            }
            "--teal-arg" => args.teal_args.push(value()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn settings(workers: usize) -> Options {
    Options {
        settings: vec![
            ("max_wal_size".into(), "'8GB'".into()),
            ("checkpoint_timeout".into(), "'30min'".into()),
            ("shared_buffers".into(), "'1GB'".into()),
            (
                "max_logical_replication_workers".into(),
                (workers + 4).to_string(),
            ),
            (
                "max_sync_workers_per_subscription".into(),
                workers.to_string(),
            ),
            ("max_wal_senders".into(), (workers + 10).to_string()),
            ("max_replication_slots".into(), (workers + 10).to_string()),
        ],
        ..Options::default()
    }
}

/// Fills blue: about `gib` GiB in all.
async fn fill(blue: &Cluster, b: &Client, gib: f64) -> u64 {
    // Rows per GiB of each table's share (measured heap+TOAST bytes per row:
    // ledger ~90, wide ~230, docs ~2100, items ~120, events ~60).
    let n = |share: f64, bytes_per_row: f64| {
        (gib * share * 1024.0 * 1024.0 * 1024.0 / bytes_per_row) as u64
    };
    let (ledger, wide, docs, items, events) = (
        n(0.6, 90.0),
        n(0.2, 230.0),
        n(0.1, 2100.0),
        n(0.05, 120.0),
        n(0.05, 60.0),
    );
    let statements = [
        format!(
            "INSERT INTO ledger SELECT i, i % 9973, (i % 100000) / 100.0, 'transfer ' || i || ' batch ' || (i / 1000) FROM generate_series(1, {ledger}) i"
        ),
        format!(
            "INSERT INTO wide SELECT i, now() - i * interval '1 s', now(), md5(i::text)::uuid, \
             jsonb_build_object('k', i, 'v', 'x' || i), i * 1.5, sqrt(i), i % 1000, i % 7, i * 3, 'j' || i, 'k', i % 2 = 0, \
             date '2020-01-01' + (i % 2000), i / 3.0, (i % 1000)::smallint FROM generate_series(1, {wide}) i"
        ),
        format!(
            "INSERT INTO docs SELECT i, (SELECT string_agg(md5(i::text || ':' || g), '') FROM generate_series(1, 64) g) \
             FROM generate_series(1, {docs}) i"
        ),
        format!(
            "INSERT INTO items SELECT i, (ARRAY['sad','ok','happy'])[1 + i % 3]::mood, ARRAY['t' || i, 'u'], ARRAY[i, -i, 0] \
             FROM generate_series(1, {items}) i"
        ),
        format!(
            "INSERT INTO events SELECT i, date '2026-01-01' + (i % 120), 'e' || i FROM generate_series(1, {events}) i"
        ),
    ];
    // In parallel, one session per table.
    let mut tasks = Vec::new();
    for sql in statements {
        let client = blue.client().await;
        tasks.push(tokio::spawn(async move {
            client.batch_execute(&sql).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    b.batch_execute("VACUUM ANALYZE").await.unwrap();
    b.batch_execute("CHECKPOINT").await.unwrap();
    ledger + wide + docs + items + events
}

/// Heap + TOAST bytes of the tables (partitions included).
async fn table_bytes(b: &Client) -> u64 {
    let v: i64 = b
        .query_one(
            "SELECT sum(pg_table_size(c.oid))::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    v as u64
}

async fn wait_for(client: &Client, sql: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if client.query_opt(sql, &[]).await.unwrap().is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {sql}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU seconds of this process's finished children so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// Copies blue's tables into a fresh green with `method`; returns seconds
/// and the CPU seconds of the client processes (teal; pg_dump + pg_restore).
async fn copy(bin: &PgBin, blue: &Cluster, method: Method, args: &Args) -> (f64, f64) {
    let workers = args.workers;
    let green = Cluster::start_with(bin, settings(workers));
    let g = green.client().await;
    g.batch_execute(SCHEMA).await.unwrap();
    g.batch_execute("CHECKPOINT").await.unwrap();
    // libpq URLs with the password, for pg_dump, pg_restore and CREATE
    // SUBSCRIPTION; teal's command line gets the password-file form.
    let (blue_url, green_url) = (blue.url(), green.url());
    let started = Instant::now();
    let cpu_before = children_cpu();
    match method {
        Method::Teal => {
            let status = Command::new(env!("CARGO_BIN_EXE_teal"))
                .args([
                    "sync",
                    "--copy-only",
                    "--slot",
                    "bench_teal",
                    "--publication",
                    "p",
                ])
                .args(["--source", &blue.cli_url(), "--target", &green.cli_url()])
                .args(["--copy-workers", &workers.to_string()])
                .args(["--metrics-addr", "off", "--heartbeat-interval", "off"])
                .args(&args.teal_args)
                .env("TEAL_LOG", "warn,teal::ops::sync::display=info")
                .stdout(Stdio::null())
                .status()
                .expect("teal sync runs");
            assert!(status.success(), "teal sync failed");
        }
        Method::Dump => {
            let mut dump = Command::new(bin.dir.join("pg_dump"))
                .args(["-Fc", "-Z", "0", "--data-only", "-d", &blue_url])
                .args(TABLES.iter().flat_map(|t| ["-t", t]))
                .args(["-t", "events_*"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("pg_dump runs");
            let restore = Command::new(bin.dir.join("pg_restore"))
                .args(["--data-only", "--disable-triggers", "-d", &green_url])
                .stdin(dump.stdout.take().unwrap())
                .status()
                .expect("pg_restore runs");
            assert!(
                dump.wait().unwrap().success() && restore.success(),
                "pg_dump | pg_restore failed"
            );
        }
        Method::Native => {
            g.batch_execute(&format!(
                "CREATE SUBSCRIPTION bench_native CONNECTION '{blue_url}' PUBLICATION p WITH (copy_data = true)"
            ))
            .await
            .unwrap();
            // Every table synchronized (state r = ready, s = synced).
            wait_for(
                &g,
                "SELECT 1 FROM pg_subscription_rel HAVING count(*) > 0 AND bool_and(srsubstate IN ('r', 's'))",
                Duration::from_secs(7200),
            )
            .await;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let client_cpu = children_cpu() - cpu_before;
    // Check: same row counts as blue.
    let b = blue.client().await;
    for t in TABLES {
        let bc: i64 = b
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .unwrap()
            .get(0);
        let gc: i64 = g
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            bc, gc,
            "{method:?}: {t} has {gc} rows on green, {bc} on blue"
        );
    }
    if method == Method::Native {
        g.batch_execute("ALTER SUBSCRIPTION bench_native DISABLE; ALTER SUBSCRIPTION bench_native SET (slot_name = NONE); DROP SUBSCRIPTION bench_native")
            .await
            .unwrap();
        // Its slot and any leftover table-sync slots on blue.
        b.batch_execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'pg_%' OR slot_name = 'bench_native'",
        )
        .await
        .unwrap();
    }
    if method == Method::Teal {
        b.batch_execute("SELECT pg_drop_replication_slot('bench_teal')")
            .await
            .unwrap();
    }
    (seconds, client_cpu)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let bin = cluster::default_bin();
    let blue = Cluster::start_with(&bin, settings(args.workers));
    let b = blue.client().await;
    b.batch_execute(SCHEMA).await.unwrap();
    b.batch_execute("CREATE PUBLICATION p FOR TABLE ledger, wide, docs, items, events")
        .await
        .unwrap();
    let filled = Instant::now();
    let rows = fill(&blue, &b, args.gib).await;
    let bytes = table_bytes(&b).await;
    println!(
        "initial copy: PostgreSQL {}, {rows} rows, {:.2} GiB of heap+TOAST on blue (filled in {:.0} s), {} workers, {} runs",
        bin.version,
        bytes as f64 / 1073741824.0,
        filled.elapsed().as_secs_f64(),
        args.workers,
        args.runs
    );
    let mut results: BTreeMap<Method, Vec<f64>> = BTreeMap::new();
    for run in 1..=args.runs {
        for &m in &args.methods {
            let (s, cpu) = copy(&bin, &blue, m, &args).await;
            eprintln!(
                "run {run} {m:?}: {s:.1} s, {:.1} MB/s, {:.0} rows/s, client processes {cpu:.1} CPU s",
                bytes as f64 / s / 1e6,
                rows as f64 / s
            );
            results.entry(m).or_default().push(s);
        }
    }
    let medians: BTreeMap<Method, f64> = results
        .iter_mut()
        .map(|(m, v)| (*m, stats::median(v)))
        .collect();
    println!("| method | seconds (median) | MB/s | rows/s |");
    println!("|---|---|---|---|");
    for (m, s) in &medians {
        println!(
            "| {m:?} | {s:.1} | {:.1} | {:.0} |",
            bytes as f64 / s / 1e6,
            rows as f64 / s
        );
    }
    let best_other = medians
        .iter()
        .filter(|(m, _)| **m != Method::Teal)
        .map(|(_, s)| *s)
        .fold(f64::INFINITY, f64::min);
    if let Some(teal) = medians.get(&Method::Teal)
        && best_other.is_finite()
    {
        println!(
            "teal vs the faster of pg_dump|pg_restore and native copy_data: {:.2}x (target 1.5x)",
            best_other / teal
        );
    }
}
