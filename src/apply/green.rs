//! Sessions on green, set up the way PostgreSQL's own apply worker runs.
//!
//! - `session_replication_role = replica`: green's ordinary triggers and
//!   foreign-key checks do not fire again for changes blue already checked;
//! - the same canonical formats teal asks blue for (ISO dates, `postgres`
//!   intervals, full float precision, UTC), so every value blue printed goes
//!   back through green's input function unchanged in meaning;
//! - generic plans that find rows by index: statements are planned once
//!   (`force_generic_plan`) and `enable_seqscan=off` keeps a table that was
//!   tiny when planned from being scanned whole on every later change. Inside
//!   one batch its old row versions are not dead yet, so such a scan grows
//!   with each update (pgbench_branches: 10 rows, 400 pages, every update
//!   reading them all). PostgreSQL's apply worker likewise always uses the
//!   replica identity index; a table without one is still scanned.
//! - `jit = off`: with sequential scans disabled, a plan that still needs
//!   one (a catalog query, a table without a key) costs more than
//!   `jit_above_cost`, and compiling it took longer than running it: the
//!   first changes of a stream waited 1.3 s for teal to read green's catalog
//!   (W2 live: the replay lag's p99). The apply worker does not use JIT.

use std::time::Duration;

use tokio_postgres::Client;

use crate::config::ConnInfo;
use crate::session::{SessionError, connect_with, keepalive_times};

/// Settings every apply session starts with, besides the canonical formats.
const APPLY_OPTIONS: &str = "-c session_replication_role=replica \
     -c plan_cache_mode=force_generic_plan -c enable_seqscan=off -c jit=off";

/// Opens an apply session on green. With `timeout` (`--replication-timeout`)
/// green ends the session when it stays idle inside a transaction that long
/// (`idle_in_transaction_session_timeout`: teal never leaves a batch open
/// while it waits for blue, so a session left so is one whose teal vanished,
/// and its row locks are released), and both ends probe the connection when
/// it is quiet (TCP keepalive) and give up on data left unacknowledged that
/// long (`TCP_USER_TIMEOUT`).
pub async fn connect(
    conninfo: &ConnInfo,
    application_name: &str,
    timeout: Option<Duration>,
) -> Result<Client, SessionError> {
    let mut options = format!(
        "{APPLY_OPTIONS} {}",
        crate::config::canonical_format_options()
    );
    if let Some(t) = timeout {
        let (idle, interval) = keepalive_times(t);
        options.push_str(&format!(
            " -c idle_in_transaction_session_timeout={} -c tcp_keepalives_idle={} \
             -c tcp_keepalives_interval={} -c tcp_keepalives_count=3",
            t.as_millis(),
            idle.as_secs(),
            interval.as_secs()
        ));
    }
    connect_with(conninfo, application_name, Some(&options), timeout).await
}
