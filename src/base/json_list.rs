//! Files that hold a JSON array of objects (workers.json, the `--api-keys` file): reading one
//! (bounded where its kind has a limit), the checks every such file shares, and the error that
//! says what is wrong and where.

use crate::base::small_file::{read_at_most, SmallFileError};
use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;

/// One kind of list file, as its messages name it.
#[derive(Debug, PartialEq, Eq)]
pub struct ListKind {
    /// `"workers file"`, `"keys file"`.
    pub name: &'static str,
    /// What its array holds, e.g. `{"worker_id", "endpoint", ...} objects`.
    pub holds: &'static str,
    /// How one entry looks, e.g. `{"worker_id": ..., "endpoint": ...}`.
    pub entry: &'static str,
    /// What an empty array means, e.g. `lists no workers`.
    pub empty: &'static str,
    /// The largest file read.
    pub max_bytes: u64,
}

/// What is wrong with a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The file could not be read.
    Unreadable(String),
    /// The file is larger than its kind's `max_bytes`.
    TooLarge,
    /// The file is not valid JSON.
    NotJson(String),
    /// The top level is not a JSON array.
    NotAnArray,
    /// The array is empty.
    Empty,
    /// Entry at this index is not a JSON object.
    NotAnObject(usize),
    /// One entry is wrong.
    Entry {
        /// Which entry, e.g. `entry 2 ("alice")`.
        entry: String,
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Why a list file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFileError {
    /// The kind of file.
    pub kind: &'static ListKind,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for ListFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind;
        let name = kind.name;
        match &self.problem {
            Problem::Unreadable(why) => write!(f, "cannot read the {name}: {why}"),
            Problem::TooLarge => write!(f, "the {name} is larger than {} bytes", kind.max_bytes),
            Problem::NotJson(why) => write!(f, "the {name} is not valid JSON: {why}"),
            Problem::NotAnArray => write!(f, "the {name} must be a JSON array of {}", kind.holds),
            Problem::Empty => write!(f, "the {name} {}", kind.empty),
            Problem::NotAnObject(index) => {
                write!(f, "entry {index}: is not a JSON object like {}", kind.entry)
            }
            Problem::Entry {
                entry,
                field,
                problem,
            } => write!(f, "{entry}: field \"{field}\" {problem}"),
        }
    }
}

impl std::error::Error for ListFileError {}

impl ListKind {
    /// The error `problem` in a file of this kind.
    pub fn error(&'static self, problem: Problem) -> ListFileError {
        ListFileError {
            kind: self,
            problem,
        }
    }

    /// The error of one entry's field.
    pub fn entry_error(
        &'static self,
        entry: impl Into<String>,
        field: &str,
        problem: impl Into<String>,
    ) -> ListFileError {
        self.error(Problem::Entry {
            entry: entry.into(),
            field: field.to_string(),
            problem: problem.into(),
        })
    }

    /// The bytes of the file at `path`, at most `max_bytes`.
    pub fn read(&'static self, path: &Path) -> Result<Vec<u8>, ListFileError> {
        read_at_most(path, self.max_bytes).map_err(|e| match e {
            SmallFileError::Unreadable(e) => self.error(Problem::Unreadable(e.to_string())),
            SmallFileError::TooLarge(_) => self.error(Problem::TooLarge),
            not_a_file @ SmallFileError::NotAFile => {
                self.error(Problem::Unreadable(not_a_file.to_string()))
            }
        })
    }

    /// The entries of a file's bytes: a non-empty JSON array of objects.
    pub fn objects(&'static self, bytes: &[u8]) -> Result<Vec<Map<String, Value>>, ListFileError> {
        if bytes.len() as u64 > self.max_bytes {
            return Err(self.error(Problem::TooLarge));
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| self.error(Problem::NotJson(e.to_string())))?;
        let Value::Array(entries) = value else {
            return Err(self.error(Problem::NotAnArray));
        };
        if entries.is_empty() {
            return Err(self.error(Problem::Empty));
        }
        entries
            .into_iter()
            .enumerate()
            .map(|(index, entry)| match entry {
                Value::Object(object) => Ok(object),
                _ => Err(self.error(Problem::NotAnObject(index))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static THINGS: ListKind = ListKind {
        name: "things file",
        holds: "{\"a\"} objects",
        entry: "{\"a\": ...}",
        empty: "lists no things",
        max_bytes: 64,
    };

    #[test]
    fn each_shared_problem_is_found_and_named() {
        let problem = |bytes: &[u8]| THINGS.objects(bytes).map_err(|e| e.problem);
        assert_eq!(problem(b"[{\"a\": 1}]").map(|o| o.len()), Ok(1));
        assert!(matches!(problem(b"[{"), Err(Problem::NotJson(_))));
        assert_eq!(problem(b"{}"), Err(Problem::NotAnArray));
        assert_eq!(problem(b"[]"), Err(Problem::Empty));
        assert_eq!(problem(b"[{}, 3]"), Err(Problem::NotAnObject(1)));
        assert_eq!(problem(&[b' '; 65]), Err(Problem::TooLarge));
        let e = THINGS.error(Problem::Empty).to_string();
        assert_eq!(e, "the things file lists no things");
        let e = THINGS.entry_error("entry 0", "a", "is wrong").to_string();
        assert_eq!(e, "entry 0: field \"a\" is wrong");
        let missing = THINGS.read(Path::new("/nonexistent/things.json"));
        assert!(matches!(
            missing.map_err(|e| e.problem),
            Err(Problem::Unreadable(_))
        ));
    }
}
