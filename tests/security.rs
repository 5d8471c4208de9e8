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
    let (code, stderr) = run_against(&blue, &green.cli_url()).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("could not reach blue after 10 tries")
            && stderr.contains("Connection refused")
            && stderr.contains("hint: check the host and port"),
        "{stderr}"
    );
    // Said once (issue 18.8: a stage's ERROR line, "teal stopped" and the
    // final line repeated it).
    assert_eq!(
        stderr.matches("could not reach blue").count(),
        1,
        "{stderr}"
    );
    let (code, stderr) =
        run_against("host=nonexistent.invalid user=postgres", &green.cli_url()).await;
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

/// Connects to 127.0.0.1:`port` as `user` with `password`: the error, if any.
async fn try_login(port: u16, user: &str, password: Option<&str>) -> Option<String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname("postgres");
    if let Some(p) = password {
        config.password(p);
    }
    match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => None,
        Err(e) => Some(format!("{e:?}")),
    }
}

/// Issue 19.8: a throwaway cluster (`teal demo`'s, the tests') admits no
/// other local user: TCP needs the superuser's random SCRAM password (trust
/// on 127.0.0.1 let anyone in as superuser, and `COPY ... TO PROGRAM` runs
/// commands as the server's OS user), and the socket directory is private.
#[tokio::test]
async fn throwaway_clusters_admit_no_one_without_their_password() {
    let bin = default_bin();
    // Started as the demo starts them (initdb, no template) and as the tests do.
    let demo_like = tokio::task::spawn_blocking({
        let bin = bin.clone();
        move || teal::local::Cluster::start(&bin, &teal::local::Options::default()).unwrap()
    })
    .await
    .unwrap();
    let test_like = crate::support::cluster::Cluster::start(&bin);
    let mut passwords = Vec::new();
    for cluster in [&demo_like, &*test_like] {
        let password = cluster.password();
        assert!(
            password.len() >= 32,
            "a short password: {} chars",
            password.len()
        );
        passwords.push(password.to_owned());
        let refused = try_login(cluster.port, "postgres", None).await;
        assert!(
            refused.is_some(),
            "logged in as postgres without a password"
        );
        let refused = try_login(cluster.port, "postgres", Some("postgres")).await;
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("28P01")),
            "a wrong password: {refused:?}"
        );
        // A role without a password (trust before) cannot log in either.
        let c = cluster.connect().await.expect("the password is accepted");
        c.batch_execute("CREATE ROLE someone LOGIN").await.unwrap();
        let refused = try_login(cluster.port, "someone", None).await;
        assert!(refused.is_some(), "logged in as a role without a password");
        let method: String = c
            .query_one(
                "SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules WHERE type = 'host'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(method, "scram-sha-256");
        // The directory holding the socket, the data and the log.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(cluster.dir()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700, "{}", cluster.dir().display());
        // The command-line form keeps the password in a 0600 file.
        let cli = cluster.cli_url();
        assert!(!cli.contains(password), "{cli}");
        let conninfo = teal::config::ConnInfo::parse_with_env(&cli, &|_| None).unwrap();
        let green = teal::session::connect_plain(&conninfo, "teal-test")
            .await
            .unwrap_or_else(|e| panic!("{}", crate::support::report(&e)));
        green.batch_execute("SELECT 1").await.unwrap();
    }
    assert_ne!(
        passwords[0], passwords[1],
        "each cluster has its own password"
    );
}

/// Issue 19.9: a secret on the command line (readable by every local user
/// through ps) draws one warning naming the flag and where to put the
/// secret instead, and never the secret itself; from the environment, none.
#[test]
fn secrets_on_the_command_line_are_warned_about_once() {
    let status = |env: &[(&str, &str)], args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
            .env_clear()
            .envs(env.iter().copied())
            .args([
                "status",
                "--metrics-addr",
                &format!("127.0.0.1:{}", closed_port()),
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "nothing listens there");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = status(&[], &["--metrics-token", "sekrit-token-1"]);
    assert_eq!(
        stderr
            .matches("a secret is on the command line (--metrics-token)")
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("use TEAL_METRICS_TOKEN instead"),
        "{stderr}"
    );
    assert!(!stderr.contains("sekrit-token-1"), "{stderr}");

    let stderr = status(&[("TEAL_METRICS_TOKEN", "sekrit-token-1")], &[]);
    assert!(!stderr.contains("on the command line"), "{stderr}");
}
