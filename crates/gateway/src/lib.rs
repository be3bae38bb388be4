//! Sluice's QUIC front end: the edge where untrusted bytes become validated requests.
//!
//! The model (DESIGN §1, §4, §7):
//!
//! - **tokio + quinn at the edge.** A [`Gateway`] owns one quinn endpoint on the tokio
//!   runtime it was bound on: an accept loop, one task per connection, one task per
//!   stream. The broker plugs in as a [`Service`]; the gateway knows nothing of the
//!   engine, and the engine never sees a byte the gateway has not decoded and validated.
//! - **TLS 1.3, ALPN `sluice/1`, nothing else.** rustls with the ring provider; a client
//!   offering another ALPN (or none) fails the handshake; no 0-RTT, because a replayed
//!   produce would append twice. [`TlsSource::Dev`] generates a CA and a `localhost`
//!   certificate once and reuses them ([`ensure_dev_certificates`], [`dev_ca_path`]).
//! - **One request per bidirectional stream.** The client writes one frame and finishes;
//!   the gateway answers one frame and finishes (`proto/PROTOCOL.md`, "Frames and
//!   requests").
//! - **A limit on everything.** Streams per connection (QUIC stream credit, so the
//!   client's own stack enforces it), connections, request bytes claimed per connection
//!   and per gateway (claimed from the length prefix *before* allocating), the time a
//!   frame may take to arrive and a response to be delivered, malformed streams per
//!   connection.
//! - **Bad input costs the sender.** A bad frame is answered with an `Error` response
//!   (with the request id when it can be read) or its stream is stopped/reset with a
//!   `STREAM_ERROR_*` code; a connection that keeps sending garbage is closed. Nothing a
//!   client sends can panic the gateway or stall another connection. The table of cases
//!   is in the `stream` module.
//! - **Graceful shutdown keeps the write-outcome contract.** A request is in flight from
//!   dispatch until its response is acknowledged; [`Gateway::shutdown`] refuses what was
//!   not dispatched, drains what was, answers `Interrupted` for what the grace cut short,
//!   and only then closes connections with `CONNECTION_ERROR_SHUTDOWN`, so a client may
//!   treat any request left unanswered by that close as definitely not done.
//! - **Observable.** [`GatewayStats`] holds plain counters and latency histograms; the
//!   metrics crate maps a [`StatsSnapshot`] onto prometheus families.
//!
//! ```no_run
//! # async fn demo(service: std::sync::Arc<impl sluice_gateway::Service>) -> Result<(), sluice_gateway::GatewayError> {
//! use std::time::Duration;
//! use sluice_gateway::{Gateway, GatewayConfig, TlsSource};
//!
//! let config = GatewayConfig::new(
//!     "127.0.0.1:7010".parse().unwrap(),
//!     TlsSource::Dev { dir: "sluice-data/tls".into() },
//! );
//! let gateway = Gateway::bind(config, service)?;
//! tokio::signal::ctrl_c().await.ok();
//! gateway.shutdown(Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod config;
mod error;
mod server;
mod service;
mod stats;
mod stream;
mod tls;

pub use config::*;
pub use error::GatewayError;
pub use server::{Gateway, ShutdownReport, SHUTDOWN_ACK_WAIT, SHUTDOWN_CLOSE_WAIT};
pub use service::{Reply, Service};
pub use stats::{GatewayStats, LatencySnapshot, StatsSnapshot, LATENCY_BUCKET_BOUNDS_US};
pub use tls::{
    dev_ca_path, ensure_dev_certificates, DevCertificates, DEV_CA_FILE, DEV_CERT_FILE,
    DEV_KEY_FILE, DEV_SERVER_NAMES,
};
