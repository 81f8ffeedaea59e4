//! sandrun's own client API on the coordinator, so a sandrun client pointed at the pool works
//! unchanged: the service description (`GET /`), sandrun's reading of a job's state, and the
//! caller's quota (`GET /stats`, per client key).

use crate::base::clock::unix_now;
use crate::base::job::{Collection, Job, PoolStatus};
use crate::http::auth::Caller;
use crate::state::cpu_window::{cpu_seconds, in_window};
use crate::state::pool_state::PoolState;
use serde_json::{json, Value};

/// CPU-seconds per minute each sandrun worker grants one client IP (the whole pool is one).
const WORKER_CPU_PER_MINUTE: f64 = 10.0;

/// `GET /`: sandrun's service description, saying it is a trusted-pool coordinator.
pub fn service_description(st: &PoolState) -> Value {
    json!({
        "service": "sandrun",
        "status": "running",
        "description": "Batch job execution with directory upload, on a pool of sandrun workers",
        "privacy": "Results are kept by the coordinator after download; sandrun workers delete theirs once collected or after about 5 minutes",
        "limits": "per job as on each sandrun worker: 512MB RAM, 5 min timeout, 100 MiB upload",
        "coordinator": "trusted-pool",
        "version": env!("CARGO_PKG_VERSION"),
        "workers": st.listed_workers().count(),
        "healthy_workers": st.listed_workers().filter(|w| w.health.is_healthy).count(),
    })
}

/// A job's `status` as sandrun reports it: `queued`, `running`, `completed` or `failed`.
///
/// A job dispatched but not yet started reads `queued`; a finished job whose results are still
/// being copied to the coordinator reads `running`, so a client that sees `completed` or
/// `failed` can fetch its logs and outputs at once; `lost` and `cancelled` read `failed`.
pub fn sandrun_status(status: PoolStatus, collection: &Collection) -> &'static str {
    match status {
        PoolStatus::Queued | PoolStatus::Dispatched => "queued",
        PoolStatus::Running => "running",
        PoolStatus::Completed | PoolStatus::Failed
            if matches!(collection, Collection::Pending(_)) =>
        {
            "running"
        }
        PoolStatus::Completed => "completed",
        PoolStatus::Failed | PoolStatus::Lost | PoolStatus::Cancelled => "failed",
    }
}

/// Whether an `Accept` header prefers HTML (a browser) over JSON: the first type with the
/// highest quality is `text/html` or `application/xhtml+xml`.
pub fn prefers_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut best: Option<(f32, &str)> = None;
    for item in accept.split(',') {
        let mut params = item.split(';');
        let media = params.next().unwrap_or_default().trim();
        let quality = params
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if best.is_none_or(|(q, _)| quality > q) {
            best = Some((quality, media));
        }
    }
    best.is_some_and(|(q, media)| {
        q > 0.0
            && (media.eq_ignore_ascii_case("text/html")
                || media.eq_ignore_ascii_case("application/xhtml+xml"))
    })
}

/// `seconds` to the millisecond: a sum of job figures reads 0.34, not 0.33999999999999997.
fn to_the_millisecond(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// `GET /stats`: sandrun's quota shape for the caller's key, or for the whole pool on an open
/// coordinator (or for an admin key without its own limit).
///
/// `limit` is the CPU-seconds per minute the healthy workers in service (not draining) grant
/// the pool (sandrun's per-IP quota, 10 each), `used` what the caller's jobs that ended in the
/// last minute used; `active_jobs` counts the caller's jobs not yet finished. A submit waits in
/// the queue rather than being refused, so `can_submit` is false only when the key's
/// `max_queued_jobs` is reached or `refused` gives a reason the pool refuses every submit now
/// (paused, the queue full, the disk down to its reserve); `reason` says why, or when jobs will
/// wait.
pub fn stats(st: &PoolState, caller: &Caller, refused: Option<String>) -> Value {
    let now = unix_now();
    let owner = caller.name();
    let mine = |job: &Job| owner.is_none() || job.owner.as_deref() == owner;
    let healthy = st.listed_workers().filter(|w| w.health.is_healthy).count();
    let in_service = st
        .listed_workers()
        .filter(|w| w.health.is_healthy && !w.draining)
        .count();
    let limit = WORKER_CPU_PER_MINUTE * in_service as f64;
    let in_table: f64 = st
        .jobs
        .values()
        .filter(|job| mine(job))
        .filter(|job| job.completed_at.is_some_and(|at| in_window(now, at)))
        .map(|job| cpu_seconds(job))
        .fold(0.0, |sum, cpu| sum + cpu);
    let used = to_the_millisecond(in_table + st.cpu_window.used(now, owner));
    let count = |status| match owner {
        Some(name) => st.owner_count(name, status),
        None => st.count(status),
    };
    let waiting = count(PoolStatus::Queued);
    let active = waiting + count(PoolStatus::Dispatched) + count(PoolStatus::Running);
    let full = caller.max_queued_jobs().filter(|limit| waiting >= *limit);
    let can_submit = full.is_none() && refused.is_none();
    let reason = if let Some(limit) = full {
        format!("this key already has {limit} jobs waiting in the queue (its max_queued_jobs)")
    } else if let Some(why) = refused {
        format!("a submit is refused now: {why}")
    } else if healthy == 0 {
        "no healthy worker: jobs wait in the queue until one is back".to_string()
    } else if in_service == 0 {
        "every healthy worker is draining: jobs wait in the queue until one takes jobs again"
            .to_string()
    } else if limit - used <= 0.0 {
        "the workers' CPU quota is used up: jobs wait in the queue".to_string()
    } else {
        String::new()
    };
    json!({
        "your_quota": {
            "used": used,
            "limit": limit,
            "available": to_the_millisecond(limit - used).max(0.0),
            "active_jobs": active,
            "can_submit": can_submit,
            "reason": reason,
        },
        "system": {
            "queue_length": st.count(PoolStatus::Queued) + st.count(PoolStatus::Dispatched),
            "active_jobs": st.count(PoolStatus::Running),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_prefer_html_and_api_clients_do_not() {
        let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8";
        assert!(prefers_html(Some(chromium)));
        assert!(prefers_html(Some("application/xhtml+xml")));
        for other in [
            None,
            Some("*/*"),
            Some("application/json"),
            Some("application/json, text/html;q=0.5"),
            Some("text/html;q=0"),
            Some("application/json, text/plain, */*"),
        ] {
            assert!(!prefers_html(other), "{other:?}");
        }
    }

    #[test]
    fn lost_and_uncollected_jobs_read_as_sandrun_expects() {
        let pending = Collection::Pending(None);
        let none = Collection::NotStarted;
        assert_eq!(sandrun_status(PoolStatus::Dispatched, &none), "queued");
        assert_eq!(sandrun_status(PoolStatus::Completed, &pending), "running");
        assert_eq!(sandrun_status(PoolStatus::Failed, &none), "failed");
        assert_eq!(sandrun_status(PoolStatus::Lost, &pending), "failed");
    }
}
