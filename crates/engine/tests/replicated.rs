//! A replicated partition over the in-memory file system: a single-voter group (what a
//! single-node broker runs) and a reopen after a crash that loses unsynced bytes.

use pollster::block_on;
use rand::SeedableRng;
use sluice_engine::{ReplicatedPartition, RAFT_STATE_FILE};
use sluice_proto::{BatchBuilder, Limits};
use sluice_replica::{Acks, ReplicaConfig};
use sluice_storage::{CrashModel, LogConfig, MemFs, Op};

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

/// Found by the simulator: `retain_from` writes the replica's new log start, then cuts
/// the log's prefix; a failure between the two (here the log-start checkpoint's write
/// fails) left a reopened partition whose log still served offsets below the replica's
/// start. Open finishes the cut.
#[test]
fn an_interrupted_retention_is_finished_at_open() {
    let fs = MemFs::new();
    let mut p = open(&fs);
    block_on(p.campaign(0)).unwrap();
    block_on(p.sync(0)).unwrap();
    for t in 0..40u64 {
        block_on(p.propose(t, batch(3), Acks::All, 0)).unwrap();
    }
    block_on(p.sync(0)).unwrap();
    assert_eq!(p.replica().high_watermark(), 120);
    // raft.state (written first) goes through; the checkpoint of the cut, the next
    // write, fails.
    let before = fs.faults_injected();
    fs.set_hook(Some(Box::new({
        let fs = fs.clone();
        move |_, op| {
            if matches!(op, Op::Rename { to, .. } if to == RAFT_STATE_FILE) {
                fs.fail_writes(1);
            }
        }
    })));
    assert!(block_on(p.retain_from(60, 0)).is_err(), "the cut fails");
    fs.set_hook(None);
    assert!(fs.faults_injected() > before);
    drop(p);
    let fs = fs.crash(
        CrashModel::LoseUnsynced,
        &mut rand::rngs::SmallRng::seed_from_u64(2),
    );
    let p = open(&fs);
    let s = p.replica().status();
    assert_eq!(s.log_start_offset, 60, "raft.state kept the new start");
    assert_eq!(
        p.log().log_start_offset(),
        60,
        "the log's prefix is cut to the replica's start"
    );
    assert!(
        block_on(p.read(0, 1 << 20)).is_err(),
        "nothing below it is served"
    );
}
