//! Key state apart from usage (`crate::keystate`): reading a key's stored state for
//! `C_GetAttributeValue` of the `CKA_XKI_*` attributes, and carrying out a state change from
//! `C_SetAttributeValue` as the planned writes, in their order.

use super::objects::lifecycle;
use super::*;

/// What is stored beside a key; a damaged record is logged (the operator's first clue).
pub(super) fn stored(s: &SlotState, info: &backend::KeyInfo) -> CkResult<keystate::Stored> {
    let bytes = s.slot.backend.key_state(info.handle)?;
    let stored = keystate::Stored::from_backend(bytes.as_deref(), &info.id)
        .with_legacy(&info.end_date, live_usage(info));
    if let keystate::Stored::Damaged(why) = &stored {
        log::error!(
            "slot {}: key {:?}: its key-state record is damaged ({why}); the key is reported DISABLED-damaged and keeps only the usage its HSM flags allow until an admin enables it with an explicit usage",
            s.slot.label,
            String::from_utf8_lossy(&info.label)
        );
    }
    Ok(stored)
}

fn live_usage(info: &backend::KeyInfo) -> keystate::Usage {
    keystate::Usage {
        encrypt: info.encrypt,
        decrypt: info.decrypt,
    }
}

/// The key's state as `C_GetAttributeValue` answers it.
pub(super) fn view(s: &SlotState, info: &backend::KeyInfo) -> CkResult<keystate::View> {
    Ok(keystate::view(&stored(s, info)?, live_usage(info)))
}

/// `C_SetAttributeValue` of the key-state attributes: the planned writes, in their order.
pub(super) fn change(
    m: &Module,
    s: &SlotState,
    object: u64,
    e: &crate::object::ObjectEntry,
    template: &[Attribute],
) -> CkResult<()> {
    let change = match keystate::parse_change(template) {
        Ok(c) => c,
        Err(rv) => return refused(s, "C_SetAttributeValue", &e.label, rv),
    };
    let info = super::objects::fresh_key(m, s, object, e.key)?;
    let stored = stored(s, &info)?;
    let steps = match keystate::plan(&stored, live_usage(&info), &change) {
        Ok(steps) => steps,
        Err(rv) => return refused(s, "C_SetAttributeValue", &info.label, rv),
    };
    let op = match (change.status, &change.deletion) {
        (_, Some(d)) if !d.is_empty() => "key_state(schedule_deletion)",
        (Some(keystate::Status::Disabled), _) => "key_state(disable)",
        (Some(keystate::Status::Enabled), _) => "key_state(enable)",
        (None, Some(_)) => "key_state(cancel_deletion)",
        (None, None) => "key_state(usage)",
    };
    let result = (|| {
        for (n, step) in steps.iter().enumerate() {
            match step {
                keystate::Step::Record(r) => {
                    let r = keystate::Record {
                        generation: stored.next_generation(),
                        ..r.clone()
                    };
                    s.slot.backend.set_key_state(e.key, &r.encode(&info.id))?
                }
                keystate::Step::Flags(u) => s.slot.backend.set_key_attributes(
                    e.key,
                    &backend::KeyChanges {
                        encrypt: Some(u.encrypt),
                        decrypt: Some(u.decrypt),
                        ..Default::default()
                    },
                )?,
            }
            keystate::crash_point(n + 1);
        }
        Ok(())
    })();
    if let Ok(info) = s.slot.backend.key_info(e.key) {
        m.objects.refresh(object, &info);
    }
    audit::record(lifecycle(op, s, &info.label), result)
}
