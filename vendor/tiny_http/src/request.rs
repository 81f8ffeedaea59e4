use std::io::Error as IoError;
use std::io::{self, Cursor, ErrorKind, Read, Write};

use std::fmt;
use std::net::SocketAddr;

use std::sync::mpsc::Sender;
use std::sync::atomic::Ordering;

use crate::connection::RequestControl;

use crate::util::{BodyEnd, ChunkedReader, EqualReader, FusedReader};
use crate::{HTTPVersion, Header, Method, Response, StatusCode};

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what
/// your code must analyse and answer.
///
/// This object implements the `Send` trait, therefore you can dispatch your requests to
/// worker threads.
///
/// # Pipelining
///
/// If a client sends multiple requests in a row (without waiting for the response), then you will
/// get multiple `Request` objects simultaneously. This is called *requests pipelining*.
/// Tiny-http automatically reorders the responses so that you don't need to worry about the order
/// in which you call `respond` or `into_writer`.
///
/// This mechanic is disabled if:
///
///  - The body of a request is large enough (handling requires pipelining requires storing the
///    body of the request in a buffer ; if the body is too big, tiny-http will avoid doing that)
///  - A request sends a `Expect: 100-continue` header (which means that the client waits to
///    know whether its body will be processed before sending it)
///  - A request sends a `Connection: close` header or `Connection: upgrade` header (used for
///    websockets), which indicates that this is the last request that will be received on this
///    connection
///
/// # Automatic cleanup
///
/// If a `Request` object is destroyed without `into_writer` or `respond` being called,
/// an empty response with a 500 status code (internal server error) will automatically be
/// sent back to the client.
/// This means that if your code fails during the handling of a request, this "internal server
/// error" response will automatically be sent during the stack unwinding.
///
/// # Testing
///
/// If you want to build fake requests to test your server, use [`TestRequest`](crate::test::TestRequest).
pub struct Request {
    // where to read the body from
    data_reader: Option<Box<dyn Read + Send + 'static>>,

    // if this writer is empty, then the request has been answered
    response_writer: Option<Box<dyn Write + Send + 'static>>,

    remote_addr: Option<SocketAddr>,

    // true if HTTPS, false if HTTP
    secure: bool,

    method: Method,

    path: String,

    http_version: HTTPVersion,

    headers: Vec<Header>,

    body_length: Option<usize>,

    // true if a `100 Continue` response must be sent when `as_reader()` is called
    must_send_continue: bool,

    // If Some, a message must be sent after responding
    notify_when_responded: Option<Sender<()>>,

    // Patched: the raw socket of the connection, and whether to stop reading it once answered
    control: Option<RequestControl>,
    close_after_response: bool,
    // Patched: set when the answer could not be written because its client had gone (a reset
    // or a closed pipe, which the answer's writer takes as no error)
    client_gone: bool,
    // Patched: the `Connection` option the answer gives, when the connection's fate differs
    // from its version's default (see `ClientConnection::next`)
    connection_option: Option<&'static str>,

    // Patched: set once the body was read to its end (at once when there is none, or when it
    // was read with the headers)
    body_end: BodyEnd,
}

/// Patched: the most of an unread body an answer reads and drops (of what already arrived,
/// never waiting for more) to keep its connection for a next request.
const ARRIVED_BODY_LIMIT: usize = 64 * 1024;

struct NotifyOnDrop<R> {
    sender: Sender<()>,
    inner: R,
}

impl<R: Read> Read for NotifyOnDrop<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl<R: Write> Write for NotifyOnDrop<R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
impl<R> Drop for NotifyOnDrop<R> {
    fn drop(&mut self) {
        // Patched: no unwrap (the connection's thread may be gone).
        let _ = self.sender.send(());
    }
}

/// Error that can happen when building a `Request` object.
#[derive(Debug)]
pub enum RequestCreationError {
    /// The client sent an `Expect` header that was not recognized by tiny-http.
    ExpectationFailed,

    /// Error while reading data from the socket during the creation of the `Request`.
    /// Patched: without the error, which nothing read (the connection just ends).
    CreationIoError,

