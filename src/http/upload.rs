//! `POST /submit`: streams a multipart upload part by part into the spool (a large one never
//! whole into memory), validates it, and queues the job. A refused upload leaves nothing behind.

use crate::base::clock::unix_now;
use crate::base::job::{InputFile, Job, PoolStatus, Priority, Reruns, Span, SubmitKey};
use crate::base::labels::{self, MAX_LABELS, MAX_LABEL_LEN};
use crate::base::paths::is_safe_component;
use crate::base::shortage::is_shortage;
use crate::base::sync::Slot;
use crate::http::auth::Caller;
use crate::http::sandrun_parts::{
    self, ArchiveCheck, ArchiveFault, ArchivesRefusedBy, EntrypointSource, PartError, StartError,
    Unpacking, Watched,
};
use crate::http::submit_key::{Hashing, PartsDigest, HEADER};
use crate::pool::dispatch::{self, Assignment};
use crate::pool::scheduler;
use crate::state::context::Context;
use crate::state::pool_state::PoolState;
use crate::state::submits_pause::SubmitsPause;
use crate::store::dir_access::is_permission_denied;
use crate::store::disk_reserve::{DiskReserve, Room};
use crate::store::handoff::DEFERRAL;
use crate::store::jobs_db::{is_unwritable_disk, Record, StoreError, Ticket};
use crate::store::segments::SegmentFile;
use crate::store::spool::{CopyError, StoredUpload};
use crate::worker::multipart_body::{submit_body_length, SUBMIT_HEAD_ROOM, WORKER_MAX_REQUEST};
use crate::worker::save_rules;
use multipart::server::Multipart;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest accepted manifest part.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Why a submit was refused.
#[derive(Debug)]
pub enum UploadError {
    /// No or another `Content-Type` than multipart/form-data.
    NotMultipart(Option<String>),
    /// multipart/form-data without a boundary.
    NoBoundary,
    /// Two `Content-Type` headers, or two boundary parameters in one (which: "Content-Type
    /// header", "boundary parameter"): a proxy may read the other.
    GivenTwice(&'static str),
    /// A boundary longer than [`MAX_BOUNDARY`] (its length).
    LongBoundary(usize),
    /// The body is larger than `--max-upload-bytes`.
    TooLarge(u64),
    /// The body is not well-formed multipart (truncated, bad headers).
    Malformed(String),
    /// Nothing of the body arrived for `--client-timeout` (its value).
    Stalled(Duration),
    /// The connection ended before the body's `Content-Length` (or, `chunked`, its last chunk).
    Cut {
        /// Whether the body was chunked.
        chunked: bool,
    },
    /// No `files` part.
    NoFiles,
    /// A `files` part without a filename.
    MissingFilename,
    /// A filename that cannot be a plain file name.
    BadFilename(String),
    /// A filename holding an archive's extension (the second) where it does not end: sandrun
    /// would unpack the file as an archive (see `save_rules::hidden_archive`).
    HiddenArchive(String, &'static str),
    /// A file or the manifest that a sandrun worker would not take as sent.
    Part(PartError),
    /// A filename longer than [`MAX_NAME_BYTES`] (its length).
    LongFilename(usize),
    /// A `files` part whose `Content-Type` is longer than [`MAX_NAME_BYTES`] (its filename and
    /// the type's length).
    LongContentType(String, usize),
    /// Two `files` parts with the same filename.
    DuplicateFilename(String),
    /// More `files` parts than `--max-files` (the limit, and whether archives may be sent).
    TooManyFiles { max: usize, archives: bool },
    /// The job's submit to its worker would be this many bytes, head included: more than
    /// sandrun takes in one request.
    TooLargeForWorker(u64),
    /// The manifest is not a JSON object (or too large, or given twice).
    BadManifest(String),
    /// A part name other than `files`, `manifest`, `priority`, `queue_timeout`, `reruns` and
    /// `labels`.
    UnknownPart(String),
    /// The caller's key already has its `max_queued_jobs` waiting.
    TooManyQueued(usize),
    /// The queue holds `--max-queued-jobs` (`max`) jobs with those being recorded (`queued`).
    QueueFull {
        /// Jobs queued or being recorded.
        queued: usize,
        /// `--max-queued-jobs`.
        max: usize,
    },
    /// The job's file names, content types and labels (`job` bytes; 0 when the body is not
    /// read yet) do not fit beside the `held` bytes of the jobs not yet ended, at most `max`
    /// (`--max-names-bytes`).
    NamesFull {
        /// What the job's names take ([`Job::names_bytes`]).
        job: u64,
        /// What the jobs in the table hold.
        held: u64,
        /// `--max-names-bytes`.
        max: u64,
    },
    /// Submits were paused while the body arrived (for this many seconds now).
    Paused(f64),
    /// A priority that is not `high`, `normal` or `low`, or given twice.
    BadPriority(String),
    /// A queue timeout that is not a positive number of seconds, or is given twice.
    BadQueueTimeout(String),
    /// A queue timeout of this many seconds, longer than `--queue-timeout` (the second).
    LongQueueTimeout(f64, f64),
    /// A number of reruns that is not a whole number, is more than `--max-reruns`, or is given
    /// twice.
    BadReruns(String),
    /// Labels that are not valid, or given twice: the whole clause that says so.
    BadLabels(String),
    /// An option's part (`part`) longer than its `max` bytes.
    LongOption {
        /// The part's name.
        part: &'static str,
        /// Its most bytes.
        max: u64,
    },
    /// An option's part (named) that is not UTF-8 text.
    OptionNotText(&'static str),
    /// No worker in the allowlist carries every label the job asks for (the labels asked, and
    /// those the workers carry).
    NoWorkerWithLabels(String, String),
    /// Another submit with the same `Idempotency-Key` is being received or recorded.
    SubmitKeyBusy(String),
    /// The `Idempotency-Key` made job `job_id` from a submit that held something else.
    SubmitKeyReused {
        /// The key.
        key: String,
        /// The job it made.
        job_id: String,
    },
    /// The upload would cut into the room kept on the state directory's filesystem.
    DiskReserve(Room),
    /// The spool could not be written.
    Spool(io::Error),
    /// The state directory's filesystem has no inode left for a new segment file.
    NoInodes(Room),
    /// The job store could not record the job.
    Store(StoreError),
}

impl UploadError {
    /// A full state directory told as one out of inodes when that is why (its bytes may be
    /// free while no file can be created); any other error as it is.
    pub fn naming_inodes(self, reserve: &DiskReserve) -> UploadError {
        match self {
            Self::Spool(e) if e.raw_os_error() == Some(libc::ENOSPC) => match reserve.room() {
                Ok(room) if room.out_of_inodes() => Self::NoInodes(room),
                _ => Self::Spool(e),
            },
            other => other,
        }
    }

    /// The HTTP status for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotMultipart(_) => 415,
            Self::Stalled(_) => 408,
            Self::TooLarge(_) | Self::TooManyFiles { .. } | Self::TooLargeForWorker(_) => 413,
            Self::TooManyQueued(_) => 429,
            Self::Part(PartError::Archive(_, ArchiveFault::TooLarge(_))) => 413,
            Self::NamesFull { job, max, .. } if job > max => 413,
            Self::NamesFull { .. } | Self::QueueFull { .. } => 503,
            Self::Paused(_) => 503,
            Self::SubmitKeyBusy(_) => 409,
            Self::SubmitKeyReused { .. } => 422,
            Self::DiskReserve(_) | Self::NoInodes(_) => 507,
            Self::Spool(e) if e.raw_os_error() == Some(libc::ENOSPC) => 507,
            Self::Spool(e)
                if is_unwritable_disk(e) || is_shortage(e) || is_permission_denied(e) =>
            {
                503
            }
            Self::Spool(_) => 500,
            Self::Store(e) if e.is_full() => 507,
            Self::Store(StoreError::Closed) => 503,
            Self::Store(e) if e.is_locked() || e.is_unwritable() => 503,
            Self::Store(_) => 500,
            _ => 400,
        }
    }
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMultipart(ct) => write!(
                f,
                "the body must be multipart/form-data (got Content-Type {}); send files with curl -F files=@main.py",
                ct.as_deref().unwrap_or("none")
            ),
            Self::NoBoundary => write!(f, "the multipart/form-data Content-Type has no boundary parameter"),
            Self::GivenTwice(what) => write!(f, "the submit carries more than one {what}; give one"),
            Self::LongBoundary(len) => write!(
                f,
                "the multipart boundary is {len} characters long, more than {MAX_BOUNDARY}; use a shorter one (RFC 2046 asks for at most 70)"
            ),
            Self::TooLarge(max) => write!(f, "the upload is larger than the limit of {max} bytes (--max-upload-bytes); send fewer or smaller files (a .tar.gz compresses them), or ask the operator for a larger --max-upload-bytes"),
            Self::Malformed(why) => write!(f, "the multipart body is malformed or truncated: {why}"),
            Self::Stalled(timeout) => write!(
                f,
                "the body stalled: nothing of it arrived for {} s (--client-timeout); send it without pauses",
                timeout.as_secs_f64()
            ),
            Self::Cut { chunked } => write!(
                f,
                "the body ended before its {}; send it whole",
                if *chunked { "last chunk" } else { "Content-Length" }
            ),
            Self::NoFiles => write!(f, "no 'files' part: upload at least one file with -F files=@FILE"),
            Self::MissingFilename => write!(f, "a 'files' part has no filename; send it as a file (-F files=@FILE)"),
            Self::BadFilename(name) => write!(
                f,
                "the filename {name:?} is not allowed: it must be a plain name without '/', '\\', '\"', '..', NUL or control characters"
            ),
            Self::HiddenArchive(name, kind) => write!(
                f,
                "the filename {name:?} holds {kind:?}: a sandrun worker takes a file whose name holds .tar.gz or .tgz anywhere for a tarball, and else one whose name holds .zip for a zip archive, and unpacks it as that, so this file would not arrive as sent; rename it so that its name holds no such extension but the one of what it is, at its end"
            ),
            Self::Part(e) => write!(f, "{e}"),
            Self::LongFilename(len) => write!(
                f,
                "a filename of {len} bytes is too long: at most {MAX_NAME_BYTES} bytes (a file name's limit on Linux)"
            ),
            Self::LongContentType(name, len) => write!(
                f,
                "the Content-Type of the file {name:?} is {len} bytes long: at most {MAX_NAME_BYTES} (a media type such as text/x-python)"
            ),
            Self::DuplicateFilename(name) => write!(f, "two 'files' parts are named {name:?}; filenames must differ"),
            Self::TooManyFiles { max, archives: true } => write!(
                f,
                "the submit holds more than {max} files (--max-files); pack them into one .tar.gz or .zip, which the worker unpacks"
            ),
            Self::TooManyFiles { max, archives: false } => write!(
                f,
                "the submit holds more than {max} files (--max-files); send fewer files (archives are refused here)"
            ),
            Self::TooLargeForWorker(bytes) => write!(
                f,
                "the job's submit to its worker would be about {bytes} bytes (its files and manifest with the multipart framing the coordinator sends: {}, and up to {SUBMIT_HEAD_ROOM} for the request's head), more than the {WORKER_MAX_REQUEST} bytes a sandrun worker takes in one request; send less, or fewer files",
                bytes - SUBMIT_HEAD_ROOM
            ),
            Self::BadManifest(why) => write!(f, "the 'manifest' part {why}"),
            Self::UnknownPart(name) => write!(f, "unknown part {name:?}: only 'files', 'manifest', 'priority', 'queue_timeout', 'reruns' and 'labels' are accepted"),
            Self::Paused(secs) => write!(
                f,
                "submits were paused by an operator while this submit's body arrived (for {secs:.0} s now); it is not queued. Submit again later, or to another coordinator"
            ),
            Self::TooManyQueued(limit) => write!(
                f,
                "this key already has {limit} jobs waiting in the queue (its max_queued_jobs); submit again once some have started"
            ),
            Self::QueueFull { queued, max } => write!(
                f,
                "the queue is full ({queued} jobs wait, the limit is --max-queued-jobs {max}); retry in a few seconds"
            ),
            Self::NamesFull { job: 0, held, max } => write!(
                f,
                "the jobs queued and running hold {held} bytes of file names, content types and labels in memory, the most --max-names-bytes {max} allows; submit again once some have ended"
            ),
            Self::NamesFull { job, max, .. } if job > max => write!(
                f,
                "this job's file names, content types and labels take {job} bytes in memory, more than --max-names-bytes {max} allows for all jobs; use fewer files (pack them into one .tar.gz or .zip) or shorter names"
            ),
            Self::NamesFull { job, held, max } => write!(
                f,
                "this job's file names, content types and labels ({job} bytes in memory) do not fit beside the {held} bytes the jobs queued and running hold (--max-names-bytes {max}); it is not queued. Submit again once some have ended"
            ),
            Self::SubmitKeyBusy(key) => write!(
                f,
                "another submit with {HEADER} {key:?} is being received right now; ask again once it is answered, and this one is answered the job it made (or makes the job, if it failed)"
            ),
            Self::SubmitKeyReused { key, job_id } => write!(
                f,
                "{HEADER} {key:?} was already used for job {job_id}, submitted with other files, manifest or options; use a new key for a new job (a key names one submit, and can be used again once its job is deleted or forgotten)"
            ),
            Self::BadPriority(why) => write!(f, "the priority {why}; use high, normal or low"),
            Self::LongQueueTimeout(secs, max) => write!(
                f,
                "the queue_timeout of {secs} s is longer than this coordinator allows (--queue-timeout {max}); give fewer seconds, or leave it out to wait the longest it allows"
            ),
            Self::BadQueueTimeout(why) => write!(
                f,
                "the queue_timeout {why}; give the seconds the job may wait for a worker, e.g. queue_timeout=600"
            ),
            Self::BadReruns(why) => write!(
                f,
                "reruns {why}; give how many times the job may run again if its run is lost \
                 (its worker dies or forgets it), e.g. reruns=2, only for a job that does no \
                 harm when it runs twice"
            ),
            Self::BadLabels(why) => write!(
                f,
                "{why}; give the labels a worker must carry to run the job, separated by commas, e.g. labels=arm64,gpu"
            ),
            Self::LongOption { part, max } => write!(
                f,
                "the '{part}' part is longer than {max} bytes, the most it may hold; give only its value, e.g. {}",
                option_example(part)
            ),
            Self::OptionNotText(part) => write!(
                f,
                "the '{part}' part is not UTF-8 text; give only its value, e.g. {}",
                option_example(part)
            ),
            Self::NoWorkerWithLabels(asked, carried) => write!(
                f,
                "no worker of this pool carries every label the job asks for ({asked}), so it could never run; the workers carry: {carried}"
            ),
            Self::DiskReserve(room) => write!(
                f,
                "the coordinator's state directory is nearly full ({} bytes free, and an upload must leave the {} bytes that --disk-reserve keeps free for the results of accepted jobs); the job was not accepted (nothing was kept); try again later, or submit to another coordinator",
                room.available, room.reserve
            ),
            Self::NoInodes(room) => write!(
                f,
                "the coordinator's state directory has no free inodes left ({} bytes are free, but no file can be created there), the job was not accepted (nothing was kept); try again later, or submit to another coordinator",
                room.available
            ),
            Self::Spool(e) if e.raw_os_error() == Some(libc::ENOSPC) => write!(
                f,
                "the coordinator's state directory is full, the job was not accepted (nothing was kept); try again later: {e}"
            ),
            Self::Spool(e) if is_unwritable_disk(e) => write!(
                f,
                "the coordinator's state directory cannot be written ({e}), the job was not accepted (nothing was kept); its disk fails or went read-only: submit elsewhere, or once the operator repaired it"
            ),
            Self::Spool(e) if is_permission_denied(e) => write!(
                f,
                "the coordinator may not create files in its state directory ({e}), the job was not accepted (nothing was kept); an operator changed the permissions of its folders (uploads/, results/): submit elsewhere, or once the operator gave the coordinator's user write permission on them back"
            ),
            Self::Spool(e) if is_shortage(e) => write!(
                f,
                "the coordinator is short of descriptors or memory to store the upload ({e}), the job was not accepted (nothing was kept); try again shortly"
            ),
            Self::Spool(e) => write!(f, "the coordinator could not store the upload: {e}"),
            Self::Store(e) if e.is_full() => write!(
                f,
                "the coordinator's state directory is full, the job was not accepted (nothing was kept); try again later: {e}"
            ),
            Self::Store(e) if e.is_locked() => write!(
                f,
                "the coordinator could not record the job, it was not accepted (nothing was kept); try again in a few seconds: {e}"
            ),
            Self::Store(e) if e.is_unwritable() => write!(
                f,
                "the coordinator could not record the job, it was not accepted (nothing was kept); submit elsewhere, or once the operator repaired its disk: {e}"
            ),
            Self::Store(e) => write!(f, "the coordinator could not record the job, it was not accepted: {e}"),
        }
    }
}

