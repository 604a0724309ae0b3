//! The static function tables: `CK_FUNCTION_LIST` (version 2.40), `CK_FUNCTION_LIST_3_0`
//! (version 3.0), and the two `CK_INTERFACE`s that name them. Every slot is filled.

use super::{crypto, exports, general, message, object, refused, session, slot_token, unsupported};
use pkcs11_sys::{CK_CHAR, CK_FUNCTION_LIST, CK_FUNCTION_LIST_3_0, CK_INTERFACE, CK_VERSION};
use std::ffi::{c_void, CStr};
use std::ptr;

/// The interface name every PKCS#11 3.0 module answers to.
pub(crate) const INTERFACE_NAME: &CStr = c"PKCS 11";

/// Version of the 2.40 table.
pub(crate) const VERSION_2_40: CK_VERSION = CK_VERSION {
    major: 2,
    minor: 40,
};
/// Version of the 3.0 table.
pub(crate) const VERSION_3_0: CK_VERSION = CK_VERSION { major: 3, minor: 0 };

/// A function table literal: the 68 functions common to 2.40 and 3.0, plus `$extra` fields.
macro_rules! table {
    ($ty:ident, $version:expr $(, $extra:ident: $f:path)* $(,)?) => {
        $ty {
            version: $version,
            C_Initialize: Some(general::C_Initialize),
            C_Finalize: Some(general::C_Finalize),
            C_GetInfo: Some(general::C_GetInfo),
            C_GetFunctionList: Some(exports::C_GetFunctionList),
            C_GetSlotList: Some(slot_token::C_GetSlotList),
            C_GetSlotInfo: Some(slot_token::C_GetSlotInfo),
            C_GetTokenInfo: Some(slot_token::C_GetTokenInfo),
            C_GetMechanismList: Some(slot_token::C_GetMechanismList),
            C_GetMechanismInfo: Some(slot_token::C_GetMechanismInfo),
            C_InitToken: Some(unsupported::C_InitToken),
            C_InitPIN: Some(unsupported::C_InitPIN),
            C_SetPIN: Some(unsupported::C_SetPIN),
            C_OpenSession: Some(session::C_OpenSession),
            C_CloseSession: Some(session::C_CloseSession),
            C_CloseAllSessions: Some(session::C_CloseAllSessions),
            C_GetSessionInfo: Some(session::C_GetSessionInfo),
            C_GetOperationState: Some(session::C_GetOperationState),
            C_SetOperationState: Some(session::C_SetOperationState),
            C_Login: Some(session::C_Login),
            C_Logout: Some(session::C_Logout),
            C_CreateObject: Some(object::C_CreateObject),
            C_CopyObject: Some(object::C_CopyObject),
            C_DestroyObject: Some(object::C_DestroyObject),
            C_GetObjectSize: Some(object::C_GetObjectSize),
            C_GetAttributeValue: Some(object::C_GetAttributeValue),
            C_SetAttributeValue: Some(object::C_SetAttributeValue),
            C_FindObjectsInit: Some(object::C_FindObjectsInit),
            C_FindObjects: Some(object::C_FindObjects),
            C_FindObjectsFinal: Some(object::C_FindObjectsFinal),
            C_EncryptInit: Some(crypto::C_EncryptInit),
            C_Encrypt: Some(crypto::C_Encrypt),
            C_EncryptUpdate: Some(crypto::C_EncryptUpdate),
            C_EncryptFinal: Some(crypto::C_EncryptFinal),
            C_DecryptInit: Some(crypto::C_DecryptInit),
            C_Decrypt: Some(crypto::C_Decrypt),
            C_DecryptUpdate: Some(crypto::C_DecryptUpdate),
            C_DecryptFinal: Some(crypto::C_DecryptFinal),
            C_DigestInit: Some(unsupported::C_DigestInit),
            C_Digest: Some(unsupported::C_Digest),
            C_DigestUpdate: Some(unsupported::C_DigestUpdate),
            C_DigestKey: Some(refused::C_DigestKey),
            C_DigestFinal: Some(unsupported::C_DigestFinal),
            C_SignInit: Some(unsupported::C_SignInit),
            C_Sign: Some(unsupported::C_Sign),
            C_SignUpdate: Some(unsupported::C_SignUpdate),
            C_SignFinal: Some(unsupported::C_SignFinal),
            C_SignRecoverInit: Some(unsupported::C_SignRecoverInit),
            C_SignRecover: Some(unsupported::C_SignRecover),
            C_VerifyInit: Some(unsupported::C_VerifyInit),
            C_Verify: Some(unsupported::C_Verify),
            C_VerifyUpdate: Some(unsupported::C_VerifyUpdate),
            C_VerifyFinal: Some(unsupported::C_VerifyFinal),
            C_VerifyRecoverInit: Some(unsupported::C_VerifyRecoverInit),
            C_VerifyRecover: Some(unsupported::C_VerifyRecover),
            C_DigestEncryptUpdate: Some(unsupported::C_DigestEncryptUpdate),
            C_DecryptDigestUpdate: Some(unsupported::C_DecryptDigestUpdate),
            C_SignEncryptUpdate: Some(unsupported::C_SignEncryptUpdate),
            C_DecryptVerifyUpdate: Some(unsupported::C_DecryptVerifyUpdate),
            C_GenerateKey: Some(crypto::C_GenerateKey),
            C_GenerateKeyPair: Some(unsupported::C_GenerateKeyPair),
            C_WrapKey: Some(refused::C_WrapKey),
            C_UnwrapKey: Some(refused::C_UnwrapKey),
            C_DeriveKey: Some(refused::C_DeriveKey),
            C_SeedRandom: Some(crypto::C_SeedRandom),
            C_GenerateRandom: Some(crypto::C_GenerateRandom),
            C_GetFunctionStatus: Some(unsupported::C_GetFunctionStatus),
            C_CancelFunction: Some(unsupported::C_CancelFunction),
            C_WaitForSlotEvent: Some(unsupported::C_WaitForSlotEvent),
            $($extra: Some($f),)*
        }
    };
}

