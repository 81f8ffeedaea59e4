//! The job store: every job's record in SQLite (`jobs.db` in `--state-dir`, WAL mode).
//!
//! One writer thread owns the writing connection. Every state change of a job is sent to it as
//! the job's whole record (JSON) beside the indexed columns that are queried, through the
//! hand-off queue (`handoff`): a record someone waits on wakes the writer, which takes everything
//! that arrived before it into one transaction (group commit; one per change with
//! `--fsync always`); the others ride along, or go at the latest `handoff::DEFERRAL` after they
//! were sent. With `--fsync batch` the transaction commits unsynced and the writer syncs
//! the WAL right after it (see `wal_sync`); with `--fsync always`
//! the commit syncs; with `--fsync off` nothing does. A segment file a record points into is
//! synced before the record commits: by the writer, once per transaction, for the file a record
//! names in `sync_first` (a waiting upload), else by the record's sender before it sends it
//! ([`JobStore::sync_segment`]: collected results, whose sync failure the sender handles). A
//! sender that needs the promise (an acknowledged submit, a dispatch about to be sent) waits for
//! the commit and its sync. Reads (`/status` of a finished job) use connections of their own,
//! concurrent with the writer. The writer also forgets finished jobs past the
//! retention limits and deletes results segments no retained job refers to.

use crate::base::clock::unix_now;
use crate::base::config::FsyncMode;
use crate::base::heap::release_free_pages;
use crate::base::job::{Collection, Job, PoolStatus, Span};
use crate::base::log_repeats::{Repeats, REPEAT_PERIOD};
use crate::base::mailbox::{Answer, Empty, Mailbox};
use crate::base::sync::lock;
use crate::store::controls::{Controls, DRAINS_SCHEMA, PAUSE_SCHEMA};
use crate::store::file_identity::{self, StoreFiles};
use crate::store::handoff::{handoff, HandoffReceiver, HandoffSender, Taken};
use crate::store::new_store;
use crate::store::removals::WipeOf;
use crate::store::segment_names;
use crate::store::segments::{SegmentFile, Segments};
use crate::store::settle_clock::SettleClock;
use crate::store::stall_watch::StallWatch;
use crate::store::wait_clock::{WaitClock, WALL_STEPS_SCHEMA};
use crate::store::wal_sync::WalSync;
use crate::store::wall_look::Step;
use crossbeam_channel::Sender;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, DatabaseName, ErrorCode, OpenFlags, OptionalExtension};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 10;

/// The database's file name in the state directory.
pub const DB_FILE: &str = "jobs.db";

/// Version 1: one row per job. `record` is the whole job as JSON (new fields need no schema
/// change); the other columns are what queries select on. `finished_at` is set once the job is
/// settled (ended, results collected or none to collect); `upload` holds a small waiting upload
/// until a worker accepted the job; `results_segment` names the results file it refers to.
const SCHEMA: &str = "
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    finished_at REAL,
    owner TEXT,
    results_segment TEXT,
    upload BLOB,
    record TEXT NOT NULL
);
CREATE INDEX jobs_unsettled ON jobs(seq) WHERE finished_at IS NULL;
CREATE INDEX jobs_finished ON jobs(finished_at, status) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_results_segment ON jobs(results_segment) WHERE results_segment IS NOT NULL;
CREATE INDEX jobs_owner ON jobs(owner) WHERE owner IS NOT NULL;
PRAGMA user_version = 1;
";

/// One step from a schema version to the next, run inside the transaction that records the
/// version it reaches.
type Migration = fn(&Connection) -> rusqlite::Result<()>;

/// The changes from one schema version to the next: (version reached, step), in order. A
/// store of an older version takes every later step at open, each in its own transaction.
const MIGRATIONS: &[(i64, Migration)] = &[
    // Version 2: drains made through the API survive a restart.
    (2, |c| c.execute_batch(DRAINS_SCHEMA)),
    // Version 3: `GET /jobs` pages newest first through indexes instead of sorting the table:
    // per status by submission time, and the unsettled rows (whose status may lag) likewise.
    (3, |c| c.execute_batch(LISTING_INDEXES)),
    // Version 4: small collected results are held in the job's row (`results`), committed and
    // synced with its record, instead of in a results segment synced on its own.
    (4, |c| {
        c.execute_batch("ALTER TABLE jobs ADD COLUMN results BLOB;")
    }),
    // Version 5: fewer index entries to change per job. Recovery finds the unsettled rows
    // through `jobs_unsettled_submitted` (and sorts that bounded set by `seq`), and the
    // per-status index holds settled rows only (a settled row's status never changes again),
    // as `GET /jobs` walks the unsettled rows, whatever their status, on their own index.
    (5, |c| c.execute_batch(SLIMMER_INDEXES)),
    // Version 6: `seq` without `AUTOINCREMENT`.
    (6, plain_seq),
    // Version 7: a pause of submits survives a restart.
    (7, |c| c.execute_batch(PAUSE_SCHEMA)),
    // Version 8: a submit's `Idempotency-Key`, found by its index when a submit repeats it.
    (8, |c| c.execute_batch(SUBMIT_KEY_SCHEMA)),
    // Version 9: the worker a job is (or was last) on, for `GET /jobs?worker=...`, filled in
    // from the records already there; `GET /jobs?owner=...` walks an index of its own.
    (9, |c| c.execute_batch(WORKER_SCHEMA)),
    // Version 10: the wall clock's steps while a coordinator ran, which queued jobs' waits
    // leave out after a restart.
    (10, |c| c.execute_batch(WALL_STEPS_SCHEMA)),
];

/// The column of schema version 9, filled in from each record (a record that is not valid
/// JSON is left without: its own routes say it cannot be read); no index for it: a listing by
/// worker walks its status's index and checks the column. And an index a listing by owner
/// walks, in place of version 1's `jobs_owner`, which no query read: the same one entry per
/// job with an owner, made when it settles instead of when it is submitted.
const WORKER_SCHEMA: &str = "
ALTER TABLE jobs ADD COLUMN worker_id TEXT;
UPDATE jobs SET worker_id = CASE WHEN json_valid(record) THEN json_extract(record, '$.worker_id') END;
DROP INDEX IF EXISTS jobs_owner;
CREATE INDEX jobs_owner_settled ON jobs(owner, status, submitted_at, id)
    WHERE finished_at IS NOT NULL AND owner IS NOT NULL;
";

/// The column and index of schema version 8. Only jobs submitted with a key have an entry.
const SUBMIT_KEY_SCHEMA: &str = "
ALTER TABLE jobs ADD COLUMN submit_key TEXT;
CREATE INDEX jobs_submit_key ON jobs(submit_key) WHERE submit_key IS NOT NULL;
";

/// Schema version 6: `seq` loses `AUTOINCREMENT`, whose `sqlite_sequence` row every
/// transaction that inserts a job rewrote (one more page in the WAL per commit). New rows
/// still take one more than the largest `seq`, so submission order holds; only the `seq` of
/// the newest jobs, once all forgotten, may be given again, and nothing refers to a `seq`.
///
/// A rowid table is stored the same with and without the keyword, so only the table's
/// definition changes, in place (SQLite's documented procedure for a schema change that does
/// not change what is stored: `writable_schema`, then a new `schema_version`). Copying the
/// table instead would take seconds and twice its size on disk for a large store, and leave
/// the file that large.
fn plain_seq(conn: &Connection) -> rusqlite::Result<()> {
    let cookie: i64 = conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    let sequence_tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'",
        [],
        |r| r.get(0),
    )?;
    if sequence_tables > 0 {
        conn.execute_batch("DELETE FROM sqlite_sequence WHERE name = 'jobs';")?;
    }
    conn.execute_batch(&format!(
        "PRAGMA writable_schema = ON;
         UPDATE sqlite_master SET sql = replace(sql, 'PRIMARY KEY AUTOINCREMENT', 'PRIMARY KEY')
             WHERE type = 'table' AND name = 'jobs';
         PRAGMA schema_version = {};
         PRAGMA writable_schema = OFF;",
        cookie + 1
    ))
}

/// The index changes of schema version 5.
const SLIMMER_INDEXES: &str = "
DROP INDEX IF EXISTS jobs_unsettled;
DROP INDEX IF EXISTS jobs_status_submitted;
CREATE INDEX jobs_settled_status ON jobs(status, submitted_at, id) WHERE finished_at IS NOT NULL;
";

/// The indexes of schema version 3.
const LISTING_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS jobs_status_submitted ON jobs(status, submitted_at, id);
CREATE INDEX IF NOT EXISTS jobs_unsettled_submitted ON jobs(submitted_at, id) WHERE finished_at IS NULL;
";

/// A store up to this size (database and WAL) gets SQLite's `quick_check` before the
/// coordinator serves; a larger one is checked right after, in the background (the check
/// reads every page: about a second per 100 MB on a slow disk).
pub const CHECK_AT_START_BYTES: u64 = 16 * 1024 * 1024;

/// Most records in one transaction.
const MAX_BATCH: usize = 2048;
/// Most finished jobs forgotten in one transaction.
const MAX_FORGET: i64 = 5000;
/// Most results segments freed by one sweep for `--retain-bytes` (the next sweep goes on).
const MAX_SEGMENTS_FREED: usize = 8;
/// Time between retention sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A sweep runs at once when this many finished jobs are past `--retain-jobs` (or 1/32 of it,
/// if more): the database's size follows the retained jobs, not how many finish in a second.
const SWEEP_OVER_AT_LEAST: u64 = 32;
/// The WAL keeps up to this many bytes when a checkpoint lets it start over: its next commits
/// overwrite blocks the file already has, and a sync of those skips the file's metadata (half
/// the cost of a sync that grows the file, on ext4). An idle store's WAL goes back to zero.
const WAL_KEPT_BYTES: u64 = 16 * 1024 * 1024;
/// Commits between WAL checkpoints (and a checkpoint after this long idle with commits since).
const CHECKPOINT_COMMITS: u64 = 200;
const CHECKPOINT_IDLE: Duration = Duration::from_secs(2);
/// A WAL whose frames no checkpoint could copy for this long, counted from the first commit
/// after the last complete checkpoint, while checkpoints stay incomplete (another connection
/// keeps reading an old snapshot, so the WAL cannot start over and grows), is logged as a
/// warning.
const CHECKPOINT_BLOCKED_WARN: Duration = Duration::from_secs(60);
/// A checkpoint that did not complete is tried again this often, however busy the store is:
/// the warning comes in time, and the log says soon when the WAL is checkpointed again.
const CHECKPOINT_BLOCKED_RETRY: Duration = Duration::from_secs(5);
/// How long a commit waits for another program's write lock on the store (a `sqlite3`
/// session inside a write transaction) before it fails. Checkpoints and retention sweeps do
/// not wait: they are tried again later.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How an error of a store locked by another program begins (kept through [`Ticket`]s).
const LOCKED: &str = "the job store is locked by another program";
/// How an error of a disk that fails to write or went read-only begins.
const UNWRITABLE: &str = "the state directory cannot be written";
/// While no record comes, the store's caches and the heap's free pages go back to the system
/// this often.
const RELEASE_IDLE_EVERY: Duration = Duration::from_secs(5);
/// While the store is idle, this often its free pages are counted and, from
/// [`GIVE_BACK_AT_LEAST`] on, up to [`GIVE_BACK_STEP`] of them given back to the filesystem
/// (`PRAGMA incremental_vacuum`: the file shrinks at the next checkpoint).
const GIVE_BACK_EVERY: Duration = Duration::from_secs(1);
/// Free pages (4 KiB each) worth a step of giving back: 1 MiB.
const GIVE_BACK_AT_LEAST: u64 = 256;
/// Pages given back in one step (4 MiB: about 30 ms of the writer's time on an SD-card class
/// disk, so a submit that arrives meanwhile waits little).
const GIVE_BACK_STEP: u64 = 1024;

/// What went wrong with the job store.
#[derive(Debug)]
pub enum StoreError {
    /// The database was written by a newer trusted-pool.
    Newer(PathBuf, i64),
    /// The database fails SQLite's integrity check (or is not a database).
    Corrupt(PathBuf, String),
    /// The database is a sound SQLite file but not a job store this build can read (tables or
    /// columns missing or of another shape).
    Foreign(PathBuf, String),
    /// The store file is missing, empty or holds no tables (as said) while the state
    /// directory holds segment files: a new store would lose them all.
    Orphaned(PathBuf, &'static str, new_store::Segments),
    /// The store file is missing while its WAL (this path, of this many bytes) holds commits.
    WalWithoutStore(PathBuf, u64),
    /// A job's record cannot be read (its id, why), while the rest of the store can.
    BadRecord(PathBuf, String, String),
    /// SQLite could open the database only for reading (this user may not write it or its
    /// WAL, or the filesystem is mounted read-only).
    ReadOnly(PathBuf),
    /// SQLite failed.
    Sqlite(rusqlite::Error),
    /// Syncing a segment file failed.
    Io(io::Error),
    /// The store was closed (the coordinator is stopping).
    Closed,
    /// A commit failed, as the writer reported it.
    Failed(String),
    /// The writer has made no progress for this long (the disk does not answer): a record
    /// waited for is still to be written.
    Stalled(Duration),
}

impl From<new_store::Refusal> for StoreError {
    fn from(refusal: new_store::Refusal) -> Self {
        match refusal {
            new_store::Refusal::Orphaned(path, why, segments) => {
                StoreError::Orphaned(path, why, segments)
            }
            new_store::Refusal::Empty(path) => StoreError::Foreign(
                path,
                "zero bytes: a truncated or emptied file, not a store, or what an older \
                 trusted-pool's first start left when it failed (a full disk) before it wrote \
                 anything"
                    .to_string(),
            ),
            new_store::Refusal::WalWithoutStore(wal, bytes) => {
                StoreError::WalWithoutStore(wal, bytes)
            }
            new_store::Refusal::Link(path, target) => StoreError::Failed(format!(
                "{}: the job store is a symbolic link (to {}); SQLite keeps its WAL beside the \
                 link's target, where the coordinator does not look for it, so nothing was \
                 changed. To keep the job store on another disk, give --state-dir a folder \
                 there (move the whole state directory)",
                path.display(),
                target.display()
            )),
        }
    }
}

/// The kinds of store failure a client's answer tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// The disk under the state directory is full (507).
    Full,
    /// Another program holds the store's write lock (503: try again).
    Locked,
    /// The state directory's disk fails to write or went read-only (503: not here, not now).
    Unwritable,
    /// Anything else (500).
    Other,
}

impl StoreFault {
    /// The HTTP status of a request refused for this.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Full => 507,
            Self::Locked | Self::Unwritable => 503,
            Self::Other => 500,
        }
    }
}

