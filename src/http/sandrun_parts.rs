//! A submit's files and manifest as a sandrun worker will take them, checked as they stream in:
//! a "fake tar" is written under the name on its `Path: ` line, and the entrypoint (named by
//! the manifest, or else by a `job.json` among the files) is read on the worker's host, outside
//! its sandbox, when the job is submitted (see `worker::save_rules`,
//! `worker::sandrun_manifest`).

use std::fmt;
use std::io::{self, Read};

use crate::base::paths::is_safe_component;
use crate::worker::sandrun_manifest::{
    entrypoint_fault, sandrun_string, EntrypointFault, JOB_JSON, MAX_COMPONENT_BYTES,
    MAX_ENTRYPOINT_BYTES, MAX_JOB_JSON_BYTES,
};
use crate::worker::save_rules::{fake_tar_content, fake_tar_head, fake_tar_name, FakeTar};

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
}

/// What is read of a file before it is stored: its first bytes, to find a fake tar's name (all
/// of them, up to [`MAX_JOB_JSON_BYTES`], for a file sandrun saves as `job.json`), and what
/// such a `job.json` says.
pub struct FileStart {
    /// The bytes read; the file goes on with the rest of its part.
    pub bytes: Vec<u8>,
    /// What the file says as the job's `job.json`, when sandrun saves it as that.
    pub job_json: Option<JobJson>,
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
/// when it names one, else the last `job.json` saved among the files.
#[derive(Default)]
pub struct EntrypointSource {
    manifest_names_one: bool,
    job_json: Option<JobJson>,
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
    }

    /// Once every part arrived: refuses the `job.json` sandrun would read, if the manifest
    /// names no entrypoint and it names a faulty one or is too large to check.
    pub fn finish(self) -> Result<(), PartError> {
        if self.manifest_names_one {
            return Ok(());
        }
        match self.job_json {
            Some(JobJson::Entrypoint(entrypoint)) => check_entrypoint(&entrypoint, JOB_JSON),
            Some(JobJson::TooLarge) => Err(PartError::LongJobJson),
            None => Ok(()),
        }
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
