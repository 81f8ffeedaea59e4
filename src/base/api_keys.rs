//! Client keys (`--api-keys FILE`): the file format, its validation, and the lookup of a
//! presented key by its SHA-256 in constant time. A key itself is never stored nor logged; only
//! its hash is in the file and its name may appear in logs.

use crate::base::addresses::{holds, parse_blocks, AddressBlock};
use crate::base::clock::{parse_utc, utc_text};
use crate::base::json_list::{ListFileError, ListKind};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

/// Largest keys file read (a file this large is a mistake, not a key list).
pub const MAX_KEYS_FILE_BYTES: u64 = 1024 * 1024;
/// Longest key name.
pub const MAX_NAME_LEN: usize = 64;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Submits jobs and sees only its own.
    Submit,
    /// Sees and controls every job and the whole pool.
    Admin,
    /// Sees every job and the whole pool, as an admin does, and changes nothing: a dashboard on
    /// a wall, a monitoring script, a Prometheus scrape.
    Read,
}

impl Role {
    /// The name used in the file and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Admin => "admin",
            Self::Read => "read",
        }
    }
}

/// One client key, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Who holds it (shown in logs and `/pool`; owner of the jobs it submits).
    pub name: String,
    /// SHA-256 of the key.
    pub key_sha256: [u8; 32],
    /// What it may do.
    pub role: Role,
    /// The most jobs of this key waiting in the queue at once (None: no limit of its own).
    pub max_queued_jobs: Option<usize>,
    /// When it stops being accepted, in unix seconds (None: never).
    pub expires: Option<u64>,
    /// The client addresses it may be used from (empty: any).
    pub bound_cidrs: Vec<AddressBlock>,
    /// Whether its submits may hold files a sandrun worker unpacks as archives (None: as
    /// `--refuse-archives` says for the whole coordinator).
    pub archives: Option<bool>,
}

impl ApiKey {
    /// Whether it has expired at unix time `now`.
    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }

    /// Whether it may be used by a client at `client` (an unknown address only when it is
    /// bound to none).
    pub fn allows_from(&self, client: Option<IpAddr>) -> bool {
        self.bound_cidrs.is_empty() || client.is_some_and(|a| holds(&self.bound_cidrs, a))
    }

    /// Its `bound_cidrs` as the file writes them, comma-separated.
    pub fn bound_cidrs_text(&self) -> String {
        let blocks: Vec<String> = self.bound_cidrs.iter().map(ToString::to_string).collect();
        blocks.join(", ")
    }
}

/// A key expiring within this many seconds is warned about when the keys are read.
pub const EXPIRY_WARNING: u64 = 7 * 24 * 3600;

/// What to warn an operator about the keys' expiry at unix time `now`: each key already
/// expired (refused from then on), and each expiring within [`EXPIRY_WARNING`].
pub fn expiry_warnings(keys: &KeySet, now: u64) -> Vec<String> {
    keys.keys()
        .iter()
        .filter_map(|key| {
            let at = key.expires?;
            if now >= at {
                Some(format!(
                    "Client key {} expired at {}: it is refused (401); give its holder a new key, or take its entry out",
                    key.name,
                    utc_text(at)
                ))
            } else if at - now <= EXPIRY_WARNING {
                Some(format!(
                    "Client key {} expires at {} (in {:.1} days); give its holder a new key before then",
                    key.name,
                    utc_text(at),
                    (at - now) as f64 / 86_400.0
                ))
            } else {
                None
            }
        })
        .collect()
}

/// Why a keys file was refused.
pub type KeysFileError = ListFileError;

/// The keys file, as its messages name it.
pub static KEYS_FILE: ListKind = ListKind {
    name: "keys file",
    holds: "{\"name\", \"key_sha256\", \"role\"} objects (trusted-pool new-key NAME prints one)",
    entry: "{\"name\": ..., \"key_sha256\": ..., \"role\": ...}",
    empty: "lists no keys: nobody could use the coordinator",
    max_bytes: MAX_KEYS_FILE_BYTES,
};

/// True for a name that may appear in logs and JSON as it is: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// SHA-256 of a presented key.
pub fn hash_key(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

fn parse_hex_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Compares two hashes in time independent of where they differ.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A validated set of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<ApiKey>,
}

impl KeySet {
    /// The keys, in file order.
    pub fn keys(&self) -> &[ApiKey] {
        &self.keys
    }

