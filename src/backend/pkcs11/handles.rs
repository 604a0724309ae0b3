//! Stable [`BackendKey`]s over object handles that a token may renumber.
//!
//! SoftHSM2 (and other tokens) drop the handles of private objects when the token logs out
//! (e.g. after every session was closed) and hand out new ones when the objects are found
//! again. The module holds on to the `BackendKey`s we reported, so the backend remembers each
//! key's identity (`CKA_ID`, `CKA_LABEL`) and, when an old handle stops working, finds the
//! object again and keeps an alias old -> new. Nothing here is on the hot path unless a
//! renumbering actually happened (one relaxed atomic load otherwise).

use crate::backend::{BackendKey, KeyInfo};
use crate::rv::{CkResult, Rv};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, PartialEq, Eq)]
struct Identity {
    id: Vec<u8>,
    label: Vec<u8>,
}

#[derive(Default)]
struct Aliases {
    /// Key we reported -> the handle that object has now.
    current: HashMap<u64, u64>,
    /// Handle found now -> the key we reported first (so listings keep the old key).
    reported: HashMap<u64, u64>,
}

/// Identities of the keys reported to the module, and handle aliases after renumbering.
#[derive(Default)]
pub(crate) struct KeyDirectory {
    known: Mutex<HashMap<u64, Identity>>,
    aliases: RwLock<Aliases>,
    any_alias: AtomicBool,
}

/// `CK_INVALID_HANDLE`: what a key whose object cannot be found points at.
const NO_OBJECT: u64 = 0;

/// The search for one key by its identity.
fn identity_template(identity: &Identity) -> [Attribute; 3] {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Id(identity.id.clone()),
        Attribute::Label(identity.label.clone()),
    ]
}

/// Errors that mean "no object behind this handle".
pub(crate) fn is_handle_error(rv: Rv) -> bool {
    matches!(rv, Rv::OBJECT_HANDLE_INVALID | Rv::KEY_HANDLE_INVALID)
}

impl KeyDirectory {
    /// The handle to use now for `key`.
    pub(crate) fn resolve(&self, key: BackendKey) -> ObjectHandle {
        let raw = if self.any_alias.load(Ordering::Relaxed) {
            self.aliases
                .read()
                .current
                .get(&key.0)
                .copied()
                .unwrap_or(key.0)
        } else {
            key.0
        };
        super::attributes::object(BackendKey(raw))
    }

    /// Remember what `info` says about its key, and report it under the key the module
    /// already knows if its handle was renumbered. Returns the info to hand out.
    pub(crate) fn record(&self, mut info: KeyInfo) -> KeyInfo {
        if self.any_alias.load(Ordering::Relaxed) {
            if let Some(first) = self.aliases.read().reported.get(&info.handle.0) {
                info.handle = BackendKey(*first);
            }
        }
        let identity = Identity {
            id: info.id.clone(),
            label: info.label.clone(),
        };
        let mut known = self.known.lock();
        if known.get(&info.handle.0) != Some(&identity) {
            known.insert(info.handle.0, identity);
        }
        info
    }

    /// Note a key's new `CKA_LABEL` (its identity for [`Self::refind`]).
    pub(crate) fn relabel(&self, key: BackendKey, label: &[u8]) {
        if let Some(identity) = self.known.lock().get_mut(&key.0) {
            identity.label = label.to_vec();
        }
    }

    /// Forget a destroyed key.
    pub(crate) fn forget(&self, key: BackendKey) {
        self.known.lock().remove(&key.0);
        let mut aliases = self.aliases.write();
        if let Some(now) = aliases.current.remove(&key.0) {
            aliases.reported.remove(&now);
        }
    }

    /// Whether we know who `key` is (so it can be found again).
    pub(crate) fn knows(&self, key: BackendKey) -> bool {
        self.known.lock().contains_key(&key.0)
    }

    /// How many keys we know.
    pub(crate) fn known_count(&self) -> usize {
        self.known.lock().len()
    }

    /// Point every known key at no object (the library was re-initialised and numbers its
    /// objects afresh): the next use finds it again by identity instead of trusting a handle
    /// that may now name another object.
    pub(crate) fn invalidate_all(&self) {
        let keys: Vec<u64> = self.known.lock().keys().copied().collect();
        let mut aliases = self.aliases.write();
        aliases.reported.clear();
        aliases.current = keys.into_iter().map(|k| (k, NO_OBJECT)).collect();
        self.any_alias.store(true, Ordering::Relaxed);
    }

    /// Find every known key again on `session` (after a re-initialisation or a token that
    /// came back). Returns how many were found; the others stay pointed at no object.
    pub(crate) fn rebind_all(&self, session: &Session) -> CkResult<usize> {
        let known: Vec<(u64, Identity)> = self
            .known
            .lock()
            .iter()
            .map(|(k, i)| (*k, i.clone()))
            .collect();
        let mut fresh = Aliases::default();
        let mut found_count = 0;
        for (key, identity) in known {
            let found = session
                .find_objects(&identity_template(&identity))
                .map_err(|e| super::errors::rv_of(&e))?;
            let now = match found[..] {
                [handle] => {
                    found_count += 1;
                    handle.handle()
                }
                _ => NO_OBJECT,
            };
            fresh.current.insert(key, now);
            if now != NO_OBJECT {
                fresh.reported.insert(now, key);
            }
        }
        *self.aliases.write() = fresh;
        self.any_alias.store(true, Ordering::Relaxed);
        Ok(found_count)
    }

    /// Find `key`'s object again by its identity and remember its new handle. Exactly one
    /// secret key must match; otherwise the key is gone (`CKR_KEY_HANDLE_INVALID`).
    pub(crate) fn refind(&self, session: &Session, key: BackendKey) -> CkResult<ObjectHandle> {
        let Some(identity) = self.known.lock().get(&key.0).cloned() else {
            return Err(Rv::KEY_HANDLE_INVALID);
        };
        let found = session
            .find_objects(&identity_template(&identity))
            .map_err(|e| super::errors::rv_of(&e))?;
        let [handle] = found[..] else {
            return Err(Rv::KEY_HANDLE_INVALID);
        };
        let now = handle.handle();
        let mut aliases = self.aliases.write();
        let before = aliases.current.get(&key.0).copied();
        // Unchanged when the alias (or, without one, the key itself) already names it.
        if before.unwrap_or(key.0) != now {
            if let Some(old) = aliases.current.insert(key.0, now) {
                aliases.reported.remove(&old);
            }
            aliases.reported.insert(now, key.0);
            self.any_alias.store(true, Ordering::Relaxed);
            log::info!("object handle {} is now {now}", key.0);
        }
        Ok(handle)
    }
}
