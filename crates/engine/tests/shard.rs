//! The shard core over the in-memory file system: acknowledgement policies, the
//! group-commit flush, long-poll fetches, deadlines, errors, restart.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use pollster::block_on;
use sluice_engine::{
    AckPolicy, EngineError, OffsetQuery, Reply, Shard, ShardConfig, StorageProvider, TopicPartition,
};
use sluice_proto::{batches, BatchBuilder, Limits};
use sluice_storage::{LogConfig, MemFs};

/// One `MemFs` per partition, kept across shard restarts.
#[derive(Clone, Default)]
struct Mem(Rc<RefCell<BTreeMap<TopicPartition, MemFs>>>);

impl StorageProvider for Mem {
    type S = MemFs;
    fn open(&self, tp: &TopicPartition) -> io::Result<MemFs> {
        Ok(self.0.borrow_mut().entry(tp.clone()).or_default().clone())
    }
    fn remove(&self, tp: &TopicPartition) -> io::Result<()> {
        self.0.borrow_mut().remove(tp);
        Ok(())
    }
}

fn batch(values: &[&str], ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Limits::default());
    for (i, v) in values.iter().enumerate() {
        b.push(ts + i as i64, None, Some(v.as_bytes()), &[])
            .unwrap();
    }
    b.finish().unwrap()
}

fn tp(p: u32) -> TopicPartition {
    TopicPartition::new("t", p)
}

fn shard_with(mem: &Mem, partitions: u32) -> Shard<Mem> {
    let mut shard = Shard::new(mem.clone(), ShardConfig::default());
    for p in 0..partitions {
        block_on(shard.open_partition(tp(p), LogConfig::default(), 0)).unwrap();
    }
    shard
}

fn replies(shard: &mut Shard<Mem>) -> Vec<(u64, Reply)> {
    std::iter::from_fn(|| shard.poll_reply()).collect()
}

fn values(reply: &Reply) -> Vec<String> {
    let Reply::Fetched { batches: b, .. } = reply else {
        panic!("not a fetch reply: {reply:?}")
    };
    let limits = Limits::default();
    batches(&b.bytes, &limits)
        .flat_map(|v| {
            v.unwrap()
                .records()
                .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn acks_all_answers_after_the_flush_and_consumers_never_see_undurable_data() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 1);
    block_on(shard.produce(0, 1, &tp(0), batch(&["a", "b"], 10), AckPolicy::All, 1000));
    assert!(replies(&mut shard).is_empty(), "no ack before the fsync");
    block_on(shard.fetch(0, 2, &tp(0), 0, 1 << 20, 0));
    let r = replies(&mut shard);
    assert_eq!(
        values(&r[0].1),
        Vec::<String>::new(),
        "not durable, not visible"
    );
    block_on(shard.flush(1));
    assert_eq!(
        replies(&mut shard),
        vec![(
            1,
            Reply::Produced {
                base_offset: 0,
                last_offset: 1,
                log_start: 0
            }
        )]
    );
    block_on(shard.fetch(2, 3, &tp(0), 0, 1 << 20, 0));
    let r = replies(&mut shard);
    assert_eq!(values(&r[0].1), vec!["a", "b"]);
    let Reply::Fetched { high_watermark, .. } = r[0].1 else {
        unreachable!()
    };
    assert_eq!(high_watermark, 2);
}

#[test]
fn acks_none_answers_at_once() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 1);
    block_on(shard.produce(0, 7, &tp(0), batch(&["x"], 0), AckPolicy::None, 1000));
    assert_eq!(
        replies(&mut shard),
        vec![(
            7,
            Reply::Produced {
                base_offset: 0,
                last_offset: 0,
                log_start: 0
            }
        )]
    );
    assert!(shard.has_dirty());
    block_on(shard.flush(1));
    assert!(!shard.has_dirty());
}

