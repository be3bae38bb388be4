//! Starting the shard threads and talking to them: [`Engine::start`] and the
//! cloneable [`EngineHandle`].
//!
//! Call order: `Engine::start` (blocking: loads the registry, spawns the shards,
//! recovers every partition, returns once all are open); then, from any thread or
//! runtime, any mix of the handle's methods; finally [`EngineHandle::shutdown`] for a
//! clean stop. Dropping every handle without `shutdown` stops the shards without
//! closing the partitions (the next start recovers as after a crash) and blocks until
//! the shard threads have exited.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use sluice_engine::{
    shard_for, AckPolicy, EngineError, OffsetQuery, Reply, ShardConfig, TopicPartition, WaitLimits,
};
use sluice_io::DataFileMode;
use sluice_storage::{Batches, LogConfig, RecoveryReport};
use thiserror::Error;

use crate::driver::{
    LeaderBoard, OpenSpec, Opened, RaftOutbox, Request, ShardReport, ShardTask, Started,
};
use crate::provider::{remove_dir_durable, GlommioProvider};
use crate::stats::{EngineStats, PartitionStats, ShardSnapshot};
use crate::topics::{
    validate_partitions, validate_topic_name, RegistryError, TopicConfig, TopicError, TopicInfo,
    TopicRegistry,
};

/// Most shards an engine runs.
pub const SHARDS_MAX: usize = 256;
/// Largest per-shard queue.
pub const QUEUE_DEPTH_MAX: usize = 1 << 20;
/// Longest tick interval.
pub const TICK_MS_MAX: u64 = 1_000;
/// Longest long-poll a fetch may ask for; longer waits are cut to this.
pub const FETCH_WAIT_MS_MAX: u32 = 60_000;
/// Longest a produce may wait for durability; longer timeouts are cut to this.
pub const PRODUCE_TIMEOUT_MS_MAX: u32 = 300_000;
/// Most bytes one fetch reads (it still returns at least one whole batch); larger
/// `max_bytes` are cut to this, so one request cannot pull a whole log into memory.
pub const FETCH_BYTES_MAX: u32 = 64 << 20;

/// How to run the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Holds `topics.json` and `topics/<topic>/<partition>/`.
    pub data_dir: PathBuf,
    /// Shard threads; `None`: one per core this process may run on.
    pub shards: Option<usize>,
    /// Pin each shard thread to its own CPU (`Placement::Fixed`) when there are no
    /// more shards than CPUs; otherwise they are unbound.
    pub pin_shards: bool,
    /// Capacity of each shard's request queue. A caller that finds it full waits.
    pub queue_depth: usize,
    /// Most requests one flush cycle takes from the queue.
    pub cycle_requests_max: usize,
    /// Interval of the shard's deadline checks (ack timeouts, long-poll expiry)
    /// while something waits.
    pub tick_ms: u64,
    /// How partition data files do their I/O (default `Direct`; the server's `auto`
    /// falls back to `Buffered` where the file system refuses O_DIRECT).
    pub data_file_mode: DataFileMode,
    /// The broker's log defaults; topics override retention and segment size.
    pub log_defaults: LogConfig,
    /// Per-partition limits on waiting produce and fetch requests.
    pub wait_limits: WaitLimits,
    /// How often each shard applies its partitions' retention.
    pub retention_interval_ms: u64,
    /// This node's id in every Raft group (1 on a single-node broker).
    pub node_id: u64,
    /// Raft tick interval of groups with peers: heartbeats every 2 ticks, election
    /// timeouts drawn from [10, 20) ticks.
    pub raft_tick_ms: u64,
    /// How often (ms) a leader checks whether to hand a partition back to its preferred
    /// leader (the first of its replicas) when that one is up and caught up; 0: never.
    pub leader_rebalance_ms: u64,
    /// Cluster mode: the voters of the controller group (`__cluster/0`, opened at start
    /// on its shard). `None`: a single-node broker with its topic registry.
    pub controller_voters: Option<Vec<u64>>,
    /// Where the shards send Raft messages to peers (cluster mode).
    pub outbox: Option<RaftOutbox>,
}

