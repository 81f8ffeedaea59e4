//! Everything about talking to a sandrun worker: the HTTP client and its dialect, the outgoing
//! multipart body, the WebSocket stream client, result signatures, worker identities and the allowlist file. May import `store` (the outgoing
//! body streams an upload from the spool) and `base`.

pub mod answer_head;
pub mod bound_request;
pub mod bound_socket;
pub mod client;
pub mod identity;
pub mod job_hash;
pub mod multipart_body;
pub mod pace;
pub mod raw_get;
pub mod sandrun_json;
pub mod sandrun_manifest;
pub mod save_rules;
pub mod server_certificate;
pub mod signature;
pub mod tls;
pub mod websocket;
pub mod workers_file;
