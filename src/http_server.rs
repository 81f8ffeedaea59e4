//! The HTTP front: a fixed pool of handler threads sharing one tiny_http server. A panic in a
//! handler is caught and answered 500; the thread goes on serving.

use crate::api;
use crate::context::Context;
use serde_json::Value;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use tiny_http::{Header, Request, Response, Server, StatusCode};

/// What a handler answers.
pub enum Reply {
    /// A JSON body.
    Json(u16, Value),
    /// A streamed body (a file from the spool or a worker).
    Stream {
        /// HTTP status.
        status: u16,
        /// Its content type.
        content_type: String,
        /// Length when known (sent as Content-Length).
        length: Option<usize>,
        /// The bytes.
        body: Box<dyn Read + Send>,
    },
}

/// Builds a JSON error reply `{"error": message}`.
pub fn error_reply(status: u16, message: impl Into<String>) -> Reply {
    Reply::Json(status, serde_json::json!({ "error": message.into() }))
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn send(request: Request, reply: Reply) {
    let result = match reply {
        Reply::Json(status, body) => {
            let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
            bytes.push(b'\n');
            let mut response = Response::from_data(bytes).with_status_code(status);
            if let Some(h) = header("Content-Type", "application/json") {
                response.add_header(h);
            }
            request.respond(response)
        }
        Reply::Stream {
            status,
            content_type,
            length,
            body,
        } => {
            let headers = header("Content-Type", &content_type)
                .or_else(|| header("Content-Type", "application/octet-stream"))
                .into_iter()
                .collect();
            request.respond(Response::new(
                StatusCode(status),
                headers,
                body,
                length,
                None,
            ))
        }
    };
    if let Err(e) = result {
        log::debug!("Could not send a response: {e}");
    }
}

fn serve_one(ctx: &Context, mut request: Request) {
    let reply = catch_unwind(AssertUnwindSafe(|| api::route(ctx, &mut request)));
    let reply = reply.unwrap_or_else(|_| {
        log::error!(
            "The handler of {} {} panicked; answered 500",
            request.method(),
            request.url()
        );
        error_reply(
            500,
            "internal error while handling the request; see the coordinator log",
        )
    });
    send(request, reply);
}

/// Serves requests on `threads` handler threads until the server fails; blocks.
pub fn run(ctx: Arc<Context>, server: Arc<Server>, threads: usize) {
    let handlers: Vec<_> = (0..threads)
        .filter_map(|i| {
            let ctx = Arc::clone(&ctx);
            let server = Arc::clone(&server);
            thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || loop {
                    match server.recv() {
                        Ok(request) => serve_one(&ctx, request),
                        Err(e) => {
                            log::error!("The HTTP server stopped accepting: {e}");
                            return;
                        }
                    }
                })
                .map_err(|e| log::error!("Could not start HTTP handler thread {i}: {e}"))
                .ok()
        })
        .collect();
    for handler in handlers {
        let _ = handler.join();
    }
}