/// The PKCS#11 2.40 table handed out by `C_GetFunctionList` and the second interface.
/// Function pointers only, so the static is `Sync` without help.
pub(crate) static FUNCTION_LIST_2_40: CK_FUNCTION_LIST = table!(CK_FUNCTION_LIST, VERSION_2_40);

/// The PKCS#11 3.0 table: the 2.40 functions plus the interface, login-user, cancel and
/// message functions (message-based encryption and decryption implemented; login-user,
/// cancel and message-based signing unsupported).
pub(crate) static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = table!(
    CK_FUNCTION_LIST_3_0,
    VERSION_3_0,
    C_GetInterfaceList: exports::C_GetInterfaceList,
    C_GetInterface: exports::C_GetInterface,
    C_LoginUser: unsupported::C_LoginUser,
    C_SessionCancel: unsupported::C_SessionCancel,
    C_MessageEncryptInit: message::C_MessageEncryptInit,
    C_EncryptMessage: message::C_EncryptMessage,
    C_EncryptMessageBegin: message::C_EncryptMessageBegin,
    C_EncryptMessageNext: message::C_EncryptMessageNext,
    C_MessageEncryptFinal: message::C_MessageEncryptFinal,
    C_MessageDecryptInit: message::C_MessageDecryptInit,
    C_DecryptMessage: message::C_DecryptMessage,
    C_DecryptMessageBegin: message::C_DecryptMessageBegin,
    C_DecryptMessageNext: message::C_DecryptMessageNext,
    C_MessageDecryptFinal: message::C_MessageDecryptFinal,
    C_MessageSignInit: unsupported::C_MessageSignInit,
    C_SignMessage: unsupported::C_SignMessage,
    C_SignMessageBegin: unsupported::C_SignMessageBegin,
    C_SignMessageNext: unsupported::C_SignMessageNext,
    C_MessageSignFinal: unsupported::C_MessageSignFinal,
    C_MessageVerifyInit: unsupported::C_MessageVerifyInit,
    C_VerifyMessage: unsupported::C_VerifyMessage,
    C_VerifyMessageBegin: unsupported::C_VerifyMessageBegin,
    C_VerifyMessageNext: unsupported::C_VerifyMessageNext,
    C_MessageVerifyFinal: unsupported::C_MessageVerifyFinal,
);

