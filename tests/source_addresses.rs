//! Several source addresses: sandrun limits each client IP, so a coordinator that submits from
//! several loopback addresses (127.0.0.2 to 127.0.0.5) gets several clients' shares of one
//! worker. The fake worker limits per client IP as sandrun does and records who submitted.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use support::lifecycle::{assert_pool_consistent, pool_worker, submit, wait_healthy, wait_status};
use support::{get_json, poll_until, post, temp_dir, Coordinator, FakeWorker, Form};
use trusted_pool::worker::bound_request::{self, Body, RequestTimeouts};

const DEADLINE: Duration = Duration::from_secs(60);
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.1"];
const FOUR: &str = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5";

fn args(sources: &str) -> Vec<&str> {
    let mut args = FAST.to_vec();
    args.extend(["--source-addresses", sources]);
    args
}

fn job(n: usize) -> Form {
    Form::new().file(
        "main.py",
        "text/x-python",
        format!("print({n})\n").as_bytes(),
    )
}

/// The `/pool` entries of a worker's source addresses, by address.
fn sources_of(pool: &Value, worker: &FakeWorker) -> BTreeMap<String, Value> {
    pool_worker(pool, worker)["source_addresses"]
        .as_array()
        .unwrap_or_else(|| panic!("no source_addresses in /pool: {pool}"))
        .iter()
        .map(|s| {
            (
                s["address"].as_str().unwrap_or_default().to_string(),
                s.clone(),
            )
        })
        .collect()
}

/// Every client IP the fake worker accepted a job from.
fn client_ips(worker: &FakeWorker) -> Vec<String> {
    let mut ips: Vec<String> = worker
        .recording()
        .jobs
        .iter()
        .filter(|j| j.job_id.is_some())
        .map(|j| j.client_ip.clone())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

#[test]
fn four_addresses_put_eight_jobs_on_a_worker_at_once_without_a_429() {
    // The first job is held running until all eight submits reached the worker and /pool
    // counted them, however slow the machine.
    let worker = FakeWorker::start_with(|k| k.hold_jobs = true);
    let coordinator = Coordinator::start(&[worker.entry(8)], &args(FOUR));
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool_worker(&pool, &worker)["capacity"], 8, "{pool}");

    let ids: Vec<String> = (0..8).map(|n| submit(&coordinator, &job(n))).collect();
    let at_once = poll_until(DEADLINE, || {
        (worker.recording().peak_active == 8).then_some(())
    });
    let pool = assert_pool_consistent(&coordinator);
    worker.set(|k| k.hold_jobs = false);
    assert!(
        at_once.is_some(),
        "the 8 jobs were never on the worker at once: {:?}",
        worker.recording()
    );
    assert_eq!(pool_worker(&pool, &worker)["active_jobs"], 8, "{pool}");
    for (ip, source) in sources_of(&pool, &worker) {
        assert_eq!(source["jobs_in_flight"], 2, "{ip}: {pool}");
    }

    for id in &ids {
        let status = wait_status(&coordinator, id, "completed", DEADLINE);
        assert!(status["source_address"].as_str().is_some(), "{status}");
    }
    let recording = worker.recording();
    assert!(recording.throttled.is_empty(), "{:?}", recording.throttled);
    let pool = assert_pool_consistent(&coordinator);
    let sources = sources_of(&pool, &worker);
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        assert_eq!(
            recording.accepted_from(ip),
            2,
            "{ip}: {:?}",
            client_ips(&worker)
        );
        assert_eq!(sources[ip]["accepted_last_hour"], 2, "{pool}");
        assert_eq!(sources[ip]["throttled"], false, "{pool}");
    }
    assert_eq!(recording.accepted_from("127.0.0.1"), 0);
    let pool = assert_pool_consistent(&coordinator);
    let entry = pool_worker(&pool, &worker);
    assert_eq!(entry["submits_throttled"], 0, "{pool}");
    assert_eq!(entry["active_jobs"], 0, "{pool}");
    assert!(sources_of(&pool, &worker)
        .values()
        .all(|s| s["jobs_in_flight"] == 0 && s["jobs_accepted"] == 2));
}

