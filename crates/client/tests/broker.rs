//! The SDK against a real `sluice-server` process (DESIGN §5; issue 3, item 8): bulk
//! produce and exact read-back, restarts (clean and SIGKILL), long-poll, out-of-range
//! offsets, and the topic lifecycle.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, BrokerClients};
use sluice_client::wire::{Acks, ErrorCode, ErrorDetail, TopicConfig, WriteOutcome};
use sluice_client::{
    AutoReset, Client, ClientError, ClientOptions, Consumer, ConsumerConfig, ConsumerError,
    ConsumerRecord, DeliveryFuture, ProducerConfig, ProducerRecord, RecordMetadata, SeekTo,
};

fn value_of(id: u64) -> Vec<u8> {
    // 48 bytes: small records keep the 100k test inside its time budget.
    format!("value-{id:010}-{}", "x".repeat(31)).into_bytes()
}

fn id_of(record: &ConsumerRecord) -> u64 {
    let v = record.value.as_deref().expect("a value");
    std::str::from_utf8(v.get(6..16).expect("an id"))
        .expect("utf-8")
        .parse()
        .expect("a number")
}

/// Reads every record of `partitions` of `topic` from the start until `expected` have
/// come (in total), then checks that no more arrive.
async fn read_all(
    client: &Client,
    topic: &str,
    partitions: u32,
    expected: usize,
) -> Vec<ConsumerRecord> {
    let mut consumer = client
        .consumer(ConsumerConfig {
            max_wait_ms: 100,
            auto_reset: AutoReset::Error,
            ..ConsumerConfig::default()
        })
        .unwrap();
    consumer.assign(topic, 0..partitions);
    for p in 0..partitions {
        consumer.seek(topic, p, SeekTo::Earliest).await.unwrap();
    }
    let mut out = Vec::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected}",
            out.len()
        );
        out.extend(consumer.poll(Duration::from_secs(1)).await.unwrap());
    }
    let extra = consumer.poll(Duration::from_millis(300)).await.unwrap();
    assert!(
        extra.is_empty(),
        "{} records more than expected",
        extra.len()
    );
    out
}

/// Checks that each partition's records have contiguous offsets from 0 and returns
/// them by partition.
fn by_partition(records: &[ConsumerRecord]) -> BTreeMap<u32, Vec<&ConsumerRecord>> {
    let mut map: BTreeMap<u32, Vec<&ConsumerRecord>> = BTreeMap::new();
    for r in records {
        map.entry(r.partition).or_default().push(r);
    }
    for (p, rs) in &map {
        for (i, r) in rs.iter().enumerate() {
            assert_eq!(
                r.offset, i as u64,
                "partition {p}: offsets must be 0, 1, 2, ..."
            );
        }
    }
    map
}

