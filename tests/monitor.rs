//! `teal stream`'s HTTP endpoint read over HTTP during real runs: lag in
//! bytes and seconds while green is blocked, heartbeats, the exposition
//! format, the bearer token and the probes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use teal::ops::stream::StreamConfig;

use crate::support::cluster::default_bin;
use crate::support::twins::Twins;
use crate::support::wait::until_row;

const WAIT: Duration = Duration::from_secs(60);

/// Status code and body of `GET path`, with an optional bearer token.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    teal::http::get(addr, path, token)
        .await
        .unwrap_or_else(|e| panic!("GET {path} from teal's endpoint: {e}"))
}

/// Samples of the exposition text: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("sample line");
            (name.to_owned(), value.parse().expect("numeric value"))
        })
        .collect()
}

/// Checks the text exposition format (what `promtool check metrics` checks
/// that matters here): HELP and TYPE once per family, before its samples;
/// sample names belong to their family; counters end in `_total`; names and
/// label names are valid; label values are quoted; values are numbers.
pub(crate) fn check_exposition(text: &str) {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut helped = BTreeSet::new();
    let mut typed = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    // Histograms (one series each here): (le, cumulative count) and _count.
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(helped.contains(name), "HELP before TYPE for {name}");
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice for {name}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} ends in _total");
            }
            assert!(name.starts_with("teal_"), "{name} is teal's");
            current = Some((name.to_owned(), kind.to_owned()));
        } else {
            assert!(!line.starts_with('#'), "unknown comment {line}");
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("value of {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, Some(l.strip_suffix('}').expect("closing brace"))),
                None => (series, None),
            };
            let (family, kind) = current.as_ref().expect("a sample after its TYPE");
            let belongs = name == family && kind != "histogram"
                || (kind == "summary" || kind == "histogram")
                    && [format!("{family}_sum"), format!("{family}_count")]
                        .iter()
                        .any(|n| n == name)
                || kind == "histogram" && name == format!("{family}_bucket");
            assert!(belongs, "sample {name} outside its family {family}");
            if kind == "histogram" && name.ends_with("_bucket") {
                let le = labels
                    .and_then(|l| l.split("le=\"").nth(1))
                    .and_then(|v| v.split('"').next())
                    .unwrap_or_else(|| panic!("bucket without le: {line}"));
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or_else(|_| panic!("le of {line}"))
                };
                buckets
                    .entry(family.clone())
                    .or_default()
                    .push((bound, value.parse::<f64>().unwrap()));
            } else if kind == "histogram" && name.ends_with("_count") {
                counts.insert(family.clone(), value.parse::<f64>().unwrap());
            }
            if let Some(labels) = labels {
                // label="value" pairs; values may hold escaped quotes.
                let mut rest = labels;
                while !rest.is_empty() {
                    let (label, after) = rest.split_once("=\"").expect("label=\"value\"");
                    assert!(valid_name(label), "label {label} in {line}");
                    let mut end = None;
                    let mut escaped = false;
                    for (i, c) in after.char_indices() {
                        match (escaped, c) {
                            (true, _) => escaped = false,
                            (false, '\\') => escaped = true,
                            (false, '"') => {
                                end = Some(i);
                                break;
                            }
                            _ => {}
                        }
                    }
                    let end = end.expect("closing quote");
                    rest = after[end + 1..]
                        .strip_prefix(',')
                        .unwrap_or(&after[end + 1..]);
                }
            }
        }
    }
    assert!(typed.len() >= 15, "all families present: {typed:?}");
    for (family, b) in &buckets {
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{family}: bounds increase and counts are cumulative: {b:?}"
        );
        assert_eq!(
            b.last().map(|l| l.0),
            Some(f64::INFINITY),
            "{family} has +Inf"
        );
        assert_eq!(
            b.last().map(|l| l.1),
            counts.get(family).copied(),
            "{family}: +Inf = _count"
        );
    }
    for (family, kind) in &typed {
        if kind == "histogram" {
            assert!(buckets.contains_key(family), "{family} has buckets");
        }
    }
}

