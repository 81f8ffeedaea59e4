//! Thread priorities. The threads that dispatch and follow jobs (dispatch, stream, tracker) run
//! a few nice steps below the rest (`--follow-nice`), so that when the cores are short, answers
//! to clients and the job store's commits come first; with cores to spare it changes nothing.
//! On Linux the nice value belongs to each thread, and a new thread starts with its creator's:
//! so each lowered thread sets its value from the process's own, noted once at start, never
//! from its creator's.

use std::io;
use std::sync::OnceLock;

/// The highest nice value (the lowest priority) there is.
pub const LOWEST: u8 = 19;

/// The process's nice value at start.
static BASE: OnceLock<i32> = OnceLock::new();

/// The calling thread's nice value (0 when it cannot be read).
fn current() -> i32 {
    // SAFETY: errno is this thread's own; getpriority only reads. It may return -1 as a value,
    // so errno, cleared first, tells a failure apart.
    unsafe {
        *libc::__errno_location() = 0;
        let value = libc::getpriority(libc::PRIO_PROCESS, 0);
        if value == -1 && *libc::__errno_location() != 0 {
            0
        } else {
            value
        }
    }
}

/// Notes the process's nice value; call it at start, before any thread lowers its own.
pub fn note_base() {
    let _ = BASE.set(current());
}

/// Runs the calling thread `by` nice steps below the process (at most [`LOWEST`]); 0 leaves it
/// as it is.
pub fn lower_this_thread(by: u8) -> io::Result<()> {
    if by == 0 {
        return Ok(());
    }
    let base = *BASE.get_or_init(current);
    let target = base.saturating_add(i32::from(by)).min(i32::from(LOWEST));
    // SAFETY: who = 0 is the calling thread on Linux; nothing else is touched.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
