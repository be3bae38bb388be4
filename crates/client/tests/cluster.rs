//! Leader routing against fake cluster nodes: gateways over a `Service` that leads some
//! partitions and answers `NotLeader` (naming the leader) for the others, as a cluster
//! node that does not forward does.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_client::wire::*;
use sluice_client::{
    Client, ClientError, ClientOptions, ClientTls, ProducerConfig, ProducerRecord,
};
use sluice_gateway::{
    dev_ca_path, ensure_dev_certificates, Gateway, GatewayConfig, Reply, Service, TlsSource,
};

const TOPIC: &str = "events";
const PARTITIONS: u32 = 2;

/// What every fake node agrees on: who leads each partition, and where nodes are.
#[derive(Debug, Default)]
struct ClusterState {
    /// Partition → leader node id (`None`: an election).
    leaders: Mutex<HashMap<u32, Option<u32>>>,
    /// Node id → client address.
    addrs: Mutex<HashMap<u32, String>>,
}

impl ClusterState {
    fn leader(&self, partition: u32) -> Option<u32> {
        self.leaders
            .lock()
            .unwrap()
            .get(&partition)
            .copied()
            .flatten()
    }

    fn set_leader(&self, partition: u32, leader: Option<u32>) {
        self.leaders.lock().unwrap().insert(partition, leader);
    }

    fn addr(&self, node: u32) -> Option<String> {
        self.addrs.lock().unwrap().get(&node).cloned()
    }
}

/// One fake node: appends what it leads, answers `NotLeader` for the rest.
#[derive(Debug)]
struct FakeNode {
    id: u32,
    cluster: Arc<ClusterState>,
    /// Appended batches per partition.
    logs: Mutex<HashMap<u32, Vec<Vec<u8>>>>,
    /// Per partition, the offset the next record gets.
    ends: Mutex<HashMap<u32, u64>>,
    /// Partition-addressed requests received (answered or not).
    partition_requests: AtomicU64,
    not_leader_answers: AtomicU64,
    metadata_requests: AtomicU64,
    admin_requests: AtomicU64,
}

impl FakeNode {
    fn new(id: u32, cluster: Arc<ClusterState>) -> FakeNode {
        FakeNode {
            id,
            cluster,
            logs: Mutex::default(),
            ends: Mutex::default(),
            partition_requests: AtomicU64::new(0),
            not_leader_answers: AtomicU64::new(0),
            metadata_requests: AtomicU64::new(0),
            admin_requests: AtomicU64::new(0),
        }
    }

    fn produced(&self, partition: u32) -> usize {
        self.logs
            .lock()
            .unwrap()
            .get(&partition)
            .map_or(0, Vec::len)
    }

    fn end(&self, partition: u32) -> u64 {
        self.ends
            .lock()
            .unwrap()
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }

    /// `None` when this node leads the partition, else the `NotLeader` to answer.
    fn not_leader(&self, partition: u32) -> Option<ErrorBody> {
        self.partition_requests.fetch_add(1, Ordering::SeqCst);
        let leader = self.cluster.leader(partition);
        if leader == Some(self.id) {
            return None;
        }
        self.not_leader_answers.fetch_add(1, Ordering::SeqCst);
        let addr = leader.and_then(|l| self.cluster.addr(l));
        Some(ErrorBody::not_leader(leader, addr))
    }