    /// Patched: the request's framing (`Content-Length`, `Transfer-Encoding`) cannot be
    /// trusted (RFC 9112, section 6): the status to answer, and why. Where the next request
    /// would start is unknown, so the connection is closed.
    BadFraming(u16, &'static str),

    /// Patched: a body read with its request that stalled past the read timeout or ended early:
    /// the status to answer, and why. The connection is closed.
    BadBody(u16, &'static str),
}

/// Patched: how a request's body is framed.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// `Content-Length` bytes.
    Length(usize),
    /// The chunked transfer coding.
    Chunked,
    /// No body.
    None,
}

/// Patched: how a request's framing headers frame its body, or why they cannot be trusted
/// (RFC 9112, section 6). Every `Content-Length` (a header may
/// repeat, or hold a list) must be the same decimal number, digits only; a
/// `Transfer-Encoding` must be `chunked` alone, in HTTP/1.1, without a `Content-Length`.
/// tiny_http 0.12.0 took the first `Content-Length` that Rust parsed (`+5` as 5; `-1` or a
/// second, different value ignored): a proxy in front that read another boundary would pass
/// a second request hidden in the first one's body.
fn framing(headers: &[Header], version: &HTTPVersion) -> Result<Framing, (u16, &'static str)> {
    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.field.equiv(name))
            .flat_map(|h| h.value.as_str().split(','))
            .map(str::trim)
    };
    let chunked = headers.iter().any(|h| h.field.equiv("Transfer-Encoding"));
    let mut length = None;
    for value in values("Content-Length") {
        if chunked {
            return Err((400, "a request may not carry both Content-Length and Transfer-Encoding"));
        }
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err((400, "Content-Length must be a decimal number of bytes"));
        }
        // Digits past what a length holds: a body larger than any this server takes.
        let number = value.parse::<usize>().map_err(|_| {
            (
                413,
                "the Content-Length is larger than any request body this server takes",
            )
        })?;
        if length.is_some_and(|l| l != number) {
            return Err((400, "the request carries differing Content-Length values"));
        }
        length = Some(number);
    }
    if chunked {
        if *version < HTTPVersion(1, 1) {
            return Err((400, "Transfer-Encoding needs HTTP/1.1"));
        }
        let codings: Vec<&str> = values("Transfer-Encoding").collect();
        if !codings.last().is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
            return Err((400, "a request's Transfer-Encoding must end in chunked"));
        }
        if codings.len() > 1 {
            return Err((501, "the only transfer coding served is chunked alone"));
        }
        return Ok(Framing::Chunked);
    }
    Ok(length.map_or(Framing::None, Framing::Length))
}

