//! Reading arguments out of caller memory: byte buffers, attribute templates, mechanisms,
//! `CK_C_INITIALIZE_ARGS`. Every pointer/length pair is checked here; the core only ever sees
//! owned or borrowed Rust values.

use crate::api::{Attribute, InitArgs};
use crate::mechanism::{Aad, GcmMessageParams, GcmParams, Iv, Mechanism, GCM_MAX_AAD};
use crate::rv::{CkResult, Rv};
use pkcs11_sys::{
    CKF_LIBRARY_CANT_CREATE_OS_THREADS, CKF_OS_LOCKING_OK, CKM_AES_GCM, CKM_AES_KEY_GEN,
    CK_ATTRIBUTE, CK_ATTRIBUTE_TYPE, CK_C_INITIALIZE_ARGS, CK_GCM_MESSAGE_PARAMS, CK_GCM_PARAMS,
    CK_MECHANISM, CK_ULONG,
};
use std::ffi::{c_void, CStr};
use std::mem::size_of;
use std::ops::Deref;
use zeroize::Zeroize;

/// A caller-supplied element count as `usize`, refusing counts no real array of `T` can have
/// (more than `isize::MAX` bytes), with `err` as the answer.
fn count_of<T>(count: CK_ULONG, err: Rv) -> CkResult<usize> {
    let n = usize::try_from(count).map_err(|_| err)?;
    let bytes = n.checked_mul(size_of::<T>().max(1)).ok_or(err)?;
    if bytes > isize::MAX as usize {
        return Err(err);
    }
    Ok(n)
}

/// Borrow an input byte buffer; NULL with a non-zero length is `err`.
///
/// # Safety
/// A non-NULL `ptr` must be valid for reading `len` bytes, unchanged while the slice is used.
unsafe fn bytes_or<'a>(ptr: *const u8, len: CK_ULONG, err: Rv) -> CkResult<&'a [u8]> {
    let n = count_of::<u8>(len, err)?;
    if n == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(err);
    }
    // SAFETY: non-NULL, `n` bytes readable (caller contract), n <= isize::MAX (count_of).
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// Borrow an input byte buffer (data, PIN, seed); NULL with length > 0 is `CKR_ARGUMENTS_BAD`.
/// NULL with length 0 is the empty slice (e.g. a PIN entered on a protected path).
///
/// # Safety
/// A non-NULL `ptr` must be valid for reading `len` bytes, unchanged while the slice is used.
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: CK_ULONG) -> CkResult<&'a [u8]> {
    // SAFETY: forwarded caller contract.
    unsafe { bytes_or(ptr, len, Rv::ARGUMENTS_BAD) }
}

/// Copy `count` elements of a C array; `count > 0` with NULL is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// A non-NULL `ptr` must be valid for reading `count` elements of `T`.
pub(crate) unsafe fn array<T: Copy>(ptr: *const T, count: CK_ULONG) -> CkResult<Vec<T>> {
    let n = count_of::<T>(count, Rv::ARGUMENTS_BAD)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(Rv::ARGUMENTS_BAD);
    }
    // SAFETY: non-NULL and `n` elements readable (caller contract); unaligned reads because C
    // callers may pack their arrays.
    Ok((0..n)
        .map(|i| unsafe { ptr.add(i).read_unaligned() })
        .collect())
}

/// An input template copied out of C memory. Attribute values may be secret (a `CKA_VALUE`
/// someone tries to import), so they are wiped when the template is dropped.
#[derive(Debug, Default)]
pub(crate) struct Template(Vec<Attribute>);

impl Deref for Template {
    type Target = [Attribute];
    fn deref(&self) -> &[Attribute] {
        &self.0
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        for attribute in &mut self.0 {
            attribute.value.zeroize();
        }
    }
}

/// Read an input template (`C_CreateObject`, `C_FindObjectsInit`, `C_GenerateKey`, ...).
/// `ulCount > 0` with NULL, or an attribute with NULL `pValue` and `ulValueLen > 0`, is
/// `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// A non-NULL `ptr` must be valid for reading `count` `CK_ATTRIBUTE`s, each with a `pValue`
/// valid for reading `ulValueLen` bytes when non-NULL.
pub(crate) unsafe fn template(ptr: *const CK_ATTRIBUTE, count: CK_ULONG) -> CkResult<Template> {
    // SAFETY: forwarded caller contract.
    let raw = unsafe { array(ptr, count) }?;
    let mut template = Template(Vec::with_capacity(raw.len()));
    for attribute in raw {
        // SAFETY: `pValue`/`ulValueLen` describe readable memory (caller contract).
        let value = unsafe { bytes(attribute.pValue.cast::<u8>(), attribute.ulValueLen) }?;
        template.0.push(Attribute {
            kind: attribute.type_,
            value: value.to_vec(),
        });
    }
    Ok(template)
}

