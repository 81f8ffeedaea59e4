//! Followers for the job-stream tests: a raw `GET /logs/ID?follow=1` reader that timestamps each
//! chunk, and WebSocket readers (of a worker's or the coordinator's `/stream/ID`; a raw one sends
//! request headers too) that timestamp each message.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use trusted_pool::worker::tls::Connector;
use trusted_pool::worker::websocket::{Message, StreamTimeouts, WsClient};

/// One piece a follower received, and when.
pub type Piece = (Instant, String);

/// A follower whose pieces arrive on a channel (read by a thread of its own).
pub struct Followed {
    /// The HTTP status of the answer (101 for WebSockets).
    pub status: u16,
    pieces: Receiver<Piece>,
    got: Vec<Piece>,
    ending: Ending,
}

/// How a followed stream ended, once it did: `last chunk` (chunked text), `close CODE` or
/// `close` (a WebSocket close frame, with or without a code), or `cut` (the connection closed
/// or broke without either).
type Ending = Arc<Mutex<Option<String>>>;

fn set_ending(ending: &Ending, how: String) {
    *ending.lock().unwrap_or_else(PoisonError::into_inner) = Some(how);
}

impl Followed {
    /// Waits until a piece containing `needle` arrived (or `deadline` passed); returns when.
    pub fn wait_for(&mut self, needle: &str, deadline: Duration) -> Option<Instant> {
        self.wait_for_count(needle, 1, deadline)?.first().copied()
    }

    /// Waits until `n` pieces containing `needle` arrived (or `deadline` passed); returns when
    /// each did.
    pub fn wait_for_count(
        &mut self,
        needle: &str,
        n: usize,
        deadline: Duration,
    ) -> Option<Vec<Instant>> {
        let end = Instant::now() + deadline;
        loop {
            let seen: Vec<Instant> = self
                .got
                .iter()
                .filter(|(_, p)| p.contains(needle))
                .map(|(at, _)| *at)
                .collect();
            if seen.len() >= n {
                return Some(seen);
            }
            let left = end.checked_duration_since(Instant::now())?;
            match self.pieces.recv_timeout(left) {
                Ok(piece) => self.got.push(piece),
                Err(_) => return None,
            }
        }
    }

    /// Waits until the stream ended (or `deadline` passed); returns every piece.
    pub fn all(&mut self, deadline: Duration) -> Vec<Piece> {
        let end = Instant::now() + deadline;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.pieces.recv_timeout(left) {
                Ok(piece) => self.got.push(piece),
                Err(_) => break,
            }
        }
        self.got.clone()
    }

    /// How the stream ended (see [`Ending`]); `None` while it is open.
    pub fn ending(&self) -> Option<String> {
        self.ending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The pieces so far, concatenated.
    pub fn text(&self) -> String {
        self.got.iter().map(|(_, p)| p.as_str()).collect()
    }
}

/// `GET /logs/{id}?follow=1` on the coordinator at `port`, read chunk by chunk.
pub fn follow_logs(port: u16, id: &str) -> Followed {
    follow_logs_with(port, id, &[])
}

