//! `dev-worker`: a development stand-in for a sandrun worker that runs jobs for real, with NO
//! sandbox. It listens on loopback only.

// The emulator also serves the tests and the benchmark; this binary uses only part of it.
#[allow(dead_code, unused_imports)]
mod sandrun;

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;

use sandrun::{Config, Emulator, Knobs, Runner, WorkerKey};

const USAGE: &str = "\
dev-worker: a sandrun-compatible worker for development. It runs jobs WITHOUT ANY SANDBOX.

Usage: dev-worker --port PORT [--bind ADDR] [--key PATH] [--generate-key]

Options:
  --port PORT       port to listen on (0 picks a free one)
  --bind ADDR       loopback address to listen on (default 127.0.0.1); others are refused
  --key PATH        PKCS#8 PEM Ed25519 key (default worker_key.pem); created if missing
  --generate-key    write a new key to the key path, replacing any, then serve
  -h, --help        print this help
";

const WARNING: &str = "\
WARNING: dev-worker runs submitted code with NO SANDBOX, as your user, with your files and
WARNING: your network. It is for development only: never expose it, never run untrusted code.";

struct Options {
    port: u16,
    bind: IpAddr,
    key: PathBuf,
    generate_key: bool,
}

fn parse_options() -> Result<Option<Options>, String> {
    let mut args = pico_args::Arguments::from_env();
    if args.contains(["-h", "--help"]) {
        return Ok(None);
    }
    let port = args
        .value_from_str("--port")
        .map_err(|e| format!("--port: {e}"))?;
    let bind = args
        .opt_value_from_str("--bind")
        .map_err(|e| format!("--bind: {e}"))?
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let key = args
        .opt_value_from_str("--key")
        .map_err(|e| format!("--key: {e}"))?
        .unwrap_or_else(|| PathBuf::from("worker_key.pem"));
    let generate_key = args.contains("--generate-key");
    let rest = args.finish();
    if !rest.is_empty() {
        return Err(format!("unexpected arguments: {rest:?}"));
    }
    Ok(Some(Options {
        port,
        bind,
        key,
        generate_key,
    }))
}

/// Loads the key, or creates it when asked to or when the file does not exist.
fn load_or_create_key(path: &Path, generate: bool) -> Result<WorkerKey, String> {
    if !generate && path.exists() {
        return WorkerKey::load(path);
    }
    let key = WorkerKey::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    key.save(path)
        .map_err(|e| format!("cannot write key file {}: {e}", path.display()))?;
    eprintln!("Wrote a new worker key to {}", path.display());
    Ok(key)
}

fn say(line: &str) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("dev-worker: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !options.bind.is_loopback() {
        eprintln!(
            "dev-worker: refusing to bind {}: it runs code with no sandbox, so it only listens \
             on a loopback address (127.0.0.0/8 or ::1)",
            options.bind
        );
        return ExitCode::from(2);
    }
    let key = match load_or_create_key(&options.key, options.generate_key) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("dev-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    say(&format!("Worker ID: {}", key.worker_id()));
    eprintln!("{WARNING}");
    let config = Config {
        bind: SocketAddr::new(options.bind, options.port),
        runner: Runner::Real,
        knobs: Knobs::default(),
        key,
    };
    let emulator = match Emulator::start(config) {
        Ok(emulator) => emulator,
        Err(e) => {
            eprintln!(
                "dev-worker: cannot listen on {}:{}: {e}",
                options.bind, options.port
            );
            return ExitCode::FAILURE;
        }
    };
    say(&format!("Listening on {}", emulator.endpoint()));
    loop {
        thread::park();
    }
}
