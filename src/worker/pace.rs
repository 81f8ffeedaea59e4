//! A body from a worker that must keep up a pace: each read waits at most the per-read
//! timeout, but a worker (or a link) that sends a byte now and then would meet it forever. Past
//! a grace period, the body fails once fewer than [`MIN_BYTES_PER_SECOND`] came on average.

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// The slowest average pace a body may keep past its grace period.
pub const MIN_BYTES_PER_SECOND: u64 = 16 * 1024;

/// A body held to a pace.
pub struct Paced<R> {
    inner: R,
    started: Instant,
    grace: Duration,
    read: u64,
}

impl<R: Read> Paced<R> {
    /// Holds `inner` to the pace from now on, after `grace` (the per-read timeout).
    pub fn new(inner: R, grace: Duration) -> Self {
        Paced {
            inner,
            started: Instant::now(),
            grace,
            read: 0,
        }
    }

    /// Why the body is too slow, if it is at `elapsed`: its bytes would have taken at most
    /// `grace` plus their time at the slowest pace.
    fn too_slow(&self, elapsed: Duration) -> Option<String> {
        let allowed = self.grace + Duration::from_secs(self.read / MIN_BYTES_PER_SECOND);
        (elapsed > allowed).then(|| {
            format!(
                "the worker sent {} bytes in {:.0} s, slower than {MIN_BYTES_PER_SECOND} bytes a second past the first {:.0} s",
                self.read,
                elapsed.as_secs_f64(),
                self.grace.as_secs_f64()
            )
        })
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if n > 0 {
            if let Some(why) = self.too_slow(self.started.elapsed()) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, why));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_slower_than_the_pace_past_its_grace_fails() {
        let grace = Duration::from_secs(10);
        let mut paced = Paced::new(&b""[..], grace);
        assert_eq!(paced.too_slow(Duration::from_secs(9)), None);
        assert!(paced.too_slow(Duration::from_secs(11)).is_some());
        paced.read = 10 * MIN_BYTES_PER_SECOND;
        assert_eq!(paced.too_slow(Duration::from_secs(19)), None);
        assert!(paced.too_slow(Duration::from_secs(21)).is_some());
    }
}
