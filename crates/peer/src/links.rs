//! [`PeerLinks`]: the endpoint, the peer table, and the public send/forward/status calls.
//! The outbound side (one dialer task per peer) is in `outbound`, the accept side in
//! `inbound`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use quinn::{Connection, Endpoint, VarInt};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::PeerConfig;
use crate::error::{ForwardError, PeerError, SendError};
use crate::stats::{bump, Inbound, LinkCounters, LinkStats, Outbound, PeerStatus};
use crate::wire::{self, CONNECTION_ERROR_REDIAL, CONNECTION_ERROR_SHUTDOWN};
use crate::{inbound, outbound, tls};

/// Inbound connections (handshaking or open) at once; more are refused. A three-node
/// cluster needs two, plus the ones a restarting peer leaves until they time out.
pub const INBOUND_CONNECTIONS_MAX: usize = 64;
/// How long [`PeerLinks::shutdown`] waits for connections to close.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// What a node does with what its peers send it.
///
/// Called from the links' tokio tasks: [`PeerHandler::raft`] once per received frame, in
/// the order the sending node sent them; [`PeerHandler::forward`] once per forward
/// request, concurrently.
pub trait PeerHandler: Send + Sync + 'static {
    /// A raft frame from node `from`. Must not block (hand it to a queue): it runs on the
    /// task that reads `from`'s frames, so it holds up that node's later frames.
    fn raft(&self, from: u64, frame: Bytes);

    /// A forwarded request from node `from`; the future's output is the answer sent back.
    /// It is dropped if the connection closes first.
    fn forward(&self, from: u64, request: Bytes) -> BoxFuture<'static, Bytes>;
}

/// What every task of one [`PeerLinks`] shares.
pub(crate) struct Shared {
    pub(crate) config: PeerConfig,
    pub(crate) handler: Arc<dyn PeerHandler>,
    pub(crate) endpoint: Endpoint,
    pub(crate) client_config: quinn::ClientConfig,
    pub(crate) runtime: Handle,
    pub(crate) counters: LinkCounters,
    pub(crate) inbound_slots: Arc<Semaphore>,
    epoch: Instant,
    peers: RwLock<HashMap<u64, PeerEntry>>,
    heard: Mutex<HashMap<u64, Arc<Inbound>>>,
    shut_down: AtomicBool,
}

impl Shared {
    /// What we heard from node `node_id` (created on first use).
    pub(crate) fn inbound(&self, node_id: u64) -> Arc<Inbound> {
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            heard
                .entry(node_id)
                .or_insert_with(|| Arc::new(Inbound::new(self.epoch))),
        )
    }

    fn heard_from(&self, node_id: u64) -> Option<Arc<Inbound>> {
        let heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        heard.get(&node_id).cloned()
    }
}

/// One configured peer: the state its dialer task and the public calls share.
#[derive(Debug)]
pub(crate) struct PeerState {
    pub(crate) node_id: u64,
    pub(crate) addr: watch::Sender<SocketAddr>,
    pub(crate) queue: mpsc::Sender<Bytes>,
    connection: Mutex<Option<Connection>>,
    pub(crate) outbound: Outbound,
}

impl PeerState {
    /// The outbound connection, while it is up.
    pub(crate) fn connection(&self) -> Option<Connection> {
        let conn = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        conn.as_ref()
            .filter(|conn| conn.close_reason().is_none())
            .cloned()
    }

    pub(crate) fn set_connection(&self, conn: Option<Connection>) {
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = conn;
    }
}

/// A peer table entry; dropping it stops the peer's dialer and closes its connection.
struct PeerEntry {
    state: Arc<PeerState>,
    dialer: JoinHandle<()>,
}

impl Drop for PeerEntry {
    fn drop(&mut self) {
        self.dialer.abort();
        if let Some(conn) = self.state.connection() {
            conn.close(VarInt::from_u32(CONNECTION_ERROR_REDIAL), b"peer removed");
        }
    }
}

