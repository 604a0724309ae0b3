//! Key lifecycle admin. State lives in the HSM, so no database is needed and every proxy
//! instance sees the same truth (see `state.rs` for how it is read):
//!
//! * external key id = `CKA_LABEL` of an AES-256, token, sensitive, non-extractable secret key;
//! * created with its final usage in one `C_GenerateKey` (nothing ever exists with more usage
//!   than asked);
//! * through our module: status, usage and deletion date are the key's `CKA_XKI_*`
//!   attributes, each change one `C_SetAttributeValue` that the module carries out in a
//!   crash-safe order (disable keeps the HSM refusing the key, enable restores the usage);
//! * through any other PKCS#11 library: usage = `CKA_ENCRYPT`/`CKA_DECRYPT`, both false =
//!   DISABLED, deletion date = `CKA_END_DATE` (refused where the token cannot keep it).
//!
//! `purge` destroys keys whose deletion date has passed (the module's `allow_destroy`
//! decides whether it may). CKA_ID is never modified.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::date::Date;
use super::keys::{ck, find_by_label, is_hyok_key};
use super::state::{
    date_bytes, read_end_date, read_state, KeyState, KeyStatus, UsageFlags, CKA_XKI_DELETION_DATE,
    CKA_XKI_KEY_STATUS, CKA_XKI_KEY_USAGE, XKI_KEY_DISABLED, XKI_KEY_ENABLED,
};
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
    /// As flags.
    pub fn flags(self) -> UsageFlags {
        let (encrypt, decrypt) = match self {
            Usage::Encrypt => (true, false),
            Usage::Decrypt => (false, true),
            Usage::Both => (true, true),
        };
        UsageFlags { encrypt, decrypt }
    }
}

/// One key as the admin CLI shows it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// External key id (CKA_LABEL).
    pub label: String,
    /// Status, usage, deletion date.
    pub state: KeyState,
}

