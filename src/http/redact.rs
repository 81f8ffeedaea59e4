//! Keeping a worker's own job id out of answers to submit keys (admin and read keys see it):
//! sandrun has no authentication, so its job id is a key to the job's files on the worker. It
//! may appear in `remote_job_id`, in the worker's raw status answer, in error messages (a
//! worker's file-system error names the job directory) and in a job's logs; every occurrence
//! in a JSON answer and in a followed job's text stream is replaced. Streamed file bytes
//! (output files) and text pages are passed through unchanged.

use std::io::{self, Read};

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
        Reply::JsonStream { status, body, .. } => Reply::JsonStream {
            status,
            // Hiding changes the length: the answer goes out chunked.
            length: None,
            body: Box::new(HidingReader::new(body, escaped(remote).into_bytes())),
        },
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

/// `remote` as JSON escapes it inside a string.
fn escaped(remote: &str) -> String {
    let quoted = serde_json::to_string(remote).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string()
}

/// Replaces `remote`, as JSON escapes it inside a string, in serialized JSON.
fn hide_in(bytes: Vec<u8>, remote: &str) -> Vec<u8> {
    let escaped = escaped(remote);
    match String::from_utf8(bytes) {
        Ok(text) if !escaped.is_empty() && text.contains(&escaped) => {
            text.replace(&escaped, HIDDEN).into_bytes()
        }
        Ok(text) => text.into_bytes(),
        Err(e) => e.into_bytes(),
    }
}

/// How much a [`HidingReader`] reads from its source at a time.
const HIDING_PIECE: usize = 32 * 1024;

/// A reader of serialized JSON with every occurrence of a pattern (the worker's job id as JSON
/// escapes it) replaced by [`HIDDEN`], in fixed memory: what it passes on ends short of the
/// pattern's length less one byte before what it read, where an occurrence may begin.
struct HidingReader<R> {
    source: R,
    pattern: Vec<u8>,
    /// What one read from the source takes.
    piece: Vec<u8>,
    /// Bytes read and not yet passed on.
    pending: Vec<u8>,
    /// Hidden bytes to pass on, from `ready_at`.
    ready: Vec<u8>,
    ready_at: usize,
    ended: bool,
}

impl<R: Read> HidingReader<R> {
    fn new(source: R, pattern: Vec<u8>) -> Self {
        HidingReader {
            source,
            pattern,
            piece: vec![0; HIDING_PIECE],
            pending: Vec::new(),
            ready: Vec::new(),
            ready_at: 0,
            ended: false,
        }
    }

    /// Reads a piece more and hides in what no later byte can change.
    fn fill(&mut self) -> io::Result<()> {
        if !self.ended {
            let read = loop {
                match self.source.read(&mut self.piece) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            self.pending.extend_from_slice(&self.piece[..read]);
            self.ended = read == 0;
        }
        // An occurrence that begins before `settled` ends inside what was read.
        let settled = if self.ended || self.pattern.is_empty() {
            self.pending.len()
        } else {
            self.pending.len().saturating_sub(self.pattern.len() - 1)
        };
        self.ready.clear();
        self.ready_at = 0;
        let mut at = 0;
        while at < settled {
            let found = find(&self.pending[at..], &self.pattern).filter(|&f| at + f < settled);
            match found {
                Some(found) => {
                    self.ready.extend_from_slice(&self.pending[at..at + found]);
                    self.ready.extend_from_slice(HIDDEN.as_bytes());
                    at += found + self.pattern.len();
                }
                None => {
                    self.ready.extend_from_slice(&self.pending[at..settled]);
                    at = settled;
                }
            }
        }
        self.pending.drain(..at);
        Ok(())
    }
}

impl<R: Read> Read for HidingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.ready_at == self.ready.len() {
            if self.ended && self.pending.is_empty() {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = (self.ready.len() - self.ready_at).min(buf.len());
        buf[..n].copy_from_slice(&self.ready[self.ready_at..self.ready_at + n]);
        self.ready_at += n;
        Ok(n)
    }
}

/// Where `pattern` (not empty) first occurs in `bytes`.
fn find(bytes: &[u8], pattern: &[u8]) -> Option<usize> {
    if pattern.is_empty() {
        return None;
    }
    bytes.windows(pattern.len()).position(|w| w == pattern)
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
    fn a_hidden_stream_reads_as_the_whole_hidden_at_once_whatever_its_reads() {
        let remote = "job_12_34";
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(if i % 7 == 0 { remote } else { "job_12_3" });
            text.push_str(&"é".repeat(i % 5));
        }
        let wanted = text.replace(remote, HIDDEN);
        for source_read in [1, 2, 8, 9, 10, 4096, 1 << 20] {
            let source = Trickle(io::Cursor::new(text.clone().into_bytes()), source_read);
            let mut hiding = HidingReader::new(source, remote.as_bytes().to_vec());
            let mut got = Vec::new();
            let mut buf = [0u8; 777];
            loop {
                let n = hiding.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == wanted.as_bytes(), "reads of {source_read} bytes");
        }
    }

    /// A reader that gives at most this many bytes per read.
    struct Trickle(io::Cursor<Vec<u8>>, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1);
            self.0.read(&mut buf[..n])
        }
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
