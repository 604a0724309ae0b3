//! The never-export rule, in one place.
//!
//! - Which backend keys are visible at all ([`key_is_admissible`]).
//! - What `C_GetAttributeValue` may answer ([`public_attribute`]): public attributes only;
//!   `CKA_VALUE` is always `CKR_ATTRIBUTE_SENSITIVE`.
//! - What `C_SetAttributeValue` may change ([`attribute_changes`]): label, usage and dates;
//!   nothing that could make a key extractable or non-sensitive.
//!   The key-state attributes (`CKA_XKI_*`) are not key attributes in this sense: the module
//!   routes them to `crate::keystate` before this filter.
//! - What `C_GenerateKey` may ask for ([`generation_request`]): a weaker template is rejected,
//!   never silently fixed.
//! - Which GCM parameters are accepted ([`gcm_params`]).
//!
//! Every function here is pure: it looks only at its arguments, so the rule is unit-testable
//! without a token.

use crate::api::{Attribute, AttributeAnswer};
use crate::backend::{KeyChanges, KeyInfo};
use crate::mechanism::{GcmParams, Mechanism, GCM_IV_LENS, GCM_MAX_AAD, GCM_TAG_BITS};
use crate::rv::{CkResult, Rv};
use pkcs11_sys::*;

/// The only key length the module admits (AES-256).
pub const KEY_LEN: u64 = 32;

/// Mechanisms the module offers, in the order `C_GetMechanismList` reports them.
pub const MECHANISMS: [CK_MECHANISM_TYPE; 2] = [CKM_AES_KEY_GEN, CKM_AES_GCM];

/// Whether a backend key may be seen through the module at all: an AES-256 token key that is
/// sensitive, not extractable, and (where the backend reports it) always sensitive and never
/// extractable. Anything else stays invisible, so no handle to it can ever be obtained.
pub fn key_is_admissible(key: &KeyInfo) -> bool {
    key.key_type == CKK_AES
        && key.value_len == KEY_LEN
        && key.token
        && key.sensitive
        && !key.extractable
        && key.always_sensitive != Some(false)
        && key.never_extractable != Some(false)
}

/// The CKF_* flags the module reports for one of its mechanisms, independent of what the
/// backend ORs in: we only ever do these operations with them.
pub fn mechanism_flags(mechanism: CK_MECHANISM_TYPE) -> Option<CK_FLAGS> {
    match mechanism {
        CKM_AES_GCM => Some(CKF_ENCRYPT | CKF_DECRYPT),
        CKM_AES_KEY_GEN => Some(CKF_GENERATE),
        _ => None,
    }
}

fn ulong(v: u64) -> Vec<u8> {
    (v as CK_ULONG).to_ne_bytes().to_vec()
}

fn bool_byte(v: bool) -> Vec<u8> {
    vec![v as u8]
}

/// Answer one attribute of a visible key. `destroyable` is the slot's deletion setting.
pub fn public_attribute(
    key: &KeyInfo,
    kind: CK_ATTRIBUTE_TYPE,
    destroyable: bool,
) -> AttributeAnswer {
    use AttributeAnswer::{Invalid, Sensitive, Value};
    match kind {
        CKA_VALUE => Sensitive,
        CKA_CLASS => Value(ulong(CKO_SECRET_KEY)),
        CKA_KEY_TYPE => Value(ulong(key.key_type)),
        CKA_VALUE_LEN => Value(ulong(key.value_len)),
        CKA_TOKEN => Value(bool_byte(key.token)),
        CKA_PRIVATE => Value(bool_byte(key.private)),
        CKA_SENSITIVE => Value(bool_byte(key.sensitive)),
        CKA_EXTRACTABLE => Value(bool_byte(key.extractable)),
        // Admissible keys were never seen non-sensitive or extractable by the module; where
        // the backend does not report these, the module's own guarantee answers.
        CKA_ALWAYS_SENSITIVE => Value(bool_byte(key.always_sensitive.unwrap_or(true))),
        CKA_NEVER_EXTRACTABLE => Value(bool_byte(key.never_extractable.unwrap_or(true))),
        CKA_LOCAL => match key.local {
            Some(v) => Value(bool_byte(v)),
            None => Invalid,
        },
        CKA_KEY_GEN_MECHANISM => match key.local {
            Some(true) => Value(ulong(CKM_AES_KEY_GEN)),
            _ => Value(ulong(CK_UNAVAILABLE_INFORMATION)),
        },
        CKA_MODIFIABLE => Value(bool_byte(key.modifiable)),
        CKA_COPYABLE => Value(bool_byte(false)),
        CKA_DESTROYABLE => Value(bool_byte(destroyable)),
        CKA_ENCRYPT => Value(bool_byte(key.encrypt)),
        CKA_DECRYPT => Value(bool_byte(key.decrypt)),
        CKA_WRAP => Value(bool_byte(key.wrap)),
        CKA_UNWRAP => Value(bool_byte(key.unwrap)),
        CKA_SIGN => Value(bool_byte(key.sign)),
        CKA_VERIFY => Value(bool_byte(key.verify)),
        CKA_DERIVE => Value(bool_byte(key.derive)),
        CKA_SIGN_RECOVER | CKA_VERIFY_RECOVER | CKA_TRUSTED | CKA_WRAP_WITH_TRUSTED => {
            Value(bool_byte(false))
        }
        CKA_ID => Value(key.id.clone()),
        CKA_LABEL => Value(key.label.clone()),
        CKA_START_DATE => Value(key.start_date.clone()),
        CKA_END_DATE => Value(key.end_date.clone()),
        _ => Invalid,
    }
}

