//! Verify points: `teal verify` asks the running apply to stop at one exact
//! point of the stream, long enough to export green's snapshot there.
//!
//! ```text
//! verify: INSERT verify_points (hold) ───────────────┐
//! apply:  at a transaction boundary: COMMIT, state holding (applied_lsn), wait
//! verify: temporary slot on blue (consistent point L, snapshot S); state at, lsn L
//! apply:  goes on with every transaction committed before L; at the first
//!         commit at or past L (or blue's position past L with nothing
//!         pending): COMMIT, state reached, wait
//! verify: green snapshot G (pg_export_snapshot); state released
//! apply:  goes on
//! ```
//!
//! Blue's S holds exactly the transactions that committed before L (the
//! slot's consistent point), and green at `reached` holds exactly those
//! too: S and G show the same point of the stream, while apply runs on.
//! Apply waits at most [`HOLD_LIMIT`] in each state: a verify that vanished
//! is marked `missed` and the stream goes on.
//!
//! The requests are read by a task on a session of its own, every
//! [`POLL`]; the apply session writes only its answers.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::config::ConnInfo;
use crate::lsn::Lsn;
use crate::store::Store;

use super::{ApplyError, Cursor, within};

/// How long apply waits for verify's next step.
pub const HOLD_LIMIT: Duration = Duration::from_secs(30);
/// How often the requests are read (a trivial indexed query on green, 20
/// a second: what a verification waits at each step, at most).
pub const POLL: Duration = Duration::from_millis(50);

/// The newest open request for this slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) id: i64,
    pub(crate) state: String,
    pub(crate) lsn: Option<Lsn>,
}

/// The reading task; stops when dropped.
pub(crate) struct Requests {
    pub(crate) rx: watch::Receiver<Option<Request>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts reading `slot`'s requests from green's `store` schema.
pub(crate) fn watch(target: ConnInfo, store: Store, slot: String) -> Requests {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let sql = format!(
            "SELECT id, state, lsn::text FROM {}.verify_points \
             WHERE slot = $1 AND state IN ('hold', 'holding', 'at', 'reached', 'released') \
               AND updated_at > now() - interval '2 minutes' ORDER BY id DESC LIMIT 1",
            store.quoted()
        );
        let mut client: Option<Client> = None;
        loop {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = crate::session::connect_plain(&target, "teal apply points")
                    .await
                    .ok();
            }
            if let Some(c) = &client {
                // The table may not exist yet (the apply session migrates).
                if let Ok(rows) = c.query(&sql, &[&slot]).await {
                    let request = rows.first().map(|r| Request {
                        id: r.get(0),
                        state: r.get(1),
                        lsn: r.get::<_, Option<String>>(2).and_then(|l| l.parse().ok()),
                    });
                    tx.send_if_modified(|now| {
                        let changed = *now != request;
                        *now = request;
                        changed
                    });
                }
            }
            tokio::time::sleep(POLL).await;
        }
    });
    Requests { rx, task }
}

/// Apply's answer: `state` (holding, reached, missed) with where green stands.
pub(crate) async fn answer(
    client: &Client,
    store: &Store,
    id: i64,
    state: &str,
    applied: Option<Lsn>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "UPDATE {}.verify_points SET state = $2, applied_lsn = $3::text::pg_lsn, updated_at = now() WHERE id = $1",
                store.quoted()
            ),
            &[&id, &state, &applied.map(|l| l.to_string())],
        )
        .await
        .map(drop)
}

/// Apply's side of the protocol, on its own session between batches.
impl super::Applier {
    /// A verify request to hold, at a transaction boundary: commit what is
    /// open, say where green stands, and wait (at most
    /// [`HOLD_LIMIT`]) for blue's point.
    pub(super) async fn serve_hold(
        &mut self,
        at: &mut Cursor,
        requests: &mut Requests,
    ) -> Result<(), ApplyError> {
        let request = requests.rx.borrow_and_update().clone();
        let Some(request) = request else {
            return Ok(());
        };
        if request.state != "hold" || request.id <= self.points_done || self.point.is_some() {
            return Ok(());
        }
        self.commit_within(&mut at.batch).await?;
        self.answer(request.id, "holding").await?;
        let deadline = Instant::now() + HOLD_LIMIT;
        loop {
            let now = requests.rx.borrow_and_update().clone();
            match now {
                Some(r) if r.id == request.id && r.state == "at" => {
                    match r.lsn {
                        Some(lsn) if self.applied.is_none_or(|a| a.end_lsn <= lsn) => {
                            self.point = Some((r.id, lsn));
                        }
                        _ => {
                            self.answer(r.id, "missed").await?;
                            self.points_done = r.id;
                        }
                    }
                    return Ok(());
                }
                Some(r) if r.id == request.id && matches!(r.state.as_str(), "hold" | "holding") => {
                }
                _ => {
                    self.points_done = request.id;
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, requests.rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    self.answer(request.id, "missed").await?;
                    self.points_done = request.id;
                    return Ok(());
                }
            }
        }
    }

    /// At the verify point (the batch committed): say so and wait (at most
    /// [`HOLD_LIMIT`]) until verify has green's snapshot.
    pub(super) async fn serve_reached(
        &mut self,
        requests: &mut Requests,
    ) -> Result<(), ApplyError> {
        let Some((id, _)) = self.point.take() else {
            return Ok(());
        };
        self.points_done = id;
        self.answer(id, "reached").await?;
        let deadline = Instant::now() + HOLD_LIMIT;
        loop {
            let now = requests.rx.borrow_and_update().clone();
            match now {
                Some(r) if r.id == id && matches!(r.state.as_str(), "at" | "reached") => {}
                _ => return Ok(()),
            }
            match tokio::time::timeout_at(deadline, requests.rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.answer(id, "missed").await,
            }
        }
    }

    /// Writes apply's answer to verify request `id`.
    async fn answer(&mut self, id: i64, state: &str) -> Result<(), ApplyError> {
        let applied = self.applied.map(|a| a.end_lsn);
        within(
            self.config.timeout,
            "answering teal verify",
            answer(&self.client, &self.config.store, id, state, applied),
        )
        .await?
        .map_err(|source| ApplyError::Sql {
            context: format!("answering teal verify's request {id}"),
            source,
        })
    }
}
