//! Appended-IV mode (Luna in FIPS mode): the IV generated at `C_EncryptInit`, kept per
//! session until the operation's output is returned with the IV after it.

use crate::mode::GENERATED_IV_LEN;
use pkcs11_sys::CK_SESSION_HANDLE;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

type Iv = [u8; GENERATED_IV_LEN];

static PENDING: Mutex<Option<HashMap<CK_SESSION_HANDLE, Iv>>> = Mutex::new(None);

fn pending() -> MutexGuard<'static, Option<HashMap<CK_SESSION_HANDLE, Iv>>> {
    // A panic elsewhere never leaves the map half-updated: every access is one insert/remove.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remember the IV of the operation just initialised on `session`.
pub fn set(session: CK_SESSION_HANDLE, iv: Iv) {
    pending()
        .get_or_insert_with(HashMap::new)
        .insert(session, iv);
}

/// The IV of `session`'s appended-IV operation, if one is active.
pub fn get(session: CK_SESSION_HANDLE) -> Option<Iv> {
    pending().as_ref().and_then(|m| m.get(&session).copied())
}

/// Forget `session`'s operation (finished, failed, replaced, or session closed).
pub fn clear(session: CK_SESSION_HANDLE) {
    if let Some(m) = pending().as_mut() {
        m.remove(&session);
    }
}
