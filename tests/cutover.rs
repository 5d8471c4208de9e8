//! Issue 21: `teal cutover` and `teal rollback` with the running stream as
//! the engine, and sequences kept up on green while streaming
//! (`--sync-sequences`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cluster::default_bin;
use crate::support::twins::{Twins, int8};
use crate::support::wait::until_row;

const SEQUENCES: &str = "
    CREATE SEQUENCE shared_ids;
    CREATE SEQUENCE down INCREMENT -1 START 1000 MAXVALUE 1000;
    CREATE SEQUENCE unrelated;
    CREATE TABLE a (id serial PRIMARY KEY, v int);
    CREATE TABLE b (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int);
    CREATE TABLE c (id bigint DEFAULT nextval('shared_ids') PRIMARY KEY, v int);
    CREATE TABLE d (id int DEFAULT nextval('down') PRIMARY KEY);
";

/// Owned (serial), identity, and shared sequences named in a default, one
/// counting down: green follows blue while teal streams; a sequence no
/// published table uses is left alone, and one ahead on green is never
/// moved back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sequences_keeps_green_up_with_blue_never_back() {
    crate::support::tap::init_logging();
    let twins = Twins::start(&default_bin(), SEQUENCES).await;
    let mut config = twins.config();
    config.sync_sequences = Some(Duration::from_millis(200));
    let running = crate::support::running::Running::start(&twins, config).await;
    twins
        .b
        .batch_execute(
            "INSERT INTO a (v) SELECT g FROM generate_series(1, 5) g;
             INSERT INTO b (v) SELECT g FROM generate_series(1, 3) g;
             INSERT INTO c (v) SELECT g FROM generate_series(1, 7) g;
             INSERT INTO d SELECT FROM generate_series(1, 4);
             SELECT nextval('unrelated'), nextval('unrelated');",
        )
        .await
        .unwrap();
    until_row(
        &twins.g,
        "SELECT 1 WHERE (SELECT count(*) FROM a) = 5 AND (SELECT count(*) FROM b) = 3 \
           AND (SELECT count(*) FROM c) = 7 AND (SELECT count(*) FROM d) = 4",
        &[],
        Duration::from_secs(20),
        "the rows on green",
    )
    .await;
    until_row(
        &twins.g,
        "SELECT 1 FROM a_id_seq, b_id_seq, shared_ids, down \
         WHERE a_id_seq.last_value = 5 AND b_id_seq.last_value = 3 \
           AND shared_ids.last_value = 7 AND down.last_value = 997 \
           AND a_id_seq.is_called AND down.is_called",
        &[],
        Duration::from_secs(20),
        "green's sequences at blue's",
    )
    .await;
    let unrelated: (i64, bool) = {
        let r = twins
            .g
            .query_one("SELECT last_value, is_called FROM unrelated", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(unrelated, (1, false), "no published table uses it");
    // Ahead on green: left there, while blue's other sequences still move.
    twins
        .g
        .batch_execute("SELECT setval('a_id_seq', 100)")
        .await
        .unwrap();
    twins
        .b
        .batch_execute("INSERT INTO a (v) VALUES (6); INSERT INTO c (v) VALUES (8)")
        .await
        .unwrap();
    until_row(
        &twins.g,
        "SELECT 1 FROM shared_ids WHERE last_value = 8",
        &[],
        Duration::from_secs(20),
        "the shared sequence moved on",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dbg = twins.g.query_one("SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b), (SELECT count(*) FROM c), (SELECT count(*) FROM d), (SELECT count(*) FROM teal.conflicts), (SELECT string_agg(t::text, ',') FROM teal.progress t)", &[]).await.unwrap();
    eprintln!(
        "DBG {:?} {:?} {:?} {:?} {:?} {:?}",
        dbg.get::<_, i64>(0),
        dbg.get::<_, i64>(1),
        dbg.get::<_, i64>(2),
        dbg.get::<_, i64>(3),
        dbg.get::<_, i64>(4),
        dbg.get::<_, Option<String>>(5)
    );
    assert_eq!(
        crate::support::twins::int8(&twins.g, "SELECT last_value FROM a_id_seq").await,
        100,
        "never moved back"
    );
    assert_eq!(
        crate::support::twins::int8(&twins.g, "SELECT count(*) FROM a").await,
        6,
        "the rows streamed too"
    );
    running.stop().await;
}

const BANK: &str = "
    CREATE ROLE app LOGIN PASSWORD 'app-pw';
    CREATE TABLE ledger (id bigserial PRIMARY KEY, writer int NOT NULL, amount int NOT NULL);
    GRANT SELECT, INSERT ON ledger TO app;
    GRANT USAGE ON SEQUENCE ledger_id_seq TO app;
";

/// pgbench's tables (scale 1, 10,000 accounts), its history keyed by a
/// sequence so that every acknowledged transaction can be found.
const PGBENCH: &str = "
    CREATE ROLE app LOGIN PASSWORD 'app-pw';
    CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int NOT NULL, filler char(88));
    CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int NOT NULL, filler char(84));
    CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int NOT NULL, filler char(84));
    CREATE TABLE pgbench_history (id bigserial PRIMARY KEY, tid int, bid int, aid int, delta int,
                                  mtime timestamp, filler char(22));
    INSERT INTO pgbench_branches VALUES (1, 0);
    INSERT INTO pgbench_tellers SELECT g, 1, 0 FROM generate_series(1, 10) g;
    INSERT INTO pgbench_accounts SELECT g, 1, 0 FROM generate_series(1, 10000) g;
    GRANT SELECT, INSERT, UPDATE ON pgbench_branches, pgbench_tellers, pgbench_accounts, pgbench_history TO app;
    GRANT USAGE ON SEQUENCE pgbench_history_id_seq TO app;
