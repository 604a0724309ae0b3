//! Finding keys by label or ID with the fewest library calls: one `C_FindObjects` with the
//! label/ID in the template (the token matches them), then ONE `C_GetAttributeValue` per
//! matching key into buffers sized in advance, reading every fixed-size attribute (class,
//! type, length, all the flags, which can change at any time) but no byte string the module
//! already knows: the label and ID the token just matched, the ID last read for that handle
//! under that label, the dates unless the caller's template asks for them.
//!
//! Why: a consumer that looks its key up before every operation made the module list every
//! secret key and read each one with cryptoki's `get_attributes` (a length query and a value
//! read for the fixed-size attributes, the same for the variable-size ones: 4 calls per key).
//! SoftHSM2 re-checks its object file on every `C_GetAttributeValue`, so those calls, not the
//! module's own code, doubled the cost of a find; and it decrypts each byte-string attribute
//! (ID, label, dates) of a private object on every read. Only the ID is taken from an
//! earlier read (handle + label unchanged); existence, label and flags come from the token on
//! every find, so keys created, renamed, disabled or destroyed elsewhere are seen by the next
//! find.
//!
//! The one-call read falls back to the cryptoki path (`attributes.rs`, `read_key_info`) on any
//! answer other than `CKR_OK` except a vanished handle: a label or ID longer than its buffer
//! (`CKR_BUFFER_TOO_SMALL`), an attribute the library does not know, the date quirk.

use super::calls::Retry;
use super::{errors, Pkcs11Backend};
use crate::backend::{BackendKey, KeyInfo, KeyQuery};
use crate::rv::{CkResult, Rv};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use parking_lot::RwLock;
use pkcs11_sys::*;
use std::collections::HashMap;
use std::path::Path;

type GetAttributeValueFn =
    unsafe extern "C" fn(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG) -> CK_RV;

/// The library's own `C_GetAttributeValue`.
#[derive(Clone, Copy)]
pub(crate) struct AttributeCalls {
    get_attribute_value: GetAttributeValueFn,
}

impl std::fmt::Debug for AttributeCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttributeCalls")
    }
}

/// Room for a `CKA_ID` or `CKA_LABEL` read without knowing its length (longer: fallback).
const NAME_ROOM: usize = 128;

/// The fixed-size attributes read in the one call, in `KeyInfo` order after class, type and
/// length: each a `CK_BBOOL`.
const FLAGS: [CK_ATTRIBUTE_TYPE; 15] = [
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_LOCAL,
    CKA_MODIFIABLE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_SIGN,
    CKA_VERIFY,
    CKA_DERIVE,
];

impl AttributeCalls {
    /// `C_GetAttributeValue` of the library at `path`, which must already be loaded (by
    /// cryptoki). `None` (the caller keeps cryptoki's reads) if anything is missing.
    pub(crate) fn of_loaded(path: &Path) -> Option<AttributeCalls> {
        let table = super::raw::loaded_function_list(path)?;
        Some(AttributeCalls {
            get_attribute_value: table.C_GetAttributeValue?,
        })
    }

