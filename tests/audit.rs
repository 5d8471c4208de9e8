//! The ledger of applied changes (issue 22, point 4): every green batch
//! appends a chained row; `teal audit verify` names the first broken link.

use std::time::Duration;

use crate::support::cluster::default_bin;
use crate::support::twins::{Twins, int8};

/// `teal audit verify` on green: exit status and output.
fn audit_verify(twins: &Twins) -> (i32, String) {
    verify_at(&twins.green.cli_url())
}

/// The ledger counts every transaction and change, its head is the
/// monitor's, and an edited, a deleted and an inserted row are each named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_names_the_first_broken_link() {
    crate::support::tap::init_logging();
    let twins = Twins::start(
        &default_bin(),
        "CREATE TABLE t (id int PRIMARY KEY, v text);",
    )
    .await;
    let running = crate::support::running::Running::start(&twins, twins.config()).await;
    // One transaction at a time, each applied before the next: a batch each.
    for i in 0..8 {
        twins
            .b
            .batch_execute(&format!(
                "INSERT INTO t VALUES ({i}, 'a'), ({}, 'b'); UPDATE t SET v = 'c' WHERE id = {i}",
                i + 100
            ))
            .await
            .unwrap();
        twins
            .assert_converged(&["t"], Duration::from_secs(20))
            .await;
    }
    let (code, text) = audit_verify(&twins);
    assert_eq!(code, 0, "{text}");
    let rows = int8(&twins.g, "SELECT count(*) FROM teal.ledger").await;
    assert!(rows >= 8, "a row per batch ({rows})");
    assert!(
        text.contains(&format!("slot teal_slot: {rows} rows, intact")),
        "{text}"
    );
    assert_eq!(
        int8(&twins.g, "SELECT sum(transactions)::int8 FROM teal.ledger").await,
        8
    );
    assert_eq!(
        int8(&twins.g, "SELECT sum(changes)::int8 FROM teal.ledger").await,
        24
    );
    let head: String = twins
        .g
        .query_one(
            "SELECT encode(sha256, 'hex') FROM teal.ledger ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(text.contains(&head), "{text}");
    assert_eq!(
        running.monitor.apply.ledger_head.lock().unwrap().as_deref(),
        Some(head.as_str()),
        "the monitor's head is green's"
    );
    let status = running.monitor.status_json();
    assert_eq!(status["ledger"]["head"], head.as_str(), "{status:#}");
    assert_eq!(status["ledger"]["rows"], rows, "{status:#}");
    let metrics = running.monitor.metrics_text();
    let prefix = u64::from_str_radix(&head[..12], 16).unwrap();
    assert!(
        metrics.contains(&format!(
            "teal_apply_ledger_head_prefix{{slot=\"teal_slot\"}} {prefix}"
        )),
        "{metrics}"
    );
    running.stop().await;

    let seqs: Vec<i64> = twins
        .g
        .query("SELECT seq FROM teal.ledger ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (third, fourth, fifth) = (seqs[2], seqs[3], seqs[4]);
    // Edited.
    twins
        .g
        .execute(
            "UPDATE teal.ledger SET changes = changes + 1 WHERE seq = $1",
            &[&third],
        )
        .await
        .unwrap();
    let (code, text) = audit_verify(&twins);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("BROKEN: row {third} ("))
            && text.contains("was changed after it was written"),
        "{text}"
    );
    twins
        .g
        .execute(
            "UPDATE teal.ledger SET changes = changes - 1 WHERE seq = $1",
            &[&third],
        )
        .await
        .unwrap();
    assert_eq!(audit_verify(&twins).0, 0);
    // Deleted.
    twins
        .g
        .batch_execute(&format!(
            "CREATE TEMP TABLE kept AS SELECT * FROM teal.ledger WHERE seq = {fourth};
             DELETE FROM teal.ledger WHERE seq = {fourth};"
        ))
        .await
        .unwrap();
    let (code, text) = audit_verify(&twins);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("row {fifth} ("))
            && text.contains(&format!("does not follow row {third}")),
        "{text}"
    );
    twins
        .g
        .batch_execute("INSERT INTO teal.ledger SELECT * FROM kept")
        .await
        .unwrap();
    assert_eq!(audit_verify(&twins).0, 0);
    // Inserted: a copy of a row at the end.
    twins
        .g
        .batch_execute(&format!(
            "INSERT INTO teal.ledger (slot, first_lsn, last_lsn, transactions, changes, batch_sha256, prev_sha256, sha256) \
             SELECT slot, first_lsn, last_lsn, transactions, changes, batch_sha256, prev_sha256, sha256 \
             FROM teal.ledger WHERE seq = {fourth}"
        ))
        .await
        .unwrap();
    let (code, text) = audit_verify(&twins);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("does not follow row"), "{text}");
}

/// `teal audit verify --target green`: exit status and output.
fn verify_at(green: &str) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env_clear()
        .args(["audit", "verify", "--target", green])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `--ledger off`: no ledger rows, and `teal audit verify` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ledger_nothing_is_appended() {
    let twins = Twins::start(&default_bin(), "CREATE TABLE t (id int PRIMARY KEY);").await;
    let mut config = twins.config();
    config.apply.ledger = false;
    let running = crate::support::running::Running::start(&twins, config).await;
    twins
        .b
        .batch_execute("INSERT INTO t SELECT generate_series(1, 10)")
        .await
        .unwrap();
    twins
        .assert_converged(&["t"], Duration::from_secs(20))
        .await;
    assert_eq!(int8(&twins.g, "SELECT count(*) FROM teal.ledger").await, 0);
    let (code, text) = audit_verify(&twins);
    assert_eq!((code, text.trim()), (0, "no ledger rows"));
    running.stop().await;
}
