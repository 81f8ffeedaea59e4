//! Drains made through the API (`POST /workers/{id}/drain`), kept in the job store's `drains`
//! table so that a restart keeps the worker draining. One row per draining worker, keyed by
//! its worker id and endpoint (a changed endpoint is a new worker); an undrain deletes it.
//! Written on a connection of its own (drains are rare; the job writer's batches are not
//! involved), synced like a job record unless `--fsync off`.

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
    conn: Mutex<Option<Connection>>,
}

/// Holds the drains' connection from an in-memory drain change to its record, so that two
/// changes of one worker are recorded in the order they were made.
pub struct DrainWriter<'a> {
    drains: &'a Drains,
    conn: MutexGuard<'a, Option<Connection>>,
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
            conn: Mutex::new(None),
        }
    }

    /// Takes the writer (a leaf lock: never take the pool table's lock first).
    pub fn writer(&self) -> DrainWriter<'_> {
        DrainWriter {
            drains: self,
            conn: lock(&self.conn),
        }
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
    fn conn(&mut self) -> rusqlite::Result<&Connection> {
        if self.conn.is_none() {
            let conn = Connection::open(&self.drains.path)?;
            conn.execute_batch(&format!(
                "PRAGMA synchronous = {}; PRAGMA busy_timeout = {}; PRAGMA cache_size = -64;",
                self.drains.synchronous,
                self.drains.lock_wait.as_millis()
            ))?;
            *self.conn = Some(conn);
        }
        match self.conn.as_ref() {
            Some(conn) => Ok(conn),
            None => Err(rusqlite::Error::InvalidQuery),
        }
    }

    /// Records that the worker is draining (`on`) or no longer is; committed when this returns.
    pub fn record(&mut self, worker_id: &str, endpoint: &str, on: bool) -> rusqlite::Result<()> {
        let conn = self.conn()?;
        if on {
            conn.execute(
                "INSERT OR IGNORE INTO drains (worker_id, endpoint, since) VALUES (?1, ?2, ?3)",
                params![worker_id, endpoint, unix_now()],
            )?;
        } else {
            conn.execute(
                "DELETE FROM drains WHERE worker_id = ?1 AND endpoint = ?2",
                params![worker_id, endpoint],
            )?;
        }
        Ok(())
    }
}
