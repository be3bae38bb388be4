//! The SDK's QUIC transport: a pool of connections, one per cluster node, one
//! bidirectional stream per request (`proto/PROTOCOL.md`, "Frames and requests"), and
//! leader routing over a metadata cache (see [`Client`] for the routing model).
//!
//! A [`Client`] is cheap to clone and safe to share between tasks: clones share the
//! connections, and requests on one run concurrently, each on its own stream (the
//! broker's `in_flight_per_connection_max` bounds how many; further requests wait for
//! stream credit). A node's connection is dialed when a request first needs it; when it
//! is lost, the next request for that node dials a new one. A request that was open on
//! the lost connection fails with [`ClientError::ConnectionLost`] and is never re-sent
//! here: retries of failures that may have reached the broker, and their safety for
//! writes ([`ClientError::write_outcome`]), are the producer's business.
//!
//! Each request: encode and validate the frame locally (the broker would refuse what
//! `encode_request` refuses), open a stream, write the frame, finish the send side, read
//! one response frame bounded by [`FrameLimits`], check that it answers this request's id
//! and kind. The whole exchange has a deadline of `request_timeout` plus the request's own
//! wait (`Produce::timeout_ms`, `Fetch::max_wait_ms`); a request abandoned by its deadline
//! or by dropping its future resets its stream with `STREAM_ERROR_CANCELLED`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_client::ClientError> {
//! use sluice_client::transport::{Client, ClientTls};
//! use sluice_proto::wire::TopicConfig;
//!
//! let tls = ClientTls::ca_file("sluice-data/tls/ca.pem");
//! let client = Client::connect("127.0.0.1:7010".parse().unwrap(), tls).await?;
//! client.create_topic("events", 8, TopicConfig::default()).await?;
//! for topic in client.list_topics().await? {
//!     println!("{} ({} partitions)", topic.name, topic.partitions);
//! }
//! # Ok(()) }
//! ```

use bytes::Bytes;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{
    ConnectionError, Endpoint, IdleTimeout, ReadError, ReadExactError, RecvStream, SendStream,
    VarInt, WriteError,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sluice_proto::wire::ProducerIdOk;
use sluice_proto::wire::{
    decode_response, encode_request_head, read_frame_len, Acks, ClusterInfo, ClusterStatus,
    ErrorCode, ErrorDetail, FetchOk, FrameLimits, MetadataOk, OffsetOk, OffsetSpec, ProduceOk,
    Request, RequestHeader, RequestKind, Response, TopicConfig, TopicDescription, TopicSummary,
    WriteOutcome, ALPN, APP_NO_ERROR, CONNECTION_ERROR_SHUTDOWN, FRAME_LEN_BYTES,
    STREAM_ERROR_CANCELLED, STREAM_ERROR_MALFORMED,
};

use crate::error::{is_refusal, ClientError};
use crate::routing::{Route, Routes, REDIRECTS_MAX};

/// The server name a [`ClientTls`] checks by default: the dev certificate's.
pub const SERVER_NAME_DEFAULT: &str = "localhost";
/// Default [`ClientOptions::client_id`].
pub const CLIENT_ID_DEFAULT: &str = "sluice-rust";
/// Default [`ClientOptions::connect_timeout`].
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default [`ClientOptions::request_timeout`].
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default [`ClientOptions::idle_timeout`].
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(6);
/// Default [`ClientOptions::keep_alive_interval`].
pub const KEEP_ALIVE_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);

/// How long a partition-addressed request (other than a fetch) waits for its answer
/// before the client asks another node whether the leader moved; a request waiting on
/// a node that no longer leads is abandoned (indeterminate), so the idempotent
/// producer's retry reaches the new leader instead of waiting out a dead node's idle
/// timeout.
pub const LEADER_PROBE: Duration = Duration::from_millis(150);

/// Probes that must find a silent request's node still leading before its connection
/// is presumed stale and dropped.
const STALE_CONFIRMATIONS: u32 = 4;

/// At most one leader probe per this interval per client, however many requests wait.
const PROBE_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// How the client authenticates the broker. The broker's certificate must chain to one
/// of the CA certificates given (from the file, the bytes, or both) and be valid for
/// `server_name`. There is no fallback to system roots: Sluice brokers run on private
/// CAs (in dev mode, the CA at `sluice_gateway::dev_ca_path(dir)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// A PEM file of CA certificates to trust.
    pub ca_pem_path: Option<PathBuf>,
    /// PEM bytes of CA certificates to trust.
    pub ca_pem: Option<Vec<u8>>,
    /// The name the broker's certificate must be valid for. Default `"localhost"`.
    pub server_name: String,
}

impl Default for ClientTls {
    /// No CA (connecting fails with `Config` until one is set), server name `localhost`.
    fn default() -> Self {
        ClientTls {
            ca_pem_path: None,
            ca_pem: None,
            server_name: SERVER_NAME_DEFAULT.to_owned(),
        }
    }
}

impl ClientTls {
    /// Trust the CA certificates in the PEM file at `path`.
    pub fn ca_file(path: impl Into<PathBuf>) -> ClientTls {
        ClientTls {
            ca_pem_path: Some(path.into()),
            ..ClientTls::default()
        }
    }

    /// Trust the CA certificates in `pem`.
    pub fn ca_pem(pem: impl Into<Vec<u8>>) -> ClientTls {
        ClientTls {
            ca_pem: Some(pem.into()),
            ..ClientTls::default()
        }
    }

    /// Check the broker's certificate against `name` instead of `localhost`.
    pub fn with_server_name(mut self, name: impl Into<String>) -> ClientTls {
        self.server_name = name.into();
        self
    }

