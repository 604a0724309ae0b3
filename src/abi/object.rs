//! Object management: create/copy/destroy, attributes, search.

use super::attribute_answers::{outcome, worse, Outcome};
use super::guard::guard;
use super::{args, buffers::ulong, buffers::Out};
use crate::api;
use crate::rv::{CkResult, Rv};
use pkcs11_sys::{
    CK_ATTRIBUTE, CK_ATTRIBUTE_PTR, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE_PTR, CK_RV,
    CK_SESSION_HANDLE, CK_ULONG, CK_ULONG_PTR, CK_UNAVAILABLE_INFORMATION,
};
use std::ptr;

/// `C_CreateObject`.
pub(crate) unsafe extern "C" fn C_CreateObject(
    hSession: CK_SESSION_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phObject: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_CreateObject", || {
        // SAFETY: phObject, if non-NULL, is a caller-owned handle slot.
        let out = unsafe { Out::new(phObject) }?;
        // SAFETY: pTemplate is readable for ulCount attributes (PKCS#11 contract).
        let template = unsafe { args::template(pTemplate, ulCount) }?;
        out.write(api::create_object(hSession, &template)?);
        Ok(())
    })
}

/// `C_CopyObject`.
pub(crate) unsafe extern "C" fn C_CopyObject(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phNewObject: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_CopyObject", || {
        // SAFETY: phNewObject, if non-NULL, is a caller-owned handle slot.
        let out = unsafe { Out::new(phNewObject) }?;
        // SAFETY: pTemplate is readable for ulCount attributes (PKCS#11 contract).
        let template = unsafe { args::template(pTemplate, ulCount) }?;
        out.write(api::copy_object(hSession, hObject, &template)?);
        Ok(())
    })
}

/// `C_DestroyObject`.
pub(crate) extern "C" fn C_DestroyObject(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_DestroyObject", || api::destroy_object(hSession, hObject))
}

/// `C_GetObjectSize`.
pub(crate) unsafe extern "C" fn C_GetObjectSize(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pulSize: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetObjectSize", || {
        // SAFETY: pulSize, if non-NULL, is a caller-owned CK_ULONG.
        let out = unsafe { Out::new(pulSize) }?;
        out.write(api::get_object_size(hSession, hObject)?);
        Ok(())
    })
}

/// `C_GetAttributeValue`, per PKCS#11 2.40 section 5.7: every attribute is processed, and the
/// call fails with the most important failure among them (see `attribute_answers`).
pub(crate) unsafe extern "C" fn C_GetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guard("C_GetAttributeValue", || {
        // SAFETY: pTemplate is readable and writable for ulCount attributes, each pValue
        // writable for ulValueLen bytes when non-NULL (PKCS#11 contract).
        let raw = unsafe { args::array(pTemplate.cast_const(), ulCount) }?;
        let answers = api::get_attribute_value(hSession, hObject, &args::attribute_types(&raw))?;
        if answers.len() != raw.len() {
            return Err(Rv::GENERAL_ERROR);
        }
        let mut failure = None;
        for (i, (attribute, answer)) in raw.iter().zip(&answers).enumerate() {
            let buffer = (!attribute.pValue.is_null())
                .then(|| usize::try_from(attribute.ulValueLen).unwrap_or(usize::MAX));
            let len = match outcome(answer, buffer) {
                Outcome::Copy(value) => {
                    // SAFETY: pValue is non-NULL and writable for ulValueLen >= value.len()
                    // bytes; `value` is Rust-owned, so the ranges do not overlap.
                    unsafe {
                        ptr::copy_nonoverlapping(
                            value.as_ptr(),
                            attribute.pValue.cast::<u8>(),
                            value.len(),
                        )
                    };
                    ulong(value.len())?
                }
                Outcome::Length(n) => ulong(n)?,
                Outcome::Unavailable(rv) => {
                    failure = worse(failure, rv);
                    CK_UNAVAILABLE_INFORMATION
                }
            };
            // SAFETY: element `i < ulCount` of the caller's writable template; only the
            // ulValueLen field is written, through a raw place (no reference is formed).
            unsafe { set_value_len(pTemplate.add(i), len) };
        }
        failure.map_or(Ok(()), Err)
    })
}

/// Write `ulValueLen` of one template entry.
///
/// # Safety
/// `entry` must point to a writable `CK_ATTRIBUTE` (alignment not required).
unsafe fn set_value_len(entry: *mut CK_ATTRIBUTE, len: CK_ULONG) {
    // SAFETY: writable (caller contract); addr_of_mut! on a raw place forms no reference.
    unsafe { ptr::addr_of_mut!((*entry).ulValueLen).write_unaligned(len) }
}

/// `C_SetAttributeValue`.
pub(crate) unsafe extern "C" fn C_SetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guard("C_SetAttributeValue", || {
        // SAFETY: pTemplate is readable for ulCount attributes (PKCS#11 contract).
        let template = unsafe { args::template(pTemplate, ulCount) }?;
        api::set_attribute_value(hSession, hObject, &template)
    })
}

/// `C_FindObjectsInit`.
pub(crate) unsafe extern "C" fn C_FindObjectsInit(
    hSession: CK_SESSION_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guard("C_FindObjectsInit", || {
        // SAFETY: pTemplate is readable for ulCount attributes (PKCS#11 contract).
        let template = unsafe { args::template(pTemplate, ulCount) }?;
        api::find_objects_init(hSession, &template)
    })
}

/// `C_FindObjects`: up to `ulMaxObjectCount` handles into `phObject`.
pub(crate) unsafe extern "C" fn C_FindObjects(
    hSession: CK_SESSION_HANDLE,
    phObject: CK_OBJECT_HANDLE_PTR,
    ulMaxObjectCount: CK_ULONG,
    pulObjectCount: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_FindObjects", || {
        // SAFETY: pulObjectCount, if non-NULL, is a caller-owned CK_ULONG.
        let count = unsafe { Out::new(pulObjectCount) }?;
        if phObject.is_null() {
            return Err(Rv::ARGUMENTS_BAD);
        }
        let max = usize::try_from(ulMaxObjectCount).unwrap_or(usize::MAX);
        let handles = api::find_objects(hSession, max)?;
        // SAFETY: phObject is non-NULL and writable for ulMaxObjectCount handles.
        unsafe { write_handles(phObject, max, &handles) }?;
        count.write(ulong(handles.len())?);
        Ok(())
    })
}

/// Copy found handles out; more than the caller allowed is a core bug (`CKR_GENERAL_ERROR`).
///
/// # Safety
/// `dst` must be writable for `max` handles.
unsafe fn write_handles(
    dst: CK_OBJECT_HANDLE_PTR,
    max: usize,
    handles: &[CK_OBJECT_HANDLE],
) -> CkResult<()> {
    if handles.len() > max {
        return Err(Rv::GENERAL_ERROR);
    }
    for (i, handle) in handles.iter().enumerate() {
        // SAFETY: i < handles.len() <= max; writable (caller contract).
        unsafe { dst.add(i).write_unaligned(*handle) };
    }
    Ok(())
}

/// `C_FindObjectsFinal`.
pub(crate) extern "C" fn C_FindObjectsFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_FindObjectsFinal", || api::find_objects_final(hSession))
}
