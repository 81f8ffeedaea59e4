//! Worker labels (`"labels"` in workers.json) and jobs that ask for them (`labels=...`): a
//! labelled job runs only on a worker carrying all its labels, waits for one without holding up
//! the jobs behind it, keeps its labels across a restart, follows a reload's labels (and says
//! when a reload left no worker with them or every worker with them is drained, and `/metrics`
//! shows them), and a job no worker could
//! ever run is refused with the labels the workers carry.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use support::follow::follow_logs;
use support::lifecycle::{drain_url, job_status, submit, wait_healthy, wait_started, wait_status};
use support::{get, get_json, post, post_multipart, Coordinator, FakeWorker, Form};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);
/// Short intervals keep these tests quick.
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.1"];

fn job(labels: Option<&str>) -> Form {
    let form = Form::new()
        .file("main.py", "text/x-python", b"print('hi')\n")
        .manifest(r#"{"entrypoint":"main.py"}"#);
    match labels {
        Some(labels) => form.field("labels", labels.as_bytes()),
        None => form,
    }
}

/// Writes `dir/workers.json`: each worker with one slot and these labels.
fn write_workers(dir: &Path, workers: &[(&FakeWorker, &[&str])]) {
    let entries: Vec<Value> = workers
        .iter()
        .map(|(w, labels)| {
            json!({"worker_id": w.worker_id(), "endpoint": w.endpoint(),
                   "max_concurrent_jobs": 1, "labels": labels})
        })
        .collect();
    let text = serde_json::to_string_pretty(&entries).unwrap_or_else(|e| panic!("{e}"));
    fs::write(dir.join("workers.json"), text).unwrap_or_else(|e| panic!("workers.json: {e}"));
}

fn worker_of(coordinator: &Coordinator, id: &str) -> String {
    job_status(coordinator, id)["worker_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_labelled_job_runs_only_where_its_labels_are_and_holds_up_no_other() {
    let gpu = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(600));
    let plain = FakeWorker::start();
    let dir = support::temp_dir();
    write_workers(dir.path(), &[(&gpu, &["gpu", "arm64"]), (&plain, &[])]);
    let checked = Command::new(env!("CARGO_BIN_EXE_trusted-pool"))
        .arg("check")
        .arg(dir.path().join("workers.json"))
        .output()
        .expect("check");
    let listing = String::from_utf8_lossy(&checked.stdout);
    assert!(listing.contains("labels arm64,gpu"), "{listing}");
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&gpu, &plain], DEADLINE);

    let first = submit(&coordinator, &job(Some("gpu")));
    wait_started(&coordinator, &gpu, &first, DEADLINE);
    assert_eq!(worker_of(&coordinator, &first), gpu.worker_id());
    // The gpu worker is full: the next gpu job waits, and a plain job behind it goes at once.
    let waiting = submit(&coordinator, &job(Some("arm64, gpu")));
    let behind = submit(&coordinator, &job(None));
    wait_status(&coordinator, &behind, "completed", DEADLINE);
    assert_eq!(worker_of(&coordinator, &behind), plain.worker_id());
    let status = job_status(&coordinator, &waiting);
    assert_eq!(status["pool_status"], "queued", "{status}");
    assert_eq!(status["labels"], json!(["arm64", "gpu"]), "{status}");
    assert!(job_status(&coordinator, &behind).get("labels").is_none());
    let (_, pool) = get_json(&coordinator.url("/pool"));
    let labels: Vec<&Value> = pool["workers"]
        .as_array()
        .map(|ws| ws.iter().map(|w| &w["labels"]).collect())
        .unwrap_or_default();
    assert_eq!(labels, [&json!(["arm64", "gpu"]), &json!([])], "{pool}");
    assert_eq!(
        worker_infos(&coordinator),
        [info(&gpu, Some("arm64,gpu")), info(&plain, None)]
    );

    // A job that no worker could run is refused, naming what the workers carry; so are bad
    // labels, as a part or in the query.
    let (code, body) = post_multipart(&coordinator.url("/submit"), &job(Some("gpu,x86_64")));
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("no worker of this pool carries every label the job asks for (gpu, x86_64)")
            && body.contains("the workers carry: arm64, gpu"),
        "{body}"
    );
    for (bad, why) in [
        (
            "a b",
            r#"{"error":"label \"a b\" is not valid (a label is "#,
        ),
        ("gpu,gpu", r#"{"error":"label \"gpu\" is given twice; "#),
        (
            "",
            r#"{"error":"no label is given (give them separated by commas"#,
        ),
    ] {
        let (code, body) = post_multipart(&coordinator.url("/submit"), &job(Some(bad)));
        assert_eq!(code, 400, "{bad:?}: {body}");
        assert!(body.starts_with(why), "{bad:?}: {body}");
        assert!(
            body.contains("give the labels a worker must carry"),
            "{body}"
        );
    }
    let form = job(None);
    let (code, body) = post(
        &coordinator.url("/submit?labels=x86_64"),
        &form.content_type(),
        &form.body(),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("(x86_64)"), "{body}");

    // A restart keeps the waiting job's labels: it still waits for a gpu worker.
    let mut coordinator = coordinator;
    coordinator.kill();
    let coordinator = Coordinator::start_in(
        dir.path(),
        &[FAST.as_slice(), &["--follow-heartbeat", "1"]].concat(),
    );
    wait_healthy(&coordinator, &[&gpu, &plain], DEADLINE);
    let status = job_status(&coordinator, &waiting);
    assert_eq!(status["pool_status"], "queued", "{status}");
    assert_eq!(status["labels"], json!(["arm64", "gpu"]), "{status}");
    let mut follower = follow_logs(coordinator.port(), &waiting);
    assert_eq!(follower.status, 200);
    assert!(status.get("stranded").is_none(), "{status}");
    // A full worker holds the job up for a while; a drained one says why the job cannot leave.
    assert!(status.get("blocked").is_none(), "{status}");
    assert_eq!(waiting_for_labels(&coordinator), ["0", "0"]);
    let (code, body) = post(&drain_url(&coordinator, &gpu, "drain"), "", b"");
    assert_eq!(code, 200, "{body}");
    let status = job_status(&coordinator, &waiting);
    let short: String = gpu.worker_id().chars().take(12).collect();
    assert_eq!(
        status["blocked"],
        format!(
            "every worker that carries the labels this job asks for (arm64, gpu) is kept from \
             taking jobs: {short}... (draining); it waits until one takes jobs again, or until \
             its queue timeout"
        ),
        "{status}"
    );
    assert_eq!(waiting_for_labels(&coordinator), ["0", "1"]);
    // A follower's heartbeat says it too.
    let heard = follower.wait_for(
        &format!(
            "[STATUS] Job status: queued (position 1 of 1 in the queue; blocked: every worker \
             that carries the labels this job asks for (arm64, gpu) is kept from taking jobs: \
             {short}... (draining);"
        ),
        DEADLINE,
    );
    assert!(heard.is_some(), "{}", follower.text());
    // A job that waits so past its queue timeout fails, its error saying why it waited.
    let timed = submit(&coordinator, &job(Some("gpu")).field("queue_timeout", b"1"));
    let status = wait_status(&coordinator, &timed, "failed", DEADLINE);
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("every worker that carries its labels (gpu) was kept from taking jobs"),
        "{status}"
    );
    let (code, body) = post(&drain_url(&coordinator, &gpu, "undrain"), "", b"");
    assert_eq!(code, 200, "{body}");
    let status = job_status(&coordinator, &waiting);
    assert!(status.get("blocked").is_none(), "{status}");
    assert_eq!(waiting_for_labels(&coordinator), ["0", "0"]);

    // A reload that takes the labels away leaves the job stranded, and /status says so.
    write_workers(dir.path(), &[(&gpu, &[]), (&plain, &[])]);
    let (code, body) = post(&coordinator.url("/reload"), "application/json", b"");
    assert_eq!(code, 200, "{body}");
    let status = job_status(&coordinator, &waiting);
    assert_eq!(status["pool_status"], "queued", "{status}");
    assert!(
        status["stranded"].as_str().is_some_and(|s| s.starts_with(
            "no worker of the pool carries every label this job asks for (arm64, gpu) any more"
        )),
        "{status}"
    );
    let heard = follower.wait_for(
        "[STATUS] Job status: queued (position 1 of 1 in the queue; stranded: no worker of \
         the pool carries every label this job asks for (arm64, gpu) any more;",
        DEADLINE,
    );
    assert!(heard.is_some(), "{}", follower.text());

    assert_eq!(waiting_for_labels(&coordinator), ["1", "0"]);

    // A reload that gives the plain worker both labels sends the waiting job there.
    write_workers(dir.path(), &[(&gpu, &[]), (&plain, &["arm64", "gpu"])]);
    let (code, body) = post(&coordinator.url("/reload"), "application/json", b"");
    assert_eq!(code, 200, "{body}");
    assert!(coordinator.wait_for_log("labels [] -> [arm64, gpu]", DEADLINE));
    wait_status(&coordinator, &waiting, "completed", DEADLINE);
    assert_eq!(worker_of(&coordinator, &waiting), plain.worker_id());
    assert_eq!(waiting_for_labels(&coordinator), ["0", "0"]);
    assert_eq!(
        worker_infos(&coordinator),
        [info(&gpu, None), info(&plain, Some("arm64,gpu"))]
    );
}