impl std::error::Error for UploadError {}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary_of(content_type: Option<&str>) -> Result<String, UploadError> {
    let ct = content_type.ok_or(UploadError::NotMultipart(None))?;
    let mut params = ct.split(';');
    let kind = params.next().unwrap_or_default().trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return Err(UploadError::NotMultipart(Some(ct.to_string())));
    }
    let mut boundaries = params
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"));
    let (first, second) = (boundaries.next(), boundaries.next());
    if second.is_some() {
        return Err(UploadError::GivenTwice("boundary parameter"));
    }
    let boundary = first
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty())
        .ok_or(UploadError::NoBoundary)?;
    if boundary.len() > MAX_BOUNDARY {
        return Err(UploadError::LongBoundary(boundary.len()));
    }
    Ok(boundary)
}

/// The longest multipart boundary taken (RFC 2046 allows 70; some clients make longer ones).
const MAX_BOUNDARY: usize = 200;

/// How often a body of unknown length checks the disk reserve as it streams in.
const RESERVE_CHECK_BYTES: u64 = 1 << 20;

/// Longest `labels` part: every label at its longest, with a comma and a space after each.
const LABELS_PART_MAX: u64 = (MAX_LABELS * (MAX_LABEL_LEN + 2)) as u64;

/// Why reading a submit's body stopped, when its reader and not the multipart in it failed.
#[derive(Clone, Copy)]
enum BodyFault {
    /// Past `--max-upload-bytes`.
    Crossed,
    /// A body of unknown length cut into the disk reserve.
    Short(Room),
    /// Nothing arrived for `--client-timeout`.
    Stalled,
    /// The connection ended before the body's `Content-Length` or last chunk.
    Cut,
}

