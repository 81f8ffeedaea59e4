//! Locking that survives a panic: every shared table recovers a poisoned mutex.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Takes a mutex, recovering it if a panicking thread poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
