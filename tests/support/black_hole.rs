//! An endpoint that accepts connections and never reads nor answers.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// A listener on 127.0.0.1 that keeps every connection open and silent.
pub struct BlackHole {
    addr: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
    closing: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl BlackHole {
    /// Starts one on a free port.
    pub fn start() -> BlackHole {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind a black hole: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("black hole address: {e}"));
        let held = Arc::new(Mutex::new(Vec::new()));
        let closing = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (held, closing) = (Arc::clone(&held), Arc::clone(&closing));
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if closing.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        held.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(stream);
                    }
                }
            })
        };
        BlackHole {
            addr,
            held,
            closing,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}
