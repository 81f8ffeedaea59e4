//! The `Idempotency-Key`s of submits being received or recorded right now: a second submit
//! with the same key (a client's retry that overtook its first attempt) is told to wait, so
//! that one key never makes two jobs.

use crate::base::sync::lock;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// A key, scoped by the client key that gave it (None: the coordinator runs without keys).
type Scoped = (Option<String>, String);

/// The keys held by submits in progress: at most one per submit being handled, so at most
/// as many as the connections served at once (`--max-connections`).
#[derive(Default)]
pub struct SubmitKeys {
    held: Arc<Mutex<HashSet<Scoped>>>,
}

impl SubmitKeys {
    /// Holds `key` of `owner` until the returned guard is dropped; `None` while another submit
    /// holds it.
    pub fn hold(&self, owner: Option<&str>, key: &str) -> Option<HeldKey> {
        let scoped = (owner.map(str::to_string), key.to_string());
        lock(&self.held).insert(scoped.clone()).then(|| HeldKey {
            held: Arc::clone(&self.held),
            scoped,
        })
    }
}

/// A key held by one submit; dropping it lets the next submit with the key in.
pub struct HeldKey {
    held: Arc<Mutex<HashSet<Scoped>>>,
    scoped: Scoped,
}

impl Drop for HeldKey {
    fn drop(&mut self) {
        lock(&self.held).remove(&self.scoped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_held_once_per_owner_until_its_guard_drops() {
        let keys = SubmitKeys::default();
        let first = keys.hold(Some("alice"), "k1");
        assert!(first.is_some());
        assert!(keys.hold(Some("alice"), "k1").is_none());
        assert!(keys.hold(Some("bob"), "k1").is_some());
        assert!(keys.hold(None, "k1").is_some());
        drop(first);
        assert!(keys.hold(Some("alice"), "k1").is_some());
    }
}
