//! One shard: the partitions it owns, and the request logic over them.
//!
//! A [`Shard`] is runtime-free: its methods are `async` only because the partition
//! logs do I/O through [`sluice_storage::Storage`]; a glommio shard thread drives it
//! in production, `pollster` over `MemFs` in tests. Replies are queued and drained
//! with [`Shard::poll_reply`], keyed by the caller's [`Token`].
//!
//! Call order: `open_partition` for every partition the shard owns; then, as requests
//! arrive, `produce` / `fetch` / `list_offsets`; after a batch of requests (a flush
//! cycle), `flush` — one sync per dirty partition, issued together, which is the
//! group commit: every append before it becomes durable, the high watermark moves,
//! waiting producers are answered and long-polling fetches served; `tick` every few
//! milliseconds for deadlines; `poll_reply` after each of these.
//!
//! The pipelined form of the flush: [`Shard::begin_flush`] starts the fdatasyncs and
//! hands them out as one [`FlushInFlight`], which borrows nothing, so the owner goes on
//! with requests (their appends join the next group) while it runs; then
//! [`Shard::finish_flush`] with its results does what `flush` does after the syncs.
//! Only appends made before `begin_flush` are made durable by it.
//!
//! Until replication exists the high watermark is the durable end of the local log:
//! `acks=all` and `acks=leader` are answered after the fsync, `acks=none` after the
//! append, and consumers never see a batch before it is durable.

use std::collections::{BTreeMap, VecDeque};
use std::io;

use sluice_proto::{BatchError, BatchView};
use sluice_replica::{Acks, Message, ProposeError, ReplicaConfig, ReplyError};
use sluice_storage::{Batches, LogConfig, LogError, RecoveryReport, Storage};
use thiserror::Error;

use crate::replicated::{PendingSync, ReplicatedPartition, StepError};
use crate::waiters::{PendingFetch, Ready, Token, WaitLimits, Waiters};

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    /// `topic`/`partition`.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Where partitions keep their files: one [`Storage`] (directory) per partition.
pub trait StorageProvider {
    /// The storage of one partition.
    type S: Storage;
    /// The storage of `tp`'s directory, created if missing.
    fn open(&self, tp: &TopicPartition) -> io::Result<Self::S>;
    /// Removes `tp`'s directory and everything in it.
    fn remove(&self, tp: &TopicPartition) -> io::Result<()>;
}

/// How a produce request wants to be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckPolicy {
    /// After the append, before it is durable.
    None,
    /// After the leader's fsync.
    Leader,
    /// After a quorum has it fsynced (single node: the local fsync).
    #[default]
    All,
}

/// Which offset `list_offsets` looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    /// The log start.
    Earliest,
    /// The high watermark (where the next committed record will be).
    Latest,
    /// The first committed record with a timestamp at or after this.
    Timestamp(i64),
}

/// Errors the engine answers with. The gateway maps them onto wire error codes.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("unknown partition {0}")]
    UnknownPartition(TopicPartition),
    #[error("partition {0} exists")]
    PartitionExists(TopicPartition),
    #[error("offset {offset} out of range [{log_start}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: u64,
        log_start: u64,
        high_watermark: u64,
    },
    #[error("invalid batch: {0}")]
    InvalidBatch(BatchError),
    #[error("storage full")]
    StorageFull,
    #[error("storage failed: {0}")]
    StorageFailed(String),
    #[error("request timed out (the write may still have been appended)")]
    TimedOut,
    #[error("this node does not lead {0}")]
    NotLeader(TopicPartition),
    #[error("too many requests waiting on {0}")]
    TooManyWaiting(TopicPartition),
    #[error("invalid config: {0}")]
    InvalidConfig(&'static str),
    #[error("corruption: {0}")]
    Corruption(String),
    /// The idempotent producer's batch was appended already (by an earlier attempt) and
    /// is as durable as the request asks: nothing was appended now. The offsets are the
    /// batch's, when the producer table still remembers it (`None`: a sequence older
    /// than the batches remembered). Definite.
    #[error("duplicate sequence (already appended at {base_offset:?}..={last_offset:?})")]
    DuplicateSequence {
        base_offset: Option<u64>,
        last_offset: Option<u64>,
    },
    /// The idempotent producer's batch does not continue its sequence (a gap, or an
    /// overlap with what was appended, or a new epoch not starting at 0). Definite.
    #[error(
        "out-of-order sequence from producer {producer_id} epoch {epoch}: \
         expected {expected}, got {got}"
    )]
    OutOfOrderSequence {
        producer_id: i64,
        epoch: i16,
        expected: i32,
        got: i32,
    },
    /// The idempotent producer's batch carries an older epoch than the producer's
    /// current one on this partition. Definite.
    #[error("producer {producer_id} fenced: epoch {got} is older than {current}")]
    ProducerFenced {
        producer_id: i64,
        current: i16,
        got: i16,
    },
}