#[test]
fn three_addresses_take_sixty_jobs_in_an_hour() {
    let worker = FakeWorker::start();
    let sources = "127.0.0.2,127.0.0.3,127.0.0.4";
    let dir = temp_dir();
    let entry = json!([{"worker_id": worker.worker_id(), "endpoint": worker.endpoint(),
                        "max_concurrent_jobs": 6, "labels": ["gpu"]}]);
    fs::write(dir.path().join("workers.json"), entry.to_string())
        .unwrap_or_else(|e| panic!("workers.json: {e}"));
    let coordinator = Coordinator::start_in(dir.path(), &args(sources));
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    assert_eq!(at_hourly_limit(&coordinator, &worker), "0");

    // The last two ask for the worker's label, so /status says why they wait.
    let ids: Vec<String> = (0..62)
        .map(|n| match n {
            0..60 => submit(&coordinator, &job(n)),
            _ => submit(&coordinator, &job(n).field("labels", b"gpu")),
        })
        .collect();
    let accepted = poll_until(Duration::from_secs(120), || {
        let done = ids
            .iter()
            .filter(|id| {
                let (_, status) = get_json(&coordinator.url(&format!("/status/{id}")));
                status["pool_status"] == "completed"
            })
            .count();
        (done == 60).then_some(done)
    });
    assert_eq!(accepted, Some(60), "{}", coordinator.logs());
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(
        pool["queued_jobs"], 2,
        "the 61st and 62nd wait for the hour: {pool}"
    );
    let recording = worker.recording();
    assert_eq!(recording.accepted_ids().len(), 60);
    let by_address = sources_of(&pool, &worker);
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        assert_eq!(recording.accepted_from(ip), 20, "{ip}");
        assert_eq!(by_address[ip]["accepted_last_hour"], 20, "{pool}");
        assert_eq!(by_address[ip]["jobs_accepted"], 20, "{pool}");
        assert_eq!(
            by_address[ip]["submits_throttled"].as_u64(),
            Some(recording.throttled_from(ip) as u64),
            "/pool and the worker disagree on {ip}'s 429s: {pool}"
        );
    }
    assert_eq!(
        pool_worker(&pool, &worker)["throttled"],
        false,
        "no address was refused: it waits for its hour without asking"
    );
    let (_, status) = get_json(&coordinator.url(&format!("/status/{}", ids[61])));
    assert!(
        status["blocked"]
            .as_str()
            .is_some_and(|b| b.contains("(at its hourly job limit on every source address)")),
        "{status}"
    );
    // /pool says so and when it ends (an hour after the first job), and /metrics too.
    let entry = pool_worker(&pool, &worker);
    assert_eq!(
        entry["kept_from_jobs"], "at its hourly job limit on every source address",
        "{entry}"
    );
    let first_accepted = ids[..3]
        .iter()
        .filter_map(|id| {
            let (_, status) = get_json(&coordinator.url(&format!("/status/{id}")));
            status["dispatched_at"].as_f64()
        })
        .fold(f64::MAX, f64::min);
    let until = entry["hourly_limit_until"].as_f64().unwrap_or_default();
    assert!(
        (until - (first_accepted + 3600.0)).abs() < 30.0,
        "hourly_limit_until {until}, first job sent at {first_accepted}: {entry}"
    );
    assert_eq!(at_hourly_limit(&coordinator, &worker), "1");
}

/// The worker's `trusted_pool_worker_at_hourly_limit` sample in a scrape of `/metrics`.
fn at_hourly_limit(coordinator: &Coordinator, worker: &FakeWorker) -> String {
    let (code, text) = support::get(&coordinator.url("/metrics"));
    assert_eq!(code, 200, "{text}");
    let name = format!(
        "trusted_pool_worker_at_hourly_limit{{worker_id=\"{}\"}} ",
        worker.worker_id()
    );
    text.lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .to_string()
}

