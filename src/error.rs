//! What teal does about an error, decided in one place.
//!
//! ```text
//! SourceError, ApplyError, PipelineError, KafkaSinkError, ... ──kind()──▶ Kind ──policy()──▶ Policy
//!                                                                          { retry: Timed | Stop, hint }
//! ```
//!
//! Every error type maps its variants to a [`Kind`]; [`policy`] turns a
//! kind into what to do (retry with capped backoff from the last durable
//! position, or stop) and what the operator can do about it (the model is
//! supabase/etl's error policy). A stop never leaves anything partial
//! committed; a retry resumes from what green (and Kafka) hold.
//!
//! Messages name what teal was doing and leave the cause to the error
//! chain: [`report`] (or [`Report`] in log fields) prints each cause once.

use std::fmt;

/// What kind of failure an error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A socket could not connect, broke, or was closed.
    Connection,
    /// A server was never reached: the first connection failed
    /// [`FIRST_CONNECT_TRIES`] times (teal exits with status 2).
    Unreachable,
    /// A peer said nothing for `--replication-timeout`.
    Timeout,
    /// The server answered with this SQLSTATE.
    Sql(String),
    /// A conflict met in a batch: it is replayed change by change.
    Replay,
    /// A conflict the table's policy stops on.
    Conflict,
    /// Green's tables do not fit blue's (the message says what to run).
    SchemaDrift,
    /// Green's progress is behind what blue's slot already confirmed.
    GreenBehind,
    /// Blue invalidated the slot (`wal_status = lost`): WAL green had not
    /// applied is gone. teal exits with status 3.
    SlotLost,
    /// Blue sent something teal cannot read (malformed or unexpected).
    Protocol,
    /// Setup teal cannot work with: a setting, a missing slot or
    /// publication, an old server, TLS files (the message says which).
    Setup,
    /// The server refused the login.
    Auth,
    /// Kafka did not take records or a transaction.
    KafkaDelivery,
    /// The Kafka producer cannot be made from the settings.
    KafkaSetup,
    /// A stage panicked.
    Bug,
    /// Stopping took longer than `--shutdown-timeout`.
    ShutdownTimeout,
}

/// Connections to a server never reached before are tried this many
/// times (with the reconnect backoff) before teal gives up: a wrong host or
/// port is a mistake to report, not an outage to wait out. Once a session
/// was established, a lost connection is retried without limit.
pub const FIRST_CONNECT_TRIES: u32 = 10;

/// Whether teal tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Again after a capped, growing delay, from the last durable position.
    Timed,
    /// Not until someone acts: retrying would fail the same way.
    Stop,
}

/// What teal does about an error, and what the operator can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Retry or stop.
    pub retry: Retry,
    /// A line for the operator, when there is more to say than the message.
    pub hint: Option<&'static str>,
}

/// The one decision: what teal does about a kind of error.
pub fn policy(kind: &Kind) -> Policy {
    use Retry::{Stop, Timed};
    let (retry, hint) = match kind {
        Kind::Connection | Kind::Replay | Kind::KafkaDelivery => (Timed, None),
        Kind::Unreachable => (
            Stop,
            Some(
                "check the host and port in the connection string, and that the server is up and accepts connections from here",
            ),
        ),
        Kind::Timeout => (
            Timed,
            Some("a link went silent: check the network between teal and the server"),
        ),
        Kind::Sql(code) => sql_policy(code),
        Kind::Conflict => (
            Stop,
            Some(
                "the rows are in teal.conflicts on green: fix green's row, or choose another --conflict policy for the table",
            ),
        ),
        Kind::SchemaDrift => (
            Stop,
            Some("change green's table as the message says, then start teal again"),
        ),
        Kind::GreenBehind => (Stop, Some("resynchronize green (teal sync)")),
        Kind::SlotLost => (
            Stop,
            Some(
                "drop the slot on blue and resynchronize green with teal sync (the message names both); \
                 a larger max_slot_wal_keep_size, or alerts on teal_slot_invalidation_eta_seconds, prevent it",
            ),
        ),
        Kind::Protocol => (
            Stop,
            Some("blue sent something teal does not understand: please report it with the log"),
        ),
        Kind::Setup | Kind::ShutdownTimeout => (Stop, None),
        Kind::Auth => (
            Stop,
            Some(
                "check the user, the password (PGPASSWORD, ~/.pgpass) and the server's pg_hba.conf",
            ),
        ),
        Kind::KafkaSetup => (Stop, Some("check --kafka-brokers and --kafka-property")),
        Kind::Bug => (Stop, Some("a bug in teal: please report it with the log")),
    };
    Policy { retry, hint }
}

