//! What sandrun does with a submit's body: multipart parts, saved files, manifest, entrypoint.

use std::fs;
use std::io::{Cursor, Read};
use std::path::{Component, Path};
use std::process::{Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use trusted_pool::base::hex::hex;

/// One part of a multipart body.
#[derive(Clone, Debug)]
pub struct Part {
    /// The part's name (`files`, `manifest`, ...).
    pub name: String,
    /// Its filename, if given.
    pub filename: Option<String>,
    /// Its Content-Type, if given.
    pub content_type: Option<String>,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// What a job runs, from the manifest and the fallbacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobSpec {
    /// File to run, relative to the job directory (empty: none found).
    pub entrypoint: String,
    /// Program that runs it.
    pub interpreter: String,
    /// Arguments after the entrypoint.
    pub args: Vec<String>,
    /// Output patterns (sandrun's matcher, see `files::matches_pattern`).
    pub outputs: Vec<String>,
    /// Environment template name (reported only).
    pub environment: String,
}

/// sandrun's boundary extraction: the text after `boundary=` up to `;`, quotes removed.
pub fn boundary(content_type: &str) -> Option<String> {
    let start = content_type.find("boundary=")? + "boundary=".len();
    let rest = &content_type[start..];
    let value = rest.split(';').next().unwrap_or_default();
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').unwrap_or(quoted),
        None => value,
    };
    (!value.is_empty()).then(|| value.to_string())
}

/// The parts of a multipart body; none when the boundary is missing or nothing parses.
pub fn parse_parts(content_type: Option<&str>, body: &[u8]) -> Vec<Part> {
    let Some(boundary) = content_type.and_then(boundary) else {
        return Vec::new();
    };
    let mut multipart = multipart::server::Multipart::with_body(Cursor::new(body), boundary);
    let mut parts = Vec::new();
    while let Ok(Some(mut field)) = multipart.read_entry() {
        let mut data = Vec::new();
        if field.data.read_to_end(&mut data).is_err() {
            break;
        }
        let name = field.headers.name.to_string();
        if name.is_empty() {
            continue;
        }
        parts.push(Part {
            name,
            filename: field.headers.filename.clone(),
            content_type: field.headers.content_type.as_ref().map(|m| m.to_string()),
            data,
        });
    }
    parts
}

