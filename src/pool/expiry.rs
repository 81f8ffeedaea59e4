//! Warnings of what expires: the client keys, the certificates the coordinator presents and
//! those its `https://` workers present. They are logged when those are read (at start, on
//! SIGHUP, when a worker's certificate is first seen or changes) and again once a day while
//! they are due, so that a coordinator left running for months tells of a key or certificate
//! about to end without waiting for a restart.

use crate::base::api_keys::{self, KeySet};
use crate::base::cert_expiry::{ChainExpiry, ExpiryWarning};
use crate::base::clock::{unix_now, utc_text};
use crate::state::certificates::Presented;
use crate::state::context::Context;
use crate::worker::identity::short_id;

/// Logs the warnings of the keys `keys` at unix time `now`.
pub fn warn_of_keys(keys: &KeySet, now: u64) {
    for warning in api_keys::expiry_warnings(keys, now) {
        log::warn!("{warning}");
    }
}

/// Logs the warning, if any, of the certificate `what` at unix time `now`: an error once it
/// expired, a warning within two weeks of it.
fn warn_of_certificate(what: &str, expiry: Option<&ChainExpiry>, now: u64) {
    match expiry.and_then(|e| e.warning(what, now)) {
        Some(ExpiryWarning::Expired(line)) => log::error!("{line}"),
        Some(ExpiryWarning::Soon(line)) => log::warn!("{line}"),
        None => {}
    }
}

/// Records the certificate now presented as `what`, and warns of it when due.
pub fn use_certificate(ctx: &Context, what: Presented, expiry: Option<ChainExpiry>) {
    warn_of_certificate(what.described(), expiry.as_ref(), unix_now() as u64);
    ctx.certificates.set(what, expiry);
}

/// What the log calls the certificate of the worker whose id starts `short`.
fn worker_certificate(short: &str) -> String {
    format!("The TLS certificate of worker {short}...")
}

/// Warns, when due, of a certificate the endpoint of the worker whose id starts `short` is
/// seen to present for the first time (at start, or renewed, or replaced).
pub fn worker_certificate_read(short: &str, expiry: &ChainExpiry) {
    log::debug!(
        "Worker {short}... presents a certificate that expires at {}",
        utc_text(expiry.not_after)
    );
    warn_of_certificate(&worker_certificate(short), Some(expiry), unix_now() as u64);
}

/// Logs every warning due once a day (the first call, at start, logs them at once).
pub fn remind_daily(ctx: &Context) {
    let now = unix_now() as u64;
    if !ctx.certificates.reminder_due(now) {
        return;
    }
    if let Some(keys) = ctx.keys.get() {
        warn_of_keys(&keys, now);
    }
    for what in Presented::ALL {
        warn_of_certificate(what.described(), ctx.certificates.get(what).as_ref(), now);
    }
    let workers: Vec<(String, ChainExpiry)> = ctx
        .lock()
        .listed_workers()
        .filter_map(|w| {
            Some((
                short_id(&w.spec.worker_id).to_string(),
                w.health.certificate.clone()?,
            ))
        })
        .collect();
    for (short, expiry) in workers {
        warn_of_certificate(&worker_certificate(&short), Some(&expiry), now);
    }
}
