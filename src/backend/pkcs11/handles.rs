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
    /// Keys whose admissibility facts can no longer change, by current handle (`find.rs`).
    pub(crate) settled: super::find::Settled,
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
        self.settled.forget(key.0);
        self.known.lock().remove(&key.0);
        let mut aliases = self.aliases.write();
        if let Some(now) = aliases.current.remove(&key.0) {
            aliases.reported.remove(&now);
        }
    }

    /// The `CKA_ID` last read for the object now behind `handle`, if that object was last
    /// read under this very label (`find.rs` takes the ID from here instead of reading it:
    /// SoftHSM2 decrypts every byte-string attribute of a private object on each read).
    pub(crate) fn known_id(&self, handle: u64, label: &[u8]) -> Option<Vec<u8>> {
        let reported = if self.any_alias.load(Ordering::Relaxed) {
            self.aliases
                .read()
                .reported
                .get(&handle)
                .copied()
                .unwrap_or(handle)
        } else {
            handle
        };
        self.known
            .lock()
            .get(&reported)
            .filter(|i| i.label == label)
            .map(|i| i.id.clone())
    }

    /// Whether we know who `key` is (so it can be found again).
    pub(crate) fn knows(&self, key: BackendKey) -> bool {
        self.known.lock().contains_key(&key.0)
    }

    /// Find `key`'s object again by its identity and remember its new handle. Exactly one
    /// secret key must match; otherwise the key is gone (`CKR_KEY_HANDLE_INVALID`).
    pub(crate) fn refind(&self, session: &Session, key: BackendKey) -> CkResult<ObjectHandle> {
        let Some(identity) = self.known.lock().get(&key.0).cloned() else {
            return Err(Rv::KEY_HANDLE_INVALID);
        };
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(identity.id),
            Attribute::Label(identity.label),
        ];
        let found = session
            .find_objects(&template)
            .map_err(|e| super::errors::rv_of(&e))?;
        let [handle] = found[..] else {
            return Err(Rv::KEY_HANDLE_INVALID);
        };
        if handle.handle() != key.0 {
            let mut aliases = self.aliases.write();
            if let Some(old) = aliases.current.insert(key.0, handle.handle()) {
                aliases.reported.remove(&old);
            }
            aliases.reported.insert(handle.handle(), key.0);
            self.any_alias.store(true, Ordering::Relaxed);
            log::info!("object handle {} is now {}", key.0, handle.handle());
        }
        Ok(handle)
    }
}
