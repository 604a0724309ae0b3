//! The functions the emulator puts in place of SoftHSM2's, and the table that holds them.
//! Everything not listed in [`table`] is SoftHSM2's own function pointer.

use crate::appended;
use crate::gcm::{self, IvDecision};
use crate::login;
use crate::mode::{pad_into, GcmIv, LoginPin, Mode, GENERATED_IV_LEN};
use crate::{emu, Emu};
use pkcs11_sys::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// The emulator's table for `mode`: SoftHSM2's, with the mode's functions in place.
pub fn table(mode: Mode, target: &CK_FUNCTION_LIST) -> CK_FUNCTION_LIST {
    let mut t = *target;
    // First the fixes of SoftHSM2's own deviations (a vendor library has none of them), then
    // the vendor's conventions on top.
    crate::softhsm_fixes::install(&mut t);
    t.C_GetFunctionList = Some(crate::C_GetFunctionList);
    t.C_Initialize = Some(c_initialize);
    t.C_Finalize = Some(c_finalize);
    t.C_GetInfo = Some(c_get_info);
    t.C_GetTokenInfo = Some(c_get_token_info);
    match mode.login_pin() {
        LoginPin::Plain => {}
        LoginPin::UserColonPassword => t.C_Login = Some(c_login_user_colon_password),
    }
    match mode.gcm_iv() {
        GcmIv::Caller => {}
        GcmIv::WrittenBack => t.C_EncryptInit = Some(c_encrypt_init),
        GcmIv::Appended => {
            t.C_EncryptInit = Some(c_encrypt_init);
            t.C_Encrypt = Some(c_encrypt_appended);
            t.C_EncryptFinal = Some(c_encrypt_final_appended);
        }
    }
    t
}

/// Whether this copy is initialised, and whether its `C_Initialize` initialised SoftHSM2
/// (another user in the process may have done so first: a real vendor library is a separate
/// library, so this copy then behaves as initialised and leaves SoftHSM2's finalisation to
/// its owner).
static INITIALIZED: AtomicBool = AtomicBool::new(false);
static OWNS_TARGET: AtomicBool = AtomicBool::new(false);

unsafe extern "C" fn c_initialize(args: CK_VOID_PTR) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    if INITIALIZED.load(Ordering::Acquire) {
        return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    }
    // SAFETY: the caller's arguments are passed through unchanged (same contract).
    let rv = unsafe { target!(emu, C_Initialize(args)) };
    match rv {
        CKR_OK => OWNS_TARGET.store(true, Ordering::Release),
        CKR_CRYPTOKI_ALREADY_INITIALIZED => OWNS_TARGET.store(false, Ordering::Release),
        other => return other,
    }
    INITIALIZED.store(true, Ordering::Release);
    CKR_OK
}

unsafe extern "C" fn c_finalize(reserved: CK_VOID_PTR) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    if !INITIALIZED.swap(false, Ordering::AcqRel) {
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    }
    if OWNS_TARGET.swap(false, Ordering::AcqRel) {
        // SAFETY: the caller's argument is passed through unchanged (same contract).
        unsafe { target!(emu, C_Finalize(reserved)) }
    } else {
        CKR_OK
    }
}

unsafe extern "C" fn c_get_info(info: CK_INFO_PTR) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: the caller's out-pointer is passed through unchanged (same contract).
    let rv = unsafe { target!(emu, C_GetInfo(info)) };
    if rv == CKR_OK && !info.is_null() {
        // SAFETY: SoftHSM2 just filled `*info`, so it is a valid, writable CK_INFO.
        let info = unsafe { &mut *info };
        pad_into(&mut info.manufacturerID, emu.mode.manufacturer());
        pad_into(
            &mut info.libraryDescription,
            &emu.mode.library_description(),
        );
    }
    rv
}

unsafe extern "C" fn c_get_token_info(slot: CK_SLOT_ID, info: CK_TOKEN_INFO_PTR) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: the caller's arguments are passed through unchanged (same contract).
    let rv = unsafe { target!(emu, C_GetTokenInfo(slot, info)) };
    if rv == CKR_OK && !info.is_null() {
        // SAFETY: SoftHSM2 just filled `*info`, so it is a valid, writable CK_TOKEN_INFO.
        pad_into(
            unsafe { &mut (*info).manufacturerID },
            emu.mode.manufacturer(),
        );
    }
    rv
}

