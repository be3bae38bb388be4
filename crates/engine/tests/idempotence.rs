//! The idempotent producer in the engine: the sequence check of `Shard::produce` over
//! the producer table that every replica derives from its log (appends, reopen, suffix
//! cuts), on one node and through leader changes on three.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::rc::Rc;

use pollster::block_on;
use sluice_engine::{
    AckPolicy, EngineError, ReplicatedPartition, Reply, Shard, ShardConfig, StorageProvider,
    TopicPartition,
};
use sluice_proto::{BatchBuilder, BatchHeader, Limits};
use sluice_replica::{Acks, ReplicaConfig};
use sluice_storage::{LogConfig, MemFs};

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

/// A batch of `records` records from producer `id` (epoch 0) starting at `seq`.
fn batch(id: i64, seq: i32, records: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(Limits::default()).producer(id, 0, seq);
    for i in 0..records {
        b.push(1, None, Some(format!("{id}-{seq}-{i}").as_bytes()), &[])
            .unwrap();
    }
    b.finish().unwrap()
}

fn plain(value: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(Limits::default());
    b.push(1, None, Some(value.as_bytes()), &[]).unwrap();
    b.finish().unwrap()
}

fn tp() -> TopicPartition {
    TopicPartition::new("t", 0)
}

fn single(mem: &Mem) -> Shard<Mem> {
    let mut shard = Shard::new(mem.clone(), ShardConfig::default());
    block_on(shard.open_partition(tp(), LogConfig::default(), 0)).unwrap();
    shard
}

fn replies(shard: &mut Shard<Mem>) -> Vec<(u64, Reply)> {
    std::iter::from_fn(|| shard.poll_reply()).collect()
}

fn produce(shard: &mut Shard<Mem>, token: u64, bytes: Vec<u8>) {
    block_on(shard.produce(0, token, &tp(), bytes, AckPolicy::All, 10_000));
}

fn produced(base_offset: u64, last_offset: u64) -> Reply {
    Reply::Produced {
        base_offset,
        last_offset,
        log_start: 0,
    }
}

fn duplicate(base: u64, last: u64) -> Reply {
    Reply::Failed(EngineError::DuplicateSequence {
        base_offset: Some(base),
        last_offset: Some(last),
    })
}

fn log_end(shard: &Shard<Mem>) -> u64 {
    shard.partition_stats(&tp()).unwrap().log_end
}

#[test]
fn a_retry_of_an_acknowledged_batch_is_a_duplicate_with_the_original_offsets() {
    let mem = Mem::default();
    let mut shard = single(&mem);
    produce(&mut shard, 1, batch(7, 0, 3));
    block_on(shard.flush(1));
    assert_eq!(replies(&mut shard), vec![(1, produced(0, 2))]);
    // The acknowledgement was lost; the producer sends the same bytes again.
    produce(&mut shard, 2, batch(7, 0, 3));
    block_on(shard.flush(2));
    assert_eq!(replies(&mut shard), vec![(2, duplicate(0, 2))]);
    assert_eq!(log_end(&shard), 3, "no second copy");
    // The producer goes on with the next sequence; a plain batch is never checked.
    produce(&mut shard, 3, batch(7, 3, 1));
    produce(&mut shard, 4, plain("x"));
    produce(&mut shard, 5, plain("x"));
    block_on(shard.flush(3));
    assert_eq!(
        replies(&mut shard),
        vec![
            (3, produced(3, 3)),
            (4, produced(4, 4)),
            (5, produced(5, 5))
        ]
    );
}

#[test]
fn a_gap_is_out_of_order_and_appends_nothing() {
    let mem = Mem::default();
    let mut shard = single(&mem);
    produce(&mut shard, 1, batch(7, 0, 2));
    block_on(shard.flush(1));
    replies(&mut shard);
    produce(&mut shard, 2, batch(7, 5, 1));
    assert_eq!(
        replies(&mut shard),
        vec![(
            2,
            Reply::Failed(EngineError::OutOfOrderSequence {
                producer_id: 7,
                epoch: 0,
                expected: 2,
                got: 5
            })
        )]
    );
    assert_eq!(log_end(&shard), 2);
    assert!(!shard.has_dirty(), "nothing was appended");
    // A batch from an older epoch than the producer's is fenced.
    let mut b = BatchBuilder::new(Limits::default()).producer(8, 3, 0);
    b.push(1, None, Some(b"e3"), &[]).unwrap();
    produce(&mut shard, 3, b.finish().unwrap());
    let mut b = BatchBuilder::new(Limits::default()).producer(8, 2, 1);
    b.push(1, None, Some(b"e2"), &[]).unwrap();
    produce(&mut shard, 4, b.finish().unwrap());
    block_on(shard.flush(2));
    assert_eq!(
        replies(&mut shard),
        vec![
            (
                4,
                Reply::Failed(EngineError::ProducerFenced {
                    producer_id: 8,
                    current: 3,
                    got: 2
                })
            ),
            (3, produced(2, 2)),
        ]
    );
}

