//! Starting the coordinator: logging, the allowlist, the spool, the threads, the HTTP server.

use crate::context::Context;
use crate::identity::short_id;
use crate::pool_state::PoolState;
use crate::spool::Spool;
use crate::workers_file::{self, WorkersFileError};
use crate::{health, http_server, scheduler};
use log::LevelFilter;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

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
    /// Total size of small waiting uploads held in memory instead of the state directory.
    pub upload_memory_bytes: u64,
    /// How long a worker may take to answer a submit, status, logs or download.
    pub dispatch_timeout: Duration,
    /// Time between polls of a worker's running jobs.
    pub track_interval: Duration,
    /// Grace before a job whose worker does not answer is lost.
    pub lost_after: Duration,
    /// Dispatch attempts before a job fails.
    pub max_attempts: u32,
    /// Log verbosity.
    pub log_level: LevelFilter,
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
            upload_memory_bytes: 4 * 1024 * 1024,
            dispatch_timeout: Duration::from_secs(360),
            track_interval: Duration::from_secs(1),
            lost_after: Duration::from_secs(120),
            max_attempts: 3,
            log_level: LevelFilter::Info,
        }
    }
}

/// Why the coordinator could not start.
#[derive(Debug)]
pub enum ServeError {
    /// The workers file (at this path) is wrong.
    Workers(PathBuf, WorkersFileError),
    /// The state directory is unusable.
    StateDir(PathBuf, std::io::Error),
    /// The HTTP port could not be bound.
    Bind(SocketAddr, String),
    /// A coordinator thread could not be started.
    Thread(std::io::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Workers(path, e) => write!(f, "{}: {e}", path.display()),
            Self::StateDir(dir, e) => write!(f, "state directory {}: {e}", dir.display()),
            Self::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            Self::Thread(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

fn init_logging(level: LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .add_filter_allow_str("trusted_pool")
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .build();
    let _ = simplelog::WriteLogger::init(level, config, std::io::stderr());
}

/// Runs the coordinator; returns only when it cannot start or its HTTP server stops.
pub fn run(config: ServeConfig) -> Result<(), ServeError> {
    init_logging(config.log_level);
    let specs = workers_file::load(&config.workers)
        .map_err(|e| ServeError::Workers(config.workers.clone(), e))?;
    for w in &specs {
        log::info!(
            "Added trusted worker: {}... at {}",
            short_id(&w.worker_id),
            w.endpoint
        );
    }
    let spool = Spool::open(&config.state_dir, config.upload_memory_bytes)
        .map_err(|e| ServeError::StateDir(config.state_dir.clone(), e))?;
    let addr = SocketAddr::new(config.bind, config.port);
    let server =
        tiny_http::Server::http(addr).map_err(|e| ServeError::Bind(addr, e.to_string()))?;
    let threads = config.threads;
    let (ctx, signals) = Context::new(config, PoolState::new(specs, Instant::now()), spool);
    let ctx = Arc::new(ctx);
    let health_ctx = Arc::clone(&ctx);
    thread::Builder::new()
        .name("health".to_string())
        .spawn(move || health::run(health_ctx, signals.health))
        .map_err(ServeError::Thread)?;
    let scheduler_ctx = Arc::clone(&ctx);
    thread::Builder::new()
        .name("scheduler".to_string())
        .spawn(move || scheduler::run(scheduler_ctx, signals.scheduler))
        .map_err(ServeError::Thread)?;
    let listening = server
        .server_addr()
        .to_ip()
        .map_or_else(|| addr.to_string(), |a| a.to_string());
    log::info!("Listening on http://{listening}");
    http_server::run(ctx, Arc::new(server), threads);
    Ok(())
}