";

/// Four writers (see [`writers_of`]) following a target file that the
/// switch hooks rewrite.
struct Load {
    dir: tempfile::TempDir,
    target: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    written: Arc<Written>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Writers on blue, as role app (pgbench's transaction with `tpcb`).
    fn start(twins: &Twins, tpcb: bool) -> Load {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "blue").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(Written::default());
        let tasks = writers_of(
            (
                twins.blue.url_for("app", "app-pw", ""),
                twins.green.url_for("app", "app-pw", ""),
            ),
            target.clone(),
            Arc::clone(&stop),
            Arc::clone(&written),
            tpcb,
        );
        Load {
            dir,
            target,
            stop,
            written,
            tasks,
        }
    }

    /// Stops the writers and waits for them (the target file stays).
    async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            t.await.unwrap();
        }
    }
}

/// What the writers saw: every id acknowledged, and when each commit was.
#[derive(Default)]
struct Written {
    acked: Mutex<Vec<i64>>,
    commits: Mutex<Vec<Instant>>,
}

/// pgbench's TPC-B-like transaction, its history row's id returned.
async fn tpcb(client: &tokio_postgres::Client, n: u64) -> Result<i64, tokio_postgres::Error> {
    let (aid, tid) = ((n % 10_000) as i32 + 1, (n % 10) as i32 + 1);
    let delta = (n % 1001) as i32 - 500;
    client.batch_execute("BEGIN").await?;
    client
        .execute(
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            &[&delta, &aid],
        )
        .await?;
    client
        .query(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            &[&aid],
        )
        .await?;
    client
        .execute(
            "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
            &[&delta, &tid],
        )
        .await?;
    client
        .execute(
            "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = 1",
            &[&delta],
        )
        .await?;
    let id: i64 = client
        .query_one(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES ($1, 1, $2, $3, now()) RETURNING id",
            &[&tid, &aid, &delta],
        )
        .await?
        .get(0);
    client.batch_execute("COMMIT").await?;
    Ok(id)
}

