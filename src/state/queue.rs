//! The queue of jobs waiting for a worker: three priority levels (higher levels leave first),
//! aging (a job that waited longer than the aging time in its level moves up one level), and,
//! within a level, the owners (client keys) served in turn, FIFO within an owner. A job put back
//! at the head (a dispatch the worker did not take) goes before everything else. A job may
//! have a deadline (its queue timeout): [`JobQueue::take_expired`] takes out the jobs whose
//! deadline passed.
//!
//! Every operation costs O(1) or O(owners), except removing one job (O(jobs of its owner in
//! its level)), which a cancel or an expiry does; a job with a deadline costs O(log n) more
//! to enter and leave.

use crate::base::job::Priority;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who a queued job belongs to: a client key's name, or None without keys.
pub type Owner = Option<String>;

/// One waiting job in a level.
#[derive(Debug)]
struct Entry {
    /// Increases with every insertion into any level: an owner's jobs are sorted by it.
    seq: u64,
    /// Shared with the job's key in `JobQueue::places` (one allocation per queued job).
    id: Arc<str>,
    /// When it entered this level (aging counts from here).
    since: Instant,
    /// The job asks for labels (a walk down the queue passes it without a look at the job
    /// when no worker with room takes labelled jobs).
    labelled: bool,
}

/// One priority level: each owner's FIFO, and the order in which owners take their turn.
#[derive(Debug, Default)]
struct Level {
    owners: HashMap<Owner, VecDeque<Entry>>,
    /// Owners with waiting jobs; the front one is served next, then goes to the back.
    turn: VecDeque<Owner>,
    len: usize,
}

impl Level {
    fn push(&mut self, owner: Owner, entry: Entry) {
        let fifo = self.owners.entry(owner.clone()).or_default();
        if fifo.is_empty() {
            self.turn.push_back(owner);
        }
        fifo.push_back(entry);
        self.len += 1;
    }

    fn peek(&self) -> Option<&Entry> {
        self.owners.get(self.turn.front()?)?.front()
    }

    fn pop(&mut self) -> Option<(Owner, Entry)> {
        let owner = self.turn.pop_front()?;
        let fifo = self.owners.get_mut(&owner)?;
        let entry = fifo.pop_front()?;
        if fifo.is_empty() {
            self.owners.remove(&owner);
        } else {
            self.turn.push_back(owner.clone());
        }
        self.len -= 1;
        Some((owner, entry))
    }

    fn remove(&mut self, owner: &Owner, seq: u64) -> Option<Entry> {
        let fifo = self.owners.get_mut(owner)?;
        let at = fifo.binary_search_by_key(&seq, |e| e.seq).ok()?;
        let entry = fifo.remove(at)?;
        if fifo.is_empty() {
            self.owners.remove(owner);
            self.turn.retain(|o| o != owner);
        }
        self.len -= 1;
        Some(entry)
    }

    /// Jobs of this level that leave before the `k`-th job of `owner` (0-based).
    fn ahead_of(&self, owner: &Owner, k: usize) -> usize {
        let Some(mine) = self.turn.iter().position(|o| o == owner) else {
            return k;
        };
        let others: usize = self
            .turn
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != mine)
            .map(|(i, o)| {
                let len = self.owners.get(o).map_or(0, VecDeque::len);
                len.min(k + usize::from(i < mine))
            })
            .sum();
        k + others
    }
}

/// Where a queued job is.
#[derive(Debug, Clone)]
enum Place {
    /// Put back at the head.
    Front,
    /// In a level, under an owner.
    Level {
        level: usize,
        owner: Owner,
        seq: u64,
    },
}

/// Queued job ids, in the order they will leave.
#[derive(Debug, Default)]
pub struct JobQueue {
    front: VecDeque<String>,
    levels: [Level; 3],
    places: HashMap<Arc<str>, Place>,
    owner_counts: HashMap<Owner, usize>,
    owners_of_front: HashMap<String, Owner>,
    next_seq: u64,
    aging: Option<Duration>,
    /// Queued jobs with a deadline, soonest first, and each one's deadline.
    deadlines: BTreeSet<(Instant, Arc<str>)>,
    deadline_of: HashMap<Arc<str>, Instant>,
}

/// Queue depth per level, as `/pool` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depths {
    /// Jobs put back at the head.
    pub requeued: usize,
    /// Jobs waiting in each level, highest first (see [`Priority::ALL`]).
    pub levels: [usize; 3],
}

impl JobQueue {
    /// Sets the aging time (None or zero: jobs never move up).
    pub fn set_aging(&mut self, aging: Option<Duration>) {
        self.aging = aging.filter(|a| !a.is_zero());
    }

