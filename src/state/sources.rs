//! Per-(worker, source address) quota state. sandrun limits every client IP: jobs queued or
//! running, jobs accepted per hour, CPU seconds per minute. A worker given several source
//! addresses is several clients to it, each with its own share; the next submit goes out from
//! the address with the most room. What the worker itself reports of an address (`GET /stats`
//! from it: asked when the address is first used, after a 429, when a throttle ends, and while
//! others' use keeps it full; never more often than every [`STATS_INTERVAL`]) is folded in.

use serde_json::Value;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// sandrun's hard-coded per-client limits, assumed until a worker's 429 or `/stats` names others.
pub const SANDRUN_MAX_ACTIVE: u32 = 2;
/// Jobs accepted per client per hour.
pub const SANDRUN_JOBS_PER_HOUR: u32 = 20;
/// CPU seconds per client per minute.
pub const SANDRUN_CPU_PER_MINUTE: f64 = 10.0;

/// How long an address whose job just ended at its concurrency limit rests: sandrun frees its
/// per-client count a moment after it reports the end.
const SETTLE: Duration = Duration::from_millis(250);

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// Least time between two `GET /stats` from one address.
pub const STATS_INTERVAL: Duration = Duration::from_secs(3);

/// CPU seconds of difference between the worker's count and ours taken as others' use.
const CPU_TOLERANCE: f64 = 0.05;

/// What `GET /stats` from an address last said: sandrun's `your_quota` for that client IP.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QuotaReport {
    /// Unix seconds of the answer.
    pub at: f64,
    /// CPU seconds the worker booked to the address in the last minute (`used`).
    pub cpu_used: f64,
    /// CPU seconds it allows per minute (`limit`).
    pub cpu_limit: f64,
    /// Jobs of the address queued or running on it (`active_jobs`).
    pub active_jobs: u32,
    /// Whether a submit from the address would pass its limits now.
    pub can_submit: bool,
    /// Why not, in the worker's words (empty when it would).
    pub reason: String,
}

impl QuotaReport {
    /// Reads a `/stats` answer (`{"your_quota":{...},"system":{...}}`) received at `at`.
    pub fn parse(answer: &Value, at: f64) -> Option<QuotaReport> {
        let q = answer.get("your_quota")?;
        let number = |key: &str| q.get(key).and_then(Value::as_f64);
        Some(QuotaReport {
            at,
            cpu_used: number("used").filter(|v| v.is_finite() && *v >= 0.0)?,
            cpu_limit: number("limit").filter(|v| v.is_finite() && *v >= 0.0)?,
            active_jobs: u32::try_from(q.get("active_jobs").and_then(Value::as_u64)?).ok()?,
            can_submit: q.get("can_submit").and_then(Value::as_bool)?,
            reason: q
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
    }
}

/// `GET /stats` from one address: the last answer, what it says of others' use, when to ask.
#[derive(Debug, Clone, Default)]
pub struct StatsState {
    /// The last answer.
    pub report: Option<QuotaReport>,
    /// Why the last ask failed (the address is then used on the coordinator's own counts).
    pub error: Option<String>,
    /// When it was last asked (`None`: never; the address takes no submit before).
    asked_at: Option<Instant>,
    /// An ask is in flight: the address takes no submit until it is answered.
    pub awaiting: bool,
    /// A 429 asked for it: ask again once the interval allows.
    wanted: bool,
    /// Jobs the worker counts on the address beyond ours (another client on it).
    pub others_active: u32,
    /// CPU seconds the worker booked to the address beyond ours, and when it said so.
    others_cpu: Option<(Instant, f64)>,
    /// Asks, in all.
    pub asked_total: u64,
}

/// A worker (or one of its source addresses) that answered 429: busy, not broken.
#[derive(Debug, Clone)]
pub struct Throttle {
    /// No dispatch before this instant.
    pub until: Instant,
    /// The same instant in unix seconds, for `/pool`.
    pub until_unix: f64,
    /// The worker's own message.
    pub reason: String,
    /// 429s in a row; each one doubles the pause.
    pub strikes: u32,
    /// True when the pause is for the per-IP concurrency limit, which a finished job lifts.
    pub lifted_by_free_slot: bool,
}

/// A worker's per-client limits, as the coordinator knows them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimits {
    /// Jobs queued or running at once per address.
    pub max_active: u32,
    /// Jobs accepted per address per hour.
    pub per_hour: u32,
    /// CPU seconds per address per minute.
    pub cpu_per_minute: f64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_active: SANDRUN_MAX_ACTIVE,
            per_hour: SANDRUN_JOBS_PER_HOUR,
            cpu_per_minute: SANDRUN_CPU_PER_MINUTE,
        }
    }
}

