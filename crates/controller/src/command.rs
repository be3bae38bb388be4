//! The commands of `__cluster/0` and their record format.
//!
//! A record value is JSON: `{"v":1,"cmd":<command>}`, the command externally tagged in
//! snake case, e.g. `{"v":1,"cmd":{"delete_topic":{"name":"orders"}}}`. Unknown fields
//! are refused, so any change to the shape bumps [`COMMAND_VERSION`]; decoding reads the
//! version first and refuses one it does not speak, before looking at the command.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A node's identity in the cluster: configured, stable across restarts, never 0.
pub type NodeId = u64;

/// The record format version this crate writes and reads.
pub const COMMAND_VERSION: u32 = 1;
/// Largest record value [`decode`] reads. A command that passed
/// [`ClusterState::validate`](crate::ClusterState::validate) encodes to far less (its
/// strings are bounded), so only garbage meets this limit.
pub const COMMAND_BYTES_MAX: usize = 64 << 10;
/// Longest [`NodeInfo`] address, in bytes (a DNS name is at most 253, plus `:port`).
pub const ADDR_BYTES_MAX: usize = 512;
/// Topic names starting with this are the cluster's own (`__cluster`); clients may not
/// create or delete them.
pub const RESERVED_PREFIX: &str = "__";
/// Smallest [`TopicConfig::segment_bytes`]: below it a log rolls on almost every batch,
/// paying a seal each time (the single-node registry's rule).
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// Largest [`TopicConfig::segment_bytes`]: index positions are `u32`, and a segment plus
/// one oversized batch must fit, whatever a node's batch limit is.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;

// A validated command's JSON: two addresses (or one topic name) of which every byte may
// be escaped as `\"`, plus field names, tags and numbers.
const _: () = assert!(2 * (2 * ADDR_BYTES_MAX) + 1024 <= COMMAND_BYTES_MAX);
const _: () =
    assert!(2 * (sluice_proto::wire::NAME_BYTES_MAX as usize) + 1024 <= COMMAND_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MAX < u32::MAX as u64);

/// A node and where it listens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeInfo {
    /// The node's id; 0 is refused.
    pub id: NodeId,
    /// Where clients reach the node (QUIC, `host:port`).
    pub addr: String,
    /// Where the other nodes reach it (Raft and replication traffic, `host:port`).
    pub peer_addr: String,
}

/// Per-topic overrides of each node's log defaults; `None` keeps the node's default.
/// The same fields and JSON shape as the single-node registry's `TopicConfig`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Delete the oldest sealed segments while a partition is larger than this; not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest record is older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    /// Roll the active segment at this size; within
    /// [`SEGMENT_BYTES_MIN`]`..=`[`SEGMENT_BYTES_MAX`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
}

/// One change to the cluster metadata: the value of one `__cluster/0` record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Add a node, or update the addresses of a registered one.
    RegisterNode(NodeInfo),
    /// Create a topic with partitions `0..partitions`, placed by the controller.
    CreateTopic {
        /// The topic's name (the wire's naming rule, not starting with `__`).
        name: String,
        /// How many partitions, `1..=`[`PARTITIONS_MAX`](crate::PARTITIONS_MAX).
        partitions: u32,
        /// Replicas per partition; `None` is
        /// [`ClusterState::default_replication_factor`](crate::ClusterState::default_replication_factor)
        /// at the time the command is applied.
        replication_factor: Option<u32>,
        /// Log overrides for every partition of the topic.
        #[serde(default)]
        config: TopicConfig,
    },
    /// Delete a topic and all its partitions.
    DeleteTopic {
        /// The topic's name.
        name: String,
    },
}

/// Why a record value is not a command.
#[derive(Error, Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Longer than [`COMMAND_BYTES_MAX`]; not parsed.
    #[error("command record of {bytes} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The record value's length.
        bytes: usize,
        /// [`COMMAND_BYTES_MAX`].
        max: usize,
    },
    /// A well-formed envelope of a version this node does not speak (a newer node wrote
    /// it): upgrade before replaying this log.
    #[error("command version {version} is not supported (this node speaks {COMMAND_VERSION})")]
    UnsupportedVersion {
        /// The envelope's `v`.
        version: u64,
    },
    /// Not UTF-8 JSON of the expected shape.
    #[error("malformed command record: {reason}")]
    Malformed {
        /// serde_json's description, with line and column.
        reason: String,
    },
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    v: u32,
    cmd: &'a Command,
}

/// Only the version: parsed first, ignoring the rest, so a newer command shape is
/// reported as a version mismatch rather than as garbage.
#[derive(Deserialize)]
struct Version {
    v: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    #[allow(dead_code)] // checked through `Version`; named so that it is not unknown
    v: u64,
    cmd: Command,
}

/// Encodes `cmd` as a `__cluster/0` record value. Deterministic: the same command always
/// gives the same bytes. The result is not checked against [`COMMAND_BYTES_MAX`]: validate
/// before proposing (an oversized record is rejected by every node alike on apply).
pub fn encode(cmd: &Command) -> Vec<u8> {
    let envelope = EnvelopeRef {
        v: COMMAND_VERSION,
        cmd,
    };
    match serde_json::to_vec(&envelope) {
        Ok(bytes) => bytes,
        // Strings, integers and derived structs into a Vec: serde_json has no failure
        // left to report (no I/O, no non-string map keys).
        Err(e) => unreachable!("controller: encoding a command failed: {e}"),
    }
}

/// Decodes a `__cluster/0` record value. Bounded: refuses more than
/// [`COMMAND_BYTES_MAX`] bytes before parsing; never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
    if bytes.len() > COMMAND_BYTES_MAX {
        return Err(DecodeError::TooLarge {
            bytes: bytes.len(),
            max: COMMAND_BYTES_MAX,
        });
    }
    let malformed = |e: serde_json::Error| DecodeError::Malformed {
        reason: e.to_string(),
    };
    let Version { v } = serde_json::from_slice(bytes).map_err(malformed)?;
    if v != u64::from(COMMAND_VERSION) {
        return Err(DecodeError::UnsupportedVersion { version: v });
    }
    let Envelope { cmd, .. } = serde_json::from_slice(bytes).map_err(malformed)?;
    Ok(cmd)
}
