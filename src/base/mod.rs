//! Leaf types and helpers: the job record, the settings, the client keys, time, path handling,
//! locking and slots, the log level an operator changes for a while, log lines of lasting
//! failures held to one a minute, a sleeping queue between threads, the reusable thread cache,
//! the process's own figures, open-file limit and memory-map limit, telling the coordinator's own shortages from
//! a worker's faults, whether a client hung up, a connection's send timeout, giving free heap pages back, hex digits,
//! a JSON object's strings read piece by piece, TLS settings from PEM files and when their certificates expire.
//! Imports nothing of the crate outside `base`.

pub mod addresses;
pub mod api_keys;
pub mod cert_expiry;
pub mod clock;
pub mod config;
pub mod fd_limit;
pub mod file_kinds;
pub mod gunzip;
pub mod hangup;
pub mod heap;
pub mod hex;
pub mod job;
pub mod json_list;
pub mod json_stream;
pub mod labels;
pub mod line_file;
pub mod log_level;
pub mod log_repeats;
pub mod mailbox;
pub mod map_limit;
pub mod niceness;
pub mod paths;
pub mod process;
pub mod send_timeout;
pub mod shortage;
pub mod small_file;
pub mod sync;
pub mod tar_scan;
pub mod targz;
pub mod thread_cache;
pub mod tls;
pub mod zip_scan;
