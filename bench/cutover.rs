//! The write pause of a switch (issue 21), measured by the writers: four
//! clients running pgbench's TPC-B-like transaction as an application
//! role, each reconnecting to whichever side the switch hook names; the
//! pause is the longest time no transaction committed anywhere around each
//! switch. Same clusters, same run:
//!
//! - `teal cutover --rehearse` (`--rehearsals` times): fence, marker,
//!   sequences, the way back, then everything back;
//! - `teal cutover` then `teal rollback` (`--cutovers` times each);
//! - pg_easy_replicate's method with PostgreSQL's own subscriber (after
//!   teal is stopped): the role made read-only (`default_transaction_read_only`)
//!   and its sessions ended, wait for lag 0, `setval` of the owned
//!   sequences to `max(col)`, then the writers are pointed at green
//!   (`--cutovers` times; each time blue is made writable again and the
//!   writers pointed back, unmeasured).
//!
//! Run: `cargo bench --bench cutover -- [--rehearsals 20] [--cutovers 5] [--scale 1]`

mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::Cluster;

struct Args {
    rehearsals: usize,
    cutovers: usize,
    scale: u32,
}

fn parse_args() -> Args {
    let mut args = Args {
        rehearsals: 20,
        cutovers: 5,
        scale: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<usize>().ok());
        match a.as_str() {
            "--rehearsals" => args.rehearsals = value().expect("--rehearsals N"),
            "--cutovers" => args.cutovers = value().expect("--cutovers N"),
            "--scale" => args.scale = value().expect("--scale N") as u32,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// pgbench's TPC-B-like transaction (between BEGIN and COMMIT).
const TPCB: [&str; 5] = [
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
];

/// Commit instants of all writers.
type Commits = Arc<Mutex<Vec<Instant>>>;

fn writers(
    urls: (String, String),
    target: PathBuf,
    scale: u32,
    stop: Arc<AtomicBool>,
    commits: Commits,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4u64)
        .map(|w| {
            let (urls, target, stop, commits) = (
                urls.clone(),
                target.clone(),
                Arc::clone(&stop),
                Arc::clone(&commits),
            );
            tokio::spawn(async move {
                let mut n: u64 = w;
                while !stop.load(Ordering::Relaxed) {
                    let side = std::fs::read_to_string(&target).unwrap_or_default();
                    let url = if side == "green" { &urls.1 } else { &urls.0 };
                    let Ok((client, conn)) =
                        tokio_postgres::connect(url, tokio_postgres::NoTls).await
                    else {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    };
                    tokio::spawn(conn);
                    let Ok(statements) = prepare(&client).await else {
                        continue;
                    };
                    while !stop.load(Ordering::Relaxed)
                        && std::fs::read_to_string(&target).unwrap_or_default() == side
                    {
                        n = n
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let aid = (n >> 33) as i32 % (100_000 * scale as i32) + 1;
                        let bid = (n >> 20) as i32 % scale as i32 + 1;
                        let tid = (n >> 10) as i32 % (10 * scale as i32) + 1;
                        let delta = (n >> 40) as i32 % 10001 - 5000;
                        if run_tpcb(&client, &statements, aid, bid, tid, delta)
                            .await
                            .is_err()
                        {
                            break;
                        }
                        commits.lock().unwrap().push(Instant::now());
                    }
                }
            })
        })
        .collect()
}

async fn prepare(
    client: &tokio_postgres::Client,
) -> Result<Vec<tokio_postgres::Statement>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for s in TPCB {
        out.push(client.prepare(s).await?);
    }
    Ok(out)
}

async fn run_tpcb(
    client: &tokio_postgres::Client,
    st: &[tokio_postgres::Statement],
    aid: i32,
    bid: i32,
    tid: i32,
    delta: i32,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    client.execute(&st[0], &[&delta, &aid]).await?;
    client.query(&st[1], &[&aid]).await?;
    client.execute(&st[2], &[&delta, &tid]).await?;
    client.execute(&st[3], &[&delta, &bid]).await?;
    client.execute(&st[4], &[&tid, &bid, &aid, &delta]).await?;
    client.batch_execute("COMMIT").await
}

/// The longest time without a commit between `from` and `to`.
fn longest_gap(commits: &Commits, from: Instant, to: Instant) -> f64 {
    let all = commits.lock().unwrap();
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &t in all.iter().filter(|t| **t >= from && **t <= to) {
        gap = gap.max(t - last);
        last = t;
    }
    gap = gap.max(to.saturating_duration_since(last));
    gap.as_secs_f64() * 1000.0
}

