//! The health checker thread: probes every worker at start-up, then on its interval; failing
//! workers are re-probed sooner with a backoff from 1 s up to the interval. One round's probes run
//! concurrently, so a round takes about one health timeout however many workers hang. An
//! `https://` worker's probe also reads, hourly, the certificate its endpoint presents (after
//! the verdict, in the same thread). On the same beat it looks at the job store, so that a
//! store that stopped writing, or whose file was deleted or replaced, is logged even when no
//! request asks about it.

use crate::base::cert_expiry::ChainExpiry;
use crate::base::clock::unix_now;
use crate::base::log_repeats::{Repeats, REPEAT_PERIOD};
use crate::base::sync::lock;
use crate::pool::expiry;
use crate::state::context::Context;
use crate::state::metrics::ProbeResult;
use crate::state::pool_state::{PoolState, WorkerEntry};
use crate::worker::client::ProbeFailure;
use crate::worker::identity::short_id;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const PROBE_STACK: usize = 128 * 1024;
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// How often the certificate an `https://` worker endpoint presents is read again.
const CERTIFICATE_REREAD: Duration = Duration::from_secs(3600);
/// When a certificate could not be read, how soon a probe tries again.
const CERTIFICATE_RETRY: Duration = Duration::from_secs(60);
/// Probes the coordinator could not make for its own shortage, logged at most once a minute.
static SHORTAGE_LOGS: Mutex<Repeats> = Mutex::new(Repeats::new(REPEAT_PERIOD));

/// Runs the health checker until the signal channel closes.
pub fn run(ctx: Arc<Context>, signal: Receiver<()>) {
    loop {
        let now = Instant::now();
        let due: Vec<Due> = {
            let st = ctx.lock();
            st.workers
                .iter()
                .enumerate()
                .filter(|(_, w)| !w.removed && w.health.next_probe <= now)
                .map(|(i, w)| Due {
                    probed: (i, w.spec.endpoint.clone(), w.spec.worker_id.clone()),
                    read_certificate: w.spec.over_tls() && w.health.certificate_due <= now,
                })
                .collect()
        };
        if !due.is_empty() {
            probe_round(&ctx, due);
        }
        ctx.store.stalled_for();
        ctx.store.file_lost();
        expiry::remind_daily(&ctx);
        let next = ctx
            .lock()
            .listed_workers()
            .map(|w| w.health.next_probe)
            .min();
        let wait = next.map_or(ctx.config.health_interval, |n| {
            n.saturating_duration_since(Instant::now())
        });
        match signal.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// A worker's place in the table, endpoint and id, as a probe round found them.
type Probed = (usize, String, String);

/// A worker to probe, and whether the certificate its endpoint presents is to be read too.
struct Due {
    probed: Probed,
    read_certificate: bool,
}

/// What a probe thread reports, each part the moment it has it.
enum Arrival {
    /// The health probe's verdict.
    Probe(Probed, Result<(), ProbeFailure>),
    /// What was read of the certificate the endpoint presents (after the verdict, so that a
    /// slow handshake never holds it back).
    Certificate(Probed, Result<ChainExpiry, String>),
}

/// Probes the given workers concurrently, one short-lived thread each, and applies each result
/// the moment it arrives (a hanging worker delays nobody else's verdict).
fn probe_round(ctx: &Context, due: Vec<Due>) {
    let (results, arrivals) = crossbeam_channel::unbounded();
    thread::scope(|scope| {
        for Due {
            probed,
            read_certificate,
        } in due
        {
            let results = results.clone();
            let mine = probed.clone();
            let spawned = thread::Builder::new()
                .name("health-probe".to_string())
                .stack_size(PROBE_STACK)
                .spawn_scoped(scope, move || {
                    let (_, endpoint, worker_id) = &mine;
                    let result = ctx.client.probe(endpoint, worker_id);
                    let _ = results.send(Arrival::Probe(mine.clone(), result));
                    if read_certificate {
                        let read = ctx.client.server_certificate(endpoint);
                        let _ = results.send(Arrival::Certificate(mine, read));
                    }
                });
            if let Err(e) = spawned {
                let failure =
                    ProbeFailure::Shortage(format!("could not start a probe thread: {e}"));
                apply(ctx, probed, Err(failure));
            }
        }
        drop(results);
        for arrival in arrivals {
            match arrival {
                Arrival::Probe(probed, result) => apply(ctx, probed, result),
                Arrival::Certificate(probed, read) => record_certificate(ctx, &probed, read),
            }
        }
    });
}

/// The entry a probe was made for, while it still holds that place (a reload may have given the
/// place of a forgotten worker to another one meanwhile).
fn probed_entry<'a>(
    st: &'a mut PoolState,
    (index, endpoint, worker_id): &Probed,
) -> Option<&'a mut WorkerEntry> {
    st.workers
        .get_mut(*index)
        .filter(|w| w.spec.worker_id == *worker_id && w.spec.endpoint == *endpoint)
}