/// CloudHSM: the PIN is `<user>:<password>`; the password goes to SoftHSM2.
unsafe extern "C" fn c_login_user_colon_password(
    session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    pin: CK_UTF8CHAR_PTR,
    pin_len: CK_ULONG,
) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    if pin.is_null() {
        // Protected authentication path: nothing to split.
        // SAFETY: the caller's arguments are passed through unchanged (same contract).
        return unsafe { target!(emu, C_Login(session, user_type, pin, pin_len)) };
    }
    // SAFETY: PKCS#11 says `pin` points to `pin_len` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(pin, pin_len as usize) };
    let Some(password) = login::cloudhsm_password(bytes) else {
        return CKR_PIN_INCORRECT;
    };
    let len = password.len() as CK_ULONG;
    // SAFETY: `password` borrows the caller's PIN buffer, valid for this call; SoftHSM2 only
    // reads it.
    unsafe {
        target!(
            emu,
            C_Login(
                session,
                user_type,
                password.as_ptr() as CK_UTF8CHAR_PTR,
                len
            )
        )
    }
}

/// `C_EncryptInit` of the generating modes: the GCM IV rules of [`gcm::encrypt_iv`].
unsafe extern "C" fn c_encrypt_init(
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    // Any earlier appended-IV operation of the session is over once a new one starts.
    appended::PENDING.clear(session);
    // SAFETY: `mechanism` is NULL or points to a CK_MECHANISM (caller contract).
    let Some(mech) = (unsafe { mechanism.as_ref() }) else {
        // SAFETY: passed through unchanged (same contract).
        return unsafe { target!(emu, C_EncryptInit(session, mechanism, key)) };
    };
    if mech.mechanism != CKM_AES_GCM
        || mech.pParameter.is_null()
        || mech.ulParameterLen as usize != std::mem::size_of::<CK_GCM_PARAMS>()
    {
        // Not GCM, or parameters SoftHSM2 refuses on its own.
        // SAFETY: passed through unchanged (same contract).
        return unsafe { target!(emu, C_EncryptInit(session, mechanism, key)) };
    }
    // SAFETY: pParameter points to a CK_GCM_PARAMS of the length just checked; it is copied
    // (read_unaligned: the caller's buffer need not be aligned).
    let params: CK_GCM_PARAMS =
        unsafe { std::ptr::read_unaligned(mech.pParameter as *const CK_GCM_PARAMS) };
    let caller_iv = if params.pIv.is_null() {
        None
    } else {
        // SAFETY: PKCS#11 says a non-NULL pIv points to ulIvLen readable bytes.
        Some(unsafe { std::slice::from_raw_parts(params.pIv, params.ulIvLen as usize) })
    };
    let style = emu.mode.gcm_iv();
    match gcm::encrypt_iv(style, caller_iv, params.ulIvLen) {
        // SAFETY: passed through unchanged (same contract).
        IvDecision::Forward => unsafe { target!(emu, C_EncryptInit(session, mechanism, key)) },
        IvDecision::Refuse => CKR_MECHANISM_PARAM_INVALID,
        // SAFETY: the caller's parameters were checked above (see generate_and_init).
        IvDecision::Generate => unsafe {
            generate_and_init(emu, session, mech, params, key, style)
        },
    }
}

