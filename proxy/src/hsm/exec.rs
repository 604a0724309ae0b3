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
//!
//! Shutdown ([`Exec::close`]) waits, up to a bound, for the calls already in the HSM: the
//! process must not exit under a worker that is inside the PKCS#11 library (its exit
//! handlers, OpenSSL's `OPENSSL_cleanup` under SoftHSM2 for one, free what that call uses).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::HsmError;

/// One queued call; it answers its caller itself (through a channel it captured).
pub(super) type Job = Box<dyn FnOnce() + Send>;

pub(super) struct Exec {
    queue: Mutex<Queue>,
    /// Signalled when a job is queued or the executor closes.
    ready: Condvar,
    /// Signalled when the last running job returns.
    idle: Condvar,
    closed: AtomicBool,
    queue_depth: usize,
}

/// The waiting jobs and how many run now (under one lock, so a job is always counted as
/// either waiting or running).
struct Queue {
    jobs: VecDeque<Job>,
    running: usize,
}

impl Exec {
    /// Start `workers` threads.
    pub(super) fn start(workers: usize, queue_depth: usize) -> Result<Arc<Exec>, HsmError> {
        let exec = Arc::new(Exec {
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(queue_depth),
                running: 0,
            }),
            ready: Condvar::new(),
            idle: Condvar::new(),
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
                    if let Some(j) = q.jobs.pop_front() {
                        q.running += 1;
                        break j;
                    }
                    self.ready.wait(&mut q);
                }
            };
            // A panicking job drops its answer channel (the caller sees an error); the
            // worker lives on.
            let _ = catch_unwind(AssertUnwindSafe(job));
            let mut q = self.queue.lock();
            q.running -= 1;
            if q.running == 0 {
                self.idle.notify_all();
            }
        }
    }

    /// Queue `job`, or refuse at once when the queue is full or closed.
    pub(super) fn submit(&self, job: Job) -> Result<(), HsmError> {
        let mut q = self.queue.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(HsmError::ShuttingDown);
        }
        if q.jobs.len() >= self.queue_depth {
            return Err(HsmError::Busy);
        }
        q.jobs.push_back(job);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// Calls waiting for a worker.
    pub(super) fn waiting(&self) -> usize {
        self.queue.lock().jobs.len()
    }

    /// Refuse new calls, drop queued ones (their callers get an error), let the workers exit
    /// once their current call returns, and wait up to `wait` for those calls. Returns how
    /// many still run (a hung module) when the wait ends.
    pub(super) fn close(&self, wait: Duration) -> usize {
        self.closed.store(true, Ordering::Release);
        let deadline = Instant::now() + wait;
        let mut q = self.queue.lock();
        let dropped: Vec<Job> = q.jobs.drain(..).collect();
        self.ready.notify_all();
        while q.running > 0 && !self.idle.wait_until(&mut q, deadline).timed_out() {}
        let running = q.running;
        drop(q);
        // Dropped outside the lock: each answers its caller through its channel.
        drop(dropped);
        running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn close_waits_for_running_calls_and_drops_queued_ones() {
        let exec = Exec::start(1, 4).unwrap();
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        exec.submit(Box::new(move || {
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            done_tx.send("ran").unwrap();
        }))
        .unwrap();
        started.recv().unwrap();
        // Queued behind the running call: dropped by close, never run.
        let (queued_tx, queued) = mpsc::channel::<()>();
        exec.submit(Box::new(move || queued_tx.send(()).unwrap()))
            .unwrap();

        // A call that does not return within the wait: close gives up and says so.
        assert_eq!(exec.close(Duration::from_millis(50)), 1);
        assert!(matches!(
            exec.submit(Box::new(|| {})),
            Err(HsmError::ShuttingDown)
        ));
        // Once it returns, close finds nothing running.
        let waiter = {
            let exec = exec.clone();
            std::thread::spawn(move || exec.close(Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        release.send(()).unwrap();
        assert_eq!(waiter.join().unwrap(), 0);
        assert_eq!(done.try_recv(), Ok("ran"), "finished before close returned");
        assert!(
            queued.recv().is_err(),
            "the queued call was dropped, not run"
        );
    }
}
