//! Durability through the real coordinator binary: acknowledged jobs survive `kill -9` and are
//! followed to the end after a restart (never sent twice), crash injection under load, torn and
//! refused job stores, graceful shutdown, retention, back pressure and a full disk.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::lifecycle::{
    assert_pool_consistent, drain_url, job_status, pool_worker, submit, wait_collected,
    wait_healthy,
};
use support::{
    get, get_bytes, get_json, poll_until, post, send, write_workers_json, Coordinator, FakeWorker,
    Form, Knobs,
};

const DEADLINE: Duration = Duration::from_secs(60);
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.05"];

/// A fake worker without sandrun's per-IP limits (so the coordinator's own limits decide),
/// that takes a job up within 5 ms, and lives on where sandrun dies of SIGPIPE. A stream opened
/// once its job runs (which the 5 ms makes the rule, not the exception of sandrun's second)
/// leaves sandrun to write the job's last frames to it; when the coordinator is killed before,
/// they go to a closed connection and kill sandrun. These tests are about the coordinator's
/// store, and kill it often.
fn roomy(job_duration: Duration) -> impl FnOnce(&mut Knobs) {
    move |k: &mut Knobs| {
        k.survives_sigpipe = true;
        k.job_duration = job_duration;
        k.max_active_per_ip = 1000;
        k.max_jobs_per_hour = 1_000_000;
        k.cpu_seconds_per_minute = 1e9;
        k.cpu_seconds = 0.0;
        k.poll_interval = Duration::from_millis(5);
    }
}

/// A job whose upload carries a unique token, so a worker's recording shows each job once.
fn job(token: &str) -> Form {
    Form::new().file(
        "main.py",
        "text/x-python",
        format!("print('{token}')\n").as_bytes(),
    )
}

/// The tokens of every job a worker received, with how often each came.
fn received_tokens(workers: &[&FakeWorker]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for worker in workers {
        for received in worker.recording().jobs {
            if received.job_id.is_none() {
                continue;
            }
            for file in &received.files {
                let text = String::from_utf8_lossy(&file.bytes).into_owned();
                *seen.entry(text).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// Polls until the job ended; returns its last `/status`.
fn wait_final(coordinator: &Coordinator, id: &str, deadline: Duration) -> Value {
    let mut last = Value::Null;
    poll_until(deadline, || {
        last = job_status(coordinator, id);
        let ended = match last["pool_status"].as_str() {
            Some("completed") => last["results"]["collected"] == true,
            Some("failed" | "lost") => true,
            _ => false,
        };
        ended.then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("job {id} did not end in {deadline:?}: {last}"))
}

/// Waits until job `id` is on its worker: the worker's job id is known (a status poll may
/// not tell it running, as sandrun holds its status answers while a job runs).
fn wait_on_worker(coordinator: &Coordinator, id: &str) {
    poll_until(DEADLINE, || {
        (!job_status(coordinator, id)["remote_job_id"].is_null()).then_some(())
    })
    .unwrap_or_else(|| panic!("job {id} never reached its worker"));
}

/// The collected `result.txt` of a completed job, compared with what the worker wrote.
fn assert_outputs(coordinator: &Coordinator, id: &str, status: &Value) {
    let remote = status["remote_job_id"].as_str().unwrap_or_default();
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{id}/result.txt")));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(
        bytes,
        format!("result of {remote}\n").into_bytes(),
        "job {id}"
    );
    let (code, logs) = get_json(&coordinator.url(&format!("/logs/{id}")));
    assert_eq!(code, 200, "{logs}");
    assert_eq!(logs["stdout"], "ran main.py\n", "job {id}");
}

/// Where the store keeps job `id`'s results: (bytes in its row, its results segment).
/// Waits until the store's row says so (a record nobody waits on may be committed up to
/// `store::handoff::DEFERRAL` after the change that `/status` shows).
fn results_home(dir: &Path, id: &str) -> (Option<usize>, Option<String>) {
    let db = dir.join("state").join("jobs.db");
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(db, flags).unwrap_or_else(|e| panic!("{e}"));
    poll_until(DEADLINE, || {
        let home: (Option<usize>, Option<String>) = conn
            .query_row(
                "SELECT length(results), results_segment FROM jobs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or_else(|e| panic!("job {id}: {e}"));
        (home.0.is_some() || home.1.is_some()).then_some(home)
    })
    .unwrap_or_else(|| panic!("job {id}: the store never held its results"))
}

/// Results up to `--row-results-max` bytes live in the job's row, larger ones in a results
/// segment; both are served byte for byte before and after a `kill -9` and restart.
/// A worker listed at another endpoint after a restart (its key moved to another address) is
/// another worker: a job sent to the old endpoint is not looked for at the new one, whose own
/// job ids may name other jobs; it is lost, saying why.
#[test]
fn after_a_restart_a_job_is_followed_only_at_the_endpoint_it_was_sent_to() {
    let old = FakeWorker::start_with(roomy(Duration::from_secs(60)));
    let dir = support::temp_dir();
    write_workers_json(dir.path(), &[old.entry(2)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&old], DEADLINE);
    let id = submit(&coordinator, &job("sent before the move"));
    wait_on_worker(&coordinator, &id);
    // The worker's job id is recorded without waiting: killed before, the job's submit is in
    // flight at the restart, and lost for that.
    let stored = poll_until(DEADLINE, || {
        stored_remote_id_of(coordinator.dir(), &id).then_some(())
    });
    assert!(
        stored.is_some(),
        "job {id}: its worker's job id never reached the store"
    );
    coordinator.kill();
    let moved = FakeWorker::start_with_key(old.key().clone(), roomy(Duration::ZERO));
    write_workers_json(dir.path(), &[moved.entry(2)]);
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    let status = wait_final(&coordinator, &id, DEADLINE);
    assert_eq!(status["pool_status"], "lost", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    let expected = format!(
        "is listed at {} now, not at {} where the job was sent",
        moved.endpoint(),
        old.endpoint()
    );
    assert!(error.contains(&expected), "{status}");
    // Counted as a job that ended lost (it was not, in the figures of a restart).
    let (_, metrics) = get(&coordinator.url("/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l == "trusted_pool_jobs_finished_total{status=\"lost\"} 1"),
        "{metrics}"
    );
    let (_, activity) = get_json(&coordinator.url("/activity"));
    let failed: u64 = activity["jobs_per_minute"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|minute| minute["failed"].as_u64())
        .sum();
    assert_eq!(failed, 1, "{activity}");
    // The worker at the new endpoint takes jobs as any other.
    let next = submit(&coordinator, &job("sent after the move"));
    assert_eq!(
        wait_final(&coordinator, &next, DEADLINE)["pool_status"],
        "completed"
    );
}

#[test]
fn small_results_live_in_the_job_row_and_large_ones_in_a_segment() {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    let dir = support::temp_dir();
    write_workers_json(dir.path(), &[worker.entry(2)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let small = submit(&coordinator, &job("small results"));
    let data: Vec<u8> = (0..40 * 1024).map(|i| (i % 251) as u8).collect();
    let large = submit(
        &coordinator,
        &job("large results")
            .file("data.bin", "application/octet-stream", &data)
            .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#),
    );
    let check = |coordinator: &Coordinator| {
        for id in [&small, &large] {
            let status = wait_collected(coordinator, id, DEADLINE);
            assert_outputs(coordinator, id, &status);
        }
        let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{large}/data.bin")));
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&bytes));
        assert!(bytes == data, "data.bin differs ({} bytes)", bytes.len());
        let (code, tarball) = get_bytes(&coordinator.url(&format!("/download/{small}")));
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&tarball));
        assert_eq!(&tarball[..2], &[0x1f, 0x8b], "not a gzip stream");
    };
    check(&coordinator);
    let (in_row, segment) = results_home(dir.path(), &small);
    assert!(
        in_row.is_some_and(|n| n > 0) && segment.is_none(),
        "{in_row:?} {segment:?}"
    );
    let (in_row, segment) = results_home(dir.path(), &large);
    assert!(
        in_row.is_none() && segment.is_some(),
        "{in_row:?} {segment:?}"
    );
    coordinator.kill();
    let restarted = Coordinator::start_in(dir.path(), &FAST);
    check(&restarted);
}

#[test]
fn acknowledged_jobs_survive_kill_9_and_running_ones_are_followed_to_the_end() {
    // One slot per worker: no dispatch is in flight at the kill (those would be lost).
    let worker = FakeWorker::start_with(roomy(Duration::from_secs(3)));
    let other = FakeWorker::start_with(roomy(Duration::from_secs(3)));
    let mut coordinator = Coordinator::start(&[worker.entry(1), other.entry(1)], &FAST);
    wait_healthy(&coordinator, &[&worker, &other], DEADLINE);
    let ids: Vec<String> = (0..8)
        .map(|i| submit(&coordinator, &job(&format!("kill-9 job {i}"))))
        .collect();
    poll_until(DEADLINE, || {
        let first = job_status(&coordinator, &ids[0]);
        let second = job_status(&coordinator, &ids[1]);
        (!first["remote_job_id"].is_null() && !second["remote_job_id"].is_null()).then_some(())
    })
    .unwrap_or_else(|| panic!("the first two jobs were not on the worker"));
    // The worker's job ids are recorded without waiting; kill once they are in the store.
    let dir = coordinator.dir().to_path_buf();
    poll_until(DEADLINE, || (stored_remote_ids(&dir) >= 2).then_some(()))
        .unwrap_or_else(|| panic!("the worker's job ids never reached the store"));
    coordinator.kill();
    let restarted = Coordinator::start_in(&dir, &FAST);
    let recovered = recovery_counts(&restarted.logs());
    assert_eq!(recovered[3], 0, "no job may end at recovery: {recovered:?}");
    assert_eq!(recovered[0], 6, "queued again: {recovered:?}");
    assert_eq!(
        recovered[1], 2,
        "followed again on their workers: {recovered:?}"
    );
    for id in &ids {
        let status = wait_final(&restarted, id, DEADLINE);
        assert_eq!(status["pool_status"], "completed", "{status}");
        assert_outputs(&restarted, id, &status);
    }
    let seen = received_tokens(&[&worker, &other]);
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert!(
        seen.values().all(|n| *n == 1),
        "a job was sent twice: {seen:?}"
    );
    // Finished jobs keep serving from the store after one more restart, byte for byte.
    let dir = restarted.dir().to_path_buf();
    drop(restarted);
    let again = Coordinator::start_in(&dir, &FAST);
    for id in &ids {
        let status = job_status(&again, id);
        assert_eq!(status["pool_status"], "completed", "{status}");
        assert_outputs(&again, id, &status);
    }
    let (_, pool) = get_json(&again.url("/pool"));
    assert_eq!(pool["jobs_by_status"]["completed"], 8, "{pool}");
    assert_eq!(pool["store"]["rows"], 8, "{pool}");
}

/// `/activity`'s recent jobs after `kill -9` and a restart: the settled jobs, the one still
/// running on its worker and the queued one, newest first.
#[test]
fn recent_jobs_after_kill_9_list_settled_running_and_queued_jobs_newest_first() {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    let mut coordinator = Coordinator::start(&[worker.entry(1)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let mut ids: Vec<String> = (0..3)
        .map(|i| {
            let id = submit(&coordinator, &job(&format!("finished job {i}")));
            wait_collected(&coordinator, &id, DEADLINE);
            id
        })
        .collect();
    worker.set(|k| k.job_duration = Duration::from_secs(60));
    ids.push(submit(&coordinator, &job("running job")));
    ids.push(submit(&coordinator, &job("queued job")));
    let dir = coordinator.dir().to_path_buf();
    poll_until(DEADLINE, || (stored_remote_ids(&dir) >= 4).then_some(()))
        .unwrap_or_else(|| panic!("the running job's worker job id never reached the store"));
    coordinator.kill();
    let restarted = Coordinator::start_in(&dir, &FAST);
    let (code, activity) = get_json(&restarted.url("/activity"));
    assert_eq!(code, 200, "{activity}");
    let recent = activity["recent_jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{activity}"));
    let field = |name: &str| -> Vec<&str> {
        recent
            .iter()
            .map(|j| j[name].as_str().unwrap_or_default())
            .collect()
    };
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(field("job_id"), newest_first, "{activity}");
    let statuses = field("pool_status");
    assert_eq!(statuses[0], "queued", "{activity}");
    assert!(
        ["dispatched", "running"].contains(&statuses[1]),
        "{activity}"
    );
    assert_eq!(statuses[2..], ["completed"; 3], "{activity}");
}

/// A job cancelled while it runs on its worker holds its slot there until it ends, across a
/// `kill -9` too: the restart counts it against the worker's `max_concurrent_jobs` (and its end
/// there frees that slot, no other).
#[test]
fn a_job_cancelled_on_its_worker_holds_its_slot_across_kill_9_until_it_ends_there() {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    let mut coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    // Held running until the restarted coordinator counted its slot, however slow the restart.
    worker.set(|k| k.hold_jobs = true);
    let id = submit(&coordinator, &job("cancelled while it runs"));
    let dir = coordinator.dir().to_path_buf();
    poll_until(DEADLINE, || (stored_remote_ids(&dir) >= 1).then_some(()))
        .unwrap_or_else(|| panic!("the worker's job id never reached the store"));
    let (code, body) = post(&coordinator.url(&format!("/cancel/{id}")), "", b"");
    assert_eq!(code, 200, "{body}");
    coordinator.kill();
    let restarted = Coordinator::start_in(&dir, &FAST);
    let slots = || {
        let (_, pool) = get_json(&restarted.url("/pool"));
        let entry = pool_worker(&pool, &worker);
        (entry["active_jobs"].clone(), entry["tracked_jobs"].clone())
    };
    assert_eq!(
        slots(),
        (Value::from(1), Value::from(1)),
        "the cancelled job still runs there and holds its slot"
    );
    worker.set(|k| k.hold_jobs = false);
    assert!(restarted.wait_for_log(&format!("Cancelled job {id} ended on its worker"), DEADLINE));
    poll_until(DEADLINE, || {
        (slots() == (Value::from(0), Value::from(0))).then_some(())
    })
    .unwrap_or_else(|| panic!("the job was not deleted on its worker: {:?}", slots()));
    assert_eq!(job_status(&restarted, &id)["pool_status"], "cancelled");
}

/// A worker whose submits hang, a coordinator, and the id of a job (its source `source`)
/// whose submit to the worker is in flight.
fn a_job_with_its_submit_in_flight(source: &str) -> (FakeWorker, Coordinator, String) {
    let worker = FakeWorker::start_with(|k| {
        roomy(Duration::ZERO)(k);
        k.hang_submit = true;
    });
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &job(source));
    poll_until(DEADLINE, || {
        (job_status(&coordinator, &id)["pool_status"] == "dispatched").then_some(())
    })
    .unwrap_or_else(|| panic!("the job was never sent to the worker"));
    (worker, coordinator, id)
}

/// Kills `coordinator` (`kill -9`) while job `id`'s submit is in flight, lets its worker take
/// submits again, and restarts it: the job reads `status`, saying it may or may not run there.
fn killed_and_restarted(
    worker: &FakeWorker,
    mut coordinator: Coordinator,
    id: &str,
    status: &str,
) -> Coordinator {
    coordinator.kill();
    worker.set(|k| k.hang_submit = false);
    let restarted = Coordinator::start_in(coordinator.dir(), &FAST);
    let seen = job_status(&restarted, id);
    assert_eq!(seen["pool_status"], status, "{seen}");
    assert!(
        seen["error"]
            .as_str()
            .is_some_and(|e| e.contains("it may or may not run there")),
        "{seen}"
    );
    restarted
}

/// A job cancelled while its submit to the worker is in flight, then `kill -9`: the restart
/// settles it as cancelled, saying it may or may not run there; nothing is left to wait on it.
#[test]
fn a_job_cancelled_with_its_submit_in_flight_settles_at_the_restart_after_kill_9() {
    let (worker, coordinator, id) = a_job_with_its_submit_in_flight("cancelled in flight");
    let (code, body) = post(&coordinator.url(&format!("/cancel/{id}")), "", b"");
    assert_eq!(code, 200, "{body}");
    let restarted = killed_and_restarted(&worker, coordinator, &id, "cancelled");
    let (_, pool) = get_json(&restarted.url("/pool"));
    let entry = pool_worker(&pool, &worker);
    assert_eq!(
        (&entry["active_jobs"], &entry["tracked_jobs"]),
        (&Value::from(0), &Value::from(0)),
        "{entry}"
    );
    let (code, body) = send("DELETE", &restarted.url(&format!("/jobs/{id}")), None)
        .map(|r| (r.status, r.text()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, 200, "a settled job is deleted at once: {body}");
}

/// A job whose submit was in flight at a `kill -9` is lost at the restart, and counted: in
/// `/metrics` (it was counted nowhere, so the jobs-lost alert never fired for it) and as a loss
/// of its worker, which is still listed (its `jobs_lost` read 0).
#[test]
fn a_job_lost_with_its_submit_in_flight_at_kill_9_is_counted_at_the_restart() {
    let (worker, coordinator, id) = a_job_with_its_submit_in_flight("lost in flight");
    let restarted = killed_and_restarted(&worker, coordinator, &id, "lost");
    let (_, pool) = get_json(&restarted.url("/pool"));
    assert_eq!(pool_worker(&pool, &worker)["jobs_lost"], 1, "{pool}");
    let (_, metrics) = get(&restarted.url("/metrics"));
    let lost_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains("jobs_finished_total{") && l.contains("status=\"lost\"}"))
        .collect();
    assert_eq!(lost_lines.len(), 2, "{metrics}");
    assert!(
        lost_lines.iter().all(|l| l.ends_with(" 1")),
        "{lost_lines:?}"
    );
}

/// Jobs in the store (read-only, beside the running coordinator) whose worker job id is known.
/// Whether the store holds job `id`'s worker job id (read beside the running coordinator).
fn stored_remote_id_of(dir: &Path, id: &str) -> bool {
    let db = dir.join("state").join("jobs.db");
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    rusqlite::Connection::open_with_flags(db, flags)
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM jobs WHERE id = ?1 \
                 AND json_extract(record, '$.remote_job_id') IS NOT NULL",
                [id],
                |r| r.get::<_, i64>(0),
            )
        })
        .is_ok_and(|n| n == 1)
}

fn stored_remote_ids(dir: &Path) -> usize {
    let db = dir.join("state").join("jobs.db");
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    rusqlite::Connection::open_with_flags(db, flags)
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM jobs WHERE json_extract(record, '$.remote_job_id') IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .map_or(0, |n| n as usize)
}

/// The results segments the jobs in the store refer to.
fn stored_segments(dir: &Path) -> BTreeSet<String> {
    let db = dir.join("state").join("jobs.db");
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, flags) else {
        return BTreeSet::new();
    };
    let Ok(mut statement) =
        conn.prepare("SELECT DISTINCT results_segment FROM jobs WHERE results_segment IS NOT NULL")
    else {
        return BTreeSet::new();
    };
    statement
        .query_map([], |r| r.get::<_, String>(0))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// The numbers of the recovery log line: queued, followed, to collect, ended.
fn recovery_counts(logs: &str) -> [usize; 4] {
    let line = logs
        .lines()
        .find(|l| l.contains("recovered "))
        .unwrap_or_else(|| panic!("no recovery line in {logs}"));
    let numbers: Vec<usize> = line
        .split("recovered ")
        .nth(1)
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    [0, 1, 2, 3].map(|i| numbers.get(i).copied().unwrap_or_default())
}

/// A small seeded generator (xorshift), so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn crash_injection_kill_9_at_random_moments_loses_no_acknowledged_job() {
    crash_injection(&FAST, 20, 0x9e37_79b9_7f4a_7c15u64);
}

/// `--fsync off` commits without syncing: an acknowledged job still survives `kill -9` of the
/// coordinator (the operating system keeps what was written), only a power cut may lose it.
#[test]
fn with_fsync_off_acknowledged_jobs_survive_kill_9_too() {
    let args = [FAST.as_slice(), &["--fsync", "off"]].concat();
    crash_injection(&args, 8, 0x2545_f491_4f6c_dd1du64);
}

/// Deletions tried by [`deleter`] during the crash rounds.
#[derive(Default)]
struct Deletions {
    /// Answered 200: the job must stay deleted.
    done: BTreeSet<String>,
    /// Sent without an answer (a kill): either way is fine.
    unanswered: BTreeSet<String>,
    /// Ended otherwise than completed: not deleted.
    skipped: BTreeSet<String>,
    /// Answered 404 before any deletion was tried: an acknowledged job unknown.
    unknown: Vec<String>,
}

impl Deletions {
    /// The jobs it is done with.
    fn visited(&self) -> usize {
        self.done.len() + self.unanswered.len() + self.skipped.len()
    }
}

/// A client that deletes every third acknowledged job once it completed, until `stop`.
fn deleter(
    base: String,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<(String, String)>>>,
    deletions: Arc<Mutex<Deletions>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let visited = deletions.lock().map_or(0, |d| d.visited());
        let next = acknowledged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .step_by(3)
            .nth(visited)
            .map(|(id, _)| id.clone());
        let Some(id) = next else {
            thread::sleep(Duration::from_millis(30));
            continue;
        };
        let Ok(status) = send("GET", &format!("{base}/status/{id}"), None) else {
            thread::sleep(Duration::from_millis(30));
            continue;
        };
        let answer = status.json();
        let pool_status = answer["pool_status"].as_str().unwrap_or_default();
        if status.status == 404 || ["failed", "lost", "cancelled"].contains(&pool_status) {
            let mut d = deletions.lock().unwrap_or_else(|e| e.into_inner());
            if status.status == 404 {
                d.unknown.push(format!("{id}: {}", status.text()));
            }
            d.skipped.insert(id);
            continue;
        }
        if pool_status != "completed" || answer["results"]["collected"] != true {
            thread::sleep(Duration::from_millis(30));
            continue;
        }
        let deleted = send("DELETE", &format!("{base}/jobs/{id}"), None);
        let mut d = deletions.lock().unwrap_or_else(|e| e.into_inner());
        match deleted {
            Ok(reply) if reply.status == 200 => {
                d.done.insert(id);
            }
            Ok(reply) if reply.status == 409 => {}
            _ => {
                d.unanswered.insert(id);
            }
        }
    }
}

