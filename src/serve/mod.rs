//! Starting the coordinator: logging, the allowlist, the spool, the threads, the HTTP server,
//! and what it does on a signal.

pub mod allocator;
pub mod json_log;
pub mod notify;
pub mod shutdown;
pub mod signals;
pub mod text_log;

use crate::base::addresses::{self, AddressBlock};
use crate::base::api_keys::{self, KeysFileError};
use crate::base::config::{LogFormat, ServeConfig};
use crate::base::fd_limit;
use crate::base::line_file::{LineFile, LineTarget};
use crate::base::map_limit;
use crate::base::niceness;
use crate::base::tls::{self, TlsError};
use crate::http::{routes, server};
use crate::pool::{control, expiry, health, recovery, reload, scheduler};
use crate::state::certificates::Presented;
use crate::state::context::Context;
use crate::state::pool_state::PoolState;
use crate::store::dir_lock::{DirLock, DirLockError};
use crate::store::file_access::{self, Denied, Need};
use crate::store::jobs_db::{DeferredCheck, JobStore, Retention, StoreError};
use crate::store::scrub;
use crate::store::snapshot;
use crate::store::spool::Spool;
use crate::worker::client::{Timeouts, WorkerClient, SANDRUN_LONGEST_RUN};
use crate::worker::identity::short_id;
use crate::worker::workers_file::{self, SourceAddressError, WorkersFileError};
use crossbeam_channel::Receiver;
use log::LevelFilter;
use notify::Notifier;
use signals::Signal;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Why the coordinator could not start.
#[derive(Debug)]
pub enum ServeError {
    /// The workers file (at this path) is wrong.
    Workers(PathBuf, WorkersFileError),
    /// The client keys file (at this path) is wrong.
    ApiKeys(PathBuf, KeysFileError),
    /// The state directory is unusable.
    StateDir(PathBuf, std::io::Error),
    /// The state directory is in use by another coordinator, or cannot be locked.
    StateDirLock(DirLockError),
    /// A file of the state directory may not be written by the user the coordinator runs as.
    StateDirAccess(Denied),
    /// The HTTP port could not be bound.
    Bind(SocketAddr, String),
    /// A coordinator thread could not be started.
    Thread(std::io::Error),
    /// The process signals could not be taken over.
    Signals(std::io::Error),
    /// The job store cannot be opened (or is refused).
    Store(StoreError),
    /// A TLS certificate, key or CA file is unusable.
    Tls(TlsError),
    /// A source address cannot be used.
    SourceAddress(SourceAddressError),
    /// The access log (`--access-log`) cannot be opened.
    AccessLog(LineTarget, std::io::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Workers(path, e) => write!(f, "{}: {e}", path.display()),
            Self::ApiKeys(path, e) => write!(f, "{}: {e}", path.display()),
            Self::StateDir(dir, e) => write!(f, "state directory {}: {e}", dir.display()),
            Self::StateDirLock(e) => write!(f, "{e}"),
            Self::StateDirAccess(e) => write!(f, "{e}"),
            Self::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            Self::Thread(e) => write!(f, "cannot start a thread: {e}"),
            Self::Signals(e) => write!(f, "cannot take over process signals: {e}"),
            Self::Store(e) => write!(f, "job store: {e}"),
            Self::Tls(e) => write!(f, "TLS: {e}"),
            Self::SourceAddress(e) => write!(f, "{e}"),
            Self::AccessLog(target, e) => write!(
                f,
                "cannot open the access log {target}: {e} (give a file the coordinator may create or append to, or - for stdout)"
            ),
        }
    }
}

impl std::error::Error for ServeError {}

fn init_logging(level: LevelFilter, format: LogFormat) {
    // Either logger lets everything through; the level in force is the `log` crate's maximum,
    // which `POST /log-level` changes while the coordinator runs.
    let _ = match format {
        LogFormat::Json => log::set_boxed_logger(Box::new(json_log::JsonLog)),
        LogFormat::Text => {
            log::set_max_level(LevelFilter::Trace);
            log::set_boxed_logger(Box::new(text_log::TextLog::to_stderr()))
        }
    };
    log::set_max_level(level);
}