    /// The key whose hash is the hash of `presented`. Every entry is compared, in constant time
    /// each, so the answer's timing does not depend on which entry (if any) matched, nor where.
    pub fn find(&self, presented: &[u8]) -> Option<&ApiKey> {
        self.by_hash(&hash_key(presented))
    }

    /// The key with this SHA-256, compared with every entry as [`KeySet::find`] does.
    pub fn by_hash(&self, hash: &[u8; 32]) -> Option<&ApiKey> {
        let mut found = None;
        for key in &self.keys {
            if same_hash(&key.key_sha256, hash) && found.is_none() {
                found = Some(key);
            }
        }
        found
    }

    /// The key names, comma-separated, for the log (never the keys nor their hashes).
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        names.join(", ")
    }

    /// The key with this name.
    pub fn by_name(&self, name: &str) -> Option<&ApiKey> {
        self.keys.iter().find(|k| k.name == name)
    }
}

fn entry_error(entry: &str, field: &str, problem: impl Into<String>) -> KeysFileError {
    KEYS_FILE.entry_error(entry, field, problem)
}

const FIELDS: [&str; 7] = [
    "name",
    "key_sha256",
    "role",
    "max_queued_jobs",
    "expires",
    "bound_cidrs",
    "archives",
];

/// An entry's `bound_cidrs`: a non-empty array of addresses and CIDR blocks.
fn parse_bound_cidrs(entry: &str, value: &Value) -> Result<Vec<AddressBlock>, KeysFileError> {
    let problem = "must be a non-empty array of addresses and CIDR blocks (\"10.0.0.0/8\", \"192.0.2.7\"); leave it out for a key usable from any address";
    let items = match value {
        Value::Array(items) if !items.is_empty() => items,
        _ => return Err(entry_error(entry, "bound_cidrs", problem)),
    };
    let mut blocks = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(text) = item.as_str() else {
            return Err(entry_error(entry, "bound_cidrs", problem));
        };
        let parsed = parse_blocks(text)
            .map_err(|e| entry_error(entry, "bound_cidrs", format!("item {i} ({text:?}): {e}")))?;
        blocks.extend(parsed);
    }
    Ok(blocks)
}

fn parse_entry(index: usize, object: &Map<String, Value>) -> Result<ApiKey, KeysFileError> {
    let mut entry = format!("entry {index}");
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(entry_error(
            &entry,
            unknown,
            format!("is not known (fields: {})", FIELDS.join(", ")),
        ));
    }
    let name = match object.get("name") {
        Some(Value::String(n)) if is_valid_name(n) => n.clone(),
        Some(Value::String(_)) => {
            return Err(entry_error(
                &entry,
                "name",
                format!("must be 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-'"),
            ))
        }
        Some(_) => return Err(entry_error(&entry, "name", "must be a string")),
        None => return Err(entry_error(&entry, "name", "is missing")),
    };
    entry = format!("entry {index} ({name:?})");
    let key_sha256 = match object.get("key_sha256") {
        Some(Value::String(h)) => parse_hex_32(h).ok_or_else(|| {
            entry_error(
                &entry,
                "key_sha256",
                "must be 64 hex digits (the SHA-256 of the key, as trusted-pool new-key prints it)",
            )
        })?,
        Some(_) => return Err(entry_error(&entry, "key_sha256", "must be a string")),
        None => return Err(entry_error(&entry, "key_sha256", "is missing")),
    };
    let role = match object.get("role").map(Value::as_str) {
        Some(Some("submit")) => Role::Submit,
        Some(Some("admin")) => Role::Admin,
        Some(Some("read")) => Role::Read,
        Some(_) => {
            return Err(entry_error(
                &entry,
                "role",
                "must be \"submit\", \"admin\" or \"read\"",
            ))
        }
        None => return Err(entry_error(&entry, "role", "is missing")),
    };
    let max_queued_jobs = match object.get("max_queued_jobs") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n >= 1 => Some(n),
            _ => {
                return Err(entry_error(
                    &entry,
                    "max_queued_jobs",
                    "must be a whole number of at least 1 (leave it out for no limit)",
                ))
            }
        },
    };
    let expires = match object.get("expires") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_str().and_then(parse_utc).ok_or_else(|| {
            entry_error(
                &entry,
                "expires",
                "must be a UTC date (\"2027-01-31\", its midnight) or time (\"2027-01-31T12:00:00Z\"); leave it out for a key that does not expire",
            )
        })?),
    };
    let bound_cidrs = match object.get("bound_cidrs") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => parse_bound_cidrs(&entry, value)?,
    };
    let archives = match object.get("archives") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(taken)) => Some(*taken),
        Some(_) => {
            return Err(entry_error(
                &entry,
                "archives",
                "must be true (the key may send archives, even under --refuse-archives) or false (it may not); leave it out to follow --refuse-archives",
            ))
        }
    };
    Ok(ApiKey {
        name,
        key_sha256,
        role,
        max_queued_jobs,
        expires,
        bound_cidrs,
        archives,
    })
}

