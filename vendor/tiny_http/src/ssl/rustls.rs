//! Patched for rustls 0.23: the server configuration sits behind a lock so that it can be
//! replaced while the server runs (certificate rotation); each accepted connection takes the
//! configuration current at its accept.

use crate::connection::SharedConnection;
use crate::util::refined_tcp_stream::Stream as RefinedStream;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Instant;

type Inner = rustls::StreamOwned<rustls::ServerConnection, Bounded>;

/// Patched: the socket under a TLS stream. One TLS read may take many socket reads (the
/// handshake, a record that trickles in a byte at a time), each of which the socket's read
/// timeout bounds on its own; while `until` is set, each waits no later than it, so a whole TLS
/// read is bounded as one plain read is (`--client-timeout`, a request head's deadline).
pub(crate) struct Bounded {
    sock: SharedConnection,
    until: Option<Instant>,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(until) = self.until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS records did not come in time",
                ));
            }
            self.sock.set_read_timeout(Some(left))?;
        }
        self.sock.read(buf)
    }
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// A wrapper around an owned Rustls connection and corresponding stream.
///
/// Uses an internal Mutex to permit disparate reader & writer threads to access the stream independently.
pub(crate) struct RustlsStream(Arc<Mutex<Inner>>);

impl RustlsStream {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn peer_addr(&mut self) -> std::io::Result<Option<SocketAddr>> {
        self.lock().sock.sock.peer_addr()
    }

    pub(crate) fn shutdown(&mut self, how: Shutdown) -> std::io::Result<()> {
        self.lock().sock.sock.shutdown(how)
    }

    /// Patched: completes the handshake, every socket read of it held to `until` (see
    /// [`Bounded`]; `None`: the socket's read timeout alone); the socket's read timeout is then
    /// put back as it was. An error ends the connection.
    pub(crate) fn handshake(&self, until: Option<Instant>) -> io::Result<()> {
        let mut inner = self.lock();
        let timeout = inner.sock.sock.read_timeout()?;
        inner.sock.until = until;
        let mut done = Ok(());
        while inner.conn.is_handshaking() {
            let Inner { conn, sock } = &mut *inner;
            match conn.complete_io(sock) {
                Ok((0, 0)) => {
                    done = Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the handshake made no progress",
                    ));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    done = Err(e);
                    break;
                }
            }
        }
        inner.sock.until = None;
        let restored = inner.sock.sock.set_read_timeout(timeout);
        done?;
        restored
    }
}

impl Clone for RustlsStream {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Read for RustlsStream {
    /// Patched: the whole read (the handshake included, on the first) ends within the socket's
    /// read timeout as it stands when the read begins (see [`Bounded`]).
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut inner = self.lock();
        let timeout = inner.sock.sock.read_timeout()?;
        inner.sock.until = timeout.map(|t| Instant::now() + t);
        let read = inner.read(buf);
        inner.sock.until = None;
        let restored = inner.sock.sock.set_read_timeout(timeout);
        let n = read?;
        restored?;
        Ok(n)
    }
}

impl Write for RustlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.lock().flush()
    }
}

/// The TLS settings of a listener; `replace` swaps them for connections accepted afterwards.
pub struct TlsAcceptor(RwLock<Arc<rustls::ServerConfig>>);

impl TlsAcceptor {
    /// An acceptor with these settings.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        TlsAcceptor(RwLock::new(config))
    }

    /// Uses `config` for every connection accepted from now on.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    pub(crate) fn accept(
        &self,
        stream: SharedConnection,
    ) -> Result<RustlsStream, Box<dyn std::error::Error + Send + Sync + 'static>> {
        let config = Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner));
        let connection = rustls::ServerConnection::new(config)?;
        let socket = Bounded {
            sock: stream,
            until: None,
        };
        Ok(RustlsStream(Arc::new(Mutex::new(rustls::StreamOwned::new(
            connection, socket,
        )))))
    }
}

impl From<RustlsStream> for RefinedStream {
    fn from(stream: RustlsStream) -> Self {
        Self::Https(stream)
    }
}
