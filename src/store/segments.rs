//! Append-only segment files shared by many jobs: the uploads that wait on disk, and collected
//! results. A writer takes a segment that no one else writes to (or a new one), appends one job's
//! bytes and gives it back; a segment takes no more once it is [`SEGMENT_MAX`] bytes. Reads go by
//! offset on a shared handle. Many jobs per file means no file is created or deleted per job.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::base::job::Span;
use crate::base::paths::is_safe_component;
use crate::base::sync::lock;
use crate::store::removals::{Reading, Removals, WipeOf};
use crate::store::stall_watch::{StallWatch, Watched};

/// A segment takes no more writes once it is this large.
pub const SEGMENT_MAX: u64 = 64 * 1024 * 1024;

/// A segment takes no more jobs once it holds this many, so that the files of forgotten jobs
/// can go soon (a results segment is deleted when no retained job refers to it).
pub const SEGMENT_MAX_JOBS: u32 = 64;

/// A copy into a segment that failed.
#[derive(Debug)]
pub enum CopyError {
    /// Reading the source failed (the client's or the worker's side).
    Read(io::Error),
    /// Writing the segment failed.
    Write(io::Error),
}

/// Feeds everything `data` yields to `sink`, chunk by chunk (never all of it in memory).
pub fn copy_chunks(
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

/// One segment file. With `remove_when_unused`, the file is removed (through its directory's
/// [`Removals`]) once nothing refers to it.
#[derive(Debug)]
pub struct SegmentFile {
    path: PathBuf,
    name: String,
    file: File,
    remove_when_unused: Option<Arc<Removals>>,
    dir_synced: AtomicBool,
    /// Times its writes and syncs (a file opened to write; None for one opened to read).
    watch: Option<Arc<StallWatch>>,
    /// Counts it as a reader of its file while it is open (wipes of the file wait).
    _reading: Option<Reading>,
}

impl SegmentFile {
    /// Opens an existing segment `name` in `dir` for reading (an upload segment an earlier run
    /// left, which its waiting jobs still need). With `remove_when_unused`, the file is removed
    /// through it once nothing refers to it.
    pub fn open_existing(
        dir: &Path,
        name: &str,
        remove_when_unused: Option<Arc<Removals>>,
    ) -> io::Result<Self> {
        // A name from a damaged record must not reach (and later remove) a file elsewhere.
        if !is_safe_component(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a segment name"),
            ));
        }
        let path = dir.join(name);
        let file = File::open(&path)?;
        Ok(SegmentFile {
            path,
            name: name.to_string(),
            file,
            remove_when_unused,
            dir_synced: AtomicBool::new(true),
            watch: None,
            _reading: None,
        })
    }

    /// Opens an existing segment `name` in `dir` to read results from, counted as a reader of
    /// it in `removals` while it is open (a wipe of deleted results in it waits).
    pub fn open_to_read(dir: &Path, name: &str, removals: &Arc<Removals>) -> io::Result<Self> {
        let mut file = SegmentFile::open_existing(dir, name, None)?;
        file._reading = Some(removals.reading(&file.path));
        Ok(file)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's name in its directory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file's length on disk.
    pub fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Syncs what was written to the file to the disk (and, the first time, its directory
    /// entry), so that a record pointing into it may commit.
    pub fn sync(&self) -> io::Result<()> {
        let _writing = self.watch.as_ref().map(|w| w.writing());
        self.file.sync_data()?;
        if !self.dir_synced.load(Ordering::Acquire) {
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            self.dir_synced.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Whether its path still names the file it opened: false once that file was deleted, or
    /// another put in its place, under the coordinator (appends to it would be read by no
    /// start). A file that cannot be looked at for another reason counts as still there: its
    /// writes tell of a failing disk.
    fn still_at_path(&self) -> bool {
        let Ok(open) = self.file.metadata() else {
            return true;
        };
        if open.nlink() == 0 {
            return false;
        }
        match std::fs::metadata(&self.path) {
            Ok(named) => named.dev() == open.dev() && named.ino() == open.ino(),
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        }
    }

    /// A reader of the bytes at `span`.
    pub fn reader(self: &Arc<Self>, span: Span) -> SpanReader {
        SpanReader {
            file: Arc::clone(self),
            at: span.offset,
            end: span.offset.saturating_add(span.size),
        }
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        let Some(removals) = self.remove_when_unused.as_ref() else {
            return;
        };
        removals.forget_left_in(&self.path);
        // A file deleted or replaced under the coordinator is not its to remove any more.
        if self.still_at_path() {
            if let Err(e) = removals.remove(&self.path) {
                log::warn!("Could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Reads a range of a segment.
pub struct SpanReader {
    file: Arc<SegmentFile>,
    at: u64,
    end: u64,
}

impl Read for SpanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end - self.at).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.file.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends before the data it should hold", self.file.name),
            ));
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// Writes to a segment through its shared handle.
struct SharedWrite(Arc<SegmentFile>);

impl Write for SharedWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _writing = self.0.watch.as_ref().map(|w| w.writing());
        (&self.0.file).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes a segment's writer buffers before writing them out.
const WRITE_BUFFER: usize = 64 * 1024;

/// A segment taken for writing: appends go to its end. Its write buffer exists only between a
/// first append and the next flush, so the segments that wait for a writer (free ones, and
/// those pinned until a record commits) hold none: how many there are follows the most writers
/// seen at once.
pub struct OpenSegment {
    file: Arc<SegmentFile>,
    out: Option<BufWriter<SharedWrite>>,
    len: u64,
    jobs: u32,
}

impl OpenSegment {
    /// The segment file.
    pub fn file(&self) -> &Arc<SegmentFile> {
        &self.file
    }

    /// Where the next byte goes.
    pub fn offset(&self) -> u64 {
        self.len
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = &self.file;
        self.out
            .get_or_insert_with(|| {
                BufWriter::with_capacity(WRITE_BUFFER, SharedWrite(Arc::clone(file)))
            })
            .write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Appends everything `data` yields; returns where it lies.
    pub fn append(&mut self, data: &mut dyn Read) -> Result<Span, CopyError> {
        let offset = self.len;
        copy_chunks(data, |chunk| self.write_all(chunk))?;
        Ok(Span {
            offset,
            size: self.len - offset,
        })
    }

    /// Writes out what is buffered, so readers see everything appended so far, and frees the
    /// buffer.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(out) = &mut self.out {
            out.flush()?;
        }
        self.out = None;
        Ok(())
    }

    /// Counts one more job written to it.
    pub fn count_job(&mut self) {
        self.jobs += 1;
    }
}

/// Segments free for the next writer, and how many were made.
#[derive(Default)]
struct Free {
    segments: Vec<OpenSegment>,
    created: u64,
}

/// The segments of one directory.
pub struct Segments {
    dir: PathBuf,
    prefix: String,
    remove_when_unused: bool,
    removals: Arc<Removals>,
    free: Mutex<Free>,
    open: Mutex<HashSet<String>>,
    /// Segments retired while a writer held them: closed when given back.
    retiring: Mutex<HashSet<String>>,
    /// Times the writes to its segments.
    watch: Arc<StallWatch>,
}

/// Creates the segment folder `dir` if missing; its error names the folder, and says what to
/// do when something other than a folder is in its place.
fn create_folder(dir: &Path) -> io::Result<()> {
    let Err(e) = std::fs::create_dir_all(dir) else {
        return Ok(());
    };
    let taken = std::fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir());
    if taken {
        return Err(io::Error::new(
            e.kind(),
            format!(
                "{} is a file, not a folder: the coordinator keeps its segment files in a folder \
                 there. Move the file out of the state directory (it is none of the \
                 coordinator's), put the folder back if you have it, and start again",
                dir.display()
            ),
        ));
    }
    Err(io::Error::new(
        e.kind(),
        format!("its folder {} cannot be created: {e}", dir.display()),
    ))
}

impl Segments {
    /// Segments in `dir` (created if missing), named `<prefix>-<n>`. With `remove_when_unused`,
    /// a segment's file is removed as soon as no writer and no reader refer to it. Files are
    /// deleted through `removals`.
    pub fn open(
        dir: PathBuf,
        prefix: String,
        remove_when_unused: bool,
        removals: Arc<Removals>,
    ) -> io::Result<Self> {
        create_folder(&dir)?;
        Ok(Segments {
            dir,
            prefix,
            remove_when_unused,
            removals,
            free: Mutex::new(Free::default()),
            open: Mutex::default(),
            retiring: Mutex::default(),
            watch: Arc::new(StallWatch::new(Watched::Segments)),
        })
    }

    /// What times the writes to its segments (a disk that stops answering blocks them).
    pub fn watch(&self) -> &Arc<StallWatch> {
        &self.watch
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A segment for one writer: a free one whose file is still in its directory, or a new
    /// one. A free segment whose file was deleted (or replaced) under the coordinator is closed
    /// with a warning: what it took from then on would be lost at the next start.
    pub fn take(&self) -> io::Result<OpenSegment> {
        loop {
            let number = {
                let mut free = lock(&self.free);
                match free.segments.pop() {
                    Some(segment) => Ok(segment),
                    None => {
                        free.created += 1;
                        Err(free.created)
                    }
                }
            };
            let segment = match number {
                Ok(segment) => segment,
                Err(number) => return self.create(number),
            };
            let present = {
                let _writing = self.watch.writing();
                segment.file.still_at_path()
            };
            if present {
                return Ok(segment);
            }
            log::warn!(
                "The segment file {} was deleted or replaced while the coordinator runs: the \
                 next writes go to a new one (the jobs whose bytes were in it are lost at the \
                 next start)",
                segment.file.path().display()
            );
            self.close(segment);
        }
    }

    fn create(&self, mut number: u64) -> io::Result<OpenSegment> {
        loop {
            let name = format!("{}-{number:06}", self.prefix);
            let path = self.dir.join(&name);
            // Registered as open before the file exists: a retention sweep that lists the
            // directory must never find a new segment it may retire and delete.
            let reserved = lock(&self.open).insert(name.clone());
            let created = if reserved {
                let _writing = self.watch.writing();
                File::options()
                    .read(true)
                    .append(true)
                    .create_new(true)
                    .open(&path)
            } else {
                Err(io::ErrorKind::AlreadyExists.into())
            };
            if created.is_err() && reserved {
                lock(&self.open).remove(&name);
            }
            match created {
                Ok(file) => {
                    let file = Arc::new(SegmentFile {
                        path,
                        name,
                        file,
                        remove_when_unused: self
                            .remove_when_unused
                            .then(|| Arc::clone(&self.removals)),
                        dir_synced: AtomicBool::new(false),
                        watch: Some(Arc::clone(&self.watch)),
                        _reading: None,
                    });
                    return Ok(OpenSegment {
                        out: None,
                        file,
                        len: 0,
                        jobs: 0,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    number = {
                        let mut free = lock(&self.free);
                        free.created += 1;
                        free.created
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives a segment back after a writer flushed it. A full one is closed, and so is one
    /// retired meanwhile; with `remove_when_unused`, so is one that nothing refers to any more
    /// (its file goes).
    pub fn give_back(&self, segment: OpenSegment) {
        let retired = lock(&self.retiring).contains(segment.file.name());
        if segment.len >= SEGMENT_MAX
            || segment.jobs >= SEGMENT_MAX_JOBS
            || retired
            || self.unused(&segment)
        {
            self.close(segment);
            return;
        }
        lock(&self.free).segments.push(segment);
    }

    /// Closes a segment for writing.
    fn close(&self, segment: OpenSegment) {
        // Not open first: a retire that saw it open has marked it by then.
        lock(&self.open).remove(segment.file.name());
        lock(&self.retiring).remove(segment.file.name());
    }

    /// Takes a segment out of use for writing (so that its file may be deleted once no
    /// retained job refers to it, or so that the next results start a new one): true when it
    /// is closed now (it was free, or is not open at all), false while a writer holds it; the
    /// writer's [`Segments::give_back`] then closes it.
    pub fn retire(&self, name: &str) -> bool {
        let retired = {
            let mut free = lock(&self.free);
            let at = free.segments.iter().position(|s| s.file.name() == name);
            at.map(|at| free.segments.swap_remove(at))
        };
        match retired {
            Some(segment) => {
                self.close(segment);
                true
            }
            None => {
                let open = lock(&self.open);
                let held = open.contains(name);
                if held {
                    lock(&self.retiring).insert(name.to_string());
                }
                !held
            }
        }
    }

    /// Deletes the file of segment `name`, retired first (see [`Segments::retire`]).
    pub fn delete(&self, name: &str) -> io::Result<()> {
        self.removals.remove(&self.dir.join(name))
    }

    /// The deletions and wipes of its directory's state directory.
    pub fn removals(&self) -> &Arc<Removals> {
        &self.removals
    }

    /// Zeroes `span` of segment `name` (a deleted or forgotten job's results) once no reader
    /// has it open ([`Removals::wipe`]).
    pub fn wipe(&self, name: &str, span: Span, of: WipeOf) {
        self.removals.wipe(&self.dir.join(name), span, of);
    }

    /// Cuts `segment` back to `len` bytes, dropping what was appended after it (an upload that
    /// was refused or failed, a failed collection, an output too large) unwritten: its disk
    /// space is free again at once. Only its writer appends, so no one else's bytes lie past
    /// `len`. While a snapshot is under way the file keeps its length (see
    /// [`Removals::cut_back`]): the next appends go after the bytes cut, which no record refers
    /// to and which are wiped once the snapshot ends.
    pub fn cut_back(&self, segment: &mut OpenSegment, len: u64) -> io::Result<()> {
        if let Some(out) = segment.out.take() {
            // Dropping the buffer unwritten (a plain drop would write it out).
            let _ = out.into_parts();
        }
        let _writing = self.watch.writing();
        let file = &segment.file;
        segment.len = self.removals.cut_back(&file.file, &file.path, len)?;
        Ok(())
    }

    /// Closes a segment that failed while written (its writer was dropped).
    pub fn discard(&self, segment: OpenSegment) {
        self.close(segment);
    }

    /// Closes the free segments that nothing refers to any more (their files go).
    pub fn sweep(&self) {
        if self.remove_when_unused {
            let unused: Vec<OpenSegment> = {
                let mut free = lock(&self.free);
                let (unused, used) = free.segments.drain(..).partition(|s| self.unused(s));
                free.segments = used;
                unused
            };
            for segment in unused {
                self.close(segment);
            }
        }
    }

    fn unused(&self, segment: &OpenSegment) -> bool {
        // The segment itself holds one reference, and one more while it has a write buffer.
        let own = 1 + usize::from(segment.out.is_some());
        self.remove_when_unused && Arc::strong_count(&segment.file) <= own
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Segments named `1-<n>` in `dir` (with `remove_when_unused`, a file goes once unused).
    fn segments_in(dir: &tempfile::TempDir, remove_when_unused: bool) -> Segments {
        Segments::open(
            dir.path().to_path_buf(),
            "1".to_string(),
            remove_when_unused,
            Arc::default(),
        )
        .expect("segments")
    }

    /// A retention sweep lists the directory while writers create segments: a segment being
    /// created is never retired (and deleted) under its writer.
    #[test]
    fn a_sweep_never_retires_a_segment_while_it_is_created() {
        let dir = tempfile::tempdir().expect("temp dir");
        let segments = Arc::new(segments_in(&dir, false));
        let done = Arc::new(AtomicBool::new(false));
        let sweeper = {
            let (segments, done) = (Arc::clone(&segments), Arc::clone(&done));
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    for entry in std::fs::read_dir(segments.dir()).into_iter().flatten() {
                        let name = entry.map(|e| e.file_name().to_string_lossy().into_owned());
                        if let Some(name) = name.ok().filter(|n| segments.retire(n)) {
                            let _ = std::fs::remove_file(segments.dir().join(name));
                        }
                    }
                }
            })
        };
        let mut deleted = 0;
        for _ in 0..3000 {
            let segment = segments.take().expect("take");
            if !segments.dir().join(segment.file().name()).exists() {
                deleted += 1;
            }
            segments.discard(segment);
        }
        done.store(true, Ordering::SeqCst);
        sweeper.join().expect("sweeper");
        assert_eq!(deleted, 0, "segments deleted while their writer held them");
    }

    /// A segment retired while a writer holds it is closed when the writer gives it back: the
    /// next writer starts a new one, and the retired one can go.
    #[test]
    fn a_segment_retired_under_its_writer_is_closed_when_given_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let segments = segments_in(&dir, false);
        let mut held = segments.take().expect("take");
        let name = held.file().name().to_string();
        held.write_all(b"results").expect("write");
        assert!(!segments.retire(&name), "retired under its writer");
        segments.give_back(held);
        let next = segments.take().expect("take");
        assert_ne!(
            next.file().name(),
            name,
            "the retired segment was written again"
        );
        assert!(segments.retire(&name), "still open once given back");
        segments.give_back(next);
    }

    /// A free segment whose file was deleted, or replaced by another file, under the
    /// coordinator takes no more writes: the next writer gets a new file, and the file put in
    /// the old one's place is left alone.
    #[test]
    fn a_segment_deleted_or_replaced_under_the_coordinator_is_written_no_more() {
        let dir = tempfile::tempdir().expect("temp dir");
        let segments = segments_in(&dir, true);
        let mut held = Some(segments.take().expect("take"));
        for replace in [false, true] {
            let mut segment = held.take().expect("a segment");
            segment.write_all(b"upload").expect("write");
            segment.flush().expect("flush");
            let keep = Arc::clone(segment.file());
            let path = keep.path().to_path_buf();
            segments.give_back(segment);
            std::fs::remove_file(keep.path()).expect("deleted");
            if replace {
                std::fs::write(keep.path(), b"another file").expect("another file");
            }
            let next = segments.take().expect("take");
            assert_ne!(next.file().name(), keep.name(), "written again");
            assert!(next.file().path().exists(), "the new segment has a file");
            drop(keep);
            assert_eq!(
                std::fs::read(&path).ok(),
                replace.then(|| b"another file".to_vec()),
            );
            held = Some(next);
        }
    }
}
