//! Abstractions of Tcp and Unix socket types

#[cfg(unix)]
use std::os::unix::net as unix_net;
use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    path::PathBuf,
};

/// Unified listener. Either a [`TcpListener`] or [`std::os::unix::net::UnixListener`]
pub enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(unix_net::UnixListener),
}
impl Listener {
    pub(crate) fn local_addr(&self) -> std::io::Result<ListenAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().map(ListenAddr::from),
            #[cfg(unix)]
            Self::Unix(l) => l.local_addr().map(ListenAddr::from),
        }
    }

    pub(crate) fn accept(&self) -> std::io::Result<(Connection, Option<SocketAddr>)> {
        match self {
            Self::Tcp(l) => l
                .accept()
                .map(|(conn, addr)| (Connection::from(conn), Some(addr))),
            #[cfg(unix)]
            Self::Unix(l) => l.accept().map(|(conn, _)| (Connection::from(conn), None)),
        }
    }
}
impl From<TcpListener> for Listener {
    fn from(s: TcpListener) -> Self {
        Self::Tcp(s)
    }
}
#[cfg(unix)]
impl From<unix_net::UnixListener> for Listener {
    fn from(s: unix_net::UnixListener) -> Self {
        Self::Unix(s)
    }
}

/// Unified connection. Either a [`TcpStream`] or [`std::os::unix::net::UnixStream`].
#[derive(Debug)]
pub(crate) enum Connection {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(unix_net::UnixStream),
}
// Patched: read and written only through a `SharedConnection` (below), or once to refuse it.
impl Connection {
    /// Gets the peer's address. Some for TCP, None for Unix sockets.
    pub(crate) fn peer_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        match self {
            Self::Tcp(s) => s.peer_addr().map(Some),
            #[cfg(unix)]
            Self::Unix(_) => Ok(None),
        }
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.shutdown(how),
            #[cfg(unix)]
            Self::Unix(s) => s.shutdown(how),
        }
    }

    /// Patched: the socket's descriptor, to look at it without reading it.
    #[cfg(unix)]
    pub(crate) fn raw_fd(&self) -> std::os::unix::io::RawFd {
        use std::os::unix::io::AsRawFd;
        match self {
            Self::Tcp(s) => s.as_raw_fd(),
            Self::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Patched: the read timeout of the socket (header deadlines, `--client-timeout`).
    pub(crate) fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(timeout),
            #[cfg(unix)]
            Self::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    /// Patched: the read timeout of the socket.
    pub(crate) fn read_timeout(&self) -> std::io::Result<Option<std::time::Duration>> {
        match self {
            Self::Tcp(s) => s.read_timeout(),
            #[cfg(unix)]
            Self::Unix(s) => s.read_timeout(),
        }
    }

    /// Patched: the write timeout of the socket.
    pub(crate) fn set_write_timeout(&self, timeout: Option<std::time::Duration>) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_write_timeout(timeout),
            #[cfg(unix)]
            Self::Unix(s) => s.set_write_timeout(timeout),
        }
    }

    /// Patched: the write timeout of the socket.
    pub(crate) fn write_timeout(&self) -> std::io::Result<Option<std::time::Duration>> {
        match self {
            Self::Tcp(s) => s.write_timeout(),
            #[cfg(unix)]
            Self::Unix(s) => s.write_timeout(),
        }
    }

    /// Patched: a non-blocking write (the refusal of a connection beyond the limit).
    pub(crate) fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_nonblocking(on),
            #[cfg(unix)]
            Self::Unix(s) => s.set_nonblocking(on),
        }
    }

    /// Patched: the first byte waiting on the connection, left there (`None` when it ended,
    /// or for a Unix socket, which cannot peek).
    pub(crate) fn peek_first(&self) -> std::io::Result<Option<u8>> {
        let mut byte = [0u8; 1];
        match self {
            Self::Tcp(s) => Ok((s.peek(&mut byte)? == 1).then_some(byte[0])),
            #[cfg(unix)]
            Self::Unix(_) => Ok(None),
        }
    }

    /// Patched: one read on the raw connection (what a lingering connection drops).
    pub(crate) fn read_once(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Read;
        match self {
            Self::Tcp(s) => {
                let mut s: &TcpStream = s;
                s.read(buf)
            }
            #[cfg(unix)]
            Self::Unix(s) => {
                let mut s: &unix_net::UnixStream = s;
                s.read(buf)
            }
        }
    }

    /// Patched: one write on the raw connection (a refused connection's answer, and every write
    /// of a [`SharedConnection`]).
    pub(crate) fn write_once(&self, bytes: &[u8]) -> std::io::Result<usize> {
        use std::io::Write;
        match self {
            Self::Tcp(s) => {
                let mut s: &TcpStream = s;
                s.write(bytes)
            }
            #[cfg(unix)]
            Self::Unix(s) => {
                let mut s: &unix_net::UnixStream = s;
                s.write(bytes)
            }
        }
    }
}
/// Patched: what a request holds of its connection: the socket, and the flag by which an
/// answer given before the request's body was read (`Request::close_after_response`) asks the
/// connection's thread to linger and close instead of reading a next request.
#[derive(Debug, Clone)]
pub(crate) struct RequestControl {
    pub(crate) socket: std::sync::Arc<Connection>,
    pub(crate) closing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Patched: one accepted socket shared by the connection's read half, its write half and its
/// control handle. 0.12.0 duplicated it twice (`try_clone`): three descriptors a connection, and a
/// panic in the accept loop when the second duplicate found none left.
#[derive(Debug, Clone)]
pub(crate) struct SharedConnection(pub(crate) std::sync::Arc<Connection>);

impl SharedConnection {
    /// Gets the peer's address. Some for TCP, None for Unix sockets.
    pub(crate) fn peer_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.0.peer_addr()
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        self.0.shutdown(how)
    }