/// Four writers as role `app`, each running pgbench's TPC-B-like
/// transaction (`tpcb_like`) or one ledger insert per transaction on
/// whichever side `target` names (the switch hook writes it), reconnecting whenever a session fails (fenced,
/// terminated).
fn writers_of(
    urls: (String, String),
    target: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    written: Arc<Written>,
    tpcb_like: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|w| {
            let (urls, target, stop, written) = (
                urls.clone(),
                target.clone(),
                Arc::clone(&stop),
                Arc::clone(&written),
            );
            tokio::spawn(async move {
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let side = std::fs::read_to_string(&target).unwrap_or_default();
                    let url = if side.trim() == "green" {
                        &urls.1
                    } else {
                        &urls.0
                    };
                    let Ok((client, conn)) =
                        tokio_postgres::connect(url, tokio_postgres::NoTls).await
                    else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    tokio::spawn(conn);
                    while !stop.load(Ordering::Relaxed)
                        && std::fs::read_to_string(&target).unwrap_or_default() == side
                    {
                        n += 1;
                        let done = if tpcb_like {
                            tpcb(&client, n * 4 + w as u64).await
                        } else {
                            client
                                .query_one(
                                    "INSERT INTO ledger (writer, amount) VALUES ($1, 1) RETURNING id",
                                    &[&w],
                                )
                                .await
                                .map(|row| row.get(0))
                        };
                        match done {
                            Ok(id) => {
                                written.acked.lock().unwrap().push(id);
                                written.commits.lock().unwrap().push(Instant::now());
                            }
                            Err(_) => break,
                        }
                    }
                }
            })
        })
        .collect()
}

/// Waits until `to` has as many rows of `table` as `from`, then checks
/// that their ids are the same; returns them.
async fn caught_up(
    from: &tokio_postgres::Client,
    to: &tokio_postgres::Client,
    table: &str,
) -> Vec<i64> {
    let sql = format!("SELECT id FROM {table} ORDER BY id");
    let expected = ids_of(from, &sql).await;
    crate::support::wait::until_row(
        to,
        &format!("SELECT 1 WHERE (SELECT count(*) FROM {table}) = $1"),
        &[&(expected.len() as i64)],
        Duration::from_secs(30),
        &format!("the other side has {table}'s rows"),
    )
    .await;
    assert_eq!(
        expected,
        ids_of(to, &sql).await,
        "the same {table} rows on both sides"
    );
    expected
}

