//! The coordinator's shared table: workers, jobs and the queue, behind one mutex.
//!
//! Nothing does I/O while holding the lock, and a panic while holding it cannot wedge the
//! coordinator: [`crate::base::sync::lock`] recovers a poisoned mutex (every update leaves the table consistent
//! before anything that could panic runs).

use crate::base::api_keys::KeySet;
use crate::base::cert_expiry::ChainExpiry;
use crate::base::clock::{doubling_pause, unix_now};
use crate::base::job::{Job, LostRun, PoolStatus};
use crate::base::labels;
use crate::state::cpu_window::CpuWindow;
use crate::state::metrics::{DispatchOutcome, Metrics};
use crate::state::queue::JobQueue;
use crate::state::sources::{self, ClientLimits, Source};
use crate::state::submits_pause::SubmitsPause;
use crate::state::watch::EndWatch;
use crate::worker::identity::short_id;
use crate::worker::workers_file::WorkerSpec;
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// sandrun's per-client limit of jobs queued or running, unless its operator changed it.
const SANDRUN_USUAL_LIMIT: u32 = 2;

/// How long a slot freed on a worker at its named limit rests before the next dispatch.
const SLOT_SETTLE: Duration = Duration::from_millis(250);

pub use crate::state::sources::Throttle;

/// What the health checker last learned about a worker.
#[derive(Debug, Clone)]
pub struct Health {
    /// True after a successful probe, until a failed probe or a connection failure.
    pub is_healthy: bool,
    /// Unix seconds of the last completed probe.
    pub last_health_check: Option<f64>,
    /// Why the worker is not healthy (None when healthy).
    pub last_error: Option<String>,
    /// Failed probes in a row.
    pub consecutive_failures: u32,
    /// Unix seconds since when the worker is in its current health state.
    pub since: Option<f64>,
    /// When the health checker probes it next.
    pub next_probe: Instant,
    /// When the certificate chain its `https://` endpoint presents expires, as last read.
    pub certificate: Option<ChainExpiry>,
    /// From when the health checker's next probe also reads that certificate again.
    pub certificate_due: Instant,
}

/// Running totals per worker, for operators.
#[derive(Debug, Clone, Default)]
pub struct WorkerCounters {
    /// Jobs the worker accepted.
    pub accepted: u64,
    /// Jobs that ended completed.
    pub completed: u64,
    /// Jobs that ended failed on it.
    pub failed: u64,
    /// Jobs lost on it.
    pub lost: u64,
    /// Submits it answered 429.
    pub throttled: u64,
    /// Dispatches to it by outcome, in [`DispatchOutcome::ALL`] order.
    pub dispatches: [u64; DispatchOutcome::ALL.len()],
}

impl WorkerCounters {
    /// Counts one dispatch to the worker.
    pub fn dispatched(&mut self, outcome: DispatchOutcome) {
        if let Some(i) = DispatchOutcome::ALL.iter().position(|o| *o == outcome) {
            self.dispatches[i] += 1;
        }
    }
}

/// Wakes a worker's tracker before its interval is up (a job was just dispatched to the worker).
/// Signals coalesce: one pending is enough.
#[derive(Debug, Clone)]
pub struct TrackerWake {
    sender: Sender<()>,
    receiver: Receiver<()>,
}

impl TrackerWake {
    /// A fresh signal.
    pub fn new() -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        TrackerWake { sender, receiver }
    }

    /// Wakes the tracker if it waits.
    pub fn notify(&self) {
        let _ = self.sender.try_send(());
    }

    /// Waits for a signal or `timeout`, whichever comes first.
    pub fn wait(&self, timeout: Duration) {
        let _ = self.receiver.recv_timeout(timeout);
    }
}

impl Default for TrackerWake {
    fn default() -> Self {
        Self::new()
    }
}

/// One allowlisted worker and its live state.
#[derive(Debug, Clone)]
pub struct WorkerEntry {
    /// The allowlist entry.
    pub spec: WorkerSpec,
    /// Health as last probed.
    pub health: Health,
    /// Jobs occupying a slot: dispatch in flight, queued or running on the worker.
    pub active_jobs: u32,
    /// Set while the worker asked to be left alone.
    pub throttle: Option<Throttle>,
    /// Jobs its tracker follows (running, or finished but not yet collected).
    pub tracked: Vec<String>,
    /// The worker job id of each job sent to it since its tracker last had nothing to follow,
    /// to the job's id: how a dispatch finds, at once, a followed job that holds the id it got
    /// (see `pool/reused_ids.rs`). Entries of jobs no longer on that id are dropped by the
    /// tracker once they outnumber the followed jobs.
    pub remote_ids: HashMap<String, String>,
    /// True while a tracker thread serves this worker.
    pub tracker_running: bool,
    /// Wakes that tracker early.
    pub tracker_wake: TrackerWake,
    /// Totals.
    pub counters: WorkerCounters,
    /// Set by a drain: the worker gets no new job; its jobs are followed to their end.
    pub draining: bool,
    /// The per-client limit the worker named in a 429 (`Max concurrent jobs reached (N)`).
    pub learned_cap: Option<u32>,
    /// The most jobs the worker was seen to hold from us at once without a 429.
    pub known_ok: u32,
    /// Submits to it in flight.
    pub in_flight: u32,
    /// No dispatch before this instant: a job just ended on a worker that was at the limit it
    /// named, and the worker frees its per-client count a moment after it reports the end.
    pub settle_until: Option<Instant>,
    /// Removed from the allowlist by a reload: no new job; hidden once its jobs ended, and its
    /// place in the table then goes to the next worker a reload adds (see
    /// [`PoolState::add_worker`]).
    pub removed: bool,
    /// Tracked jobs whose worker stream is open (they are polled far less often).
    pub streaming: Vec<String>,
    /// Tracked jobs to poll at once (their stream said `[DONE]`, or it closed).
    pub poll_now: Vec<String>,
    /// Tracked jobs one thread is following up right now (status, signature check, collection,
    /// a cancelled job's deletion): the tracker, or the job's stream thread after `[DONE]`.
    /// Nobody else touches them meanwhile.
    pub following_up: Vec<String>,
    /// Ended jobs whose results could not be stored (a full disk) or fetched (a download cut or
    /// timed out): collected again once their pause is over, not at every tracker round.
    pub collect_pauses: Vec<CollectPause>,
    /// Set when a result of this worker failed verification under `--require-verified`: it
    /// stays unhealthy, whatever its probes say, until an operator sends SIGHUP or undrains it.
    pub distrusted: Option<String>,
    /// Its source addresses and their quota state (empty: submits leave from the system's
    /// choice and a 429 throttles the whole worker).
    pub sources: Vec<Source>,
    /// The worker's per-client limits, as learned so far (used with `sources`).
    pub client_limits: ClientLimits,
}

