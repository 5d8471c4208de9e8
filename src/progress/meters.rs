//! Lock-free counters the metrics endpoint reads: time accumulated, and
//! observations counted per fixed bucket (a Prometheus histogram's buckets).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Time added up, in nanoseconds.
#[derive(Debug, Default)]
pub struct Seconds(AtomicU64);

impl Seconds {
    /// Adds `d` (saturating past 584 years).
    pub fn add(&self, d: Duration) {
        self.0.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// The total, in seconds.
    pub fn seconds(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// The upper bounds (inclusive) of a histogram's buckets.
pub trait Bounds {
    /// In increasing order; `+Inf` is implied after the last.
    const BOUNDS: &'static [f64];
}

/// Observations counted per bucket of `B::BOUNDS` (and one past the last).
#[derive(Debug)]
pub struct Buckets<B> {
    counts: Box<[AtomicU64]>,
    bounds: PhantomData<B>,
}

impl<B: Bounds> Default for Buckets<B> {
    fn default() -> Self {
        Buckets {
            counts: (0..=B::BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds: PhantomData,
        }
    }
}

impl<B: Bounds> Buckets<B> {
    /// Counts one observation of `value`.
    pub fn record(&self, value: f64) {
        self.record_n(value, 1);
    }

    /// Counts `n` observations of `value`.
    pub fn record_n(&self, value: f64, n: u64) {
        let bucket = B::BOUNDS
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(B::BOUNDS.len());
        self.counts[bucket].fetch_add(n, Ordering::Relaxed);
    }

    /// The bounds.
    pub fn bounds(&self) -> &'static [f64] {
        B::BOUNDS
    }

    /// Cumulative counts, one per bound and the last for `+Inf` (the total).
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Three;
    impl Bounds for Three {
        const BOUNDS: &'static [f64] = &[1.0, 10.0, 100.0];
    }

    #[test]
    fn buckets_are_inclusive_and_cumulative() {
        let b = Buckets::<Three>::default();
        for v in [0.5, 1.0, 10.0, 50.0, 1000.0] {
            b.record(v);
        }
        assert_eq!(b.cumulative(), [2, 3, 4, 5]);
        let s = Seconds::default();
        s.add(Duration::from_millis(1500));
        assert_eq!(s.seconds(), 1.5);
    }
}
