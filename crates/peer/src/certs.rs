//! The cluster CA and node certificates (rcgen).
//!
//! One CA per cluster signs one certificate per node. A node certificate names the node
//! (DNS SAN [`node_server_name`], `node-<id>.sluice.internal`) and the addresses it is
//! reached at, and carries both the server and the client EKU: the same certificate is
//! the node's server certificate (peer links and the client-facing gateway) and its client
//! certificate when it dials a peer. A client or node that trusts `ca.pem` can therefore
//! verify any node, and a node knows which node dialled it by the name in the
//! certificate.
//!
//! [`write_cluster_certs`] lays the files out in one directory:
//!
//! | file | what | mode |
//! |------|------|------|
//! | `ca.pem` | the CA certificate; every node and client trusts it | 0644 |
//! | `ca.key` | the CA's private key; needed only to issue node certificates | 0600 |
//! | `node-<id>.pem` | node `id`'s certificate | 0644 |
//! | `node-<id>.key` | its private key (PKCS#8) | 0600 |

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::CertError;

/// File name of the CA certificate in a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA key in a certificate directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// The DNS name that identifies node `node_id` in its certificate:
/// `node-<id>.sluice.internal`. Dialers verify a peer's server certificate against it, and
/// the accept side checks a dialer's client certificate for it.
pub fn node_server_name(node_id: u64) -> String {
    format!("node-{node_id}.sluice.internal")
}

/// File name of node `node_id`'s certificate: `node-<id>.pem`.
pub fn node_cert_file(node_id: u64) -> String {
    format!("node-{node_id}.pem")
}

/// File name of node `node_id`'s private key: `node-<id>.key` (mode 0600).
pub fn node_key_file(node_id: u64) -> String {
    format!("node-{node_id}.key")
}

