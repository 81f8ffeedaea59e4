//! Warnings of what expires: the client keys and the certificates the coordinator presents.
//! They are logged when those are read (at start, on SIGHUP) and again once a day while they
//! are due, so that a coordinator left running for months tells of a key or certificate about to
//! end without waiting for a restart.

use crate::base::api_keys::{self, KeySet};
use crate::base::cert_expiry::{ChainExpiry, ExpiryWarning};
use crate::base::clock::unix_now;
use crate::state::certificates::Presented;
use crate::state::context::Context;

/// Logs the warnings of the keys `keys` at unix time `now`.
pub fn warn_of_keys(keys: &KeySet, now: u64) {
    for warning in api_keys::expiry_warnings(keys, now) {
        log::warn!("{warning}");
    }
}

/// Logs the warning, if any, of the certificate presented as `what` at unix time `now`: an
/// error once it expired, a warning within two weeks of it.
fn warn_of_certificate(what: Presented, expiry: Option<&ChainExpiry>, now: u64) {
    match expiry.and_then(|e| e.warning(what.described(), now)) {
        Some(ExpiryWarning::Expired(line)) => log::error!("{line}"),
        Some(ExpiryWarning::Soon(line)) => log::warn!("{line}"),
        None => {}
    }
}

/// Records the certificate now presented as `what`, and warns of it when due.
pub fn use_certificate(ctx: &Context, what: Presented, expiry: Option<ChainExpiry>) {
    warn_of_certificate(what, expiry.as_ref(), unix_now() as u64);
    ctx.certificates.set(what, expiry);
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
        warn_of_certificate(what, ctx.certificates.get(what).as_ref(), now);
    }
}
