//! TLS on both sides through the real binary: the HTTPS listener (a client trusting the test
//! CA, plain HTTP refused cleanly, certificate rotation on SIGHUP) and `https://` workers behind
//! a TLS proxy, with and without a client certificate, which SIGHUP rotates too.

mod support;

use std::fs;
use std::time::Duration;

use serde_json::Value;

use support::lifecycle::{submit, wait_collected, wait_status};
use support::tls::{
    cert_der, days_from_now, https_get, https_get_over, TestCa, TlsProxy, TricklingTls,
};
use support::{
    get_bytes, get_json, poll_until, send, temp_dir, write_workers_json, BlackHole, Coordinator,
    FakeWorker, Form,
};

/// Deadline for anything that should happen within a few seconds.
const DEADLINE: Duration = Duration::from_secs(30);

/// Whether `logs` hold `warned` followed by ` (in N days)` with N from 2.0 to 3.0: a
/// certificate ending at the midnight three days on, read at any time of today (just after
/// midnight the log rounds to 3.0).
fn warned_in_two_to_three_days(logs: &str, warned: &str) -> bool {
    logs.split(warned).skip(1).any(|rest| {
        rest.strip_prefix(" (in ")
            .and_then(|r| r.split_once(" days)"))
            .and_then(|(days, _)| days.parse::<f64>().ok())
            .is_some_and(|days| (2.0..=3.0).contains(&days))
    })
}

fn small_job() -> Form {
    Form::new()
        .file("main.py", "text/x-python", b"print('hello')\n")
        .manifest(r#"{"entrypoint": "main.py"}"#)
}

fn path_arg(path: &std::path::Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Arguments that trust `ca`, present the client certificate `cert` with `key`, and probe every
/// second.
fn client_cert_args<'a>(ca: &'a str, cert: &'a str, key: &'a str) -> [&'a str; 8] {
    [
        "--worker-ca",
        ca,
        "--worker-tls-cert",
        cert,
        "--worker-tls-key",
        key,
        "--health-interval",
        "1",
    ]
}

#[test]
fn the_listener_serves_https_refuses_plain_http_and_rotates_its_certificate_on_sighup() {
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let other_ca = TestCa::new(dir.path(), "other-ca");
    let (cert, key) = ca.issue("listener", false);
    let worker = FakeWorker::start();
    let (cert_arg, key_arg) = (path_arg(&cert), path_arg(&key));
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &["--tls-cert", &cert_arg, "--tls-key", &key_arg],
    );
    assert!(coordinator.logs().contains("Listening on https://"));
    let port = coordinator.port();

    let answer = https_get(port, &ca.path("ca"), "/health").expect("HTTPS with the CA");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.server_cert, cert_der(&cert));
    let pool = https_get(port, &ca.path("ca"), "/pool").expect("HTTPS /pool");
    assert_eq!(pool.status, 200, "{}", pool.text);

    assert!(
        https_get(port, &other_ca.path("other-ca"), "/health").is_err(),
        "a client that does not trust the certificate must fail"
    );
    // Plain HTTP on the TLS port is told to use https:// (it was closed without a word).
    let plain = send("GET", &coordinator.url("/health"), None).expect("an answer");
    assert_eq!(plain.status, 400, "{}", plain.text());
    assert_eq!(
        plain.json()["error"],
        "this port speaks HTTPS; use an https:// address"
    );
    let form = small_job();
    let upload = send(
        "POST",
        &coordinator.url("/submit"),
        Some((&form.content_type(), &form.body())),
    )
    .expect("an answer to a plain submit");
    assert_eq!(upload.status, 400, "{}", upload.text());
    let after = https_get(port, &ca.path("ca"), "/health").expect("HTTPS after plain HTTP");
    assert_eq!(after.status, 200, "{}", after.text);

    // Rotation: a new certificate in the same files, then SIGHUP.
    let (new_cert, new_key) = ca.issue("listener-next", false);
    fs::copy(&new_cert, &cert).expect("replace the certificate");
    fs::copy(&new_key, &key).expect("replace the key");
    coordinator.hangup();
    assert!(coordinator.wait_for_log("TLS certificate reloaded", DEADLINE));
    let rotated = https_get(port, &ca.path("ca"), "/health").expect("HTTPS after rotation");
    assert_eq!(rotated.status, 200);
    assert_eq!(
        rotated.server_cert,
        cert_der(&new_cert),
        "the new certificate is served"
    );

    // A bad file is refused; the current certificate stays.
    fs::write(&key, "not a key").expect("spoil the key");
    coordinator.hangup();
    assert!(coordinator.wait_for_log("TLS certificate not reloaded", DEADLINE));
    let kept = https_get(port, &ca.path("ca"), "/health").expect("HTTPS after a bad reload");
    assert_eq!(kept.server_cert, cert_der(&new_cert));
}