    fn rustls_config(&self) -> Result<rustls::ClientConfig, ClientError> {
        let mut certs = Vec::new();
        if let Some(path) = &self.ca_pem_path {
            let bad = |e: rustls_pki_types::pem::Error| {
                ClientError::Config(format!("CA file {}: {e}", path.display()))
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(bad)? {
                certs.push(cert.map_err(bad)?);
            }
        }
        if let Some(pem) = &self.ca_pem {
            for cert in CertificateDer::pem_slice_iter(pem) {
                certs.push(cert.map_err(|e| ClientError::Config(format!("CA PEM: {e}")))?);
            }
        }
        if certs.is_empty() {
            return Err(ClientError::Config(
                "no CA certificate to trust: set ClientTls::ca_pem_path or ca_pem".to_owned(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
        }
        let mut provider = rustls::crypto::ring::default_provider();
        // AES-128-GCM first, as BoringSSL and Go order TLS 1.3's suites (rustls puts
        // AES-256 first): ten AES rounds a block instead of fourteen, on every byte sent
        // and received. The broker takes the client's order.
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let provider = Arc::new(provider);
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::Config(format!("TLS 1.3 with ring: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        // No 0-RTT: a replayed produce would append twice.
        config.enable_early_data = false;
        Ok(config)
    }
}

/// Tunables of a [`Client`]; `Default` gives the `*_DEFAULT` constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Sent in every request header, for the broker's logs and quotas. Default
    /// `"sluice-rust"`.
    pub client_id: String,
    /// Bounds on frames sent (checked before sending) and received.
    pub frame_limits: FrameLimits,
    /// Handshake deadline. Default 10 s.
    pub connect_timeout: Duration,
    /// Deadline of one request, on top of its own `timeout_ms` / `max_wait_ms`.
    /// Default 30 s.
    pub request_timeout: Duration,
    /// The connection closes after this long without traffic. Default 6 s: with
    /// keep-alives every second a live broker never idles out, and a dead one (a
    /// killed process sends nothing back over UDP) is noticed within it.
    pub idle_timeout: Duration,
    /// Keep-alive pings while idle, so the broker's idle timeout does not close a quiet
    /// client. Default 1 s.
    pub keep_alive_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_id: CLIENT_ID_DEFAULT.to_owned(),
            frame_limits: FrameLimits::DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            keep_alive_interval: KEEP_ALIVE_INTERVAL_DEFAULT,
        }
    }
}

/// A client of a Sluice cluster (or of a single broker, a cluster of one).
/// `Clone + Send + Sync`; clones share the connections and the metadata cache.
///
/// # Routing
///
/// - **Bootstrap.** [`Client::connect`] dials the node at `addr`
///   ([`Client::connect_cluster`]: the first of several that answers); it is only a way
///   in. Every node's address is learned from metadata (`BrokerInfo::addr`, as the node
///   advertises it), and each node gets its own connection, dialed when a request first
///   needs it (with [`ClientOptions::connect_timeout`]) and redialed after it is lost.
///   Every node must present a certificate from the same CA, valid for the same
///   [`ClientTls::server_name`]. An advertised address with an unspecified IP
///   (`0.0.0.0:7010`, a node advertising its listen address) is never dialed: that
///   node's partitions are sent to any node instead.
/// - **Metadata cache.** Topic → partition → leader node id, and node id → address.
///   It is filled by every `Metadata` answer that passes through the client (the
///   producer's own lookups, [`Client::metadata`]) and by `NotLeader` details, and
///   refreshed in the background (at most one refresh in flight, at most one started
///   per 100 ms; each asks about every topic the client has routed to) whenever a
///   partition-addressed call finds no usable leader in it and whenever a leader is
///   found to be gone.
/// - **Partition-addressed calls** ([`produce`](Client::produce),
///   [`fetch`](Client::fetch), [`list_offsets`](Client::list_offsets), and
///   [`request`](Client::request) of those kinds) go to the partition's cached leader;
///   with none known, to any node (one already connected first), which forwards the
///   request or answers `NotLeader`. A `NotLeader` naming the leader (and its address)
///   is recorded and the **same request is re-sent to that leader at once**, at most
///   twice per call: `NotLeader` is definite, nothing was appended, so this is safe for
///   a produce too. A `NotLeader` without a leader, a failure to reach the node
///   ([`ClientError::Connect`], a lost connection, a timeout) or a node saying it is
///   shutting down, timed out or was interrupted forgets the partition's leader,
///   triggers a refresh and is returned to the caller, whose retry policy (the
///   producer's backoff, the consumer's) takes over. Nothing else is ever re-sent here;
///   in particular never a produce whose outcome is indeterminate. Each attempt has its
///   own deadline (`request_timeout` plus the request's own wait).
/// - **Any-node calls** (metadata, topic admin, [`describe_cluster`](Client::describe_cluster),
///   [`cluster_status`](Client::cluster_status), `InitProducer`) go to a live node —
///   connected ones first, then the bootstrap addresses in order, then the other known
///   nodes — and fall back to the next on a failure that guarantees the request was not
///   acted on (a failed dial, a connection found lost before the request left, a node
///   shutting down). Nodes forward admin work to the controller themselves.
/// - **Dead nodes.** A node whose dial failed (unreachable, or a certificate this
///   client does not trust), or that closed its connection or refused a request because
///   it is shutting down, is skipped for 1 s whenever another node can serve, and the
///   partitions it led are forgotten (a refreshed cache that still names it routes
///   around it meanwhile). So a node that cannot be reached costs one connect timeout,
///   not one per request, and never stalls requests for partitions other nodes lead.
///   When every node is marked dead they are dialed anyway (a single broker that is
///   back must be reachable at once). Concurrent requests for a node share one dial.
/// - **Leader watch.** A partition-addressed request other than a fetch (which may
///   long-poll) that has waited [`LEADER_PROBE`] for its answer makes the client ask
///   another live node who leads the partition (at most one probe per 100 ms per
///   client, however many requests wait). When another node leads, the request is
///   abandoned — [`ClientError::Timeout`], indeterminate once it was sent, so the
///   idempotent producer retries it on the new leader — and the silent node is marked
///   dead and its connection dropped. When the silent node still leads after four
///   probes, its connection is presumed stale (a node killed and restarted: UDP brings
///   no reset) and dropped so the retry dials afresh. Without the watch, a request on a
///   killed leader would wait out the connection's idle timeout.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The bootstrap node that answered the first dial.
    addr: SocketAddr,
    server_name: String,
    options: ClientOptions,
    quic: quinn::ClientConfig,
    /// One client endpoint per address family, opened on first use.
    endpoints: Mutex<Vec<Endpoint>>,
    /// A connection slot per node address (`host:port`).
    pool: Mutex<HashMap<String, Arc<NodeConnection>>>,
    routes: Mutex<Routes>,
    closed: AtomicBool,
    next_request_id: AtomicU64,
    /// When the last leader probe was sent (probes are rate-bounded per client).
    last_probe: Mutex<Option<Instant>>,
}

/// One node's connection slot.
#[derive(Debug)]
struct NodeConnection {
    addr: String,
    connection: RwLock<Option<quinn::Connection>>,
    /// Serializes dials, so concurrent requests for a node without a connection dial once.
    dial: tokio::sync::Mutex<()>,
    /// Completed dial attempts, and the error of the last one that failed: a request
    /// that waited for someone else's dial shares its failure instead of dialing again.
    dials: AtomicU64,
    last_failure: Mutex<Option<ClientError>>,
}

impl NodeConnection {
    fn new(addr: String, connection: Option<quinn::Connection>) -> NodeConnection {
        NodeConnection {
            addr,
            connection: RwLock::new(connection),
            dial: tokio::sync::Mutex::new(()),
            dials: AtomicU64::new(0),
            last_failure: Mutex::new(None),
        }
    }

    /// The connection, if there is one and it is open.
    fn live(&self) -> Option<quinn::Connection> {
        self.connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Whether the node closed the connection with `CONNECTION_ERROR_SHUTDOWN`.
    fn closed_for_shutdown(&self) -> bool {
        let connection = self
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        matches!(
            connection.as_ref().and_then(quinn::Connection::close_reason),
            Some(ConnectionError::ApplicationClosed(close))
                if close.error_code == VarInt::from_u32(CONNECTION_ERROR_SHUTDOWN)
        )
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Client {
    /// Connects to the broker (or cluster node) at `addr` with default
    /// [`ClientOptions`]. Must be called within a tokio runtime. In a cluster, `addr` is
    /// only the bootstrap node: see [Routing](Client#routing).
    pub async fn connect(addr: SocketAddr, tls: ClientTls) -> Result<Client, ClientError> {
        Client::connect_with(addr, tls, ClientOptions::default()).await
    }

    /// Connects to the broker (or cluster node) at `addr`.
    pub async fn connect_with(
        addr: SocketAddr,
        tls: ClientTls,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        Client::connect_cluster_with(&[addr], tls, options).await
    }

    /// Connects to a cluster through the first of the bootstrap nodes `addrs` that
    /// answers (tried in order), with default [`ClientOptions`]. The others stay
    /// bootstrap candidates for calls any node can serve.
    pub async fn connect_cluster(
        addrs: &[SocketAddr],
        tls: ClientTls,
    ) -> Result<Client, ClientError> {
        Client::connect_cluster_with(addrs, tls, ClientOptions::default()).await
    }

    /// [`Client::connect_cluster`] with `options`. Fails with the error of a bootstrap
    /// node that cannot be used (e.g. its certificate is not trusted) if there was one,
    /// otherwise with the last node's; with `Config` if `addrs` is empty.
    pub async fn connect_cluster_with(
        addrs: &[SocketAddr],
        tls: ClientTls,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Config(
                "no bootstrap address to connect to".to_owned(),
            ));
        }
        let crypto = QuicClientConfig::try_from(tls.rustls_config()?)
            .map_err(|e| ClientError::Config(format!("QUIC TLS config: {e}")))?;
        let mut transport = sluice_quic::transport_config();
        transport
            .max_idle_timeout(Some(IdleTimeout::try_from(options.idle_timeout).map_err(
                |_| ClientError::Config("idle_timeout is too large".to_owned()),
            )?))
            .keep_alive_interval(Some(options.keep_alive_interval))
            // The broker never opens streams towards a client.
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(0));
        let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
        quic.transport_config(Arc::new(transport));
        let mut endpoints = Vec::new();
        let mut unusable = None;
        let mut last = None;
        let mut failed: Vec<String> = Vec::new();
        for &addr in addrs {
            let endpoint = endpoint_for(&mut endpoints, addr)?;
            match dial(&endpoint, &quic, addr, &tls.server_name, &options).await {
                Ok(connection) => {
                    let bootstrap: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                    let mut routes = Routes::new(bootstrap);
                    let now = Instant::now();
                    for failed in &failed {
                        routes.node_failed(failed, now);
                    }
                    let key = addr.to_string();
                    let node = NodeConnection::new(key.clone(), Some(connection));
                    return Ok(Client {
                        inner: Arc::new(Inner {
                            addr,
                            server_name: tls.server_name,
                            options,
                            quic,
                            endpoints: Mutex::new(endpoints),
                            pool: Mutex::new(HashMap::from([(key, Arc::new(node))])),
                            routes: Mutex::new(routes),
                            closed: AtomicBool::new(false),
                            next_request_id: AtomicU64::new(1),
                            last_probe: Mutex::new(None),
                        }),
                    });
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "bootstrap node unavailable");
                    failed.push(addr.to_string());
                    if e.is_retriable() {
                        last = Some(e);
                    } else if unusable.is_none() {
                        unusable = Some(e);
                    }
                }
            }
        }
        Err(unusable
            .or(last)
            .unwrap_or_else(|| ClientError::Config("no bootstrap address".to_owned())))
    }

    /// The bootstrap node this client first connected to.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The leader of a partition as the metadata cache has it (`None`: not known yet, or
    /// forgotten after a failure). For diagnostics: calls route by it themselves.
    pub fn cached_leader(&self, topic: &str, partition: u32) -> Option<u32> {
        self.routes().leader(topic, partition)
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        lock(&self.inner.routes)
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Closes every connection (code `APP_NO_ERROR`) for every clone, waiting briefly for
    /// the closes to reach the nodes. Requests still open fail with `ConnectionLost`;
    /// later requests fail without reconnecting.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let nodes: Vec<Arc<NodeConnection>> = lock(&self.inner.pool).values().cloned().collect();
        for node in nodes {
            let connection = node
                .connection
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(connection) = connection {
                connection.close(VarInt::from_u32(APP_NO_ERROR), b"client closed");
            }
        }
        let endpoints = lock(&self.inner.endpoints).clone();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for endpoint in endpoints {
                endpoint.wait_idle().await;
            }
        })
        .await;
    }

    fn node(&self, addr: &str) -> Arc<NodeConnection> {
        let mut pool = lock(&self.inner.pool);
        if let Some(node) = pool.get(addr) {
            return Arc::clone(node);
        }
        let node = Arc::new(NodeConnection::new(addr.to_owned(), None));
        pool.insert(addr.to_owned(), Arc::clone(&node));
        node
    }

    fn is_connected(&self, addr: &str) -> bool {
        lock(&self.inner.pool)
            .get(addr)
            .is_some_and(|node| node.live().is_some())
    }

    /// The node's open connection, dialing one if it has none or lost it. A failed dial
    /// marks the node dead (see [Routing](Client#routing)).
    async fn connection(&self, node: &NodeConnection) -> Result<quinn::Connection, ClientError> {
        if let Some(connection) = node.live() {
            return Ok(connection);
        }
        let closed = || ClientError::ConnectionLost {
            reason: "the client was closed".to_owned(),
            outcome: WriteOutcome::Definite,
        };
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        let dials_seen = node.dials.load(Ordering::SeqCst);
        let _dialing = node.dial.lock().await;
        if let Some(connection) = node.live() {
            return Ok(connection);
        }
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        if node.dials.load(Ordering::SeqCst) != dials_seen {
            // A dial finished while this request waited, and did not leave a connection.
            if let Some(e) = lock(&node.last_failure).clone() {
                return Err(e);
            }
        }
        tracing::debug!(addr = %node.addr, "dialing");
        let dialed = async {
            let addr = resolve(&node.addr, self.inner.options.connect_timeout).await?;
            let endpoint = endpoint_for(&mut lock(&self.inner.endpoints), addr)?;
            dial(
                &endpoint,
                &self.inner.quic,
                addr,
                &self.inner.server_name,
                &self.inner.options,
            )
            .await
        }
        .await;
        node.dials.fetch_add(1, Ordering::SeqCst);
        match dialed {
            Ok(connection) => {
                *node
                    .connection
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
                *lock(&node.last_failure) = None;
                self.routes().node_ok(&node.addr);
                if self.inner.closed.load(Ordering::SeqCst) {
                    // `close` ran while this dial was under way and did not see it.
                    connection.close(VarInt::from_u32(APP_NO_ERROR), b"client closed");
                    return Err(closed());
                }
                Ok(connection)
            }
            Err(e) => {
                tracing::debug!(addr = %node.addr, error = %e, "dial failed");
                // Unreachable, or not a node this client can talk to (its certificate):
                // either way, route around it for a while.
                self.routes().node_failed(&node.addr, Instant::now());
                *lock(&node.last_failure) = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Sends `request` with `payload` (a produce's one batch; empty otherwise) and returns
    /// the broker's response and its payload (a successful fetch's batches; empty
    /// otherwise) as they came, `Response::Error` and per-kind errors included. The
    /// response is checked to answer this request (id and kind).
    ///
    /// The request is routed like the typed calls (see [Routing](Client#routing)): a
    /// `Produce`, `Fetch` or `ListOffsets` to the partition's leader, following
    /// `NotLeader` redirects; anything else to any live node. So a response is the last
    /// node's answer.
    pub async fn request(
        &self,
        request: Request,
        payload: &[u8],
    ) -> Result<(Response, Vec<u8>), ClientError> {
        let (response, payload) = self
            .request_bytes(request, &Bytes::copy_from_slice(payload))
            .await?;
        Ok((response, Vec::from(payload)))
    }

    /// [`Client::request`], the request payload handed to QUIC as it is and the response
    /// payload a slice of the response frame as it was read (no copy either way).
    async fn request_bytes(
        &self,
        request: Request,
        payload: &Bytes,
    ) -> Result<(Response, Bytes), ClientError> {
        let prepared = self.prepare(&request, payload)?;
        match request.partition() {
            Some((topic, partition)) => self.to_leader(topic, partition, &prepared, payload).await,
            None => self.to_any(&prepared, payload).await,
        }
    }

    /// A live node to send an any-node request to, not one of `tried`: see
    /// [`Routes::candidates`]; among those, one already connected first.
    fn pick_any(&self, tried: &[String]) -> Option<String> {
        let candidates = self.routes().candidates(Instant::now(), tried);
        let connected = candidates.iter().position(|a| self.is_connected(a));
        let index = connected.unwrap_or(0);
        candidates.into_iter().nth(index)
    }

    fn no_node(&self) -> ClientError {
        ClientError::Connect {
            addr: self.inner.addr,
            reason: "no cluster node left to try".to_owned(),
            retriable: true,
        }
    }

    /// Asks for a background metadata refresh (including `topic`): single flight, at
    /// most one started per `REFRESH_INTERVAL_MIN`.
    fn refresh(&self, topic: Option<&str>) {
        if self.inner.closed.load(Ordering::SeqCst) {
            return;
        }
        if !self.routes().request_refresh(topic) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(refresher(Arc::downgrade(&self.inner)));
            }
            Err(_) => self.routes().abandon_refresh(),
        }
    }

    /// A request any node can serve, falling back to the next node while the failure
    /// guarantees the request was not acted on.
    async fn to_any(
        &self,
        prepared: &Prepared,
        payload: &Bytes,
    ) -> Result<(Response, Bytes), ClientError> {
        let mut tried: Vec<String> = Vec::new();
        // The first node's failure: what the caller gets when no other node does better
        // (a fallback node's own failure says less about why the call failed).
        let mut first = None;
        loop {
            let Some(target) = self.pick_any(&tried) else {
                return first.unwrap_or_else(|| Err(self.no_node()));
            };
            let result = self.request_on(&target, prepared, payload).await;
            if let Ok((Response::Metadata(Ok(meta)), _)) = &result {
                self.routes().apply_metadata(meta);
            }
            let fall_back = match &result {
                Err(ClientError::Connect { .. }) => true,
                Err(ClientError::ConnectionLost { outcome, .. }) => {
                    *outcome == WriteOutcome::Definite
                }
                Err(e) => is_shutting_down(e),
                Ok((response, _)) => response
                    .error()
                    .is_some_and(|e| e.code == ErrorCode::ShuttingDown),
            };
            if !fall_back {
                return match (result, first) {
                    (Err(_), Some(first)) => first,
                    (result, _) => result,
                };
            }
            let shutting_down = match &result {
                Err(e) => is_shutting_down(e),
                Ok(_) => true,
            };
            if shutting_down {
                // Prefer the others a while. (A failed dial, or a connection closed for
                // shutdown, has marked it already.)
                self.routes().node_failed(&target, Instant::now());
            }
            tracing::debug!(addr = %target, kind = prepared.kind.as_str(), "trying another node");
            tried.push(target);
            first.get_or_insert(result);
        }
    }

    /// A partition-addressed request: to the cached leader (or any node), following
    /// `NotLeader` redirects; see [Routing](Client#routing).
    async fn to_leader(
        &self,
        topic: &str,
        partition: u32,
        prepared: &Prepared,
        payload: &Bytes,
    ) -> Result<(Response, Bytes), ClientError> {
        // (The routes lock is released at the end of this statement: `refresh` and
        // `pick_any` take it again.)
        let (leader, look_up) = match self.routes().route(topic, partition, Instant::now()) {
            Route::Leader(addr) => (Some(addr.to_owned()), false),
            Route::LookUp => (None, true),
            Route::Anywhere => (None, false),
        };
        if look_up {
            // Not known, or on a node that is down: look it up (in the background,
            // rate-bounded) and meanwhile let any node forward or redirect.
            self.refresh(Some(topic));
        }
        let mut target = match leader {
            Some(addr) => addr,
            None => self.pick_any(&[]).ok_or_else(|| self.no_node())?,
        };
        let mut redirects = 0;
        // A long-poll fetch may rightly wait; everything else is watched for a leader
        // that moved away from a node that stopped answering.
        let watched = !matches!(prepared.kind, RequestKind::Fetch);
        loop {
            let result = if watched {
                let sent = AtomicBool::new(false);
                tokio::select! {
                    r = self.request_on_tracked(&target, prepared, payload, &sent) => r,
                    moved = self.leader_moved(topic, partition, &target, &sent) => {
                        tracing::debug!(
                            topic,
                            partition,
                            from = %target,
                            to = %moved,
                            "the leader moved while a request waited: abandoned"
                        );
                        if moved != target {
                            // Silent while another node leads: presumed dead, and so is
                            // its connection (were it to come back, a fresh dial finds it;
                            // an old connection would wait out its idle timeout).
                            self.routes().node_failed(&target, Instant::now());
                            self.drop_connection(&target);
                        }
                        // Once sent, it may have been appended before the old leader
                        // went quiet; before, nothing was.
                        return Err(ClientError::Timeout {
                            after: LEADER_PROBE,
                            outcome: outcome(sent.load(Ordering::SeqCst)),
                        });
                    }
                }
            } else {
                self.request_on(&target, prepared, payload).await
            };
            let error = match &result {
                Ok((response, _)) => match response.error() {
                    None => return result,
                    Some(e) => e,
                },
                Err(e) => {
                    if is_node_failure(e) {
                        if is_shutting_down(e) {
                            self.routes().node_failed(&target, Instant::now());
                        }
                        self.routes().invalidate(topic, partition);
                        self.refresh(Some(topic));
                    }
                    return result;
                }
            };
            match error.code {
                ErrorCode::NotLeader => {
                    let (leader, addr) = match &error.detail {
                        ErrorDetail::NotLeader { leader, addr } => (*leader, addr.as_deref()),
                        _ => (None, None),
                    };
                    let next = self.routes().apply_not_leader(
                        topic,
                        partition,
                        leader,
                        addr,
                        Instant::now(),
                    );
                    match next {
                        Some(next) if redirects < REDIRECTS_MAX && next != target => {
                            tracing::debug!(
                                topic,
                                partition,
                                from = %target,
                                to = %next,
                                "NotLeader: re-sending to the leader"
                            );
                            redirects += 1;
                            target = next;
                            continue;
                        }
                        _ => {
                            self.routes().invalidate(topic, partition);
                            self.refresh(Some(topic));
                        }
                    }
                }
                ErrorCode::ShuttingDown | ErrorCode::RequestTimedOut | ErrorCode::Interrupted => {
                    if error.code == ErrorCode::ShuttingDown {
                        self.routes().node_failed(&target, Instant::now());
                    }
                    self.routes().invalidate(topic, partition);
                    self.refresh(Some(topic));
                }
                _ => {}
            }
            return result;
        }
    }

    /// Resolves once another node reports a different leader for the partition than
    /// `target` (the node a request is waiting on): every [`LEADER_PROBE`] without an
    /// answer, one bounded `Metadata` request to another live node. Never resolves
    /// while `target` still leads or no other node answers.
    async fn leader_moved(
        &self,
        topic: &str,
        partition: u32,
        target: &str,
        sent: &AtomicBool,
    ) -> String {
        // Nodes that did not answer a probe are skipped for the rest of this watch (a
        // connection to a node that was killed and restarted looks open until its idle
        // timeout).
        let mut skip = vec![target.to_owned()];
        let mut confirmed = 0;
        loop {
            tokio::time::sleep(LEADER_PROBE).await;
            // Another request's probe may have learnt the new leader already.
            let cached = self
                .routes()
                .leader_addr(topic, partition, Instant::now())
                .map(str::to_owned);
            if let Some(addr) = cached.filter(|a| a != target) {
                return addr;
            }
            {
                let mut last = lock(&self.inner.last_probe);
                let now = Instant::now();
                if last.is_some_and(|t| now.duration_since(t) < PROBE_INTERVAL_MIN) {
                    continue;
                }
                *last = Some(now);
            }
            let Some(other) = self.pick_any(&skip) else {
                skip.truncate(1);
                continue;
            };
            if other == target {
                continue;
            }
            let request = Request::Metadata {
                topics: Some(vec![topic.to_owned()]),
            };
            let Ok(probe) = self.prepare(&request, &[]) else {
                continue;
            };
            let none = Bytes::new();
            let answer = tokio::time::timeout(LEADER_PROBE, self.request_on(&other, &probe, &none));
            if let Ok(Ok((Response::Metadata(Ok(meta)), _))) = answer.await {
                let leader = meta
                    .topics
                    .iter()
                    .find(|t| t.name == topic)
                    .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
                    .and_then(|p| p.leader);
                let moved = leader.and_then(|l| {
                    meta.brokers
                        .iter()
                        .find(|b| b.node_id == l)
                        .map(|b| b.addr.clone())
                });
                match moved {
                    Some(addr) if addr != target => {
                        self.routes().apply_metadata(&meta);
                        return addr;
                    }
                    // Still the leader, yet silent once the request went out: after a
                    // few confirmations its connection is presumed stale (the node
                    // restarted); drop it so the retry dials afresh. (A dial in
                    // progress has its own timeout.)
                    Some(_) if sent.load(Ordering::SeqCst) => {
                        confirmed += 1;
                        if confirmed >= STALE_CONFIRMATIONS {
                            self.drop_connection(target);
                            return target.to_owned();
                        }
                    }
                    _ => {}
                }
            } else {
                self.drop_connection(&other);
                self.routes().node_failed(&other, Instant::now());
                skip.push(other);
            }
        }
    }

    /// Closes the connection to `addr`, if any, so the next request dials again.
    fn drop_connection(&self, addr: &str) {
        let node = lock(&self.inner.pool).get(addr).cloned();
        if let Some(connection) = node.and_then(|n| n.live()) {
            connection.close(VarInt::from_u32(APP_NO_ERROR), b"unresponsive");
        }
    }

    /// Encodes and checks the request's frame head, before any node is chosen: what the
    /// limits refuse is refused locally, with nothing sent anywhere.
    fn prepare(&self, request: &Request, payload: &[u8]) -> Result<Prepared, ClientError> {
        let options = &self.inner.options;
        let wait_ms = match request {
            Request::Produce { timeout_ms, .. } => *timeout_ms,
            Request::Fetch { max_wait_ms, .. } => *max_wait_ms,
            _ => 0,
        };
        let deadline = options
            .request_timeout
            .saturating_add(Duration::from_millis(u64::from(wait_ms)));
        let request_id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::new(request_id, options.client_id.clone());
        let head = encode_request_head(&header, request, payload.len(), &options.frame_limits)
            .map_err(ClientError::InvalidRequest)?;
        Ok(Prepared {
            request_id,
            kind: request.kind(),
            head,
            deadline,
        })
    }

    /// One exchange with the node at `addr` (dialing it if needed), within the request's
    /// deadline. A re-sent request (after `NotLeader`) keeps its request id.
    async fn request_on(
        &self,
        addr: &str,
        prepared: &Prepared,
        payload: &Bytes,
    ) -> Result<(Response, Bytes), ClientError> {
        let sent = AtomicBool::new(false);
        self.request_on_tracked(addr, prepared, payload, &sent)
            .await
    }

    /// [`Client::request_on`], telling `sent` when the request has started to leave.
    async fn request_on_tracked(
        &self,
        addr: &str,
        prepared: &Prepared,
        payload: &Bytes,
        sent: &AtomicBool,
    ) -> Result<(Response, Bytes), ClientError> {
        let node = self.node(addr);
        let exchanged = tokio::time::timeout(
            prepared.deadline,
            self.exchange(&node, prepared, payload, sent),
        )
        .await;
        let result = match exchanged {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                after: prepared.deadline,
                outcome: outcome(sent.load(Ordering::SeqCst)),
            }),
        };
        if matches!(result, Err(ClientError::ConnectionLost { .. })) && node.closed_for_shutdown() {
            // The node said it is going away: route around it for a while.
            self.routes().node_failed(addr, Instant::now());
        }
        result
    }

    async fn exchange(
        &self,
        node: &NodeConnection,
        prepared: &Prepared,
        payload: &Bytes,
        sent: &AtomicBool,
    ) -> Result<(Response, Bytes), ClientError> {
        let Prepared {
            request_id,
            kind,
            ref head,
            ..
        } = *prepared;
        let limits = &self.inner.options.frame_limits;
        let connection = self.connection(node).await?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| connection_lost(&e, false))?;
        let mut stream = Exchange {
            send,
            recv,
            done: false,
        };

        let written = async {
            stream.send.write_all(head).await?;
            if !payload.is_empty() {
                // QUIC keeps the chunk (a reference) until it is acknowledged: no copy.
                stream.send.write_chunk(payload.clone()).await?;
            }
            Ok::<(), WriteError>(())
        }
        .await;
        match written {
            Ok(()) => {
                if stream.send.finish().is_ok() {
                    sent.store(true, Ordering::SeqCst);
                }
            }
            // The broker stopped reading; it answers before it stops when it can.
            Err(WriteError::Stopped(_)) => {}
            Err(WriteError::ConnectionLost(e)) => return Err(connection_lost(&e, false)),
            Err(e @ (WriteError::ClosedStream | WriteError::ZeroRttRejected)) => {
                return Err(ClientError::Protocol {
                    reason: format!("writing the request: {e}"),
                    outcome: WriteOutcome::Definite,
                })
            }
        }
        let sent_now = || sent.load(Ordering::SeqCst);

        let mut prefix = [0u8; FRAME_LEN_BYTES];
        match stream.recv.read_exact(&mut prefix).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(_)) => {
                return Err(protocol(
                    "the broker ended the stream without a response",
                    sent_now(),
                ))
            }
            Err(ReadExactError::ReadError(e)) => return Err(read_failed(e, sent_now())),
        }
        let len = read_frame_len(prefix, limits)
            .map_err(|e| protocol(format!("response frame: {e}"), sent_now()))?;
        let mut frame = Vec::new();
        if frame.try_reserve_exact(len).is_err() {
            return Err(protocol("cannot allocate the response frame", sent_now()));
        }
        while frame.len() < len {
            match stream.recv.read_chunk(len - frame.len(), true).await {
                Ok(Some(chunk)) => frame.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(protocol("the response frame is truncated", sent_now())),
                Err(e) => return Err(read_failed(e, sent_now())),
            }
        }
        loop {
            match stream.recv.read_chunk(usize::MAX, true).await {
                Ok(None) => break,
                Ok(Some(chunk)) if chunk.bytes.is_empty() => continue,
                Ok(Some(_)) => return Err(protocol("bytes after the response frame", sent_now())),
                Err(e) => return Err(read_failed(e, sent_now())),
            }
        }
        stream.done = true;

        let (header, response, payload_len) = decode_response(&frame, limits)
            .map(|(h, r, p)| (h, r, p.len()))
            .map_err(|e| protocol(format!("response: {e}"), sent_now()))?;
        // A frame too malformed to carry an id is answered with id 0 (always an `Error`).
        let id_ok = header.request_id == request_id
            || (header.request_id == 0 && matches!(response, Response::Error(_)));
        if !id_ok {
            return Err(protocol(
                format!(
                    "response to request {} on the stream of request {request_id}",
                    header.request_id
                ),
                sent_now(),
            ));
        }
        if let Some(answered) = response.kind() {
            if answered != kind {
                return Err(protocol(
                    format!(
                        "a {} response to a {} request",
                        answered.as_str(),
                        kind.as_str()
                    ),
                    sent_now(),
                ));
            }
        }
        // The payload is the frame's tail: handed over as a slice of it, not moved to
        // the front of the buffer (a fetch's payload is most of a MiB).
        let payload = if payload_len == 0 {
            Bytes::new()
        } else {
            let start = frame.len().saturating_sub(payload_len);
            Bytes::from(frame).slice(start..)
        };
        Ok((response, payload))
    }

    /// Brokers and partition leaders: of the named topics, of every topic (`None`), or
    /// brokers only (`Some(vec![])`). A topic that is unknown is reported in its
    /// `TopicMetadata::error`, not as an `Err`.
    pub async fn metadata(&self, topics: Option<Vec<String>>) -> Result<MetadataOk, ClientError> {
        let (response, _) = self.request(Request::Metadata { topics }, &[]).await?;
        unpack!(response, Metadata)
    }

    /// Creates a topic with `partitions` partitions (`config` fields left `None` take the
    /// broker's defaults).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicSummary, ClientError> {
        let request = Request::CreateTopic {
            name: name.to_owned(),
            partitions,
            config,
        };
        let (response, _) = self.request(request, &[]).await?;
        unpack!(response, CreateTopic)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = Request::DeleteTopic {
            name: name.to_owned(),
        };
        let (response, _) = self.request(request, &[]).await?;
        unpack!(response, DeleteTopic)
    }

    /// Every topic with its partition count.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>, ClientError> {
        let (response, _) = self.request(Request::ListTopics, &[]).await?;
        unpack!(response, ListTopics)
    }

    /// A topic's config and, per partition, leader, replicas, log start, high watermark
    /// and size.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        let request = Request::DescribeTopic {
            name: name.to_owned(),
        };
        let (response, _) = self.request(request, &[]).await?;
        unpack!(response, DescribeTopic)
    }

    /// The earliest, latest or first-at-timestamp offset of a partition.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<OffsetOk, ClientError> {
        let request = Request::ListOffsets {
            topic: topic.to_owned(),
            partition,
            spec,
        };
        let (response, _) = self.request(request, &[]).await?;
        unpack!(response, ListOffsets)
    }

    /// The cluster id, the answering node, the controller and the brokers.
    pub async fn describe_cluster(&self) -> Result<ClusterInfo, ClientError> {
        let (response, _) = self.request(Request::DescribeCluster, &[]).await?;
        unpack!(response, DescribeCluster)
    }

    /// Every node with its liveness and load, as the answering node sees it.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        let (response, _) = self.request(Request::ClusterStatus, &[]).await?;
        unpack!(response, ClusterStatus)
    }

    /// Creates a topic with `partitions` partitions, each replicated on
    /// `replication_factor` nodes (`None`: the cluster's default, 3 when it has 3 or more
    /// nodes). `config` fields left `None` take the broker's defaults.
    pub async fn create_topic_replicated(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u32>,
        config: TopicConfig,
    ) -> Result<TopicSummary, ClientError> {
        let request = Request::CreateTopicReplicated {
            name: name.to_owned(),
            partitions,
            replication_factor,
            config,
        };
        let (response, _) = self.request(request, &[]).await?;
        unpack!(response, CreateTopic)
    }

    /// A new idempotent producer id and epoch (`InitProducer`): stamp them on every batch,
    /// with per-partition base sequences from 0.
    pub async fn init_producer(&self) -> Result<ProducerIdOk, ClientError> {
        let (response, _) = self.request(Request::InitProducer, &[]).await?;
        unpack!(response, InitProducer)
    }

    /// Appends one record batch (as built by `sluice_proto::BatchBuilder`) to a partition
    /// and returns its offsets once it is as durable as `acks` asks. The broker waits up
    /// to `timeout_ms` (1..=`wait_ms_max`) for that durability. On failure, see
    /// [`ClientError::write_outcome`] before retrying.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        batch: &[u8],
        acks: Acks,
        timeout_ms: u32,
    ) -> Result<ProduceOk, ClientError> {
        self.produce_bytes(
            topic,
            partition,
            &Bytes::copy_from_slice(batch),
            acks,
            timeout_ms,
        )
        .await
    }

    /// [`Client::produce`] with the batch handed to QUIC as it is (the producer's path:
    /// a batch is sent, and retried, without being copied).
    pub(crate) async fn produce_bytes(
        &self,
        topic: &str,
        partition: u32,
        batch: &Bytes,
        acks: Acks,
        timeout_ms: u32,
    ) -> Result<ProduceOk, ClientError> {
        let request = Request::Produce {
            topic: topic.to_owned(),
            partition,
            acks,
            timeout_ms,
        };
        let (response, _) = self.request_bytes(request, batch).await?;
        unpack!(response, Produce)
    }

    /// Whole stored batches of a partition from the one holding `offset`, up to the high
    /// watermark and about `max_bytes` (the first batch is returned whole); waits up to
    /// `max_wait_ms` for data when there is none. The batches are returned as stored: read
    /// them with `sluice_proto::batches`, which validates each one, and skip records below
    /// `offset`.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<(FetchOk, Bytes), ClientError> {
        let request = Request::Fetch {
            topic: topic.to_owned(),
            partition,
            offset,
            max_bytes,
            max_wait_ms,
        };
        let (response, payload) = self.request_bytes(request, &Bytes::new()).await?;
        let ok = unpack!(response, Fetch)?;
        Ok((ok, payload))
    }
}

