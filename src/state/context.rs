//! What every coordinator thread shares: configuration, the pool table, the spool, the worker
//! client, the dispatch threads and the wake-up signals of the scheduler and the health checker.

use crate::base::api_keys::LiveKeys;
use crate::base::config::ServeConfig;
use crate::base::job::{Span, StoredResults};
use crate::base::line_file::LineFile;
use crate::base::log_level::LogLevel;
use crate::base::sync::lock;
use crate::base::thread_cache::ThreadCache;
use crate::state::certificates::Certificates;
use crate::state::events::JobEvents;
use crate::state::metrics::Metrics;
use crate::state::pool_state::PoolState;
use crate::state::request_rate::RequestRate;
use crate::state::settled_views::SettledViews;
use crate::state::submit_keys::SubmitKeys;
use crate::store::disk_reserve::DiskReserve;
use crate::store::handoff::{DEFERRAL, SOON};
use crate::store::jobs_db::{JobStore, Record, StoreError, Ticket};
use crate::store::spool::{PinnedSegment, ResultsSource, Spool, UploadSource};
use crate::worker::client::{Timeouts, WorkerClient};
use crossbeam_channel::{Receiver, Sender};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};
use tiny_http::{AddressShares, ConnectionCounts};

/// Stack size of a dispatch thread.
const DISPATCH_STACK: usize = 256 * 1024;
/// Stack size of a thread following one job's worker stream (and, at its end, collecting it).
const STREAM_STACK: usize = 256 * 1024;
/// A request waiting for a collection looks at the table again at least this often.
const COLLECTION_RECHECK: Duration = Duration::from_millis(100);
/// The requests waiting for collections sleep on this many condition variables, one chosen by
/// the job id: a collection's end wakes the requests of its own stripe, not every waiting one.
const COLLECTION_STRIPES: usize = 16;

/// Shared by the HTTP handlers, the scheduler, dispatches, trackers and the health checker.
pub struct Context {
    /// The command-line settings.
    pub config: ServeConfig,
    /// Workers, jobs and the queue.
    pub state: Mutex<PoolState>,
    /// Uploads and results on disk.
    pub spool: Spool,
    /// Every job's record (SQLite).
    pub store: JobStore,
    /// The room new uploads must leave on the state directory's filesystem.
    pub disk_reserve: DiskReserve,
    /// The HTTP server's connections, open and refused (set once the server listens).
    pub connections: Arc<ConnectionCounts>,
    /// Each client address's request rate (`--max-requests-per-ip`).
    pub request_rate: RequestRate,
    /// Requests being handled right now (a graceful shutdown waits for them).
    pub requests_in_flight: AtomicUsize,
    /// Output files being streamed from workers (asked for before their collection ended):
    /// at most `--threads` at once (`http/outputs.rs`).
    pub worker_fetches: Arc<AtomicUsize>,
    /// Submits past their last check (the pause, the key's queue room) whose record is not
    /// committed yet: a pause of submits answers once none is left, so a snapshot taken after
    /// it holds every job acknowledged.
    pub submits_recording: Arc<AtomicUsize>,
    /// Request bodies being read from their clients on upload threads: at most
    /// `--max-uploads` at once (`http/server.rs`).
    pub uploads_receiving: Arc<AtomicUsize>,
    /// Each client address's share of those uploads (`--max-uploads-per-ip`).
    pub upload_shares: Arc<AddressShares>,
    /// `GET /status/{id}?wait=` requests parked now: at most `--max-waiting` at once
    /// (`http/waiting.rs`).
    pub parked: Arc<AtomicUsize>,
    /// The parked requests of each client address (`--max-waiting-per-ip`).
    pub parked_shares: Arc<AddressShares>,
    /// Set once a shutdown began: submits are refused.
    pub stopping: AtomicBool,
    /// The context's own shared handle (see [`Context::attach`]).
    me: OnceLock<Weak<Context>>,
    /// HTTP client towards workers.
    pub client: WorkerClient,
    /// The threads that dispatch jobs, reused from one dispatch to the next.
    pub dispatchers: ThreadCache,
    /// The client keys in force (none: the coordinator is open); replaced on SIGHUP.
    pub keys: LiveKeys,
    /// The threads that follow jobs' worker streams, one busy per job in flight.
    pub streams: ThreadCache,
    /// Job events for followers.
    pub events: JobEvents,
    /// The coordinator-wide figures (the same ones the pool table records into).
    pub metrics: Arc<Metrics>,
    /// The `/status` answers of recently read settled jobs.
    pub settled_views: SettledViews,
    /// The `Idempotency-Key`s of submits in progress.
    pub submit_keys: SubmitKeys,
    /// A line per answered request (`--access-log`), when asked for.
    pub access_log: Option<LineFile>,
    /// The log level in force (`--log-level`, or an operator's change for a while).
    pub log_level: Arc<LogLevel>,
    /// The certificates presented and when they expire.
    pub certificates: Certificates,
    /// Requests waiting in [`Context::lock_collected`], per stripe (see [`stripe`]).
    collection_waiters: [AtomicUsize; COLLECTION_STRIPES],
    /// Signalled with the pool lock when a collection attempt of a job of the stripe ends.
    collection_ended: [Condvar; COLLECTION_STRIPES],
    scheduler_signal: Sender<()>,
    health_signal: Sender<()>,
}