/// Runs the coordinator; returns only when it cannot start or its HTTP server stops.
pub fn run(mut config: ServeConfig) -> Result<(), ServeError> {
    let tuned = allocator::tune();
    niceness::note_base();
    signals::block().map_err(ServeError::Signals)?;
    init_logging(config.log_level, config.log_format);
    if let Err(why) = tuned {
        log::warn!("{why}");
    }
    let mut specs = workers_file::load(&config.workers)
        .map_err(|e| ServeError::Workers(config.workers.clone(), e))?;
    workers_file::check_source_addresses(&specs, &config.source_addresses)
        .map_err(ServeError::SourceAddress)?;
    workers_file::apply_default_sources(&mut specs, &config.source_addresses);
    for w in &specs {
        let sources = w.source_addresses.as_deref().unwrap_or_default();
        log::info!(
            "Added trusted worker: {}... at {}{}",
            short_id(&w.worker_id),
            w.endpoint,
            if sources.is_empty() {
                String::new()
            } else {
                format!(" (submits from {} source addresses)", sources.len())
            }
        );
    }
    let access_log = match &config.access_log {
        Some(target) => Some(
            LineFile::open(target.clone(), "access-log")
                .map_err(|e| ServeError::AccessLog(target.clone(), e))?,
        ),
        None => None,
    };
    let keys = match &config.api_keys {
        Some(path) => {
            let keys = api_keys::load(path).map_err(|e| ServeError::ApiKeys(path.clone(), e))?;
            log::info!(
                "Client keys: {} from {} ({})",
                keys.keys().len(),
                path.display(),
                keys.names()
            );
            Some(keys)
        }
        None => None,
    };
    check_open_file_limit(config.max_connections);
    warn_short_dispatch_timeout(config.dispatch_timeout, config.lost_after);
    config.max_connections = within_map_limit(config.max_connections, config.threads);
    log_trusted_proxies(&config.trusted_proxies, config.proxy_protocol);
    // Before anything in it is opened: SQLite would open a job store it may not write
    // read-only, and the first write would fail as if the disk went read-only.
    file_access::check(&config.state_dir, Need::Write).map_err(ServeError::StateDirAccess)?;
    let _state_dir_lock = DirLock::take(&config.state_dir).map_err(ServeError::StateDirLock)?;
    let spool = Spool::open(&config.state_dir, config.upload_memory_bytes)
        .map_err(|e| ServeError::StateDir(config.state_dir.clone(), e))?;
    snapshot::clear_leftovers(&config.state_dir)
        .map_err(|e| ServeError::StateDir(config.state_dir.clone(), e))?;
    let (results_dir, segments) = spool.results_segments();
    let retention = Retention {
        jobs: config.retain_jobs,
        for_secs: config.retain_for.as_secs_f64(),
        bytes: config.retain_bytes,
        results_dir,
        segments,
    };
    let opened = Instant::now();
    let (store, unsettled) =
        JobStore::open(&config.state_dir, config.fsync, retention).map_err(ServeError::Store)?;
    store.watch_segments(spool.segment_watches());
    let addr = SocketAddr::new(config.bind, config.port);
    let https_listed = specs.iter().any(|w| w.over_tls());
    let worker_tls = config
        .worker_tls
        .wanted(https_listed)
        .then(|| tls::client_config(&config.worker_tls))
        .transpose()
        .map_err(ServeError::Tls)?;
    let worker_client_expiry = worker_tls.as_ref().and_then(|t| t.expiry.clone());
    let (acceptor, listener_expiry) = match &config.tls {
        Some((cert, key)) => {
            let loaded = tls::server_config(cert, key).map_err(ServeError::Tls)?;
            (
                Some(Arc::new(tiny_http::TlsAcceptor::new(loaded.config))),
                loaded.expiry,
            )
        }
        None => (None, None),
    };
    let limits = tiny_http::Limits {
        max_connections: config.max_connections,
        max_connections_per_address: config.max_connections_per_ip,
        unshared: proxies_test(&config.trusted_proxies),
        proxied: config
            .proxy_protocol
            .then(|| proxies_test(&config.trusted_proxies))
            .flatten(),
        client_timeout: Some(config.client_timeout),
    };
    let server = tiny_http::Server::with_limits(addr, limits, acceptor.clone())
        .map_err(|e| ServeError::Bind(addr, e.to_string()))?;
    let server = Arc::new(server);
    let threads = config.threads;
    let listener_tls = config.tls.clone();
    let timeouts = Timeouts {
        health: config.health_timeout,
        dispatch: config.dispatch_timeout,
    };
    let mut table = PoolState::new(specs, Instant::now());
    table.queue.set_aging(Some(config.priority_aging));
    table.keys_listed(keys.as_ref());
    let (mut ctx, signals) = Context::new(config, table, spool, store);
    ctx.client = WorkerClient::with_tls(timeouts, worker_tls.map(|t| t.config));
    ctx.certificates.set(Presented::Listener, listener_expiry);
    ctx.certificates
        .set(Presented::WorkerClient, worker_client_expiry);
    ctx.connections = server.connection_counts();
    ctx.access_log = access_log;
    // The address bound (with `--port 0`, the port the system chose).
    let listening = server
        .server_addr()
        .to_ip()
        .map_or_else(|| addr.to_string(), |a| a.to_string());
    if let Some(keys) = keys {
        ctx.keys.set(keys);
    } else if !ctx.config.bind.is_loopback() {
        log::warn!(
            "No --api-keys: anyone who reaches {listening} can submit jobs and read every job's status, logs and outputs"
        );
    }
    let ctx = Arc::new(ctx);
    ctx.attach();
    expiry::remind_daily(&ctx);
    control::restore_drains(&ctx);
    control::restore_submits_pause(&ctx);
    // Listed before recovery restarts any collection: every one of them is an earlier run's.
    let (results_dir, _) = ctx.spool.results_segments();
    let earlier_segments = scrub::earlier_segments(&results_dir);
    let recovered = recovery::recover(&ctx, unsettled);
    log::info!(
        "Job store {}: {} jobs; recovered {} queued, {} followed on workers, {} to collect, {} ended ({:.0} ms)",
        ctx.store.figures().path.display(),
        ctx.store.figures().rows,
        recovered.queued,
        recovered.followed,
        recovered.to_collect,
        recovered.ended,
        opened.elapsed().as_secs_f64() * 1000.0
    );
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
    let received = signals::listen().map_err(ServeError::Thread)?;
    let notifier = Arc::new(Notifier::from_env());
    let control_ctx = Arc::clone(&ctx);
    let control_server = Arc::clone(&server);
    let scheme = if listener_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let reload = Reload {
        listener_tls: listener_tls.zip(acceptor),
    };
    let control_notifier = Arc::clone(&notifier);
    thread::Builder::new()
        .name("control".to_string())
        .spawn(move || {
            control(
                control_ctx,
                control_server,
                received,
                &control_notifier,
                reload,
            )
        })
        .map_err(ServeError::Thread)?;
    notify::start_watchdog(&notifier, &ctx).map_err(ServeError::Thread)?;
    log::info!("Listening on {scheme}://{listening}");
    notifier.notify(&format!(
        "READY=1\nSTATUS=serving on {scheme}://{listening}"
    ));
    let check = ctx.store.deferred_check();
    let tidy_ctx = Arc::clone(&ctx);
    thread::Builder::new()
        .name("store-check".to_string())
        .spawn(move || {
            let sound = check.is_none_or(check_store_late);
            if sound {
                scrub_earlier_segments(&tidy_ctx, &results_dir, &earlier_segments);
            }
        })
        .map_err(ServeError::Thread)?;
    server::run(ctx, server, threads, routes::route, routes::is_quick);
    Ok(())
}

