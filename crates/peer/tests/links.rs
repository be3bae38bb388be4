//! Peer links over real loopback sockets. Every wait is bounded (`common::WAIT`).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    fast_config, framed, hello, init_tracing, raw_client, tls_for, wait_until, write_uni, Node,
    WAIT,
};
use sluice_peer::{
    node_server_name, ClusterCa, ForwardError, PeerLinks, SendError, CONNECTION_ERROR_IDENTITY,
};

fn frame(from: u64, to: u64, seq: u32) -> Bytes {
    Bytes::from(format!("{from}->{to}#{seq}"))
}

fn start_cluster(ca: &ClusterCa, ids: &[u64]) -> Vec<Node> {
    let nodes: Vec<Node> = ids
        .iter()
        .map(|&id| Node::start(fast_config(id, tls_for(ca, id))))
        .collect();
    for node in &nodes {
        for other in &nodes {
            // Our own id is ignored by set_peer.
            node.links.set_peer(other.links.node_id(), other.addr());
        }
    }
    nodes
}

async fn wait_connected(nodes: &[Node]) {
    let all_up = || {
        nodes.iter().all(|node| {
            let status = node.links.status();
            status.len() == nodes.len() - 1 && status.iter().all(|s| s.connected)
        })
    };
    assert!(wait_until(all_up).await, "links did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_frames_in_order() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let nodes = start_cluster(&ca, &[1, 2, 3]);
    wait_connected(&nodes).await;

    const N: u32 = 300;
    for seq in 0..N {
        for node in &nodes {
            for other in &nodes {
                let (from, to) = (node.links.node_id(), other.links.node_id());
                if from != to {
                    node.links.send(to, frame(from, to, seq)).unwrap();
                }
            }
        }
        // Let the pumps run between rounds, so frames go out in many batches.
        if seq % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let expected = 2 * N as usize;
    assert!(
        wait_until(|| nodes.iter().all(|n| n.recorder.total() == expected)).await,
        "not every frame arrived: {:?}",
        nodes.iter().map(|n| n.recorder.total()).collect::<Vec<_>>()
    );
    for node in &nodes {
        let to = node.links.node_id();
        for other in &nodes {
            let from = other.links.node_id();
            if from == to {
                continue;
            }
            let got = node.recorder.frames_from(from);
            let want: Vec<Bytes> = (0..N).map(|seq| frame(from, to, seq)).collect();
            assert_eq!(got, want, "frames {from} -> {to} out of order or missing");
        }
    }
    for node in &nodes {
        for status in node.links.status() {
            assert!(status.connected);
            assert_eq!(status.sent_frames, u64::from(N), "{status:?}");
            assert_eq!(status.dropped_frames, 0, "{status:?}");
            assert_eq!(status.received_frames, u64::from(N), "{status:?}");
            assert_eq!(status.queued_frames, 0, "{status:?}");
            let payload: u64 = (0..N)
                .map(|seq| frame(status.node_id, node.links.node_id(), seq).len() as u64)
                .sum();
            assert_eq!(status.received_bytes, payload, "{status:?}");
            assert!(status.inbound_connected, "{status:?}");
            assert!(
                status.last_heard_ms.is_some_and(|ms| ms < 5_000),
                "{status:?}"
            );
        }
        assert_eq!(node.links.stats().malformed_streams, 0);
    }
    for node in &nodes {
        node.links.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_round_trip_and_errors() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let nodes = start_cluster(&ca, &[1, 2]);
    wait_connected(&nodes).await;
    let links = &nodes[0].links;

    let answer = links
        .forward(2, Bytes::from_static(b"hello"), WAIT)
        .await
        .unwrap();
    assert_eq!(answer, Bytes::from_static(b"node 2 answers 1: hello"));
    let big = Bytes::from(vec![7u8; 3 << 20]);
    let answer = links.forward(2, big.clone(), WAIT).await.unwrap();
    assert!(answer.starts_with(b"node 2 answers 1: ") && answer.ends_with(&big));
    let back = nodes[1]
        .links
        .forward(1, Bytes::from_static(b"x"), WAIT)
        .await
        .unwrap();
    assert_eq!(back, Bytes::from_static(b"node 1 answers 2: x"));

    // Unknown peer, and a configured peer that is down: errors at once.
    let started = Instant::now();
    assert_eq!(
        links.forward(9, Bytes::from_static(b"x"), WAIT).await,
        Err(ForwardError::UnknownPeer(9))
    );
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    links.set_peer(4, silent.local_addr().unwrap());
    assert_eq!(
        links.forward(4, Bytes::from_static(b"x"), WAIT).await,
        Err(ForwardError::NotConnected(4))
    );
    assert!(started.elapsed() < Duration::from_millis(500));

    // A handler slower than the timeout.
    let started = Instant::now();
    assert_eq!(
        links
            .forward(2, Bytes::from_static(b"slow"), Duration::from_millis(200))
            .await,
        Err(ForwardError::TimedOut(Duration::from_millis(200)))
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // A handler that panics: the answer stream is reset, never read as an empty answer.
    assert!(matches!(
        links.forward(2, Bytes::from_static(b"panic"), WAIT).await,
        Err(ForwardError::Closed(_))
    ));

    // Over the limit: refused before anything is sent.
    let max = sluice_peer::FRAME_BYTES_MAX_DEFAULT;
    let huge = Bytes::from(vec![0u8; max + 1]);
    assert_eq!(
        links.forward(2, huge, WAIT).await,
        Err(ForwardError::TooLarge {
            bytes: max + 1,
            max
        })
    );
    assert_eq!(nodes[1].links.stats().forwards_served, 4);
    for node in &nodes {
        node.links.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_cannot_connect() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let other_ca = ClusterCa::generate("other").unwrap();
    let node1 = Node::start(fast_config(1, tls_for(&ca, 1)));
    // The intruder trusts both CAs, so its side of the handshake succeeds: the refusal is
    // node 1's verification of its client certificate.
    let mut intruder_tls = tls_for(&other_ca, 2);
    intruder_tls.ca_pem = format!("{}{}", ca.cert_pem(), other_ca.cert_pem()).into_bytes();
    let intruder = Node::start(fast_config(2, intruder_tls));
    intruder.links.set_peer(1, node1.addr());
    node1.links.set_peer(2, intruder.addr());

    let deadline = Instant::now() + Duration::from_secs(1);
    let mut seq = 0;
    while Instant::now() < deadline {
        let _ = intruder.links.send(1, frame(2, 1, seq));
        // Refused links never count as up.
        assert!(!intruder.connected_to(1));
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(wait_until(|| node1.links.stats().handshakes_failed >= 1).await);
    assert_eq!(
        node1.recorder.total(),
        0,
        "a frame from the intruder arrived"
    );
    // Node 1 cannot verify the intruder's server certificate either.
    assert!(!node1.connected_to(2));
    let status = node1.links.status();
    assert_eq!(status[0].last_heard_ms, None);
    assert_eq!(status[0].received_frames, 0);
    intruder.links.shutdown().await;
    node1.links.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claiming_another_identity_is_refused() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let node1 = Node::start(fast_config(1, tls_for(&ca, 1)));
    // A valid certificate for node 2, configured as node 3.
    let imposter = Node::start(fast_config(3, tls_for(&ca, 2)));
    imposter.links.set_peer(1, node1.addr());
    // A valid certificate for node 1 claiming node 1: our own id.
    let (endpoint, client) = raw_client(&tls_for(&ca, 1));
    let conn = endpoint
        .connect_with(client, node1.addr(), &node_server_name(1))
        .unwrap()
        .await
        .unwrap();
    assert!(!hello(&conn, &1u64.to_le_bytes()).await);
    write_uni(&conn, &framed(b"from a twin")).await;

    let deadline = Instant::now() + Duration::from_millis(500);
    let mut seq = 0;
    while Instant::now() < deadline {
        let _ = imposter.links.send(1, frame(3, 1, seq));
        assert!(!imposter.connected_to(1));
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(wait_until(|| node1.links.stats().identity_refused >= 2).await);
    let closed = tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(CONNECTION_ERROR_IDENTITY)
            );
        }
        other => panic!("closed with {other}"),
    }
    assert_eq!(
        node1.recorder.total(),
        0,
        "a frame from an imposter arrived"
    );
    endpoint.close(0u32.into(), b"");
    for node in [imposter, node1] {
        node.links.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_redialled() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let node1 = Node::start(fast_config(1, tls_for(&ca, 1)));
    let node2 = Node::start(fast_config(2, tls_for(&ca, 2)));
    let addr2 = node2.addr();
    node1.links.set_peer(2, addr2);
    assert!(wait_until(|| node1.connected_to(2)).await);
    node1.links.send(2, Bytes::from_static(b"before")).unwrap();
    assert!(wait_until(|| node2.recorder.total() == 1).await);

    node2.links.shutdown().await;
    drop(node2);
    assert!(wait_until(|| !node1.connected_to(2)).await);
    // Queued while the peer is down: delivered after it is back.
    node1
        .links
        .send(2, Bytes::from_static(b"while down"))
        .unwrap();

    // The old socket may take a moment to be released.
    let deadline = Instant::now() + WAIT;
    let node2 = loop {
        let mut config = fast_config(2, tls_for(&ca, 2));
        config.listen = addr2;
        let recorder = common::Recorder::new(2);
        match PeerLinks::start(config, recorder.clone()) {
            Ok(links) => break Node { links, recorder },
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%e, "rebinding");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {addr2}: {e}"),
        }
    };
    assert!(wait_until(|| node1.connected_to(2)).await);
    node1.links.send(2, Bytes::from_static(b"after")).unwrap();
    assert!(wait_until(|| node2.recorder.total() == 2).await);
    assert_eq!(
        node2.recorder.frames_from(1),
        vec![
            Bytes::from_static(b"while down"),
            Bytes::from_static(b"after")
        ]
    );
    let status = &node1.links.status()[0];
    assert!(status.connected);
    assert!(status.reconnects >= 1, "{status:?}");
    assert_eq!(status.sent_frames, 3, "{status:?}");
    node1.links.shutdown().await;
    node2.links.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let mut config = fast_config(1, tls_for(&ca, 1));
    config.queue_frames = 8;
    let node1 = Node::start(config);
    // A socket that never answers stands in for a peer that is down.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr2 = silent.local_addr().unwrap();
    node1.links.set_peer(2, addr2);

    for seq in 0..8 {
        node1.links.send(2, frame(1, 2, seq)).unwrap();
    }
    for seq in 8..13 {
        assert_eq!(
            node1.links.send(2, frame(1, 2, seq)),
            Err(SendError::QueueFull(2))
        );
    }
    assert_eq!(
        node1.links.send(7, Bytes::from_static(b"x")),
        Err(SendError::UnknownPeer(7))
    );
    let status = &node1.links.status()[0];
    assert!(!status.connected);
    assert_eq!(status.queued_frames, 8);
    assert_eq!(status.dropped_frames, 5);
    assert_eq!(status.sent_frames, 0);
    assert_eq!(node1.links.stats().dropped_unknown_peer, 1);

    // The peer comes up where the silent socket was: the queued frames go out.
    drop(silent);
    let mut config = fast_config(2, tls_for(&ca, 2));
    config.listen = addr2;
    let node2 = Node::start(config);
    assert!(wait_until(|| node2.recorder.total() == 8).await);
    let want: Vec<Bytes> = (0..8).map(|seq| frame(1, 2, seq)).collect();
    assert_eq!(node2.recorder.frames_from(1), want);
    node1.links.shutdown().await;
    node2.links.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_valid_certificate_costs_only_its_streams() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let mut config = fast_config(1, tls_for(&ca, 1));
    config.frame_bytes_max = 1024;
    config.stream_stall_timeout = Duration::from_millis(300);
    let node1 = Node::start(config);
    let addr1 = node1.addr();
    let (endpoint, client) = raw_client(&tls_for(&ca, 2));
    let conn = endpoint
        .connect_with(client.clone(), addr1, &node_server_name(1))
        .unwrap()
        .await
        .unwrap();
    assert!(hello(&conn, &2u64.to_le_bytes()).await);
    // A good frame, then garbage on the same stream: the good one is delivered.
    let mut mixed = framed(b"first");
    mixed.extend_from_slice(&u32::MAX.to_le_bytes());
    write_uni(&conn, &mixed).await;
    // A length over the limit.
    write_uni(&conn, &framed(&[1u8; 1025])).await;
    // A frame cut short, and a length prefix cut short.
    let mut short = framed(&[2u8; 100]);
    short.truncate(40);
    write_uni(&conn, &short).await;
    write_uni(&conn, &[9, 9, 9]).await;
    // A stream that stalls mid-frame.
    let mut stalled = conn.open_uni().await.unwrap();
    stalled
        .write_all(&framed(b"never finished")[..6])
        .await
        .unwrap();
    // A forward request over the limit.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(&[3u8; 2000]).await;
    let _ = send.finish();
    assert!(
        tokio::time::timeout(WAIT, recv.read_to_end(4096))
            .await
            .unwrap()
            .is_err(),
        "an over-limit forward got an answer"
    );
    // After all that, the same connection still delivers.
    write_uni(&conn, &framed(b"still here")).await;
    assert!(wait_until(|| node1.recorder.total() == 2).await);
    assert_eq!(
        node1.recorder.frames_from(2),
        vec![
            Bytes::from_static(b"first"),
            Bytes::from_static(b"still here")
        ]
    );
    assert!(wait_until(|| node1.links.stats().malformed_streams >= 6).await);
    assert_eq!(node1.links.stats().malformed_streams, 6);
    drop(stalled);

    // A malformed hello costs the connection.
    let bad = endpoint
        .connect_with(client, addr1, &node_server_name(1))
        .unwrap()
        .await
        .unwrap();
    assert!(!hello(&bad, &[1, 2, 3]).await);
    let closed = tokio::time::timeout(WAIT, bad.closed()).await.unwrap();
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(c)
        if c.error_code == quinn::VarInt::from_u32(CONNECTION_ERROR_IDENTITY))
    );

    // A well-behaved peer still gets through, and forwards work.
    let node3 = Node::start(fast_config(3, tls_for(&ca, 3)));
    node3.links.set_peer(1, addr1);
    assert!(wait_until(|| node3.connected_to(1)).await);
    node3
        .links
        .send(1, Bytes::from_static(b"hello from 3"))
        .unwrap();
    assert!(wait_until(|| node1.recorder.frames_from(3).len() == 1).await);
    let answer = node3
        .links
        .forward(1, Bytes::from_static(b"q"), WAIT)
        .await
        .unwrap();
    assert_eq!(answer, Bytes::from_static(b"node 1 answers 3: q"));
    assert_eq!(node1.links.stats().identity_refused, 1);
    endpoint.close(0u32.into(), b"");
    node3.links.shutdown().await;
    node1.links.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_and_removing_a_peer() {
    init_tracing();
    let ca = ClusterCa::generate("test").unwrap();
    let node1 = Node::start(fast_config(1, tls_for(&ca, 1)));
    let node2 = Node::start(fast_config(2, tls_for(&ca, 2)));
    // First configured at an address where nothing answers (the dial would hang until
    // `idle_timeout`), then moved: the dial to the new address starts at once.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    node1.links.set_peer(2, silent.local_addr().unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let moved = Instant::now();
    node1.links.set_peer(2, node2.addr());
    assert!(wait_until(|| node1.connected_to(2)).await);
    assert!(
        moved.elapsed() < Duration::from_secs(1),
        "{:?}",
        moved.elapsed()
    );
    assert_eq!(node1.links.status()[0].addr, node2.addr());
    node1.links.send(2, Bytes::from_static(b"x")).unwrap();
    assert!(wait_until(|| node2.recorder.total() == 1).await);

    // Node 2 reports the inbound connection from node 1 (for configured peers).
    node2.links.set_peer(1, node1.addr());
    let inbound_from_1 = || node2.links.status()[0].inbound_connected;
    assert!(wait_until(|| inbound_from_1() && node2.connected_to(1)).await);

    node1.links.remove_peer(2);
    assert!(node1.links.status().is_empty());
    assert_eq!(
        node1.links.send(2, Bytes::from_static(b"y")),
        Err(SendError::UnknownPeer(2))
    );
    // Our connection to node 2 is closed; its link to us is unaffected.
    assert!(wait_until(|| !inbound_from_1()).await);
    assert!(node2.connected_to(1));
    node1.links.shutdown().await;
    node2.links.shutdown().await;
}
