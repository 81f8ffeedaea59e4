//! The job store's integrity check on a store too large to check before serving: the
//! coordinator serves at once, checks it in the background, and stops with exit 1 and the
//! integrity-check message when it fails (a small store is checked before serving: see
//! tests/durability.rs). And `trusted-pool check --state-dir`, on an unpacked snapshot.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use support::lifecycle::{drain_url, submit, wait_collected, wait_healthy};
use support::{
    check_state_dir, check_state_dir_with, get_bytes, get_json, poll_until, post, temp_dir,
    untar_gz_into, write_workers_json, Coordinator, FakeWorker, Form,
};
use trusted_pool::base::config::FsyncMode;
use trusted_pool::base::job::{Job, PoolStatus};
use trusted_pool::store::handoff::DEFERRAL;
use trusted_pool::store::jobs_db::{JobStore, Record, Retention, CHECK_AT_START_BYTES};
use trusted_pool::store::segments::Segments;

const DEADLINE: Duration = Duration::from_secs(60);
/// Finished jobs written, each with a 1 MiB blob, so the store outgrows the start-up check.
const BIG_JOBS: u64 = CHECK_AT_START_BYTES / (1024 * 1024) + 4;

/// Writes `BIG_JOBS` cancelled jobs with a 1 MiB upload each into `state`'s job store.
fn fill_big_store(state: &Path) {
    let results = state.join("results");
    let segments = Segments::open(results.clone(), "t".to_string(), false, Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let retention = Retention {
        jobs: u64::MAX,
        for_secs: 1e12,
        bytes: 0,
        results_dir: results,
        segments: Arc::new(segments),
    };
    let (store, _) =
        JobStore::open(state, FsyncMode::Off, retention).unwrap_or_else(|e| panic!("{e}"));
    let blob: Arc<[u8]> = vec![0x5a; 1024 * 1024].into();
    for n in 0..BIG_JOBS {
        let mut job = Job::new(format!("pool-{n:032x}"), Vec::new(), None, 1000.0);
        job.status = PoolStatus::Cancelled;
        job.completed_at = Some(1001.0);
        store
            .send_and_wait(Record {
                job: Box::new(job),
                insert: true,
                upload: Some(Arc::clone(&blob)),
                done: None,
                sync_first: None,
                retry: false,
                within: DEFERRAL,
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    store.close();
}

#[test]
fn a_large_store_is_checked_while_serving_and_a_corrupted_one_stops_the_coordinator() {
    let dir = support::temp_dir();
    let worker = FakeWorker::start();
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let state = dir.path().join("state");
    fill_big_store(&state);
    let db = state.join("jobs.db");
    let size = fs::metadata(&db).map_or(0, |m| m.len());
    assert!(size > CHECK_AT_START_BYTES, "the store has {size} bytes");

    let mut coordinator = Coordinator::start_in(dir.path(), &[]);
    let (status, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(status, 200, "{pool}");
    assert_eq!(pool["jobs_by_status"]["cancelled"], BIG_JOBS, "{pool}");
    assert!(
        coordinator.wait_for_log("integrity check passed", DEADLINE),
        "{}",
        coordinator.logs()
    );
    assert!(coordinator.is_running());
    coordinator.terminate(DEADLINE);

    // Overwrite one page in the middle of the file (an overflow page of a blob).
    let mut bytes = fs::read(&db).unwrap_or_else(|e| panic!("{e}"));
    let page = (bytes.len() / 2) / 4096 * 4096;
    for b in &mut bytes[page..page + 4096] {
        *b = 0xa5;
    }
    fs::write(&db, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let logs = match Coordinator::try_start_in(dir.path(), &[]) {
        Ok(mut coordinator) => {
            let status = coordinator.wait_exit(DEADLINE);
            assert_eq!(
                status.and_then(|s| s.code()),
                Some(1),
                "{}",
                coordinator.logs()
            );
            coordinator.logs()
        }
        Err(refused) => refused,
    };
    assert!(logs.contains("integrity check"), "{logs}");
    assert!(logs.contains("jobs.db"), "{logs}");
}

/// The names and sizes of the files under `dir`.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(at) = dirs.pop() {
        for entry in fs::read_dir(&at).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let len = entry.metadata().map_or(0, |m| m.len());
                files.push((path.display().to_string(), len));
            }
        }
    }
    files.sort();
    files
}

/// `check --state-dir` refuses a directory a coordinator runs on, passes an unpacked snapshot
/// without changing a file of it, and names every job whose results or upload a damaged copy
/// lost: the jobs a restore could not serve or run.
#[test]
fn check_state_dir_names_every_job_a_damaged_snapshot_could_not_serve_or_run() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &["--row-results-max", "0", "--health-interval", "1"],
    );
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let small = |n: usize| {
        Form::new().file(
            "main.py",
            "text/x-python",
            format!("print({n})\n").as_bytes(),
        )
    };
    let finished: Vec<String> = (0..3).map(|n| submit(&coordinator, &small(n))).collect();
    for id in &finished {
        wait_collected(&coordinator, id, DEADLINE);
    }
    let (code, body) = post(&drain_url(&coordinator, &worker, "drain"), "", b"");
    assert_eq!(code, 200, "{body}");
    let padded =
        |n: u8| small(usize::from(n)).file("data.bin", "application/octet-stream", &[n; 100 << 10]);
    let on_disk: Vec<String> = (7..9).map(|n| submit(&coordinator, &padded(n))).collect();
    let in_row = submit(&coordinator, &small(9));

    let (code, _, err) = check_state_dir(&coordinator.state_dir());
    assert_eq!(code, Some(1), "{err}");
    let pid = coordinator.pid();
    assert!(
        err.contains(&format!("in use by a running trusted-pool (process {pid})")),
        "{err}"
    );

    let (code, archive) = get_bytes(&coordinator.url("/snapshot"));
    assert_eq!(code, 200);
    let dir = temp_dir();
    let state = dir.path().join("state");
    untar_gz_into(&archive, &state);
    let before = listing(&state);
    let (code, out, err) = check_state_dir(&state);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("jobs: 6 in all: 3 completed, 3 queued"),
        "{out}"
    );
    assert!(
        out.contains("1 results and 1 upload segment files"),
        "{out}"
    );
    assert!(out.contains("OK"), "{out}");
    assert_eq!(listing(&state), before, "the check changed the directory");

    // A results segment cut short and an upload segment lost: each of their jobs is named.
    for (folder, damage) in [("results", Some(10)), ("uploads", None)] {
        for entry in fs::read_dir(state.join(folder))
            .into_iter()
            .flatten()
            .flatten()
        {
            match damage {
                Some(len) => fs::OpenOptions::new()
                    .write(true)
                    .open(entry.path())
                    .and_then(|f| f.set_len(len))
                    .unwrap_or_else(|e| panic!("{e}")),
                None => fs::remove_file(entry.path()).unwrap_or_else(|e| panic!("{e}")),
            }
        }
    }
    let (code, out, err) = check_state_dir(&state);
    assert_eq!(code, Some(1), "{out}{err}");
    for id in &finished {
        assert!(
            err.contains(&format!("job {id} (completed): results/")),
            "{id}: {err}"
        );
    }
    for id in &on_disk {
        assert!(
            err.contains(&format!("job {id} (queued): uploads/")),
            "{id}: {err}"
        );
        assert!(err.contains("is missing"), "{err}");
    }
    assert!(
        !err.contains(&in_row),
        "the upload in its row is there: {err}"
    );
    assert!(err.contains("5 jobs cannot be served or run"), "{err}");
}

