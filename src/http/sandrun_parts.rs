//! A submit's files and manifest as a sandrun worker will take them, checked as they stream in:
//! a "fake tar" is written under the name on its `Path: ` line, and the entrypoint (named by
//! the manifest, or else by a `job.json` among the files) is read on the worker's host, outside
//! its sandbox, when the job is submitted (see `worker::save_rules`,
//! `worker::sandrun_manifest`). An archive is read through as it streams by: sandrun unpacks
//! it on its host with the system `tar` or `unzip`, which write links, devices and pipes as
//! they are, so a link could have sandrun read `/dev/zero` for its entrypoint or write through
//! it out of the job's directory.

use std::fmt;
use std::io::{self, Read};

use crate::base::gunzip::Gunzip;
use crate::base::paths::is_safe_component;
use crate::base::tar_scan::{EntryKind, TarFault, TarScan};
use crate::base::zip_scan::{self, LocalEntries, Tail, ZipFault};
use crate::worker::sandrun_manifest::{
    entrypoint_fault, sandrun_string, EntrypointFault, JOB_JSON, MAX_COMPONENT_BYTES,
    MAX_ENTRYPOINT_BYTES, MAX_JOB_JSON_BYTES,
};
use crate::worker::save_rules::{
    fake_tar_content, fake_tar_head, fake_tar_name, unpacker, FakeTar, Unpacker,
};

/// Why a submit's files or manifest would not be taken by a sandrun worker as sent.
#[derive(Debug)]
pub enum PartError {
    /// A file (its filename) whose content begins as sandrun's "fake tar", whose name on its
    /// `Path: ` line is not a plain file name (`name`), or cannot be read (`None`; `line`: the
    /// line after `Path:` as far as it was read).
    FakeTarPath {
        /// The part's filename.
        filename: String,
        /// The name on the `Path: ` line, when it could be read.
        name: Option<String>,
        /// The line after `Path:` as far as it was read.
        line: String,
    },
    /// The entrypoint sandrun would read from `source` (the manifest or a `job.json`), and
    /// what is wrong with it.
    Entrypoint {
        /// Where sandrun reads it from.
        source: &'static str,
        /// The entrypoint as sandrun reads it.
        entrypoint: String,
        /// What is wrong with it.
        fault: EntrypointFault,
    },
    /// A `job.json` larger than [`MAX_JOB_JSON_BYTES`] that sandrun would read the job's
    /// settings from (the manifest names no entrypoint).
    LongJobJson,
    /// A `job.json` inside a zip archive that sandrun would read the job's settings from (the
    /// manifest names no entrypoint): the coordinator reads a zip's directory, not its files.
    JobJsonInZip,
    /// An archive (its filename) that sandrun would unpack, and what is wrong with it.
    Archive(String, ArchiveFault),
    /// An archive (its filename) from a caller that may not send archives, and who says so.
    ArchivesRefused(String, ArchivesRefusedBy),
}

/// Who refuses a submit's archives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchivesRefusedBy {
    /// The whole coordinator (`--refuse-archives`; the key, if any, sets nothing).
    Coordinator,
    /// The key of this name (`"archives": false` in the keys file).
    Key(String),
}

