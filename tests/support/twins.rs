//! A blue and a green cluster with the same schema, and ways to compare them.

use std::time::Duration;

use teal::apply::ApplyConfig;
use teal::config::{AssemblerConfig, ConnInfo};
use teal::ops::stream::{MonitorConfig, StreamConfig};
use tokio_postgres::Client;

use super::cluster::{Cluster, Options, PgBin};
use super::tap::source_config;
use super::wait::until_row;

pub struct Twins {
    pub blue: Cluster,
    pub green: Cluster,
    pub b: Client,
    pub g: Client,
}

impl Twins {
    /// Both clusters with `schema` applied; blue publishes all tables.
    pub async fn start(bin: &PgBin, schema: &str) -> Twins {
        Twins::start_with(bin, bin, schema, Options::default(), Options::default()).await
    }

    pub async fn start_with(
        blue_bin: &PgBin,
        green_bin: &PgBin,
        schema: &str,
        blue_options: Options,
        green_options: Options,
    ) -> Twins {
        let mut options = blue_options;
        options
            .settings
            .push(("logical_decoding_work_mem".into(), "64kB".into()));
        let blue = Cluster::start_with(blue_bin, options);
        let green = Cluster::start_with(green_bin, green_options);
        let b = blue.client().await;
        let g = green.client().await;
        b.batch_execute(schema).await.expect("schema on blue");
        b.batch_execute("CREATE PUBLICATION teal_pub FOR ALL TABLES")
            .await
            .unwrap();
        g.batch_execute(schema).await.expect("schema on green");
        Twins { blue, green, b, g }
    }

    /// New test sessions (after a server restart).
    pub async fn reconnect(&mut self) {
        self.b = self.blue.client().await;
        self.g = self.green.client().await;
    }

    /// A `teal stream` configuration from blue to green.
    pub fn config(&self) -> StreamConfig {
        let source = source_config(&self.blue.url(), "teal_slot", "teal_pub");
        let target = ConnInfo::parse_with_env(&self.green.url(), &|_| None).unwrap();
        StreamConfig {
            apply: ApplyConfig::new(target, source.slot.clone()),
            source,
            assembler: AssemblerConfig::default(),
            monitor: MonitorConfig {
                heartbeat_interval: None,
                ..MonitorConfig::default()
            },
            kafka: None,
            no_apply: false,
            shutdown_timeout: StreamConfig::DEFAULT_SHUTDOWN_TIMEOUT,
            sync_sequences: None,
            fence_target_roles: Vec::new(),
            binary_auto: false,
        }
    }

    /// The `teal stream` binary from blue to green (slot `teal_slot`,
    /// publication `teal_pub`), with an empty environment; callers add flags.
    pub fn teal_stream_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_teal"));
        // Warnings and errors only unless a test asks for more (--log wins
        // over TEAL_LOG): INFO lines of every teal a test starts flooded
        // the test output.
        cmd.env_clear()
            .env("TEAL_LOG", "warn")
            .args(["stream", "--slot", "teal_slot", "--publication", "teal_pub"])
            .args([
                "--source",
                &self.blue.cli_url(),
                "--target",
                &self.green.cli_url(),
            ]);
        cmd
    }

    /// Waits until teal streams from the slot (writes before the slot exists
    /// are not part of its history; a slot is active while it is being
    /// created too, before its consistent point sets confirmed_flush_lsn).
    pub async fn wait_streaming(&self) {
        until_row(
            &self.b,
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'teal_slot' AND active \
             AND confirmed_flush_lsn IS NOT NULL",
            &[],
            Duration::from_secs(60),
            "teal never started streaming",
        )
        .await;
    }

    /// Blue's WAL insert position (past every commit made so far; the write
    /// position can lag behind commits here, where synchronous_commit is off).
    pub async fn blue_insert_lsn(&self) -> String {
        self.b
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until the slot's confirmed LSN on blue reaches blue's current
    /// WAL insert position (every consumer made everything written so far
    /// durable).
    pub async fn wait_slot_confirmed(&self, what: &str) {
        let target = self.blue_insert_lsn().await;
        until_row(
            &self.b,
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'teal_slot' AND confirmed_flush_lsn >= $1::text::pg_lsn",
            &[&target],
            Duration::from_secs(60),
            what,
        )
        .await;
    }

    /// Waits until green has everything blue wrote so far (green's progress
    /// reached blue's current WAL position), then compares `tables`.
    pub async fn assert_converged(&self, tables: &[&str], timeout: Duration) {
        let target = self.blue_insert_lsn().await;
        until_row(
            &self.g,
            "SELECT 1 FROM teal.progress WHERE slot = 'teal_slot' AND end_lsn >= $1::text::pg_lsn",
            &[&target],
            timeout,
            &format!("green did not catch up to {target}"),
        )
        .await;
        for t in tables {
            let (bc, bs) = checksum(&self.b, t).await;
            let (gc, gs) = checksum(&self.g, t).await;
            assert_eq!(bc, gc, "row count of {t}: blue {bc}, green {gc}");
            assert_eq!(bs, gs, "contents of {t} differ (same count {bc})");
        }
    }
}

/// The one bigint `sql` returns.
pub async fn int8(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Row count and an order-independent checksum of a table's rows (as text).
pub async fn checksum(client: &Client, table: &str) -> (i64, String) {
    let sum = teal::ops::verify::table_sum(client, table)
        .await
        .unwrap_or_else(|e| panic!("checksum of {table}: {e}"));
    (sum.rows, sum.checksum)
}
