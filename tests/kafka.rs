//! The Kafka audit stream against librdkafka's mock cluster (a real Kafka
//! protocol endpoint in this process): records in commit order with
//! Debezium's envelope, BEGIN/END per transaction, and the slot confirmed
//! only as far as Kafka acknowledged. Outages and failures:
//! `kafka_outage.rs`; kills and restarts: `kafka_restart.rs` (both use
//! the helpers here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use teal::monitor::Monitor;
use teal::ops::stream;
use teal::sink::kafka::KafkaConfig;
use tokio_util::sync::CancellationToken;

use crate::support::cluster::default_bin;
use crate::support::tap::init_logging;
use crate::support::twins::{Twins, int8};

pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// How long a topic must stay quiet after the expected records arrived for
/// none to be missing from the count (a duplicate would arrive within it).
const QUIET_AFTER: Duration = Duration::from_millis(800);

/// Every record of `topic` (all partitions, from the start), per partition
/// in offset order: exactly `count` of them (key, value) as JSON (null value
/// for tombstones). It waits for `count`, then for [`QUIET_AFTER`] more, and
/// fails on any record beyond `count`: a duplicate cannot hide. The ledger's
/// records in the transactions topic (status LEDGER; their timing depends on
/// green's batches) are left out: `the_ledger_head_reaches_the_transactions_topic`.
pub(crate) fn read_topic(brokers: &str, topic: &str, count: usize) -> Vec<Vec<(Value, Value)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "teal-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len();
    assert!(partitions > 0, "{topic} exists");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out = vec![Vec::new(); partitions];
    let deadline = Instant::now() + WAIT;
    let parse =
        |b: Option<&[u8]>| b.map_or(Value::Null, |b| serde_json::from_slice(b).expect("JSON"));
    let mut quiet_since: Option<Instant> = None;
    loop {
        let got = out.iter().map(Vec::len).sum::<usize>();
        assert!(
            got <= count,
            "{topic}: {got} records where {count} were expected: {out:#?}"
        );
        if got == count {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= QUIET_AFTER {
                return out;
            }
        } else {
            assert!(
                Instant::now() < deadline,
                "{topic}: {got} of {count} records"
            );
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("a record");
            let value = parse(m.payload());
            if value["status"] != "LEDGER" {
                out[m.partition() as usize].push((parse(m.key()), value));
            }
        }
    }
}

/// Kafka stops taking records: every produce request is answered with a
/// retriable error (librdkafka retries, nothing is acknowledged). Not
/// `broker_down`: its `broker_up` binds the same port again, and a test
/// cluster started meanwhile may hold it (librdkafka then aborts the process).
pub(crate) fn kafka_down(mock: &MockCluster<'static, DefaultProducerContext>) {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );
}

/// Kafka takes records again.
pub(crate) fn kafka_up(mock: &MockCluster<'static, DefaultProducerContext>) {
    mock.clear_request_errors(rdkafka::types::RDKafkaApiKey::Produce);
}

