//! Keeping this library mapped for the rest of the process once anything process-wide points
//! into it: `pthread_atfork` and `atexit` handlers, the audit flusher thread. A host that
//! `dlclose`s the module after `C_Finalize` and later forks or exits would otherwise run
//! handlers in unmapped memory.

use std::sync::Once;

/// Pin this library (once per process): an extra reference with `RTLD_NODELETE`, never closed.
pub(crate) fn pin_this_library() {
    static PINNED: Once = Once::new();
    PINNED.call_once(|| {
        // SAFETY: `Dl_info` is a plain C struct of pointers, for which all-zero is valid.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        let addr = pin_this_library as *const libc::c_void;
        // SAFETY: `addr` is a code address in this object and `info` is a valid out-struct;
        // dladdr only fills it in (pointers into the loader's own strings).
        let found = unsafe { libc::dladdr(addr, &mut info) } != 0;
        if found && !info.dli_fname.is_null() {
            // SAFETY: `dli_fname` is the NUL-terminated path of an object already loaded;
            // RTLD_NOLOAD only adds a reference to it and RTLD_NODELETE forbids its unloading.
            // The handle is deliberately never closed.
            unsafe {
                libc::dlopen(
                    info.dli_fname,
                    libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
                );
            }
        }
    });
}
