//! The shared in-memory state every thread works on: the pool table (workers, jobs, queue)
//! behind one mutex, and the `Context` that bundles it with the spool, the worker client and
//! the wake-up signals, and the coordinator's metrics. May import `worker`, `store` and `base`.

pub mod certificates;
pub mod context;
pub mod cpu_window;
pub mod events;
pub mod metrics;
pub mod pool_state;
pub mod queue;
pub mod request_rate;
pub mod settled_views;
pub mod sources;
pub mod submit_keys;
pub mod submits_pause;
pub mod watch;