/// Validates the bytes of a keys file: a non-empty array of entries with unique names and
/// unique hashes, no unknown field.
pub fn parse(bytes: &[u8]) -> Result<KeySet, KeysFileError> {
    let entries = KEYS_FILE.objects(bytes)?;
    let mut keys = Vec::with_capacity(entries.len());
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for (index, object) in entries.iter().enumerate() {
        let key = parse_entry(index, object)?;
        let label = format!("entry {index} ({:?})", key.name);
        if !names.insert(key.name.clone()) {
            return Err(entry_error(&label, "name", "is used by an earlier entry"));
        }
        if !hashes.insert(key.key_sha256) {
            return Err(entry_error(
                &label,
                "key_sha256",
                "is the same as an earlier entry's (one key, one entry)",
            ));
        }
        keys.push(key);
    }
    Ok(KeySet { keys })
}

/// Reads and validates a keys file.
pub fn load(path: &Path) -> Result<KeySet, KeysFileError> {
    parse(&KEYS_FILE.read(path)?)
}

/// The keys a running coordinator checks, swapped whole on reload. `None` inside: no
/// `--api-keys`, the coordinator is open.
#[derive(Debug, Default)]
pub struct LiveKeys {
    current: RwLock<Option<Arc<KeySet>>>,
}

impl LiveKeys {
    /// The keys in force now (`None`: open).
    pub fn get(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts a new set in force.
    pub fn set(&self, keys: KeySet) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(keys));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::hex::hex;

    fn entry(name: &str, key: &str, role: &str) -> String {
        format!(
            r#"{{"name": "{name}", "key_sha256": "{}", "role": "{role}"}}"#,
            hex(&hash_key(key.as_bytes()))
        )
    }

    fn valid_file() -> String {
        format!(
            "[{}, {}, {}]",
            entry("alice", "key-a", "submit"),
            entry("ops", "key-o", "admin"),
            r#"{"name": "bob", "key_sha256": "00000000000000000000000000000000000000000000000000000000000000AA", "role": "submit", "max_queued_jobs": 3, "archives": false}"#
        )
    }

    #[test]
    fn a_valid_file_parses_and_keys_are_found_by_hash() {
        let set = parse(valid_file().as_bytes()).expect("valid");
        assert_eq!(set.keys().len(), 3);
        assert_eq!(set.find(b"key-a").map(|k| k.name.as_str()), Some("alice"));
        assert_eq!(set.find(b"key-o").map(|k| k.role), Some(Role::Admin));
        assert!(set.find(b"key-b").is_none());
        assert!(set.find(b"").is_none());
        assert_eq!(set.by_name("bob").and_then(|k| k.max_queued_jobs), Some(3));
        assert_eq!(set.by_name("bob").and_then(|k| k.archives), Some(false));
        assert_eq!(set.by_name("alice").and_then(|k| k.archives), None);
    }

