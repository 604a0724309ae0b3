//! How every backend call runs: session checkout, login, and the fault handling described in
//! the module docs (one retry on a fresh, logged-in session; `CKR_DEVICE_ERROR` when the token
//! stays unusable; never a loop).

use super::pool::{Pooled, Take, Unavailable};
use super::{errors, handles, Pkcs11Backend};
use crate::backend::replicas::health::is_member_failure;
use crate::backend::BackendKey;
use crate::rv::{CkResult, Rv};
use cryptoki::error::{Error, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::types::RawAuthPin;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// See `Quirks::object_writes_exclusive`: object writes hold this exclusively, every other
/// key call shares it. Process-wide, like the library's object store.
static OBJECT_WRITES: RwLock<()> = RwLock::new(());

/// Whether a retry may follow a fault: `Always` for idempotent operations, `IfNotRun` for
/// those (key generation) that may only be retried when the fault proves nothing happened.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    Always,
    IfNotRun,
}

/// Faults that mean "this session (or its login) is gone": reopen, re-login, retry once.
fn is_session_fault(rv: Rv) -> bool {
    matches!(
        rv,
        Rv::SESSION_HANDLE_INVALID | Rv::SESSION_CLOSED | Rv::USER_NOT_LOGGED_IN | Rv::DEVICE_ERROR
    )
}

/// Faults that prove the operation did not run (the session or login was missing).
fn proves_not_run(rv: Rv) -> bool {
    matches!(
        rv,
        Rv::SESSION_HANDLE_INVALID | Rv::SESSION_CLOSED | Rv::USER_NOT_LOGGED_IN
    )
}

/// The token is gone: no retry helps.
pub(super) fn is_token_gone(rv: Rv) -> bool {
    matches!(rv, Rv::TOKEN_NOT_PRESENT | Rv::DEVICE_REMOVED)
}

/// The rv of a slot-level (sessionless) call: a token that is gone is `CKR_DEVICE_ERROR`.
pub(super) fn token_rv(err: &Error) -> Rv {
    let rv = errors::rv_of(err);
    if is_token_gone(rv) {
        Rv::DEVICE_ERROR
    } else {
        rv
    }
}

/// Every call into a library whose quirks take the object-write lock is excluded while this
/// is held: for re-initialising the library (`outage.rs`).
pub(super) fn exclusive() -> RwLockWriteGuard<'static, ()> {
    OBJECT_WRITES.write()
}

