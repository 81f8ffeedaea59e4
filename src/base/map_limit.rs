//! The kernel's limit on a process's memory maps (`vm.max_map_count`), which bounds its
//! threads: each thread maps its stack, a guard page, its signal stack and that one's guard
//! page. A thread started when no map is left cannot map its signal stack, and Rust's runtime
//! then aborts the whole process (it cannot unwind there): at Linux's default of 65,530 maps,
//! about 16,500 idle client connections (one thread each) ended the coordinator. So
//! `--max-connections` is kept within the room the maps leave.

use std::fs;

/// Where Linux gives the limit.
const MAX_MAP_COUNT: &str = "/proc/sys/vm/max_map_count";

/// Memory maps one thread holds: its stack, the stack's guard page, its signal stack and that
/// one's guard page.
pub const MAPS_PER_THREAD: u64 = 4;

/// Maps kept for everything but the threads of client connections and handlers: the program
/// and its libraries, the heap's arenas, and the threads that follow jobs (a dispatch, a stream
/// and a share of a tracker per job in flight), up to about 2,000 of them.
pub const MAPS_RESERVED: u64 = 8192;

/// Threads one client connection may hold: its own, and the upload or follower thread that
/// serves its request.
pub const THREADS_PER_CONNECTION: u64 = 2;

/// The process's limit on memory maps, when the kernel says it.
pub fn max_map_count() -> Option<u64> {
    fs::read_to_string(MAX_MAP_COUNT).ok()?.trim().parse().ok()
}

/// The client connections whose threads fit under `max_maps`, beside `handlers` handler
/// threads and [`MAPS_RESERVED`] (at least 1).
pub fn connection_room(max_maps: u64, handlers: u64) -> u64 {
    let threads = max_maps.saturating_sub(MAPS_RESERVED) / MAPS_PER_THREAD;
    (threads.saturating_sub(handlers) / THREADS_PER_CONNECTION).max(1)
}

#[cfg(test)]
mod tests {
    use super::connection_room;

    #[test]
    fn the_room_leaves_the_reserve_and_the_handlers() {
        // Linux's default: (65,530 - 8,192) / 4 = 14,334 threads; 8 handlers; two a connection.
        assert_eq!(connection_room(65_530, 8), 7_163);
        assert_eq!(connection_room(1_048_576, 8), 130_044);
        assert_eq!(connection_room(100, 8), 1);
    }
}