/// The body of a submit: at most `--max-upload-bytes`, `length` bytes when declared, and for a
/// body whose length was not declared (chunked), which the headers could not check against the
/// disk reserve, the reserve checked every [`RESERVE_CHECK_BYTES`]. A failed read says why in
/// `fault`.
struct Limited<'a, R> {
    inner: R,
    remaining: u64,
    length: Option<u64>,
    read: u64,
    reserve: Option<&'a DiskReserve>,
    unchecked: u64,
    fault: &'a Cell<Option<BodyFault>>,
}

impl<R: Read> Limited<'_, R> {
    /// Fails the read, noting why.
    fn fail(&self, fault: BodyFault, e: io::Error) -> io::Result<usize> {
        self.fault.set(Some(fault));
        Err(e)
    }
}

impl<R: Read> Read for Limited<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() && self.length.is_some_and(|l| self.read < l) => {
                let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                return self.fail(BodyFault::Cut, e);
            }
            Ok(n) => n,
            Err(e) => {
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        self.fail(BodyFault::Stalled, e)
                    }
                    io::ErrorKind::UnexpectedEof => self.fail(BodyFault::Cut, e),
                    _ => Err(e),
                }
            }
        };
        if n as u64 > self.remaining {
            return self.fail(BodyFault::Crossed, io::Error::other("upload limit crossed"));
        }
        self.remaining -= n as u64;
        self.read += n as u64;
        if let Some(reserve) = self.reserve {
            self.unchecked += n as u64;
            if self.unchecked >= RESERVE_CHECK_BYTES {
                self.unchecked = 0;
                if let Err(room) = reserve.admit(0) {
                    let e = io::Error::other("the disk reserve was reached");
                    return self.fail(BodyFault::Short(room), e);
                }
            }
        }
        Ok(n)
    }
}

