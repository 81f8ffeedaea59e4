//! The spool: uploads waiting for dispatch and collected results.
//!
//! An upload's parts are stored back to back (the job record says where each part lies). One of
//! at most [`HELD_UPLOAD_MAX`] bytes is stored in its job's row in the job store; the spool holds
//! a copy in memory while all held uploads stay within `--upload-memory-bytes`, else it is read
//! back from the row at dispatch, so memory stays bounded however many jobs wait. A larger upload
//! is appended to a segment file in `uploads/`; an upload segment's file is removed once no
//! waiting upload is in it.
//! Collected results (output files, then logs, back to back) are appended to segment files in
//! `results/`; the job record says which and where. No file is created or deleted per job: that
//! was most of the coordinator's CPU per job.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::base::hex::hex;
use crate::base::job::{Span, StoredResults, UploadAt};
use crate::base::sync::lock;
use crate::store::dir_access;
use crate::store::removals::{Removals, WipeOf};
use crate::store::segment_names;
use crate::store::segments::{copy_chunks, OpenSegment, SegmentFile, Segments};
use crate::store::stall_watch::StallWatch;

pub use crate::store::segments::CopyError;

/// Largest upload stored in its job's row (and held in memory within the limit); larger ones go
/// to an upload segment.
pub const HELD_UPLOAD_MAX: u64 = 64 * 1024;

/// Where a job's uploaded bytes are.
#[derive(Debug, Clone)]
pub enum UploadSource {
    /// Held in memory.
    Held(Arc<[u8]>),
    /// Only in the job's row in the job store (past `--upload-memory-bytes`): read the bytes
    /// from the row (`Context::upload_source`) before opening a span.
    InRow {
        /// The upload's size.
        size: u64,
    },
    /// In an upload segment, from `base` on.
    OnDisk {
        /// The segment.
        file: Arc<SegmentFile>,
        /// Where the upload starts in it.
        base: u64,
        /// The upload's size.
        size: u64,
    },
}

impl UploadSource {
    /// A reader of the bytes at `span` of the upload.
    pub fn open(&self, span: Span) -> io::Result<Box<dyn Read + Send>> {
        match self {
            Self::Held(bytes) => {
                let start = usize::try_from(span.offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(usize::try_from(span.size).unwrap_or(usize::MAX));
                let part = bytes
                    .get(start..end)
                    .ok_or_else(|| io::Error::other("a part lies outside its held upload"))?;
                Ok(Box::new(io::Cursor::new(part.to_vec())))
            }
            Self::InRow { .. } => Err(io::Error::other(
                "the upload waits in the job's store row and was not read from there",
            )),
            Self::OnDisk { file, base, size } => {
                let inside = span
                    .offset
                    .checked_add(span.size)
                    .is_some_and(|end| end <= *size);
                if !inside {
                    return Err(io::Error::other("a part lies outside its upload"));
                }
                Ok(Box::new(file.reader(Span {
                    offset: base + span.offset,
                    size: span.size,
                })))
            }
        }
    }
}

/// The waiting uploads and their totals.
#[derive(Default)]
struct Waiting {
    by_job: HashMap<String, UploadSource>,
    held_bytes: u64,
    held: usize,
    disk_bytes: u64,
    row_bytes: u64,
}

/// Waiting uploads as `/pool` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadCounts {
    /// Uploads held in memory.
    pub in_memory: usize,
    /// Their bytes.
    pub memory_bytes: u64,
    /// Uploads on disk: in upload segments, or only in their job's row.
    pub on_disk: usize,
    /// Their bytes.
    pub disk_bytes: u64,
}

/// The spool under `--state-dir`, with its in-memory part.
pub struct Spool {
    results: PathBuf,
    upload_segments: Segments,
    result_segments: Arc<Segments>,
    removals: Arc<Removals>,
    random: Mutex<BufReader<File>>,
    memory_limit: u64,
    waiting: Mutex<Waiting>,
}

enum Sink {
    Memory(Vec<u8>),
    Disk { segment: OpenSegment, base: u64 },
    Failed,
}

