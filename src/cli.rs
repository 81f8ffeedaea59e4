//! Command-line parsing and the commands: serve (default), `worker-id`, `check`, `new-key`.

use crate::base::addresses::{self, AddressBlock};
use crate::base::api_keys::{self, hash_key, is_valid_name, Role, MAX_NAME_LEN};
use crate::base::cert_expiry::ExpiryWarning;
use crate::base::clock::{parse_utc, unix_now, utc_text};
use crate::base::config::{DiskReserveSetting, FsyncMode, LogFormat, ServeConfig};
use crate::base::hex::hex;
use crate::base::line_file::LineTarget;
use crate::base::niceness;
use crate::base::tls::{self, WorkerTls};
use crate::serve;
use crate::store::jobs_db::DB_FILE;
use crate::store::state_check::check_state_dir;
use crate::worker::identity::{short_id, worker_id_from_key_file};
use crate::worker::workers_file;
use log::LevelFilter;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "\
trusted-pool: a job coordinator in front of allowlisted sandrun workers

USAGE:
    trusted-pool [OPTIONS]                 run the coordinator
    trusted-pool worker-id KEY.pem         print the worker_id of a sandrun key file
    trusted-pool check WORKERS.json [--source-addresses LIST]
                                           validate a workers file and the source addresses
    trusted-pool check [WORKERS.json] --api-keys FILE
                                           validate a keys file (and a workers file)
    trusted-pool check --state-dir DIR [--verify-outputs]
                                           check a stopped coordinator's state directory or an
                                           unpacked snapshot, changing nothing (and read every
                                           collected output back against its sha256)
    trusted-pool check --tls-cert PEM --tls-key PEM
    trusted-pool check --worker-tls-cert PEM --worker-tls-key PEM
                                           check a certificate and its key before a SIGHUP:
                                           they load and match, and when the chain expires
    trusted-pool new-key NAME [--admin|--read] [--expires DATE] [--bound-cidrs LIST]
                                           print a fresh client key and its --api-keys entry
                                           (a submit key; --admin: an operator's; --read: sees
                                           everything, changes nothing; --expires: refused
                                           from this UTC date or time on, 2027-01-31 or
                                           2027-01-31T12:00:00Z; --bound-cidrs: usable only
                                           from these addresses and CIDR blocks)

