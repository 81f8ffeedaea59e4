//! Job events for followers (`GET /logs/{id}?follow=1`, `GET /stream/{id}`): each job in flight
//! has a feed of text pieces ([`Piece`]: a marker line such as a status line, or output as its
//! worker delivered it). A follower gets what the feed holds when it joins, then every new
//! piece, and the feed ends with the job. The number of followers is bounded; the feed's history
//! is bounded in bytes, and so is what waits for each follower: one that falls further behind
//! is let go.
//!
//! `feeds` is a leaf lock: taken with or without the pool lock, never while waiting on anything.

use crate::base::sync::{lock, Place, PlaceRefused};
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tiny_http::AddressShares;

/// Most bytes of history a feed keeps for followers that join later.
const MAX_HISTORY: usize = 1024 * 1024;

/// More history kept for the coordinator's lines past [`MAX_HISTORY`] of output, so that a
/// late joiner still reads the job's end.
const MARKER_ROOM: usize = 64 * 1024;

/// Most bytes of text that may wait for one follower (a client that reads slower than its job's
/// worker writes); a piece that would go past it ends the follow instead, unless nothing waits.
pub const MAX_BACKLOG: usize = 4 * 1024 * 1024;

/// How sandrun's stream begins a job's stderr: a message of this line, then the stderr.
pub const STDERR_MARKER: &str = "[STDERR]\n";

/// A piece of text for followers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Its text.
    pub text: Arc<str>,
    /// It begins with a marker (`[STATUS]`, `[STDERR]`, `[VERIFY]`, `[DONE]`, `[ERROR]`), which
    /// starts a line of the text stream even when the output before it did not end one.
    pub marker: bool,
}

impl Piece {
    /// A marker line of the coordinator's (a status line, the last lines).
    pub fn marker(text: impl Into<Arc<str>>) -> Self {
        Piece {
            text: text.into(),
            marker: true,
        }
    }

    /// Output as its worker delivered it: a message beginning with [`STDERR_MARKER`] is
    /// sandrun's stderr, which begins with that marker.
    pub fn output(text: impl Into<Arc<str>>) -> Self {
        let text = text.into();
        Piece {
            marker: text.starts_with(STDERR_MARKER),
            text,
        }
    }
}

/// One piece for a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Text: a marker line or output.
    Text(Piece),
    /// The job ended; nothing follows.
    End,
    /// The client keys were reloaded: the follower checks its key again.
    Recheck,
    /// The coordinator stops: the follower ends its stream.
    Shutdown,
    /// The follower fell more than [`MAX_BACKLOG`] bytes behind; nothing follows.
    Behind,
}

/// The sending end of a follower: its channel, and the text bytes sent and not yet taken.
struct Sink {
    sender: Sender<Event>,
    waiting: Arc<AtomicUsize>,
}

impl Sink {
    /// Sends `event`; false when the follower is gone.
    fn send(&self, event: Event) -> bool {
        self.sender.send(event).is_ok()
    }

    /// Sends a text piece, or [`Event::Behind`] (then false) when it would put more than
    /// [`MAX_BACKLOG`] bytes in wait; false when the follower is gone.
    fn send_text(&self, piece: &Piece) -> bool {
        let waiting = self.waiting.load(Ordering::SeqCst);
        if waiting > 0 && waiting + piece.text.len() > MAX_BACKLOG {
            let _ = self.sender.send(Event::Behind);
            return false;
        }
        self.waiting.fetch_add(piece.text.len(), Ordering::SeqCst);
        self.send(Event::Text(piece.clone()))
    }
}

#[derive(Default)]
struct Feed {
    history: Vec<Piece>,
    history_bytes: usize,
    /// A piece did not fit in the history: a line saying so stands where it would have been.
    history_cut: bool,
    output_seen: bool,
    followers: Vec<Sink>,
}

/// The line a follower that joins late reads where the feed's history left output out.
const HISTORY_CUT_LINE: &str = "[STATUS] Output from here on is past the 1 MiB kept for followers that join late and is left out; read the job's logs (GET /logs/<job id>) once its results are collected\n";

impl Feed {
    /// Sends one of the coordinator's lines, and keeps it for followers that join later (in
    /// [`MARKER_ROOM`] past the output's limit).
    fn push(&mut self, piece: Piece) {
        self.keep(piece, true);
    }

    /// Sends the worker's output, and keeps it for followers that join later up to
    /// [`MAX_HISTORY`]; once a piece did not fit, none after it is kept either, and a line
    /// saying so stands where it would have been.
    fn push_output(&mut self, piece: Piece) {
        self.keep(piece, false);
    }

