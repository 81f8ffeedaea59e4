//! Seeded, bounded fuzzing of every reader of the state directory, on a store a real run made:
//! the job store (`jobs.db` and its `-wal` file: random bytes, truncations, flipped bytes, rows
//! whose record is garbage) and the segment files (torn tails, garbage, missing files, records
//! pointing past their end). Start must refuse with an error naming the file, or start and serve
//! every readable job; never a panic or a hang; a bad row is a clean error for its job only.
//! `make fuzz` runs the loops longer (TP_FUZZ_ITERATIONS, TP_FUZZ_SECONDS).

mod support;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use trusted_pool::base::config::{FsyncMode, ServeConfig};
use trusted_pool::base::job::{Collection, Job, StoredResults};
use trusted_pool::pool::recovery;
use trusted_pool::state::context::Context;
use trusted_pool::state::pool_state::PoolState;
use trusted_pool::store::jobs_db::{JobStore, ListFilter, Retention};
use trusted_pool::store::spool::Spool;

use support::fuzz::{mutate, run, Rng};
use support::lifecycle::{submit, wait_collected, wait_healthy};
use support::{get, poll_until, temp_dir, Coordinator, FakeWorker, Form, Knobs};

const DEADLINE: Duration = Duration::from_secs(60);
/// The longest one damaged store may take to open and be read in process.
const HANG: Duration = Duration::from_secs(30);

/// A state directory made by real runs: settled jobs with collected results, and queued jobs
/// (held uploads and one in an upload segment) left by a `kill -9`, so a WAL is there too.
struct Seed {
    dir: tempfile::TempDir,
    collected: Vec<String>,
    queued: Vec<String>,
}

impl Seed {
    fn ids(&self) -> impl Iterator<Item = &String> {
        self.collected.iter().chain(&self.queued)
    }
}

fn job(token: &str, padding: usize) -> Form {
    Form::new()
        .file(
            "main.py",
            "text/x-python",
            format!("print('{token}')\n").as_bytes(),
        )
        .file("data.bin", "application/octet-stream", &vec![b'd'; padding])
}

fn workers_json(dir: &Path, worker: &FakeWorker, drain: bool) {
    let entry = serde_json::json!([{
        "worker_id": worker.worker_id(),
        "endpoint": worker.endpoint(),
        "max_concurrent_jobs": 4,
        "drain": drain,
    }]);
    fs::write(dir.join("workers.json"), entry.to_string()).unwrap_or_else(|e| panic!("{e}"));
}

