//! Leader routing against three real `sluice-server` processes in cluster mode (no
//! proxying: a node that does not lead a partition answers `NotLeader`). One client,
//! bootstrapped at one node, must reach every partition's leader by itself, and find
//! the new leader after the old one is killed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_client::wire::{Acks, ErrorCode, TopicConfig};
use sluice_client::{Client, ClientError, ClientOptions, ClientTls};
use sluice_proto::{batches, Limits};
use sluice_test_support::cluster::{expected_records, values_batch, TestCluster};
use sluice_test_support::eventually;

const TOPIC: &str = "routed";
const PARTITIONS: u32 = 3;
/// How long the cluster may take to elect and create.
const SETTLE: Duration = Duration::from_secs(30);
/// How often a test looks again while it waits for the cluster.
const POLL: Duration = Duration::from_millis(100);

/// Produces with the retry a producer would do: retriable errors again after a short
/// pause. Retrying an indeterminate failure is safe here only because of how the test
/// runs: the kill comes between produces, so a request that timed out on the dead
/// leader's half-open connection never reached a live process.
async fn produce(client: &Client, partition: u32, values: &[String]) -> u64 {
    let payload = values_batch(values);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .produce(TOPIC, partition, &payload, Acks::All, 2_000)
            .await
        {
            Ok(ok) => return ok.base_offset,
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("produce to {partition}: {e:?}"),
        }
    }
}

async fn read_all(client: &Client, partition: u32) -> Vec<(u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        match client.fetch(TOPIC, partition, offset, 1 << 20, 0).await {
            Ok((ok, payload)) => {
                for b in batches(&payload, &Limits::default()) {
                    for r in b.unwrap().records() {
                        if r.offset >= offset {
                            let value = r.value.unwrap().to_vec();
                            out.push((r.offset, String::from_utf8(value).unwrap()));
                        }
                    }
                }
                if ok.batches == 0 || ok.next_offset >= ok.high_watermark {
                    return out;
                }
                offset = ok.next_offset;
            }
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("fetch {partition}@{offset}: {e:?}"),
        }
    }
}

async fn create(client: &Client) {
    eventually(SETTLE, POLL, async || {
        match client
            .create_topic_replicated(TOPIC, PARTITIONS, Some(3), TopicConfig::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(ClientError::Broker(b)) if b.code == ErrorCode::TopicExists => Ok(()),
            Err(e) => Err(format!("create: {e:?}")),
        }
    })
    .await
}

/// Every partition's leader per the metadata, once every partition has one.
async fn leaders(client: &Client) -> BTreeMap<u32, u32> {
    eventually(SETTLE, POLL, async || {
        let meta = client
            .metadata(Some(vec![TOPIC.to_owned()]))
            .await
            .map_err(|e| format!("metadata: {e}"))?;
        let leaders: BTreeMap<u32, u32> = meta
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .filter_map(|p| p.leader.map(|l| (p.partition, l)))
            .collect();
        if leaders.len() == PARTITIONS as usize {
            Ok(leaders)
        } else {
            Err(format!("leaders {leaders:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_reaches_every_leader_and_follows_a_failover() {
    let mut cluster = TestCluster::start(3, false);
    // Short timeouts, so the killed node's half-open connection is given up quickly.
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(3),
        keep_alive_interval: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let client = Client::connect_cluster_with(
        &cluster.client_addrs(),
        ClientTls::ca_file(cluster.ca_path()),
        options,
    )
    .await
    .unwrap();
    create(&client).await;
    let before = leaders(&client).await;

    let mut acked: Vec<(u32, u64, Vec<String>)> = Vec::new();
    for i in 0..30u32 {
        let p = i % PARTITIONS;
        let values: Vec<String> = (0..5).map(|j| format!("v-{i}-{j}")).collect();
        acked.push((p, produce(&client, p, &values).await, values));
    }
    // The cache routes by what it learned.
    for (p, leader) in &before {
        assert_eq!(
            client.cached_leader(TOPIC, *p),
            Some(*leader),
            "partition {p}"
        );
    }

    // Kill the leader of partition 0 (whichever node it is, the bootstrap included).
    let old = before[&0];
    cluster.node(u64::from(old)).kill();
    let t0 = Instant::now();
    for i in 30..60u32 {
        let p = i % PARTITIONS;
        let values: Vec<String> = (0..5).map(|j| format!("v-{i}-{j}")).collect();
        acked.push((p, produce(&client, p, &values).await, values));
    }
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let after = leaders(&client).await;
    assert_ne!(after[&0], old);

    for p in 0..PARTITIONS {
        let read = read_all(&client, p).await;
        let want = expected_records(&acked, p);
        assert_eq!(read, want, "partition {p}");
    }
    client.close().await;
}
