//! The job store's integrity check on a store too large to check before serving: the
//! coordinator serves at once, checks it in the background, and stops with exit 1 and the
//! integrity-check message when it fails (a small store is checked before serving: see
//! tests/durability.rs).

mod support;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::{get_json, write_workers_json, Coordinator, FakeWorker};
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
