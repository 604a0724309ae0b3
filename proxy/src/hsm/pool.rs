//! Session pool: idle logged-in sessions and occupancy counters. How many calls run at once
//! and how many may wait is bounded by the worker threads and their queue ([`super::exec`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cryptoki::session::Session;
use parking_lot::Mutex;

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
    in_use: AtomicUsize,
    closed: AtomicBool,
    /// Set at open, may be changed once by [`Pool::set_size`] before the workers start.
    size: AtomicUsize,
    queue_depth: usize,
}

/// Decrements `in_use` when dropped.
pub(super) struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub(super) fn new(size: usize, queue_depth: usize) -> Self {
        Pool {
            idle: Mutex::new(Vec::with_capacity(size)),
            in_use: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            size: AtomicUsize::new(size),
            queue_depth,
        }
    }

    /// Pool size (= HSM worker threads).
    pub(super) fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Change the size; only meaningful before the worker threads start (they are sized
    /// from it once).
    pub(super) fn set_size(&self, size: usize) {
        self.size.store(size, Ordering::Relaxed);
    }

    /// Requests allowed to wait for a session.
    pub(super) fn queue_depth(&self) -> usize {
        self.queue_depth
    }

    pub(super) fn mark_busy(&self) -> Busy<'_> {
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Busy(&self.in_use)
    }

    pub(super) fn take(&self) -> Option<Session> {
        self.idle.lock().pop()
    }

    pub(super) fn put_back(&self, s: Session) {
        if self.closed.load(Ordering::Acquire) {
            return; // shutting down: drop closes it
        }
        self.idle.lock().push(s);
    }

    pub(super) fn stats(&self, waiting: usize) -> PoolStats {
        PoolStats {
            size: self.size(),
            in_use: self.in_use.load(Ordering::Relaxed),
            waiting,
        }
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle.lock().clear();
    }
}
