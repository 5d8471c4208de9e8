//! What teal guarantees about secrets and row values (issue 19): errors
//! name tables, columns and constraints, never the values of a row, in
//! stderr, logs, `/status` and the audit trail.

use std::process::Stdio;
use std::time::Duration;

use crate::support::cluster::default_bin;
use crate::support::running::Running;
use crate::support::twins::Twins;

const WAIT: Duration = Duration::from_secs(60);

/// Runs `teal stream` (the binary) until it stops by itself; its stderr.
async fn failed_run(twins: &Twins) -> String {
    let child = twins
        .teal_stream_command()
        .args(["--log", "info", "--metrics-addr", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("teal runs");
    let out = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("teal stopped by itself")
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What teal wrote on green about its runs.
async fn audit_text(twins: &Twins) -> String {
    twins
        .g
        .query_one(
            "SELECT coalesce(string_agg(details::text, ' '), '') FROM teal.audit",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Issue 19.3: green refuses blue's row (a CHECK constraint green alone
/// has; an enum value green lacks). teal stops naming the table and the
/// constraint or type, and the row's values appear nowhere: not in stderr
/// or the log (DETAIL "Failing row contains (...)" was printed), not in
/// `/status`, not in `teal.audit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_are_named_never_shown() {
    let twins = Twins::start(
        &default_bin(),
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'ecstatic');
         CREATE TABLE ledger (id int PRIMARY KEY, memo text, m mood);",
    )
    .await;
    twins
        .g
        .batch_execute(
            "ALTER TABLE ledger ADD CONSTRAINT short_memo CHECK (length(memo) < 8);
             ALTER TYPE mood RENAME VALUE 'ecstatic' TO 'elated';",
        )
        .await
        .unwrap();
    let running = Running::start(&twins, twins.config()).await;
    twins
        .b
        .batch_execute("INSERT INTO ledger VALUES (1, 'ACCOUNT-4242-SECRET', 'ok')")
        .await
        .unwrap();
    let status_error = {
        let failed = running.monitor.clone();
        let err = running.failure().await;
        let status = failed.status_json();
        assert!(status["last_error"].is_string(), "{status}");
        format!("{}\n{}", crate::support::report(&err), status["last_error"])
    };
    let stderr = failed_run(&twins).await;
    for text in [&stderr, &status_error, &audit_text(&twins).await] {
        assert!(text.contains("short_memo"), "names the constraint: {text}");
        assert!(text.contains("ledger"), "names the table: {text}");
        assert!(!text.contains("ACCOUNT-4242"), "no row value: {text}");
    }

    // A value green's enum does not have (22P02 quotes it).
    twins
        .g
        .batch_execute("ALTER TABLE ledger DROP CONSTRAINT short_memo")
        .await
        .unwrap();
    twins
        .b
        .batch_execute("INSERT INTO ledger VALUES (2, 'x', 'ecstatic')")
        .await
        .unwrap();
    let stderr = failed_run(&twins).await;
    assert!(
        stderr.contains("22P02") && stderr.contains("mood"),
        "{stderr}"
    );
    for text in [&stderr, &audit_text(&twins).await] {
        assert!(!text.contains("ecstatic"), "no row value: {text}");
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `teal stream` from `source` to `target` (fast retries); its exit
/// status and stderr.
async fn run_against(source: &str, target: &str) -> (Option<i32>, String) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .args(["stream", "--slot", "s", "--publication", "p"])
        .args(["--source", source, "--target", target])
        .args(["--reconnect-max-delay", "1s", "--metrics-addr", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("teal gave up by itself")
    .unwrap()
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 19.5: a server never reached (nothing listens, the host does not
/// exist) is tried a stated number of times, then teal exits with status 2
/// saying why (it retried forever, saying "replication connection lost").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_never_reached_is_reported_not_retried_forever() {
    let green = crate::support::cluster::Cluster::start(&default_bin());
    let blue = format!("postgresql://postgres@127.0.0.1:{}/postgres", closed_port());
    let (code, stderr) = run_against(&blue, &green.url()).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("could not reach blue after 10 tries")
            && stderr.contains("Connection refused")
            && stderr.contains("hint: check the host and port"),
        "{stderr}"
    );
    let (code, stderr) = run_against("host=nonexistent.invalid user=postgres", &green.url()).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("could not reach blue after 10 tries"),
        "{stderr}"
    );
    let green_closed = format!("postgresql://postgres@127.0.0.1:{}/postgres", closed_port());
    let (code, stderr) = run_against(&blue, &green_closed).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("could not reach green after 10 tries")
            && stderr.contains("Connection refused"),
        "{stderr}"
    );
}
