//! The hand-off of records from the coordinator's threads to the store writer: one queue, in
//! the order they were sent. Each item says how long it may wait before the writer takes it:
//! an urgent one (zero: a record someone waits on, a close) wakes the writer at once; any other
//! waits until an urgent one comes, or until its time is up ([`SOON`] for a change a crash must
//! not take back for long, [`DEFERRAL`] for a job's later changes). So the writer wakes about
//! once per awaited record, not once per job state change, and the other changes ride along in
//! the transaction of the next one.

use crate::base::sync::lock;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The longest a job's later change (running, ended, collected) waits in the queue.
pub const DEFERRAL: Duration = Duration::from_millis(20);
/// The longest a change that a crash must not take back for long waits in the queue (a
/// worker's job id: without it a restart cannot follow the job).
pub const SOON: Duration = Duration::from_millis(2);

/// The queue and what the writer knows of it.
struct Queue<T> {
    items: VecDeque<T>,
    /// How many items from the front must go at once (up to and including the last urgent).
    urgent: usize,
    /// When the writer must take the items (the earliest any of them may wait until).
    due: Option<Instant>,
    /// Until when the writer sleeps, while it does.
    sleeping_until: Option<Instant>,
    /// The sending side was dropped.
    sender_gone: bool,
    /// The writer is gone: nothing is taken any more.
    receiver_gone: bool,
}

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    ready: Condvar,
    /// Most items the writer takes at once (it wakes when that many wait).
    max: usize,
}

/// The sending side (one per store).
pub struct HandoffSender<T>(Arc<Shared<T>>);

/// The writer's side.
pub struct HandoffReceiver<T>(Arc<Shared<T>>);

/// What [`HandoffReceiver::take`] found.
pub enum Taken<T> {
    /// Items, oldest first.
    Items(Vec<T>),
    /// Nothing to take before the deadline.
    Timeout,
    /// The sender is gone and the queue is empty.
    Closed,
}

/// A queue from which the writer takes at most `max` items at once.
pub fn handoff<T>(max: usize) -> (HandoffSender<T>, HandoffReceiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            urgent: 0,
            due: None,
            sleeping_until: None,
            sender_gone: false,
            receiver_gone: false,
        }),
        ready: Condvar::new(),
        max: max.max(1),
    });
    (HandoffSender(Arc::clone(&shared)), HandoffReceiver(shared))
}

impl<T> HandoffSender<T> {
    /// Queues `item`, to be taken at the latest `within` from now (zero: urgent); wakes the
    /// writer, when it sleeps, if the item is urgent, if the writer would sleep past the item's
    /// time, or if a full batch waits. Gives the item back when the writer is gone.
    pub fn send(&self, item: T, within: Duration) -> Result<(), T> {
        let mut q = lock(&self.0.queue);
        if q.receiver_gone {
            return Err(item);
        }
        q.items.push_back(item);
        // A writer that is not asleep looks at the queue before it sleeps again: only a
        // sleeping one is woken (each wake is a system call).
        let take_now = if within.is_zero() {
            q.urgent = q.items.len();
            true
        } else {
            let at = Instant::now() + within;
            let due = q.due.map_or(at, |due| due.min(at));
            q.due = Some(due);
            q.items.len() >= self.0.max || q.sleeping_until.is_some_and(|until| until > due)
        };
        let wake = take_now && q.sleeping_until.is_some();
        drop(q);
        if wake {
            self.0.ready.notify_one();
        }
        Ok(())
    }
}

impl<T> Drop for HandoffSender<T> {
    fn drop(&mut self) {
        lock(&self.0.queue).sender_gone = true;
        self.0.ready.notify_one();
    }
}

