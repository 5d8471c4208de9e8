//! Liveness: teal always makes progress, or says why not (DESIGN rule 10).
//! A writer that waits on itself, a link that goes silent, a backoff that
//! never resets, a stuck stage nobody sees, a SIGTERM that never ends teal.

use std::sync::Arc;
use std::time::Duration;

use teal::apply::ApplyStats;
use teal::http::Monitor;
use teal::ops::stream::{self, StreamConfig, StreamError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::cluster::default_bin;
use crate::support::tap::init_logging;
use crate::support::twins::Twins;

const WAIT: Duration = Duration::from_secs(60);

/// `teal stream` running in-process, with its monitor.
struct Running {
    task: JoinHandle<Result<Arc<ApplyStats>, StreamError>>,
    shutdown: CancellationToken,
    monitor: Arc<Monitor>,
}

impl Running {
    /// Starts `teal stream` and waits until it streams from the slot.
    async fn start(twins: &Twins, config: StreamConfig) -> Running {
        init_logging();
        let monitor = Arc::new(Monitor::new(config.apply.slot.clone()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(stream::run_monitored(
            config,
            shutdown.clone(),
            Arc::clone(&monitor),
        ));
        twins.wait_streaming().await;
        Running {
            task,
            shutdown,
            monitor,
        }
    }

    async fn stop(self) -> Arc<ApplyStats> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stream stopped in time")
            .expect("stream task")
            .expect("stream ended without error")
    }
}

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
