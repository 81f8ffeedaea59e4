//! Locking that survives a panic (every shared table recovers a poisoned mutex), and slots:
//! a limited number of things at once, counted without a lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Takes a mutex, recovering it if a panicking thread poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One of a limited number of slots counted in a shared counter, given back when dropped
/// (wherever the work that holds it ends).
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes one of `limit` slots of `count`; None when all are taken.
    pub fn take(count: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(count)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