/// A snapshot of a coordinator that ran `jobs` jobs each with an output `data.bin` of 4 KiB of
/// byte `n` (its job's number) and collected their results (in segments with `segments`, else
/// in their rows): the directory holding it under `state`, and the job ids.
fn snapshot_of_collected_jobs(jobs: u8, segments: bool) -> (tempfile::TempDir, Vec<String>) {
    let worker = FakeWorker::start();
    let flags: &[&str] = if segments {
        &["--row-results-max", "0"]
    } else {
        &[]
    };
    let coordinator = Coordinator::start(&[worker.entry(2)], flags);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let ids: Vec<String> = (1..=jobs)
        .map(|n| {
            let form = Form::new()
                .file("main.py", "text/x-python", b"print(1)\n")
                .file("data.bin", "application/octet-stream", &[n; 4096])
                .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#);
            submit(&coordinator, &form)
        })
        .collect();
    for id in &ids {
        wait_collected(&coordinator, id, DEADLINE);
    }
    // A job's end is recorded in the store a moment after it shows.
    let db = coordinator.state_dir().join("jobs.db");
    let recorded = poll_until(DEADLINE, || {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let conn = rusqlite::Connection::open_with_flags(&db, flags).ok()?;
        let completed: u64 = conn
            .query_row(
                "SELECT count(*) FROM jobs WHERE status = 'completed'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        (completed == u64::from(jobs)).then_some(())
    });
    assert!(
        recorded.is_some(),
        "the store never recorded the jobs' ends"
    );
    let (code, archive) = get_bytes(&coordinator.url("/snapshot"));
    assert_eq!(code, 200);
    let dir = temp_dir();
    untar_gz_into(&archive, &dir.path().join("state"));
    (dir, ids)
}

/// `check --state-dir --verify-outputs` reads every collected output back: a byte changed in a
/// results segment or in a row's results names its job and output, which the check of lengths
/// alone cannot see.
#[test]
fn verify_outputs_names_each_output_whose_bytes_changed_on_disk() {
    let (dir, ids) = snapshot_of_collected_jobs(2, true);
    let state = dir.path().join("state");
    let (code, out, err) = check_state_dir_with(&state, &["--verify-outputs"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("outputs: 4 collected outputs ("), "{out}");
    assert!(
        out.contains("every output hashes as it is served, OK"),
        "{out}"
    );

    // The second job's data.bin, 4 KiB of byte 2, gets one byte changed.
    let segment = fs::read_dir(state.join("results"))
        .into_iter()
        .flatten()
        .flatten()
        .next()
        .map(|e| e.path())
        .unwrap_or_else(|| panic!("no results segment"));
    let mut bytes = fs::read(&segment).unwrap_or_else(|e| panic!("{e}"));
    let at = bytes
        .windows(4096)
        .position(|w| w.iter().all(|&b| b == 2))
        .unwrap_or_else(|| panic!("data.bin is not in {}", segment.display()));
    bytes[at + 100] ^= 0xff;
    fs::write(&segment, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let (code, out, err) = check_state_dir(&state);
    assert_eq!(code, Some(0), "the lengths alone pass: {out}{err}");
    let (code, out, err) = check_state_dir_with(&state, &["--verify-outputs"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let name = segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let wrong = format!(
        "job {} (completed): output \"data.bin\" (results/{} bytes {at}..{}) hashes to sha256 ",
        ids[1],
        name.unwrap_or_default(),
        at + 4096
    );
    assert!(err.contains(&wrong), "{wrong}\n{err}");
    assert!(!err.contains(&ids[0]), "{err}");
    assert!(
        err.contains("it is served under (its worker declared)"),
        "{err}"
    );
    assert!(
        err.contains("1 jobs cannot be served or run from it as their records say, or serve outputs whose bytes changed"),
        "{err}"
    );

    // Results held in the job's row.
    let (dir, ids) = snapshot_of_collected_jobs(1, false);
    let state = dir.path().join("state");
    let db = rusqlite::Connection::open(state.join("jobs.db")).unwrap_or_else(|e| panic!("{e}"));
    let results: Vec<u8> = db
        .query_row("SELECT results FROM jobs WHERE id = ?1", [&ids[0]], |r| {
            r.get(0)
        })
        .unwrap_or_else(|e| panic!("the job's results are not in its row: {e}"));
    let at = results
        .windows(4096)
        .position(|w| w.iter().all(|&b| b == 1))
        .unwrap_or_else(|| panic!("data.bin is not in the row"));
    let mut changed = results.clone();
    changed[at] ^= 0xff;
    db.execute(
        "UPDATE jobs SET results = ?1 WHERE id = ?2",
        rusqlite::params![changed, ids[0]],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    drop(db);
    let (code, out, err) = check_state_dir_with(&state, &["--verify-outputs"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let wrong = format!(
        "job {} (completed): output \"data.bin\" (in its row) hashes to sha256 ",
        ids[0]
    );
    assert!(err.contains(&wrong), "{wrong}\n{err}");
}

/// The user id the coordinator runs as in the ownership test: `nobody`.
const OTHER_UID: u32 = 65534;

/// Why this test process cannot start the coordinator as another user on the temp dir `dir`,
/// if it cannot: it must run as root, and that user must reach `dir` (a `TMPDIR` under root's
/// 0700 home would keep it out).
fn cannot_run_as_another_user(dir: &Path) -> Option<String> {
    // SAFETY: `geteuid` cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the test must run as root to start the coordinator as another user".into());
    }
    let above = dir.parent().unwrap_or(dir);
    unsearchable_by_other(above).map(|folder| {
        format!(
            "uid {OTHER_UID} cannot reach the temp dir {}: {} is not searchable by it (set TMPDIR \
             to a folder other users may enter)",
            dir.display(),
            folder.display()
        )
    })
}

/// The first of `path` and the folders above it that `OTHER_UID` may not search (or, for a
/// file, run): no execute bit for that user; `None` when it reaches and may run `path`.
fn unsearchable_by_other(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    path.ancestors()
        .find(|folder| {
            let Ok(meta) = fs::metadata(folder) else {
                return true;
            };
            let bit = if meta.uid() == OTHER_UID {
                0o100
            } else if meta.gid() == OTHER_UID {
                0o010
            } else {
                0o001
            };
            meta.mode() & bit == 0
        })
        .map(Path::to_path_buf)
}

/// The coordinator binary as `OTHER_UID` may run it: cargo's, or a link to it (a copy across
/// filesystems) in `dir` where a folder above cargo's keeps that user out, as root's 0700 home
/// does a clone made there.
fn binary_for_other(dir: &Path) -> PathBuf {
    let built = Path::new(env!("CARGO_BIN_EXE_trusted-pool"));
    let Some(folder) = unsearchable_by_other(built) else {
        return built.to_path_buf();
    };
    eprintln!(
        "uid {OTHER_UID} cannot run {} ({} is not searchable by it): running a link to it in {}",
        built.display(),
        folder.display(),
        dir.display()
    );
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("{e}"));
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("{e}"));
    let program = bin.join("trusted-pool");
    if fs::hard_link(built, &program).is_err() {
        fs::copy(built, &program).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
    }
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    program
}

/// Starts the coordinator `program` on `dir` as `OTHER_UID`.
fn start_as_other(program: &Path, dir: &Path) -> Result<Coordinator, String> {
    Coordinator::try_start_program_in_with(program, dir, &[], |command| {
        command.uid(OTHER_UID).gid(OTHER_UID);
    })
}

/// Gives `path` and everything under it to `uid`.
fn chown_all(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap_or_else(|e| panic!("{e}"));
    if path.is_dir() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            chown_all(&entry.path(), uid);
        }
    }
}

/// Asserts that a start refused for `jobs.db` owned by root says so and how to fix it, and
/// never advises moving the job history away.
fn assert_refused_for_ownership(refused: Result<Coordinator, String>, state: &Path) {
    let why = match refused {
        Ok(_) => panic!("the coordinator started on a job store it may not write"),
        Err(why) => why,
    };
    // Exit code 1, as the status's debug text says it.
    assert!(
        why.contains("exit status: 1") || why.contains("unix_wait_status(256)"),
        "{why}"
    );
    for part in [
        format!("{}/jobs.db cannot be written", state.display()),
        format!("runs as uid {OTHER_UID}"),
        "owned by uid 0, mode 0644".to_string(),
        format!("chown -R nobody {}", state.display()),
    ] {
        assert!(why.contains(&part), "{part:?} missing: {why}");
    }
    for wrong in ["away", "not a job store", "disk fails"] {
        assert!(!why.contains(wrong), "{wrong:?} said: {why}");
    }
}

/// A state directory restored as root (a snapshot unpacked without the `chown` after it) for a
/// coordinator that runs as another user: a job store it may not write is refused at start with
/// exit 1, naming the file, its owner and mode, the user the coordinator runs as and the
/// `chown` that fixes it, both before the store is in WAL mode and after (it used to be called
/// "not a job store this trusted-pool can read", with advice to move the job history away, or
/// to start and then refuse every submit as if the disk failed). `check` says the same of a
/// file it may not read. After the `chown`, it starts with its job history.
#[test]
fn a_state_dir_restored_as_another_user_is_refused_naming_the_owner_and_the_chown() {
    let dir = temp_dir();
    if let Some(why) = cannot_run_as_another_user(dir.path()) {
        eprintln!("skipped: {why}");
        return;
    }
    let program = binary_for_other(dir.path());
    let worker = FakeWorker::start();
    write_workers_json(dir.path(), &[worker.entry(1)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &["--health-interval", "1"]);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let form = Form::new().file("main.py", "text/x-python", b"print(1)\n");
    let id = submit(&coordinator, &form);
    wait_collected(&coordinator, &id, DEADLINE);
    assert!(coordinator.terminate(DEADLINE).is_some(), "it did not stop");
    drop(coordinator);

    let state = dir.path().join("state");
    let db = state.join("jobs.db");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    chown_all(dir.path(), OTHER_UID);
    let root_owned = || {
        std::os::unix::fs::chown(&db, Some(0), Some(0)).unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
    };
    // In WAL mode, the directory writable, jobs.db root's.
    root_owned();
    assert_refused_for_ownership(start_as_other(&program, dir.path()), &state);
    // Not in WAL mode yet (as a store copied with its journal mode changed).
    rusqlite::Connection::open(&db)
        .and_then(|c| {
            c.query_row("PRAGMA journal_mode = DELETE", [], |r| {
                r.get::<_, String>(0)
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    root_owned();
    assert_refused_for_ownership(start_as_other(&program, dir.path()), &state);

    // `check` as that user, of a file it may not read.
    fs::set_permissions(&db, fs::Permissions::from_mode(0o600)).unwrap_or_else(|e| panic!("{e}"));
    let output = std::process::Command::new(&program)
        .arg("check")
        .arg("--state-dir")
        .arg(&state)
        .uid(OTHER_UID)
        .gid(OTHER_UID)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the check: {e}"));
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("jobs.db cannot be read by this check")
            && err.contains("owned by uid 0, mode 0600"),
        "{err}"
    );

    // The fix the message gives: the job history is all there.
    chown_all(&state, OTHER_UID);
    let coordinator = start_as_other(&program, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let (_, status) = get_json(&coordinator.url(&format!("/status/{id}")));
    assert_eq!(status["pool_status"], "completed", "{status}");
}

/// `check --state-dir` given a file says so, not that a lock file "cannot be read: Not a
/// directory".
#[test]
fn check_state_dir_given_a_file_says_it_is_no_directory() {
    let dir = support::temp_dir();
    let file = dir.path().join("jobs.db");
    std::fs::write(&file, b"").unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = check_state_dir(&file);
    assert_eq!(code, Some(1), "{err}");
    let needle = format!("{} is a file, not a state directory", file.display());
    assert!(err.contains(&needle), "{err}");
}
