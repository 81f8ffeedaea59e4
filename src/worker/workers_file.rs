//! The allowlist file (`workers.json`): loading and validation.

use crate::base::addresses;
use crate::base::json_list::{ListFileError, ListKind, Problem};
use crate::base::labels;
use crate::worker::bound_socket::check_bindable;
use crate::worker::identity::{parse_worker_id, short_id, IdentityError};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

/// Default `max_concurrent_jobs` when an entry does not set it.
pub const DEFAULT_MAX_CONCURRENT_JOBS: u32 = 4;

/// The most jobs a `"max_concurrent_jobs": "auto"` worker gets before it told its limit.
pub const AUTO_CEILING: u32 = 64;

/// One allowlisted worker, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// Base64 Ed25519 public key the worker must report on `/health`.
    pub worker_id: String,
    /// Base URL, `http://host[:port][/prefix]`, without a trailing slash.
    pub endpoint: String,
    /// The most jobs the coordinator keeps on this worker at once ([`AUTO_CEILING`] for `auto`).
    pub max_concurrent_jobs: u32,
    /// `"max_concurrent_jobs": "auto"`: the worker's own limit (learned from its 429) is the cap.
    pub auto_cap: bool,
    /// `"drain": true`: the worker gets no new job.
    pub drain: bool,
    /// Local addresses its submits go out from; `None`: those of `--source-addresses`.
    pub source_addresses: Option<Vec<IpAddr>>,
    /// Its labels, sorted: a job that asks for labels runs only on a worker with all of them.
    pub labels: Vec<String>,
}

impl WorkerSpec {
    /// Whether it is reached over TLS (an `https://` endpoint, its TLS proxy).
    pub fn over_tls(&self) -> bool {
        self.endpoint.starts_with("https://")
    }

    /// Worker `n` of a unit test's table: id `w{n}`, port 1000 + n, two slots, no labels.
    #[cfg(test)]
    pub fn numbered(n: usize) -> WorkerSpec {
        WorkerSpec {
            worker_id: format!("w{n}"),
            endpoint: format!("http://127.0.0.1:{}", 1000 + n),
            max_concurrent_jobs: 2,
            auto_cap: false,
            drain: false,
            source_addresses: None,
            labels: Vec::new(),
        }
    }
}

/// Why a workers file was refused.
pub type WorkersFileError = ListFileError;

/// The workers file, as its messages name it.
pub static WORKERS_FILE: ListKind = ListKind {
    name: "workers file",
    holds: "{\"worker_id\", \"endpoint\", \"max_concurrent_jobs\"} objects",
    entry: "{\"worker_id\": ..., \"endpoint\": ...}",
    empty: "lists no workers",
    max_bytes: MAX_WORKERS_FILE_BYTES,
};

/// The most bytes a workers file is read for: about 60,000 workers (an entry takes about 250).
/// Unbounded, `--workers /dev/zero` took 8 GB in 3 s.
pub const MAX_WORKERS_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads and validates a workers file.
pub fn load(path: &Path) -> Result<Vec<WorkerSpec>, WorkersFileError> {
    let bytes = WORKERS_FILE.read(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| WORKERS_FILE.error(Problem::NotJson(e.to_string())))?;
    parse(&text)
}

/// Validates the text of a workers file.
pub fn parse(text: &str) -> Result<Vec<WorkerSpec>, WorkersFileError> {
    let entries = WORKERS_FILE.objects(text.as_bytes())?;
    let mut specs = Vec::with_capacity(entries.len());
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut endpoints: HashMap<String, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let spec = parse_entry(index, entry)?;
        let label = entry_label(index, Some(&spec.worker_id));
        if let Some(first) = ids.insert(spec.worker_id.clone(), index) {
            return Err(entry_error(
                label,
                "worker_id",
                format!("duplicates entry {first}"),
            ));
        }
        if let Some(first) = endpoints.insert(endpoint_key(&spec.endpoint), index) {
            return Err(entry_error(
                label,
                "endpoint",
                format!("duplicates entry {first} ({})", spec.endpoint),
            ));
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn entry_label(index: usize, worker_id: Option<&str>) -> String {
    match worker_id {
        Some(id) if !id.is_empty() => format!("entry {index} (worker_id {}...)", short_id(id)),
        _ => format!("entry {index}"),
    }
}

fn entry_error(entry: String, field: &str, problem: impl Into<String>) -> WorkersFileError {
    WORKERS_FILE.entry_error(entry, field, problem)
}

fn parse_entry(index: usize, fields: &Map<String, Value>) -> Result<WorkerSpec, WorkersFileError> {
    let id_text = fields.get("worker_id").and_then(Value::as_str);
    let label = entry_label(index, id_text);
    if let Some(unknown) = fields.keys().find(|k| {
        !matches!(
            k.as_str(),
            "worker_id"
                | "endpoint"
                | "max_concurrent_jobs"
                | "drain"
                | "source_addresses"
                | "labels"
        )
    }) {
        return Err(entry_error(
            label,
            unknown,
            "is unknown (allowed: worker_id, endpoint, max_concurrent_jobs, drain, source_addresses, labels)",
        ));
    }
    let worker_id = required_string(fields, "worker_id", &label)?;
    parse_worker_id(worker_id)
        .map_err(|e: IdentityError| entry_error(label.clone(), "worker_id", e.to_string()))?;
    let endpoint = required_string(fields, "endpoint", &label)?;
    let endpoint =
        normalize_endpoint(endpoint).map_err(|p| entry_error(label.clone(), "endpoint", p))?;
    let auto_cap = fields.get("max_concurrent_jobs").and_then(Value::as_str) == Some("auto");
    let max_concurrent_jobs = match fields.get("max_concurrent_jobs") {
        None => DEFAULT_MAX_CONCURRENT_JOBS,
        Some(_) if auto_cap => AUTO_CEILING,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                entry_error(
                    label.clone(),
                    "max_concurrent_jobs",
                    format!("must be a whole number of at least 1 or \"auto\", got {v}"),
                )
            })?,
    };
    let drain = match fields.get("drain") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(entry_error(
                label.clone(),
                "drain",
                format!("must be true or false, got {v}"),
            ))
        }
    };
    let source_addresses = fields
        .get("source_addresses")
        .map(source_addresses)
        .transpose()
        .map_err(|p| entry_error(label.clone(), "source_addresses", p))?;
    let labels = fields
        .get("labels")
        .map(worker_labels)
        .transpose()
        .map_err(|p| entry_error(label.clone(), "labels", p))?
        .unwrap_or_default();
    Ok(WorkerSpec {
        worker_id: worker_id.to_string(),
        endpoint,
        max_concurrent_jobs,
        auto_cap,
        drain,
        source_addresses,
        labels,
    })
}

