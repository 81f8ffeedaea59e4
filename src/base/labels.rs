//! Worker labels and the labels a job asks for (as Nomad's constraints on a node's attributes):
//! a worker in workers.json may carry labels (`"labels": ["arm64", "gpu"]`), and a job submitted
//! with `labels=arm64,gpu` runs only on a worker that carries every one of them.

/// Most labels of one worker or one job.
pub const MAX_LABELS: usize = 32;
/// Longest label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;

/// What a label may hold, as messages say it.
pub const LABEL_RULE: &str = "1 to 64 letters, digits and . _ - : =";

/// Why a list of labels was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelError(pub String);

impl std::fmt::Display for LabelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabelError {}

/// Whether `label` is a valid label.
pub fn is_valid(label: &str) -> bool {
    (1..=MAX_LABEL_LEN).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'='))
}

/// Validates a list of labels: at most [`MAX_LABELS`] (counted first, so that a long list
/// costs no more than that), each valid, none twice; returns them sorted.
pub fn parse(items: &[&str]) -> Result<Vec<String>, LabelError> {
    if items.len() > MAX_LABELS {
        return Err(LabelError(format!(
            "{} labels are too many (at most {MAX_LABELS})",
            items.len()
        )));
    }
    let mut labels: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        if !is_valid(item) {
            return Err(LabelError(format!(
                "label {item:?} is not valid (a label is {LABEL_RULE})"
            )));
        }
        if labels.iter().any(|l| l == item) {
            return Err(LabelError(format!("label {item:?} is given twice")));
        }
        labels.push(item.to_string());
    }
    labels.sort();
    Ok(labels)
}

/// Parses labels given as one text, separated by commas (spaces around them ignored).
pub fn parse_text(text: &str) -> Result<Vec<String>, LabelError> {
    let items: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err(LabelError(format!(
            "no label is given (give them separated by commas, e.g. arm64,gpu; a label is {LABEL_RULE})"
        )));
    }
    parse(&items)
}

/// Whether a worker carrying `worker` (sorted) has every label in `wanted`.
pub fn has_all(worker: &[String], wanted: &[String]) -> bool {
    wanted
        .iter()
        .all(|w| worker.binary_search_by(|l| l.as_str().cmp(w)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_sorted_and_matched() {
        assert_eq!(
            parse_text(" gpu, arch=arm64 ").map_err(|e| e.0),
            Ok(vec!["arch=arm64".to_string(), "gpu".to_string()])
        );
        for bad in ["", " , ", "a b", "gpu,gpu", "x/y"] {
            assert!(parse_text(bad).is_err(), "{bad:?}");
        }
        assert!(parse_text(&"l".repeat(65)).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("l{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(parse(&many).is_err());
        let worker = parse(&["gpu", "arm64", "zone:a"]).unwrap_or_default();
        assert!(has_all(&worker, &[]));
        assert!(has_all(&worker, &["arm64".into(), "gpu".into()]));
        assert!(!has_all(&worker, &["x86_64".into()]));
    }
}