/// `teal stream` in-process with its endpoint on a free port.
struct Running {
    inner: crate::support::running::Running,
    token: Option<String>,
}

impl std::ops::Deref for Running {
    type Target = crate::support::running::Running;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Running {
    async fn start(twins: &Twins, mut config: StreamConfig) -> Running {
        config.monitor.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let token = config
            .monitor
            .metrics_token
            .as_ref()
            .map(|t| t.expose().to_owned());
        Running {
            inner: crate::support::running::Running::start(twins, config).await,
            token,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.monitor.addr().expect("the endpoint listens")
    }

    /// Polls `/metrics` until `done` holds for its samples.
    async fn wait_metrics(
        &self,
        what: &str,
        done: impl Fn(&BTreeMap<String, f64>) -> bool,
    ) -> BTreeMap<String, f64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = get(self.addr(), "/metrics", self.token.as_deref()).await;
            assert_eq!(status, 200);
            let s = samples(&body);
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}; last metrics:\n{body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.inner.stop().await;
    }
}

const LAG_BYTES: &str = "teal_lag_bytes{slot=\"teal_slot\"}";
const LAG_SECONDS: &str = "teal_lag_seconds{slot=\"teal_slot\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_rises_while_green_is_blocked_and_returns_to_zero() {
    let bin = default_bin();
    let twins = Twins::start(&bin, "CREATE TABLE acct (id int PRIMARY KEY, v int)").await;
    let running = Running::start(&twins, twins.config()).await;
    twins
        .b
        .batch_execute("INSERT INTO acct SELECT i, i FROM generate_series(1, 100) i")
        .await
        .unwrap();
    running
        .wait_metrics("caught up after the first rows", |s| {
            s[LAG_BYTES] == 0.0
                && s[LAG_SECONDS] == 0.0
                && s["teal_apply_transactions_total{slot=\"teal_slot\"}"] >= 1.0
        })
        .await;