/// What is wrong with an archive sandrun would unpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveFault {
    /// Not a gzip stream (its name says it is a tarball): the text of the error.
    NotGzip(String),
    /// Not a tar archive inside: a header that does not read as one (at this byte offset).
    NotTar(u64),
    /// The archive ends before its last entry does.
    Truncated,
    /// The archive holds something the coordinator does not read (what), which tar could
    /// read otherwise.
    Unsupported(&'static str),
    /// Not a zip archive (its name says it is one).
    NotZip,
    /// The zip's central directory is larger than the coordinator keeps of its end.
    LargeDirectory(u64),
    /// The zip's central directory does not read as one.
    BadDirectory,
    /// An entry (its path) that is a link, a device or a pipe (what it is).
    Special(String, &'static str),
    /// An entry (its path) with a `..` component.
    DotDot(String),
    /// An entry (its path) named as sandrun names an archive it unpacks.
    Reserved(String),
    /// A zip's local entries hold something the coordinator does not follow (what).
    ZipUnsupported(&'static str),
    /// A file (its path) that tar, run as root, writes setuid or setgid.
    SetId(String),
    /// The archives of the submit unpack to more than `--max-unpacked-bytes` (its value).
    TooLarge(u64),
}

impl fmt::Display for ArchiveFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotGzip(e) => write!(f, "is not a gzip-compressed tarball ({e}), though its name says so"),
            Self::NotTar(at) => write!(f, "does not hold a tar archive (a header at byte {at} of its unpacked stream does not read as one)"),
            Self::Truncated => write!(f, "ends before its last entry does (cut short?)"),
            Self::Unsupported(what) => write!(f, "holds {what}, which the coordinator does not read through; pack regular files and folders with a plain tar (GNU or ustar format)"),
            Self::ZipUnsupported(what) => write!(f, "holds {what}, which the coordinator does not read through; zip the files with deflate or store and no password, or send a .tar.gz"),
            Self::SetId(path) => write!(f, "holds {path:?}, a setuid or setgid file: GNU tar, run as root as sandrun is, writes it so in the job's directory on the worker's host, where whoever reaches that directory may run it as its owner; clear those bits (chmod u-s,g-s) before packing"),
            Self::NotZip => write!(f, "is not a zip archive (no end of central directory), though its name says so"),
            Self::LargeDirectory(size) => write!(f, "has a central directory of {size} bytes, more than the {ZIP_TAIL_BYTES} the coordinator reads; pack so many files as a .tar.gz"),
            Self::BadDirectory => write!(f, "has a central directory that does not read as one"),
            Self::Special(path, what) => write!(f, "holds {path:?}, a {what}: a sandrun worker unpacks it as that on its host, outside its sandbox, where a link can lead its reads and writes out of the job's directory (to /dev/zero for an entrypoint, say) and a pipe or a device can hang or flood them; pack regular files and folders only"),
            Self::DotDot(path) => write!(f, "holds {path:?}, whose '..' would lead out of the job's directory; pack it with paths inside the archive"),
            Self::Reserved(path) => write!(f, "holds {path:?}, the name a sandrun worker gives an archive it unpacks in the job's directory, where it would stand in the way of the next one; rename it"),
            Self::TooLarge(max) => write!(f, "unpacks, with the submit's other archives, to more than {max} bytes (--max-unpacked-bytes), written to the worker's disk; send less, or ask the operator"),
        }
    }
}

impl fmt::Display for PartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FakeTarPath { filename, name, line } => {
                write!(
                    f,
                    "the file {filename:?} begins with the lines ----Tar and Path:, the form of one file a sandrun worker's web frontend sends: the worker writes what follows the first blank line under the name on the Path: line, "
                )?;
                match name {
                    Some(name) if name.len() > MAX_COMPONENT_BYTES => write!(
                        f,
                        "here {} bytes long, more than the {MAX_COMPONENT_BYTES} a file name may have",
                        name.len()
                    )?,
                    Some(name) => write!(f, "here {name:?}, which is not a plain file name")?,
                    None => write!(
                        f,
                        "which is not readable here (the line is {:?})",
                        format!("Path:{line}")
                    )?,
                }
                write!(
                    f,
                    "; give the lines ----Tar, Path: main.py (a space after the colon, a plain name) and a blank line before the code, or send the code itself under its own filename"
                )
            }
            Self::Entrypoint {
                source,
                entrypoint,
                fault,
            } => {
                let shown: String = entrypoint.chars().take(200).collect();
                write!(
                    f,
                    "the entrypoint {shown:?}, as a sandrun worker reads it from the {source} (the text in quotes after the first \"entrypoint\" anywhere in it, escapes as they stand), "
                )?;
                match fault {
                    EntrypointFault::DotDot => write!(
                        f,
                        "has a '..' component: the worker reads that path on its host when the job is submitted, outside its sandbox and whole into memory, so '..' may lead out of the job's directory (../../../dev/zero would exhaust its memory)"
                    )?,
                    EntrypointFault::LongComponent(len) => write!(
                        f,
                        "has a part of {len} bytes, more than the {MAX_COMPONENT_BYTES} a file name may have: the worker's look-up of it fails and it answers the submit 500"
                    )?,
                    EntrypointFault::Long(len) => write!(
                        f,
                        "is {len} bytes long, more than {MAX_ENTRYPOINT_BYTES}: the worker's look-up of it fails and it answers the submit 500"
                    )?,
                }
                write!(f, "; name a file among the job's own, e.g. main.py or src/main.py")
            }
            Self::JobJsonInZip => write!(
                f,
                "the manifest names no entrypoint, so a sandrun worker would read the job's settings from the {JOB_JSON} inside a zip archive, which the coordinator does not read to check them; name the entrypoint in the 'manifest' part (the worker then does not read {JOB_JSON}), or send it in a .tar.gz"
            ),
            Self::Archive(filename, fault) => write!(f, "the archive {filename:?} {fault}"),
            Self::ArchivesRefused(filename, by) => {
                write!(
                    f,
                    "the file {filename:?} would be unpacked by a sandrun worker as an archive (its name holds .tar.gz, .tgz or .zip), and "
                )?;
                match by {
                    ArchivesRefusedBy::Coordinator => {
                        write!(f, "this coordinator takes no archives (--refuse-archives)")?
                    }
                    ArchivesRefusedBy::Key(name) => write!(
                        f,
                        "the client key {name} may send none (\"archives\": false in the keys file)"
                    )?,
                }
                write!(f, "; send the files themselves, each as a 'files' part")
            }
            Self::LongJobJson => write!(
                f,
                "the manifest names no entrypoint, so a sandrun worker would read the job's settings from the {JOB_JSON} among its files, which is larger than the {MAX_JOB_JSON_BYTES} bytes the coordinator reads to check them; name the entrypoint in the 'manifest' part (the worker then does not read {JOB_JSON})"
            ),
        }
    }
}