async fn ids_of(client: &tokio_postgres::Client, sql: &str) -> Vec<i64> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn can_login(client: &tokio_postgres::Client, role: &str) -> bool {
    client
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

/// Issue 21's acceptance: with four writers running pgbench's TPC-B-like
/// transaction that follow the switch hook (green fenced for them while it mirrors:
/// `--fence-target-roles`), a cutover then a rollback. Every acknowledged write is on
/// both sides exactly once (nothing lost, nothing echoed: no conflict on
/// either side), the sequences of the side taking over are never behind,
/// and each side is fenced exactly while the other takes the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_then_rollback_under_writers_loses_and_echoes_nothing() {
    crate::support::tap::init_logging();
    let twins = Twins::start(&default_bin(), PGBENCH).await;
    // Nobody writes to green by mistake while it mirrors.
    let mut config = twins.config();
    config.fence_target_roles = vec!["app".into()];
    let running = crate::support::running::Running::start(&twins, config).await;
    crate::support::wait::until_row(
        &twins.g,
        "SELECT 1 FROM pg_roles WHERE rolname = 'app' AND NOT rolcanlogin",
        &[],
        Duration::from_secs(10),
        "green fenced for app while mirroring",
    )
    .await;
    let mut load = Load::start(&twins, true);
    let (target, written) = (load.target.clone(), Arc::clone(&load.written));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hook = |side: &str| format!("printf {side} > '{}'", target.display());

    let (code, report, text) = switch_on(
        &twins,
        "cutover",
        &["--fence-roles", "app", "--switch-hook", &hook("green")],
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["outcome"], "switched", "{report:#}");
    assert!(report["write_pause_ms"].as_f64().is_some(), "{report:#}");
    assert!(
        !can_login(&twins.b, "app").await,
        "blue fenced after the cutover"
    );
    assert!(can_login(&twins.g, "app").await);
    // Green's sequence is not behind blue's.
    let seq = |c| async move {
        crate::support::twins::int8(c, "SELECT last_value FROM pgbench_history_id_seq").await
    };
    assert!(seq(&twins.g).await >= seq(&twins.b).await);
    // The writers go on on green; their rows reach blue.
    let on_green_before = written.acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        written.acked.lock().unwrap().len() > on_green_before + 10,
        "the writers write on green"
    );
    // The slot watcher follows the leg: it reads the slot on green now
    // (blue's forward slot stands still meanwhile).
    let lsn_of = |c: &'static str, slot: &'static str| {
        let client = if c == "g" { &twins.g } else { &twins.b };
        async move {
            client
                .query_one(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
                .parse::<teal::lsn::Lsn>()
                .unwrap()
        }
    };
    let forward = lsn_of("b", "teal_slot").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let watched: Option<teal::lsn::Lsn> = running
            .monitor
            .slot_watch
            .health()
            .and_then(|h| h.confirmed_flush_lsn)
            .and_then(|l| l.parse().ok());
        let reverse = lsn_of("g", "teal_slot_rev").await;
        if watched.is_some_and(|w| w != forward && w <= reverse) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watcher reads {watched:?}, not green's slot (at {reverse})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (code, report, text) = switch_on(
        &twins,
        "rollback",
        &["--fence-roles", "app", "--switch-hook", &hook("blue")],
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["outcome"], "switched", "{report:#}");
    assert!(
        can_login(&twins.b, "app").await,
        "blue unfenced by the rollback"
    );
    assert!(
        !can_login(&twins.g, "app").await,
        "green fenced after the rollback"
    );
    assert!(seq(&twins.b).await >= seq(&twins.g).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop().await;
    // Green catches up with blue through the forward stream again.
    let on_blue = caught_up(&twins.b, &twins.g, "pgbench_history").await;
    // The bank balances: every transaction whole, on both sides.
    for c in [&twins.b, &twins.g] {
        let sums: (i64, i64, i64) = {
            let r = c
                .query_one(
                    "SELECT (SELECT sum(abalance) FROM pgbench_accounts), \
                            (SELECT sum(tbalance) FROM pgbench_tellers), \
                            (SELECT sum(bbalance) FROM pgbench_branches)",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1), r.get(2))
        };
        assert!(sums.0 == sums.1 && sums.1 == sums.2, "{sums:?}");
    }
    twins
        .assert_converged(
            &[
                "pgbench_accounts",
                "pgbench_tellers",
                "pgbench_branches",
                "pgbench_history",
            ],
            Duration::from_secs(30),
        )
        .await;
    let acked = written.acked.lock().unwrap().clone();
    let missing: Vec<&i64> = acked
        .iter()
        .filter(|id| on_blue.binary_search(id).is_err())
        .collect();
    assert!(missing.is_empty(), "acknowledged and lost: {missing:?}");
    assert!(acked.len() > 100, "the writers wrote ({})", acked.len());
    for (side, c) in [("green", &twins.g), ("blue", &twins.b)] {
        assert_eq!(
            crate::support::twins::int8(c, "SELECT count(*) FROM teal.conflicts").await,
            0,
            "no conflict on {side}: nothing echoed"
        );
    }
    // Audit rows of both switches.
    assert_eq!(
        crate::support::twins::int8(
            &twins.g,
            "SELECT count(*) FROM teal.audit WHERE operation IN ('cutover', 'rollback') AND status = 'succeeded'"
        )
        .await,
        2
    );
    running.stop().await;
}

/// [`run_switch`] on `twins`, off the async runtime's threads.
async fn switch_on(twins: &Twins, command: &'static str, args: &[&str]) -> (i32, Value, String) {
    let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || run_switch(&b, &g, command, &args))
        .await
        .unwrap()
}

/// `teal cutover`/`rollback` between two URLs with `args`.
fn run_switch(blue: &str, green: &str, command: &str, args: &[String]) -> (i32, Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .env("TEAL_LOG", "warn")
        .args([command, "--slot", "teal_slot", "--publication", "teal_pub"])
        .args(["--source", blue, "--target", green])
        .args([
            "--format",
            "json",
            "--max-lag",
            "16MB",
            "--max-pause",
            "10s",
        ])
        .args(
            (!args.iter().any(|a| a == "--timeout"))
                .then_some(["--timeout", "60s"])
                .into_iter()
                .flatten(),
        )
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = stdout.clone() + &String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        text,
    )
}

