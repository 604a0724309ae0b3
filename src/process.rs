//! What this library leaves in its host process: `pthread_atfork` and `atexit` handlers, and
//! the pin that keeps the library mapped for the rest of the process once anything
//! process-wide points into it (those handlers, the audit flusher thread). A host that
//! `dlclose`s the module after `C_Finalize` and later forks or exits would otherwise run
//! handlers in unmapped memory. One home for these, so every registration pins first.

use std::sync::Once;

/// A fork or exit handler: a plain function of this library that never unwinds (a panic in it
/// would unwind into the C runtime) and, in a fork child, calls only async-signal-safe code.
pub(crate) type Handler = extern "C" fn();

/// Register fork handlers (`pthread_atfork`): `prepare` runs in the parent before `fork()`
/// (handlers registered later run first), `parent` and `child` after it, in each process.
/// Pins the library first. Callers register once (a `Once` of their own).
pub(crate) fn on_fork(prepare: Option<Handler>, parent: Option<Handler>, child: Option<Handler>) {
    pin_this_library();
    // SAFETY: the handlers are `extern "C"` functions of this library (the `Handler` type),
    // which the pin just above keeps mapped for the life of the process; by `Handler`'s
    // contract they never unwind.
    unsafe {
        libc::pthread_atfork(
            prepare.map(|f| f as unsafe extern "C" fn()),
            parent.map(|f| f as unsafe extern "C" fn()),
            child.map(|f| f as unsafe extern "C" fn()),
        );
    }
}

/// Register a process-exit handler (`atexit`). Pins the library first.
pub(crate) fn on_exit(handler: Handler) {
    pin_this_library();
    // SAFETY: as in `on_fork`: a never-unwinding function of this library, kept mapped.
    unsafe {
        libc::atexit(handler);
    }
}

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
