//! The shard thread: a glommio executor that owns one [`Shard`] and runs its flush
//! cycle over the shard's bounded request queue.
//!
//! One cycle:
//! 1. wait for a request, or for a group commit in flight to complete: forever when
//!    nothing waits inside the shard (no pending acknowledgement or long-poll),
//!    otherwise at most until the next tick is due;
//! 2. a completed group commit: `Shard::finish_flush` (high watermarks move, producers
//!    are answered, messages that waited for durability are released);
//! 3. a request: take whatever else is queued, up to `cycle_requests_max`, and hand
//!    each to the shard core in queue order (appends and reads are awaited one at a
//!    time: the core is `&mut`);
//! 4. if a partition was appended to and has no fdatasync in flight,
//!    `Shard::begin_flush`: one fdatasync per such partition, all issued together, is
//!    the group commit of every append to them since their last sync;
//! 5. `Shard::tick` when `tick_ms` has passed since the last one (ack timeouts and
//!    long-poll deadlines);
//! 6. send every reply the core queued to its caller's oneshot.
//!
//! The group commit is pipelined: while its fdatasyncs run (in io_uring, borrowing
//! nothing of the shard) the shard goes on taking requests. Appends to a partition
//! that is not syncing form a new group at once, beside the one in flight; appends to
//! a partition that is syncing wait for that sync and join the group that follows it.
//! So every partition has at most one fdatasync running, and a sync vouches only for
//! what was appended before it began (`PartitionLog::begin_sync`). (Waiting for the
//! whole group before the next, as an earlier build did, made a request that arrived
//! mid-group on an idle partition wait out the rest of it: 3% lower throughput and 3%
//! more CPU per record on RF=3, benches/README.md.)
//!
//! The loop ends when the queue is closed and drained. If the engine asked for a
//! clean stop (`shutdown`), the shard closes every partition (final flush, clean
//! marker); otherwise (every handle dropped) it just drops them, which the next
//! start recovers like a crash.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_channel::oneshot;
use futures_util::future::{select, Either, LocalBoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use sluice_engine::{
    AckPolicy, EngineError, FlushInFlight, OffsetQuery, Reply, Shard, ShardConfig, Token,
    TopicPartition,
};
use sluice_replica::Message;
use sluice_storage::{LogConfig, RecoveryReport};

use crate::provider::GlommioProvider;

/// Longest an idle shard sleeps before it ticks anyway (retention, housekeeping).
const HOUSEKEEPING: Duration = Duration::from_secs(1);
use crate::stats::{LatencyHistogram, PartitionStats};

/// What the handle asks of a shard.
#[derive(Debug)]
pub(crate) enum Request {
    Produce {
        tp: TopicPartition,
        batch: Vec<u8>,
        acks: AckPolicy,
        timeout_ms: u32,
        reply: oneshot::Sender<Reply>,
    },
    Fetch {
        tp: TopicPartition,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
        /// Read this replica's committed log whatever its role (the node's own readers).
        local: bool,
        reply: oneshot::Sender<Reply>,
    },
    ListOffsets {
        tp: TopicPartition,
        query: OffsetQuery,
        reply: oneshot::Sender<Result<Option<u64>, EngineError>>,
    },
    Open {
        partitions: Vec<OpenSpec>,
        reply: oneshot::Sender<Vec<Opened>>,
    },
    /// Raft messages from a peer, for partitions of this shard. No reply: a message for
    /// a partition the shard does not hold is dropped (Raft tolerates loss).
    Step {
        messages: Vec<(TopicPartition, Message)>,
    },
    Delete {
        partitions: Vec<TopicPartition>,
        reply: oneshot::Sender<Vec<(TopicPartition, Result<(), EngineError>)>>,
    },
    Stats {
        reply: oneshot::Sender<ShardReport>,
    },
}

/// One partition to open: its log config, its group's voters (this node among them),
/// and whether to start an election at once (the preferred leader of a new group).
#[derive(Debug, Clone)]
pub(crate) struct OpenSpec {
    pub tp: TopicPartition,
    pub log: LogConfig,
    pub voters: Vec<u64>,
    pub campaign: bool,
    /// `ReplicaConfig::new_group`: a group created now on every voter.
    pub new_group: bool,
}

/// Where a shard sends its Raft messages: `(destination node, frame)`, the frame
/// being [`sluice_engine::raft_frame`] bytes. Must not block.
#[derive(Clone)]
pub struct RaftOutbox(pub Arc<dyn Fn(u64, Vec<u8>) + Send + Sync>);

impl std::fmt::Debug for RaftOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftOutbox")
    }
}

