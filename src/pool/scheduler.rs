//! The scheduler thread: hands the queue's next job (see `state::queue`: priority, aging, owners
//! in turn) to the healthy, non-throttled, non-draining worker with the fewest active jobs below
//! its limit (ties rotate) that carries every label the job asks for, and, when the worker has
//! source addresses, to the address with the most room; a job that waits for a worker with its
//! labels lets the jobs behind it that the other workers can take go to them, however far back
//! they wait. When no worker has room it waits for a signal (job queued, slot freed, worker
//! healthy) or the next throttle expiry; the job keeps its place.
//! While the job store cannot record dispatches, or the coordinator is too short of descriptors
//! or memory to send them (`PoolState::dispatch_hold`), nothing is assigned until the hold's
//! next try.
//! Each round also sends the `GET /stats` that source addresses want (`pool::quota_stats`)
//! and fails the queued jobs whose queue timeout ended (`pool::queue_timeout`), waking for the
//! next such deadline.

use crate::base::job::PoolStatus;
use crate::base::labels;
use crate::pool::dispatch::{self, Assignment};
use crate::pool::queue_timeout;
use crate::pool::quota_stats;
use crate::state::context::Context;
use crate::state::pool_state::{DispatchHold, PoolState};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

/// Runs the scheduler until the signal channel closes.
pub fn run(ctx: Arc<Context>, signal: Receiver<()>) {
    loop {
        let (asks, expired, (assignments, next_expiry), next_deadline) = {
            let mut st = ctx.lock();
            let now = Instant::now();
            // While stopping, queued jobs stay for the restart, deadlines and all.
            let (expired, next_deadline) = if st.stopping {
                (Vec::new(), None)
            } else {
                let expired = queue_timeout::take_expired(&ctx, &mut st, now);
                (
                    expired,
                    st.queue.next_deadline().map(|at| at + queue_timeout::SLACK),
                )
            };
            let asks = quota_stats::due(&mut st, now);
            (asks, expired, assign(&mut st, now), next_deadline)
        };
        queue_timeout::finish(&ctx, expired);
        for ask in asks {
            quota_stats::start(&ctx, ask);
        }
        for assignment in assignments {
            dispatch::start(&ctx, assignment);
        }
        let wake_at = next_expiry.into_iter().chain(next_deadline).min();
        let woken = match wake_at {
            Some(at) => signal.recv_deadline(at),
            None => signal.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        if let Err(RecvTimeoutError::Disconnected) = woken {
            return;
        }
    }
}

/// Takes jobs off the queue, head first, while a worker has room; reserves their slots. A job
/// waiting for a worker with its labels does not hold up those behind it that another worker can
/// take. Returns the assignments and, when jobs still wait, the next instant a throttle ends.
pub fn assign(st: &mut PoolState, now: Instant) -> (Vec<Assignment>, Option<Instant>) {
    let mut assignments = Vec::new();
    if st.stopping {
        return (assignments, None);
    }
    if let Some(hold) = DispatchHold::active(&st.dispatch_hold, now) {
        return (assignments, (!st.queue.is_empty()).then_some(hold.until));
    }
    st.queue.promote(now);
    while let Some(next) = next_placement(st, now) {
        let (id, index) = match next {
            Next::Head(index) => match st.queue.pop() {
                Some(id) => (id, index),
                None => break,
            },
            Next::Later(id, index) => {
                st.queue.remove(&id);
                (id, index)
            }
        };
        let worker = &mut st.workers[index];
        worker.active_jobs += 1;
        worker.in_flight += 1;
        let source = worker.pick_source(now).map(|i| {
            let s = &mut worker.sources[i];
            s.in_flight += 1;
            s.submitting += 1;
            s.address
        });
        let endpoint = worker.spec.endpoint.clone();
        let worker_id = worker.spec.worker_id.clone();
        st.rotation = index + 1;
        if let Some(job) = st.set_status(&id, PoolStatus::Dispatched) {
            job.worker_id = Some(worker_id.clone());
            job.worker_endpoint = Some(endpoint.clone());
            job.source_address = source;
            assignments.push(Assignment {
                job_id: id,
                worker_index: index,
                worker_id,
                endpoint,
                source,
                inputs: job.inputs.clone(),
                manifest: job.manifest,
                assigned_at: now,
            });
        }
    }
    let next_expiry = if st.queue.is_empty() {
        None
    } else {
        st.workers
            .iter()
            .flat_map(|w| [w.frees_at(now), w.settle_until])
            .flatten()
            .filter(|until| *until > now)
            .min()
    };
    (assignments, next_expiry)
}

/// Whether a job with these labels submitted now could go to a worker at once (nothing queued
/// ahead of it).
pub fn room_now(st: &PoolState, labels: &[String], now: Instant) -> bool {
    !st.stopping
        && st.queue.is_empty()
        && DispatchHold::active(&st.dispatch_hold, now).is_none()
        && pick_worker(st, &[], labels, now).is_some()
}

/// The next queued job to assign and the worker it goes to.
enum Next {
    /// The head of the queue.
    Head(usize),
    /// A job behind the head, which waits for a worker with its labels.
    Later(String, usize),
}

/// The next queued job to assign: the head when a worker with its labels has room; else the
/// first queued job that a worker with room can take. Which lists of labels a worker with room
/// can take is asked first, once per list that queued jobs ask for (and once for no labels), so
/// the walk down the queue happens only when it ends at a job to assign. Jobs no longer in the
/// table leave the head of the queue.
fn next_placement(st: &mut PoolState, now: Instant) -> Option<Next> {
    let head = loop {
        let head = st.queue.peek()?;
        if st.jobs.contains_key(head) {
            break head;
        }
        st.queue.pop();
    };
    if let Some(index) = placement(st, head, now) {
        return Some(Next::Head(index));
    }
    // The workers with room, looked at once: each list of labels is then held against them
    // only, not against every worker of the pool (a backlog of many lists stranded on busy or
    // unhealthy workers costs a pass little).
    let with_room: Vec<&[String]> = st
        .workers
        .iter()
        .filter(|w| w.has_room(now))
        .map(|w| &*w.spec.labels)
        .collect();
    if with_room.is_empty() {
        return None;
    }
    let mut open: Vec<&[String]> = st
        .queued_label_lists()
        .map(|(labels, _)| labels)
        .filter(|labels| {
            with_room
                .iter()
                .any(|carried| labels::has_all(carried, labels))
        })
        .collect();
    if st.unlabelled_queued() > 0 {
        open.push(&[]);
    }
    if open.is_empty() {
        return None;
    }
    // A job of a kind (labelled or not) that no open list has is passed without a look at it.
    let labelled_open = open.iter().any(|labels| !labels.is_empty());
    let plain_open = open.iter().any(|labels| labels.is_empty());
    let id = st.queue.first_in_order(|id, labelled| {
        let passed = match labelled {
            Some(true) => !labelled_open,
            Some(false) => !plain_open,
            None => false,
        };
        !passed
            && st
                .jobs
                .get(id)
                .is_some_and(|job| open.contains(&job.labels()))
    })?;
    let index = placement(st, id, now)?;
    Some(Next::Later(id.to_string(), index))
}

/// The worker for queued job `id` now, if one with its labels has room.
fn placement(st: &PoolState, id: &str, now: Instant) -> Option<usize> {
    let job = st.jobs.get(id)?;
    let tried: Vec<&str> = job.tried_workers().collect();
    pick_worker(st, &tried, job.labels(), now)
}

/// The worker for a job with `labels`: carries them all, has room, not yet tried by this job if
/// such a worker exists, fewest active jobs; ties go to the first one at or after the rotation
/// point.
fn pick_worker(st: &PoolState, tried: &[&str], labels: &[String], now: Instant) -> Option<usize> {
    let n = st.workers.len();
    (0..n)
        .map(|k| (st.rotation + k) % n)
        .filter(|&i| {
            st.workers[i].has_room(now) && labels::has_all(&st.workers[i].spec.labels, labels)
        })
        .min_by_key(|&i| {
            let w = &st.workers[i];
            (tried.contains(&w.spec.worker_id.as_str()), w.active_jobs)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::job::Job;
    use crate::worker::workers_file::WorkerSpec;

    fn pool(workers: usize, max: u32) -> PoolState {
        let specs = (0..workers)
            .map(|i| WorkerSpec {
                max_concurrent_jobs: max,
                ..WorkerSpec::numbered(i)
            })
            .collect();
        let mut st = PoolState::new(specs, Instant::now());
        for w in &mut st.workers {
            w.health.is_healthy = true;
            w.known_ok = max;
        }
        st
    }

    fn queue(st: &mut PoolState, n: usize) {
        for i in 0..n {
            st.enqueue(
                Job::new(format!("pool-{i}"), Vec::new(), None, 0.0),
                Instant::now(),
            );
        }
    }

    #[test]
    fn spreads_evenly_and_respects_limits() {
        let mut st = pool(2, 2);
        queue(&mut st, 5);
        let (assigned, _) = assign(&mut st, Instant::now());
        let per_worker: Vec<usize> = (0..2)
            .map(|w| assigned.iter().filter(|a| a.worker_index == w).count())
            .collect();
        assert_eq!(per_worker, vec![2, 2]);
        assert_eq!(st.queue.len(), 1);
        assert_eq!(st.queue.peek(), Some("pool-4"));
        assert_eq!(st.count(PoolStatus::Dispatched), 4);
        assert!(st.workers.iter().all(|w| w.active_jobs == 2));
    }

    #[test]
    fn a_job_waits_for_a_worker_with_its_labels_without_holding_up_the_others() {
        let mut st = pool(2, 1);
        st.workers[1].spec.labels = vec!["arm64".into(), "gpu".into()];
        let labelled = |id: &str, labels: &[&str]| {
            let mut job = Job::new(id.to_string(), Vec::new(), None, 0.0);
            job.labels = Some(labels.iter().map(|l| l.to_string()).collect());
            job
        };
        st.enqueue(labelled("pool-gpu-0", &["gpu"]), Instant::now());
        st.enqueue(labelled("pool-gpu-1", &["gpu"]), Instant::now());
        queue(&mut st, 2);
        let (assigned, _) = assign(&mut st, Instant::now());
        let placed: Vec<(&str, usize)> = assigned
            .iter()
            .map(|a| (a.job_id.as_str(), a.worker_index))
            .collect();
        assert_eq!(placed, [("pool-gpu-0", 1), ("pool-0", 0)]);
        assert_eq!(st.queue.in_order(10), ["pool-gpu-1", "pool-1"]);
        // The gpu worker frees its slot: the labelled head takes it, the other worker is full.
        st.workers[1].active_jobs = 0;
        let (assigned, _) = assign(&mut st, Instant::now());
        assert_eq!(assigned.len(), 1);
        assert_eq!(
            (assigned[0].job_id.as_str(), assigned[0].worker_index),
            ("pool-gpu-1", 1)
        );
        // A job whose labels no worker carries waits; the one behind it goes.
        st.workers[0].active_jobs = 0;
        st.enqueue(labelled("pool-x86", &["x86_64"]), Instant::now());
        let (assigned, _) = assign(&mut st, Instant::now());
        assert_eq!(st.queue.in_order(10), ["pool-x86"]);
        assert_eq!(assigned.len(), 1);
        assert_eq!(assigned[0].job_id, "pool-1");
        assert!(room_now(&pool(1, 1), &[], Instant::now()));
        assert!(!room_now(&pool(1, 1), &["gpu".to_string()], Instant::now()));
    }

    #[test]
    fn a_long_labelled_backlog_holds_up_no_job_that_another_worker_can_take() {
        let mut st = pool(2, 1);
        st.workers[1].spec.labels = vec!["arm64".into(), "gpu".into()];
        st.workers[1].active_jobs = 1;
        let labelled = |id: String, labels: &[&str]| {
            let mut job = Job::new(id, Vec::new(), None, 0.0);
            job.labels = Some(labels.iter().map(|l| l.to_string()).collect());
            job
        };
        for i in 0..1000 {
            st.enqueue(labelled(format!("pool-gpu-{i}"), &["gpu"]), Instant::now());
        }
        st.enqueue(labelled("pool-arm".into(), &["arm64"]), Instant::now());
        // Only the gpu worker carries these labels, and it is full: nothing leaves.
        let (assigned, _) = assign(&mut st, Instant::now());
        assert!(assigned.is_empty());
        let mut lists: Vec<(&[String], usize)> = st.queued_label_lists().collect();
        lists.sort();
        assert_eq!(
            lists,
            [
                (&["arm64".to_string()][..], 1),
                (&["gpu".to_string()][..], 1000)
            ]
        );
        assert_eq!(st.unlabelled_queued(), 0);
        // A plain job 1,002nd in the queue goes to the plain worker at once.
        queue(&mut st, 1);
        assert_eq!(st.unlabelled_queued(), 1);
        let (assigned, _) = assign(&mut st, Instant::now());
        let placed: Vec<(&str, usize)> = assigned
            .iter()
            .map(|a| (a.job_id.as_str(), a.worker_index))
            .collect();
        assert_eq!(placed, [("pool-0", 0)]);
        assert_eq!(st.unlabelled_queued(), 0);
        assert_eq!(st.queue.len(), 1001);
        // The gpu worker frees its slot: the head takes it, in the queue's order.
        st.workers[1].active_jobs = 0;
        let (assigned, _) = assign(&mut st, Instant::now());
        assert_eq!(assigned.len(), 1);
        assert_eq!(assigned[0].job_id, "pool-gpu-0");
        assert_eq!(st.queued_label_lists().map(|(_, n)| n).sum::<usize>(), 1000);
    }

    #[test]
    fn ties_rotate_between_equal_workers() {
        let mut st = pool(3, 10);
        let mut order = Vec::new();
        for _ in 0..6 {
            queue(&mut st, 1);
            let (assigned, _) = assign(&mut st, Instant::now());
            order.push(assigned[0].worker_index);
            st.workers[assigned[0].worker_index].release_slot(None, None);
        }
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn requeued_job_keeps_head_and_position_is_exact() {
        let mut st = pool(0, 1);
        queue(&mut st, 3);
        st.queue.pop();
        st.requeue_front("pool-0");
        assert_eq!(st.queue.position("pool-0"), Some(0));
        assert_eq!(st.queue.position("pool-2"), Some(2));
    }

    #[test]
    fn beyond_what_a_worker_was_seen_to_hold_submits_go_one_at_a_time() {
        let mut st = pool(1, 10);
        st.workers[0].known_ok = 0;
        queue(&mut st, 5);
        let (assigned, _) = assign(&mut st, Instant::now());
        assert_eq!(assigned.len(), 2);
        st.workers[0].in_flight = 0;
        let (assigned, _) = assign(&mut st, Instant::now());
        assert_eq!(assigned.len(), 1);
        st.workers[0].learned_cap = Some(4);
        st.workers[0].in_flight = 0;
        let (assigned, _) = assign(&mut st, Instant::now());
        assert_eq!(assigned.len(), 1, "the learned cap of 4 is reached");
    }

    #[test]
    fn nothing_is_assigned_while_dispatching_is_held_and_the_pause_doubles() {
        let mut st = pool(1, 10);
        queue(&mut st, 2);
        let now = Instant::now();
        let first = st.hold_dispatching("disk full".to_string(), now);
        assert_eq!(first, Some(std::time::Duration::from_secs(1)));
        assert_eq!(st.hold_dispatching("again".to_string(), now), None);
        let (assigned, next) = assign(&mut st, now);
        assert!(assigned.is_empty());
        assert_eq!(next, Some(now + std::time::Duration::from_secs(1)));
        assert!(!room_now(&st, &[], now));
        let later = now + std::time::Duration::from_secs(2);
        let (assigned, _) = assign(&mut st, later);
        assert_eq!(assigned.len(), 2, "the hold is over");
        let second = st.hold_dispatching("still full".to_string(), later);
        assert_eq!(second, Some(std::time::Duration::from_secs(2)));
    }

    #[test]
    fn a_draining_worker_gets_nothing() {
        let mut st = pool(2, 10);
        st.workers[0].draining = true;
        queue(&mut st, 4);
        let (assigned, _) = assign(&mut st, Instant::now());
        assert_eq!(assigned.len(), 4);
        assert!(assigned.iter().all(|a| a.worker_index == 1));
    }
}
