//! The shims that hide SoftHSM2's own deviations from the specification (see `objects.rs`
//! and the GCM tag answer below), installed in every mode: the emulated vendor libraries do
//! not have them, and the module works around them only for a library reporting `SoftHSM`.

use crate::objects::{private_in, sets_a_date, template};
use crate::sessions::PerSession;
use crate::{appended, emu};
use pkcs11_sys::*;

/// Sessions whose active decryption is `CKM_AES_GCM`.
static GCM_DECRYPT: PerSession<()> = PerSession::new();

/// Plain forwarding shims: they only add the object-store lock of `target!`.
macro_rules! forward {
    ($($name:ident => $f:ident ( $($a:ident : $t:ty),* );)*) => {$(
        unsafe extern "C" fn $name($($a: $t),*) -> CK_RV {
            let Some(emu) = emu() else {
                return CKR_GENERAL_ERROR;
            };
            // SAFETY: the caller's arguments are passed through unchanged (same contract).
            unsafe { target!(emu, $f($($a),*)) }
        }
    )*};
}

forward! {
    find_objects_init => C_FindObjectsInit(s: CK_SESSION_HANDLE, t: CK_ATTRIBUTE_PTR, n: CK_ULONG);
    find_objects => C_FindObjects(s: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE_PTR, max: CK_ULONG, n: CK_ULONG_PTR);
    find_objects_final => C_FindObjectsFinal(s: CK_SESSION_HANDLE);
    get_attribute_value => C_GetAttributeValue(s: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: CK_ATTRIBUTE_PTR, n: CK_ULONG);
    get_object_size => C_GetObjectSize(s: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, size: CK_ULONG_PTR);
    encrypt_init => C_EncryptInit(s: CK_SESSION_HANDLE, m: CK_MECHANISM_PTR, k: CK_OBJECT_HANDLE);
    encrypt => C_Encrypt(s: CK_SESSION_HANDLE, d: CK_BYTE_PTR, dl: CK_ULONG, o: CK_BYTE_PTR, ol: CK_ULONG_PTR);
    encrypt_update => C_EncryptUpdate(s: CK_SESSION_HANDLE, d: CK_BYTE_PTR, dl: CK_ULONG, o: CK_BYTE_PTR, ol: CK_ULONG_PTR);
    encrypt_final => C_EncryptFinal(s: CK_SESSION_HANDLE, o: CK_BYTE_PTR, ol: CK_ULONG_PTR);
    decrypt_update => C_DecryptUpdate(s: CK_SESSION_HANDLE, d: CK_BYTE_PTR, dl: CK_ULONG, o: CK_BYTE_PTR, ol: CK_ULONG_PTR);
    copy_object => C_CopyObject(s: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: CK_ATTRIBUTE_PTR, n: CK_ULONG, new: CK_OBJECT_HANDLE_PTR);
    destroy_object => C_DestroyObject(s: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE);
    generate_key_pair => C_GenerateKeyPair(s: CK_SESSION_HANDLE, m: CK_MECHANISM_PTR, pt: CK_ATTRIBUTE_PTR, pn: CK_ULONG, vt: CK_ATTRIBUTE_PTR, vn: CK_ULONG, ph: CK_OBJECT_HANDLE_PTR, vh: CK_OBJECT_HANDLE_PTR);
    wrap_key => C_WrapKey(s: CK_SESSION_HANDLE, m: CK_MECHANISM_PTR, wk: CK_OBJECT_HANDLE, k: CK_OBJECT_HANDLE, o: CK_BYTE_PTR, ol: CK_ULONG_PTR);
    unwrap_key => C_UnwrapKey(s: CK_SESSION_HANDLE, m: CK_MECHANISM_PTR, uk: CK_OBJECT_HANDLE, w: CK_BYTE_PTR, wl: CK_ULONG, t: CK_ATTRIBUTE_PTR, n: CK_ULONG, h: CK_OBJECT_HANDLE_PTR);
    derive_key => C_DeriveKey(s: CK_SESSION_HANDLE, m: CK_MECHANISM_PTR, k: CK_OBJECT_HANDLE, t: CK_ATTRIBUTE_PTR, n: CK_ULONG, h: CK_OBJECT_HANDLE_PTR);
}

/// Put the fixes into `t` (SoftHSM2's table copy); vendor shims may replace entries after.
pub fn install(t: &mut CK_FUNCTION_LIST) {
    t.C_FindObjectsInit = Some(find_objects_init);
    t.C_FindObjects = Some(find_objects);
    t.C_FindObjectsFinal = Some(find_objects_final);
    t.C_GetAttributeValue = Some(get_attribute_value);
    t.C_GetObjectSize = Some(get_object_size);
    t.C_EncryptInit = Some(encrypt_init);
    t.C_Encrypt = Some(encrypt);
    t.C_EncryptUpdate = Some(encrypt_update);
    t.C_EncryptFinal = Some(encrypt_final);
    t.C_DecryptInit = Some(decrypt_init);
    t.C_Decrypt = Some(decrypt);
    t.C_DecryptUpdate = Some(decrypt_update);
    t.C_DecryptFinal = Some(decrypt_final);
    t.C_CreateObject = Some(create_object);
    t.C_CopyObject = Some(copy_object);
    t.C_DestroyObject = Some(destroy_object);
    t.C_SetAttributeValue = Some(set_attribute_value);
    t.C_GenerateKey = Some(generate_key);
    t.C_GenerateKeyPair = Some(generate_key_pair);
    t.C_WrapKey = Some(wrap_key);
    t.C_UnwrapKey = Some(unwrap_key);
    t.C_DeriveKey = Some(derive_key);
    t.C_CloseSession = Some(close_session);
}

