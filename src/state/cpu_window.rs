//! The CPU seconds of the jobs that ended in the last minute, kept after their records leave
//! the table (settled jobs live in the job store), for sandrun's `/stats` quota figures.

use crate::base::job::Job;
use serde_json::Value;
use std::collections::VecDeque;

/// The window sandrun's CPU quota counts, in seconds.
pub const WINDOW_SECS: f64 = 60.0;
/// The most entries kept (a flood of tiny jobs cannot grow it without bound).
const MAX_ENTRIES: usize = 65_536;

/// CPU seconds a finished job used, as its worker reported them.
pub fn cpu_seconds(job: &Job) -> f64 {
    job.worker_status
        .as_ref()
        .and_then(|w| w.pointer("/execution_metadata/cpu_seconds"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

/// Jobs that left the table within the window: (ended at, CPU seconds, owner).
#[derive(Debug, Default)]
pub struct CpuWindow {
    entries: VecDeque<(f64, f64, Option<String>)>,
}

impl CpuWindow {
    /// Remembers a job leaving the table at `now`, if it ended within the window.
    pub fn record(&mut self, job: &Job, now: f64) {
        self.prune(now);
        let cpu = cpu_seconds(job);
        let ended = job.completed_at.unwrap_or(now);
        if cpu > 0.0 && now - ended <= WINDOW_SECS {
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.pop_front();
            }
            self.entries.push_back((ended, cpu, job.owner.clone()));
        }
    }

    fn prune(&mut self, now: f64) {
        while self
            .entries
            .front()
            .is_some_and(|(at, _, _)| now - at > WINDOW_SECS)
        {
            self.entries.pop_front();
        }
    }

    /// CPU seconds of the jobs that left the table and ended in the window (of one owner when
    /// `owner` is given).
    pub fn used(&self, now: f64, owner: Option<&str>) -> f64 {
        self.entries
            .iter()
            .filter(|(at, _, o)| {
                now - at <= WINDOW_SECS && (owner.is_none() || o.as_deref() == owner)
            })
            .map(|(_, cpu, _)| cpu)
            // From +0.0: an empty float sum is -0.0, which JSON would show as `-0.0`.
            .fold(0.0, |sum, cpu| sum + cpu)
    }
}