impl WorkerEntry {
    /// A worker not yet probed: not healthy until its first probe succeeds.
    pub fn new(spec: WorkerSpec, now: Instant) -> Self {
        let sources = spec
            .source_addresses
            .iter()
            .flatten()
            .map(|a| Source::new(*a))
            .collect();
        WorkerEntry {
            draining: spec.drain,
            removed: false,
            learned_cap: None,
            known_ok: 0,
            in_flight: 0,
            settle_until: None,
            spec,
            health: Health {
                is_healthy: false,
                last_health_check: None,
                last_error: Some("not checked yet".to_string()),
                consecutive_failures: 0,
                since: None,
                next_probe: now,
                certificate: None,
                certificate_due: now,
            },
            active_jobs: 0,
            throttle: None,
            tracked: Vec::new(),
            remote_ids: HashMap::new(),
            tracker_running: false,
            tracker_wake: TrackerWake::new(),
            counters: WorkerCounters::default(),
            streaming: Vec::new(),
            poll_now: Vec::new(),
            following_up: Vec::new(),
            collect_pauses: Vec::new(),
            distrusted: None,
            sources,
            client_limits: ClientLimits::default(),
        }
    }

    /// True for a removed worker whose jobs all ended: nothing refers to it any more.
    pub fn is_forgotten(&self) -> bool {
        self.removed && self.active_jobs == 0 && self.tracked.is_empty()
    }

    /// True when its place in the table may hold another worker: forgotten, and no thread
    /// holds its index any more (no tracker, no submit or `/stats` in flight, no stream left,
    /// no job's follow-up under way). Threads that may still act on an index later (health
    /// probes, `/stats` answers, stream ends) check that the entry is still theirs: its
    /// worker_id and endpoint, or its job.
    pub fn is_free_slot(&self) -> bool {
        self.is_forgotten()
            && !self.tracker_running
            && self.in_flight == 0
            && self.streaming.is_empty()
            && self.poll_now.is_empty()
            && self.following_up.is_empty()
            && self.sources.iter().all(|s| !s.stats.awaiting)
    }

    /// Slots: [`WorkerEntry::cap`]; with source addresses, the per-address limit (sandrun's 2,
    /// or the one its 429 named) times their number, capped by `max_concurrent_jobs`.
    pub fn capacity(&self) -> u32 {
        if self.sources.is_empty() {
            return self.cap();
        }
        let n = u32::try_from(self.sources.len()).unwrap_or(u32::MAX);
        self.client_limits
            .max_active
            .saturating_mul(n)
            .min(self.spec.max_concurrent_jobs)
    }

    /// The source address the next submit should leave from (None: the worker has none, or
    /// every one is full or throttled).
    pub fn pick_source(&self, now: Instant) -> Option<usize> {
        sources::pick(&self.sources, now, &self.client_limits)
    }

    /// Changes its source addresses (a reload): an address kept keeps its figures; jobs in
    /// flight from a dropped one end without being counted anywhere.
    pub fn set_sources(&mut self, addresses: &[IpAddr]) {
        let mut old = std::mem::take(&mut self.sources);
        self.sources = addresses
            .iter()
            .map(|a| match old.iter().position(|s| s.address == *a) {
                Some(i) => old.swap_remove(i),
                None => Source::new(*a),
            })
            .collect();
    }

    /// The source with this address.
    pub fn source_mut(&mut self, address: Option<IpAddr>) -> Option<&mut Source> {
        let address = address?;
        self.sources.iter_mut().find(|s| s.address == address)
    }

