//! Drains made through the API (`POST /workers/{id}/drain`), kept in the job store's `drains`
//! table so that a restart keeps the worker draining. One row per draining worker, keyed by
//! its worker id and endpoint (a changed endpoint is a new worker); an undrain deletes it.
//! Written on a connection of its own (drains are rare; the job writer's batches are not
//! involved), synced like a job record unless `--fsync off`. A change that cannot be written
//! (a full disk, another program's lock) is kept, the newest per worker, and written again by
//! the store writer once a second until it commits.

use crate::base::clock::unix_now;
use crate::base::sync::lock;
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The table, created by the job store's migration to schema version 2.
pub const DRAINS_SCHEMA: &str = "
CREATE TABLE drains (
    worker_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (worker_id, endpoint)
);
";

/// A recorded drain.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedDrain {
    /// The worker's id.
    pub worker_id: String,
    /// Its endpoint when it was drained.
    pub endpoint: String,
    /// Unix time of the drain.
    pub since: f64,
}

/// The recorded drains of the job store at `path`.
pub struct Drains {
    path: PathBuf,
    synchronous: &'static str,
    lock_wait: Duration,
    writing: Mutex<Writing>,
}

/// The drains' connection (opened on first use) and the changes it could not write yet.
#[derive(Default)]
struct Writing {
    conn: Option<Connection>,
    unwritten: Vec<Change>,
}

/// One drain change.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    worker_id: String,
    endpoint: String,
    on: bool,
    since: f64,
}

/// Holds the drains' connection from an in-memory drain change to its record, so that two
/// changes of one worker are recorded in the order they were made.
pub struct DrainWriter<'a> {
    drains: &'a Drains,
    writing: MutexGuard<'a, Writing>,
}

impl Drains {
    /// The drains of the database at `path` (`synchronous`: the job store's `PRAGMA
    /// synchronous` value; `lock_wait`: how long a change waits for another program's write
    /// lock). The connection opens on first use.
    pub fn new(path: &Path, synchronous: &'static str, lock_wait: Duration) -> Drains {
        Drains {
            path: path.to_path_buf(),
            synchronous,
            lock_wait,
            writing: Mutex::default(),
        }
    }

    /// Takes the writer (a leaf lock: never take the pool table's lock first).
    pub fn writer(&self) -> DrainWriter<'_> {
        DrainWriter {
            drains: self,
            writing: lock(&self.writing),
        }
    }

    /// Writes the kept changes, oldest first, until one fails; returns how many are still
    /// kept. Called by the store writer: it waits for no other program's lock (the next try
    /// comes within a second), so a lock held elsewhere never holds up the job store's commits.
    pub fn write_unwritten(&self) -> usize {
        let mut writer = self.writer();
        if writer.writing.unwritten.is_empty() {
            return 0;
        }
        writer.set_lock_wait(Duration::ZERO);
        let kept = std::mem::take(&mut writer.writing.unwritten);
        let mut left = kept.into_iter();
        for change in left.by_ref() {
            match writer.write(&change) {
                Ok(()) => log::info!(
                    "The {} of worker {}... is recorded in the job store now",
                    if change.on { "drain" } else { "undrain" },
                    change.worker_id.get(..12).unwrap_or(&change.worker_id)
                ),
                Err(e) => {
                    log::debug!("A kept drain change is still not written: {e}");
                    writer.writing.unwritten.push(change);
                    break;
                }
            }
        }
        writer.writing.unwritten.extend(left);
        writer.set_lock_wait(self.lock_wait);
        writer.writing.unwritten.len()
    }

    /// Every recorded drain.
    pub fn list(&self) -> rusqlite::Result<Vec<RecordedDrain>> {
        let mut writer = self.writer();
        let conn = writer.conn()?;
        let mut statement =
            conn.prepare("SELECT worker_id, endpoint, since FROM drains ORDER BY since")?;
        let rows = statement.query_map([], |r| {
            Ok(RecordedDrain {
                worker_id: r.get(0)?,
                endpoint: r.get(1)?,
                since: r.get(2)?,
            })
        })?;
        rows.collect()
    }
}

impl DrainWriter<'_> {
    /// How long the connection, once open, waits for another program's write lock.
    fn set_lock_wait(&mut self, wait: Duration) {
        let set = self.conn().and_then(|conn| conn.busy_timeout(wait));
        if let Err(e) = set {
            log::debug!("The drains' lock wait could not be changed: {e}");
        }
    }

    fn conn(&mut self) -> rusqlite::Result<&Connection> {
        if self.writing.conn.is_none() {
            let conn = Connection::open(&self.drains.path)?;
            conn.execute_batch(&format!(
                "PRAGMA synchronous = {}; PRAGMA busy_timeout = {}; PRAGMA cache_size = -64;",
                self.drains.synchronous,
                self.drains.lock_wait.as_millis()
            ))?;
            self.writing.conn = Some(conn);
        }
        match self.writing.conn.as_ref() {
            Some(conn) => Ok(conn),
            None => Err(rusqlite::Error::InvalidQuery),
        }
    }

    /// Records that the worker is draining (`on`) or no longer is; committed when this returns.
    /// A change that fails is kept in place of any older one of the worker, and written again
    /// later ([`Drains::write_unwritten`]); one that commits ends any older one kept.
    pub fn record(&mut self, worker_id: &str, endpoint: &str, on: bool) -> rusqlite::Result<()> {
        let change = Change {
            worker_id: worker_id.to_string(),
            endpoint: endpoint.to_string(),
            on,
            since: unix_now(),
        };
        self.writing
            .unwritten
            .retain(|c| c.worker_id != worker_id || c.endpoint != endpoint);
        let written = self.write(&change);
        if written.is_err() {
            self.writing.unwritten.push(change);
        }
        written
    }

    fn write(&mut self, change: &Change) -> rusqlite::Result<()> {
        let conn = self.conn()?;
        if change.on {
            conn.execute(
                "INSERT OR IGNORE INTO drains (worker_id, endpoint, since) VALUES (?1, ?2, ?3)",
                params![change.worker_id, change.endpoint, change.since],
            )?;
        } else {
            conn.execute(
                "DELETE FROM drains WHERE worker_id = ?1 AND endpoint = ?2",
                params![change.worker_id, change.endpoint],
            )?;
        }
        Ok(())
    }
}