/// Does a visible key match a `C_FindObjectsInit` template? An attribute the module cannot
/// answer publicly (secret or unknown) never matches.
pub fn template_matches(key: &KeyInfo, template: &[Attribute], destroyable: bool) -> bool {
    template
        .iter()
        .all(|a| match public_attribute(key, a.kind, destroyable) {
            AttributeAnswer::Value(v) => v == a.value,
            _ => false,
        })
}

fn as_bool(a: &Attribute) -> CkResult<bool> {
    match a.value.as_slice() {
        [b] => Ok(*b != 0),
        _ => Err(Rv::ATTRIBUTE_VALUE_INVALID),
    }
}

fn as_ulong(a: &Attribute) -> CkResult<u64> {
    let bytes: [u8; std::mem::size_of::<CK_ULONG>()] = a
        .value
        .as_slice()
        .try_into()
        .map_err(|_| Rv::ATTRIBUTE_VALUE_INVALID)?;
    Ok(CK_ULONG::from_ne_bytes(bytes))
}

/// A `CK_DATE`: 8 ASCII digits, or "no date" given as zero length or as 8 zero bytes (the
/// form the `cryptoki` crate and some C callers use).
fn as_date(a: &Attribute) -> CkResult<Vec<u8>> {
    match a.value.len() {
        0 => Ok(Vec::new()),
        8 if a.value.iter().all(|b| *b == 0) => Ok(Vec::new()),
        8 if a.value.iter().all(u8::is_ascii_digit) => Ok(a.value.clone()),
        _ => Err(Rv::ATTRIBUTE_VALUE_INVALID),
    }
}

/// Attributes that exist for secret keys but that the module never lets a caller set.
fn is_known_key_attribute(kind: CK_ATTRIBUTE_TYPE) -> bool {
    matches!(
        kind,
        CKA_CLASS
            | CKA_KEY_TYPE
            | CKA_VALUE
            | CKA_VALUE_LEN
            | CKA_TOKEN
            | CKA_PRIVATE
            | CKA_SENSITIVE
            | CKA_EXTRACTABLE
            | CKA_ALWAYS_SENSITIVE
            | CKA_NEVER_EXTRACTABLE
            | CKA_LOCAL
            | CKA_KEY_GEN_MECHANISM
            | CKA_MODIFIABLE
            | CKA_COPYABLE
            | CKA_DESTROYABLE
            | CKA_WRAP
            | CKA_UNWRAP
            | CKA_SIGN
            | CKA_VERIFY
            | CKA_SIGN_RECOVER
            | CKA_VERIFY_RECOVER
            | CKA_DERIVE
            | CKA_TRUSTED
            | CKA_WRAP_WITH_TRUSTED
            | CKA_CHECK_VALUE
            | CKA_ALLOWED_MECHANISMS
            | CKA_WRAP_TEMPLATE
            | CKA_UNWRAP_TEMPLATE
    )
}