    fn keep(&mut self, piece: Piece, ours: bool) {
        self.followers.retain(|f| f.send_text(&piece));
        let room = if ours {
            MAX_HISTORY + MARKER_ROOM
        } else {
            MAX_HISTORY
        };
        let kept = (ours || !self.history_cut) && self.history_bytes + piece.text.len() <= room;
        if kept {
            self.history_bytes += piece.text.len();
            self.history.push(piece);
        } else if !ours && !self.history_cut {
            // Not silently: a follower that joins later is told what it misses.
            self.history_cut = true;
            self.history.push(Piece::marker(HISTORY_CUT_LINE));
        }
    }
}

/// The feeds of every followed or in-flight job, and the follower count.
pub struct JobEvents {
    feeds: Mutex<HashMap<String, Feed>>,
    followers: Arc<AtomicUsize>,
    max_followers: usize,
    /// The followers of each client address (`--max-followers-per-ip`).
    shares: Arc<AddressShares>,
    /// Set once the coordinator stops: a follower that joins later is told at once.
    ending: AtomicBool,
}

/// A follower's place: what the feed held when it joined, then live events. Dropping it frees
/// its place.
pub struct Follower {
    /// The feed's history at the moment of joining.
    pub history: Vec<Piece>,
    /// Every later piece, then [`Event::End`].
    pub events: Receiver<Event>,
    /// Text bytes sent to it and not yet taken ([`Follower::took`]).
    waiting: Arc<AtomicUsize>,
    _place: Place,
}

impl Follower {
    /// Tells that a text piece of `bytes` was taken from [`Follower::events`].
    pub fn took(&self, bytes: usize) {
        let _ = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                Some(w.saturating_sub(bytes))
            });
    }
}

impl JobEvents {
    /// No feeds; at most `max_followers` followers at once, `per_address` of them from one
    /// client address.
    pub fn new(max_followers: usize, per_address: usize) -> Self {
        JobEvents {
            feeds: Mutex::new(HashMap::new()),
            followers: Arc::new(AtomicUsize::new(0)),
            max_followers,
            shares: AddressShares::new(per_address),
            ending: AtomicBool::new(false),
        }
    }

    /// Followers now.
    pub fn follower_count(&self) -> usize {
        self.followers.load(Ordering::SeqCst)
    }

    /// The follower limit.
    pub fn max_followers(&self) -> usize {
        self.max_followers
    }

    /// The follower limit of one client address.
    pub fn max_followers_per_address(&self) -> usize {
        self.shares.share()
    }

    /// How many client addresses follow jobs now.
    pub fn following_addresses(&self) -> usize {
        self.shares.addresses()
    }

    /// Feeds open now: one per job in flight on a worker or followed, dropped when it is over.
    pub fn feed_count(&self) -> usize {
        lock(&self.feeds).len()
    }

    /// Takes a follower's place for a client at `client` (taken before the job's state decides
    /// between a live follow and a replay, held until that ends): one of `--max-followers`, and
    /// of its address's `--max-followers-per-ip`; or refuses when either is used up.
    pub fn reserve(&self, client: Option<IpAddr>) -> Result<Place, PlaceRefused> {
        Place::take(&self.followers, self.max_followers, &self.shares, client)
    }

    /// Joins a job's feed (creating it) with a reserved place. Call it while the job is known
    /// not to have ended (under the pool lock), so its end is still to be published.
    pub fn follow(&self, id: &str, place: Place) -> Follower {
        let (sender, events) = crossbeam_channel::unbounded();
        let waiting = Arc::new(AtomicUsize::new(0));
        let sink = Sink {
            sender,
            waiting: Arc::clone(&waiting),
        };
        let mut feeds = lock(&self.feeds);
        if self.ending.load(Ordering::SeqCst) {
            sink.send(Event::Shutdown);
        }
        let feed = feeds.entry(id.to_string()).or_default();
        feed.followers.push(sink);
        Follower {
            history: feed.history.clone(),
            events,
            waiting,
            _place: place,
        }
    }

    /// Opens a job's feed with its first line (a job just dispatched).
    pub fn open(&self, id: &str, line: String) {
        lock(&self.feeds)
            .entry(id.to_string())
            .or_default()
            .push(Piece::marker(line));
    }

    /// Adds a status line to an open feed (none is created: the job may have ended).
    pub fn line(&self, id: &str, line: String) {
        if let Some(feed) = lock(&self.feeds).get_mut(id) {
            feed.push(Piece::marker(line));
        }
    }

    /// Adds a status line to an open feed saying that the job's run was lost and the job runs
    /// again: the output seen so far was that run's, so the next run's collected logs are told
    /// at its end unless its own output comes through.
    pub fn run_again(&self, id: &str, line: String) {
        if let Some(feed) = lock(&self.feeds).get_mut(id) {
            feed.output_seen = false;
            feed.push(Piece::marker(line));
        }
    }

    /// Adds output as the worker delivered it to an open feed.
    pub fn output(&self, id: &str, text: String) {
        if let Some(feed) = lock(&self.feeds).get_mut(id) {
            feed.output_seen = true;
            feed.push_output(Piece::output(text));
        }
    }

