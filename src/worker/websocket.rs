//! A small synchronous WebSocket (RFC 6455) client for sandrun's `/stream/{id}` (over TLS for an
//! `https://` worker, with the settings of every other call), and the frame codec the
//! coordinator's own `/stream/{id}` writes with. No async runtime: one blocking socket with
//! explicit connect, handshake and idle (read) timeouts.

use crate::worker::bound_request::RequestTimeouts;
use crate::worker::raw_get;
use crate::worker::tls::Connector;
use crate::worker::workers_file::{endpoint_parts, EndpointParts};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use ureq::ReadWrite;

/// Largest message taken from a worker (sandrun keeps at most 10 MiB of each output stream).
const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// Largest handshake answer.
const MAX_HANDSHAKE: usize = 16 * 1024;
/// RFC 6455's key suffix.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Text frame opcode.
pub const TEXT: u8 = 0x1;
/// Close frame opcode.
pub const CLOSE: u8 = 0x8;
/// Opcode of a frame that continues a message sent in fragments.
pub const CONTINUATION: u8 = 0x0;
const BINARY: u8 = 0x2;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

/// One frame with FIN set; masked (as a client must send) when `mask` is given.
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    write_head(&mut out, 0x80 | opcode, mask.is_some(), payload.len());
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The head of an unmasked frame (a server's) with a payload of `len` bytes, which follows it
/// on the wire: a whole message's frame when `fin`, else a fragment with more to follow (the
/// first with the message's opcode, the others [`CONTINUATION`]; RFC 6455, 5.4).
pub fn frame_head(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    let fin_bit = if fin { 0x80 } else { 0 };
    write_head(&mut out, fin_bit | opcode, false, len);
    out
}

/// Appends a frame's first byte, its payload length and (when `masked`) the mask bit.
fn write_head(out: &mut Vec<u8>, first: u8, masked: bool, len: usize) {
    out.push(first);
    let mask_bit = if masked { 0x80 } else { 0 };
    match len {
        n if n <= 125 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}

/// A failed stream.
#[derive(Debug)]
pub enum WsError {
    /// No connection could be made.
    Connect(String),
    /// The worker did not switch protocols (e.g. a worker without `/stream`).
    Handshake(String),
    /// Nothing arrived for the idle timeout.
    Idle,
    /// The connection failed or the peer broke the protocol.
    Broken(String),
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(why) => write!(f, "cannot connect: {why}"),
            Self::Handshake(why) => write!(f, "no WebSocket: {why}"),
            Self::Idle => write!(f, "silent for too long"),
            Self::Broken(why) => write!(f, "stream broken: {why}"),
        }
    }
}

fn broken(e: io::Error) -> WsError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => WsError::Idle,
        _ => WsError::Broken(e.to_string()),
    }
}

/// What a worker sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text (or binary, taken as text) message.
    Text(String),
    /// The worker closed the stream, with the status code its close frame gave (RFC 6455
    /// 7.4: 1000 normal, 1001 going away, 1008 policy), if any.
    Close(Option<u16>),
    /// A ping, answered already: the caller may see to other things meanwhile (a worker that
    /// pings forever keeps the stream from going idle).
    Ping,
}

/// Timeouts of a stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamTimeouts {
    /// Connecting, and the whole handshake.
    pub connect: Duration,
    /// Longest silence between two frames.
    pub idle: Duration,
}

/// An open client stream.
pub struct WsClient {
    stream: Box<dyn ReadWrite>,
    pending: Vec<u8>,
    /// The fragments of a message read so far (a ping may come between them).
    partial: Vec<u8>,
}

