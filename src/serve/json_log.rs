//! `--log-format json`: one JSON object per line on stderr (`time` in UTC RFC 3339 with
//! milliseconds, `level`, `target`, `message`), for log shippers that parse lines as JSON.
//! Only the coordinator's own messages and its HTTP server's pass, as with the text format.

use crate::base::clock::rfc3339;
use log::{Log, Metadata, Record};
use std::io::Write;
use std::time::SystemTime;

/// The crates whose messages are logged, in either format.
pub const LOGGED_CRATES: [&str; 2] = ["trusted_pool", "tiny_http"];

/// The JSON-lines logger.
pub struct JsonLog;

impl Log for JsonLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        let target = metadata.target();
        LOGGED_CRATES.iter().any(|t| {
            target == *t
                || target
                    .strip_prefix(t)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = line(
            SystemTime::now(),
            record.level().as_str(),
            record.target(),
            &record.args().to_string(),
        );
        // One write per line, so lines of threads logging at once never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// One log line: the JSON object (its fields in this order, the message last) and its newline.
fn line(at: SystemTime, level: &str, target: &str, message: &str) -> String {
    let text = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\"time\":\"{}\",\"level\":\"{level}\",\"target\":{},\"message\":{}}}\n",
        rfc3339(at),
        text(target),
        text(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_line_is_one_json_object_whatever_the_message_holds() {
        let text = line(
            UNIX_EPOCH,
            "WARN",
            "trusted_pool::x",
            "a \"quoted\"\nline ✓",
        );
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).expect("JSON");
        assert_eq!(value["message"], "a \"quoted\"\nline ✓");
        assert_eq!(value["level"], "WARN");
        assert_eq!(value["time"], "1970-01-01T00:00:00.000Z");
        assert!(
            text.starts_with("{\"time\":") && text.contains(",\"message\":"),
            "{text}"
        );
        let metadata = |target| Metadata::builder().target(target).build();
        assert!(JsonLog.enabled(&metadata("trusted_pool::pool::tracker")));
        assert!(JsonLog.enabled(&metadata("tiny_http")));
        assert!(!JsonLog.enabled(&metadata("trusted_pool_x")));
        assert!(!JsonLog.enabled(&metadata("rustls::conn")));
    }
}