/// Rounds of submits under load, each ended by `kill -9` at a random moment and restarted on
/// the same state directory with `args`; then every acknowledged job must be known and end
/// `completed` (or `lost`, only when its submit was in flight at a kill), none sent twice.
/// Meanwhile every third completed job is deleted: one answered 200 must stay deleted.
fn crash_injection(args: &[&str], rounds: usize, default_seed: u64) {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seed);
    eprintln!("crash injection seed {seed} (set CRASH_SEED to replay), {args:?}");
    let mut rng = Rng(seed);
    let workers = [
        FakeWorker::start_with(roomy(Duration::from_millis(20))),
        FakeWorker::start_with(roomy(Duration::from_millis(20))),
    ];
    let dir = support::temp_dir();
    write_workers_json(dir.path(), &[workers[0].entry(4), workers[1].entry(4)]);
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let deletions: Arc<Mutex<Deletions>> = Arc::default();
    let mut sent = 0usize;
    let started = Instant::now();
    for round in 0..rounds {
        let coordinator = Coordinator::start_in(dir.path(), args);
        let url = coordinator.url("/submit");
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let url = url.clone();
                let stop = Arc::clone(&stop);
                let acknowledged = Arc::clone(&acknowledged);
                thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let token = format!("round {round} client {c} job {n}");
                        n += 1;
                        let form = job(&token);
                        let reply = send("POST", &url, Some((&form.content_type(), &form.body())));
                        if let Some(reply) = reply.ok().filter(|r| r.status == 200) {
                            let answer = reply.json();
                            if let Some(id) = answer["job_id"].as_str() {
                                acknowledged
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push((id.to_string(), token));
                            }
                        }
                        thread::sleep(Duration::from_millis(30));
                    }
                    n
                })
            })
            .collect();
        let deleting = {
            let (base, stop) = (coordinator.url(""), Arc::clone(&stop));
            let (acknowledged, deletions) = (Arc::clone(&acknowledged), Arc::clone(&deletions));
            thread::spawn(move || deleter(base, stop, acknowledged, deletions))
        };
        thread::sleep(Duration::from_millis(150 + rng.below(600)));
        let mut coordinator = coordinator;
        coordinator.kill();
        stop.store(true, Ordering::SeqCst);
        for client in clients {
            sent += client.join().unwrap_or(0);
        }
        let _ = deleting.join();
    }
    let coordinator = Coordinator::start_in(dir.path(), args);
    let acknowledged = acknowledged
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    eprintln!(
        "{} submits sent, {} acknowledged over {rounds} kill -9 rounds in {:.1} s",
        sent,
        acknowledged.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(acknowledged.len() >= 20, "too few jobs were acknowledged");
    let deletions = std::mem::take(&mut *deletions.lock().unwrap_or_else(|e| e.into_inner()));
    assert_eq!(
        deletions.unknown,
        Vec::<String>::new(),
        "acknowledged jobs unknown"
    );
    eprintln!(
        "{} deletions answered 200, {} unanswered at a kill",
        deletions.done.len(),
        deletions.unanswered.len()
    );
    let mut lost = 0;
    for (id, token) in &acknowledged {
        let (code, body) = get(&coordinator.url(&format!("/status/{id}")));
        if deletions.done.contains(id) || (code == 404 && deletions.unanswered.contains(id)) {
            assert_eq!(code, 404, "job {id} came back after its deletion: {body}");
            continue;
        }
        let status = wait_final(&coordinator, id, DEADLINE);
        match status["pool_status"].as_str() {
            Some("completed") => {
                assert_outputs(&coordinator, id, &status);
                let remote = status["remote_job_id"].as_str().unwrap_or_default();
                assert!(!remote.is_empty(), "{status}");
            }
            Some("lost") => {
                lost += 1;
                let error = status["error"].as_str().unwrap_or_default();
                assert!(
                    error.contains("in flight"),
                    "lost for another reason: {status}"
                );
            }
            _ => panic!("job {id} ({token}) ended {status}"),
        }
    }
    let seen = received_tokens(&[&workers[0], &workers[1]]);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs sent twice: {twice:?}");
    let acked: BTreeSet<String> = acknowledged
        .iter()
        .map(|(_, t)| format!("print('{t}')\n"))
        .collect();
    let completed = acknowledged.len() - lost;
    assert!(
        acked.iter().filter(|t| seen.contains_key(*t)).count() >= completed,
        "every completed job reached a worker"
    );
    eprintln!("{completed} completed, {lost} lost (submit in flight at a kill)");
}

/// Jobs submitted and completed in one run, then a second run that adds more and is killed.
fn store_with_wal_tail(dir: &Path) -> (Vec<String>, Vec<String>) {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    write_workers_json(dir, &[worker.entry(4)]);
    let first = Coordinator::start_in(dir, &FAST);
    wait_healthy(&first, &[&worker], DEADLINE);
    let before: Vec<String> = (0..5)
        .map(|i| submit(&first, &job(&format!("torn before {i}"))))
        .collect();
    for id in &before {
        wait_collected(&first, id, DEADLINE);
    }
    let mut first = first;
    let status = first.terminate(DEADLINE);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let mut second = Coordinator::start_in(dir, &[]);
    let after: Vec<String> = (0..10)
        .map(|i| submit(&second, &job(&format!("torn after {i}"))))
        .collect();
    second.kill();
    (before, after)
}

