//! sandrun's `job_hash` in its `/status` answers: a hash of a job's entrypoint, interpreter,
//! environment, arguments and entrypoint file, fixed at its submit. Two answers about one worker
//! job id that give different ones are about two jobs: the worker restarted and gave the id to
//! another job (its id counter starts again at each start).

use serde_json::Value;

/// Whether `answer`, a worker's `/status` about a job id, names another job than `before`, its
/// previous answer about that id: both give a `job_hash`, and they differ.
pub fn names_another_job(before: &Value, answer: &Value) -> bool {
    match (job_hash(before), job_hash(answer)) {
        (Some(before), Some(now)) => before != now,
        _ => false,
    }
}

/// The `job_hash` a worker's `/status` answer gives, unless empty.
fn job_hash(status: &Value) -> Option<&str> {
    status
        .get("job_hash")
        .and_then(Value::as_str)
        .filter(|hash| !hash.is_empty())
}
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_two_different_job_hashes_name_another_job() {
        let hash = |h: &str| json!({"status": "queued", "job_hash": h});
        assert!(names_another_job(&hash("aa"), &hash("bb")));
        assert!(!names_another_job(&hash("aa"), &hash("aa")));
        // A worker that gives none, or an empty one, tells nothing.
        assert!(!names_another_job(
            &json!({"status": "queued"}),
            &hash("bb")
        ));
        assert!(!names_another_job(
            &hash("aa"),
            &json!({"status": "running"})
        ));
        assert!(!names_another_job(&hash(""), &hash("bb")));
        assert!(!names_another_job(&hash("aa"), &json!({"job_hash": 7})));
    }
}