/// Maps a response to its kind's success value or a `Broker` error. `request` has already
/// checked the kind, so the last arm only guards against that check changing.
macro_rules! unpack {
    ($response:expr, $variant:ident) => {
        match $response {
            Response::$variant(Ok(ok)) => Ok(ok),
            Response::$variant(Err(e)) | Response::Error(e) => Err(ClientError::Broker(e)),
            other => Err(protocol(
                format!("unexpected response {:?}", other.kind()),
                true,
            )),
        }
    };
}
use unpack;

/// A request's encoded frame head, checked against the limits, and its deadline.
#[derive(Debug)]
struct Prepared {
    request_id: u64,
    kind: RequestKind,
    head: Vec<u8>,
    deadline: Duration,
}

/// A failure that says the node may be unreachable or leaving: its partitions' leaders
/// are worth looking up again.
fn is_node_failure(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. }
    ) || is_shutting_down(e)
}

/// The node refused the request unread because it is shutting down.
fn is_shutting_down(e: &ClientError) -> bool {
    matches!(e, ClientError::Refused { code } if *code == CONNECTION_ERROR_SHUTDOWN)
}

/// The background metadata refresher: runs rounds while they are asked for, each at
/// least `REFRESH_INTERVAL_MIN` after the last one started. Holds the client only
/// weakly between rounds, so it never keeps a dropped client alive for long.
async fn refresher(inner: Weak<Inner>) {
    loop {
        let wait = match inner.upgrade() {
            Some(inner) => lock(&inner.routes).refresh_wait(Instant::now()),
            None => return,
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let client = Client { inner };
        if client.inner.closed.load(Ordering::SeqCst) {
            client.routes().abandon_refresh();
            return;
        }
        let topics = client.routes().start_refresh(Instant::now());
        tracing::debug!(?topics, "refreshing metadata");
        // An answer updates the routes on its way (`to_any`).
        if let Err(e) = client.metadata(Some(topics)).await {
            tracing::debug!(error = %e, "metadata refresh failed");
        }
        if !client.routes().finish_refresh() {
            return;
        }
    }
}

/// The client endpoint for `addr`'s address family, opened if there is none yet.
fn endpoint_for(endpoints: &mut Vec<Endpoint>, addr: SocketAddr) -> Result<Endpoint, ClientError> {
    let family = |e: &Endpoint| e.local_addr().is_ok_and(|l| l.is_ipv6() == addr.is_ipv6());
    if let Some(endpoint) = endpoints.iter().find(|e| family(e)) {
        return Ok(endpoint.clone());
    }
    let bind: SocketAddr = if addr.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    // The broker may send packets as large as path MTU discovery finds room for.
    let config = sluice_quic::endpoint_config()
        .map_err(|e| ClientError::Config(format!("UDP payload size: {e}")))?;
    let endpoint = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime found"))
        .and_then(|runtime| {
            // Room for a fetch's burst of packets (the kernel may grant less).
            let (socket, _) = sluice_quic::bind_udp(bind)?;
            Endpoint::new(config, None, socket, runtime)
        })
        .map_err(|e| ClientError::Connect {
            addr,
            reason: format!("cannot open a UDP socket (is a tokio runtime running?): {e}"),
            retriable: false,
        })?;
    endpoints.push(endpoint.clone());
    Ok(endpoint)
}

/// A node address (`host:port`) as a socket address: parsed, or looked up in DNS (the
/// first answer) within `timeout`.
async fn resolve(addr: &str, timeout: Duration) -> Result<SocketAddr, ClientError> {
    if let Ok(parsed) = addr.parse::<SocketAddr>() {
        return Ok(parsed);
    }
    let failed = |reason: String| {
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(0);
        ClientError::Connect {
            addr: (Ipv4Addr::UNSPECIFIED, port).into(),
            reason,
            retriable: true,
        }
    };
    match tokio::time::timeout(timeout, tokio::net::lookup_host(addr)).await {
        Ok(Ok(mut found)) => found
            .next()
            .ok_or_else(|| failed(format!("{addr} resolves to no address"))),
        Ok(Err(e)) => Err(failed(format!("cannot resolve {addr}: {e}"))),
        Err(_) => Err(failed(format!("cannot resolve {addr} within {timeout:?}"))),
    }
}

/// The open stream of one request. Dropped before the response was read (a deadline, a
/// dropped future, an error), it resets and stops with `STREAM_ERROR_CANCELLED`, telling
/// the broker to stop working on it.
struct Exchange {
    send: SendStream,
    recv: RecvStream,
    done: bool,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.send.reset(VarInt::from_u32(STREAM_ERROR_CANCELLED));
            let _ = self.recv.stop(VarInt::from_u32(STREAM_ERROR_CANCELLED));
        }
    }
}