/// Receives one upload as it streams in: in memory until it outgrows [`HELD_UPLOAD_MAX`], then in
/// an upload segment.
pub struct UploadWriter<'a> {
    spool: &'a Spool,
    id: &'a str,
    sink: Sink,
    written: u64,
}

impl UploadWriter<'_> {
    /// Appends everything `data` yields; returns where it lies in the upload.
    pub fn append(&mut self, data: &mut dyn Read) -> Result<Span, CopyError> {
        let offset = self.written;
        copy_chunks(data, |chunk| self.write(chunk))?;
        Ok(Span {
            offset,
            size: self.written - offset,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Sink::Memory(buffer) = &mut self.sink {
            if self.written + bytes.len() as u64 <= HELD_UPLOAD_MAX {
                buffer.extend_from_slice(bytes);
                self.written += bytes.len() as u64;
                return Ok(());
            }
            let buffer = std::mem::take(buffer);
            self.sink = self.spill(&buffer)?;
        }
        match &mut self.sink {
            Sink::Disk { segment, .. } => {
                if let Err(e) = segment.write_all(bytes) {
                    self.abandon();
                    return Err(e);
                }
            }
            _ => return Err(io::Error::other("the upload segment failed")),
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Starts writing to an upload segment with `buffer`.
    fn spill(&self, buffer: &[u8]) -> io::Result<Sink> {
        let mut segment = self.spool.upload_segments.take()?;
        let base = segment.offset();
        if let Err(e) = segment.write_all(buffer) {
            self.spool.cut_back(segment, base);
            return Err(e);
        }
        Ok(Sink::Disk { segment, base })
    }

    /// Drops the upload's bytes from its segment, if it has one: it will not be finished.
    fn abandon(&mut self) {
        if let Sink::Disk { segment, base } = std::mem::replace(&mut self.sink, Sink::Failed) {
            self.spool.cut_back(segment, base);
        }
    }

    /// Stores the complete upload: a small one for the job's row (held in memory too when the
    /// limit allows), else on disk (written out, not yet synced: the job store syncs the
    /// segment before the job's record commits).
    pub fn finish(mut self) -> io::Result<StoredUpload> {
        let (mut segment, base) = match std::mem::replace(&mut self.sink, Sink::Failed) {
            Sink::Memory(buffer) => {
                return Ok(StoredUpload::InRow(self.spool.keep_small(self.id, buffer)))
            }
            Sink::Disk { segment, base } => (segment, base),
            Sink::Failed => return Err(io::Error::other("the upload segment failed")),
        };
        if let Err(e) = segment.flush() {
            self.spool.cut_back(segment, base);
            return Err(e);
        }
        let file = Arc::clone(segment.file());
        let at = UploadAt {
            segment: file.name().to_string(),
            base,
            size: self.written,
        };
        let source = UploadSource::OnDisk {
            file: Arc::clone(&file),
            base,
            size: self.written,
        };
        self.spool.upload_segments.give_back(segment);
        let mut waiting = lock(&self.spool.waiting);
        waiting.disk_bytes += self.written;
        waiting.by_job.insert(self.id.to_string(), source);
        Ok(StoredUpload::OnDisk { at, file })
    }
}

/// A span of a job's row results bytes, readable through a cursor.
struct RowSpan {
    bytes: Arc<[u8]>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for RowSpan {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[self.range.clone()]
    }
}

/// Where a finished upload was stored.
pub enum StoredUpload {
    /// A small upload, for the job's row (the spool holds a copy in memory when
    /// `--upload-memory-bytes` allows, else reads it back from the row at dispatch).
    InRow(Arc<[u8]>),
    /// In an upload segment, which must be synced before the job's record commits.
    OnDisk {
        /// Where, as the job record keeps it.
        at: UploadAt,
        /// The segment.
        file: Arc<SegmentFile>,
    },
}

impl Drop for UploadWriter<'_> {
    /// An unfinished upload (refused, cut off, failed) leaves none of its bytes behind.
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Receives one job's results, appended to a results segment that no other job writes to
/// meanwhile.
pub struct ResultsWriter<'a> {
    spool: &'a Spool,
    segment: Option<OpenSegment>,
    /// Where this writer's first byte went: a writer that fails cuts its segment back to it.
    base: u64,
}

/// A results segment that holds a job's freshly collected results: kept out of other writers'
/// reach (and from deletion) until the job's record committed; then given back with
/// [`Spool::give_back_results`].
pub struct PinnedSegment(OpenSegment);

impl PinnedSegment {
    /// The segment file (synced before the record that points into it is sent).
    pub fn file(&self) -> &Arc<SegmentFile> {
        self.0.file()
    }
}

impl ResultsWriter<'_> {
    /// Appends everything `data` yields; returns where it lies.
    pub fn append(&mut self, data: &mut dyn Read) -> Result<Span, CopyError> {
        match &mut self.segment {
            Some(segment) => segment.append(data),
            None => Err(CopyError::Write(io::Error::other(
                "the results segment failed",
            ))),
        }
    }

    /// Cuts the segment back to `offset`, where an output that turned out too large began:
    /// what was appended before it is written out, what came after is dropped.
    pub fn cut_back(&mut self, offset: u64) -> Result<(), CopyError> {
        let segment = self
            .segment
            .as_mut()
            .ok_or_else(|| CopyError::Write(io::Error::other("the results segment failed")))?;
        segment
            .flush()
            .and_then(|()| self.spool.result_segments.cut_back(segment, offset))
            .map_err(CopyError::Write)
    }

    /// Writes out what is buffered; returns the segment's name, which the spans refer to, and
    /// the segment, pinned until the job's record commits. A writer that fails here, or is
    /// dropped unfinished, cuts its segment back to where it began, so a collection that failed
    /// (a full disk) leaves no bytes behind.
    pub fn finish(mut self) -> io::Result<(String, PinnedSegment)> {
        let mut segment = self
            .segment
            .take()
            .ok_or_else(|| io::Error::other("the results segment failed"))?;
        if let Err(e) = segment.flush() {
            cut_back(
                &self.spool.result_segments,
                segment,
                self.base,
                "a failed collection",
            );
            return Err(e);
        }
        segment.count_job();
        let name = segment.file().name().to_string();
        Ok((name, PinnedSegment(segment)))
    }
}

impl Drop for ResultsWriter<'_> {
    fn drop(&mut self) {
        if let Some(segment) = self.segment.take() {
            cut_back(
                &self.spool.result_segments,
                segment,
                self.base,
                "a failed collection",
            );
        }
    }
}

