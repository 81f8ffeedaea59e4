//! Shared harness of the integration tests: an in-process fake sandrun worker, a black-hole
//! endpoint, the coordinator binary under control, and small HTTP, multipart and polling helpers.

// Each integration test uses its own subset of this harness.
#![allow(dead_code)]

#[path = "../../src/bin/dev-worker/sandrun.rs"]
pub mod sandrun;

mod black_hole;
mod client;
mod coordinator;
pub mod devtools;
mod fake_worker;
pub mod follow;
mod form;
pub mod fuzz;
pub mod health_only;
pub mod lifecycle;
pub mod page_server;
pub mod sandrun_client;
pub mod tls;
mod util;
pub mod wall_clock;

// The flat API below is re-exported for every test; each test uses only some of it.
#[allow(unused_imports)]
pub use self::{
    black_hole::BlackHole,
    client::{
        get, get_bytes, get_json, post, post_json, post_multipart, send, send_with, status_of,
        Reply,
    },
    coordinator::{
        check_state_dir, check_state_dir_with, workers_dir, write_workers_json, Coordinator,
    },
    fake_worker::FakeWorker,
    form::Form,
    sandrun::control::{ReceivedFile, ReceivedJob},
    sandrun::{Knobs, Recording, StreamKnobs, WorkerKey},
    util::{poll_until, proxy_v2_header, tar_gz, temp_dir, untar_gz, untar_gz_into},
};
