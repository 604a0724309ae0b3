//! The vendor library's own `C_EncryptInit`/`C_Encrypt`/`C_DecryptInit`/`C_Decrypt`, called
//! directly for single-part AES-GCM: every `unsafe` of the pkcs11 backend lives here.
//!
//! Why: cryptoki 0.12's `Session::encrypt`/`decrypt` always ask the library for the output
//! length first (a second `C_Encrypt`/`C_Decrypt` with a NULL buffer), which doubles the
//! library calls of every operation. The GCM output length is known in advance (plaintext + tag
//! on the way in, at most the ciphertext length on the way out), so one call with a buffer of
//! that size does the job. `CKR_BUFFER_TOO_SMALL` cannot happen with those sizes; if a library
//! says it anyway, the buffer is grown to the size it asked for and the call repeated (the
//! specification keeps the operation active after that answer). A library that still says it,
//! or claims to have written more than the buffer holds, gets `CKR_DEVICE_ERROR` (its session
//! is discarded, see `calls.rs`).
//!
//! Where the table comes from: the library cryptoki already loaded (same canonical path),
//! opened again with `RTLD_NOLOAD` so it can only ever be that same mapping, and asked for its
//! `C_GetFunctionList` table. That handle is never closed, so the table outlives every caller
//! (the registry in `library.rs` never unloads a library either). Session and object handles
//! are cryptoki's own (`Session::handle`, `ObjectHandle::handle`), so pooling, login, retry
//! and quirk handling stay exactly as they are; errors come back as cryptoki `Error`s naming
//! the failing step, so `quirks.rs` maps them as before.

use crate::secret::SecretBytes;
use cryptoki::context::Function;
use cryptoki::error::{Error, Rv as CkRv};
use pkcs11_sys::*;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

type InitFn = unsafe extern "C" fn(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE) -> CK_RV;
type CryptFn = unsafe extern "C" fn(
    CK_SESSION_HANDLE,
    CK_BYTE_PTR,
    CK_ULONG,
    CK_BYTE_PTR,
    CK_ULONG_PTR,
) -> CK_RV;

/// The four entry points of one loaded library used for single-part GCM.
#[derive(Clone, Copy)]
pub(crate) struct GcmCalls {
    encrypt_init: InitFn,
    encrypt: CryptFn,
    decrypt_init: InitFn,
    decrypt: CryptFn,
}

impl std::fmt::Debug for GcmCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GcmCalls")
    }
}

/// The IV fields of one `CK_GCM_PARAMS`: NULL with length 0, or a buffer valid for `len`
/// bytes for the whole operation.
struct IvArg {
    ptr: CK_BYTE_PTR,
    len: CK_ULONG,
    bits: CK_ULONG,
}

/// One GCM operation's parameters, borrowed for the duration of the call.
pub(crate) struct Gcm<'a> {
    pub session: CK_SESSION_HANDLE,
    pub key: CK_OBJECT_HANDLE,
    pub iv: &'a [u8],
    pub aad: &'a [u8],
    pub tag_bits: u64,
}

impl GcmCalls {
    /// The entry points of the library at `path`, which must already be loaded by cryptoki.
    /// `None` (and the caller keeps using cryptoki's calls) if anything is missing.
    pub(crate) fn of_loaded(path: &Path) -> Option<GcmCalls> {
        let table = loaded_function_list(path)?;
        Some(GcmCalls {
            encrypt_init: table.C_EncryptInit?,
            encrypt: table.C_Encrypt?,
            decrypt_init: table.C_DecryptInit?,
            decrypt: table.C_Decrypt?,
        })
    }

    /// Single-part GCM encryption straight into `out` (at least plaintext + tag long):
    /// ciphertext followed by the tag; returns the bytes written.
    pub(crate) fn encrypt_into(
        &self,
        op: &Gcm<'_>,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        self.init(self.encrypt_init, Function::EncryptInit, op)?;
        let mut spill = Vec::new();
        self.run_into(
            self.encrypt,
            Function::Encrypt,
            op,
            plaintext,
            out,
            &mut spill,
        )
    }

    /// Single-part GCM decryption (tag checked by the library) straight into `out`; returns
    /// the plaintext length. The plaintext is never longer than the input, but some libraries
    /// (SoftHSM2) want room for the whole input before they check the tag, so `out` is at least
    /// that long.
    pub(crate) fn decrypt_into(
        &self,
        op: &Gcm<'_>,
        ciphertext_and_tag: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        self.init(self.decrypt_init, Function::DecryptInit, op)?;
        let mut spill = SecretBytes::default();
        self.run_into(
            self.decrypt,
            Function::Decrypt,
            op,
            ciphertext_and_tag,
            out,
            &mut spill,
        )
    }

