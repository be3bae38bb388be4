//! Hostile clients against a real `sluice-server` process (issue 3, item 8): garbage on
//! a stream, a huge length prefix, a truncated frame, an unknown request kind, a corrupt
//! batch, the wrong ALPN, streams that never finish, thousands of streams, a connection
//! of nothing but garbage. Each gets the outcome `proto/PROTOCOL.md` documents for it (a
//! typed `Error` response, a stopped or reset stream, a closed connection, a failed
//! handshake), and meanwhile and afterwards the process stays up and a well-behaved SDK
//! client is served. The gateway's own tests do the same against a fake service
//! (`crates/gateway/tests/hostile.rs`); this one runs the broker binary the way it ships.

use std::future::Future;
use std::time::{Duration, Instant};

use sluice_client::{Client, ClientTls};
use sluice_proto::wire::*;
use sluice_proto::{BatchBuilder, Limits};
use sluice_test_support::raw::{
    frame, frame_with_variant, raw_connect, raw_exchange, read_answer, RawAnswer,
};
use sluice_test_support::Broker;

/// The server's `stream_read_timeout` in this test (default 10 s, too slow for a test).
const STREAM_READ_TIMEOUT: Duration = Duration::from_millis(500);
/// The server's `in_flight_per_connection` in this test.
const IN_FLIGHT_MAX: u32 = 64;
/// The gateway's default `malformed_streams_per_connection_max`.
const MALFORMED_STREAMS_MAX: u32 = 32;
/// Bound on each attack, so a server that hangs fails the test instead of stalling it.
const ATTACK_TIMEOUT: Duration = Duration::from_secs(30);
/// The topic the produce attacks aim at.
const TOPIC: &str = "hostile";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_typed_refusals_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nin_flight_per_connection = {IN_FLIGHT_MAX}\nstream_read_timeout_ms = {}\n",
            STREAM_READ_TIMEOUT.as_millis()
        ),
    )
    .unwrap();
    let mut broker = Broker::builder(dir.path().join("data"))
        .binary(env!("CARGO_BIN_EXE_sluice-server"))
        .args(["--shards", "1", "--config"])
        .arg(&config)
        .start();
    let sdk = client(&broker).await;
    sdk.create_topic(TOPIC, 1, TopicConfig::default())
        .await
        .unwrap();

    let started = Instant::now();
    let mut timings = Vec::new();
    macro_rules! attack {
        ($name:literal, $attack:expr) => {{
            let t = Instant::now();
            bounded($name, $attack).await;
            assert_healthy(&broker).await;
            timings.push(($name, t.elapsed()));
        }};
    }
    attack!("wrong ALPN", wrong_alpn(&broker));
    attack!("garbage", garbage_on_a_stream(&broker));
    attack!("huge length prefix", huge_length_prefix(&broker));
    attack!("truncated frame", truncated_frame(&broker));
    attack!("unknown request kind", unknown_request_kind(&broker));
    attack!("corrupt batch", corrupt_batch(&broker));
    attack!("unidirectional stream", unidirectional_stream(&broker));
    attack!("never finished", streams_that_never_finish(&broker));
    attack!("thousands of streams", thousands_of_streams(&broker));
    attack!("stalled streams", stalled_streams_up_to_the_limit(&broker));
    attack!("only garbage", a_connection_of_only_garbage(&broker));
    eprintln!("hostile attacks took {:?}: {timings:?}", started.elapsed());

    // After all of it: a normal client creates a topic, produces and fetches.
    let sdk = client(&broker).await;
    sdk.create_topic("after", 2, TopicConfig::default())
        .await
        .unwrap();
    let ok = sdk
        .produce("after", 1, &batch(3, 100), Acks::All, 5_000)
        .await
        .unwrap();
    assert_eq!((ok.base_offset, ok.last_offset), (0, 2));
    let (fetched, payload) = sdk.fetch("after", 1, 0, 1 << 20, 0).await.unwrap();
    assert_eq!((fetched.high_watermark, fetched.batches), (3, 1));
    let limits = Limits::default();
    let records: Vec<_> = sluice_proto::batches(&payload, &limits)
        .map(|b| b.unwrap())
        .flat_map(|b| {
            b.records()
                .map(|r| r.value.map(<[u8]>::to_vec))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        records,
        (0..3).map(|i| Some(value(i, 100))).collect::<Vec<_>>()
    );
    // Only the good batch reached the hostile topic: the corrupt ones appended nothing.
    let described = sdk.describe_topic(TOPIC).await.unwrap();
    assert_eq!(described.partitions[0].high_watermark, 4);
    sdk.close().await;

    assert!(
        broker.is_running(),
        "the server died:\n{}",
        broker.log_text()
    );
    assert_eq!(broker.admin_get("/health").map(|(s, _)| s), Some(200));
    let log = broker.log_text();
    assert!(!log.contains("panicked"), "{log}");
    let status = broker.terminate();
    assert_eq!(status.code(), Some(0), "{}", broker.log_text());
}

