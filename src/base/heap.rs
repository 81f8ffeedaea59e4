//! Gives the heap's free pages back to the system.
//!
//! glibc returns free memory only from the top of its heap; free pages below a block still in
//! use stay resident. Over months of jobs, blocks that live long (a job followed for minutes,
//! a grown table) end up high in the heap while everything around them was freed, and RSS
//! creeps up with the history of the load. `malloc_trim` releases every free page, wherever
//! it lies. Other C libraries (musl) have no such call, and nothing is done there.

/// Releases the heap's free pages (a few hundred microseconds on a heap of a few MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_pages() {
    // SAFETY: malloc_trim takes no pointer and only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_pages() {}
