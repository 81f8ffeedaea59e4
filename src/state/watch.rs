//! Jobs that parked requests wait on (`GET /status/{id}?wait=`): the table tells the waiting
//! thread the moment such a job ends, from whichever thread ends it, and when the coordinator
//! stops.

use crossbeam_channel::Sender;
use std::collections::HashMap;

/// What the table tells the waiting thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitNews {
    /// A watched job ended (its id).
    Ended(String),
    /// The coordinator is stopping: every parked request is answered now.
    Stopping,
}

/// Watched job ids (with how many requests wait on each) and where their ends are sent.
#[derive(Debug, Default)]
pub struct EndWatch {
    watched: HashMap<String, usize>,
    sender: Option<Sender<WaitNews>>,
}

impl EndWatch {
    /// Sends the news of watched jobs that end, and of a stop, to `sender` from now on.
    pub fn connect(&mut self, sender: Sender<WaitNews>) {
        self.sender = Some(sender);
    }

    /// The coordinator is stopping: the waiting thread answers what it holds.
    pub fn stopping(&self) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(WaitNews::Stopping);
        }
    }

    /// One more request waits on this job.
    pub fn watch(&mut self, id: &str) {
        *self.watched.entry(id.to_string()).or_default() += 1;
    }

    /// One request stopped waiting on this job.
    pub fn unwatch(&mut self, id: &str) {
        if let Some(count) = self.watched.get_mut(id) {
            *count -= 1;
            if *count == 0 {
                self.watched.remove(id);
            }
        }
    }

    /// The job ended: if requests wait on it, the waiting thread hears of it.
    pub fn ended(&mut self, id: &str) {
        if self.watched.remove(id).is_some() {
            if let Some(sender) = &self.sender {
                let _ = sender.send(WaitNews::Ended(id.to_string()));
            }
        }
    }
}
