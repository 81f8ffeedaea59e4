//! Cross-origin access (`--cors-origin`): the headers allowed, other and absent origins get,
//! preflight answers, and a page on another origin in headless Chromium making sandrun's web
//! frontend calls through the pool exactly as it makes them straight to a worker.

mod support;

use std::time::Duration;

use serde_json::{json, Value};

use support::lifecycle::{exchange, wait_healthy};
use support::page_server::{Browser, PageServer};
use support::sandrun_client::one_file_tarball;
use support::{send, Coordinator, FakeWorker, Form, Reply};

const DEADLINE: Duration = Duration::from_secs(60);
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.1"];

/// A request with extra headers, answered whatever its status.
fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut call = ureq::request(method, url);
    for (name, value) in headers {
        call = call.set(name, value);
    }
    let response = match call.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|n| Some((n.clone(), response.header(&n)?.to_string())))
        .collect();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).expect("body");
    Reply {
        status,
        headers,
        body,
    }
}

fn preflight(url: &str, origin: &str) -> Reply {
    request(
        "OPTIONS",
        url,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
    )
}

#[test]
fn only_allowed_origins_get_cors_headers_and_preflight_answers() {
    let worker = FakeWorker::start();
    let page = "http://127.0.0.1:8080";
    let listed = Coordinator::start(
        &[worker.entry(1)],
        &[
            "--cors-origin",
            page,
            "--cors-origin",
            "https://app.example.org",
        ],
    );
    let anyone = Coordinator::start(&[worker.entry(1)], &["--cors-origin", "*"]);
    let nobody = Coordinator::start(&[worker.entry(1)], &[]);

    let allowed = request("GET", &listed.url("/health"), &[("Origin", page)]);
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("Access-Control-Allow-Origin"), Some(page));
    assert_eq!(allowed.header("Vary"), Some("Origin"));
    // A page reads the headers that tell it when to retry and whether a submit was replayed.
    let exposed = allowed
        .header("Access-Control-Expose-Headers")
        .unwrap_or_default();
    for name in ["Retry-After", "Idempotent-Replayed", "Content-Disposition"] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }
    for origin in ["http://127.0.0.1:8081", "http://evil.example"] {
        let other = request("GET", &listed.url("/health"), &[("Origin", origin)]);
        assert_eq!(other.status, 200);
        assert_eq!(
            other.header("Access-Control-Allow-Origin"),
            None,
            "{origin}"
        );
    }
    // Two Origin headers: a proxy may read the other one; refused, and no origin allowed.
    let head = format!("GET /health HTTP/1.1\r\nOrigin: {page}\r\nOrigin: http://evil.example\r\n");
    let two = exchange(listed.port(), &head, b"").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(two.status, 400, "{}", two.text());
    assert!(
        two.text().contains("more than one Origin"),
        "{}",
        two.text()
    );
    assert_eq!(two.header("Access-Control-Allow-Origin"), None);
    let plain = send("GET", &listed.url("/status/nope"), None).expect("status");
    assert_eq!(plain.status, 404);
    assert_eq!(plain.header("Access-Control-Allow-Origin"), None);

    let ok = preflight(&listed.url("/submit"), page);
    assert_eq!(ok.status, 204, "{}", ok.text());
    assert_eq!(ok.header("Access-Control-Allow-Origin"), Some(page));
    let methods = ok
        .header("Access-Control-Allow-Methods")
        .unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let allowed_headers = ok
        .header("Access-Control-Allow-Headers")
        .unwrap_or_default();
    assert!(
        allowed_headers.contains("Authorization"),
        "{allowed_headers}"
    );
    assert!(
        allowed_headers.contains("Content-Type"),
        "{allowed_headers}"
    );
    assert!(
        allowed_headers.contains("Idempotency-Key"),
        "{allowed_headers}"
    );
    let refused = preflight(&listed.url("/submit"), "http://evil.example");
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(refused.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("--cors-origin")));
    assert_eq!(refused.header("Access-Control-Allow-Origin"), None);

    // A status request parked with ?wait= is answered later by another thread, CORS included.
    let form = Form::new().file("main.py", "text/x-python", b"1\n");
    let body = form.body();
    let submitted = send(
        "POST",
        &listed.url("/submit"),
        Some((&form.content_type(), &body)),
    )
    .expect("submit");
    let id = submitted.json()["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let parked = request(
        "GET",
        &listed.url(&format!("/status/{id}?wait=5")),
        &[("Origin", page)],
    );
    assert_eq!(parked.status, 200, "{}", parked.text());
    assert_eq!(parked.header("Access-Control-Allow-Origin"), Some(page));
    // So is a followed text stream, whose head the follower writes itself.
    let followed = request(
        "GET",
        &listed.url(&format!("/logs/{id}?follow=1")),
        &[("Origin", page)],
    );
    assert_eq!(followed.status, 200, "{}", followed.text());
    assert!(followed.text().contains("[DONE]"), "{}", followed.text());
    assert_eq!(followed.header("Access-Control-Allow-Origin"), Some(page));

    for path in ["/health", "/nope", "/status/x"] {
        let any = send("GET", &anyone.url(path), None).expect("answer");
        assert_eq!(
            any.header("Access-Control-Allow-Origin"),
            Some("*"),
            "{path}"
        );
    }
    assert_eq!(preflight(&anyone.url("/status/x"), page).status, 204);

    let none = request("GET", &nobody.url("/health"), &[("Origin", page)]);
    assert_eq!(none.header("Access-Control-Allow-Origin"), None);
    assert_eq!(preflight(&nobody.url("/submit"), page).status, 403);
}