/// Turn a `C_SetAttributeValue` template into backend changes, or refuse it whole.
/// Only `CKA_LABEL`, `CKA_ENCRYPT`, `CKA_DECRYPT`, `CKA_START_DATE` and `CKA_END_DATE` may be
/// set; every other key attribute is `CKR_ATTRIBUTE_READ_ONLY`.
pub fn attribute_changes(template: &[Attribute]) -> CkResult<KeyChanges> {
    let mut changes = KeyChanges::default();
    for a in template {
        match a.kind {
            CKA_LABEL => changes.label = Some(a.value.clone()),
            CKA_ENCRYPT => changes.encrypt = Some(as_bool(a)?),
            CKA_DECRYPT => changes.decrypt = Some(as_bool(a)?),
            CKA_START_DATE => changes.start_date = Some(as_date(a)?),
            CKA_END_DATE => changes.end_date = Some(as_date(a)?),
            CKA_ID => return Err(Rv::ATTRIBUTE_READ_ONLY),
            k if is_known_key_attribute(k) => return Err(Rv::ATTRIBUTE_READ_ONLY),
            _ => return Err(Rv::ATTRIBUTE_TYPE_INVALID),
        }
    }
    Ok(changes)
}

/// What a caller may ask of `C_GenerateKey`, after the policy check.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GenerationRequest {
    /// `CKA_LABEL`, if given.
    pub label: Option<Vec<u8>>,
    /// `CKA_ID`, if given.
    pub id: Option<Vec<u8>>,
    /// `CKA_ENCRYPT` (default true).
    pub encrypt: bool,
    /// `CKA_DECRYPT` (default true).
    pub decrypt: bool,
    /// `CKA_START_DATE`, if given.
    pub start_date: Option<Vec<u8>>,
    /// `CKA_END_DATE`, if given.
    pub end_date: Option<Vec<u8>>,
}

/// Check a `C_GenerateKey` request. Absent security attributes take the secure value; an
/// absent `CKA_TOKEN` is `CKR_TEMPLATE_INCOMPLETE` (PKCS#11's default is a session key, which
/// this module does not make: see [`NO_TOKEN_HINT`]); an explicit empty `CKA_ID` is kept (the
/// key's identity is then its label, as for keys made without an ID elsewhere), and is
/// `CKR_ATTRIBUTE_VALUE_INVALID` without a label (no identity at all); it is never
/// substituted; an explicit weaker one (session object, not sensitive, extractable, public, not modifiable,
/// or any wrap/unwrap/sign/verify/derive use) is `CKR_TEMPLATE_INCONSISTENT`; a wrong class,
/// key type or length is `CKR_ATTRIBUTE_VALUE_INVALID` / `CKR_TEMPLATE_INCONSISTENT`; key
/// material in the template is `CKR_TEMPLATE_INCONSISTENT`.
pub fn generation_request(
    mechanism: &Mechanism,
    template: &[Attribute],
) -> CkResult<GenerationRequest> {
    match mechanism {
        Mechanism::AesKeyGen => {}
        Mechanism::Other {
            kind: CKM_AES_KEY_GEN,
            ..
        } => return Err(Rv::MECHANISM_PARAM_INVALID),
        _ => return Err(Rv::MECHANISM_INVALID),
    }
    let mut req = GenerationRequest {
        encrypt: true,
        decrypt: true,
        ..Default::default()
    };
    let mut value_len = None;
    let mut token_given = false;
    let mut seen = std::collections::HashSet::new();
    for a in template {
        if !seen.insert(a.kind) {
            // The same attribute twice: which one did the caller mean?
            return Err(Rv::TEMPLATE_INCONSISTENT);
        }
        match a.kind {
            CKA_CLASS => {
                if as_ulong(a)? != CKO_SECRET_KEY {
                    return Err(Rv::TEMPLATE_INCONSISTENT);
                }
            }
            CKA_KEY_TYPE => {
                if as_ulong(a)? != CKK_AES {
                    return Err(Rv::TEMPLATE_INCONSISTENT);
                }
            }
            CKA_VALUE_LEN => value_len = Some(as_ulong(a)?),
            CKA_TOKEN => {
                // Required true: a session key is not made (see NO_TOKEN_HINT).
                if !as_bool(a)? {
                    return Err(Rv::TEMPLATE_INCONSISTENT);
                }
                token_given = true;
            }
            // Required true: false would be weaker than the rule.
            CKA_SENSITIVE | CKA_PRIVATE | CKA_MODIFIABLE => {
                if !as_bool(a)? {
                    return Err(Rv::TEMPLATE_INCONSISTENT);
                }
            }
            // Required false: true would open a path to the key bytes or other uses.
            CKA_EXTRACTABLE | CKA_WRAP | CKA_UNWRAP | CKA_SIGN | CKA_VERIFY | CKA_DERIVE
            | CKA_SIGN_RECOVER | CKA_VERIFY_RECOVER | CKA_COPYABLE | CKA_TRUSTED => {
                if as_bool(a)? {
                    return Err(Rv::TEMPLATE_INCONSISTENT);
                }
            }
            CKA_ENCRYPT => req.encrypt = as_bool(a)?,
            CKA_DECRYPT => req.decrypt = as_bool(a)?,
            CKA_LABEL => req.label = Some(a.value.clone()),
            CKA_ID => req.id = Some(a.value.clone()),
            CKA_START_DATE => req.start_date = Some(as_date(a)?),
            CKA_END_DATE => req.end_date = Some(as_date(a)?),
            // Supplying key bytes (or attributes only the token may set) is an import.
            CKA_VALUE
            | CKA_LOCAL
            | CKA_ALWAYS_SENSITIVE
            | CKA_NEVER_EXTRACTABLE
            | CKA_KEY_GEN_MECHANISM
            | CKA_CHECK_VALUE => return Err(Rv::TEMPLATE_INCONSISTENT),
            k if is_known_key_attribute(k) => return Err(Rv::TEMPLATE_INCONSISTENT),
            _ => return Err(Rv::ATTRIBUTE_TYPE_INVALID),
        }
    }
    match value_len {
        Some(KEY_LEN) => {}
        Some(_) => return Err(Rv::ATTRIBUTE_VALUE_INVALID),
        // PKCS#11: CKM_AES_KEY_GEN needs CKA_VALUE_LEN.
        None => return Err(Rv::TEMPLATE_INCOMPLETE),
    }
    if !token_given {
        // PKCS#11 defaults CKA_TOKEN to false: the caller asked for a session key.
        return Err(Rv::TEMPLATE_INCOMPLETE);
    }
    // The caller's empty ID is kept, never replaced: the label is then the key's identity
    // across replicas and restarts, so there must be one.
    if req.id.as_ref().is_some_and(|id| id.is_empty())
        && req.label.as_ref().is_none_or(|l| l.is_empty())
    {
        return Err(Rv::ATTRIBUTE_VALUE_INVALID);
    }
    Ok(req)
}