async fn create(client: &Client, topic: &str, partitions: u32) {
    let summary = client
        .create_topic(topic, partitions, TopicConfig::default())
        .await
        .unwrap();
    assert_eq!(
        (summary.name.as_str(), summary.partitions),
        (topic, partitions)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_records_over_eight_partitions_read_back_exactly() {
    const RECORDS: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path().join("data"));
    let client = broker.client().await;
    create(&client, "bulk", 8).await;

    let producer = client.producer(ProducerConfig::default()).unwrap();
    let started = Instant::now();
    let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(RECORDS as usize);
    for id in 0..RECORDS {
        let record = ProducerRecord::new("bulk", value_of(id))
            .key(format!("key-{id}"))
            .header("id", Some(id.to_le_bytes().to_vec()));
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await;
    let mut acked: HashMap<(u32, u64), u64> = HashMap::with_capacity(RECORDS as usize);
    let mut last_in_partition: HashMap<u32, (u64, u64)> = HashMap::new();
    for (id, delivery) in deliveries.into_iter().enumerate() {
        let id = id as u64;
        let RecordMetadata {
            topic,
            partition,
            offset,
            ..
        } = delivery.await.unwrap();
        assert_eq!(&*topic, "bulk");
        assert_eq!(
            partition,
            sluice_client::session::partition_for_key(format!("key-{id}").as_bytes(), 8)
        );
        // Per-partition order: a later send in a partition gets a later offset.
        if let Some((prev_id, prev_offset)) = last_in_partition.insert(partition, (id, offset)) {
            assert!(
                offset > prev_offset,
                "id {id} at {offset} after id {prev_id} at {prev_offset}"
            );
        }
        assert!(
            acked.insert((partition, offset), id).is_none(),
            "offset given twice"
        );
    }
    let produced_in = started.elapsed();
    assert_eq!(
        producer.buffer_bytes_free(),
        ProducerConfig::default().buffer_bytes_max,
        "every acknowledged record gave its buffer space back"
    );
    producer.close().await;

    let records = read_all(&client, "bulk", 8, RECORDS as usize).await;
    let partitions = by_partition(&records);
    assert_eq!(partitions.len(), 8, "every partition got records");
    let mut seen = HashSet::with_capacity(RECORDS as usize);
    for r in &records {
        let id = acked[&(r.partition, r.offset)];
        assert_eq!(id_of(r), id, "record at {}/{}", r.partition, r.offset);
        assert_eq!(r.value.as_deref(), Some(&value_of(id)[..]));
        assert_eq!(r.key.as_deref(), Some(format!("key-{id}").as_bytes()));
        assert_eq!(
            r.headers,
            vec![("id".to_owned(), Some(id.to_le_bytes().to_vec().into()))]
        );
        assert!(seen.insert(id), "id {id} consumed twice");
    }
    assert_eq!(seen.len(), RECORDS as usize);
    eprintln!(
        "100k records: produced and acked in {produced_in:?}, all read back in {:?}",
        started.elapsed()
    );
}

/// Produces `ids` to `topic` and waits for every ack.
async fn produce_acked(
    client: &Client,
    topic: &str,
    ids: std::ops::Range<u64>,
) -> Vec<(u64, RecordMetadata)> {
    let producer = client.producer(ProducerConfig::default()).unwrap();
    let mut deliveries = Vec::new();
    for id in ids {
        deliveries.push((
            id,
            producer
                .send(ProducerRecord::new(topic, value_of(id)))
                .await
                .unwrap(),
        ));
    }
    let mut out = Vec::new();
    for (id, d) in deliveries {
        out.push((id, d.await.unwrap()));
    }
    producer.close().await;
    out
}

fn check_acked_present(records: &[ConsumerRecord], acked: &[(u64, RecordMetadata)]) {
    let at: HashMap<(u32, u64), u64> = records
        .iter()
        .map(|r| ((r.partition, r.offset), id_of(r)))
        .collect();
    for (id, m) in acked {
        assert_eq!(
            at.get(&(m.partition, m.offset)),
            Some(id),
            "acked id {id} at {}/{} not read back",
            m.partition,
            m.offset
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_acked_survives_a_clean_restart_and_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data);
    let client = broker.client().await;
    create(&client, "durable", 4).await;
    let mut acked = produce_acked(&client, "durable", 0..5_000).await;
    client.close().await;

    // Clean stop: SIGTERM drains, fsyncs and exits 0; everything is there after it.
    let status = broker.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM exit status");
    broker.restart();
    let client = broker.client().await;
    let records = read_all(&client, "durable", 4, acked.len()).await;
    by_partition(&records);
    check_acked_present(&records, &acked);

    // SIGKILL while a producer is busy: every record acked before the kill survives.
    let options = ClientOptions {
        request_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    let busy = broker.client_with(options).await;
    let producer = busy
        .producer(ProducerConfig {
            request_timeout_ms: 1_000,
            delivery_timeout_ms: 3_000,
            retries: 1,
            retry_backoff_ms: 50,
            linger_ms: 1,
            ..ProducerConfig::default()
        })
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let after_kill: Arc<Mutex<Vec<(u64, RecordMetadata)>>> = Arc::default();
    let (to_acker, mut deliveries) =
        tokio::sync::mpsc::unbounded_channel::<(u64, DeliveryFuture)>();
    let sender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut id = 5_000u64;
            while !stop.load(Ordering::Acquire) {
                match producer
                    .send(ProducerRecord::new("durable", value_of(id)))
                    .await
                {
                    Ok(d) => to_acker.send((id, d)).unwrap(),
                    Err(_) => break,
                }
                id += 1;
                if id % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            id
        })
    };
    let acker = {
        let acks = after_kill.clone();
        tokio::spawn(async move {
            let mut failed = 0u64;
            while let Some((id, d)) = deliveries.recv().await {
                match d.await {
                    Ok(m) => acks.lock().unwrap().push((id, m)),
                    Err(e) => {
                        assert!(e.attempts() <= 2, "at most retries + 1 attempts: {e}");
                        failed += 1;
                    }
                }
            }
            failed
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while after_kill.lock().unwrap().len() < 2_000 {
        assert!(Instant::now() < deadline, "the producer made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.kill();
    stop.store(true, Ordering::Release);
    // With the broker gone, every record still gets its outcome, within the delivery
    // timeout (3 s) plus one request's deadline (2 s) and the QUIC idle timeout.
    let killed_at = Instant::now();
    let sent_up_to = sender.await.unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(15), acker)
        .await
        .expect("every delivery resolves after the kill")
        .unwrap();
    let resolved_in = killed_at.elapsed();
    let after_kill = std::mem::take(&mut *after_kill.lock().unwrap());
    assert!(after_kill.len() >= 2_000);
    eprintln!(
        "SIGKILL: {} acked before the kill, {failed} failed (all resolved in {resolved_in:?}), \
         ids up to {sent_up_to}",
        after_kill.len()
    );
    acked.extend(after_kill);

    broker.restart();
    let client = broker.client().await;
    let description = client.describe_topic("durable").await.unwrap();
    let total: u64 = description
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .sum();
    assert!(
        total as usize >= acked.len(),
        "{total} records for {} acked",
        acked.len()
    );
    let records = read_all(&client, "durable", 4, total as usize).await;
    let partitions = by_partition(&records);
    check_acked_present(&records, &acked);
    // What was not acked may or may not be there, but only what was sent, once, in
    // per-partition send order.
    let mut seen = HashSet::new();
    for rs in partitions.values() {
        let ids: Vec<u64> = rs.iter().map(|r| id_of(r)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "per-partition order");
        for id in ids {
            assert!(id < sent_up_to, "id {id} was never sent");
            assert!(seen.insert(id), "id {id} twice");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_when_data_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path().join("data"));
    let client = broker.client().await;
    create(&client, "poll", 1).await;

    // At the high watermark the broker holds a fetch for max_wait_ms, then answers empty.
    let started = Instant::now();
    let (ok, payload) = client.fetch("poll", 0, 0, 1 << 20, 400).await.unwrap();
    let waited = started.elapsed();
    assert_eq!((ok.batches, payload.len(), ok.high_watermark), (0, 0, 0));
    assert!(
        waited >= Duration::from_millis(350),
        "answered after {waited:?}"
    );

    // A consumer waiting with a 20 s long-poll gets a record as soon as it is acked.
    let mut consumer = client
        .consumer(ConsumerConfig {
            max_wait_ms: 20_000,
            ..ConsumerConfig::default()
        })
        .unwrap();
    consumer.assign("poll", [0]);
    consumer.seek("poll", 0, SeekTo::Latest).await.unwrap();
    assert!(consumer
        .poll(Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    let waiter = tokio::spawn(async move {
        let record = consumer.next().await.unwrap();
        (record, Instant::now(), consumer)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let producer = client
        .producer(ProducerConfig {
            linger_ms: 0,
            ..ProducerConfig::default()
        })
        .unwrap();
    let acked = producer
        .send(ProducerRecord::new("poll", b"wake up".to_vec()))
        .await
        .unwrap()
        .await
        .unwrap();
    let acked_at = Instant::now();
    let (record, received_at, consumer) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the long-poll did not wake")
        .unwrap();
    assert_eq!(
        (record.offset, record.value.as_deref()),
        (0, Some(&b"wake up"[..]))
    );
    assert_eq!(acked.offset, 0);
    let latency = received_at.saturating_duration_since(acked_at);
    assert!(
        latency < Duration::from_secs(2),
        "woke {latency:?} after the ack"
    );
    assert_eq!(consumer.position("poll", 0), Some(1));
    assert_eq!(consumer.high_watermark("poll", 0), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_out_of_range_carries_the_range_and_auto_reset_moves() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path().join("data"));
    let client = broker.client().await;
    create(&client, "range", 1).await;
    // Ten records in one batch, timestamps 1000..1010.
    let producer = client
        .producer(ProducerConfig {
            linger_ms: 60_000,
            ..ProducerConfig::default()
        })
        .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..10u64 {
        let record = ProducerRecord::new("range", value_of(i)).timestamp(1_000 + i as i64);
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await;
    for (i, d) in deliveries.into_iter().enumerate() {
        assert_eq!(d.await.unwrap().offset, i as u64);
    }

    // The wire error carries the valid range.
    let err = client.fetch("range", 0, 50, 1 << 20, 0).await.unwrap_err();
    let body = err.broker_error().expect("a broker error");
    assert_eq!(body.code, ErrorCode::OffsetOutOfRange);
    assert_eq!(
        body.detail,
        ErrorDetail::OffsetOutOfRange {
            log_start: 0,
            log_end: 10
        }
    );

    // auto_reset = Error: surfaced with the range, the partition waits for a seek.
    let strict = ConsumerConfig {
        auto_reset: AutoReset::Error,
        max_wait_ms: 100,
        ..ConsumerConfig::default()
    };
    let mut consumer = client.consumer(strict.clone()).unwrap();
    consumer.assign("range", [0]);
    assert!(matches!(
        consumer.next().await,
        Err(ConsumerError::NoPosition { .. })
    ));
    consumer.seek("range", 0, SeekTo::Offset(50)).await.unwrap();
    for _ in 0..2 {
        match consumer.next().await {
            Err(ConsumerError::OffsetOutOfRange {
                topic,
                partition: 0,
                offset: 50,
                log_start: 0,
                log_end: 10,
            }) if topic == "range" => {}
            other => panic!("expected OffsetOutOfRange, got {other:?}"),
        }
    }
    assert_eq!(consumer.position("range", 0), Some(50), "no reset");
    // A seek into the middle of the batch skips the records before it.
    consumer.seek("range", 0, SeekTo::Offset(3)).await.unwrap();
    let r = consumer.next().await.unwrap();
    assert_eq!((r.offset, id_of(&r), r.timestamp), (3, 3, 1_003));
    consumer
        .seek("range", 0, SeekTo::Timestamp(1_007))
        .await
        .unwrap();
    assert_eq!(consumer.next().await.unwrap().offset, 7);
    consumer
        .seek("range", 0, SeekTo::Timestamp(5_000))
        .await
        .unwrap();
    assert_eq!(
        consumer.position("range", 0),
        Some(10),
        "past every timestamp: latest"
    );
    assert!(matches!(
        consumer.seek("range", 1, SeekTo::Earliest).await,
        Err(ConsumerError::NotAssigned { .. })
    ));

    // auto_reset = Earliest: back to the log start.
    let mut consumer = client
        .consumer(ConsumerConfig {
            auto_reset: AutoReset::Earliest,
            ..strict.clone()
        })
        .unwrap();
    consumer.assign("range", [0]);
    consumer.seek("range", 0, SeekTo::Offset(50)).await.unwrap();
    assert_eq!(consumer.next().await.unwrap().offset, 0);

    // auto_reset = Latest: to the high watermark, then only new records.
    let mut consumer = client
        .consumer(ConsumerConfig {
            auto_reset: AutoReset::Latest,
            ..strict
        })
        .unwrap();
    consumer.assign("range", [0]);
    consumer.seek("range", 0, SeekTo::Offset(50)).await.unwrap();
    assert!(consumer
        .poll(Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(consumer.position("range", 0), Some(10));
    let d = producer
        .send(ProducerRecord::new("range", value_of(10)))
        .await
        .unwrap();
    producer.flush().await;
    assert_eq!(d.await.unwrap().offset, 10);
    let r = consumer.next().await.unwrap();
    assert_eq!((r.offset, id_of(&r)), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lifecycle_create_describe_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path().join("data"));
    let client = broker.client().await;

    create(&client, "life", 3).await;
    let again = client
        .create_topic("life", 3, TopicConfig::default())
        .await
        .unwrap_err();
    assert_eq!(
        again.broker_error().map(|e| e.code),
        Some(ErrorCode::TopicExists)
    );
    let listed = client.list_topics().await.unwrap();
    assert!(
        listed.iter().any(|t| t.name == "life" && t.partitions == 3),
        "{listed:?}"
    );

    let producer = client
        .producer(ProducerConfig {
            linger_ms: 0,
            ..ProducerConfig::default()
        })
        .unwrap();
    for p in 0..3u32 {
        let m = producer
            .send(ProducerRecord::new("life", value_of(u64::from(p))).partition(p))
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!((m.partition, m.offset), (p, 0));
    }
    let described = client.describe_topic("life").await.unwrap();
    assert_eq!(described.name, "life");
    assert_eq!(described.partitions.len(), 3);
    for (i, p) in described.partitions.iter().enumerate() {
        assert_eq!(
            (p.partition, p.log_start, p.high_watermark),
            (i as u32, 0, 1)
        );
    }
    let cluster = client.describe_cluster().await.unwrap();
    assert!(
        cluster.topics >= 1 && cluster.partitions >= 3,
        "{cluster:?}"
    );
    // A partition the topic does not have fails definitely, before anything is sent.
    let err = producer
        .send(ProducerRecord::new("life", b"x".to_vec()).partition(3))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(err.is_definite() && err.attempts() == 0, "{err}");

    client.delete_topic("life").await.unwrap();
    assert!(!client
        .list_topics()
        .await
        .unwrap()
        .iter()
        .any(|t| t.name == "life"));
    let gone = client.describe_topic("life").await.unwrap_err();
    assert_eq!(
        gone.broker_error().map(|e| e.code),
        Some(ErrorCode::UnknownTopic)
    );

    // The producer still has the topic's metadata cached: the broker answers
    // UnknownTopic, the refresh confirms it, and the record fails definitely.
    let err = producer
        .send(ProducerRecord::new("life", b"late".to_vec()))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic), "{err}");
    assert_eq!(err.write_outcome(), WriteOutcome::Definite);
    // A topic that never existed: metadata says so, nothing is sent.
    let err = producer
        .send(ProducerRecord::new("never", b"x".to_vec()))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.attempts()),
        (Some(ErrorCode::UnknownTopic), 0)
    );
    // A name that breaks the naming rule is refused by `send` itself.
    let err = producer
        .send(ProducerRecord::new("no/slashes", b"x".to_vec()))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidRequest(_)), "{err}");
    // Fetching a deleted topic: the consumer surfaces UnknownTopic after its retries.
    let mut consumer: Consumer = client
        .consumer(ConsumerConfig {
            retries: 2,
            retry_backoff_ms: 10,
            ..ConsumerConfig::default()
        })
        .unwrap();
    consumer.assign("life", [0]);
    let err = consumer.next().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic), "{err}");

    // Created again (with fewer partitions), the same producer writes to it afresh.
    create(&client, "life", 1).await;
    let m = producer
        .send(ProducerRecord::new("life", b"reborn".to_vec()))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!((m.partition, m.offset), (0, 0));
    producer.close().await;
    assert!(producer
        .send(ProducerRecord::new("life", b"closed".to_vec()))
        .await
        .is_err());
}

/// A producer with a 4 KiB buffer that lingers 60 s: a 400-byte value reserves at most
/// 400 + 61 bytes, so 8 fit and the 9th waits, and nothing is sent before a flush.
fn small_buffer_producer(client: &Client) -> sluice_client::Producer {
    client
        .producer(ProducerConfig {
            buffer_bytes_max: 4_096,
            linger_ms: 60_000,
            acks: Acks::Leader,
            ..ProducerConfig::default()
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_for_buffer_space_and_flush_sends_lingering_batches() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path().join("data"));
    let client = broker.client().await;
    create(&client, "pressure", 1).await;
    let producer = small_buffer_producer(&client);
    let record = |i: u64| ProducerRecord::new("pressure", vec![i as u8; 400]);
    let mut deliveries = Vec::new();
    for i in 0..8 {
        deliveries.push(producer.send(record(i)).await.unwrap());
    }
    assert!(
        producer.buffer_bytes_free() < 461,
        "{}",
        producer.buffer_bytes_free()
    );
    let blocked = {
        let producer = producer.clone();
        tokio::spawn(async move { producer.send(record(8)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !blocked.is_finished(),
        "the 9th send must wait for buffer space"
    );
    // Nothing was sent yet (60 s linger); flush sends it, the acks free the space.
    producer.flush().await;
    for (i, d) in deliveries.into_iter().enumerate() {
        assert_eq!(d.await.unwrap().offset, i as u64);
    }
    let ninth = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("the 9th send got its space")
        .unwrap()
        .unwrap();
    producer.flush().await;
    assert_eq!(ninth.await.unwrap().offset, 8);
    assert_eq!(producer.buffer_bytes_free(), 4_096);

    // acks = none answers after the append; the record is there all the same.
    let fast = client
        .producer(ProducerConfig {
            acks: Acks::None,
            linger_ms: 0,
            ..ProducerConfig::default()
        })
        .unwrap();
    let m = fast.send(record(9)).await.unwrap().await.unwrap();
    assert_eq!(m.offset, 9);
    fast.close().await;
    producer.close().await;
    let records = read_all(&client, "pressure", 1, 10).await;
    assert_eq!(
        records.last().map(|r| r.value.clone()),
        Some(Some(vec![9u8; 400].into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_callbacks_run_once_per_record_with_the_offset_it_was_written_at() {
    const RECORDS: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path().join("data"));
    let client = broker.client().await;
    create(&client, "callbacks", 4).await;
    let producer = client.producer(ProducerConfig::default()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for id in 0..RECORDS {
        let tx = tx.clone();
        producer
            .send_with(ProducerRecord::new("callbacks", value_of(id)), move |r| {
                let _ = tx.send((id, r));
            })
            .await
            .unwrap();
    }
    // Refused before it is queued: the error is the call's, the callback never runs.
    let tx_refused = tx.clone();
    let refused = producer
        .send_with(
            ProducerRecord::new("callbacks", b"x".to_vec()).partition(u32::MAX),
            move |r| {
                let _ = tx_refused.send((u64::MAX, r));
            },
        )
        .await;
    assert!(
        matches!(refused, Err(ClientError::InvalidRequest(_))),
        "{refused:?}"
    );
    // Refused by the driver (the topic has no partition 9): the callback hears it.
    let tx_bad = tx.clone();
    producer
        .send_with(
            ProducerRecord::new("callbacks", b"y".to_vec()).partition(9),
            move |r| {
                let _ = tx_bad.send((RECORDS, r));
            },
        )
        .await
        .unwrap();
    producer.close().await;
    drop(tx);
    let mut by_id: HashMap<u64, Result<RecordMetadata, sluice_client::DeliveryError>> =
        HashMap::new();
    while let Some((id, r)) = rx.recv().await {
        assert!(
            by_id.insert(id, r).is_none(),
            "record {id}'s callback ran twice"
        );
    }
    assert_eq!(
        by_id.len() as u64,
        RECORDS + 1,
        "one callback per queued record"
    );
    let bad = by_id.remove(&RECORDS).unwrap();
    assert!(
        matches!(&bad, Err(e) if e.is_definite()),
        "a record for a missing partition fails definitely: {bad:?}"
    );
    let mut at: HashMap<(u32, u64), u64> = HashMap::new();
    for (id, r) in by_id {
        let meta = r.unwrap_or_else(|e| panic!("record {id}: {e}"));
        assert_eq!(&*meta.topic, "callbacks");
        assert!(at.insert((meta.partition, meta.offset), id).is_none());
    }
    let records = read_all(&client, "callbacks", 4, RECORDS as usize).await;
    assert_eq!(records.len() as u64, RECORDS);
    for record in &records {
        assert_eq!(
            at.get(&(record.partition, record.offset)),
            Some(&id_of(record)),
            "partition {} offset {}",
            record.partition,
            record.offset
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_with_cancelled_while_it_waits_for_buffer_space_never_runs_its_callback() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path().join("data"));
    let client = broker.client().await;
    create(&client, "cancelled", 1).await;
    let producer = small_buffer_producer(&client);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let record = |i: u64| ProducerRecord::new("cancelled", vec![i as u8; 400]);
    for i in 0..8 {
        let calls = Arc::clone(&calls);
        producer
            .send_with(record(i), move |r| {
                calls.lock().unwrap().push((i, r.is_ok()))
            })
            .await
            .unwrap();
    }
    // The buffer is full (60 s linger): the 9th waits, and is given up on.
    let ninth = {
        let calls = Arc::clone(&calls);
        producer.send_with(record(8), move |r| {
            calls.lock().unwrap().push((8, r.is_ok()))
        })
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ninth)
            .await
            .is_err(),
        "the 9th send must wait for buffer space"
    );
    producer.close().await;
    let mut calls = calls.lock().unwrap().clone();
    calls.sort_unstable();
    assert_eq!(calls, (0..8).map(|i| (i, true)).collect::<Vec<_>>());
}
