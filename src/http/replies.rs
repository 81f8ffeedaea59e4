//! What a handler answers: JSON, JSON errors, streamed bodies, or a hand-off of the connection.

use crate::base::job::unknown_job_message;
use crate::base::paths::encode_path;
use serde_json::Value;
use std::borrow::Cow;
use std::io::Read;

/// What a handler answers.
pub enum Reply {
    /// A JSON body.
    Json(u16, Value),
    /// A JSON body already serialized.
    JsonBytes(u16, Vec<u8>),
    /// A body held in memory with its content type and extra headers (a page, the metrics).
    Text {
        /// HTTP status.
        status: u16,
        /// Its content type.
        content_type: &'static str,
        /// Further response headers.
        headers: &'static [(&'static str, &'static str)],
        /// The bytes.
        body: Cow<'static, [u8]>,
    },
    /// A streamed body (a file from the spool or a worker).
    Stream {
        /// HTTP status.
        status: u16,
        /// Its content type.
        content_type: String,
        /// Length when known (sent as Content-Length).
        length: Option<usize>,
        /// A file name to save it as (`Content-Disposition: attachment`), as sandrun's
        /// `/download` sends it.
        attachment: Option<String>,
        /// The bytes.
        body: Box<dyn Read + Send>,
    },
    /// A JSON body streamed from the job store's files (a job's collected logs), with its
    /// length when known; a submit key's answer has the worker's job id hidden on the way.
    JsonStream {
        /// HTTP status.
        status: u16,
        /// Length when known (sent as Content-Length).
        length: Option<usize>,
        /// The bytes.
        body: Box<dyn Read + Send>,
    },
    /// Another reply with extra headers (`WWW-Authenticate`, `Retry-After`).
    WithHeaders(Vec<(&'static str, String)>, Box<Reply>),
    /// Park the request until the job ends or `until`, then answer its status (the job is
    /// already watched in the table).
    Wait(WaitFor),
    /// The connection is handed over (a follower writes its own answer on it). A hand-off that
    /// cannot take it gives the request back with why, and it is answered 503.
    Handoff(Box<dyn FnOnce(tiny_http::Request) -> Result<(), HandoffRefused> + Send>),
    /// A status without a body (a redirect's `Location` goes in `WithHeaders`).
    Empty(u16),
}

/// What a parked `GET /status/{id}?wait=` request waits for.
pub struct WaitFor {
    /// The job waited on.
    pub job_id: String,
    /// When to answer anyway.
    pub until: std::time::Instant,
    /// The client's address, held to `--max-waiting-per-ip` (`None`: not known); its key is
    /// checked again from it when the answer comes.
    pub client: Option<std::net::IpAddr>,
}

impl Reply {
    /// Its HTTP status (200 for a parked or handed-over request, whose own answer comes later).
    pub fn status(&self) -> u16 {
        match self {
            Reply::Json(status, _) | Reply::JsonBytes(status, _) => *status,
            Reply::Stream { status, .. } | Reply::Text { status, .. } => *status,
            Reply::JsonStream { status, .. } => *status,
            Reply::Empty(status) => *status,
            Reply::WithHeaders(_, inner) => inner.status(),
            Reply::Wait(_) | Reply::Handoff(_) => 200,
        }
    }
}

/// A request a hand-off gave back, and why it could not take it.
pub type HandoffRefused = Box<(tiny_http::Request, String)>;

/// `Content-Disposition` for a file saved as `name`: sandrun's `attachment; filename="..."`,
/// and, when the name is not plain ASCII (a header value must be) or holds a quote, a
/// backslash or a `%` (which browsers may decode in the quoted name: `100%25.txt` saved as
/// `100%.txt`), RFC 6266's `filename*=UTF-8''...` with the exact name, which they take
/// instead; the quoted name then has `_` for each of those characters.
pub fn attachment_disposition(name: &str) -> String {
    let plain: String = name
        .chars()
        .map(|c| match c {
            '"' | '\\' | '%' => '_',
            c if c.is_ascii() && !c.is_ascii_control() => c,
            _ => '_',
        })
        .collect();
    if plain == name {
        return format!("attachment; filename=\"{plain}\"");
    }
    format!(
        "attachment; filename=\"{plain}\"; filename*=UTF-8''{}",
        encode_path(name)
    )
}

/// Builds a JSON error reply `{"error": message}`.
pub fn error_reply(status: u16, message: impl Into<String>) -> Reply {
    Reply::Json(status, serde_json::json!({ "error": message.into() }))
}

/// `reply` (a 503 or a 429) with `Retry-After: secs`.
pub fn retry_after(secs: u32, reply: Reply) -> Reply {
    Reply::WithHeaders(vec![("Retry-After", secs.to_string())], Box::new(reply))
}

/// The 404 for a job id the coordinator does not know.
pub fn unknown_job(id: &str) -> Reply {
    error_reply(404, unknown_job_message(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_is_not_plain_ascii_is_carried_whole_in_filename_star() {
        assert_eq!(
            attachment_disposition("result.txt"),
            "attachment; filename=\"result.txt\""
        );
        assert_eq!(
            attachment_disposition("a\"b\\c.txt"),
            "attachment; filename=\"a_b_c.txt\"; filename*=UTF-8''a%22b%5Cc.txt"
        );
        assert_eq!(
            attachment_disposition("\u{fc}ber \u{2713}.bin"),
            "attachment; filename=\"_ber _.bin\"; filename*=UTF-8''%C3%BCber%20%E2%9C%93.bin"
        );
        assert_eq!(
            attachment_disposition("100%25.txt"),
            "attachment; filename=\"100_25.txt\"; filename*=UTF-8''100%2525.txt"
        );
    }
}