/// 4 bytes that differ on every call (a mask need not be secret, only unpredictable to proxies).
fn mask_key() -> [u8; 4] {
    static SEQ: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = SEQ.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ nanos;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x as u32).to_le_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl WsClient {
    /// Opens `{endpoint}{path}` (the endpoint's path prefix kept), speaking sandrun's dialect
    /// (exact-case headers); over TLS with `tls`'s settings for an `https://` endpoint.
    pub fn connect(
        endpoint: &str,
        path: &str,
        timeouts: StreamTimeouts,
        tls: &Connector,
    ) -> Result<Self, WsError> {
        let parts = endpoint_parts(endpoint);
        let EndpointParts {
            authority,
            host,
            prefix,
            ..
        } = parts;
        if host.is_empty() {
            return Err(WsError::Connect(format!("no host in {endpoint}")));
        }
        let timeouts_to_connect = RequestTimeouts {
            connect: timeouts.connect,
            io: timeouts.connect,
        };
        let stream = raw_get::open(&parts, timeouts_to_connect, tls)
            .map_err(|e| WsError::Connect(e.to_string()))?;
        if let Some(socket) = stream.socket() {
            socket
                .set_nodelay(true)
                .map_err(|e| WsError::Connect(e.to_string()))?;
        }
        let mut client = WsClient {
            stream,
            pending: Vec::new(),
            partial: Vec::new(),
        };
        client.handshake(authority, &format!("{prefix}{path}"))?;
        if let Some(socket) = client.stream.socket() {
            socket
                .set_read_timeout(Some(timeouts.idle))
                .map_err(broken)?;
        }
        Ok(client)
    }

    fn handshake(&mut self, host: &str, path: &str) -> Result<(), WsError> {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&mask_key());
        raw[4..8].copy_from_slice(&mask_key());
        raw[8..12].copy_from_slice(&mask_key());
        raw[12..].copy_from_slice(&mask_key());
        let key = STANDARD.encode(raw);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.stream
            .write_all(request.as_bytes())
            .map_err(|e| WsError::Handshake(e.to_string()))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        let end = loop {
            if let Some(at) = find(&head, b"\r\n\r\n") {
                break at;
            }
            if head.len() > MAX_HANDSHAKE {
                return Err(WsError::Handshake("answer headers too long".into()));
            }
            let n = self.stream.read(&mut buf).map_err(|e| match broken(e) {
                WsError::Idle => WsError::Handshake("no answer to the upgrade".into()),
                other => WsError::Handshake(other.to_string()),
            })?;
            if n == 0 {
                return Err(WsError::Handshake("closed before answering".into()));
            }
            head.extend_from_slice(&buf[..n]);
        };
        self.pending = head.split_off(end + 4);
        let text = String::from_utf8_lossy(&head);
        let status = text.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("101") {
            return Err(WsError::Handshake(format!("answered {status:?}")));
        }
        let accept = text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("Sec-WebSocket-Accept")
                .then(|| value.trim().to_string())
        });
        if accept.as_deref() != Some(accept_key(&key).as_str()) {
            return Err(WsError::Handshake(
                "wrong or missing Sec-WebSocket-Accept".into(),
            ));
        }
        Ok(())
    }

    /// Reads until `n` bytes are pending, as much as the socket has at each read (a burst of
    /// frames costs one system call, not two per frame). Nothing is taken: a read that times
    /// out part-way leaves what came for the next call, so the frames stay in step.
    fn fill(&mut self, n: usize) -> Result<(), WsError> {
        let mut buf = [0u8; 8192];
        while self.pending.len() < n {
            let got = self.stream.read(&mut buf).map_err(broken)?;
            if got == 0 {
                return Err(WsError::Broken("closed by the worker".into()));
            }
            self.pending.extend_from_slice(&buf[..got]);
        }
        Ok(())
    }

    /// The next message: blocks up to the idle timeout for it; a ping is answered and told. A
    /// frame is taken only once it came whole.
    pub fn read_message(&mut self) -> Result<Message, WsError> {
        loop {
            self.fill(2)?;
            let (fin, opcode) = (self.pending[0] & 0x80 != 0, self.pending[0] & 0x0F);
            let masked = self.pending[1] & 0x80 != 0;
            let (extended, length) = match self.pending[1] & 0x7F {
                126 => {
                    self.fill(4)?;
                    (
                        2,
                        u64::from(u16::from_be_bytes([self.pending[2], self.pending[3]])),
                    )
                }
                127 => {
                    self.fill(10)?;
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(&self.pending[2..10]);
                    (8, u64::from_be_bytes(raw))
                }
                n => (0, u64::from(n)),
            };
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            if self.partial.len().saturating_add(length) > MAX_MESSAGE {
                return Err(WsError::Broken(format!(
                    "a message over {MAX_MESSAGE} bytes"
                )));
            }
            let head = 2 + extended + if masked { 4 } else { 0 };
            self.fill(head + length)?;
            let rest = self.pending.split_off(head + length);
            let mut whole = std::mem::replace(&mut self.pending, rest);
            let mut payload = whole.split_off(head);
            let key = masked.then(|| whole[head - 4..head].to_vec());
            if let Some(key) = key {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= key[i % 4];
                }
            }
            match opcode {
                CLOSE => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    return Ok(Message::Close(code));
                }
                PING => {
                    let pong = frame(PONG, &payload, Some(mask_key()));
                    self.stream.write_all(&pong).map_err(broken)?;
                    return Ok(Message::Ping);
                }
                PONG => {}
                TEXT | BINARY | CONTINUATION => {
                    self.partial.extend_from_slice(&payload);
                    if fin {
                        let message = std::mem::take(&mut self.partial);
                        return Ok(Message::Text(
                            String::from_utf8_lossy(&message).into_owned(),
                        ));
                    }
                }
                other => return Err(WsError::Broken(format!("unknown opcode {other}"))),
            }
        }
    }

    /// A handle on the stream's socket (TLS or not), to end a read blocked on another thread.
    pub fn socket_handle(&self) -> Option<std::net::TcpStream> {
        self.stream.socket().and_then(|s| s.try_clone().ok())
    }

    /// Sets the longest silence before [`WsClient::read_message`] gives up ([`WsError::Idle`]).
    pub fn set_idle(&mut self, idle: Duration) -> Result<(), WsError> {
        match self.stream.socket() {
            Some(socket) => socket.set_read_timeout(Some(idle)).map_err(broken),
            None => Ok(()),
        }
    }

    /// Sends a close frame and closes the connection (sandrun leaves a stream open after
    /// `[DONE]`, so the coordinator closes it).
    pub fn close(mut self) {
        let _ = self.stream.write_all(&frame(CLOSE, &[], Some(mask_key())));
        let _ = self.stream.flush();
        if let Some(socket) = self.stream.socket() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_carry_their_length_and_mask() {
        assert_eq!(frame(TEXT, b"hi", None), vec![0x81, 2, b'h', b'i']);
        let long = frame(TEXT, &[0u8; 300], None);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        let masked = frame(TEXT, b"ab", Some([1, 2, 3, 4]));
        assert_eq!(masked, vec![0x81, 0x82, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2]);
    }

    #[test]
    fn a_fragments_head_says_whether_more_follow() {
        assert_eq!(frame_head(false, TEXT, 2), vec![0x01, 2]);
        assert_eq!(frame_head(false, CONTINUATION, 70_000)[..2], [0x00, 127]);
        assert_eq!(frame_head(true, CONTINUATION, 300), vec![0x80, 126, 1, 44]);
    }
}
