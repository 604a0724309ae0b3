//! Reading [`KeyInfo`] from a token object, and the attribute templates we write.

use super::errors;
use super::quirks::Quirks;
use crate::backend::{BackendKey, KeyChanges, KeyInfo, NewKey};
use crate::rv::{CkResult, Rv};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::{Date, Ulong};

/// `CK_UNAVAILABLE_INFORMATION`: what `key_type` holds when the token does not report one,
/// so the policy layer (which wants `CKK_AES`) rejects the key.
const UNAVAILABLE: u64 = u64::MAX;

/// Every attribute [`KeyInfo`] needs, read in one `C_GetAttributeValue` for the fixed-size
/// ones plus one for the variable-size ones (`CKA_ID`, `CKA_LABEL`): cryptoki's
/// `get_attributes` does at most two calls per object, never one per attribute.
const KEY_INFO_ATTRIBUTES: &[AttributeType] = &[
    AttributeType::Class,
    AttributeType::Id,
    AttributeType::Label,
    AttributeType::KeyType,
    AttributeType::ValueLen,
    AttributeType::Token,
    AttributeType::Private,
    AttributeType::Sensitive,
    AttributeType::Extractable,
    AttributeType::AlwaysSensitive,
    AttributeType::NeverExtractable,
    AttributeType::Local,
    AttributeType::Modifiable,
    AttributeType::Encrypt,
    AttributeType::Decrypt,
    AttributeType::Wrap,
    AttributeType::Unwrap,
    AttributeType::Sign,
    AttributeType::Verify,
    AttributeType::Derive,
    AttributeType::StartDate,
    AttributeType::EndDate,
];

/// [`KEY_INFO_ATTRIBUTES`] up to (not including) the dates, which come last.
const WITHOUT_DATES: usize = KEY_INFO_ATTRIBUTES.len() - 2;

/// A cryptoki object handle for a backend key.
pub(crate) fn object(key: BackendKey) -> ObjectHandle {
    // SAFETY: an object handle is a plain integer the library validates on every call; a stale
    // or foreign one yields CKR_OBJECT_HANDLE_INVALID / CKR_KEY_HANDLE_INVALID, never UB.
    unsafe { ObjectHandle::new_from_raw(key.0) }
}

/// The public attributes of secret-key object `handle`. Attributes the token does not report
/// come back as `None` / `false` / empty. Not a secret key: `CKR_KEY_HANDLE_INVALID`.
pub(crate) fn read_key_info(
    session: &Session,
    handle: ObjectHandle,
    quirks: &Quirks,
) -> CkResult<KeyInfo> {
    // cryptoki reads variable-length attributes in two calls (length, then value): a label
    // another session lengthens in between fails the second call with CKR_BUFFER_TOO_SMALL.
    // Reading again sees the new length.
    let read = || {
        let mut attempts = 0;
        loop {
            match session.get_attributes(handle, KEY_INFO_ATTRIBUTES) {
                Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::BufferTooSmall,
                    _,
                )) if attempts < 3 => {
                    attempts += 1;
                }
                other => return other,
            }
        }
    };
    let attrs = read().map_err(|e| errors::rv_of(&e));
    let attrs = match attrs {
        // See quirks.rs: such a library fails the whole read when a private key has a date.
        Err(Rv::GENERAL_ERROR) if quirks.private_dates_unreadable => session
            .get_attributes(handle, &KEY_INFO_ATTRIBUTES[..WITHOUT_DATES])
            .map_err(|e| errors::rv_of(&e))?,
        other => other?,
    };
    let mut info = KeyInfo {
        handle: BackendKey(handle.handle()),
        id: Vec::new(),
        label: Vec::new(),
        key_type: UNAVAILABLE,
        value_len: 0,
        token: false,
        private: false,
        sensitive: false,
        extractable: false,
        always_sensitive: None,
        never_extractable: None,
        local: None,
        modifiable: false,
        encrypt: false,
        decrypt: false,
        wrap: false,
        unwrap: false,
        sign: false,
        verify: false,
        derive: false,
        start_date: Vec::new(),
        end_date: Vec::new(),
    };
    let mut class = None;
    for attr in attrs {
        match attr {
            Attribute::Class(c) => class = Some(c),
            Attribute::Id(v) => info.id = v,
            Attribute::Label(v) => info.label = v,
            Attribute::KeyType(t) => info.key_type = *t,
            Attribute::ValueLen(n) => info.value_len = *n,
            Attribute::Token(b) => info.token = b,
            Attribute::Private(b) => info.private = b,
            Attribute::Sensitive(b) => info.sensitive = b,
            Attribute::Extractable(b) => info.extractable = b,
            Attribute::AlwaysSensitive(b) => info.always_sensitive = Some(b),
            Attribute::NeverExtractable(b) => info.never_extractable = Some(b),
            Attribute::Local(b) => info.local = Some(b),
            Attribute::Modifiable(b) => info.modifiable = b,
            Attribute::Encrypt(b) => info.encrypt = b,
            Attribute::Decrypt(b) => info.decrypt = b,
            Attribute::Wrap(b) => info.wrap = b,
            Attribute::Unwrap(b) => info.unwrap = b,
            Attribute::Sign(b) => info.sign = b,
            Attribute::Verify(b) => info.verify = b,
            Attribute::Derive(b) => info.derive = b,
            Attribute::StartDate(d) => info.start_date = date_bytes(&d),
            Attribute::EndDate(d) => info.end_date = date_bytes(&d),
            _ => {}
        }
    }
    if class != Some(ObjectClass::SECRET_KEY) {
        return Err(Rv::KEY_HANDLE_INVALID);
    }
    Ok(info)
}

