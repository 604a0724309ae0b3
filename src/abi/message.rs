//! The PKCS#11 3.0 message-based encryption and decryption functions (§5.13, §5.15) for
//! `CKM_AES_GCM` with `CK_GCM_MESSAGE_PARAMS`. The logic is in `module/message.rs`.
//!
//! Buffer conventions: the ciphertext or plaintext output follows the two-call rule (NULL
//! output: the length is written, nothing consumed; too small: `CKR_BUFFER_TOO_SMALL` and the
//! needed length, nothing consumed). After an encryption the tag is written to `pTag` and a
//! generated IV to `pIv` of the parameters given to that call (for `Begin`/`Next`: the last
//! `*MessageNext`, the one with `CKF_END_OF_MESSAGE`; earlier parts output nothing). A
//! decryption reads the tag from `pTag` (of the last `*MessageNext` for multi-part).

use super::args;
use super::buffers::OutList;
use super::guard::guard;
use crate::api::{self, MessageEnd};
use crate::mechanism::MessageEncryption;
use crate::rv::{CkResult, Rv};
use pkcs11_sys::{
    CKF_END_OF_MESSAGE, CK_BYTE_PTR, CK_FLAGS, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_RV,
    CK_SESSION_HANDLE, CK_ULONG, CK_ULONG_PTR, CK_VOID_PTR,
};
use std::ptr;

/// Write the IV (if generated) and the tag of an encryption back into the caller's parameters.
fn write_back(params: &args::MessageParams, e: &MessageEncryption) -> CkResult<()> {
    if let Some(iv) = &e.generated_iv {
        if iv.len() != params.params.iv.len() {
            return Err(Rv::GENERAL_ERROR);
        }
        // SAFETY: `iv_out` is the caller's `pIv`, writable for `ulIvLen` = `iv.len()` bytes
        // (contract of `args::gcm_message_params`); `iv` is Rust-owned (no overlap).
        unsafe { ptr::copy_nonoverlapping(iv.as_ptr(), params.iv_out, iv.len()) };
    }
    // SAFETY: `tag_out` is the caller's `pTag`, writable for 16 bytes (ulTagBits = 128 was
    // checked); `e.tag` is Rust-owned.
    unsafe { ptr::copy_nonoverlapping(e.tag.as_ptr(), params.tag_out, e.tag.len()) };
    Ok(())
}

/// `C_MessageEncryptInit`.
pub(crate) unsafe extern "C" fn C_MessageEncryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_MessageEncryptInit", || {
        // SAFETY: pMechanism points to a readable CK_MECHANISM (PKCS#11 contract).
        let (kind, param_len) = unsafe { args::mechanism_kind(pMechanism) }?;
        api::message_init(hSession, kind, param_len, hKey, true)
    })
}

/// `C_MessageDecryptInit`.
pub(crate) unsafe extern "C" fn C_MessageDecryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_MessageDecryptInit", || {
        // SAFETY: pMechanism points to a readable CK_MECHANISM (PKCS#11 contract).
        let (kind, param_len) = unsafe { args::mechanism_kind(pMechanism) }?;
        api::message_init(hSession, kind, param_len, hKey, false)
    })
}

/// `C_MessageEncryptFinal`.
pub(crate) extern "C" fn C_MessageEncryptFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_MessageEncryptFinal", || {
        api::message_final(hSession, true)
    })
}

/// `C_MessageDecryptFinal`.
pub(crate) extern "C" fn C_MessageDecryptFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_MessageDecryptFinal", || {
        api::message_final(hSession, false)
    })
}