fn vendor_ulong(t: u64, v: u64) -> Attribute {
    Attribute::VendorDefined((AttributeType::VendorDefined(t), v.to_ne_bytes().to_vec()))
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

/// The error when a foreign token does not keep CKA_END_DATE on this key.
fn no_date_support(label: &str, why: &str) -> HsmError {
    HsmError::Other(format!(
        "key {label}: this token cannot store a deletion date (CKA_END_DATE) on the key ({why}); \
         nothing was changed. SoftHSM2 2.6 cannot keep dates on private keys; load the token \
         through libxki_pkcs11.so (which keeps key state beside the key on every token), or \
         disable the key and destroy it later with your token's own tools"
    ))
}

fn set_state(s: &Session, h: ObjectHandle, template: &[Attribute]) -> Result<(), HsmError> {
    s.update_attributes(h, template)
        .map_err(ck("C_SetAttributeValue"))
}

fn pending(label: &str, d: Date) -> HsmError {
    HsmError::Other(format!(
        "key {label} is pending deletion on {d}; cancel the deletion first"
    ))
}

impl Hsm {
    /// Generate a new HYOK key in the token with its final usage, in one `C_GenerateKey`.
    /// Fails if the label is taken. Returns the random `CKA_ID` it was given.
    pub fn create_key(&self, s: &Session, label: &str, usage: Usage) -> Result<[u8; 16], HsmError> {
        if !find_by_label(s, label)?.is_empty() {
            return Err(HsmError::Other(format!(
                "a key labelled {label:?} already exists"
            )));
        }
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).map_err(|e| HsmError::Other(format!("OS RNG: {e}")))?;
        let f = usage.flags();
        s.generate_key(
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
                Attribute::Encrypt(f.encrypt),
                Attribute::Decrypt(f.decrypt),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.to_vec()),
            ],
        )
        .map_err(ck("C_GenerateKey"))?;
        Ok(id)
    }

    /// List every HYOK key on the token with its state.
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
            });
        }
        out.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(out)
    }

    fn admin_handle(&self, s: &Session, label: &str) -> Result<(ObjectHandle, KeyState), HsmError> {
        self.keys.remove(label);
        let h = self.find_key(s, label)?;
        Ok((h, read_state(s, h)?))
    }

    /// Enable: restore the usage the key had (or set `usage`). Refused while deletion is
    /// scheduled, and for a key with damaged state unless `usage` is given.
    pub fn enable_key(
        &self,
        s: &Session,
        label: &str,
        usage: Option<Usage>,
    ) -> Result<UsageFlags, HsmError> {
        let (h, st) = self.admin_handle(s, label)?;
        if let Some(d) = st.deletion {
            return Err(pending(label, d));
        }
        if !st.module_state {
            // Foreign library: enabling sets the flags (both unless told otherwise).
            let f = usage.unwrap_or(Usage::Both).flags();
            set_state(
                s,
                h,
                &[Attribute::Encrypt(f.encrypt), Attribute::Decrypt(f.decrypt)],
            )?;
            return Ok(f);
        }
        if st.status == KeyStatus::Damaged && usage.is_none() {
            return Err(HsmError::Other(format!(
                "key {label}: its stored state is damaged, so the usage to restore is unknown; \
                 enable it with an explicit --usage"
            )));
        }
        let f = usage.map_or(st.usage, Usage::flags);
        let mut t = vec![vendor_ulong(CKA_XKI_KEY_STATUS, XKI_KEY_ENABLED)];
        if usage.is_some() {
            t.push(vendor_ulong(CKA_XKI_KEY_USAGE, f.ck_flags()));
        }
        set_state(s, h, &t)?;
        Ok(f)
    }

    /// Disable: the HSM refuses the key from now on; its usage is kept for `enable_key`.
    pub fn disable_key(&self, s: &Session, label: &str) -> Result<(), HsmError> {
        let (h, st) = self.admin_handle(s, label)?;
        if !st.module_state {
            return set_state(
                s,
                h,
                &[Attribute::Encrypt(false), Attribute::Decrypt(false)],
            );
        }
        set_state(s, h, &[vendor_ulong(CKA_XKI_KEY_STATUS, XKI_KEY_DISABLED)])
    }

    /// Schedule deletion on `on`: the key is DISABLED until then (or until cancelled).
    ///
    /// Through our module this is one state change on the key, on every backend. On a
    /// foreign library the date goes to `CKA_END_DATE`, written and read back first (a token
    /// that cannot keep it fails here with the key exactly as it was), then the key is
    /// disabled (if that fails the previous date is restored).
    pub fn schedule_deletion(&self, s: &Session, label: &str, on: Date) -> Result<(), HsmError> {
        let (h, st) = self.admin_handle(s, label)?;
        if st.module_state {
            let date = Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_XKI_DELETION_DATE),
                date_bytes(on),
            ));
            return set_state(s, h, &[date]);
        }
        let previous = st.deletion;
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
        let (h, st) = self.admin_handle(s, label)?;
        if st.deletion.is_none() {
            return Err(HsmError::Other(format!(
                "key {label} has no deletion scheduled"
            )));
        }
        if st.module_state {
            let none = Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_XKI_DELETION_DATE),
                Vec::new(),
            ));
            return set_state(s, h, &[none]);
        }
        set_end_date(s, h, None)?;
        if read_end_date(s, h).is_some() {
            return Err(HsmError::Other(format!(
                "could not clear the deletion date of {label}"
            )));
        }
        Ok(())
    }

    /// Destroy one key whose deletion date has passed (checked again here) and that the
    /// HSM refuses (DISABLED with no usage left on the key).
    pub fn purge_key(&self, s: &Session, label: &str, today: Date) -> Result<(), HsmError> {
        let (h, st) = self.admin_handle(s, label)?;
        match st.deletion {
            Some(d) if d <= today => {}
            _ => {
                return Err(HsmError::Other(format!(
                    "key {label} is not past its deletion date"
                )))
            }
        }
        if !st.disabled() || st.encrypt || st.decrypt {
            return Err(HsmError::Other(format!(
                "key {label} is usable (an interrupted change?); not destroying: run `keys schedule-deletion` again"
            )));
        }
        s.destroy_object(h).map_err(ck("C_DestroyObject"))?;
        self.keys.remove(label);
        Ok(())
    }
}
