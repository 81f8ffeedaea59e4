//! The JSON views of the pool (`/pool`) and of one job (`/status`).

use crate::base::api_keys::KeySet;
use crate::base::cert_expiry::ChainExpiry;
use crate::base::clock::{unix_now, utc_text};
use crate::base::config::ServeConfig;
use crate::base::job::{Attempt, Collection, InputFile, Job, PoolStatus, Priority, Verification};
use crate::base::line_file::LineFile;
use crate::http::auth::Caller;
use crate::http::sandrun::sandrun_status;
use crate::state::certificates::{Certificates, Presented};
use crate::state::pool_state::{DispatchHold, LabelsHold, PoolState};
use crate::state::request_rate::RequestRate;
use crate::state::sources::Source;
use crate::state::submits_pause::SubmitsPause;
use crate::store::disk_reserve::DiskReserve;
use crate::store::jobs_db::JobStore;
use crate::store::spool::Spool;
use serde::{Serialize, Serializer};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tiny_http::ConnectionCounts;

/// One worker as `/pool` shows it.
pub fn worker_view(st: &PoolState, index: usize, now: Instant) -> Value {
    let Some(w) = st.workers.get(index) else {
        return Value::Null;
    };
    let every_source = (!w.sources.is_empty() && w.sources.iter().all(|s| s.is_throttled(now)))
        .then(|| {
            w.sources
                .iter()
                .filter_map(|s| s.throttle.as_ref())
                .min_by_key(|t| t.until)
        })
        .flatten();
    let throttle = w
        .throttle
        .as_ref()
        .filter(|t| t.until > now)
        .or(every_source);
    let mut view = json!({
        "worker_id": w.spec.worker_id,
        "endpoint": w.spec.endpoint,
        "is_healthy": w.health.is_healthy,
        "active_jobs": w.active_jobs,
        "max_concurrent_jobs": w.cap(),
        "configured_max_concurrent_jobs": if w.spec.auto_cap { json!("auto") } else { json!(w.spec.max_concurrent_jobs) },
        "learned_max_concurrent_jobs": w.learned_cap,
        "cap_source": w.cap_source(),
        "last_health_check": w.health.last_health_check,
        "last_error": w.health.last_error,
        "consecutive_failures": w.health.consecutive_failures,
        "state_since": w.health.since,
        "throttled": throttle.is_some(),
        "throttled_until": throttle.map(|t| t.until_unix),
        "throttle_reason": throttle.map(|t| t.reason.as_str()),
        "tracked_jobs": w.tracked.len(),
        "jobs_streamed": w.streaming.len(),
        "jobs_polled": w.tracked.len().saturating_sub(w.streaming.len()),
        "jobs_accepted": w.counters.accepted,
        "jobs_completed": w.counters.completed,
        "jobs_failed": w.counters.failed,
        "jobs_lost": w.counters.lost,
        "submits_throttled": w.counters.throttled,
        "draining": w.draining,
        "drained": w.draining && w.active_jobs == 0 && w.tracked.is_empty(),
        "removed": w.removed,
        "labels": w.spec.labels,
        "kept_from_jobs": w.kept_from_jobs(now),
    });
    if w.spec.over_tls() {
        view["certificate"] = w.health.certificate.as_ref().map(expiry_view).into();
    }
    if !w.sources.is_empty() {
        view["capacity"] = json!(w.capacity());
        view["max_concurrent_jobs"] = json!(w.capacity());
        view["cap_source"] = json!(format!(
            "{} per source address times {} addresses, at most {}",
            w.client_limits.max_active,
            w.sources.len(),
            w.spec.max_concurrent_jobs
        ));
        view["client_limits"] = json!({
            "max_active": w.client_limits.max_active,
            "jobs_per_hour": w.client_limits.per_hour,
            "cpu_seconds_per_minute": w.client_limits.cpu_per_minute,
        });
        view["source_addresses"] = w.sources.iter().map(|s| source_view(s, now)).collect();
        view["hourly_limit_until"] = w
            .hourly_limit_ends(now)
            .map(|at| unix_now() + at.saturating_duration_since(now).as_secs_f64())
            .into();
    }
    view
}