/// The attribute types of an output template (`C_GetAttributeValue`); the caller's
/// `pValue`/`ulValueLen` are output fields there, so they are not checked.
pub(crate) fn attribute_types(raw: &[CK_ATTRIBUTE]) -> Vec<CK_ATTRIBUTE_TYPE> {
    raw.iter().map(|a| a.type_).collect()
}

/// Read a `CK_MECHANISM`. NULL is `CKR_ARGUMENTS_BAD`.
///
/// `CKM_AES_GCM` whose parameter is exactly a `CK_GCM_PARAMS` becomes [`Mechanism::AesGcm`]
/// (a NULL `pIv`/`pAAD` with a non-zero length is `CKR_MECHANISM_PARAM_INVALID`);
/// `CKM_AES_KEY_GEN` without parameter becomes [`Mechanism::AesKeyGen`]; anything else is
/// [`Mechanism::Other`] for the core to judge.
///
/// # Safety
/// A non-NULL `ptr` must point to a readable `CK_MECHANISM` whose `pParameter`, if non-NULL,
/// is readable for `ulParameterLen` bytes (and, for GCM, whose IV/AAD pointers are readable for
/// their lengths).
pub(crate) unsafe fn mechanism(ptr: *const CK_MECHANISM) -> CkResult<Mechanism> {
    if ptr.is_null() {
        return Err(Rv::ARGUMENTS_BAD);
    }
    // SAFETY: non-NULL and readable (caller contract).
    let m = unsafe { ptr.read_unaligned() };
    let has_param = !m.pParameter.is_null() || m.ulParameterLen != 0;
    let gcm_sized = usize::try_from(m.ulParameterLen).ok() == Some(size_of::<CK_GCM_PARAMS>());
    match m.mechanism {
        CKM_AES_GCM if gcm_sized && !m.pParameter.is_null() => {
            // SAFETY: `pParameter` is readable for `ulParameterLen == size_of::<CK_GCM_PARAMS>()`
            // bytes (caller contract).
            let p = unsafe { m.pParameter.cast::<CK_GCM_PARAMS>().read_unaligned() };
            // SAFETY: IV/AAD pointers readable for their lengths (caller contract).
            unsafe { gcm_params(&p) }.map(Mechanism::AesGcm)
        }
        CKM_AES_KEY_GEN if !has_param => Ok(Mechanism::AesKeyGen),
        kind => Ok(Mechanism::Other {
            kind,
            param_len: m.ulParameterLen,
        }),
    }
}

/// Read only the type and parameter length of a `CK_MECHANISM` (the message-based `*Init`
/// calls, whose parameter is never followed: a `CK_GCM_MESSAGE_PARAMS` there has the size of a
/// `CK_GCM_PARAMS` and must not be read as one). NULL is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// A non-NULL `ptr` must point to a readable `CK_MECHANISM`.
pub(crate) unsafe fn mechanism_kind(ptr: *const CK_MECHANISM) -> CkResult<(u64, u64)> {
    if ptr.is_null() {
        return Err(Rv::ARGUMENTS_BAD);
    }
    // SAFETY: non-NULL and readable (caller contract).
    let m = unsafe { ptr.read_unaligned() };
    Ok((m.mechanism, m.ulParameterLen))
}

/// The caller's `pIv` of an AES-GCM `CK_MECHANISM` whose IV is 12 zero bytes (the zero-IV
/// convention: the IV a generating HSM used is written back there), else `None`.
///
/// # Safety
/// As [`mechanism`].
pub(crate) unsafe fn zero_gcm_iv(ptr: *const CK_MECHANISM) -> Option<*mut u8> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL and readable (caller contract).
    let m = unsafe { ptr.read_unaligned() };
    let gcm_sized = usize::try_from(m.ulParameterLen).ok() == Some(size_of::<CK_GCM_PARAMS>());
    if m.mechanism != CKM_AES_GCM || !gcm_sized || m.pParameter.is_null() {
        return None;
    }
    // SAFETY: `pParameter` is readable for a whole `CK_GCM_PARAMS` (caller contract).
    let p = unsafe { m.pParameter.cast::<CK_GCM_PARAMS>().read_unaligned() };
    if p.ulIvLen != crate::backend::GENERATED_IV_LEN as CK_ULONG || p.pIv.is_null() {
        return None;
    }
    // SAFETY: `pIv` is readable for `ulIvLen` bytes (caller contract).
    let iv = unsafe { std::slice::from_raw_parts(p.pIv, crate::backend::GENERATED_IV_LEN) };
    iv.iter().all(|b| *b == 0).then_some(p.pIv)
}

