//! A replicated partition over the in-memory file system: a single-voter group (what a
//! single-node broker runs) and a reopen after a crash that loses unsynced bytes.

use pollster::block_on;
use rand::SeedableRng;
use sluice_engine::ReplicatedPartition;
use sluice_proto::{BatchBuilder, Limits};
use sluice_replica::{Acks, ReplicaConfig};
use sluice_storage::{CrashModel, LogConfig, MemFs};

fn batch(n: u32) -> Vec<u8> {
    let mut b = BatchBuilder::new(Limits::DEFAULT);
    for i in 0..n {
        b.push(1_000, None, Some(format!("v{i}").as_bytes()), &[])
            .unwrap();
    }
    b.finish().unwrap()
}

fn open(fs: &MemFs) -> ReplicatedPartition<MemFs> {
    let log = LogConfig {
        segment_bytes_max: 4096,
        ..LogConfig::default()
    };
    block_on(ReplicatedPartition::open(
        fs.clone(),
        log,
        ReplicaConfig::new(1, vec![1]),
        0,
    ))
    .unwrap()
    .0
}

#[test]
fn single_voter_commits_after_its_own_sync_and_survives_a_crash() {
    let fs = MemFs::new();
    let mut p = open(&fs);
    block_on(p.campaign(0)).unwrap();
    block_on(p.sync(0)).unwrap();
    assert!(p.replica().is_ready_leader());
    for t in 0..40u64 {
        block_on(p.propose(t, batch(3), Acks::All, 0)).unwrap();
    }
    assert!(
        p.take_replies().is_empty(),
        "nothing is acked before the fsync"
    );
    assert_eq!(p.replica().high_watermark(), 0);
    block_on(p.sync(0)).unwrap();
    let replies = p.take_replies();
    assert_eq!(replies.len(), 40);
    for (t, r) in replies {
        assert_eq!(r.unwrap().base_offset, t * 3);
    }
    assert_eq!(p.replica().high_watermark(), 120);
    // Unsynced proposals are lost by a crash; acknowledged ones are not.
    for t in 40..45u64 {
        block_on(p.propose(t, batch(3), Acks::All, 0)).unwrap();
    }
    drop(p);
    let fs = fs.crash(
        CrashModel::LoseUnsynced,
        &mut rand::rngs::SmallRng::seed_from_u64(1),
    );
    let mut p = open(&fs);
    assert_eq!(p.log().next_offset(), 120);
    block_on(p.campaign(0)).unwrap();
    block_on(p.sync(0)).unwrap();
    block_on(p.propose(99, batch(1), Acks::All, 0)).unwrap();
    block_on(p.sync(0)).unwrap();
    let replies = p.take_replies();
    assert_eq!(replies.last().unwrap().1.clone().unwrap().base_offset, 120);
    let read = block_on(p.read(0, 1 << 20)).unwrap();
    assert_eq!(read.next_offset, 121);
}