#[test]
fn a_torn_or_garbled_wal_tail_still_opens_and_keeps_every_job_before_it() {
    let dir = support::temp_dir();
    let (before, after) = store_with_wal_tail(dir.path());
    let state = dir.path().join("state");
    let wal = state.join("jobs.db-wal");
    let original = fs::read(&wal).unwrap_or_default();
    assert!(!original.is_empty(), "the killed run left no WAL");
    let db = fs::read(state.join("jobs.db")).unwrap_or_default();
    let mut known_after_prev = 0;
    let cuts: Vec<usize> = (1..=6)
        .map(|k| original.len() * k / 7)
        .chain([original.len() - 1])
        .collect();
    for cut in cuts {
        fs::write(state.join("jobs.db"), &db).unwrap_or_else(|e| panic!("{e}"));
        fs::write(&wal, &original[..cut]).unwrap_or_else(|e| panic!("{e}"));
        let coordinator = Coordinator::start_in(dir.path(), &[]);
        for id in &before {
            let (code, body) = get(&coordinator.url(&format!("/status/{id}")));
            assert_eq!(code, 200, "WAL cut at {cut}: {body}");
        }
        let known = after
            .iter()
            .filter(|id| get(&coordinator.url(&format!("/status/{id}"))).0 == 200)
            .count();
        assert!(
            known >= known_after_prev || known == after.len(),
            "cut at {cut}: {known} < {known_after_prev}"
        );
        known_after_prev = known;
        drop(coordinator);
    }
    // Garbage appended to the intact WAL: every job kept.
    fs::write(state.join("jobs.db"), &db).unwrap_or_else(|e| panic!("{e}"));
    let mut garbled = original.clone();
    garbled.extend((0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    fs::write(&wal, &garbled).unwrap_or_else(|e| panic!("{e}"));
    let coordinator = Coordinator::start_in(dir.path(), &[]);
    for id in before.iter().chain(&after) {
        let (code, body) = get(&coordinator.url(&format!("/status/{id}")));
        assert_eq!(code, 200, "after garbage: {body}");
    }
}

#[test]
fn a_newer_or_corrupted_store_is_refused_with_exit_1_and_left_as_it_is() {
    let dir = support::temp_dir();
    let worker = FakeWorker::start();
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &[]);
    let id = submit(&coordinator, &job("kept"));
    coordinator.terminate(DEADLINE);
    let db = dir.path().join("state").join("jobs.db");
    let conn_ok = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA user_version = 999;")
        .status();
    if !conn_ok.is_ok_and(|s| s.success()) {
        // Without the sqlite3 tool, write the header field directly (bytes 60..64).
        let mut bytes = fs::read(&db).unwrap_or_else(|e| panic!("{e}"));
        bytes[60..64].copy_from_slice(&999u32.to_be_bytes());
        fs::write(&db, bytes).unwrap_or_else(|e| panic!("{e}"));
    }
    let refused = Coordinator::try_start_in(dir.path(), &[])
        .err()
        .unwrap_or_default();
    assert!(
        refused.contains("exit: Some(ExitStatus(unix_wait_status(256)))"),
        "{refused}"
    );
    assert!(refused.contains("schema version 999, newer"), "{refused}");
    assert!(refused.contains("jobs.db"), "{refused}");

    let mut bytes = fs::read(&db).unwrap_or_else(|e| panic!("{e}"));
    bytes[60..64].copy_from_slice(&0u32.to_be_bytes());
    bytes[60..64].copy_from_slice(&1u32.to_be_bytes());
    let page = 4096.min(bytes.len() / 2);
    for b in &mut bytes[page..page + 200] {
        *b = 0xa5;
    }
    fs::write(&db, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let refused = Coordinator::try_start_in(dir.path(), &[])
        .err()
        .unwrap_or_default();
    assert!(refused.contains("unix_wait_status(256)"), "{refused}");
    assert!(refused.contains("integrity check"), "{refused}");
    assert_eq!(
        fs::read(&db).unwrap_or_default(),
        bytes,
        "the refused store was changed"
    );
    let _ = id;
}

/// The files of a state directory's segment folders, with their bytes.
fn segment_contents(state: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for folder in ["results", "uploads"] {
        for entry in fs::read_dir(state.join(folder)).unwrap_or_else(|e| panic!("{e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
            files.insert(format!("{folder}/{name}"), bytes);
        }
    }
    files
}

/// A stopped pool whose state directory holds a collected job with its results in a results
/// segment and a queued one (its worker drained) with its upload in an upload segment.
fn a_stopped_pool_with_segments(dir: &Path) -> (FakeWorker, String, String, Vec<u8>) {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    write_workers_json(dir, &[worker.entry(2)]);
    let mut coordinator = Coordinator::start_in(dir, &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let data: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    let collected = submit(
        &coordinator,
        &job("kept results")
            .file("data.bin", "application/octet-stream", &data)
            .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#),
    );
    wait_collected(&coordinator, &collected, DEADLINE);
    let reply = send("POST", &drain_url(&coordinator, &worker, "drain"), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let padding = vec![b'#'; 100 * 1024];
    let queued = submit(
        &coordinator,
        &job("kept upload").file("pad.txt", "text/plain", &padding),
    );
    coordinator.terminate(DEADLINE);
    (worker, collected, queued, data)
}

/// A job store that is missing, zero bytes or holds no tables, beside results and upload
/// segments (a store deleted, truncated, or replaced by a salvage that came out empty), is
/// refused with exit 1 naming the file and what to do, and not one segment byte changes: it
/// was made a new store, and the start-up scrub and upload cleanup deleted every segment. Put
/// back, the store serves its jobs as before. A zero-byte store is refused also without
/// segments, as `check --state-dir` refuses it.
#[test]
fn a_missing_or_empty_store_beside_kept_segments_is_refused_and_changes_nothing() {
    let dir = support::temp_dir();
    let (_worker, collected, queued, data) = a_stopped_pool_with_segments(dir.path());
    let state = dir.path().join("state");
    let kept = segment_contents(&state);
    for folder in ["results/", "uploads/"] {
        assert!(
            kept.keys().any(|k| k.starts_with(folder)),
            "no segment in {folder}: {:?}",
            kept.keys()
        );
    }
    let db = state.join("jobs.db");
    let saved = fs::read(&db).unwrap_or_else(|e| panic!("{e}"));
    let tableless = dir.path().join("tableless.db");
    rusqlite::Connection::open(&tableless)
        .and_then(|c| c.execute_batch("CREATE TABLE t(a); DROP TABLE t;"))
        .unwrap_or_else(|e| panic!("{e}"));
    let tableless = fs::read(&tableless).unwrap_or_else(|e| panic!("{e}"));
    assert!(!tableless.is_empty());
    let cases = [
        ("is missing", None),
        ("is an empty file (zero bytes)", Some(Vec::new())),
        ("holds no tables", Some(tableless)),
    ];
    for (what, contents) in cases {
        for file in ["jobs.db", "jobs.db-wal", "jobs.db-shm"] {
            let _ = fs::remove_file(state.join(file));
        }
        if let Some(bytes) = &contents {
            fs::write(&db, bytes).unwrap_or_else(|e| panic!("{e}"));
        }
        let refused = Coordinator::try_start_in(dir.path(), &FAST)
            .err()
            .unwrap_or_else(|| panic!("a store that {what} started beside segments"));
        assert!(refused.contains("unix_wait_status(256)"), "{refused}");
        for needle in [
            format!("{}: the job store {what}", db.display()),
            "nothing was changed".to_string(),
            "results segments".to_string(),
            "SELECT count(*) FROM jobs".to_string(),
        ] {
            assert!(refused.contains(&needle), "{needle:?} not in: {refused}");
        }
        assert!(segment_contents(&state) == kept, "{what}: segments changed");
        assert_eq!(
            fs::read(&db).ok(),
            contents,
            "{what}: the store file changed"
        );
    }
    fs::write(&db, &saved).unwrap_or_else(|e| panic!("{e}"));
    let restarted = Coordinator::start_in(dir.path(), &FAST);
    let (code, bytes) = get_bytes(&restarted.url(&format!("/outputs/{collected}/data.bin")));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&bytes));
    assert!(
        bytes == data,
        "data.bin differs after the store was put back"
    );
    assert_eq!(job_status(&restarted, &queued)["pool_status"], "queued");
    drop(restarted);

    // Without segments, a zero-byte store is refused too, as the check refuses it.
    let (fresh, _worker, fresh_state) = before_the_first_start();
    fs::write(fresh_state.join("jobs.db"), b"").unwrap_or_else(|e| panic!("{e}"));
    let refused = Coordinator::try_start_in(fresh.path(), &[])
        .err()
        .unwrap_or_else(|| panic!("a zero-byte store started"));
    assert!(
        refused.contains("not a job store") && refused.contains("zero bytes"),
        "{refused}"
    );
    let (code, _, stderr) = support::check_state_dir(&fresh_state);
    assert_eq!(code, Some(1), "{stderr}");
}

/// Three damaged state directories, each told as what it is: one job's record that cannot be
/// read is that record's fault, not the whole store's (its routes said the store fails
/// SQLite's integrity check and advised throwing the job history away); a results segment
/// missing at serve time is named (it was a bare "No such file or directory"); a regular file
/// in the place of `results` or `uploads` is named with what to do (it was "File exists").
#[test]
fn an_unreadable_record_a_missing_segment_and_a_file_for_a_folder_are_named() {
    let dir = support::temp_dir();
    let (_worker, collected, queued, _) = a_stopped_pool_with_segments(dir.path());
    let state = dir.path().join("state");
    let db = state.join("jobs.db");
    let segment = results_home(dir.path(), &collected)
        .1
        .unwrap_or_else(|| panic!("no results segment"));
    rusqlite::Connection::open(&db)
        .and_then(|c| {
            c.execute(
                "UPDATE jobs SET record = '{garbage' WHERE id = ?1",
                [&queued],
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let segment_path = state.join("results").join(&segment);
    fs::remove_file(&segment_path).unwrap_or_else(|e| panic!("{e}"));
    let mut coordinator = Coordinator::start_in(dir.path(), &FAST);
    let (code, body) = get_json(&coordinator.url(&format!("/status/{queued}")));
    assert_eq!(code, 500, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("the record of job {queued} cannot be read"))
            && error.contains("not affected")
            && !error.contains("integrity check")
            && !error.contains("move it"),
        "{error}"
    );
    let (code, body) = get_json(&coordinator.url(&format!("/outputs/{collected}/data.bin")));
    assert_eq!(code, 500, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    let named = segment_path.display().to_string();
    assert!(
        error.contains(&named) && error.contains("missing"),
        "{error}"
    );
    assert!(
        coordinator.wait_for_log(&named, DEADLINE),
        "{}",
        coordinator.logs()
    );
    coordinator.terminate(DEADLINE);

    for folder in ["results", "uploads"] {
        let path = state.join(folder);
        fs::rename(&path, dir.path().join("moved")).unwrap_or_else(|e| panic!("{e}"));
        fs::write(&path, b"x").unwrap_or_else(|e| panic!("{e}"));
        let refused = Coordinator::try_start_in(dir.path(), &FAST)
            .err()
            .unwrap_or_else(|| panic!("started with {folder} a file"));
        assert!(refused.contains("unix_wait_status(256)"), "{refused}");
        assert!(
            refused.contains(&format!("{} is a file, not a folder", path.display()))
                && refused.contains("Move the file out"),
            "{refused}"
        );
        fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        fs::rename(dir.path().join("moved"), &path).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Two coordinators on one state directory would both send its queued jobs: the second is
/// refused at start, before it touches anything, naming the first's process. The lock goes
/// with its holder, even by `kill -9`.
#[test]
fn a_second_coordinator_on_a_state_directory_in_use_is_refused() {
    let dir = support::temp_dir();
    let worker = FakeWorker::start_with(roomy(Duration::from_millis(500)));
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let mut first = Coordinator::start_in(dir.path(), &FAST);
    let ids: Vec<String> = (0..3)
        .map(|i| submit(&first, &job(&format!("once {i}"))))
        .collect();
    let refused = Coordinator::try_start_in(dir.path(), &FAST)
        .err()
        .unwrap_or_default();
    assert!(refused.contains("unix_wait_status(256)"), "{refused}");
    assert!(
        refused.contains(&format!(
            "is in use by another trusted-pool (process {})",
            first.pid()
        )) && refused.contains("The lock is never stale"),
        "{refused}"
    );
    // The directory itself is locked: deleting the lock file by hand lets no second one in.
    std::fs::remove_file(first.state_dir().join("lock")).expect("the lock file removed");
    let refused = Coordinator::try_start_in(dir.path(), &FAST)
        .err()
        .unwrap_or_default();
    assert!(
        refused.contains("unix_wait_status(256)")
            && refused.contains("is in use by another trusted-pool"),
        "a second coordinator started once the lock file was deleted: {refused}"
    );
    for id in &ids {
        let (code, body) = get(&first.url(&format!("/status/{id}")));
        assert_eq!(code, 200, "the first coordinator after the refusal: {body}");
    }
    // A stop, not a kill: a kill while a submit is in flight would leave that job lost.
    let stopped = first.terminate(DEADLINE);
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    let second = Coordinator::start_in(dir.path(), &FAST);
    for id in &ids {
        wait_collected(&second, id, DEADLINE);
    }
    let seen = received_tokens(&[&worker]);
    assert_eq!(seen.len(), ids.len(), "{seen:?}");
    assert!(
        seen.values().all(|&n| n == 1),
        "a job was sent twice: {seen:?}"
    );
}

/// The job store's figures in `/pool`.
fn store_figures(coordinator: &Coordinator) -> Value {
    get_json(&coordinator.url("/pool")).1["store"].clone()
}

/// The error of a submit refused 503 with `Retry-After: 5` (the coordinator is busy or full).
fn busy_error(reply: &support::Reply) -> String {
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("Retry-After"), Some("5"));
    reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Submits `form`, whatever the answer.
fn submit_reply(coordinator: &Coordinator, form: &Form) -> support::Reply {
    send(
        "POST",
        &coordinator.url("/submit"),
        Some((&form.content_type(), &form.body())),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Submits `form` and times the answer.
fn timed_submit(coordinator: &Coordinator, form: &Form) -> (support::Reply, Duration) {
    let started = Instant::now();
    let reply = submit_reply(coordinator, form);
    (reply, started.elapsed())
}

/// A coordinator on a quick worker, with one job that ran to the end (its id).
fn a_pool_with_a_finished_job() -> (Coordinator, FakeWorker, String) {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    let coordinator = Coordinator::start(&[worker.entry(4)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let first = submit(&coordinator, &job("before the reader"));
    wait_collected(&coordinator, &first, DEADLINE);
    (coordinator, worker, first)
}

/// README invites operators to read the job store with `sqlite3`. A session that keeps a read
/// transaction open blocks the WAL's checkpoints: they must not hold the submits behind them
/// (each took 9 s before), and `/pool` must say that the WAL grows. A session holding the
/// write lock makes submits answer 503 with `Retry-After`, drains and pauses of submits 503
/// (applied all the same, and recorded once it lets go), and all work again once it lets go.
#[test]
fn a_sqlite3_session_on_the_job_store_never_stalls_submits_and_its_lock_answers_503() {
    let (coordinator, worker, first) = a_pool_with_a_finished_job();
    let db = coordinator.state_dir().join("jobs.db");
    let open = || rusqlite::Connection::open(&db).unwrap_or_else(|e| panic!("{e}"));

    let reader = open();
    reader
        .execute_batch("BEGIN")
        .unwrap_or_else(|e| panic!("{e}"));
    let rows: i64 = reader
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rows >= 1, "{rows}");
    let mut ids = Vec::new();
    for i in 0..3 {
        // Idle time for the writer to try a checkpoint, which the reader blocks.
        thread::sleep(Duration::from_millis(2500));
        let (reply, took) = timed_submit(&coordinator, &job(&format!("reader {i}")));
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            took < Duration::from_secs(4),
            "a submit waited {took:?} behind a checkpoint"
        );
        ids.push(
            reply.json()["job_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    for id in &ids {
        wait_collected(&coordinator, id, DEADLINE);
    }
    let held = store_figures(&coordinator);
    assert!(held["wal_bytes"].as_u64().unwrap_or(0) > 0, "{held}");
    assert!(
        held["seconds_since_checkpoint"].as_f64().unwrap_or(0.0) >= 5.0,
        "a blocked checkpoint was counted: {held}"
    );
    drop(reader);
    let checkpointed = poll_until(DEADLINE, || {
        let f = store_figures(&coordinator);
        (f["wal_bytes"].as_u64() == Some(0)
            && f["seconds_since_checkpoint"].as_f64().unwrap_or(99.0) < 5.0)
            .then_some(f)
    });
    assert!(checkpointed.is_some(), "{}", store_figures(&coordinator));

    let writer = open();
    writer
        .execute_batch("BEGIN IMMEDIATE")
        .unwrap_or_else(|e| panic!("{e}"));
    let (reply, _) = timed_submit(&coordinator, &job("while locked"));
    let error = busy_error(&reply);
    assert!(
        error.contains("locked by another program") && error.contains("try again"),
        "{error}"
    );
    let failing = store_figures(&coordinator)["failing"].clone();
    assert!(
        failing.as_str().unwrap_or_default().contains("locked"),
        "{failing}"
    );
    let (_, metrics) = get(&coordinator.url("/metrics"));
    assert!(
        metrics.contains("trusted_pool_store_failing 1\n"),
        "{metrics}"
    );
    let (code, ready) = get_json(&coordinator.url("/ready"));
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["error"]
            .as_str()
            .is_some_and(|e| e.contains("the job store cannot commit")),
        "{ready}"
    );
    let (code, body) = post(&drain_url(&coordinator, &worker, "drain"), "", b"");
    assert_eq!(code, 503, "{body}");
    let (code, body) = post(&coordinator.url("/submits/pause"), "", b"");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the change applies now"), "{body}");
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert!(pool["submits_paused"]["since"].is_number(), "{pool}");
    for id in ids.iter().chain([&first]) {
        let (code, body) = get(&coordinator.url(&format!("/status/{id}")));
        assert_eq!(code, 200, "while locked: {body}");
    }
    writer
        .execute_batch("ROLLBACK")
        .unwrap_or_else(|e| panic!("{e}"));
    drop(writer);
    // The drain and the pause that could not be recorded are written once the store can write
    // again.
    let count = |conn: &rusqlite::Connection, table: &str| -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap_or(-1)
    };
    let drains = |conn: &rusqlite::Connection| count(conn, "drains");
    let reader = open();
    let recorded = poll_until(DEADLINE, || {
        (drains(&reader) == 1 && count(&reader, "submits_pause") == 1).then_some(())
    });
    assert!(
        recorded.is_some(),
        "the kept drain or pause was never written"
    );
    let (code, body) = post(&coordinator.url("/submits/resume"), "", b"");
    assert_eq!(code, 200, "{body}");
    assert_eq!(count(&reader, "submits_pause"), 0);
    assert!(
        coordinator.wait_for_log("is recorded in the job store now", DEADLINE),
        "{}",
        coordinator.logs()
    );
    let (code, body) = post(&drain_url(&coordinator, &worker, "undrain"), "", b"");
    assert_eq!(code, 200, "{body}");
    assert_eq!(drains(&reader), 0);
    let after = submit(&coordinator, &job("after the lock"));
    wait_collected(&coordinator, &after, DEADLINE);
    assert!(store_figures(&coordinator)["failing"].is_null());
    let seen = received_tokens(&[&worker]);
    assert!(
        !seen.keys().any(|t| t.contains("while locked")),
        "a refused submit reached the worker: {seen:?}"
    );
    assert_eq!(seen.len(), 5, "{seen:?}");
}

/// Under a `sqlite3` session's write lock, the changes kept from a failed commit are tried
/// again without waiting for the lock: a submit that arrives meanwhile is answered within the
/// documented 5 s (it waited for the retry's 5 s, then its own, before).
#[test]
fn under_another_programs_write_lock_a_submit_is_answered_within_the_lock_wait() {
    let worker = FakeWorker::start();
    worker.stop();
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    let queued = submit(&coordinator, &job("queued"));
    let writer = rusqlite::Connection::open(coordinator.state_dir().join("jobs.db"))
        .unwrap_or_else(|e| panic!("{e}"));
    writer
        .execute_batch("BEGIN IMMEDIATE")
        .unwrap_or_else(|e| panic!("{e}"));
    let (code, body) = post(&coordinator.url(&format!("/cancel/{queued}")), "", b"");
    assert_eq!(code, 503, "{body}");
    assert!(coordinator.wait_for_log("are kept to be written again", DEADLINE));
    // The writer tries the kept cancel again after a second without records.
    thread::sleep(Duration::from_millis(1500));
    let (reply, took) = timed_submit(&coordinator, &job("while locked"));
    assert_eq!(reply.status, 503, "{}", reply.text());
    eprintln!("a submit under the lock was answered in {took:?}");
    assert!(took < Duration::from_secs(7), "{took:?}");
    writer
        .execute_batch("ROLLBACK")
        .unwrap_or_else(|e| panic!("{e}"));
    let written = poll_until(DEADLINE, || {
        store_figures(&coordinator)["failing"]
            .is_null()
            .then_some(())
    });
    assert!(written.is_some(), "{}", store_figures(&coordinator));
    assert_eq!(
        job_status(&coordinator, &queued)["pool_status"],
        "cancelled"
    );
}

/// A connection to the coordinator's job store holding a read transaction open (as a
/// `sqlite3` session would), which blocks the store's checkpoints until it ends.
fn a_reader_holding_the_store(coordinator: &Coordinator) -> rusqlite::Connection {
    let reader = rusqlite::Connection::open(coordinator.state_dir().join("jobs.db"))
        .unwrap_or_else(|e| panic!("{e}"));
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM jobs;")
        .unwrap_or_else(|e| panic!("{e}"));
    reader
}

/// A `sqlite3` session that keeps a read transaction open while jobs keep coming (never a second
/// idle) blocks every checkpoint: the log warns once none completed for a minute (it used to
/// say nothing while the store was busy), and says when the WAL is checkpointed again after
/// the session lets go.
#[test]
fn a_checkpoint_blocked_while_jobs_keep_coming_is_logged_within_about_a_minute() {
    let (coordinator, _worker, _) = a_pool_with_a_finished_job();
    let reader = a_reader_holding_the_store(&coordinator);
    let started = Instant::now();
    let warned = poll_until(Duration::from_secs(150), || {
        let reply = submit_reply(&coordinator, &job("while read"));
        assert_eq!(reply.status, 200, "{}", reply.text());
        thread::sleep(Duration::from_millis(250));
        coordinator
            .logs()
            .contains("could not be checkpointed for")
            .then(|| started.elapsed())
    });
    let (_, pool) = get_json(&coordinator.url("/pool"));
    let warned = warned.unwrap_or_else(|| panic!("no warning: {}", pool["store"]));
    eprintln!(
        "warned after {:.0} s: {}",
        warned.as_secs_f64(),
        pool["store"]
    );
    assert!(warned < Duration::from_secs(90), "{warned:?}");
    reader
        .execute_batch("COMMIT")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(coordinator.wait_for_log("The job store's WAL is checkpointed again", DEADLINE));
}

/// An idle store whose WAL is empty counts as checkpointed: `seconds_since_checkpoint` stays
/// small however long it idles (it used to grow with the idle time). A `sqlite3` session that
/// then holds a read transaction while a job is recorded blocks the checkpoints from then on
/// only: no warning within seconds (after a long idle it used to come within 5 to 9 s, quoting
/// the idle time as the time checkpoints were blocked).
#[test]
fn an_idle_store_counts_as_checkpointed_and_a_reader_after_it_is_not_warned_of_at_once() {
    let (coordinator, _worker, _) = a_pool_with_a_finished_job();
    poll_until(DEADLINE, || {
        (store_figures(&coordinator)["wal_bytes"].as_u64() == Some(0)).then_some(())
    })
    .unwrap_or_else(|| panic!("the WAL never emptied: {}", store_figures(&coordinator)));
    thread::sleep(Duration::from_secs(4));
    let idle = store_figures(&coordinator);
    assert!(
        idle["seconds_since_checkpoint"].as_f64().unwrap_or(99.0) < 2.5,
        "an idle store with an empty WAL counted as not checkpointed: {idle}"
    );
    let reader = a_reader_holding_the_store(&coordinator);
    let started = Instant::now();
    let id = submit(&coordinator, &job("while read after idle"));
    wait_collected(&coordinator, &id, DEADLINE);
    while started.elapsed() < Duration::from_secs(10) {
        assert!(
            !coordinator.logs().contains("could not be checkpointed for"),
            "warned {:.0} s after the reader began: {}",
            started.elapsed().as_secs_f64(),
            coordinator.logs()
        );
        thread::sleep(Duration::from_millis(250));
    }
    let held = store_figures(&coordinator);
    assert!(held["wal_bytes"].as_u64().unwrap_or(0) > 0, "{held}");
    drop(reader);
}

/// A store another program holds locked at start (a new one, which needs its schema written)
/// is refused with exit 1 and a message that says so. It is not called unreadable (that
/// message tells the operator to move the job history away), and it starts once the lock is
/// let go.
#[test]
fn a_store_locked_by_another_program_at_start_is_refused_and_not_called_unreadable() {
    let (dir, _worker, state) = before_the_first_start();
    let other = rusqlite::Connection::open(state.join("jobs.db")).unwrap_or_else(|e| panic!("{e}"));
    other
        .execute_batch("PRAGMA journal_mode = WAL; BEGIN IMMEDIATE; CREATE TABLE notes (x);")
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = Coordinator::try_start_in(dir.path(), &[])
        .err()
        .unwrap_or_default();
    assert!(refused.contains("unix_wait_status(256)"), "{refused}");
    assert!(
        refused.contains("locked by another program") && refused.contains("nothing was changed"),
        "{refused}"
    );
    assert!(!refused.contains("not a job store"), "{refused}");
    other
        .execute_batch("ROLLBACK")
        .unwrap_or_else(|e| panic!("{e}"));
    drop(other);
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    let id = submit(&coordinator, &job("after the lock"));
    wait_collected(&coordinator, &id, DEADLINE);
}

/// A store of schema version 1 (no `drains`, `submits_pause` or `wall_steps` table, no listing
/// indexes, `seq` AUTOINCREMENT, no `worker_id` column) is upgraded in place at start: its jobs stay (listed
/// by their worker), drains and pauses are recorded from then on, and new jobs follow the old
/// ones in `seq` without `sqlite_sequence`.
#[test]
fn a_version_1_store_is_upgraded_and_keeps_its_jobs() {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    // Results in a segment, as version 1 kept them.
    let mut coordinator = Coordinator::start(
        &[worker.entry(2)],
        &[&FAST[..], &["--row-results-max", "0"]].concat(),
    );
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &job("before the upgrade"));
    wait_collected(&coordinator, &id, DEADLINE);
    let status = coordinator.terminate(DEADLINE);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let dir = coordinator.dir().to_path_buf();
    let db = dir.join("state").join("jobs.db");
    let version = |conn: &rusqlite::Connection| {
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let definition = |conn: &rusqlite::Connection| -> String {
        conn.query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
            [],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    {
        let conn = rusqlite::Connection::open(&db).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(version(&conn), 10);
        // A new store is made at version 10 too.
        assert!(!definition(&conn).contains("AUTOINCREMENT"));
        conn.execute_batch(
            "DROP TABLE drains; DROP TABLE submits_pause; DROP TABLE wall_steps; \
             DROP INDEX jobs_settled_status; \
             DROP INDEX jobs_submit_key; ALTER TABLE jobs DROP COLUMN submit_key; \
             ALTER TABLE jobs DROP COLUMN worker_id; DROP INDEX jobs_owner_settled; \
             CREATE INDEX jobs_owner ON jobs(owner) WHERE owner IS NOT NULL; \
             DROP INDEX jobs_unsettled_submitted; ALTER TABLE jobs DROP COLUMN results; \
             CREATE INDEX jobs_unsettled ON jobs(seq) WHERE finished_at IS NULL;",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // Version 1's `seq` was AUTOINCREMENT, its largest value kept in `sqlite_sequence`.
        let cookie: i64 = conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"));
        conn.execute_batch(&format!(
            "PRAGMA writable_schema = ON; \
             UPDATE sqlite_master SET sql = replace(sql, 'seq INTEGER PRIMARY KEY,', \
             'seq INTEGER PRIMARY KEY AUTOINCREMENT,') WHERE type = 'table' AND name = 'jobs'; \
             PRAGMA schema_version = {}; PRAGMA writable_schema = OFF; \
             INSERT INTO sqlite_sequence (name, seq) SELECT 'jobs', max(seq) FROM jobs; \
             PRAGMA user_version = 1;",
            cookie + 1
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(definition(&conn).contains("seq INTEGER PRIMARY KEY AUTOINCREMENT,"));
        // Stores made before freed pages were given back kept them (no auto_vacuum).
        conn.execute_batch("PRAGMA auto_vacuum = NONE; VACUUM;")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let upgraded = Coordinator::start_in(&dir, &FAST);
    for step in [
        "version 2",
        "version 3",
        "version 4",
        "version 5",
        "version 6",
        "version 7",
        "version 8",
        "version 9",
        "version 10",
    ] {
        assert!(
            upgraded
                .logs()
                .contains(&format!("schema upgraded to {step}")),
            "{}",
            upgraded.logs()
        );
    }
    let status = job_status(&upgraded, &id);
    assert_eq!(status["pool_status"], "completed", "{status}");
    assert_outputs(&upgraded, &id, &status);
    let after = submit(&upgraded, &job("after the upgrade"));
    wait_collected(&upgraded, &after, DEADLINE);
    // Version 9 filled in each job's worker from its record: both are listed by worker.
    let by_worker = support::get_json(&upgraded.url(&format!(
        "/jobs?worker={}",
        worker.worker_id().replace('+', "%2B")
    )));
    let listed: Vec<&str> = by_worker.1["jobs"]
        .as_array()
        .map(|jobs| jobs.iter().filter_map(|j| j["job_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, [after.as_str(), id.as_str()], "{}", by_worker.1);
    // Version 8's submit keys work on the upgraded store: a repeat answers the same job.
    let keyed = || {
        let form = job("keyed after the upgrade");
        let reply = support::send_with(
            "POST",
            &upgraded.url("/submit"),
            &[("Idempotency-Key", "upgraded-1")],
            Some((&form.content_type(), &form.body())),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["job_id"].clone()
    };
    assert_eq!(keyed(), keyed());
    let worker_id = worker.worker_id().replace('+', "%2B").replace('/', "%2F");
    let (code, body) = support::post(
        &upgraded.url(&format!("/workers/{worker_id}/drain")),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = support::post(&upgraded.url("/submits/pause"), "text/plain", b"");
    assert_eq!(code, 200, "{body}");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(version(&conn), 10);
    let auto_vacuum: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(auto_vacuum, 2, "freed pages are given back now");
    assert!(
        upgraded.logs().contains("the job store was rewritten once"),
        "{}",
        upgraded.logs()
    );
    let upgraded_definition = definition(&conn);
    assert!(
        !upgraded_definition.contains("AUTOINCREMENT"),
        "{upgraded_definition}"
    );
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(integrity, "ok");
    // The rewrite that gives freed pages back drops sqlite_sequence once no table needs it.
    let has_sequence: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'sqlite_sequence'",
            [],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let sequence: i64 = if has_sequence {
        conn.query_row(
            "SELECT count(*) FROM sqlite_sequence WHERE name = 'jobs'",
            [],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    } else {
        0
    };
    assert_eq!(
        sequence, 0,
        "a job inserted after the upgrade wrote sqlite_sequence"
    );
    let seq = |id: &str| -> i64 {
        conn.query_row("SELECT seq FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{id}: {e}"))
    };
    assert!(seq(&after) > seq(&id), "submission order lost");
    let indexes: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'jobs_%' ORDER BY name",
        )
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        indexes,
        [
            "jobs_finished",
            "jobs_owner_settled",
            "jobs_results_segment",
            "jobs_settled_status",
            "jobs_submit_key",
            "jobs_unsettled_submitted"
        ]
    );
    let drained: i64 = conn
        .query_row("SELECT count(*) FROM drains", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(drained, 1);
    let paused: i64 = conn
        .query_row("SELECT count(*) FROM submits_pause", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(paused, 1);
}

/// Submits `form` to the `/submit` URL `url` from a client thread; returns the job id.
fn submit_to(url: &str, form: &Form) -> String {
    let reply = send("POST", url, Some((&form.content_type(), &form.body())))
        .unwrap_or_else(|e| panic!("submit failed: {e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Submits `n` jobs, 4 at a time, and waits until the pool counts `total` completed jobs.
fn run_jobs(coordinator: &Coordinator, n: usize, total: u64, tag: &str) -> Vec<String> {
    run_jobs_paced(coordinator, n, total, tag, false)
}

/// [`run_jobs`]; with `one_at_a_time` each client waits for its job's end (`/status/{id}?wait=`)
/// before its next submit, so the pool never holds more than one job per client.
fn run_jobs_paced(
    coordinator: &Coordinator,
    n: usize,
    total: u64,
    tag: &str,
    one_at_a_time: bool,
) -> Vec<String> {
    let url = coordinator.url("/submit");
    let base = coordinator.url("");
    let ids = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (url, base) = (url.clone(), base.clone());
            let ids = Arc::clone(&ids);
            let tag = tag.to_string();
            thread::spawn(move || {
                for i in (c..n).step_by(4) {
                    let id = submit_to(&url, &job(&format!("{tag} {i}")));
                    if one_at_a_time {
                        let status = format!("{base}/status/{id}?wait=30");
                        poll_until(Duration::from_secs(120), || {
                            let (_, view) = get_json(&status);
                            (view["pool_status"] == "completed").then_some(())
                        })
                        .unwrap_or_else(|| panic!("job {id} did not complete"));
                    }
                    ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap_or_else(|_| panic!("a client failed"));
    }
    poll_until(Duration::from_secs(120), || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        let done = pool["jobs_by_status"]["completed"].as_u64().unwrap_or(0)
            + pool["store"]["retention"]["forgotten_jobs"]
                .as_u64()
                .unwrap_or(0);
        (done == total && pool["jobs_by_status"]["dispatched"] == 0 && pool["queued_jobs"] == 0)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{total} jobs did not complete"));
    let ids = ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ids
}

fn files_in(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |entries| entries.count())
}

/// A burst of queued jobs whose 60 KiB uploads wait in their rows grows the job store; once
/// they are gone (cancelled here, dispatched alike) the idle store gives the space back to the
/// filesystem a step at a time, and `/pool` counts what is still free.
#[test]
fn the_space_of_a_burst_of_queued_uploads_goes_back_to_the_filesystem() {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    let coordinator = Coordinator::start(&[worker.entry(1)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let (code, body) = post(&drain_url(&coordinator, &worker, "drain"), "", b"");
    assert_eq!(code, 200, "{body}");
    let submitters: Vec<_> = (0..4u32)
        .map(|c| {
            let url = coordinator.url("/submit");
            thread::spawn(move || {
                (0..40u32)
                    .map(|n| {
                        let padding = vec![(c * 40 + n) as u8; 60 << 10];
                        let form = job(&format!("burst {c} {n}")).file(
                            "data.bin",
                            "application/octet-stream",
                            &padding,
                        );
                        submit_to(&url, &form)
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let ids: Vec<String> = submitters
        .into_iter()
        .flat_map(|s| s.join().unwrap_or_else(|_| panic!("a submitter failed")))
        .collect();
    let db = coordinator.state_dir().join("jobs.db");
    let store_bytes = || {
        let size = |path: &Path| fs::metadata(path).map_or(0, |m| m.len());
        size(&db) + size(&coordinator.state_dir().join("jobs.db-wal"))
    };
    let peak = store_bytes();
    assert!(peak > 9 << 20, "the burst took {peak} bytes");
    for id in &ids {
        let (code, body) = post(&coordinator.url(&format!("/cancel/{id}")), "", b"");
        assert_eq!(code, 200, "{body}");
    }
    poll_until(Duration::from_secs(120), || {
        let free = store_figures(&coordinator)["free_bytes"].as_u64();
        (store_bytes() < 2 << 20 && free.is_some_and(|f| f < 1 << 20)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the store still takes {} bytes ({} after the burst): {}",
            store_bytes(),
            peak,
            store_figures(&coordinator)
        )
    });
}

#[test]
fn retention_forgets_finished_jobs_by_count_and_by_age_and_deletes_their_results() {
    let workers = [
        FakeWorker::start_with(roomy(Duration::ZERO)),
        FakeWorker::start_with(roomy(Duration::ZERO)),
    ];
    let dir = support::temp_dir();
    // One job per worker: at most two results segments fill at once, so 300 jobs close at least
    // three (64 jobs each) and the last 20 jobs can refer to at most two of them. With more
    // collections at once, every segment may still hold one of the 20 retained jobs.
    write_workers_json(dir.path(), &[workers[0].entry(1), workers[1].entry(1)]);
    let args = [
        "--row-results-max",
        "0",
        "--retain-jobs",
        "20",
        "--track-interval",
        "0.02",
        "--health-interval",
        "1",
    ];
    let coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&workers[0], &workers[1]], DEADLINE);
    let ids = run_jobs(&coordinator, 300, 300, "retained");
    let (_, pool) = poll_until(DEADLINE, || {
        let (code, pool) = get_json(&coordinator.url("/pool"));
        (pool["store"]["rows"].as_u64() <= Some(20)).then_some((code, pool))
    })
    .unwrap_or_else(|| panic!("retention by count did not run"));
    assert!(
        pool["store"]["retention"]["forgotten_jobs"].as_u64() >= Some(280),
        "{pool}"
    );
    let (_, metrics) = support::get_bytes(&coordinator.url("/metrics"));
    let counted = String::from_utf8_lossy(&metrics).lines().find_map(|l| {
        l.strip_prefix("trusted_pool_jobs_forgotten_total ")?
            .parse::<u64>()
            .ok()
    });
    assert!(
        counted >= pool["store"]["retention"]["forgotten_jobs"].as_u64(),
        "{counted:?}"
    );
    assert!(
        pool["store"]["retention"]["results_segments_deleted"].as_u64() >= Some(1),
        "{pool}"
    );
    // Every results segment left is one a retained job refers to.
    let results = dir.path().join("state").join("results");
    let referenced = stored_segments(dir.path());
    let left: BTreeSet<String> = fs::read_dir(&results)
        .map(|entries| {
            entries
                .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_subset(&referenced),
        "{left:?} left, {referenced:?} referenced"
    );
    let forgotten = ids
        .iter()
        .find(|id| get(&coordinator.url(&format!("/status/{id}"))).0 == 404)
        .unwrap_or_else(|| panic!("no job was forgotten"));
    let (_, body) = get(&coordinator.url(&format!("/status/{forgotten}")));
    assert!(body.contains("expired"), "{body}");
    let kept = ids
        .iter()
        .filter(|id| get(&coordinator.url(&format!("/status/{id}"))).0 == 200)
        .count();
    assert!((1..=20).contains(&kept), "{kept} jobs kept");
    drop(coordinator);
    // By age: a restart with --retain-for 1 forgets every finished job within seconds.
    let coordinator = Coordinator::start_in(dir.path(), &["--retain-for", "1"]);
    poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        (pool["store"]["rows"] == 0 && files_in(&results) == 0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "retention by age did not forget every job and results segment ({} files left)",
            files_in(&results)
        )
    });
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["jobs_by_status"]["completed"], 0, "{pool}");
}

/// A job whose collection was held up is the newest finished job for `--retain-jobs` once it
/// is collected, not the oldest: it was forgotten as soon as it settled, as its settle time was
/// its end on the worker, before the jobs that settled while it waited.
#[test]
fn a_job_collected_late_is_kept_by_retention_over_the_jobs_that_settled_meanwhile() {
    let dir = support::temp_dir();
    let slow = FakeWorker::start_with(|k| {
        roomy(Duration::ZERO)(k);
        k.download_delay = Duration::from_secs(4);
    });
    let quick = FakeWorker::start_with(roomy(Duration::ZERO));
    write_workers_json(dir.path(), &[slow.entry(4), quick.entry(4)]);
    let mut args = FAST.to_vec();
    args.extend(["--retain-jobs", "1"]);
    let coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&slow, &quick], DEADLINE);
    let drain = |worker: &FakeWorker, action: &str| {
        let reply = send("POST", &drain_url(&coordinator, worker, action), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.status, 200, "{}", reply.text());
    };
    drain(&quick, "drain");
    let late = submit(&coordinator, &job("collected late"));
    wait_on_worker(&coordinator, &late);
    drain(&slow, "drain");
    drain(&quick, "undrain");
    let meanwhile: Vec<String> = (0..2)
        .map(|n| {
            let id = submit(&coordinator, &job(&format!("settled meanwhile {n}")));
            wait_collected(&coordinator, &id, DEADLINE);
            id
        })
        .collect();
    let status = job_status(&coordinator, &late);
    assert_eq!(
        status["results"]["collected"], false,
        "the late job was collected before the others settled: {status}"
    );
    let status = wait_collected(&coordinator, &late, DEADLINE);
    let db = dir.path().join("state").join("jobs.db");
    let one = BTreeMap::from([("completed".to_string(), 1)]);
    poll_until(DEADLINE, || (stored_statuses(&db) == one).then_some(()))
        .unwrap_or_else(|| panic!("the store holds {:?}", stored_statuses(&db)));
    assert_eq!(
        get(&coordinator.url(&format!("/status/{late}"))).0,
        200,
        "the job collected last was forgotten"
    );
    assert_outputs(&coordinator, &late, &status);
    for id in &meanwhile {
        assert_eq!(get(&coordinator.url(&format!("/status/{id}"))).0, 404);
    }
}

/// A settled job's `/status` is answered from memory once read (`/pool`'s
/// `settled_views_kept`), and that answer goes with the job when retention forgets it: the
/// id answers 404 again, never a kept 200.
#[test]
fn a_kept_status_answer_goes_when_retention_forgets_its_job() {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    let dir = support::temp_dir();
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let args = ["--retain-jobs", "3", "--track-interval", "0.02"];
    let coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let first = run_jobs(&coordinator, 1, 1, "kept").pop();
    let first = first.unwrap_or_else(|| panic!("no job ran"));
    let status = coordinator.url(&format!("/status/{first}"));
    // The job leaves the table once its last record committed; its next reads come from the
    // store, then from memory.
    let kept = poll_until(DEADLINE, || {
        let (code, view) = get_json(&status);
        assert_eq!(code, 200, "{view}");
        let (_, pool) = get_json(&coordinator.url("/pool"));
        (pool["store"]["settled_views_kept"].as_u64() >= Some(1)).then_some(view)
    })
    .unwrap_or_else(|| panic!("the answer of a settled job was not kept"));
    assert_eq!(kept["pool_status"], "completed", "{kept}");
    let (code, again) = get_json(&status);
    assert_eq!((code, &again), (200, &kept));
    run_jobs(&coordinator, 8, 9, "after");
    let (code, body) = poll_until(DEADLINE, || {
        let (code, body) = get(&status);
        (code == 404).then_some((code, body))
    })
    .unwrap_or_else(|| panic!("job {first} is still answered after retention forgot it"));
    assert_eq!(code, 404);
    assert!(body.contains("expired"), "{body}");
}

/// Two outputs, each larger than what the sockets between the coordinator and a client can
/// buffer: a download of both stalls inside the first while its client does not read.
fn two_large_outputs() -> Vec<(&'static str, Vec<u8>)> {
    [("a.bin", 251), ("b.bin", 241)]
        .into_iter()
        .map(|(name, modulus)| (name, (0..12 << 20).map(|i| (i % modulus) as u8).collect()))
        .collect()
}

/// A job that uploads `outputs` and declares them its outputs (the fake worker gives them back).
fn large_results_job(outputs: &[(&'static str, Vec<u8>)]) -> Form {
    outputs
        .iter()
        .fold(job("large results"), |form, (name, bytes)| {
            form.file(name, "application/octet-stream", bytes)
        })
        .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#)
}

/// A coordinator whose one job's archive download has begun, its body not read yet.
struct StalledDownload {
    coordinator: Coordinator,
    _worker: FakeWorker,
    id: String,
    download: ureq::Response,
    /// The job's outputs ([`two_large_outputs`]), to check the download against.
    outputs: Vec<(&'static str, Vec<u8>)>,
}

/// Runs a job with [`two_large_outputs`] on a coordinator started with `args` (its results in a
/// segment), then begins `GET /download/{id}` of it without reading the body.
fn a_stalled_download(args: &[&str]) -> StalledDownload {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    let args = [
        &["--row-results-max", "0", "--track-interval", "0.02"],
        args,
    ]
    .concat();
    let coordinator = Coordinator::start(&[worker.entry(1)], &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let outputs = two_large_outputs();
    let id = submit(&coordinator, &large_results_job(&outputs));
    wait_collected(&coordinator, &id, DEADLINE);
    let download = begin_download(&coordinator, &format!("/download/{id}"));
    StalledDownload {
        coordinator,
        _worker: worker,
        id,
        download,
        outputs,
    }
}

/// `GET path`, its body not read yet.
fn begin_download(coordinator: &Coordinator, path: &str) -> ureq::Response {
    let agent = ureq::AgentBuilder::new().timeout_read(DEADLINE).build();
    agent
        .get(&coordinator.url(path))
        .call()
        .unwrap_or_else(|e| panic!("the download of {path} did not start: {e}"))
}

/// A download under way keeps its results when retention forgets its job meanwhile: the
/// archive's entries come from the results segment opened when it began. A client that
/// reads slowly gets every byte, though the job and its segment are gone before it ends.
#[test]
fn a_download_under_way_survives_retention_forgetting_its_job() {
    let StalledDownload {
        coordinator,
        _worker,
        id,
        download,
        outputs,
    } = a_stalled_download(&["--retain-jobs", "1"]);
    // 64 more jobs close the results segment that the large job's results are in, and
    // retention forgets every job but the last.
    run_jobs(&coordinator, 70, 71, "after");
    let results = coordinator.state_dir().join("results");
    poll_until(DEADLINE, || {
        let (code, _) = get(&coordinator.url(&format!("/status/{id}")));
        (code == 404 && files_in(&results) == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("retention did not forget job {id} and delete its results"));
    let length = download.header("Content-Length").map(str::to_string);
    let mut archive = Vec::new();
    if let Err(e) = download.into_reader().read_to_end(&mut archive) {
        panic!("the download broke off after {} bytes: {e}", archive.len());
    }
    assert_eq!(length, Some(archive.len().to_string()), "its exact length");
    let files = support::untar_gz(&archive);
    for (name, bytes) in &outputs {
        assert!(
            files.get(*name) == Some(bytes),
            "{name} differs in the archive"
        );
    }
}

/// A download whose results cannot be read to the end (the segment lost its tail under it)
/// closes its connection at once: its client sees a cut body now (shorter than its
/// `Content-Length`), not after waiting out `--client-timeout` for bytes that never come, and
/// the log says which answer broke off. Both the archive and a single output are checked.
#[test]
fn a_download_that_breaks_off_closes_its_connection_at_once() {
    let StalledDownload {
        coordinator,
        _worker,
        id,
        download: archive,
        ..
    } = a_stalled_download(&["--client-timeout", "600"]);
    let single = begin_download(&coordinator, &format!("/outputs/{id}/b.bin"));
    let results = coordinator.state_dir().join("results");
    let segments: Vec<_> = fs::read_dir(&results)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", results.display()))
        .filter_map(Result::ok)
        .collect();
    assert_eq!(segments.len(), 1, "one results segment");
    fs::OpenOptions::new()
        .write(true)
        .open(segments[0].path())
        .and_then(|segment| segment.set_len(1 << 20))
        .unwrap_or_else(|e| panic!("cannot cut the results segment: {e}"));
    for (path, download) in [
        (format!("/download/{id}"), archive),
        (format!("/outputs/{id}/b.bin"), single),
    ] {
        let length: Option<usize> = download
            .header("Content-Length")
            .and_then(|l| l.parse().ok());
        assert!(
            length >= Some(12 << 20),
            "{path}: Content-Length {length:?}"
        );
        let mut body = Vec::new();
        // The agent's read timeout (60 s) is far shorter than the coordinator's client timeout.
        let read = download.into_reader().read_to_end(&mut body);
        let e = read
            .err()
            .unwrap_or_else(|| panic!("{path}: a cut body of {} bytes read as whole", body.len()));
        assert!(
            !matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
            "{path}: the cut download was left open: {e}"
        );
        assert!(
            Some(body.len()) < length,
            "{path}: {} bytes came",
            body.len()
        );
        assert!(
            coordinator.wait_for_log(&format!("GET {path} broke off part-way"), DEADLINE),
            "the log does not say that {path} broke off"
        );
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The short version of the 50,000-job run (bench scenario 9 has the long one): four clients,
/// each waiting for its job's end before its next submit (a backlog would be measured as
/// history otherwise), with `--retain-jobs 200`; anonymous RSS (`RssAnon`: the binary's own
/// pages, paged in as more of its code runs, are left out) and the state directory after 4,500
/// jobs stay within 10% of the figures after the first 1,500 (`MALLOC_ARENA_MAX` is passed on
/// to the coordinator, to compare allocator settings; see `src/serve/allocator.rs` for the
/// ones it runs with). Both are taken at comparable moments: the pool drained, retention swept
/// down to its limit, the idle store truncated its WAL to zero bytes and gave back its caches,
/// and no dispatch, stream, upload or tracker thread left (idle ones end after 10 s, unmapping
/// their stacks; measured while they live, RSS moved with how many the last burst happened to
/// need).
#[test]
fn memory_and_disk_stay_flat_over_a_run_of_fast_jobs() {
    let workers = [
        FakeWorker::start_with(roomy(Duration::ZERO)),
        FakeWorker::start_with(roomy(Duration::ZERO)),
    ];
    let dir = support::temp_dir();
    write_workers_json(dir.path(), &[workers[0].entry(4), workers[1].entry(4)]);
    let args = ["--retain-jobs", "200", "--track-interval", "0.02"];
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k == "MALLOC_ARENA_MAX")
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let coordinator =
        Coordinator::try_start_in_env(dir.path(), &args, &env).unwrap_or_else(|e| panic!("{e}"));
    wait_healthy(&coordinator, &[&workers[0], &workers[1]], DEADLINE);
    let state = dir.path().join("state");
    let settle = || {
        poll_until(DEADLINE, || {
            let (_, pool) = get_json(&coordinator.url("/pool"));
            let wal = fs::metadata(state.join("jobs.db-wal")).map_or(0, |m| m.len());
            (pool["store"]["rows"].as_u64() <= Some(200)
                && wal == 0
                && busy_threads(&coordinator) == 0)
                .then_some(())
        })
        .unwrap_or_else(|| panic!("the pool did not settle"));
        (
            coordinator.status_number("RssAnon").unwrap_or(0),
            dir_bytes(&state),
        )
    };
    run_jobs_paced(&coordinator, 1500, 1500, "flat a", true);
    let (rss_first, disk_first) = settle();
    run_jobs_paced(&coordinator, 3000, 4500, "flat b", true);
    let (rss_last, disk_last) = settle();
    eprintln!("RSS {rss_first} -> {rss_last} KiB, state dir {disk_first} -> {disk_last} bytes");
    assert!(
        rss_last as f64 <= rss_first as f64 * 1.1,
        "RSS grew: {rss_first} -> {rss_last} KiB"
    );
    assert!(
        disk_last as f64 <= disk_first as f64 * 1.1,
        "state dir grew: {disk_first} -> {disk_last} bytes"
    );
}

/// Threads of the coordinator that come and go with the load: dispatch, stream, upload and
/// tracker threads.
fn busy_threads(coordinator: &Coordinator) -> usize {
    coordinator.thread_names().map_or(0, |names| {
        names
            .iter()
            .filter(|name| {
                ["dispatch", "stream", "upload"].contains(&name.as_str())
                    || name.starts_with("tracker")
            })
            .count()
    })
}

/// 2,000 queued jobs whose small uploads the job store holds (a first run with a large
/// `--upload-memory-bytes`) come back after `kill -9` within the restart's 1 MiB: the rest wait
/// in their rows (read one at a time at the restart, never all of them in memory), and are read
/// from there when dispatched.
#[test]
fn recovered_uploads_stay_within_the_upload_memory_limit() {
    const JOBS: usize = 2000;
    const PAD: usize = 12 * 1024;
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    worker.stop();
    let dir = support::temp_dir();
    write_workers_json(dir.path(), &[worker.entry(16)]);
    let mut first = Coordinator::start_in(dir.path(), &["--upload-memory-bytes", "256000000"]);
    let url = first.url("/submit");
    let submitters: Vec<_> = (0..4)
        .map(|c| {
            let url = url.clone();
            thread::spawn(move || {
                for i in (c..JOBS).step_by(4) {
                    let token = format!("recovered upload {i}");
                    let padding = vec![b'#'; PAD];
                    let form = job(&token).file("pad.txt", "text/plain", &padding);
                    let reply = send("POST", &url, Some((&form.content_type(), &form.body())))
                        .unwrap_or_else(|e| panic!("submit failed: {e}"));
                    assert_eq!(reply.status, 200, "{}", reply.text());
                }
            })
        })
        .collect();
    for submitter in submitters {
        submitter
            .join()
            .unwrap_or_else(|_| panic!("a submitter failed"));
    }
    let (_, pool) = get_json(&first.url("/pool"));
    assert_eq!(pool["spool"]["uploads_in_memory"], JOBS, "{pool}");
    let held_mib = pool["spool"]["upload_memory_bytes"].as_u64().unwrap_or(0) >> 20;
    let rss_first = first.status_number("VmRSS").unwrap_or(0);
    first.kill();
    let args = [FAST.as_slice(), &["--upload-memory-bytes", "1048576"]].concat();
    let restarted = Coordinator::start_in(dir.path(), &args);
    let (peak, rss) = (
        restarted.status_number("VmHWM").unwrap_or(0),
        restarted.status_number("VmRSS").unwrap_or(0),
    );
    let (_, pool) = get_json(&restarted.url("/pool"));
    eprintln!(
        "{JOBS} queued uploads ({held_mib} MiB held before the kill, RSS {rss_first} KiB) recovered: peak RSS {peak} KiB, RSS {rss} KiB; spool {}",
        pool["spool"]
    );
    assert_eq!(pool["queued_jobs"], JOBS, "{pool}");
    let memory = pool["spool"]["upload_memory_bytes"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(memory <= 1024 * 1024, "{pool}");
    assert_eq!(
        pool["spool"]["uploads_in_memory"].as_u64().unwrap_or(0)
            + pool["spool"]["uploads_on_disk"].as_u64().unwrap_or(0),
        JOBS as u64,
        "{pool}"
    );
    // The first run held about 24 MiB of uploads: the restart's peak stays well below its RSS
    // (reading them all back would bring it to about the same).
    assert!(
        peak + 12 * 1024 < rss_first,
        "peak RSS {peak} KiB at recovery, {rss_first} KiB before: the uploads were read into memory"
    );
    // The uploads are intact, those held and those read from their rows: the first 300 jobs (in queue
    // order, so both kinds) reach the worker whole, once each, and complete.
    worker.restart();
    poll_until(DEADLINE, || {
        let (_, pool) = get_json(&restarted.url("/pool"));
        (pool["jobs_by_status"]["completed"].as_u64() >= Some(300)).then_some(())
    })
    .unwrap_or_else(|| panic!("the recovered jobs did not complete"));
    for received in worker.recording().jobs {
        assert_eq!(received.files.len(), 2, "{received:?}");
        let padding = &received.files[1].bytes;
        assert!(
            padding.len() == PAD && padding.iter().all(|b| *b == b'#'),
            "an upload came back damaged"
        );
    }
    let seen = received_tokens(&[&worker]);
    assert!(seen
        .iter()
        .filter(|(t, _)| t.starts_with("print("))
        .all(|(_, n)| *n == 1));
}

#[test]
fn a_full_queue_answers_503_with_retry_after_before_reading_and_keeps_nothing() {
    let worker = FakeWorker::start();
    worker.stop();
    let args = ["--max-queued-jobs", "3", "--upload-memory-bytes", "0"];
    let coordinator = Coordinator::start(&[worker.entry(1)], &args);
    for i in 0..3 {
        submit(&coordinator, &job(&format!("queued {i}")));
    }
    let (_, before) = get_json(&coordinator.url("/pool"));
    let uploads = coordinator.state_dir().join("uploads");
    let files_before = files_in(&uploads);
    let reply = submit_reply(&coordinator, &job("one too many"));
    assert!(busy_error(&reply).contains("queue is full"));
    let (_, after) = get_json(&coordinator.url("/pool"));
    assert_eq!(after["spool"], before["spool"], "the spool changed");
    assert_eq!(
        after["store"]["rows"], before["store"]["rows"],
        "a row was written"
    );
    assert_eq!(after["queued_jobs"], 3);
    assert_eq!(files_in(&uploads), files_before);
}

/// Submits arriving together cannot overshoot `--max-queued-jobs`: the limit counts the
/// submits being recorded, not only the jobs already queued (40 at once against a limit of 5
/// queued 8 and 12 before).
#[test]
fn concurrent_submits_do_not_overshoot_the_queue_limit() {
    let worker = FakeWorker::start();
    worker.stop();
    let coordinator = Coordinator::start(&[worker.entry(1)], &["--max-queued-jobs", "5"]);
    let codes: Vec<u16> = thread::scope(|scope| {
        let submits: Vec<_> = (0..40)
            .map(|i| {
                let coordinator = &coordinator;
                scope.spawn(move || submit_reply(coordinator, &job(&format!("racing {i}"))).status)
            })
            .collect();
        submits
            .into_iter()
            .map(|s| s.join().unwrap_or_default())
            .collect()
    });
    let accepted = codes.iter().filter(|c| **c == 200).count();
    assert_eq!(accepted, 5, "{codes:?}");
    assert!(codes.iter().all(|c| [200, 503].contains(c)), "{codes:?}");
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["queued_jobs"], 5, "{pool}");
}

/// A job of `files` files named with `name_bytes` bytes each (and its `main.py`).
fn job_with_long_names(token: &str, files: usize, name_bytes: usize) -> Form {
    (0..files).fold(job(token), |form, i| {
        let name = format!("{i:04}{}", "n".repeat(name_bytes - 4));
        form.file(&name, "application/octet-stream", b"x")
    })
}

/// The file names, content types and labels the jobs not yet ended hold in memory are bounded
/// (`--max-names-bytes`): a job that does not fit is refused 503 with `Retry-After`, nothing
/// kept; one that could never fit is 413; ended jobs give their room back, and jobs recovered
/// at a restart hold theirs (a full coordinator refuses before it reads a body).
#[test]
fn the_names_jobs_hold_in_memory_are_bounded() {
    let worker = FakeWorker::start();
    worker.stop();
    let args = ["--max-names-bytes", "20000", "--upload-memory-bytes", "0"];
    let mut coordinator = Coordinator::start(&[worker.entry(1)], &args);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            submit(
                &coordinator,
                &job_with_long_names(&format!("fits {i}"), 20, 200),
            )
        })
        .collect();
    let (_, before) = get_json(&coordinator.url("/pool"));
    let held = before["queue"]["names_bytes"].as_u64().unwrap_or_default();
    assert!((15_000..20_000).contains(&held), "{before}");
    assert_eq!(before["queue"]["max_names_bytes"], 20000);
    let uploads = coordinator.state_dir().join("uploads");
    let files_before = files_in(&uploads);
    let reply = submit_reply(&coordinator, &job_with_long_names("no room", 20, 200));
    let error = busy_error(&reply);
    assert!(
        error.contains(&format!("beside the {held} bytes"))
            && error.contains("--max-names-bytes 20000"),
        "{error}"
    );
    let reply = submit_reply(&coordinator, &job_with_long_names("never fits", 80, 250));
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(
        reply.text().contains("more than --max-names-bytes 20000"),
        "{}",
        reply.text()
    );
    let (_, after) = get_json(&coordinator.url("/pool"));
    assert_eq!(after["spool"], before["spool"], "the spool changed");
    assert_eq!(
        after["store"]["rows"], before["store"]["rows"],
        "a row was written"
    );
    assert_eq!(after["queue"]["names_bytes"], held);
    assert_eq!(files_in(&uploads), files_before);
    assert!(
        !coordinator.logs().contains("Submit failed"),
        "{}",
        coordinator.logs()
    );
    // A small job still fits; a cancelled one gives its room back.
    submit(&coordinator, &job("small"));
    let (code, body) = post(&coordinator.url(&format!("/cancel/{}", ids[0])), "", b"");
    assert_eq!(code, 200, "{body}");
    let freed = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        let now = pool["queue"]["names_bytes"].as_u64().unwrap_or(u64::MAX);
        (now < held).then_some(now)
    });
    assert!(freed.is_some(), "the cancelled job's names stayed counted");
    submit(&coordinator, &job_with_long_names("fits again", 20, 200));
    // Restarted with less room than its queued jobs hold, it refuses before reading a body.
    let dir = coordinator.dir().to_path_buf();
    coordinator.kill();
    let restarted = Coordinator::start_in(&dir, &["--max-names-bytes", "1000"]);
    let (_, pool) = get_json(&restarted.url("/pool"));
    let recovered = pool["queue"]["names_bytes"].as_u64().unwrap_or_default();
    assert!(recovered >= held, "{pool}");
    let reply = submit_reply(&restarted, &job("after the restart"));
    let error = busy_error(&reply);
    assert!(
        error.contains(&format!("hold {recovered} bytes of file names")),
        "{error}"
    );
    let (code, ready) = get_json(&restarted.url("/ready"));
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--max-names-bytes"),
        "{ready}"
    );
}

/// A client that sends its whole upload before it reads (as most HTTP libraries do) gets the
/// refusal that was answered before the body was read, not a reset connection: the coordinator
/// reads and drops the rest of the body (more than the sockets' buffers hold) before it closes.
#[test]
fn a_client_still_sending_a_refused_upload_reads_its_answer_instead_of_a_reset() {
    let worker = FakeWorker::start();
    worker.stop();
    let args = ["--max-queued-jobs", "1", "--upload-memory-bytes", "0"];
    let coordinator = Coordinator::start(&[worker.entry(1)], &args);
    submit(&coordinator, &job("queued"));
    let big = job("refused").file("pad.bin", "application/octet-stream", &[b'#'; 24 << 20]);
    for _ in 0..3 {
        let reply = submit_reply(&coordinator, &big);
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(reply.text().contains("queue is full"), "{}", reply.text());
    }
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["queued_jobs"], 1, "{pool}");
}

/// A small tmpfs mounted at a path, unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A temporary directory whose `state` folder is a tmpfs of `size` (as `mount -o size=` takes
/// it); `None`, with the reason printed, where the machine does not allow it (not root).
fn state_on_tmpfs(size: &str) -> Option<(tempfile::TempDir, std::path::PathBuf, Mount)> {
    let dir = support::temp_dir();
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap_or_else(|e| panic!("{e}"));
    let size = format!("size={size}");
    let mount_at = state.to_string_lossy();
    if !quietly("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", &mount_at]) {
        eprintln!(
            "SKIPPED: cannot mount a small tmpfs here (needs root); the full-disk test did not run"
        );
        return None;
    }
    let mount = Mount(state.clone());
    Some((dir, state, mount))
}

/// Runs a command quietly: whether it succeeded.
fn quietly(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A temporary directory whose `state` folder is a small ext4 filesystem on a loop device
/// (one that can be frozen); `None`, with the reason printed, where the machine does not allow
/// it (not root, no loop devices, no mkfs.ext4).
fn state_on_ext4() -> Option<(tempfile::TempDir, std::path::PathBuf, Mount)> {
    let dir = support::temp_dir();
    let state = dir.path().join("state");
    let image = dir.path().join("state.img");
    fs::create_dir_all(&state).unwrap_or_else(|e| panic!("{e}"));
    let (image, mount_at) = (image.to_string_lossy(), state.to_string_lossy());
    let made = quietly("truncate", &["-s", "64M", &image])
        && quietly("mkfs.ext4", &["-q", "-F", &image])
        && quietly("mount", &["-o", "loop", &image, &mount_at]);
    if !made {
        eprintln!(
            "SKIPPED: cannot mount an ext4 image here (needs root, a loop device and mkfs.ext4); the stalled-disk test did not run"
        );
        return None;
    }
    Some((dir, state.clone(), Mount(state)))
}

/// A filesystem frozen (`fsfreeze`): every write to it blocks until it is thawed, here when
/// dropped.
struct Frozen(std::path::PathBuf);

impl Frozen {
    fn freeze(path: &Path) -> Frozen {
        let at = path.to_string_lossy();
        assert!(quietly("fsfreeze", &["-f", &at]), "fsfreeze -f {at}");
        Frozen(path.to_path_buf())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        quietly("fsfreeze", &["-u", &self.0.to_string_lossy()]);
    }
}

/// Submits `form` on a thread of its own (its answer may wait for a frozen disk).
fn submit_in_background(
    coordinator: &Coordinator,
    form: Form,
) -> thread::JoinHandle<support::Reply> {
    let url = coordinator.url("/submit");
    thread::spawn(move || {
        send("POST", &url, Some((&form.content_type(), &form.body())))
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Waits until `/ready` says the job store stalled.
fn wait_stalled(coordinator: &Coordinator) {
    let stalled = poll_until(DEADLINE, || {
        let (status, ready) = get_json(&coordinator.url("/ready"));
        let said = ready["error"].as_str().unwrap_or_default().to_string();
        (status == 503 && said.contains("the job store has written nothing for")).then_some(said)
    });
    assert!(stalled.is_some(), "{}", coordinator.logs());
}

/// A disk that stops answering (frozen: writes block, no error ever comes back) stalls the job
/// store: after 10 s `/ready` says so, a submit is refused at once with 503 and nothing kept, a
/// cancel answers that it applies but is not recorded yet, a deletion that it waits, and
/// `/pool` and `/metrics` show how long. A stop meanwhile says what it waits for. Once the disk is back, the submit that was
/// waiting for its commit gets its 200 and the coordinator stops cleanly; after the restart
/// both jobs are known, the cancel is kept, and submits are taken again.
#[test]
fn a_disk_that_stops_answering_stalls_the_store_visibly_and_submits_are_refused_until_it_is_back() {
    let Some((dir, state, _mount)) = state_on_ext4() else {
        return;
    };
    let worker = FakeWorker::start();
    worker.stop();
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &["--health-interval", "1"]);
    let queued = submit(&coordinator, &job("queued before"));
    let ended = submit(&coordinator, &job("ended before"));
    let (status, body) = post(&coordinator.url(&format!("/cancel/{ended}")), "", b"");
    assert_eq!(status, 200, "{body}");
    let also_queued = submit(&coordinator, &job("queued too"));
    // Thawed before the coordinator is stopped (a process blocked on a frozen disk cannot be).
    let frozen = Frozen::freeze(&state);
    let waiting = submit_in_background(&coordinator, job("waits for its commit"));
    wait_stalled(&coordinator);
    assert!(!waiting.is_finished(), "the waiting submit was answered");

    let started = Instant::now();
    let refused = submit_reply(&coordinator, &job("refused"));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(refused.header("Retry-After"), Some("5"));
    assert!(
        refused.text().contains("does not answer")
            && refused.text().contains("the job was not accepted"),
        "{}",
        refused.text()
    );
    let (status, cancel) = post(&coordinator.url(&format!("/cancel/{queued}")), "", b"");
    assert_eq!(status, 503, "{cancel}");
    assert!(
        cancel.contains("the job is cancelled now, but the job store cannot record it yet"),
        "{cancel}"
    );
    let (status, cancel) = post(&coordinator.url("/cancel?status=queued"), "", b"");
    assert_eq!(status, 503, "{cancel}");
    assert!(
        cancel.contains("1 job is cancelled now, but the job store cannot record every"),
        "{cancel}"
    );
    let delete = send("DELETE", &coordinator.url(&format!("/jobs/{ended}")), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(delete.status, 503, "{}", delete.text());
    assert!(
        delete.text().contains("the deletion waits"),
        "{}",
        delete.text()
    );
    let (_, pool) = get_json(&coordinator.url("/pool"));
    let seconds = pool["store"]["stalled_for_seconds"].as_f64().unwrap_or(0.0);
    assert!(seconds >= 10.0, "{pool}");
    let (_, metrics) = get(&coordinator.url("/metrics"));
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("trusted_pool_store_stalled_seconds "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(gauge >= Some(10), "{metrics}");
    assert!(coordinator.wait_for_log("The job store has written nothing for", DEADLINE));

    // A stop meanwhile says what it waits for, and ends cleanly once the disk is back.
    assert!(coordinator.signal(libc::SIGTERM), "kill -TERM");
    assert!(coordinator.wait_for_log(
        "the stop is waiting for it to write its last changes",
        DEADLINE
    ));
    drop(frozen);
    let answered = waiting
        .join()
        .unwrap_or_else(|_| panic!("the waiting submit panicked"));
    assert_eq!(answered.status, 200, "{}", answered.text());
    let exit = coordinator.wait_exit(DEADLINE);
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    // The log reaches the test through a pipe, maybe after the exit.
    assert!(coordinator.wait_for_log("The job store writes again", DEADLINE));

    let coordinator = Coordinator::start_in(dir.path(), &["--health-interval", "1"]);
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert!(pool["store"]["stalled_for_seconds"].is_null(), "{pool}");
    for id in [&queued, &also_queued] {
        assert_eq!(job_status(&coordinator, id)["pool_status"], "cancelled");
    }
    let (status, _) = get_json(&coordinator.url(&format!("/status/{ended}")));
    assert_eq!(status, 404, "the deletion asked during the stall was made");
    let id = answered.json()["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(job_status(&coordinator, &id)["pool_status"], "queued");
    let after = submit_reply(&coordinator, &job("after"));
    assert_eq!(after.status, 200, "{}", after.text());
}

/// A disk that stops answering while the coordinator is otherwise idle: a large upload blocks
/// in its write to an upload segment, before any record reaches the job store's writer. That is
/// a stall too: `/ready` and the next submit say so, and the log; once the disk is back the
/// upload is accepted and submits are taken again.
#[test]
fn an_upload_blocked_by_a_disk_that_stops_answering_is_seen_as_a_stall() {
    let Some((dir, state, _mount)) = state_on_ext4() else {
        return;
    };
    let worker = FakeWorker::start();
    worker.stop();
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let coordinator = Coordinator::start_in(dir.path(), &["--health-interval", "1"]);
    let frozen = Frozen::freeze(&state);
    let large = job("large").file("data.bin", "application/octet-stream", &[7u8; 1 << 20]);
    let blocked = submit_in_background(&coordinator, large);
    wait_stalled(&coordinator);
    assert!(!blocked.is_finished(), "the blocked upload was answered");
    let refused = submit_reply(&coordinator, &job("refused"));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("does not answer"),
        "{}",
        refused.text()
    );
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert!(
        pool["store"]["stalled_for_seconds"].as_f64() >= Some(10.0),
        "{pool}"
    );
    assert!(
        coordinator.wait_for_log(
            "Writes to the state directory's segment files (uploads, collected results) have made no progress",
            DEADLINE
        ),
        "{}",
        coordinator.logs()
    );

    drop(frozen);
    let answered = blocked
        .join()
        .unwrap_or_else(|_| panic!("the blocked upload panicked"));
    assert_eq!(answered.status, 200, "{}", answered.text());
    assert!(coordinator.wait_for_log("segment files go on again", DEADLINE));
    let ready = poll_until(DEADLINE, || {
        let (_, ready) = get_json(&coordinator.url("/ready"));
        let said = ready["error"].as_str().unwrap_or_default().to_string();
        (!said.contains("written nothing")).then_some(())
    });
    assert!(ready.is_some(), "still stalled after the thaw");
    let after = submit_reply(&coordinator, &job("after"));
    assert_eq!(after.status, 200, "{}", after.text());
}

/// Submits `form`, checks that it is refused with `status` saying each of `said`, and that
/// `/ready` answers 503 saying `ready_says`.
fn assert_refused_and_unready(
    coordinator: &Coordinator,
    form: &Form,
    (status, said): (u16, &[&str]),
    ready_says: &str,
) {
    let refused = submit_reply(coordinator, form);
    assert_eq!(refused.status, status, "{}", refused.text());
    assert!(
        said.iter().all(|s| refused.text().contains(s)),
        "{}",
        refused.text()
    );
    let (status, ready) = get_json(&coordinator.url("/ready"));
    assert_eq!(status, 503, "{ready}");
    assert!(ready.to_string().contains(ready_says), "{ready}");
}

/// A state directory deleted (here: moved away) or replaced under the running coordinator
/// would leave it acknowledging jobs into a file no restart reads: submits are refused with 503
/// saying why, `/ready`, `/pool`, `/metrics` and the log say so, and once the same files are
/// back, submits are taken again.
#[test]
fn a_state_directory_deleted_or_replaced_under_the_coordinator_refuses_submits_until_it_is_back() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--health-interval", "1"]);
    let done = submit(&coordinator, &job("before"));
    wait_collected(&coordinator, &done, DEADLINE);
    let state = coordinator.state_dir();
    let aside = state.with_extension("aside");
    fs::rename(&state, &aside).unwrap_or_else(|e| panic!("{e}"));
    assert_refused_and_unready(
        &coordinator,
        &job("while gone"),
        (
            503,
            &[
                "was removed while the coordinator runs",
                "the job was not accepted",
            ],
        ),
        "was removed",
    );
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert!(pool["store"]["file_lost"].is_string(), "{pool}");
    let (_, metrics) = get(&coordinator.url("/metrics"));
    assert!(
        metrics.lines().any(|l| l == "trusted_pool_store_failing 1"),
        "{metrics}"
    );
    assert!(coordinator.wait_for_log("nothing written from now on would be read", DEADLINE));

    // A copy put in its place is another file: still refused.
    fs::create_dir_all(&state).unwrap_or_else(|e| panic!("{e}"));
    fs::copy(aside.join("jobs.db"), state.join("jobs.db")).unwrap_or_else(|e| panic!("{e}"));
    let refused = submit_reply(&coordinator, &job("into a copy"));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("was replaced"),
        "{}",
        refused.text()
    );

    fs::remove_dir_all(&state).unwrap_or_else(|e| panic!("{e}"));
    fs::rename(&aside, &state).unwrap_or_else(|e| panic!("{e}"));
    let taken = submit(&coordinator, &job("after"));
    wait_collected(&coordinator, &taken, DEADLINE);
    assert!(coordinator.wait_for_log("is the file this coordinator opened again", DEADLINE));
    let (status, _) = get_json(&coordinator.url(&format!("/status/{done}")));
    assert_eq!(status, 200);
}

/// A deleted WAL or shared-memory file of the job store, while the coordinator runs, would leave
/// it acknowledging jobs into a file no restart reads: submits are refused with 503 naming the
/// file, `/ready` and `/pool` say so, the log asks for a restart, and a graceful restart keeps
/// every job acknowledged before.
#[test]
fn a_deleted_wal_or_shared_memory_file_refuses_submits_and_a_graceful_restart_keeps_every_job() {
    let worker = FakeWorker::start();
    let home = support::workers_dir(&[worker.entry(2)]);
    let mut coordinator = Coordinator::start_in(home.path(), &["--health-interval", "1"]);
    let state = coordinator.state_dir();
    let mut acknowledged = Vec::new();
    for (file, name) in [("jobs.db-wal", "WAL"), ("jobs.db-shm", "shared-memory")] {
        for n in 0..3 {
            acknowledged.push(submit(&coordinator, &job(&format!("before {name} {n}"))));
        }
        fs::remove_file(state.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        // The WAL and shared-memory files are looked at every 100 ms at most.
        poll_until(DEADLINE, || {
            let (_, pool) = get_json(&coordinator.url("/pool"));
            let lost = pool["store"]["file_lost"].as_str()?.to_string();
            lost.contains(file).then_some(())
        })
        .unwrap_or_else(|| panic!("{file}: never told lost: {}", coordinator.logs()));
        assert_refused_and_unready(
            &coordinator,
            &job(&format!("after {name}")),
            (
                503,
                &[&format!("({file}) was removed"), "the job was not accepted"],
            ),
            file,
        );
        assert!(coordinator.wait_for_log("Restart the coordinator now", DEADLINE));

        let status = coordinator.terminate(Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
        coordinator = Coordinator::start_in(home.path(), &["--health-interval", "1"]);
        for id in &acknowledged {
            let status = wait_final(&coordinator, id, DEADLINE);
            assert_eq!(status["pool_status"], "completed", "{file}: {status}");
        }
        let taken = submit(&coordinator, &job(&format!("restarted after {name}")));
        wait_final(&coordinator, &taken, DEADLINE);
    }
}

/// Fills the filesystem under `dir` with one file, to the last byte; returns its path.
fn fill_disk(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
    let chunk = vec![0u8; 64 * 1024];
    while matches!(std::io::Write::write(&mut file, &chunk), Ok(n) if n > 0) {}
    path
}

/// A store made before freed pages were given back is rewritten once at start (`VACUUM`), which
/// needs room for a second copy. Without it the rewrite fails, and the WAL it grew, as large as
/// the room there was and none of it committed, is cut back: it stayed, and with any growth of
/// the store the WAL could never be checked in again, every submit refused for a full disk.
#[test]
fn a_failed_rewrite_of_an_old_store_gives_back_the_room_its_wal_took() {
    let worker = FakeWorker::start();
    worker.stop();
    let mut maker = Coordinator::start(&[worker.entry(1)], &["--disk-reserve", "0"]);
    // Uploads of 60 KiB lie in their jobs' rows: a store of about 6 MB.
    let padding = vec![b'#'; 60 * 1024];
    for i in 0..100 {
        let form = job(&format!("old {i}")).file("pad.txt", "text/plain", &padding);
        submit(&maker, &form);
    }
    assert!(maker.terminate(DEADLINE).is_some_and(|s| s.success()));
    let made = maker.state_dir().join("jobs.db");
    let old = rusqlite::Connection::open(&made).unwrap_or_else(|e| panic!("{e}"));
    old.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA auto_vacuum = 0; VACUUM;")
        .unwrap_or_else(|e| panic!("cannot make an old-style store: {e}"));
    drop(old);
    let size = fs::metadata(&made).map_or(0, |m| m.len());
    // Room for the store and 2 MiB more: not for a second copy.
    let Some((dir, state, _mount)) = state_on_tmpfs(&format!("{}k", size / 1024 + 2048)) else {
        return;
    };
    fs::copy(&made, state.join("jobs.db")).unwrap_or_else(|e| panic!("{e}"));
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let coordinator = Coordinator::start_in(dir.path(), &["--disk-reserve", "0"]);
    assert!(
        coordinator.logs().contains("could not be rewritten"),
        "{}",
        coordinator.logs()
    );
    let wal = fs::metadata(state.join("jobs.db-wal")).map_or(0, |m| m.len());
    assert!(wal < 1 << 20, "the failed rewrite left {wal} bytes of WAL");
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["queued_jobs"], 100, "{pool}");
    submit(&coordinator, &job("after the failed rewrite"));
}

/// A new job store on a disk too small for it is refused at start with what to do about the
/// disk, not called a file this trusted-pool cannot read (nothing was there to read). Once the
/// disk has room, the next start makes the store and serves: the failed start left no partly
/// made `jobs.db` (it left a zero-byte one, which every later start refused as a truncated
/// store), only its unfinished `jobs.db.new`, which the next start removes.
#[test]
fn a_new_store_on_a_disk_too_full_for_it_is_refused_for_the_disk_and_made_once_there_is_room() {
    let Some((dir, state, _mount)) = state_on_tmpfs("16k") else {
        return;
    };
    let worker = FakeWorker::start();
    write_workers_json(dir.path(), &[worker.entry(2)]);
    let refused = Coordinator::try_start_in(dir.path(), &[])
        .err()
        .unwrap_or_else(|| panic!("a store on 16 KiB started"));
    assert!(
        refused.contains("job store: the state directory") && !refused.contains("not a job store"),
        "{refused}"
    );
    assert!(!state.join("jobs.db").exists(), "a partly made jobs.db");
    let state_at = state.to_string_lossy();
    assert!(
        quietly("mount", &["-o", "remount,size=16m", &state_at]),
        "cannot grow the tmpfs"
    );
    let coordinator = Coordinator::start_in(dir.path(), &[]);
    let id = submit(&coordinator, &job("the first job of a store made late"));
    assert_eq!(
        wait_final(&coordinator, &id, Duration::from_secs(60))["pool_status"],
        "completed"
    );
    assert!(!state.join("jobs.db.new").exists(), "the leftover stayed");
}

/// A coordinator's folder before its first start: one worker listed (running), and an empty
/// `state` folder to lay files in.
fn before_the_first_start() -> (tempfile::TempDir, FakeWorker, std::path::PathBuf) {
    let dir = support::temp_dir();
    let worker = FakeWorker::start();
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap_or_else(|e| panic!("{e}"));
    (dir, worker, state)
}

/// A `jobs.db` that is a symbolic link is refused at start, saying to move the whole state
/// directory: SQLite keeps the WAL beside the link's target, where the coordinator does not
/// look (it failed with "syncing the state directory failed: No such file or directory").
#[test]
fn a_job_store_that_is_a_symbolic_link_is_refused_and_left_as_it_is() {
    let (dir, _worker, state) = before_the_first_start();
    let elsewhere = dir.path().join("elsewhere.db");
    std::os::unix::fs::symlink(&elsewhere, state.join("jobs.db")).unwrap_or_else(|e| panic!("{e}"));
    let refused = Coordinator::try_start_in(dir.path(), &[])
        .err()
        .unwrap_or_else(|| panic!("a symbolic link was taken for the job store"));
    let needle = format!(
        "{}: the job store is a symbolic link (to {})",
        state.join("jobs.db").display(),
        elsewhere.display()
    );
    assert!(refused.contains(&needle), "{needle:?} not in: {refused}");
    assert!(
        refused.contains("give --state-dir a folder there"),
        "{refused}"
    );
    assert!(!elsewhere.exists(), "a store was made at the link's target");
}

/// A WAL whose job store was moved away without it holds commits a new store would take as
/// its own: the start is refused, naming it, and nothing is changed.
#[test]
fn a_wal_without_its_job_store_is_refused_and_left_as_it_is() {
    let (dir, _worker, state) = before_the_first_start();
    let wal = state.join("jobs.db-wal");
    let stale = vec![7u8; 4128];
    fs::write(&wal, &stale).unwrap_or_else(|e| panic!("{e}"));
    let refused = Coordinator::try_start_in(dir.path(), &[])
        .err()
        .unwrap_or_else(|| panic!("a store was made beside a WAL"));
    let needle = format!("{}: the job store's WAL (4128 bytes", wal.display());
    assert!(refused.contains(&needle), "{needle:?} not in: {refused}");
    assert!(refused.contains("nothing was changed"), "{refused}");
    assert_eq!(fs::read(&wal).ok(), Some(stale));
    assert!(!state.join("jobs.db").exists());
    fs::remove_file(&wal).unwrap_or_else(|e| panic!("{e}"));
    let coordinator = Coordinator::start_in(dir.path(), &[]);
    submit(
        &coordinator,
        &job("a store made once the WAL was moved away"),
    );
}

#[test]
fn a_full_disk_answers_507_and_status_and_pool_keep_working() {
    let Some((dir, state, _mount)) = state_on_tmpfs("2m") else {
        return;
    };
    let worker = FakeWorker::start();
    worker.stop();
    write_workers_json(dir.path(), &[worker.entry(1)]);
    // No disk reserve: this test is about a write that finds the disk full.
    let args = ["--upload-memory-bytes", "0", "--disk-reserve", "0"];
    let coordinator = Coordinator::start_in(dir.path(), &args);
    // Over 64 KiB, so its upload waits in an upload segment, not in its row.
    let padding = vec![b'#'; 100 * 1024];
    let kept = submit(
        &coordinator,
        &job("fits").file("pad.txt", "text/plain", &padding),
    );
    let big = vec![b'x'; 3 * 1024 * 1024];
    let form = Form::new().file("main.py", "text/x-python", &big);
    // A client that retries against the full disk: each gets its 507, the log one line.
    for _ in 0..3 {
        let reply = submit_reply(&coordinator, &form);
        assert_eq!(reply.status, 507, "{}", reply.text());
        assert!(reply.text().contains("full"), "{}", reply.text());
    }
    assert!(coordinator.wait_for_log("Submit failed", DEADLINE));
    let logs = coordinator.logs();
    assert_eq!(logs.matches("Submit failed").count(), 1, "{logs}");
    assert_eq!(
        files_in(&state.join("uploads")),
        1,
        "only the kept job's upload stays"
    );
    // The refused uploads' bytes are cut from the segment they shared with the kept one.
    let segment_bytes: u64 = fs::read_dir(state.join("uploads"))
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(
        segment_bytes < 200 << 10,
        "{segment_bytes} bytes in upload segments for one 100 KiB upload"
    );
    assert_eq!(get(&coordinator.url(&format!("/status/{kept}"))).0, 200);
    let (code, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(code, 200, "{pool}");
    assert_eq!(pool["queued_jobs"], 1, "{pool}");
    // A snapshot needs room for a copy of the job store: 507, and no part of a copy left.
    let filler = fill_disk(&state);
    let reply = send("GET", &coordinator.url("/snapshot"), None)
        .unwrap_or_else(|e| panic!("snapshot: {e}"));
    assert_eq!(reply.status, 507, "{}", reply.text());
    assert!(
        reply.text().contains("no room for a copy"),
        "{}",
        reply.text()
    );
    let copies = fs::read_dir(&state)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
        .count();
    assert_eq!(copies, 0, "a store copy was left on the full disk");
    fs::remove_file(filler).unwrap_or_else(|e| panic!("{e}"));
    let (code, archive) = get_bytes(&coordinator.url("/snapshot"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&archive));
    assert!(support::untar_gz(&archive).contains_key("jobs.db"));
}

/// A state directory whose filesystem ran out of inodes while it has bytes free: a large
/// submit's 507 names the inodes (it said "full" while `/pool` showed megabytes free), so does
/// a snapshot's (it was a 500 "unable to open database"), `/pool`'s disk counts them, `/ready`
/// says so (it said ready), and all is back once files are deleted.
#[test]
fn a_state_directory_out_of_inodes_is_told_as_such_by_submits_snapshots_pool_and_ready() {
    // A tmpfs of 16 MiB with room for 64 files in all.
    let Some((dir, state, _mount, worker)) = pool_on_tmpfs("16m,nr_inodes=64", Duration::ZERO)
    else {
        return;
    };
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let fillers = state.join("fillers");
    fs::create_dir_all(&fillers).unwrap_or_else(|e| panic!("{e}"));
    let made = (0..64)
        .take_while(|n| fs::write(fillers.join(n.to_string()), b"").is_ok())
        .count();
    assert!(made < 64, "the tmpfs did not run out of inodes");
    let large = large_job();
    assert_refused_and_unready(
        &coordinator,
        &large,
        (507, &["no free inodes left"]),
        "no free inodes",
    );
    let reply = send("GET", &coordinator.url("/snapshot"), None)
        .unwrap_or_else(|e| panic!("snapshot: {e}"));
    assert_eq!(reply.status, 507, "{}", reply.text());
    for words in ["no room for a copy of the job store", "no free inodes left"] {
        assert!(reply.text().contains(words), "{}", reply.text());
    }
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["disk"]["available_inodes"], 0, "{}", pool["disk"]);
    assert!(
        pool["disk"]["total_inodes"].as_u64() > Some(0),
        "{}",
        pool["disk"]
    );

    fs::remove_dir_all(&fillers).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(&coordinator.url("/ready")).0, 200);
    let taken = submit(&coordinator, &large);
    wait_collected(&coordinator, &taken, DEADLINE);
}

/// `--retain-bytes`: once the results segments hold more than the limit, the oldest finished
/// jobs are forgotten with their segment, never the newest; the disk use comes back under the
/// limit, and every retained job's output is whole.
#[test]
fn results_past_retain_bytes_forget_the_oldest_jobs_first() {
    let worker = FakeWorker::start_with(roomy(Duration::from_millis(300)));
    let dir = support::temp_dir();
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let limit: u64 = 2_000_000;
    let limit_arg = limit.to_string();
    let args = [
        "--retain-bytes",
        limit_arg.as_str(),
        "--track-interval",
        "0.05",
    ];
    let coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let data: Vec<u8> = (0..600 * 1024).map(|i| (i % 251) as u8).collect();
    let ids: Vec<String> = (0..9)
        .map(|n| {
            let form = job(&format!("bytes {n}"))
                .file("data.bin", "application/octet-stream", &data)
                .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#);
            let id = submit(&coordinator, &form);
            wait_collected(&coordinator, &id, DEADLINE);
            id
        })
        .collect();
    let results = coordinator.state_dir().join("results");
    let settled = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        let retention = pool["store"]["retention"].clone();
        let under = retention["results_bytes"]
            .as_u64()
            .is_some_and(|b| b <= limit);
        (under && dir_bytes(&results) <= limit).then_some(retention)
    })
    .unwrap_or_else(|| {
        panic!(
            "the results stayed over {limit} bytes: {} on disk\n{}",
            dir_bytes(&results),
            coordinator.logs()
        )
    });
    assert_eq!(settled["retain_bytes"], limit, "{settled}");
    let kept: Vec<bool> = ids
        .iter()
        .map(|id| get(&coordinator.url(&format!("/status/{id}"))).0 == 200)
        .collect();
    let first_kept = kept.iter().position(|k| *k).unwrap_or(ids.len());
    assert!(first_kept > 0, "nothing was forgotten: {kept:?}");
    assert!(
        kept[first_kept..].iter().all(|k| *k),
        "not the oldest first: {kept:?}"
    );
    assert_eq!(kept.last(), Some(&true), "the newest job was forgotten");
    assert!(
        settled["forgotten_jobs"].as_u64() >= Some(first_kept as u64),
        "{settled}"
    );
    for id in &ids[first_kept..] {
        let (code, output) = get_bytes(&coordinator.url(&format!("/outputs/{id}/data.bin")));
        assert_eq!(code, 200, "{id}");
        assert!(output == data, "the output of {id} differs");
    }
    let (code, gone) = get_json(&coordinator.url(&format!("/status/{}", ids[0])));
    assert_eq!(code, 404, "{gone}");
}

/// `--retain-bytes` counts the bytes the results segments hold on disk: the results a deletion
/// wiped (a hole punched) no longer count, so an older job is not forgotten for them.
#[test]
fn retain_bytes_does_not_count_the_wiped_results_of_a_deleted_job() {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    let dir = support::temp_dir();
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let args = [
        "--retain-bytes",
        "2500000",
        "--row-results-max",
        "0",
        "--track-interval",
        "0.05",
    ];
    let coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let run = |name: &str, size: usize| {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let form = job(name)
            .file("data.bin", "application/octet-stream", &data)
            .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#);
        let id = submit(&coordinator, &form);
        wait_collected(&coordinator, &id, DEADLINE);
        id
    };
    let kept = run("kept", 100_000);
    let deleted = run("deleted", 2_500_000);
    let results = coordinator.state_dir().join("results");
    let allocated = || -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::read_dir(&results)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum()
    };
    let (code, body) = send(
        "DELETE",
        &coordinator.url(&format!("/jobs/{deleted}")),
        None,
    )
    .map(|reply| (reply.status, reply.text()))
    .unwrap_or_else(|e| panic!("DELETE: {e}"));
    assert_eq!(code, 200, "{body}");
    if poll_until(DEADLINE, || (allocated() < 1_000_000).then_some(())).is_none() {
        eprintln!("SKIPPED: the results directory's filesystem punches no holes ({} bytes still allocated)", allocated());
        return;
    }
    let newest = run("newest", 1_000_000);
    // A sweep measured the results with the newest job's (it forgets in the same sweep).
    let retention = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        let retention = pool["store"]["retention"].clone();
        let measured = retention["results_bytes"].as_u64().unwrap_or(0);
        (measured >= 1_000_000).then_some(retention)
    })
    .unwrap_or_else(|| panic!("no sweep measured the newest job's results"));
    assert_eq!(retention["forgotten_jobs"], 0, "{retention}");
    assert!(
        retention["results_bytes"]
            .as_u64()
            .is_some_and(|b| b < 2_500_000),
        "{retention}"
    );
    for id in [&kept, &newest] {
        let (code, status) = get_json(&coordinator.url(&format!("/status/{id}")));
        assert_eq!(code, 200, "{id} was forgotten: {status}");
    }
}

/// `--disk-reserve`: a submit whose upload would leave less room than the reserve is refused
/// with 507 before its body is read, `/ready` and `/pool` say so, and a job accepted before
/// still has its results collected in the reserve; once there is room, submits are taken again.
#[test]
fn submits_that_would_cut_into_the_disk_reserve_are_refused_and_accepted_jobs_finish() {
    let Some((dir, state, _mount)) = state_on_tmpfs("8m") else {
        return;
    };
    let worker = FakeWorker::start_with(roomy(Duration::from_millis(1500)));
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let args = ["--disk-reserve", "50%", "--upload-memory-bytes", "0"];
    let coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let data: Vec<u8> = (0..600 * 1024).map(|i| (i % 251) as u8).collect();
    let accepted = submit(
        &coordinator,
        &job("accepted")
            .file("data.bin", "application/octet-stream", &data)
            .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#),
    );
    let disk = |coordinator: &Coordinator| get_json(&coordinator.url("/pool")).1["disk"].clone();
    let before = disk(&coordinator);
    let total = before["total_bytes"].as_u64().unwrap_or(0);
    assert_eq!(before["reserve"], "50%", "{before}");
    assert_eq!(before["reserve_bytes"], total / 2, "{before}");
    assert_eq!(before["refusing_submits"], false, "{before}");
    // An upload that would cut into the reserve: 507 on its Content-Length, the body unread.
    let head = format!(
        "POST /submit HTTP/1.1\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        job("big").content_type(),
        5 << 20
    );
    let reply = support::lifecycle::exchange(coordinator.port(), &head, b"")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 507, "{}", reply.text());
    assert!(reply.text().contains("nearly full"), "{}", reply.text());
    // The same upload without a length (chunked): refused once it reaches the reserve, and
    // what it wrote is dropped.
    let big: Vec<u8> = (0..5 << 20).map(|i| (i % 253) as u8).collect();
    let streamed = job("big chunked").file("big.bin", "application/octet-stream", &big);
    let head = format!(
        "POST /submit HTTP/1.1\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n",
        streamed.content_type()
    );
    let reply = support::lifecycle::exchange(
        coordinator.port(),
        &head,
        &support::lifecycle::chunked(&streamed.body(), 64 << 10),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 507, "{}", reply.text());
    assert!(reply.text().contains("nearly full"), "{}", reply.text());
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["spool"]["upload_disk_bytes"], 0, "{pool}");
    assert_eq!(pool["disk"]["refused_submits"], 2, "{pool}");
    // Another program fills the disk down to below the reserve: even a small submit is refused.
    let available = before["available_bytes"].as_u64().unwrap_or(0);
    let filler = state.join("filler");
    fs::write(&filler, vec![0u8; (available - (3 << 20)) as usize])
        .unwrap_or_else(|e| panic!("{e}"));
    let reply = submit_reply(&coordinator, &job("small"));
    assert_eq!(reply.status, 507, "{}", reply.text());
    let (code, ready) = get_json(&coordinator.url("/ready"));
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["error"]
            .as_str()
            .unwrap_or_default()
            .contains("reserve"),
        "{ready}"
    );
    // A snapshot's copy of the job store would cut into the reserve too.
    let reply = send("GET", &coordinator.url("/snapshot"), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 507, "{}", reply.text());
    assert!(reply.text().contains("--disk-reserve"), "{}", reply.text());
    let now = disk(&coordinator);
    assert_eq!(now["refusing_submits"], true, "{now}");
    assert_eq!(now["refused_submits"], 3, "{now}");
    let (_, metrics) = get(&coordinator.url("/metrics"));
    assert!(
        metrics.contains("trusted_pool_submits_refused_for_disk_total 3"),
        "{metrics}"
    );
    // The job accepted before runs, and its results are collected in the reserve.
    wait_collected(&coordinator, &accepted, DEADLINE);
    let (code, output) = get_bytes(&coordinator.url(&format!("/outputs/{accepted}/data.bin")));
    assert_eq!(code, 200);
    assert!(output == data, "the collected output differs");
    // The accepted job's own upload goes once its settled record commits, a moment after
    // `/status` shows it collected.
    let uploads = state.join("uploads");
    let kept = poll_until(DEADLINE, || (files_in(&uploads) == 0).then_some(()));
    assert!(
        kept.is_some(),
        "no refused upload kept: {} files",
        files_in(&uploads)
    );
    fs::remove_file(&filler).unwrap_or_else(|e| panic!("{e}"));
    submit(&coordinator, &job("room again"));
    // One spell for the declared length; the chunked upload was let in (a line saying so), and
    // its refusal began the second spell, which the filler kept going.
    let logs = coordinator.logs_once_counted("Taking submits again", 2, DEADLINE);
    assert_eq!(logs.matches("Refusing submits").count(), 2, "{logs}");
    assert_eq!(logs.matches("Taking submits again").count(), 2, "{logs}");
    assert_eq!(get(&coordinator.url("/ready")).0, 200);
}

/// A loop-mounted ext4 image that goes read-only at its first error (`errors=remount-ro`), as
/// a board's SD card does; unmounted when dropped.
struct Ext4Disk {
    image: std::path::PathBuf,
    mount: Option<Mount>,
    at: std::path::PathBuf,
}

impl Ext4Disk {
    /// A 32 MiB ext4 image in `dir`, mounted at `at`; `None`, with the reason printed, where
    /// the machine does not allow it (not root, no loop devices, no `mkfs.ext4`).
    fn mounted(dir: &Path, at: &Path) -> Option<Ext4Disk> {
        let image = dir.join("disk.img");
        let file = fs::File::create(&image).unwrap_or_else(|e| panic!("{e}"));
        file.set_len(32 << 20).unwrap_or_else(|e| panic!("{e}"));
        fs::create_dir_all(at).unwrap_or_else(|e| panic!("{e}"));
        let made = quiet("mkfs.ext4", &["-q", "-F"], &image);
        let mut disk = Ext4Disk {
            image,
            mount: None,
            at: at.to_path_buf(),
        };
        if !made || !disk.mount() {
            eprintln!(
                "SKIPPED: cannot make and loop-mount an ext4 image here (needs root, loop devices \
                 and mkfs.ext4); the read-only disk test did not run"
            );
            return None;
        }
        Some(disk)
    }

    fn mount(&mut self) -> bool {
        let mounted = std::process::Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&self.image)
            .arg(&self.at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            self.mount = Some(Mount(self.at.clone()));
        }
        mounted
    }

    /// Makes ext4 record an error, which remounts it read-only; false where the kernel has no
    /// `trigger_fs_error`.
    fn fail(&self) -> bool {
        let source = std::process::Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.at)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let Some(device) = source.strip_prefix("/dev/") else {
            return false;
        };
        fs::write(format!("/sys/fs/ext4/{device}/trigger_fs_error"), "test").is_ok()
    }

    /// Unmounts it, repairs it with `e2fsck` and mounts it again.
    fn repair(&mut self) {
        drop(self.mount.take());
        assert!(
            quiet("e2fsck", &["-f", "-y"], &self.image),
            "e2fsck could not repair the image"
        );
        assert!(self.mount(), "the repaired image did not mount");
    }
}

/// Runs `program args path` silently; true when it succeeded (`e2fsck` exits 1 after fixing).
fn quiet(program: &str, args: &[&str], path: &Path) -> bool {
    std::process::Command::new(program)
        .args(args)
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| {
            s.code()
                .is_some_and(|c| c == 0 || (program == "e2fsck" && c == 1))
        })
}

/// The state directory's disk goes read-only under a running coordinator (ext4 after an I/O
/// error, as a failing SD card): a submit, small or large, is refused with 503 and a message
/// that says why, nothing is acknowledged that could be lost, what is stored keeps being
/// served, and after a repair and a restart every acknowledged job is there.
#[test]
fn a_state_directory_that_goes_read_only_refuses_submits_with_503_and_keeps_serving() {
    let dir = support::temp_dir();
    let state = dir.path().join("state");
    let Some(mut disk) = Ext4Disk::mounted(dir.path(), &state) else {
        return;
    };
    let worker = FakeWorker::start();
    write_workers_json(dir.path(), &[worker.entry(2)]);
    let args = ["--upload-memory-bytes", "0", "--disk-reserve", "0"];
    let mut coordinator = Coordinator::start_in(dir.path(), &args);
    let done = submit(&coordinator, &job("before"));
    let before = wait_collected(&coordinator, &done, DEADLINE);
    let (code, output) = get_bytes(&coordinator.url(&format!("/outputs/{done}/result.txt")));
    assert_eq!(code, 200);
    if !disk.fail() {
        eprintln!("SKIPPED: no ext4 trigger_fs_error here; the read-only disk test did not run");
        return;
    }
    let padding = vec![b'#'; 100 * 1024];
    let large = job("large").file("pad.txt", "text/plain", &padding);
    for form in [job("small"), large] {
        let reply = submit_reply(&coordinator, &form);
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(reply.text().contains("read-only"), "{}", reply.text());
        assert!(reply.text().contains("not accepted"), "{}", reply.text());
        assert!(
            reply
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("Retry-After")),
            "{:?}",
            reply.headers
        );
    }
    let (code, status) = get_json(&coordinator.url(&format!("/status/{done}")));
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["pool_status"], before["pool_status"], "{status}");
    let again = get_bytes(&coordinator.url(&format!("/outputs/{done}/result.txt")));
    assert_eq!(again, (200, output.clone()));
    let (code, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(code, 200, "{pool}");
    let failing = pool["store"]["failing"].as_str().unwrap_or_default();
    assert!(failing.contains("cannot be written"), "{pool}");
    assert_eq!(get(&coordinator.url("/ready")).0, 503);
    assert!(
        coordinator.terminate(DEADLINE).is_some(),
        "did not stop on SIGTERM"
    );
    drop(coordinator);

    disk.repair();
    let coordinator = Coordinator::start_in(dir.path(), &args);
    let (code, status) = get_json(&coordinator.url(&format!("/status/{done}")));
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["pool_status"], "completed", "{status}");
    assert_eq!(
        get_bytes(&coordinator.url(&format!("/outputs/{done}/result.txt"))),
        (200, output)
    );
    let (_, listing) = get_json(&coordinator.url("/jobs"));
    assert_eq!(
        listing["jobs"].as_array().map(Vec::len),
        Some(1),
        "only the acknowledged job: {listing}"
    );
    let ready = poll_until(DEADLINE, || {
        (get(&coordinator.url("/ready")).0 == 200).then_some(())
    });
    assert!(ready.is_some(), "{}", coordinator.logs());
}

/// A job whose 200 KiB upload waits in an upload segment (not in its row).
fn large_job() -> Form {
    Form::new()
        .file("main.py", "text/x-python", &vec![b'#'; 200 << 10])
        .manifest(r#"{"entrypoint":"main.py"}"#)
}

/// A folder made read-only for the coordinator (`chattr +i` as root, else `chmod 555`); its
/// permission given back when dropped.
struct Denied(std::path::PathBuf);

impl Denied {
    /// `dir` denied to new files; `None`, with the reason printed, where neither way works here.
    fn folder(dir: &Path) -> Option<Denied> {
        use std::os::unix::fs::PermissionsExt;
        let immutable = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !immutable {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o555))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let denied = Denied(dir.to_path_buf());
        if fs::write(dir.join("try"), b"").is_ok() {
            eprintln!(
                "SKIPPED: neither chattr +i nor chmod 555 keeps this user from creating files \
                 (root on a filesystem without attributes?); the permission test did not run"
            );
            return None;
        }
        Some(denied)
    }
}

impl Drop for Denied {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
    }
}

/// A state directory whose folders an operator made unwritable for the coordinator: a large
/// submit is refused with 503 naming the permission (it was a 500), `/ready` says so (it said
/// ready), and both are back once the permission is.
#[test]
fn a_state_directory_folder_without_write_permission_refuses_large_submits_with_503() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let large = large_job();
    let Some(denied) = Denied::folder(&coordinator.state_dir().join("uploads")) else {
        return;
    };
    assert_refused_and_unready(
        &coordinator,
        &large,
        (
            503,
            &[
                "may not create files in its state directory",
                "write permission",
            ],
        ),
        "uploads/ folder",
    );
    drop(denied);
    assert_eq!(get(&coordinator.url("/ready")).0, 200);
    let taken = submit(&coordinator, &large);
    wait_collected(&coordinator, &taken, DEADLINE);
}

/// How many rows of the store at `db` have each status.
fn stored_statuses(db: &Path) -> BTreeMap<String, u64> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(db, flags).unwrap_or_else(|e| panic!("{e}"));
    let mut query = conn
        .prepare("SELECT status, count(*) FROM jobs GROUP BY status")
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = query
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap_or_else(|e| panic!("{e}"));
    rows.map(|r| r.unwrap_or_else(|e| panic!("{e}"))).collect()
}

/// A state directory on a tmpfs of `size` (see [`state_on_tmpfs`]) and a roomy worker whose
/// jobs take `job_duration`, listed in its workers file.
fn pool_on_tmpfs(
    size: &str,
    job_duration: Duration,
) -> Option<(tempfile::TempDir, std::path::PathBuf, Mount, FakeWorker)> {
    let (dir, state, mount) = state_on_tmpfs(size)?;
    let worker = FakeWorker::start_with(roomy(job_duration));
    write_workers_json(dir.path(), &[worker.entry(2)]);
    Some((dir, state, mount, worker))
}

/// A collection that finds the disk full leaves none of its bytes behind: its results segment
/// is cut back to where it began. Once the disk has room again the retry fits, and the results
/// take their own size on disk, not that plus what every failed attempt wrote.
#[test]
fn a_collection_that_finds_the_disk_full_leaves_no_bytes_behind() {
    let Some((dir, state, _mount, worker)) = pool_on_tmpfs("16m", Duration::ZERO) else {
        return;
    };
    let args = [
        "--health-interval",
        "1",
        "--track-interval",
        "0.05",
        "--disk-reserve",
        "0",
    ];
    let coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let form = job("partial room")
        .file("data.bin", "application/octet-stream", &data)
        .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#);
    // Held running until the disk is nearly full, however slow the machine.
    worker.set(|k| k.hold_jobs = true);
    let id = submit(&coordinator, &form);
    poll_until(DEADLINE, || {
        job_status(&coordinator, &id)["remote_job_id"]
            .is_string()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the job never reached its worker"));
    // Room for a third of the results: each attempt writes a part of them, then fails.
    let filler = fill_disk(&state);
    let full = fs::metadata(&filler).map_or(0, |m| m.len());
    fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .and_then(|f| f.set_len(full.saturating_sub(1024 * 1024)))
        .unwrap_or_else(|e| panic!("{e}"));
    worker.set(|k| k.hold_jobs = false);
    poll_until(DEADLINE, || {
        let status = job_status(&coordinator, &id);
        let error = status["results"]["error"].as_str().unwrap_or_default();
        error.contains("No space").then_some(())
    })
    .unwrap_or_else(|| panic!("the results found room:\n{}", coordinator.logs()));
    assert!(coordinator.wait_for_log("No space", DEADLINE));
    fs::remove_file(&filler).unwrap_or_else(|e| panic!("{e}"));
    let status = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(status["pool_status"], "completed", "{status}");
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{id}/data.bin")));
    assert_eq!(code, 200);
    assert!(bytes == data, "data.bin differs ({} bytes)", bytes.len());
    let results = dir_bytes(&state.join("results"));
    assert!(
        results < data.len() as u64 + 256 * 1024,
        "the results take {results} bytes on disk for {} bytes of output",
        data.len()
    );
}

/// A disk that fills up while jobs run costs no job: dispatches that cannot be recorded wait
/// in the queue (dispatching is held, no attempt counted), results that find no room are
/// collected again later (never `lost`, however long past `--lost-after`), a cancel applies at
/// once and is recorded later, and once the disk has room everything goes on, in the store
/// too (a `kill -9` and a restart show every job as it ended).
#[test]
fn a_disk_that_fills_up_while_jobs_run_loses_no_job_and_all_goes_on_once_it_has_room() {
    let Some((dir, state, _mount, worker)) = pool_on_tmpfs("8m", Duration::from_millis(1500))
    else {
        return;
    };
    let args = [
        "--health-interval",
        "1",
        "--track-interval",
        "0.05",
        "--lost-after",
        "2",
        "--upload-memory-bytes",
        "0",
        // Writes that find the disk full, not submits refused before it is.
        "--disk-reserve",
        "0",
    ];
    let mut coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let data: Vec<u8> = (0..600 * 1024).map(|i| (i % 251) as u8).collect();
    // The first is held running until the disk is full (the worker's lock holds the next
    // submit meanwhile, as sandrun's does), however slow the machine.
    worker.set(|k| k.hold_jobs = true);
    let ids: Vec<String> = (0..6)
        .map(|n| {
            let form = job(&format!("full disk {n}"))
                .file("data.bin", "application/octet-stream", &data)
                .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#);
            submit(&coordinator, &form)
        })
        .collect();
    poll_until(DEADLINE, || {
        (!worker.recording().started.is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no job ran:\n{}", coordinator.logs()));
    let filler = fill_disk(&state);
    worker.set(|k| k.hold_jobs = false);
    // Two jobs run. When they end their results find no room, and the next dispatches cannot
    // be recorded, so they are not sent.
    let held = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        pool["dispatch_held"].is_object().then_some(pool)
    })
    .unwrap_or_else(|| panic!("dispatching was never held:\n{}", coordinator.logs()));
    let why = held["dispatch_held"]["why"].as_str().unwrap_or_default();
    assert!(why.contains("full"), "{held}");
    let failing = held["store"]["failing"].as_str().unwrap_or_default();
    assert!(failing.contains("full"), "{held}");
    poll_until(DEADLINE, || {
        ids.iter().find(|id| {
            let status = job_status(&coordinator, id);
            let error = status["results"]["error"].as_str().unwrap_or_default();
            status["pool_status"] == "completed" && error.contains("No space")
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no job waited to store its results:\n{}",
            coordinator.logs()
        )
    });
    let cancelled = ids
        .iter()
        .rev()
        .find(|id| job_status(&coordinator, id)["pool_status"] == "queued")
        .unwrap_or_else(|| panic!("no job waits in the queue"))
        .clone();
    let reply = send(
        "POST",
        &coordinator.url(&format!("/cancel/{cancelled}")),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 507, "{}", reply.text());
    assert!(reply.text().contains("as soon as"), "{}", reply.text());
    assert_eq!(
        job_status(&coordinator, &cancelled)["pool_status"],
        "cancelled"
    );
    // A drain applies at once too, and says a restart would not keep it until it is written.
    // Its undrain commits (it has no record to delete) and ends the kept drain.
    let drain = |action: &str| {
        send("POST", &drain_url(&coordinator, &worker, action), None)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let reply = drain("drain");
    assert_eq!(reply.status, 507, "{}", reply.text());
    assert!(reply.text().contains("restart"), "{}", reply.text());
    assert_eq!(drain("undrain").status, 200);
    // Longer than --lost-after: a worker that answers is not silent, however long the disk
    // stays full.
    thread::sleep(Duration::from_secs(3));
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["jobs_by_status"]["failed"], 0, "{pool}");
    assert_eq!(pool["jobs_by_status"]["lost"], 0, "{pool}");
    assert!(pool["queued_jobs"].as_u64() >= Some(1), "{pool}");
    let (_, metrics) = get(&coordinator.url("/metrics"));
    assert!(
        metrics.contains("\ntrusted_pool_dispatch_held 1\n"),
        "{metrics}"
    );

    fs::remove_file(&filler).unwrap_or_else(|e| panic!("{e}"));
    let finished: Vec<&String> = ids.iter().filter(|id| **id != cancelled).collect();
    let check = |coordinator: &Coordinator| {
        for id in &finished {
            let status = wait_final(coordinator, id, DEADLINE);
            assert_eq!(status["pool_status"], "completed", "{status}");
            assert_outputs(coordinator, id, &status);
            let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{id}/data.bin")));
            assert_eq!(code, 200, "{}", String::from_utf8_lossy(&bytes));
            assert!(
                bytes == data,
                "data.bin of {id} differs ({} bytes)",
                bytes.len()
            );
        }
        let status = job_status(coordinator, &cancelled);
        assert_eq!(status["pool_status"], "cancelled", "{status}");
    };
    check(&coordinator);
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert!(pool["dispatch_held"].is_null(), "{pool}");
    assert!(
        coordinator.wait_for_log("Dispatching resumes", DEADLINE),
        "the hold never ended:\n{}",
        coordinator.logs()
    );
    poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        pool["store"]["failing"].is_null().then_some(())
    })
    .unwrap_or_else(|| panic!("the store still says it fails"));
    // A failure that lasts is logged once a minute, not at every try (once a second): once per
    // spell of failing commits here.
    let logs = coordinator.logs();
    let failed = logs.matches("The job store could not commit").count();
    let recovered = logs.matches("The job store commits again").count();
    assert!(
        (1..=recovered).contains(&failed),
        "{failed} commit failures logged for {recovered} spells:\n{logs}"
    );
    // So is a spell of held dispatching (a line at each pause before), and the paused
    // collections (a line per job and pause before).
    let holds = logs.matches("Dispatching is held").count();
    let resumed = logs.matches("Dispatching resumes").count();
    assert!(
        (1..=resumed).contains(&holds),
        "{holds} holds logged for {resumed} spells:\n{logs}"
    );
    assert_eq!(logs.matches("; trying again in").count(), 1, "{logs}");
    // Each job reached the worker once; the cancelled one never did.
    let sent = |worker: &FakeWorker| -> BTreeMap<String, usize> {
        received_tokens(&[worker])
            .into_iter()
            .filter(|(text, _)| text.starts_with("print("))
            .collect()
    };
    let seen = sent(&worker);
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    let n = ids
        .iter()
        .position(|id| *id == cancelled)
        .unwrap_or_default();
    let token = format!("print('full disk {n}')\n");
    assert!(
        !seen.contains_key(&token),
        "the cancelled job ran: {seen:?}"
    );
    // The store caught up with every change it could not write while the disk was full.
    let db = state.join("jobs.db");
    let wanted = BTreeMap::from([("cancelled".to_string(), 1), ("completed".to_string(), 5)]);
    poll_until(DEADLINE, || (stored_statuses(&db) == wanted).then_some(()))
        .unwrap_or_else(|| panic!("the store holds {:?}", stored_statuses(&db)));
    coordinator.kill();
    let restarted = Coordinator::start_in(dir.path(), &args);
    check(&restarted);
    assert_eq!(
        sent(&worker),
        seen,
        "a job was sent again after the restart"
    );
}

/// A deletion the job store cannot commit (a full disk) is refused as a cancel is, with a
/// 507, and undoes nothing: the job keeps serving its outputs byte for byte (its results in a
/// segment are not wiped under its row, nor those in its row). Once the disk has room the same
/// deletion is made, and stays made across a restart.
#[test]
fn a_deletion_on_a_full_disk_answers_507_and_keeps_the_job_whole() {
    let Some((dir, state, _mount, worker)) = pool_on_tmpfs("8m", Duration::ZERO) else {
        return;
    };
    let args = [
        "--health-interval",
        "1",
        "--track-interval",
        "0.05",
        "--disk-reserve",
        "0",
    ];
    let mut coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let data: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let large = submit(
        &coordinator,
        &job("deleted on a full disk")
            .file("data.bin", "application/octet-stream", &data)
            .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#),
    );
    let small = submit(&coordinator, &job("deleted on a full disk, small"));
    let statuses: Vec<Value> = [&large, &small]
        .iter()
        .map(|id| wait_collected(&coordinator, id, DEADLINE))
        .collect();
    assert!(
        results_home(dir.path(), &large).1.is_some(),
        "not in a segment"
    );
    assert!(
        results_home(dir.path(), &small).0.is_some(),
        "not in its row"
    );
    // The idle store's WAL went back to zero bytes: the deletion's frames need new room.
    poll_until(DEADLINE, || {
        (store_figures(&coordinator)["wal_bytes"] == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("the WAL was never checkpointed to zero bytes"));
    let filler = fill_disk(&state);
    let delete = |coordinator: &Coordinator, id: &str| {
        send("DELETE", &coordinator.url(&format!("/jobs/{id}")), None)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    for (id, status) in [&large, &small].into_iter().zip(&statuses) {
        let reply = delete(&coordinator, id);
        assert_eq!(reply.status, 507, "{}", reply.text());
        let error = serde_json::from_str::<Value>(&reply.text())
            .map(|v| v["error"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        assert!(
            error.contains("not deleted") && error.contains("full") && error.contains("again"),
            "{}",
            reply.text()
        );
        assert_eq!(get(&coordinator.url(&format!("/status/{id}"))).0, 200);
        assert_outputs(&coordinator, id, status);
    }
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{large}/data.bin")));
    assert_eq!(code, 200);
    assert!(bytes == data, "data.bin differs after a refused deletion");
    let db = state.join("jobs.db");
    assert_eq!(
        stored_statuses(&db),
        BTreeMap::from([("completed".to_string(), 2)])
    );
    fs::remove_file(&filler).unwrap_or_else(|e| panic!("{e}"));
    for id in [&large, &small] {
        let reply = delete(&coordinator, id);
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(get(&coordinator.url(&format!("/status/{id}"))).0, 404);
    }
    coordinator.kill();
    let restarted = Coordinator::start_in(dir.path(), &args);
    for id in [&large, &small] {
        assert_eq!(get(&restarted.url(&format!("/status/{id}"))).0, 404);
    }
    assert!(
        stored_statuses(&db).is_empty(),
        "{:?}",
        stored_statuses(&db)
    );
}

#[test]
fn sigterm_lets_dispatches_in_flight_settle_exits_0_and_the_restart_follows_the_jobs() {
    let worker = FakeWorker::start_with(roomy(Duration::from_secs(2)));
    let mut coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let first = submit(&coordinator, &job("sigterm first"));
    wait_on_worker(&coordinator, &first);
    // The worker holds its lock while the first job runs: this submit stays in flight.
    let second = submit(&coordinator, &job("sigterm second"));
    poll_until(DEADLINE, || {
        (job_status(&coordinator, &second)["pool_status"] == "dispatched").then_some(())
    })
    .unwrap_or_else(|| panic!("the second job was not dispatched"));
    let started = Instant::now();
    let status = coordinator.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    let logs = coordinator.logs();
    assert!(logs.contains("Job store closed"), "{logs}");
    eprintln!(
        "graceful shutdown took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let dir = coordinator.dir().to_path_buf();
    assert_eq!(
        stored_remote_ids(&dir),
        2,
        "the dispatch in flight settled before the exit"
    );
    let restarted = Coordinator::start_in(&dir, &FAST);
    for id in [&first, &second] {
        let status = wait_final(&restarted, id, DEADLINE);
        assert_eq!(status["pool_status"], "completed", "{status}");
        assert_outputs(&restarted, id, &status);
    }
    let seen = received_tokens(&[&worker]);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}

/// A `GET /status/{id}?wait=` parked when SIGTERM comes is answered with the job's status as it
/// stands, not dropped unanswered; the stop does not wait for the wait's time to be up.
#[test]
fn sigterm_answers_parked_status_requests_with_the_status_as_it_stands() {
    let worker = FakeWorker::start_with(roomy(Duration::from_secs(120)));
    let mut coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &job("parked at the stop"));
    wait_on_worker(&coordinator, &id);
    let url = coordinator.url(&format!("/status/{id}?wait=60"));
    let waiter = thread::spawn(move || get(&url));
    poll_until(DEADLINE, || {
        (get_json(&coordinator.url("/pool")).1["waiting"]["parked"] == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("the status request was never parked"));
    let started = Instant::now();
    let status = coordinator.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    let (code, body) = waiter
        .join()
        .unwrap_or((0, "the waiting client panicked".into()));
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(answer["job_id"], id.as_str(), "{body}");
    assert!(
        ["dispatched", "running"].contains(&answer["pool_status"].as_str().unwrap_or_default()),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the stop waited for the wait: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let worker = FakeWorker::start_with(roomy(Duration::from_secs(5)));
    let mut coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let first = submit(&coordinator, &job("second signal first"));
    wait_on_worker(&coordinator, &first);
    // The worker now holds every submit unanswered: the second job's dispatch stays in flight
    // until the signals, so the graceful shutdown has something to wait for.
    worker.set(|k| k.hang_submit = true);
    let second = submit(&coordinator, &job("second signal second"));
    poll_until(DEADLINE, || {
        let status = job_status(&coordinator, &second);
        let in_flight = status["pool_status"] == "dispatched"
            && status["remote_job_id"].is_null()
            && worker.recording().count("POST", "submit") == 2;
        in_flight.then_some(())
    })
    .unwrap_or_else(|| panic!("the second job's dispatch never reached the worker"));
    coordinator.signal(libc::SIGTERM);
    assert!(coordinator.wait_for_log("Shutting down", DEADLINE));
    let started = Instant::now();
    coordinator.signal(libc::SIGINT);
    let status = coordinator.wait_exit(Duration::from_secs(3));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// `jobs` jobs queued while the worker was away, then set free all at once: the coordinator and
/// the worker, which runs them as fast as the coordinator dispatches them.
fn a_burst_of_jobs(jobs: u64, tag: &str) -> (Coordinator, FakeWorker) {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    worker.stop();
    let coordinator = Coordinator::start(&[worker.entry(16)], &FAST);
    for i in 0..jobs {
        submit(&coordinator, &job(&format!("{tag} {i}")));
    }
    worker.restart();
    (coordinator, worker)
}

/// Runs `read` on `clients` threads at once; each returns how many reads it made, and each must
/// have made more than one.
fn read_side_by_side(clients: usize, what: &str, read: impl Fn() -> u64 + Sync) {
    thread::scope(|scope| {
        let readers: Vec<_> = (0..clients).map(|_| scope.spawn(&read)).collect();
        for reader in readers {
            let reads = reader
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            assert!(reads > 1, "{what} was read only once");
        }
    });
}

#[test]
fn pool_counts_each_job_once_while_the_store_settles_them() {
    const JOBS: u64 = 300;
    let (coordinator, _worker) = a_burst_of_jobs(JOBS, "counted");
    // Two clients read `/pool` as fast as they can while the jobs run and settle (each settled
    // job moves from the table's counts to the store's): every snapshot counts every job once
    // (its counts add up to `total_jobs`, and that is every job).
    read_side_by_side(2, "/pool", || {
        let deadline = Instant::now() + DEADLINE;
        let mut snapshots = 0u64;
        loop {
            let pool = assert_pool_consistent(&coordinator);
            assert_eq!(pool["total_jobs"], JOBS, "snapshot {snapshots}: {pool}");
            snapshots += 1;
            if pool["jobs_by_status"]["completed"] == JOBS {
                return snapshots;
            }
            assert!(
                Instant::now() < deadline,
                "the jobs did not complete: {pool}"
            );
        }
    });
}

#[test]
fn a_listing_never_shows_a_job_behind_what_an_earlier_listing_showed() {
    const JOBS: u64 = 300;
    let (coordinator, _worker) = a_burst_of_jobs(JOBS, "listed");
    // Four clients list every job as fast as they can while the jobs run and settle (each
    // settled job leaves the table for the store): every listing holds every job, and once a
    // listing showed a job ended, no later listing shows it still under way.
    read_side_by_side(4, "/jobs", || {
        let deadline = Instant::now() + 2 * DEADLINE;
        let mut ended: BTreeMap<String, String> = BTreeMap::new();
        let mut listings = 0u64;
        loop {
            let (code, body) = get_json(&coordinator.url("/jobs?limit=1000"));
            assert_eq!(code, 200, "{body}");
            let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
            assert_eq!(jobs.len() as u64, JOBS, "listing {listings}: {body}");
            for listed in &jobs {
                let id = listed["job_id"].as_str().unwrap_or_default().to_string();
                let now = listed["pool_status"].as_str().unwrap_or_default();
                if let Some(before) = ended.get(&id) {
                    assert_eq!(
                        now, before,
                        "listing {listings} shows job {id} {now} after an earlier listing \
                         showed it {before}"
                    );
                } else if matches!(now, "completed" | "failed" | "lost") {
                    ended.insert(id, now.to_string());
                }
            }
            listings += 1;
            if jobs.iter().all(|j| j["pool_status"] == "completed") {
                return listings;
            }
            assert!(
                Instant::now() < deadline,
                "the jobs did not complete: {body}"
            );
        }
    });
}

/// `GET /snapshot` while jobs run: one at a time (503 with `Retry-After` while one is sent),
/// and its archive, unpacked into a new state directory, starts a coordinator that serves every
/// finished job byte for byte, runs the jobs that were queued (each sent once) and knows
/// nothing submitted after the snapshot. A store copy a crash left behind is removed at start.
#[test]
fn a_snapshot_taken_while_jobs_run_restores_every_job_in_a_new_state_directory() {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    let args = [&FAST[..], &["--row-results-max", "0"]].concat();
    let mut coordinator = Coordinator::start(&[worker.entry(2)], &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    // Finished jobs with their results in segments; one with 24 MiB of them, so that a
    // snapshot's archive outgrows the socket's buffers and its sending can be held up.
    let outputs = two_large_outputs();
    let large_id = submit(&coordinator, &large_results_job(&outputs));
    let finished: Vec<String> = (0..4)
        .map(|i| submit(&coordinator, &job(&format!("finished {i}"))))
        .collect();
    wait_collected(&coordinator, &large_id, DEADLINE);
    for id in &finished {
        wait_collected(&coordinator, id, DEADLINE);
    }
    // Queued jobs whose uploads (over 64 KiB) wait in upload segments: the worker is drained.
    let (code, body) = post(&drain_url(&coordinator, &worker, "drain"), "", b"");
    assert_eq!(code, 200, "{body}");
    let queued: Vec<String> = (0..3u8)
        .map(|i| {
            let padding: Vec<u8> = (0..100 << 10).map(|n| (n % 241) as u8 ^ i).collect();
            let form =
                job(&format!("queued {i}")).file("data.bin", "application/octet-stream", &padding);
            submit(&coordinator, &form)
        })
        .collect();

    let stalled = begin_download(&coordinator, "/snapshot");
    assert_eq!(stalled.header("Content-Type"), Some("application/gzip"));
    let busy = send("GET", &coordinator.url("/snapshot"), None)
        .unwrap_or_else(|e| panic!("second snapshot: {e}"));
    assert_eq!(busy.status, 503, "{}", busy.text());
    assert_eq!(busy.header("Retry-After"), Some("10"));
    assert!(busy.text().contains("another snapshot"), "{}", busy.text());
    let after = submit(&coordinator, &job("after the snapshot"));
    let length = stalled.header("Content-Length").map(str::to_string);
    let mut archive = Vec::new();
    if let Err(e) = stalled.into_reader().read_to_end(&mut archive) {
        panic!("the snapshot broke off after {} bytes: {e}", archive.len());
    }
    assert_eq!(length, Some(archive.len().to_string()), "its exact length");
    assert!(
        coordinator.wait_for_log("Snapshot taken in", DEADLINE),
        "{}",
        coordinator.logs()
    );
    let (code, _) = get_bytes(&coordinator.url("/snapshot"));
    assert_eq!(code, 200, "the slot was let go once the first was sent");
    let left: Vec<String> = fs::read_dir(coordinator.state_dir())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("snapshot-"))
        .collect();
    assert!(left.is_empty(), "store copies left behind: {left:?}");
    coordinator.kill();

    let restored = support::temp_dir();
    support::untar_gz_into(&archive, &restored.path().join("state"));
    let segments = |dir: &str| files_in(&restored.path().join("state").join(dir));
    assert!(segments("results") >= 1 && segments("uploads") >= 1);
    let crash_copy = restored.path().join("state").join("snapshot-4242.db.tmp");
    fs::write(&crash_copy, b"cut short").unwrap_or_else(|e| panic!("{e}"));
    write_workers_json(restored.path(), &[worker.entry(2)]);
    let again = Coordinator::start_in(restored.path(), &args);
    assert!(!crash_copy.exists(), "{}", again.logs());
    assert!(again
        .logs()
        .contains("left by a snapshot that a crash cut short"));
    assert_eq!(recovery_counts(&again.logs())[0], 3, "{}", again.logs());
    wait_healthy(&again, &[&worker], DEADLINE);
    for id in &finished {
        let status = job_status(&again, id);
        assert_eq!(status["pool_status"], "completed", "{status}");
        assert_outputs(&again, id, &status);
    }
    let (code, bytes) = get_bytes(&again.url(&format!("/download/{large_id}")));
    assert_eq!(code, 200);
    let files = support::untar_gz(&bytes);
    for (name, bytes) in &outputs {
        assert!(files.get(*name) == Some(bytes), "{name} differs");
    }
    let (code, _) = get(&again.url(&format!("/status/{after}")));
    assert_eq!(code, 404, "a job submitted after the snapshot");
    // The drain is in the snapshot too; undrained, the queued jobs run, each sent once.
    assert_eq!(job_status(&again, &queued[0])["pool_status"], "queued");
    let (code, body) = post(&drain_url(&again, &worker, "undrain"), "", b"");
    assert_eq!(code, 200, "{body}");
    for id in &queued {
        let status = wait_final(&again, id, DEADLINE);
        assert_eq!(status["pool_status"], "completed", "{status}");
        assert_outputs(&again, id, &status);
    }
    let seen = received_tokens(&[&worker]);
    for i in 0..3 {
        assert_eq!(
            seen.get(&format!("print('queued {i}')\n")),
            Some(&1),
            "{seen:?}"
        );
    }
    assert!(
        !seen.contains_key("print('after the snapshot')\n"),
        "{seen:?}"
    );
}

/// A coordinator whose drained worker leaves a queued job's 12 MiB upload waiting in an upload
/// segment, so that a snapshot of it outgrows the sockets' buffers; returns the segment's path.
fn with_a_queued_upload_segment(
    worker: &FakeWorker,
    args: &[&str],
) -> (Coordinator, std::path::PathBuf) {
    let coordinator = Coordinator::start(&[worker.entry(1)], args);
    wait_healthy(&coordinator, &[worker], DEADLINE);
    let (code, body) = post(&drain_url(&coordinator, worker, "drain"), "", b"");
    assert_eq!(code, 200, "{body}");
    let padding: Vec<u8> = (0..12 << 20).map(|n| (n % 239) as u8).collect();
    submit(
        &coordinator,
        &job("queued").file("data.bin", "application/octet-stream", &padding),
    );
    let uploads = coordinator.state_dir().join("uploads");
    let segments: Vec<_> = fs::read_dir(&uploads)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    (coordinator, segments[0].clone())
}

/// The length of the file at `path` (0 when it is gone).
fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// An upload cut off mid-body while a snapshot is read slowly: its bytes, appended to the
/// segment the snapshot noted at its longer length, stay until the snapshot ends (earlier
/// builds cut the segment back at once, and the snapshot broke off short of its
/// `Content-Length`); the archive arrives whole, every file in it.
#[test]
fn an_upload_cut_off_while_a_snapshot_is_read_leaves_the_snapshot_whole() {
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    let (coordinator, segment) = with_a_queued_upload_segment(&worker, &FAST);
    let queued_len = file_len(&segment);
    // A second upload into the same segment, of which 5 MiB of 8 come before its client goes.
    let form = job("cut off").file("data.bin", "application/octet-stream", &vec![7u8; 8 << 20]);
    let body = form.body();
    let mut upload = std::net::TcpStream::connect(("127.0.0.1", coordinator.port()))
        .unwrap_or_else(|e| panic!("{e}"));
    let head = format!(
        "POST /submit HTTP/1.1\r\nHost: localhost\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        form.content_type(),
        body.len()
    );
    std::io::Write::write_all(&mut upload, head.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    std::io::Write::write_all(&mut upload, &body[..5 << 20]).unwrap_or_else(|e| panic!("{e}"));
    poll_until(DEADLINE, || {
        (file_len(&segment) >= queued_len + (4 << 20)).then_some(())
    })
    .unwrap_or_else(|| panic!("the upload did not reach {}", segment.display()));

    // The snapshot notes the segment with the unfinished upload in it; its client reads
    // nothing until the upload is gone.
    let snapshot = begin_download(&coordinator, "/snapshot");
    drop(upload);
    poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        (pool["uploads_receiving"] == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("the cut-off upload was not given up"));

    let length = snapshot.header("Content-Length").map(str::to_string);
    let mut archive = Vec::new();
    if let Err(e) = snapshot.into_reader().read_to_end(&mut archive) {
        panic!(
            "the snapshot broke off after {} bytes of {length:?}: {e}\n{}",
            archive.len(),
            coordinator.logs()
        );
    }
    assert_eq!(length, Some(archive.len().to_string()), "its exact length");
    let files = support::untar_gz(&archive);
    let name = segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let noted_len = files
        .get(&format!("uploads/{}", name.unwrap_or_default()))
        .map_or(0, |bytes| bytes.len() as u64);
    assert!(
        noted_len >= queued_len + (4 << 20),
        "{noted_len} bytes of the segment in the archive"
    );
    assert!(files.contains_key("jobs.db"), "{:?}", files.keys());
    assert!(file_len(&segment) >= noted_len, "the segment was cut back");

    // Once it was sent, the unfinished upload's bytes are wiped (a hole punched), and the
    // queued job's upload is whole.
    let dir = support::temp_dir();
    support::untar_gz_into(&archive, &dir.path().join("state"));
    let (code, out, err) = support::check_state_dir(&dir.path().join("state"));
    assert_eq!(code, Some(0), "{out}{err}");
    let tail = poll_until(DEADLINE, || {
        let bytes = fs::read(&segment).unwrap_or_else(|e| panic!("{e}"));
        bytes[queued_len as usize..]
            .iter()
            .all(|&b| b == 0)
            .then_some(bytes.len())
    });
    assert!(
        tail.is_some(),
        "the cut bytes were not wiped after the snapshot"
    );
}

/// A snapshot client that stops reading is let go after `--client-timeout`, and with it the
/// snapshot slot (every deletion and wipe waits while one is held): earlier builds held it for
/// three timeouts and more, as the kernel took a few more bytes of each retried write.
#[test]
fn a_snapshot_client_that_stops_reading_is_let_go_after_the_client_timeout() {
    const TIMEOUT: u64 = 4;
    let worker = FakeWorker::start_with(roomy(Duration::ZERO));
    let timeout = TIMEOUT.to_string();
    let args = [&FAST[..], &["--client-timeout", timeout.as_str()]].concat();
    let (coordinator, _segment) = with_a_queued_upload_segment(&worker, &args);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", coordinator.port()))
        .unwrap_or_else(|e| panic!("{e}"));
    std::io::Write::write_all(
        &mut client,
        b"GET /snapshot HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut head = [0u8; 1024];
    let n = client.read(&mut head).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    // From here on it reads nothing.
    let stopped = Instant::now();
    assert!(
        coordinator.wait_for_log("The answer to GET /snapshot broke off part-way", DEADLINE),
        "{}",
        coordinator.logs()
    );
    let held = stopped.elapsed();
    assert!(
        held < Duration::from_secs(TIMEOUT * 7 / 4),
        "the stalled snapshot was let go after {held:?} under --client-timeout {TIMEOUT}"
    );
    let (code, archive) = get_bytes(&coordinator.url("/snapshot"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&archive));
    drop(client);
}

/// How many segment files a `check --state-dir` report says records point into.
fn segment_files(report: &str) -> usize {
    let line = report
        .lines()
        .find_map(|l| l.strip_prefix("segments: records point into "))
        .unwrap_or_else(|| panic!("no segment count in {report}"));
    let numbers: Vec<usize> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    numbers.iter().sum()
}

/// Snapshots taken while jobs run, retention forgets them and dispatch frees upload segments:
/// every segment byte each snapshot's job store points to is in its archive (segment
/// deletions wait while the store is copied and the segments opened).
#[test]
fn snapshots_under_load_hold_every_segment_byte_their_store_points_to() {
    let worker = FakeWorker::start_with(roomy(Duration::from_millis(20)));
    let args = [
        &FAST[..],
        &[
            "--row-results-max",
            "0",
            "--retain-jobs",
            "5",
            "--upload-memory-bytes",
            "0",
        ],
    ]
    .concat();
    let coordinator = Coordinator::start(&[worker.entry(4)], &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    // 32 MiB of ballast in a table of its own: each copy of the store takes as long as a large
    // store's does, and upload segments are freed while it is made.
    let db = coordinator.state_dir().join("jobs.db");
    let ballast = rusqlite::Connection::open(db).unwrap_or_else(|e| panic!("{e}"));
    ballast
        .execute_batch(
            "CREATE TABLE ballast AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2048) SELECT randomblob(16384) AS b FROM n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    drop(ballast);
    let stop = Arc::new(AtomicBool::new(false));
    let url = coordinator.url("/submit");
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (url, base, stop) = (url.clone(), coordinator.url(""), Arc::clone(&stop));
            thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let padding = vec![c as u8; 70 << 10];
                    let form = job(&format!("load {c} {n}")).file(
                        "data.bin",
                        "application/octet-stream",
                        &padding,
                    );
                    let id = submit_to(&url, &form);
                    let (code, _) = get(&format!("{base}/status/{id}?wait=30"));
                    assert_eq!(code, 200, "job {id}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut checked = 0;
    for round in 0..12 {
        let (code, archive) = get_bytes(&coordinator.url("/snapshot"));
        assert_eq!(
            code,
            200,
            "snapshot {round}: {}",
            String::from_utf8_lossy(&archive)
        );
        let dir = support::temp_dir();
        support::untar_gz_into(&archive, &dir.path().join("state"));
        // `check --state-dir` names each job whose segment bytes are not all there.
        let (code, out, err) = support::check_state_dir(&dir.path().join("state"));
        assert_eq!(code, Some(0), "snapshot {round}: {out}{err}");
        checked += segment_files(&out);
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    let submitted: u32 = clients
        .into_iter()
        .map(|c| c.join().unwrap_or_else(|_| panic!("a client failed")))
        .sum();
    assert!(
        checked > 12 && submitted > 100,
        "{checked} segments checked, {submitted} jobs"
    );
    let forgotten = store_figures(&coordinator)["retention"]["forgotten_jobs"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        forgotten > 0,
        "retention forgot nothing: {}",
        store_figures(&coordinator)
    );
}