    /// GCM encryption under an IV the HSM generates and writes into `iv` (AWS CloudHSM,
    /// nShield): `iv` goes in as zeros and holds the IV used afterwards. `op.iv` is ignored.
    pub(crate) fn encrypt_iv_written_back(
        &self,
        op: &Gcm<'_>,
        iv: &mut [u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let iv_len = CK_ULONG::try_from(iv.len())?;
        // `iv` is borrowed mutably for this whole function, so the library may write it during
        // C_EncryptInit (CloudHSM) or C_Encrypt alike.
        let iv_arg = IvArg {
            ptr: iv.as_mut_ptr(),
            len: iv_len,
            bits: iv_len.saturating_mul(8),
        };
        self.init_with(self.encrypt_init, Function::EncryptInit, op, iv_arg)?;
        let mut spill = Vec::new();
        self.run_into(
            self.encrypt,
            Function::Encrypt,
            op,
            plaintext,
            out,
            &mut spill,
        )
    }

    /// GCM encryption under an IV the HSM generates and appends to its output (Luna in FIPS
    /// mode): `pIv` = NULL, `ulIvLen` = 0, `ulIvBits` = 96 (the 96-bit IV Luna firmware 7.9.3
    /// and later generate for that; older firmware appends 16 bytes). `out` holds plaintext +
    /// tag + 16; the result is ciphertext || tag || IV. `op.iv` is ignored.
    pub(crate) fn encrypt_iv_appended(
        &self,
        op: &Gcm<'_>,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let iv_arg = IvArg {
            ptr: std::ptr::null_mut(),
            len: 0,
            bits: 96,
        };
        self.init_with(self.encrypt_init, Function::EncryptInit, op, iv_arg)?;
        let mut spill = Vec::new();
        self.run_into(
            self.encrypt,
            Function::Encrypt,
            op,
            plaintext,
            out,
            &mut spill,
        )
    }

    fn init(&self, f: InitFn, function: Function, op: &Gcm<'_>) -> Result<(), Error> {
        let iv_len = CK_ULONG::try_from(op.iv.len())?;
        // The library only reads a caller-supplied IV (GCM never writes it back then), so
        // lending our immutable slice as `*mut` is sound.
        let iv_arg = IvArg {
            ptr: op.iv.as_ptr() as CK_BYTE_PTR,
            len: iv_len,
            bits: iv_len.saturating_mul(8),
        };
        self.init_with(f, function, op, iv_arg)
    }

    fn init_with(
        &self,
        f: InitFn,
        function: Function,
        op: &Gcm<'_>,
        iv: IvArg,
    ) -> Result<(), Error> {
        let aad_len = CK_ULONG::try_from(op.aad.len())?;
        let mut params = CK_GCM_PARAMS {
            // The library only reads the AAD, so lending our immutable slice as `*mut` is
            // sound; the IV pointer is as the caller of `init_with` describes it.
            pIv: iv.ptr,
            ulIvLen: iv.len,
            ulIvBits: iv.bits,
            pAAD: if op.aad.is_empty() {
                std::ptr::null_mut()
            } else {
                op.aad.as_ptr() as CK_BYTE_PTR
            },
            ulAADLen: aad_len,
            ulTagBits: op.tag_bits as CK_ULONG,
        };
        let mut mechanism = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&mut params as *mut CK_GCM_PARAMS).cast(),
            ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        // SAFETY: `mechanism` and the `params` it points to live on this stack frame for the
        // whole call; `params` points into `op.aad` and the IV buffer of `iv` (NULL with length
        // 0, or valid for `iv.len` bytes and writable where the library may write it), both
        // borrowed for the call, with their exact lengths. The library copies what it needs
        // during C_*Init (PKCS#11 §5.2); a write-back library may write the IV buffer up to the
        // end of the operation, which `encrypt_iv_written_back` keeps borrowed until then.
        let rv = unsafe { f(op.session, &mut mechanism, op.key) };
        check(rv, function)
    }

    /// One `C_Encrypt`/`C_Decrypt` into `out`, sized `expected` (grown once on
    /// `CKR_BUFFER_TOO_SMALL`), truncated to what the library wrote.
    fn run(
        &self,
        f: CryptFn,
        function: Function,
        session: CK_SESSION_HANDLE,
        input: &[u8],
        out: &mut Vec<u8>,
        expected: usize,
    ) -> Result<(), Error> {
        let in_len = CK_ULONG::try_from(input.len())?;
        let mut size = expected;
        for _ in 0..2 {
            // Never hand out a zero-length (dangling) buffer: a NULL-or-dangling output
            // pointer with length 0 is where libraries disagree.
            out.resize(size.max(1), 0);
            let mut out_len = CK_ULONG::try_from(size)?;
            // SAFETY: `input` is valid for `in_len` bytes and only read (PKCS#11 declares it
            // non-const for historical reasons). `out` is valid for writes of `out.len() >=
            // out_len` bytes and `out_len` is a valid in/out pointer, all for the whole call.
            let rv = unsafe {
                f(
                    session,
                    input.as_ptr() as CK_BYTE_PTR,
                    in_len,
                    out.as_mut_ptr(),
                    &mut out_len,
                )
            };
            let written = usize::try_from(out_len).map_err(|_| broken_library(function))?;
            if rv == CKR_BUFFER_TOO_SMALL && written > size {
                // The operation is still active (PKCS#11 §5.2): retry once with the size asked.
                size = written;
                continue;
            }
            check(rv, function)?;
            if written > out.len() {
                // A library claiming to have written past our buffer: never trust that.
                return Err(broken_library(function));
            }
            out.truncate(written);
            return Ok(());
        }
        // Still too small after growing to the size it asked for: the library is confused.
        Err(broken_library(function))
    }
}

