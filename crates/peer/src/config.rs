//! [`PeerConfig`]: one node's peer-link settings and limits.

use std::net::SocketAddr;
use std::time::Duration;

use crate::certs::PeerTls;
use crate::error::PeerError;

/// Default [`PeerConfig::queue_frames`].
pub const QUEUE_FRAMES_DEFAULT: usize = 1024;
/// Default [`PeerConfig::frame_bytes_max`]: 64 MiB.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Default [`PeerConfig::reconnect_min`].
pub const RECONNECT_MIN_DEFAULT: Duration = Duration::from_millis(50);
/// Default [`PeerConfig::reconnect_max`].
pub const RECONNECT_MAX_DEFAULT: Duration = Duration::from_secs(2);
/// Default [`PeerConfig::keep_alive`].
pub const KEEP_ALIVE_DEFAULT: Duration = Duration::from_millis(500);
/// Default [`PeerConfig::idle_timeout`].
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);
/// Default [`PeerConfig::stream_stall_timeout`].
pub const STREAM_STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default [`PeerConfig::forward_in_flight_max`].
pub const FORWARD_IN_FLIGHT_MAX_DEFAULT: u32 = 64;

/// Frames are length-prefixed with a `u32`.
const _: () = assert!(FRAME_BYTES_MAX_DEFAULT as u64 <= u32::MAX as u64);
const _: () = assert!(KEEP_ALIVE_DEFAULT.as_nanos() < IDLE_TIMEOUT_DEFAULT.as_nanos());
const _: () = assert!(RECONNECT_MIN_DEFAULT.as_nanos() <= RECONNECT_MAX_DEFAULT.as_nanos());

/// One node's peer links. [`PeerConfig::new`] gives the `*_DEFAULT` limits.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// This node's id; dialled peers are told it, and inbound connections claiming it are
    /// refused.
    pub node_id: u64,
    /// The UDP address to listen on (port 0: any free port, see
    /// [`PeerLinks::local_addr`](crate::PeerLinks::local_addr)). Outbound connections
    /// leave from the same socket.
    pub listen: SocketAddr,
    /// The cluster CA and this node's certificate and key.
    pub tls: PeerTls,
    /// Frames queued per peer before [`PeerLinks::send`](crate::PeerLinks::send) drops.
    pub queue_frames: usize,
    /// The longest frame, forward request or forward answer, in bytes (at most
    /// `u32::MAX`). Checked before anything is allocated.
    pub frame_bytes_max: usize,
    /// The first delay before redialling a peer; doubles per failed attempt.
    pub reconnect_min: Duration,
    /// The longest delay between two dial attempts.
    pub reconnect_max: Duration,
    /// QUIC keep-alive interval; keeps idle links open and notices dead ones.
    pub keep_alive: Duration,
    /// QUIC idle timeout: a connection that hears nothing for this long is dead. Also
    /// bounds a handshake and the wait for a dialer's hello.
    pub idle_timeout: Duration,
    /// A stream that delivers no byte for this long is stopped (a frame that is being
    /// sent keeps arriving; one that stalls would hold up its sender's later frames).
    pub stream_stall_timeout: Duration,
    /// Forward requests one peer may have in flight towards this node (QUIC stream
    /// credit, so the dialer's own stack waits).
    pub forward_in_flight_max: u32,
}

impl PeerConfig {
    /// A config with the default limits.
    pub fn new(node_id: u64, listen: SocketAddr, tls: PeerTls) -> PeerConfig {
        PeerConfig {
            node_id,
            listen,
            tls,
            queue_frames: QUEUE_FRAMES_DEFAULT,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            reconnect_min: RECONNECT_MIN_DEFAULT,
            reconnect_max: RECONNECT_MAX_DEFAULT,
            keep_alive: KEEP_ALIVE_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            stream_stall_timeout: STREAM_STALL_TIMEOUT_DEFAULT,
            forward_in_flight_max: FORWARD_IN_FLIGHT_MAX_DEFAULT,
        }
    }

    /// Checks the limits and their relations.
    pub fn check(&self) -> Result<(), PeerError> {
        let bad = |what: &str| Err(PeerError::Config(what.to_owned()));
        if self.queue_frames == 0 {
            return bad("queue_frames must be at least 1");
        }
        if self.frame_bytes_max == 0 || u32::try_from(self.frame_bytes_max).is_err() {
            return bad("frame_bytes_max must be in 1..=u32::MAX");
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return bad("reconnect_min must be above zero and at most reconnect_max");
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return bad("keep_alive must be above zero and below idle_timeout");
        }
        if self.stream_stall_timeout.is_zero() {
            return bad("stream_stall_timeout must be above zero");
        }
        if self.forward_in_flight_max == 0 {
            return bad("forward_in_flight_max must be at least 1");
        }
        Ok(())
    }
}
