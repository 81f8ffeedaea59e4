//! The client-facing front: the handler pool over tiny_http, routing, client keys and client
//! addresses (through trusted proxies), replies and
//! errors, the JSON views, the submit upload, outputs and logs, job followers, sandrun's own
//! client API and CORS, the Prometheus metrics, the dashboard, the state directory's snapshot.
//! May import `pool`, `state`, `worker`, `store` and `base`.

pub mod access_log;
pub mod auth;
pub mod bulk_cancel;
pub mod checked_output;
pub mod client_address;
pub mod cors;
pub mod dashboard;
pub mod first_piece;
pub mod follow;
pub mod follow_wire;
pub mod grant;
pub mod headers;
pub mod listing;
pub mod metrics;
pub mod output_entry;
pub mod outputs;
pub mod query;
pub mod redact;
pub mod replay;
pub mod replies;
pub mod routes;
pub mod sandrun;
pub mod sandrun_parts;
pub mod server;
pub mod snapshot;
pub mod stored_view;
pub mod submit_key;
pub mod upload;
pub mod views;
pub mod waiting;
