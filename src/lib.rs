//! teal: a logical-replication CDC streamer for PostgreSQL.
//!
//! teal reads `pgoutput` from a replication slot on blue, decodes it into
//! typed change events, applies whole transactions in batched green
//! transactions (exactly once, in commit order) and can publish the same
//! changes to Kafka as a Debezium-format audit stream.
//!
//! ```text
//! blue ──replication conn──▶ source ──frames──▶ pgoutput ──messages──▶ assembler
//!   ▲                          ▲                                          │ whole transactions,
//!   │ slot_watch (heartbeats,  │ flush LSN (watch)                        ▼ commit order
//!   │  slot health)          progress ◀──confirmed LSNs── apply (green) / sink::kafka
//!   │                                                     (pipeline::fan_out)
//! monitor (lag, liveness, counters) ──▶ http (/metrics, /status, /readyz, dashboard)
//! ```
//!
//! Data flows one way; only LSNs flow back, through [`progress`]. Module
//! tree, lowest first:
//! - leaves: [`lsn`], [`event`], [`error`] (the one error policy), [`config`];
//! - stages: [`source`], [`pgoutput`], [`assembler`], then [`apply`] and
//!   [`sink`] (consumers, which see only events and confirm through
//!   [`progress`]); [`session`] opens ordinary sessions for any of them and
//!   [`store`] keeps teal's own tables on green;
//! - wiring: [`pipeline`] (capture, fan-out, where a stream resumes);
//! - telemetry: [`progress`] (flush LSN, lag, liveness, slot state),
//!   [`monitor`] (the hub), [`http`] (the endpoint);
//! - commands: [`ops`] (one module per subcommand, orchestrating the rest);
//!   [`local`] runs throwaway clusters for `teal demo`, tests and benches.

pub mod apply;
pub mod assembler;
mod backoff;
pub mod config;
pub mod error;
pub mod event;
pub mod http;
pub mod local;
pub mod lsn;
pub mod mask;
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
