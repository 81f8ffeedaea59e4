//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]


use std::error::Error;
use std::fmt;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{IpAddr, Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use client::ClientConnection;
use connection::Connection;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use request::{ReadWrite, Request, MAX_INLINE_BODY};
pub use response::{Response, ResponseBox};
pub use test::TestRequest;
pub use util::{client_address_key, AddressShares, MessagesQueue, Share, ShareUsed};

mod client;
mod common;
mod connection;
mod proxied;
mod request;
mod response;
mod ssl;
mod test;
mod util;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,

    // Patched: serves requests on their connection's thread (see `serve_inline`).
    inline: Arc<OnceLock<InlineHandler>>,

    // Patched: the connections open and refused (see `connection_counts`).
    counts: Arc<ConnectionCounts>,
}

/// Patched: the connections a server reads now, and those it refused since it started.
#[derive(Debug)]
pub struct ConnectionCounts {
    /// Connections being read by a pool thread now.
    pub open: AtomicUsize,
    /// Refused beyond `Limits::max_connections`.
    pub refused_over_limit: AtomicU64,
    /// Refused beyond `Limits::max_connections_per_address`.
    pub refused_for_address: AtomicU64,
    /// Refused for want of a descriptor or a thread.
    pub refused_for_shortage: AtomicU64,
    /// Closed from a `Limits::proxied` peer without a valid PROXY header in time.
    pub refused_without_proxy_header: AtomicU64,
    /// Requests the server answered itself before any handler saw them: a malformed, too
    /// large or too slow request head, or framing it does not take (400, 408, 414, 417, 431,
    /// 501, 505), each closing its connection.
    pub refused_unread: AtomicU64,
    /// When such a refusal was last logged, and how many came since.
    unread_log: Mutex<util::RefusalLog>,
    /// Connections read now per client address, for those a share of
    /// `Limits::max_connections_per_address` holds.
    by_address: Arc<AddressShares>,
}

/// Counts of a server without a per-address limit (a placeholder until one listens).
impl Default for ConnectionCounts {
    fn default() -> Self {
        ConnectionCounts::new(usize::MAX)
    }
}

impl ConnectionCounts {
    fn new(max_connections_per_address: usize) -> Self {
        ConnectionCounts {
            open: AtomicUsize::new(0),
            refused_over_limit: AtomicU64::new(0),
            refused_for_address: AtomicU64::new(0),
            refused_for_shortage: AtomicU64::new(0),
            refused_without_proxy_header: AtomicU64::new(0),
            refused_unread: AtomicU64::new(0),
            unread_log: Mutex::new(util::RefusalLog::new()),
            by_address: AddressShares::new(max_connections_per_address),
        }
    }

    /// Patched: counts a request the server answered `status` (`why`) itself, from `peer`, and
    /// logs it at most once a minute with how many came since: a proxy in front that sends
    /// heads the server refuses (bare LFs, say) shows in the log, not only in its clients'
    /// errors.
    pub(crate) fn refused_unread(
        &self,
        status: u16,
        why: &str,
        peer: Option<std::net::SocketAddr>,
    ) {
        self.refused_unread.fetch_add(1, Relaxed);
        let due = self
            .unread_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .due(Instant::now());
        if let Some(count) = due {
            let from = peer.map_or_else(|| "?".to_string(), |p| p.ip().to_string());
            log::warn!(
                "Refused a request the HTTP server could not take: {status} {why} (from {from}); {count} refused so since the last such line"
            );
        }
    }

    /// The `n` client addresses (see [`client_address_key`]) holding the most connections
    /// now, most first (ties by address), each with its count. Only connections a share of
    /// `Limits::max_connections_per_address` holds are counted: none without that limit, and
    /// none of a `Limits::unshared` peer.
    pub fn busiest_addresses(&self, n: usize) -> Vec<(IpAddr, usize)> {
        self.by_address.busiest(n)
    }
}

/// Patched: a function the connection's own thread calls with each request it read, before
/// the request is queued for `recv()`. It serves the request (and returns `None`) or gives it
/// back to be queued.
pub type InlineHandler = Box<dyn Fn(Request) -> Option<Request> + Send + Sync>;

enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,
}