/// The stripe of [`Context::collection_ended`] that the requests for job `id` wait on.
fn stripe(id: &str) -> usize {
    id.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    }) % COLLECTION_STRIPES
}

/// The receiving ends of the wake-up signals, handed to the threads that wait on them.
pub struct Signals {
    /// The scheduler waits on this: a job queued, a slot freed, a worker healthy again.
    pub scheduler: Receiver<()>,
    /// The health checker waits on this: a worker needs probing sooner.
    pub health: Receiver<()>,
}

impl Context {
    /// Builds the context and its signal receivers.
    pub fn new(
        config: ServeConfig,
        state: PoolState,
        spool: Spool,
        store: JobStore,
    ) -> (Self, Signals) {
        let (scheduler_signal, scheduler) = crossbeam_channel::bounded(1);
        let (health_signal, health) = crossbeam_channel::bounded(1);
        let client = WorkerClient::new(Timeouts {
            health: config.health_timeout,
            dispatch: config.dispatch_timeout,
        });
        let events = JobEvents::new(config.max_followers, config.max_followers_per_ip);
        let parked_shares = AddressShares::new(config.max_waiting_per_ip);
        let upload_shares = AddressShares::new(config.max_uploads_per_ip);
        let metrics = Arc::clone(&state.metrics);
        let nice = config.follow_nice;
        let log_level = Arc::new(LogLevel::new(config.log_level));
        let disk_reserve = DiskReserve::new(&config.state_dir, config.disk_reserve);
        let request_rate = RequestRate::new(config.max_requests_per_ip);
        let context = Context {
            disk_reserve,
            request_rate,
            connections: Arc::default(),
            config,
            metrics,
            settled_views: SettledViews::default(),
            submit_keys: SubmitKeys::default(),
            access_log: None,
            log_level,
            certificates: Certificates::default(),
            collection_waiters: std::array::from_fn(|_| AtomicUsize::new(0)),
            collection_ended: std::array::from_fn(|_| Condvar::new()),
            state: Mutex::new(state),
            spool,
            store,
            requests_in_flight: AtomicUsize::new(0),
            worker_fetches: Arc::new(AtomicUsize::new(0)),
            submits_recording: Arc::new(AtomicUsize::new(0)),
            uploads_receiving: Arc::new(AtomicUsize::new(0)),
            upload_shares,
            parked: Arc::new(AtomicUsize::new(0)),
            parked_shares,
            stopping: AtomicBool::new(false),
            me: OnceLock::new(),
            client,
            dispatchers: ThreadCache::new("dispatch", DISPATCH_STACK, nice),
            keys: LiveKeys::default(),
            streams: ThreadCache::new("stream", STREAM_STACK, nice),
            events,
            scheduler_signal,
            health_signal,
        };
        (context, Signals { scheduler, health })
    }