/// Why the start of a file could not be taken: its bytes did not arrive, or a sandrun worker
/// would not take it as sent.
#[derive(Debug)]
pub enum StartError {
    /// Reading the part failed.
    Read(io::Error),
    /// The file is refused.
    Part(PartError),
}

/// What a `job.json` among the files says to sandrun, as far as the coordinator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobJson {
    /// The entrypoint it names, as sandrun reads it (empty: none).
    Entrypoint(Vec<u8>),
    /// It is larger than [`MAX_JOB_JSON_BYTES`]: not read.
    TooLarge,
    /// It is inside a zip archive: not read.
    InZip,
}

/// What is read of a file before it is stored: its first bytes, to find a fake tar's name (all
/// of them, up to [`MAX_JOB_JSON_BYTES`], for a file sandrun saves as `job.json`), and what
/// such a `job.json` says.
pub struct FileStart {
    /// The bytes read; the file goes on with the rest of its part.
    pub bytes: Vec<u8>,
    /// What the file says as the job's `job.json`, when sandrun saves it as that.
    pub job_json: Option<JobJson>,
    /// The file is a fake tar (saved under the name it holds, never unpacked).
    pub fake_tar: bool,
}

/// Reads the start of file `filename` from `data` (see [`FileStart`]), refusing a fake tar
/// saved under no plain name.
pub fn read_file_start(data: &mut dyn Read, filename: &str) -> Result<FileStart, StartError> {
    let mut bytes = Vec::new();
    data.take(fake_tar_head(MAX_COMPONENT_BYTES))
        .read_to_end(&mut bytes)
        .map_err(StartError::Read)?;
    check_fake_tar(filename, &bytes).map_err(StartError::Part)?;
    let (job_json, fake_tar) = match fake_tar_name(&bytes) {
        FakeTar::Named(name) => (name == JOB_JSON, true),
        _ => (filename == JOB_JSON, false),
    };
    if !job_json {
        return Ok(FileStart {
            bytes,
            job_json: None,
            fake_tar,
        });
    }
    let rest = (MAX_JOB_JSON_BYTES + 1).saturating_sub(bytes.len() as u64);
    data.take(rest)
        .read_to_end(&mut bytes)
        .map_err(StartError::Read)?;
    let said = if bytes.len() as u64 > MAX_JOB_JSON_BYTES {
        JobJson::TooLarge
    } else {
        let content = match fake_tar {
            true => fake_tar_content(&bytes),
            false => &bytes,
        };
        JobJson::Entrypoint(sandrun_string(content, "entrypoint").to_vec())
    };
    Ok(FileStart {
        bytes,
        job_json: Some(said),
        fake_tar,
    })
}