/// One source address of one worker and what the worker counts against it.
#[derive(Debug, Clone)]
pub struct Source {
    /// The local address.
    pub address: IpAddr,
    /// Jobs sent from it that the worker still counts: submit in flight, queued or running.
    pub in_flight: u32,
    /// Its submits not answered yet (each may become one more acceptance this hour).
    pub submitting: u32,
    /// When the worker accepted each of its jobs in the last hour.
    accepted: VecDeque<Instant>,
    /// CPU seconds of its jobs that ended in the last minute, as the worker books them.
    cpu: VecDeque<(Instant, f64)>,
    /// Set while the worker asked this address to wait.
    pub throttle: Option<Throttle>,
    /// No submit from it before this instant (see `SETTLE`).
    settle_until: Option<Instant>,
    /// Jobs accepted from it, in all.
    pub accepted_total: u64,
    /// Submits from it answered 429, in all.
    pub throttled_total: u64,
    /// What `GET /stats` from it said.
    pub stats: StatsState,
}

impl Source {
    /// A fresh source with nothing counted.
    pub fn new(address: IpAddr) -> Self {
        Source {
            address,
            in_flight: 0,
            submitting: 0,
            accepted: VecDeque::new(),
            cpu: VecDeque::new(),
            throttle: None,
            settle_until: None,
            accepted_total: 0,
            throttled_total: 0,
            stats: StatsState::default(),
        }
    }

    /// Jobs accepted in the hour before `now`.
    pub fn accepted_last_hour(&self, now: Instant) -> usize {
        self.accepted
            .iter()
            .filter(|at| now.saturating_duration_since(**at) < HOUR)
            .count()
    }

    /// CPU seconds booked in the minute before `now`: its own jobs' and others' (as `/stats`
    /// last reported them).
    pub fn cpu_last_minute(&self, now: Instant) -> f64 {
        self.own_cpu_last_minute(now) + self.others_cpu(now)
    }