impl EngineError {
    pub(crate) fn from_log(e: LogError) -> Self {
        match e {
            LogError::InvalidBatch(b) => Self::InvalidBatch(b),
            LogError::OffsetOutOfRange { offset, start, end } => Self::OffsetOutOfRange {
                offset,
                log_start: start,
                high_watermark: end,
            },
            e @ LogError::Io { .. } if e.is_storage_full() => Self::StorageFull,
            LogError::Poisoned { reason } => Self::StorageFailed(reason),
            e @ LogError::Io { .. } => Self::StorageFailed(e.to_string()),
            e @ LogError::Corruption { .. } => Self::Corruption(e.to_string()),
            LogError::Config(what) => Self::InvalidConfig(what),
            // Only a replica places batches itself: its log and the log on disk disagree.
            e @ LogError::Misplaced { .. } => Self::Corruption(format!("replica: {e}")),
        }
    }
}

/// An answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The batch got these offsets (and is durable, unless `acks=none`); the
    /// partition's log start after the append.
    Produced {
        base_offset: u64,
        last_offset: u64,
        log_start: u64,
    },
    /// Whole stored batches below the high watermark (possibly none).
    Fetched {
        batches: Batches,
        high_watermark: u64,
        log_start: u64,
    },
    /// The request failed.
    Failed(EngineError),
}

/// Limits and defaults of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardConfig {
    /// Per-partition limits on waiting requests.
    pub wait_limits: WaitLimits,
    /// How often `tick` applies each partition's retention (whole sealed segments).
    pub retention_interval_ms: i64,
    /// This node's id in its partitions' Raft groups.
    pub node_id: u64,
    /// How often (ms) a leader checks whether to hand leadership back to its group's
    /// preferred leader (`Shard::raft_tick`); 0: never. Kafka's
    /// `auto.leader.rebalance.enable`: after a failover, the node that comes back
    /// leads its share of partitions again instead of the survivors keeping them all.
    pub leader_rebalance_ms: i64,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            wait_limits: WaitLimits::default(),
            retention_interval_ms: 30_000,
            node_id: 1,
            leader_rebalance_ms: 0,
        }
    }
}

/// Counters for the metrics edge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub produce_requests: u64,
    pub produce_bytes: u64,
    pub fetch_requests: u64,
    pub fetch_bytes: u64,
    pub flushes: u64,
    pub partitions_synced: u64,
    pub errors: u64,
    pub segments_deleted: u64,
    pub retention_errors: u64,
    /// Leaderships handed back to a preferred leader (`leader_rebalance_ms`).
    pub leader_transfers: u64,
}

#[derive(Debug)]
struct Partition<S: Storage> {
    /// The replica over the partition log (a single-voter group on a single node).
    rp: ReplicatedPartition<S>,
    /// The high watermark and the long-polling fetches.
    waiters: Waiters,
    /// Produce requests the replica has not answered yet, with their deadlines.
    acks: BTreeMap<Token, i64>,
    /// The group's preferred leader (the first of the voters it was opened with).
    preferred: Option<u64>,
}

/// A group commit begun by [`Shard::begin_flush`]: run [`FlushInFlight::syncs`] (they
/// borrow nothing of the shard), then give their results, in order, to
/// [`Shard::finish_flush`].
pub struct FlushInFlight {
    pending: Vec<(TopicPartition, PendingSync)>,
    /// One fdatasync per partition in `pending`, in the same order.
    pub syncs: Vec<sluice_storage::DetachedSync>,
}

