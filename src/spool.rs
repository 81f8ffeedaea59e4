//! The state directory: uploads waiting for dispatch and collected results.
//!
//! Layout: `uploads/<id>` is one file per job holding all its uploaded parts back to back (the job
//! record says where each part lies); `results/<id>.json` holds the worker's final status and the
//! logs; `results/<id>/<path>` the collected output files. One file per upload keeps the spool's
//! file-system work per job small.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::pool_state::lock;

/// The spool under `--state-dir`.
pub struct Spool {
    uploads: PathBuf,
    results: PathBuf,
    random: Mutex<BufReader<File>>,
}

impl Spool {
    /// Opens (creating if missing) the spool under `state_dir`.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let uploads = state_dir.join("uploads");
        let results = state_dir.join("results");
        std::fs::create_dir_all(&uploads)?;
        std::fs::create_dir_all(&results)?;
        let random = BufReader::with_capacity(4096, File::open("/dev/urandom")?);
        Ok(Spool {
            uploads,
            results,
            random: Mutex::new(random),
        })
    }

    /// 16 random bytes as 32 hex digits.
    pub fn random_hex(&self) -> io::Result<String> {
        let mut bytes = [0u8; 16];
        lock(&self.random).read_exact(&mut bytes)?;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        Ok(bytes
            .iter()
            .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
            .map(char::from)
            .collect())
    }

    /// A fresh job id: `pool-` and 128 random bits in hex.
    pub fn new_job_id(&self) -> io::Result<String> {
        Ok(format!("pool-{}", self.random_hex()?))
    }

    /// The file holding a job's uploaded parts.
    pub fn upload_path(&self, id: &str) -> PathBuf {
        self.uploads.join(id)
    }

    /// The file holding a job's final status and logs, once collected.
    pub fn results_file(&self, id: &str) -> PathBuf {
        self.results.join(format!("{id}.json"))
    }

    /// Where a collected output file is kept (`path` must already be checked safe).
    pub fn output_path(&self, id: &str, path: &str) -> PathBuf {
        self.results.join(id).join(path)
    }

    /// Removes a job's upload: a worker holds it now, or the job ended without running.
    pub fn remove_upload(&self, id: &str) {
        let path = self.upload_path(id);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("Could not remove {}: {e}", path.display());
            }
        }
    }
}