    fn own_cpu_last_minute(&self, now: Instant) -> f64 {
        self.cpu
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) < MINUTE)
            .fold(0.0, |total, (_, cpu)| total + cpu)
    }

    /// CPU seconds of other clients on the address, as `/stats` reported them in the last minute.
    pub fn others_cpu(&self, now: Instant) -> f64 {
        self.stats
            .others_cpu
            .filter(|(at, _)| now.saturating_duration_since(*at) < MINUTE)
            .map_or(0.0, |(_, cpu)| cpu)
    }

    /// Jobs counted against it: ours (submit in flight, queued or running) and others'.
    fn active(&self) -> u32 {
        self.in_flight.saturating_add(self.stats.others_active)
    }

    /// True when its throttle, if any, still holds at `now`.
    pub fn is_throttled(&self, now: Instant) -> bool {
        self.throttle.as_ref().is_some_and(|t| t.until > now)
    }

    /// True when a submit from it should pass the worker's limits now.
    pub fn has_room(&self, now: Instant, limits: &ClientLimits) -> bool {
        !self.is_throttled(now)
            && self.stats.asked_at.is_some()
            && !self.stats.awaiting
            && self.settle_until.is_none_or(|at| at <= now)
            && self.active() < limits.max_active
            && self.accepted_last_hour(now) + (self.submitting as usize) < limits.per_hour as usize
            && self.cpu_last_minute(now) < limits.cpu_per_minute
    }

    /// When a window or throttle that now keeps it full ends (`None`: only a job's end frees it).
    pub fn frees_at(&self, now: Instant, limits: &ClientLimits) -> Option<Instant> {
        let mut at = self.throttle.as_ref().map(|t| t.until).filter(|u| *u > now);
        at = at.max(self.settle_until.filter(|u| *u > now));
        at = at.max(self.hour_frees_at(now, limits.per_hour));
        if self.cpu_last_minute(now) >= limits.cpu_per_minute {
            // The oldest entry still inside the minute (older ones may not be dropped yet).
            let others = self.stats.others_cpu.map(|(t, _)| t + MINUTE);
            let own = self.cpu.iter().map(|(t, _)| *t + MINUTE);
            at = at.max(own.chain(others).filter(|end| *end > now).min());
        }
        at.max(self.stats_due_at(now, limits))
    }

    /// True when a `GET /stats` from it is due at `now`: never asked, or (at most every
    /// [`STATS_INTERVAL`]) after a 429, once a throttle ended, or while others' use, as the last
    /// answer gave it, keeps it full.
    pub fn wants_stats(&self, now: Instant, limits: &ClientLimits) -> bool {
        let st = &self.stats;
        match st.asked_at {
            _ if st.awaiting => false,
            None => true,
            Some(asked) if now < asked + STATS_INTERVAL => false,
            Some(asked) => {
                let throttle_ended = self
                    .throttle
                    .as_ref()
                    .is_some_and(|t| t.until <= now && asked < t.until);
                st.wanted || throttle_ended || self.held_by_others(now, limits)
            }
        }
    }

    /// When a `/stats` it wants (after a 429, or while others hold it full) may be asked.
    fn stats_due_at(&self, now: Instant, limits: &ClientLimits) -> Option<Instant> {
        let asked = self.stats.asked_at?;
        (self.stats.wanted || self.held_by_others(now, limits))
            .then_some(asked + STATS_INTERVAL)
            .filter(|at| *at > now)
    }

    /// True when others' use of the address is what keeps it full.
    fn held_by_others(&self, now: Instant, limits: &ClientLimits) -> bool {
        let by_jobs = self.stats.others_active > 0 && self.active() >= limits.max_active;
        let by_cpu =
            self.others_cpu(now) > 0.0 && self.cpu_last_minute(now) >= limits.cpu_per_minute;
        by_jobs || by_cpu
    }

    /// When a `GET /stats` from it was last sent (`None`: never).
    pub fn stats_asked_at(&self) -> Option<Instant> {
        self.stats.asked_at
    }

    /// Marks a `GET /stats` from it as sent at `now`.
    pub fn asking_stats(&mut self, now: Instant) {
        let st = &mut self.stats;
        st.awaiting = true;
        st.wanted = false;
        st.asked_at = Some(now);
        st.asked_total += 1;
    }

    /// Asks for a `GET /stats` from it as soon as the interval allows (after a 429).
    pub fn want_stats(&mut self) {
        self.stats.wanted = true;
    }

    /// Folds in the answer to a `GET /stats` from it: the worker's CPU limit, and the jobs and
    /// CPU seconds it counts on the address beyond ours. A report that it may submit lifts a
    /// throttle. (One that it may not is a 429 without a submit: the caller throttles it.)
    pub fn note_stats(
        &mut self,
        now: Instant,
        answer: Result<QuotaReport, String>,
        limits: &mut ClientLimits,
    ) {
        self.stats.awaiting = false;
        let report = match answer {
            Ok(report) => report,
            Err(why) => {
                self.stats.error = Some(why);
                return;
            }
        };
        if report.cpu_limit > 0.0 {
            limits.cpu_per_minute = report.cpu_limit;
        }
        let ours = self.in_flight.saturating_sub(self.submitting);
        self.stats.others_active = report.active_jobs.saturating_sub(ours);
        let others = report.cpu_used - self.own_cpu_last_minute(now);
        self.stats.others_cpu = (others > CPU_TOLERANCE).then_some((now, others));
        if report.can_submit {
            self.throttle = None;
        }
        self.stats.error = None;
        self.stats.report = Some(report);
    }

    /// When its hourly window lets another job in, if the worker's count is full.
    pub fn hour_frees_at(&self, now: Instant, per_hour: u32) -> Option<Instant> {
        (self.accepted_last_hour(now) >= per_hour as usize)
            .then(|| {
                self.accepted
                    .iter()
                    .map(|t| *t + HOUR)
                    .find(|end| *end > now)
            })
            .flatten()
    }

    /// Counts a job the worker accepted from it.
    pub fn note_accepted(&mut self, now: Instant) {
        self.submitting = self.submitting.saturating_sub(1);
        self.forget_old(now);
        self.accepted.push_back(now);
        self.accepted_total += 1;
    }

    /// Takes a submit from it that the worker did not accept off the counts.
    pub fn note_not_accepted(&mut self) {
        self.submitting = self.submitting.saturating_sub(1);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Frees the place of one of its jobs that ended, booking its CPU seconds; a concurrency
    /// throttle ends with it. At the concurrency limit `max_active`, the place rests a moment.
    pub fn note_ended(&mut self, now: Instant, cpu_seconds: Option<f64>, max_active: u32) {
        if self.in_flight >= max_active {
            self.settle_until = Some(now + SETTLE);
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.forget_old(now);
        if let Some(cpu) = cpu_seconds.filter(|c| c.is_finite() && *c > 0.0) {
            self.cpu.push_back((now, cpu));
        }
        if self
            .throttle
            .as_ref()
            .is_some_and(|t| t.lifted_by_free_slot)
        {
            self.throttle = None;
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .accepted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= HOUR)
        {
            self.accepted.pop_front();
        }
        while self
            .cpu
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= MINUTE)
        {
            self.cpu.pop_front();
        }
    }
}

