//! Request and response types. Their bincode encoding is the wire format, so the rules of
//! `PROTOCOL.md`, "Versioning", bind every edit here:
//!
//! - enum variants (of `Request`, `Response`, `ErrorDetail`, `Acks`, `OffsetSpec`) go on at
//!   the **end**; none is ever removed or reordered, because the wire carries a variant's
//!   position. `wire/tests.rs` pins every position with golden bytes.
//! - a struct's fields are never added, removed or reordered: the encoding has no field
//!   tags. A request that needs new fields is a new variant (or a new `api_version`).

use bincode::{Decode, Encode};

use super::error::ErrorBody;

/// The part of every request frame before the request itself.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RequestHeader {
    /// [`API_VERSION`](super::API_VERSION). Always the first two bytes of the header, in
    /// every version, so a broker can refuse a version it does not speak before decoding
    /// anything else.
    pub api_version: u16,
    /// Chosen by the client and echoed in the response; for logs and tracing (the stream
    /// already pairs a response with its request). Always header bytes `2..10`.
    pub request_id: u64,
    /// Free-form client name for logs and quotas; at most `client_id_bytes_max` bytes.
    pub client_id: String,
}

impl RequestHeader {
    /// A header for this crate's [`API_VERSION`](super::API_VERSION).
    pub fn new(request_id: u64, client_id: impl Into<String>) -> RequestHeader {
        RequestHeader {
            api_version: super::API_VERSION,
            request_id,
            client_id: client_id.into(),
        }
    }
}

/// The part of every response frame before the response itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ResponseHeader {
    /// The request's `request_id` (0 when the request was too malformed to read it).
    pub request_id: u64,
}

/// How durable a produce must be before the broker answers (DESIGN §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Encode, Decode)]
pub enum Acks {
    /// 0: answer once the batch is appended to the leader's log (not yet fsynced).
    None,
    /// 1: answer after the leader's own fsync.
    Leader,
    /// 2: answer after a quorum has the batch fsynced. The default.
    #[default]
    All,
}

/// Per-topic settings at creation; `None` takes the broker's default. For the retention
/// limits, `Some(u64::MAX)` means unlimited. Ranges are the broker's policy
/// (`InvalidConfig`), not the wire's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct TopicConfig {
    /// Per partition: oldest segments are deleted while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Segments whose newest record is older than this are deleted.
    pub retention_ms: Option<u64>,
    /// The active segment rolls when it reaches this size.
    pub segment_bytes: Option<u64>,
}

/// Which offset `ListOffsets` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum OffsetSpec {
    /// 0: the log start (the oldest retained offset).
    Earliest,
    /// 1: the high watermark (the offset the next committed record will get).
    Latest,
    /// 2: the first offset whose record timestamp is `>=` this (ms since the Unix epoch).
    Timestamp(i64),
}

/// A request. The comment on each variant is its position on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Request {
    /// 0: brokers, and partition leaders of the named topics (`None` = every topic;
    /// `Some(vec![])` = brokers only).
    Metadata { topics: Option<Vec<String>> },
    /// 1
    CreateTopic {
        name: String,
        partitions: u32,
        config: TopicConfig,
    },
    /// 2
    DeleteTopic { name: String },
    /// 3
    ListTopics,
    /// 4
    DescribeTopic { name: String },
    /// 5: the payload is exactly one record batch, as the producer built it.
    Produce {
        topic: String,
        partition: u32,
        acks: Acks,
        /// How long the broker may wait for durability before `RequestTimedOut`.
        timeout_ms: u32,
    },
    /// 6: whole batches from the one holding `offset`, up to the high watermark.
    Fetch {
        topic: String,
        partition: u32,
        offset: u64,
        /// Payload budget; the first batch is returned whole even if it is larger.
        max_bytes: u32,
        /// Long-poll: how long to wait for data when there is none at `offset`.
        max_wait_ms: u32,
    },
    /// 7
    ListOffsets {
        topic: String,
        partition: u32,
        spec: OffsetSpec,
    },
    /// 8
    DescribeCluster,
    /// 9: asks for a new idempotent producer id (answered `Response::InitProducer`).
    InitProducer,
    /// 10: `CreateTopic` with a replication factor (`None`: the cluster default, 3 when
    /// it has 3 or more nodes). Answered `Response::CreateTopic`.
    CreateTopicReplicated {
        name: String,
        partitions: u32,
        replication_factor: Option<u32>,
        config: TopicConfig,
    },
    /// 11: every node with its liveness, as the answering node sees it (answered
    /// `Response::ClusterStatus`).
    ClusterStatus,
}