#[test]
fn produces_within_one_cycle_are_checked_against_each_other() {
    let mem = Mem::default();
    let mut shard = single(&mem);
    // No flush between them: the first is appended (inside propose), not committed.
    produce(&mut shard, 1, batch(7, 0, 2));
    produce(&mut shard, 2, batch(7, 0, 2));
    produce(&mut shard, 3, batch(7, 2, 1));
    produce(&mut shard, 4, batch(7, 4, 1));
    assert_eq!(
        replies(&mut shard),
        vec![
            // Appended but not yet committed: indeterminate, retry later.
            (2, Reply::Failed(EngineError::TimedOut)),
            (
                4,
                Reply::Failed(EngineError::OutOfOrderSequence {
                    producer_id: 7,
                    epoch: 0,
                    expected: 3,
                    got: 4
                })
            ),
        ]
    );
    block_on(shard.flush(1));
    assert_eq!(
        replies(&mut shard),
        vec![(1, produced(0, 1)), (3, produced(2, 2))]
    );
    // Committed now: the retry gets the duplicate answer.
    produce(&mut shard, 5, batch(7, 0, 2));
    assert_eq!(replies(&mut shard), vec![(5, duplicate(0, 1))]);
    // acks=none: appended is enough for a duplicate's answer.
    produce(&mut shard, 6, batch(7, 3, 1));
    block_on(shard.produce(0, 7, &tp(), batch(7, 3, 1), AckPolicy::None, 1000));
    assert_eq!(replies(&mut shard), vec![(7, duplicate(3, 3))]);
    block_on(shard.flush(2));
    assert_eq!(replies(&mut shard), vec![(6, produced(3, 3))]);
}

#[test]
fn the_table_is_rebuilt_from_the_log_on_reopen() {
    let mem = Mem::default();
    let mut shard = single(&mem);
    for seq in 0..8 {
        produce(&mut shard, seq as u64, batch(7, seq, 1));
        produce(&mut shard, 100 + seq as u64, batch(9, seq * 2, 2));
    }
    block_on(shard.flush(1));
    assert_eq!(replies(&mut shard).len(), 16);
    block_on(shard.close(2)).unwrap();
    let mut shard = single(&mem);
    produce(&mut shard, 1, batch(7, 7, 1));
    produce(&mut shard, 2, batch(9, 14, 2));
    produce(&mut shard, 3, batch(7, 2, 1));
    produce(&mut shard, 4, batch(9, 17, 1));
    produce(&mut shard, 5, batch(7, 8, 1));
    block_on(shard.flush(3));
    assert_eq!(
        replies(&mut shard),
        vec![
            (1, duplicate(21, 21)),
            (2, duplicate(22, 23)),
            // Older than the 5 batches remembered: a duplicate without offsets.
            (
                3,
                Reply::Failed(EngineError::DuplicateSequence {
                    base_offset: None,
                    last_offset: None
                })
            ),
            (
                4,
                Reply::Failed(EngineError::OutOfOrderSequence {
                    producer_id: 9,
                    epoch: 0,
                    expected: 16,
                    got: 17
                })
            ),
            (5, produced(24, 24)),
        ]
    );
}

