//! The `teal tail` binary end to end: the JSON lines other tools parse, and
//! LSNs confirmed to blue only for what was printed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use teal::lsn::Lsn;

use crate::support::cluster::{Cluster, default_bin};
use crate::support::wait::until_row;

struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tail {
    fn start(cluster: &Cluster, extra: &[&str]) -> Tail {
        let mut child = Command::new(env!("CARGO_BIN_EXE_teal"))
            .env_clear()
            .args([
                "tail",
                "--source",
                &cluster.cli_url(),
                "--slot",
                "tail_slot",
                "--publication",
                "p",
            ])
            .args(["--status-interval", "1s"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("teal runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Tail { child, lines }
    }

    /// Lines up to and including the `n`th commit line.
    fn until_commits(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = Vec::new();
        let mut commits = 0;
        while commits < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("tail printed in time");
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
            if v["kind"] == "commit" {
                commits += 1;
            }
            out.push(v);
        }
        out
    }

    /// SIGINT, then the exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        // SAFETY: kill with a valid pid and signal number.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        self.child.wait().unwrap()
    }
}

async fn wait_slot_active(client: &tokio_postgres::Client, active: bool) {
    until_row(
        client,
        // The slot is active while it is being created too; only once its
        // consistent point is found (confirmed_flush_lsn set) are later
        // writes part of its history.
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'tail_slot' AND active = $1 \
         AND confirmed_flush_lsn IS NOT NULL",
        &[&active],
        Duration::from_secs(30),
        &format!("slot never became active={active}"),
    )
    .await;
}

async fn confirmed(client: &tokio_postgres::Client) -> Lsn {
    let s: String = client
        .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'tail_slot'", &[])
        .await
        .unwrap()
        .get(0);
    s.parse().unwrap()
}

fn without(mut v: Value, keys: &[&str]) -> Value {
    for k in keys {
        v.as_object_mut().unwrap().remove(*k);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_and_confirmation_after_flush() {
    let cluster = Cluster::start(&default_bin());
    let client = cluster.client().await;
    client
        .batch_execute(
            "CREATE TABLE ledger (id bigint PRIMARY KEY, memo text); \
             CREATE TABLE other (id int PRIMARY KEY); \
             CREATE PUBLICATION p FOR ALL TABLES;",
        )
        .await
        .unwrap();
    let tail = Tail::start(&cluster, &["--create-slot", "--format", "json"]);
    wait_slot_active(&client, true).await;
    for sql in [
        "INSERT INTO ledger VALUES (1, NULL)",
        "UPDATE ledger SET id = 2 WHERE id = 1",
        "DELETE FROM ledger WHERE id = 2",
        "TRUNCATE ledger, other",
        "SELECT pg_logical_emit_message(false, 'teal.heartbeat', 'hi')",
        "INSERT INTO other VALUES (7)",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let lines = tail.until_commits(5);
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "begin", "change", "commit", "begin", "change", "commit", "begin", "change", "commit",
            "begin", "change", "commit", "message", "begin", "change", "commit"
        ]
    );
    let begin = &lines[0];
    let commit = &lines[2];
    assert!(begin["xid"].is_u64());
    assert_eq!(begin["final_lsn"], commit["commit_lsn"]);
    assert_eq!(begin["commit_ts"], commit["commit_ts"]);
    assert!(begin["commit_ts"].as_str().unwrap().ends_with('Z'));
    assert!(begin["final_lsn"].as_str().unwrap().parse::<Lsn>().is_ok());
    assert_eq!(
        without(lines[1].clone(), &["lsn"]),
        json!({"kind":"change","op":"insert","schema":"public","table":"ledger","new":{"id":"1","memo":null}})
    );
    assert_eq!(
        without(lines[4].clone(), &["lsn"]),
        json!({"kind":"change","op":"update","schema":"public","table":"ledger","key":{"id":"1"},"old":null,"new":{"id":"2","memo":null}})
    );
    assert_eq!(
        without(lines[7].clone(), &["lsn"]),
        json!({"kind":"change","op":"delete","schema":"public","table":"ledger","key":{"id":"2"},"old":null})
    );
    assert_eq!(
        without(lines[10].clone(), &["lsn"]),
        json!({"kind":"change","op":"truncate","tables":["public.ledger","public.other"],"cascade":false,"restart_identity":false})
    );
    assert_eq!(
        without(lines[12].clone(), &["lsn"]),
        json!({"kind":"message","prefix":"teal.heartbeat","content_base64":"aGk=","transactional":false})
    );
    let last_end: Lsn = lines[15]["end_lsn"].as_str().unwrap().parse().unwrap();

    let status = tail.interrupt();
    assert!(status.success(), "tail exits 0 on SIGINT: {status:?}");
    wait_slot_active(&client, false).await;
    let confirmed = confirmed(&client).await;
    assert!(
        confirmed >= last_end,
        "the final status update confirmed what was printed ({confirmed} < {last_end})"
    );

    // A second run starts after what the first printed.
    client
        .batch_execute("INSERT INTO other VALUES (8)")
        .await
        .unwrap();
    let tail = Tail::start(&cluster, &["--format", "json"]);
    let lines = tail.until_commits(1);
    assert_eq!(
        lines[1]["new"],
        json!({"id":"8"}),
        "nothing printed twice: {lines:?}"
    );
    assert!(tail.interrupt().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_format_and_bad_flags() {
    let cluster = Cluster::start(&default_bin());
    let client = cluster.client().await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR ALL TABLES;",
        )
        .await
        .unwrap();
    let tail = Tail::start(&cluster, &["--create-slot", "--format", "text"]);
    wait_slot_active(&client, true).await;
    client
        .batch_execute("INSERT INTO t VALUES (1, 'it''s')")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while !lines
        .last()
        .is_some_and(|l: &String| l.starts_with("COMMIT"))
    {
        lines.push(
            tail.lines
                .recv_timeout(deadline - Instant::now())
                .expect("a line"),
        );
    }
    assert!(lines[0].starts_with("BEGIN xid="), "{lines:?}");
    assert_eq!(lines[1], "INSERT public.t: id='1' v='it''s'");
    assert!(tail.interrupt().success());

    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_teal"))
            .env_clear()
            .args(args)
            .output()
            .unwrap()
    };
    let url = cluster.cli_url();
    let out = run(&[
        "tail",
        "--source",
        &url,
        "--slot",
        "Bad-Name",
        "--publication",
        "p",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--slot"),
        "{out:?}"
    );
    let out = run(&[
        "tail",
        "--source",
        &url,
        "--slot",
        "s",
        "--publication",
        "p",
        "--start-lsn",
        "12",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid LSN"),
        "{out:?}"
    );
    let out = run(&[
        "tail",
        "--source",
        "postgresql://u@h/db?sslmode=sometimes",
        "--slot",
        "s",
        "--publication",
        "p",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sslmode"),
        "{out:?}"
    );
    let out = run(&[
        "tail",
        "--source",
        &url,
        "--slot",
        "missing",
        "--publication",
        "p",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--create-slot"),
        "{out:?}"
    );

    // --config: the file's settings are used; environment and flags win over it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("teal.toml");
    std::fs::write(
        &file,
        format!("source = \"{url}\"\nslot = \"missing\"\npublication = [\"p\"]\n"),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let out = run(&["tail", "--config", file]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--create-slot"),
        "the file's source, slot and publication reach blue: {out:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .env("TEAL_SLOT", "Bad-Name")
        .args(["tail", "--config", file])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--slot"),
        "the environment wins over the file: {out:?}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "slott = \"s\"\n").unwrap();
    let out = run(&["tail", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown key \"slott\""),
        "{out:?}"
    );
}