/// The first worker's row of `/pool`.
fn pool_row(coordinator: &Coordinator) -> Value {
    get_json(&coordinator.url("/pool")).1["workers"][0].clone()
}

#[test]
fn https_workers_behind_a_tls_proxy_with_and_without_a_client_certificate() {
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let (proxy_cert, proxy_key) = ca.issue("proxy", false);
    let (client_cert, client_key) = ca.issue("coordinator", true);
    let ca_arg = path_arg(&ca.path("ca"));

    // A proxy that takes any client: a job runs through it.
    let worker = FakeWorker::start();
    let proxy = TlsProxy::start(worker.addr(), &proxy_cert, &proxy_key, None);
    let entry = (worker.worker_id(), proxy.endpoint(), 2);
    let coordinator = Coordinator::start(
        &[entry],
        &["--worker-ca", &ca_arg, "--health-interval", "1"],
    );
    // A name sandrun must get as its own bytes is fetched through the same TLS settings.
    let job = small_job().file("\u{e9}#1.txt", "text/plain", b"accent\n");
    let id = submit(&coordinator, &job);
    wait_collected(&coordinator, &id, DEADLINE);
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{id}/%C3%A9%231.txt")));
    assert_eq!((code, bytes), (200, b"accent\n".to_vec()));
    assert!(proxy.sessions() > 0, "nothing went through the proxy");
    drop(coordinator);

    // A proxy that demands a client certificate: refused without one, served with one.
    let strict = TlsProxy::start(worker.addr(), &proxy_cert, &proxy_key, Some(&ca.path("ca")));
    let entry = (worker.worker_id(), strict.endpoint(), 2);
    let refused = Coordinator::start(
        std::slice::from_ref(&entry),
        &["--worker-ca", &ca_arg, "--health-interval", "1"],
    );
    let unhealthy = poll_until(DEADLINE, || {
        let row = pool_row(&refused);
        (row["is_healthy"] == false && row["consecutive_failures"].as_u64().unwrap_or(0) > 0)
            .then_some(row)
    });
    assert!(unhealthy.is_some(), "{}", pool_row(&refused));
    assert_eq!(strict.sessions(), 0);
    drop(refused);

    let (cert_arg, key_arg) = (path_arg(&client_cert), path_arg(&client_key));
    let admitted = Coordinator::start(&[entry], &client_cert_args(&ca_arg, &cert_arg, &key_arg));
    let id = submit(&admitted, &small_job());
    wait_status(&admitted, &id, "completed", DEADLINE);
    assert!(strict.sessions() > 0);
}

#[test]
fn an_https_worker_without_a_trusted_ca_is_unhealthy() {
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let other = TestCa::new(dir.path(), "other");
    let (proxy_cert, proxy_key) = ca.issue("proxy", false);
    let worker = FakeWorker::start();
    let proxy = TlsProxy::start(worker.addr(), &proxy_cert, &proxy_key, None);
    let other_arg = path_arg(&other.path("other"));
    let coordinator = Coordinator::start(
        &[(worker.worker_id(), proxy.endpoint(), 2)],
        &["--worker-ca", &other_arg, "--health-interval", "1"],
    );
    let failing = poll_until(DEADLINE, || {
        let row = pool_row(&coordinator);
        (row["consecutive_failures"].as_u64().unwrap_or(0) > 0).then_some(row)
    });
    assert!(failing.is_some(), "{}", pool_row(&coordinator));
    assert_eq!(proxy.sessions(), 0);
}