/// A `CK_GCM_MESSAGE_PARAMS` read out of caller memory: its fields for the core, and where
/// the IV and tag go back to.
pub(crate) struct MessageParams {
    pub params: GcmMessageParams,
    /// `pIv` (writable for `params.iv.len()` bytes).
    pub iv_out: *mut u8,
    /// `pTag` (writable for 16 bytes).
    pub tag_out: *mut u8,
}

/// Read a `CK_GCM_MESSAGE_PARAMS` (`pParameter`/`ulParameterLen` of a message function).
/// Anything that is not exactly one, NULL `pIv` or `pTag`, an IV over 16 bytes or a tag that is
/// not 128 bits is `CKR_MECHANISM_PARAM_INVALID` (nothing is read through such pointers). For
/// a decryption (`read_tag`) the 16 tag bytes are read from `pTag`.
///
/// # Safety
/// A non-NULL `ptr` must be readable for `len` bytes; the structure's `pIv` must be valid for
/// `ulIvLen` bytes and its `pTag` for `ulTagBits / 8` bytes (read, and written by an
/// encryption), for the whole call.
pub(crate) unsafe fn gcm_message_params(
    ptr: *const c_void,
    len: CK_ULONG,
    read_tag: bool,
) -> CkResult<MessageParams> {
    let invalid = Rv::MECHANISM_PARAM_INVALID;
    if ptr.is_null() || usize::try_from(len).ok() != Some(size_of::<CK_GCM_MESSAGE_PARAMS>()) {
        return Err(invalid);
    }
    // SAFETY: non-NULL and readable for its exact size (caller contract).
    let p = unsafe { ptr.cast::<CK_GCM_MESSAGE_PARAMS>().read_unaligned() };
    let iv_len = usize::try_from(p.ulIvLen).map_err(|_| invalid)?;
    if p.pIv.is_null() || p.pTag.is_null() || iv_len == 0 || iv_len > 16 {
        return Err(invalid);
    }
    if p.ulTagBits != crate::mechanism::GCM_TAG_BITS as CK_ULONG {
        return Err(invalid);
    }
    // SAFETY: `pIv` readable for `ulIvLen` bytes (caller contract), checked non-NULL.
    let iv = Iv::from_slice(unsafe { std::slice::from_raw_parts(p.pIv, iv_len) });
    let mut tag = [0u8; crate::mechanism::GCM_TAG_LEN];
    if read_tag {
        // SAFETY: `pTag` readable for `ulTagBits / 8` = 16 bytes (caller contract), non-NULL;
        // `tag` is our own array.
        unsafe { std::ptr::copy_nonoverlapping(p.pTag, tag.as_mut_ptr(), tag.len()) };
    }
    Ok(MessageParams {
        params: GcmMessageParams {
            generator: p.ivGenerator,
            iv,
            iv_fixed_bits: p.ulIvFixedBits,
            tag_bits: p.ulTagBits,
            tag,
        },
        iv_out: p.pIv,
        tag_out: p.pTag,
    })
}

/// Follow the pointers of a `CK_GCM_PARAMS`.
///
/// IV and AAD longer than the module's AAD limit ([`GCM_MAX_AAD`]) are refused here with the
/// same code the core would give, rather than copying an absurd caller-claimed length.
///
/// # Safety
/// `pIv`/`pAAD` must be readable for `ulIvLen`/`ulAADLen` bytes when non-NULL.
unsafe fn gcm_params(p: &CK_GCM_PARAMS) -> CkResult<GcmParams> {
    let invalid = Rv::MECHANISM_PARAM_INVALID;
    let limit = |len: CK_ULONG| match usize::try_from(len) {
        Ok(n) if n <= GCM_MAX_AAD => Ok(()),
        _ => Err(invalid),
    };
    limit(p.ulIvLen)?;
    limit(p.ulAADLen)?;
    // SAFETY: forwarded caller contract.
    let iv = Iv::from_slice(unsafe { bytes_or(p.pIv, p.ulIvLen, invalid) }?);
    // SAFETY: forwarded caller contract.
    let aad = Aad::from_slice(unsafe { bytes_or(p.pAAD, p.ulAADLen, invalid) }?);
    Ok(GcmParams {
        iv,
        iv_bits: p.ulIvBits,
        aad,
        tag_bits: p.ulTagBits,
    })
}

