//! Shared by the gateway's integration tests: a fake broker [`Service`], gateway and
//! client setup on loopback with dev certificates, and raw quinn helpers for clients that
//! misbehave on purpose.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{Client, ClientTls};
use sluice_gateway::{dev_ca_path, Gateway, GatewayConfig, Reply, Service, TlsSource};
use sluice_proto::wire::*;

/// Topic whose produce and describe requests take `SLOW` to answer.
pub const SLOW_TOPIC: &str = "slow";
pub const SLOW: Duration = Duration::from_millis(300);
/// Topic whose produce and fetch requests never complete.
pub const STUCK_TOPIC: &str = "stuck";

/// Produced batches by (topic, partition), in offset order.
pub type Logs = HashMap<(String, u32), Vec<Vec<u8>>>;

/// A broker stand-in: keeps produced batches per partition in memory, serves them back by
/// index, and records how many requests it handles at once.
#[derive(Debug, Default)]
pub struct FakeBroker {
    pub logs: Mutex<Logs>,
    pub topics: Mutex<Vec<TopicSummary>>,
    pub handling: AtomicU64,
    pub handling_peak: AtomicU64,
    pub handled: AtomicU64,
    pub seen_ids: Mutex<Vec<u64>>,
}

struct Handling<'a>(&'a FakeBroker);

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::SeqCst);
        self.0.handled.fetch_add(1, Ordering::SeqCst);
    }
}

impl FakeBroker {
    async fn answer(&self, header: RequestHeader, request: Request, payload: Vec<u8>) -> Reply {
        let now = self.handling.fetch_add(1, Ordering::SeqCst) + 1;
        self.handling_peak.fetch_max(now, Ordering::SeqCst);
        let _handling = Handling(self);
        self.seen_ids.lock().unwrap().push(header.request_id);
        match request {
            Request::Produce {
                topic, partition, ..
            } => {
                if topic == SLOW_TOPIC {
                    tokio::time::sleep(SLOW).await;
                }
                if topic == STUCK_TOPIC {
                    std::future::pending::<()>().await;
                }
                let mut logs = self.logs.lock().unwrap();
                let log = logs.entry((topic, partition)).or_default();
                let offset = log.len() as u64;
                log.push(payload);
                Reply::new(Response::Produce(Ok(ProduceOk {
                    base_offset: offset,
                    last_offset: offset,
                    log_start: 0,
                })))
            }
            Request::Fetch {
                topic,
                partition,
                offset,
                ..
            } => {
                if topic == STUCK_TOPIC {
                    std::future::pending::<()>().await;
                }
                let logs = self.logs.lock().unwrap();
                let log = logs.get(&(topic, partition));
                let end = log.map_or(0, |l| l.len() as u64);
                match log.and_then(|l| l.get(offset as usize)) {
                    Some(batch) => Reply::with_payload(
                        Response::Fetch(Ok(FetchOk {
                            high_watermark: end,
                            log_start: 0,
                            next_offset: offset + 1,
                            batches: 1,
                        })),
                        batch.clone(),
                    ),
                    None if offset == end => Reply::new(Response::Fetch(Ok(FetchOk {
                        high_watermark: end,
                        log_start: 0,
                        next_offset: offset,
                        batches: 0,
                    }))),
                    None => Reply::new(Response::Fetch(Err(ErrorBody::offset_out_of_range(
                        offset, 0, end,
                    )))),
                }
            }
            Request::CreateTopic {
                name, partitions, ..
            } => {
                let mut topics = self.topics.lock().unwrap();
                if topics.iter().any(|t| t.name == name) {
                    return Reply::new(Response::CreateTopic(Err(ErrorBody::new(
                        ErrorCode::TopicExists,
                        format!("topic {name} exists"),
                    ))));
                }
                let summary = TopicSummary { name, partitions };
                topics.push(summary.clone());
                Reply::new(Response::CreateTopic(Ok(summary)))
            }
            Request::DeleteTopic { name } => {
                let mut topics = self.topics.lock().unwrap();
                let before = topics.len();
                topics.retain(|t| t.name != name);
                if topics.len() == before {
                    Reply::new(Response::DeleteTopic(Err(ErrorBody::new(
                        ErrorCode::UnknownTopic,
                        "no such topic",
                    ))))
                } else {
                    Reply::new(Response::DeleteTopic(Ok(())))
                }
            }
            Request::ListTopics => Reply::new(Response::ListTopics(Ok(self
                .topics
                .lock()
                .unwrap()
                .clone()))),
            Request::DescribeTopic { name } => {
                if name == SLOW_TOPIC {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Reply::new(Response::DescribeTopic(Err(ErrorBody::new(
                    ErrorCode::UnknownTopic,
                    format!("no topic {name}"),
                ))))
            }
            Request::Metadata { .. } => Reply::new(Response::Metadata(Ok(MetadataOk {
                brokers: vec![BrokerInfo {
                    node_id: 1,
                    addr: "127.0.0.1:7010".to_owned(),
                }],
                topics: vec![],
            }))),
            Request::ListOffsets { .. } => Reply::new(Response::ListOffsets(Ok(OffsetOk {
                offset: Some(0),
                timestamp: None,
            }))),
            Request::DescribeCluster => Reply::new(Response::DescribeCluster(Ok(ClusterInfo {
                cluster_id: "test".to_owned(),
                node_id: 1,
                controller: Some(1),
                brokers: vec![],
                topics: 0,
                partitions: 0,
            }))),
            other => Reply::new(Response::failed(
                other.kind(),
                ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    "the fake broker does not do that",
                ),
            )),
        }
    }
}

