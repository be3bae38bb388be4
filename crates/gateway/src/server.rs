//! The gateway: the quinn endpoint, its accept loop, one task per connection, and the
//! shutdown sequence. Per-stream protocol handling is in `stream`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use quinn::{Endpoint, IdleTimeout, Incoming, VarInt};
use sluice_proto::wire::{FrameLimits, ALPN, CONNECTION_ERROR_PROTOCOL, CONNECTION_ERROR_SHUTDOWN};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::service::Service;
use crate::stats::GatewayStats;
use crate::{stream, tls};

/// After a shutdown's grace ran out and the remaining requests were answered
/// `Interrupted`, how long those answers get to be acknowledged before connections close.
pub const SHUTDOWN_ACK_WAIT: Duration = Duration::from_secs(1);
/// How long a shutdown waits for the CONNECTION_CLOSE frames to go out.
pub const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The gateway's lifecycle, watched by every connection and stream task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepting connections and streams, dispatching requests.
    Running,
    /// Shutting down: no new connections; streams not yet dispatched are refused (reset
    /// with `CONNECTION_ERROR_SHUTDOWN`); dispatched requests run to completion.
    Draining,
    /// The grace ran out: handlers still running are dropped and answered `Interrupted`.
    Interrupt,
}

/// Counts dispatched requests until their response is acknowledged, so a shutdown knows
/// when every answer has reached its client.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    dispatched: AtomicU64,
    idle: Notify,
}

impl Drain {
    /// Called *before* the dispatcher re-checks the phase: with the shutdown storing the
    /// phase before reading the count (through the watch channel's lock), either the
    /// dispatcher sees `Draining` or the shutdown sees this request.
    pub(crate) fn enter(self: &Arc<Self>) -> DrainGuard {
        self.dispatched.fetch_add(1, Ordering::SeqCst);
        DrainGuard(Arc::clone(self))
    }

    fn count(&self) -> u64 {
        self.dispatched.load(Ordering::SeqCst)
    }

    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
pub(crate) struct DrainGuard(Arc<Drain>);

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if self.0.dispatched.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What every task of one gateway shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) stats: Arc<GatewayStats>,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) drain: Arc<Drain>,
    /// `request_bytes_max`, in bytes.
    pub(crate) request_budget: Arc<Semaphore>,
    /// Connections accepted and not yet ended (handshaking ones included).
    connections: AtomicU32,
}

impl Shared {
    pub(crate) fn limits(&self) -> &FrameLimits {
        &self.config.frame_limits
    }
}

