//! `/dashboard` in a real headless Chromium against the real binary and fake workers: the page's
//! scripts run under its Content-Security-Policy without an error, the workers table shows every
//! worker with its health, the job list shows the submitted jobs, a certificate near its end
//! shows in the coordinator's parts, and a finished job's output link downloads its file. Screenshots (desktop and phone width) are saved under `target/tmp/`
//! for a person to look at. Also `/activity`, the JSON the page reads besides `/pool`.
//!
//! The operator buttons are clicked in Chromium driven over the DevTools protocol
//! (`support::devtools`): drain and undrain a worker, raise a queued job's priority, cancel it
//! and then delete it, each confirmed in its dialog, seen in `/pool` or `/status` and then on
//! the page. With client keys the page asks for a key; a submit key's page has no worker and no
//! drain button (the route answers it 403), only the raise and cancel buttons of its own
//! queued job; a read key's page shows the worker and the jobs, and no button at all. No
//! script error reaches the console meanwhile.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::devtools::DevTools;
use support::lifecycle::{job_status, submit, wait_collected, wait_healthy, wait_status};
use support::page_server::headless_chromium;
use support::tls::{days_from_now, TestCa, TlsProxy};
use support::{
    get, get_json, poll_until, send, send_with, temp_dir, workers_dir, Coordinator, FakeWorker,
    Form, Reply,
};

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
    let mut child = headless_chromium(binary, profile.path())
        .args(["--hide-scrollbars", "--enable-logging=stderr", "--v=0"])
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

/// The dumped DOM of the table row that opens with the tag `row` (from `tags`), to its end.
fn whole_row<'a>(dom: &'a str, row: &str) -> Option<&'a str> {
    let at = dom.find(row)?;
    Some(&dom[at..dom[at..].find("</tr>").map_or(dom.len(), |end| at + end)])
}

/// The dumped DOM of the coordinator's part `name` (its table row, to its end).
fn coordinator_part<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let row = tags(dom, "tr")
        .into_iter()
        .find(|t| attribute(t, "data-part") == Some(name))?;
    whole_row(dom, row)
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