impl StoreError {
    /// True when the disk under the state directory is full.
    pub fn is_full(&self) -> bool {
        match self {
            Self::Sqlite(e) => e.sqlite_error_code() == Some(ErrorCode::DiskFull),
            Self::Io(e) => e.raw_os_error() == Some(libc::ENOSPC),
            Self::Failed(why) => why.starts_with("the state directory is full"),
            _ => false,
        }
    }

    /// What kind of failure this is, for the answer a client gets.
    pub fn fault(&self) -> StoreFault {
        if self.is_full() {
            StoreFault::Full
        } else if self.is_locked() {
            StoreFault::Locked
        } else if self.is_unwritable() {
            StoreFault::Unwritable
        } else {
            StoreFault::Other
        }
    }

    /// The message of a failed read of a job from the store: one job's record that cannot be
    /// read says so (the rest of the store is fine); anything else is the store's failure.
    pub fn read_failure(&self) -> String {
        match self {
            Self::BadRecord(..) => self.to_string(),
            other => format!("the job store cannot be read: {other}"),
        }
    }

    /// True when another program holds the store's write lock (SQLite's busy or locked).
    pub fn is_locked(&self) -> bool {
        match self {
            Self::Sqlite(e) => is_lock_error(e),
            Self::Failed(why) => why.starts_with(LOCKED),
            _ => false,
        }
    }

    /// True when the state directory's disk fails to write or went read-only (SQLite's I/O
    /// error or read-only database, `EIO` or `EROFS`): a failing SD card, or a filesystem
    /// remounted read-only after errors.
    pub fn is_unwritable(&self) -> bool {
        match self {
            Self::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::SystemIoFailure | ErrorCode::ReadOnly)
            ),
            Self::Io(e) => is_unwritable_disk(e),
            Self::Failed(why) => why.starts_with(UNWRITABLE),
            Self::Stalled(_) | Self::ReadOnly(_) => true,
            _ => false,
        }
    }
}

/// True for the errors of a disk that fails to write or went read-only (`EIO`, `EROFS`).
pub fn is_unwritable_disk(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::EROFS))
}

/// SQLite's busy or locked: another connection holds the lock this one waited for.
fn is_lock_error(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Newer(path, version) => write!(
                f,
                "{}: the job store has schema version {version}, newer than this trusted-pool's {SCHEMA_VERSION}; run the newer trusted-pool on it, or move the file (with its -wal file, and the results/ and uploads/ folders beside it, whose files only it names) away to start with an empty job history",
                path.display()
            ),
            Self::Corrupt(path, why) => write!(
                f,
                "{}: the job store fails SQLite's integrity check ({why}); nothing was changed. Salvage it with `sqlite3 {0} .recover | sqlite3 recovered.db`, check that `sqlite3 recovered.db 'SELECT count(*) FROM jobs'` counts the jobs (an empty or tableless file means the salvage failed: this trusted-pool refuses it while results or uploads are kept) and put recovered.db in its place, or move it (with its -wal file, and the results/ and uploads/ folders beside it, whose files only it names) away to start with an empty job history",
                path.display()
            ),
            Self::Foreign(path, why) => write!(
                f,
                "{}: not a job store this trusted-pool can read ({why}); nothing was changed. Move it (with its -wal file, and the results/ and uploads/ folders beside it, whose files only it names) away to start with an empty job history",
                path.display()
            ),
            Self::Orphaned(path, what, segments) => write!(
                f,
                "{}: the job store {what}, yet the state directory holds {} results segments \
                 and {} upload segments: the collected results and waiting uploads of the jobs \
                 a job store knew. A new store would delete them all, so nothing was changed. \
                 Put the job store back (from a backup, or the file `sqlite3 .recover` salvaged: \
                 check first that `sqlite3 FILE 'SELECT count(*) FROM jobs'` counts the jobs), \
                 with its -wal file if it has one; or, to start with an empty job history, move \
                 {0}, its -wal file and the results and uploads folders out of the state directory",
                path.display(),
                segments.results,
                segments.uploads
            ),
            Self::WalWithoutStore(wal, bytes) => write!(
                f,
                "{}: the job store's WAL ({bytes} bytes, which may hold commits) is here, yet \
                 the job store beside it is missing (moved away without its WAL?); a new store \
                 would take them as its own, so nothing was changed. Put the job store back beside it, or \
                 move this file away too to start with an empty job history",
                wal.display()
            ),
            Self::BadRecord(path, id, why) => write!(
                f,
                "{}: the record of job {id} cannot be read ({why}); the rest of the job store \
                 is not affected and serves as before. `trusted-pool check --state-dir` lists \
                 every record that cannot be read",
                path.display()
            ),
            Self::ReadOnly(path) => write!(
                f,
                "{}: SQLite could open the job store only for reading; nothing was changed and \
                 the job history is intact. Either the user the coordinator runs as may not \
                 write it, its -wal or -shm file or the state directory (compare `ls -ln` with \
                 `id`; `chown -R USER` the state directory), or its filesystem is mounted \
                 read-only (`mount`, dmesg)",
                path.display()
            ),
            Self::Sqlite(e) if self.is_full() => {
                write!(f, "the state directory is full: {e}")
            }
            Self::Sqlite(e) if self.is_locked() => write!(
                f,
                "{LOCKED} (a sqlite3 session inside a write transaction?) and it did not let go \
                 within {} s; only read the job store from outside: {e}",
                LOCK_WAIT.as_secs()
            ),
            Self::Sqlite(e) if self.is_unwritable() => write_unwritable(f, e),
            Self::Io(e) if self.is_unwritable() => write_unwritable(f, e),
            Self::Sqlite(e) => write!(f, "the job store failed: {e}"),
            Self::Io(e) if self.is_full() => write!(f, "the state directory is full: {e}"),
            Self::Io(e) => write!(f, "syncing the state directory failed: {e}"),
            Self::Closed => write!(f, "the job store is closed: the coordinator is stopping"),
            Self::Failed(why) => write!(f, "{why}"),
            Self::Stalled(stalled) => write!(
                f,
                "the job store has written nothing for {:.0} s (the disk under the state \
                 directory does not answer)",
                stalled.as_secs_f64()
            ),
        }
    }
}

/// The message of a disk that fails to write or went read-only, with what to do.
fn write_unwritable(f: &mut fmt::Formatter<'_>, e: &dyn fmt::Display) -> fmt::Result {
    write!(
        f,
        "{UNWRITABLE} ({e}): its disk fails, went read-only, or is too full for SQLite's \
         shared memory file; see `df` and the system log (dmesg), make room or repair the \
         filesystem, and restart the coordinator"
    )
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// Called by the writer once a record committed (or failed to).
pub type Done = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// What to do once a committed transaction settled jobs (their ids and final statuses), given
/// `count`, which adds them to the store's settled counts: the coordinator takes them out of its
/// table and calls `count` in the same critical section, so that `/pool` (which reads both with
/// the table locked) counts each job once. Runs before the transaction's [`Done`] callbacks.
pub type SettleHook = Box<dyn Fn(&[(String, PoolStatus)], &dyn Fn()) + Send + Sync>;

/// What a committed transaction settled.
#[derive(Debug, Default)]
struct Settled {
    /// The jobs it settled: their ids and final statuses.
    jobs: Vec<(String, PoolStatus)>,
    /// Those of them it deleted in the same transaction, as a client asked before they were
    /// settled ([`Job::delete_when_settled`]), with the results segment and the bytes their
    /// results take in it, if any.
    deleted: Vec<(String, Option<(String, Span)>)>,
}

impl Settled {
    fn was_deleted(&self, id: &str) -> bool {
        self.deleted.iter().any(|(d, _)| d == id)
    }
}

/// One job state change for the writer.
pub struct Record {
    /// The job's whole record after the change.
    pub job: Box<Job>,
    /// A new job (insert) rather than a change of a stored one.
    pub insert: bool,
    /// A small upload held in memory, stored in the row until a worker accepted the job.
    pub upload: Option<Arc<[u8]>>,
    /// Runs after the commit.
    pub done: Option<Done>,
    /// When its transaction fails (a full disk), written again with the next one until it
    /// commits: a change the coordinator already acts on (a job's progress, a cancel). False
    /// for one whose sender undoes the change when told it failed (a dispatch about to be
    /// sent); a new job's insert is never written again (its submit was refused).
    pub retry: bool,
    /// A segment file the record points into (a waiting upload): the writer syncs it, as the
    /// `--fsync` mode asks, before the transaction that holds the record commits, once for all
    /// the records of that transaction that point into it.
    pub sync_first: Option<Arc<SegmentFile>>,
    /// The longest the record may wait in the hand-off queue (`store::handoff`) before the
    /// writer takes it: [`crate::store::handoff::DEFERRAL`] for a job's later changes,
    /// [`crate::store::handoff::SOON`] for one a crash must not take back for long, zero when
    /// someone waits on it (see [`Ticket`]). With `--fsync always` the writer takes every
    /// record alone, at once. With `--fsync batch` a transaction is synced right after its
    /// commit; `done` runs after that sync.
    pub within: Duration,
}

/// How often a wait that gives up on a stalled store looks at it.
const STALL_CHECK: Duration = Duration::from_millis(500);

/// Lets a sender wait for the commit of one record.
pub struct Ticket(Arc<Mailbox<Result<(), String>>>);

impl Ticket {
    /// Makes `record` report its commit to the returned ticket (after its own `done`).
    pub fn attach(record: &mut Record) -> Ticket {
        let (answer, answered) = Answer::pair();
        record.within = Duration::ZERO;
        let after = record.done.take();
        record.done = Some(Box::new(move |result: Result<(), &StoreError>| {
            let outcome = result.map_err(|e| e.to_string());
            if let Some(after) = after {
                after(result);
            }
            answer.send(outcome);
        }));
        Ticket(answered)
    }

    /// Waits until the record committed; the error says why it did not.
    pub fn wait(self) -> Result<(), StoreError> {
        Self::outcome(self.0.recv())
    }

    /// Like [`Ticket::wait`], but gives up once `store` has made no progress for
    /// [`crate::store::stall_watch::STALL_AFTER`] ([`StoreError::Stalled`]): the record is
    /// then written when the disk answers again. For a change that applies whether or not it
    /// is recorded yet (a cancel), never for a promise that needs the record (a submit).
    pub fn wait_unless_stalled(self, store: &JobStore) -> Result<(), StoreError> {
        loop {
            match self.0.recv_timeout(STALL_CHECK) {
                Err(Empty::Timeout) => {
                    if let Some(stalled) = store.stalled_for() {
                        return Err(StoreError::Stalled(stalled));
                    }
                }
                received => return Self::outcome(received),
            }
        }
    }

    fn outcome(received: Result<Result<(), String>, Empty>) -> Result<(), StoreError> {
        match received {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(StoreError::Failed(why)),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

enum Op {
    Record(Record),
    Close(Sender<()>),
    /// Delete a settled job now: its answer says which status it had (`None`: no settled job
    /// of that id).
    Delete(String, Sender<Result<Option<String>, StoreError>>),
}

/// A job as recovery reads it: unsettled (a small upload kept in its row is read separately,
/// one at a time, with [`JobStore::row_upload`]).
pub struct StoredJob {
    /// The record.
    pub job: Job,
}

/// WAL checkpoints that have not completed.
struct Blocked {
    /// The first that did not.
    since: Instant,
    /// The last try.
    tried: Instant,
    /// Whether the warning was logged.
    logged: bool,
}

/// Live figures of the store, for `/pool`.
#[derive(Default)]
struct Figures {
    rows: AtomicU64,
    settled: [AtomicU64; PoolStatus::ALL.len()],
    commits: AtomicU64,
    last_batch: AtomicU64,
    coalesced: AtomicU64,
    last_checkpoint_ms: AtomicU64,
    free_bytes: AtomicU64,
    forgotten: AtomicU64,
    deleted: AtomicU64,
    segments_deleted: AtomicU64,
    /// Bytes of the results segments at the last sweep (measured only under `--retain-bytes`).
    results_bytes: AtomicU64,
    /// Set while commits fail: the last one's error.
    failing: Mutex<Option<String>>,
    /// Whether `failing` is set (read without its lock after every commit).
    is_failing: AtomicBool,
    /// The writer's current round (a disk that stopped answering).
    watch: StallWatch,
}

impl Figures {
    /// Seconds since the last complete WAL checkpoint (`None` before the first).
    fn since_checkpoint(&self) -> Option<f64> {
        let at = self.last_checkpoint_ms.load(Ordering::Relaxed);
        (at > 0).then(|| (unix_now() - at as f64 / 1000.0).max(0.0))
    }

    /// Counts committed deletions of settled rows of these statuses, by retention or a client
    /// (`counter`): out of the settled and row counts, into `counter`, with release, so that
    /// whoever sees the new count reads without those rows.
    fn count_deleted<'a>(&self, statuses: impl IntoIterator<Item = &'a str>, counter: &AtomicU64) {
        let mut deleted = 0;
        for status in statuses {
            deleted += 1;
            if let Some(status) = status_of(status) {
                self.settled[status.index()].fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.rows.fetch_sub(deleted, Ordering::Relaxed);
        counter.fetch_add(deleted, Ordering::Release);
    }
}

/// What the store shows in `/pool`.
#[derive(Debug, Clone)]
pub struct StoreFigures {
    /// The database file.
    pub path: PathBuf,
    /// Bytes of the database and its WAL file.
    pub size_bytes: u64,
    /// Bytes of the WAL file (it grows while another connection keeps an old snapshot open).
    pub wal_bytes: u64,
    /// Rows (jobs) in it.
    pub rows: u64,
    /// Settled (finished) jobs per status, in [`PoolStatus::ALL`] order.
    pub settled: [u64; PoolStatus::ALL.len()],
    /// Transactions committed by this run.
    pub commits: u64,
    /// Records in the last transaction.
    pub last_batch: u64,
    /// Records of this run not written on their own: a later change of the same job in the
    /// same transaction was written instead.
    pub coalesced: u64,
    /// Seconds since the last complete WAL checkpoint (every frame copied into the database).
    pub since_checkpoint: Option<f64>,
    /// Bytes of free pages in the database file, as last counted while idle (a burst of large
    /// queued uploads leaves them; they are given back to the filesystem a step at a time).
    pub free_bytes: u64,
    /// Finished jobs forgotten by retention in this run.
    pub forgotten: u64,
    /// Finished jobs deleted through the API (`DELETE /jobs/{id}`) in this run.
    pub deleted: u64,
    /// Results segments deleted by retention in this run.
    pub segments_deleted: u64,
    /// Bytes of the results segments at the last sweep (None without `--retain-bytes`).
    pub results_bytes: Option<u64>,
    /// `--retain-bytes` (0: no limit).
    pub retain_bytes: u64,
    /// While commits fail (a full disk): the last one's error.
    pub failing: Option<String>,
    /// Seconds the writer has made no progress, once that is
    /// [`crate::store::stall_watch::STALL_AFTER`] or more (the disk does not answer).
    pub stalled_for: Option<f64>,
    /// What became of the store's file, once it is no longer the one opened.
    pub file_lost: Option<String>,
}

/// How long finished jobs are kept, and where their results lie.
pub struct Retention {
    /// Finished jobs kept, newest first (`--retain-jobs`).
    pub jobs: u64,
    /// Seconds a finished job is kept (`--retain-for`).
    pub for_secs: f64,
    /// Bytes of results segments kept (`--retain-bytes`; 0: no limit).
    pub bytes: u64,
    /// The results directory.
    pub results_dir: PathBuf,
    /// The results segments (one still open for writing is never deleted).
    pub segments: Arc<Segments>,
}

/// The end of a retention `DELETE`: each forgotten row's id, status and results segment, and
/// its record when it has results in a segment (to find the bytes to wipe).
const RETURNING_FORGOTTEN: &str = "RETURNING id, status, results_segment, \
     CASE WHEN results_segment IS NOT NULL THEN record END";

/// A job retention forgot.
struct Forgotten {
    status: String,
    segment: Option<String>,
    /// Where its results lie in `segment`.
    extent: Option<Span>,
}

/// A row of [`RETURNING_FORGOTTEN`].
fn forgotten_row(r: &rusqlite::Row) -> rusqlite::Result<Forgotten> {
    let id: String = r.get(0)?;
    let extent = match r.get_ref(3)? {
        ValueRef::Null => None,
        record => segment_extent(&id, record),
    };
    Ok(Forgotten {
        status: r.get(1)?,
        segment: r.get(2)?,
        extent,
    })
}

/// Where the results of the job whose record this is lie in its results segment (none when
/// they are in its row, or the record cannot be read).
fn segment_extent(id: &str, record: ValueRef<'_>) -> Option<Span> {
    let job = parse_record(id, record).ok()?;
    job.collection.in_segment().map(|(_, extent)| extent)
}

/// The bytes a file holds on disk: its length, less the holes punched in it (the wiped
/// results of deleted and forgotten jobs).
fn bytes_on_disk(metadata: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    metadata.len().min(metadata.blocks().saturating_mul(512))
}

/// Under `--retain-bytes`: while the results segments hold more than the limit, forgets every
/// settled job of the results segment that holds the oldest finished job, oldest segment
/// first (at most [`MAX_SEGMENTS_FREED`] per sweep). A segment goes whole, so the limit is
/// kept to within one segment (up to 64 jobs or 64 MiB); the segment that holds the newest
/// finished job is never freed (it is closed for writing instead, so that the next results
/// start a new one), and neither is one a writer holds. Returns the forgotten rows (without
/// an extent: their segment goes whole) and notes the bytes left in the figures.
fn forget_for_bytes(
    tx: &rusqlite::Transaction,
    retention: &Retention,
    figures: &Figures,
) -> Result<Vec<Forgotten>, StoreError> {
    let sizes: HashMap<String, u64> = std::fs::read_dir(&retention.results_dir)
        .map_err(StoreError::Io)?
        .filter_map(|e| {
            let e = e.ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                bytes_on_disk(&e.metadata().ok()?),
            ))
        })
        .collect();
    let mut total: u64 = sizes.values().sum();
    let mut forgotten = Vec::new();
    figures.results_bytes.store(total, Ordering::Relaxed);
    if total <= retention.bytes {
        return Ok(forgotten);
    }
    let mut oldest = tx.prepare_cached(
        "SELECT results_segment FROM jobs WHERE finished_at IS NOT NULL \
         AND results_segment IS NOT NULL ORDER BY finished_at, seq LIMIT 1",
    )?;
    let newest: Option<String> = tx
        .prepare_cached(
            "SELECT results_segment FROM jobs WHERE finished_at IS NOT NULL \
             AND results_segment IS NOT NULL ORDER BY finished_at DESC, seq DESC LIMIT 1",
        )?
        .query_row([], |r| r.get(0))
        .optional()?;
    let mut of_segment = tx.prepare_cached(
        "DELETE FROM jobs WHERE results_segment = ?1 AND finished_at IS NOT NULL \
         RETURNING status, results_segment",
    )?;
    for _ in 0..MAX_SEGMENTS_FREED {
        if total <= retention.bytes {
            break;
        }
        let Some(segment) = oldest.query_row([], |r| r.get::<_, String>(0)).optional()? else {
            break;
        };
        if newest.as_deref() == Some(segment.as_str()) {
            retention.segments.retire(&segment);
            break;
        }
        if !retention.segments.retire(&segment) {
            break;
        }
        // The whole segment goes: no bytes of it to wipe.
        let rows = of_segment.query_map([&segment], |r| {
            Ok(Forgotten {
                status: r.get(0)?,
                segment: r.get(1)?,
                extent: None,
            })
        })?;
        for deleted in rows {
            forgotten.push(deleted?);
        }
        total = total.saturating_sub(sizes.get(&segment).copied().unwrap_or(0));
    }
    figures.results_bytes.store(total, Ordering::Relaxed);
    Ok(forgotten)
}

/// The job store.
pub struct JobStore {
    path: PathBuf,
    mode: FsyncMode,
    ops: HandoffSender<Op>,
    /// Read-only connections not in use (closed by the writer whenever the store is idle).
    readers: Arc<Mutex<Vec<Connection>>>,
    figures: Arc<Figures>,
    settle_hook: Arc<OnceLock<SettleHook>>,
    /// Drains and the pause of submits made through the API.
    pub controls: Arc<Controls>,
    deferred_check: Mutex<Option<DeferredCheck>>,
    /// The files opened, to tell when the state directory, or the WAL or shared-memory file,
    /// is deleted or replaced under it.
    identity: StoreFiles,
    /// `--retain-bytes` (0: no limit).
    retain_bytes: u64,
    /// The writes to the state directory's segment files ([`JobStore::watch_segments`]).
    segment_watches: OnceLock<[Arc<StallWatch>; 2]>,
    /// The clock queued jobs' waits are marked on.
    wait_clock: Arc<WaitClock>,
}

/// SQLite's `quick_check` of a store that was too large to check before serving.
pub struct DeferredCheck {
    path: PathBuf,
}

impl DeferredCheck {
    /// Runs the check on a read-only connection of its own (the writer goes on meanwhile).
    pub fn run(self) -> Result<(), StoreError> {
        let conn = open_read_only(&self.path).map_err(|e| corrupt(&self.path, &e))?;
        conn.execute_batch("PRAGMA cache_size = -256")?;
        quick_check(&conn, &self.path)
    }

    /// The database file it checks.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A read-only connection of its own to the store at `path` (readers, checks, copies: the
/// writer goes on meanwhile).
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// The schema version of the store at `path` on `conn`: `Newer` when a later build wrote it,
/// `Foreign` when it is negative (0 is a store not made yet).
pub fn stored_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| corrupt(path, &e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Newer(path.to_path_buf(), version));
    }
    if version < 0 {
        return Err(StoreError::Foreign(
            path.to_path_buf(),
            format!("schema version {version}"),
        ));
    }
    Ok(version)
}

/// SQLite's `quick_check` of the store at `path` on `conn`: `Corrupt` when it finds damage.
pub fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let check: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(|e| corrupt(path, &e))?;
    if check != "ok" {
        return Err(StoreError::Corrupt(path.to_path_buf(), check));
    }
    Ok(())
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn wal_path(db: &Path) -> PathBuf {
    file_identity::beside(db, "-wal")
}

fn status_of(name: &str) -> Option<PoolStatus> {
    PoolStatus::ALL.into_iter().find(|s| s.as_str() == name)
}

/// A SQLite error met while checking the store at `path`: `Corrupt` for a damaged file.
pub fn corrupt(path: &Path, e: &rusqlite::Error) -> StoreError {
    if is_corruption(e) {
        StoreError::Corrupt(path.to_path_buf(), e.to_string())
    } else {
        StoreError::Sqlite(clone_error(e))
    }
}

/// SQLite found a damaged page, or a file that is no database.
fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

fn clone_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::InvalidParameterName(other.to_string()),
    }
}

