//! `GET /snapshot` (admin): the state directory as a `.tar.gz` taken while the coordinator
//! runs, to be unpacked into an empty `--state-dir` and started there (see `store/snapshot.rs`).

use std::io::{self, Read};
use std::sync::Arc;

use crate::base::clock::unix_now;
use crate::base::targz::{Entry, TarGz};
use crate::http::replies::{error_reply, retry_after, Reply};
use crate::state::context::Context;
use crate::store::removals::SnapshotSlot;
use crate::store::snapshot;

/// Seconds a client refused for now (another snapshot under way, a locked store, no descriptor
/// left) is asked to wait.
const BUSY_RETRY_AFTER: u32 = 10;

/// The archive being sent, with the snapshot slot it holds until it is dropped.
struct SnapshotBody {
    archive: TarGz,
    _slot: SnapshotSlot,
}

impl Read for SnapshotBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.archive.read(buf)
    }
}

/// `GET /snapshot`: the job store as of its last commit and the segment files it points into;
/// `by` says who asked, for the log (` (key NAME)`, or empty).
pub fn snapshot(ctx: &Arc<Context>, by: &str) -> Reply {
    let started = std::time::Instant::now();
    // The copy of the job store (about the size of jobs.db and its WAL) must not use the room
    // kept for the results of accepted jobs.
    let figures = ctx.store.figures();
    let copy = figures.size_bytes;
    if let Some(room) = ctx.disk_reserve.shortfall(copy) {
        return error_reply(
            507,
            format!(
                "the state directory's disk has {} bytes free, and a copy of the job store \
                 ({copy} bytes) would cut into the {} bytes kept for the results of accepted \
                 jobs (--disk-reserve); free some space and try again",
                room.available, room.reserve
            ),
        );
    }
    let taken = snapshot::take(&ctx.config.state_dir, &ctx.store, ctx.spool.removals())
        .map_err(|e| e.naming_inodes(&ctx.disk_reserve));
    let snapshot = match taken {
        Ok(snapshot) => snapshot,
        // Another snapshot under way, a locked store, no descriptor left: later may do.
        Err(e) if e.http_status() == 503 => {
            return retry_after(
                BUSY_RETRY_AFTER,
                error_reply(e.http_status(), e.to_string()),
            )
        }
        Err(e) => {
            log::error!("Snapshot failed: {e}");
            return error_reply(e.http_status(), e.to_string());
        }
    };
    let count = snapshot.files.len();
    let entries: Vec<Entry> = snapshot
        .files
        .into_iter()
        .map(|f| {
            let (file, size) = (f.file, f.size);
            Entry {
                path: f.path,
                size,
                mtime: f.mtime,
                open: Box::new(move || Ok(Box::new(file.take(size)) as Box<dyn Read + Send>)),
            }
        })
        .collect();
    let archive = TarGz::new(entries);
    let Ok(length) = usize::try_from(archive.len()) else {
        return error_reply(500, "the snapshot is too large to serve on this platform");
    };
    log::info!(
        "Snapshot taken{by} in {:.2} s: the job store and {} segment files, {length} bytes to send",
        started.elapsed().as_secs_f64(),
        count - 1
    );
    Reply::Stream {
        status: 200,
        content_type: CONTENT_TYPE.to_string(),
        length: Some(length),
        attachment: Some(attachment_name()),
        body: Box::new(SnapshotBody {
            archive,
            _slot: snapshot.slot,
        }),
    }
}

/// The type of a snapshot's answer.
const CONTENT_TYPE: &str = "application/gzip";

/// The file name a snapshot taken now is offered under.
fn attachment_name() -> String {
    format!("trusted-pool-snapshot-{}.tar.gz", unix_now() as u64)
}

/// `HEAD /snapshot`: the headers of a snapshot's answer without taking one (its length is known
/// only once taken, and a `HEAD` answer may leave it out, RFC 9110 section 9.3.2). It took a
/// whole snapshot, the job store's copy included, to drop it.
pub fn head() -> Reply {
    Reply::Stream {
        status: 200,
        content_type: CONTENT_TYPE.to_string(),
        length: None,
        attachment: Some(attachment_name()),
        body: Box::new(io::empty()),
    }
}
