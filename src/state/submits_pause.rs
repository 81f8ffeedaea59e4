//! Submits paused by an operator (`POST /submits/pause`) before maintenance or a move: new
//! submits are refused with 503 while queued and running jobs go on, like HAProxy's runtime
//! `disable frontend`. The job store records it, so a restart keeps it (`pool/control.rs`).

use crate::base::clock::unix_now;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A pause of submits in force.
#[derive(Debug)]
pub struct SubmitsPause {
    /// Unix time it began.
    pub since: f64,
    /// When it began (how long it lasted, whatever the wall clock does).
    pub began: Instant,
    /// The client key that paused (`None` on a coordinator without `--api-keys`).
    pub by: Option<String>,
    /// Submits refused since it began.
    pub refused: u64,
}

impl SubmitsPause {
    /// A pause beginning now, made by the key `by`.
    pub fn new(by: Option<String>) -> Self {
        SubmitsPause {
            since: unix_now(),
            began: Instant::now(),
            by,
            refused: 0,
        }
    }

    /// Counts a submit it refuses; returns how long it has lasted, in seconds, for the answer.
    pub fn refuse(&mut self) -> f64 {
        self.refused += 1;
        self.began.elapsed().as_secs_f64()
    }

    /// A pause recorded before a restart: it began at Unix time `since` (its length counts from
    /// then, or from now if the wall clock is behind it), by the key `by`. Its refused submits
    /// count from the restart.
    pub fn restored(since: f64, by: Option<String>) -> Self {
        let ago = Duration::try_from_secs_f64(unix_now() - since).unwrap_or_default();
        let now = Instant::now();
        SubmitsPause {
            since,
            began: now.checked_sub(ago).unwrap_or(now),
            by,
            refused: 0,
        }
    }

    /// Its figures, for `/pool` and the pause routes' answers.
    pub fn view(&self) -> Value {
        json!({
            "since": self.since,
            "seconds": self.began.elapsed().as_secs_f64(),
            "by": self.by,
            "refused_submits": self.refused,
        })
    }
}