#[test]
fn a_long_backlog_of_labelled_jobs_holds_up_no_job_that_another_worker_can_take() {
    let gpu = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(600));
    let plain = FakeWorker::start();
    let dir = support::temp_dir();
    write_workers(dir.path(), &[(&gpu, &["gpu", "arm64"]), (&plain, &[])]);
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&gpu, &plain], DEADLINE);
    let first = submit(&coordinator, &job(Some("gpu")));
    wait_started(&coordinator, &gpu, &first, DEADLINE);
    // 300 gpu jobs and an arm64 one wait for the full gpu worker; a plain job behind them all
    // goes to the plain worker.
    let mut backlog: Vec<String> = (0..300)
        .map(|_| submit(&coordinator, &job(Some("gpu"))))
        .collect();
    backlog.push(submit(&coordinator, &job(Some("arm64"))));
    let behind = submit(&coordinator, &job(None));
    wait_status(&coordinator, &behind, "completed", DEADLINE);
    assert_eq!(worker_of(&coordinator, &behind), plain.worker_id());
    let status = job_status(&coordinator, &backlog[300]);
    assert_eq!(status["pool_status"], "queued", "{status}");
    assert_eq!(status["queue_position"], 301, "{status}");
    assert_eq!(waiting_for_labels(&coordinator), ["0", "0"]);
    // Drained, the gpu worker blocks every one of them, counted per list of labels.
    let (code, body) = post(&drain_url(&coordinator, &gpu, "drain"), "", b"");
    assert_eq!(code, 200, "{body}");
    assert_eq!(waiting_for_labels(&coordinator), ["0", "301"]);
    let (code, body) = post(
        &coordinator.url(&format!("/cancel/{}", backlog[0])),
        "",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(waiting_for_labels(&coordinator), ["0", "300"]);
}

