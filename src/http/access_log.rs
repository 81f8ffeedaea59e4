//! `--access-log`: one line per answered request, in the `--log-format` of the coordinator's
//! log. Text: `time client key method "target" status bytes milliseconds`, `-` for what is
//! unknown (no key, a streamed body of unknown length); JSON: one object with those fields.
//! The target is cut at [`MAX_TARGET`] bytes and, in text, every byte outside printable ASCII
//! (and `"`, `\`) is escaped as `\xNN`, so no client can forge a line.

use crate::base::clock::rfc3339;
use crate::base::config::LogFormat;
use crate::http::client_address::client_address;
use crate::state::context::Context;
use serde_json::json;
use std::fmt::Write;
use std::net::IpAddr;
use std::time::{Instant, SystemTime};
use tiny_http::Request;

/// The longest request target logged, in bytes; a longer one is cut and ends in `...`.
pub const MAX_TARGET: usize = 512;

/// A request being answered, as its access log line will tell it.
pub struct Access {
    started: Instant,
    /// The client's address (behind a trusted proxy, the client it forwards for).
    pub client: Option<IpAddr>,
    method: String,
    target: String,
    /// The name of the client key it carried, once authorized.
    pub key: Option<String>,
}

/// How a request was answered.
struct Answered {
    status: u16,
    bytes: Option<u64>,
}

impl Access {
    /// Notes `request` when the coordinator keeps an access log.
    pub fn begin(ctx: &Context, request: &Request) -> Option<Access> {
        ctx.access_log.as_ref()?;
        Some(Access {
            started: Instant::now(),
            client: client_address(&ctx.config.trusted_proxies, request),
            method: request.method().to_string(),
            target: cut(request.url()),
            key: None,
        })
    }

    /// Writes its line: answered with `status`, a body of `bytes` when known.
    pub fn end(self, ctx: &Context, status: u16, bytes: Option<u64>) {
        let Some(log) = &ctx.access_log else {
            return;
        };
        let millis = self.started.elapsed().as_secs_f64() * 1000.0;
        let answered = Answered { status, bytes };
        let line = match ctx.config.log_format {
            LogFormat::Text => self.text(SystemTime::now(), &answered, millis),
            LogFormat::Json => self.json(SystemTime::now(), &answered, millis),
        };
        log.push(line);
    }

    fn text(&self, at: SystemTime, answered: &Answered, millis: f64) -> String {
        let mut line = String::with_capacity(96 + self.target.len());
        let _ = write!(
            line,
            "{} {} {} {} \"",
            rfc3339(at),
            self.client
                .map_or_else(|| "-".to_string(), |c| c.to_string()),
            self.key.as_deref().unwrap_or("-"),
            self.method
        );
        for b in self.target.bytes() {
            if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
                line.push(char::from(b));
            } else {
                let _ = write!(line, "\\x{b:02x}");
            }
        }
        let _ = writeln!(
            line,
            "\" {} {} {millis:.3}",
            answered.status,
            answered
                .bytes
                .map_or_else(|| "-".to_string(), |n| n.to_string())
        );
        line
    }

    fn json(&self, at: SystemTime, answered: &Answered, millis: f64) -> String {
        let value = json!({
            "time": rfc3339(at),
            "client": self.client.map(|c| c.to_string()),
            "key": self.key,
            "method": self.method,
            "target": self.target,
            "status": answered.status,
            "bytes": answered.bytes,
            "duration_ms": (millis * 1000.0).round() / 1000.0,
        });
        value.to_string() + "\n"
    }
}

/// `target` cut at [`MAX_TARGET`] bytes (on a character boundary), marked with `...`.
fn cut(target: &str) -> String {
    if target.len() <= MAX_TARGET {
        return target.to_string();
    }
    let mut end = MAX_TARGET;
    while !target.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &target[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn access(target: &str) -> Access {
        Access {
            started: Instant::now(),
            client: Some(IpAddr::from([127, 0, 0, 1])),
            method: "POST".to_string(),
            target: cut(target),
            key: Some("alice".to_string()),
        }
    }

    const ANSWERED: Answered = Answered {
        status: 200,
        bytes: Some(51),
    };

    #[test]
    fn a_text_line_has_every_field_and_escapes_the_target() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_476_445_123);
        let line = access("/submit?x=\"a\"\n\u{1b}[2J é").text(at, &ANSWERED, 3.21449);
        assert_eq!(
            line,
            "2026-12-05T13:14:05.123Z 127.0.0.1 alice POST \"/submit?x=\\x22a\\x22\\x0a\\x1b[2J \\xc3\\xa9\" 200 51 3.214\n"
        );
        let unknown = Answered {
            status: 404,
            bytes: None,
        };
        let mut anonymous = access("/x");
        anonymous.key = None;
        let line = anonymous.text(at, &unknown, 0.5);
        assert!(line.ends_with(" - POST \"/x\" 404 - 0.500\n"), "{line}");
    }

    #[test]
    fn no_target_can_break_a_text_line() {
        let every_char: String = (0u32..0x100)
            .chain([0x2028, 0x1b, 0xfeff, 0x1f600])
            .filter_map(char::from_u32)
            .collect();
        for target in [every_char.as_str(), "\"\\\"\r\n\t", "/a b"] {
            let line = access(target).text(UNIX_EPOCH, &ANSWERED, 0.0);
            let (body, end) = line.split_at(line.len() - 1);
            assert_eq!(end, "\n");
            assert!(body.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line:?}");
            let quoted = body
                .split_once(" \"")
                .map(|(_, rest)| rest)
                .unwrap_or_default();
            let target_text = quoted
                .rsplit_once("\" ")
                .map(|(t, _)| t)
                .unwrap_or_default();
            assert!(!target_text.contains('"'), "{line:?}");
        }
    }

    #[test]
    fn a_json_line_is_one_object() {
        let line = access("/status/pool-1?wait=5").json(UNIX_EPOCH, &ANSWERED, 1.23456);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let value: serde_json::Value =
            serde_json::from_str(line.trim_end()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value["client"], "127.0.0.1");
        assert_eq!(value["key"], "alice");
        assert_eq!(value["target"], "/status/pool-1?wait=5");
        assert_eq!(value["status"], 200);
        assert_eq!(value["bytes"], 51);
        assert_eq!(value["duration_ms"], 1.235);
    }

    #[test]
    fn a_long_target_is_cut_on_a_character_boundary() {
        let long = "/".to_string() + &"é".repeat(600);
        let cut = cut(&long);
        assert!(
            cut.len() <= MAX_TARGET + 3 && cut.ends_with("..."),
            "{}",
            cut.len()
        );
        assert_eq!(access("/short").target, "/short");
    }
}