/// A cluster's certificate authority: its certificate and the key that signs node
/// certificates.
pub struct ClusterCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    // The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new self-signed CA (ECDSA P-256) named after the cluster. It may sign node
    /// certificates only (path length 0).
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            format!("Sluice cluster CA: {cluster_name}"),
        );
        name.push(DnType::OrganizationName, "Sluice");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA loaded from its certificate and key (PEM). Fails when the certificate is not a
    /// CA certificate or the key is not the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, CertError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CertError::Invalid(format!("CA certificate PEM: {e}")))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| CertError::Invalid(format!("CA key PEM: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CertError::Invalid(format!("CA certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(CertError::Invalid(
                "the CA certificate is not a CA (basicConstraints cA is not set)".to_owned(),
            ));
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CertError::Invalid(
                "the CA key does not belong to the CA certificate".to_owned(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate (PEM): what nodes and clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PKCS#8 PEM).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for node `node_id`, signed by this CA, with a new key. Its SANs are
    /// DNS [`node_server_name`]`(node_id)`, DNS `localhost`, IP `127.0.0.1`, and each of
    /// `hosts` (an IP SAN if it parses as an IP address, else a DNS SAN); its EKUs are
    /// server and client authentication.
    pub fn issue_node(&self, node_id: u64, hosts: &[String]) -> Result<NodeCert, CertError> {
        let mut names = vec![
            node_server_name(node_id),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        for host in hosts {
            if !names.contains(host) {
                names.push(host.clone());
            }
        }
        // `CertificateParams::new` makes an IP SAN of what parses as an IP, a DNS SAN of
        // the rest.
        let mut params = CertificateParams::new(names)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("node-{node_id}"));
        name.push(DnType::OrganizationName, "Sluice");
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(NodeCert {
            node_id,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A node's certificate and private key, as issued by [`ClusterCa::issue_node`].
#[derive(Clone)]
pub struct NodeCert {
    node_id: u64,
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCert")
            .field("node_id", &self.node_id)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl NodeCert {
    /// The node the certificate names.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key (PKCS#8 PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The TLS material of a node holding this certificate in a cluster whose CA
    /// certificate is `ca_pem`.
    pub fn peer_tls(&self, ca_pem: &str) -> PeerTls {
        PeerTls {
            ca_pem: ca_pem.as_bytes().to_vec(),
            cert_pem: self.cert_pem.as_bytes().to_vec(),
            key_pem: self.key_pem.as_bytes().to_vec(),
        }
    }
}

/// A node's TLS material for its peer links, all PEM: the cluster CA certificate (the only
/// root trusted, for dialled peers and dialling ones alike), the node's certificate
/// (chain, leaf first) and its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// The cluster CA certificate(s), PEM.
    pub ca_pem: Vec<u8>,
    /// This node's certificate chain, leaf first, PEM.
    pub cert_pem: Vec<u8>,
    /// This node's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("ca_pem", &String::from_utf8_lossy(&self.ca_pem))
            .field("cert_pem", &String::from_utf8_lossy(&self.cert_pem))
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Reads the three PEM files. Their contents are checked when the links start.
    pub fn load(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<PeerTls, CertError> {
        let read = |path: &Path| {
            fs::read(path).map_err(|source| CertError::Io {
                path: path.to_owned(),
                source,
            })
        };
        Ok(PeerTls {
            ca_pem: read(ca_path)?,
            cert_pem: read(cert_path)?,
            key_pem: read(key_path)?,
        })
    }
}

/// Writes the certificates of a cluster into `dir` (created if missing): `ca.pem` and
/// `ca.key`, and `node-<id>.pem` and `node-<id>.key` for each `(id, hosts)` of `nodes`
/// (see [`ClusterCa::issue_node`] for the names a certificate holds). Key files get mode
/// 0600. Every file is written to a temporary file and renamed into place.
///
/// The CA in `dir` is reused when both `ca.pem` and `ca.key` exist, so adding a node later
/// keeps the cluster's CA. A `ca.pem` without `ca.key` is [`CertError::MissingCaKey`]; a
/// `ca.key` without `ca.pem` is what an interrupted first run leaves (the key is written
/// first, and no node certificate is written before `ca.pem`), so a new CA replaces it.
/// Node certificates of the listed nodes are always issued anew.
pub fn write_cluster_certs(
    dir: &Path,
    cluster_name: &str,
    nodes: &[(u64, Vec<String>)],
) -> Result<(), CertError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| CertError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let ca = if ca_cert_path.exists() {
        if !ca_key_path.exists() {
            return Err(CertError::MissingCaKey {
                dir: dir.to_owned(),
            });
        }
        let cert_pem = fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
        let key_pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
        ClusterCa::from_pem(&cert_pem, &key_pem)?
    } else {
        let ca = ClusterCa::generate(cluster_name)?;
        write_file(&ca_key_path, ca.key_pem().as_bytes(), 0o600)?;
        write_file(&ca_cert_path, ca.cert_pem().as_bytes(), 0o644)?;
        ca
    };
    for (node_id, hosts) in nodes {
        let node = ca.issue_node(*node_id, hosts)?;
        write_file(
            &dir.join(node_key_file(*node_id)),
            node.key_pem().as_bytes(),
            0o600,
        )?;
        write_file(
            &dir.join(node_cert_file(*node_id)),
            node.cert_pem().as_bytes(),
            0o644,
        )?;
    }
    // The renames are durable once the directory is.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `bytes` to `path` through a temporary file in the same directory, created with
/// `mode`, synced, then renamed over `path`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let err = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".sluice-cert-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = builder.tempfile_in(dir).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.as_file().sync_all().map_err(err)?;
    file.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// The paths [`write_cluster_certs`] gives node `node_id`'s files in `dir`, as a
/// `(ca.pem, node-<id>.pem, node-<id>.key)` triple for [`PeerTls::load`].
pub fn node_files(dir: &Path, node_id: u64) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(CA_CERT_FILE),
        dir.join(node_cert_file(node_id)),
        dir.join(node_key_file(node_id)),
    )
}