    /// Why it takes no job now whether it has room or not (draining, unhealthy, paused after a
    /// 429, or every one of its source addresses paused after a 429 or at sandrun's hourly job
    /// limit); `None` when it may take jobs.
    pub fn kept_from_jobs(&self, now: Instant) -> Option<&'static str> {
        if self.draining {
            Some("draining")
        } else if !self.health.is_healthy {
            Some("unhealthy")
        } else if self.is_throttled(now) {
            Some("paused after a 429")
        } else if self.sources.is_empty() {
            None
        } else if self.sources.iter().all(|s| s.is_throttled(now)) {
            Some("paused after a 429 on every source address")
        } else if self.hourly_limit_ends(now).is_some() {
            Some("at its hourly job limit on every source address")
        } else if self
            .sources
            .iter()
            .all(|s| s.is_throttled(now) || self.hour_full(s, now))
        {
            Some("paused after a 429 or at its hourly job limit on every source address")
        } else {
            None
        }
    }

    /// True when source address `s` has used up this worker's per-client jobs per hour: no
    /// submit from it passes until the oldest of that hour's jobs is an hour old.
    fn hour_full(&self, s: &Source, now: Instant) -> bool {
        s.hour_frees_at(now, self.client_limits.per_hour).is_some()
    }

    /// When every source address of this worker has used up its jobs per hour (sandrun's
    /// per-client limit): the instant the first of them takes a job again. None without
    /// source addresses, or while one has jobs left this hour.
    pub fn hourly_limit_ends(&self, now: Instant) -> Option<Instant> {
        let per_hour = self.client_limits.per_hour;
        self.sources
            .iter()
            .map(|s| s.hour_frees_at(now, per_hour))
            .try_fold(None, |first: Option<Instant>, ends| {
                ends.map(|at| Some(first.map_or(at, |f| f.min(at))))
            })
            .flatten()
    }

    /// True when the throttle, if any, still holds at `now`.
    pub fn is_throttled(&self, now: Instant) -> bool {
        self.throttle.as_ref().is_some_and(|t| t.until > now)
    }

    /// The cap in force: the configured one, or the limit the worker named if that is lower
    /// (for `auto`, the limit it named).
    pub fn cap(&self) -> u32 {
        match self.learned_cap {
            Some(learned) if self.spec.auto_cap => learned,
            Some(learned) => learned.min(self.spec.max_concurrent_jobs),
            None => self.spec.max_concurrent_jobs,
        }
    }

    /// Where [`WorkerEntry::cap`] comes from, for `/pool`.
    pub fn cap_source(&self) -> &'static str {
        match (self.learned_cap, self.spec.auto_cap) {
            (Some(learned), false) if learned >= self.spec.max_concurrent_jobs => "configured",
            (Some(_), _) => "learned from the worker's 429",
            (None, true) => "auto, not learned yet",
            (None, false) => "configured",
        }
    }

    /// True when a job may be dispatched to it now. Until the worker named its limit, a submit
    /// beyond what it was seen to hold (and beyond sandrun's usual 2) goes alone, so finding
    /// the limit costs at most one 429.
    pub fn has_room(&self, now: Instant) -> bool {
        let probing = self.sources.is_empty()
            && self.learned_cap.is_none()
            && self.active_jobs >= self.known_ok.max(SANDRUN_USUAL_LIMIT)
            && self.in_flight > 0;
        self.health.is_healthy
            && !self.draining
            && !self.is_throttled(now)
            && !probing
            && self.settle_until.is_none_or(|at| at <= now)
            && self.active_jobs < self.capacity()
            && (self.sources.is_empty() || self.pick_source(now).is_some())
    }

    /// When a throttle or quota window that keeps it from taking a job now ends.
    pub fn frees_at(&self, now: Instant) -> Option<Instant> {
        let own = self.throttle.as_ref().map(|t| t.until).filter(|u| *u > now);
        if own.is_some() || self.sources.is_empty() {
            return own;
        }
        self.sources
            .iter()
            .filter_map(|s| s.frees_at(now, &self.client_limits))
            .min()
    }

    /// Gives back a slot reserved for a dispatch the worker did not take. No job of the worker
    /// ended, so a concurrency throttle stays (lifting it would undo the pause a 429 just set).
    pub fn return_reservation(&mut self, source: Option<IpAddr>) {
        self.active_jobs = self.active_jobs.saturating_sub(1);
        if let Some(s) = self.source_mut(source) {
            s.note_not_accepted();
        }
    }

    /// Undoes an assignment whose submit never went out (its dispatch could not start, or could
    /// not be recorded): the reserved slot is given back and no dispatch is in flight for it.
    pub fn undo_assignment(&mut self, source: Option<IpAddr>) {
        self.return_reservation(source);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Pauses the collection of job `id`, whose results could not be stored or fetched: 1 s
    /// after the first failure, doubling with each one after it up to [`COLLECT_PAUSE_MAX`],
    /// and over by `due_by` when given (a job whose worker is silent is tried again by the time
    /// its silence would count as lost). Returns the pause.
    pub fn pause_collection(
        &mut self,
        id: &str,
        now: Instant,
        due_by: Option<Instant>,
    ) -> Duration {
        let at = match self.collect_pauses.iter().position(|p| p.id == id) {
            Some(at) => at,
            None => {
                self.collect_pauses.push(CollectPause {
                    id: id.to_string(),
                    until: now,
                    failures: 0,
                });
                self.collect_pauses.len() - 1
            }
        };
        let pause = &mut self.collect_pauses[at];
        pause.failures += 1;
        let doubled = doubling_pause(Duration::from_secs(1), pause.failures, COLLECT_PAUSE_MAX);
        let wait = due_by.map_or(doubled, |by| doubled.min(by.saturating_duration_since(now)));
        pause.until = now + wait;
        wait
    }

    /// How long job `id`'s collection still waits after a failure to store its results.
    pub fn collect_paused_for(&self, id: &str, now: Instant) -> Option<Duration> {
        self.collect_pauses
            .iter()
            .find(|p| p.id == id && p.until > now)
            .map(|p| p.until - now)
    }

    /// Frees the slot of a job that ended (and its place on its source address, booking the CPU
    /// seconds the worker reported); a concurrency throttle ends with it.
    pub fn release_slot(&mut self, source: Option<IpAddr>, cpu_seconds: Option<f64>) {
        if self.sources.is_empty() && self.learned_cap.is_some_and(|cap| self.active_jobs >= cap) {
            self.settle_until = Some(Instant::now() + SLOT_SETTLE);
        }
        self.active_jobs = self.active_jobs.saturating_sub(1);
        let max_active = self.client_limits.max_active;
        if let Some(s) = self.source_mut(source) {
            s.note_ended(Instant::now(), cpu_seconds, max_active);
        }
        if self
            .throttle
            .as_ref()
            .is_some_and(|t| t.lifted_by_free_slot)
        {
            self.throttle = None;
        }
    }
}

/// The outcome of a reload of the `--api-keys` file, for `/pool` and `POST /reload`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KeysReload {
    /// Why the file was refused (the keys in force then stayed).
    pub error: Option<String>,
    /// The keys in force after the reload.
    pub in_force: usize,
}

/// The outcome of the last reload of workers.json and the keys file, for `/pool`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LastReload {
    /// Unix seconds.
    pub at: f64,
    /// `SIGHUP` or `POST /reload`.
    pub source: String,
    /// Why the file was refused (the table then stayed as it was).
    pub error: Option<String>,
    /// Workers added.
    pub added: usize,
    /// Workers removed.
    pub removed: usize,
    /// Changes of cap or drain flag.
    pub changed: usize,
    /// The keys file's reload (`None` without `--api-keys`).
    pub keys: Option<KeysReload>,
}

impl LastReload {
    /// Whether the workers file or the keys file was refused.
    pub fn refused(&self) -> bool {
        self.error.is_some() || self.keys.as_ref().is_some_and(|k| k.error.is_some())
    }
}

/// Why a queued job's labels keep it in the queue (see [`PoolState::labels_hold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelsHold {
    /// No worker of the pool carries every label it asks for: it waits for a reload.
    Stranded,
    /// Every worker that carries them is kept from jobs now (see
    /// [`WorkerEntry::kept_from_jobs`]).
    Blocked,
}

/// Jobs per status: overall, kept in step with the table, and per owner (client key name);
/// and the queued jobs that ask for labels, by the labels they ask for.
#[derive(Debug, Default)]
struct JobCounts {
    all: [usize; PoolStatus::ALL.len()],
    /// Per owner: the jobs it has now (queued, dispatched, running) and those that ended since
    /// the start. An owner whose name is not in `listed` goes once it has no job in flight, so
    /// names of removed keys do not pile up.
    by_owner: HashMap<String, [usize; PoolStatus::ALL.len()]>,
    /// The names in the keys file in force (empty without `--api-keys`).
    listed: HashSet<String>,
    /// Queued jobs per list of labels asked for (sorted, as parsed; never empty), without the
    /// lists no queued job asks for.
    queued_by_labels: HashMap<Vec<String>, usize>,
}

