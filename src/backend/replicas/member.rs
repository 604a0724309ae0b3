//! One member of a replica group: its backend, worker pool, deadline and health counters.

use super::health::{is_member_failure, MemberState, MemberStatus};
use super::worker::Workers;
use crate::backend::Backend;
use crate::rv::{CkResult, Rv};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How one attempt on a member ended.
pub enum Outcome<T> {
    /// The member answered (successfully or with an error about the request).
    Answer(CkResult<T>),
    /// The member failed (error class of [`is_member_failure`], or no answer in time) and
    /// is now out of service.
    Failed(Rv),
}

/// A member of a group.
pub struct Member {
    /// The backend's name.
    pub name: String,
    backend: Arc<dyn Backend>,
    workers: Workers,
    deadline: Duration,
    up: AtomicBool,
    in_flight: AtomicU64,
    failures: AtomicU64,
    /// Last failure: code and text.
    last_error: Mutex<(u64, String)>,
}

impl Member {
    /// A member in service, with at most `max_threads` worker threads.
    pub fn new(backend: Arc<dyn Backend>, deadline: Duration, max_threads: usize) -> Self {
        let name = backend.name().to_string();
        Member {
            workers: Workers::new(&name, max_threads),
            name,
            backend,
            deadline,
            up: AtomicBool::new(true),
            in_flight: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new((0, String::new())),
        }
    }

    /// In service.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Calls running on the member now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Run `f` on the member within its deadline. A member-class failure or a timeout takes
    /// the member out of service.
    pub fn attempt<T, F>(&self, f: F) -> Outcome<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> CkResult<T> + Send + 'static,
    {
        let backend = self.backend.clone();
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let answer = self
            .workers
            .call(self.deadline, move || f(backend.as_ref()));
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        match answer {
            Ok(Err(rv)) if is_member_failure(rv) => {
                self.mark_down(rv, format!("answered {rv}"));
                Outcome::Failed(rv)
            }
            Ok(result) => Outcome::Answer(result),
            Err(_) => {
                let ms = self.deadline.as_millis();
                self.mark_down(Rv::DEVICE_ERROR, format!("no answer within {ms} ms"));
                Outcome::Failed(Rv::DEVICE_ERROR)
            }
        }
    }

    /// Take the member out of service (logged once per outage).
    pub fn mark_down(&self, rv: Rv, text: String) {
        *self.last_error.lock() = (rv.code(), text.clone());
        if self.up.swap(false, Ordering::AcqRel) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            log::error!("replica member {}: out of service: {text}", self.name);
        }
    }

    /// Record a problem that does not take the member out of service (a key mismatch).
    pub fn note_problem(&self, rv: Rv, text: String) {
        *self.last_error.lock() = (rv.code(), text);
    }

    /// Return the member to service.
    pub fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            log::warn!("replica member {}: back in service", self.name);
        }
    }

    /// The health snapshot; `mismatches` comes from the group's key map.
    pub fn status(&self, mismatches: u64) -> MemberStatus {
        let stuck = self.workers.stuck();
        let state = if !self.is_up() {
            MemberState::Unavailable
        } else if mismatches > 0 || stuck > 0 {
            MemberState::Degraded
        } else {
            MemberState::Active
        };
        let (code, text) = self.last_error.lock().clone();
        MemberStatus {
            name: self.name.clone(),
            state,
            in_flight: self.in_flight(),
            stuck_calls: stuck,
            key_mismatches: mismatches,
            last_error: code,
            last_error_text: text,
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Stop the worker threads (the backend itself is shut down by its owner).
    pub fn shutdown(&self) {
        self.workers.shutdown();
    }
}
