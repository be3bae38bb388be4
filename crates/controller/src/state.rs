//! [`ClusterState`]: nodes, topics and placement, changed only by applying commands.

use std::collections::{BTreeMap, BTreeSet};

use sluice_proto::wire::{validate_topic_name, ErrorCode, FrameError, FrameLimits};
use thiserror::Error;

use crate::command::{
    decode, Command, DecodeError, NodeId, NodeInfo, TopicConfig, ADDR_BYTES_MAX, RESERVED_PREFIX,
    SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};
use crate::placement::place;

/// Most partitions one topic may have (the wire's `partitions_max`).
pub const PARTITIONS_MAX: u32 = 4096;
/// Most registered nodes (the wire's `nodes_max`: a metadata answer lists them all).
pub const NODES_MAX: usize = 1024;
/// Most topics (the wire's `topics_max`: a topic list answer holds them all).
pub const TOPICS_MAX: usize = 16_384;
/// Most partition replicas in the whole cluster (the sum of partitions × replication
/// factor over all topics): bounds the state's memory, and each replica is a Raft group
/// some node runs.
pub const REPLICAS_MAX: u64 = 1 << 20;
/// The replication factor of a topic created without one, capped by the node count.
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;

const NAME_LIMITS: FrameLimits = FrameLimits::DEFAULT;

const _: () = assert!(PARTITIONS_MAX <= NAME_LIMITS.partitions_max);
const _: () = assert!(NODES_MAX as u64 <= NAME_LIMITS.nodes_max as u64);
const _: () = assert!(TOPICS_MAX as u64 <= NAME_LIMITS.topics_max as u64);
const _: () = assert!(PARTITIONS_MAX as u64 <= REPLICAS_MAX);
const _: () = assert!(DEFAULT_REPLICATION_FACTOR >= 1);

/// The nodes that host one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionAssignment {
    /// Distinct registered nodes; `replicas[0]` is the preferred leader.
    pub replicas: Vec<NodeId>,
}

impl PartitionAssignment {
    /// The node that should lead the partition when it is up.
    pub fn preferred_leader(&self) -> Option<NodeId> {
        self.replicas.first().copied()
    }

    /// Whether `node` hosts a replica of the partition.
    pub fn contains(&self, node: NodeId) -> bool {
        self.replicas.contains(&node)
    }
}

/// A topic as the controller knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMeta {
    /// The topic's name.
    pub name: String,
    /// Replicas of every partition (`partitions[p].replicas.len()`).
    pub replication_factor: u32,
    /// Log overrides for every partition.
    pub config: TopicConfig,
    /// Partition `p` is `partitions[p]`; never empty.
    pub partitions: Vec<PartitionAssignment>,
    /// Offset of the `CreateTopic` record: distinguishes this topic from an earlier one of
    /// the same name that was deleted (a node can tell stale partition data by it).
    pub created_at: u64,
}

impl TopicMeta {
    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        // At most PARTITIONS_MAX, checked on create.
        u32::try_from(self.partitions.len()).unwrap_or(u32::MAX)
    }

    /// Partition `p`'s assignment.
    pub fn partition(&self, p: u32) -> Option<&PartitionAssignment> {
        self.partitions.get(usize::try_from(p).ok()?)
    }
}

/// How much of the cluster's placement one node carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeLoad {
    /// Partitions of which the node is the preferred leader.
    pub leaders: u64,
    /// Partition replicas the node hosts (leaders included).
    pub replicas: u64,
}

/// One partition replica a node must host, from [`ClusterState::replicas_on`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostedReplica<'a> {
    /// The partition's topic (name, config, `created_at`).
    pub topic: &'a TopicMeta,
    /// The partition number.
    pub partition: u32,
    /// The partition's replica set, this node among them.
    pub assignment: &'a PartitionAssignment,
}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The node is registered with these addresses (new, updated or unchanged).
    NodeRegistered(NodeInfo),
    /// The topic exists now, placed as shown.
    TopicCreated(TopicMeta),
    /// The topic is gone; this was its metadata (which nodes must drop which partitions).
    TopicDeleted(TopicMeta),
    /// Nothing changed (but [`ClusterState::last_applied`]).
    Rejected(CommandError),
}