#[test]
fn one_flush_commits_every_partition() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 8);
    for p in 0..8u32 {
        for i in 0..5u64 {
            let token = u64::from(p) * 100 + i;
            block_on(shard.produce(0, token, &tp(p), batch(&["v"], 0), AckPolicy::All, 1000));
        }
    }
    assert!(replies(&mut shard).is_empty());
    block_on(shard.flush(1));
    let acked = replies(&mut shard);
    assert_eq!(acked.len(), 40);
    assert!(acked
        .iter()
        .all(|(_, r)| matches!(r, Reply::Produced { .. })));
    assert_eq!(
        shard.stats().partitions_synced,
        8,
        "one sync per partition per flush"
    );
    // Per partition, offsets follow produce order.
    for p in 0..8u64 {
        let offsets: Vec<u64> = acked
            .iter()
            .filter(|(t, _)| t / 100 == p)
            .map(|(_, r)| match r {
                Reply::Produced { base_offset, .. } => *base_offset,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    }
}

#[test]
fn long_poll_wakes_when_data_becomes_durable() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 1);
    block_on(shard.fetch(0, 1, &tp(0), 0, 1 << 20, 5_000));
    assert!(replies(&mut shard).is_empty(), "caught up: the fetch waits");
    block_on(shard.produce(10, 2, &tp(0), batch(&["late"], 0), AckPolicy::All, 1000));
    block_on(shard.flush(11));
    let r = replies(&mut shard);
    assert_eq!(r.len(), 2);
    let fetched = r.iter().find(|(t, _)| *t == 1).unwrap();
    assert_eq!(values(&fetched.1), vec!["late"]);
}

#[test]
fn long_poll_expires_empty_and_late_acks_time_out() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 1);
    block_on(shard.fetch(0, 1, &tp(0), 0, 1 << 20, 100));
    block_on(shard.produce(0, 2, &tp(0), batch(&["slow"], 0), AckPolicy::All, 50));
    block_on(shard.tick(49));
    assert!(replies(&mut shard).is_empty());
    block_on(shard.tick(100));
    let mut r = replies(&mut shard);
    r.sort_by_key(|(t, _)| *t);
    assert_eq!(values(&r[0].1), Vec::<String>::new());
    assert_eq!(r[1], (2, Reply::Failed(EngineError::TimedOut)));
}

#[test]
fn out_of_range_and_unknown_partition_are_typed() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 1);
    block_on(shard.produce(0, 1, &tp(0), batch(&["a"], 0), AckPolicy::All, 1000));
    block_on(shard.flush(0));
    block_on(shard.fetch(0, 2, &tp(0), 5, 100, 0));
    block_on(shard.fetch(0, 3, &tp(9), 0, 100, 0));
    block_on(shard.produce(0, 4, &tp(0), vec![1, 2, 3], AckPolicy::All, 1000));
    let r = replies(&mut shard);
    assert_eq!(
        r[1..3],
        [
            (
                2,
                Reply::Failed(EngineError::OffsetOutOfRange {
                    offset: 5,
                    log_start: 0,
                    high_watermark: 1
                })
            ),
            (3, Reply::Failed(EngineError::UnknownPartition(tp(9)))),
        ]
    );
    assert!(matches!(
        r[3],
        (4, Reply::Failed(EngineError::InvalidBatch(_)))
    ));
}

#[test]
fn a_failed_fsync_fails_the_waiting_producers_and_poisons_the_partition() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 1);
    block_on(shard.produce(0, 1, &tp(0), batch(&["a"], 0), AckPolicy::All, 1000));
    mem.0.borrow()[&tp(0)].fail_syncs(1);
    block_on(shard.flush(1));
    let r = replies(&mut shard);
    assert!(
        matches!(r[..], [(1, Reply::Failed(EngineError::StorageFailed(_)))]),
        "{r:?}"
    );
    block_on(shard.produce(2, 2, &tp(0), batch(&["b"], 0), AckPolicy::All, 1000));
    let r = replies(&mut shard);
    assert!(
        matches!(r[..], [(2, Reply::Failed(EngineError::StorageFailed(_)))]),
        "{r:?}"
    );
}

