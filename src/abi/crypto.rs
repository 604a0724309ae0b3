//! Encryption, decryption, key generation and random numbers.
//!
//! Every output follows the two-call convention, decided from the core's `*_len` answer before
//! the consuming call, so a length query or a too-small buffer leaves the operation active.

use super::guard::guard;
use super::{
    args,
    buffers::{Out, OutList},
};
use crate::api::{self, SinglePart};
use crate::mechanism::GCM_TAG_LEN;
use crate::rv::{CkResult, Rv};
use crate::secret::SecretBytes;
use pkcs11_sys::{
    CK_ATTRIBUTE_PTR, CK_BYTE_PTR, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE_PTR, CK_RV,
    CK_SESSION_HANDLE, CK_ULONG, CK_ULONG_PTR,
};
use std::ptr;
use zeroize::Zeroizing;

/// The two-call convention for a byte-producing call with (optional) byte input.
///
/// `needed(input_len)` must not change operation state; `produce(input)` consumes.
/// The input slice is no longer used once `produce` returns, so input and output may be the
/// same caller buffer (in-place operation, allowed by PKCS#11).
///
/// # Safety
/// `input`/`input_len` and `output`/`output_len` must satisfy [`args::bytes`] and
/// [`OutList::new`] respectively.
unsafe fn transform<D: AsRef<[u8]>>(
    input: CK_BYTE_PTR,
    input_len: CK_ULONG,
    output: CK_BYTE_PTR,
    output_len: CK_ULONG_PTR,
    needed: impl FnOnce(usize) -> CkResult<usize>,
    produce: impl FnOnce(&[u8]) -> CkResult<D>,
) -> CkResult<()> {
    // SAFETY: forwarded caller contract.
    let out = unsafe { OutList::new(output, output_len) }?;
    let produced = {
        // SAFETY: forwarded caller contract.
        let input = unsafe { args::bytes(input, input_len) }?;
        if !out.prepare(needed(input.len())?)? {
            return Ok(());
        }
        produce(input)?
    };
    out.fill(produced.as_ref())
}

/// The two-call convention for single-part `C_Encrypt`/`C_Decrypt`, in one core call that
/// writes straight into the caller's buffer when there is one.
///
/// A NULL output is a length query: `query(input_len)`, which changes nothing. Otherwise the
/// core gets the input and the caller's buffer (its capacity, capped at `room_for(input_len)`,
/// the most the call can use) and checks the needed length itself, under the same session
/// lock that takes the operation: [`SinglePart::TooSmall`] leaves the operation active and
/// the needed length is written, as PKCS#11 wants. Input and output may be the same caller
/// buffer (in-place, allowed by PKCS#11): overlapping input is copied first (and wiped after),
/// so the core never sees two views of the same bytes.
///
/// # Safety
/// `input`/`input_len` and `output`/`output_len` must satisfy [`args::bytes`] and
/// [`OutList::new`] respectively.
unsafe fn single_part(
    input: CK_BYTE_PTR,
    input_len: CK_ULONG,
    output: CK_BYTE_PTR,
    output_len: CK_ULONG_PTR,
    room_for: fn(usize) -> usize,
    query: impl FnOnce(usize) -> CkResult<usize>,
    produce: impl FnOnce(&[u8], &mut [u8]) -> CkResult<SinglePart<usize>>,
) -> CkResult<()> {
    // SAFETY: forwarded caller contract.
    let mut out = unsafe { OutList::new(output, output_len) }?;
    // SAFETY: forwarded caller contract.
    let data = unsafe { args::bytes(input, input_len) }?;
    let Some(capacity) = out.capacity() else {
        // A NULL output: `prepare` writes the length and says "done".
        return out.prepare(query(data.len())?).map(drop);
    };
    let room = capacity.min(room_for(data.len()));
    let in_place = overlaps(data, output, room);
    // The caller's input may be plaintext: the copy is wiped when dropped.
    let copy = in_place.then(|| SecretBytes::new(data.to_vec()));
    let data: &[u8] = match &copy {
        Some(c) => c,
        None => data,
    };
    // SAFETY: `room <= capacity`; the only other view of the caller's memory still used is
    // `data`, which does not overlap the output (checked above, or it is our own copy).
    let Some(buffer) = (unsafe { out.room(room) }) else {
        return Err(Rv::GENERAL_ERROR);
    };
    match produce(data, buffer)? {
        // `prepare` with a length above the capacity writes it and answers BUFFER_TOO_SMALL.
        SinglePart::TooSmall(needed) => out.prepare(needed).map(drop),
        SinglePart::Done(written) => out.written(written),
    }
}