    /// Locks the pool table (recovering it if a panicking thread poisoned it).
    pub fn lock(&self) -> MutexGuard<'_, PoolState> {
        lock(&self.state)
    }

    /// Locks the pool table once job `id` is not in a small collection under way
    /// ([`crate::base::job::Job::collecting_at_most`] `--row-results-max` bytes), waiting for it
    /// at most `limit`: a request for such a job's results is then served from the coordinator,
    /// checked against the signed hashes, instead of fetched from the worker a second time.
    pub fn lock_collected(&self, id: &str, limit: Duration) -> MutexGuard<'_, PoolState> {
        let deadline = Instant::now() + limit;
        let stripe = stripe(id);
        let mut st = self.lock();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let collecting = st
                .jobs
                .get(id)
                .is_some_and(|job| job.collecting_at_most(self.config.row_results_max));
            if !collecting || left.is_zero() {
                return st;
            }
            self.collection_waiters[stripe].fetch_add(1, Ordering::SeqCst);
            st = self.collection_ended[stripe]
                .wait_timeout(st, left.min(COLLECTION_RECHECK))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            self.collection_waiters[stripe].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Wakes the requests waiting in [`Context::lock_collected`] for job `id` (and those of
    /// its stripe): a collection attempt of the job ended (collected, failed for now, or the
    /// job lost). Call it after changing the job.
    pub fn collection_ended(&self, id: &str) {
        let stripe = stripe(id);
        if self.collection_waiters[stripe].load(Ordering::SeqCst) > 0 {
            self.collection_ended[stripe].notify_all();
        }
    }

    /// Tells the scheduler to look at the queue again. Signals coalesce: one pending is enough.
    pub fn wake_scheduler(&self) {
        let _ = self.scheduler_signal.try_send(());
    }

    /// Tells the health checker to look at probe times again.
    pub fn wake_health(&self) {
        let _ = self.health_signal.try_send(());
    }

    /// Lets the context hand itself to the job store's commit callbacks: a settled job leaves
    /// the table once its record committed, in the same critical section that counts it in the
    /// store's figures, and its upload, if still kept, goes. Called once, right after it was
    /// put in an `Arc`.
    pub fn attach(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
        let me = Arc::downgrade(self);
        self.store.on_settled(Box::new(move |settled, count| {
            let Some(ctx) = me.upgrade() else {
                count();
                return;
            };
            // A job that could run again after a lost run kept its upload until now: it goes
            // before the job leaves the table.
            for (id, _) in settled {
                ctx.spool.remove_upload(id);
            }
            let mut st = ctx.lock();
            for (id, _) in settled {
                st.forget_settled(id);
            }
            count();
        }));
    }

    /// Records job `id` as the table `st` holds it now in the job store, without waiting for
    /// the commit. Called with the table locked, so the records of one job reach the store in
    /// the order of its changes. A settled job leaves the table once its record committed.
    pub fn record(&self, st: &PoolState, id: &str) {
        if let Some(record) = self.record_of(st, id) {
            self.store.send(record);
        }
    }

    /// Like [`Context::record`] for a change that a crash must not take back for long although
    /// nobody waits on it (a worker's job id: without it a restart cannot follow the job and
    /// must call it lost): committed and synced within [`SOON`], with whatever came before it.
    pub fn record_soon(&self, st: &PoolState, id: &str) {
        if let Some(mut record) = self.record_of(st, id) {
            record.within = SOON;
            self.store.send(record);
        }
    }

    /// Like [`Context::record`] for a job whose results were just collected into `pinned` (and
    /// synced, see [`JobStore::sync_segment`]): the segment is given back once the record
    /// committed.
    pub fn record_collected(&self, st: &PoolState, id: &str, pinned: PinnedSegment) {
        let Some(spool_ctx) = self.me.get().and_then(Weak::upgrade) else {
            self.spool.give_back_results(pinned);
            self.record(st, id);
            return;
        };
        if let Some(mut record) = self.record_of(st, id) {
            record.done = Some(Box::new(move |_| spool_ctx.spool.give_back_results(pinned)));
            self.store.send(record);
        }
    }

    /// Where the upload of job `id` is, to read it for a dispatch: an upload that waits only in
    /// the job's store row is read from there first.
    pub fn upload_source(&self, id: &str) -> io::Result<UploadSource> {
        match self.spool.upload_source(id)? {
            UploadSource::InRow { .. } => match self.store.row_upload(id) {
                Ok(Some(bytes)) => Ok(UploadSource::Held(bytes)),
                Ok(None) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the job store holds no upload for job {id}"),
                )),
                Err(e) => Err(io::Error::other(e.to_string())),
            },
            source => Ok(source),
        }
    }

    /// Job `id`'s collected results (`stored`, as its record said), opened for several reads
    /// ([`Spool::results_source`]). NotFound when the job was deleted or forgotten since its
    /// record was read: a deletion wipes results in a segment once nobody reads it, so a reader
    /// that opened the segment after the deletion must not read them.
    pub fn results_source(&self, id: &str, stored: &StoredResults) -> io::Result<ResultsSource> {
        let source = self.spool.results_source(stored)?;
        if !stored.in_row && self.is_gone(id) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("job {id} was deleted or forgotten while its results were opened"),
            ));
        }
        Ok(source)
    }

    /// Whether job `id` is known no more: neither in the table nor in the job store (deleted,
    /// or forgotten by retention). False when the store cannot tell.
    pub fn is_gone(&self, id: &str) -> bool {
        !self.lock().jobs.contains_key(id) && matches!(self.store.contains(id), Ok(false))
    }

    /// A reader of `span` of job `id`'s collected results ([`Context::results_source`]).
    pub fn open_results(
        &self,
        id: &str,
        stored: &StoredResults,
        span: Span,
    ) -> io::Result<Box<dyn Read + Send>> {
        self.results_source(id, stored)?.open(span)
    }

    /// Reads the results that job `id`'s store row holds into `stored`, for
    /// [`Context::open_results`] (nothing to do for results in a segment or already in memory).
    pub fn load_row_results(&self, id: &str, stored: &mut StoredResults) -> io::Result<()> {
        if !stored.in_row || stored.row_bytes.is_some() {
            return Ok(());
        }
        match self.store.row_results(id) {
            Ok(Some(bytes)) => {
                stored.row_bytes = Some(bytes);
                Ok(())
            }
            Ok(None) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the job store holds no results for job {id} (it may have expired)"),
            )),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }

    /// Records job `id` (sent with the table locked) and waits for the commit (unlocked): what
    /// must be on disk before the coordinator acts on it, such as a dispatch about to be sent.
    /// A failed commit is not tried again: the caller undoes the change.
    pub fn record_and_wait(&self, id: &str) -> Result<(), StoreError> {
        let ticket = self.ticketed(&self.lock(), id, false);
        ticket.map_or(Ok(()), Ticket::wait)
    }

    /// Records job `id` with the table locked and gives the ticket to wait on for its commit
    /// once the table is unlocked (None when the job is not in the table). The change applies
    /// whatever the ticket says: a failed commit is tried again until the record is written.
    pub fn record_with_ticket(&self, st: &PoolState, id: &str) -> Option<Ticket> {
        self.ticketed(st, id, true)
    }

    fn ticketed(&self, st: &PoolState, id: &str, retry: bool) -> Option<Ticket> {
        let mut record = self.record_of(st, id)?;
        record.retry = retry;
        let ticket = Ticket::attach(&mut record);
        self.store.send(record);
        Some(ticket)
    }

    fn record_of(&self, st: &PoolState, id: &str) -> Option<Record> {
        let job = st.jobs.get(id)?;
        Some(Record {
            job: job.clone(),
            insert: false,
            upload: None,
            done: None,
            sync_first: None,
            retry: true,
            within: DEFERRAL,
        })
    }
}