/// The queue's depth per level and per owner, as `/pool` shows it.
fn queue_view(st: &PoolState) -> Value {
    let depths = st.queue.depths();
    let mut by_priority: serde_json::Map<String, Value> = Priority::ALL
        .iter()
        .map(|p| (p.as_str().to_string(), json!(depths.levels[p.index()])))
        .collect();
    by_priority.insert("requeued".to_string(), json!(depths.requeued));
    let mut owners: Vec<(Option<&str>, usize)> = st
        .queue
        .by_owner()
        .map(|(o, n)| (o.as_deref(), n))
        .collect();
    owners.sort_unstable();
    let by_owner: Vec<Value> = owners
        .into_iter()
        .map(|(owner, queued)| json!({"owner": owner, "queued": queued}))
        .collect();
    json!({
        "by_priority": by_priority,
        "by_owner": by_owner,
        "timed_out": st.metrics.queue_timeouts(),
        "reruns": st.metrics.reruns(),
        "names_bytes": st.names_bytes(),
    })
}

/// `GET /pool`: the worker table and job counts, all from one consistent snapshot; `settled`
/// are the finished jobs that live in the job store only (per status, in [`PoolStatus::ALL`]
/// order).
pub fn pool_view(st: &PoolState, settled: [u64; PoolStatus::ALL.len()], now: Instant) -> Value {
    let workers: Vec<Value> = (0..st.workers.len())
        .filter(|&i| !st.workers[i].is_forgotten())
        .map(|i| worker_view(st, i, now))
        .collect();
    let listed = || st.listed_workers();
    let by_status: serde_json::Map<String, Value> = PoolStatus::ALL
        .iter()
        .zip(settled)
        .map(|(s, stored)| (s.as_str().to_string(), json!(st.count(*s) as u64 + stored)))
        .collect();
    json!({
        "total_workers": listed().count(),
        "healthy_workers": listed().filter(|w| w.health.is_healthy).count(),
        "last_reload": st.last_reload,
        "total_jobs": st.jobs.len() as u64 + settled.iter().sum::<u64>(),
        "queued_jobs": st.queue.len(),
        "queue": queue_view(st),
        "dispatch_held": DispatchHold::active(&st.dispatch_hold, now).map(|h| json!({
            "why": h.why,
            "retry_in_seconds": h.until.saturating_duration_since(now).as_secs_f64(),
            "pauses_in_a_row": h.strikes,
        })),
        "submits_paused": st.submits_paused.as_ref().map(SubmitsPause::view),
        "jobs_by_status": by_status,
        "jobs_streamed": st.workers.iter().map(|w| w.streaming.len()).sum::<usize>(),
        "jobs_polled": st.workers.iter().map(|w| w.tracked.len().saturating_sub(w.streaming.len())).sum::<usize>(),
        "workers": workers,
        "worker_table_slots": st.workers.len(),
        // The snapshot's instant (what `throttled` was judged at), in wall-clock seconds.
        "time": unix_now() - now.elapsed().as_secs_f64(),
    })
}

/// The `/pool` figures per client key: its role, limit and jobs per status. An admin or read
/// key sees every key (and names no longer in the keys file that still have jobs queued,
/// dispatched or running); a submit key sees only its own.
pub fn keys_view(st: &PoolState, keys: Option<&KeySet>, caller: &Caller) -> Value {
    let figures = |name: &str| -> serde_json::Map<String, Value> {
        PoolStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), json!(st.owner_count(name, *s))))
            .collect()
    };
    let mut view = serde_json::Map::new();
    for key in keys.map(KeySet::keys).unwrap_or_default() {
        if caller.sees_all() || caller.name() == Some(key.name.as_str()) {
            let mut entry = figures(&key.name);
            entry.insert("role".to_string(), json!(key.role.as_str()));
            entry.insert("max_queued_jobs".to_string(), json!(key.max_queued_jobs));
            entry.insert("expires".to_string(), json!(key.expires.map(utc_text)));
            let bound: Vec<String> = key.bound_cidrs.iter().map(ToString::to_string).collect();
            entry.insert("bound_cidrs".to_string(), json!(bound));
            entry.insert("archives".to_string(), json!(key.archives));
            view.insert(key.name.clone(), Value::Object(entry));
        }
    }
    if caller.sees_all() {
        for (owner, _) in st.owners() {
            if !view.contains_key(owner) {
                let mut entry = figures(owner);
                entry.insert("role".to_string(), Value::Null);
                view.insert(owner.to_string(), Value::Object(entry));
            }
        }
    }
    Value::Object(view)
}

