//! Token outages of a single backend: telling "the token answered: no such key" from "the
//! token is not there", and bringing the backend back without a restart.
//!
//! - **Detection.** An answer that reads as "no such key" (an empty or shrunken listing, a
//!   handle error on a key we know) is trusted only after the token itself answers
//!   `C_GetTokenInfo`; when it does not, the backend is out of service and the call fails with
//!   `CKR_DEVICE_ERROR`. Token-gone codes, a session fault that survives one reopen, and a
//!   session that cannot be opened or logged in do the same. (SoftHSM2 answers an empty
//!   `C_FindObjects` when its token directory is gone: see `quirks.rs`.)
//! - **While out of service** every call fails at once with `CKR_DEVICE_ERROR` (no library
//!   call), and the status interface reports the backend UNAVAILABLE (the replica groups'
//!   [`MemberState`]/[`MemberStatus`]).
//! - **Recovery.** The first call after the backoff (250 ms, doubling to 5 s) tries, alone:
//!   re-initialise the library when its quirk says the token only comes back that way (and we
//!   own the initialisation), forget or close the pooled sessions, find the token again by
//!   label (its slot id may change), log in, and find every known key again by
//!   `CKA_ID`/`CKA_LABEL`. Each transition is logged once; failed attempts at most once per
//!   backoff. Unlike a replica group there is no probe thread: a single backend is not used by
//!   anyone while idle, and the module may not create threads (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`).

use super::{errors, Pkcs11Backend};
use crate::backend::replicas::health::{MemberState, MemberStatus};
use crate::rv::{CkResult, Rv};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// First wait after a failure before a recovery attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between recovery attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct State {
    /// Last failure: code and text (no secrets).
    last_error: (u64, String),
    /// Times the backend went out of service.
    failures: u64,
    /// When it went out of service.
    since: Instant,
    /// No recovery attempt before this.
    next_attempt: Instant,
    backoff: Duration,
}

/// Whether the backend's token is usable, and the recovery schedule when it is not.
pub(super) struct Outage {
    down: AtomicBool,
    state: Mutex<State>,
    /// Held by the one caller attempting recovery.
    recovering: Mutex<()>,
    /// Held while catching up with another backend's re-initialisation of the library.
    resyncing: Mutex<()>,
}

impl Default for Outage {
    fn default() -> Self {
        let now = Instant::now();
        Outage {
            down: AtomicBool::new(false),
            state: Mutex::new(State {
                last_error: (0, String::new()),
                failures: 0,
                since: now,
                next_attempt: now,
                backoff: FIRST_BACKOFF,
            }),
            recovering: Mutex::new(()),
            resyncing: Mutex::new(()),
        }
    }
}

impl Pkcs11Backend {
    /// Before any call: fail at once (or recover, when due) while the token is out of
    /// service. Called with no lock held (recovery may need the object-write lock alone).
    pub(super) fn ensure_up(&self) -> CkResult<()> {
        if !self.outage.down.load(Ordering::Acquire) {
            return Ok(());
        }
        self.try_recover()
    }

    /// Take the backend out of service (logged once per outage).
    pub(super) fn mark_down(&self, rv: Rv, text: String) {
        let now = Instant::now();
        {
            let mut st = self.outage.state.lock();
            st.last_error = (rv.code(), text.clone());
            if self.outage.down.swap(true, Ordering::AcqRel) {
                return;
            }
            st.failures += 1;
            st.since = now;
            st.backoff = FIRST_BACKOFF;
            st.next_attempt = now + FIRST_BACKOFF;
        }
        log::error!(
            "backend {}: token unusable, out of service ({text}); calls fail with CKR_DEVICE_ERROR until it answers again",
            self.name
        );
        self.pool.drain_idle();
    }

    /// Ask the token itself whether it is there. An answer that reads as "no such key" is
    /// trusted only when this succeeds; otherwise the backend goes out of service and the
    /// caller gets `CKR_DEVICE_ERROR`.
    pub(super) fn confirm_token(&self, after: &str) -> CkResult<()> {
        match self.ctx.get_token_info(self.slot()) {
            Ok(_) => Ok(()),
            Err(e) => {
                let rv = errors::rv_of(&e);
                self.mark_down(
                    rv,
                    format!("{after}, and C_GetTokenInfo answered {rv}: the token is not readable"),
                );
                Err(Rv::DEVICE_ERROR)
            }
        }
    }

    /// The backend's health for the `XKI Status` interface.
    pub(super) fn health(&self) -> MemberStatus {
        let st = self.outage.state.lock();
        MemberStatus {
            name: self.name.clone(),
            state: if self.outage.down.load(Ordering::Acquire) {
                MemberState::Unavailable
            } else {
                MemberState::Active
            },
            in_flight: 0,
            stuck_calls: 0,
            key_mismatches: 0,
            last_error: st.last_error.0,
            last_error_text: st.last_error.1.clone(),
            failures: st.failures,
        }
    }

