//! sandrun's live stream, `WS /stream/{id}`: a subscriber is registered before the route takes
//! the jobs lock; the executor broadcasts `[STATUS] Job started`, then (only when the job ends)
//! its stdout and `[STDERR]\n` + stderr, then `[DONE] Job <status> (exit=N, CPU=X.XXXXXXs,
//! Mem=NMB)` with CPU to 6 decimals. A subscriber that joined before the end is left open after
//! `[DONE]`; one that joined after gets the final logs, `[DONE] Job <status>` and a close.
//! sandrun does not ignore SIGPIPE: a frame written to a stream its client closed (once the
//! client's reset came back) kills the worker, and so it does here. Knobs tamper with it for
//! tests.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};

use super::control::lock;
use super::http::{Request, Response};
use super::jobs::{signing_payload, Job};
use super::state::{Incarnation, Shared};

/// How the stream and the signed result misbehave. `StreamKnobs::default()` is sandrun's
/// behaviour.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamKnobs {
    /// Results are signed with another valid key (the impostor's) while the worker keeps
    /// reporting its own id.
    pub sign_with_other_key: bool,
    /// Results carry no signature (`worker_metadata.signature` null); the worker id stays.
    pub drop_signature: bool,
    /// The first output file is changed after its sha256 was signed (a line appended).
    pub alter_output_after_signing: bool,
    /// The first output file's first byte is changed after its sha256 was signed (its size
    /// kept).
    pub flip_output_after_signing: bool,
    /// `/stream/{id}` answers 404, like a worker without a stream.
    pub disabled: bool,
    /// Subscribers are cut (close frame, connection shut) when the job starts.
    pub close_early: bool,
    /// No `[DONE]` line is ever sent.
    pub never_done: bool,
    /// A subscriber is pinged this often while it is silent (a worker or proxy that keeps a
    /// stream alive; sandrun sends no ping), and pongs are passed over.
    pub ping_every: Option<Duration>,
    /// The simulated job prints this many lines over its run and each is broadcast as it is
    /// printed (a worker that streams output live, unlike sandrun); 0: sandrun's behaviour.
    pub live_lines: usize,
    /// Each live line is padded with `x` to this many bytes (a job that prints a lot); 0: as
    /// printed.
    pub live_line_bytes: usize,
}

/// The subscribers of each job and what was broadcast (sandrun's `OutputBroadcaster`).
#[derive(Default)]
pub struct Broadcaster {
    subscribers: Mutex<HashMap<String, Vec<(u64, TcpStream)>>>,
    accumulated: Mutex<HashMap<String, String>>,
    next: Mutex<u64>,
    /// A frame was written to a stream whose client had closed it (`EPIPE`): sandrun, which
    /// does not ignore SIGPIPE, would be dead.
    pipe_broken: AtomicBool,
}

fn text_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n <= 125 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// Writes a frame; a write that fails with `EPIPE` (the client closed and its reset came back)
/// is noted in `b`: it is the write that raises SIGPIPE in sandrun.
fn send_frame(b: &Broadcaster, stream: &mut TcpStream, frame: &[u8]) -> bool {
    match stream.write_all(frame) {
        Ok(()) => true,
        Err(e) => {
            if e.kind() == ErrorKind::BrokenPipe {
                b.pipe_broken.store(true, Ordering::SeqCst);
            }
            false
        }
    }
}

fn send_text(b: &Broadcaster, stream: &mut TcpStream, text: &str) -> bool {
    send_frame(b, stream, &text_frame(0x1, text.as_bytes()))
}

fn send_close(b: &Broadcaster, stream: &mut TcpStream) {
    send_frame(b, stream, &text_frame(0x8, &[]));
}

/// What SIGPIPE does to sandrun: once a frame went to a stream its client had closed, the
/// worker dies (`/health` stops answering). True when it died.
pub fn died_of_sigpipe(shared: &Shared, run: &Incarnation) -> bool {
    let broken = run.broadcaster.pipe_broken.swap(false, Ordering::SeqCst);
    if !broken || shared.control.get().survives_sigpipe {
        return false;
    }
    let what = "a frame was written to a WebSocket stream its client had closed (SIGPIPE): the worker died";
    eprintln!("dev-worker: {what}");
    shared.recorder.fault(what.to_string());
    run.kill();
    true
}

