//! `GET /metrics`: the Prometheus text exposition format, version 0.0.4.
//!
//! The pool table is locked only to copy a few numbers per worker; the text is written after the
//! lock is released, into one buffer sized from the previous scrape. Each worker's label text is
//! kept between scrapes ([`RenderCache`]) and rebuilt only when the worker at that place in the
//! table changes (a reload), so a scrape allocates nothing per worker.

use crate::base::job::{PoolStatus, Priority};
use crate::base::line_file::LineFigures;
use crate::base::process;
use crate::base::sync::lock;
use crate::state::certificates::Presented;
use crate::state::context::Context;
use crate::state::metrics::{
    DispatchOutcome, HistogramSnapshot, KeyRefusal, Metrics, ProbeResult, STATUS_CLASSES,
};
use crate::state::pool_state::{DispatchHold, PoolState, WorkerCounters, WorkerEntry};
use crate::state::request_rate::RequestRate;
use crate::store::disk_reserve::DiskReserve;
use crate::store::jobs_db::StoreFigures;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;
use tiny_http::ConnectionCounts;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One worker's figures, copied under the lock (numbers only: its labels are in the cache).
struct WorkerSample {
    healthy: bool,
    throttled: bool,
    draining: bool,
    /// Every source address has used up its jobs per hour.
    hourly_limited: bool,
    active_jobs: u32,
    max_concurrent_jobs: u32,
    tracked_jobs: usize,
    counters: WorkerCounters,
    /// When the certificate its `https://` endpoint presents expires, as last read.
    certificate_expiry: Option<u64>,
}

/// The label text of the worker at one place in the table.
struct WorkerLabels {
    worker_id: String,
    endpoint: String,
    /// The worker's own labels (workers.json `"labels"`).
    carries: Vec<String>,
    /// `{worker_id="..."`, escaped: every per-worker series starts with it.
    open: String,
    /// `,endpoint="..."} 1` (with `,labels="a,b"` before the brace when the worker carries
    /// labels), escaped: the rest of its `trusted_pool_worker_info` line.
    info: String,
}

impl WorkerLabels {
    fn new(w: &WorkerEntry) -> Self {
        let (worker_id, endpoint) = (&w.spec.worker_id, &w.spec.endpoint);
        let mut open = String::with_capacity(worker_id.len() + 13);
        open.push_str("{worker_id=\"");
        escape_into(&mut open, worker_id);
        open.push('"');
        let mut info = String::with_capacity(endpoint.len() + 16);
        info.push_str(",endpoint=\"");
        escape_into(&mut info, endpoint);
        if !w.spec.labels.is_empty() {
            info.push_str("\",labels=\"");
            escape_into(&mut info, &w.spec.labels.join(","));
        }
        info.push_str("\"} 1");
        WorkerLabels {
            worker_id: worker_id.clone(),
            endpoint: endpoint.clone(),
            carries: w.spec.labels.clone(),
            open,
            info,
        }
    }

    fn is_for(&self, w: &WorkerEntry) -> bool {
        self.worker_id == w.spec.worker_id
            && self.endpoint == w.spec.endpoint
            && self.carries == w.spec.labels
    }
}

/// What scrapes keep between them. Taken before the pool lock (which is taken inside it only
/// to copy the figures), never under it; concurrent scrapes take turns.
struct RenderCache {
    /// Per place in the table, the labels of the worker there at the last scrape.
    labels: Vec<WorkerLabels>,
    /// This scrape's per-worker figures (the vector is reused).
    samples: Vec<WorkerSample>,
    /// Length of the last text, to size the next one's buffer.
    last_len: usize,
}

static CACHE: Mutex<RenderCache> = Mutex::new(RenderCache {
    labels: Vec::new(),
    samples: Vec::new(),
    last_len: 0,
});

