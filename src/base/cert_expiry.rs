//! When a certificate chain stops being valid: the `notAfter` of each X.509 certificate, read
//! from its DER with a few lines of tag-length walking (no parser crate for one field), the
//! earliest of a chain, and what an operator is told as that day nears.

use crate::base::clock::{parse_utc, utc_text};
use std::fmt;
use std::path::PathBuf;

/// A certificate due to expire within this many seconds is warned of (Let's Encrypt's
/// certificates are renewed 30 days before their end, so a warning means renewal has failed).
pub const EXPIRY_WARNING: u64 = 14 * 86_400;

/// What an operator is told of a certificate near its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpiryWarning {
    /// It has expired: TLS clients refuse it.
    Expired(String),
    /// It expires within [`EXPIRY_WARNING`].
    Soon(String),
}

/// Where a certificate chain was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainSource {
    /// A PEM file the coordinator presents (the listener's, the one shown to workers).
    File(PathBuf),
    /// The TLS handshake with this `https://` endpoint (a worker's TLS proxy).
    Server(String),
}

impl fmt::Display for ChainSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Server(endpoint) => f.write_str(endpoint),
        }
    }
}

/// When a certificate chain stops being valid: its earliest `notAfter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainExpiry {
    /// Where the chain was read.
    pub source: ChainSource,
    /// Unix seconds of the earliest `notAfter` in the chain.
    pub not_after: u64,
    /// Which certificate of the chain that is (1: the first, the leaf).
    pub position: usize,
    /// How many certificates the chain holds.
    pub chain: usize,
}

impl ChainExpiry {
    /// The earliest expiry of the DER certificates `chain` read from `source`; `None` when no
    /// certificate's validity could be read (rustls does not read it either: a client checks it).
    pub fn of_chain<'a>(
        source: ChainSource,
        chain: impl IntoIterator<Item = &'a [u8]>,
    ) -> Option<Self> {
        let mut earliest: Option<(u64, usize)> = None;
        let mut count = 0;
        for (index, der) in chain.into_iter().enumerate() {
            count += 1;
            if let Some(at) = not_after(der) {
                if earliest.is_none_or(|(first, _)| at < first) {
                    earliest = Some((at, index + 1));
                }
            }
        }
        let (not_after, position) = earliest?;
        Some(Self {
            source,
            not_after,
            position,
            chain: count,
        })
    }

    /// What to tell an operator at unix time `now` about the certificate serving as `what` (the
    /// listener's, the one presented to workers, a worker's) once it is expired or within
    /// [`EXPIRY_WARNING`] of it.
    pub fn warning(&self, what: &str, now: u64) -> Option<ExpiryWarning> {
        let (within, refused, renew) = match self.source {
            ChainSource::File(_) => (
                "in the file",
                "TLS clients refuse it; put a renewed certificate in place and send SIGHUP",
                "renew it and send SIGHUP before then",
            ),
            ChainSource::Server(_) => (
                "in the chain",
                "the coordinator refuses it, so that worker gets no job; renew it where that endpoint's TLS ends",
                "renew it where that endpoint's TLS ends before then",
            ),
        };
        let which = match (self.position, self.chain) {
            (_, 1) => String::new(),
            (1, n) => format!(", the first of {n} {within}"),
            (p, n) => format!(", certificate {p} of {n} {within}"),
        };
        let at = utc_text(self.not_after);
        let source = &self.source;
        if now >= self.not_after {
            return Some(ExpiryWarning::Expired(format!(
                "{what} ({source}{which}) expired at {at}: {refused}"
            )));
        }
        let left = self.not_after - now;
        (left <= EXPIRY_WARNING).then(|| {
            ExpiryWarning::Soon(format!(
                "{what} ({source}{which}) expires at {at} (in {:.1} days); {renew}",
                left as f64 / 86_400.0
            ))
        })
    }
}