/// Patched: whether the `Connection` headers name `token` (RFC 9110, section 7.6.1: a list of
/// tokens, over every `Connection` header, compared without case). 0.12.0 looked for a
/// substring of the first header (`x-no-upgrade` named `upgrade`), and missed a second header.
pub(crate) fn connection_has(headers: &[Header], token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.field.equiv("Connection"))
        .flat_map(|h| h.value.as_str().split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl From<IoError> for RequestCreationError {
    fn from(_: IoError) -> RequestCreationError {
        RequestCreationError::CreationIoError
    }
}

/// Patched: bodies of at most this many bytes (with a `Content-Length` and no
/// `Expect: 100-continue`) are read on the connection's thread before the request is handed
/// to the server's `recv()` (0.12.0: 1024).
pub const MAX_INLINE_BODY: usize = 16 * 1024;

/// Builds a new request.
///
/// After the request line and headers have been read from the socket, a new `Request` object
/// is built.
///
/// You must pass a `Read` that will allow the `Request` object to read from the incoming data.
/// It is the responsibility of the `Request` to read only the data of the request and not further.
///
/// The `Write` object will be used by the `Request` to write the response.
#[allow(clippy::too_many_arguments)]
pub fn new_request<R, W>(
    secure: bool,
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
    remote_addr: Option<SocketAddr>,
    mut source_data: R,
    writer: W,
    control: Option<RequestControl>,
) -> Result<Request, RequestCreationError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    // Patched: the framing headers are checked (see `framing`).
    let framing = framing(&headers, &version)
        .map_err(|(status, why)| RequestCreationError::BadFraming(status, why))?;
    let content_length = match framing {
        Framing::Length(length) => Some(length),
        Framing::Chunked | Framing::None => None,
    };

    // Patched: every `Expect` is read (0.12.0: the first only), each must be `100-continue`
    // (else 417), and an HTTP/1.0 request's is ignored (RFC 9110, section 10.1.1: no
    // `100 Continue` is sent to an HTTP/1.0 client).
    let mut expects_continue = false;
    for h in headers.iter().filter(|h| h.field.equiv("Expect")) {
        if !h.value.as_str().eq_ignore_ascii_case("100-continue") {
            return Err(RequestCreationError::ExpectationFailed);
        }
        expects_continue = version >= HTTPVersion(1, 1);
    }

    // Patched: the connection is handed over whole (for a protocol upgrade) only for a GET that
    // asks for one (an `Upgrade` header and the `upgrade` token in `Connection`) and has no
    // body. 0.12.0 did so for any request whose first `Connection` header held "upgrade"
    // anywhere, so a body's bytes past its `Content-Length` or last chunk were read as body.
    let connection_upgrade = method == Method::Get
        && framing == Framing::None
        && headers.iter().any(|h| h.field.equiv("Upgrade"))
        && connection_has(&headers, "upgrade");

    // we wrap `source_data` around a reading whose nature depends on the transfer-encoding and
    // content-length headers
    let body_end = BodyEnd::new(false);
    let reader = if connection_upgrade {
        // if we have a `Connection: upgrade`, always keeping the whole reader
        body_end.mark();
        Box::new(source_data) as Box<dyn Read + Send + 'static>
    } else if let Some(content_length) = content_length {
        if content_length == 0 {
            body_end.mark();
            Box::new(io::empty()) as Box<dyn Read + Send + 'static>
        } else if content_length <= MAX_INLINE_BODY && !expects_continue {
            // Patched: a small body is read here, on the connection's thread, so a client that
            // stalls inside it holds its own connection thread only, never a handler. The
            // buffer grows with what arrives (a declared length costs nothing until sent).
            // A body that stalls or ends early is answered (408, 400), not closed on in silence.
            let mut buffer = Vec::with_capacity(content_length.min(4096));
            match (&mut source_data)
                .take(content_length as u64)
                .read_to_end(&mut buffer)
            {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(RequestCreationError::BadBody(
                        408,
                        "the body stalled: nothing of it arrived for the client timeout; send it without pauses",
                    ));
                }
                Err(e) => return Err(e.into()),
                Ok(_) if buffer.len() != content_length => {
                    return Err(RequestCreationError::BadBody(
                        400,
                        "the body ended before its Content-Length; send it whole",
                    ));
                }
                Ok(_) => {}
            }

            body_end.mark();
            Box::new(Cursor::new(buffer)) as Box<dyn Read + Send + 'static>
        } else {
            let data_reader = EqualReader::new(source_data, content_length, body_end.clone());
            Box::new(FusedReader::new(data_reader)) as Box<dyn Read + Send + 'static>
        }
    } else if framing == Framing::Chunked {
        // if a transfer-encoding was specified, then "chunked" is ALWAYS applied
        // over the message (RFC2616 #3.6). Patched: read strictly and within bounds.
        let data_reader = ChunkedReader::new(source_data, body_end.clone());
        Box::new(FusedReader::new(data_reader)) as Box<dyn Read + Send + 'static>
    } else {
        // if we have neither a Content-Length nor a Transfer-Encoding,
        // assuming that we have no data
        body_end.mark();
        Box::new(io::empty()) as Box<dyn Read + Send + 'static>
    };

    Ok(Request {
        data_reader: Some(reader),
        response_writer: Some(Box::new(writer) as Box<dyn Write + Send + 'static>),
        remote_addr,
        secure,
        method,
        path,
        http_version: version,
        headers,
        body_length: content_length,
        must_send_continue: expects_continue,
        notify_when_responded: None,
        control,
        close_after_response: false,
        client_gone: false,
        connection_option: None,
        body_end,
    })
}

