//! Per-client-address shares of a resource a client holds for long (followed streams, parked
//! `?wait=` requests): one client address (an IPv4 address, or an IPv6 /64, as
//! `tiny_http::client_address_key` groups them) holds at most its share, so it cannot take the
//! whole limit from the others. The counts are a leaf lock, held for one change.

use crate::base::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// How many of a resource each client address holds now, and the most one may hold.
pub struct AddressShares {
    counts: Mutex<HashMap<IpAddr, usize>>,
    share: usize,
}

/// One unit of a resource counted against a client address; dropping it gives it back.
pub struct Share {
    owner: Arc<AddressShares>,
    address: IpAddr,
}

/// Refused: the client address already holds this many, its whole share.
#[derive(Debug, PartialEq, Eq)]
pub struct ShareUsed(pub usize);

impl AddressShares {
    /// No address holds anything; each may hold up to `share`.
    pub fn new(share: usize) -> Arc<Self> {
        Arc::new(AddressShares {
            counts: Mutex::new(HashMap::new()),
            share,
        })
    }

    /// The most one client address may hold.
    pub fn share(&self) -> usize {
        self.share
    }

    /// Takes one unit for `client` (`None` when the request has no known address: nothing is
    /// counted), or refuses when that address holds its whole share.
    pub fn take(self: &Arc<Self>, client: Option<IpAddr>) -> Result<Option<Share>, ShareUsed> {
        let Some(client) = client else {
            return Ok(None);
        };
        let address = tiny_http::client_address_key(client);
        let mut counts = lock(&self.counts);
        let count = counts.entry(address).or_insert(0);
        if *count >= self.share {
            return Err(ShareUsed(*count));
        }
        *count += 1;
        Ok(Some(Share {
            owner: Arc::clone(self),
            address,
        }))
    }

    /// How many client addresses hold at least one unit now.
    pub fn addresses(&self) -> usize {
        lock(&self.counts).len()
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut counts = lock(&self.owner.counts);
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> Option<IpAddr> {
        text.parse().ok()
    }

    #[test]
    fn an_address_holds_its_share_and_gets_it_back() {
        let shares = AddressShares::new(2);
        let first = shares.take(address("10.0.0.1"));
        let second = shares.take(address("10.0.0.1"));
        assert!(matches!(first, Ok(Some(_))) && matches!(second, Ok(Some(_))));
        assert_eq!(shares.take(address("10.0.0.1")).err(), Some(ShareUsed(2)));
        assert!(matches!(shares.take(address("10.0.0.2")), Ok(Some(_))));
        drop(first);
        assert!(matches!(shares.take(address("10.0.0.1")), Ok(Some(_))));
        assert!(matches!(shares.take(None), Ok(None)));
        assert_eq!(shares.addresses(), 1);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_address() {
        let shares = AddressShares::new(1);
        let held = shares.take(address("2001:db8:1:2::1"));
        assert!(matches!(held, Ok(Some(_))));
        assert_eq!(
            shares.take(address("2001:db8:1:2::ffff")).err(),
            Some(ShareUsed(1))
        );
        assert!(matches!(
            shares.take(address("2001:db8:1:3::1")),
            Ok(Some(_))
        ));
    }
}