/// The table's figures, copied under the lock.
struct TableSample {
    /// Queued jobs put back at the head, then per priority level (see [`Priority::ALL`]).
    requeued: usize,
    levels: [usize; Priority::ALL.len()],
    jobs: [usize; PoolStatus::ALL.len()],
    /// Dispatching is held: the job store could not record a dispatch, or the coordinator was
    /// too short of resources to send one.
    dispatch_held: bool,
    /// An operator pauses submits.
    submits_paused: bool,
    /// Queued jobs whose labels no worker carries.
    stranded: usize,
    /// Queued jobs whose labels only workers kept from jobs carry.
    blocked: usize,
}

/// Copies the table's figures into `cache.samples`, refreshing the labels of workers that
/// changed place (added, removed, re-addressed).
fn sample_table(st: &PoolState, now: Instant, cache: &mut RenderCache) -> TableSample {
    let mut jobs = [0; PoolStatus::ALL.len()];
    for (count, status) in jobs.iter_mut().zip(PoolStatus::ALL) {
        *count = st.count(status);
    }
    let depths = st.queue.depths();
    // The allowlisted workers, as `/pool` counts them: an entry a reload removed (still ending
    // its jobs, or forgotten) has no series, so a worker listed again under another endpoint
    // is never two series of one `worker_id`.
    let listed = || st.listed_workers();
    cache.labels.truncate(listed().count());
    cache.samples.clear();
    for (i, w) in listed().enumerate() {
        match cache.labels.get_mut(i) {
            Some(labels) if labels.is_for(w) => {}
            Some(labels) => *labels = WorkerLabels::new(w),
            None => cache.labels.push(WorkerLabels::new(w)),
        }
        cache.samples.push(WorkerSample {
            healthy: w.health.is_healthy,
            throttled: w.is_throttled(now),
            draining: w.draining,
            hourly_limited: w.hourly_limit_ends(now).is_some(),
            active_jobs: w.active_jobs,
            max_concurrent_jobs: w.spec.max_concurrent_jobs,
            tracked_jobs: w.tracked.len(),
            counters: w.counters.clone(),
            certificate_expiry: w.health.certificate.as_ref().map(|c| c.not_after),
        });
    }
    let (stranded, blocked) = st.held_by_labels(now);
    TableSample {
        stranded,
        blocked,
        requeued: depths.requeued,
        levels: depths.levels,
        jobs,
        dispatch_held: DispatchHold::active(&st.dispatch_hold, now).is_some(),
        submits_paused: st.submits_paused.is_some(),
    }
}

/// The client connections open now, those refused since the start by reason, and the requests
/// the HTTP server refused before any handler saw them.
fn write_connections(out: &mut Text, counts: &ConnectionCounts) {
    out.family(
        "trusted_pool_connections_open",
        "gauge",
        "Client connections being read now.",
    );
    out.sample(
        "trusted_pool_connections_open",
        &[],
        counts.open.load(Ordering::Relaxed) as u64,
    );
    out.family(
        "trusted_pool_connections_refused_total",
        "counter",
        "Client connections refused at once: with 503 beyond --max-connections (limit), beyond --max-connections-per-ip (address), or for want of a descriptor or a thread (shortage); closed from a --trusted-proxies address without a PROXY protocol header under --proxy-protocol (proxy_header).",
    );
    for (reason, count) in [
        ("limit", &counts.refused_over_limit),
        ("address", &counts.refused_for_address),
        ("shortage", &counts.refused_for_shortage),
        ("proxy_header", &counts.refused_without_proxy_header),
    ] {
        out.sample(
            "trusted_pool_connections_refused_total",
            &[("reason", reason)],
            count.load(Ordering::Relaxed),
        );
    }
    out.family(
        "trusted_pool_requests_refused_unread_total",
        "counter",
        "Requests the HTTP server answered itself before any handler saw them, closing their connection: a malformed, too large or too slow request head, or framing it does not take (400, 408, 414, 417, 431, 501, 505).",
    );
    out.sample(
        "trusted_pool_requests_refused_unread_total",
        &[],
        counts.refused_unread.load(Ordering::Relaxed),
    );
}

