//! Percentiles of latency samples.

use std::time::Duration;

pub(crate) struct Samples(Vec<f64>);

impl Samples {
    pub(crate) fn new() -> Self {
        Self(Vec::new())
    }

    pub(crate) fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }

    pub(crate) fn push_ms(&mut self, ms: f64) {
        self.0.push(ms);
    }

    pub(crate) fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile in milliseconds (nearest rank).
    pub(crate) fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_by(|a, b| a.total_cmp(b));
        let rank = ((p / 100.0) * self.0.len() as f64).ceil().max(1.0) as usize - 1;
        self.0[rank.min(self.0.len() - 1)]
    }
}