impl EngineConfig {
    /// The defaults, with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            shards: None,
            pin_shards: true,
            queue_depth: 1024,
            cycle_requests_max: 1024,
            tick_ms: 5,
            data_file_mode: DataFileMode::default(),
            log_defaults: LogConfig::default(),
            wait_limits: WaitLimits::default(),
            retention_interval_ms: 30_000,
            node_id: 1,
            raft_tick_ms: 30,
            leader_rebalance_ms: 10_000,
            controller_voters: None,
            outbox: None,
        }
    }

    fn validate(&self) -> Result<(), StartError> {
        let bad = |what: &str| Err(StartError::Config(what.to_string()));
        if let Some(n) = self.shards {
            if n == 0 || n > SHARDS_MAX {
                return bad("shards must be 1..=256");
            }
        }
        if self.queue_depth == 0 || self.queue_depth > QUEUE_DEPTH_MAX {
            return bad("queue_depth must be 1..=1048576");
        }
        if self.cycle_requests_max == 0 {
            return bad("cycle_requests_max must be positive");
        }
        if self.tick_ms == 0 || self.tick_ms > TICK_MS_MAX {
            return bad("tick_ms must be 1..=1000");
        }
        if self.wait_limits.acks_max == 0 || self.wait_limits.fetches_max == 0 {
            return bad("wait limits must be positive");
        }
        if self.node_id == 0 {
            return bad("node_id must be positive");
        }
        if self.raft_tick_ms == 0 || self.raft_tick_ms > TICK_MS_MAX {
            return bad("raft_tick_ms must be 1..=1000");
        }
        if let Some(v) = &self.controller_voters {
            if !v.contains(&self.node_id) || v.contains(&0) {
                return bad("controller voters must include this node and no id 0");
            }
        }
        self.log_defaults
            .validate()
            .map_err(|e| StartError::Config(format!("log defaults: {e}")))
    }
}

/// Why the engine did not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("bad engine config: {0}")]
    Config(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("starting shard {shard}: {reason}")]
    Spawn { shard: usize, reason: String },
    /// A partition could not be opened (recovered); nothing was served.
    #[error("recovering {tp}: {error}")]
    Recovery {
        tp: TopicPartition,
        error: EngineError,
    },
    #[error("shard {0} stopped while starting")]
    ShardDied(usize),
    /// A topic deleted before the last stop still has directories that could not be
    /// removed.
    #[error("finishing the deletion of topic {topic}: {reason}")]
    FinishDelete { topic: String, reason: String },
}

/// Why a data request failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RequestError {
    /// The shard answered with an error (see [`EngineError`] for which are definite).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine is shutting down: the request never reached a shard (definite).
    #[error("engine is shutting down")]
    ShuttingDown,
    /// The shard stopped before answering (an unclean stop): a produce may or may
    /// not have been appended (indeterminate).
    #[error("engine stopped before answering")]
    Stopped,
}

/// Where a produced batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// The partition's log start after the append.
    pub log_start: u64,
}

/// Whole stored batches from a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The batches, as stored, all below `high_watermark` (possibly none).
    pub batches: Batches,
    /// Offsets below this are committed.
    pub high_watermark: u64,
    /// First offset still stored.
    pub log_start: u64,
}

/// What `start` recovered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupReport {
    /// Every partition opened, with what its recovery found.
    pub partitions: Vec<(TopicPartition, RecoveryReport)>,
    /// Wall time from `start` to every partition open.
    pub elapsed: Duration,
}

impl StartupReport {
    /// Whether every partition had been closed cleanly.
    pub fn all_clean(&self) -> bool {
        self.partitions.iter().all(|(_, r)| r.clean)
    }

    /// The recovery of `tp`, if it was opened at start.
    pub fn partition(&self, tp: &TopicPartition) -> Option<&RecoveryReport> {
        self.partitions
            .iter()
            .find(|(t, _)| t == tp)
            .map(|(_, r)| r)
    }
}

/// Starts engines. See [`Engine::start`].
#[derive(Debug)]
pub struct Engine;

struct ShardThread {
    join: glommio::ExecutorJoinHandle<()>,
    done: oneshot::Receiver<Result<(), EngineError>>,
}

