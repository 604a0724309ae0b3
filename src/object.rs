//! Stable virtual object handles.
//!
//! Callers never see a backend handle. Each visible key gets a virtual handle the first time
//! the module sees it, keyed by its identity in its slot (`CKA_ID`, or `CKA_LABEL` when the ID
//! is empty). The same key keeps the same handle for the life of the module, and a handle is
//! never reused for another key.

use crate::audit::names::{self, NameId};
use crate::backend::{BackendKey, KeyInfo};
use crate::rv::{CkResult, Rv};
use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::sync::Arc;

/// What a virtual handle stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Index of the virtual slot the key belongs to.
    pub slot: usize,
    /// The backend's reference to the key.
    pub key: BackendKey,
    /// The key's label, for audit records (refreshed whenever the module reads the key).
    /// Shared, so that looking an entry up on every operation copies no bytes.
    pub label: Arc<[u8]>,
    /// The label's number in the audit name table (`None` once that table is full), given
    /// when the label is learnt, so that a key use's audit record carries a number.
    pub audit_name: Option<NameId>,
}

#[derive(Default)]
struct Tables {
    by_handle: FxHashMap<u64, ObjectEntry>,
    by_identity: HashMap<(usize, Vec<u8>), u64>,
    next: u64,
}

/// The handle table. Lookups take a read lock only; nothing here calls a backend.
#[derive(Default)]
pub struct ObjectTable {
    tables: RwLock<Tables>,
}

impl ObjectTable {
    /// The handle for `key` in `slot`, allocating one the first time the key is seen.
    pub fn handle_for(&self, slot: usize, key: &KeyInfo) -> u64 {
        let ident = (slot, key.identity());
        let known = self.tables.read().by_identity.get(&ident).copied();
        if let Some(h) = known {
            self.refresh(h, key);
            return h;
        }
        let mut t = self.tables.write();
        if let Some(h) = t.by_identity.get(&ident) {
            return *h;
        }
        t.next += 1;
        let handle = t.next;
        t.by_identity.insert(ident, handle);
        t.by_handle.insert(
            handle,
            ObjectEntry {
                slot,
                key: key.handle,
                label: Arc::from(&key.label[..]),
                audit_name: names::intern(&key.label),
            },
        );
        handle
    }

    /// Whether `key` already has a handle in `slot` that stands for this very backend key
    /// (same identity, same backend reference): nothing about it is new to the module.
    pub fn knows(&self, slot: usize, key: &KeyInfo) -> bool {
        let t = self.tables.read();
        t.by_identity
            .get(&(slot, key.identity()))
            .and_then(|h| t.by_handle.get(h))
            .is_some_and(|e| e.key == key.handle)
    }

    /// Keep the entry in step with what the backend just reported (label, backend handle,
    /// identity). When the key's identity changed (an ID-less key renamed, or its CKA_ID
    /// changed on the HSM), the handle follows the key to its new identity and gives up the
    /// old one, so a different key that later takes the old identity gets its own handle
    /// instead of this one.
    pub fn refresh(&self, handle: u64, key: &KeyInfo) {
        let ident = key.identity();
        let stale = {
            let t = self.tables.read();
            t.by_handle.get(&handle).is_some_and(|e| {
                e.key != key.handle
                    || e.label[..] != key.label[..]
                    || t.by_identity.get(&(e.slot, ident.clone())) != Some(&handle)
            })
        };
        if stale {
            let mut t = self.tables.write();
            let Some(e) = t.by_handle.get_mut(&handle) else {
                return;
            };
            e.key = key.handle;
            e.label = Arc::from(&key.label[..]);
            e.audit_name = names::intern(&key.label);
            let slot_ident = (e.slot, ident);
            match t.by_identity.get(&slot_ident) {
                Some(h) if *h == handle => {}
                // Another handle already stands for that identity: leave both as they are.
                Some(_) => {}
                None => {
                    t.by_identity.retain(|_, h| *h != handle);
                    t.by_identity.insert(slot_ident, handle);
                }
            }
        }
    }

    /// Run `f` on a handle's entry without copying it (no reference count taken: this runs
    /// at every `C_*Init`); `CKR_OBJECT_HANDLE_INVALID` when unknown.
    pub fn with<R>(&self, handle: u64, f: impl FnOnce(&ObjectEntry) -> R) -> CkResult<R> {
        let tables = self.tables.read();
        let entry = tables
            .by_handle
            .get(&handle)
            .ok_or(Rv::OBJECT_HANDLE_INVALID)?;
        Ok(f(entry))
    }

    /// Forget a destroyed key. Its handle is never handed out again.
    pub fn remove(&self, handle: u64) {
        let mut t = self.tables.write();
        if t.by_handle.remove(&handle).is_some() {
            t.by_identity.retain(|_, h| *h != handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &[u8], label: &[u8], handle: u64) -> KeyInfo {
        KeyInfo::generated_aes(BackendKey(handle), id.to_vec(), label.to_vec(), 32)
    }

    #[test]
    fn same_identity_same_handle_and_slots_are_separate() {
        let t = ObjectTable::default();
        let a = t.handle_for(0, &key(b"k1", b"one", 7));
        assert_eq!(a, t.handle_for(0, &key(b"k1", b"renamed", 9)));
        assert_eq!(t.with(a, |e| e.key).unwrap(), BackendKey(9));
        assert_eq!(&t.with(a, |e| e.label.clone()).unwrap()[..], b"renamed");
        let b = t.handle_for(1, &key(b"k1", b"one", 7));
        assert_ne!(a, b);
        let c = t.handle_for(0, &key(b"", b"k1", 3));
        assert_ne!(
            a, c,
            "an empty-ID key named like another key's ID is a different key"
        );
    }

    #[test]
    fn removed_handles_are_never_reused() {
        let t = ObjectTable::default();
        let a = t.handle_for(0, &key(b"k1", b"", 1));
        t.remove(a);
        assert_eq!(t.with(a, |_| ()), Err(Rv::OBJECT_HANDLE_INVALID));
        let b = t.handle_for(0, &key(b"k1", b"", 1));
        assert_ne!(a, b);
    }
}