/// The longest filename, and the longest `Content-Type` of a file, a submit may give.
const MAX_NAME_BYTES: usize = 255;

fn check_filename(name: &str) -> Result<(), UploadError> {
    if name.len() > MAX_NAME_BYTES {
        Err(UploadError::LongFilename(name.len()))
    } else if !is_safe_component(name) || name.contains('"') {
        Err(UploadError::BadFilename(name.to_string()))
    } else if let Some(kind) = save_rules::hidden_archive(name) {
        Err(UploadError::HiddenArchive(name.to_string(), kind))
    } else {
        Ok(())
    }
}

/// The multipart parser reports a bad part header with an unhelpful text (its error type is
/// private, so its text is all there is to go by); say what it means and how to fix it.
fn describe_parse_error(e: &io::Error) -> String {
    let text = e.to_string();
    // Its own errors' texts begin with std's default description, then a colon.
    let detail = text.split_once(": ").map_or("", |(_, rest)| rest);
    if text.contains("unexpected Content-Disposition value") {
        let got = detail.rsplit(": ").next().unwrap_or_default().trim();
        format!(
            "a part's Content-Disposition is {got:?}, not form-data; begin each part with \
             Content-Disposition: form-data; name=\"files\"; filename=\"main.py\" (or name=\"manifest\")"
        )
    } else if text.contains("Content-Disposition type") || text.contains("expected field name") {
        "a part's Content-Disposition has no name; give it as form-data; name=\"files\"; \
         filename=\"main.py\" (or name=\"manifest\")"
            .to_string()
    } else if let Some((_, what)) = text.split_once("invalid \"Content-Disposition\" header: ") {
        format!(
            "a part's Content-Disposition cannot be read unambiguously ({what}); give it as \
             form-data; name=\"files\"; filename=\"main.py\": each parameter once, values in \
             double quotes without a backslash"
        )
    } else if let Some((_, header)) = text.split_once("a header given twice in one part: ") {
        format!(
            "a part carries more than one {header} header (readers differ on which counts); \
             send one"
        )
    } else if text.contains(":\n") {
        "a part has no Content-Disposition header; begin each part with Content-Disposition: \
         form-data; name=\"files\"; filename=\"main.py\" (or name=\"manifest\")"
            .to_string()
    } else if text.contains("too many headers") {
        format!(
            "a part carries more than {MAX_PART_HEADERS} header lines; send Content-Disposition \
             and Content-Type only"
        )
    } else if text.contains("header") || text.contains("new line") {
        "a part's headers are invalid (control characters, NUL or bad encoding in a name or filename?)"
            .to_string()
    } else if text == "TooLarge" {
        "a part's headers are too large or never end with a blank line (a filename of more than 255 bytes?)"
            .to_string()
    } else if text.contains("utf-8") {
        "a part's headers are not UTF-8 (a name or filename in another encoding?)".to_string()
    } else if !detail.is_empty() && text.starts_with("description()") {
        format!(
            "a part's Content-Type {:?} is not a media type; give one such as \
             text/plain or application/octet-stream, or none",
            detail.trim()
        )
    } else {
        text
    }
}

/// The most header lines a part may carry (the multipart parser's limit).
const MAX_PART_HEADERS: usize = 4;

/// What an upload holds besides its bytes in the spool.
struct Parts {
    inputs: Vec<InputFile>,
    manifest: Option<Span>,
    options: SubmitOptions,
}

/// A submit's options, given as parts or in the query (`?priority=`, `?queue_timeout=`,
/// `?reruns=`, `?labels=`).
#[derive(Debug, Default, Clone)]
pub struct SubmitOptions {
    /// Its priority.
    pub priority: Option<Priority>,
    /// Seconds it may wait in the queue.
    pub queue_timeout: Option<f64>,
    /// Reruns after a lost run.
    pub reruns: Option<u32>,
    /// The labels a worker must carry to run it (sorted).
    pub labels: Option<Vec<String>>,
}

/// The query parameters a submit takes: its options.
pub const QUERY_NAMES: [&str; 4] = ["priority", "queue_timeout", "reruns", "labels"];

impl SubmitOptions {
    /// Parses the options of a query (`name` to its value, when given).
    pub fn from_query(param: impl Fn(&str) -> Option<String>) -> Result<Self, UploadError> {
        Ok(SubmitOptions {
            priority: param("priority").map(|p| parse_priority(&p)).transpose()?,
            queue_timeout: param("queue_timeout")
                .map(|t| parse_queue_timeout(&t))
                .transpose()?,
            reruns: param("reruns").map(|n| parse_reruns(&n)).transpose()?,
            labels: param("labels").map(|l| parse_labels(&l)).transpose()?,
        })
    }