    /// Patched: the socket's read timeout.
    pub(crate) fn read_timeout(&self) -> std::io::Result<Option<std::time::Duration>> {
        self.0.read_timeout()
    }

    /// Patched: sets the socket's read timeout.
    pub(crate) fn set_read_timeout(
        &self,
        timeout: Option<std::time::Duration>,
    ) -> std::io::Result<()> {
        self.0.set_read_timeout(timeout)
    }
}

impl std::io::Read for SharedConnection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &*self.0 {
            Connection::Tcp(s) => {
                let mut s: &TcpStream = s;
                s.read(buf)
            }
            #[cfg(unix)]
            Connection::Unix(s) => {
                let mut s: &unix_net::UnixStream = s;
                s.read(buf)
            }
        }
    }
}

impl std::io::Write for SharedConnection {
    /// Patched: a write that the socket's write timeout ended part-way fails. A blocking write
    /// comes back short only when that timeout (or a signal) ended it: its client took less
    /// than one write's bytes in all that time. Retried, as `write_all` does, each retry had a
    /// fresh timeout, and the kernel took a few more bytes now and then from a client that had
    /// stopped reading: such an answer held its connection's thread for three timeouts and
    /// more (92 s under a 30 s `client_timeout`), not one.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let started = std::time::Instant::now();
        let written = self.0.write_once(buf)?;
        if written < buf.len() {
            if let Ok(Some(timeout)) = self.0.write_timeout() {
                // The kernel's timer ticks in jiffies: allow it a little early.
                if started.elapsed() >= timeout.mul_f64(0.9) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client took less than one write of the answer in the write timeout",
                    ));
                }
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl From<TcpStream> for Connection {
    fn from(s: TcpStream) -> Self {
        Self::Tcp(s)
    }
}
#[cfg(unix)]
impl From<unix_net::UnixStream> for Connection {
    fn from(s: unix_net::UnixStream) -> Self {
        Self::Unix(s)
    }
}

#[derive(Debug, Clone)]
pub enum ConfigListenAddr {
    IP(Vec<SocketAddr>),
    #[cfg(unix)]
    // TODO: use SocketAddr when bind_addr is stabilized
    Unix(std::path::PathBuf),
}
impl ConfigListenAddr {
    pub fn from_socket_addrs<A: ToSocketAddrs>(addrs: A) -> std::io::Result<Self> {
        addrs.to_socket_addrs().map(|it| Self::IP(it.collect()))
    }

    #[cfg(unix)]
    pub fn unix_from_path<P: Into<PathBuf>>(path: P) -> Self {
        Self::Unix(path.into())
    }

    pub(crate) fn bind(&self) -> std::io::Result<Listener> {
        match self {
            Self::IP(a) => TcpListener::bind(a.as_slice()).map(Listener::from),
            #[cfg(unix)]
            Self::Unix(a) => unix_net::UnixListener::bind(a).map(Listener::from),
        }
    }
}

/// Unified listen socket address. Either a [`SocketAddr`] or [`std::os::unix::net::SocketAddr`].
#[derive(Debug, Clone)]
pub enum ListenAddr {
    IP(SocketAddr),
    #[cfg(unix)]
    Unix(unix_net::SocketAddr),
}
impl ListenAddr {
    pub fn to_ip(self) -> Option<SocketAddr> {
        match self {
            Self::IP(s) => Some(s),
            #[cfg(unix)]
            Self::Unix(_) => None,
        }
    }

    /// Gets the Unix socket address.
    ///
    /// This is also available on non-Unix platforms, for ease of use, but always returns `None`.
    #[cfg(unix)]
    pub fn to_unix(self) -> Option<unix_net::SocketAddr> {
        match self {
            Self::IP(_) => None,
            Self::Unix(s) => Some(s),
        }
    }
    #[cfg(not(unix))]
    pub fn to_unix(self) -> Option<SocketAddr> {
        None
    }
}
impl From<SocketAddr> for ListenAddr {
    fn from(s: SocketAddr) -> Self {
        Self::IP(s)
    }
}
#[cfg(unix)]
impl From<unix_net::SocketAddr> for ListenAddr {
    fn from(s: unix_net::SocketAddr) -> Self {
        Self::Unix(s)
    }
}
impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::IP(s) => s.fmt(f),
            #[cfg(unix)]
            Self::Unix(s) => std::fmt::Debug::fmt(s, f),
        }
    }
}
