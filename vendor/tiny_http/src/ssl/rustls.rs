//! Patched for rustls 0.23: the server configuration sits behind a lock so that it can be
//! replaced while the server runs (certificate rotation); each accepted connection takes the
//! configuration current at its accept.

use crate::connection::SharedConnection;
use crate::util::refined_tcp_stream::Stream as RefinedStream;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

type Inner = rustls::StreamOwned<rustls::ServerConnection, SharedConnection>;

/// A wrapper around an owned Rustls connection and corresponding stream.
///
/// Uses an internal Mutex to permit disparate reader & writer threads to access the stream independently.
pub(crate) struct RustlsStream(Arc<Mutex<Inner>>);

impl RustlsStream {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn peer_addr(&mut self) -> std::io::Result<Option<SocketAddr>> {
        self.lock().sock.peer_addr()
    }

    pub(crate) fn shutdown(&mut self, how: Shutdown) -> std::io::Result<()> {
        self.lock().sock.shutdown(how)
    }
}

impl Clone for RustlsStream {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Read for RustlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.lock().read(buf)
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
        Ok(RustlsStream(Arc::new(Mutex::new(rustls::StreamOwned::new(
            connection, stream,
        )))))
    }
}

impl From<RustlsStream> for RefinedStream {
    fn from(stream: RustlsStream) -> Self {
        Self::Https(stream)
    }
}
