//! Sinks besides green: consumers of the same transactions as apply, each
//! confirming through its own progress handle (the slot's flush LSN is the
//! minimum over all of them).

pub mod envelope;
pub mod kafka;
