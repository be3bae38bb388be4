//! Plain counters of the engine for the metrics edge (STYLE §8): the metrics crate
//! maps them onto prometheus-client families; nothing here names prometheus.

use sluice_engine::{ShardStats, TopicPartition};

/// Upper bounds (inclusive, microseconds) of the [`LatencyHistogram`] buckets; a
/// last, unbounded bucket follows. Spaced for fdatasync on SSDs through slow
/// virtual disks.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// A fixed-bucket latency histogram, cumulative since the shard started. The
/// buckets map directly onto a Prometheus histogram (`le` = [`LATENCY_BOUNDS_US`],
/// then `+Inf`; prometheus-client's `encode_histogram` takes them as they are after a
/// running sum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative): `buckets[i]` counts values at or
    /// below `LATENCY_BOUNDS_US[i]` and above the previous bound; the last counts
    /// the rest. Always `LATENCY_BOUNDS_US.len() + 1` long.
    pub buckets: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Sum of the observations, microseconds.
    pub sum_us: u64,
    /// Largest observation, microseconds.
    pub max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; LATENCY_BOUNDS_US.len() + 1],
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
}

impl LatencyHistogram {
    /// Adds one observation.
    pub fn record(&mut self, us: u64) {
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// The bucket bound at or below which a fraction `q` (0..=1) of the
    /// observations lie (`max_us` for the unbounded bucket); 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let want = ((self.count as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return LATENCY_BOUNDS_US
                    .get(i)
                    .map_or(self.max_us, |&b| b.min(self.max_us));
            }
        }
        self.max_us
    }
}

/// One partition, as its shard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    pub tp: TopicPartition,
    /// Offsets below this are committed (durable) and served to consumers.
    pub high_watermark: u64,
    /// First offset still stored.
    pub log_start: u64,
    /// Bytes of the partition's log segments (the data, not the preallocated
    /// indexes), as the shard's log knows them.
    pub log_bytes: u64,
    /// Segments (`.log` files).
    pub segments: u64,
    /// Produce requests that reached this partition, and the bytes of the batches
    /// it stored (refused batches count as requests, not bytes).
    pub produce_requests: u64,
    pub produce_bytes: u64,
    /// Fetch requests that reached this partition, and the batch bytes answered.
    pub fetch_requests: u64,
    pub fetch_bytes: u64,
    /// Requests on this partition answered with an error.
    pub errors: u64,
    /// The partition's Raft term on this node.
    pub raft_term: u64,
    /// Whether this node leads the partition's Raft group.
    pub is_leader: bool,
    /// The end of the local log (appended, maybe not yet committed).
    pub log_end: u64,
    /// For a replica that started without state: the end offset of its log when it
    /// caught up (`sluice_replica::Replica::caught_up_at`).
    pub caught_up_at: Option<u64>,
    /// Its vote guard is on (`sluice_replica::Replica::is_catching_up`).
    pub catching_up: bool,
    /// The end of the local log when this run opened it: what was on disk before.
    pub log_end_at_open: u64,
}

/// One shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSnapshot {
    pub shard: usize,
    /// The CPU the shard thread is pinned to, if it is.
    pub cpu: Option<usize>,
    /// The pure core's counters (requests, bytes, flushes, partitions synced,
    /// errors).
    pub core: ShardStats,
    /// Requests waiting in the shard's queue when the stats were taken, and its
    /// capacity.
    pub queue_len: usize,
    pub queue_depth: usize,
    /// Flush cycles run, requests taken from the queue, and the most taken in one
    /// cycle.
    pub cycles: u64,
    pub requests: u64,
    pub cycle_requests_seen_max: u64,
    /// Duration of each group commit (`Shard::flush`: the parallel fdatasyncs of
    /// every dirty partition, then the answers).
    pub flush_latency: LatencyHistogram,
    /// The partitions the shard owns, by topic and partition.
    pub partitions: Vec<PartitionStats>,
}

/// The whole engine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineStats {
    pub shards: Vec<ShardSnapshot>,
    /// Requests that found their shard's queue full and waited (backpressure).
    pub queue_full_waits: u64,
}

impl EngineStats {
    /// Every partition of every shard.
    pub fn partitions(&self) -> impl Iterator<Item = &PartitionStats> {
        self.shards.iter().flat_map(|s| s.partitions.iter())
    }

    /// The pure core's counters summed over the shards.
    pub fn core_total(&self) -> ShardStats {
        let mut t = ShardStats::default();
        for s in &self.shards {
            let c = s.core;
            t.produce_requests += c.produce_requests;
            t.produce_bytes += c.produce_bytes;
            t.fetch_requests += c.fetch_requests;
            t.fetch_bytes += c.fetch_bytes;
            t.flushes += c.flushes;
            t.partitions_synced += c.partitions_synced;
            t.errors += c.errors;
            t.segments_deleted += c.segments_deleted;
            t.retention_errors += c.retention_errors;
            t.leader_transfers += c.leader_transfers;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile_us(0.99), 0);
        for us in [10, 50, 51, 900, 1_000, 7_000_000] {
            h.record(us);
        }
        assert_eq!(h.buckets.len(), LATENCY_BOUNDS_US.len() + 1);
        assert_eq!(h.buckets[0], 2, "10 and 50 are <= 50");
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[4], 2, "900 and 1000 are in (500, 1000]");
        assert_eq!(h.buckets[16], 1);
        assert_eq!(h.count, 6);
        assert_eq!(h.sum_us, 7_002_011);
        assert_eq!(h.quantile_us(0.5), 100);
        assert_eq!(h.quantile_us(0.8), 1_000);
        assert_eq!(h.quantile_us(1.0), 7_000_000);
    }
}
