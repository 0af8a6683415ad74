//! Blocking work of trials (sandbox setup, commands, copies), counted.
//!
//! A trial aborted by an interrupt stops at its next await, but a `spawn_blocking` closure it
//! was waiting on runs on to its end: a sandbox being prepared goes on creating its home after
//! the dispatcher removed it. Every blocking call of the harness goes through [`spawn`], so the
//! dispatcher can wait for that work to finish ([`drained`]) before it removes the homes of
//! the trials it aborted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// One blocking closure counted in [`IN_FLIGHT`] until it ends or is dropped unrun.
struct Counted;

impl Counted {
    fn new() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// [`tokio::task::spawn_blocking`], counted while it runs.
pub fn spawn<F, R>(work: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let counted = Counted::new();
    tokio::task::spawn_blocking(move || {
        let _counted = counted;
        work()
    })
}

/// Wait until no counted blocking work runs in this process, for at most `limit`; whether it
/// drained. Work of other runs in the process counts too: waiting for it only costs time.
pub async fn drained(limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_abandoned_closure_is_waited_for() {
        let (started, ready) = std::sync::mpsc::channel();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let handle = spawn(move || {
            started.send(()).unwrap();
            wait.recv().unwrap();
        });
        ready.recv().unwrap();
        // The awaiting task is gone (as when a trial is aborted); the closure still runs.
        handle.abort();
        assert!(!drained(Duration::from_millis(50)).await);
        release.send(()).unwrap();
        assert!(drained(Duration::from_secs(10)).await);
    }
}
