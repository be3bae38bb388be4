//! Sluice benchmarks: the workload pieces shared by the criterion micro-benchmarks
//! (`benches/`) and the storage throughput tool (`sluice-storage-bench`), and in
//! [`load`] the pure parts of the `sluice-bench` load generator.
//!
//! # The model
//!
//! A benchmark here measures one thing and says in its name what it is. The
//! workload is synthetic and deterministic: records of a fixed payload size
//! (an 8-byte key holding the record's index, the rest a value of pseudo-random
//! bytes from a fixed seed) packed into one batch that is built once and appended
//! over and over. The log rewrites the base offset in place (outside the CRC), so
//! the same buffer stays a valid batch for every append.
//!
//! Speed is measured here and never asserted: numbers are reported, not checked.
//! What the tool checks is correctness of the data it moved (every batch read back
//! parses and passes its CRC, and the offsets line up), so a fast wrong run cannot
//! pass for a fast run. See `README.md` beside this crate for how to run and read
//! the benchmarks.

use std::time::Duration;

pub mod load;

use sluice_proto::{BatchBuilder, BatchError, Limits};
use sluice_storage::LogConfig;

/// Bytes of each record's payload taken by the key (the record index, big-endian).
pub const KEY_BYTES: usize = 8;

/// Smallest record payload the workload builds: the key and one value byte.
pub const RECORD_BYTES_MIN: usize = KEY_BYTES + 1;

/// First record timestamp of every generated batch (2024-01-01T00:00:00Z), so runs
/// are reproducible; the log's time-based decisions use the `now_ms` passed to it.
pub const BASE_TIMESTAMP_MS: i64 = 1_704_067_200_000;

/// Segment size of the benchmark logs: the default (1 GiB) so a run of the tool's
/// default size stays in one segment and measures appends, not rolls.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

/// The payloads of `count` records of `record_bytes` each (key + value), from a
/// fixed seed. Panics if `record_bytes < RECORD_BYTES_MIN`.
pub fn payloads(count: usize, record_bytes: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    assert!(
        record_bytes >= RECORD_BYTES_MIN,
        "bench: record_bytes {record_bytes} < {RECORD_BYTES_MIN}"
    );
    let mut rng = XorShift64(0x5eed_1ce0_0000_0001);
    (0..count)
        .map(|i| {
            let key = (i as u64).to_be_bytes().to_vec();
            let mut value = vec![0u8; record_bytes - KEY_BYTES];
            rng.fill(&mut value);
            (key, value)
        })
        .collect()
}

/// Encodes `payloads` into one batch, timestamps one millisecond apart.
pub fn encode(payloads: &[(Vec<u8>, Vec<u8>)], limits: Limits) -> Result<Vec<u8>, BatchError> {
    let mut builder = BatchBuilder::new(limits);
    for (i, (key, value)) in payloads.iter().enumerate() {
        builder.push(BASE_TIMESTAMP_MS + i as i64, Some(key), Some(value), &[])?;
    }
    builder.finish()
}

/// One batch of `batch_bytes / record_bytes` records of `record_bytes` payload each
/// (at least one record). The encoded batch is a little larger than
/// `batch_bytes`: each record carries a few bytes of framing and the batch a
/// 64-byte header. Throughput figures count the encoded bytes.
pub fn build_batch(batch_bytes: usize, record_bytes: usize) -> Result<Vec<u8>, BatchError> {
    let count = (batch_bytes / record_bytes.max(1)).max(1);
    encode(&payloads(count, record_bytes), Limits::default())
}

/// The log configuration of every benchmark: one large segment, no retention (so
/// nothing is deleted while it is measured), everything else the default.
pub fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: SEGMENT_BYTES_MAX,
        retention_bytes_max: None,
        retention_age_ms_max: None,
        ..LogConfig::default()
    }
}

/// Latency percentiles of a set of samples, by the nearest-rank method.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Percentiles {
    /// Summarises `samples` (sorted in place). All zero when there are none.
    pub fn of(samples: &mut [Duration]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            // Nearest rank: the smallest sample with at least p of them at or below it.
            let r = (p * samples.len() as f64).ceil() as usize;
            samples[r.clamp(1, samples.len()) - 1]
        };
        let total: Duration = samples.iter().sum();
        Percentiles {
            count: samples.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
            mean: total / samples.len() as u32,
        }
    }
}

/// Bytes per second as MB/s (10^6 bytes).
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    per_s(bytes as f64, elapsed) / 1e6
}

/// Bytes per second as MiB/s (2^20 bytes).
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    per_s(bytes as f64, elapsed) / f64::from(1u32 << 20)
}

/// `n` per second over `elapsed` (0 for an empty interval).
pub fn per_s(n: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n / secs
    } else {
        0.0
    }
}

/// Duration in milliseconds, fractional.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// xorshift64: fast, deterministic filler for record values (not for anything
/// that needs real randomness).
#[derive(Debug)]
struct XorShift64(u64);

impl XorShift64 {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{verify_crc, BatchView};

    #[test]
    fn built_batch_parses_with_the_requested_records() {
        let batch = build_batch(16 << 10, 1024).unwrap();
        verify_crc(&batch).unwrap();
        let view = BatchView::parse(&batch, &Limits::default()).unwrap();
        assert_eq!(view.header().record_count, 16);
        for (i, r) in view.records().enumerate() {
            assert_eq!(r.key, Some(&(i as u64).to_be_bytes()[..]));
            assert_eq!(r.value.map(<[u8]>::len), Some(1024 - KEY_BYTES));
        }
        // Framing overhead is small: header plus a few bytes per record.
        assert!(batch.len() > 16 << 10 && batch.len() < (16 << 10) + 64 + 16 * 16);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut s);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.max, Duration::from_millis(100));
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    #[test]
    fn units() {
        let s = Duration::from_secs(2);
        assert_eq!(mb_per_s(4_000_000, s), 2.0);
        assert_eq!(mib_per_s(4 << 20, s), 2.0);
        assert_eq!(per_s(1.0, Duration::ZERO), 0.0);
    }
}
