//! The coordinator's own shortages: out of descriptors, kernel memory or socket buffers. A call
//! to a worker that fails for one of them was never made, so it says nothing about the worker:
//! the worker is not marked unhealthy, the job gets no attempt counted and is not lost for it.

use std::error::Error;
use std::io;

/// Whether `e` is one of the coordinator's own shortages (`EMFILE`, `ENFILE`, `ENOMEM`,
/// `ENOBUFS`).
pub fn is_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// Whether `e`, or an error it wraps or was caused by, is one of the coordinator's own
/// shortages (see [`is_shortage`]).
pub fn shortage_in(e: &(dyn Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if is_shortage(io) {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                if shortage_in(inner) {
                    return true;
                }
            }
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    /// An error caused by another, as an HTTP client's transport error wraps the socket's.
    #[derive(Debug)]
    struct Wrapping(io::Error);

    impl fmt::Display for Wrapping {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Connect error: {}", self.0)
        }
    }

    impl Error for Wrapping {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn out_of_descriptors_memory_or_buffers_is_a_shortage() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::ENOBUFS] {
            assert!(is_shortage(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
    }

    #[test]
    fn a_refused_or_unreachable_worker_is_no_shortage() {
        for errno in [
            libc::ECONNREFUSED,
            libc::EHOSTUNREACH,
            libc::ETIMEDOUT,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(
                !is_shortage(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        assert!(!shortage_in(&Wrapping(io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        ))));
    }

    #[test]
    fn a_shortage_is_found_through_the_errors_that_wrap_it() {
        let caused = Wrapping(io::Error::from_raw_os_error(libc::EMFILE));
        assert!(shortage_in(&caused));
        let inside = io::Error::other(Wrapping(io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(shortage_in(&inside));
    }
}