OPTIONS:
    --port N                 HTTP port to listen on (0 = any free port)      [default: 9000]
    --bind ADDR              address to listen on                            [default: 0.0.0.0]
    --workers FILE           allowlist of workers                            [default: workers.json]
    --threads N              HTTP handler threads, 1 to 1024                 [default: 8]
    --health-interval SECS   seconds between health probes of a worker, at least 0.1 [default: 30]
    --health-timeout SECS    timeout of one health probe                     [default: 5]
    --state-dir DIR          job store, uploads and collected results        [default: ./trusted-pool-state]
    --max-upload-bytes N     largest accepted submit body                    [default: 104857600]
    --max-unpacked-bytes N   most bytes a submit's archives may unpack to    [default: 1073741824]
    --refuse-archives        refuse .tar.gz, .tgz and .zip files (workers unpack
                             them on their host, outside their sandbox)  [default: off]
    --max-files N            most files in one submit (413 beyond)           [default: 256]
    --disk-reserve N|P%      refuse submits (507) while they would leave less than this room
                             on the state directory's filesystem, kept for the results of
                             accepted jobs; bytes, or percent of its size; 0 = none [default: 1%]
    --upload-memory-bytes N  waiting uploads of up to 64 KiB each are held in memory up to
                             this total, the rest go to the state dir; 0 = all to disk [default: 1048576]
    --row-results-max N      a finished job's results (logs and outputs) up to this many bytes
                             are kept in its job store row, larger ones in a results segment;
                             0 = all to segments, at most 1048576      [default: 32768]
    --max-results-bytes N    the most bytes of one job's outputs collected into the state dir;
                             outputs past it stay on the worker, served from there while it
                             keeps them (about 5 minutes); 0 = no limit [default: 1073741824]
    --dispatch-timeout SECS  how long a worker may take to answer a submit   [default: 360]
    --track-interval SECS    how often running jobs are polled on workers    [default: 1]
    --follow-nice N          nice steps (0-19) the threads that dispatch and follow jobs run
                             below the rest: under a CPU shortage clients are answered first
                             and jobs move on a little later; 0 = off       [default: 5]
    --lost-after SECS        grace before a job on an unreachable worker is lost [default: 120]
    --max-attempts N         dispatch attempts before a job fails            [default: 3]
    --max-reruns N           the most reruns a submit may ask for (reruns=N): a job lost on
                             its worker runs again, elsewhere if it can; 0 = none [default: 3]
    --priority-aging SECS    a job queued this long in its priority level moves up one [default: 300]
    --queue-timeout SECS     a job queued this long fails unstarted; also the most a submit's
                             queue_timeout may ask for; 0 = wait as long as it takes [default: 0]
    --max-waiting N          most parked GET /status/ID?wait= requests; 503 beyond [default: 256]
    --max-waiting-per-ip N   most of them from one client address (an IPv6 /64); 503 beyond
                             [default: half of --max-waiting]
    --log-level LEVEL        off, error, warn, info, debug or trace          [default: info]
    --log-format FORMAT      text, or json (one object per line: time, level, target,
                             message; for log shippers)                      [default: text]
    --access-log PATH        one line per answered request (time, client address, key name,
                             method, target, status, bytes, milliseconds; JSON with
                             --log-format json), appended to PATH or - for stdout; reopened
                             on SIGHUP                                       [default: none]
    --api-keys FILE          client keys (JSON); without it anyone who reaches the port may
                             submit and read every job; re-read on SIGHUP    [default: none]
    --max-followers N        clients following jobs at once (/logs/ID?follow=1,
                             /stream/ID); more get 503                       [default: 256]
    --max-followers-per-ip N followed streams at once from one client address (an IPv6 /64);
                             more get 503                [default: half of --max-followers]
    --follow-heartbeat SECS  after this much silence a followed stream says the job's status
                             (text) or pings (WebSocket), so proxies keep it open and a
                             vanished client is let go                        [default: 30]
    --require-verified       fail a job whose result signature or outputs do not
                             verify (or stay unverifiable), and keep its worker
                             unhealthy until SIGHUP or its undrain           [default: off]
    --fsync MODE             what a 200 from /submit waits for: batch (a group commit and
                             sync shared by concurrent submits), always (a sync per state
                             change) or off (commit without sync: survives a crash of the
                             process, not a power cut)                    [default: batch]
    --retain-jobs N          finished jobs kept in the job store             [default: 10000]
    --retain-for SECS        how long a finished job is kept                 [default: 604800]
    --retain-bytes N         results kept on disk: past this, the oldest finished jobs' results
                             segments are forgotten, whole; 0 = no limit     [default: 0]
    --max-queued-jobs N      beyond this many queued jobs /submit answers 503 [default: 10000]
    --max-names-bytes N      file names, content types and labels the jobs not yet ended hold
                             in memory; beyond them /submit answers 503 [default: 33554432]
    --shutdown-grace SECS    on SIGTERM/SIGINT, how long to wait for requests and dispatches
                             in flight before exiting                     [default: 30]
    --cors-origin ORIGIN     a web origin (http://host:port) whose pages may call the API
                             from a browser; repeatable; * allows any       [default: none]
    --metrics-open           serve GET /metrics without a key even with --api-keys (for a
                             Prometheus that cannot send one); otherwise it needs an admin
                             or read key
    --client-timeout SECS    a client silent this long (or whose request line and headers
                             take longer) is disconnected                    [default: 30]
    --max-connections N      client connections at once; more are refused (503) [default: 1024]
    --max-connections-per-ip N  client connections at once from one address (an IPv6
                             /64); more from it are refused (503); --trusted-proxies
                             are held to --max-connections only              [default: 512]
    --max-requests-per-ip N  requests a second one address may make (bursts of N); more
                             are answered 429; 0 = no limit                  [default: 0]
    --trusted-proxies LIST   reverse proxies (addresses, CIDR blocks) whose X-Forwarded-For
                             names the client, for the request rate and the logs [default: none]
    --proxy-protocol         connections from --trusted-proxies begin with a PROXY protocol
                             header (v1 or v2: HAProxy's send-proxy, nginx's proxy_protocol)
                             naming the client; those without one are closed
    --max-uploads N          request bodies read at once; more are answered 503 [default: 128]
    --max-uploads-per-ip N   most of them from one client address (an IPv6 /64); 503 beyond
                             [default: half of --max-uploads]
    --tls-cert PEM           serve HTTPS with this certificate chain (with --tls-key);
                             both files are re-read on SIGHUP
    --tls-key PEM            the private key of --tls-cert
    --worker-ca PEM          CA certificates trusted for https:// workers   [default: system roots]
    --worker-tls-cert PEM    client certificate presented to https:// workers (with --worker-tls-key)
    --worker-tls-key PEM     the private key of --worker-tls-cert
    --source-addresses LIST  local addresses submits leave from, comma-separated IPv4/IPv6
                             addresses or CIDR blocks (10.0.0.16/29); each is one client to
                             sandrun's per-client limits; a worker's own source_addresses
                             overrides it                                    [default: none]
    -h, --help               print this help
    -V, --version            print the version

Durations accept fractions (0.5). Exit codes: 0 ok, 1 bad workers or keys file or runtime
failure, 2 bad command line.
";

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Run the coordinator.
    Serve(Box<ServeConfig>),
    /// Print the worker_id of a key file.
    WorkerId(PathBuf),
    /// Validate a workers file, a keys file, a state directory, or several.
    Check {
        /// The workers file, if given.
        workers: Option<PathBuf>,
        /// The keys file, if given.
        api_keys: Option<PathBuf>,
        /// The state directory, if given.
        state_dir: Option<PathBuf>,
        /// Read every collected output of the state directory back and hash it.
        verify_outputs: bool,
        /// Source addresses to check on this host.
        sources: Vec<IpAddr>,
        /// Certificate and key pairs to check (`--tls-cert`, `--worker-tls-cert`).
        certificates: Vec<(PathBuf, PathBuf)>,
    },
    /// Make a new client key.
    NewKey {
        /// Its name.
        name: String,
        /// The new key's role.
        role: Role,
        /// When it expires (unix seconds), if it does.
        expires: Option<u64>,
        /// The addresses it may be used from (empty: any).
        bound_cidrs: Vec<AddressBlock>,
    },
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// A command line that cannot be run.
#[derive(Debug)]
pub enum CliError {
    /// A flag the program does not know.
    UnknownArgument(String),
    /// A flag's value is missing or malformed.
    BadValue {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A subcommand is missing its argument.
    MissingArgument(&'static str),
    /// A flag given more than once (only `--cors-origin` may be).
    Repeated(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownArgument(a) => write!(f, "unknown argument {a:?}"),
            Self::BadValue { flag, problem } => write!(f, "{flag}: {problem}"),
            Self::MissingArgument(what) => write!(f, "missing argument: {what}"),
            Self::Repeated(flag) => write!(
                f,
                "{flag} is given more than once; give it once (which one should win is not guessed)"
            ),
        }
    }
}

impl std::error::Error for CliError {}

fn bad(flag: &'static str, problem: impl Into<String>) -> CliError {
    CliError::BadValue {
        flag,
        problem: problem.into(),
    }
}

fn value<T>(
    args: &mut pico_args::Arguments,
    flag: &'static str,
    parse: fn(&str) -> Result<T, String>,
    default: T,
) -> Result<T, CliError> {
    match args.opt_value_from_str::<_, String>(flag) {
        Ok(Some(text)) => parse(&text).map_err(|p| bad(flag, p)),
        Ok(None) => Ok(default),
        Err(pico_args::Error::OptionWithoutAValue(_)) => Err(bad(flag, "needs a value")),
        Err(e) => Err(bad(flag, e.to_string())),
    }
}

/// The longest time a flag in seconds takes (about 31 years: a submit's `queue_timeout` has
/// the same bound).
const SECONDS_MAX: f64 = 1e9;

fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= SECONDS_MAX => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "expected a number of seconds above 0 and at most {SECONDS_MAX}, got {text:?}"
        )),
    }
}