/// The node's links to its peers: one quinn endpoint that accepts the peers' connections
/// and dials one connection to each configured peer. See the crate documentation for the
/// model.
///
/// [`PeerLinks::start`] binds and returns at once; peers are added with
/// [`PeerLinks::set_peer`]. [`PeerLinks::shutdown`] closes everything; dropping a
/// `PeerLinks` without it closes every connection at once.
pub struct PeerLinks {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for PeerLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLinks")
            .field("node_id", &self.shared.config.node_id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl PeerLinks {
    /// Checks `config`, builds the TLS configs, binds the UDP socket and starts accepting
    /// peer connections, handing what arrives to `handler`. Must be called within a tokio
    /// runtime; the links' tasks run on it.
    pub fn start(
        config: PeerConfig,
        handler: Arc<dyn PeerHandler>,
    ) -> Result<PeerLinks, PeerError> {
        config.check()?;
        let addr = config.listen;
        let runtime = Handle::try_current().map_err(|e| PeerError::Bind {
            addr,
            source: std::io::Error::other(format!("no tokio runtime: {e}")),
        })?;
        let server_config = tls::server_config(&config)?;
        let client_config = tls::client_config(&config)?;
        let endpoint = {
            let _guard = runtime.enter();
            let endpoint_config = sluice_quic::endpoint_config()
                .map_err(|e| PeerError::Config(format!("UDP payload size: {e}")))?;
            quinn::default_runtime()
                .ok_or_else(|| std::io::Error::other("no async runtime found"))
                .and_then(|quinn_runtime| {
                    // Room for a leader's burst of appends (the kernel may grant less).
                    let (socket, _) = sluice_quic::bind_udp(addr)?;
                    Endpoint::new(endpoint_config, Some(server_config), socket, quinn_runtime)
                })
                .map_err(|source| PeerError::Bind { addr, source })?
        };
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| PeerError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            config,
            handler,
            endpoint: endpoint.clone(),
            client_config,
            runtime: runtime.clone(),
            counters: LinkCounters::default(),
            inbound_slots: Arc::new(Semaphore::new(INBOUND_CONNECTIONS_MAX)),
            epoch: Instant::now(),
            peers: RwLock::new(HashMap::new()),
            heard: Mutex::new(HashMap::new()),
            shut_down: AtomicBool::new(false),
        });
        let accept = runtime.spawn(inbound::accept_loop(Arc::clone(&shared), endpoint));
        tracing::info!(
            node_id = shared.config.node_id,
            addr = %local_addr,
            "peer links listening"
        );
        Ok(PeerLinks {
            shared,
            local_addr,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// The address the links listen on (the real port when `listen` asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.shared.config.node_id
    }

    /// Adds peer `node_id` at `addr`, to be dialled at once, or moves an existing peer to
    /// `addr` (its connection is closed and redialled if the address changed; its queue and
    /// counters stay). Our own id is ignored, so a caller may pass the whole cluster.
    pub fn set_peer(&self, node_id: u64, addr: SocketAddr) {
        if node_id == self.shared.config.node_id || self.shared.shut_down.load(Ordering::SeqCst) {
            return;
        }
        let mut peers = self
            .shared
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = peers.get(&node_id) {
            entry.state.addr.send_if_modified(|current| {
                let changed = *current != addr;
                *current = addr;
                changed
            });
            return;
        }
        let (queue, queue_rx) = mpsc::channel(self.shared.config.queue_frames);
        let (addr_tx, addr_rx) = watch::channel(addr);
        let state = Arc::new(PeerState {
            node_id,
            addr: addr_tx,
            queue,
            connection: Mutex::new(None),
            outbound: Outbound::default(),
        });
        let dialer = self.shared.runtime.spawn(outbound::run(
            Arc::clone(&self.shared),
            Arc::clone(&state),
            queue_rx,
            addr_rx,
        ));
        tracing::info!(node_id, %addr, "peer added");
        peers.insert(node_id, PeerEntry { state, dialer });
    }

    /// Removes peer `node_id`: its dialer stops, its outbound connection closes, its
    /// queued frames are dropped. Inbound connections from it are not affected.
    pub fn remove_peer(&self, node_id: u64) {
        let removed = self
            .shared
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&node_id);
        if removed.is_some() {
            tracing::info!(node_id, "peer removed");
        }
    }

    fn peer(&self, node_id: u64) -> Option<Arc<PeerState>> {
        let peers = self
            .shared
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        peers.get(&node_id).map(|entry| Arc::clone(&entry.state))
    }

    /// Queues `frame` for peer `to` and returns at once. Dropped (with the error, and
    /// counted) when the peer is unknown, its queue is full or the frame is over
    /// `frame_bytes_max`; never blocks. Frames to one peer are delivered in the order
    /// queued, or not at all.
    pub fn send(&self, to: u64, frame: Bytes) -> Result<(), SendError> {
        if self.shared.shut_down.load(Ordering::Relaxed) {
            return Err(SendError::ShutDown);
        }
        let Some(peer) = self.peer(to) else {
            bump(&self.shared.counters.dropped_unknown_peer);
            return Err(SendError::UnknownPeer(to));
        };
        let max = self.shared.config.frame_bytes_max;
        if frame.len() > max {
            peer.outbound.dropped(1);
            return Err(SendError::TooLarge {
                bytes: frame.len(),
                max,
            });
        }
        peer.queue.try_send(frame).map_err(|e| {
            peer.outbound.dropped(1);
            match e {
                mpsc::error::TrySendError::Full(_) => SendError::QueueFull(to),
                mpsc::error::TrySendError::Closed(_) => SendError::ShutDown,
            }
        })
    }

    /// Sends `request` to peer `to` on a new stream of the outbound connection and waits
    /// up to `timeout` for the whole answer (at most `frame_bytes_max` bytes). Fails at
    /// once with [`ForwardError::NotConnected`] while the peer is being dialled.
    pub async fn forward(
        &self,
        to: u64,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ForwardError> {
        let max = self.shared.config.frame_bytes_max;
        if request.len() > max {
            return Err(ForwardError::TooLarge {
                bytes: request.len(),
                max,
            });
        }
        let peer = self.peer(to).ok_or(ForwardError::UnknownPeer(to))?;
        let conn = peer.connection().ok_or(ForwardError::NotConnected(to))?;
        tokio::time::timeout(timeout, forward_on(&conn, request, max))
            .await
            .map_err(|_| ForwardError::TimedOut(timeout))?
    }

    /// Every configured peer, by node id.
    pub fn status(&self) -> Vec<PeerStatus> {
        let peers: Vec<Arc<PeerState>> = {
            let peers = self
                .shared
                .peers
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            peers
                .values()
                .map(|entry| Arc::clone(&entry.state))
                .collect()
        };
        let mut status: Vec<PeerStatus> = peers
            .iter()
            .map(|peer| {
                let heard = self.shared.heard_from(peer.node_id);
                let (received_frames, received_bytes) =
                    heard.as_ref().map_or((0, 0), |heard| heard.received());
                let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                PeerStatus {
                    node_id: peer.node_id,
                    addr: *peer.addr.borrow(),
                    connected: peer.connection().is_some(),
                    inbound_connected: heard.as_ref().is_some_and(|heard| heard.is_open()),
                    last_heard_ms: heard.as_ref().and_then(|heard| heard.last_heard_ms()),
                    queued_frames: peer.queue.max_capacity() - peer.queue.capacity(),
                    sent_frames: load(&peer.outbound.sent_frames),
                    sent_bytes: load(&peer.outbound.sent_bytes),
                    dropped_frames: load(&peer.outbound.dropped_frames),
                    reconnects: load(&peer.outbound.reconnects),
                    received_frames,
                    received_bytes,
                }
            })
            .collect();
        status.sort_by_key(|s| s.node_id);
        status
    }

    /// Endpoint-wide counters.
    pub fn stats(&self) -> LinkStats {
        self.shared.counters.snapshot()
    }

    /// Stops everything: dialers end, queued frames are dropped, every connection is
    /// closed with `CONNECTION_ERROR_SHUTDOWN`, and the call waits up to
    /// [`SHUTDOWN_WAIT`] for the closes to be delivered. Later calls fail with
    /// `ShutDown` / `UnknownPeer`.
    pub async fn shutdown(&self) {
        self.shared.shut_down.store(true, Ordering::SeqCst);
        self.shared.endpoint.close(
            VarInt::from_u32(CONNECTION_ERROR_SHUTDOWN),
            b"shutting down",
        );
        let peers: Vec<PeerEntry> = self
            .shared
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, entry)| entry)
            .collect();
        // Dropping an entry stops its dialer.
        drop(peers);
        let accept = self
            .accept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(accept) = &accept {
            accept.abort();
        }
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.shared.endpoint.wait_idle()).await;
        if let Some(accept) = accept {
            let _ = accept.await;
        }
        tracing::info!(node_id = self.shared.config.node_id, "peer links stopped");
    }
}

