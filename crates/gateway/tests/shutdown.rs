//! Graceful shutdown: in-flight requests finish, new ones are refused as definite, the
//! grace is enforced, and every client learns what happened to its requests.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sluice_client::{Client, ClientError};
use sluice_proto::wire::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let h = Harness::start();
    let options = sluice_client::ClientOptions {
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let client = Client::connect_with(h.addr(), h.tls(), options.clone())
        .await
        .unwrap();
    let mut in_flight = Vec::new();
    for i in 0..16u32 {
        let client = client.clone();
        in_flight.push(tokio::spawn(async move {
            client
                .produce(SLOW_TOPIC, i, &batch_of(4096), Acks::All, 5_000)
                .await
        }));
    }
    // Let every produce reach the service (each takes SLOW = 300 ms there).
    while h.broker.handling.load(std::sync::atomic::Ordering::SeqCst) < 16 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let Harness {
        gateway,
        broker,
        dir,
        ..
    } = h;
    let started = Instant::now();
    let shutdown = tokio::spawn(gateway.shutdown(Duration::from_secs(10)));

    // While draining, a new request on the open connection is refused unread: definite.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = client.list_topics().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: CONNECTION_ERROR_SHUTDOWN
            }
        ) || matches!(
            err,
            ClientError::ConnectionLost {
                outcome: WriteOutcome::Definite,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.write_outcome(), WriteOutcome::Definite);
    assert!(err.is_retriable());

    for task in in_flight {
        let ok = task
            .await
            .unwrap()
            .expect("an in-flight request is answered");
        assert_eq!(ok.base_offset, 0);
    }
    let report = shutdown.await.unwrap();
    assert!(report.drained_within_grace, "{report:?}");
    assert_eq!(report.unacknowledged, 0);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(broker.logs.lock().unwrap().len(), 16);

    // The broker is gone: the old connection reports a definite loss (closed with
    // SHUTDOWN), and a new one cannot be made.
    let err = client.list_topics().await.unwrap_err();
    assert_eq!(err.write_outcome(), WriteOutcome::Definite, "{err:?}");
    let tls = sluice_client::ClientTls::ca_file(sluice_gateway::dev_ca_path(dir.path()));
    let addr = client.addr();
    assert!(Client::connect_with(addr, tls, options).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_interrupts_what_outlives_the_grace() {
    let h = Harness::start();
    let client = h.client().await;
    let write = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .produce(STUCK_TOPIC, 0, &batch_of(100), Acks::All, 60_000)
                .await
        })
    };
    let read = {
        let client = client.clone();
        tokio::spawn(async move { client.fetch(STUCK_TOPIC, 0, 0, 1024, 60_000).await })
    };
    while h.broker.handling.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let report = h.gateway.shutdown(Duration::from_millis(200)).await;
    let took = started.elapsed();
    assert!(!report.drained_within_grace);
    assert_eq!(
        report.unacknowledged, 0,
        "the interrupted answers were delivered"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // The write may have been appended: indeterminate. The read was simply cut short.
    let err = write.await.unwrap().unwrap_err();
    assert_eq!(
        err.broker_error().map(|e| e.code),
        Some(ErrorCode::Interrupted),
        "{err:?}"
    );
    assert_eq!(err.write_outcome(), WriteOutcome::Indeterminate);
    assert!(err.is_retriable());
    let err = read.await.unwrap().unwrap_err();
    assert_eq!(
        err.broker_error().map(|e| e.code),
        Some(ErrorCode::ShuttingDown),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_requests_still_arriving() {
    let h = Harness::start_with(|c| c.stream_read_timeout = Duration::from_secs(30));
    let raw = h.raw().await;
    // Half a frame, then silence: not dispatched when the shutdown starts.
    let whole = frame(1, &Request::ListTopics, &[]);
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    send.write_all(&whole[..7]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let report = h.gateway.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained_within_grace);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "nothing dispatched to wait for"
    );
    let answer = read_answer(&mut recv).await;
    assert!(
        answer == RawAnswer::Reset(CONNECTION_ERROR_SHUTDOWN)
            || matches!(&answer, RawAnswer::Lost(reason) if reason.contains("6")),
        "{answer:?}"
    );
    let closed = raw.closed().await;
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code.into_inner() == u64::from(CONNECTION_ERROR_SHUTDOWN)),
        "{closed:?}"
    );
}