async fn bounded(name: &str, attack: impl Future<Output = ()>) {
    tokio::time::timeout(ATTACK_TIMEOUT, attack)
        .await
        .unwrap_or_else(|_| panic!("attack {name:?} did not finish in {ATTACK_TIMEOUT:?}"));
}

async fn client(broker: &Broker) -> Client {
    Client::connect(broker.addr(), ClientTls::ca_file(broker.ca_path()))
        .await
        .expect("a well-behaved client connects")
}

/// A fresh SDK connection is served.
async fn assert_healthy(broker: &Broker) {
    let sdk = client(broker).await;
    let topics = sdk.list_topics().await.expect("list topics");
    assert!(topics.iter().any(|t| t.name == TOPIC), "{topics:?}");
    assert_eq!(sdk.describe_cluster().await.unwrap().node_id, 1);
    sdk.close().await;
}

async fn wrong_alpn(broker: &Broker) {
    for alpn in [&[&b"h3"[..]][..], &[b"sluice/2"], &[b"sluice/1x"], &[]] {
        let err = raw_connect(broker.addr(), &broker.ca_path(), alpn)
            .await
            .err()
            .unwrap_or_else(|| panic!("ALPN {alpn:?} was accepted"));
        // TLS alert 120 (no_application_protocol) as QUIC crypto error 0x100 + 120.
        match &err {
            quinn::ConnectionError::ConnectionClosed(close) => {
                assert_eq!(u64::from(close.error_code), 0x178, "{err}");
            }
            other => panic!("ALPN {alpn:?}: {other}"),
        }
    }
    // The right ALPN among others is chosen.
    let conn = raw_connect(broker.addr(), &broker.ca_path(), &[b"h3", ALPN])
        .await
        .unwrap();
    let answer = raw_exchange(&conn, &frame(1, &Request::ListTopics, &[]), true).await;
    assert!(
        matches!(answer, RawAnswer::Response(_, Response::ListTopics(Ok(_)))),
        "{answer:?}"
    );
}

async fn garbage_on_a_stream(broker: &Broker) {
    let conn = raw(broker).await;
    // Noise behind a plausible prefix and header length, api version 1: the header does
    // not decode. The answer still carries the request id (header bytes 2..10).
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    };
    for n in [10usize, 41, 300] {
        let mut header = vec![1, 0];
        header.extend((0..n).map(|_| noise()));
        let mut garbage = Vec::new();
        garbage.extend_from_slice(&(4 + header.len() as u32).to_le_bytes());
        garbage.extend_from_slice(&(header.len() as u32).to_le_bytes());
        garbage.extend_from_slice(&header);
        let (id, body) = error_of(raw_exchange(&conn, &garbage, true).await);
        assert_eq!(body.code, ErrorCode::InvalidRequest, "{body:?}");
        assert_eq!(id, u64::from_le_bytes(header[2..10].try_into().unwrap()));
    }
    // Another api version is refused as such.
    let mut v9 = frame(5, &Request::ListTopics, &[]);
    v9[8] = 9;
    let (id, body) = error_of(raw_exchange(&conn, &v9, true).await);
    assert_eq!((id, body.code), (5, ErrorCode::UnsupportedVersion));
    // Bytes after a whole frame.
    let mut trailing = frame(6, &Request::ListTopics, &[]);
    trailing.extend_from_slice(b"extra");
    let (id, body) = error_of(raw_exchange(&conn, &trailing, true).await);
    assert_eq!((id, body.code), (6, ErrorCode::InvalidRequest));
    // A header length past the frame's end.
    let mut lying = frame(7, &Request::ListTopics, &[]);
    lying[4] = 200;
    assert_eq!(
        error_of(raw_exchange(&conn, &lying, true).await).1.code,
        ErrorCode::InvalidRequest
    );
    // A stream finished with nothing on it.
    let (id, body) = error_of(raw_exchange(&conn, &[], true).await);
    assert_eq!((id, body.code), (0, ErrorCode::InvalidRequest));
    // The same connection still serves a good request.
    assert_lists_topics(&conn, 8).await;
}