/// Refuses a file (named `filename`, its content beginning with `head`) that sandrun would
/// write under another name than a plain file's, as its "fake tar": out of the job's directory
/// with `Path: ../x`, or nowhere, without the job knowing.
fn check_fake_tar(filename: &str, head: &[u8]) -> Result<(), PartError> {
    let (name, line) = match fake_tar_name(head) {
        FakeTar::No => return Ok(()),
        FakeTar::Named(name) if name.len() <= MAX_COMPONENT_BYTES && is_safe_component(name) => {
            return Ok(())
        }
        FakeTar::Named(name) => (Some(name.to_string()), format!(" {name}")),
        FakeTar::Unreadable(line) => (None, line),
    };
    Err(PartError::FakeTarPath {
        filename: filename.to_string(),
        name,
        line,
    })
}

/// Where sandrun will take a job's entrypoint from, followed as the parts arrive: the manifest
/// when it names one, else the last `job.json` saved among the files, or one before it that an
/// archive's may not have replaced.
#[derive(Default)]
pub struct EntrypointSource {
    manifest_names_one: bool,
    job_json: Option<JobJson>,
    /// A faulty `job.json` saved before an archive's: tar or unzip may fail to write that one
    /// (a name too long for the host, a stream cut short) and go on, leaving this one.
    uncovered: Option<JobJson>,
}

impl EntrypointSource {
    /// Takes the manifest's bytes: refuses the entrypoint it names, if that is faulty.
    pub fn manifest(&mut self, manifest: &[u8]) -> Result<(), PartError> {
        let entrypoint = sandrun_string(manifest, "entrypoint");
        check_entrypoint(entrypoint, "manifest")?;
        self.manifest_names_one = !entrypoint.is_empty();
        Ok(())
    }

    /// Takes what a file saved as `job.json` says (a later one replaces it, as sandrun
    /// writes it over).
    pub fn job_json(&mut self, said: JobJson) {
        self.job_json = Some(said);
        self.uncovered = None;
    }

    /// Takes what a `job.json` an archive holds says: it replaces the one before only where
    /// tar or unzip wrote it, so a faulty one before it is still refused.
    pub fn archive_job_json(&mut self, said: JobJson) {
        if let Some(before) = self.job_json.replace(said) {
            if self.uncovered.is_none() && job_json_fault(&before).is_err() {
                self.uncovered = Some(before);
            }
        }
    }

    /// Once every part arrived: refuses the `job.json` sandrun would read, if the manifest
    /// names no entrypoint and it names a faulty one or is too large to check.
    pub fn finish(self) -> Result<(), PartError> {
        if self.manifest_names_one {
            return Ok(());
        }
        [self.uncovered, self.job_json]
            .iter()
            .flatten()
            .try_for_each(job_json_fault)
    }
}

/// What is wrong with a `job.json` sandrun would read the job's settings from, if anything.
fn job_json_fault(said: &JobJson) -> Result<(), PartError> {
    match said {
        JobJson::Entrypoint(entrypoint) => check_entrypoint(entrypoint, JOB_JSON),
        JobJson::TooLarge => Err(PartError::LongJobJson),
        JobJson::InZip => Err(PartError::JobJsonInZip),
    }
}

/// Refuses an entrypoint, as sandrun reads it from `source`, that it cannot look up or that
/// may lead out of the job's directory.
fn check_entrypoint(entrypoint: &[u8], source: &'static str) -> Result<(), PartError> {
    match entrypoint_fault(entrypoint) {
        Some(fault) => Err(PartError::Entrypoint {
            source,
            entrypoint: String::from_utf8_lossy(entrypoint).into_owned(),
            fault,
        }),
        None => Ok(()),
    }
}

/// A zip's stored entry whose size followed its data, given other sizes by the central
/// directory (unzip writes as many bytes as the directory says).
const DESCRIBED_ELSEWHERE: &str =
    "a stored entry whose sizes in the central directory differ from its data descriptor's";

/// The most of a zip's end kept to read its central directory from.
pub const ZIP_TAIL_BYTES: usize = 1024 * 1024;

/// An archive entry's path as tar or unzip writes it: up to a NUL, its parts split at `/` (and
/// at `\`, which unzip reads so in an archive made on Windows), empty and `.` parts dropped.
/// For the checks that refuse (`..`, sandrun's own names), where reading more into a name only
/// refuses more.
fn unpacked_parts(path: &str) -> Vec<&str> {
    let path = path.split('\0').next().unwrap_or_default();
    path.split(['/', '\\'])
        .filter(|part| !part.is_empty() && *part != ".")
        .collect()
}

