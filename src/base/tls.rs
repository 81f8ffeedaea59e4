//! TLS settings from PEM files (rustls 0.23, ring): the listener's certificate and key, and what
//! the coordinator trusts and presents when it calls `https://` workers.

use crate::base::cert_expiry::{ChainExpiry, ChainSource};
use crate::base::small_file::read_at_most;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a TLS setting could not be built.
#[derive(Debug)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    Pem(PathBuf, String),
    /// rustls refused the certificates or key.
    Rejected(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem(path, e) => write!(f, "{}: {e}", path.display()),
            Self::Rejected(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The most bytes a PEM file is read for: a chain, a key or a CA bundle (a system's whole
/// bundle is about 220 KB) holds far less.
const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// The bytes of a PEM file, at most [`MAX_PEM_BYTES`].
fn pem_bytes(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_at_most(path, MAX_PEM_BYTES).map_err(|e| TlsError::Pem(path.to_path_buf(), e.to_string()))
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = pem_bytes(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(path.to_path_buf(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(
            path.to_path_buf(),
            "no CERTIFICATE block in the file".to_string(),
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = pem_bytes(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        TlsError::Pem(
            path.to_path_buf(),
            format!("no usable private key (PKCS#8, RSA or EC PEM): {e}"),
        )
    })
}

/// TLS settings, and when the certificate chain they present expires (`None`: they present
/// none, or its validity could not be read).
pub struct Loaded<T> {
    /// The settings.
    pub config: Arc<T>,
    /// The earliest expiry of the chain presented.
    pub expiry: Option<ChainExpiry>,
}

/// The chain of `path` and its expiry.
fn chain_with_expiry(
    path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, Option<ChainExpiry>), TlsError> {
    let chain = load_certs(path)?;
    let source = ChainSource::File(path.to_path_buf());
    let expiry = ChainExpiry::of_chain(source, chain.iter().map(|c| c.as_ref()));
    Ok((chain, expiry))
}

/// What a certificate error names (rustls and webpki give it by its name), and what to do.
const CERTIFICATE_ADVICE: [(&str, &str); 5] = [
    ("CaUsedAsEndEntity", "the certificate is a CA's (basicConstraints CA:TRUE), not a server's own: issue one with basicConstraints=critical,CA:FALSE, signed by the CA that --worker-ca names or self-signed (see TLS in README)"),
    ("UnsupportedCertVersion", "the certificate is X.509 version 1: issue a version 3 one (openssl req -x509, or openssl x509 -req with an -extfile that gives its subjectAltName)"),
    ("KeyMismatch", "the key is not the one the certificate was issued for"),
    ("UnknownIssuer", "no CA certificate the coordinator trusts (--worker-ca, or the system's without it) signed it"),
    ("NotValidForName", "the certificate does not name the endpoint's host in its subjectAltName"),
];

/// `text`, an error about a certificate, with what to do about it when it names a fault the
/// operator can mend.
pub fn with_certificate_advice(text: String) -> String {
    match CERTIFICATE_ADVICE
        .iter()
        .find(|(name, _)| text.contains(name))
    {
        Some((_, advice)) => format!("{text}: {advice}"),
        None => text,
    }
}

/// The listener's settings: this certificate chain and key, no client certificates.
pub fn server_config(cert: &Path, key: &Path) -> Result<Loaded<ServerConfig>, TlsError> {
    let (chain, expiry) = chain_with_expiry(cert)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, load_key(key)?)
        .map_err(|e| rejected(cert, key, &e))?;
    Ok(Loaded {
        config: Arc::new(config),
        expiry,
    })
}

/// The refusal of the certificate chain `cert` with its key `key`.
fn rejected(cert: &Path, key: &Path, e: &rustls::Error) -> TlsError {
    TlsError::Rejected(with_certificate_advice(format!(
        "{} with {}: {e}",
        cert.display(),
        key.display()
    )))
}

/// Where the coordinator's calls to `https://` workers find trust and identity.
#[derive(Debug, Clone, Default)]
pub struct WorkerTls {
    /// CA certificates (PEM) to trust instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM) presented to workers.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl WorkerTls {
    /// Whether TLS settings are to be read: some were given, or an `https://` worker is listed
    /// (`https_listed`). Otherwise the system's CA certificates are not read at all.
    pub fn wanted(&self, https_listed: bool) -> bool {
        https_listed || self.ca.is_some() || self.client_cert.is_some()
    }
}

/// The client settings for `https://` workers: `--worker-ca` or the system roots, and the
/// optional client certificate (whose expiry comes with them).
pub fn client_config(settings: &WorkerTls) -> Result<Loaded<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match &settings.ca {
        Some(ca) => {
            for cert in load_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Pem(ca.clone(), e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                log::warn!("System CA certificates: {e}");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                log::warn!("No system CA certificates found; https:// workers need --worker-ca");
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected(e.to_string()))?
        .with_root_certificates(roots);
    let (config, expiry) = match &settings.client_cert {
        Some((cert, key)) => {
            let (chain, expiry) = chain_with_expiry(cert)?;
            let config = builder
                .with_client_auth_cert(chain, load_key(key)?)
                .map_err(|e| rejected(cert, key, &e))?;
            (config, expiry)
        }
        None => (builder.with_no_client_auth(), None),
    };
    Ok(Loaded {
        config: Arc::new(config),
        expiry,
    })
}

#[cfg(test)]
mod tests {
    use super::with_certificate_advice;

    #[test]
    fn a_certificate_fault_the_operator_can_mend_says_what_to_do() {
        let ca = with_certificate_advice(
            "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))".to_string(),
        );
        assert!(ca.contains("basicConstraints=critical,CA:FALSE"), "{ca}");
        let v1 = with_certificate_advice("Other(OtherError(UnsupportedCertVersion))".to_string());
        assert!(v1.contains("version 3"), "{v1}");
        let other = "connection refused".to_string();
        assert_eq!(with_certificate_advice(other.clone()), other);
    }
}
