//! The Kafka sink's cost: W1 (1,000,000 rows inserted in 1,000-row
//! transactions, `--scale` scales it) drained from a backlog by `teal stream`
//! four ways in one run, each from its own slot created before the
//! workload: apply only, apply + Kafka, apply + Kafka with
//! `--kafka-exactly-once`, Kafka only (`--no-apply`). Kafka is
//! librdkafka's mock cluster in this process (a real protocol endpoint).
//!
//! Prints rows/s and Kafka records/s for each, and apply + Kafka against
//! apply only (targets, issue 23: at least 85%, exactly-once at least 70%),
//! and CPU per row: teal, blue's walsender, green's apply sessions and the
//! mock broker (this process).
//!
//! Run: `cargo bench --bench kafka -- [--runs 3] [--scale 1.0] [--teal-arg ARG]...`

mod cluster;
mod stats;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, Options};
use rdkafka::mocking::MockCluster;

/// Extra `teal stream` arguments from `--teal-arg` (every mode).
static TEAL_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

const SCHEMA: &str = "CREATE TABLE t (id bigint PRIMARY KEY, account int NOT NULL, amount numeric(12,2) NOT NULL, memo text)";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Apply,
    ApplyKafka,
    /// Apply + Kafka with `--kafka-exactly-once`.
    ApplyKafkaEos,
    KafkaOnly,
}

impl Mode {
    fn slot(self) -> &'static str {
        match self {
            Mode::Apply => "bench_apply",
            Mode::ApplyKafka => "bench_both",
            Mode::ApplyKafkaEos => "bench_eos",
            Mode::KafkaOnly => "bench_kafka",
        }
    }
}

fn options() -> Options {
    Options {
        settings: vec![
            ("max_wal_size".into(), "'4GB'".into()),
            ("checkpoint_timeout".into(), "'30min'".into()),
        ],
        ..Options::default()
    }
}

/// One mode's drain.
struct Sample {
    seconds: f64,
    records: u64,
    /// CPU (microseconds): teal, walsender, green's sessions, the mock broker.
    cpu: [f64; 4],
}

/// CPU (microseconds) so far of this process (the mock broker's threads).
fn own_cpu_us() -> f64 {
    stats::cpu_us(std::process::id())
}