#[test]
fn offsets_survive_a_restart_and_list_offsets_answers() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 1);
    for i in 0..10i64 {
        block_on(shard.produce(
            0,
            i as u64,
            &tp(0),
            batch(&["r"], 1_000 * i),
            AckPolicy::All,
            1000,
        ));
    }
    block_on(shard.flush(1));
    block_on(shard.close(2)).unwrap();
    let mut shard = shard_with(&mem, 1);
    let q = |shard: &Shard<Mem>, q| block_on(shard.list_offsets(&tp(0), q)).unwrap();
    assert_eq!(q(&shard, OffsetQuery::Earliest), Some(0));
    assert_eq!(q(&shard, OffsetQuery::Latest), Some(10));
    assert_eq!(q(&shard, OffsetQuery::Timestamp(4_500)), Some(5));
    assert_eq!(q(&shard, OffsetQuery::Timestamp(99_000)), None);
    block_on(shard.produce(3, 99, &tp(0), batch(&["next"], 0), AckPolicy::All, 1000));
    block_on(shard.flush(4));
    assert_eq!(
        replies(&mut shard),
        vec![(
            99,
            Reply::Produced {
                base_offset: 10,
                last_offset: 10,
                log_start: 0
            }
        )]
    );
}

#[test]
fn delete_partition_fails_its_waiters_and_removes_its_files() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 2);
    block_on(shard.fetch(0, 1, &tp(1), 0, 100, 10_000));
    block_on(shard.delete_partition(&tp(1))).unwrap();
    assert_eq!(
        replies(&mut shard),
        vec![(1, Reply::Failed(EngineError::UnknownPartition(tp(1))))]
    );
    assert!(!mem.0.borrow().contains_key(&tp(1)));
    assert_eq!(shard.partitions().count(), 1);
}

#[test]
fn tick_applies_retention_on_its_interval() {
    let mem = Mem::default();
    let mut shard = Shard::new(
        mem.clone(),
        ShardConfig {
            retention_interval_ms: 1_000,
            ..ShardConfig::default()
        },
    );
    let config = LogConfig {
        segment_bytes_max: 4 * 1024,
        retention_bytes_max: Some(8 * 1024),
        ..LogConfig::default()
    };
    block_on(shard.open_partition(tp(0), config, 0)).unwrap();
    block_on(shard.tick(0));
    let value = "v".repeat(500);
    for i in 0..100u64 {
        block_on(shard.produce(0, i, &tp(0), batch(&[&value], 0), AckPolicy::All, 1000));
    }
    block_on(shard.flush(1));
    replies(&mut shard);
    block_on(shard.tick(500));
    assert_eq!(shard.stats().segments_deleted, 0, "not due yet");
    block_on(shard.tick(1_000));
    assert!(shard.stats().segments_deleted > 0);
    let start = block_on(shard.list_offsets(&tp(0), OffsetQuery::Earliest))
        .unwrap()
        .unwrap();
    assert!(start > 0, "the log start moved past deleted segments");
    block_on(shard.fetch(1_000, 999, &tp(0), 0, 100, 0));
    assert!(matches!(
        replies(&mut shard)[..],
        [(999, Reply::Failed(EngineError::OffsetOutOfRange { .. }))]
    ));
}

/// Three shards, one per node, each holding a replica of the same partitions: the
/// messages each shard wants sent are batched per destination and delivered.
struct Nodes {
    shards: BTreeMap<u64, Shard<Mem>>,
    now: i64,
}

impl Nodes {
    fn new(partitions: u32) -> Nodes {
        let mut shards = BTreeMap::new();
        for node in 1..=3u64 {
            let config = ShardConfig {
                node_id: node,
                ..ShardConfig::default()
            };
            let mut shard = Shard::new(Mem::default(), config);
            for p in 0..partitions {
                block_on(shard.open_replicated(
                    tp(p),
                    LogConfig::default(),
                    vec![1, 2, 3],
                    false,
                    0,
                ))
                .unwrap();
            }
            shards.insert(node, shard);
        }
        Nodes { shards, now: 0 }
    }

