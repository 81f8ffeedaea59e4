//! Patched: what a request head may hold beyond its grammar, so that no two parsers read one
//! head two ways (RFC 9112 sections 2.2, 3.2 and 5.2; RFC 9110 section 5.5). 0.12.0 took a bare
//! LF or CR, a NUL and other control bytes, and a folded line (read as a header of its own), and
//! served an HTTP/1.1 request without a `Host` or with two: a proxy in front that reads any of
//! them otherwise sees other headers, and a folded `Transfer-Encoding` another body.

use crate::common::{HTTPVersion, Header};

/// What one byte of a head line does to it.
#[derive(Debug, PartialEq, Eq)]
pub enum LineByte {
    /// Part of the line (or a CR that a LF must follow).
    Keep,
    /// The LF that ends the line (the CR before it is dropped).
    End,
    /// A byte no head line may hold: the 400's reason.
    Refused(&'static str),
}

/// Judges `byte` of a head line, `after_cr` when the byte before it was a CR.
pub fn line_byte(byte: u8, after_cr: bool) -> LineByte {
    match byte {
        b'\n' if after_cr => LineByte::End,
        b'\n' => {
            LineByte::Refused("a line of the request head ends in a bare LF; end each line in CRLF")
        }
        _ if after_cr => LineByte::Refused(
            "the request head holds a CR that no LF follows; end each line in CRLF",
        ),
        b'\r' | b'\t' | 0x20..=0x7e => LineByte::Keep,
        0x80..=0xff => LineByte::Refused("request line and headers must be ASCII"),
        _ => LineByte::Refused(
            "the request head holds a control character (NUL, DEL or another below space)",
        ),
    }
}

/// Why a header line (without its CRLF) is refused before it is parsed, if it is.
pub fn header_line_fault(line: &str) -> Option<&'static str> {
    line.starts_with([' ', '\t']).then_some(
        "a header line begins with a space or tab (obsolete line folding); send each field on one line",
    )
}

/// Why a request's `Host` headers are refused, if they are: an HTTP/1.1 request needs exactly
/// one, and a `Host` (in any version) names a host, an address or either with a port.
pub fn host_fault(headers: &[Header], version: &HTTPVersion) -> Option<&'static str> {
    let mut hosts = headers.iter().filter(|h| h.field.equiv("Host"));
    match (hosts.next(), hosts.next()) {
        (None, _) if *version >= HTTPVersion(1, 1) => {
            Some("an HTTP/1.1 request needs a Host header")
        }
        (None, _) => None,
        (Some(_), Some(_)) => Some("the request carries more than one Host header"),
        (Some(host), None) => (!host.value.as_str().bytes().all(host_byte))
            .then_some("the Host header is not a host name or address, with a port or without"),
    }
}

/// A byte of a `Host` value: RFC 3986's reg-name, IP-literal and port characters.
fn host_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&byte)
}

#[cfg(test)]
mod test {
    use super::{header_line_fault, host_fault, line_byte, LineByte};
    use crate::common::{HTTPVersion, Header};

    /// The bytes of `line` judged in turn: what the first byte that is not `Keep` does.
    fn judge(line: &[u8]) -> LineByte {
        let mut after_cr = false;
        for &byte in line {
            match line_byte(byte, after_cr) {
                LineByte::Keep => after_cr = byte == b'\r',
                other => return other,
            }
        }
        LineByte::Keep
    }

    #[test]
    fn a_line_ends_in_crlf_and_holds_no_control_byte_but_tab() {
        assert_eq!(judge(b"X-A: b\tc\r\n"), LineByte::End);
        for bad in [
            &b"X: a\n"[..],
            b"X: a\rb\r\n",
            b"X: a\r\r\n",
            b"X: a\0b\r\n",
            b"X: \x7f\r\n",
            b"X\x01Y: a\r\n",
        ] {
            assert!(matches!(judge(bad), LineByte::Refused(_)), "{:?}", bad);
        }
        assert_eq!(
            judge(b"X: \xff\r\n"),
            LineByte::Refused("request line and headers must be ASCII")
        );
    }

    #[test]
    fn a_folded_line_is_refused() {
        assert!(header_line_fault(" Transfer-Encoding: chunked").is_some());
        assert!(header_line_fault("\tContent-Length: 3").is_some());
        assert!(header_line_fault("Host: x").is_none());
    }

    #[test]
    fn http_1_1_needs_one_host_of_host_characters() {
        let h = |v: &str| Header::from_bytes(&b"Host"[..], v.as_bytes()).unwrap();
        let v11 = HTTPVersion(1, 1);
        let v10 = HTTPVersion(1, 0);
        assert!(host_fault(&[], &v11).is_some());
        assert!(host_fault(&[], &v10).is_none());
        assert!(host_fault(&[h("a"), h("a")], &v10).is_some());
        for good in [
            "pool.example:8080",
            "10.0.0.1",
            "[::1]:9000",
            "xn--b-xga.example",
            "",
        ] {
            assert!(host_fault(&[h(good)], &v11).is_none(), "{}", good);
        }
        for bad in ["a b", "a/b", "a@b", "a?b", "a\"b"] {
            assert!(host_fault(&[h(bad)], &v11).is_some(), "{}", bad);
        }
    }
}