/// Whether GNU tar writes a file entry named `path` as the job's `job.json`: its last part is
/// `job.json` (tar splits at `/` only, and fails on `job.json/.`), and every part before it
/// is empty or `.` (tar drops a leading `/`). This one must be exact: a later `job.json`
/// replaces the one checked before it.
fn is_tar_job_json(path: &str) -> bool {
    let path = path.split('\0').next().unwrap_or_default();
    let mut parts = path.split('/').rev();
    parts.next() == Some(JOB_JSON) && parts.all(|part| part.is_empty() || part == ".")
}

/// Whether unzip may write an entry named `path` as the job's `job.json`; any such entry has
/// the submit refused where sandrun would read it, so reading more into a name only refuses
/// more.
fn is_zip_job_json(path: &str) -> bool {
    unpacked_parts(path) == [JOB_JSON]
}

/// The names sandrun gives an archive it unpacks, in the job's directory: an entry of that
/// name, or a folder of it, would stand in the way of the next archive.
const UNPACKED_AS: [&str; 2] = ["upload.tar.gz", "upload.zip"];

/// What is wrong with an archive entry's path, if anything.
fn path_fault(path: &str) -> Option<ArchiveFault> {
    let parts = unpacked_parts(path);
    if parts.contains(&"..") {
        return Some(ArchiveFault::DotDot(path.to_string()));
    }
    match parts.first() {
        Some(first) if UNPACKED_AS.contains(first) => {
            Some(ArchiveFault::Reserved(path.to_string()))
        }
        _ => None,
    }
}

/// What a kind of entry is called in a refusal, when sandrun must not unpack it.
fn special(kind: EntryKind) -> Option<&'static str> {
    match kind {
        EntryKind::Symlink => Some("symbolic link"),
        EntryKind::HardLink => Some("hard link"),
        EntryKind::Device => Some("device"),
        EntryKind::Fifo => Some("named pipe"),
        EntryKind::File | EntryKind::Directory => None,
    }
}

/// What the archives of one submit may unpack to: `--max-unpacked-bytes`, and what is left
/// of it.
#[derive(Debug, Clone, Copy)]
pub struct Unpacking {
    /// `--max-unpacked-bytes`.
    pub max: u64,
    /// What the archives read so far left of it.
    pub room: u64,
}

impl Unpacking {
    /// The room of a submit with `--max-unpacked-bytes` `max`.
    pub fn new(max: u64) -> Self {
        Unpacking { max, room: max }
    }

    /// Takes `bytes` from the room, or says the archives unpack to too much.
    fn take(&mut self, bytes: u64) -> Result<(), ArchiveFault> {
        self.room = self
            .room
            .checked_sub(bytes)
            .ok_or(ArchiveFault::TooLarge(self.max))?;
        Ok(())
    }
}

/// An archive among a submit's files, read through as its bytes stream by (see the module's
/// text): a tarball through a gzip decoder into a [`TarScan`], a zip's last bytes kept for its
/// central directory.
pub enum ArchiveCheck {
    /// A `.tar.gz` or `.tgz`.
    Tar {
        /// The gzip decoder feeding the scan.
        gz: Gunzip,
        /// The tar reader.
        scan: Box<TarScan>,
        /// The first fault found.
        fault: Option<ArchiveFault>,
        /// What it may unpack to.
        unpacking: Unpacking,
    },
    /// A `.zip`: its last bytes, and its local entries as they stream by.
    Zip(Tail, Box<LocalEntries>, Unpacking),
}

impl ArchiveCheck {
    /// The check of file `filename` (`start`: what was read of it), when sandrun would unpack
    /// it: a name holding `.tar.gz` or `.tgz`, else `.zip` (sandrun's order), not a fake tar.
    /// It may unpack to what `unpacking` leaves.
    pub fn for_file(
        filename: &str,
        start: &FileStart,
        unpacking: Unpacking,
    ) -> Option<ArchiveCheck> {
        if start.fake_tar {
            return None;
        }
        Some(match unpacker(filename)? {
            Unpacker::Tar => ArchiveCheck::Tar {
                gz: Gunzip::new(),
                scan: Box::new(TarScan::new(is_tar_job_json, MAX_JOB_JSON_BYTES)),
                fault: None,
                unpacking,
            },
            Unpacker::Zip => ArchiveCheck::Zip(
                Tail::new(ZIP_TAIL_BYTES),
                Box::new(LocalEntries::new(unpacking.room)),
                unpacking,
            ),
        })
    }

