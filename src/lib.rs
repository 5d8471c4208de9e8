//! teal: a logical-replication CDC streamer for PostgreSQL.
//!
//! teal reads `pgoutput` from a replication slot on blue, decodes it into typed
//! change events, and hands whole transactions, in commit order, to consumers
//! (`teal tail` prints them; apply and the Kafka sink come later).
//!
//! ```text
//! blue ──replication conn──▶ source ──frames──▶ pgoutput ──messages──▶ assembler
//!                              ▲                                          │ whole transactions,
//!                              │ flush LSN (watch)                        ▼ commit order
//!                           progress ◀──────── confirmed LSN ──────── consumers
//! ```
//!
//! Data flows one way; only LSNs flow back, through [`progress`].

pub mod apply;
pub mod assembler;
mod backoff;
pub mod config;
pub mod error;
pub mod event;
pub mod http;
pub mod local;
pub mod lsn;
pub mod monitor;
pub mod ops;
pub mod pgoutput;
pub mod pipeline;
pub mod progress;
pub mod session;
pub mod sink;
pub mod source;
pub mod store;
pub mod tls;
