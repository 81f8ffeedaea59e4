//! trusted-pool: a job coordinator in front of allowlisted sandrun workers.
//!
//! See `ARCHITECTURE.md` for the map of modules, threads, the job state machine and the one lock.

pub mod api;
pub mod cli;
pub mod clock;
pub mod collect;
pub mod context;
pub mod dispatch;
pub mod health;
pub mod http_server;
pub mod identity;
pub mod job;
pub mod multipart_body;
pub mod outputs;
pub mod paths;
pub mod pool_state;
pub mod sandrun_client;
pub mod scheduler;
pub mod segments;
pub mod serve;
pub mod spool;
pub mod thread_cache;
pub mod tracker;
pub mod upload;
pub mod workers_file;