impl GcmCalls {
    /// One `C_Encrypt`/`C_Decrypt` into the caller's `out`. A library that wants more room
    /// than `out` has (`CKR_BUFFER_TOO_SMALL`: the operation stays active) finishes the call
    /// into `spill`, sized as it asked, and the result is copied over if it fits.
    fn run_into(
        &self,
        f: CryptFn,
        function: Function,
        op: &Gcm<'_>,
        input: &[u8],
        out: &mut [u8],
        spill: &mut Vec<u8>,
    ) -> Result<usize, Error> {
        if out.is_empty() {
            // Never a zero-length buffer (see `run`): through `spill` instead.
            self.run(f, function, op.session, input, spill, 1)?;
            return copy_spill(spill, out, function);
        }
        let in_len = CK_ULONG::try_from(input.len())?;
        let mut out_len = CK_ULONG::try_from(out.len())?;
        // SAFETY: as in `run`: `input` is valid for `in_len` bytes and only read; `out` is
        // valid for writes of `out_len` bytes; `out_len` is a valid in/out pointer; all for
        // the whole call, and the two buffers are distinct Rust borrows (no overlap).
        let rv = unsafe {
            f(
                op.session,
                input.as_ptr() as CK_BYTE_PTR,
                in_len,
                out.as_mut_ptr(),
                &mut out_len,
            )
        };
        let written = usize::try_from(out_len).map_err(|_| broken_library(function))?;
        if rv == CKR_BUFFER_TOO_SMALL && written > out.len() {
            self.run(f, function, op.session, input, spill, written)?;
            return copy_spill(spill, out, function);
        }
        check(rv, function)?;
        if written > out.len() {
            return Err(broken_library(function));
        }
        Ok(written)
    }
}

/// The result a library produced in the spill buffer, copied into `out`.
fn copy_spill(spill: &[u8], out: &mut [u8], function: Function) -> Result<usize, Error> {
    let dst = out
        .get_mut(..spill.len())
        .ok_or_else(|| broken_library(function))?;
    dst.copy_from_slice(spill);
    Ok(spill.len())
}

/// `CKR_OK`, or the error naming `function`. The common case is one comparison: cryptoki's
/// `Rv::from` is a match over every return code, paid on each call otherwise.
fn check(rv: CK_RV, function: Function) -> Result<(), Error> {
    if rv == CKR_OK {
        return Ok(());
    }
    CkRv::from(rv).into_result(function)
}

/// A library that broke the buffer contract. Reported as `CKR_DEVICE_ERROR`, a session-level
/// fault: the backend discards the session (whose operation may still be active after a
/// `CKR_BUFFER_TOO_SMALL` that was never satisfied) instead of returning it to the pool.
fn broken_library(function: Function) -> Error {
    Error::Pkcs11(cryptoki::error::RvError::DeviceError, function)
}

/// The function table of the library at `path`, which must already be loaded (by cryptoki):
/// `None` if it is not loaded or has no usable `C_GetFunctionList`. The library is never
/// loaded, initialised or unloaded here, so the table stays valid for the process's life.
pub(crate) fn loaded_function_list(path: &Path) -> Option<&'static CK_FUNCTION_LIST> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    // RTLD_NOLOAD never loads anything: it only returns (and references) a library already
    // mapped in this process, so no initialiser of the vendor library runs here.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return None;
    }
    // Deliberately never dlclose'd: the table below must stay valid for the process life.
    // SAFETY: `handle` is a live dlopen handle and the symbol name is NUL-terminated.
    let sym = unsafe { libc::dlsym(handle, c"C_GetFunctionList".as_ptr()) };
    if sym.is_null() {
        return None;
    }
    // SAFETY: PKCS#11 defines `C_GetFunctionList` with exactly this C signature.
    let get_list: unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV =
        unsafe { std::mem::transmute::<*mut libc::c_void, _>(sym) };
    let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer; C_GetFunctionList may be called before
    // C_Initialize and only writes the table's address there.
    let rv = unsafe { get_list(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return None;
    }
    // SAFETY: on CKR_OK the library returned a pointer to its own static, read-only table,
    // valid while the library stays loaded (forever, see above). Only the 2.x layout is
    // read, which every version of the table starts with.
    Some(unsafe { &*list })
}
