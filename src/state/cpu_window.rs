//! The CPU seconds of the jobs that ended in the last minute, kept after their records leave
//! the table (settled jobs live in the job store), for sandrun's `/stats` quota figures.

use crate::base::job::Job;
use serde_json::Value;
use std::collections::VecDeque;

/// The window sandrun's CPU quota counts, in seconds.
pub const WINDOW_SECS: f64 = 60.0;
/// The most entries kept (a flood of tiny jobs cannot grow it without bound).
const MAX_ENTRIES: usize = 65_536;

/// Whether a job that ended at `at` (unix seconds) ended within the window before `now`. An end
/// after `now` (the wall clock was stepped back since) is outside: counted, it would hold for as
/// long as the step.
pub fn in_window(now: f64, at: f64) -> bool {
    (0.0..=WINDOW_SECS).contains(&(now - at))
}

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
        if cpu > 0.0 && in_window(now, ended) {
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
            .is_some_and(|(at, _, _)| !in_window(now, *at))
        {
            self.entries.pop_front();
        }
    }

    /// CPU seconds of the jobs that left the table and ended in the window (of one owner when
    /// `owner` is given).
    pub fn used(&self, now: f64, owner: Option<&str>) -> f64 {
        self.entries
            .iter()
            .filter(|(at, _, o)| in_window(now, *at) && (owner.is_none() || o.as_deref() == owner))
            .map(|(_, cpu, _)| cpu)
            // From +0.0: an empty float sum is -0.0, which JSON would show as `-0.0`.
            .fold(0.0, |sum, cpu| sum + cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ended(at: f64, cpu: f64, owner: &str) -> Job {
        let mut job = Job::new(format!("pool-{at}"), Vec::new(), None, at - 1.0);
        job.owner = Some(owner.to_string());
        job.completed_at = Some(at);
        job.worker_status = Some(json!({"execution_metadata": {"cpu_seconds": cpu}}));
        job
    }

    #[test]
    fn a_job_counts_for_the_minute_after_its_end_and_not_after_the_clock_went_back() {
        let mut window = CpuWindow::default();
        window.record(&ended(1000.0, 2.0, "alice"), 1000.5);
        window.record(&ended(1010.0, 3.0, "bob"), 1010.5);
        assert_eq!(window.used(1020.0, None), 5.0);
        assert_eq!(window.used(1020.0, Some("bob")), 3.0);
        assert_eq!(window.used(1065.0, None), 3.0);
        // The clock stepped back an hour: ends in the future are not counted, and go.
        assert_eq!(window.used(1020.0 - 3600.0, None), 0.0);
        window.record(&ended(1020.0 - 3600.0, 4.0, "alice"), 1020.0 - 3600.0);
        assert_eq!(window.entries.len(), 1, "the future ends were pruned");
        assert_eq!(window.used(1030.0 - 3600.0, None), 4.0);
        assert!(in_window(1060.0, 1000.0));
        assert!(!in_window(1060.1, 1000.0));
        assert!(!in_window(999.9, 1000.0));
    }
}
