//! The text log (`--log-format text`): simplelog's lines (`HH:MM:SS [LEVEL] message`), but
//! never a panic for the clock. simplelog reads the time through the `time` crate, which
//! panics for a wall clock past the year 9999 (a `date -s` gone wrong): a line logged then
//! took its thread down. Such a line is written with `--:--:--` for its time.

use crate::serve::json_log::JsonLog;
use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// The first second of the year 10000: the `time` crate's limit.
const YEAR_10000: u64 = 253_402_300_800;

/// simplelog's logger, with lines logged while the clock is past the year 9999 written here.
pub struct TextLog(Box<simplelog::WriteLogger<std::io::Stderr>>);

impl TextLog {
    /// The text logger of the coordinator's own messages and its HTTP server's.
    pub fn to_stderr() -> Self {
        let mut config = simplelog::ConfigBuilder::new();
        for target in crate::serve::json_log::LOGGED_CRATES {
            config.add_filter_allow_str(target);
        }
        let config = config
            .set_thread_level(LevelFilter::Off)
            .set_target_level(LevelFilter::Off)
            .build();
        TextLog(simplelog::WriteLogger::new(
            LevelFilter::Trace,
            config,
            std::io::stderr(),
        ))
    }
}

/// Whether the `time` crate can hold the wall clock's time now.
fn clock_in_range() -> bool {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(true, |d| d.as_secs() < YEAR_10000)
}

impl Log for TextLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if clock_in_range() {
            self.0.log(record);
        } else if JsonLog.enabled(record.metadata()) {
            let line = format!("--:--:-- [{}] {}\n", record.level(), record.args());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}
