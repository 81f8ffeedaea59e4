//! Replaying a job that is over to one follower: its status line, its collected logs as
//! sandrun's stream sends them (the stdout, then `[STDERR]` and the stderr, each a WebSocket
//! message of its own), then its last lines. The logs are read from the job's row or results
//! segment a piece at a time ([`crate::base::json_stream`]), never whole: a replay holds a read
//! buffer and a piece or two of at most [`PIECE`] bytes, whatever the logs' size and however
//! slowly its client reads.

use crate::base::job::{Span, StoredResults};
use crate::base::json_stream::{string_members, take_text, JsonStreamError, StringReader};
use crate::http::follow_wire::{Ending, Out, Part};
use crate::http::redact::piece_end;
use crate::state::context::Context;
use crate::state::events::STDERR_MARKER;
use crate::store::spool::ResultsSource;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};

/// The last line of a replay cut short because the coordinator stops.
pub const SHUTDOWN_LINE: &str =
    "[STATUS] The coordinator is shutting down; follow the job again once it is back\n";

/// Most bytes of a job's output sent at once: a chunk of the text stream, a fragment of a
/// WebSocket message.
pub const PIECE: usize = 32 * 1024;

/// Sends job `id`'s `first` line, its collected logs (when `logs` says where they lie) and its
/// `last` lines. Logs that cannot be read are left out (and logged); logs that cannot be read
/// past a point cut the stream there, an error as a failed write is.
pub fn send(
    ctx: &Context,
    id: &str,
    out: &mut Out,
    first: &str,
    logs: Option<StoredResults>,
    last: &[String],
) -> io::Result<Ending> {
    out.marker(first)?;
    if let Some(stored) = logs {
        match Logs::open(ctx, id, stored) {
            Ok(logs) => match logs.send(out, &ctx.stopping) {
                Ok(()) => {}
                Err(Broke::Write(e)) => return Err(e),
                Err(Broke::Read(e)) => {
                    log::warn!("The replay of the collected logs of job {id} broke off: {e}");
                    return Err(io::Error::other(e.to_string()));
                }
                // Ended as a live stream is when the coordinator stops.
                Err(Broke::Stopping) => {
                    out.marker(SHUTDOWN_LINE)?;
                    return Ok(Ending::GoingAway);
                }
            },
            Err(e) => log::warn!(
                "A follower of job {id} gets none of its collected logs: they cannot be read ({e})"
            ),
        }
    }
    for line in last {
        out.marker(line)?;
    }
    Ok(Ending::Over)
}

/// Why sending the logs stopped.
enum Broke {
    /// A write to the follower's client failed.
    Write(io::Error),
    /// The logs could not be read on.
    Read(JsonStreamError),
    /// The coordinator stops: the replay ends where it is.
    Stopping,
}

/// A job's collected logs, open, and where their strings begin in them.
struct Logs {
    source: ResultsSource,
    span: Span,
    stdout: Option<u64>,
    stderr: Option<u64>,
}

impl Logs {
    /// Opens job `id`'s logs and reads them through once, to find their strings.
    fn open(ctx: &Context, id: &str, mut stored: StoredResults) -> Result<Self, JsonStreamError> {
        ctx.load_row_results(id, &mut stored)?;
        let source = ctx.results_source(id, &stored)?;
        let found = string_members(source.open(stored.logs)?, &["stdout", "stderr"])?;
        Ok(Logs {
            source,
            span: stored.logs,
            stdout: found[0],
            stderr: found[1],
        })
    }

    /// Sends the stdout, then the stderr after [`STDERR_MARKER`], each when not empty.
    fn send(&self, out: &mut Out, stopping: &AtomicBool) -> Result<(), Broke> {
        for (at, marker) in [(self.stdout, None), (self.stderr, Some(STDERR_MARKER))] {
            let Some(at) = at else {
                continue;
            };
            let span = Span {
                offset: self.span.offset + at,
                size: self.span.size.saturating_sub(at),
            };
            let reader = self
                .source
                .open(span)
                .map_err(|e| Broke::Read(e.into()))
                .and_then(|bytes| StringReader::new(bytes).map_err(Broke::Read))?;
            send_string(out, reader, marker, stopping)?;
        }
        Ok(())
    }
}

/// Sends one string of the logs as one piece (`marker` first, when given), a part of at most
/// about [`PIECE`] bytes at a time: each part ends on a character boundary and holds every
/// hidden worker job id whole. The last character read is held back until the next part comes,
/// so that the last part sent is known to be the last. An empty string sends nothing. Once
/// `stopping` is set, the piece is ended (a WebSocket message must be whole before another) and
/// the send stops.
fn send_string<R: Read>(
    out: &mut Out,
    mut reader: StringReader<R>,
    marker: Option<&str>,
    stopping: &AtomicBool,
) -> Result<(), Broke> {
    let hidden = out.hidden_id();
    let mut raw = Vec::with_capacity(PIECE + 8);
    let mut text = String::with_capacity(PIECE + 8);
    let mut opened = false;
    loop {
        if stopping.load(Ordering::SeqCst) {
            if opened {
                let last = Part {
                    opens: false,
                    ends: true,
                };
                out.part("", false, last).map_err(Broke::Write)?;
            }
            return Err(Broke::Stopping);
        }
        let more = reader.read_into(&mut raw, PIECE).map_err(Broke::Read)?;
        take_text(&mut raw, !more, &mut text);
        let cut = if more {
            piece_end(&text, text.len().saturating_sub(1), hidden.as_deref())
        } else {
            text.len()
        };
        if cut > 0 || (opened && !more) {
            if let Some(marker) = marker.filter(|_| !opened) {
                let first = Part {
                    opens: true,
                    ends: false,
                };
                out.part(marker, true, first).map_err(Broke::Write)?;
            }
            let at = Part {
                opens: !opened && marker.is_none(),
                ends: !more,
            };
            out.part(&text[..cut], false, at).map_err(Broke::Write)?;
            opened = true;
            text.drain(..cut);
        }
        if !more {
            return Ok(());
        }
    }
}
