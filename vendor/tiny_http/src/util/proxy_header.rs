//! Patched: the PROXY protocol header (versions 1 and 2, as HAProxy specifies them) a TCP-mode
//! proxy sends at the start of each connection it passes on: the address of the client it
//! accepted, which the socket's peer address (the proxy's) no longer tells.

use crate::connection::Connection;
use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

/// The 12 bytes that open a version 2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, its CRLF included.
const V1_MAX: usize = 107;
/// The shortest version 1 header (`PROXY UNKNOWN\r\n`); read whole before the version is told.
const V1_MIN: usize = 15;

/// Why a connection's first bytes are not a PROXY header.
#[derive(Debug)]
pub(crate) enum HeaderError {
    /// The whole header did not arrive within the time given.
    Timeout,
    /// The connection ended without a byte: a balancer's check that the port is open.
    Unused,
    /// The connection ended (or failed) before the header did.
    Closed(io::Error),
    /// The bytes are not a PROXY header of either version.
    Missing,
    /// A PROXY header, but not a well-formed one.
    Malformed(&'static str),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Timeout => f.write_str("its whole header did not arrive in time"),
            HeaderError::Unused => f.write_str("it ended without a byte"),
            HeaderError::Closed(e) => write!(f, "it ended before its header did: {e}"),
            HeaderError::Missing => f.write_str("it did not begin with one (version 1 or 2)"),
            HeaderError::Malformed(why) => write!(f, "its header is malformed: {why}"),
        }
    }
}

/// Reads the PROXY header that opens `conn`, all of it by `deadline`, and nothing after it.
/// Returns the client's address, or `None` when the header names none (a version 2 `LOCAL`
/// connection, such as the proxy's own health check, or `UNKNOWN`/unspecified addresses).
pub(crate) fn read(
    conn: &Connection,
    deadline: Instant,
) -> Result<Option<SocketAddr>, HeaderError> {
    let mut head = [0u8; 16];
    match fill(conn, &mut head[..1], deadline) {
        Err(HeaderError::Closed(e)) if e.kind() == ErrorKind::UnexpectedEof => {
            return Err(HeaderError::Unused)
        }
        first => first?,
    }
    fill(conn, &mut head[1..V1_MIN], deadline)?;
    if head[..12] == V2_SIGNATURE {
        fill(conn, &mut head[V1_MIN..], deadline)?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        let mut rest = vec![0u8; len];
        fill(conn, &mut rest, deadline)?;
        return parse_v2(&head, &rest);
    }
    if !head.starts_with(b"PROXY ") {
        return Err(HeaderError::Missing);
    }
    let mut line = head[..V1_MIN].to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(HeaderError::Malformed(
                "a version 1 line longer than 107 bytes",
            ));
        }
        let mut byte = [0u8; 1];
        fill(conn, &mut byte, deadline)?;
        line.push(byte[0]);
    }
    parse_v1(&line)
}

/// Fills `buf` from `conn`, each read waiting at most until `deadline`.
fn fill(conn: &Connection, buf: &mut [u8], deadline: Instant) -> Result<(), HeaderError> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeaderError::Timeout);
        }
        conn.set_read_timeout(Some(left))
            .map_err(HeaderError::Closed)?;
        match conn.read_once(&mut buf[got..]) {
            Ok(0) => return Err(HeaderError::Closed(ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(HeaderError::Timeout)
            }
            Err(e) => return Err(HeaderError::Closed(e)),
        }
    }
    Ok(())
}

/// The client of a version 1 line (`PROXY TCP4 SRC DST SPORT DPORT\r\n`, its CRLF included).
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    let text = std::str::from_utf8(&line[..line.len() - 2])
        .map_err(|_| HeaderError::Malformed("a version 1 line that is not ASCII"))?;
    let mut fields = text.split(' ');
    let _proxy = fields.next();
    let family = fields.next();
    if family == Some("UNKNOWN") {
        return Ok(None);
    }
    let (Some(source), Some(_destination), Some(port), Some(_port), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(HeaderError::Malformed(
            "a version 1 line without its two addresses and two ports",
        ));
    };
    let address: IpAddr = match family {
        Some("TCP4") => source.parse::<Ipv4Addr>().map(IpAddr::V4),
        Some("TCP6") => source.parse::<Ipv6Addr>().map(IpAddr::V6),
        _ => {
            return Err(HeaderError::Malformed(
                "a version 1 family other than TCP4, TCP6, UNKNOWN",
            ))
        }
    }
    .map_err(|_| HeaderError::Malformed("a version 1 source address that does not parse"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| HeaderError::Malformed("a version 1 source port that does not parse"))?;
    Ok(Some(SocketAddr::new(address, port)))
}

