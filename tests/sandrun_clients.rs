//! sandrun's own clients against the pool: the calls its Python client, MCP server and web
//! frontend make (see `support::sandrun_client`) give the same answers through the coordinator
//! as straight from a sandrun worker, and a sandrun client reads a lost or cancelled job as
//! `failed` while the pool's own fields stay as they were.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use serde_json::{json, Value};

use support::lifecycle::{drain_url, submit, wait_collected, wait_healthy, wait_status};
use support::sandrun_client::SandrunClient;
use support::{
    get_json, poll_until, post, send, send_with, temp_dir, Coordinator, FakeWorker, Form,
};

const DEADLINE: Duration = Duration::from_secs(60);
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.1"];

/// The JSON type of a value, for comparing shapes.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Asserts `pool` has every field of `direct` (nested objects too) with the same JSON type.
fn assert_superset(direct: &Value, pool: &Value, at: &str) {
    let Some(fields) = direct.as_object() else {
        return;
    };
    for (name, value) in fields {
        let path = format!("{at}.{name}");
        let theirs = pool
            .get(name)
            .unwrap_or_else(|| panic!("{path} missing through the pool: {pool}"));
        if !value.is_null() && !theirs.is_null() {
            assert_eq!(kind(value), kind(theirs), "{path}: {value} vs {theirs}");
        }
        if name != "output_files" {
            assert_superset(value, theirs, &path);
        }
    }
}

/// One output file as a client sees it, without what names the job (ids, hashes of content
/// that holds the job id).
fn file_view(client: &SandrunClient, id: &str, entry: &Value) -> Value {
    let name = entry["name"].as_str().unwrap_or_default();
    let bytes = client
        .download_file(id, name)
        .unwrap_or_else(|e| panic!("download_file({name}): {e}"));
    assert_eq!(entry["size"], bytes.len(), "{entry}");
    assert_eq!(
        entry["download_url"],
        format!("/download/{id}/{name}"),
        "{entry}"
    );
    let text = String::from_utf8_lossy(&bytes);
    json!({
        "name": name,
        "size_formatted": entry["size_formatted"],
        "type": entry["type"],
        "mime_type": entry["mime_type"],
        "content": if name == "result.txt" { text.starts_with("result of job_").to_string() } else { text.into_owned() },
    })
}

/// The Python client's session: connection test, `submit_code`, `submit_directory`, waiting,
/// logs, the listing and each download. Returns what it saw, and each final status answer.
fn python_client_session(base: &str) -> (Value, Vec<Value>) {
    let client = SandrunClient::new(base);
    let mut seen = json!({"connected": client.test_connection()});
    let project = temp_dir();
    fs::write(project.path().join("main.py"), "import processor\n").expect("write");
    fs::write(project.path().join("processor.py"), "X = 1\n").expect("write");
    fs::write(project.path().join("settings.json"), "{\"n\": 1}\n").expect("write");
    let code_id = client
        .submit_code("print('hello')\n", "python3")
        .unwrap_or_else(|e| panic!("{base}: submit_code: {e}"));
    let dir_id = client
        .submit_directory(
            project.path(),
            "main.py",
            &["test-input"],
            &["*.json", "*.txt"],
        )
        .unwrap_or_else(|e| panic!("{base}: submit_directory: {e}"));
    let mut finals = Vec::new();
    for (label, id) in [("code", &code_id), ("directory", &dir_id)] {
        let status = client
            .wait_for_completion(id)
            .unwrap_or_else(|e| panic!("{base}: wait_for_completion: {e}"));
        let logs = client
            .get_logs(id)
            .unwrap_or_else(|e| panic!("{base}: get_logs: {e}"));
        let files: BTreeMap<String, Value> = client
            .list_outputs(id)
            .unwrap_or_else(|e| panic!("{base}: list_outputs: {e}"))
            .iter()
            .map(|entry| {
                let view = file_view(&client, id, entry);
                (view["name"].as_str().unwrap_or_default().to_string(), view)
            })
            .collect();
        seen[label] = json!({
            "status": status["status"],
            "exit_code": status["execution_metadata"]["exit_code"],
            "output_files": status["output_files"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()),
            "worker_signed": status["worker_metadata"]["signature"].is_string(),
            "job_hash_len": status["job_hash"].as_str().map(str::len),
            "logs": logs,
            "files": files,
        });
        finals.push(status);
    }
    (seen, finals)
}