/// A one-broker mock cluster (and its bootstrap address) and twins
/// publishing `acct (id int PRIMARY KEY, v int)`.
pub(crate) async fn mock_and_acct() -> (MockCluster<'static, DefaultProducerContext>, String, Twins)
{
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let twins = Twins::start(
        &default_bin(),
        "CREATE TABLE acct (id int PRIMARY KEY, v int)",
    )
    .await;
    (mock, brokers, twins)
}

/// Inserts `(i, v)` into blue's acct for each `i`, one transaction each.
pub(crate) async fn insert_each(twins: &Twins, ids: std::ops::RangeInclusive<i32>, v: i32) {
    for i in ids {
        twins
            .b
            .execute("INSERT INTO acct VALUES ($1, $2)", &[&i, &v])
            .await
            .unwrap();
    }
}

/// Rows 1..=10 inserted on blue (one transaction) and applied to green.
pub(crate) async fn ten_rows_on_green(twins: &Twins) {
    twins
        .b
        .batch_execute("INSERT INTO acct SELECT i, 0 FROM generate_series(1, 10) i")
        .await
        .unwrap();
    twins.assert_converged(&["acct"], WAIT).await;
}

/// `teal stream` in this process from the twins to `brokers` (and green
/// unless `no_apply`), streaming once this returns.
pub(crate) async fn stream_with_kafka(
    twins: &Twins,
    brokers: &str,
    no_apply: bool,
) -> (
    CancellationToken,
    Arc<Monitor>,
    tokio::task::JoinHandle<Result<Arc<teal::apply::ApplyStats>, stream::StreamError>>,
) {
    stream_with_kafka_config(twins, KafkaConfig::new(brokers, "postgres"), no_apply).await
}

/// [`stream_with_kafka`] with a Kafka configuration of the test's own.
pub(crate) async fn stream_with_kafka_config(
    twins: &Twins,
    kafka: KafkaConfig,
    no_apply: bool,
) -> (
    CancellationToken,
    Arc<Monitor>,
    tokio::task::JoinHandle<Result<Arc<teal::apply::ApplyStats>, stream::StreamError>>,
) {
    let mut config = twins.config();
    config.kafka = Some(kafka);
    config.no_apply = no_apply;
    // Exact record counts: no ledger records in the transactions topic.
    config.apply.ledger = false;
    stream_with(twins, config).await
}

/// `teal stream` in this process with `config`, streaming once this returns.
pub(crate) async fn stream_with(
    twins: &Twins,
    config: stream::StreamConfig,
) -> (
    CancellationToken,
    Arc<Monitor>,
    tokio::task::JoinHandle<Result<Arc<teal::apply::ApplyStats>, stream::StreamError>>,
) {
    let shutdown = CancellationToken::new();
    let monitor = Arc::new(Monitor::new("teal_slot"));
    let running = tokio::spawn(stream::run_monitored(
        config,
        shutdown.clone(),
        Arc::clone(&monitor),
    ));
    twins.wait_streaming().await;
    (shutdown, monitor, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_kafka_in_commit_order_with_transaction_records() {
    init_logging();
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let bin = default_bin();
    let twins = Twins::start(
        &bin,
        "CREATE TABLE acct (id int PRIMARY KEY, balance numeric, ok boolean, doc jsonb, memo text);
         CREATE TABLE log (at int, line text);
         ALTER TABLE log REPLICA IDENTITY FULL;
         CREATE TABLE audited (id int PRIMARY KEY, v int);
         ALTER TABLE audited REPLICA IDENTITY FULL;",
    )
    .await;
    let (shutdown, monitor, running) = stream_with_kafka(&twins, &brokers, false).await;
    // REPLICA IDENTITY FULL with a primary key: records keyed by the
    // primary key (from blue's catalog), a key change by the old key.
    twins
        .b
        .batch_execute(
            "INSERT INTO audited VALUES (1, 0), (2, 0);
             UPDATE audited SET v = 5 WHERE id = 1;
             UPDATE audited SET id = 3 WHERE id = 2;
             DELETE FROM audited WHERE id = 1;",
        )
        .await
        .unwrap();

    twins
        .b
        .batch_execute(
            "BEGIN;
             INSERT INTO acct SELECT i, i * 10.5, i % 2 = 0, '{\"n\": 1}', (SELECT string_agg(md5(i || ':' || g), '') FROM generate_series(1, 300) g)
               FROM generate_series(1, 3) i;
             INSERT INTO log VALUES (1, 'opened');
             COMMIT;
             UPDATE acct SET balance = balance + 1 WHERE id = 2;
             BEGIN;
             DELETE FROM acct WHERE id = 3;
             UPDATE acct SET id = 10 WHERE id = 1;
             UPDATE log SET line = 'changed' WHERE at = 1;
             COMMIT;
             TRUNCATE log;
             INSERT INTO log VALUES (2, 'after truncate');",
        )
        .await
        .unwrap();
    twins
        .assert_converged(&["acct", "log", "audited"], WAIT)
        .await;
    // The slot is confirmed only once Kafka holds everything.
    twins
        .wait_slot_confirmed("the slot was not confirmed after Kafka acknowledged")
        .await;
    let b2 = brokers.clone();
    let audited = tokio::task::spawn_blocking(move || read_topic(&b2, "teal.public.audited", 6))
        .await
        .unwrap();
    let mut audited: Vec<(Value, Value)> = audited
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .collect();
    audited.sort_by_key(|(_, v)| v["source"]["lsn"].as_u64());
    let keys: Vec<(&str, &Value)> = audited
        .iter()
        .map(|(k, v)| (v["op"].as_str().unwrap(), k))
        .collect();
    let (one, two) = (
        serde_json::json!({ "id": 1 }),
        serde_json::json!({ "id": 2 }),
    );
    assert_eq!(
        keys,
        [
            ("c", &one),
            ("c", &two),
            ("u", &one),
            ("u", &two),
            ("d", &one)
        ],
        "FULL identity tables are keyed by their primary key"
    );

    let (b2, topic) = (brokers.clone(), "teal.public.acct");
    // 3 inserts, 1 update, delete + tombstone, key-changing update.
    let acct = tokio::task::spawn_blocking(move || read_topic(&b2, topic, 7))
        .await
        .unwrap();
    // Commit order within each partition: source.lsn never goes back.
    for partition in &acct {
        let lsns: Vec<u64> = partition
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(_, v)| v["source"]["lsn"].as_u64().unwrap())
            .collect();
        assert!(lsns.windows(2).all(|w| w[0] <= w[1]), "{lsns:?}");
    }
    let mut all: Vec<(Value, Value)> = acct.into_iter().flatten().collect();
    let tombstones = all.iter().filter(|(_, v)| v.is_null()).count();
    assert_eq!(tombstones, 1, "one tombstone after the delete");
    all.retain(|(_, v)| !v.is_null());
    all.sort_by_key(|(_, v)| v["source"]["lsn"].as_u64());
    let ops: Vec<&str> = all.iter().map(|(_, v)| v["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["c", "c", "c", "u", "d", "u"]);
    let (key, first) = &all[0];
    assert_eq!(key, &serde_json::json!({ "id": 1 }));
    assert_eq!(first["after"]["balance"], "10.5");
    assert_eq!(first["after"]["ok"], false);
    assert_eq!(first["after"]["doc"], serde_json::json!({ "n": 1 }));
    assert_eq!(first["source"]["connector"], "postgresql");
    assert_eq!(first["source"]["db"], "postgres");
    assert_eq!(first["source"]["table"], "acct");
    assert_eq!(first["transaction"]["total_order"], 1);
    // The update of id 2 leaves the TOASTed memo out: the placeholder.
    assert_eq!(all[3].1["after"]["id"], 2);
    assert_eq!(all[3].1["after"]["balance"], "22.0");
    assert_eq!(all[3].1["after"]["memo"], teal::sink::envelope::UNAVAILABLE);
    assert_eq!(all[4].1["before"], serde_json::json!({ "id": 3 }));
    // The key change: keyed by the old key, with the new row after.
    assert_eq!(all[5].0, serde_json::json!({ "id": 1 }));
    assert_eq!(all[5].1["after"]["id"], 10);

    let b2 = brokers.clone();
    let log = tokio::task::spawn_blocking(move || read_topic(&b2, "teal.public.log", 4))
        .await
        .unwrap();
    assert!(
        log.iter().flatten().all(|(k, _)| k.is_null()),
        "no primary key, no key"
    );
    let mut log: Vec<Value> = log.into_iter().flatten().map(|(_, v)| v).collect();
    log.sort_by_key(|v| v["source"]["lsn"].as_u64());
    let ops: Vec<&str> = log.iter().map(|v| v["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["c", "u", "t", "c"]);
    assert_eq!(
        log[1]["before"]["line"], "opened",
        "FULL identity: whole old row"
    );

    // Transactions: BEGIN and END per transaction, END counting per table.
    // (Statements sent in one simple query outside BEGIN share an implicit
    // transaction: three transactions in all, after the audited one.)
    let b2 = brokers.clone();
    let txns = tokio::task::spawn_blocking(move || read_topic(&b2, "teal.transactions", 8))
        .await
        .unwrap();
    let txns: Vec<Value> = txns.into_iter().flatten().map(|(_, v)| v).collect();
    let ends: Vec<&Value> = txns.iter().filter(|v| v["status"] == "END").collect();
    assert_eq!(ends.len(), 4);
    assert_eq!(txns.iter().filter(|v| v["status"] == "BEGIN").count(), 4);
    let first_end = ends
        .iter()
        .find(|e| e["event_count"] == 4)
        .expect("the first transaction: 3 acct + 1 log");
    let collections = first_end["data_collections"].as_array().unwrap();
    assert!(
        collections
            .contains(&serde_json::json!({ "data_collection": "public.acct", "event_count": 3 }))
    );
    assert!(
        collections
            .contains(&serde_json::json!({ "data_collection": "public.log", "event_count": 1 }))
    );
    assert_eq!(monitor.kafka.acknowledged(), 7 + 4 + 6 + 8);

    let metrics = monitor.metrics_text();
    crate::monitor::check_exposition(&metrics);
    for name in [
        "teal_kafka_records_acknowledged_total{slot=\"teal_slot\",topic=\"teal.public.acct\"} 7",
        "teal_kafka_records_produced_total{slot=\"teal_slot\",topic=\"teal.transactions\"} 8",
        "teal_kafka_records_failed_total{slot=\"teal_slot\",topic=\"teal.public.log\"} 0",
        "teal_kafka_delivery_seconds_count{slot=\"teal_slot\"} 25",
        "teal_kafka_lag_bytes{slot=\"teal_slot\"} 0",
    ] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }

    shutdown.cancel();
    running.await.unwrap().expect("stream stops cleanly");
}

/// The slot's confirmed LSN on blue.
pub(crate) async fn confirmed(twins: &Twins) -> u64 {
    let lsn: String = twins
        .b
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'teal_slot'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    lsn.parse::<teal::lsn::Lsn>().unwrap().0
}

/// [`read_until_quiet`] off the runtime's threads.
pub(crate) async fn records_until_quiet(
    brokers: &str,
    topic: &str,
    quiet: Duration,
) -> Vec<(Value, Value)> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_until_quiet(&brokers, &topic, quiet))
        .await
        .unwrap()
}

/// Every record of `topic` until none arrived for `quiet`: (key, value).
fn read_until_quiet(brokers: &str, topic: &str, quiet: Duration) -> Vec<(Value, Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "teal-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for p in 0..metadata.topics()[0].partitions().len() as i32 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("a record");
            let parse = |b: Option<&[u8]>| {
                b.map_or(Value::Null, |b| serde_json::from_slice(b).expect("JSON"))
            };
            out.push((parse(m.key()), parse(m.payload())));
            last = Instant::now();
        }
    }
    out
}

/// A tansu broker (Kafka protocol, in memory) on a free port; killed on drop.
pub(crate) struct Tansu {
    child: std::process::Child,
    pub(crate) addr: String,
}

impl Tansu {
    pub(crate) fn start() -> Tansu {
        let bin = std::env::var_os("TEAL_TANSU")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tansu/tansu")
            });
        assert!(
            bin.is_file(),
            "no tansu broker at {}: run scripts/fetch-tansu (or set TEAL_TANSU)",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu starts");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Tansu { child, addr }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_a_real_broker() {
    init_logging();
    let broker = Tansu::start();
    let twins = Twins::start(
        &default_bin(),
        "CREATE TABLE acct (id int PRIMARY KEY, v int); CREATE TABLE log (line text)",
    )
    .await;
    let mut config = twins.config();
    config.kafka = Some(KafkaConfig::new(broker.addr.clone(), "postgres"));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(stream::run(config, shutdown.clone()));
    twins.wait_streaming().await;
    twins
        .b
        .batch_execute(
            "INSERT INTO acct SELECT i, 0 FROM generate_series(1, 5) i;
             INSERT INTO log VALUES ('a');",
        )
        .await
        .unwrap();
    twins
        .b
        .batch_execute("UPDATE acct SET v = 1 WHERE id = 2")
        .await
        .unwrap();
    twins
        .b
        .batch_execute("DELETE FROM acct WHERE id = 5; TRUNCATE log")
        .await
        .unwrap();
    twins.assert_converged(&["acct", "log"], WAIT).await;
    twins
        .wait_slot_confirmed("the broker did not acknowledge")
        .await;

    let addr = broker.addr.clone();
    let acct = tokio::task::spawn_blocking(move || read_topic(&addr, "teal.public.acct", 8))
        .await
        .unwrap();
    let mut acct: Vec<Value> = acct
        .into_iter()
        .flatten()
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
        .collect();
    acct.sort_by_key(|v| v["source"]["lsn"].as_u64());
    let ops: Vec<&str> = acct.iter().map(|v| v["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["c", "c", "c", "c", "c", "u", "d"]);
    assert_eq!(acct[5]["after"], serde_json::json!({ "id": 2, "v": 1 }));
    assert_eq!(acct[6]["before"], serde_json::json!({ "id": 5 }));
    let addr = broker.addr.clone();
    let txns = tokio::task::spawn_blocking(move || read_topic(&addr, "teal.transactions", 6))
        .await
        .unwrap();
    let ends: Vec<Value> = txns
        .into_iter()
        .flatten()
        .map(|(_, v)| v)
        .filter(|v| v["status"] == "END")
        .collect();
    let mut counts: Vec<u64> = ends
        .iter()
        .map(|e| e["event_count"].as_u64().unwrap())
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        [1, 2, 6],
        "END records count each transaction's events"
    );
    shutdown.cancel();
    running.await.unwrap().expect("stream stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_only_without_green() {
    init_logging();
    // The flag needs brokers, and then no --target.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .args(["stream", "--source", "host=127.0.0.1 port=1", "--slot", "s"])
        .args(["--publication", "p", "--no-apply"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("give --kafka-brokers"),
        "{stderr}"
    );

    let (_mock, brokers, twins) = mock_and_acct().await;
    let (shutdown, monitor, running) = stream_with_kafka(&twins, &brokers, true).await;
    twins
        .b
        .batch_execute("INSERT INTO acct SELECT i, i FROM generate_series(1, 20) i")
        .await
        .unwrap();
    twins
        .wait_slot_confirmed("Kafka alone confirms the slot")
        .await;
    let b2 = brokers.clone();
    let records = tokio::task::spawn_blocking(move || read_topic(&b2, "teal.public.acct", 20))
        .await
        .unwrap();
    assert_eq!(records.into_iter().flatten().count(), 20);
    // Green was never touched: no rows, not even teal's schema.
    let (rows, schema): (i64, Option<String>) = {
        let r = twins
            .g
            .query_one(
                "SELECT (SELECT count(*) FROM acct), to_regnamespace('teal')::text",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((rows, schema), (0, None));
    let status = monitor.status_json();
    assert_eq!(status["state"], "streaming");
    assert_eq!(
        status["lag_bytes"], 0,
        "lag follows Kafka's acknowledgements: {status}"
    );
    shutdown.cancel();
    running.await.unwrap().expect("stream stops cleanly");
}

/// Issue 19.4: --kafka-property is repeatable and its values may hold
/// commas (it used to split on them, cutting a password and printing part
/// of it); a malformed property is named without showing its value.
#[test]
fn kafka_property_values_keep_their_commas_and_stay_secret() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .args(["stream", "--source", "host=127.0.0.1 port=1", "--slot", "s"])
        .args(["--publication", "p", "--no-apply"])
        .args(["--kafka-brokers", "127.0.0.1:1"])
        .args(["--kafka-property", "sasl.password=hun,ter2"])
        .args(["--kafka-property", "hunter3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("invalid --kafka-property: a property is not key=value"),
        "the comma-valued property passed, the malformed one is named: {stderr}"
    );
    for secret in ["hun", "ter2", "hunter3"] {
        assert!(!stderr.contains(secret), "{secret} in: {stderr}");
    }
}

/// Issue 19.11: topic names are escaped (README's rule), so `a.b` + `c`
/// and `a` + `b.c` get topics of their own, and a name with a space or a
/// non-ASCII letter gets one Kafka accepts (delivery failed forever, as
/// "transient"); tables whose topics Kafka would still take for one stop
/// teal at start, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_names_are_escaped_and_collisions_refused_at_start() {
    init_logging();
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let twins = Twins::start(
        &default_bin(),
        r#"CREATE SCHEMA "a.b"; CREATE SCHEMA a;
           CREATE TABLE "a.b".c (id int PRIMARY KEY);
           CREATE TABLE a."b.c" (id int PRIMARY KEY);
           CREATE TABLE "Order Items" (id int PRIMARY KEY);
           CREATE TABLE "café" (id int PRIMARY KEY);"#,
    )
    .await;
    let (shutdown, _monitor, running) = stream_with_kafka(&twins, &brokers, false).await;
    twins
        .b
        .batch_execute(
            r#"INSERT INTO "a.b".c VALUES (1); INSERT INTO a."b.c" VALUES (2), (3);
               INSERT INTO "Order Items" VALUES (4); INSERT INTO "café" VALUES (5);"#,
        )
        .await
        .unwrap();
    twins.wait_slot_confirmed("Kafka holds every record").await;
    for (topic, ids) in [
        ("teal.a-2Eb.c", vec![1]),
        ("teal.a.b-2Ec", vec![2, 3]),
        ("teal.public.Order-20Items", vec![4]),
        ("teal.public.caf-C3-A9", vec![5]),
    ] {
        let (b, n) = (brokers.clone(), ids.len());
        let records = tokio::task::spawn_blocking(move || read_topic(&b, topic, n))
            .await
            .unwrap();
        let got: Vec<i64> = records
            .into_iter()
            .flatten()
            .map(|(key, _)| key["id"].as_i64().expect("an id key"))
            .collect();
        assert_eq!(got, ids, "{topic}");
    }
    shutdown.cancel();
    running.await.unwrap().expect("stream stops cleanly");

    // Kafka refuses topics that differ only in '.' and '_'.
    twins
        .b
        .batch_execute("CREATE SCHEMA x_y; CREATE SCHEMA x; CREATE TABLE x_y.z (id int); CREATE TABLE x.y_z (id int)")
        .await
        .unwrap();
    let mut config = twins.config();
    config.kafka = Some(KafkaConfig::new(&brokers, "postgres"));
    let stopped = tokio::time::timeout(
        WAIT,
        stream::run_monitored(
            config,
            CancellationToken::new(),
            Arc::new(Monitor::new("teal_slot")),
        ),
    )
    .await
    .expect("teal stops by itself, without retrying");
    let err = crate::support::report(&stopped.expect_err("a collision"));
    assert!(
        err.contains(r#"no Kafka topic for table "x_y"."z""#)
            && err.contains("teal.x_y.z collides with teal.x.y_z")
            && err.contains(r#"table "x"."y_z""#),
        "{err}"
    );
}

/// `--kafka-no-tombstones`, `--kafka-topic-prefix` and
/// `--kafka-transactions-topic` end to end: a delete is one record with no
/// tombstone after it, on the prefix's topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tombstones_and_custom_topic_names() {
    init_logging();
    let (_mock, brokers, twins) = mock_and_acct().await;
    let mut config = twins.config();
    let mut kafka = KafkaConfig::new(brokers.clone(), "postgres");
    kafka.tombstones = false;
    kafka.topic_prefix = "bank".into();
    kafka.transactions_topic = Some("bank_txns".into());
    config.kafka = Some(kafka);
    let running = crate::support::running::Running::start(&twins, config).await;
    twins
        .b
        .batch_execute("INSERT INTO acct VALUES (1, 1), (2, 2); DELETE FROM acct WHERE id = 1")
        .await
        .unwrap();
    twins.wait_slot_confirmed("Kafka holds every record").await;
    let b = brokers.clone();
    let records = tokio::task::spawn_blocking(move || read_topic(&b, "bank.public.acct", 3))
        .await
        .unwrap();
    let ops: Vec<&str> = records
        .iter()
        .flatten()
        .map(|(_, v)| {
            v["op"]
                .as_str()
                .expect("no tombstone: every value is a change")
        })
        .collect();
    assert_eq!(ops.iter().filter(|op| **op == "d").count(), 1, "{ops:?}");
    let b = brokers.clone();
    let txns = tokio::task::spawn_blocking(move || read_topic(&b, "bank_txns", 2))
        .await
        .unwrap();
    assert_eq!(txns.into_iter().flatten().count(), 2, "BEGIN and END");
    running.stop().await;
}

/// Issue 18.4: `--tables` / `--exclude-tables` govern the stream, green and
/// Kafka alike (they limited only teal sync's copy: the stream still
/// applied the excluded tables' changes, which then hit update_missing);
/// what they leave out is counted. A `--tables` entry naming no published
/// table is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_selection_governs_stream_green_and_kafka() {
    init_logging();
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let twins = Twins::start(
        &default_bin(),
        "CREATE TABLE kept (id int PRIMARY KEY, v int);
         CREATE TABLE left_out (id int PRIMARY KEY, v int);
         CREATE SCHEMA other; CREATE TABLE other.kept (id int PRIMARY KEY);",
    )
    .await;
    // Blue holds rows of left_out that green never got.
    twins
        .b
        .batch_execute("INSERT INTO left_out SELECT g, 0 FROM generate_series(1, 10) g")
        .await
        .unwrap();
    let mut config = twins.config();
    config.assembler.tables = teal::config::TableSelection {
        include: vec!["kept".into(), "left_out".into()],
        exclude: vec!["public.left_out".into(), "other.kept".into()],
    };
    config.kafka = Some(KafkaConfig::new(brokers.clone(), "postgres"));
    let running = crate::support::running::Running::start(&twins, config.clone()).await;
    twins
        .b
        .batch_execute(
            "INSERT INTO kept SELECT g, g FROM generate_series(1, 5) g;
             UPDATE left_out SET v = 1;
             DELETE FROM left_out WHERE id > 8;
             INSERT INTO other.kept VALUES (1);
             TRUNCATE left_out, other.kept;
             UPDATE kept SET v = -v WHERE id = 1",
        )
        .await
        .unwrap();
    twins.assert_converged(&["kept"], WAIT).await;
    twins
        .wait_slot_confirmed("green and Kafka have it all")
        .await;
    // Green: nothing of the other tables (no conflict either).
    assert_eq!(int8(&twins.g, "SELECT count(*) FROM left_out").await, 0);
    assert_eq!(int8(&twins.g, "SELECT count(*) FROM other.kept").await, 0);
    assert_eq!(
        int8(&twins.g, "SELECT count(*) FROM teal.conflicts").await,
        0
    );
    // Counted: 10 updates, 2 deletes, 1 insert, 1 truncate (of both).
    let metrics = running.monitor.metrics_text();
    assert!(
        metrics.contains("teal_source_skipped_changes_total{slot=\"teal_slot\"} 14"),
        "{metrics}"
    );
    // Kafka: kept's 6 records, nothing for the others.
    let b = brokers.clone();
    let kept = tokio::task::spawn_blocking(move || read_topic(&b, "teal.public.kept", 6))
        .await
        .unwrap();
    assert_eq!(kept.into_iter().flatten().count(), 6);
    let b = brokers.clone();
    let topics: Vec<String> = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("metadata");
        metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .collect()
    })
    .await
    .unwrap();
    assert!(
        !topics
            .iter()
            .any(|t| t == "teal.public.left_out" || t == "teal.other.kept"),
        "{topics:?}"
    );
    running.stop().await;

    // A --tables entry that names no published table.
    let mut typo = config;
    typo.assembler.tables.include = vec!["kept".into(), "kpet".into()];
    let err = stream::run_monitored(
        typo,
        CancellationToken::new(),
        Arc::new(Monitor::new("teal_slot")),
    )
    .await
    .expect_err("a typo is refused");
    let err = crate::support::report(&err);
    assert!(
        err.contains("--tables") && err.contains("\"kpet\""),
        "{err}"
    );
}

/// With Kafka on, each ledger row green commits reaches the transactions
/// topic as a LEDGER record with every field its hash covers, once and in
/// chain order (also when Kafka lags apply), and the chain's head gets
/// there (at once or with the next transaction), with and without Kafka
/// transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_head_reaches_the_transactions_topic() {
    init_logging();
    for exactly_once in [false, true] {
        let (mock, brokers, twins) = mock_and_acct().await;
        let mut config = twins.config();
        let mut kafka = KafkaConfig::new(brokers.clone(), "postgres");
        kafka.exactly_once = exactly_once;
        config.kafka = Some(kafka);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(stream::run(config, shutdown.clone()));
        twins.wait_streaming().await;
        insert_each(&twins, 1..=20, 0).await;
        twins.assert_converged(&["acct"], WAIT).await;
        // Kafka lags apply: green appends rows (a batch each) while Kafka
        // takes nothing; then Kafka gets them all.
        kafka_down(&mock);
        for i in 21..=30 {
            insert_each(&twins, i..=i, 0).await;
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
        twins.assert_converged(&["acct"], WAIT).await;
        kafka_up(&mock);
        let green = green_ledger(&twins).await;
        assert!(!green.is_empty(), "green appended ledger rows");
        let head = green.last().unwrap()["sha256"].clone();
        // The head arrives with the next keepalive or transaction.
        let deadline = Instant::now() + WAIT;
        let published = loop {
            let ledger: Vec<(Value, Value)> =
                records_until_quiet(&brokers, "teal.transactions", Duration::from_secs(1))
                    .await
                    .into_iter()
                    .filter(|(_, v)| v["status"] == "LEDGER")
                    .collect();
            if ledger.iter().any(|(_, v)| v["sha256"] == head) {
                break ledger;
            }
            assert!(
                Instant::now() < deadline,
                "exactly_once {exactly_once}: head {head} not in Kafka: {ledger:#?}"
            );
            twins
                .b
                .execute("INSERT INTO acct VALUES (1000, 0) ON CONFLICT (id) DO UPDATE SET v = acct.v + 1", &[])
                .await
                .unwrap();
        };
        // The published records are green's chain from its first row, each
        // once and in order: none skipped while Kafka lags apply, none twice.
        let green = green_ledger(&twins).await;
        let published: Vec<Value> = published
            .into_iter()
            .map(|(key, mut value)| {
                assert_eq!(key, serde_json::json!({ "ledger": "teal_slot" }));
                value.as_object_mut().unwrap().remove("ts_ms");
                value
            })
            .collect();
        assert!(
            published.len() <= green.len() && published[..] == green[..published.len()],
            "exactly_once {exactly_once}: Kafka's LEDGER records {published:#?} are not green's chain {green:#?} from its start"
        );
        shutdown.cancel();
        running.await.unwrap().expect("stream stops cleanly");
    }
}

/// Green's ledger rows of teal_slot, as the LEDGER records carry them.
async fn green_ledger(twins: &Twins) -> Vec<Value> {
    let rows = twins
        .g
        .query(
            "SELECT first_lsn::text, last_lsn::text, transactions, changes, \
                    encode(batch_sha256, 'hex'), encode(prev_sha256, 'hex'), encode(sha256, 'hex') \
             FROM teal.ledger WHERE slot = 'teal_slot' ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "status": "LEDGER",
                "slot": "teal_slot",
                "first_lsn": r.get::<_, String>(0),
                "last_lsn": r.get::<_, String>(1),
                "transactions": r.get::<_, i64>(2),
                "changes": r.get::<_, i64>(3),
                "batch_sha256": r.get::<_, String>(4),
                "prev_sha256": r.get::<_, Option<String>>(5),
                "sha256": r.get::<_, String>(6),
            })
        })
        .collect()
}
