//! The certificates the coordinator presents (the listener's, the one shown to `https://`
//! workers) and when each expires, as last read; and when the log next reminds of what expires.

use crate::base::cert_expiry::ChainExpiry;
use crate::base::sync::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Seconds from one reminder to the next.
const REMINDER_EVERY: u64 = 86_400;

/// What a certificate the coordinator presents is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    /// The listener's (`--tls-cert`).
    Listener,
    /// The client certificate shown to `https://` workers (`--worker-tls-cert`).
    WorkerClient,
}

impl Presented {
    /// Both, in the order `/pool` and `/metrics` show them.
    pub const ALL: [Presented; 2] = [Self::Listener, Self::WorkerClient];

    /// The name in `/pool` and the `certificate` label of `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listener => "listener",
            Self::WorkerClient => "worker_client",
        }
    }

    /// What the log calls it.
    pub fn described(self) -> &'static str {
        match self {
            Self::Listener => "The listener's TLS certificate",
            Self::WorkerClient => "The client certificate presented to https:// workers",
        }
    }
}

/// The expiry of each certificate in use (replaced when it is read again) and the time of the
/// log's next reminder.
#[derive(Debug, Default)]
pub struct Certificates {
    expiries: Mutex<[Option<ChainExpiry>; 2]>,
    next_reminder: AtomicU64,
}

impl Certificates {
    /// Records the expiry of the certificate in use for `what` (`None`: none, or unreadable).
    pub fn set(&self, what: Presented, expiry: Option<ChainExpiry>) {
        lock(&self.expiries)[what as usize] = expiry;
    }

    /// The expiry of the certificate in use for `what`.
    pub fn get(&self, what: Presented) -> Option<ChainExpiry> {
        lock(&self.expiries)[what as usize].clone()
    }

    /// Whether the log's reminder is due at unix time `now`; if so, the next one is set a day
    /// later. It is also due when `now` is more than a day before the next one: the wall clock
    /// was stepped back past the last reminder (a clock a year fast at boot, then corrected,
    /// would otherwise silence it for a year).
    pub fn reminder_due(&self, now: u64) -> bool {
        let next = self.next_reminder.load(Ordering::Relaxed);
        (now >= next || now.saturating_add(REMINDER_EVERY) < next)
            && self
                .next_reminder
                .compare_exchange(
                    next,
                    now.saturating_add(REMINDER_EVERY),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reminder_is_due_at_once_and_then_once_a_day() {
        let certificates = Certificates::default();
        let start = 1_800_000_000;
        assert!(certificates.reminder_due(start));
        assert!(!certificates.reminder_due(start));
        assert!(!certificates.reminder_due(start + 86_399));
        assert!(certificates.reminder_due(start + 86_400));
        assert!(!certificates.reminder_due(start + 86_401));
    }

    #[test]
    fn a_clock_stepped_back_past_the_last_reminder_does_not_silence_the_next() {
        let certificates = Certificates::default();
        let fast = 1_800_000_000 + 365 * 86_400;
        assert!(certificates.reminder_due(fast));
        // Corrected a year back: due at once, then a day later again.
        let corrected = 1_800_000_000;
        assert!(certificates.reminder_due(corrected));
        assert!(!certificates.reminder_due(corrected + 60));
        assert!(certificates.reminder_due(corrected + 86_400));
        // A step back that stays after the last reminder keeps the next one where it is.
        assert!(!certificates.reminder_due(corrected + 86_400 + 7_200));
        assert!(!certificates.reminder_due(corrected + 86_400 + 3_600));
        assert!(certificates.reminder_due(corrected + 2 * 86_400));
    }
}