/// Patched: the TLS settings of a listener (replaceable while it runs), without the feature.
#[cfg(not(feature = "ssl-rustls"))]
pub enum TlsAcceptor {}
#[cfg(feature = "ssl-rustls")]
pub use ssl::TlsAcceptor;

/// Patched: a test of a connection's peer address (which peers `Limits::unshared` and
/// `Limits::proxied` name).
#[derive(Clone)]
pub struct PeerTest(pub Arc<dyn Fn(IpAddr) -> bool + Send + Sync>);

impl fmt::Debug for PeerTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerTest")
    }
}

/// Patched: limits on every connection of a server (see `Server::http_with_limits`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections read at once; beyond it a new connection gets a short 503 and is closed.
    pub max_connections: usize,
    /// Connections read at once from one client address (IPv4, or an IPv6 /64); beyond it a
    /// new connection from that address gets a short 503 and is closed.
    pub max_connections_per_address: usize,
    /// Peer addresses held to `max_connections` only, not to `max_connections_per_address`.
    pub unshared: Option<PeerTest>,
    /// Peer addresses whose connections begin with a PROXY protocol header (version 1 or 2):
    /// their requests' `remote_addr` is the client the header names, and each such client is
    /// held to `max_connections_per_address`. A connection from them without a valid header
    /// within `client_timeout` is closed (with a 400 when it speaks plain HTTP).
    pub proxied: Option<PeerTest>,
    /// Longest silence of a client (socket read and write timeouts); a request's line and
    /// headers must also arrive within it. `None`: wait forever.
    pub client_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: usize::MAX,
            max_connections_per_address: usize::MAX,
            unshared: None,
            proxied: None,
            client_timeout: None,
        }
    }
}

/// Patched: counts a connection while a pool thread reads it.
struct LiveConnection(Arc<ConnectionCounts>);

impl LiveConnection {
    fn new(counts: &Arc<ConnectionCounts>) -> Self {
        counts.open.fetch_add(1, AcqRel);
        LiveConnection(Arc::clone(counts))
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, AcqRel);
    }
}

/// Patched: the connections read at once per client address, each counted (in
/// `ConnectionCounts::by_address`) while its [`Share`] lives, and the refusals of those
/// beyond an address's share.
struct PerAddress {
    /// Peers no share holds (`Limits::unshared`).
    unshared: Option<PeerTest>,
    /// Where the connections of each address and the refusals are counted.
    counts: Arc<ConnectionCounts>,
    /// When refusals were last logged.
    refusals: Mutex<util::RefusalLog>,
}

impl PerAddress {
    /// Admits a new connection `sock` from `addr`: the slot it holds in its address's share
    /// while it is open (`None` when no share holds it: no limit, or an unshared peer); `Err`
    /// when that share is used, the connection then refused (see [`refuse_with`]), counted, and
    /// logged at most once a minute.
    fn admit(
        owner: &Arc<PerAddress>,
        sock: &Connection,
        secure: bool,
        addr: IpAddr,
    ) -> Result<Option<Share>, ()> {
        let shares = &owner.counts.by_address;
        if shares.share() == usize::MAX || owner.unshared.as_ref().is_some_and(|u| (u.0)(addr)) {
            return Ok(None);
        }
        if let Ok(share) = shares.take(addr) {
            return Ok(Some(share));
        }
        owner.counts.refused_for_address.fetch_add(1, Relaxed);
        refuse_with(
            sock,
            secure,
            "too many connections from your address; close some, or retry shortly",
        );
        let due = owner
            .refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .due(Instant::now());
        if let Some(count) = due {
            log::warn!(
                "Refusing new connections from {addr}: it has {} open, the most one client address may hold; {count} refused since the last such line",
                shares.share()
            );
        }
        Err(())
    }
}

/// Patched: closes a connection it cannot serve (beyond the limit, or without a descriptor or a
/// thread for it), with a 503 when it speaks plain HTTP (one non-blocking write into the fresh
/// socket's empty buffer, so the accept loop never waits).
fn refuse(sock: &Connection, secure: bool) {
    refuse_with(sock, secure, "too many connections; retry shortly");
}

/// Patched: like [`refuse`], with `why` as the answer's error.
fn refuse_with(sock: &Connection, secure: bool, why: &str) {
    close_with(sock, secure, "503 Service Unavailable\r\nRetry-After: 1", why);
}

