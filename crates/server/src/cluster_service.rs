//! The broker service in cluster mode: metadata from the controller state, admin
//! requests proposed to the controller (forwarded to its leader when that is another
//! node), and produce/fetch/list-offsets routed to each partition's leader — served
//! here when this node leads, forwarded in proxy mode, otherwise answered `NotLeader`
//! with the leader's id and address so the SDK re-routes that partition.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_controller::{Applied, Command, TopicConfig as ControllerTopicConfig};
use sluice_engine::TopicPartition;
use sluice_node::controller_partition;
use sluice_proto::wire::{
    decode_request, decode_response, encode_request, encode_response, split_frame, BrokerInfo,
    ClusterInfo, ClusterStatus, ErrorBody, ErrorCode, ErrorDetail, FrameLimits, MetadataOk,
    NodeStatus, PartitionDescription, PartitionMetadata, Request, RequestHeader, Response,
    ResponseHeader, TopicConfig, TopicDescription, TopicMetadata, TopicSummary,
};

use crate::cluster::Cluster;
use crate::service::BrokerService;

/// How long a forwarded request may take on top of its own wait.
const FORWARD_SLACK: Duration = Duration::from_secs(10);

/// The partition a request addresses, if it is partition-addressed.
pub fn request_tp(r: &Request) -> Option<TopicPartition> {
    r.partition()
        .map(|(topic, partition)| TopicPartition::new(topic, partition))
}

/// `topic`/`partition` if the controller state has it.
pub fn partition(c: &Cluster, topic: &str, partition: u32) -> Result<TopicPartition, ErrorBody> {
    c.with_state(|s| match s.topic(topic) {
        None => Err(ErrorBody::new(
            ErrorCode::UnknownTopic,
            format!("unknown topic {topic}"),
        )),
        Some(t) if partition >= t.partition_count() => Err(ErrorBody::new(
            ErrorCode::UnknownPartition,
            format!("topic {topic} has {} partitions", t.partition_count()),
        )),
        Some(_) => Ok(TopicPartition::new(topic, partition)),
    })
}

fn not_leader(c: &Cluster, tp: &TopicPartition) -> ErrorBody {
    let leader = c.leader_of(tp).filter(|&l| l != c.node_id());
    ErrorBody::new(
        ErrorCode::NotLeader,
        format!("node {} does not lead {tp}", c.node_id()),
    )
    .with_detail(ErrorDetail::NotLeader {
        leader: leader.and_then(|l| u32::try_from(l).ok()),
        addr: leader.and_then(|l| c.node_addr(l)),
    })
}

/// Fills in the leader of a `NotLeader` answer the engine gave without one.
pub fn add_leader(c: &Cluster, tp: &TopicPartition, response: &mut Response) {
    let body = match response {
        Response::Produce(Err(e)) | Response::Fetch(Err(e)) | Response::ListOffsets(Err(e)) => e,
        _ => return,
    };
    if body.code == ErrorCode::NotLeader && body.detail == ErrorDetail::None {
        *body = not_leader(c, tp);
    }
}