async fn huge_length_prefix(broker: &Broker) {
    let conn = raw(broker).await;
    for prefix in [u32::MAX, (32 << 20) + 1, 1 << 30] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&prefix.to_le_bytes()).await.unwrap();
        // Keep writing as if the frame were real: the server stops the stream unread.
        let mut stopped = None;
        for _ in 0..256 {
            match send.write_all(&[0xAB; 16 << 10]).await {
                Ok(()) => {}
                Err(quinn::WriteError::Stopped(code)) => {
                    stopped = Some(code.into_inner());
                    break;
                }
                Err(e) => panic!("prefix {prefix}: {e}"),
            }
        }
        let (id, body) = error_of(read_answer(&mut recv).await);
        assert_eq!((id, body.code), (0, ErrorCode::FrameTooLarge), "{body:?}");
        let stopped = match stopped {
            Some(code) => Some(code),
            None => send.stopped().await.unwrap().map(|c| c.into_inner()),
        };
        assert_eq!(stopped, Some(u64::from(STREAM_ERROR_MALFORMED)));
    }
    // An HTTP request where a frame should be: "GET " is a 542 MB length.
    let http = raw_exchange(&conn, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", true).await;
    assert_eq!(error_of(http).1.code, ErrorCode::FrameTooLarge);
    // A length too short to hold the header length.
    let short = raw_exchange(&conn, &[2, 0, 0, 0, 0, 0], true).await;
    assert_eq!(error_of(short).1.code, ErrorCode::InvalidRequest);
    assert_lists_topics(&conn, 9).await;
}

async fn truncated_frame(broker: &Broker) {
    let conn = raw(broker).await;
    let full = frame(42, &produce_request(), &batch(50, 200));
    for cut in [1, 2, 4, 9, 17, 18, 30, full.len() / 2, full.len() - 1] {
        let (id, body) = error_of(raw_exchange(&conn, &full[..cut], true).await);
        assert_eq!(body.code, ErrorCode::InvalidRequest, "cut {cut}: {body:?}");
        assert!(body.message.contains("truncated"), "cut {cut}: {body:?}");
        // Once the header's id bytes are in (prefix 4 + header len 4 + 10), the answer
        // carries the id.
        assert_eq!(id, if cut >= 18 { 42 } else { 0 }, "cut {cut}");
    }
    assert_lists_topics(&conn, 10).await;
}

async fn unknown_request_kind(broker: &Broker) {
    let conn = raw(broker).await;
    for variant in [12u32, 13, 99, 0x8000_0000, u32::MAX] {
        let (id, body) =
            error_of(raw_exchange(&conn, &frame_with_variant(1234, variant, &[0; 16]), true).await);
        assert_eq!(
            (id, body.code),
            (1234, ErrorCode::InvalidRequest),
            "{body:?}"
        );
        assert!(body.message.contains("variant"), "{body:?}");
    }
    assert_lists_topics(&conn, 11).await;
}

