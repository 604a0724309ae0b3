//! Entry points the module does not implement (token/PIN administration, digest, sign/verify,
//! key pairs, dual-function updates, slot events, the PKCS#11 3.0 message-based signing,
//! `C_LoginUser`, `C_SessionCancel`). They answer `CKR_CRYPTOKI_NOT_INITIALIZED` before
//! `C_Initialize` and `CKR_FUNCTION_NOT_SUPPORTED` after, both decided by
//! [`api::not_supported`]. Their arguments are never read.

use super::guard::guard;
use crate::api;
use crate::rv::{CkResult, Rv};
use pkcs11_sys::*;

/// Define `extern "C"` functions (argument types only) that forward to `api::not_supported`.
macro_rules! not_supported {
    ($($name:ident($($ty:ty),* $(,)?);)*) => {
        $(
            #[doc = concat!("`", stringify!($name), "`: not supported.")]
            pub(crate) extern "C" fn $name($(_: $ty),*) -> CK_RV {
                guard(stringify!($name), || api::not_supported(stringify!($name)))
            }
        )*
    };
}

not_supported! {
    C_InitToken(CK_SLOT_ID, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR);
    C_InitPIN(CK_SESSION_HANDLE, CK_UTF8CHAR_PTR, CK_ULONG);
    C_SetPIN(CK_SESSION_HANDLE, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR, CK_ULONG);
    C_DigestInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR);
    C_Digest(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DigestUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);
    C_DigestFinal(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);
    C_SignInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_Sign(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_SignUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);
    C_SignFinal(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);
    C_SignRecoverInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_SignRecover(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_VerifyInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_Verify(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
    C_VerifyUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);
    C_VerifyFinal(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);
    C_VerifyRecoverInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_VerifyRecover(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DigestEncryptUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DecryptDigestUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_SignEncryptUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DecryptVerifyUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_GenerateKeyPair(
        CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_ATTRIBUTE_PTR, CK_ULONG, CK_ATTRIBUTE_PTR,
        CK_ULONG, CK_OBJECT_HANDLE_PTR, CK_OBJECT_HANDLE_PTR
    );
    C_WaitForSlotEvent(CK_FLAGS, CK_SLOT_ID_PTR, CK_VOID_PTR);
    C_LoginUser(
        CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR, CK_ULONG
    );
    C_SessionCancel(CK_SESSION_HANDLE, CK_FLAGS);
    C_MessageSignInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_SignMessage(
        CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR
    );
    C_SignMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG);
    C_SignMessageNext(
        CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR
    );
    C_MessageSignFinal(CK_SESSION_HANDLE);
    C_MessageVerifyInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_VerifyMessage(
        CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG
    );
    C_VerifyMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG);
    C_VerifyMessageNext(
        CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG
    );
    C_MessageVerifyFinal(CK_SESSION_HANDLE);
}

/// The legacy parallel-function calls answer `CKR_FUNCTION_NOT_PARALLEL` once initialized.
fn not_parallel(function: &'static str) -> CkResult<()> {
    match api::not_supported(function) {
        Ok(()) | Err(Rv::FUNCTION_NOT_SUPPORTED) => Err(Rv(CKR_FUNCTION_NOT_PARALLEL)),
        Err(rv) => Err(rv),
    }
}

/// `C_GetFunctionStatus` (legacy): `CKR_FUNCTION_NOT_PARALLEL`.
pub(crate) extern "C" fn C_GetFunctionStatus(_: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_GetFunctionStatus", || {
        not_parallel("C_GetFunctionStatus")
    })
}

/// `C_CancelFunction` (legacy): `CKR_FUNCTION_NOT_PARALLEL`.
pub(crate) extern "C" fn C_CancelFunction(_: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_CancelFunction", || not_parallel("C_CancelFunction"))
}