/// `trusted_pool_queued_jobs_waiting_for_labels` in a scrape of `/metrics`: stranded, blocked.
fn waiting_for_labels(coordinator: &Coordinator) -> [String; 2] {
    let (code, text) = get(&coordinator.url("/metrics"));
    assert_eq!(code, 200, "{text}");
    ["stranded", "blocked"].map(|reason| {
        let name = format!("trusted_pool_queued_jobs_waiting_for_labels{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_string()
    })
}

/// The `trusted_pool_worker_info` lines of a scrape of `/metrics`, in order.
fn worker_infos(coordinator: &Coordinator) -> Vec<String> {
    let (code, text) = get(&coordinator.url("/metrics"));
    assert_eq!(code, 200, "{text}");
    text.lines()
        .filter(|l| l.starts_with("trusted_pool_worker_info{"))
        .map(str::to_string)
        .collect()
}

/// The `trusted_pool_worker_info` line of `worker` carrying `labels`.
fn info(worker: &FakeWorker, labels: Option<&str>) -> String {
    let labels = labels.map_or(String::new(), |l| format!(",labels=\"{l}\""));
    format!(
        "trusted_pool_worker_info{{worker_id=\"{}\",endpoint=\"{}\"{labels}}} 1",
        worker.worker_id(),
        worker.endpoint()
    )
}