/// One source address of a worker, as `/pool` shows it.
fn source_view(s: &Source, now: Instant) -> Value {
    let throttle = s.throttle.as_ref().filter(|t| t.until > now);
    json!({
        "address": s.address.to_string(),
        "jobs_in_flight": s.in_flight,
        "accepted_last_hour": s.accepted_last_hour(now),
        "cpu_seconds_last_minute": s.cpu_last_minute(now),
        "throttled": throttle.is_some(),
        "throttled_until": throttle.map(|t| t.until_unix),
        "throttle_reason": throttle.map(|t| t.reason.as_str()),
        "jobs_accepted": s.accepted_total,
        "submits_throttled": s.throttled_total,
        "worker_stats": s.stats.report,
        "worker_stats_error": s.stats.error,
        "worker_stats_asked": s.stats.asked_total,
        "other_clients_jobs": s.stats.others_active,
        "other_clients_cpu_seconds": s.others_cpu(now),
    })
}

/// The `/pool` figures of the spool: uploads waiting in memory (and the limit) and on disk.
pub fn spool_view(spool: &Spool) -> Value {
    let counts = spool.upload_counts();
    json!({
        "uploads_in_memory": counts.in_memory,
        "upload_memory_bytes": counts.memory_bytes,
        "upload_memory_limit": spool.memory_limit(),
        "uploads_on_disk": counts.on_disk,
        "upload_disk_bytes": counts.disk_bytes,
    })
}

/// How many client addresses `/pool` names among those holding the most connections.
const BUSIEST_ADDRESSES: usize = 5;

/// The `/pool` figures of the client connections: open now, the limits, the client addresses
/// holding the most of them, and those refused since the start (beyond `--max-connections`,
/// beyond `--max-connections-per-ip`, or for want of a descriptor or a thread), with the
/// requests the HTTP server refused before any handler saw them.
pub fn connections_view(counts: &ConnectionCounts, config: &ServeConfig) -> Value {
    let busiest: Vec<Value> = counts
        .busiest_addresses(BUSIEST_ADDRESSES)
        .into_iter()
        .map(|(address, open)| json!({"address": share_text(address), "open": open}))
        .collect();
    json!({
        "open": counts.open.load(Ordering::Relaxed),
        "busiest_addresses": busiest,
        "max": config.max_connections,
        "max_per_ip": config.max_connections_per_ip,
        "refused_over_limit": counts.refused_over_limit.load(Ordering::Relaxed),
        "refused_for_address": counts.refused_for_address.load(Ordering::Relaxed),
        "refused_for_shortage": counts.refused_for_shortage.load(Ordering::Relaxed),
        "refused_without_proxy_header": counts.refused_without_proxy_header.load(Ordering::Relaxed),
        "refused_unread_requests": counts.refused_unread.load(Ordering::Relaxed),
    })
}

