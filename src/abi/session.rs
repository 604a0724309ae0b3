//! Session management: open/close, session info, login/logout, operation state.

use super::guard::guard;
use super::{
    args,
    buffers::{Out, OutList},
    info,
};
use crate::api;
use crate::rv::Rv;
use pkcs11_sys::{
    CK_BYTE_PTR, CK_FLAGS, CK_NOTIFY, CK_OBJECT_HANDLE, CK_RV, CK_SESSION_HANDLE,
    CK_SESSION_HANDLE_PTR, CK_SESSION_INFO_PTR, CK_SLOT_ID, CK_ULONG, CK_ULONG_PTR, CK_USER_TYPE,
    CK_UTF8CHAR_PTR, CK_VOID_PTR,
};

/// `C_OpenSession`: `flags` go to the core; `pApplication`/`Notify` are not used (the module
/// never calls back).
pub(crate) unsafe extern "C" fn C_OpenSession(
    slotID: CK_SLOT_ID,
    flags: CK_FLAGS,
    _pApplication: CK_VOID_PTR,
    _Notify: CK_NOTIFY,
    phSession: CK_SESSION_HANDLE_PTR,
) -> CK_RV {
    guard("C_OpenSession", || {
        // SAFETY: a non-NULL phSession points to a caller-owned CK_SESSION_HANDLE. Checked
        // before opening so a session is never opened without a place to report it.
        let out = unsafe { Out::new(phSession) }?;
        out.write(api::open_session(slotID, flags)?);
        Ok(())
    })
}

/// `C_CloseSession`.
pub(crate) extern "C" fn C_CloseSession(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_CloseSession", || api::close_session(hSession))
}

/// `C_CloseAllSessions`.
pub(crate) extern "C" fn C_CloseAllSessions(slotID: CK_SLOT_ID) -> CK_RV {
    guard("C_CloseAllSessions", || api::close_all_sessions(slotID))
}

/// `C_GetSessionInfo`.
pub(crate) unsafe extern "C" fn C_GetSessionInfo(
    hSession: CK_SESSION_HANDLE,
    pInfo: CK_SESSION_INFO_PTR,
) -> CK_RV {
    guard("C_GetSessionInfo", || {
        // SAFETY: a non-NULL pInfo points to a caller-owned CK_SESSION_INFO.
        let out = unsafe { Out::new(pInfo) }?;
        out.write(info::ck_session_info(&api::get_session_info(hSession)?));
        Ok(())
    })
}

/// `C_Login`: the PIN is borrowed from caller memory (never copied, never logged). NULL with
/// length 0 (protected authentication path) is passed as an empty PIN.
pub(crate) unsafe extern "C" fn C_Login(
    hSession: CK_SESSION_HANDLE,
    userType: CK_USER_TYPE,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
) -> CK_RV {
    guard("C_Login", || {
        // SAFETY: a non-NULL pPin is readable for ulPinLen bytes (PKCS#11 contract).
        let pin = unsafe { args::bytes(pPin, ulPinLen) }?;
        api::login(hSession, userType, pin)
    })
}

/// `C_Logout`.
pub(crate) extern "C" fn C_Logout(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_Logout", || api::logout(hSession))
}

/// `C_GetOperationState`: the core refuses (`CKR_STATE_UNSAVEABLE`); the module never
/// exports operation state. The count pointer is still checked like any two-call output.
pub(crate) unsafe extern "C" fn C_GetOperationState(
    hSession: CK_SESSION_HANDLE,
    pOperationState: CK_BYTE_PTR,
    pulOperationStateLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetOperationState", || {
        // SAFETY: two-call contract on pOperationState/pulOperationStateLen.
        let _out = unsafe { OutList::new(pOperationState, pulOperationStateLen) }?;
        api::get_operation_state(hSession)?;
        // The api promises a refusal; "success" with no state to hand out is a core bug.
        Err(Rv::GENERAL_ERROR)
    })
}

/// `C_SetOperationState`: the core refuses (`CKR_SAVED_STATE_INVALID`).
pub(crate) unsafe extern "C" fn C_SetOperationState(
    hSession: CK_SESSION_HANDLE,
    pOperationState: CK_BYTE_PTR,
    ulOperationStateLen: CK_ULONG,
    _hEncryptionKey: CK_OBJECT_HANDLE,
    _hAuthenticationKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_SetOperationState", || {
        // SAFETY: a non-NULL pOperationState is readable for ulOperationStateLen bytes.
        let _state = unsafe { args::bytes(pOperationState, ulOperationStateLen) }?;
        api::set_operation_state(hSession)
    })
}
