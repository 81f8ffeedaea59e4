//! A followed stream's wire ([`Out`]): the answer's head, then pieces as chunked `text/plain`
//! (bare text to an HTTP/1.0 client) or as WebSocket text messages, a long piece sent in parts
//! (fragments of one message), and the stream's end. On the text stream every marker
//! ([`Piece::marker`]) starts a line: a newline goes before it when the output before it did
//! not end one. A write that moves no byte for `--client-timeout` fails, and the follower lets
//! its client go.

use crate::base::job::Job;
use crate::base::send_timeout;
use crate::http::redact::TextHider;
use crate::http::views;
use crate::state::context::Context;
use crate::state::events::Piece;
use crate::worker::websocket::{accept_key, frame, frame_head, CLOSE, CONTINUATION, TEXT};
use std::borrow::Cow;
use std::io::{self, Write};
use std::os::unix::io::RawFd;
use tiny_http::Request;

/// The job's status line, sandrun's own (`note` empty) or with a note after the status.
pub fn status_line(job: &Job, note: &str) -> String {
    format!("[STATUS] Job status: {}{note}\n", job.status.as_str())
}

/// How the pieces travel.
pub enum Wire {
    /// Chunked `text/plain`.
    Text,
    /// WebSocket text frames, after a handshake answering this `Sec-WebSocket-Key`.
    WebSocket(String),
}

/// Why a stream ends: its WebSocket close code (RFC 6455 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Everything was sent (1000).
    Over,
    /// The coordinator stops (1001).
    GoingAway,
    /// Its client key no longer lets it follow the job (1008).
    Refused,
    /// Its client read slower than the job's output came (1013, try again later).
    Behind,
}

/// How pieces are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// WebSocket text frames.
    WebSocket,
    /// The chunked encoding (HTTP/1.1).
    Chunked,
    /// Bare text up to the connection's close: an HTTP/1.0 client takes no chunked encoding
    /// (RFC 9112, 6.1).
    UntilClose,
}

/// Where a part of a long piece lies in it: a WebSocket sends the piece as one message, its
/// parts as the message's fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// It is the piece's first part.
    pub opens: bool,
    /// It is the piece's last part.
    pub ends: bool,
}

impl Part {
    /// A whole piece.
    pub const WHOLE: Part = Part {
        opens: true,
        ends: true,
    };
}

/// Writes pieces on one wire.
pub struct Out {
    writer: Box<dyn Write + Send>,
    framing: Framing,
    hider: Option<TextHider>,
    /// The connection's socket (for its send timeout, and to shut it when given up on).
    socket: Option<RawFd>,
    /// The text stream's last byte sent was not a newline.
    line_open: bool,
}

impl Out {
    /// Answers `request` with the stream's head (with these CORS headers on text) and holds
    /// each later write to `send_timeout`; `hider` hides the worker's job id from the text.
    pub fn open(
        mut request: Request,
        wire: &Wire,
        cors: &[(&'static str, String)],
        hider: Option<TextHider>,
        send_timeout: std::time::Duration,
    ) -> io::Result<Self> {
        let (head, framing) = match wire {
            Wire::Text => {
                let cors: String = cors
                    .iter()
                    .map(|(name, value)| format!("{name}: {value}\r\n"))
                    .collect();
                let (framing, encoding) = if *request.http_version() <= (1, 0) {
                    (Framing::UntilClose, "")
                } else {
                    (Framing::Chunked, "Transfer-Encoding: chunked\r\n")
                };
                (
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
                         {encoding}Cache-Control: no-cache\r\n{cors}Connection: close\r\n\r\n"
                    ),
                    framing,
                )
            }
            Wire::WebSocket(key) => (
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(key)
                ),
                Framing::WebSocket,
            ),
        };
        let socket = request.connection_fd();
        if let Some(Err(e)) = socket.map(|fd| send_timeout::set(fd, send_timeout)) {
            log::warn!("Cannot hold a followed stream's writes to {send_timeout:?}: {e}");
        }
        // Nothing follows on the connection once the stream ended: it closes then.
        request.close_after_response();
        let mut writer = request.into_writer();
        writer.write_all(head.as_bytes())?;
        writer.flush()?;
        Ok(Out {
            writer,
            framing,
            hider,
            socket,
            line_open: false,
        })
    }

