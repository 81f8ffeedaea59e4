//! The address a request came from: its connection's peer, or, when that peer is a trusted
//! reverse proxy (`--trusted-proxies`), the client its `X-Forwarded-For` names. As nginx's
//! `real_ip_recursive`: the rightmost address of the header that is not a trusted proxy, so a
//! client cannot pass itself off as another by sending the header itself (the proxy appends the
//! address it saw to what the client sent).

use crate::base::addresses::{holds, AddressBlock};
use std::net::IpAddr;
use tiny_http::Request;

/// The client of `request`, seen through the proxies in `trusted`.
pub fn client_address(trusted: &[AddressBlock], request: &Request) -> Option<IpAddr> {
    let peer = request.remote_addr()?.ip().to_canonical();
    if !holds(trusted, peer) {
        return Some(peer);
    }
    let forwarded = request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("X-Forwarded-For"))
        .map(|h| h.value.as_str());
    Some(forwarded_client(trusted, peer, forwarded))
}

/// The rightmost address of the `X-Forwarded-For` values (in the order they came) that is not
/// a trusted proxy; the leftmost one when all are; `peer` when the first one read from the right
/// is not an address (that hop cannot be told).
fn forwarded_client<'a>(
    trusted: &[AddressBlock],
    peer: IpAddr,
    values: impl DoubleEndedIterator<Item = &'a str>,
) -> IpAddr {
    let mut client = peer;
    for value in values.rev() {
        for hop in value.rsplit(',') {
            let Ok(addr) = hop.trim().parse::<IpAddr>() else {
                return client;
            };
            client = addr.to_canonical();
            if !holds(trusted, client) {
                return client;
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::addresses::parse_blocks;

    fn client(trusted: &str, peer: &str, values: &[&str]) -> String {
        let trusted = parse_blocks(trusted).expect("blocks");
        let peer = peer.parse().expect("peer");
        forwarded_client(&trusted, peer, values.iter().copied()).to_string()
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let proxies = "127.0.0.1,10.0.0.0/8";
        assert_eq!(client(proxies, "127.0.0.1", &[]), "127.0.0.1");
        assert_eq!(
            client(proxies, "127.0.0.1", &["198.51.100.7"]),
            "198.51.100.7"
        );
        // What a client sent itself stays left of what the proxies appended.
        assert_eq!(
            client(proxies, "127.0.0.1", &["6.6.6.6, 198.51.100.7, 10.1.1.1"]),
            "198.51.100.7"
        );
        assert_eq!(
            client(proxies, "127.0.0.1", &["6.6.6.6", "198.51.100.7,10.1.1.1"]),
            "198.51.100.7"
        );
        assert_eq!(
            client(proxies, "127.0.0.1", &["10.2.2.2, 10.1.1.1"]),
            "10.2.2.2"
        );
        assert_eq!(
            client(proxies, "127.0.0.1", &[" 2001:db8::7 "]),
            "2001:db8::7"
        );
        assert_eq!(
            client(proxies, "127.0.0.1", &["::ffff:198.51.100.7"]),
            "198.51.100.7"
        );
        // A hop that is not an address ends the walk at the last address read.
        assert_eq!(client(proxies, "127.0.0.1", &["unknown"]), "127.0.0.1");
        assert_eq!(
            client(proxies, "127.0.0.1", &["198.51.100.7, junk, 10.1.1.1"]),
            "10.1.1.1"
        );
        assert_eq!(
            client(proxies, "127.0.0.1", &["198.51.100.7:4711"]),
            "127.0.0.1"
        );
    }
}