/// Whether `data` and the first `len` bytes at `output` share any byte.
fn overlaps(data: &[u8], output: CK_BYTE_PTR, len: usize) -> bool {
    let (a, b) = (data.as_ptr() as usize, output as usize);
    !data.is_empty() && len > 0 && a < b.saturating_add(len) && b < a.saturating_add(data.len())
}

/// `C_EncryptInit`.
pub(crate) unsafe extern "C" fn C_EncryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_EncryptInit", || {
        // SAFETY: pMechanism points to a readable CK_MECHANISM (PKCS#11 contract).
        let mechanism = unsafe { args::mechanism(pMechanism) }?;
        // SAFETY: as above; the mechanism was just read successfully.
        match unsafe { args::zero_gcm_iv(pMechanism) } {
            None => api::encrypt_init(hSession, mechanism, hKey),
            Some(iv) => api::encrypt_init_zero_iv(hSession, mechanism, hKey, write_iv_back_to(iv)),
        }
    })
}

/// The zero-IV convention of `C_EncryptInit` (see `include/xki_pkcs11.h`): the IV a generating
/// HSM used is written into the caller's 12-byte `pIv` when the encryption (`C_Encrypt` or
/// `C_EncryptFinal`) has run. The address is kept as a number so the closure is `Send`.
fn write_iv_back_to(iv: *mut u8) -> crate::session::IvWriteBack {
    let address = iv as usize;
    Box::new(move |generated: &[u8]| {
        if generated.len() != crate::backend::GENERATED_IV_LEN {
            return Err(Rv::FUNCTION_FAILED);
        }
        // SAFETY: the convention's contract (documented in xki_pkcs11.h, as for the AWS
        // CloudHSM library it mirrors): the caller's `pIv` given to C_EncryptInit stays valid
        // and writable for its 12 bytes until the encryption has run; `generated` is
        // Rust-owned, so the ranges do not overlap.
        unsafe {
            ptr::copy_nonoverlapping(generated.as_ptr(), address as *mut u8, generated.len())
        };
        Ok(())
    })
}

/// `C_Encrypt`.
pub(crate) unsafe extern "C" fn C_Encrypt(
    hSession: CK_SESSION_HANDLE,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pEncryptedData: CK_BYTE_PTR,
    pulEncryptedDataLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_Encrypt", || {
        // SAFETY: PKCS#11 buffer contract for C_Encrypt.
        unsafe {
            single_part(
                pData,
                ulDataLen,
                pEncryptedData,
                pulEncryptedDataLen,
                |n| n.saturating_add(GCM_TAG_LEN),
                |n| api::encrypt_len(hSession, n),
                |data, out| api::encrypt(hSession, data, out),
            )
        }
    })
}

/// `C_EncryptUpdate`.
pub(crate) unsafe extern "C" fn C_EncryptUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
    pEncryptedPart: CK_BYTE_PTR,
    pulEncryptedPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_EncryptUpdate", || {
        // SAFETY: PKCS#11 buffer contract for C_EncryptUpdate.
        unsafe {
            transform(
                pPart,
                ulPartLen,
                pEncryptedPart,
                pulEncryptedPartLen,
                |n| api::encrypt_update_len(hSession, n),
                |part| api::encrypt_update(hSession, part),
            )
        }
    })
}

/// `C_EncryptFinal`.
pub(crate) unsafe extern "C" fn C_EncryptFinal(
    hSession: CK_SESSION_HANDLE,
    pLastEncryptedPart: CK_BYTE_PTR,
    pulLastEncryptedPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_EncryptFinal", || {
        // SAFETY: PKCS#11 buffer contract for C_EncryptFinal; no input.
        unsafe {
            transform(
                ptr::null_mut(),
                0,
                pLastEncryptedPart,
                pulLastEncryptedPartLen,
                |_| api::encrypt_final_len(hSession),
                |_| api::encrypt_final(hSession),
            )
        }
    })
}

/// `C_DecryptInit`.
pub(crate) unsafe extern "C" fn C_DecryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_DecryptInit", || {
        // SAFETY: pMechanism points to a readable CK_MECHANISM (PKCS#11 contract).
        let mechanism = unsafe { args::mechanism(pMechanism) }?;
        api::decrypt_init(hSession, mechanism, hKey)
    })
}

