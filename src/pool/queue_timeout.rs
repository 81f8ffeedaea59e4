//! Queue timeouts (HAProxy's `timeout queue`): a job still queued when its queue timeout (its
//! `queue_timeout`, or `--queue-timeout`) ends fails unstarted, with a message that says what
//! the workers were doing, and its upload is dropped, as a cancel of a queued job does. The
//! scheduler takes such jobs out each round, under the table's lock, and wakes [`SLACK`] after
//! the next deadline, so that the deadlines of a burst of submits end in a few rounds, not one
//! round each. The log has a line for a round, then at most one a minute while more follow.

use crate::base::clock::unix_now;
use crate::base::job::PoolStatus;
use crate::base::log_repeats::{Repeats, REPEAT_PERIOD};
use crate::base::sync::lock;
use crate::pool::announce;
use crate::state::context::Context;
use crate::state::pool_state::{LabelsHold, PoolState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after a deadline the scheduler wakes to end it (with the others due by then).
pub const SLACK: Duration = Duration::from_millis(100);

/// Jobs logged by name in one line; more are counted.
const NAMED_IN_LOG: usize = 5;

/// The log lines of expiries: each job counts as one repeat.
static EXPIRY_LOGS: Mutex<Repeats> = Mutex::new(Repeats::new(REPEAT_PERIOD));

/// A job that just failed for its queue timeout, with what its followers still need.
pub struct Expired {
    id: String,
    last: Vec<String>,
}

/// Fails every queued job whose queue timeout ended by `now` and sends its record; the rest
/// ([`finish`]) is done once the table is unlocked.
pub fn take_expired(ctx: &Context, st: &mut PoolState, now: Instant) -> Vec<Expired> {
    let ids = st.queue.take_expired(now);
    if ids.is_empty() {
        return Vec::new();
    }
    // The queue as these jobs saw it, themselves in it.
    let workers = workers_summary(st, now, st.queue.len() + ids.len());
    let wall = unix_now();
    ids.into_iter()
        .filter_map(|id| {
            let labels = labels_note(st, &id, now);
            let job = st.set_status(&id, PoolStatus::Failed)?;
            let timeout = job.queue_timeout.unwrap_or_default();
            job.completed_at = Some(wall);
            job.error = Some(format!(
                "not started: no worker took it within its queue timeout of {timeout} s \
                 ({workers}{labels}); it was never sent to a worker. Submit it again, perhaps \
                 with a longer queue_timeout"
            ));
            st.metrics.queue_timed_out();
            // Committed with whatever comes next; a failed commit is tried again.
            drop(ctx.record_with_ticket(st, &id));
            let last = announce::last_lines(st, &id);
            Some(Expired { id, last })
        })
        .collect()
}

/// Ends the feeds of the expired jobs, drops their uploads and logs them.
pub fn finish(ctx: &Context, expired: Vec<Expired>) {
    if expired.is_empty() {
        return;
    }
    let count = expired.len();
    let mut named = Vec::with_capacity(NAMED_IN_LOG);
    for Expired { id, last } in expired {
        announce::ended(ctx, &id, last, None);
        ctx.spool.remove_upload(&id);
        if named.len() < NAMED_IN_LOG {
            named.push(id);
        }
    }
    let held = {
        let mut logs = lock(&EXPIRY_LOGS);
        let through = logs.check(Instant::now());
        logs.hold(count as u64 - 1);
        through
    };
    let Some(held) = held else {
        return;
    };
    let earlier = match held {
        0 => String::new(),
        n => format!(" ({n} more jobs failed so since the last such line)"),
    };
    let names = named.join(", ");
    match count - named.len() {
        0 if count == 1 => log::warn!(
            "Job {names} failed unstarted: its queue timeout ended before a worker took it{earlier}"
        ),
        more => {
            let rest = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            log::warn!(
                "{count} jobs failed unstarted ({names}{rest}): their queue timeout ended before a worker took them{earlier}"
            );
        }
    }
}

/// Why a job that asks for labels could not leave the queue, when that is why: no worker
/// carries them, or every one that does is kept from jobs. Nothing for a job without labels
/// (the workers' summary says why no worker took it).
fn labels_note(st: &PoolState, id: &str, now: Instant) -> String {
    let Some(labels) = st
        .jobs
        .get(id)
        .map(|j| j.labels().to_vec())
        .filter(|labels| !labels.is_empty())
    else {
        return String::new();
    };
    match st.labels_hold(&labels, now) {
        Some(LabelsHold::Stranded) => {
            format!("; no worker carries its labels ({})", labels.join(", "))
        }
        Some(LabelsHold::Blocked) => format!(
            "; every worker that carries its labels ({}) was kept from taking jobs",
            labels.join(", ")
        ),
        None => String::new(),
    }
}

/// What the workers were doing, and how many jobs were queued (`queued`), for the message of a job
/// that no worker took in time.
fn workers_summary(st: &PoolState, now: Instant, queued: usize) -> String {
    let listed = st.listed_workers().count();
    let in_service: Vec<_> = st
        .workers
        .iter()
        .filter(|w| !w.removed && w.health.is_healthy && !w.draining)
        .collect();
    let with_room = in_service.iter().filter(|w| w.has_room(now)).count();
    // Right after a start the workers are not known healthy until their first probe answers.
    let unchecked = st
        .workers
        .iter()
        .filter(|w| !w.removed && w.health.last_health_check.is_none())
        .count();
    let unchecked = match unchecked {
        0 => String::new(),
        n => format!(" ({n} not checked yet: the coordinator had just started)"),
    };
    format!(
        "{} of {listed} {} healthy and in service{unchecked}, {with_room} with room; {queued} {} queued",
        in_service.len(),
        if listed == 1 { "worker" } else { "workers" },
        if queued == 1 { "job" } else { "jobs" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::job::Job;
    use crate::worker::workers_file::WorkerSpec;

    #[test]
    fn only_a_job_that_asks_for_labels_is_told_of_them() {
        let now = Instant::now();
        let gpu = WorkerSpec {
            labels: vec!["gpu".to_string()],
            ..WorkerSpec::numbered(0)
        };
        let mut st = PoolState::new(vec![gpu], now);
        st.workers[0].draining = true;
        let plain = Job::new("pool-plain".to_string(), Vec::new(), None, 1000.0);
        let mut labelled = Job::new("pool-gpu".to_string(), Vec::new(), None, 1000.0);
        labelled.labels = Some(vec!["gpu".to_string()].into_boxed_slice());
        st.enqueue(plain, now);
        st.enqueue(labelled, now);
        assert_eq!(labels_note(&st, "pool-plain", now), "");
        assert_eq!(
            labels_note(&st, "pool-gpu", now),
            "; every worker that carries its labels (gpu) was kept from taking jobs"
        );
        assert_eq!(
            workers_summary(&st, now, st.queue.len()),
            "0 of 1 worker healthy and in service (1 not checked yet: the coordinator had just started), 0 with room; 2 jobs queued"
        );
        assert!(workers_summary(&st, now, 1).ends_with("; 1 job queued"));
    }
}