/// A client address's share as text: an IPv4 address, or an IPv6 /64 (`2001:db8:1:2::/64`).
fn share_text(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

/// The `/pool` figures of the access log (`--access-log`), or null without one.
pub fn access_log_view(log: Option<&LineFile>) -> Value {
    let Some(log) = log else {
        return Value::Null;
    };
    let figures = log.figures();
    json!({
        "to": log.target().to_string(),
        "lines_written": figures.written.load(Ordering::Relaxed),
        "lines_dropped": figures.dropped.load(Ordering::Relaxed),
        "lines_failed": figures.failed.load(Ordering::Relaxed),
    })
}

/// When a certificate chain expires, as `/pool` shows it: the date, how many days are left
/// (negative once past) and which certificate of the chain ends first.
fn expiry_view(e: &ChainExpiry) -> Value {
    json!({
        "expires": utc_text(e.not_after),
        "days_left": ((e.not_after as f64 - unix_now()) / 864.0).round() / 100.0,
        "earliest_in_chain": format!("{} of {}", e.position, e.chain),
    })
}

/// The `/pool` view of the certificates the coordinator presents: for each in use, its file
/// and when it expires; null for one not in use.
pub fn certificates_view(certificates: &Certificates) -> Value {
    let mut view = serde_json::Map::new();
    for what in Presented::ALL {
        let entry = certificates.get(what).map(|e| {
            let mut entry = expiry_view(&e);
            entry["file"] = e.source.to_string().into();
            entry
        });
        view.insert(what.as_str().to_string(), entry.into());
    }
    Value::Object(view)
}

/// The `/pool` figures of the request rate per client address (`--max-requests-per-ip`).
pub fn request_rate_view(rate: &RequestRate) -> Value {
    json!({
        "max_per_ip_per_second": rate.per_second(),
        "addresses_followed": rate.followed(),
        "refused_for_rate": rate.refused(),
    })
}

/// The `/pool` figures of the state directory's filesystem and its reserve (`--disk-reserve`).
pub fn disk_view(reserve: &DiskReserve) -> Value {
    let room = reserve.room().ok();
    json!({
        "available_bytes": room.map(|r| r.available),
        "total_bytes": room.map(|r| r.total),
        "reserve": reserve.setting().describe(),
        "reserve_bytes": room.map(|r| r.reserve),
        "available_inodes": room.map(|r| r.inodes_available),
        "total_inodes": room.map(|r| r.inodes_total),
        "refusing_submits": room.is_some_and(|r| r.is_short_for(0)),
        "refused_submits": reserve.refused(),
    })
}

/// The `/pool` figures of the job store and of retention.
pub fn store_view(store: &JobStore, retain_jobs: u64, retain_for: f64) -> Value {
    let f = store.figures();
    json!({
        "path": f.path,
        "size_bytes": f.size_bytes,
        "wal_bytes": f.wal_bytes,
        "free_bytes": f.free_bytes,
        "rows": f.rows,
        "finished_jobs": f.settled.iter().sum::<u64>(),
        "commits": f.commits,
        "last_commit_batch": f.last_batch,
        "records_coalesced": f.coalesced,
        "seconds_since_checkpoint": f.since_checkpoint,
        "failing": f.failing,
        "stalled_for_seconds": f.stalled_for,
        "file_lost": f.file_lost,
        "retention": {
            "retain_jobs": retain_jobs,
            "retain_for": retain_for,
            "retain_bytes": f.retain_bytes,
            "results_bytes": f.results_bytes,
            "forgotten_jobs": f.forgotten,
            "results_segments_deleted": f.segments_deleted,
        },
        "deleted_jobs": f.deleted,
    })
}

/// Whether a job's results are in the spool, as `/status` shows it.
#[derive(Serialize)]
struct CollectionView<'a> {
    collected: bool,
    error: Option<&'a str>,
    /// Outputs `--max-results-bytes` left on the worker.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    left_on_worker: &'a [String],
}

impl<'a> From<&'a Collection> for CollectionView<'a> {
    fn from(collection: &'a Collection) -> Self {
        match collection {
            Collection::NotStarted => CollectionView {
                collected: false,
                error: None,
                left_on_worker: &[],
            },
            Collection::Pending(error) => CollectionView {
                collected: false,
                error: error.as_deref(),
                left_on_worker: &[],
            },
            Collection::Collected(stored) => CollectionView {
                collected: true,
                error: None,
                left_on_worker: &stored.left_on_worker,
            },
        }
    }
}

/// The uploaded files of a job, as `/status` lists them.
struct FilesView<'a>(&'a [InputFile]);

impl Serialize for FilesView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct File<'a> {
            filename: &'a str,
            size: u64,
        }
        serializer.collect_seq(self.0.iter().map(|i| File {
            filename: &i.filename,
            size: i.span.size,
        }))
    }
}

/// `GET /status/{id}`: a job as the coordinator knows it, borrowed from the table, with
/// sandrun's own fields at the top level (`status`, `queue_position`, `execution_metadata`,
/// `job_hash`, `output_files`, `worker_metadata`) as a sandrun client reads them.
#[derive(Serialize)]
struct StatusView<'a> {
    job_id: &'a str,
    status: &'static str,
    pool_status: &'static str,
    priority: &'static str,
    /// The client key that submitted it (none for a job submitted without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    queue_position: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_level: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_timeout: Option<f64>,
    /// The labels a worker must carry to run it.
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: &'a Option<Box<[String]>>,
    /// Why it cannot leave the queue (no worker carries its labels any more).
    #[serde(skip_serializing_if = "Option::is_none")]
    stranded: Option<String>,
    /// Why it cannot leave the queue now (every worker with its labels is kept from jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked: Option<String>,
    worker_id: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_status: Option<&'a Option<Value>>,
    submitted_at: f64,
    dispatched_at: Option<f64>,
    completed_at: Option<f64>,
    remote_job_id: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_address: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    attempts: &'a [Attempt],
    #[serde(skip_serializing_if = "Option::is_none")]
    reruns: Option<RerunsView<'a>>,
    /// The `Idempotency-Key` it was submitted with.
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    /// Deleted as soon as it settles (`DELETE /jobs/{id}` came before).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleting: bool,
    results: CollectionView<'a>,
    verification: &'a Option<Box<Verification>>,
    files: FilesView<'a>,
    execution_metadata: Cow<'a, Value>,
    job_hash: Cow<'a, Value>,
    output_files: Cow<'a, Value>,
    worker_metadata: Cow<'a, Value>,
}