impl JobStore {
    /// Opens (creating if missing) the store in `state_dir`: refuses a newer schema or a
    /// database that fails SQLite's integrity check, never empties one. Returns the store and
    /// the jobs that were not settled, in submission order, for recovery.
    pub fn open(
        state_dir: &Path,
        mode: FsyncMode,
        retention: Retention,
    ) -> Result<(JobStore, Vec<StoredJob>), StoreError> {
        std::fs::create_dir_all(state_dir).map_err(StoreError::Io)?;
        let path = state_dir.join(DB_FILE);
        if new_store::check_before_open(state_dir, &path)? {
            create_new(&path, mode).map_err(|e| name_the_file(&path, e))?;
        }
        let (conn, figures, unsettled, deferred_check) =
            open_checked(&path, mode).map_err(|e| name_the_file(&path, e))?;
        let identity = StoreFiles::of(&path).map_err(StoreError::Io)?;
        // Counted from the two partial indexes (a count over the whole table reads it all).
        let settled: u64 = figures
            .settled
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        figures
            .rows
            .store(settled + unsettled.len() as u64, Ordering::Relaxed);
        let wal = match mode {
            FsyncMode::Batch => Some(WalSync::open(&wal_path(&path)).map_err(StoreError::Io)?),
            FsyncMode::Off | FsyncMode::Always => None,
        };
        // `--fsync always`: one record per transaction, and a full batch is taken at once.
        let max_batch = if mode == FsyncMode::Always {
            1
        } else {
            MAX_BATCH
        };
        let (ops, received) = handoff(max_batch);
        let readers = Arc::new(Mutex::new(Vec::new()));
        let settle_hook = Arc::new(OnceLock::new());
        let controls = Arc::new(Controls::new(&path, synchronous_of(mode), LOCK_WAIT));
        let retain_bytes = retention.bytes;
        // The newest settle time: the ones recorded from now on are never earlier.
        let newest_settled: f64 = conn
            .query_row("SELECT max(finished_at) FROM jobs", [], |row| row.get(0))
            .ok()
            .flatten()
            .unwrap_or(0.0);
        let steps: f64 = conn
            .query_row("SELECT secs FROM wall_steps WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| name_the_file(&path, e.into()))?
            .unwrap_or(0.0);
        // Both clocks start from one look at the wall clock.
        let (now, mono) = (unix_now(), Instant::now());
        let wait_clock = Arc::new(WaitClock::new(steps, now, mono));
        let writer = Writer {
            conn,
            controls: Arc::clone(&controls),
            idle_readers: Arc::clone(&readers),
            mode,
            wal,
            synced_until_write: false,
            retention,
            figures: Arc::clone(&figures),
            settle_hook: Arc::clone(&settle_hook),
            commits_since_checkpoint: 1,
            unchecked_since: None,
            checkpoint_blocked: None,
            failures: FailureLogs::default(),
            last_commit: Instant::now(),
            last_sweep: None,
            last_release: None,
            last_give_back: None,
            orphans_checked: false,
            unwritten: Vec::new(),
            unwritten_done: Vec::new(),
            settle_clock: SettleClock::new(newest_settled, now, mono),
            wait_clock: Arc::clone(&wait_clock),
        };
        thread::Builder::new()
            .name("store-writer".to_string())
            .spawn(move || writer.run(received))
            .map_err(StoreError::Io)?;
        figures
            .last_checkpoint_ms
            .store((unix_now() * 1000.0) as u64, Ordering::Relaxed);
        let store = JobStore {
            controls,
            path,
            mode,
            ops,
            readers,
            figures,
            settle_hook,
            deferred_check: Mutex::new(deferred_check),
            identity,
            retain_bytes,
            segment_watches: OnceLock::new(),
            wait_clock,
        };
        Ok((store, unsettled))
    }

    /// The clock that queued jobs' waits are marked on (see [`WaitClock`]).
    pub fn wait_clock(&self) -> &WaitClock {
        &self.wait_clock
    }

    /// Sets what to do when commits settle jobs (once; a later hook is ignored). Without one,
    /// the store counts them on its own.
    pub fn on_settled(&self, hook: SettleHook) {
        let _ = self.settle_hook.set(hook);
    }

    /// The integrity check left for after the start (a store larger than
    /// [`CHECK_AT_START_BYTES`]), taken once; `None` when the start checked it.
    pub fn deferred_check(&self) -> Option<DeferredCheck> {
        lock(&self.deferred_check).take()
    }

    /// Sends a record to the writer; its `done` runs after the commit.
    pub fn send(&self, record: Record) {
        let within = record.within;
        if let Err(Op::Record(Record {
            done: Some(done), ..
        })) = self.ops.send(Op::Record(record), within)
        {
            done(Err(&StoreError::Closed));
        }
    }

    /// Syncs a segment file that a record about to be sent points into (an upload, results),
    /// as the `--fsync` mode asks: its bytes must be on disk before the row that points to them.
    pub fn sync_segment(&self, file: &SegmentFile) -> Result<(), StoreError> {
        match self.mode {
            FsyncMode::Off => Ok(()),
            FsyncMode::Batch | FsyncMode::Always => file.sync().map_err(StoreError::Io),
        }
    }

    /// Sends a record and waits until it committed.
    pub fn send_and_wait(&self, mut record: Record) -> Result<(), StoreError> {
        let ticket = Ticket::attach(&mut record);
        self.send(record);
        ticket.wait()
    }

    /// The stored record of job `id`, if the store has it.
    pub fn load(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let read = || -> Result<_, StoreError> {
            let conn = self.reader()?;
            let job = conn
                .prepare_cached("SELECT record, submitted_at FROM jobs WHERE id = ?1")?
                .query_row([id], |r| Ok(parse_stored(id, r.get_ref(0)?, r.get_ref(1)?)))
                .optional()?;
            lock(&self.readers).push(conn);
            Ok(job)
        };
        // A failed read names the job, as a record that cannot be parsed does.
        let job = read().map_err(|e| match e {
            StoreError::Sqlite(e) if is_corruption(&e) => StoreError::Corrupt(
                self.path.clone(),
                format!("the record of job {id} cannot be read: {e}"),
            ),
            StoreError::Sqlite(e) => {
                StoreError::Failed(format!("reading job {id} from the job store failed: {e}"))
            }
            other => other,
        })?;
        job.transpose()
            .map_err(|why| StoreError::BadRecord(self.path.clone(), id.to_string(), why))
    }

    /// The stored job that `owner` (None: the coordinator runs without keys) submitted with
    /// `Idempotency-Key` `key`, if the store still has it.
    pub fn find_submitted(
        &self,
        owner: Option<&str>,
        key: &str,
    ) -> Result<Option<Job>, StoreError> {
        let conn = self.reader()?;
        let found: Option<String> = conn
            .prepare_cached("SELECT id FROM jobs WHERE submit_key = ?1 AND owner IS ?2")?
            .query_row(params![key, owner], |r| r.get(0))
            .optional()?;
        lock(&self.readers).push(conn);
        match found {
            Some(id) => self.load(&id),
            None => Ok(None),
        }
    }

    /// Whether the store has a row for job `id`.
    pub fn contains(&self, id: &str) -> Result<bool, StoreError> {
        let conn = self.reader()?;
        let found = conn
            .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
            .exists([id])?;
        lock(&self.readers).push(conn);
        Ok(found)
    }

    /// The results bytes held in job `id`'s row (see [`crate::base::job::StoredResults`]), if the store
    /// has the job and its row holds results.
    pub fn row_results(&self, id: &str) -> Result<Option<Arc<[u8]>>, StoreError> {
        self.row_bytes(id, "SELECT results FROM jobs WHERE id = ?1")
    }

    /// The small upload held in job `id`'s row (until a worker accepted the job), if the store
    /// has the job and its row holds one.
    pub fn row_upload(&self, id: &str) -> Result<Option<Arc<[u8]>>, StoreError> {
        self.row_bytes(id, "SELECT upload FROM jobs WHERE id = ?1")
    }

    /// The bytes that `query` (one column of job `id`'s row, the id as `?1`) selects, if any.
    fn row_bytes(&self, id: &str, query: &str) -> Result<Option<Arc<[u8]>>, StoreError> {
        let conn = self.reader()?;
        let bytes: Option<Option<Vec<u8>>> = conn
            .prepare_cached(query)?
            .query_row([id], |r| r.get(0))
            .optional()?;
        lock(&self.readers).push(conn);
        Ok(bytes.flatten().map(Arc::from))
    }

    /// Up to `limit` stored jobs that `filter` takes, newest first (by submission time, then
    /// id), submitted before `before` (a submission time and id) when given.
    pub fn list(
        &self,
        filter: &ListFilter,
        before: Option<(f64, &str)>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let conn = self.reader()?;
        let result = list_on(&conn, filter, before, limit);
        lock(&self.readers).push(conn);
        // A damaged row is left out of listings (and logged); its own routes answer 500.
        Ok(result?
            .into_iter()
            .filter_map(|(id, record, at)| {
                parse_stored(&id, ValueRef::Text(record.as_bytes()), ValueRef::Real(at))
                    .map_err(|why| {
                        log::warn!(
                            "{}: job {id:?} left out of a listing: its record cannot be read ({why})",
                            self.path.display()
                        )
                    })
                    .ok()
            })
            .collect())
    }

    /// Writes a copy of the store as of its last commit to `target`, a new file (SQLite's
    /// `VACUUM INTO`), on a read-only connection of its own: the writer goes on meanwhile.
    pub fn copy_into(&self, target: &Path) -> Result<(), StoreError> {
        let target = target.to_str().ok_or_else(|| {
            StoreError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a UTF-8 path", target.display()),
            ))
        })?;
        let conn = open_read_only(&self.path)?;
        conn.busy_timeout(LOCK_WAIT)?;
        conn.execute_batch("PRAGMA cache_size = -256")?;
        conn.execute("VACUUM INTO ?1", [target])?;
        Ok(())
    }

    /// The extent of the results of every job that refers to results segment `segment`;
    /// `None` when one of those jobs' records cannot be read or says something else.
    pub fn results_extents(&self, segment: &str) -> Result<Option<Vec<Span>>, StoreError> {
        let conn = self.reader()?;
        let extents = (|| -> rusqlite::Result<Option<Vec<Span>>> {
            let mut select =
                conn.prepare_cached("SELECT id, record FROM jobs WHERE results_segment = ?1")?;
            let mut rows = select.query([segment])?;
            let mut extents = Vec::new();
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                let job = parse_record(&id, row.get_ref(1)?);
                match job
                    .as_ref()
                    .ok()
                    .and_then(|job| job.collection.in_segment())
                {
                    Some((name, extent)) if name == segment => extents.push(extent),
                    _ => {
                        log::warn!(
                            "Results segment {segment} is not scrubbed: the record of job {id}, \
                             which refers to it, cannot be read or names no results in it"
                        );
                        return Ok(None);
                    }
                }
            }
            Ok(Some(extents))
        })();
        lock(&self.readers).push(conn);
        Ok(extents?)
    }

    /// An idle read-only connection, or a new one (give it back to `readers` after use).
    fn reader(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = lock(&self.readers).pop() {
            return Ok(conn);
        }
        let conn = open_read_only(&self.path)?;
        // A read touches a handful of pages (a listing page a few dozen): a small cache keeps
        // memory flat.
        conn.execute_batch("PRAGMA cache_size = -128")?;
        Ok(conn)
    }

    /// How many finished jobs retention forgot or a client deleted in this run; it grows only
    /// after the deletion committed. A settled job read while it stayed the same was not
    /// forgotten meanwhile.
    pub fn forgotten_total(&self) -> u64 {
        self.figures.forgotten.load(Ordering::Acquire)
            + self.figures.deleted.load(Ordering::Acquire)
    }

    /// Deletes settled job `id` now, row and results (its results segment goes once no other
    /// job refers to it), after every record sent before; synced as the `--fsync` mode asks.
    /// Returns the status it had, or `None` when no settled job has that id. Waits at most
    /// `wait` for the writer.
    pub fn delete_settled(&self, id: &str, wait: Duration) -> Result<Option<String>, StoreError> {
        let (answer, answered) = crossbeam_channel::bounded(1);
        if self
            .ops
            .send(Op::Delete(id.to_string(), answer), Duration::ZERO)
            .is_err()
        {
            return Err(StoreError::Closed);
        }
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match answered.recv_timeout(left.min(STALL_CHECK)) {
                Ok(result) => return result,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(StoreError::Closed)
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
            if let Some(stalled) = self.stalled_for() {
                return Err(StoreError::Stalled(stalled));
            }
            if left.is_zero() {
                return Err(StoreError::Failed(format!(
                    "{LOCKED} or slow: it did not delete the job within {} s, and may still do so",
                    wait.as_secs()
                )));
            }
        }
    }

    /// The store's figures for `/pool`.
    pub fn figures(&self) -> StoreFigures {
        let f = &self.figures;
        let wal_bytes = file_size(&wal_path(&self.path));
        StoreFigures {
            path: self.path.clone(),
            size_bytes: file_size(&self.path) + wal_bytes,
            wal_bytes,
            rows: f.rows.load(Ordering::Relaxed),
            settled: std::array::from_fn(|i| f.settled[i].load(Ordering::Relaxed)),
            commits: f.commits.load(Ordering::Relaxed),
            last_batch: f.last_batch.load(Ordering::Relaxed),
            coalesced: f.coalesced.load(Ordering::Relaxed),
            since_checkpoint: f.since_checkpoint(),
            free_bytes: f.free_bytes.load(Ordering::Relaxed),
            forgotten: f.forgotten.load(Ordering::Relaxed),
            deleted: f.deleted.load(Ordering::Relaxed),
            segments_deleted: f.segments_deleted.load(Ordering::Relaxed),
            results_bytes: (self.retain_bytes > 0).then(|| f.results_bytes.load(Ordering::Relaxed)),
            retain_bytes: self.retain_bytes,
            failing: lock(&f.failing).clone(),
            stalled_for: self.stalled_for().map(|d| d.as_secs_f64()),
            file_lost: self.identity.lost(),
        }
    }

    /// Whether the store's commits fail now (a full disk, another program's lock).
    pub fn is_failing(&self) -> bool {
        self.figures.is_failing.load(Ordering::Relaxed)
    }

    /// `None` while the store's files are the ones opened; else what became of them (the state
    /// directory was deleted, another file put in its place, or its WAL or shared-memory file
    /// deleted): nothing written from then on would be read by the next start.
    pub fn file_lost(&self) -> Option<String> {
        self.identity.lost()
    }

    /// How long the writer, or the writes to the segment files, have made no progress, once
    /// that is [`crate::store::stall_watch::STALL_AFTER`] or more (the disk does not answer).
    pub fn stalled_for(&self) -> Option<Duration> {
        let segments = self.segment_watches.get().into_iter().flatten();
        segments
            .filter_map(|w| w.stalled_for())
            .chain(self.figures.watch.stalled_for())
            .max()
    }

    /// Counts a lack of progress of the writes to the spool's segment files (uploads, collected
    /// results: on threads of their own, before any record reaches the writer) as a stall of
    /// the store too. Set once, at start.
    pub fn watch_segments(&self, watches: [Arc<StallWatch>; 2]) {
        let _ = self.segment_watches.set(watches);
    }

    /// Settled jobs in `status` (they live in the store only).
    pub fn settled_count(&self, status: PoolStatus) -> u64 {
        self.figures.settled[status.index()].load(Ordering::Relaxed)
    }

    /// Commits what was sent, checkpoints the WAL into the database and stops the writer.
    pub fn close(&self) {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        if self.ops.send(Op::Close(sender), Duration::ZERO).is_ok() {
            let _ = receiver.recv();
        }
        lock(&self.readers).clear();
    }
}