impl Service for FakeBroker {
    fn handle(
        &self,
        header: RequestHeader,
        request: Request,
        payload: Vec<u8>,
    ) -> impl std::future::Future<Output = Reply> + Send {
        self.answer(header, request, payload)
    }
}

/// A gateway config on an ephemeral loopback port, dev TLS in `dir`, short timeouts.
pub fn config(dir: &Path) -> GatewayConfig {
    let mut config = GatewayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        TlsSource::Dev {
            dir: dir.to_owned(),
        },
    );
    config.stream_read_timeout = Duration::from_millis(500);
    config.stream_write_timeout = Duration::from_secs(5);
    config
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub broker: Arc<FakeBroker>,
    pub gateway: Gateway,
}

impl Harness {
    pub fn start() -> Harness {
        Harness::start_with(|_| {})
    }

    pub fn start_with(adjust: impl FnOnce(&mut GatewayConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        adjust(&mut config);
        let broker = Arc::new(FakeBroker::default());
        let gateway = Gateway::bind(config, Arc::clone(&broker)).unwrap();
        Harness {
            dir,
            broker,
            gateway,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.gateway.local_addr()
    }

    pub fn tls(&self) -> ClientTls {
        ClientTls::ca_file(dev_ca_path(self.dir.path()))
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr(), self.tls()).await.unwrap()
    }

    pub async fn raw(&self) -> quinn::Connection {
        raw_connect(self.addr(), &dev_ca_path(self.dir.path()), &[ALPN])
            .await
            .unwrap()
    }

    /// A well-behaved client on a fresh connection gets answers.
    pub async fn assert_healthy(&self) {
        let client = self.client().await;
        let cluster = client.describe_cluster().await.unwrap();
        assert_eq!(cluster.cluster_id, "test");
        let (response, _) = client.request(Request::ListTopics, &[]).await.unwrap();
        assert!(
            matches!(response, Response::ListTopics(Ok(_))),
            "{response:?}"
        );
        client.close().await;
    }
}

// Each test binary uses a different subset.
#[allow(unused_imports)]
pub use sluice_test_support::raw::{
    frame, frame_with_variant, raw_connect, raw_exchange, read_answer, RawAnswer,
};

/// A record batch of about `bytes` bytes.
pub fn batch_of(bytes: usize) -> Vec<u8> {
    let limits = sluice_proto::Limits::default();
    let mut builder = sluice_proto::BatchBuilder::new(limits);
    let chunk = 64 << 10;
    let mut written = 0;
    let mut i = 0u8;
    while written < bytes {
        let n = chunk.min(bytes - written);
        let value: Vec<u8> = (0..n)
            .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
            .collect();
        builder
            .push(1_700_000_000_000, Some(&[i]), Some(&value), &[])
            .unwrap();
        written += n;
        i = i.wrapping_add(1);
    }
    builder.finish().unwrap()
}
