//! `GET /stats` from a worker's source addresses: sandrun's own view of each address's quota
//! (CPU used this minute and its limit, jobs it counts, whether a submit would pass and why
//! not). Asked on a dispatch thread, off the submit path, when an address is first used, after
//! a 429, when its throttle ends and while others' use keeps it full (see
//! `Source::wants_stats`: at most one per address every few seconds, and at most
//! [`ASKS_PER_WORKER`] in flight to one worker); the answer is folded into the address's quota,
//! and a "may not submit" pauses the address as a 429 would, without one. An answer wakes the
//! scheduler, which sends the asks that waited for room.

use crate::base::clock::unix_now;
use crate::pool::dispatch::{learn_cap, throttle_source};
use crate::state::context::Context;
use crate::state::pool_state::PoolState;
use crate::state::sources::QuotaReport;
use crate::worker::identity::short_id;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// One `GET /stats` to send.
#[derive(Debug, Clone)]
pub struct Ask {
    worker_index: usize,
    worker_id: String,
    endpoint: String,
    address: IpAddr,
}

/// The most `GET /stats` asks in flight to one worker at once: a worker with many source
/// addresses is asked a few at a time (each ask holds a dispatch thread and one of the worker's
/// connections), not all at once. The other addresses wait their turn, taking no submit.
pub const ASKS_PER_WORKER: usize = 8;

/// The asks due at `now` on healthy workers, each marked as sent (its address takes no submit
/// until it is answered): at most [`ASKS_PER_WORKER`] in flight per worker, the addresses asked
/// longest ago (never, first) first.
pub fn due(st: &mut PoolState, now: Instant) -> Vec<Ask> {
    let mut asks = Vec::new();
    for (worker_index, w) in st.workers.iter_mut().enumerate() {
        if w.sources.is_empty() || w.removed || !w.health.is_healthy {
            continue;
        }
        let limits = w.client_limits;
        let in_flight = w.sources.iter().filter(|s| s.stats.awaiting).count();
        let room = ASKS_PER_WORKER.saturating_sub(in_flight);
        if room == 0 {
            continue;
        }
        let mut wanting: Vec<usize> = (0..w.sources.len())
            .filter(|&i| w.sources[i].wants_stats(now, &limits))
            .collect();
        wanting.sort_by_key(|&i| w.sources[i].stats_asked_at());
        for i in wanting.into_iter().take(room) {
            let source = &mut w.sources[i];
            source.asking_stats(now);
            asks.push(Ask {
                worker_index,
                worker_id: w.spec.worker_id.clone(),
                endpoint: w.spec.endpoint.clone(),
                address: source.address,
            });
        }
    }
    asks
}

/// Sends an ask on a dispatch thread; its answer is folded in and the scheduler woken.
pub fn start(ctx: &Arc<Context>, ask: Ask) {
    let thread_ctx = Arc::clone(ctx);
    let fallback = ask.clone();
    let started = ctx.dispatchers.run(Box::new(move || {
        let answer = thread_ctx
            .client
            .stats_from(ask.address, &ask.endpoint)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                QuotaReport::parse(&v, unix_now())
                    .ok_or_else(|| format!("not sandrun's /stats answer: {v}"))
            });
        settle(&thread_ctx, &ask, answer);
    }));
    if let Err(e) = started {
        settle(ctx, &fallback, Err(format!("no thread to ask it: {e}")));
    }
}

fn settle(ctx: &Context, ask: &Ask, answer: Result<QuotaReport, String>) {
    let mut st = ctx.lock();
    let index = ask.worker_index;
    let Some(w) = st
        .workers
        .get_mut(index)
        .filter(|w| w.spec.worker_id == ask.worker_id && w.spec.endpoint == ask.endpoint)
    else {
        return;
    };
    let short = short_id(&w.spec.worker_id).to_string();
    let limits = &mut w.client_limits;
    let Some(source) = w.sources.iter_mut().find(|s| s.address == ask.address) else {
        return;
    };
    if let Err(why) = &answer {
        log::debug!(
            "GET /stats from {} to worker {short}... failed: {why}",
            ask.address
        );
    }
    let refusal = answer
        .as_ref()
        .ok()
        .filter(|r| !r.can_submit)
        .map(|r| r.reason.clone());
    source.note_stats(Instant::now(), answer, limits);
    if let Some(reason) = refusal {
        learn_cap(&mut st, index, &reason);
        throttle_source(&mut st.workers[index], ask.address, reason, false);
    }
    drop(st);
    ctx.wake_scheduler();
}
