//! Lists of source addresses (`--source-addresses`, a worker's `"source_addresses"`): IPv4 and
//! IPv6 addresses and CIDR blocks, expanded to single addresses.

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

/// One address, or every usable address of a CIDR block.
fn expand(item: &str) -> Result<Vec<IpAddr>, String> {
    let Some((base, bits)) = item.split_once('/') else {
        let addr = item
            .parse::<IpAddr>()
            .map_err(|_| format!("{item:?} is not an IPv4 or IPv6 address"))?;
        return usable(addr).map(|a| vec![a]);
    };
    let base = base
        .parse::<IpAddr>()
        .map_err(|_| format!("{item:?}: {base:?} is not an IPv4 or IPv6 address"))?;
    let width: u32 = if base.is_ipv4() { 32 } else { 128 };
    let bits = bits
        .parse::<u32>()
        .ok()
        .filter(|b| *b <= width)
        .ok_or_else(|| format!("{item:?}: the prefix length must be 0-{width}"))?;
    let host_bits = width - bits;
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
