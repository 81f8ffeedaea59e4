//! `--max-requests-per-ip N`: each client address (an IPv4 address, or an IPv6 /64) may make
//! N requests a second on average, in bursts of up to N; past that a request is answered 429
//! with `Retry-After`, before its handler runs, and other addresses are served as before
//! (nginx's `limit_req`, HAProxy's `http_req_rate` are the model). The connection limits bound
//! how many connections one address holds; this bounds what it asks of the coordinator's
//! cores over them. `/health` and `/ready` are never counted (load balancers probe them).

use crate::base::log_repeats::{Repeats, REPEAT_PERIOD};
use crate::base::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses whose rate is followed at once; past it, addresses whose bucket refilled are
/// dropped, and a new address beyond that is let through unfollowed (the connection limits
/// still bound it).
const MAX_FOLLOWED: usize = 65_536;

/// One address's bucket: tokens left, as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The request rate of every client address.
#[derive(Debug)]
pub struct RequestRate {
    per_second: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    refused: AtomicU64,
    logs: Mutex<Repeats>,
}

impl RequestRate {
    /// Requests each address may make a second (`0`: no limit).
    pub fn new(per_second: u32) -> Self {
        RequestRate {
            per_second,
            buckets: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            logs: Mutex::new(Repeats::new(REPEAT_PERIOD)),
        }
    }

    /// The limit (`0`: none).
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Requests refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Addresses whose rate is followed now.
    pub fn followed(&self) -> usize {
        lock(&self.buckets).len()
    }

    /// Counts a request from `addr` (its key: see `tiny_http::client_address_key`) to `path`:
    /// `Err` with how long until it would be let in, when the address is over its rate.
    pub fn admit(&self, addr: Option<IpAddr>, path: &str, now: Instant) -> Result<(), Duration> {
        if self.per_second == 0 || matches!(path, "/health" | "/ready") {
            return Ok(());
        }
        let Some(addr) = addr.map(tiny_http::client_address_key) else {
            return Ok(());
        };
        let rate = f64::from(self.per_second);
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_FOLLOWED && !buckets.contains_key(&addr) {
            let full_after = Duration::from_secs(1);
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
            if buckets.len() >= MAX_FOLLOWED {
                return Ok(());
            }
        }
        let bucket = buckets.entry(addr).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refilled).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
        drop(buckets);
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(held) = lock(&self.logs).check(now) {
            log::warn!(
                "Refusing requests from {addr}: more than --max-requests-per-ip {} a second{}",
                self.per_second,
                Repeats::suffix(held)
            );
        }
        Err(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn an_address_gets_its_burst_then_its_rate_and_others_are_apart() {
        let rate = RequestRate::new(10);
        let start = Instant::now();
        let one = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let other = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        for _ in 0..10 {
            assert!(rate.admit(one, "/pool", start).is_ok());
        }
        let wait = rate.admit(one, "/pool", start);
        assert!(wait.is_err_and(|w| w <= Duration::from_millis(100)));
        assert!(rate.admit(one, "/health", start).is_ok());
        assert!(rate.admit(other, "/pool", start).is_ok());
        let later = start + Duration::from_millis(100);
        assert!(rate.admit(one, "/pool", later).is_ok());
        assert!(rate.admit(one, "/pool", later).is_err());
        assert_eq!(rate.refused(), 2);
        assert!(RequestRate::new(0).admit(one, "/pool", start).is_ok());
    }
}
