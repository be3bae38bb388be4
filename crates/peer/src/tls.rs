//! rustls and quinn configuration for peer links, and the identity check on accepted
//! connections.
//!
//! Both directions: TLS 1.3 only, ALPN [`ALPN`] required, the cluster CA as the only root,
//! no 0-RTT (a replayed forward would run twice). Dialers verify the acceptor's server
//! certificate for [`node_server_name`] of the peer they mean to reach; acceptors require
//! a client certificate chaining to the CA ([`WebPkiClientVerifier`]) and then check that
//! it names the node the dialer's hello claims ([`certificate_names_node`]).

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::certs::{node_server_name, PeerTls};
use crate::config::PeerConfig;
use crate::error::PeerError;
use crate::wire::ALPN;

/// Raft streams a dialer may have open towards us at once. The acceptor reads them one
/// after the other (per-link order), so a few are enough to keep the pipe full.
const RAFT_STREAMS_MAX: u32 = 8;

struct Material {
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn material(tls: &PeerTls) -> Result<Material, PeerError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| PeerError::Tls(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        let cert = cert.map_err(|e| bad("CA PEM", &e))?;
        roots.add(cert).map_err(|e| bad("CA certificate", &e))?;
    }
    if roots.is_empty() {
        return Err(PeerError::Tls("no CA certificate in ca_pem".to_owned()));
    }
    let chain = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate PEM", &e))?;
    if chain.is_empty() {
        return Err(PeerError::Tls("no certificate in cert_pem".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| bad("key PEM", &e))?;
    Ok(Material {
        roots: Arc::new(roots),
        chain,
        key,
    })
}

fn transport(config: &PeerConfig, accepting: bool) -> Result<Arc<TransportConfig>, PeerError> {
    let idle = IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| PeerError::Config("idle_timeout is too large".to_owned()))?;
    let mut transport = sluice_quic::transport_config();
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive));
    if accepting {
        // Raft streams (uni); the hello and forwards (bi).
        transport
            .max_concurrent_uni_streams(VarInt::from_u32(RAFT_STREAMS_MAX))
            .max_concurrent_bidi_streams(VarInt::from_u32(
                config.forward_in_flight_max.saturating_add(1),
            ));
    } else {
        // An acceptor never opens streams on a connection it accepted.
        transport
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_concurrent_bidi_streams(VarInt::from_u32(0));
    }
    Ok(Arc::new(transport))
}

/// The config of inbound connections: mutual TLS under the cluster CA.
pub(crate) fn server_config(config: &PeerConfig) -> Result<quinn::ServerConfig, PeerError> {
    let Material { roots, chain, key } = material(&config.tls)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .build()
        .map_err(|e| PeerError::Tls(format!("client verifier: {e}")))?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PeerError::Tls(format!("TLS 1.3 with ring: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| PeerError::Tls(format!("certificate and key: {e}")))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    crypto.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(crypto)
        .map_err(|e| PeerError::Tls(format!("QUIC server TLS config: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport(config, true)?);
    Ok(server)
}

/// The config of outbound connections: the CA as the only root, our certificate as the
/// client certificate.
pub(crate) fn client_config(config: &PeerConfig) -> Result<quinn::ClientConfig, PeerError> {
    let Material { roots, chain, key } = material(&config.tls)?;
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM first, as BoringSSL and Go order TLS 1.3's suites (rustls puts
    // AES-256 first): ten AES rounds a block instead of fourteen, on every byte sent
    // and received. The broker takes the client's order.
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PeerError::Tls(format!("TLS 1.3 with ring: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| PeerError::Tls(format!("client certificate and key: {e}")))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    crypto.enable_early_data = false;
    let crypto = QuicClientConfig::try_from(crypto)
        .map_err(|e| PeerError::Tls(format!("QUIC client TLS config: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport(config, false)?);
    Ok(client)
}

/// Whether the leaf certificate the peer of `conn` presented (already verified against
/// the CA by rustls) has the DNS SAN [`node_server_name`]`(node_id)`.
pub(crate) fn certificate_names_node(conn: &quinn::Connection, node_id: u64) -> bool {
    let Some(identity) = conn.peer_identity() else {
        return false;
    };
    let Ok(chain) = identity.downcast::<Vec<CertificateDer<'static>>>() else {
        return false;
    };
    let Some(leaf) = chain.first() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let expected = node_server_name(node_id);
    san.value.general_names.iter().any(
        |name| matches!(name, GeneralName::DNSName(dns) if dns.eq_ignore_ascii_case(&expected)),
    )
}
