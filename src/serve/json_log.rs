//! `--log-format json`: one JSON object per line on stderr (`time` in UTC RFC 3339 with
//! milliseconds, `level`, `target`, `message`), for log shippers that parse lines as JSON.
//! Only the coordinator's own messages and its HTTP server's pass, as with the text format.

use log::{Log, Metadata, Record};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// `at` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_utc_rfc3339_with_milliseconds() {
        let at = |secs: u64, millis: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_796_476_445, 123), "2026-12-05T13:14:05.123Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
    }

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