/// Runs a 10 CPU-second job on the worker straight from `from`, using up that address's minute.
fn use_up_cpu_quota(worker: &FakeWorker, from: IpAddr) {
    worker.set(|k| k.cpu_seconds = 10.0);
    let form = job(0);
    let body = form.body();
    let answer = bound_request::send(
        from,
        &worker.endpoint(),
        "POST",
        "/submit",
        Some(Body {
            content_type: form.content_type(),
            length: body.len() as u64,
            reader: body.as_slice(),
        }),
        RequestTimeouts {
            connect: Duration::from_secs(10),
            io: Duration::from_secs(30),
        },
    )
    .unwrap_or_else(|e| panic!("direct submit from {from}: {e:?}"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let exhausted = poll_until(DEADLINE, || {
        let stats = bound_request::send::<io::Empty>(
            from,
            &worker.endpoint(),
            "GET",
            "/stats",
            None,
            RequestTimeouts {
                connect: Duration::from_secs(10),
                io: Duration::from_secs(30),
            },
        )
        .ok()?;
        let stats: Value = serde_json::from_str(&stats.body).ok()?;
        (stats["your_quota"]["can_submit"] == false).then_some(())
    });
    assert!(exhausted.is_some(), "{from}'s CPU quota never ran out");
    worker.set(|k| k.cpu_seconds = 0.1);
}

/// Waits until the coordinator has asked `/stats` from every source address of `worker`.
fn wait_stats_asked(coordinator: &Coordinator, worker: &FakeWorker) -> Value {
    poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        sources_of(&pool, worker)
            .values()
            .all(|s| s["worker_stats"].is_object())
            .then_some(pool)
    })
    .unwrap_or_else(|| {
        panic!(
            "/stats was not asked from every address: {}",
            coordinator.logs()
        )
    })
}

/// A worker with many source addresses is asked `GET /stats` from each of them, a few at a
/// time: one ask per address at once started a thread and a request to the one worker for each
/// (254 of them for a /24, up to 1024).
#[test]
fn stats_asks_to_one_worker_are_a_few_at_a_time() {
    // Slow answers, so that asks sent at once overlap on the worker.
    let worker = FakeWorker::start_with(|k| k.stats_delay = Duration::from_millis(300));
    // 127.0.4.1 to 127.0.4.30.
    let coordinator = Coordinator::start(&[worker.entry(4)], &args("127.0.4.0/27"));
    let pool = wait_stats_asked(&coordinator, &worker);
    assert_eq!(sources_of(&pool, &worker).len(), 30, "{pool}");
    let recording = worker.recording();
    assert!(recording.count("GET", "stats") >= 30, "{recording:?}");
    let peak = recording.peak_serving("stats");
    assert!(
        (1..=8).contains(&peak),
        "{peak} /stats asks were in flight to the worker at once"
    );
    // Every address then takes jobs.
    let ids: Vec<String> = (0..4).map(|n| submit(&coordinator, &job(n))).collect();
    for id in &ids {
        wait_status(&coordinator, id, "completed", DEADLINE);
    }
}

/// sandrun counts its jobs for `/stats` under the jobs lock a running job holds, so it answers
/// an ask only once that job ends. An ask is awaited that long: given up at `--health-timeout`,
/// it failed, and each one left a thread of sandrun's waiting for the lock.
#[test]
fn a_stats_ask_sent_while_a_job_runs_is_answered_at_its_end() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(4));
    let running = post_multipart_to(&worker, &job(0));
    let started = poll_until(DEADLINE, || {
        worker.recording().has_started(&running).then_some(())
    });
    assert!(started.is_some(), "the worker's own job never started");
    let mut with = args("127.0.0.2,127.0.0.3");
    with.extend(["--health-timeout", "1", "--log-level", "debug"]);
    let coordinator = Coordinator::start(&[worker.entry(4)], &with);
    wait_stats_asked(&coordinator, &worker);
    assert!(
        !coordinator.logs().contains("GET /stats from"),
        "{}",
        coordinator.logs()
    );
    assert_eq!(worker.recording().count("GET", "stats"), 2);
}

/// Submits `form` straight to `worker`, as another client would; its job id.
fn post_multipart_to(worker: &FakeWorker, form: &Form) -> String {
    let (code, body) = support::post_multipart(&worker.url("/submit"), form);
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap_or_default();
    answer["job_id"].as_str().unwrap_or_default().to_string()
}

/// The coordinator logged that 127.0.0.2 pauses for its CPU quota.
fn assert_logged_cpu_pause(coordinator: &Coordinator) {
    assert!(
        coordinator
            .logs()
            .contains("is throttling source address 127.0.0.2: CPU quota exhausted"),
        "{}",
        coordinator.logs()
    );
}

