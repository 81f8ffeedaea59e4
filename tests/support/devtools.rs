//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! commands in on fd 3, answers and events out on fd 4, one JSON message per NUL byte): open a
//! page, run script in it (clicks, reads of the DOM), accept its `confirm()` dialogs, and collect
//! what it reports as an error (exceptions, `console.error`, log entries such as CSP refusals).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use super::page_server::{headless_chromium, Browser};
use super::util::temp_dir;
use serde_json::{json, Value};

/// Longest one protocol command may take to answer.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// One page in headless Chromium under DevTools control; the browser (its whole process group)
/// is killed when this is dropped.
pub struct DevTools {
    _browser: Browser,
    commands: File,
    messages: Receiver<Value>,
    session: String,
    next_id: u64,
    dialogs: Vec<String>,
    errors: Vec<String>,
    network_errors: Vec<String>,
}

/// A pipe whose both ends close on exec: (read end, write end).
fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2(2) writes two descriptors into the array it is given.
    let done = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(done, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

/// Reads NUL-separated JSON messages until the browser closes its end.
fn read_messages(from: File, to: mpsc::Sender<Value>) {
    let mut reader = BufReader::new(from);
    let mut message = Vec::new();
    loop {
        message.clear();
        match reader.read_until(0, &mut message) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if message.last() == Some(&0) {
            message.pop();
        }
        let Ok(value) = serde_json::from_slice::<Value>(&message) else {
            continue;
        };
        if to.send(value).is_err() {
            return;
        }
    }
}

impl DevTools {
    /// Starts `binary` (Debian's `chromium`) headless with a fresh profile and opens `url` in a
    /// new page, its runtime, log and dialogs watched; returns once the page has loaded.
    pub fn open(binary: &str, url: &str) -> DevTools {
        let profile = temp_dir();
        let (command_read, command_write) = pipe();
        let (answer_read, answer_write) = pipe();
        let mut command = headless_chromium(binary, profile.path());
        command
            .arg("--remote-debugging-pipe")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2): the pipe
        // ends go to fds 3 and 4 (through copies above 9, so neither overwrites the other),
        // where dup2 leaves them open across exec.
        unsafe {
            command.pre_exec(move || {
                let input = libc::fcntl(command_read, libc::F_DUPFD_CLOEXEC, 10);
                let output = libc::fcntl(answer_write, libc::F_DUPFD_CLOEXEC, 10);
                if input < 0 || output < 0 || libc::dup2(input, 3) < 0 || libc::dup2(output, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = command.spawn();
        // SAFETY: these descriptors came from pipe() above and are owned here, once each.
        let (commands, answers) = unsafe {
            libc::close(command_read);
            libc::close(answer_write);
            (
                File::from_raw_fd(command_write),
                File::from_raw_fd(answer_read),
            )
        };
        let child = spawned.unwrap_or_else(|e| {
            panic!("cannot start {binary} (Debian package `chromium`; .ci/run installs it): {e}")
        });
        let (sender, messages) = mpsc::channel();
        thread::spawn(move || read_messages(answers, sender));
        let mut browser = DevTools {
            _browser: Browser::adopt(child, profile),
            commands,
            messages,
            session: String::new(),
            next_id: 0,
            dialogs: Vec::new(),
            errors: Vec::new(),
            network_errors: Vec::new(),
        };
        let target = browser.command("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap_or_default().to_string();
        let attached = browser.command(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no DevTools session: {attached}"))
            .to_string();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.command(domain, json!({}));
        }
        browser.command("Page.navigate", json!({"url": url}));
        let loaded = browser.wait_for(
            "location.href !== 'about:blank' && document.readyState === 'complete'",
            COMMAND_DEADLINE,
        );
        assert!(
            loaded.is_some(),
            "{url} did not load in {COMMAND_DEADLINE:?}"
        );
        browser
    }

    /// Sends one command (to the page once attached) and waits for its answer, handling the
    /// events that arrive meanwhile; panics on a protocol error or after `COMMAND_DEADLINE`.
    fn command(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params);
        let end = Instant::now() + COMMAND_DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let message = match self.messages.recv_timeout(left) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{method}: no answer from chromium in {COMMAND_DEADLINE:?}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!("{method}: chromium went away"),
            };
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    panic!("{method}: {error}");
                }
                return message["result"].clone();
            }
            self.event(&message);
        }
    }

    fn send(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut message = json!({"id": self.next_id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("{method}: writing to chromium: {e}"));
        self.next_id
    }

    /// Keeps what an event says: dialogs are accepted (an operator confirming), errors kept.
    fn event(&mut self, message: &Value) {
        let params = &message["params"];
        match message["method"].as_str().unwrap_or_default() {
            "Page.javascriptDialogOpening" => {
                self.dialogs
                    .push(params["message"].as_str().unwrap_or_default().to_string());
                self.send("Page.handleJavaScriptDialog", json!({"accept": true}));
            }
            "Runtime.exceptionThrown" => self.errors.push(format!(
                "exception: {}",
                params["exceptionDetails"]["exception"]["description"]
                    .as_str()
                    .or(params["exceptionDetails"]["text"].as_str())
                    .unwrap_or_default()
            )),
            "Runtime.consoleAPICalled" if params["type"] == "error" => {
                self.errors
                    .push(format!("console.error: {}", params["args"]));
            }
            "Log.entryAdded" if params["entry"]["level"] == "error" => {
                let entry = &params["entry"];
                let line = format!(
                    "{} ({}): {}",
                    entry["source"].as_str().unwrap_or_default(),
                    entry["url"].as_str().unwrap_or_default(),
                    entry["text"].as_str().unwrap_or_default()
                );
                if entry["source"] == "network" {
                    self.network_errors.push(line);
                } else {
                    self.errors.push(line);
                }
            }
            _ => {}
        }
    }

    /// Evaluates `script` in the page (a promise is awaited) and returns its value; panics
    /// when it throws.
    pub fn eval(&mut self, script: &str) -> Value {
        let answer = self.command(
            "Runtime.evaluate",
            json!({"expression": script, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(details) = answer.get("exceptionDetails") {
            panic!("{script}: {details}");
        }
        answer["result"]["value"].clone()
    }

    /// Evaluates `script` until it gives something other than null or false, or `deadline`
    /// passes (then None).
    pub fn wait_for(&mut self, script: &str, deadline: Duration) -> Option<Value> {
        let end = Instant::now() + deadline;
        loop {
            let value = self.eval(script);
            if !value.is_null() && value != Value::Bool(false) {
                return Some(value);
            }
            if Instant::now() > end {
                return None;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The messages of the dialogs the page opened (each accepted).
    pub fn dialogs(&self) -> &[String] {
        &self.dialogs
    }

    /// Script errors, `console.error` calls and non-network log errors (CSP refusals) so far.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Requests the browser logged as failed (e.g. a 401 answer) so far.
    pub fn network_errors(&self) -> &[String] {
        &self.network_errors
    }
}
