//! The two error classes every stage reports in, decided in one place.
//!
//! A *transient* error (connection loss, server shutdown, serialization
//! failure, resource exhaustion, a timeout) is retried with capped backoff from
//! the last durable LSN. A *definite* error (a malformed frame, a missing table
//! or column, a dropped slot, bad configuration) stops teal: retrying would
//! fail the same way, and nothing partial has been committed.

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with backoff from the last durable position.
    Transient,
    /// Stop and report; the operator has to act.
    Definite,
}

/// Classifies a PostgreSQL error by its SQLSTATE.
///
/// Transient: class 08 (connection exception), 53 (insufficient resources),
/// 57P01-57P03 (admin/crash shutdown, cannot connect now), 40001
/// (serialization failure), 40P01 (deadlock), 55006 (object in use: a slot
/// still held by the walsender of a connection that just died), 58030 (I/O
/// error), 55P03 (a lock wait ran out), 25P03 and 25P04 (the server ended a
/// session idle in a transaction, or in one too long). Everything else, notably class 42 (undefined table/column, syntax)
/// and 22 (data exceptions), is definite.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    let transient = code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55006" | "58030"
            // A lock wait that gave up; a session ended as idle in a
            // transaction or too long in one: the next attempt may pass.
            | "55P03" | "25P03" | "25P04"
        );
    if transient {
        ErrorClass::Transient
    } else {
        ErrorClass::Definite
    }
}

/// A PostgreSQL driver error without its detail, which may quote row
/// values ("Key (id)=(42) already exists"): severity, SQLSTATE, message,
/// column and hint.
pub fn describe_postgres(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
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
    #[error("cannot open a session on green: {source}")]
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
    fn sqlstates_are_classified() {
        for code in [
            "08006", "08001", "57P01", "57P03", "40001", "40P01", "53300", "55006", "55P03",
            "25P03",
        ] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Transient, "{code}");
        }
        for code in [
            "42P01", "42703", "22P02", "XX000", "55000", "42704", "23505",
        ] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Definite, "{code}");
        }
    }
}