impl Drop for PeerLinks {
    fn drop(&mut self) {
        self.shared.shut_down.store(true, Ordering::SeqCst);
        self.shared.endpoint.close(
            VarInt::from_u32(CONNECTION_ERROR_SHUTDOWN),
            b"shutting down",
        );
        self.shared
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        if let Some(accept) = self
            .accept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            accept.abort();
        }
    }
}

/// One forward on `conn`: request out, finish, whole answer in. The caller's timeout
/// bounds it, so the answer may take as long as the handler needs within it.
async fn forward_on(conn: &Connection, request: Bytes, max: usize) -> Result<Bytes, ForwardError> {
    let closed = |e: &dyn std::fmt::Display| ForwardError::Closed(e.to_string());
    let (send, mut recv) = conn.open_bi().await.map_err(|e| closed(&e))?;
    // If the caller gives up mid-write, the peer sees a reset, never a cut-short request.
    wire::Outgoing::new(send)
        .finish(&mut [request])
        .await
        .map_err(|e| closed(&e))?;
    match wire::read_to_end(&mut recv, max, Duration::MAX).await {
        Ok(answer) => Ok(answer),
        Err(wire::StreamError::TooLarge { .. }) => Err(ForwardError::AnswerTooLarge { max }),
        Err(wire::StreamError::Read(quinn::ReadError::Reset(code)))
            if code == VarInt::from_u32(wire::STREAM_ERROR_TOO_LARGE) =>
        {
            Err(ForwardError::AnswerTooLarge { max })
        }
        Err(e) => Err(closed(&e)),
    }
}
