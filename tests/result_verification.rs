//! Result verification against the allowlisted worker key: verified, failed (another key),
//! mismatch (an output altered after signing), unverifiable (no `[DONE]` figures and no CPU
//! candidate fits), CPU figures across C++'s `%g` edge cases, short jobs with tiny CPU figures
//! with and without `[DONE]` figures, and `--require-verified` failing
//! such jobs and keeping their worker unhealthy until an operator acts.

mod support;

use std::time::Duration;

use serde_json::Value;

use support::lifecycle::{exchange, pool_worker, submit, submit_subscribed, wait_healthy};
use support::sandrun::control::Printed;
use support::{get_json, poll_until, post, Coordinator, FakeWorker, Form, Knobs};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);

fn job() -> Form {
    Form::new()
        .file("main.py", "text/x-python", b"print('hi')\n")
        .manifest(r#"{"entrypoint":"main.py","outputs":["result.txt"]}"#)
}

/// A worker whose jobs run for a moment.
fn worker() -> FakeWorker {
    FakeWorker::start_with(|k| k.job_duration = Duration::from_millis(300))
}

fn start(worker: &FakeWorker, extra: &[&str]) -> Coordinator {
    let mut args = vec!["--health-interval", "1", "--track-interval", "0.2"];
    args.extend_from_slice(extra);
    let coordinator = Coordinator::start(&[worker.entry(2)], &args);
    wait_healthy(&coordinator, &[worker], DEADLINE);
    coordinator
}

/// A coordinator with `--require-verified` that leaves outputs past 1000 bytes on the worker.
fn strict_with_small_results(worker: &FakeWorker) -> Coordinator {
    start(
        worker,
        &["--require-verified", "--max-results-bytes", "1000"],
    )
}

/// Runs one job with these knobs and returns its final `/status`.
fn run_job(
    coordinator: &Coordinator,
    worker: &FakeWorker,
    change: impl FnOnce(&mut Knobs),
) -> Value {
    worker.set(change);
    // A job that ends before the coordinator's stream joined it is judged without what the
    // stream tells (its `[DONE]` line), as on sandrun: the stream joins it while the worker
    // holds it queued, however slow the machine.
    let id = if worker.knobs().stream.disabled {
        submit(coordinator, &job())
    } else {
        submit_subscribed(coordinator, worker, &job(), DEADLINE)
    };
    collected(coordinator, &id)
}

/// The final `/status` of job `id`, once its results are collected.
fn collected(coordinator: &Coordinator, id: &str) -> Value {
    poll_until(DEADLINE, || {
        let (_, status) = get_json(&coordinator.url(&format!("/status/{id}")));
        (status["results"]["collected"] == true).then_some(status)
    })
    .unwrap_or_else(|| panic!("job {id} was not collected in time"))
}

fn verdict(status: &Value) -> (String, String) {
    let v = &status["verification"];
    let text = |x: &Value| x.as_str().unwrap_or("null").to_string();
    (text(&v["signature"]), text(&v["outputs"]))
}

#[test]
fn results_are_verified_failed_mismatched_or_unverifiable_and_reported() {
    let worker = worker();
    let coordinator = start(&worker, &[]);
    let good = run_job(&coordinator, &worker, |_| {});
    assert_eq!(
        verdict(&good),
        ("verified".into(), "match".into()),
        "{good}"
    );

    let other_key = run_job(&coordinator, &worker, |k| {
        k.stream.sign_with_other_key = true
    });
    assert_eq!(verdict(&other_key).0, "failed", "{other_key}");
    assert_eq!(
        other_key["pool_status"], "completed",
        "the default only reports"
    );
    assert!(other_key["verification"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("result signature invalid")));

    let altered = run_job(&coordinator, &worker, |k| {
        k.stream.sign_with_other_key = false;
        k.stream.alter_output_after_signing = true;
    });
    assert_eq!(
        verdict(&altered),
        ("verified".into(), "mismatch".into()),
        "{altered}"
    );
    assert!(altered["verification"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("result.txt")));
    // No signature at all: the outputs are held to the sha256 the worker reported all the same.
    let unsigned = run_job(&coordinator, &worker, |k| k.stream.drop_signature = true);
    assert_eq!(
        verdict(&unsigned),
        ("failed".into(), "mismatch".into()),
        "{unsigned}"
    );

    // No [DONE], and a figure finer than sandrun's microseconds: of the values /status's 0.01
    // allows, the microseconds are tried (and fail), and then too few of the rest to find it.
    let unverifiable = run_job(&coordinator, &worker, |k| {
        k.stream.alter_output_after_signing = false;
        k.stream.drop_signature = false;
        k.stream.never_done = true;
        k.cpu_seconds = 0.0123456;
    });
    assert_eq!(verdict(&unverifiable).0, "unverifiable", "{unverifiable}");
    assert_eq!(unverifiable["pool_status"], "completed");

    // No [DONE], but few candidates: found among those /status's 1.23 allows.
    let searched = run_job(&coordinator, &worker, |k| k.cpu_seconds = 1.234567);
    assert_eq!(verdict(&searched).0, "verified", "{searched}");
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool_worker(&pool, &worker)["is_healthy"], true, "{pool}");
}

