//! Fencing the side being left: no new write can start there, the ones in
//! flight finish, and what was changed is recorded first so that it can be
//! lifted exactly (also by a later run, after a crash).
//!
//! ```text
//! --fence-roles a,b   ALTER ROLE .. NOLOGIN (their previous rolcanlogin kept), their sessions
//!                     terminated (default_transaction_read_only alone a client can undo)
//! --fence-database    ALTER DATABASE .. CONNECTION LIMIT 0 (previous limit kept), other
//!                     roles' client sessions terminated (superusers are not limited)
//! --fence-hook CMD    sh -c CMD with TEAL_FENCE=fence / unfence (e.g. PgBouncer PAUSE / RESUME)
//! then: wait until no other session holds a transaction id and no prepared
//!       transaction is pending
//! ```

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// How the side being left is fenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// These roles may not log in; their sessions are ended.
    Roles(Vec<String>),
    /// The database takes no new connections but superusers'; other roles'
    /// sessions are ended.
    Database,
    /// A command does it (`TEAL_FENCE=fence` or `unfence` in its environment).
    Hook(String),
}

/// What a fence changed, recorded before it is changed: enough to lift it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fenced {
    /// Each role and whether it could log in before.
    Roles {
        /// `(role, rolcanlogin before)`.
        roles: Vec<(String, bool)>,
    },
    /// The database and its connection limit before.
    Database {
        /// Its name.
        name: String,
        /// `datconnlimit` before.
        limit: i32,
    },
    /// The hook (run again with `TEAL_FENCE=unfence`).
    Hook {
        /// The command.
        command: String,
    },
}

/// Why fencing or lifting a fence failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// A statement failed.
    #[error("{context}")]
    Sql {
        /// What was being done.
        context: String,
        /// What the server said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The hook failed.
    #[error("the fence hook failed: {0}")]
    Hook(String),
    /// The fence would lock teal itself out.
    #[error("--fence-roles names {0}, the role teal itself connects as")]
    OwnRole(String),
    /// Writers did not finish in time.
    #[error(
        "{0} session(s) still hold a transaction (or prepared transactions are pending) after {1:?}"
    )]
    NotQuiet(i64, Duration),
}

fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> FenceError {
    let context = context.into();
    move |source| FenceError::Sql { context, source }
}

/// What `fence` would change on `client`'s side, read before changing it.
pub async fn plan(client: &Client, fence: &Fence) -> Result<Fenced, FenceError> {
    Ok(match fence {
        Fence::Roles(roles) => {
            let me: String = client
                .query_one("SELECT current_user::text", &[])
                .await
                .map_err(sql("reading teal's role"))?
                .get(0);
            let mut out = Vec::with_capacity(roles.len());
            for role in roles {
                if *role == me {
                    return Err(FenceError::OwnRole(role.clone()));
                }
                let row = client
                    .query_opt(
                        "SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = $1",
                        &[role],
                    )
                    .await
                    .map_err(sql(format!("reading role {role}")))?;
                let Some(row) = row else {
                    return Err(FenceError::Hook(format!("no role named {role}")));
                };
                out.push((role.clone(), row.get(0)));
            }
            Fenced::Roles { roles: out }
        }
        Fence::Database => {
            let row = client
                .query_one(
                    "SELECT datname::text, datconnlimit FROM pg_catalog.pg_database \
                     WHERE datname = current_database()",
                    &[],
                )
                .await
                .map_err(sql("reading the database's connection limit"))?;
            Fenced::Database {
                name: row.get(0),
                limit: row.get(1),
            }
        }
        Fence::Hook(command) => Fenced::Hook {
            command: command.clone(),
        },
    })
}

/// Runs `command` with `sh -c`, `TEAL_FENCE=action` and `env` in its
/// environment; its exit status must be 0.
pub async fn run_hook(
    command: &str,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| format!("did not finish within {timeout:?}"))?
        .map_err(|e| format!("could not run it: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "exited with {} ({})",
            out.status,
            stderr.trim().chars().take(300).collect::<String>()
        ))
    }
}

/// Puts `fenced` up on `client`'s side and ends the sessions it covers.
pub async fn apply(client: &Client, fenced: &Fenced, side: &str) -> Result<(), FenceError> {
    match fenced {
        Fenced::Roles { roles } => {
            for (role, _) in roles {
                client
                    .batch_execute(&format!(
                        "ALTER ROLE {} NOLOGIN",
                        crate::event::quote_ident(role)
                    ))
                    .await
                    .map_err(sql(format!("fencing role {role}")))?;
            }
            let names: Vec<&str> = roles.iter().map(|(r, _)| r.as_str()).collect();
            client
                .execute(
                    "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
                     WHERE usename = ANY($1) AND pid <> pg_catalog.pg_backend_pid()",
                    &[&names],
                )
                .await
                .map_err(sql("ending the fenced roles' sessions"))?;
        }
        Fenced::Database { name, .. } => {
            client
                .batch_execute(&format!(
                    "ALTER DATABASE {} CONNECTION LIMIT 0",
                    crate::event::quote_ident(name)
                ))
                .await
                .map_err(sql("fencing the database"))?;
            client
                .execute(
                    "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
                     WHERE datname = current_database() AND backend_type = 'client backend' \
                       AND usename <> current_user AND pid <> pg_catalog.pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(sql("ending the database's sessions"))?;
        }
        Fenced::Hook { command } => {
            run_hook(
                command,
                &[("TEAL_FENCE", "fence"), ("TEAL_SIDE", side)],
                Duration::from_secs(60),
            )
            .await
            .map_err(FenceError::Hook)?;
        }
    }
    Ok(())
}

/// Lifts `fenced` on `client`'s side: each role as it was, the database's
/// limit as it was, or the hook with `TEAL_FENCE=unfence`.
pub async fn lift(client: &Client, fenced: &Fenced, side: &str) -> Result<(), FenceError> {
    match fenced {
        Fenced::Roles { roles } => {
            for (role, could_login) in roles {
                client
                    .batch_execute(&format!(
                        "ALTER ROLE {} {}",
                        crate::event::quote_ident(role),
                        if *could_login { "LOGIN" } else { "NOLOGIN" }
                    ))
                    .await
                    .map_err(sql(format!("lifting the fence of role {role}")))?;
            }
        }
        Fenced::Database { name, limit } => {
            client
                .batch_execute(&format!(
                    "ALTER DATABASE {} CONNECTION LIMIT {limit}",
                    crate::event::quote_ident(name)
                ))
                .await
                .map_err(sql("lifting the database's fence"))?;
        }
        Fenced::Hook { command } => {
            run_hook(
                command,
                &[("TEAL_FENCE", "unfence"), ("TEAL_SIDE", side)],
                Duration::from_secs(60),
            )
            .await
            .map_err(FenceError::Hook)?;
        }
    }
    Ok(())
}

/// Waits until no session but teal's own holds a transaction id and no
/// prepared transaction of the database is pending (at most `limit`).
pub async fn wait_quiet(client: &Client, limit: Duration) -> Result<Duration, FenceError> {
    let started = Instant::now();
    loop {
        let busy: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_catalog.pg_stat_activity \
                         WHERE backend_xid IS NOT NULL AND usename <> current_user \
                           AND pid <> pg_catalog.pg_backend_pid()) \
                      + (SELECT count(*) FROM pg_catalog.pg_prepared_xacts \
                         WHERE database = current_database())",
                &[],
            )
            .await
            .map_err(sql("waiting for the writers to finish"))?
            .get(0);
        if busy == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= limit {
            return Err(FenceError::NotQuiet(busy, limit));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