impl Request {
    /// Returns true if the request was made through HTTPS.
    #[inline]
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        &self.path
    }

    /// Returns a list of all headers sent by the client.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the length of the body in bytes.
    ///
    /// Returns `None` if the length is unknown.
    #[inline]
    pub fn body_length(&self) -> Option<usize> {
        self.body_length
    }

    /// Returns the address of the client that sent this request.
    ///
    /// The address is always `Some` for TCP listeners, but always `None` for UNIX listeners
    /// (as the remote address of a UNIX client is almost always unnamed).
    ///
    /// Note that this is gathered from the socket. If you receive the request from a proxy,
    /// this function will return the address of the proxy and not the address of the actual
    /// user.
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// Patched: the descriptor of the request's connection, which stays open while the request
    /// lives, for a caller that looks at the connection without reading it (whether its client
    /// went away while the answer waits). None for a request without a connection.
    #[cfg(unix)]
    pub fn connection_fd(&self) -> Option<std::os::unix::io::RawFd> {
        self.control.as_ref().map(|control| control.socket.raw_fd())
    }

    /// Sends a response with a `Connection: upgrade` header, then turns the `Request` into a `Stream`.
    ///
    /// The main purpose of this function is to support websockets.
    /// If you detect that the request wants to use some kind of protocol upgrade, you can
    ///  call this function to obtain full control of the socket stream.
    ///
    /// If you call this on a non-websocket request, tiny-http will wait until this `Stream` object
    ///  is destroyed before continuing to read or write on the socket. Therefore you should always
    ///  destroy it as soon as possible.
    pub fn upgrade<R: Read>(
        mut self,
        protocol: &str,
        response: Response<R>,
    ) -> Box<dyn ReadWrite + Send> {
        use crate::util::CustomStream;

        response
            .raw_print(
                self.response_writer.as_mut().unwrap().by_ref(),
                self.http_version.clone(),
                &self.headers,
                false,
                Some(protocol),
            )
            .ok(); // TODO: unused result

        self.response_writer.as_mut().unwrap().flush().ok(); // TODO: unused result

        let stream = CustomStream::new(self.extract_reader_impl(), self.extract_writer_impl());
        if let Some(sender) = self.notify_when_responded.take() {
            let stream = NotifyOnDrop {
                sender,
                inner: stream,
            };
            Box::new(stream) as Box<dyn ReadWrite + Send>
        } else {
            Box::new(stream) as Box<dyn ReadWrite + Send>
        }
    }

    /// Allows to read the body of the request.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # extern crate rustc_serialize;
    /// # extern crate tiny_http;
    /// # use rustc_serialize::json::Json;
    /// # use std::io::Read;
    /// # fn get_content_type(_: &tiny_http::Request) -> &'static str { "" }
    /// # fn main() {
    /// # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
    /// let mut request = server.recv().unwrap();
    ///
    /// if get_content_type(&request) == "application/json" {
    ///     let mut content = String::new();
    ///     request.as_reader().read_to_string(&mut content).unwrap();
    ///     let json: Json = content.parse().unwrap();
    /// }
    /// # }
    /// ```
    ///
    /// If the client sent a `Expect: 100-continue` header with the request, calling this
    ///  function will send back a `100 Continue` response.
    #[inline]
    pub fn as_reader(&mut self) -> &mut dyn Read {
        if self.must_send_continue {
            let msg = Response::new_empty(StatusCode(100));
            msg.raw_print(
                self.response_writer.as_mut().unwrap().by_ref(),
                self.http_version.clone(),
                &self.headers,
                true,
                None,
            )
            .ok();
            self.response_writer.as_mut().unwrap().flush().ok();
            self.must_send_continue = false;
        }

        self.data_reader.as_mut().unwrap()
    }

    /// Turns the `Request` into a writer.
    ///
    /// The writer has a raw access to the stream to the user.
    /// This function is useful for things like CGI.
    ///
    /// Note that the destruction of the `Writer` object may trigger
    /// some events. For exemple if a client has sent multiple requests and the requests
    /// have been processed in parallel, the destruction of a writer will trigger
    /// the writing of the next response.
    /// Therefore you should always destroy the `Writer` as soon as possible.
    /// Patched: a request whose body's end was not read closes its connection once the writer
    /// is dropped (the rest of the body would be read as a next request), and so does one
    /// marked with `close_after_response` (an answer that says `Connection: close`, or a
    /// WebSocket: what follows on the connection is no next request).
    #[inline]
    pub fn into_writer(mut self) -> Box<dyn Write + Send + 'static> {
        if self.close_after_response || !self.body_finished() {
            if let Some(control) = &self.control {
                control.closing.store(true, Ordering::Release);
            }
        }
        let writer = self.extract_writer_impl();
        if let Some(sender) = self.notify_when_responded.take() {
            let writer = NotifyOnDrop {
                sender,
                inner: writer,
            };
            Box::new(writer) as Box<dyn Write + Send + 'static>
        } else {
            writer
        }
    }

    /// Extract the response `Writer` object from the Request, dropping this `Writer` has the same side effects
    /// as the object returned by `into_writer` above.
    ///
    /// This may only be called once on a single request.
    fn extract_writer_impl(&mut self) -> Box<dyn Write + Send + 'static> {
        use std::mem;

        assert!(self.response_writer.is_some());

        let mut writer = None;
        mem::swap(&mut self.response_writer, &mut writer);
        writer.unwrap()
    }

    /// Extract the body `Reader` object from the Request.
    ///
    /// This may only be called once on a single request.
    fn extract_reader_impl(&mut self) -> Box<dyn Read + Send + 'static> {
        use std::mem;

        assert!(self.data_reader.is_some());

        let mut reader = None;
        mem::swap(&mut self.data_reader, &mut reader);
        reader.unwrap()
    }

    /// Patched: the answer says `Connection: close`, and the connection ends after it. The
    /// answering thread never waits for an unread body (a stalled or hostile upload would hold
    /// it until the client timeout); the connection's own thread shuts the write side and reads
    /// and drops what the client still sends, for a bounded time, before it closes
    /// (`ClientConnection::linger`): closing a socket with unread bytes resets the connection,
    /// and a client still sending its body would see the reset instead of its answer.
    pub fn close_after_response(&mut self) {
        self.close_after_response = true;
    }

    /// Patched: the answer says `Connection: option` (unless it says `close` for closing after
    /// it): `close` to a client that asked to close, `keep-alive` to an HTTP/1.0 client whose
    /// connection is kept, as RFC 9112 (section 9.6, appendix C.2.2) asks. 0.12.0 said neither:
    /// an HTTP/1.0 client that asked to keep its connection took it for closed.
    pub(crate) fn answer_connection(&mut self, option: &'static str) {
        self.connection_option = Some(option);
    }

    /// Patched: true when the body was read to its end. Otherwise reads and drops what of it
    /// already arrived (at most `ARRIVED_BODY_LIMIT`, never waiting) and tells whether that
    /// reached the end: the end of a multipart body's epilogue usually has.
    fn body_finished(&mut self) -> bool {
        if self.body_end.reached() {
            return true;
        }
        // A client waiting for `100 Continue` has not sent its body.
        if self.must_send_continue || self.close_after_response {
            return false;
        }
        let (Some(control), Some(reader)) = (&self.control, self.data_reader.as_mut()) else {
            return false;
        };
        if control.socket.set_nonblocking(true).is_err() {
            return false;
        }
        let mut buf = [0u8; 8192];
        let mut budget = ARRIVED_BODY_LIMIT;
        while budget > 0 && !self.body_end.reached() {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
        let _ = control.socket.set_nonblocking(false);
        self.body_end.reached()
    }

    /// Sends a response to this request.
    ///
    /// Patched: a request whose body's end was not read is answered with `Connection: close`,
    /// as after `close_after_response`. 0.12.0 read a next request from where the handler
    /// stopped reading (after draining up to 1 MiB), so a body could carry a request the
    /// client's proxy never saw as one.
    #[inline]
    pub fn respond<R>(mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        self.respond_and_settle(response)
    }

    fn respond_and_settle<R>(&mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        if !self.body_finished() {
            self.close_after_response = true;
        }
        let res = self.respond_impl(response);
        // Patched: an answer that failed part-way (its body could not be read, or its client
        // stopped reading) leaves the connection mid-message: it is closed at once, so the
        // client sees the cut now, not after waiting for bytes that never come.
        // Patched: a client that went away reads no more answers: the requests it pipelined
        // before it went are not served (0.12.0 went on answering them into the closed socket).
        if let Some(control) = &self.control {
            if res.is_err() || self.client_gone {
                let _ = control.socket.shutdown(std::net::Shutdown::Both);
                control.closing.store(true, Ordering::Release);
            } else if self.close_after_response {
                // The connection's thread lingers for the rest of the body, then closes.
                control.closing.store(true, Ordering::Release);
            }
        }
        if let Some(sender) = self.notify_when_responded.take() {
            // Patched: no unwrap (the connection's thread may be gone).
            let _ = sender.send(());
        }
        res
    }

    fn respond_impl<R>(&mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let mut writer = self.extract_writer_impl();
        let mut response = response;
        let do_not_send_body = self.method == Method::Head;
        // Patched: a body of unknown length ends an HTTP/1.0 answer at the connection's close.
        if response.data_length().is_none() && self.http_version <= (1, 0) && !do_not_send_body {
            self.close_after_response = true;
        }
        if self.close_after_response {
            response.close_connection();
        } else if let Some(option) = self.connection_option {
            response.connection_option(option);
        }

        let printed = response.raw_print(
            writer.by_ref(),
            self.http_version.clone(),
            &self.headers,
            do_not_send_body,
            None,
        );
        self.ignore_client_closing_errors(printed)?;

        let flushed = writer.flush();
        self.ignore_client_closing_errors(flushed)
    }

    // Patched: notes that the client went away (see `client_gone`).
    fn ignore_client_closing_errors(&mut self, result: io::Result<()>) -> io::Result<()> {
        result.or_else(|err| match err.kind() {
            ErrorKind::BrokenPipe
            | ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset => {
                self.client_gone = true;
                Ok(())
            }
            _ => Err(err),
        })
    }

    pub(crate) fn with_notify_sender(mut self, sender: Sender<()>) -> Self {
        self.notify_when_responded = Some(sender);
        self
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method, self.path, self.remote_addr
        )
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.response_writer.is_some() {
            let response = Response::empty(500);
            let _ = self.respond_and_settle(response); // ignoring any potential error
        }
    }
}

