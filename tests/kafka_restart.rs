//! A Kafka-streaming teal killed or restarted: killed with kill -9 (with
//! and without `--kafka-exactly-once`) it loses no change, and an
//! exactly-once producer restarted from a slot behind Kafka's progress
//! writes nothing twice; an exactly-once stream that goes quiet commits at
//! once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kafka::{
    Tansu, WAIT, confirmed, insert_each, mock_and_acct, read_topic, records_until_quiet,
    stream_with_kafka_config,
};
use crate::support::cluster::default_bin;
use crate::support::tap::init_logging;
use crate::support::twins::Twins;

/// The `teal stream` binary from the twins to green and `brokers`.
fn teal_binary_with_kafka(twins: &Twins, brokers: &str, exactly_once: bool) -> std::process::Child {
    twins
        .teal_stream_command()
        .args(["--kafka-brokers", brokers])
        .args(exactly_once.then_some("--kafka-exactly-once"))
        .args(["--metrics-addr", "off", "--heartbeat-interval", "off"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("teal stream starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_teal_with_kafka_loses_no_change() {
    killed_teal_loses_no_change(false).await;
}

/// The same with --kafka-exactly-once: each restart fences the killed
/// producer (aborting its open transaction) and resumes after the progress
/// Kafka committed. (The mock cluster, like tansu, hands aborted records to
/// read_committed consumers too, so duplicates are still dropped here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_exactly_once_teal_loses_no_change() {
    killed_teal_loses_no_change(true).await;
}

async fn killed_teal_loses_no_change(exactly_once: bool) {
    init_logging();
    let (_mock, brokers, twins) = mock_and_acct().await;
    let start_teal = || teal_binary_with_kafka(&twins, &brokers, exactly_once);
    let mut teal = start_teal();
    twins.wait_streaming().await;

    // One writer: transaction n inserts n, updates n-1, deletes n-5.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, stop) = (twins.blue.url(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let (mut n, mut changes) = (0i32, [0u64; 3]);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(c) = crate::support::cluster::reconnect(&url, &mut client).await else {
                    continue;
                };
                let next = n + 1;
                let sql = format!(
                    "BEGIN; INSERT INTO acct VALUES ({next}, 0);
                     UPDATE acct SET v = v + 1 WHERE id = {};
                     DELETE FROM acct WHERE id = {}; COMMIT;",
                    next - 1,
                    next - 5
                );
                if c.batch_execute(&sql).await.is_ok() {
                    n = next;
                    changes[0] += 1;
                    changes[1] += u64::from(n >= 2);
                    changes[2] += u64::from(n >= 6);
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            changes
        })
    };
    for round in 0..5u64 {
        tokio::time::sleep(Duration::from_millis(700 + round * 137)).await;
        teal.kill().expect("kill -9");
        let _ = teal.wait();
        teal = start_teal();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let [inserts, updates, deletes] = writer.await.unwrap();
    assert!(inserts > 100, "the writer ran: {inserts}");
    twins.assert_converged(&["acct"], WAIT).await;
    twins
        .wait_slot_confirmed("Kafka and green caught up after the restarts")
        .await;

    let records = records_until_quiet(&brokers, "teal.public.acct", Duration::from_secs(3)).await;
    let mut seen = std::collections::BTreeSet::new();
    let mut counts = std::collections::BTreeMap::new();
    let mut duplicates = 0;
    for (_, v) in records.iter().filter(|(_, v)| !v.is_null()) {
        let id = (
            v["source"]["lsn"].as_u64().unwrap(),
            v["source"]["sequence"].as_str().unwrap().to_owned(),
        );
        if seen.insert(id) {
            *counts
                .entry(v["op"].as_str().unwrap().to_owned())
                .or_insert(0u64) += 1;
        } else {
            duplicates += 1;
        }
    }
    assert_eq!(
        (counts.get("c"), counts.get("u"), counts.get("d")),
        (Some(&inserts), Some(&updates), Some(&deletes)),
        "every change on blue is in Kafka once after deduplication ({duplicates} duplicates dropped)"
    );
    // SAFETY: kill(2) of our own child with SIGTERM.
    unsafe {
        libc::kill(teal.id() as i32, libc::SIGTERM);
    }
    assert!(teal.wait().unwrap().success(), "teal stops cleanly");
}