async fn dial(
    endpoint: &Endpoint,
    quic: &quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    options: &ClientOptions,
) -> Result<quinn::Connection, ClientError> {
    let connecting = endpoint
        .connect_with(quic.clone(), addr, server_name)
        .map_err(|e| ClientError::Connect {
            addr,
            reason: e.to_string(),
            retriable: false,
        })?;
    match tokio::time::timeout(options.connect_timeout, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(ClientError::Connect {
            addr,
            reason: e.to_string(),
            retriable: !is_tls_failure(&e),
        }),
        Err(_) => Err(ClientError::Connect {
            addr,
            reason: format!("no handshake within {:?}", options.connect_timeout),
            retriable: true,
        }),
    }
}

/// A TLS alert (QUIC crypto error 0x100..=0x1ff: untrusted certificate, ALPN mismatch):
/// trying again will not help.
fn is_tls_failure(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::TransportError(t) => (0x100..0x200).contains(&u64::from(t.code)),
        ConnectionError::ConnectionClosed(c) => (0x100..0x200).contains(&u64::from(c.error_code)),
        _ => false,
    }
}

fn outcome(sent: bool) -> WriteOutcome {
    if sent {
        WriteOutcome::Indeterminate
    } else {
        WriteOutcome::Definite
    }
}