/// SQLite's integrity check of a store too large to check before serving: a store that fails
/// it stops the coordinator with exit 1 and the same message a check at start gives. Returns
/// whether it passed.
fn check_store_late(check: DeferredCheck) -> bool {
    let started = Instant::now();
    let path = check.path().display().to_string();
    match check.run() {
        Ok(()) => {
            log::info!(
                "Job store {path}: integrity check passed ({:.1} s, while serving)",
                started.elapsed().as_secs_f64()
            );
            true
        }
        Err(e @ StoreError::Corrupt(..)) => {
            log::error!("{e}");
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            log::warn!("Job store {path}: the integrity check could not run: {e}");
            false
        }
    }
}

/// Punches out what no job refers to in the results segments of earlier runs (see
/// [`scrub`]), once the job store passed its integrity check.
fn scrub_earlier_segments(ctx: &Context, dir: &Path, names: &[String]) {
    let scrubbed = scrub::scrub(&ctx.store, dir, names, ctx.spool.removals());
    if scrubbed.bytes > 0 || scrubbed.skipped > 0 {
        log::info!(
            "Results segments of earlier runs: {} bytes no job refers to in {} segments are punched out; {} segments left whole",
            scrubbed.bytes,
            scrubbed.segments,
            scrubbed.skipped
        );
    }
}

