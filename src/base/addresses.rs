//! Lists of source addresses (`--source-addresses`, a worker's `"source_addresses"`): IPv4 and
//! IPv6 addresses and CIDR blocks, expanded to single addresses; and blocks of addresses kept
//! whole and asked whether they hold an address (`--trusted-proxies`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most addresses one list may expand to (a CIDR block past this is refused, not truncated).
pub const MAX_SOURCE_ADDRESSES: usize = 1024;

/// Parses a comma-separated list such as `127.0.0.2,10.0.0.16/29,fd00::10/126` into distinct
/// addresses, in order. A block of an IPv4 prefix shorter than /31 leaves out its network and
/// broadcast addresses, which a host cannot use as a source.
pub fn parse_list(text: &str) -> Result<Vec<IpAddr>, String> {
    let items: Vec<&str> = text.split(',').map(str::trim).collect();
    if items.iter().all(|i| i.is_empty()) {
        return Err("the list is empty".to_string());
    }
    parse_items(items)
}

/// Parses the items of a list (each an address or a CIDR block) into distinct addresses.
pub fn parse_items<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<IpAddr>, String> {
    let mut out: Vec<IpAddr> = Vec::new();
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            return Err("an empty entry (two commas in a row, or a trailing comma)".to_string());
        }
        for addr in expand(item)? {
            if !out.contains(&addr) {
                out.push(addr);
            }
            if out.len() > MAX_SOURCE_ADDRESSES {
                return Err(format!(
                    "more than {MAX_SOURCE_ADDRESSES} addresses; use a smaller block"
                ));
            }
        }
    }
    Ok(out)
}

/// The address of a list item (`10.0.0.1`, `10.0.0.0/8`) and the text of its prefix length,
/// if it has one.
fn address_and_prefix(item: &str) -> Result<(IpAddr, Option<&str>), String> {
    match item.split_once('/') {
        None => item
            .parse::<IpAddr>()
            .map(|addr| (addr, None))
            .map_err(|_| format!("{item:?} is not an IPv4 or IPv6 address")),
        Some((base, bits)) => base
            .parse::<IpAddr>()
            .map(|addr| (addr, Some(bits)))
            .map_err(|_| format!("{item:?}: {base:?} is not an IPv4 or IPv6 address")),
    }
}

/// The bits of an address of `addr`'s family.
fn width_of(addr: IpAddr) -> u32 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// The prefix length `bits` of list item `item`, at most `width`.
fn prefix_length(item: &str, bits: &str, width: u32) -> Result<u32, String> {
    bits.parse::<u32>()
        .ok()
        .filter(|b| *b <= width)
        .ok_or_else(|| format!("{item:?}: the prefix length must be 0-{width}"))
}

/// One address, or every usable address of a CIDR block.
fn expand(item: &str) -> Result<Vec<IpAddr>, String> {
    let (base, bits) = address_and_prefix(item)?;
    let Some(bits) = bits else {
        return usable(base).map(|a| vec![a]);
    };
    let width = width_of(base);
    let host_bits = width - prefix_length(item, bits, width)?;
    if host_bits > 10 {
        return Err(format!(
            "{item:?} holds 2^{host_bits} addresses, more than {MAX_SOURCE_ADDRESSES}; use a longer prefix"
        ));
    }
    let count = 1u128 << host_bits;
    let (first, last) = match base {
        IpAddr::V4(_) if host_bits >= 2 => (1, count - 1),
        _ => (0, count),
    };
    let start = to_number(base) & !(count - 1);
    (first..last)
        .map(|offset| usable(from_number(start + offset, base.is_ipv4())))
        .collect()
}

/// Refuses addresses that can never be a connection's source.
fn usable(addr: IpAddr) -> Result<IpAddr, String> {
    if addr.is_unspecified() || addr.is_multicast() || addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(format!("{addr} cannot be a source address"));
    }
    Ok(addr)
}

/// An address block (`10.0.0.0/8`, `fd00::/8`; a single address is its own block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressBlock {
    network: IpAddr,
    prefix: u32,
}

impl AddressBlock {
    /// Whether `addr` is in the block (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        if addr.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        let host_bits = width_of(addr) - self.prefix;
        host_bits >= 128 || to_number(addr) >> host_bits == to_number(self.network) >> host_bits
    }

    /// Whether the block holds every address of its family (`0.0.0.0/0`, `::/0`).
    pub fn is_everything(&self) -> bool {
        self.prefix == 0
    }
}

