//! Slot and token management: slot list, slot/token info, mechanisms.

use super::guard::guard;
use super::{
    buffers::{Out, OutList},
    info,
};
use crate::api;
use pkcs11_sys::{
    CK_BBOOL, CK_FALSE, CK_MECHANISM_INFO_PTR, CK_MECHANISM_TYPE, CK_MECHANISM_TYPE_PTR, CK_RV,
    CK_SLOT_ID, CK_SLOT_ID_PTR, CK_SLOT_INFO_PTR, CK_TOKEN_INFO_PTR, CK_ULONG_PTR,
};

/// `C_GetSlotList` (two-call convention on `pSlotList`).
pub(crate) unsafe extern "C" fn C_GetSlotList(
    tokenPresent: CK_BBOOL,
    pSlotList: CK_SLOT_ID_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetSlotList", || {
        // SAFETY: pulCount/pSlotList follow the PKCS#11 two-call contract.
        let out = unsafe { OutList::new(pSlotList, pulCount) }?;
        out.answer(&api::get_slot_list(tokenPresent != CK_FALSE)?)
    })
}

/// `C_GetSlotInfo`.
pub(crate) unsafe extern "C" fn C_GetSlotInfo(
    slotID: CK_SLOT_ID,
    pInfo: CK_SLOT_INFO_PTR,
) -> CK_RV {
    guard("C_GetSlotInfo", || {
        // SAFETY: a non-NULL pInfo points to a caller-owned CK_SLOT_INFO.
        let out = unsafe { Out::new(pInfo) }?;
        out.write(info::ck_slot_info(&api::get_slot_info(slotID)?));
        Ok(())
    })
}

/// `C_GetTokenInfo`.
pub(crate) unsafe extern "C" fn C_GetTokenInfo(
    slotID: CK_SLOT_ID,
    pInfo: CK_TOKEN_INFO_PTR,
) -> CK_RV {
    guard("C_GetTokenInfo", || {
        // SAFETY: a non-NULL pInfo points to a caller-owned CK_TOKEN_INFO.
        let out = unsafe { Out::new(pInfo) }?;
        out.write(info::ck_token_info(&api::get_token_info(slotID)?));
        Ok(())
    })
}

/// `C_GetMechanismList` (two-call convention on `pMechanismList`).
pub(crate) unsafe extern "C" fn C_GetMechanismList(
    slotID: CK_SLOT_ID,
    pMechanismList: CK_MECHANISM_TYPE_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetMechanismList", || {
        // SAFETY: pulCount/pMechanismList follow the PKCS#11 two-call contract.
        let out = unsafe { OutList::new(pMechanismList, pulCount) }?;
        out.answer(&api::get_mechanism_list(slotID)?)
    })
}

/// `C_GetMechanismInfo`.
pub(crate) unsafe extern "C" fn C_GetMechanismInfo(
    slotID: CK_SLOT_ID,
    type_: CK_MECHANISM_TYPE,
    pInfo: CK_MECHANISM_INFO_PTR,
) -> CK_RV {
    guard("C_GetMechanismInfo", || {
        // SAFETY: a non-NULL pInfo points to a caller-owned CK_MECHANISM_INFO.
        let out = unsafe { Out::new(pInfo) }?;
        out.write(info::ck_mechanism_info(&api::get_mechanism_info(
            slotID, type_,
        )?));
        Ok(())
    })
}