fn protocol(reason: impl Into<String>, sent: bool) -> ClientError {
    ClientError::Protocol {
        reason: reason.into(),
        outcome: outcome(sent),
    }
}

/// A lost connection: definite if the request never left, indeterminate after (even a
/// `CONNECTION_ERROR_SHUTDOWN` close may cut off the answer to a request that was acted
/// on, PROTOCOL.md "Shutdown").
fn connection_lost(e: &ConnectionError, sent: bool) -> ClientError {
    // A shutdown close (code 6) after the grace period cuts off answers the broker may
    // already have acted on, so a request that left is indeterminate even then; only
    // one that never left is definite.
    ClientError::ConnectionLost {
        reason: e.to_string(),
        outcome: outcome(sent),
    }
}

fn read_failed(e: ReadError, sent: bool) -> ClientError {
    match e {
        ReadError::Reset(code) => {
            let code = u32::try_from(code.into_inner()).unwrap_or(u32::MAX);
            if is_refusal(code) || code == STREAM_ERROR_MALFORMED {
                ClientError::Refused { code }
            } else {
                protocol(format!("the broker reset the stream (code {code})"), sent)
            }
        }
        ReadError::ConnectionLost(e) => connection_lost(&e, sent),
        e @ (ReadError::ClosedStream
        | ReadError::IllegalOrderedRead
        | ReadError::ZeroRttRejected) => protocol(format!("reading the response: {e}"), sent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    /// The SDK's TLS lists AES-128-GCM first, and a stock rustls server, which follows
    /// the client's order as the broker's does, settles on it.
    #[test]
    fn a_handshake_settles_on_aes_128_gcm() {
        let dir = tempfile::tempdir().unwrap();
        let dev = sluice_gateway::ensure_dev_certificates(dir.path()).unwrap();
        let client = ClientTls::ca_file(&dev.ca_pem).rustls_config().unwrap();
        let certs = CertificateDer::pem_file_iter(&dev.cert_pem)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&dev.key_pem).unwrap();
        let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        server_config.alpn_protocols = vec![ALPN.to_vec()];
        let name = ServerName::try_from(SERVER_NAME_DEFAULT).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        // Shuttle the flights between the two in memory until both are done.
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        let suite = s.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}
