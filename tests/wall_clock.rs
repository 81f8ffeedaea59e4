//! The coordinator under a wall clock that jumps (an NTP step on a board without a real-time
//! clock, an operator's `date -s`), its monotonic clock left as it is (libfaketime).

mod support;

use std::time::Duration;

use support::wall_clock::FakeClock;
use support::{send, workers_dir, Coordinator, FakeWorker};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);

/// A wall clock set before 1970 or past 9999 leaves every thread answering: the `Date` of an
/// answer is held to the years one can write. Each answer once panicked on its way out, so
/// each request took down the thread that served it, and once the `--threads` handlers were
/// gone the coordinator exited, with status 0.
#[test]
fn a_clock_set_before_1970_or_past_9999_leaves_every_thread_answering() {
    let worker = FakeWorker::start();
    let dir = workers_dir(&[worker.entry(1)]);
    let Some(clock) = FakeClock::in_dir(dir.path()) else {
        return;
    };
    let mut coordinator =
        Coordinator::try_start_in_env(dir.path(), &["--threads", "2"], &clock.env())
            .unwrap_or_else(|e| panic!("{e}"));
    for (at, date) in [
        ("@1969-12-31 23:00:00", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ("+3000000d", "Fri, 31 Dec 9999 23:59:59 GMT"),
    ] {
        clock.set(at);
        let dated = support::poll_until(DEADLINE, || {
            let reply = send("GET", &coordinator.url("/pool"), None).ok()?;
            (reply.header("Date") == Some(date)).then_some(reply)
        });
        assert!(dated.is_some(), "{at}: no answer dated {date}");
        // More requests than handler threads, on handlers and on connection threads.
        for path in [
            "/pool",
            "/jobs",
            "/status/pool-0",
            "/health",
            "/pool",
            "/jobs",
        ] {
            let reply = send("GET", &coordinator.url(path), None)
                .unwrap_or_else(|e| panic!("{at}: GET {path}: {e}"));
            assert!(
                reply.json()["error"].is_string() || reply.status == 200,
                "{at}: {path}"
            );
        }
    }
    clock.set("+0");
    assert!(coordinator.is_running(), "{}", coordinator.logs());
    let reply = send("GET", &coordinator.url("/pool"), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        !coordinator.logs().contains("panicked"),
        "{}",
        coordinator.logs()
    );
}
