//! The settings of a running coordinator, shared by every layer that reads them.

use crate::base::addresses::AddressBlock;
use crate::base::line_file::LineTarget;
use crate::base::tls::WorkerTls;
use log::LevelFilter;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// What a 200 from `/submit` (and every recorded state change) waits for (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// One group commit and sync shared by everything that arrived meanwhile.
    Batch,
    /// One transaction and sync per state change.
    Always,
    /// Committed without syncing: survives a crash of the process, not of the machine.
    Off,
}

impl FsyncMode {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Always => "always",
            Self::Off => "off",
        }
    }
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `HH:MM:SS [LEVEL] message`.
    Text,
    /// One JSON object per line: `time`, `level`, `target`, `message`.
    Json,
}

/// How much room new uploads must leave on the state directory's filesystem (`--disk-reserve`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskReserveSetting {
    /// This many bytes (0: no reserve).
    Bytes(u64),
    /// This share of the filesystem's size, in percent.
    Percent(f64),
}

impl DiskReserveSetting {
    /// The reserve in bytes on a filesystem of `total` bytes.
    pub fn bytes_of(self, total: u64) -> u64 {
        match self {
            Self::Bytes(n) => n,
            Self::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }

    /// Whether there is no reserve to keep.
    pub fn is_none(self) -> bool {
        match self {
            Self::Bytes(n) => n == 0,
            Self::Percent(p) => p <= 0.0,
        }
    }

    /// As the flag takes it: `N` bytes or `N%`.
    pub fn describe(self) -> String {
        match self {
            Self::Bytes(n) => n.to_string(),
            Self::Percent(p) => format!("{p}%"),
        }
    }
}

/// Settings of a running coordinator (see `trusted-pool --help`).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// HTTP port (0: any free port).
    pub port: u16,
    /// Address to listen on.
    pub bind: IpAddr,
    /// The allowlist file.
    pub workers: PathBuf,
    /// HTTP handler threads.
    pub threads: usize,
    /// Time between health probes of a healthy worker.
    pub health_interval: Duration,
    /// Timeout of a health probe, and of connecting to a worker.
    pub health_timeout: Duration,
    /// Spool and results directory.
    pub state_dir: PathBuf,
    /// Largest accepted submit body.
    pub max_upload_bytes: u64,
    /// Most bytes the archives of one submit may unpack to (what a sandrun worker writes to
    /// its disk); the coordinator reads each archive through to check it.
    pub max_unpacked_bytes: u64,
    /// Refuse every file a sandrun worker would unpack as an archive (`--refuse-archives`).
    pub refuse_archives: bool,
    /// Most `files` parts in one submit (their names and types are kept in memory while the
    /// job waits).
    pub max_files: usize,
    /// Total size of small waiting uploads held in memory instead of the state directory.
    pub upload_memory_bytes: u64,
    /// A finished job's results up to this many bytes are held in its job store row (committed
    /// and synced with its record) instead of a results segment; 0 = always a segment.
    pub row_results_max: u64,
    /// The most bytes of one job's outputs collected into the state directory; outputs past it
    /// stay on the worker (served from there while it keeps them); 0 = no limit.
    pub max_results_bytes: u64,
    /// How long a worker may take to answer a submit, status, logs or download.
    pub dispatch_timeout: Duration,
    /// Time between polls of a worker's running jobs.
    pub track_interval: Duration,
    /// Nice steps the threads that dispatch and follow jobs run below the rest (0-19).
    pub follow_nice: u8,
    /// Grace before a job whose worker does not answer is lost.
    pub lost_after: Duration,
    /// Dispatch attempts before a job fails.
    pub max_attempts: u32,
    /// The most reruns after a lost run a submit may ask for (0: none).
    pub max_reruns: u32,
    /// A job queued this long in its priority level moves up one level.
    pub priority_aging: Duration,
    /// Room that new uploads must leave on the state directory's filesystem.
    pub disk_reserve: DiskReserveSetting,
    /// The longest a job may wait in the queue before it fails unstarted, and the longest a
    /// submit may ask for (None: as long as it takes).
    pub queue_timeout: Option<Duration>,
    /// Most `GET /status/{id}?wait=` requests parked at once.
    pub max_waiting: usize,
    /// Most of them parked at once for one client address.
    pub max_waiting_per_ip: usize,
    /// Log verbosity.
    pub log_level: LevelFilter,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Where a line per answered request goes (None: nowhere).
    pub access_log: Option<LineTarget>,
    /// The client keys file (None: the coordinator is open to anyone who reaches it).
    pub api_keys: Option<PathBuf>,
    /// Most clients following jobs at once (`/logs/{id}?follow=1`, `/stream/{id}`).
    pub max_followers: usize,
    /// Most followed streams at once from one client address.
    pub max_followers_per_ip: usize,
    /// Silence after which a followed stream says the job's status (text) or pings (WebSocket).
    pub follow_heartbeat: Duration,
    /// Fail jobs whose result does not verify, and distrust their worker.
    pub require_verified: bool,
    /// What a commit of the job store waits for.
    pub fsync: FsyncMode,
    /// Finished jobs kept in the store, newest first.
    pub retain_jobs: u64,
    /// How long a finished job is kept.
    pub retain_for: Duration,
    /// Bytes of results segments kept (0: no limit).
    pub retain_bytes: u64,
    /// Queued jobs beyond which `/submit` answers 503.
    pub max_queued_jobs: usize,
    /// Bytes of file names, content types and labels the jobs not yet ended may hold in memory
    /// (see [`crate::base::job::Job::names_bytes`]); beyond them `/submit` answers 503.
    pub max_names_bytes: u64,
    /// How long a graceful shutdown waits for requests and dispatches in flight.
    pub shutdown_grace: Duration,
    /// Origins whose pages may call the API from a browser (`*`: any); empty: none.
    pub cors_origins: Vec<String>,
    /// `GET /metrics` answers without a client key even when `api_keys` is set.
    pub metrics_open: bool,
    /// Longest silence of a client, and the longest time a request's line and headers may take.
    pub client_timeout: Duration,
    /// Client connections served at once; beyond it new ones are refused.
    pub max_connections: usize,
    /// Client connections served at once from one address (IPv4, or IPv6 /64).
    pub max_connections_per_ip: usize,
    /// Requests a second one address may make on average (0: no limit).
    pub max_requests_per_ip: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`--trusted-proxies`).
    pub trusted_proxies: Vec<AddressBlock>,
    /// Connections from the trusted proxies begin with a PROXY protocol header naming the
    /// client (`--proxy-protocol`).
    pub proxy_protocol: bool,
    /// Request bodies (uploads) read at once; beyond it a submit is answered 503.
    pub max_uploads: usize,
    /// Uploads read at once from one client address; beyond it its submit is answered 503.
    pub max_uploads_per_ip: usize,
    /// The listener's certificate chain and key (PEM): HTTPS instead of HTTP when set.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Trust and client certificate for `https://` workers.
    pub worker_tls: WorkerTls,
    /// Local addresses submits to a worker go out from (empty: the system's choice), unless
    /// the worker's own entry names others.
    pub source_addresses: Vec<IpAddr>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            port: 9000,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            workers: PathBuf::from("workers.json"),
            threads: 8,
            health_interval: Duration::from_secs(30),
            health_timeout: Duration::from_secs(5),
            state_dir: PathBuf::from("trusted-pool-state"),
            max_upload_bytes: 100 * 1024 * 1024,
            max_unpacked_bytes: 1024 * 1024 * 1024,
            refuse_archives: false,
            max_files: 256,
            upload_memory_bytes: 1024 * 1024,
            row_results_max: 32 * 1024,
            max_results_bytes: 1024 * 1024 * 1024,
            dispatch_timeout: Duration::from_secs(360),
            track_interval: Duration::from_secs(1),
            follow_nice: 5,
            lost_after: Duration::from_secs(120),
            max_attempts: 3,
            max_reruns: 3,
            priority_aging: Duration::from_secs(300),
            queue_timeout: None,
            disk_reserve: DiskReserveSetting::Percent(1.0),
            max_waiting: 256,
            max_waiting_per_ip: 128,
            log_level: LevelFilter::Info,
            log_format: LogFormat::Text,
            access_log: None,
            api_keys: None,
            max_followers: 256,
            max_followers_per_ip: 128,
            follow_heartbeat: Duration::from_secs(30),
            require_verified: false,
            fsync: FsyncMode::Batch,
            retain_jobs: 10_000,
            retain_for: Duration::from_secs(7 * 24 * 3600),
            retain_bytes: 0,
            max_queued_jobs: 10_000,
            max_names_bytes: 32 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            cors_origins: Vec::new(),
            metrics_open: false,
            client_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_ip: 512,
            max_requests_per_ip: 0,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            max_uploads: 128,
            max_uploads_per_ip: 64,
            tls: None,
            worker_tls: WorkerTls::default(),
            source_addresses: Vec::new(),
        }
    }
}