struct Inner {
    data_dir: PathBuf,
    log_defaults: LogConfig,
    queue_depth: usize,
    queues: Vec<async_channel::Sender<Request>>,
    cpus: Vec<Option<usize>>,
    /// Short critical sections only, never held across an `.await`.
    registry: Mutex<TopicRegistry>,
    /// Serialises create, delete and shutdown (held across their awaits), so their
    /// steps on the shards never interleave.
    admin: futures_util::lock::Mutex<()>,
    closing: AtomicBool,
    clean_stop: Arc<AtomicBool>,
    threads: Mutex<Option<Vec<ShardThread>>>,
    startup: StartupReport,
    queue_full_waits: AtomicU64,
    node_id: u64,
    leaders: Arc<LeaderBoard>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.data_dir)
            .field("shards", &self.queues.len())
            .field("queue_depth", &self.queue_depth)
            .field("closing", &self.closing.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A replica for [`EngineHandle::open_replicas`].
#[derive(Debug, Clone)]
pub struct ReplicaToOpen {
    /// Its partition.
    pub tp: TopicPartition,
    /// Its log's configuration.
    pub log: LogConfig,
    /// Every voter of its group, this node among them.
    pub voters: Vec<u64>,
    /// Start an election at once (the preferred leader of a new group).
    pub campaign: bool,
    /// The group is created now on every voter: opened without `raft.state`, the
    /// replica votes normally (`sluice_replica::ReplicaConfig::new_group`).
    pub new_group: bool,
}

/// A cloneable, thread-safe handle to a running engine. Its futures need no
/// particular runtime (they wait on `async-channel` sends and `futures-channel`
/// oneshots), so tokio tasks, glommio tasks or `block_on` can drive them.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves plain data (a registry whose every
    // change is persisted before it is applied): keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The CPUs this process may run on (its affinity mask), capped at the parallelism
/// std reports (which also honours cgroup quotas).
fn usable_cpus() -> Vec<usize> {
    let count = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: `cpu_set_t` is plain data (zeroed is the empty set), and
    // `sched_getaffinity` writes at most `size_of::<cpu_set_t>()` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return (0..count).collect();
    }
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(1024);
    // SAFETY: `set` is initialised and `cpu < CPU_SETSIZE`.
    let cpus: Vec<usize> = (0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .take(count)
        .collect();
    if cpus.is_empty() {
        (0..count).collect()
    } else {
        cpus
    }
}

impl Engine {
    /// Loads the topic registry, finishes interrupted topic deletions, spawns the
    /// shard threads and opens (recovers) every partition on its shard; returns once
    /// all are open. Blocking: call it before starting request handling (or from a
    /// blocking context). If any partition fails to open, the shards that started
    /// close theirs cleanly and the error is returned.
    pub fn start(config: EngineConfig) -> Result<EngineHandle, StartError> {
        let t0 = Instant::now();
        config.validate()?;
        let mut registry = TopicRegistry::load(&config.data_dir)?;
        finish_deletions(&mut registry)?;
        warn_unregistered(&registry);

        let cpus = usable_cpus();
        let shards = config.shards.unwrap_or(cpus.len()).clamp(1, SHARDS_MAX);
        let pin = config.pin_shards && shards <= cpus.len();
        let mut assigned: Vec<Vec<OpenSpec>> = vec![Vec::new(); shards];
        for t in registry.list() {
            let log = t.config.log_config(&config.log_defaults);
            for tp in t.topic_partitions() {
                let s = shard_for(&tp.topic, tp.partition, shards);
                if let Some(v) = assigned.get_mut(s) {
                    v.push(OpenSpec {
                        tp,
                        log: log.clone(),
                        voters: vec![config.node_id],
                        campaign: false,
                        new_group: false,
                    });
                }
            }
        }
        if let Some(voters) = &config.controller_voters {
            let tp = controller_partition();
            let s = shard_for(&tp.topic, tp.partition, shards);
            if let Some(v) = assigned.get_mut(s) {
                v.push(OpenSpec {
                    tp,
                    log: controller_log(&config.log_defaults),
                    voters: voters.clone(),
                    campaign: false,
                    // Its vote guard tells a node that started empty where it caught
                    // up (`Replica::caught_up_at`): the join point.
                    new_group: false,
                });
            }
        }
        let leaders: Arc<LeaderBoard> = Arc::new(Mutex::new(BTreeMap::new()));

        let clean_stop = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = mpsc::channel();
        let mut queues = Vec::with_capacity(shards);
        let mut threads = Vec::with_capacity(shards);
        let mut placed = Vec::with_capacity(shards);
        let mut spawn_error = None;
        for (index, initial) in assigned.into_iter().enumerate() {
            let (tx, rx) = async_channel::bounded(config.queue_depth);
            let (done_tx, done_rx) = oneshot::channel();
            let cpu = if pin { cpus.get(index).copied() } else { None };
            let placement = match cpu {
                Some(c) => glommio::Placement::Fixed(c),
                None => glommio::Placement::Unbound,
            };
            let task = ShardTask {
                index,
                provider: GlommioProvider::new(&config.data_dir, config.data_file_mode),
                config: ShardConfig {
                    wait_limits: config.wait_limits,
                    retention_interval_ms: i64::try_from(config.retention_interval_ms)
                        .unwrap_or(i64::MAX),
                    node_id: config.node_id,
                    leader_rebalance_ms: i64::try_from(config.leader_rebalance_ms)
                        .unwrap_or(i64::MAX),
                },
                rx,
                initial,
                started: started_tx.clone(),
                clean_stop: Arc::clone(&clean_stop),
                done: done_tx,
                cycle_requests_max: config.cycle_requests_max,
                tick_ms: config.tick_ms,
                raft_tick_ms: config.raft_tick_ms,
                outbox: config.outbox.clone(),
                leaders: Arc::clone(&leaders),
            };
            let spawned = sluice_io::executor_builder(placement)
                .name(&format!("sluice-shard-{index}"))
                .spawn(move || task.run());
            match spawned {
                Ok(join) => {
                    queues.push(tx);
                    placed.push(cpu);
                    threads.push(ShardThread {
                        join,
                        done: done_rx,
                    });
                }
                Err(e) => {
                    spawn_error = Some(StartError::Spawn {
                        shard: index,
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        drop(started_tx);

        let mut startup = StartupReport::default();
        let mut failure = spawn_error;
        let mut reported = vec![false; threads.len()];
        for _ in 0..threads.len() {
            let Ok(Started {
                shard,
                opened,
                elapsed,
            }) = started_rx.recv()
            else {
                // Every started shard reports before serving; a closed channel means
                // one died (a panic on its thread).
                let died = reported.iter().position(|r| !r).unwrap_or(0);
                failure.get_or_insert(StartError::ShardDied(died));
                break;
            };
            if let Some(r) = reported.get_mut(shard) {
                *r = true;
            }
            tracing::debug!(
                shard,
                partitions = opened.len(),
                elapsed_ms = elapsed.as_millis() as u64,
                "engine: shard recovered"
            );
            for (tp, r) in opened {
                match r {
                    Ok(report) => startup.partitions.push((tp, report)),
                    Err(error) => {
                        failure.get_or_insert(StartError::Recovery { tp, error });
                    }
                }
            }
        }
        startup.partitions.sort_by(|a, b| a.0.cmp(&b.0));
        startup.elapsed = t0.elapsed();

        let inner = Inner {
            data_dir: config.data_dir.clone(),
            log_defaults: config.log_defaults.clone(),
            queue_depth: config.queue_depth,
            queues,
            cpus: placed,
            registry: Mutex::new(registry),
            admin: futures_util::lock::Mutex::new(()),
            closing: AtomicBool::new(false),
            clean_stop,
            threads: Mutex::new(Some(threads)),
            startup,
            queue_full_waits: AtomicU64::new(0),
            node_id: config.node_id,
            leaders,
        };
        if let Some(e) = failure {
            // Close what did open cleanly, so the failed start costs no rescan.
            inner.stop_threads(true);
            return Err(e);
        }
        let s = &inner.startup;
        let unclean = s.partitions.iter().filter(|(_, r)| !r.clean).count();
        tracing::info!(
            shards = inner.queues.len(),
            pinned = pin,
            partitions = s.partitions.len(),
            unclean,
            truncated_bytes = s
                .partitions
                .iter()
                .map(|(_, r)| r.truncated_bytes)
                .sum::<u64>(),
            batches_scanned = s
                .partitions
                .iter()
                .map(|(_, r)| r.batches_scanned)
                .sum::<u64>(),
            recovery_ms = s.elapsed.as_millis() as u64,
            "engine: started"
        );
        Ok(EngineHandle {
            inner: Arc::new(inner),
        })
    }
}

/// The controller group's partition: the cluster metadata log (cluster mode).
pub fn controller_partition() -> TopicPartition {
    TopicPartition::new(CONTROLLER_TOPIC, 0)
}

/// The topic of the controller log. Names starting `__` are reserved.
pub const CONTROLLER_TOPIC: &str = "__cluster";

/// The controller log's config: the broker's segment defaults, never any retention
/// (every node rebuilds the metadata by replaying it from the start).
pub fn controller_log(defaults: &LogConfig) -> LogConfig {
    LogConfig {
        retention_bytes_max: None,
        retention_age_ms_max: None,
        ..defaults.clone()
    }
}

/// Removes the directories of topics deleted before a crash, then forgets them.
fn finish_deletions(registry: &mut TopicRegistry) -> Result<(), StartError> {
    let names: Vec<String> = registry.deleting().map(str::to_string).collect();
    for name in names {
        let dir = registry.topic_dir(&name);
        let failed = |reason: String| StartError::FinishDelete {
            topic: name.clone(),
            reason,
        };
        remove_dir_durable(&dir).map_err(|e| failed(format!("removing {}: {e}", dir.display())))?;
        registry
            .forget_deleted(&name)
            .map_err(|e| failed(e.to_string()))?;
        tracing::info!(topic = %name, "engine: finished deleting topic");
    }
    Ok(())
}

/// Directories under `topics/` that no registered topic names are left alone (they
/// may be data whose registry was lost), but said.
fn warn_unregistered(registry: &TopicRegistry) {
    let Ok(entries) = std::fs::read_dir(registry.topics_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if registry.get(&name).is_none() {
            tracing::warn!(path = %entry.path().display(), "engine: directory of no registered topic, left alone");
        }
    }
}

impl Inner {
    fn shard_of(&self, tp: &TopicPartition) -> usize {
        shard_for(&tp.topic, tp.partition, self.queues.len())
    }

    /// Queues `req` on shard `shard`, waiting while the queue is full.
    async fn send(&self, shard: usize, req: Request) -> Result<(), RequestError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(RequestError::ShuttingDown);
        }
        let Some(q) = self.queues.get(shard) else {
            return Err(RequestError::ShuttingDown);
        };
        match q.try_send(req) {
            Ok(()) => Ok(()),
            Err(async_channel::TrySendError::Full(req)) => {
                self.queue_full_waits.fetch_add(1, Ordering::Relaxed);
                q.send(req).await.map_err(|_| RequestError::ShuttingDown)
            }
            Err(async_channel::TrySendError::Closed(_)) => Err(RequestError::ShuttingDown),
        }
    }

    /// Applies `change` to a copy of the registry (which persists it) and installs
    /// the copy on success, so readers (`topics`) never wait for an fsync. Only under
    /// the admin lock: that makes this read-modify-write the only writer.
    fn update_registry<T>(
        &self,
        change: impl FnOnce(&mut TopicRegistry) -> Result<T, TopicError>,
    ) -> Result<T, TopicError> {
        let mut copy = lock(&self.registry).clone();
        let out = change(&mut copy)?;
        *lock(&self.registry) = copy;
        Ok(out)
    }

    /// Sends a request built around a fresh oneshot and waits for its answer.
    async fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.send(shard, make(tx)).await?;
        rx.await.map_err(|_| RequestError::Stopped)
    }

    /// Groups `items` by the shard that owns each one's partition and sends every
    /// group to its shard at once (`make` builds the request around a group and its
    /// reply sender). Returns each group's partitions with its shard's answer.
    async fn per_shard<I, T>(
        &self,
        items: impl IntoIterator<Item = I>,
        tp: impl Fn(&I) -> &TopicPartition,
        make: impl Fn(Vec<I>, oneshot::Sender<T>) -> Request,
    ) -> Vec<(Vec<TopicPartition>, Result<T, RequestError>)> {
        let mut groups: Vec<Vec<I>> = (0..self.queues.len()).map(|_| Vec::new()).collect();
        for item in items {
            if let Some(v) = groups.get_mut(self.shard_of(tp(&item))) {
                v.push(item);
            }
        }
        let make = &make;
        let calls = groups
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(shard, group)| {
                let tps: Vec<TopicPartition> = group.iter().map(|i| tp(i).clone()).collect();
                async move { (tps, self.call(shard, move |reply| make(group, reply)).await) }
            });
        futures_util::future::join_all(calls).await
    }

    /// Closes the queues and joins the shard threads (blocking); `clean`: the shards
    /// close their partitions. Returns what the shards reported.
    fn stop_threads(&self, clean: bool) -> Option<Vec<Result<(), RequestError>>> {
        let threads = lock(&self.threads).take()?;
        self.closing.store(true, Ordering::SeqCst);
        self.clean_stop.store(clean, Ordering::SeqCst);
        for q in &self.queues {
            q.close();
        }
        let mut out = Vec::with_capacity(threads.len());
        for (i, mut t) in threads.into_iter().enumerate() {
            let joined = t.join.join();
            let r = match (t.done.try_recv(), joined) {
                (Ok(Some(Ok(()))), Ok(())) => Ok(()),
                (Ok(Some(Err(e))), _) => Err(RequestError::Engine(e)),
                (_, Err(e)) => {
                    tracing::error!(shard = i, error = %e, "engine: shard thread failed");
                    Err(RequestError::Stopped)
                }
                _ => Err(RequestError::Stopped),
            };
            out.push(r);
        }
        Some(out)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if lock(&self.threads).is_some() {
            tracing::warn!(
                "engine: dropped without shutdown; partitions are not closed cleanly and \
                 the next start recovers them by scanning"
            );
            let _ = self.stop_threads(false);
        }
    }
}

impl EngineHandle {
    /// Appends `batch` (a record batch as the producer encoded it) to `tp` and
    /// answers `(base_offset, last_offset)` per `acks`: after the append for
    /// `None`, after the group commit that makes it durable otherwise, or
    /// `TimedOut` (indeterminate) when that takes longer than `timeout_ms`
    /// (cut to [`PRODUCE_TIMEOUT_MS_MAX`]). Waits while the shard's queue is full.
    pub async fn produce(
        &self,
        tp: &TopicPartition,
        batch: Vec<u8>,
        acks: AckPolicy,
        timeout_ms: u32,
    ) -> Result<Produced, RequestError> {
        let timeout_ms = timeout_ms.min(PRODUCE_TIMEOUT_MS_MAX);
        let tp = tp.clone();
        let shard = self.inner.shard_of(&tp);
        let reply = self
            .inner
            .call(shard, |reply| Request::Produce {
                tp,
                batch,
                acks,
                timeout_ms,
                reply,
            })
            .await?;
        match reply {
            Reply::Produced {
                base_offset,
                last_offset,
                log_start,
            } => Ok(Produced {
                base_offset,
                last_offset,
                log_start,
            }),
            Reply::Failed(e) => Err(e.into()),
            Reply::Fetched { .. } => Err(unexpected("produce")),
        }
    }

    /// Whole committed batches of `tp` from the one holding `offset`, up to about
    /// `max_bytes` (cut to [`FETCH_BYTES_MAX`]; at least one batch). When `offset` is at the high watermark the
    /// fetch waits up to `max_wait_ms` (cut to [`FETCH_WAIT_MS_MAX`]) for data to
    /// become committed, then answers with what there is (possibly nothing).
    pub async fn fetch(
        &self,
        tp: &TopicPartition,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<Fetched, RequestError> {
        self.fetch_from(tp, offset, max_bytes, max_wait_ms, false)
            .await
    }

    /// [`EngineHandle::fetch`] from this node's replica whatever its role: what this
    /// replica knows to be committed (a follower's view may lag the leader's). For the
    /// node's own readers, such as the controller log.
    pub async fn fetch_local(
        &self,
        tp: &TopicPartition,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<Fetched, RequestError> {
        self.fetch_from(tp, offset, max_bytes, max_wait_ms, true)
            .await
    }

    async fn fetch_from(
        &self,
        tp: &TopicPartition,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
        local: bool,
    ) -> Result<Fetched, RequestError> {
        let max_wait_ms = max_wait_ms.min(FETCH_WAIT_MS_MAX);
        let max_bytes = max_bytes.min(FETCH_BYTES_MAX);
        let tp = tp.clone();
        let shard = self.inner.shard_of(&tp);
        let reply = self
            .inner
            .call(shard, |reply| Request::Fetch {
                tp,
                offset,
                max_bytes,
                max_wait_ms,
                local,
                reply,
            })
            .await?;
        match reply {
            Reply::Fetched {
                batches,
                high_watermark,
                log_start,
            } => Ok(Fetched {
                batches,
                high_watermark,
                log_start,
            }),
            Reply::Failed(e) => Err(e.into()),
            Reply::Produced { .. } => Err(unexpected("fetch")),
        }
    }

    /// The offset a consumer would seek to: the log start, the high watermark, or
    /// the first committed record at or after a timestamp (`None`: no such record).
    pub async fn list_offsets(
        &self,
        tp: &TopicPartition,
        query: OffsetQuery,
    ) -> Result<Option<u64>, RequestError> {
        let tp = tp.clone();
        let shard = self.inner.shard_of(&tp);
        let r = self
            .inner
            .call(shard, |reply| Request::ListOffsets { tp, query, reply })
            .await?;
        r.map_err(RequestError::from)
    }

    /// Creates a topic: validates it, persists it in the registry, then opens its
    /// partitions on their shards. If a partition fails to open, the ones that did
    /// are deleted and so is the registry entry.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<(), TopicError> {
        validate_topic_name(name)?;
        validate_partitions(partitions)?;
        config.validate(&self.inner.log_defaults)?;
        let _admin = self.inner.admin.lock().await;
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(TopicError::ShuttingDown);
        }
        let info = TopicInfo {
            name: name.to_string(),
            partitions,
            config,
        };
        let log_defaults = &self.inner.log_defaults;
        self.inner.update_registry(|reg| {
            if reg.get(name).is_some() {
                return Err(TopicError::Exists(name.to_string()));
            }
            let dir = reg.topic_dir(name);
            if reg.is_deleting(name) {
                // A delete that failed half-way: finish it first.
                remove_dir_durable(&dir)
                    .map_err(|e| TopicError::Storage(format!("removing {}: {e}", dir.display())))?;
                reg.forget_deleted(name)?;
            }
            if dir.exists() {
                return Err(TopicError::Storage(format!(
                    "{} exists but no topic {name} is registered: move it away or restore \
                     topics.json",
                    dir.display()
                )));
            }
            reg.create(info.clone(), log_defaults)
        })?;
        let log = info.config.log_config(&self.inner.log_defaults);
        let specs = info.topic_partitions().map(|tp| OpenSpec {
            tp,
            log: log.clone(),
            voters: vec![self.inner.node_id],
            campaign: false,
            new_group: false,
        });
        let failure = self
            .open_specs(specs)
            .await
            .into_iter()
            .find_map(|(tp, r)| r.err().map(|e| format!("opening {tp}: {e}")));
        if let Some(reason) = failure {
            tracing::error!(topic = name, %reason, "engine: create failed, rolling back");
            // Best effort: whatever is left is finished by the next start (the name
            // stays `deleting` if the directories could not be removed).
            let _ = self.delete_locked(name).await;
            return Err(TopicError::Storage(reason));
        }
        tracing::info!(topic = name, partitions, "engine: topic created");
        Ok(())
    }

    /// Deletes a topic: removes it from the registry (durably), deletes its
    /// partitions on their shards (their waiting requests fail `UnknownPartition`)
    /// and removes its directory.
    pub async fn delete_topic(&self, name: &str) -> Result<(), TopicError> {
        let _admin = self.inner.admin.lock().await;
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(TopicError::ShuttingDown);
        }
        if lock(&self.inner.registry).get(name).is_none() {
            return Err(TopicError::Unknown(name.to_string()));
        }
        self.delete_locked(name).await?;
        tracing::info!(topic = name, "engine: topic deleted");
        Ok(())
    }

    /// `delete_topic` under the admin lock.
    async fn delete_locked(&self, name: &str) -> Result<(), TopicError> {
        let info = self.inner.update_registry(|reg| reg.delete(name))?;
        let results = self
            .inner
            .per_shard(
                info.topic_partitions(),
                |tp| tp,
                |partitions, reply| Request::Delete { partitions, reply },
            )
            .await;
        let mut failure = None;
        for (_, r) in results {
            match r {
                Ok(deleted) => {
                    for (tp, r) in deleted {
                        match r {
                            // Never opened (a create that failed half-way).
                            Ok(()) | Err(EngineError::UnknownPartition(_)) => {}
                            Err(e) => {
                                failure.get_or_insert(format!("deleting {tp}: {e}"));
                            }
                        }
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e.to_string());
                }
            }
        }
        if let Some(reason) = failure {
            return Err(TopicError::Storage(reason));
        }
        self.inner.update_registry(|reg| {
            let dir = reg.topic_dir(name);
            remove_dir_durable(&dir)
                .map_err(|e| TopicError::Storage(format!("removing {}: {e}", dir.display())))?;
            reg.forget_deleted(name)
        })
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Vec<TopicInfo> {
        lock(&self.inner.registry).list().cloned().collect()
    }

    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Option<TopicInfo> {
        lock(&self.inner.registry).get(name).cloned()
    }

    /// Counters of every shard and partition. Asks every shard (a queue hop each):
    /// meant for a metrics scrape, not for a hot path.
    pub async fn stats(&self) -> Result<EngineStats, RequestError> {
        let asks = (0..self.inner.queues.len())
            .map(|shard| self.inner.call(shard, |reply| Request::Stats { reply }));
        let reports: Vec<Result<ShardReport, RequestError>> =
            futures_util::future::join_all(asks).await;
        let mut shards = Vec::with_capacity(reports.len());
        for (shard, r) in reports.into_iter().enumerate() {
            let r = r?;
            let mut partitions = r.partitions;
            partitions.sort_by(|a, b| a.tp.cmp(&b.tp));
            shards.push(ShardSnapshot {
                shard,
                cpu: self.inner.cpus.get(shard).copied().flatten(),
                core: r.core,
                queue_len: self.inner.queues.get(shard).map_or(0, |q| q.len()),
                queue_depth: self.inner.queue_depth,
                cycles: r.cycles,
                requests: r.requests,
                cycle_requests_seen_max: r.cycle_requests_seen_max,
                flush_latency: r.flush_latency,
                partitions,
            });
        }
        Ok(EngineStats {
            shards,
            queue_full_waits: self.inner.queue_full_waits.load(Ordering::Relaxed),
        })
    }

    /// The stats of partition `tp` (`None` if its shard does not hold it).
    pub async fn partition_stats(
        &self,
        tp: &TopicPartition,
    ) -> Result<Option<PartitionStats>, RequestError> {
        let shard = self.inner.shard_of(tp);
        let report = self
            .inner
            .call(shard, |reply| Request::Stats { reply })
            .await?;
        Ok(report.partitions.into_iter().find(|p| &p.tp == tp))
    }

    /// The stats of the partitions of topic `name`, in partition order (empty for an
    /// unknown topic; a partition its shard does not hold is left out). Asks only the
    /// shards that own them.
    pub async fn topic_stats(&self, name: &str) -> Result<Vec<PartitionStats>, RequestError> {
        let Some(info) = self.topic(name) else {
            return Ok(Vec::new());
        };
        let owners: BTreeSet<usize> = info
            .topic_partitions()
            .map(|tp| self.inner.shard_of(&tp))
            .collect();
        let asks = owners
            .into_iter()
            .map(|shard| self.inner.call(shard, |reply| Request::Stats { reply }));
        let reports: Vec<Result<ShardReport, RequestError>> =
            futures_util::future::join_all(asks).await;
        let mut partitions = Vec::new();
        for r in reports {
            partitions.extend(r?.partitions.into_iter().filter(|p| p.tp.topic == name));
        }
        partitions.sort_by_key(|p| p.tp.partition);
        Ok(partitions)
    }

    /// Stops the engine cleanly: refuses new requests (`ShuttingDown`), lets every
    /// queued request finish, makes every append durable (final group commit),
    /// closes every partition so the next start is a clean open, and joins the shard
    /// threads. Waiting producers whose batch the final flush made durable are
    /// acknowledged; waiting long-polls are answered with what there is. Calling it
    /// again returns `Ok(())`.
    pub async fn shutdown(&self) -> Result<(), RequestError> {
        let _admin = self.inner.admin.lock().await;
        let threads = lock(&self.inner.threads).take();
        let Some(threads) = threads else {
            return Ok(());
        };
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.clean_stop.store(true, Ordering::SeqCst);
        for q in &self.inner.queues {
            q.close();
        }
        let mut first_err = None;
        for (i, t) in threads.into_iter().enumerate() {
            // Wait without blocking the caller's executor; the join below is then
            // only the executor's teardown.
            let r = match t.done.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(RequestError::Engine(e)),
                Err(_) => Err(RequestError::Stopped),
            };
            if let Err(e) = t.join.join() {
                tracing::error!(shard = i, error = %e, "engine: shard thread failed");
                first_err.get_or_insert(RequestError::Stopped);
            }
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        tracing::info!(clean = first_err.is_none(), "engine: stopped");
        first_err.map_or(Ok(()), Err)
    }

    /// Opens partitions as replicas of their Raft groups (cluster mode: the node's
    /// share of the controller's assignments). A partition already open is reported
    /// `PartitionExists`.
    pub async fn open_replicas(&self, partitions: Vec<ReplicaToOpen>) -> Vec<Opened> {
        let specs = partitions.into_iter().map(|r| OpenSpec {
            tp: r.tp,
            log: r.log,
            voters: r.voters,
            campaign: r.campaign,
            new_group: r.new_group,
        });
        self.open_specs(specs).await
    }

    /// Opens each spec on its shard; one outcome per partition (a shard that could not
    /// be asked fails each of its partitions).
    async fn open_specs(&self, specs: impl IntoIterator<Item = OpenSpec>) -> Vec<Opened> {
        let results = self
            .inner
            .per_shard(
                specs,
                |s| &s.tp,
                |partitions, reply| Request::Open { partitions, reply },
            )
            .await;
        each_partition(results)
    }

    /// Deletes partitions and their files on their shards (cluster mode: a topic the
    /// controller deleted).
    pub async fn remove_partitions(
        &self,
        partitions: Vec<TopicPartition>,
    ) -> Vec<(TopicPartition, Result<(), EngineError>)> {
        let results = self
            .inner
            .per_shard(
                partitions,
                |tp| tp,
                |partitions, reply| Request::Delete { partitions, reply },
            )
            .await;
        each_partition(results)
    }

    /// Steps a peer's Raft frame ([`sluice_engine::raft_frame`]) into the shards that
    /// own its partitions, without waiting: a full shard queue drops the messages
    /// (Raft resends). Returns how many messages were queued.
    pub fn deliver_raft(
        &self,
        frame: &[u8],
    ) -> Result<usize, sluice_engine::raft_frame::RaftFrameError> {
        let messages = sluice_engine::raft_frame::decode(frame)?;
        let mut per_shard: BTreeMap<usize, Vec<(TopicPartition, sluice_replica::Message)>> =
            BTreeMap::new();
        for (tp, m) in messages {
            per_shard
                .entry(self.inner.shard_of(&tp))
                .or_default()
                .push((tp, m));
        }
        let mut queued = 0;
        for (shard, messages) in per_shard {
            let n = messages.len();
            if let Some(q) = self.inner.queues.get(shard) {
                if q.try_send(Request::Step { messages }).is_ok() {
                    queued += n;
                }
            }
        }
        Ok(queued)
    }

    /// Every hosted partition's Raft leader (if known) and term, as of the shards'
    /// last Raft tick.
    pub fn leaders(&self) -> BTreeMap<TopicPartition, (Option<u64>, u64)> {
        lock(&self.inner.leaders).clone()
    }

    /// `tp`'s leader as this node knows it (`None`: unknown, or not hosted here).
    pub fn leader_of(&self, tp: &TopicPartition) -> Option<u64> {
        lock(&self.inner.leaders).get(tp).and_then(|(l, _)| *l)
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// What the start recovered.
    pub fn startup(&self) -> &StartupReport {
        &self.inner.startup
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.inner.queues.len()
    }

    /// The shard that owns `tp`.
    pub fn shard_of(&self, tp: &TopicPartition) -> usize {
        self.inner.shard_of(tp)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }
}

/// One shard's answer to a per-partition request, with the partitions it was asked about.
type ShardAnswer<T> = (
    Vec<TopicPartition>,
    Result<Vec<(TopicPartition, Result<T, EngineError>)>, RequestError>,
);

/// The per-partition outcomes of [`Inner::per_shard`] calls, a shard that could not be
/// asked counting as a storage failure of each of its partitions.
fn each_partition<T>(groups: Vec<ShardAnswer<T>>) -> Vec<(TopicPartition, Result<T, EngineError>)> {
    let mut out = Vec::new();
    for (tps, r) in groups {
        match r {
            Ok(done) => out.extend(done),
            Err(e) => out.extend(
                tps.into_iter()
                    .map(|tp| (tp, Err(EngineError::StorageFailed(e.to_string())))),
            ),
        }
    }
    out
}

fn unexpected(what: &str) -> RequestError {
    // The shard answers a produce with Produced/Failed and a fetch with
    // Fetched/Failed; anything else is a bug in the core.
    tracing::error!("node: unexpected reply kind to {what}");
    RequestError::Engine(EngineError::StorageFailed(format!(
        "unexpected reply kind to {what}"
    )))
}

/// The handle crosses threads and tasks.
const _: () = {
    const fn is<T: Send + Sync + Clone + 'static>() {}
    is::<EngineHandle>();
};
