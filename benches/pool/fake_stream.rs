//! The fast fake worker's `WS /stream/{id}` and result signatures, as sandrun serves them: the
//! status and start lines at once, the output and `[DONE]` with 6-decimal figures when the job
//! ends, the connection left open until the client closes it. Each stream runs on a thread of
//! its own so it never holds a connection-serving thread.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use trusted_pool::worker::websocket;

/// Longest a stream waits for its client to close it after `[DONE]`.
const LINGER: Duration = Duration::from_secs(30);

/// The signature sandrun makes for a finished job of the fake (exit 0, CPU 0, 0 MiB, one output).
pub fn sign(key: &SigningKey, job_hash: &str, result_sha256: &str) -> String {
    let text = format!("{job_hash}|0|0|0|result.txt:{result_sha256}|");
    STANDARD.encode(key.sign(text.as_bytes()).to_bytes())
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    websocket::frame(opcode, payload, None)
}

/// Serves one stream subscription: `done_at` is when the job ends (None: unknown job).
pub fn serve(mut stream: TcpStream, key: Option<String>, done_at: Option<Instant>, id: String) {
    thread::spawn(move || {
        let Some(key) = key else {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            websocket::accept_key(&key)
        );
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        let send =
            |s: &mut TcpStream, text: &str| s.write_all(&frame(0x1, text.as_bytes())).is_ok();
        let Some(done_at) = done_at else {
            send(&mut stream, &format!("[ERROR] Job not found: {id}\n"));
            let _ = stream.write_all(&frame(0x8, &[]));
            return;
        };
        if Instant::now() >= done_at {
            for line in [
                "[STATUS] Job status: completed\n",
                "ran main.py\n",
                "[DONE] Job completed\n",
            ] {
                send(&mut stream, line);
            }
            let _ = stream.write_all(&frame(0x8, &[]));
            return;
        }
        if !(send(&mut stream, "[STATUS] Job status: queued\n")
            && send(&mut stream, "[STATUS] Job started\n"))
        {
            return;
        }
        thread::sleep(done_at.saturating_duration_since(Instant::now()));
        if !(send(&mut stream, "ran main.py\n")
            && send(
                &mut stream,
                "[DONE] Job completed (exit=0, CPU=0.000000s, Mem=0MB)\n",
            ))
        {
            return;
        }
        let _ = stream.set_read_timeout(Some(LINGER));
        let mut sink = [0u8; 256];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        let _ = stream.shutdown(Shutdown::Both);
    });
}