/// The shortest `--health-interval`: probes any closer would be a load on the workers, not a
/// watch over them.
const HEALTH_INTERVAL_MIN: f64 = 0.1;

/// The shortest `--track-interval`: polls any closer would ask each worker about every job it
/// runs without a pause (a microsecond was taken before).
const TRACK_INTERVAL_MIN: f64 = 0.01;

fn track_interval(text: &str) -> Result<Duration, String> {
    match seconds(text)? {
        d if d.as_secs_f64() >= TRACK_INTERVAL_MIN => Ok(d),
        _ => Err(format!(
            "{text} s would poll every worker's jobs without a pause; use at least {TRACK_INTERVAL_MIN}"
        )),
    }
}

fn health_interval(text: &str) -> Result<Duration, String> {
    match seconds(text)? {
        d if d.as_secs_f64() >= HEALTH_INTERVAL_MIN => Ok(d),
        _ => Err(format!(
            "{text} s would probe every worker without a pause; use at least {HEALTH_INTERVAL_MIN}"
        )),
    }
}

/// Seconds, or 0 for none.
fn seconds_or_zero(text: &str) -> Result<Option<Duration>, String> {
    if text.trim().parse::<f64>() == Ok(0.0) {
        return Ok(None);
    }
    seconds(text).map(Some).map_err(|_| {
        format!(
            "expected a number of seconds, at most {SECONDS_MAX} (0 for no limit), got {text:?}"
        )
    })
}

/// The default of a per-address limit: half of the whole limit `n`, at least 1.
fn half(n: usize) -> usize {
    (n / 2).max(1)
}

/// The type of a whole-number flag, with its largest value (said in a refusal, so a number
/// past it is not refused without a reason).
trait Whole: std::str::FromStr + PartialOrd + From<u8> + fmt::Display {
    const MAX: Self;
}

impl Whole for u32 {
    const MAX: Self = u32::MAX;
}

impl Whole for u64 {
    const MAX: Self = u64::MAX;
}

impl Whole for usize {
    const MAX: Self = usize::MAX;
}

fn positive<T: Whole>(text: &str) -> Result<T, String> {
    match text.parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err(format!(
            "expected a whole number from 1 to {}, got {text:?}",
            T::MAX
        )),
    }
}

/// The most handler threads: each is a thread with its stack, and more than the cores can run
/// at once only wait on the job table's lock (100,000 ended the process at start, each thread
/// mapping its stacks until no map was left).
const MAX_HANDLER_THREADS: usize = 1024;

/// `--threads`: 1 to [`MAX_HANDLER_THREADS`].
fn handler_threads(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_HANDLER_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number from 1 to {MAX_HANDLER_THREADS}, got {text:?}"
        )),
    }
}