/// [`follow_logs`] with these request headers.
pub fn follow_logs_with(port: u16, id: &str, headers: &[(&str, &str)]) -> Followed {
    let request = format!("GET /logs/{id}?follow=1 HTTP/1.1\r\n");
    let (status, head, mut reader) = open_raw(port, &request, headers);
    let chunked = head.iter().any(|h| {
        h.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let (sender, pieces) = mpsc::channel();
    let ending = Ending::default();
    let thread_ending = Arc::clone(&ending);
    thread::spawn(move || {
        if !chunked {
            let mut body = String::new();
            let _ = reader.read_to_string(&mut body);
            set_ending(&thread_ending, "cut".to_string());
            let _ = sender.send((Instant::now(), body));
            return;
        }
        let how = loop {
            let mut size = String::new();
            if reader.read_line(&mut size).unwrap_or(0) == 0 {
                break "cut";
            }
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                break "cut";
            };
            if n == 0 {
                break "last chunk";
            }
            let mut data = vec![0u8; n + 2];
            if reader.read_exact(&mut data).is_err() {
                break "cut";
            }
            data.truncate(n);
            let text = String::from_utf8_lossy(&data).into_owned();
            if sender.send((Instant::now(), text)).is_err() {
                return;
            }
        };
        set_ending(&thread_ending, how.to_string());
    });
    Followed {
        status,
        pieces,
        got: Vec::new(),
        ending,
    }
}

/// Opens `GET /logs/{id}?follow=1` and reads its head only: the status, and the body's reader
/// (chunked), for a client that reads it later or never.
pub fn open_follow_unread(port: u16, id: &str) -> (u16, BufReader<TcpStream>) {
    let request = format!("GET /logs/{id}?follow=1 HTTP/1.1\r\n");
    let (status, _, reader) = open_raw(port, &request, &[]);
    (status, reader)
}

/// Opens `GET /logs/{id}` (with these request headers) and reads its head only: the status,
/// its header lines, and the body's reader, for a client that reads it later or never.
pub fn open_logs_unread(
    port: u16,
    id: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<String>, BufReader<TcpStream>) {
    open_raw(port, &format!("GET /logs/{id} HTTP/1.1\r\n"), headers)
}

/// Opens the WebSocket `GET /stream/{id}` and reads its head only: the status, and the reader
/// of its frames, for a client that reads them later or never.
pub fn open_websocket_unread(port: u16, id: &str) -> (u16, BufReader<TcpStream>) {
    let (status, _, reader) = open_raw(port, &websocket_request(id), &[]);
    (status, reader)
}

/// The request line and upgrade headers of a WebSocket `GET /stream/{id}`.
fn websocket_request(id: &str) -> String {
    format!(
        "GET /stream/{id} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
}

/// How many bytes wait unread for a client of `reader`: those it buffered and those its socket
/// holds (up to 1 MiB).
pub fn unread_bytes(reader: &BufReader<TcpStream>) -> usize {
    let mut peeked = vec![0u8; 1 << 20];
    let _ = reader.get_ref().set_nonblocking(true);
    let waiting = reader.get_ref().peek(&mut peeked).unwrap_or(0);
    let _ = reader.get_ref().set_nonblocking(false);
    reader.buffer().len() + waiting
}

/// Connects to the coordinator at `port`, sends `request_line` with these headers, and reads
/// the answer's head: its status, its header lines, and the reader for the rest.
fn open_raw(
    port: u16,
    request_line: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<String>, BufReader<TcpStream>) {
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap_or_else(|e| panic!("read timeout: {e}"));
    write!(
        stream,
        "{request_line}Host: 127.0.0.1:{port}\r\n{extra}\r\n"
    )
    .unwrap_or_else(|e| panic!("send: {e}"));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut head = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        head.push(header);
    }
    (status, head, reader)
}

/// The coordinator's WebSocket `/stream/{id}` at `port`, opened with these request headers
/// (which [`follow_websocket`]'s client cannot send), read frame by frame until it closes.
pub fn follow_websocket_with(port: u16, id: &str, headers: &[(&str, &str)]) -> Followed {
    let (status, _, mut reader) = open_raw(port, &websocket_request(id), headers);
    let (sender, pieces) = mpsc::channel();
    let ending = Ending::default();
    let thread_ending = Arc::clone(&ending);
    thread::spawn(move || {
        // A text message sent in fragments: its frames so far.
        let mut message = Vec::new();
        let how = loop {
            let Some((fin, opcode, payload)) = read_frame(&mut reader) else {
                break "cut".to_string();
            };
            match opcode {
                0x0 | 0x1 => {
                    message.extend_from_slice(&payload);
                    if !fin {
                        continue;
                    }
                    let text = String::from_utf8_lossy(&message).into_owned();
                    message.clear();
                    if sender.send((Instant::now(), text)).is_err() {
                        return;
                    }
                }
                0x8 => {
                    break payload.get(..2).map_or("close".to_string(), |c| {
                        format!("close {}", u16::from_be_bytes([c[0], c[1]]))
                    })
                }
                _ => {}
            }
        };
        set_ending(&thread_ending, how);
    });
    Followed {
        status,
        pieces,
        got: Vec::new(),
        ending,
    }
}

/// One unmasked frame from a server: whether it ends its message (FIN), its opcode and its
/// payload (`None` when the stream broke).
fn read_frame(reader: &mut impl Read) -> Option<(bool, u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).ok()?;
    let length = match head[1] & 0x7F {
        126 => {
            let mut n = [0u8; 2];
            reader.read_exact(&mut n).ok()?;
            u64::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0u8; 8];
            reader.read_exact(&mut n).ok()?;
            u64::from_be_bytes(n)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(length).ok()?];
    reader.read_exact(&mut payload).ok()?;
    Some((head[0] & 0x80 != 0, head[0] & 0x0F, payload))
}

/// A WebSocket `/stream/{id}` at `endpoint` (a worker's or the coordinator's), read message by
/// message until it closes.
pub fn follow_websocket(endpoint: &str, id: &str) -> Followed {
    let timeouts = StreamTimeouts {
        connect: Duration::from_secs(10),
        idle: Duration::from_secs(120),
    };
    let plain = Connector::new(None);
    let mut client = WsClient::connect(endpoint, &format!("/stream/{id}"), timeouts, &plain)
        .unwrap_or_else(|e| panic!("WebSocket {endpoint}/stream/{id}: {e}"));
    let (sender, pieces) = mpsc::channel();
    let ending = Ending::default();
    let thread_ending = Arc::clone(&ending);
    thread::spawn(move || loop {
        match client.read_message() {
            Ok(Message::Text(text)) => {
                if sender.send((Instant::now(), text)).is_err() {
                    return;
                }
            }
            Ok(Message::Close(code)) => {
                let how = code.map_or_else(|| "close".to_string(), |c| format!("close {c}"));
                return set_ending(&thread_ending, how);
            }
            Ok(Message::Ping) => {}
            Err(_) => return set_ending(&thread_ending, "cut".to_string()),
        }
    });
    Followed {
        status: 101,
        pieces,
        got: Vec::new(),
        ending,
    }
}