impl<T> HandoffReceiver<T> {
    /// Waits until items are to be taken (an urgent one, a full batch, one that has waited its
    /// time, or the sender gone) and takes up to the batch size, oldest first; or until
    /// `deadline`.
    pub fn take(&self, deadline: Instant) -> Taken<T> {
        let mut q = lock(&self.0.queue);
        loop {
            let now = Instant::now();
            let due = q.due;
            let overdue = due.is_some_and(|at| at <= now) || q.items.len() >= self.0.max;
            if !q.items.is_empty() && (overdue || q.urgent > 0 || q.sender_gone) {
                let n = q.items.len().min(self.0.max);
                let items: Vec<T> = q.items.drain(..n).collect();
                q.urgent = q.urgent.saturating_sub(n);
                if q.items.is_empty() {
                    q.due = None;
                }
                return Taken::Items(items);
            }
            if q.sender_gone {
                return Taken::Closed;
            }
            if now >= deadline {
                return Taken::Timeout;
            }
            let until = due.map_or(deadline, |at| at.min(deadline));
            q.sleeping_until = Some(until);
            q = self
                .0
                .ready
                .wait_timeout(q, until.saturating_duration_since(now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            q.sleeping_until = None;
        }
    }
}

impl<T> Drop for HandoffReceiver<T> {
    /// The writer is gone (stopped or panicked): what waits in the queue is dropped outside
    /// the lock, so that whoever waits on it hears that it will never commit.
    fn drop(&mut self) {
        let left: Vec<T> = {
            let mut q = lock(&self.0.queue);
            q.receiver_gone = true;
            q.urgent = 0;
            q.due = None;
            q.items.drain(..).collect()
        };
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn items(taken: Taken<u32>) -> Vec<u32> {
        match taken {
            Taken::Items(items) => items,
            Taken::Timeout => panic!("timed out"),
            Taken::Closed => panic!("closed"),
        }
    }

    #[test]
    fn an_urgent_item_takes_everything_sent_before_it_at_once() {
        let (sender, receiver) = handoff(16);
        for n in 0..3 {
            assert!(sender.send(n, DEFERRAL).is_ok());
        }
        assert!(sender.send(3, Duration::ZERO).is_ok());
        let started = Instant::now();
        let taken = items(receiver.take(started + Duration::from_secs(10)));
        assert_eq!(taken, vec![0, 1, 2, 3]);
        assert!(started.elapsed() < DEFERRAL, "{:?}", started.elapsed());
    }

    #[test]
    fn an_item_nobody_waits_on_is_taken_once_it_waited_its_time() {
        let (sender, receiver) = handoff(16);
        let sent = Instant::now();
        assert!(sender.send(7, DEFERRAL).is_ok());
        let taken = items(receiver.take(sent + Duration::from_secs(10)));
        assert_eq!(taken, vec![7]);
        assert!(sent.elapsed() >= DEFERRAL);
        let sent = Instant::now();
        assert!(sender.send(8, DEFERRAL).is_ok());
        assert!(sender.send(9, SOON).is_ok());
        let taken = items(receiver.take(sent + Duration::from_secs(10)));
        assert_eq!(
            taken,
            vec![8, 9],
            "the sooner one takes the earlier one along"
        );
        assert!(sent.elapsed() < DEFERRAL, "{:?}", sent.elapsed());
        assert!(matches!(
            receiver.take(Instant::now() + Duration::from_millis(1)),
            Taken::Timeout
        ));
    }

    #[test]
    fn a_sleeping_writer_is_woken_by_an_urgent_item_and_takes_at_most_a_batch() {
        let (sender, receiver) = handoff(2);
        let writer = thread::spawn(move || {
            let first = items(receiver.take(Instant::now() + Duration::from_secs(30)));
            let second = items(receiver.take(Instant::now() + Duration::from_secs(30)));
            (first, second, receiver)
        });
        thread::sleep(Duration::from_millis(50));
        for n in 0..3 {
            let within = if n == 2 { Duration::ZERO } else { DEFERRAL };
            assert!(sender.send(n, within).is_ok());
        }
        let (first, second, receiver) = writer.join().unwrap_or_else(|_| panic!("writer"));
        assert_eq!(first, vec![0, 1], "a full batch goes at once");
        assert_eq!(second, vec![2]);
        drop(sender);
        assert!(matches!(
            receiver.take(Instant::now() + Duration::from_secs(10)),
            Taken::Closed
        ));
    }

    #[test]
    fn once_the_writer_is_gone_a_send_gives_the_item_back() {
        let (sender, receiver) = handoff(4);
        assert!(sender.send(1, DEFERRAL).is_ok());
        drop(receiver);
        assert_eq!(sender.send(2, Duration::ZERO).err(), Some(2));
    }
}