/// Read `C_Initialize`'s argument: NULL is `None`; otherwise what the core needs to decide.
///
/// # Safety
/// A non-NULL `ptr` must point to a readable `CK_C_INITIALIZE_ARGS`.
pub(crate) unsafe fn init_args(ptr: *const c_void) -> Option<InitArgs> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL and readable (caller contract). Function pointers are `Option`s, so a
    // NULL callback reads as `None`.
    let a = unsafe { ptr.cast::<CK_C_INITIALIZE_ARGS>().read_unaligned() };
    let callbacks = [
        a.CreateMutex.is_some(),
        a.DestroyMutex.is_some(),
        a.LockMutex.is_some(),
        a.UnlockMutex.is_some(),
    ];
    Some(InitArgs {
        callbacks_set: callbacks.iter().filter(|set| **set).count() as u8,
        os_locking_ok: a.flags & CKF_OS_LOCKING_OK != 0,
        no_os_threads: a.flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS != 0,
        reserved_non_null: !a.pReserved.is_null(),
    })
}

/// Whether a NUL-terminated C string equals `expected` (no NUL in `expected`).
///
/// # Safety
/// `ptr` must be non-NULL and point to a NUL-terminated string.
pub(crate) unsafe fn c_str_is(ptr: *const u8, expected: &[u8]) -> bool {
    // SAFETY: NUL-terminated readable string (caller contract).
    unsafe { CStr::from_ptr(ptr.cast()) }.to_bytes() == expected
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkcs11_sys::{CKA_LABEL, CKA_TOKEN, CKM_AES_CBC, CK_VOID_PTR};
    use std::ptr;

    fn attr(kind: CK_ULONG, value: &mut [u8]) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE {
            type_: kind,
            pValue: value.as_mut_ptr().cast(),
            ulValueLen: value.len() as CK_ULONG,
        }
    }

    #[test]
    fn byte_buffers() {
        // SAFETY: NULL/zero-length cases read nothing; `data` outlives the slice.
        unsafe {
            assert_eq!(bytes(ptr::null(), 0).unwrap(), &[] as &[u8]);
            assert_eq!(bytes(ptr::null(), 3).err(), Some(Rv::ARGUMENTS_BAD));
            let data = [1u8, 2, 3];
            assert_eq!(bytes(data.as_ptr(), 3).unwrap(), &data);
            assert_eq!(
                bytes(data.as_ptr(), CK_ULONG::MAX).err(),
                Some(Rv::ARGUMENTS_BAD)
            );
        }
    }

    #[test]
    fn templates() {
        let mut label = *b"xki-1";
        let mut yes = [1u8];
        let t = [attr(CKA_LABEL, &mut label), attr(CKA_TOKEN, &mut yes)];
        // SAFETY: `t` and the values it points to outlive the calls.
        unsafe {
            let read = template(t.as_ptr(), 2).unwrap();
            assert_eq!(read.len(), 2);
            assert_eq!(read[0].kind, CKA_LABEL);
            assert_eq!(read[0].value, b"xki-1");
            assert_eq!(read[1].value, [1]);
            assert!(template(ptr::null(), 0).unwrap().is_empty());
            assert_eq!(template(ptr::null(), 1).err(), Some(Rv::ARGUMENTS_BAD));
            let bad = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: ptr::null_mut(),
                ulValueLen: 4,
            }];
            assert_eq!(template(bad.as_ptr(), 1).err(), Some(Rv::ARGUMENTS_BAD));
            let empty = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            }];
            assert_eq!(template(empty.as_ptr(), 1).unwrap()[0].value, b"");
        }
    }

    fn mech(kind: CK_ULONG, param: CK_VOID_PTR, len: usize) -> CK_MECHANISM {
        CK_MECHANISM {
            mechanism: kind,
            pParameter: param,
            ulParameterLen: len as CK_ULONG,
        }
    }

    /// Parse a GCM mechanism whose parameter block is `params`, declared `len` bytes long.
    fn parse_gcm(params: &mut CK_GCM_PARAMS, len: usize) -> CkResult<Mechanism> {
        let m = mech(CKM_AES_GCM, (params as *mut CK_GCM_PARAMS).cast(), len);
        // SAFETY: `m` and `params` (and whatever it points to) are live for the call.
        unsafe { mechanism(&m) }
    }

    #[test]
    fn mechanisms() {
        let mut iv = [9u8; 12];
        let mut aad = *b"aad";
        let size = size_of::<CK_GCM_PARAMS>();
        let gcm = |iv_ptr: *mut u8, aad_ptr: *mut u8, aad_len: CK_ULONG| CK_GCM_PARAMS {
            pIv: iv_ptr,
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: aad_ptr,
            ulAADLen: aad_len,
            ulTagBits: 128,
        };
        let (ivp, aadp, null) = (iv.as_mut_ptr(), aad.as_mut_ptr(), ptr::null_mut());

        let m = parse_gcm(&mut gcm(ivp, aadp, 3), size).unwrap();
        assert_eq!(
            m,
            Mechanism::AesGcm(GcmParams {
                iv: Iv::from_slice(&[9; 12]),
                iv_bits: 96,
                aad: Aad::from_slice(b"aad"),
                tag_bits: 128
            })
        );
        // wrong parameter length: left for the core to reject
        let m = parse_gcm(&mut gcm(ivp, aadp, 3), size - 1).unwrap();
        assert_eq!(
            m,
            Mechanism::Other {
                kind: CKM_AES_GCM,
                param_len: (size - 1) as u64
            }
        );
        // NULL IV / AAD with a length
        let invalid = Some(Rv::MECHANISM_PARAM_INVALID);
        assert_eq!(parse_gcm(&mut gcm(null, aadp, 3), size).err(), invalid);
        assert_eq!(parse_gcm(&mut gcm(ivp, null, 3), size).err(), invalid);
        // NULL AAD with length 0 is fine
        let m = parse_gcm(&mut gcm(ivp, null, 0), size).unwrap();
        assert!(matches!(m, Mechanism::AesGcm(ref p) if p.aad.is_empty()));
        // an absurd AAD length is refused before anything is copied
        let huge = parse_gcm(&mut gcm(ivp, aadp, CK_ULONG::MAX), size);
        assert_eq!(huge.err(), invalid);

        // SAFETY: NULL mechanism, or mechanisms whose parameter is NULL or never read.
        unsafe {
            assert_eq!(mechanism(ptr::null()).err(), Some(Rv::ARGUMENTS_BAD));
            let m = mechanism(&mech(CKM_AES_GCM, ptr::null_mut(), size)).unwrap();
            assert!(matches!(m, Mechanism::Other { .. }));
            let m = mechanism(&mech(CKM_AES_KEY_GEN, ptr::null_mut(), 0)).unwrap();
            assert_eq!(m, Mechanism::AesKeyGen);
            let m = mechanism(&mech(CKM_AES_KEY_GEN, aadp.cast(), 3)).unwrap();
            assert_eq!(
                m,
                Mechanism::Other {
                    kind: CKM_AES_KEY_GEN,
                    param_len: 3
                }
            );
            let m = mechanism(&mech(CKM_AES_CBC, ptr::null_mut(), 0)).unwrap();
            assert_eq!(
                m,
                Mechanism::Other {
                    kind: CKM_AES_CBC,
                    param_len: 0
                }
            );
        }
    }

    unsafe extern "C" fn fake_mutex(_: CK_VOID_PTR) -> pkcs11_sys::CK_RV {
        0
    }

    #[test]
    fn initialize_args() {
        // SAFETY: NULL is read as None; otherwise a live local struct.
        unsafe {
            assert_eq!(init_args(ptr::null()), None);
            let mut a = CK_C_INITIALIZE_ARGS {
                CreateMutex: None,
                DestroyMutex: Some(fake_mutex),
                LockMutex: Some(fake_mutex),
                UnlockMutex: None,
                flags: CKF_OS_LOCKING_OK,
                pReserved: ptr::null_mut(),
            };
            let read = init_args((&a as *const CK_C_INITIALIZE_ARGS).cast()).unwrap();
            assert_eq!(
                read,
                InitArgs {
                    callbacks_set: 2,
                    os_locking_ok: true,
                    no_os_threads: false,
                    reserved_non_null: false
                }
            );
            a.flags = CKF_LIBRARY_CANT_CREATE_OS_THREADS;
            a.pReserved = (&mut a.flags as *mut CK_ULONG).cast();
            let read = init_args((&a as *const CK_C_INITIALIZE_ARGS).cast()).unwrap();
            assert!(read.no_os_threads && !read.os_locking_ok && read.reserved_non_null);
        }
    }

    #[test]
    fn c_strings() {
        // SAFETY: NUL-terminated literals.
        unsafe {
            assert!(c_str_is(c"PKCS 11".as_ptr().cast(), b"PKCS 11"));
            assert!(!c_str_is(c"PKCS 11 ".as_ptr().cast(), b"PKCS 11"));
            assert!(!c_str_is(c"".as_ptr().cast(), b"PKCS 11"));
        }
    }
}
