//! `/dashboard` in a real headless Chromium against the real binary and fake workers: the page's
//! scripts run under its Content-Security-Policy without an error, the workers table shows every
//! worker with its health, the job list shows the submitted jobs, and a finished job's output
//! link downloads its file. Screenshots (desktop and phone width) are saved under `target/tmp/`
//! for a person to look at. Also `/activity`, the JSON the page reads besides `/pool`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::lifecycle::{submit, wait_collected, wait_healthy, wait_status};
use support::{get, get_json, poll_until, post, send, temp_dir, Coordinator, FakeWorker, Form};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);
/// Longest a Chromium run may take before it is killed.
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);

fn job() -> Form {
    Form::new().file("main.py", "text/x-python", b"print('hi')\n")
}

/// The Chromium binary, or None (with the reason printed) when it is not installed; under CI
/// its absence is a failure.
fn chromium() -> Option<&'static str> {
    for name in ["chromium", "chromium-browser"] {
        let found = Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return Some(name);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install chromium (.ci/run does)"
    );
    eprintln!("SKIPPED the browser check: chromium is not installed (apt-get install chromium)");
    None
}

/// Runs headless Chromium with the flags this machine needs plus `args`; returns (stdout,
/// stderr). Killed after `BROWSER_DEADLINE`.
fn run_chromium(binary: &str, args: &[String]) -> (String, String) {
    let profile = temp_dir();
    let out_dir = temp_dir();
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    let end = Instant::now() + BROWSER_DEADLINE;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish in {BROWSER_DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    (read(&stdout_path), read(&stderr_path))
}

/// Console lines of the page that report an error (script errors, CSP refusals).
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("CONSOLE"))
        .filter(|l| {
            l.contains("Uncaught") || l.contains("Refused to") || l.contains("Content Security")
        })
        .collect()
}

/// The value of `attr="..."` in an element's start tag.
fn attribute<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {attr}=\""))? + attr.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// Every start tag of `name` in the dumped DOM.
fn tags<'a>(dom: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name} ");
    dom.match_indices(&open)
        .filter_map(|(at, _)| dom[at..].find('>').map(|len| &dom[at..at + len]))
        .collect()
}

