//! The command line through the real binary: usage, bad flags and values (exit 2), the
//! validation of workers.json by `check` and at start-up (exit 1), and `worker-id`.

mod support;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{json, Value};

use support::{temp_dir, WorkerKey};

/// How long one run of the binary may take before it is killed (it should exit at once).
const RUN_DEADLINE: Duration = Duration::from_secs(30);

/// Every flag of the serve command.
const FLAGS: [&str; 30] = [
    "--port",
    "--bind",
    "--workers",
    "--threads",
    "--health-interval",
    "--health-timeout",
    "--state-dir",
    "--max-upload-bytes",
    "--upload-memory-bytes",
    "--dispatch-timeout",
    "--track-interval",
    "--follow-nice",
    "--lost-after",
    "--max-attempts",
    "--max-reruns",
    "--log-level",
    "--api-keys",
    "--cors-origin",
    "--client-timeout",
    "--max-connections",
    "--max-uploads",
    "--queue-timeout",
    "--disk-reserve",
    "--retain-bytes",
    "--max-connections-per-ip",
    "--max-requests-per-ip",
    "--trusted-proxies",
    "--proxy-protocol",
    "--max-results-bytes",
    "--log-format",
];

/// What one run of the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn read_all(stream: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_string(&mut text);
        }
        text
    })
}

/// Runs the binary in `dir` with `args`; kills it (and fails) if it is still running after
/// `RUN_DEADLINE`, so a command line wrongly accepted never leaves a server behind.
fn run_in(dir: &Path, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trusted-pool"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let end = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        status.is_some(),
        "`trusted-pool {}` was still running after {RUN_DEADLINE:?}:\n{}",
        args.join(" "),
        run.describe()
    );
    run
}

/// Runs the binary in a fresh empty directory.
fn run(args: &[&str]) -> Run {
    let dir = temp_dir();
    run_in(dir.path(), args)
}

/// Starts the coordinator on this workers file (free port, loopback, state dir in `dir`).
fn serve(dir: &Path, workers: &Path) -> Run {
    let workers = workers.to_str().unwrap();
    let state = dir.join("state");
    let state = state.to_str().unwrap();
    run_in(
        dir,
        &[
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--workers",
            workers,
            "--state-dir",
            state,
        ],
    )
}

fn short(worker_id: &str) -> &str {
    &worker_id[..12]
}

/// A valid worker_id from a fixed seed.
fn known_id(seed: u8) -> String {
    WorkerKey::from_secret([seed; 32]).worker_id()
}

/// 32 bytes that are not the encoding of a point of Ed25519's curve.
fn not_a_curve_point() -> [u8; 32] {
    (2u8..=255)
        .map(|y| {
            let mut bytes = [0u8; 32];
            bytes[0] = y;
            bytes
        })
        .find(|bytes| VerifyingKey::from_bytes(bytes).is_err())
        .unwrap()
}

fn contains_all(text: &str, needles: &[String]) -> bool {
    needles.iter().all(|n| text.contains(n.as_str()))
}

