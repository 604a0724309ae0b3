//! Argument checks the boundary answers by itself, before the core is asked. These hold
//! whatever state the core is in, so they need neither `C_Initialize` nor a token.

use super::{crypto::*, general::*, object::*, refused::*, session::*, slot_token::*};
use pkcs11_sys::{
    CKA_LABEL, CKF_SERIAL_SESSION, CKM_AES_GCM, CKM_AES_KEY_GEN, CKR_ARGUMENTS_BAD,
    CKR_MECHANISM_PARAM_INVALID, CKU_USER, CK_ATTRIBUTE, CK_GCM_PARAMS, CK_MECHANISM,
    CK_OBJECT_HANDLE, CK_RV, CK_TRUE, CK_ULONG,
};
use std::ptr;

const BAD: CK_RV = CKR_ARGUMENTS_BAD;

#[test]
fn null_out_pointers_are_arguments_bad() {
    let null: *mut std::ffi::c_void = ptr::null_mut();
    // SAFETY: every call passes NULL where the boundary must refuse before touching memory.
    unsafe {
        assert_eq!(C_Finalize((&mut 0u8 as *mut u8).cast()), BAD);
        assert_eq!(C_GetInfo(null.cast()), BAD);
        assert_eq!(C_GetSlotList(CK_TRUE, null.cast(), null.cast()), BAD);
        assert_eq!(C_GetSlotInfo(0, null.cast()), BAD);
        assert_eq!(C_GetTokenInfo(0, null.cast()), BAD);
        assert_eq!(C_GetMechanismList(0, null.cast(), null.cast()), BAD);
        assert_eq!(C_GetMechanismInfo(0, CKM_AES_GCM, null.cast()), BAD);
        assert_eq!(
            C_OpenSession(0, CKF_SERIAL_SESSION, null, None, null.cast()),
            BAD
        );
        assert_eq!(C_GetSessionInfo(1, null.cast()), BAD);
        assert_eq!(C_GetObjectSize(1, 1, null.cast()), BAD);
        assert_eq!(C_GetOperationState(1, null.cast(), null.cast()), BAD);
        let mut count: CK_ULONG = 0;
        let mut handles = [0 as CK_OBJECT_HANDLE; 2];
        assert_eq!(C_FindObjects(1, null.cast(), 2, &mut count), BAD);
        assert_eq!(C_FindObjects(1, handles.as_mut_ptr(), 2, null.cast()), BAD);
        assert_eq!(C_Encrypt(1, null.cast(), 0, null.cast(), null.cast()), BAD);
        assert_eq!(
            C_EncryptUpdate(1, null.cast(), 0, null.cast(), null.cast()),
            BAD
        );
        assert_eq!(C_EncryptFinal(1, null.cast(), null.cast()), BAD);
        assert_eq!(C_Decrypt(1, null.cast(), 0, null.cast(), null.cast()), BAD);
        assert_eq!(
            C_DecryptUpdate(1, null.cast(), 0, null.cast(), null.cast()),
            BAD
        );
        assert_eq!(C_DecryptFinal(1, null.cast(), null.cast()), BAD);
        assert_eq!(C_GenerateRandom(1, null.cast(), 16), BAD);
    }
}

