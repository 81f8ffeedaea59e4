//! `GET /dashboard`: one self-contained page (inline CSS and script, no external asset) under a
//! strict Content-Security-Policy that allows only its own inline style and script (by hash)
//! and requests to this coordinator; and `GET /activity`, the JSON it reads besides `/pool`:
//! jobs per minute over the last hour and the most recent jobs.

use crate::base::clock::unix_now;
use crate::base::job::{Collection, Job, PoolStatus};
use crate::http::auth::Caller;
use crate::http::redact::hide_in_text;
use crate::http::views;
use crate::state::context::Context;
use crate::state::pool_state::PoolState;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use std::time::Instant;

/// The page, compiled into the binary.
pub const PAGE: &str = include_str!("dashboard.html");

/// The base64 sha256 of the text between the first `open` and the next `close` tag of the page.
fn inline_hash(open: &str, close: &str) -> String {
    let body = PAGE
        .split_once(open)
        .and_then(|(_, rest)| rest.split_once(close))
        .map_or("", |(inner, _)| inner);
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body.as_bytes()))
}

/// The response headers of the page: its content type is sent apart.
pub fn page_headers() -> &'static [(&'static str, &'static str)] {
    static HEADERS: OnceLock<[(&'static str, &'static str); 5]> = OnceLock::new();
    static POLICY: OnceLock<String> = OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
             connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            inline_hash("<script>", "</script>"),
            inline_hash("<style>", "</style>")
        )
    });
    HEADERS.get_or_init(|| {
        [
            ("Content-Security-Policy", policy.as_str()),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("X-Frame-Options", "DENY"),
            ("Cache-Control", "no-store"),
        ]
    })
}

/// One recent job as `/activity` lists it; `st` is the table it was read from (`None`: the job
/// store), which says why a queued job cannot leave the queue.
fn job_entry(job: &Job, st: Option<&PoolState>, caller: &Caller, now: f64) -> Value {
    let outputs: Vec<&str> = match &job.collection {
        Collection::Collected(stored) => stored.outputs.iter().map(|(p, _)| p.as_str()).collect(),
        _ => Vec::new(),
    };
    let end = job.completed_at.unwrap_or(now);
    let (stranded, blocked) = st
        .filter(|_| job.status == PoolStatus::Queued)
        .map_or((None, None), |st| {
            views::held_in_queue(st, job, Instant::now())
        });
    json!({
        "job_id": job.id,
        "pool_status": job.status.as_str(),
        "priority": job.priority.as_str(),
        "finished": job.status.is_final(),
        "worker_id": if caller.sees_all() { job.worker_id.as_deref() } else { None },
        "submitted_at": job.submitted_at,
        "completed_at": job.completed_at,
        "duration": (end - job.submitted_at).max(0.0),
        "error": job.error.as_deref().map(|e| if caller.sees_all() {
            e.into()
        } else {
            hide_in_text(e, job.remote_job_id.as_deref())
        }),
        "collected": matches!(job.collection, Collection::Collected(_)),
        "outputs": outputs,
        "lost_runs": job.reruns.as_ref().map_or(0, |r| r.lost.len()),
        "deleting": job.delete_when_settled,
        "stranded": stranded,
        "blocked": blocked,
    })
}

/// `GET /activity`: finished jobs per minute over the last hour (oldest first) and the most
/// recent jobs (newest first) with their status, duration and collected output files. A
/// submit key sees only its own jobs among the recent ones, without their workers. Jobs
/// that already left the table are read back from the job store, after the lock is released.
pub fn activity_view(ctx: &Context, caller: &Caller) -> Value {
    let now = unix_now();
    let minutes: Vec<Value> = ctx
        .metrics
        .per_minute(now)
        .iter()
        .map(|m| {
            json!({"minute": m.minute_start, "submitted": m.submitted,
                   "completed": m.completed, "failed": m.failed, "cancelled": m.cancelled})
        })
        .collect();
    let listed: Vec<Result<Value, String>> = {
        let st = ctx.lock();
        st.recent
            .newest_first()
            .filter_map(|id| match st.jobs.get(id) {
                Some(job) => caller
                    .can_see(job)
                    .then(|| Ok(job_entry(job, Some(&st), caller, now))),
                None => Some(Err(id.to_string())),
            })
            .collect()
    };
    let jobs: Vec<Value> = listed
        .into_iter()
        .filter_map(|entry| match entry {
            Ok(value) => Some(value),
            Err(id) => match ctx.store.load(&id) {
                Ok(Some(job)) if caller.can_see(&job) => Some(job_entry(&job, None, caller, now)),
                Ok(_) => None,
                Err(e) => {
                    log::warn!("Job {id} could not be read from the job store: {e}");
                    None
                }
            },
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "time": now,
        "jobs_per_minute": minutes,
        "recent_jobs": jobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_hash_of_the_inline_script_and_style() {
        let policy = page_headers()[0].1;
        for (open, close) in [("<script>", "</script>"), ("<style>", "</style>")] {
            let hash = inline_hash(open, close);
            assert_ne!(
                hash,
                inline_hash("<nothing>", "</nothing>"),
                "{open} not found"
            );
            assert!(policy.contains(&format!("'sha256-{hash}'")), "{policy}");
        }
        assert_eq!(PAGE.matches("<script").count(), 1, "one inline script only");
        assert!(
            !PAGE.contains(" style=\""),
            "inline style attributes are blocked by the policy"
        );
        assert!(!PAGE.contains("http://") || PAGE.contains("http://www.w3.org/2000/svg"));
    }
}
