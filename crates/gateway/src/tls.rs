//! TLS material: loading PEM files, the development CA, and the rustls server config
//! (TLS 1.3 only, ALPN `sluice/1` required, no 0-RTT, ring provider).
//!
//! Dev mode writes three files into its directory:
//!
//! - `ca.pem`: a self-signed CA certificate ("Sluice development CA"). Clients trust it.
//!   Its private key is never written: it signs the server certificate once and is
//!   dropped, so a leaked dev directory cannot mint certificates for anything else.
//! - `server.pem`: the server certificate, signed by that CA, for `localhost`,
//!   `127.0.0.1` and `::1`.
//! - `server.key`: its private key (PKCS#8), mode 0600.
//!
//! When all three exist they are reused, so clients keep trusting the same CA across
//! restarts. When any is missing all three are generated again (a new CA).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice_proto::wire::ALPN;

use crate::config::TlsSource;
use crate::error::GatewayError;

/// File name of the dev CA certificate inside a dev directory.
pub const DEV_CA_FILE: &str = "ca.pem";
/// File name of the dev server certificate.
pub const DEV_CERT_FILE: &str = "server.pem";
/// File name of the dev server key (mode 0600).
pub const DEV_KEY_FILE: &str = "server.key";

/// The names the dev server certificate is valid for.
pub const DEV_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The CA certificate a client must trust to reach a gateway in dev mode on `dir`.
pub fn dev_ca_path(dir: &Path) -> PathBuf {
    dir.join(DEV_CA_FILE)
}

/// The dev files of one directory, as found or made by [`ensure_dev_certificates`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertificates {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    /// Whether this call generated them (false: they existed and were reused).
    pub generated: bool,
}

/// Reuses the dev CA, certificate and key in `dir` when all three exist, else generates
/// them there (creating `dir`). Each file is written to a temporary name and renamed into
/// place; the key is created with mode 0600.
pub fn ensure_dev_certificates(dir: &Path) -> Result<DevCertificates, GatewayError> {
    let files = DevCertificates {
        ca_pem: dev_ca_path(dir),
        cert_pem: dir.join(DEV_CERT_FILE),
        key_pem: dir.join(DEV_KEY_FILE),
        generated: false,
    };
    if files.ca_pem.is_file() && files.cert_pem.is_file() && files.key_pem.is_file() {
        return Ok(files);
    }
    fs::create_dir_all(dir).map_err(|source| GatewayError::TlsFile {
        path: dir.to_owned(),
        source,
    })?;
    let generated = generate_dev_certificates()?;
    // The key and certificate first, the CA last: a crash in between leaves `ca.pem`
    // missing, so the next start generates everything again rather than reusing a CA
    // that did not sign the certificate.
    write_file(&files.key_pem, generated.key_pem.as_bytes(), 0o600)?;
    write_file(&files.cert_pem, generated.cert_pem.as_bytes(), 0o644)?;
    write_file(&files.ca_pem, generated.ca_pem.as_bytes(), 0o644)?;
    Ok(DevCertificates {
        generated: true,
        ..files
    })
}

struct GeneratedPems {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn generate_dev_certificates() -> Result<GeneratedPems, GatewayError> {
    let tls = |e: rcgen::Error| GatewayError::Tls(format!("generating dev certificates: {e}"));

    let ca_key = KeyPair::generate().map_err(tls)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "Sluice development CA");
    ca_name.push(DnType::OrganizationName, "Sluice");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(tls)?;
    let names: Vec<String> = DEV_SERVER_NAMES.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).map_err(tls)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Sluice development broker");
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&server_key, &issuer).map_err(tls)?;

    Ok(GeneratedPems {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: server_key.serialize_pem(),
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory, created with
/// `mode`, synced, then renamed over `path`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), GatewayError> {
    let err = |source| GatewayError::TlsFile {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)
}

/// Loads every certificate of a PEM file (a chain, leaf first).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, GatewayError> {
    let file_err = |e: rustls_pki_types::pem::Error| match e {
        rustls_pki_types::pem::Error::Io(source) => GatewayError::TlsFile {
            path: path.to_owned(),
            source,
        },
        other => GatewayError::Tls(format!("{}: {other}", path.display())),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(file_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_err)?;
    if certs.is_empty() {
        return Err(GatewayError::Tls(format!(
            "{}: no CERTIFICATE in the file",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, GatewayError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::Io(source) => GatewayError::TlsFile {
            path: path.to_owned(),
            source,
        },
        other => GatewayError::Tls(format!("{}: {other}", path.display())),
    })
}

/// The rustls server config for `source`: TLS 1.3 only, ALPN [`ALPN`] required (rustls
/// refuses a QUIC client that offers another or none), no client certificates, no 0-RTT
/// (a replayed produce would append twice).
pub(crate) fn server_crypto(source: &TlsSource) -> Result<rustls::ServerConfig, GatewayError> {
    let (cert_path, key_path) = match source {
        TlsSource::Files { cert_pem, key_pem } => (cert_pem.clone(), key_pem.clone()),
        TlsSource::Dev { dir } => {
            let dev = ensure_dev_certificates(dir)?;
            tracing::info!(
                ca = %dev.ca_pem.display(),
                generated = dev.generated,
                "dev TLS: clients must trust this CA certificate",
            );
            (dev.cert_pem, dev.key_pem)
        }
    };
    let certs = load_certs(&cert_path)?;
    let key = load_key(&key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| GatewayError::Tls(format!("TLS 1.3 with ring: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            GatewayError::Tls(format!(
                "{} and {}: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}