/// One whole message, either way: parameters, AAD and input read, the two-call rule on the
/// output, then the core.
///
/// # Safety
/// The PKCS#11 contract of `C_EncryptMessage` / `C_DecryptMessage` for these pointers.
#[allow(clippy::too_many_arguments)]
unsafe fn whole_message(
    session: CK_SESSION_HANDLE,
    encrypt: bool,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
    pInput: CK_BYTE_PTR,
    ulInputLen: CK_ULONG,
    pOutput: CK_BYTE_PTR,
    pulOutputLen: CK_ULONG_PTR,
) -> CkResult<()> {
    // SAFETY: forwarded caller contract.
    let out = unsafe { OutList::new(pOutput, pulOutputLen) }?;
    // SAFETY: forwarded caller contract.
    let params = unsafe { args::gcm_message_params(pParameter, ulParameterLen, !encrypt) }?;
    // SAFETY: forwarded caller contract.
    let aad = unsafe { args::bytes(pAssociatedData, ulAssociatedDataLen) }?;
    // SAFETY: forwarded caller contract.
    let input = unsafe { args::bytes(pInput, ulInputLen) }?;
    if !out.prepare(api::message_len(session, encrypt, input.len())?)? {
        return Ok(());
    }
    if encrypt {
        let e = api::encrypt_message(session, &params.params, aad, input)?;
        write_back(&params, &e)?;
        out.fill(&e.ciphertext)
    } else {
        let plaintext = api::decrypt_message(session, &params.params, aad, input)?;
        out.fill(&plaintext)
    }
}

/// `C_EncryptMessage`.
pub(crate) unsafe extern "C" fn C_EncryptMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
    pPlaintext: CK_BYTE_PTR,
    ulPlaintextLen: CK_ULONG,
    pCiphertext: CK_BYTE_PTR,
    pulCiphertextLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_EncryptMessage", || {
        // SAFETY: PKCS#11 contract of C_EncryptMessage.
        unsafe {
            whole_message(
                hSession,
                true,
                pParameter,
                ulParameterLen,
                pAssociatedData,
                ulAssociatedDataLen,
                pPlaintext,
                ulPlaintextLen,
                pCiphertext,
                pulCiphertextLen,
            )
        }
    })
}

/// `C_DecryptMessage` (no plaintext leaves before the tag verified; wiped once copied).
pub(crate) unsafe extern "C" fn C_DecryptMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
    pCiphertext: CK_BYTE_PTR,
    ulCiphertextLen: CK_ULONG,
    pPlaintext: CK_BYTE_PTR,
    pulPlaintextLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_DecryptMessage", || {
        // SAFETY: PKCS#11 contract of C_DecryptMessage.
        unsafe {
            whole_message(
                hSession,
                false,
                pParameter,
                ulParameterLen,
                pAssociatedData,
                ulAssociatedDataLen,
                pCiphertext,
                ulCiphertextLen,
                pPlaintext,
                pulPlaintextLen,
            )
        }
    })
}

/// `*MessageBegin`, either way.
///
/// # Safety
/// The PKCS#11 contract of `C_EncryptMessageBegin` / `C_DecryptMessageBegin`.
unsafe fn begin(
    session: CK_SESSION_HANDLE,
    encrypt: bool,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
) -> CkResult<()> {
    // SAFETY: forwarded caller contract (the tag of a decryption comes with the last part).
    let params = unsafe { args::gcm_message_params(pParameter, ulParameterLen, false) }?;
    // SAFETY: forwarded caller contract.
    let aad = unsafe { args::bytes(pAssociatedData, ulAssociatedDataLen) }?;
    api::message_begin(session, encrypt, params.params, aad)
}

/// `C_EncryptMessageBegin`.
pub(crate) unsafe extern "C" fn C_EncryptMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
) -> CK_RV {
    guard("C_EncryptMessageBegin", || {
        // SAFETY: PKCS#11 contract of C_EncryptMessageBegin.
        unsafe {
            begin(
                hSession,
                true,
                pParameter,
                ulParameterLen,
                pAssociatedData,
                ulAssociatedDataLen,
            )
        }
    })
}

