//! `GET /metrics` through the real binary: the figures move as jobs move (submitted, completed,
//! failed, a 429, an unreachable worker), the text is well formed (checked here, and by
//! Prometheus' own parser when `promtool` or Python's `prometheus_client` is installed), and
//! the per-worker series cover every worker.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::lifecycle::{submit, wait_collected, wait_healthy, wait_started, wait_status};
use support::{
    get_json, poll_until, post, send, send_with, write_workers_json, Coordinator, FakeWorker, Form,
};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);

fn job() -> Form {
    Form::new().file("main.py", "text/x-python", b"print('hi')\n")
}

/// One scrape: every series (`name{labels}`) with its value.
struct Scrape {
    text: String,
    series: HashMap<String, f64>,
}

impl Scrape {
    fn take(coordinator: &Coordinator) -> Scrape {
        let reply = send("GET", &coordinator.url("/metrics"), None)
            .unwrap_or_else(|e| panic!("/metrics: {e}"));
        assert_eq!(reply.status, 200, "{}", reply.text());
        let content_type = reply.header("Content-Type").unwrap_or_default().to_string();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = reply.text();
        // One body of known length (not chunked), as the scrape-cost figure assumes.
        assert_eq!(
            reply.header("Content-Length"),
            Some(text.len().to_string().as_str()),
            "/metrics without an exact Content-Length"
        );
        let series = check_format(&text);
        Scrape { text, series }
    }

    /// The value of one series; panics with the whole text when it is missing.
    fn value(&self, series: &str) -> f64 {
        *self
            .series
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }
}

/// Checks the text format by hand (every sample under a declared family, no duplicate series,
/// histogram buckets cumulative and ending in +Inf = _count) and returns its series.
fn check_format(text: &str) -> HashMap<String, f64> {
    let mut families: HashMap<String, String> = HashMap::new();
    let mut series = HashMap::new();
    let mut last_bucket: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(
                families
                    .insert(name.to_string(), kind.to_string())
                    .is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = key.split('{').next().unwrap_or_default();
        assert!(
            name.starts_with("trusted_pool_") || name.starts_with("process_"),
            "unprefixed metric {name}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (families.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        let kind = families
            .get(family)
            .unwrap_or_else(|| panic!("{name} has no # TYPE line"));
        if kind == "counter" {
            assert!(
                family.ends_with("_total"),
                "counter {family} without _total"
            );
        }
        if name.ends_with("_bucket") {
            let previous = last_bucket.insert(family.to_string(), value).unwrap_or(0.0);
            assert!(
                value >= previous,
                "buckets of {family} not cumulative at {line}"
            );
        }
        if name.ends_with("_count") && kind == "histogram" {
            assert_eq!(
                Some(&value),
                last_bucket.get(family),
                "{family}: +Inf != _count"
            );
        }
        assert!(
            series.insert(key.to_string(), value).is_none(),
            "duplicate series {key}"
        );
    }
    series
}

/// Runs Prometheus' own parser over the text: `promtool check metrics`, else Python's
/// `prometheus_client`; says so and returns false when neither is installed.
fn official_parser_accepts(text: &str) -> bool {
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    if let Ok(mut child) = promtool {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        let out = child.wait_with_output().expect("promtool");
        // promtool exits 3 for lint findings only (e.g. a counter's help text); 1 for errors.
        let report = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() || out.status.code() == Some(3) && !report.contains("error"),
            "promtool check metrics: {report}\n{text}"
        );
        assert!(report.trim().is_empty(), "promtool lint findings: {report}");
        return true;
    }
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        families = list(parse(sys.stdin.read()))\n\
        print(len(families))\n";
    let python = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = python else {
        eprintln!("SKIPPED the official parser check: neither promtool nor python3 is installed");
        return false;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        eprintln!("SKIPPED the official parser check: neither promtool nor prometheus_client is installed");
        return false;
    }
    assert!(out.status.success(), "prometheus_client: {stderr}\n{text}");
    true
}

fn dispatches(s: &Scrape, worker: &FakeWorker, outcome: &str) -> f64 {
    s.value(&format!(
        "trusted_pool_dispatches_total{{worker_id=\"{}\",outcome=\"{outcome}\"}}",
        worker.worker_id()
    ))
}

