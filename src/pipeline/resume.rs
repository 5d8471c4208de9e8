//! Where a stream resumes, decided in one place.
//!
//! ```text
//! green's progress (end LSN) ─┐
//! the slot's confirmed LSN ───┼──▶ start_position ──▶ START_REPLICATION (the source never
//! --start-lsn ────────────────┘                       goes below what consumers confirmed)
//! green's progress < slot's confirmed LSN ──▶ check_green_not_behind: stop, resynchronize
//! ```
//!
//! Blue streams from the later of the requested position and the slot's
//! confirmed one (PostgreSQL ignores an older request); apply skips what
//! green already committed, so starting early costs resent transactions,
//! never duplicates. Starting late would lose them: hence the check.

use crate::lsn::Lsn;

use super::PipelineError;

/// The position to ask blue for: `--start-lsn`, raised to green's progress
/// when apply alone consumes (with Kafka too, the slot's confirmed position
/// is what both hold, so only the request is passed and apply skips what
/// green has).
pub fn start_position(requested: Option<Lsn>, green: Option<Lsn>, kafka: bool) -> Option<Lsn> {
    match (requested, green) {
        (_, None) => requested,
        (_, Some(_)) if kafka => requested,
        (Some(r), Some(g)) => Some(r.max(g)),
        (None, Some(g)) => Some(g),
    }
}

/// Green must not be behind what blue's slot already confirmed: the
/// changes in between are gone from the slot.
pub fn check_green_not_behind(
    slot: &str,
    green: Option<Lsn>,
    slot_confirmed: Option<Lsn>,
) -> Result<(), PipelineError> {
    match (green, slot_confirmed) {
        (Some(green), Some(slot_lsn)) if slot_lsn > green => Err(PipelineError::GreenBehind {
            slot: slot.to_owned(),
            green,
            slot_lsn,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn green_progress_raises_the_start_unless_kafka_consumes_too() {
        let (a, b) = (Lsn(100), Lsn(200));
        assert_eq!(start_position(None, None, false), None);
        assert_eq!(start_position(Some(a), None, false), Some(a));
        assert_eq!(start_position(None, Some(b), false), Some(b));
        assert_eq!(start_position(Some(a), Some(b), false), Some(b));
        assert_eq!(start_position(Some(b), Some(a), false), Some(b));
        assert_eq!(start_position(Some(a), Some(b), true), Some(a));
        assert_eq!(start_position(None, Some(b), true), None);
    }

    #[test]
    fn a_slot_ahead_of_green_stops_the_stream() {
        assert!(check_green_not_behind("s", Some(Lsn(100)), Some(Lsn(100))).is_ok());
        assert!(check_green_not_behind("s", Some(Lsn(200)), Some(Lsn(100))).is_ok());
        assert!(check_green_not_behind("s", None, Some(Lsn(100))).is_ok());
        let err = check_green_not_behind("s", Some(Lsn(100)), Some(Lsn(200))).unwrap_err();
        assert!(err.to_string().contains("resynchronize green"), "{err}");
    }
}