/// The requests refused beyond `--max-requests-per-ip`.
fn write_request_rate(out: &mut Text, rate: &RequestRate) {
    out.family(
        "trusted_pool_requests_refused_for_rate_total",
        "counter",
        "Requests answered 429 because their client address was over --max-requests-per-ip.",
    );
    out.sample(
        "trusted_pool_requests_refused_for_rate_total",
        &[],
        rate.refused(),
    );
}

/// The requests answered, by status class, and those whose client key was refused, by why.
fn write_answers(out: &mut Text, metrics: &Metrics) {
    out.family(
        "trusted_pool_http_responses_total",
        "counter",
        "Requests answered by the coordinator's routes, by status class (not the HTTP parser's own 400, 408, 414 and 431, nor refused connections).",
    );
    for (class, code) in STATUS_CLASSES.iter().enumerate() {
        out.sample(
            "trusted_pool_http_responses_total",
            &[("code", code)],
            metrics.responses(class),
        );
    }
    out.family(
        "trusted_pool_requests_refused_for_key_total",
        "counter",
        "Requests refused for their client key (--api-keys): none sent, an unknown one, one past its expires (401), one sent from outside its bound_cidrs (403).",
    );
    for why in KeyRefusal::ALL {
        out.sample(
            "trusted_pool_requests_refused_for_key_total",
            &[("reason", why.label())],
            metrics.key_refusals(why),
        );
    }
}

/// The access log's lines (`--access-log`), by what became of them.
fn write_access_log(out: &mut Text, figures: &LineFigures) {
    out.family(
        "trusted_pool_access_log_lines_total",
        "counter",
        "Access log lines: written, dropped (they came faster than the file took them) or failed (a write error).",
    );
    for (outcome, count) in [
        ("written", &figures.written),
        ("dropped", &figures.dropped),
        ("failed", &figures.failed),
    ] {
        out.sample(
            "trusted_pool_access_log_lines_total",
            &[("outcome", outcome)],
            count.load(Ordering::Relaxed),
        );
    }
}

/// When the certificates presented and the client keys expire (a family without samples when
/// none is in use or none expires, so alert rules can name it all the same).
fn write_expiries(out: &mut Text, ctx: &Context) {
    out.family(
        "trusted_pool_certificate_expiry_timestamp_seconds",
        "gauge",
        "When a certificate the coordinator presents expires (the earliest notAfter of its chain), in unix seconds: the listener's (--tls-cert) and the one shown to https:// workers (--worker-tls-cert).",
    );
    for what in Presented::ALL {
        if let Some(expiry) = ctx.certificates.get(what) {
            out.sample(
                "trusted_pool_certificate_expiry_timestamp_seconds",
                &[("certificate", what.as_str())],
                expiry.not_after,
            );
        }
    }
    out.family(
        "trusted_pool_client_key_expiry_timestamp_seconds",
        "gauge",
        "When a client key with an expires field stops being accepted, in unix seconds.",
    );
    if let Some(keys) = ctx.keys.get() {
        for key in keys.keys() {
            if let Some(at) = key.expires {
                out.sample(
                    "trusted_pool_client_key_expiry_timestamp_seconds",
                    &[("key", &key.name)],
                    at,
                );
            }
        }
    }
}

/// The state directory's filesystem: its room, the reserve and the submits refused for it.
fn write_disk(out: &mut Text, reserve: &DiskReserve) {
    if let Ok(room) = reserve.room() {
        out.family(
            "trusted_pool_state_disk_available_bytes",
            "gauge",
            "Bytes the coordinator may still write on the state directory's filesystem.",
        );
        out.sample(
            "trusted_pool_state_disk_available_bytes",
            &[],
            room.available,
        );
        out.family(
            "trusted_pool_state_disk_reserve_bytes",
            "gauge",
            "Room that submits must leave on the state directory's filesystem (--disk-reserve).",
        );
        out.sample("trusted_pool_state_disk_reserve_bytes", &[], room.reserve);
    }
    out.family(
        "trusted_pool_submits_refused_for_disk_total",
        "counter",
        "Submits refused with 507 because their upload would cut into the disk reserve.",
    );
    out.sample(
        "trusted_pool_submits_refused_for_disk_total",
        &[],
        reserve.refused(),
    );
}