#[test]
fn metrics_move_as_jobs_are_submitted_finish_fail_and_meet_busy_or_missing_workers() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--track-interval", "0.1"]);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let before = Scrape::take(&coordinator);
    assert_eq!(before.value("trusted_pool_jobs_submitted_total"), 0.0);
    assert_eq!(before.value("trusted_pool_workers{state=\"healthy\"}"), 1.0);
    assert_eq!(
        before.value("trusted_pool_health_probes_total{result=\"healthy\"}"),
        1.0
    );
    let id = format!("{{worker_id=\"{}\"}}", worker.worker_id());
    assert_eq!(
        before.value(&format!("trusted_pool_worker_max_concurrent_jobs{id}")),
        2.0
    );

    let done = submit(&coordinator, &job());
    wait_collected(&coordinator, &done, DEADLINE);
    worker.set(|k| k.exit_code = 1);
    let failed = submit(&coordinator, &job());
    wait_status(&coordinator, &failed, "failed", DEADLINE);
    worker.set(|k| k.exit_code = 0);
    let s = Scrape::take(&coordinator);
    assert_eq!(s.value("trusted_pool_jobs_submitted_total"), 2.0);
    assert_eq!(
        s.value("trusted_pool_jobs_finished_total{status=\"completed\"}"),
        1.0
    );
    assert_eq!(
        s.value("trusted_pool_jobs_finished_total{status=\"failed\"}"),
        1.0
    );
    assert_eq!(dispatches(&s, &worker, "accepted"), 2.0);
    assert_eq!(s.value("trusted_pool_job_duration_seconds_count"), 2.0);
    assert_eq!(s.value("trusted_pool_job_run_seconds_count"), 2.0);
    assert_eq!(s.value("trusted_pool_queue_wait_seconds_count"), 2.0);
    assert_eq!(
        s.value("trusted_pool_submit_request_duration_seconds_count"),
        2.0
    );
    assert_eq!(s.value("trusted_pool_dispatch_duration_seconds_count"), 2.0);
    assert_eq!(
        s.value(&format!("trusted_pool_worker_active_jobs{id}")),
        0.0
    );

    // A busy worker: 429, the job waits, then runs once the worker takes jobs again.
    worker.set(|k| k.reject_submit = Some((429, "Max concurrent jobs reached (2)".to_string())));
    let throttled = submit(&coordinator, &job());
    let seen_429 = poll_until(DEADLINE, || {
        let s = Scrape::take(&coordinator);
        (dispatches(&s, &worker, "429") >= 1.0).then_some(s)
    })
    .expect("a 429 is counted");
    assert_eq!(
        seen_429.value("trusted_pool_queue_depth{priority=\"requeued\"}"),
        1.0
    );
    assert_eq!(
        seen_429.value("trusted_pool_workers{state=\"throttled\"}"),
        1.0
    );
    worker.set(|k| k.reject_submit = None);
    wait_collected(&coordinator, &throttled, DEADLINE);

    // A worker that went away: the dispatch cannot connect, probes fail, the job waits.
    worker.stop();
    let waiting = submit(&coordinator, &job());
    let down = poll_until(DEADLINE, || {
        let s = Scrape::take(&coordinator);
        (dispatches(&s, &worker, "unreachable") >= 1.0
            && s.value("trusted_pool_health_probes_total{result=\"unreachable\"}") >= 1.0)
            .then_some(s)
    })
    .expect("an unreachable dispatch and a failed probe are counted");
    assert_eq!(down.value("trusted_pool_workers{state=\"unhealthy\"}"), 1.0);
    assert_eq!(down.value(&format!("trusted_pool_worker_healthy{id}")), 0.0);
    worker.restart();
    wait_collected(&coordinator, &waiting, DEADLINE);
    let after = Scrape::take(&coordinator);
    assert_eq!(after.value("trusted_pool_jobs_submitted_total"), 4.0);
    assert_eq!(
        after.value("trusted_pool_jobs_finished_total{status=\"completed\"}"),
        3.0
    );
    assert_eq!(dispatches(&after, &worker, "accepted"), 4.0);
    assert!(after.value("process_resident_memory_bytes") > 0.0);
    assert!(after.value("process_open_fds") > 0.0);
    assert!(after.value("process_start_time_seconds") > 1.6e9);
    official_parser_accepts(&after.text);
}