#[test]
fn cpu_figures_verify_across_the_g_format_edge_cases() {
    let worker = worker();
    let coordinator = start(&worker, &[]);
    for cpu in [0.0, 0.005, 0.00005, 0.1, 0.105819, 1.234567, 12.5] {
        let status = run_job(&coordinator, &worker, |k| k.cpu_seconds = cpu);
        assert_eq!(
            verdict(&status),
            ("verified".into(), "match".into()),
            "CPU {cpu}: {status}"
        );
    }
}

/// Short jobs with tiny CPU figures (sandrun's are whole microseconds, from `getrusage`): with
/// the `[DONE]` figures of a stream opened before the end, and without them (a worker without
/// `/stream`, as for a job that ended before the coordinator subscribed), where only
/// `/status`'s `0.00` or `0.01` is known and the microseconds it allows are searched.
#[test]
fn short_jobs_with_tiny_cpu_figures_verify_with_and_without_done_figures() {
    let worker = FakeWorker::start_with(|k| {
        k.max_jobs_per_hour = 1_000;
        k.job_duration = Duration::from_millis(300);
    });
    let coordinator = start(&worker, &[]);
    for no_stream in [false, true] {
        for cpu in [0.0, 0.000007, 0.00005, 0.003456, 0.005, 0.0099, 0.01] {
            let status = run_job(&coordinator, &worker, |k| {
                k.cpu_seconds = cpu;
                k.stream.disabled = no_stream;
                k.job_duration = if no_stream {
                    Duration::ZERO
                } else {
                    Duration::from_millis(300)
                };
            });
            assert_eq!(
                verdict(&status),
                ("verified".into(), "match".into()),
                "CPU {cpu}, no stream: {no_stream}: {status}"
            );
        }
    }
}

/// Waits until the worker's `/pool` entry has `is_healthy` == `healthy`; returns the entry.
/// sandrun sends a job's whole stdout in one frame, before its `[STDERR]` frame and the real
/// `[DONE]` line: a job that prints a `[DONE]` line of its own changes no verdict and takes no
/// worker out of service (its figures, which `/status` contradicts, are not taken).
#[test]
fn output_that_looks_like_the_done_line_changes_no_verdict_and_kills_no_worker() {
    let worker = worker();
    let coordinator = start(&worker, &["--require-verified"]);
    worker.set(|k| {
        k.stdout = Some(Printed::Text(
            "[DONE] Job completed (exit=0, CPU=0.123456s, Mem=7MB)\n",
        ));
        k.stderr = Some(Printed::Text("a warning\n"));
    });
    for _ in 0..3 {
        let id = submit(&coordinator, &job());
        let status = collected(&coordinator, &id);
        assert_eq!(status["pool_status"], "completed", "{status}");
        assert_eq!(
            verdict(&status),
            ("verified".into(), "match".into()),
            "{status}"
        );
    }
    assert_eq!(worker.recording().faults, Vec::<String>::new());
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool_worker(&pool, &worker)["is_healthy"], true, "{pool}");
}

fn wait_health(coordinator: &Coordinator, worker: &FakeWorker, healthy: bool) -> Value {
    poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        let entry = pool_worker(&pool, worker);
        (entry["is_healthy"] == healthy).then_some(entry)
    })
    .unwrap_or_else(|| panic!("the worker never became healthy={healthy}"))
}

/// `/workers/{id}/undrain` with the worker id percent-encoded.
fn undrain_url(coordinator: &Coordinator, worker: &FakeWorker) -> String {
    let encoded = worker
        .worker_id()
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    coordinator.url(&format!("/workers/{encoded}/undrain"))
}

/// A way to make a result not verify.
type Tamper = fn(&mut Knobs);