/// A job's reruns as `/status` shows them: asked for, left, and the lost runs (without the
/// worker's job id of each, which the job store record keeps).
#[derive(Serialize)]
struct RerunsView<'a> {
    allowed: u32,
    left: u32,
    lost_runs: Vec<LostRunView<'a>>,
}

/// One lost run in [`RerunsView`].
#[derive(Serialize)]
struct LostRunView<'a> {
    worker_id: &'a Option<String>,
    error: &'a str,
    at: f64,
}

impl<'a> RerunsView<'a> {
    fn of(job: &'a Job) -> Option<Self> {
        let reruns = job.reruns.as_ref()?;
        Some(RerunsView {
            allowed: reruns.allowed,
            left: job.reruns_left(),
            lost_runs: reruns
                .lost
                .iter()
                .map(|run| LostRunView {
                    worker_id: &run.worker_id,
                    error: &run.error,
                    at: run.at,
                })
                .collect(),
        })
    }
}

/// A sandrun field of the worker's last `/status`, or what sandrun shows before it has one.
fn from_worker<'a>(worker_status: Option<&'a Value>, field: &str, before: Value) -> Cow<'a, Value> {
    match worker_status.and_then(|w| w.get(field)) {
        Some(value) => Cow::Borrowed(value),
        None => Cow::Owned(before),
    }
}

/// `GET /status/{id}` as JSON, written while the table is locked so nothing is copied; `None`
/// for an unknown job. It never asks a worker.
pub fn status_json(st: &PoolState, id: &str) -> Option<Vec<u8>> {
    let job = st.jobs.get(id)?;
    job_json(job, place(st, job), true)
}

/// Why a queued job cannot leave the queue, as `/status` says it: ever (`stranded`: no worker
/// of the pool carries its labels any more) or now (`blocked`: every worker that carries them,
/// or every worker of the pool for a job without labels, is kept from jobs, as
/// `WorkerEntry::kept_from_jobs` says). Neither for other jobs.
pub fn held_in_queue(st: &PoolState, job: &Job, now: Instant) -> (Option<String>, Option<String>) {
    let labels = job.labels();
    match st.labels_hold(labels, now) {
        Some(LabelsHold::Stranded) => (
            Some(format!(
                "no worker of the pool carries every label this job asks for ({}) any more; it \
                 waits until a reload gives one these labels, or until its queue timeout",
                labels.join(", ")
            )),
            None,
        ),
        Some(LabelsHold::Blocked) => {
            let workers = if labels.is_empty() {
                "every worker of the pool".to_string()
            } else {
                format!(
                    "every worker that carries the labels this job asks for ({})",
                    labels.join(", ")
                )
            };
            (
                None,
                Some(format!(
                    "{workers} is kept from taking jobs: {}; it waits until one takes jobs \
                     again, or until its queue timeout",
                    kept_workers(st, labels, now)
                )),
            )
        }
        None => (None, None),
    }
}

/// Workers named in a `blocked` reason, at most; the rest are counted. Every queued job's
/// `/status` and `/jobs` entry carries the reason, so a pool of hundreds of drained workers
/// must not make each of them kilobytes long.
const KEPT_NAMED: usize = 5;

/// The workers that carry `labels` (every worker for none) and why each is kept from jobs:
/// the first [`KEPT_NAMED`], then how many more.
fn kept_workers(st: &PoolState, labels: &[String], now: Instant) -> String {
    let (named, all) = st.kept_carriers(labels, now, KEPT_NAMED);
    let mut text = named.join(", ");
    if all > named.len() {
        text.push_str(&format!(" and {} more", all - named.len()));
    }
    text
}