/// A worker id in URL-safe base64 without padding, as the page puts it in a path.
fn url_safe(worker_id: &str) -> String {
    worker_id
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[test]
fn the_dashboard_renders_workers_and_jobs_in_headless_chromium() {
    let a = FakeWorker::start();
    let b = FakeWorker::start();
    let sick = FakeWorker::start_with(|k| k.fail_health = true);
    let coordinator = Coordinator::start(
        &[a.entry(2), b.entry(2), sick.entry(1)],
        &["--track-interval", "0.1"],
    );
    wait_healthy(&coordinator, &[&a, &b], DEADLINE);
    let done: Vec<String> = (0..2).map(|_| submit(&coordinator, &job())).collect();
    for id in &done {
        wait_collected(&coordinator, id, DEADLINE);
    }
    a.set(|k| k.exit_code = 1);
    b.set(|k| k.exit_code = 1);
    let failed = submit(&coordinator, &job());
    wait_status(&coordinator, &failed, "failed", DEADLINE);

    // The JSON the page reads.
    let (status, activity) = get_json(&coordinator.url("/activity"));
    assert_eq!(status, 200, "{activity}");
    let recent: Vec<&str> = activity["recent_jobs"]
        .as_array()
        .expect("recent_jobs")
        .iter()
        .filter_map(|j| j["job_id"].as_str())
        .collect();
    assert_eq!(
        recent,
        [failed.as_str(), done[1].as_str(), done[0].as_str()]
    );
    let first = &activity["recent_jobs"][2];
    assert_eq!(first["pool_status"], "completed", "{first}");
    assert!(first["outputs"]
        .as_array()
        .is_some_and(|o| o.contains(&Value::from("result.txt"))));
    let minutes = activity["jobs_per_minute"]
        .as_array()
        .expect("jobs_per_minute");
    assert_eq!(minutes.len(), 60);
    let sum = |field: &str| {
        minutes
            .iter()
            .filter_map(|m| m[field].as_u64())
            .sum::<u64>()
    };
    assert_eq!(
        (sum("submitted"), sum("completed"), sum("failed")),
        (3, 2, 1)
    );

    // The page itself: self-contained, under a strict policy.
    let page = send("GET", &coordinator.url("/dashboard"), None).expect("/dashboard");
    assert_eq!(page.status, 200);
    assert!(page
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("text/html")));
    let policy = page
        .header("Content-Security-Policy")
        .unwrap_or_default()
        .to_string();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let html = page.text();
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "external asset"
    );

    let Some(browser) = chromium() else {
        return;
    };
    let url = coordinator.url("/dashboard");
    let (dom, stderr) = run_chromium(
        browser,
        &[
            "--dump-dom".to_string(),
            "--virtual-time-budget=8000".to_string(),
            url.clone(),
        ],
    );
    let body = tags(&dom, "body");
    assert_eq!(body.len(), 1, "no page rendered; stderr:\n{stderr}");
    assert_eq!(
        attribute(body[0], "data-ready"),
        Some("1"),
        "scripts did not render:\n{dom}"
    );
    assert_eq!(
        attribute(body[0], "data-errors"),
        Some("0"),
        "page errors:\n{dom}"
    );
    assert_eq!(
        console_errors(&stderr),
        Vec::<&str>::new(),
        "console errors"
    );

    let rows = tags(&dom, "tr");
    for (worker, health) in [(&a, "healthy"), (&b, "healthy"), (&sick, "unhealthy")] {
        let row = rows
            .iter()
            .find(|t| attribute(t, "data-worker-id") == Some(worker.worker_id().as_str()))
            .unwrap_or_else(|| panic!("worker {} not in the table:\n{dom}", worker.worker_id()));
        assert_eq!(attribute(row, "data-health"), Some(health), "{row}");
    }
    for (id, wanted) in [
        (&done[0], "completed"),
        (&done[1], "completed"),
        (&failed, "failed"),
    ] {
        let row = rows
            .iter()
            .find(|t| attribute(t, "data-job-id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("job {id} not in the list:\n{dom}"));
        assert_eq!(attribute(row, "data-status"), Some(wanted), "{row}");
    }
    let buttons = tags(&dom, "button");
    let drain = format!("/workers/{}/drain", url_safe(&a.worker_id()));
    assert!(
        buttons
            .iter()
            .any(|t| attribute(t, "data-path") == Some(drain.as_str())),
        "no drain button for {drain}:\n{dom}"
    );
    let href = format!("/outputs/{}/result.txt", done[0]);
    let link = tags(&dom, "a")
        .into_iter()
        .find(|t| attribute(t, "href") == Some(href.as_str()))
        .unwrap_or_else(|| panic!("no output link {href}:\n{dom}"));
    assert_eq!(attribute(link, "download"), Some("result.txt"), "{link}");
    let (code, content) = get(&coordinator.url(&href));
    assert_eq!(code, 200, "{content}");
    assert!(content.starts_with("result of "), "{content}");

    // The drain button's request, as the page sends it: the row then offers undrain.
    let (code, answer) = post(&coordinator.url(&drain), "application/json", b"");
    assert_eq!(code, 200, "{answer}");
    let (dom, _) = run_chromium(
        browser,
        &[
            "--dump-dom".to_string(),
            "--virtual-time-budget=8000".to_string(),
            url.clone(),
        ],
    );
    let undrain = format!("/workers/{}/undrain", url_safe(&a.worker_id()));
    assert!(
        tags(&dom, "button")
            .iter()
            .any(|t| attribute(t, "data-path") == Some(undrain.as_str())),
        "no undrain button after the drain:\n{dom}"
    );

    for (name, size) in [
        ("dashboard.png", "1280,900"),
        ("dashboard-phone.png", "390,844"),
    ] {
        let path = screenshot_path(name);
        let _ = std::fs::remove_file(&path);
        let (_, stderr) = run_chromium(
            browser,
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size={size}"),
                "--virtual-time-budget=8000".to_string(),
                url.clone(),
            ],
        );
        let written = poll_until(Duration::from_secs(5), || {
            std::fs::metadata(&path).ok().filter(|m| m.len() > 1000)
        });
        assert!(
            written.is_some(),
            "no screenshot at {}; stderr:\n{stderr}",
            path.display()
        );
        eprintln!("screenshot: {}", path.display());
    }
}

#[test]
fn with_client_keys_the_page_is_served_and_its_data_needs_a_key() {
    let worker = FakeWorker::start();
    let dir = temp_dir();
    let keys = dir.path().join("keys.json");
    let hash: String = {
        use sha2::Digest;
        sha2::Sha256::digest(b"tpk_dashboard_admin")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let entry = serde_json::json!([{"name": "ops", "key_sha256": hash, "role": "admin"}]);
    std::fs::write(&keys, entry.to_string()).expect("keys file");
    let keys_arg = keys.to_string_lossy().into_owned();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--api-keys", &keys_arg]);
    let (code, page) = get(&coordinator.url("/dashboard"));
    assert_eq!(code, 200);
    assert!(page.contains("id=\"keybox\""), "the page has no key box");
    let (code, body) = get(&coordinator.url("/activity"));
    assert_eq!(code, 401, "{body}");
    let reply = support::send_with(
        "GET",
        &coordinator.url("/activity"),
        &[("Authorization", "Bearer tpk_dashboard_admin")],
        None,
    )
    .expect("/activity");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let Some(browser) = chromium() else {
        return;
    };
    let (dom, _) = run_chromium(
        browser,
        &[
            "--dump-dom".to_string(),
            "--virtual-time-budget=5000".to_string(),
            coordinator.url("/dashboard"),
        ],
    );
    let keybox = tags(&dom, "div")
        .into_iter()
        .find(|t| attribute(t, "id") == Some("keybox"))
        .unwrap_or_else(|| panic!("no key box:\n{dom}"));
    assert!(
        !keybox.contains(" hidden"),
        "the key box is not shown: {keybox}"
    );
    assert!(dom.contains("needs a client key"), "{dom}");
    let body = tags(&dom, "body");
    assert_eq!(
        attribute(body[0], "data-errors"),
        Some("0"),
        "page errors:\n{dom}"
    );
}
