//! Session pool: idle sessions plus a semaphore that bounds concurrent HSM calls and a
//! bounded wait queue in front of it (overload turns into Throttling at once, not latency).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cryptoki::session::Session;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::HsmError;

/// Occupancy snapshot for metrics.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    /// Pool size (max concurrent HSM calls).
    pub size: usize,
    /// Sessions currently in a call.
    pub in_use: usize,
    /// Requests waiting for a session.
    pub waiting: usize,
}

pub(super) struct Pool {
    idle: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    in_use: AtomicUsize,
    queue_depth: usize,
    size: usize,
}

/// Decrements `in_use` when dropped.
pub(super) struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements `waiting` when dropped (also when the waiting future is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub(super) fn new(size: usize, queue_depth: usize) -> Self {
        Pool {
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Arc::new(Semaphore::new(size)),
            waiting: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            queue_depth,
            size,
        }
    }

    /// Get the right to use one session, waiting at most until `deadline`.
    pub(super) async fn acquire(
        &self,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, HsmError> {
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => return Ok(p),
            Err(TryAcquireError::Closed) => return Err(HsmError::ShuttingDown),
            Err(TryAcquireError::NoPermits) => {}
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue_depth {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(HsmError::Busy);
        }
        let _w = Waiting(&self.waiting);
        match tokio::time::timeout_at(deadline.into(), self.permits.clone().acquire_owned()).await {
            Err(_) => Err(HsmError::Timeout),
            Ok(Err(_)) => Err(HsmError::ShuttingDown),
            Ok(Ok(p)) => Ok(p),
        }
    }

    pub(super) fn mark_busy(&self) -> Busy<'_> {
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Busy(&self.in_use)
    }

    pub(super) fn take(&self) -> Option<Session> {
        self.idle.lock().pop()
    }

    pub(super) fn put_back(&self, s: Session) {
        if self.permits.is_closed() {
            return; // shutting down: drop closes it
        }
        self.idle.lock().push(s);
    }

    pub(super) fn stats(&self) -> PoolStats {
        PoolStats {
            size: self.size,
            in_use: self.in_use.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    pub(super) fn close(&self) {
        self.permits.close();
        self.idle.lock().clear();
    }
}
