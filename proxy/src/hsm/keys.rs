//! Keys by label, their state, and their lifecycle — all in standard PKCS#11 attributes,
//! so no database is needed and every proxy instance sees the same truth:
//!
//! * external key id = `CKA_LABEL` of an AES-256, token, sensitive, non-extractable secret key;
//! * usage = `CKA_ENCRYPT` / `CKA_DECRYPT`; **both false = DISABLED**;
//! * scheduled deletion = `CKA_END_DATE` set (and the key disabled); `purge` destroys keys
//!   whose date has passed. Tokens that cannot keep CKA_END_DATE on a key cannot schedule
//!   deletions (the command fails and changes nothing); CKA_ID is never modified.
//!
//! Label -> handle lookups are cached for `key_cache_ms`; state attributes are read from the
//! HSM on every call, so GetKeyMetadata and enable/disable are never stale.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use parking_lot::Mutex;

use super::{Hsm, HsmError};

/// A calendar date (UTC), as stored in CKA_END_DATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// Year.
    pub y: i32,
    /// Month 1-12.
    pub m: u32,
    /// Day 1-31.
    pub d: u32,
}

impl Date {
    /// Today (UTC).
    pub fn today() -> Date {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Date::from_days((secs / 86_400) as i64)
    }

    /// Date `n` days after this one.
    pub fn plus_days(self, n: i64) -> Date {
        Date::from_days(self.to_days() + n)
    }

    /// Civil date from days since 1970-01-01.
    pub fn from_days(z: i64) -> Date {
        let (y, m, d) = xki_pkcs11::timefmt::civil_from_days(z);
        Date { y: y as i32, m, d }
    }

    /// Days since 1970-01-01.
    pub fn to_days(self) -> i64 {
        xki_pkcs11::timefmt::days_from_civil(i64::from(self.y), self.m, self.d)
    }

    fn to_ck(self) -> cryptoki::types::Date {
        let s = format!("{:04}{:02}{:02}", self.y, self.m, self.d);
        let b = s.as_bytes();
        cryptoki::types::Date::new([b[0], b[1], b[2], b[3]], [b[4], b[5]], [b[6], b[7]])
    }

    fn from_ck(d: &cryptoki::types::Date) -> Option<Date> {
        if d.is_empty() {
            return None;
        }
        let num =
            |bytes: &[u8]| -> Option<u32> { std::str::from_utf8(bytes).ok()?.trim().parse().ok() };
        let y = num(&d.year)?;
        let m = num(&d.month)?;
        let dd = num(&d.day)?;
        if y == 0 || !(1..=12).contains(&m) || !(1..=31).contains(&dd) {
            return None;
        }
        Some(Date {
            y: y as i32,
            m,
            d: dd,
        })
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.y, self.m, self.d)
    }
}

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

/// Live usage flags of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    /// CKA_ENCRYPT.
    pub encrypt: bool,
    /// CKA_DECRYPT.
    pub decrypt: bool,
}

impl KeyState {
    /// Our DISABLED state: neither usage.
    pub fn disabled(self) -> bool {
        !self.encrypt && !self.decrypt
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

/// Label -> handle cache (handles only; never state).
pub(super) struct KeyCache {
    map: Mutex<HashMap<String, (ObjectHandle, Instant)>>,
    ttl: Duration,
}

impl KeyCache {
    pub(super) fn new(ttl: Duration) -> Self {
        KeyCache {
            map: Mutex::new(HashMap::new()),
            ttl,
        }
    }
    pub(super) fn clear(&self) {
        self.map.lock().clear();
    }
    fn get(&self, label: &str) -> Option<ObjectHandle> {
        let m = self.map.lock();
        m.get(label)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(h, _)| *h)
    }
    fn put(&self, label: &str, h: ObjectHandle) {
        let mut m = self.map.lock();
        if m.len() > 100_000 {
            m.clear(); // crude bound; lookups are cheap to redo
        }
        m.insert(label.to_string(), (h, Instant::now()));
    }
    fn remove(&self, label: &str) {
        self.map.lock().remove(label);
    }
}

fn ck(op: &'static str) -> impl FnOnce(cryptoki::error::Error) -> HsmError {
    move |e| HsmError::pkcs11(op, e)
}

/// Find every secret key object with this label (no HYOK filtering).
fn find_by_label(s: &Session, label: &str) -> Result<Vec<ObjectHandle>, HsmError> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .map_err(ck("C_FindObjects"))
}

/// Is this object an AES-256, sensitive, non-extractable key (the only kind we serve)?
fn is_hyok_key(s: &Session, h: ObjectHandle) -> Result<bool, HsmError> {
    let attrs = s
        .get_attributes(
            h,
            &[
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Sensitive,
                AttributeType::Extractable,
            ],
        )
        .map_err(ck("C_GetAttributeValue"))?;
    let (mut aes, mut len32, mut sens, mut noext) = (false, false, false, false);
    for a in attrs {
        match a {
            Attribute::KeyType(t) => aes = t == KeyType::AES,
            Attribute::ValueLen(l) => len32 = u64::from(l) == 32,
            Attribute::Sensitive(b) => sens = b,
            Attribute::Extractable(b) => noext = !b,
            _ => {}
        }
    }
    Ok(aes && len32 && sens && noext)
}

