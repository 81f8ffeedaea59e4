//! The coordinator's own figures for `/metrics` and the dashboard: atomic counters, histograms
//! with fixed buckets and a ring of per-minute job counts. Recording one never allocates; the
//! per-worker counters live with each worker in the pool table (`WorkerCounters`).

use crate::base::clock::unix_now;
use crate::base::job::PoolStatus;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds (seconds) of the job-time histograms: queue wait, run time, end to end.
pub const JOB_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Bucket bounds (seconds) of the request histograms: submit requests and dispatches.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
    300.0,
];

/// Minutes of history in the per-minute ring (the dashboard's chart).
pub const MINUTES: usize = 60;

/// A histogram with fixed bucket bounds; observing is two atomic additions.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

/// A histogram as read for one scrape: cumulative counts per bound, then +Inf.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Each upper bound with the number of observations at or below it.
    pub buckets: Vec<(f64, u64)>,
    /// All observations (the +Inf bucket).
    pub count: u64,
    /// Sum of the observed seconds.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over these bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation in seconds (negative or NaN counts as 0).
    pub fn observe(&self, seconds: f64) {
        let seconds = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            0.0
        };
        let index = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// The cumulative view of the counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            running += count.load(Ordering::Relaxed);
            buckets.push((*bound, running));
        }
        let over = self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count: running + over,
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// What a submit to a worker came to, as `trusted_pool_dispatches_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// The worker took the job.
    Accepted,
    /// 429.
    Throttled,
    /// Another 4xx: the job was refused.
    Rejected,
    /// 5xx.
    ServerError,
    /// No connection, or it broke before the request was sent.
    Unreachable,
    /// Sent, but the answer was lost.
    Lost,
}

impl DispatchOutcome {
    /// Every outcome, in label order.
    pub const ALL: [DispatchOutcome; 6] = [
        Self::Accepted,
        Self::Throttled,
        Self::Rejected,
        Self::ServerError,
        Self::Unreachable,
        Self::Lost,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Throttled => "429",
            Self::Rejected => "4xx",
            Self::ServerError => "5xx",
            Self::Unreachable => "unreachable",
            Self::Lost => "lost",
        }
    }
}

/// What a health probe came to, as `trusted_pool_health_probes_total{result}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// A healthy answer with the allowlisted identity.
    Healthy,
    /// An answer, but not a healthy one.
    Unhealthy,
    /// Healthy, but another identity.
    WrongIdentity,
    /// No answer.
    Unreachable,
    /// Not made: the coordinator was short of descriptors, memory or threads.
    Shortage,
}

impl ProbeResult {
    /// Every result, in label order.
    pub const ALL: [ProbeResult; 5] = [
        Self::Healthy,
        Self::Unhealthy,
        Self::WrongIdentity,
        Self::Unreachable,
        Self::Shortage,
    ];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::WrongIdentity => "wrong_identity",
            Self::Unreachable => "unreachable",
            Self::Shortage => "shortage",
        }
    }
}

/// Why a request's client key was refused, as `trusted_pool_requests_refused_for_key_total`
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No `Authorization: Bearer` key (401).
    Missing,
    /// A key the keys file does not hold (401).
    Unknown,
    /// A key past its `expires` (401).
    Expired,
    /// A key sent from outside its `bound_cidrs` (403).
    OutsideBound,
}

impl KeyRefusal {
    /// Every reason, in label order.
    pub const ALL: [KeyRefusal; 4] = [
        Self::Missing,
        Self::Unknown,
        Self::Expired,
        Self::OutsideBound,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::OutsideBound => "bound_cidrs",
        }
    }
}

/// The place of `item` in `all` (0 when it is not there).
fn place<T: PartialEq>(all: &[T], item: T) -> usize {
    all.iter().position(|i| *i == item).unwrap_or_default()
}

/// The status classes `trusted_pool_http_responses_total` counts, in label order.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One minute of the per-minute ring.
#[derive(Debug, Default)]
struct MinuteSlot {
    minute: AtomicU64,
    submitted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
}

/// Jobs submitted and finished in one minute, for the dashboard's chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Unix time of the minute's start.
    pub minute_start: u64,
    /// Jobs accepted by `/submit`.
    pub submitted: u64,
    /// Jobs that ended completed.
    pub completed: u64,
    /// Jobs that ended failed or lost.
    pub failed: u64,
    /// Jobs that ended cancelled (by a client: no failure).
    pub cancelled: u64,
}

const STATUSES: usize = PoolStatus::ALL.len();

