//! Key-state companion objects on a vendor token: one private `CKO_DATA` token object per
//! key that has state (`crate::keystate`), holding the module's record in `CKA_VALUE`.
//!
//! Found by `CKA_APPLICATION` "xki-key-state" and `CKA_LABEL` "xki-key-state:<hex CKA_ID>"
//! (data objects have no `CKA_ID`; label and application are the attributes every token keeps
//! on them). Private, so only the logged-in user can read or change it; it holds no key
//! material. It is not a secret key, so the module's key listing never sees it.
//!
//! A record is replaced in place where the token lets `CKA_VALUE` change; where it does not
//! (SoftHSM2), by creating the new object, then destroying the old ones: a crash in between
//! leaves both, and the newer generation is the record (`keystate::newest`). Duplicates (an
//! HSM that replicates objects itself may copy one the group also wrote) are read the same
//! way.

use super::errors;
use crate::keystate::{companion_label, newest, COMPANION_APPLICATION};
use crate::rv::CkResult;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

fn search(id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Application(COMPANION_APPLICATION.to_vec()),
        Attribute::Label(companion_label(id)),
    ]
}

fn find(s: &Session, id: &[u8]) -> CkResult<Vec<ObjectHandle>> {
    s.find_objects(&search(id)).map_err(|e| errors::rv_of(&e))
}

/// The record of the key whose `CKA_ID` is `id`, or `None`.
pub(super) fn read(s: &Session, id: &[u8]) -> CkResult<Option<Vec<u8>>> {
    let mut values = Vec::new();
    for h in find(s, id)? {
        let attrs = s
            .get_attributes(h, &[AttributeType::Value])
            .map_err(|e| errors::rv_of(&e))?;
        let v = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            })
            .unwrap_or_default();
        values.push(v);
    }
    match values.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        several => Ok(Some(newest(several, id).unwrap_or_else(|| {
            log::error!(
                "{} key-state objects for one key and no single newest record",
                several.len()
            );
            Vec::new()
        }))),
    }
}

/// Create or replace the record of the key whose `CKA_ID` is `id`.
pub(super) fn write(s: &Session, id: &[u8], record: &[u8]) -> CkResult<()> {
    let found = find(s, id)?;
    if let [one] = found.as_slice() {
        match s.update_attributes(*one, &[Attribute::Value(record.to_vec())]) {
            Ok(()) => return Ok(()),
            Err(e) if errors::rv_of(&e) == crate::rv::Rv::ATTRIBUTE_READ_ONLY => {}
            Err(e) => return Err(errors::rv_of(&e)),
        }
    }
    // New object first, old ones after: never a moment without a record.
    let mut template = search(id);
    template.extend([
        Attribute::Private(true),
        Attribute::Modifiable(true),
        Attribute::Value(record.to_vec()),
    ]);
    s.create_object(&template).map_err(|e| errors::rv_of(&e))?;
    crate::keystate::crash_point(100);
    for h in found {
        s.destroy_object(h).map_err(|e| errors::rv_of(&e))?;
    }
    Ok(())
}

/// Remove the record(s) of the key whose `CKA_ID` is `id` (after the key is destroyed).
pub(super) fn remove(s: &Session, id: &[u8]) -> CkResult<()> {
    for h in find(s, id)? {
        s.destroy_object(h).map_err(|e| errors::rv_of(&e))?;
    }
    Ok(())
}
