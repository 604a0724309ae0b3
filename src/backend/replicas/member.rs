//! One member of a replica group: its backend, worker pool, deadline and health counters.
//!
//! Two ways to run a call. [`Member::attempt`] hands it to one of the member's workers and
//! waits at most the deadline: a library that hangs costs the caller one deadline, and the
//! call is abandoned on the worker. [`Member::attempt_read`] (reads and crypto) does the same
//! unless the member runs such calls inline: then the call runs on the caller's thread, with
//! no hand-off (two thread switches per call), and cannot be abandoned. Inline is for
//! backends whose reads cannot hang ([`Backend::reads_cannot_hang`]: the embedded token) or
//! whose config says `inline_calls = true`. An inline call that answers after the deadline
//! (by the coarse monotonic clock, to a few ms) is treated like one that timed out on a
//! worker (member out of service, answer dropped, call retried on the next member); only the
//! caller has waited for it. Changes (generation, attribute and state changes, destruction)
//! and opening always go to a worker.

use super::health::{is_member_failure, MemberState, MemberStatus};
use super::worker::Workers;
use crate::backend::Backend;
use crate::rv::{CkResult, Rv};
use parking_lot::Mutex;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How one attempt on a member ended.
pub enum Outcome<T> {
    /// The member answered (successfully or with an error about the request).
    Answer(CkResult<T>),
    /// The member failed (error class of [`is_member_failure`], or no answer in time) and
    /// is now out of service.
    Failed(Rv),
}

impl<T> Outcome<T> {
    /// The same outcome with an answer's value mapped by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Answer(r) => Outcome::Answer(r.map(f)),
            Outcome::Failed(rv) => Outcome::Failed(rv),
        }
    }
}

/// The coarse monotonic clock: a resolution of a few ms (the kernel's tick), read for a
/// fraction of the precise clock's cost (~60 ns a read on a small VM, against ~1 µs for an
/// embedded member's whole call); enough to tell an answer past a deadline of milliseconds.
fn coarse_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec; clock_gettime writes only it. It cannot fail
    // for this clock id on Linux; on failure `ts` stays zero and the call reads as on time.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Opens a member's backend that could not be opened when the group started.
pub type Opener =
    Arc<dyn Fn() -> Result<Arc<dyn Backend>, crate::backend::OpenError> + Send + Sync>;

/// An open member backend and whether its reads run on the caller's thread.
struct Opened {
    backend: Arc<dyn Backend>,
    inline: bool,
}

/// A counter that every call writes, on a cache line of its own so that the writes do not
/// evict the fields every call only reads (here and in the neighbouring member).
#[repr(align(64))]
struct OwnLine(AtomicU64);

/// A member of a group.
pub struct Member {
    /// The backend's name.
    pub name: String,
    /// Unset until a member that was unreachable at start-up has been opened by the probe;
    /// never changes once set.
    opened: OnceLock<Opened>,
    /// How to open it then; set only for such members.
    opener: Option<Opener>,
    workers: Workers,
    deadline: Duration,
    /// `inline_calls` from the config; `None`: as the backend says.
    inline: Option<bool>,
    up: AtomicBool,
    in_flight: OwnLine,
    failures: AtomicU64,
    /// Last failure: code and text.
    last_error: Mutex<(u64, String)>,
}

impl Member {
    /// A member named `name` with at most `max_threads` worker threads: in service on
    /// `backend`, or (with `None`) out of service until `opener` succeeds in the probe.
    /// `inline` overrides whether reads run on the caller's thread (see the module docs).
    pub fn new(
        name: &str,
        backend: Option<Arc<dyn Backend>>,
        opener: Option<Opener>,
        deadline: Duration,
        max_threads: usize,
        inline: Option<bool>,
    ) -> Self {
        let m = Member {
            workers: Workers::new(name, max_threads),
            name: name.to_string(),
            opened: OnceLock::new(),
            opener,
            deadline,
            inline,
            up: AtomicBool::new(backend.is_some()),
            in_flight: OwnLine(AtomicU64::new(0)),
            failures: AtomicU64::new(0),
            last_error: Mutex::new((0, String::new())),
        };
        if let Some(b) = backend {
            m.set_backend(b);
        }
        m
    }

    fn set_backend(&self, backend: Arc<dyn Backend>) {
        let inline = self.inline.unwrap_or_else(|| backend.reads_cannot_hang());
        // Only the group's constructor and the probe thread open members, once each.
        let _ = self.opened.set(Opened { backend, inline });
    }

