//! One apply session per slot on green, and the newest one wins.
//!
//! ```text
//! Applier::connect ──▶ pg_try_advisory_lock(hash('teal apply ' || slot)) ──got it──▶ go on
//!                          │ held by an earlier session
//!                          ▼
//!                 pg_terminate_backend(holder), then pg_advisory_lock (lock_timeout)
//! ```
//!
//! An apply session keeps the lock for as long as it lives. When teal gives
//! up on a session (green stopped answering, a link went silent, the
//! process was killed and green has not noticed), green may keep that
//! session for a long time: it holds row locks and the replication origin,
//! and a batch whose COMMIT was already on its way can still commit. Only
//! once it is gone does green's progress row say exactly what is applied,
//! so a new session ends it before reading progress. (Two teal processes
//! for one slot cannot both stream: blue lets one walsender use the slot.)

use std::time::Duration;

use tokio_postgres::Client;

use super::ApplyError;

/// The advisory lock key of a slot's apply session, as SQL over `$1`.
const KEY: &str = "pg_catalog.hashtextextended('teal apply ' || $1, 0)";

fn sql(context: String) -> impl FnOnce(tokio_postgres::Error) -> ApplyError {
    move |source| ApplyError::Sql { context, source }
}

/// Makes this session the apply session of `slot`: ends an earlier one that
/// still holds it, and waits up to `wait` (forever: `None`) for it to be gone.
pub(crate) async fn claim(
    client: &Client,
    slot: &str,
    wait: Option<Duration>,
) -> Result<(), ApplyError> {
    let context = || format!("claiming green for the apply session of slot {slot:?}");
    let got: bool = client
        .query_one(
            &format!("SELECT pg_catalog.pg_try_advisory_lock({KEY})"),
            &[&slot],
        )
        .await
        .map_err(sql(context()))?
        .get(0);
    if got {
        return Ok(());
    }
    // A bigint advisory key shows in pg_locks as its high half (classid),
    // its low half (objid) and objsubid 1.
    let holders = client
        .query(
            &format!(
                "WITH k AS (SELECT {KEY} AS key) \
                 SELECT a.pid, coalesce(a.state, ''), coalesce(a.application_name, ''), \
                        pg_catalog.pg_terminate_backend(a.pid) \
                   FROM k, pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
                  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                    AND l.database = (SELECT oid FROM pg_catalog.pg_database \
                                       WHERE datname = pg_catalog.current_database()) \
                    AND l.classid::int8 = (k.key >> 32) & 4294967295 \
                    AND l.objid::int8 = k.key & 4294967295"
            ),
            &[&slot],
        )
        .await;
    match holders {
        Ok(rows) => {
            for row in rows {
                let (pid, state, name): (i32, String, String) =
                    (row.get(0), row.get(1), row.get(2));
                tracing::warn!(
                    slot,
                    pid,
                    state = %state,
                    application_name = %name,
                    "ended an earlier apply session of this slot on green: teal had given up on it, and it could still hold locks or commit late"
                );
            }
        }
        // Not allowed to end it: wait for green to (idle timeout, keepalive).
        Err(e) if e.code().map(|c| c.code()) == Some("42501") => {
            tracing::warn!(
                slot,
                "an earlier apply session of this slot holds green, and green's role may not end it (needs pg_signal_backend); waiting for it to end"
            );
        }
        Err(e) => return Err(sql(context())(e)),
    }
    let lock_timeout = wait.map_or(0, |w| w.as_millis());
    client
        .execute(
            "SELECT pg_catalog.set_config('lock_timeout', $1, false)",
            &[&format!("{lock_timeout}ms")],
        )
        .await
        .map_err(sql(context()))?;
    client
        .execute(
            &format!("SELECT pg_catalog.pg_advisory_lock({KEY})"),
            &[&slot],
        )
        .await
        .map_err(sql(format!(
            "waiting for the earlier apply session of slot {slot:?} on green to end"
        )))?;
    client
        .batch_execute("RESET lock_timeout")
        .await
        .map_err(sql(context()))
}
