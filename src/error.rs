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
/// still held by the walsender of a connection that just died) and 58030 (I/O
/// error). Everything else, notably class 42 (undefined table/column, syntax)
/// and 22 (data exceptions), is definite.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    let transient = code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55006" | "58030"
        );
    if transient {
        ErrorClass::Transient
    } else {
        ErrorClass::Definite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for code in [
            "08006", "08001", "57P01", "57P03", "40001", "40P01", "53300", "55006",
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
