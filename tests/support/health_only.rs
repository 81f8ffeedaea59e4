//! A lightweight stand-in for a healthy worker: a loopback listener that answers every request
//! with sandrun's healthy `/health` body, one thread per listener. Tests that need hundreds of
//! workers use it instead of the emulator, whose executor thread wakes every 10 ms.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::sandrun::WorkerKey;

/// How long one connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The most request bytes read before answering.
const MAX_REQUEST: usize = 64 * 1024;

/// A listener on 127.0.0.1 answering `{"status":"healthy","worker_id":...}` to every request.
pub struct HealthOnly {
    addr: SocketAddr,
    worker_id: String,
    closing: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl HealthOnly {
    /// Starts one on a free port with a new random identity.
    pub fn start() -> HealthOnly {
        let key = WorkerKey::generate().unwrap_or_else(|e| panic!("cannot generate a key: {e}"));
        let worker_id = key.worker_id();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind a health-only worker: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("health-only worker address: {e}"));
        let closing = Arc::new(AtomicBool::new(false));
        let body = format!(r#"{{"status":"healthy","worker_id":"{worker_id}"}}"#);
        let acceptor = {
            let closing = Arc::clone(&closing);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if closing.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        answer(stream, &body);
                    }
                }
            })
        };
        HealthOnly {
            addr,
            worker_id,
            closing,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The worker_id it reports.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// A workers.json entry for it: (worker_id, endpoint, max_concurrent_jobs).
    pub fn entry(&self, max_concurrent_jobs: u32) -> (String, String, u32) {
        (self.worker_id.clone(), self.endpoint(), max_concurrent_jobs)
    }
}

/// Reads one request head and answers it, then closes the connection.
fn answer(mut stream: TcpStream, body: &str) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let mut request = Vec::new();
    let mut chunk = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.shutdown(Shutdown::Both);
}

impl Drop for HealthOnly {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}
