//! A connection's writes held to a time, set on its descriptor: a write that moves no byte for
//! that long fails (`SO_SNDTIMEO`: `WouldBlock`), and a connection given up on is shut at once,
//! so that nothing more (a buffered writer's last flush) waits on it. A followed stream's client
//! that stops reading is let go so.

use std::io;
use std::os::unix::io::RawFd;
use std::time::Duration;

/// The shortest timeout set: zero would mean none.
const SHORTEST: Duration = Duration::from_millis(1);

/// Makes a write on socket `fd` that moves no byte for `timeout` fail.
pub fn set(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let timeout = timeout.max(SHORTEST);
    let value = libc::timeval {
        // The fields' types are named differently by each C library (deprecated on musl);
        // both are 64-bit on the targets built.
        tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
        tv_usec: timeout.subsec_micros().into(),
    };
    // SAFETY: `value` is a `timeval` that lives across the call, and its size is given; a bad
    // descriptor is an error, never undefined behaviour.
    let done = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True when `error` is a write's timeout running out.
pub fn timed_out(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Shuts both directions of socket `fd`: every later read or write on it ends at once. The
/// descriptor stays open (its owner closes it).
pub fn shut(fd: RawFd) {
    // SAFETY: `shutdown` only changes the socket's state; a bad descriptor is an error, never
    // undefined behaviour.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;
    use std::time::Instant;

    #[test]
    fn a_write_to_a_peer_that_never_reads_times_out_and_a_shut_one_fails_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let _peer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        set(server.as_raw_fd(), Duration::from_millis(200)).expect("set");
        let started = Instant::now();
        let block = vec![0u8; 1 << 20];
        let failed = (0..256).find_map(|_| server.write_all(&block).err());
        let failed = failed.expect("a write failed");
        assert!(timed_out(&failed), "{failed}");
        assert!(started.elapsed() < Duration::from_secs(10));
        shut(server.as_raw_fd());
        let started = Instant::now();
        assert!(server.write_all(b"x").is_err());
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