/// Patched: closes a connection, first answering `status` (a status line's code and reason,
/// and any further header lines) with `why` as the JSON error unless `silent` (a TLS
/// connection, which a plain answer would not reach, or a peer that sent nothing).
fn close_with(sock: &Connection, silent: bool, status: &str, why: &str) {
    if !silent && sock.set_nonblocking(true).is_ok() {
        let body = format!("{{\"error\":\"{why}\"}}\n");
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = sock.write_once(answer.as_bytes());
    }
    let _ = sock.shutdown(Shutdown::Write);
}

/// Patched: how a connection to the TLS port opens, seen by a peek at its first byte.
#[cfg(feature = "ssl-rustls")]
enum Opens {
    /// With a plain HTTP request (a method's capital letter).
    PlainHttp,
    /// With anything else: a TLS handshake (its records begin with 22), or a peer already
    /// gone (the handshake fails at once).
    Tls,
    /// With nothing by the deadline (or the peek failed): the connection is closed.
    Nothing,
}

/// Patched: whether a connection to the TLS port opens with a plain HTTP request instead of a
/// TLS handshake. Waits for the first byte until `until` (`None`: the socket's read timeout),
/// on the connection's own thread.
#[cfg(feature = "ssl-rustls")]
fn first_byte(control: &Connection, until: Option<Instant>) -> Opens {
    if let Some(until) = until {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || control.set_read_timeout(Some(left)).is_err() {
            return Opens::Nothing;
        }
    }
    let peeked = loop {
        match control.peek_first() {
            Err(e) if e.kind() == IoErrorKind::Interrupted => continue,
            peeked => break peeked,
        }
    };
    match peeked {
        Ok(Some(byte)) if byte.is_ascii_uppercase() => Opens::PlainHttp,
        Ok(_) => Opens::Tls,
        Err(_) => Opens::Nothing,
    }
}

/// Patched: tells a client that spoke plain HTTP to the TLS port to use `https://` (a JSON 400,
/// as nginx answers it), first reading what of its request arrived: closing with it unread
/// would reset the connection, and the client might lose the answer.
fn refuse_plain_http(control: &Connection) {
    let mut buf = [0u8; 8192];
    if control.set_nonblocking(true).is_ok() {
        for _ in 0..8 {
            if !matches!(control.read_once(&mut buf), Ok(n) if n > 0) {
                break;
            }
        }
    }
    close_with(
        control,
        false,
        "400 Bad Request",
        "this port speaks HTTPS; use an https:// address",
    );
}

/// Patched: how an accepted connection reaches its thread, which opens it for requests (over
/// TLS, a first byte is awaited there: see [`first_byte`]): at once, or once its PROXY
/// header is read; with the instant it was accepted.
enum Opening {
    Direct(Arc<Connection>, Instant),
    Proxied(Arc<Connection>, Instant),
}