#[test]
fn every_worker_has_its_series_and_the_text_passes_the_official_parser() {
    let workers: Vec<FakeWorker> = (0..3).map(|_| FakeWorker::start()).collect();
    let entries: Vec<_> = workers.iter().map(|w| w.entry(2)).collect();
    let coordinator = Coordinator::start(&entries, &[]);
    let refs: Vec<&FakeWorker> = workers.iter().collect();
    wait_healthy(&coordinator, &refs, DEADLINE);
    let s = Scrape::take(&coordinator);
    let ids: HashSet<String> = workers.iter().map(|w| w.worker_id()).collect();
    for w in &workers {
        let info = format!(
            "trusted_pool_worker_info{{worker_id=\"{}\",endpoint=\"{}\"}}",
            w.worker_id(),
            w.endpoint()
        );
        assert_eq!(s.value(&info), 1.0);
    }
    let per_worker = s
        .series
        .keys()
        .filter(|k| k.starts_with("trusted_pool_dispatches_total{"))
        .count();
    assert_eq!(per_worker, ids.len() * 6, "{}", s.text);
    if !official_parser_accepts(&s.text) && std::env::var_os("CI").is_some() {
        panic!("CI must install promtool or prometheus_client for the parser check");
    }
    check_alert_rules(&s.text);
}

/// `deploy/alerts.yml` names only metrics this coordinator exports (as `text` shows them), and
/// passes `promtool check rules` and its unit tests (`deploy/alerts.test.yml`).
fn check_alert_rules(text: &str) {
    let families: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules = std::fs::read_to_string(deploy.join("alerts.yml")).expect("deploy/alerts.yml");
    let named: HashSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("trusted_pool_"))
        .collect();
    assert!(named.len() >= 10, "the rules name few metrics: {named:?}");
    let unknown: Vec<&&str> = named.iter().filter(|n| !families.contains(**n)).collect();
    assert!(
        unknown.is_empty(),
        "deploy/alerts.yml names metrics the coordinator does not export: {unknown:?}"
    );
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = match Command::new("promtool")
            .args(args)
            .current_dir(&deploy)
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must install promtool (Debian: prometheus) for the alert rules: {e}"
                );
                eprintln!(
                    "SKIPPED promtool {}: promtool is not installed ({e})",
                    args.join(" ")
                );
                return;
            }
        };
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_worker_series_follow_a_reload_that_replaces_a_worker() {
    let [a, b, c] = [(); 3].map(|_| FakeWorker::start());
    let dir = support::workers_dir(&[a.entry(2), b.entry(2)]);
    let coordinator = Coordinator::start_in(dir.path(), &["--health-interval", "1"]);
    wait_healthy(&coordinator, &[&a, &b], DEADLINE);
    let info = |w: &FakeWorker| {
        format!(
            "trusted_pool_worker_info{{worker_id=\"{}\",endpoint=\"{}\"}}",
            w.worker_id(),
            w.endpoint()
        )
    };
    let before = Scrape::take(&coordinator);
    assert_eq!(before.value(&info(&a)), 1.0);
    assert_eq!(before.value(&info(&b)), 1.0);

    // The reload removes a (idle: forgotten at once, its place goes to c) and adds c.
    write_workers_json(dir.path(), &[b.entry(2), c.entry(3)]);
    let (code, body) = post(&coordinator.url("/reload"), "text/plain", b"");
    assert_eq!(code, 200, "reload: {body}");
    wait_healthy(&coordinator, &[&b, &c], DEADLINE);
    let after = Scrape::take(&coordinator);
    assert_eq!(after.value(&info(&b)), 1.0);
    assert_eq!(after.value(&info(&c)), 1.0);
    let cap = |w: &FakeWorker| {
        format!(
            "trusted_pool_worker_max_concurrent_jobs{{worker_id=\"{}\"}}",
            w.worker_id()
        )
    };
    assert_eq!(after.value(&cap(&c)), 3.0);
    assert_eq!(after.value(&cap(&b)), 2.0);
    // Every worker the metrics name is one /pool lists (no label left from a replaced worker).
    let (_, pool) = get_json(&coordinator.url("/pool"));
    let listed: HashSet<String> = pool["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(|w| w["worker_id"].as_str().map(str::to_string))
        .collect();
    let named: HashSet<&str> = after
        .series
        .keys()
        .filter_map(|k| k.split_once("worker_id=\"")?.1.split_once('"'))
        .map(|(id, _)| id)
        .collect();
    assert!(named.contains(c.worker_id().as_str()), "{}", after.text);
    for id in named {
        assert!(
            listed.contains(id),
            "{id} is in /metrics, not in /pool: {pool}"
        );
    }
    if !pool["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .any(|w| w["worker_id"] == a.worker_id().as_str())
    {
        assert!(!after.text.contains(&a.worker_id()), "{}", after.text);
    }
    official_parser_accepts(&after.text);
}

/// A busy worker whose endpoint a reload changes is a new entry beside the removed one still
/// ending its job: only the listed one has series, so no `worker_id` is two series, and the
/// worker counts agree with `/pool`.
#[test]
fn a_worker_listed_under_another_endpoint_is_one_series_and_counted_once() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(4));
    let dir = support::workers_dir(&[worker.entry(2)]);
    let coordinator = Coordinator::start_in(dir.path(), &["--health-interval", "1"]);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(
        &coordinator,
        &Form::new().file("main.py", "text/x-python", b"1\n"),
    );
    wait_started(&coordinator, &worker, &id, DEADLINE);
    // Held running until the scrape and /pool were read: the removed entry is forgotten once
    // its job ends, which between the two reads would make their counts differ.
    worker.set(|k| k.hold_jobs = true);
    let (worker_id, endpoint, cap) = worker.entry(2);
    let renamed = endpoint.replace("127.0.0.1", "localhost");
    write_workers_json(dir.path(), &[(worker_id.clone(), renamed, cap)]);
    let (code, body) = post(&coordinator.url("/reload"), "text/plain", b"");
    assert_eq!(code, 200, "reload: {body}");
    let scrape = Scrape::take(&coordinator);
    let healthy_lines = scrape
        .text
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "trusted_pool_worker_healthy{{worker_id=\"{worker_id}\""
            ))
        })
        .count();
    assert_eq!(healthy_lines, 1, "{}", scrape.text);
    let (_, pool) = get_json(&coordinator.url("/pool"));
    let counted = |state: &str| scrape.value(&format!("trusted_pool_workers{{state=\"{state}\"}}"));
    assert_eq!(
        counted("healthy") + counted("unhealthy"),
        pool["total_workers"].as_f64().unwrap_or(-1.0),
        "{pool}"
    );
    official_parser_accepts(&scrape.text);
    worker.set(|k| k.hold_jobs = false);
    wait_status(&coordinator, &id, "completed", DEADLINE);
}

