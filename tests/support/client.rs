//! HTTP calls with ureq 2 (header names go out exactly as written, bodies with Content-Length),
//! answering (status, body) whatever the status.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use super::form::Form;

/// Connect timeout of the test client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout of the test client (a busy sandrun may hold a call for minutes).
const READ_TIMEOUT: Duration = Duration::from_secs(400);

/// An answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .build()
}

/// Sends a request; `Err` only when no HTTP answer came (refused, reset, timeout...).
pub fn send(method: &str, url: &str, body: Option<(&str, &[u8])>) -> Result<Reply, String> {
    send_with(method, url, &[], body)
}

/// Like [`send`], with extra request headers (e.g. `Authorization`).
pub fn send_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Result<Reply, String> {
    let request = headers
        .iter()
        .fold(agent().request(method, url), |r, (name, value)| {
            r.set(name, value)
        });
    let result = match body {
        Some((content_type, bytes)) => request.set("Content-Type", content_type).send_bytes(bytes),
        None => request.call(),
    };
    let response = match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(e)) => return Err(format!("{method} {url}: {e}")),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| {
            let value = response.header(&name)?.to_string();
            Some((name, value))
        })
        .collect();
    let mut body = Vec::new();
    response
        .into_reader()
        .read_to_end(&mut body)
        .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn must(method: &str, url: &str, body: Option<(&str, &[u8])>) -> Reply {
    send(method, url, body).unwrap_or_else(|e| panic!("{e}"))
}

/// `GET`: (status, body text).
pub fn get(url: &str) -> (u16, String) {
    let reply = must("GET", url, None);
    (reply.status, reply.text())
}

/// `GET`: (status, body bytes).
pub fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    let reply = must("GET", url, None);
    (reply.status, reply.body)
}

/// `GET`: (status, body as JSON, `Null` when not JSON).
pub fn get_json(url: &str) -> (u16, Value) {
    let reply = must("GET", url, None);
    (reply.status, reply.json())
}

/// `POST` a body: (status, body text).
pub fn post(url: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let reply = must("POST", url, Some((content_type, body)));
    (reply.status, reply.text())
}

/// `POST` JSON: (status, body as JSON, `Null` when not JSON).
pub fn post_json(url: &str, value: &Value) -> (u16, Value) {
    let reply = must(
        "POST",
        url,
        Some(("application/json", value.to_string().as_bytes())),
    );
    (reply.status, reply.json())
}

/// `POST` a multipart form: (status, body text).
pub fn post_multipart(url: &str, form: &Form) -> (u16, String) {
    post(url, &form.content_type(), &form.body())
}

/// The status code of a raw HTTP answer (0 when there is none).
pub fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}