/// Gives the first entry of `dir/workers.json` these labels.
fn label_first_worker(dir: &Path, labels: &[&str]) {
    let path = dir.join("workers.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("workers.json: {e}"));
    let mut entries: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    entries[0]["labels"] = labels.to_vec().into();
    fs::write(&path, entries.to_string()).unwrap_or_else(|e| panic!("workers.json: {e}"));
}

#[test]
fn the_dashboard_renders_workers_and_jobs_in_headless_chromium() {
    let a = FakeWorker::start();
    let b = FakeWorker::start();
    let sick = FakeWorker::start_with(|k| k.fail_health = true);
    // A client certificate for https:// workers three days from its end.
    let certs = support::temp_dir();
    let ca = TestCa::new(certs.path(), "ca");
    let (soon, _) = days_from_now(3);
    let (client_cert, client_key) = ca.issue_until("coordinator", true, Some(soon));
    // An https:// worker whose proxy's certificate ends in three days (unhealthy: it takes no
    // job of this test).
    let secure = FakeWorker::start_with(|k| k.fail_health = true);
    let (proxy_cert, proxy_key) = ca.issue_until("proxy", false, Some(soon));
    let proxy = TlsProxy::start(secure.addr(), &proxy_cert, &proxy_key, None);
    let tls_args =
        [ca.path("ca"), client_cert, client_key].map(|p| p.to_string_lossy().into_owned());
    let dir = workers_dir(&[
        a.entry(2),
        b.entry(2),
        sick.entry(1),
        (secure.worker_id(), proxy.endpoint(), 1),
    ]);
    label_first_worker(dir.path(), &["gpu", "arm64"]);
    let coordinator = Coordinator::start_in(
        dir.path(),
        &[
            "--track-interval",
            "0.1",
            "--worker-ca",
            &tls_args[0],
            "--worker-tls-cert",
            &tls_args[1],
            "--worker-tls-key",
            &tls_args[2],
            "--trusted-proxies",
            "127.0.0.2",
            "--proxy-protocol",
        ],
    );
    wait_healthy(&coordinator, &[&a, &b], DEADLINE);
    let read = poll_until(DEADLINE, || {
        let pool = get_json(&coordinator.url("/pool")).1;
        pool["workers"][3]["certificate"]["expires"]
            .is_string()
            .then_some(())
    });
    assert!(
        read.is_some(),
        "the https:// worker's certificate was not read"
    );
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
    for (worker, health) in [
        (&a, "healthy"),
        (&b, "healthy"),
        (&sick, "unhealthy"),
        (&secure, "unhealthy"),
    ] {
        let row = rows
            .iter()
            .find(|t| attribute(t, "data-worker-id") == Some(worker.worker_id().as_str()))
            .unwrap_or_else(|| panic!("worker {} not in the table:\n{dom}", worker.worker_id()));
        assert_eq!(attribute(row, "data-health"), Some(health), "{row}");
        let warned = whole_row(&dom, row).is_some_and(|r| r.contains(">certificate expires soon<"));
        assert_eq!(warned, worker.worker_id() == secure.worker_id(), "{row}");
        let labelled = whole_row(&dom, row).is_some_and(|r| r.contains(">labels: arm64, gpu<"));
        assert_eq!(labelled, worker.worker_id() == a.worker_id(), "{row}");
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
    let part = coordinator_part(&dom, "certificates")
        .unwrap_or_else(|| panic!("no certificates part:\n{dom}"));
    assert!(
        part.contains(">expires soon<")
            && part.contains("client certificate to workers")
            && part.contains("days left; renew it and send SIGHUP"),
        "{part}"
    );
    let part = coordinator_part(&dom, "connections")
        .unwrap_or_else(|| panic!("no connections part:\n{dom}"));
    assert!(
        part.contains("; 0 from the proxies without a PROXY header"),
        "{part}"
    );
    // The page's own connections come from 127.0.0.1.
    assert!(
        part.contains("; most open from one address: ") && part.contains(" from 127.0.0.1"),
        "{part}"
    );
    let buttons = tags(&dom, "button");
    let drain = format!("/workers/{}/drain", url_safe(&a.worker_id()));
    assert!(
        buttons
            .iter()
            .any(|t| attribute(t, "data-path") == Some(drain.as_str())),
        "no drain button for {drain}:\n{dom}"
    );
    // Each worker row links to the jobs that ran there; together they are every job that ran.
    let mut ran: Vec<String> = Vec::new();
    for worker in [&a, &b] {
        let href = format!("/jobs?worker={}", url_safe(&worker.worker_id()));
        assert!(
            tags(&dom, "a")
                .iter()
                .any(|t| attribute(t, "href") == Some(href.as_str())),
            "no link {href}:\n{dom}"
        );
        let (code, listing) = get_json(&coordinator.url(&href));
        assert_eq!(code, 200, "{listing}");
        for job in listing["jobs"].as_array().into_iter().flatten() {
            assert_eq!(job["worker_id"], worker.worker_id().as_str(), "{job}");
            ran.extend(job["job_id"].as_str().map(String::from));
        }
    }
    ran.sort();
    let mut every = vec![done[0].clone(), done[1].clone(), failed.clone()];
    every.sort();
    assert_eq!(ran, every);
    let href = format!("/outputs/{}/result.txt", done[0]);
    let link = tags(&dom, "a")
        .into_iter()
        .find(|t| attribute(t, "href") == Some(href.as_str()))
        .unwrap_or_else(|| panic!("no output link {href}:\n{dom}"));
    assert_eq!(attribute(link, "download"), Some("result.txt"), "{link}");
    let (code, content) = get(&coordinator.url(&href));
    assert_eq!(code, 200, "{content}");
    assert!(content.starts_with("result of "), "{content}");

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

    // The state directory moved away under the running coordinator: the job store part says
    // `lost` and why.
    let state = coordinator.state_dir();
    let aside = state.with_extension("aside");
    std::fs::rename(&state, &aside).unwrap_or_else(|e| panic!("{e}"));
    let (dom, stderr) = run_chromium(
        browser,
        &[
            "--dump-dom".to_string(),
            "--virtual-time-budget=8000".to_string(),
            url,
        ],
    );
    std::fs::rename(&aside, &state).unwrap_or_else(|e| panic!("{e}"));
    let part = coordinator_part(&dom, "job store")
        .unwrap_or_else(|| panic!("no job store part; stderr:\n{stderr}\n{dom}"));
    assert!(
        part.contains(">lost<") && part.contains("was removed while the coordinator runs"),
        "{part}"
    );
}

#[test]
fn a_worker_at_its_hourly_limit_on_every_source_address_says_so_in_chromium() {
    let worker = FakeWorker::start();
    let dir = temp_dir();
    let entry = serde_json::json!([{"worker_id": worker.worker_id(), "endpoint": worker.endpoint(),
                                     "max_concurrent_jobs": 2, "source_addresses": ["127.0.0.2"]}]);
    fs::write(dir.path().join("workers.json"), entry.to_string())
        .unwrap_or_else(|e| panic!("workers.json: {e}"));
    let coordinator = Coordinator::start_in(dir.path(), &["--track-interval", "0.1"]);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    // sandrun takes 20 jobs an hour from one address: the 21st waits.
    let ids: Vec<String> = (0..21).map(|_| submit(&coordinator, &job())).collect();
    for id in &ids[..20] {
        wait_status(&coordinator, id, "completed", DEADLINE);
    }
    assert_eq!(job_status(&coordinator, &ids[20])["pool_status"], "queued");
    let Some(browser) = chromium() else {
        return;
    };
    let mut page = DevTools::open(browser, &coordinator.url("/dashboard"));
    wait_ready(&mut page);
    let state = wait_row(&mut page, "data-worker-id", &worker.worker_id(), |s| {
        s["badges"].to_string().contains("hourly limit")
    });
    assert!(has_action(&state, "drain"), "{state}");
    let title = page.eval(
        "[...document.querySelectorAll('.badge')].filter(b => b.textContent === 'hourly limit').map(b => b.title).join()",
    );
    assert!(
        title
            .as_str()
            .is_some_and(|t| t.contains("the first takes a job again at")),
        "{title}"
    );
    assert_no_page_errors(&mut page);
}

/// A CSS string (for an attribute selector) holding `text`.
fn css(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// Script: the actions (`data-action` of its buttons) and badges of the table row whose
/// `attr` is `value`, or null while there is no such row.
fn row_state(attr: &str, value: &str) -> String {
    format!(
        "(() => {{ const row = document.querySelector('tr[{attr}=' + {value} + ']');
           if (!row) return null;
           return {{ actions: [...row.querySelectorAll('button[data-action]')].map(b => b.dataset.action),
                     badges: [...row.querySelectorAll('.badge')].map(b => b.textContent),
                     status: row.getAttribute('data-status') }}; }})()",
        value = css(&css(value)),
    )
}

