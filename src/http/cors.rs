//! Cross-origin access (`--cors-origin`): which browser pages may call the API, the headers
//! their requests get, and the answer to a preflight `OPTIONS` request.

use crate::http::headers::{self, GivenTwice};
use tiny_http::Request;

/// The methods the API serves.
const METHODS: &str = "GET, POST, DELETE, OPTIONS";
/// The request headers a page may send (`Authorization` for client keys, `Idempotency-Key` for
/// safe submit retries).
const HEADERS: &str =
    "Authorization, Content-Type, Idempotency-Key, Accept, Accept-Language, Content-Language";
/// The answer headers a page may read beside the CORS-safelisted ones.
const EXPOSED: &str = "Content-Disposition, Retry-After, Idempotent-Replayed, WWW-Authenticate";
/// How long a browser may cache a preflight answer, in seconds.
const MAX_AGE: &str = "600";

/// The `Origin` header of a request, if any; two are [`GivenTwice`] (a browser sends one, RFC
/// 6454 7.3, and a proxy in front may read the other).
pub fn origin(request: &Request) -> Result<Option<&str>, GivenTwice> {
    headers::only(headers::values(request, "Origin"))
}

/// The CORS headers of an answer to a request from `origin`: `*` when any origin is allowed
/// (on every answer, as sandrun does), the origin itself when it is listed, else none.
pub fn headers(allowed: &[String], origin: Option<&str>) -> Vec<(&'static str, String)> {
    if allowed.iter().any(|a| a == "*") {
        return vec![
            ("Access-Control-Allow-Origin", "*".to_string()),
            ("Access-Control-Expose-Headers", EXPOSED.to_string()),
        ];
    }
    match origin {
        Some(o) if allowed.iter().any(|a| a.eq_ignore_ascii_case(o)) => vec![
            ("Access-Control-Allow-Origin", o.to_string()),
            ("Access-Control-Expose-Headers", EXPOSED.to_string()),
            ("Vary", "Origin".to_string()),
        ],
        _ if !allowed.is_empty() => vec![("Vary", "Origin".to_string())],
        _ => Vec::new(),
    }
}

/// The preflight answer's own headers (methods, headers, max age; the answer also gets
/// [`headers`]) when `origin` is allowed, else the reason it is not.
pub fn preflight(allowed: &[String], origin: &str) -> Result<Vec<(&'static str, String)>, String> {
    if !headers(allowed, Some(origin))
        .iter()
        .any(|(name, _)| *name == "Access-Control-Allow-Origin")
    {
        return Err(format!(
            "cross-origin requests from {origin} are not allowed; the operator can allow it with --cors-origin {origin}"
        ));
    }
    Ok(vec![
        ("Access-Control-Allow-Methods", METHODS.to_string()),
        ("Access-Control-Allow-Headers", HEADERS.to_string()),
        ("Access-Control-Max-Age", MAX_AGE.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_get_the_header() {
        let listed = vec!["http://127.0.0.1:8080".to_string()];
        let allow = |origin| {
            headers(&listed, origin)
                .into_iter()
                .find(|(n, _)| *n == "Access-Control-Allow-Origin")
                .map(|(_, v)| v)
        };
        assert_eq!(
            allow(Some("http://127.0.0.1:8080")).as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(allow(Some("http://127.0.0.1:8081")), None);
        assert_eq!(allow(None), None);
        assert!(headers(&[], Some("http://x")).is_empty());
        assert!(preflight(&listed, "http://evil").is_err());
        let any = vec!["*".to_string()];
        assert_eq!(headers(&any, None)[0].1, "*");
        let granted = preflight(&any, "http://a").expect("allowed");
        assert!(granted
            .iter()
            .any(|(n, v)| *n == "Access-Control-Allow-Headers" && v.contains("Authorization")));
    }
}