/// The source with the most room at `now`: fewest jobs in flight (others' included), then
/// fewest accepted this hour, then least CPU this minute (others' included); `None` when every one is full or throttled.
pub fn pick(sources: &[Source], now: Instant, limits: &ClientLimits) -> Option<usize> {
    sources
        .iter()
        .enumerate()
        .filter(|(_, s)| s.has_room(now, limits))
        .min_by(|(_, a), (_, b)| {
            (a.active(), a.accepted_last_hour(now))
                .cmp(&(b.active(), b.accepted_last_hour(now)))
                .then(a.cpu_last_minute(now).total_cmp(&b.cpu_last_minute(now)))
        })
        .map(|(i, _)| i)
}

/// The number in parentheses of a sandrun 429 message, e.g. 2 in "Max concurrent jobs reached (2)".
pub fn limit_named(message: &str) -> Option<u32> {
    let inside = message.rsplit_once('(')?.1.split_once(')')?.0;
    inside.trim().parse::<u32>().ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(n: u8) -> Vec<Source> {
        (0..n)
            .map(|i| {
                let mut s = Source::new(IpAddr::from([127, 0, 0, 2 + i]));
                s.stats.asked_at = Some(Instant::now() - STATS_INTERVAL);
                s
            })
            .collect()
    }

    fn report(cpu_used: f64, active_jobs: u32, reason: &str) -> QuotaReport {
        QuotaReport {
            at: 0.0,
            cpu_used,
            cpu_limit: 10.0,
            active_jobs,
            can_submit: reason.is_empty(),
            reason: reason.to_string(),
        }
    }

    #[test]
    fn an_address_waits_for_its_first_stats_and_counts_what_others_use() {
        let mut limits = ClientLimits::default();
        let now = Instant::now();
        let mut fresh = Source::new(IpAddr::from([127, 0, 0, 2]));
        assert!(fresh.wants_stats(now, &limits));
        assert!(!fresh.has_room(now, &limits), "not before its first /stats");
        fresh.asking_stats(now);
        assert!(!fresh.wants_stats(now, &limits));
        assert!(!fresh.has_room(now, &limits), "not while it is asked");
        fresh.note_stats(now, Ok(report(9.0, 1, "")), &mut limits);
        assert!(fresh.has_room(now, &limits));
        assert_eq!(fresh.stats.others_active, 1);
        assert!((fresh.cpu_last_minute(now) - 9.0).abs() < 1e-9);
        let mut s = sources(2);
        s[0] = fresh;
        assert_eq!(
            pick(&s, now, &limits),
            Some(1),
            "the other one has more room"
        );
        s[0].in_flight = 1;
        assert!(
            !s[0].has_room(now, &limits),
            "one of ours and one of another client"
        );
        let later = now + STATS_INTERVAL;
        assert!(
            s[0].wants_stats(later, &limits),
            "others hold it full: ask again"
        );
        assert_eq!(s[0].frees_at(now, &limits), Some(later));
        s[0].asking_stats(later);
        s[0].note_stats(later, Ok(report(0.0, 1, "")), &mut limits);
        assert!(
            s[0].has_room(later, &limits),
            "the other client's job ended"
        );
        assert!(!s[0].wants_stats(later + STATS_INTERVAL, &limits));
    }

    #[test]
    fn stats_are_asked_after_a_429_and_when_a_throttle_ends_at_most_every_interval() {
        let limits = ClientLimits::default();
        let now = Instant::now();
        let mut s = sources(1);
        s[0].asking_stats(now);
        s[0].stats.awaiting = false;
        s[0].want_stats();
        assert!(!s[0].wants_stats(now, &limits), "asked a moment ago");
        assert!(s[0].wants_stats(now + STATS_INTERVAL, &limits));
        s[0].asking_stats(now + STATS_INTERVAL);
        s[0].stats.awaiting = false;
        let until = now + STATS_INTERVAL * 3;
        s[0].throttle = Some(Throttle {
            until,
            until_unix: 0.0,
            reason: "CPU quota exhausted, wait 5 seconds".to_string(),
            strikes: 1,
            lifted_by_free_slot: false,
        });
        assert!(!s[0].wants_stats(until - Duration::from_millis(1), &limits));
        assert!(s[0].wants_stats(until, &limits), "its throttle ended");
    }

    #[test]
    fn picks_the_address_with_most_room_and_respects_each_limit() {
        let limits = ClientLimits::default();
        let now = Instant::now();
        let mut s = sources(3);
        s[0].in_flight = 1;
        s[1].note_accepted(now);
        assert_eq!(pick(&s, now, &limits), Some(2));
        s[2].in_flight = 2;
        assert_eq!(pick(&s, now, &limits), Some(1));
        s[1].in_flight = 1;
        s[1].note_ended(now, Some(10.0), limits.max_active);
        assert!(!s[1].has_room(now, &limits), "its CPU minute is used up");
        assert_eq!(
            s[1].frees_at(now, &limits),
            Some(now + MINUTE),
            "the CPU minute ends"
        );
        assert_eq!(pick(&s, now, &limits), Some(0));
        s[0].in_flight = 2;
        assert_eq!(pick(&s, now, &limits), None);
        assert_eq!(pick(&s, now + MINUTE, &limits), Some(1));
    }

    #[test]
    fn a_stale_entry_does_not_hide_when_the_cpu_minute_frees() {
        let limits = ClientLimits::default();
        let start = Instant::now();
        let mut s = sources(1);
        s[0].in_flight = 11;
        s[0].note_ended(start, Some(1.0), limits.max_active);
        let later = start + Duration::from_secs(30);
        s[0].note_ended(later, Some(10.0), limits.max_active);
        let now = start + Duration::from_secs(61);
        assert!(!s[0].has_room(now, &limits));
        assert_eq!(s[0].frees_at(now, &limits), Some(later + MINUTE));
    }

    #[test]
    fn the_hourly_window_fills_and_frees() {
        let limits = ClientLimits {
            per_hour: 3,
            ..ClientLimits::default()
        };
        let now = Instant::now();
        let mut s = sources(1);
        for k in 0..3 {
            s[0].note_accepted(now + Duration::from_secs(k));
        }
        let later = now + Duration::from_secs(10);
        assert!(!s[0].has_room(later, &limits));
        assert_eq!(s[0].hour_frees_at(later, 3), Some(now + HOUR));
        assert!(s[0].has_room(now + HOUR, &limits));
    }

    #[test]
    fn reads_the_limit_a_429_names() {
        assert_eq!(limit_named("Max concurrent jobs reached (2)"), Some(2));
        assert_eq!(limit_named("Max jobs per hour reached (20)"), Some(20));
        assert_eq!(limit_named("CPU quota exhausted, wait 4 seconds"), None);
    }
}
