//! The gateway's own failures: configuration, TLS material and binding. Request-level
//! failures never surface here; they are answered on the wire.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A `GatewayConfig` value breaks a rule (the message names it).
    #[error("invalid gateway config: {0}")]
    Config(String),
    /// Reading or writing certificate and key files.
    #[error("TLS file {}: {source}", path.display())]
    TlsFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Certificates or key that do not parse, do not match, or cannot be generated.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// No tokio runtime, or the UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}
