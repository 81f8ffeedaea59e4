//! Patched: opening a connection for requests, on the connection's own thread. One from a peer
//! that begins each connection with a PROXY protocol header (`Limits::proxied`) has the header
//! read under the client timeout; then the client it names is held to its address's share of
//! connections and becomes its requests' `remote_addr`.

use crate::client::ClientConnection;
use crate::connection::Connection;
use crate::util::proxy_header::{self, HeaderError};
use crate::util::RefusalLog;
use crate::{close_with, open_client, ConnectionCounts, PerAddress, Share, TlsAcceptor};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a header may take without a client timeout.
const HEADER_WAIT: Duration = Duration::from_secs(30);

/// What opening a connection for requests needs of its server, on the connection's own thread.
pub(crate) struct Opener {
    pub(crate) ssl: Option<Arc<TlsAcceptor>>,
    pub(crate) per_address: Arc<PerAddress>,
    pub(crate) counts: Arc<ConnectionCounts>,
    pub(crate) without_header: Mutex<RefusalLog>,
    pub(crate) client_timeout: Option<Duration>,
}

impl Opener {
    /// Opens `control`, accepted at `accepted`, for requests (over TLS once its first byte is
    /// seen and its handshake made, both within the client timeout from `accepted`:
    /// `open_client`); `None` when it was closed instead.
    pub(crate) fn open_direct(
        &self,
        control: Arc<Connection>,
        accepted: Instant,
    ) -> Option<ClientConnection> {
        open_client(
            control,
            self.ssl.as_deref(),
            self.client_timeout,
            self.client_timeout.map(|t| accepted + t),
            Arc::clone(&self.counts),
        )
    }

    /// Reads `control`'s PROXY header and opens it for requests, with the slot its client
    /// holds; `None` when it was closed instead (no valid header, or its client's share used).
    /// The header, and over TLS the first byte and the handshake, all come within the client
    /// timeout from `accepted`.
    pub(crate) fn open_proxied(
        &self,
        control: Arc<Connection>,
        accepted: Instant,
    ) -> Option<(ClientConnection, Option<Share>)> {
        let secure = self.ssl.is_some();
        let deadline = accepted + self.client_timeout.unwrap_or(HEADER_WAIT);
        let client = match proxy_header::read(&control, deadline) {
            Ok(client) => client,
            Err(HeaderError::Unused) => return None,
            Err(e) => {
                self.counts
                    .refused_without_proxy_header
                    .fetch_add(1, Relaxed);
                // Only a peer that spoke is told why. Its address is read first: once the
                // connection is closed, the peer may be gone.
                let spoke = matches!(e, HeaderError::Missing | HeaderError::Malformed(_));
                let peer = control.peer_addr().ok().flatten();
                close_with(
                    &control,
                    secure || !spoke,
                    "400 Bad Request",
                    "connections from this address must begin with a PROXY protocol header",
                );
                self.log_refusal(peer, &e);
                return None;
            }
        };
        let _ = control.set_read_timeout(self.client_timeout);
        let slot = match client {
            Some(client) => {
                PerAddress::admit(&self.per_address, &control, secure, client.ip()).ok()?
            }
            None => None,
        };
        let opened = self.open_direct(control, accepted)?;
        let opened = match client {
            Some(client) => opened.with_remote_addr(client),
            None => opened,
        };
        Some((opened, slot))
    }

    /// Logs a connection from `peer` closed for its header, at most once a minute.
    fn log_refusal(&self, peer: Option<std::net::SocketAddr>, why: &HeaderError) {
        let due = self
            .without_header
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .due(Instant::now());
        if let Some(count) = due {
            let peer = peer.map_or_else(|| "a proxy".to_string(), |p| p.ip().to_string());
            log::warn!(
                "Closing a connection from {peer}, whose connections must each begin with a PROXY protocol header: {why}; {count} closed so since the last such line"
            );
        }
    }
}
