//! Cluster certificates: the files, CA reuse, and what a node certificate verifies for.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::{fast_config, init_tracing, wait_until, Node, WAIT};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sluice_peer::{
    node_files, node_server_name, write_cluster_certs, CertError, ClusterCa, PeerTls,
};

fn cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

fn verifiers(ca_pem: &Path) -> (Arc<WebPkiServerVerifier>, Arc<dyn ClientCertVerifier>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert(ca_pem)).unwrap();
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .unwrap();
    let client = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .unwrap();
    (server, client)
}

fn verifies_for(verifier: &WebPkiServerVerifier, leaf: &CertificateDer<'_>, name: &str) -> bool {
    let name = match name.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(name.to_owned()).unwrap(),
    };
    verifier
        .verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
        .is_ok()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn write_cluster_certs_lays_out_files_and_keeps_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    write_cluster_certs(
        dir,
        "test",
        &[
            (
                1,
                vec!["10.1.2.3".to_owned(), "broker-1.example".to_owned()],
            ),
            (2, vec![]),
        ],
    )
    .unwrap();
    for name in [
        "ca.pem",
        "ca.key",
        "node-1.pem",
        "node-1.key",
        "node-2.pem",
        "node-2.key",
    ] {
        assert!(dir.join(name).is_file(), "{name} missing");
    }
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir.join("node-1.key")), 0o600);
        assert_eq!(mode(&dir.join("node-1.pem")), 0o644);
    }
    let ca_pem = std::fs::read(dir.join("ca.pem")).unwrap();
    let ca_key = std::fs::read(dir.join("ca.key")).unwrap();

    // Adding a node later keeps the CA.
    write_cluster_certs(dir, "test", &[(3, vec!["::1".to_owned()])]).unwrap();
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_pem);
    assert_eq!(std::fs::read(dir.join("ca.key")).unwrap(), ca_key);

    let (server, client) = verifiers(&dir.join("ca.pem"));
    let node1 = cert(&dir.join("node-1.pem"));
    for name in [
        node_server_name(1).as_str(),
        "localhost",
        "127.0.0.1",
        "10.1.2.3",
        "broker-1.example",
    ] {
        assert!(verifies_for(&server, &node1, name), "node 1 for {name}");
    }
    assert!(!verifies_for(&server, &node1, &node_server_name(2)));
    assert!(!verifies_for(&server, &node1, "10.9.9.9"));
    let node3 = cert(&dir.join("node-3.pem"));
    assert!(verifies_for(&server, &node3, &node_server_name(3)));
    assert!(verifies_for(&server, &node3, "127.0.0.1"));
    assert!(verifies_for(&server, &node3, "::1"));
    // Client certificates too (the clientAuth EKU).
    for leaf in [&node1, &node3] {
        assert!(client
            .verify_client_cert(leaf, &[], UnixTime::now())
            .is_ok());
    }
    // Another CA's certificate does not verify.
    let other = ClusterCa::generate("other").unwrap();
    let foreign = other.issue_node(1, &[]).unwrap();
    let foreign = CertificateDer::from_pem_slice(foreign.cert_pem().as_bytes()).unwrap();
    assert!(!verifies_for(&server, &foreign, &node_server_name(1)));
    assert!(client
        .verify_client_cert(&foreign, &[], UnixTime::now())
        .is_err());
}

#[test]
fn a_ca_without_its_key_or_with_the_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_cluster_certs(dir.path(), "test", &[]).unwrap();
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
    let reloaded = ClusterCa::from_pem(&ca_pem, &ca_key).unwrap();
    assert_eq!(reloaded.cert_pem(), ca_pem);

    let other = ClusterCa::generate("other").unwrap();
    assert!(matches!(
        ClusterCa::from_pem(&ca_pem, &other.key_pem()),
        Err(CertError::Invalid(_))
    ));
    let node = reloaded.issue_node(1, &[]).unwrap();
    assert!(matches!(
        ClusterCa::from_pem(node.cert_pem(), node.key_pem()),
        Err(CertError::Invalid(_))
    ));
    std::fs::remove_file(dir.path().join("ca.key")).unwrap();
    assert!(matches!(
        write_cluster_certs(dir.path(), "test", &[(1, vec![])]),
        Err(CertError::MissingCaKey { .. })
    ));
    assert!(!dir.path().join("node-1.pem").exists());
}

/// Nodes whose certificates were issued by two calls link up: the CA was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_from_written_files_link_up() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    write_cluster_certs(dir.path(), "test", &[(1, vec![])]).unwrap();
    write_cluster_certs(dir.path(), "test", &[(3, vec![])]).unwrap();
    let load = |id| {
        let (ca, cert, key) = node_files(dir.path(), id);
        PeerTls::load(&ca, &cert, &key).unwrap()
    };
    let node1 = Node::start(fast_config(1, load(1)));
    let node3 = Node::start(fast_config(3, load(3)));
    node1.links.set_peer(3, node3.addr());
    node3.links.set_peer(1, node1.addr());
    assert!(wait_until(|| node1.connected_to(3) && node3.connected_to(1)).await);
    let answer = node1
        .links
        .forward(3, Bytes::from_static(b"hi"), WAIT)
        .await
        .unwrap();
    assert_eq!(answer, Bytes::from_static(b"node 3 answers 1: hi"));
    node1.links.shutdown().await;
    node3.links.shutdown().await;
}