async fn corrupt_batch(broker: &Broker) {
    let conn = raw(broker).await;
    let good = batch(4, 64);
    // One flipped byte in a record: the CRC no longer matches.
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    // A batch of noise: its length field is far over batch_bytes_max.
    let noise = vec![0xAB; 200];
    // Too short for a batch header.
    let short = good[..40].to_vec();
    for (payload, batch_code) in [(flipped, 103u16), (noise, 102), (short, 101)] {
        let answer = raw_exchange(&conn, &frame(77, &produce_request(), &payload), true).await;
        match answer {
            RawAnswer::Response(header, Response::Produce(Err(body))) => {
                assert_eq!(header.request_id, 77);
                assert_eq!(body.code, ErrorCode::CorruptBatch, "{body:?}");
                assert_eq!(body.detail, ErrorDetail::Batch { code: batch_code });
            }
            other => panic!("expected a CorruptBatch answer, got {other:?}"),
        }
    }
    // The good batch is appended, at offset 0: nothing corrupt got in before it.
    match raw_exchange(&conn, &frame(78, &produce_request(), &good), true).await {
        RawAnswer::Response(_, Response::Produce(Ok(ok))) => {
            assert_eq!((ok.base_offset, ok.last_offset), (0, 3));
        }
        other => panic!("{other:?}"),
    }
}

async fn unidirectional_stream(broker: &Broker) {
    let conn = raw(broker).await;
    // The server grants no unidirectional stream credit: the client cannot open one.
    let opened = tokio::time::timeout(Duration::from_millis(300), conn.open_uni()).await;
    assert!(opened.is_err(), "a unidirectional stream was opened");
    assert_lists_topics(&conn, 12).await;
}

