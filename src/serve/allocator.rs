//! glibc's allocator settings for a coordinator that runs for months while its threads come
//! and go (dispatch, stream, upload and tracker threads start under load and end when idle).
//!
//! Left at its defaults, glibc grows RSS with the history of the load, not with what is live
//! (measured over a run of fast jobs: about 250 bytes per job, with nothing of the jobs left
//! in memory):
//! - every thread keeps a cache of freed blocks (tcache), and the blocks cached by threads
//!   that come and go pin pages ever higher in the heap;
//! - threads get malloc arenas of their own (up to 8 per core), each keeping the free pages
//!   around the few long-lived blocks a thread left in it;
//! - the stacks of ended threads are kept for reuse (up to 40 MiB of them), each with about
//!   20 KiB still resident, and every new peak of threads at once adds to them.
//!
//! So the coordinator runs with no per-thread cache, two arenas and a 1 MiB stack cache.
//! Without a per-thread cache every `malloc` and `free` takes its arena's lock; with one arena
//! every thread queued on that one lock (bench scenario 2: about 15% more CPU per job than with
//! two), while two kept RSS as flat as one (50,000 jobs: 1.02x the RSS after 5,000). These
//! are glibc tunables, read only when a program starts: the process re-executes itself once
//! with them added to `GLIBC_TUNABLES`. A setting the operator's `GLIBC_TUNABLES` already
//! names is left as it is (and so is `MALLOC_ARENA_MAX`). Other C libraries (the musl static
//! build) behave otherwise, and nothing is done there.

/// The tunables, and the values the coordinator runs with.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TUNABLES: [(&str, &str); 3] = [
    ("glibc.malloc.tcache_count", "0"),
    ("glibc.malloc.arena_max", "2"),
    ("glibc.pthread.stack_cache_size", "1048576"),
];

/// Set in the environment of the re-executed process: it never re-executes twice, whatever
/// glibc made of `GLIBC_TUNABLES` meanwhile.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TUNED: &str = "TRUSTED_POOL_TUNED";

/// Re-executes the process with [`TUNABLES`] unless its environment already sets them all;
/// returns only when it did not re-execute (why, when it tried and failed). Call it first
/// thing, before any thread starts or a signal is blocked (both would be inherited).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(TUNED).is_some() {
        return Ok(());
    }
    let given = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let arena_given = std::env::var_os("MALLOC_ARENA_MAX").is_some();
    let missing: Vec<String> = TUNABLES
        .iter()
        .filter(|(name, _)| !given.contains(name))
        .filter(|(name, _)| !(arena_given && name.ends_with("arena_max")))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let tunables = std::iter::once(given)
        .filter(|g| !g.is_empty())
        .chain(missing)
        .collect::<Vec<_>>()
        .join(":");
    // The binary's own path, not /proc/self/exe: the process is named after what it executes.
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the binary: {e}"))?;
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(&exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // `exec` returns only on failure.
    let e = command
        .args(args)
        .env("GLIBC_TUNABLES", &tunables)
        .env(TUNED, "1")
        .exec();
    Err(format!(
        "could not re-execute {} with GLIBC_TUNABLES={tunables} ({e}); RSS may grow with the \
         history of the load",
        exe.display()
    ))
}

/// Other C libraries need none of this.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() -> Result<(), String> {
    Ok(())
}
