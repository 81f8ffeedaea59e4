//! A static web page on its own origin for browser tests, and headless Chromium to open it.
//!
//! The server answers `GET /` with the page, `GET /<name>` with the files it was given, and
//! `POST /report` by keeping the body: the page posts what it saw there (same origin, no CORS).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::util::{poll_until, temp_dir};

/// How long one connection to the page server may stay silent.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The page server: `http://127.0.0.1:PORT`.
pub struct PageServer {
    port: u16,
    report: Arc<Mutex<Option<String>>>,
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(
    stream: TcpStream,
    files: &BTreeMap<String, (String, Vec<u8>)>,
    report: &Mutex<Option<String>>,
) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("").to_string();
    let method = method.to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).map_or(true, |n| n == 0) || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut stream = reader.into_inner();
    match (method.as_str(), files.get(&path)) {
        ("POST", _) if path == "/report" => {
            *report.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(String::from_utf8_lossy(&body).into_owned());
            respond(&mut stream, "204 No Content", "text/plain", b"");
        }
        ("GET", Some((content_type, bytes))) => respond(&mut stream, "200 OK", content_type, bytes),
        _ => respond(&mut stream, "404 Not Found", "text/plain", b"not found"),
    }
}

impl PageServer {
    /// Serves these files (path, content type, bytes) on a free loopback port.
    pub fn start(files: Vec<(&str, &str, Vec<u8>)>) -> PageServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind the page server: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let files: BTreeMap<String, (String, Vec<u8>)> = files
            .into_iter()
            .map(|(path, kind, bytes)| (path.to_string(), (kind.to_string(), bytes)))
            .collect();
        let files = Arc::new(files);
        let report = Arc::new(Mutex::new(None));
        let kept = Arc::clone(&report);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let files = Arc::clone(&files);
                let report = Arc::clone(&kept);
                thread::spawn(move || serve(stream, &files, &report));
            }
        });
        PageServer { port, report }
    }

    /// Its origin, `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits for the page's report.
    pub fn wait_report(&self, deadline: Duration) -> Option<String> {
        poll_until(deadline, || {
            self.report
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }
}

/// `binary` (Chromium) with the flags headless Chromium needs on this machine and the profile
/// directory `profile` (fresh and empty: the network is closed).
pub fn headless_chromium(binary: &str, profile: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// Headless Chromium on one URL, with a fresh profile; killed (its whole process group) when
/// dropped.
pub struct Browser {
    child: Child,
    _profile: TempDir,
}

impl Browser {
    /// Opens `url` in headless Chromium (Debian's `chromium`).
    pub fn open(url: &str) -> Browser {
        let profile = temp_dir();
        let child = headless_chromium("chromium", profile.path())
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromium (Debian package `chromium`; .ci/run installs it): {e}"
                )
            });
        Browser::adopt(child, profile)
    }

    /// Takes charge of a Chromium started in its own process group with `profile`.
    pub(super) fn adopt(child: Child, profile: TempDir) -> Browser {
        Browser {
            child,
            _profile: profile,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this test started; no memory is involved.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}
