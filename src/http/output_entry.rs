//! One entry of `GET /outputs/{id}`: sandrun's listing shape (`name`, `size`,
//! `size_formatted`, `type`, `mime_type`, `download_url`) plus the coordinator's `collected`
//! and `sha256`. An output the coordinator does not serve has a `download_url` of null and says
//! why in `not_collected`: a link to a name such as `../../evil.txt` or `a/../../b.txt` is
//! read by clients (curl, browsers) with its dot segments removed, so it would land on another
//! route of the coordinator, and percent-encoded dots are read the same way. A collected
//! output's `size` and `sha256` are those of the bytes the coordinator serves, with what its
//! worker declared under `worker_declared` where that differs.

use crate::base::file_kinds::{file_type, format_size, mime_type};
use crate::base::job::{declared_sha256, declared_size, StoredResults};
use crate::base::paths::encode_path;
use crate::pool::collect::uncollectable;
use serde_json::{json, Value};

/// Why a listed output that is neither collected, left on its worker nor [`uncollectable`]
/// is not served.
pub const NOT_SERVED_THEN: &str =
    "its worker did not list or serve it when the job's results were collected";

/// Why the coordinator does not serve output `path` of a job whose collected results are
/// `stored` (`None`: not collected yet), if it does not.
pub fn why_not_served(path: &str, stored: Option<&StoredResults>) -> Option<&'static str> {
    if let Some(why) = uncollectable(path) {
        return Some(why);
    }
    let stored = stored?;
    let kept = stored.outputs.iter().any(|(p, _)| p == path)
        || stored.left_on_worker.iter().any(|p| p == path);
    (!kept).then_some(NOT_SERVED_THEN)
}

/// An output's size and sha256, as its worker declared them or as the coordinator serves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Figures<'a> {
    size: Option<u64>,
    sha256: Option<&'a str>,
}

/// The entry of output `name` of job `id`, from its worker's final status and its collected
/// results (`None`: not collected yet). A collected output shows the size and sha256 of the
/// bytes the coordinator serves; where they differ from what its worker declared, those are
/// under `worker_declared`.
pub fn entry(id: &str, name: &str, worker_status: &Value, stored: Option<&StoredResults>) -> Value {
    let declared = Figures {
        size: declared_size(worker_status, name),
        sha256: declared_sha256(worker_status, name),
    };
    let served = stored
        .and_then(|stored| stored.served(name, worker_status))
        .map(|(span, sha256)| Figures {
            size: Some(span.size),
            sha256,
        });
    let shown = served.unwrap_or(declared);
    let not_served = why_not_served(name, stored);
    let collected = match not_served {
        Some(_) => Some(false),
        None => stored.map(|s| s.outputs.iter().any(|(p, _)| p == name)),
    };
    let mut entry = json!({
        "collected": collected,
        "name": name,
        "size": shown.size,
        "size_formatted": format_size(shown.size.unwrap_or(0)),
        "type": file_type(name),
        "mime_type": mime_type(name),
        "sha256": shown.sha256,
        "download_url": not_served
            .is_none()
            .then(|| format!("/download/{id}/{}", encode_path(name))),
    });
    if let Some(why) = not_served {
        entry["not_collected"] = json!(why);
    }
    if served.is_some_and(|served| served != declared) {
        entry["worker_declared"] = json!({"size": declared.size, "sha256": declared.sha256});
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::job::Span;

    fn stored(outputs: &[&str], left_on_worker: &[&str]) -> StoredResults {
        let span = Span { offset: 0, size: 0 };
        StoredResults {
            segment: String::new(),
            outputs: outputs.iter().map(|p| (p.to_string(), span)).collect(),
            logs: span,
            in_row: true,
            left_on_worker: left_on_worker.iter().map(|p| p.to_string()).collect(),
            served_sha256: Vec::new(),
            row_bytes: None,
        }
    }

    /// The final status of a worker that declared every output these tests list.
    fn declared() -> Value {
        json!({"output_files": {
            "ok.txt": {"size_bytes": 3, "sha256": "aa"},
            "../../evil.txt": {"size_bytes": 3, "sha256": "bb"},
            "big.bin": {"size_bytes": 9, "sha256": "cc"},
            "gone.txt": {"size_bytes": 1, "sha256": "dd"},
            "same.txt": {"size_bytes": 3, "sha256": "AA"},
            "other.txt": {"size_bytes": 3, "sha256": "bb"},
            "old.txt": {"size_bytes": 3, "sha256": "cc"},
        }})
    }

    #[test]
    fn only_outputs_the_coordinator_serves_have_a_link() {
        let status = declared();
        let results = stored(&["ok.txt"], &["big.bin"]);
        for (name, stored, link, why) in [
            ("ok.txt", None, true, None),
            ("ok.txt", Some(&results), true, None),
            ("big.bin", Some(&results), true, None),
            ("../../evil.txt", None, false, Some("its path is unsafe")),
            ("gone.txt", None, true, None),
            ("gone.txt", Some(&results), false, Some(NOT_SERVED_THEN)),
        ] {
            let got = entry("pool-1", name, &status, stored);
            assert_eq!(got["download_url"].is_string(), link, "{got}");
            let said = got["not_collected"].as_str();
            assert!(
                why.is_some_and(|why| said.is_some_and(|s| s.starts_with(why)))
                    || why.is_none() && said.is_none(),
                "{got}"
            );
        }
    }

    #[test]
    fn a_collected_output_shows_the_bytes_served_and_what_its_worker_declared() {
        let status = declared();
        let mut results = stored(&["same.txt", "other.txt", "old.txt"], &[]);
        for (path, span) in &mut results.outputs {
            span.size = if path == "same.txt" { 3 } else { 5 };
        }
        results.served_sha256 = vec![("other.txt".to_string(), "dd".to_string())];
        let same = entry("pool-1", "same.txt", &status, Some(&results));
        assert_eq!((&same["size"], &same["sha256"]), (&json!(3), &json!("AA")));
        assert!(same.get("worker_declared").is_none(), "{same}");
        let other = entry("pool-1", "other.txt", &status, Some(&results));
        assert_eq!(
            (&other["size"], &other["sha256"]),
            (&json!(5), &json!("dd"))
        );
        assert_eq!(other["worker_declared"], json!({"size": 3, "sha256": "bb"}));
        // Collected before served hashes were kept, with another size: no hash is shown.
        let old = entry("pool-1", "old.txt", &status, Some(&results));
        assert_eq!((&old["size"], &old["sha256"]), (&json!(5), &Value::Null));
        assert_eq!(old["worker_declared"], json!({"size": 3, "sha256": "cc"}));
        // Not collected yet: as declared.
        let early = entry("pool-1", "other.txt", &status, None);
        assert_eq!(
            (&early["size"], &early["sha256"]),
            (&json!(3), &json!("bb"))
        );
        assert!(early.get("worker_declared").is_none(), "{early}");
    }
}