    /// One cycle on every node: tick, group commit, then deliver what each sent.
    fn cycle(&mut self) -> usize {
        self.now += 100;
        let mut sends = 0;
        for shard in self.shards.values_mut() {
            block_on(shard.raft_tick(self.now));
            block_on(shard.tick(self.now));
            block_on(shard.flush(self.now));
        }
        let outboxes: Vec<_> = self
            .shards
            .values_mut()
            .map(|s| s.take_messages())
            .collect();
        for outbox in outboxes {
            for (to, msgs) in outbox {
                sends += 1;
                let target = self.shards.get_mut(&to).unwrap();
                for (tp, m) in msgs {
                    block_on(target.step(&tp, m, self.now)).unwrap();
                }
            }
        }
        sends
    }

    fn leader_of(&self, p: u32) -> Option<u64> {
        self.shards
            .iter()
            .find(|(_, s)| s.partition_stats(&tp(p)).is_some_and(|st| st.is_leader))
            .map(|(n, _)| *n)
    }
}

#[test]
fn shards_on_three_nodes_replicate_with_messages_batched_per_peer() {
    let mut nodes = Nodes::new(4);
    for _ in 0..100 {
        nodes.cycle();
        if (0..4).all(|p| nodes.leader_of(p).is_some()) {
            break;
        }
    }
    for p in 0..4 {
        let leader = nodes.leader_of(p).expect("every partition elects a leader");
        let follower = (1..=3).find(|n| *n != leader).unwrap();
        // Leaders take writes; a follower refuses them, definitely.
        let s = nodes.shards.get_mut(&follower).unwrap();
        block_on(s.produce(0, 900, &tp(p), batch(&["x"], 1), AckPolicy::All, 10_000));
        assert!(matches!(
            replies(s).as_slice(),
            [(900, Reply::Failed(EngineError::NotLeader(_)))]
        ));
        let s = nodes.shards.get_mut(&leader).unwrap();
        for i in 0..5u64 {
            let v = format!("p{p}-{i}");
            let token = u64::from(p) * 100 + i;
            block_on(s.produce(
                0,
                token,
                &tp(p),
                batch(&[&v, &v], 1),
                AckPolicy::All,
                10_000,
            ));
        }
    }
    // acks=all waits for a quorum: nothing is acknowledged before the followers answer.
    for n in 1..=3 {
        assert!(replies(nodes.shards.get_mut(&n).unwrap()).is_empty());
    }
    let mut acked = BTreeMap::new();
    for _ in 0..10 {
        let sends = nodes.cycle();
        // At most one send per (source, destination) pair per cycle, however many
        // partitions had something to say.
        assert!(sends <= 6, "{sends} sends in one cycle");
        for (n, s) in nodes.shards.iter_mut() {
            for (t, r) in replies(s) {
                acked.insert((*n, t), r);
            }
        }
    }
    assert_eq!(acked.len(), 20, "every produce answered once: {acked:?}");
    for p in 0..4u32 {
        let hws: Vec<u64> = nodes
            .shards
            .values()
            .map(|s| s.partition_stats(&tp(p)).unwrap().high_watermark)
            .collect();
        assert_eq!(
            hws,
            vec![10, 10, 10],
            "partition {p}: every replica commits 10 records"
        );
    }
    for ((_, t), r) in &acked {
        let Reply::Produced { base_offset, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!(*base_offset, (t % 100) * 2);
    }
}

#[test]
fn producers_past_the_acks_limit_are_refused_before_anything_is_appended() {
    let mem = Mem::default();
    let config = ShardConfig {
        wait_limits: sluice_engine::WaitLimits {
            acks_max: 2,
            fetches_max: 16,
        },
        ..ShardConfig::default()
    };
    let mut shard = Shard::new(mem, config);
    block_on(shard.open_partition(tp(0), LogConfig::default(), 0)).unwrap();
    for t in 1..=3u64 {
        block_on(shard.produce(0, t, &tp(0), batch(&["v"], 1), AckPolicy::All, 10_000));
    }
    assert!(matches!(
        replies(&mut shard).as_slice(),
        [(3, Reply::Failed(EngineError::TooManyWaiting(_)))]
    ));
    block_on(shard.flush(0));
    let mut acked: Vec<(u64, u64)> = replies(&mut shard)
        .into_iter()
        .map(|(t, r)| match r {
            Reply::Produced { base_offset, .. } => (t, base_offset),
            other => panic!("{other:?}"),
        })
        .collect();
    acked.sort();
    assert_eq!(
        acked,
        vec![(1, 0), (2, 1)],
        "the refused batch took no offset"
    );
}

/// Runs a pipelined flush's fdatasyncs (they borrow nothing of the shard).
fn run_syncs(flush: &mut sluice_engine::FlushInFlight) -> Vec<io::Result<()>> {
    block_on(futures_util::future::join_all(std::mem::take(
        &mut flush.syncs,
    )))
}

fn produced(base_offset: u64, last_offset: u64) -> Reply {
    Reply::Produced {
        base_offset,
        last_offset,
        log_start: 0,
    }
}

#[test]
fn a_pipelined_flush_acknowledges_only_what_was_appended_before_it_began() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 2);
    block_on(shard.produce(0, 1, &tp(0), batch(&["a"], 0), AckPolicy::All, 1000));
    block_on(shard.produce(0, 2, &tp(1), batch(&["b"], 0), AckPolicy::All, 1000));
    let mut flush = block_on(shard.begin_flush(1)).expect("two dirty partitions");
    assert_eq!(flush.syncs.len(), 2);
    assert!(
        block_on(shard.begin_flush(1)).is_none(),
        "nothing new is dirty"
    );
    // While the group syncs, the next one is appended.
    block_on(shard.produce(1, 3, &tp(0), batch(&["c"], 0), AckPolicy::All, 1000));
    assert!(replies(&mut shard).is_empty());
    let results = run_syncs(&mut flush);
    block_on(shard.finish_flush(flush, results, 2));
    let mut r = replies(&mut shard);
    r.sort_by_key(|(t, _)| *t);
    assert_eq!(r, vec![(1, produced(0, 0)), (2, produced(0, 0))]);
    block_on(shard.fetch(2, 4, &tp(0), 0, 1 << 20, 0));
    assert_eq!(
        values(&replies(&mut shard)[0].1),
        vec!["a"],
        "c is not durable"
    );
    // The next group.
    let mut flush = block_on(shard.begin_flush(3)).expect("c is dirty");
    assert_eq!(flush.syncs.len(), 1);
    let results = run_syncs(&mut flush);
    block_on(shard.finish_flush(flush, results, 4));
    assert_eq!(replies(&mut shard), vec![(3, produced(1, 1))]);
}