impl JobCounts {
    /// Counts `job` in `status`.
    fn add(&mut self, job: &Job, status: PoolStatus) {
        let owner = job.owner.as_ref();
        let labels = job.labels();
        if status == PoolStatus::Queued && !labels.is_empty() {
            match self.queued_by_labels.get_mut(labels) {
                Some(count) => *count += 1,
                None => {
                    self.queued_by_labels.insert(labels.to_vec(), 1);
                }
            }
        }
        self.all[status.index()] += 1;
        if let Some(owner) = owner {
            match self.by_owner.get_mut(owner) {
                Some(counts) => counts[status.index()] += 1,
                None => {
                    let mut counts = [0; PoolStatus::ALL.len()];
                    counts[status.index()] = 1;
                    self.by_owner.insert(owner.clone(), counts);
                }
            }
        }
    }

    /// Stops counting `job` in `status`.
    fn remove(&mut self, job: &Job, status: PoolStatus) {
        let owner = job.owner.as_ref();
        let labels = job.labels();
        if status == PoolStatus::Queued && !labels.is_empty() {
            if let Some(count) = self.queued_by_labels.get_mut(labels) {
                *count -= 1;
                if *count == 0 {
                    self.queued_by_labels.remove(labels);
                }
            }
        }
        self.all[status.index()] -= 1;
        if let Some(counts) = owner.and_then(|o| self.by_owner.get_mut(o)) {
            // An entry dropped and made again holds only what came after it.
            counts[status.index()] = counts[status.index()].saturating_sub(1);
        }
    }

    /// Drops `owner`'s entry when its name is not in the keys file and it has no job in flight.
    fn drop_if_unlisted(&mut self, owner: Option<&String>) {
        let Some(owner) = owner else { return };
        if self.listed.contains(owner) {
            return;
        }
        if self
            .by_owner
            .get(owner)
            .is_some_and(|counts| !has_jobs_in_flight(counts))
        {
            self.by_owner.remove(owner);
        }
    }

    /// Puts `names` in force as the keys file's, and drops the entries of every other owner
    /// with no job in flight.
    fn relist(&mut self, names: HashSet<String>) {
        self.listed = names;
        let listed = &self.listed;
        self.by_owner
            .retain(|owner, counts| listed.contains(owner) || has_jobs_in_flight(counts));
    }
}

/// Whether an owner's counts hold a job queued, dispatched or running.
fn has_jobs_in_flight(counts: &[usize; PoolStatus::ALL.len()]) -> bool {
    PoolStatus::ALL
        .iter()
        .any(|s| !s.is_final() && counts[s.index()] > 0)
}

/// Workers, jobs and the queue: the one table behind the one lock.
#[derive(Debug, Default)]
pub struct PoolState {
    /// Allowlisted workers, in file order.
    pub workers: Vec<WorkerEntry>,
    /// Every job that is not settled, by id (boxed: the table's spare slots then cost a pointer
    /// each, not a job). Settled jobs live in the job store only.
    pub jobs: HashMap<String, Box<Job>>,
    /// Queued jobs, by priority and owner.
    pub queue: JobQueue,
    /// Jobs per status, overall and per owner.
    counts: JobCounts,
    /// What the jobs in the table hold in file names, content types and labels
    /// ([`Job::names_bytes`]).
    names_bytes: u64,
    /// Where the next tie between equally loaded workers starts looking.
    pub rotation: usize,
    /// The last reload of workers.json, if any.
    pub last_reload: Option<LastReload>,
    /// Jobs that parked status requests wait on.
    pub ends: EndWatch,
    /// Set when the coordinator stops: no more jobs are assigned.
    pub stopping: bool,
    /// Set while the job store could not record a dispatch (a full disk), or the coordinator
    /// could not send one for its own shortage: no job is assigned until it ends.
    pub dispatch_hold: Option<DispatchHold>,
    /// Set while an operator pauses submits (`POST /submits/pause`).
    pub submits_paused: Option<SubmitsPause>,
    /// CPU seconds of the jobs that left the table in the last minute (for `/stats`).
    pub cpu_window: CpuWindow,
    /// The coordinator-wide figures; jobs' first final statuses are counted here.
    pub metrics: Arc<Metrics>,
    /// The ids of the last jobs submitted, for the dashboard.
    pub recent: RecentJobs,
}

/// The longest pause between two tries to store a job's results while the disk is full.
pub const COLLECT_PAUSE_MAX: Duration = Duration::from_secs(30);

/// A job whose results could not be stored, and when its collection is tried again.
#[derive(Debug, Clone)]
pub struct CollectPause {
    /// The pool job id.
    pub id: String,
    /// When the next try is due.
    pub until: Instant,
    /// Failures in a row so far.
    pub failures: u32,
}

/// The longest pause between two tries to dispatch while the job store fails or the coordinator
/// is short of resources.
pub const DISPATCH_HOLD_MAX: Duration = Duration::from_secs(8);

/// Dispatching held back because the job store could not record a dispatch (the record must
/// commit before the worker is called: at most once), or the coordinator was short of
/// descriptors or memory to send one. Queued jobs keep their places; once
/// `until` has passed the scheduler tries again, and the pause doubles with every try that
/// fails, up to [`DISPATCH_HOLD_MAX`].
#[derive(Debug, Clone)]
pub struct DispatchHold {
    /// When this pause began (a dispatch assigned before it ends nothing when it settles).
    pub since: Instant,
    /// When the next try is due.
    pub until: Instant,
    /// Pauses in a row so far.
    pub strikes: u32,
    /// Why the last try failed.
    pub why: String,
}

impl DispatchHold {
    /// The hold still in force at `now`, if any.
    pub fn active(hold: &Option<DispatchHold>, now: Instant) -> Option<&DispatchHold> {
        hold.as_ref().filter(|h| h.until > now)
    }
}

/// How many recent job ids the table remembers for the dashboard.
pub const RECENT_JOBS: usize = 20;

/// A ring of the last [`RECENT_JOBS`] job ids submitted. Its strings are reused, so remembering
/// a job allocates nothing once the ring is full.
#[derive(Debug, Default)]
pub struct RecentJobs {
    ids: Vec<String>,
    next: usize,
}