/// A whole number, 0 or more.
fn count_or_zero(text: &str) -> Result<u32, String> {
    text.trim().parse::<u32>().map_err(|_| {
        format!(
            "expected a whole number from 0 to {} (0 for no limit), got {text:?}",
            u32::MAX
        )
    })
}

/// The most reruns a submit may ask for: 0 to 100.
fn reruns_limit(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if n <= 100 => Ok(n),
        _ => Err(format!(
            "expected a whole number from 0 to 100, got {text:?}"
        )),
    }
}

fn disk_reserve(text: &str) -> Result<DiskReserveSetting, String> {
    let wrong = || {
        format!("expected bytes (e.g. 1073741824) or a percent of the filesystem's size from 0% to 50% (e.g. 2%), got {text:?}")
    };
    match text.trim().strip_suffix('%') {
        Some(p) => match p.trim().parse::<f64>() {
            Ok(p) if (0.0..=50.0).contains(&p) => Ok(DiskReserveSetting::Percent(p)),
            _ => Err(wrong()),
        },
        None => text
            .trim()
            .parse::<u64>()
            .map(DiskReserveSetting::Bytes)
            .map_err(|_| wrong()),
    }
}

fn bytes(text: &str) -> Result<u64, String> {
    text.parse::<u64>().map_err(|_| {
        format!(
            "expected a whole number of bytes from 0 to {}, got {text:?}",
            u64::MAX
        )
    })
}

/// The largest `--row-results-max`: bigger results belong in a segment, not in a row.
const ROW_RESULTS_LIMIT: u64 = 1024 * 1024;

fn row_bytes(text: &str) -> Result<u64, String> {
    match bytes(text)? {
        n if n <= ROW_RESULTS_LIMIT => Ok(n),
        n => Err(format!(
            "{n} bytes is more than a row should hold; use at most {ROW_RESULTS_LIMIT}"
        )),
    }
}

fn nice_steps(text: &str) -> Result<u8, String> {
    match text.parse::<u8>() {
        Ok(n) if n <= niceness::LOWEST => Ok(n),
        _ => Err(format!(
            "expected a whole number from 0 to 19, got {text:?}"
        )),
    }
}

fn port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| format!("expected a port number 0-65535, got {text:?}"))
}

fn address(text: &str) -> Result<IpAddr, String> {
    text.parse::<IpAddr>()
        .map_err(|_| format!("expected an IP address such as 0.0.0.0 or 127.0.0.1, got {text:?}"))
}

fn level(text: &str) -> Result<LevelFilter, String> {
    text.parse::<LevelFilter>()
        .map_err(|_| format!("expected one of off, error, warn, info, debug, trace; got {text:?}"))
}

fn log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("expected text or json; got {text:?}")),
    }
}

fn fsync_mode(text: &str) -> Result<FsyncMode, String> {
    match text {
        "batch" => Ok(FsyncMode::Batch),
        "always" => Ok(FsyncMode::Always),
        "off" => Ok(FsyncMode::Off),
        _ => Err(format!("expected batch, always or off; got {text:?}")),
    }
}

/// The longest `--follow-heartbeat`: an hour of silence outlasts every proxy's idle timeout.
const HEARTBEAT_MAX: f64 = 3600.0;

/// The shortest `--follow-heartbeat`: status lines any closer would flood each follower (a
/// millisecond sent one follower 1,855 lines in 2 s).
const HEARTBEAT_MIN: f64 = 1.0;

fn heartbeat(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s < HEARTBEAT_MIN => Err(format!(
            "{text} s would send every follower a status line or ping without a pause; use at least {HEARTBEAT_MIN}"
        )),
        Ok(s) if s <= HEARTBEAT_MAX => Ok(Duration::from_secs_f64(s)),
        Ok(s) if s > HEARTBEAT_MAX => Err(format!(
            "{text} s of silence would outlast any proxy's idle timeout; use at most {HEARTBEAT_MAX}"
        )),
        _ => Err(format!(
            "expected a number of seconds from {HEARTBEAT_MIN} to {HEARTBEAT_MAX}, got {text:?}"
        )),
    }
}

/// The longest `--shutdown-grace`: about 11 days.
const GRACE_MAX: f64 = 1e6;

fn grace(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=GRACE_MAX).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "expected a number of seconds from 0 to {GRACE_MAX}, got {text:?}"
        )),
    }
}

fn source_list(text: &str) -> Result<Vec<IpAddr>, String> {
    addresses::parse_list(text)
}

fn path(text: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(text))
}

fn some_path(text: &str) -> Result<Option<PathBuf>, String> {
    Ok(Some(PathBuf::from(text)))
}

/// A file to append lines to, or `-` for stdout.
fn line_target(text: &str) -> Result<Option<LineTarget>, String> {
    match text {
        "" => Err("expected a file path, or - for stdout".to_string()),
        "-" => Ok(Some(LineTarget::Stdout)),
        path => Ok(Some(LineTarget::File(PathBuf::from(path)))),
    }
}

