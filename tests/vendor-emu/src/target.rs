//! The real token behind the emulator: SoftHSM2 (or `XKI_EMU_TARGET`), loaded with `dlopen`
//! once per copy of the emulator and never unloaded (its function pointers are handed out).

use pkcs11_sys::{CKR_OK, CK_FUNCTION_LIST, CK_FUNCTION_LIST_PTR, CK_FUNCTION_LIST_PTR_PTR, CK_RV};
use std::ffi::{CStr, CString};

/// The environment variable naming the library to forward to.
pub const TARGET_ENV: &str = "XKI_EMU_TARGET";
/// SoftHSM2 as Debian installs it.
pub const DEFAULT_TARGET: &str = "/usr/lib/softhsm/libsofthsm2.so";

type GetFunctionList = unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV;

/// Load the target library and return its function list.
pub fn load() -> Result<&'static CK_FUNCTION_LIST, String> {
    let path = std::env::var(TARGET_ENV).unwrap_or_else(|_| DEFAULT_TARGET.to_string());
    let c_path = CString::new(path.clone()).map_err(|_| format!("{TARGET_ENV} contains NUL"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string for the duration of the call.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!("dlopen({path}): {}", dl_error()));
    }
    // SAFETY: `handle` is a live handle from dlopen; the symbol name is NUL-terminated.
    let sym = unsafe { libc::dlsym(handle, c"C_GetFunctionList".as_ptr()) };
    if sym.is_null() {
        return Err(format!("{path} has no C_GetFunctionList: {}", dl_error()));
    }
    // SAFETY: PKCS#11 fixes the signature of C_GetFunctionList; the symbol is that function.
    let get: GetFunctionList = unsafe { std::mem::transmute::<*mut libc::c_void, _>(sym) };
    let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer for the call.
    let rv = unsafe { get(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!("{path}: C_GetFunctionList returned {rv:#x}"));
    }
    // SAFETY: the library is never unloaded, and PKCS#11 says the list it returns stays valid
    // (and unchanged) while the library is loaded.
    Ok(unsafe { &*list })
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call
    // on this thread; it is copied at once.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-NULL, NUL-terminated (see above).
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    }
}