/// Runs a command in `dir`, as sandrun's `system()` calls do; true when it succeeded.
fn run_in(dir: &Path, program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Extracts an archive part with a system tool, removing the archive when that worked.
fn extract(dir: &Path, data: &[u8], archive: &str, program: &str, args: &[&str]) {
    if fs::write(dir.join(archive), data).is_ok() && run_in(dir, program, args) {
        let _ = fs::remove_file(dir.join(archive));
    }
}

/// True for a relative name that stays inside the job directory.
fn is_inside(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// sandrun's "fake tar", its web frontend's form of one file: content that begins
/// `----Tar\nPath:` holds a file named by what follows the first `Path: ` up to the next
/// newline, its bytes all that follows the first blank line. sandrun finds both with
/// `std::string::find` and adds to its `npos` when one is missing: the name then starts at byte
/// 5, the bytes at byte 1. Returns the name and the bytes.
fn fake_tar(data: &[u8]) -> Option<(&[u8], &[u8])> {
    if !data.starts_with(b"----Tar\nPath:") {
        return None;
    }
    let find = |needle: &[u8], from: usize| {
        data[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|at| at + from)
    };
    let name_start = find(b"Path: ", 0).map_or(5, |at| at + 6);
    let name_end = find(b"\n", name_start).unwrap_or(data.len());
    let bytes_start = find(b"\n\n", 0).map_or(1, |at| at + 2);
    Some((&data[name_start..name_end], &data[bytes_start..]))
}

/// sandrun's `save_files`: `files` parts with a filename go into the job directory; a "fake
/// tar" (see [`fake_tar`]) under the name it holds, and else `.tar.gz`, `.tgz` and `.zip`
/// anywhere in the name are extracted with the system `tar`/`unzip`. A file whose directory
/// does not exist is dropped silently, as sandrun's `ofstream` drops it. Unlike sandrun, a name
/// that leads out of the job directory is dropped too, not written there.
pub fn save_files(dir: &Path, parts: &[Part]) {
    let _ = fs::create_dir_all(dir);
    for part in parts.iter().filter(|p| p.name == "files") {
        let Some(filename) = part.filename.as_deref().filter(|f| !f.is_empty()) else {
            continue;
        };
        if let Some((name, bytes)) = fake_tar(&part.data) {
            if let Some(name) = std::str::from_utf8(name).ok().filter(|n| is_inside(n)) {
                let _ = fs::write(dir.join(name), bytes);
            }
        } else if filename.contains(".tar.gz") || filename.contains(".tgz") {
            extract(
                dir,
                &part.data,
                "upload.tar.gz",
                "tar",
                &["-xzf", "upload.tar.gz"],
            );
        } else if filename.contains(".zip") {
            extract(
                dir,
                &part.data,
                "upload.zip",
                "unzip",
                &["-q", "upload.zip"],
            );
        } else if is_inside(filename) {
            let _ = fs::write(dir.join(filename), &part.data);
        }
    }
}

/// A manifest's JSON; text that is not a JSON object counts as an empty manifest.
fn manifest_json(text: &[u8]) -> Value {
    serde_json::from_slice::<Value>(text)
        .ok()
        .filter(Value::is_object)
        .unwrap_or(Value::Null)
}

fn string_of(manifest: &Value, key: &str) -> String {
    manifest
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn strings_of(manifest: &Value, key: &str) -> Vec<String> {
    manifest
        .get(key)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// sandrun's manifest handling and fallbacks: the `manifest` part, then `job.json` in the
/// upload, then `main.py` (python3), `index.js` (node), `run.sh` (bash).
pub fn resolve(dir: &Path, parts: &[Part]) -> JobSpec {
    let mut spec = JobSpec {
        interpreter: "python3".into(),
        ..JobSpec::default()
    };
    for part in parts.iter().filter(|p| p.name == "manifest") {
        let manifest = manifest_json(&part.data);
        spec.entrypoint = string_of(&manifest, "entrypoint");
        let interpreter = string_of(&manifest, "interpreter");
        if !interpreter.is_empty() {
            spec.interpreter = interpreter;
        }
        spec.environment = string_of(&manifest, "environment");
        spec.outputs = strings_of(&manifest, "outputs");
        spec.args = strings_of(&manifest, "args");
    }
    if spec.entrypoint.is_empty() {
        if let Ok(text) = fs::read(dir.join("job.json")) {
            let manifest = manifest_json(&text);
            spec.entrypoint = string_of(&manifest, "entrypoint");
            let interpreter = string_of(&manifest, "interpreter");
            if !interpreter.is_empty() {
                spec.interpreter = interpreter;
            }
            if spec.environment.is_empty() {
                spec.environment = string_of(&manifest, "environment");
            }
            if spec.outputs.is_empty() {
                spec.outputs = strings_of(&manifest, "outputs");
            }
            if spec.args.is_empty() {
                spec.args = strings_of(&manifest, "args");
            }
        }
    }
    if spec.entrypoint.is_empty() {
        let fallbacks = [
            ("main.py", "python3"),
            ("index.js", "node"),
            ("run.sh", "bash"),
        ];
        if let Some((file, interpreter)) = fallbacks.iter().find(|(f, _)| dir.join(f).exists()) {
            spec.entrypoint = (*file).to_string();
            spec.interpreter = (*interpreter).to_string();
        }
    }
    spec
}

/// sandrun's `job_hash`: SHA-256 hex of
/// `entrypoint|interpreter|environment|arg|...|<entrypoint file content>`, the file being
/// `dir + "/" + entrypoint` as sandrun joins them (a leading `/` stays in the directory).
/// Unlike sandrun, an entrypoint that leads out of the directory with `..` is not read.
pub fn job_hash(dir: &Path, spec: &JobSpec) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "{}|{}|{}|",
        spec.entrypoint, spec.interpreter, spec.environment
    ));
    for arg in &spec.args {
        hasher.update(format!("{arg}|"));
    }
    let inside = !spec.entrypoint.split('/').any(|part| part == "..");
    let file = format!("{}/{}", dir.display(), spec.entrypoint);
    if let Some(content) = inside.then(|| fs::read(file).ok()).flatten() {
        hasher.update(content);
    }
    hex(&hasher.finalize())
}
