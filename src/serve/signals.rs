//! Process signals as messages. The signals are blocked in every thread (the mask is set before
//! any thread starts, and threads inherit it); one thread takes them with `sigwait` and hands
//! them on, so no code runs inside a signal handler.

use crossbeam_channel::{Receiver, Sender};
use std::io;
use std::thread;

/// What a signal asks of the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: stop.
    Shutdown,
    /// SIGHUP: re-read the files the coordinator was started with.
    Reload,
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; sigaddset adds valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread it starts later.
/// Call it first, before any thread is started.
pub fn block() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: the set is initialised; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Starts the thread that waits for the blocked signals and sends each one on.
pub fn listen() -> io::Result<Receiver<Signal>> {
    let (sender, receiver) = crossbeam_channel::bounded(16);
    thread::Builder::new()
        .name("signals".to_string())
        .stack_size(64 * 1024)
        .spawn(move || wait_loop(sender))?;
    Ok(receiver)
}

fn wait_loop(sender: Sender<Signal>) {
    let set = signal_set();
    loop {
        let mut number: libc::c_int = 0;
        // SAFETY: the set is initialised and `number` is a valid place for the answer.
        let rc = unsafe { libc::sigwait(&set, &mut number) };
        if rc != 0 {
            log::error!("sigwait failed: {}", io::Error::from_raw_os_error(rc));
            return;
        }
        let signal = if number == libc::SIGHUP {
            Signal::Reload
        } else {
            Signal::Shutdown
        };
        if sender.send(signal).is_err() {
            return;
        }
    }
}