/// The job store's health: failing or stalled commits, the WAL's size, its free pages and its last full
/// checkpoint; the jobs retention forgot and clients deleted, and the wipes in segment files
/// not made yet (`wipes_waiting`).
fn write_store(out: &mut Text, store: &StoreFigures, wipes_waiting: usize) {
    out.family(
        "trusted_pool_jobs_forgotten_total",
        "counter",
        "Finished jobs retention forgot (--retain-jobs, --retain-for, --retain-bytes) since the start.",
    );
    out.sample("trusted_pool_jobs_forgotten_total", &[], store.forgotten);
    out.family(
        "trusted_pool_jobs_deleted_total",
        "counter",
        "Jobs clients deleted (DELETE /jobs/{id}) since the start.",
    );
    out.sample("trusted_pool_jobs_deleted_total", &[], store.deleted);
    out.family(
        "trusted_pool_store_wipes_waiting",
        "gauge",
        "Wipes in segment files not made yet: a deleted or forgotten job's bytes, or bytes no job refers to (waiting for downloads that read the segment, or under way).",
    );
    out.sample(
        "trusted_pool_store_wipes_waiting",
        &[],
        wipes_waiting as u64,
    );
    out.family(
        "trusted_pool_store_failing",
        "gauge",
        "1 while the job store's commits fail (a full disk, another program holding its lock), or while its file is no longer the one opened (the state directory was deleted or replaced).",
    );
    out.sample(
        "trusted_pool_store_failing",
        &[],
        u64::from(store.failing.is_some() || store.file_lost.is_some()),
    );
    out.family(
        "trusted_pool_store_stalled_seconds",
        "gauge",
        "Seconds the job store has written nothing while it had work, once that is 10 s or more (the disk under the state directory does not answer); 0 otherwise.",
    );
    out.sample(
        "trusted_pool_store_stalled_seconds",
        &[],
        store.stalled_for.unwrap_or(0.0) as u64,
    );
    out.family(
        "trusted_pool_store_wal_bytes",
        "gauge",
        "Bytes of the job store's WAL file (it grows while another connection keeps an old snapshot open).",
    );
    out.sample("trusted_pool_store_wal_bytes", &[], store.wal_bytes);
    out.family(
        "trusted_pool_store_free_bytes",
        "gauge",
        "Bytes of free pages in the job store's file, given back to the filesystem while it is idle.",
    );
    out.sample("trusted_pool_store_free_bytes", &[], store.free_bytes);
    out.family(
        "trusted_pool_store_seconds_since_checkpoint",
        "gauge",
        "Seconds since the job store's WAL was last checkpointed in full.",
    );
    out.sample_f64(
        "trusted_pool_store_seconds_since_checkpoint",
        &[],
        store.since_checkpoint.unwrap_or(0.0),
    );
}