/// Parses the arguments (without the program name).
pub fn parse(raw: Vec<OsString>) -> Result<Command, CliError> {
    let flags: Vec<String> = raw.iter().filter_map(flag_name).collect();
    let mut args = pico_args::Arguments::from_vec(raw);
    if args.contains(["-h", "--help"]) {
        return Ok(Command::Help);
    }
    if args.contains(["-V", "--version"]) {
        return Ok(Command::Version);
    }
    let sub = args
        .subcommand()
        .map_err(|e| CliError::UnknownArgument(e.to_string()))?;
    let command = match sub.as_deref() {
        Some("worker-id") => Command::WorkerId(
            args.opt_free_from_str()
                .ok()
                .flatten()
                .ok_or(CliError::MissingArgument("worker-id needs KEY.pem"))?,
        ),
        Some("check") => {
            let api_keys = value(&mut args, "--api-keys", some_path, None)?;
            let state_dir = value(&mut args, "--state-dir", some_path, None)?;
            let verify_outputs = args.contains("--verify-outputs");
            if verify_outputs && state_dir.is_none() {
                return Err(bad(
                    "check",
                    "--verify-outputs reads a state directory's outputs: give --state-dir DIR too",
                ));
            }
            let sources = value(&mut args, "--source-addresses", source_list, Vec::new())?;
            let certificates: Vec<(PathBuf, PathBuf)> = [
                pair(&mut args, "--tls-cert", "--tls-key")?,
                pair(&mut args, "--worker-tls-cert", "--worker-tls-key")?,
            ]
            .into_iter()
            .flatten()
            .collect();
            let workers: Option<PathBuf> = args.opt_free_from_str().ok().flatten();
            if workers.is_none()
                && api_keys.is_none()
                && state_dir.is_none()
                && certificates.is_empty()
            {
                return Err(CliError::MissingArgument(
                    "check needs WORKERS.json, --api-keys FILE, --state-dir DIR or --tls-cert PEM --tls-key PEM",
                ));
            }
            Command::Check {
                workers,
                api_keys,
                state_dir,
                verify_outputs,
                sources,
                certificates,
            }
        }
        Some("new-key") => {
            let role = match (args.contains("--admin"), args.contains("--read")) {
                (true, true) => {
                    return Err(bad("new-key", "give --admin or --read, not both"));
                }
                (true, false) => Role::Admin,
                (false, true) => Role::Read,
                (false, false) => Role::Submit,
            };
            let expires = match args.opt_value_from_str::<_, String>("--expires") {
                Ok(None) => None,
                Ok(Some(text)) => Some(parse_utc(&text).ok_or_else(|| {
                    bad(
                        "new-key",
                        format!("--expires must be a UTC date (2027-01-31) or time (2027-01-31T12:00:00Z), got {text:?}"),
                    )
                })?),
                Err(e) => return Err(bad("new-key", e.to_string())),
            };
            // A key made already expired would be refused from its first request.
            if let Some(at) = expires.filter(|&at| at <= unix_now() as u64) {
                return Err(bad(
                    "new-key",
                    format!(
                        "--expires {} is past: a key made so would be refused from its first request; give a later date",
                        utc_text(at)
                    ),
                ));
            }
            let bound_cidrs = match args.opt_value_from_str::<_, String>("--bound-cidrs") {
                Ok(None) => Vec::new(),
                Ok(Some(text)) => addresses::parse_blocks(&text)
                    .map_err(|e| bad("new-key", format!("--bound-cidrs {text:?}: {e}")))?,
                Err(e) => return Err(bad("new-key", e.to_string())),
            };
            let name: String = args
                .opt_free_from_str()
                .ok()
                .flatten()
                .ok_or(CliError::MissingArgument("new-key needs NAME"))?;
            if !is_valid_name(&name) {
                return Err(bad(
                    "new-key",
                    format!("NAME must be 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-', got {name:?}"),
                ));
            }
            Command::NewKey {
                name,
                role,
                expires,
                bound_cidrs,
            }
        }
        Some(other) => return Err(CliError::UnknownArgument(other.to_string())),
        None => Command::Serve(Box::new(parse_serve(&mut args)?)),
    };
    let rest = args.finish();
    if let Some(first) = rest.first() {
        // A flag that was taken once and is still there was given again.
        if let Some(flag) = flag_name(first) {
            let given = flags.iter().filter(|f| **f == flag).count();
            let left = rest.iter().filter(|a| a.to_str() == Some(flag.as_str()));
            if given > left.count() {
                return Err(CliError::Repeated(flag));
            }
        }
        return Err(CliError::UnknownArgument(
            first.to_string_lossy().into_owned(),
        ));
    }
    Ok(command)
}

/// The argument, when it is a flag (`--state-dir`).
fn flag_name(arg: &OsString) -> Option<String> {
    arg.to_str()
        .filter(|a| a.starts_with("--"))
        .map(str::to_string)
}

/// `--proxy-protocol`, which names no proxy of its own: it needs `--trusted-proxies`.
fn proxy_protocol(args: &mut pico_args::Arguments, proxies: bool) -> Result<bool, CliError> {
    let wanted = args.contains("--proxy-protocol");
    if wanted && !proxies {
        return Err(bad(
            "--proxy-protocol",
            "needs --trusted-proxies: the addresses of the proxies that send the header \
             (every other connection is read as plain HTTP)",
        ));
    }
    Ok(wanted)
}