/// Why a command is refused; every node refuses the same command for the same reason.
#[derive(Error, Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// `CreateTopic` for a name that exists.
    #[error("topic {0} exists")]
    TopicExists(String),
    /// `DeleteTopic` for a name that does not exist.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// The name breaks the wire's naming rule
    /// ([`validate_topic_name`](sluice_proto::wire::validate_topic_name)).
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        /// The refused name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The name starts with [`RESERVED_PREFIX`](crate::RESERVED_PREFIX).
    #[error("topic name {0} is reserved (names starting with \"__\" are the cluster's)")]
    ReservedName(String),
    /// The partition count is outside `1..=PARTITIONS_MAX`.
    #[error("invalid partition count {0} (must be 1..={PARTITIONS_MAX})")]
    InvalidPartitions(u32),
    /// The replication factor is outside `1..=nodes`.
    #[error("invalid replication factor {requested} (must be 1..={nodes}, the registered nodes)")]
    InvalidReplicationFactor {
        /// The factor asked for.
        requested: u32,
        /// The registered nodes.
        nodes: usize,
    },
    /// A topic config value out of range.
    #[error("invalid topic config: {reason}")]
    InvalidConfig {
        /// Which value, and its range.
        reason: &'static str,
    },
    /// No node is registered yet, so nothing can be placed.
    #[error("no nodes are registered")]
    NoNodes,
    /// A `RegisterNode` with a bad id or address.
    #[error("invalid node {id}: {reason}")]
    InvalidNode {
        /// The node's id.
        id: NodeId,
        /// What is wrong.
        reason: &'static str,
    },
    /// A new node beyond [`NODES_MAX`].
    #[error("the cluster has the maximum of {NODES_MAX} nodes")]
    TooManyNodes,
    /// A new topic beyond [`TOPICS_MAX`].
    #[error("the cluster has the maximum of {TOPICS_MAX} topics")]
    TooManyTopics,
    /// A topic whose replicas would take the cluster beyond [`REPLICAS_MAX`].
    #[error("{requested} more partition replicas would exceed the cluster's {REPLICAS_MAX} (it has {existing})")]
    TooManyReplicas {
        /// Partitions × replication factor of the refused topic.
        requested: u64,
        /// Replicas in the cluster now.
        existing: u64,
    },
    /// The record is not a command ([`ClusterState::apply_record`] only).
    #[error("undecodable command record: {0}")]
    Decode(#[from] DecodeError),
}

impl CommandError {
    /// The wire error code for a client whose request this refused.
    pub fn code(&self) -> ErrorCode {
        match self {
            CommandError::TopicExists(_) => ErrorCode::TopicExists,
            CommandError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            CommandError::InvalidTopicName { .. } | CommandError::ReservedName(_) => {
                ErrorCode::InvalidTopicName
            }
            CommandError::InvalidPartitions(_)
            | CommandError::InvalidReplicationFactor { .. }
            | CommandError::InvalidConfig { .. }
            | CommandError::NoNodes
            | CommandError::TooManyTopics
            | CommandError::TooManyReplicas { .. } => ErrorCode::InvalidConfig,
            CommandError::InvalidNode { .. }
            | CommandError::TooManyNodes
            | CommandError::Decode(_) => ErrorCode::InvalidRequest,
        }
    }
}

/// A broken invariant found by [`ClusterState::verify`]: a bug, never bad input.
#[derive(Error, Clone, Debug, PartialEq, Eq)]
#[error("controller state invariant broken: {0}")]
pub struct VerifyError(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeEntry {
    info: NodeInfo,
    load: NodeLoad,
}

/// The cluster metadata: registered nodes and topics with their placement.
///
/// Call order: [`ClusterState::new`] once, then [`ClusterState::apply_record`] (or
/// [`ClusterState::apply`] with a decoded command) for every committed record of
/// `__cluster/0`, in offset order, each offset once; the queries may be called at any
/// time. The leader calls [`ClusterState::validate`] before proposing a command; that
/// does not change the state.
///
/// Two states that applied the same commands at the same offsets are equal (`==`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    nodes: BTreeMap<NodeId, NodeEntry>,
    topics: BTreeMap<String, TopicMeta>,
    /// Sum of every topic's partitions × replication factor.
    replicas_total: u64,
    last_applied: Option<u64>,
}

