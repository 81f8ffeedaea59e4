//! The open-file limit: raised to its hard limit at start, and compared with what
//! `--max-connections` needs.

use std::io;

/// Descriptors one client connection may hold: its socket (the HTTP server's reader, writer and
/// control handle share it), and the file it streams from or to (a results segment for
/// `/outputs`, `/download` or `/logs`, an upload's spool file).
pub const FDS_PER_CONNECTION: u64 = 2;

/// Descriptors kept for everything but client connections: the job store, segment files being
/// written and read, connections to workers, a snapshot's open segments.
pub const FDS_RESERVED: u64 = 256;

/// The soft limit on open files before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit the process started with.
    pub was: u64,
    /// The soft limit now.
    pub now: u64,
}

impl OpenFileLimit {
    /// The client connections that fit under the limit now, beside the reserved descriptors.
    pub fn connections(&self) -> u64 {
        self.now.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION
    }
}

/// Raises the soft limit on open files to the hard limit, as Go programs do at start: systemd
/// and most shells start processes at a soft limit of 1024 whatever the hard limit allows.
pub fn raise() -> io::Result<OpenFileLimit> {
    let limit = current()?;
    let was = limit.rlim_cur as u64;
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(OpenFileLimit { was, now: was });
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OpenFileLimit {
        was,
        now: raised.rlim_cur as u64,
    })
}

/// The soft limit on open files now (`process_max_fds`).
pub fn soft() -> Option<u64> {
    current().ok().map(|limit| limit.rlim_cur)
}

/// The process's open-file limits, soft and hard.
fn current() -> io::Result<libc::rlimit> {
    // SAFETY: getrlimit writes into the zeroed struct we own.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_the_reserved_descriptors_aside() {
        let limit = OpenFileLimit {
            was: 1024,
            now: 1024,
        };
        assert_eq!(
            limit.connections(),
            (1024 - FDS_RESERVED) / FDS_PER_CONNECTION
        );
        let tiny = OpenFileLimit { was: 64, now: 64 };
        assert_eq!(tiny.connections(), 0);
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let limit = raise().expect("the limit is read");
        let now = current().expect("the limit is read again");
        assert_eq!(limit.now, now.rlim_cur as u64);
        assert_eq!(now.rlim_cur, now.rlim_max);
        assert!(limit.now >= limit.was);
    }
}