/// Every hosted partition's Raft leader and term, as the shards last saw them (written
/// once per Raft tick per shard; read by routing and metadata).
pub type LeaderBoard = Mutex<BTreeMap<TopicPartition, (Option<u64>, u64)>>;

/// The outcome of opening one partition.
pub(crate) type Opened = (TopicPartition, Result<RecoveryReport, EngineError>);

/// What a shard reports for the stats (the handle adds the directory sizes).
#[derive(Debug)]
pub(crate) struct ShardReport {
    pub core: sluice_engine::ShardStats,
    pub cycles: u64,
    pub requests: u64,
    pub cycle_requests_seen_max: u64,
    pub flush_latency: LatencyHistogram,
    pub partitions: Vec<PartitionStats>,
}

/// What a shard reports once its initial partitions are open: every outcome, in
/// order, stopping at the first failure.
pub(crate) struct Started {
    pub shard: usize,
    pub opened: Vec<Opened>,
    pub elapsed: Duration,
}

/// Everything a shard thread is given.
pub(crate) struct ShardTask {
    pub index: usize,
    pub provider: GlommioProvider,
    pub config: ShardConfig,
    pub rx: async_channel::Receiver<Request>,
    pub initial: Vec<OpenSpec>,
    pub started: mpsc::Sender<Started>,
    pub clean_stop: Arc<AtomicBool>,
    pub done: oneshot::Sender<Result<(), EngineError>>,
    pub cycle_requests_max: usize,
    pub tick_ms: u64,
    /// Cadence of `Shard::raft_tick` while the shard holds a group with peers.
    pub raft_tick_ms: u64,
    pub outbox: Option<RaftOutbox>,
    pub leaders: Arc<LeaderBoard>,
}

/// Wall-clock milliseconds since the epoch, the time the pure core is given.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A request waiting inside the core for its reply.
struct Pending {
    tp: TopicPartition,
    reply: oneshot::Sender<Reply>,
    /// Batch bytes of a produce (counted once it is appended and answered).
    produce_bytes: u64,
}

/// Per-partition counters the driver keeps (the core counts per shard).
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    produce_requests: u64,
    produce_bytes: u64,
    fetch_requests: u64,
    fetch_bytes: u64,
    errors: u64,
}

struct Driver {
    index: usize,
    shard: Shard<GlommioProvider>,
    pending: HashMap<Token, Pending>,
    next_token: Token,
    /// Only for partitions the shard owns, so unknown names cannot grow it.
    counters: HashMap<TopicPartition, Counters>,
    cycles: u64,
    requests: u64,
    cycle_requests_seen_max: u64,
    flush_latency: LatencyHistogram,
    outbox: Option<RaftOutbox>,
    leaders: Arc<LeaderBoard>,
    raft_tick: Duration,
    last_raft_tick: Instant,
    /// Raft messages dropped for want of an outbox or a partition.
    raft_dropped: u64,
    /// `Shard::has_peers`, refreshed when partitions open or go (it decides the wait of
    /// every cycle, so it is not recomputed over all partitions each time).
    has_peers: bool,
    /// The group commits in flight (module docs): each completes with what
    /// `Shard::finish_flush` needs, when it began and its fdatasyncs' results.
    syncing: FuturesUnordered<LocalBoxFuture<'static, Synced>>,
}

/// A completed group commit.
type Synced = (FlushInFlight, Instant, Vec<std::io::Result<()>>);