/// Dummy trait that regroups the `Read` and `Write` traits.
///
/// Automatically implemented on all types that implement both `Read` and `Write`.
pub trait ReadWrite: Read + Write {}
impl<T> ReadWrite for T where T: Read + Write {}

#[cfg(test)]
mod tests {
    use super::{new_request, Request, RequestCreationError};
    use crate::{HTTPVersion, Header, Method};
    use std::io::{self, Cursor, Read};

    /// The body `new_request` gives a request with these headers, on a connection that sent
    /// `sent` after them (`None`: the request was refused).
    fn body_read(method: Method, headers: &[&str], sent: &[u8]) -> Option<Vec<u8>> {
        let headers = headers
            .iter()
            .map(|h| h.parse::<Header>().unwrap_or_else(|()| panic!("not a header: {}", h)))
            .collect();
        let mut request = new_request(
            false,
            method,
            "/".to_string(),
            HTTPVersion(1, 1),
            headers,
            None,
            Cursor::new(sent.to_vec()),
            std::io::sink(),
            None,
        )
        .ok()?;
        let mut body = Vec::new();
        request.as_reader().read_to_end(&mut body).ok()?;
        Some(body)
    }

    #[test]
    fn only_a_bodiless_get_that_asks_for_an_upgrade_has_the_whole_connection() {
        let sent = b"helloPOST /hidden HTTP/1.1\r\n\r\n";
        for connection in ["Connection: Upgrade", "Connection: x-no-upgrade-please"] {
            let headers = [connection, "Upgrade: websocket", "Content-Length: 5"];
            let body = body_read(Method::Post, &headers, sent);
            assert_eq!(body.as_deref(), Some(&b"hello"[..]), "{connection}");
        }
        let chunked = ["Connection: upgrade", "Upgrade: x", "Transfer-Encoding: chunked"];
        let body = body_read(Method::Post, &chunked, b"5\r\nhello\r\n0\r\n\r\nGET /x");
        assert_eq!(body.as_deref(), Some(&b"hello"[..]));
        let without_upgrade = body_read(Method::Post, &["Connection: upgrade"], sent);
        assert_eq!(without_upgrade.as_deref(), Some(&b""[..]));
        let asked = ["Connection: keep-alive, Upgrade", "Upgrade: websocket"];
        assert_eq!(body_read(Method::Get, &asked, sent).as_deref(), Some(&sent[..]));
        let not_a_token = ["Connection: x-upgrade", "Upgrade: websocket"];
        assert_eq!(body_read(Method::Get, &not_a_token, sent).as_deref(), Some(&b""[..]));
    }

