//! systemd's readiness protocol through the real binary: a test listens on a unix datagram
//! socket passed as `$NOTIFY_SOCKET` and sees `READY=1` once the coordinator serves,
//! `WATCHDOG=1` pings at half `$WATCHDOG_USEC`, and `STOPPING=1` on SIGTERM. Also checks the
//! shipped unit file `deploy/trusted-pool.service` for its hardening and notify settings.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::{get, temp_dir, workers_dir, Coordinator, FakeWorker};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(30);

/// Receives datagrams until one contains `wanted` or the deadline passes; returns all seen.
fn receive_until(socket: &UnixDatagram, wanted: &str, deadline: Duration) -> Vec<String> {
    let end = Instant::now() + deadline;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = text.lines().any(|l| l == wanted);
            seen.push(text);
            if done {
                return seen;
            }
        }
    }
    panic!("no {wanted} in {deadline:?}; received {seen:?}");
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let worker = FakeWorker::start();
    let dir = workers_dir(&[worker.entry(2)]);
    let socket_dir = temp_dir();
    let path = socket_dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let path_text = path.to_string_lossy().into_owned();
    let mut coordinator = Coordinator::try_start_in_env(
        dir.path(),
        &[],
        &[("NOTIFY_SOCKET", &path_text), ("WATCHDOG_USEC", "400000")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ready = receive_until(&socket, "READY=1", DEADLINE);
    assert!(
        ready
            .iter()
            .any(|d| d.contains("STATUS=serving on http://127.0.0.1:")),
        "{ready:?}"
    );
    let (code, _) = get(&coordinator.url("/health"));
    assert_eq!(code, 200, "READY=1 came before the coordinator served");
    let started = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        receive_until(&socket, "WATCHDOG=1", DEADLINE);
        pings += 1;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "3 pings at 0.2 s took {:?}",
        started.elapsed()
    );
    assert!(coordinator.signal(libc::SIGTERM), "kill -TERM");
    let stopping = receive_until(&socket, "STOPPING=1", DEADLINE);
    assert!(!stopping.is_empty());
    assert!(
        coordinator.wait_exit(DEADLINE).is_some(),
        "the coordinator did not stop"
    );
}

#[test]
fn without_notify_socket_nothing_changes() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &[]);
    let (code, _) = get(&coordinator.url("/health"));
    assert_eq!(code, 200);
    assert!(
        !coordinator.logs().contains("watchdog"),
        "{}",
        coordinator.logs()
    );
}

#[test]
fn the_unit_file_is_hardened_and_uses_notify() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/trusted-pool.service"
    ))
    .expect("deploy/trusted-pool.service");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=trusted-pool",
        "StateDirectory=trusted-pool",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "AmbientCapabilities=\n",
        "PrivateTmp=yes",
        // `~@resources` refuses setpriority, which the threads that follow jobs call
        // (--follow-nice); without these two the first dispatch killed the process (SIGSYS).
        "SystemCallFilter=setpriority\n",
        "SystemCallErrorNumber=EPERM\n",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}:\n{unit}");
    }
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/trusted-pool.service"
        ))
        .output()
    {
        let report = String::from_utf8_lossy(&out.stderr);
        assert!(
            !report.contains("Unknown key") && !report.contains("Unknown section"),
            "systemd-analyze verify: {report}"
        );
    } else {
        eprintln!(
            "SKIPPED systemd-analyze verify of the unit: systemd-analyze is not installed \
             (Debian package systemd)"
        );
    }
}