#[test]
fn the_python_client_works_through_the_pool_exactly_as_on_a_worker() {
    let direct_worker = FakeWorker::start();
    let (direct, direct_finals) = python_client_session(&direct_worker.endpoint());

    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let (pooled, pool_finals) = python_client_session(&coordinator.url(""));

    assert_eq!(direct["connected"], true, "{direct}");
    assert_eq!(direct["code"]["status"], "completed", "{direct}");
    assert_eq!(
        direct["directory"]["files"].as_object().map(|f| f.len()),
        Some(2),
        "{direct}"
    );
    assert_eq!(pooled, direct, "through the pool vs straight to a worker");
    for (direct, pool) in direct_finals.iter().zip(&pool_finals) {
        assert_superset(direct, pool, "status");
        assert!(pool["pool_status"].is_string(), "{pool}");
    }
}

#[test]
fn the_mcp_server_calls_work_through_the_pool_exactly_as_on_a_worker() {
    let session = |base: &str| -> Value {
        let client = SandrunClient::new(base);
        let submitted = client
            .mcp_submit("print('hi')\n", "python3")
            .unwrap_or_else(|e| panic!("{base}: {e}"));
        let id = submitted["job_id"].as_str().unwrap_or_default().to_string();
        let waited = client
            .mcp_wait(&id)
            .unwrap_or_else(|e| panic!("{base}: {e}"));
        let unknown = client.get_status("job_0_0").err().unwrap_or_default();
        json!({"submitted": submitted["status"], "waited": {
            "status": waited["status"], "stdout": waited["stdout"],
            "stderr_says_missing": waited["stderr"].as_str().is_some_and(|s| s.contains("can't open file")),
            "queue_position_is_number": waited["queue_position"].is_number(),
        }, "unknown_is_404": unknown.contains("HTTP 404")})
    };
    let direct_worker = FakeWorker::start();
    let direct = session(&direct_worker.endpoint());
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let pooled = session(&coordinator.url(""));
    // The MCP server's "fake tar" is no tarball: sandrun writes the code under the name on
    // its Path: line before it looks at the filename job.tar.gz, and runs it; through the pool
    // the same.
    assert_eq!(direct["waited"]["status"], "completed", "{direct}");
    assert_eq!(direct["waited"]["stdout"], "ran main.py\n", "{direct}");
    assert_eq!(direct["waited"]["stderr_says_missing"], false, "{direct}");
    assert_eq!(pooled, direct);
}