/// Writes the metrics text; the table is locked only while its figures are copied.
pub fn render(ctx: &Context) -> String {
    let mut cache = lock(&CACHE);
    let table = sample_table(&ctx.lock(), Instant::now(), &mut cache);
    let size = match cache.last_len {
        0 => 8192 + cache.samples.len() * 2048,
        last => last + last / 16,
    };
    let mut out = Text(String::with_capacity(size));
    write_jobs(&mut out, &ctx.metrics, &table);
    write_workers(&mut out, &cache.labels, &cache.samples);
    write_histograms(&mut out, &ctx.metrics);
    write_store(
        &mut out,
        &ctx.store.figures(),
        ctx.spool.removals().pending_wipes(),
    );
    write_disk(&mut out, &ctx.disk_reserve);
    write_connections(&mut out, &ctx.connections);
    write_request_rate(&mut out, &ctx.request_rate);
    write_answers(&mut out, &ctx.metrics);
    if let Some(log) = &ctx.access_log {
        write_access_log(&mut out, log.figures());
    }
    write_expiries(&mut out, ctx);
    out.family(
        "trusted_pool_uploads_receiving",
        "gauge",
        "Request bodies being read from their clients now (at most --max-uploads).",
    );
    out.sample(
        "trusted_pool_uploads_receiving",
        &[],
        ctx.uploads_receiving.load(Ordering::SeqCst) as u64,
    );
    let spool = ctx.spool.upload_counts();
    out.family(
        "trusted_pool_uploads_waiting",
        "gauge",
        "Uploads waiting for dispatch, by where they are held.",
    );
    out.samples_by(
        "trusted_pool_uploads_waiting",
        "place",
        &[
            ("memory", spool.in_memory as u64),
            ("disk", spool.on_disk as u64),
        ],
    );
    out.family(
        "trusted_pool_upload_bytes_waiting",
        "gauge",
        "Bytes of uploads waiting for dispatch, by where they are held.",
    );
    out.sample(
        "trusted_pool_upload_bytes_waiting",
        &[("place", "memory")],
        spool.memory_bytes,
    );
    out.sample(
        "trusted_pool_upload_bytes_waiting",
        &[("place", "disk")],
        spool.disk_bytes,
    );
    write_process(&mut out, ctx.metrics.started_at);
    cache.last_len = out.0.len();
    out.0
}

