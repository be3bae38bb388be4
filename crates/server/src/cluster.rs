//! Cluster mode: this node's part of a multi-node cluster.
//!
//! - **Controller.** The metadata (nodes, topics, partition → replicas) is the state of
//!   `sluice-controller`'s [`ClusterState`], replicated as the records of the internal
//!   partition `__cluster/0`: a Raft group over every configured node (group 0), opened
//!   by the engine at start. Every node replays that log's committed records in order
//!   ([`Cluster::run`]) into its own copy of the state; the controller is whichever node
//!   leads the group. Admin requests are proposed there (as produce requests to
//!   `__cluster/0`); a node that does not lead it forwards them over the peer link.
//! - **Reconcile.** After each batch of applied records the node opens every partition
//!   the state assigns to it (as a replica of a Raft group over the assigned nodes; the
//!   preferred leader of a brand-new group campaigns at once) and deletes the partitions
//!   of deleted topics.
//! - **Join point.** A replica opened without `raft.state` keeps a vote guard (it may
//!   be on a node that lost its disk, `sluice-replica`) unless its group is new: a
//!   topic created at controller offset `created_at` ≥ this node's join point, the end
//!   offset of this node's `__cluster/0` log when that replica, started empty, caught
//!   up (it holds an entry its leader committed in its own term, or it was elected:
//!   everything committed before lies below it). The
//!   join point is kept in `<data_dir>/cluster.joined` once learnt; until then, and on
//!   a node whose controller log predates the file, every such replica is guarded. A
//!   topic whose creation was already in the local controller log when this run
//!   opened it is not new either: an earlier run made its directory, so a directory
//!   missing now was lost, not never made ([`is_new_group`]).
//! - **Node registry.** The configured nodes are registered by the controller leader
//!   (`RegisterNode`) whenever the state's copy differs from the configuration.
//! - **Peer links.** Raft frames from the shards go out through `sluice-peer`'s
//!   [`PeerLinks`]; frames that arrive are stepped into the owning shards.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use sluice_controller::{Applied, ClusterState, Command, NodeInfo};
use sluice_engine::{AckPolicy, TopicPartition};
use sluice_node::{
    controller_partition, EngineHandle, ReplicaToOpen, RequestError, TopicConfig as NodeTopicConfig,
};
use sluice_peer::{PeerHandler, PeerLinks};
use sluice_proto::wire::{ErrorBody, ErrorCode};
use sluice_proto::{BatchBuilder, Limits};
use sluice_storage::LogConfig;
use tokio::sync::watch;

use crate::service::BrokerService;

/// One node of the cluster, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub id: u64,
    /// Client QUIC address (host:port) clients are told to use.
    pub addr: String,
    /// Peer-link address.
    pub peer_addr: SocketAddr,
}

/// `[cluster]`, resolved.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub cluster_id: String,
    pub peer_listen: SocketAddr,
    /// Forward produce and fetch requests for partitions led elsewhere to the leader
    /// (instead of answering `NotLeader`).
    pub proxy: bool,
    pub nodes: Vec<NodeEntry>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub raft_tick_ms: u64,
    /// `[cluster] leader_rebalance_ms` (0: off).
    pub leader_rebalance_ms: u64,
}

/// How long an admin request waits for its command to be committed and applied.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a create waits (after applying) for its partitions to elect leaders.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(5);
/// Outcomes of commands proposed here, kept until read (bounded).
const OUTCOMES_MAX: usize = 1024;

