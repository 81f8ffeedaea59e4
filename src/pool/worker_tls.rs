//! Re-reading the TLS settings of `https://` workers on SIGHUP or `POST /reload`, so that a
//! rotated client certificate or CA takes effect without a restart; the `https://` workers are
//! then probed again at once, and the certificates they present read again.

use crate::base::tls;
use crate::pool::expiry;
use crate::state::certificates::Presented;
use crate::state::context::Context;
use std::time::Instant;

/// Re-reads the TLS settings of `https://` workers: `--worker-ca` (or the system's CA
/// certificates) and `--worker-tls-cert`/`--worker-tls-key`, when they are given or an
/// `https://` worker is listed. Calls made from then on use them; a file that does not parse,
/// or a key that does not match, is refused and logged, and the old settings stay.
pub fn reload(ctx: &Context) {
    let settings = &ctx.config.worker_tls;
    let https_listed = ctx
        .lock()
        .workers
        .iter()
        .any(|w| !w.removed && w.spec.over_tls());
    if !settings.wanted(https_listed) {
        return;
    }
    let trusted = match &settings.ca {
        Some(ca) => format!("CA certificates from {}", ca.display()),
        None => "the system's CA certificates".to_string(),
    };
    let presented = match &settings.client_cert {
        Some((cert, _)) => format!("client certificate from {}", cert.display()),
        None => "no client certificate".to_string(),
    };
    match tls::client_config(settings) {
        Ok(loaded) => {
            ctx.client.replace_tls(loaded.config);
            log::info!("Worker TLS settings reloaded: {trusted}, {presented}");
            expiry::use_certificate(ctx, Presented::WorkerClient, loaded.expiry);
            probe_https_workers(ctx);
        }
        Err(e) => log::error!("Worker TLS settings not reloaded, the old ones stay: {e}"),
    }
}

/// Has the health checker probe every `https://` worker at once, reading the certificate its
/// endpoint presents again.
fn probe_https_workers(ctx: &Context) {
    let now = Instant::now();
    let mut st = ctx.lock();
    for w in st.workers.iter_mut() {
        if w.spec.over_tls() {
            w.health.next_probe = now;
            w.health.certificate_due = now;
        }
    }
    drop(st);
    ctx.wake_health();
}
