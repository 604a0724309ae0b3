//! Key lifecycle administration (the admin CLI): create, list, usage, disable, scheduled
//! deletion and purge. State lives in standard attributes (see `keys.rs`).

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::date::Date;
use super::keys::{ck, find_by_label, is_hyok_key, read_state, KeyState};
use super::{Hsm, HsmError};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Usage {
    /// CKA_ENCRYPT only.
    Encrypt,
    /// CKA_DECRYPT only.
    Decrypt,
    /// Both.
    Both,
}

impl Usage {
    fn flags(self) -> (bool, bool) {
        match self {
            Usage::Encrypt => (true, false),
            Usage::Decrypt => (false, true),
            Usage::Both => (true, true),
        }
    }
}

/// One key as the admin CLI shows it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// External key id (CKA_LABEL).
    pub label: String,
    /// Usage flags.
    pub state: KeyState,
    /// Scheduled deletion date (CKA_END_DATE), if any.
    pub deletion: Option<Date>,
}

/// CKA_END_DATE (our scheduled-deletion date), `None` when absent, empty or unreadable.
fn read_end_date(s: &Session, h: ObjectHandle) -> Option<Date> {
    s.get_attributes(h, &[AttributeType::EndDate])
        .ok()
        .and_then(|attrs| {
            attrs.iter().find_map(|a| match a {
                Attribute::EndDate(d) => Date::from_ck(d),
                _ => None,
            })
        })
}

/// Set CKA_END_DATE to `d`, or clear it. "No date" is sent as a zero-length value (the
/// PKCS#11 form; cryptoki's `Date::new_empty` sends eight zero bytes, which strict modules,
/// ours included, refuse), then as eight zero bytes for modules that only take a full CK_DATE.
fn set_end_date(s: &Session, h: ObjectHandle, d: Option<Date>) -> Result<(), HsmError> {
    let Some(d) = d else {
        let empty = Attribute::VendorDefined((AttributeType::EndDate, Vec::new()));
        return match s.update_attributes(h, &[empty]) {
            Ok(()) => Ok(()),
            Err(_) => s
                .update_attributes(h, &[Attribute::EndDate(cryptoki::types::Date::new_empty())])
                .map_err(ck("C_SetAttributeValue")),
        };
    };
    s.update_attributes(h, &[Attribute::EndDate(d.to_ck())])
        .map_err(ck("C_SetAttributeValue"))
}

/// The error when the token does not keep CKA_END_DATE on this key.
fn no_date_support(label: &str, why: &str) -> HsmError {
    HsmError::Other(format!(
        "key {label}: this token cannot store a deletion date (CKA_END_DATE) on the key ({why}); \
         nothing was changed. SoftHSM2 2.6 cannot keep dates on private keys; use a token that \
         stores CKA_END_DATE (the module's embedded token, or an HSM), or disable the key and \
         destroy it later with your token's own tools"
    ))
}

