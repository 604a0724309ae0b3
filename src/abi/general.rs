//! General-purpose functions: `C_Initialize`, `C_Finalize`, `C_GetInfo`.

use super::guard::guard;
use super::{args, buffers::Out, info};
use crate::api;
use crate::rv::Rv;
use pkcs11_sys::{CK_INFO_PTR, CK_RV, CK_VOID_PTR};

/// `C_Initialize`: `CK_C_INITIALIZE_ARGS` (if any) is read and the core decides the answer
/// (mutex callbacks, `CKF_OS_LOCKING_OK`, `pReserved`).
pub(crate) unsafe extern "C" fn C_Initialize(pInitArgs: CK_VOID_PTR) -> CK_RV {
    guard("C_Initialize", || {
        // SAFETY: PKCS#11 requires a non-NULL pInitArgs to point to CK_C_INITIALIZE_ARGS.
        let init = unsafe { args::init_args(pInitArgs) };
        api::initialize(init)
    })
}

/// `C_Finalize`: `pReserved` must be NULL.
pub(crate) unsafe extern "C" fn C_Finalize(pReserved: CK_VOID_PTR) -> CK_RV {
    guard("C_Finalize", || {
        if !pReserved.is_null() {
            return Err(Rv::ARGUMENTS_BAD);
        }
        api::finalize()
    })
}

/// `C_GetInfo`.
pub(crate) unsafe extern "C" fn C_GetInfo(pInfo: CK_INFO_PTR) -> CK_RV {
    guard("C_GetInfo", || {
        // SAFETY: a non-NULL pInfo points to a caller-owned CK_INFO (PKCS#11 contract).
        let out = unsafe { Out::new(pInfo) }?;
        out.write(info::ck_info(&api::get_info()?));
        Ok(())
    })
}