    fn answer(&self, request: Request, payload: Vec<u8>) -> Reply {
        let kind = request.kind();
        match request {
            Request::Produce { partition, .. } => {
                if let Some(e) = self.not_leader(partition) {
                    return Reply::new(Response::Produce(Err(e)));
                }
                let records =
                    sluice_proto::BatchHeader::parse(&payload, &sluice_proto::Limits::default())
                        .map_or(1, |h| u64::from(h.record_count));
                self.logs
                    .lock()
                    .unwrap()
                    .entry(partition)
                    .or_default()
                    .push(payload);
                let mut ends = self.ends.lock().unwrap();
                let end = ends.entry(partition).or_default();
                let offset = *end;
                *end += records;
                Reply::new(Response::Produce(Ok(ProduceOk {
                    base_offset: offset,
                    last_offset: offset + records - 1,
                    log_start: 0,
                })))
            }
            Request::Fetch {
                partition, offset, ..
            } => {
                if let Some(e) = self.not_leader(partition) {
                    return Reply::new(Response::Fetch(Err(e)));
                }
                let end = self.end(partition);
                Reply::new(Response::Fetch(Ok(FetchOk {
                    high_watermark: end,
                    log_start: 0,
                    next_offset: offset,
                    batches: 0,
                })))
            }
            Request::ListOffsets { partition, .. } => {
                if let Some(e) = self.not_leader(partition) {
                    return Reply::new(Response::ListOffsets(Err(e)));
                }
                Reply::new(Response::ListOffsets(Ok(OffsetOk {
                    offset: Some(self.end(partition)),
                    timestamp: None,
                })))
            }
            Request::Metadata { topics } => {
                self.metadata_requests.fetch_add(1, Ordering::SeqCst);
                let brokers = {
                    let addrs = self.cluster.addrs.lock().unwrap();
                    let mut brokers: Vec<BrokerInfo> = addrs
                        .iter()
                        .map(|(id, addr)| BrokerInfo {
                            node_id: *id,
                            addr: addr.clone(),
                        })
                        .collect();
                    brokers.sort_by_key(|b| b.node_id);
                    brokers
                };
                let names = topics.unwrap_or_else(|| vec![TOPIC.to_owned()]);
                let topics = names
                    .into_iter()
                    .map(|name| {
                        if name != TOPIC {
                            return TopicMetadata {
                                name,
                                partitions: vec![],
                                error: Some(ErrorBody::new(ErrorCode::UnknownTopic, "no")),
                            };
                        }
                        TopicMetadata {
                            name,
                            partitions: (0..PARTITIONS)
                                .map(|p| PartitionMetadata {
                                    partition: p,
                                    leader: self.cluster.leader(p),
                                    replicas: vec![1, 2],
                                })
                                .collect(),
                            error: None,
                        }
                    })
                    .collect();
                Reply::new(Response::Metadata(Ok(MetadataOk { brokers, topics })))
            }
            Request::InitProducer => Reply::new(Response::InitProducer(Ok(ProducerIdOk {
                producer_id: 7,
                producer_epoch: 0,
            }))),
            Request::CreateTopicReplicated {
                name, partitions, ..
            } => {
                self.admin_requests.fetch_add(1, Ordering::SeqCst);
                Reply::new(Response::CreateTopic(Ok(TopicSummary { name, partitions })))
            }
            Request::ClusterStatus => {
                self.admin_requests.fetch_add(1, Ordering::SeqCst);
                Reply::new(Response::ClusterStatus(Ok(ClusterStatus {
                    cluster_id: "fake".to_owned(),
                    node_id: self.id,
                    controller: Some(1),
                    nodes: vec![],
                    topics: 1,
                    partitions: PARTITIONS,
                    leaderless: 0,
                })))
            }
            _ => Reply::new(Response::failed(
                kind,
                ErrorBody::new(ErrorCode::InvalidRequest, "the fake node does not do that"),
            )),
        }
    }
}

impl Service for FakeNode {
    fn handle(
        &self,
        _header: RequestHeader,
        request: Request,
        payload: Vec<u8>,
    ) -> impl std::future::Future<Output = Reply> + Send {
        let reply = self.answer(request, payload);
        async move { reply }
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    state: Arc<ClusterState>,
    nodes: Vec<Arc<FakeNode>>,
    gateways: Vec<Option<Gateway>>,
}

impl Cluster {
    /// `n` fake nodes (ids 1..=n) sharing one dev CA; partition `p` led by node
    /// `p % n + 1`.
    fn start(n: u32) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certificates(dir.path()).unwrap();
        let state = Arc::new(ClusterState::default());
        let mut nodes = Vec::new();
        let mut gateways = Vec::new();
        for id in 1..=n {
            let node = Arc::new(FakeNode::new(id, Arc::clone(&state)));
            let mut config = GatewayConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                TlsSource::Dev {
                    dir: dir.path().to_owned(),
                },
            );
            config.stream_read_timeout = Duration::from_secs(2);
            let gateway = Gateway::bind(config, Arc::clone(&node)).unwrap();
            state
                .addrs
                .lock()
                .unwrap()
                .insert(id, gateway.local_addr().to_string());
            nodes.push(node);
            gateways.push(Some(gateway));
        }
        for p in 0..PARTITIONS {
            state.set_leader(p, Some(p % n + 1));
        }
        Cluster {
            dir,
            state,
            nodes,
            gateways,
        }
    }

    fn tls(&self) -> ClientTls {
        ClientTls::ca_file(dev_ca_path(self.dir.path()))
    }

    fn node(&self, id: u32) -> &FakeNode {
        &self.nodes[id as usize - 1]
    }

    fn addr(&self, id: u32) -> SocketAddr {
        self.state.addr(id).unwrap().parse().unwrap()
    }

    async fn client(&self, bootstrap: u32) -> Client {
        Client::connect(self.addr(bootstrap), self.tls())
            .await
            .unwrap()
    }

    async fn stop(&mut self, id: u32) {
        let gateway = self.gateways[id as usize - 1].take().unwrap();
        gateway.shutdown(Duration::from_millis(100)).await;
    }
}