/// A request's kind, for routing, logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    Metadata,
    CreateTopic,
    DeleteTopic,
    ListTopics,
    DescribeTopic,
    Produce,
    Fetch,
    ListOffsets,
    DescribeCluster,
    InitProducer,
    ClusterStatus,
}

impl RequestKind {
    pub const ALL: [RequestKind; 11] = [
        RequestKind::Metadata,
        RequestKind::CreateTopic,
        RequestKind::DeleteTopic,
        RequestKind::ListTopics,
        RequestKind::DescribeTopic,
        RequestKind::Produce,
        RequestKind::Fetch,
        RequestKind::ListOffsets,
        RequestKind::DescribeCluster,
        RequestKind::InitProducer,
        RequestKind::ClusterStatus,
    ];

    /// snake_case name, e.g. `"list_offsets"` (a metric label value).
    pub const fn as_str(self) -> &'static str {
        match self {
            RequestKind::Metadata => "metadata",
            RequestKind::CreateTopic => "create_topic",
            RequestKind::DeleteTopic => "delete_topic",
            RequestKind::ListTopics => "list_topics",
            RequestKind::DescribeTopic => "describe_topic",
            RequestKind::Produce => "produce",
            RequestKind::Fetch => "fetch",
            RequestKind::ListOffsets => "list_offsets",
            RequestKind::DescribeCluster => "describe_cluster",
            RequestKind::InitProducer => "init_producer",
            RequestKind::ClusterStatus => "cluster_status",
        }
    }

    /// Whether a request of this kind may append to a log (and so has a
    /// [`WriteOutcome`](super::WriteOutcome) when it fails).
    pub const fn is_write(self) -> bool {
        matches!(self, RequestKind::Produce)
    }
}