/// Writes a keys file with an admin key and a submit key; returns their secrets.
fn write_keys(path: &std::path::Path) -> (String, String) {
    let admin = format!("tpk_metrics_admin_{}", std::process::id());
    let submit = format!("tpk_metrics_submit_{}", std::process::id());
    let entry = |name: &str, secret: &str, role: &str| {
        let hash: String = Sha256::digest(secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        serde_json::json!({"name": name, "key_sha256": hash, "role": role})
    };
    let keys = serde_json::json!([
        entry("ops", &admin, "admin"),
        entry("ci", &submit, "submit")
    ]);
    std::fs::write(path, keys.to_string()).expect("write keys");
    (admin, submit)
}

#[test]
fn with_client_keys_metrics_need_an_admin_key_unless_metrics_open() {
    let worker = FakeWorker::start();
    let dir = support::temp_dir();
    let keys = dir.path().join("keys.json");
    let (admin, submit_key) = write_keys(&keys);
    let keys_arg = keys.to_string_lossy().into_owned();
    let closed = Coordinator::start(&[worker.entry(2)], &["--api-keys", &keys_arg]);
    let scrape = |coordinator: &Coordinator, key: Option<&str>| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        send_with("GET", &coordinator.url("/metrics"), &headers, None)
            .unwrap_or_else(|e| panic!("/metrics: {e}"))
    };
    assert_eq!(scrape(&closed, None).status, 401);
    assert_eq!(scrape(&closed, Some("tpk_not_a_key")).status, 401);
    assert_eq!(scrape(&closed, Some(&submit_key)).status, 403);
    let answer = scrape(&closed, Some(&admin));
    assert_eq!(answer.status, 200, "{}", answer.text());
    check_format(&answer.text());

    let open = Coordinator::start(
        &[worker.entry(2)],
        &["--api-keys", &keys_arg, "--metrics-open"],
    );
    let answer = scrape(&open, None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    check_format(&answer.text());
    let (status, _) = support::get(&open.url("/pool"));
    assert_eq!(status, 401, "--metrics-open opens /metrics only");
}