fn make_seed() -> Seed {
    let dir = temp_dir();
    let worker = FakeWorker::start_with(|k: &mut Knobs| {
        k.max_active_per_ip = 1000;
        k.max_jobs_per_hour = 1_000_000;
        k.cpu_seconds_per_minute = 1e9;
        k.poll_interval = Duration::from_millis(5);
    });
    workers_json(dir.path(), &worker, false);
    let fast = ["--health-interval", "1", "--track-interval", "0.05"];
    // Two jobs' results held in their rows, then two in a results segment.
    let segments = ["--row-results-max", "0"];
    let mut collected = Vec::new();
    for flags in [&fast[..], &[&fast[..], &segments[..]].concat()] {
        let mut first = Coordinator::start_in(dir.path(), flags);
        wait_healthy(&first, &[&worker], DEADLINE);
        let ids: Vec<String> = (0..2)
            .map(|i| submit(&first, &job(&format!("seed {} {i}", collected.len()), 10)))
            .collect();
        for id in &ids {
            wait_collected(&first, id, DEADLINE);
        }
        first.terminate(DEADLINE);
        collected.extend(ids);
    }
    // A drained worker takes nothing: the next jobs stay queued, one upload in a segment.
    workers_json(dir.path(), &worker, true);
    let mut second = Coordinator::start_in(dir.path(), &fast);
    let queued: Vec<String> = [10, 20, 100 * 1024]
        .iter()
        .enumerate()
        .map(|(i, padding)| submit(&second, &job(&format!("queued {i}"), *padding)))
        .collect();
    second.kill();
    Seed {
        dir,
        collected,
        queued,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for entry in fs::read_dir(from)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
    {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

const RECORD_TOKENS: [&[u8]; 12] = [
    b"{",
    b"}",
    b"\"",
    b",",
    b"null",
    b"-1",
    b"18446744073709551615",
    b"99999999999999999999",
    b"\"../../etc/passwd\"",
    b"\"segment\":\"x\"",
    b"\xff",
    b"\\u0000",
];

/// Damages a file: random bytes, a truncation, flipped bytes, garbage appended, or removal.
fn damage_file(rng: &mut Rng, path: &Path) -> String {
    let Ok(mut bytes) = fs::read(path) else {
        return format!("{} absent", path.display());
    };
    let what = match rng.below(5) {
        0 => {
            let len = rng.below(70_000);
            bytes = random_bytes(rng, len);
            "random bytes"
        }
        1 => {
            bytes.truncate(rng.below(bytes.len() + 1));
            "truncated"
        }
        2 => {
            for _ in 0..=rng.below(16) {
                if !bytes.is_empty() {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            "flipped bytes"
        }
        3 => {
            let len = rng.below(5000);
            let garbage = random_bytes(rng, len);
            bytes.extend(garbage);
            "garbage appended"
        }
        _ => {
            let _ = fs::remove_file(path);
            return format!("{} removed", path.display());
        }
    };
    fs::write(path, &bytes).unwrap_or_else(|e| panic!("{e}"));
    format!("{} {what}", path.display())
}

/// Damages one job's row through SQLite (the file stays a sound database).
fn damage_row(rng: &mut Rng, db: &Path, ids: &[&String]) -> String {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return "no database".to_string();
    };
    let id = *rng.pick(ids);
    let record: String = conn
        .query_row("SELECT record FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .unwrap_or_default();
    let other = ids
        .iter()
        .find(|other| **other != id)
        .map(|o| o.to_string())
        .unwrap_or_default();
    let (sql, value): (&str, rusqlite::types::Value) = match rng.below(6) {
        0 => {
            let mut bytes = record.into_bytes();
            mutate(rng, &mut bytes, &RECORD_TOKENS);
            (
                "UPDATE jobs SET record = ?1 WHERE id = ?2",
                String::from_utf8_lossy(&bytes).into_owned().into(),
            )
        }
        1 => (
            "UPDATE jobs SET record = ?1 WHERE id = ?2",
            random_bytes(rng, 40).into(),
        ),
        2 => (
            "UPDATE jobs SET record = ?1 WHERE id = ?2",
            rusqlite::types::Value::Integer(rng.next() as i64),
        ),
        3 => (
            "UPDATE jobs SET record = (SELECT record FROM jobs WHERE id = ?1) WHERE id = ?2",
            other.into(),
        ),
        4 => (
            "UPDATE jobs SET status = ?1, upload = upload || x'00' WHERE id = ?2",
            rusqlite::types::Value::Integer(7),
        ),
        _ => {
            // Offsets and sizes past any segment's end (or past u64: a record serde refuses).
            let prefix = if rng.below(2) == 0 {
                "99999999999"
            } else {
                "18446744073709551615"
            };
            let field = *rng.pick(&["\"offset\":", "\"size\":", "\"base\":"]);
            (
                "UPDATE jobs SET record = ?1 WHERE id = ?2",
                record.replace(field, &format!("{field}{prefix}")).into(),
            )
        }
    };
    let changed = conn.execute(sql, rusqlite::params![value, id]);
    format!("row of {id}: {sql} ({changed:?})")
}

/// A copy of the seed's state directory with one to three damages; says what was done.
fn damaged_copy(rng: &mut Rng, seed: &Seed, to: &Path) -> Vec<String> {
    copy_dir(seed.dir.path(), to);
    let state = to.join("state");
    let ids: Vec<&String> = seed.ids().collect();
    let mut done = Vec::new();
    for _ in 0..=rng.below(2) {
        let what = match rng.below(5) {
            0 => damage_file(rng, &state.join("jobs.db")),
            1 => damage_file(rng, &state.join("jobs.db-wal")),
            2 => damage_row(rng, &state.join("jobs.db"), &ids),
            3 => match files_under(&state.join("results")) {
                files if files.is_empty() => "no results segment".to_string(),
                files => {
                    let file = rng.pick(&files).clone();
                    damage_file(rng, &file)
                }
            },
            _ => match files_under(&state.join("uploads")) {
                files if files.is_empty() => "no upload segment".to_string(),
                files => {
                    let file = rng.pick(&files).clone();
                    damage_file(rng, &file)
                }
            },
        };
        done.push(what);
    }
    done
}

fn retention(spool: &Spool) -> Retention {
    let (results_dir, segments) = spool.results_segments();
    Retention {
        jobs: 1000,
        for_secs: 1e9,
        bytes: 0,
        results_dir,
        segments,
    }
}

/// Reads every span a stored job points to: an error, or exactly the bytes it says.
fn read_results(spool: &Spool, store: &JobStore, job: &Job) {
    let Collection::Collected(stored) = &job.collection else {
        return;
    };
    let mut stored = StoredResults::clone(stored);
    if stored.in_row {
        match store.row_results(&job.id) {
            Ok(bytes) => stored.row_bytes = bytes,
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    let spans = stored.outputs.iter().map(|(_, span)| *span);
    for span in spans.chain([stored.logs]) {
        if let Ok(mut reader) = spool.open_results(&stored, span) {
            let mut bytes = Vec::new();
            if reader.read_to_end(&mut bytes).is_ok() {
                assert_eq!(bytes.len() as u64, span.size, "a short read was served");
            }
        }
    }
}

/// Opens the damaged store in process the way start-up does, reads every job, recovers.
fn open_and_read(state: &Path, ids: &[String]) -> Result<usize, String> {
    let spool = Spool::open(state, 1 << 20).map_err(|e| format!("spool: {e}"))?;
    let (store, unsettled) = match JobStore::open(state, FsyncMode::Off, retention(&spool)) {
        Ok(opened) => opened,
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains("jobs.db"),
                "the file is not named: {message}"
            );
            return Err(message);
        }
    };
    for id in ids {
        match store.load(id) {
            Ok(Some(job)) => read_results(&spool, &store, &job),
            Ok(None) => {}
            Err(e) => assert!(e.to_string().contains(id.as_str()), "{e}"),
        }
    }
    if let Err(e) = store.list(&ListFilter::default(), None, 100) {
        assert!(!e.to_string().is_empty());
    }
    let recovered = unsettled.len();
    let (ctx, _signals) = Context::new(
        ServeConfig {
            state_dir: state.to_path_buf(),
            ..ServeConfig::default()
        },
        PoolState::new(Vec::new(), Instant::now()),
        spool,
        store,
    );
    let ctx = Arc::new(ctx);
    ctx.attach();
    recovery::recover(&ctx, unsettled);
    ctx.store.close();
    Ok(recovered)
}

#[test]
fn damaged_state_directories_open_cleanly_or_are_refused_naming_the_file() {
    let seed = make_seed();
    let ids: Vec<String> = seed.ids().cloned().collect();
    let (mut opened, mut refused) = (0, 0);
    let scratch = temp_dir();
    run("state dir (in process)", 0x5EED_0006, 400, 20, |rng| {
        let dir = scratch.path().join(format!("{:x}", rng.next()));
        let damage = damaged_copy(rng, &seed, &dir);
        let state = dir.join("state");
        let ids = ids.clone();
        let (sender, outcome) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let result = std::panic::catch_unwind(|| open_and_read(&state, &ids));
            let _ = sender.send(result);
        });
        match outcome.recv_timeout(HANG) {
            Ok(Ok(Ok(_))) => opened += 1,
            Ok(Ok(Err(_))) => refused += 1,
            Ok(Err(_)) => panic!("a reader panicked on {damage:?}"),
            Err(_) => panic!("opening hung for {HANG:?} on {damage:?}"),
        }
        let _ = fs::remove_dir_all(&dir);
    });
    eprintln!("fuzz state dir (in process): {opened} opened, {refused} refused");
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused"
    );
}

/// The answers a damaged store may give about one job: served, unknown, not ready, or a 500
/// that says what is wrong.
fn check_answer(what: &str, code: u16, body: &str, damage: &[String]) {
    let clean = match code {
        200 | 404 | 409 => true,
        500 => serde_json::from_str::<Value>(body).is_ok_and(|v| v["error"].is_string()),
        _ => false,
    };
    assert!(clean, "{what} answered {code} {body:?} after {damage:?}");
}

#[test]
fn the_real_binary_on_a_damaged_state_directory_refuses_or_serves_every_readable_job() {
    let seed = make_seed();
    let scratch = temp_dir();
    let (mut served, mut refused) = (0, 0);
    run("state dir (binary)", 0x5EED_0007, 40, 30, |rng| {
        let dir = scratch.path().join(format!("{:x}", rng.next()));
        let damage = damaged_copy(rng, &seed, &dir);
        let started = Instant::now();
        let coordinator = match Coordinator::try_start_in(&dir, &[]) {
            Ok(coordinator) => coordinator,
            Err(why) => {
                assert!(
                    why.contains("unix_wait_status(256)"),
                    "did not exit 1 (a hang is killed): {damage:?}: {why}"
                );
                assert!(!why.contains("panicked"), "{damage:?}: {why}");
                assert!(
                    why.contains("jobs.db") || why.contains("segment"),
                    "refused without naming the file after {damage:?}: {why}"
                );
                refused += 1;
                let _ = fs::remove_dir_all(&dir);
                return;
            }
        };
        served += 1;
        let (code, _) = get(&coordinator.url("/health"));
        assert_eq!(code, 200, "{damage:?}");
        let (code, body) = get(&coordinator.url("/jobs"));
        check_answer("/jobs", code, &body, &damage);
        for id in seed.ids() {
            for path in [
                format!("/status/{id}"),
                format!("/logs/{id}"),
                format!("/outputs/{id}"),
                format!("/outputs/{id}/result.txt"),
                format!("/download/{id}"),
            ] {
                let (code, body) = get(&coordinator.url(&path));
                check_answer(&path, code, &body, &damage);
            }
        }
        // Jobs no damage touched are still served.
        let intact = seed
            .collected
            .iter()
            .filter(|id| !damage.iter().any(|d| d.contains(id.as_str())))
            .filter(|_| damage.iter().all(|d| d.starts_with("row of")));
        for id in intact {
            let ok = poll_until(Duration::from_secs(10), || {
                (get(&coordinator.url(&format!("/status/{id}"))).0 == 200).then_some(())
            });
            assert!(ok.is_some(), "intact job {id} not served after {damage:?}");
        }
        let logs = coordinator.logs();
        assert!(!logs.contains("panicked"), "{damage:?}: {logs}");
        assert!(
            started.elapsed() < DEADLINE,
            "{damage:?} took {:?}",
            started.elapsed()
        );
        drop(coordinator);
        let _ = fs::remove_dir_all(&dir);
    });
    eprintln!("fuzz state dir (binary): {served} served, {refused} refused");
    assert!(served > 0, "{served} served, {refused} refused");
}
