//! Keeping a worker's own job id out of answers to submit keys (admin and read keys see it):
//! sandrun has no authentication, so its job id is a key to the job's files on the worker. It
//! may appear in `remote_job_id`, in the worker's raw status answer, in error messages (a
//! worker's file-system error names the job directory) and in a job's logs; every occurrence
//! in a JSON answer and in a followed job's text stream is replaced. Streamed file bytes
//! (output files) and text pages are passed through unchanged.

use crate::http::replies::Reply;
use crate::http::stored_view::stored_view;
use crate::state::context::Context;

/// What replaces a hidden worker job id.
pub const HIDDEN: &str = "hidden";

/// `reply` with every occurrence of `remote` in its JSON replaced by [`HIDDEN`].
pub fn hide_remote_id(reply: Reply, remote: &str) -> Reply {
    if remote.is_empty() {
        return reply;
    }
    match reply {
        Reply::Json(status, value) => Reply::JsonBytes(
            status,
            hide_in(serde_json::to_vec(&value).unwrap_or_default(), remote),
        ),
        Reply::JsonBytes(status, bytes) => Reply::JsonBytes(status, hide_in(bytes, remote)),
        Reply::WithHeaders(headers, inner) => {
            Reply::WithHeaders(headers, Box::new(hide_remote_id(*inner, remote)))
        }
        other @ (Reply::Stream { .. }
        | Reply::Wait(_)
        | Reply::Handoff(_)
        | Reply::Empty(_)
        | Reply::Text { .. }) => other,
    }
}

/// The worker's own id of job `id`, from the table or, for a settled job, the job store.
pub fn remote_id_of(ctx: &Context, id: &str) -> Option<String> {
    let live = ctx.lock().jobs.get(id).map(|job| job.remote_job_id.clone());
    match live {
        Some(remote) => remote,
        None => stored_view(ctx, id).ok().flatten()?.remote_job_id.clone(),
    }
}

/// Hides job `id`'s worker job id from the pieces of text a submit key's follower receives; the
/// id is looked up until the job has one (a queued job gets it when a worker accepts it).
pub struct TextHider {
    ctx: std::sync::Arc<Context>,
    id: String,
    remote: Option<String>,
}

impl TextHider {
    /// A hider for job `id`.
    pub fn new(ctx: std::sync::Arc<Context>, id: &str) -> Self {
        TextHider {
            ctx,
            id: id.to_string(),
            remote: None,
        }
    }

    /// `text` with the worker's job id replaced by [`HIDDEN`].
    pub fn hide<'a>(&mut self, text: &'a str) -> std::borrow::Cow<'a, str> {
        hide_in_text(text, self.remote())
    }

    /// The worker's job id it hides, once the job has one.
    pub fn remote(&mut self) -> Option<&str> {
        if self.remote.is_none() {
            self.remote = remote_id_of(&self.ctx, &self.id);
        }
        self.remote.as_deref()
    }
}

/// Where to cut `text`, which more text follows, so that each piece hidden on its own
/// ([`hide_in_text`]) reads as the whole text hidden at once: the last character boundary at or
/// before `limit` that leaves the last `remote.len() - 1` bytes (they may begin an occurrence of
/// `remote`) and lies inside no occurrence (one across it moves the cut to its start).
pub fn piece_end(text: &str, limit: usize, remote: Option<&str>) -> usize {
    let remote = remote.filter(|r| !r.is_empty());
    let keep = remote.map_or(0, |r| r.len() - 1);
    let mut cut = limit.min(text.len().saturating_sub(keep));
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let across = remote.and_then(|r| {
        text.match_indices(r)
            .map(|(at, _)| (at, at + r.len()))
            .find(|&(_, end)| end > cut)
    });
    match across {
        Some((at, _)) if at < cut => at,
        _ => cut,
    }
}

/// `text` with the worker's job id `remote` (when there is one) replaced by [`HIDDEN`].
pub fn hide_in_text<'a>(text: &'a str, remote: Option<&str>) -> std::borrow::Cow<'a, str> {
    match remote {
        Some(remote) if !remote.is_empty() && text.contains(remote) => {
            std::borrow::Cow::Owned(text.replace(remote, HIDDEN))
        }
        _ => std::borrow::Cow::Borrowed(text),
    }
}

/// Replaces `remote`, as JSON escapes it inside a string, in serialized JSON.
fn hide_in(bytes: Vec<u8>, remote: &str) -> Vec<u8> {
    let quoted = serde_json::to_string(remote).unwrap_or_default();
    let escaped = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default();
    match String::from_utf8(bytes) {
        Ok(text) if !escaped.is_empty() && text.contains(escaped) => {
            text.replace(escaped, HIDDEN).into_bytes()
        }
        Ok(text) => text.into_bytes(),
        Err(e) => e.into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(reply: Reply) -> String {
        match reply {
            Reply::JsonBytes(_, bytes) => String::from_utf8(bytes).expect("utf-8"),
            _ => panic!("expected JSON bytes"),
        }
    }

    #[test]
    fn text_hidden_piece_by_piece_reads_as_hidden_whole() {
        let remote = "job_12_34";
        let text = format!("{remote}é{remote}{remote}x job_12 ✓ {remote}");
        for limit in 0..text.len() + 3 {
            let mut rest = text.as_str();
            let mut hidden = String::new();
            while !rest.is_empty() {
                let cut = piece_end(rest, limit.max(1), Some(remote));
                let cut = if cut == 0 { rest.len() } else { cut };
                hidden.push_str(&hide_in_text(&rest[..cut], Some(remote)));
                rest = &rest[cut..];
            }
            assert_eq!(
                hidden,
                hide_in_text(&text, Some(remote)),
                "pieces of {limit}"
            );
        }
        assert_eq!(piece_end("aé", 2, None), 1, "on a character boundary");
        assert_eq!(piece_end("abc", 5, None), 3);
    }

    #[test]
    fn every_occurrence_is_hidden_also_inside_text_and_escaped() {
        let reply = Reply::Json(
            200,
            json!({"remote_job_id": "job_1_2", "worker_status": {"job_id": "job_1_2"},
                   "stdout": "cwd /tmp/sandrun_jobs/job_1_2/x"}),
        );
        let text = body(hide_remote_id(reply, "job_1_2"));
        assert!(!text.contains("job_1_2"), "{text}");
        assert_eq!(text.matches(HIDDEN).count(), 3, "{text}");
        let odd = "job\"1\n";
        let reply = Reply::Json(500, json!({"error": format!("no such dir {odd}")}));
        let text = body(hide_remote_id(reply, odd));
        let back: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back["error"], "no such dir hidden");
    }
}
