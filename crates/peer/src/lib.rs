//! Sluice's node-to-node peer links: QUIC between the nodes of a cluster, mutual TLS under
//! the cluster CA, ALPN `sluice-peer/1`. An edge crate (tokio + quinn + rustls with ring).
//!
//! The model:
//!
//! - **One outbound connection per peer, used for everything we send it.** Every node
//!   dials each configured peer ([`PeerLinks::set_peer`]) and keeps that one connection
//!   up, redialling with exponential backoff and jitter between `reconnect_min` and
//!   `reconnect_max`. The dialer verifies the peer's server certificate against the CA
//!   for [`node_server_name`]`(peer)`, so it knows whom it reached. Inbound connections
//!   are only for receiving: a node never opens a stream on a connection it accepted, so
//!   the two directions between two nodes are independent and "connected" means "our
//!   connection to it is up".
//! - **Identity on the accept side.** rustls requires a client certificate signed by the
//!   CA ([`rustls::server::WebPkiClientVerifier`]). The dialer's first stream (bi) is its
//!   hello (its node id, `u64` LE); the acceptor parses the verified client certificate
//!   and requires the DNS SAN `node-<claimed id>.sluice.internal`, and refuses its own id.
//!   It answers the hello (an empty stream) only then, and reads nothing else before;
//!   otherwise it closes the connection with [`CONNECTION_ERROR_IDENTITY`]. The dialer
//!   counts its link as up only once the answer arrives, so a peer that refuses us never
//!   shows as connected. A certificate from another CA fails the handshake.
//! - **Raft traffic: queued, coalesced, dropped rather than blocking.** [`PeerLinks::send`]
//!   never waits: each peer has a bounded queue of `queue_frames` frames; a full queue,
//!   an unknown peer or a frame over `frame_bytes_max` returns a [`SendError`] and counts
//!   a drop (Raft retransmits). The peer's task takes everything queued at once and
//!   writes it as length-prefixed frames (`u32` LE length, then the bytes) on the
//!   connection's one raft stream, a uni stream opened on first use and kept open (no
//!   stream to open, and no stream credit to wait for, per batch). While the connection
//!   is down the queue is not read: frames wait in it, and drop once it is full. A batch
//!   whose write fails is dropped and counted, and its stream reset; the next batch
//!   opens a new one.
//! - **Order.** The acceptor reads a connection's raft streams one after the other, in the
//!   order they were opened, so [`PeerHandler::raft`] sees one sender's frames in the
//!   order sent (minus drops). Between frames a stream may rest as long as the
//!   connection lives; a frame that stops arriving for `stream_stall_timeout` midway
//!   stops its stream, so a stuck stream holds up its own sender only briefly.
//! - **Forwards: one bidirectional stream per request.** [`PeerLinks::forward`] writes
//!   the request bytes (an already-encoded client frame), finishes, and reads the whole
//!   answer; the acceptor reads the request, awaits [`PeerHandler::forward`], writes the
//!   answer and finishes. Both sides bound the bytes by `frame_bytes_max`; the caller's
//!   timeout bounds the wait. Streams per connection are bounded by QUIC stream credit
//!   (`forward_in_flight_max`, and a few raft streams).
//! - **Bad input costs the sender its stream.** Lengths over the limit, truncated frames,
//!   stalls: the stream is stopped with a `STREAM_ERROR_*` code and counted
//!   ([`LinkStats::malformed_streams`]); the connection's other streams go on. Nothing
//!   read from the network can panic the node.
//! - **Liveness.** [`PeerLinks::status`] reports per peer whether our connection is up,
//!   how long ago we last heard from it on an inbound connection, and the counters.
//!   QUIC keep-alives (`keep_alive`) and the idle timeout (`idle_timeout`) notice a dead
//!   peer.
//!
//! Certificates: [`ClusterCa`] issues [`NodeCert`]s and [`write_cluster_certs`] lays out a
//! cluster's `ca.pem`, `ca.key`, `node-<id>.pem`, `node-<id>.key`; the same node
//! certificate serves the node's client-facing gateway.
//!
//! ```no_run
//! # async fn demo(handler: std::sync::Arc<dyn sluice_peer::PeerHandler>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use sluice_peer::{node_files, PeerConfig, PeerLinks, PeerTls};
//!
//! let (ca, cert, key) = node_files(Path::new("/etc/sluice/certs"), 1);
//! let tls = PeerTls::load(&ca, &cert, &key)?;
//! let links = PeerLinks::start(PeerConfig::new(1, "0.0.0.0:7100".parse()?, tls), handler)?;
//! links.set_peer(2, "10.0.0.2:7100".parse()?);
//! links.set_peer(3, "10.0.0.3:7100".parse()?);
//! let _ = links.send(2, bytes::Bytes::from_static(b"raft message"));
//! links.shutdown().await;
//! # Ok(()) }
//! ```

mod backoff;
pub mod certs;
mod config;
mod error;
mod inbound;
mod links;
mod outbound;
mod stats;
mod tls;
pub mod wire;

pub use certs::{node_files, node_server_name, write_cluster_certs, ClusterCa, NodeCert, PeerTls};
pub use config::{
    PeerConfig, FORWARD_IN_FLIGHT_MAX_DEFAULT, FRAME_BYTES_MAX_DEFAULT, IDLE_TIMEOUT_DEFAULT,
    KEEP_ALIVE_DEFAULT, QUEUE_FRAMES_DEFAULT, RECONNECT_MAX_DEFAULT, RECONNECT_MIN_DEFAULT,
    STREAM_STALL_TIMEOUT_DEFAULT,
};
pub use error::{CertError, ForwardError, PeerError, SendError};
pub use links::{PeerHandler, PeerLinks, INBOUND_CONNECTIONS_MAX, SHUTDOWN_WAIT};
pub use stats::{LinkStats, PeerStatus};
pub use wire::{ALPN, CONNECTION_ERROR_IDENTITY};