async fn run_once(bin: &cluster::PgBin, scale: f64) -> BTreeMap<Mode, Sample> {
    let blue = Cluster::start_with(bin, options());
    let b = blue.client().await;
    b.batch_execute(SCHEMA).await.unwrap();
    b.batch_execute("CREATE PUBLICATION p FOR TABLE t")
        .await
        .unwrap();
    let modes = [
        Mode::Apply,
        Mode::ApplyKafka,
        Mode::ApplyKafkaEos,
        Mode::KafkaOnly,
    ];
    for m in modes {
        b.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&m.slot()],
        )
        .await
        .unwrap();
    }
    let txns = (1000.0 * scale) as u64;
    for t in 0..txns {
        let first = t * 1000 + 1;
        b.batch_execute(&format!(
            "INSERT INTO t SELECT i, i % 9973, (i % 100000) / 100.0, 'transfer ' || i || ' settlement batch ' || (i / 1000) \
             FROM generate_series({first}, {}) i",
            first + 999
        ))
        .await
        .unwrap();
    }
    let rows = txns * 1000;
    let target: String = b
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let mut out = BTreeMap::new();
    for m in modes {
        let green = Cluster::start_with(bin, options());
        green.client().await.batch_execute(SCHEMA).await.unwrap();
        let mock = MockCluster::new(1).expect("mock cluster");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_teal"));
        cmd.env_clear()
            .args([
                "stream",
                "--slot",
                m.slot(),
                "--publication",
                "p",
                "--no-create-slot",
            ])
            .args([
                "--log",
                "warn",
                "--metrics-addr",
                "off",
                "--heartbeat-interval",
                "off",
            ])
            .args(["--source", &blue.cli_url()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        match m {
            Mode::Apply => {
                cmd.args(["--target", &green.cli_url()]);
            }
            Mode::ApplyKafka => {
                cmd.args(["--target", &green.cli_url()])
                    .args(["--kafka-brokers", &mock.bootstrap_servers()]);
            }
            Mode::ApplyKafkaEos => {
                cmd.args(["--target", &green.cli_url()])
                    .args(["--kafka-brokers", &mock.bootstrap_servers()])
                    .arg("--kafka-exactly-once");
            }
            Mode::KafkaOnly => {
                cmd.args(["--no-apply", "--kafka-brokers", &mock.bootstrap_servers()]);
            }
        }
        cmd.args(TEAL_ARGS.get().into_iter().flatten());
        let started = Instant::now();
        let broker_start = own_cpu_us();
        let mut child = cmd.spawn().expect("teal runs");
        let mut walsender: Option<i32> = None;
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let done = b
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn >= $2::text::pg_lsn",
                    &[&m.slot(), &target],
                )
                .await
                .unwrap()
                .is_some();
            if done {
                break;
            }
            if walsender.is_none() {
                walsender = b
                    .query_one(
                        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                        &[&m.slot()],
                    )
                    .await
                    .unwrap()
                    .get(0);
            }
            assert!(Instant::now() < deadline, "{m:?} did not catch up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let green_pids = green
            .client()
            .await
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'teal apply'",
                &[],
            )
            .await
            .unwrap();
        let cpu = [
            stats::cpu_us(child.id()),
            walsender.map_or(0.0, |p| stats::cpu_us(p as u32)),
            green_pids
                .iter()
                .map(|r| stats::cpu_us(r.get::<_, i32>(0) as u32))
                .sum(),
            own_cpu_us() - broker_start,
        ];
        // SAFETY: kill(2) of our own child with SIGTERM.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        // Records: one per row plus BEGIN and END per transaction (and
        // exactly-once's progress records, left out).
        let records = if m == Mode::Apply { 0 } else { rows + 2 * txns };
        out.insert(
            m,
            Sample {
                seconds,
                records,
                cpu,
            },
        );
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (mut runs, mut scale) = (1usize, 1.0f64);
    let mut teal_args: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--scale" => scale = it.next().and_then(|v| v.parse().ok()).expect("--scale X"),
            "--bench" => {}
            "--teal-arg" => teal_args.push(it.next().expect("--teal-arg ARG")),
            other => panic!("unknown argument {other}"),
        }
    }
    TEAL_ARGS.set(teal_args).expect("set once");
    let bin = cluster::default_bin();
    let rows = (1000.0 * scale) as u64 * 1000;
    println!(
        "Kafka sink cost: PostgreSQL {}, W1 {rows} rows, backlog, {runs} runs",
        bin.version
    );
    let mut seconds: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
    let mut records = BTreeMap::new();
    let mut cpu: BTreeMap<Mode, [Vec<f64>; 4]> = BTreeMap::new();
    let per_row = |us: f64| us / rows as f64;
    for run in 1..=runs {
        for (m, sample) in run_once(&bin, scale).await {
            let s = sample.seconds;
            let [teal, walsender, green, broker] = sample.cpu.map(per_row);
            eprintln!(
                "run {run} {m:?}: {s:.1} s, {:.0} rows/s, {:.0} Kafka records/s; CPU us/row: teal {teal:.2}, walsender {walsender:.2}, green {green:.2}, mock broker {broker:.2}",
                rows as f64 / s,
                sample.records as f64 / s
            );
            seconds.entry(m).or_default().push(s);
            records.insert(m, sample.records);
            let per = cpu.entry(m).or_default();
            for (v, c) in per.iter_mut().zip(sample.cpu) {
                v.push(per_row(c));
            }
        }
    }
    println!(
        "| mode | seconds (median) | rows/s | Kafka records/s | CPU us/row: teal | walsender | green | mock broker | total |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut medians = BTreeMap::new();
    for (m, v) in &mut seconds {
        let s = stats::median(v);
        medians.insert(*m, s);
        let c = cpu
            .get_mut(m)
            .expect("sampled")
            .each_mut()
            .map(|v| stats::median(v));
        println!(
            "| {m:?} | {s:.1} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            rows as f64 / s,
            records[m] as f64 / s,
            c[0],
            c[1],
            c[2],
            c[3],
            c.iter().sum::<f64>()
        );
    }
    if let (Some(a), Some(b)) = (medians.get(&Mode::Apply), medians.get(&Mode::ApplyKafka)) {
        println!(
            "apply + Kafka runs at {:.0}% of apply alone (target: at least 85%)",
            a / b * 100.0
        );
    }
    if let (Some(a), Some(b)) = (medians.get(&Mode::Apply), medians.get(&Mode::ApplyKafkaEos)) {
        println!(
            "apply + Kafka exactly-once runs at {:.0}% of apply alone (target: at least 70%)",
            a / b * 100.0
        );
    }
}
