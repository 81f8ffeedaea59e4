//! sandrun's per-client-IP limits for the fast fake worker (scenario 13), scaled in time: jobs
//! queued or running at once, jobs accepted per "hour", CPU seconds per "minute", and sandrun's
//! one-job-at-a-time executor (a job's CPU seconds are also its run time: CPU-bound jobs).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits in force, and the jobs' CPU figure.
#[derive(Clone, Copy, Debug)]
pub struct QuotaMode {
    /// Jobs queued or running at once per IP (sandrun: 2).
    pub max_active: usize,
    /// Jobs accepted per IP per `hour` (sandrun: 20).
    pub per_hour: usize,
    /// The hourly window.
    pub hour: Duration,
    /// CPU seconds per IP per `minute` (sandrun: 10).
    pub cpu_per_minute: f64,
    /// The CPU window.
    pub minute: Duration,
    /// CPU seconds every job burns (and runs for: the worker runs one job at a time).
    pub job_cpu: f64,
}

impl QuotaMode {
    /// sandrun's limits with every duration divided by `scale` (the CPU limit and the jobs'
    /// CPU figure too, so the CPU a client may use per second stays sandrun's).
    pub fn sandrun_scaled(scale: f64, job_cpu_unscaled: f64) -> QuotaMode {
        QuotaMode {
            max_active: 2,
            per_hour: 20,
            hour: Duration::from_secs_f64(3600.0 / scale),
            cpu_per_minute: 10.0 / scale,
            minute: Duration::from_secs_f64(60.0 / scale),
            job_cpu: job_cpu_unscaled / scale,
        }
    }
}

#[derive(Default)]
struct PerIp {
    /// When each of its jobs queued or running ends.
    active: Vec<Instant>,
    accepted: VecDeque<Instant>,
    cpu: VecDeque<(Instant, f64)>,
}

/// What the worker counts per client IP, and its executor's queue.
pub struct Quota {
    mode: QuotaMode,
    ips: HashMap<IpAddr, PerIp>,
    busy_until: Option<Instant>,
    /// Submits answered 429.
    pub refused: u64,
    /// When each accepted job ends on the worker, in acceptance order.
    pub ends: Vec<Instant>,
}

impl Quota {
    /// Nothing counted yet.
    pub fn new(mode: QuotaMode) -> Quota {
        Quota {
            mode,
            ips: HashMap::new(),
            busy_until: None,
            refused: 0,
            ends: Vec::new(),
        }
    }

    /// The jobs' CPU figure, as `/status` reports it.
    pub fn job_cpu(&self) -> f64 {
        self.mode.job_cpu
    }

    /// The state of `ip` at `now`: its ended jobs booked, old entries dropped.
    fn settled(&mut self, ip: IpAddr, now: Instant) -> &mut PerIp {
        let m = self.mode;
        let s = self.ips.entry(ip).or_default();
        let (ended, active): (Vec<Instant>, Vec<Instant>) =
            s.active.iter().partition(|end| **end <= now);
        s.active = active;
        s.cpu.extend(ended.into_iter().map(|end| (end, m.job_cpu)));
        while s.cpu.front().is_some_and(|(at, _)| now - *at >= m.minute) {
            s.cpu.pop_front();
        }
        while s.accepted.front().is_some_and(|at| now - *at >= m.hour) {
            s.accepted.pop_front();
        }
        s
    }

    /// sandrun's `check_quota` for `ip`: the first limit reached, in sandrun's order, with the
    /// CPU used; `None` when a submit may go on.
    fn refusal(&mut self, ip: IpAddr, now: Instant) -> (Option<String>, f64, usize) {
        let m = self.mode;
        let s = self.settled(ip, now);
        let used: f64 = s.cpu.iter().map(|(_, c)| c).sum();
        let why = if s.active.len() >= m.max_active {
            Some(format!("Max concurrent jobs reached ({})", m.max_active))
        } else if s.accepted.len() >= m.per_hour {
            Some(format!("Max jobs per hour reached ({})", m.per_hour))
        } else if used >= m.cpu_per_minute - 1e-9 {
            let oldest = s.cpu.front().map_or(now, |(at, _)| *at);
            let wait = m.minute.saturating_sub(now - oldest).as_secs();
            Some(format!("CPU quota exhausted, wait {wait} seconds"))
        } else {
            None
        };
        (why, used, s.active.len())
    }

    /// A submit from `ip` at `now`: when the accepted job ends, or sandrun's 429 message.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<Instant, String> {
        if let (Some(why), _, _) = self.refusal(ip, now) {
            self.refused += 1;
            return Err(why);
        }
        let end = self.busy_until.filter(|b| *b > now).unwrap_or(now)
            + Duration::from_secs_f64(self.mode.job_cpu);
        self.busy_until = Some(end);
        self.ends.push(end);
        let s = self.settled(ip, now);
        s.active.push(end);
        s.accepted.push_back(now);
        Ok(end)
    }

    /// `GET /stats` for `ip`, in sandrun's shape. `used` and `available` are the scaled
    /// window's CPU seconds, `limit` is sandrun's per-minute figure: a client that books CPU
    /// seconds over a real minute (as the coordinator does) then sees the fake's room.
    pub fn stats(&mut self, ip: IpAddr, now: Instant) -> String {
        let (why, used, active) = self.refusal(ip, now);
        let limit = self.mode.cpu_per_minute * 60.0 / self.mode.minute.as_secs_f64();
        let available = (self.mode.cpu_per_minute - used).max(0.0);
        let queued = self.ends.iter().filter(|end| **end > now).count();
        format!(
            "{{\"your_quota\":{{\"used\":{used:.2},\"limit\":{limit:.2},\"available\":{available:.2},\
             \"active_jobs\":{active},\"can_submit\":{},\"reason\":\"{}\"}},\"system\":\
             {{\"queue_length\":{queued},\"active_jobs\":{}}}}}",
            why.is_none(),
            why.unwrap_or_default(),
            usize::from(queued > 0)
        )
    }
}