/// Cuts `segment` of `segments` back to `base`, where what failed (`what`) began, and gives it
/// back for the next writer (one that then holds nothing goes, its file with it); one that
/// cannot be cut is closed. While a snapshot is under way the bytes stay until it ends
/// ([`Segments::cut_back`]).
fn cut_back(segments: &Segments, mut segment: OpenSegment, base: u64, what: &str) {
    match segments.cut_back(&mut segment, base) {
        Ok(()) => segments.give_back(segment),
        Err(e) => {
            log::warn!(
                "Could not cut segment {} back to {base} bytes after {what}: {e}",
                segment.file().name()
            );
            segments.discard(segment);
        }
    }
}

/// Removes the upload segments an earlier run left in `uploads/` that no recovered job needs
/// (`kept`); anything else there is named in a warning and left alone.
fn clear_leftover_uploads(dir: &Path, kept: &HashSet<String>) -> io::Result<()> {
    let listing = segment_names::list(dir);
    segment_names::warn_of_others(dir, &listing.others);
    let mut removed = 0;
    for name in listing.segments.iter().filter(|name| !kept.contains(*name)) {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if removed > 0 {
        log::warn!(
            "Removed {removed} upload files left in {} by an earlier run that no waiting job needs",
            dir.display()
        );
    }
    Ok(())
}

impl Spool {
    /// Opens (creating if missing) the spool under `state_dir`; at most `memory_limit` bytes of
    /// uploads are held in memory.
    pub fn open(state_dir: &Path, memory_limit: u64) -> io::Result<Self> {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let results = state_dir.join("results");
        let uploads = state_dir.join("uploads");
        let removals = Arc::new(Removals::default());
        let upload_segments =
            Segments::open(uploads, started.clone(), true, Arc::clone(&removals))?;
        let result_segments = Arc::new(Segments::open(
            results.clone(),
            started,
            false,
            Arc::clone(&removals),
        )?);
        let random = BufReader::with_capacity(4096, File::open("/dev/urandom")?);
        Ok(Spool {
            results,
            upload_segments,
            result_segments,
            removals,
            random: Mutex::new(random),
            memory_limit,
            waiting: Mutex::new(Waiting::default()),
        })
    }

    /// 16 random bytes as 32 hex digits.
    pub fn random_hex(&self) -> io::Result<String> {
        Ok(hex(&self.random_bytes::<16>()?))
    }

    /// `N` bytes from `/dev/urandom`.
    fn random_bytes<const N: usize>(&self) -> io::Result<[u8; N]> {
        let mut bytes = [0u8; N];
        lock(&self.random).read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// A fresh job id: `pool-`, the time in milliseconds (12 hex digits), then 80 random bits
    /// (20 hex digits). Ids made later sort later, so the store's id index grows at its end,
    /// where the jobs of one commit share pages, instead of touching a page per job.
    pub fn new_job_id(&self) -> io::Result<String> {
        let random = self.random_bytes::<10>()?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
            & 0xffff_ffff_ffff;
        Ok(format!("pool-{millis:012x}{}", hex(&random)))
    }

    /// A writer for the upload of job `id`.
    pub fn upload_writer<'a>(&'a self, id: &'a str) -> UploadWriter<'a> {
        UploadWriter {
            spool: self,
            id,
            sink: Sink::Memory(Vec::new()),
            written: 0,
        }
    }

    /// Registers the small upload of `id`, whose bytes go in its job's row: held in memory too
    /// if the limit allows, else left to the row.
    fn keep_small(&self, id: &str, buffer: Vec<u8>) -> Arc<[u8]> {
        let size = buffer.len() as u64;
        let bytes: Arc<[u8]> = buffer.into();
        let mut waiting = lock(&self.waiting);
        let source = if waiting.held_bytes + size <= self.memory_limit {
            waiting.held_bytes += size;
            waiting.held += 1;
            UploadSource::Held(Arc::clone(&bytes))
        } else {
            waiting.row_bytes += size;
            UploadSource::InRow { size }
        };
        waiting.by_job.insert(id.to_string(), source);
        bytes
    }

    /// Where the upload of job `id` is.
    pub fn upload_source(&self, id: &str) -> io::Result<UploadSource> {
        lock(&self.waiting)
            .by_job
            .get(id)
            .cloned()
            .ok_or_else(|| io::Error::other(format!("the upload of job {id} is not in the spool")))
    }

    /// The waiting uploads, in memory and on disk.
    pub fn upload_counts(&self) -> UploadCounts {
        let waiting = lock(&self.waiting);
        UploadCounts {
            in_memory: waiting.held,
            memory_bytes: waiting.held_bytes,
            on_disk: waiting.by_job.len() - waiting.held,
            disk_bytes: waiting.disk_bytes + waiting.row_bytes,
        }
    }

    /// The most upload bytes held in memory (`--upload-memory-bytes`).
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// Drops a job's upload: a worker holds it now, or the job ended without running. Bytes that
    /// stay in an upload segment other waiting uploads keep are remembered: a deletion of the
    /// job wipes them ([`Removals::wipe_left`]).
    pub fn remove_upload(&self, id: &str) {
        self.drop_upload(id, false);
    }

    /// Drops the upload of a job a client deleted, as [`Spool::remove_upload`] does, and wipes
    /// its bytes in an upload segment that other waiting uploads keep (its row's copy goes
    /// with the row).
    pub fn wipe_upload(&self, id: &str) {
        self.drop_upload(id, true);
    }

    fn drop_upload(&self, id: &str, wipe: bool) {
        let removed = {
            let mut waiting = lock(&self.waiting);
            let removed = waiting.by_job.remove(id);
            match &removed {
                Some(UploadSource::Held(bytes)) => {
                    waiting.held_bytes -= bytes.len() as u64;
                    waiting.held -= 1;
                }
                Some(UploadSource::InRow { size }) => waiting.row_bytes -= size,
                Some(UploadSource::OnDisk { size, .. }) => waiting.disk_bytes -= size,
                None => {}
            }
            removed
        };
        if let Some(UploadSource::OnDisk { file, base, size }) = removed {
            let span = Span { offset: base, size };
            if wipe {
                self.removals.wipe(file.path(), span, WipeOf::DeletedJob);
            } else if Arc::strong_count(&file) > 1 {
                // Its bytes stay while the segment does: a deletion of the job wipes them.
                self.removals.leave(id, file.path(), span);
            }
            drop(file);
            self.upload_segments.sweep();
        }
    }

    /// A writer for one job's results, on a free results segment or a new one.
    pub fn results_writer(&self) -> io::Result<ResultsWriter<'_>> {
        let segment = self.result_segments.take()?;
        Ok(ResultsWriter {
            spool: self,
            base: segment.offset(),
            segment: Some(segment),
        })
    }

    /// Gives a results segment back once the record of the job it holds committed.
    pub fn give_back_results(&self, pinned: PinnedSegment) {
        self.result_segments.give_back(pinned.0);
    }

    /// Cuts an upload segment back to `base`, where an unfinished upload began, and gives it
    /// to the next upload (one that then holds nothing goes); one that cannot be cut is closed.
    fn cut_back(&self, segment: OpenSegment, base: u64) {
        cut_back(&self.upload_segments, segment, base, "an unfinished upload");
    }

    /// What times the writes to its upload and results segments (see
    /// [`JobStore::watch_segments`](crate::store::jobs_db::JobStore::watch_segments)).
    pub fn segment_watches(&self) -> [Arc<StallWatch>; 2] {
        [
            Arc::clone(self.upload_segments.watch()),
            Arc::clone(self.result_segments.watch()),
        ]
    }

    /// `None` while new upload and results segments may be created; else why not (an
    /// operator took the permission away): see [`dir_access::first_denied`].
    pub fn denied(&self) -> Option<String> {
        dir_access::first_denied([self.upload_segments.dir(), self.result_segments.dir()])
    }

    /// The segment deletions of the state directory (held while a snapshot is taken).
    pub fn removals(&self) -> &Arc<Removals> {
        &self.removals
    }

    /// The results directory and its segments (a retention sweep retires those no retained job
    /// refers to before deleting them).
    pub fn results_segments(&self) -> (PathBuf, Arc<Segments>) {
        (self.results.clone(), Arc::clone(&self.result_segments))
    }

    /// Takes back the waiting uploads of recovered jobs that lie in upload segments an earlier
    /// run wrote. Returns the jobs whose upload is gone or cut short, with the reason. Upload
    /// files that no recovered job needs are removed, and the bytes no recovered job needs in
    /// those kept (uploads of jobs that left the queue) are punched out.
    pub fn adopt_uploads(&self, uploads: Vec<(String, UploadAt)>) -> Vec<(String, String)> {
        let dir = self.upload_segments.dir().to_path_buf();
        let mut files: HashMap<String, io::Result<Arc<SegmentFile>>> = HashMap::new();
        let mut used: HashMap<String, Vec<Span>> = HashMap::new();
        let mut failed = Vec::new();
        let mut waiting = lock(&self.waiting);
        for (id, at) in uploads {
            let file = files.entry(at.segment.clone()).or_insert_with(|| {
                let removals = Some(Arc::clone(&self.removals));
                SegmentFile::open_existing(&dir, &at.segment, removals).map(Arc::new)
            });
            let checked = match file {
                Ok(file) => match file.file_len() {
                    Ok(len) if at.base.checked_add(at.size).is_some_and(|end| end <= len) => {
                        Ok(Arc::clone(file))
                    }
                    Ok(len) => Err(format!(
                        "its upload segment {} ends at byte {len}, before the upload's end at {} (+{} bytes)",
                        at.segment, at.base, at.size
                    )),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(format!(
                    "its upload segment {} cannot be opened: {e}",
                    at.segment
                )),
            };
            match checked {
                Ok(file) => {
                    used.entry(at.segment.clone()).or_default().push(Span {
                        offset: at.base,
                        size: at.size,
                    });
                    waiting.disk_bytes += at.size;
                    waiting.by_job.insert(
                        id,
                        UploadSource::OnDisk {
                            file,
                            base: at.base,
                            size: at.size,
                        },
                    );
                }
                Err(why) => failed.push((id, why)),
            }
        }
        drop(waiting);
        for (name, file) in &files {
            if let (Ok(file), Some(spans)) = (file, used.remove(name)) {
                self.punch_unused(file, spans);
            }
        }
        let kept: HashSet<String> = files
            .into_iter()
            .filter_map(|(name, file)| file.ok().map(|_| name))
            .collect();
        if let Err(e) = clear_leftover_uploads(&dir, &kept) {
            log::warn!("Could not clear {}: {e}", dir.display());
        }
        failed
    }

    /// Punches out of an adopted upload segment what lies outside the `used` spans of its
    /// waiting uploads: the uploads of jobs that left the queue before the stop (a deleted
    /// one's among them), which no job needs any more.
    fn punch_unused(&self, file: &SegmentFile, mut used: Vec<Span>) {
        let Ok(len) = file.file_len() else {
            return;
        };
        used.sort_by_key(|span| span.offset);
        let mut at = 0;
        for span in used.into_iter().chain([Span {
            offset: len,
            size: 0,
        }]) {
            if span.offset > at {
                let gap = Span {
                    offset: at,
                    size: span.offset - at,
                };
                self.removals.wipe(file.path(), gap, WipeOf::Unreferenced);
            }
            at = at.max(span.offset.saturating_add(span.size));
        }
    }

    /// Takes back the upload of a recovered job that the job store holds in its row: held in
    /// memory within `--upload-memory-bytes` like a fresh upload, else left in the row.
    pub fn adopt_from_row(&self, id: &str, bytes: Vec<u8>) {
        self.keep_small(id, bytes);
    }

    /// A reader of `span` of a job's collected results: in the row bytes loaded into `stored`
    /// (see [`StoredResults::in_row`]) or in its results segment.
    pub fn open_results(
        &self,
        stored: &StoredResults,
        span: Span,
    ) -> io::Result<Box<dyn Read + Send>> {
        self.results_source(stored)?.open(span)
    }

    /// Where a job's collected results are, for several reads: the row bytes loaded into
    /// `stored`, or its results segment, opened now. Reads from it keep working when
    /// retention deletes the segment meanwhile, and a wipe of a deleted job's results in the
    /// segment waits until they are done. A caller that read `stored` before opening must check
    /// that the job was not deleted in between (its results may have been wiped then).
    pub fn results_source(&self, stored: &StoredResults) -> io::Result<ResultsSource> {
        if stored.in_row {
            let bytes = stored.row_bytes.clone().ok_or_else(|| {
                io::Error::other("the results held in the job's store row were not read")
            })?;
            return Ok(ResultsSource::Row(bytes));
        }
        let file = SegmentFile::open_to_read(&self.results, &stored.segment, &self.removals)
            .map_err(|e| unopened_segment(&self.results, &stored.segment, e))?;
        let len = file.file_len()?;
        Ok(ResultsSource::Segment(Arc::new(file), len))
    }
}

/// The error of a results segment `name` in `dir` that could not be opened, naming the file:
/// a missing one says what became of the results in it and how to find the jobs concerned.
fn unopened_segment(dir: &Path, name: &str, e: io::Error) -> io::Error {
    let path = dir.join(name);
    if e.kind() == io::ErrorKind::NotFound {
        return io::Error::new(
            e.kind(),
            format!(
                "results segment {} is missing (deleted or moved while the job store still \
                 points into it); the results of the jobs in it cannot be served unless the \
                 file is put back from a backup. `trusted-pool check --state-dir` lists every \
                 job whose results are missing",
                path.display()
            ),
        );
    }
    io::Error::new(
        e.kind(),
        format!("results segment {} cannot be opened: {e}", path.display()),
    )
}

/// A job's collected results, ready to be read span by span ([`Spool::results_source`]).
pub enum ResultsSource {
    /// The bytes of the job's store row.
    Row(Arc<[u8]>),
    /// Its results segment, open, and the segment's length when it was opened.
    Segment(Arc<SegmentFile>, u64),
}

impl ResultsSource {
    /// A reader of `span`; an error when the span lies past the end of the bytes.
    pub fn open(&self, span: Span) -> io::Result<Box<dyn Read + Send>> {
        let len = match self {
            Self::Row(bytes) => bytes.len() as u64,
            Self::Segment(_, len) => *len,
        };
        if span
            .offset
            .checked_add(span.size)
            .is_none_or(|end| end > len)
        {
            let place = match self {
                Self::Row(_) => "the results held in the job's store row end".to_string(),
                Self::Segment(file, _) => format!("results segment {} ends", file.name()),
            };
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{place} at byte {len}, before the data at {} (+{} bytes)",
                    span.offset, span.size
                ),
            ));
        }
        match self {
            Self::Row(bytes) => {
                let range = (span.offset as usize)..((span.offset + span.size) as usize);
                Ok(Box::new(io::Cursor::new(RowSpan {
                    bytes: Arc::clone(bytes),
                    range,
                })))
            }
            Self::Segment(file, _) => Ok(Box::new(file.reader(span))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn files_in(dir: &Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| entries.count())
    }

    fn read_all(source: &UploadSource, span: Span) -> Vec<u8> {
        let mut bytes = Vec::new();
        source
            .open(span)
            .and_then(|mut r| r.read_to_end(&mut bytes))
            .expect("read");
        bytes
    }

    #[test]
    fn an_output_cut_back_leaves_the_ones_before_it_and_takes_no_room() {
        let dir = std::env::temp_dir().join(format!("tp-spool-cut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir, 0).expect("spool");
        let mut writer = spool.results_writer().expect("writer");
        let kept = writer.append(&mut &[1u8; 3000][..]).expect("kept");
        let cut = writer.append(&mut &[2u8; 5000][..]).expect("cut");
        writer.cut_back(cut.offset).expect("cut back");
        let logs = writer.append(&mut &b"{}"[..]).expect("logs");
        assert_eq!(
            logs.offset, cut.offset,
            "the logs go where the cut output began"
        );
        let (segment, pinned) = writer.finish().expect("finish");
        assert_eq!(
            pinned.file().file_len().expect("length"),
            logs.offset + logs.size
        );
        let stored = StoredResults {
            segment,
            outputs: vec![("kept".to_string(), kept)],
            logs,
            in_row: false,
            left_on_worker: vec!["cut".to_string()],
            served_sha256: Vec::new(),
            row_bytes: None,
        };
        let mut bytes = Vec::new();
        spool
            .open_results(&stored, kept)
            .and_then(|mut r| r.read_to_end(&mut bytes))
            .expect("read");
        assert!(
            bytes.len() == 3000 && bytes.iter().all(|&b| b == 1),
            "the output before the cut came back as {} bytes, not 3000 ones",
            bytes.len()
        );
        spool.give_back_results(pinned);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn job_ids_sort_in_the_order_they_were_made_and_differ_within_a_millisecond() {
        let dir = std::env::temp_dir().join(format!("tp-spool-ids-{}", std::process::id()));
        let spool = Spool::open(&dir, 0).expect("spool");
        let first = spool.new_job_id().expect("id");
        let well_formed = |id: &str| {
            id.len() == 37
                && id.starts_with("pool-")
                && id[5..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        assert!(well_formed(&first), "{first}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ids = vec![first.clone()];
        while ids.last().is_some_and(|id| id[..17] == first[..17]) {
            assert!(Instant::now() < deadline, "the clock never moved");
            ids.push(spool.new_job_id().expect("id"));
        }
        let later = ids.last().expect("an id");
        assert!(well_formed(later), "{later}");
        assert!(later > &first, "{later} sorts before {first}");
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "two ids alike within a millisecond"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn uploads_on_disk_share_a_segment_that_goes_with_the_last_of_them() {
        let dir = std::env::temp_dir().join(format!("tp-spool-{}", std::process::id()));
        let spool = Spool::open(&dir, 0).expect("spool");
        let uploads = dir.join("uploads");
        let big = HELD_UPLOAD_MAX as usize + 1;
        for (id, fill) in [("a", b'a'), ("b", b'b')] {
            let text = vec![fill; big];
            let mut writer = spool.upload_writer(id);
            let span = writer.append(&mut &text[..]).expect("append");
            assert!(matches!(writer.finish(), Ok(StoredUpload::OnDisk { .. })));
            assert_eq!(span.offset, 0);
            let source = spool.upload_source(id).expect("source");
            assert_eq!(read_all(&source, span), text);
        }
        let mut refused = spool.upload_writer("c");
        refused.append(&mut &vec![b'c'; big][..]).expect("append");
        drop(refused);
        assert_eq!(files_in(&uploads), 1, "one shared segment");
        let segment_len = || {
            let entry = std::fs::read_dir(&uploads).expect("uploads").next();
            entry
                .expect("a segment")
                .expect("entry")
                .metadata()
                .expect("meta")
                .len()
        };
        assert_eq!(
            segment_len(),
            2 * big as u64,
            "the refused upload's bytes are cut"
        );
        assert_eq!(spool.upload_counts().on_disk, 2);
        assert_eq!(spool.upload_counts().disk_bytes, 2 * big as u64);

        spool.remove_upload("a");
        assert_eq!(files_in(&uploads), 1, "b still waits in it");
        spool.remove_upload("b");
        assert_eq!(files_in(&uploads), 0, "no upload left in it");
        assert_eq!(spool.upload_counts().on_disk, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_small_upload_past_the_memory_limit_waits_in_its_row_only() {
        let dir = std::env::temp_dir().join(format!("tp-spool-row-{}", std::process::id()));
        let spool = Spool::open(&dir, 8).expect("spool");
        let mut writer = spool.upload_writer("a");
        writer.append(&mut &b"0123456789"[..]).expect("append");
        let Ok(StoredUpload::InRow(bytes)) = writer.finish() else {
            panic!("a small upload is stored for its row");
        };
        assert_eq!(&bytes[..], b"0123456789");
        let source = spool.upload_source("a").expect("source");
        assert!(matches!(source, UploadSource::InRow { size: 10 }));
        assert!(source.open(Span { offset: 0, size: 1 }).is_err());
        let counts = spool.upload_counts();
        assert_eq!(
            (counts.in_memory, counts.on_disk, counts.disk_bytes),
            (0, 1, 10)
        );
        assert_eq!(files_in(&dir.join("uploads")), 0, "no segment for it");
        spool.remove_upload("a");
        assert_eq!(spool.upload_counts(), UploadCounts::default());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_held_upload_is_read_back_by_span_and_released() {
        let dir = std::env::temp_dir().join(format!("tp-spool-held-{}", std::process::id()));
        let spool = Spool::open(&dir, 1024).expect("spool");
        let mut writer = spool.upload_writer("a");
        writer.append(&mut &b"head-"[..]).expect("append");
        let span = writer.append(&mut &b"part"[..]).expect("append");
        assert!(matches!(writer.finish(), Ok(StoredUpload::InRow(_))));
        let source = spool.upload_source("a").expect("source");
        assert_eq!(read_all(&source, span), b"part");
        assert_eq!(spool.upload_counts().memory_bytes, 9);
        spool.remove_upload("a");
        assert_eq!(spool.upload_counts().in_memory, 0);
        assert_eq!(files_in(&dir.join("uploads")), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