    /// The public attributes of `handle` in one call. `label`/`id`: values already known
    /// (the label the token just matched; the ID last read for this handle under that label),
    /// which are then not read; `dates`: read the dates too. Byte-string attributes are the
    /// costly ones (SoftHSM2 decrypts them on each read of a private object); the flags, which
    /// can change at any time, are always read. `Ok(None)`: the one-call read did not work
    /// out (see the file docs), read the slow way. `Err`: the handle is gone.
    fn read_once(
        &self,
        session: &Session,
        handle: ObjectHandle,
        label: Option<&[u8]>,
        id: Option<Vec<u8>>,
        dates: bool,
    ) -> CkResult<Option<KeyInfo>> {
        let mut class: CK_ULONG = 0;
        let mut key_type: CK_ULONG = 0;
        let mut value_len: CK_ULONG = 0;
        let mut flags = [0 as CK_BBOOL; FLAGS.len()];
        let mut id_buf = [0u8; NAME_ROOM];
        let mut label_buf = [0u8; NAME_ROOM];
        let mut start = [0u8; 8];
        let mut end = [0u8; 8];
        let ulong = std::mem::size_of::<CK_ULONG>();
        let attr = |type_, p: *mut u8, len: usize| CK_ATTRIBUTE {
            type_,
            pValue: p.cast(),
            ulValueLen: len as CK_ULONG,
        };
        let mut template = Vec::with_capacity(FLAGS.len() + 7);
        template.push(attr(CKA_CLASS, (&mut class as *mut CK_ULONG).cast(), ulong));
        template.push(attr(
            CKA_KEY_TYPE,
            (&mut key_type as *mut CK_ULONG).cast(),
            ulong,
        ));
        template.push(attr(
            CKA_VALUE_LEN,
            (&mut value_len as *mut CK_ULONG).cast(),
            ulong,
        ));
        for (t, f) in FLAGS.iter().zip(flags.iter_mut()) {
            template.push(attr(*t, f as *mut CK_BBOOL, 1));
        }
        // Optional byte strings after the fixed part, at these indexes when asked for.
        let mut next = template.len();
        let mut slot = |wanted: bool| {
            wanted.then(|| {
                next += 1;
                next - 1
            })
        };
        let id_at = slot(id.is_none());
        let label_at = slot(label.is_none());
        let start_at = slot(dates);
        let end_at = slot(dates);
        if id_at.is_some() {
            template.push(attr(CKA_ID, id_buf.as_mut_ptr(), id_buf.len()));
        }
        if label_at.is_some() {
            template.push(attr(CKA_LABEL, label_buf.as_mut_ptr(), label_buf.len()));
        }
        if dates {
            template.push(attr(CKA_START_DATE, start.as_mut_ptr(), start.len()));
            template.push(attr(CKA_END_DATE, end.as_mut_ptr(), end.len()));
        }
        // SAFETY: every `pValue` points to a live local buffer of exactly `ulValueLen` bytes
        // (a CK_ULONG, a CK_BBOOL, or a byte array) that outlives the call; `template` is a
        // valid array of `template.len()` CK_ATTRIBUTEs. The library writes at most
        // `ulValueLen` bytes into each and updates `ulValueLen`.
        let rv = unsafe {
            (self.get_attribute_value)(
                session.handle(),
                handle.handle(),
                template.as_mut_ptr(),
                template.len() as CK_ULONG,
            )
        };
        match rv {
            CKR_OK => {}
            CKR_OBJECT_HANDLE_INVALID => return Err(Rv::OBJECT_HANDLE_INVALID),
            CKR_KEY_HANDLE_INVALID => return Err(Rv::KEY_HANDLE_INVALID),
            _ => return Ok(None),
        }
        // Lengths as the library reported them; CK_UNAVAILABLE_INFORMATION = not reported.
        let lens: Vec<Option<usize>> = template
            .iter()
            .map(|a| (a.ulValueLen != CK_UNAVAILABLE_INFORMATION).then_some(a.ulValueLen as usize))
            .collect();
        let full = |i: usize, n: usize| lens[i] == Some(n);
        if !full(0, ulong) || class != CKO_SECRET_KEY {
            return Err(Rv::KEY_HANDLE_INVALID);
        }
        let flag = |i: usize| full(3 + i, 1).then(|| flags[i] != 0);
        let bytes = |at: Option<usize>, buf: &[u8]| -> Vec<u8> {
            at.and_then(|i| lens[i])
                .map(|n| buf[..n.min(buf.len())].to_vec())
                .unwrap_or_default()
        };
        let date = |at: Option<usize>, buf: &[u8; 8]| -> Vec<u8> {
            // An empty date, or the 8 NUL bytes some libraries write for one, is no date.
            match at {
                Some(i) if full(i, 8) && buf.iter().any(|b| *b != 0) => buf.to_vec(),
                _ => Vec::new(),
            }
        };
        Ok(Some(KeyInfo {
            handle: BackendKey(handle.handle()),
            id: id.unwrap_or_else(|| bytes(id_at, &id_buf)),
            label: label.map_or_else(|| bytes(label_at, &label_buf), <[u8]>::to_vec),
            key_type: if full(1, ulong) { key_type } else { u64::MAX },
            value_len: if full(2, ulong) { value_len } else { 0 },
            token: flag(0).unwrap_or(false),
            private: flag(1).unwrap_or(false),
            sensitive: flag(2).unwrap_or(false),
            extractable: flag(3).unwrap_or(false),
            always_sensitive: flag(4),
            never_extractable: flag(5),
            local: flag(6),
            modifiable: flag(7).unwrap_or(false),
            encrypt: flag(8).unwrap_or(false),
            decrypt: flag(9).unwrap_or(false),
            wrap: flag(10).unwrap_or(false),
            unwrap: flag(11).unwrap_or(false),
            sign: flag(12).unwrap_or(false),
            verify: flag(13).unwrap_or(false),
            derive: flag(14).unwrap_or(false),
            start_date: date(start_at, &start),
            end_date: date(end_at, &end),
        }))
    }
}

