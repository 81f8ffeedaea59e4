//! Background threads (dispatches, trackers) run at a lower scheduling priority than the threads
//! that answer clients: when the machine is saturated, a submit or a status query is answered
//! first and dispatching catches up after; with CPU to spare it changes nothing.

/// How much nicer than the rest of the coordinator a background thread runs.
pub const BACKGROUND_NICE: i32 = 5;

/// Lowers the calling thread's priority by [`BACKGROUND_NICE`] (on Linux the nice value is per
/// thread). A failure only leaves the priority as it was.
pub fn lower_current_thread() {
    // SAFETY: nice(2) takes a plain integer and touches no memory of ours.
    let result = unsafe { libc::nice(BACKGROUND_NICE) };
    if result == -1 {
        log::debug!(
            "Could not lower a background thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_nice() -> i32 {
        // SAFETY: getpriority(2) takes plain integers; 0 names the calling thread on Linux.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn only_the_calling_thread_gets_nicer() {
        let before = current_nice();
        let lowered = std::thread::spawn(|| {
            let start = current_nice();
            lower_current_thread();
            (start, current_nice())
        })
        .join()
        .expect("thread");
        assert_eq!(lowered.1, (lowered.0 + BACKGROUND_NICE).min(19));
        assert_eq!(current_nice(), before, "the calling thread only");
    }
}