    /// Sends a piece of the job's feed.
    pub fn piece(&mut self, piece: &Piece) -> io::Result<()> {
        self.part(&piece.text, piece.marker, Part::WHOLE)
    }

    /// Sends a marker line (it starts a line of the text stream).
    pub fn marker(&mut self, text: &str) -> io::Result<()> {
        self.part(text, true, Part::WHOLE)
    }

    /// Sends `text`, the part `at` of a piece that is a marker when `marker` (which matters for
    /// its first part only). An empty whole piece sends nothing.
    pub fn part(&mut self, text: &str, marker: bool, at: Part) -> io::Result<()> {
        if text.is_empty() && (self.framing != Framing::WebSocket || at == Part::WHOLE) {
            return Ok(());
        }
        let text = match &mut self.hider {
            Some(hider) => hider.hide(text),
            None => Cow::Borrowed(text),
        };
        let newline: &[u8] = if marker && at.opens && self.line_open {
            b"\n"
        } else {
            b""
        };
        match self.framing {
            Framing::WebSocket => {
                let opcode = if at.opens { TEXT } else { CONTINUATION };
                let head = frame_head(at.ends, opcode, text.len());
                self.writer.write_all(&head)?;
                self.writer.write_all(text.as_bytes())?;
            }
            Framing::Chunked => {
                write!(self.writer, "{:x}\r\n", newline.len() + text.len())?;
                self.writer.write_all(newline)?;
                self.writer.write_all(text.as_bytes())?;
                self.writer.write_all(b"\r\n")?;
            }
            Framing::UntilClose => {
                self.writer.write_all(newline)?;
                self.writer.write_all(text.as_bytes())?;
            }
        }
        if let Some(&last) = text.as_bytes().last() {
            self.line_open = last != b'\n';
        }
        self.writer.flush()
    }

    /// The worker's job id hidden from this stream, when it is hidden and the job has one.
    pub fn hidden_id(&mut self) -> Option<String> {
        self.hider.as_mut()?.remote().map(str::to_string)
    }

    /// Breaks a silence: a ping frame on a WebSocket, the job's status line (when it is still
    /// in the table) on text, which has no invisible piece; a queued job's line also gives its
    /// place in the queue.
    pub fn heartbeat(&mut self, ctx: &Context, id: &str) -> io::Result<()> {
        if self.framing == Framing::WebSocket {
            self.writer.write_all(&frame(0x9, &[], None))?;
            return self.writer.flush();
        }
        let line = {
            let st = ctx.lock();
            st.jobs
                .get(id)
                .map(|job| status_line(job, &views::queue_place_note(&st, job)))
        };
        line.map_or(Ok(()), |line| self.marker(&line))
    }

    /// Ends the stream: the last chunk, or a WebSocket close frame with `ending`'s code.
    pub fn finish(mut self, ending: Ending) {
        let end: Vec<u8> = match self.framing {
            Framing::WebSocket => {
                let code: u16 = match ending {
                    Ending::Over => 1000,
                    Ending::GoingAway => 1001,
                    Ending::Refused => 1008,
                    Ending::Behind => 1013,
                };
                frame(CLOSE, &code.to_be_bytes(), None)
            }
            Framing::Chunked => b"0\r\n\r\n".to_vec(),
            // The connection's close ends the body.
            Framing::UntilClose => Vec::new(),
        };
        let _ = self.writer.write_all(&end);
        let _ = self.writer.flush();
    }

    /// Gives the stream up after a failed write: its connection is shut, so that nothing more
    /// waits on a client that reads nothing. Says whether that write timed out (the client
    /// read nothing for the send timeout) rather than failed (the client went away).
    pub fn abandon(self, failed: &io::Error) -> bool {
        if let Some(fd) = self.socket {
            send_timeout::shut(fd);
        }
        drop(self.writer);
        send_timeout::timed_out(failed)
    }
}
