//! The panic firewall: every `C_*` entry point runs its body through [`guard`].
//!
//! Unwinding out of an `extern "C"` function aborts the caller's process, so a bug in the
//! module must surface as `CKR_GENERAL_ERROR` instead.
//!
//! It is also the one place a failed call is logged: `C_Login: CKR_PIN_INCORRECT`, at debug,
//! for every entry point alike, so the code that failed need not log (and nothing logs twice).

use crate::rv::{CkResult, Rv};
use pkcs11_sys::{CKR_GENERAL_ERROR, CKR_OK, CK_RV};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `body` for the C function named `function` and turn its result into a `CK_RV`.
///
/// `Ok(())` is `CKR_OK`, `Err(rv)` is `rv` (logged at debug, see [`logged`]), and a panic is
/// `CKR_GENERAL_ERROR` (logged as an error).
/// `AssertUnwindSafe` is sound here because after a panic the body's locals are gone and the
/// core keeps its shared state behind its own locks (a poisoned core state is the core's
/// business; the boundary only promises not to unwind into C).
pub(crate) fn guard<F>(function: &'static str, body: F) -> CK_RV
where
    F: FnOnce() -> CkResult<()>,
{
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => {
            if logged(rv) {
                log::debug!("{function}: {rv}");
            }
            rv.code()
        }
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

/// Whether a call's error is logged: all but `CKR_BUFFER_TOO_SMALL`, which is the two-call
/// buffer convention at work (the caller asked for the length), not a failure.
fn logged(rv: Rv) -> bool {
    rv != Rv::BUFFER_TOO_SMALL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_too_small_is_not_a_failure_to_log() {
        assert!(!logged(Rv::BUFFER_TOO_SMALL));
        assert!(logged(Rv::PIN_INCORRECT));
        assert!(logged(Rv::GENERAL_ERROR));
    }

    /// Entry names are typed once per shim (`guard("C_Login", ...)` inside `fn C_Login`); a
    /// name copied from the shim above would log and report the wrong function. Every literal
    /// name must be the name of the function it is in.
    #[test]
    fn every_guard_names_the_entry_point_it_is_in() {
        let files = [
            ("crypto.rs", include_str!("crypto.rs")),
            ("exports.rs", include_str!("exports.rs")),
            ("general.rs", include_str!("general.rs")),
            ("message.rs", include_str!("message.rs")),
            ("object.rs", include_str!("object.rs")),
            ("refused.rs", include_str!("refused.rs")),
            ("session.rs", include_str!("session.rs")),
            ("slot_token.rs", include_str!("slot_token.rs")),
            ("status.rs", include_str!("status.rs")),
            ("unsupported.rs", include_str!("unsupported.rs")),
        ];
        let mut checked = 0;
        for (file, text) in files {
            let mut current: Option<&str> = None;
            for line in text.lines() {
                if let Some(rest) = line.split_once(" fn ").map(|(_, r)| r) {
                    let name = rest.split(['(', '<']).next().unwrap();
                    current = Some(name.trim());
                }
                if let Some((_, rest)) = line.split_once("guard(\"") {
                    let name = rest.split('"').next().unwrap();
                    assert_eq!(
                        Some(name),
                        current,
                        "{file}: guard(\"{name}\") inside fn {current:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(
            checked >= 50,
            "only {checked} guard calls found: did the shims move?"
        );
    }

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
