//! Whether the client of a connection went away, seen without reading from it: a request that
//! waits for its answer (`?wait=`) frees its place once its client gave up.

use std::io;
use std::os::unix::io::RawFd;

/// True when the peer of socket `fd` closed it or it broke: a peek that does not wait reads its
/// end or an error. Bytes waiting (a next request sent ahead) say it is still there.
pub fn peer_gone(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `recv` writes at most one byte into `byte`, which lives across the call; a bad
    // descriptor is an error, never undefined behaviour. MSG_PEEK leaves the byte in the socket
    // and MSG_DONTWAIT leaves its blocking mode alone.
    let n = unsafe {
        libc::recv(
            fd,
            std::ptr::from_mut(&mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(
            io::Error::last_os_error().kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;

    #[test]
    fn a_closed_peer_is_gone_and_a_waiting_byte_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        assert!(!peer_gone(server.as_raw_fd()), "nothing sent yet");
        client.write_all(b"x").expect("write");
        drop(client);
        assert!(
            !peer_gone(server.as_raw_fd()),
            "a byte waits before the end"
        );
        let mut buf = [0u8; 1];
        std::io::Read::read(&mut &server, &mut buf).expect("read");
        assert!(peer_gone(server.as_raw_fd()), "then the end");
    }
}