fn write_jobs(out: &mut Text, metrics: &Metrics, table: &TableSample) {
    out.family(
        "trusted_pool_build_info",
        "gauge",
        "The running coordinator's version (always 1).",
    );
    out.sample(
        "trusted_pool_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    out.family(
        "trusted_pool_jobs_submitted_total",
        "counter",
        "Jobs accepted by POST /submit.",
    );
    out.sample(
        "trusted_pool_jobs_submitted_total",
        &[],
        metrics.submitted(),
    );
    out.family(
        "trusted_pool_submits_repeated_total",
        "counter",
        "Submits that repeated the Idempotency-Key of a job, answered that job (no new job).",
    );
    out.sample(
        "trusted_pool_submits_repeated_total",
        &[],
        metrics.submits_repeated(),
    );
    out.family(
        "trusted_pool_jobs_finished_total",
        "counter",
        "Jobs that ended, by their first final status.",
    );
    for status in PoolStatus::ALL.into_iter().filter(|s| s.is_final()) {
        out.sample(
            "trusted_pool_jobs_finished_total",
            &[("status", status.as_str())],
            metrics.finished(status),
        );
    }
    out.family(
        "trusted_pool_queue_timeouts_total",
        "counter",
        "Jobs that failed unstarted: their queue timeout passed before a worker took them (counted in jobs_finished_total{status=\"failed\"} too).",
    );
    out.sample(
        "trusted_pool_queue_timeouts_total",
        &[],
        metrics.queue_timeouts(),
    );
    out.family(
        "trusted_pool_job_reruns_total",
        "counter",
        "Lost runs after which the job, submitted with reruns, was queued again to run once more.",
    );
    out.sample("trusted_pool_job_reruns_total", &[], metrics.reruns());
    out.family(
        "trusted_pool_outputs_left_on_worker_total",
        "counter",
        "Output files of collected jobs left on their workers, past --max-results-bytes.",
    );
    out.sample(
        "trusted_pool_outputs_left_on_worker_total",
        &[],
        metrics.outputs_left(),
    );
    out.family(
        "trusted_pool_key_reloads_failed_total",
        "counter",
        "Reloads of the --api-keys file (SIGHUP, POST /reload) that refused it: the keys in force stayed.",
    );
    out.sample(
        "trusted_pool_key_reloads_failed_total",
        &[],
        metrics.key_reloads_failed(),
    );
    out.family(
        "trusted_pool_worker_outputs_refused_total",
        "counter",
        "Output files streamed from their workers (left there by --max-results-bytes, or still being collected) whose size or SHA-256 differed from what the worker reported when the job ended: refused with 502, or cut before their last byte.",
    );
    out.sample(
        "trusted_pool_worker_outputs_refused_total",
        &[],
        metrics.worker_outputs_refused(),
    );
    out.family(
        "trusted_pool_jobs",
        "gauge",
        "Jobs in the coordinator's table (queued, in flight, or finished and not yet settled in the job store), by status.",
    );
    for (status, count) in PoolStatus::ALL.into_iter().zip(table.jobs) {
        out.sample(
            "trusted_pool_jobs",
            &[("status", status.as_str())],
            count as u64,
        );
    }
    out.family(
        "trusted_pool_queue_depth",
        "gauge",
        "Jobs waiting in the coordinator's queue, by priority (requeued: put back at the head).",
    );
    for (priority, depth) in Priority::ALL.iter().zip(table.levels) {
        out.sample(
            "trusted_pool_queue_depth",
            &[("priority", priority.as_str())],
            depth as u64,
        );
    }
    out.sample(
        "trusted_pool_queue_depth",
        &[("priority", "requeued")],
        table.requeued as u64,
    );
    out.family(
        "trusted_pool_queued_jobs_waiting_for_labels",
        "gauge",
        "Queued jobs that cannot leave the queue for their labels: no worker carries them (stranded), or every worker that does is draining, unhealthy, paused after a 429, or at its hourly job limit on every source address (blocked).",
    );
    out.samples_by(
        "trusted_pool_queued_jobs_waiting_for_labels",
        "reason",
        &[
            ("stranded", table.stranded as u64),
            ("blocked", table.blocked as u64),
        ],
    );
    out.family(
        "trusted_pool_dispatch_held",
        "gauge",
        "1 while dispatching is held because the job store cannot record dispatches (a full disk).",
    );
    out.sample(
        "trusted_pool_dispatch_held",
        &[],
        u64::from(table.dispatch_held),
    );
    out.family(
        "trusted_pool_submits_paused",
        "gauge",
        "1 while an operator pauses submits (POST /submits/pause).",
    );
    out.sample(
        "trusted_pool_submits_paused",
        &[],
        u64::from(table.submits_paused),
    );
    out.family(
        "trusted_pool_health_probes_total",
        "counter",
        "Health probes of workers, by result.",
    );
    for result in ProbeResult::ALL {
        out.sample(
            "trusted_pool_health_probes_total",
            &[("result", result.label())],
            metrics.probes(result),
        );
    }
}

