//! Functions that exist only to say no: every path that could move key material out of the HSM
//! or into the module. The core refuses and audits; the boundary only checks arguments.

use super::args;
use super::guard::guard;
use crate::api;
use crate::rv::Rv;
use pkcs11_sys::{
    CK_ATTRIBUTE_PTR, CK_BYTE_PTR, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE_PTR, CK_RV,
    CK_SESSION_HANDLE, CK_ULONG, CK_ULONG_PTR,
};

/// `C_WrapKey`: refused by the core (`CKR_KEY_UNEXTRACTABLE` for a valid key).
pub(crate) unsafe extern "C" fn C_WrapKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hWrappingKey: CK_OBJECT_HANDLE,
    hKey: CK_OBJECT_HANDLE,
    _pWrappedKey: CK_BYTE_PTR,
    pulWrappedKeyLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_WrapKey", || {
        if pulWrappedKeyLen.is_null() {
            return Err(Rv::ARGUMENTS_BAD);
        }
        // SAFETY: pMechanism points to a readable CK_MECHANISM (PKCS#11 contract).
        let mechanism = unsafe { args::mechanism(pMechanism) }?;
        api::wrap_key(hSession, &mechanism, hWrappingKey, hKey)?;
        // The api promises a refusal; "success" without wrapped bytes is a core bug.
        Err(Rv::GENERAL_ERROR)
    })
}

/// `C_UnwrapKey`: importing key material is refused by the core.
pub(crate) unsafe extern "C" fn C_UnwrapKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hUnwrappingKey: CK_OBJECT_HANDLE,
    pWrappedKey: CK_BYTE_PTR,
    ulWrappedKeyLen: CK_ULONG,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulAttributeCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_UnwrapKey", || {
        if phKey.is_null() {
            return Err(Rv::ARGUMENTS_BAD);
        }
        // SAFETY: pMechanism points to a readable CK_MECHANISM (PKCS#11 contract).
        let mechanism = unsafe { args::mechanism(pMechanism) }?;
        // SAFETY: a non-NULL pWrappedKey is readable for ulWrappedKeyLen bytes. Only checked:
        // wrapped key bytes are never handed to the core.
        let _wrapped = unsafe { args::bytes(pWrappedKey, ulWrappedKeyLen) }?;
        // SAFETY: pTemplate is readable for ulAttributeCount attributes.
        let template = unsafe { args::template(pTemplate, ulAttributeCount) }?;
        api::unwrap_key(hSession, &mechanism, hUnwrappingKey, &template)?;
        // The api promises a refusal; "success" without a key handle is a core bug.
        Err(Rv::GENERAL_ERROR)
    })
}

/// `C_DeriveKey`: refused by the core.
pub(crate) unsafe extern "C" fn C_DeriveKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hBaseKey: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulAttributeCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_DeriveKey", || {
        if phKey.is_null() {
            return Err(Rv::ARGUMENTS_BAD);
        }
        // SAFETY: pMechanism points to a readable CK_MECHANISM (PKCS#11 contract).
        let mechanism = unsafe { args::mechanism(pMechanism) }?;
        // SAFETY: pTemplate is readable for ulAttributeCount attributes.
        let template = unsafe { args::template(pTemplate, ulAttributeCount) }?;
        api::derive_key(hSession, &mechanism, hBaseKey, &template)?;
        // The api promises a refusal; "success" without a key handle is a core bug.
        Err(Rv::GENERAL_ERROR)
    })
}

/// `C_DigestKey`: refused by the core.
pub(crate) extern "C" fn C_DigestKey(hSession: CK_SESSION_HANDLE, hKey: CK_OBJECT_HANDLE) -> CK_RV {
    guard("C_DigestKey", || api::digest_key(hSession, hKey))
}
