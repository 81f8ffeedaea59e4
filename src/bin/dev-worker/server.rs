//! Accepting connections and serving one request on each, in a thread per connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use super::http::{read_request, Incoming, Request, Response};
use super::routes;
use super::state::{Incarnation, Shared};
use super::stream;

/// How often a held (hanging, or a held download) request looks whether it may go.
const HANG_TICK: Duration = Duration::from_millis(20);

/// Accepts connections until the incarnation stops.
pub fn accept_loop(listener: TcpListener, shared: Arc<Shared>, run: Arc<Incarnation>) {
    for stream in listener.incoming() {
        if !run.is_alive() {
            break;
        }
        match stream {
            Ok(stream) => {
                let shared = Arc::clone(&shared);
                let run = Arc::clone(&run);
                thread::spawn(move || serve(stream, &shared, &run));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Serves one connection: one request, one answer (or none while hanging), then close.
fn serve(mut stream: TcpStream, shared: &Shared, run: &Incarnation) {
    let Some(tracked) = run.track(&stream) else {
        let _ = stream.shutdown(Shutdown::Both);
        return;
    };
    let ip = stream
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let max_bytes = shared.control.get().max_request_bytes;
    match read_request(&mut stream, max_bytes) {
        Ok(Incoming::Request(request)) => {
            let received_at = SystemTime::now();
            let kind = routes::kind(&request);
            shared.recorder.request(&request.method, kind);
            let serving = shared.recorder.serving(kind);
            if kind == "stream" {
                stream::serve(shared, run, &mut stream, &request);
                stream::died_of_sigpipe(shared, run);
            } else if hangs(shared, kind) {
                while run.is_alive() && hangs(shared, kind) {
                    thread::sleep(HANG_TICK);
                }
            } else {
                if kind == "download" {
                    thread::sleep(shared.control.get().download_delay);
                    while run.is_alive()
                        && is_file_download(&request)
                        && shared.control.get().hold_downloads
                    {
                        thread::sleep(HANG_TICK);
                    }
                }
                if kind == "submit" {
                    thread::sleep(shared.control.get().submit_delay);
                }
                if kind == "stats" {
                    thread::sleep(shared.control.get().stats_delay);
                }
                let response = routes::handle(shared, run, &request, &ip, received_at);
                // No longer counted as served from here: once the answer is written, its client
                // may send its next request before this thread gets past the write.
                drop(serving);
                let knobs = shared.control.get();
                let framed = kind != "download" || !knobs.unframed_downloads;
                match knobs.drip {
                    Some((dripped, every)) if dripped == kind => {
                        drip(run, &mut stream, &response.framed(framed), every);
                    }
                    _ if stalls(shared, &request, response.status) => {
                        stall(
                            run,
                            &mut stream,
                            &response.framed(framed),
                            response.body.len(),
                        );
                    }
                    _ if run.is_alive() => {
                        let _ = response.write_to(&mut stream, framed);
                    }
                    _ => {}
                }
            }
        }
        Ok(Incoming::TooLarge) => {
            let _ = Response::error(413, "Request exceeds 100MB limit").write_to(&mut stream, true);
        }
        Ok(Incoming::Nothing) | Err(_) => {}
    }
    let _ = stream.shutdown(Shutdown::Both);
    run.untrack(tracked);
}

/// Writes `bytes` one at a time, `every` apart, while the emulator runs (the `drip` knob).
fn drip(run: &Incarnation, stream: &mut TcpStream, bytes: &[u8], every: Duration) {
    for byte in bytes {
        if !run.is_alive() || stream.write_all(&[*byte]).is_err() {
            return;
        }
        thread::sleep(every);
    }
}

/// Whether this answer is one of the `stalled_downloads` (a file's, answered 200); counts the
/// knob down when it is.
fn stalls(shared: &Shared, request: &Request, status: u16) -> bool {
    let mut stalled = false;
    if is_file_download(request) && status == 200 {
        shared.control.set(|k| {
            if k.stalled_downloads > 0 {
                k.stalled_downloads -= 1;
                stalled = true;
            }
        });
    }
    stalled
}

/// Whether this is a download of one file (`/download/{id}/{path}`), not of the tarball.
fn is_file_download(request: &Request) -> bool {
    request
        .route()
        .strip_prefix("/download/")
        .is_some_and(|rest| rest.contains('/'))
}

/// Writes `bytes` but the second half of its `body_len`-byte body, then sends nothing more
/// until the client closes the connection or the emulator stops (the `stalled_downloads` knob).
fn stall(run: &Incarnation, stream: &mut TcpStream, bytes: &[u8], body_len: usize) {
    let sent = bytes.len() - body_len.div_ceil(2);
    if stream.write_all(&bytes[..sent]).is_err() || stream.flush().is_err() {
        return;
    }
    if stream.set_read_timeout(Some(HANG_TICK)).is_err() {
        return;
    }
    let mut sink = [0u8; 512];
    while run.is_alive() {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Whether a request of this kind is to be held unanswered now.
fn hangs(shared: &Shared, kind: &str) -> bool {
    let knobs = shared.control.get();
    knobs.hang || (knobs.hang_submit && kind == "submit")
}
