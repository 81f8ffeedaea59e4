//! Worker identities: a worker_id is the standard base64 (padded) of a raw 32-byte Ed25519 public key.

use crate::base::small_file::read_at_most;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::fmt;
use std::path::Path;

/// Why a worker_id or a key file was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// The text is not standard padded base64.
    NotBase64,
    /// The decoded id is not exactly 32 bytes long.
    WrongLength(usize),
    /// The 32 bytes are not a valid Ed25519 public key (not a curve point).
    NotAPublicKey,
    /// The key file could not be read.
    Unreadable(String),
    /// The key file is not a PKCS#8 Ed25519 private key in PEM form.
    NotAKeyFile(String),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotBase64 => write!(f, "is not standard base64 (A-Z a-z 0-9 + / with = padding)"),
            Self::WrongLength(n) => write!(f, "decodes to {n} bytes, an Ed25519 public key has 32"),
            Self::NotAPublicKey => write!(f, "is not a valid Ed25519 public key"),
            Self::Unreadable(why) => write!(f, "cannot be read: {why}"),
            Self::NotAKeyFile(why) => write!(
                f,
                "is not an Ed25519 private key in PKCS#8 PEM form (-----BEGIN PRIVATE KEY-----): {why}"
            ),
        }
    }
}

impl std::error::Error for IdentityError {}

/// Checks that `worker_id` is the canonical base64 of a valid Ed25519 public key.
pub fn parse_worker_id(worker_id: &str) -> Result<VerifyingKey, IdentityError> {
    let bytes = STANDARD
        .decode(worker_id)
        .map_err(|_| IdentityError::NotBase64)?;
    let raw: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| IdentityError::WrongLength(bytes.len()))?;
    VerifyingKey::from_bytes(&raw).map_err(|_| IdentityError::NotAPublicKey)
}

/// The worker_id for a public key, exactly as sandrun prints it.
pub fn worker_id_of(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Why a key file holds no Ed25519 key, in words: for a key of another algorithm the
/// library's text names the Ed25519 OID it looked for, as though that were the one refused.
fn key_file_fault(text: &str) -> String {
    if text.contains("algorithm OID") {
        "it holds a key of another algorithm (RSA or EC, say): a sandrun worker's key is Ed25519"
            .to_string()
    } else {
        text.to_string()
    }
}

/// The most bytes a key file is read for (sandrun's is about 120).
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Reads a sandrun key file (PKCS#8 Ed25519 PEM) and returns the worker_id sandrun prints for it.
pub fn worker_id_from_key_file(path: &Path) -> Result<String, IdentityError> {
    let bytes = read_at_most(path, MAX_KEY_FILE_BYTES)
        .map_err(|e| IdentityError::Unreadable(e.to_string()))?;
    let pem = String::from_utf8(bytes)
        .map_err(|e| IdentityError::Unreadable(format!("it is not text: {e}")))?;
    let key = SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| IdentityError::NotAKeyFile(key_file_fault(&e.to_string())))?;
    Ok(worker_id_of(&key.verifying_key()))
}

/// The first characters of a worker_id, for log lines and error messages.
pub fn short_id(worker_id: &str) -> &str {
    let end = worker_id
        .char_indices()
        .nth(12)
        .map_or(worker_id.len(), |(i, _)| i);
    &worker_id[..end]
}
