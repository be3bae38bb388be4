//! Well-behaved clients through the real QUIC stack: round trips, concurrency, TLS
//! material, limits on connections, stats, reconnects.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sluice_client::{Client, ClientError, ClientOptions, ClientTls};
use sluice_gateway::{
    dev_ca_path, ensure_dev_certificates, Gateway, GatewayConfig, GatewayError, TlsSource,
};
use sluice_proto::wire::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_fetch_round_trip_a_1_mib_batch() {
    let h = Harness::start();
    let client = h.client().await;
    let batch = batch_of(1 << 20);
    assert!(batch.len() > 1 << 20);

    let ok = client
        .produce("events", 3, &batch, Acks::All, 5_000)
        .await
        .unwrap();
    assert_eq!((ok.base_offset, ok.last_offset), (0, 0));
    let stored = h.broker.logs.lock().unwrap()[&("events".to_owned(), 3)][0].clone();
    assert_eq!(stored, batch, "the service gets the batch exactly as sent");

    let (fetched, payload) = client.fetch("events", 3, 0, 1 << 20, 0).await.unwrap();
    assert_eq!(fetched.batches, 1);
    assert_eq!(fetched.next_offset, 1);
    assert_eq!(
        payload, batch,
        "the client gets the stored batch back exactly"
    );
    let limits = sluice_proto::Limits::default();
    let views: Vec<_> = sluice_proto::batches(&payload, &limits)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(views.len(), 1);

    let err = client.fetch("events", 3, 9, 1024, 0).await.unwrap_err();
    let body = err.broker_error().unwrap();
    assert_eq!(body.code, ErrorCode::OffsetOutOfRange);
    assert_eq!(
        body.detail,
        ErrorDetail::OffsetOutOfRange {
            log_start: 0,
            log_end: 1
        }
    );
    assert_eq!(err.write_outcome(), WriteOutcome::Definite);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_map_results_and_broker_errors() {
    let h = Harness::start();
    let client = h.client().await;
    let created = client
        .create_topic("orders", 8, TopicConfig::default())
        .await
        .unwrap();
    assert_eq!(created.partitions, 8);
    let err = client
        .create_topic("orders", 8, TopicConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Broker(b) if b.code == ErrorCode::TopicExists),
        "{err:?}"
    );
    assert!(!err.is_retriable());
    assert_eq!(client.list_topics().await.unwrap(), vec![created]);
    let err = client.describe_topic("orders").await.unwrap_err();
    assert_eq!(err.broker_error().unwrap().code, ErrorCode::UnknownTopic);
    assert!(err.is_retriable());
    let meta = client.metadata(None).await.unwrap();
    assert_eq!(meta.brokers.len(), 1);
    let offset = client
        .list_offsets("orders", 0, OffsetSpec::Latest)
        .await
        .unwrap();
    assert_eq!(offset.offset, Some(0));
    client.delete_topic("orders").await.unwrap();
    assert!(client.list_topics().await.unwrap().is_empty());
    let err = client.delete_topic("orders").await.unwrap_err();
    assert_eq!(err.broker_error().unwrap().code, ErrorCode::UnknownTopic);

    // Refused locally: nothing sent.
    let err = client
        .create_topic("bad name!", 1, TopicConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidRequest(_)), "{err:?}");
    assert_eq!(err.write_outcome(), WriteOutcome::Definite);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_on_one_connection() {
    let h = Harness::start();
    let client = h.client().await;
    let mut tasks = Vec::new();
    for i in 0..1_000u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let batch = batch_of(100 + i as usize);
            let ok = client
                .produce("busy", i % 4, &batch, Acks::Leader, 5_000)
                .await
                .unwrap();
            (i % 4, ok.base_offset)
        }));
    }
    let mut offsets = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for task in tasks {
        let (partition, offset) = task.await.unwrap();
        offsets[partition as usize].push(offset);
    }
    for mut o in offsets {
        o.sort_unstable();
        assert_eq!(
            o,
            (0..250).collect::<Vec<u64>>(),
            "every request answered once"
        );
    }
    let ids = h.broker.seen_ids.lock().unwrap().clone();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "request ids are unique");
    let stats = h.gateway.stats().snapshot();
    assert_eq!(stats.requests[&RequestKind::Produce], 1_000);
    assert_eq!(stats.latency[&RequestKind::Produce].count, 1_000);
    assert!(stats.in_flight_peak <= 256);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_certificates_are_generated_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let first = ensure_dev_certificates(&tls_dir).unwrap();
    assert!(first.generated);
    assert_eq!(first.ca_pem, dev_ca_path(&tls_dir));
    assert_eq!(first.ca_pem, tls_dir.join("ca.pem"));
    assert_eq!(first.cert_pem, tls_dir.join("server.pem"));
    assert_eq!(first.key_pem, tls_dir.join("server.key"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.key_pem)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
    let ca = std::fs::read(&first.ca_pem).unwrap();
    let key = std::fs::read(&first.key_pem).unwrap();
    let second = ensure_dev_certificates(&tls_dir).unwrap();
    assert!(!second.generated);
    assert_eq!(std::fs::read(&second.ca_pem).unwrap(), ca);
    assert_eq!(std::fs::read(&second.key_pem).unwrap(), key);

    // Two gateways in turn on the same directory: a client trusting the CA of the first
    // generation reaches both, by name and by IP.
    let broker = Arc::new(FakeBroker::default());
    for _ in 0..2 {
        let config = config(&tls_dir);
        let gateway = Gateway::bind(config, Arc::clone(&broker)).unwrap();
        for name in ["localhost", "127.0.0.1"] {
            let tls = ClientTls::ca_pem(ca.clone()).with_server_name(name);
            let client = Client::connect(gateway.local_addr(), tls).await.unwrap();
            client.describe_cluster().await.unwrap();
            client.close().await;
        }
        gateway.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(
        std::fs::read(&first.ca_pem).unwrap(),
        ca,
        "still the same CA"
    );

    // Missing one file: everything is generated again, a new CA.
    std::fs::remove_file(&first.cert_pem).unwrap();
    let third = ensure_dev_certificates(&tls_dir).unwrap();
    assert!(third.generated);
    assert_ne!(std::fs::read(&third.ca_pem).unwrap(), ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_certificate_files_are_loaded_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let dev = ensure_dev_certificates(dir.path()).unwrap();
    let files = TlsSource::Files {
        cert_pem: dev.cert_pem.clone(),
        key_pem: dev.key_pem.clone(),
    };
    let broker = Arc::new(FakeBroker::default());
    let gateway = Gateway::bind(
        GatewayConfig::new("127.0.0.1:0".parse().unwrap(), files),
        Arc::clone(&broker),
    )
    .unwrap();
    let client = Client::connect(gateway.local_addr(), ClientTls::ca_file(&dev.ca_pem))
        .await
        .unwrap();
    client.list_topics().await.unwrap();

    // A client that does not trust the CA cannot connect, and is told it will not help
    // to try again.
    let other = tempfile::tempdir().unwrap();
    let other_ca = ensure_dev_certificates(other.path()).unwrap().ca_pem;
    let err = Client::connect(gateway.local_addr(), ClientTls::ca_file(other_ca))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Connect {
                retriable: false,
                ..
            }
        ),
        "{err:?}"
    );
    // Nor one with no CA at all, or a wrong server name.
    let err = Client::connect(gateway.local_addr(), ClientTls::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Config(_)), "{err:?}");
    let tls = ClientTls::ca_file(&dev.ca_pem).with_server_name("elsewhere.example");
    let err = Client::connect(gateway.local_addr(), tls)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    client.close().await;

    // Bad files fail the bind with the file named.
    let missing = TlsSource::Files {
        cert_pem: dir.path().join("nope.pem"),
        key_pem: dev.key_pem.clone(),
    };
    let err = Gateway::bind(
        GatewayConfig::new("127.0.0.1:0".parse().unwrap(), missing),
        Arc::clone(&broker),
    )
    .unwrap_err();
    assert!(
        matches!(&err, GatewayError::TlsFile { path, .. } if path.ends_with("nope.pem")),
        "{err:?}"
    );
    let swapped = TlsSource::Files {
        cert_pem: dev.key_pem.clone(),
        key_pem: dev.cert_pem.clone(),
    };
    let err = Gateway::bind(
        GatewayConfig::new("127.0.0.1:0".parse().unwrap(), swapped),
        broker,
    )
    .unwrap_err();
    assert!(matches!(err, GatewayError::Tls(_)), "{err:?}");
}