/// `C_Decrypt` (plaintext is wiped from module memory once copied out).
pub(crate) unsafe extern "C" fn C_Decrypt(
    hSession: CK_SESSION_HANDLE,
    pEncryptedData: CK_BYTE_PTR,
    ulEncryptedDataLen: CK_ULONG,
    pData: CK_BYTE_PTR,
    pulDataLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_Decrypt", || {
        // SAFETY: PKCS#11 buffer contract for C_Decrypt.
        unsafe {
            single_part(
                pEncryptedData,
                ulEncryptedDataLen,
                pData,
                pulDataLen,
                // The plaintext is shorter, but backends may want room for the whole input.
                |n| n,
                |n| api::decrypt_len(hSession, n),
                |data, out| api::decrypt(hSession, data, out),
            )
        }
    })
}

/// `C_DecryptUpdate`.
pub(crate) unsafe extern "C" fn C_DecryptUpdate(
    hSession: CK_SESSION_HANDLE,
    pEncryptedPart: CK_BYTE_PTR,
    ulEncryptedPartLen: CK_ULONG,
    pPart: CK_BYTE_PTR,
    pulPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_DecryptUpdate", || {
        // SAFETY: PKCS#11 buffer contract for C_DecryptUpdate.
        unsafe {
            transform(
                pEncryptedPart,
                ulEncryptedPartLen,
                pPart,
                pulPartLen,
                |n| api::decrypt_update_len(hSession, n),
                |part| api::decrypt_update(hSession, part),
            )
        }
    })
}

/// `C_DecryptFinal`.
pub(crate) unsafe extern "C" fn C_DecryptFinal(
    hSession: CK_SESSION_HANDLE,
    pLastPart: CK_BYTE_PTR,
    pulLastPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_DecryptFinal", || {
        // SAFETY: PKCS#11 buffer contract for C_DecryptFinal; no input.
        unsafe {
            transform(
                ptr::null_mut(),
                0,
                pLastPart,
                pulLastPartLen,
                |_| api::decrypt_final_len(hSession),
                |_| api::decrypt_final(hSession),
            )
        }
    })
}

/// `C_GenerateKey`.
pub(crate) unsafe extern "C" fn C_GenerateKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_GenerateKey", || {
        // SAFETY: phKey, if non-NULL, is a caller-owned handle slot.
        let out = unsafe { Out::new(phKey) }?;
        // SAFETY: pMechanism points to a readable CK_MECHANISM (PKCS#11 contract).
        let mechanism = unsafe { args::mechanism(pMechanism) }?;
        // SAFETY: pTemplate is readable for ulCount attributes (PKCS#11 contract).
        let template = unsafe { args::template(pTemplate, ulCount) }?;
        out.write(api::generate_key(hSession, &mechanism, &template)?);
        Ok(())
    })
}

/// `C_SeedRandom`.
pub(crate) unsafe extern "C" fn C_SeedRandom(
    hSession: CK_SESSION_HANDLE,
    pSeed: CK_BYTE_PTR,
    ulSeedLen: CK_ULONG,
) -> CK_RV {
    guard("C_SeedRandom", || {
        // SAFETY: a non-NULL pSeed is readable for ulSeedLen bytes.
        let seed = unsafe { args::bytes(pSeed, ulSeedLen) }?;
        api::seed_random(hSession, seed)
    })
}

/// `C_GenerateRandom`: exactly `ulRandomLen` bytes into `RandomData`.
pub(crate) unsafe extern "C" fn C_GenerateRandom(
    hSession: CK_SESSION_HANDLE,
    RandomData: CK_BYTE_PTR,
    ulRandomLen: CK_ULONG,
) -> CK_RV {
    guard("C_GenerateRandom", || {
        let len = usize::try_from(ulRandomLen).map_err(|_| Rv::ARGUMENTS_BAD)?;
        if len > 0 && RandomData.is_null() {
            return Err(Rv::ARGUMENTS_BAD);
        }
        // The caller may use these bytes as key material: wipe the module's copy.
        let random = Zeroizing::new(api::generate_random(hSession, len)?);
        if random.len() != len {
            return Err(Rv::GENERAL_ERROR);
        }
        if len > 0 {
            // SAFETY: RandomData is non-NULL and writable for ulRandomLen bytes; `random` is
            // Rust-owned, so the ranges do not overlap.
            unsafe { ptr::copy_nonoverlapping(random.as_ptr(), RandomData, len) };
        }
        Ok(())
    })
}