impl RecentJobs {
    /// Remembers a job id, forgetting the oldest when full.
    pub fn push(&mut self, id: &str) {
        if self.ids.len() < RECENT_JOBS {
            self.ids.push(id.to_string());
        } else {
            let slot = &mut self.ids[self.next];
            slot.clear();
            slot.push_str(id);
        }
        self.next = (self.next + 1) % RECENT_JOBS;
    }

    /// Forgets an id (a submit taken back).
    pub fn remove(&mut self, id: &str) {
        let mut kept: Vec<String> = self
            .newest_first()
            .filter(|k| *k != id)
            .map(str::to_string)
            .collect();
        kept.reverse();
        self.next = kept.len() % RECENT_JOBS;
        self.ids = kept;
    }

    /// Starts over with `newest_first` (ids, newest first; the first [`RECENT_JOBS`] kept).
    pub fn refill(&mut self, newest_first: &[String]) {
        self.ids.clear();
        self.next = 0;
        for id in newest_first.iter().take(RECENT_JOBS).rev() {
            self.push(id);
        }
    }

    /// The remembered ids, newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &str> {
        let n = self.ids.len();
        let newest = (self.next + RECENT_JOBS - 1) % RECENT_JOBS;
        (0..n).map(move |k| self.ids[(newest + RECENT_JOBS - k) % RECENT_JOBS].as_str())
    }
}

impl PoolState {
    /// A table for these workers, no jobs.
    pub fn new(specs: Vec<WorkerSpec>, now: Instant) -> Self {
        PoolState {
            workers: specs
                .into_iter()
                .map(|s| WorkerEntry::new(s, now))
                .collect(),
            ..PoolState::default()
        }
    }

    /// Adds a new queued job at the tail of its owner's line in its priority level.
    /// A job with a queue timeout gets its deadline, that timeout from now.
    pub fn enqueue(&mut self, job: Job, now: Instant) {
        self.enqueue_waited(job, now, Duration::ZERO, Duration::ZERO);
    }

    /// [`PoolState::enqueue`] for a job that already waited `waited` in its level before a
    /// restart, and `queued_for` in the queue (since its submission or its last lost run, also
    /// while its record was committed): its priority aging goes on from there (see
    /// [`JobQueue::push`]), and its queue timeout has that much less left.
    pub fn enqueue_waited(
        &mut self,
        mut job: Job,
        now: Instant,
        waited: Duration,
        queued_for: Duration,
    ) {
        job.status = PoolStatus::Queued;
        let labelled = !job.labels().is_empty();
        self.queue.push(
            job.id.clone(),
            job.owner.clone(),
            job.priority,
            labelled,
            now,
            waited,
        );
        if let Some(timeout) = job.queue_timeout {
            let left = Duration::try_from_secs_f64(timeout)
                .unwrap_or_default()
                .saturating_sub(queued_for);
            let at = now + left;
            job.queue_deadline = Some(at);
            self.queue.set_deadline(&job.id, at);
        }
        self.counts.add(&job, PoolStatus::Queued);
        self.recent.push(&job.id);
        self.names_bytes += job.names_bytes();
        self.jobs.insert(job.id.clone(), Box::new(job));
    }

    /// Takes back a job enqueued (and perhaps assigned) whose first record could not be
    /// committed: its submit is refused, as if it had never come. The caller returns the
    /// worker slot of an assignment.
    pub fn discard(&mut self, id: &str) {
        self.queue.remove(id);
        self.recent.remove(id);
        if let Some(job) = self.jobs.remove(id) {
            self.counts.remove(&job, job.status);
            self.counts.drop_if_unlisted(job.owner.as_ref());
            self.names_bytes = self.names_bytes.saturating_sub(job.names_bytes());
        }
    }

    /// Puts a recovered job that is not queued back into the table, as it is.
    pub fn restore(&mut self, job: Job) {
        self.counts.add(&job, job.status);
        self.counts.drop_if_unlisted(job.owner.as_ref());
        self.names_bytes += job.names_bytes();
        self.jobs.insert(job.id.clone(), Box::new(job));
    }

    /// The workers of the pool (not removed; draining or not, healthy or not) that carry every
    /// label in `wanted`.
    fn carriers<'a>(&'a self, wanted: &'a [String]) -> impl Iterator<Item = &'a WorkerEntry> {
        self.workers
            .iter()
            .filter(|w| !w.removed && labels::has_all(&w.spec.labels, wanted))
    }

    /// Whether a worker of the pool (not removed; draining or not, healthy or not) carries
    /// every label in `wanted`: a job asking for them can run here sooner or later.
    pub fn carries_labels(&self, wanted: &[String]) -> bool {
        self.carriers(wanted).next().is_some()
    }

    /// Why a queued job asking for the labels `wanted` (none: any worker of the pool) cannot
    /// leave the queue, when it cannot: no worker carries them, or each worker that does is
    /// kept from taking jobs now. `None` when a worker with them may take jobs (with room or
    /// not), and for no labels in a pool without workers (no label is missing).
    pub fn labels_hold(&self, wanted: &[String], now: Instant) -> Option<LabelsHold> {
        let mut carriers = self.carriers(wanted).peekable();
        if carriers.peek().is_none() {
            return (!wanted.is_empty()).then_some(LabelsHold::Stranded);
        }
        carriers
            .all(|w| w.kept_from_jobs(now).is_some())
            .then_some(LabelsHold::Blocked)
    }

