//! Re-reading the `--api-keys` file on SIGHUP or `POST /reload`: a valid file replaces the
//! keys in force at once (live followers are checked against it); a bad one is refused, logged
//! and counted (`/metrics`), and the keys in force stay.

use crate::base::api_keys;
use crate::base::clock::unix_now;
use crate::pool::expiry;
use crate::state::context::Context;
use crate::state::pool_state::KeysReload;

/// Re-reads the keys file; `None` without `--api-keys`.
pub fn reload(ctx: &Context) -> Option<KeysReload> {
    let path = ctx.config.api_keys.as_ref()?;
    Some(match api_keys::load(path) {
        Ok(keys) => {
            let in_force = keys.keys().len();
            log::info!(
                "Client keys reloaded: {in_force} from {} ({})",
                path.display(),
                keys.names()
            );
            expiry::warn_of_keys(&keys, unix_now() as u64);
            // The figures of removed keys with no job in flight go now; those with jobs in
            // flight, when their last one ends.
            ctx.lock().keys_listed(Some(&keys));
            ctx.keys.set(keys);
            ctx.events.recheck_followers();
            KeysReload {
                error: None,
                in_force,
            }
        }
        Err(e) => {
            let error = format!("{}: {e}", path.display());
            log::error!("Client keys NOT reloaded, the previous keys stay in force: {error}");
            ctx.metrics.key_reload_failed();
            KeysReload {
                error: Some(error),
                in_force: ctx.keys.get().map_or(0, |keys| keys.keys().len()),
            }
        }
    })
}