impl Request {
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Metadata { .. } => RequestKind::Metadata,
            Request::CreateTopic { .. } => RequestKind::CreateTopic,
            Request::DeleteTopic { .. } => RequestKind::DeleteTopic,
            Request::ListTopics => RequestKind::ListTopics,
            Request::DescribeTopic { .. } => RequestKind::DescribeTopic,
            Request::Produce { .. } => RequestKind::Produce,
            Request::Fetch { .. } => RequestKind::Fetch,
            Request::ListOffsets { .. } => RequestKind::ListOffsets,
            Request::DescribeCluster => RequestKind::DescribeCluster,
            Request::InitProducer => RequestKind::InitProducer,
            Request::CreateTopicReplicated { .. } => RequestKind::CreateTopic,
            Request::ClusterStatus => RequestKind::ClusterStatus,
        }
    }

    /// The topic and partition of a request addressed to one partition (`Produce`,
    /// `Fetch`, `ListOffsets`: those that must reach the partition's leader).
    pub fn partition(&self) -> Option<(&str, u32)> {
        match self {
            Request::Produce {
                topic, partition, ..
            }
            | Request::Fetch {
                topic, partition, ..
            }
            | Request::ListOffsets {
                topic, partition, ..
            } => Some((topic, *partition)),
            _ => None,
        }
    }

    /// Whether this request's frame carries a payload (only `Produce`: its batch).
    pub fn has_payload(&self) -> bool {
        matches!(self, Request::Produce { .. })
    }
}

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BrokerInfo {
    pub node_id: u32,
    /// Where clients reach its QUIC listener, `host:port`.
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PartitionMetadata {
    pub partition: u32,
    /// Node id of the leader; `None` while there is none (an election).
    pub leader: Option<u32>,
    /// Node ids of every replica, the leader included.
    pub replicas: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TopicMetadata {
    pub name: String,
    /// In partition order; empty when `error` is set.
    pub partitions: Vec<PartitionMetadata>,
    /// Why this topic has no metadata (e.g. `UnknownTopic` for a name that was asked for).
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct MetadataOk {
    pub brokers: Vec<BrokerInfo>,
    pub topics: Vec<TopicMetadata>,
}

/// A topic in a listing, and what `CreateTopic` answers.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PartitionDescription {
    pub partition: u32,
    pub leader: Option<u32>,
    pub replicas: Vec<u32>,
    /// Oldest retained offset.
    pub log_start: u64,
    /// Offset the next committed record will get; fetches never see beyond it.
    pub high_watermark: u64,
    /// Bytes of the partition's log on the leader.
    pub log_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TopicDescription {
    pub name: String,
    /// As set at creation: `None` is the broker default.
    pub config: TopicConfig,
    pub partitions: Vec<PartitionDescription>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ProduceOk {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Offset of its last record (`base_offset + record_count - 1`).
    pub last_offset: u64,
    /// The partition's log start after the append.
    pub log_start: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct FetchOk {
    pub high_watermark: u64,
    pub log_start: u64,
    /// Where the next fetch should start: one past the last returned record, or the
    /// requested offset when nothing was returned.
    pub next_offset: u64,
    /// How many whole batches the payload holds (0 = empty payload). The first may start
    /// before the requested offset: a consumer skips records below it.
    pub batches: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct OffsetOk {
    /// `None` for `Timestamp` when no record is that new.
    pub offset: Option<u64>,
    /// For `Timestamp`: the timestamp of the record at `offset`; otherwise `None`.
    pub timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ClusterInfo {
    pub cluster_id: String,
    /// The node that answered.
    pub node_id: u32,
    /// The controller (leader of the metadata group), if there is one.
    pub controller: Option<u32>,
    pub brokers: Vec<BrokerInfo>,
    pub topics: u32,
    pub partitions: u32,
}

/// A response. Position `k + 1` answers request position `k`; position 0 is for a request
/// that was refused before dispatch (undecodable, unsupported version, too large, throttled,
/// shutting down, too many in flight), whatever its kind.
/// A new idempotent producer: stamp `producer_id` and `producer_epoch` on every batch,
/// with per-partition base sequences from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ProducerIdOk {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// One node of the cluster as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct NodeStatus {
    pub node_id: u32,
    /// Client address (host:port).
    pub addr: String,
    /// Peer-link address (host:port).
    pub peer_addr: String,
    /// The answering node itself, or a peer it heard from recently.
    pub alive: bool,
    /// Milliseconds since the answering node last heard from it (`None`: never, or
    /// itself).
    pub last_heard_ms: Option<u64>,
    /// Partitions (controller included) this node leads, as far as the answering node
    /// knows (it knows the partitions it hosts).
    pub leaders: u32,
    /// Partition replicas assigned to this node.
    pub replicas: u32,
}

/// `ClusterStatus`: the nodes with their liveness and load.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ClusterStatus {
    pub cluster_id: String,
    /// The answering node.
    pub node_id: u32,
    /// The controller group's leader, if known.
    pub controller: Option<u32>,
    pub nodes: Vec<NodeStatus>,
    pub topics: u32,
    pub partitions: u32,
    /// Partitions this node hosts whose group has no known leader.
    pub leaderless: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Response {
    /// 0
    Error(ErrorBody),
    /// 1
    Metadata(Result<MetadataOk, ErrorBody>),
    /// 2
    CreateTopic(Result<TopicSummary, ErrorBody>),
    /// 3
    DeleteTopic(Result<(), ErrorBody>),
    /// 4
    ListTopics(Result<Vec<TopicSummary>, ErrorBody>),
    /// 5
    DescribeTopic(Result<TopicDescription, ErrorBody>),
    /// 6
    Produce(Result<ProduceOk, ErrorBody>),
    /// 7: on `Ok`, the payload holds `FetchOk::batches` whole batches as stored.
    Fetch(Result<FetchOk, ErrorBody>),
    /// 8
    ListOffsets(Result<OffsetOk, ErrorBody>),
    /// 9
    DescribeCluster(Result<ClusterInfo, ErrorBody>),
    InitProducer(Result<ProducerIdOk, ErrorBody>),
    ClusterStatus(Result<ClusterStatus, ErrorBody>),
}

impl Response {
    /// The request kind this answers; `None` for [`Response::Error`].
    pub fn kind(&self) -> Option<RequestKind> {
        Some(match self {
            Response::Error(_) => return None,
            Response::Metadata(_) => RequestKind::Metadata,
            Response::CreateTopic(_) => RequestKind::CreateTopic,
            Response::DeleteTopic(_) => RequestKind::DeleteTopic,
            Response::ListTopics(_) => RequestKind::ListTopics,
            Response::DescribeTopic(_) => RequestKind::DescribeTopic,
            Response::Produce(_) => RequestKind::Produce,
            Response::Fetch(_) => RequestKind::Fetch,
            Response::ListOffsets(_) => RequestKind::ListOffsets,
            Response::DescribeCluster(_) => RequestKind::DescribeCluster,
            Response::InitProducer(_) => RequestKind::InitProducer,
            Response::ClusterStatus(_) => RequestKind::ClusterStatus,
        })
    }

    /// The error this response carries, if any (`Error`, or any kind's `Err`).
    /// Per-topic errors inside a successful `Metadata` are not included.
    pub fn error(&self) -> Option<&ErrorBody> {
        match self {
            Response::Error(e) => Some(e),
            Response::Metadata(r) => r.as_ref().err(),
            Response::CreateTopic(r) => r.as_ref().err(),
            Response::DeleteTopic(r) => r.as_ref().err(),
            Response::ListTopics(r) => r.as_ref().err(),
            Response::DescribeTopic(r) => r.as_ref().err(),
            Response::Produce(r) => r.as_ref().err(),
            Response::Fetch(r) => r.as_ref().err(),
            Response::ListOffsets(r) => r.as_ref().err(),
            Response::DescribeCluster(r) => r.as_ref().err(),
            Response::InitProducer(r) => r.as_ref().err(),
            Response::ClusterStatus(r) => r.as_ref().err(),
        }
    }

    /// The response of `kind` carrying `error` (what a handler answers when it fails).
    pub fn failed(kind: RequestKind, error: ErrorBody) -> Response {
        match kind {
            RequestKind::Metadata => Response::Metadata(Err(error)),
            RequestKind::CreateTopic => Response::CreateTopic(Err(error)),
            RequestKind::DeleteTopic => Response::DeleteTopic(Err(error)),
            RequestKind::ListTopics => Response::ListTopics(Err(error)),
            RequestKind::DescribeTopic => Response::DescribeTopic(Err(error)),
            RequestKind::Produce => Response::Produce(Err(error)),
            RequestKind::Fetch => Response::Fetch(Err(error)),
            RequestKind::ListOffsets => Response::ListOffsets(Err(error)),
            RequestKind::DescribeCluster => Response::DescribeCluster(Err(error)),
            RequestKind::InitProducer => Response::InitProducer(Err(error)),
            RequestKind::ClusterStatus => Response::ClusterStatus(Err(error)),
        }
    }

    /// Whether this response's frame carries a payload (only a successful `Fetch` with at
    /// least one batch).
    pub fn has_payload(&self) -> bool {
        matches!(self, Response::Fetch(Ok(ok)) if ok.batches > 0)
    }
}