/// Records what was read of the certificate the endpoint of the worker `(index, endpoint,
/// worker_id)` presents: read again in an hour, or tried again in a minute when it could not
/// be read. A certificate not seen before is warned of at once when it is due.
fn record_certificate(ctx: &Context, probed: &Probed, read: Result<ChainExpiry, String>) {
    let now = Instant::now();
    let mut st = ctx.lock();
    let Some(w) = probed_entry(&mut st, probed) else {
        return;
    };
    let short = short_id(&probed.2);
    match read {
        Ok(expiry) => {
            w.health.certificate_due = now + CERTIFICATE_REREAD;
            let before = w.health.certificate.replace(expiry.clone());
            drop(st);
            if before.is_none_or(|b| b.not_after != expiry.not_after) {
                expiry::worker_certificate_read(short, &expiry);
            }
        }
        Err(why) => {
            w.health.certificate_due = now + CERTIFICATE_RETRY;
            drop(st);
            log::debug!("Could not read the certificate of worker {short}...: {why}");
        }
    }
}

/// Records one probe result of the worker `(index, endpoint, worker_id)`; a worker that turns
/// healthy wakes the scheduler.
fn apply(ctx: &Context, probed: Probed, result: Result<(), ProbeFailure>) {
    ctx.metrics.probe(match &result {
        Ok(()) => ProbeResult::Healthy,
        Err(ProbeFailure::Unhealthy(_)) => ProbeResult::Unhealthy,
        Err(ProbeFailure::WrongIdentity { .. }) => ProbeResult::WrongIdentity,
        Err(ProbeFailure::Unreachable(_)) => ProbeResult::Unreachable,
        Err(ProbeFailure::Shortage(_)) => ProbeResult::Shortage,
    });
    let now = Instant::now();
    let now_unix = unix_now();
    let interval = ctx.config.health_interval;
    let mut st = ctx.lock();
    let index = probed.0;
    let Some(w) = probed_entry(&mut st, &probed) else {
        return;
    };
    if let Err(ProbeFailure::Shortage(why)) = &result {
        // Not the worker's fault: its health stays as it was until a probe can be made.
        w.health.next_probe = now + FIRST_RETRY;
        let short = short_id(&w.spec.worker_id).to_string();
        drop(st);
        if let Some(held) = lock(&SHORTAGE_LOGS).check(now) {
            log::warn!(
                "Could not probe worker {short}...: {why}; the coordinator is short of \
                 resources, not the worker, so its health stays as it was{}",
                Repeats::suffix(held)
            );
        }
        return;
    }
    w.health.last_health_check = Some(now_unix);
    match result {
        Ok(()) if w.distrusted.is_some() => {
            w.health.consecutive_failures = 0;
            w.health.next_probe = now + interval;
            w.health.last_error = w.distrusted.clone();
        }
        Ok(()) => {
            w.health.consecutive_failures = 0;
            w.health.last_error = None;
            w.health.next_probe = now + interval;
            if !w.health.is_healthy {
                let again = if w.health.since.is_some() {
                    " again"
                } else {
                    ""
                };
                log::info!(
                    "Worker {}... is healthy{again} at {}",
                    short_id(&w.spec.worker_id),
                    w.spec.endpoint
                );
                w.health.is_healthy = true;
                w.health.since = Some(now_unix);
                drop(st);
                ctx.wake_scheduler();
            }
        }
        Err(failure) => {
            w.health.consecutive_failures += 1;
            let backoff = FIRST_RETRY
                .saturating_mul(1 << (w.health.consecutive_failures - 1).min(16))
                .min(interval);
            w.health.next_probe = now + backoff;
            let first_check = w.health.since.is_none();
            set_unhealthy(&mut st, index, failure.to_string(), first_check);
        }
    }
}

/// Marks a worker unhealthy, logging the change once (or always, with `force_log`).
fn set_unhealthy(st: &mut PoolState, index: usize, why: String, force_log: bool) {
    let Some(w) = st.workers.get_mut(index) else {
        return;
    };
    if w.health.is_healthy || force_log {
        log::warn!(
            "Worker {}... is now unhealthy: {why}",
            short_id(&w.spec.worker_id)
        );
        w.health.since = Some(unix_now());
    }
    w.health.is_healthy = false;
    w.health.last_error = Some(why);
}

/// Trusts again every worker distrusted for a result that did not verify (an operator's SIGHUP);
/// the health checker probes them at once.
pub fn trust_again(ctx: &Context) {
    let mut st = ctx.lock();
    for w in st.workers.iter_mut() {
        if let Some(why) = w.distrusted.take() {
            log::info!(
                "Worker {}... is trusted again (was: {why}); probing it",
                short_id(&w.spec.worker_id)
            );
            w.health.next_probe = Instant::now();
        }
    }
    drop(st);
    ctx.wake_health();
}

/// Marks a worker unhealthy at once after a connection failure, and has it re-probed in about 1 s.
pub fn mark_unreachable(ctx: &Context, st: &mut PoolState, index: usize, why: String) {
    set_unhealthy(st, index, why, false);
    if let Some(w) = st.workers.get_mut(index) {
        w.health.consecutive_failures = w.health.consecutive_failures.max(1);
        w.health.next_probe = Instant::now() + FIRST_RETRY;
    }
    ctx.wake_health();
}