/// One DER element at the start of `der`: its tag, its contents and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let bytes = usize::from(first & 0x7f);
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return None;
        }
        let (length, rest) = rest.split_at(bytes);
        let length = length
            .iter()
            .fold(0usize, |sum, &b| (sum << 8) | usize::from(b));
        (length, rest)
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The `notAfter` of a DER X.509 certificate in unix seconds (RFC 5280: Certificate ->
/// tbsCertificate -> [version], serialNumber, signature, issuer, validity); `None` when the
/// certificate is not shaped so or its time is not a UTC second.
pub fn not_after(der: &[u8]) -> Option<u64> {
    let (SEQUENCE, certificate, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let (tag, _, after_version) = element(tbs)?;
    let mut rest = if tag == VERSION { after_version } else { tbs };
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let (tag, time, _) = element(element(validity)?.2)?;
    let text = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let full = match tag {
        UTC_TIME if text.len() == 12 => {
            let year: u64 = text.get(..2)?.parse().ok()?;
            format!("{}{text}", if year < 50 { "20" } else { "19" })
        }
        GENERALIZED_TIME if text.len() == 14 => text.to_string(),
        _ => return None,
    };
    parse_utc(&format!(
        "{}-{}-{}T{}:{}:{}Z",
        full.get(..4)?,
        full.get(4..6)?,
        full.get(6..8)?,
        full.get(8..10)?,
        full.get(10..12)?,
        full.get(12..14)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{date_time_ymd, CertificateParams, KeyPair};

    fn certificate_until(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.not_after = date_time_ymd(year, month, day);
        let key = KeyPair::generate().expect("key");
        params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec()
    }

    #[test]
    fn not_after_is_read_in_both_time_encodings() {
        // rcgen writes UTCTime up to 2049 and GeneralizedTime from 2050, as RFC 5280 asks.
        for (year, month, day, text) in [
            (2027, 3, 14, "2027-03-14"),
            (2049, 12, 31, "2049-12-31"),
            (2050, 1, 1, "2050-01-01"),
            (4096, 1, 1, "4096-01-01"),
        ] {
            let der = certificate_until(year, month, day);
            assert_eq!(not_after(&der), parse_utc(text), "{text}");
        }
    }

    #[test]
    fn anything_not_shaped_as_a_certificate_has_no_expiry() {
        let der = certificate_until(2027, 3, 14);
        for cut in 0..der.len() {
            assert_eq!(not_after(&der[..cut]), None, "cut at {cut}");
        }
        for at in 0..der.len() {
            // Any byte spoiled: an expiry or none, never a panic.
            let mut spoiled = der.clone();
            spoiled[at] ^= 0xff;
            let _ = not_after(&spoiled);
        }
        for junk in [
            &b""[..],
            b"\x30",
            b"\x30\x85\x01\x02\x03\x04\x05",
            b"\x30\x80",
            b"\x04\x00",
        ] {
            assert_eq!(not_after(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn the_earliest_of_a_chain_is_warned_of_two_weeks_before() {
        let (late, early) = (
            certificate_until(2030, 1, 1),
            certificate_until(2027, 3, 14),
        );
        let chain = [late.as_slice(), early.as_slice()];
        let file = ChainSource::File(PathBuf::from("/etc/tp/cert.pem"));
        let expiry = ChainExpiry::of_chain(file, chain).expect("read");
        let at = parse_utc("2027-03-14").expect("date");
        assert_eq!(
            (expiry.not_after, expiry.position, expiry.chain),
            (at, 2, 2)
        );
        assert_eq!(
            expiry.warning("The certificate", at - EXPIRY_WARNING - 1),
            None
        );
        assert_eq!(
            expiry.warning("The certificate", at - 86_400),
            Some(ExpiryWarning::Soon("The certificate (/etc/tp/cert.pem, certificate 2 of 2 in the file) expires at 2027-03-14T00:00:00Z (in 1.0 days); renew it and send SIGHUP before then".to_string()))
        );
        let warned = expiry.warning("The certificate", at);
        assert!(
            matches!(&warned, Some(ExpiryWarning::Expired(line)) if line.contains("expired at 2027-03-14T00:00:00Z")),
            "{warned:?}"
        );
        let served = ChainExpiry {
            source: ChainSource::Server("https://10.0.0.7:8443".to_string()),
            ..expiry
        };
        assert_eq!(
            served.warning("The worker's certificate", at - 86_400),
            Some(ExpiryWarning::Soon("The worker's certificate (https://10.0.0.7:8443, certificate 2 of 2 in the chain) expires at 2027-03-14T00:00:00Z (in 1.0 days); renew it where that endpoint's TLS ends before then".to_string()))
        );
        let junk = ChainSource::File(PathBuf::from("x"));
        assert_eq!(ChainExpiry::of_chain(junk, [&b"junk"[..]]), None);
    }
}