/// What SIGHUP re-reads.
struct Reload {
    /// The listener's certificate and key files, and where the new settings go.
    listener_tls: Option<((PathBuf, PathBuf), Arc<tiny_http::TlsAcceptor>)>,
}

/// Acts on process signals for the life of the coordinator.
fn control(
    ctx: Arc<Context>,
    server: Arc<tiny_http::Server>,
    received: Receiver<Signal>,
    notifier: &Notifier,
    reload: Reload,
) {
    // SIGHUP's reloads run on a thread of their own: a file whose open or read blocks (a FIFO,
    // a hung network mount) holds up reloads, never a stop. SIGHUPs that come while one runs
    // make one more reload after it.
    let (reload_asked, reload_wanted) = crossbeam_channel::bounded::<()>(1);
    let reload_ctx = Arc::clone(&ctx);
    let reloader = thread::Builder::new()
        .name("reload".to_string())
        .spawn(move || {
            for () in reload_wanted {
                reload_files(&reload_ctx, &reload);
            }
        });
    if let Err(e) = reloader {
        log::error!("Cannot start the thread that reloads on SIGHUP ({e}); POST /reload still reloads workers.json");
    }
    let mut stopping = false;
    for signal in received {
        match signal {
            Signal::Shutdown if stopping => {
                log::warn!("A second stop signal: exiting at once (the job store is consistent at every instant)");
                std::process::exit(1);
            }
            Signal::Shutdown => {
                stopping = true;
                notifier.notify("STOPPING=1\nSTATUS=stopping");
                let ctx = Arc::clone(&ctx);
                let server = Arc::clone(&server);
                let started = thread::Builder::new()
                    .name("shutdown".to_string())
                    .spawn(move || shutdown::run(&ctx, &server));
                if let Err(e) = started {
                    log::error!("Cannot start the graceful shutdown ({e}); exiting at once");
                    std::process::exit(1);
                }
            }
            Signal::Reload => {
                log::info!("SIGHUP received: re-reading the coordinator's files");
                if let Err(crossbeam_channel::TrySendError::Full(())) = reload_asked.try_send(()) {
                    log::info!("A reload is under way already; one more follows it");
                }
            }
        }
    }
}

/// What SIGHUP re-reads: the keys file, workers.json, the worker TLS files, the listener's
/// certificate; it also trusts distrusted workers again and reopens the access log.
fn reload_files(ctx: &Context, reload: &Reload) {
    reload::reload_files(ctx, "SIGHUP");
    health::trust_again(ctx);
    reload_listener_tls(ctx, reload);
    if let Some(access_log) = &ctx.access_log {
        access_log.reopen();
    }
}

/// Raises the open-file limit to its hard limit, and warns when fewer client connections than
/// `max_connections` fit under it (beyond that, new connections are refused with 503).
fn check_open_file_limit(max_connections: usize) {
    let limit = match fd_limit::raise() {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("Cannot read or raise the open-file limit: {e}");
            return;
        }
    };
    if limit.now > limit.was {
        log::info!(
            "Open-file limit raised from {} to {} (its hard limit)",
            limit.was,
            limit.now
        );
    }
    if limit.connections() < max_connections as u64 {
        log::warn!(
            "The open-file limit ({}) leaves room for about {} client connections, fewer than --max-connections {max_connections}: beyond that, new connections are refused with 503. Raise the limit (LimitNOFILE= in a systemd unit, ulimit -Hn) or lower --max-connections",
            limit.now,
            limit.connections()
        );
    }
}