fn batch() -> Vec<u8> {
    let mut builder = sluice_proto::BatchBuilder::new(sluice_proto::Limits::default());
    builder
        .push(1_700_000_000_000, None, Some(b"v"), &[])
        .unwrap();
    builder.finish().unwrap()
}

async fn produce(client: &Client, partition: u32) -> Result<ProduceOk, ClientError> {
    client
        .produce(TOPIC, partition, &batch(), Acks::All, 1_000)
        .await
}

/// Waits (briefly) for the background refresh to put `leader` in the cache.
async fn cached(client: &Client, partition: u32, leader: Option<u32>) {
    for _ in 0..200 {
        if client.cached_leader(TOPIC, partition) == leader {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "partition {partition}: cached leader {:?}, expected {leader:?}",
        client.cached_leader(TOPIC, partition)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_re_routes_the_produce_and_the_cache_routes_the_next_directly() {
    let c = Cluster::start(2);
    // Partition 1 is led by node 2; the client only knows node 1.
    let client = c.client(1).await;
    assert_eq!(client.cached_leader(TOPIC, 1), None);

    let ok = produce(&client, 1).await.unwrap();
    assert_eq!(ok.base_offset, 0);
    assert_eq!(c.node(1).not_leader_answers.load(Ordering::SeqCst), 1);
    assert_eq!(c.node(1).produced(1), 0);
    assert_eq!(c.node(2).produced(1), 1, "appended once, on the leader");
    assert_eq!(client.cached_leader(TOPIC, 1), Some(2));

    // The next ones go straight to node 2.
    let before = c.node(1).partition_requests.load(Ordering::SeqCst);
    for i in 1..5 {
        assert_eq!(produce(&client, 1).await.unwrap().base_offset, i);
    }
    let (fetched, _) = client.fetch(TOPIC, 1, 0, 1 << 20, 0).await.unwrap();
    assert_eq!(fetched.high_watermark, 5);
    let offset = client
        .list_offsets(TOPIC, 1, OffsetSpec::Latest)
        .await
        .unwrap();
    assert_eq!(offset.offset, Some(5));
    assert_eq!(
        c.node(1).partition_requests.load(Ordering::SeqCst),
        before,
        "node 1 saw none of them"
    );
    assert_eq!(c.node(2).produced(1), 5);
    assert_eq!(c.node(2).not_leader_answers.load(Ordering::SeqCst), 0);

    // Partition 0 is node 1's: served there (the metadata refresh learned it too).
    cached(&client, 0, Some(1)).await;
    produce(&client, 0).await.unwrap();
    assert_eq!(c.node(1).produced(0), 1);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_move_is_followed_and_a_leaderless_partition_is_returned_to_the_caller() {
    let c = Cluster::start(2);
    let client = c.client(1).await;
    produce(&client, 1).await.unwrap();
    assert_eq!(client.cached_leader(TOPIC, 1), Some(2));

    // The leadership moves to node 1: node 2 says so, the produce follows.
    c.state.set_leader(1, Some(1));
    let ok = produce(&client, 1).await.unwrap();
    assert_eq!(ok.base_offset, 0, "node 1's log of partition 1");
    assert_eq!(c.node(1).produced(1), 1);
    assert_eq!(c.node(2).produced(1), 1);
    assert_eq!(client.cached_leader(TOPIC, 1), Some(1));

    // An election: no leader anywhere. The definite, retriable error reaches the caller
    // and the cache forgets the leader.
    c.state.set_leader(1, None);
    let err = produce(&client, 1).await.unwrap_err();
    assert_eq!(
        err.broker_error().map(|e| e.code),
        Some(ErrorCode::NotLeader),
        "{err:?}"
    );
    assert_eq!(err.write_outcome(), WriteOutcome::Definite);
    assert!(err.is_retriable());
    assert_eq!(client.cached_leader(TOPIC, 1), None);

    // Elected: the next call (the producer's retry) finds it, via any node.
    c.state.set_leader(1, Some(2));
    produce(&client, 1).await.unwrap();
    assert_eq!(c.node(2).produced(1), 2);
    cached(&client, 1, Some(2)).await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_forgotten_and_does_not_hold_up_other_partitions() {
    let mut c = Cluster::start(2);
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(1_500),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(c.addr(1), c.tls(), options)
        .await
        .unwrap();
    produce(&client, 1).await.unwrap();
    assert_eq!(client.cached_leader(TOPIC, 1), Some(2));

    // Node 2 goes away while the cluster still names it (no election yet). The client
    // sees its connection closed for shutdown, or a dial that fails: either way a
    // definite, retriable error, and node 2 is routed around from then on.
    c.stop(2).await;
    let err = produce(&client, 1).await.unwrap_err();
    assert!(err.is_retriable(), "{err:?}");
    assert_eq!(err.write_outcome(), WriteOutcome::Definite, "{err:?}");
    // Node 1's partition is unaffected.
    let started = Instant::now();
    produce(&client, 0).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));

    // Node 1 takes over partition 1: the retry lands there.
    c.state.set_leader(1, Some(1));
    produce(&client, 1).await.unwrap();
    assert_eq!(c.node(1).produced(1), 1);
    cached(&client, 1, Some(1)).await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_node_costs_one_connect_timeout_not_one_per_request() {
    let c = Cluster::start(1);
    // Node 3 "leads" partition 1 at an address that swallows every packet.
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.state
        .addrs
        .lock()
        .unwrap()
        .insert(3, hole.local_addr().unwrap().to_string());
    c.state.set_leader(1, Some(3));
    let timeout = Duration::from_millis(1_500);
    let options = ClientOptions {
        connect_timeout: timeout,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(c.addr(1), c.tls(), options)
        .await
        .unwrap();
    client.metadata(Some(vec![TOPIC.to_owned()])).await.unwrap();
    assert_eq!(client.cached_leader(TOPIC, 1), Some(3));

    let stuck = {
        let client = client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (produce(&client, 1).await, started.elapsed())
        })
    };
    // Meanwhile partition 0 (node 1) is served at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    produce(&client, 0).await.unwrap();
    client.metadata(None).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(700));

    let (result, took) = stuck.await.unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(took >= timeout, "{took:?}");

    // Node 1 still names node 3 (in the refreshed metadata, in its NotLeader): the client
    // does not redial it for a while, it returns the NotLeader at once.
    let started = Instant::now();
    let err = produce(&client, 1).await.unwrap_err();
    assert_eq!(
        err.broker_error().map(|e| e.code),
        Some(ErrorCode::NotLeader),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(700));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_falls_through_dead_addresses_and_admin_calls_use_a_live_node() {
    let mut c = Cluster::start(2);
    // Nothing answers here (a socket that swallows packets: no ICMP).
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    let client = Client::connect_cluster_with(
        &[hole.local_addr().unwrap(), c.addr(1), c.addr(2)],
        c.tls(),
        options,
    )
    .await
    .unwrap();
    assert_eq!(client.addr(), c.addr(1));
    let status = client.cluster_status().await.unwrap();
    assert_eq!(status.node_id, 1);
    let created = client
        .create_topic_replicated("other", 3, Some(2), TopicConfig::default())
        .await
        .unwrap();
    assert_eq!(created.partitions, 3);

    // Node 1 goes away: admin calls fall back to node 2.
    c.stop(1).await;
    let status = client.cluster_status().await.unwrap();
    assert_eq!(status.node_id, 2);
    assert!(c.node(2).admin_requests.load(Ordering::SeqCst) >= 1);
    client.close().await;

    assert!(matches!(
        Client::connect_cluster(&[], c.tls()).await,
        Err(ClientError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_reaches_each_partitions_leader() {
    let c = Cluster::start(2);
    let client = c.client(2).await;
    let producer = client.producer(ProducerConfig::default()).unwrap();
    let mut deliveries = Vec::new();
    for i in 0..20u32 {
        let record = ProducerRecord::new(TOPIC, i.to_be_bytes().to_vec()).partition(i % 2);
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    producer.close().await;
    assert_eq!(c.node(1).produced(1), 0);
    assert_eq!(c.node(2).produced(0), 0);
    assert!(c.node(1).produced(0) >= 1);
    assert!(c.node(2).produced(1) >= 1);
    client.close().await;
}
