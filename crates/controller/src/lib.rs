//! Sluice's cluster metadata: the state machine that the controller Raft group applies.
//!
//! The controller is Raft group 0, the internal partition `__cluster/0`, replicated over
//! every node. Each record of that partition carries one encoded [`Command`]
//! ([`encode`] / [`decode`]: JSON in a versioned envelope `{"v":1,"cmd":…}`). Every node
//! replays the committed records in offset order into its own [`ClusterState`], so all
//! nodes that have applied the same prefix hold identical state: which nodes exist and
//! where they listen, which topics exist, and which nodes host each partition.
//!
//! Commands are checked twice. The leader calls [`ClusterState::validate`] before it
//! proposes, so a client hears about a bad request at once. [`ClusterState::apply`]
//! checks again against the state at that point in the log, because two proposals that
//! were each valid when proposed can conflict once ordered (the same topic created
//! twice, say): the second one is then [`Applied::Rejected`] on every node alike, and
//! changes nothing but [`ClusterState::last_applied`].
//!
//! Determinism is the contract: `apply` depends only on the state and the command
//! (ordered maps, no randomness, no clock: a topic's creation time is the offset of
//! its command). Replica placement happens in `apply`, not on the leader, so the command
//! stays small and placement always sees the state it lands in ([`ClusterState::apply`]
//! documents the rule). The state is not snapshotted: it is rebuilt by replaying
//! `__cluster/0` from its first offset, so that partition must never lose records to
//! retention.
//!
//! The crate performs no I/O and names no runtime; the node drives it.
//!
//! ```
//! use sluice_controller::{decode, encode, Applied, ClusterState, Command, NodeInfo, TopicConfig};
//!
//! let mut state = ClusterState::new();
//! let mut offset = 0;
//! for id in 1..=3 {
//!     let node = NodeInfo { id, addr: format!("10.0.0.{id}:7000"), peer_addr: format!("10.0.0.{id}:7001") };
//!     let record = encode(&Command::RegisterNode(node));
//!     assert!(matches!(state.apply_record(offset, &record), Applied::NodeRegistered(_)));
//!     offset += 1;
//! }
//! let create = Command::CreateTopic {
//!     name: "orders".into(),
//!     partitions: 8,
//!     replication_factor: None, // min(3, nodes)
//!     config: TopicConfig::default(),
//! };
//! state.validate(&create).unwrap(); // on the leader, before proposing
//! assert_eq!(decode(&encode(&create)).unwrap(), create);
//! let Applied::TopicCreated(meta) = state.apply(offset, create) else { panic!() };
//! assert_eq!(meta.partitions.len(), 8);
//! assert!(meta.partitions.iter().all(|p| p.replicas.len() == 3));
//! assert_eq!(state.replicas_on(2).len(), 8);
//! ```
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod command;
mod placement;
mod state;

pub use command::{
    decode, encode, Command, DecodeError, NodeId, NodeInfo, TopicConfig, ADDR_BYTES_MAX,
    COMMAND_BYTES_MAX, COMMAND_VERSION, RESERVED_PREFIX, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};
pub use state::{
    Applied, ClusterState, CommandError, HostedReplica, NodeLoad, PartitionAssignment, TopicMeta,
    VerifyError, DEFAULT_REPLICATION_FACTOR, NODES_MAX, PARTITIONS_MAX, REPLICAS_MAX, TOPICS_MAX,
};