/// Warns when `--dispatch-timeout` is shorter than a sandrun job may run: a worker holds its
/// answers while a job runs, so a call to a worker busy with a long job gives up first.
fn warn_short_dispatch_timeout(dispatch: Duration, lost_after: Duration) {
    let longest = SANDRUN_LONGEST_RUN.as_secs();
    if dispatch < SANDRUN_LONGEST_RUN {
        log::warn!(
            "--dispatch-timeout {} s is shorter than the {longest} s a sandrun job may run, during which its worker holds every answer (a submit's too): calls to a worker busy with a long job will give up, a submit that gives up loses its job, and the worker's other jobs are lost once unanswered past --lost-after {} s. Raise --dispatch-timeout to {longest} s or more (the default is 360)",
            dispatch.as_secs(),
            lost_after.as_secs()
        );
    }
}

/// `max_connections`, lowered (with a warning) to the connections whose threads fit under the
/// kernel's limit on memory maps beside `handlers` handler threads: past it, a new connection's
/// thread would abort the process.
fn within_map_limit(max_connections: usize, handlers: usize) -> usize {
    let Some(maps) = map_limit::max_map_count() else {
        return max_connections;
    };
    let room = map_limit::connection_room(maps, handlers as u64);
    if max_connections as u64 <= room {
        return max_connections;
    }
    let room = usize::try_from(room).unwrap_or(max_connections);
    log::warn!(
        "vm.max_map_count ({maps}) leaves room for the threads of about {room} client connections, fewer than --max-connections {max_connections}: --max-connections is lowered to {room} (beyond it, new connections are refused with 503; a thread started past the limit would end the process). Raise vm.max_map_count (sysctl) or lower --max-connections"
    );
    room
}

/// The trusted proxies, whose connections carry many clients: held to `--max-connections` only,
/// not to one address's share (`--max-connections-per-ip`), and under `--proxy-protocol`
/// opened by a PROXY protocol header.
fn proxies_test(proxies: &[AddressBlock]) -> Option<tiny_http::PeerTest> {
    if proxies.is_empty() {
        return None;
    }
    let proxies = proxies.to_vec();
    Some(tiny_http::PeerTest(Arc::new(move |peer| {
        addresses::holds(&proxies, peer)
    })))
}

/// Says whose PROXY headers and `X-Forwarded-For` are believed, and warns when that is
/// anybody's.
fn log_trusted_proxies(proxies: &[AddressBlock], proxy_protocol: bool) {
    if proxies.is_empty() {
        return;
    }
    let list = proxies
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if proxy_protocol {
        log::info!(
            "Connections from {list} must begin with a PROXY protocol header (--proxy-protocol): the client it names is each request's address and holds its own share of --max-connections-per-ip"
        );
    }
    log::info!(
        "Client addresses of requests from {list} are read from their X-Forwarded-For (--trusted-proxies); their connections count against --max-connections only"
    );
    if let Some(all) = proxies.iter().find(|b| b.is_everything()) {
        log::warn!(
            "--trusted-proxies holds {all}: any client can name any address in X-Forwarded-For, and so escape --max-requests-per-ip and stand as another in the logs; list only the proxies' addresses"
        );
    }
}

/// Re-reads the listener's certificate and key; new connections use them. A bad pair is
/// refused and logged, and the old one stays.
fn reload_listener_tls(ctx: &Context, reload: &Reload) {
    let Some(((cert, key), acceptor)) = &reload.listener_tls else {
        return;
    };
    match tls::server_config(cert, key) {
        Ok(loaded) => {
            acceptor.replace(loaded.config);
            log::info!("TLS certificate reloaded from {}", cert.display());
            expiry::use_certificate(ctx, Presented::Listener, loaded.expiry);
        }
        Err(e) => log::error!("TLS certificate not reloaded, the old one stays: {e}"),
    }
}
