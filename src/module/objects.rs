//! Objects: finding keys, their attributes, lifecycle changes and the object refusals.

use super::*;

pub fn create_object(session: u64, template: &[Attribute]) -> CkResult<u64> {
    let m = module()?;
    let (s, _, _) = m.session(session)?;
    refused(
        s,
        "C_CreateObject",
        b"",
        policy::create_object_refusal(template),
    )
}

pub fn copy_object(session: u64, object: u64, _template: &[Attribute]) -> CkResult<u64> {
    let m = module()?;
    let (s, index, _) = m.session(session)?;
    let e = m.key(s, index, object, Rv::OBJECT_HANDLE_INVALID)?;
    refused(s, "C_CopyObject", &e.label, Rv::ACTION_PROHIBITED)
}

pub fn destroy_object(session: u64, object: u64) -> CkResult<()> {
    let m = module()?;
    let (s, index, read_write) = m.session(session)?;
    let e = m.key(s, index, object, Rv::OBJECT_HANDLE_INVALID)?;
    if !read_write {
        return Err(Rv::SESSION_READ_ONLY);
    }
    if !s.slot.allow_destroy {
        return refused(s, "C_DestroyObject", &e.label, Rv::ACTION_PROHIBITED);
    }
    audit::health::gate()?;
    let result = s.slot.backend.destroy_key(e.key);
    if result.is_ok() {
        m.objects.remove(object);
    }
    audit::record(lifecycle("destroy", s, &e.label), result)
}

pub(super) fn lifecycle<'a>(op: &'a str, s: &'a SlotState, key: &'a [u8]) -> Record<'a> {
    Record {
        op,
        slot: &s.slot.label,
        key,
        mechanism: "",
        bytes_in: 0,
        bytes_out: 0,
    }
}

pub fn get_object_size(session: u64, object: u64) -> CkResult<u64> {
    let m = module()?;
    let (s, index, _) = m.session(session)?;
    m.key(s, index, object, Rv::OBJECT_HANDLE_INVALID)?;
    // The size of a key object inside an HSM is not information the token gives out.
    Ok(CK_UNAVAILABLE_INFORMATION)
}

/// Fresh attributes of a key from its backend; a key gone from the HSM is an invalid handle.
pub(super) fn fresh_key(
    m: &Module,
    s: &SlotState,
    object: u64,
    key: backend::BackendKey,
) -> CkResult<backend::KeyInfo> {
    let info = s.slot.backend.key_info(key).map_err(|rv| match rv {
        Rv::OBJECT_HANDLE_INVALID | Rv::KEY_HANDLE_INVALID => Rv::OBJECT_HANDLE_INVALID,
        other => other,
    })?;
    if !s.slot.admits(&info) {
        return Err(Rv::OBJECT_HANDLE_INVALID);
    }
    m.objects.refresh(object, &info);
    Ok(info)
}

pub fn get_attribute_value(
    session: u64,
    object: u64,
    types: &[u64],
) -> CkResult<Vec<AttributeAnswer>> {
    let m = module()?;
    let (s, index, _) = m.session(session)?;
    let e = m.key(s, index, object, Rv::OBJECT_HANDLE_INVALID)?;
    let info = fresh_key(&m, s, object, e.key)?;
    Ok(types
        .iter()
        .map(|t| policy::public_attribute(&info, *t, s.slot.allow_destroy))
        .collect())
}

pub fn set_attribute_value(session: u64, object: u64, template: &[Attribute]) -> CkResult<()> {
    let m = module()?;
    let (s, index, read_write) = m.session(session)?;
    let e = m.key(s, index, object, Rv::OBJECT_HANDLE_INVALID)?;
    if !read_write {
        return Err(Rv::SESSION_READ_ONLY);
    }
    let changes = match policy::attribute_changes(template) {
        Ok(c) => c,
        Err(rv) => return refused(s, "C_SetAttributeValue", &e.label, rv),
    };
    let info = fresh_key(&m, s, object, e.key)?;
    if let Some(label) = &changes.label {
        if !s.slot.admits_names(&info.id, label) {
            // The key would vanish from its own slot.
            return Err(Rv::ATTRIBUTE_VALUE_INVALID);
        }
        if *label != info.label && !label.is_empty() && label_in_use(s, label)? {
            return Err(Rv::ATTRIBUTE_VALUE_INVALID);
        }
    }
    let mut op = String::from("set_attributes(");
    for (name, set) in [
        ("label", changes.label.is_some()),
        ("encrypt", changes.encrypt.is_some()),
        ("decrypt", changes.decrypt.is_some()),
        ("start_date", changes.start_date.is_some()),
        ("end_date", changes.end_date.is_some()),
    ] {
        if set {
            op.push_str(name);
            op.push(match (changes.encrypt, changes.decrypt, name) {
                (Some(true), _, "encrypt") | (_, Some(true), "decrypt") => '+',
                (Some(false), _, "encrypt") | (_, Some(false), "decrypt") => '-',
                _ => ' ',
            });
        }
    }
    let op = format!("{})", op.trim_end());
    audit::health::gate()?;
    let result = s.slot.backend.set_key_attributes(e.key, &changes);
    if result.is_ok() {
        if let Ok(info) = s.slot.backend.key_info(e.key) {
            m.objects.refresh(object, &info);
        }
    }
    audit::record(lifecycle(&op, s, &info.label), result)
}

/// Whether any secret key on the slot's backend already carries this label.
pub(super) fn label_in_use(s: &SlotState, label: &[u8]) -> CkResult<bool> {
    Ok(s.slot
        .backend
        .list_secret_keys()?
        .iter()
        .any(|k| k.label == label))
}

pub fn find_objects_init(session: u64, template: &[Attribute]) -> CkResult<()> {
    let m = module()?;
    let (s, index, _) = m.session(session)?;
    if m.sessions
        .with(session, |sess| !matches!(sess.op, Operation::None))?
    {
        return Err(Rv::OPERATION_ACTIVE);
    }
    // Every key is a private object: nothing is visible before C_Login.
    let found = if s.slot.is_logged_in() {
        s.slot
            .visible_keys()?
            .iter()
            .filter(|k| policy::template_matches(k, template, s.slot.allow_destroy))
            .map(|k| m.objects.handle_for(index, k))
            .collect()
    } else {
        Default::default()
    };
    m.sessions.with(session, |sess| {
        // Checked again: another thread may have started an operation during the listing.
        if !matches!(sess.op, Operation::None) {
            return Err(Rv::OPERATION_ACTIVE);
        }
        sess.op = Operation::Find(found);
        Ok(())
    })?
}

pub fn find_objects(session: u64, max: usize) -> CkResult<Vec<u64>> {
    let m = module()?;
    m.sessions.with(session, |sess| match &mut sess.op {
        Operation::Find(rest) => {
            let n = max.min(rest.len());
            Ok(rest.drain(..n).collect())
        }
        _ => Err(Rv::OPERATION_NOT_INITIALIZED),
    })?
}

pub fn find_objects_final(session: u64) -> CkResult<()> {
    let m = module()?;
    m.sessions.with(session, |sess| match sess.op {
        Operation::Find(_) => {
            sess.op = Operation::None;
            Ok(())
        }
        _ => Err(Rv::OPERATION_NOT_INITIALIZED),
    })?
}
