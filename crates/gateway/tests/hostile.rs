//! Hostile clients (issue 3, item 8): each gets an error, a stopped or reset stream, or a
//! closed connection, and afterwards a well-behaved client on a fresh connection still
//! gets answers, as does the hostile connection itself where it is still open.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use sluice_proto::wire::*;

fn error_of(answer: &RawAnswer) -> (u64, ErrorBody) {
    match answer {
        RawAnswer::Response(header, Response::Error(body)) => (header.request_id, body.clone()),
        other => panic!("expected an Error response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_alpn_fails_the_handshake() {
    let h = Harness::start();
    let ca = sluice_gateway::dev_ca_path(h.dir.path());
    for alpn in [&[&b"h3"[..]][..], &[b"sluice/2"], &[]] {
        let result = raw_connect(h.addr(), &ca, alpn).await;
        let err = result
            .err()
            .unwrap_or_else(|| panic!("ALPN {alpn:?} was accepted"));
        // TLS alert 120 (no_application_protocol) as QUIC crypto error 0x178.
        assert!(
            err.to_string().contains("0x178") || err.to_string().contains("protocol"),
            "{err}"
        );
    }
    assert!(h.gateway.stats().snapshot().handshakes_failed >= 3);
    assert_eq!(h.gateway.stats().snapshot().connections_total, 0);
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_stream_gets_an_error_response() {
    let h = Harness::start();
    let raw = h.raw().await;

    // Random bytes behind a plausible prefix and header length: the header does not decode.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut noise = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    };
    let mut header = vec![1, 0]; // api version 1, so the decoder goes past the version
    header.extend((0..40).map(|_| noise()));
    let mut garbage = Vec::new();
    garbage.extend_from_slice(&(4 + header.len() as u32).to_le_bytes());
    garbage.extend_from_slice(&(header.len() as u32).to_le_bytes());
    garbage.extend_from_slice(&header);
    let answer = raw_exchange(&raw, &garbage, true).await;
    let (id, body) = error_of(&answer);
    assert_eq!(body.code, ErrorCode::InvalidRequest, "{body:?}");
    // The request id is header bytes 2..10, whatever follows them.
    assert_eq!(id, u64::from_le_bytes(header[2..10].try_into().unwrap()));

    // A header of a different api version is refused as such, before anything else.
    let mut v9 = frame(5, &Request::ListTopics, &[]);
    v9[8] = 9;
    let (id, body) = error_of(&raw_exchange(&raw, &v9, true).await);
    assert_eq!((id, body.code), (5, ErrorCode::UnsupportedVersion));

    // Bytes after a valid frame.
    let mut trailing = frame(6, &Request::ListTopics, &[]);
    trailing.extend_from_slice(b"extra");
    let (id, body) = error_of(&raw_exchange(&raw, &trailing, true).await);
    assert_eq!((id, body.code), (6, ErrorCode::InvalidRequest));

    // A header length longer than the frame.
    let mut lying = frame(7, &Request::ListTopics, &[]);
    lying[4] = 200;
    let (_, body) = error_of(&raw_exchange(&raw, &lying, true).await);
    assert_eq!(body.code, ErrorCode::InvalidRequest);

    // A stream finished with nothing on it.
    let (id, body) = error_of(&raw_exchange(&raw, &[], true).await);
    assert_eq!((id, body.code), (0, ErrorCode::InvalidRequest));

    assert_eq!(
        h.broker.handled.load(Ordering::SeqCst),
        0,
        "nothing reached the service"
    );
    // The same connection still works for a good request.
    let answer = raw_exchange(&raw, &frame(8, &Request::ListTopics, &[]), true).await;
    assert!(
        matches!(
            answer,
            RawAnswer::Response(
                ResponseHeader { request_id: 8 },
                Response::ListTopics(Ok(_))
            )
        ),
        "{answer:?}"
    );
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_length_prefix_is_refused_before_allocating() {
    let h = Harness::start();
    let raw = h.raw().await;
    for prefix in [u32::MAX, (32 << 20) + 1, 1 << 30] {
        let (mut send, mut recv) = raw.open_bi().await.unwrap();
        send.write_all(&prefix.to_le_bytes()).await.unwrap();
        // The client keeps writing as if the frame were real: the gateway stops it.
        let mut stopped = None;
        for _ in 0..64 {
            match send.write_all(&[0xAB; 16 << 10]).await {
                Ok(()) => {}
                Err(quinn::WriteError::Stopped(code)) => {
                    stopped = Some(code.into_inner() as u32);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let answer = read_answer(&mut recv).await;
        let (id, body) = error_of(&answer);
        assert_eq!((id, body.code), (0, ErrorCode::FrameTooLarge));
        let stopped = match stopped {
            Some(code) => Some(code),
            None => send.stopped().await.unwrap().map(|c| c.into_inner() as u32),
        };
        assert_eq!(stopped, Some(STREAM_ERROR_MALFORMED));
    }
    // An HTTP request where a frame should be: "GET " is a 542 MB length.
    let answer = raw_exchange(&raw, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", true).await;
    assert_eq!(error_of(&answer).1.code, ErrorCode::FrameTooLarge);
    // A length too short for the header length field.
    let answer = raw_exchange(&raw, &[2, 0, 0, 0, 0, 0], true).await;
    assert_eq!(error_of(&answer).1.code, ErrorCode::InvalidRequest);
    let s = h.gateway.stats().snapshot();
    assert!(s.stream_resets[&STREAM_ERROR_MALFORMED] >= 3, "{s:?}");
    h.assert_healthy().await;
}

/// A produce request frame (topic "t", partition 0) with a 1000-byte batch.
fn produce_frame(request_id: u64) -> Vec<u8> {
    frame(
        request_id,
        &Request::Produce {
            topic: "t".into(),
            partition: 0,
            acks: Acks::All,
            timeout_ms: 100,
        },
        &batch_of(1000),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_gets_an_error_response() {
    let h = Harness::start();
    let raw = h.raw().await;
    let full = produce_frame(42);
    for cut in [2, 4, 9, 30, full.len() - 1] {
        let answer = raw_exchange(&raw, &full[..cut], true).await;
        let (id, body) = error_of(&answer);
        assert_eq!(
            body.code,
            ErrorCode::InvalidRequest,
            "cut at {cut}: {body:?}"
        );
        assert!(body.message.contains("truncated"), "{body:?}");
        // Once the header's id bytes are in, the answer carries the id.
        let expected = if cut >= 4 + 4 + 10 { 42 } else { 0 };
        assert_eq!(id, expected, "cut at {cut}");
    }
    assert_eq!(h.broker.handled.load(Ordering::SeqCst), 0);
    h.assert_healthy().await;
}

/// The gateway reads a frame's head (header length + header) and its payload into two
/// buffers. A header length that is over the limit or runs past the frame keeps the
/// whole frame in the head, and one that splits it in the wrong place leaves a header
/// that does not decode: either way the frame is refused with the code the whole frame
/// would get, the payload behind it is read and dropped, and nothing is dispatched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_header_length_in_front_of_a_payload_is_refused() {
    let h = Harness::start();
    let raw = h.raw().await;
    let full = produce_frame(43);
    let body_len = full.len() - 4;
    let real = u32::from_le_bytes(full[4..8].try_into().unwrap());
    for header_len in [
        FrameLimits::DEFAULT.header_bytes_max + 1,
        body_len as u32,
        u32::MAX,
        0,
        real - 1,
        real + 1,
    ] {
        let mut lying = full.clone();
        lying[4..8].copy_from_slice(&header_len.to_le_bytes());
        let answer = raw_exchange(&raw, &lying, true).await;
        let (_, body) = error_of(&answer);
        // Over the header limit: too large; otherwise it does not decode.
        let expected = if header_len > FrameLimits::DEFAULT.header_bytes_max {
            ErrorCode::FrameTooLarge
        } else {
            ErrorCode::InvalidRequest
        };
        assert_eq!(body.code, expected, "header length {header_len}: {body:?}");
    }
    assert_eq!(h.broker.handled.load(Ordering::SeqCst), 0);
    // The connection still serves a well-formed produce, payload and all.
    let answer = raw_exchange(&raw, &full, true).await;
    assert!(
        matches!(answer, RawAnswer::Response(ref header, _) if header.request_id == 43),
        "{answer:?}"
    );
    assert_eq!(h.broker.handled.load(Ordering::SeqCst), 1);
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_request_variant_gets_an_error_with_its_id() {
    let h = Harness::start();
    let raw = h.raw().await;
    for variant in [12u32, 99, u32::MAX] {
        let answer = raw_exchange(&raw, &frame_with_variant(1234, variant, &[0; 16]), true).await;
        let (id, body) = error_of(&answer);
        assert_eq!((id, body.code), (1234, ErrorCode::InvalidRequest));
        assert!(body.message.contains("variant"), "{body:?}");
    }
    // A known variant with a field out of its limits is refused the same way.
    let answer = raw_exchange(
        &raw,
        &frame_with_variant(55, 1, &{
            // CreateTopic { name: "t", partitions: 0, config: default }
            let mut f = 1u64.to_le_bytes().to_vec();
            f.push(b't');
            f.extend_from_slice(&0u32.to_le_bytes());
            f.extend_from_slice(&[0, 0, 0]);
            f
        }),
        true,
    )
    .await;
    let (id, body) = error_of(&answer);
    assert_eq!((id, body.code), (55, ErrorCode::InvalidRequest));
    assert_eq!(h.broker.handled.load(Ordering::SeqCst), 0);
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_finishes_is_reset_with_timeout() {
    let h = Harness::start(); // stream_read_timeout 500 ms
    let raw = h.raw().await;
    // A whole valid frame without the end of the stream, a partial frame, a partial prefix.
    let whole = frame(1, &Request::ListTopics, &[]);
    for part in [&whole[..], &whole[..10], &whole[..2]] {
        let started = std::time::Instant::now();
        let answer = raw_exchange(&raw, part, false).await;
        assert_eq!(answer, RawAnswer::Reset(STREAM_ERROR_TIMEOUT));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(450), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
    assert_eq!(h.broker.handled.load(Ordering::SeqCst), 0);
    assert_eq!(
        h.gateway.stats().snapshot().stream_resets[&STREAM_ERROR_TIMEOUT],
        3
    );
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_streams_are_held_to_the_in_flight_limit() {
    const LIMIT: u32 = 32;
    let h = Harness::start_with(|c| {
        c.in_flight_per_connection_max = LIMIT;
        c.stream_read_timeout = Duration::from_millis(800);
    });
    let raw = h.raw().await;

    // 3000 requests as fast as they can be opened: all answered, never more than LIMIT
    // handled at once (each takes a couple of milliseconds).
    let slow = Request::DescribeTopic {
        name: SLOW_TOPIC.into(),
    };
    let mut tasks = Vec::new();
    for i in 0..3_000u64 {
        let raw = raw.clone();
        let bytes = frame(i + 1, &slow, &[]);
        tasks.push(tokio::spawn(async move {
            raw_exchange(&raw, &bytes, true).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            RawAnswer::Response(header, Response::DescribeTopic(Err(e))) => {
                assert_eq!(header.request_id, i as u64 + 1);
                assert_eq!(e.code, ErrorCode::UnknownTopic);
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    let peak = h.broker.handling_peak.load(Ordering::SeqCst);
    assert!(peak <= u64::from(LIMIT), "peak {peak}");
    assert!(h.gateway.stats().snapshot().in_flight_peak <= u64::from(LIMIT));

    // Streams that never finish use up the credit: past LIMIT open at once, the next
    // stream cannot even be opened until the gateway times them out. (quinn announces
    // freed credit in steps of LIMIT/8, so a few of the credits freed just before may not
    // have been announced yet.)
    let mut stalled = Vec::new();
    while let Ok(opened) = tokio::time::timeout(Duration::from_millis(300), raw.open_bi()).await {
        let (mut send, recv) = opened.unwrap();
        send.write_all(&[1]).await.unwrap();
        stalled.push((send, recv));
        assert!(
            stalled.len() <= LIMIT as usize,
            "more than LIMIT streams opened"
        );
    }
    assert!(
        stalled.len() >= (LIMIT - LIMIT / 8) as usize,
        "{}",
        stalled.len()
    );
    // Meanwhile other connections are served.
    h.assert_healthy().await;
    for (_, recv) in &mut stalled {
        assert_eq!(
            read_answer(recv).await,
            RawAnswer::Reset(STREAM_ERROR_TIMEOUT)
        );
    }
    // The stalled streams' credit comes back once the client's stack answers the
    // gateway's STOP_SENDING with a reset (quinn does that when the stream is dropped; a
    // client that never does only holds up its own connection).
    drop(stalled);
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        raw_exchange(&raw, &frame(9_999, &Request::ListTopics, &[]), true),
    )
    .await
    .unwrap();
    assert!(
        matches!(answer, RawAnswer::Response(_, Response::ListTopics(Ok(_)))),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidirectional_streams_are_not_allowed() {
    let h = Harness::start();
    let raw = h.raw().await;
    // The gateway grants no unidirectional stream credit, so the client cannot open one.
    let opened = tokio::time::timeout(Duration::from_millis(300), raw.open_uni()).await;
    assert!(opened.is_err(), "a unidirectional stream was opened");
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_sending_only_garbage_is_closed() {
    let h = Harness::start_with(|c| c.malformed_streams_per_connection_max = 4);
    let raw = h.raw().await;
    for _ in 0..4 {
        let _ = raw_exchange(&raw, b"\xff\xff\xff\xffgarbage", true).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.closed())
        .await
        .unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code.into_inner() == u64::from(CONNECTION_ERROR_PROTOCOL)),
        "{closed:?}"
    );
    assert_eq!(h.gateway.stats().snapshot().connections_closed_protocol, 1);
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_its_stream_does_not_disturb_others() {
    let h = Harness::start();
    let raw = h.raw().await;
    let whole = frame(3, &Request::ListTopics, &[]);
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    send.write_all(&whole[..6]).await.unwrap();
    send.reset(0u32.into()).unwrap();
    assert_eq!(
        read_answer(&mut recv).await,
        RawAnswer::Reset(STREAM_ERROR_CANCELLED)
    );
    // A client that vanishes without closing.
    let vanishing = h.raw().await;
    let (mut send, _recv) = vanishing.open_bi().await.unwrap();
    send.write_all(&whole[..6]).await.unwrap();
    drop(vanishing);
    let answer = raw_exchange(&raw, &whole, true).await;
    assert!(
        matches!(answer, RawAnswer::Response(_, Response::ListTopics(Ok(_)))),
        "{answer:?}"
    );
    h.assert_healthy().await;
}
