//! The results segments of earlier runs, scrubbed once the job store is known sound: every
//! byte of them that no job in the store refers to has its blocks punched out: the bytes of a
//! deleted or forgotten job whose wipe a `kill -9` cut short, and a collection cut short. Segments this run writes are
//! never touched (a collection may be appending to them): the scrub takes only the segments
//! listed before the coordinator starts following jobs. No job of an earlier run's segment can
//! come to refer to more of it, so a gap found stays a gap; the holes are punched as wipes are
//! made, once no download reads the file and no snapshot is under way.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use crate::base::job::Span;
use crate::store::jobs_db::JobStore;
use crate::store::removals::{Removals, WipeOf};
use crate::store::segment_names;

/// What a scrub found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scrubbed {
    /// Segments read.
    pub segments: usize,
    /// Segments left alone: a job referring to them could not be read.
    pub skipped: usize,
    /// Bytes no job refers to, handed over to be punched out.
    pub bytes: u64,
}

/// The segment files in `dir` now (call it before any is written in this run, once: what else
/// the folder holds is named in a warning and left alone).
pub fn earlier_segments(dir: &Path) -> Vec<String> {
    let listing = segment_names::list(dir);
    segment_names::warn_of_others(dir, &listing.others);
    listing.segments
}

/// Hands every stretch of data in `names` (segments of `dir`) that no job in `store` refers to
/// over to `removals` to be punched out. A segment that a job whose record cannot be read
/// refers to is left whole.
pub fn scrub(store: &JobStore, dir: &Path, names: &[String], removals: &Arc<Removals>) -> Scrubbed {
    let mut scrubbed = Scrubbed::default();
    for name in names {
        let extents = match store.results_extents(name) {
            Ok(Some(extents)) => extents,
            Ok(None) => {
                scrubbed.skipped += 1;
                continue;
            }
            Err(e) => {
                log::warn!("Results segment {name} is not scrubbed: {e}");
                scrubbed.skipped += 1;
                continue;
            }
        };
        let path = dir.join(name);
        let unreferenced = match File::open(&path).and_then(|file| data_outside(&file, extents)) {
            Ok(spans) => spans,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                log::warn!("Results segment {} is not scrubbed: {e}", path.display());
                scrubbed.skipped += 1;
                continue;
            }
        };
        scrubbed.segments += 1;
        for span in unreferenced {
            scrubbed.bytes += span.size;
            removals.wipe(&path, span, WipeOf::Unreferenced);
        }
    }
    scrubbed
}

/// The stretches of `file` that hold data (not holes) outside every one of `extents`.
fn data_outside(file: &File, mut extents: Vec<Span>) -> io::Result<Vec<Span>> {
    let len = file.metadata()?.len();
    extents.sort_by_key(|s| s.offset);
    let mut gaps = Vec::new();
    let mut at = 0u64;
    for extent in extents {
        if extent.offset > at {
            gaps.push((at, extent.offset.min(len)));
        }
        at = at.max(extent.offset.saturating_add(extent.size));
    }
    gaps.push((at, len));
    let mut data = Vec::new();
    for (start, end) in gaps {
        let mut from = start;
        while from < end {
            let Some(begins) = seek(file, from, libc::SEEK_DATA)? else {
                break;
            };
            if begins >= end {
                break;
            }
            let ends = seek(file, begins, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
            let span = Span {
                offset: begins,
                size: ends - begins,
            };
            if !(span.size <= SMALL && all_zeros(file, span)?) {
                data.push(span);
            }
            from = ends;
        }
    }
    Ok(data)
}

/// A stretch of data at most this long is read to see whether it is zeros already: the edges
/// of a hole punched earlier (a hole takes whole blocks; the bytes around it were zeroed).
const SMALL: u64 = 16 * 1024;

fn all_zeros(file: &File, span: Span) -> io::Result<bool> {
    let mut bytes = vec![0u8; usize::try_from(span.size).unwrap_or(0)];
    file.read_exact_at(&mut bytes, span.offset)?;
    Ok(bytes.iter().all(|&b| b == 0))
}

/// `lseek(fd, offset, whence)` for `SEEK_DATA`/`SEEK_HOLE`: `None` past the last data.
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: lseek reads no memory of ours; the descriptor is open.
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if found < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(u64::try_from(found).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::removals::punch_hole;
    use std::fs;

    #[test]
    fn finds_the_data_outside_the_extents_and_skips_holes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("1-000001");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("segment");
        file.write_all_at(&[7u8; 300_000], 0).expect("write");
        let kept = |offset, size| Span { offset, size };
        let spans = data_outside(&file, vec![kept(100_000, 50_000), kept(0, 10)]).expect("scan");
        assert_eq!(spans, vec![kept(10, 99_990), kept(150_000, 150_000)]);
        assert_eq!(
            data_outside(&file, vec![kept(0, 300_000)]).expect("scan"),
            vec![]
        );
        // Punched out: gone from the next scan, the zeroed edge of the hole too. The first
        // block still holds 10 bytes of data, so it stays (data comes in whole blocks).
        if punch_hole(&file, 10, 99_990) {
            let spans = data_outside(&file, vec![kept(100_000, 50_000)]).expect("scan");
            assert_eq!(spans.len(), 2, "{spans:?}");
            assert!(spans[0].offset == 0 && spans[0].size < SMALL, "{spans:?}");
            assert_eq!(spans[1], kept(150_000, 150_000));
        }
    }
}