/// The coordinator-wide figures. Shared by every thread; all updates are relaxed atomics.
#[derive(Debug)]
pub struct Metrics {
    /// Unix seconds when the coordinator started.
    pub started_at: f64,
    submitted: AtomicU64,
    finished: [AtomicU64; STATUSES],
    queue_timeouts: AtomicU64,
    reruns: AtomicU64,
    outputs_left: AtomicU64,
    worker_outputs_refused: AtomicU64,
    submits_repeated: AtomicU64,
    key_reloads_failed: AtomicU64,
    probes: [AtomicU64; ProbeResult::ALL.len()],
    responses: [AtomicU64; STATUS_CLASSES.len()],
    key_refusals: [AtomicU64; KeyRefusal::ALL.len()],
    /// From submit until a worker accepted the job.
    pub queue_wait: Histogram,
    /// From a worker's acceptance until the job ended on it (completed or failed).
    pub run_time: Histogram,
    /// From submit until the job ended, whatever the end.
    pub end_to_end: Histogram,
    /// How long the coordinator took to answer a `/submit`.
    pub submit_request: Histogram,
    /// How long a worker took to answer a dispatch (its `POST /submit`).
    pub dispatch: Histogram,
    minutes: [MinuteSlot; MINUTES],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started_at: unix_now(),
            submitted: AtomicU64::new(0),
            finished: Default::default(),
            queue_timeouts: AtomicU64::new(0),
            reruns: AtomicU64::new(0),
            outputs_left: AtomicU64::new(0),
            worker_outputs_refused: AtomicU64::new(0),
            submits_repeated: AtomicU64::new(0),
            key_reloads_failed: AtomicU64::new(0),
            probes: Default::default(),
            responses: Default::default(),
            key_refusals: Default::default(),
            queue_wait: Histogram::new(JOB_BUCKETS),
            run_time: Histogram::new(JOB_BUCKETS),
            end_to_end: Histogram::new(JOB_BUCKETS),
            submit_request: Histogram::new(REQUEST_BUCKETS),
            dispatch: Histogram::new(REQUEST_BUCKETS),
            minutes: std::array::from_fn(|_| MinuteSlot::default()),
        }
    }
}

