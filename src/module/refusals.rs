//! The refused key-material paths and the functions the module does not offer.

use super::*;

pub(super) fn refused<T>(s: &SlotState, function: &str, key: &[u8], rv: Rv) -> CkResult<T> {
    audit::refusal(function, &s.slot.label, key, rv).map(|_| unreachable!("refusal is Err"))
}

pub fn wrap_key(session: u64, _mechanism: &Mechanism, wrapping_key: u64, key: u64) -> CkResult<()> {
    let m = module()?;
    let (s, index, _) = m.session(session)?;
    let e = m.key(s, index, key, Rv::KEY_HANDLE_INVALID)?;
    m.key(s, index, wrapping_key, Rv(CKR_WRAPPING_KEY_HANDLE_INVALID))?;
    refused(s, "C_WrapKey", &e.label, Rv::KEY_UNEXTRACTABLE)
}

pub fn unwrap_key(
    session: u64,
    _mechanism: &Mechanism,
    unwrapping_key: u64,
    _template: &[Attribute],
) -> CkResult<()> {
    let m = module()?;
    let (s, index, _) = m.session(session)?;
    let e = m.key(
        s,
        index,
        unwrapping_key,
        Rv(CKR_UNWRAPPING_KEY_HANDLE_INVALID),
    )?;
    // Keys are generated inside the HSM; importing key material is never allowed.
    refused(s, "C_UnwrapKey", &e.label, Rv::KEY_FUNCTION_NOT_PERMITTED)
}

pub fn derive_key(
    session: u64,
    _mechanism: &Mechanism,
    base_key: u64,
    _template: &[Attribute],
) -> CkResult<()> {
    let m = module()?;
    let (s, index, _) = m.session(session)?;
    let e = m.key(s, index, base_key, Rv::KEY_HANDLE_INVALID)?;
    refused(s, "C_DeriveKey", &e.label, Rv::KEY_FUNCTION_NOT_PERMITTED)
}

pub fn digest_key(session: u64, key: u64) -> CkResult<()> {
    let m = module()?;
    let (s, index, _) = m.session(session)?;
    let e = m.key(s, index, key, Rv::KEY_HANDLE_INVALID)?;
    refused(s, "C_DigestKey", &e.label, Rv(CKR_KEY_INDIGESTIBLE))
}

pub fn get_operation_state(session: u64) -> CkResult<()> {
    let m = module()?;
    let (s, _, _) = m.session(session)?;
    refused(s, "C_GetOperationState", b"", Rv::STATE_UNSAVEABLE)
}

pub fn set_operation_state(session: u64) -> CkResult<()> {
    let m = module()?;
    let (s, _, _) = m.session(session)?;
    refused(s, "C_SetOperationState", b"", Rv::SAVED_STATE_INVALID)
}

pub fn not_supported(_function: &'static str) -> CkResult<()> {
    module()?;
    Err(Rv::FUNCTION_NOT_SUPPORTED)
}