/// The `/pool` row of the worker at `endpoint`.
fn row_of(coordinator: &Coordinator, endpoint: &str) -> Value {
    let pool = get_json(&coordinator.url("/pool")).1;
    pool["workers"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["endpoint"] == endpoint).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until the worker at `endpoint` is healthy in `/pool`; fails with its row and the log.
fn assert_turns_healthy(coordinator: &Coordinator, endpoint: &str) {
    let healthy = poll_until(DEADLINE, || {
        let row = row_of(coordinator, endpoint);
        (row["is_healthy"] == true).then_some(row)
    });
    assert!(
        healthy.is_some(),
        "{}\n{}",
        row_of(coordinator, endpoint),
        coordinator.logs()
    );
}

#[test]
fn an_https_worker_added_by_a_reload_gets_the_same_worker_tls_settings() {
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let (proxy_cert, proxy_key) = ca.issue("proxy", false);
    let (client_cert, client_key) = ca.issue("coordinator", true);
    let plain = FakeWorker::start();
    let behind = FakeWorker::start();
    // The proxy admits only clients with a certificate of the CA.
    let strict = TlsProxy::start(behind.addr(), &proxy_cert, &proxy_key, Some(&ca.path("ca")));
    let (ca_arg, cert_arg, key_arg) = (
        path_arg(&ca.path("ca")),
        path_arg(&client_cert),
        path_arg(&client_key),
    );
    let coordinator = Coordinator::start(
        &[plain.entry(2)],
        &client_cert_args(&ca_arg, &cert_arg, &key_arg),
    );
    let https = (behind.worker_id(), strict.endpoint(), 2);

    // SIGHUP adds the https worker: it is probed through the proxy with the client certificate.
    write_workers_json(coordinator.dir(), &[plain.entry(2), https.clone()]);
    coordinator.hangup();
    assert_turns_healthy(&coordinator, &strict.endpoint());
    assert!(strict.sessions() > 0, "nothing went through the proxy");

    // POST /reload leaves only the https worker: a job runs behind the proxy.
    write_workers_json(coordinator.dir(), std::slice::from_ref(&https));
    let reloaded = send("POST", &coordinator.url("/reload"), None).expect("POST /reload");
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let id = submit(&coordinator, &small_job());
    let status = wait_status(&coordinator, &id, "completed", DEADLINE);
    assert_eq!(status["worker_id"], behind.worker_id(), "{status}");
}

#[test]
fn an_https_worker_added_to_a_coordinator_started_without_tls_settings_is_reached() {
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let (proxy_cert, proxy_key) = ca.issue("proxy", false);
    let plain = FakeWorker::start();
    let behind = FakeWorker::start();
    let proxy = TlsProxy::start(behind.addr(), &proxy_cert, &proxy_key, None);
    // No https:// worker and no TLS option at start: the system's CA certificates, which
    // SSL_CERT_FILE names here, are read only once one is listed.
    let workers_dir = temp_dir();
    write_workers_json(workers_dir.path(), &[plain.entry(2)]);
    let ca_file = path_arg(&ca.path("ca"));
    let coordinator = Coordinator::try_start_in_env(
        workers_dir.path(),
        &["--health-interval", "1"],
        &[("SSL_CERT_FILE", &ca_file)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let https = (behind.worker_id(), proxy.endpoint(), 2);
    write_workers_json(coordinator.dir(), &[plain.entry(2), https]);
    coordinator.hangup();
    assert_turns_healthy(&coordinator, &proxy.endpoint());
    assert!(proxy.sessions() > 0, "nothing went through the proxy");
}

#[test]
fn a_rotated_worker_client_certificate_is_used_after_sighup() {
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let rogue = TestCa::new(dir.path(), "rogue");
    let (proxy_cert, proxy_key) = ca.issue("proxy", false);
    // The certificate the coordinator starts with is one the proxy does not admit (as an
    // expired one would not be).
    let (client_cert, client_key) = rogue.issue("coordinator", true);
    let worker = FakeWorker::start();
    let strict = TlsProxy::start(worker.addr(), &proxy_cert, &proxy_key, Some(&ca.path("ca")));
    let (ca_arg, cert_arg, key_arg) = (
        path_arg(&ca.path("ca")),
        path_arg(&client_cert),
        path_arg(&client_key),
    );
    let coordinator = Coordinator::start(
        &[(worker.worker_id(), strict.endpoint(), 2)],
        &client_cert_args(&ca_arg, &cert_arg, &key_arg),
    );
    let refused = poll_until(DEADLINE, || {
        let row = pool_row(&coordinator);
        (row["consecutive_failures"].as_u64().unwrap_or(0) > 0).then_some(row)
    });
    assert!(refused.is_some(), "{}", pool_row(&coordinator));
    assert_eq!(strict.sessions(), 0);

    // The operator puts a certificate of the right CA in place and sends SIGHUP.
    ca.issue("coordinator", true);
    coordinator.hangup();
    assert!(
        coordinator.wait_for_log("Worker TLS settings reloaded", DEADLINE),
        "{}",
        coordinator.logs()
    );
    let id = submit(&coordinator, &small_job());
    wait_status(&coordinator, &id, "completed", DEADLINE);
    assert!(strict.sessions() > 0, "nothing went through the proxy");

    // A broken file is refused and the settings in use stay.
    fs::write(&client_cert, "not a certificate").expect("break the certificate");
    coordinator.hangup();
    assert!(
        coordinator.wait_for_log("Worker TLS settings not reloaded", DEADLINE),
        "{}",
        coordinator.logs()
    );
    let id = submit(&coordinator, &small_job());
    wait_status(&coordinator, &id, "completed", DEADLINE);
    assert_eq!(pool_row(&coordinator)["is_healthy"], true);
}

/// Behind a TCP-mode proxy under `--proxy-protocol`, the PROXY header comes before the TLS
/// handshake: the client it names is its requests' address; a TLS connection from the proxy
/// without one is closed, while other addresses speak TLS as before.
#[test]
fn a_proxy_protocol_header_precedes_the_tls_handshake() {
    use std::io::Write;
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let (cert, key) = ca.issue("listener", false);
    let worker = FakeWorker::start();
    let (cert_arg, key_arg) = (path_arg(&cert), path_arg(&key));
    let access = dir.path().join("access.log");
    let access_arg = path_arg(&access);
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &[
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
            "--trusted-proxies",
            "127.0.0.2",
            "--proxy-protocol",
            "--access-log",
            &access_arg,
        ],
    );
    let port = coordinator.port();
    let proxy = std::net::IpAddr::from([127, 0, 0, 2]);
    let from_proxy = |header: &str| {
        let mut tcp = coordinator.connect_from(proxy);
        tcp.write_all(header.as_bytes()).expect("header");
        https_get_over(tcp, &ca.path("ca"), "/jobs")
    };
    let header = format!("PROXY TCP4 203.0.113.70 127.0.0.1 50000 {port}\r\n");
    let answer = from_proxy(&header).expect("HTTPS after the header");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(
        from_proxy("").is_err(),
        "a TLS connection from the proxy without a header was served"
    );
    let direct = https_get(port, &ca.path("ca"), "/health").expect("HTTPS from 127.0.0.1");
    assert_eq!(direct.status, 200, "{}", direct.text);
    let lines = poll_until(DEADLINE, || {
        let text = fs::read_to_string(&access).ok()?;
        text.contains(" 127.0.0.1 - GET \"/health\" 200 ")
            .then_some(text)
    })
    .unwrap_or_else(|| panic!("no line of the direct request"));
    assert!(
        lines.contains(" 203.0.113.70 - GET \"/jobs\" 200 "),
        "{lines}"
    );
    let pool = https_get(port, &ca.path("ca"), "/pool").expect("HTTPS /pool");
    let pool: Value = serde_json::from_str(pool.text.split("\r\n\r\n").nth(1).unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {}", pool.text));
    assert_eq!(
        pool["connections"]["refused_without_proxy_header"], 1,
        "{pool}"
    );
}

/// A coordinator serving TLS with a certificate of a test CA (`extra` arguments added).
struct TlsListener {
    /// The directory holding the CA's and the listener's files.
    _dir: tempfile::TempDir,
    ca: TestCa,
    /// The listener's certificate file.
    cert: std::path::PathBuf,
    _worker: FakeWorker,
    coordinator: Coordinator,
}

fn tls_listener(extra: &[&str]) -> TlsListener {
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let (cert, key) = ca.issue("listener", false);
    let worker = FakeWorker::start();
    let (cert_arg, key_arg) = (path_arg(&cert), path_arg(&key));
    let mut args = vec!["--tls-cert", &cert_arg, "--tls-key", &key_arg];
    args.extend_from_slice(extra);
    let coordinator = Coordinator::start(&[worker.entry(2)], &args);
    TlsListener {
        _dir: dir,
        ca,
        cert,
        _worker: worker,
        coordinator,
    }
}

#[test]
fn tls_connections_beyond_max_connections_are_closed_at_once_without_a_thread() {
    let listener = tls_listener(&["--max-connections", "8"]);
    let (ca, coordinator) = (&listener.ca, &listener.coordinator);
    let port = coordinator.port();
    // Eight connections that never start their handshake hold every connection slot (the
    // accept loop counts each as it takes it, in the order they connected).
    let held: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let refused = https_get(port, &ca.path("ca"), "/health");
        assert!(refused.is_err(), "a ninth TLS client was served");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refusing took {:?}",
            started.elapsed()
        );
    }
    let threads = coordinator.threads();
    if let Some(threads) = threads {
        assert!(threads < 60, "{threads} threads for 8 connections");
    }
    drop(held);
    let back = poll_until(DEADLINE, || {
        https_get(port, &ca.path("ca"), "/health")
            .ok()
            .filter(|a| a.status == 200)
    });
    assert!(
        back.is_some(),
        "not served again after the held connections closed"
    );
}

/// A TLS handshake that trickles in a byte at a time is cut at `--client-timeout`, as a plain
/// request head is: each socket read met its own timeout, and one connection from each of a
/// few addresses held every connection slot for as long as its bytes kept coming.
#[test]
fn a_tls_handshake_that_trickles_in_is_cut_at_the_client_timeout() {
    let listener = tls_listener(&["--client-timeout", "2"]);
    let (ca, coordinator) = (&listener.ca, &listener.coordinator);
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", coordinator.port())).expect("connect");
    // A handshake record of 512 bytes, its header first, then a byte every half second.
    std::io::Write::write_all(&mut stream, &[0x16, 0x03, 0x01, 0x02, 0x00]).expect("send");
    let started = std::time::Instant::now();
    let cut = loop {
        std::thread::sleep(Duration::from_millis(500));
        if std::io::Write::write_all(&mut stream, &[0]).is_err() {
            break started.elapsed();
        }
        stream.set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        let closed = match std::io::Read::read(&mut stream, &mut byte) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        stream.set_nonblocking(false).expect("blocking");
        if closed || started.elapsed() > Duration::from_secs(20) {
            break started.elapsed();
        }
    };
    assert!(
        cut < Duration::from_secs(12),
        "the trickling handshake was let go only after {cut:?}"
    );
    let served = https_get(coordinator.port(), &ca.path("ca"), "/health");
    assert!(served.is_ok_and(|a| a.status == 200));
}

/// Whether the coordinator closed `stream` (a read that does not wait sees its end or an error).
fn closed_by_peer(stream: &mut std::net::TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    let closed = match std::io::Read::read(stream, &mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

/// A connection to the TLS port that sends nothing, or only the first byte of a handshake
/// late, is let go within one `--client-timeout` of its accept: the wait for its first byte and
/// its handshake share that deadline. Each had a client timeout of its own, so a silent
/// connection held its slot, thread and descriptor for twice the timeout.
#[test]
fn a_silent_tls_connection_is_let_go_within_one_client_timeout() {
    let timeout = Duration::from_secs(4);
    let listener = tls_listener(&["--client-timeout", "4"]);
    let (ca, coordinator) = (&listener.ca, &listener.coordinator);
    let port = coordinator.port();
    let connect = || std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let started = std::time::Instant::now();
    let mut clients = [connect(), connect()];
    // The second one sends the first byte of a handshake record 3 s in, then nothing: its
    // handshake has what is left of the timeout, not a timeout of its own.
    std::thread::sleep(Duration::from_secs(3));
    std::io::Write::write_all(&mut clients[1], &[0x16]).expect("send a byte");
    let mut closed_after = [None; 2];
    poll_until(DEADLINE, || {
        for (client, closed) in clients.iter_mut().zip(closed_after.iter_mut()) {
            if closed.is_none() && closed_by_peer(client) {
                *closed = Some(started.elapsed());
            }
        }
        closed_after.iter().all(Option::is_some).then_some(())
    })
    .unwrap_or_else(|| panic!("not closed within {DEADLINE:?}: {closed_after:?}"));
    for (what, after) in ["silent", "late first byte"].iter().zip(closed_after) {
        let after = after.unwrap_or_default();
        // Generous: closed at the timeout, well before twice the timeout (8 s; 7 s for the
        // late byte) that the two waits took.
        assert!(
            after < timeout + timeout / 2,
            "the {what} connection was let go only after {after:?}"
        );
    }
    let served = https_get(port, &ca.path("ca"), "/health");
    assert!(served.is_ok_and(|a| a.status == 200));
}

/// A certificate path that comes to name a FIFO (or anything whose open waits) is refused at
/// SIGHUP, and the signals after it still work: the reloads run off the thread that handles
/// signals, so a stop is never held up by a file.
#[test]
fn a_certificate_path_that_names_a_fifo_holds_up_neither_reloads_nor_a_stop() {
    let mut listener = tls_listener(&[]);
    let cert = listener.cert.clone();
    let coordinator = &mut listener.coordinator;
    std::fs::remove_file(&cert).unwrap_or_else(|e| panic!("{e}"));
    let made = std::process::Command::new("mkfifo").arg(&cert).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", cert.display());
    coordinator.hangup();
    assert!(
        coordinator.wait_for_log("TLS certificate not reloaded", DEADLINE),
        "{}",
        coordinator.logs()
    );
    assert!(
        coordinator.logs().contains("FIFO"),
        "{}",
        coordinator.logs()
    );
    coordinator.hangup();
    assert!(
        coordinator.wait_for_log("SIGHUP received", DEADLINE),
        "{}",
        coordinator.logs()
    );
    let stopped = coordinator.terminate(DEADLINE);
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
}

/// `trusted-pool check ARGS`: its exit code and its stdout and stderr together.
fn check(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trusted-pool"))
        .arg("check")
        .args(args)
        .output()
        .expect("run check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A certificate that expires soon, or did, is warned of at start (and by `check` before a
/// SIGHUP); `/pool` and `/metrics` show when each certificate presented expires, and a renewed
/// one replaces it there on SIGHUP.
#[test]
fn certificates_about_to_expire_are_warned_of_shown_and_exported() {
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let (soon, soon_text) = days_from_now(3);
    let (cert, key) = ca.issue_until("listener", false, Some(soon));
    let (client_cert, client_key) = ca.issue_until("coordinator", true, Some((2020, 1, 1)));
    let worker = FakeWorker::start();
    let args = [&cert, &key, &ca.path("ca"), &client_cert, &client_key].map(|p| path_arg(p));
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &[
            "--tls-cert",
            &args[0],
            "--tls-key",
            &args[1],
            "--worker-ca",
            &args[2],
            "--worker-tls-cert",
            &args[3],
            "--worker-tls-key",
            &args[4],
        ],
    );
    assert!(coordinator.wait_for_log("Listening on https://", DEADLINE));
    let logs = coordinator.logs();
    let warned = format!(
        "The listener's TLS certificate ({}) expires at {soon_text}T00:00:00Z",
        args[0]
    );
    assert!(warned_in_two_to_three_days(&logs, &warned), "{logs}");
    assert!(
        logs.contains(&format!(
            "The client certificate presented to https:// workers ({}) expired at 2020-01-01T00:00:00Z: TLS clients refuse it",
            args[3]
        )),
        "{logs}"
    );

    let port = coordinator.port();
    let pool = https_get(port, &ca.path("ca"), "/pool").expect("HTTPS /pool");
    let body = &pool.text[pool.text.find("\r\n\r\n").expect("a body") + 4..];
    let view: Value = serde_json::from_str(body).expect("JSON");
    let listener = &view["certificates"]["listener"];
    assert_eq!(listener["file"], args[0], "{view}");
    assert_eq!(listener["expires"], format!("{soon_text}T00:00:00Z"));
    let left = listener["days_left"].as_f64().expect("days_left");
    assert!((2.0..=3.0).contains(&left), "{listener}");
    assert_eq!(listener["earliest_in_chain"], "1 of 1");
    let client = &view["certificates"]["worker_client"];
    assert_eq!(client["expires"], "2020-01-01T00:00:00Z", "{view}");
    assert!(client["days_left"].as_f64().is_some_and(|d| d < -2000.0));

    let expiry_of = |certificate: &str| {
        let answer = https_get(port, &ca.path("ca"), "/metrics").expect("HTTPS /metrics");
        let series = format!(
            "trusted_pool_certificate_expiry_timestamp_seconds{{certificate=\"{certificate}\"}} "
        );
        answer
            .text
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert_eq!(expiry_of("worker_client"), Some(1_577_836_800));
    let first = expiry_of("listener").expect("the listener's series");

    // `check` tells of both before a SIGHUP would: a warning for the one due, a failure for
    // the one past.
    let (code, text) = check(&["--tls-cert", &args[0], "--tls-key", &args[1]]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("warning: The certificate chain ("), "{text}");
    let (code, text) = check(&["--worker-tls-cert", &args[3], "--worker-tls-key", &args[4]]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("expired at 2020-01-01T00:00:00Z"), "{text}");
    let (code, text) = check(&["--tls-cert", &args[0], "--tls-key", &args[4]]);
    assert_eq!(code, Some(1), "a certificate with another's key: {text}");

    // The operator renews the listener's certificate (rcgen's far future) and sends SIGHUP.
    let (renewed, renewed_key) = ca.issue("listener-renewed", false);
    fs::copy(&renewed, &cert).expect("replace the certificate");
    fs::copy(&renewed_key, &key).expect("replace the key");
    let (code, text) = check(&["--tls-cert", &args[0], "--tls-key", &args[1]]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("expires at 4096-01-01T00:00:00Z"), "{text}");
    coordinator.hangup();
    assert!(coordinator.wait_for_log("TLS certificate reloaded", DEADLINE));
    let renewed_at = poll_until(DEADLINE, || expiry_of("listener").filter(|&at| at != first))
        .expect("the renewed certificate's expiry");
    assert_eq!(renewed_at, 67_090_118_400, "4096-01-01");
    let warned = coordinator
        .logs()
        .matches("The listener's TLS certificate (")
        .count();
    assert_eq!(warned, 1, "a renewed certificate is not warned of");
}

/// The `/metrics` value of the worker certificate expiry series of `worker_id`.
fn worker_certificate_series(coordinator: &Coordinator, worker_id: &str) -> Option<u64> {
    let (_, bytes) = get_bytes(&coordinator.url("/metrics"));
    let series = format!(
        "trusted_pool_worker_certificate_expiry_timestamp_seconds{{worker_id=\"{worker_id}\"}} "
    );
    String::from_utf8_lossy(&bytes)
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_string))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the worker at `endpoint` shows a certificate that expires at `expires`, and is
/// `healthy` or not; fails with its row.
fn wait_certificate(coordinator: &Coordinator, endpoint: &str, expires: &str, healthy: bool) {
    let seen = poll_until(DEADLINE, || {
        let row = row_of(coordinator, endpoint);
        (row["certificate"]["expires"] == expires && row["is_healthy"] == healthy).then_some(row)
    });
    assert!(seen.is_some(), "{}", row_of(coordinator, endpoint));
}

/// The certificate an `https://` worker's proxy presents is read at the first probe and again on
/// SIGHUP: shown in `/pool`, exported, warned of when it ends soon or ended (and the worker is
/// then refused), and a renewed one is neither warned of nor refused.
#[test]
fn the_certificate_an_https_worker_presents_is_read_warned_of_and_exported() {
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let (soon, soon_text) = days_from_now(3);
    let (cert, key) = ca.issue_until("proxy", false, Some(soon));
    let (client_cert, client_key) = ca.issue("coordinator", true);
    let worker = FakeWorker::start();
    // The proxy demands a client certificate: the read presents the coordinator's.
    let proxy = TlsProxy::start(worker.addr(), &cert, &key, Some(&ca.path("ca")));
    let endpoint = proxy.endpoint();
    let args = [&ca.path("ca"), &client_cert, &client_key].map(|p| path_arg(p));
    let coordinator = Coordinator::start(
        &[(worker.worker_id(), endpoint.clone(), 2)],
        &client_cert_args(&args[0], &args[1], &args[2]),
    );
    let worker_id = worker.worker_id();
    let short = &worker_id[..12];

    // Read at the first probe: shown in /pool, warned of in the log, exported.
    let row = poll_until(DEADLINE, || {
        let row = row_of(&coordinator, &endpoint);
        (row["certificate"]["expires"].is_string() && row["is_healthy"] == true).then_some(row)
    })
    .unwrap_or_else(|| panic!("no certificate read: {}", row_of(&coordinator, &endpoint)));
    let read = &row["certificate"];
    assert_eq!(read["expires"], format!("{soon_text}T00:00:00Z"), "{row}");
    let left = read["days_left"].as_f64().expect("days_left");
    assert!((2.0..=3.0).contains(&left), "{read}");
    assert_eq!(read["earliest_in_chain"], "1 of 1");
    let warned = format!(
        "The TLS certificate of worker {short}... ({endpoint}) expires at {soon_text}T00:00:00Z"
    );
    assert!(
        poll_until(DEADLINE, || warned_in_two_to_three_days(
            &coordinator.logs(),
            &warned
        )
        .then_some(()))
        .is_some(),
        "{}",
        coordinator.logs()
    );
    let first = worker_certificate_series(&coordinator, &worker_id).expect("the series");
    assert_eq!(first % 86_400, 0, "midnight: {first}");

    // The proxy's certificate is replaced by an expired one: SIGHUP reads it at once; the
    // worker is refused, and the log says why at error level.
    let (old, old_key) = ca.issue_until("proxy-old", false, Some((2020, 1, 1)));
    proxy.present(&old, &old_key);
    coordinator.hangup();
    wait_certificate(&coordinator, &endpoint, "2020-01-01T00:00:00Z", false);
    assert!(coordinator.wait_for_log(
        &format!("The TLS certificate of worker {short}... ({endpoint}) expired at 2020-01-01T00:00:00Z: the coordinator refuses it"),
        DEADLINE
    ));
    assert_eq!(
        worker_certificate_series(&coordinator, &worker_id),
        Some(1_577_836_800)
    );

    // Renewed (rcgen's far future): healthy again, and no warning of it.
    let (renewed, renewed_key) = ca.issue("proxy-renewed", false);
    proxy.present(&renewed, &renewed_key);
    coordinator.hangup();
    wait_certificate(&coordinator, &endpoint, "4096-01-01T00:00:00Z", true);
    assert_eq!(
        worker_certificate_series(&coordinator, &worker_id),
        Some(67_090_118_400)
    );
    let id = submit(&coordinator, &small_job());
    wait_status(&coordinator, &id, "completed", DEADLINE);
    let warned = coordinator
        .logs()
        .matches(&format!("The TLS certificate of worker {short}..."))
        .count();
    assert_eq!(warned, 2, "{}", coordinator.logs());
}

/// `https://` endpoints gone wrong, one silent after it accepts and one that trickles a
/// handshake record a byte at a time: each probe and certificate read gives up within the
/// health timeout, so the health checker's rounds go on (another worker keeps being probed)
/// and their certificates stay unknown.
#[test]
fn silent_or_trickling_https_endpoints_hold_up_no_health_round() {
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let worker = FakeWorker::start();
    // They stand for workers whose ids they never get to tell.
    let (absent, also_absent) = (FakeWorker::start(), FakeWorker::start());
    let silent = BlackHole::start();
    let trickling = TricklingTls::start();
    let endpoints = [format!("https://{}", silent.addr()), trickling.endpoint()];
    let coordinator = Coordinator::start(
        &[
            worker.entry(2),
            (absent.worker_id(), endpoints[0].clone(), 1),
            (also_absent.worker_id(), endpoints[1].clone(), 1),
        ],
        &[
            "--worker-ca",
            &path_arg(&ca.path("ca")),
            "--health-interval",
            "1",
            "--health-timeout",
            "1",
        ],
    );
    // Each endpoint's probe and certificate read connected.
    let both = poll_until(DEADLINE, || {
        (silent.connections() >= 2 && trickling.connections() >= 2).then_some(())
    });
    assert!(
        both.is_some(),
        "{} and {} connections",
        silent.connections(),
        trickling.connections()
    );
    // Rounds after the one that read the certificates: the other worker is probed again.
    let first = row_of(&coordinator, &worker.endpoint())["last_health_check"]
        .as_f64()
        .unwrap_or(0.0);
    let later = poll_until(DEADLINE, || {
        let row = row_of(&coordinator, &worker.endpoint());
        (row["last_health_check"].as_f64().unwrap_or(0.0) >= first + 3.0).then_some(row)
    });
    assert!(
        later.is_some(),
        "{}",
        row_of(&coordinator, &worker.endpoint())
    );
    for endpoint in &endpoints {
        let row = row_of(&coordinator, endpoint);
        assert_eq!(row["is_healthy"], false, "{row}");
        assert_eq!(row["certificate"], Value::Null, "{row}");
    }
}

/// A job on an `https://` worker, served under a path prefix by its TLS proxy, is followed on
/// the worker's WebSocket stream, as on a plain worker: its end is seen from the stream, long
/// before the next poll; every call, the stream's included, keeps the prefix.
#[test]
fn a_job_on_an_https_worker_is_followed_on_its_stream() {
    let dir = temp_dir();
    let ca = TestCa::new(dir.path(), "ca");
    let (cert, key) = ca.issue("proxy", false);
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(2));
    let proxy = TlsProxy::start_under(worker.addr(), &cert, &key, None, "/sandrun");
    let endpoint = proxy.endpoint();
    let coordinator = Coordinator::start(
        &[(worker.worker_id(), endpoint.clone(), 2)],
        &[
            "--worker-ca",
            &path_arg(&ca.path("ca")),
            "--health-interval",
            "1",
            "--track-interval",
            "30",
        ],
    );
    assert_turns_healthy(&coordinator, &endpoint);
    let id = submit(&coordinator, &small_job());
    // The job counts as streamed from its dispatch on; its stream opens a moment later.
    let streamed = poll_until(DEADLINE, || {
        let row = row_of(&coordinator, &endpoint);
        (row["jobs_streamed"] == 1).then_some(row)
    });
    assert!(streamed.is_some(), "{}", row_of(&coordinator, &endpoint));
    let opened = poll_until(DEADLINE, || {
        (worker.recording().count("GET", "stream") >= 1).then_some(())
    });
    assert!(opened.is_some(), "{}", coordinator.logs());
    // Unstreamed, the job would be polled once at its dispatch and then in 30 s.
    let status = wait_status(&coordinator, &id, "completed", Duration::from_secs(20));
    assert_eq!(status["pool_status"], "completed", "{status}");
    wait_collected(&coordinator, &id, DEADLINE);
    let (code, listing) = get_json(&coordinator.url(&format!("/outputs/{id}")));
    assert_eq!(code, 200, "{listing}");
}
