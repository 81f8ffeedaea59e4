//! Where waiting uploads are kept: small ones in their job's store row, and in memory up to
//! `--upload-memory-bytes`; large ones in shared segment files in `<state_dir>/uploads`; either
//! way they reach the worker unchanged and nothing stays behind once a worker has them.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use serde_json::Value;

use support::lifecycle::{
    assert_no_uploads, assert_pool_consistent, submit, wait_collected, wait_healthy,
};
use support::{get, workers_dir, Coordinator, FakeWorker, Form};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);
const MANIFEST: &str = r#"{"entrypoint":"main.py"}"#;
const KIB: usize = 1024;
/// No upload held in memory (each waits in its row or a segment), quick probes and tracking.
const NO_UPLOAD_MEMORY: [&str; 6] = [
    "--upload-memory-bytes",
    "0",
    "--health-interval",
    "1",
    "--track-interval",
    "0.1",
];

/// A job whose `main.py` is `size` bytes, all of them `fill`.
fn job(size: usize, fill: u8) -> (Form, Vec<u8>) {
    let bytes = vec![fill; size];
    let form = Form::new()
        .file("main.py", "text/x-python", &bytes)
        .manifest(MANIFEST);
    (form, bytes)
}

/// The names in `<state_dir>/uploads`.
fn upload_files(coordinator: &Coordinator) -> BTreeSet<String> {
    let dir = coordinator.state_dir().join("uploads");
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// `/pool`'s spool figures.
fn spool(coordinator: &Coordinator) -> Value {
    assert_pool_consistent(coordinator)["spool"].clone()
}

/// Runs the queued jobs on `worker` (stopped until now) and checks each arrived byte for byte
/// and left nothing in the spool.
fn run_and_check(coordinator: &Coordinator, worker: &FakeWorker, jobs: &[(String, Vec<u8>)]) {
    worker.restart();
    wait_healthy(coordinator, &[worker], DEADLINE);
    for (id, bytes) in jobs {
        let status = wait_collected(coordinator, id, DEADLINE);
        let remote = status["remote_job_id"].as_str().unwrap_or_default();
        let sent = worker
            .recording()
            .job(remote)
            .map(|j| j.files[0].bytes.clone())
            .unwrap_or_else(|| panic!("the worker has no job {remote} ({status})"));
        assert!(sent == *bytes, "job {id} arrived changed");
        let (code, result) = get(&coordinator.url(&format!("/outputs/{id}/result.txt")));
        assert_eq!((code, result), (200, format!("result of {remote}\n")));
    }
    assert_no_uploads(coordinator, "an upload stayed after its worker took it");
}

#[test]
fn small_uploads_wait_in_memory_within_the_limit_and_the_rest_on_disk() {
    let worker = FakeWorker::start();
    worker.stop();
    let limit = 150 * KIB;
    let coordinator = Coordinator::start(
        &[worker.entry(4)],
        &[
            "--upload-memory-bytes",
            &limit.to_string(),
            "--health-interval",
            "1",
            "--track-interval",
            "0.1",
        ],
    );
    assert_eq!(spool(&coordinator)["upload_memory_limit"], limit);

    let mut jobs = Vec::new();
    let (mut held_bytes, mut disk_bytes) = (0, 0);
    let (big, big_bytes) = job(70 * KIB, b'a');
    disk_bytes += big_bytes.len() + MANIFEST.len();
    jobs.push((submit(&coordinator, &big), big_bytes));
    for fill in [b'b', b'c'] {
        let (form, bytes) = job(60 * KIB, fill);
        held_bytes += bytes.len() + MANIFEST.len();
        jobs.push((submit(&coordinator, &form), bytes));
    }
    let (over, over_bytes) = job(60 * KIB, b'd');
    disk_bytes += over_bytes.len() + MANIFEST.len();
    jobs.push((submit(&coordinator, &over), over_bytes));

    let figures = spool(&coordinator);
    assert_eq!(
        (&figures["uploads_in_memory"], &figures["uploads_on_disk"]),
        (&Value::from(2), &Value::from(2)),
        "the upload over 64 KiB and the one past the limit belong on disk, the others in memory: {figures}"
    );
    assert_eq!(figures["upload_memory_bytes"], held_bytes, "{figures}");
    assert_eq!(figures["upload_disk_bytes"], disk_bytes, "{figures}");
    assert_eq!(
        upload_files(&coordinator).len(),
        1,
        "the upload over 64 KiB is in a segment file, the one past the limit only in its row"
    );

    run_and_check(&coordinator, &worker, &jobs);
}

#[test]
fn with_no_upload_memory_small_uploads_wait_in_their_rows_and_large_ones_in_a_segment() {
    let worker = FakeWorker::start();
    worker.stop();
    let coordinator = Coordinator::start(&[worker.entry(2)], &NO_UPLOAD_MEMORY);
    let (small, small_bytes) = job(100, b'x');
    let small_id = submit(&coordinator, &small);
    assert_eq!(
        upload_files(&coordinator).len(),
        0,
        "a small upload needs no segment"
    );
    let (big, big_bytes) = job(70 * KIB, b'y');
    let big_id = submit(&coordinator, &big);
    assert_eq!(upload_files(&coordinator).len(), 1);
    let figures = spool(&coordinator);
    assert_eq!(figures["uploads_in_memory"], 0, "{figures}");
    assert_eq!(figures["uploads_on_disk"], 2, "{figures}");
    assert_eq!(
        figures["upload_disk_bytes"],
        small_bytes.len() + big_bytes.len() + 2 * MANIFEST.len(),
        "{figures}"
    );

    run_and_check(
        &coordinator,
        &worker,
        &[(small_id, small_bytes), (big_id, big_bytes)],
    );
}

#[test]
fn uploads_left_by_an_earlier_run_are_removed_at_start() {
    let worker = FakeWorker::start();
    let dir = workers_dir(&[worker.entry(2)]);
    // A store that knows no job (a state directory without one, beside segments, is refused).
    let mut first = Coordinator::start_in(dir.path(), &["--health-interval", "1"]);
    assert!(first
        .terminate(Duration::from_secs(60))
        .is_some_and(|s| s.success()));
    let uploads = dir.path().join("state").join("uploads");
    fs::create_dir_all(&uploads)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", uploads.display()));
    for name in ["1795900000-000001", "1795900000-000002"] {
        fs::write(uploads.join(name), b"an upload of a job that is gone")
            .unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
    }
    let coordinator = Coordinator::start_in(dir.path(), &["--health-interval", "1"]);
    assert_eq!(upload_files(&coordinator), BTreeSet::new());
    assert!(
        coordinator.logs().contains("Removed 2 upload files left"),
        "{}",
        coordinator.logs()
    );
}

/// An upload segment deleted while the coordinator runs takes no more uploads: the next large
/// upload goes into a new file, which a restart after `kill -9` reads, and its job completes.
#[test]
fn an_upload_segment_deleted_under_the_coordinator_takes_no_more_uploads() {
    let worker = FakeWorker::start();
    worker.stop();
    let dir = workers_dir(&[worker.entry(2)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &NO_UPLOAD_MEMORY);
    for fill in [b'a', b'b'] {
        submit(&coordinator, &job(70 * KIB, fill).0);
    }
    let uploads = coordinator.state_dir().join("uploads");
    for name in upload_files(&coordinator) {
        fs::remove_file(uploads.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let (third, third_bytes) = job(70 * KIB, b'c');
    let third_id = submit(&coordinator, &third);
    assert_eq!(
        upload_files(&coordinator).len(),
        1,
        "the upload went into the deleted segment"
    );
    assert!(coordinator.wait_for_log(
        "was deleted or replaced while the coordinator runs",
        DEADLINE
    ));

    coordinator.kill();
    let coordinator = Coordinator::start_in(dir.path(), &NO_UPLOAD_MEMORY);
    run_and_check(&coordinator, &worker, &[(third_id, third_bytes)]);
}

/// Files an operator left in the segment folders that are not segments (named otherwise, or
/// folders) are the operator's: at start they are named once in a warning and left alone,
/// never deleted or scrubbed. `results/notes.txt` used to be deleted at start with a debug
/// line only (and counted among the segments whose unreferenced bytes were punched out), and
/// `results/old/` gave `Could not delete ...: Is a directory` at every start.
#[test]
fn files_that_are_not_segments_in_the_segment_folders_are_named_and_left_alone() {
    let worker = FakeWorker::start();
    let dir = workers_dir(&[worker.entry(2)]);
    let args = ["--health-interval", "1", "--row-results-max", "0"];
    let mut coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let (form, _) = job(100, b'x');
    let id = submit(&coordinator, &form);
    wait_collected(&coordinator, &id, DEADLINE);
    assert!(coordinator.terminate(DEADLINE).is_some(), "it did not stop");
    drop(coordinator);
    let state = dir.path().join("state");
    let notes = b"the operator's notes\n";
    let strays = [
        state.join("results").join("notes.txt"),
        state.join("results").join("old").join("1795900000-000001"),
        state.join("uploads").join("README"),
    ];
    for path in &strays {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        fs::write(path, notes).unwrap_or_else(|e| panic!("{e}"));
    }

    let coordinator = Coordinator::start_in(dir.path(), &args);
    let named = |folder: &str, entries: &str| {
        format!(
            "{} holds {entries} that are not segments",
            state.join(folder).display()
        )
    };
    for needle in [
        named("results", "2 entries"),
        "<n>): notes.txt, old/. They are left alone".to_string(),
        named("uploads", "1 entries"),
        "<n>): README. They are left alone".to_string(),
    ] {
        assert!(
            coordinator.wait_for_log(&needle, DEADLINE),
            "{needle:?} not logged: {}",
            coordinator.logs()
        );
    }
    let (code, body) = get(&coordinator.url(&format!("/outputs/{id}")));
    assert_eq!(code, 200, "{body}");
    // The first retention sweep and the scrub have run by now.
    std::thread::sleep(Duration::from_secs(3));
    for path in &strays {
        let kept = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(kept, notes, "{} changed", path.display());
    }
    let logs = coordinator.logs();
    for wrong in ["Could not delete", "punched out", "Removed 1 upload files"] {
        assert!(!logs.contains(wrong), "{wrong:?}: {logs}");
    }
}
