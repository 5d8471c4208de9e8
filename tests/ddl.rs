//! DDL in the stream (issue 22.2): `teal ddl install` on blue, a migration
//! run on blue while teal streams under load, green equal to blue with no
//! stop; an unsupported statement stops teal with the statement to run and
//! `teal ddl resolve` lets it go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::support::cluster::default_bin;
use crate::support::running::Running;
use crate::support::tap::init_logging;
use crate::support::twins::Twins;

const WAIT: Duration = Duration::from_secs(60);

fn teal(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .env("TEAL_LOG", "warn")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `teal ddl install` on the twins' blue for `teal_pub`.
fn install(twins: &Twins) {
    let (code, said) = teal(&[
        "ddl",
        "install",
        "--source",
        &twins.blue.cli_url(),
        "--publication",
        "teal_pub",
    ]);
    assert_eq!(code, Some(0), "{said}");
}

/// Columns (name, type, default, not null) and index definitions of the
/// public tables, as a side's catalog has them.
async fn shape(client: &tokio_postgres::Client) -> (Vec<String>, Vec<String>) {
    let columns = client
        .query(
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || coalesce(column_default, '') || ' ' || is_nullable
             FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let indexes = client
        .query(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (columns, indexes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_under_load_reaches_green_in_order() {
    init_logging();
    let twins = Twins::start(
        &default_bin(),
        "CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL);",
    )
    .await;
    twins
        .b
        .batch_execute("INSERT INTO acct SELECT i, 100 FROM generate_series(1, 2000) i")
        .await
        .unwrap();
    twins
        .g
        .batch_execute("INSERT INTO acct SELECT i, 100 FROM generate_series(1, 2000) i")
        .await
        .unwrap();
    install(&twins);
    let running = Running::start(&twins, twins.config()).await;

    // Load: transfers between accounts all along the migration.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, url) = (Arc::clone(&stop), twins.blue.url());
        tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            // A transfer can deadlock with the migration's bulk UPDATEs (rows
            // locked in a different order). The transfer checks first, so it
            // is the one rolled back, and retried as an application would.
            c.batch_execute("SET deadlock_timeout = '20ms'")
                .await
                .unwrap();
            let mut i = 0i32;
            while !stop.load(Ordering::Relaxed) {
                let (a, b) = (i % 2000 + 1, (i * 7) % 2000 + 1);
                match c
                    .batch_execute(&format!(
                        "BEGIN; UPDATE acct SET balance = balance - 1 WHERE id = {a};
                         UPDATE acct SET balance = balance + 1 WHERE id = {b}; COMMIT"
                    ))
                    .await
                {
                    Ok(()) => i += 1,
                    Err(e) if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
                        c.batch_execute("ROLLBACK").await.unwrap();
                    }
                    Err(e) => panic!("transfer: {e:?}"),
                }
            }
            i
        })
    };

    // The migration, one statement at a time as migration tools send it,
    // then a query string of several statements.
    let (m, conn) = tokio_postgres::connect(&twins.blue.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    m.batch_execute("SET deadlock_timeout = '1min'")
        .await
        .unwrap();
    for statement in [
        "ALTER TABLE acct ADD COLUMN note text DEFAULT 'none' NOT NULL",
        "UPDATE acct SET note = 'n' || id WHERE id <= 1000",
        "UPDATE acct SET note = 'm' || id WHERE id > 1000",
        "CREATE INDEX CONCURRENTLY acct_note ON acct (note)",
        "CREATE TABLE audit_log (id bigserial PRIMARY KEY, acct int NOT NULL, at timestamptz NOT NULL DEFAULT '2026-01-01')",
        "INSERT INTO audit_log (acct) SELECT id FROM acct WHERE id % 3 = 0",
        "ALTER TABLE acct RENAME COLUMN note TO memo",
        "ALTER TABLE acct ALTER COLUMN balance TYPE bigint",
        "COMMENT ON TABLE audit_log IS 'who touched what'",
        "CREATE TEMP TABLE scratch (x int)",
        "ALTER TABLE acct ADD COLUMN flag boolean; UPDATE acct SET flag = id < 10; CREATE INDEX acct_flag ON acct (flag); INSERT INTO audit_log (acct) VALUES (1)",
        "DROP INDEX CONCURRENTLY acct_note",
        "ALTER TABLE acct DROP COLUMN flag",
        "INSERT INTO audit_log (acct) VALUES (2)",
    ] {
        m.batch_execute(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e:?}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let transfers = writer.await.unwrap();
    assert!(
        transfers > 50,
        "writes ran during the migration: {transfers}"
    );
    twins.assert_converged(&["acct", "audit_log"], WAIT).await;
    assert_eq!(
        shape(&twins.g).await,
        shape(&twins.b).await,
        "green's tables and indexes are blue's"
    );
    assert!(!running.task.is_finished(), "no stop");
    let applied: Vec<String> = twins
        .g
        .query(
            "SELECT tag FROM teal.ddl WHERE how = 'applied' ORDER BY lsn",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        applied,
        [
            "ALTER TABLE",
            "CREATE INDEX",
            "CREATE TABLE",
            "ALTER TABLE",
            "ALTER TABLE",
            "COMMENT",
            "ALTER TABLE",
            "CREATE INDEX",
            "DROP INDEX",
            "ALTER TABLE"
        ],
        "every published statement once, the temporary table left out"
    );

    // Not supported: teal stops, naming the statement and the way on.
    twins
        .b
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('calm', 'tense'); ALTER TABLE acct ADD COLUMN mood mood",
        )
        .await
        .unwrap();
    let stopped = tokio::time::timeout(WAIT, running.task)
        .await
        .expect("teal stops")
        .unwrap()
        .expect_err("a stop");
    let said = teal::error::Report(&stopped).to_string();
    assert!(
        said.contains("CREATE TYPE")
            && said.contains("CREATE TYPE mood AS ENUM ('calm', 'tense')")
            && said.contains("teal ddl resolve"),
        "{said}"
    );
    let lsn = said
        .split("--lsn ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the LSN to resolve")
        .to_owned();
    twins
        .g
        .batch_execute("CREATE TYPE mood AS ENUM ('calm', 'tense')")
        .await
        .unwrap();
    let (code, said) = teal(&[
        "ddl",
        "resolve",
        "--target",
        &twins.green.cli_url(),
        "--slot",
        "teal_slot",
        "--lsn",
        &lsn,
    ]);
    assert_eq!(code, Some(0), "{said}");
    let running = Running::start(&twins, twins.config()).await;
    twins
        .b
        .batch_execute("UPDATE acct SET mood = 'tense' WHERE id = 5")
        .await
        .unwrap();
    twins.assert_converged(&["acct", "audit_log"], WAIT).await;
    assert_eq!(shape(&twins.g).await, shape(&twins.b).await);

    // Uninstalled: DDL no longer travels (green then stops at the difference).
    let (code, said) = teal(&["ddl", "uninstall", "--source", &twins.blue.cli_url()]);
    assert_eq!(code, Some(0), "{said}");
    let triggers: i64 = twins
        .b
        .query_one(
            "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'teal_ddl%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
    running.stop().await;
}

/// FOR TABLES IN SCHEMA: a table created in the published schema is
/// created on green and all its rows follow; a table in another schema,
/// and DDL on it, stay on blue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tables_of_a_schema_publication_arrive_with_all_their_rows() {
    init_logging();
    let twins = Twins::start(
        &default_bin(),
        "CREATE SCHEMA app; CREATE SCHEMA scratch; CREATE TABLE app.acct (id int PRIMARY KEY, v int);",
    )
    .await;
    twins
        .b
        .batch_execute(
            "DROP PUBLICATION teal_pub; CREATE PUBLICATION teal_pub FOR TABLES IN SCHEMA app",
        )
        .await
        .unwrap();
    install(&twins);
    let running = Running::start(&twins, twins.config()).await;
    for statement in [
        "INSERT INTO app.acct SELECT i, i FROM generate_series(1, 100) i",
        "CREATE TABLE app.orders (id int PRIMARY KEY, acct int NOT NULL, amount numeric(10,2))",
        "INSERT INTO app.orders SELECT i, i % 100 + 1, i / 10.0 FROM generate_series(1, 500) i",
        "CREATE TABLE scratch.tmp (x int); INSERT INTO scratch.tmp VALUES (1)",
        "ALTER TABLE scratch.tmp ADD COLUMN y int",
        "BEGIN; CREATE TABLE app.events (id bigserial PRIMARY KEY, what text); INSERT INTO app.events (what) SELECT 'e' || i FROM generate_series(1, 50) i; COMMIT",
        "ALTER TABLE app.orders ADD COLUMN note text",
        "UPDATE app.orders SET note = 'n' WHERE id <= 10",
    ] {
        twins
            .b
            .batch_execute(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    }
    twins
        .assert_converged(&["app.acct", "app.orders", "app.events"], WAIT)
        .await;
    let scratch: Option<String> = twins
        .g
        .query_one("SELECT to_regclass('scratch.tmp')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        scratch, None,
        "a table outside the publication stays on blue"
    );
    assert!(!running.task.is_finished(), "no stop");
    running.stop().await;
}

/// The trigger installs on every supported version (FOR TABLES IN SCHEMA
/// only from 15), sends a published statement and leaves an unpublished
/// one marked so, and never fails blue's DDL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_works_on_every_version() {
    init_logging();
    for major in [14, 15, 16, 17, 18] {
        let blue = crate::support::cluster::Cluster::start(&crate::support::cluster::bin(major));
        let b = blue.client().await;
        b.batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id int);
             CREATE PUBLICATION p FOR TABLE t;",
        )
        .await
        .unwrap();
        b.batch_execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
            .await
            .unwrap();
        let (code, said) = teal(&[
            "ddl",
            "install",
            "--source",
            &blue.cli_url(),
            "--publication",
            "p",
        ]);
        assert_eq!(code, Some(0), "PostgreSQL {major}: {said}");
        b.batch_execute(
            "ALTER TABLE t ADD COLUMN v text; ALTER TABLE other ADD COLUMN v text;
             CREATE INDEX ON t (v); DROP TABLE other;",
        )
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL {major}: blue's DDL failed: {e}"));
        let messages: Vec<serde_json::Value> = b
            .query(
                "SELECT data FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL,
                   'proto_version', '1', 'publication_names', 'p', 'messages', 'true')",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .filter_map(|r| {
                let data: Vec<u8> = r.get(0);
                // 'M', flags, LSN (8), prefix\0, length (4), content.
                let rest = data.strip_prefix(b"M")?.get(9..)?;
                let nul = rest.iter().position(|&b| b == 0)?;
                (&rest[..nul] == b"teal.ddl")
                    .then(|| serde_json::from_slice(rest.get(nul + 5..)?).ok())?
            })
            .collect();
        let seen: Vec<(String, bool)> = messages
            .iter()
            .map(|m| {
                (
                    m["tag"].as_str().unwrap().to_owned(),
                    m["published"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("ALTER TABLE".to_owned(), true),
                ("ALTER TABLE".to_owned(), false),
                ("CREATE INDEX".to_owned(), true),
                ("DROP TABLE".to_owned(), false),
            ],
            "PostgreSQL {major}"
        );
        assert!(
            messages[0]["statement"]
                .as_str()
                .unwrap()
                .contains("DROP TABLE other")
        );
        let (code, said) = teal(&["ddl", "uninstall", "--source", &blue.cli_url()]);
        assert_eq!(code, Some(0), "PostgreSQL {major}: {said}");
    }
}