/// A queued job's [`place`] as a followed stream's heartbeat says it after its status: its
/// position in the queue and, when it cannot leave, why (` (position 3 of 12 in the
/// queue; blocked: ...)`); empty for a job that is not queued.
pub fn queue_place_note(st: &PoolState, job: &Job) -> String {
    let Place {
        position: Some(position),
        stranded,
        blocked,
        ..
    } = place(st, job)
    else {
        return String::new();
    };
    let hold = match (stranded, blocked) {
        (Some(why), _) => format!("; stranded: {why}"),
        (None, Some(why)) => format!("; blocked: {why}"),
        (None, None) => String::new(),
    };
    format!(
        " (position {} of {} in the queue{hold})",
        position + 1,
        st.queue.len()
    )
}

/// A job as `GET /jobs` lists it: the fields of `/status` without the worker's raw answer
/// (its queue place from `st` when it is queued there).
pub fn listed_json(st: &PoolState, job: &Job) -> Option<Vec<u8>> {
    job_json(job, place(st, job), false)
}

/// A queued job's place: its position, its level, and why it cannot leave when it cannot
/// (ever, or now).
#[derive(Default)]
struct Place {
    position: Option<usize>,
    level: Option<&'static str>,
    stranded: Option<String>,
    blocked: Option<String>,
}

/// A queued job's place (nothing for a job that is not queued).
fn place(st: &PoolState, job: &Job) -> Place {
    let id = job.id.as_str();
    if job.status != PoolStatus::Queued {
        return Place::default();
    }
    let (stranded, blocked) = held_in_queue(st, job, Instant::now());
    Place {
        position: st.queue.position(id),
        level: st.queue.level_of(id).map(Priority::as_str),
        stranded,
        blocked,
    }
}

/// `GET /status/{id}` of a job read back from the job store (a finished one).
pub fn stored_status_json(job: &Job) -> Option<Vec<u8>> {
    job_json(job, Place::default(), true)
}

fn job_json(job: &Job, place: Place, with_worker_status: bool) -> Option<Vec<u8>> {
    let Place {
        position: queue_position,
        level: queue_level,
        stranded,
        blocked,
    } = place;
    let worker = job.worker_status.as_ref();
    // sandrun counts from 1; once the job left the queue, the worker's own figure.
    let queue_position = match queue_position {
        Some(p) => p as u64 + 1,
        None => worker
            .and_then(|w| w.get("queue_position"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    let view = StatusView {
        job_id: &job.id,
        status: sandrun_status(job.status, &job.collection),
        pool_status: job.status.as_str(),
        priority: job.priority.as_str(),
        owner: job.owner.as_deref(),
        queue_position,
        queue_level,
        queue_timeout: job.queue_timeout,
        labels: &job.labels,
        stranded,
        blocked,
        worker_id: &job.worker_id,
        worker_status: with_worker_status.then_some(&job.worker_status),
        submitted_at: job.submitted_at,
        dispatched_at: job.dispatched_at,
        completed_at: job.completed_at,
        remote_job_id: &job.remote_job_id,
        source_address: job.source_address,
        error: job.error.as_deref(),
        attempts: &job.attempts,
        reruns: RerunsView::of(job),
        idempotency_key: job.submit_key.as_ref().map(|k| k.key.as_str()),
        deleting: job.delete_when_settled,
        results: CollectionView::from(&job.collection),
        verification: &job.verification,
        files: FilesView(&job.inputs),
        execution_metadata: from_worker(
            worker,
            "execution_metadata",
            json!({"cpu_seconds": 0.0, "memory_peak_bytes": 0, "memory_peak_mb": 0,
                   "wall_time_ms": 0, "exit_code": 0, "environment": "", "interpreter": ""}),
        ),
        job_hash: from_worker(worker, "job_hash", json!("")),
        output_files: from_worker(worker, "output_files", json!({})),
        worker_metadata: from_worker(
            worker,
            "worker_metadata",
            json!({"worker_id": job.worker_id, "signature": null}),
        ),
    };
    serde_json::to_vec(&view).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::workers_file::WorkerSpec;

    #[test]
    fn a_blocked_reason_names_five_workers_and_counts_the_rest() {
        let now = Instant::now();
        let specs = (0..7).map(WorkerSpec::numbered).collect();
        let mut st = PoolState::new(specs, now);
        for w in &mut st.workers {
            w.draining = true;
        }
        assert_eq!(
            kept_workers(&st, &[], now),
            "w0... (draining), w1... (draining), w2... (draining), w3... (draining), \
             w4... (draining) and 2 more"
        );
        st.workers.truncate(KEPT_NAMED);
        assert!(kept_workers(&st, &[], now).ends_with("w4... (draining)"));
    }
}
