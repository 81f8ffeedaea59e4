//! One entry of `GET /outputs/{id}`: sandrun's listing shape (`name`, `size`,
//! `size_formatted`, `type`, `mime_type`, `download_url`) plus the coordinator's `collected`
//! and `sha256`. An output the coordinator does not serve has a `download_url` of null and says
//! why in `not_collected`: a link to a name such as `../../evil.txt` or `a/../../b.txt` is
//! read by clients (curl, browsers) with its dot segments removed, so it would land on another
//! route of the coordinator, and percent-encoded dots are read the same way.

use crate::base::file_kinds::{file_type, format_size, mime_type};
use crate::base::job::StoredResults;
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

/// The entry of output `name` of job `id`, from its worker's final status and its collected
/// results (`None`: not collected yet).
pub fn entry(id: &str, name: &str, worker_status: &Value, stored: Option<&StoredResults>) -> Value {
    let meta = worker_status
        .get("output_files")
        .and_then(|files| files.get(name));
    let size = meta.and_then(|m| m.get("size_bytes"));
    let not_served = why_not_served(name, stored);
    let collected = match not_served {
        Some(_) => Some(false),
        None => stored.map(|s| s.outputs.iter().any(|(p, _)| p == name)),
    };
    let mut entry = json!({
        "collected": collected,
        "name": name,
        "size": size,
        "size_formatted": format_size(size.and_then(Value::as_u64).unwrap_or(0)),
        "type": file_type(name),
        "mime_type": mime_type(name),
        "sha256": meta.and_then(|m| m.get("sha256")),
        "download_url": not_served
            .is_none()
            .then(|| format!("/download/{id}/{}", encode_path(name))),
    });
    if let Some(why) = not_served {
        entry["not_collected"] = json!(why);
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
            row_bytes: None,
        }
    }

    #[test]
    fn only_outputs_the_coordinator_serves_have_a_link() {
        let status = json!({"output_files": {
            "ok.txt": {"size_bytes": 3, "sha256": "aa"},
            "../../evil.txt": {"size_bytes": 3, "sha256": "bb"},
            "big.bin": {"size_bytes": 9, "sha256": "cc"},
            "gone.txt": {"size_bytes": 1, "sha256": "dd"},
        }});
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
}
