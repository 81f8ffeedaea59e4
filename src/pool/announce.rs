//! What followers of a job hear from the coordinator itself: the dispatch line, and the last
//! lines when the job is over for them (finished and collected, or failed, or lost). Each is a
//! marker [`Piece`]: on the text stream it starts a line, also after output that did not end one.

use crate::base::job::{Job, PoolStatus, SignatureVerdict};
use crate::state::context::Context;
use crate::state::events::{Piece, STDERR_MARKER};
use crate::state::pool_state::PoolState;
use crate::worker::identity::short_id;
use serde_json::Value;

/// Opens the job's feed: it was accepted by a worker.
pub fn dispatched(ctx: &Context, id: &str, worker_id: &str) {
    ctx.events.open(
        id,
        format!(
            "[STATUS] Job dispatched to worker {}...\n",
            short_id(worker_id)
        ),
    );
}

/// The output pieces of a `/logs` answer, as sandrun's stream sends them: the stdout, then
/// [`STDERR_MARKER`] and the stderr (each when not empty).
pub fn output_lines(logs: &Value) -> Vec<Piece> {
    let mut lines = Vec::new();
    if let Some(out) = logs.get("stdout").and_then(Value::as_str) {
        if !out.is_empty() {
            lines.push(Piece::output(out));
        }
    }
    if let Some(err) = logs.get("stderr").and_then(Value::as_str) {
        if !err.is_empty() {
            lines.push(Piece::marker(format!("{STDERR_MARKER}{err}")));
        }
    }
    lines
}

/// The last lines of a job that is over: its verification, then `[DONE]` as sandrun words it
/// (with the figures when the worker's stream gave them), with the error when there is one.
pub fn final_lines(job: &Job) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(v) = &job.verification {
        let signature = match v.signature {
            SignatureVerdict::Verified => "verified",
            SignatureVerdict::Failed => "failed",
            SignatureVerdict::Unverifiable => "unverifiable",
        };
        let outputs = match v.outputs {
            Some(o) => serde_json::to_value(o)
                .ok()
                .and_then(|o| o.as_str().map(str::to_string))
                .unwrap_or_default(),
            None => "not checked".to_string(),
        };
        let why = v
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        lines.push(format!(
            "[VERIFY] signature {signature}, outputs {outputs}{why}\n"
        ));
    }
    let status = job.status.as_str();
    let done = match (&job.done_figures, &job.error) {
        (_, Some(error)) if job.status != PoolStatus::Completed => {
            format!("[DONE] Job {status}: {error}\n")
        }
        (Some(f), _) => format!(
            "[DONE] Job {status} (exit={}, CPU={}s, Mem={}MB)\n",
            f.exit_code, f.cpu_seconds, f.memory_mb
        ),
        (None, _) => format!("[DONE] Job {status}\n"),
    };
    lines.push(done);
    lines
}

/// The last lines of job `id` as the table holds it now (none when it is not there). Take them
/// under the same lock as the job's final record: once that record commits, a settled job
/// leaves the table, possibly before [`ended`] runs.
pub fn last_lines(st: &PoolState, id: &str) -> Vec<String> {
    st.jobs
        .get(id)
        .map(|job| final_lines(job))
        .unwrap_or_default()
}

/// The job is over for its followers: ends its feed with the output (when none came through the
/// stream, from `logs`) and `last` (its [`last_lines`]).
pub fn ended(ctx: &Context, id: &str, last: Vec<String>, logs: Option<&Value>) {
    let mut pieces = Vec::new();
    if let Some(logs) = logs.filter(|_| !ctx.events.output_seen(id)) {
        pieces.extend(output_lines(logs));
    }
    pieces.extend(last.into_iter().map(Piece::marker));
    ctx.events.end(id, pieces);
}