impl std::fmt::Debug for FlushInFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushInFlight")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// The partitions of one shard and the logic of every request on them.
#[derive(Debug)]
pub struct Shard<P: StorageProvider> {
    provider: P,
    config: ShardConfig,
    partitions: BTreeMap<TopicPartition, Partition<P::S>>,
    replies: VecDeque<(Token, Reply)>,
    stats: ShardStats,
    /// When retention last ran (`None`: not yet).
    retention_ms: Option<i64>,
    /// When the leaders last checked for a preferred leader to hand back to.
    rebalance_ms: Option<i64>,
}

impl<P: StorageProvider> Shard<P> {
    /// A shard with no partitions.
    pub fn new(provider: P, config: ShardConfig) -> Self {
        Self {
            provider,
            config,
            partitions: BTreeMap::new(),
            replies: VecDeque::new(),
            stats: ShardStats::default(),
            retention_ms: None,
            rebalance_ms: None,
        }
    }

    /// Counters.
    pub fn stats(&self) -> ShardStats {
        self.stats
    }

    /// The partitions this shard owns.
    pub fn partitions(&self) -> impl Iterator<Item = &TopicPartition> {
        self.partitions.keys()
    }

    /// Size, segments, offsets and replication state of one partition.
    pub fn partition_stats(&self, tp: &TopicPartition) -> Option<PartitionStats> {
        let p = self.partitions.get(tp)?;
        let log = p.rp.log();
        let status = p.rp.replica().status();
        Some(PartitionStats {
            log_bytes: log.size_bytes(),
            segments: log.segment_count() as u64,
            log_start: log.log_start_offset(),
            log_end: log.next_offset(),
            high_watermark: p.waiters.high_watermark(),
            term: status.term,
            is_leader: status.is_leader,
            leader: status.leader,
            caught_up_at: p.rp.replica().caught_up_at(),
            catching_up: p.rp.replica().is_catching_up(),
            log_end_at_open: p.rp.log_end_at_open(),
        })
    }

    /// Every partition with its Raft leader (if known) and term.
    pub fn leaders(&self) -> impl Iterator<Item = (&TopicPartition, Option<u64>, u64)> {
        self.partitions.iter().map(|(tp, p)| {
            let s = p.rp.replica().status();
            (tp, s.leader, s.term)
        })
    }

    /// Whether any partition here has peers (a group of more than one voter): then the
    /// driver must tick [`Shard::raft_tick`] at a steady cadence.
    pub fn has_peers(&self) -> bool {
        self.partitions
            .values()
            .any(|p| p.rp.replica().voter_count() > 1)
    }

    /// Starts an election for `tp` now (e.g. its preferred leader on a fresh group).
    pub async fn campaign(&mut self, tp: &TopicPartition, now_ms: i64) -> Result<(), EngineError> {
        let p = self
            .partitions
            .get_mut(tp)
            .ok_or_else(|| EngineError::UnknownPartition(tp.clone()))?;
        let r = p.rp.campaign(now_ms).await;
        self.collect(tp).await;
        r
    }

    /// The next reply to hand back, if any.
    pub fn poll_reply(&mut self) -> Option<(Token, Reply)> {
        self.replies.pop_front()
    }

    /// Whether a flush would sync anything.
    pub fn has_dirty(&self) -> bool {
        self.partitions.values().any(|p| p.rp.needs_sync())
    }

    /// Whether a group commit begun now would sync anything: a dirty partition with no
    /// fdatasync in flight.
    pub fn can_flush(&self) -> bool {
        self.partitions.values().any(|p| p.rp.can_begin_sync())
    }

    fn reply(&mut self, token: Token, reply: Reply) {
        if matches!(reply, Reply::Failed(_)) {
            self.stats.errors += 1;
        }
        self.replies.push_back((token, reply));
    }

