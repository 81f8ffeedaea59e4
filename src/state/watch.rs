//! Jobs that parked requests wait on (`GET /status/{id}?wait=`): the table tells the waiting
//! thread the moment such a job ends, from whichever thread ends it.

use crossbeam_channel::Sender;
use std::collections::HashMap;

/// Watched job ids (with how many requests wait on each) and where their ends are sent.
#[derive(Debug, Default)]
pub struct EndWatch {
    watched: HashMap<String, usize>,
    sender: Option<Sender<String>>,
}

impl EndWatch {
    /// Sends the ids of watched jobs that end to `sender` from now on.
    pub fn connect(&mut self, sender: Sender<String>) {
        self.sender = Some(sender);
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
                let _ = sender.send(id.to_string());
            }
        }
    }
}