#[test]
fn bad_configs_are_refused_at_bind() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(FakeBroker::default());
    let mut c = config(dir.path());
    c.request_bytes_per_connection_max = u64::from(c.frame_limits.frame_bytes_max) - 1;
    assert!(matches!(c.check(), Err(GatewayError::Config(_))));
    let mut c = config(dir.path());
    c.in_flight_per_connection_max = 0;
    assert!(matches!(c.check(), Err(GatewayError::Config(_))));
    let mut c = config(dir.path());
    c.stream_read_timeout = Duration::ZERO;
    assert!(matches!(c.check(), Err(GatewayError::Config(_))));
    // Outside a tokio runtime: an error, not a panic.
    let err = Gateway::bind(config(dir.path()), broker).unwrap_err();
    assert!(matches!(err, GatewayError::Bind { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let h = Harness::start_with(|c| c.connections_max = 2);
    let a = h.client().await;
    let b = h.client().await;
    let err = Client::connect(h.addr(), h.tls()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Connect {
                retriable: true,
                ..
            }
        ),
        "{err:?}"
    );
    a.list_topics().await.unwrap();
    b.list_topics().await.unwrap();
    assert!(h.gateway.stats().snapshot().connections_refused >= 1);

    // A freed slot is reusable.
    a.close().await;
    let mut reconnected = None;
    for _ in 0..50 {
        match Client::connect(h.addr(), h.tls()).await {
            Ok(c) => {
                reconnected = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    reconnected.unwrap().list_topics().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_limits_are_refused_before_sending() {
    let h = Harness::start();
    let options = ClientOptions {
        frame_limits: FrameLimits {
            frame_bytes_max: 20 << 20,
            ..FrameLimits::DEFAULT
        },
        ..ClientOptions::default()
    };
    let client = Client::connect_with(h.addr(), h.tls(), options)
        .await
        .unwrap();
    let huge = vec![0u8; 21 << 20];
    let err = client
        .produce("events", 0, &huge, Acks::All, 1_000)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidRequest(_)), "{err:?}");
    assert_eq!(h.broker.handled.load(Ordering::SeqCst), 0);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_connections_requests_errors_and_bytes() {
    let h = Harness::start();
    let client = h.client().await;
    client.list_topics().await.unwrap();
    client
        .produce("s", 0, &batch_of(1000), Acks::All, 100)
        .await
        .unwrap();
    let _ = client.describe_topic("missing").await.unwrap_err();
    let raw = h.raw().await;
    let answer = raw_exchange(&raw, &frame_with_variant(77, 99, &[]), true).await;
    assert!(matches!(answer, RawAnswer::Response(..)), "{answer:?}");

    // The gauge drops just after the response is written, which may be a moment after
    // the client has read it.
    for _ in 0..100 {
        if h.gateway.stats().snapshot().in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = h.gateway.stats().snapshot();
    assert_eq!(s.connections_open, 2);
    assert_eq!(s.connections_total, 2);
    assert_eq!(s.requests[&RequestKind::ListTopics], 1);
    assert_eq!(s.requests[&RequestKind::Produce], 1);
    assert_eq!(s.requests[&RequestKind::DescribeTopic], 1);
    assert_eq!(s.errors[&ErrorCode::UnknownTopic], 1);
    assert_eq!(s.errors[&ErrorCode::InvalidRequest], 1);
    assert!(s.bytes_in > 1000 && s.bytes_out > 0, "{s:?}");
    assert_eq!(s.in_flight, 0);
    client.close().await;
    raw.close(0u32.into(), b"");
    for _ in 0..100 {
        if h.gateway.stats().snapshot().connections_open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.gateway.stats().snapshot().connections_open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_after_the_broker_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(FakeBroker::default());
    let gateway = Gateway::bind(config(dir.path()), Arc::clone(&broker)).unwrap();
    let addr = gateway.local_addr();
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let tls = ClientTls::ca_file(dev_ca_path(dir.path()));
    let client = Client::connect_with(addr, tls, options).await.unwrap();
    client
        .produce("r", 0, &batch_of(10), Acks::All, 100)
        .await
        .unwrap();
    gateway.shutdown(Duration::from_secs(1)).await;

    // The broker is down: the lost connection is definite (closed with SHUTDOWN) or the
    // dial fails.
    let err = client.list_topics().await.unwrap_err();
    assert!(err.is_retriable(), "{err:?}");
    assert_eq!(err.write_outcome(), WriteOutcome::Definite, "{err:?}");

    let mut config = config(dir.path());
    config.listen = addr;
    let _gateway = Gateway::bind(config, Arc::clone(&broker)).unwrap();
    let ok = client
        .produce("r", 0, &batch_of(10), Acks::All, 100)
        .await
        .unwrap();
    assert_eq!(ok.base_offset, 1);
    client.close().await;
}