/// Two flags that go together: both or neither.
fn pair(
    args: &mut pico_args::Arguments,
    first: &'static str,
    second: &'static str,
) -> Result<Option<(PathBuf, PathBuf)>, CliError> {
    let a = value(args, first, some_path, None)?;
    let b = value(args, second, some_path, None)?;
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(bad(first, format!("needs {second} too"))),
        (None, Some(_)) => Err(bad(second, format!("needs {first} too"))),
    }
}

fn parse_serve(args: &mut pico_args::Arguments) -> Result<ServeConfig, CliError> {
    let d = ServeConfig::default();
    let max_waiting = value(args, "--max-waiting", positive::<usize>, d.max_waiting)?;
    let max_followers = value(args, "--max-followers", positive::<usize>, d.max_followers)?;
    let max_uploads = value(args, "--max-uploads", positive::<usize>, d.max_uploads)?;
    let trusted_proxies = value(
        args,
        "--trusted-proxies",
        addresses::parse_blocks,
        Vec::new(),
    )?;
    let proxy_protocol = proxy_protocol(args, !trusted_proxies.is_empty())?;
    Ok(ServeConfig {
        port: value(args, "--port", port, d.port)?,
        bind: value(args, "--bind", address, d.bind)?,
        workers: value(args, "--workers", path, d.workers)?,
        threads: value(args, "--threads", handler_threads, d.threads)?,
        health_interval: value(
            args,
            "--health-interval",
            health_interval,
            d.health_interval,
        )?,
        health_timeout: value(args, "--health-timeout", seconds, d.health_timeout)?,
        state_dir: value(args, "--state-dir", path, d.state_dir)?,
        max_upload_bytes: value(
            args,
            "--max-upload-bytes",
            positive::<u64>,
            d.max_upload_bytes,
        )?,
        max_unpacked_bytes: value(
            args,
            "--max-unpacked-bytes",
            positive::<u64>,
            d.max_unpacked_bytes,
        )?,
        max_files: value(args, "--max-files", positive::<usize>, d.max_files)?,
        upload_memory_bytes: value(args, "--upload-memory-bytes", bytes, d.upload_memory_bytes)?,
        disk_reserve: value(args, "--disk-reserve", disk_reserve, d.disk_reserve)?,
        row_results_max: value(args, "--row-results-max", row_bytes, d.row_results_max)?,
        max_results_bytes: value(args, "--max-results-bytes", bytes, d.max_results_bytes)?,
        dispatch_timeout: value(args, "--dispatch-timeout", seconds, d.dispatch_timeout)?,
        track_interval: value(args, "--track-interval", track_interval, d.track_interval)?,
        follow_nice: value(args, "--follow-nice", nice_steps, d.follow_nice)?,
        lost_after: value(args, "--lost-after", seconds, d.lost_after)?,
        max_attempts: value(args, "--max-attempts", positive::<u32>, d.max_attempts)?,
        max_reruns: value(args, "--max-reruns", reruns_limit, d.max_reruns)?,
        priority_aging: value(args, "--priority-aging", seconds, d.priority_aging)?,
        queue_timeout: value(args, "--queue-timeout", seconds_or_zero, d.queue_timeout)?,
        max_waiting,
        max_waiting_per_ip: value(
            args,
            "--max-waiting-per-ip",
            positive::<usize>,
            half(max_waiting),
        )?,
        log_level: value(args, "--log-level", level, d.log_level)?,
        log_format: value(args, "--log-format", log_format, d.log_format)?,
        access_log: value(args, "--access-log", line_target, d.access_log)?,
        api_keys: value(args, "--api-keys", some_path, d.api_keys)?,
        max_followers,
        max_followers_per_ip: value(
            args,
            "--max-followers-per-ip",
            positive::<usize>,
            half(max_followers),
        )?,
        follow_heartbeat: value(args, "--follow-heartbeat", heartbeat, d.follow_heartbeat)?,
        require_verified: args.contains("--require-verified"),
        refuse_archives: args.contains("--refuse-archives"),
        fsync: value(args, "--fsync", fsync_mode, d.fsync)?,
        retain_jobs: value(args, "--retain-jobs", positive::<u64>, d.retain_jobs)?,
        retain_for: value(args, "--retain-for", seconds, d.retain_for)?,
        retain_bytes: value(args, "--retain-bytes", bytes, d.retain_bytes)?,
        max_queued_jobs: value(
            args,
            "--max-queued-jobs",
            positive::<usize>,
            d.max_queued_jobs,
        )?,
        max_names_bytes: value(
            args,
            "--max-names-bytes",
            positive::<u64>,
            d.max_names_bytes,
        )?,
        shutdown_grace: value(args, "--shutdown-grace", grace, d.shutdown_grace)?,
        cors_origins: cors_origins(args)?,
        metrics_open: args.contains("--metrics-open") || d.metrics_open,
        client_timeout: value(args, "--client-timeout", seconds, d.client_timeout)?,
        max_connections: value(
            args,
            "--max-connections",
            positive::<usize>,
            d.max_connections,
        )?,
        max_connections_per_ip: value(
            args,
            "--max-connections-per-ip",
            positive::<usize>,
            d.max_connections_per_ip,
        )?,
        max_requests_per_ip: value(
            args,
            "--max-requests-per-ip",
            count_or_zero,
            d.max_requests_per_ip,
        )?,
        trusted_proxies,
        proxy_protocol,
        max_uploads,
        max_uploads_per_ip: value(
            args,
            "--max-uploads-per-ip",
            positive::<usize>,
            half(max_uploads),
        )?,
        tls: pair(args, "--tls-cert", "--tls-key")?,
        worker_tls: WorkerTls {
            ca: value(args, "--worker-ca", some_path, None)?,
            client_cert: pair(args, "--worker-tls-cert", "--worker-tls-key")?,
        },
        source_addresses: value(args, "--source-addresses", source_list, d.source_addresses)?,
    })
}

