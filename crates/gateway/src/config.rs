//! Gateway configuration: every limit named, with its unit last, and checked at bind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sluice_proto::wire::{FrameLimits, FRAME_LEN_BYTES};
use sluice_proto::Limits;

use crate::error::GatewayError;

/// Where the server's certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files: the certificate chain (leaf first) and its private key (PKCS#8, PKCS#1
    /// or SEC1).
    Files { cert_pem: PathBuf, key_pem: PathBuf },
    /// Development mode: reuse `dir/ca.pem`, `dir/server.pem` and `dir/server.key` when all
    /// three exist, otherwise generate a self-signed CA and a `localhost` certificate
    /// signed by it there (see [`ensure_dev_certificates`](crate::ensure_dev_certificates)).
    /// Clients trust [`dev_ca_path`](crate::dev_ca_path)`(dir)`.
    Dev { dir: PathBuf },
}

/// Default for [`GatewayConfig::in_flight_per_connection_max`].
pub const IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT: u32 = 256;
/// Default for [`GatewayConfig::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: u32 = 1024;
/// Default for [`GatewayConfig::request_bytes_per_connection_max`]: two maximal frames.
pub const REQUEST_BYTES_PER_CONNECTION_MAX_DEFAULT: u64 = 64 << 20;
/// Default for [`GatewayConfig::request_bytes_max`].
pub const REQUEST_BYTES_MAX_DEFAULT: u64 = 1 << 30;
/// Default for [`GatewayConfig::stream_read_timeout`].
pub const STREAM_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default for [`GatewayConfig::stream_write_timeout`].
pub const STREAM_WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default for [`GatewayConfig::handshake_timeout`].
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default for [`GatewayConfig::idle_timeout`].
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default for [`GatewayConfig::malformed_streams_per_connection_max`].
pub const MALFORMED_STREAMS_PER_CONNECTION_MAX_DEFAULT: u32 = 32;

/// The longest idle timeout QUIC can carry (2^62 - 1 ms; quinn takes it as a `VarInt`).
const IDLE_TIMEOUT_MS_MAX: u128 = (1 << 62) - 1;

/// How a [`Gateway`](crate::Gateway) listens and what it tolerates. Build with
/// [`GatewayConfig::new`], which sets every limit to its `*_DEFAULT`, then adjust fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// UDP address of the QUIC listener (port 0 picks a free one; see
    /// [`Gateway::local_addr`](crate::Gateway::local_addr)).
    pub listen: SocketAddr,
    pub tls: TlsSource,
    /// Bounds on every frame read from a client and written to one.
    pub frame_limits: FrameLimits,
    /// Most requests one connection may have open at once: QUIC's
    /// `max_concurrent_bidi_streams`, so a client cannot even open more streams. Default 256.
    pub in_flight_per_connection_max: u32,
    /// Most connections at once; beyond it new connections are refused. Default 1024.
    pub connections_max: u32,
    /// Most request-frame bytes one connection may have claimed (by their length prefixes)
    /// and not yet released: a stream whose frame does not fit waits, which pushes back on
    /// the client through QUIC flow control. Must hold a maximal frame. Default 64 MiB.
    pub request_bytes_per_connection_max: u64,
    /// The same bound over all connections. Default 1 GiB.
    pub request_bytes_max: u64,
    /// A request frame must arrive whole (and the stream be finished) this soon after the
    /// stream opens, else the stream is reset with `STREAM_ERROR_TIMEOUT`. Default 10 s.
    pub stream_read_timeout: Duration,
    /// A response must be written and acknowledged this soon after it is ready, else the
    /// stream is reset with `STREAM_ERROR_TIMEOUT`. Default 30 s.
    pub stream_write_timeout: Duration,
    /// The TLS handshake must complete this soon after the first packet. Default 10 s.
    pub handshake_timeout: Duration,
    /// A connection with no traffic for this long is closed (clients send keep-alives).
    /// Default 30 s.
    pub idle_timeout: Duration,
    /// A connection that sends this many streams that cannot be framed (a bad length
    /// prefix, a truncated frame, trailing bytes, an undecodable header) is closed with
    /// `CONNECTION_ERROR_PROTOCOL`. Default 32.
    pub malformed_streams_per_connection_max: u32,
}

impl GatewayConfig {
    /// A config listening on `listen` with `tls` and every limit at its default.
    pub fn new(listen: SocketAddr, tls: TlsSource) -> GatewayConfig {
        GatewayConfig {
            listen,
            tls,
            frame_limits: FrameLimits::DEFAULT,
            in_flight_per_connection_max: IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            request_bytes_per_connection_max: REQUEST_BYTES_PER_CONNECTION_MAX_DEFAULT,
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            stream_read_timeout: STREAM_READ_TIMEOUT_DEFAULT,
            stream_write_timeout: STREAM_WRITE_TIMEOUT_DEFAULT,
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            malformed_streams_per_connection_max: MALFORMED_STREAMS_PER_CONNECTION_MAX_DEFAULT,
        }
    }

    /// Checks the values and the relations between them (done by `Gateway::bind`).
    pub fn check(&self) -> Result<(), GatewayError> {
        let bad = |m: &str| Err(GatewayError::Config(m.to_owned()));
        if let Err(reason) = self.frame_limits.check(&Limits::DEFAULT) {
            return Err(GatewayError::Config(format!("frame_limits: {reason}")));
        }
        if self.in_flight_per_connection_max == 0 {
            return bad("in_flight_per_connection_max must be positive");
        }
        if self.connections_max == 0 {
            return bad("connections_max must be positive");
        }
        if self.malformed_streams_per_connection_max == 0 {
            return bad("malformed_streams_per_connection_max must be positive");
        }
        // A stream claims its whole frame (without the prefix) before reading it, so each
        // budget must hold one maximal frame or such a frame would wait forever.
        let frame_max = u64::from(self.frame_limits.frame_bytes_max);
        if self.request_bytes_per_connection_max < frame_max {
            return bad("request_bytes_per_connection_max must hold frame_bytes_max");
        }
        if self.request_bytes_max < self.request_bytes_per_connection_max {
            return bad("request_bytes_max must hold request_bytes_per_connection_max");
        }
        // Budgets are tokio semaphores (at most usize::MAX >> 3 permits).
        if self.request_bytes_max > (u64::MAX >> 3)
            || usize::try_from(self.request_bytes_max).is_err()
        {
            return bad("request_bytes_max is too large");
        }
        for (name, d) in [
            ("stream_read_timeout", self.stream_read_timeout),
            ("stream_write_timeout", self.stream_write_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(GatewayError::Config(format!("{name} must be positive")));
            }
        }
        if self.idle_timeout.as_millis() > IDLE_TIMEOUT_MS_MAX {
            return bad("idle_timeout is too large");
        }
        Ok(())
    }
}

// A frame's length prefix is a u32 and frames are claimed whole from the budgets.
const _: () = assert!(FRAME_LEN_BYTES == 4);
const _: () = assert!(
    REQUEST_BYTES_PER_CONNECTION_MAX_DEFAULT >= FrameLimits::DEFAULT.frame_bytes_max as u64
);
const _: () = assert!(REQUEST_BYTES_MAX_DEFAULT >= REQUEST_BYTES_PER_CONNECTION_MAX_DEFAULT);