impl ShardTask {
    /// The shard thread's whole life.
    pub(crate) async fn run(self) {
        let ShardTask {
            index,
            provider,
            config,
            rx,
            initial,
            started,
            clean_stop,
            done,
            cycle_requests_max,
            tick_ms,
            raft_tick_ms,
            outbox,
            leaders,
        } = self;
        let mut d = Driver {
            index,
            shard: Shard::new(provider, config),
            pending: HashMap::new(),
            next_token: 0,
            counters: HashMap::new(),
            cycles: 0,
            requests: 0,
            cycle_requests_seen_max: 0,
            flush_latency: LatencyHistogram::default(),
            outbox,
            leaders,
            raft_tick: Duration::from_millis(raft_tick_ms.max(1)),
            last_raft_tick: Instant::now(),
            raft_dropped: 0,
            has_peers: false,
            syncing: FuturesUnordered::new(),
        };

        let t0 = Instant::now();
        let mut opened = Vec::with_capacity(initial.len());
        for spec in initial {
            let tp = spec.tp.clone();
            let r = d.open(spec).await;
            let failed = r.is_err();
            opened.push((tp, r));
            if failed {
                break;
            }
        }
        // Nobody listening means the engine gave up starting: the loop below still
        // runs until the queue is closed.
        let _ = started.send(Started {
            shard: index,
            opened,
            elapsed: t0.elapsed(),
        });
        drop(started);

        d.run_loop(&rx, cycle_requests_max.max(1), tick_ms.max(1))
            .await;
        // A group commit still running completes before anything closes.
        d.finish_syncing().await;

        let result = if clean_stop.load(Ordering::SeqCst) {
            let r = d.shard.close(now_ms()).await;
            d.deliver();
            if let Err(e) = &r {
                tracing::error!(shard = index, error = %e, "engine: closing a partition failed");
            }
            r
        } else {
            tracing::warn!(
                shard = index,
                "engine: stopped without shutdown; partitions not closed cleanly"
            );
            Ok(())
        };
        // Unanswered requests (only after an unclean stop) see their sender dropped.
        d.pending.clear();
        let _ = done.send(result);
    }
}

impl Driver {
    async fn open(&mut self, spec: OpenSpec) -> Result<RecoveryReport, EngineError> {
        let OpenSpec {
            tp,
            log,
            voters,
            campaign,
            new_group,
        } = spec;
        let single = voters.len() == 1;
        let r = self
            .shard
            .open_replicated(tp.clone(), log, voters, new_group, now_ms())
            .await;
        if r.is_ok() {
            if campaign && !single {
                let _ = self.shard.campaign(&tp, now_ms()).await;
            }
            self.counters.insert(tp, Counters::default());
        }
        self.has_peers = self.shard.has_peers();
        self.publish_leaders();
        self.send_messages();
        r
    }

    /// Hands every Raft message the replicas queued to the outbox, one frame per peer.
    fn send_messages(&mut self) {
        let out = self.shard.take_messages();
        if out.is_empty() {
            return;
        }
        match &self.outbox {
            Some(outbox) => {
                for (to, msgs) in out {
                    (outbox.0)(to, sluice_engine::raft_frame::encode(&msgs));
                }
            }
            None => self.raft_dropped += out.values().map(|v| v.len() as u64).sum::<u64>(),
        }
    }

    /// Writes every partition's leader and term to the shared board.
    fn publish_leaders(&self) {
        let mut board = self
            .leaders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (tp, leader, term) in self.shard.leaders() {
            // Every Raft tick: no key copy unless the partition is new to the board.
            let changed = match board.get_mut(tp) {
                Some(entry) => {
                    let changed = entry.0 != leader;
                    *entry = (leader, term);
                    changed
                }
                None => {
                    board.insert(tp.clone(), (leader, term));
                    true
                }
            };
            if changed {
                tracing::info!(shard = self.index, %tp, ?leader, term, "raft: leader changed");
            }
        }
    }

    /// A Raft tick when `raft_tick` passed (only while the shard has peers).
    async fn raft_tick_if_due(&mut self) {
        if self.last_raft_tick.elapsed() >= self.raft_tick && self.has_peers {
            self.last_raft_tick = Instant::now();
            self.shard.raft_tick(now_ms()).await;
            self.publish_leaders();
            self.deliver();
        }
    }