    /// Takes the archive's next bytes.
    pub fn feed(&mut self, data: &[u8]) {
        match self {
            ArchiveCheck::Zip(tail, local, _) => {
                tail.push(data);
                local.push(data);
            }
            ArchiveCheck::Tar {
                gz,
                scan,
                fault,
                unpacking,
            } => {
                if fault.is_some() {
                    return;
                }
                if let Err(e) = gz.write(data, scan.as_mut()) {
                    *fault = Some(ArchiveFault::NotGzip(e.to_string()));
                    return;
                }
                *fault = entries_fault(scan, *unpacking);
            }
        }
    }

    /// The archive's end: what a `job.json` it holds says, or what is wrong with it. What it
    /// unpacks to is taken from the submit's `unpacking`.
    pub fn finish(
        self,
        filename: &str,
        unpacking: &mut Unpacking,
    ) -> Result<Option<JobJson>, PartError> {
        let refused = |fault| PartError::Archive(filename.to_string(), fault);
        match self {
            ArchiveCheck::Tar {
                gz,
                mut scan,
                fault,
                ..
            } => {
                if let Some(fault) = fault {
                    return Err(refused(fault));
                }
                gz.finish(scan.as_ref())
                    .map_err(|e| refused(ArchiveFault::NotGzip(e.to_string())))?;
                let scan = scan.as_mut();
                if let Some(fault) = entries_fault(scan, *unpacking) {
                    return Err(refused(fault));
                }
                scan.finish().map_err(|fault| {
                    refused(match fault {
                        TarFault::BadHeader(at) => ArchiveFault::NotTar(at),
                        TarFault::Truncated => ArchiveFault::Truncated,
                        TarFault::Unsupported(what) => ArchiveFault::Unsupported(what),
                        TarFault::SetId(path) => ArchiveFault::SetId(path),
                    })
                })?;
                unpacking.take(scan.unpacked()).map_err(refused)?;
                Ok(scan.wanted_content.take().map(|content| match content {
                    Ok(bytes) => JobJson::Entrypoint(sandrun_string(&bytes, "entrypoint").to_vec()),
                    Err(_) => JobJson::TooLarge,
                }))
            }
            ArchiveCheck::Zip(tail, local, limits) => {
                let entries = zip_scan::entries(tail.bytes(), tail.total).map_err(|fault| {
                    refused(match fault {
                        ZipFault::NotZip => ArchiveFault::NotZip,
                        ZipFault::LargeDirectory(size) => ArchiveFault::LargeDirectory(size),
                        ZipFault::BadDirectory => ArchiveFault::BadDirectory,
                    })
                })?;
                if local.too_large {
                    return Err(refused(ArchiveFault::TooLarge(limits.max)));
                }
                local
                    .finish()
                    .map_err(|what| refused(ArchiveFault::ZipUnsupported(what)))?;
                let mut job_json = None;
                for entry in entries {
                    if entry.symlink {
                        return Err(refused(ArchiveFault::Special(entry.name, "symbolic link")));
                    }
                    if entry.oem_name {
                        let what = "file whose name unzip maps from a DOS code page";
                        return Err(refused(ArchiveFault::Special(entry.name, what)));
                    }
                    if entry.unix_extra {
                        let what =
                            "file with a Unix extra field, from which unzip may make it a link";
                        return Err(refused(ArchiveFault::Special(entry.name, what)));
                    }
                    let names = || [&entry.name].into_iter().chain(&entry.also);
                    if let Some(fault) = names().filter_map(|n| path_fault(n)).next() {
                        return Err(refused(fault));
                    }
                    // unzip writes a deflated entry as far as its data inflates, whatever size
                    // the directory gives it.
                    let written = local
                        .written_at(entry.offset)
                        .ok_or(refused(ArchiveFault::BadDirectory))?;
                    if local.sizes_differ(&entry) {
                        return Err(refused(ArchiveFault::ZipUnsupported(DESCRIBED_ELSEWHERE)));
                    }
                    unpacking.take(entry.size.max(written)).map_err(refused)?;
                    if names().any(|n| is_zip_job_json(n)) {
                        job_json = Some(JobJson::InZip);
                    }
                }
                Ok(job_json)
            }
        }
    }
}

