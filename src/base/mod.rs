//! Leaf types and helpers: the job record, the settings, the client keys, time, path handling, locking and
//! the reusable thread cache. Imports nothing of the crate outside `base`.

pub mod api_keys;
pub mod clock;
pub mod config;
pub mod job;
pub mod paths;
pub mod sync;
pub mod thread_cache;
