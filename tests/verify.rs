//! `teal verify` and `teal repair` (issue 20): the schema comparison, each
//! difference with the statement that fixes green; rows compared at an
//! exact point of the running stream under load, every differing key
//! named; repair; exit statuses; metrics.

use serde_json::Value;

use crate::support::cluster::default_bin;
use crate::support::twins::Twins;

const SCHEMA: &str = r#"
    CREATE TYPE mood AS ENUM ('sad', 'ok');
    CREATE TABLE acct (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2), m mood);
    CREATE TABLE orders (id bigserial PRIMARY KEY, acct int, code text);
    CREATE UNIQUE INDEX orders_code ON orders (code);
    CREATE TABLE log (at timestamptz, line text);
    ALTER TABLE log REPLICA IDENTITY FULL;
    CREATE TABLE gone (id int PRIMARY KEY, v text);
    CREATE TABLE not_published (id int);
"#;

/// `teal verify` (the binary): exit status and the JSON report.
fn verify(twins: &Twins) -> (i32, Value, String) {
    let (code, json, text) = verify_urls(
        &twins.blue.cli_url(),
        &twins.green.cli_url(),
        &["--exclude-tables", "not_published", "--format", "text"],
    );
    assert!(!json.is_null(), "no report: {text}");
    (code, json, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_differences_are_named_with_their_fix_and_the_fixes_work() {
    let twins = Twins::start(&default_bin(), SCHEMA).await;
    twins
        .b
        .batch_execute(
            "INSERT INTO orders (acct, code) SELECT g, 'c' || g FROM generate_series(1, 42) g",
        )
        .await
        .unwrap();
    // Green drifted: a column missing, one of another type, one NOT NULL
    // only on green, an extra NOT NULL column without default, no primary
    // key, another replica identity, a unique index blue lacks and one it
    // has missing, a sequence behind blue's, a table missing.
    twins
        .g
        .batch_execute(
            "ALTER TABLE acct DROP COLUMN m, ALTER COLUMN balance TYPE numeric(10,2), \
               ALTER COLUMN owner DROP NOT NULL;
             ALTER TABLE acct ALTER COLUMN balance SET NOT NULL;
             ALTER TABLE acct ADD COLUMN branch int NOT NULL;
             ALTER TABLE log ADD COLUMN note text;
             ALTER TABLE log REPLICA IDENTITY DEFAULT;
             CREATE UNIQUE INDEX log_line ON log (line);
             DROP INDEX orders_code;
             ALTER TABLE orders DROP CONSTRAINT orders_pkey;
             DROP TABLE gone;",
        )
        .await
        .unwrap();
    let (code, report, text) = verify(&twins);
    assert_eq!(code, 1, "differences found: {text}");
    assert_eq!(report["equal"], false, "{report:#}");
    let differences = report["schema"].as_array().unwrap();
    let find = |table: &str, what: &str| {
        differences
            .iter()
            .find(|d| d["table"] == table && d["difference"].as_str().unwrap().contains(what))
            .unwrap_or_else(|| panic!("no difference {what:?} on {table}: {report:#}"))
    };
    for (table, what, breaks) in [
        ("public.acct", "column m (mood) is missing on green", true),
        (
            "public.acct",
            "column balance is numeric(12,2) on blue, numeric(10,2) on green",
            true,
        ),
        (
            "public.acct",
            "column balance is NOT NULL on green only",
            true,
        ),
        (
            "public.acct",
            "column branch exists on green only, NOT NULL without a default",
            true,
        ),
        ("public.orders", "green has no primary key", false),
        (
            "public.orders",
            "blue's unique index on (code) is missing on green",
            false,
        ),
        (
            "public.orders",
            "sequence public.orders_id_seq is at its start on green, 42 on blue",
            false,
        ),
        (
            "public.log",
            "replica identity is full on blue, default on green",
            false,
        ),
        (
            "public.log",
            "a unique index on (line) exists on green only",
            true,
        ),
        ("public.log", "column note exists on green only", false),
        ("public.gone", "the table is missing on green", true),
    ] {
        assert_eq!(find(table, what)["breaks_apply"], breaks, "{table}: {what}");
    }
    // Those that break apply come first.
    let breaks: Vec<bool> = differences
        .iter()
        .map(|d| d["breaks_apply"].as_bool().unwrap())
        .collect();
    assert!(breaks.windows(2).all(|w| w[0] >= w[1]), "{breaks:?}");
    assert!(text.contains("BREAKS APPLY public.acct"), "{text}");
    assert!(!text.contains("not_published"), "{text}");

    // Every fix, run on green (and by hand: the extra index and the extra
    // columns, which a fix only made harmless), leaves nothing to report.
    for d in differences {
        if let Some(fix) = d["fix"].as_str() {
            twins
                .g
                .batch_execute(fix)
                .await
                .unwrap_or_else(|e| panic!("{fix}: {e}"));
        }
    }
    twins
        .g
        .batch_execute(
            "DROP INDEX log_line; ALTER TABLE log DROP COLUMN note; ALTER TABLE acct DROP COLUMN branch",
        )
        .await
        .unwrap();
    // The schema matches; the rows need a running teal stream to pause at
    // an exact point: without one, verify could not verify (2), never 0.
    let (code, text) = verify_status(&twins);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("could not verify") && text.contains("no running teal stream"),
        "{text}"
    );
}

/// `teal verify` (the binary) that may not write a report: status and output.
fn verify_status(twins: &Twins) -> (i32, String) {
    let (code, _, text) = verify_urls(
        &twins.blue.cli_url(),
        &twins.green.cli_url(),
        &["--exclude-tables", "not_published"],
    );
    (code, text)
}

/// Status 2 with the reason when verify cannot run.
#[test]
fn an_unreachable_side_is_could_not_verify() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=2");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .args(["verify", "--slot", "s", "--publication", "p"])
        .args(["--source", &url, "--target", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("could not verify") && stderr.contains("connecting to blue"),
        "{stderr}"
    );
}

/// A row's hash is made of its columns' texts: whatever makes two rows'
/// texts differ makes their hashes differ (a value moved to the next
/// column, a null against an empty string, trailing blanks of an
/// unbounded `bpchar`, a numeric's scale, -0, jsonb's numbers), and the
/// wide table (hashed as one text) too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_hashes_tell_apart_what_text_tells_apart() {
    crate::support::tap::init_logging();
    let wide: Vec<String> = (1..=120).map(|i| format!("c{i} int")).collect();
    let schema = format!(
        "CREATE TABLE t (id int PRIMARY KEY, a text, b text, c bpchar, d char(3), n numeric, f float8, j jsonb);
         CREATE TABLE wide (id int PRIMARY KEY, {});",
        wide.join(", ")
    );
    let twins = Twins::start(&default_bin(), &schema).await;
    let rows = "INSERT INTO t VALUES (1, 'x', 'y', 'a', 'a', 1, 1, '{}'), (2, 'x', NULL, 'a', 'a', 1, 1, '{}'),
                (3, 'x', 'y', 'a', 'a', 1, 1, '{}'), (4, 'x', 'y', 'a', 'a', 1.0, 1, '{}'),
                (5, 'x', 'y', 'a', 'a', 1, 0, '{}'), (6, 'x', 'y', 'a', 'a', 1, 1, '{\"v\": 1.0}'),
                (7, 'x', 'y', 'a', 'a', 1, 1, '{}');
                INSERT INTO wide (id, c1, c120) VALUES (1, 1, 2), (2, 3, 4);";
    twins.b.batch_execute(rows).await.unwrap();
    twins.g.batch_execute(rows).await.unwrap();
    let running = crate::support::running::Running::start(&twins, twins.config()).await;
    let (code, _, text) = tokio::task::spawn_blocking({
        let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
        move || verify_urls(&b, &g, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{text}");
    twins
        .g
        .batch_execute(
            "SET session_replication_role = replica;
             UPDATE t SET a = 'xy', b = '' WHERE id = 1;  -- 'x','y' -> 'xy','': the same letters
             UPDATE t SET b = '' WHERE id = 2;             -- null -> empty
             UPDATE t SET c = 'a ' WHERE id = 3;           -- trailing blank (equal as bpchar)
             UPDATE t SET n = 1.00 WHERE id = 4;           -- scale (equal as numeric)
             UPDATE t SET f = '-0' WHERE id = 5;           -- -0 (equal as float8)
             UPDATE t SET j = '{\"v\": 1.00}' WHERE id = 6; -- (equal as jsonb)
             UPDATE t SET d = 'a  ' WHERE id = 7;          -- char(3) pads anyway: the same row
             UPDATE wide SET c1 = 2, c120 = 1 WHERE id = 1;",
        )
        .await
        .unwrap();
    let (code, report, text) = tokio::task::spawn_blocking({
        let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
        move || verify_urls(&b, &g, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{text}");
    let found: Vec<(String, String, String)> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| {
            t["differences"].as_array().unwrap().iter().map(|d| {
                (
                    t["table"].as_str().unwrap().to_owned(),
                    d["key"].to_string(),
                    d["kind"].as_str().unwrap().to_owned(),
                )
            })
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("public.t", 1),
        ("public.t", 2),
        ("public.t", 3),
        ("public.t", 4),
        ("public.t", 5),
        ("public.t", 6),
        ("public.wide", 1),
    ]
    .iter()
    .map(|(t, id)| {
        (
            (*t).to_owned(),
            format!(r#"{{"id":{id}}}"#),
            "different".to_owned(),
        )
    })
    .collect();
    assert_eq!(found, expected, "{text}");
    running.stop().await;
}

const LOADED: &str = r#"
    CREATE TYPE pair AS (a int, b text);
    CREATE TABLE acct (id int PRIMARY KEY, balance bigint NOT NULL, memo text);
    CREATE TABLE ledger (id bigserial PRIMARY KEY, acct int, amount bigint);
    CREATE TABLE nokey (at int, line text);
    ALTER TABLE nokey REPLICA IDENTITY FULL;
    CREATE TABLE parts (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
    CREATE TABLE parts_eu PARTITION OF parts FOR VALUES IN ('eu');
    CREATE TABLE parts_us PARTITION OF parts FOR VALUES IN ('us');
    CREATE TABLE comp (k pair PRIMARY KEY, v int);
    CREATE TABLE big (id int PRIMARY KEY, v int);
"#;

/// Four writers on blue: transfers between accounts (with ledger rows),
/// appends to the keyless table, partition updates.
fn writers(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..4)
        .map(|w| {
            let (url, stop) = (url.clone(), std::sync::Arc::clone(&stop));
            tokio::spawn(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Accounts locked in id order: no deadlock between writers.
                    let (a, b) = (fastrand::i32(1..=200), fastrand::i32(1..=200));
                    let (a, b) = (a.min(b), a.max(b) + i32::from(a == b));
                    let sql = format!(
                        "BEGIN; UPDATE acct SET balance = balance - 5 WHERE id = {a};
                         UPDATE acct SET balance = balance + 5 WHERE id = {b};
                         INSERT INTO ledger (acct, amount) VALUES ({a}, -5), ({b}, 5);
                         INSERT INTO nokey VALUES ({w}, 'w{w} n{n}');
                         UPDATE parts SET v = v + 1 WHERE id = {a} AND id <= 100;
                         COMMIT;"
                    );
                    client.batch_execute(&sql).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect()
}

/// Issue 20's acceptance, as far as built: with teal streaming under four
/// writers on blue, verify finds green equal ten times in a row (the point
/// is exact: no false difference under load); after one row deleted, one
/// changed and one added on green behind teal's back, it names exactly
/// those three keys with the right kinds; a table without a key, a
/// partitioned table, TOASTed values and a composite key are compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_under_load_and_names_every_differing_key() {
    crate::support::tap::init_logging();
    let twins = Twins::start(&default_bin(), LOADED).await;
    // Green starts with the same rows (as after teal sync).
    for side in [&twins.b, &twins.g] {
        side.batch_execute(
            "INSERT INTO acct SELECT g, 1000, CASE WHEN g % 10 = 0 THEN repeat(md5(g::text), 300) END \
               FROM generate_series(1, 200) g;
             INSERT INTO parts SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 0 FROM generate_series(1, 200) g;
             INSERT INTO comp SELECT ROW(g, 'p' || g)::pair, g FROM generate_series(1, 50) g;
             INSERT INTO big SELECT g, g FROM generate_series(1, 50000) g;",
        )
        .await
        .unwrap();
    }
    let running = crate::support::running::Running::start(&twins, twins.config()).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = writers(twins.blue.url(), std::sync::Arc::clone(&stop));
    for round in 0..10 {
        let (code, report, text) = tokio::task::spawn_blocking({
            let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
            // One worker in even rounds, four (the default) in odd ones.
            let workers = if round % 2 == 0 { "1" } else { "4" };
            move || verify_urls(&b, &g, &[BALANCED, "--workers", workers])
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "round {round}: {text}");
        // Transfers are balanced in each transaction: at an exact point,
        // on both sides.
        assert_eq!(report["invariants"][0]["holds"], true, "{report:#}");
        assert_eq!(report["equal"], true);
        assert!(report["verified_lsn"].is_string(), "{report:#}");
        let tables = report["tables"].as_array().unwrap();
        // Leaf partitions are published as themselves.
        assert_eq!(tables.len(), 7, "{report:#}");
        // The ledger's sequence is behind on green (not replicated): a
        // note for the cutover, not a difference.
        assert!(
            report["schema"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["note"] == true),
            "{report:#}"
        );
    }
    // Behind teal's back (rows the writers do not touch): one row deleted,
    // one changed, one added.
    twins
        .g
        .batch_execute(
            "SET session_replication_role = replica;
             DELETE FROM comp WHERE (k).a = 7;
             UPDATE parts SET v = -100 WHERE id = 150 AND region = 'eu';
             INSERT INTO nokey VALUES (99, 'only on green');
             UPDATE big SET v = -1 WHERE id = 31337;",
        )
        .await
        .unwrap();
    let (code, report, text) = tokio::task::spawn_blocking({
        let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
        move || {
            verify_urls(
                &b,
                &g,
                &[
                    BALANCED,
                    "--invariant",
                    "fifty_pairs=SELECT count(*) = 50 FROM comp",
                    "--chunk-rows",
                    "10000",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{text}");
    let invariants = report["invariants"].as_array().unwrap();
    assert_eq!(invariants[0]["holds"], true, "{report:#}");
    assert_eq!(
        (
            &invariants[1]["blue"],
            &invariants[1]["green"],
            &invariants[1]["holds"]
        ),
        (&Value::from("t"), &Value::from("f"), &Value::from(false)),
        "an invariant that fails on green only: {report:#}"
    );
    assert!(
        text.contains("invariant fifty_pairs: FAILS (blue t, green f)"),
        "{text}"
    );
    let mut found = Vec::new();
    for t in report["tables"].as_array().unwrap() {
        for d in t["differences"].as_array().unwrap() {
            found.push((
                t["table"].as_str().unwrap().to_owned(),
                d["key"].clone(),
                d["kind"].as_str().unwrap().to_owned(),
            ));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    // 50,000 rows: summed in 5 chunks, one of them read.
    let big = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.big")
        .unwrap();
    assert_eq!(
        (&big["chunks"], &big["chunks_differing"]),
        (&Value::from(5), &Value::from(1)),
        "{big}"
    );
    assert_eq!(
        found,
        [
            (
                "public.big".to_owned(),
                serde_json::json!({"id": 31337}),
                "different".to_owned()
            ),
            (
                "public.comp".to_owned(),
                serde_json::json!({"k": {"a": 7, "b": "p7"}}),
                "missing_on_green".to_owned()
            ),
            (
                "public.nokey".to_owned(),
                Value::Null,
                "extra_on_green".to_owned()
            ),
            (
                "public.parts_eu".to_owned(),
                serde_json::json!({"id": 150, "region": "eu"}),
                "different".to_owned()
            ),
        ],
        "{text}"
    );
    // Values only when asked for.
    assert!(
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["differences"].as_array().unwrap())
            .all(|d| d.get("blue").is_none() && d.get("green").is_none()),
        "{report:#}"
    );
    let (_, shown, _) = tokio::task::spawn_blocking({
        let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
        move || verify_urls(&b, &g, &["--show-values", "--tables", "big"])
    })
    .await
    .unwrap();
    let row = &shown["tables"][0]["differences"][0];
    assert_eq!(
        (&row["blue"], &row["green"]),
        (
            &serde_json::json!({"id": 31337, "v": 31337}),
            &serde_json::json!({"id": 31337, "v": -1})
        ),
        "{shown:#}"
    );

    // teal repair, from that report, while the writers run.
    let dir = tempfile::tempdir().unwrap();
    let report_file = dir.path().join("report.json");
    std::fs::write(&report_file, report.to_string()).unwrap();
    let (code, text) = repair(&twins, &report_file, true).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("3 key(s) would be made equal")
            && text.contains(r#"inserted public.comp {"k":{"a":7,"b":"p7"}}"#)
            && text.contains(r#"updated public.parts_eu {"id":150,"region":"eu"}"#)
            && text.contains("not repaired: public.nokey has no primary key"),
        "{text}"
    );
    assert_eq!(
        crate::support::twins::int8(&twins.g, "SELECT count(*) FROM comp").await,
        49,
        "a dry run changes nothing"
    );
    let (code, text) = repair(&twins, &report_file, false).await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        crate::support::twins::int8(&twins.g, "SELECT count(*) FROM teal.repairs").await,
        3
    );
    // The keyless table's extra row by hand; then green equals blue again.
    twins
        .g
        .batch_execute("SET session_replication_role = replica; DELETE FROM nokey WHERE at = 99")
        .await
        .unwrap();
    let (code, _, text) = tokio::task::spawn_blocking({
        let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
        move || verify_urls(&b, &g, &[BALANCED])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "repaired while the writers ran: {text}");

    // One audit row per run: eleven equal (ten, and one after the repair),
    // two not (all tables, and --show-values of one); counts, never keys.
    let audit: Vec<(String, i64)> = twins
        .g
        .query(
            "SELECT status, count(*) FROM teal.audit WHERE operation = 'verify' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        audit,
        [("failed".to_owned(), 2), ("succeeded".to_owned(), 11)]
    );
    assert_eq!(
        crate::support::twins::int8(
            &twins.g,
            "SELECT count(*) FROM teal.audit WHERE operation = 'repair' AND status = 'succeeded'"
        )
        .await,
        1
    );
    let details: String = twins
        .g
        .query_one(
            "SELECT details::text FROM teal.audit WHERE operation = 'verify' AND status = 'failed' \
             AND details->>'tables' = '7'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        details.contains("\"differing_rows\": 4") && !details.contains("p7"),
        "{details}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut transfers = 0;
    for w in load {
        transfers += w.await.unwrap();
    }
    assert!(transfers > 10, "the writers ran ({transfers})");
    running.stop().await;
}

/// `teal repair` from `report` (`--dry-run` when `dry_run`): status and output.
async fn repair(twins: &Twins, report: &std::path::Path, dry_run: bool) -> (Option<i32>, String) {
    let (b, g, f) = (
        twins.blue.cli_url(),
        twins.green.cli_url(),
        report.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
            .env_clear()
            .args(["repair", "--slot", "teal_slot", "--publication", "teal_pub"])
            .args(["--source", &b, "--target", &g, "--report"])
            .arg(&f)
            .args(dry_run.then_some("--dry-run"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    })
    .await
    .unwrap()
}

/// Double entry: every transfer's ledger rows sum to zero.
const BALANCED: &str =
    "--invariant=ledger_balanced=SELECT coalesce(sum(amount), 0) = 0 FROM ledger";

/// `teal verify` between two URLs: status, JSON report, output.
fn verify_urls(blue: &str, green: &str, extra: &[&str]) -> (i32, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .args(["verify", "--slot", "teal_slot", "--publication", "teal_pub"])
        .args(["--source", blue, "--target", green, "--report"])
        .arg(&report)
        .args(extra)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let json = std::fs::read_to_string(&report)
        .ok()
        .and_then(|r| serde_json::from_str(&r).ok())
        .unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, text)
}

/// Issue 20's acceptance under a real 4-client pgbench writer on blue
/// (TPC-B-like transactions): verify finds green equal ten times in a row
/// while teal streams, and the bank's invariant (every transaction moves
/// the same amount in accounts, tellers and branches) holds on both sides
/// at each exact point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_writing_on_blue_and_ten_equal_verifications() {
    crate::support::tap::init_logging();
    let bin = default_bin();
    let twins = Twins::start(&bin, "").await;
    let pgbench = |cluster: &teal::local::Cluster, args: &[&str]| {
        std::process::Command::new(bin.dir.join("pgbench"))
            .env_clear()
            .env("PGPASSWORD", cluster.password())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .arg("postgres")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("pgbench runs")
    };
    // The same initial rows on both sides (pgbench -i is deterministic).
    for side in [&twins.blue, &twins.green] {
        let out = pgbench(side, &["-i", "-s", "2", "-q"])
            .wait_with_output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let running = crate::support::running::Running::start(&twins, twins.config()).await;
    // pgbench's TPC-B-like transaction, on accounts 1 to 190,000 of
    // 200,000: the rows changed behind teal's back below are not ones the
    // writer changes too.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tpcb.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 190000)\n\\set bid random(1, 2)\n\\set tid random(1, 20)\n\
         \\set delta random(-5000, 5000)\nBEGIN;\n\
         UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;\n\
         UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;\n\
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
         VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);\nEND;\n",
    )
    .unwrap();
    let script = script.to_str().unwrap().to_owned();
    let mut writer = pgbench(
        &twins.blue,
        &["-c", "4", "-j", "2", "-T", "600", "-n", "-f", &script],
    );
    let bank = "--invariant=bank_balanced=SELECT (SELECT sum(abalance) FROM pgbench_accounts) \
                = (SELECT sum(bbalance) FROM pgbench_branches) \
                AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(bbalance) FROM pgbench_branches)";
    let mut lsns = Vec::new();
    for round in 0..10 {
        let (code, report, text) = tokio::task::spawn_blocking({
            let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
            move || verify_urls(&b, &g, &[bank])
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "round {round}: {text}");
        assert_eq!(report["invariants"][0]["holds"], true, "{report:#}");
        lsns.push(report["verified_lsn"].as_str().unwrap().to_owned());
    }
    // pgbench wrote all along: each verification was at a new point.
    lsns.dedup();
    assert_eq!(lsns.len(), 10, "{lsns:?}");

    // Behind teal's back, while pgbench writes: one account deleted, one
    // changed, one added on green.
    twins
        .g
        .batch_execute(
            "SET session_replication_role = replica;
             DELETE FROM pgbench_accounts WHERE aid = 195001;
             UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid = 195002;
             INSERT INTO pgbench_accounts VALUES (200001, 2, 0, '');",
        )
        .await
        .unwrap();
    // In process, with the metrics endpoint: verify names exactly those
    // three keys, and /metrics counts them (never names them).
    let config = teal::ops::verify::VerifyConfig {
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
        mask: None,
    };
    let progress = std::sync::Arc::new(teal::progress::VerifyProgress::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let addr = teal::http::serve_verify(
        "127.0.0.1:0".parse().unwrap(),
        "teal_slot".into(),
        std::sync::Arc::clone(&progress),
        Some(teal::config::Secret::new("s3cret")),
        stop.clone(),
    )
    .await
    .unwrap();
    let report = teal::ops::verify::run(&config, &progress).await.unwrap();
    assert_eq!(report.equal, Some(false), "{}", report.text());
    let named: Vec<(String, String, &str)> = report
        .tables
        .iter()
        .flat_map(|t| {
            t.differences
                .iter()
                .map(|d| (t.table.clone(), d.key.to_string(), d.kind))
        })
        .collect();
    assert_eq!(
        named,
        [
            (
                "public.pgbench_accounts".to_owned(),
                r#"{"aid":195001}"#.to_owned(),
                "missing_on_green"
            ),
            (
                "public.pgbench_accounts".to_owned(),
                r#"{"aid":195002}"#.to_owned(),
                "different"
            ),
            (
                "public.pgbench_accounts".to_owned(),
                r#"{"aid":200001}"#.to_owned(),
                "extra_on_green"
            ),
        ],
        "{}",
        report.text()
    );
    let accounts = report
        .tables
        .iter()
        .find(|t| t.table == "public.pgbench_accounts")
        .unwrap();
    // 200,000 rows in 200 chunks; the three keys fall in at most three.
    assert_eq!(accounts.chunks, 200);
    assert!((1..=3).contains(&accounts.chunks_differing), "{accounts:?}");
    let (code, _) = teal::http::get(addr, "/metrics", None).await.unwrap();
    assert_eq!(code, 401, "the token guards /metrics");
    let (code, metrics) = teal::http::get(addr, "/metrics", Some("s3cret"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    for line in [
        r#"teal_verify_differences_total{slot="teal_slot"} 3"#,
        r#"teal_verify_equal{slot="teal_slot"} 0"#,
        r#"teal_verify_tables{slot="teal_slot"} 4"#,
        r#"teal_verify_tables_compared_total{slot="teal_slot"} 4"#,
        &format!(
            r#"teal_verify_chunks_differing_total{{slot="teal_slot"}} {}"#,
            accounts.chunks_differing
        ),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(!metrics.contains("195001"), "{metrics}");
    stop.cancel();

    // The command line the same way; repair from its report while pgbench
    // writes; then equal again.
    let report_file = dir.path().join("report.json");
    let (code, report, text) = tokio::task::spawn_blocking({
        let (b, g, f) = (
            twins.blue.cli_url(),
            twins.green.cli_url(),
            report_file.clone(),
        );
        move || {
            let (code, report, text) = verify_urls(&b, &g, &[bank]);
            std::fs::write(&f, report.to_string()).unwrap();
            (code, report, text)
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        report["tables"][0]["differences"].as_array().map(Vec::len),
        Some(3),
        "{report:#}"
    );
    let (code, text) = repair(&twins, &report_file, true).await;
    assert_eq!(code, Some(0), "{text}");
    for line in [
        r#"inserted public.pgbench_accounts {"aid":195001}"#,
        r#"updated public.pgbench_accounts {"aid":195002}"#,
        r#"deleted public.pgbench_accounts {"aid":200001}"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    let (code, text) = repair(&twins, &report_file, false).await;
    assert_eq!(code, Some(0), "{text}");
    let (code, _, text) = tokio::task::spawn_blocking({
        let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
        move || verify_urls(&b, &g, &[bank])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "repaired while pgbench wrote: {text}");
    let _ = writer.kill();
    let _ = writer.wait();
    let history =
        crate::support::twins::int8(&twins.b, "SELECT count(*) FROM pgbench_history").await;
    assert!(history > 100, "pgbench ran ({history} transactions)");
    running.stop().await;
}