    // Green is blocked: a lock teal's batch has to wait for.
    let locker = twins.green.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE acct IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let blocked_at = Instant::now();
    twins
        .b
        .batch_execute("INSERT INTO acct SELECT i, i FROM generate_series(101, 150) i")
        .await
        .unwrap();
    let first = running
        .wait_metrics("lag rises while green is blocked", |s| {
            s[LAG_BYTES] > 0.0 && s[LAG_SECONDS] > 0.5
        })
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, body) = get(running.addr(), "/metrics", None).await;
    let second = samples(&body);
    assert!(
        second[LAG_SECONDS] > first[LAG_SECONDS] + 0.3,
        "lag_seconds keeps growing while blocked: {} then {}",
        first[LAG_SECONDS],
        second[LAG_SECONDS]
    );
    assert!(second[LAG_BYTES] >= first[LAG_BYTES]);
    let (_, status) = get(running.addr(), "/status", None).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["state"], "streaming");
    assert!(
        status["pending_transactions"].as_u64() >= Some(1),
        "{status}"
    );

    locker.batch_execute("ROLLBACK").await.unwrap();
    let blocked_for = blocked_at.elapsed().as_secs_f64();
    let after = running
        .wait_metrics("lag back to 0 after green is unblocked", |s| {
            s[LAG_BYTES] == 0.0 && s[LAG_SECONDS] == 0.0
        })
        .await;
    let max_latency = after["teal_apply_latency_seconds{slot=\"teal_slot\",quantile=\"1\"}"];
    assert!(
        max_latency > 1.0 && max_latency < blocked_for + 5.0,
        "the blocked transaction's apply latency ({max_latency} s) shows the block ({blocked_for:.1} s)"
    );
    assert_eq!(
        after["teal_apply_table_changes_total{slot=\"teal_slot\",table=\"public.acct\",operation=\"insert\"}"],
        150.0
    );
    assert_eq!(
        after["teal_apply_latency_seconds_count{slot=\"teal_slot\"}"],
        2.0
    );
    // Busy time: the apply stage waited on green's lock while applying; the
    // decoder worked, but far less than the test ran.
    let apply_busy = after["teal_apply_busy_seconds_total{slot=\"teal_slot\"}"];
    assert!(
        apply_busy > second[LAG_SECONDS] - 0.5 && apply_busy < blocked_for + 5.0,
        "apply busy {apply_busy} s covers most of the wait (lag was {} s; locked {blocked_for:.1} s)",
        second[LAG_SECONDS]
    );
    let decode_busy = after["teal_decode_busy_seconds_total{slot=\"teal_slot\"}"];
    assert!(
        decode_busy > 0.0 && decode_busy < 1.0,
        "decoder busy {decode_busy} s: some, and not the idle time"
    );
    // Batch sizes: every batch holds at most 100 changes; two held more than 10.
    let batches = after["teal_apply_batches_total{slot=\"teal_slot\"}"];
    let bucket = |le: &str| {
        after[&format!("teal_apply_batch_size_changes_bucket{{slot=\"teal_slot\",le=\"{le}\"}}")]
    };
    assert_eq!(bucket("+Inf"), batches);
    assert_eq!(bucket("100"), batches);
    assert!(bucket("10") <= batches - 2.0, "the 100- and 50-row batches");
    assert_eq!(
        after["teal_apply_batch_size_changes_sum{slot=\"teal_slot\"}"],
        after["teal_apply_changes_total{slot=\"teal_slot\"}"]
    );
    twins.assert_converged(&["acct"], WAIT).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_advance_the_slot_while_published_tables_are_idle() {
    let bin = default_bin();
    let twins = Twins::start(
        &bin,
        "CREATE TABLE acct (id int PRIMARY KEY, v int); CREATE TABLE other (id int)",
    )
    .await;
    twins
        .b
        .batch_execute("CREATE PUBLICATION only_acct FOR TABLE acct")
        .await
        .unwrap();
    let mut config = twins.config();
    config.source.publications = vec!["only_acct".into()];
    config.monitor.heartbeat_interval = Some(Duration::from_millis(200));
    config.monitor.slot_poll_interval = Duration::from_millis(200);
    let running = Running::start(&twins, config).await;
    // Blue writes only to a table teal does not receive.
    twins
        .b
        .batch_execute("INSERT INTO other SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    let written = twins.blue_insert_lsn().await;
    until_row(
        &twins.b,
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'teal_slot' AND confirmed_flush_lsn >= $1::text::pg_lsn",
        &[&written],
        WAIT,
        &format!("the slot never confirmed past {written}"),
    )
    .await;
    let s = running
        .wait_metrics("heartbeats counted, slot health read", |s| {
            s["teal_source_heartbeats_total{slot=\"teal_slot\"}"] >= 2.0
                && s.contains_key("teal_slot_retained_wal_bytes{slot=\"teal_slot\"}")
        })
        .await;
    assert_eq!(
        s["teal_slot_wal_status{slot=\"teal_slot\",status=\"reserved\"}"],
        1.0
    );
    assert_eq!(
        s["teal_apply_changes_total{slot=\"teal_slot\"}"], 0.0,
        "heartbeats apply nothing"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_format_token_and_probes() {
    let bin = default_bin();
    let twins = Twins::start(
        &bin,
        "CREATE TABLE \"Odd \"\"Name\"\" \\ t\" (id int PRIMARY KEY)",
    )
    .await;
    let mut config = twins.config();
    config.monitor.metrics_token = Some("s3cret-token".into());
    let running = Running::start(&twins, config).await;
    twins.b.batch_execute("INSERT INTO \"Odd \"\"Name\"\" \\ t\" VALUES (1), (2); TRUNCATE \"Odd \"\"Name\"\" \\ t\"").await.unwrap();
    let addr = running.addr();
    assert_eq!(get(addr, "/metrics", None).await.0, 401, "no token");
    assert_eq!(
        get(addr, "/metrics", Some("wrong-token!")).await.0,
        401,
        "wrong token"
    );
    assert_eq!(get(addr, "/status", None).await.0, 401);
    assert_eq!(get(addr, "/healthz", None).await, (200, "ok\n".into()));
    assert_eq!(
        get(addr, "/readyz", None).await,
        (200, "streaming\n".into())
    );
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let (status, body) = get(addr, "/metrics", Some("s3cret-token")).await;
        assert_eq!(status, 200);
        if body.contains("operation=\"truncate\"} 1") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the truncate never showed:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    check_exposition(&body);
    // The table name's quote and backslash are escaped in the label value.
    assert!(
        body.contains(r#"table="public.Odd \"Name\" \\ t",operation="insert"} 2"#),
        "escaped table label:\n{body}"
    );
    running.stop().await;
    // A stopped stream is not ready.
    assert!(running_addr_refuses(addr).await);
}

/// After shutdown the endpoint is gone.
async fn running_addr_refuses(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The headless browser the dashboard test drives (scripts/test-deps installs Debian's `chromium`).
fn chromium() -> std::path::PathBuf {
    let candidates = ["chromium", "chromium-browser", "google-chrome"];
    std::env::var_os("TEAL_CHROMIUM")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .flat_map(|dir| candidates.iter().map(move |c| dir.join(c)))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("no headless browser: install Debian's chromium (scripts/test-deps does) or set TEAL_CHROMIUM")
        })
}

/// Runs headless Chromium on `url` with `args`; its stdout.
fn headless(url: &str, args: &[&str]) -> String {
    let profile = tempfile::Builder::new()
        .prefix("teal-chromium-")
        .tempdir()
        .unwrap();
    let out = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1500",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_real_samples_in_headless_chromium() {
    let bin = default_bin();
    let twins = Twins::start(&bin, "CREATE TABLE ledger (id int PRIMARY KEY, memo text)").await;
    let mut config = twins.config();
    config.monitor.metrics_token = Some("dash-token".into());
    let running = Running::start(&twins, config).await;
    // Writes spread over a few seconds: several one-second samples with changes.
    for i in 0..5 {
        twins
            .b
            .batch_execute(&format!(
                "INSERT INTO ledger SELECT g, 'memo ' || g FROM generate_series({}, {}) g",
                i * 100 + 1,
                i * 100 + 100
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    running
        .wait_metrics("all 500 rows applied", |s| {
            s.get("teal_apply_changes_total{slot=\"teal_slot\"}") == Some(&500.0)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let addr = running.addr();
    // The page is open; its data needs the token.
    let (status, page) = get(addr, "/", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("<canvas id=\"lag-chart\""), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    assert_eq!(get(addr, "/history", None).await.0, 401);
    let (status, history) = get(addr, "/history?since=0", Some("dash-token")).await;
    assert_eq!(status, 200);
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let changes = history["changes"].as_array().unwrap();
    assert!(changes.len() >= 3, "one sample a second: {history}");
    assert_eq!(changes.last().unwrap(), 500, "{history}");

    let url = format!("http://{addr}/#token=dash-token");
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || headless(&url, &["--dump-dom"])
    })
    .await
    .unwrap();
    let points: usize = dom
        .split("data-chart-points=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the chart never drew samples:\n{dom}"));
    assert!(points >= 3, "{points} points");
    assert!(
        dom.contains("data-changes=\"500\""),
        "latest sample shown:\n{dom}"
    );
    assert!(
        dom.contains("<td>public.ledger</td><td>500</td>"),
        "table counters:\n{dom}"
    );
    assert!(dom.contains("class=\"state streaming\""), "state:\n{dom}");

    // The screenshot is kept as a test artifact.
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || headless(&url, &[&arg]))
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot: {} bytes",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    running.stop().await;
}

/// `teal status` (the binary) with `args`: exit success, stdout, stderr.
fn teal_status(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .arg("status")
        .args(args)
        .env_remove("TEAL_METRICS_TOKEN")
        .env_remove("TEAL_TARGET_URL")
        .output()
        .expect("teal status runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Audit rows of green, oldest first: (operation, status, correlation id, ended, duration, details).
async fn audit_rows(
    g: &tokio_postgres::Client,
) -> Vec<(String, String, String, bool, Option<i64>, serde_json::Value)> {
    g.query(
        "SELECT operation, status, correlation_id::text, ended_at IS NOT NULL, duration_ms, details::text \
         FROM teal.audit ORDER BY started_at, operation",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            serde_json::from_str(r.get::<_, &str>(5)).unwrap(),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_and_audit_trail() {
    let bin = default_bin();
    let twins = Twins::start(&bin, "CREATE TABLE acct (id int PRIMARY KEY, n int)").await;
    let mut config = twins.config();
    config.monitor.metrics_token = Some("st-token".into());
    let running = Running::start(&twins, config.clone()).await;
    let run1 = running.monitor.correlation_id.clone();
    twins
        .b
        .batch_execute("INSERT INTO acct SELECT g, g FROM generate_series(1, 100) g")
        .await
        .unwrap();
    running
        .wait_metrics("100 rows applied", |s| {
            s.get("teal_apply_changes_total{slot=\"teal_slot\"}") == Some(&100.0)
        })
        .await;
    let addr = running.addr().to_string();

    // Live: from /status (the token is needed).
    let (ok, _, err) = teal_status(&["--metrics-addr", &addr]);
    assert!(
        !ok && err.contains("401") && err.contains("--target"),
        "{err}"
    );
    let (ok, out, err) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || teal_status(&["--metrics-addr", &addr, "--metrics-token", "st-token"])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains(&format!("(run {run1})")), "{out}");
    assert!(out.contains("state           streaming"), "{out}");
    assert!(
        out.contains("public.acct: 100 inserts · 0 updates"),
        "{out}"
    );
    assert!(
        out.contains("applied         1 transactions · 100 changes"),
        "{out}"
    );

    // The session is in the audit trail while it runs, without secrets.
    until_row(
        &twins.g,
        "SELECT 1 FROM teal.audit WHERE operation = 'stream' AND status = 'running'",
        &[],
        WAIT,
        "the session start in the audit trail",
    )
    .await;
    let row = twins
        .g
        .query_one(
            "SELECT correlation_id::text, performed_by, source, target FROM teal.audit",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), run1);
    assert!(row.get::<_, String>(1).contains('@'), "user@host");
    let (source, target): (String, String) = (row.get(2), row.get(3));
    assert!(
        source.starts_with("postgresql://postgres@127.0.0.1:"),
        "{source}"
    );
    assert_eq!(target, config.apply.target.to_string());
    running.stop().await;
    let rows = audit_rows(&twins.g).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (op, status, id, ended, duration, details) = &rows[0];
    assert_eq!(
        (op.as_str(), status.as_str(), id),
        ("stream", "stopped", &run1)
    );
    assert!(*ended && duration.is_some_and(|d| d > 0), "{rows:?}");
    assert_eq!(details["changes"], 100, "{details}");
    assert_eq!(details["error"], serde_json::Value::Null, "{details}");

    // Stopped: from green's tables.
    let green_url = twins.green.cli_url();
    let (ok, out, err) = tokio::task::spawn_blocking({
        let (addr, url) = (addr.clone(), green_url.clone());
        move || {
            teal_status(&[
                "--metrics-addr",
                &addr,
                "--target",
                &url,
                "--slot",
                "teal_slot",
            ])
        }
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let end_lsn: String = twins
        .g
        .query_one(
            "SELECT end_lsn::text FROM teal.progress WHERE slot = 'teal_slot'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(out.contains("teal is not answering"), "{out}");
    assert!(
        out.contains(&format!("slot teal_slot: applied through {end_lsn} ")),
        "{out}"
    );
    assert!(out.contains("0 conflicts logged"), "{out}");
    assert!(
        out.contains("stream stopped started") && out.contains(&run1),
        "{out}"
    );

    // A session that never recorded its end is marked interrupted once the
    // next one holds the slot; a schema error is its own audit row.
    twins
        .g
        .batch_execute("UPDATE teal.audit SET status = 'running', ended_at = NULL")
        .await
        .unwrap();
    let running = Running::start(&twins, config).await;
    let run2 = running.monitor.correlation_id.clone();
    assert_ne!(run1, run2);
    until_row(
        &twins.g,
        "SELECT 1 FROM teal.audit WHERE status = 'interrupted'",
        &[],
        WAIT,
        "the earlier session marked interrupted",
    )
    .await;
    twins
        .b
        .batch_execute("ALTER TABLE acct ADD COLUMN extra int; INSERT INTO acct VALUES (101, 1, 7)")
        .await
        .unwrap();
    let ended = tokio::time::timeout(WAIT, running.inner.task)
        .await
        .expect("the stream stops on the schema error")
        .unwrap();
    let e = ended
        .expect_err("schema drift stops the stream")
        .to_string();
    assert!(e.contains("extra"), "{e}");
    running.inner.shutdown.cancel();
    let rows = audit_rows(&twins.g).await;
    let summary: Vec<(&str, &str, bool)> = rows
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2 == run2))
        .collect();
    assert_eq!(
        summary,
        [
            ("stream", "interrupted", false),
            ("stream", "failed", true),
            ("schema_error", "failed", true)
        ],
        "{rows:?}"
    );
    assert!(
        rows[2].5["error"].as_str().unwrap().contains("extra"),
        "{rows:?}"
    );
    assert!(
        rows[1].5["error"].as_str().unwrap().contains("extra"),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_runs_correlation_id() {
    let bin = default_bin();
    let twins = Twins::start(&bin, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let log_dir = tempfile::Builder::new()
        .prefix("teal-json-log-")
        .tempdir()
        .unwrap();
    let log_path = log_dir.path().join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .args(["stream", "--slot", "teal_slot", "--publication", "teal_pub"])
        .args([
            "--source",
            &twins.blue.cli_url(),
            "--target",
            &twins.green.cli_url(),
        ])
        .args([
            "--metrics-addr",
            "off",
            "--log-format",
            "json",
            "--log",
            "info",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("teal runs");
    // The same id names the session in the audit trail and its log lines.
    until_row(
        &twins.g,
        "SELECT 1 FROM pg_tables WHERE schemaname = 'teal' AND tablename = 'audit'",
        &[],
        WAIT,
        "teal's schema on green",
    )
    .await;
    until_row(
        &twins.g,
        "SELECT 1 FROM teal.audit WHERE operation = 'stream'",
        &[],
        WAIT,
        "the session's audit row",
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let id: String = twins
        .g
        .query_one("SELECT correlation_id::text FROM teal.audit", &[])
        .await
        .unwrap()
        .get(0);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let start = lines
        .iter()
        .find(|l| l["fields"]["message"] == "stream session started")
        .unwrap_or_else(|| panic!("no session start in:\n{log}"));
    assert_eq!(start["span"]["correlation_id"], id.as_str(), "{start}");
    assert_eq!(start["fields"]["slot"], "teal_slot", "{start}");
    // Every line carries it, the driver's sessions on green included.
    for l in &lines {
        assert_eq!(l["span"]["correlation_id"], id.as_str(), "{l}");
    }
}

/// The slot families' samples each follow their own HEADER (the retained
/// WAL sample came after the wal_status header: invalid exposition as soon
/// as the slot watcher had reported).
#[test]
fn slot_samples_follow_their_own_family() {
    let monitor = teal::monitor::Monitor::new("s");
    check_exposition(&monitor.metrics_text());
    monitor
        .slot_watch
        .set_health(Some(teal::progress::SlotHealth {
            retained_bytes: 1234,
            wal_status: Some("reserved".into()),
            confirmed_flush_lsn: None,
            safe_wal_bytes: Some(4096),
            wal_bytes_per_second: Some(1024.0),
            invalidation_eta_seconds: Some(4.0),
        }));
    let text = monitor.metrics_text();
    check_exposition(&text);
    let s = samples(&text);
    assert_eq!(s["teal_slot_retained_wal_bytes{slot=\"s\"}"], 1234.0);
    assert_eq!(
        s["teal_slot_wal_status{slot=\"s\",status=\"reserved\"}"],
        1.0
    );
    assert_eq!(s["teal_slot_safe_wal_bytes{slot=\"s\"}"], 4096.0);
    assert_eq!(s["teal_slot_invalidation_eta_seconds{slot=\"s\"}"], 4.0);
}
