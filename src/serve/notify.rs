//! systemd's readiness protocol (`Type=notify`): one datagram per state change to the unix
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). `READY=1`
//! once the coordinator serves, `STOPPING=1` when it begins to stop, and `WATCHDOG=1` every half
//! `$WATCHDOG_USEC` while the pool table can be locked (a wedged coordinator stops pinging and
//! systemd restarts it). Without `$NOTIFY_SOCKET` every call does nothing.

use crate::state::context::Context;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The link to systemd, if the coordinator runs under it.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`; a missing or unusable one gives a notifier that does nothing
    /// (logged when it is set but unusable).
    pub fn from_env() -> Notifier {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        let name = name.to_string_lossy().into_owned();
        let address = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
            None => SocketAddr::from_pathname(&name),
        };
        let target = address.and_then(|a| Ok((UnixDatagram::unbound()?, a)));
        match target {
            Ok(target) => Notifier {
                target: Some(target),
            },
            Err(e) => {
                log::warn!(
                    "NOTIFY_SOCKET={name} cannot be used ({e}); systemd is not told of readiness"
                );
                Notifier { target: None }
            }
        }
    }

    /// Sends one state line (`READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=...`).
    pub fn notify(&self, state: &str) {
        if let Some((socket, address)) = &self.target {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), address) {
                log::debug!("Could not notify systemd of {state:?}: {e}");
            }
        }
    }

    /// True when `$NOTIFY_SOCKET` is in use.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }
}

/// The watchdog interval systemd asks for (`$WATCHDOG_USEC`, for this process when
/// `$WATCHDOG_PID` names one), if any.
fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_string_lossy().trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Starts the watchdog pinger when systemd asks for one: `WATCHDOG=1` every half interval,
/// each after taking and releasing the pool lock.
pub fn start_watchdog(notifier: &Arc<Notifier>, ctx: &Arc<Context>) -> std::io::Result<()> {
    let Some(interval) = watchdog_interval().filter(|_| notifier.is_active()) else {
        return Ok(());
    };
    let notifier = Arc::clone(notifier);
    let ctx = Arc::clone(ctx);
    let every = interval / 2;
    log::info!(
        "systemd watchdog: pinging every {:.1} s",
        every.as_secs_f64()
    );
    thread::Builder::new()
        .name("watchdog".to_string())
        .stack_size(64 * 1024)
        .spawn(move || loop {
            drop(ctx.lock());
            notifier.notify("WATCHDOG=1");
            thread::sleep(every);
        })
        .map(|_| ())
}
