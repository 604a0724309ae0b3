//! Dedicated HSM worker threads, one per session, fed by one bounded FIFO queue.
//!
//! Why not tokio's blocking pool: behind a semaphore, a finished call first wakes an async
//! worker, which hands the next request to a blocking thread that has meanwhile gone to
//! sleep: two thread switches per request. Here a request is queued as soon as it arrives,
//! and a worker that finishes one call takes the next from the queue without sleeping while
//! there is work, so under load calls run back to back. Blocking PKCS#11 calls still never
//! run on the async workers.
//!
//! Bounds: at most `workers` calls in the HSM at once (one per session) and at most
//! `queue_depth` waiting; a full queue is [`HsmError::Busy`] at once. A job whose deadline
//! passed while queued is answered [`HsmError::Timeout`] without calling the HSM. A worker
//! stuck in a hung module only takes itself out; the callers' deadlines still apply.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::HsmError;

/// One queued call; it answers its caller itself (through a channel it captured).
pub(super) type Job = Box<dyn FnOnce() + Send>;

pub(super) struct Exec {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    closed: AtomicBool,
    queue_depth: usize,
}

impl Exec {
    /// Start `workers` threads.
    pub(super) fn start(workers: usize, queue_depth: usize) -> Result<Arc<Exec>, HsmError> {
        let exec = Arc::new(Exec {
            queue: Mutex::new(VecDeque::with_capacity(queue_depth)),
            ready: Condvar::new(),
            closed: AtomicBool::new(false),
            queue_depth,
        });
        for i in 0..workers.max(1) {
            let me = exec.clone();
            std::thread::Builder::new()
                .name(format!("xki-hsm-{i}"))
                .spawn(move || me.work())
                .map_err(|e| HsmError::Other(format!("cannot start HSM worker thread: {e}")))?;
        }
        Ok(exec)
    }

    fn work(&self) {
        loop {
            let job = {
                let mut q = self.queue.lock();
                loop {
                    if self.closed.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(j) = q.pop_front() {
                        break j;
                    }
                    self.ready.wait(&mut q);
                }
            };
            // A panicking job drops its answer channel (the caller sees an error); the
            // worker lives on.
            let _ = catch_unwind(AssertUnwindSafe(job));
        }
    }

    /// Queue `job`, or refuse at once when the queue is full or closed.
    pub(super) fn submit(&self, job: Job) -> Result<(), HsmError> {
        let mut q = self.queue.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(HsmError::ShuttingDown);
        }
        if q.len() >= self.queue_depth {
            return Err(HsmError::Busy);
        }
        q.push_back(job);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// Calls waiting for a worker.
    pub(super) fn waiting(&self) -> usize {
        self.queue.lock().len()
    }

    /// Refuse new calls, drop queued ones (their callers get an error) and let the workers
    /// exit once their current call returns.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let dropped: Vec<Job> = self.queue.lock().drain(..).collect();
        drop(dropped);
        self.ready.notify_all();
    }
}
