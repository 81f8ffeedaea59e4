//! The certificate an `https://` worker endpoint (the worker's TLS proxy) presents, and when
//! it expires: read in a TLS handshake of its own, which sends no request.

use crate::base::cert_expiry::{ChainExpiry, ChainSource};
use crate::worker::bound_request::RequestTimeouts;
use crate::worker::raw_get;
use crate::worker::tls::Connector;
use crate::worker::workers_file::{endpoint_parts, EndpointParts};
use std::time::{Duration, Instant};

/// When the chain `endpoint` presents expires, read within `timeout` (connecting and the whole
/// handshake; resolving the host name aside). The error says what failed.
pub fn read(endpoint: &str, timeout: Duration, tls: &Connector) -> Result<ChainExpiry, String> {
    let deadline = Instant::now() + timeout;
    let EndpointParts {
        authority,
        host,
        port,
        ..
    } = endpoint_parts(endpoint);
    let timeouts = RequestTimeouts {
        connect: timeout,
        io: timeout,
    };
    let tcp = raw_get::connect(host, port, timeouts).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| format!("TLS with {authority} failed: {e}"))?;
    let chain = tls
        .presented_chain(host, tcp, deadline)
        .map_err(|e| format!("TLS with {authority} failed: {e}"))?;
    let source = ChainSource::Server(endpoint.to_string());
    ChainExpiry::of_chain(source, chain.iter().map(Vec::as_slice)).ok_or_else(|| {
        format!("{authority} presented certificates whose validity could not be read")
    })
}
