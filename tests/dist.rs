//! The release artifacts of `make dist` (target/dist/): for x86_64 and aarch64, a static
//! binary under 6 MiB in a tarball with README.md, workers.json.example, the systemd unit and
//! the alerting rules, and SHA256SUMS that match. The aarch64 binary runs under
//! `qemu-aarch64` (Debian `qemu-user`): `--version`, `check workers.json.example`, and serving
//! `/health` on loopback.
//!
//! `make dist` is not run here (two release builds); .ci/run runs it before `make test`. Without
//! target/dist these tests print why they skip, and fail under CI.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use support::{get, temp_dir, write_workers_json, FakeWorker};

const ARCHES: [&str; 2] = ["x86_64", "aarch64"];
const MAX_BYTES: u64 = 6 * 1024 * 1024;
/// How long the emulated binary may take to start and answer.
const QEMU_DEADLINE: Duration = Duration::from_secs(60);

fn dist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dist")
}

/// The unpacked release directory of `arch`, or None (with the reason printed; a failure
/// under CI) when `make dist` has not been run.
fn release(arch: &str) -> Option<PathBuf> {
    let dir = dist_dir().join(format!(
        "trusted-pool-{}-{arch}-linux-musl",
        env!("CARGO_PKG_VERSION")
    ));
    if dir.join("trusted-pool").is_file() {
        return Some(dir);
    }
    if let Ok(why) = std::env::var("TRUSTED_POOL_DIST_SKIPPED") {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing: CI must run make dist before make test",
        dir.display()
    );
    eprintln!(
        "SKIPPED: {} is missing (run make dist first)",
        dir.display()
    );
    None
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn each_release_is_a_small_static_binary_in_a_tarball_with_its_files_and_checksums() {
    let Some(_) = release("x86_64") else {
        return;
    };
    let sums = std::fs::read_to_string(dist_dir().join("SHA256SUMS")).expect("SHA256SUMS");
    for arch in ARCHES {
        let dir = release(arch).expect("both releases are built together");
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let binary = dir.join("trusted-pool");
        let size = std::fs::metadata(&binary).expect("binary").len();
        assert!(size < MAX_BYTES, "{name}: {size} bytes, over 6 MiB");
        eprintln!("{name}/trusted-pool: {size} bytes");
        let (_, kind) = run("file", &[&binary.to_string_lossy()]);
        assert!(
            kind.contains("statically linked") || kind.contains("static-pie linked"),
            "{kind}"
        );
        let tarball = format!("{name}.tar.gz");
        let (ok, listing) = run(
            "tar",
            &["-tzf", &dist_dir().join(&tarball).to_string_lossy()],
        );
        assert!(ok, "{listing}");
        for file in [
            "trusted-pool",
            "README.md",
            "workers.json.example",
            "trusted-pool.service",
            "alerts.yml",
        ] {
            assert!(
                listing.lines().any(|l| l == format!("{name}/{file}")),
                "{tarball} lacks {file}:\n{listing}"
            );
        }
        for listed in [tarball.clone(), format!("{name}/trusted-pool")] {
            assert!(
                sums.lines().any(|l| l.ends_with(&format!(" {listed}"))),
                "SHA256SUMS lacks {listed}:\n{sums}"
            );
        }
    }
    let (ok, check) = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(dist_dir())
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            )
        })
        .expect("sha256sum");
    assert!(ok, "{check}");
}

#[test]
fn the_aarch64_binary_runs_under_qemu_checks_a_file_and_serves_health() {
    let Some(dir) = release("aarch64") else {
        return;
    };
    let qemu_found = Command::new("qemu-aarch64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !qemu_found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install qemu-user"
        );
        eprintln!("SKIPPED: qemu-aarch64 is not installed (apt-get install qemu-user)");
        return;
    }
    let binary = dir.join("trusted-pool").to_string_lossy().into_owned();
    let (ok, version) = run("qemu-aarch64", &[&binary, "--version"]);
    assert!(ok, "{version}");
    assert_eq!(
        version.trim(),
        format!("trusted-pool {}", env!("CARGO_PKG_VERSION"))
    );
    let example = dir
        .join("workers.json.example")
        .to_string_lossy()
        .into_owned();
    let (ok, checked) = run("qemu-aarch64", &[&binary, "check", &example]);
    assert!(ok, "{checked}");

    // Serve on loopback with a loopback worker (never the example's 10.0.0.x endpoints).
    let worker = FakeWorker::start();
    let work = temp_dir();
    let workers = write_workers_json(work.path(), &[worker.entry(2)]);
    let mut child = Command::new("qemu-aarch64")
        .arg(&binary)
        .args(["--port", "0", "--bind", "127.0.0.1", "--workers"])
        .arg(&workers)
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-aarch64");
    let (found, port) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[aarch64] {line}");
            if let Some(addr) = line.split("Listening on http://").nth(1) {
                let _ = found.send(addr.trim().to_string());
            }
        }
    });
    let addr = port.recv_timeout(QEMU_DEADLINE);
    let answer = addr
        .as_ref()
        .ok()
        .map(|a| get(&format!("http://{a}/health")));
    let _ = child.kill();
    let _ = child.wait();
    let addr = addr.expect("the aarch64 coordinator did not say it listens");
    let (code, body) = answer.expect("health");
    assert_eq!(code, 200, "{addr}: {body}");
    assert!(body.contains("\"healthy\""), "{body}");
}