impl Hsm {
    /// Generate a new HYOK key in the token. Fails if the label is taken. Returns the
    /// random `CKA_ID` it was given.
    pub fn create_key(&self, s: &Session, label: &str, usage: Usage) -> Result<[u8; 16], HsmError> {
        if !find_by_label(s, label)?.is_empty() {
            return Err(HsmError::Other(format!(
                "a key labelled {label:?} already exists"
            )));
        }
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).map_err(|e| HsmError::Other(format!("OS RNG: {e}")))?;
        // Generated with both usages (what any HYOK-enforcing module accepts), then narrowed.
        let h = s
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Modifiable(true),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Id(id.to_vec()),
                ],
            )
            .map_err(ck("C_GenerateKey"))?;
        if usage != Usage::Both {
            let (e, d) = usage.flags();
            s.update_attributes(h, &[Attribute::Encrypt(e), Attribute::Decrypt(d)])
                .map_err(ck("C_SetAttributeValue"))?;
        }
        Ok(id)
    }

    /// List every HYOK key on the token.
    pub fn list_keys(&self, s: &Session) -> Result<Vec<KeyInfo>, HsmError> {
        let all = s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
            ])
            .map_err(ck("C_FindObjects"))?;
        let mut out = Vec::new();
        for h in all {
            if !is_hyok_key(s, h)? {
                continue;
            }
            let label = s
                .get_attributes(h, &[AttributeType::Label])
                .map_err(ck("C_GetAttributeValue"))?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Label(l) => Some(String::from_utf8_lossy(&l).into_owned()),
                    _ => None,
                })
                .unwrap_or_default();
            out.push(KeyInfo {
                label,
                state: read_state(s, h)?,
                deletion: read_end_date(s, h),
            });
        }
        out.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(out)
    }

    fn admin_handle(&self, s: &Session, label: &str) -> Result<ObjectHandle, HsmError> {
        self.keys.remove(label);
        self.find_key(s, label)
    }

    /// Set usage flags (enable with a usage). Refused while deletion is scheduled.
    pub fn set_usage(&self, s: &Session, label: &str, usage: Usage) -> Result<(), HsmError> {
        let h = self.admin_handle(s, label)?;
        if let Some(d) = read_end_date(s, h) {
            return Err(HsmError::Other(format!(
                "key {label} is pending deletion on {d}; cancel the deletion first"
            )));
        }
        let (e, d) = usage.flags();
        s.update_attributes(h, &[Attribute::Encrypt(e), Attribute::Decrypt(d)])
            .map_err(ck("C_SetAttributeValue"))
    }

    /// Disable: clear both usage flags.
    pub fn disable_key(&self, s: &Session, label: &str) -> Result<(), HsmError> {
        let h = self.admin_handle(s, label)?;
        s.update_attributes(h, &[Attribute::Encrypt(false), Attribute::Decrypt(false)])
            .map_err(ck("C_SetAttributeValue"))
    }

    /// Record the deletion date in CKA_END_DATE, then disable the key.
    ///
    /// The date is the only record of the schedule, so it is written (and read back) first:
    /// a token that cannot keep it (SoftHSM2 2.6 on private keys; our module then answers
    /// CKR_ATTRIBUTE_TYPE_INVALID) fails here with the key exactly as it was. If disabling
    /// fails afterwards, the previous date is restored. CKA_ID is never touched: it is the
    /// key's identity across HSM replicas.
    pub fn schedule_deletion(&self, s: &Session, label: &str, on: Date) -> Result<(), HsmError> {
        let h = self.admin_handle(s, label)?;
        let previous = read_end_date(s, h);
        if let Err(e) = set_end_date(s, h, Some(on)) {
            return Err(match e.rv() {
                Some(
                    RvError::AttributeTypeInvalid
                    | RvError::AttributeReadOnly
                    | RvError::AttributeValueInvalid
                    | RvError::TemplateInconsistent,
                ) => no_date_support(label, &e.to_string()),
                _ => e,
            });
        }
        if read_end_date(s, h) != Some(on) {
            // Written but not kept (or not readable): put the old value back.
            let _ = set_end_date(s, h, previous);
            return Err(no_date_support(label, "the date did not read back"));
        }
        if let Err(e) =
            s.update_attributes(h, &[Attribute::Encrypt(false), Attribute::Decrypt(false)])
        {
            let restored = set_end_date(s, h, previous).is_ok();
            return Err(HsmError::Other(format!(
                "key {label}: disabling failed ({}); {}",
                HsmError::pkcs11("C_SetAttributeValue", e),
                if restored {
                    "the deletion date was rolled back, the key is unchanged"
                } else {
                    "AND the deletion date could not be rolled back: check `keys list`"
                }
            )));
        }
        Ok(())
    }

    /// Clear the deletion date; the key stays disabled (enable it explicitly), like KMS.
    pub fn cancel_deletion(&self, s: &Session, label: &str) -> Result<(), HsmError> {
        let h = self.admin_handle(s, label)?;
        if read_end_date(s, h).is_none() {
            return Err(HsmError::Other(format!(
                "key {label} has no deletion scheduled"
            )));
        }
        set_end_date(s, h, None)?;
        if read_end_date(s, h).is_some() {
            return Err(HsmError::Other(format!(
                "could not clear the deletion date of {label}"
            )));
        }
        Ok(())
    }

    /// Destroy one key whose deletion date has passed (checked again here).
    pub fn purge_key(&self, s: &Session, label: &str, today: Date) -> Result<(), HsmError> {
        let h = self.admin_handle(s, label)?;
        match read_end_date(s, h) {
            Some(d) if d <= today => {}
            _ => {
                return Err(HsmError::Other(format!(
                    "key {label} is not past its deletion date"
                )))
            }
        }
        if !read_state(s, h)?.disabled() {
            return Err(HsmError::Other(format!(
                "key {label} is enabled; not destroying"
            )));
        }
        s.destroy_object(h).map_err(ck("C_DestroyObject"))?;
        self.keys.remove(label);
        Ok(())
    }
}