#[test]
fn help_lists_every_flag_and_version_prints_the_version() {
    for flag in ["--help", "-h"] {
        let help = run(&[flag]);
        assert_eq!(help.code, Some(0), "{flag}: {}", help.describe());
        assert!(help.stdout.contains("USAGE"), "{}", help.describe());
        for listed in FLAGS
            .iter()
            .chain(&["worker-id", "check", "--help", "--version"])
        {
            assert!(
                help.stdout.contains(listed),
                "{flag} does not list {listed}:\n{}",
                help.stdout
            );
        }
        // A read key may scrape /metrics (it changes nothing): the help says so, so an
        // operator does not hand Prometheus an admin key.
        let words = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains("otherwise it needs an admin or read key"),
            "--metrics-open's help:\n{}",
            help.stdout
        );
    }
    for flag in ["--version", "-V"] {
        let version = run(&[flag]);
        assert_eq!(version.code, Some(0), "{}", version.describe());
        assert_eq!(
            version.stdout.trim(),
            format!("trusted-pool {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn bad_command_lines_exit_2_naming_the_culprit() {
    let cases: &[(&[&str], &str)] = &[
        (&["--frobnicate"], "--frobnicate"),
        (&["frobnicate"], "frobnicate"),
        (&["--port", "x"], "--port"),
        (&["--port", "70000"], "--port"),
        (&["--port", "-1"], "--port"),
        (&["--port"], "--port"),
        (&["--bind", "localhost"], "--bind"),
        (&["--bind"], "--bind"),
        (&["--workers"], "--workers"),
        (&["--state-dir"], "--state-dir"),
        (&["--threads", "0"], "--threads"),
        (&["--threads", "-3"], "--threads"),
        (&["--threads", "many"], "--threads"),
        (&["--threads", "1025"], "from 1 to 1024"),
        (&["--health-interval", "-1"], "--health-interval"),
        (&["--health-interval", "0"], "--health-interval"),
        (&["--health-interval", "0.0001"], "at least 0.1"),
        (&["--max-results-bytes", "-1"], "--max-results-bytes"),
        (&["--max-results-bytes", "1GiB"], "--max-results-bytes"),
        (&["--log-format", "yaml"], "--log-format"),
        (&["--health-interval"], "--health-interval"),
        (&["--health-timeout", "soon"], "--health-timeout"),
        (&["--max-upload-bytes", "0"], "--max-upload-bytes"),
        (&["--max-upload-bytes", "1e6"], "--max-upload-bytes"),
        (&["--upload-memory-bytes", "-1"], "--upload-memory-bytes"),
        (&["--upload-memory-bytes", "4MiB"], "--upload-memory-bytes"),
        (&["--dispatch-timeout", "NaN"], "--dispatch-timeout"),
        (&["--track-interval", "inf"], "--track-interval"),
        (&["--track-interval", "0.000001"], "at least 0.01"),
        (&["--follow-nice", "20"], "--follow-nice"),
        (&["--follow-nice", "-1"], "--follow-nice"),
        (&["--follow-heartbeat", "0"], "at least 1"),
        (&["--follow-heartbeat", "NaN"], "from 1 to 3600"),
        // A value after `=` is read as after a space (it was an unknown argument).
        (&["--follow-heartbeat=0.5"], "at least 1"),
        (&["--follow-heartbeat", "3601"], "at most 3600"),
        (&["--follow-heartbeat", "0.001"], "at least 1"),
        (&["--follow-heartbeat", "0.999"], "at least 1"),
        (&["--lost-after", ""], "--lost-after"),
        (&["--max-attempts", "0"], "--max-attempts"),
        (&["--max-reruns", "101"], "--max-reruns"),
        (&["--max-requests-per-ip", "many"], "--max-requests-per-ip"),
        (&["--trusted-proxies", "10.0.0.0/33"], "--trusted-proxies"),
        (&["--trusted-proxies", "proxy.lan"], "--trusted-proxies"),
        (&["--trusted-proxies", "10.0.0.1,"], "--trusted-proxies"),
        (&["--proxy-protocol"], "--proxy-protocol"),
        (&["--max-reruns", "-1"], "--max-reruns"),
        (&["--queue-timeout", "-5"], "--queue-timeout"),
        (&["--queue-timeout", "an hour"], "--queue-timeout"),
        // A number past a flag's largest value says what that value is.
        (&["--queue-timeout", "1000000001"], "at most 1000000000"),
        (&["--lost-after", "2e9"], "at most 1000000000"),
        (&["--shutdown-grace", "1000001"], "from 0 to 1000000"),
        (&["--max-attempts", "4294967296"], "from 1 to 4294967295"),
        (
            &["--max-requests-per-ip", "4294967296"],
            "from 0 to 4294967295",
        ),
        (
            &["--max-results-bytes", "18446744073709551616"],
            "from 0 to 18446744073709551615",
        ),
        (&["--disk-reserve", "60%"], "--disk-reserve"),
        (&["--disk-reserve", "1GB"], "--disk-reserve"),
        (&["--retain-bytes", "2GiB"], "--retain-bytes"),
        (&["--log-level", "loud"], "--log-level"),
        (&["--log-level"], "--log-level"),
        (&["--client-timeout", "0"], "--client-timeout"),
        (&["--max-connections", "0"], "--max-connections"),
        (
            &["--max-connections-per-ip", "0"],
            "--max-connections-per-ip",
        ),
        (&["--max-uploads", "many"], "--max-uploads"),
        (&["--port", "0", "stray"], "stray"),
        (&["worker-id"], "worker-id"),
        (&["check"], "check"),
        (&["check", "a.json", "b.json"], "b.json"),
        (&["--api-keys"], "--api-keys"),
        (&["check", "--api-keys"], "--api-keys"),
        (&["--cors-origin"], "--cors-origin"),
        (
            &["--cors-origin", "https://app.example.org/"],
            "--cors-origin",
        ),
        (&["new-key"], "new-key"),
        (&["new-key", "a/b"], "new-key"),
    ];
    for (args, culprit) in cases {
        let result = run(args);
        assert_eq!(
            result.code,
            Some(2),
            "`trusted-pool {}`: {}",
            args.join(" "),
            result.describe()
        );
        assert!(
            result.stderr.contains(culprit),
            "`trusted-pool {}` does not name {culprit}: {}",
            args.join(" "),
            result.describe()
        );
        assert!(
            result.stdout.is_empty(),
            "`trusted-pool {}` printed on stdout: {}",
            args.join(" "),
            result.describe()
        );
    }
    let missing = run(&["--port"]);
    assert!(
        missing.stderr.contains("needs a value"),
        "{}",
        missing.describe()
    );
    let bad = run(&["--threads", "0"]);
    assert!(bad.stderr.contains("\"0\""), "{}", bad.describe());
    // A flag given twice (a unit file and an override, say) is named as such, not as unknown.
    for twice in [
        &["--state-dir", "a", "--state-dir", "b"][..],
        &["--port", "0", "--state-dir", "a", "--port", "1"],
        &["--metrics-open", "--metrics-open"],
    ] {
        let result = run(twice);
        assert_eq!(result.code, Some(2), "{}", result.describe());
        assert!(
            result.stderr.contains("is given more than once") && !result.stderr.contains("unknown"),
            "`trusted-pool {}`: {}",
            twice.join(" "),
            result.describe()
        );
    }
    let unknown = run(&["--no-such-flag", "--no-such-flag"]);
    assert!(
        unknown
            .stderr
            .contains("unknown argument \"--no-such-flag\""),
        "{}",
        unknown.describe()
    );
}

/// A workers file that must be refused, and what the refusal must say.
struct BadFile {
    what: &'static str,
    text: String,
    needles: Vec<String>,
}

fn bad(what: &'static str, value: Value, needles: &[&str]) -> BadFile {
    BadFile {
        what,
        text: value.to_string(),
        needles: needles.iter().map(|n| n.to_string()).collect(),
    }
}

/// The label of an entry in error messages: `entry 3 (worker_id AbCdEfGhIjKl...)`.
fn label(index: usize, worker_id: &str) -> String {
    format!("entry {index} (worker_id {}...)", short(worker_id))
}

fn bad_files() -> Vec<BadFile> {
    let a = known_id(1);
    let b = known_id(2);
    let la = label(0, &a);
    let la1 = label(1, &a);
    let lb1 = label(1, &b);
    let ok = |id: &str, endpoint: &str| json!({"worker_id": id, "endpoint": endpoint});
    let one = |entry: Value| json!([entry]);
    let with = |field: &str, value: Value| {
        let mut entry = ok(&a, "http://127.0.0.1:9001");
        entry[field] = value;
        one(entry)
    };
    let not_a_point = STANDARD.encode(not_a_curve_point());
    let short_key = STANDARD.encode([7u8; 31]);
    let long_key = STANDARD.encode([7u8; 33]);
    let unpadded = a.trim_end_matches('=').to_string();
    let mut cases = vec![
        bad(
            "an object instead of an array",
            ok(&a, "http://127.0.0.1:9001"),
            &["JSON array"],
        ),
        bad("a string", json!("workers"), &["JSON array"]),
        bad("an empty array", json!([]), &["no workers"]),
        bad(
            "an entry that is a number",
            json!([ok(&a, "http://127.0.0.1:9001"), 42]),
            &["entry 1", "not a JSON object"],
        ),
        bad(
            "an entry that is an array",
            json!([[a.clone(), "http://127.0.0.1:9001"]]),
            &["entry 0", "not a JSON object"],
        ),
        bad(
            "an unknown field",
            with("max_jobs", json!(2)),
            &[&la, "\"max_jobs\"", "unknown"],
        ),
        bad(
            "no worker_id",
            one(json!({"endpoint": "http://127.0.0.1:9001"})),
            &["entry 0", "\"worker_id\"", "missing"],
        ),
        bad(
            "no endpoint",
            one(json!({"worker_id": a})),
            &[&la, "\"endpoint\"", "missing"],
        ),
        bad(
            "a worker_id that is a number",
            with("worker_id", json!(42)),
            &["entry 0", "\"worker_id\"", "string"],
        ),
        bad(
            "a worker_id that is not base64",
            with("worker_id", json!("not-base64!")),
            &[
                "entry 0 (worker_id not-base64!...)",
                "\"worker_id\"",
                "base64",
            ],
        ),
        bad(
            "a worker_id without padding",
            with("worker_id", json!(unpadded)),
            &[&la, "\"worker_id\"", "base64"],
        ),
        bad(
            "a worker_id of 31 bytes",
            with("worker_id", json!(short_key)),
            &[&label(0, &short_key), "\"worker_id\"", "31 bytes"],
        ),
        bad(
            "a worker_id of 33 bytes",
            with("worker_id", json!(long_key)),
            &[&label(0, &long_key), "\"worker_id\"", "33 bytes"],
        ),
        bad(
            "a worker_id that is not a curve point",
            with("worker_id", json!(not_a_point)),
            &[
                &label(0, &not_a_point),
                "\"worker_id\"",
                "not a valid Ed25519 public key",
            ],
        ),
        bad(
            "a duplicate worker_id",
            json!([
                ok(&a, "http://127.0.0.1:9001"),
                ok(&b, "http://127.0.0.1:9002"),
                ok(&a, "http://127.0.0.1:9003"),
            ]),
            &[&label(2, &a), "\"worker_id\"", "duplicates entry 0"],
        ),
        bad(
            "a duplicate endpoint",
            json!([
                ok(&a, "http://127.0.0.1:9001"),
                ok(&b, "http://127.0.0.1:9001")
            ]),
            &[&lb1, "\"endpoint\"", "duplicates entry 0"],
        ),
        bad(
            "the same endpoint in other case, with its default port",
            json!([
                ok(&b, "http://Worker-7.Example"),
                ok(&a, "http://worker-7.example:80/"),
            ]),
            &[&la1, "\"endpoint\"", "duplicates entry 0"],
        ),
        bad(
            "the same endpoint with a leading zero in the port",
            json!([
                ok(&b, "http://10.0.0.5:8443"),
                ok(&a, "http://10.0.0.5:08443"),
            ]),
            &[&la1, "\"endpoint\"", "duplicates entry 0"],
        ),
        bad(
            "an endpoint that is a number",
            with("endpoint", json!(9001)),
            &[&la, "\"endpoint\"", "string"],
        ),
    ];
    for endpoint in [
        "ftp://127.0.0.1:9001",
        "127.0.0.1:9001",
        "garbage",
        "",
        "HTTP://127.0.0.1:9001",
        "http://",
        "http:///health",
        "http://:9001",
        "http://user@127.0.0.1:9001",
        "http://127.0.0.1:0",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:+80",
        "http://127.0.0.1:1:2",
        "http://127.0.0.1:9001/?x=1",
    ] {
        cases.push(BadFile {
            what: "an endpoint that is not an http URL with a host and a valid port",
            text: with("endpoint", json!(endpoint)).to_string(),
            needles: vec![
                la.clone(),
                "\"endpoint\"".to_string(),
                format!("{endpoint:?}"),
            ],
        });
    }
    for max in [json!(0), json!(-1), json!("2"), json!(1.5), json!(null)] {
        cases.push(BadFile {
            what: "a max_concurrent_jobs that is not a whole number of at least 1",
            text: with("max_concurrent_jobs", max.clone()).to_string(),
            needles: vec![
                la.clone(),
                "\"max_concurrent_jobs\"".to_string(),
                format!("got {max}"),
            ],
        });
    }
    cases.push(BadFile {
        what: "a label given twice",
        text: with("labels", json!(["gpu", "gpu"])).to_string(),
        needles: vec![
            la.clone(),
            "field \"labels\" is not a valid list of labels: label \"gpu\" is given twice"
                .to_string(),
        ],
    });
    cases.push(BadFile {
        what: "invalid JSON",
        text: format!(r#"[{{"worker_id": "{a}", "endpoint": "http://127.0.0.1:9001""#),
        needles: vec!["not valid JSON".to_string()],
    });
    cases
}

#[test]
fn every_kind_of_bad_workers_file_is_refused_by_check_and_at_start() {
    let dir = temp_dir();
    for (i, case) in bad_files().iter().enumerate() {
        let path = dir.path().join(format!("workers-{i}.json"));
        fs::write(&path, &case.text).unwrap();
        let checked = run(&["check", path.to_str().unwrap()]);
        assert_eq!(
            checked.code,
            Some(1),
            "check accepted {}: {}\n{}",
            case.what,
            case.text,
            checked.describe()
        );
        assert!(
            contains_all(&checked.stderr, &case.needles),
            "check of {} ({}) should say {:?}:\n{}",
            case.what,
            case.text,
            case.needles,
            checked.describe()
        );
        assert!(checked.stderr.contains(path.to_str().unwrap()));

        let started = serve(dir.path(), &path);
        assert_eq!(
            started.code,
            Some(1),
            "the coordinator did not refuse {}: {}\n{}",
            case.what,
            case.text,
            started.describe()
        );
        assert!(
            contains_all(&started.stderr, &case.needles),
            "the refusal of {} ({}) should say {:?}:\n{}",
            case.what,
            case.text,
            case.needles,
            started.describe()
        );
        assert!(
            started.stderr.contains(path.to_str().unwrap()),
            "the refusal does not name the file: {}",
            started.describe()
        );
        assert!(
            !started.stderr.contains("Listening on"),
            "{}",
            started.describe()
        );
    }
}

#[test]
fn a_missing_workers_file_is_refused_by_check_and_at_start() {
    let dir = temp_dir();
    let path = dir.path().join("absent.json");
    let checked = run(&["check", path.to_str().unwrap()]);
    assert_eq!(checked.code, Some(1), "{}", checked.describe());
    assert!(
        checked.stderr.contains("cannot read the workers file")
            && checked.stderr.contains("absent.json"),
        "{}",
        checked.describe()
    );
    let started = serve(dir.path(), &path);
    assert_eq!(started.code, Some(1), "{}", started.describe());
    assert!(
        started.stderr.contains("cannot read the workers file"),
        "{}",
        started.describe()
    );
    let defaulted = run(&["--port", "0", "--bind", "127.0.0.1"]);
    assert_eq!(defaulted.code, Some(1), "{}", defaulted.describe());
    assert!(
        defaulted.stderr.contains("workers.json"),
        "the default workers file is not named: {}",
        defaulted.describe()
    );
}

#[test]
fn a_valid_workers_file_passes_check_with_one_line_per_worker() {
    let ids: Vec<String> = (1..=3).map(known_id).collect();
    let entries = json!([
        {"worker_id": ids[0], "endpoint": "http://10.0.0.11:8443", "max_concurrent_jobs": 2},
        {"worker_id": ids[1], "endpoint": "http://worker-b.example"},
        {"worker_id": ids[2], "endpoint": "http://[::1]:9100", "max_concurrent_jobs": 1},
    ]);
    let dir = temp_dir();
    let path = dir.path().join("workers.json");
    fs::write(&path, entries.to_string()).unwrap();
    let checked = run(&["check", path.to_str().unwrap()]);
    assert_eq!(checked.code, Some(0), "{}", checked.describe());
    let lines: Vec<&str> = checked
        .stdout
        .lines()
        .filter(|l| l.starts_with("worker "))
        .collect();
    assert_eq!(lines.len(), 3, "{}", checked.describe());
    let expected = [
        ("http://10.0.0.11:8443", 2),
        ("http://worker-b.example", 4),
        ("http://[::1]:9100", 1),
    ];
    for (i, (line, (endpoint, max))) in lines.iter().zip(expected).enumerate() {
        assert_eq!(
            *line,
            format!(
                "worker {i}: {}... at {endpoint} (max_concurrent_jobs {max})",
                short(&ids[i])
            )
        );
    }
    assert!(
        checked.stdout.contains("3 workers, OK"),
        "{}",
        checked.describe()
    );
    assert!(!checked.stdout.contains("note:"), "{}", checked.describe());
    // Two workers on one host: sandrun's job directory and ids are the host's, shared.
    let entries = json!([
        {"worker_id": ids[0], "endpoint": "http://10.0.0.11:8443"},
        {"worker_id": ids[1], "endpoint": "http://10.0.0.11:8444"},
    ]);
    fs::write(&path, entries.to_string()).unwrap();
    let checked = run(&["check", path.to_str().unwrap()]);
    assert_eq!(checked.code, Some(0), "{}", checked.describe());
    assert!(
        checked
            .stdout
            .contains("note: workers 0 and 1 are on one host (10.0.0.11): two sandrun workers"),
        "{}",
        checked.describe()
    );

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("workers.json.example");
    let checked = run(&["check", example.to_str().unwrap()]);
    assert_eq!(checked.code, Some(0), "{}", checked.describe());
}

/// PKCS#8 v1 PEM of an Ed25519 key, as OpenSSL writes it: a fixed 16-byte DER prefix, then the
/// 32-byte seed.
fn pkcs8_pem(seed: &[u8; 32]) -> String {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    )
}

fn hex32(text: &str) -> [u8; 32] {
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[test]
fn worker_id_prints_the_id_of_a_known_key() {
    // RFC 8032, section 7.1, test 1.
    let seed = hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let public = hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    assert_eq!(
        SigningKey::from_bytes(&seed).verifying_key().to_bytes(),
        public
    );
    let dir = temp_dir();
    let path = dir.path().join("worker_key.pem");
    fs::write(&path, pkcs8_pem(&seed)).unwrap();
    let printed = run(&["worker-id", path.to_str().unwrap()]);
    assert_eq!(printed.code, Some(0), "{}", printed.describe());
    assert_eq!(printed.stdout, format!("{}\n", STANDARD.encode(public)));

    let emulator_key = WorkerKey::from_secret([42; 32]);
    let path = dir.path().join("emulator_key.pem");
    emulator_key.save(&path).unwrap();
    let printed = run(&["worker-id", path.to_str().unwrap()]);
    assert_eq!(printed.code, Some(0), "{}", printed.describe());
    assert_eq!(printed.stdout.trim(), emulator_key.worker_id());
}

fn openssl(args: &[&str]) -> Option<Vec<u8>> {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output.status.success().then_some(output.stdout)
}

#[test]
fn worker_id_matches_openssl_for_a_generated_key() {
    let dir = temp_dir();
    let key = dir.path().join("key.pem");
    let key = key.to_str().unwrap();
    if openssl(&["genpkey", "-algorithm", "ed25519", "-out", key]).is_none() {
        eprintln!("openssl is not available: skipping the cross-check with openssl");
        return;
    }
    let der = openssl(&["pkey", "-in", key, "-pubout", "-outform", "DER"]).unwrap();
    assert_eq!(der.len(), 44, "an Ed25519 SubjectPublicKeyInfo is 44 bytes");
    let expected = STANDARD.encode(&der[12..]);
    let printed = run(&["worker-id", key]);
    assert_eq!(printed.code, Some(0), "{}", printed.describe());
    assert_eq!(printed.stdout.trim(), expected);

    let ed448 = dir.path().join("ed448.pem");
    let ed448 = ed448.to_str().unwrap();
    if openssl(&["genpkey", "-algorithm", "ed448", "-out", ed448]).is_some() {
        let refused = run(&["worker-id", ed448]);
        assert_eq!(refused.code, Some(1), "{}", refused.describe());
        assert!(
            refused.stderr.contains("is not an Ed25519 private key"),
            "{}",
            refused.describe()
        );
    }
}

#[test]
fn worker_id_refuses_what_is_not_an_ed25519_key_file() {
    let dir = temp_dir();
    let plain = dir.path().join("plain.txt");
    fs::write(&plain, "hello, I am not a key\n").unwrap();
    let rsa = dir.path().join("rsa.pem");
    fs::write(
        &rsa,
        "-----BEGIN RSA PRIVATE KEY-----\n\
         MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n\
         -----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let truncated = dir.path().join("truncated.pem");
    let full = pkcs8_pem(&[9; 32]);
    fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let public = dir.path().join("public.pem");
    fs::write(
        &public,
        "-----BEGIN PUBLIC KEY-----\n\
         MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n\
         -----END PUBLIC KEY-----\n",
    )
    .unwrap();
    for path in [&plain, &rsa, &truncated, &public] {
        let refused = run(&["worker-id", path.to_str().unwrap()]);
        assert_eq!(refused.code, Some(1), "{}", refused.describe());
        assert!(refused.stdout.is_empty(), "{}", refused.describe());
        assert!(
            refused.stderr.contains(path.to_str().unwrap())
                && refused
                    .stderr
                    .contains("is not an Ed25519 private key in PKCS#8 PEM form"),
            "{}",
            refused.describe()
        );
    }
    // A PKCS#8 key of another algorithm is told so (it named the Ed25519 OID as unsupported).
    let ec = dir.path().join("ec.pem");
    let ec_key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    fs::write(&ec, ec_key.serialize_pem()).unwrap();
    let refused = run(&["worker-id", ec.to_str().unwrap()]);
    assert_eq!(refused.code, Some(1), "{}", refused.describe());
    assert!(
        refused.stderr.contains("a key of another algorithm") && !refused.stderr.contains("OID"),
        "{}",
        refused.describe()
    );
    let missing = dir.path().join("missing.pem");
    let refused = run(&["worker-id", missing.to_str().unwrap()]);
    assert_eq!(refused.code, Some(1), "{}", refused.describe());
    assert!(refused.stdout.is_empty(), "{}", refused.describe());
    assert!(
        refused.stderr.contains("missing.pem") && refused.stderr.contains("cannot be read"),
        "{}",
        refused.describe()
    );
}

/// A file the coordinator reads whole (the workers file, a PEM certificate or key, a worker's
/// key file) is read up to a bound: `--workers /dev/zero` took 8 GB in 3 s, and `worker-id
/// /dev/zero` read until memory ran out.
#[test]
fn an_endless_file_is_refused_at_its_bound() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("workers.json.example");
    let example = example.to_str().expect("path");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--workers", "/dev/zero", "--port", "0"],
            "the workers file is larger than 16777216 bytes",
        ),
        (
            &[
                "--workers",
                example,
                "--port",
                "0",
                "--tls-cert",
                "/dev/zero",
                "--tls-key",
                "/dev/zero",
            ],
            "/dev/zero: the file is larger than 4194304 bytes",
        ),
        (&["worker-id", "/dev/zero"], "larger than 65536 bytes"),
        (&["check", "/dev/zero"], "the workers file is larger than"),
    ];
    for (args, says) in cases {
        let run = run(args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.describe());
        assert!(run.stderr.contains(says), "{args:?}: {}", run.describe());
    }
}
