//! Whether writes to the state directory's segment files make progress: an upload spooled on
//! its upload thread, collected results on a tracker thread. A disk that stops answering blocks
//! such a write inside a system call, before any record reaches the job store's writer, so the
//! writer's own watch ([`crate::store::writer_watch`]) would not see it: an idle coordinator
//! on a frozen disk would say it is ready while every large upload hangs. Many threads write at
//! once, so this watch times the lack of progress, not one write: while writes are under way,
//! how long since one of them ended (or since the first began).

use crate::store::writer_watch::STALL_AFTER;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The segment writes under way, watched from other threads.
#[derive(Debug)]
pub struct SegmentWatch {
    origin: Instant,
    /// Writes under way.
    pending: AtomicU64,
    /// Milliseconds after `origin` when a write last ended, or when writes began after none.
    progress_ms: AtomicU64,
    /// Whether the current stall was logged.
    logged: AtomicBool,
}

impl Default for SegmentWatch {
    fn default() -> Self {
        SegmentWatch {
            origin: Instant::now(),
            pending: AtomicU64::new(0),
            progress_ms: AtomicU64::new(0),
            logged: AtomicBool::new(false),
        }
    }
}

/// One write under way; it ends when this is dropped (however the write ended).
pub struct Writing<'a>(&'a SegmentWatch);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let watch = self.0;
        let stalled = watch.idle_for();
        watch.progress_ms.store(watch.now_ms(), Ordering::Release);
        watch.pending.fetch_sub(1, Ordering::AcqRel);
        if watch.logged.swap(false, Ordering::AcqRel) {
            log::warn!(
                "Writes to the state directory's segment files go on again, after {:.0} s without progress; submits are taken again",
                stalled.as_secs_f64()
            );
        }
    }
}

impl SegmentWatch {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// A write begins; it ends when the returned guard is dropped.
    pub fn writing(&self) -> Writing<'_> {
        if self.pending.fetch_add(1, Ordering::AcqRel) == 0 {
            self.progress_ms.store(self.now_ms(), Ordering::Release);
        }
        Writing(self)
    }

    /// How long writes have been under way without one ending.
    fn idle_for(&self) -> Duration {
        let since = self.progress_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(since))
    }

    /// How long writes under way have made no progress, once that is [`STALL_AFTER`] or more;
    /// the first call that sees a stall logs it.
    pub fn stalled_for(&self) -> Option<Duration> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let idle = self.idle_for();
        if idle < STALL_AFTER {
            return None;
        }
        if !self.logged.swap(true, Ordering::AcqRel) {
            log::error!(
                "Writes to the state directory's segment files (uploads, collected results) have \
                 made no progress for {:.0} s: the disk under the state directory does not \
                 answer (frozen, failing, or a hung mount). Submits are refused until it writes \
                 again",
                idle.as_secs_f64()
            );
        }
        Some(idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_under_way_without_progress_are_a_stall() {
        let watch = SegmentWatch::default();
        assert_eq!(watch.stalled_for(), None, "no write, no stall");
        let first = watch.writing();
        let second = watch.writing();
        assert_eq!(watch.stalled_for(), None, "fresh writes are no stall");
        drop(first);
        assert_eq!(watch.stalled_for(), None, "a write ended just now");
        drop(second);
        assert_eq!(watch.pending.load(Ordering::Acquire), 0);
        // A write under way since long ago, none ended since.
        let long_ago = Instant::now()
            .checked_sub(STALL_AFTER * 2)
            .expect("a monotonic clock that old");
        let aged = SegmentWatch {
            origin: long_ago,
            pending: AtomicU64::new(1),
            ..SegmentWatch::default()
        };
        assert!(aged.stalled_for() >= Some(STALL_AFTER));
        aged.pending.store(0, Ordering::Release);
        assert_eq!(aged.stalled_for(), None, "nothing under way");
    }
}