    fn try_recover(&self) -> CkResult<()> {
        // One caller recovers; the others fail at once instead of queueing behind it.
        let Some(_alone) = self.outage.recovering.try_lock() else {
            return Err(Rv::DEVICE_ERROR);
        };
        if !self.outage.down.load(Ordering::Acquire) {
            return Ok(());
        }
        if Instant::now() < self.outage.state.lock().next_attempt {
            return Err(Rv::DEVICE_ERROR);
        }
        match self.recover() {
            Ok(keys) => {
                let since = {
                    let mut st = self.outage.state.lock();
                    st.backoff = FIRST_BACKOFF;
                    st.since
                };
                self.outage.down.store(false, Ordering::Release);
                log::warn!(
                    "backend {}: token back in service after {} ms (slot {}, {keys} known keys found again)",
                    self.name,
                    since.elapsed().as_millis(),
                    self.slot().id()
                );
                Ok(())
            }
            Err((rv, text)) => {
                let mut st = self.outage.state.lock();
                st.last_error = (rv.code(), text.clone());
                st.next_attempt = Instant::now() + st.backoff;
                log::info!(
                    "backend {}: still out of service: {text}; next attempt in {} ms",
                    self.name,
                    st.backoff.as_millis()
                );
                st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
                Err(Rv::DEVICE_ERROR)
            }
        }
    }

    /// One recovery attempt; the number of known keys found again on success.
    fn recover(&self) -> Result<usize, (Rv, String)> {
        if self.quirks.reinit_to_recover {
            // No call may be inside the library while it is finalized: every call that uses
            // it holds the object-write lock shared (the quirk implies that lock).
            let _exclusive = super::calls::exclusive();
            let lease = self.lease.lock();
            let Some(lease) = lease.as_ref() else {
                return Err((Rv::CRYPTOKI_NOT_INITIALIZED, "shut down".into()));
            };
            if lease.owns_initialisation() {
                // Old handles may name other objects once the library numbers them afresh:
                // none may be used before the key is found again by its identity.
                self.keys.invalidate_all();
                self.pool.forget_all();
                let done = lease.reinitialise();
                // Our own re-initialisation: nothing to catch up with.
                self.seen_generation
                    .store(self.generation.load(Ordering::Acquire), Ordering::Release);
                done.map_err(|rv| (rv, format!("C_Initialize answered {rv}")))?;
            } else {
                // The host initialised the library: not ours to finalize. Reopening sessions
                // is all we can do (it may not be enough for this library).
                self.pool.drain_idle();
            }
        } else {
            self.pool.drain_idle();
        }
        self.find_token_again()?;
        self.ctx.get_token_info(self.slot()).map_err(|e| {
            let rv = errors::rv_of(&e);
            (rv, format!("C_GetTokenInfo answered {rv}"))
        })?;
        self.rebind_keys()
    }

    /// Catch up with a library re-initialised by another backend on it (one atomic load when
    /// nothing happened). Called once the call's object lock is held, so no re-initialisation
    /// can follow before the call is done.
    pub(super) fn catch_up(&self) {
        if self.generation.load(Ordering::Acquire) != self.seen_generation.load(Ordering::Acquire) {
            self.resync();
        }
    }

    /// After another backend re-initialised the shared library: drop our dead sessions and
    /// find our keys again (their handles are dead too, or name other objects now).
    fn resync(&self) {
        // Other callers that saw the change wait here until the keys are found again, and
        // the generation is marked seen only then: nobody uses a handle from before.
        let _alone = self.outage.resyncing.lock();
        let now = self.generation.load(Ordering::Acquire);
        if self.seen_generation.load(Ordering::Acquire) == now {
            return;
        }
        self.keys.invalidate_all();
        self.pool.forget_all();
        let rebound = self.rebind_keys();
        self.seen_generation.store(now, Ordering::Release);
        match rebound {
            Ok(found) => log::info!(
                "backend {}: the library was re-initialised for another token; sessions reopened, {found} known keys found again",
                self.name
            ),
            Err((rv, text)) => {
                self.mark_down(rv, format!("after the library was re-initialised: {text}"))
            }
        }
    }

    /// Find the configured token's slot again by label (the slot id may have changed).
    fn find_token_again(&self) -> Result<(), (Rv, String)> {
        let Some(label) = &self.token_label else {
            return Ok(());
        };
        let slots = self.ctx.get_slots_with_token().map_err(|e| {
            let rv = errors::rv_of(&e);
            (rv, format!("C_GetSlotList answered {rv}"))
        })?;
        for slot in slots {
            if let Ok(info) = self.ctx.get_token_info(slot) {
                if info.label().trim_end() == label.as_str() {
                    if slot.id() != self.slot().id() {
                        log::warn!(
                            "backend {}: token {label:?} is now in slot {}",
                            self.name,
                            slot.id()
                        );
                        *self.slot.lock() = slot;
                    }
                    return Ok(());
                }
            }
        }
        Err((
            Rv::TOKEN_NOT_PRESENT,
            format!("no readable token labelled {label:?}"),
        ))
    }

    /// Open a fresh logged-in session and find every key reported before by its identity.
    fn rebind_keys(&self) -> Result<usize, (Rv, String)> {
        let session = self
            .checkout(true)
            .map_err(|rv| (rv, "cannot open and log in a session".to_string()))?;
        self.keys.rebind_all(&session).map_err(|rv| {
            session.discard();
            (rv, format!("cannot find the known keys again: {rv}"))
        })
    }
}
