//! Patched: per-client-address shares of a resource a client holds for a while (the server's
//! connections; its user's long-held requests): one client address (see
//! [`client_address_key`]) holds at most its share, so it cannot take a whole limit from the
//! others. The counts are a leaf lock, held for one change or one copy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The client address a connection or request counts against: an IPv4 address (an
/// IPv4-mapped IPv6 address counts as its IPv4 one), or the /64 of an IPv6 one (a host is
/// usually given a whole /64).
pub fn client_address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

/// How many of a resource each client address holds now, and the most one may hold.
#[derive(Debug)]
pub struct AddressShares {
    counts: Mutex<HashMap<IpAddr, usize>>,
    share: usize,
}

/// One unit of a resource counted against a client address; dropping it gives it back.
#[derive(Debug)]
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

    /// Takes one unit for the client at `addr`, or refuses when its address holds its whole
    /// share.
    pub fn take(self: &Arc<Self>, addr: IpAddr) -> Result<Share, ShareUsed> {
        let address = client_address_key(addr);
        let mut counts = self.counts();
        let count = counts.entry(address).or_insert(0);
        if *count >= self.share {
            return Err(ShareUsed(*count));
        }
        *count += 1;
        Ok(Share {
            owner: Arc::clone(self),
            address,
        })
    }

    /// How many client addresses hold at least one unit now.
    pub fn addresses(&self) -> usize {
        self.counts().len()
    }

    /// The `n` client addresses holding the most now, most first (ties by address), each with
    /// its count.
    pub fn busiest(&self, n: usize) -> Vec<(IpAddr, usize)> {
        let mut busiest: Vec<(IpAddr, usize)> = self
            .counts()
            .iter()
            .map(|(address, count)| (*address, *count))
            .collect();
        let order = |a: &(IpAddr, usize), b: &(IpAddr, usize)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
        if busiest.len() > n && n > 0 {
            busiest.select_nth_unstable_by(n - 1, order);
        }
        busiest.truncate(n);
        busiest.sort_unstable_by(order);
        busiest
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut counts = self.owner.counts();
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

    fn address(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_holds_its_share_and_gets_it_back() {
        let shares = AddressShares::new(2);
        let first = shares.take(address("10.0.0.1"));
        let second = shares.take(address("10.0.0.1"));
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(shares.take(address("10.0.0.1")).err(), Some(ShareUsed(2)));
        assert!(shares.take(address("10.0.0.2")).is_ok());
        drop(first);
        let again = shares.take(address("10.0.0.1"));
        assert!(again.is_ok());
        assert_eq!(shares.addresses(), 1);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_address_and_a_mapped_ipv4_its_ipv4() {
        let shares = AddressShares::new(1);
        let held = shares.take(address("2001:db8:1:2::1"));
        assert!(held.is_ok());
        assert_eq!(shares.take(address("2001:db8:1:2::ffff")).err(), Some(ShareUsed(1)));
        assert!(shares.take(address("2001:db8:1:3::1")).is_ok());
        let v4 = shares.take(address("10.0.0.9"));
        assert!(v4.is_ok());
        assert_eq!(shares.take(address("::ffff:10.0.0.9")).err(), Some(ShareUsed(1)));
    }

    #[test]
    fn the_busiest_addresses_come_most_first_and_ties_by_address() {
        let shares = AddressShares::new(10);
        let mut held = Vec::new();
        for (text, count) in [
            ("10.0.0.3", 1),
            ("10.0.0.1", 7),
            ("2001:db8::", 3),
            ("10.0.0.2", 3),
            ("10.0.0.4", 2),
        ] {
            for _ in 0..count {
                held.push(shares.take(address(text)).unwrap());
            }
        }
        let busiest: Vec<(String, usize)> = shares
            .busiest(3)
            .into_iter()
            .map(|(a, n)| (a.to_string(), n))
            .collect();
        let expected = [("10.0.0.1", 7), ("10.0.0.2", 3), ("2001:db8::", 3)];
        let expected: Vec<(String, usize)> =
            expected.iter().map(|(a, n)| (a.to_string(), *n)).collect();
        assert_eq!(busiest, expected);
        assert_eq!(shares.busiest(10).len(), 5);
        assert!(shares.busiest(0).is_empty());
        drop(held);
        assert_eq!(shares.addresses(), 0);
    }
}
