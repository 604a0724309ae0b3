//! The module's `XKI Status` vendor interface (include/xki_pkcs11.h): per-member health of a
//! replica group slot, read here to see members leave and rejoin service and carry calls.

use pkcs11_sys::*;
use std::path::Path;

// The module's own definitions of the include/xki_pkcs11.h layouts (tests/replica_module.rs
// keeps an independent copy on purpose, as a consumer's reading of the header).
use xki_pkcs11::abi::status::{
    XkiMemberStatus as MemberStatus, XkiStatusFunctionList as StatusList,
};

/// The module's `XKI Status` vendor interface for one slot.
pub struct Status {
    list: &'static StatusList,
    slot: CK_SLOT_ID,
}

impl Status {
    /// Find the interface in the already loaded module at `so`.
    pub fn open(so: &Path, slot: u64) -> Result<Status, String> {
        let path = std::ffi::CString::new(so.as_os_str().as_encoded_bytes())
            .map_err(|_| "module path has a NUL byte".to_string())?;
        // SAFETY: dlopen/dlsym get valid NUL-terminated strings; the handle is the library
        // cryptoki already loaded (same path), never closed, so the tables stay valid; the
        // symbol has the PKCS#11 C_GetInterface signature and the interface named
        // "XKI Status" has the layout declared above (include/xki_pkcs11.h, version 1.0).
        unsafe {
            let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if lib.is_null() {
                return Err("dlopen of the module failed".into());
            }
            let sym = libc::dlsym(lib, c"C_GetInterface".as_ptr());
            if sym.is_null() {
                return Err("the module has no C_GetInterface".into());
            }
            let get: CK_C_GetInterface = std::mem::transmute(sym);
            let get = get.ok_or("C_GetInterface is null")?;
            let mut iface: CK_INTERFACE_PTR = std::ptr::null_mut();
            let name = c"XKI Status".as_ptr().cast_mut().cast();
            let rv = get(name, std::ptr::null_mut(), &mut iface, 0);
            if rv != CKR_OK || iface.is_null() {
                return Err(format!("C_GetInterface(\"XKI Status\"): {rv:#x}"));
            }
            let list = &*(*iface).pFunctionList.cast::<StatusList>();
            Ok(Status { list, slot })
        }
    }

    /// (state, in_flight) of member `index` (state 0 = in service).
    pub fn member(&self, index: u64) -> Result<(u64, u64), String> {
        // SAFETY: a zeroed out-struct of the documented layout, alive for the call.
        unsafe {
            let mut s: MemberStatus = std::mem::zeroed();
            let rv = (self.list.XKI_GetMemberStatus)(self.slot, index, &mut s);
            if rv != CKR_OK {
                return Err(format!("XKI_GetMemberStatus: {rv:#x}"));
            }
            Ok((s.state, s.inFlight))
        }
    }
}

/// While `busy` runs (traffic on the group slot), sample both members' `in_flight` every
/// 100 µs; returns, per member, the share of samples in which it had a call in flight.
pub fn spread(status: &Status, busy: impl FnOnce() + Send) -> Result<[f64; 2], String> {
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut seen = [0u64; 2];
    let mut samples = 0u64;
    let mut err = None;
    std::thread::scope(|scope| {
        let done = &done;
        scope.spawn(move || {
            busy();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            for (i, n) in seen.iter_mut().enumerate() {
                match status.member(i as u64) {
                    Ok((_, in_flight)) => *n += u64::from(in_flight > 0),
                    Err(e) => err = Some(e),
                }
            }
            samples += 1;
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(seen.map(|n| n as f64 / samples.max(1) as f64)),
    }
}
