//! Key generation and random numbers.

use super::*;

pub fn generate_key(session: u64, mechanism: &Mechanism, template: &[Attribute]) -> CkResult<u64> {
    let m = module()?;
    let (s, index, read_write) = m.session(session)?;
    s.slot.require_login()?;
    if !read_write {
        return Err(Rv::SESSION_READ_ONLY);
    }
    // A key made now must have its record: none starts while records cannot be written.
    audit::health::gate()?;
    let req = match policy::generation_request(mechanism, template) {
        Ok(r) => r,
        Err(rv) => {
            log::warn!(
                "slot {}: C_GenerateKey refused ({rv}); template attributes: {}",
                s.slot.label,
                attribute_summary(template)
            );
            return refused(s, "C_GenerateKey", b"", rv);
        }
    };
    let id = match req.id {
        Some(id) if !id.is_empty() => id,
        _ => {
            // A stable identity for the key across HSM replicas and restarts.
            let mut id = vec![0u8; 16];
            s.slot.backend.generate_random(&mut id)?;
            id
        }
    };
    let label = req.label.unwrap_or_default();
    if !s.slot.admits_names(&id, &label) {
        return refused(s, "C_GenerateKey", &label, Rv::ATTRIBUTE_VALUE_INVALID);
    }
    let existing = s.slot.backend.list_secret_keys()?;
    if existing
        .iter()
        .any(|k| k.id == id || (!label.is_empty() && k.label == label))
    {
        // Two keys with one identity would make "which key?" ambiguous for every caller.
        return refused(s, "C_GenerateKey", &label, Rv::ATTRIBUTE_VALUE_INVALID);
    }
    let spec = NewKey {
        id,
        label: label.clone(),
        value_len: policy::KEY_LEN,
        encrypt: req.encrypt,
        decrypt: req.decrypt,
    };
    let result = (|| {
        let generated = s.slot.backend.generate_aes_key(&spec)?;
        let finished = (|| {
            let mut info = generated.clone();
            if req.start_date.is_some() || req.end_date.is_some() {
                let dates = backend::KeyChanges {
                    start_date: req.start_date.clone(),
                    end_date: req.end_date.clone(),
                    ..Default::default()
                };
                s.slot.backend.set_key_attributes(info.handle, &dates)?;
                info = s.slot.backend.key_info(info.handle)?;
            }
            if !s.slot.admits(&info) {
                log::error!(
                    "slot {}: backend {} generated a key that fails the never-export policy",
                    s.slot.label,
                    s.slot.backend.name()
                );
                return Err(Rv::GENERAL_ERROR);
            }
            Ok(info)
        })();
        match finished {
            Ok(info) => Ok(m.objects.handle_for(index, &info)),
            Err(rv) => {
                // C_GenerateKey failed, so no key may remain: a half-made key would hold the
                // label (and ID) the caller will retry with.
                if let Err(e) = s.slot.backend.destroy_key(generated.handle) {
                    log::error!(
                        "slot {}: cannot remove the key of a failed C_GenerateKey: {e}",
                        s.slot.label
                    );
                }
                Err(rv)
            }
        }
    })();
    let mut rec = lifecycle("generate", s, &label);
    rec.mechanism = "CKM_AES_KEY_GEN";
    audit::record(rec, result)
}

/// Largest `C_GenerateRandom` request served in one call.
pub(super) const MAX_RANDOM: usize = 1 << 20;

pub fn generate_random(session: u64, len: usize) -> CkResult<Vec<u8>> {
    let m = module()?;
    let (s, _, _) = m.session(session)?;
    if len > MAX_RANDOM {
        return Err(Rv::ARGUMENTS_BAD);
    }
    let mut out = vec![0u8; len];
    s.slot.backend.generate_random(&mut out)?;
    Ok(out)
}

pub fn seed_random(session: u64, _seed: &[u8]) -> CkResult<()> {
    let m = module()?;
    m.session(session)?;
    // The HSM's RNG is not seeded by callers.
    Err(Rv(CKR_RANDOM_SEED_NOT_SUPPORTED))
}

/// Attribute types of a template, with the values of booleans and numbers (never of byte
/// strings), so a refused template can be diagnosed from the log.
pub(super) fn attribute_summary(template: &[Attribute]) -> String {
    template
        .iter()
        .map(|a| match a.value.len() {
            1 => format!("{:#x}={}", a.kind, a.value[0]),
            8 => format!(
                "{:#x}={}",
                a.kind,
                u64::from_ne_bytes(a.value[..].try_into().unwrap_or([0; 8]))
            ),
            n => format!("{:#x}=<{n} bytes>", a.kind),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