/// A `CK_DATE` as its 8 ASCII digits, or empty for the empty date.
fn date_bytes(date: &Date) -> Vec<u8> {
    if date.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(8);
    out.extend_from_slice(&date.year);
    out.extend_from_slice(&date.month);
    out.extend_from_slice(&date.day);
    out
}

/// A date attribute written as exactly the given bytes: 8 (`CK_DATE`) or 0 (no date).
/// cryptoki's `Date::new_empty()` would write 8 NUL bytes, which is not an empty date, so the
/// raw form is used.
fn date_attribute(kind: AttributeType, bytes: &[u8]) -> CkResult<Attribute> {
    if !(bytes.is_empty() || bytes.len() == 8) {
        return Err(Rv::ATTRIBUTE_VALUE_INVALID);
    }
    Ok(Attribute::VendorDefined((kind, bytes.to_vec())))
}

/// The `C_GenerateKey` template for `spec`: exactly the attributes the module promises.
pub(crate) fn generate_template(spec: &NewKey) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::ValueLen(Ulong::from(spec.value_len)),
        Attribute::Encrypt(spec.encrypt),
        Attribute::Decrypt(spec.decrypt),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Modifiable(true),
        Attribute::Id(spec.id.clone()),
        Attribute::Label(spec.label.clone()),
    ]
}

/// The `C_SetAttributeValue` template for `changes`: only the fields that are `Some`.
/// Non-empty dates are refused where the library could not read them back (see quirks.rs).
pub(crate) fn change_template(changes: &KeyChanges, quirks: &Quirks) -> CkResult<Vec<Attribute>> {
    let mut t = Vec::new();
    if let Some(label) = &changes.label {
        t.push(Attribute::Label(label.clone()));
    }
    if let Some(b) = changes.encrypt {
        t.push(Attribute::Encrypt(b));
    }
    if let Some(b) = changes.decrypt {
        t.push(Attribute::Decrypt(b));
    }
    if let Some(d) = &changes.start_date {
        t.push(date_attribute(AttributeType::StartDate, d)?);
    }
    if let Some(d) = &changes.end_date {
        t.push(date_attribute(AttributeType::EndDate, d)?);
    }
    let sets_date = [&changes.start_date, &changes.end_date]
        .iter()
        .any(|d| d.as_ref().is_some_and(|d| !d.is_empty()));
    if sets_date && quirks.private_dates_unreadable {
        return Err(Rv::ATTRIBUTE_TYPE_INVALID);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_8_bytes_or_empty() {
        assert!(date_attribute(AttributeType::EndDate, b"20270101").is_ok());
        assert!(date_attribute(AttributeType::EndDate, b"").is_ok());
        assert_eq!(
            date_attribute(AttributeType::EndDate, b"2027").unwrap_err(),
            Rv::ATTRIBUTE_VALUE_INVALID
        );
        let d = Date::new(*b"2027", *b"01", *b"31");
        assert_eq!(date_bytes(&d), b"20270131");
        assert!(date_bytes(&Date::new_empty()).is_empty());
    }

    #[test]
    fn change_template_only_has_set_fields() {
        let c = KeyChanges {
            encrypt: Some(false),
            ..Default::default()
        };
        let t = change_template(&c, &Quirks::default()).unwrap();
        assert_eq!(t.len(), 1);
        assert!(matches!(t[0], Attribute::Encrypt(false)));
        let date = KeyChanges {
            end_date: Some(b"20270101".to_vec()),
            ..Default::default()
        };
        assert_eq!(change_template(&date, &Quirks::default()).unwrap().len(), 1);
        let softhsm = Quirks::for_library("SoftHSM");
        assert_eq!(
            change_template(&date, &softhsm).unwrap_err(),
            Rv::ATTRIBUTE_TYPE_INVALID
        );
        let clear = KeyChanges {
            end_date: Some(Vec::new()),
            ..Default::default()
        };
        assert_eq!(change_template(&clear, &softhsm).unwrap().len(), 1);
    }
}
