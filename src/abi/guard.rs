//! The panic firewall: every `C_*` entry point runs its body through [`guard`].
//!
//! Unwinding out of an `extern "C"` function aborts the caller's process, so a bug in the
//! module must surface as `CKR_GENERAL_ERROR` instead.

use crate::rv::CkResult;
use pkcs11_sys::{CKR_GENERAL_ERROR, CKR_OK, CK_RV};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `body` for the C function named `function` and turn its result into a `CK_RV`.
///
/// `Ok(())` is `CKR_OK`, `Err(rv)` is `rv`, and a panic is `CKR_GENERAL_ERROR`.
/// `AssertUnwindSafe` is sound here because after a panic the body's locals are gone and the
/// core keeps its shared state behind its own locks (a poisoned core state is the core's
/// business; the boundary only promises not to unwind into C).
pub(crate) fn guard<F>(function: &'static str, body: F) -> CK_RV
where
    F: FnOnce() -> CkResult<()>,
{
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => rv.code(),
        Err(payload) => {
            // Dropping the payload or logging could in theory panic again; neither may escape.
            // The payload itself is never logged: a panic message might quote data.
            let _ = catch_unwind(AssertUnwindSafe(move || {
                drop(payload);
                log::error!("{function}: internal error (panic caught at the C boundary)");
            }));
            CKR_GENERAL_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rv::Rv;

    #[test]
    fn ok_error_and_panic_map_to_ck_rv() {
        assert_eq!(guard("C_Test", || Ok(())), CKR_OK);
        assert_eq!(
            guard("C_Test", || Err(Rv::PIN_INCORRECT)),
            pkcs11_sys::CKR_PIN_INCORRECT
        );
        assert_eq!(
            guard("C_Test", || -> CkResult<()> { panic!("boom") }),
            CKR_GENERAL_ERROR
        );
    }
}