#[test]
fn null_inputs_with_lengths_are_arguments_bad() {
    let null: *mut std::ffi::c_void = ptr::null_mut();
    let mut out: CK_ULONG = 0;
    let mut handle: CK_OBJECT_HANDLE = 0;
    let mut buf = [0u8; 64];
    let mut len: CK_ULONG = 64;
    let mech = CK_MECHANISM {
        mechanism: CKM_AES_KEY_GEN,
        pParameter: null,
        ulParameterLen: 0,
    };
    let mech_ptr = (&mech as *const CK_MECHANISM).cast_mut();
    let bad_attr = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: null,
        ulValueLen: 3,
    }];
    let bad_attr_ptr = bad_attr.as_ptr().cast_mut();
    // SAFETY: all non-NULL pointers are live locals; the calls must refuse before the core.
    unsafe {
        assert_eq!(C_Login(1, CKU_USER, null.cast(), 4), BAD);
        assert_eq!(C_SetOperationState(1, null.cast(), 8, 0, 0), BAD);
        assert_eq!(C_CreateObject(1, null.cast(), 1, &mut handle), BAD);
        assert_eq!(C_CreateObject(1, bad_attr_ptr, 1, &mut handle), BAD);
        assert_eq!(C_CreateObject(1, bad_attr_ptr, 1, null.cast()), BAD);
        assert_eq!(C_CopyObject(1, 2, null.cast(), 1, &mut handle), BAD);
        assert_eq!(C_SetAttributeValue(1, 2, bad_attr_ptr, 1), BAD);
        assert_eq!(C_FindObjectsInit(1, bad_attr_ptr, 1), BAD);
        assert_eq!(C_GetAttributeValue(1, 2, null.cast(), 1), BAD);
        assert_eq!(C_EncryptInit(1, null.cast(), 2), BAD);
        assert_eq!(C_DecryptInit(1, null.cast(), 2), BAD);
        let data = null.cast();
        assert_eq!(C_Encrypt(1, data, 5, buf.as_mut_ptr(), &mut len), BAD);
        assert_eq!(C_EncryptUpdate(1, data, 5, buf.as_mut_ptr(), &mut len), BAD);
        assert_eq!(C_Decrypt(1, data, 5, buf.as_mut_ptr(), &mut len), BAD);
        assert_eq!(C_DecryptUpdate(1, data, 5, buf.as_mut_ptr(), &mut len), BAD);
        assert_eq!(
            C_GenerateKey(1, null.cast(), null.cast(), 0, &mut handle),
            BAD
        );
        assert_eq!(C_GenerateKey(1, mech_ptr, null.cast(), 0, null.cast()), BAD);
        assert_eq!(
            C_GenerateKey(1, mech_ptr, bad_attr_ptr, 1, &mut handle),
            BAD
        );
        assert_eq!(C_SeedRandom(1, null.cast(), 4), BAD);
        assert_eq!(C_WrapKey(1, mech_ptr, 2, 3, null.cast(), null.cast()), BAD);
        assert_eq!(C_WrapKey(1, null.cast(), 2, 3, null.cast(), &mut out), BAD);
        let (tmpl, wrapped) = (null.cast(), null.cast());
        assert_eq!(
            C_UnwrapKey(1, mech_ptr, 2, wrapped, 4, tmpl, 0, &mut handle),
            BAD
        );
        assert_eq!(
            C_UnwrapKey(1, mech_ptr, 2, wrapped, 0, tmpl, 0, null.cast()),
            BAD
        );
        assert_eq!(
            C_DeriveKey(1, mech_ptr, 2, bad_attr_ptr, 1, &mut handle),
            BAD
        );
        assert_eq!(C_DeriveKey(1, mech_ptr, 2, tmpl, 0, null.cast()), BAD);
    }
    assert_eq!(handle, 0, "no handle written on refusal");
}

#[test]
fn gcm_parameter_pointers_are_checked_before_the_core() {
    let mut gcm = CK_GCM_PARAMS {
        pIv: ptr::null_mut(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: ptr::null_mut(),
        ulAADLen: 0,
        ulTagBits: 128,
    };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: (&mut gcm as *mut CK_GCM_PARAMS).cast(),
        ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
    };
    // SAFETY: `mech` and `gcm` are live; the NULL IV is refused before the core.
    unsafe {
        assert_eq!(C_EncryptInit(1, &mut mech, 2), CKR_MECHANISM_PARAM_INVALID);
        assert_eq!(C_DecryptInit(1, &mut mech, 2), CKR_MECHANISM_PARAM_INVALID);
    }
}
