//! Slot, token and mechanism information, and replica-member status.

use super::*;

/// `XKI_GetMemberCount`: how many tokens serve `slot` (1 unless it is a replica group).
pub fn member_count(slot: u64) -> CkResult<u64> {
    let m = module()?;
    Ok(m.slot(slot)?.slot.backend.member_status().len() as u64)
}

/// `XKI_GetMemberStatus`: health of member `index` of `slot`.
pub fn member_status(
    slot: u64,
    index: u64,
) -> CkResult<crate::backend::replicas::health::MemberStatus> {
    let m = module()?;
    let all = m.slot(slot)?.slot.backend.member_status();
    usize::try_from(index)
        .ok()
        .and_then(|i| all.into_iter().nth(i))
        .ok_or(Rv::ARGUMENTS_BAD)
}

pub fn get_slot_list(_token_present: bool) -> CkResult<Vec<u64>> {
    // Every virtual slot always holds its token.
    Ok((0..module()?.slots.len() as u64).collect())
}

pub fn get_slot_info(slot: u64) -> CkResult<SlotInfo> {
    let m = module()?;
    let s = m.slot(slot)?;
    Ok(SlotInfo {
        description: format!(
            "xki-bridge slot {} over {}",
            s.slot.label,
            s.slot.backend_names.join(",")
        ),
        manufacturer: "xki-bridge".into(),
        flags: CKF_TOKEN_PRESENT,
        hardware_version: (0, 0),
        firmware_version: library_version(),
    })
}

pub fn get_token_info(slot: u64) -> CkResult<TokenInfo> {
    let m = module()?;
    let s = m.slot(slot)?;
    let (sessions, rw) = m.sessions.count(slot as usize);
    let mut serial = s.token.serial.clone();
    serial.truncate(16);
    Ok(TokenInfo {
        label: s.slot.label.clone(),
        manufacturer: "xki-bridge".into(),
        model: s.token.model.clone(),
        serial,
        flags: CKF_RNG
            | CKF_LOGIN_REQUIRED
            | CKF_USER_PIN_INITIALIZED
            | CKF_TOKEN_INITIALIZED
            | s.slot.pin_status().token_flags(),
        max_session_count: CK_EFFECTIVELY_INFINITE,
        session_count: sessions,
        max_rw_session_count: CK_EFFECTIVELY_INFINITE,
        rw_session_count: rw,
        max_pin_len: 255,
        min_pin_len: 1,
        total_public_memory: CK_UNAVAILABLE_INFORMATION,
        free_public_memory: CK_UNAVAILABLE_INFORMATION,
        total_private_memory: CK_UNAVAILABLE_INFORMATION,
        free_private_memory: CK_UNAVAILABLE_INFORMATION,
        hardware_version: s.token.hardware_version,
        firmware_version: s.token.firmware_version,
        utc_time: String::new(),
    })
}

pub fn get_mechanism_list(slot: u64) -> CkResult<Vec<u64>> {
    let m = module()?;
    Ok(m.slot(slot)?.mechanisms.iter().map(|(t, _)| *t).collect())
}

pub fn get_mechanism_info(slot: u64, mechanism: u64) -> CkResult<MechanismInfo> {
    let m = module()?;
    m.slot(slot)?
        .mechanisms
        .iter()
        .find(|(t, _)| *t == mechanism)
        .map(|(_, info)| *info)
        .ok_or(Rv::MECHANISM_INVALID)
}