/// Why a template without `CKA_TOKEN` is refused, and what to do: logged with the refusal.
pub const NO_TOKEN_HINT: &str = "the template has no CKA_TOKEN, so PKCS#11 asks for a session \
    key; this module makes only token keys (sensitive, non-extractable, kept in the HSM) and \
    never turns a session-key request into a permanent key: add CKA_TOKEN=true to the template \
    (Java SunPKCS11: attributes(generate, CKO_SECRET_KEY, CKK_AES) = { CKA_TOKEN = true })";

/// Whether a generation template names `CKA_TOKEN` (for the refusal's log line).
pub fn template_names_token(template: &[Attribute]) -> bool {
    template.iter().any(|a| a.kind == CKA_TOKEN)
}

/// Accept exactly AES-GCM with a 12- or 16-byte IV, a 128-bit tag and at most 64 KiB of AAD.
pub fn gcm_params(mechanism: &Mechanism) -> CkResult<&GcmParams> {
    match mechanism {
        Mechanism::AesGcm(p) => {
            let iv_bits_ok = p.iv_bits == 0 || p.iv_bits == (p.iv.len() as u64) * 8;
            if !GCM_IV_LENS.contains(&p.iv.len())
                || !iv_bits_ok
                || p.tag_bits != GCM_TAG_BITS
                || p.aad.len() > GCM_MAX_AAD
            {
                return Err(Rv::MECHANISM_PARAM_INVALID);
            }
            Ok(p)
        }
        Mechanism::Other {
            kind: CKM_AES_GCM, ..
        } => Err(Rv::MECHANISM_PARAM_INVALID),
        _ => Err(Rv::MECHANISM_INVALID),
    }
}

/// `C_CreateObject` is never allowed to bring key material in; other object classes are not
/// stored by this token.
pub fn create_object_refusal(template: &[Attribute]) -> Rv {
    match template.iter().find(|a| a.kind == CKA_CLASS).map(as_ulong) {
        None => Rv::TEMPLATE_INCOMPLETE,
        Some(Ok(CKO_SECRET_KEY | CKO_PRIVATE_KEY)) => Rv::TEMPLATE_INCONSISTENT,
        Some(_) => Rv::ATTRIBUTE_VALUE_INVALID,
    }
}

#[cfg(test)]
mod tests;