impl ClusterState {
    /// An empty cluster: no nodes, no topics, nothing applied.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks `cmd` against the current state: `Ok` exactly when [`ClusterState::apply`]
    /// would apply it now. The leader's check before proposing.
    pub fn validate(&self, cmd: &Command) -> Result<(), CommandError> {
        match cmd {
            Command::RegisterNode(info) => self.check_register(info),
            Command::CreateTopic {
                name,
                partitions,
                replication_factor,
                config,
            } => self
                .check_create(name, *partitions, *replication_factor, config)
                .map(|_| ()),
            Command::DeleteTopic { name } => self.check_delete(name),
        }
    }

    /// Applies the command of the record at `offset`: re-validates it against the
    /// current state and, if valid, performs it; a rejected command changes nothing.
    /// Either way `offset` becomes [`ClusterState::last_applied`].
    ///
    /// `CreateTopic` places the partitions here, deterministically from the state: the
    /// replication factor defaults to [`ClusterState::default_replication_factor`]; for
    /// each partition in turn the preferred leader is the node with the fewest preferred
    /// leaderships across all topics (ties: fewest replicas, then lowest id), and the
    /// other replicas are the nodes with the fewest replicas (ties: ring order of ids
    /// after the leader).
    ///
    /// # Panics
    ///
    /// If `offset` is not above the last applied one: the caller replayed or reordered
    /// the log, and the state can no longer be trusted.
    pub fn apply(&mut self, offset: u64, cmd: Command) -> Applied {
        self.advance(offset);
        let result = match cmd {
            Command::RegisterNode(info) => self.register(info),
            Command::CreateTopic {
                name,
                partitions,
                replication_factor,
                config,
            } => self.create(offset, name, partitions, replication_factor, config),
            Command::DeleteTopic { name } => self.delete(&name),
        };
        result.unwrap_or_else(Applied::Rejected)
    }

    /// Decodes the record value at `offset` and applies it. An undecodable value is
    /// `Rejected(CommandError::Decode(..))` and changes nothing but
    /// [`ClusterState::last_applied`].
    ///
    /// # Panics
    ///
    /// As [`ClusterState::apply`].
    pub fn apply_record(&mut self, offset: u64, value: &[u8]) -> Applied {
        match decode(value) {
            Ok(cmd) => self.apply(offset, cmd),
            Err(e) => {
                self.advance(offset);
                Applied::Rejected(e.into())
            }
        }
    }

