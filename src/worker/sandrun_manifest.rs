//! How a sandrun worker reads a job's settings from its `manifest` part (or, when that names no
//! entrypoint, from a `job.json` among the job's files): not as JSON, but with its own
//! `json_get_string`, which takes the text between the first two quotes after the first colon
//! after the first occurrence of the quoted key anywhere in the text, as it stands (no escape
//! undone). At the submit, sandrun then reads the file `job_dir + "/" + entrypoint` on its
//! host, outside any sandbox and whole into memory, to hash it.

/// The largest `job.json` the coordinator reads for its entrypoint (sandrun reads it whole).
pub const MAX_JOB_JSON_BYTES: u64 = 1024 * 1024;

/// The name of the file sandrun reads a job's settings from when its manifest names no
/// entrypoint.
pub const JOB_JSON: &str = "job.json";

/// The value sandrun reads for `key` in `text` (empty when it finds none).
pub fn sandrun_string<'a>(text: &'a [u8], key: &str) -> &'a [u8] {
    let find = |needle: &[u8], from: usize| {
        text.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|at| at + from)
    };
    let quoted = format!("\"{key}\"");
    let value = find(quoted.as_bytes(), 0)
        .and_then(|at| find(b":", at))
        .and_then(|colon| find(b"\"", colon))
        .and_then(|open| Some((open + 1, find(b"\"", open + 1)?)));
    match value {
        Some((start, end)) => &text[start..end],
        None => b"",
    }
}

/// The longest entrypoint sandrun can look up: its job directory's path (about 40 bytes) and
/// the entrypoint must stay within Linux's 4096, or `std::filesystem` throws and the submit is
/// answered 500.
pub const MAX_ENTRYPOINT_BYTES: usize = 3800;

/// The longest component of a path Linux takes.
pub const MAX_COMPONENT_BYTES: usize = 255;

/// What is wrong with an entrypoint, as sandrun reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntrypointFault {
    /// A `..` component: sandrun joins the entrypoint to the job's directory with a `/` (so a
    /// leading `/` stays inside) and reads that file on its host, so `..` may lead out.
    DotDot,
    /// A component of this many bytes, more than [`MAX_COMPONENT_BYTES`]: sandrun's look-up
    /// throws "File name too long" and the submit is answered 500.
    LongComponent(usize),
    /// This many bytes, more than [`MAX_ENTRYPOINT_BYTES`]: the same.
    Long(usize),
}

/// What is wrong with an entrypoint, as sandrun reads it, if anything.
pub fn entrypoint_fault(entrypoint: &[u8]) -> Option<EntrypointFault> {
    let mut parts = entrypoint.split(|&b| b == b'/');
    if parts.clone().any(|part| part == b"..") {
        return Some(EntrypointFault::DotDot);
    }
    if let Some(long) = parts.find(|part| part.len() > MAX_COMPONENT_BYTES) {
        return Some(EntrypointFault::LongComponent(long.len()));
    }
    (entrypoint.len() > MAX_ENTRYPOINT_BYTES).then_some(EntrypointFault::Long(entrypoint.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_as_sandrun_reads_them() {
        let read = |text: &str| sandrun_string(text.as_bytes(), "entrypoint").to_vec();
        assert_eq!(read(r#"{"entrypoint":"main.py"}"#), b"main.py");
        assert_eq!(
            read(r#"{"entrypoint" : "src/main.py", "x": 1}"#),
            b"src/main.py"
        );
        assert_eq!(read(r#"{"interpreter":"python3"}"#), b"");
        assert_eq!(read(r#"{"entrypoint": 5}"#), b"");
        assert_eq!(
            read(r#"{"env":{"entrypoint":"../x"},"entrypoint":"main.py"}"#),
            b"../x"
        );
        assert_eq!(read(r#"{"entrypoint":"a\"b"}"#), b"a\\");
        assert_eq!(read(r#"{"entrypoint":"..\/..\/x"}"#), br"..\/..\/x");
    }

    #[test]
    fn dot_dot_components_and_names_too_long_to_look_up_are_faults() {
        for inside in [
            "main.py",
            "/main.py",
            "./main.py",
            "src/main.py",
            "a..b",
            "..x/y",
        ] {
            assert_eq!(entrypoint_fault(inside.as_bytes()), None, "{inside}");
        }
        for outside in ["..", "../x", "a/../../x", "../../../dev/zero", "x/.."] {
            assert_eq!(
                entrypoint_fault(outside.as_bytes()),
                Some(EntrypointFault::DotDot),
                "{outside}"
            );
        }
        let long_part = format!("src/{}.py", "a".repeat(300));
        assert_eq!(
            entrypoint_fault(long_part.as_bytes()),
            Some(EntrypointFault::LongComponent(303))
        );
        let long = "a/".repeat(2000);
        assert_eq!(
            entrypoint_fault(long.as_bytes()),
            Some(EntrypointFault::Long(4000))
        );
        assert_eq!(entrypoint_fault("a/".repeat(1900).as_bytes()), None);
    }
}
