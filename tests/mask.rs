//! Masking (issue 22.1): `teal sync` and `teal stream` mask the same
//! columns the same way; no unmasked value reaches green, Kafka or
//! `teal.conflicts`; joins and unique keys survive; `teal verify` compares
//! blue's masked rows with green; rules that would merge values on a
//! unique column are refused at start.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use teal::apply::ConflictPolicy;
use teal::mask::{MaskConfig, MaskKey};
use teal::monitor::Monitor;
use teal::ops::sync::{self, SyncConfig};
use teal::sink::kafka::KafkaConfig;
use tokio_util::sync::CancellationToken;

use crate::support::cluster::default_bin;
use crate::support::tap::init_logging;
use crate::support::twins::Twins;
use crate::support::wait::until_row;

const WAIT: Duration = Duration::from_secs(60);
const KEY: &[u8] = b"a test key of thirty-two bytes!!";

const SCHEMA: &str = "
    CREATE TABLE customer (id int PRIMARY KEY, email text UNIQUE NOT NULL, name text,
                           ssn text, phone varchar(24), note text, born date);
    CREATE TABLE orders (id int PRIMARY KEY, customer_email text NOT NULL, amount int NOT NULL);";

fn rules(entries: &[&str]) -> MaskConfig {
    MaskConfig::parse(
        &entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>(),
        MaskKey::new(KEY).unwrap(),
    )
    .unwrap()
}

fn masks() -> MaskConfig {
    rules(&[
        "public.customer.email=hash-email",
        "public.customer.name=hash",
        "public.customer.ssn=redact",
        "public.customer.phone=hash-phone",
        "public.customer.born=null",
        "public.orders.customer_email=hash-email",
    ])
}

/// Customers `from..=to` and two orders each, on blue.
async fn customers(twins: &Twins, from: i32, to: i32) {
    twins
        .b
        .batch_execute(&format!(
            "INSERT INTO customer SELECT i, 'user' || i || '@example.org', 'Customer Name ' || i,
                    '123-45-' || lpad(i::text, 4, '0'), '+1 (555) 01' || lpad(i::text, 2, '0') || '-' || lpad(i::text, 4, '0'),
                    'note ' || i, date '1980-01-01' + i
             FROM generate_series({from}, {to}) i;
             INSERT INTO orders SELECT 2 * i + k, 'user' || i || '@example.org', i * 10 + k
             FROM generate_series({from}, {to}) i, generate_series(0, 1) k;"
        ))
        .await
        .unwrap();
}

