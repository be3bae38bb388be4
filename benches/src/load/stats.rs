//! What a run measured: latency histograms, error counts by kind, throughput.
//!
//! Latency is kept in an HdrHistogram of microseconds (1 µs to 1 hour, 3 significant
//! digits: a reported value is within 0.1% of the true one), so memory is fixed however
//! many records are measured, and per-task histograms merge exactly. Percentiles are
//! HdrHistogram's (the highest value equivalent to the one at that quantile), reported
//! in milliseconds.
//!
//! Throughput: MB/s is **10^6 bytes** per second of message *values* (the `--size`
//! bytes of each record), not counting keys, headers or record-batch framing.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a histogram holds, in µs (one hour); larger samples count as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Significant decimal digits kept by the latency histograms.
pub const LATENCY_SIGFIG: u8 = 3;

/// A latency histogram.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
        // sigfig <= 5); the test below creates one.
        let hist = Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
            .unwrap_or_else(|e| unreachable!("bench: histogram bounds: {e}"));
        Latency { hist }
    }

    /// Records one latency in nanoseconds (rounded to the nearest µs, at least 1 µs,
    /// at most [`LATENCY_US_MAX`]).
    pub fn record_ns(&mut self, ns: u64) {
        let us = ns.saturating_add(500) / 1000;
        self.hist.saturating_record(us.clamp(1, LATENCY_US_MAX));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so this cannot fail; saturate rather than panic.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The percentiles, or `None` with no samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |quantile: f64| ms(self.hist.value_at_quantile(quantile));
        Some(LatencySummary {
            count: self.hist.len(),
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: ms(self.hist.max()),
            mean_ms: self.hist.mean() / 1000.0,
        })
    }
}

/// Percentiles of a [`Latency`], in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Failures counted by kind (e.g. `"timeout (indeterminate)"`, `"NotLeader (definite)"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ErrorCounts(BTreeMap<String, u64>);

impl ErrorCounts {
    /// Counts one failure of `kind`.
    pub fn add(&mut self, kind: impl Into<String>) {
        self.add_n(kind, 1);
    }

    /// Counts `n` failures of `kind` (nothing for 0).
    pub fn add_n(&mut self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            let slot = self.0.entry(kind.into()).or_default();
            *slot = slot.saturating_add(n);
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (kind, n) in &other.0 {
            self.add_n(kind.clone(), *n);
        }
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.0.values().fold(0, |a, b| a.saturating_add(*b))
    }

    /// `(kind, count)` in kind order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, n)| (k.as_str(), *n))
    }
}

/// `n` per second over `secs` (0 for an empty or negative interval).
pub fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// MB/s (10^6 bytes per second) of `bytes` over `secs`.
pub fn mb_per_sec(bytes: u64, secs: f64) -> f64 {
    per_sec(bytes, secs) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut l = Latency::new();
        assert!(l.summary().is_none());
        // 1..=1000 ms, one sample each.
        for ms in 1..=1000u64 {
            l.record_ns(ms * 1_000_000);
        }
        let s = l.summary().unwrap();
        assert_eq!(s.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert!(close(s.p50_ms, 500.0), "{s:?}");
        assert!(close(s.p90_ms, 900.0), "{s:?}");
        assert!(close(s.p99_ms, 990.0), "{s:?}");
        assert!(close(s.p999_ms, 999.0), "{s:?}");
        assert!(close(s.max_ms, 1000.0), "{s:?}");
        assert!(close(s.mean_ms, 500.5), "{s:?}");
    }

    #[test]
    fn microsecond_resolution_and_clamping() {
        let mut l = Latency::new();
        l.record_ns(0); // counts as 1 µs
        l.record_ns(1_499); // rounds to 1 µs
        l.record_ns(u64::MAX); // clamps to an hour
        let s = l.summary().unwrap();
        assert_eq!(s.count, 3);
        assert!((s.p50_ms - 0.001).abs() < 1e-9, "{s:?}");
        assert!(
            s.max_ms >= 3_600_000.0 && s.max_ms <= 3_600_000.0 * 1.001,
            "{s:?}"
        );
    }

    #[test]
    fn merged_histograms_hold_both_sets_of_samples() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for _ in 0..99 {
            a.record_ns(1_000_000);
        }
        b.record_ns(100_000_000);
        a.merge(&b);
        let s = a.summary().unwrap();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 1.0).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn errors_count_by_kind() {
        let mut e = ErrorCounts::default();
        e.add("timeout");
        e.add("timeout");
        e.add_n("refused", 0);
        let mut f = ErrorCounts::default();
        f.add_n("NotLeader", 3);
        e.merge(&f);
        assert_eq!(e.total(), 5);
        assert_eq!(
            e.iter().collect::<Vec<_>>(),
            [("NotLeader", 3), ("timeout", 2)]
        );
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"NotLeader":3,"timeout":2}"#
        );
    }

    #[test]
    fn throughput_is_in_decimal_megabytes() {
        assert_eq!(per_sec(500, 2.0), 250.0);
        assert_eq!(mb_per_sec(3_000_000, 1.5), 2.0);
        assert_eq!(per_sec(5, 0.0), 0.0);
    }
}
