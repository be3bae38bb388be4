//! `DescribeTopic` against a real `sluice-server` process: each partition's log start,
//! high watermark and log size are the engine's, before and after a restart.

use sluice_client::wire::{Acks, TopicConfig};
use sluice_client::{Client, ClientTls};
use sluice_proto::{BatchBuilder, Limits};
use sluice_test_support::Broker;

/// The smallest segment a topic may ask for (`sluice_node::topics::SEGMENT_BYTES_MIN`),
/// so the log of partition 0 below spans several segments.
const SEGMENT_BYTES: u64 = 64 << 10;

fn batch(records: usize, value_bytes: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(Limits::default());
    for i in 0..records {
        let value: Vec<u8> = (0..value_bytes).map(|j| (i + j) as u8).collect();
        builder
            .push(1_700_000_000_000, None, Some(&value), &[])
            .unwrap();
    }
    builder.finish().unwrap()
}

async fn client(broker: &Broker) -> Client {
    Client::connect(broker.addr(), ClientTls::ca_file(broker.ca_path()))
        .await
        .unwrap()
}

/// (log_start, high_watermark, log_bytes) per partition.
async fn described(client: &Client, topic: &str) -> Vec<(u64, u64, u64)> {
    let d = client.describe_topic(topic).await.unwrap();
    assert_eq!(d.name, topic);
    d.partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            assert_eq!(p.partition as usize, i);
            assert_eq!(p.leader, Some(1));
            (p.log_start, p.high_watermark, p.log_bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_reports_each_partitions_high_watermark_and_log_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::builder(dir.path().join("data"))
        .binary(env!("CARGO_BIN_EXE_sluice-server"))
        .args(["--shards", "2"])
        .start();
    let sdk = client(&broker).await;
    let config = TopicConfig {
        segment_bytes: Some(SEGMENT_BYTES),
        ..TopicConfig::default()
    };
    sdk.create_topic("sized", 3, config).await.unwrap();
    assert_eq!(described(&sdk, "sized").await, vec![(0, 0, 0); 3]);

    // Partition 0: 40 batches of 10 records of 800 bytes (~320 KiB, several segments);
    // partition 1: nothing; partition 2: one small batch.
    let big = batch(10, 800);
    for _ in 0..40 {
        sdk.produce("sized", 0, &big, Acks::All, 10_000)
            .await
            .unwrap();
    }
    let small = batch(3, 10);
    sdk.produce("sized", 2, &small, Acks::Leader, 10_000)
        .await
        .unwrap();
    let p0_bytes = 40 * big.len() as u64;
    let p2_bytes = small.len() as u64;
    assert!(p0_bytes > 4 * SEGMENT_BYTES);
    let expected = vec![(0, 400, p0_bytes), (0, 0, 0), (0, 3, p2_bytes)];
    assert_eq!(described(&sdk, "sized").await, expected);

    // The same after a clean restart (recovered from disk, not remembered).
    sdk.close().await;
    broker.restart();
    let sdk = client(&broker).await;
    assert_eq!(described(&sdk, "sized").await, expected);
    sdk.close().await;
    assert_eq!(broker.terminate().code(), Some(0));
}