#[test]
fn a_producer_whose_batches_retention_deleted_is_still_known_after_a_reopen() {
    let mem = Mem::default();
    let config = LogConfig {
        segment_bytes_max: 4 * 1024,
        retention_bytes_max: Some(4 * 1024),
        ..LogConfig::default()
    };
    let open = |mem: &Mem| {
        let mut shard = Shard::new(mem.clone(), ShardConfig::default());
        block_on(shard.open_partition(tp(), config.clone(), 0)).unwrap();
        shard
    };
    let mut shard = open(&mem);
    produce(&mut shard, 1, batch(7, 0, 2));
    // Another producer fills segments until retention deletes producer 7's batch.
    let value = "v".repeat(400);
    for i in 0..60u64 {
        let mut b = BatchBuilder::new(Limits::default()).producer(9, 0, i as i32);
        b.push(1, None, Some(value.as_bytes()), &[]).unwrap();
        produce(&mut shard, 100 + i, b.finish().unwrap());
    }
    block_on(shard.flush(1));
    assert_eq!(replies(&mut shard).len(), 61);
    block_on(shard.apply_retention(2));
    let start = shard.partition_stats(&tp()).unwrap().log_start;
    assert!(
        start > 2,
        "producer 7's batch is gone from the log (start {start})"
    );
    block_on(shard.close(3)).unwrap();
    assert!(mem.0.borrow()[&tp()]
        .file_names()
        .iter()
        .any(|f| f == "producers.state"));
    let mut shard = open(&mem);
    produce(&mut shard, 2, batch(7, 0, 2));
    assert_eq!(replies(&mut shard), vec![(2, duplicate(0, 1))]);
    produce(&mut shard, 3, batch(7, 2, 1));
    block_on(shard.flush(4));
    assert!(matches!(
        replies(&mut shard)[..],
        [(3, Reply::Produced { .. })]
    ));
}

// ------------------------------------------------------------------ three nodes

/// Three shards holding replicas of one partition; messages from or to a node in
/// `cut` are lost.
struct Nodes {
    shards: BTreeMap<u64, Shard<Mem>>,
    cut: BTreeSet<u64>,
    /// Messages between these (from, to) pairs are lost too.
    one_way: BTreeSet<(u64, u64)>,
    now: i64,
}

impl Nodes {
    fn new() -> Nodes {
        let mut shards = BTreeMap::new();
        for node in 1..=3u64 {
            let config = ShardConfig {
                node_id: node,
                ..ShardConfig::default()
            };
            let mut shard = Shard::new(Mem::default(), config);
            block_on(shard.open_replicated(tp(), LogConfig::default(), vec![1, 2, 3], true, 0))
                .unwrap();
            shards.insert(node, shard);
        }
        Nodes {
            shards,
            cut: BTreeSet::new(),
            one_way: BTreeSet::new(),
            now: 0,
        }
    }

    fn cycle(&mut self) {
        self.now += 100;
        for shard in self.shards.values_mut() {
            block_on(shard.raft_tick(self.now));
            block_on(shard.tick(self.now));
            block_on(shard.flush(self.now));
        }
        let outboxes: Vec<(u64, _)> = self
            .shards
            .iter_mut()
            .map(|(n, s)| (*n, s.take_messages()))
            .collect();
        for (from, outbox) in outboxes {
            for (to, msgs) in outbox {
                if self.cut.contains(&from)
                    || self.cut.contains(&to)
                    || self.one_way.contains(&(from, to))
                {
                    continue;
                }
                let target = self.shards.get_mut(&to).unwrap();
                for (tp, m) in msgs {
                    block_on(target.step(&tp, m, self.now)).unwrap();
                }
            }
        }
    }

    fn leader(&self) -> Option<u64> {
        self.shards
            .iter()
            .find(|(n, s)| {
                !self.cut.contains(n) && s.partition_stats(&tp()).is_some_and(|st| st.is_leader)
            })
            .map(|(n, _)| *n)
    }

    fn elect(&mut self) -> u64 {
        for _ in 0..200 {
            self.cycle();
            if let Some(l) = self.leader() {
                return l;
            }
        }
        panic!("no leader elected");
    }

    fn shard(&mut self, n: u64) -> &mut Shard<Mem> {
        self.shards.get_mut(&n).unwrap()
    }

    fn hw(&self, n: u64) -> u64 {
        self.shards[&n]
            .partition_stats(&tp())
            .unwrap()
            .high_watermark
    }
}

#[test]
fn a_new_leader_answers_a_retry_of_a_committed_batch_as_a_duplicate() {
    let mut nodes = Nodes::new();
    let first = nodes.elect();
    produce(nodes.shard(first), 1, batch(7, 0, 2));
    let mut acked = Vec::new();
    for _ in 0..5 {
        nodes.cycle();
        acked.extend(replies(nodes.shard(first)));
    }
    assert_eq!(acked, vec![(1, produced(0, 1))]);
    // The acknowledgement is lost and so is the leader.
    nodes.cut.insert(first);
    let second = nodes.elect();
    assert_ne!(first, second);
    for _ in 0..3 {
        nodes.cycle();
    }
    produce(nodes.shard(second), 2, batch(7, 0, 2));
    assert_eq!(replies(nodes.shard(second)), vec![(2, duplicate(0, 1))]);
    produce(nodes.shard(second), 3, batch(7, 2, 1));
    let mut acked = Vec::new();
    for _ in 0..5 {
        nodes.cycle();
        acked.extend(replies(nodes.shard(second)));
    }
    assert_eq!(acked, vec![(3, produced(2, 2))], "no second copy before it");
    assert_eq!(log_end(&nodes.shards[&second]), 3);
}

