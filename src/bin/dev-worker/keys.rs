//! A worker identity: an Ed25519 key kept as PKCS#8 PEM, the way sandrun (OpenSSL) keeps it.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};

/// DER prefix of an OpenSSL PKCS#8 v1 Ed25519 private key; the 32 secret bytes follow it.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A worker's Ed25519 signing key.
#[derive(Clone)]
pub struct WorkerKey {
    signing: SigningKey,
}

impl WorkerKey {
    /// A new key from 32 bytes of `/dev/urandom`.
    pub fn generate() -> io::Result<WorkerKey> {
        let mut secret = [0u8; 32];
        fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
        Ok(WorkerKey::from_secret(secret))
    }

    /// The key with the given 32 secret bytes.
    pub fn from_secret(secret: [u8; 32]) -> WorkerKey {
        WorkerKey {
            signing: SigningKey::from_bytes(&secret),
        }
    }

    /// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<WorkerKey, String> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|signing| WorkerKey { signing })
            .map_err(|e| format!("not an Ed25519 PKCS#8 PEM private key: {e}"))
    }

    /// Reads a PKCS#8 PEM key file.
    pub fn load(path: &Path) -> Result<WorkerKey, String> {
        let pem = fs::read_to_string(path)
            .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
        WorkerKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The key as PKCS#8 PEM, byte for byte as OpenSSL writes an Ed25519 key (v1, 48-byte DER).
    pub fn to_pem(&self) -> String {
        let mut der = PKCS8_V1_PREFIX.to_vec();
        der.extend_from_slice(self.signing.as_bytes());
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(der)
        )
    }

    /// Writes the key as PKCS#8 PEM, readable by its owner only.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(self.to_pem().as_bytes())
    }

    /// The worker id: standard base64, with padding, of the raw 32-byte public key.
    pub fn worker_id(&self) -> String {
        STANDARD.encode(self.signing.verifying_key().as_bytes())
    }

    /// Signs `data` and returns the 64-byte signature in standard base64.
    pub fn sign_base64(&self, data: &str) -> String {
        STANDARD.encode(self.signing.sign(data.as_bytes()).to_bytes())
    }
}