async fn streams_that_never_finish(broker: &Broker) {
    let conn = raw(broker).await;
    // A whole frame without FIN, a partial frame, a partial prefix, one byte: all at
    // once, each reset after the read timeout. (A stream with nothing written never
    // reaches the server: quinn opens streams on the wire lazily.)
    let whole = frame(1, &Request::ListTopics, &[]);
    let parts: [&[u8]; 4] = [&whole, &whole[..10], &whole[..2], &whole[..1]];
    let started = Instant::now();
    let mut streams = Vec::new();
    for part in parts {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(part).await.unwrap();
        streams.push((send, recv));
    }
    for (_send, mut recv) in streams {
        assert_eq!(
            read_answer(&mut recv).await,
            RawAnswer::Reset(STREAM_ERROR_TIMEOUT)
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= STREAM_READ_TIMEOUT - Duration::from_millis(50),
        "{waited:?}"
    );
    assert!(waited < STREAM_READ_TIMEOUT * 6, "{waited:?}");
    assert_lists_topics(&conn, 13).await;
}

async fn thousands_of_streams(broker: &Broker) {
    const STREAMS: u64 = 2_000;
    let conn = raw(broker).await;
    // As fast as they open: the server's stream credit (IN_FLIGHT_MAX) paces them, and
    // every one is answered, with its own id.
    let mut tasks = Vec::new();
    for i in 1..=STREAMS {
        let conn = conn.clone();
        let request = if i % 2 == 0 {
            Request::ListTopics
        } else {
            Request::DescribeTopic {
                name: format!("missing-{i}"),
            }
        };
        let bytes = frame(i, &request, &[]);
        tasks.push(tokio::spawn(async move {
            raw_exchange(&conn, &bytes, true).await
        }));
    }
    for (i, task) in (1..=STREAMS).zip(tasks) {
        match task.await.unwrap() {
            RawAnswer::Response(header, Response::ListTopics(Ok(_))) if i % 2 == 0 => {
                assert_eq!(header.request_id, i);
            }
            RawAnswer::Response(header, Response::DescribeTopic(Err(e))) if i % 2 == 1 => {
                assert_eq!(header.request_id, i);
                assert_eq!(e.code, ErrorCode::UnknownTopic);
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    // Thousands of streams over many connections at once, too.
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        let conn = raw(broker).await;
        tasks.push(tokio::spawn(async move {
            let mut inner = Vec::new();
            for i in 0..250u64 {
                let conn = conn.clone();
                let id = c * 1_000 + i;
                inner.push(tokio::spawn(async move {
                    (id, raw_exchange(&conn, &frame(id, &Request::ListTopics, &[]), true).await)
                }));
            }
            for t in inner {
                let (id, answer) = t.await.unwrap();
                assert!(
                    matches!(&answer, RawAnswer::Response(h, Response::ListTopics(Ok(_))) if h.request_id == id),
                    "{id}: {answer:?}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn stalled_streams_up_to_the_limit(broker: &Broker) {
    let conn = raw(broker).await;
    // Streams that never finish use up the connection's credit: past IN_FLIGHT_MAX the
    // next stream cannot even be opened. (quinn announces freed credit in steps, so a few
    // credits may be unannounced.)
    let mut stalled = Vec::new();
    while let Ok(opened) = tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await {
        let (mut send, recv) = opened.unwrap();
        send.write_all(&[1]).await.unwrap();
        stalled.push((send, recv));
        assert!(
            stalled.len() <= IN_FLIGHT_MAX as usize,
            "more than {IN_FLIGHT_MAX} streams open at once"
        );
    }
    assert!(
        stalled.len() >= (IN_FLIGHT_MAX - IN_FLIGHT_MAX / 8) as usize,
        "{}",
        stalled.len()
    );
    // Other connections are served meanwhile.
    assert_healthy(broker).await;
    for (_, recv) in &mut stalled {
        assert_eq!(
            read_answer(recv).await,
            RawAnswer::Reset(STREAM_ERROR_TIMEOUT)
        );
    }
    // Dropping them answers the server's STOP_SENDING; the credit comes back.
    drop(stalled);
    assert_lists_topics(&conn, 14).await;
}

async fn a_connection_of_only_garbage(broker: &Broker) {
    let conn = raw(broker).await;
    for i in 0..MALFORMED_STREAMS_MAX {
        match raw_exchange(&conn, b"\xff\xff\xff\xffgarbage", true).await {
            RawAnswer::Response(_, Response::Error(body)) => {
                assert_eq!(body.code, ErrorCode::FrameTooLarge);
            }
            // The last one may race the close.
            RawAnswer::Lost(_) | RawAnswer::Empty if i + 1 == MALFORMED_STREAMS_MAX => {}
            other => panic!("stream {i}: {other:?}"),
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the connection is closed");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code.into_inner() == u64::from(CONNECTION_ERROR_PROTOCOL)),
        "{closed:?}"
    );
}

// ---- raw QUIC helpers -------------------------------------------------------------

async fn raw(broker: &Broker) -> quinn::Connection {
    raw_connect(broker.addr(), &broker.ca_path(), &[ALPN])
        .await
        .expect("a raw connection with ALPN sluice/1")
}

fn error_of(answer: RawAnswer) -> (u64, ErrorBody) {
    match answer {
        RawAnswer::Response(header, Response::Error(body)) => (header.request_id, body),
        other => panic!("expected an Error response, got {other:?}"),
    }
}

async fn assert_lists_topics(conn: &quinn::Connection, id: u64) {
    let answer = raw_exchange(conn, &frame(id, &Request::ListTopics, &[]), true).await;
    assert!(
        matches!(&answer, RawAnswer::Response(h, Response::ListTopics(Ok(_))) if h.request_id == id),
        "{answer:?}"
    );
}

fn produce_request() -> Request {
    Request::Produce {
        topic: TOPIC.into(),
        partition: 0,
        acks: Acks::All,
        timeout_ms: 5_000,
    }
}

fn value(i: usize, bytes: usize) -> Vec<u8> {
    (0..bytes).map(|j| (i * 31 + j) as u8).collect()
}

/// A batch of `records` records with `bytes`-byte values.
fn batch(records: usize, bytes: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(Limits::default());
    for i in 0..records {
        builder
            .push(1_700_000_000_000, None, Some(&value(i, bytes)), &[])
            .unwrap();
    }
    builder.finish().unwrap()
}
