//! The replication origin on green: changes teal applies carry it.
//!
//! ```text
//! Applier::connect ──▶ may the role use origins? ──no──▶ progress table only
//!                          │ yes
//!                          ▼
//!                 pg_replication_origin_create('teal_<slot>') if missing
//!                 pg_replication_origin_session_setup(...)   (this session only)
//! batch commit:   pg_replication_origin_xact_setup(end_lsn, commit_ts), progress row, COMMIT
//! ```
//!
//! What it gives: every green commit teal makes is marked with the origin
//! (`pg_xact_commit_timestamp_origin`, logical decoding on green, and
//! publications with `origin = none` can tell teal's changes from local
//! ones), and `pg_replication_origin_progress` advances crash-safely with
//! each batch, like PostgreSQL's own subscriber. teal's progress table stays
//! the authority for where to resume: it is written in every batch whatever
//! the role may do, and it also records idle positions, which do not touch
//! the origin.
//!
//! PostgreSQL lets one session at a time use an origin; a second teal on the
//! same slot fails with SQLSTATE 55006, which is retried (the backend of a
//! teal that was just killed goes away by itself).

use tokio_postgres::{Client, Statement};

use crate::lsn::{Lsn, PgTimestamp};

use super::ApplyError;

/// The origin functions teal needs; revoked from PUBLIC by default.
const FUNCTIONS: [&str; 3] = [
    "pg_replication_origin_create",
    "pg_replication_origin_session_setup",
    "pg_replication_origin_xact_setup",
];

/// A replication origin set up on one green session.
pub(crate) struct Origin {
    name: String,
    xact_setup: Statement,
}

/// The origin name for a slot (PostgreSQL's own subscriber uses `pg_<oid>`).
pub fn origin_name(slot: &str) -> String {
    format!("teal_{slot}")
}

fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ApplyError {
    let context = context.into();
    move |source| ApplyError::Sql { context, source }
}

impl Origin {
    /// Sets up `teal_<slot>` on this session when green's role may use
    /// origins; `None` (and a log line saying why) when it may not.
    pub(crate) async fn setup(client: &Client, slot: &str) -> Result<Option<Origin>, ApplyError> {
        let allowed: bool = client
            .query_one(
                "SELECT count(DISTINCT p.proname) = $2 \
                        AND bool_and(has_function_privilege(p.oid, 'EXECUTE')) \
                        AND NOT pg_is_in_recovery() \
                   FROM pg_catalog.pg_proc p \
                  WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY($1)",
                &[&&FUNCTIONS[..], &(FUNCTIONS.len() as i64)],
            )
            .await
            .map_err(sql(
                "checking whether green's role may use replication origins",
            ))?
            .get::<_, Option<bool>>(0)
            .unwrap_or(false);
        let name = origin_name(slot);
        if !allowed {
            tracing::info!(
                origin = %name,
                "green's role may not use replication origins (needs superuser or EXECUTE on {}); \
                 teal's progress table alone records what was applied",
                FUNCTIONS.join(", ")
            );
            return Ok(None);
        }
        // Two teal processes may race to create it: the loser sees 23505.
        let created = client
            .execute(
                "SELECT pg_catalog.pg_replication_origin_create($1) \
                  WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)",
                &[&name],
            )
            .await;
        if let Err(e) = created {
            if e.code().map(|c| c.code()) != Some("23505") {
                return unusable(&name, e);
            }
        }
        if let Err(e) = client
            .execute(
                "SELECT pg_catalog.pg_replication_origin_session_setup($1)",
                &[&name],
            )
            .await
        {
            // In use by another session (a teal still running, or the backend
            // of one that just died): retried like any transient error.
            if e.code().map(|c| c.code()) == Some("55006") {
                return Err(ApplyError::Sql {
                    context: format!(
                        "replication origin {name} is in use by another green session (is another teal streaming slot {slot}?)"
                    ),
                    source: e,
                });
            }
            return unusable(&name, e);
        }
        let xact_setup = client
            .prepare(
                "SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, $2::text::timestamptz)",
            )
            .await
            .map_err(sql("preparing the replication origin statement"))?;
        tracing::info!(origin = %name, "green commits carry replication origin");
        Ok(Some(Origin { name, xact_setup }))
    }

    /// Marks the open green transaction as replaying the source transaction
    /// that ended at `end_lsn` and committed at `commit_ts`.
    pub(crate) async fn xact_setup(
        &self,
        client: &Client,
        end_lsn: Lsn,
        commit_ts: PgTimestamp,
    ) -> Result<(), ApplyError> {
        client
            .query_one(
                &self.xact_setup,
                &[&end_lsn.to_string(), &commit_ts.to_string()],
            )
            .await
            .map(drop)
            .map_err(sql(format!(
                "advancing replication origin {} to {end_lsn}",
                self.name
            )))
    }
}

/// A setting or catalog state keeps the origin from working (too few
/// `max_replication_slots`, say): go on without it, saying why. A broken
/// session is an error (retried), not a reason to go without.
fn unusable(name: &str, e: tokio_postgres::Error) -> Result<Option<Origin>, ApplyError> {
    if e.code().is_none() {
        return Err(ApplyError::Sql {
            context: format!("setting up replication origin {name}"),
            source: e,
        });
    }
    tracing::warn!(
        origin = %name,
        error = %super::describe(&e),
        "cannot use a replication origin on green; teal's progress table alone records what was applied"
    );
    Ok(None)
}