fn u32_of(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl BrokerService {
    /// Cluster-mode handling. `Ok`: the answer. `Err`: the request (given back) is
    /// for this node to serve locally (a partition it leads, or node-local requests).
    pub(crate) async fn handle_cluster(
        &self,
        c: &Arc<Cluster>,
        header: &RequestHeader,
        request: Request,
        payload: Vec<u8>,
        may_forward: bool,
    ) -> Result<(Response, Vec<u8>), (Request, Vec<u8>)> {
        let kind = request.kind();
        let answer = |r: Response| Ok((r, vec![]));
        match &request {
            Request::Metadata { topics } => answer(Response::Metadata(Ok(metadata(c, topics)))),
            Request::ListTopics => answer(Response::ListTopics(Ok(c.with_state(|s| {
                s.topics()
                    .map(|t| TopicSummary {
                        name: t.name.clone(),
                        partitions: t.partition_count(),
                    })
                    .collect()
            })))),
            Request::DescribeTopic { name } => answer(Response::DescribeTopic(
                self.describe_cluster_topic(c, name).await,
            )),
            Request::DescribeCluster => answer(Response::DescribeCluster(Ok(describe(c)))),
            Request::ClusterStatus => answer(Response::ClusterStatus(Ok(status(c)))),
            Request::CreateTopic { .. }
            | Request::CreateTopicReplicated { .. }
            | Request::DeleteTopic { .. } => {
                let leader = c.controller();
                if leader == Some(c.node_id()) {
                    return answer(admin(c, request).await);
                }
                match leader {
                    Some(l) if may_forward => {
                        Ok(self.forward(c, l, header, &request, &payload).await)
                    }
                    _ => answer(Response::failed(
                        kind,
                        ErrorBody::new(
                            ErrorCode::NotLeader,
                            "no controller leader is known yet (the cluster is electing one); retry",
                        ),
                    )),
                }
            }
            Request::Produce { .. } | Request::Fetch { .. } | Request::ListOffsets { .. } => {
                let Some(tp) = request_tp(&request) else {
                    return Err((request, payload));
                };
                if let Err(e) = partition(c, &tp.topic, tp.partition) {
                    return answer(Response::failed(kind, e));
                }
                let leader = c.leader_of(&tp);
                if c.hosts(&tp) && leader == Some(c.node_id()) {
                    return Err((request, payload));
                }
                match leader {
                    Some(l) if l != c.node_id() && may_forward && c.settings().proxy => {
                        Ok(self.forward(c, l, header, &request, &payload).await)
                    }
                    _ => answer(Response::failed(kind, not_leader(c, &tp))),
                }
            }
            Request::InitProducer => Err((request, payload)),
        }
    }

    /// Sends the request to node `to` over the peer link and returns its answer.
    async fn forward(
        &self,
        c: &Cluster,
        to: u64,
        header: &RequestHeader,
        request: &Request,
        payload: &[u8],
    ) -> (Response, Vec<u8>) {
        let kind = request.kind();
        let limits = FrameLimits::DEFAULT;
        let fail = |code: ErrorCode, msg: String| {
            (Response::failed(kind, ErrorBody::new(code, msg)), vec![])
        };
        let Some(links) = c.links() else {
            return fail(ErrorCode::NotLeader, "peer links are not up yet".into());
        };
        let frame = match encode_request(header, request, payload, &limits) {
            Ok(f) => f,
            Err(e) => return (Response::failed(kind, e.to_error_body()), vec![]),
        };
        let wait = match request {
            Request::Produce { timeout_ms, .. } => *timeout_ms,
            Request::Fetch { max_wait_ms, .. } => *max_wait_ms,
            _ => 0,
        };
        let timeout = FORWARD_SLACK + Duration::from_millis(u64::from(wait));
        match links.forward(to, Bytes::from(frame), timeout).await {
            Ok(answer) => {
                match split_frame(&answer, &limits).and_then(|f| decode_response(f, &limits)) {
                    Ok((_, response, payload)) => (response, payload.to_vec()),
                    Err(e) => fail(
                        ErrorCode::Interrupted,
                        format!("node {to} answered a forwarded request badly: {e}"),
                    ),
                }
            }
            // Not sent: definite.
            Err(sluice_peer::ForwardError::NotConnected(_))
            | Err(sluice_peer::ForwardError::UnknownPeer(_)) => fail(
                ErrorCode::NotLeader,
                format!(
                    "node {to} (the leader) is not reachable from node {}",
                    c.node_id()
                ),
            ),
            // May have been sent: indeterminate for a produce.
            Err(e) => fail(
                ErrorCode::Interrupted,
                format!("forwarding to node {to}: {e}"),
            ),
        }
    }

    /// Serves a request another node forwarded: decoded, handled here without
    /// forwarding again, answered as a whole response frame.
    pub async fn handle_forwarded(&self, from: u64, request: &[u8]) -> Bytes {
        let limits = FrameLimits::DEFAULT;
        let decoded = split_frame(request, &limits).and_then(|f| decode_request(f, &limits));
        let (id, response, payload) = match decoded {
            Ok((header, request, payload)) => {
                let id = header.request_id;
                let (r, p) = self.route(header, request, payload.to_vec(), false).await;
                (id, r, p)
            }
            Err(e) => {
                tracing::warn!(from, error = %e, "cluster: undecodable forwarded request");
                (0, Response::Error(e.to_error_body()), vec![])
            }
        };
        let header = ResponseHeader { request_id: id };
        match encode_response(&header, &response, &payload, &limits) {
            Ok(f) => Bytes::from(f),
            Err(e) => Bytes::from(
                encode_response(&header, &Response::Error(e.to_error_body()), &[], &limits)
                    .unwrap_or_default(),
            ),
        }
    }

    async fn describe_cluster_topic(
        &self,
        c: &Cluster,
        name: &str,
    ) -> Result<TopicDescription, ErrorBody> {
        let Some(meta) = c.with_state(|s| s.topic(name).cloned()) else {
            return Err(ErrorBody::new(
                ErrorCode::UnknownTopic,
                format!("unknown topic {name}"),
            ));
        };
        let stats = self.engine_stats_for(name).await;
        let partitions = meta
            .partitions
            .iter()
            .enumerate()
            .map(|(p, a)| {
                let p = u32::try_from(p).unwrap_or(u32::MAX);
                let tp = TopicPartition::new(name, p);
                let mut d = PartitionDescription {
                    partition: p,
                    leader: c.leader_of(&tp).map(u32_of),
                    replicas: a.replicas.iter().map(|&r| u32_of(r)).collect(),
                    log_start: 0,
                    high_watermark: 0,
                    log_bytes: 0,
                };
                if let Some(s) = stats.iter().find(|s| s.tp.partition == p) {
                    d.log_start = s.log_start;
                    d.high_watermark = s.high_watermark;
                    d.log_bytes = s.log_bytes;
                }
                d
            })
            .collect();
        Ok(TopicDescription {
            name: meta.name,
            config: TopicConfig {
                retention_bytes: meta.config.retention_bytes,
                retention_ms: meta.config.retention_ms,
                segment_bytes: meta.config.segment_bytes,
            },
            partitions,
        })
    }
}

async fn admin(c: &Cluster, request: Request) -> Response {
    let kind = request.kind();
    let (cmd, created) = match request {
        Request::CreateTopic {
            name,
            partitions,
            config,
        } => (create(name.clone(), partitions, None, config), Some(name)),
        Request::CreateTopicReplicated {
            name,
            partitions,
            replication_factor,
            config,
        } => (
            create(name.clone(), partitions, replication_factor, config),
            Some(name),
        ),
        Request::DeleteTopic { name } => (Command::DeleteTopic { name }, None),
        _ => {
            return Response::failed(
                kind,
                ErrorBody::new(ErrorCode::InvalidRequest, "not an admin request"),
            )
        }
    };
    // Placement needs every configured node registered (the controller leader does
    // that right after its election; a create may come first).
    if created.is_some() && !c.all_registered() {
        c.register_nodes().await;
    }
    match c.propose(cmd).await {
        Ok(Applied::TopicCreated(t)) => {
            if let Some(name) = created {
                c.wait_for_leaders(&name).await;
            }
            Response::CreateTopic(Ok(TopicSummary {
                partitions: t.partition_count(),
                name: t.name,
            }))
        }
        Ok(Applied::TopicDeleted(_)) => Response::DeleteTopic(Ok(())),
        Ok(Applied::Rejected(e)) => Response::failed(kind, ErrorBody::new(e.code(), e.to_string())),
        Ok(Applied::NodeRegistered(_)) => Response::failed(
            kind,
            ErrorBody::new(ErrorCode::Unknown, "unexpected controller outcome"),
        ),
        Err(e) => Response::failed(kind, e),
    }
}

fn create(
    name: String,
    partitions: u32,
    replication_factor: Option<u32>,
    config: TopicConfig,
) -> Command {
    Command::CreateTopic {
        name,
        partitions,
        replication_factor,
        config: ControllerTopicConfig {
            retention_bytes: config.retention_bytes,
            retention_ms: config.retention_ms,
            segment_bytes: config.segment_bytes,
        },
    }
}

fn brokers(c: &Cluster) -> Vec<BrokerInfo> {
    let mut out: Vec<BrokerInfo> = c.with_state(|s| {
        s.nodes()
            .map(|n| BrokerInfo {
                node_id: u32_of(n.id),
                addr: n.addr.clone(),
            })
            .collect()
    });
    for n in &c.settings().nodes {
        if !out.iter().any(|b| u64::from(b.node_id) == n.id) {
            out.push(BrokerInfo {
                node_id: u32_of(n.id),
                addr: n.addr.clone(),
            });
        }
    }
    out.sort_by_key(|b| b.node_id);
    out
}

fn metadata(c: &Cluster, topics: &Option<Vec<String>>) -> MetadataOk {
    let topics = c.with_state(|s| {
        let names: Vec<String> = match topics {
            Some(names) => names.clone(),
            None => s.topics().map(|t| t.name.clone()).collect(),
        };
        names
            .into_iter()
            .map(|name| match s.topic(&name) {
                Some(t) => TopicMetadata {
                    partitions: t
                        .partitions
                        .iter()
                        .enumerate()
                        .map(|(p, a)| {
                            let p = u32::try_from(p).unwrap_or(u32::MAX);
                            PartitionMetadata {
                                partition: p,
                                leader: None,
                                replicas: a.replicas.iter().map(|&r| u32_of(r)).collect(),
                            }
                        })
                        .collect(),
                    name,
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
            .collect::<Vec<_>>()
    });
    // Leaders outside the state lock (the engine's board has its own).
    let topics = topics
        .into_iter()
        .map(|mut t| {
            for p in &mut t.partitions {
                p.leader = c
                    .leader_of(&TopicPartition::new(t.name.clone(), p.partition))
                    .map(u32_of);
            }
            t
        })
        .collect();
    MetadataOk {
        brokers: brokers(c),
        topics,
    }
}

fn describe(c: &Cluster) -> ClusterInfo {
    let (topics, partitions) = c.with_state(|s| {
        (
            s.topics().count(),
            s.topics().map(|t| t.partition_count()).sum::<u32>(),
        )
    });
    ClusterInfo {
        cluster_id: c.settings().cluster_id.clone(),
        node_id: u32_of(c.node_id()),
        controller: c.controller().map(u32_of),
        brokers: brokers(c),
        topics: u32::try_from(topics).unwrap_or(u32::MAX),
        partitions,
    }
}

fn status(c: &Cluster) -> ClusterStatus {
    let peers = c.links().map(|l| l.status()).unwrap_or_default();
    let state = c.state();
    let mut leaders: std::collections::BTreeMap<u64, u32> = Default::default();
    let mut leaderless = 0u32;
    let mut hosted = vec![controller_partition()];
    for h in state.replicas_on(c.node_id()) {
        hosted.push(TopicPartition::new(h.topic.name.clone(), h.partition));
    }
    for tp in &hosted {
        match c.leader_of(tp) {
            Some(l) => *leaders.entry(l).or_default() += 1,
            None => leaderless += 1,
        }
    }
    let loads: std::collections::BTreeMap<u64, u64> =
        state.loads().map(|(id, l)| (id, l.replicas)).collect();
    let nodes = c
        .settings()
        .nodes
        .iter()
        .map(|n| {
            let me = n.id == c.node_id();
            let peer = peers.iter().find(|p| p.node_id == n.id);
            let last_heard_ms = if me {
                None
            } else {
                peer.and_then(|p| p.last_heard_ms)
            };
            NodeStatus {
                node_id: u32_of(n.id),
                addr: n.addr.clone(),
                peer_addr: n.peer_addr.to_string(),
                alive: me
                    || (peer.is_some_and(|p| p.connected)
                        && last_heard_ms.is_some_and(|ms| ms < 3_000)),
                last_heard_ms,
                leaders: leaders.get(&n.id).copied().unwrap_or(0),
                replicas: u32::try_from(loads.get(&n.id).copied().unwrap_or(0)).unwrap_or(u32::MAX),
            }
        })
        .collect();
    ClusterStatus {
        cluster_id: c.settings().cluster_id.clone(),
        node_id: u32_of(c.node_id()),
        controller: c.controller().map(u32_of),
        nodes,
        topics: u32::try_from(state.topics().count()).unwrap_or(u32::MAX),
        partitions: state.topics().map(|t| t.partition_count()).sum(),
        leaderless,
    }
}