    #[test]
    fn a_key_expires_and_is_warned_of_a_week_before() {
        let file = format!(
            r#"[{{"name": "old", "key_sha256": "{}", "role": "submit", "expires": "2027-01-31"}},
               {{"name": "new", "key_sha256": "{}", "role": "read", "expires": "2027-01-31T12:00:00Z"}}]"#,
            hex(&hash_key(b"o")),
            hex(&hash_key(b"n"))
        );
        let set = parse(file.as_bytes()).expect("valid");
        let old = set.by_name("old").expect("old");
        let at = 1_801_353_600; // 2027-01-31T00:00:00Z
        assert_eq!(old.expires, Some(at));
        assert!(!old.expired(at - 1) && old.expired(at));
        assert!(expiry_warnings(&set, at - EXPIRY_WARNING - 1).is_empty());
        let warned = expiry_warnings(&set, at);
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(
            warned[0].contains("old expired at 2027-01-31T00:00:00Z"),
            "{warned:?}"
        );
        assert!(
            warned[1].contains("new expires at 2027-01-31T12:00:00Z (in 0.5 days)"),
            "{warned:?}"
        );
        for bad in [r#""2027-02-30""#, r#""soon""#, "1801353600"] {
            let file = format!(
                r#"[{{"name": "x", "key_sha256": "{}", "role": "submit", "expires": {bad}}}]"#,
                hex(&hash_key(b"x"))
            );
            let e = parse(file.as_bytes()).expect_err(bad).to_string();
            assert!(e.contains("\"expires\" must be a UTC date"), "{e}");
        }
    }

    #[test]
    fn a_bound_key_is_usable_only_from_its_blocks() {
        let text = format!(
            r#"[{{"name": "ci", "key_sha256": "{}", "role": "submit", "bound_cidrs": ["10.0.0.0/8", "2001:db8::/32, 192.0.2.7"]}},
               {{"name": "any", "key_sha256": "{}", "role": "read"}}]"#,
            hex(&hash_key(b"k1")),
            hex(&hash_key(b"k2"))
        );
        let keys = parse(text.as_bytes()).expect("valid");
        let bound = keys.by_name("ci").expect("ci");
        assert_eq!(
            bound.bound_cidrs_text(),
            "10.0.0.0/8, 2001:db8::/32, 192.0.2.7/32"
        );
        for (from, allowed) in [
            ("10.1.2.3", true),
            ("::ffff:10.1.2.3", true),
            ("2001:db8::9", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("127.0.0.1", false),
        ] {
            let addr: IpAddr = from.parse().expect("address");
            assert_eq!(bound.allows_from(Some(addr)), allowed, "{from}");
        }
        assert!(!bound.allows_from(None));
        let any = keys.by_name("any").expect("any");
        assert!(any.allows_from(None) && any.allows_from(Some("192.0.2.8".parse().expect("a"))));
    }

    #[test]
    fn bad_files_are_refused_with_the_field_at_fault() {
        let h = hex(&hash_key(b"x"));
        let cases: Vec<(String, &str)> = vec![
            ("{}".into(), "must be a JSON array"),
            ("[]".into(), "no keys"),
            ("[1]".into(), "entry 0: is not a JSON object"),
            ("nope".into(), "not valid JSON"),
            (
                format!(r#"[{{"key_sha256":"{h}","role":"submit"}}]"#),
                "\"name\" is missing",
            ),
            (
                format!(r#"[{{"name":"a b","key_sha256":"{h}","role":"submit"}}]"#),
                "\"name\" must be",
            ),
            (
                r#"[{"name":"a","key_sha256":"abc","role":"submit"}]"#.into(),
                "64 hex",
            ),
            (
                format!(r#"[{{"name":"a","key_sha256":"{h}","role":"root"}}]"#),
                "\"role\" must be",
            ),
            (
                format!(
                    r#"[{{"name":"a","key_sha256":"{h}","role":"submit","max_queued_jobs":0}}]"#
                ),
                "at least 1",
            ),
            (
                format!(r#"[{{"name":"a","key_sha256":"{h}","role":"submit","extra":1}}]"#),
                "\"extra\" is not known",
            ),
            (
                format!(
                    "[{}, {}]",
                    entry("a", "x", "submit"),
                    entry("a", "y", "submit")
                ),
                "earlier entry",
            ),
            (
                format!(
                    "[{}, {}]",
                    entry("a", "x", "submit"),
                    entry("b", "x", "admin")
                ),
                "same as an earlier",
            ),
            (
                format!(r#"[{{"name":"a","key_sha256":"{h}","role":"submit","bound_cidrs":[]}}]"#),
                "\"bound_cidrs\" must be a non-empty array",
            ),
            (
                format!(
                    r#"[{{"name":"a","key_sha256":"{h}","role":"submit","bound_cidrs":"10.0.0.0/8"}}]"#
                ),
                "\"bound_cidrs\" must be a non-empty array",
            ),
            (
                format!(
                    r#"[{{"name":"a","key_sha256":"{h}","role":"submit","bound_cidrs":["10.0.0.0/8","10.0.0.0/33"]}}]"#
                ),
                "\"bound_cidrs\" item 1 (\"10.0.0.0/33\")",
            ),
            (
                format!(r#"[{{"name":"a","key_sha256":"{h}","role":"submit","archives":"no"}}]"#),
                "\"archives\" must be true (the key may send archives, even under --refuse-archives) or false",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text.as_bytes()).expect_err(&text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn hash_comparison_is_exact() {
        let a = hash_key(b"one");
        let mut b = a;
        assert!(same_hash(&a, &b));
        b[31] ^= 1;
        assert!(!same_hash(&a, &b));
    }
}
