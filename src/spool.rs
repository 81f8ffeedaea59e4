//! The spool: uploads waiting for dispatch and collected results.
//!
//! An upload's parts are stored back to back (the job record says where each part lies): in
//! memory when the upload is at most [`HELD_UPLOAD_MAX`] bytes and all held uploads stay within
//! `--upload-memory-bytes`, else in `uploads/<id>` under the state directory, so memory stays
//! bounded however many jobs wait. Collected results (output files, then logs, back to back) are
//! appended to segment files `results/<start time>-<n>`: one per collection running at once,
//! each closed at 64 MiB; the job record says which segment and where. In the common case a job
//! thus creates and deletes no file at all: file creation and deletion were most of the
//! coordinator's CPU per job.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::job::Span;
use crate::pool_state::lock;

/// Largest upload kept in memory; larger ones always go to disk.
pub const HELD_UPLOAD_MAX: u64 = 64 * 1024;

/// A results segment takes no more jobs once it is this large.
const SEGMENT_MAX: u64 = 64 * 1024 * 1024;

/// Uploads kept in memory, and their total size.
#[derive(Default)]
struct Held {
    bytes: u64,
    by_job: HashMap<String, Arc<[u8]>>,
}

/// The spool under `--state-dir`, with its in-memory part.
pub struct Spool {
    uploads: PathBuf,
    results: PathBuf,
    random: Mutex<BufReader<File>>,
    memory_limit: u64,
    held: Mutex<Held>,
    started: u64,
    segments: Mutex<Segments>,
}

/// Results segments not being written to, and how many were made.
#[derive(Default)]
struct Segments {
    free: Vec<Segment>,
    created: u64,
}

/// Where a job's uploaded bytes are.
#[derive(Debug, Clone)]
pub enum UploadSource {
    /// Held in memory.
    Held(Arc<[u8]>),
    /// In a file of the spool.
    File(PathBuf),
}

impl UploadSource {
    /// A reader of the bytes at `span`.
    pub fn open(&self, span: Span) -> io::Result<Box<dyn Read + Send>> {
        match self {
            Self::Held(bytes) => {
                let start = usize::try_from(span.offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(usize::try_from(span.size).unwrap_or(usize::MAX));
                if end > bytes.len() {
                    return Err(io::Error::other("a part lies outside its held upload"));
                }
                Ok(Box::new(HeldSlice {
                    bytes: Arc::clone(bytes),
                    at: start,
                    end,
                }))
            }
            Self::File(path) => open_span(path, span),
        }
    }
}

/// Reads a range of a held upload.
struct HeldSlice {
    bytes: Arc<[u8]>,
    at: usize,
    end: usize,
}

impl Read for HeldSlice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.end - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Opens `path` positioned at `span`, reading no further than its end.
pub fn open_span(path: &Path, span: Span) -> io::Result<Box<dyn Read + Send>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(span.offset))?;
    Ok(Box::new(file.take(span.size)))
}

/// A copy into the spool that failed.
#[derive(Debug)]
pub enum CopyError {
    /// Reading the source failed (the client's or the worker's side).
    Read(io::Error),
    /// Writing the spool failed.
    Write(io::Error),
}

/// Feeds everything `data` yields to `sink`.
fn pump(
    data: &mut dyn Read,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), CopyError> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        sink(&buf[..n]).map_err(CopyError::Write)?;
    }
}

enum Sink {
    Memory(Vec<u8>),
    File(BufWriter<File>),
}

/// Receives one upload as it streams in: in memory until it outgrows [`HELD_UPLOAD_MAX`], then in
/// its spool file. A writer dropped unfinished leaves its file for [`Spool::remove_upload`].
pub struct UploadWriter<'a> {
    spool: &'a Spool,
    id: &'a str,
    sink: Sink,
    written: u64,
}

impl UploadWriter<'_> {
    /// Appends everything `data` yields; returns where it lies.
    pub fn append(&mut self, data: &mut dyn Read) -> Result<Span, CopyError> {
        let offset = self.written;
        pump(data, |chunk| self.write(chunk))?;
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
            let mut file = self.spool.create_upload_file(self.id)?;
            file.write_all(buffer)?;
            self.sink = Sink::File(file);
        }
        if let Sink::File(file) = &mut self.sink {
            file.write_all(bytes)?;
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Stores the complete upload: held in memory when the limit allows, else on disk.
    pub fn finish(self) -> io::Result<()> {
        match self.sink {
            Sink::Memory(buffer) => {
                let Some(buffer) = self.spool.hold(self.id, buffer) else {
                    return Ok(());
                };
                let mut file = self.spool.create_upload_file(self.id)?;
                file.write_all(&buffer)?;
                file.flush()
            }
            Sink::File(mut file) => file.flush(),
        }
    }
}

/// An open results segment: collected results are appended to it.
struct Segment {
    name: String,
    file: BufWriter<File>,
    len: u64,
}

/// Receives one job's results, appended to a results segment that no other job writes to
/// meanwhile; the segment goes back for the next job when the writer is finished.
pub struct ResultsWriter<'a> {
    spool: &'a Spool,
    segment: Option<Segment>,
}