/// One page of the settled jobs of one status, newest first, walking back from a cursor along
/// the index.
const LIST_BY_STATUS: &str = "SELECT submitted_at, id FROM jobs INDEXED BY jobs_settled_status \
     WHERE status = ?1 AND finished_at IS NOT NULL AND (?2 IS NULL OR owner = ?2) \
     AND (?6 IS NULL OR worker_id = ?6) AND (submitted_at, id) < (?3, ?4) \
     ORDER BY submitted_at DESC, id DESC LIMIT ?5";

/// [`LIST_BY_STATUS`] for one owner (`?2`, never NULL here), along that owner's settled rows.
const LIST_BY_OWNER_STATUS: &str =
    "SELECT submitted_at, id FROM jobs INDEXED BY jobs_owner_settled \
     WHERE owner = ?2 AND status = ?1 AND finished_at IS NOT NULL \
     AND (?6 IS NULL OR worker_id = ?6) AND (submitted_at, id) < (?3, ?4) \
     ORDER BY submitted_at DESC, id DESC LIMIT ?5";

/// One page of the unsettled jobs (whatever their recorded status), newest first.
const LIST_UNSETTLED: &str =
    "SELECT submitted_at, id FROM jobs INDEXED BY jobs_unsettled_submitted \
     WHERE finished_at IS NULL AND (?1 IS NULL OR owner = ?1) AND (submitted_at, id) < (?2, ?3) \
     ORDER BY submitted_at DESC, id DESC LIMIT ?4";

/// Which stored jobs a listing takes; each field left `None` takes every job.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter<'a> {
    /// Jobs in one of these statuses as last recorded, or not yet settled (whose record may
    /// lag).
    pub statuses: Option<&'a [PoolStatus]>,
    /// Jobs of this client key.
    pub owner: Option<&'a str>,
    /// Jobs recorded as settled on this worker (its base64 `worker_id`), or not yet settled
    /// (whose record may lag).
    pub worker: Option<&'a str>,
}

impl ListFilter<'_> {
    /// Whether the filter takes `job` as it is now (a job still under way by its status in the
    /// table, which the store's record may lag).
    pub fn takes(&self, job: &Job) -> bool {
        self.statuses.is_none_or(|s| s.contains(&job.status))
            && self.owner.is_none_or(|o| job.owner.as_deref() == Some(o))
            && self
                .worker
                .is_none_or(|w| job.worker_id.as_deref() == Some(w))
    }
}

/// The listing's rows (id, record, submission time), newest first: one walk back along the settled rows of each
/// final status asked for (`jobs_settled_status`, or `jobs_owner_settled` for one owner's) and
/// one along the unsettled rows
/// (`jobs_unsettled_submitted`, whatever their status: it may lag), each stopping after `limit`
/// rows; merged, then the records of the first `limit` read by id. Never a scan or a sort of
/// the whole table.
fn list_on(
    conn: &Connection,
    filter: &ListFilter,
    before: Option<(f64, &str)>,
    limit: usize,
) -> Result<Vec<(String, String, f64)>, StoreError> {
    let ListFilter {
        statuses,
        owner,
        worker,
    } = *filter;
    let (before_at, before_id) = before.unwrap_or((f64::MAX, ""));
    let limit = limit as i64;
    // One read transaction: every query sees the same snapshot, so a job that settles meanwhile
    // is found once, by the walk its row is on in that snapshot (never missed between two).
    let snapshot = conn.unchecked_transaction()?;
    let mut found: Vec<(f64, String)> = Vec::new();
    let row = |r: &rusqlite::Row| Ok((r.get::<_, f64>(0)?, r.get::<_, String>(1)?));
    let mut by_status = conn.prepare_cached(if owner.is_some() {
        LIST_BY_OWNER_STATUS
    } else {
        LIST_BY_STATUS
    })?;
    let settled_statuses = statuses
        .unwrap_or(&PoolStatus::ALL)
        .iter()
        .filter(|s| s.is_final());
    for status in settled_statuses {
        let rows = by_status.query_map(
            params![status.as_str(), owner, before_at, before_id, limit, worker],
            row,
        )?;
        for r in rows {
            found.push(r?);
        }
    }
    let mut unsettled = conn.prepare_cached(LIST_UNSETTLED)?;
    for r in unsettled.query_map(params![owner, before_at, before_id, limit], row)? {
        found.push(r?);
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    found.dedup_by(|a, b| a.1 == b.1);
    found.truncate(limit.max(0) as usize);
    let mut record = conn.prepare_cached("SELECT record FROM jobs WHERE id = ?1")?;
    let mut rows = Vec::with_capacity(found.len());
    for (at, id) in found {
        match record
            .query_row([&id], |r| Ok(text_column(r.get_ref(0)?)))
            .optional()?
        {
            Some(Ok(text)) => rows.push((id, text, at)),
            Some(Err(why)) => log::warn!("job {id:?} left out of a listing: its record {why}"),
            None => {}
        }
    }
    snapshot.finish()?;
    Ok(rows)
}

/// What opening the store gives: the writer's connection, the settled counts, the unsettled
/// jobs and the integrity check left for after the start (a large store).
type Opened = (
    Connection,
    Arc<Figures>,
    Vec<StoredJob>,
    Option<DeferredCheck>,
);

/// What the looks at the wall clock left to write, once written in a transaction: the shift of
/// this run's settle times (seconds, rows moved) and the wait clock's steps in all.
struct ClockWrites {
    shift: Option<(f64, usize)>,
    steps: Option<f64>,
}

impl ClockWrites {
    fn is_empty(&self) -> bool {
        self.shift.is_none() && self.steps.is_none()
    }
}

/// Writes in `tx` what the looks at the wall clock left to write (see [`ClockWrites`]); the
/// clocks are told once `tx` commits.
fn write_clock(
    tx: &rusqlite::Transaction,
    settle: &SettleClock,
    wait: &WaitClock,
) -> rusqlite::Result<ClockWrites> {
    let shift = match settle.pending() {
        Some(by) => Some((
            by,
            tx.execute(
                "UPDATE jobs SET finished_at = finished_at + ?1 WHERE finished_at >= ?2",
                params![by, settle.run_from()],
            )?,
        )),
        None => None,
    };
    let steps = wait.unwritten();
    if let Some(secs) = steps {
        tx.execute(
            "INSERT INTO wall_steps (id, secs) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET secs = excluded.secs",
            [secs],
        )?;
    }
    Ok(ClockWrites { shift, steps })
}

/// SQLite's `synchronous` setting for a `--fsync` mode, on every connection but the writer's.
fn synchronous_of(mode: FsyncMode) -> &'static str {
    match mode {
        FsyncMode::Off => "OFF",
        FsyncMode::Batch | FsyncMode::Always => "FULL",
    }
}

