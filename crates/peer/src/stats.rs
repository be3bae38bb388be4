//! Counters: per peer (outbound and inbound) and for the whole endpoint, as plain atomics,
//! read out as [`PeerStatus`] and [`LinkStats`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One configured peer, as [`PeerLinks::status`](crate::PeerLinks::status) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's node id.
    pub node_id: u64,
    /// The address dialled.
    pub addr: SocketAddr,
    /// Our outbound connection to the peer is up (everything we send it goes there).
    pub connected: bool,
    /// An inbound connection from the peer is open (it reached us and proved who it is).
    pub inbound_connected: bool,
    /// Milliseconds since we last received anything (a hello, a frame, a forward
    /// request) from the peer on an inbound connection; `None`: never.
    pub last_heard_ms: Option<u64>,
    /// Frames waiting in the peer's queue now.
    pub queued_frames: usize,
    /// Frames written to the peer (handed to QUIC; delivery is not acknowledged).
    pub sent_frames: u64,
    /// Payload bytes of those frames.
    pub sent_bytes: u64,
    /// Frames dropped: queue full, too large, or lost with a stream or connection that
    /// failed while they were being written.
    pub dropped_frames: u64,
    /// Outbound connections established after the first one.
    pub reconnects: u64,
    /// Frames received from the peer.
    pub received_frames: u64,
    /// Payload bytes of those frames.
    pub received_bytes: u64,
}

/// Endpoint-wide counters, from [`PeerLinks::stats`](crate::PeerLinks::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Inbound connections whose TLS handshake failed (among them: a client certificate
    /// not signed by the cluster CA) or timed out.
    pub handshakes_failed: u64,
    /// Inbound connections closed with `CONNECTION_ERROR_IDENTITY`: no or a malformed
    /// hello, a certificate that does not name the claimed node, or our own id claimed.
    pub identity_refused: u64,
    /// Inbound connections refused because `INBOUND_CONNECTIONS_MAX` were open.
    pub inbound_refused: u64,
    /// Inbound streams stopped for bad input: a length over the limit, a truncated frame,
    /// a stall.
    pub malformed_streams: u64,
    /// Frames [`PeerLinks::send`](crate::PeerLinks::send) dropped because no such peer is
    /// configured.
    pub dropped_unknown_peer: u64,
    /// Forward requests handed to the handler.
    pub forwards_served: u64,
}

#[derive(Debug, Default)]
pub(crate) struct LinkCounters {
    pub(crate) handshakes_failed: AtomicU64,
    pub(crate) identity_refused: AtomicU64,
    pub(crate) inbound_refused: AtomicU64,
    pub(crate) malformed_streams: AtomicU64,
    pub(crate) dropped_unknown_peer: AtomicU64,
    pub(crate) forwards_served: AtomicU64,
}

impl LinkCounters {
    pub(crate) fn snapshot(&self) -> LinkStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LinkStats {
            handshakes_failed: get(&self.handshakes_failed),
            identity_refused: get(&self.identity_refused),
            inbound_refused: get(&self.inbound_refused),
            malformed_streams: get(&self.malformed_streams),
            dropped_unknown_peer: get(&self.dropped_unknown_peer),
            forwards_served: get(&self.forwards_served),
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What we sent one peer.
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    pub(crate) sent_frames: AtomicU64,
    pub(crate) sent_bytes: AtomicU64,
    pub(crate) dropped_frames: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

impl Outbound {
    pub(crate) fn sent(&self, frames: usize, bytes: usize) {
        self.sent_frames.fetch_add(frames as u64, Ordering::Relaxed);
        self.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self, frames: usize) {
        self.dropped_frames
            .fetch_add(frames as u64, Ordering::Relaxed);
    }
}

/// What we heard from one node, over any of its inbound connections.
#[derive(Debug)]
pub(crate) struct Inbound {
    epoch: Instant,
    /// Milliseconds after `epoch` plus one; 0: never.
    last_heard: AtomicU64,
    received_frames: AtomicU64,
    received_bytes: AtomicU64,
    open: AtomicU32,
}

impl Inbound {
    pub(crate) fn new(epoch: Instant) -> Inbound {
        Inbound {
            epoch,
            last_heard: AtomicU64::new(0),
            received_frames: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            open: AtomicU32::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Something arrived.
    pub(crate) fn heard(&self) {
        self.last_heard
            .fetch_max(self.now_ms().saturating_add(1), Ordering::Relaxed);
    }

    /// A frame of `bytes` arrived.
    pub(crate) fn frame(&self, bytes: usize) {
        self.heard();
        self.received_frames.fetch_add(1, Ordering::Relaxed);
        self.received_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts an open inbound connection until the guard drops.
    pub(crate) fn open(self: &Arc<Self>) -> OpenInbound {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenInbound(Arc::clone(self))
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn last_heard_ms(&self) -> Option<u64> {
        match self.last_heard.load(Ordering::Relaxed) {
            0 => None,
            at => Some(self.now_ms().saturating_sub(at - 1)),
        }
    }

    pub(crate) fn received(&self) -> (u64, u64) {
        (
            self.received_frames.load(Ordering::Relaxed),
            self.received_bytes.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug)]
pub(crate) struct OpenInbound(Arc<Inbound>);

impl Drop for OpenInbound {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