impl Metrics {
    /// The ring slot of the minute `now` falls in, reset when it last held an older minute.
    fn slot(&self, now: f64) -> &MinuteSlot {
        let minute = (now.max(0.0) as u64) / 60;
        let slot = &self.minutes[(minute % MINUTES as u64) as usize];
        if slot.minute.swap(minute, Ordering::Relaxed) != minute {
            slot.submitted.store(0, Ordering::Relaxed);
            slot.completed.store(0, Ordering::Relaxed);
            slot.failed.store(0, Ordering::Relaxed);
            slot.cancelled.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// A job was accepted by `/submit`.
    pub fn job_submitted(&self) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
        self.slot(unix_now())
            .submitted
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A job reached its first final status; times are unix seconds.
    pub fn job_finished(&self, status: PoolStatus, submitted_at: f64, dispatched_at: Option<f64>) {
        let now = unix_now();
        self.finished[status.index()].fetch_add(1, Ordering::Relaxed);
        self.end_to_end.observe(now - submitted_at);
        if let (Some(at), PoolStatus::Completed | PoolStatus::Failed) = (dispatched_at, status) {
            self.run_time.observe(now - at);
        }
        let slot = self.slot(now);
        let column = match status {
            PoolStatus::Completed => &slot.completed,
            PoolStatus::Cancelled => &slot.cancelled,
            _ => &slot.failed,
        };
        column.fetch_add(1, Ordering::Relaxed);
    }

    /// A job's queue timeout passed before a worker took it.
    pub fn queue_timed_out(&self) {
        self.queue_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Jobs whose queue timeout passed before a worker took them.
    pub fn queue_timeouts(&self) -> u64 {
        self.queue_timeouts.load(Ordering::Relaxed)
    }

    /// A job's run was lost and the job queued again for a rerun.
    pub fn job_rerun(&self) {
        self.reruns.fetch_add(1, Ordering::Relaxed);
    }

    /// Lost runs after which the job was queued again.
    pub fn reruns(&self) -> u64 {
        self.reruns.load(Ordering::Relaxed)
    }

    /// `n` outputs of a collected job were left on its worker (`--max-results-bytes`).
    pub fn outputs_left_on_worker(&self, n: usize) {
        self.outputs_left.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Outputs left on their workers by `--max-results-bytes`.
    pub fn outputs_left(&self) -> u64 {
        self.outputs_left.load(Ordering::Relaxed)
    }

    /// An output streamed from its worker did not match the size or sha256 the worker
    /// reported when its job ended, and was refused or cut before its end.
    pub fn worker_output_refused(&self) {
        self.worker_outputs_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Outputs streamed from their workers that were refused or cut for a size or hash that
    /// differed from the reported one.
    pub fn worker_outputs_refused(&self) -> u64 {
        self.worker_outputs_refused.load(Ordering::Relaxed)
    }

    /// A health probe ended with `result`.
    pub fn probe(&self, result: ProbeResult) {
        let index = place(&ProbeResult::ALL, result);
        self.probes[index].fetch_add(1, Ordering::Relaxed);
    }

    /// A request was answered with `status` (its class, 1xx to 5xx, counted).
    pub fn answered(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, STATUS_CLASSES.len()) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered with a status of `STATUS_CLASSES[class]`, so far.
    pub fn responses(&self, class: usize) -> u64 {
        self.responses
            .get(class)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    /// A request's client key was refused for `why`.
    pub fn key_refused(&self, why: KeyRefusal) {
        let index = place(&KeyRefusal::ALL, why);
        self.key_refusals[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests whose client key was refused for `why`, so far.
    pub fn key_refusals(&self, why: KeyRefusal) -> u64 {
        let index = place(&KeyRefusal::ALL, why);
        self.key_refusals[index].load(Ordering::Relaxed)
    }

    /// A submit repeated the `Idempotency-Key` of a job, and was answered that job.
    pub fn submit_repeated(&self) {
        self.submits_repeated.fetch_add(1, Ordering::Relaxed);
    }

    /// Submits answered the job their `Idempotency-Key` had made, so far.
    pub fn submits_repeated(&self) -> u64 {
        self.submits_repeated.load(Ordering::Relaxed)
    }

    /// A reload of the keys file refused it (the keys in force stayed).
    pub fn key_reload_failed(&self) {
        self.key_reloads_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads of the keys file refused so far.
    pub fn key_reloads_failed(&self) -> u64 {
        self.key_reloads_failed.load(Ordering::Relaxed)
    }

    /// Jobs accepted by `/submit` so far.
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    /// Jobs that reached `status` as their first final status.
    pub fn finished(&self, status: PoolStatus) -> u64 {
        self.finished[status.index()].load(Ordering::Relaxed)
    }

    /// Health probes that ended with `result`.
    pub fn probes(&self, result: ProbeResult) -> u64 {
        let index = place(&ProbeResult::ALL, result);
        self.probes[index].load(Ordering::Relaxed)
    }

    /// The last `MINUTES` minutes up to `now`, oldest first (minutes without jobs count 0).
    pub fn per_minute(&self, now: f64) -> Vec<MinuteCounts> {
        let current = (now.max(0.0) as u64) / 60;
        (0..MINUTES as u64)
            .rev()
            .filter_map(|back| current.checked_sub(back))
            .map(|minute| {
                let slot = &self.minutes[(minute % MINUTES as u64) as usize];
                let mut counts = MinuteCounts {
                    minute_start: minute * 60,
                    submitted: 0,
                    completed: 0,
                    failed: 0,
                    cancelled: 0,
                };
                if slot.minute.load(Ordering::Relaxed) == minute {
                    counts.submitted = slot.submitted.load(Ordering::Relaxed);
                    counts.completed = slot.completed.load(Ordering::Relaxed);
                    counts.failed = slot.failed.load(Ordering::Relaxed);
                    counts.cancelled = slot.cancelled.load(Ordering::Relaxed);
                }
                counts
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_the_sum_adds_up() {
        let h = Histogram::new(&[0.1, 1.0, 10.0]);
        for s in [0.05, 0.1, 0.5, 5.0, 50.0, -1.0, f64::NAN] {
            h.observe(s);
        }
        let snap = h.snapshot();
        assert_eq!(snap.buckets, vec![(0.1, 4), (1.0, 5), (10.0, 6)]);
        assert_eq!(snap.count, 7);
        assert!((snap.sum - 55.65).abs() < 1e-6, "{}", snap.sum);
    }

    #[test]
    fn finished_jobs_count_by_status_and_fill_the_minute_ring() {
        let m = Metrics::default();
        let now = unix_now();
        m.job_submitted();
        m.job_finished(PoolStatus::Completed, now - 2.0, Some(now - 1.0));
        m.job_finished(PoolStatus::Lost, now - 2.0, Some(now - 1.0));
        m.job_finished(PoolStatus::Failed, now - 2.0, None);
        m.job_finished(PoolStatus::Cancelled, now - 2.0, None);
        assert_eq!(m.submitted(), 1);
        assert_eq!(m.finished(PoolStatus::Completed), 1);
        assert_eq!(m.finished(PoolStatus::Lost), 1);
        assert_eq!(m.end_to_end.snapshot().count, 4);
        assert_eq!(m.run_time.snapshot().count, 1);
        let minutes = m.per_minute(unix_now());
        assert_eq!(minutes.len(), MINUTES);
        let total = minutes.iter().fold((0, 0, 0, 0), |t, c| {
            (
                t.0 + c.submitted,
                t.1 + c.completed,
                t.2 + c.failed,
                t.3 + c.cancelled,
            )
        });
        assert_eq!(total, (1, 1, 2, 1));
    }
}
