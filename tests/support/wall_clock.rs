//! The coordinator under a wall clock the test moves (libfaketime, Debian `libfaketime`), its
//! monotonic clock left as it is: what an NTP step, or an operator's `date -s`, does to it.

use super::{get_json, poll_until, Coordinator};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// libfaketime's library for threaded programs, where installed.
pub fn faketime_library() -> Option<PathBuf> {
    let under = |dir: &str| {
        std::fs::read_dir(dir).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("faketime").join("libfaketimeMT.so.1"))
                .find(|p| p.exists())
        })
    };
    under("/usr/lib").or_else(|| {
        let direct = PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1");
        direct.exists().then_some(direct)
    })
}

/// A wall clock for a coordinator: a file libfaketime reads again every second.
pub struct FakeClock {
    library: String,
    file: PathBuf,
}

impl FakeClock {
    /// A clock in `dir`, at the real time; `None` (with the reason printed) without libfaketime.
    pub fn in_dir(dir: &Path) -> Option<FakeClock> {
        let Some(library) = faketime_library() else {
            eprintln!(
                "skipped: libfaketime is not installed (Debian package libfaketime; .ci/run installs it)"
            );
            return None;
        };
        let clock = FakeClock {
            library: library.to_string_lossy().into_owned(),
            file: dir.join("clock-offset"),
        };
        clock.set("+0");
        Some(clock)
    }

    /// Moves the clock: an offset (`+1d`, `-3600`) or an absolute time in UTC
    /// (`@1969-12-31 23:00:00`).
    pub fn set(&self, at: &str) {
        std::fs::write(&self.file, format!("{at}\n"))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.file.display()));
    }

    /// The environment that runs a coordinator on this clock. In UTC: libfaketime reads an
    /// absolute time (`@1969-12-31 23:00:00`) in the process's time zone, which west of UTC
    /// would put it past 1970.
    pub fn env(&self) -> [(&str, &str); 5] {
        [
            ("TZ", "UTC"),
            ("LD_PRELOAD", self.library.as_str()),
            (
                "FAKETIME_TIMESTAMP_FILE",
                self.file.to_str().unwrap_or_default(),
            ),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("FAKETIME_CACHE_DURATION", "1"),
        ]
    }
}

/// Unix seconds now, on this (unfaked) clock.
pub fn real_unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Waits until the coordinator's wall clock (`/pool`'s `time`) is about `offset` seconds away
/// from this one.
pub fn wait_clock(coordinator: &Coordinator, offset: f64, deadline: Duration) {
    let seen = poll_until(deadline, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        let time = pool["time"].as_f64()?;
        ((time - real_unix_now() - offset).abs() < 600.0).then_some(())
    });
    assert!(
        seen.is_some(),
        "the coordinator's clock did not move by {offset} s"
    );
}