    async fn run_loop(
        &mut self,
        rx: &async_channel::Receiver<Request>,
        cycle_max: usize,
        tick_ms: u64,
    ) {
        let tick = Duration::from_millis(tick_ms);
        let mut last_tick = Instant::now();
        let mut batch: Vec<Request> = Vec::with_capacity(cycle_max);
        loop {
            // 1. Wait for work, for the group commit in flight, or for the next tick
            //    while something waits on one (an idle shard still ticks every
            //    HOUSEKEEPING, for retention).
            let first = {
                let mut wait = if self.pending.is_empty() {
                    HOUSEKEEPING
                } else {
                    tick.saturating_sub(last_tick.elapsed())
                };
                if self.has_peers {
                    wait = wait.min(self.raft_tick.saturating_sub(self.last_raft_tick.elapsed()));
                }
                let recv = std::pin::pin!(rx.recv());
                let timer = std::pin::pin!(glommio::timer::sleep(wait));
                let synced = if self.syncing.is_empty() {
                    Either::Right(futures_util::future::pending::<Option<Synced>>())
                } else {
                    Either::Left(self.syncing.next())
                };
                match select(select(recv, synced), timer).await {
                    Either::Left((Either::Left((r, _)), _)) => r.ok(),
                    // 2. The group commit completed.
                    Either::Left((Either::Right((Some(synced), _)), _)) => {
                        self.finish_flush(synced).await;
                        self.begin_flush().await;
                        self.send_messages();
                        self.tick_if_due(&mut last_tick, tick).await;
                        continue;
                    }
                    // (Polled only while a group commit is in flight.)
                    Either::Left((Either::Right((None, _)), _)) => continue,
                    // Time for a tick; the queue may still hold nothing.
                    Either::Right(((), _)) => match rx.try_recv() {
                        Ok(req) => Some(req),
                        Err(async_channel::TryRecvError::Empty) => {
                            self.tick_if_due(&mut last_tick, tick).await;
                            self.raft_tick_if_due().await;
                            self.begin_flush().await;
                            self.send_messages();
                            continue;
                        }
                        Err(async_channel::TryRecvError::Closed) => None,
                    },
                }
            };
            // `None`: closed and drained (recv only fails then).
            let Some(first) = first else { break };
            batch.push(first);
            // 2. Whatever else is queued, up to the cap.
            while batch.len() < cycle_max {
                match rx.try_recv() {
                    Ok(req) => batch.push(req),
                    Err(_) => break,
                }
            }
            self.cycles += 1;
            self.requests += batch.len() as u64;
            self.cycle_requests_seen_max = self.cycle_requests_seen_max.max(batch.len() as u64);
            // 3. Each request, in queue order.
            let now = now_ms();
            for req in batch.drain(..) {
                self.handle(req, now).await;
            }
            // acks=none and immediate reads need not wait for the fsync.
            self.deliver();
            // A leader's appends go to its followers now, so their fsyncs run alongside
            // its own (messages that must wait for durability stay held by the replica
            // until the flush releases them).
            self.send_messages();
            // Raft ticks at their own cadence (heartbeats, elections).
            self.raft_tick_if_due().await;
            // 4. The group commit, unless one is in flight (this cycle's appends then
            //    join the next).
            self.begin_flush().await;
            // Messages that had to wait for durability (a follower's append
            // acknowledgement, a vote) go out once a group commit releases them.
            self.send_messages();
            // 5. Deadlines.
            self.tick_if_due(&mut last_tick, tick).await;
        }
    }

    /// Starts a group commit of every dirty partition that has no fdatasync in flight
    /// (another group's). Syncs that cannot run detached (direct files) are done inside
    /// `begin_flush`, and their replies delivered here.
    async fn begin_flush(&mut self) {
        if !self.shard.can_flush() {
            return;
        }
        let started = Instant::now();
        let flush = self.shard.begin_flush(now_ms()).await;
        self.deliver();
        match flush {
            Some(mut flush) => {
                let syncs = std::mem::take(&mut flush.syncs);
                self.syncing.push(
                    async move {
                        let results = futures_util::future::join_all(syncs).await;
                        (flush, started, results)
                    }
                    .boxed_local(),
                );
            }
            None => self.record_flush(started),
        }
    }

    /// Completes a group commit with its results.
    async fn finish_flush(&mut self, (flush, started, results): Synced) {
        self.shard.finish_flush(flush, results, now_ms()).await;
        self.record_flush(started);
        self.deliver();
    }

    /// Waits for every group commit in flight and completes it.
    async fn finish_syncing(&mut self) {
        while let Some(synced) = self.syncing.next().await {
            self.finish_flush(synced).await;
            self.send_messages();
        }
    }

