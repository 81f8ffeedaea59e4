//! Whether writes to the state directory make progress. A disk that stops answering (a frozen
//! or failing filesystem, a hung network mount) blocks a write inside a system call, where no
//! error ever comes back; the coordinator sees it here and stops promising jobs. Two kinds of
//! work are watched ([`Watched`]): the job store's writer (its rounds: a transaction, its sync,
//! a checkpoint), and the writes to a directory's segment files (an upload on its upload
//! thread, collected results on a tracker thread), which block before any record reaches the
//! writer. Several threads may write at once, so a watch times the lack of progress, not one
//! piece of work: while work is under way, how long since a piece of it ended (or since the
//! first began).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Work under way that makes no progress this long is a stalled store: `/ready` says so and
/// submits are refused before their body is read. Longer than any round a working disk takes (a
/// checkpoint of a large WAL on an SD card takes a few seconds).
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// What a watch watches; it says so in its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// The job store's writer: one round of work at a time.
    Writer,
    /// The writes to one directory's segment files, from any thread.
    Segments,
}

impl Watched {
    fn log_stall(self, idle: Duration) {
        let secs = idle.as_secs_f64();
        match self {
            Self::Writer => log::error!(
                "The job store has written nothing for {secs:.0} s: the disk under the state \
                 directory does not answer (frozen, failing, or a hung mount). Submits are \
                 refused until it writes again; jobs on workers go on"
            ),
            Self::Segments => log::error!(
                "Writes to the state directory's segment files (uploads, collected results) have \
                 made no progress for {secs:.0} s: the disk under the state directory does not \
                 answer (frozen, failing, or a hung mount). Submits are refused until it writes \
                 again"
            ),
        }
    }

    fn log_progress_again(self, idle: Duration) {
        let secs = idle.as_secs_f64();
        match self {
            Self::Writer => log::warn!(
                "The job store writes again, after {secs:.0} s without progress; submits are taken again"
            ),
            Self::Segments => log::warn!(
                "Writes to the state directory's segment files go on again, after {secs:.0} s without progress; submits are taken again"
            ),
        }
    }
}

/// Work under way and its progress, watched from other threads.
#[derive(Debug)]
pub struct StallWatch {
    watched: Watched,
    origin: Instant,
    /// Pieces of work under way.
    pending: AtomicU64,
    /// Milliseconds after `origin` when a piece of work last ended, or when work began after
    /// none.
    progress_ms: AtomicU64,
    /// Whether the current stall was logged.
    logged: AtomicBool,
}

impl Default for StallWatch {
    /// A watch of the job store's writer, as the store's figures hold it.
    fn default() -> Self {
        StallWatch::new(Watched::Writer)
    }
}

/// One piece of work under way; it ends when this is dropped (however the work ended).
pub struct Writing<'a>(&'a StallWatch);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl StallWatch {
    /// A watch of `watched`, with nothing under way.
    pub fn new(watched: Watched) -> Self {
        StallWatch {
            watched,
            origin: Instant::now(),
            pending: AtomicU64::new(0),
            progress_ms: AtomicU64::new(0),
            logged: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// A piece of work begins; each is ended by one [`StallWatch::end`].
    pub fn begin(&self) {
        if self.pending.fetch_add(1, Ordering::AcqRel) == 0 {
            self.progress_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A piece of work ended: that is progress. The end of a stall that was logged is logged.
    pub fn end(&self) {
        let idle = self.busy_for().unwrap_or_default();
        self.progress_ms.store(self.now_ms(), Ordering::Release);
        self.pending.fetch_sub(1, Ordering::AcqRel);
        if self.logged.swap(false, Ordering::AcqRel) {
            self.watched.log_progress_again(idle);
        }
    }

    /// A piece of work begins; it ends when the returned guard is dropped.
    pub fn writing(&self) -> Writing<'_> {
        self.begin();
        Writing(self)
    }

    /// How long work under way has made no progress (`None` while nothing is under way).
    pub fn busy_for(&self) -> Option<Duration> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let since = self.progress_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// How long work under way has made no progress, once that is [`STALL_AFTER`] or more; the
    /// first call that sees a stall logs it.
    pub fn stalled_for(&self) -> Option<Duration> {
        let idle = self.busy_for().filter(|idle| *idle >= STALL_AFTER)?;
        if !self.logged.swap(true, Ordering::AcqRel) {
            self.watched.log_stall(idle);
        }
        Some(idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_is_timed_only_while_it_runs() {
        let watch = StallWatch::default();
        assert_eq!(watch.busy_for(), None);
        watch.begin();
        assert!(watch.busy_for().is_some());
        assert_eq!(watch.stalled_for(), None, "a fresh round is no stall");
        watch.end();
        assert_eq!(watch.busy_for(), None);
    }

    #[test]
    fn only_writes_under_way_without_progress_are_a_stall() {
        let watch = StallWatch::new(Watched::Segments);
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
        let aged = StallWatch {
            origin: long_ago,
            pending: AtomicU64::new(1),
            ..StallWatch::new(Watched::Segments)
        };
        assert!(aged.stalled_for() >= Some(STALL_AFTER));
        aged.pending.store(0, Ordering::Release);
        assert_eq!(aged.stalled_for(), None, "nothing under way");
    }
}
