//! Raw QUIC clients for tests that misbehave on purpose: a quinn connection like the
//! SDK's (TLS 1.3 with ring, the dev CA, any ALPN), one stream per exchange, and
//! hand-made request frames.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sluice_proto::wire::{
    decode_response, encode_request, split_frame, FrameLimits, Request, RequestHeader, Response,
    ResponseHeader, API_VERSION,
};

/// A quinn client connection that trusts the CA at `ca` and offers `alpn`.
pub async fn raw_connect(
    addr: SocketAddr,
    ca: &Path,
    alpn: &[&[u8]],
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA file") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("trust it");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with ring")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let quic = QuicClientConfig::try_from(tls).expect("a QUIC client config");
    let config = quinn::ClientConfig::new(Arc::new(quic));
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")).expect("bind");
    endpoint.set_default_client_config(config);
    endpoint
        .connect(addr, "localhost")
        .expect("start connecting")
        .await
}

/// What a raw stream got back.
#[derive(Debug, PartialEq, Eq)]
pub enum RawAnswer {
    /// A response frame that decodes.
    Response(ResponseHeader, Response),
    /// The server reset the stream with this code before answering.
    Reset(u32),
    /// The connection went away.
    Lost(String),
    /// The stream ended without a (whole) response.
    Empty,
}

/// Writes `bytes` on a new stream, finishes it if `finish`, and reads what comes back.
pub async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8], finish: bool) -> RawAnswer {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return RawAnswer::Lost(e.to_string()),
    };
    // A write may fail once the server stops reading; the answer still comes.
    let _ = send.write_all(bytes).await;
    if finish {
        let _ = send.finish();
    }
    let answer = read_answer(&mut recv).await;
    drop(send);
    answer
}

/// Reads a stream to its end and says what it carried.
pub async fn read_answer(recv: &mut quinn::RecvStream) -> RawAnswer {
    match recv.read_to_end(64 << 20).await {
        Ok(bytes) if bytes.is_empty() => RawAnswer::Empty,
        Ok(bytes) => {
            let limits = FrameLimits::default();
            let frame = split_frame(&bytes, &limits).expect("one whole response frame");
            let (header, response, _) = decode_response(frame, &limits).expect("a response");
            RawAnswer::Response(header, response)
        }
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            RawAnswer::Reset(u32::try_from(code.into_inner()).unwrap_or(u32::MAX))
        }
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e))) => {
            RawAnswer::Lost(e.to_string())
        }
        Err(e) => panic!("unexpected read error {e}"),
    }
}

/// A well-formed request frame (client id "raw").
pub fn frame(request_id: u64, request: &Request, payload: &[u8]) -> Vec<u8> {
    encode_request(
        &RequestHeader::new(request_id, "raw"),
        request,
        payload,
        &FrameLimits::default(),
    )
    .expect("encode a request")
}

/// A frame with a valid request header (api version 1, `request_id`, client id "raw")
/// followed by the `Request` variant number `variant` and `rest` as its fields.
pub fn frame_with_variant(request_id: u64, variant: u32, rest: &[u8]) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&API_VERSION.to_le_bytes());
    header.extend_from_slice(&request_id.to_le_bytes());
    header.extend_from_slice(&3u64.to_le_bytes());
    header.extend_from_slice(b"raw");
    header.extend_from_slice(&variant.to_le_bytes());
    header.extend_from_slice(rest);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(4 + header.len() as u32).to_le_bytes());
    frame.extend_from_slice(&(header.len() as u32).to_le_bytes());
    frame.extend_from_slice(&header);
    frame
}