/// Resolves once the phase is no longer `Running` (or the gateway is gone).
pub(crate) async fn until_not_running(phase: &mut watch::Receiver<Phase>) {
    loop {
        if *phase.borrow_and_update() != Phase::Running || phase.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves once the phase is `Interrupt` (or the gateway is gone).
pub(crate) async fn until_interrupt(phase: &mut watch::Receiver<Phase>) {
    loop {
        if *phase.borrow_and_update() == Phase::Interrupt || phase.changed().await.is_err() {
            return;
        }
    }
}

/// How a [`Gateway::shutdown`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every dispatched request was answered, and its answer acknowledged, within the grace.
    pub drained_within_grace: bool,
    /// Dispatched requests whose answer was still unacknowledged when connections closed
    /// (their clients may not have received it). 0 after a clean drain.
    pub unacknowledged: u64,
}

/// A running QUIC front end. [`Gateway::bind`] starts serving at once on the current
/// tokio runtime; [`Gateway::shutdown`] drains and stops it. Dropping a `Gateway` without
/// a shutdown closes every connection immediately.
///
/// Per connection: TLS 1.3, ALPN `sluice/1`, at most `in_flight_per_connection_max`
/// bidirectional streams (QUIC stream credit, so the limit is enforced by the client's
/// own stack), no unidirectional streams. Per stream: one request frame, read within
/// `stream_read_timeout` and bounded by `FrameLimits` before anything is allocated, then
/// one response frame. See the crate documentation for the error handling.
#[derive(Debug)]
pub struct Gateway {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Checks `config`, loads or generates the TLS material, binds the UDP socket and
    /// starts accepting connections, handing requests to `service`. Must be called from
    /// within a tokio runtime (multi-threaded recommended); the gateway's tasks run on it.
    pub fn bind<S: Service>(
        config: GatewayConfig,
        service: Arc<S>,
    ) -> Result<Gateway, GatewayError> {
        config.check()?;
        let addr = config.listen;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| GatewayError::Bind {
            addr,
            source: std::io::Error::other(format!("no tokio runtime: {e}")),
        })?;
        let crypto = tls::server_crypto(&config.tls)?;
        let crypto = QuicServerConfig::try_from(crypto)
            .map_err(|e| GatewayError::Tls(format!("QUIC TLS config: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = sluice_quic::transport_config();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(config.in_flight_per_connection_max))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_idle_timeout(Some(IdleTimeout::try_from(config.idle_timeout).map_err(
                |_| GatewayError::Config("idle_timeout is too large".to_owned()),
            )?));
        server_config.transport_config(Arc::new(transport));
        let endpoint_config = sluice_quic::endpoint_config()
            .map_err(|e| GatewayError::Config(format!("UDP payload size: {e}")))?;

        let endpoint = {
            let _guard = runtime.enter();
            let runtime = quinn::default_runtime()
                .ok_or_else(|| std::io::Error::other("no async runtime found"))
                .map_err(|source| GatewayError::Bind { addr, source })?;
            sluice_quic::bind_udp(addr)
                .and_then(|(socket, _)| {
                    Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
                })
                .map_err(|source| GatewayError::Bind { addr, source })?
        };
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr, source })?;
        // `check` bounded it to a semaphore's range.
        let request_bytes = usize::try_from(config.request_bytes_max).unwrap_or(usize::MAX >> 3);
        let (phase, _) = watch::channel(Phase::Running);
        let shared = Arc::new(Shared {
            config,
            stats: Arc::new(GatewayStats::default()),
            phase,
            drain: Arc::new(Drain::default()),
            request_budget: Arc::new(Semaphore::new(request_bytes)),
            connections: AtomicU32::new(0),
        });
        let accept = runtime.spawn(accept_loop(Arc::clone(&shared), service, endpoint.clone()));
        tracing::info!(addr = %local_addr, alpn = "sluice/1", "gateway listening");
        Ok(Gateway {
            endpoint,
            local_addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The address the gateway listens on (the real port when `listen` asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The gateway's live counters.
    pub fn stats(&self) -> &Arc<GatewayStats> {
        &self.shared.stats
    }

    /// Stops gracefully, in this order:
    ///
    /// 1. new connections are refused, open connections get no new stream credit, and
    ///    streams not yet dispatched (still arriving, or opened from here on) are reset
    ///    with `CONNECTION_ERROR_SHUTDOWN`: refused, nothing done;
    /// 2. dispatched requests run to completion, and their responses get acknowledged,
    ///    for up to `grace`;
    /// 3. if the grace runs out, the handlers still running are dropped and their requests
    ///    answered `Interrupted` (writes: they may have been appended) or `ShuttingDown`
    ///    (reads); those answers get [`SHUTDOWN_ACK_WAIT`] to be acknowledged;
    /// 4. every connection still open is closed with `CONNECTION_ERROR_SHUTDOWN` (never
    ///    dropped silently). What a client had no answer to by then was refused, except
    ///    the answers counted in [`ShutdownReport::unacknowledged`]: those requests were
    ///    dispatched and their answers are cut off by the close (a write among them may
    ///    have been appended).
    pub async fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        tracing::info!(grace_ms = grace.as_millis() as u64, "gateway draining");
        self.shared.phase.send_replace(Phase::Draining);
        self.endpoint.set_server_config(None);
        let drained = tokio::time::timeout(grace, self.shared.drain.idle())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                in_flight = self.shared.drain.count(),
                "shutdown grace ran out; interrupting the remaining requests"
            );
            self.shared.phase.send_replace(Phase::Interrupt);
            let _ = tokio::time::timeout(SHUTDOWN_ACK_WAIT, self.shared.drain.idle()).await;
        }
        let unacknowledged = self.shared.drain.count();
        self.shared.phase.send_replace(Phase::Interrupt);
        self.endpoint.close(
            VarInt::from_u32(CONNECTION_ERROR_SHUTDOWN),
            b"shutting down",
        );
        let _ = tokio::time::timeout(SHUTDOWN_CLOSE_WAIT, self.endpoint.wait_idle()).await;
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        tracing::info!(drained, unacknowledged, "gateway stopped");
        ShutdownReport {
            drained_within_grace: drained,
            unacknowledged,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            self.shared.phase.send_replace(Phase::Interrupt);
            self.endpoint.close(
                VarInt::from_u32(CONNECTION_ERROR_SHUTDOWN),
                b"shutting down",
            );
            accept.abort();
        }
    }
}