/// Waits until the page's row (`attr` = `value`) satisfies `wanted`; its last state on failure.
fn wait_row(
    page: &mut DevTools,
    attr: &str,
    value: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let script = row_state(attr, value);
    let end = Instant::now() + DEADLINE;
    loop {
        let state = page.eval(&script);
        if wanted(&state) {
            return state;
        }
        assert!(
            Instant::now() < end,
            "the page's row {attr}={value} stayed {state}; errors: {:?}",
            page.errors()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Clicks the button `action` in the row (`attr` = `value`), as a person would: the page asks
/// to confirm (accepted) and sends the request.
fn click(page: &mut DevTools, attr: &str, value: &str, action: &str) {
    let dialogs = page.dialogs().len();
    let script = format!(
        "(() => {{ const b = document.querySelector('tr[{attr}=' + {value} + '] button[data-action={action}]');
           if (!b) return false; b.click(); return true; }})()",
        value = css(&css(value)),
        action = css(action),
    );
    assert_eq!(
        page.eval(&script),
        Value::Bool(true),
        "no {action} button in the row {attr}={value}"
    );
    assert_eq!(
        page.dialogs().len(),
        dialogs + 1,
        "{action} did not ask to confirm"
    );
}

fn has_action(state: &Value, action: &str) -> bool {
    state["actions"]
        .as_array()
        .is_some_and(|a| a.contains(&Value::from(action)))
}

/// Waits for the page to have rendered (its first refresh done).
fn wait_ready(page: &mut DevTools) {
    let ready = page.wait_for("document.body.getAttribute('data-ready') === '1'", DEADLINE);
    assert!(
        ready.is_some(),
        "the page did not render: {}",
        page.eval("document.body.innerText")
    );
}

