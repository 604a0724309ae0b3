//! The key search behind `C_FindObjectsInit`: narrowed to the label/ID the caller's template
//! names, so a consumer that looks its key up before every operation costs the token one
//! narrowed `C_FindObjects` and one attribute read per matching key, not a read of every key.
//!
//! Only facts that cannot change may come from an earlier read (see `KeyQuery::mutable`):
//! existence and label are read on every find, usage flags and dates whenever the template
//! names them (and on every `C_GetAttributeValue`), so keys created, renamed, disabled or
//! destroyed by another process are seen by the next find. The narrowed result is used only
//! when each key in it is already known to the module under the same backend reference;
//! anything new (a first sight, a key whose identity moved to another object) takes the full
//! listing, so the duplicate-identity rule of `Slot::visible_keys` decides as before.

use super::*;
use crate::backend::{KeyInfo, KeyQuery};

/// Attributes a template may name without making the backend re-read keys it has read
/// before (see `KeyQuery::mutable`): the label and ID (matched by the token itself) and what
/// cannot change for a key that was admissible once.
const SETTLED: [CK_ATTRIBUTE_TYPE; 11] = [
    CKA_CLASS,
    CKA_LABEL,
    CKA_ID,
    CKA_KEY_TYPE,
    CKA_VALUE_LEN,
    CKA_TOKEN,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_LOCAL,
];

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
        mutable: template.iter().any(|a| !SETTLED.contains(&a.kind)),
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