/// Every raw value of blue's masked columns.
async fn raw_values(twins: &Twins) -> Vec<String> {
    let rows = twins
        .b
        .query(
            "SELECT email FROM customer UNION ALL SELECT name FROM customer
             UNION ALL SELECT ssn FROM customer UNION ALL SELECT phone FROM customer
             UNION ALL SELECT born::text FROM customer UNION ALL SELECT customer_email FROM orders",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

/// Fails naming the first raw value found in `text` (where: `what`).
fn assert_none_in(raw: &[String], text: &str, what: &str) {
    if let Some(v) = raw.iter().find(|v| text.contains(v.as_str())) {
        panic!("the unmasked value {v:?} reached {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_stream_kafka_conflicts_and_verify_see_only_masked_values() {
    init_logging();
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let twins = Twins::start(&default_bin(), SCHEMA).await;
    customers(&twins, 1, 200).await;

    let mut config = SyncConfig::new(twins.config());
    config.copy_workers = 2;
    let mask = Arc::new(masks());
    config.stream.assembler.mask = Some(Arc::clone(&mask));
    config.stream.apply.conflicts.default = ConflictPolicy::SourceWins;
    config.stream.kafka = Some(KafkaConfig::new(brokers.clone(), "postgres"));
    let shutdown = CancellationToken::new();
    let monitor = Arc::new(Monitor::new("teal_slot"));
    let running = tokio::spawn(sync::run(config, shutdown.clone(), Arc::clone(&monitor)));
    until_row(
        &twins.g,
        "SELECT 1 FROM teal.sync WHERE slot = 'teal_slot' AND finished_at IS NOT NULL",
        &[],
        WAIT,
        "the copy never finished",
    )
    .await;
    twins.wait_streaming().await;

    // Streamed: new customers, a changed email (its orders follow), deletes,
    // and a conflict (green holds id 5000 already; blue's row wins).
    twins
        .g
        .batch_execute(
            "INSERT INTO customer (id, email, name) VALUES (5000, 'green-only@example.net', 'Green Row')",
        )
        .await
        .unwrap();
    customers(&twins, 201, 260).await;
    twins
        .b
        .batch_execute(
            "UPDATE customer SET email = 'moved' || id || '@example.com', name = name || ' Jr' WHERE id <= 10;
             UPDATE orders SET customer_email = 'moved' || (id / 2) || '@example.com' WHERE id / 2 <= 10;
             DELETE FROM orders WHERE id / 2 BETWEEN 250 AND 255;
             DELETE FROM customer WHERE id BETWEEN 250 AND 255;
             INSERT INTO customer VALUES (5000, 'conflict@example.org', 'Conflict Name', '999-99-9999',
                                          '+44 20 7946 0958', 'n', date '1999-09-09');",
        )
        .await
        .unwrap();
    twins
        .wait_slot_confirmed("green and Kafka hold every change")
        .await;

    // Nothing unmasked on green, in its conflict log, or in Kafka.
    let raw = raw_values(&twins).await;
    let green_text: Vec<String> = twins
        .g
        .query(
            "SELECT t::text FROM customer t UNION ALL SELECT t::text FROM orders t
             UNION ALL SELECT coalesce(source_row::text, '') || coalesce(target_row::text, '') || key::text FROM teal.conflicts",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_none_in(&raw, &green_text.join("\n"), "green");
    let conflicts: i64 = twins
        .g
        .query_one("SELECT count(*) FROM teal.conflicts", &[])
        .await
        .unwrap()
        .get(0);
    assert!(conflicts >= 1, "the conflict on id 5000 was logged");
    let kafka =
        crate::kafka::records_until_quiet(&brokers, "teal.public.customer", Duration::from_secs(2))
            .await;
    assert!(
        kafka.len() >= 60,
        "streamed changes reached Kafka: {}",
        kafka.len()
    );
    let kafka_text: Vec<String> = kafka.iter().map(|(k, v)| format!("{k} {v}")).collect();
    assert_none_in(&raw, &kafka_text.join("\n"), "Kafka");

    // Same rows, masked; joins and unique keys survive; shapes are kept.
    let twins = &twins;
    let count = |sql: &'static str| async move {
        let b: i64 = twins.b.query_one(sql, &[]).await.unwrap().get(0);
        let g: i64 = twins.g.query_one(sql, &[]).await.unwrap().get(0);
        (b, g)
    };
    let (b, g) = count("SELECT count(*) FROM customer").await;
    assert_eq!(b, g);
    let (b, g) =
        count("SELECT count(*) FROM orders o JOIN customer c ON c.email = o.customer_email").await;
    // 260 customers, two orders each, 12 orders deleted.
    assert_eq!(
        (b, g),
        (508, 508),
        "every order still finds its customer by email"
    );
    let (b, g) = count("SELECT count(DISTINCT email) FROM customer").await;
    assert_eq!(b, g, "no two emails became one");
    let shapes: Vec<(String, String, Option<String>, Option<String>)> = twins
        .g
        .query(
            "SELECT email, phone, ssn, born::text FROM customer WHERE id = 42",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let (email, phone, ssn, born) = &shapes[0];
    assert!(email.ends_with(".org") && email.contains('@'), "{email}");
    assert_eq!(phone.len(), "+1 (555) 0142-0042".len(), "{phone}");
    assert!(phone.starts_with("+") && phone.contains(") "), "{phone}");
    assert_eq!(ssn.as_deref(), Some("***"));
    assert_eq!(born, &None);

    // teal verify compares blue's masked rows with green: equal, then a
    // changed row on green is named by its key.
    let mut verify = teal::ops::verify::VerifyConfig {
        source: twins.blue.url().parse().unwrap(),
        target: twins.green.url().parse().unwrap(),
        slot: "teal_slot".into(),
        publications: vec!["teal_pub".into()],
        tables: Default::default(),
        schema: "teal".into(),
        invariants: Vec::new(),
        show_values: false,
        workers: 2,
        chunk_rows: 1000,
        mask: Some(Arc::clone(&mask)),
    };
    let progress = teal::progress::VerifyProgress::new();
    let report = teal::ops::verify::run(&verify, &progress).await.unwrap();
    assert_eq!(report.equal, Some(true), "{report:#?}");
    assert!(report.tables.iter().all(|t| t.masked));
    twins
        .g
        .batch_execute("UPDATE customer SET note = 'changed on green' WHERE id = 7; DELETE FROM orders WHERE id = 100")
        .await
        .unwrap();
    let report = teal::ops::verify::run(&verify, &progress).await.unwrap();
    assert_eq!(report.equal, Some(false));
    let differences: Vec<(String, String, &str)> = report
        .tables
        .iter()
        .flat_map(|t| {
            t.differences
                .iter()
                .map(|d| (t.table.clone(), d.key.to_string(), d.kind))
        })
        .collect();
    assert_eq!(
        differences,
        [
            (
                "public.customer".to_owned(),
                r#"{"id":"7"}"#.to_owned(),
                "different"
            ),
            (
                "public.orders".to_owned(),
                r#"{"id":"100"}"#.to_owned(),
                "missing_on_green"
            ),
        ]
    );
    // Without the masks, every masked row differs: the rules are what
    // makes them equal.
    verify.mask = None;
    let unmasked = teal::ops::verify::run(&verify, &progress).await.unwrap();
    let customer = unmasked
        .tables
        .iter()
        .find(|t| t.table == "public.customer")
        .unwrap();
    assert!(
        customer.differences_total > 200,
        "{}",
        customer.differences_total
    );
    shutdown.cancel();
    running.await.unwrap().expect("sync stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_that_merge_values_or_do_not_fit_are_refused_at_start() {
    init_logging();
    let twins = Twins::start(&default_bin(), SCHEMA).await;
    for (rule, says) in [
        (
            "public.customer.email=redact",
            "part of a unique index or the primary key",
        ),
        (
            "public.customer.id=constant:1",
            "part of a unique index or the primary key",
        ),
        ("public.customer.note=null", ""),
        ("public.customer.born=hash", "cannot mask its type"),
        ("public.customer.id=hash-email", "cannot mask its type"),
        ("public.customer.nope=hash", "no such column"),
        ("public.missing.x=hash", "no such table"),
    ] {
        let mut config = twins.config();
        config.assembler.mask = Some(Arc::new(rules(&[rule])));
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(teal::ops::stream::run(config, shutdown.clone()));
        if says.is_empty() {
            // Accepted: it streams (and is stopped).
            twins.wait_streaming().await;
            shutdown.cancel();
            run.await.unwrap().expect("a fitting rule streams");
            continue;
        }
        let e = tokio::time::timeout(WAIT, run)
            .await
            .expect("refused at once")
            .unwrap()
            .expect_err(rule);
        let message = teal::error::Report(&e).to_string();
        assert!(message.contains(says), "{rule}: {message}");
        let column = rule.split('=').next().unwrap().rsplit('.').next().unwrap();
        assert!(
            message.contains(column),
            "{rule} names its column: {message}"
        );
    }
    // Nothing was applied under a refused rule.
    let n: i64 = twins
        .g
        .query_one("SELECT count(*) FROM customer", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// The binary: the key only from the environment or a file; --binary and
/// masking do not go together. (Exit status 1: a setting teal refuses.)
#[test]
fn the_key_never_comes_from_the_command_line() {
    let teal = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
            .env_clear()
            .envs(env.iter().copied())
            .args([
                "stream",
                "--source",
                "postgresql://teal@127.0.0.1:1/app",
                "--target",
                "postgresql://teal@127.0.0.1:1/app",
                "--slot",
                "s",
                "--publication",
                "p",
                "--mask",
                "public.customer.email=hash-email",
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, said) = teal(&[], &[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("TEAL_MASK_KEY") && said.contains("--mask"),
        "{said}"
    );
    let (code, said) = teal(&["--mask-key", "0123456789abcdef0123"], &[]);
    assert_eq!(code, Some(2), "a usage error: {said}");
    assert!(said.contains("--mask-key"), "no such flag: {said}");
    let (code, said) = teal(&["--binary"], &[("TEAL_MASK_KEY", "0123456789abcdef0123")]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("--binary") && said.contains("text format"),
        "{said}"
    );
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("key");
    std::fs::write(&short, "tooshort\n").unwrap();
    let (code, said) = teal(&["--mask-key-file", short.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("at least 16") && !said.contains("tooshort"),
        "{said}"
    );
}

/// `teal tail` prints masked values too (the same capture stage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_masked_values() {
    use std::io::BufRead;
    let cluster = crate::support::cluster::Cluster::start(&default_bin());
    let client = cluster.client().await;
    client
        .batch_execute(
            "CREATE TABLE c (id int PRIMARY KEY, email text); CREATE PUBLICATION p FOR ALL TABLES;",
        )
        .await
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .env("TEAL_MASK_KEY", std::str::from_utf8(KEY).unwrap())
        .args([
            "tail",
            "--source",
            &cluster.cli_url(),
            "--slot",
            "s",
            "--publication",
            "p",
        ])
        .args([
            "--create-slot",
            "--format",
            "json",
            "--mask",
            "public.c.email=hash-email",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    until_row(
        &client,
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = 's' AND active",
        &[],
        WAIT,
        "tail never started",
    )
    .await;
    client
        .batch_execute("INSERT INTO c VALUES (1, 'Private.Person@example.org')")
        .await
        .unwrap();
    let mut printed = String::new();
    while !printed.contains("\"commit\"") {
        let line = rx.recv_timeout(WAIT).expect("tail printed the change");
        printed.push_str(&line);
        printed.push('\n');
    }
    // SAFETY: kill with a valid pid and signal number.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    child.wait().unwrap();
    assert!(
        !printed.to_lowercase().contains("private.person"),
        "{printed}"
    );
    assert!(
        !printed.contains("example.org"),
        "the domain label is masked too: {printed}"
    );
    assert!(
        printed.contains(".org"),
        "the top-level domain is kept: {printed}"
    );
}
