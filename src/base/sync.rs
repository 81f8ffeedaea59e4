//! Locking that survives a panic (every shared table recovers a poisoned mutex), slots: a
//! limited number of things at once, counted without a lock, places: a slot held within its
//! client address's share too, and parcels: a value handed to a thread that may never start.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tiny_http::{AddressShares, Share};

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

/// One of a limited number of places a client holds for long (a followed stream, a parked
/// request): a [`Slot`] of the whole limit, and a unit of its client address's share. Dropping
/// it gives both back.
pub struct Place {
    _slot: Slot,
    _share: Option<Share>,
}

/// Why a place was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PlaceRefused {
    /// All of the limit (this many) are taken.
    Full(usize),
    /// The client's address holds this many already, its whole share.
    AddressFull(usize),
}

impl Place {
    /// Takes a place for the client at `client` (`None`: counted in no share): a unit of its
    /// address's share of `shares`, then one of `limit` slots of `count`. A refusal holds
    /// nothing.
    pub fn take(
        count: &Arc<AtomicUsize>,
        limit: usize,
        shares: &Arc<AddressShares>,
        client: Option<IpAddr>,
    ) -> Result<Place, PlaceRefused> {
        let share = client
            .map(|client| shares.take(client))
            .transpose()
            .map_err(|used| PlaceRefused::AddressFull(used.0))?;
        let slot = Slot::take(count, limit).ok_or(PlaceRefused::Full(limit))?;
        Ok(Place {
            _slot: slot,
            _share: share,
        })
    }
}

/// A value handed to a task on another thread, that its sender can take back when the thread
/// could not be started (a request to answer with an error instead).
pub struct Parcel<T>(Arc<Mutex<Option<T>>>);

impl<T> Parcel<T> {
    /// Wraps `value`; [`Parcel::share`] gives the task its own handle.
    pub fn new(value: T) -> Self {
        Parcel(Arc::new(Mutex::new(Some(value))))
    }

    /// Another handle on the same value.
    pub fn share(&self) -> Self {
        Parcel(Arc::clone(&self.0))
    }

    /// The value, to whichever handle takes it first.
    pub fn take(&self) -> Option<T> {
        lock(&self.0).take()
    }
}