/// Partition 0 of a one-partition shard: `a` appended (token 1) and its flush begun,
/// then the partition deleted and created again and `x` appended to the new one
/// (token 2). Returns the old partition's flush, still to run.
fn flush_then_recreate(shard: &mut Shard<Mem>) -> sluice_engine::FlushInFlight {
    block_on(shard.produce(0, 1, &tp(0), batch(&["a"], 0), AckPolicy::All, 1000));
    let flush = block_on(shard.begin_flush(1)).unwrap();
    block_on(shard.delete_partition(&tp(0))).unwrap();
    replies(shard);
    block_on(shard.open_partition(tp(0), LogConfig::default(), 1)).unwrap();
    block_on(shard.produce(1, 2, &tp(0), batch(&["x"], 0), AckPolicy::All, 1000));
    flush
}

#[test]
fn a_flush_begun_on_a_partition_deleted_and_recreated_vouches_for_nothing_new() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 1);
    let mut flush = flush_then_recreate(&mut shard);
    let results = run_syncs(&mut flush);
    block_on(shard.finish_flush(flush, results, 2));
    assert!(
        replies(&mut shard).is_empty(),
        "the old partition's sync acknowledged the new one's append"
    );
    block_on(shard.fetch(2, 3, &tp(0), 0, 1 << 20, 0));
    assert!(values(&replies(&mut shard)[0].1).is_empty());
    block_on(shard.flush(3));
    assert_eq!(replies(&mut shard), vec![(2, produced(0, 0))]);
}