unsafe extern "C" fn decrypt_init(
    s: CK_SESSION_HANDLE,
    m: CK_MECHANISM_PTR,
    k: CK_OBJECT_HANDLE,
) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    GCM_DECRYPT.clear(s);
    // SAFETY: passed through unchanged (same contract).
    let rv = unsafe { target!(emu, C_DecryptInit(s, m, k)) };
    // SAFETY: `m` is NULL or points to a CK_MECHANISM (caller contract).
    if rv == CKR_OK && unsafe { m.as_ref() }.is_some_and(|m| m.mechanism == CKM_AES_GCM) {
        GCM_DECRYPT.set(s, ());
    }
    rv
}

/// SoftHSM2 answers a failed GCM tag check (wrong tag, AAD, IV or key) with
/// `CKR_GENERAL_ERROR`; the specification's answer is `CKR_ENCRYPTED_DATA_INVALID`.
fn tag_failure(s: CK_SESSION_HANDLE, rv: CK_RV) -> CK_RV {
    if rv == CKR_GENERAL_ERROR && GCM_DECRYPT.get(s).is_some() {
        CKR_ENCRYPTED_DATA_INVALID
    } else {
        rv
    }
}

unsafe extern "C" fn decrypt(
    s: CK_SESSION_HANDLE,
    d: CK_BYTE_PTR,
    dl: CK_ULONG,
    o: CK_BYTE_PTR,
    ol: CK_ULONG_PTR,
) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: passed through unchanged (same contract).
    tag_failure(s, unsafe { target!(emu, C_Decrypt(s, d, dl, o, ol)) })
}

unsafe extern "C" fn decrypt_final(
    s: CK_SESSION_HANDLE,
    o: CK_BYTE_PTR,
    ol: CK_ULONG_PTR,
) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: passed through unchanged (same contract).
    tag_failure(s, unsafe { target!(emu, C_DecryptFinal(s, o, ol)) })
}

/// Whether a new object from `t` would carry a date SoftHSM2 cannot read back (private is
/// the default of keys).
///
/// # Safety
/// `t` follows PKCS#11's template rule.
unsafe fn refuses_dates(t: &[CK_ATTRIBUTE]) -> bool {
    // SAFETY: caller contract.
    sets_a_date(t) && unsafe { private_in(t) }.unwrap_or(true)
}

unsafe extern "C" fn generate_key(
    s: CK_SESSION_HANDLE,
    m: CK_MECHANISM_PTR,
    t: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
    h: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: the caller's template (PKCS#11 template rule).
    if unsafe { refuses_dates(template(t, n)) } {
        return CKR_ATTRIBUTE_TYPE_INVALID;
    }
    // SAFETY: passed through unchanged (same contract).
    unsafe { target!(emu, C_GenerateKey(s, m, t, n, h)) }
}

unsafe extern "C" fn create_object(
    s: CK_SESSION_HANDLE,
    t: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
    h: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: the caller's template (PKCS#11 template rule).
    if unsafe { refuses_dates(template(t, n)) } {
        return CKR_ATTRIBUTE_TYPE_INVALID;
    }
    // SAFETY: passed through unchanged (same contract).
    unsafe { target!(emu, C_CreateObject(s, t, n, h)) }
}

unsafe extern "C" fn set_attribute_value(
    s: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    t: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: the caller's template (PKCS#11 template rule).
    if sets_a_date(unsafe { template(t, n) }) {
        let mut private: CK_BBOOL = 0;
        let mut query = CK_ATTRIBUTE {
            type_: CKA_PRIVATE,
            pValue: &mut private as *mut CK_BBOOL as CK_VOID_PTR,
            ulValueLen: 1,
        };
        // SAFETY: `query` points to a live one-byte buffer.
        let rv = unsafe { target!(emu, C_GetAttributeValue(s, o, &mut query, 1)) };
        if rv != CKR_OK {
            return rv;
        }
        if private != 0 {
            return CKR_ATTRIBUTE_TYPE_INVALID;
        }
    }
    // SAFETY: passed through unchanged (same contract).
    unsafe { target!(emu, C_SetAttributeValue(s, o, t, n)) }
}

unsafe extern "C" fn close_session(s: CK_SESSION_HANDLE) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    GCM_DECRYPT.clear(s);
    appended::PENDING.clear(s);
    // SAFETY: passed through unchanged (same contract).
    unsafe { target!(emu, C_CloseSession(s)) }
}
