//! Patched: what the accept loop does when `accept()` fails. 0.12.0 ended the loop at the first
//! failure, so running out of file descriptors once (a burst of idle connections under a low
//! open-file limit) left the server running but deaf for good.

use std::fs::File;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

use crate::connection::{Connection, Listener};

/// The first pause after a failed `accept()` that refused nothing.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two failed `accept()` calls.
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
/// How often a spell of failures that goes on is logged again.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A spell of connections that could not be served: `accept()` failing, or an accepted
/// connection refused for want of a descriptor or a thread; and the spare descriptor that gets
/// one waiting connection at a time out of the backlog.
///
/// Out of file descriptors (`EMFILE`, `ENFILE`), the spare descriptor is closed so that the
/// waiting connection can be taken and refused (its client hears at once instead of waiting in
/// the backlog), then reopened. Any other failure, or one the spare could not get past, waits
/// before the next try: 5 ms, doubling up to a second. The spell is logged when it begins, at
/// most once a minute while it lasts, and when a connection is served again.
pub(crate) struct AcceptTrouble {
    spare: Option<File>,
    pause: Duration,
    began: Option<Instant>,
    logged: Option<Instant>,
    failures: u64,
    refused: u64,
}

impl AcceptTrouble {
    /// No failure yet; the spare descriptor is opened now.
    pub(crate) fn new() -> AcceptTrouble {
        AcceptTrouble {
            spare: open_spare(),
            pause: FIRST_PAUSE,
            began: None,
            logged: None,
            failures: 0,
            refused: 0,
        }
    }

    /// After a connection got its thread: ends a spell of failures, and logs what it cost.
    pub(crate) fn served(&mut self) {
        let Some(began) = self.began.take() else {
            return;
        };
        log::warn!(
            "Serving connections again after {:.1} s: {} accepts failed, {} connections were refused",
            began.elapsed().as_secs_f64(),
            self.failures,
            self.refused
        );
        self.pause = FIRST_PAUSE;
        self.logged = None;
        self.failures = 0;
        self.refused = 0;
    }

    /// After an accepted connection was refused because `error` left it without a descriptor or
    /// a thread.
    pub(crate) fn refused(&mut self, error: &io::Error) {
        self.refused += 1;
        self.log(
            error,
            advice(error, "connections are refused with 503 until it passes"),
        );
    }

    /// After `accept()` on `listener` failed with `error`: out of descriptors, takes the waiting
    /// connection with the spare one and hands it to `refuse`; otherwise (or when that failed
    /// too) waits before the next try.
    pub(crate) fn failed(
        &mut self,
        error: &io::Error,
        listener: &Listener,
        refuse: impl FnOnce(Connection),
    ) {
        self.failures += 1;
        self.log(error, advice(error, "retrying"));
        if out_of_descriptors(error) && self.spare.take().is_some() {
            let taken = listener.accept();
            if let Ok((connection, _)) = taken {
                refuse(connection);
                self.refused += 1;
            }
            self.spare = open_spare();
            if self.spare.is_some() {
                return;
            }
        }
        thread::sleep(self.pause);
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        if self.spare.is_none() {
            self.spare = open_spare();
        }
    }

    /// Logs the start of a spell (with `what` happens meanwhile), and one that goes on once a
    /// minute.
    fn log(&mut self, error: &io::Error, what: &str) {
        let now = Instant::now();
        let Some(began) = self.began else {
            self.began = Some(now);
            self.logged = Some(now);
            log::error!("Cannot serve a connection: {error}; {what}");
            return;
        };
        if self
            .logged
            .is_some_and(|at| now.duration_since(at) >= LOG_EVERY)
        {
            self.logged = Some(now);
            log::error!(
                "Still cannot serve connections after {:.0} s: {error} ({} accepts failed, {} connections refused)",
                now.duration_since(began).as_secs_f64(),
                self.failures,
                self.refused
            );
        }
    }
}

/// True for the failures that free descriptors end: the process's own limit (`EMFILE`) or the
/// system's (`ENFILE`).
fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE)
    )
}

/// What happens while `error` lasts, for the log: `otherwise` unless it is out of descriptors.
fn advice<'a>(error: &io::Error, otherwise: &'a str) -> &'a str {
    if out_of_descriptors(error) {
        "new connections are refused with 503 until some close (raise the open-file limit)"
    } else {
        otherwise
    }
}

/// A descriptor kept open to be given up when the process runs out of them.
fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}