/// Checks one `--cors-origin`: `*`, or `scheme://host[:port]` as a browser sends it in `Origin`.
fn origin(text: &str) -> Result<String, String> {
    if text == "*" {
        return Ok(text.to_string());
    }
    let problem = || {
        format!(
            "expected * or an origin such as https://app.example.org or http://127.0.0.1:8080 \
             (scheme, host and port only, no path or trailing slash), got {text:?}"
        )
    };
    let (scheme, host) = text.split_once("://").ok_or_else(problem)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    if !matches!(scheme, "http" | "https") || !host_ok {
        return Err(problem());
    }
    Ok(text.to_ascii_lowercase())
}

fn cors_origins(args: &mut pico_args::Arguments) -> Result<Vec<String>, CliError> {
    let given: Vec<String> = args
        .values_from_str("--cors-origin")
        .map_err(|e| bad("--cors-origin", e.to_string()))?;
    given
        .iter()
        .map(|text| origin(text).map_err(|p| bad("--cors-origin", p)))
        .collect()
}

/// Runs the command line; returns the process exit code.
pub fn run(raw: Vec<OsString>) -> i32 {
    let command = match parse(raw) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}\n\nRun 'trusted-pool --help' for usage.");
            return 2;
        }
    };
    match command {
        Command::Help => {
            print!("{USAGE}");
            0
        }
        Command::Version => {
            println!("trusted-pool {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::WorkerId(path) => match worker_id_from_key_file(&path) {
            Ok(id) => {
                println!("{id}");
                0
            }
            Err(e) => {
                eprintln!("error: {} {e}", path.display());
                1
            }
        },
        Command::Check {
            workers,
            api_keys,
            state_dir,
            verify_outputs,
            sources,
            certificates,
        } => {
            let workers_ok = workers.as_deref().is_none_or(|p| check(p, &sources) == 0);
            let keys_ok = api_keys.as_deref().is_none_or(|p| check_keys(p) == 0);
            let state_ok = state_dir
                .as_deref()
                .is_none_or(|p| check_state(p, verify_outputs) == 0);
            let certificates_ok = certificates.iter().fold(true, |ok, (cert, key)| {
                check_certificate(cert, key) == 0 && ok
            });
            if workers_ok && keys_ok && state_ok && certificates_ok {
                0
            } else {
                1
            }
        }
        Command::NewKey {
            name,
            role,
            expires,
            bound_cidrs,
        } => new_key(&name, role, expires, &bound_cidrs),
        Command::Serve(config) => match serve::run(*config) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
    }
}

