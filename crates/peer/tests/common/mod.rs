//! Shared fixtures: a recording handler, fast-reconnecting configs, bounded waits, and a
//! raw quinn client that speaks the peer protocol by hand.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice_peer::{ClusterCa, PeerConfig, PeerHandler, PeerLinks, PeerTls};

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(8);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sluice_peer=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Records raft frames per sender; answers a forward with `node <id> answers <from>: <request>`,
/// after a delay for a request starting with `slow`; panics on the request `panic`.
#[derive(Debug)]
pub struct Recorder {
    pub node_id: u64,
    frames: Mutex<HashMap<u64, Vec<Bytes>>>,
}

impl Recorder {
    pub fn new(node_id: u64) -> Arc<Recorder> {
        Arc::new(Recorder {
            node_id,
            frames: Mutex::new(HashMap::new()),
        })
    }

    pub fn frames_from(&self, from: u64) -> Vec<Bytes> {
        self.frames
            .lock()
            .unwrap()
            .get(&from)
            .cloned()
            .unwrap_or_default()
    }

    pub fn total(&self) -> usize {
        self.frames.lock().unwrap().values().map(Vec::len).sum()
    }
}

impl PeerHandler for Recorder {
    fn raft(&self, from: u64, frame: Bytes) {
        self.frames
            .lock()
            .unwrap()
            .entry(from)
            .or_default()
            .push(frame);
    }

    fn forward(&self, from: u64, request: Bytes) -> BoxFuture<'static, Bytes> {
        let me = self.node_id;
        Box::pin(async move {
            assert!(request != b"panic"[..], "the handler panics on request");
            if request.starts_with(b"slow") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let mut answer = format!("node {me} answers {from}: ").into_bytes();
            answer.extend_from_slice(&request);
            Bytes::from(answer)
        })
    }
}

/// A config on a free loopback port with quick reconnects and failure detection.
pub fn fast_config(node_id: u64, tls: PeerTls) -> PeerConfig {
    let mut config = PeerConfig::new(node_id, "127.0.0.1:0".parse().unwrap(), tls);
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(300);
    config.keep_alive = Duration::from_millis(200);
    config.idle_timeout = Duration::from_secs(2);
    config.stream_stall_timeout = Duration::from_secs(2);
    config
}

pub fn tls_for(ca: &ClusterCa, node_id: u64) -> PeerTls {
    ca.issue_node(node_id, &[]).unwrap().peer_tls(ca.cert_pem())
}

/// A started node with a recorder.
pub struct Node {
    pub links: PeerLinks,
    pub recorder: Arc<Recorder>,
}

impl Node {
    pub fn start(config: PeerConfig) -> Node {
        let recorder = Recorder::new(config.node_id);
        let links = PeerLinks::start(config, recorder.clone()).unwrap();
        Node { links, recorder }
    }

    pub fn addr(&self) -> SocketAddr {
        self.links.local_addr()
    }

    pub fn connected_to(&self, peer: u64) -> bool {
        self.links
            .status()
            .iter()
            .any(|s| s.node_id == peer && s.connected)
    }
}

/// Polls `cond` every 10 ms until it holds or `WAIT` passes; returns whether it held.
pub async fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// A raw quinn client presenting `tls`'s certificate, for hand-made (mis)behaviour.
pub fn raw_client(tls: &PeerTls) -> (quinn::Endpoint, quinn::ClientConfig) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    crypto.alpn_protocols = vec![sluice_peer::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    (endpoint, quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Opens a uni stream on `conn`, writes `bytes`, finishes it. Errors are ignored: the
/// node may stop a garbage stream, or close the connection, before it is all written.
pub async fn write_uni(conn: &quinn::Connection, bytes: &[u8]) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
}

/// Sends `hello` as the hello (a bi stream) and returns whether the node accepted it.
pub async fn hello(conn: &quinn::Connection, hello: &[u8]) -> bool {
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return false;
    };
    let _ = send.write_all(hello).await;
    let _ = send.finish();
    matches!(
        tokio::time::timeout(WAIT, recv.read_to_end(0)).await,
        Ok(Ok(answer)) if answer.is_empty()
    )
}

/// A frame as the wire carries it.
pub fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}