    /// Appends a job at the back of its owner's FIFO in its level; `labelled` when it asks for
    /// labels. A job that already waited `waited` in its level (before a restart) goes as far
    /// up as aging would have moved it meanwhile, and its aging goes on from there.
    pub fn push(
        &mut self,
        id: String,
        owner: Owner,
        priority: Priority,
        labelled: bool,
        now: Instant,
        waited: Duration,
    ) {
        let (up, aged) = self.aged(priority, waited);
        let level = priority.index() - up;
        let since = if level > 0 {
            now.checked_sub(waited.saturating_sub(aged)).unwrap_or(now)
        } else {
            now
        };
        *self.owner_counts.entry(owner.clone()).or_default() += 1;
        self.insert(Arc::from(id), owner, level, labelled, since);
    }

    /// How many levels aging lifts a job of `priority` that waited `waited` in its level, and
    /// how long after it entered that level it reached the one it is lifted to (it stands
    /// there behind the jobs that were in that level before it).
    pub fn aged(&self, priority: Priority, waited: Duration) -> (usize, Duration) {
        let Some(aging) = self.aging else {
            return (0, Duration::ZERO);
        };
        let periods = (waited.as_secs_f64() / aging.as_secs_f64()).floor();
        let up = periods.min(priority.index() as f64) as usize;
        (up, aging.saturating_mul(up as u32))
    }

    fn insert(&mut self, id: Arc<str>, owner: Owner, level: usize, labelled: bool, now: Instant) {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.places.insert(
            Arc::clone(&id),
            Place::Level {
                level,
                owner: owner.clone(),
                seq,
            },
        );
        self.levels[level].push(
            owner,
            Entry {
                seq,
                id,
                since: now,
                labelled,
            },
        );
    }

    /// Puts a job back at the head, before every other.
    pub fn push_front(&mut self, id: String, owner: Owner) {
        *self.owner_counts.entry(owner.clone()).or_default() += 1;
        self.places.insert(Arc::from(id.as_str()), Place::Front);
        self.owners_of_front.insert(id.clone(), owner);
        self.front.push_front(id);
    }

    /// The job that leaves next.
    pub fn peek(&self) -> Option<&str> {
        if let Some(id) = self.front.front() {
            return Some(id);
        }
        self.levels.iter().find_map(|l| l.peek()).map(|e| &*e.id)
    }

    /// Removes and returns the job [`JobQueue::peek`] names.
    pub fn pop(&mut self) -> Option<String> {
        if let Some(id) = self.front.pop_front() {
            let owner = self.owners_of_front.remove(&id).unwrap_or_default();
            self.forget(&id, &owner);
            return Some(id);
        }
        let (owner, entry) = self.levels.iter_mut().find_map(Level::pop)?;
        self.forget(&entry.id, &owner);
        Some(entry.id.to_string())
    }