impl ResultsWriter<'_> {
    /// Appends everything `data` yields; returns where it lies.
    pub fn append(&mut self, data: &mut dyn Read) -> Result<Span, CopyError> {
        let segment = self
            .segment
            .as_mut()
            .ok_or_else(|| CopyError::Write(io::Error::other("the results segment failed")))?;
        let offset = segment.len;
        let file = &mut segment.file;
        let mut written = 0;
        let copied = pump(data, |chunk| {
            file.write_all(chunk)?;
            written += chunk.len() as u64;
            Ok(())
        });
        segment.len += written;
        if let Err(e) = copied {
            if let CopyError::Write(_) = e {
                self.segment = None;
            }
            return Err(e);
        }
        Ok(Span {
            offset,
            size: written,
        })
    }

    /// Writes out what is buffered; returns the segment's name, which the spans refer to.
    pub fn finish(mut self) -> io::Result<String> {
        let mut segment = self
            .segment
            .take()
            .ok_or_else(|| io::Error::other("the results segment failed"))?;
        segment.file.flush()?;
        let name = segment.name.clone();
        self.spool.return_segment(segment);
        Ok(name)
    }
}

impl Spool {
    /// Opens (creating if missing) the spool under `state_dir`; at most `memory_limit` bytes of
    /// uploads are held in memory.
    pub fn open(state_dir: &Path, memory_limit: u64) -> io::Result<Self> {
        let uploads = state_dir.join("uploads");
        let results = state_dir.join("results");
        std::fs::create_dir_all(&uploads)?;
        std::fs::create_dir_all(&results)?;
        let random = BufReader::with_capacity(4096, File::open("/dev/urandom")?);
        Ok(Spool {
            uploads,
            results,
            random: Mutex::new(random),
            memory_limit,
            held: Mutex::new(Held::default()),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            segments: Mutex::new(Segments::default()),
        })
    }

    /// 16 random bytes as 32 hex digits.
    pub fn random_hex(&self) -> io::Result<String> {
        let mut bytes = [0u8; 16];
        lock(&self.random).read_exact(&mut bytes)?;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        Ok(bytes
            .iter()
            .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
            .map(char::from)
            .collect())
    }

    /// A fresh job id: `pool-` and 128 random bits in hex.
    pub fn new_job_id(&self) -> io::Result<String> {
        Ok(format!("pool-{}", self.random_hex()?))
    }

    /// A writer for the upload of job `id`.
    pub fn upload_writer<'a>(&'a self, id: &'a str) -> io::Result<UploadWriter<'a>> {
        let sink = if self.memory_limit == 0 {
            Sink::File(self.create_upload_file(id)?)
        } else {
            Sink::Memory(Vec::new())
        };
        Ok(UploadWriter {
            spool: self,
            id,
            sink,
            written: 0,
        })
    }

    fn create_upload_file(&self, id: &str) -> io::Result<BufWriter<File>> {
        let file = File::create(self.uploads.join(id))?;
        Ok(BufWriter::with_capacity(64 * 1024, file))
    }

    /// Keeps `buffer` in memory as the upload of `id` if the limit allows; else gives it back.
    fn hold(&self, id: &str, buffer: Vec<u8>) -> Option<Vec<u8>> {
        let size = buffer.len() as u64;
        let mut held = lock(&self.held);
        if held.bytes + size > self.memory_limit {
            return Some(buffer);
        }
        held.bytes += size;
        held.by_job.insert(id.to_string(), buffer.into());
        None
    }

    /// Where the upload of job `id` is.
    pub fn upload_source(&self, id: &str) -> UploadSource {
        match lock(&self.held).by_job.get(id) {
            Some(bytes) => UploadSource::Held(Arc::clone(bytes)),
            None => UploadSource::File(self.uploads.join(id)),
        }
    }

    /// Uploads held in memory: how many, and their total bytes.
    pub fn held_uploads(&self) -> (usize, u64) {
        let held = lock(&self.held);
        (held.by_job.len(), held.bytes)
    }

    /// The most upload bytes held in memory (`--upload-memory-bytes`).
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// Removes a job's upload: a worker holds it now, or the job ended without running.
    pub fn remove_upload(&self, id: &str) {
        {
            let mut held = lock(&self.held);
            if let Some(bytes) = held.by_job.remove(id) {
                held.bytes -= bytes.len() as u64;
                return;
            }
        }
        let path = self.uploads.join(id);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("Could not remove {}: {e}", path.display());
            }
        }
    }

    /// A writer for one job's results, on a free segment or a new one.
    pub fn results_writer(&self) -> io::Result<ResultsWriter<'_>> {
        let free = lock(&self.segments).free.pop();
        let segment = match free {
            Some(segment) => segment,
            None => self.new_segment()?,
        };
        Ok(ResultsWriter {
            spool: self,
            segment: Some(segment),
        })
    }

    fn new_segment(&self) -> io::Result<Segment> {
        loop {
            let number = {
                let mut segments = lock(&self.segments);
                segments.created += 1;
                segments.created
            };
            let name = format!("{}-{number:06}", self.started);
            let path = self.results.join(&name);
            match File::options().write(true).create_new(true).open(path) {
                Ok(file) => {
                    return Ok(Segment {
                        name,
                        file: BufWriter::with_capacity(64 * 1024, file),
                        len: 0,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn return_segment(&self, segment: Segment) {
        if segment.len < SEGMENT_MAX {
            lock(&self.segments).free.push(segment);
        }
    }

    /// The results segment called `name`.
    pub fn results_file(&self, name: &str) -> PathBuf {
        self.results.join(name)
    }
}
