//! The threads that move jobs: the scheduler, dispatches, per-worker trackers, the health
//! checker and result collection. May import `state`, `worker`, `store` and `base`.

pub mod collect;
pub mod control;
pub mod dispatch;
pub mod health;
pub mod reload;
pub mod scheduler;
pub mod tracker;