    /// Removes a job wherever it waits; false when it is not queued.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(place) = self.places.get(id).cloned() else {
            return false;
        };
        let owner = match place {
            Place::Front => {
                self.front.retain(|f| f != id);
                self.owners_of_front.remove(id).unwrap_or_default()
            }
            Place::Level { level, owner, seq } => {
                self.levels[level].remove(&owner, seq);
                owner
            }
        };
        self.forget(id, &owner);
        true
    }

    fn forget(&mut self, id: &str, owner: &Owner) {
        self.places.remove(id);
        if !self.deadline_of.is_empty() {
            if let Some((key, at)) = self.deadline_of.remove_entry(id) {
                self.deadlines.remove(&(at, key));
            }
        }
        if let Some(count) = self.owner_counts.get_mut(owner) {
            *count -= 1;
            if *count == 0 {
                self.owner_counts.remove(owner);
            }
        }
    }

    /// Moves a queued job to the back of its owner's line in the level of `priority`, where
    /// its aging starts again (a job put back at the head, or already in that level, stays
    /// where it is). Its deadline stays. False when it is not queued.
    pub fn set_priority(&mut self, id: &str, priority: Priority, now: Instant) -> bool {
        let Some((key, place)) = self.places.get_key_value(id) else {
            return false;
        };
        let Place::Level { level, owner, seq } = place.clone() else {
            return true;
        };
        if level == priority.index() {
            return true;
        }
        let key = Arc::clone(key);
        let labelled = self.levels[level]
            .remove(&owner, seq)
            .is_some_and(|e| e.labelled);
        self.insert(key, owner, priority.index(), labelled, now);
        true
    }

    /// Gives a queued job a deadline: [`JobQueue::take_expired`] takes it out once it passed.
    /// The deadline is forgotten when the job leaves the queue (a job put back at the head is
    /// given it again).
    pub fn set_deadline(&mut self, id: &str, at: Instant) {
        let Some((key, _)) = self.places.get_key_value(id) else {
            return;
        };
        let key = Arc::clone(key);
        if let Some(old) = self.deadline_of.insert(Arc::clone(&key), at) {
            self.deadlines.remove(&(old, Arc::clone(&key)));
        }
        self.deadlines.insert((at, key));
    }

    /// The soonest deadline of a queued job.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Takes out of the queue every job whose deadline is `now` or earlier, soonest first.
    pub fn take_expired(&mut self, now: Instant) -> Vec<String> {
        let mut expired = Vec::new();
        while let Some((at, id)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            if self.remove(&id) {
                expired.push(id.to_string());
            } else {
                self.deadlines.remove(&(at, Arc::clone(&id)));
                self.deadline_of.remove(&id);
            }
        }
        expired
    }

    /// Moves up one level every job that waited in its level longer than the aging time.
    pub fn promote(&mut self, now: Instant) {
        let Some(aging) = self.aging else {
            return;
        };
        for level in 1..self.levels.len() {
            let due: Vec<(Owner, u64)> = self.levels[level]
                .owners
                .iter()
                .flat_map(|(owner, fifo)| {
                    fifo.iter()
                        .take_while(|e| now.saturating_duration_since(e.since) >= aging)
                        .map(|e| (owner.clone(), e.seq))
                })
                .collect();
            let mut moved: Vec<(u64, Owner, Entry)> = due
                .into_iter()
                .filter_map(|(owner, seq)| {
                    let entry = self.levels[level].remove(&owner, seq)?;
                    Some((seq, owner, entry))
                })
                .collect();
            moved.sort_by_key(|(seq, _, _)| *seq);
            for (_, owner, entry) in moved {
                self.insert(entry.id, owner, level - 1, entry.labelled, now);
            }
        }
    }

    /// Zero-based position of a queued job (0 = leaves next), if no other job arrives.
    pub fn position(&self, id: &str) -> Option<usize> {
        match self.places.get(id)? {
            Place::Front => self.front.iter().position(|f| f == id),
            Place::Level { level, owner, seq } => {
                let fifo = self.levels[*level].owners.get(owner)?;
                let k = fifo.binary_search_by_key(seq, |e| e.seq).ok()?;
                let higher: usize = self.levels[..*level].iter().map(|l| l.len).sum();
                Some(self.front.len() + higher + self.levels[*level].ahead_of(owner, k))
            }
        }
    }

    /// The first `limit` queued jobs, in the order they will leave if no other job arrives
    /// (job `k` is at [`JobQueue::position`] `k`). Costs O(limit + owners) per level.
    #[cfg(test)]
    pub fn in_order(&self, limit: usize) -> Vec<&str> {
        let mut out = Vec::new();
        if limit > 0 {
            self.first_in_order(|id, _| {
                out.push(id);
                out.len() == limit
            });
        }
        out
    }

    /// The first queued job, in the order they will leave, for which `wanted` says true; it is
    /// asked of each job in turn until then, with whether the job asks for labels (None for a
    /// job put back at the head: not known here). Costs O(jobs asked + owners) per level.
    pub fn first_in_order<'a>(
        &'a self,
        mut wanted: impl FnMut(&'a str, Option<bool>) -> bool,
    ) -> Option<&'a str> {
        if let Some(id) = self
            .front
            .iter()
            .map(String::as_str)
            .find(|id| wanted(id, None))
        {
            return Some(id);
        }
        for level in &self.levels {
            // Each owner's line, in turn order, looked up once for the whole walk.
            let lines: Vec<&VecDeque<Entry>> = level
                .turn
                .iter()
                .filter_map(|owner| level.owners.get(owner))
                .collect();
            for round in 0.. {
                let mut taken = false;
                for entry in lines.iter().filter_map(|line| line.get(round)) {
                    taken = true;
                    if wanted(&entry.id, Some(entry.labelled)) {
                        return Some(&entry.id);
                    }
                }
                if !taken {
                    break;
                }
            }
        }
        None
    }

    /// The level a queued job waits in now (None when queued at the head or not queued).
    pub fn level_of(&self, id: &str) -> Option<Priority> {
        match self.places.get(id)? {
            Place::Level { level, .. } => Priority::ALL.get(*level).copied(),
            Place::Front => None,
        }
    }

    /// Depth per level.
    pub fn depths(&self) -> Depths {
        Depths {
            requeued: self.front.len(),
            levels: [self.levels[0].len, self.levels[1].len, self.levels[2].len],
        }
    }

    /// Queued jobs per owner.
    pub fn by_owner(&self) -> impl Iterator<Item = (&Owner, usize)> {
        self.owner_counts.iter().map(|(o, n)| (o, *n))
    }

    /// Queued jobs of one owner.
    pub fn owner_depth(&self, owner: &Owner) -> usize {
        self.owner_counts.get(owner).copied().unwrap_or(0)
    }

    /// Whether this job is queued.
    pub fn contains(&self, id: &str) -> bool {
        self.places.contains_key(id)
    }

    /// Number of queued jobs.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut JobQueue) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(peeked) = q.peek().map(str::to_string) {
            let popped = q.pop();
            assert_eq!(popped.as_deref(), Some(peeked.as_str()));
            out.push(peeked);
        }
        out
    }

    /// Pushes a job without labels that waited nothing.
    fn put(
        q: &mut JobQueue,
        id: impl Into<String>,
        owner: Owner,
        priority: Priority,
        now: Instant,
    ) {
        q.push(id.into(), owner, priority, false, now, Duration::ZERO);
    }

    fn owner(name: &str) -> Owner {
        Some(name.to_string())
    }

    #[test]
    fn higher_levels_first_fifo_within() {
        let now = Instant::now();
        let mut q = JobQueue::default();
        put(&mut q, "n1", None, Priority::Normal, now);
        put(&mut q, "l1", None, Priority::Low, now);
        put(&mut q, "n2", None, Priority::Normal, now);
        put(&mut q, "h1", None, Priority::High, now);
        q.push_front("back".into(), None);
        assert_eq!(q.position("back"), Some(0));
        assert_eq!(q.position("h1"), Some(1));
        assert_eq!(q.position("n2"), Some(3));
        assert_eq!(q.position("l1"), Some(4));
        assert_eq!(drain(&mut q), ["back", "h1", "n1", "n2", "l1"]);
        assert!(q.is_empty());
        assert_eq!(q.by_owner().count(), 0);
    }

    #[test]
    fn owners_take_turns_and_positions_match_the_order() {
        let now = Instant::now();
        let mut q = JobQueue::default();
        for i in 0..5 {
            put(&mut q, format!("a{i}"), owner("a"), Priority::Normal, now);
        }
        put(&mut q, "b0", owner("b"), Priority::Normal, now);
        put(&mut q, "b1", owner("b"), Priority::Normal, now);
        put(&mut q, "c0", owner("c"), Priority::Normal, now);
        let ids = ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "c0"];
        let positions: Vec<usize> = ids.iter().filter_map(|id| q.position(id)).collect();
        assert_eq!(q.owner_depth(&owner("a")), 5);
        put(&mut q, "h0", owner("b"), Priority::High, now);
        q.push_front("f0".into(), owner("c"));
        assert_eq!(q.in_order(3), ["f0", "h0", "a0"]);
        let listed: Vec<String> = q.in_order(100).into_iter().map(String::from).collect();
        for (k, id) in listed.iter().enumerate() {
            assert_eq!(q.position(id), Some(k), "{id}");
        }
        assert_eq!(q.pop().as_deref(), Some("f0"));
        assert_eq!(q.pop().as_deref(), Some("h0"));
        let order = drain(&mut q);
        assert_eq!(order, ["a0", "b0", "c0", "a1", "b1", "a2", "a3", "a4"]);
        assert_eq!(listed[2..], order);
        for (id, position) in ids.iter().zip(positions) {
            assert_eq!(order[position], *id, "position of {id}");
        }
    }

    #[test]
    fn remove_and_aging() {
        let start = Instant::now();
        let mut q = JobQueue::default();
        q.set_aging(Some(Duration::from_secs(10)));
        put(&mut q, "l", None, Priority::Low, start);
        put(
            &mut q,
            "n",
            owner("x"),
            Priority::Normal,
            start + Duration::from_secs(5),
        );
        put(&mut q, "gone", owner("x"), Priority::Normal, start);
        assert!(q.remove("gone"));
        assert!(!q.remove("gone"));
        q.promote(start + Duration::from_secs(11));
        assert_eq!(q.level_of("l"), Some(Priority::Normal));
        assert_eq!(q.level_of("n"), Some(Priority::Normal));
        q.promote(start + Duration::from_secs(16));
        assert_eq!(q.level_of("n"), Some(Priority::High));
        assert_eq!(drain(&mut q), ["n", "l"]);
    }

    #[test]
    fn a_job_that_waited_before_a_restart_goes_on_aging_from_there() {
        let now = Instant::now();
        let mut q = JobQueue::default();
        q.set_aging(Some(Duration::from_secs(10)));
        let secs = Duration::from_secs;
        q.push("top".into(), None, Priority::Low, false, now, secs(25));
        q.push("up".into(), None, Priority::Low, false, now, secs(14));
        q.push("new".into(), None, Priority::Low, false, now, secs(3));
        assert_eq!(q.level_of("top"), Some(Priority::High));
        assert_eq!(q.level_of("up"), Some(Priority::Normal));
        assert_eq!(q.level_of("new"), Some(Priority::Low));
        // 4 s into its level already: 6 s more, not 10, to the next one.
        q.promote(now + secs(6));
        assert_eq!(q.level_of("up"), Some(Priority::High));
        assert_eq!(q.level_of("new"), Some(Priority::Low));
        q.promote(now + secs(7));
        assert_eq!(q.level_of("new"), Some(Priority::Normal));
        // Without aging, where its priority says.
        let mut still = JobQueue::default();
        still.push("old".into(), None, Priority::Low, false, now, secs(1_000));
        assert_eq!(still.level_of("old"), Some(Priority::Low));
    }

    #[test]
    fn a_new_priority_moves_a_job_to_the_back_of_its_new_level() {
        let now = Instant::now();
        let mut q = JobQueue::default();
        put(&mut q, "h", None, Priority::High, now);
        put(&mut q, "n1", None, Priority::Normal, now);
        put(&mut q, "n2", None, Priority::Normal, now);
        put(&mut q, "l", None, Priority::Low, now);
        q.push_front("front".into(), None);
        q.set_deadline("l", now + Duration::from_secs(5));
        assert!(q.set_priority("l", Priority::High, now));
        assert!(q.set_priority("h", Priority::Low, now));
        assert!(q.set_priority("front", Priority::Low, now));
        assert!(q.set_priority("n1", Priority::Normal, now));
        assert!(!q.set_priority("gone", Priority::High, now));
        assert_eq!(q.level_of("l"), Some(Priority::High));
        assert_eq!(q.position("l"), Some(1));
        assert_eq!(q.next_deadline(), Some(now + Duration::from_secs(5)));
        assert_eq!(q.owner_depth(&None), 5);
        assert_eq!(drain(&mut q), ["front", "l", "n1", "n2", "h"]);
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn a_walk_is_told_which_jobs_ask_for_labels_wherever_they_moved() {
        let start = Instant::now();
        let mut q = JobQueue::default();
        q.set_aging(Some(Duration::from_secs(10)));
        q.push(
            "gpu".into(),
            None,
            Priority::Low,
            true,
            start,
            Duration::ZERO,
        );
        put(&mut q, "plain", None, Priority::Low, start);
        q.push(
            "raised".into(),
            None,
            Priority::Low,
            true,
            start,
            Duration::ZERO,
        );
        q.set_priority("raised", Priority::High, start);
        q.promote(start + Duration::from_secs(11));
        q.push_front("back".into(), None);
        let mut told = Vec::new();
        let found = q.first_in_order(|id, labelled| {
            told.push((id.to_string(), labelled));
            id == "plain"
        });
        assert_eq!(found, Some("plain"));
        assert_eq!(
            told,
            [
                ("back".to_string(), None),
                ("raised".to_string(), Some(true)),
                ("gpu".to_string(), Some(true)),
                ("plain".to_string(), Some(false)),
            ]
        );
        assert_eq!(
            q.level_of("gpu"),
            Some(Priority::Normal),
            "aged one level up"
        );
    }

    #[test]
    fn jobs_past_their_deadline_are_taken_out_and_the_others_keep_their_place() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut q = JobQueue::default();
        for id in ["a", "b", "c", "d"] {
            put(&mut q, id, owner("x"), Priority::Normal, start);
        }
        q.push_front("front".into(), None);
        q.set_deadline("c", at(5));
        q.set_deadline("a", at(10));
        q.set_deadline("front", at(3));
        q.set_deadline("a", at(2));
        q.set_deadline("not queued", at(1));
        q.set_deadline("d", at(20));
        assert_eq!(q.next_deadline(), Some(at(2)));
        assert!(q.take_expired(at(1)).is_empty());
        assert_eq!(q.take_expired(at(5)), ["a", "front", "c"]);
        assert_eq!(q.next_deadline(), Some(at(20)));
        assert_eq!(q.len(), 2);
        assert_eq!(q.position("b"), Some(0));
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert!(q.remove("d"));
        assert_eq!(q.next_deadline(), None);
        assert!(q.take_expired(at(30)).is_empty());
        assert_eq!(q.by_owner().count(), 0);
    }
}
