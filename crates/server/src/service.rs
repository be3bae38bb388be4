//! The broker's request handling: wire requests in, engine calls, wire responses out.
//! The gateway has already decoded and validated the frame; this maps each request
//! onto the engine and each engine error onto the one documented error table
//! (`proto/PROTOCOL.md`), keeping the definite/indeterminate split of DESIGN §4.

use sluice_engine::{AckPolicy, EngineError, OffsetQuery, TopicPartition};
use sluice_node::{EngineHandle, RequestError, TopicConfig as NodeTopicConfig, TopicError};
use sluice_proto::wire::ErrorDetail;
use sluice_proto::wire::{
    Acks, BrokerInfo, ClusterInfo, ClusterStatus, ErrorBody, ErrorCode, FetchOk, MetadataOk,
    NodeStatus, OffsetOk, OffsetSpec, PartitionDescription, PartitionMetadata, ProduceOk, Request,
    RequestHeader, Response, TopicConfig, TopicDescription, TopicMetadata, TopicSummary,
};
use std::sync::Arc;

use crate::producer_ids::ProducerIds;

/// This node's identity as clients see it.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node_id: u32,
    /// `host:port` of the QUIC listener.
    pub addr: String,
    pub cluster_id: String,
}

/// Answers requests from the engine.
#[derive(Debug, Clone)]
pub struct BrokerService {
    engine: EngineHandle,
    me: NodeIdentity,
    /// Hands out idempotent-producer ids (`None`: `InitProducer` is refused).
    producer_ids: Option<Arc<ProducerIds>>,
    /// Cluster mode (`None`: a single-node broker with its own topic registry).
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl BrokerService {
    /// A service over a started engine.
    pub fn new(engine: EngineHandle, me: NodeIdentity) -> Self {
        Self {
            engine,
            me,
            producer_ids: None,
            cluster: None,
        }
    }

    /// Runs in cluster mode: metadata from the controller, requests routed to leaders.
    pub fn with_cluster(mut self, cluster: Arc<crate::cluster::Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Answers `InitProducer` from `ids`.
    pub fn with_producer_ids(mut self, ids: ProducerIds) -> Self {
        self.producer_ids = Some(Arc::new(ids));
        self
    }

    /// One request to one response (and its payload: fetched batches).
    pub async fn handle(
        &self,
        header: RequestHeader,
        request: Request,
        payload: Vec<u8>,
    ) -> (Response, Vec<u8>) {
        self.route(header, request, payload, true).await
    }

    /// [`BrokerService::handle`]; in cluster mode, requests for partitions led
    /// elsewhere are forwarded (proxy mode, unless `may_forward` is false: a request
    /// forwarded here already) or answered `NotLeader` with the leader.
    pub async fn route(
        &self,
        header: RequestHeader,
        request: Request,
        payload: Vec<u8>,
        may_forward: bool,
    ) -> (Response, Vec<u8>) {
        let Some(cluster) = self.cluster.clone() else {
            return self.handle_local(header, request, payload).await;
        };
        let (request, payload) = match self
            .handle_cluster(&cluster, &header, request, payload, may_forward)
            .await
        {
            Ok(answer) => return answer,
            Err(local) => local,
        };
        let tp = crate::cluster_service::request_tp(&request);
        let (mut response, payload) = self.handle_local(header, request, payload).await;
        if let Some(tp) = tp {
            crate::cluster_service::add_leader(&cluster, &tp, &mut response);
        }
        (response, payload)
    }

    /// The single-node handling (and, in cluster mode, what this node serves itself).
    async fn handle_local(
        &self,
        _header: RequestHeader,
        request: Request,
        payload: Vec<u8>,
    ) -> (Response, Vec<u8>) {
        match request {
            Request::Metadata { topics } => (Response::Metadata(Ok(self.metadata(topics))), vec![]),
            Request::CreateTopic {
                name,
                partitions,
                config,
            } => {
                let r = self
                    .engine
                    .create_topic(&name, partitions, node_config(config))
                    .await
                    .map(|()| TopicSummary { name, partitions })
                    .map_err(topic_error);
                (Response::CreateTopic(r), vec![])
            }
            Request::DeleteTopic { name } => {
                let r = self.engine.delete_topic(&name).await.map_err(topic_error);
                (Response::DeleteTopic(r), vec![])
            }
            Request::ListTopics => {
                let list = self
                    .engine
                    .topics()
                    .into_iter()
                    .map(|t| TopicSummary {
                        name: t.name,
                        partitions: t.partitions,
                    })
                    .collect();
                (Response::ListTopics(Ok(list)), vec![])
            }
            Request::DescribeTopic { name } => {
                (Response::DescribeTopic(self.describe(&name).await), vec![])
            }
            Request::Produce {
                topic,
                partition,
                acks,
                timeout_ms,
            } => {
                let r = match self.partition(&topic, partition) {
                    Err(e) => Err(e),
                    Ok(tp) => self
                        .engine
                        .produce(&tp, payload, ack_policy(acks), timeout_ms)
                        .await
                        .map_err(request_error)
                        .map(|p| ProduceOk {
                            base_offset: p.base_offset,
                            last_offset: p.last_offset,
                            log_start: p.log_start,
                        }),
                };
                (Response::Produce(r), vec![])
            }
            Request::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                max_wait_ms,
            } => {
                let tp = match self.partition(&topic, partition) {
                    Ok(tp) => tp,
                    Err(e) => return (Response::Fetch(Err(e)), vec![]),
                };
                match self.engine.fetch(&tp, offset, max_bytes, max_wait_ms).await {
                    Ok(f) => {
                        let ok = FetchOk {
                            high_watermark: f.high_watermark,
                            log_start: f.log_start,
                            next_offset: f.batches.next_offset.max(offset),
                            batches: u32::try_from(f.batches.count).unwrap_or(u32::MAX),
                        };
                        (Response::Fetch(Ok(ok)), f.batches.bytes)
                    }
                    Err(e) => (Response::Fetch(Err(request_error(e))), vec![]),
                }
            }
            Request::ListOffsets {
                topic,
                partition,
                spec,
            } => {
                let r = match self.partition(&topic, partition) {
                    Err(e) => Err(e),
                    Ok(tp) => {
                        let query = match spec {
                            OffsetSpec::Earliest => OffsetQuery::Earliest,
                            OffsetSpec::Latest => OffsetQuery::Latest,
                            OffsetSpec::Timestamp(ts) => OffsetQuery::Timestamp(ts),
                        };
                        self.engine
                            .list_offsets(&tp, query)
                            .await
                            .map(|offset| OffsetOk {
                                offset,
                                timestamp: None,
                            })
                            .map_err(request_error)
                    }
                };
                (Response::ListOffsets(r), vec![])
            }
            Request::CreateTopicReplicated {
                name,
                partitions,
                replication_factor,
                config,
            } => {
                if replication_factor.is_some_and(|rf| rf != 1) {
                    let e = ErrorBody::new(
                        ErrorCode::InvalidConfig,
                        "a single-node broker keeps one replica per partition",
                    );
                    return (Response::CreateTopic(Err(e)), vec![]);
                }
                let r = self
                    .engine
                    .create_topic(&name, partitions, node_config(config))
                    .await
                    .map(|()| TopicSummary { name, partitions })
                    .map_err(topic_error);
                (Response::CreateTopic(r), vec![])
            }
            Request::ClusterStatus => (Response::ClusterStatus(Ok(self.status())), vec![]),
            Request::InitProducer => {
                let r = crate::producer_ids::init_producer(self.producer_ids.clone()).await;
                (Response::InitProducer(r), vec![])
            }
            Request::DescribeCluster => {
                let topics = self.engine.topics();
                let info = ClusterInfo {
                    cluster_id: self.me.cluster_id.clone(),
                    node_id: self.me.node_id,
                    controller: Some(self.me.node_id),
                    brokers: vec![self.broker()],
                    topics: u32::try_from(topics.len()).unwrap_or(u32::MAX),
                    partitions: topics.iter().map(|t| t.partitions).sum(),
                };
                (Response::DescribeCluster(Ok(info)), vec![])
            }
        }
    }

    fn status(&self) -> ClusterStatus {
        let topics = self.engine.topics();
        let partitions: u32 = topics.iter().map(|t| t.partitions).sum();
        ClusterStatus {
            cluster_id: self.me.cluster_id.clone(),
            node_id: self.me.node_id,
            controller: Some(self.me.node_id),
            nodes: vec![NodeStatus {
                node_id: self.me.node_id,
                addr: self.me.addr.clone(),
                peer_addr: String::new(),
                alive: true,
                last_heard_ms: None,
                leaders: partitions,
                replicas: partitions,
            }],
            topics: u32::try_from(topics.len()).unwrap_or(u32::MAX),
            partitions,
            leaderless: 0,
        }
    }

    /// Stats of the partitions of `name` this node hosts (cluster mode: the engine's
    /// registry does not list them).
    pub(crate) async fn engine_stats_for(&self, name: &str) -> Vec<sluice_node::PartitionStats> {
        match self.engine.stats().await {
            Ok(s) => s
                .partitions()
                .filter(|p| p.tp.topic == name)
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn broker(&self) -> BrokerInfo {
        BrokerInfo {
            node_id: self.me.node_id,
            addr: self.me.addr.clone(),
        }
    }

    pub(crate) fn partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<TopicPartition, ErrorBody> {
        if let Some(c) = &self.cluster {
            return crate::cluster_service::partition(c, topic, partition);
        }
        let Some(info) = self.engine.topic(topic) else {
            return Err(ErrorBody::new(
                ErrorCode::UnknownTopic,
                format!("unknown topic {topic}"),
            ));
        };
        if partition >= info.partitions {
            return Err(ErrorBody::new(
                ErrorCode::UnknownPartition,
                format!("topic {topic} has {} partitions", info.partitions),
            ));
        }
        Ok(TopicPartition::new(topic, partition))
    }

    fn metadata(&self, topics: Option<Vec<String>>) -> MetadataOk {
        let all = self.engine.topics();
        let wanted: Vec<String> = match topics {
            Some(names) => names,
            None => all.iter().map(|t| t.name.clone()).collect(),
        };
        let topics = wanted
            .into_iter()
            .map(|name| match all.iter().find(|t| t.name == name) {
                Some(t) => TopicMetadata {
                    name,
                    partitions: (0..t.partitions)
                        .map(|p| PartitionMetadata {
                            partition: p,
                            leader: Some(self.me.node_id),
                            replicas: vec![self.me.node_id],
                        })
                        .collect(),
                    error: None,
                },
                None => TopicMetadata {
                    error: Some(ErrorBody::new(
                        ErrorCode::UnknownTopic,
                        format!("unknown topic {name}"),
                    )),
                    name,
                    partitions: vec![],
                },
            })
            .collect();
        MetadataOk {
            brokers: vec![self.broker()],
            topics,
        }
    }

    async fn describe(&self, name: &str) -> Result<TopicDescription, ErrorBody> {
        let Some(info) = self.engine.topic(name) else {
            return Err(ErrorBody::new(
                ErrorCode::UnknownTopic,
                format!("unknown topic {name}"),
            ));
        };
        // One ask per owning shard for every partition's offsets and log size (not two
        // queue hops per partition); a partition missing from the stats (being created
        // or deleted right now) is described as empty.
        let stats = self.engine.topic_stats(name).await.map_err(request_error)?;
        let mut stats = stats.into_iter().peekable();
        let mut partitions = Vec::with_capacity(info.partitions as usize);
        for p in 0..info.partitions {
            let mut d = PartitionDescription {
                partition: p,
                leader: Some(self.me.node_id),
                replicas: vec![self.me.node_id],
                log_start: 0,
                high_watermark: 0,
                log_bytes: 0,
            };
            while let Some(s) = stats.next_if(|s| s.tp.partition <= p) {
                if s.tp.partition == p {
                    d.log_start = s.log_start;
                    d.high_watermark = s.high_watermark;
                    d.log_bytes = s.log_bytes;
                }
            }
            partitions.push(d);
        }
        Ok(TopicDescription {
            name: info.name,
            config: TopicConfig {
                retention_bytes: info.config.retention_bytes,
                retention_ms: info.config.retention_ms,
                segment_bytes: info.config.segment_bytes,
            },
            partitions,
        })
    }
}

fn node_config(c: TopicConfig) -> NodeTopicConfig {
    NodeTopicConfig {
        retention_bytes: c.retention_bytes,
        retention_ms: c.retention_ms,
        segment_bytes: c.segment_bytes,
    }
}

fn ack_policy(acks: Acks) -> AckPolicy {
    match acks {
        Acks::None => AckPolicy::None,
        Acks::Leader => AckPolicy::Leader,
        Acks::All => AckPolicy::All,
    }
}

/// The wire error for an engine error (DESIGN §4 kinds noted per arm).
pub fn engine_error(e: EngineError) -> ErrorBody {
    let msg = e.to_string();
    match e {
        // Definite: refused before anything was appended.
        EngineError::UnknownPartition(_) => ErrorBody::new(ErrorCode::UnknownPartition, msg),
        EngineError::InvalidBatch(b) => ErrorBody::from(b),
        EngineError::StorageFull => ErrorBody::new(ErrorCode::StorageFull, msg),
        EngineError::TooManyWaiting(_) => ErrorBody::new(ErrorCode::TooManyRequests, msg),
        EngineError::NotLeader(_) => ErrorBody::new(ErrorCode::NotLeader, msg),
        EngineError::InvalidConfig(_) => ErrorBody::new(ErrorCode::InvalidConfig, msg),
        EngineError::OffsetOutOfRange {
            offset,
            log_start,
            high_watermark,
        } => ErrorBody::offset_out_of_range(offset, log_start, high_watermark),
        // Indeterminate: accepted, not confirmed.
        EngineError::TimedOut => ErrorBody::new(ErrorCode::RequestTimedOut, msg),
        EngineError::StorageFailed(_) | EngineError::Corruption(_) => {
            ErrorBody::new(ErrorCode::StorageFailed, msg)
        }
        EngineError::PartitionExists(_) => ErrorBody::new(ErrorCode::Unknown, msg),
        // Definite: the idempotent producer's batch was not appended by this request.
        EngineError::DuplicateSequence {
            base_offset: Some(base_offset),
            last_offset: Some(last_offset),
        } => {
            ErrorBody::new(ErrorCode::DuplicateSequence, msg).with_detail(ErrorDetail::Duplicate {
                base_offset,
                last_offset,
            })
        }
        EngineError::DuplicateSequence { .. } => ErrorBody::new(ErrorCode::DuplicateSequence, msg),
        EngineError::OutOfOrderSequence { .. } | EngineError::ProducerFenced { .. } => {
            ErrorBody::new(ErrorCode::OutOfOrderSequence, msg)
        }
    }
}

fn request_error(e: RequestError) -> ErrorBody {
    match e {
        RequestError::Engine(e) => engine_error(e),
        RequestError::ShuttingDown => ErrorBody::new(ErrorCode::ShuttingDown, e.to_string()),
        RequestError::Stopped => ErrorBody::new(ErrorCode::Interrupted, e.to_string()),
    }
}

fn topic_error(e: TopicError) -> ErrorBody {
    let msg = e.to_string();
    let code = match e {
        TopicError::InvalidName { .. } => ErrorCode::InvalidTopicName,
        TopicError::InvalidPartitions(_) | TopicError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        TopicError::Exists(_) => ErrorCode::TopicExists,
        TopicError::Unknown(_) => ErrorCode::UnknownTopic,
        TopicError::Storage(_) => ErrorCode::StorageFailed,
        TopicError::ShuttingDown => ErrorCode::ShuttingDown,
    };
    ErrorBody::new(code, msg)
}
