//! Kafka outages and failures against librdkafka's mock cluster: an
//! outage pauses the slot's confirmation and loses nothing, records Kafka
//! gives up are sent again, `--kafka-max-behind` holds apply back, and
//! `--kafka-drop-on-wal-risk` drops Kafka before the slot is lost. Kafka
//! "goes down" by failing produce requests with a retriable error (the
//! mock broker itself stays up: taking it down and up again can find its
//! port taken).

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use teal::ops::stream;
use teal::sink::kafka::KafkaConfig;
use tokio_util::sync::CancellationToken;

use crate::kafka::{
    WAIT, confirmed, insert_each, kafka_down, kafka_up, mock_and_acct, read_topic,
    records_until_quiet, stream_with, stream_with_kafka, stream_with_kafka_config,
    ten_rows_on_green,
};
use crate::support::cluster::default_bin;
use crate::support::tap::init_logging;
use crate::support::twins::{Twins, int8};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_pauses_confirmation_and_loses_nothing() {
    init_logging();
    let (mock, brokers, twins) = mock_and_acct().await;
    let (shutdown, _monitor, running) = stream_with_kafka(&twins, &brokers, false).await;
    ten_rows_on_green(&twins).await;

    // Kafka goes down; blue keeps writing.
    kafka_down(&mock);
    let before = twins.blue_insert_lsn().await;
    let before = before.parse::<teal::lsn::Lsn>().unwrap().0;
    insert_each(&twins, 11..=60, 1).await;
    // Green keeps up (apply is not held back by a few transactions)...
    crate::support::wait::until_row(
        &twins.g,
        "SELECT 1 FROM acct HAVING count(*) = 60",
        &[],
        WAIT,
        "green did not apply during the Kafka outage",
    )
    .await;
    // ...but blue is never told more than Kafka holds.
    for _ in 0..20 {
        let c = confirmed(&twins).await;
        assert!(
            c <= before,
            "the slot confirmed {c:X} past {before:X} while Kafka was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    kafka_up(&mock);
    twins
        .wait_slot_confirmed("confirmation did not resume after Kafka came back")
        .await;
    let b2 = brokers.clone();
    let records = tokio::task::spawn_blocking(move || read_topic(&b2, "teal.public.acct", 60))
        .await
        .unwrap();
    let mut ids: Vec<i64> = records
        .into_iter()
        .flatten()
        .map(|(_, v)| v["after"]["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=60).collect::<Vec<i64>>(),
        "every row once, none lost"
    );
    twins.assert_converged(&["acct"], WAIT).await;
    shutdown.cancel();
    running.await.unwrap().expect("stream stops cleanly");
}

/// Records librdkafka gives up (`message.timeout.ms` passed while Kafka
/// refused them) stop the sink with a delivery error naming the LSN; the
/// slot is not confirmed past them, the attempt starts again from what
/// green and Kafka hold, and once Kafka takes records every row gets there
/// (at least once: records sent before the failure was seen may repeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_kafka_gave_up_on_are_sent_again() {
    init_logging();
    let (mock, brokers, twins) = mock_and_acct().await;
    let mut kafka = KafkaConfig::new(brokers.clone(), "postgres");
    kafka.properties = vec![("message.timeout.ms".into(), "1000".into())];
    let (shutdown, monitor, running) = stream_with_kafka_config(&twins, kafka, false).await;
    ten_rows_on_green(&twins).await;

    kafka_down(&mock);
    let before = twins.blue_insert_lsn().await;
    let before = before.parse::<teal::lsn::Lsn>().unwrap().0;
    insert_each(&twins, 11..=30, 1).await;
    // librdkafka gives the records up after a second: the sink fails.
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = monitor.metrics_text();
        let failed: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("teal_kafka_records_failed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if failed > 0.0 {
            assert!(
                metrics.contains("teal_kafka_records_failed_total{slot=\"teal_slot\",topic=\"teal.public.acct\"}")
                    || metrics.contains("teal_kafka_records_failed_total{slot=\"teal_slot\",topic=\"teal.transactions\"}"),
                "failures counted per topic: {metrics}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no record was given up: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = confirmed(&twins).await;
    assert!(
        c <= before,
        "the slot confirmed {c:X} past {before:X}, records of which Kafka gave up"
    );
    assert!(
        !running.is_finished(),
        "a delivery failure is retried, not an exit"
    );

    kafka_up(&mock);
    twins
        .wait_slot_confirmed("confirmation did not resume after Kafka came back")
        .await;
    let mut ids: Vec<i64> =
        records_until_quiet(&brokers, "teal.public.acct", Duration::from_secs(1))
            .await
            .into_iter()
            .map(|(_, v)| v["after"]["id"].as_i64().unwrap())
            .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, (1..=30).collect::<Vec<i64>>(), "every row, none lost");
    twins.assert_converged(&["acct"], WAIT).await;
    shutdown.cancel();
    running.await.unwrap().expect("stream stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_behind_holds_apply_back_while_kafka_is_down() {
    init_logging();
    let (mock, brokers, twins) = mock_and_acct().await;
    let mut config = twins.config();
    let mut kafka = KafkaConfig::new(brokers.clone(), "postgres");
    kafka.max_behind = Some(1);
    config.kafka = Some(kafka);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(stream::run(config, shutdown.clone()));
    twins.wait_streaming().await;
    ten_rows_on_green(&twins).await;

    kafka_down(&mock);
    insert_each(&twins, 11..=30, 1).await;
    // Green waits for Kafka: not one of the new rows lands.
    for _ in 0..20 {
        let n = int8(&twins.g, "SELECT count(*) FROM acct").await;
        assert_eq!(
            n, 10,
            "green got ahead of Kafka by more than --kafka-max-behind"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kafka_up(&mock);
    twins.assert_converged(&["acct"], WAIT).await;
    twins.wait_slot_confirmed("both caught up").await;
    let b2 = brokers.clone();
    let records = tokio::task::spawn_blocking(move || read_topic(&b2, "teal.public.acct", 30))
        .await
        .unwrap();
    assert_eq!(records.into_iter().flatten().count(), 30);
    shutdown.cancel();
    running.await.unwrap().expect("stream stops cleanly");
}

/// `--kafka-drop-on-wal-risk`: Kafka is down, green keeps up, blue writes
/// fast enough that its slot (max_slot_wal_keep_size 64MB) would be
/// invalidated within the horizon. teal drops Kafka from the slot's
/// watermark (audit row, metric, /status-visible stats), the slot moves on
/// with green and survives more WAL than it may keep, and green gets
/// every row. Without the drop the slot could not pass Kafka's position
/// (`kafka_outage_pauses_confirmation_and_loses_nothing`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_is_dropped_before_the_slot_is_lost() {
    use crate::support::cluster::Options;
    init_logging();
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let bin = default_bin();
    let blue = Options {
        settings: vec![("max_slot_wal_keep_size".into(), "64MB".into())],
        ..Options::default()
    };
    let twins = Twins::start_with(
        &bin,
        &bin,
        "CREATE TABLE acct (id int PRIMARY KEY, v int); CREATE TABLE blob (id int PRIMARY KEY, b text)",
        blue,
        Options::default(),
    )
    .await;
    let mut config = twins.config();
    let mut kafka = KafkaConfig::new(brokers.clone(), "postgres");
    kafka.drop_on_wal_risk = Some(Duration::from_secs(600));
    kafka.max_behind = Some(1024 * 1024);
    config.kafka = Some(kafka);
    config.monitor.slot_poll_interval = Duration::from_millis(200);
    let (shutdown, monitor, running) = stream_with(&twins, config).await;
    ten_rows_on_green(&twins).await;
    twins
        .wait_slot_confirmed("green and Kafka hold 1..10")
        .await;
    let kafka_had = monitor
        .kafka
        .acknowledged_lsn
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        !monitor
            .kafka
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        "Kafka keeps up: not dropped"
    );

    // Kafka goes down; blue writes about 10 MB/s: the slot would be lost
    // within seconds were Kafka to hold it.
    kafka_down(&mock);
    let deadline = Instant::now() + WAIT;
    let mut batch = 0;
    while !monitor
        .kafka
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        assert!(Instant::now() < deadline, "Kafka was never dropped");
        twins
            .b
            .execute(
                "INSERT INTO blob SELECT $1 * 1000 + i, repeat('x', 1000) FROM generate_series(1, 1000) i",
                &[&batch],
            )
            .await
            .unwrap();
        batch += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The slot goes on with green, past more WAL than blue may keep for it.
    let start: String = twins
        .b
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..12 {
        twins
            .b
            .batch_execute(&format!(
                "INSERT INTO blob SELECT {batch} * 1000 + i, repeat('y', 1000) FROM generate_series(1, 10000) i; CHECKPOINT"
            ))
            .await
            .unwrap();
        batch += 10;
        twins.assert_converged(&["blob"], WAIT).await;
    }
    twins.b.batch_execute("CHECKPOINT").await.unwrap();
    let row = twins
        .b
        .query_one(
            "SELECT wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::int8, \
                    pg_wal_lsn_diff(confirmed_flush_lsn, $2::text::pg_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = 'teal_slot'",
            &[&start, &teal::lsn::Lsn(kafka_had).to_string()],
        )
        .await
        .unwrap();
    let (status, written, confirmed_past_kafka): (Option<String>, i64, i64) =
        (row.get(0), row.get(1), row.get(2));
    assert!(
        written > 64 * 1024 * 1024,
        "blue wrote {written} bytes, more than the slot may keep"
    );
    assert_ne!(status.as_deref(), Some("lost"), "the slot survived");
    assert!(
        confirmed_past_kafka > 64 * 1024 * 1024,
        "the slot moved with green, past Kafka"
    );
    let metrics = monitor.metrics_text();
    assert!(
        metrics.contains("teal_kafka_dropped{slot=\"teal_slot\"} 1"),
        "{metrics}"
    );
    // The audit row names what Kafka misses.
    let audit = twins
        .g
        .query_one(
            "SELECT status, details->>'kafka_acknowledged_lsn', details->>'reason' \
             FROM teal.audit WHERE operation = 'kafka_drop'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(audit.get::<_, String>(0), "succeeded");
    let named: teal::lsn::Lsn = audit.get::<_, String>(1).parse().unwrap();
    assert!(
        named.0 >= kafka_had,
        "the audit row names Kafka's position {named}"
    );
    assert!(
        audit.get::<_, String>(2).contains("invalidate"),
        "{}",
        audit.get::<_, String>(2)
    );
    kafka_up(&mock);
    shutdown.cancel();
    running.await.unwrap().expect("stream stops cleanly");
}
