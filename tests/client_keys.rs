//! Client keys (`--api-keys`) through the real coordinator: 401 without a known key (`/health`
//! open), jobs owned by the key that submitted them (another submit key gets the unknown-id 404),
//! admins see everything, non-admin answers never show the worker's own job id, per-key
//! `max_queued_jobs` (429 + Retry-After), per-key figures in `/pool`, keys never in the log,
//! SIGHUP reloads (good and bad files), the open-port warning, `new-key` and `check --api-keys`,
//! and `Idempotency-Key`s scoped to the key that gave them.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use support::follow::{follow_logs_with, follow_websocket_with, Followed};
use support::lifecycle::{drain_url, exchange, wait_healthy};
use support::{
    poll_until, send_with, status_of, tar_gz, workers_dir, Coordinator, FakeWorker, Form, Reply,
};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);
/// Short intervals keep these tests quick.
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.1"];

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A client key: its name, the secret and its role.
struct Key {
    name: &'static str,
    secret: String,
    role: &'static str,
    max_queued_jobs: Option<u32>,
    expires: Option<String>,
    bound_cidrs: Option<Vec<&'static str>>,
    archives: Option<bool>,
}

impl Key {
    fn new(name: &'static str, role: &'static str) -> Key {
        Key {
            name,
            secret: format!("tpk_test_{name}_{}", std::process::id()),
            role,
            max_queued_jobs: None,
            expires: None,
            bound_cidrs: None,
            archives: None,
        }
    }

    /// A submit key that expires at `at` (a UTC date or time).
    fn expiring(name: &'static str, at: &str) -> Key {
        Key {
            expires: Some(at.to_string()),
            ..Key::new(name, "submit")
        }
    }

    /// A submit key usable only from `blocks`.
    fn bound(name: &'static str, blocks: &[&'static str]) -> Key {
        Key {
            bound_cidrs: Some(blocks.to_vec()),
            ..Key::new(name, "submit")
        }
    }

    fn limited(name: &'static str, max_queued_jobs: u32) -> Key {
        Key {
            max_queued_jobs: Some(max_queued_jobs),
            ..Key::new(name, "submit")
        }
    }

    /// A submit key whose `archives` is `archives`.
    fn archives(name: &'static str, archives: bool) -> Key {
        Key {
            archives: Some(archives),
            ..Key::new(name, "submit")
        }
    }

    fn entry(&self) -> Value {
        let mut entry = serde_json::json!({
            "name": self.name,
            "key_sha256": sha256_hex(self.secret.as_bytes()),
            "role": self.role,
        });
        if let Some(n) = self.max_queued_jobs {
            entry["max_queued_jobs"] = n.into();
        }
        if let Some(at) = &self.expires {
            entry["expires"] = at.as_str().into();
        }
        if let Some(blocks) = &self.bound_cidrs {
            entry["bound_cidrs"] = blocks.clone().into();
        }
        if let Some(archives) = self.archives {
            entry["archives"] = archives.into();
        }
        entry
    }
}