/// The last position teal's exactly-once progress record holds for
/// `teal_slot` (commit LSN), read like any consumer would.
async fn kafka_progress(brokers: &str) -> Option<u64> {
    records_until_quiet(brokers, "teal.teal_progress", Duration::from_secs(1))
        .await
        .into_iter()
        .filter(|(k, _)| k["slot"] == "teal_slot")
        .filter_map(|(_, v)| v["commit_lsn"].as_str()?.parse::<teal::lsn::Lsn>().ok())
        .map(|l| l.0)
        .max()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_a_restart_the_slot_did_not_see() {
    init_logging();
    let broker = Tansu::start();
    let brokers = broker.addr.clone();
    let twins = Twins::start(
        &default_bin(),
        "CREATE TABLE acct (id int PRIMARY KEY, v int)",
    )
    .await;
    let start_teal = || teal_binary_with_kafka(&twins, &brokers, true);
    let mut teal = start_teal();
    twins.wait_streaming().await;
    insert_each(&twins, 1..=10, 0).await;
    twins.assert_converged(&["acct"], WAIT).await;
    twins
        .wait_slot_confirmed("green and Kafka hold 1..10")
        .await;

    // Green is blocked: Kafka commits rows 11..40 (and its progress), the
    // slot cannot be confirmed past row 10.
    let (hold, conn) = tokio_postgres::connect(&twins.green.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    hold.batch_execute("BEGIN; LOCK TABLE acct IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let before = confirmed(&twins).await;
    insert_each(&twins, 11..=40, 0).await;
    let last = twins
        .blue_insert_lsn()
        .await
        .parse::<teal::lsn::Lsn>()
        .unwrap()
        .0;
    let deadline = Instant::now() + WAIT;
    loop {
        let progress = kafka_progress(&brokers).await;
        // The commit LSN of row 40's transaction lies within 1 KiB before the insert position.
        if progress.is_some_and(|p| p + 1024 >= last) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Kafka's progress stayed at {progress:X?}, not near {last:X}"
        );
    }
    assert_eq!(
        confirmed(&twins).await,
        before,
        "the slot stays where green is"
    );
    // teal dies; blue will resend 11..40, which Kafka already holds.
    teal.kill().expect("kill -9");
    let _ = teal.wait();
    hold.batch_execute("ROLLBACK").await.unwrap();
    insert_each(&twins, 41..=50, 0).await;
    let mut teal = start_teal();
    twins.assert_converged(&["acct"], WAIT).await;
    twins
        .wait_slot_confirmed("green and Kafka hold 1..50")
        .await;

    let records = records_until_quiet(&brokers, "teal.public.acct", Duration::from_secs(2)).await;
    let mut ids: Vec<i64> = records
        .iter()
        .map(|(_, v)| v["after"]["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=50).collect::<Vec<i64>>(),
        "every row exactly once, although blue sent 11..40 twice"
    );
    let ends = records_until_quiet(&brokers, "teal.transactions", Duration::from_secs(2))
        .await
        .into_iter()
        .filter(|(_, v)| v["status"] == "END")
        .count();
    assert_eq!(ends, 50, "one END record per source transaction");
    // SAFETY: kill(2) of our own child with SIGTERM.
    unsafe {
        libc::kill(teal.id() as i32, libc::SIGTERM);
    }
    assert!(teal.wait().unwrap().success(), "teal stops cleanly");
}

/// An exactly-once stream that goes quiet commits its Kafka transaction,
/// and so confirms the slot, as soon as nothing more waits: not after
/// `--kafka-transaction-max-delay` (10 minutes here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_exactly_once_stream_commits_without_waiting_for_the_delay() {
    init_logging();
    let (_mock, brokers, twins) = mock_and_acct().await;
    let mut kafka = teal::sink::kafka::KafkaConfig::new(&brokers, "postgres");
    kafka.exactly_once = true;
    kafka.transaction_max_delay = Duration::from_secs(600);
    let (shutdown, _monitor, running) = stream_with_kafka_config(&twins, kafka, true).await;
    insert_each(&twins, 1..=3, 7).await;
    let lsn: String = twins
        .b
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let lsn = lsn.parse::<teal::lsn::Lsn>().unwrap().0;
    let started = Instant::now();
    while confirmed(&twins).await < lsn {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the slot is not confirmed past the quiet stream's last change ({lsn}) after 20 s: its Kafka transaction did not commit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b2 = brokers.clone();
    let records = tokio::task::spawn_blocking(move || read_topic(&b2, "teal.public.acct", 3))
        .await
        .unwrap();
    let ids: Vec<i64> = records
        .iter()
        .flatten()
        .map(|(_, v)| v["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    shutdown.cancel();
    running.await.unwrap().expect("stream stops cleanly");
}
