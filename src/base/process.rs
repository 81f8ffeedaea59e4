//! The process's own figures (Prometheus' standard `process_*` metrics), read from `/proc` and
//! `getrusage`/`getrlimit`. Linux only; a figure that cannot be read is `None`.

use crate::base::fd_limit;
use std::fs;

/// What the process uses right now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// Resident set size in bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size in bytes.
    pub virtual_bytes: Option<u64>,
    /// User plus system CPU time in seconds.
    pub cpu_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn memory() -> (Option<u64>, Option<u64>) {
    let Ok(statm) = fs::read_to_string("/proc/self/statm") else {
        return (None, None);
    };
    let mut fields = statm.split_whitespace().map(|f| f.parse::<u64>().ok());
    let pages = page_size();
    let size = fields.next().flatten().map(|p| p * pages);
    let resident = fields.next().flatten().map(|p| p * pages);
    (resident, size)
}

fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Reads the process's figures now.
pub fn stats() -> ProcessStats {
    let (resident_bytes, virtual_bytes) = memory();
    let open_fds = fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count().saturating_sub(1) as u64);
    ProcessStats {
        resident_bytes,
        virtual_bytes,
        cpu_seconds: cpu_seconds(),
        open_fds,
        max_fds: fd_limit::soft(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_figures_are_read() {
        let s = stats();
        assert!(s.resident_bytes.is_some_and(|b| b > 0), "{s:?}");
        assert!(s.virtual_bytes >= s.resident_bytes, "{s:?}");
        assert!(s.cpu_seconds.is_some_and(|c| c >= 0.0), "{s:?}");
        assert!(s.open_fds.is_some_and(|n| n >= 3), "{s:?}");
        assert!(s.max_fds >= s.open_fds, "{s:?}");
    }
}
