//! The log level while the coordinator runs: `--log-level`, changed by an operator for a while
//! (`POST /log-level`), then back on its own. `debug` on a busy pool writes a line per job
//! several times over, so a change that is forgotten does not flood the log for months.

use crate::base::sync::lock;
use log::LevelFilter;
use serde_json::{json, Value};
use std::io;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Stack of the thread that puts the level back.
const REVERT_STACK: usize = 64 * 1024;

/// The log level in force and the change that set it.
pub struct LogLevel {
    configured: LevelFilter,
    change: Mutex<Change>,
    /// Signalled at every change: the thread waiting to undo an older one ends.
    changed: Condvar,
}

/// An operator's change of the level.
#[derive(Debug, Default)]
struct Change {
    /// Counts the changes, so that a thread waiting to undo one knows it was overtaken.
    generation: u64,
    /// The level set (`None`: `--log-level`).
    level: Option<LevelFilter>,
    /// When it goes back to `--log-level` (`None`: when changed again).
    until: Option<Instant>,
    /// Who set it, for `/pool` (the key's name; `None` on an open coordinator).
    by: Option<String>,
}

impl LogLevel {
    /// `--log-level`, in force.
    pub fn new(configured: LevelFilter) -> Self {
        LogLevel {
            configured,
            change: Mutex::new(Change::default()),
            changed: Condvar::new(),
        }
    }

    /// The level given at start.
    pub fn configured(&self) -> LevelFilter {
        self.configured
    }

    /// Sets `level` for `lasting` (then back to `--log-level`; `None`: until changed again);
    /// `by` names the key, if any. Fails only when no thread can be started to put it back,
    /// and then changes nothing.
    pub fn set(
        self: &Arc<Self>,
        level: LevelFilter,
        lasting: Option<Duration>,
        by: Option<String>,
    ) -> io::Result<()> {
        let mut change = lock(&self.change);
        let generation = change.generation + 1;
        if let Some(lasting) = lasting {
            let this = Arc::clone(self);
            thread::Builder::new()
                .name("log-level".to_string())
                .stack_size(REVERT_STACK)
                .spawn(move || this.put_back_after(generation, lasting))?;
        }
        *change = Change {
            generation,
            level: Some(level),
            until: lasting.map(|l| Instant::now() + l),
            by,
        };
        log::set_max_level(level);
        self.changed.notify_all();
        Ok(())
    }

    /// Waits `lasting`, then puts `--log-level` back unless another change came meanwhile.
    fn put_back_after(&self, generation: u64, lasting: Duration) {
        let until = Instant::now() + lasting;
        let mut change = lock(&self.change);
        loop {
            if change.generation != generation {
                return;
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            change = self
                .changed
                .wait_timeout(change, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        log::info!(
            "Log level back to {} (--log-level) after {:.0} s at {}",
            self.configured.as_str().to_lowercase(),
            lasting.as_secs_f64(),
            change
                .level
                .unwrap_or(self.configured)
                .as_str()
                .to_lowercase()
        );
        *change = Change {
            generation: generation + 1,
            ..Change::default()
        };
        log::set_max_level(self.configured);
    }

    /// The level in force, for `/pool`: `level`, `configured`, and while an operator's change
    /// lasts, `back_in_seconds` (`null`: until changed again) and `by`.
    pub fn view(&self) -> Value {
        let change = lock(&self.change);
        let name = |l: LevelFilter| l.as_str().to_lowercase();
        let changed = change.level.map(|level| {
            json!({
                "back_in_seconds": change
                    .until
                    .map(|u| u.saturating_duration_since(Instant::now()).as_secs_f64()),
                "by": change.by,
                "level": name(level),
            })
        });
        json!({
            "level": name(change.level.unwrap_or(self.configured)),
            "configured": name(self.configured),
            "changed": changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_goes_back_on_its_own_unless_another_came() {
        let level = Arc::new(LogLevel::new(LevelFilter::Info));
        level
            .set(LevelFilter::Debug, Some(Duration::from_millis(50)), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(level.view()["level"], "debug");
        let end = Instant::now() + Duration::from_secs(10);
        while level.view()["level"] != "info" {
            assert!(Instant::now() < end, "{}", level.view());
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(level.view()["changed"], Value::Null);

        level
            .set(LevelFilter::Trace, Some(Duration::from_millis(50)), None)
            .unwrap_or_else(|e| panic!("{e}"));
        level
            .set(LevelFilter::Warn, None, Some("ops".to_string()))
            .unwrap_or_else(|e| panic!("{e}"));
        thread::sleep(Duration::from_millis(200));
        let view = level.view();
        assert_eq!(view["level"], "warn", "{view}");
        assert_eq!(view["changed"]["by"], "ops", "{view}");
        assert_eq!(view["changed"]["back_in_seconds"], Value::Null, "{view}");
    }
}
