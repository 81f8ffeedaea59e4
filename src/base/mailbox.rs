//! A queue between threads whose receivers go to sleep at once when it is empty.
//!
//! The channels' receivers spin and then yield the processor a few times before they sleep.
//! On a busy machine every yield is a switch to another thread and back; the threads that wait
//! most (idle dispatch and upload threads, submits waiting for their commit, and the WAL sync
//! threads the store had then) spent about a tenth of the coordinator's CPU that way under a submit flood. These waits are
//! long compared with a spin, so they sleep on a condition variable instead.

use crate::base::sync::lock;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Why nothing was received.
#[derive(Debug, PartialEq, Eq)]
pub enum Empty {
    /// The time given ran out.
    Timeout,
    /// The mailbox was closed and everything sent before was received.
    Closed,
}

struct Slots<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Receivers asleep on the condition variable: a send or close wakes someone only when
    /// there is someone to wake (each wake is a system call).
    sleepers: usize,
}

/// A queue with any number of senders and receivers; receivers sleep while it is empty.
pub struct Mailbox<T> {
    slots: Mutex<Slots<T>>,
    ready: Condvar,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            slots: Mutex::new(Slots {
                items: VecDeque::new(),
                closed: false,
                sleepers: 0,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> Mailbox<T> {
    /// Queues `item` and wakes one receiver; false (the item dropped) once closed.
    pub fn send(&self, item: T) -> bool {
        let mut slots = lock(&self.slots);
        if slots.closed {
            return false;
        }
        slots.items.push_back(item);
        let wake = slots.sleepers > 0;
        drop(slots);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// Closes the mailbox: sends fail from now on, and receivers get [`Empty::Closed`] once
    /// they took what was sent before.
    pub fn close(&self) {
        self.close_after(None);
    }

    /// Queues `item` (unless closed) and closes the mailbox, waking its receivers once.
    fn close_after(&self, item: Option<T>) {
        let mut slots = lock(&self.slots);
        if !slots.closed {
            slots.items.extend(item);
        }
        slots.closed = true;
        let wake = slots.sleepers > 0;
        drop(slots);
        if wake {
            self.ready.notify_all();
        }
    }

    /// Takes the oldest item, waiting for one until it is closed.
    pub fn recv(&self) -> Result<T, Empty> {
        self.take(None)
    }

    /// Takes the oldest item, waiting for one at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, Empty> {
        self.take(Some(Instant::now() + timeout))
    }

    fn take(&self, deadline: Option<Instant>) -> Result<T, Empty> {
        let mut slots = lock(&self.slots);
        loop {
            if let Some(item) = slots.items.pop_front() {
                return Ok(item);
            }
            if slots.closed {
                return Err(Empty::Closed);
            }
            let left = match deadline {
                None => None,
                Some(deadline) => match deadline.saturating_duration_since(Instant::now()) {
                    left if left.is_zero() => return Err(Empty::Timeout),
                    left => Some(left),
                },
            };
            slots.sleepers += 1;
            slots = match left {
                None => self
                    .ready
                    .wait(slots)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(left) => {
                    self.ready
                        .wait_timeout(slots, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            slots.sleepers -= 1;
        }
    }
}

/// The sending half of a one-answer mailbox: dropping it unanswered closes the mailbox, so
/// the receiver learns that no answer will come.
pub struct Answer<T>(Option<Arc<Mailbox<T>>>);

impl<T> Answer<T> {
    /// A mailbox for one answer: its sending half and its receiving half.
    pub fn pair() -> (Answer<T>, Arc<Mailbox<T>>) {
        let mailbox = Arc::new(Mailbox::default());
        (Answer(Some(Arc::clone(&mailbox))), mailbox)
    }

    /// Delivers the answer and closes the mailbox (one wake-up of the receiver).
    pub fn send(mut self, answer: T) {
        if let Some(mailbox) = self.0.take() {
            mailbox.close_after(Some(answer));
        }
    }
}

impl<T> Drop for Answer<T> {
    fn drop(&mut self) {
        if let Some(mailbox) = self.0.take() {
            mailbox.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn items_arrive_in_order_and_a_closed_mailbox_drains_first() {
        let mailbox = Arc::new(Mailbox::default());
        let receiver = {
            let mailbox = Arc::clone(&mailbox);
            thread::spawn(move || {
                let mut got = Vec::new();
                while let Ok(n) = mailbox.recv() {
                    got.push(n);
                }
                got
            })
        };
        for n in 0..1000 {
            assert!(mailbox.send(n));
        }
        mailbox.close();
        assert!(!mailbox.send(1000));
        let got = receiver.join().unwrap_or_default();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_wait_times_out_and_an_unanswered_answer_closes() {
        let mailbox: Mailbox<u8> = Mailbox::default();
        assert_eq!(
            mailbox.recv_timeout(Duration::from_millis(10)),
            Err(Empty::Timeout)
        );
        let (answer, answered) = Answer::<u8>::pair();
        let sender = thread::spawn(move || answer.send(7));
        assert_eq!(answered.recv(), Ok(7));
        let _ = sender.join();
        assert_eq!(answered.recv(), Err(Empty::Closed));
        let (answer, unanswered) = Answer::<u8>::pair();
        drop(answer);
        assert_eq!(unanswered.recv(), Err(Empty::Closed));
    }

    /// Waits until `n` receivers sleep on `mailbox`.
    fn until_asleep<T>(mailbox: &Mailbox<T>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while lock(&mailbox.slots).sleepers < n {
            assert!(Instant::now() < deadline, "the receivers never slept");
            thread::yield_now();
        }
    }

    #[test]
    fn sleeping_receivers_are_woken_by_an_answer_and_by_a_close() {
        let (answer, answered) = Answer::<u8>::pair();
        let waiter = {
            let answered = Arc::clone(&answered);
            thread::spawn(move || answered.recv())
        };
        until_asleep(&answered, 1);
        answer.send(9);
        assert_eq!(waiter.join().ok(), Some(Ok(9)));
        assert_eq!(answered.recv(), Err(Empty::Closed));

        let mailbox: Arc<Mailbox<u8>> = Arc::default();
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let mailbox = Arc::clone(&mailbox);
                thread::spawn(move || mailbox.recv())
            })
            .collect();
        until_asleep(&mailbox, 4);
        mailbox.close();
        for waiter in waiters {
            assert_eq!(waiter.join().ok(), Some(Err(Empty::Closed)));
        }
    }
}