#[test]
fn a_new_leader_holding_an_uncommitted_copy_answers_timed_out_then_duplicate() {
    let mut nodes = Nodes::new();
    let first = nodes.elect();
    for _ in 0..3 {
        nodes.cycle();
    }
    let others: Vec<u64> = (1..=3).filter(|n| *n != first).collect();
    let (keeper, other) = (others[0], others[1]);
    // The batch reaches `keeper` only, and its answer never gets back: not committed.
    nodes.one_way.insert((first, other));
    nodes.one_way.insert((keeper, first));
    produce(nodes.shard(first), 1, batch(7, 0, 2));
    for _ in 0..3 {
        nodes.cycle();
    }
    assert_eq!(log_end(&nodes.shards[&keeper]), 2, "keeper has the batch");
    assert_eq!(nodes.hw(keeper), 0, "not committed");
    nodes.one_way.clear();
    nodes.cut.insert(first);
    // `keeper` must win (the other's log is behind). Right after it does, the batch is
    // in its log but not yet committed.
    let mut saw_timed_out = false;
    for _ in 0..200 {
        nodes.cycle();
        if nodes.leader() == Some(keeper) {
            if nodes.hw(keeper) < 2 {
                produce(nodes.shard(keeper), 2, batch(7, 0, 2));
                assert_eq!(
                    replies(nodes.shard(keeper)),
                    vec![(2, Reply::Failed(EngineError::TimedOut))]
                );
                saw_timed_out = true;
            } else {
                break;
            }
        }
    }
    assert!(saw_timed_out, "the uncommitted window was observed");
    assert!(nodes.hw(keeper) >= 2);
    produce(nodes.shard(keeper), 3, batch(7, 0, 2));
    assert_eq!(replies(nodes.shard(keeper)), vec![(3, duplicate(0, 1))]);
    assert_eq!(log_end(&nodes.shards[&keeper]), 2);
}

// ------------------------------------------------- suffix cut (replica level)

fn open_rp(fs: &MemFs, id: u64) -> ReplicatedPartition<MemFs> {
    let mut config = ReplicaConfig::new(id, vec![1, 2, 3]);
    config.seed = id * 7919;
    // Created here on all three: no vote guard (a follower cut off before it committed
    // an entry of the first leader's term would otherwise withhold its vote).
    config.new_group = true;
    block_on(ReplicatedPartition::open(
        fs.clone(),
        LogConfig::default(),
        config,
        0,
    ))
    .unwrap()
    .0
}

struct Rps {
    nodes: BTreeMap<u64, ReplicatedPartition<MemFs>>,
    cut: BTreeSet<u64>,
    now: i64,
}

impl Rps {
    /// Nodes 1..=3, node `id` on `fss[id - 1]`, nothing cut.
    fn three(fss: &[MemFs]) -> Rps {
        Rps {
            nodes: (1..=3u64)
                .map(|id| (id, open_rp(&fss[id as usize - 1], id)))
                .collect(),
            cut: BTreeSet::new(),
            now: 0,
        }
    }

    fn cycle(&mut self) {
        self.now += 10;
        for p in self.nodes.values_mut() {
            block_on(p.tick(self.now)).unwrap();
            block_on(p.sync(self.now)).unwrap();
        }
        let msgs: Vec<_> = self
            .nodes
            .values_mut()
            .flat_map(|p| p.take_messages())
            .collect();
        for m in msgs {
            if self.cut.contains(&m.from) || self.cut.contains(&m.to) {
                continue;
            }
            let _ = block_on(self.nodes.get_mut(&m.to).unwrap().step(m, self.now));
        }
    }

    fn leader_among(&self, allowed: &[u64]) -> Option<u64> {
        allowed
            .iter()
            .copied()
            .find(|n| self.nodes[n].replica().is_ready_leader())
    }

    fn elect(&mut self, allowed: &[u64]) -> u64 {
        for _ in 0..500 {
            self.cycle();
            if let Some(l) = self.leader_among(allowed) {
                return l;
            }
        }
        panic!("no leader among {allowed:?}");
    }
}

fn header(bytes: &[u8]) -> BatchHeader {
    BatchHeader::parse(bytes, &Limits::default()).unwrap()
}