/// What is wrong with the entries a tar scan read since the last look (taken from it), or
/// with how much it unpacked, against `unpacking`.
fn entries_fault(scan: &mut TarScan, unpacking: Unpacking) -> Option<ArchiveFault> {
    for entry in scan.entries.drain(..) {
        if let Some(what) = special(entry.kind) {
            return Some(ArchiveFault::Special(entry.path, what));
        }
        let paths = [&entry.path].into_iter().chain(&entry.also);
        if let Some(fault) = paths.filter_map(|p| path_fault(p)).next() {
            return Some(fault);
        }
    }
    // tar may fail to write the second (a name too long for the host, say) and leave the
    // first, which is not read.
    if scan.wanted_seen > 1 {
        return Some(ArchiveFault::Unsupported(
            "two entries tar writes as job.json (where tar fails to write the second, the first stays)",
        ));
    }
    (scan.unpacked() > unpacking.room).then_some(ArchiveFault::TooLarge(unpacking.max))
}

/// A file's bytes as they are read, handed to its archive check too.
pub struct Watched<'a, R> {
    /// The file's bytes.
    pub inner: R,
    /// The check, when the file is an archive.
    pub check: Option<&'a mut ArchiveCheck>,
}

impl<R: Read> Read for Watched<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(check) = self.check.as_deref_mut() {
            check.feed(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::gunzip::gz;
    use crate::base::tar_scan::test_archive::entry;
    use flate2::Compression;

    /// A gzipped tar archive of regular files (name, content), GNU long names as needed.
    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = Vec::new();
        for (name, content) in files {
            if name.len() > 100 {
                tar.extend(entry(
                    "././@LongLink",
                    b'L',
                    &[name.as_bytes(), b"\0"].concat(),
                ));
            }
            tar.extend(entry(name, b'0', content));
        }
        tar.extend([0u8; 1024]);
        gz(&tar)
    }

    /// What the archive `filename` holding `bytes` says of its `job.json`, or its refusal.
    fn check(filename: &str, bytes: &[u8]) -> Result<Option<JobJson>, PartError> {
        let start = FileStart {
            bytes: Vec::new(),
            job_json: None,
            fake_tar: false,
        };
        let mut unpacking = Unpacking::new(1 << 30);
        let Some(mut check) = ArchiveCheck::for_file(filename, &start, unpacking) else {
            return Ok(None);
        };
        check.feed(bytes);
        check.finish(filename, &mut unpacking)
    }

    /// A zip of one entry `main.py`, `content` deflated, whose sizes say `declared`.
    fn zip_deflated(content: &[u8], declared: u32) -> Vec<u8> {
        let mut compress = flate2::Compress::new(Compression::default(), false);
        let mut data = Vec::with_capacity(content.len() + 64);
        let _ = compress.compress_vec(content, &mut data, flate2::FlushCompress::Finish);
        let sizes = [(data.len() as u32).to_le_bytes(), declared.to_le_bytes()].concat();
        let mut zip = b"PK\x03\x04\x14\0\0\0\x08\0\0\0\0\0\0\0\0\0".to_vec();
        zip.extend_from_slice(&sizes);
        zip.extend_from_slice(b"\x07\0\0\0main.py");
        zip.extend_from_slice(&data);
        let directory_at = zip.len() as u32;
        zip.extend_from_slice(b"PK\x01\x02\x1e\x03\x14\0\0\0\x08\0\0\0\0\0\0\0\0\0");
        zip.extend_from_slice(&sizes);
        zip.extend_from_slice(b"\x07\0\0\0\0\0\0\0\0\0\0\0\xa4\x81\0\0\0\0main.py");
        let directory_len = zip.len() as u32 - directory_at;
        zip.extend_from_slice(b"PK\x05\x06\0\0\0\0\x01\0\x01\0");
        zip.extend_from_slice(&directory_len.to_le_bytes());
        zip.extend_from_slice(&directory_at.to_le_bytes());
        zip.extend_from_slice(&[0, 0]);
        zip
    }

