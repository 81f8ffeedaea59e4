//! `https://` workers: ureq 2's TLS hook filled with rustls 0.23 (ureq's own `tls` feature would
//! bring a second root store; this one trusts what `--worker-ca` or the system gives).

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use ureq::ReadWrite;

use crate::base::sync::lock;

/// Opens TLS sessions to workers with a rustls client configuration, which a reload may set
/// or replace (sessions already open keep theirs).
pub struct Connector(Mutex<Option<Arc<ClientConfig>>>);

impl Connector {
    /// Opens sessions with `config`; without one, every session is refused until
    /// [`Connector::replace`] gives one.
    pub fn new(config: Option<Arc<ClientConfig>>) -> Self {
        Connector(Mutex::new(config))
    }

    /// Opens the sessions from now on with `config`.
    pub fn replace(&self, config: Arc<ClientConfig>) {
        *lock(&self.0) = Some(config);
    }
}

impl ureq::TlsConnector for Connector {
    fn connect(
        &self,
        dns_name: &str,
        io: Box<dyn ReadWrite>,
    ) -> Result<Box<dyn ReadWrite>, ureq::Error> {
        let host = dns_name.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{dns_name:?} is no TLS server name: {e}"),
            )
        })?;
        let config = lock(&self.0).clone().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "no TLS settings for https:// workers yet (they are read at start, on SIGHUP and on POST /reload)",
            )
        })?;
        let session = ClientConnection::new(config, name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Box::new(TlsStream(StreamOwned::new(session, io))))
    }
}

/// One TLS session over a worker connection.
struct TlsStream(StreamOwned<ClientConnection, Box<dyn ReadWrite>>);

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsStream({:?})", self.0.sock)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl ReadWrite for TlsStream {
    /// The TCP socket under TLS, so ureq's timeouts apply to it.
    fn socket(&self) -> Option<&TcpStream> {
        self.0.sock.socket()
    }
}
