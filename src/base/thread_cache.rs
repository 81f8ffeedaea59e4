//! A cache of threads for blocking tasks that may take long (dispatches): a task goes to an idle
//! thread when there is one, else to a new thread, so one slow task never waits for another. A
//! thread idle for [`IDLE_KEEP`] ends. Reusing threads saves the clone, stack mapping and
//! unmapping that a thread per task costs on every job. Idle threads sleep on a [`Mailbox`].

use crate::base::mailbox::{Empty, Mailbox};
use crate::base::niceness;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// How long a thread waits for another task before it ends.
pub const IDLE_KEEP: Duration = Duration::from_secs(10);

/// A task for a cached thread.
pub type Task = Box<dyn FnOnce() + Send>;

/// Threads that run [`Task`]s, reused while they are idle.
pub struct ThreadCache {
    name: &'static str,
    stack_size: usize,
    /// Nice steps its threads run below the process (see [`niceness`]).
    nice: u8,
    tasks: Arc<Mailbox<Task>>,
    /// Threads waiting for a task, less the tasks already promised to them.
    idle: Arc<AtomicUsize>,
}

impl ThreadCache {
    /// A cache whose threads are called `name`, have `stack_size` bytes of stack and run
    /// `nice` steps below the process.
    pub fn new(name: &'static str, stack_size: usize, nice: u8) -> Self {
        ThreadCache {
            name,
            stack_size,
            nice,
            tasks: Arc::new(Mailbox::default()),
            idle: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs `task` on an idle thread, or on a new one when none is idle.
    pub fn run(&self, task: Task) -> io::Result<()> {
        if take_one(&self.idle) {
            self.tasks.send(task);
            return Ok(());
        }
        let tasks = Arc::clone(&self.tasks);
        let idle = Arc::clone(&self.idle);
        let (name, nice) = (self.name, self.nice);
        thread::Builder::new()
            .name(name.to_string())
            .stack_size(self.stack_size)
            .spawn(move || {
                if let Err(e) = niceness::lower_this_thread(nice) {
                    log::debug!("A {name} thread keeps its priority: {e}");
                }
                serve(name, task, &tasks, &idle)
            })
            .map(|_| ())
    }

    /// Threads idle now (tests watch reuse with it).
    #[cfg(test)]
    fn idle_threads(&self) -> usize {
        self.idle.load(Ordering::Acquire)
    }
}

/// Takes one from a positive count; false when it is zero.
fn take_one(count: &AtomicUsize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

impl Drop for ThreadCache {
    /// Idle threads end; busy ones end after their task.
    fn drop(&mut self) {
        self.tasks.close();
    }
}

fn serve(name: &str, first: Task, tasks: &Mailbox<Task>, idle: &AtomicUsize) {
    let mut task = first;
    loop {
        if catch_unwind(AssertUnwindSafe(task)).is_err() {
            log::error!("A {name} task panicked; its thread goes on");
        }
        idle.fetch_add(1, Ordering::AcqRel);
        task = match tasks.recv_timeout(IDLE_KEEP) {
            Ok(next) => next,
            Err(Empty::Closed) => return,
            // Leave, unless every idle thread was promised a task meanwhile: then one is coming.
            Err(Empty::Timeout) if take_one(idle) => return,
            Err(Empty::Timeout) => match tasks.recv() {
                Ok(next) => next,
                Err(_) => return,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_idle(cache: &ThreadCache, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while cache.idle_threads() != n {
            assert!(Instant::now() < deadline, "never {n} idle threads");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_idle_thread_is_reused_and_survives_a_panicking_task() {
        let cache = ThreadCache::new("test", 64 * 1024, 0);
        let (done, finished) = crossbeam_channel::unbounded();
        for round in 0..20 {
            let done = done.clone();
            let task: Task = if round == 5 {
                Box::new(move || {
                    let _ = done.send(thread::current().id());
                    panic!("a task failure on purpose");
                })
            } else {
                Box::new(move || {
                    let _ = done.send(thread::current().id());
                })
            };
            cache.run(task).expect("run");
            wait_idle(&cache, 1);
        }
        let threads: std::collections::HashSet<_> = finished.try_iter().collect();
        assert_eq!(threads.len(), 1, "tasks one after another share one thread");
    }

    #[test]
    fn a_busy_thread_does_not_hold_up_the_next_task() {
        let cache = ThreadCache::new("test", 64 * 1024, 0);
        let (release, blocked) = crossbeam_channel::bounded::<()>(0);
        let (done, finished) = crossbeam_channel::unbounded();
        cache
            .run(Box::new(move || {
                let _ = blocked.recv();
            }))
            .expect("run");
        cache
            .run(Box::new(move || {
                let _ = done.send(());
            }))
            .expect("run");
        assert!(finished.recv_timeout(Duration::from_secs(30)).is_ok());
        let _ = release.send(());
        wait_idle(&cache, 2);
    }
}
