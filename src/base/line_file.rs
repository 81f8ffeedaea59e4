//! `LineFile`: a file of text lines written by a thread of its own. A sender never waits on the
//! disk: a line that finds the queue full (a slow or frozen disk) is dropped and counted. The
//! file is reopened on request (after a log rotation moved it away), and a failed write is
//! counted and logged at most once a minute.

use crate::base::log_repeats::{Repeats, REPEAT_PERIOD};
use crossbeam_channel::{Receiver, Sender};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Lines waiting for the writer thread, at most.
pub const QUEUED_LINES: usize = 2048;
/// Bytes the writer gathers before a write.
const WRITE_BUFFER: usize = 64 * 1024;
/// Stack size of the writer thread.
const WRITER_STACK: usize = 256 * 1024;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineTarget {
    /// The process's standard output (`-`).
    Stdout,
    /// A file, appended to (created with mode 0640 if missing).
    File(PathBuf),
}

impl fmt::Display for LineTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("-"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// An opened target: where lines are written, and the file itself when it is one (to cut a
/// torn line back off it).
type Opened = (Box<dyn Write + Send>, Option<File>);

impl LineTarget {
    /// Opens the target for appending.
    fn open(&self) -> io::Result<Opened> {
        match self {
            Self::Stdout => Ok((Box::new(io::stdout()), None)),
            Self::File(path) => {
                let file: File = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(path)?;
                let handle = file.try_clone().ok();
                Ok((Box::new(file), handle))
            }
        }
    }
}

/// What the writer thread is sent.
enum Message {
    /// One line, newline included.
    Line(String),
    /// Write out every line sent before, then answer.
    Flush(Sender<()>),
    /// Look at the reopen request now.
    Wake,
}

/// The lines written, dropped (queue full) and lost to a failed write.
#[derive(Debug, Default)]
pub struct LineFigures {
    /// Lines written.
    pub written: AtomicU64,
    /// Lines dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Lines lost to a failed write.
    pub failed: AtomicU64,
}

/// A file of lines written by its own thread.
pub struct LineFile {
    target: LineTarget,
    sender: Sender<Message>,
    reopen: Arc<AtomicBool>,
    figures: Arc<LineFigures>,
}

impl LineFile {
    /// Opens `target` (an error here is the caller's to report) and starts its writer thread,
    /// named `name`.
    pub fn open(target: LineTarget, name: &str) -> io::Result<LineFile> {
        let opened = target.open()?;
        LineFile::start(target, opened, name, QUEUED_LINES)
    }

    fn start(
        target: LineTarget,
        (out, file): Opened,
        name: &str,
        queued: usize,
    ) -> io::Result<LineFile> {
        let (sender, receiver) = crossbeam_channel::bounded(queued);
        let reopen = Arc::new(AtomicBool::new(false));
        let figures = Arc::new(LineFigures::default());
        let writer = Writer {
            target: target.clone(),
            out: BufWriter::with_capacity(WRITE_BUFFER, out),
            whole: Whole::of(file),
            reopen: Arc::clone(&reopen),
            figures: Arc::clone(&figures),
            failures: Repeats::new(REPEAT_PERIOD),
            drops: Repeats::new(REPEAT_PERIOD),
            dropped_seen: 0,
        };
        thread::Builder::new()
            .name(name.to_string())
            .stack_size(WRITER_STACK)
            .spawn(move || writer.run(&receiver))?;
        Ok(LineFile {
            target,
            sender,
            reopen,
            figures,
        })
    }

    /// Queues `line` (with its newline); drops it when the queue is full.
    pub fn push(&self, line: String) {
        if self.sender.try_send(Message::Line(line)).is_err() {
            self.figures.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reopens the target before the next line (a rotation moved the file away). The writer
    /// is woken for it; when the queue is full, it is busy and sees the request after its
    /// round.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::SeqCst);
        let _ = self.sender.try_send(Message::Wake);
    }

    /// Waits up to `within` until every line queued before is written out; false if it was
    /// not (a disk that does not answer).
    pub fn flush(&self, within: Duration) -> bool {
        let (done, flushed) = crossbeam_channel::bounded(1);
        if self
            .sender
            .send_timeout(Message::Flush(done), within)
            .is_err()
        {
            return false;
        }
        flushed.recv_timeout(within).is_ok()
    }

    /// Where the lines go.
    pub fn target(&self) -> &LineTarget {
        &self.target
    }

    /// Its figures.
    pub fn figures(&self) -> &LineFigures {
        &self.figures
    }
}

/// The file being written and its length when it last ended in a whole line: a write that
/// fails part-way (a full disk) is cut back to it, so no torn line is left for the next one to
/// join. A file made shorter meanwhile (rotated by truncation) is left as it is.
struct Whole {
    file: Option<File>,
    len: u64,
}

impl Whole {
    fn of(file: Option<File>) -> Self {
        let len = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Whole { file, len }
    }

    /// The file ends in a whole line now.
    fn mark(&mut self) {
        if let Some(len) = self.file.as_ref().and_then(|f| f.metadata().ok()) {
            self.len = len.len();
        }
    }

    /// Cuts off what a failed write left past the last whole line.
    fn cut_back(&self) {
        let Some(file) = &self.file else {
            return;
        };
        if file.metadata().is_ok_and(|m| m.len() > self.len) {
            let _ = file.set_len(self.len);
        }
    }
}

/// The writer thread's side.
struct Writer {
    target: LineTarget,
    out: BufWriter<Box<dyn Write + Send>>,
    whole: Whole,
    reopen: Arc<AtomicBool>,
    figures: Arc<LineFigures>,
    failures: Repeats,
    drops: Repeats,
    dropped_seen: u64,
}

impl Writer {
    fn run(mut self, receiver: &Receiver<Message>) {
        let mut unflushed = 0u64;
        while let Ok(first) = receiver.recv() {
            let mut waiting = Vec::new();
            let round = std::iter::once(first).chain(receiver.try_iter().take(QUEUED_LINES));
            for message in round {
                match message {
                    Message::Line(line) => {
                        unflushed += 1;
                        if let Err(e) = self.out.write_all(line.as_bytes()) {
                            self.failed(&e, &mut unflushed);
                        }
                    }
                    Message::Flush(done) => waiting.push(done),
                    Message::Wake => self.reopen_if_asked(&mut unflushed),
                }
            }
            self.write_out(&mut unflushed);
            for done in waiting {
                let _ = done.send(());
            }
            self.note_drops();
            // A request whose wake-up found the queue full.
            self.reopen_if_asked(&mut unflushed);
        }
        let _ = self.out.flush();
    }

    /// Writes out the `unflushed` lines buffered, and counts them written or failed.
    fn write_out(&mut self, unflushed: &mut u64) {
        if *unflushed == 0 {
            return;
        }
        match self.out.flush() {
            Ok(()) => {
                self.whole.mark();
                self.figures
                    .written
                    .fetch_add(std::mem::take(unflushed), Ordering::Relaxed);
            }
            Err(e) => self.failed(&e, unflushed),
        }
    }

    /// A write failed: the lines not written out since the last flush are lost.
    fn failed(&mut self, e: &io::Error, unflushed: &mut u64) {
        self.figures
            .failed
            .fetch_add(std::mem::take(unflushed), Ordering::Relaxed);
        // What the buffer held is gone with the failed write: start clean on the same file.
        let out = std::mem::replace(&mut self.out, BufWriter::new(Box::new(io::sink())));
        let (inner, _lost) = out.into_parts();
        self.out = BufWriter::with_capacity(WRITE_BUFFER, inner);
        self.whole.cut_back();
        if let Some(held) = self.failures.check(Instant::now()) {
            log::warn!(
                "Could not write to {}: {e}; its lines are lost until writes succeed again{}",
                self.target,
                Repeats::suffix(held)
            );
        }
    }

    /// Logs, at most once a minute, that lines were dropped since the last look.
    fn note_drops(&mut self) {
        let dropped = self.figures.dropped.load(Ordering::Relaxed);
        if dropped == self.dropped_seen {
            return;
        }
        if let Some(held) = self.drops.check(Instant::now()) {
            log::warn!(
                "{} lines for {} were dropped: they came faster than it took them (a slow disk?){}",
                dropped - self.dropped_seen,
                self.target,
                Repeats::suffix(held)
            );
            self.dropped_seen = dropped;
        }
    }

    /// When a reopen was asked for: opens the target again, after writing out what the old
    /// one is owed; on failure the old file stays in use.
    fn reopen_if_asked(&mut self, unflushed: &mut u64) {
        if !self.reopen.swap(false, Ordering::SeqCst) {
            return;
        }
        self.write_out(unflushed);
        match self.target.open() {
            Ok((out, file)) => {
                self.out = BufWriter::with_capacity(WRITE_BUFFER, out);
                self.whole = Whole::of(file);
                log::info!("Reopened {}", self.target);
            }
            Err(e) => log::error!(
                "Could not reopen {} ({e}); writing on to the file it had open",
                self.target
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn read(path: &std::path::Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn lines_are_appended_flushed_and_the_file_is_reopened_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("access.log");
        std::fs::write(&path, "kept\n").unwrap_or_else(|e| panic!("{e}"));
        let file = LineFile::open(LineTarget::File(path.clone()), "line-test")
            .unwrap_or_else(|e| panic!("{e}"));
        file.push("one\n".into());
        assert!(file.flush(Duration::from_secs(10)));
        assert_eq!(read(&path), "kept\none\n");
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap_or_else(|e| panic!("{e}"));
        file.push("two\n".into());
        assert!(file.flush(Duration::from_secs(10)));
        file.reopen();
        file.push("three\n".into());
        assert!(file.flush(Duration::from_secs(10)));
        assert_eq!(read(&rotated), "kept\none\ntwo\n");
        assert_eq!(read(&path), "three\n");
        assert_eq!(file.figures().written.load(Ordering::Relaxed), 3);
        let mode = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
        assert_eq!(mode.ok(), Some(0o640));
    }

    #[test]
    fn a_writer_stuck_on_its_file_never_holds_up_a_sender() {
        // A pipe nobody reads: the writer blocks once the pipe's buffer is full.
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe() writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the write end was just opened and is owned by nothing else.
        let stuck: File = unsafe { File::from_raw_fd(fds[1]) };
        let file = LineFile::start(
            LineTarget::Stdout,
            (Box::new(stuck), None),
            "line-stuck",
            16,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let line = "x".repeat(1023) + "\n";
        // Lines one by one, each written out, until the pipe is full and a write blocks.
        let stuck = (0..1000).find(|_| {
            file.push(line.clone());
            !file.flush(Duration::from_millis(500))
        });
        assert!(stuck.is_some(), "the writer never blocked");
        let dropped = || file.figures().dropped.load(Ordering::Relaxed);
        let before = dropped();
        let started = Instant::now();
        for _ in 0..2000 {
            file.push(line.clone());
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(dropped() - before >= 2000 - 16, "{}", dropped() - before);
        // SAFETY: the read end is ours, closed once.
        unsafe { libc::close(fds[0]) };
    }
}
