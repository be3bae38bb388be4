//! When each record is due, how work is split between producers and consumers, and
//! which partition each record goes to.
//!
//! Open loop (`--rate R` with `N` producers): the records of the whole run are numbered
//! `g = 0, 1, 2, ...` and record `g` is due `g / R` seconds after the start; producer `i`
//! sends `g = i, i + N, i + 2N, ...`, so together the producers keep the total rate and
//! their sends interleave evenly. A record's due time never depends on when earlier
//! records were sent or acknowledged: a producer that falls behind (a stall, a full
//! window) sends late records at once, and their latency is counted from the due time.
//! That is what keeps a stall from hiding itself (coordinated omission, wrk2's point).
//!
//! Closed loop (no `--rate`): no schedule; each producer sends as fast as its window
//! of records in flight (`--in-flight`) lets it, and latency runs from the `send` call.

/// Nanoseconds in a second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Highest `--rate` accepted: one record per nanosecond.
pub const RATE_PER_SEC_MAX: u64 = NANOS_PER_SEC;

/// Why a schedule cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleError {
    /// The rate is 0 or above [`RATE_PER_SEC_MAX`].
    Rate(u64),
    /// No producers, or the producer index is not below the count.
    Producer { producer: u32, producers: u32 },
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleError::Rate(r) => write!(f, "rate {r} not in 1..={RATE_PER_SEC_MAX}"),
            ScheduleError::Producer {
                producer,
                producers,
            } => write!(f, "producer {producer} of {producers}"),
        }
    }
}

impl std::error::Error for ScheduleError {}

/// One producer's open-loop schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    rate_per_sec: u64,
    producers: u32,
    producer: u32,
}

impl Schedule {
    /// The schedule of producer `producer` (0-based) of `producers`, sharing a total of
    /// `rate_per_sec` records per second.
    pub fn new(rate_per_sec: u64, producers: u32, producer: u32) -> Result<Self, ScheduleError> {
        if rate_per_sec == 0 || rate_per_sec > RATE_PER_SEC_MAX {
            return Err(ScheduleError::Rate(rate_per_sec));
        }
        if producer >= producers {
            return Err(ScheduleError::Producer {
                producer,
                producers,
            });
        }
        Ok(Schedule {
            rate_per_sec,
            producers,
            producer,
        })
    }