    #[test]
    fn a_zip_entry_counts_as_what_it_inflates_to_not_what_its_sizes_say() {
        let start = FileStart {
            bytes: Vec::new(),
            job_json: None,
            fake_tar: false,
        };
        let run = |zip: &[u8], max: u64| {
            let mut unpacking = Unpacking::new(max);
            let mut check = ArchiveCheck::for_file("x.zip", &start, unpacking)?;
            for piece in zip.chunks(1000) {
                check.feed(piece);
            }
            Some(
                check
                    .finish("x.zip", &mut unpacking)
                    .map(|_| unpacking.room),
            )
        };
        // unzip writes all 300,000 bytes of an entry whose sizes say 10.
        let bomb = zip_deflated(&[0u8; 300_000], 10);
        assert!(matches!(
            run(&bomb, 100_000),
            Some(Err(PartError::Archive(_, ArchiveFault::TooLarge(100_000))))
        ));
        assert!(matches!(run(&bomb, 1_000_000), Some(Ok(700_000))));
        let honest = zip_deflated(b"print(1)\n", 9);
        assert!(matches!(run(&honest, 1_000), Some(Ok(991))));
    }

    #[test]
    fn a_job_json_tar_may_fail_to_write_over_leaves_the_one_before_checked() {
        // tar writes the first job.json, fails to open the second (its name is longer than
        // the host takes) and goes on: the first stays, and sandrun reads it.
        let evil = br#"{"entrypoint":"../../../../dev/zero"}"#;
        let good = br#"{"entrypoint":"main.py"}"#;
        let long = "./".repeat(2100) + "job.json";
        let archive = tar_gz(&[("job.json", evil), (&long, good), ("main.py", b"1")]);
        assert!(matches!(
            check("x.tar.gz", &archive),
            Err(PartError::Archive(_, ArchiveFault::Unsupported(_)))
        ));
        let one = tar_gz(&[(&long, good), ("main.py", b"1")]);
        let said = check("x.tar.gz", &one).ok().flatten();
        assert_eq!(said, Some(JobJson::Entrypoint(b"main.py".to_vec())));
        // The same across parts: a file job.json, then an archive's tar fails to write.
        let entrypoint =
            |said: &[u8]| JobJson::Entrypoint(sandrun_string(said, "entrypoint").to_vec());
        let mut source = EntrypointSource::default();
        source.job_json(entrypoint(evil));
        source.archive_job_json(entrypoint(good));
        assert!(matches!(source.finish(), Err(PartError::Entrypoint { .. })));
        // A file written after it replaces it for sure, and a manifest's entrypoint wins.
        let mut source = EntrypointSource::default();
        source.archive_job_json(entrypoint(evil));
        source.job_json(entrypoint(good));
        assert!(source.finish().is_ok());
        let mut source = EntrypointSource::default();
        source.job_json(entrypoint(evil));
        source.archive_job_json(entrypoint(good));
        assert!(source.manifest(br#"{"entrypoint":"main.py"}"#).is_ok());
        assert!(source.finish().is_ok());
    }

    #[test]
    fn a_tar_job_json_is_the_name_tar_writes_as_it() {
        for yes in [
            "job.json",
            "./job.json",
            ".//job.json",
            "/job.json",
            "job.json\0x",
        ] {
            assert!(is_tar_job_json(yes), "{yes:?}");
        }
        for no in [
            "job.json\\",
            ".\\job.json",
            "job.json/.",
            "a/job.json",
            "job.json/",
        ] {
            assert!(!is_tar_job_json(no), "{no:?}");
        }
        assert!(is_zip_job_json(".\\job.json") && is_zip_job_json(".//./job.json"));
    }

    #[test]
    fn sandrun_s_own_names_are_refused_as_folders_too() {
        for reserved in [
            "upload.tar.gz",
            "upload.zip/x",
            "./upload.tar.gz/",
            "upload.zip\\y",
        ] {
            assert!(
                matches!(path_fault(reserved), Some(ArchiveFault::Reserved(_))),
                "{reserved:?}"
            );
        }
        assert_eq!(path_fault("src/upload.zip"), None);
        assert!(matches!(
            path_fault("a/../b"),
            Some(ArchiveFault::DotDot(_))
        ));
    }
}
