//! sandrun's per-client-IP rate limiter: concurrent jobs, jobs per hour, CPU seconds per minute.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// The limits in force for one check.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Jobs queued or running at once per IP.
    pub max_active: usize,
    /// Jobs accepted per IP in the last hour.
    pub max_per_hour: usize,
    /// CPU seconds per IP in the last minute.
    pub cpu_per_minute: f64,
}

/// The answer of a quota check, with the fields sandrun reports.
#[derive(Clone, Debug, Default)]
pub struct Quota {
    /// Whether a submit may go on.
    pub can_submit: bool,
    /// Why not, in sandrun's words (empty when it may).
    pub reason: String,
    /// Jobs of this IP queued or running.
    pub active_jobs: usize,
    /// CPU seconds used in the last minute (0 when an earlier check already failed).
    pub cpu_used: f64,
    /// CPU seconds left this minute (0 when an earlier check already failed).
    pub cpu_available: f64,
}

#[derive(Default)]
struct IpState {
    active: HashSet<String>,
    submissions: VecDeque<Instant>,
    cpu: VecDeque<(Instant, f64)>,
}

impl IpState {
    fn forget_old(&mut self, now: Instant) {
        while self
            .cpu
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > MINUTE)
        {
            self.cpu.pop_front();
        }
        while self
            .submissions
            .front()
            .is_some_and(|at| now.duration_since(*at) > HOUR)
        {
            self.submissions.pop_front();
        }
    }
}

/// Per-IP usage, as sandrun's `RateLimiter` keeps it.
#[derive(Default)]
pub struct RateLimiter {
    ips: HashMap<String, IpState>,
}

impl RateLimiter {
    /// sandrun's `check_quota`: the first limit reached, in sandrun's order.
    pub fn check(&mut self, ip: &str, limits: Limits) -> Quota {
        let now = Instant::now();
        let state = self.ips.entry(ip.to_string()).or_default();
        state.forget_old(now);
        let mut quota = Quota {
            active_jobs: state.active.len(),
            ..Quota::default()
        };
        if quota.active_jobs >= limits.max_active {
            quota.reason = format!("Max concurrent jobs reached ({})", limits.max_active);
            return quota;
        }
        let this_hour = state
            .submissions
            .iter()
            .filter(|at| now.duration_since(**at) < HOUR)
            .count();
        if this_hour >= limits.max_per_hour {
            quota.reason = format!("Max jobs per hour reached ({})", limits.max_per_hour);
            return quota;
        }
        quota.cpu_used = state
            .cpu
            .iter()
            .filter(|(at, _)| now.duration_since(*at) < MINUTE)
            .map(|(_, cpu)| cpu)
            .sum();
        quota.cpu_available = (limits.cpu_per_minute - quota.cpu_used).max(0.0);
        if quota.cpu_available <= 0.0 {
            quota.reason = match state.cpu.front() {
                Some((oldest, _)) => format!(
                    "CPU quota exhausted, wait {} seconds",
                    MINUTE.saturating_sub(now.duration_since(*oldest)).as_secs()
                ),
                None => "CPU quota exhausted".to_string(),
            };
            return quota;
        }
        quota.can_submit = true;
        quota
    }

    /// sandrun's `register_job_start`: false when the IP is already at its concurrent limit.
    pub fn register_start(&mut self, ip: &str, job_id: &str, max_active: usize) -> bool {
        let now = Instant::now();
        let state = self.ips.entry(ip.to_string()).or_default();
        if state.active.len() >= max_active {
            return false;
        }
        state.active.insert(job_id.to_string());
        state.submissions.push_back(now);
        state.forget_old(now);
        true
    }

    /// sandrun's `register_job_end`: frees the slot and books the CPU seconds used.
    pub fn register_end(&mut self, ip: &str, job_id: &str, cpu_seconds: f64) {
        let now = Instant::now();
        if let Some(state) = self.ips.get_mut(ip) {
            state.active.remove(job_id);
            state.cpu.push_back((now, cpu_seconds));
            state.forget_old(now);
        }
    }

    /// Jobs queued or running, all IPs together.
    pub fn total_active(&self) -> usize {
        self.ips.values().map(|s| s.active.len()).sum()
    }
}