/// Patched: the reader of requests of a connection, over TLS when `ssl` is given (`None` when
/// TLS cannot start on it). Over TLS, the first byte is awaited and the handshake made by
/// `until` (the client timeout from the accept), so a silent or slow client is let go within
/// one client timeout, not one for the wait and another for the handshake; the requests'
/// reads then wait up to the client timeout each.
fn open_client(
    control: Arc<Connection>,
    ssl: Option<&TlsAcceptor>,
    client_timeout: Option<Duration>,
    until: Option<Instant>,
    counts: Arc<ConnectionCounts>,
) -> Option<ClientConnection> {
    use util::RefinedTcpStream;
    let shared = connection::SharedConnection(Arc::clone(&control));
    let (read_closable, write_closable) = match ssl {
        None => RefinedTcpStream::new(shared),
        #[cfg(feature = "ssl-rustls")]
        Some(ssl) => {
            match first_byte(&control, until) {
                Opens::PlainHttp => {
                    refuse_plain_http(&control);
                    return None;
                }
                Opens::Nothing => return None,
                Opens::Tls => {}
            }
            let stream = ssl.accept(shared).ok()?;
            stream.handshake(until).ok()?;
            control.set_read_timeout(client_timeout).ok()?;
            RefinedTcpStream::new(stream)
        }
        #[cfg(not(feature = "ssl-rustls"))]
        Some(never) => {
            let _ = until;
            match *never {}
        }
    };
    Some(ClientConnection::new(
        write_closable,
        read_closable,
        control,
        client_timeout,
        counts,
    ))
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener)
    }

    /// Builds a new server using the specified TCP listener.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_with(listener, None, Limits::default())
    }

    /// Patched: a server on `addr` with these connection [`Limits`], speaking TLS with the
    /// settings of `tls` when it is given (they may be replaced while the server runs).
    pub fn with_limits<A>(
        addr: A,
        limits: Limits,
        tls: Option<Arc<TlsAcceptor>>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        let listener = ConfigListenAddr::from_socket_addrs(addr)?.bind()?;
        Self::from_listener_with(listener, tls, limits)
    }

    fn from_listener_with<L: Into<Listener>>(
        listener: L,
        ssl: Option<Arc<TlsAcceptor>>,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = listener.into();
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        // building the TcpListener
        let (server, local_addr) = {
            let local_addr = listener.local_addr()?;
            log::debug!("Server listening on {}", local_addr);
            (listener, local_addr)
        };

        // creating a task where server.accept() is continuously called
        // and ClientConnection objects are pushed in the messages queue
        let messages = MessagesQueue::with_capacity(8);

        let inside_close_trigger = close_trigger.clone();
        let inside_messages = messages.clone();
        let inline: Arc<OnceLock<InlineHandler>> = Arc::new(OnceLock::new());
        let inside_inline = Arc::clone(&inline);
        let counts = Arc::new(ConnectionCounts::new(limits.max_connections_per_address));
        let inside_counts = Arc::clone(&counts);
        thread::spawn(move || {
            // a tasks pool is used to dispatch the connections into threads
            let tasks_pool = util::TaskPool::new();
            // Patched: connections being read by a pool thread, at most `limits.max_connections`.
            let live = inside_counts;
            // Patched: and at most `limits.max_connections_per_address` per client address.
            let per_address = Arc::new(PerAddress {
                unshared: limits.unshared.clone(),
                counts: Arc::clone(&live),
                refusals: Mutex::new(util::RefusalLog::new()),
            });

            // Patched: a failed accept is waited out, never the end of the loop.
            let mut trouble = util::AcceptTrouble::new();
            // Patched: refusals at the limits are logged, at most once a minute each.
            let mut over_limit = util::RefusalLog::new();
            // Patched: connections are opened for requests on their own threads.
            let opener = Arc::new(proxied::Opener {
                ssl: ssl.clone(),
                per_address: Arc::clone(&per_address),
                counts: Arc::clone(&live),
                without_header: Mutex::new(util::RefusalLog::new()),
                client_timeout: limits.client_timeout,
            });
            log::debug!("Running accept thread");
            while !inside_close_trigger.load(Relaxed) {
                let (opening, refusal, address_slot) = match server.accept() {
                    Ok((sock, peer)) => {
                        // Patched: beyond the limit a connection is refused, not given a thread.
                        if live.open.load(Acquire) >= limits.max_connections {
                            live.refused_over_limit.fetch_add(1, Relaxed);
                            refuse(&sock, ssl.is_some());
                            if let Some(count) = over_limit.due(Instant::now()) {
                                log::warn!(
                                    "Refusing new connections: {} are open, the most served at once; {count} refused since the last such line",
                                    limits.max_connections
                                );
                            }
                            continue;
                        }
                        // Patched: a proxied connection's client is known only once its
                        // header is read, on the connection's own thread.
                        let proxied = peer.is_some_and(|p| {
                            limits.proxied.as_ref().is_some_and(|t| (t.0)(p.ip()))
                        });
                        // Patched: so is one beyond its client address's share.
                        let address_slot = match peer {
                            Some(peer) if !proxied => {
                                let secure = ssl.is_some();
                                match PerAddress::admit(&per_address, &sock, secure, peer.ip()) {
                                    Ok(slot) => slot,
                                    Err(()) => continue,
                                }
                            }
                            _ => None,
                        };
                        // Patched: headers and body go out in separate writes; without
                        // TCP_NODELAY, Nagle's algorithm held the body back ~40 ms.
                        if let connection::Connection::Tcp(ref tcp) = sock {
                            let _ = tcp.set_nodelay(true);
                        }
                        // Patched: a silent client is dropped after `client_timeout`.
                        let _ = sock.set_read_timeout(limits.client_timeout);
                        let _ = sock.set_write_timeout(limits.client_timeout);
                        // Patched: the halves and the control handle share one socket.
                        let control = Arc::new(sock);
                        let accepted = Instant::now();
                        let opening = if proxied {
                            Opening::Proxied(Arc::clone(&control), accepted)
                        } else {
                            Opening::Direct(Arc::clone(&control), accepted)
                        };
                        (opening, control, address_slot)
                    }
                    Err(e) => {
                        if inside_close_trigger.load(Relaxed) {
                            break;
                        }
                        trouble.failed(&e, &server, |sock| {
                            live.refused_for_shortage.fetch_add(1, Relaxed);
                            refuse(&sock, ssl.is_some())
                        });
                        continue;
                    }
                };

                let messages = inside_messages.clone();
                let inline = Arc::clone(&inside_inline);
                let mut opening = Some(opening);
                let mut counted = Some((LiveConnection::new(&live), address_slot));
                let opener = Arc::clone(&opener);
                // Patched: without a thread for it, the connection is refused.
                let spawned = tasks_pool.spawn(Box::new(move || {
                    let _counted = counted.take();
                    let (client, _client_slot) = match opening.take() {
                        // if TLS cannot start, the socket is closed
                        Some(Opening::Direct(control, accepted)) => {
                            match opener.open_direct(control, accepted) {
                                Some(client) => (client, None),
                                None => return,
                            }
                        }
                        Some(Opening::Proxied(control, accepted)) => {
                            match opener.open_proxied(control, accepted) {
                                Some(opened) => opened,
                                None => return,
                            }
                        }
                        None => return,
                    };
                    // Patched: a request the inline handler serves is not queued.
                    let queue = |rq: Request| {
                        let rq = match inline.get() {
                            Some(serve) => serve(rq),
                            None => Some(rq),
                        };
                        if let Some(rq) = rq {
                            messages.push(rq.into());
                        }
                    };
                    // Patched: the next request is read once this one is answered, over
                    // TLS (to avoid a deadlock) and in plain HTTP alike: a client pipelining
                    // requests it never reads the answers of holds one request and at most
                    // one handler, not a queue of them, and the connection counts as open
                    // until its last answer is written.
                    let (sender, receiver) = mpsc::channel();
                    for rq in client {
                        queue(rq.with_notify_sender(sender.clone()));
                        // Patched: no unwrap (the request sends when answered
                        // or dropped; a closed channel ends the connection).
                        if receiver.recv().is_err() {
                            break;
                        }
                    }
                }));
                match spawned {
                    Ok(()) => trouble.served(),
                    Err((e, task)) => {
                        live.refused_for_shortage.fetch_add(1, Relaxed);
                        refuse(&refusal, ssl.is_some());
                        drop(task);
                        trouble.refused(&e);
                    }
                }
            }
            log::debug!("Terminating accept thread");
        });

        // result
        Ok(Server {
            messages,
            close: close_trigger,
            listening_addr: local_addr,
            inline,
            counts,
        })
    }

    /// Patched: has every connection's own thread call `handler` with each request it read,
    /// before queueing it for `recv()`: a request the handler serves skips the hand-over to
    /// another thread. Set once; a later call changes nothing and returns false.
    pub fn serve_inline(&self, handler: InlineHandler) -> bool {
        self.inline.set(handler).is_ok()
    }

    /// Patched: the connections it reads now and those it refused, updated as they come.
    pub fn connection_counts(&self) -> Arc<ConnectionCounts> {
        Arc::clone(&self.counts)
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        unimplemented!()
        //self.requests_receiver.lock().len()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::new(IoErrorKind::Other, "thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Server {
    /// Patched: closes the listening socket (the accept thread ends) while requests on
    /// connections already accepted are still served; for a graceful shutdown.
    pub fn stop_accepting(&self) {
        self.close.store(true, Relaxed);
        if let ListenAddr::IP(addr) = &self.listening_addr {
            if let Ok(stream) = TcpStream::connect(addr) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close.store(true, Relaxed);
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