/// The page's own error count and the console's errors are both nothing.
fn assert_no_page_errors(page: &mut DevTools) {
    let shown = page.eval("document.body.getAttribute('data-errors')");
    assert_eq!(
        shown,
        Value::from("0"),
        "page errors: {}",
        page.eval("document.getElementById('errors').innerText")
    );
    assert_eq!(page.errors(), &[] as &[String], "console errors");
}

/// Requests of the page that failed, but the browser's own try at `/favicon.ico` (the page
/// has no icon; the coordinator answers it 404).
fn page_request_failures(page: &DevTools) -> Vec<&str> {
    page.network_errors()
        .iter()
        .map(String::as_str)
        .filter(|e| !e.contains("/favicon.ico"))
        .collect()
}

fn pool_worker_draining(coordinator: &Coordinator, worker: &FakeWorker) -> Option<bool> {
    let (_, pool) = get_json(&coordinator.url("/pool"));
    pool["workers"]
        .as_array()?
        .iter()
        .find(|w| w["worker_id"] == worker.worker_id().as_str())?["draining"]
        .as_bool()
}

#[test]
fn the_dashboard_buttons_drain_undrain_pause_resume_raise_cancel_and_delete_in_chromium() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(120));
    let dir = workers_dir(&[worker.entry(1)]);
    label_first_worker(dir.path(), &["gpu"]);
    let coordinator = Coordinator::start_in(dir.path(), &["--track-interval", "0.1"]);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    // The first job takes the worker's only slot at once, so the second waits in the queue.
    // The first may run again if its run is lost. The second asks for the worker's label.
    let first = submit(&coordinator, &job().field("reruns", b"1"));
    let queued = submit(&coordinator, &job().field("labels", b"gpu"));
    wait_status(&coordinator, &queued, "queued", DEADLINE);
    let Some(browser) = chromium() else {
        return;
    };
    let mut page = DevTools::open(browser, &coordinator.url("/dashboard"));
    wait_ready(&mut page);
    // One job waits: the queue's row says so in the singular.
    let queue_text = "(() => { const r = document.querySelector('tr[data-part=\"queue\"]'); \
                      return r ? r.textContent : null; })()";
    let said = poll_until(DEADLINE, || {
        let text = page.eval(queue_text);
        text.as_str()
            .filter(|t| t.contains("1 job queued ("))
            .map(str::to_string)
    });
    assert!(said.is_some(), "{}", page.eval(queue_text));
    let id = worker.worker_id();
    wait_row(&mut page, "data-worker-id", &id, |s| has_action(s, "drain"));

    click(&mut page, "data-worker-id", &id, "drain");
    let draining = poll_until(DEADLINE, || {
        pool_worker_draining(&coordinator, &worker).filter(|d| *d)
    });
    assert!(
        draining.is_some(),
        "/pool does not report the worker draining"
    );
    let state = wait_row(&mut page, "data-worker-id", &id, |s| {
        has_action(s, "undrain") && s["badges"].to_string().contains("draining")
    });
    assert!(!has_action(&state, "drain"), "{state}");
    // Drained, the only worker with its label holds the queued job back, and its row says so.
    wait_row(&mut page, "data-job-id", &queued, |s| {
        s["badges"].to_string().contains("blocked")
    });

    click(&mut page, "data-worker-id", &id, "undrain");
    let undrained = poll_until(DEADLINE, || {
        pool_worker_draining(&coordinator, &worker).filter(|d| !*d)
    });
    assert!(
        undrained.is_some(),
        "/pool still reports the worker draining"
    );
    let state = wait_row(&mut page, "data-worker-id", &id, |s| has_action(s, "drain"));
    assert!(
        !state["badges"].to_string().contains("drain"),
        "still shown draining: {state}"
    );
    wait_row(&mut page, "data-job-id", &queued, |s| {
        s["status"] == "queued" && !s["badges"].to_string().contains("blocked")
    });

    // Submits paused and taken again from the coordinator's table; its other parts are shown.
    let state = wait_row(&mut page, "data-part", "submits", |s| {
        has_action(s, "pause")
    });
    assert!(state["badges"].to_string().contains("taken"), "{state}");
    click(&mut page, "data-part", "submits", "pause");
    let paused = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        pool["submits_paused"].is_object().then_some(())
    });
    assert!(paused.is_some(), "/pool does not report submits paused");
    let state = wait_row(&mut page, "data-part", "submits", |s| {
        has_action(s, "resume") && s["badges"].to_string().contains("paused")
    });
    assert!(!has_action(&state, "pause"), "{state}");
    click(&mut page, "data-part", "submits", "resume");
    let taken = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        pool["submits_paused"].is_null().then_some(())
    });
    assert!(taken.is_some(), "/pool still reports submits paused");
    wait_row(&mut page, "data-part", "submits", |s| {
        has_action(s, "pause")
    });
    let parts = page.eval("document.querySelector('#coordinator tbody').innerText");
    for shown in ["free of", "kept for accepted jobs", "jobs, ", "open of"] {
        assert!(
            parts.as_str().is_some_and(|t| t.contains(shown)),
            "no {shown:?} in {parts}"
        );
    }

    // The job waiting behind the running one: raised to priority high, then cancelled from its
    // row.
    wait_row(&mut page, "data-job-id", &queued, |s| {
        has_action(s, "raise") && has_action(s, "cancel")
    });
    click(&mut page, "data-job-id", &queued, "raise");
    let raised = poll_until(DEADLINE, || {
        (job_status(&coordinator, &queued)["priority"] == "high").then_some(())
    });
    assert!(raised.is_some(), "job {queued} was not raised");
    wait_row(&mut page, "data-job-id", &queued, |s| {
        !has_action(s, "raise") && has_action(s, "cancel")
    });
    click(&mut page, "data-job-id", &queued, "cancel");
    wait_status(&coordinator, &queued, "cancelled", DEADLINE);
    let state = wait_row(&mut page, "data-job-id", &queued, |s| {
        s["status"] == "cancelled"
    });
    assert!(!has_action(&state, "cancel"), "{state}");
    let conn = page.eval("document.getElementById('conn').textContent");
    assert!(
        conn.as_str().is_some_and(|c| !c.contains("refused")),
        "{conn}"
    );

    // Ended, it can be deleted from its row: then it is gone, from the page too.
    assert!(has_action(&state, "delete"), "{state}");
    click(&mut page, "data-job-id", &queued, "delete");
    let gone = poll_until(DEADLINE, || {
        let (code, _) = get_json(&coordinator.url(&format!("/status/{queued}")));
        (code == 404).then_some(())
    });
    assert!(gone.is_some(), "job {queued} was not deleted");
    wait_row(&mut page, "data-job-id", &queued, Value::is_null);

    // Two more jobs wait behind the running one: the queue's row cancels both at once.
    let waiting = [submit(&coordinator, &job()), submit(&coordinator, &job())];
    let state = wait_row(&mut page, "data-part", "queue", |s| {
        has_action(s, "cancel queued")
    });
    assert!(state["badges"].to_string().contains("waiting"), "{state}");
    click(&mut page, "data-part", "queue", "cancel queued");
    for id in &waiting {
        wait_status(&coordinator, id, "cancelled", DEADLINE);
    }
    let state = wait_row(&mut page, "data-part", "queue", |s| {
        !has_action(s, "cancel queued")
    });
    assert!(state["badges"].to_string().contains("empty"), "{state}");
    let status = job_status(&coordinator, &first);
    assert_ne!(status["pool_status"], "cancelled", "{status}");
    // Cancels are counted on their own, not as failures.
    let (_, activity) = get_json(&coordinator.url("/activity"));
    let column = |field: &str| {
        activity["jobs_per_minute"].as_array().map_or(0, |m| {
            m.iter().filter_map(|m| m[field].as_u64()).sum::<u64>()
        })
    };
    assert_eq!(
        (column("cancelled"), column("failed")),
        (3, 0),
        "{activity}"
    );

    // The worker restarts and forgets the first job: its run is lost, it runs again, and its
    // row says which run it is on.
    worker.stop();
    worker.set(|k| k.job_duration = Duration::ZERO);
    worker.restart();
    wait_status(&coordinator, &first, "completed", DEADLINE);
    let state = wait_row(&mut page, "data-job-id", &first, |s| {
        s["status"] == "completed" && s["badges"].to_string().contains("run 2")
    });
    assert!(has_action(&state, "delete"), "{state}");

    // A job still running can be deleted from its row too: cancelled, shown deleting while its
    // worker ends it, then gone.
    worker.set(|k| k.job_duration = Duration::from_secs(8));
    let doomed = submit(&coordinator, &job());
    // Running on its worker. The coordinator may still say `dispatched`: a running sandrun job
    // holds the worker's job table, so only a stream opened before the start tells of it.
    let started = poll_until(DEADLINE, || {
        let (_, status) = get_json(&coordinator.url(&format!("/status/{doomed}")));
        let remote = status["remote_job_id"].as_str()?.to_string();
        let recording = worker.recording();
        recording
            .started
            .iter()
            .any(|(id, _)| *id == remote)
            .then_some(())
    });
    assert!(
        started.is_some(),
        "job {doomed} never started on its worker"
    );
    wait_row(&mut page, "data-job-id", &doomed, |s| {
        has_action(s, "cancel") && has_action(s, "delete")
    });
    click(&mut page, "data-job-id", &doomed, "delete");
    let state = wait_row(&mut page, "data-job-id", &doomed, |s| {
        s["badges"].to_string().contains("deleting")
    });
    assert!(
        !has_action(&state, "cancel") && !has_action(&state, "delete"),
        "{state}"
    );
    let gone = poll_until(DEADLINE, || {
        let (code, _) = get_json(&coordinator.url(&format!("/status/{doomed}")));
        (code == 404).then_some(())
    });
    assert!(gone.is_some(), "job {doomed} was not deleted");
    wait_row(&mut page, "data-job-id", &doomed, Value::is_null);

    assert_no_page_errors(&mut page);
    assert_eq!(page_request_failures(&page), Vec::<&str>::new());
}