/// `teal cutover`/`rollback`: its report.
fn teal_switch(command: &str, blue: &str, green: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .env("TEAL_LOG", "warn")
        .args([command, "--slot", "bench_cut", "--publication", "p"])
        .args(["--source", blue, "--target", green, "--fence-roles", "app"])
        .args([
            "--format",
            "json",
            "--max-lag",
            "64MB",
            "--max-pause",
            "10s",
        ])
        .args(extra)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success(),
        "teal {command}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

fn percentiles(name: &str, xs: &mut [f64]) {
    xs.sort_by(f64::total_cmp);
    let at = |p: f64| xs[((p * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1];
    println!(
        "{name:<42} n={:<3} p50 {:>7.0} ms  p99 {:>7.0} ms  max {:>7.0} ms",
        xs.len(),
        at(0.5),
        at(0.99),
        xs[xs.len() - 1]
    );
}

fn write_target(target: &Path, side: &str) {
    std::fs::write(target, side).unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let bin = cluster::default_bin();
    let blue = Cluster::start(&bin);
    let green = Cluster::start(&bin);
    let (b, g) = (blue.client().await, green.client().await);
    for (side, client) in [(&blue, &b), (&green, &g)] {
        let out = Command::new(bin.dir.join("pgbench"))
            .env_clear()
            .env("PGPASSWORD", side.password())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &side.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-i", "-q", "-s", &args.scale.to_string(), "postgres"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        client
            .batch_execute(
                "CREATE ROLE app LOGIN PASSWORD 'app-pw';
                 GRANT SELECT, INSERT, UPDATE ON pgbench_accounts, pgbench_tellers, pgbench_branches, pgbench_history TO app;
                 ALTER TABLE pgbench_history REPLICA IDENTITY FULL;",
            )
            .await
            .unwrap();
    }
    b.batch_execute("CREATE PUBLICATION p FOR ALL TABLES")
        .await
        .unwrap();
    let mut teal = Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .args([
            "stream",
            "--slot",
            "bench_cut",
            "--publication",
            "p",
            "--create-slot",
        ])
        .args(["--source", &blue.cli_url(), "--target", &green.cli_url()])
        .args(["--metrics-addr", "off", "--log", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .expect("teal stream starts");
    cluster::wait_slot_active(&b, "bench_cut").await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    write_target(&target, "blue");
    let stop = Arc::new(AtomicBool::new(false));
    let commits: Commits = Arc::default();
    let load = writers(
        (
            blue.url_for("app", "app-pw", ""),
            green.url_for("app", "app-pw", ""),
        ),
        target.clone(),
        args.scale,
        Arc::clone(&stop),
        Arc::clone(&commits),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tps = commits.lock().unwrap().len() as f64 / 2.0;
    println!(
        "cutover: PostgreSQL {}, pgbench scale {}, 4 writers at about {tps:.0} tps",
        bin.version, args.scale
    );
    let (bu, gu) = (blue.cli_url(), green.cli_url());
    let mut rehearsal_writer = Vec::new();
    let mut rehearsal_reported = Vec::new();
    for _ in 0..args.rehearsals {
        let t0 = Instant::now();
        let report = tokio::task::spawn_blocking({
            let (bu, gu) = (bu.clone(), gu.clone());
            move || teal_switch("cutover", &bu, &gu, &["--rehearse"])
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        rehearsal_writer.push(longest_gap(&commits, t0, Instant::now()));
        rehearsal_reported.push(report["write_pause_ms"].as_f64().unwrap_or(f64::NAN));
    }
    let mut switch_writer = Vec::new();
    let mut switch_reported = Vec::new();
    for _ in 0..args.cutovers {
        for (command, to) in [("cutover", "green"), ("rollback", "blue")] {
            let hook = format!("printf {to} > '{}'", target.display());
            let t0 = Instant::now();
            let report = tokio::task::spawn_blocking({
                let (bu, gu) = (bu.clone(), gu.clone());
                move || teal_switch(command, &bu, &gu, &["--switch-hook", &hook])
            })
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            switch_writer.push(longest_gap(&commits, t0, Instant::now()));
            switch_reported.push(report["write_pause_ms"].as_f64().unwrap_or(f64::NAN));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // pg_easy_replicate's method on the same clusters, with PostgreSQL's
    // own subscriber: teal stopped (the pair is blue -> green again).
    let _ = teal.kill();
    let _ = teal.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.batch_execute("SELECT pg_drop_replication_slot('bench_cut')")
        .await
        .unwrap();
    g.batch_execute(&format!(
        "CREATE SUBSCRIPTION native CONNECTION '{}' PUBLICATION p WITH (copy_data = false)",
        blue.url_for("postgres", blue.password(), "")
            .replace('\'', "''")
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut native_writer = Vec::new();
    for _ in 0..args.cutovers {
        let t0 = Instant::now();
        b.batch_execute(
            "ALTER ROLE app SET default_transaction_read_only = on;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app';",
        )
        .await
        .unwrap();
        // Lag 0: the subscription's slot confirmed blue's current position.
        loop {
            let caught_up: bool = b
                .query_one(
                    "SELECT coalesce(bool_and(confirmed_flush_lsn >= pg_current_wal_lsn()), false) \
                     FROM pg_replication_slots WHERE slot_name = 'native'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if caught_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // setval(max(col)) of every owned sequence (pgbench has none).
        let owned = g
            .query(
                "SELECT pg_get_serial_sequence(c.table_schema || '.' || c.table_name, c.column_name), \
                        c.table_schema || '.' || c.table_name, c.column_name \
                 FROM information_schema.columns c WHERE c.table_schema = 'public' \
                   AND pg_get_serial_sequence(c.table_schema || '.' || c.table_name, c.column_name) IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        for r in owned {
            let (seq, table, col): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            g.batch_execute(&format!(
                "SELECT setval('{seq}', (SELECT coalesce(max({col}), 1) FROM {table}))"
            ))
            .await
            .unwrap();
        }
        write_target(&target, "green");
        tokio::time::sleep(Duration::from_millis(500)).await;
        native_writer.push(longest_gap(&commits, t0, Instant::now()));
        // Back, unmeasured: blue writable, the writers pointed at it.
        b.batch_execute("ALTER ROLE app RESET default_transaction_read_only")
            .await
            .unwrap();
        write_target(&target, "blue");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in load {
        let _ = w.await;
    }
    g.batch_execute("DROP SUBSCRIPTION native").await.unwrap();
    println!("write pause, the longest time no writer committed around each switch:");
    percentiles("teal cutover --rehearse (writers)", &mut rehearsal_writer);
    percentiles(
        "teal cutover --rehearse (reported)",
        &mut rehearsal_reported,
    );
    percentiles("teal cutover + rollback (writers)", &mut switch_writer);
    percentiles("teal cutover + rollback (reported)", &mut switch_reported);
    percentiles("pg_easy_replicate's method (writers)", &mut native_writer);
}
