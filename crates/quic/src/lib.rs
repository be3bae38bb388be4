//! `sluice-quic`: the UDP and QUIC transport settings every Sluice endpoint shares (the
//! SDK's client endpoints, the gateway's listener, the peer links), so that they agree
//! on the packets they send and accept and are tuned alike. See the README.
//!
//! Call order for an endpoint: [`bind_udp`], then `quinn::Endpoint::new` with
//! [`endpoint_config`]; each connection's `TransportConfig` starts from
//! [`transport_config`], to which the caller adds its own limits and timeouts.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use quinn::{EndpointConfig, MtuDiscoveryConfig, TransportConfig};
use sluice_proto::{UDP_PAYLOAD_MAX, UDP_SOCKET_BUFFER_BYTES};

/// The congestion window a connection starts with: RFC 9002's recommendation,
/// `min(10 * max_datagram_size, max(2 * max_datagram_size, 14720))`, for datagrams of
/// [`UDP_PAYLOAD_MAX`]. quinn's default evaluates it for its 1200-byte base datagram
/// (12000 bytes), a window that one 6400-byte packet in flight plus the next one fill:
/// a new connection was then congestion-blocked behind a single path-MTU probe, and a
/// `CONNECTION_CLOSE` queued in that state was never sent (quinn-proto 0.11.19 gates it
/// like data, quinn-rs/quinn#2785), so the peer of a node shutting down learnt of it
/// only from its idle timeout.
pub const INITIAL_WINDOW_BYTES: u64 = 14_720;

const _: () = assert!(
    2 * UDP_PAYLOAD_MAX as u64 <= INITIAL_WINDOW_BYTES,
    "two full-size packets must fit the initial window"
);

/// The socket buffers the kernel granted (as `getsockopt` reports them: Linux doubles
/// what was asked, for its bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    pub recv_bytes: usize,
    pub send_bytes: usize,
    /// Whether the sizes were forced past `net.core.rmem_max` / `wmem_max` (the
    /// process may: `CAP_NET_ADMIN`).
    pub forced: bool,
}

/// A UDP socket bound to `addr`, with [`UDP_SOCKET_BUFFER_BYTES`] of buffer each way
/// asked for (see [`size_buffers`]).
pub fn bind_udp(addr: SocketAddr) -> io::Result<(UdpSocket, SocketBuffers)> {
    let socket = UdpSocket::bind(addr)?;
    let buffers = size_buffers(&socket, UDP_SOCKET_BUFFER_BYTES);
    Ok((socket, buffers))
}

/// Asks for `bytes` of receive and send buffer: first forced (`SO_RCVBUFFORCE`,
/// `SO_SNDBUFFORCE`: past the sysctl caps, for a process allowed to), else the plain
/// options, which the kernel caps at `net.core.rmem_max` / `wmem_max`. A smaller
/// buffer than asked only costs drops under bursts (each a QUIC loss recovery and a
/// congestion event), so nothing here fails; a cap is logged once per socket.
pub fn size_buffers(socket: &UdpSocket, bytes: usize) -> SocketBuffers {
    let forced = force_buffers(socket, bytes);
    let sock = socket2::SockRef::from(socket);
    if !forced {
        let _ = sock.set_recv_buffer_size(bytes);
        let _ = sock.set_send_buffer_size(bytes);
    }
    let granted = SocketBuffers {
        recv_bytes: sock.recv_buffer_size().unwrap_or(0),
        send_bytes: sock.send_buffer_size().unwrap_or(0),
        forced,
    };
    if granted.recv_bytes < bytes || granted.send_bytes < bytes {
        tracing::info!(
            asked = bytes,
            recv = granted.recv_bytes,
            send = granted.send_bytes,
            "UDP socket buffers capped by net.core.rmem_max / wmem_max; raise them to avoid \
             drops under bursts (docs/OPERATIONS.md)"
        );
    }
    granted
}

/// `SO_RCVBUFFORCE` and `SO_SNDBUFFORCE`; whether both took.
#[cfg(target_os = "linux")]
fn force_buffers(socket: &UdpSocket, bytes: usize) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(value) = libc::c_int::try_from(bytes) else {
        return false;
    };
    let set = |option: libc::c_int| {
        // SAFETY: `socket` is an open socket for the duration of the call; the option
        // value is a `c_int` that lives across it, passed with its exact size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    set(libc::SO_RCVBUFFORCE) && set(libc::SO_SNDBUFFORCE)
}

#[cfg(not(target_os = "linux"))]
fn force_buffers(_socket: &UdpSocket, _bytes: usize) -> bool {
    false
}

/// An `EndpointConfig` that accepts UDP payloads of up to [`UDP_PAYLOAD_MAX`].
pub fn endpoint_config() -> Result<EndpointConfig, quinn::ConfigError> {
    let mut config = EndpointConfig::default();
    config.max_udp_payload_size(UDP_PAYLOAD_MAX)?;
    Ok(config)
}

/// The transport settings every connection starts from: path MTU discovery up to
/// [`UDP_PAYLOAD_MAX`], Cubic from [`INITIAL_WINDOW_BYTES`]. quinn's defaults otherwise.
pub fn transport_config() -> TransportConfig {
    let mut transport = TransportConfig::default();
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(UDP_PAYLOAD_MAX);
    transport.mtu_discovery_config(Some(mtu));
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(INITIAL_WINDOW_BYTES);
    transport.congestion_controller_factory(std::sync::Arc::new(cubic));
    transport
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctl(name: &str) -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn buffers_are_what_was_asked_when_forced_and_the_caps_otherwise() {
        let (socket, granted) = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(socket.local_addr().unwrap().port() > 0);
        let asked = UDP_SOCKET_BUFFER_BYTES;
        if granted.forced {
            // Linux reports twice what it keeps for data.
            assert!(granted.recv_bytes >= asked, "{granted:?}");
            assert!(granted.send_bytes >= asked, "{granted:?}");
        } else if let (Some(rmem), Some(wmem)) = (sysctl("rmem_max"), sysctl("wmem_max")) {
            assert!(
                granted.recv_bytes >= asked.min(rmem),
                "{granted:?}, rmem_max {rmem}"
            );
            assert!(
                granted.send_bytes >= asked.min(wmem),
                "{granted:?}, wmem_max {wmem}"
            );
        }
        // Asking again for less shrinks them: the sizes are what was set, not a floor.
        let small = size_buffers(&socket, 64 << 10);
        assert!(
            small.recv_bytes < granted.recv_bytes,
            "{small:?} {granted:?}"
        );
    }

    #[test]
    fn quinn_takes_the_payload_bound() {
        // quinn refuses a maximum UDP payload outside 1200..=65527.
        assert!(endpoint_config().is_ok());
    }
}