    /// Opens (recovering) or creates the partition `tp` as a single-voter Raft group
    /// (a single-node broker): it elects itself and commits its first entry here.
    pub async fn open_partition(
        &mut self,
        tp: TopicPartition,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<RecoveryReport, EngineError> {
        let node = self.config.node_id;
        self.open_replicated(tp, config, vec![node], false, now_ms)
            .await
    }

    /// Opens (recovering) or creates the partition `tp` as a replica in the Raft group
    /// of `voters` (node ids, this node's among them; used when the partition has no
    /// `raft.state` yet). A group of one elects itself at once; a larger one elects a
    /// leader through [`Shard::tick`], [`Shard::step`] and [`Shard::take_messages`].
    /// `new_group`: the group is created now on every voter (`ReplicaConfig::new_group`:
    /// no vote guard without `raft.state`).
    pub async fn open_replicated(
        &mut self,
        tp: TopicPartition,
        config: LogConfig,
        voters: Vec<u64>,
        new_group: bool,
        now_ms: i64,
    ) -> Result<RecoveryReport, EngineError> {
        if self.partitions.contains_key(&tp) {
            return Err(EngineError::PartitionExists(tp));
        }
        let node = self.config.node_id;
        if !voters.contains(&node) {
            return Err(EngineError::InvalidConfig(
                "this node is not among the voters",
            ));
        }
        let storage = self
            .provider
            .open(&tp)
            .map_err(|e| EngineError::StorageFailed(format!("{tp}: {e}")))?;
        let single = voters.len() == 1;
        let preferred = voters.first().copied();
        let mut replica = ReplicaConfig::new(node, voters);
        replica.limits = config.limits;
        replica.new_group = new_group;
        replica.seed =
            node ^ u64::from(tp.partition).rotate_left(32) ^ crate::fnv1a(tp.topic.as_bytes());
        let (mut rp, report) = ReplicatedPartition::open(storage, config, replica, now_ms).await?;
        if single {
            rp.campaign(now_ms).await?;
            rp.sync(now_ms).await?;
        }
        let waiters = Waiters::new(rp.replica().high_watermark(), self.config.wait_limits);
        self.partitions.insert(
            tp,
            Partition {
                rp,
                waiters,
                acks: BTreeMap::new(),
                preferred,
            },
        );
        Ok(report)
    }

    /// Steps a Raft message from a peer into partition `tp`'s replica. A message for a
    /// partition this shard does not hold, or one the replica refuses, is dropped
    /// (Raft tolerates lost messages) and reported.
    pub async fn step(
        &mut self,
        tp: &TopicPartition,
        msg: Message,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let p = self
            .partitions
            .get_mut(tp)
            .ok_or_else(|| EngineError::UnknownPartition(tp.clone()))?;
        let r = p.rp.step(msg, now_ms).await;
        self.collect(tp).await;
        match r {
            Ok(()) => Ok(()),
            Err(StepError::Engine(e)) => Err(e),
            Err(StepError::Replica(e)) => Err(EngineError::Corruption(e.to_string())),
        }
    }

    /// Every Raft message the shard's replicas want sent, batched per destination
    /// node, each with its partition: one send per peer per cycle carries them all.
    pub fn take_messages(&mut self) -> BTreeMap<u64, Vec<(TopicPartition, Message)>> {
        let mut out: BTreeMap<u64, Vec<(TopicPartition, Message)>> = BTreeMap::new();
        for (tp, p) in self.partitions.iter_mut() {
            for m in p.rp.take_messages() {
                out.entry(m.to).or_default().push((tp.clone(), m));
            }
        }
        out
    }

    /// Closes every partition cleanly (for a graceful shutdown): waiting producers
    /// are answered `TimedOut` (indeterminate) unless a final flush made them
    /// durable, waiting fetches get what there is.
    pub async fn close(&mut self, now_ms: i64) -> Result<(), EngineError> {
        self.flush(now_ms).await;
        let mut first_err = None;
        let tps: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        for tp in tps {
            let mut ready = Vec::new();
            let mut unanswered = Vec::new();
            if let Some(p) = self.partitions.get_mut(&tp) {
                p.waiters.drain(&mut ready);
                unanswered = std::mem::take(&mut p.acks).into_keys().collect();
            }
            for token in unanswered {
                self.reply(token, Reply::Failed(EngineError::TimedOut));
            }
            self.answer_ready(&tp, ready).await;
            let Some(p) = self.partitions.remove(&tp) else {
                continue;
            };
            if let Err(e) = p.rp.close().await {
                first_err.get_or_insert(EngineError::StorageFailed(format!("{tp}: {e}")));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Deletes the partition and its files; its waiting requests fail.
    pub async fn delete_partition(&mut self, tp: &TopicPartition) -> Result<(), EngineError> {
        let Some(mut p) = self.partitions.remove(tp) else {
            return Err(EngineError::UnknownPartition(tp.clone()));
        };
        let mut ready = Vec::new();
        p.waiters.drain(&mut ready);
        let mut tokens: Vec<Token> = std::mem::take(&mut p.acks).into_keys().collect();
        for r in ready {
            tokens.push(match r {
                Ready::Readable(f) | Ready::FetchExpired(f) => f.token,
            });
        }
        for token in tokens {
            self.reply(
                token,
                Reply::Failed(EngineError::UnknownPartition(tp.clone())),
            );
        }
        drop(p);
        self.provider
            .remove(tp)
            .map_err(|e| EngineError::StorageFailed(format!("{tp}: {e}")))
    }

    /// Validates one batch and proposes it to the partition's replica; answers per
    /// `acks`: at the append for `None`, after the leader's fsync for `Leader`, once
    /// committed for `All` (single voter: its own fsync), or `TimedOut` once
    /// `timeout_ms` passes first.
    pub async fn produce(
        &mut self,
        now_ms: i64,
        token: Token,
        tp: &TopicPartition,
        batch: Vec<u8>,
        acks: AckPolicy,
        timeout_ms: u32,
    ) {
        self.stats.produce_requests += 1;
        let Some(p) = self.partitions.get_mut(tp) else {
            self.reply(
                token,
                Reply::Failed(EngineError::UnknownPartition(tp.clone())),
            );
            return;
        };
        // Refuse before proposing, so a refusal is definite.
        if p.acks.len() >= self.config.wait_limits.acks_max {
            self.reply(
                token,
                Reply::Failed(EngineError::TooManyWaiting(tp.clone())),
            );
            return;
        }
        let limits = p.rp.log().config().limits;
        let header = match BatchView::parse(&batch, &limits) {
            Ok(view) => *view.header(),
            Err(e) => {
                self.reply(token, Reply::Failed(EngineError::InvalidBatch(e)));
                return;
            }
        };
        if let Some(reason) = p.rp.log().poisoned() {
            let err = EngineError::StorageFailed(reason.to_string());
            self.reply(token, Reply::Failed(err));
            return;
        }
        let len = batch.len() as u64;
        let policy = match acks {
            AckPolicy::None => Acks::None,
            AckPolicy::Leader => Acks::Leader,
            AckPolicy::All => Acks::All,
        };
        // The idempotent producer's sequence check (`producers.rs`): a duplicate or an
        // out-of-order batch is refused before proposing.
        if let Err(e) = p.rp.check_sequence(&header, policy) {
            self.reply(token, Reply::Failed(e));
            return;
        }
        let deadline = now_ms.saturating_add(i64::from(timeout_ms));
        p.acks.insert(token, deadline);
        match p.rp.propose(token, batch, policy, now_ms).await {
            Ok(()) => self.stats.produce_bytes += len,
            Err(e) => {
                p.acks.remove(&token);
                let err = match e {
                    ProposeError::NotLeader { .. } | ProposeError::NotReady => {
                        EngineError::NotLeader(tp.clone())
                    }
                    ProposeError::Dropped => EngineError::TooManyWaiting(tp.clone()),
                    ProposeError::Invalid(why) | ProposeError::Failed(why) => {
                        EngineError::StorageFailed(why)
                    }
                };
                self.reply(token, Reply::Failed(err));
            }
        }
        self.collect(tp).await;
    }

    /// Hands the replica's produce replies to their requests and serves the fetches
    /// the high watermark now covers.
    async fn collect(&mut self, tp: &TopicPartition) {
        let Some(p) = self.partitions.get_mut(tp) else {
            return;
        };
        let log_start = p.rp.log().log_start_offset();
        let mut answers = Vec::new();
        for (token, result) in p.rp.take_replies() {
            // A request already answered (timed out) is not answered twice.
            if p.acks.remove(&token).is_none() {
                continue;
            }
            answers.push((
                token,
                match result {
                    Ok(done) => Reply::Produced {
                        base_offset: done.base_offset,
                        last_offset: done.last_offset,
                        log_start,
                    },
                    // Indeterminate, like a timeout: the write may survive.
                    Err(ReplyError::LeadershipLost) => Reply::Failed(EngineError::TimedOut),
                },
            ));
        }
        let mut ready = Vec::new();
        let hw = p.rp.replica().high_watermark();
        if hw > p.waiters.high_watermark() {
            p.waiters.advance(hw, &mut ready);
        }
        for (token, reply) in answers {
            self.reply(token, reply);
        }
        self.answer_ready(tp, ready).await;
    }

    /// Serves a fetch: whole batches from `offset` below the high watermark, or, when
    /// there are none yet and `max_wait_ms > 0`, waits for them (long poll).
    pub async fn fetch(
        &mut self,
        now_ms: i64,
        token: Token,
        tp: &TopicPartition,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) {
        self.fetch_from(now_ms, token, tp, offset, max_bytes, max_wait_ms, true)
            .await;
    }

    /// [`Shard::fetch`] from this replica whatever its role: committed batches as far as
    /// this replica knows the commit (a follower's high watermark may lag the
    /// leader's). For the node's own readers (the controller log), not for clients.
    pub async fn fetch_local(
        &mut self,
        now_ms: i64,
        token: Token,
        tp: &TopicPartition,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) {
        self.fetch_from(now_ms, token, tp, offset, max_bytes, max_wait_ms, false)
            .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_from(
        &mut self,
        now_ms: i64,
        token: Token,
        tp: &TopicPartition,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
        leader_only: bool,
    ) {
        self.stats.fetch_requests += 1;
        let Some(p) = self.partitions.get_mut(tp) else {
            self.reply(
                token,
                Reply::Failed(EngineError::UnknownPartition(tp.clone())),
            );
            return;
        };
        if leader_only && !p.rp.replica().is_ready_leader() {
            self.reply(token, Reply::Failed(EngineError::NotLeader(tp.clone())));
            return;
        }
        let hw = p.waiters.high_watermark();
        let start = p.rp.log().log_start_offset();
        if offset < start || offset > p.rp.log().next_offset() {
            let err = EngineError::OffsetOutOfRange {
                offset,
                log_start: start,
                high_watermark: hw,
            };
            self.reply(token, Reply::Failed(err));
            return;
        }
        if offset < hw || max_wait_ms == 0 {
            let reply = read_reply(p, offset, max_bytes).await;
            self.note_fetch(&reply);
            self.reply(token, reply);
            return;
        }
        let wait = PendingFetch {
            token,
            offset,
            max_bytes,
            deadline_ms: now_ms.saturating_add(i64::from(max_wait_ms)),
        };
        if p.waiters.add_fetch(wait).is_err() {
            self.reply(
                token,
                Reply::Failed(EngineError::TooManyWaiting(tp.clone())),
            );
        }
    }

    fn note_fetch(&mut self, reply: &Reply) {
        if let Reply::Fetched { batches, .. } = reply {
            self.stats.fetch_bytes += batches.bytes.len() as u64;
        }
    }

    /// The offset a consumer would seek to.
    pub async fn list_offsets(
        &self,
        tp: &TopicPartition,
        query: OffsetQuery,
    ) -> Result<Option<u64>, EngineError> {
        let p = self
            .partitions
            .get(tp)
            .ok_or_else(|| EngineError::UnknownPartition(tp.clone()))?;
        let hw = p.waiters.high_watermark();
        let log = p.rp.log();
        Ok(match query {
            OffsetQuery::Earliest => Some(log.log_start_offset()),
            OffsetQuery::Latest => Some(hw),
            OffsetQuery::Timestamp(ts) => log
                .offset_for_timestamp(ts)
                .await
                .map_err(EngineError::from_log)?
                .filter(|&o| o < hw),
        })
    }

    /// The group commit: syncs every partition appended to since the last flush,
    /// all at once, then answers the producers whose batches became durable (single
    /// voter: committed) and the fetches that can now be served. A failed sync
    /// poisons its partition: its waiting producers get `StorageFailed`.
    pub async fn flush(&mut self, now_ms: i64) {
        self.stats.flushes += 1;
        let syncs = self
            .partitions
            .iter_mut()
            .filter(|(_, p)| p.rp.needs_sync())
            .map(|(tp, p)| async move { (tp.clone(), p.rp.sync(now_ms).await) });
        let results = futures_util::future::join_all(syncs).await;
        self.stats.partitions_synced += results.len() as u64;
        for (tp, result) in results {
            if let Err(err) = result {
                self.fail_acks(&tp, &err);
            }
            self.collect(&tp).await;
        }
    }

    /// Begins the group commit of every dirty partition that has no sync in flight
    /// (another group's), without waiting for it (the pipelined `flush`, module docs):
    /// `None` when there is nothing to run (nothing such, or every sync was done here
    /// because its backend cannot sync detached). Groups may overlap; a partition is in
    /// at most one.
    pub async fn begin_flush(&mut self, now_ms: i64) -> Option<FlushInFlight> {
        let dirty: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.rp.can_begin_sync())
            .map(|(tp, _)| tp.clone())
            .collect();
        if dirty.is_empty() {
            return None;
        }
        self.stats.flushes += 1;
        self.stats.partitions_synced += dirty.len() as u64;
        let mut flush = FlushInFlight {
            pending: Vec::new(),
            syncs: Vec::new(),
        };
        for tp in dirty {
            let Some(p) = self.partitions.get_mut(&tp) else {
                continue;
            };
            match p.rp.begin_sync(now_ms).await {
                Ok(Some((pending, sync))) => {
                    flush.pending.push((tp, pending));
                    flush.syncs.push(sync);
                    continue;
                }
                Ok(None) => {}
                Err(err) => self.fail_acks(&tp, &err),
            }
            self.collect(&tp).await;
        }
        (!flush.syncs.is_empty()).then_some(flush)
    }

    /// Completes a group commit from [`Shard::begin_flush`] with its syncs' results, in
    /// the order of [`FlushInFlight::syncs`]: the high watermarks move, producers are
    /// answered, long polls served. A partition deleted meanwhile is skipped.
    pub async fn finish_flush(
        &mut self,
        flush: FlushInFlight,
        results: Vec<io::Result<()>>,
        now_ms: i64,
    ) {
        let mut results = results.into_iter();
        for (tp, pending) in flush.pending {
            let result = results
                .next()
                .unwrap_or_else(|| Err(io::Error::other("flush: no result for this sync")));
            let Some(p) = self.partitions.get_mut(&tp) else {
                continue;
            };
            if let Err(err) = p.rp.finish_sync(pending, result, now_ms).await {
                self.fail_acks(&tp, &err);
            }
            self.collect(&tp).await;
        }
    }

    /// A failed sync: the partition's waiting producers get `err`.
    fn fail_acks(&mut self, tp: &TopicPartition, err: &EngineError) {
        let failed: Vec<Token> = match self.partitions.get_mut(tp) {
            Some(p) => {
                p.rp.take_replies();
                std::mem::take(&mut p.acks).into_keys().collect()
            }
            None => Vec::new(),
        };
        for token in failed {
            self.reply(token, Reply::Failed(err.clone()));
        }
    }

    /// Applies every partition's retention now: whole sealed segments past their
    /// size or age limit are deleted (the replica's log-start marker moves first).
    /// Returns the segments deleted.
    pub async fn apply_retention(&mut self, now_ms: i64) -> u64 {
        let mut deleted = 0;
        for p in self.partitions.values_mut() {
            let log = p.rp.log();
            let target = log.retention_target(now_ms);
            if target <= log.log_start_offset() {
                continue;
            }
            let before = log.segment_count();
            match p.rp.retain_from(target, now_ms).await {
                Ok(_) => deleted += before.saturating_sub(p.rp.log().segment_count()) as u64,
                // A poisoned log refuses; its producers already got StorageFailed.
                Err(_) => self.stats.retention_errors += 1,
            }
        }
        self.stats.segments_deleted += deleted;
        self.retention_ms = Some(now_ms);
        deleted
    }

    /// One Raft tick of every replica (heartbeats, election timeouts): the driver calls
    /// it at a steady cadence, `raft_tick_ms`, whatever else happens.
    pub async fn raft_tick(&mut self, now_ms: i64) {
        let tps: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        for tp in &tps {
            if let Some(p) = self.partitions.get_mut(tp) {
                let _ = p.rp.tick(now_ms).await;
            }
            self.collect(tp).await;
        }
        let every = self.config.leader_rebalance_ms;
        let due = every > 0
            && self
                .rebalance_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= every);
        if due {
            self.rebalance_ms = Some(now_ms);
            for tp in &tps {
                self.hand_back(tp, now_ms).await;
            }
        }
    }

    /// Most entries a preferred leader may lag for a transfer to start: about a round
    /// trip of appends under load, so a busy group still hands back.
    const TRANSFER_LAG_MAX: u64 = 256;

    /// If this node leads `tp` but is not its preferred leader, and the preferred one
    /// is up and caught up, hands leadership back to it.
    async fn hand_back(&mut self, tp: &TopicPartition, now_ms: i64) {
        let node = self.config.node_id;
        let Some(p) = self.partitions.get_mut(tp) else {
            return;
        };
        let Some(to) = p.preferred.filter(|&to| to != node) else {
            return;
        };
        if !p.rp.replica().is_ready_leader() {
            return;
        }
        if let Ok(true) =
            p.rp.transfer_leadership(to, Self::TRANSFER_LAG_MAX, now_ms)
                .await
        {
            self.stats.leader_transfers += 1;
        }
        self.collect(tp).await;
    }

    /// Answers deadlines that passed and applies retention when it is due.
    pub async fn tick(&mut self, now_ms: i64) {
        let due = self
            .retention_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= self.config.retention_interval_ms);
        if due {
            self.apply_retention(now_ms).await;
        }
        let mut expired: Vec<(TopicPartition, Vec<Ready>, Vec<Token>)> = Vec::new();
        for (tp, p) in self.partitions.iter_mut() {
            let mut ready = Vec::new();
            p.waiters.expire(now_ms, &mut ready);
            let late: Vec<Token> = p
                .acks
                .iter()
                .filter(|(_, &deadline)| deadline <= now_ms)
                .map(|(&t, _)| t)
                .collect();
            for t in &late {
                p.acks.remove(t);
            }
            if !ready.is_empty() || !late.is_empty() {
                expired.push((tp.clone(), ready, late));
            }
        }
        for (tp, ready, late) in expired {
            for token in late {
                self.reply(token, Reply::Failed(EngineError::TimedOut));
            }
            self.answer_ready(&tp, ready).await;
        }
    }

    async fn answer_ready(&mut self, tp: &TopicPartition, ready: Vec<Ready>) {
        for r in ready {
            match r {
                Ready::Readable(f) | Ready::FetchExpired(f) => {
                    let reply = match self.partitions.get(tp) {
                        Some(p) => read_reply(p, f.offset, f.max_bytes).await,
                        None => Reply::Failed(EngineError::UnknownPartition(tp.clone())),
                    };
                    self.note_fetch(&reply);
                    self.reply(f.token, reply);
                }
            }
        }
    }
}

/// Size, offsets and replication state of one partition (for describe and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionStats {
    pub log_bytes: u64,
    pub segments: u64,
    pub log_start: u64,
    pub log_end: u64,
    pub high_watermark: u64,
    pub term: u64,
    pub is_leader: bool,
    /// The group's leader as this replica knows it.
    pub leader: Option<u64>,
    /// `Replica::caught_up_at`: for a replica that started without state, the end
    /// offset of its log when it caught up (every record committed before it started
    /// lies below).
    pub caught_up_at: Option<u64>,
    /// `Replica::is_catching_up`: the vote guard is on.
    pub catching_up: bool,
    /// `ReplicatedPartition::log_end_at_open`: the log's end when this run opened it.
    pub log_end_at_open: u64,
}

/// Reads committed batches from `offset` (never past the high watermark).
async fn read_reply<S: Storage>(p: &Partition<S>, offset: u64, max_bytes: u32) -> Reply {
    let hw = p.waiters.high_watermark();
    let log = p.rp.log();
    let log_start = log.log_start_offset();
    match log.read_bounded(offset, max_bytes as usize, hw).await {
        Ok(batches) => Reply::Fetched {
            batches,
            high_watermark: hw,
            log_start,
        },
        Err(e) => Reply::Failed(EngineError::from_log(e)),
    }
}