/// Retries a PostgreSQL error by its SQLSTATE when the next attempt may
/// pass: class 08 (connection exception), 53 (insufficient resources),
/// 57P01-57P03 (admin/crash shutdown, cannot connect now), 40001
/// (serialization failure), 40P01 (deadlock), 55006 (object in use: a slot
/// still held by the walsender of a connection that just died), 58030 (I/O
/// error), 55P03 (a lock wait ran out), 25P03 and 25P04 (the server ended a
/// session idle in a transaction, or in one too long). Everything else,
/// notably class 42 (undefined table or column, syntax, privileges) and 22
/// (data exceptions), stops.
fn sql_policy(code: &str) -> (Retry, Option<&'static str>) {
    let transient = code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01"
                | "57P02"
                | "57P03"
                | "40001"
                | "40P01"
                | "55006"
                | "58030"
                | "55P03"
                | "25P03"
                | "25P04"
        );
    if transient {
        return (Retry::Timed, None);
    }
    let hint = match code {
        "42501" => Some("grant teal's role the privilege the message names"),
        "28P01" | "28000" => policy(&Kind::Auth).hint,
        c if c.starts_with("42") => {
            Some("green's tables or teal's role differ from what teal expects: see the message")
        }
        _ => None,
    };
    (Retry::Stop, hint)
}

/// Whether errors of `kind` are retried.
pub fn retries(kind: &Kind) -> bool {
    policy(kind).retry == Retry::Timed
}

/// The kind of a PostgreSQL driver error: its SQLSTATE, or a broken
/// session when there is none (closed, I/O, timeout).
pub fn postgres_kind(e: &tokio_postgres::Error) -> Kind {
    match e.code() {
        Some(code) => Kind::Sql(code.code().to_owned()),
        None => Kind::Connection,
    }
}

/// A PostgreSQL driver error without its detail, which may quote row
/// values ("Key (id)=(42) already exists"): severity, SQLSTATE, message,
/// column and hint.
pub fn describe_postgres(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            // Data exceptions quote the value that failed
            // (`invalid input syntax for type integer: "abc"`).
            let message = if code.starts_with("22") {
                redact_quoted(db.message())
            } else {
                db.message().to_owned()
            };
            let mut s = format!("{} {code}: {message}", db.severity());
            if let Some(column) = db.column() {
                s.push_str(&format!(" (column {column})"));
            }
            if let Some(hint) = db.hint() {
                s.push_str(&format!(" (hint: {hint})"));
            }
            s
        }
        None => e.to_string(),
    }
}

/// `message` with every double-quoted part replaced by `"…"`.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut quoted = true;
    for part in parts {
        out.push('"');
        out.push_str(if quoted { "…" } else { part });
        quoted = !quoted;
    }
    out
}

/// An error and its causes, for log fields: `error = %Report(&e)`.
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&report(std::iter::successors(Some(self.0), |e| e.source())))
    }
}

/// An error and its causes as one line for the operator: each cause that
/// the text so far does not already say is added after a colon (most of
/// teal's messages already name their cause), and driver errors appear
/// without their detail (see [`describe_postgres`]).
pub fn report<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut out = String::new();
    for e in chain {
        let text = match e.downcast_ref::<tokio_postgres::Error>() {
            Some(pg) => describe_postgres(pg),
            // The driver's error says this already.
            None if e.is::<tokio_postgres::error::DbError>() => continue,
            None => e.to_string(),
        };
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open a session on green")]
    struct Outer {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_report_says_each_cause_once() {
        let e = Outer {
            source: std::io::Error::other("connection refused"),
        };
        let chain: Vec<&(dyn std::error::Error + 'static)> = vec![&e, &e.source];
        assert_eq!(
            report(chain),
            "cannot open a session on green: connection refused"
        );
        let silent = Silent {
            source: std::io::Error::other("timed out"),
        };
        let chain: Vec<&(dyn std::error::Error + 'static)> = vec![&silent, &silent.source];
        assert_eq!(report(chain), "green did not answer: timed out");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("green did not answer")]
    struct Silent {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn quoted_values_are_left_out() {
        assert_eq!(
            redact_quoted(r#"invalid input value for enum mood: "ecstatic""#),
            r#"invalid input value for enum mood: "…""#
        );
        assert_eq!(
            redact_quoted(r#"value "99999999999" is out of range for type integer"#),
            r#"value "…" is out of range for type integer"#
        );
        assert_eq!(redact_quoted("no quotes"), "no quotes");
    }

    #[test]
    fn sqlstates_are_retried_or_stop() {
        for code in [
            "08006", "08001", "57P01", "57P03", "40001", "40P01", "53300", "55006", "55P03",
            "25P03",
        ] {
            assert!(retries(&Kind::Sql(code.into())), "{code}");
        }
        for code in [
            "42P01", "42703", "22P02", "XX000", "55000", "42704", "23505",
        ] {
            assert!(!retries(&Kind::Sql(code.into())), "{code}");
        }
        assert!(
            policy(&Kind::Sql("42501".into()))
                .hint
                .unwrap()
                .contains("grant")
        );
        assert!(retries(&Kind::Timeout) && !retries(&Kind::Conflict));
    }
}
