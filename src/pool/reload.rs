//! Hot reload of the allowlist: re-reads workers.json and applies it to the running table
//! without losing or repeating a job. A new worker is probed and then used; a removed one gets
//! no new job and is forgotten once its jobs ended (listed again before that, it takes its
//! entry back, jobs and all); a changed cap, drain flag or set of labels applies at once (to
//! jobs not yet assigned);
//! a changed endpoint or key is a new worker. A bad file is refused whole: the table stays.

use crate::base::clock::unix_now;
use crate::pool::{keys_reload, worker_tls};
use crate::state::context::Context;
use crate::state::pool_state::{KeysReload, LastReload};
use crate::worker::identity::short_id;
use crate::worker::workers_file;
use std::time::Instant;

/// What both SIGHUP and `POST /reload` re-read: the keys file, the workers file, the worker TLS
/// files; `source` says who asked. The outcome (of the first two) is kept for `/pool`.
pub fn reload_files(ctx: &Context, source: &str) -> LastReload {
    let keys = keys_reload::reload(ctx);
    let outcome = reload_workers(ctx, source, keys);
    worker_tls::reload(ctx);
    outcome
}

/// Re-reads the workers file; `source` says who asked (`SIGHUP`, `POST /reload`). The outcome
/// is logged and kept for `/pool` (`last_reload`) with `keys`, the keys file's reload.
fn reload_workers(ctx: &Context, source: &str, keys: Option<KeysReload>) -> LastReload {
    let path = &ctx.config.workers;
    let sources = &ctx.config.source_addresses;
    let loaded = workers_file::load(path).map_err(|e| e.to_string());
    let checked = loaded.and_then(|mut specs| {
        workers_file::check_source_addresses(&specs, sources).map_err(|e| e.to_string())?;
        workers_file::apply_default_sources(&mut specs, sources);
        Ok(specs)
    });
    let specs = match checked {
        Ok(specs) => specs,
        Err(e) => {
            let error = format!("{}: {e}", path.display());
            log::error!("Reload ({source}) refused, the workers in use stay: {error}");
            let outcome = LastReload {
                at: unix_now(),
                source: source.to_string(),
                error: Some(error),
                keys,
                ..LastReload::default()
            };
            ctx.lock().last_reload = Some(outcome.clone());
            return outcome;
        }
    };
    let now = Instant::now();
    let mut outcome = LastReload {
        at: unix_now(),
        source: source.to_string(),
        keys,
        ..LastReload::default()
    };
    let mut st = ctx.lock();
    let mut drain_changed = Vec::new();
    let mut wanted: Vec<Option<_>> = specs.into_iter().map(Some).collect();
    for w in st.workers.iter_mut().filter(|w| !w.removed) {
        let same = wanted.iter_mut().find(|s| {
            s.as_ref()
                .is_some_and(|s| s.worker_id == w.spec.worker_id && s.endpoint == w.spec.endpoint)
        });
        match same.and_then(Option::take) {
            Some(spec) => {
                if spec.max_concurrent_jobs != w.spec.max_concurrent_jobs {
                    log::info!(
                        "Worker {}...: max_concurrent_jobs {} -> {}",
                        short_id(&spec.worker_id),
                        w.spec.max_concurrent_jobs,
                        spec.max_concurrent_jobs
                    );
                    outcome.changed += 1;
                }
                if spec.drain != w.spec.drain {
                    // The file's change wins over a drain made through the API.
                    w.draining = spec.drain;
                    drain_changed.push((spec.worker_id.clone(), spec.endpoint.clone()));
                    outcome.changed += 1;
                }
                if spec.labels != w.spec.labels {
                    log::info!(
                        "Worker {}...: labels [{}] -> [{}]",
                        short_id(&spec.worker_id),
                        w.spec.labels.join(", "),
                        spec.labels.join(", ")
                    );
                    outcome.changed += 1;
                }
                if spec.source_addresses != w.spec.source_addresses {
                    w.set_sources(spec.source_addresses.as_deref().unwrap_or_default());
                    outcome.changed += 1;
                }
                w.spec = spec;
            }
            None => {
                w.removed = true;
                w.draining = true;
                // A drain made through the API goes with the entry: a worker listed again
                // later is a new one, at once and after a restart alike.
                drain_changed.push((w.spec.worker_id.clone(), w.spec.endpoint.clone()));
                outcome.removed += 1;
                log::info!(
                    "Removed worker {}... at {}: no new job; forgotten once its {} active jobs ended",
                    short_id(&w.spec.worker_id),
                    w.spec.endpoint,
                    w.active_jobs
                );
            }
        }
    }
    for spec in wanted.into_iter().flatten() {
        // Listed again while jobs it ran before its removal are still on it: the same entry
        // takes it back, so those jobs keep counting against its max_concurrent_jobs.
        let still_busy = st.workers.iter_mut().find(|w| {
            w.removed
                && !w.is_free_slot()
                && w.spec.worker_id == spec.worker_id
                && w.spec.endpoint == spec.endpoint
        });
        if let Some(w) = still_busy {
            log::info!(
                "Trusted worker {}... at {} listed again; its {} active jobs count against it",
                short_id(&spec.worker_id),
                spec.endpoint,
                w.active_jobs
            );
            w.removed = false;
            w.draining = spec.drain;
            w.set_sources(spec.source_addresses.as_deref().unwrap_or_default());
            w.spec = spec;
            w.health.next_probe = now;
        } else {
            log::info!(
                "Added trusted worker: {}... at {}",
                short_id(&spec.worker_id),
                spec.endpoint
            );
            st.add_worker(spec, now);
        }
        outcome.added += 1;
    }
    st.last_reload = Some(outcome.clone());
    drop(st);
    let mut controls = ctx.store.controls.writer();
    for (worker_id, endpoint) in drain_changed {
        if let Err(e) = controls.record_drain(&worker_id, &endpoint, false) {
            log::warn!("Could not drop the recorded drain of a worker: {e}");
        }
    }
    drop(controls);
    log::info!(
        "Reloaded {} ({source}): {} added, {} removed, {} changed",
        path.display(),
        outcome.added,
        outcome.removed,
        outcome.changed
    );
    ctx.wake_health();
    ctx.wake_scheduler();
    outcome
}
