//! The Sluice engine core: what one shard does with the partitions it owns.
//!
//! Pure in the DESIGN §2.1 sense: no runtime, socket, clock or real file. A
//! [`Shard`] holds one [`ReplicatedPartition`] per partition (a Raft replica over its
//! log, over any [`sluice_storage::Storage`]), the per-partition [`waiters::Waiters`]
//! (high watermark, long-polling fetches), the deadlines of produces awaiting their
//! replica's answer, and a queue of replies keyed by the driver's tokens. The glommio
//! driver (one pinned executor per core) feeds it requests from bounded channels,
//! calls `flush` once per cycle (group commit) and `tick` for deadlines, and sends the
//! replies back; tests drive it with `pollster` over `MemFs`. [`shard_for`] is the
//! stable placement of partitions on shards.
//!
//! The high watermark is the replica's commit: on a single node (one voter) the local
//! fsync commits; with peers, a quorum's.
//!
//! Each partition keeps an idempotent-producer table ([`producers`]) derived from its
//! log's batch headers; `Shard::produce` checks a batch's producer id, epoch and
//! sequence against it before proposing (duplicates and gaps are refused, definite).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod producers;
pub mod raft_frame;
pub mod replicated;
pub mod shard;
pub mod waiters;

pub use replicated::{PendingSync, ProduceReply, ReplicatedPartition, StepError, RAFT_STATE_FILE};
pub use shard::{
    AckPolicy, EngineError, FlushInFlight, OffsetQuery, PartitionStats, Reply, Shard, ShardConfig,
    ShardStats, StorageProvider, TopicPartition,
};
pub use waiters::{Token, WaitLimits};

/// The shard that owns `topic`/`partition` among `shards`: FNV-1a over the topic
/// name, then the partition, so a topic's partitions spread over the shards and the
/// answer never changes for the same inputs (it decides which directory a
/// partition's shard opens, so it is part of the on-disk contract: do not change it).
pub fn shard_for(topic: &str, partition: u32, shards: usize) -> usize {
    assert!(shards > 0, "engine: no shards");
    let spread = fnv1a(topic.as_bytes()).wrapping_add(u64::from(partition));
    (spread % shards as u64) as usize
}

/// FNV-1a, 64 bit: the placement hash (part of the on-disk contract through
/// [`shard_for`]) and the seed of each replica's election RNG.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_spreads_a_topic() {
        let spread: std::collections::BTreeSet<usize> =
            (0..8).map(|p| shard_for("orders", p, 4)).collect();
        assert_eq!(
            spread.len(),
            4,
            "consecutive partitions land on every shard"
        );
        assert!((0..100).all(|p| shard_for("t", p, 3) < 3));
        assert_eq!(shard_for("orders", 0, 1), 0);
        // Computed independently (FNV-1a 64 of the name, plus the partition).
        assert_eq!(
            [
                shard_for("a", 0, 7),
                shard_for("orders", 5, 7),
                shard_for("x", 1, 2),
                shard_for("orders", 0, 4)
            ],
            [5, 2, 0, 0]
        );
    }
}
