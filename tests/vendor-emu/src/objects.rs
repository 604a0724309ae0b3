//! SoftHSM2's object-store deviations, as the emulator hides them, so the module sees a
//! library that follows the specification (a vendor library has neither deviation, and the
//! module only works around them for the library that reports `SoftHSM`):
//!
//! - while one session writes an object (file object store: rewrite and reload), calls of
//!   other sessions see valid handles as invalid or fail key generation: here every object
//!   write runs alone, every other call shares a process-wide lock;
//! - non-empty `CKA_START_DATE`/`CKA_END_DATE` of a private object cannot be read back
//!   (upstream softhsm/SoftHSMv2#655, #804): here writing one is refused with
//!   `CKR_ATTRIBUTE_TYPE_INVALID` and nothing is created or changed.

use pkcs11_sys::*;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static OBJECT_WRITES: RwLock<()> = RwLock::new(());

/// The functions that write objects (they run alone).
const WRITES: [&str; 8] = [
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_SetAttributeValue",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_UnwrapKey",
    "C_DeriveKey",
];

/// A held object-store lock.
pub enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// The lock a call of SoftHSM2's function `name` holds while it runs.
pub fn guard_for(name: &str) -> Guard {
    // The lock guards no data, so a poisoned lock is as good as a clean one.
    if WRITES.contains(&name) {
        Guard::Alone(OBJECT_WRITES.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Guard::Shared(OBJECT_WRITES.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Whether a template sets a non-empty date.
pub fn sets_a_date(template: &[CK_ATTRIBUTE]) -> bool {
    template
        .iter()
        .any(|a| (a.type_ == CKA_START_DATE || a.type_ == CKA_END_DATE) && a.ulValueLen > 0)
}

/// `CKA_PRIVATE` as a template sets it, if it does.
///
/// # Safety
/// Each attribute's `pValue` points to `ulValueLen` readable bytes (PKCS#11 template rule).
pub unsafe fn private_in(template: &[CK_ATTRIBUTE]) -> Option<bool> {
    let a = template.iter().find(|a| a.type_ == CKA_PRIVATE)?;
    if a.pValue.is_null() || a.ulValueLen != 1 {
        return None;
    }
    // SAFETY: non-NULL and one readable byte (caller contract).
    Some(unsafe { *(a.pValue as *const CK_BBOOL) } != 0)
}

/// The template a caller passed (`count` attributes at `ptr`; empty when NULL).
///
/// # Safety
/// `ptr` is NULL or points to `count` attributes valid for `'a`.
pub unsafe fn template<'a>(ptr: CK_ATTRIBUTE_PTR, count: CK_ULONG) -> &'a [CK_ATTRIBUTE] {
    if ptr.is_null() || count == 0 {
        &[]
    } else {
        // SAFETY: caller contract.
        unsafe { std::slice::from_raw_parts(ptr, count as usize) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(type_: CK_ATTRIBUTE_TYPE, value: &mut [u8]) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE {
            type_,
            pValue: value.as_mut_ptr() as CK_VOID_PTR,
            ulValueLen: value.len() as CK_ULONG,
        }
    }

    #[test]
    fn dates_and_privacy_are_read_from_templates() {
        let mut date = *b"20200102";
        let mut empty: [u8; 0] = [];
        let mut yes = [1u8];
        let mut no = [0u8];
        assert!(sets_a_date(&[attr(CKA_START_DATE, &mut date)]));
        assert!(sets_a_date(&[attr(CKA_END_DATE, &mut date)]));
        assert!(!sets_a_date(&[attr(CKA_START_DATE, &mut empty)]));
        assert!(!sets_a_date(&[attr(CKA_LABEL, &mut date)]));
        // SAFETY: every attribute points to a live local of its length.
        unsafe {
            assert_eq!(private_in(&[attr(CKA_PRIVATE, &mut yes)]), Some(true));
            assert_eq!(private_in(&[attr(CKA_PRIVATE, &mut no)]), Some(false));
            assert_eq!(private_in(&[attr(CKA_LABEL, &mut yes)]), None);
        }
    }

    #[test]
    fn writes_run_alone_and_the_rest_shares() {
        assert!(matches!(guard_for("C_GenerateKey"), Guard::Alone(_)));
        assert!(matches!(guard_for("C_Encrypt"), Guard::Shared(_)));
    }
}