/// The interface records, 3.0 first (the default), then 2.40, then the `XKI Status` vendor
/// interface.
pub(crate) struct Interfaces(pub(crate) [CK_INTERFACE; 3]);

// SAFETY: the raw pointers inside point to immutable statics (the name literals and the
// function tables), which live for the whole program and are never written by the module;
// sharing pointers to read-only data between threads is sound. PKCS#11 forbids callers to
// modify these structures.
unsafe impl Sync for Interfaces {}

/// `CK_INTERFACE` records returned by `C_GetInterfaceList` / `C_GetInterface`.
pub(crate) static INTERFACES: Interfaces = Interfaces([
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut().cast::<CK_CHAR>(),
        pFunctionList: ptr::addr_of!(FUNCTION_LIST_3_0).cast_mut().cast::<c_void>(),
        flags: 0,
    },
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut().cast::<CK_CHAR>(),
        pFunctionList: ptr::addr_of!(FUNCTION_LIST_2_40)
            .cast_mut()
            .cast::<c_void>(),
        flags: 0,
    },
    CK_INTERFACE {
        pInterfaceName: super::status::STATUS_INTERFACE_NAME
            .as_ptr()
            .cast_mut()
            .cast::<CK_CHAR>(),
        pFunctionList: ptr::addr_of!(super::status::STATUS_FUNCTION_LIST)
            .cast_mut()
            .cast::<c_void>(),
        flags: 0,
    },
]);

/// The version stored at the start of an interface's function table.
pub(crate) fn interface_version(interface: &CK_INTERFACE) -> CK_VERSION {
    // SAFETY: every pFunctionList in INTERFACES points to a static table whose first field
    // is its CK_VERSION (all three table types are repr(C) with `version` first).
    unsafe { *interface.pFunctionList.cast::<CK_VERSION>() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// Every function slot after the version must be non-NULL.
    fn all_slots_filled<T>(table: &T) -> usize {
        let words = (size_of::<T>() - size_of::<usize>()) / size_of::<usize>();
        let base = (table as *const T).cast::<usize>();
        for i in 1..=words {
            // SAFETY: T is a repr(C) struct of a version (padded to one word) followed by
            // `words` function pointers; reading them as usize is reading initialized words.
            let word = unsafe { base.add(i).read() };
            assert_ne!(word, 0, "slot {i} is NULL");
        }
        words
    }

    #[test]
    fn tables_are_complete_and_versioned() {
        assert_eq!(all_slots_filled(&FUNCTION_LIST_2_40), 68);
        assert_eq!(all_slots_filled(&FUNCTION_LIST_3_0), 92);
        assert_eq!(
            (
                FUNCTION_LIST_2_40.version.major,
                FUNCTION_LIST_2_40.version.minor
            ),
            (2, 40)
        );
        assert_eq!(
            (
                FUNCTION_LIST_3_0.version.major,
                FUNCTION_LIST_3_0.version.minor
            ),
            (3, 0)
        );
    }

    #[test]
    fn interfaces_point_at_the_tables() {
        let [first, second, _status] = &INTERFACES.0;
        assert_eq!(interface_version(first).major, 3);
        assert_eq!(interface_version(second).minor, 40);
        assert_eq!(first.flags, 0);
        // SAFETY: the name is a NUL-terminated static literal.
        let name = unsafe { std::ffi::CStr::from_ptr(first.pInterfaceName.cast()) };
        assert_eq!(name.to_bytes(), b"PKCS 11");
    }
}
