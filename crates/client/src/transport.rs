//! The SDK's QUIC transport: one connection to one broker, one bidirectional stream per
//! request (`proto/PROTOCOL.md`, "Frames and requests").
//!
//! A [`Client`] is cheap to clone and safe to share between tasks: clones share the
//! connection, and requests on it run concurrently, each on its own stream (the broker's
//! `in_flight_per_connection_max` bounds how many; further requests wait for stream
//! credit). When the connection is lost, the next request dials a new one; a request
//! that was open on the lost connection fails with
//! [`ClientError::ConnectionLost`] and is never retried here: retries, and their
//! safety for writes ([`ClientError::write_outcome`]), are the producer's business.
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

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{
    ConnectionError, Endpoint, IdleTimeout, ReadError, ReadExactError, RecvStream, SendStream,
    TransportConfig, VarInt, WriteError,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sluice_proto::wire::{
    decode_response, encode_request_head, read_frame_len, Acks, ClusterInfo, FetchOk, FrameLimits,
    MetadataOk, OffsetOk, OffsetSpec, ProduceOk, Request, RequestHeader, RequestKind, Response,
    TopicConfig, TopicDescription, TopicSummary, WriteOutcome, ALPN, APP_NO_ERROR, FRAME_LEN_BYTES,
    STREAM_ERROR_CANCELLED, STREAM_ERROR_MALFORMED,
};

use crate::error::{is_refusal, ClientError};

/// The server name a [`ClientTls`] checks by default: the dev certificate's.
pub const SERVER_NAME_DEFAULT: &str = "localhost";
/// Default [`ClientOptions::client_id`].
pub const CLIENT_ID_DEFAULT: &str = "sluice-rust";
/// Default [`ClientOptions::connect_timeout`].
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default [`ClientOptions::request_timeout`].
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default [`ClientOptions::idle_timeout`].
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default [`ClientOptions::keep_alive_interval`].
pub const KEEP_ALIVE_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);

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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
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
    /// The connection closes after this long without traffic. Default 30 s.
    pub idle_timeout: Duration,
    /// Keep-alive pings while idle, so the broker's idle timeout does not close a quiet
    /// client. Default 5 s.
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

/// A connection to one Sluice broker. `Clone + Send + Sync`; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    server_name: String,
    options: ClientOptions,
    endpoint: Endpoint,
    quic: quinn::ClientConfig,
    connection: RwLock<quinn::Connection>,
    /// Serializes reconnects, so concurrent requests on a lost connection dial once.
    reconnect: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    next_request_id: AtomicU64,
}

impl Client {
    /// Connects to the broker at `addr` with default [`ClientOptions`]. Must be called
    /// within a tokio runtime.
    pub async fn connect(addr: SocketAddr, tls: ClientTls) -> Result<Client, ClientError> {
        Client::connect_with(addr, tls, ClientOptions::default()).await
    }

    /// Connects to the broker at `addr`.
    pub async fn connect_with(
        addr: SocketAddr,
        tls: ClientTls,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let crypto = QuicClientConfig::try_from(tls.rustls_config()?)
            .map_err(|e| ClientError::Config(format!("QUIC TLS config: {e}")))?;
        let mut transport = TransportConfig::default();
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
        let bind: SocketAddr = if addr.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = Endpoint::client(bind).map_err(|e| ClientError::Connect {
            addr,
            reason: format!("cannot open a UDP socket (is a tokio runtime running?): {e}"),
            retriable: false,
        })?;
        let connection = dial(&endpoint, &quic, addr, &tls.server_name, &options).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                addr,
                server_name: tls.server_name,
                options,
                endpoint,
                quic,
                connection: RwLock::new(connection),
                reconnect: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
                next_request_id: AtomicU64::new(1),
            }),
        })
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Closes the connection (code `APP_NO_ERROR`) for every clone, waiting briefly for
    /// the close to reach the broker. Requests still open fail with `ConnectionLost`;
    /// later requests fail without reconnecting.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.current()
            .close(VarInt::from_u32(APP_NO_ERROR), b"client closed");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }

    fn current(&self) -> quinn::Connection {
        self.inner
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The open connection, dialing a new one if the last was lost.
    async fn connection(&self) -> Result<quinn::Connection, ClientError> {
        let current = self.current();
        if current.close_reason().is_none() {
            return Ok(current);
        }
        let closed = || ClientError::ConnectionLost {
            reason: "the client was closed".to_owned(),
            outcome: WriteOutcome::Definite,
        };
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        let _dialing = self.inner.reconnect.lock().await;
        let current = self.current();
        if current.close_reason().is_none() {
            return Ok(current);
        }
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        tracing::debug!(addr = %self.inner.addr, "reconnecting");
        let fresh = dial(
            &self.inner.endpoint,
            &self.inner.quic,
            self.inner.addr,
            &self.inner.server_name,
            &self.inner.options,
        )
        .await?;
        *self
            .inner
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
    }

    /// Sends `request` with `payload` (a produce's one batch; empty otherwise) and returns
    /// the broker's response and its payload (a successful fetch's batches; empty
    /// otherwise) as they came, `Response::Error` and per-kind errors included. The
    /// response is checked to answer this request (id and kind).
    pub async fn request(
        &self,
        request: Request,
        payload: &[u8],
    ) -> Result<(Response, Vec<u8>), ClientError> {
        let options = &self.inner.options;
        let kind = request.kind();
        let wait_ms = match &request {
            Request::Produce { timeout_ms, .. } => *timeout_ms,
            Request::Fetch { max_wait_ms, .. } => *max_wait_ms,
            _ => 0,
        };
        let deadline = options
            .request_timeout
            .saturating_add(Duration::from_millis(u64::from(wait_ms)));
        let request_id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::new(request_id, options.client_id.clone());
        let head = encode_request_head(&header, &request, payload.len(), &options.frame_limits)
            .map_err(ClientError::InvalidRequest)?;
        let sent = AtomicBool::new(false);
        let exchanged = tokio::time::timeout(
            deadline,
            self.exchange(request_id, kind, &head, payload, &sent),
        )
        .await;
        match exchanged {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                after: deadline,
                outcome: outcome(sent.load(Ordering::SeqCst)),
            }),
        }
    }

    async fn exchange(
        &self,
        request_id: u64,
        kind: RequestKind,
        head: &[u8],
        payload: &[u8],
        sent: &AtomicBool,
    ) -> Result<(Response, Vec<u8>), ClientError> {
        let limits = &self.inner.options.frame_limits;
        let connection = self.connection().await?;
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
                stream.send.write_all(payload).await?;
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
        let payload = if payload_len == 0 {
            Vec::new()
        } else {
            let start = frame.len().saturating_sub(payload_len);
            frame.drain(..start);
            frame
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
        let request = Request::Produce {
            topic: topic.to_owned(),
            partition,
            acks,
            timeout_ms,
        };
        let (response, _) = self.request(request, batch).await?;
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
    ) -> Result<(FetchOk, Vec<u8>), ClientError> {
        let request = Request::Fetch {
            topic: topic.to_owned(),
            partition,
            offset,
            max_bytes,
            max_wait_ms,
        };
        let (response, payload) = self.request(request, &[]).await?;
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
