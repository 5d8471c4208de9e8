//! Exactly once across crashes and restarts: `kill -9` of teal at random
//! moments, and green or blue restarting, under a continuous mixed workload.
//! Afterwards green equals blue table by table and nothing was a conflict.

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::cluster::{Options, PgBin, default_bin};
use crate::support::tap::init_logging;
use crate::support::twins::{Twins, int8};

const SCHEMA: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, balance numeric(20,2) NOT NULL, touched int NOT NULL DEFAULT 0);
CREATE TABLE transfers (id bigserial PRIMARY KEY, src int NOT NULL, dst int NOT NULL,
                        amount numeric(20,2) NOT NULL, memo text);
CREATE TABLE audit (id bigserial PRIMARY KEY, note text);
ALTER TABLE audit REPLICA IDENTITY FULL;
INSERT INTO accounts SELECT i, 1000 FROM generate_series(1, 200) i;
";
const TABLES: [&str; 3] = ["accounts", "transfers", "audit"];

/// Writers doing transfers (insert + two updates), deletes, TOASTed memos,
/// and full-identity table changes, until stopped. Errors while a server
/// restarts are retried.
fn workload(
    url: String,
    writers: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Vec<JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let url = url.clone();
            let stop = Arc::clone(&stop);
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut client: Option<tokio_postgres::Client> = None;
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Some(c) = crate::support::cluster::reconnect(&url, &mut client).await
                    else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    n += 1;
                    let a = 1 + (n * 7 + w as u64 * 13) % 200;
                    let b = 1 + (a + 1 + n % 150) % 200;
                    let memo = if n % 10 == 0 {
                        "repeat(md5(random()::text), 300)".to_owned()
                    } else {
                        format!("'transfer {w}-{n}'")
                    };
                    let sql = format!(
                        "BEGIN; \
                         INSERT INTO transfers (src, dst, amount, memo) VALUES ({a}, {b}, 1.25, {memo}); \
                         UPDATE accounts SET balance = balance - 1.25, touched = touched + 1 WHERE id = {a}; \
                         UPDATE accounts SET balance = balance + 1.25, touched = touched + 1 WHERE id = {b}; \
                         {} {} COMMIT;",
                        if n % 5 == 0 { "DELETE FROM transfers WHERE id = (SELECT min(id) FROM transfers);" } else { "" },
                        if n % 3 == 0 {
                            "INSERT INTO audit (note) VALUES ('x'); UPDATE audit SET note = note || 'y' WHERE id = (SELECT max(id) FROM audit);"
                        } else {
                            ""
                        }
                    );
                    let ok = c.batch_execute(&sql).await.is_ok();
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let _ = c.batch_execute("ROLLBACK").await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

fn teal_stream(twins: &Twins) -> Child {
    twins
        .teal_stream_command()
        .args(["--status-interval", "1s", "--log", "warn"])
        // Any free port: several tests run teal at once.
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("teal runs")
}

async fn assert_no_conflicts(twins: &Twins) {
    let n = int8(&twins.g, "SELECT count(*) FROM teal.conflicts").await;
    assert_eq!(
        n, 0,
        "no change was ever applied twice or lost (no conflicts)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twenty_times_under_load() {
    let bin = default_bin();
    kill_9_under_load(&bin, &bin, 20).await;
}

/// Across major versions (issue 18.5): an upgrade (14 -> 18) and a
/// rollback's direction (18 -> 15).
async fn kill_9_across_versions(blue: &PgBin, green: &PgBin) {
    kill_9_under_load(blue, green, 8).await;
}
crate::on_version_pairs!(
    kill_9_across_versions,
    blue_14_green_18 => (14, 18),
    blue_18_green_15 => (18, 15),
);

/// `teal stream` (the binary) killed with SIGKILL `rounds` times at random
/// moments under a three-client workload: green ends equal to blue with no
/// conflict (nothing applied twice or lost).
async fn kill_9_under_load(blue: &PgBin, green: &PgBin, rounds: u64) {
    init_logging();
    let twins =
        Twins::start_with(blue, green, SCHEMA, Options::default(), Options::default()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let url = twins.blue.url();
    let mut teal = teal_stream(&twins);
    twins.wait_streaming().await;
    let writers = workload(url, 3, Arc::clone(&stop), Arc::clone(&done));
    for round in 0..rounds {
        // A random moment: the first rounds early in a batch, later ones after longer runs.
        let ms = 100 + fastrand::u64(0..900) + round * 20;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        teal.kill().expect("SIGKILL");
        teal.wait().unwrap();
        teal = teal_stream(&twins);
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 100, "the workload ran");
    twins
        .assert_converged(&TABLES, Duration::from_secs(120))
        .await;
    assert_no_conflicts(&twins).await;
    // SAFETY: kill with a valid pid and signal number.
    unsafe {
        libc::kill(teal.id() as i32, libc::SIGTERM);
    }
    assert!(
        teal.wait().unwrap().success(),
        "teal stops cleanly on SIGTERM"
    );
}

async fn restarts_of_green_and_blue_under_load(bin: &PgBin) {
    init_logging();
    let twins = Arc::new(Twins::start(bin, SCHEMA).await);
    let shutdown = CancellationToken::new();
    let stream = tokio::spawn(teal::ops::stream::run(twins.config(), shutdown.clone()));
    twins.wait_streaming().await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let url = twins.blue.url();
    let writers = workload(url, 2, Arc::clone(&stop), Arc::clone(&done));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = Arc::clone(&twins);
    tokio::task::spawn_blocking(move || {
        t.green.stop();
        std::thread::sleep(Duration::from_millis(700));
        t.green.start_again();
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = Arc::clone(&twins);
    tokio::task::spawn_blocking(move || {
        t.blue.stop();
        std::thread::sleep(Duration::from_millis(700));
        t.blue.start_again();
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // The test's own sessions died with the restarts: compare over new ones.
    let Ok(mut twins) = Arc::try_unwrap(twins) else {
        panic!("the restarts are over, so only this test holds the clusters")
    };
    twins.reconnect().await;
    twins
        .assert_converged(&TABLES, Duration::from_secs(120))
        .await;
    assert_no_conflicts(&twins).await;
    shutdown.cancel();
    stream.await.unwrap().expect("stream ends cleanly");
}
crate::on_every_server!(restarts_of_green_and_blue_under_load);
