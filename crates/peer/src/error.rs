//! The crate's typed errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Generating, loading or writing certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or failed to sign.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// PEM or DER that does not hold what it should (no certificate, a key that does not
    /// match the certificate, a CA certificate that is not a CA).
    #[error("{0}")]
    Invalid(String),
    /// `ca.pem` exists without `ca.key`: the CA's key is kept elsewhere, so no node
    /// certificate can be issued here (and generating a new CA would split the cluster).
    #[error("{}: ca.pem exists but ca.key does not; cannot issue node certificates", dir.display())]
    MissingCaKey { dir: PathBuf },
}

/// [`PeerLinks::start`](crate::PeerLinks::start) failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A [`PeerConfig`](crate::PeerConfig) value is out of range.
    #[error("peer config: {0}")]
    Config(String),
    /// The TLS material could not be turned into a TLS configuration.
    #[error("peer TLS: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// [`PeerLinks::send`](crate::PeerLinks::send) dropped the frame. Every variant counts as
/// a dropped frame; none of them blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No peer with that node id is configured.
    #[error("no peer {0} is configured")]
    UnknownPeer(u64),
    /// The peer's queue holds `queue_frames` frames already (the peer is down or slow).
    #[error("the queue to peer {0} is full")]
    QueueFull(u64),
    /// The frame is longer than `frame_bytes_max`.
    #[error("a frame of {bytes} bytes is over the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    /// The links are shutting down.
    #[error("peer links are shut down")]
    ShutDown,
}

/// [`PeerLinks::forward`](crate::PeerLinks::forward) got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// No peer with that node id is configured.
    #[error("no peer {0} is configured")]
    UnknownPeer(u64),
    /// There is no outbound connection to the peer right now (it is being dialled).
    #[error("not connected to peer {0}")]
    NotConnected(u64),
    /// No whole answer arrived within the timeout. The peer may have acted on the request.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The request is longer than `frame_bytes_max`; nothing was sent.
    #[error("a request of {bytes} bytes is over the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    /// The answer is longer than `frame_bytes_max` (the peer acted on the request).
    #[error("the answer is over the limit of {max} bytes")]
    AnswerTooLarge { max: usize },
    /// The connection was lost or the peer refused the stream. The peer may have acted on
    /// the request.
    #[error("peer link closed: {0}")]
    Closed(String),
}
