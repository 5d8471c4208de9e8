//! How far a `teal verify` run is: tables, rows and chunks compared,
//! differences found. Written by the comparison, read by the progress bars
//! and `/metrics` (`teal_verify_*`); counts only, never a key or a value.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::lock;

/// One run's progress (shared: atomics and a short lock).
#[derive(Debug)]
pub struct VerifyProgress {
    started: Instant,
    /// What the run is doing (`schema`, `point`, `rows`, `invariants`, `done`).
    phase: Mutex<&'static str>,
    /// Tables to compare and their estimated sizes (bytes, blue).
    tables: Mutex<Vec<(String, u64)>>,
    tables_done: AtomicU64,
    bytes_done: AtomicU64,
    rows_blue: AtomicU64,
    rows_green: AtomicU64,
    chunks: AtomicU64,
    chunks_differing: AtomicU64,
    differences: AtomicU64,
    /// What each worker is comparing (table and step).
    workers: Mutex<Vec<Option<String>>>,
    /// 1 equal, 0 differs, absent until known.
    equal: Mutex<Option<bool>>,
}

/// A copy of the progress at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifySnapshot {
    /// See [`VerifyProgress`].
    pub phase: &'static str,
    /// Tables to compare.
    pub tables_total: u64,
    /// Tables compared.
    pub tables_done: u64,
    /// Estimated bytes to read on blue (heap and TOAST of every table).
    pub bytes_total: u64,
    /// Of those, the compared tables'.
    pub bytes_done: u64,
    /// Rows compared on blue.
    pub rows_blue: u64,
    /// Rows compared on green.
    pub rows_green: u64,
    /// Chunks summed in tables whose sums differed.
    pub chunks: u64,
    /// Of those, the chunks whose rows were read.
    pub chunks_differing: u64,
    /// Differing rows found.
    pub differences: u64,
    /// Each worker's current table and step.
    pub workers: Vec<Option<String>>,
    /// The result, once known.
    pub equal: Option<bool>,
    /// Seconds since the run started.
    pub elapsed_seconds: f64,
}

impl Default for VerifyProgress {
    fn default() -> Self {
        VerifyProgress::new()
    }
}

impl VerifyProgress {
    /// A run starting now.
    pub fn new() -> VerifyProgress {
        VerifyProgress {
            started: Instant::now(),
            phase: Mutex::new("schema"),
            tables: Mutex::new(Vec::new()),
            tables_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            rows_blue: AtomicU64::new(0),
            rows_green: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
            chunks_differing: AtomicU64::new(0),
            differences: AtomicU64::new(0),
            workers: Mutex::new(Vec::new()),
            equal: Mutex::new(None),
        }
    }

    /// Now doing `phase`.
    pub fn phase(&self, phase: &'static str) {
        *lock(&self.phase) = phase;
    }

    /// The tables to compare, with their estimated sizes, and `workers`.
    pub fn plan(&self, tables: Vec<(String, u64)>, workers: usize) {
        *lock(&self.tables) = tables;
        *lock(&self.workers) = vec![None; workers];
    }

    /// Worker `worker` is at `step` (`None`: idle).
    pub fn worker(&self, worker: usize, step: Option<String>) {
        if let Some(w) = lock(&self.workers).get_mut(worker) {
            *w = step;
        }
    }

    /// Table number `index` (of [`Self::plan`]'s) is compared: its rows,
    /// chunks and differences.
    pub fn table_done(&self, index: usize, rows: (u64, u64), chunks: (u64, u64), differences: u64) {
        let bytes = lock(&self.tables).get(index).map_or(0, |t| t.1);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.rows_blue.fetch_add(rows.0, Ordering::Relaxed);
        self.rows_green.fetch_add(rows.1, Ordering::Relaxed);
        self.chunks.fetch_add(chunks.0, Ordering::Relaxed);
        self.chunks_differing.fetch_add(chunks.1, Ordering::Relaxed);
        self.differences.fetch_add(differences, Ordering::Relaxed);
        self.tables_done.fetch_add(1, Ordering::Relaxed);
    }

    /// The run is over with this result.
    pub fn finish(&self, equal: Option<bool>) {
        *lock(&self.equal) = equal;
        self.phase("done");
        for w in lock(&self.workers).iter_mut() {
            *w = None;
        }
    }

    /// The progress now.
    pub fn snapshot(&self) -> VerifySnapshot {
        let tables = lock(&self.tables);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VerifySnapshot {
            phase: *lock(&self.phase),
            tables_total: tables.len() as u64,
            tables_done: load(&self.tables_done),
            bytes_total: tables.iter().map(|t| t.1).sum(),
            bytes_done: load(&self.bytes_done),
            rows_blue: load(&self.rows_blue),
            rows_green: load(&self.rows_green),
            chunks: load(&self.chunks),
            chunks_differing: load(&self.chunks_differing),
            differences: load(&self.differences),
            workers: lock(&self.workers).clone(),
            equal: *lock(&self.equal),
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_add_up_and_finishing_clears_the_workers() {
        let p = VerifyProgress::new();
        p.plan(vec![("public.a".into(), 100), ("public.b".into(), 50)], 2);
        p.phase("rows");
        p.worker(1, Some("public.b: summing".into()));
        p.worker(7, Some("no such worker".into()));
        p.table_done(1, (10, 9), (2, 1), 1);
        let s = p.snapshot();
        assert_eq!(
            (s.tables_total, s.tables_done, s.bytes_total, s.bytes_done),
            (2, 1, 150, 50)
        );
        assert_eq!(
            (s.rows_blue, s.rows_green, s.chunks, s.chunks_differing),
            (10, 9, 2, 1)
        );
        assert_eq!(s.workers, [None, Some("public.b: summing".to_owned())]);
        assert_eq!((s.phase, s.equal), ("rows", None));
        p.finish(Some(false));
        let s = p.snapshot();
        assert_eq!(
            (s.phase, s.equal, s.workers),
            ("done", Some(false), vec![None, None])
        );
    }
}
