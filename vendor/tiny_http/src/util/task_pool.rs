use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

/// A connection's work, run on a pool thread.
pub type Task = Box<dyn FnMut() + Send>;

/// Manages a collection of threads.
///
/// A new thread is created every time all the existing threads are full.
/// Any idle thread will automatically die after a few seconds.
pub struct TaskPool {
    sharing: Arc<Sharing>,
}

struct Sharing {
    // list of the tasks to be done by worker threads
    todo: Mutex<VecDeque<Task>>,

    // condvar that will be notified whenever a task is added to `todo`
    condvar: Condvar,

    // number of total worker threads running
    active_tasks: AtomicUsize,

    // number of idle worker threads
    waiting_tasks: AtomicUsize,
}

/// Minimum number of active threads.
static MIN_THREADS: usize = 4;

struct Registration<'a> {
    nb: &'a AtomicUsize,
}

impl<'a> Registration<'a> {
    fn new(nb: &'a AtomicUsize) -> Registration<'a> {
        nb.fetch_add(1, Ordering::Release);
        Registration { nb }
    }
}

impl<'a> Drop for Registration<'a> {
    fn drop(&mut self) {
        self.nb.fetch_sub(1, Ordering::Release);
    }
}

impl TaskPool {
    pub fn new() -> TaskPool {
        let pool = TaskPool {
            sharing: Arc::new(Sharing {
                todo: Mutex::new(VecDeque::new()),
                condvar: Condvar::new(),
                active_tasks: AtomicUsize::new(0),
                waiting_tasks: AtomicUsize::new(0),
            }),
        };

        for _ in 0..MIN_THREADS {
            if let Err(e) = pool.add_thread() {
                log::error!("Cannot start a connection thread: {e}");
            }
        }

        pool
    }

    /// Executes a function in a thread.
    /// If no thread is available, spawns a new one.
    ///
    /// Patched: when no thread can be started (the process or its cgroup is at its thread
    /// limit, or out of memory), gives the function back with the error instead of panicking,
    /// so that its caller can answer the connection it holds before dropping it.
    pub fn spawn(&self, code: Task) -> Result<(), (io::Error, Task)> {
        let mut queue = self
            .sharing
            .todo
            .lock()
            .unwrap_or_else(PoisonError::into_inner);

        // Patched: a waiting thread only stops counting as waiting once it wakes, so compare with
        // the tasks already queued for the waiting threads; the original compared with zero and
        // left connections queued behind long-lived keep-alive connections.
        if self.sharing.waiting_tasks.load(Ordering::Acquire) <= queue.len() {
            if let Err(e) = self.add_thread() {
                return Err((e, code));
            }
        }
        queue.push_back(code);
        self.sharing.condvar.notify_one();
        Ok(())
    }

    /// Starts a thread that runs queued tasks (patched: it no longer gets a first task of its
    /// own; `spawn` queues that task before starting it).
    fn add_thread(&self) -> io::Result<()> {
        let sharing = self.sharing.clone();

        let spawned = thread::Builder::new().spawn(move || {
            let sharing = sharing;
            let _active_guard = Registration::new(&sharing.active_tasks);

            loop {
                let mut task: Task = {
                    let mut todo = sharing.todo.lock().unwrap_or_else(PoisonError::into_inner);

                    let task;
                    loop {
                        if let Some(poped_task) = todo.pop_front() {
                            task = poped_task;
                            break;
                        }
                        let _waiting_guard = Registration::new(&sharing.waiting_tasks);

                        let received =
                            if sharing.active_tasks.load(Ordering::Acquire) <= MIN_THREADS {
                                todo = sharing
                                    .condvar
                                    .wait(todo)
                                    .unwrap_or_else(PoisonError::into_inner);
                                true
                            } else {
                                let (new_lock, waitres) = sharing
                                    .condvar
                                    .wait_timeout(todo, Duration::from_millis(5000))
                                    .unwrap_or_else(PoisonError::into_inner);
                                todo = new_lock;
                                !waitres.timed_out()
                            };

                        if !received && todo.is_empty() {
                            return;
                        }
                    }

                    task
                };

                task();
            }
        });
        spawned.map(|_| ())
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        self.sharing
            .active_tasks
            .store(999_999_999, Ordering::Release);
        self.sharing.condvar.notify_all();
    }
}