/// This node's cluster machinery. See the module docs.
#[derive(Debug)]
pub struct Cluster {
    engine: EngineHandle,
    me: u64,
    settings: ClusterSettings,
    log_defaults: LogConfig,
    state: RwLock<ClusterState>,
    /// The next controller-log offset to apply (everything below is applied).
    applied: watch::Sender<u64>,
    outcomes: Mutex<BTreeMap<u64, Applied>>,
    opened: Mutex<BTreeSet<TopicPartition>>,
    links: OnceLock<Arc<PeerLinks>>,
    /// The join point (module docs), once known.
    joined: Mutex<Option<u64>>,
    /// The end of this node's `__cluster/0` log when this run opened it, once asked.
    controller_end_at_open: Mutex<Option<u64>>,
    /// False once this run cannot learn it: the `__cluster/0` replica was neither
    /// guarded nor caught up when asked (it opened with its state), so it never reports
    /// one, and asking its shard again every pass would be wasted.
    learnable: AtomicBool,
}

/// The file that keeps the join point.
pub const JOINED_FILE: &str = "cluster.joined";

/// Reads the join point kept in `dir` (`None`: not learnt, or unreadable).
fn load_joined(dir: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(JOINED_FILE)).ok()?;
    text.trim().parse().ok()
}

/// Whether a partition of a topic created at controller offset `created_at` is a new
/// group for a node that joined at `joined` and whose controller log ended at
/// `controller_end_at_open` when this run opened it: its replica, opened without state,
/// then has nothing to forget. Both must hold:
/// - the topic was created after the node joined (before that, a node that lost its
///   disk may have acknowledged its records);
/// - and this run learnt of it (`created_at` at or past the opened end): a topic whose
///   creation was already in the local controller log at start was applied by an
///   earlier run (only durable records are applied), which made the partition's
///   directory; a directory missing now was lost (removed by hand, say), and its
///   replica may have acknowledged records.
pub fn is_new_group(
    joined: Option<u64>,
    controller_end_at_open: Option<u64>,
    created_at: u64,
) -> bool {
    joined.is_some_and(|j| created_at >= j)
        && controller_end_at_open.is_some_and(|e| created_at >= e)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cluster {
    /// The cluster machinery over a started engine (in cluster mode).
    pub fn new(engine: EngineHandle, settings: ClusterSettings, log_defaults: LogConfig) -> Self {
        let me = engine.node_id();
        let (applied, _) = watch::channel(0);
        let joined = load_joined(engine.data_dir());
        Self {
            engine,
            me,
            settings,
            log_defaults,
            state: RwLock::new(ClusterState::new()),
            applied,
            outcomes: Mutex::new(BTreeMap::new()),
            opened: Mutex::new(BTreeSet::new()),
            links: OnceLock::new(),
            joined: Mutex::new(joined),
            controller_end_at_open: Mutex::new(None),
            learnable: AtomicBool::new(true),
        }
    }

    /// Learns from this node's `__cluster/0` replica, with one stats request while
    /// either is unknown: where its log ended when this run opened it (see
    /// [`is_new_group`]), and the join point, once it reports one (it started empty and
    /// heard a leader), which is kept.
    async fn learn_from_controller_replica(&self) {
        let want_join = lock(&self.joined).is_none() && self.learnable.load(Ordering::Relaxed);
        let want_end = lock(&self.controller_end_at_open).is_none();
        if !want_join && !want_end {
            return;
        }
        let Ok(Some(stats)) = self.engine.partition_stats(&controller_partition()).await else {
            return;
        };
        if want_end {
            *lock(&self.controller_end_at_open) = Some(stats.log_end_at_open);
        }
        if !want_join {
            return;
        }
        let Some(at) = stats.caught_up_at else {
            if !stats.catching_up {
                self.learnable.store(false, Ordering::Relaxed);
            }
            return;
        };
        let tmp = format!("{JOINED_FILE}.tmp");
        let kept = sluice_node::topics::write_atomic(
            self.engine.data_dir(),
            JOINED_FILE,
            &tmp,
            format!("{at}\n").as_bytes(),
        );
        match kept {
            Ok(()) => {
                tracing::info!(at, "cluster: join point learnt");
                *lock(&self.joined) = Some(at);
            }
            Err(e) => tracing::warn!(error = %e, "cluster: keeping the join point failed"),
        }
    }

    /// Installs the peer links (once, right after they start).
    pub fn set_links(&self, links: Arc<PeerLinks>) {
        let _ = self.links.set(links);
    }

    /// The peer links, once started.
    pub fn links(&self) -> Option<&Arc<PeerLinks>> {
        self.links.get()
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.me
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// A copy of the metadata as applied so far.
    pub fn state(&self) -> ClusterState {
        read(&self.state).clone()
    }

    /// Runs `f` over the metadata as applied so far.
    pub fn with_state<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        f(&read(&self.state))
    }

    /// The controller group's leader, if known.
    pub fn controller(&self) -> Option<u64> {
        self.engine.leader_of(&controller_partition())
    }

    /// The client address of node `id`: from the metadata, else the configuration.
    pub fn node_addr(&self, id: u64) -> Option<String> {
        if let Some(n) = read(&self.state).node(id) {
            return Some(n.addr.clone());
        }
        self.settings
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.addr.clone())
    }

    /// The leader of `tp`: this node's replica's view when it hosts `tp` (every node
    /// hosts the controller partition), else the preferred leader from the assignment.
    pub fn leader_of(&self, tp: &TopicPartition) -> Option<u64> {
        if *tp == controller_partition() || lock(&self.opened).contains(tp) {
            return self.engine.leader_of(tp);
        }
        read(&self.state)
            .partition(&tp.topic, tp.partition)
            .and_then(|a| a.preferred_leader())
    }

    /// Whether this node hosts a replica of `tp`.
    pub fn hosts(&self, tp: &TopicPartition) -> bool {
        lock(&self.opened).contains(tp)
    }

    /// Replays the controller log for ever: applies every committed record, then
    /// reconciles the partitions this node hosts, and registers the configured nodes
    /// when this node leads the controller. Returns when `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let tp = controller_partition();
        let limits = Limits::DEFAULT;
        let mut next = 0u64;
        // Registration proposes and waits for this loop to apply: its own task.
        let registrar = tokio::spawn(Arc::clone(&self).register_loop(stop.clone()));
        loop {
            if *stop.borrow() {
                break;
            }
            let fetched = tokio::select! {
                r = self.engine.fetch_local(&tp, next, 1 << 20, 200) => r,
                _ = stop.changed() => break,
            };
            match fetched {
                Ok(f) => {
                    for batch in sluice_proto::batches(&f.batches.bytes, &limits) {
                        let Ok(batch) = batch else {
                            tracing::error!("cluster: undecodable batch in the controller log");
                            break;
                        };
                        for r in batch.records() {
                            if r.offset < next {
                                continue;
                            }
                            let outcome = lock_write(&self.state)
                                .apply_record(r.offset, r.value.unwrap_or_default());
                            match &outcome {
                                Applied::Rejected(e) => {
                                    tracing::info!(offset = r.offset, error = %e, "cluster: command rejected")
                                }
                                a => {
                                    tracing::info!(offset = r.offset, applied = ?short(a), "cluster: applied")
                                }
                            }
                            let mut outcomes = lock(&self.outcomes);
                            outcomes.insert(r.offset, outcome);
                            while outcomes.len() > OUTCOMES_MAX {
                                outcomes.pop_first();
                            }
                        }
                    }
                    next = next.max(f.batches.next_offset);
                    self.learn_from_controller_replica().await;
                    self.reconcile().await;
                    self.applied.send_replace(next);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: reading the controller log");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
        let _ = registrar.await;
    }

    /// While this node leads the controller, registers the configured nodes the
    /// metadata lacks (checked every 200 ms).
    async fn register_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if self.controller() == Some(self.me) && !self.all_registered() {
                self.register_nodes().await;
            }
        }
    }

    /// Opens what the state assigns here and is not open yet; removes what is open
    /// and no longer assigned (a deleted topic).
    async fn reconcile(&self) {
        let (wanted, assigned): (Vec<_>, BTreeSet<TopicPartition>) = {
            let joined = *lock(&self.joined);
            let opened_end = *lock(&self.controller_end_at_open);
            let state = read(&self.state);
            let mut wanted = Vec::new();
            let mut assigned = BTreeSet::new();
            let opened = lock(&self.opened);
            for h in state.replicas_on(self.me) {
                let tp = TopicPartition::new(h.topic.name.clone(), h.partition);
                assigned.insert(tp.clone());
                if opened.contains(&tp) {
                    continue;
                }
                let c = h.topic.config;
                let log = NodeTopicConfig {
                    retention_bytes: c.retention_bytes,
                    retention_ms: c.retention_ms,
                    segment_bytes: c.segment_bytes,
                }
                .log_config(&self.log_defaults);
                let fresh = !sluice_node::topics::partition_dir(self.engine.data_dir(), &tp)
                    .join(sluice_engine::RAFT_STATE_FILE)
                    .exists();
                let campaign = fresh && h.assignment.preferred_leader() == Some(self.me);
                wanted.push(ReplicaToOpen {
                    tp,
                    log,
                    voters: h.assignment.replicas.clone(),
                    campaign,
                    new_group: is_new_group(joined, opened_end, h.topic.created_at),
                });
            }
            (wanted, assigned)
        };
        if !wanted.is_empty() {
            let new_groups: BTreeMap<TopicPartition, bool> =
                wanted.iter().map(|r| (r.tp.clone(), r.new_group)).collect();
            for (tp, r) in self.engine.open_replicas(wanted).await {
                match r {
                    Ok(_) | Err(sluice_engine::EngineError::PartitionExists(_)) => {
                        let new_group = new_groups.get(&tp).copied().unwrap_or(false);
                        tracing::info!(%tp, new_group, "cluster: replica open");
                        lock(&self.opened).insert(tp);
                    }
                    Err(e) => tracing::error!(%tp, error = %e, "cluster: opening a replica failed"),
                }
            }
        }
        let gone: Vec<TopicPartition> = lock(&self.opened)
            .iter()
            .filter(|tp| !assigned.contains(tp))
            .cloned()
            .collect();
        if !gone.is_empty() {
            for (tp, r) in self.engine.remove_partitions(gone).await {
                match r {
                    Ok(()) | Err(sluice_engine::EngineError::UnknownPartition(_)) => {
                        tracing::info!(%tp, "cluster: replica deleted");
                        lock(&self.opened).remove(&tp);
                    }
                    Err(e) => {
                        tracing::error!(%tp, error = %e, "cluster: deleting a replica failed")
                    }
                }
            }
        }
    }

    /// Proposes `RegisterNode` for every configured node the state lacks or has with
    /// other addresses (controller leader only).
    pub(crate) async fn register_nodes(&self) {
        let missing: Vec<NodeInfo> = {
            let state = read(&self.state);
            self.settings
                .nodes
                .iter()
                .map(|n| NodeInfo {
                    id: n.id,
                    addr: n.addr.clone(),
                    peer_addr: n.peer_addr.to_string(),
                })
                .filter(|n| state.node(n.id) != Some(n))
                .collect()
        };
        for n in missing {
            let id = n.id;
            if let Err(e) = self.propose(Command::RegisterNode(n)).await {
                tracing::debug!(node = id, error = %e, "cluster: registering a node");
                return;
            }
        }
    }

    /// Proposes `cmd` on this node (it must lead the controller): validates it against
    /// the state, appends it to `__cluster/0` with acks=all, waits until it is applied
    /// here and returns its outcome.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ErrorBody> {
        read(&self.state)
            .validate(&cmd)
            .map_err(|e| ErrorBody::new(e.code(), e.to_string()))?;
        let value = sluice_controller::encode(&cmd);
        let mut b = BatchBuilder::new(Limits::DEFAULT);
        b.push(now_ms(), None, Some(&value), &[])
            .map_err(|e| ErrorBody::new(ErrorCode::InvalidRequest, e.to_string()))?;
        let batch = b
            .finish()
            .map_err(|e| ErrorBody::new(ErrorCode::InvalidRequest, e.to_string()))?;
        let timeout_ms = u32::try_from(ADMIN_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
        let produced = self
            .engine
            .produce(&controller_partition(), batch, AckPolicy::All, timeout_ms)
            .await
            .map_err(|e| match e {
                RequestError::Engine(sluice_engine::EngineError::NotLeader(_)) => ErrorBody::new(
                    ErrorCode::NotLeader,
                    "this node no longer leads the controller; retry",
                ),
                e => ErrorBody::new(ErrorCode::RequestTimedOut, format!("controller: {e}")),
            })?;
        let offset = produced.base_offset;
        let mut rx = self.applied.subscribe();
        let wait = rx.wait_for(|&next| next > offset);
        match tokio::time::timeout(ADMIN_TIMEOUT, wait).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(ErrorBody::new(
                    ErrorCode::RequestTimedOut,
                    "controller command committed but not applied in time",
                ))
            }
        }
        lock(&self.outcomes)
            .remove(&offset)
            .ok_or_else(|| ErrorBody::new(ErrorCode::Unknown, "controller command outcome lost"))
    }

    /// Whether every configured node is registered in the metadata.
    pub fn all_registered(&self) -> bool {
        let state = read(&self.state);
        self.settings
            .nodes
            .iter()
            .all(|n| state.node(n.id).is_some())
    }

    /// Waits (bounded) until every partition of `topic` hosted here has a leader.
    pub async fn wait_for_leaders(&self, topic: &str) {
        let deadline = Instant::now() + LEADERS_TIMEOUT;
        loop {
            let (tps, ready) = {
                let opened = lock(&self.opened);
                let tps: Vec<TopicPartition> = opened
                    .iter()
                    .filter(|tp| tp.topic == topic)
                    .cloned()
                    .collect();
                let ready = tps.iter().all(|tp| self.engine.leader_of(tp).is_some());
                (tps, ready)
            };
            if ready && !tps.is_empty() || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn lock_write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn short(a: &Applied) -> String {
    match a {
        Applied::NodeRegistered(n) => format!("node {} registered at {}", n.id, n.addr),
        Applied::TopicCreated(t) => format!("topic {} created", t.name),
        Applied::TopicDeleted(t) => format!("topic {} deleted", t.name),
        Applied::Rejected(e) => format!("rejected: {e}"),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What arrives on the peer links: Raft frames into the engine, forwarded requests
/// into the broker service (which does not forward them again).
pub struct Handler {
    pub engine: EngineHandle,
    pub service: Arc<OnceLock<BrokerService>>,
}

impl PeerHandler for Handler {
    fn raft(&self, from: u64, frame: Bytes) {
        if let Err(e) = self.engine.deliver_raft(&frame) {
            tracing::warn!(from, error = %e, "cluster: undecodable raft frame dropped");
        }
    }

    fn forward(&self, from: u64, request: Bytes) -> BoxFuture<'static, Bytes> {
        let service = self.service.get().cloned();
        Box::pin(async move {
            match service {
                Some(s) => s.handle_forwarded(from, &request).await,
                None => Bytes::new(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_new_group;

    #[test]
    fn a_group_is_new_only_when_created_after_the_join_point_and_learnt_this_run() {
        // Created after the join point, learnt of in this run: new.
        assert!(is_new_group(Some(3), Some(10), 10));
        assert!(is_new_group(Some(3), Some(10), 25));
        // Learnt of in an earlier run (its creation was in the log at open): a missing
        // directory was lost.
        assert!(!is_new_group(Some(3), Some(10), 9));
        // Created before the join point: the node may have held it before its disk
        // was lost.
        assert!(!is_new_group(Some(12), Some(10), 11));
        // Either unknown: guarded.
        assert!(!is_new_group(None, Some(10), 25));
        assert!(!is_new_group(Some(3), None, 25));
    }
}