    fn record_flush(&mut self, started: Instant) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.flush_latency.record(us);
    }

    /// Deadline checks (and, inside `Shard::tick`, retention) once `tick` passed.
    async fn tick_if_due(&mut self, last_tick: &mut Instant, tick: Duration) {
        if last_tick.elapsed() >= tick {
            *last_tick = Instant::now();
            self.shard.tick(now_ms()).await;
            self.deliver();
        }
    }

    fn token(&mut self) -> Token {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        t
    }

    async fn handle(&mut self, req: Request, now: i64) {
        match req {
            Request::Produce {
                tp,
                batch,
                acks,
                timeout_ms,
                reply,
            } => {
                if let Some(c) = self.counters.get_mut(&tp) {
                    c.produce_requests += 1;
                }
                let produce_bytes = batch.len() as u64;
                let token = self.token();
                self.shard
                    .produce(now, token, &tp, batch, acks, timeout_ms)
                    .await;
                self.pending.insert(
                    token,
                    Pending {
                        tp,
                        reply,
                        produce_bytes,
                    },
                );
            }
            Request::Fetch {
                tp,
                offset,
                max_bytes,
                max_wait_ms,
                local,
                reply,
            } => {
                if let Some(c) = self.counters.get_mut(&tp) {
                    c.fetch_requests += 1;
                }
                let token = self.token();
                if local {
                    self.shard
                        .fetch_local(now, token, &tp, offset, max_bytes, max_wait_ms)
                        .await;
                } else {
                    self.shard
                        .fetch(now, token, &tp, offset, max_bytes, max_wait_ms)
                        .await;
                }
                self.pending.insert(
                    token,
                    Pending {
                        tp,
                        reply,
                        produce_bytes: 0,
                    },
                );
            }
            Request::ListOffsets { tp, query, reply } => {
                let r = self.shard.list_offsets(&tp, query).await;
                if r.is_err() {
                    if let Some(c) = self.counters.get_mut(&tp) {
                        c.errors += 1;
                    }
                }
                let _ = reply.send(r);
            }
            Request::Open { partitions, reply } => {
                let mut out = Vec::with_capacity(partitions.len());
                for spec in partitions {
                    let tp = spec.tp.clone();
                    let r = self.open(spec).await;
                    out.push((tp, r));
                }
                let _ = reply.send(out);
            }
            Request::Step { messages } => {
                for (tp, msg) in messages {
                    if let Err(e) = self.shard.step(&tp, msg, now).await {
                        self.raft_dropped += 1;
                        tracing::trace!(shard = self.index, %tp, error = %e, "raft message dropped");
                    }
                }
                self.deliver();
            }
            Request::Delete { partitions, reply } => {
                let mut out = Vec::with_capacity(partitions.len());
                for tp in partitions {
                    let r = self.shard.delete_partition(&tp).await;
                    self.counters.remove(&tp);
                    self.leaders
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&tp);
                    out.push((tp, r));
                }
                self.has_peers = self.shard.has_peers();
                // The deleted partitions' waiters were answered `UnknownPartition`.
                self.deliver();
                let _ = reply.send(out);
            }
            Request::Stats { reply } => {
                let report = self.report();
                let _ = reply.send(report);
            }
        }
    }

    /// Sends every reply the core has queued.
    fn deliver(&mut self) {
        while let Some((token, reply)) = self.shard.poll_reply() {
            let pending = self.pending.remove(&token);
            assert!(
                pending.is_some(),
                "node: shard {} answered token {token}, which it was never given",
                self.index
            );
            let Some(p) = pending else { continue };
            if let Some(c) = self.counters.get_mut(&p.tp) {
                match &reply {
                    Reply::Fetched { batches, .. } => c.fetch_bytes += batches.bytes.len() as u64,
                    Reply::Failed(_) => c.errors += 1,
                    Reply::Produced { .. } => c.produce_bytes += p.produce_bytes,
                }
            }
            // The caller may have given up (its future dropped): nothing to do.
            let _ = p.reply.send(reply);
        }
    }

    fn report(&self) -> ShardReport {
        let mut partitions = Vec::with_capacity(self.counters.len());
        let tps: Vec<TopicPartition> = self.shard.partitions().cloned().collect();
        for tp in tps {
            let c = self.counters.get(&tp).copied().unwrap_or_default();
            let log = self.shard.partition_stats(&tp).unwrap_or_default();
            partitions.push(PartitionStats {
                tp,
                high_watermark: log.high_watermark,
                log_start: log.log_start,
                log_end: log.log_end,
                log_bytes: log.log_bytes,
                segments: log.segments,
                raft_term: log.term,
                is_leader: log.is_leader,
                caught_up_at: log.caught_up_at,
                catching_up: log.catching_up,
                log_end_at_open: log.log_end_at_open,
                produce_requests: c.produce_requests,
                produce_bytes: c.produce_bytes,
                fetch_requests: c.fetch_requests,
                fetch_bytes: c.fetch_bytes,
                errors: c.errors,
            });
        }
        ShardReport {
            core: self.shard.stats(),
            cycles: self.cycles,
            requests: self.requests,
            cycle_requests_seen_max: self.cycle_requests_seen_max,
            flush_latency: self.flush_latency.clone(),
            partitions,
        }
    }
}