/// Keys read before whose admissibility facts are final (sensitive, non-extractable: the
/// specification lets those attributes change only towards that state), by handle.
#[derive(Default)]
pub(crate) struct Settled {
    keys: RwLock<HashMap<u64, KeyInfo>>,
}

impl Settled {
    /// The key last read at `handle`, if its facts are final and it was read under `label`,
    /// reported with that label.
    fn get(&self, handle: u64, label: &[u8]) -> Option<KeyInfo> {
        self.keys
            .read()
            .get(&handle)
            .filter(|k| k.label == label)
            .cloned()
    }

    /// Remember `info` if its facts are final; forget the handle otherwise.
    fn note(&self, handle: u64, info: &KeyInfo) {
        let final_ = info.sensitive
            && !info.extractable
            && info.always_sensitive.is_some()
            && info.never_extractable.is_some();
        let mut keys = self.keys.write();
        if final_ {
            if keys.get(&handle) != Some(info) {
                keys.insert(handle, info.clone());
            }
        } else {
            keys.remove(&handle);
        }
    }

    /// A destroyed key.
    pub(crate) fn forget(&self, handle: u64) {
        self.keys.write().remove(&handle);
    }
}

impl Pkcs11Backend {
    /// [`crate::backend::Backend::find_secret_keys`]: the token matches the label and ID.
    pub(super) fn find_keys(&self, query: &KeyQuery) -> CkResult<Vec<KeyInfo>> {
        let _guard = self.reading()?;
        let mut template = vec![Attribute::Class(ObjectClass::SECRET_KEY)];
        if let Some(label) = &query.label {
            template.push(Attribute::Label(label.clone()));
        }
        if let Some(id) = &query.id {
            template.push(Attribute::Id(id.clone()));
        }
        self.call(Retry::Always, |s| {
            let handles = s.find_objects(&template).map_err(|e| errors::rv_of(&e))?;
            let mut keys = Vec::with_capacity(handles.len());
            for handle in handles {
                let label = query.label.as_deref();
                // Nothing that can change is asked for and the token just matched the label:
                // a key read before needs no read at all.
                if let (false, false, Some(l)) = (query.mutable, query.dates, label) {
                    if let Some(info) = self.keys.settled.get(handle.handle(), l) {
                        if query.matches(&info) {
                            keys.push(self.keys.record(info));
                        }
                        continue;
                    }
                }
                let known_id = query
                    .id
                    .clone()
                    .or_else(|| label.and_then(|l| self.keys.known_id(handle.handle(), l)));
                let once = match &self.attribute_calls {
                    Some(calls) => calls.read_once(s, handle, label, known_id, query.dates),
                    None => Ok(None),
                };
                let info = match once {
                    Ok(Some(info)) => Ok(self.keys.record(info)),
                    Ok(None) => self.read_key(s, handle),
                    Err(rv) => Err(rv),
                };
                if let Ok(info) = &info {
                    if !query.dates {
                        self.keys.settled.note(handle.handle(), info);
                    }
                }
                match info {
                    // A key must match the query as read (a token that matched loosely, or a
                    // rename between the find and the read).
                    Ok(info) if query.matches(&info) => keys.push(info),
                    Ok(_) => {}
                    // Destroyed between FindObjects and now: it is simply not there any more.
                    Err(Rv::OBJECT_HANDLE_INVALID | Rv::KEY_HANDLE_INVALID) => {}
                    Err(rv) => return Err(rv),
                }
            }
            Ok(keys)
        })
    }
}