#[test]
fn a_cpu_quota_429_on_one_address_leaves_the_others_dispatching() {
    let worker = FakeWorker::start();
    let spent: IpAddr = "127.0.0.2".parse().unwrap_or_else(|e| panic!("{e}"));
    let coordinator = Coordinator::start(&[worker.entry(4)], &args("127.0.0.2,127.0.0.3"));
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    // The quota is used up behind the coordinator's back, after its first /stats: its next
    // submit from that address meets a 429.
    wait_stats_asked(&coordinator, &worker);
    use_up_cpu_quota(&worker, spent);
    worker.clear_recording();

    let ids: Vec<String> = (0..6).map(|n| submit(&coordinator, &job(n))).collect();
    for id in &ids {
        wait_status(&coordinator, id, "completed", Duration::from_secs(40));
    }
    let recording = worker.recording();
    assert!(
        recording.throttled_from("127.0.0.2") >= 1,
        "{:?}",
        recording.throttled
    );
    assert!(
        recording.throttled[0]
            .1
            .starts_with("CPU quota exhausted, wait "),
        "{:?}",
        recording.throttled
    );
    assert_eq!(recording.accepted_from("127.0.0.2"), 0);
    assert_eq!(recording.accepted_from("127.0.0.3"), 6);
    let pool = assert_pool_consistent(&coordinator);
    let entry = pool_worker(&pool, &worker);
    assert_eq!(
        entry["throttled"], false,
        "the worker as a whole is not: {pool}"
    );
    let by_address = sources_of(&pool, &worker);
    let spent_entry = &by_address["127.0.0.2"];
    assert_eq!(spent_entry["throttled"], true, "{pool}");
    assert!(
        spent_entry["throttle_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("CPU quota exhausted")),
        "{pool}"
    );
    assert!(
        spent_entry["throttled_until"].as_f64() > pool["time"].as_f64(),
        "{pool}"
    );
    assert_eq!(
        spent_entry["submits_throttled"].as_u64(),
        Some(recording.throttled_from("127.0.0.2") as u64),
        "{pool}"
    );
    assert_eq!(by_address["127.0.0.3"]["jobs_accepted"], 6, "{pool}");
    assert_logged_cpu_pause(&coordinator);
}

#[test]
fn quota_used_by_another_client_is_read_from_stats_and_avoided_without_a_429() {
    let worker = FakeWorker::start();
    let spent: IpAddr = "127.0.0.2".parse().unwrap_or_else(|e| panic!("{e}"));
    use_up_cpu_quota(&worker, spent);
    worker.clear_recording();
    let coordinator = Coordinator::start(&[worker.entry(4)], &args("127.0.0.2,127.0.0.3"));
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    let ids: Vec<String> = (0..4).map(|n| submit(&coordinator, &job(n))).collect();
    for id in &ids {
        wait_status(&coordinator, id, "completed", DEADLINE);
    }
    let recording = worker.recording();
    assert!(recording.throttled.is_empty(), "{:?}", recording.throttled);
    assert_eq!(recording.accepted_from("127.0.0.2"), 0);
    assert_eq!(recording.accepted_from("127.0.0.3"), 4);
    let pool = assert_pool_consistent(&coordinator);
    let by_address = sources_of(&pool, &worker);
    let spent_entry = &by_address["127.0.0.2"];
    let said = &spent_entry["worker_stats"];
    assert_eq!(said["can_submit"], false, "{pool}");
    assert!(
        said["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("CPU quota exhausted, wait ")),
        "{pool}"
    );
    assert!(said["cpu_used"].as_f64() >= Some(10.0), "{pool}");
    assert_eq!(said["cpu_limit"].as_f64(), Some(10.0), "{pool}");
    assert!(
        spent_entry["other_clients_cpu_seconds"].as_f64() >= Some(10.0),
        "{pool}"
    );
    assert_eq!(spent_entry["throttled"], true, "{pool}");
    assert_eq!(spent_entry["submits_throttled"], 0, "{pool}");
    assert_eq!(
        by_address["127.0.0.3"]["worker_stats"]["can_submit"], true,
        "{pool}"
    );
    // Bounded: the first use of each address, and at most one more per address every 3 s.
    let asked: u64 = by_address
        .values()
        .map(|s| s["worker_stats_asked"].as_u64().unwrap_or(0))
        .sum();
    let received = recording.count("GET", "stats") as u64;
    assert!(
        asked >= 2 && received <= asked,
        "{asked} asked, {received} received: {pool}"
    );
    assert!(asked <= 2 + 2 * 25, "{asked} /stats asks: {pool}");
    assert_logged_cpu_pause(&coordinator);
}

#[test]
fn an_https_worker_with_source_addresses_is_refused() {
    let worker = FakeWorker::start();
    let dir = temp_dir();
    let file = dir.path().join("workers.json");
    let workers = file.to_str().unwrap_or_default();
    let https = |own: Option<Value>| {
        let mut entry = json!({"worker_id": worker.worker_id(), "endpoint": "https://127.0.0.1:9"});
        if let Some(own) = own {
            entry["source_addresses"] = own;
        }
        fs::write(&file, json!([entry]).to_string()).unwrap_or_else(|e| panic!("{e}"));
    };
    https(None);
    let (code, stdout, stderr) = run_binary(&["check", workers, "--source-addresses", "127.0.0.2"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("source address 127.0.0.2 (from --source-addresses) cannot be used for https://127.0.0.1:9")
            && stderr.contains("\"source_addresses\": []"),
        "{stderr}"
    );
    let state = dir.path().join("state");
    let state = state.to_str().unwrap_or_default();
    let mut serve = vec!["--port", "0", "--bind", "127.0.0.1", "--workers", workers];
    serve.extend(["--state-dir", state, "--source-addresses", "127.0.0.2"]);
    let (code, _, stderr) = run_binary(&serve);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot be used for https://"), "{stderr}");

    https(Some(json!(["127.0.0.3"])));
    let (code, _, stderr) = run_binary(&["check", workers]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("127.0.0.3 (from workers.json entry 0"),
        "{stderr}"
    );
    https(Some(json!([])));
    let (code, stdout, stderr) = run_binary(&["check", workers, "--source-addresses", "127.0.0.2"]);
    assert_eq!(
        code,
        Some(0),
        "an empty list opts the worker out: {stdout}{stderr}"
    );
}

#[test]
fn an_ipv6_source_address_dispatches_to_a_worker_on_ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("skipped: this host has no IPv6 loopback (cannot bind [::1])");
        return;
    }
    let worker = FakeWorker::start_on("[::1]:0".parse().unwrap_or_else(|e| panic!("{e}")), |_| {});
    assert!(
        worker.endpoint().starts_with("http://[::1]:"),
        "{}",
        worker.endpoint()
    );
    let coordinator = Coordinator::start(&[worker.entry(2)], &args("::1"));
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &job(6));
    let status = wait_status(&coordinator, &id, "completed", DEADLINE);
    assert_eq!(status["source_address"], "::1", "{status}");
    assert_eq!(worker.recording().accepted_from("::1"), 1);
    let pool = assert_pool_consistent(&coordinator);
    let by_address = sources_of(&pool, &worker);
    assert_eq!(by_address["::1"]["jobs_accepted"], 1, "{pool}");
    assert_eq!(
        by_address["::1"]["worker_stats"]["can_submit"], true,
        "{pool}"
    );
}

fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trusted-pool"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the binary: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_address_not_on_the_host_refuses_the_start_and_check_says_so() {
    let worker = FakeWorker::start();
    // 192.0.2.0/24 is reserved for documentation: never configured on a host. Binding to it
    // fails locally; nothing is sent.
    let absent = "127.0.0.2,192.0.2.7";
    let dir = support::workers_dir(&[worker.entry(2)]);
    let workers = dir.path().join("workers.json");
    let workers = workers.to_str().unwrap_or_default();
    let state = dir.path().join("state");
    let serve = |sources: &str| {
        let state = state.to_str().unwrap_or_default();
        let mut serve = vec!["--port", "0", "--bind", "127.0.0.1", "--workers", workers];
        serve.extend(["--state-dir", state, "--source-addresses", sources]);
        run_binary(&serve)
    };
    let (code, _, stderr) = serve(absent);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "source address 192.0.2.7 (from --source-addresses) is not configured on this host"
        ),
        "{stderr}"
    );

    let (code, stdout, stderr) = run_binary(&["check", workers, "--source-addresses", absent]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("192.0.2.7") && stderr.contains("not configured"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run_binary(&["check", workers, "--source-addresses", FOUR]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("from {}", FOUR.replace(',', ", "))),
        "{stdout}"
    );

    let entry = json!([{"worker_id": worker.worker_id(), "endpoint": worker.endpoint(),
                        "source_addresses": ["127.0.0.2", "192.0.2.8"]}]);
    fs::write(dir.path().join("workers.json"), entry.to_string()).unwrap_or_default();
    let (code, _, stderr) = run_binary(&["check", workers]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("192.0.2.8 (from workers.json entry 0"),
        "{stderr}"
    );
    let Err(why) = Coordinator::try_start_in(dir.path(), &FAST) else {
        panic!("the coordinator started with 192.0.2.8 in a worker's source_addresses");
    };
    assert!(
        why.contains("192.0.2.8") && why.contains("not configured"),
        "{why}"
    );

    for bad in ["127.0.0.2,,127.0.0.3", "10.0.0.0/8", "localhost"] {
        let (code, _, stderr) = run_binary(&["--source-addresses", bad]);
        assert_eq!(code, Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--source-addresses"), "{stderr}");
    }
}

#[test]
fn a_workers_own_source_addresses_override_the_flag() {
    let own = FakeWorker::start();
    let flagged = FakeWorker::start();
    let unbound = FakeWorker::start();
    let dir = temp_dir();
    let entries = json!([
        {"worker_id": own.worker_id(), "endpoint": own.endpoint(), "max_concurrent_jobs": 4,
         "source_addresses": "127.0.0.4/31"},
        {"worker_id": flagged.worker_id(), "endpoint": flagged.endpoint(), "max_concurrent_jobs": 4},
        {"worker_id": unbound.worker_id(), "endpoint": unbound.endpoint(), "max_concurrent_jobs": 4,
         "source_addresses": []},
    ]);
    fs::write(dir.path().join("workers.json"), entries.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let coordinator = Coordinator::start_in(dir.path(), &args("127.0.0.2,127.0.0.3"));
    wait_healthy(&coordinator, &[&own, &flagged, &unbound], DEADLINE);

    let ids: Vec<String> = (0..12).map(|n| submit(&coordinator, &job(n))).collect();
    for id in &ids {
        wait_status(&coordinator, id, "completed", DEADLINE);
    }
    assert_eq!(client_ips(&own), ["127.0.0.4", "127.0.0.5"]);
    assert_eq!(client_ips(&flagged), ["127.0.0.2", "127.0.0.3"]);
    assert_eq!(client_ips(&unbound), ["127.0.0.1"]);
    let pool = assert_pool_consistent(&coordinator);
    let listed: Vec<String> = sources_of(&pool, &own).into_keys().collect();
    assert_eq!(listed, ["127.0.0.4", "127.0.0.5"], "{pool}");
    let listed: Vec<String> = sources_of(&pool, &flagged).into_keys().collect();
    assert_eq!(listed, ["127.0.0.2", "127.0.0.3"], "{pool}");
    let entry = pool_worker(&pool, &unbound);
    assert!(entry.get("source_addresses").is_none(), "{pool}");
    assert!(entry.get("capacity").is_none(), "{pool}");

    // A reload changes a worker's addresses; one not on the host refuses the whole file.
    let mut changed = entries.clone();
    changed[0]["source_addresses"] = json!(["127.0.0.6"]);
    let reload = |entries: &Value| {
        fs::write(dir.path().join("workers.json"), entries.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        post(&coordinator.url("/reload"), "text/plain", b"")
    };
    let (code, body) = reload(&changed);
    assert_eq!(code, 200, "{body}");
    let id = submit(&coordinator, &job(99));
    wait_status(&coordinator, &id, "completed", DEADLINE);
    let pool = assert_pool_consistent(&coordinator);
    let listed: Vec<String> = sources_of(&pool, &own).into_keys().collect();
    assert_eq!(listed, ["127.0.0.6"], "{pool}");
    changed[0]["source_addresses"] = json!(["192.0.2.9"]);
    reload(&changed);
    let pool = assert_pool_consistent(&coordinator);
    assert!(
        pool["last_reload"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("192.0.2.9") && e.contains("not configured")),
        "{pool}"
    );
    let listed: Vec<String> = sources_of(&pool, &own).into_keys().collect();
    assert_eq!(listed, ["127.0.0.6"], "{pool}");
}
