//! trusted-pool: a job coordinator in front of allowlisted sandrun workers.
//!
//! See `ARCHITECTURE.md` for the map of folders, threads, the job state machine and the locks.
//! Layers, top to bottom (a module may import only its own folder and the folders below it):
//! `cli` → `serve` → `http` → `pool` → `state` → `worker` → `store` → `base`.

pub mod base;
pub mod cli;
pub mod http;
pub mod pool;
pub mod serve;
pub mod state;
pub mod store;
pub mod worker;
