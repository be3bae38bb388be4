//! The dialer: one task per configured peer that keeps one outbound connection up and
//! writes the peer's queue to it.
//!
//! ```text
//! loop:  dial addr (TLS for node_server_name(peer), hello) ──fail──> backoff sleep ─┐
//!          │ ok                                                                     │
//!          ▼                                                                        │
//!        pump: take every queued frame → one uni stream → finish      ◄──────────────┘
//!          until the connection is lost or the address changes
//! ```
//!
//! The queue is read only while connected, so frames queued while the peer is down wait
//! (and `send` drops once it is full). A batch whose stream or connection fails while it
//! is written is dropped and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use quinn::{Connection, ConnectionError, VarInt, WriteError};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::certs::node_server_name;
use crate::links::{PeerState, Shared};
use crate::stats::bump;
use crate::wire::{encode_hello, frame_header, Outgoing, CONNECTION_ERROR_REDIAL};

#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("sending the hello: {0}")]
    Hello(#[from] WriteError),
    #[error("sending the hello: {0}")]
    HelloClosed(#[from] quinn::ClosedStream),
    #[error("the hello was not acknowledged: {0}")]
    HelloAnswer(quinn::ReadToEndError),
    #[error("not accepted within {0:?}")]
    TimedOut(std::time::Duration),
}

/// Why a connection's pump ended.
enum PumpEnd {
    Lost(ConnectionError),
    AddressChanged,
    QueueClosed,
}

/// The dialer task of `peer`. Runs until aborted (the peer is removed or the links shut
/// down).
pub(crate) async fn run(
    shared: Arc<Shared>,
    peer: Arc<PeerState>,
    mut queue: mpsc::Receiver<Bytes>,
    mut addr: watch::Receiver<SocketAddr>,
) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    let mut rng = SmallRng::from_os_rng();
    let mut connected_before = false;
    let mut failures = 0u64;
    loop {
        let target = *addr.borrow_and_update();
        // A new address abandons a dial to the old one (which may hang until the timeout).
        let dialled = tokio::select! {
            dialled = dial(&shared, peer.node_id, target) => dialled,
            changed = addr.changed() => {
                if changed.is_err() {
                    return;
                }
                backoff.reset();
                continue;
            }
        };
        match dialled {
            Ok(conn) => {
                if connected_before {
                    bump(&peer.outbound.reconnects);
                }
                connected_before = true;
                failures = 0;
                tracing::info!(peer = peer.node_id, addr = %target, "peer link up");
                peer.set_connection(Some(conn.clone()));
                let up_since = Instant::now();
                let end = pump(&shared, &peer, &conn, &mut queue, &mut addr).await;
                peer.set_connection(None);
                match end {
                    PumpEnd::Lost(reason) => {
                        tracing::info!(peer = peer.node_id, %reason, "peer link down");
                    }
                    PumpEnd::AddressChanged => {
                        conn.close(VarInt::from_u32(CONNECTION_ERROR_REDIAL), b"redial");
                        tracing::info!(peer = peer.node_id, "peer address changed, redialling");
                        backoff.reset();
                        continue;
                    }
                    PumpEnd::QueueClosed => return,
                }
                // A link that stayed up a while was healthy: start the backoff over. One
                // that dies at once (a peer refusing us) keeps backing off.
                if up_since.elapsed() >= config.reconnect_max {
                    backoff.reset();
                }
            }
            Err(error) => {
                failures += 1;
                // The first failure of a streak is news; the rest are the same story.
                if failures == 1 {
                    tracing::warn!(peer = peer.node_id, addr = %target, %error, "dialling peer failed; retrying");
                } else {
                    tracing::debug!(peer = peer.node_id, addr = %target, %error, failures, "dialling peer failed");
                }
            }
        }
        let delay = backoff.delay(&mut rng);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            changed = addr.changed() => if changed.is_err() { return },
        }
    }
}

/// One outbound connection to `peer_id` at `addr`, accepted by the peer: handshake, then
/// our hello and its (empty) answer, all within `idle_timeout`.
async fn dial(shared: &Shared, peer_id: u64, addr: SocketAddr) -> Result<Connection, DialError> {
    let timeout = shared.config.idle_timeout;
    tokio::time::timeout(timeout, dial_inner(shared, peer_id, addr))
        .await
        .map_err(|_| DialError::TimedOut(timeout))?
}

async fn dial_inner(
    shared: &Shared,
    peer_id: u64,
    addr: SocketAddr,
) -> Result<Connection, DialError> {
    let connecting = shared.endpoint.connect_with(
        shared.client_config.clone(),
        addr,
        &node_server_name(peer_id),
    )?;
    let conn = connecting.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&encode_hello(shared.config.node_id)).await?;
    send.finish()?;
    // The peer answers once it has checked our certificate and hello; a refusal closes
    // the connection. Until then our client certificate may still be refused, so the link
    // is not up.
    match recv.read_to_end(0).await {
        Ok(_) => Ok(conn),
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e))) => Err(e.into()),
        Err(e) => Err(DialError::HelloAnswer(e)),
    }
}

/// Writes `queue` to `conn` until the connection is lost or the address changes.
async fn pump(
    shared: &Shared,
    peer: &PeerState,
    conn: &Connection,
    queue: &mut mpsc::Receiver<Bytes>,
    addr: &mut watch::Receiver<SocketAddr>,
) -> PumpEnd {
    let limit = shared.config.queue_frames;
    let mut batch = Vec::with_capacity(limit.min(64));
    // One raft stream for the connection's life: frames follow each other on it, with
    // no stream to open (and no stream credit to wait for) per batch.
    let mut stream: Option<Outgoing> = None;
    loop {
        tokio::select! {
            reason = conn.closed() => return PumpEnd::Lost(reason),
            changed = addr.changed() => {
                return if changed.is_ok() { PumpEnd::AddressChanged } else { PumpEnd::QueueClosed };
            }
            taken = queue.recv_many(&mut batch, limit) => {
                if taken == 0 {
                    return PumpEnd::QueueClosed;
                }
            }
        }
        let frames = batch.len();
        let bytes = batch.iter().map(Bytes::len).sum();
        match write_batch(conn, &mut stream, &mut batch).await {
            Ok(()) => peer.outbound.sent(frames, bytes),
            Err(error) => {
                peer.outbound.dropped(frames);
                tracing::debug!(peer = peer.node_id, frames, %error, "batch lost");
                if let WriteError::ConnectionLost(reason) = error {
                    return PumpEnd::Lost(reason);
                }
            }
        }
        batch.clear();
    }
}

/// Writes `batch` as length-prefixed frames on the connection's raft stream (opened on
/// first use, and again after a failed write, which leaves it reset).
async fn write_batch(
    conn: &Connection,
    stream: &mut Option<Outgoing>,
    batch: &mut Vec<Bytes>,
) -> Result<(), WriteError> {
    let mut chunks = Vec::with_capacity(batch.len() * 2);
    for frame in batch.drain(..) {
        let len = u32::try_from(frame.len());
        // `send` refuses frames over `frame_bytes_max`, which `check` keeps within u32.
        assert!(len.is_ok(), "peer: a queued frame is longer than u32::MAX");
        chunks.push(Bytes::copy_from_slice(&frame_header(len.unwrap_or(0))));
        chunks.push(frame);
    }
    let send = match stream.take() {
        Some(send) => send,
        None => Outgoing::new(conn.open_uni().await?),
    };
    // A failed write drops (resets) the stream: the reader discards any frame it cut,
    // and the next batch opens a new one.
    *stream = Some(send.write(&mut chunks).await?);
    Ok(())
}
