//! The engine on real glommio shards and real files, driven from a tokio runtime
//! the way the gateway drives it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_io::DataFileMode;
use sluice_node::{
    AckPolicy, Engine, EngineConfig, EngineError, EngineHandle, OffsetQuery, Produced,
    RegistryError, RequestError, StartError, TopicConfig, TopicError, TopicPartition,
    TopicRegistry,
};
use sluice_proto::{batches, BatchBuilder, Limits};

const WAIT_MS: u32 = 30_000;

fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("node-engine-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn config(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.shards = Some(2);
    c
}

fn start(c: EngineConfig) -> EngineHandle {
    Engine::start(c).unwrap()
}

fn tp(topic: &str, p: u32) -> TopicPartition {
    TopicPartition::new(topic, p)
}

fn batch_at(values: &[&[u8]], ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Limits::default());
    for (i, v) in values.iter().enumerate() {
        b.push(ts + i as i64, None, Some(v), &[]).unwrap();
    }
    b.finish().unwrap()
}

fn batch(values: &[&[u8]]) -> Vec<u8> {
    batch_at(values, 1_700_000_000_000)
}

/// (offset, value) of every record in `bytes`.
fn records(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let limits = Limits::default();
    batches(bytes, &limits)
        .flat_map(|b| {
            b.unwrap()
                .records()
                .map(|r| (r.offset, r.value.unwrap().to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every committed record of `tp`, fetched in pieces.
async fn read_all(h: &EngineHandle, tp: &TopicPartition) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = h
        .list_offsets(tp, OffsetQuery::Earliest)
        .await
        .unwrap()
        .unwrap();
    loop {
        let f = h.fetch(tp, offset, 64 << 10, 0).await.unwrap();
        if f.batches.count == 0 {
            assert_eq!(offset, f.high_watermark, "{tp}: stopped below the hw");
            return out;
        }
        out.extend(records(&f.batches.bytes));
        offset = f.batches.next_offset;
    }
}

/// Produces `per_partition` one-record batches to every partition of `topic`, in
/// order, acks=all; returns what each partition should hold.
async fn fill(
    h: &EngineHandle,
    topic: &str,
    partitions: u32,
    per_partition: u64,
    tag: &str,
) -> BTreeMap<u32, Vec<(u64, Vec<u8>)>> {
    let mut want: BTreeMap<u32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for p in 0..partitions {
        for i in 0..per_partition {
            let v = format!("{tag}-{p}-{i}").into_bytes();
            let Produced {
                base_offset: base,
                last_offset: last,
                ..
            } = h
                .produce(&tp(topic, p), batch(&[&v]), AckPolicy::All, WAIT_MS)
                .await
                .unwrap();
            assert_eq!(base, last);
            want.entry(p).or_default().push((base, v));
        }
    }
    want
}

async fn assert_holds(h: &EngineHandle, topic: &str, want: &BTreeMap<u32, Vec<(u64, Vec<u8>)>>) {
    for (p, records) in want {
        assert_eq!(&read_all(h, &tp(topic, *p)).await, records, "{topic}/{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_produces_over_eight_partitions_read_back_exactly() {
    let dir = data_dir();
    let h = start(config(dir.path()));
    assert_eq!(h.shard_count(), 2);
    h.create_topic("orders", 8, TopicConfig::default())
        .await
        .unwrap();
    let owners: std::collections::BTreeSet<usize> =
        (0..8).map(|p| h.shard_of(&tp("orders", p))).collect();
    assert_eq!(owners.len(), 2, "the topic spreads over both shards");

    const TASKS: u32 = 40;
    const PER_TASK: u32 = 250;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PER_TASK {
                let p = (t + i) % 8;
                let v = format!("task{t}-rec{i}").into_bytes();
                let Produced {
                    base_offset: base,
                    last_offset: last,
                    ..
                } = h
                    .produce(&tp("orders", p), batch(&[&v]), AckPolicy::All, WAIT_MS)
                    .await
                    .unwrap();
                assert_eq!(base, last);
                acked.push((p, base, v));
            }
            acked
        }));
    }
    let mut want: BTreeMap<u32, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    for t in tasks {
        for (p, offset, v) in t.await.unwrap() {
            let dup = want.entry(p).or_default().insert(offset, v);
            assert!(
                dup.is_none(),
                "offset {offset} of partition {p} acked twice"
            );
        }
    }
    assert_eq!(
        want.values().map(BTreeMap::len).sum::<usize>(),
        (TASKS * PER_TASK) as usize
    );
    for (p, acked) in &want {
        let got = read_all(&h, &tp("orders", *p)).await;
        let want: Vec<(u64, Vec<u8>)> = acked.iter().map(|(o, v)| (*o, v.clone())).collect();
        assert_eq!(got.len(), want.len(), "partition {p}");
        assert_eq!(got, want, "partition {p}: exactly what was acked, densely");
        assert_eq!(got.first().map(|r| r.0), Some(0));
    }
    let stats = h.stats().await.unwrap();
    let core = stats.core_total();
    assert_eq!(core.produce_requests, u64::from(TASKS * PER_TASK));
    assert_eq!(core.errors, 0);
    assert!(
        core.flushes < core.produce_requests,
        "group commit: {} flushes for {} produces",
        core.flushes,
        core.produce_requests
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_fetch_wakes_when_a_produce_lands() {
    let dir = data_dir();
    let h = start(config(dir.path()));
    h.create_topic("events", 2, TopicConfig::default())
        .await
        .unwrap();
    let t = tp("events", 1);

    let waiting = {
        let (h, t) = (h.clone(), t.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let f = h.fetch(&t, 0, 1 << 20, 20_000).await.unwrap();
            (f, t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "caught up: the fetch waits");
    h.produce(&t, batch(&[b"late"]), AckPolicy::All, WAIT_MS)
        .await
        .unwrap();
    let (f, waited) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the long-poll woke")
        .unwrap();
    assert_eq!(records(&f.batches.bytes), vec![(0, b"late".to_vec())]);
    assert_eq!(f.high_watermark, 1);
    assert!(
        waited < Duration::from_secs(15),
        "woke by data, not deadline"
    );

    // Nothing arrives: the long-poll ends empty at its deadline.
    let t0 = Instant::now();
    let f = h.fetch(&t, 1, 1 << 20, 100).await.unwrap();
    assert_eq!(f.batches.count, 0);
    assert!(
        t0.elapsed() >= Duration::from_millis(90),
        "{:?}",
        t0.elapsed()
    );
    h.shutdown().await.unwrap();
}

async fn clean_restart(mode: DataFileMode) {
    let dir = data_dir();
    let mut c = config(dir.path());
    c.data_file_mode = mode;
    let h = start(c.clone());
    let cfg = TopicConfig {
        segment_bytes: Some(64 << 10),
        ..TopicConfig::default()
    };
    h.create_topic("logs", 8, cfg).await.unwrap();
    let want = fill(&h, "logs", 8, 40, "first").await;
    h.shutdown().await.unwrap();
    drop(h);

    let h = start(c.clone());
    let report = h.startup();
    assert_eq!(report.partitions.len(), 8);
    assert!(report.all_clean(), "{report:?}");
    assert!(report
        .partitions
        .iter()
        .all(|(_, r)| r.truncated_bytes == 0));
    assert_eq!(h.topic("logs").map(|t| t.config), Some(cfg));
    assert_holds(&h, "logs", &want).await;
    // Offsets go on where they stopped.
    let Produced {
        base_offset: base, ..
    } = h
        .produce(&tp("logs", 3), batch(&[b"after"]), AckPolicy::All, WAIT_MS)
        .await
        .unwrap();
    assert_eq!(base, 40);
    h.shutdown().await.unwrap();
    drop(h);

    // Placement picks threads, not directories: another shard count reads the same.
    c.shards = Some(1);
    let h = start(c);
    assert!(h.startup().all_clean());
    let mut want = want;
    if let Some(p3) = want.get_mut(&3) {
        p3.push((40, b"after".to_vec()));
    }
    assert_holds(&h, "logs", &want).await;
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_then_restart_reopens_cleanly_with_all_data() {
    clean_restart(DataFileMode::Buffered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_then_restart_reopens_cleanly_with_direct_io() {
    clean_restart(DataFileMode::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_dropping_without_shutdown_keeps_everything_acked() {
    let dir = data_dir();
    let h = start(config(dir.path()));
    h.create_topic("crashy", 4, TopicConfig::default())
        .await
        .unwrap();
    let want = fill(&h, "crashy", 4, 25, "acked").await;
    // Not acknowledged as durable, but appended: it may or may not survive.
    h.produce(
        &tp("crashy", 0),
        batch(&[b"maybe"]),
        AckPolicy::None,
        WAIT_MS,
    )
    .await
    .unwrap();
    drop(h); // no shutdown: the shards stop without closing their partitions

    let h = start(config(dir.path()));
    let report = h.startup();
    assert_eq!(report.partitions.len(), 4);
    assert!(
        report.partitions.iter().all(|(_, r)| !r.clean),
        "no clean marker: recovered by scanning: {report:?}"
    );
    for (p, acked) in &want {
        let got = read_all(&h, &tp("crashy", *p)).await;
        assert!(got.len() >= acked.len(), "partition {p} lost acked records");
        assert_eq!(&got[..acked.len()], &acked[..], "partition {p}");
    }
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topic_removes_its_directories_and_fails_its_waiters() {
    let dir = data_dir();
    let h = start(config(dir.path()));
    h.create_topic("doomed", 4, TopicConfig::default())
        .await
        .unwrap();
    h.create_topic("kept", 1, TopicConfig::default())
        .await
        .unwrap();
    fill(&h, "doomed", 4, 3, "x").await;
    let topic_dir = dir.path().join("topics").join("doomed");
    for p in 0..4 {
        assert!(topic_dir.join(p.to_string()).is_dir());
    }
    let waiting = {
        let h = h.clone();
        tokio::spawn(async move { h.fetch(&tp("doomed", 2), 3, 1 << 20, 20_000).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    h.delete_topic("doomed").await.unwrap();
    assert!(!topic_dir.exists(), "the topic's directory is gone");
    assert!(dir.path().join("topics").join("kept").join("0").is_dir());
    assert_eq!(
        waiting.await.unwrap(),
        Err(RequestError::Engine(EngineError::UnknownPartition(tp(
            "doomed", 2
        ))))
    );
    assert!(h.topic("doomed").is_none());
    assert_eq!(
        h.topics()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["kept"]
    );
    assert_eq!(
        h.produce(&tp("doomed", 0), batch(&[b"v"]), AckPolicy::All, WAIT_MS)
            .await,
        Err(RequestError::Engine(EngineError::UnknownPartition(tp(
            "doomed", 0
        ))))
    );
    assert_eq!(
        h.delete_topic("doomed").await,
        Err(TopicError::Unknown("doomed".into()))
    );

    // The same name again is a new, empty topic.
    h.create_topic("doomed", 2, TopicConfig::default())
        .await
        .unwrap();
    assert_eq!(
        h.list_offsets(&tp("doomed", 0), OffsetQuery::Latest).await,
        Ok(Some(0))
    );
    h.shutdown().await.unwrap();
    drop(h);
    let h = start(config(dir.path()));
    assert_eq!(h.topic("doomed").map(|t| t.partitions), Some(2));
    assert_eq!(h.startup().partitions.len(), 3);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_interrupted_by_a_crash_is_finished_at_start() {
    let dir = data_dir();
    let h = start(config(dir.path()));
    h.create_topic("half", 3, TopicConfig::default())
        .await
        .unwrap();
    fill(&h, "half", 3, 2, "x").await;
    h.shutdown().await.unwrap();
    drop(h);
    // The registry step of a delete happened, the directory removal did not.
    TopicRegistry::load(dir.path())
        .unwrap()
        .delete("half")
        .unwrap();
    assert!(dir.path().join("topics").join("half").is_dir());

    let h = start(config(dir.path()));
    assert!(!dir.path().join("topics").join("half").exists());
    assert!(h.topics().is_empty());
    assert!(h.startup().partitions.is_empty());

    // A directory the registry never named is left alone, and no topic is created
    // over it (it may be data whose registry was lost).
    let stray = dir.path().join("topics").join("stray").join("0");
    std::fs::create_dir_all(&stray).unwrap();
    assert!(matches!(
        h.create_topic("stray", 1, TopicConfig::default()).await,
        Err(TopicError::Storage(_))
    ));
    assert!(stray.is_dir());
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_partitions_and_bad_input_are_typed_errors() {
    let dir = data_dir();
    let h = start(config(dir.path()));
    h.create_topic("t", 8, TopicConfig::default())
        .await
        .unwrap();
    let unknown = |topic: &str, p| {
        Err::<Produced, _>(RequestError::Engine(EngineError::UnknownPartition(tp(
            topic, p,
        ))))
    };
    assert_eq!(
        h.produce(&tp("nope", 0), batch(&[b"v"]), AckPolicy::All, WAIT_MS)
            .await,
        unknown("nope", 0)
    );
    assert_eq!(
        h.produce(&tp("t", 8), batch(&[b"v"]), AckPolicy::All, WAIT_MS)
            .await,
        unknown("t", 8)
    );
    assert_eq!(
        h.produce(&tp("../../etc", 0), batch(&[b"v"]), AckPolicy::All, WAIT_MS)
            .await,
        unknown("../../etc", 0)
    );
    assert_eq!(
        h.fetch(&tp("t", 99), 0, 100, 1_000).await,
        Err(RequestError::Engine(EngineError::UnknownPartition(tp(
            "t", 99
        ))))
    );
    assert_eq!(
        h.list_offsets(&tp("nope", 1), OffsetQuery::Earliest).await,
        Err(RequestError::Engine(EngineError::UnknownPartition(tp(
            "nope", 1
        ))))
    );
    // Bad batches are refused before anything is appended.
    for garbage in [vec![], vec![0u8; 3], vec![0xff; 200], {
        let mut b = batch(&[b"flipped"]);
        let last = b.len() - 1;
        b[last] ^= 1;
        b
    }] {
        assert!(matches!(
            h.produce(&tp("t", 1), garbage, AckPolicy::All, WAIT_MS)
                .await,
            Err(RequestError::Engine(EngineError::InvalidBatch(_)))
        ));
    }
    h.produce(&tp("t", 1), batch(&[b"ok"]), AckPolicy::All, WAIT_MS)
        .await
        .unwrap();
    assert_eq!(
        h.fetch(&tp("t", 1), 7, 100, 0).await,
        Err(RequestError::Engine(EngineError::OffsetOutOfRange {
            offset: 7,
            log_start: 0,
            high_watermark: 1
        }))
    );
    assert_eq!(read_all(&h, &tp("t", 1)).await, vec![(0, b"ok".to_vec())]);

    // Topic administration.
    for bad in ["", ".", "..", "a/b", "sp ace", &"x".repeat(250)] {
        assert!(
            matches!(
                h.create_topic(bad, 1, TopicConfig::default()).await,
                Err(TopicError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        h.create_topic("z", 0, TopicConfig::default()).await,
        Err(TopicError::InvalidPartitions(0))
    );
    assert_eq!(
        h.create_topic("z", 4097, TopicConfig::default()).await,
        Err(TopicError::InvalidPartitions(4097))
    );
    assert!(matches!(
        h.create_topic(
            "z",
            1,
            TopicConfig {
                segment_bytes: Some(1),
                ..TopicConfig::default()
            }
        )
        .await,
        Err(TopicError::InvalidConfig(_))
    ));
    assert_eq!(
        h.create_topic("t", 3, TopicConfig::default()).await,
        Err(TopicError::Exists("t".into()))
    );
    assert_eq!(
        h.delete_topic("nope").await,
        Err(TopicError::Unknown("nope".into()))
    );
    assert_eq!(h.topics().len(), 1);
    assert!(!dir.path().join("topics").join("z").exists());

    let stats = h.stats().await.unwrap();
    let p1 = stats
        .partitions()
        .find(|p| p.tp == tp("t", 1))
        .unwrap()
        .clone();
    assert_eq!(p1.errors, 5, "4 bad batches and 1 out-of-range fetch");
    assert_eq!(
        stats.partitions().count(),
        8,
        "unknown names leave no trace in the counters"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_makes_producers_wait_and_every_produce_succeeds() {
    let dir = data_dir();
    let mut c = config(dir.path());
    c.shards = Some(1);
    c.queue_depth = 2;
    c.cycle_requests_max = 2;
    let h = start(c);
    h.create_topic("bp", 2, TopicConfig::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..1_000u32 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let v = format!("r{i}").into_bytes();
            let p = i % 2;
            let Produced {
                base_offset: base, ..
            } = h
                .produce(&tp("bp", p), batch(&[&v]), AckPolicy::All, WAIT_MS)
                .await
                .unwrap();
            (p, base, v)
        }));
    }
    let mut want: BTreeMap<u32, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    for t in tasks {
        let (p, base, v) = t.await.unwrap();
        assert!(want.entry(p).or_default().insert(base, v).is_none());
    }
    for (p, acked) in &want {
        let got = read_all(&h, &tp("bp", *p)).await;
        let want: Vec<(u64, Vec<u8>)> = acked.iter().map(|(o, v)| (*o, v.clone())).collect();
        assert_eq!(got, want);
    }
    let stats = h.stats().await.unwrap();
    assert!(
        stats.queue_full_waits > 0,
        "1000 concurrent requests on a queue of 2 must wait"
    );
    let s = &stats.shards[0];
    assert!(s.cycle_requests_seen_max <= 2, "the cycle cap holds");
    assert_eq!(s.queue_depth, 2);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_and_stats_describe_the_log() {
    let dir = data_dir();
    let h = start(config(dir.path()));
    h.create_topic("ts", 1, TopicConfig::default())
        .await
        .unwrap();
    let t = tp("ts", 0);
    for i in 0..10i64 {
        h.produce(
            &t,
            batch_at(&[b"a", b"b"], 1_000 * i),
            AckPolicy::All,
            WAIT_MS,
        )
        .await
        .unwrap();
    }
    let q = |query| {
        let (h, t) = (h.clone(), t.clone());
        async move { h.list_offsets(&t, query).await.unwrap() }
    };
    assert_eq!(q(OffsetQuery::Earliest).await, Some(0));
    assert_eq!(q(OffsetQuery::Latest).await, Some(20));
    assert_eq!(q(OffsetQuery::Timestamp(4_000)).await, Some(8));
    assert_eq!(q(OffsetQuery::Timestamp(4_001)).await, Some(9));
    assert_eq!(q(OffsetQuery::Timestamp(99_000)).await, None);

    let before = h.stats().await.unwrap();
    let f = h.fetch(&t, 0, 1 << 20, 0).await.unwrap();
    let stats = h.stats().await.unwrap();
    let p = stats.partitions().find(|p| p.tp == t).unwrap();
    assert_eq!(p.high_watermark, 20);
    assert_eq!(p.log_start, 0);
    assert_eq!(p.produce_requests, 10);
    assert_eq!(p.fetch_requests, 1);
    assert_eq!(p.fetch_bytes, f.batches.bytes.len() as u64);
    assert!(p.produce_bytes > 0);
    assert_eq!(p.segments, 1);
    assert_eq!(
        p.log_bytes, p.produce_bytes,
        "the log holds the batches as sent"
    );
    let shard = &stats.shards[h.shard_of(&t)];
    assert!(shard.flush_latency.count >= 10);
    assert!(shard.core.flushes >= 10 && shard.core.partitions_synced >= 10);
    assert_eq!(
        stats.core_total().fetch_requests,
        before.core_total().fetch_requests + 1
    );
    // One topic's stats are the same numbers, asked of its shards only.
    assert_eq!(h.topic_stats("ts").await.unwrap(), vec![p.clone()]);
    assert_eq!(h.topic_stats("missing").await.unwrap(), vec![]);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_requests_are_refused_definitely() {
    let dir = data_dir();
    let h = start(config(dir.path()));
    h.create_topic("t", 2, TopicConfig::default())
        .await
        .unwrap();
    h.produce(&tp("t", 0), batch(&[b"v"]), AckPolicy::All, WAIT_MS)
        .await
        .unwrap();
    // A long-poll still waiting is answered (empty) by the shutdown, not dropped.
    let waiting = {
        let h = h.clone();
        tokio::spawn(async move { h.fetch(&tp("t", 1), 0, 100, 20_000).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.shutdown().await.unwrap();
    let f = waiting.await.unwrap().unwrap();
    assert_eq!(f.batches.count, 0);
    assert_eq!(
        h.produce(&tp("t", 0), batch(&[b"v"]), AckPolicy::All, WAIT_MS)
            .await,
        Err(RequestError::ShuttingDown)
    );
    assert_eq!(
        h.create_topic("u", 1, TopicConfig::default()).await,
        Err(TopicError::ShuttingDown)
    );
    h.shutdown().await.unwrap();
}

#[test]
fn a_corrupt_topics_file_is_a_typed_start_error() {
    let dir = data_dir();
    std::fs::write(dir.path().join("topics.json"), b"{\"version\": 1, \"topi").unwrap();
    match Engine::start(config(dir.path())) {
        Err(StartError::Registry(RegistryError::Corrupt { .. })) => {}
        other => panic!("expected a corrupt-registry error, got {other:?}"),
    }
    let mut c = config(dir.path());
    c.queue_depth = 0;
    assert!(matches!(Engine::start(c), Err(StartError::Config(_))));
}

/// Compile-time: every future of the handle can be spawned on a multi-threaded
/// runtime (the gateway's tokio tasks).
#[allow(dead_code)]
fn every_handle_future_is_send(h: EngineHandle, t: TopicPartition) {
    fn send<T: Send + 'static>(_: T) {}
    let h2 = h.clone();
    let t2 = t.clone();
    send(async move { h2.produce(&t2, Vec::new(), AckPolicy::All, 1).await });
    let (h2, t2) = (h.clone(), t.clone());
    send(async move { h2.fetch(&t2, 0, 1, 1).await });
    let (h2, t2) = (h.clone(), t);
    send(async move { h2.list_offsets(&t2, OffsetQuery::Latest).await });
    let h2 = h.clone();
    send(async move { h2.create_topic("t", 1, TopicConfig::default()).await });
    let h2 = h.clone();
    send(async move { h2.delete_topic("t").await });
    let h2 = h.clone();
    send(async move { h2.stats().await });
    send(async move { h.shutdown().await });
}
