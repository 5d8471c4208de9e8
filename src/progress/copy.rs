//! How far an initial copy (`teal sync`) has got, per table: what the
//! terminal display, the log lines, `/status` and `/metrics` show.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One table's copy.
#[derive(Debug)]
pub struct TableCopy {
    /// Green's table, `schema.name`.
    pub name: String,
    /// Heap size of the blue relations read, the estimate of the work.
    pub estimated_bytes: u64,
    /// Rows blue's statistics expect.
    pub estimated_rows: u64,
    /// Chunks planned.
    pub chunks: u64,
    /// Chunks committed on green (in this run or an earlier one).
    pub chunks_done: AtomicU64,
    /// Rows committed on green.
    pub rows: AtomicU64,
    /// COPY bytes read from blue (including chunks still open).
    pub bytes: AtomicU64,
}

/// Every table's copy, in plan order.
#[derive(Debug)]
pub struct CopyStatus {
    started: Instant,
    /// The tables.
    pub tables: Vec<TableCopy>,
    finished: AtomicU64,
}

/// A moment's view of one table, for display.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableCopySnapshot {
    /// `schema.name`.
    pub table: String,
    /// Rows committed.
    pub rows: u64,
    /// Rows expected (an estimate).
    pub estimated_rows: u64,
    /// COPY bytes read.
    pub bytes: u64,
    /// Chunks committed / planned.
    pub chunks_done: u64,
    /// Chunks planned.
    pub chunks: u64,
    /// 0..=1, by chunks and bytes.
    pub fraction: f64,
}

impl CopyStatus {
    /// A copy of `tables`, starting now.
    pub fn new(tables: Vec<TableCopy>) -> CopyStatus {
        CopyStatus {
            started: Instant::now(),
            tables,
            finished: AtomicU64::new(0),
        }
    }

    /// The copy ended (every chunk is on green).
    pub fn finish(&self) {
        self.finished.store(1, Ordering::Relaxed);
    }

    /// Whether [`CopyStatus::finish`] was called.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed) == 1
    }

    /// Seconds since the copy started.
    pub fn elapsed_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Each table now.
    pub fn snapshot(&self) -> Vec<TableCopySnapshot> {
        self.tables
            .iter()
            .map(|t| {
                let chunks_done = t.chunks_done.load(Ordering::Relaxed);
                let bytes = t.bytes.load(Ordering::Relaxed);
                let fraction = if t.chunks == 0 || chunks_done >= t.chunks {
                    1.0
                } else if t.estimated_bytes > 0 {
                    // COPY text is usually smaller than the heap: the
                    // estimate errs towards slow, and never shows done early.
                    (bytes as f64 / t.estimated_bytes as f64).min(0.99)
                } else {
                    chunks_done as f64 / t.chunks as f64
                };
                TableCopySnapshot {
                    table: t.name.clone(),
                    rows: t.rows.load(Ordering::Relaxed),
                    estimated_rows: t.estimated_rows,
                    bytes,
                    chunks_done,
                    chunks: t.chunks,
                    fraction,
                }
            })
            .collect()
    }

    /// The whole copy's share done (0..=1), weighted by estimated size.
    pub fn overall_fraction(&self, tables: &[TableCopySnapshot]) -> f64 {
        if self.is_finished() {
            return 1.0;
        }
        let weight = |t: &TableCopy| t.estimated_bytes.max(8192) as f64;
        let total: f64 = self.tables.iter().map(weight).sum();
        if total == 0.0 {
            return 0.0;
        }
        self.tables
            .iter()
            .zip(tables)
            .map(|(t, s)| weight(t) * s.fraction)
            .sum::<f64>()
            / total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, estimated_bytes: u64, chunks: u64) -> TableCopy {
        TableCopy {
            name: name.into(),
            estimated_bytes,
            estimated_rows: 0,
            chunks,
            chunks_done: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    #[test]
    fn fractions_follow_bytes_and_chunks() {
        let p = CopyStatus::new(vec![table("a", 1000, 2), table("b", 3000, 1)]);
        p.tables[0].bytes.store(500, Ordering::Relaxed);
        let s = p.snapshot();
        assert_eq!(s[0].fraction, 0.5);
        assert_eq!(s[1].fraction, 0.0);
        // Weights: 8192 (a's floor) and 8192 (b's floor).
        assert!((p.overall_fraction(&s) - 0.25).abs() < 1e-9);
        // More bytes than the estimate: not done until its chunks are.
        p.tables[0].bytes.store(5000, Ordering::Relaxed);
        assert_eq!(p.snapshot()[0].fraction, 0.99);
        p.tables[0].chunks_done.store(2, Ordering::Relaxed);
        assert_eq!(p.snapshot()[0].fraction, 1.0);
        p.finish();
        assert_eq!(p.overall_fraction(&p.snapshot()), 1.0);
    }
}