#[test]
fn lost_and_cancelled_jobs_read_failed_for_sandrun_clients_and_pool_fields_stay() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(30));
    let coordinator = Coordinator::start(&[worker.entry(1)], &["--lost-after", "2"]);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let running = submit(
        &coordinator,
        &Form::new().file("main.py", "text/x-python", b"1\n"),
    );
    let queued = submit(
        &coordinator,
        &Form::new().file("main.py", "text/x-python", b"2\n"),
    );

    let started = poll_until(DEADLINE, || {
        (!worker.recording().started.is_empty()).then_some(())
    });
    assert!(started.is_some(), "the job never started");
    let (_, status) = get_json(&coordinator.url(&format!("/status/{running}")));
    let expected = if status["pool_status"] == "running" {
        "running"
    } else {
        "queued"
    };
    assert_eq!(status["status"], expected, "{status}");
    let (_, waiting) = get_json(&coordinator.url(&format!("/status/{queued}")));
    assert_eq!(waiting["pool_status"], "queued", "{waiting}");
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert_eq!(waiting["queue_position"], 1, "{waiting}");
    assert_eq!(waiting.get("error"), None, "{waiting}");
    assert_eq!(waiting["execution_metadata"]["exit_code"], 0, "{waiting}");
    assert_eq!(waiting["output_files"], json!({}), "{waiting}");

    let cancel =
        send("POST", &coordinator.url(&format!("/cancel/{queued}")), None).expect("cancel");
    assert_eq!(cancel.status, 200, "{}", cancel.text());
    let (_, cancelled) = get_json(&coordinator.url(&format!("/status/{queued}")));
    assert_eq!(cancelled["pool_status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["status"], "failed", "{cancelled}");
    assert_eq!(cancelled["error"], "cancelled", "{cancelled}");

    worker.stop();
    let lost = wait_status(&coordinator, &running, "lost", DEADLINE);
    assert_eq!(lost["status"], "failed", "{lost}");
    assert!(
        lost["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{lost}"
    );
    for field in [
        "job_id",
        "pool_status",
        "worker_id",
        "worker_status",
        "submitted_at",
        "completed_at",
    ] {
        assert!(lost.get(field).is_some(), "{field} missing: {lost}");
    }
    assert_eq!(lost["job_id"], running.as_str());
    assert_eq!(lost["worker_id"], worker.worker_id());
    assert!(lost["completed_at"].as_f64().is_some(), "{lost}");
    let client = SandrunClient::new(&coordinator.url(""));
    let waited = client.wait_for_completion(&running).expect("wait");
    assert_eq!(waited["status"], "failed");
}

#[test]
fn download_root_and_stats_answer_as_sandrun_does() {
    let worker = FakeWorker::start_with(|k| k.cpu_seconds = 0.25);
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    let (code, root) = get_json(&coordinator.url("/"));
    assert_eq!(code, 200, "{root}");
    let (_, sandrun_root) = get_json(&worker.url("/"));
    assert_superset(&sandrun_root, &root, "root");
    assert_eq!(root["service"], "sandrun");
    assert_eq!(root["coordinator"], "trusted-pool");
    assert_eq!(root["version"], env!("CARGO_PKG_VERSION"));
    // A browser is sent on to the dashboard (the client follows the 303).
    let browser = send_with_accept(
        &coordinator.url("/"),
        "text/html,application/xhtml+xml,*/*;q=0.8",
    );
    assert_eq!(browser.status, 200, "{}", browser.text());
    assert!(
        browser.text().contains("<title>trusted-pool</title>"),
        "{}",
        browser.text()
    );

    let (code, stats) = get_json(&coordinator.url("/stats"));
    assert_eq!(code, 200, "{stats}");
    let (_, sandrun_stats) = get_json(&worker.url("/stats"));
    assert_superset(&sandrun_stats, &stats, "stats");
    assert_eq!(stats["your_quota"]["can_submit"], true, "{stats}");
    assert_eq!(stats["your_quota"]["limit"], 10.0, "{stats}");
    // Nothing used yet: 0.0, never -0.0 (an empty float sum).
    assert!(
        stats["your_quota"]["used"]
            .as_f64()
            .is_some_and(|u| u == 0.0 && u.is_sign_positive()),
        "{stats}"
    );

    let tarball = support::sandrun_client::one_file_tarball("main.py", b"print(1)\n");
    let form = Form::new()
        .file("job.tar.gz", "application/gzip", &tarball)
        .manifest(r#"{"entrypoint":"main.py","outputs":["*.py","*.txt"]}"#);
    let id = submit(&coordinator, &form);
    wait_collected(&coordinator, &id, DEADLINE);
    let used = poll_until(DEADLINE, || {
        let (_, stats) = get_json(&coordinator.url("/stats"));
        let used = stats["your_quota"]["used"].as_f64().unwrap_or(0.0);
        (used > 0.0).then_some(used)
    });
    assert_eq!(used, Some(0.25), "the job's CPU seconds in the last minute");
    // A sum of jobs' figures reads to the millisecond (0.25 + 0.09 is 0.33999999999999997).
    worker.set(|k| k.cpu_seconds = 0.09);
    let small = submit(&coordinator, &form);
    wait_collected(&coordinator, &small, DEADLINE);
    let (_, stats) = get_json(&coordinator.url("/stats"));
    assert_eq!(stats["your_quota"]["used"], 0.34, "{stats}");
    assert_eq!(stats["your_quota"]["available"], 9.66, "{stats}");
    // A draining worker grants nothing, and says why jobs wait (it read limit 10, no reason);
    // paused submits cannot be made (it read can_submit true).
    let (code, _) = post(
        &drain_url(&coordinator, &worker, "drain"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200);
    let (_, stats) = get_json(&coordinator.url("/stats"));
    assert_eq!(stats["your_quota"]["limit"], 0.0, "{stats}");
    assert_eq!(stats["your_quota"]["can_submit"], true, "{stats}");
    assert_eq!(
        stats["your_quota"]["reason"],
        "every healthy worker is draining: jobs wait in the queue until one takes jobs again",
        "{stats}"
    );
    let (code, _) = post(&coordinator.url("/submits/pause"), "text/plain", b"");
    assert_eq!(code, 200);
    let (_, stats) = get_json(&coordinator.url("/stats"));
    assert_eq!(stats["your_quota"]["can_submit"], false, "{stats}");
    assert!(
        stats["your_quota"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("a submit is refused now: submits are paused")),
        "{stats}"
    );
    for url in [
        coordinator.url("/submits/resume"),
        drain_url(&coordinator, &worker, "undrain"),
    ] {
        assert_eq!(post(&url, "text/plain", b"").0, 200, "{url}");
    }
    let reply = send("GET", &coordinator.url(&format!("/download/{id}")), None).expect("download");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("Content-Type"), Some("application/gzip"));
    assert_eq!(
        reply.header("Content-Disposition"),
        Some(format!("attachment; filename=\"{id}.tar.gz\"").as_str())
    );
    assert_eq!(
        reply.header("Content-Length"),
        Some(reply.body.len().to_string().as_str())
    );
    let files = support::untar_gz(&reply.body);
    for name in ["main.py", "result.txt"] {
        let (code, one) = support::get_bytes(&coordinator.url(&format!("/download/{id}/{name}")));
        assert_eq!(code, 200);
        assert_eq!(files.get(name), Some(&one), "{name}");
    }
    // Unlike sandrun, the coordinator keeps the job after a whole download.
    let again = send("GET", &coordinator.url(&format!("/download/{id}")), None).expect("again");
    assert_eq!(again.body, reply.body);
    let (code, status) = get_json(&coordinator.url(&format!("/status/{id}")));
    assert_eq!(
        (code, &status["status"]),
        (200, &json!("completed")),
        "{status}"
    );
    let one = send(
        "GET",
        &coordinator.url(&format!("/download/{id}/result.txt")),
        None,
    )
    .expect("one");
    assert_eq!(
        one.header("Content-Disposition"),
        Some("attachment; filename=\"result.txt\"")
    );
    let (code, missing) =
        get_json(&coordinator.url("/download/pool-00000000000000000000000000000000"));
    assert_eq!(code, 404, "{missing}");
}

fn send_with_accept(url: &str, accept: &str) -> support::Reply {
    let response = ureq::get(url).set("Accept", accept).call();
    let response = match response {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = response.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).expect("body");
    support::Reply {
        status,
        headers: Vec::new(),
        body,
    }
}

#[test]
fn with_client_keys_stats_are_per_key_and_the_connection_test_stays_open() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(30));
    let dir = temp_dir();
    let hash = |secret: &str| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let keys = json!([
        {"name": "alice", "key_sha256": hash("tpk_alice"), "role": "submit", "max_queued_jobs": 1},
        {"name": "bob", "key_sha256": hash("tpk_bob"), "role": "submit"},
    ]);
    let keys_file = dir.path().join("keys.json");
    fs::write(&keys_file, keys.to_string()).expect("write keys");
    let keys_arg = keys_file.to_string_lossy().into_owned();
    let page = "http://127.0.0.1:8080";
    let coordinator = Coordinator::start(
        &[worker.entry(1)],
        &["--api-keys", &keys_arg, "--cors-origin", page],
    );
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let as_key = |method: &str, path: &str, secret: Option<&str>, body: Option<(&str, &[u8])>| {
        let auth = secret.map(|s| format!("Bearer {s}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        send_with(method, &coordinator.url(path), &headers, body).expect("answer")
    };

    assert!(SandrunClient::new(&coordinator.url("")).test_connection());
    let preflight = send_with(
        "OPTIONS",
        &coordinator.url("/submit"),
        &[
            ("Origin", page),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        None,
    )
    .expect("preflight");
    assert_eq!(preflight.status, 204, "{}", preflight.text());
    assert_eq!(as_key("GET", "/stats", None, None).status, 401);

    let form = Form::new().file("main.py", "text/x-python", b"1\n");
    let body = form.body();
    let content_type = form.content_type();
    for _ in 0..2 {
        let reply = as_key(
            "POST",
            "/submit",
            Some("tpk_alice"),
            Some((&content_type, &body)),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let alice = poll_until(DEADLINE, || {
        let stats = as_key("GET", "/stats", Some("tpk_alice"), None).json();
        (stats["your_quota"]["can_submit"] == false).then_some(stats)
    })
    .unwrap_or_else(|| panic!("alice's queue limit never showed in /stats"));
    assert_eq!(alice["your_quota"]["active_jobs"], 2, "{alice}");
    assert!(
        alice["your_quota"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("max_queued_jobs")),
        "{alice}"
    );
    let bob = as_key("GET", "/stats", Some("tpk_bob"), None).json();
    assert_eq!(bob["your_quota"]["active_jobs"], 0, "{bob}");
    assert_eq!(bob["your_quota"]["can_submit"], true, "{bob}");
    assert_eq!(
        bob["system"]["queue_length"],
        alice["system"]["queue_length"]
    );
    assert!(bob["system"]["queue_length"].as_u64() >= Some(1), "{bob}");
}