/// The client of a version 2 header: its 16 fixed bytes, then the `len` bytes they announce.
fn parse_v2(head: &[u8; 16], rest: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    match head[12] {
        0x20 => return Ok(None),
        0x21 => {}
        _ => {
            return Err(HeaderError::Malformed(
                "a version 2 header of another version or command",
            ))
        }
    }
    let short = HeaderError::Malformed("a version 2 header shorter than its addresses");
    match head[13] >> 4 {
        0x1 => {
            let (Some(ip), Some(port)) = (rest.get(..4), rest.get(8..10)) else {
                return Err(short);
            };
            let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([port[0], port[1]]),
            )))
        }
        0x2 => {
            let (Some(ip), Some(port)) = (rest.get(..16), rest.get(32..34)) else {
                return Err(short);
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(ip);
            let ip = Ipv6Addr::from(octets);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes([port[0], port[1]]),
            )))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(line: &str) -> Result<Option<SocketAddr>, HeaderError> {
        parse_v1(line.as_bytes())
    }

    #[test]
    fn version_1_lines_name_their_client() {
        let four = v1("PROXY TCP4 203.0.113.7 10.0.0.1 51000 9000\r\n").unwrap();
        assert_eq!(four, Some("203.0.113.7:51000".parse().unwrap()));
        let six = v1("PROXY TCP6 2001:db8::7 2001:db8::1 443 9000\r\n").unwrap();
        assert_eq!(six, Some("[2001:db8::7]:443".parse().unwrap()));
        assert_eq!(v1("PROXY UNKNOWN\r\n").unwrap(), None);
        assert_eq!(v1("PROXY UNKNOWN whatever follows\r\n").unwrap(), None);
        for bad in [
            "PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n",
            "PROXY TCP4 2001:db8::7 10.0.0.1 51000 9000\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.1 70000 9000\r\n",
            "PROXY UDP4 203.0.113.7 10.0.0.1 51000 9000\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.1 51000 9000 extra\r\n",
        ] {
            assert!(matches!(v1(bad), Err(HeaderError::Malformed(_))), "{}", bad);
        }
    }

    fn v2(command: u8, family: u8, rest: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
        let mut head = [0u8; 16];
        head[..12].copy_from_slice(&V2_SIGNATURE);
        head[12] = command;
        head[13] = family;
        head[14..].copy_from_slice(&(rest.len() as u16).to_be_bytes());
        parse_v2(&head, rest)
    }

    #[test]
    fn version_2_headers_name_their_client_unless_local() {
        let mut four = vec![198, 51, 100, 9, 10, 0, 0, 1];
        four.extend_from_slice(&40000u16.to_be_bytes());
        four.extend_from_slice(&9000u16.to_be_bytes());
        let named = v2(0x21, 0x11, &four).unwrap();
        assert_eq!(named, Some("198.51.100.9:40000".parse().unwrap()));
        // TLVs after the addresses are skipped.
        four.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        assert_eq!(v2(0x21, 0x11, &four).unwrap(), named);
        let mut six = vec![0u8; 36];
        six[..16].copy_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        six[32..34].copy_from_slice(&443u16.to_be_bytes());
        let named = v2(0x21, 0x21, &six).unwrap();
        assert_eq!(named, Some("[2001:db8::9]:443".parse().unwrap()));
        assert_eq!(v2(0x20, 0x00, &[]).unwrap(), None);
        assert_eq!(v2(0x21, 0x00, &[]).unwrap(), None);
        assert!(matches!(
            v2(0x21, 0x11, &four[..6]),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            v2(0x11, 0x11, &four),
            Err(HeaderError::Malformed(_))
        ));
    }
}