#[test]
fn a_failed_pipelined_sync_fails_every_waiting_producer_of_its_partition() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 1);
    block_on(shard.produce(0, 1, &tp(0), batch(&["a"], 0), AckPolicy::All, 1000));
    mem.0.borrow()[&tp(0)].fail_syncs(1);
    let mut flush = block_on(shard.begin_flush(1)).unwrap();
    block_on(shard.produce(1, 2, &tp(0), batch(&["b"], 0), AckPolicy::All, 1000));
    let results = run_syncs(&mut flush);
    block_on(shard.finish_flush(flush, results, 2));
    let mut r = replies(&mut shard);
    r.sort_by_key(|(t, _)| *t);
    assert!(
        matches!(
            r[..],
            [
                (1, Reply::Failed(EngineError::StorageFailed(_))),
                (2, Reply::Failed(EngineError::StorageFailed(_)))
            ]
        ),
        "{r:?}"
    );
    block_on(shard.produce(3, 3, &tp(0), batch(&["c"], 0), AckPolicy::All, 1000));
    assert!(
        matches!(
            replies(&mut shard)[..],
            [(3, Reply::Failed(EngineError::StorageFailed(_)))]
        ),
        "a poisoned partition refuses later writes"
    );
}

#[test]
fn group_commits_overlap_on_different_partitions_but_never_on_one() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 2);
    block_on(shard.produce(0, 1, &tp(0), batch(&["a"], 0), AckPolicy::All, 1000));
    let mut first = block_on(shard.begin_flush(1)).expect("p0 is dirty");
    assert_eq!(first.syncs.len(), 1);
    // While p0 syncs: p1 gets its first append, p0 its second.
    block_on(shard.produce(1, 2, &tp(1), batch(&["b"], 0), AckPolicy::All, 1000));
    block_on(shard.produce(1, 3, &tp(0), batch(&["c"], 0), AckPolicy::All, 1000));
    assert!(shard.can_flush(), "p1 is dirty and not syncing");
    let mut second = block_on(shard.begin_flush(2)).expect("p1 may sync now");
    assert_eq!(second.syncs.len(), 1, "p0 waits for its own sync in flight");
    assert!(!shard.can_flush(), "p0 is dirty but syncing, p1 syncing");
    assert!(block_on(shard.begin_flush(2)).is_none());
    // The later group completes first: it answers only its own partition.
    let results = run_syncs(&mut second);
    block_on(shard.finish_flush(second, results, 3));
    assert_eq!(replies(&mut shard), vec![(2, produced(0, 0))]);
    assert!(!shard.can_flush(), "p0's sync is still in flight");
    let results = run_syncs(&mut first);
    block_on(shard.finish_flush(first, results, 4));
    assert_eq!(
        replies(&mut shard),
        vec![(1, produced(0, 0))],
        "the first sync vouches only for a"
    );
    assert!(shard.can_flush(), "c waits for the next sync of p0");
    let mut third = block_on(shard.begin_flush(5)).unwrap();
    assert_eq!(third.syncs.len(), 1);
    let results = run_syncs(&mut third);
    block_on(shard.finish_flush(third, results, 6));
    assert_eq!(replies(&mut shard), vec![(3, produced(1, 1))]);
}

#[test]
fn a_recreated_partition_syncs_beside_the_old_ones_flush_which_leaves_it_alone() {
    let mem = Mem::default();
    let mut shard = shard_with(&mem, 1);
    let mut old = flush_then_recreate(&mut shard);
    let mut new = block_on(shard.begin_flush(2)).expect("the new partition syncs at once");
    block_on(shard.produce(2, 3, &tp(0), batch(&["y"], 0), AckPolicy::All, 1000));
    let results = run_syncs(&mut old);
    block_on(shard.finish_flush(old, results, 3));
    assert!(replies(&mut shard).is_empty());
    assert!(
        !shard.can_flush(),
        "the old partition's flush ended the new one's sync in flight"
    );
    let results = run_syncs(&mut new);
    block_on(shard.finish_flush(new, results, 4));
    assert_eq!(replies(&mut shard), vec![(2, produced(0, 0))]);
    block_on(shard.flush(5));
    assert_eq!(replies(&mut shard), vec![(3, produced(1, 1))]);
}
