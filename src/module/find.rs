//! The key search behind `C_FindObjectsInit`: narrowed to the label/ID the caller's template
//! names, so a consumer that looks its key up before every operation costs the token one
//! narrowed `C_FindObjects` and one attribute read per matching key, not a read of every key.
//!
//! Only immutable facts may come from an earlier read (the pkcs11 backend takes a key's
//! `CKA_ID` from its last read of the same handle under the same label); existence, label and
//! usage flags are read on every find, so keys created, renamed, disabled or
//! destroyed by another process are seen by the next find. The narrowed result is used only
//! when each key in it is already known to the module under the same backend reference;
//! anything new (a first sight, a key whose identity moved to another object) takes the full
//! listing, so the duplicate-identity rule of `Slot::visible_keys` decides as before.

use super::*;
use crate::backend::{KeyInfo, KeyQuery};

/// The label and ID a template pins down (the first of each, if given twice the template
/// check on the result rejects every key anyway).
fn query_of(template: &[Attribute]) -> KeyQuery {
    let first = |kind| {
        template
            .iter()
            .find(|a| a.kind == kind)
            .map(|a| a.value.clone())
    };
    KeyQuery {
        label: first(CKA_LABEL),
        id: first(CKA_ID),
        dates: template
            .iter()
            .any(|a| a.kind == CKA_START_DATE || a.kind == CKA_END_DATE),
    }
}

/// The slot's visible keys that may match `template` (the caller still checks the whole
/// template on each).
pub(super) fn matching_keys(
    m: &Module,
    s: &SlotState,
    index: usize,
    template: &[Attribute],
) -> CkResult<Vec<KeyInfo>> {
    let query = query_of(template);
    if !query.is_empty() {
        let keys = s.slot.visible_keys_matching(&query)?;
        if keys.iter().all(|k| m.objects.knows(index, k)) {
            return Ok(keys);
        }
    }
    s.slot.visible_keys()
}
