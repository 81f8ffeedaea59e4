//! Routing of the client API: which handler answers which method and path.

use crate::http::replies::{error_reply, unknown_job, Reply};
use crate::http::views::{pool_view, spool_view, status_json};
use crate::http::{outputs, upload};
use crate::state::context::Context;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tiny_http::{Method, Request};

/// The routes the coordinator serves.
enum Route<'a> {
    Health,
    Pool,
    Submit,
    Status(&'a str),
    Logs(&'a str),
    OutputList(&'a str),
    OutputFile(&'a str, &'a str),
}

impl Route<'_> {
    fn method(&self) -> Method {
        match self {
            Route::Submit => Method::Post,
            _ => Method::Get,
        }
    }
}

fn match_route(path: &str) -> Option<Route<'_>> {
    let path = path.strip_prefix('/')?;
    let (head, rest) = path.split_once('/').unwrap_or((path, ""));
    match (head, rest) {
        ("health", "") => Some(Route::Health),
        ("pool", "") => Some(Route::Pool),
        ("submit", "") => Some(Route::Submit),
        ("status", id) if !id.is_empty() && !id.contains('/') => Some(Route::Status(id)),
        ("logs", id) if !id.is_empty() && !id.contains('/') => Some(Route::Logs(id)),
        ("outputs", rest) if !rest.is_empty() => match rest.split_once('/') {
            None => Some(Route::OutputList(rest)),
            Some((id, "")) => Some(Route::OutputList(id)),
            Some((id, file)) => Some(Route::OutputFile(id, file)),
        },
        _ => None,
    }
}

/// Answers one request.
pub fn route(ctx: &Arc<Context>, request: &mut Request) -> Reply {
    let url = request.url().to_string();
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let Some(route) = match_route(path) else {
        return error_reply(
            404,
            format!("no such endpoint: {path} (try /submit, /status/ID, /outputs/ID, /logs/ID, /pool, /health)"),
        );
    };
    if *request.method() != route.method() {
        return error_reply(
            405,
            format!(
                "{} is not allowed on {path}; use {}",
                request.method(),
                route.method()
            ),
        );
    }
    match route {
        Route::Health => Reply::Json(
            200,
            json!({"status": "healthy", "service": "trusted-pool", "version": env!("CARGO_PKG_VERSION")}),
        ),
        Route::Pool => {
            let mut view = pool_view(&ctx.lock(), Instant::now());
            view["spool"] = spool_view(&ctx.spool);
            Reply::Json(200, view)
        }
        Route::Submit => submit(ctx, request),
        Route::Status(id) => match status_json(&ctx.lock(), id) {
            Some(bytes) => Reply::JsonBytes(200, bytes),
            None => unknown_job(id),
        },
        Route::Logs(id) => outputs::logs(ctx, id),
        Route::OutputList(id) => outputs::listing(ctx, id),
        Route::OutputFile(id, file) => outputs::file(ctx, id, file),
    }
}

fn submit(ctx: &Arc<Context>, request: &mut Request) -> Reply {
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_string());
    let boundary = match upload::check_headers(ctx, content_type.as_deref(), request.body_length())
    {
        Ok(b) => b,
        Err(e) => return error_reply(e.status(), e.to_string()),
    };
    match upload::accept(ctx, boundary, request.as_reader()) {
        Ok(id) => Reply::Json(200, json!({"job_id": id, "status": "queued"})),
        Err(e) => {
            if e.status() >= 500 {
                log::error!("Submit failed: {e}");
            }
            error_reply(e.status(), e.to_string())
        }
    }
}
