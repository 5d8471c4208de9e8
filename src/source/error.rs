//! Errors of the source stage, and their class.

use std::fmt;
use std::io;

use crate::error::Kind;

use crate::tls::TlsConfigError;

/// An ErrorResponse from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// ERROR, FATAL or PANIC.
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// What went wrong talking to blue.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// TCP or Unix socket connect failed.
    #[error("cannot connect to {host}")]
    Connect {
        /// Host and port.
        host: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// `connect_timeout` passed.
    #[error("timed out after {secs}s connecting to {host}")]
    ConnectTimeout {
        /// Host and port.
        host: String,
        /// The timeout.
        secs: u64,
    },
    /// The connection broke while in use.
    #[error("connection to {host} lost")]
    Io {
        /// Host and port.
        host: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// TLS could not be configured from the connection string.
    #[error(transparent)]
    TlsConfig(#[from] TlsConfigError),
    /// The TLS handshake failed (certificate rejected, protocol mismatch).
    #[error("TLS handshake with {host} failed")]
    TlsHandshake {
        /// Host and port.
        host: String,
        /// The handshake error (rustls' reason inside).
        #[source]
        source: io::Error,
    },
    /// The server does not offer TLS but the sslmode requires it.
    #[error("{host} does not support TLS, but sslmode={mode} requires it")]
    TlsRefused {
        /// Host and port.
        host: String,
        /// The sslmode.
        mode: &'static str,
    },
    /// Authentication failed or needs something teal lacks.
    #[error("authentication to {host} as {user:?} failed: {reason}")]
    Auth {
        /// Host and port.
        host: String,
        /// The role.
        user: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{context}: {error}")]
    Server {
        /// What teal was doing.
        context: String,
        /// The server's error.
        error: Box<ServerError>,
    },
    /// The server sent something the protocol does not allow here.
    #[error("unexpected response from {host}: {what}")]
    Protocol {
        /// Host and port.
        host: String,
        /// What arrived.
        what: String,
    },
    /// Blue sent nothing for `--replication-timeout` (a silent link: a
    /// network partition, a dead NAT entry, a hung server).
    #[error(
        "{host} sent nothing for {}s while {doing}; ending the session and reconnecting (--replication-timeout)",
        after.as_secs()
    )]
    Timeout {
        /// Host and port.
        host: String,
        /// What teal waited for.
        doing: &'static str,
        /// The timeout.
        after: std::time::Duration,
    },
    /// Blue was never reached: the first connection failed
    /// [`crate::error::FIRST_CONNECT_TRIES`] times.
    #[error("could not reach blue after {tries} tries")]
    Unreachable {
        /// How many tries.
        tries: u32,
        /// The last try's error.
        #[source]
        last: Box<SourceError>,
    },
    /// Blue is not set up for teal (old version, missing slot or publication);
    /// the message says what to run.
    #[error("{0}")]
    Setup(String),
    /// Blue invalidated the slot: the WAL from `lsn` on was removed before
    /// green applied it.
    #[error(
        "replication slot {slot:?} was invalidated on blue (wal_status = lost, max_slot_wal_keep_size): \
         the WAL from {lsn} on, which green had not applied, was removed, so those changes cannot be \
         streamed again. To recover: SELECT pg_drop_replication_slot('{slot}') on blue, then \
         teal sync --source ... --target ... --slot {slot} --publication ... --on-existing-data truncate \
         (a new slot and a new copy; exit status 3)",
        lsn = lsn.map_or("its confirmed position".to_owned(), |l| l.to_string())
    )]
    SlotLost {
        /// The slot.
        slot: String,
        /// Its confirmed position when it was lost.
        lsn: Option<crate::lsn::Lsn>,
    },
}

impl SourceError {
    /// What kind of failure it is (see [`crate::error::policy`]).
    pub fn kind(&self) -> Kind {
        match self {
            SourceError::Connect { .. }
            | SourceError::ConnectTimeout { .. }
            | SourceError::Io { .. } => Kind::Connection,
            SourceError::Timeout { .. } => Kind::Timeout,
            SourceError::Server { error, .. } => Kind::Sql(error.code.clone()),
            SourceError::Auth { .. } => Kind::Auth,
            SourceError::Protocol { .. } => Kind::Protocol,
            SourceError::Unreachable { .. } => Kind::Unreachable,
            // A handshake the network cut is retried; one TLS refused
            // (certificate, protocol) is not.
            SourceError::TlsHandshake { source, .. } => match source.kind() {
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::Other => {
                    Kind::Setup
                }
                _ => Kind::Connection,
            },
            SourceError::TlsConfig(_) | SourceError::TlsRefused { .. } | SourceError::Setup(_) => {
                Kind::Setup
            }
            SourceError::SlotLost { .. } => Kind::SlotLost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19.5: a handshake the network cut is retried, one TLS refused is not.
    #[test]
    fn tls_handshakes_cut_by_the_network_are_retried() {
        let handshake = |kind| SourceError::TlsHandshake {
            host: "blue:5432".into(),
            source: io::Error::new(kind, "x"),
        };
        assert_eq!(
            handshake(io::ErrorKind::ConnectionReset).kind(),
            Kind::Connection
        );
        assert_eq!(
            handshake(io::ErrorKind::UnexpectedEof).kind(),
            Kind::Connection
        );
        assert_eq!(handshake(io::ErrorKind::InvalidData).kind(), Kind::Setup);
    }
}
