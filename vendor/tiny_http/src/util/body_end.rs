//! Patched: whether a request's body was read to its end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared between a request and its body's reader: set once the reader reached the body's end.
/// A request answered before that closes its connection: the rest of its body is unread, and
/// read as a next request it would be one the client never framed as such.
#[derive(Debug, Clone)]
pub struct BodyEnd(Arc<AtomicBool>);

impl BodyEnd {
    /// A flag, already set for a body that is whole from the start (none, or read already).
    pub fn new(reached: bool) -> Self {
        BodyEnd(Arc::new(AtomicBool::new(reached)))
    }

    /// Records that the body's end was read.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// True once the body's end was read.
    pub fn reached(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