/// A worker's `"labels"`: a list of strings.
fn worker_labels(value: &Value) -> Result<Vec<String>, String> {
    let items: Option<Vec<&str>> = value
        .as_array()
        .and_then(|items| items.iter().map(Value::as_str).collect());
    let items = items.ok_or_else(|| {
        format!("must be a list of strings such as [\"arm64\", \"gpu\"], got {value}")
    })?;
    labels::parse(&items).map_err(|e| format!("is not a valid list of labels: {e}"))
}

/// A worker's own `"source_addresses"`: a list of addresses or CIDR blocks, or one string of
/// them separated by commas; an empty list means the system's choice for this worker.
fn source_addresses(value: &Value) -> Result<Vec<IpAddr>, String> {
    let parsed = match value {
        Value::String(text) => addresses::parse_list(text),
        Value::Array(items) => {
            let texts: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let texts =
                texts.ok_or_else(|| format!("must list addresses as strings, got {value}"))?;
            addresses::parse_items(texts)
        }
        other => {
            return Err(format!(
                "must be a list of addresses or CIDR blocks such as [\"10.0.0.16/29\"], got {other}"
            ))
        }
    };
    parsed.map_err(|e| format!("is wrong: {e}"))
}

/// A source address the coordinator cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceAddressError {
    /// The address.
    pub address: IpAddr,
    /// Where it was given: `--source-addresses` or a workers.json entry.
    pub given_by: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for SourceAddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "source address {} (from {}) {}",
            self.address, self.given_by, self.problem
        )
    }
}

impl std::error::Error for SourceAddressError {}

/// The pairs of workers (their indexes, and the host) whose endpoints name the same host: two
/// sandrun workers on one host share its job directory (`sandrun_jobs/<id>` under the system's
/// temporary directory), and their job ids (`job_<seconds>_<counter>`) can collide.
pub fn sharing_a_host(specs: &[WorkerSpec]) -> Vec<(usize, usize, String)> {
    let hosts: Vec<String> = specs
        .iter()
        .map(|w| endpoint_parts(&w.endpoint).host.to_ascii_lowercase())
        .collect();
    let mut pairs = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        if let Some(j) = hosts[..i].iter().position(|h| h == host) {
            pairs.push((j, i, host.clone()));
        }
    }
    pairs
}