impl Pkcs11Backend {
    /// Held across a call that reads keys or uses one, when the library needs it. Fails
    /// with `CKR_DEVICE_ERROR` while the token is out of service (see `outage.rs`).
    pub(super) fn reading(&self) -> CkResult<Option<RwLockReadGuard<'static, ()>>> {
        self.ensure_up()?;
        // Recursive: a reader never waits for a queued writer, so no nesting can deadlock.
        let guard = self
            .quirks
            .object_writes_exclusive
            .then(|| OBJECT_WRITES.read_recursive());
        self.catch_up();
        Ok(guard)
    }

    /// Held across a call that creates, changes or destroys an object, when the library
    /// needs it. Fails with `CKR_DEVICE_ERROR` while the token is out of service.
    pub(super) fn writing(&self) -> CkResult<Option<RwLockWriteGuard<'static, ()>>> {
        self.ensure_up()?;
        let guard = self
            .quirks
            .object_writes_exclusive
            .then(|| OBJECT_WRITES.write());
        self.catch_up();
        Ok(guard)
    }

    /// Log `session` in as CKU_USER (already logged in is fine: login is per token).
    pub(super) fn login(&self, session: &Session) -> CkResult<()> {
        let Some(pin) = &self.pin else {
            return Ok(());
        };
        let raw = RawAuthPin::new(Box::new(pin.to_vec()));
        match session.login_with_raw(UserType::User, &raw) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(errors::rv_of(&e)),
        }
    }

    /// A session from the pool: an idle one, or a newly opened and logged-in one. With
    /// `fresh`, never an idle one. Any failure here is `CKR_DEVICE_ERROR` (token unusable).
    pub(super) fn checkout(&self, fresh: bool) -> CkResult<Pooled<'_>> {
        match self.pool.take(fresh) {
            Ok(Take::Idle(s)) => Ok(s),
            Ok(Take::Open(reservation)) => {
                let session = self.ctx.open_rw_session_no_drop(self.slot()).map_err(|e| {
                    let rv = errors::rv_of(&e);
                    self.mark_down(rv, format!("C_OpenSession answered {rv}"));
                    Rv::DEVICE_ERROR
                })?;
                let session = reservation.fill(session);
                if let Err(rv) = self.login(&session) {
                    session.discard();
                    self.mark_down(rv, format!("C_Login answered {rv}"));
                    return Err(Rv::DEVICE_ERROR);
                }
                Ok(session)
            }
            Err(Unavailable::TimedOut) => {
                log::warn!("backend {}: no session became free in time", self.name);
                Err(Rv::DEVICE_ERROR)
            }
            Err(Unavailable::Closed) => Err(Rv::CRYPTOKI_NOT_INITIALIZED),
        }
    }

    /// Run `op` on a checked-out session, with the fault handling described in the module
    /// docs. `op` may run twice, so it must be repeatable.
    pub(super) fn call<T>(
        &self,
        retry: Retry,
        mut op: impl FnMut(&Session) -> CkResult<T>,
    ) -> CkResult<T> {
        let session = self.checkout(false)?;
        let rv = match op(&session) {
            Ok(v) => return Ok(v),
            Err(rv) if handles::is_handle_error(rv) => match self.hidden_session_fault(&session) {
                Some(fault) => fault,
                None => {
                    // "No such object" counts only if the token itself still answers.
                    drop(session);
                    self.confirm_token(&format!("a call answered {rv}"))?;
                    return Err(rv);
                }
            },
            Err(rv) if is_member_failure(rv) && !is_session_fault(rv) && !is_token_gone(rv) => {
                // A failure without a reason (GENERAL_ERROR, ...): the token's fault, or
                // this request's? The token answering C_GetTokenInfo decides.
                drop(session);
                self.confirm_token(&format!("a call answered {rv}"))?;
                return Err(rv);
            }
            Err(rv) => rv,
        };
        if is_token_gone(rv) {
            session.discard();
            self.mark_down(rv, format!("a call answered {rv}"));
            return Err(Rv::DEVICE_ERROR);
        }
        let retryable = match retry {
            Retry::Always => is_session_fault(rv),
            Retry::IfNotRun => proves_not_run(rv),
        };
        if !retryable {
            // DEVICE_ERROR that we may not retry: the session is still suspect.
            if is_session_fault(rv) {
                session.discard();
            }
            return Err(rv);
        }
        log::info!(
            "backend {}: {rv} on a pooled session; reopening and retrying once",
            self.name
        );
        session.discard();
        self.pool.drain_idle();
        let fresh = self.checkout(true)?;
        match op(&fresh) {
            Err(rv) if is_session_fault(rv) || is_token_gone(rv) => {
                fresh.discard();
                self.mark_down(rv, format!("{rv} again after reopening the session"));
                Err(Rv::DEVICE_ERROR)
            }
            result => result,
        }
    }

    /// After a handle error: is the real problem the session (gone, or not logged in)?
    /// Costs one C_GetSessionInfo, on error paths only.
    fn hidden_session_fault(&self, session: &Session) -> Option<Rv> {
        match session.get_session_info() {
            Err(e) => Some(errors::rv_of(&e)).filter(|rv| is_session_fault(*rv)),
            // A recycled handle now naming someone else's session.
            Ok(info) if info.slot_id() != self.slot() => Some(Rv::SESSION_HANDLE_INVALID),
            Ok(info) if self.pin.is_some() && info.session_state() != SessionState::RwUser => {
                Some(Rv::USER_NOT_LOGGED_IN)
            }
            Ok(_) => None,
        }
    }

    /// [`Self::call`] for an operation on one key: if its handle no longer names the object
    /// (renumbered by a re-login), find the object again and retry once more.
    pub(super) fn call_key<T>(
        &self,
        key: BackendKey,
        retry: Retry,
        mut op: impl FnMut(&Session, ObjectHandle) -> CkResult<T>,
    ) -> CkResult<T> {
        match self.call(retry, |s| op(s, self.keys.resolve(key))) {
            Err(rv) if handles::is_handle_error(rv) && self.keys.knows(key) => {
                self.call(retry, |s| op(s, self.keys.refind(s, key)?))
            }
            result => result,
        }
    }
}
