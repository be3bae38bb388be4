//! The idempotent producer against a real `sluice-server` process: `InitProducer` ids
//! (unique, not reused after a restart), a retried batch answered `DuplicateSequence`
//! with its original offsets (also after a restart: the table is rebuilt from the log),
//! a gap answered `OutOfOrderSequence`, and the SDK producer with idempotence on.

mod common;

use common::{Broker, BrokerClients};
use sluice_client::wire::{Acks, ErrorCode, ErrorDetail, TopicConfig, WriteOutcome};
use sluice_client::{Client, ProducerConfig, ProducerRecord};
use sluice_proto::{batches, BatchBuilder, Limits};

fn stamped(producer_id: i64, seq: i32, values: &[&str]) -> Vec<u8> {
    let mut b = BatchBuilder::new(Limits::default()).producer(producer_id, 0, seq);
    for v in values {
        b.push(1, None, Some(v.as_bytes()), &[]).unwrap();
    }
    b.finish().unwrap()
}

async fn values(client: &Client, topic: &str, partition: u32) -> Vec<String> {
    let (_, payload) = client.fetch(topic, partition, 0, 1 << 20, 0).await.unwrap();
    let limits = Limits::default();
    batches(&payload, &limits)
        .flat_map(|b| {
            b.unwrap()
                .records()
                .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_duplicates_and_gaps_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path().join("data"));
    let client = broker.client().await;
    client
        .create_topic("idem", 2, TopicConfig::default())
        .await
        .unwrap();

    let a = client.init_producer().await.unwrap();
    let b = client.init_producer().await.unwrap();
    assert_ne!(a.producer_id, b.producer_id);
    assert_eq!(
        (a.producer_epoch, a.producer_id >> 40),
        (0, 1),
        "epoch 0, node 1"
    );

    let batch = stamped(a.producer_id, 0, &["a", "b", "c"]);
    let ok = client
        .produce("idem", 0, &batch, Acks::All, 5_000)
        .await
        .unwrap();
    assert_eq!((ok.base_offset, ok.last_offset), (0, 2));
    let dup = client
        .produce("idem", 0, &batch, Acks::All, 5_000)
        .await
        .unwrap_err();
    let e = dup.broker_error().expect("a broker answer");
    assert_eq!(e.code, ErrorCode::DuplicateSequence);
    assert_eq!(
        e.detail,
        ErrorDetail::Duplicate {
            base_offset: 0,
            last_offset: 2
        }
    );
    assert_eq!(dup.write_outcome(), WriteOutcome::Definite);
    let gap = client
        .produce(
            "idem",
            0,
            &stamped(a.producer_id, 9, &["x"]),
            Acks::All,
            5_000,
        )
        .await
        .unwrap_err();
    assert_eq!(
        gap.broker_error().map(|e| e.code),
        Some(ErrorCode::OutOfOrderSequence)
    );
    assert_eq!(values(&client, "idem", 0).await, vec!["a", "b", "c"]);
    client.close().await;

    // After a restart: ids are not handed out again, and the table is rebuilt.
    assert_eq!(broker.terminate().code(), Some(0));
    broker.restart();
    let client = broker.client().await;
    let c = client.init_producer().await.unwrap();
    assert!(c.producer_id > b.producer_id, "{c:?} after {b:?}");
    let dup = client
        .produce("idem", 0, &batch, Acks::All, 5_000)
        .await
        .unwrap_err();
    assert_eq!(
        dup.broker_error().map(|e| e.detail.clone()),
        Some(ErrorDetail::Duplicate {
            base_offset: 0,
            last_offset: 2
        })
    );

    // The SDK producer, idempotent by default.
    let producer = client
        .producer(ProducerConfig {
            linger_ms: 1,
            ..ProducerConfig::default()
        })
        .unwrap();
    assert!(producer.config().idempotence);
    let mut deliveries = Vec::new();
    for i in 0..200u32 {
        let record = ProducerRecord::new("idem", format!("v{i}").into_bytes()).partition(i % 2);
        deliveries.push(producer.send(record).await.unwrap());
    }
    for d in deliveries {
        d.await.unwrap();
    }
    producer.close().await;
    let p1 = values(&client, "idem", 1).await;
    let want: Vec<String> = (0..200)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("v{i}"))
        .collect();
    assert_eq!(p1, want, "every record once, in send order");
    assert_eq!(values(&client, "idem", 0).await.len(), 3 + 100);
}
