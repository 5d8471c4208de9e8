//! Throwaway PostgreSQL clusters for the benches: teal's own
//! [`teal::local`] clusters (the ones `teal demo` uses), panicking on any
//! failure. Run as root, the server runs as the `postgres` user.

#![allow(dead_code)]

use std::ops::Deref;

use tokio_postgres::Client;

pub use teal::local::{Options, PgBin};

/// The default server build (the newest /usr/lib/postgresql/*/bin, or `TEAL_PG_BIN`).
pub fn default_bin() -> PgBin {
    PgBin::find()
        .and_then(PgBin::runnable)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A running throwaway cluster, stopped and removed on drop.
pub struct Cluster(teal::local::Cluster);

impl Deref for Cluster {
    type Target = teal::local::Cluster;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Cluster {
    pub fn start(bin: &PgBin) -> Cluster {
        Cluster::start_with(bin, Options::default())
    }

    pub fn start_with(bin: &PgBin, mut options: Options) -> Cluster {
        options.prefix = Some("teal-bench-".into());
        Cluster(
            teal::local::Cluster::start(bin, &options)
                .unwrap_or_else(|e| panic!("PostgreSQL {} did not start: {e}", bin.version)),
        )
    }

    /// An ordinary SQL client (superuser).
    pub async fn client(&self) -> Client {
        self.0
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the bench cluster: {e}\n{}", self.log()))
    }
}

/// Waits until a session streams from `slot` (teal stream started).
pub async fn wait_slot_active(client: &Client, slot: &str) {
    loop {
        let active: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if active == 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