    /// When this producer's record `k` (0-based) is due, in nanoseconds from the start.
    /// Exact integer arithmetic: no drift however long the run (saturates at
    /// `u64::MAX`, some 584 years).
    pub fn due_ns(&self, k: u64) -> u64 {
        let g = u128::from(k) * u128::from(self.producers) + u128::from(self.producer);
        let ns = g * u128::from(NANOS_PER_SEC) / u128::from(self.rate_per_sec);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// How many of this producer's records are due at or before `elapsed_ns`.
    pub fn due_by(&self, elapsed_ns: u64) -> u64 {
        let t = u128::from(elapsed_ns);
        let rate = u128::from(self.rate_per_sec);
        let ns = u128::from(NANOS_PER_SEC);
        // floor(g * ns / rate) <= t  <=>  g * ns < (t + 1) * rate: the records due are
        // g in 0..g_end.
        let g_end = ((t + 1) * rate).div_ceil(ns);
        let (n, i) = (u128::from(self.producers), u128::from(self.producer));
        let mine = if g_end > i {
            (g_end - i).div_ceil(n)
        } else {
            0
        };
        u64::try_from(mine).unwrap_or(u64::MAX)
    }
}

/// Producer `i`'s share of `total` records split over `parts`: equal shares, the
/// remainder going one each to the first producers. `parts == 0` gets nothing.
pub fn split_count(total: u64, parts: u32, i: u32) -> u64 {
    if parts == 0 || i >= parts {
        return 0;
    }
    let parts = u64::from(parts);
    let i = u64::from(i);
    total / parts + u64::from(i < total % parts)
}

/// The partition of producer `producer`'s record `seq`: round-robin over the
/// partitions, each producer starting at its own, so every partition gets an equal
/// share and each producer keeps one batch open per partition.
pub fn partition_for(producer: u32, seq: u64, partitions: u32) -> u32 {
    assert!(partitions > 0, "bench: a topic without partitions");
    let p = (u64::from(producer) + seq) % u64::from(partitions);
    u32::try_from(p).unwrap_or(0)
}

/// The partitions consumer `i` of `consumers` reads: `p` with `p % consumers == i`.
/// Every partition goes to exactly one consumer.
pub fn partitions_of(i: u32, consumers: u32, partitions: u32) -> Vec<u32> {
    if consumers == 0 {
        return Vec::new();
    }
    (0..partitions).filter(|p| p % consumers == i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_producer_is_due_at_k_over_rate() {
        let s = Schedule::new(1000, 1, 0).unwrap();
        assert_eq!(s.due_ns(0), 0);
        assert_eq!(s.due_ns(1), 1_000_000);
        assert_eq!(s.due_ns(1000), NANOS_PER_SEC);
        // No drift after a long run: 10^9 records at 3/s is exactly 10^9/3 s.
        let s = Schedule::new(3, 1, 0).unwrap();
        assert_eq!(s.due_ns(3_000_000_000), 1_000_000_000 * NANOS_PER_SEC);
        assert_eq!(s.due_ns(1), 333_333_333);
    }

    #[test]
    fn producers_interleave_and_keep_the_total_rate() {
        // 1000/s over 4 producers: producer 1's records are global numbers 1, 5, 9, ...
        let s1 = Schedule::new(1000, 4, 1).unwrap();
        assert_eq!(s1.due_ns(0), 1_000_000);
        assert_eq!(s1.due_ns(1), 5_000_000);
        assert_eq!(s1.due_ns(2), 9_000_000);
        // Over all producers, the due times are exactly every millisecond.
        let mut all: Vec<u64> = (0..4)
            .flat_map(|i| {
                let s = Schedule::new(1000, 4, i).unwrap();
                (0..250).map(move |k| s.due_ns(k))
            })
            .collect();
        all.sort_unstable();
        let expected: Vec<u64> = (0..1000).map(|g| g * 1_000_000).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn due_by_counts_the_records_due() {
        for (rate, n) in [(1000, 4), (7, 3), (1_000_000, 1), (999_999, 5)] {
            for i in 0..n {
                let s = Schedule::new(rate, n, i).unwrap();
                for t in [0, 1, 999_999, 1_000_000, 3_141_592_653, NANOS_PER_SEC] {
                    let expected = (0..u64::MAX).take_while(|k| s.due_ns(*k) <= t).count();
                    assert_eq!(
                        s.due_by(t),
                        expected as u64,
                        "rate {rate} n {n} i {i} t {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert_eq!(Schedule::new(0, 1, 0), Err(ScheduleError::Rate(0)));
        assert!(Schedule::new(RATE_PER_SEC_MAX + 1, 1, 0).is_err());
        assert!(Schedule::new(10, 0, 0).is_err());
        assert!(Schedule::new(10, 2, 2).is_err());
    }

    #[test]
    fn counts_split_exactly() {
        let shares: Vec<u64> = (0..4).map(|i| split_count(10, 4, i)).collect();
        assert_eq!(shares, [3, 3, 2, 2]);
        assert_eq!(
            (0..7).map(|i| split_count(1_000_000, 7, i)).sum::<u64>(),
            1_000_000
        );
        assert_eq!(split_count(5, 0, 0), 0);
        assert_eq!(split_count(5, 2, 2), 0);
    }

    #[test]
    fn partitions_are_shared_evenly() {
        let mut per = [0u32; 8];
        for producer in 0..4 {
            for seq in 0..80 {
                per[partition_for(producer, seq, 8) as usize] += 1;
            }
        }
        assert_eq!(per, [40; 8]);
        assert_eq!(partition_for(3, 0, 8), 3);
        assert_eq!(partition_for(3, 5, 8), 0);
    }

    #[test]
    fn consumers_split_partitions_without_overlap() {
        let mut seen = Vec::new();
        for i in 0..3 {
            seen.extend(partitions_of(i, 3, 8));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        assert_eq!(partitions_of(0, 3, 8), [0, 3, 6]);
        assert!(partitions_of(9, 10, 8).is_empty());
    }
}
