//! Whether the job store's writer is stuck: since when its current round of work (a
//! transaction, its sync, a checkpoint) has run. A disk that stops answering (a frozen or
//! failing filesystem, a hung network mount) blocks that round inside a system call, where no
//! error ever comes back; the coordinator sees it here and stops promising jobs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A round of the writer that lasts this long is a stalled store: `/ready` says so and submits
/// are refused before their body is read. Longer than any round a working disk takes (a
/// checkpoint of a large WAL on an SD card takes a few seconds).
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// The writer's current round, watched from other threads.
pub struct WriterWatch {
    origin: Instant,
    /// Milliseconds after `origin`, plus one, when the current round began; 0 while idle.
    began_ms: AtomicU64,
    /// Whether the current stall was logged.
    logged: AtomicBool,
}

impl Default for WriterWatch {
    fn default() -> Self {
        WriterWatch {
            origin: Instant::now(),
            began_ms: AtomicU64::new(0),
            logged: AtomicBool::new(false),
        }
    }
}

impl WriterWatch {
    /// The writer begins a round of work.
    pub fn begin(&self) {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        self.began_ms.store(now, Ordering::Release);
    }

    /// The writer's round ended; a round that stalled is logged as over.
    pub fn end(&self) {
        let lasted = self.busy_for().unwrap_or_default();
        self.began_ms.store(0, Ordering::Release);
        if self.logged.swap(false, Ordering::AcqRel) && lasted >= STALL_AFTER {
            log::warn!(
                "The job store writes again, after {:.0} s without progress; submits are taken again",
                lasted.as_secs_f64()
            );
        }
    }

    /// How long the current round has run (`None` while idle).
    pub fn busy_for(&self) -> Option<Duration> {
        match self.began_ms.load(Ordering::Acquire) {
            0 => None,
            began => {
                let now = self.origin.elapsed().as_millis() as u64 + 1;
                Some(Duration::from_millis(now.saturating_sub(began)))
            }
        }
    }

    /// How long the store has made no progress, once that is [`STALL_AFTER`] or more; the
    /// first call that sees a stall logs it.
    pub fn stalled_for(&self) -> Option<Duration> {
        let busy = self.busy_for().filter(|b| *b >= STALL_AFTER)?;
        if !self.logged.swap(true, Ordering::AcqRel) {
            log::error!(
                "The job store has written nothing for {:.0} s: the disk under the state \
                 directory does not answer (frozen, failing, or a hung mount). Submits are \
                 refused until it writes again; jobs on workers go on",
                busy.as_secs_f64()
            );
        }
        Some(busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_is_timed_only_while_it_runs() {
        let watch = WriterWatch::default();
        assert_eq!(watch.busy_for(), None);
        watch.begin();
        assert!(watch.busy_for().is_some());
        assert_eq!(watch.stalled_for(), None, "a fresh round is no stall");
        watch.end();
        assert_eq!(watch.busy_for(), None);
    }
}