    /// Feeds the options as given (not as defaulted) into a submit's digest.
    fn feed(&self, digest: &mut PartsDigest) {
        digest.field(b"options");
        let mut given = format!(
            "{:?} {:?} {:?}",
            self.priority.map(Priority::as_str),
            self.queue_timeout,
            self.reruns
        );
        // Only when given: the digests of submits without labels stay as they were.
        if let Some(labels) = &self.labels {
            given.push_str(&format!(" {labels:?}"));
        }
        digest.field(given.as_bytes());
    }

    /// These options with those of the parts; an option given in both is refused.
    fn merged(self, parts: SubmitOptions) -> Result<SubmitOptions, UploadError> {
        if self.priority.is_some() && parts.priority.is_some() {
            return Err(UploadError::BadPriority(
                "is given both as a part and in the query".to_string(),
            ));
        }
        if self.queue_timeout.is_some() && parts.queue_timeout.is_some() {
            return Err(UploadError::BadQueueTimeout(
                "is given both as a part and in the query".to_string(),
            ));
        }
        if self.reruns.is_some() && parts.reruns.is_some() {
            return Err(UploadError::BadReruns(
                "is given both as a part and in the query".to_string(),
            ));
        }
        if self.labels.is_some() && parts.labels.is_some() {
            return Err(UploadError::BadLabels(
                "the labels are given both as a part and in the query".to_string(),
            ));
        }
        Ok(SubmitOptions {
            priority: self.priority.or(parts.priority),
            queue_timeout: self.queue_timeout.or(parts.queue_timeout),
            reruns: self.reruns.or(parts.reruns),
            labels: self.labels.or(parts.labels),
        })
    }
}

/// An option part's name with a value it may hold, for a refusal's text.
fn option_example(part: &str) -> &'static str {
    match part {
        "priority" => "priority=high",
        "queue_timeout" => "queue_timeout=600",
        "reruns" => "reruns=2",
        _ => "labels=arm64,gpu",
    }
}

/// Parses labels given in a part or in the query: separated by commas.
fn parse_labels(text: &str) -> Result<Vec<String>, UploadError> {
    labels::parse_text(text).map_err(|e| UploadError::BadLabels(e.to_string()))
}

/// `Ok` when some worker of the pool (draining or not, healthy or not) carries every label in
/// `asked`, else the refusal naming the labels the workers carry. Without labels the pool
/// lock is not taken.
pub fn check_labels(ctx: &Context, asked: &[String]) -> Result<(), UploadError> {
    if asked.is_empty() {
        return Ok(());
    }
    let st = ctx.lock();
    if st.carries_labels(asked) {
        return Ok(());
    }
    let mut carried: Vec<&str> = st
        .listed_workers()
        .flat_map(|w| w.spec.labels.iter().map(String::as_str))
        .collect();
    carried.sort_unstable();
    carried.dedup();
    let carried = if carried.is_empty() {
        "no labels".to_string()
    } else {
        carried.join(", ")
    };
    Err(UploadError::NoWorkerWithLabels(asked.join(", "), carried))
}

/// Parses a priority given in a part or in the query.
pub fn parse_priority(text: &str) -> Result<Priority, UploadError> {
    Priority::parse(text.trim())
        .ok_or_else(|| UploadError::BadPriority(format!("{text:?} is unknown")))
}

/// The longest queue timeout a submit may give, in seconds (about 31 years: no timeout).
const MAX_QUEUE_TIMEOUT: f64 = 1e9;

/// Parses a queue timeout given in a part or in the query: seconds, above 0 and at most
/// [`MAX_QUEUE_TIMEOUT`].
fn parse_queue_timeout(text: &str) -> Result<f64, UploadError> {
    match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= MAX_QUEUE_TIMEOUT => Ok(secs),
        _ => Err(UploadError::BadQueueTimeout(format!(
            "{text:?} is not a number of seconds above 0 and at most {MAX_QUEUE_TIMEOUT}"
        ))),
    }
}

/// Parses a number of reruns given in a part or in the query: a whole number, 0 or more.
fn parse_reruns(text: &str) -> Result<u32, UploadError> {
    text.trim()
        .parse::<u32>()
        .map_err(|_| UploadError::BadReruns(format!("{text:?} is not a whole number of 0 or more")))
}

/// The reruns a job gets: those it asked for (none unless it asks), at most `--max-reruns`
/// (checked for the query before the body is read, and again with the parts).
pub fn reruns_of(ctx: &Context, asked: Option<u32>) -> Result<u32, UploadError> {
    let limit = ctx.config.max_reruns;
    match asked {
        Some(n) if n > limit => Err(UploadError::BadReruns(format!(
            "of {n} is more than this coordinator allows (--max-reruns {limit})"
        ))),
        asked => Ok(asked.unwrap_or(0)),
    }
}

/// The queue timeout a job gets: the one it asked for, at most `--queue-timeout`, or else
/// `--queue-timeout`'s (checked for the query before the body is read, and again with the
/// parts).
pub fn queue_timeout_of(ctx: &Context, asked: Option<f64>) -> Result<Option<f64>, UploadError> {
    let limit = ctx.config.queue_timeout.map(|d| d.as_secs_f64());
    match (asked, limit) {
        (Some(secs), Some(max)) if secs > max => Err(UploadError::LongQueueTimeout(secs, max)),
        (asked, limit) => Ok(asked.or(limit)),
    }
}

/// Reads an option's part whole: UTF-8 of at most `max` bytes, else refused naming `part`.
fn short_text(
    field: &mut dyn Read,
    part: &'static str,
    max: u64,
    read_error: &dyn Fn(io::Error) -> UploadError,
) -> Result<String, UploadError> {
    let mut bytes = Vec::new();
    field
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > max {
        return Err(UploadError::LongOption { part, max });
    }
    String::from_utf8(bytes).map_err(|_| UploadError::OptionNotText(part))
}

/// A submit's body, as its headers announced it.
pub struct UploadBody<'a> {
    /// The multipart boundary (see [`check_headers`], [`boundary_of`]).
    pub boundary: String,
    /// The body's bytes.
    pub reader: &'a mut dyn Read,
    /// Its declared length (`None`: chunked, so the disk reserve is checked as it streams in).
    pub length: Option<usize>,
}

