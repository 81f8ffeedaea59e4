//! An emulator of the sandrun worker, faithful to its HTTP dialect and its quirks.
//!
//! It speaks sandrun's API as `SANDRUN_API.md` describes it: exact-case `Content-Length` and
//! `Content-Type`, one request per connection, per-IP rate limits checked before the body is
//! parsed, jobs run one at a time while the jobs lock is held (so job endpoints block during a
//! run), signed results, deletion after download or after a while. Jobs run either for real
//! (NO sandbox) or simulated. Knobs change its behaviour at run time, and it records what it
//! received. It is shared by the `dev-worker` binary, the integration tests and the benchmark,
//! each including this file by path.

#[path = "control.rs"]
pub mod control;
#[path = "executor.rs"]
mod executor;
#[path = "files.rs"]
pub mod files;
#[path = "http.rs"]
pub mod http;
#[path = "jobs.rs"]
pub mod jobs;
#[path = "keys.rs"]
pub mod keys;
#[path = "limits.rs"]
pub mod limits;
#[path = "routes.rs"]
mod routes;
#[path = "runner.rs"]
pub mod runner;
#[path = "server.rs"]
mod server;
#[path = "state.rs"]
mod state;
#[path = "stream.rs"]
pub mod stream;
#[path = "text.rs"]
pub mod text;
#[path = "upload.rs"]
pub mod upload;

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use control::{Control, Knobs, Recording, StreamKnobs};
pub use keys::WorkerKey;
pub use runner::Runner;

use control::{lock, Recorder};
use state::{Incarnation, Shared};

/// How long a restart keeps trying to bind its old port.
const REBIND_PATIENCE: Duration = Duration::from_secs(10);

/// Distinguishes the job directories of emulators in one process.
static EMULATORS: AtomicU64 = AtomicU64::new(0);

/// How to start an emulator.
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// How jobs run.
    pub runner: Runner,
    /// Initial knobs.
    pub knobs: Knobs,
    /// The worker's key.
    pub key: WorkerKey,
}

struct Live {
    run: Arc<Incarnation>,
    acceptor: JoinHandle<()>,
    executor: JoinHandle<()>,
}

/// A running (or stopped) sandrun emulator.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    live: Mutex<Option<Live>>,
    incarnations: AtomicU64,
}

impl Emulator {
    /// Binds `config.bind` and starts serving.
    pub fn start(config: Config) -> io::Result<Emulator> {
        let listener = TcpListener::bind(config.bind)?;
        let addr = listener.local_addr()?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let root = std::env::temp_dir().join(format!(
            "sandrun-emulator-{}-{}-{stamp}",
            std::process::id(),
            EMULATORS.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&root)?;
        let shared = Arc::new(Shared {
            key: config.key,
            impostor: WorkerKey::generate()?,
            control: Control::new(config.knobs),
            recorder: Recorder::default(),
            runner: config.runner,
            root,
        });
        let emulator = Emulator {
            shared,
            addr,
            live: Mutex::new(None),
            incarnations: AtomicU64::new(0),
        };
        let live = emulator.launch(listener)?;
        *lock(&emulator.live) = Some(live);
        Ok(emulator)
    }

    fn launch(&self, listener: TcpListener) -> io::Result<Live> {
        let n = self.incarnations.fetch_add(1, Ordering::SeqCst);
        let root = self.shared.root.join(format!("run{n}"));
        fs::create_dir_all(&root)?;
        let run = Arc::new(Incarnation::new(root));
        let acceptor = {
            let (shared, run) = (Arc::clone(&self.shared), Arc::clone(&run));
            thread::spawn(move || server::accept_loop(listener, shared, run))
        };
        let executor = {
            let (shared, run) = (Arc::clone(&self.shared), Arc::clone(&run));
            thread::spawn(move || executor::run(shared, run))
        };
        Ok(Live {
            run,
            acceptor,
            executor,
        })
    }

    /// The address it listens on (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The worker id of its key.
    pub fn worker_id(&self) -> String {
        self.shared.key.worker_id()
    }

    /// Its key.
    pub fn key(&self) -> &WorkerKey {
        &self.shared.key
    }

    /// The other valid key that `wrong_worker_id` shows.
    pub fn impostor_key(&self) -> &WorkerKey {
        &self.shared.impostor
    }

    /// The live knobs.
    pub fn control(&self) -> &Control {
        &self.shared.control
    }

    /// A copy of what it recorded (kept across restarts).
    pub fn recording(&self) -> Recording {
        self.shared.recorder.snapshot()
    }

    /// Forgets what it recorded.
    pub fn clear_recording(&self) {
        self.shared.recorder.clear();
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        lock(&self.live).is_some()
    }

    /// Stops like a killed process: the port closes, open connections are cut unanswered, the
    /// running job is abandoned and every job is forgotten. Does nothing when stopped.
    pub fn stop(&self) {
        let Some(live) = lock(&self.live).take() else {
            return;
        };
        live.run.kill();
        let wake = match self.addr.ip() {
            ip if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.addr.port())
            }
            _ => self.addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let _ = live.acceptor.join();
        let _ = live.executor.join();
        live.run.kill();
        let _ = fs::remove_dir_all(&live.run.root);
    }

    /// Starts again on the same address, with the same key, knobs and recording, and no jobs
    /// (a new process). Does nothing when running.
    pub fn restart(&self) -> io::Result<()> {
        let mut live = lock(&self.live);
        if live.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + REBIND_PATIENCE;
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        };
        *live = Some(self.launch(listener)?);
        Ok(())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.shared.root);
    }
}
