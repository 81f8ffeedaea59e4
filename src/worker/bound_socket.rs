//! TCP connections that leave from a chosen local address (std can connect, but not bind first).
//! sandrun limits each client IP, so the source address of a submit decides whose quota it uses.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Whether `addr` is configured on this host: binding a socket to it must succeed.
pub fn check_bindable(addr: IpAddr) -> io::Result<()> {
    UdpSocket::bind(SocketAddr::new(addr, 0)).map(drop)
}

/// Why a bound connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The local address could not be bound (no longer on the host?): not the worker's fault.
    Bind(io::Error),
    /// The worker could not be reached from it.
    Connect(io::Error),
}

/// A socket address in the C layout, with its length.
fn c_address(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, valid when zeroed.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let c = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), c) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let c = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), c) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn last_error<T>(result: libc::c_int, value: T) -> io::Result<T> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

fn set_nonblocking(fd: &OwnedFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor this function's caller owns.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    let flags = last_error(flags, flags)?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    last_error(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) },
        (),
    )
}

/// Waits up to `timeout` for a non-blocking connect to finish; its outcome.
fn finish_connect(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let millis = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    let ready = loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut poll, 1, millis) };
        match last_error(n, n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if ready == 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {:.1} s", timeout.as_secs_f64()),
        ));
    }
    let mut error: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR writes one c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut error as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    last_error(rc, ())?;
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(())
}

/// Connects to `remote` from `local` (any free port), giving up after `timeout`.
pub fn connect_from(
    local: IpAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket() returns a new descriptor or -1.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let raw = last_error(raw, raw).map_err(ConnectError::Bind)?;
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if local.is_ipv4() {
        // Defers the choice of the local port to connect(), so each destination has the whole
        // ephemeral range; older kernels without it still work.
        let one: libc::c_int = 1;
        // SAFETY: the option takes one c_int.
        let _ = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    let (address, len) = c_address(SocketAddr::new(local, 0));
    // SAFETY: `address` holds `len` valid bytes of a sockaddr.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    last_error(rc, ()).map_err(ConnectError::Bind)?;
    set_nonblocking(&fd, true).map_err(ConnectError::Connect)?;
    let (address, len) = c_address(remote);
    // SAFETY: as above.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(ConnectError::Connect(error));
        }
        finish_connect(&fd, timeout).map_err(ConnectError::Connect)?;
    }
    set_nonblocking(&fd, false).map_err(ConnectError::Connect)?;
    let stream = TcpStream::from(fd);
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn a_connection_leaves_from_the_chosen_loopback_address() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
        let remote = listener.local_addr().expect("addr");
        let local: IpAddr = "127.0.0.3".parse().expect("ip");
        let mut client = connect_from(local, remote, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect: {e:?}"));
        let (mut served, peer) = listener.accept().expect("accept");
        assert_eq!(peer.ip(), local);
        client.write_all(b"hi").expect("write");
        let mut buf = [0u8; 2];
        served.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn an_address_not_on_the_host_is_refused() {
        let foreign: IpAddr = "192.0.2.77".parse().expect("ip");
        assert!(check_bindable(foreign).is_err());
        assert!(check_bindable("127.0.0.5".parse().expect("ip")).is_ok());
        let remote = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        assert!(matches!(
            connect_from(foreign, remote, Duration::from_secs(1)),
            Err(ConnectError::Bind(_))
        ));
    }
}
