//! The threads that move jobs: the scheduler, dispatches, per-worker trackers, the health
//! checker (and its daily reminder of expiring keys and certificates), queue timeouts, result
//! collection, worker streams, job announcements, reruns of lost jobs and recovery at start;
//! the controls and reloads that change them while they run. May import `state`, `worker`,
//! `store` and `base`.

pub mod announce;
pub mod collect;
pub mod collect_retry;
pub mod control;
pub mod dispatch;
pub mod expiry;
pub mod health;
pub mod keys_reload;
pub mod queue_timeout;
pub mod quota_stats;
pub mod recovery;
pub mod reload;
pub mod rerun;
pub mod reused_ids;
pub mod scheduler;
pub mod stream;
pub mod tracker;
pub mod worker_tls;
