//! `SettledViews`: the `/status` answers of recently read settled jobs, kept in memory so that
//! a client polling a finished job is not answered from the job store each time. Bounded in
//! entries and bytes (oldest out first). A settled job's record never changes again; it can
//! only be forgotten by retention, so every lookup compares the store's count of forgotten
//! jobs with the one the views were filled under and starts over when it moved.

use crate::base::sync::lock;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Most answers kept.
const MAX_VIEWS: usize = 128;
/// Most bytes of answers kept (an answer larger than this is never kept).
const MAX_BYTES: usize = 128 * 1024;

/// What a settled job's routes need without reading its record again.
pub struct SettledView {
    /// The `/status` JSON answer.
    pub status_json: Vec<u8>,
    /// The key that submitted the job (`None` on an open coordinator).
    pub owner: Option<String>,
    /// The worker's own id of the job (hidden from non-admin callers).
    pub remote_job_id: Option<String>,
}

/// The bounded set of settled jobs' views.
#[derive(Default)]
pub struct SettledViews {
    inner: Mutex<Views>,
}

#[derive(Default)]
struct Views {
    /// The store's forgotten-job count these views were read under.
    generation: u64,
    by_id: HashMap<String, Arc<SettledView>>,
    /// Ids, oldest first.
    order: VecDeque<String>,
    bytes: usize,
}

impl SettledViews {
    /// The view of job `id`, if kept; `forgotten` is the store's forgotten-job count now (a
    /// change drops every view: one of them may be of a forgotten job).
    pub fn get(&self, id: &str, forgotten: u64) -> Option<Arc<SettledView>> {
        let mut views = lock(&self.inner);
        if views.generation != forgotten {
            *views = Views {
                generation: forgotten,
                ..Views::default()
            };
            return None;
        }
        views.by_id.get(id).cloned()
    }

    /// Keeps the view of settled job `id`, read from a store whose forgotten-job count was
    /// `forgotten` before the read began (a view read across a retention sweep is not kept).
    pub fn insert(&self, id: &str, view: Arc<SettledView>, forgotten: u64) {
        let size = view.status_json.len();
        if size > MAX_BYTES {
            return;
        }
        let mut views = lock(&self.inner);
        if views.generation != forgotten || views.by_id.contains_key(id) {
            return;
        }
        while views.order.len() >= MAX_VIEWS || views.bytes + size > MAX_BYTES {
            let Some(oldest) = views.order.pop_front() else {
                break;
            };
            if let Some(old) = views.by_id.remove(&oldest) {
                views.bytes -= old.status_json.len();
            }
        }
        views.bytes += size;
        views.order.push_back(id.to_string());
        views.by_id.insert(id.to_string(), view);
    }

    /// How many views are kept (for `/pool`).
    pub fn count(&self) -> usize {
        lock(&self.inner).by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(size: usize) -> Arc<SettledView> {
        Arc::new(SettledView {
            status_json: vec![b'x'; size],
            owner: None,
            remote_job_id: None,
        })
    }

    #[test]
    fn views_are_bounded_and_the_oldest_go_first() {
        let views = SettledViews::default();
        for i in 0..MAX_VIEWS + 10 {
            views.insert(&format!("job-{i}"), view(10), 0);
        }
        assert_eq!(views.count(), MAX_VIEWS);
        assert!(views.get("job-0", 0).is_none());
        assert!(views.get(&format!("job-{}", MAX_VIEWS + 9), 0).is_some());
        views.insert("big", view(MAX_BYTES - 100), 0);
        assert!(views.get("big", 0).is_some());
        assert!(views.count() < MAX_VIEWS);
        views.insert("too-big", view(MAX_BYTES + 1), 0);
        assert!(views.get("too-big", 0).is_none());
    }

    #[test]
    fn a_retention_sweep_drops_every_view_and_a_read_across_it_is_not_kept() {
        let views = SettledViews::default();
        views.insert("a", view(10), 0);
        assert!(views.get("a", 0).is_some());
        // The store forgot jobs since: nothing kept may be served.
        assert!(views.get("a", 3).is_none());
        assert_eq!(views.count(), 0);
        // A view read before that sweep is not kept.
        views.insert("b", view(10), 0);
        assert!(views.get("b", 3).is_none());
        views.insert("b", view(10), 3);
        assert!(views.get("b", 3).is_some());
    }
}