impl Broadcaster {
    fn subscribe(&self, id: &str, stream: &TcpStream) -> Option<u64> {
        let clone = stream.try_clone().ok()?;
        let mut next = lock(&self.next);
        *next += 1;
        lock(&self.subscribers)
            .entry(id.to_string())
            .or_default()
            .push((*next, clone));
        Some(*next)
    }

    fn unsubscribe(&self, id: &str, key: u64) {
        if let Some(list) = lock(&self.subscribers).get_mut(id) {
            list.retain(|(k, _)| *k != key);
        }
    }

    /// Sends a text frame to every subscriber of a job, dropping dead ones.
    pub fn broadcast(&self, id: &str, text: &str) {
        if let Some(list) = lock(&self.subscribers).get_mut(id) {
            list.retain_mut(|(_, s)| send_text(self, s, text));
        }
    }

    /// Keeps output for subscribers that join later.
    pub fn append_output(&self, id: &str, text: &str) {
        lock(&self.accumulated)
            .entry(id.to_string())
            .or_default()
            .push_str(text);
    }

    /// Closes every subscriber of a job (the `close_early` knob).
    pub fn cut(&self, id: &str) {
        if let Some(list) = lock(&self.subscribers).remove(id) {
            for (_, mut s) in list {
                send_close(self, &mut s);
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Whether a request is a WebSocket upgrade (sandrun looks `Upgrade` and `Connection` up by
/// exact name).
pub fn is_upgrade(request: &Request) -> bool {
    request
        .header("Upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && request
            .header("Connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade"))
}

/// The executor's broadcasts: the job started.
pub fn started(shared: &Shared, run: &Incarnation, id: &str) {
    if shared.control.get().stream.close_early {
        run.broadcaster.broadcast(id, "[STATUS] Job started\n");
        run.broadcaster.cut(id);
        return;
    }
    run.broadcaster.broadcast(id, "[STATUS] Job started\n");
}

/// The executor's broadcasts: the job ended with these logs (stdout, stderr).
pub fn output(shared: &Shared, run: &Incarnation, id: &str, logs: (&[u8], &[u8])) {
    let knobs = shared.control.get().stream;
    let b = &run.broadcaster;
    if knobs.live_lines == 0 && !logs.0.is_empty() {
        let out = String::from_utf8_lossy(logs.0);
        b.broadcast(id, &out);
        b.append_output(id, &out);
    }
    if !logs.1.is_empty() {
        let err = format!("[STDERR]\n{}", String::from_utf8_lossy(logs.1));
        b.broadcast(id, &err);
        b.append_output(id, &err);
    }
}

/// The executor's broadcasts: the job's `[DONE]` line with its figures, once its outputs were
/// hashed and its result signed.
pub fn done(shared: &Shared, run: &Incarnation, id: &str, status: &str, figures: (i32, f64, u64)) {
    let knobs = shared.control.get().stream;
    let b = &run.broadcaster;
    if !knobs.never_done {
        let (exit, cpu, mem) = figures;
        shared.recorder.done(id);
        b.broadcast(
            id,
            &format!("[DONE] Job {status} (exit={exit}, CPU={cpu:.6}s, Mem={mem}MB)\n"),
        );
    }
}

/// Serves `WS /stream/{id}` on its connection, as sandrun does.
pub fn serve(shared: &Shared, run: &Incarnation, stream: &mut TcpStream, request: &Request) {
    let knobs = shared.control.get().stream;
    let key = request.header("Sec-WebSocket-Key").unwrap_or_default();
    if knobs.disabled || !is_upgrade(request) || key.is_empty() {
        let _ = Response::error(404, "Not found").write_to(stream, true);
        return;
    }
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        STANDARD.encode(sha.finalize())
    );
    if stream.write_all(answer.as_bytes()).is_err() {
        return;
    }
    let id = request.route()["/stream/".len()..].to_string();
    let b = &run.broadcaster;
    let Some(subscription) = run.broadcaster.subscribe(&id, stream) else {
        return;
    };
    shared.recorder.subscribed(&id);
    let accumulated = lock(&run.broadcaster.accumulated).get(&id).cloned();
    if let Some(text) = accumulated {
        send_text(b, stream, &text);
    }
    let ended = {
        let table = lock(&run.jobs);
        match table.jobs.get(&id) {
            None => {
                send_text(b, stream, &format!("[ERROR] Job not found: {id}\n"));
                None
            }
            Some(job) => {
                send_text(b, stream, &format!("[STATUS] Job status: {}\n", job.status));
                if job.status == "completed" || job.status == "failed" {
                    final_logs(b, stream, &job.stdout, &job.stderr, job.status, &knobs);
                    None
                } else {
                    Some(())
                }
            }
        }
    };
    if ended.is_none() {
        send_close(b, stream);
        run.broadcaster.unsubscribe(&id, subscription);
        return;
    }
    // Like sandrun: wait for client frames; on one, answer `[DONE]` if the job ended.
    let mut header = [0u8; 2];
    if let Some(every) = knobs.ping_every {
        let _ = stream.set_read_timeout(Some(every));
    }
    while run.is_alive() {
        match stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if knobs.ping_every.is_some() && is_timeout(&e) => {
                if stream.write_all(&[0x80 | PING, 0]).is_err() {
                    break;
                }
                continue;
            }
            Err(_) => break,
        }
        if header[0] & 0x0F == 0x8 {
            break;
        }
        let len = usize::from(header[1] & 0x7F);
        let mut rest = vec![0u8; len + if header[1] & 0x80 != 0 { 4 } else { 0 }];
        if len >= 126 || stream.read_exact(&mut rest).is_err() {
            break;
        }
        if header[0] & 0x0F == PONG {
            continue;
        }
        let status = lock(&run.jobs).jobs.get(&id).map(|j| j.status);
        if let Some(status @ ("completed" | "failed")) = status {
            if !knobs.never_done {
                send_text(b, stream, &format!("[DONE] Job {status}\n"));
            }
            break;
        }
    }
    run.broadcaster.unsubscribe(&id, subscription);
}

/// The opcodes of a ping and of a pong.
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Whether a read ended at its timeout.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Applies the result-tampering knobs to a job that was just signed.
pub fn tamper(shared: &Shared, job: &mut Job) {
    let knobs = shared.control.get().stream;
    if knobs.drop_signature {
        job.signature = None;
    }
    if knobs.sign_with_other_key && job.signature.is_some() {
        let hashes = job
            .output_files
            .iter()
            .map(|(path, meta)| (path.clone(), meta.sha256.clone()))
            .collect();
        let payload = signing_payload(
            &job.job_hash,
            job.exit_code,
            job.cpu_seconds,
            job.memory_mb,
            &hashes,
        );
        job.signature = Some(shared.impostor.sign_base64(&payload));
    }
    if knobs.alter_output_after_signing || knobs.flip_output_after_signing {
        if let Some(path) = job.output_files.keys().next() {
            let file = job.dir.join(path);
            let mut bytes = std::fs::read(&file).unwrap_or_default();
            if knobs.alter_output_after_signing {
                bytes.extend_from_slice(b"altered after signing\n");
            }
            if let Some(first) = bytes
                .first_mut()
                .filter(|_| knobs.flip_output_after_signing)
            {
                *first ^= 0xff;
            }
            let _ = std::fs::write(&file, bytes);
        }
    }
}

fn final_logs(
    b: &Broadcaster,
    stream: &mut TcpStream,
    stdout: &[u8],
    stderr: &[u8],
    status: &str,
    knobs: &StreamKnobs,
) {
    if !stdout.is_empty() {
        send_text(b, stream, &String::from_utf8_lossy(stdout));
    }
    if !stderr.is_empty() {
        send_text(
            b,
            stream,
            &format!("[STDERR]\n{}", String::from_utf8_lossy(stderr)),
        );
    }
    if !knobs.never_done {
        send_text(b, stream, &format!("[DONE] Job {status}\n"));
    }
}