    /// True when output reached the job's feed (so the collected logs need not be replayed).
    pub fn output_seen(&self, id: &str) -> bool {
        lock(&self.feeds).get(id).is_some_and(|f| f.output_seen)
    }

    /// Asks every live follower to check its client key again (the keys were reloaded).
    pub fn recheck_followers(&self) {
        self.tell_followers(&Event::Recheck);
    }

    /// Asks every live follower, and every one that joins from now on, to end its stream (the
    /// coordinator stops).
    pub fn end_followers(&self) {
        self.ending.store(true, Ordering::SeqCst);
        self.tell_followers(&Event::Shutdown);
    }

    fn tell_followers(&self, event: &Event) {
        for feed in lock(&self.feeds).values_mut() {
            feed.followers.retain(|f| f.send(event.clone()));
        }
    }

    /// Ends a job's feed with its last pieces; its followers then stop.
    pub fn end(&self, id: &str, last: Vec<Piece>) {
        let Some(mut feed) = lock(&self.feeds).remove(id) else {
            return;
        };
        for piece in last {
            feed.push(piece);
        }
        for follower in feed.followers {
            follower.send(Event::End);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_get_history_then_live_pieces_then_the_end() {
        let events = JobEvents::new(1, 1);
        events.open("j", "dispatched\n".into());
        let slot = events.reserve(None).expect("a slot");
        assert_eq!(events.reserve(None).err(), Some(PlaceRefused::Full(1)));
        let follower = events.follow("j", slot);
        assert_eq!(follower.history.len(), 1);
        events.output("j", "out\n".into());
        assert!(events.output_seen("j"));
        events.recheck_followers();
        events.end("j", vec![Piece::marker("done\n")]);
        let got: Vec<Event> = follower.events.try_iter().collect();
        assert_eq!(got.len(), 4);
        assert_eq!(got[1], Event::Recheck);
        assert_eq!(got[3], Event::End);
        events.line("j", "after the end\n".into());
        events.recheck_followers();
        assert!(
            follower.events.try_recv().is_err(),
            "an ended feed is not rechecked"
        );
        drop(follower);
        assert_eq!(events.follower_count(), 0);
        assert!(events.reserve(None).is_ok());
    }

    #[test]
    fn sandruns_stderr_message_begins_with_a_marker_and_other_output_does_not() {
        assert!(Piece::output("[STDERR]\nerr-no-nl").marker);
        assert!(!Piece::output("out-no-nl").marker);
        assert!(!Piece::output("out [STDERR]\n").marker);
        assert!(Piece::marker("[DONE] Job completed\n").marker);
    }

    #[test]
    fn one_address_follows_at_most_its_share() {
        let events = JobEvents::new(3, 2);
        let address = "10.0.0.7".parse().ok();
        let first = events.reserve(address).expect("a slot");
        let _second = events.reserve(address).expect("a slot");
        let refused = events.reserve(address).err();
        assert_eq!(refused, Some(PlaceRefused::AddressFull(2)));
        assert_eq!(events.follower_count(), 2, "a refusal holds nothing");
        let _other = events.reserve("10.0.0.8".parse().ok()).expect("a slot");
        assert_eq!(
            events.reserve("10.0.0.9".parse().ok()).err(),
            Some(PlaceRefused::Full(3))
        );
        assert_eq!(events.following_addresses(), 2, "a refusal holds no share");
        drop(first);
        assert!(events.reserve(address).is_ok());
    }

    #[test]
    fn a_follower_that_falls_too_far_behind_is_let_go() {
        let events = JobEvents::new(1, 1);
        events.open("j", "dispatched\n".into());
        let follower = events.follow("j", events.reserve(None).expect("a slot"));
        // Nothing waits: one piece larger than the backlog still goes.
        let big = "x".repeat(MAX_BACKLOG + 1);
        events.output("j", big.clone());
        assert_eq!(
            follower.events.try_recv(),
            Ok(Event::Text(Piece::output(big)))
        );
        follower.took(MAX_BACKLOG + 1);
        let piece = "y".repeat(MAX_BACKLOG / 2);
        events.output("j", piece.clone());
        events.output("j", piece.clone());
        events.output("j", "z".into());
        let got: Vec<Event> = follower.events.try_iter().collect();
        assert_eq!(got.len(), 3, "two pieces, then the follower is let go");
        assert_eq!(got[2], Event::Behind);
        events.output("j", "after\n".into());
        assert!(follower.events.try_recv().is_err(), "nothing after Behind");
    }

    #[test]
    fn a_stop_ends_every_follower_and_every_later_one() {
        let events = JobEvents::new(2, 2);
        events.open("j", "dispatched\n".into());
        let early = events.follow("j", events.reserve(None).expect("a slot"));
        events.end_followers();
        let late = events.follow("j", events.reserve(None).expect("a slot"));
        for follower in [&early, &late] {
            let got: Vec<Event> = follower.events.try_iter().collect();
            assert_eq!(got, [Event::Shutdown]);
        }
    }
}