    /// The queued jobs that cannot leave the queue for their labels: (stranded, blocked), as
    /// [`PoolState::labels_hold`] finds them for each list of labels queued jobs ask for. The
    /// workers are indexed by label once, so each list is held against the carriers of its
    /// rarest label only, not against every worker of the pool.
    pub fn held_by_labels(&self, now: Instant) -> (usize, usize) {
        let workers: Vec<(&[String], bool)> = self
            .listed_workers()
            .map(|w| (&*w.spec.labels, w.kept_from_jobs(now).is_none()))
            .collect();
        let mut by_label: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, (carried, _)) in workers.iter().enumerate() {
            for label in carried.iter() {
                by_label.entry(label.as_str()).or_default().push(i);
            }
        }
        let (mut stranded, mut blocked) = (0, 0);
        for (wanted, count) in self.queued_label_lists() {
            let rarest = wanted
                .iter()
                .map(|label| by_label.get(label.as_str()).map_or(&[][..], Vec::as_slice))
                .min_by_key(|carriers| carriers.len())
                .unwrap_or_default();
            let mut carriers = rarest
                .iter()
                .filter(|&&i| labels::has_all(workers[i].0, wanted))
                .peekable();
            if carriers.peek().is_none() {
                stranded += count;
            } else if carriers.all(|&i| !workers[i].1) {
                blocked += count;
            }
        }
        (stranded, blocked)
    }

    /// The first `most` workers that carry every label in `wanted` and why each is kept from
    /// taking jobs, as `41XoqBhonP7R... (draining)`, and how many carry them in all: what holds
    /// back a job that [`PoolState::labels_hold`] finds [`LabelsHold::Blocked`].
    pub fn kept_carriers(
        &self,
        wanted: &[String],
        now: Instant,
        most: usize,
    ) -> (Vec<String>, usize) {
        let mut named = Vec::new();
        let mut all = 0;
        for w in self.carriers(wanted) {
            if named.len() < most {
                let why = w.kept_from_jobs(now).unwrap_or("taking jobs");
                named.push(format!("{}... ({why})", short_id(&w.spec.worker_id)));
            }
            all += 1;
        }
        (named, all)
    }

    /// Notes that a client waits on job `id` (see [`Job::watched`]).
    pub fn mark_watched(&mut self, id: &str) {
        if let Some(job) = self.jobs.get_mut(id) {
            job.watched = true;
        }
    }

    /// Puts a job back at the head of the queue.
    pub fn requeue_front(&mut self, id: &str) {
        let Some(job) = self.set_status(id, PoolStatus::Queued) else {
            return;
        };
        // A queued job is on no worker: the one that did not take it is not named.
        job.worker_id = None;
        job.source_address = None;
        let owner = job.owner.clone();
        let deadline = job.queue_deadline;
        self.queue.push_front(id.to_string(), owner);
        if let Some(at) = deadline {
            self.queue.set_deadline(id, at);
        }
    }

    /// Puts a job whose run was lost back at the head of the queue, its run forgotten (see
    /// [`Job::forget_lost_run`]); its queue timeout counts again from now.
    pub fn requeue_lost_run(&mut self, id: &str, run: LostRun, now: Instant) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        job.forget_lost_run(run);
        job.queue_deadline = job
            .queue_timeout
            .and_then(|t| Duration::try_from_secs_f64(t).ok())
            .map(|t| now + t);
        self.requeue_front(id);
    }

    /// Moves a job to `status`, keeping the per-status counts exact.
    pub fn set_status(&mut self, id: &str, status: PoolStatus) -> Option<&mut Job> {
        let job = self.jobs.get_mut(id)?;
        self.counts.remove(job, job.status);
        self.counts.add(job, status);
        self.counts.drop_if_unlisted(job.owner.as_ref());
        if status.is_final() && !job.status.is_final() {
            self.metrics
                .job_finished(status, job.submitted_at, job.dispatched_at);
        }
        job.status = status;
        if status.is_final() {
            self.ends.ended(id);
        }
        Some(job)
    }

    /// Holds dispatching back after a dispatch could not be recorded or sent (`why`). Dispatches
    /// that fail together make one pause; returns its length when this failure starts a new one.
    pub fn hold_dispatching(&mut self, why: String, now: Instant) -> Option<Duration> {
        if let Some(hold) = self.dispatch_hold.as_mut().filter(|h| h.until > now) {
            hold.why = why;
            return None;
        }
        // Tries that fail in a row (the last pause ended a moment ago) pause longer each time.
        let strikes = self
            .dispatch_hold
            .as_ref()
            .filter(|h| now < h.until + DISPATCH_HOLD_MAX)
            .map_or(0, |h| h.strikes)
            + 1;
        let pause = doubling_pause(Duration::from_secs(1), strikes, DISPATCH_HOLD_MAX);
        self.dispatch_hold = Some(DispatchHold {
            since: now,
            until: now + pause,
            strikes,
            why,
        });
        Some(pause)
    }

    /// True when the job was cancelled.
    pub fn is_cancelled(&self, id: &str) -> bool {
        self.jobs
            .get(id)
            .is_some_and(|j| j.status == PoolStatus::Cancelled)
    }

    /// How many jobs are in `status`.
    pub fn count(&self, status: PoolStatus) -> usize {
        self.counts.all[status.index()]
    }

    /// How many queued jobs ask for no labels.
    pub fn unlabelled_queued(&self) -> usize {
        let labelled: usize = self.counts.queued_by_labels.values().sum();
        self.count(PoolStatus::Queued).saturating_sub(labelled)
    }

    /// Each list of labels that queued jobs ask for (sorted, never empty), with how many ask
    /// for it.
    pub fn queued_label_lists(&self) -> impl Iterator<Item = (&[String], usize)> {
        self.counts
            .queued_by_labels
            .iter()
            .map(|(labels, count)| (labels.as_slice(), *count))
    }

    /// How many jobs of this owner (client key name) are in `status`.
    pub fn owner_count(&self, owner: &str, status: PoolStatus) -> usize {
        self.counts
            .by_owner
            .get(owner)
            .map_or(0, |counts| counts[status.index()])
    }

    /// What the jobs in the table hold in file names, content types and labels: at most
    /// `--max-names-bytes`, give or take the submits recorded at once.
    pub fn names_bytes(&self) -> u64 {
        self.names_bytes
    }

    /// Every owner whose name is in the keys file and has or had jobs since the start, and
    /// every other owner with a job queued, dispatched or running, with its jobs per status (in
    /// `PoolStatus::ALL` order).
    pub fn owners(&self) -> impl Iterator<Item = (&str, &[usize; PoolStatus::ALL.len()])> {
        self.counts.by_owner.iter().map(|(o, c)| (o.as_str(), c))
    }

    /// Puts the names of the keys file in force (`None`: no `--api-keys`) and drops the
    /// figures of every owner not named there that has no job queued, dispatched or running:
    /// a removed key's figures go once its last job ends.
    pub fn keys_listed(&mut self, keys: Option<&KeySet>) {
        let names = keys
            .map(|k| k.keys().iter().map(|key| key.name.clone()).collect())
            .unwrap_or_default();
        self.counts.relist(names);
    }

    /// Drops a settled job from the table once its record committed: it lives in the job store
    /// from then on.
    pub fn forget_settled(&mut self, id: &str) {
        if self.jobs.get(id).is_some_and(|job| job.is_settled()) {
            if let Some(job) = self.jobs.remove(id) {
                // Its owner's counts keep it: an owner's settled jobs stay counted (`/pool`
                // shows them per key).
                self.counts.all[job.status.index()] -= 1;
                self.names_bytes = self.names_bytes.saturating_sub(job.names_bytes());
                self.cpu_window.record(&job, unix_now());
            }
        }
    }

    /// Drops the entries of worker `index`'s `remote_ids` whose job is no longer on that id
    /// (it left the table, or was queued to run again), once they outnumber its followed jobs.
    pub fn prune_remote_ids(&mut self, index: usize) {
        let PoolState { workers, jobs, .. } = self;
        let Some(worker) = workers.get_mut(index) else {
            return;
        };
        if worker.remote_ids.len() > 2 * worker.tracked.len() + 16 {
            worker
                .remote_ids
                .retain(|remote, id| jobs.get(id.as_str()).is_some_and(|j| j.is_on(remote)));
        }
    }

    /// Adds a worker (a reload): in the place of a forgotten one when there is one, so the
    /// table stays as large as the most workers listed at once plus those still ending jobs.
    /// Returns its index.
    pub fn add_worker(&mut self, spec: WorkerSpec, now: Instant) -> usize {
        let entry = WorkerEntry::new(spec, now);
        match self.workers.iter().position(WorkerEntry::is_free_slot) {
            Some(index) => {
                self.workers[index] = entry;
                index
            }
            None => {
                self.workers.push(entry);
                self.workers.len() - 1
            }
        }
    }

    /// The workers workers.json lists now (a removed one stays in the table while its jobs
    /// end).
    pub fn listed_workers(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.workers.iter().filter(|w| !w.removed)
    }

    /// Index of the allowlisted (not removed) worker with this id, else of a removed one.
    pub fn worker_index(&self, worker_id: &str) -> Option<usize> {
        let with_id = |w: &&WorkerEntry| w.spec.worker_id == worker_id;
        let listed = self.workers.iter().position(|w| !w.removed && with_id(&w));
        listed.or_else(|| self.workers.iter().position(|w| with_id(&w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pause after a 429 until `until`.
    fn paused_until(until: Instant) -> sources::Throttle {
        sources::Throttle {
            until,
            until_unix: 0.0,
            reason: "busy".to_string(),
            strikes: 1,
            lifted_by_free_slot: false,
        }
    }

    #[test]
    fn a_worker_paused_on_every_source_address_is_kept_from_jobs() {
        let now = Instant::now();
        let mut st = PoolState::new(vec![WorkerSpec::numbered(0)], now);
        let w = &mut st.workers[0];
        w.health.is_healthy = true;
        w.sources = [[127, 0, 0, 2], [127, 0, 0, 3]]
            .map(|a| Source::new(IpAddr::from(a)))
            .into();
        assert_eq!(w.kept_from_jobs(now), None);
        w.sources[0].throttle = Some(paused_until(now + Duration::from_secs(5)));
        assert_eq!(w.kept_from_jobs(now), None, "one address is free");
        w.sources[1].throttle = Some(paused_until(now + Duration::from_secs(5)));
        assert_eq!(
            w.kept_from_jobs(now),
            Some("paused after a 429 on every source address")
        );
        assert_eq!(w.kept_from_jobs(now + Duration::from_secs(6)), None);
        // sandrun's jobs per hour used up from one address, then from both.
        let per_hour = w.client_limits.per_hour;
        for _ in 0..per_hour {
            w.sources[0].note_accepted(now);
        }
        assert_eq!(
            w.kept_from_jobs(now),
            Some("paused after a 429 on every source address")
        );
        let later = now + Duration::from_secs(6);
        assert_eq!(w.kept_from_jobs(later), None, "one address is free");
        w.sources[1].throttle = Some(paused_until(now + Duration::from_secs(60)));
        assert_eq!(
            w.kept_from_jobs(later),
            Some("paused after a 429 or at its hourly job limit on every source address")
        );
        assert_eq!(
            w.hourly_limit_ends(later),
            None,
            "one address has jobs left"
        );
        for _ in 0..per_hour {
            w.sources[1].note_accepted(now);
        }
        let after_pause = now + Duration::from_secs(61);
        assert_eq!(
            w.kept_from_jobs(after_pause),
            Some("at its hourly job limit on every source address")
        );
        assert_eq!(
            w.hourly_limit_ends(after_pause),
            Some(now + Duration::from_secs(3600))
        );
        assert_eq!(w.kept_from_jobs(now + Duration::from_secs(3601)), None);
        assert_eq!(w.hourly_limit_ends(now + Duration::from_secs(3601)), None);
        w.sources.clear();
        assert_eq!(w.hourly_limit_ends(now), None, "no source address");
    }

    /// A pool of healthy workers `w0`, `w1`, ... carrying these labels.
    fn healthy_pool(labels: &[&[&str]], now: Instant) -> PoolState {
        let specs = labels
            .iter()
            .enumerate()
            .map(|(n, carried)| WorkerSpec {
                labels: carried.iter().map(|l| l.to_string()).collect(),
                ..WorkerSpec::numbered(n)
            })
            .collect();
        let mut st = PoolState::new(specs, now);
        for w in &mut st.workers {
            w.health.is_healthy = true;
        }
        st
    }

    #[test]
    fn the_workers_with_a_jobs_labels_are_named_when_none_of_them_takes_jobs() {
        let now = Instant::now();
        let mut st = healthy_pool(&[&["gpu"], &["arm64", "gpu"], &["gpu"], &[]], now);
        let gpu = ["gpu".to_string()];
        assert_eq!(st.labels_hold(&gpu, now), None, "all take jobs");
        st.workers[0].health.is_healthy = false;
        st.workers[1].draining = true;
        assert_eq!(st.labels_hold(&gpu, now), None, "w2 takes jobs");
        st.workers[2].throttle = Some(paused_until(now + Duration::from_secs(5)));
        assert_eq!(st.labels_hold(&gpu, now), Some(LabelsHold::Blocked));
        let named = [
            "w0... (unhealthy)".to_string(),
            "w1... (draining)".to_string(),
            "w2... (paused after a 429)".to_string(),
        ];
        assert_eq!(st.kept_carriers(&gpu, now, 5), (named.to_vec(), 3));
        assert_eq!(st.kept_carriers(&gpu, now, 2), (named[..2].to_vec(), 3));
        let later = now + Duration::from_secs(6);
        assert_eq!(st.labels_hold(&gpu, later), None, "w2's pause ended");
        let arm = ["arm64".to_string(), "gpu".to_string()];
        assert_eq!(st.labels_hold(&arm, now), Some(LabelsHold::Blocked));
        assert_eq!(
            st.kept_carriers(&arm, now, 5),
            (vec!["w1... (draining)".to_string()], 1)
        );
        st.workers[1].removed = true;
        assert_eq!(
            st.labels_hold(&arm, now),
            Some(LabelsHold::Stranded),
            "stranded, not kept"
        );
        // A job without labels cannot leave once every worker is kept from jobs.
        assert_eq!(st.labels_hold(&[], now), None, "w3 takes jobs");
        st.workers[3].draining = true;
        assert_eq!(st.labels_hold(&[], now), Some(LabelsHold::Blocked));
        assert_eq!(
            st.kept_carriers(&[], now, 5),
            (
                vec![
                    "w0... (unhealthy)".to_string(),
                    "w2... (paused after a 429)".to_string(),
                    "w3... (draining)".to_string()
                ],
                3
            ),
            "the removed w1 is not of the pool"
        );
        assert_eq!(st.labels_hold(&[], later), None, "w2's pause ended");
        st.workers.clear();
        assert_eq!(
            st.labels_hold(&[], now),
            None,
            "no worker, and no label missing"
        );
    }

    #[test]
    fn the_jobs_held_by_their_labels_are_counted_as_each_list_finds_it() {
        let now = Instant::now();
        let mut st = healthy_pool(&[&["gpu"], &["arm64", "gpu"], &[]], now);
        let lists: [&[&str]; 4] = [&["gpu"], &["gpu"], &["arm64", "gpu"], &["x86_64"]];
        for (i, labels) in lists.iter().enumerate() {
            let mut job = Job::new(format!("pool-{i}"), Vec::new(), None, 0.0);
            job.labels = Some(labels.iter().map(|l| l.to_string()).collect());
            st.enqueue(job, now);
        }
        let one_by_one = |st: &PoolState| {
            let (mut stranded, mut blocked) = (0, 0);
            for (labels, count) in st.queued_label_lists() {
                match st.labels_hold(labels, now) {
                    Some(LabelsHold::Stranded) => stranded += count,
                    Some(LabelsHold::Blocked) => blocked += count,
                    None => {}
                }
            }
            (stranded, blocked)
        };
        assert_eq!(st.held_by_labels(now), (1, 0), "x86_64 is carried by none");
        st.workers[1].draining = true;
        assert_eq!(st.held_by_labels(now), (1, 1), "arm64 and gpu: w1 only");
        st.workers[0].health.is_healthy = false;
        assert_eq!(st.held_by_labels(now), (1, 3));
        st.workers[1].removed = true;
        assert_eq!(st.held_by_labels(now), (2, 2));
        assert_eq!(st.held_by_labels(now), one_by_one(&st));
    }

    #[test]
    fn a_collection_that_finds_no_room_waits_longer_each_time_up_to_the_most() {
        let now = Instant::now();
        let mut st = PoolState::new(vec![WorkerSpec::numbered(0)], now);
        let w = &mut st.workers[0];
        let waits: Vec<u64> = (0..7)
            .map(|_| w.pause_collection("pool-1", now, None).as_secs())
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30]);
        let soon = Duration::from_millis(300);
        assert_eq!(w.pause_collection("pool-3", now, Some(now + soon)), soon);
        // The second failure's pause (2 s) ends before 2.7 s.
        assert_eq!(
            w.pause_collection("pool-3", now, Some(now + 9 * soon)),
            Duration::from_secs(2)
        );
        assert_eq!(w.collect_paused_for("pool-1", now), Some(COLLECT_PAUSE_MAX));
        assert_eq!(
            w.collect_paused_for("pool-1", now + COLLECT_PAUSE_MAX),
            None
        );
        assert_eq!(w.collect_paused_for("pool-2", now), None);
    }

    #[test]
    fn an_added_worker_takes_the_place_of_a_forgotten_one_only() {
        let now = Instant::now();
        let mut st = PoolState::new(vec![WorkerSpec::numbered(0), WorkerSpec::numbered(1)], now);
        st.workers[0].removed = true;
        st.workers[0].active_jobs = 1;
        assert_eq!(
            st.add_worker(WorkerSpec::numbered(2), now),
            2,
            "worker 0 still has a job"
        );
        st.workers[0].active_jobs = 0;
        st.workers[0].tracker_running = true;
        assert_eq!(
            st.add_worker(WorkerSpec::numbered(3), now),
            3,
            "its tracker still holds its index"
        );
        st.workers[0].tracker_running = false;
        assert_eq!(st.add_worker(WorkerSpec::numbered(4), now), 0);
        assert_eq!(st.workers[0].spec.worker_id, "w4");
        assert!(!st.workers[0].removed);
        assert_eq!(st.workers.len(), 4);
    }

    #[test]
    fn recent_jobs_keep_the_last_ones_newest_first() {
        let mut recent = RecentJobs::default();
        assert_eq!(recent.newest_first().count(), 0);
        for i in 0..3 {
            recent.push(&format!("job-{i}"));
        }
        let ids: Vec<&str> = recent.newest_first().collect();
        assert_eq!(ids, ["job-2", "job-1", "job-0"]);
        for i in 3..(RECENT_JOBS + 5) {
            recent.push(&format!("job-{i}"));
        }
        let ids: Vec<&str> = recent.newest_first().collect();
        assert_eq!(ids.len(), RECENT_JOBS);
        assert_eq!(ids[0], format!("job-{}", RECENT_JOBS + 4));
        assert_eq!(ids[RECENT_JOBS - 1], "job-5");
        recent.remove(&format!("job-{}", RECENT_JOBS + 4));
        recent.remove("job-9");
        recent.push("job-new");
        let ids: Vec<&str> = recent.newest_first().collect();
        assert_eq!(ids.len(), RECENT_JOBS - 1);
        assert_eq!(ids[0], "job-new");
        assert_eq!(ids[1], format!("job-{}", RECENT_JOBS + 3));
        assert!(!ids.contains(&"job-9"));
        assert_eq!(ids[RECENT_JOBS - 2], "job-5");
        let newest: Vec<String> = (0..RECENT_JOBS + 2).map(|i| format!("old-{i}")).collect();
        recent.refill(&newest);
        recent.push("job-after");
        let ids: Vec<&str> = recent.newest_first().collect();
        assert_eq!(ids.len(), RECENT_JOBS);
        assert_eq!(ids[..2], ["job-after", "old-0"]);
        assert_eq!(ids[RECENT_JOBS - 1], format!("old-{}", RECENT_JOBS - 2));
    }
}