/// A rehearsal (steps 1 to 5, then everything back) leaves the pair as it
/// was: blue writable, no slot or publication on green, the stream still
/// blue -> green; its report has every check and the write pause. A
/// timeout aborts the same way (exit 1, blue writable). Without a running
/// stream, a cutover says so and exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehearsal_and_timeout_leave_everything_as_it_was() {
    crate::support::tap::init_logging();
    let twins = Twins::start(&default_bin(), BANK).await;
    let args = |extra: &[&str]| -> Vec<String> {
        ["--fence-roles", "app"]
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let run = |command: &'static str, args: Vec<String>| {
        let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
        tokio::task::spawn_blocking(move || run_switch(&b, &g, command, &args))
    };
    // No stream yet: the slot does not even exist.
    let (code, _, text) = run("cutover", args(&[])).await.unwrap();
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no slot teal_slot on blue"), "{text}");

    let running = crate::support::running::Running::start(&twins, twins.config()).await;
    let mut load = Load::start(&twins, false);
    let written = Arc::clone(&load.written);
    let (code, report, text) = run("cutover", args(&["--rehearse"])).await.unwrap();
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["outcome"], "rehearsed", "{report:#}");
    assert_eq!(report["kind"], "rehearsal");
    let checks: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        [
            "stream_running",
            "lag_bytes",
            "predicted_pause_s",
            "slot_health",
            "schema_differences",
            "invalid_indexes",
            "way_back",
            "sequences"
        ]
    );
    assert!(report["write_pause_ms"].as_f64().is_some(), "{report:#}");
    assert!(report["marker_lsn"].is_string(), "{report:#}");
    as_it_was(&twins.b, &twins.g).await;
    // The writers went on on blue, and their rows still reach green.
    let before = written.acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        written.acked.lock().unwrap().len() > before,
        "blue takes writes"
    );

    // A timeout shorter than the checks: aborted before the switch.
    let (code, report, text) = run("cutover", args(&["--timeout", "300ms"])).await.unwrap();
    assert_eq!(code, 1, "{text}");
    assert_eq!(report["outcome"], "aborted", "{report:#}");
    assert!(
        report["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--timeout"),
        "{report:#}"
    );
    as_it_was(&twins.b, &twins.g).await;
    load.stop().await;
    caught_up(&twins.b, &twins.g, "ledger").await;
    let audit: Vec<(String, String)> = twins
        .g
        .query(
            "SELECT status, details->>'outcome' FROM teal.audit WHERE operation = 'cutover' ORDER BY started_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        audit,
        [
            // The one without a stream.
            ("failed".to_owned(), "failed".to_owned()),
            ("succeeded".to_owned(), "rehearsed".to_owned()),
            ("failed".to_owned(), "aborted".to_owned())
        ]
    );
    running.stop().await;
}

/// Blue writable, no way back left on green, the pair forward.
async fn as_it_was(b: &tokio_postgres::Client, g: &tokio_postgres::Client) {
    assert!(can_login(b, "app").await, "blue writable");
    assert_eq!(
        crate::support::twins::int8(
            g,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'teal_slot_rev'"
        )
        .await,
        0
    );
    assert_eq!(
        crate::support::twins::int8(g, "SELECT count(*) FROM pg_publication").await,
        0
    );
    assert_eq!(
        crate::support::twins::int8(
            g,
            "SELECT count(*) FROM teal.pairs WHERE direction = 'reverse'"
        )
        .await,
        0
    );
}