fn read_state(s: &Session, h: ObjectHandle) -> Result<KeyState, HsmError> {
    let attrs = s
        .get_attributes(h, &[AttributeType::Encrypt, AttributeType::Decrypt])
        .map_err(ck("C_GetAttributeValue"))?;
    let mut st = KeyState {
        encrypt: false,
        decrypt: false,
    };
    for a in attrs {
        match a {
            Attribute::Encrypt(b) => st.encrypt = b,
            Attribute::Decrypt(b) => st.decrypt = b,
            _ => {}
        }
    }
    Ok(st)
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
    /// Resolve an external key id to its HYOK key handle (cached briefly).
    pub fn find_key(&self, s: &Session, label: &str) -> Result<ObjectHandle, HsmError> {
        if let Some(h) = self.keys.get(label) {
            return Ok(h);
        }
        let found = find_by_label(s, label)?;
        let h = match found.as_slice() {
            [] => return Err(HsmError::KeyNotFound),
            [h] => *h,
            _ => {
                return Err(HsmError::Other(format!(
                    "{} secret keys carry the label {label:?}; refusing to guess",
                    found.len()
                )))
            }
        };
        if !is_hyok_key(s, h)? {
            tracing::warn!(
                key = label,
                "key is not AES-256 sensitive non-extractable; ignored"
            );
            return Err(HsmError::KeyNotFound);
        }
        self.keys.put(label, h);
        Ok(h)
    }

    /// Run `f` on the key's handle and live state; a stale cached handle is looked up once more.
    pub fn with_key<R>(
        &self,
        s: &Session,
        label: &str,
        mut f: impl FnMut(ObjectHandle, KeyState) -> Result<R, HsmError>,
    ) -> Result<R, HsmError> {
        for attempt in 0..2 {
            let h = self.find_key(s, label)?;
            let r = read_state(s, h).and_then(|st| f(h, st));
            match r {
                Err(e) if e.stale_handle() && attempt == 0 => self.keys.remove(label),
                other => return other,
            }
        }
        Err(HsmError::KeyNotFound)
    }

    /// Run one Encrypt/Decrypt `f` on the key WITHOUT reading its state first (the hot path).
    ///
    /// The token enforces CKA_ENCRYPT / CKA_DECRYPT on every call (PKCS#11 requires
    /// `CKR_KEY_FUNCTION_NOT_PERMITTED`; SoftHSM2, our module and its backends do), so the
    /// live state still decides every request; it is read only when the token refuses, to
    /// name the error: DISABLED (both flags false) or wrong usage. This saves one
    /// C_GetAttributeValue per request, which cost about a third of the proxy's CPU on
    /// SoftHSM2 (its file store re-reads the object on every attribute read).
    pub fn with_key_enforced<R>(
        &self,
        s: &Session,
        label: &str,
        mut f: impl FnMut(ObjectHandle) -> Result<R, HsmError>,
    ) -> Result<R, HsmError> {
        for attempt in 0..2 {
            let h = self.find_key(s, label)?;
            match f(h) {
                Err(e) if e.stale_handle() && attempt == 0 => self.keys.remove(label),
                Err(e) if e.rv() == Some(RvError::KeyFunctionNotPermitted) => {
                    let st = read_state(s, h)?;
                    return Err(if st.disabled() {
                        HsmError::Disabled
                    } else {
                        HsmError::WrongUsage
                    });
                }
                other => return other,
            }
        }
        Err(HsmError::KeyNotFound)
    }

    /// Live state of a key.
    pub fn key_state(&self, s: &Session, label: &str) -> Result<KeyState, HsmError> {
        self.with_key(s, label, |_, st| Ok(st))
    }

    /// Generate a new HYOK key in the token. Fails if the label is taken.
    pub fn create_key(&self, s: &Session, label: &str, usage: Usage) -> Result<(), HsmError> {
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
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::Date;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(
            Date::from_days(0),
            Date {
                y: 1970,
                m: 1,
                d: 1
            }
        );
        assert_eq!(
            Date::from_days(20_513),
            Date {
                y: 2026,
                m: 3,
                d: 1
            }
        );
        for z in [-1000, 0, 59, 60, 11_016, 20_000, 50_000] {
            assert_eq!(Date::from_days(z).to_days(), z);
        }
        assert_eq!(
            Date {
                y: 2024,
                m: 2,
                d: 28
            }
            .plus_days(1),
            Date {
                y: 2024,
                m: 2,
                d: 29
            }
        );
    }
}
