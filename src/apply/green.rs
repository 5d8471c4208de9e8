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
use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode as PgSslMode};

use crate::config::{ChannelBinding, ConnInfo, HostAddr, SslMode};
use crate::tls::{MakeRustls, TlsConfigError};

/// Settings every apply session starts with, besides the canonical formats.
const APPLY_OPTIONS: &str = "-c session_replication_role=replica \
     -c plan_cache_mode=force_generic_plan -c enable_seqscan=off -c jit=off";

/// Green could not be reached or refused the session.
#[derive(Debug, thiserror::Error)]
pub enum GreenConnectError {
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// Connecting or logging in failed.
    #[error("cannot open a session on {target}: {source}")]
    Connect {
        /// The target, without password.
        target: String,
        /// What the driver reported.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl GreenConnectError {
    /// SQLSTATE, when green answered with an error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            GreenConnectError::Connect { source, .. } => source.code().map(|c| c.code()),
            GreenConnectError::Tls(_) => None,
        }
    }

    /// Whether the failure was on the way (network, server starting) rather
    /// than a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            GreenConnectError::Connect { source, .. } => match source.code() {
                None => true,
                Some(code) => {
                    crate::error::classify_sqlstate(code.code())
                        == crate::error::ErrorClass::Transient
                }
            },
            GreenConnectError::Tls(_) => false,
        }
    }
}

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
) -> Result<Client, GreenConnectError> {
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

/// When to start probing a quiet connection, and how often to probe it,
/// for a link that must not stay silent for `timeout`.
fn keepalive_times(timeout: Duration) -> (Duration, Duration) {
    let second = Duration::from_secs(1);
    ((timeout / 2).max(second), (timeout / 6).max(second))
}

/// Opens an ordinary session that prints values in the canonical formats
/// (e.g. on blue, to copy rows as text).
pub(crate) async fn connect_canonical(
    conninfo: &ConnInfo,
    application_name: &str,
) -> Result<Client, GreenConnectError> {
    let options = crate::config::canonical_format_options();
    connect_with(conninfo, application_name, Some(&options), None).await
}

/// Opens an ordinary session (no apply settings), e.g. on blue to watch
/// the slot and write heartbeats.
pub async fn connect_plain(
    conninfo: &ConnInfo,
    application_name: &str,
) -> Result<Client, GreenConnectError> {
    connect_with(conninfo, application_name, None, None).await
}

async fn connect_with(
    conninfo: &ConnInfo,
    application_name: &str,
    session_options: Option<&str>,
    timeout: Option<Duration>,
) -> Result<Client, GreenConnectError> {
    let mut config = tokio_postgres::Config::new();
    for host in &conninfo.hosts {
        match &host.addr {
            HostAddr::Tcp(h) => config.host(h),
            HostAddr::Unix(dir) => config.host_path(dir),
        };
        config.port(host.port);
    }
    config
        .user(&conninfo.user)
        .dbname(&conninfo.dbname)
        .application_name(
            conninfo
                .application_name
                .as_deref()
                .unwrap_or(application_name),
        )
        .options(
            [session_options, conninfo.options.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
        )
        .keepalives(true)
        .ssl_mode(match conninfo.sslmode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        })
        .channel_binding(match conninfo.channel_binding {
            ChannelBinding::Disable => PgChannelBinding::Disable,
            ChannelBinding::Prefer => PgChannelBinding::Prefer,
            ChannelBinding::Require => PgChannelBinding::Require,
        });
    if let Some(password) = conninfo
        .hosts
        .first()
        .and_then(|h| conninfo.password_for(h))
    {
        config.password(password.expose());
    }
    if let Some(t) = conninfo.connect_timeout {
        config.connect_timeout(t);
    }
    match timeout {
        Some(t) => {
            let (idle, interval) = keepalive_times(t);
            config
                .keepalives_idle(idle)
                .keepalives_interval(interval)
                .keepalives_retries(3)
                .tcp_user_timeout(t);
        }
        None => {
            config.keepalives_idle(Duration::from_secs(60));
        }
    }
    let (client, connection) =
        config
            .connect(MakeRustls::new(conninfo)?)
            .await
            .map_err(|source| GreenConnectError::Connect {
                target: conninfo.to_string(),
                source,
            })?;
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "green session ended");
        }
    }));
    Ok(client)
}
