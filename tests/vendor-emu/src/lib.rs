//! TEST-ONLY vendor-emulation PKCS#11 library (never shipped; see README.md).
//!
//! It forwards every PKCS#11 call to SoftHSM2 (`XKI_EMU_TARGET`) and changes only what the
//! emulated vendor's library does differently, for the calls that matter to xki-bridge:
//! `CK_INFO` / `CK_TOKEN_INFO` manufacturer, the GCM encryption IV convention and the
//! `C_Login` PIN format. The mode comes from `XKI_EMU_MODE`, else from the library's own file
//! name (`libxki-emu-<mode>.so`): tests copy the built `libxki_vendor_emu.so` once per mode,
//! so several modes coexist in one process (separate files are separate dlopen instances).
//!
//! Only `C_GetFunctionList` is exported: the emulated libraries are PKCS#11 2.40 ones without
//! the 3.0 message API, which is what makes their IV conventions matter.

/// Call a function of SoftHSM2's table (`CKR_FUNCTION_NOT_SUPPORTED` when it has none), with
/// the object-store lock the call needs (see `objects.rs`).
macro_rules! target {
    ($emu:expr, $f:ident ( $($arg:expr),* )) => {{
        let _guard = $crate::objects::guard_for(stringify!($f));
        match $emu.target.$f {
            Some(f) => f($($arg),*),
            None => pkcs11_sys::CKR_FUNCTION_NOT_SUPPORTED,
        }
    }};
}

mod appended;
pub mod gcm;
pub mod login;
pub mod mode;
mod objects;
mod sessions;
mod shims;
mod softhsm_fixes;
mod target;

use mode::Mode;
use pkcs11_sys::{
    CKR_ARGUMENTS_BAD, CKR_GENERAL_ERROR, CKR_OK, CK_FUNCTION_LIST, CK_FUNCTION_LIST_PTR_PTR, CK_RV,
};
use std::sync::OnceLock;

/// One loaded copy of the emulator: its mode, SoftHSM2's table, and the table it hands out.
pub(crate) struct Emu {
    pub(crate) mode: Mode,
    pub(crate) target: &'static CK_FUNCTION_LIST,
    list: CK_FUNCTION_LIST,
}

static EMU: OnceLock<Result<Emu, String>> = OnceLock::new();

/// The emulator of this copy, once `C_GetFunctionList` has set it up (the shims are only
/// reachable through the table it returns, so they always find it).
pub(crate) fn emu() -> Option<&'static Emu> {
    EMU.get().and_then(|e| e.as_ref().ok())
}

fn set_up() -> Result<Emu, String> {
    let env = std::env::var(mode::MODE_ENV).ok();
    let own = own_file_name();
    let mode = Mode::select(env.as_deref(), own.as_deref())?;
    let target = target::load()?;
    let list = shims::table(mode, target);
    Ok(Emu { mode, target, list })
}

/// The path this copy of the library was loaded from (what `dlopen` was given).
fn own_file_name() -> Option<String> {
    // SAFETY: Dl_info is plain data; all-zero is a valid (empty) value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = C_GetFunctionList as *const libc::c_void;
    // SAFETY: `addr` is a function of this library; `info` is a valid out-pointer.
    let found = unsafe { libc::dladdr(addr, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr set dli_fname to a NUL-terminated string owned by the loader, valid
    // while the library is loaded; it is copied at once.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    Some(name.to_string_lossy().into_owned())
}

/// `C_GetFunctionList`: the emulator's table (SoftHSM2's, with the mode's overrides).
///
/// # Safety
/// `list` must be NULL or valid for writing one pointer (PKCS#11 v2.40 §5.4).
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    match EMU.get_or_init(set_up) {
        Ok(emu) => {
            // SAFETY: `list` is non-NULL and writable (caller contract); the table lives in a
            // static for the life of the library. PKCS#11 hands out a mutable pointer to a
            // table callers must not modify.
            unsafe { *list = &emu.list as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
            CKR_OK
        }
        Err(why) => {
            eprintln!("xki vendor emulator: {why}");
            CKR_GENERAL_ERROR
        }
    }
}