fn key_hash(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const ADMIN_KEY: &str = "tpk_dashboard_admin";
const SUBMIT_KEY: &str = "tpk_dashboard_alice";
const READ_KEY: &str = "tpk_dashboard_wall";

fn as_key(method: &str, url: &str, key: &str, body: Option<(&str, &[u8])>) -> Reply {
    let bearer = format!("Bearer {key}");
    send_with(method, url, &[("Authorization", bearer.as_str())], body)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Types `key` into the page's key box and uses it.
fn use_key(page: &mut DevTools, key: &str) {
    let script = format!(
        "(() => {{ document.getElementById('key').value = {key};
           document.getElementById('usekey').click(); return true; }})()",
        key = css(key),
    );
    page.eval(&script);
}

#[test]
fn with_client_keys_the_page_asks_for_a_key_and_shows_only_what_it_allows() {
    let worker = FakeWorker::start();
    let dir = temp_dir();
    let keys = dir.path().join("keys.json");
    // The wall's key expires in two days.
    let (_, soon) = days_from_now(2);
    let entries = serde_json::json!([
        {"name": "ops", "key_sha256": key_hash(ADMIN_KEY), "role": "admin"},
        {"name": "alice", "key_sha256": key_hash(SUBMIT_KEY), "role": "submit"},
        {"name": "wall", "key_sha256": key_hash(READ_KEY), "role": "read", "expires": soon},
    ]);
    std::fs::write(&keys, entries.to_string()).expect("keys file");
    let keys_arg = keys.to_string_lossy().into_owned();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--api-keys", &keys_arg]);
    let (code, page) = get(&coordinator.url("/dashboard"));
    assert_eq!(code, 200);
    assert!(page.contains("id=\"keybox\""), "the page has no key box");
    let (code, body) = get(&coordinator.url("/activity"));
    assert_eq!(code, 401, "{body}");
    let reply = as_key("GET", &coordinator.url("/activity"), ADMIN_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text());

    // A drained worker keeps alice's job queued, so the page offers to cancel it.
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let drain = format!("/workers/{}/drain", url_safe(&worker.worker_id()));
    let reply = as_key("POST", &coordinator.url(&drain), SUBMIT_KEY, None);
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(
        reply.json()["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{}",
        reply.text()
    );
    let reply = as_key("POST", &coordinator.url(&drain), ADMIN_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let form = job();
    let reply = as_key(
        "POST",
        &coordinator.url("/submit"),
        SUBMIT_KEY,
        Some((&form.content_type(), &form.body())),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mine = reply.json()["job_id"].as_str().expect("job_id").to_string();

    let Some(browser) = chromium() else {
        return;
    };
    let mut page = DevTools::open(browser, &coordinator.url("/dashboard"));
    let asked = page.wait_for(
        "!document.getElementById('keybox').hidden && document.getElementById('conn').textContent",
        DEADLINE,
    );
    assert!(
        asked
            .as_ref()
            .and_then(Value::as_str)
            .is_some_and(|t| t.contains("needs a client key")),
        "the page does not ask for a key: {asked:?}"
    );

    // A submit key: no worker is shown, so no drain or undrain; its own job can be cancelled
    // (or deleted). The pool's only worker drains, so the job says `blocked`.
    use_key(&mut page, SUBMIT_KEY);
    wait_ready(&mut page);
    wait_row(&mut page, "data-job-id", &mine, |s| {
        has_action(s, "cancel") && s["badges"].to_string().contains("blocked")
    });
    let actions = page
        .eval("[...document.querySelectorAll('button[data-action]')].map(b => b.dataset.action)");
    assert_eq!(
        actions,
        serde_json::json!(["raise", "cancel", "delete"]),
        "a submit key's buttons"
    );
    let workers = page.eval("document.querySelector('#workers tbody').innerText");
    assert!(
        workers
            .as_str()
            .is_some_and(|t| t.contains("shown to admin and read keys")),
        "{workers}"
    );
    let keys_part = "document.querySelector('tr[data-part=\"client keys\"]').innerText";
    let own = page.eval(keys_part);
    assert!(
        own.as_str()
            .is_some_and(|t| t.contains("1 key, none expiring within a week")),
        "a submit key sees its own key only: {own}"
    );
    click(&mut page, "data-job-id", &mine, "cancel");
    wait_status_as(&coordinator, &mine, "cancelled");
    let state = wait_row(&mut page, "data-job-id", &mine, |s| {
        s["status"] == "cancelled"
    });
    assert!(!has_action(&state, "cancel"), "{state}");

    // The admin key sees the worker and its undrain button.
    page.eval("document.getElementById('forgetkey').click()");
    use_key(&mut page, ADMIN_KEY);
    let state = wait_row(&mut page, "data-worker-id", &worker.worker_id(), |s| {
        has_action(s, "undrain")
    });
    assert!(state["badges"].to_string().contains("drain"), "{state}");

    // A read key sees the worker and every job, and is offered no button at all.
    page.eval("document.getElementById('forgetkey').click()");
    use_key(&mut page, READ_KEY);
    wait_row(&mut page, "data-worker-id", &worker.worker_id(), |s| {
        s.is_object() && !has_action(s, "undrain")
    });
    wait_row(&mut page, "data-job-id", &mine, Value::is_object);
    let buttons = page.eval("document.querySelectorAll('button[data-action]').length");
    assert_eq!(buttons, 0, "a read key's page offers buttons");
    // The worker's jobs link is fetched with the key and shown in the page: none ran there.
    let jobs = format!("/jobs?worker={}", url_safe(&worker.worker_id()));
    page.eval(&format!(
        "document.querySelector('a[href=\"{jobs}\"]').click()"
    ));
    let shown = page.wait_for(
        "!document.getElementById('viewer').hidden && document.getElementById('viewer-title').textContent",
        DEADLINE,
    );
    assert_eq!(shown, Some(Value::from(jobs.as_str())));
    let listing = page.eval("document.getElementById('viewer-body').textContent");
    let listing: Value = listing
        .as_str()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    assert_eq!(listing["jobs"], serde_json::json!([]), "{listing}");
    let all = page.eval(keys_part);
    assert!(
        all.as_str().is_some_and(|t| t.contains("expires soon")
            && t.contains(&format!("3 keys; wall expires at {soon}T00:00:00Z"))),
        "the keys part: {all}"
    );
    assert_no_page_errors(&mut page);
    // Only the two 401s of the first refresh, before a key was given.
    let failures = page_request_failures(&page);
    assert!(
        failures.len() == 2 && failures.iter().all(|e| e.contains("status of 401")),
        "{failures:?}"
    );
}

/// Waits for alice's job to reach `wanted` (read with the admin key).
fn wait_status_as(coordinator: &Coordinator, id: &str, wanted: &str) {
    let url = coordinator.url(&format!("/status/{id}"));
    let reached = poll_until(DEADLINE, || {
        let reply = as_key("GET", &url, ADMIN_KEY, None);
        (reply.json()["pool_status"] == wanted).then_some(())
    });
    assert!(reached.is_some(), "job {id} never became {wanted}");
}