/// Makes the job store at `path`, which is missing, new: made whole (incremental auto-vacuum,
/// the schema, WAL mode) at [`new_store::making_path`] and then put in its place, so that a
/// start stopped at any instant, or failing on a full disk, leaves no partly made store.
fn create_new(path: &Path, mode: FsyncMode) -> Result<(), StoreError> {
    let making = new_store::making_path(path);
    new_store::clear_unfinished(path).map_err(|e| making_failed(&making, e))?;
    let conn = Connection::open(&making)?;
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
    create_schema(&conn)?;
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.close().map_err(|(_, e)| e)?;
    new_store::put_in_place(path, mode != FsyncMode::Off).map_err(|e| making_failed(&making, e))
}

/// A file operation of making the new store `making` failed: a full disk is told as such, any
/// other failure names the file.
fn making_failed(making: &Path, e: io::Error) -> StoreError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return StoreError::Io(e);
    }
    StoreError::Failed(format!(
        "{}: the new job store could not be made there ({e}); nothing else was changed. See \
         that the user the coordinator runs as may write the state directory, and that nothing \
         else (a folder, a protected file) has this name",
        making.display()
    ))
}

/// Creates the first schema in a database without tables and upgrades it to this build's.
fn create_schema(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(&format!("BEGIN; {SCHEMA} COMMIT;"))?;
    migrate(conn, 1, |_| {})
}

/// Upgrades a store of schema `version` to this build's, one transaction per step; `reached`
/// is told each version as it commits.
fn migrate(conn: &Connection, version: i64, reached: impl Fn(i64)) -> Result<(), StoreError> {
    for (to, step) in MIGRATIONS.iter().filter(|(to, _)| version < *to) {
        conn.execute_batch("BEGIN;")?;
        step(conn)?;
        conn.execute_batch(&format!("PRAGMA user_version = {to}; COMMIT;"))?;
        reached(*to);
    }
    Ok(())
}

/// Opens the database at `path` and checks it: schema version, SQLite's quick check, the
/// schema created when new. Returns the connection, the settled counts and the unsettled jobs.
fn open_checked(path: &Path, mode: FsyncMode) -> Result<Opened, StoreError> {
    let conn = Connection::open(path)?;
    // SQLite opens a file it may not write read-only, without an error: every write would
    // then fail as if the disk went read-only.
    if conn.is_readonly(DatabaseName::Main)? {
        return Err(StoreError::ReadOnly(path.to_path_buf()));
    }
    let version = stored_version(&conn, path)?;
    if version == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| corrupt(path, &e))?;
        if tables > 0 {
            return Err(StoreError::Foreign(
                path.to_path_buf(),
                "schema version 0, yet it holds tables".to_string(),
            ));
        }
        new_store::check_tableless(path)?;
    }
    if version == 0 {
        // Before anything is written (WAL mode too): freed pages can then be given back to the
        // filesystem.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
    }
    let _: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| corrupt(path, &e))?;
    let size = file_size(path) + file_size(&wal_path(path));
    let deferred_check = if size <= CHECK_AT_START_BYTES {
        quick_check(&conn, path)?;
        None
    } else {
        Some(DeferredCheck {
            path: path.to_path_buf(),
        })
    };
    // The writer's commits with `--fsync batch` are synced by `wal_sync`, not by SQLite.
    // `secure_delete`: what a change frees (an older version of a record, a dispatched job's
    // upload, a forgotten or deleted job's row and results) is overwritten with zeros, not left
    // in the file's free space.
    let synchronous = match mode {
        FsyncMode::Batch => "OFF",
        other => synchronous_of(other),
    };
    conn.execute_batch(&format!(
            "PRAGMA synchronous = {synchronous}; PRAGMA wal_autocheckpoint = 0; PRAGMA secure_delete = ON; \
             PRAGMA journal_size_limit = {WAL_KEPT_BYTES}; PRAGMA cache_size = -256; PRAGMA busy_timeout = {};",
            LOCK_WAIT.as_millis()
        ))?;
    if version == 0 {
        create_schema(&conn)?;
        if mode != FsyncMode::Off {
            new_store::sync_directory_of(path).map_err(StoreError::Io)?;
        }
    } else {
        migrate(&conn, version, |to| {
            log::info!(
                "{}: job store schema upgraded to version {to}",
                path.display()
            );
        })?;
    }
    give_back_freed_pages(&conn, path);
    let figures = Arc::new(Figures::default());
    {
        let mut statement = conn.prepare(
            "SELECT status, count(*) FROM jobs INDEXED BY jobs_finished WHERE finished_at IS NOT NULL GROUP BY status",
        )?;
        let counts = statement.query_map([], |r| {
            Ok((
                text_column(r.get_ref(0)?).unwrap_or_default(),
                r.get::<_, i64>(1)?,
            ))
        })?;
        for count in counts {
            let (status, n) = count?;
            if let Some(status) = status_of(&status) {
                figures.settled[status.index()].store(n as u64, Ordering::Relaxed);
            }
        }
    }
    let unsettled = read_unsettled(&conn, path)?;
    Ok((conn, figures, unsettled, deferred_check))
}

/// Makes a store written before freed pages were given back give them back from now on: its
/// file is rewritten once (`VACUUM`; logged). A store that cannot be rewritten now (no room
/// for a second copy) keeps reusing its freed pages, as before, and is tried at the next start;
/// the WAL the failed rewrite grew (as large as the room there was, none of it committed) is cut
/// back at once, or the store could never check its WAL in again on a full disk.
fn give_back_freed_pages(conn: &Connection, path: &Path) {
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap_or(INCREMENTAL_VACUUM);
    if mode == INCREMENTAL_VACUUM {
        return;
    }
    let started = Instant::now();
    let before = file_size(path) + file_size(&wal_path(path));
    match conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;") {
        Ok(()) => log::info!(
            "{}: the job store was rewritten once ({before} bytes, {:.2} s) so that the space \
             of forgotten jobs and dispatched uploads goes back to the filesystem",
            path.display(),
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            log::warn!(
                "{}: the job store could not be rewritten to give freed space back ({e}); it \
                 keeps reusing it, and is tried again at the next start",
                path.display()
            );
            let cut = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
            if !matches!(cut, Ok(0)) {
                log::warn!(
                    "{}: the WAL the failed rewrite grew ({} bytes) could not be cut back: {}",
                    path.display(),
                    file_size(&wal_path(path)),
                    cut.map_or_else(|e| e.to_string(), |_| "the store is busy".to_string())
                );
            }
        }
    }
}