    /// Patched: what a request whose inline body reads from `body` (10 bytes declared) fails with.
    fn inline_body_error(body: impl Read + Send + 'static) -> Option<(u16, &'static str)> {
        let headers = vec![
            "Host: x".parse::<Header>().unwrap(),
            "Content-Length: 10".parse::<Header>().unwrap(),
        ];
        let method = Method::Post;
        let path = "/".to_string();
        let version = HTTPVersion(1, 1);
        match new_request(false, method, path, version, headers, None, body, io::sink(), None) {
            Err(RequestCreationError::BadBody(status, why)) => Some((status, why)),
            _ => None,
        }
    }

    /// A reader that yields a few bytes, then times out.
    struct Stalls(bool);

    impl Read for Stalls {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if std::mem::replace(&mut self.0, true) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            buf[..3].copy_from_slice(b"abc");
            Ok(3)
        }
    }

    #[test]
    fn an_inline_body_that_ends_early_or_stalls_is_answered() {
        let cut = inline_body_error(Cursor::new(b"abc".to_vec()));
        assert_eq!(cut.map(|(status, _)| status), Some(400));
        assert!(cut.is_some_and(|(_, why)| why.contains("ended before its Content-Length")));
        let stalled = inline_body_error(Stalls(false));
        assert_eq!(stalled.map(|(status, _)| status), Some(408));
        assert!(inline_body_error(Cursor::new(b"0123456789".to_vec())).is_none());
    }

    #[test]
    fn every_expect_is_read_and_an_http_1_0_ones_is_ignored() {
        let request = |version: HTTPVersion, expects: &[&str]| {
            let mut headers = vec!["Content-Length: 10".parse::<Header>().unwrap()];
            headers.extend(expects.iter().map(|e| e.parse::<Header>().unwrap()));
            new_request(
                false,
                Method::Post,
                "/".to_string(),
                version,
                headers,
                None,
                Cursor::new(b"0123456789".to_vec()),
                io::sink(),
                None,
            )
        };
        let continued = ["Expect: 100-continue"];
        let eleven = request(HTTPVersion(1, 1), &continued).map(|r| r.must_send_continue);
        assert!(matches!(eleven, Ok(true)));
        let ten = request(HTTPVersion(1, 0), &continued).map(|r| r.must_send_continue);
        assert!(matches!(ten, Ok(false)));
        let second = request(HTTPVersion(1, 1), &["Expect: 100-continue", "Expect: x"]);
        assert!(matches!(second, Err(RequestCreationError::ExpectationFailed)));
    }

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}