/// Whether `e` is the broker's shutdown close (`CONNECTION_CLOSE` with
/// `CONNECTION_ERROR_SHUTDOWN`).
fn is_shutdown_close(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::ApplicationClosed(c)
        if c.error_code.into_inner() == u64::from(CONNECTION_ERROR_SHUTDOWN))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_every_connection_is_closed_with_the_shutdown_code() {
    const GRACE: Duration = Duration::from_millis(200);
    let h = Harness::start();
    // A fetch answer far larger than the client's stream window (quinn's default is
    // 1.25 MB), so a client that does not read it leaves it unacknowledged.
    let big = batch_of(8 << 20);
    let sdk = h.client().await;
    sdk.produce("big", 0, &big, Acks::All, 5_000).await.unwrap();

    // Connection 1: a request its handler never finishes (still running at the grace).
    let stuck = h.raw().await;
    let (mut stuck_send, mut stuck_recv) = stuck.open_bi().await.unwrap();
    let produce = Request::Produce {
        topic: STUCK_TOPIC.into(),
        partition: 0,
        acks: Acks::All,
        timeout_ms: 60_000,
    };
    stuck_send
        .write_all(&frame(1, &produce, &batch_of(100)))
        .await
        .unwrap();
    stuck_send.finish().unwrap();
    // Connection 2: a request answered, but its answer never read, so never acknowledged.
    let unread = h.raw().await;
    let (mut unread_send, mut unread_recv) = unread.open_bi().await.unwrap();
    let fetch = Request::Fetch {
        topic: "big".into(),
        partition: 0,
        offset: 0,
        max_bytes: 16 << 20,
        max_wait_ms: 0,
    };
    unread_send.write_all(&frame(2, &fetch, &[])).await.unwrap();
    unread_send.finish().unwrap();
    // Connection 3: idle.
    let idle = h.raw().await;
    // Both requests reached the service (the produce is being handled, the fetch answered).
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.broker.handling.load(std::sync::atomic::Ordering::SeqCst) < 1
        || h.broker.handled.load(std::sync::atomic::Ordering::SeqCst) < 2
    {
        assert!(
            Instant::now() < deadline,
            "the requests never reached the service"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The fetch's answer is being written: its frame's length prefix has arrived, and it
    // is the big answer. (The counts above are not enough: the SDK's own requests count
    // as handled too, and a fetch not yet dispatched when the drain starts is refused
    // with a stream reset, leaving nothing unacknowledged.)
    let mut prefix = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), unread_recv.read_exact(&mut prefix))
        .await
        .expect("the fetch answer never started")
        .unwrap();
    let answer_len = u32::from_le_bytes(prefix) as usize;
    assert!(answer_len > big.len(), "{answer_len}");

    let started = Instant::now();
    let report = h.gateway.shutdown(GRACE).await;
    let took = started.elapsed();
    assert!(!report.drained_within_grace, "{report:?}");
    // The interrupted produce's answer was acknowledged; the unread fetch answer was not.
    assert_eq!(report.unacknowledged, 1, "{report:?}");
    // The grace, then the wait for acknowledgements, then the close.
    assert!(
        took >= GRACE + sluice_gateway::SHUTDOWN_ACK_WAIT
            && took < GRACE + sluice_gateway::SHUTDOWN_ACK_WAIT + Duration::from_secs(3),
        "{took:?}"
    );

    // The stuck request was answered `Interrupted` (a write: indeterminate) before the
    // close; every connection then closed with CONNECTION_ERROR_SHUTDOWN, none silently.
    match read_answer(&mut stuck_recv).await {
        RawAnswer::Response(header, Response::Produce(Err(e))) => {
            assert_eq!(header.request_id, 1);
            assert_eq!(e.code, ErrorCode::Interrupted, "{e:?}");
        }
        other => panic!("expected Interrupted, got {other:?}"),
    }
    for (name, conn) in [("stuck", &stuck), ("unread", &unread), ("idle", &idle)] {
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .unwrap_or_else(|_| panic!("{name}: the connection was not closed"));
        assert!(is_shutdown_close(&closed), "{name}: {closed:?}");
    }
    // The answer still in flight when the connection closed is cut off by that close.
    let mut got = prefix.len();
    let mut buf = vec![0u8; 64 << 10];
    let cut = loop {
        match unread_recv.read(&mut buf).await {
            Ok(Some(n)) => got += n,
            Ok(None) => panic!("the whole answer arrived ({got} bytes)"),
            Err(quinn::ReadError::ConnectionLost(e)) => break e,
            Err(e) => panic!("{e}"),
        }
    };
    assert!(is_shutdown_close(&cut), "{cut:?}");
    assert!(got < big.len(), "{got}");
}
