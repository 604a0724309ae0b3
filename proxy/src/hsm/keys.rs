//! Keys by label and their state on the request path — all in standard PKCS#11 attributes,
//! so no database is needed and every proxy instance sees the same truth (lifecycle
//! administration is in `lifecycle.rs`):
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
use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use parking_lot::Mutex;

use super::{Hsm, HsmError};

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
    pub(super) fn put(&self, label: &str, h: ObjectHandle) {
        let mut m = self.map.lock();
        if m.len() > 100_000 {
            m.clear(); // crude bound; lookups are cheap to redo
        }
        m.insert(label.to_string(), (h, Instant::now()));
    }
    pub(super) fn remove(&self, label: &str) {
        self.map.lock().remove(label);
    }
}

pub(super) fn ck(op: &'static str) -> impl FnOnce(cryptoki::error::Error) -> HsmError {
    move |e| HsmError::pkcs11(op, e)
}

/// Find every secret key object with this label (no HYOK filtering).
pub(super) fn find_by_label(s: &Session, label: &str) -> Result<Vec<ObjectHandle>, HsmError> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .map_err(ck("C_FindObjects"))
}

/// Is this object an AES-256, sensitive, non-extractable key (the only kind we serve)?
pub(super) fn is_hyok_key(s: &Session, h: ObjectHandle) -> Result<bool, HsmError> {
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

pub(super) fn read_state(s: &Session, h: ObjectHandle) -> Result<KeyState, HsmError> {
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
impl Hsm {
    /// Resolve an external key id to its HYOK key handle (cached briefly).
    pub fn find_key(&self, s: &Session, label: &str) -> Result<ObjectHandle, HsmError> {
        if let Some(h) = self.keys.get(label) {
            return Ok(h);
        }
        let found = find_by_label(s, label)?;
        let h = match found.as_slice() {
            [] => {
                self.token_answers()?;
                return Err(HsmError::KeyNotFound);
            }
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

    /// An empty search counts as "no such key" only when the token itself still answers
    /// (SoftHSM2 finds nothing, without an error, while its token store is gone).
    pub(super) fn token_answers(&self) -> Result<(), HsmError> {
        self.ctx.get_token_info(self.slot).map(|_| ()).map_err(|e| {
            HsmError::Unavailable(format!("the token does not answer C_GetTokenInfo: {e}"))
        })
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
}