/// kill -9 of `teal cutover` at each step, then `--abort` or a new run:
/// blue is unfenced and the way back dropped, no acknowledged write is
/// lost. Killed after asking the stream to switch: the stream switched
/// (blue fenced, as after a cutover), and `teal rollback` brings the pair
/// and blue's writers back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_step_then_aborted_or_rerun() {
    crate::support::tap::init_logging();
    let twins = Twins::start(&default_bin(), BANK).await;
    let running = crate::support::running::Running::start(&twins, twins.config()).await;
    let mut load = Load::start(&twins, false);
    let written = Arc::clone(&load.written);
    let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
    let killed_at = |step: &'static str| {
        let (b, g) = (b.clone(), g.clone());
        let green = twins.green.url();
        async move {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
                .env_clear()
                .env("TEAL_LOG", "warn")
                .env("TEAL_CUTOVER_PAUSE_AT", step)
                .args([
                    "cutover",
                    "--slot",
                    "teal_slot",
                    "--publication",
                    "teal_pub",
                ])
                .args(["--source", &b, "--target", &g, "--fence-roles", "app"])
                .args(["--max-lag", "16MB", "--max-pause", "10s"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let (client, conn) = tokio_postgres::connect(&green, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            crate::support::wait::until_row(
                &client,
                "SELECT 1 FROM teal.switches WHERE step = $1 AND state IN ('running', 'switch', 'switched') \
                 AND kind = 'cutover'",
                &[&step],
                Duration::from_secs(30),
                "the cutover at its step",
            )
            .await;
            // SIGKILL: nothing of the command runs after this.
            child.kill().unwrap();
            child.wait().unwrap();
        }
    };
    for (i, step) in ["fence", "marker", "sequences", "way back"]
        .iter()
        .enumerate()
    {
        killed_at(step).await;
        if *step != "fence" {
            assert!(!can_login(&twins.b, "app").await, "blue fenced at {step}");
        }
        let how: &[&str] = if i % 2 == 0 {
            &["--abort"]
        } else {
            &["--rehearse"]
        };
        let (code, report, text) = tokio::task::spawn_blocking({
            let (b, g) = (b.clone(), g.clone());
            let args: Vec<String> = ["--fence-roles", "app"]
                .iter()
                .chain(how)
                .map(|s| (*s).to_owned())
                .collect();
            move || run_switch(&b, &g, "cutover", &args)
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "after {step}: {text}");
        let first = &report["steps"][0];
        assert_eq!(first["name"], "undo interrupted", "{report:#}");
        assert!(
            first["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("was interrupted at {step}")),
            "{report:#}"
        );
        as_it_was(&twins.b, &twins.g).await;
    }
    // Killed once the stream was asked to switch: it switched.
    killed_at("switch").await;
    crate::support::wait::until_row(
        &twins.g,
        "SELECT 1 FROM teal.pairs WHERE direction = 'reverse'",
        &[],
        Duration::from_secs(30),
        "the stream switched",
    )
    .await;
    assert!(
        !can_login(&twins.b, "app").await,
        "blue fenced, as after a cutover"
    );
    let (code, report, text) = tokio::task::spawn_blocking({
        let (b, g) = (b.clone(), g.clone());
        let args = vec!["--fence-roles".to_owned(), "app".to_owned()];
        move || run_switch(&b, &g, "rollback", &args)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["outcome"], "switched", "{report:#}");
    as_it_was(&twins.b, &twins.g).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop().await;
    let on_blue = caught_up(&twins.b, &twins.g, "ledger").await;
    let acked = written.acked.lock().unwrap().clone();
    assert!(
        acked.iter().all(|id| on_blue.binary_search(id).is_ok()),
        "an acknowledged write was lost"
    );
    assert!(acked.len() > 50, "the writers wrote ({})", acked.len());
    running.stop().await;
}

/// The other fences and `--verify`: a cutover fencing blue database-wide
/// (CONNECTION LIMIT 0) after `teal verify` found green equal with an
/// invariant holding; a rollback fencing green through a hook; the next
/// cutover lifts the hook's fence (`TEAL_FENCE=unfence`) and the rollback
/// lifted blue's connection limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_database_fence_hook_and_verify() {
    crate::support::tap::init_logging();
    let twins = Twins::start(&default_bin(), BANK).await;
    let running = crate::support::running::Running::start(&twins, twins.config()).await;
    let mut load = Load::start(&twins, false);
    let (target, written) = (load.target.clone(), Arc::clone(&load.written));
    let fences = load.dir.path().join("fences");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = |command: &'static str, args: Vec<String>| {
        let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
        tokio::task::spawn_blocking(move || run_switch(&b, &g, command, &args))
    };
    let hook = |side: &str| format!("printf {side} > '{}'", target.display());
    let limit = |c| async move {
        crate::support::twins::int8(
            c,
            "SELECT datconnlimit::int8 FROM pg_database WHERE datname = current_database()",
        )
        .await
    };
    let (code, report, text) = run(
        "cutover",
        vec![
            "--fence-database".into(),
            "--verify".into(),
            "--invariant".into(),
            "positive=SELECT bool_and(amount > 0) FROM ledger".into(),
            "--switch-hook".into(),
            hook("green"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{text}");
    let verify = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "verify")
        .unwrap();
    assert_eq!(verify["go"], true, "{verify}");
    assert!(
        verify["value"].as_str().unwrap().starts_with("equal at "),
        "{verify}"
    );
    assert_eq!(limit(&twins.b).await, 0, "blue fenced database-wide");
    // The hook below only records that it ran (it fences nothing): the
    // writers stop first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop().await;
    let (code, report, text) = run(
        "rollback",
        vec![
            "--fence-hook".into(),
            format!("echo \"$TEAL_FENCE $TEAL_SIDE\" >> '{}'", fences.display()),
            "--switch-hook".into(),
            hook("blue"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["outcome"], "switched");
    assert_eq!(limit(&twins.b).await, -1, "blue's limit as it was");
    assert_eq!(std::fs::read_to_string(&fences).unwrap(), "fence green\n");
    // The next cutover lifts the rollback's hook fence on green.
    let (code, _, text) = run(
        "cutover",
        vec![
            "--fence-roles".into(),
            "app".into(),
            "--switch-hook".into(),
            hook("green"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        std::fs::read_to_string(&fences).unwrap(),
        "fence green\nunfence green\n"
    );
    // Reversed now: blue catches up with green.
    let on_green = caught_up(&twins.g, &twins.b, "ledger").await;
    let acked = written.acked.lock().unwrap().clone();
    assert!(acked.iter().all(|id| on_green.binary_search(id).is_ok()));
    running.stop().await;
}

/// A cutover killed with blue fenced: the running stream says so, naming
/// the command that lifts the fence, until it is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_names_the_command_that_lifts_a_forgotten_fence() {
    let twins = Twins::start(&default_bin(), BANK).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let stream = KillOnDrop(
        twins
            .teal_stream_command()
            .args(["--create-slot", "--metrics-addr", "off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    twins.wait_streaming().await;
    let mut cutover = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
            .env_clear()
            .env("TEAL_LOG", "warn")
            .env("TEAL_CUTOVER_PAUSE_AT", "marker")
            .args([
                "cutover",
                "--slot",
                "teal_slot",
                "--publication",
                "teal_pub",
            ])
            .args([
                "--source",
                &twins.blue.cli_url(),
                "--target",
                &twins.green.cli_url(),
            ])
            .args([
                "--fence-roles",
                "app",
                "--max-lag",
                "16MB",
                "--max-pause",
                "10s",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    crate::support::wait::until_row(
        &twins.g,
        "SELECT 1 FROM teal.switches WHERE step = 'marker'",
        &[],
        Duration::from_secs(30),
        "the cutover at its marker",
    )
    .await;
    cutover.0.kill().unwrap();
    cutover.0.wait().unwrap();
    assert!(!can_login(&twins.b, "app").await);
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("blue is fenced by cutover") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        said.contains("blue is fenced by cutover") && said.contains("`teal cutover --abort`"),
        "{said}"
    );
    let (code, report, text) = tokio::task::spawn_blocking({
        let (b, g) = (twins.blue.cli_url(), twins.green.cli_url());
        move || run_switch(&b, &g, "cutover", &["--abort".to_owned()])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["outcome"], "undone");
    as_it_was(&twins.b, &twins.g).await;
    drop(stream);
}

/// A child process killed when the test ends, however it ends (a failed
/// assertion must not leave a teal running against removed clusters).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A switch hook that fails after the stream switched: exit 2, the reason
/// and the way out named, blue still fenced, the pair reversed; `teal
/// rollback` then brings everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_switch_hook_leaves_blue_fenced_and_says_what_to_do() {
    crate::support::tap::init_logging();
    let twins = Twins::start(&default_bin(), BANK).await;
    let running = crate::support::running::Running::start(&twins, twins.config()).await;
    let (code, report, text) = switch_on(
        &twins,
        "cutover",
        &[
            "--fence-roles",
            "app",
            "--switch-hook",
            "echo repointing failed >&2; exit 3",
        ],
    )
    .await;
    assert_eq!(code, 2, "{text}");
    assert_eq!(report["outcome"], "failed", "{report:#}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("--switch-hook failed")
            && error.contains("repointing failed")
            && error.contains("`teal rollback` goes back"),
        "{error}"
    );
    assert!(!can_login(&twins.b, "app").await, "blue stays fenced");
    assert_eq!(
        int8(
            &twins.g,
            "SELECT count(*) FROM teal.pairs WHERE direction = 'reverse'"
        )
        .await,
        1,
        "the stream switched"
    );
    let (code, report, text) = switch_on(&twins, "rollback", &["--fence-roles", "app"]).await;
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["outcome"], "switched");
    as_it_was(&twins.b, &twins.g).await;
    running.stop().await;
}