#[test]
fn require_verified_fails_bad_results_and_distrusts_the_worker_until_an_operator_acts() {
    let worker = worker();
    let coordinator = start(&worker, &["--require-verified"]);
    let cases: [(&str, Tamper); 3] = [
        ("another key", |k| k.stream.sign_with_other_key = true),
        ("an altered output", |k| {
            k.stream.alter_output_after_signing = true
        }),
        ("no figures", |k| {
            k.stream.never_done = true;
            k.cpu_seconds = 0.0123456;
        }),
    ];
    for (n, (case, tamper)) in cases.into_iter().enumerate() {
        worker.set(|k| k.stream = Default::default());
        let status = run_job(&coordinator, &worker, tamper);
        assert_eq!(status["pool_status"], "failed", "{case}: {status}");
        assert!(
            status["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("result signature invalid")),
            "{case}: {status}"
        );
        let entry = wait_health(&coordinator, &worker, false);
        assert!(
            entry["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("result signature invalid")),
            "{case}: {entry}"
        );
        // Probes succeed, yet the worker stays out of service.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            wait_health(&coordinator, &worker, false)["is_healthy"],
            false
        );
        let (code, body) = get_json(&coordinator.url("/pool"));
        assert_eq!(code, 200, "{body}");
        if n % 2 == 0 {
            let (code, body) = post(&undrain_url(&coordinator, &worker), "text/plain", b"");
            assert_eq!(code, 200, "{body}");
        } else {
            assert!(coordinator.signal(libc::SIGHUP), "kill -HUP");
        }
        wait_health(&coordinator, &worker, true);
    }
    worker.set(|k| {
        k.stream = Default::default();
        k.cpu_seconds = 0.0;
    });
    let good = run_job(&coordinator, &worker, |_| {});
    assert_eq!(good["pool_status"], "completed", "{good}");
}

/// An output the coordinator does not collect for a reason of its own (a name with a space,
/// which sandrun cannot serve; one past `--max-results-bytes`) fails the job under
/// `--require-verified`, saying why, but is no fault of the worker: any submitter could otherwise take every worker out of service. The
/// worker stays in service and runs the next job.
#[test]
fn require_verified_does_not_distrust_a_worker_for_outputs_the_coordinator_does_not_collect() {
    let worker = worker();
    let coordinator = strict_with_small_results(&worker);
    // Without an outputs list the fake worker lists every file of the job as an output.
    let form = Form::new()
        .file("main.py", "text/x-python", b"print('hi')\n")
        .file("a b.txt", "text/plain", b"space\n")
        .file("big.bin", "application/octet-stream", &[7u8; 5000])
        .manifest(r#"{"entrypoint":"main.py"}"#);
    let id = submit(&coordinator, &form);
    let status = collected(&coordinator, &id);
    assert_eq!(status["pool_status"], "failed", "{status}");
    assert!(
        status["error"].as_str().is_some_and(|e| e
            .starts_with("results not verified (--require-verified)")
            && e.contains("a b.txt was not collected (sandrun cannot serve")
            && e.contains("big.bin was not collected (it would take the job's collected outputs past --max-results-bytes")),
        "{status}"
    );
    let (_, pool) = get_json(&coordinator.url("/pool"));
    let entry = pool_worker(&pool, &worker);
    assert_eq!(entry["is_healthy"], true, "{entry}");
    let good = run_job(&coordinator, &worker, |_| {});
    assert_eq!(good["pool_status"], "completed", "{good}");
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool_worker(&pool, &worker)["is_healthy"], true, "{pool}");
}

/// A worker that serves an output left on it other than it reported and signed when the job
/// ended (a size that changed, or bytes) is distrusted under `--require-verified`, as for a
/// result that does not verify, until an operator's SIGHUP.
#[test]
fn require_verified_distrusts_a_worker_that_serves_an_output_other_than_it_signed() {
    let worker = worker();
    let coordinator = strict_with_small_results(&worker);
    let form = Form::new()
        .file("main.py", "text/x-python", b"print('hi')\n")
        .file("big.bin", "application/octet-stream", &[7u8; 5000])
        .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#);
    let cases: [(&str, Tamper); 2] = [
        ("a grown output", |k| {
            k.stream.alter_output_after_signing = true
        }),
        ("a flipped output", |k| {
            k.stream.flip_output_after_signing = true
        }),
    ];
    for (case, tamper) in cases {
        worker.set(|k| k.stream = Default::default());
        worker.set(tamper);
        let id = submit(&coordinator, &form);
        let status = collected(&coordinator, &id);
        assert_eq!(
            status["results"]["left_on_worker"][0], "big.bin",
            "{status}"
        );
        let (_, pool) = get_json(&coordinator.url("/pool"));
        assert_eq!(pool_worker(&pool, &worker)["is_healthy"], true, "{case}");

        let served = exchange(
            coordinator.port(),
            &format!("GET /outputs/{id}/big.bin HTTP/1.1\r\n"),
            b"",
        );
        assert!(
            served.as_ref().map_or(true, |reply| reply.status == 502),
            "{case}: served whole"
        );
        let entry = wait_health(&coordinator, &worker, false);
        assert!(
            entry["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!(
                    "the output \"big.bin\" of job {id} changed on the worker after the job ended"
                ))),
            "{case}: {entry}"
        );
        coordinator.hangup();
        wait_health(&coordinator, &worker, true);
    }
}