    /// Registered nodes, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> + '_ {
        self.nodes.values().map(|n| &n.info)
    }

    /// The registered node `id`.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id).map(|n| &n.info)
    }

    /// How many nodes are registered.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Placement load of every registered node, by id.
    pub fn loads(&self) -> impl Iterator<Item = (NodeId, NodeLoad)> + '_ {
        self.nodes.iter().map(|(id, n)| (*id, n.load))
    }

    /// Topics, by name.
    pub fn topics(&self) -> impl Iterator<Item = &TopicMeta> + '_ {
        self.topics.values()
    }

    /// The topic `name`.
    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    /// Partition `partition` of topic `topic`.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionAssignment> {
        self.topic(topic)?.partition(partition)
    }

    /// Every partition replica `node` must host, by topic name then partition.
    pub fn replicas_on(&self, node: NodeId) -> Vec<HostedReplica<'_>> {
        let mut out = Vec::new();
        for topic in self.topics.values() {
            for (p, assignment) in (0u32..).zip(&topic.partitions) {
                if assignment.contains(node) {
                    out.push(HostedReplica {
                        topic,
                        partition: p,
                        assignment,
                    });
                }
            }
        }
        out
    }

    /// The replication factor of a topic created without one:
    /// `min(DEFAULT_REPLICATION_FACTOR, nodes)` (0 while no node is registered).
    pub fn default_replication_factor(&self) -> u32 {
        let nodes = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        DEFAULT_REPLICATION_FACTOR.min(nodes)
    }

    /// Partition replicas in the cluster (partitions × replication factor, all topics).
    pub fn replicas_total(&self) -> u64 {
        self.replicas_total
    }

    /// Offset of the last record applied, `None` before the first.
    pub fn last_applied(&self) -> Option<u64> {
        self.last_applied
    }

    /// Recomputes everything derived and checks every invariant: replica sets of distinct
    /// registered nodes of the topic's size, loads and the replica total matching the
    /// topics, limits respected. `Err` is a bug in this crate.
    pub fn verify(&self) -> Result<(), VerifyError> {
        let fail = |s: String| Err(VerifyError(s));
        if self.nodes.len() > NODES_MAX || self.topics.len() > TOPICS_MAX {
            return fail("over the node or topic limit".into());
        }
        let mut loads: BTreeMap<NodeId, NodeLoad> = BTreeMap::new();
        let mut total = 0u64;
        for (name, t) in &self.topics {
            if *name != t.name {
                return fail(format!("topic {} stored under {name}", t.name));
            }
            let count = t.partitions.len();
            if count == 0 || count > PARTITIONS_MAX as usize {
                return fail(format!("topic {name} has {count} partitions"));
            }
            for (p, a) in t.partitions.iter().enumerate() {
                let distinct: BTreeSet<_> = a.replicas.iter().collect();
                if a.replicas.len() != t.replication_factor as usize
                    || distinct.len() != a.replicas.len()
                {
                    return fail(format!("{name}/{p}: replicas {:?}", a.replicas));
                }
                for (i, id) in a.replicas.iter().enumerate() {
                    if !self.nodes.contains_key(id) {
                        return fail(format!("{name}/{p}: replica on unknown node {id}"));
                    }
                    let l = loads.entry(*id).or_default();
                    l.replicas += 1;
                    if i == 0 {
                        l.leaders += 1;
                    }
                }
                total += a.replicas.len() as u64;
            }
        }
        if total != self.replicas_total || total > REPLICAS_MAX {
            return fail(format!(
                "replica total {} (recounted {total})",
                self.replicas_total
            ));
        }
        for (id, n) in &self.nodes {
            if n.info.id != *id {
                return fail(format!("node {} stored under {id}", n.info.id));
            }
            let want = loads.get(id).copied().unwrap_or_default();
            if n.load != want {
                return fail(format!("node {id}: load {:?}, recounted {want:?}", n.load));
            }
        }
        Ok(())
    }

    fn advance(&mut self, offset: u64) {
        if let Some(last) = self.last_applied {
            assert!(
                offset > last,
                "controller: applied offset {offset} after {last}"
            );
        }
        self.last_applied = Some(offset);
    }

    fn check_register(&self, info: &NodeInfo) -> Result<(), CommandError> {
        let bad = |reason| {
            Err(CommandError::InvalidNode {
                id: info.id,
                reason,
            })
        };
        if info.id == 0 {
            return bad("node id 0 is reserved");
        }
        for addr in [&info.addr, &info.peer_addr] {
            if addr.is_empty() {
                return bad("empty address");
            }
            if addr.len() > ADDR_BYTES_MAX {
                return bad("address longer than ADDR_BYTES_MAX");
            }
            if !addr.bytes().all(|b| b.is_ascii_graphic()) {
                return bad("address has a byte that is not printable ASCII");
            }
        }
        let taken = self.nodes.values().any(|n| {
            n.info.id != info.id && (n.info.addr == info.addr || n.info.peer_addr == info.peer_addr)
        });
        if taken {
            return bad("address registered to another node");
        }
        if !self.nodes.contains_key(&info.id) && self.nodes.len() >= NODES_MAX {
            return Err(CommandError::TooManyNodes);
        }
        Ok(())
    }

    fn register(&mut self, info: NodeInfo) -> Result<Applied, CommandError> {
        self.check_register(&info)?;
        let entry = self.nodes.entry(info.id).or_insert_with(|| NodeEntry {
            info: info.clone(),
            load: NodeLoad::default(),
        });
        entry.info = info.clone();
        Ok(Applied::NodeRegistered(info))
    }

    fn check_name(name: &str) -> Result<(), CommandError> {
        validate_topic_name(name, &NAME_LIMITS).map_err(|e| CommandError::InvalidTopicName {
            name: name.to_owned(),
            reason: match e {
                FrameError::InvalidTopicName { reason } => reason,
                _ => "refused by the wire's naming rule",
            },
        })?;
        if name.starts_with(RESERVED_PREFIX) {
            return Err(CommandError::ReservedName(name.to_owned()));
        }
        Ok(())
    }

    fn check_config(config: &TopicConfig) -> Result<(), CommandError> {
        let bad = |reason| Err(CommandError::InvalidConfig { reason });
        if let Some(b) = config.segment_bytes {
            if b < SEGMENT_BYTES_MIN {
                return bad("segment_bytes is below SEGMENT_BYTES_MIN (64 KiB)");
            }
            if b > SEGMENT_BYTES_MAX {
                return bad("segment_bytes is above SEGMENT_BYTES_MAX (2 GiB)");
            }
        }
        if config.retention_bytes == Some(0) {
            return bad("retention_bytes must be positive");
        }
        Ok(())
    }

    /// Checks a `CreateTopic`; on success returns the replication factor to place with.
    fn check_create(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u32>,
        config: &TopicConfig,
    ) -> Result<usize, CommandError> {
        Self::check_name(name)?;
        if self.topics.contains_key(name) {
            return Err(CommandError::TopicExists(name.to_owned()));
        }
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(CommandError::InvalidPartitions(partitions));
        }
        Self::check_config(config)?;
        if self.nodes.is_empty() {
            return Err(CommandError::NoNodes);
        }
        let rf = replication_factor.unwrap_or_else(|| self.default_replication_factor());
        let rf_usize = usize::try_from(rf).unwrap_or(usize::MAX);
        if rf == 0 || rf_usize > self.nodes.len() {
            return Err(CommandError::InvalidReplicationFactor {
                requested: rf,
                nodes: self.nodes.len(),
            });
        }
        if self.topics.len() >= TOPICS_MAX {
            return Err(CommandError::TooManyTopics);
        }
        let requested = u64::from(partitions) * u64::from(rf);
        if self.replicas_total + requested > REPLICAS_MAX {
            return Err(CommandError::TooManyReplicas {
                requested,
                existing: self.replicas_total,
            });
        }
        Ok(rf_usize)
    }

    fn create(
        &mut self,
        offset: u64,
        name: String,
        partitions: u32,
        replication_factor: Option<u32>,
        config: TopicConfig,
    ) -> Result<Applied, CommandError> {
        let rf = self.check_create(&name, partitions, replication_factor, &config)?;
        let mut loads: Vec<(NodeId, NodeLoad)> =
            self.nodes.iter().map(|(id, n)| (*id, n.load)).collect();
        let assignments = place(&mut loads, rf, partitions);
        for (id, load) in loads {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.load = load;
            }
        }
        let meta = TopicMeta {
            name: name.clone(),
            replication_factor: u32::try_from(rf).unwrap_or(u32::MAX),
            config,
            partitions: assignments,
            created_at: offset,
        };
        self.replicas_total += u64::from(partitions) * rf as u64;
        self.topics.insert(name, meta.clone());
        Ok(Applied::TopicCreated(meta))
    }

    fn check_delete(&self, name: &str) -> Result<(), CommandError> {
        Self::check_name(name)?;
        if !self.topics.contains_key(name) {
            return Err(CommandError::UnknownTopic(name.to_owned()));
        }
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<Applied, CommandError> {
        self.check_delete(name)?;
        let Some(meta) = self.topics.remove(name) else {
            return Err(CommandError::UnknownTopic(name.to_owned()));
        };
        for a in &meta.partitions {
            for (i, id) in a.replicas.iter().enumerate() {
                let entry = self.nodes.get_mut(id);
                assert!(
                    entry.is_some(),
                    "controller: {name} has a replica on unregistered node {id}"
                );
                if let Some(n) = entry {
                    assert!(
                        n.load.replicas > 0 && (i > 0 || n.load.leaders > 0),
                        "controller: node {id} load {:?} below {name}'s replicas",
                        n.load
                    );
                    n.load.replicas -= 1;
                    if i == 0 {
                        n.load.leaders -= 1;
                    }
                }
            }
        }
        let removed = meta.partitions.len() as u64 * u64::from(meta.replication_factor);
        assert!(
            removed <= self.replicas_total,
            "controller: deleting {removed} replicas of {} in total",
            self.replicas_total
        );
        self.replicas_total -= removed;
        Ok(Applied::TopicDeleted(meta))
    }
}
