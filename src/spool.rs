//! The state directory: uploads waiting for dispatch and collected results.
//!
//! Layout, per job: `jobs/<id>/inputs/<n>` (the n-th `files` part), `jobs/<id>/manifest`,
//! `jobs/<id>/results/status.json`, `jobs/<id>/results/logs.json`, `jobs/<id>/results/outputs/<path>`.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::pool_state::lock;

/// The spool under `--state-dir`.
pub struct Spool {
    root: PathBuf,
    random: Mutex<BufReader<File>>,
}

impl Spool {
    /// Opens (creating if missing) the spool under `state_dir`.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let root = state_dir.join("jobs");
        std::fs::create_dir_all(&root)?;
        let random = BufReader::with_capacity(4096, File::open("/dev/urandom")?);
        Ok(Spool {
            root,
            random: Mutex::new(random),
        })
    }

    /// A fresh job id: `pool-` and 128 random bits in hex.
    pub fn new_job_id(&self) -> io::Result<String> {
        let mut bytes = [0u8; 16];
        lock(&self.random).read_exact(&mut bytes)?;
        let mut id = String::with_capacity(37);
        id.push_str("pool-");
        for b in bytes {
            id.push_str(&format!("{b:02x}"));
        }
        Ok(id)
    }

    /// A fresh random hex string for multipart boundaries.
    pub fn random_token(&self) -> io::Result<String> {
        self.new_job_id().map(|id| id.replace("pool-", ""))
    }

    /// The job's directory.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Creates the job's input directory.
    pub fn create_inputs(&self, id: &str) -> io::Result<PathBuf> {
        let dir = self.job_dir(id).join("inputs");
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Where the n-th `files` part is kept.
    pub fn input_path(&self, id: &str, n: usize) -> PathBuf {
        self.job_dir(id).join("inputs").join(n.to_string())
    }

    /// Where the manifest is kept.
    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.job_dir(id).join("manifest")
    }

    /// The job's results directory.
    pub fn results_dir(&self, id: &str) -> PathBuf {
        self.job_dir(id).join("results")
    }

    /// Where a collected output file is kept (`path` must already be checked safe).
    pub fn output_path(&self, id: &str, path: &str) -> PathBuf {
        self.results_dir(id).join("outputs").join(path)
    }

    /// Removes the uploaded inputs once a worker holds them (or the job ended without one).
    pub fn remove_inputs(&self, id: &str) {
        let dir = self.job_dir(id);
        for gone in [dir.join("inputs"), dir.join("manifest")] {
            let result = if gone.is_dir() {
                std::fs::remove_dir_all(&gone)
            } else {
                std::fs::remove_file(&gone)
            };
            if let Err(e) = result {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("Could not remove {}: {e}", gone.display());
                }
            }
        }
    }

    /// Removes everything of a job (a refused submit, or a job that ended without running).
    pub fn remove_job(&self, id: &str) {
        if let Err(e) = std::fs::remove_dir_all(self.job_dir(id)) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("Could not remove the spool of {id}: {e}");
            }
        }
    }

    /// Reads a collected JSON result (`status.json`, `logs.json`).
    pub fn read_result(&self, id: &str, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.results_dir(id).join(name))
    }
}