impl fmt::Display for AddressBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Whether any of `blocks` holds `addr`.
pub fn holds(blocks: &[AddressBlock], addr: IpAddr) -> bool {
    blocks.iter().any(|b| b.contains(addr))
}

/// Parses a comma-separated list of addresses and CIDR blocks, such as
/// `127.0.0.1,10.0.0.0/8,fd00::/8`, into blocks (a block's host bits are cleared).
pub fn parse_blocks(text: &str) -> Result<Vec<AddressBlock>, String> {
    let mut blocks = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(
                "an empty entry (an empty list, two commas in a row, or a trailing comma)"
                    .to_string(),
            );
        }
        let (address, bits) = address_and_prefix(item)?;
        let network = address.to_canonical();
        let width = width_of(network);
        let prefix = match bits {
            Some(bits) => prefix_length(item, bits, width)?,
            None => width,
        };
        let host_bits = width - prefix;
        let number = if host_bits >= 128 {
            0
        } else {
            to_number(network) >> host_bits << host_bits
        };
        blocks.push(AddressBlock {
            network: from_number(number, network.is_ipv4()),
            prefix,
        });
    }
    Ok(blocks)
}

fn to_number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_number(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> Vec<String> {
        parse_list(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .iter()
            .map(IpAddr::to_string)
            .collect()
    }

    #[test]
    fn single_addresses_and_blocks() {
        assert_eq!(list("127.0.0.2, 127.0.0.3"), ["127.0.0.2", "127.0.0.3"]);
        assert_eq!(
            list("10.0.0.16/29"),
            [
                "10.0.0.17",
                "10.0.0.18",
                "10.0.0.19",
                "10.0.0.20",
                "10.0.0.21",
                "10.0.0.22"
            ]
        );
        assert_eq!(list("10.0.0.8/31"), ["10.0.0.8", "10.0.0.9"]);
        assert_eq!(list("10.0.0.9/32"), ["10.0.0.9"]);
        assert_eq!(
            list("fd00::10/126"),
            ["fd00::10", "fd00::11", "fd00::12", "fd00::13"]
        );
        assert_eq!(parse_list("fd00::/120").map(|l| l.len()), Ok(256));
        assert_eq!(list("127.0.0.2,127.0.0.2/32,::1"), ["127.0.0.2", "::1"]);
    }

    #[test]
    fn blocks_hold_their_addresses_and_no_others() {
        let blocks = parse_blocks("127.0.0.1, 10.1.2.3/8,fd00::/8, ::1").expect("blocks");
        let shown: Vec<String> = blocks.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8", "::1/128"]);
        let held = |text: &str| {
            let addr: IpAddr = text.parse().expect("address");
            holds(&blocks, addr)
        };
        for inside in [
            "127.0.0.1",
            "10.0.0.0",
            "10.255.255.255",
            "fd12::7",
            "::1",
            "::ffff:10.9.9.9",
        ] {
            assert!(held(inside), "{inside}");
        }
        for outside in [
            "127.0.0.2",
            "11.0.0.0",
            "9.255.255.255",
            "fe00::1",
            "::2",
            "::ffff:127.0.0.2",
        ] {
            assert!(!held(outside), "{outside}");
        }
        let everything = parse_blocks("0.0.0.0/0,::/0").expect("blocks");
        assert!(everything.iter().all(AddressBlock::is_everything));
        assert!(everything[0].contains("203.0.113.9".parse().expect("v4")));
        assert!(!everything[0].contains("2001:db8::1".parse().expect("v6")));
        assert!(everything[1].contains("2001:db8::1".parse().expect("v6")));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "fd00::/129",
            "proxy",
            "10.0.0.1,",
            "10.0.0.0/-1",
        ] {
            assert!(parse_blocks(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_lists_say_why() {
        for bad in [
            "",
            "127.0.0.2,,127.0.0.3",
            "127.0.0.2,",
            "localhost",
            "10.0.0.0/33",
            "10.0.0.0/x",
            "10.0.0.0/8",
            "fd00::/64",
            "0.0.0.0",
            "::",
            "224.0.0.1",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