/// Encrypt with an IV from SoftHSM2's RNG and hand it to the caller the mode's way.
///
/// # Safety
/// `params` is the caller's CK_GCM_PARAMS (its AAD pointer valid for this call); in
/// written-back mode its `pIv` points to 12 writable bytes (checked by the decision).
unsafe fn generate_and_init(
    emu: &Emu,
    session: CK_SESSION_HANDLE,
    mech: &CK_MECHANISM,
    params: CK_GCM_PARAMS,
    key: CK_OBJECT_HANDLE,
    style: GcmIv,
) -> CK_RV {
    let mut iv = [0u8; GENERATED_IV_LEN];
    let len = GENERATED_IV_LEN as CK_ULONG;
    // SAFETY: `iv` is a writable buffer of `len` bytes.
    let rv = unsafe { target!(emu, C_GenerateRandom(session, iv.as_mut_ptr(), len)) };
    if rv != CKR_OK {
        return rv;
    }
    let mut inner = CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: len,
        ulIvBits: len * 8,
        ..params
    };
    let mut inner_mech = CK_MECHANISM {
        mechanism: mech.mechanism,
        pParameter: &mut inner as *mut CK_GCM_PARAMS as CK_VOID_PTR,
        ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
    };
    // SAFETY: `inner_mech` and the buffers it points to live for the call; SoftHSM2 copies
    // the IV and AAD during C_EncryptInit.
    let rv = unsafe { target!(emu, C_EncryptInit(session, &mut inner_mech, key)) };
    if rv != CKR_OK {
        return rv;
    }
    match style {
        GcmIv::Appended => appended::PENDING.set(session, iv),
        // SAFETY: the decision checked pIv is non-NULL with ulIvLen == 12 (caller memory
        // PKCS#11 lets the library write the IV into in this convention).
        GcmIv::WrittenBack => unsafe {
            std::ptr::copy_nonoverlapping(iv.as_ptr(), params.pIv, GENERATED_IV_LEN)
        },
        GcmIv::Caller => {}
    }
    CKR_OK
}

/// Luna FIPS `C_Encrypt`: ciphertext ‖ tag ‖ IV, with the two-call length convention.
unsafe extern "C" fn c_encrypt_appended(
    session: CK_SESSION_HANDLE,
    data: CK_BYTE_PTR,
    data_len: CK_ULONG,
    out: CK_BYTE_PTR,
    out_len: CK_ULONG_PTR,
) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: the closure passes the caller's input through and the output buffers
    // with_appended_iv hands it (valid for the lengths it says).
    unsafe {
        with_appended_iv(session, out, out_len, |o, l| {
            target!(emu, C_Encrypt(session, data, data_len, o, l))
        })
    }
}

/// Luna FIPS `C_EncryptFinal`: the last part ‖ IV, with the two-call length convention.
unsafe extern "C" fn c_encrypt_final_appended(
    session: CK_SESSION_HANDLE,
    out: CK_BYTE_PTR,
    out_len: CK_ULONG_PTR,
) -> CK_RV {
    let Some(emu) = emu() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: as in c_encrypt_appended.
    unsafe {
        with_appended_iv(session, out, out_len, |o, l| {
            target!(emu, C_EncryptFinal(session, o, l))
        })
    }
}

/// Run SoftHSM2's output call `inner(buffer, length)` and append the session's pending IV.
/// Without a pending IV (not a generated-IV GCM operation) the call is passed through.
///
/// # Safety
/// `out`/`out_len` follow PKCS#11's output conventions (`out` NULL for a length query, else
/// `*out_len` writable bytes).
unsafe fn with_appended_iv(
    session: CK_SESSION_HANDLE,
    out: CK_BYTE_PTR,
    out_len: CK_ULONG_PTR,
    mut inner: impl FnMut(CK_BYTE_PTR, CK_ULONG_PTR) -> CK_RV,
) -> CK_RV {
    let Some(iv) = appended::PENDING.get(session) else {
        return inner(out, out_len);
    };
    if out_len.is_null() {
        appended::PENDING.clear(session);
        return inner(out, out_len);
    }
    // Length of SoftHSM2's own output (the operation stays active after a length query).
    let mut inner_len: CK_ULONG = 0;
    let rv = inner(std::ptr::null_mut(), &mut inner_len);
    if rv != CKR_OK {
        appended::PENDING.clear(session);
        return rv;
    }
    let needed = gcm::appended_len(inner_len);
    // SAFETY: `out_len` is non-NULL and points to a CK_ULONG (caller contract).
    let have = unsafe { *out_len };
    if out.is_null() || have < needed {
        // SAFETY: as above.
        unsafe { *out_len = needed };
        return if out.is_null() {
            CKR_OK
        } else {
            CKR_BUFFER_TOO_SMALL
        };
    }
    let mut written = inner_len;
    let rv = inner(out, &mut written);
    appended::PENDING.clear(session);
    if rv != CKR_OK {
        return rv;
    }
    // SAFETY: the caller's buffer holds `have >= inner_len + 12 >= written + 12` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(iv.as_ptr(), out.add(written as usize), GENERATED_IV_LEN);
        *out_len = gcm::appended_len(written);
    }
    CKR_OK
}
