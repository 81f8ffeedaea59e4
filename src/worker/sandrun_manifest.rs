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

/// Whether an entrypoint, as sandrun reads it, leads out of the job's directory: a `..`
/// component anywhere (sandrun joins it to the directory with a `/`, so a leading `/` stays
/// inside).
pub fn leaves_job_dir(entrypoint: &[u8]) -> bool {
    entrypoint.split(|&b| b == b'/').any(|part| part == b"..")
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
    fn only_a_dot_dot_component_leaves_the_job() {
        for inside in [
            "main.py",
            "/main.py",
            "./main.py",
            "src/main.py",
            "a..b",
            "..x/y",
        ] {
            assert!(!leaves_job_dir(inside.as_bytes()), "{inside}");
        }
        for outside in ["..", "../x", "a/../../x", "../../../dev/zero", "x/.."] {
            assert!(leaves_job_dir(outside.as_bytes()), "{outside}");
        }
    }
}
