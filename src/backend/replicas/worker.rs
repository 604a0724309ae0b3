//! Abandonable member calls: a small worker pool per member.
//!
//! A vendor library can hang inside a call (a dead network HSM with no client timeout). The
//! caller must not hang with it, so every member call runs on one of the member's worker
//! threads and the caller waits on a channel with a deadline. On a timeout the caller moves
//! on; the worker stays stuck in the library until it returns. At most `max_threads` workers
//! exist per member, so a hung member pins at most that many threads; further calls queue and
//! time out at their own deadline (the member is out of service by then, so only the probe
//! thread still sends it work). A queued call whose caller gave up is skipped, not run.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// A call's state: its caller is waiting, gave up, or the call has returned.
const WAITING: u8 = 0;
const ABANDONED: u8 = 1;
const DONE: u8 = 2;

struct Queued {
    job: Job,
    /// `WAITING`, `ABANDONED` or `DONE`.
    state: Arc<AtomicU8>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Queued>,
    threads: usize,
    idle: usize,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    /// Calls whose caller gave up while the worker was inside the library.
    stuck: AtomicU64,
}

/// The worker pool of one member.
pub struct Workers {
    name: String,
    max_threads: usize,
    shared: Arc<Shared>,
}

/// A call did not answer within its deadline (or could not be started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl Workers {
    /// A pool for the member `name` with at most `max_threads` threads (at least 1).
    pub fn new(name: &str, max_threads: usize) -> Self {
        Workers {
            name: name.to_string(),
            max_threads: max_threads.max(1),
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                ready: Condvar::new(),
                stuck: AtomicU64::new(0),
            }),
        }
    }

    /// Calls abandoned by their caller that are still running in the library.
    pub fn stuck(&self) -> u64 {
        self.shared.stuck.load(Ordering::Relaxed)
    }

    /// Run `f` on a worker and wait at most `deadline` for its answer.
    pub fn call<T, F>(&self, deadline: Duration, f: F) -> Result<T, TimedOut>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel::<T>(1);
        let state = Arc::new(AtomicU8::new(WAITING));
        let job_state = state.clone();
        let shared = self.shared.clone();
        let job: Job = Box::new(move || {
            let value = f();
            if job_state.swap(DONE, Ordering::AcqRel) == ABANDONED {
                // The caller left while we were inside the library; we are no longer stuck.
                shared.stuck.fetch_sub(1, Ordering::Relaxed);
            }
            // A caller that timed out has dropped the receiver; the value (e.g. plaintext in
            // a Zeroizing buffer) is then dropped and wiped here.
            let _ = tx.send(value);
        });
        self.submit(Queued {
            job,
            state: state.clone(),
        })?;
        match rx.recv_timeout(deadline) {
            Ok(v) => Ok(v),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(TimedOut),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if self.abandon(&state) {
                    Err(TimedOut)
                } else {
                    // The call returned just now: its answer is being sent.
                    rx.recv().map_err(|_| TimedOut)
                }
            }
        }
    }

    /// Give up on a call. A queued call is marked so no worker runs it; a running one counts
    /// as stuck until it returns. False when the call already returned.
    fn abandon(&self, state: &Arc<AtomicU8>) -> bool {
        // Under the queue lock, where workers take calls and check the state, so a call is
        // either skipped or run, never both or neither.
        let q = self.shared.queue.lock();
        let queued = q.jobs.iter().any(|j| Arc::ptr_eq(&j.state, state));
        if queued {
            state.store(ABANDONED, Ordering::Release);
            return true;
        }
        drop(q);
        match state.compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                self.shared.stuck.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    fn submit(&self, job: Queued) -> Result<(), TimedOut> {
        let mut q = self.shared.queue.lock();
        if q.shutdown {
            return Err(TimedOut);
        }
        q.jobs.push_back(job);
        if q.idle == 0 && q.threads < self.max_threads {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("xki-{}", self.name))
                .spawn(move || worker(shared));
            match spawned {
                Ok(_) => q.threads += 1,
                Err(e) => {
                    log::error!("member {}: cannot start a worker thread: {e}", self.name);
                    if q.threads == 0 {
                        q.jobs.pop_back();
                        return Err(TimedOut);
                    }
                }
            }
        } else {
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Let idle workers exit. Stuck ones exit when the library lets them go.
    pub fn shutdown(&self) {
        let mut q = self.shared.queue.lock();
        q.shutdown = true;
        q.jobs.clear();
        self.shared.ready.notify_all();
    }
}

fn worker(shared: Arc<Shared>) {
    loop {
        let next = {
            let mut q = shared.queue.lock();
            loop {
                if let Some(j) = q.jobs.pop_front() {
                    // Checked under the queue lock, where `abandon` marks queued calls.
                    if j.state.load(Ordering::Acquire) == ABANDONED {
                        continue;
                    }
                    break Some(j);
                }
                if q.shutdown {
                    break None;
                }
                q.idle += 1;
                shared.ready.wait(&mut q);
                q.idle -= 1;
            }
        };
        let Some(queued) = next else {
            shared.queue.lock().threads -= 1;
            return;
        };
        // A panicking backend must not take the worker (and the pool's count) with it; the
        // caller then sees its channel closed and treats it like a timeout.
        let _ = catch_unwind(AssertUnwindSafe(queued.job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    #[test]
    fn answers_and_times_out_without_waiting_for_a_hung_call() {
        let w = Workers::new("t", 2);
        assert_eq!(w.call(Duration::from_secs(1), || 7), Ok(7));
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let start = Instant::now();
        let out = w.call(Duration::from_millis(50), move || {
            while !r.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            1
        });
        assert_eq!(out, Err(TimedOut));
        assert!(start.elapsed() < Duration::from_millis(150));
        assert_eq!(w.stuck(), 1);
        // The other worker still answers.
        assert_eq!(w.call(Duration::from_secs(1), || 8), Ok(8));
        release.store(true, Ordering::Relaxed);
        let t = Instant::now();
        while w.stuck() != 0 && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(w.stuck(), 0);
        w.shutdown();
    }

    #[test]
    fn a_hung_library_pins_at_most_max_threads() {
        let w = Workers::new("t", 2);
        let release = Arc::new(AtomicBool::new(false));
        let ran = Arc::new(AtomicU64::new(0));
        for _ in 0..6 {
            let (r, ran) = (release.clone(), ran.clone());
            let start = Instant::now();
            let out = w.call(Duration::from_millis(20), move || {
                ran.fetch_add(1, Ordering::SeqCst);
                while !r.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            assert_eq!(out, Err(TimedOut));
            assert!(start.elapsed() < Duration::from_millis(100));
        }
        // Two workers are stuck; the four calls queued behind them were abandoned.
        assert_eq!(w.stuck(), 2);
        assert_eq!(w.shared.queue.lock().threads, 2);
        release.store(true, Ordering::Relaxed);
        let t = Instant::now();
        while w.stuck() != 0 && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20));
        // Abandoned queued calls are skipped, not run late.
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        w.shutdown();
    }
}