fn check(path: &std::path::Path, flag: &[IpAddr]) -> i32 {
    let specs = match workers_file::load(path) {
        Ok(specs) => specs,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return 1;
        }
    };
    for (i, w) in specs.iter().enumerate() {
        let sources = match w.source_addresses.as_deref().unwrap_or(flag) {
            [] => String::new(),
            list => format!(
                " from {}",
                list.iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let cap = if w.auto_cap {
            "auto".to_string()
        } else {
            w.max_concurrent_jobs.to_string()
        };
        let labels = if w.labels.is_empty() {
            String::new()
        } else {
            format!(" labels {}", w.labels.join(","))
        };
        println!(
            "worker {i}: {}... at {} (max_concurrent_jobs {cap}){sources}{labels}",
            short_id(&w.worker_id),
            w.endpoint,
        );
    }
    if let Err(e) = workers_file::check_source_addresses(&specs, flag) {
        eprintln!("error: {}: {e}", path.display());
        return 1;
    }
    for (first, other, host) in workers_file::sharing_a_host(&specs) {
        println!(
            "note: workers {first} and {other} are on one host ({host}): two sandrun workers on one host share its job directory and their job ids can collide, mixing their jobs' files; run one sandrun per host (development workers are not affected)"
        );
    }
    println!("{}: {} workers, OK", path.display(), specs.len());
    0
}

fn check_keys(path: &std::path::Path) -> i32 {
    match api_keys::load(path) {
        Ok(keys) => {
            for (i, k) in keys.keys().iter().enumerate() {
                let limit = k.max_queued_jobs.map_or_else(
                    || "no queue limit".to_string(),
                    |n| format!("max_queued_jobs {n}"),
                );
                let expiry = match k.expires {
                    Some(at) if k.expired(unix_now() as u64) => {
                        format!(", EXPIRED at {} (refused)", utc_text(at))
                    }
                    Some(at) => format!(", expires {}", utc_text(at)),
                    None => String::new(),
                };
                let bound = if k.bound_cidrs.is_empty() {
                    String::new()
                } else {
                    format!(", only from {}", k.bound_cidrs_text())
                };
                println!(
                    "key {i}: {} ({}, {limit}{expiry}{bound})",
                    k.name,
                    k.role.as_str()
                );
            }
            println!("{}: {} keys, OK", path.display(), keys.keys().len());
            0
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            1
        }
    }
}

/// Loads a certificate chain and its key as the coordinator would, and tells when the chain
/// expires: 1 when they do not load or match, or the chain has expired.
fn check_certificate(cert: &std::path::Path, key: &std::path::Path) -> i32 {
    let loaded = match tls::server_config(cert, key) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let now = unix_now() as u64;
    let Some(expiry) = loaded.expiry else {
        println!(
            "{}: loads with {}; its expiry could not be read, OK",
            cert.display(),
            key.display()
        );
        return 0;
    };
    match expiry.warning("The certificate chain", now) {
        Some(ExpiryWarning::Expired(line)) => {
            eprintln!("error: {line}");
            1
        }
        Some(ExpiryWarning::Soon(line)) => {
            println!("warning: {line}");
            println!("{}: loads with {}, OK", cert.display(), key.display());
            0
        }
        None => {
            println!(
                "{}: loads with {}; expires at {} (in {:.0} days), OK",
                cert.display(),
                key.display(),
                utc_text(expiry.not_after),
                (expiry.not_after - now) as f64 / 86_400.0
            );
            0
        }
    }
}

fn check_state(dir: &std::path::Path, verify_outputs: bool) -> i32 {
    let report = match check_state_dir(dir, verify_outputs) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let jobs: Vec<String> = report
        .jobs
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect();
    println!(
        "{}: job store version {}, SQLite's quick check ok",
        dir.join(DB_FILE).display(),
        report.version
    );
    println!(
        "jobs: {} in all{}{}",
        report.jobs.values().sum::<u64>(),
        if jobs.is_empty() { "" } else { ": " },
        jobs.join(", ")
    );
    println!(
        "segments: records point into {} results and {} upload segment files",
        report.segments.0, report.segments.1
    );
    if let Some(verified) = report.verified {
        println!(
            "outputs: {} collected outputs ({} bytes) read back{}",
            verified.outputs,
            verified.bytes,
            match verified.unhashed {
                0 => String::new(),
                n => format!(
                    ", {n} of them without a known sha256 (their worker declared none, or another size, and they were collected by a build that did not record it), not compared"
                ),
            }
        );
    }
    for problem in &report.problems {
        eprintln!("error: {}: {problem}", dir.display());
    }
    if report.problem_count > 0 {
        let listed = report.problems.len();
        let more = report.problem_count - listed;
        eprintln!(
            "error: {}: {} jobs cannot be served or run from it as their records say{}{}",
            dir.display(),
            report.problem_count,
            if report.verified.is_some() {
                ", or serve outputs whose bytes changed"
            } else {
                ""
            },
            if more > 0 {
                format!(" ({more} more not listed)")
            } else {
                String::new()
            }
        );
        return 1;
    }
    println!(
        "{}: every byte the job store points to is there{}, OK",
        dir.display(),
        match report.verified {
            Some(v) if v.unhashed > 0 =>
                " and every output with a known sha256 hashes as it is served",
            Some(_) => " and every output hashes as it is served",
            None => "",
        }
    );
    0
}

/// Length of a new key's random part, in bytes.
const NEW_KEY_BYTES: usize = 32;

fn new_key(name: &str, role: Role, expires: Option<u64>, bound_cidrs: &[AddressBlock]) -> i32 {
    use base64::Engine;
    use std::io::Read;
    let mut random = [0u8; NEW_KEY_BYTES];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random))
    {
        eprintln!("error: cannot read /dev/urandom: {e}");
        return 1;
    }
    let key = format!(
        "tpk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    );
    let expiry = expires.map_or_else(String::new, |at| {
        format!(r#", "expires": "{}""#, utc_text(at))
    });
    let bound = if bound_cidrs.is_empty() {
        String::new()
    } else {
        let blocks: Vec<String> = bound_cidrs.iter().map(|b| format!("\"{b}\"")).collect();
        format!(r#", "bound_cidrs": [{}]"#, blocks.join(", "))
    };
    let entry = format!(
        r#"{{"name": "{name}", "key_sha256": "{}", "role": "{}"{expiry}{bound}}}"#,
        hex(&hash_key(key.as_bytes())),
        role.as_str()
    );
    println!("key:   {key}");
    println!("entry: {entry}");
    eprintln!(
        "Give the key to its holder now: it is not stored anywhere and cannot be shown again. \
         Add the entry to the --api-keys file, then send the coordinator SIGHUP."
    );
    0
}