/// Where [`read_parts`] puts each file and the manifest: appends what the reader yields, and
/// returns where it lies.
type Sink<'a> = dyn FnMut(&mut dyn Read) -> Result<Span, CopyError> + 'a;

/// Reads the upload into `append`; returns its inputs, its manifest's place and its options.
/// `digest`, when given, takes in every file (name, content type, bytes) and the manifest;
/// `archives_refused`, when given, refuses every file a sandrun worker would unpack.
fn read_parts(
    ctx: &Context,
    append: &mut Sink<'_>,
    body: UploadBody<'_>,
    mut digest: Option<&mut PartsDigest>,
    archives_refused: Option<&ArchivesRefusedBy>,
) -> Result<Parts, UploadError> {
    let UploadBody {
        boundary,
        reader,
        length,
    } = body;
    let fault = Cell::new(None);
    let max = ctx.config.max_upload_bytes;
    let read_error = |e: io::Error| match fault.get() {
        Some(BodyFault::Crossed) => UploadError::TooLarge(max),
        Some(BodyFault::Short(room)) => UploadError::DiskReserve(room),
        Some(BodyFault::Stalled) => UploadError::Stalled(ctx.config.client_timeout),
        Some(BodyFault::Cut) => UploadError::Cut {
            chunked: length.is_none(),
        },
        None => UploadError::Malformed(describe_parse_error(&e)),
    };
    let limited = Limited {
        inner: reader,
        remaining: max,
        length: length.map(|n| n as u64),
        read: 0,
        reserve: length.is_none().then_some(&ctx.disk_reserve),
        unchecked: 0,
        fault: &fault,
    };
    let mut multipart = Multipart::with_body(limited, boundary);
    let mut inputs: Vec<InputFile> = Vec::new();
    let mut names = HashSet::new();
    let mut manifest = None;
    let mut entrypoint = EntrypointSource::default();
    let mut unpacking = Unpacking::new(ctx.config.max_unpacked_bytes);
    let mut options = SubmitOptions::default();
    while let Some(mut field) = multipart.read_entry().map_err(read_error)? {
        match &*field.headers.name {
            "files" => {
                let filename = field
                    .headers
                    .filename
                    .clone()
                    .ok_or(UploadError::MissingFilename)?;
                check_filename(&filename)?;
                if inputs.len() >= ctx.config.max_files {
                    return Err(UploadError::TooManyFiles {
                        max: ctx.config.max_files,
                        archives: archives_refused.is_none(),
                    });
                }
                if !names.insert(filename.clone()) {
                    return Err(UploadError::DuplicateFilename(filename));
                }
                let content_type = field
                    .headers
                    .content_type
                    .as_ref()
                    .map_or_else(|| "application/octet-stream".to_string(), |m| m.to_string());
                if content_type.len() > MAX_NAME_BYTES {
                    return Err(UploadError::LongContentType(filename, content_type.len()));
                }
                let start = match sandrun_parts::read_file_start(&mut field.data, &filename) {
                    Ok(start) => start,
                    Err(StartError::Read(e)) => return Err(read_error(e)),
                    Err(StartError::Part(e)) => return Err(UploadError::Part(e)),
                };
                let mut archive = ArchiveCheck::for_file(&filename, &start, unpacking);
                if let (Some(_), Some(by)) = (&archive, archives_refused) {
                    return Err(UploadError::Part(PartError::ArchivesRefused(
                        filename,
                        by.clone(),
                    )));
                }
                if let Some(said) = start.job_json {
                    entrypoint.job_json(said);
                }
                let mut data = Watched {
                    inner: start.bytes.as_slice().chain(&mut field.data),
                    check: archive.as_mut(),
                };
                let span = match digest.as_deref_mut() {
                    Some(digest) => {
                        let mut hashing = Hashing::new(&mut data);
                        let span = append(&mut hashing);
                        for part in [b"files", filename.as_bytes(), content_type.as_bytes()] {
                            digest.field(part);
                        }
                        digest.field(&hashing.finish());
                        span
                    }
                    None => append(&mut data),
                }
                .map_err(|e| copy_error(e, &read_error))?;
                if let Some(archive) = archive {
                    let said = archive.finish(&filename, &mut unpacking);
                    if let Some(said) = said.map_err(UploadError::Part)? {
                        entrypoint.archive_job_json(said);
                    }
                }
                inputs.push(InputFile {
                    filename,
                    content_type,
                    span,
                });
            }
            "manifest" => {
                if manifest.is_some() {
                    return Err(UploadError::BadManifest("is given twice".to_string()));
                }
                let mut bytes = Vec::new();
                (&mut field.data)
                    .take(MAX_MANIFEST_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .map_err(read_error)?;
                if bytes.len() as u64 > MAX_MANIFEST_BYTES {
                    return Err(UploadError::BadManifest(format!(
                        "is larger than {MAX_MANIFEST_BYTES} bytes"
                    )));
                }
                match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(v) if v.is_object() => {}
                    Ok(_) => {
                        return Err(UploadError::BadManifest(
                            "must be a JSON object".to_string(),
                        ))
                    }
                    Err(e) => {
                        return Err(UploadError::BadManifest(format!("is not valid JSON: {e}")))
                    }
                }
                entrypoint.manifest(&bytes).map_err(UploadError::Part)?;
                if let Some(digest) = digest.as_deref_mut() {
                    digest.field(b"manifest");
                    digest.field(&bytes);
                }
                manifest =
                    Some(append(&mut bytes.as_slice()).map_err(|e| copy_error(e, &read_error))?);
            }
            "priority" => {
                let text = short_text(&mut field.data, "priority", 16, &read_error)?;
                if options.priority.replace(parse_priority(&text)?).is_some() {
                    return Err(UploadError::BadPriority("is given twice".to_string()));
                }
            }
            "queue_timeout" => {
                let text = short_text(&mut field.data, "queue_timeout", 32, &read_error)?;
                if options
                    .queue_timeout
                    .replace(parse_queue_timeout(&text)?)
                    .is_some()
                {
                    return Err(UploadError::BadQueueTimeout("is given twice".to_string()));
                }
            }
            "reruns" => {
                let text = short_text(&mut field.data, "reruns", 16, &read_error)?;
                if options.reruns.replace(parse_reruns(&text)?).is_some() {
                    return Err(UploadError::BadReruns("is given twice".to_string()));
                }
            }
            "labels" => {
                let text = short_text(&mut field.data, "labels", LABELS_PART_MAX, &read_error)?;
                if options.labels.replace(parse_labels(&text)?).is_some() {
                    return Err(UploadError::BadLabels(
                        "the labels part is given twice".to_string(),
                    ));
                }
            }
            other => return Err(UploadError::UnknownPart(other.to_string())),
        }
    }
    if inputs.is_empty() {
        return Err(UploadError::NoFiles);
    }
    entrypoint.finish().map_err(UploadError::Part)?;
    Ok(Parts {
        inputs,
        manifest,
        options,
    })
}

