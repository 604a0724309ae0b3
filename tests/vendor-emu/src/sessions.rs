//! Per-session facts the emulator keeps between calls (a small map behind a mutex; never
//! held across a call into SoftHSM2).

use pkcs11_sys::CK_SESSION_HANDLE;
use std::collections::HashMap;
use std::sync::Mutex;

/// A value per session handle.
pub struct PerSession<T: Copy> {
    map: Mutex<Option<HashMap<CK_SESSION_HANDLE, T>>>,
}

impl<T: Copy> PerSession<T> {
    /// An empty map (usable in a static).
    pub const fn new() -> Self {
        PerSession {
            map: Mutex::new(None),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<CK_SESSION_HANDLE, T>) -> R) -> R {
        // Every access is one insert/get/remove, so a panic elsewhere never leaves the map
        // half-updated: a poisoned lock is still consistent.
        let mut guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
        f(guard.get_or_insert_with(HashMap::new))
    }

    /// Remember `value` for `session`.
    pub fn set(&self, session: CK_SESSION_HANDLE, value: T) {
        self.with(|m| m.insert(session, value));
    }

    /// The value of `session`, if any.
    pub fn get(&self, session: CK_SESSION_HANDLE) -> Option<T> {
        self.with(|m| m.get(&session).copied())
    }

    /// Forget `session`.
    pub fn clear(&self, session: CK_SESSION_HANDLE) {
        self.with(|m| m.remove(&session));
    }
}