/// `C_DecryptMessageBegin`.
pub(crate) unsafe extern "C" fn C_DecryptMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
) -> CK_RV {
    guard("C_DecryptMessageBegin", || {
        // SAFETY: PKCS#11 contract of C_DecryptMessageBegin.
        unsafe {
            begin(
                hSession,
                false,
                pParameter,
                ulParameterLen,
                pAssociatedData,
                ulAssociatedDataLen,
            )
        }
    })
}

/// `*MessageNext`, either way. Before the last part nothing is output (the output length is
/// 0; a NULL output is a length query that buffers nothing). At the last part the whole
/// message's output follows the two-call rule.
///
/// # Safety
/// The PKCS#11 contract of `C_EncryptMessageNext` / `C_DecryptMessageNext`.
#[allow(clippy::too_many_arguments)]
unsafe fn next(
    session: CK_SESSION_HANDLE,
    encrypt: bool,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pInput: CK_BYTE_PTR,
    ulInputLen: CK_ULONG,
    pOutput: CK_BYTE_PTR,
    pulOutputLen: CK_ULONG_PTR,
    flags: CK_FLAGS,
) -> CkResult<()> {
    let last = flags & CKF_END_OF_MESSAGE != 0;
    // SAFETY: forwarded caller contract.
    let out = unsafe { OutList::new(pOutput, pulOutputLen) }?;
    // SAFETY: forwarded caller contract.
    let input = unsafe { args::bytes(pInput, ulInputLen) }?;
    if !last {
        // No output before the last part. A NULL output is a length query (0 bytes) that
        // consumes nothing, as everywhere; with a buffer the part is buffered.
        if !out.prepare(api::message_next_len(session, encrypt, input.len(), false)?)? {
            return Ok(());
        }
        api::message_next(session, encrypt, input, None)?;
        return out.fill(&[]);
    }
    // SAFETY: forwarded caller contract (the last part's parameters receive the IV and tag,
    // or bring the tag to verify).
    let params = unsafe { args::gcm_message_params(pParameter, ulParameterLen, !encrypt) }?;
    if !out.prepare(api::message_next_len(session, encrypt, input.len(), true)?)? {
        return Ok(());
    }
    match api::message_next(session, encrypt, input, Some(params.params.tag))? {
        Some(MessageEnd::Encrypted(e)) => {
            write_back(&params, &e)?;
            out.fill(&e.ciphertext)
        }
        Some(MessageEnd::Decrypted(plaintext)) => out.fill(&plaintext),
        None => Err(Rv::GENERAL_ERROR),
    }
}

/// `C_EncryptMessageNext`.
pub(crate) unsafe extern "C" fn C_EncryptMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pPlaintextPart: CK_BYTE_PTR,
    ulPlaintextPartLen: CK_ULONG,
    pCiphertextPart: CK_BYTE_PTR,
    pulCiphertextPartLen: CK_ULONG_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    guard("C_EncryptMessageNext", || {
        // SAFETY: PKCS#11 contract of C_EncryptMessageNext.
        unsafe {
            next(
                hSession,
                true,
                pParameter,
                ulParameterLen,
                pPlaintextPart,
                ulPlaintextPartLen,
                pCiphertextPart,
                pulCiphertextPartLen,
                flags,
            )
        }
    })
}

/// `C_DecryptMessageNext` (all plaintext at the last part, once the tag verified).
pub(crate) unsafe extern "C" fn C_DecryptMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pCiphertextPart: CK_BYTE_PTR,
    ulCiphertextPartLen: CK_ULONG,
    pPlaintextPart: CK_BYTE_PTR,
    pulPlaintextPartLen: CK_ULONG_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    guard("C_DecryptMessageNext", || {
        // SAFETY: PKCS#11 contract of C_DecryptMessageNext.
        unsafe {
            next(
                hSession,
                false,
                pParameter,
                ulParameterLen,
                pCiphertextPart,
                ulCiphertextPartLen,
                pPlaintextPart,
                pulPlaintextPartLen,
                flags,
            )
        }
    })
}
