//! `teal verify` against the plain scans it must be compared with, same
//! tables, same machine, same run (issue 20): two parallel `SELECT
//! count(*)` scans (blue and green at once, every table), the whole-table
//! `md5(string_agg(md5(t::text) ORDER BY key))` of both sides, and `teal
//! verify --workers 4` while `teal stream` runs (idle) on the slot.
//!
//! Tables (about `--gib` GiB of heap and TOAST on each side, filled the
//! same way on both, deterministically): `ledger` (narrow rows, 70%),
//! `docs` (2 kB TOASTed text, 20%), `items` (arrays, 10%).
//!
//! Run: `cargo bench --bench verify -- [--runs 3] [--gib 1.0]`

mod cluster;
mod stats;

use std::process::{Command, Stdio};
use std::time::Instant;

use cluster::Cluster;
use tokio_postgres::Client;

const SCHEMA: &str = "
CREATE TABLE ledger (id bigint PRIMARY KEY, account int NOT NULL, amount numeric(14,2) NOT NULL, memo text);
CREATE TABLE docs (id int PRIMARY KEY, body text);
CREATE TABLE items (id int PRIMARY KEY, tags text[], scores int[]);
";
const TABLES: [&str; 3] = ["ledger", "docs", "items"];

struct Args {
    runs: usize,
    gib: f64,
}

fn parse_args() -> Args {
    let mut args = Args { runs: 3, gib: 1.0 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => args.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--gib" => args.gib = it.next().and_then(|v| v.parse().ok()).expect("--gib X"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// Fills one side (the same rows on both).
async fn fill(c: &Client, gib: f64) {
    let n = |share: f64, bytes_per_row: f64| (gib * share * 1073741824.0 / bytes_per_row) as u64;
    let (ledger, docs, items) = (n(0.7, 90.0), n(0.2, 2100.0), n(0.1, 150.0));
    c.batch_execute(&format!(
        "INSERT INTO ledger SELECT i, i % 9973, (i % 100000) / 100.0, 'transfer ' || i FROM generate_series(1, {ledger}) i;
         INSERT INTO docs SELECT i, (SELECT string_agg(md5(i::text || ':' || g), '') FROM generate_series(1, 64) g) FROM generate_series(1, {docs}) i;
         INSERT INTO items SELECT i, ARRAY['t' || i, 'u'], ARRAY[i, -i, 0] FROM generate_series(1, {items}) i;"
    ))
    .await
    .unwrap();
    // Each on its own (VACUUM cannot run in a multi-statement string).
    c.batch_execute("VACUUM ANALYZE").await.unwrap();
    c.batch_execute("CHECKPOINT").await.unwrap();
}

/// Runs `queries` one after the other on `c`.
async fn each(c: &Client, queries: &[String]) {
    for q in queries {
        c.query(q, &[]).await.unwrap();
    }
}

/// Seconds to run `sql(table)` for every table, on both sides at once.
async fn both(b: &Client, g: &Client, sql: impl Fn(&str) -> String) -> f64 {
    let started = Instant::now();
    let queries: Vec<String> = TABLES.iter().map(|t| sql(t)).collect();
    futures_util::future::join(each(b, &queries), each(g, &queries)).await;
    started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let bin = cluster::default_bin();
    let blue = Cluster::start_with(
        &bin,
        cluster::Options {
            settings: vec![("shared_buffers".into(), "'512MB'".into())],
            ..cluster::Options::default()
        },
    );
    let green = Cluster::start_with(
        &bin,
        cluster::Options {
            settings: vec![("shared_buffers".into(), "'512MB'".into())],
            ..cluster::Options::default()
        },
    );
    let (b, g) = (blue.client().await, green.client().await);
    b.batch_execute(SCHEMA).await.unwrap();
    g.batch_execute(SCHEMA).await.unwrap();
    b.batch_execute("CREATE PUBLICATION p FOR ALL TABLES")
        .await
        .unwrap();
    let filled = Instant::now();
    futures_util::future::join(fill(&b, args.gib), fill(&g, args.gib)).await;
    let bytes: i64 = b
        .query_one(
            "SELECT sum(pg_table_size(format('%I', t)::regclass))::bigint FROM unnest($1::text[]) t",
            &[&TABLES.iter().map(|t| t.to_string()).collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .get(0);
    println!(
        "verify: PostgreSQL {}, {:.2} GiB of heap+TOAST per side (filled in {:.0} s), {} runs",
        bin.version,
        bytes as f64 / 1073741824.0,
        filled.elapsed().as_secs_f64(),
        args.runs
    );
    let mut teal = Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .args([
            "stream",
            "--slot",
            "bench_verify",
            "--publication",
            "p",
            "--create-slot",
        ])
        .args(["--source", &blue.cli_url(), "--target", &green.cli_url()])
        .args([
            "--metrics-addr",
            "off",
            "--heartbeat-interval",
            "off",
            "--log",
            "warn",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("teal stream starts");
    cluster::wait_slot_active(&b, "bench_verify").await;
    let (mut count, mut md5agg, mut verify) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let c = both(&b, &g, |t| format!("SELECT count(*) FROM {t}")).await;
        let m = both(&b, &g, |t| {
            format!("SELECT md5(string_agg(md5(t::text), '' ORDER BY id)) FROM {t} t")
        })
        .await;
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_teal"))
            .env_clear()
            .args([
                "verify",
                "--slot",
                "bench_verify",
                "--publication",
                "p",
                "--workers",
                "4",
            ])
            .args(["--source", &blue.cli_url(), "--target", &green.cli_url()])
            .output()
            .unwrap();
        let v = started.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "teal verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "run {run}: count(*) both sides {c:.2} s, md5(string_agg) both sides {m:.2} s, teal verify {v:.2} s"
        );
        count.push(c);
        md5agg.push(m);
        verify.push(v);
    }
    let (c, m, v) = (
        stats::median(&mut count),
        stats::median(&mut md5agg),
        stats::median(&mut verify),
    );
    println!(
        "median: count(*) {c:.2} s, md5(string_agg) {m:.2} s, teal verify {v:.2} s; verify / count(*) {:.2}x, verify / md5(string_agg) {:.2}x",
        v / c,
        v / m
    );
    let _ = teal.kill();
    let _ = teal.wait();
}