/// Checks that every source address is configured on this host (binding to it must work), that
/// a worker whose endpoint is a literal IP is reached from addresses of its family, and that no
/// `https://` worker has any (its submits cannot be bound).
pub fn check_source_addresses(
    specs: &[WorkerSpec],
    flag: &[IpAddr],
) -> Result<(), SourceAddressError> {
    let mut named: Vec<(IpAddr, String)> = flag
        .iter()
        .map(|a| (*a, "--source-addresses".to_string()))
        .collect();
    for (index, spec) in specs.iter().enumerate() {
        let label = format!("workers.json {}", entry_label(index, Some(&spec.worker_id)));
        for address in spec.source_addresses.iter().flatten() {
            named.push((*address, label.clone()));
        }
        let own = spec.source_addresses.as_deref();
        let given_by = || {
            if own.is_some() {
                label.clone()
            } else {
                "--source-addresses".to_string()
            }
        };
        if spec.over_tls() {
            if let Some(address) = own.unwrap_or(flag).first() {
                return Err(SourceAddressError {
                    address: *address,
                    given_by: given_by(),
                    problem: format!(
                        "cannot be used for {} (of {label}): submits to an https:// worker cannot leave from a chosen source address; give this worker \"source_addresses\": [] (the system's choice) or reach it over http://",
                        spec.endpoint
                    ),
                });
            }
            continue;
        }
        let rest = spec.endpoint.trim_start_matches("http://");
        let host = split_host_port(rest.split('/').next().unwrap_or_default()).0;
        let Ok(target) = host.parse::<IpAddr>() else {
            continue;
        };
        if let Some(address) = own
            .unwrap_or(flag)
            .iter()
            .find(|a| a.is_ipv4() != target.is_ipv4())
        {
            return Err(SourceAddressError {
                address: *address,
                given_by: given_by(),
                problem: format!(
                    "cannot reach {} (of {label}): one is IPv4, the other IPv6; give the worker \"source_addresses\" of its own family",
                    spec.endpoint
                ),
            });
        }
    }
    for (address, given_by) in named {
        if let Err(e) = check_bindable(address) {
            return Err(SourceAddressError {
                address,
                given_by,
                problem: format!(
                    "is not configured on this host ({e}); add it to an interface first (e.g. `ip addr add {address} dev lo` for a local worker) or leave it out"
                ),
            });
        }
    }
    Ok(())
}

/// Gives every worker without addresses of its own those of `--source-addresses`.
pub fn apply_default_sources(specs: &mut [WorkerSpec], defaults: &[IpAddr]) {
    for spec in specs {
        spec.source_addresses
            .get_or_insert_with(|| defaults.to_vec());
    }
}

fn required_string<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
    label: &str,
) -> Result<&'a str, WorkersFileError> {
    match fields.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(entry_error(
            label.to_string(),
            name,
            format!("must be a string, got {other}"),
        )),
        None => Err(entry_error(label.to_string(), name, "is missing")),
    }
}

/// Checks an endpoint is `http[s]://host[:port][/prefix]` and returns it without a trailing
/// slash (`https://` reaches sandrun through a TLS proxy in front of it).
fn normalize_endpoint(endpoint: &str) -> Result<String, String> {
    let Some(rest) = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
    else {
        return Err(format!(
            "is {endpoint:?}: must be an http:// or https:// URL with a host, e.g. http://10.0.0.5:8443"
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = split_host_port(authority);
    let stray_colon = !authority.starts_with('[') && host.contains(':');
    if host.is_empty() || host.contains(['@', '?', '#', ' ']) || stray_colon {
        return Err(format!("is {endpoint:?}: the URL has no usable host"));
    }
    if let Some(port) = port {
        let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        if !digits || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("is {endpoint:?}: the port must be 1-65535"));
        }
    }
    if rest.contains(['?', '#']) {
        return Err(format!("is {endpoint:?}: no query or fragment allowed"));
    }
    Ok(endpoint.trim_end_matches('/').to_string())
}

/// Splits `host[:port]` or `[v6]:port`.
pub fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(v6) = authority.strip_prefix('[') {
        return match v6.split_once(']') {
            Some((host, rest)) => (host, rest.strip_prefix(':')),
            None => ("", None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

/// The parts of a worker endpoint `http[s]://host[:port][/prefix]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointParts<'a> {
    /// `https://`.
    pub tls: bool,
    /// `host[:port]` as written (the `Host` header).
    pub authority: &'a str,
    /// The host (an IPv6 address without its brackets).
    pub host: &'a str,
    /// The port; 80 (443 for `https://`) when none is written or it is no port number (the
    /// workers file refuses those).
    pub port: u16,
    /// The path prefix, from its `/`, without trailing slashes; empty for none.
    pub prefix: &'a str,
}

/// Splits an endpoint into its parts.
pub fn endpoint_parts(endpoint: &str) -> EndpointParts<'_> {
    let (tls, rest) = match endpoint.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, endpoint.strip_prefix("http://").unwrap_or(endpoint)),
    };
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = split_host_port(authority);
    let port = port
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(if tls { 443 } else { 80 });
    EndpointParts {
        tls,
        authority,
        host,
        port,
        prefix,
    }
}

/// The form two endpoints are compared in: lower-case host, explicit port.
fn endpoint_key(endpoint: &str) -> String {
    let parts = endpoint_parts(endpoint);
    format!(
        "{}:{}/{}",
        parts.host.to_ascii_lowercase(),
        parts.port,
        parts.prefix.strip_prefix('/').unwrap_or(parts.prefix)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_splits_into_its_parts_with_the_default_port_of_its_scheme() {
        for (endpoint, parts) in [
            (
                "https://[::1]/sandrun/",
                (true, "[::1]", "::1", 443, "/sandrun"),
            ),
            (
                "http://Worker-1:8443",
                (false, "Worker-1:8443", "Worker-1", 8443, ""),
            ),
        ] {
            let p = endpoint_parts(endpoint);
            assert_eq!((p.tls, p.authority, p.host, p.port, p.prefix), parts);
        }
        assert_eq!(endpoint_key("http://Worker-1:80/a"), "worker-1:80/a");
        assert_eq!(
            endpoint_key("http://worker-1/a"),
            endpoint_key("http://Worker-1:80/a")
        );
    }
}
