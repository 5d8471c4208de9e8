//! Operator commands: each orchestrates the pipeline's stages, never
//! re-implements them.

pub mod audit;
pub mod binary;
pub mod cutover;
pub mod ddl;
pub mod demo;
mod kafka_drop;
pub mod pair;
pub mod sequences;
pub mod status;
pub mod stream;
mod stream_kafka;
pub mod sync;
pub mod tail;
pub mod verify;

/// `n` bytes for people: `512 B`, `1.5 KiB`, `3.2 MiB`, ... up to TiB.
pub(crate) fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut i) = (n as f64, 0);
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}
