//! Sessions and login.

use super::*;

pub fn open_session(slot: u64, flags: u64) -> CkResult<u64> {
    let m = module()?;
    m.slot(slot)?;
    if flags & CKF_SERIAL_SESSION == 0 {
        return Err(Rv::SESSION_PARALLEL_NOT_SUPPORTED);
    }
    m.sessions.open(slot as usize, flags & CKF_RW_SESSION != 0)
}

pub fn close_session(session: u64) -> CkResult<()> {
    let m = module()?;
    let (s, index, _) = m.session(session)?;
    m.sessions.close(session)?;
    if m.sessions.count(index).0 == 0 {
        // PKCS#11: closing the last session of a token logs the user out.
        s.slot.reset_login();
    }
    Ok(())
}

pub fn close_all_sessions(slot: u64) -> CkResult<()> {
    let m = module()?;
    let s = m.slot(slot)?;
    m.sessions.close_slot(slot as usize);
    s.slot.reset_login();
    Ok(())
}

pub fn get_session_info(session: u64) -> CkResult<SessionInfo> {
    let m = module()?;
    let (s, index, rw) = m.session(session)?;
    let state = match (s.slot.is_logged_in(), rw) {
        (false, false) => CKS_RO_PUBLIC_SESSION,
        (false, true) => CKS_RW_PUBLIC_SESSION,
        (true, false) => CKS_RO_USER_FUNCTIONS,
        (true, true) => CKS_RW_USER_FUNCTIONS,
    };
    Ok(SessionInfo {
        slot_id: index as u64,
        state,
        flags: CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 },
        device_error: 0,
    })
}

pub fn login(session: u64, user_type: u64, pin: &[u8]) -> CkResult<()> {
    let m = module()?;
    let (s, index, _) = m.session(session)?;
    match user_type {
        CKU_USER => login_user(s, pin),
        // No operation ever needs re-authentication.
        CKU_CONTEXT_SPECIFIC => Err(Rv::OPERATION_NOT_INITIALIZED),
        CKU_SO => {
            // PKCS#11 2.40 section 5.6, C_Login: the session-state errors of an SO login come
            // first (in SoftHSM2's order, which tests/module_conformance.rs compares with)...
            let (all, rw) = m.sessions.count(index);
            if all > rw {
                return Err(Rv(CKR_SESSION_READ_ONLY_EXISTS));
            }
            if s.slot.is_logged_in() {
                return Err(Rv(CKR_USER_ANOTHER_ALREADY_LOGGED_IN));
            }
            // ...then the refusal: the virtual token has no security officer (HSM
            // administration happens on the HSM), so no PIN is compared or counted.
            Err(Rv::USER_TYPE_INVALID)
        }
        _ => Err(Rv::USER_TYPE_INVALID),
    }
}

/// `C_Login(CKU_USER)` with the slot's attempt policy; failures, the lock and logins refused
/// while locked are audit records (never with the PIN).
fn login_user(s: &SlotState, pin: &[u8]) -> CkResult<()> {
    use crate::pin_attempts::{Outcome, PIN_LOCKED};
    let record = |op, rv: Rv| {
        let _ = audit::record::<()>(
            Record {
                op,
                slot: &s.slot.label,
                key: b"",
                mechanism: "",
                bytes_in: 0,
                bytes_out: 0,
            },
            Err(rv),
        );
    };
    match s.slot.login(pin) {
        Ok(Outcome::Accepted) => Ok(()),
        Ok(Outcome::Wrong(status)) => {
            log::warn!(
                "slot {}: C_Login with an incorrect PIN ({} of {} consecutive failures)",
                s.slot.label,
                status.failures,
                if status.max == 0 {
                    "unlimited".to_string()
                } else {
                    status.max.to_string()
                }
            );
            record("login", Rv::PIN_INCORRECT);
            Err(Rv::PIN_INCORRECT)
        }
        Ok(Outcome::LockedNow(status)) => {
            log::error!(
                "slot {}: C_Login with an incorrect PIN: {} consecutive failures, the user PIN is now locked until the operator unlocks it (xki-proxy pin unlock --slot {:?})",
                s.slot.label,
                status.failures,
                s.slot.label
            );
            record("login", Rv::PIN_INCORRECT);
            record("pin-locked", PIN_LOCKED);
            Err(Rv::PIN_INCORRECT)
        }
        Err(rv) if rv == PIN_LOCKED => {
            log::warn!(
                "slot {}: C_Login refused: the user PIN is locked",
                s.slot.label
            );
            record("login", PIN_LOCKED);
            Err(rv)
        }
        Err(rv) => Err(rv),
    }
}

pub fn logout(session: u64) -> CkResult<()> {
    let m = module()?;
    let (s, index, _) = m.session(session)?;
    s.slot.logout()?;
    m.sessions.end_operations(index);
    Ok(())
}