fn write_workers(out: &mut Text, labels: &[WorkerLabels], samples: &[WorkerSample]) {
    let count = |f: fn(&WorkerSample) -> bool| samples.iter().filter(|w| f(w)).count() as u64;
    let healthy = count(|w| w.healthy);
    out.family(
        "trusted_pool_workers",
        "gauge",
        "Allowlisted workers, by state (throttled and draining workers are also healthy or unhealthy).",
    );
    out.sample("trusted_pool_workers", &[("state", "healthy")], healthy);
    out.sample(
        "trusted_pool_workers",
        &[("state", "unhealthy")],
        samples.len() as u64 - healthy,
    );
    out.sample(
        "trusted_pool_workers",
        &[("state", "throttled")],
        count(|w| w.throttled),
    );
    out.sample(
        "trusted_pool_workers",
        &[("state", "draining")],
        count(|w| w.draining),
    );
    type Field = fn(&WorkerSample) -> u64;
    let gauges: [(&str, &str, Field); 7] = [
        (
            "trusted_pool_worker_healthy",
            "1 when the worker's last health probe succeeded.",
            |w| w.healthy as u64,
        ),
        (
            "trusted_pool_worker_throttled",
            "1 while the worker is paused after a 429.",
            |w| w.throttled as u64,
        ),
        (
            "trusted_pool_worker_draining",
            "1 while the worker is drained (no new job).",
            |w| w.draining as u64,
        ),
        (
            "trusted_pool_worker_at_hourly_limit",
            "1 while every source address of the worker has used sandrun's jobs per hour.",
            |w| w.hourly_limited as u64,
        ),
        (
            "trusted_pool_worker_active_jobs",
            "Jobs holding a slot on the worker.",
            |w| w.active_jobs as u64,
        ),
        (
            "trusted_pool_worker_max_concurrent_jobs",
            "The worker's cap on active jobs.",
            |w| w.max_concurrent_jobs as u64,
        ),
        (
            "trusted_pool_worker_tracked_jobs",
            "Jobs the worker's tracker follows (running, or results not yet collected).",
            |w| w.tracked_jobs as u64,
        ),
    ];
    out.family(
        "trusted_pool_worker_info",
        "gauge",
        "Each allowlisted worker's endpoint and its labels, comma-separated, when it carries any (always 1).",
    );
    for label in labels {
        out.0.push_str("trusted_pool_worker_info");
        out.0.push_str(&label.open);
        out.0.push_str(&label.info);
        out.0.push('\n');
    }
    let workers = || labels.iter().zip(samples);
    for (name, help, field) in gauges {
        out.family(name, "gauge", help);
        for (label, w) in workers() {
            out.worker_sample(name, label, "} ", field(w));
        }
    }
    out.family(
        "trusted_pool_worker_certificate_expiry_timestamp_seconds",
        "gauge",
        "When the certificate an https:// worker endpoint presents expires (the earliest notAfter of its chain, read hourly), in unix seconds.",
    );
    for (label, w) in workers() {
        if let Some(at) = w.certificate_expiry {
            out.worker_sample(
                "trusted_pool_worker_certificate_expiry_timestamp_seconds",
                label,
                "} ",
                at,
            );
        }
    }
    out.family(
        "trusted_pool_dispatches_total",
        "counter",
        "Submits sent to workers, by worker and outcome.",
    );
    for (label, w) in workers() {
        for (outcome, count) in DispatchOutcome::ALL.iter().zip(w.counters.dispatches) {
            out.worker_sample(
                "trusted_pool_dispatches_total",
                label,
                outcome_labels(*outcome),
                count,
            );
        }
    }
    out.family(
        "trusted_pool_worker_jobs_finished_total",
        "counter",
        "Jobs that ended on a worker, by worker and status.",
    );
    for (label, w) in workers() {
        let ends = [
            (",status=\"completed\"} ", w.counters.completed),
            (",status=\"failed\"} ", w.counters.failed),
            (",status=\"lost\"} ", w.counters.lost),
        ];
        for (rest, count) in ends {
            out.worker_sample(
                "trusted_pool_worker_jobs_finished_total",
                label,
                rest,
                count,
            );
        }
    }
}

/// The end of a dispatch series' labels: `,outcome="..."} `.
fn outcome_labels(outcome: DispatchOutcome) -> &'static str {
    match outcome {
        DispatchOutcome::Accepted => ",outcome=\"accepted\"} ",
        DispatchOutcome::Throttled => ",outcome=\"429\"} ",
        DispatchOutcome::Rejected => ",outcome=\"4xx\"} ",
        DispatchOutcome::ServerError => ",outcome=\"5xx\"} ",
        DispatchOutcome::Unreachable => ",outcome=\"unreachable\"} ",
        DispatchOutcome::Lost => ",outcome=\"lost\"} ",
    }
}

