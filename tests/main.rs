//! teal's integration tests: one binary, real PostgreSQL servers.

mod support;

mod assembler;
mod audit;
mod capture;
mod conformance;
mod connect;
mod crash;
mod cutover;
mod ddl;
mod decoder;
mod demo_cli;
mod kafka;
mod kafka_outage;
mod kafka_restart;
mod liveness;
mod mask;
mod monitor;
mod monitoring_files;
mod security;
mod stream;
mod sync;
mod tail_cli;
mod verify;