/// A failed read is the client's fault (`read_error` says how), a failed write the spool's.
fn copy_error(e: CopyError, read_error: &dyn Fn(io::Error) -> UploadError) -> UploadError {
    match e {
        CopyError::Read(e) => read_error(e),
        CopyError::Write(e) => UploadError::Spool(e),
    }
}

/// Checks a submit's headers before its body is read (and that its upload leaves the disk
/// reserve); returns the multipart boundary.
pub fn check_headers(
    ctx: &Context,
    content_type: Option<&str>,
    content_length: Option<usize>,
) -> Result<String, UploadError> {
    let boundary = boundary_of(content_type)?;
    let max = ctx.config.max_upload_bytes;
    if content_length.is_some_and(|n| n as u64 > max) {
        return Err(UploadError::TooLarge(max));
    }
    // A body without a length is checked for none: it may cut into the reserve by at most
    // --max-upload-bytes per upload under way.
    ctx.disk_reserve
        .admit(content_length.map_or(0, |n| n as u64))
        .map_err(UploadError::DiskReserve)?;
    Ok(boundary)
}

/// `Ok` while the caller's key may queue one more job (its `max_queued_jobs`), checked before
/// the body is read and again when the job is queued.
pub fn check_queue_room(ctx: &Context, caller: &Caller) -> Result<(), UploadError> {
    room_in(&ctx.lock(), caller)
}

fn room_in(st: &crate::state::pool_state::PoolState, caller: &Caller) -> Result<(), UploadError> {
    match (caller.name(), caller.max_queued_jobs()) {
        (Some(name), Some(limit)) if st.owner_count(name, PoolStatus::Queued) >= limit => {
            Err(UploadError::TooManyQueued(limit))
        }
        _ => Ok(()),
    }
}

/// `Ok` when the submit a dispatch sends a worker for these files and manifest fits in one
/// sandrun request: a longer one is answered 413 before its body is read, its connection
/// closed under the sender, which would take the worker for unreachable.
fn check_worker_request(inputs: &[InputFile], manifest: Option<Span>) -> Result<(), UploadError> {
    let files = inputs
        .iter()
        .map(|f| (f.filename.as_str(), f.content_type.as_str(), f.span.size));
    let bytes = submit_body_length(files, manifest.map(|m| m.size)) + SUBMIT_HEAD_ROOM;
    match bytes > WORKER_MAX_REQUEST {
        true => Err(UploadError::TooLargeForWorker(bytes)),
        false => Ok(()),
    }
}

/// `Ok` while the jobs in the table hold room for `job` bytes more of file names, content
/// types and labels (`max`, `--max-names-bytes`); `job` 0 asks whether any room is left,
/// before a body is read.
pub fn names_room(
    st: &crate::state::pool_state::PoolState,
    max: u64,
    job: u64,
) -> Result<(), UploadError> {
    let held = st.names_bytes();
    let fits = match job {
        0 => held < max,
        _ => held.saturating_add(job) <= max,
    };
    match fits {
        true => Ok(()),
        false => Err(UploadError::NamesFull { job, held, max }),
    }
}