/// Whether `period` has passed since `last` (or it never was); if so, `last` becomes now.
fn due_every(last: &mut Option<Instant>, period: Duration) -> bool {
    let due = last.is_none_or(|at| at.elapsed() >= period);
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// `PRAGMA auto_vacuum`'s value for incremental vacuum.
const INCREMENTAL_VACUUM: i64 = 2;

/// An error met while opening the store, with the file named: SQLite's own errors there mean
/// a file this build cannot read (a full disk, a failed read or write, a file that cannot be
/// opened or written stays one, and a store another program holds locked is not called
/// unreadable: it is fine once that program lets go).
fn name_the_file(path: &Path, e: StoreError) -> StoreError {
    match e {
        StoreError::Sqlite(e)
            if matches!(
                e.sqlite_error_code(),
                Some(
                    ErrorCode::DiskFull
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::ReadOnly
                        | ErrorCode::CannotOpen
                        | ErrorCode::PermissionDenied
                )
            ) =>
        {
            StoreError::Sqlite(e)
        }
        StoreError::Sqlite(e) if is_lock_error(&e) => StoreError::Failed(format!(
            "{LOCKED} ({}: a sqlite3 session inside a write transaction?) and it did not let go \
             within {} s; nothing was changed. Let it commit or quit, then start again: {e}",
            path.display(),
            LOCK_WAIT.as_secs()
        )),
        StoreError::Sqlite(e) => match corrupt(path, &e) {
            StoreError::Sqlite(e) => StoreError::Foreign(path.to_path_buf(), e.to_string()),
            named => named,
        },
        other => other,
    }
}

/// A column's text; `Err` says why a damaged row's column is not text.
fn text_column(value: ValueRef<'_>) -> Result<String, String> {
    match value {
        ValueRef::Text(bytes) => {
            String::from_utf8(bytes.to_vec()).map_err(|_| "it is not UTF-8".to_string())
        }
        other => Err(format!("it is {:?}, not text", other.data_type())),
    }
}

/// A job read back into the coordinator: its record parsed, with its submission time as its
/// row's `submitted_at` column holds it. The record's JSON number may read back one step off
/// (serde_json's fast float parsing), and the listings' walks and cursors compare the column
/// (such a job fell on both sides of its own cursor, and its page came again). A column that
/// is not a number (damaged) leaves the record's time.
fn parse_stored(id: &str, record: ValueRef<'_>, submitted_at: ValueRef<'_>) -> Result<Job, String> {
    let mut job = parse_record(id, record)?;
    if let Ok(at) = submitted_at.as_f64() {
        job.submitted_at = at;
    }
    Ok(job)
}

/// A job's record column parsed; `Err` says why a damaged one cannot be read.
pub fn parse_record(id: &str, record: ValueRef<'_>) -> Result<Job, String> {
    let job: Job = serde_json::from_str(&text_column(record)?).map_err(|e| e.to_string())?;
    if job.id != id {
        return Err(format!("it is the record of {:?}", job.id));
    }
    Ok(job)
}

/// A row that cannot be read: its job id (as far as known) and why.
type BadRow = (String, String);

/// One unsettled row for recovery, or why it cannot be read.
fn stored_job(row: &rusqlite::Row<'_>) -> Result<StoredJob, BadRow> {
    let id = text_column(row.get_ref(0).map_err(|e| (String::new(), e.to_string()))?)
        .map_err(|why| (String::new(), format!("its id column: {why}")))?;
    let fail = |why: String| (id.clone(), why);
    let record = row.get_ref(1).map_err(|e| fail(e.to_string()))?;
    let submitted_at = row.get_ref(2).map_err(|e| fail(e.to_string()))?;
    let job = parse_stored(&id, record, submitted_at)
        .map_err(|why| fail(format!("its record: {why}")))?;
    Ok(StoredJob { job })
}

/// The unsettled jobs in submission order. A row that cannot be read (damaged on disk) is left
/// as it is and logged: recovery goes on with the others, and the job's routes answer 500.
fn read_unsettled(conn: &Connection, path: &Path) -> Result<Vec<StoredJob>, StoreError> {
    let mut statement = conn.prepare(
        "SELECT id, record, submitted_at FROM jobs INDEXED BY jobs_unsettled_submitted \
         WHERE finished_at IS NULL ORDER BY seq",
    )?;
    let mut rows = statement.query([]).map_err(|e| corrupt(path, &e))?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next().map_err(|e| corrupt(path, &e))? {
        match stored_job(row) {
            Ok(job) => jobs.push(job),
            Err((id, why)) => log::error!(
                "{}: unsettled job {id:?} cannot be read back ({why}); it is left out of recovery",
                path.display()
            ),
        }
    }
    Ok(jobs)
}

/// The same error again (`io::Error` is not `Clone`): its OS error code, else its kind and text.
fn copy_io_error(e: &io::Error) -> io::Error {
    e.raw_os_error().map_or_else(
        || io::Error::new(e.kind(), e.to_string()),
        io::Error::from_raw_os_error,
    )
}

/// Runs the callbacks of a durable (or failed) transaction, after counting the jobs it settled
/// (through the settle hook when there is one: see [`SettleHook`]). A committed transaction's
/// settled jobs are counted even when its sync failed: readers of the store see its rows.
fn release(
    figures: &Figures,
    hook: Option<&SettleHook>,
    settled: &Settled,
    done: Vec<Done>,
    result: Result<(), StoreError>,
) {
    let count = || {
        for (id, status) in &settled.jobs {
            if settled.was_deleted(id) {
                figures.rows.fetch_sub(1, Ordering::Relaxed);
                figures.deleted.fetch_add(1, Ordering::Release);
            } else {
                figures.settled[status.index()].fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    match hook {
        Some(hook) if !settled.jobs.is_empty() => {
            guarded("settle hook", || hook(&settled.jobs, &count))
        }
        _ => count(),
    }
    for done in done {
        guarded("callback", || done(result.as_ref().map(|_| ())));
    }
}

/// Where each job's last change is in `records`: its index, by job id.
fn last_changes(records: &[Record]) -> HashMap<&str, usize> {
    let mut last = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        last.insert(r.job.id.as_str(), i);
    }
    last
}

/// Runs `call`; a panic in it is logged, so the writer thread and the callbacks after it go on.
fn guarded(what: &str, call: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(call)).is_err() {
        log::error!("A job store {what} panicked");
    }
}

/// The writer's failure messages, each let through at most once a minute while it repeats.
struct FailureLogs {
    commit: Repeats,
    sweep: Repeats,
    checkpoint: Repeats,
}

impl Default for FailureLogs {
    fn default() -> FailureLogs {
        FailureLogs {
            commit: Repeats::new(REPEAT_PERIOD),
            sweep: Repeats::new(REPEAT_PERIOD),
            checkpoint: Repeats::new(REPEAT_PERIOD),
        }
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    /// The recorded controls, whose changes that could not be written it writes again once a
    /// second.
    controls: Arc<Controls>,
    /// The store's idle read-only connections.
    idle_readers: Arc<Mutex<Vec<Connection>>>,
    mode: FsyncMode,
    /// The WAL's syncs (`--fsync batch`).
    wal: Option<WalSync>,
    /// `synchronous` is FULL until the next write transaction commits (`--fsync batch`, after
    /// a checkpoint): that transaction may restart the WAL from its start, and SQLite then
    /// syncs the new WAL header before the frames behind it, as a power cut requires.
    synced_until_write: bool,
    retention: Retention,
    figures: Arc<Figures>,
    settle_hook: Arc<OnceLock<SettleHook>>,
    commits_since_checkpoint: u64,
    /// Since when the WAL holds frames that no checkpoint copied: the first round that
    /// committed after the last complete checkpoint (`None`: nothing waits).
    unchecked_since: Option<Instant>,
    /// Checkpoints that have not completed (another connection keeps reading an old snapshot,
    /// or writes); tried again at every idle moment, and every [`CHECKPOINT_BLOCKED_RETRY`].
    checkpoint_blocked: Option<Blocked>,
    /// The repeats of failures that last (a full disk, a locked store) held back in the log.
    failures: FailureLogs,
    last_commit: Instant,
    last_sweep: Option<Instant>,
    last_release: Option<Instant>,
    last_give_back: Option<Instant>,
    orphans_checked: bool,
    /// Changes of a failed transaction (a full disk) that nobody undoes: written again, before
    /// anything newer, with the next transaction and at least once a second, until they
    /// commit. One per job, its newest (see `keep_unwritten`).
    unwritten: Vec<Record>,
    /// The callbacks of those changes, run once they commit.
    unwritten_done: Vec<Done>,
    /// The settle times recorded for retention, held to the time that passed.
    settle_clock: SettleClock,
    /// The clock queued jobs' waits are marked on, whose steps the sweep writes.
    wait_clock: Arc<WaitClock>,
}

impl Writer {
    fn run(mut self, received: HandoffReceiver<Op>) {
        loop {
            let taken = received.take(Instant::now() + SWEEP_EVERY);
            self.figures.watch.begin();
            let ops = match taken {
                Taken::Items(items) => items,
                Taken::Timeout => {
                    // Kept changes are tried again without waiting for another program's
                    // lock: a record that arrives meanwhile then waits for its own commit
                    // only, at most `LOCK_WAIT`.
                    if !self.unwritten.is_empty() {
                        self.without_lock_wait(|w| w.commit(Vec::new()));
                    }
                    self.maintain(true);
                    self.figures.watch.end();
                    continue;
                }
                Taken::Closed => break,
            };
            let mut batch = Vec::with_capacity(ops.len());
            let mut deletes = Vec::new();
            let mut close = None;
            for op in ops {
                match op {
                    Op::Record(r) => batch.push(r),
                    Op::Delete(id, reply) => deletes.push((id, reply)),
                    Op::Close(reply) => {
                        close = Some(reply);
                        break;
                    }
                }
            }
            self.commit(batch);
            for (id, reply) in deletes {
                let _ = reply.send(self.delete_settled(&id));
            }
            if let Some(reply) = close {
                self.stop();
                let _ = reply.send(());
                return;
            }
            self.maintain(false);
            self.figures.watch.end();
        }
        self.stop();
    }

    /// Checkpoints the WAL into the database with syncs (the connection's close would
    /// otherwise checkpoint without them).
    fn stop(&mut self) {
        if !self.unwritten.is_empty() {
            self.commit(Vec::new());
        }
        let lost = std::mem::take(&mut self.unwritten);
        if !lost.is_empty() {
            log::error!(
                "{} job changes could not be written before the job store closed; a restart \
                 follows those jobs from their last stored state",
                lost.len()
            );
            let dones = std::mem::take(&mut self.unwritten_done);
            release(
                &self.figures,
                None,
                &Settled::default(),
                dones,
                Err(StoreError::Closed),
            );
        }
        let controls = self.controls.write_unwritten();
        if controls > 0 {
            log::error!(
                "{controls} drain or pause changes could not be written before the job store \
                 closed; a restart does not keep them"
            );
        }
        self.write_clock_at_stop();
        self.checkpoint("TRUNCATE");
    }

    /// Looks at the wall clock once more and writes what that leaves to write, so that a step
    /// in the last second before a stop is kept. It waits for no other program's lock (a stop
    /// is bounded by `TimeoutStopSec=`): the step is then lost, as to a `kill -9`.
    fn write_clock_at_stop(&mut self) {
        self.watch_the_wall_clock();
        if self.settle_clock.pending().is_none() && self.wait_clock.unwritten().is_none() {
            return;
        }
        let written = self.without_lock_wait(|writer| {
            let tx = writer.conn.transaction()?;
            let clock = write_clock(&tx, &writer.settle_clock, &writer.wait_clock)?;
            tx.commit()?;
            Ok::<_, rusqlite::Error>(clock)
        });
        match written {
            Ok(clock) => self.clock_written(clock),
            Err(e) => log::error!(
                "A step of the wall clock could not be written before the job store closed ({e}): after a restart, queued jobs' waits, and the retention of the jobs settled in this run, read it as time that passed"
            ),
        }
    }

    /// What [`write_clock`] wrote has committed: the clocks take it as written, and the log
    /// says so.
    fn clock_written(&mut self, clock: ClockWrites) {
        if let Some(secs) = clock.steps {
            self.wait_clock.written(secs);
            log::info!(
                "The wall clock's steps while the coordinator ran ({secs:.0} s in all) are written to the job store: queued jobs' waits leave them out, also after a restart"
            );
        }
        if let Some((by, shifted)) = clock.shift {
            self.settle_clock.shifted();
            if shifted > 0 {
                log::warn!(
                    "The {shifted} jobs settled since the start keep their age in retention: their settle times moved {by:.0} s with the wall clock"
                );
            }
        }
    }

    /// Commits the batch in one transaction and runs its records' callbacks once it is
    /// durable: at once when the commit synced (or nothing syncs), else after the WAL's sync
    /// right after the commit.
    fn commit(&mut self, batch: Vec<Record>) {
        let mut batch = self.sync_segments(batch);
        if !self.unwritten.is_empty() {
            let newer = std::mem::replace(&mut batch, std::mem::take(&mut self.unwritten));
            batch.extend(newer);
        }
        if batch.is_empty() {
            return;
        }
        let synced_by_commit = self.mode != FsyncMode::Batch || self.synced_until_write;
        let written = self.write(&batch);
        self.count(batch.len(), &written);
        let done: Vec<Done> = match &written {
            Ok(_) => std::mem::take(&mut self.unwritten_done)
                .into_iter()
                .chain(batch.iter_mut().filter_map(|r| r.done.take()))
                .collect(),
            Err(e) => {
                let records = batch.len();
                let done = self.keep_unwritten(batch);
                if let Some(held) = self.failures.commit.check(Instant::now()) {
                    log::error!(
                        "The job store could not commit {records} records: {e}; {} job changes \
                         are kept to be written again{}",
                        self.unwritten.len(),
                        Repeats::suffix(held)
                    );
                }
                done
            }
        };
        let figures = Arc::clone(&self.figures);
        let hook = Arc::clone(&self.settle_hook);
        let deleted = match &written {
            Ok(settled) => settled.deleted.clone(),
            Err(_) => Vec::new(),
        };
        let durable = match (&self.wal, written) {
            (Some(wal), Ok(settled)) if !synced_by_commit => {
                let release = Box::new(move |synced: Result<(), &io::Error>| {
                    let result = synced.map_err(|e| StoreError::Failed(e.to_string()));
                    release(&figures, hook.get(), &settled, done, result);
                });
                wal.committed(release)
            }
            (_, Ok(settled)) => {
                release(&figures, hook.get(), &settled, done, Ok(()));
                true
            }
            (_, Err(e)) => {
                release(&figures, None, &Settled::default(), done, Err(e));
                false
            }
        };
        // Results go only once the deletions that free them are on disk: a power cut must not
        // bring back a row pointing at wiped bytes.
        if durable && !deleted.is_empty() {
            self.deleted_when_settled(deleted);
        } else if !deleted.is_empty() {
            log::warn!(
                "{} jobs were deleted as they settled, but the deletion could not be synced; \
                 their results stay on disk",
                deleted.len()
            );
        }
    }

    /// After jobs deleted as they settled committed (and were synced): logs them, then deletes
    /// or wipes their results in segments, as a deletion of a settled job does.
    fn deleted_when_settled(&self, deleted: Vec<(String, Option<(String, Span)>)>) {
        let mut results = Vec::new();
        for (id, at) in deleted {
            log::info!("Deleted job {id} as it settled, as its deletion asked");
            self.retention.segments.removals().wipe_left(&id);
            results.extend(at);
        }
        if let Err(e) = self.remove_results(HashSet::new(), results, WipeOf::DeletedJob) {
            log::warn!("Could not remove the results of jobs deleted as they settled: {e}");
        }
    }

    /// After jobs left the store (deleted or forgotten, as `of` says, and synced): deletes the
    /// results segments among `candidates` and those of `results` that no retained job refers
    /// to any more, and wipes the jobs' `results` in the segments that stay (once no download
    /// reads them).
    fn remove_results(
        &self,
        mut candidates: HashSet<String>,
        results: Vec<(String, Span)>,
        of: WipeOf,
    ) -> Result<(), StoreError> {
        candidates.extend(results.iter().map(|(name, _)| name.clone()));
        let deleted = self.delete_unused_segments(candidates)?;
        for (name, span) in results {
            if !deleted.contains(&name) {
                self.retention.segments.wipe(&name, span, of);
            }
        }
        Ok(())
    }

    /// Splits a batch whose transaction failed: an insert or a record without `retry` fails for
    /// good, its sender hears why and acts on it (a 507, a dispatch not sent); every other
    /// change is kept to be written again, so that a full disk never leaves a job's row behind
    /// what the coordinator did. One change per job is kept, its newest (it says everything
    /// the older ones said). A sender waiting on a kept record (a cancel) hears now that it is
    /// not recorded yet; the kept records' other callbacks run once they commit (all of them
    /// go into the same transaction). Returns the callbacks to run now, with the error.
    fn keep_unwritten(&mut self, batch: Vec<Record>) -> Vec<Done> {
        let mut now = Vec::new();
        let mut kept = Vec::with_capacity(batch.len());
        for mut record in batch {
            if record.insert || !record.retry {
                now.extend(record.done.take());
                continue;
            }
            match record.done.take() {
                Some(done) if record.within.is_zero() => now.push(done),
                Some(done) => self.unwritten_done.push(done),
                None => {}
            }
            kept.push(record);
        }
        let last = last_changes(&kept);
        let newest: Vec<bool> = (0..kept.len())
            .map(|i| last.get(kept[i].job.id.as_str()) == Some(&i))
            .collect();
        self.unwritten = kept
            .into_iter()
            .zip(newest)
            .filter_map(|(r, newest)| newest.then_some(r))
            .collect();
        now
    }

    /// Syncs the segment files the batch's records name in `sync_first`, each once (not with
    /// `--fsync off`); returns the records that may commit. A record whose file failed to sync
    /// is left out, and its callback hears why.
    fn sync_segments(&self, batch: Vec<Record>) -> Vec<Record> {
        if self.mode == FsyncMode::Off {
            return batch;
        }
        let mut failed: Vec<(Arc<SegmentFile>, io::Error)> = Vec::new();
        let mut synced: Vec<&Arc<SegmentFile>> = Vec::new();
        for file in batch.iter().filter_map(|r| r.sync_first.as_ref()) {
            if synced.iter().any(|f| Arc::ptr_eq(f, file))
                || failed.iter().any(|(f, _)| Arc::ptr_eq(f, file))
            {
                continue;
            }
            match file.sync() {
                Ok(()) => synced.push(file),
                Err(e) => {
                    log::error!("The job store could not sync {}: {e}", file.name());
                    failed.push((Arc::clone(file), e));
                }
            }
        }
        if failed.is_empty() {
            return batch;
        }
        let mut kept = Vec::with_capacity(batch.len());
        for mut record in batch {
            let why = record
                .sync_first
                .as_ref()
                .and_then(|file| failed.iter().find(|(f, _)| Arc::ptr_eq(f, file)));
            match (why, record.done.take()) {
                (Some((_, e)), Some(done)) => done(Err(&StoreError::Io(copy_io_error(e)))),
                (Some(_), None) => {}
                (None, done) => {
                    record.done = done;
                    kept.push(record);
                }
            }
        }
        kept
    }

    /// Counts a transaction in the store's figures.
    fn count(&mut self, records: usize, result: &Result<Settled, StoreError>) {
        self.last_commit = Instant::now();
        let f = &self.figures;
        match result {
            Ok(_) => {
                f.commits.fetch_add(1, Ordering::Relaxed);
                f.last_batch.store(records as u64, Ordering::Relaxed);
                self.commits_since_checkpoint += 1;
                if f.is_failing.swap(false, Ordering::Relaxed) {
                    *lock(&f.failing) = None;
                    self.failures.commit.reset();
                    log::info!("The job store commits again");
                }
            }
            Err(e) => {
                *lock(&f.failing) = Some(e.to_string());
                f.is_failing.store(true, Ordering::Relaxed);
            }
        }
    }

    /// After a write transaction committed: back to unsynced commits when a checkpoint had
    /// made them synced.
    fn wrote(&mut self) {
        if self.synced_until_write {
            match self.conn.execute_batch("PRAGMA synchronous = OFF") {
                Ok(()) => self.synced_until_write = false,
                Err(e) => log::warn!("The job store could not return to unsynced commits: {e}"),
            }
        }
    }

    /// Writes the batch; returns the jobs it settled (and deleted).
    fn write(&mut self, batch: &[Record]) -> Result<Settled, StoreError> {
        let tx = self.conn.transaction()?;
        let mut settled = Settled::default();
        let mut inserted = 0u64;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO jobs (id, status, submitted_at, finished_at, owner, results_segment, upload, record, submit_key, worker_id) \
                 VALUES (?1, ?2, ?3, ?4, ?8, ?6, ?7, ?5, ?9, ?10)",
            )?;
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET status = ?2, finished_at = ?3, owner = ?7, \
                 results_segment = ?5, upload = CASE WHEN ?6 THEN NULL ELSE upload END, record = ?4, \
                 results = COALESCE(?8, results), worker_id = ?9 \
                 WHERE id = ?1 AND finished_at IS NULL",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?;
            // A job's changes that meet in one transaction are written once, as the last of
            // them says: the transaction commits whole or not at all, so no reader could ever
            // see the earlier ones. An insert is always written (later changes update it).
            let last_change = last_changes(batch);
            for (i, r) in batch.iter().enumerate() {
                if !r.insert && last_change.get(r.job.id.as_str()) != Some(&i) {
                    self.figures.coalesced.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let job = &r.job;
                let text =
                    serde_json::to_string(job).map_err(|e| StoreError::Io(io::Error::other(e)))?;
                // When it settled here (its results collected, or it ended without any), not
                // its end on the worker: retention must not take a job whose collection was
                // held up (a full disk) for older than the jobs that settled meanwhile.
                let finished_at = job
                    .is_settled()
                    .then(|| self.settle_clock.settle_time(Instant::now()));
                let (segment, row_results) = match &job.collection {
                    Collection::Collected(stored) if stored.in_row => {
                        (None, stored.row_bytes.as_deref())
                    }
                    Collection::Collected(stored) => (Some(stored.segment.as_str()), None),
                    _ => (None, None),
                };
                if r.insert {
                    insert.execute(params![
                        job.id,
                        job.status.as_str(),
                        job.submitted_at,
                        finished_at,
                        text,
                        segment,
                        r.upload.as_deref(),
                        job.owner,
                        job.submit_key.as_ref().map(|k| k.key.as_str()),
                        job.worker_id,
                    ])?;
                    inserted += 1;
                } else {
                    let changed = update.execute(params![
                        job.id,
                        job.status.as_str(),
                        finished_at,
                        text,
                        segment,
                        !job.needs_upload(),
                        job.owner,
                        row_results,
                        job.worker_id,
                    ])?;
                    if changed == 0 {
                        continue;
                    }
                }
                if finished_at.is_none() {
                    continue;
                }
                settled.jobs.push((job.id.clone(), job.status));
                if job.delete_when_settled {
                    delete.execute([&job.id])?;
                    let results = job
                        .collection
                        .in_segment()
                        .map(|(segment, extent)| (segment.to_string(), extent));
                    settled.deleted.push((job.id.clone(), results));
                }
            }
        }
        tx.commit()?;
        self.wrote();
        self.figures.rows.fetch_add(inserted, Ordering::Relaxed);
        Ok(settled)
    }

    /// Checkpoints when due; sweeps retention once a second, or at once when enough finished
    /// jobs are past the limit (`idle`: nothing arrived for a while).
    fn maintain(&mut self, idle: bool) {
        if self.commits_since_checkpoint > 0 && self.unchecked_since.is_none() {
            self.unchecked_since = Some(Instant::now());
        }
        let due = self.commits_since_checkpoint >= CHECKPOINT_COMMITS
            || ((self.commits_since_checkpoint > 0 || self.checkpoint_blocked.is_some())
                && (idle || self.last_commit.elapsed() >= CHECKPOINT_IDLE));
        if self.last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) || self.over_retention() {
            self.last_sweep = Some(Instant::now());
            self.controls.write_unwritten();
            // A sweep waits for no other program's lock: the next one comes within a second.
            match self.without_lock_wait(Self::sweep) {
                Err(e) if e.is_locked() => log::debug!("Retention sweep skipped: {e}"),
                Err(e) => {
                    if let Some(held) = self.failures.sweep.check(Instant::now()) {
                        log::error!(
                            "The retention sweep of the job store failed: {e}{}",
                            Repeats::suffix(held)
                        );
                    }
                }
                Ok(()) => self.failures.sweep.reset(),
            }
        }
        if idle && due_every(&mut self.last_give_back, GIVE_BACK_EVERY) {
            self.give_back_free_pages();
        }
        let due = due || (idle && self.commits_since_checkpoint > 0);
        let retry = self
            .checkpoint_blocked
            .as_ref()
            .is_some_and(|b| b.tried.elapsed() >= CHECKPOINT_BLOCKED_RETRY);
        if due && idle {
            // Nothing is being written: the WAL goes back to zero bytes.
            self.checkpoint("TRUNCATE");
        } else if retry || (due && self.commits_since_checkpoint >= CHECKPOINT_COMMITS) {
            self.checkpoint("PASSIVE");
        } else if idle && self.checkpoint_blocked.is_none() && self.wal_bytes() == 0 {
            // Nothing to checkpoint: an idle store whose WAL is empty is checkpointed as of
            // now (its figure would otherwise count the idle time).
            self.checkpointed_now();
        }
        if idle && due_every(&mut self.last_release, RELEASE_IDLE_EVERY) {
            self.release_memory();
        }
    }

    /// Counts the database's free pages and gives a step of them back to the filesystem when
    /// there are enough: the file shrinks by them at the next checkpoint. Waits for no other
    /// program's lock.
    fn give_back_free_pages(&mut self) {
        let counted: rusqlite::Result<(u64, u64)> = self.conn.query_row(
            "SELECT freelist_count, page_size FROM pragma_freelist_count(), pragma_page_size()",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        );
        let Ok((free, page)) = counted else {
            return;
        };
        self.figures
            .free_bytes
            .store(free * page, Ordering::Relaxed);
        if free < GIVE_BACK_AT_LEAST {
            return;
        }
        self.wrote();
        // The pragma frees one page per step of its statement: stepped to its end.
        let give_back = |w: &mut Self| -> rusqlite::Result<()> {
            let mut statement = w
                .conn
                .prepare(&format!("PRAGMA incremental_vacuum({GIVE_BACK_STEP})"))?;
            let mut rows = statement.query([])?;
            while rows.next()?.is_some() {}
            Ok(())
        };
        match self.without_lock_wait(give_back) {
            Ok(()) => {
                self.commits_since_checkpoint += 1;
                let left = free.saturating_sub(GIVE_BACK_STEP);
                self.figures
                    .free_bytes
                    .store(left * page, Ordering::Relaxed);
                log::debug!("Gave {} free pages of the job store back", free - left);
            }
            Err(e) => log::debug!("The job store's free pages were not given back now: {e}"),
        }
    }

    /// Whether so many finished jobs are past `--retain-jobs` that a sweep should not wait.
    fn over_retention(&self) -> bool {
        let limit = self.retention.jobs;
        self.settled_total().saturating_sub(limit) >= SWEEP_OVER_AT_LEAST.max(limit / 32)
    }

    /// Settled jobs in the store.
    fn settled_total(&self) -> u64 {
        self.figures
            .settled
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Gives back what the busy store grew: the idle read-only connections are closed (each
    /// held its page cache and parsed schema), the writer's page cache is emptied, and the
    /// heap's free pages go back to the system. The next read opens a connection again.
    fn release_memory(&mut self) {
        lock(&self.idle_readers).clear();
        if let Err(e) = self.conn.execute_batch("PRAGMA shrink_memory") {
            log::debug!("The job store's cache was not shrunk: {e}");
        }
        release_free_pages();
    }

    fn checkpoint(&mut self, kind: &str) {
        // With `--fsync batch` the checkpoint syncs the WAL before it copies it and the
        // database after: the WAL may be overwritten from its start after this.
        if self.wal.is_some() && !self.synced_until_write {
            match self.conn.execute_batch("PRAGMA synchronous = FULL") {
                Ok(()) => self.synced_until_write = true,
                Err(e) => {
                    log::warn!("WAL checkpoint of the job store skipped: {e}");
                    return;
                }
            }
        }
        // A checkpoint waits for no reader and no other writer: a `sqlite3` session inside a
        // transaction would otherwise hold every commit behind it for the lock wait.
        let result: rusqlite::Result<(i64, i64, i64)> = self.without_lock_wait(|w| {
            w.conn
                .query_row(&format!("PRAGMA wal_checkpoint({kind})"), [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
        });
        self.commits_since_checkpoint = 0;
        // Complete: nothing blocked it, and every frame of the WAL is in the database.
        let complete = match result {
            Ok((blocked, frames, copied)) => blocked == 0 && frames == copied,
            Err(e) if is_lock_error(&e) => false,
            Err(e) => {
                if let Some(held) = self.failures.checkpoint.check(Instant::now()) {
                    log::warn!(
                        "WAL checkpoint of the job store failed: {}{}",
                        StoreError::Sqlite(e),
                        Repeats::suffix(held)
                    );
                }
                false
            }
        };
        if complete {
            self.failures.checkpoint.reset();
            self.checkpointed_now();
            self.unchecked_since = None;
            if self.checkpoint_blocked.as_ref().is_some_and(|b| b.logged) {
                log::info!("The job store's WAL is checkpointed again");
            }
            self.checkpoint_blocked = None;
            return;
        }
        let now = Instant::now();
        let blocked = self.checkpoint_blocked.get_or_insert(Blocked {
            since: now,
            tried: now,
            logged: false,
        });
        blocked.tried = now;
        // Under load a checkpoint may find one of the coordinator's own reads under way, for a
        // moment: checkpoints of any kind that stay incomplete across tries a few seconds apart
        // are told once the WAL's frames waited a minute for one, however busy the store is.
        // Counted from the first commit after the last complete checkpoint, never from that
        // checkpoint itself: an idle store may have had nothing to checkpoint for hours.
        let blocked_for = self.unchecked_since.unwrap_or(blocked.since).elapsed();
        if !blocked.logged
            && blocked.since.elapsed() >= CHECKPOINT_BLOCKED_RETRY
            && blocked_for >= CHECKPOINT_BLOCKED_WARN
        {
            blocked.logged = true;
            let wal_bytes = self.wal_bytes();
            log::warn!(
                "The job store's WAL could not be checkpointed for {:.0} s: another connection \
                 keeps reading an old snapshot (a sqlite3 session inside BEGIN, a backup?) or \
                 holds the write lock. The WAL file ({wal_bytes} bytes) grows until it lets go",
                blocked_for.as_secs_f64()
            );
        }
    }

    /// Records that every frame of the WAL is in the database as of now.
    fn checkpointed_now(&self) {
        self.figures
            .last_checkpoint_ms
            .store((unix_now() * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Bytes of the WAL file (0 when it is missing).
    fn wal_bytes(&self) -> u64 {
        self.conn
            .path()
            .map_or(0, |db| file_size(&wal_path(Path::new(db))))
    }

    /// Runs `call` with the writer's connection not waiting for other programs' locks.
    fn without_lock_wait<T>(&mut self, call: impl FnOnce(&mut Self) -> T) -> T {
        if let Err(e) = self.conn.busy_timeout(Duration::ZERO) {
            log::warn!("The job store's lock wait could not be changed: {e}");
        }
        let out = call(self);
        if let Err(e) = self.conn.busy_timeout(LOCK_WAIT) {
            log::warn!("The job store's lock wait could not be changed: {e}");
        }
        out
    }

    /// Looks for a step of the wall clock since the last look, and logs one. A wall clock
    /// before 1970 reads 0 (see `unix_now`): it is not looked at then, and both clocks run on
    /// with the monotonic clock until it reads a time again.
    fn watch_the_wall_clock(&mut self) {
        let (now, mono) = (unix_now(), Instant::now());
        if now <= 0.0 {
            return;
        }
        self.wait_clock.look(now, mono);
        match self.settle_clock.look(now, mono) {
            Step::None => {}
            Step::Forward(secs) => log::warn!(
                "The wall clock moved {secs:.0} s more than the time that passed (an NTP step or a date -s): retention still ages jobs by the time that passed, and queued jobs' waits leave the step out"
            ),
            Step::Back(secs) => log::warn!(
                "The wall clock moved {secs:.0} s back (an NTP step or a date -s): retention still ages jobs by the time that passed, and those settled from now on are the newest"
            ),
        }
    }

    /// Forgets settled jobs past the retention limits (oldest first), then deletes the
    /// results segments that no retained job refers to and no writer has open.
    fn sweep(&mut self) -> Result<(), StoreError> {
        // Every settled row committed so far was counted when its commit was synced (the counts
        // choose what to forget).
        let settled = self.settled_total();
        let excess = settled
            .saturating_sub(self.retention.jobs)
            .min(MAX_FORGET as u64) as i64;
        self.watch_the_wall_clock();
        let cutoff = self.settle_clock.at(Instant::now()) - self.retention.for_secs;
        let tx = self.conn.transaction()?;
        let clock = write_clock(&tx, &self.settle_clock, &self.wait_clock)?;
        let mut forgotten: Vec<Forgotten> = Vec::new();
        {
            let mut by_count = tx.prepare_cached(&format!(
                "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE finished_at IS NOT NULL \
                 ORDER BY finished_at, seq LIMIT ?1) {RETURNING_FORGOTTEN}"
            ))?;
            let mut by_age = tx.prepare_cached(&format!(
                "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE finished_at IS NOT NULL \
                 AND finished_at < ?1 ORDER BY finished_at LIMIT ?2) {RETURNING_FORGOTTEN}"
            ))?;
            let row = forgotten_row;
            if excess > 0 {
                for deleted in by_count.query_map([excess], row)? {
                    forgotten.push(deleted?);
                }
            }
            for deleted in by_age.query_map(params![cutoff, MAX_FORGET], row)? {
                forgotten.push(deleted?);
            }
        }
        if self.retention.bytes > 0 {
            forgotten.extend(forget_for_bytes(&tx, &self.retention, &self.figures)?);
        }
        let first_sweep = !self.orphans_checked;
        self.orphans_checked = true;
        if forgotten.is_empty() && !first_sweep && clock.is_empty() {
            return Ok(());
        }
        tx.commit()?;
        self.clock_written(clock);
        let synced = self.synced_until_write;
        self.wrote();
        self.figures.count_deleted(
            forgotten.iter().map(|f| f.status.as_str()),
            &self.figures.forgotten,
        );
        if !forgotten.is_empty() {
            self.commits_since_checkpoint += 1;
            log::debug!("Forgot {} finished jobs", forgotten.len());
        }
        // Only segments: anything else in the folder is not the coordinator's to delete (the
        // scrub's listing at start names it in a warning).
        let mut candidates: HashSet<String> = if first_sweep {
            segment_names::list(&self.retention.results_dir)
                .segments
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };
        let mut results = Vec::new();
        for Forgotten {
            segment, extent, ..
        } in forgotten
        {
            if let Some(segment) = segment {
                results.extend(extent.map(|span| (segment.clone(), span)));
                candidates.insert(segment);
            }
        }
        // The rows go before their results files: a power cut must not leave a retained row
        // pointing to a deleted file, or to wiped bytes.
        if let (Some(wal), false) = (&self.wal, synced || candidates.is_empty()) {
            wal.sync().map_err(StoreError::Io)?;
        }
        self.remove_results(candidates, results, WipeOf::ForgottenJob)
    }

    /// Deletes settled job `id` (see [`JobStore::delete_settled`]) in a transaction of its
    /// own; its results go only once that committed (and was synced as `--fsync` asks). A
    /// commit that fails (a full disk) leaves the job and its results whole, and says why.
    fn delete_settled(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        let synced = self.synced_until_write;
        let tx = self.conn.transaction()?;
        let deleted: Option<(String, Option<String>, Option<Span>)> = {
            let mut statement = tx.prepare_cached(
                "DELETE FROM jobs WHERE id = ?1 AND finished_at IS NOT NULL \
                 RETURNING status, results_segment, record",
            )?;
            let mut rows = statement.query([id])?;
            let first = match rows.next()? {
                Some(r) => Some((r.get(0)?, r.get(1)?, segment_extent(id, r.get_ref(2)?))),
                None => None,
            };
            // Stepped to its end: the statement's own errors are told, not dropped at a reset.
            while rows.next()?.is_some() {}
            first
        };
        let Some((status, segment, in_segment)) = deleted else {
            return Ok(None);
        };
        if let Err(e) = tx.commit() {
            let e = StoreError::from(e);
            log::warn!("Job {id} was not deleted: the job store could not commit it: {e}");
            return Err(e);
        }
        self.wrote();
        self.commits_since_checkpoint += 1;
        self.figures
            .count_deleted([status.as_str()], &self.figures.deleted);
        // Synced before the answer and before its results file goes (as in `sweep`). A sync
        // that fails leaves the deletion committed, and so told: it holds for every reader, but
        // a power cut could undo it, so its results stay until the next start's scrub (an undone
        // deletion then finds them whole).
        if let (Some(wal), false) = (&self.wal, synced) {
            if let Err(e) = wal.sync() {
                log::error!(
                    "Job {id} was deleted, but the job store's WAL could not be synced ({e}): a \
                     power cut could undo the deletion; its results are kept until the next start"
                );
                return Ok(Some(status));
            }
        }
        // Results in its row were zeroed by the delete; those in a segment other jobs still
        // refer to are zeroed (a hole punched) once no download reads that segment.
        let results = segment.clone().zip(in_segment).into_iter().collect();
        self.remove_results(segment.into_iter().collect(), results, WipeOf::DeletedJob)?;
        // So is its upload where it stays in an upload segment that waiting uploads keep.
        self.retention.segments.removals().wipe_left(id);
        Ok(Some(status))
    }

    /// Deletes those of the `candidates` results segments that no retained job refers to;
    /// returns the names of those it deleted.
    fn delete_unused_segments(
        &self,
        candidates: HashSet<String>,
    ) -> Result<HashSet<String>, StoreError> {
        let mut referenced = self
            .conn
            .prepare_cached("SELECT 1 FROM jobs WHERE results_segment = ?1 LIMIT 1")?;
        let mut deleted = HashSet::new();
        for name in candidates {
            if referenced.exists([&name])? || !self.retention.segments.retire(&name) {
                continue;
            }
            match self.retention.segments.delete(&name) {
                Ok(()) => {
                    self.figures
                        .segments_deleted
                        .fetch_add(1, Ordering::Relaxed);
                    log::debug!("Deleted results segment {name}: no retained job refers to it");
                    deleted.insert(name);
                }
                Err(e) => log::warn!(
                    "Could not delete {}: {e}",
                    self.retention.results_dir.join(&name).display()
                ),
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention(dir: &Path) -> Retention {
        let results = dir.join("results");
        Retention {
            jobs: u64::MAX,
            for_secs: 1e12,
            bytes: 0,
            results_dir: results.clone(),
            segments: Arc::new(
                Segments::open(results, "t".to_string(), false, Arc::default())
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
        }
    }

    fn job(n: u32, status: PoolStatus) -> Job {
        let mut job = Job::new(
            format!("pool-{n:032x}"),
            Vec::new(),
            None,
            1000.0 + f64::from(n),
        );
        job.status = status;
        job
    }

    #[test]
    fn a_version_1_store_is_upgraded_and_pages_newest_first_through_indexes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(DB_FILE);
        {
            let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
            conn.execute_batch(SCHEMA).unwrap_or_else(|e| panic!("{e}"));
            for n in 0..30 {
                let status = if n % 3 == 0 {
                    PoolStatus::Failed
                } else {
                    PoolStatus::Completed
                };
                let mut j = job(n, status);
                j.owner = (n % 2 == 0).then(|| "alice".to_string());
                j.worker_id = (n % 5 == 0).then(|| "w5".to_string());
                let record = serde_json::to_string(&j).unwrap_or_else(|e| panic!("{e}"));
                conn.execute(
                    "INSERT INTO jobs (id, status, submitted_at, finished_at, owner, record) VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
                    params![j.id, status.as_str(), j.submitted_at, j.owner, record],
                )
                .unwrap_or_else(|e| panic!("{e}"));
            }
            let queued = job(30, PoolStatus::Queued);
            let record = serde_json::to_string(&queued).unwrap_or_else(|e| panic!("{e}"));
            conn.execute(
                "INSERT INTO jobs (id, status, submitted_at, record) VALUES (?1, 'queued', ?2, ?3)",
                params![queued.id, queued.submitted_at, record],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let (store, unsettled) = JobStore::open(dir.path(), FsyncMode::Off, retention(dir.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(unsettled.len(), 1);
        let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(version, SCHEMA_VERSION);
        for (sql, params) in [
            (LIST_BY_STATUS, 6),
            (LIST_BY_OWNER_STATUS, 6),
            (LIST_UNSETTLED, 4),
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .and_then(|mut st| {
                    st.query_map(
                        rusqlite::params_from_iter(vec![rusqlite::types::Value::Null; params]),
                        |r| r.get(3),
                    )?
                    .collect()
                })
                .unwrap_or_else(|e| panic!("{e}"));
            let plan = plan.join("; ");
            assert!(plan.contains("SEARCH jobs USING"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
        let ids = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
        let first = ids(store
            .list(&ListFilter::default(), None, 4)
            .unwrap_or_else(|e| panic!("{e}")));
        let want: Vec<String> = (27..=30)
            .rev()
            .map(|n| job(n, PoolStatus::Queued).id)
            .collect();
        assert_eq!(first, want);
        let older = store
            .list(&ListFilter::default(), Some((1027.0, &want[3])), 2)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ids(older),
            [
                job(26, PoolStatus::Queued).id,
                job(25, PoolStatus::Queued).id
            ]
        );
        let failed = store
            .list(
                &ListFilter {
                    statuses: Some(&[PoolStatus::Failed]),
                    ..ListFilter::default()
                },
                None,
                3,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        // The unsettled job matches any status (the table has the last word).
        let expected: Vec<String> = [30, 27, 24]
            .iter()
            .map(|n| job(*n, PoolStatus::Queued).id)
            .collect();
        assert_eq!(ids(failed), expected);
        // One owner's rows along its own index, one worker's (filled in from the records at
        // the upgrade) along the status's, and both.
        let listed = |filter: ListFilter| {
            let page = store
                .list(&filter, None, 3)
                .unwrap_or_else(|e| panic!("{e}"));
            page.into_iter()
                .map(|j| j.submitted_at as u32 - 1000)
                .collect::<Vec<_>>()
        };
        let alice = ListFilter {
            statuses: Some(&[PoolStatus::Failed]),
            owner: Some("alice"),
            worker: None,
        };
        assert_eq!(listed(alice), [24, 18, 12]);
        let w5 = ListFilter {
            statuses: Some(&[PoolStatus::Completed]),
            owner: None,
            worker: Some("w5"),
        };
        assert_eq!(
            listed(w5),
            [30, 25, 20],
            "the unsettled job matches any worker"
        );
        let both = ListFilter {
            owner: Some("alice"),
            ..w5
        };
        assert_eq!(listed(both), [20, 10]);
        store.close();
    }

    fn record(job: Job, insert: bool) -> Record {
        Record {
            job: Box::new(job),
            insert,
            upload: None,
            done: None,
            sync_first: None,
            retry: false,
            within: Duration::ZERO,
        }
    }

    #[test]
    fn a_disk_that_fails_or_went_read_only_is_told_apart_from_a_full_or_locked_one() {
        for errno in [libc::EIO, libc::EROFS] {
            let e = StoreError::Io(io::Error::from_raw_os_error(errno));
            assert_eq!(e.fault(), StoreFault::Unwritable, "{e}");
            assert_eq!(e.fault().http_status(), 503);
            assert!(e.to_string().contains("went read-only"), "{e}");
            // As the writer's callbacks hear it.
            let told = StoreError::Failed(e.to_string());
            assert_eq!(told.fault(), StoreFault::Unwritable, "{told}");
        }
        let full = StoreError::Io(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.fault(), StoreFault::Full);
        let other = StoreError::Io(io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(other.fault(), StoreFault::Other);
    }

    #[test]
    fn a_settle_hook_counts_what_settled_and_a_panic_in_it_stops_nothing() {
        for mode in [FsyncMode::Off, FsyncMode::Batch] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let (store, _) = JobStore::open(dir.path(), mode, retention(dir.path()))
                .unwrap_or_else(|e| panic!("{e}"));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let hook_seen = Arc::clone(&seen);
            store.on_settled(Box::new(move |settled, count| {
                count();
                lock(&hook_seen).extend(settled.iter().map(|(id, _)| id.clone()));
                assert!(
                    settled.len() > 1,
                    "the hook's panic must not stop the writer"
                );
            }));
            let queued = job(1, PoolStatus::Queued);
            store
                .send_and_wait(record(queued.clone(), true))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(lock(&seen).is_empty(), "a queued job settled nothing");
            let mut panics = record(job(1, PoolStatus::Completed), false);
            panics.done = Some(Box::new(|_| panic!("a callback panics")));
            // Its ticket is never answered: the panic left the callback before it.
            assert!(store.send_and_wait(panics).is_err(), "{mode:?}");
            store
                .send_and_wait(record(job(2, PoolStatus::Failed), true))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                *lock(&seen),
                [queued.id.clone(), job(2, PoolStatus::Failed).id],
                "{mode:?}"
            );
            assert_eq!(store.settled_count(PoolStatus::Completed), 1, "{mode:?}");
            assert_eq!(store.settled_count(PoolStatus::Failed), 1, "{mode:?}");
            store
                .send_and_wait(record(job(1, PoolStatus::Failed), false))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(store.settled_count(PoolStatus::Failed), 1, "settled twice");
            store.close();
        }
    }

    #[test]
    fn a_settled_job_is_deleted_after_the_records_sent_before_and_counted() {
        for mode in [FsyncMode::Off, FsyncMode::Batch, FsyncMode::Always] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let (store, _) = JobStore::open(dir.path(), mode, retention(dir.path()))
                .unwrap_or_else(|e| panic!("{e}"));
            store.on_settled(Box::new(|_, count| count()));
            let wait = Duration::from_secs(30);
            for n in [1, 2] {
                store
                    .send_and_wait(record(job(n, PoolStatus::Running), true))
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            // Its end rides in the queue ahead of the deletion, which waits for nothing else.
            let mut ended = record(job(1, PoolStatus::Completed), false);
            ended.within = Duration::from_secs(60);
            store.send(ended);
            let deleted = store.delete_settled(&job(1, PoolStatus::Completed).id, wait);
            assert_eq!(
                deleted.ok().flatten().as_deref(),
                Some("completed"),
                "{mode:?}"
            );
            let running = store.delete_settled(&job(2, PoolStatus::Running).id, wait);
            assert_eq!(running.ok().flatten(), None, "a job not settled stays");
            let again = store.delete_settled(&job(1, PoolStatus::Completed).id, wait);
            assert_eq!(again.ok().flatten(), None, "{mode:?}");
            let figures = store.figures();
            assert_eq!((figures.rows, figures.deleted), (1, 1), "{mode:?}");
            assert_eq!(store.settled_count(PoolStatus::Completed), 0, "{mode:?}");
            assert_eq!(store.forgotten_total(), 1, "{mode:?}");
            assert!(store
                .load(&job(1, PoolStatus::Completed).id)
                .is_ok_and(|j| j.is_none()));
            store.close();
        }
    }

    #[test]
    fn changes_of_a_failed_transaction_are_written_again_once_the_store_can_write() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, _) = JobStore::open(dir.path(), FsyncMode::Batch, retention(dir.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        for n in 1..=2 {
            store
                .send_and_wait(record(job(n, PoolStatus::Queued), true))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // Every update fails, as on a full disk, until the trigger goes.
        let other = Connection::open(dir.path().join(DB_FILE)).unwrap_or_else(|e| panic!("{e}"));
        other
            .execute_batch(
                "CREATE TRIGGER no_room BEFORE UPDATE ON jobs BEGIN SELECT RAISE(ABORT, 'no room'); END;",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let heard = Arc::new(Mutex::new(Vec::new()));
        let change = |n: u32, status: PoolStatus, retry: bool, tag: &'static str| {
            let mut r = record(job(n, status), false);
            r.retry = retry;
            r.within = Duration::from_millis(1);
            let heard = Arc::clone(&heard);
            r.done = Some(Box::new(move |result: Result<(), &StoreError>| {
                lock(&heard).push((tag, result.is_ok()));
            }));
            r
        };
        // Job 1: two changes nobody waits on, kept (one row write, both callbacks later).
        store.send(change(1, PoolStatus::Dispatched, true, "dispatched"));
        store.send(change(1, PoolStatus::Running, true, "running"));
        // Job 2: a change its sender undoes (not kept), then one someone waits on (kept; the
        // waiter hears at once that it is not written yet).
        store.send(change(2, PoolStatus::Dispatched, false, "undone"));
        let mut waited = record(job(2, PoolStatus::Cancelled), false);
        waited.retry = true;
        assert!(store.send_and_wait(waited).is_err(), "the commit failed");
        let status = |n: u32| {
            store
                .load(&job(n, PoolStatus::Queued).id)
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|j| j.status)
        };
        assert_eq!(status(1), Some(PoolStatus::Queued));
        assert_eq!(*lock(&heard), [("undone", false)]);
        other
            .execute_batch("DROP TRIGGER no_room;")
            .unwrap_or_else(|e| panic!("{e}"));
        // The row commits before the WAL's sync; the settled count and the callbacks follow the
        // sync.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (status(2) != Some(PoolStatus::Cancelled)
            || store.settled_count(PoolStatus::Cancelled) == 0
            || lock(&heard).len() < 3)
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(status(1), Some(PoolStatus::Running));
        assert_eq!(status(2), Some(PoolStatus::Cancelled));
        assert_eq!(store.settled_count(PoolStatus::Cancelled), 1);
        assert_eq!(
            *lock(&heard),
            [("undone", false), ("dispatched", true), ("running", true)]
        );
        store.close();
    }
}