fn write_histograms(out: &mut Text, metrics: &Metrics) {
    let histograms = [
        (
            "trusted_pool_queue_wait_seconds",
            "Time from submit until a worker accepted the job.",
            &metrics.queue_wait,
        ),
        (
            "trusted_pool_job_run_seconds",
            "Time from a worker's acceptance until the job ended on it.",
            &metrics.run_time,
        ),
        (
            "trusted_pool_job_duration_seconds",
            "Time from submit until the job ended, whatever the end.",
            &metrics.end_to_end,
        ),
        (
            "trusted_pool_submit_request_duration_seconds",
            "Time to answer a POST /submit, upload included.",
            &metrics.submit_request,
        ),
        (
            "trusted_pool_dispatch_duration_seconds",
            "Time a worker took to answer a dispatch.",
            &metrics.dispatch,
        ),
    ];
    for (name, help, histogram) in histograms {
        out.family(name, "histogram", help);
        out.histogram(name, &histogram.snapshot());
    }
}

fn write_process(out: &mut Text, started_at: f64) {
    let stats = process::stats();
    let figures: [(&str, &str, &str, Option<f64>); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            stats.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            stats.resident_bytes.map(|b| b as f64),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            stats.virtual_bytes.map(|b| b as f64),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            stats.open_fds.map(|n| n as f64),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            stats.max_fds.map(|n| n as f64),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            Some(started_at),
        ),
    ];
    for (name, kind, help, value) in figures {
        if let Some(value) = value {
            out.family(name, kind, help);
            out.sample_f64(name, &[], value);
        }
    }
}

/// The text being written. Writing to a `String` cannot fail, so the `fmt::Result`s are dropped.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.0.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            self.0.push_str(key);
            self.0.push_str("=\"");
            escape_into(&mut self.0, value);
            self.0.push('"');
        }
        self.0.push('}');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        self.labels(labels);
        self.0.push(' ');
        push_u64(&mut self.0, value);
        self.0.push('\n');
    }

    /// One sample of `name` per `(label value, figure)`, each under the label `label`.
    fn samples_by(&mut self, name: &str, label: &str, figures: &[(&str, u64)]) {
        for &(value, figure) in figures {
            self.sample(name, &[(label, value)], figure);
        }
    }

    /// One per-worker series: its name, the worker's cached labels, the rest of the labels
    /// up to the value (`} ` or `,key="value"} `).
    fn worker_sample(&mut self, name: &str, labels: &WorkerLabels, rest: &str, value: u64) {
        self.0.push_str(name);
        self.0.push_str(&labels.open);
        self.0.push_str(rest);
        push_u64(&mut self.0, value);
        self.0.push('\n');
    }

    fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.0, " {value}");
    }

    fn histogram(&mut self, name: &str, h: &HistogramSnapshot) {
        for (bound, count) in &h.buckets {
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(self.0, "{name}_sum {}", h.sum);
        let _ = writeln!(self.0, "{name}_count {}", h.count);
    }
}

/// Appends a number in decimal without going through `fmt` (most of a scrape is numbers).
fn push_u64(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[start..]).unwrap_or("0"));
}

/// Appends a label value with `\`, `"` and newlines escaped as the text format wants.
fn escape_into(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn outcome_label_texts_match_the_outcome_labels() {
        for outcome in DispatchOutcome::ALL {
            let expected = format!(",outcome=\"{}\"}} ", outcome.label());
            assert_eq!(outcome_labels(outcome), expected);
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_histogram_ends_with_inf_sum_and_count() {
        let h = crate::state::metrics::Histogram::new(&[0.5, 1.0]);
        h.observe(0.25);
        h.observe(2.0);
        let mut text = Text(String::new());
        text.histogram("x_seconds", &h.snapshot());
        assert_eq!(
            text.0,
            "x_seconds_bucket{le=\"0.5\"} 1\nx_seconds_bucket{le=\"1\"} 1\n\
             x_seconds_bucket{le=\"+Inf\"} 2\nx_seconds_sum 2.25\nx_seconds_count 2\n"
        );
    }
}
