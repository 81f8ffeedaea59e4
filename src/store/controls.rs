//! The operator's runtime controls that a restart keeps, in the job store: drains made through
//! the API (`POST /workers/{id}/drain`, table `drains`: one row per draining worker, keyed by
//! its worker id and endpoint, a changed endpoint being a new worker; an undrain deletes it) and
//! a pause of submits (`POST /submits/pause`, table `submits_pause`: at most one row; a resume
//! deletes it). Written on a connection of its own (such changes are rare; the job writer's
//! batches are not involved), synced like a job record unless `--fsync off`. A change that
//! cannot be written (a full disk, another program's lock) is kept, the newest per worker and
//! for the pause, and written again by the store writer once a second until it commits.

use crate::base::clock::unix_now;
use crate::base::sync::lock;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The drains' table, created by the job store's migration to schema version 2.
pub const DRAINS_SCHEMA: &str = "
CREATE TABLE drains (
    worker_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (worker_id, endpoint)
);
";

/// The pause's table, created by the job store's migration to schema version 7.
pub const PAUSE_SCHEMA: &str = "
CREATE TABLE submits_pause (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    since REAL NOT NULL,
    by TEXT
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

/// A recorded pause of submits.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedPause {
    /// Unix time it began.
    pub since: f64,
    /// The key that paused (`None` on a coordinator without `--api-keys`).
    pub by: Option<String>,
}

/// The recorded controls of the job store at `path`.
pub struct Controls {
    path: PathBuf,
    synchronous: &'static str,
    lock_wait: Duration,
    writing: Mutex<Writing>,
}

/// The controls' connection (opened on first use) and the changes it could not write yet.
#[derive(Default)]
struct Writing {
    conn: Option<Connection>,
    unwritten: Vec<Change>,
}

/// One change of a recorded control.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    /// A worker drained (`on`) or undrained.
    Drain {
        worker_id: String,
        endpoint: String,
        on: bool,
        since: f64,
    },
    /// Submits paused (`Some`) or taken again.
    Pause(Option<RecordedPause>),
}

impl Change {
    /// Whether `self` makes an older, unwritten `other` pointless.
    fn replaces(&self, other: &Change) -> bool {
        match (self, other) {
            (
                Change::Drain {
                    worker_id,
                    endpoint,
                    ..
                },
                Change::Drain {
                    worker_id: w,
                    endpoint: e,
                    ..
                },
            ) => worker_id == w && endpoint == e,
            (Change::Pause(_), Change::Pause(_)) => true,
            _ => false,
        }
    }

    /// For the log, once a kept change is written.
    fn describe(&self) -> String {
        match self {
            Change::Drain { worker_id, on, .. } => format!(
                "The {} of worker {}...",
                if *on { "drain" } else { "undrain" },
                worker_id.get(..12).unwrap_or(worker_id)
            ),
            Change::Pause(Some(_)) => "The pause of submits".to_string(),
            Change::Pause(None) => "The end of the pause of submits".to_string(),
        }
    }
}

/// Holds the controls' connection from an in-memory change to its record, so that two changes
/// of one control are recorded in the order they were made.
pub struct ControlWriter<'a> {
    controls: &'a Controls,
    writing: MutexGuard<'a, Writing>,
}

impl Controls {
    /// The controls of the database at `path` (`synchronous`: the job store's `PRAGMA
    /// synchronous` value; `lock_wait`: how long a change waits for another program's write
    /// lock). The connection opens on first use.
    pub fn new(path: &Path, synchronous: &'static str, lock_wait: Duration) -> Controls {
        Controls {
            path: path.to_path_buf(),
            synchronous,
            lock_wait,
            writing: Mutex::default(),
        }
    }

    /// Takes the writer (a leaf lock: never take the pool table's lock first).
    pub fn writer(&self) -> ControlWriter<'_> {
        ControlWriter {
            controls: self,
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
                Ok(()) => log::info!("{} is recorded in the job store now", change.describe()),
                Err(e) => {
                    log::debug!("A kept control change is still not written: {e}");
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
    pub fn drains(&self) -> rusqlite::Result<Vec<RecordedDrain>> {
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

    /// The recorded pause of submits, if there is one.
    pub fn pause(&self) -> rusqlite::Result<Option<RecordedPause>> {
        let mut writer = self.writer();
        writer
            .conn()?
            .query_row("SELECT since, by FROM submits_pause", [], |r| {
                Ok(RecordedPause {
                    since: r.get(0)?,
                    by: r.get(1)?,
                })
            })
            .optional()
    }
}

impl ControlWriter<'_> {
    /// How long the connection, once open, waits for another program's write lock.
    fn set_lock_wait(&mut self, wait: Duration) {
        let set = self.conn().and_then(|conn| conn.busy_timeout(wait));
        if let Err(e) = set {
            log::debug!("The controls' lock wait could not be changed: {e}");
        }
    }

    fn conn(&mut self) -> rusqlite::Result<&Connection> {
        if self.writing.conn.is_none() {
            let conn = Connection::open(&self.controls.path)?;
            conn.execute_batch(&format!(
                "PRAGMA synchronous = {}; PRAGMA busy_timeout = {}; PRAGMA cache_size = -64;",
                self.controls.synchronous,
                self.controls.lock_wait.as_millis()
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
    /// later ([`Controls::write_unwritten`]); one that commits ends any older one kept.
    pub fn record_drain(
        &mut self,
        worker_id: &str,
        endpoint: &str,
        on: bool,
    ) -> rusqlite::Result<()> {
        self.record(Change::Drain {
            worker_id: worker_id.to_string(),
            endpoint: endpoint.to_string(),
            on,
            since: unix_now(),
        })
    }

    /// Records that submits are paused (`Some`, since when and by whom) or taken again;
    /// committed when this returns, kept and written again later as a drain is.
    pub fn record_pause(&mut self, pause: Option<RecordedPause>) -> rusqlite::Result<()> {
        self.record(Change::Pause(pause))
    }

    fn record(&mut self, change: Change) -> rusqlite::Result<()> {
        self.writing.unwritten.retain(|c| !change.replaces(c));
        let written = self.write(&change);
        if written.is_err() {
            self.writing.unwritten.push(change);
        }
        written
    }

    fn write(&mut self, change: &Change) -> rusqlite::Result<()> {
        let conn = self.conn()?;
        match change {
            Change::Drain {
                worker_id,
                endpoint,
                on: true,
                since,
            } => conn.execute(
                "INSERT OR IGNORE INTO drains (worker_id, endpoint, since) VALUES (?1, ?2, ?3)",
                params![worker_id, endpoint, since],
            )?,
            Change::Drain {
                worker_id,
                endpoint,
                on: false,
                ..
            } => conn.execute(
                "DELETE FROM drains WHERE worker_id = ?1 AND endpoint = ?2",
                params![worker_id, endpoint],
            )?,
            Change::Pause(Some(pause)) => conn.execute(
                "INSERT OR IGNORE INTO submits_pause (id, since, by) VALUES (1, ?1, ?2)",
                params![pause.since, pause.by],
            )?,
            Change::Pause(None) => conn.execute("DELETE FROM submits_pause", [])?,
        };
        Ok(())
    }
}
