//! Ordinary PostgreSQL sessions (tokio-postgres) on blue or green, and
//! the catalog lookups more than one stage needs.
//!
//! ```text
//! ConnInfo ──▶ tokio-postgres Config (hosts, TLS by sslmode via rustls, channel binding,
//!              password from the URL / PGPASSWORD / ~/.pgpass, keepalives) ──▶ Client
//! ```
//!
//! Replication sessions are not opened here: they speak the replication
//! protocol on teal's own framing (`source::conn`).

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode as PgSslMode};

use crate::config::{ChannelBinding, ConnInfo, HostAddr, SslMode};
use crate::tls::{MakeRustls, TlsConfigError};

/// A server could not be reached or refused the session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// Connecting or logging in failed.
    #[error("cannot open a session on {target}")]
    Connect {
        /// The target, without password.
        target: String,
        /// What the driver reported.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The connection string names no host.
    #[error("the connection string names no host")]
    NoHost,
}

impl SessionError {
    /// What kind of failure it is (see [`crate::error::policy`]).
    pub fn kind(&self) -> crate::error::Kind {
        match self {
            SessionError::Connect { source, .. } => crate::error::postgres_kind(source),
            SessionError::Tls(_) | SessionError::NoHost => crate::error::Kind::Setup,
        }
    }
}

/// When to start probing a quiet connection, and how often to probe it,
/// for a link that must not stay silent for `timeout`.
pub(crate) fn keepalive_times(timeout: Duration) -> (Duration, Duration) {
    let second = Duration::from_secs(1);
    ((timeout / 2).max(second), (timeout / 6).max(second))
}

/// Opens an ordinary session that prints values in the canonical formats
/// (e.g. on blue, to copy rows as text).
pub(crate) async fn connect_canonical(
    conninfo: &ConnInfo,
    application_name: &str,
) -> Result<Client, SessionError> {
    let options = crate::config::canonical_format_options();
    connect_with(conninfo, application_name, Some(&options), None).await
}

/// Opens an ordinary session (no apply settings), e.g. on blue to watch
/// the slot and write heartbeats.
pub async fn connect_plain(
    conninfo: &ConnInfo,
    application_name: &str,
) -> Result<Client, SessionError> {
    connect_with(conninfo, application_name, None, None).await
}

/// Opens a session with `session_options` (`-c name=value ...`, before
/// the connection string's own `options`) and, with `timeout`, TCP
/// keepalives and a user timeout sized for a link that must not stay
/// silent that long.
pub(crate) async fn connect_with(
    conninfo: &ConnInfo,
    application_name: &str,
    session_options: Option<&str>,
    timeout: Option<Duration>,
) -> Result<Client, SessionError> {
    let mut config = tokio_postgres::Config::new();
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
    // Each host in turn, as libpq does, with its own password (the
    // password file may hold a different line for each).
    let tls = MakeRustls::new(conninfo)?;
    let mut last = None;
    let mut connected = None;
    for host in &conninfo.hosts {
        let mut config = config.clone();
        match &host.addr {
            HostAddr::Tcp(h) => config.host(h),
            // As libpq: no TLS over a Unix socket, whatever sslmode says
            // (there is no host name to verify, and nothing on the wire).
            HostAddr::Unix(dir) => config.host_path(dir).ssl_mode(PgSslMode::Disable),
        };
        config.port(host.port);
        if let Some(password) = conninfo.password_for(host) {
            config.password(password.expose());
        }
        match config.connect(tls.clone()).await {
            Ok(c) => {
                connected = Some(c);
                break;
            }
            Err(e) => {
                tracing::debug!(host = %host, error = %crate::error::Report(&e), "connection attempt failed");
                last = Some(e);
            }
        }
    }
    let (client, connection) = match (connected, last) {
        (Some(c), _) => c,
        (None, Some(source)) => {
            return Err(SessionError::Connect {
                target: conninfo.to_string(),
                source,
            });
        }
        (None, None) => return Err(SessionError::NoHost),
    };
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %crate::error::Report(&e), "session ended");
        }
    }));
    Ok(client)
}

/// The tables `publications` publish, distinct, in byte order of
/// (schema, name) whatever blue's collation (the same order on every run).
pub async fn published_tables(
    client: &Client,
    publications: &[String],
) -> Result<Vec<crate::event::QualifiedName>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables \
             WHERE pubname = ANY($1)",
            &[&publications],
        )
        .await?;
    let mut tables: Vec<crate::event::QualifiedName> = rows
        .iter()
        .map(|r| crate::event::QualifiedName {
            namespace: r.get(0),
            name: r.get(1),
        })
        .collect();
    tables.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    tables.dedup();
    Ok(tables)
}

/// The primary-key column names of table `oid`, in key order (empty
/// without a primary key). Used on green here, and on blue by the Kafka
/// sink to key records of tables whose replica identity is not the key.
pub async fn primary_key_columns(
    client: &Client,
    oid: u32,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
            &[&oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