/// Accepts a submit whose headers passed [`check_headers`]: spools the upload and queues the job;
/// returns the new job id. When a worker has room the job is assigned and its dispatch started
/// right here, before the answer: a hop through the scheduler thread costs a wake-up, which on a
/// busy machine is most of a millisecond. The scheduler is woken only when jobs still wait.
/// `query` holds the options given in the request's query (a part and the query must not both
/// give one); `submit_key` is the submit's `Idempotency-Key`, if any, held by this submit and
/// new to the store.
pub fn accept(
    ctx: &Arc<Context>,
    caller: &Caller,
    query: SubmitOptions,
    body: UploadBody<'_>,
    submit_key: Option<String>,
) -> Result<String, UploadError> {
    let id = ctx.spool.new_job_id().map_err(UploadError::Spool)?;
    // The spool registers the upload only when `finish` succeeds; a writer dropped before
    // leaves nothing behind.
    let mut writer = ctx.spool.upload_writer(&id);
    let mut digest = submit_key.as_ref().map(|_| PartsDigest::default());
    let archives_refused = caller.archives_refused(ctx.config.refuse_archives);
    let parts = read_parts(
        ctx,
        &mut |data| writer.append(data),
        body,
        digest.as_mut(),
        archives_refused.as_ref(),
    )?;
    let options = query.merged(parts.options)?;
    let queue_timeout = queue_timeout_of(ctx, options.queue_timeout)?;
    let reruns = reruns_of(ctx, options.reruns)?;
    check_labels(ctx, options.labels.as_deref().unwrap_or_default())?;
    check_worker_request(&parts.inputs, parts.manifest)?;
    let (submitted_at, submitted) = (unix_now(), Instant::now());
    let mut job = Job::new(id.clone(), parts.inputs, parts.manifest, submitted_at);
    job.submit_mark = ctx.store.wait_clock().mark_beside(submitted_at);
    job.labels = options.labels.clone().map(Vec::into_boxed_slice);
    // Checked before the record (and again, cheaply, by nobody: a concurrent submit of the
    // same key may pass too, overshooting its limit by at most the handler threads). A pause
    // that came while the body arrived refuses it: the pause answers once every submit past
    // this point is recorded. The queue's limit counts the submits being recorded, so
    // concurrent submits cannot overshoot it.
    let recording = {
        let mut st = ctx.lock();
        if let Some(secs) = st.submits_paused.as_mut().map(SubmitsPause::refuse) {
            return Err(UploadError::Paused(secs));
        }
        room_in(&st, caller)?;
        names_room(&st, ctx.config.max_names_bytes, job.names_bytes())?;
        let max = ctx.config.max_queued_jobs;
        let room = max.saturating_sub(st.queue.len());
        Slot::take(&ctx.submits_recording, room).ok_or_else(|| UploadError::QueueFull {
            queued: st.queue.len() + ctx.submits_recording.load(Ordering::Acquire),
            max,
        })?
    };
    let stored = writer.finish().map_err(UploadError::Spool)?;
    job.owner = caller.name().map(str::to_string);
    job.submit_key = submit_key.zip(digest).map(|(key, mut digest)| {
        options.feed(&mut digest);
        Box::new(SubmitKey {
            key,
            digest: digest.finish(),
        })
    });
    job.priority = options.priority.unwrap_or_default();
    job.queue_timeout = queue_timeout;
    job.reruns = (reruns > 0).then(|| {
        Box::new(Reruns {
            allowed: reruns,
            lost: Vec::new(),
        })
    });
    // The answer promises the job: its upload and then its record must be on disk first (an
    // upload in a segment is synced by the store's writer, once for the whole transaction).
    let stored = match stored {
        StoredUpload::InRow(bytes) => StoredBytes {
            held: Some(bytes),
            segment: None,
        },
        StoredUpload::OnDisk { at, file } => {
            job.upload_at = Some(at);
            StoredBytes {
                held: None,
                segment: Some(file),
            }
        }
    };
    let (recorded, direct) = match direct(ctx, &job, &stored) {
        Some((ticket, assignment)) => (ticket.wait(), Some(assignment)),
        None => {
            let record = stored.first_record(Box::new(job.clone()));
            (ctx.store.send_and_wait(record), None)
        }
    };
    if let Err(e) = recorded {
        if let Some(assignment) = &direct {
            take_back(&mut ctx.lock(), assignment);
        }
        ctx.spool.remove_upload(&id);
        return Err(UploadError::Store(e));
    }
    let (assignments, still_queued) = if direct.is_some() {
        ctx.metrics.job_submitted();
        (Vec::new(), false)
    } else {
        let mut st = ctx.lock();
        // Its queue timeout counts from its submission, before its record was committed.
        st.enqueue_waited(job, Instant::now(), Duration::ZERO, submitted.elapsed());
        // Queued now: counted there, no longer as being recorded.
        drop(recording);
        ctx.metrics.job_submitted();
        let (assignments, _) = scheduler::assign(&mut st, Instant::now());
        (assignments, !st.queue.is_empty())
    };
    log::info!("Queued job {id}{}", caller.log_label());
    if let Some(assignment) = direct {
        dispatch::start_recorded(ctx, assignment);
    }
    for assignment in assignments {
        dispatch::start(ctx, assignment);
    }
    if still_queued {
        ctx.wake_scheduler();
    }
    Ok(id)
}

/// Checks a submit that repeats the `Idempotency-Key` of `job` (its first submit's): the body is
/// read, kept nowhere, and its parts (with the query's options) compared with what the first
/// submit held. `Ok` when they are the same: the job answers this submit too.
pub fn check_repeat(
    ctx: &Context,
    query: SubmitOptions,
    body: UploadBody<'_>,
    job: &Job,
) -> Result<(), UploadError> {
    let mut digest = PartsDigest::default();
    let mut read = 0;
    let mut discard = |data: &mut dyn Read| {
        let size = io::copy(data, &mut io::sink()).map_err(CopyError::Read)?;
        read += size;
        Ok(Span {
            offset: read - size,
            size,
        })
    };
    // Only compared with the parts the first submit had accepted: no archive is refused here.
    let parts = read_parts(ctx, &mut discard, body, Some(&mut digest), None)?;
    query.merged(parts.options)?.feed(&mut digest);
    let digest = digest.finish();
    match &job.submit_key {
        Some(first) if first.digest == digest => Ok(()),
        first => Err(UploadError::SubmitKeyReused {
            key: first.as_ref().map(|k| k.key.clone()).unwrap_or_default(),
            job_id: job.id.clone(),
        }),
    }
}

/// Where an accepted upload's bytes are, for its job's first record: held in memory (stored in
/// the row) or in an upload segment (synced before the row commits).
struct StoredBytes {
    held: Option<Arc<[u8]>>,
    segment: Option<Arc<SegmentFile>>,
}

impl StoredBytes {
    /// The record that inserts `job` with its upload. Its sender waits for its commit, which
    /// takes it at once (`within` is set to zero by the wait).
    fn first_record(&self, job: Box<Job>) -> Record {
        Record {
            job,
            insert: true,
            upload: self.held.clone(),
            done: None,
            sync_first: self.segment.clone(),
            retry: false,
            within: DEFERRAL,
        }
    }
}

/// A job that a worker can take at once (nothing queued, a worker with room) goes to it without
/// waiting in the queue, and its first record already says so: one commit before the worker has
/// it, not two (at most once holds: a crash after that commit makes it lost, never sent twice).
/// Returns the ticket of that record, sent with the table locked so that the job's later
/// records follow it, and the job's assignment; `None` leaves the job to the usual way
/// (recorded, then queued).
fn direct(ctx: &Context, job: &Job, stored: &StoredBytes) -> Option<(Ticket, Assignment)> {
    let mut st = ctx.lock();
    let now = Instant::now();
    if !scheduler::room_now(&st, job.labels(), now) {
        return None;
    }
    st.enqueue(job.clone(), now);
    // Nothing else was queued, so the job's own assignment is the only one there can be.
    let (mut assignments, _) = scheduler::assign(&mut st, now);
    let Some((assignment, assigned)) = assignments
        .pop()
        .and_then(|a| Some((a, st.jobs.get(&job.id)?.clone())))
    else {
        st.discard(&job.id);
        return None;
    };
    let mut record = stored.first_record(assigned);
    let ticket = Ticket::attach(&mut record);
    ctx.store.send(record);
    Some((ticket, assignment))
}

/// Undoes [`direct`] when its record could not be committed: the worker slot is given back and
/// the job leaves the table.
fn take_back(st: &mut PoolState, a: &Assignment) {
    st.workers[a.worker_index].undo_assignment(a.source);
    st.discard(&a.job_id);
}