    /// Whether the group opened this member's backend itself (and so must shut it down).
    pub fn opened_late(&self) -> bool {
        self.opener.is_some()
    }

    /// The backend, once open.
    pub fn backend(&self) -> Option<Arc<dyn Backend>> {
        self.opened.get().map(|o| o.backend.clone())
    }

    /// The backend, when it is open and runs reads and crypto on the caller's thread.
    pub fn inline_backend(&self) -> Option<&dyn Backend> {
        self.opened
            .get()
            .filter(|o| o.inline)
            .map(|o| o.backend.as_ref())
    }

    /// For a member not yet open: try to open it (on a worker, within a generous deadline,
    /// since opening logs in). True when the backend is open.
    pub fn ensure_open(&self) -> bool {
        if self.opened.get().is_some() {
            return true;
        }
        let Some(open) = self.opener.clone() else {
            return false;
        };
        let limit = self.deadline.max(Duration::from_secs(10));
        match self.workers.call(limit, move || open()) {
            Ok(Ok(b)) => {
                log::warn!("replica member {}: opened", self.name);
                self.set_backend(b);
                true
            }
            Ok(Err(e)) => {
                self.note_problem(e.rv, format!("cannot open: {} ({})", e.problem, e.rv));
                false
            }
            Err(_) => {
                self.note_problem(
                    Rv::DEVICE_ERROR,
                    format!("cannot open: no answer within {} ms", limit.as_millis()),
                );
                false
            }
        }
    }

    /// In service.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Calls running on the member now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.0.load(Ordering::Relaxed)
    }

    /// Run `f` on a worker within the member's deadline. A member-class failure or a timeout
    /// takes the member out of service. For changes; reads use [`Member::attempt_read`].
    pub fn attempt<T, F>(&self, f: F) -> Outcome<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> CkResult<T> + Send + 'static,
    {
        let Some(backend) = self.backend() else {
            return Outcome::Failed(Rv::DEVICE_ERROR);
        };
        self.on_worker(backend, f)
    }

    /// Run the read or crypto call `f`: on the caller's thread when the member runs reads
    /// inline ([`Member::attempt_here`]), else like [`Member::attempt`]. `f` must not change
    /// anything on the token.
    pub fn attempt_read<T, F>(&self, f: F) -> Outcome<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> CkResult<T> + Send + 'static,
    {
        if let Some(b) = self.inline_backend() {
            return self.attempt_here(|| f(b));
        }
        let Some(backend) = self.backend() else {
            return Outcome::Failed(Rv::DEVICE_ERROR);
        };
        self.on_worker(backend, f)
    }

    /// Run the read or crypto call `f` on the caller's thread; for members whose
    /// [`Member::inline_backend`] is set (`f` calls it). `f` may borrow the caller's buffers.
    pub fn attempt_here<T>(&self, f: impl FnOnce() -> CkResult<T>) -> Outcome<T> {
        self.in_flight.0.fetch_add(1, Ordering::Relaxed);
        let start = coarse_now();
        // A panicking backend is a failed member, as on a worker (whose caller then sees
        // no answer); the caller's thread is not unwound through the group.
        let answer = catch_unwind(AssertUnwindSafe(f));
        let took = coarse_now().saturating_sub(start);
        self.in_flight.0.fetch_sub(1, Ordering::Relaxed);
        let Ok(answer) = answer else {
            self.mark_down(Rv::DEVICE_ERROR, "panicked in a call".into());
            return Outcome::Failed(Rv::DEVICE_ERROR);
        };
        if let Err(rv) = answer {
            if is_member_failure(rv) {
                self.mark_down(rv, format!("answered {rv}"));
                return Outcome::Failed(rv);
            }
        }
        if took > self.deadline {
            // Late counts as no answer, as on a worker: the answer is dropped (plaintext is
            // wiped with it), the call goes to the next member, and a late probe keeps the
            // member out of service.
            self.mark_down(
                Rv::DEVICE_ERROR,
                format!(
                    "answered after {} ms, past its {} ms deadline",
                    took.as_millis(),
                    self.deadline.as_millis()
                ),
            );
            return Outcome::Failed(Rv::DEVICE_ERROR);
        }
        Outcome::Answer(answer)
    }

    fn on_worker<T, F>(&self, backend: Arc<dyn Backend>, f: F) -> Outcome<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> CkResult<T> + Send + 'static,
    {
        self.in_flight.0.fetch_add(1, Ordering::Relaxed);
        let answer = self
            .workers
            .call(self.deadline, move || f(backend.as_ref()));
        self.in_flight.0.fetch_sub(1, Ordering::Relaxed);
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
