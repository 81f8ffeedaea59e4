//! Command-line parsing and the three commands: serve (default), `worker-id`, `check`.

use crate::base::config::ServeConfig;
use crate::serve;
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
    trusted-pool check WORKERS.json        validate a workers file

OPTIONS:
    --port N                 HTTP port to listen on (0 = any free port)      [default: 9000]
    --bind ADDR              address to listen on                            [default: 0.0.0.0]
    --workers FILE           allowlist of workers                            [default: workers.json]
    --threads N              HTTP handler threads                            [default: 8]
    --health-interval SECS   seconds between health probes of a worker       [default: 30]
    --health-timeout SECS    timeout of one health probe                     [default: 5]
    --state-dir DIR          spool for uploads and collected results         [default: ./trusted-pool-state]
    --max-upload-bytes N     largest accepted submit body                    [default: 104857600]
    --upload-memory-bytes N  waiting uploads of up to 64 KiB each are held in memory up to
                             this total, the rest go to the state dir; 0 = all to disk [default: 4194304]
    --dispatch-timeout SECS  how long a worker may take to answer a submit   [default: 360]
    --track-interval SECS    how often running jobs are polled on workers    [default: 1]
    --lost-after SECS        grace before a job on an unreachable worker is lost [default: 120]
    --max-attempts N         dispatch attempts before a job fails            [default: 3]
    --log-level LEVEL        off, error, warn, info, debug or trace          [default: info]
    -h, --help               print this help
    -V, --version            print the version

Durations accept fractions (0.5). Exit codes: 0 ok, 1 bad workers file or runtime failure,
2 bad command line.
";

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Run the coordinator.
    Serve(Box<ServeConfig>),
    /// Print the worker_id of a key file.
    WorkerId(PathBuf),
    /// Validate a workers file.
    Check(PathBuf),
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
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownArgument(a) => write!(f, "unknown argument {a:?}"),
            Self::BadValue { flag, problem } => write!(f, "{flag}: {problem}"),
            Self::MissingArgument(what) => write!(f, "missing argument: {what}"),
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

fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "expected a positive number of seconds, got {text:?}"
        )),
    }
}

fn positive<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String> {
    match text.parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err(format!(
            "expected a whole number of at least 1, got {text:?}"
        )),
    }
}

fn bytes(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|_| format!("expected a whole number of bytes (0 or more), got {text:?}"))
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

fn path(text: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(text))
}

/// Parses the arguments (without the program name).
pub fn parse(raw: Vec<OsString>) -> Result<Command, CliError> {
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
        Some("check") => Command::Check(
            args.opt_free_from_str()
                .ok()
                .flatten()
                .ok_or(CliError::MissingArgument("check needs WORKERS.json"))?,
        ),
        Some(other) => return Err(CliError::UnknownArgument(other.to_string())),
        None => Command::Serve(Box::new(parse_serve(&mut args)?)),
    };
    let rest = args.finish();
    if let Some(first) = rest.first() {
        return Err(CliError::UnknownArgument(
            first.to_string_lossy().into_owned(),
        ));
    }
    Ok(command)
}

fn parse_serve(args: &mut pico_args::Arguments) -> Result<ServeConfig, CliError> {
    let d = ServeConfig::default();
    Ok(ServeConfig {
        port: value(args, "--port", port, d.port)?,
        bind: value(args, "--bind", address, d.bind)?,
        workers: value(args, "--workers", path, d.workers)?,
        threads: value(args, "--threads", positive::<usize>, d.threads)?,
        health_interval: value(args, "--health-interval", seconds, d.health_interval)?,
        health_timeout: value(args, "--health-timeout", seconds, d.health_timeout)?,
        state_dir: value(args, "--state-dir", path, d.state_dir)?,
        max_upload_bytes: value(
            args,
            "--max-upload-bytes",
            positive::<u64>,
            d.max_upload_bytes,
        )?,
        upload_memory_bytes: value(args, "--upload-memory-bytes", bytes, d.upload_memory_bytes)?,
        dispatch_timeout: value(args, "--dispatch-timeout", seconds, d.dispatch_timeout)?,
        track_interval: value(args, "--track-interval", seconds, d.track_interval)?,
        lost_after: value(args, "--lost-after", seconds, d.lost_after)?,
        max_attempts: value(args, "--max-attempts", positive::<u32>, d.max_attempts)?,
        log_level: value(args, "--log-level", level, d.log_level)?,
    })
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
        Command::Check(path) => check(&path),
        Command::Serve(config) => match serve::run(*config) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
    }
}

fn check(path: &std::path::Path) -> i32 {
    match workers_file::load(path) {
        Ok(specs) => {
            for (i, w) in specs.iter().enumerate() {
                println!(
                    "worker {i}: {}... at {} (max_concurrent_jobs {})",
                    short_id(&w.worker_id),
                    w.endpoint,
                    w.max_concurrent_jobs
                );
            }
            println!("{}: {} workers, OK", path.display(), specs.len());
            0
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            1
        }
    }
}