fn write_keys(path: &Path, keys: &[&Key]) {
    let entries: Vec<Value> = keys.iter().map(|k| k.entry()).collect();
    fs::write(path, serde_json::to_vec_pretty(&entries).expect("json"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A request to the coordinator with this key (or none) and an optional body.
fn request(
    coordinator: &Coordinator,
    method: &str,
    path: &str,
    key: Option<&Key>,
    body: Option<(&str, &[u8])>,
) -> Reply {
    let auth = key.map(|k| format!("Bearer {}", k.secret));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    send_with(method, &coordinator.url(path), &headers, body).unwrap_or_else(|e| panic!("{e}"))
}

/// A request without a body.
fn call(coordinator: &Coordinator, method: &str, path: &str, key: Option<&Key>) -> Reply {
    request(coordinator, method, path, key, None)
}

fn submit_as(coordinator: &Coordinator, key: Option<&Key>, form: &Form) -> Reply {
    let body = form.body();
    let content_type = form.content_type();
    request(
        coordinator,
        "POST",
        "/submit",
        key,
        Some((&content_type, &body)),
    )
}

fn job_form() -> Form {
    Form::new()
        .file("main.py", "text/x-python", b"print('hi')\n")
        .manifest(r#"{"entrypoint":"main.py","outputs":["result.txt"]}"#)
}

/// Submits as `key`, asserting 200; the new job id.
fn submit_ok(coordinator: &Coordinator, key: &Key) -> String {
    let reply = submit_as(coordinator, Some(key), &job_form());
    assert_eq!(
        reply.status,
        200,
        "submit as {}: {}",
        key.name,
        reply.text()
    );
    reply.json()["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job_id: {}", reply.text()))
        .to_string()
}

/// Polls the job's status as `key` until it is completed with its results collected.
fn wait_collected_as(coordinator: &Coordinator, key: &Key, id: &str) -> Value {
    let mut last = Value::Null;
    poll_until(DEADLINE, || {
        last = call(coordinator, "GET", &format!("/status/{id}"), Some(key)).json();
        (last["pool_status"] == "completed" && last["results"]["collected"] == true)
            .then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("job {id} not collected: {last}"))
}

fn assert_401(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {}", reply.text());
    let challenge = reply.header("WWW-Authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer"),
        "{what}: challenge {challenge:?}"
    );
    assert!(
        reply.json()["error"].is_string(),
        "{what}: {}",
        reply.text()
    );
}

/// A coordinator with these keys in `<dir>/keys.json`, on these workers.
fn start_with_keys(
    workers: &[(String, String, u32)],
    keys: &[&Key],
    extra: &[&str],
) -> (Coordinator, tempfile::TempDir, PathBuf) {
    let dir = workers_dir(workers);
    let keys_path = dir.path().join("keys.json");
    write_keys(&keys_path, keys);
    let mut args = vec!["--api-keys", keys_path.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let coordinator = Coordinator::start_in(dir.path(), &args);
    (coordinator, dir, keys_path)
}

/// The whole matrix: no key, bad key, another scheme; own job, another key's job, admin;
/// `/health` open; no worker job id in non-admin answers; `/pool` per key; nothing secret in
/// the log.
#[test]
fn the_auth_matrix() {
    let worker = FakeWorker::start();
    let alice = Key::new("alice", "submit");
    let bob = Key::new("bob", "submit");
    let ops = Key::new("ops", "admin");
    let stranger = Key::new("stranger", "submit");
    let mut args = FAST.to_vec();
    args.extend(["--log-level", "trace"]);
    let (coordinator, _dir, _) = start_with_keys(&[worker.entry(2)], &[&alice, &bob, &ops], &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    let health = call(&coordinator, "GET", "/health", None);
    assert_eq!(health.status, 200, "{}", health.text());
    let ready = call(&coordinator, "GET", "/ready", None);
    assert_eq!(ready.status, 200, "/ready is open: {}", ready.text());
    for path in [
        "/pool",
        "/status/pool-00",
        "/logs/pool-00",
        "/outputs/pool-00",
    ] {
        assert_401(&call(&coordinator, "GET", path, None), path);
        assert_401(&call(&coordinator, "GET", path, Some(&stranger)), path);
    }
    assert_401(
        &submit_as(&coordinator, None, &job_form()),
        "submit without a key",
    );
    let bad = submit_as(&coordinator, Some(&stranger), &job_form());
    assert_401(&bad, "submit with an unknown key");
    assert!(
        bad.header("WWW-Authenticate")
            .unwrap_or_default()
            .contains("invalid_token"),
        "{:?}",
        bad.headers
    );
    let basic = send_with(
        "GET",
        &coordinator.url("/pool"),
        &[("Authorization", &format!("Basic {}", alice.secret))],
        None,
    )
    .expect("answer");
    assert_401(&basic, "another scheme");
    // Two keys: which one counted depended on their order (the first did).
    let head = format!(
        "GET /pool HTTP/1.1\r\nAuthorization: Bearer {}\r\nAuthorization: Bearer {}\r\n",
        ops.secret, stranger.secret
    );
    let two = exchange(coordinator.port(), &head, b"").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(two.status, 400, "{}", two.text());
    assert!(
        two.text().contains("more than one Authorization header"),
        "{}",
        two.text()
    );

    let a_job = submit_ok(&coordinator, &alice);
    let b_job = submit_ok(&coordinator, &bob);
    let a_status = wait_collected_as(&coordinator, &alice, &a_job);
    wait_collected_as(&coordinator, &bob, &b_job);

    // The admin sees both jobs, with the worker's own job id.
    let admin_view = call(&coordinator, "GET", &format!("/status/{a_job}"), Some(&ops)).json();
    let remote = admin_view["remote_job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("admin sees no remote id: {admin_view}"))
        .to_string();
    assert!(remote.starts_with("job_"), "{admin_view}");
    assert_eq!(admin_view["worker_status"]["job_id"], remote.as_str());
    let b_admin = call(&coordinator, "GET", &format!("/status/{b_job}"), Some(&ops));
    assert_eq!(b_admin.status, 200, "{}", b_admin.text());
    // And whose each job is, in /status and in /jobs.
    assert_eq!(admin_view["owner"], "alice", "{admin_view}");
    assert_eq!(b_admin.json()["owner"], "bob", "{}", b_admin.text());
    let listed = call(&coordinator, "GET", "/jobs", Some(&ops)).json();
    let owners: Vec<&str> = listed["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|job| job["owner"].as_str())
        .collect();
    assert_eq!(owners, ["bob", "alice"], "{listed}");

    // The owner sees its job, never the worker's job id.
    assert_eq!(a_status["job_id"], a_job.as_str());
    assert_eq!(a_status["remote_job_id"], "hidden", "{a_status}");
    assert_eq!(a_status["worker_status"]["job_id"], "hidden", "{a_status}");
    for path in [
        format!("/status/{a_job}"),
        format!("/logs/{a_job}"),
        format!("/outputs/{a_job}"),
        format!("/outputs/{a_job}/absent.txt"),
    ] {
        let reply = call(&coordinator, "GET", &path, Some(&alice));
        let expected = if path.ends_with("absent.txt") {
            404
        } else {
            200
        };
        assert_eq!(reply.status, expected, "{path} as owner: {}", reply.text());
        assert!(
            !reply.text().contains(&remote),
            "{path} shows {remote}: {}",
            reply.text()
        );
    }
    // An output file is the job's own bytes, passed through unchanged.
    let file = format!("/outputs/{a_job}/result.txt");
    let owner_file = call(&coordinator, "GET", &file, Some(&alice));
    assert_eq!(owner_file.status, 200, "{}", owner_file.text());
    assert_eq!(
        owner_file.body,
        call(&coordinator, "GET", &file, Some(&ops)).body
    );

    // Another submit key gets exactly the unknown-id 404, on every job route.
    let unknown = "pool-0123456789abcdef0123456789abcdef";
    let job_routes = [
        ("GET", "/status/ID"),
        ("GET", "/logs/ID"),
        ("GET", "/outputs/ID"),
        ("GET", "/outputs/ID/result.txt"),
        ("POST", "/cancel/ID"),
        ("DELETE", "/jobs/ID"),
        ("POST", "/jobs/ID/priority?priority=high"),
    ];
    for (method, route) in job_routes {
        let theirs = call(
            &coordinator,
            method,
            &route.replace("ID", &a_job),
            Some(&bob),
        );
        let none = call(
            &coordinator,
            method,
            &route.replace("ID", unknown),
            Some(&bob),
        );
        assert_eq!(
            theirs.status,
            404,
            "{method} {route} of alice's job as bob: {}",
            theirs.text()
        );
        assert_eq!(none.status, 404, "{}", none.text());
        assert_eq!(
            theirs.text().replace(&a_job, "ID"),
            none.text().replace(unknown, "ID"),
            "{method} {route}: another key's job must look unknown"
        );
    }
    // Neither bob's cancel touched alice's job, nor does the owner's or an admin's look unknown.
    let a_after = call(
        &coordinator,
        "GET",
        &format!("/status/{a_job}"),
        Some(&alice),
    )
    .json();
    assert_eq!(a_after["pool_status"], "completed", "{a_after}");
    for key in [&alice, &ops] {
        let reply = call(&coordinator, "POST", &format!("/cancel/{a_job}"), Some(key));
        assert_eq!(
            reply.status,
            409,
            "cancel of a finished job as {}: {}",
            key.name,
            reply.text()
        );
        let path = format!("/jobs/{a_job}/priority?priority=low");
        let reply = call(&coordinator, "POST", &path, Some(key));
        assert_eq!(
            reply.status,
            409,
            "{path} as {}: {}",
            key.name,
            reply.text()
        );
        assert!(reply.text().contains("left it"), "{}", reply.text());
    }
    // The admin reads any job's logs and outputs.
    for path in [
        format!("/logs/{b_job}"),
        format!("/outputs/{b_job}/result.txt"),
    ] {
        let reply = call(&coordinator, "GET", &path, Some(&ops));
        assert_eq!(reply.status, 200, "{path} as admin: {}", reply.text());
    }

    // /pool: a submit key sees counts and its own figures, no workers; the admin everything.
    let pool = call(&coordinator, "GET", "/pool", Some(&alice)).json();
    assert!(pool.get("workers").is_none(), "{pool}");
    assert!(pool.get("log_level").is_none(), "{pool}");
    // Nor the client addresses holding connections.
    assert!(pool["connections"]["open"].as_u64() >= Some(1), "{pool}");
    assert!(
        pool["connections"].get("busiest_addresses").is_none(),
        "{pool}"
    );
    assert_eq!(pool["total_workers"], 1, "{pool}");
    let keys = pool["keys"].as_object().expect("keys");
    assert_eq!(keys.keys().collect::<Vec<_>>(), ["alice"], "{pool}");
    let others = pool["queue"]["by_owner"].as_array().into_iter().flatten();
    assert!(others.clone().all(|o| o["owner"] == "alice"), "{pool}");
    assert_eq!(keys["alice"]["completed"], 1, "{pool}");
    assert_eq!(keys["alice"]["queued"], 0, "{pool}");
    let pool = call(&coordinator, "GET", "/pool", Some(&ops)).json();
    assert_eq!(pool["workers"].as_array().map(Vec::len), Some(1), "{pool}");
    // The admin's own connection is open while it asks.
    let busiest = &pool["connections"]["busiest_addresses"][0];
    assert_eq!(busiest["address"], "127.0.0.1", "{pool}");
    assert!(busiest["open"].as_u64() >= Some(1), "{pool}");
    for (name, role, done) in [
        ("alice", "submit", 1),
        ("bob", "submit", 1),
        ("ops", "admin", 0),
    ] {
        assert_eq!(pool["keys"][name]["role"], role, "{pool}");
        assert_eq!(pool["keys"][name]["completed"], done, "{pool}");
    }

    // A snapshot of the state directory holds every job and upload: admin keys only.
    assert_401(&call(&coordinator, "GET", "/snapshot", None), "/snapshot");
    let refused = call(&coordinator, "GET", "/snapshot", Some(&alice));
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(refused.text().contains("admin key"), "{}", refused.text());
    let snapshot = call(&coordinator, "GET", "/snapshot", Some(&ops));
    assert_eq!(snapshot.status, 200, "{}", snapshot.text());
    assert_eq!(snapshot.header("Content-Type"), Some("application/gzip"));

    // The owner deletes her own finished job; then it is unknown to everyone.
    let deleted = call(
        &coordinator,
        "DELETE",
        &format!("/jobs/{a_job}"),
        Some(&alice),
    );
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let gone = call(&coordinator, "GET", &format!("/status/{a_job}"), Some(&ops));
    assert_eq!(gone.status, 404, "{}", gone.text());
    // The log says which key did it, as for every other control.
    let deletion = format!("Deleted job {a_job} (key alice); it was completed");
    assert!(
        coordinator.wait_for_log(&deletion, DEADLINE),
        "{}",
        coordinator.logs()
    );

    // Pausing submits and changing the log level are for admin keys; a submit key's submit is
    // refused meanwhile.
    for route in [
        "/submits/pause",
        "/submits/resume",
        "/log-level?level=debug&for=1",
    ] {
        assert_401(&call(&coordinator, "POST", route, None), route);
        let refused = call(&coordinator, "POST", route, Some(&alice));
        assert_eq!(refused.status, 403, "{route}: {}", refused.text());
    }
    let louder = call(
        &coordinator,
        "POST",
        "/log-level?level=warn&for=0",
        Some(&ops),
    );
    assert_eq!(louder.status, 200, "{}", louder.text());
    assert_eq!(louder.json()["changed"]["by"], "ops", "{}", louder.text());
    let paused = call(&coordinator, "POST", "/submits/pause", Some(&ops));
    assert_eq!(paused.status, 200, "{}", paused.text());
    assert_eq!(paused.json()["pause"]["by"], "ops", "{}", paused.text());
    let refused = submit_as(&coordinator, Some(&alice), &job_form());
    assert_eq!(refused.status, 503, "{}", refused.text());
    let resumed = call(&coordinator, "POST", "/submits/resume", Some(&ops));
    assert_eq!(
        resumed.json()["pause_ended"]["refused_submits"],
        1,
        "{}",
        resumed.text()
    );
    assert_eq!(
        submit_as(&coordinator, Some(&alice), &job_form()).status,
        200
    );

    // Names may be logged, keys and their hashes never.
    let logs = coordinator.logs();
    assert!(logs.contains("(key alice)"), "the log names no key");
    assert!(
        logs.contains("unknown client key"),
        "refusals are not logged"
    );
    for key in [&alice, &bob, &ops, &stranger] {
        assert!(
            !logs.contains(&key.secret),
            "the key of {} is in the log",
            key.name
        );
        let hash = sha256_hex(key.secret.as_bytes());
        assert!(
            !logs.contains(&hash),
            "the key hash of {} is in the log",
            key.name
        );
    }
}

/// A worker's job id in a job's own output (here the interpreter's error naming the job
/// directory, as python prints it) is hidden from the owner in `/logs`, in `/logs?follow=1` and
/// in `/status`, and shown to an admin.
/// A read key (`"role": "read"`) sees what an admin sees (every job, with the worker's job id,
/// the workers in `/pool`, `/metrics`) and changes nothing: submits, job controls and operator
/// routes answer 403 saying so, and nothing changed.
#[test]
fn a_read_key_sees_everything_and_changes_nothing() {
    let worker = FakeWorker::start();
    let alice = Key::new("alice", "submit");
    let wall = Key::new("wall", "read");
    let (coordinator, _dir, _) = start_with_keys(&[worker.entry(2)], &[&alice, &wall], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let a_job = submit_ok(&coordinator, &alice);
    wait_collected_as(&coordinator, &alice, &a_job);

    let seen = call(
        &coordinator,
        "GET",
        &format!("/status/{a_job}"),
        Some(&wall),
    );
    assert_eq!(seen.status, 200, "{}", seen.text());
    assert!(
        seen.json()["remote_job_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("job_")),
        "{}",
        seen.text()
    );
    for path in [
        format!("/logs/{a_job}"),
        format!("/outputs/{a_job}"),
        format!("/outputs/{a_job}/result.txt"),
        "/metrics".to_string(),
        "/activity".to_string(),
    ] {
        let reply = call(&coordinator, "GET", &path, Some(&wall));
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    let listed = call(&coordinator, "GET", "/jobs", Some(&wall)).json();
    assert_eq!(listed["jobs"][0]["job_id"], a_job.as_str(), "{listed}");
    let pool = call(&coordinator, "GET", "/pool", Some(&wall)).json();
    assert_eq!(pool["workers"].as_array().map(Vec::len), Some(1), "{pool}");
    assert_eq!(pool["caller"]["role"], "read", "{pool}");
    assert_eq!(pool["caller"]["key"], "wall", "{pool}");
    assert!(pool["keys"]["alice"].is_object(), "{pool}");

    let refused = submit_as(&coordinator, Some(&wall), &job_form());
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(
        refused.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("read key") && e.contains("changes nothing")),
        "{}",
        refused.text()
    );
    let drain = drain_url(&coordinator, &worker, "drain")
        .trim_start_matches(&coordinator.url(""))
        .to_string();
    for (method, path) in [
        ("POST", format!("/cancel/{a_job}")),
        ("POST", "/cancel?status=queued,running".to_string()),
        ("DELETE", format!("/jobs/{a_job}")),
        ("POST", format!("/jobs/{a_job}/priority?priority=high")),
        ("POST", drain),
        ("POST", "/submits/pause".to_string()),
        ("POST", "/reload".to_string()),
        ("POST", "/log-level?level=debug".to_string()),
        ("GET", "/snapshot".to_string()),
    ] {
        let reply = call(&coordinator, method, &path, Some(&wall));
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.text());
        assert!(
            reply.text().contains("read key"),
            "{method} {path}: {}",
            reply.text()
        );
    }
    let after = call(&coordinator, "GET", "/pool", Some(&wall)).json();
    assert_eq!(after["total_jobs"], 1, "{after}");
    assert!(after["submits_paused"].is_null(), "{after}");
    assert_eq!(after["workers"][0]["draining"], false, "{after}");
    let kept = call(
        &coordinator,
        "GET",
        &format!("/status/{a_job}"),
        Some(&alice),
    );
    assert_eq!(kept.status, 200, "the job is still there: {}", kept.text());
    assert_eq!(kept.json()["pool_status"], "completed");
    let metrics = call(&coordinator, "GET", "/metrics", Some(&alice));
    assert_eq!(metrics.status, 403, "{}", metrics.text());
}

#[test]
fn the_worker_job_id_is_hidden_in_logs_and_followed_streams() {
    let worker = FakeWorker::start();
    let alice = Key::new("alice", "submit");
    let ops = Key::new("ops", "admin");
    let (coordinator, _dir, _) = start_with_keys(&[worker.entry(2)], &[&alice, &ops], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let form = Form::new()
        .file("main.py", "text/x-python", b"print('hi')\n")
        .manifest(r#"{"entrypoint":"absent.py"}"#);
    let reply = submit_as(&coordinator, Some(&alice), &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let id = reply.json()["job_id"].as_str().expect("job_id").to_string();
    let status = poll_until(DEADLINE, || {
        let status = call(&coordinator, "GET", &format!("/status/{id}"), Some(&ops)).json();
        (status["pool_status"] == "failed" && status["results"]["collected"] == true)
            .then_some(status)
    })
    .unwrap_or_else(|| panic!("job {id} did not fail and get collected"));
    let remote = status["remote_job_id"]
        .as_str()
        .expect("remote id")
        .to_string();
    let admin_logs = call(&coordinator, "GET", &format!("/logs/{id}"), Some(&ops));
    assert!(admin_logs.text().contains(&remote), "{}", admin_logs.text());
    for path in [
        format!("/logs/{id}"),
        format!("/logs/{id}?follow=1"),
        format!("/status/{id}"),
    ] {
        let reply = call(&coordinator, "GET", &path, Some(&alice));
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert!(
            !reply.text().contains(&remote),
            "{path} shows {remote}: {}",
            reply.text()
        );
        assert!(reply.text().contains("hidden"), "{path}: {}", reply.text());
    }
    let followed = call(
        &coordinator,
        "GET",
        &format!("/logs/{id}?follow=1"),
        Some(&ops),
    );
    assert!(followed.text().contains(&remote), "{}", followed.text());

    // Followed live from before the worker accepted it: the id is looked up once it exists.
    worker.set(|k| k.job_duration = Duration::from_millis(800));
    let reply = submit_as(&coordinator, Some(&alice), &form);
    let id = reply.json()["job_id"].as_str().expect("job_id").to_string();
    let live = call(
        &coordinator,
        "GET",
        &format!("/logs/{id}?follow=1"),
        Some(&alice),
    );
    let status = call(&coordinator, "GET", &format!("/status/{id}"), Some(&ops)).json();
    let remote = status["remote_job_id"]
        .as_str()
        .expect("remote id")
        .to_string();
    assert_eq!(live.status, 200, "{}", live.text());
    assert!(live.text().contains("[DONE]"), "{}", live.text());
    assert!(
        !live.text().contains(&remote),
        "shows {remote}: {}",
        live.text()
    );
    assert!(live.text().contains("hidden"), "{}", live.text());
}

/// An output file named after the worker's job id (a job that names it after its directory)
/// is listed to a submit key with the id hidden, and that listed name downloads it, under the
/// name asked for; an admin sees and downloads it by its own name.
#[test]
fn an_output_named_after_the_worker_job_id_downloads_by_its_listed_name() {
    let worker = FakeWorker::start_with(|k| k.extra_output = Some("{job}.out".into()));
    let alice = Key::new("alice", "submit");
    let ops = Key::new("ops", "admin");
    let (coordinator, _dir, _) = start_with_keys(&[worker.entry(2)], &[&alice, &ops], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit_ok(&coordinator, &alice);
    wait_collected_as(&coordinator, &alice, &id);
    let status = call(&coordinator, "GET", &format!("/status/{id}"), Some(&ops)).json();
    let remote = status["remote_job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(remote.starts_with("job_"), "{status}");
    let listing = call(&coordinator, "GET", &format!("/outputs/{id}"), Some(&alice));
    assert_eq!(listing.status, 200, "{}", listing.text());
    assert!(!listing.text().contains(&remote), "{}", listing.text());
    let files = listing.json()["files"].clone();
    let listed = files
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["name"] == "hidden.out")
        .unwrap_or_else(|| panic!("no hidden.out listed: {files}"));
    let url = listed["download_url"].as_str().unwrap_or_default();
    let download = call(&coordinator, "GET", url, Some(&alice));
    assert_eq!(download.status, 200, "{url}: {}", download.text());
    assert_eq!(download.text(), "extra output\n");
    let disposition = download.header("content-disposition").unwrap_or_default();
    assert!(disposition.contains("hidden.out"), "{disposition}");
    assert!(!disposition.contains(&remote), "{disposition}");
    let direct = call(
        &coordinator,
        "GET",
        &format!("/outputs/{id}/hidden.out"),
        Some(&alice),
    );
    assert_eq!(direct.status, 200, "{}", direct.text());
    let own = call(
        &coordinator,
        "GET",
        &format!("/download/{id}/{remote}.out"),
        Some(&ops),
    );
    assert_eq!(own.status, 200, "{}", own.text());
    assert!(own
        .header("content-disposition")
        .unwrap_or_default()
        .contains(&remote));
}

/// A lost job's error names the worker's URL for the job (a transport error); a submit key
/// reads it with the worker's job id hidden in `/status` and `/activity`, an admin reads it whole.
#[test]
fn a_lost_jobs_error_hides_the_worker_job_id() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(30));
    let alice = Key::new("alice", "submit");
    let ops = Key::new("ops", "admin");
    let mut args = FAST.to_vec();
    args.extend(["--lost-after", "1"]);
    let (coordinator, _dir, _) = start_with_keys(&[worker.entry(2)], &[&alice, &ops], &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit_ok(&coordinator, &alice);
    let remote = poll_until(DEADLINE, || {
        let status = call(&coordinator, "GET", &format!("/status/{id}"), Some(&ops)).json();
        status["remote_job_id"].as_str().map(str::to_string)
    })
    .expect("never dispatched");
    worker.stop();
    let admin = poll_until(DEADLINE, || {
        let status = call(&coordinator, "GET", &format!("/status/{id}"), Some(&ops)).json();
        (status["pool_status"] == "lost").then_some(status)
    })
    .expect("never lost");
    let error = admin["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains(&remote),
        "the admin's error does not name {remote}: {admin}"
    );
    for path in [format!("/status/{id}"), "/activity".to_string()] {
        let reply = call(&coordinator, "GET", &path, Some(&alice));
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert!(reply.text().contains(&id), "{path}: {}", reply.text());
        assert!(
            !reply.text().contains(&remote),
            "{path} shows {remote}: {}",
            reply.text()
        );
    }
    let activity = call(&coordinator, "GET", "/activity", Some(&ops));
    assert!(activity.text().contains(&remote), "{}", activity.text());
}

/// A key's `max_queued_jobs` caps its waiting jobs: 429 with Retry-After beyond it, nothing
/// left in the spool, other keys unaffected; a job that starts frees a place.
#[test]
fn max_queued_jobs_caps_waiting_jobs_per_key() {
    let worker = FakeWorker::start();
    worker.stop();
    let carol = Key::limited("carol", 2);
    let ops = Key::new("ops", "admin");
    let (coordinator, _dir, _) = start_with_keys(&[worker.entry(4)], &[&carol, &ops], &FAST);
    submit_ok(&coordinator, &carol);
    submit_ok(&coordinator, &carol);
    let refused = submit_as(&coordinator, Some(&carol), &job_form());
    assert_eq!(refused.status, 429, "{}", refused.text());
    let retry = refused.header("Retry-After").unwrap_or_default();
    assert!(
        retry.parse::<u32>().is_ok_and(|s| s >= 1),
        "Retry-After {retry:?}"
    );
    assert!(refused.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("max_queued_jobs"));
    submit_ok(&coordinator, &ops);
    let pool = call(&coordinator, "GET", "/pool", Some(&ops)).json();
    assert_eq!(pool["keys"]["carol"]["queued"], 2, "{pool}");
    assert_eq!(pool["keys"]["ops"]["queued"], 1, "{pool}");
    assert_eq!(
        pool["spool"]["uploads_in_memory"], 3,
        "the refused upload stayed: {pool}"
    );

    worker.restart();
    poll_until(DEADLINE, || {
        let pool = call(&coordinator, "GET", "/pool", Some(&carol)).json();
        (pool["keys"]["carol"]["queued"] == 0).then_some(())
    })
    .expect("carol's jobs never left the queue");
    submit_ok(&coordinator, &carol);
}

/// A key's `archives` overrides `--refuse-archives` either way: under the flag, a key with
/// `"archives": true` sends a tarball and keys that set nothing (an admin's too) are refused,
/// naming the flag;
/// without it, a key with `"archives": false` is refused, naming the key, and a reload that
/// changes its entry changes its answer. Plain files are taken from every key; `/pool` shows
/// each key's setting.
#[test]
fn a_keys_archives_setting_overrides_refuse_archives_either_way() {
    let worker = FakeWorker::start();
    let trusted = Key::archives("trusted", true);
    let plain = Key::new("plain", "submit");
    let barred = Key::archives("barred", false);
    let ops = Key::new("ops", "admin");
    let keys = [&trusted, &plain, &barred, &ops];
    let tarball = Form::new()
        .file(
            "job.tar.gz",
            "application/gzip",
            &tar_gz(&[("main.py", b"print('hi')\n")]),
        )
        .manifest(r#"{"entrypoint":"main.py"}"#);
    let by_flag = "this coordinator takes no archives (--refuse-archives)";
    let by_key = "the client key barred may send none (\"archives\": false in the keys file)";
    for (extra, refused) in [
        (
            &["--refuse-archives"][..],
            vec![("plain", by_flag), ("ops", by_flag), ("barred", by_key)],
        ),
        (&[][..], vec![("barred", by_key)]),
    ] {
        let (coordinator, _dir, _) = start_with_keys(&[worker.entry(4)], &keys, extra);
        for key in keys {
            let reply = submit_as(&coordinator, Some(key), &tarball);
            match refused.iter().find(|(name, _)| *name == key.name) {
                Some((_, why)) => {
                    assert_eq!(
                        reply.status,
                        400,
                        "{extra:?} {}: {}",
                        key.name,
                        reply.text()
                    );
                    let error = reply.json()["error"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    assert!(
                        error.contains("\"job.tar.gz\" would be unpacked by a sandrun worker")
                            && error.contains(why)
                            && error.ends_with("send the files themselves, each as a 'files' part"),
                        "{extra:?} {}: {error}",
                        key.name
                    );
                }
                None => assert_eq!(
                    reply.status,
                    200,
                    "{extra:?} {}: {}",
                    key.name,
                    reply.text()
                ),
            }
            submit_ok(&coordinator, key);
        }
        let pool = call(&coordinator, "GET", "/pool", Some(&ops)).json();
        assert_eq!(pool["keys"]["trusted"]["archives"], true, "{pool}");
        assert_eq!(pool["keys"]["plain"]["archives"], Value::Null, "{pool}");
        assert_eq!(pool["keys"]["barred"]["archives"], false, "{pool}");
    }

    let (coordinator, _dir, keys_path) = start_with_keys(&[worker.entry(4)], &keys, &[]);
    let freed = Key::archives("barred", true);
    write_keys(&keys_path, &[&trusted, &plain, &freed, &ops]);
    hup(&coordinator);
    keys_reload_seen(&coordinator, &ops, "ok");
    let reply = submit_as(&coordinator, Some(&barred), &tarball);
    assert_eq!(reply.status, 200, "after the reload: {}", reply.text());
}

/// An `Idempotency-Key` is the submitting key's own: another key's submit with the same one
/// makes its own job, and a repeat is answered its job even past the key's `max_queued_jobs`.
#[test]
fn an_idempotency_key_belongs_to_the_key_that_gave_it() {
    let worker = FakeWorker::start();
    worker.stop();
    let carol = Key::limited("carol", 1);
    let dave = Key::new("dave", "submit");
    let (coordinator, _dir, _) = start_with_keys(&[worker.entry(4)], &[&carol, &dave], &FAST);
    let keyed = |key: &Key| {
        let form = job_form();
        let auth = format!("Bearer {}", key.secret);
        let headers = [
            ("Authorization", auth.as_str()),
            ("Idempotency-Key", "nightly-7"),
        ];
        let reply = send_with(
            "POST",
            &coordinator.url("/submit"),
            &headers,
            Some((&form.content_type(), &form.body())),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.status, 200, "{}: {}", key.name, reply.text());
        let replayed = reply.header("Idempotent-Replayed").is_some();
        (
            reply.json()["job_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            replayed,
        )
    };
    let (carols, replayed) = keyed(&carol);
    assert!(!replayed);
    // Carol's one queued job is her max_queued_jobs: a new job is refused, her repeat is not.
    let refused = submit_as(&coordinator, Some(&carol), &job_form());
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(keyed(&carol), (carols.clone(), true));
    let (daves, replayed) = keyed(&dave);
    assert!(!replayed && daves != carols, "{daves} {carols}");
    let hidden = call(
        &coordinator,
        "GET",
        &format!("/status/{carols}"),
        Some(&dave),
    );
    assert_eq!(hidden.status, 404, "{}", hidden.text());
}

fn hup(coordinator: &Coordinator) {
    assert!(coordinator.signal(libc::SIGHUP), "kill -HUP");
}

/// The failed key reloads `/metrics` counted, as `key` reads them.
fn key_reloads_failed(coordinator: &Coordinator, key: &Key) -> String {
    let scrape = call(coordinator, "GET", "/metrics", Some(key));
    assert_eq!(scrape.status, 200, "{}", scrape.text());
    scrape
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("trusted_pool_key_reloads_failed_total "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no key reload counter in {}", scrape.text()))
}

/// `/pool`'s `last_reload` once its `keys` member says `wanted` (`"error"` or `"ok"`).
fn keys_reload_seen(coordinator: &Coordinator, admin: &Key, wanted: &str) -> Value {
    let mut last = Value::Null;
    poll_until(DEADLINE, || {
        last = call(coordinator, "GET", "/pool", Some(admin)).json()["last_reload"].clone();
        let outcome = if last["keys"]["error"].is_string() {
            "error"
        } else {
            "ok"
        };
        (last["keys"].is_object() && outcome == wanted).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("/pool's last_reload never said {wanted}: {last}"))
}

/// SIGHUP and `POST /reload` re-read the keys file: a good file takes effect at once, a bad
/// one is refused, logged, shown in `/pool`'s `last_reload` and counted in `/metrics` while
/// the old keys stay.
#[test]
fn sighup_reloads_the_keys_and_a_bad_file_keeps_the_old_ones() {
    let worker = FakeWorker::start();
    let alice = Key::new("alice", "submit");
    let dave = Key::new("dave", "admin");
    let (coordinator, _dir, keys_path) = start_with_keys(&[worker.entry(2)], &[&alice], &FAST);
    assert_eq!(call(&coordinator, "GET", "/pool", Some(&alice)).status, 200);
    assert_401(
        &call(&coordinator, "GET", "/pool", Some(&dave)),
        "dave before the reload",
    );

    write_keys(&keys_path, &[&alice, &dave]);
    hup(&coordinator);
    assert!(
        coordinator.wait_for_log("Client keys reloaded: 2", DEADLINE),
        "no reload logged"
    );
    assert_eq!(call(&coordinator, "GET", "/pool", Some(&dave)).status, 200);
    let last = keys_reload_seen(&coordinator, &dave, "ok");
    assert_eq!(last["keys"]["in_force"], 2, "{last}");
    assert_eq!(key_reloads_failed(&coordinator, &dave), "0");

    fs::write(
        &keys_path,
        r#"[{"name": "dave", "key_sha256": "nothex", "role": "admin"}]"#,
    )
    .expect("write");
    hup(&coordinator);
    assert!(
        coordinator.wait_for_log("Client keys NOT reloaded", DEADLINE),
        "no refusal logged"
    );
    assert!(
        coordinator.logs().contains("64 hex digits"),
        "the reason is not logged"
    );
    assert_eq!(call(&coordinator, "GET", "/pool", Some(&alice)).status, 200);
    assert_eq!(call(&coordinator, "GET", "/pool", Some(&dave)).status, 200);
    let last = keys_reload_seen(&coordinator, &dave, "error");
    let error = last["keys"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("64 hex digits"), "{last}");
    assert!(error.contains("keys.json"), "{last}");
    assert_eq!(last["keys"]["in_force"], 2, "{last}");
    assert_eq!(key_reloads_failed(&coordinator, &dave), "1");
    // A submit key is not shown the error, which names other keys' entries.
    let seen_by_alice = call(&coordinator, "GET", "/pool", Some(&alice)).json();
    assert!(
        seen_by_alice["last_reload"].is_object() && seen_by_alice["last_reload"]["keys"].is_null(),
        "{seen_by_alice}"
    );
    // POST /reload re-reads the keys file too, and answers 400 with its error.
    let reloaded = call(&coordinator, "POST", "/reload", Some(&dave));
    assert_eq!(reloaded.status, 400, "{}", reloaded.text());
    let answer = reloaded.json();
    // The workers file is fine; the error at the top names the keys file's.
    assert!(
        answer["error"].as_str().is_some_and(|e| e.starts_with(
            "the client keys file was refused, and the keys in force stay (the workers file was applied): "
        ) && e.contains("64 hex digits")),
        "{answer}"
    );
    assert!(
        answer["keys"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("64 hex digits")),
        "{answer}"
    );
    assert_eq!(key_reloads_failed(&coordinator, &dave), "2");
    write_keys(&keys_path, &[&alice, &dave]);
    let reloaded = call(&coordinator, "POST", "/reload", Some(&dave));
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(
        reloaded.json()["keys"]["in_force"],
        2,
        "{}",
        reloaded.text()
    );
    assert!(keys_reload_seen(&coordinator, &dave, "ok")["source"]
        .as_str()
        .is_some_and(|s| s.starts_with("POST /reload")));

    write_keys(&keys_path, &[&dave]);
    hup(&coordinator);
    assert!(coordinator.wait_for_log("Client keys reloaded: 1", DEADLINE));
    assert_401(
        &call(&coordinator, "GET", "/pool", Some(&alice)),
        "a removed key",
    );
    let logs = coordinator.logs();
    for key in [&alice, &dave] {
        assert!(
            !logs.contains(&key.secret),
            "the key of {} is in the log",
            key.name
        );
    }
}

/// The names in `/pool`'s `keys` as `admin` reads them, sorted.
fn key_names(coordinator: &Coordinator, admin: &Key) -> (Vec<String>, Value) {
    let pool = call(coordinator, "GET", "/pool", Some(admin)).json();
    let mut names: Vec<String> = pool["keys"]
        .as_object()
        .map(|keys| keys.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    (names, pool)
}

/// A key removed from the keys file leaves `/pool`'s `keys` once it has no job queued,
/// dispatched or running: at the reload when it has none, when its last job ends otherwise.
/// Keys still in the file keep the figures of their ended jobs.
#[test]
fn a_removed_keys_figures_go_once_its_last_job_ended() {
    let worker = FakeWorker::start();
    let alice = Key::new("alice", "submit");
    let bob = Key::new("bob", "submit");
    let carol = Key::new("carol", "submit");
    let ops = Key::new("ops", "admin");
    let (coordinator, _dir, keys_path) =
        start_with_keys(&[worker.entry(2)], &[&alice, &bob, &carol, &ops], &FAST);
    for key in [&alice, &carol] {
        let id = submit_ok(&coordinator, key);
        wait_collected_as(&coordinator, key, &id);
    }
    // A drained worker takes no job: bob's stays queued.
    let drain = drain_url(&coordinator, &worker, "drain")
        .trim_start_matches(&coordinator.url(""))
        .to_string();
    let drained = call(&coordinator, "POST", &drain, Some(&ops));
    assert_eq!(drained.status, 200, "{}", drained.text());
    let bobs = submit_ok(&coordinator, &bob);

    write_keys(&keys_path, &[&carol, &ops]);
    let reloaded = call(&coordinator, "POST", "/reload", Some(&ops));
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let (names, pool) = key_names(&coordinator, &ops);
    assert_eq!(names, ["bob", "carol", "ops"], "{pool}");
    assert_eq!(pool["keys"]["bob"]["role"], Value::Null, "{pool}");
    assert_eq!(pool["keys"]["bob"]["queued"], 1, "{pool}");
    assert_eq!(pool["keys"]["carol"]["role"], "submit", "{pool}");
    assert_eq!(pool["keys"]["carol"]["completed"], 1, "{pool}");
    assert_eq!(pool["keys"]["ops"]["completed"], 0, "{pool}");

    let cancelled = call(&coordinator, "POST", &format!("/cancel/{bobs}"), Some(&ops));
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    let mut last = Value::Null;
    poll_until(DEADLINE, || {
        let (names, pool) = key_names(&coordinator, &ops);
        last = pool;
        (names == ["carol", "ops"]).then_some(())
    })
    .unwrap_or_else(|| panic!("bob's figures stayed after his last job ended: {last}"));
    assert_eq!(last["keys"]["carol"]["completed"], 1, "{last}");
    // The job itself is still there for admins.
    let status = call(&coordinator, "GET", &format!("/status/{bobs}"), Some(&ops));
    assert_eq!(
        status.json()["pool_status"],
        "cancelled",
        "{}",
        status.text()
    );
}

fn trusted_pool(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trusted-pool"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run trusted-pool")
}

/// `new-key` prints a key and the entry that admits it; `check --api-keys` validates a keys
/// file; the coordinator refuses to start on a bad one.
#[test]
fn new_key_check_and_a_bad_keys_file_at_start() {
    let dir = support::temp_dir();
    let mut entries = Vec::new();
    let mut secrets = Vec::new();
    for (name, role) in [("alice", "submit"), ("ops", "admin"), ("wall", "read")] {
        let mut args = vec!["new-key", name];
        match role {
            "admin" => args.push("--admin"),
            "read" => args.push("--read"),
            _ => {}
        }
        let out = trusted_pool(&args);
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let key = stdout
            .lines()
            .find_map(|l| l.strip_prefix("key:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no key line: {stdout}"))
            .to_string();
        assert!(key.len() >= 40, "a short key: {key}");
        let entry: Value = stdout
            .lines()
            .find_map(|l| l.strip_prefix("entry:"))
            .and_then(|e| serde_json::from_str(e.trim()).ok())
            .unwrap_or_else(|| panic!("no entry line: {stdout}"));
        assert_eq!(entry["name"], name);
        assert_eq!(entry["role"], role);
        assert_eq!(entry["key_sha256"], sha256_hex(key.as_bytes()));
        assert!(!secrets.contains(&key), "the same key twice");
        secrets.push(key);
        entries.push(entry);
    }
    assert_eq!(
        trusted_pool(&["new-key", "bad name"]).status.code(),
        Some(2)
    );
    assert_eq!(trusted_pool(&["new-key"]).status.code(), Some(2));
    assert_eq!(
        trusted_pool(&["new-key", "both", "--admin", "--read"])
            .status
            .code(),
        Some(2)
    );

    let keys = dir.path().join("keys.json");
    fs::write(&keys, serde_json::to_vec(&entries).expect("json")).expect("write");
    let out = trusted_pool(&["check", "--api-keys", keys.to_str().expect("path")]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("key 0: alice (submit")
            && stdout.contains("key 2: wall (read")
            && stdout.contains("3 keys, OK"),
        "{stdout}"
    );
    for secret in &secrets {
        assert!(!stdout.contains(secret.as_str()));
    }

    let bad = dir.path().join("bad.json");
    fs::write(
        &bad,
        r#"[{"name": "x", "key_sha256": "00", "role": "submit"}]"#,
    )
    .expect("write");
    let out = trusted_pool(&["check", "--api-keys", bad.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key_sha256"),
        "{out:?}"
    );

    let worker = FakeWorker::start();
    let wdir = workers_dir(&[worker.entry(1)]);
    let started =
        Coordinator::try_start_in(wdir.path(), &["--api-keys", bad.to_str().expect("path")]);
    let error = started.err().expect("started on a bad keys file");
    assert!(error.contains("key_sha256"), "{error}");

    let help = String::from_utf8_lossy(&trusted_pool(&["--help"]).stdout).into_owned();
    assert!(
        help.contains("--api-keys") && help.contains("new-key") && help.contains("--expires"),
        "{help}"
    );

    // An expiring key: its entry says when, and check lists it (expired or not).
    let out = trusted_pool(&["new-key", "--expires", "2099-01-31", "temp"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(r#""role": "submit", "expires": "2099-01-31T00:00:00Z"}"#),
        "{stdout}"
    );
    for bad in ["2099-02-30", "tomorrow", "2099-01-31T12:00:00+01:00"] {
        let out = trusted_pool(&["new-key", "temp", "--expires", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
    }
    // A key made already expired would be refused from its first request.
    let out = trusted_pool(&["new-key", "temp", "--expires", "2020-01-01"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("--expires 2020-01-01T00:00:00Z is past"),
        "{stderr}"
    );
    let dated = dir.path().join("dated.json");
    let with_expiry = |at: &str| {
        format!(
            r#"[{{"name": "old", "key_sha256": "{}", "role": "submit", "expires": "{at}"}}]"#,
            sha256_hex(b"old")
        )
    };
    fs::write(&dated, with_expiry("2020-01-01")).expect("write");
    let out = trusted_pool(&["check", "--api-keys", dated.to_str().expect("path")]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("key 0: old (submit, no queue limit, EXPIRED at 2020-01-01T00:00:00Z"),
        "{stdout}"
    );
    fs::write(&dated, with_expiry("2020-01-01T25:00:00Z")).expect("write");
    let out = trusted_pool(&["check", "--api-keys", dated.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expires"),
        "{out:?}"
    );
}

/// A key past its `expires` is refused with 401 (named in the answer and the log); one that
/// expires within a week is warned of when the keys are read; a reload with a later date lets
/// the key in again, and `/pool` and `/metrics` show each key's expiry to an admin.
#[test]
fn an_expired_key_is_refused_and_one_about_to_expire_is_warned_of() {
    let worker = FakeWorker::start();
    let soon = in_two_days();
    let carol = Key::expiring("carol", "2020-01-01");
    let dave = Key::expiring("dave", &soon);
    let ops = Key::new("ops", "admin");
    let (coordinator, _dir, keys_path) =
        start_with_keys(&[worker.entry(2)], &[&carol, &dave, &ops], &FAST);
    assert!(coordinator.wait_for_log(
        "Client key carol expired at 2020-01-01T00:00:00Z: it is refused",
        DEADLINE
    ));
    assert!(coordinator.wait_for_log(
        &format!("Client key dave expires at {soon}T00:00:00Z"),
        DEADLINE
    ));

    let refused = call(&coordinator, "GET", "/pool", Some(&carol));
    assert_401(&refused, "an expired key");
    assert!(
        refused
            .text()
            .contains("(carol) expired at 2020-01-01T00:00:00Z"),
        "{}",
        refused.text()
    );
    assert!(
        refused
            .header("WWW-Authenticate")
            .is_some_and(|h| h.contains("invalid_token")),
        "{:?}",
        refused.headers
    );
    assert!(coordinator.wait_for_log("the client key carol expired at", DEADLINE));
    submit_ok(&coordinator, &dave);
    let pool = call(&coordinator, "GET", "/pool", Some(&ops)).json();
    assert_eq!(
        pool["keys"]["carol"]["expires"], "2020-01-01T00:00:00Z",
        "{pool}"
    );
    assert_eq!(
        pool["keys"]["dave"]["expires"],
        format!("{soon}T00:00:00Z"),
        "{pool}"
    );
    assert_eq!(pool["keys"]["ops"]["expires"], Value::Null, "{pool}");
    let expiry_of = |name: &str| {
        let metrics = call(&coordinator, "GET", "/metrics", Some(&ops)).text();
        let series = format!("trusted_pool_client_key_expiry_timestamp_seconds{{key=\"{name}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map(str::to_string)
    };
    assert_eq!(expiry_of("carol").as_deref(), Some("1577836800"));
    assert!(expiry_of("dave").is_some());
    assert_eq!(
        expiry_of("ops"),
        None,
        "a key that never expires has no series"
    );

    let renewed = Key::expiring("carol", "2099-12-31T23:59:59Z");
    write_keys(&keys_path, &[&renewed, &dave, &ops]);
    hup(&coordinator);
    poll_until(DEADLINE, || {
        (call(&coordinator, "GET", "/pool", Some(&carol)).status == 200).then_some(())
    })
    .expect("the renewed key was still refused");
    assert_eq!(expiry_of("carol").as_deref(), Some("4102444799"));
}

/// The UTC date (`YYYY-MM-DD`) two days from now.
fn in_two_days() -> String {
    let out = Command::new("date")
        .args(["-u", "-d", "+2 days", "+%F"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An open coordinator (no --api-keys) warns at start when it listens beyond loopback, naming
/// the address it bound, and stays quiet on loopback or with keys.
#[test]
fn an_open_port_beyond_loopback_is_warned_about() {
    let worker = FakeWorker::start();
    let dir = workers_dir(&[worker.entry(1)]);
    let warning = "No --api-keys: anyone who reaches";
    let loopback = Coordinator::start_in(dir.path(), &[]);
    assert!(!loopback.logs().contains(warning), "{}", loopback.logs());
    drop(loopback);

    let mut child = Command::new(env!("CARGO_BIN_EXE_trusted-pool"))
        .args(["--port", "0", "--bind", "0.0.0.0", "--workers"])
        .arg(dir.path().join("workers.json"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = String::new();
        for line in std::io::BufReader::new(&mut stderr).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("Listening on") {
                break;
            }
        }
        seen
    });
    let seen = reader.join().expect("reader");
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains(warning), "no warning on 0.0.0.0: {seen}");
    // It names the port the system chose for --port 0, the one "Listening on" gives.
    let bound = seen
        .lines()
        .find_map(|l| l.split("Listening on http://").nth(1))
        .unwrap_or_else(|| panic!("no listening line: {seen}"));
    assert!(
        seen.contains(&format!("anyone who reaches {bound} ")),
        "{seen}"
    );
}

/// `GET path` with `key` from the local address `from`, with the extra header lines `headers`
/// (each ending in CRLF): the status and the whole answer.
fn get_from(
    coordinator: &Coordinator,
    from: &str,
    key: &Key,
    path: &str,
    headers: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = coordinator.connect_from(from.parse().expect("address"));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: pool\r\nAuthorization: Bearer {}\r\n{headers}Connection: close\r\n\r\n",
        key.secret
    );
    stream.write_all(request.as_bytes()).expect("send");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    (status_of(&answer), answer)
}

/// A key with `bound_cidrs` is refused with 403 from any other client address (the answer
/// names the address it came from, the log the key and its blocks) and served from its own,
/// also as the client a trusted proxy forwards for; `/pool`, `check` and `new-key` show and
/// write the blocks.
#[test]
fn a_bound_key_is_refused_outside_its_addresses() {
    let worker = FakeWorker::start();
    let erin = Key::bound("erin", &["127.0.0.2"]);
    let frank = Key::bound("frank", &["10.0.0.0/8"]);
    let ops = Key::new("ops", "admin");
    let mut args = FAST.to_vec();
    args.extend(["--trusted-proxies", "127.0.0.3"]);
    let (coordinator, dir, keys_path) =
        start_with_keys(&[worker.entry(2)], &[&erin, &frank, &ops], &args);

    let refused = call(&coordinator, "GET", "/pool", Some(&erin));
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(
        refused.text().contains(
            "this client key (erin) may be used only from the addresses its entry binds it to (bound_cidrs); this request came from 127.0.0.1"
        ),
        "{}",
        refused.text()
    );
    assert!(coordinator.wait_for_log(
        "Refused GET /pool: the client key erin was sent from 127.0.0.1, outside its bound_cidrs (127.0.0.2/32)",
        DEADLINE
    ));
    let (status, answer) = get_from(&coordinator, "127.0.0.2", &erin, "/jobs", "");
    assert_eq!(status, 200, "{answer}");
    // Behind a trusted proxy, the client it forwards for is the one checked.
    let inside = "X-Forwarded-For: 10.1.2.3\r\n";
    let (status, answer) = get_from(&coordinator, "127.0.0.3", &frank, "/jobs", inside);
    assert_eq!(status, 200, "{answer}");
    let outside = "X-Forwarded-For: 192.0.2.1\r\n";
    let (status, answer) = get_from(&coordinator, "127.0.0.3", &frank, "/jobs", outside);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.contains("this request came from 192.0.2.1"),
        "{answer}"
    );

    // Every refusal is counted by why, every answer by its status class.
    assert_eq!(call(&coordinator, "GET", "/jobs", None).status, 401);
    let stranger = Key::new("stranger", "submit");
    assert_eq!(
        call(&coordinator, "GET", "/jobs", Some(&stranger)).status,
        401
    );
    let metrics = call(&coordinator, "GET", "/metrics", Some(&ops)).text();
    let sample = |series: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    for (reason, count) in [
        ("missing", 1),
        ("unknown", 1),
        ("expired", 0),
        ("bound_cidrs", 2),
    ] {
        let series = format!("trusted_pool_requests_refused_for_key_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&series), count, "{series}");
    }
    assert!(sample("trusted_pool_http_responses_total{code=\"2xx\"}") >= 2);
    assert_eq!(sample("trusted_pool_http_responses_total{code=\"4xx\"}"), 4);
    assert_eq!(sample("trusted_pool_http_responses_total{code=\"5xx\"}"), 0);
    let pool = call(&coordinator, "GET", "/pool", Some(&ops)).json();
    assert_eq!(
        pool["keys"]["erin"]["bound_cidrs"],
        serde_json::json!(["127.0.0.2/32"]),
        "{pool}"
    );
    assert_eq!(
        pool["keys"]["ops"]["bound_cidrs"],
        serde_json::json!([]),
        "{pool}"
    );
    let out = trusted_pool(&["check", "--api-keys", keys_path.to_str().expect("path")]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("key 1: frank (submit, no queue limit, only from 10.0.0.0/8)"),
        "{stdout}"
    );

    // A reload that unbinds the key lets it in from anywhere.
    write_keys(&keys_path, &[&Key::new("erin", "submit"), &frank, &ops]);
    hup(&coordinator);
    poll_until(DEADLINE, || {
        (call(&coordinator, "GET", "/pool", Some(&erin)).status == 200).then_some(())
    })
    .expect("the unbound key was still refused");

    let out = trusted_pool(&["new-key", "--bound-cidrs", "10.0.0.0/8,192.0.2.7", "ci"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(r#""role": "submit", "bound_cidrs": ["10.0.0.0/8", "192.0.2.7/32"]}"#),
        "{stdout}"
    );
    let out = trusted_pool(&["new-key", "ci", "--bound-cidrs", "10.0.0.0/33"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    drop(dir);
}

/// The UTC time (`YYYY-MM-DDTHH:MM:SSZ`) this many seconds from now.
fn in_seconds(secs: u32) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("+{secs} seconds"), "+%FT%TZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Follows job `id` (`/logs/{id}?follow=1`) as `key`, once its first line came.
fn follow_as(coordinator: &Coordinator, key: &Key, id: &str) -> Followed {
    let auth = format!("Bearer {}", key.secret);
    let mut followed = follow_logs_with(coordinator.port(), id, &[("Authorization", &auth)]);
    assert_eq!(followed.status, 200, "{} follows {id}", key.name);
    assert!(
        followed.wait_for("[STATUS] Job status", DEADLINE).is_some(),
        "{} got no first line: {}",
        key.name,
        followed.text()
    );
    followed
}

/// Waits for a followed text stream to end; its last piece must say why, naming `why`.
fn assert_ended(followed: &mut Followed, who: &str, why: &str) {
    assert_ended_with(followed, who, why, "last chunk");
}

/// [`assert_ended`] for a stream that ends as `how` (`last chunk`, `close 1008`).
fn assert_ended_with(followed: &mut Followed, who: &str, why: &str, how: &str) {
    let pieces = followed.all(DEADLINE);
    let last = pieces.last().map(|(_, p)| p.as_str()).unwrap_or_default();
    assert!(
        last.starts_with("[ERROR] This stream ended: ") && last.contains(why),
        "{who}'s stream: {:?}",
        followed.text()
    );
    assert_eq!(followed.ending().as_deref(), Some(how), "{who}");
}

/// A followed job's stream holds its key: a reload that removes the key, binds it elsewhere or
/// takes away its view ends the streams it opened, at once, with a line saying why; a key given
/// an expiry ends them when it comes (a WebSocket with close 1008). Other keys' streams go on.
#[test]
fn a_key_that_no_longer_holds_ends_the_streams_it_opened() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(600));
    let alice = Key::new("alice", "submit");
    let bob = Key::new("bob", "submit");
    let carol = Key::new("carol", "submit");
    let erin = Key::new("erin", "submit");
    let wall = Key::new("wall", "read");
    let keys = [&alice, &bob, &carol, &erin, &wall];
    let (coordinator, _dir, keys_path) = start_with_keys(&[worker.entry(8)], &keys, &FAST);
    let ids: Vec<String> = keys[..4]
        .iter()
        .map(|key| submit_ok(&coordinator, key))
        .collect();
    let mut streams: Vec<Followed> = keys[..4]
        .iter()
        .zip(&ids)
        .map(|(key, id)| follow_as(&coordinator, key, id))
        .collect();
    let mut watched = follow_as(&coordinator, &wall, &ids[1]);
    let alice_auth = format!("Bearer {}", alice.secret);
    let mut alice_ws = follow_websocket_with(
        coordinator.port(),
        &ids[0],
        &[("Authorization", &alice_auth)],
    );
    assert_eq!(alice_ws.status, 101);
    assert!(alice_ws.wait_for("[STATUS] Job status", DEADLINE).is_some());

    write_keys(&keys_path, &keys);
    hup(&coordinator);
    assert!(coordinator.wait_for_log("Client keys reloaded: 5", DEADLINE));

    let bound = Key::bound("carol", &["10.0.0.0/8"]);
    let expiring = Key {
        expires: Some(in_seconds(4)),
        ..Key::new("erin", "submit")
    };
    let demoted = Key::new("wall", "submit");
    write_keys(&keys_path, &[&bob, &bound, &expiring, &demoted]);
    hup(&coordinator);
    assert!(coordinator.wait_for_log("Client keys reloaded: 4", DEADLINE));
    assert_ended(&mut streams[0], "alice", "the client key alice was removed");
    assert_ended_with(
        &mut alice_ws,
        "alice's WebSocket",
        "the client key alice was removed",
        "close 1008",
    );
    assert_ended(
        &mut streams[2],
        "carol",
        "the client key carol may no longer be used from 127.0.0.1",
    );
    assert_ended(&mut watched, "wall", "its role is now submit");
    assert!(coordinator.wait_for_log(
        &format!(
            "Ended a follower of job {}: the client key alice was removed",
            ids[0]
        ),
        DEADLINE
    ));
    assert_ended(&mut streams[3], "erin", "the client key erin expired at");

    // Bob's stream went on through both reloads, to his job's end.
    let cancel = call(
        &coordinator,
        "POST",
        &format!("/cancel/{}", ids[1]),
        Some(&bob),
    );
    assert_eq!(cancel.status, 200, "{}", cancel.text());
    let pieces = streams[1].all(DEADLINE);
    let text = streams[1].text();
    assert!(
        text.contains("[DONE]") && !text.contains("[ERROR]"),
        "bob's stream: {text:?}"
    );
    assert!(!pieces.is_empty());
    poll_until(DEADLINE, || {
        let pool = call(&coordinator, "GET", "/pool", Some(&demoted)).json();
        (pool["followers"]["following"] == 0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "followers left: {}",
            call(&coordinator, "GET", "/pool", Some(&bob)).text()
        )
    });
}

/// A `?wait=` request parked while its key held is answered as a new request with that key
/// would be: a key removed meanwhile gets 401, one bound elsewhere 403, one that no longer sees
/// the job 404 (no status, no worker job id). A key that still holds gets the status.
#[test]
fn a_parked_status_request_is_answered_to_its_key_as_it_holds_at_the_answer() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(600));
    let ops = Key::new("ops", "admin");
    let alice = Key::new("alice", "submit");
    let bob = Key::new("bob", "submit");
    let carol = Key::new("carol", "submit");
    let wall = Key::new("wall", "read");
    let keys = [&ops, &alice, &bob, &carol, &wall];
    let (coordinator, _dir, keys_path) = start_with_keys(&[worker.entry(1)], &keys, &FAST);
    // The worker's one slot is taken: the jobs waited on stay queued until they are cancelled.
    submit_ok(&coordinator, &ops);
    let ids: Vec<String> = [&alice, &bob, &carol]
        .iter()
        .map(|key| submit_ok(&coordinator, key))
        .collect();
    let waits = [
        (&alice, &ids[0]),
        (&bob, &ids[1]),
        (&carol, &ids[2]),
        (&wall, &ids[1]),
    ];
    let parked: Vec<_> = waits
        .iter()
        .map(|(key, id)| {
            let port = coordinator.port();
            let auth = format!("Bearer {}", key.secret);
            let url = format!("http://127.0.0.1:{port}/status/{id}?wait=60");
            thread::spawn(move || {
                send_with("GET", &url, &[("Authorization", auth.as_str())], None)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        })
        .collect();
    poll_until(DEADLINE, || {
        let pool = call(&coordinator, "GET", "/pool", Some(&ops)).json();
        (pool["waiting"]["parked"] == waits.len()).then_some(())
    })
    .unwrap_or_else(|| panic!("not parked: {}", coordinator.logs()));

    let bound = Key::bound("carol", &["10.0.0.0/8"]);
    let demoted = Key::new("wall", "submit");
    write_keys(&keys_path, &[&ops, &bob, &bound, &demoted]);
    hup(&coordinator);
    assert!(coordinator.wait_for_log("Client keys reloaded: 4", DEADLINE));
    let cancel = call(
        &coordinator,
        "POST",
        "/cancel?status=queued,running",
        Some(&ops),
    );
    assert_eq!(cancel.status, 200, "{}", cancel.text());

    let answers: Vec<Reply> = parked
        .into_iter()
        .map(|waiting| waiting.join().expect("a waiting client"))
        .collect();
    assert_401(&answers[0], "alice, removed while she waited");
    let bob_status = answers[1].json();
    assert_eq!(answers[1].status, 200, "{}", answers[1].text());
    assert_eq!(bob_status["pool_status"], "cancelled", "{bob_status}");
    assert_eq!(answers[2].status, 403, "{}", answers[2].text());
    assert!(
        answers[2].text().contains("bound_cidrs"),
        "{}",
        answers[2].text()
    );
    assert_eq!(answers[3].status, 404, "{}", answers[3].text());
    for (answer, (key, _)) in answers.iter().zip(&waits) {
        if key.name != "bob" {
            assert!(
                !answer.text().contains("pool_status"),
                "{} was shown the status: {}",
                key.name,
                answer.text()
            );
        }
    }
}

/// A stranger trying keys as fast as it can: every refusal is counted, but the log takes a
/// burst of 20 lines, then about one a second, each later line saying how many it stands for.
#[test]
fn a_flood_of_refused_keys_costs_the_log_a_line_a_second() {
    let worker = FakeWorker::start();
    let ops = Key::new("ops", "admin");
    let (coordinator, _dir, _) = start_with_keys(&[worker.entry(1)], &[&ops], &[]);
    let stranger = Key::new("stranger", "submit");
    let started = std::time::Instant::now();
    for _ in 0..300 {
        assert_401(
            &call(&coordinator, "GET", "/jobs", Some(&stranger)),
            "a guessed key",
        );
    }
    let elapsed = started.elapsed().as_secs();
    let needle = "Refused GET /jobs: unknown client key (from 127.0.0.1)";
    let logs = coordinator.logs_once_counted(needle, 20, DEADLINE);
    let lines = logs.matches(needle).count() as u64;
    assert!(
        (20..=22 + elapsed).contains(&lines),
        "{lines} lines for 300 refusals in {elapsed} s"
    );
    // Once the budget refills, the next line counts the ones held back.
    let counted = poll_until(DEADLINE, || {
        call(&coordinator, "GET", "/jobs", Some(&stranger));
        coordinator
            .logs()
            .lines()
            .any(|l| l.contains(needle) && l.contains("more like it since the last one"))
            .then_some(())
    });
    assert!(counted.is_some(), "{}", coordinator.logs());
    let metrics = call(&coordinator, "GET", "/metrics", Some(&ops)).text();
    let refused = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("trusted_pool_requests_refused_for_key_total{reason=\"unknown\"} ")
        })
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_default();
    assert!(refused > 300, "{refused} counted");
}