/// Holds one of the `connections_max` slots until the connection's task ends.
struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop<S: Service>(shared: Arc<Shared>, service: Arc<S>, endpoint: Endpoint) {
    let mut phase = shared.phase.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = until_not_running(&mut phase) => break,
        };
        let Some(incoming) = incoming else { break };
        // Only this loop adds to `connections`, so the check and the add cannot race.
        if shared.connections.load(Ordering::Relaxed) >= shared.config.connections_max {
            shared.stats.connection_refused();
            tracing::debug!(remote = %incoming.remote_address(), "connection refused: connections_max");
            incoming.refuse();
            continue;
        }
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let slot = ConnectionSlot(Arc::clone(&shared));
        tokio::spawn(serve_connection(
            Arc::clone(&shared),
            Arc::clone(&service),
            incoming,
            slot,
        ));
    }
}

/// One connection's state, shared by its stream tasks.
#[derive(Debug)]
pub(crate) struct ConnCtx<S> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) service: Arc<S>,
    pub(crate) conn: quinn::Connection,
    /// `request_bytes_per_connection_max`, in bytes.
    pub(crate) request_budget: Arc<Semaphore>,
    malformed: AtomicU32,
}

impl<S> ConnCtx<S> {
    /// Counts a stream that could not be framed; at the limit the connection is closed.
    pub(crate) fn note_malformed(&self) {
        let seen = self
            .malformed
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if seen == self.shared.config.malformed_streams_per_connection_max {
            tracing::info!(
                remote = %self.conn.remote_address(),
                seen,
                "closing a connection that sent too many malformed streams"
            );
            self.shared.stats.connection_closed_protocol();
            self.conn.close(
                VarInt::from_u32(CONNECTION_ERROR_PROTOCOL),
                b"too many malformed streams",
            );
        }
    }
}

struct OpenConnection(Arc<GatewayStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

async fn serve_connection<S: Service>(
    shared: Arc<Shared>,
    service: Arc<S>,
    incoming: Incoming,
    _slot: ConnectionSlot,
) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            shared.stats.handshake_failed();
            tracing::debug!(%remote, error = %e, "incoming connection failed");
            return;
        }
    };
    let conn = match tokio::time::timeout(shared.config.handshake_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            shared.stats.handshake_failed();
            tracing::debug!(%remote, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            shared.stats.handshake_failed();
            tracing::debug!(%remote, "handshake timed out");
            return;
        }
    };
    // rustls already refuses a QUIC client without `sluice/1`; this keeps the rule true
    // whatever the TLS stack does.
    let alpn = conn
        .handshake_data()
        .and_then(|data| data.downcast::<HandshakeData>().ok())
        .and_then(|data| data.protocol);
    if alpn.as_deref() != Some(ALPN) {
        shared.stats.handshake_failed();
        conn.close(
            VarInt::from_u32(CONNECTION_ERROR_PROTOCOL),
            b"ALPN sluice/1 required",
        );
        return;
    }
    shared.stats.connection_opened();
    let _open = OpenConnection(Arc::clone(&shared.stats));
    tracing::debug!(%remote, "connection open");

    let per_connection =
        usize::try_from(shared.config.request_bytes_per_connection_max).unwrap_or(usize::MAX >> 3);
    let mut phase = shared.phase.subscribe();
    let ctx = Arc::new(ConnCtx {
        shared,
        service,
        conn: conn.clone(),
        request_budget: Arc::new(Semaphore::new(per_connection)),
        malformed: AtomicU32::new(0),
    });
    let mut draining = false;
    loop {
        if !draining && *phase.borrow_and_update() != Phase::Running {
            draining = true;
            // No new stream credit; streams the client already opened are accepted below
            // and refused by their tasks, so the client hears about them at once.
            conn.set_max_concurrent_bi_streams(VarInt::from_u32(0));
        }
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    tokio::spawn(stream::serve(Arc::clone(&ctx), send, recv));
                }
                Err(e) => {
                    tracing::debug!(%remote, reason = %e, "connection closed");
                    break;
                }
            },
            changed = phase.changed(), if !draining => {
                if changed.is_err() {
                    draining = true;
                }
            }
        }
    }
}