#[test]
fn after_a_suffix_cut_the_cut_batch_is_accepted_again() {
    let fss: Vec<MemFs> = (0..3).map(|_| MemFs::new()).collect();
    let mut rps = Rps::three(&fss);
    let first = rps.elect(&[1, 2, 3]);
    // Isolated, the leader appends the batch to its own log only.
    rps.cut.insert(first);
    let b = batch(7, 0, 2);
    let rp = rps.nodes.get_mut(&first).unwrap();
    rp.check_sequence(&header(&b), Acks::All).unwrap();
    block_on(rp.propose(1, b.clone(), Acks::All, rps.now)).unwrap();
    assert_eq!(rp.producers().get(7).map(|s| s.batches.len()), Some(1));
    assert!(matches!(
        rp.check_sequence(&header(&b), Acks::All),
        Err(EngineError::TimedOut)
    ));
    // The others elect a leader and commit a plain batch where the cut one was.
    let others: Vec<u64> = (1..=3).filter(|n| *n != first).collect();
    let second = rps.elect(&others);
    let rp = rps.nodes.get_mut(&second).unwrap();
    block_on(rp.propose(2, plain("c"), Acks::All, rps.now)).unwrap();
    for _ in 0..5 {
        rps.cycle();
    }
    // Healed: the old leader's suffix is cut, and its table with it.
    rps.cut.clear();
    for _ in 0..20 {
        rps.cycle();
    }
    let old = &rps.nodes[&first];
    assert!(!old.replica().status().is_leader);
    assert!(
        old.producers().get(7).is_none(),
        "the cut batch is forgotten"
    );
    assert_eq!(
        old.log().next_offset(),
        rps.nodes[&second].log().next_offset()
    );
    // Make the old leader lead again: the cut batch's sequence is accepted.
    let mut led = false;
    for _ in 0..20 {
        if rps.nodes[&first].replica().is_ready_leader() {
            led = true;
            break;
        }
        let current = rps.leader_among(&[1, 2, 3]);
        rps.cut = current.into_iter().filter(|n| *n != first).collect();
        let allowed: Vec<u64> = (1..=3).filter(|n| !rps.cut.contains(n)).collect();
        rps.elect(&allowed);
        rps.cut.clear();
        for _ in 0..20 {
            rps.cycle();
        }
    }
    assert!(led, "node {first} never led again");
    let rp = rps.nodes.get_mut(&first).unwrap();
    rp.check_sequence(&header(&b), Acks::All)
        .expect("the cut sequence is free again");
    let end = rp.log().next_offset();
    block_on(rp.propose(3, b, Acks::All, rps.now)).unwrap();
    assert_eq!(rp.producers().get(7).unwrap().batches[0].base_offset, end);
}

#[test]
fn a_follower_restarted_at_the_leaders_log_start_learns_the_retained_producers() {
    let fss: Vec<MemFs> = (0..3).map(|_| MemFs::new()).collect();
    let mut rps = Rps::three(&fss);
    let leader = rps.elect(&[1, 2, 3]);
    let lagging = (1..=3).find(|n| *n != leader).unwrap();
    rps.cut.insert(lagging);
    let b = batch(7, 0, 2);
    let rp = rps.nodes.get_mut(&leader).unwrap();
    rp.check_sequence(&header(&b), Acks::All).unwrap();
    block_on(rp.propose(1, b.clone(), Acks::All, rps.now)).unwrap();
    block_on(rp.propose(2, plain("x"), Acks::All, rps.now)).unwrap();
    for _ in 0..5 {
        rps.cycle();
    }
    // Retention takes everything committed: producer 7 is known from no batch in the log.
    let rp = rps.nodes.get_mut(&leader).unwrap();
    let hw = rp.replica().high_watermark();
    assert_eq!(hw, 3);
    assert_eq!(block_on(rp.retain_from(hw, rps.now)).unwrap(), 3);
    assert!(matches!(
        rp.check_sequence(&header(&b), Acks::All),
        Err(EngineError::DuplicateSequence {
            base_offset: Some(0),
            last_offset: Some(1)
        })
    ));
    // The lagging follower catches up through the leader's log start (a log reset).
    rps.cut.clear();
    for _ in 0..30 {
        rps.cycle();
    }
    let f = &rps.nodes[&lagging];
    assert_eq!(
        f.log().log_start_offset(),
        3,
        "restarted at the leader's log start"
    );
    let s = f
        .producers()
        .get(7)
        .expect("the leader's retained producer came along");
    assert_eq!(s.batches.back().unwrap().base_offset, 0);
    assert!(fss[lagging as usize - 1]
        .file_names()
        .iter()
        .any(|n| n == "producers.state"));
}
