//! `teal verify` (issue 20), as far as it is built: the schema comparison,
//! each difference with the statement that fixes green, and honest exit
//! statuses (the row comparison is not built yet: 2, never 0).

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
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .args(["verify", "--slot", "teal_slot", "--publication", "teal_pub"])
        .args([
            "--source",
            &twins.blue.cli_url(),
            "--target",
            &twins.green.cli_url(),
        ])
        .args(["--exclude-tables", "not_published"])
        .args(["--format", "text", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("no report ({e}): {text}")),
    )
    .unwrap();
    (out.status.code().unwrap_or(-1), json, text)
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
    let (code, report, text) = verify(&twins);
    assert_eq!(report["schema"], Value::Array(vec![]), "{report:#}");
    // The rows are not compared yet: could not verify (2), never 0.
    assert_eq!(code, 2, "{text}");
    assert_eq!(report["equal"], Value::Null);
    assert!(
        report["unverified"]
            .as_str()
            .unwrap()
            .contains("not built yet"),
        "{report:#}"
    );
    assert!(text.contains("could not verify"), "{text}");
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
