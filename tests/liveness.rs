//! Liveness: teal always makes progress, or says why not (DESIGN rule 10).
//! A writer that waits on itself, a link that goes silent, a backoff that
//! never resets, a stuck stage nobody sees, a SIGTERM that never ends teal.

use std::time::Duration;

use crate::support::cluster::{Options, default_bin};
use crate::support::proxy::Proxy;
use crate::support::running::Running;
use crate::support::tap::init_logging;
use crate::support::twins::Twins;

const WAIT: Duration = Duration::from_secs(60);

/// Holds green's `tables` locked (ACCESS EXCLUSIVE) until dropped through
/// [`GreenLock::release`], so that what blue commits meanwhile piles up and
/// reaches green as one batch.
struct GreenLock(tokio_postgres::Client);

impl GreenLock {
    async fn take(twins: &Twins, tables: &str) -> GreenLock {
        let c = twins.green.client().await;
        c.batch_execute(&format!(
            "BEGIN; LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
        GreenLock(c)
    }

    /// Waits until blue's walsender sent everything written so far (and a
    /// moment for teal to assemble it), then lets green go.
    async fn release_after_blue_sent(self, twins: &Twins) {
        let target = twins.blue_insert_lsn().await;
        crate::support::wait::until_row(
            &twins.b,
            "SELECT 1 FROM pg_stat_replication WHERE sent_lsn >= $1::text::pg_lsn",
            &[&target],
            WAIT,
            "blue's walsender sent the backlog",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.0.batch_execute("COMMIT").await.unwrap();
    }
}

/// Issue 16.1: a table's inserts stream into green by COPY; updates or
/// deletes of the same table in the same batch reaching the run limit
/// (10,000 changes) were sent on the session behind the unfinished COPY, and
/// teal waited on itself forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_followed_by_many_changes_of_the_same_table_completes() {
    let schema = "CREATE TABLE dl (id int PRIMARY KEY, v int NOT NULL);
                  INSERT INTO dl SELECT g, 0 FROM generate_series(1, 20000) g;";
    let twins = Twins::start(&default_bin(), schema).await;
    let running = Running::start(&twins, twins.config()).await;
    // One transaction: 16 inserts open a COPY, then 20,016 updates.
    twins
        .b
        .batch_execute(
            "BEGIN; INSERT INTO dl SELECT g, 0 FROM generate_series(20001, 20016) g;
             UPDATE dl SET v = v + 1; COMMIT;",
        )
        .await
        .unwrap();
    twins.assert_converged(&["dl"], WAIT).await;
    // 100 inserts, then 10,000 deletes.
    twins
        .b
        .batch_execute(
            "BEGIN; INSERT INTO dl SELECT g, 1 FROM generate_series(30001, 30100) g;
             DELETE FROM dl WHERE id <= 10000; COMMIT;",
        )
        .await
        .unwrap();
    twins.assert_converged(&["dl"], WAIT).await;
    // Separate source transactions that a backlog puts into one batch.
    let lock = GreenLock::take(&twins, "dl").await;
    twins
        .b
        .batch_execute(
            "INSERT INTO dl SELECT g, 2 FROM generate_series(40001, 40050) g;
             UPDATE dl SET v = v + 1;
             INSERT INTO dl SELECT g, 3 FROM generate_series(50001, 50020) g;
             DELETE FROM dl WHERE id BETWEEN 10001 AND 20500;",
        )
        .await
        .unwrap();
    lock.release_after_blue_sent(&twins).await;
    twins.assert_converged(&["dl"], WAIT).await;
    let stats = running.stop().await;
    assert_eq!(
        stats.conflicts.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// The tables of the random workload: one found by its primary key (with a
/// TOASTed column), one by whole rows (REPLICA IDENTITY FULL, duplicates).
const RANDOM_SCHEMA: &str = "
    CREATE TABLE k (id bigint PRIMARY KEY, v int NOT NULL, pad text);
    CREATE TABLE f (id bigint, v int);
    ALTER TABLE f REPLICA IDENTITY FULL;
    INSERT INTO k SELECT g, 0, CASE WHEN g % 1000 = 0 THEN (SELECT string_agg(md5(g::text || i), '') FROM generate_series(1, 200) i) ELSE 'p' || g END
      FROM generate_series(1, 12000) g;
    INSERT INTO f SELECT g % 500, 0 FROM generate_series(1, 12000) g;";

#[derive(Debug, Clone, Copy)]
enum Table {
    Keyed,
    Full,
}

#[derive(Debug, Clone, Copy)]
enum Set {
    Value,
    Pad,
    Key,
}

/// One statement of the random workload; `rows` counts the rows it touches
/// (at most).
#[derive(Debug, Clone)]
enum Op {
    Insert {
        table: Table,
        rows: usize,
        wide: bool,
    },
    Update {
        table: Table,
        rows: usize,
        last: bool,
        set: Set,
    },
    Delete {
        table: Table,
        rows: usize,
        last: bool,
    },
    Truncate {
        table: Table,
    },
}

impl Op {
    fn sql(&self) -> String {
        // The first or last `rows` rows of a table, as a condition.
        let pick = |table: Table, rows: usize, last: bool| {
            let dir = if last { "DESC" } else { "ASC" };
            match table {
                Table::Keyed => {
                    format!("id IN (SELECT id FROM k ORDER BY id {dir} LIMIT {rows})")
                }
                Table::Full => format!(
                    "ctid = ANY (ARRAY(SELECT ctid FROM f ORDER BY id {dir}, v LIMIT {rows}))"
                ),
            }
        };
        match *self {
            Op::Insert {
                table: Table::Keyed,
                rows,
                wide,
            } => {
                let pad = if wide {
                    "(SELECT string_agg(md5((m + g)::text || i), '') FROM generate_series(1, 200) i)"
                } else {
                    "'i' || g"
                };
                format!(
                    "INSERT INTO k SELECT m + g, g % 100, {pad} \
                     FROM (SELECT coalesce(max(id), 0) m FROM k) s, generate_series(1, {rows}) g"
                )
            }
            Op::Insert {
                table: Table::Full,
                rows,
                ..
            } => {
                format!("INSERT INTO f SELECT g % 500, 0 FROM generate_series(1, {rows}) g")
            }
            Op::Update {
                table,
                rows,
                last,
                set,
            } => {
                let (name, assign) = match (table, set) {
                    (Table::Keyed, Set::Value) => ("k", "v = v + 1"),
                    (Table::Keyed, Set::Pad) => ("k", "pad = 'u' || v"),
                    // Past every key there is: no collision on the way.
                    (Table::Keyed, Set::Key) => ("k", "id = id + (SELECT max(id) FROM k)"),
                    (Table::Full, Set::Key) => ("f", "id = id + 1"),
                    (Table::Full, _) => ("f", "v = v + 1"),
                };
                format!(
                    "UPDATE {name} SET {assign} WHERE {}",
                    pick(table, rows, last)
                )
            }
            Op::Delete { table, rows, last } => {
                let name = match table {
                    Table::Keyed => "k",
                    Table::Full => "f",
                };
                format!("DELETE FROM {name} WHERE {}", pick(table, rows, last))
            }
            Op::Truncate {
                table: Table::Keyed,
            } => "TRUNCATE k".into(),
            Op::Truncate { table: Table::Full } => "TRUNCATE f".into(),
        }
    }
}

/// Row counts around the writer's thresholds: COPY from 16 inserts,
/// set-based statements from 16 rows, runs sent at 10,000 changes.
fn rows() -> impl proptest::strategy::Strategy<Value = usize> {
    use proptest::prelude::*;
    prop_oneof![
        4 => prop_oneof![Just(1), Just(15), Just(16), Just(17)],
        3 => 2..200usize,
        2 => prop_oneof![Just(9_999), Just(10_000), 10_001..12_500usize],
    ]
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let table = prop_oneof![3 => Just(Table::Keyed), 1 => Just(Table::Full)];
    let set = prop_oneof![Just(Set::Value), Just(Set::Pad), Just(Set::Key)];
    prop_oneof![
        4 => (table.clone(), rows(), any::<bool>())
            .prop_map(|(table, rows, wide)| Op::Insert { table, rows, wide: wide && rows < 1000 }),
        4 => (table.clone(), rows(), any::<bool>(), set)
            .prop_map(|(table, rows, last, set)| Op::Update { table, rows, last, set }),
        2 => (table.clone(), rows(), any::<bool>())
            .prop_map(|(table, rows, last)| Op::Delete { table, rows, last }),
        1 => table.prop_map(|table| Op::Truncate { table }),
    ]
}

/// A case: source transactions of a few statements each, and whether they
/// reach green as a backlog (one batch) or as they commit.
fn case() -> impl proptest::strategy::Strategy<Value = (Vec<Vec<Op>>, bool)> {
    use proptest::prelude::*;
    (
        proptest::collection::vec(proptest::collection::vec(op(), 1..4), 1..4),
        any::<bool>(),
    )
}

/// Issue 16.1's tool: random sequences of inserts, updates (values, TOASTed
/// columns, keys), deletes and truncates of a keyed and a FULL table, in
/// sizes around the writer's thresholds, applied by teal to a real green as
/// they commit or as one backlog batch: every case must reach green, equal
/// to blue. Cases: `TEAL_PROPTEST_CASES` (default 12); a failing case is
/// printed as it is (no shrinking: a hang would make every attempt wait).
#[test]
fn random_changes_reach_green_equal_to_blue() {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (twins, running) = rt.block_on(async {
        let twins = Twins::start(&default_bin(), RANDOM_SCHEMA).await;
        let mut config = twins.config();
        // A backlog becomes one green transaction.
        config.apply.batch_max_delay = Duration::from_secs(2);
        config.apply.batch_max_changes = 200_000;
        let running = Running::start(&twins, config).await;
        (twins, running)
    });
    let cases = std::env::var("TEAL_PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |(txns, backlog)| {
        rt.block_on(async {
            let lock = match backlog {
                true => Some(GreenLock::take(&twins, "k, f").await),
                false => None,
            };
            for txn in &txns {
                let body: Vec<String> = txn.iter().map(Op::sql).collect();
                let sql = format!("BEGIN; {}; COMMIT;", body.join("; "));
                twins
                    .b
                    .batch_execute(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            }
            if let Some(lock) = lock {
                lock.release_after_blue_sent(&twins).await;
            }
            twins.assert_converged(&["k", "f"], WAIT).await;
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        let errors = running
            .monitor
            .errors
            .load(std::sync::atomic::Ordering::Relaxed);
        let stats = running.stop().await;
        assert_eq!(errors, 0, "no errors while applying the random cases");
        assert_eq!(
            stats.conflicts.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    });
}

/// A connection string of `url` (as teal parses it).
fn conninfo(url: &str) -> teal::config::ConnInfo {
    teal::config::ConnInfo::parse_with_env(url, &|_| None).unwrap()
}

/// Issue 16.2, blue: a replication link that goes silent (a proxy holds its
/// bytes and closes nothing) ends after --replication-timeout (3 s here);
/// teal reconnects and streams on, losing nothing, and counts the reconnect.
/// Blue's old walsender holds the slot until its wal_sender_timeout (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_blue_link_is_dropped_and_streaming_resumes() {
    let bin = default_bin();
    let mut blue = Options::default();
    blue.settings
        .push(("wal_sender_timeout".into(), "5s".into()));
    let twins = Twins::start_with(
        &bin,
        &bin,
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        blue,
        Options::default(),
    )
    .await;
    let proxy = Proxy::start(&twins.blue).await;
    let mut config = twins.config();
    config.source.conninfo = conninfo(&proxy.url());
    config.source.replication_timeout = Some(Duration::from_secs(3));
    let running = Running::start(&twins, config).await;
    twins
        .b
        .batch_execute("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g")
        .await
        .unwrap();
    twins.assert_converged(&["t"], WAIT).await;
    proxy.freeze_open();
    twins
        .b
        .batch_execute("INSERT INTO t SELECT g, 'b' FROM generate_series(11, 20) g")
        .await
        .unwrap();
    // 3 s of silence, blue's 5 s, backoff of at most 1 s, and slack.
    twins
        .assert_converged(&["t"], Duration::from_secs(30))
        .await;
    let liveness = running.monitor.lag.liveness();
    assert!(liveness.source_reconnects() >= 1);
    let status = running.monitor.status_json();
    assert!(status["retries"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert!(status["errors"].as_u64().unwrap_or(0) >= 1, "{status}");
    running.stop().await;
}

/// Issue 16.2, green: green's link goes silent in the middle of a steady
/// load; the apply session is given up after --replication-timeout (3 s),
/// a new one ends the old one on green (it could hold locks or commit late)
/// and green ends up equal to blue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_green_link_is_dropped_and_apply_resumes() {
    let schema = "CREATE TABLE acct (id int PRIMARY KEY, n bigint NOT NULL);
                  CREATE TABLE hist (id bigint PRIMARY KEY, acct int);
                  INSERT INTO acct SELECT g, 0 FROM generate_series(1, 100) g;";
    let twins = Twins::start(&default_bin(), schema).await;
    let proxy = Proxy::start(&twins.green).await;
    let mut config = twins.config();
    config.apply.target = conninfo(&proxy.url());
    config.apply.timeout = Some(Duration::from_secs(3));
    let running = Running::start(&twins, config).await;
    let writer = {
        let b = twins.blue.client().await;
        tokio::spawn(async move {
            for n in 1..=400i64 {
                let sql = format!(
                    "BEGIN; UPDATE acct SET n = n + 1 WHERE id = {}; INSERT INTO hist VALUES ({n}, {}); COMMIT;",
                    1 + n % 100,
                    1 + n % 100
                );
                b.batch_execute(&sql).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.freeze_open();
    writer.await.unwrap();
    twins
        .assert_converged(&["acct", "hist"], Duration::from_secs(60))
        .await;
    let status = running.monitor.status_json();
    assert!(status["retries"].as_u64().unwrap_or(0) >= 1, "{status}");
    let last = status["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(
        last.contains("green did not answer within 3s"),
        "the retry says why: {last}"
    );
    let sessions = crate::support::twins::int8(
        &twins.g,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'teal apply'",
    )
    .await;
    assert_eq!(sessions, 1, "the frozen apply session is gone from green");
    running.stop().await;
}

/// Issue 16.2: an earlier apply session of the slot that green still keeps
/// (its teal gave up on it, or died unnoticed) holds the slot's claim and a
/// row lock, idle in its transaction. A new teal ends it instead of
/// waiting on its locks forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_apply_session_on_green_is_ended_not_waited_for() {
    let schema = "CREATE TABLE acct (id int PRIMARY KEY, n bigint NOT NULL);
                  INSERT INTO acct SELECT g, 0 FROM generate_series(1, 10) g;";
    let twins = Twins::start(&default_bin(), schema).await;
    let stale = twins.green.client().await;
    stale
        .batch_execute(
            "SELECT pg_advisory_lock(hashtextextended('teal apply ' || 'teal_slot', 0));
             BEGIN; UPDATE acct SET n = n WHERE id = 1;",
        )
        .await
        .unwrap();
    let mut config = twins.config();
    // Green's own idle timeout would end it too, later: not what is shown here.
    config.apply.timeout = Some(Duration::from_secs(300));
    let running = Running::start(&twins, config).await;
    twins
        .b
        .batch_execute("UPDATE acct SET n = n + 1")
        .await
        .unwrap();
    twins
        .assert_converged(&["acct"], Duration::from_secs(30))
        .await;
    assert!(stale.is_closed() || stale.batch_execute("SELECT 1").await.is_err());
    running.stop().await;
}

/// The value of the sample `name{slot="teal_slot"}` in a /metrics body.
fn sample(body: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{slot=\"teal_slot\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

/// Issue 16.4: green blocks apply (a table lock) while blue's changes wait:
/// teal_apply_idle_seconds climbs, teal_stalled is 1, teal_up 0, /readyz
/// answers 503 saying what is stuck; once green lets go, all is well again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_apply_shows_in_metrics_and_readyz() {
    use teal::http::get;
    let twins = Twins::start(&default_bin(), "CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut config = twins.config();
    config.monitor.metrics_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    config.monitor.stall_after = Some(Duration::from_secs(2));
    let running = Running::start(&twins, config).await;
    let addr = running.monitor.addr().expect("the endpoint listens");
    let ready = || async move { get(addr, "/readyz", None).await.unwrap() };
    let deadline = std::time::Instant::now() + WAIT;
    while ready().await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "ready while streaming"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lock = GreenLock::take(&twins, "t").await;
    twins
        .b
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let why = loop {
        let (code, body) = ready().await;
        if code == 503 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never failed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        why.starts_with("apply stalled: 1 transactions received"),
        "{why}"
    );
    let (_, metrics) = get(addr, "/metrics", None).await.unwrap();
    assert_eq!(sample(&metrics, "teal_stalled"), 1.0);
    assert_eq!(sample(&metrics, "teal_up"), 0.0);
    assert!(sample(&metrics, "teal_apply_idle_seconds") >= 2.0);
    lock.0.batch_execute("COMMIT").await.unwrap();
    twins.assert_converged(&["t"], WAIT).await;
    let (code, body) = ready().await;
    assert_eq!((code, body.as_str()), (200, "streaming\n"));
    let (_, metrics) = get(addr, "/metrics", None).await.unwrap();
    assert_eq!(sample(&metrics, "teal_stalled"), 0.0);
    running.stop().await;
}

/// Issue 16.4: SIGTERM while apply is stuck (green holds a lock teal waits
/// for) ends teal within --shutdown-timeout (2 s) with status 1, having
/// confirmed nothing green did not commit; the next teal applies it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_stuck_teal_in_bounded_time() {
    use std::process::Stdio;
    init_logging();
    let twins = Twins::start(&default_bin(), "CREATE TABLE t (id int PRIMARY KEY)").await;
    let teal = twins
        .teal_stream_command()
        .args(["--shutdown-timeout", "2s", "--metrics-addr", "off"])
        .args(["--log", "warn", "--status-interval", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("teal runs");
    twins.wait_streaming().await;
    twins
        .b
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    twins.assert_converged(&["t"], WAIT).await;
    let lock = GreenLock::take(&twins, "t").await;
    twins
        .b
        .batch_execute("INSERT INTO t SELECT generate_series(2, 100)")
        .await
        .unwrap();
    crate::support::wait::until_row(
        &twins.g,
        "SELECT 1 FROM pg_stat_activity WHERE application_name = 'teal apply' AND wait_event_type = 'Lock'",
        &[],
        WAIT,
        "teal waits for green's lock",
    )
    .await;
    // SAFETY: kill with a valid pid and signal number.
    unsafe {
        libc::kill(teal.id() as i32, libc::SIGTERM);
    }
    let signalled = std::time::Instant::now();
    let output = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || teal.wait_with_output()),
    )
    .await
    .expect("teal ended after SIGTERM")
    .unwrap()
    .unwrap();
    let took = signalled.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(15), "ended in {took:?}");
    assert!(
        stderr.contains("teal did not stop within 2s of the signal"),
        "{stderr}"
    );
    let confirmed = lsn(
        &twins.b,
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'teal_slot'",
    )
    .await;
    let committed = lsn(
        &twins.g,
        "SELECT end_lsn::text FROM teal.progress WHERE slot = 'teal_slot'",
    )
    .await;
    assert!(
        confirmed <= committed,
        "blue's slot confirmed {confirmed}, green committed {committed}"
    );
    lock.0.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        crate::support::twins::int8(&twins.g, "SELECT count(*) FROM t").await,
        1,
        "nothing of the batch teal gave up was committed"
    );
    let running = Running::start(&twins, twins.config()).await;
    twins.assert_converged(&["t"], WAIT).await;
    running.stop().await;
}

/// Issue 16.5: a column dropped on green while teal streams stops teal with
/// the error that says what to run on green (it was green's raw SQL error;
/// the hint only came with the next start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_dropped_on_green_while_streaming_stops_with_the_fix() {
    let twins = Twins::start(
        &default_bin(),
        "CREATE TABLE ledger (id int PRIMARY KEY, memo text, amount numeric)",
    )
    .await;
    let running = Running::start(&twins, twins.config()).await;
    twins
        .b
        .batch_execute("INSERT INTO ledger VALUES (1, 'a', 1)")
        .await
        .unwrap();
    twins.assert_converged(&["ledger"], WAIT).await;
    twins
        .g
        .batch_execute("ALTER TABLE ledger DROP COLUMN amount")
        .await
        .unwrap();
    twins
        .b
        .batch_execute("INSERT INTO ledger VALUES (2, 'b', 2)")
        .await
        .unwrap();
    let err = running.failure().await.to_string();
    assert!(
        err.contains("ALTER TABLE \"public\".\"ledger\" ADD COLUMN \"amount\" numeric"),
        "{err}"
    );
}

/// The LSN `sql` returns as text.
async fn lsn(client: &tokio_postgres::Client, sql: &str) -> teal::lsn::Lsn {
    let text: String = client.query_one(sql, &[]).await.unwrap().get(0);
    text.parse().unwrap()
}

/// Issue 16.2: a quiet blue is not a silent one. Blue sends nothing while
/// nothing is published and teal keeps confirming; at half of
/// --replication-timeout (here 1 s of 2 s) teal asks for a reply, blue
/// answers, and the session stays up however long the quiet lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_blue_answers_the_ping_and_keeps_its_session() {
    let twins = Twins::start(&default_bin(), "CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut config = twins.config();
    config.source.replication_timeout = Some(Duration::from_secs(2));
    let running = Running::start(&twins, config).await;
    twins
        .b
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    twins.assert_converged(&["t"], WAIT).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let liveness = running.monitor.lag.liveness();
    assert_eq!(
        liveness.source_reconnects(),
        0,
        "no reconnect in 7 quiet seconds: {:?}",
        liveness.last_source_error()
    );
    twins
        .b
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    twins.assert_converged(&["t"], WAIT).await;
    running.stop().await;
}

/// Issue 22, point 3: with green blocked and a small
/// `max_slot_wal_keep_size`, blue invalidates the slot; teal stops with
/// status 3 and a message naming the slot, the LSN from which changes are
/// gone, and the commands that recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_stops_with_the_commands_that_recover() {
    use crate::support::cluster::{Options, default_bin};
    let bin = default_bin();
    let blue = Options {
        settings: vec![("max_slot_wal_keep_size".into(), "1MB".into())],
        ..Options::default()
    };
    let twins = crate::support::twins::Twins::start_with(
        &bin,
        &bin,
        "CREATE TABLE t (id int PRIMARY KEY, v text);",
        blue,
        Options::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let mut teal = twins
        .teal_stream_command()
        .args(["--create-slot", "--metrics-addr", "off"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    twins.wait_streaming().await;
    // Green blocked: apply waits on the lock, the slot's position stays.
    let (green, conn) = tokio_postgres::connect(&twins.green.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    green
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut lost = false;
    for i in 0..30 {
        twins
            .b
            .batch_execute(&format!(
                "INSERT INTO t VALUES ({i}, repeat('x', 1000)); SELECT pg_switch_wal(); CHECKPOINT;"
            ))
            .await
            .unwrap();
        let status: Option<String> = twins
            .b
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'teal_slot'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            lost = true;
            break;
        }
    }
    assert!(lost, "blue invalidated the slot");
    green.batch_execute("ROLLBACK").await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = teal.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "teal did not stop");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(3), "{said}");
    assert!(
        said.contains("replication slot \"teal_slot\" was invalidated on blue")
            && said.contains("the WAL from 0/")
            && said.contains("SELECT pg_drop_replication_slot('teal_slot')")
            && said.contains("teal sync --source ... --target ... --slot teal_slot"),
        "{said}"
    );
}
