//! What every coordinator thread shares: configuration, the pool table, the spool, the worker
//! client, the dispatch threads and the wake-up signals of the scheduler and the health checker.

use crate::base::api_keys::LiveKeys;
use crate::base::config::ServeConfig;
use crate::base::sync::lock;
use crate::base::thread_cache::ThreadCache;
use crate::state::events::JobEvents;
use crate::state::pool_state::PoolState;
use crate::store::spool::Spool;
use crate::worker::client::{Timeouts, WorkerClient};
use crossbeam_channel::{Receiver, Sender};
use std::sync::{Mutex, MutexGuard};

/// Stack size of a dispatch thread.
const DISPATCH_STACK: usize = 256 * 1024;
/// Stack size of a thread following one job's worker stream.
const STREAM_STACK: usize = 128 * 1024;

/// Shared by the HTTP handlers, the scheduler, dispatches, trackers and the health checker.
pub struct Context {
    /// The command-line settings.
    pub config: ServeConfig,
    /// Workers, jobs and the queue.
    pub state: Mutex<PoolState>,
    /// Uploads and results on disk.
    pub spool: Spool,
    /// HTTP client towards workers.
    pub client: WorkerClient,
    /// The threads that dispatch jobs, reused from one dispatch to the next.
    pub dispatchers: ThreadCache,
    /// The client keys in force (none: the coordinator is open); replaced on SIGHUP.
    pub keys: LiveKeys,
    /// The threads that follow jobs' worker streams, one busy per job in flight.
    pub streams: ThreadCache,
    /// Job events for followers.
    pub events: JobEvents,
    scheduler_signal: Sender<()>,
    health_signal: Sender<()>,
}

/// The receiving ends of the wake-up signals, handed to the threads that wait on them.
pub struct Signals {
    /// The scheduler waits on this: a job queued, a slot freed, a worker healthy again.
    pub scheduler: Receiver<()>,
    /// The health checker waits on this: a worker needs probing sooner.
    pub health: Receiver<()>,
}

impl Context {
    /// Builds the context and its signal receivers.
    pub fn new(config: ServeConfig, state: PoolState, spool: Spool) -> (Self, Signals) {
        let (scheduler_signal, scheduler) = crossbeam_channel::bounded(1);
        let (health_signal, health) = crossbeam_channel::bounded(1);
        let client = WorkerClient::new(Timeouts {
            health: config.health_timeout,
            dispatch: config.dispatch_timeout,
        });
        let events = JobEvents::new(config.max_followers);
        let context = Context {
            config,
            state: Mutex::new(state),
            spool,
            client,
            dispatchers: ThreadCache::new("dispatch", DISPATCH_STACK),
            keys: LiveKeys::default(),
            streams: ThreadCache::new("stream", STREAM_STACK),
            events,
            scheduler_signal,
            health_signal,
        };
        (context, Signals { scheduler, health })
    }

    /// Locks the pool table (recovering it if a panicking thread poisoned it).
    pub fn lock(&self) -> MutexGuard<'_, PoolState> {
        lock(&self.state)
    }

    /// Tells the scheduler to look at the queue again. Signals coalesce: one pending is enough.
    pub fn wake_scheduler(&self) {
        let _ = self.scheduler_signal.try_send(());
    }

    /// Tells the health checker to look at probe times again.
    pub fn wake_health(&self) {
        let _ = self.health_signal.try_send(());
    }
}