#[test]
fn a_bad_cors_origin_is_refused_at_start() {
    for bad in [
        "http://example.org/",
        "example.org",
        "ftp://x",
        "http://a/b",
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_trusted-pool"))
            .args([
                "--cors-origin",
                bad,
                "--workers",
                "/nonexistent/workers.json",
            ])
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--cors-origin"), "{bad}: {stderr}");
    }
}

#[test]
fn a_page_on_another_origin_makes_the_web_frontends_calls_through_the_pool() {
    let page = PageServer::start(vec![
        (
            "/",
            "text/html",
            include_bytes!("pages/sandrun_frontend.html").to_vec(),
        ),
        (
            "/job.tar.gz",
            "application/gzip",
            one_file_tarball("main.py", b"print('hi')\n"),
        ),
    ]);
    let direct = FakeWorker::start();
    let worker = FakeWorker::start();
    let allowed = Coordinator::start(
        &[worker.entry(2)],
        &[&FAST[..], &["--cors-origin", &page.origin()]].concat(),
    );
    let elsewhere =
        Coordinator::start(&[worker.entry(2)], &["--cors-origin", "http://127.0.0.1:1"]);
    wait_healthy(&allowed, &[&worker], DEADLINE);

    let targets = json!([
        {"name": "direct", "base": direct.endpoint(), "auth": false},
        {"name": "pool", "base": allowed.url(""), "auth": true},
        {"name": "not_allowed", "base": elsewhere.url(""), "auth": false},
    ]);
    let query: String = targets
        .to_string()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let _browser = Browser::open(&format!("{}/?targets={query}", page.origin()));
    let report = page
        .wait_report(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the page reported nothing in 120 s"));
    let report: Value = serde_json::from_str(&report).unwrap_or(Value::Null);

    let direct = &report["direct"];
    assert_eq!(direct["service"], "sandrun", "{report}");
    assert_eq!(direct["tarball"]["status"], "completed", "{report}");
    assert_eq!(direct["quick"]["status"], "completed", "{report}");
    assert_eq!(direct["quick"]["stdout"], "ran main.py\n", "{report}");
    let pool = &report["pool"];
    for key in ["service", "quick", "tarball"] {
        assert_eq!(pool[key], direct[key], "{key}: {report}");
    }
    assert_eq!(pool["tarball"]["downloads"]["result.txt"], true, "{report}");
    assert_eq!(pool["authorized_call"], "answered", "{report}");
    assert_eq!(pool.get("error"), None, "{report}");
    assert!(
        report["not_allowed"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch")),
        "{report}"
    );
}
